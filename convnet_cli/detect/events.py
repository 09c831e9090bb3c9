"""Window probabilities -> events, per class (docs/CONFIG.md).

An event is a run of windows whose probability for a class is >= that class's threshold. Two such windows
belong to the same event when they are neighbours in the window sequence, when they overlap, or when the
gap between the event so far and the next window is shorter than `merge_gap` seconds. An event begins at
its first window's start, ends at its last window's end, and scores its highest window probability.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from convnet_cli.errors import ConfigError
from convnet_cli.errors import did_you_mean

# A label with one of these names (case-insensitive) is the "nothing here" class: never reported by default.
BACKGROUND_NAMES = ("background", "noise", "negative", "other", "0")
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class Event:
    begin: float   # seconds from the recording's start
    end: float
    label: str
    score: float   # highest window probability in the event


def is_background(label: str) -> bool:
    return str(label).strip().lower() in BACKGROUND_NAMES


def reported_classes(label_names, classes=None) -> list:
    """The classes to report: `classes` (a list or 'a,b' text, checked against the net's labels), else
    every label except background ones, in label order."""
    names = list(label_names)
    if classes:
        wanted = [c.strip() for c in classes.split(",")] if isinstance(classes, str) else list(classes)
        wanted = [c for c in wanted if c]
        for c in wanted:
            if c not in names:
                raise ConfigError(f"--classes: the network has no class '{c}'{did_you_mean(c, names)}; "
                                  f"its classes: {', '.join(names)}")
        if not wanted:
            raise ConfigError("--classes: name at least one class")
        return [n for n in names if n in wanted]
    out = [n for n in names if not is_background(n)]
    if not out:
        raise ConfigError(f"every class of the network ({', '.join(names)}) is a background class; "
                          f"name the ones to report with --classes")
    return out


def parse_thresholds(text, label_names) -> dict:
    """--threshold: '0.7' (every class), 'upcall=0.8,gunshot=0.6' (unnamed classes 0.5), or both
    ('0.7,upcall=0.9'). -> {label: threshold} for every label."""
    names = list(label_names)
    default = DEFAULT_THRESHOLD
    per = {}
    if text is not None and str(text).strip():
        for part in str(text).split(","):
            part = part.strip()
            if not part:
                continue
            if "=" in part:
                name, value = (s.strip() for s in part.rsplit("=", 1))
                if name not in names:
                    raise ConfigError(f"--threshold {text!r}: the network has no class '{name}'"
                                      f"{did_you_mean(name, names)}; its classes: {', '.join(names)}")
            else:
                name, value = None, part
            try:
                t = float(value)
            except ValueError:
                raise ConfigError(f"--threshold {text!r}: {value!r} is not a number; give T or CLASS=T,... "
                                  f"with T between 0 and 1") from None
            if not 0.0 <= t <= 1.0:
                raise ConfigError(f"--threshold {text!r}: {t:g} is outside 0..1 (thresholds are probabilities)")
            if name is None:
                default = t
            else:
                per[name] = t
    return {n: per.get(n, default) for n in names}


def events_for_class(starts, probs, duration: float, threshold: float, merge_gap: float, label: str) -> list:
    """starts: (n,) window starts in seconds, ascending; probs: (n,) this class's window probabilities.
    -> [Event] in time order."""
    starts = np.asarray(starts, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    hits = np.flatnonzero(probs >= threshold)
    events = []
    if hits.size == 0:
        return events
    first = prev = int(hits[0])
    end = starts[first] + duration
    best = probs[first]
    for k in hits[1:]:
        k = int(k)
        gap = starts[k] - end
        if k == prev + 1 or gap < 0 or gap < merge_gap:
            end = max(end, starts[k] + duration)
            best = max(best, probs[k])
        else:
            events.append(Event(float(starts[first]), float(end), label, float(best)))
            first, end, best = k, starts[k] + duration, probs[k]
        prev = k
    events.append(Event(float(starts[first]), float(end), label, float(best)))
    return events


def windows_to_events(starts, probs, label_names, duration: float, thresholds: dict, classes, merge_gap: float = 0.0):
    """probs: (n, K) window probabilities for the K labels. -> [Event] of the `classes`, sorted by begin
    then label."""
    probs = np.asarray(probs)
    index = {n: i for i, n in enumerate(label_names)}
    out = []
    for c in classes:
        out.extend(events_for_class(starts, probs[:, index[c]], duration, thresholds[c], merge_gap, c))
    out.sort(key=lambda e: (e.begin, e.label))
    return out
