"""Window probabilities -> events, per class (docs/CONFIG.md).

An event is a run of windows whose probability for a class is >= that class's threshold. Two such windows
belong to the same run when they are neighbours in the window sequence or when they overlap; runs less than
`merge_gap` seconds apart join into one event. An event begins at its first window's start, ends at its
last window's end, and scores its highest window probability.

Dense choruses: where calls follow each other closely the windows between them still overlap one call or
the next, and a run can go on for many calls; an event can match only one annotation. So a run is split
where the score dips between calls (`split_dip`; detect's default DEFAULT_SPLIT_DIP, 0.3): at a window whose probability lies at least
`split_dip` below the highest window before it and the highest window after it in the run (scanning from the
start; after a split the next dip is measured from the new run's own peak). The two events meet at the
centre of that dip window. Windows that `merge_gap` joins across a gap are never split apart again.
`max_event` S (default none) then cuts an event longer than S seconds into the fewest equal pieces no longer
than S; a piece scores the highest probability among the windows above the threshold that overlap it, and a
piece no such window overlaps (inside a merge gap) is dropped.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from convnet_cli.errors import ConfigError
from convnet_cli.errors import did_you_mean

# A label with one of these names (case-insensitive) is the "nothing here" class: never reported by default.
BACKGROUND_NAMES = ("background", "noise", "negative", "other", "0")
# A dip this far below the peaks on both sides splits a run of windows: a softmax score wavers by less
# than this within one call, and falls further than this between two calls of a chorus.
DEFAULT_SPLIT_DIP = 0.3
@dataclass(frozen=True)
class Event:
    begin: float   # seconds from the recording's start
    end: float
    label: str
    score: float   # highest window probability in the event
    channel: int | None = None   # the recording's channel it was found on (detect --channel); None: mixed


def is_background(label: str) -> bool:
    return str(label).strip().lower() in BACKGROUND_NAMES


def pick_classes(classes, known, no_class: str, listing: str) -> list:
    """`--classes` (a list or 'a,b' text) as a list in the order given, each once, each checked to be one of
    `known`; an unknown one is the error '--classes: <no_class> 'c' ... ; <listing>: <known>'."""
    wanted = [c.strip() for c in (classes.split(",") if isinstance(classes, str) else classes)]
    wanted = list(dict.fromkeys(c for c in wanted if c))
    if not wanted:
        raise ConfigError("--classes: name at least one class")
    for c in wanted:
        if c not in known:
            raise ConfigError(f"--classes: {no_class} '{c}'{did_you_mean(c, list(known))}; {listing}: "
                              f"{', '.join(known) or 'none'}")
    return wanted


def reported_classes(label_names, classes=None, multi_label: bool = False) -> list:
    """The classes to report: `classes` (a list or 'a,b' text, checked against the net's labels), else
    every label except background ones, in label order; for a multi-label network (no background class:
    every label is a class of its own, SPEC 17) every label."""
    names = list(label_names)
    if classes:
        wanted = pick_classes(classes, names, "the network has no class", "its classes")
        return [n for n in names if n in wanted]
    if multi_label:
        return names
    out = [n for n in names if not is_background(n)]
    if not out:
        raise ConfigError(f"every class of the network ({', '.join(names)}) is a background class; "
                          f"name the ones to report with --classes")
    return out


def check_class_names(classes, checkpoint: str):
    """ConfigError for a class to report whose name a Raven table's cell cannot hold (a tab or a line
    break): the table would cut it, and a --resume, which reads the tables back, would report another name."""
    from convnet_cli.ingest.annotations import breaking_char

    for c in classes:
        what = breaking_char(c)
        if what is not None:
            raise ConfigError(f"{checkpoint}: the class {str(c)!r} holds {what}, which a Raven selection table "
                              f"(tab-separated, one row a line) cannot hold; leave it out with --classes, or train "
                              f"with a label without it")


def _dips(q, split_dip: float) -> list:
    """Indices at which the score sequence q splits (see the module doc): one left-to-right scan."""
    cuts = []
    if not split_dip or split_dip <= 0 or len(q) < 3:
        return cuts
    peak, valley = q[0], None
    for i in range(1, len(q)):
        x = q[i]
        if valley is None:
            if x >= peak:
                peak = x
            else:
                valley = i
        elif x < q[valley]:
            valley = i
        elif x - q[valley] >= split_dip and peak - q[valley] >= split_dip:
            cuts.append(valley)
            peak, valley = x, None   # x is the new run's peak: the windows since the dip were all lower
        elif x > peak:
            peak, valley = x, None
    return cuts


def _split_run(starts, probs, hits, duration, split_dip, label) -> list:
    """One run: `hits` (indices of windows >= threshold, ascending) -> [Event] split at its dips."""
    hits = np.asarray(hits)
    lo, hi = int(hits[0]), int(hits[-1])
    cuts = [lo + c for c in _dips(probs[lo:hi + 1], split_dip)]
    bounds = [-np.inf] + [starts[c] + duration / 2 for c in cuts] + [np.inf]
    pieces, edges = [], [lo - 1] + cuts + [hi + 1]
    for j in range(len(edges) - 1):
        part = hits[np.searchsorted(hits, edges[j], "right"):np.searchsorted(hits, edges[j + 1], "left")]
        if not part.size:
            continue   # the dip window itself, or a stretch below the threshold between two dips
        begin = max(float(starts[part[0]]), bounds[j])
        end = min(float(starts[part[-1]] + duration), bounds[j + 1])
        pieces.append(Event(float(begin), float(end), label, float(probs[part].max())))
    return pieces


def _cap(event: Event, starts, probs, hits, duration, max_event) -> list:
    """An event longer than max_event seconds -> the fewest equal pieces no longer than it (module doc)."""
    length = event.end - event.begin
    if not max_event or length <= max_event:
        return [event]
    n = int(np.ceil(length / max_event - 1e-9))
    edges = event.begin + length * np.arange(n + 1) / n
    edges[-1] = event.end
    s, e = starts[hits], starts[hits] + duration
    out = []
    for b, t in zip(edges[:-1], edges[1:]):
        over = (s < t) & (e > b)
        if over.any():
            out.append(Event(float(b), float(t), event.label, float(probs[hits][over].max())))
    return out


def events_for_class(starts, probs, duration: float, threshold: float, merge_gap: float, label: str,
                     split_dip: float = 0.0, max_event: float | None = None) -> list:
    """starts: (n,) window starts in seconds, ascending; probs: (n,) this class's window probabilities.
    split_dip, max_event: see the module doc (0 and None: no split, no cap). -> [Event] in time order."""
    starts = np.asarray(starts, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    hits = np.flatnonzero(probs >= threshold)
    if hits.size == 0:
        return []
    runs, run, end = [], [int(hits[0])], starts[hits[0]] + duration
    for k in hits[1:]:
        k = int(k)
        if k == run[-1] + 1 or starts[k] - end < 0:
            run.append(k)
        else:
            runs.append((run, starts[k] - end))
            run = [k]
        end = max(end, starts[k] + duration)
    runs.append((run, None))
    events, joined = [], None   # joined: the event the next run joins across a gap < merge_gap
    for run, gap_after in runs:
        pieces = _split_run(starts, probs, run, duration, split_dip, label)
        if joined is not None:
            first = pieces.pop(0)
            pieces.insert(0, Event(joined.begin, max(joined.end, first.end), label, max(joined.score, first.score)))
        if gap_after is not None and gap_after < merge_gap:
            joined = pieces.pop()
        else:
            joined = None
        events.extend(pieces)
    if max_event:
        hit = np.asarray(hits)
        events = [p for e in events for p in _cap(e, starts, probs, hit, duration, max_event)]
    return events


def windows_to_events(starts, probs, label_names, duration: float, thresholds: dict, classes, merge_gap: float = 0.0,
                      split_dip: float = 0.0, max_event: float | None = None):
    """probs: (n, K) window probabilities for the K labels. -> [Event] of the `classes`, sorted by begin
    then label."""
    probs = np.asarray(probs)
    index = {n: i for i, n in enumerate(label_names)}
    out = []
    for c in classes:
        out.extend(events_for_class(starts, probs[:, index[c]], duration, thresholds[c], merge_gap, c,
                                    split_dip, max_event))
    out.sort(key=lambda e: (e.begin, e.label))
    return out
