"""Long recordings + annotation tables -> cuda-convnet batch files of labelled windows (docs/CONFIG.md).

The steps, in order, none of which holds a recording in memory:
1. find the recordings (RECORDINGS, recursively), read the tables, pair them (`annotations`), read each
   recording's length from its header. A recording no table names, or whose header is unusable, is
   skipped and listed in skipped.txt; a table naming a recording that is not there is an error.
2. plan: the windows of each recording (`window_starts`), their labels (`label_windows`; ambiguous ones left
   out), background windows drawn down to `--background-ratio` (seeded), the split by recording
   (stratified so each class with windows in two recordings or more is on both sides where possible),
   and the deal into batches (every batch holds every class where possible).
3. extract: the planned windows' features, in tasks of at most ~10 minutes of one recording each, in
   `--jobs` processes; every task writes its (n, num_vis) float32 rows to a spill file in the staging folder.
4. assemble: batch after batch, its rows are gathered from the spill files (memory-mapped, one batch at a
   time) and written; the training range's mean and std are accumulated as the batches go by.

Files are written as make-batches writes them (staging folder, renamed into place, batches.meta last).
A recording that fails part way (a truncated file) is skipped whole: none of its windows is written.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from convnet_cli.data.batch_set_swap import install_set
from convnet_cli.data.targets import ABSENT, PRESENT, UNKNOWN, ClassTargets, MultiLabelTargets
from convnet_cli.data.writer import (Batch, NothingReadError, SetWriter, batch_count, check_fits, deal, plan_copies,
                                     refuse_existing, writing_set)
from convnet_cli.errors import ConfigError, DataError, did_you_mean
from convnet_cli.ingest.annotations import (DEFAULT_LABEL, LABEL_COLUMNS, assign_to_recordings, clip_to_duration,
                                           read_tables_and_claims)
from convnet_cli.ingest.audio import CHANNEL_ALL, CHANNEL_MIX, AudioError, channel_streams, stream_name
from convnet_cli.ingest.features import FeatureSpec
from convnet_cli.ingest.make_batches import SetOptions, new_set_features, split_groups
from convnet_cli.ingest.noise import copy_name, window_copies
from convnet_cli.ingest.sources import find_audio
from convnet_cli.ingest.windows import (WindowSpec, class_overlap, covers_enough, iter_selected_window_features,
                                        label_windows, recording_header, window_count, window_overlaps, window_starts)
from convnet_cli.ingest.workers import ordered_map
from convnet_cli.parallel import SingleWorld, on_root
from convnet_cli.progress import AudioProgress, audio_span

TASK_S = 600.0          # audio per extraction task: parallelism within a long recording, progress that moves
SKIPPED = "skipped.txt"
NO_TABLE = "no annotation table names this recording"
MAX_WARNINGS = 20       # clipped-annotation warnings printed; the rest counted


@dataclass
class Recording:
    rel: str                  # path relative to RECORDINGS, '/'-separated
    path: str
    duration: float = 0.0
    sample_rate: int = 0
    selections: list = field(default_factory=list)
    # annotated whole: a table without a Verdict column names it, so a window no annotation covers is
    # background. A recording named only by reviewed detections (verdict rows) is not (see plan_windows).
    whole: bool = False
    channel: int | None = None     # the channel read (1-based; --channel N or all), None: the channels mixed
    time_expansion: float = 1.0    # --time-expansion: the file's rate times this is the true rate
    name: str = ""                 # what the cases' names start with: rel, or '<rel>#ch<k>' under --channel all

    def __post_init__(self):
        self.name = self.name or self.rel


@dataclass
class WindowPlan:
    """Every window that will become a case. Arrays of equal length n, in recording order."""

    rec: np.ndarray           # int64: index into the recordings list
    win: np.ndarray           # int64: window index k within its recording (start k * hop)
    labels: np.ndarray        # int64: index into label_names
    label_names: list
    counts: dict              # label -> windows kept
    left_out: int             # ambiguous windows (and those an `unsure` verdict covers)
    background_dropped: int   # background windows not drawn (--background-ratio)
    hard_negatives: int = 0   # background windows kept because a `false` verdict covers them
    not_reviewed: int = 0     # windows of recordings labelled only by verdicts that no verdict covers
    # multi-label (--multi-label): every window's set of classes, data/targets.py MultiLabelTargets (n, K);
    # `labels` is then each window's class of largest overlap (-1: none), and `unknown` the entries masked
    multi: MultiLabelTargets | None = None
    unknown: int = 0

    @property
    def targets(self):
        """What each window is trained towards (data/targets.py)."""
        return self.multi if self.multi is not None else ClassTargets(self.labels)

    def take(self, keep) -> "WindowPlan":
        """The plan of the windows `keep` (a bool mask or indices); counts as they were."""
        multi = None if self.multi is None else self.multi.take(np.flatnonzero(keep) if np.asarray(keep).dtype == bool
                                                                  else keep)
        return WindowPlan(self.rec[keep], self.win[keep], self.labels[keep], self.label_names, self.counts,
                          self.left_out, self.background_dropped, self.hard_negatives, self.not_reviewed, multi,
                          self.unknown)


# ---- step 1: recordings and tables ------------------------------------------------------------------

class _CappedWarn:
    """warn(line) for the first `limit` lines, then a count: '… and N more <what>'."""

    def __init__(self, warn, what, limit=MAX_WARNINGS):
        self.warn, self.what, self.limit, self.n = warn, what, limit, 0

    def __call__(self, line):
        self.n += 1
        if self.n <= self.limit:
            self.warn(f"warning: {line}")

    def close(self):
        if self.n > self.limit:
            self.warn(f"warning: … and {self.n - self.limit} more {self.what}")


def collect_recordings(recordings_dir, tables, label_col=None, warn=print, channel=CHANNEL_MIX,
                       time_expansion: float = 1.0):
    """([Recording with selections], [(rel, reason) skipped], {label: 'table line N' where first found}).

    The labels are those of every selection the tables hold, also of selections past a recording's end and
    of recordings that are skipped: they are the classes of the set (see plan_windows). DataError for bad
    tables or paths. channel: --channel's value ('mix', 'all' or N): with 'all' each channel of a recording is
    a Recording of its own (named '<rel>#ch<k>'), and a selection with a `Channel` labels that channel only;
    ChannelError (exit 2) for an N past a recording's channels. time_expansion: --time-expansion's factor."""
    recordings_dir = os.fspath(recordings_dir)
    if not os.path.exists(recordings_dir):
        raise DataError(f"{recordings_dir}: no such folder; give the folder that holds the recordings")
    if os.path.isdir(recordings_dir):
        root, rels = recordings_dir, find_audio(recordings_dir)
    else:
        root, rels = os.path.dirname(recordings_dir) or ".", [os.path.basename(recordings_dir)]
    if not rels:
        raise DataError(f"{recordings_dir}: no audio files (.wav, .flac, .ogg, .aiff, .aif) in it or its "
                        "subfolders; check RECORDINGS")
    table_warn = _CappedWarn(warn, "warnings about the tables")
    selections, claims = read_tables_and_claims(tables, label_col, table_warn)
    table_warn.close()
    if not selections and not claims:
        raise DataError(f"{tables}: holds no selections; nothing to learn from")
    labels = {}
    for s in selections:
        labels.setdefault(s.label, f"{s.source} line {s.line}")
    by_rec = assign_to_recordings(selections, root, rels)
    claimed = set(assign_to_recordings(claims, root, rels))
    for rel in claimed:
        by_rec.setdefault(rel, [])
    recs, skipped = [], []
    clip_warn = _CappedWarn(warn, "selections clipped or left out at recordings' ends")
    for rel in rels:
        if rel not in by_rec:
            skipped.append((rel, NO_TABLE))
            continue
        path = os.path.join(root, rel)
        try:
            duration, sr, channels = recording_header(path, time_expansion)
        except AudioError as exc:
            skipped.append((rel, exc.reason))
            continue
        sels = clip_to_duration(by_rec[rel], duration, clip_warn)
        streams = channel_streams(path, channel, channels)
        if streams != [None]:
            sels = _on_channels(sels, channels, rel, clip_warn)
        for ch in streams:
            mine = sels if ch is None else [s for s in sels if s.channel is None or s.channel == ch]
            recs.append(Recording(rel, path, duration, sr, mine, whole=rel in claimed, channel=ch,
                                  time_expansion=float(time_expansion),
                                  name=stream_name(rel, ch) if channel == CHANNEL_ALL else rel))
    clip_warn.close()
    return recs, skipped, labels


def _on_channels(selections, channels, rel, warn):
    """The selections whose `Channel` is one of the recording's `channels` (or none); warn(line) for the others."""
    out = []
    for s in selections:
        if s.channel is not None and s.channel > channels:
            where = f"{s.source} line {s.line}" if s.source else s.recording
            warn(f"{where}: selection on channel {s.channel}, but '{rel}' has {channels} channel"
                 f"{'s' if channels != 1 else ''}; left out")
            continue
        out.append(s)
    return out


# ---- step 2: the plan ---------------------------------------------------------------------------------

def labels_of(recs) -> dict:
    """{label: where first found ('table line N', or the recording)} of the recordings' selections."""
    found = {}
    for r in recs:
        for s in r.selections:
            found.setdefault(s.label, f"{s.source} line {s.line}" if s.source else s.recording)
    return found


def checked_label_names(label_names, table_labels) -> list | None:
    """--label-names as a list of str (None when not given): ConfigError unless each name is given once and
    none is empty, DataError naming where a table label not among them is first found."""
    if label_names is None:
        return None
    names = [str(n) for n in label_names]
    if not names or len(set(names)) != len(names) or not all(names):
        raise ConfigError(f"--label-names {','.join(names)}: give each name once (none empty)")
    missing = [c for c in table_labels if c not in names]
    if missing:
        raise DataError(f"{table_labels[missing[0]]}: label '{missing[0]}' is not one of the label names "
                        f"({', '.join(names)}){did_you_mean(missing[0], names)}; fix the table or --label-names")
    return names


def plan_windows(recs, spec: FeatureSpec, hop_s, min_overlap=0.5, background="background", background_ratio=None,
                 seed=0, label_names=None, table_labels=None) -> WindowPlan:
    """Which windows become cases, and their labels (docs/CONFIG.md).

    The classes do not depend on which windows a label wins: they are `label_names` when given, else the
    background label (when some window is background) and every label of the tables (`table_labels`,
    {label: where first found}; default: those of recs' selections), sorted. A label whose annotations
    always overlap another class more, or lie past the recordings' ends, is a class of 0 windows, so two
    surveys made apart keep the same classes and indices.

    Reviewed detections (a selection's `verdict`, from `convnet review`): `true` (or None, an ordinary
    annotation) labels windows as above; `false` makes the windows it covers by `min_overlap` that no class
    labels verified negatives: background windows that `background_ratio` never drops (they count towards
    its budget: the draw tops them up to R per class window); `unsure` leaves out the background windows it
    touches. A recording named only by verdict rows (not `whole`, no ordinary annotation) was reviewed, not
    annotated: only its windows a true or false verdict covers are kept (`not_reviewed` counts the rest).
    """
    table_labels = table_labels if table_labels is not None else labels_of(recs)
    label_names = checked_label_names(label_names, table_labels)
    recs_i, wins, codes, hards = [], [], [], []
    code = {}                     # label -> provisional id (ints per window, not strings: months of audio fit)
    left_out = not_reviewed = 0
    for i, r in enumerate(recs):
        starts = window_starts(r.duration, spec.duration, hop_s)
        annotations = [s for s in r.selections if s.verdict in (None, "true")]
        lab = label_windows(starts, spec.duration, annotations, min_overlap, background)
        c = np.fromiter((-1 if v is None else code.setdefault(v, len(code)) for v in lab), dtype=np.int64,
                        count=len(lab))
        del lab
        hard = np.zeros(c.size, dtype=bool)
        if any(s.verdict is not None for s in r.selections):
            bg = c == code.get(background, -3)
            unsure = _covered(starts, spec.duration, [s for s in r.selections if s.verdict == "unsure"], None)
            false = _covered(starts, spec.duration, [s for s in r.selections if s.verdict == "false"], min_overlap)
            hard = bg & ~unsure & false
            c[bg & unsure] = -1
            if not r.whole and all(s.verdict is not None for s in r.selections):
                unknown = bg & ~unsure & ~hard
                c[unknown] = -2
                not_reviewed += int(unknown.sum())
        left_out += int((c == -1).sum())
        idx = np.flatnonzero(c >= 0)
        recs_i.append(np.full(idx.size, i, dtype=np.int64))
        wins.append(idx.astype(np.int64))
        codes.append(c[idx])
        hards.append(hard[idx])
    rec = np.concatenate(recs_i) if recs_i else np.zeros(0, np.int64)
    win = np.concatenate(wins) if wins else np.zeros(0, np.int64)
    prov = np.concatenate(codes) if codes else np.zeros(0, np.int64)
    hard = np.concatenate(hards) if hards else np.zeros(0, bool)
    present = [c for c in code if (prov == code[c]).any()]
    if label_names is None:
        found = sorted(set(table_labels) - {background})
        names = ([background] if background in present or background in table_labels else []) + found
    else:
        names = list(label_names)
        if background in present and background not in names:
            raise DataError(f"--background: label '{background}' is not one of the label names ({', '.join(names)}); "
                            "add it to --label-names (windows without annotations take it)")
    index = {c: j for j, c in enumerate(names)}
    remap = np.zeros(max(len(code), 1), dtype=np.int64)
    for c, j in code.items():
        remap[j] = index.get(c, -1)
    labels = remap[prov]
    dropped = 0
    if background_ratio is not None and background in index:
        is_bg = labels == index[background]
        bg = np.flatnonzero(is_bg & ~hard)          # verified negatives are never dropped
        allowed = int(math.floor(background_ratio * (labels.size - int(is_bg.sum())) + 1e-9))
        allowed = max(0, allowed - int((is_bg & hard).sum()))
        if bg.size > allowed:
            rng = np.random.default_rng([int(seed), 11])
            drop = np.setdiff1d(bg, rng.choice(bg, size=allowed, replace=False))
            keep = np.ones(labels.size, dtype=bool)
            keep[drop] = False
            rec, win, labels, hard = rec[keep], win[keep], labels[keep], hard[keep]
            dropped = int(drop.size)
    counts = {c: int((labels == j).sum()) for c, j in index.items()}
    return WindowPlan(rec, win, labels, names, counts, left_out, dropped, int(hard.sum()), not_reviewed)


def _covered(starts, window_s, selections, min_overlap):
    """(n,) bool: windows that one of `selections` overlaps by at least `min_overlap` of the shorter of the
    two (None: by any amount), as label_windows measures it (windows.py's window_overlaps, covers_enough)."""
    out = np.zeros(len(starts), dtype=bool)
    for s, lo, hi, ov, hit in window_overlaps(np.asarray(starts, dtype=np.float64), window_s, selections):
        out[lo:hi] |= covers_enough(ov, hit, window_s, s, min_overlap)
    return out


def plan_multilabel_windows(recs, spec: FeatureSpec, hop_s, min_overlap=0.5, background_ratio=None, seed=0,
                            label_names=None, table_labels=None) -> WindowPlan:
    """Which windows become cases, and their sets of classes (docs/CONFIG.md, multi-label; SPEC 17).

    Per window and class: present when an annotation of the class covers at least `min_overlap` of the
    shorter of the two (as plan_windows), unknown (masked: neither present nor absent) when annotations of
    the class touch the window but none covers that much, absent otherwise; every class at once, so
    overlapping calls of different classes are all present. There is no background class. Windows without a
    present class are kept at most `background_ratio` per window that holds one (drawn with `seed`).
    The classes: `label_names` when given, else every label of the tables, sorted.

    Verdicts (`convnet review`): `true` (or none) annotates as above; `false` makes its class absent in the
    windows it covers by `min_overlap` (where no annotation makes it present), and such windows are kept
    whatever `background_ratio` says (verified negatives); `unsure` makes its class unknown where it is not
    present. A recording named only by verdict rows keeps only the windows a true or false verdict covers,
    and in them a class that no verdict or annotation of its own covers is unknown, not absent.
    """
    table_labels = table_labels if table_labels is not None else labels_of(recs)
    names = checked_label_names(label_names, table_labels)
    if names is None:
        names = sorted(table_labels)
    k = len(names)
    index = {c: j for j, c in enumerate(names)}
    recs_i, wins, mats, prims, hards = [], [], [], [], []
    not_reviewed = 0
    for i, r in enumerate(recs):
        starts = window_starts(r.duration, spec.duration, hop_s)
        n = starts.size
        mat = np.full((n, k), ABSENT, dtype=np.uint8)
        best = np.zeros((n, k), dtype=np.float64)
        hard = np.zeros(n, dtype=bool)
        reviewed = np.zeros(n, dtype=bool)
        known = np.zeros((n, k), dtype=bool)    # per class: windows an annotation or a true/false verdict covers
        by_class = {}
        for s in r.selections:
            by_class.setdefault(s.label, []).append(s)
        for label, sels in by_class.items():
            j = index[label]
            annotations = [s for s in sels if s.verdict in (None, "true")]
            ov, touched = class_overlap(starts, spec.duration, annotations, min_overlap)
            present = ov > 0
            mat[present, j] = PRESENT
            mat[touched & ~present, j] = UNKNOWN
            best[:, j] = ov
            verdicts = [s for s in sels if s.verdict is not None]
            if verdicts:
                false = _covered(starts, spec.duration, [s for s in verdicts if s.verdict == "false"], min_overlap)
                unsure = _covered(starts, spec.duration, [s for s in verdicts if s.verdict == "unsure"], None)
                verified_absent = false & ~present & ~unsure
                mat[verified_absent, j] = ABSENT
                mat[unsure & ~present, j] = UNKNOWN
                hard |= verified_absent
                checked = _covered(starts, spec.duration, [s for s in verdicts if s.verdict in ("true", "false")],
                                   min_overlap)
                reviewed |= checked
                known[:, j] |= checked
            known[:, j] |= present
        keep = np.ones(n, dtype=bool)
        if r.selections and not r.whole and all(s.verdict is not None for s in r.selections):
            keep = reviewed
            not_reviewed += int((~reviewed).sum())
            # a sample of detections says nothing of the classes nobody reviewed in a window: unknown there
            mat[(mat == ABSENT) & ~known] = UNKNOWN
        primary = np.where(best.max(axis=1) > 0, best.argmax(axis=1), -1) if k else np.full(n, -1)
        idx = np.flatnonzero(keep)
        recs_i.append(np.full(idx.size, i, dtype=np.int64))
        wins.append(idx.astype(np.int64))
        mats.append(mat[idx])
        prims.append(primary[idx].astype(np.int64))
        hards.append(hard[idx])
    rec = np.concatenate(recs_i) if recs_i else np.zeros(0, np.int64)
    win = np.concatenate(wins) if wins else np.zeros(0, np.int64)
    mat = np.concatenate(mats) if mats else np.zeros((0, k), np.uint8)
    primary = np.concatenate(prims) if prims else np.zeros(0, np.int64)
    hard = np.concatenate(hards) if hards else np.zeros(0, bool)
    keep = np.ones(rec.size, dtype=bool)
    dropped = 0
    empty = ~(mat == PRESENT).any(axis=1)
    if background_ratio is not None:
        candidates = np.flatnonzero(empty & ~hard)     # verified negatives are never dropped
        allowed = int(math.floor(background_ratio * int((~empty).sum()) + 1e-9))
        allowed = max(0, allowed - int((empty & hard).sum()))
        if candidates.size > allowed:
            rng = np.random.default_rng([int(seed), 11])
            drop = np.setdiff1d(candidates, rng.choice(candidates, size=allowed, replace=False))
            keep[drop] = False
            dropped = int(drop.size)
    rec, win, mat, primary, hard = rec[keep], win[keep], mat[keep], primary[keep], hard[keep]
    counts = {c: int((mat[:, j] == PRESENT).sum()) for j, c in enumerate(names)}
    return WindowPlan(rec, win, primary, names, counts, 0, dropped, int((hard & ~(mat == PRESENT).any(axis=1)).sum()),
                      not_reviewed, MultiLabelTargets(mat, primary), int((mat == UNKNOWN).sum()))


def split_by_group(groups, labels, test_fraction, seed, what="recording"):
    """Boolean test mask over cases: whole groups go to test, about `test_fraction` of the cases.

    groups: (n,) group ids (int); labels: (n,) int. Stratified where possible: every class keeps a group in
    the training set, and every class found in two groups or more gets one of them in the test set too.
    ConfigError when there are fewer than two groups.
    """
    groups = np.asarray(groups)
    labels = np.asarray(labels)
    n = labels.size
    test = np.zeros(n, dtype=bool)
    if test_fraction <= 0 or n == 0:
        return test
    uniq, inv = np.unique(groups, return_inverse=True)
    if uniq.size < 2:
        raise ConfigError(f"every window comes from one {what}; a train/test split by {what} needs two or more "
                          "(add recordings, or use --test-fraction 0)")
    classes = np.unique(labels)
    count = np.zeros((uniq.size, classes.size), dtype=np.int64)
    np.add.at(count, (inv, np.searchsorted(classes, labels)), 1)
    size = count.sum(axis=1)
    has = count > 0
    rng = np.random.default_rng([int(seed), 12])
    target = test_fraction * n
    in_test = np.zeros(uniq.size, dtype=bool)

    def allowed(g):
        # moving g to test leaves every class a training group (a class of one group stays in training)
        after = in_test.copy()
        after[g] = True
        if after.all():
            return False
        return bool(has[~after].any(axis=0).all())

    # one group per class (rarest classes first), smallest groups first so the share is not overshot
    for c in np.argsort(has.sum(axis=0), kind="stable"):
        if has[:, c].sum() < 2 or has[in_test, c].any():
            continue
        cand = [g for g in rng.permutation(np.flatnonzero(has[:, c])) if allowed(g)]
        cand.sort(key=lambda g: size[g])
        if cand and size[in_test].sum() + size[cand[0]] <= max(target, size[cand[0]]) * 1.5:
            in_test[cand[0]] = True
    for g in rng.permutation(uniq.size):
        if in_test[g] or not allowed(g):
            continue
        now = size[in_test].sum()
        if abs(now + size[g] - target) < abs(now - target):
            in_test[g] = True
    if not in_test.any():
        g = min((g for g in range(uniq.size) if allowed(g)), key=lambda g: (size[g], g), default=None)
        if g is not None:
            in_test[g] = True
    return in_test[inv]


# ---- step 3: extraction (module level so 'spawn' processes can import it) ---------------------------

def extract_task(path, spec_dict, hop_s, keep, out_path, block_s=None, on_block=None, channel=None,
                 time_expansion=1.0):
    """Features of windows `keep` of `path` (its `channel`, or the channels mixed), appended as (n, num_vis)
    float32 rows to out_path.

    Returns (rows written, None), or (0, reason) when the recording cannot be read (the partial file is
    removed). on_block(t): see iter_selected_window_features."""
    spec = FeatureSpec(**spec_dict)
    n = 0
    try:
        with open(out_path, "wb") as f:
            for starts, feats in iter_selected_window_features(path, spec, hop_s, keep, batch=256, block_s=block_s,
                                                               on_block=on_block, channel=channel,
                                                               time_expansion=time_expansion):
                f.write(np.ascontiguousarray(feats, dtype=np.float32).tobytes())
                n += len(starts)
        return n, None
    except AudioError as exc:
        try:
            os.remove(out_path)
        except OSError:
            pass
        return 0, exc.reason
    except OSError as exc:
        raise DataError(f"{out_path}: cannot write window features ({exc.strerror or exc}); free some disk space "
                        "in BATCH_DIR") from None


def _tasks(plan, recs, hop_s):
    """[(task id, recording index, window indices, case positions, span s)] in recording order, each <= TASK_S
    long; the spans (the stretch of the recording's timeline a task stands for) add up to its duration."""
    tasks = []
    order = np.lexsort((plan.win, plan.rec))
    bounds = np.flatnonzero(np.diff(plan.rec[order])) + 1
    for chunk in np.split(order, bounds):
        if chunk.size == 0:
            continue
        wins = plan.win[chunk]
        starts = wins * hop_s
        a = 0
        while a < chunk.size:
            b = a + int(np.searchsorted(starts[a:], starts[a] + TASK_S, side="left"))
            b = max(b, a + 1)
            ri = int(plan.rec[chunk[a]])
            lo = 0.0 if a == 0 else starts[a]
            hi = recs[ri].duration if b == chunk.size else starts[b]
            tasks.append((len(tasks), ri, wins[a:b], chunk[a:b], float(hi - lo)))
            a = b
    return tasks


def _run_tasks(tasks, recs, spec, hop_s, staging, jobs, on_progress):
    """Run the extraction tasks; yields (task, rows written, reason or None) in order. on_progress(seconds of
    audio) moves the bar: block by block with one job, task by task with several."""
    spec_dict = spec.to_dict()
    out = lambda t: os.path.join(staging, f"windows_{t[0]}.f32")   # noqa: E731
    if max(1, min(int(jobs), len(tasks))) == 1:
        for t in tasks:
            span, reported = t[4], [0.0]
            lo = t[2][0] * hop_s

            def on_block(end):
                step = min(max(0.0, end - lo) - reported[0], span - reported[0])
                if step > 0:
                    reported[0] += step
                    on_progress(step)

            try:
                r = recs[t[1]]
                n, reason = extract_task(r.path, spec_dict, hop_s, t[2], out(t), on_block=on_block, channel=r.channel,
                                         time_expansion=r.time_expansion)
            finally:
                on_progress(max(0.0, span - reported[0]))
            yield t, n, reason
        return

    def died(item):
        return (f"a worker process died while reading {recs[item[0][1]].path} (out of memory, or a file that "
                "crashes the decoder); run with --jobs 1 to see more")

    items = [(t, (recs[t[1]].path, spec_dict, hop_s, t[2], out(t), None, None, recs[t[1]].channel,
                  recs[t[1]].time_expansion)) for t in tasks]
    for (t, _), (n, reason) in ordered_map(extract_task, items, jobs, ahead=2, died=died):
        on_progress(t[4])
        yield t, n, reason


# ---- the command's body ---------------------------------------------------------------------------

def _check(hop_s, min_overlap, background, background_ratio, spec):
    if hop_s is not None and not (hop_s > 0 and math.isfinite(hop_s)):
        raise ConfigError(f"--window-hop {hop_s}: must be a positive number of seconds")
    if hop_s is not None and hop_s * spec.sample_rate < 1:   # windows start on samples: below one, they repeat
        raise ConfigError(f"--window-hop {hop_s:g}: below one sample ({1 / spec.sample_rate:g} s at the features' "
                          f"{spec.sample_rate} Hz), so windows would repeat; give at least {1 / spec.sample_rate:g}")
    if not (0.0 <= min_overlap <= 1.0):
        raise ConfigError(f"--min-overlap {min_overlap}: must be between 0 and 1 (a fraction of the shorter of "
                          "window and annotation)")
    if not str(background).strip():
        raise ConfigError("--background: give a label name for windows without any annotation")
    if background_ratio is not None and not (background_ratio >= 0 and math.isfinite(background_ratio)):
        raise ConfigError(f"--background-ratio {background_ratio}: must be 0 or more (background windows kept per "
                          "class window)")


def _check_classes(plan, recs, background, label_names):
    """ConfigError for a set of one class (nothing to tell apart), unless --label-names fixes the classes."""
    present = [c for c in plan.label_names if plan.counts.get(c)]
    if label_names is not None or len(present) != 1:
        return
    only = present[0]
    anyway = ("; to batch it anyway (a test set for another set's classes) give --label-names")
    if only != background:
        if only == DEFAULT_LABEL:   # also the label of every selection of a table without a label column
            raise ConfigError(f"every window is annotated '{only}', none is left as background: a set of one "
                              f"class; where the tables have no label column ({', '.join(LABEL_COLUMNS)}) every "
                              f"selection is '{DEFAULT_LABEL}': name theirs with --label-col (BirdNET's tables: "
                              f"--label-col 'Common Name' or 'Species Code'), else add recordings or stretches "
                              f"without calls{anyway}")
        raise ConfigError(f"every window is annotated '{only}', none is left as background: a set of one class, "
                          f"which nothing can learn from; add recordings or stretches without calls{anyway}")
    if any(s.label == background for r in recs for s in r.selections):
        why = f"the tables' only label is also the --background label, so every window is '{only}'"
    else:
        why = "every window is background (no annotation covers --min-overlap of a window)"
    raise ConfigError(f"--background {background}: {why}: a set of one class, which nothing can learn from; "
                      f"choose another --background label (the default is background) or check the tables{anyway}")


@dataclass
class AnnotationOptions(SetOptions):
    """The options of make-batches --annotations (docs/CONFIG.md) besides the features, the noisy copies and
    the MPI world: the windows and their labels, then what every batch set takes (SetOptions)."""

    window_hop: float | None = None      # seconds between windows (default: half a window)
    min_overlap: float = 0.5
    background: str = "background"       # the label of windows without a call (single-label)
    background_ratio: float | None = None

    def check(self, spec):
        self.channel, self.time_expansion = self.checked_set()
        _check(self.window_hop, float(self.min_overlap), self.background, self.background_ratio, spec)


def make_batches_from_annotations(recordings_dir, batch_dir, tables, *, features: FeatureSpec = None, warn=None,
                                  noise=None, world=None, options: AnnotationOptions | None = None, **kw) -> dict:
    """Write BATCH_DIR/data_batch_1..K, batches.meta and skipped.txt from RECORDINGS and TABLES (docs/CONFIG.md).

    options: an AnnotationOptions, or its fields as keywords (window_hop, min_overlap, background, ...,
    multi_label, seed, jobs, ...). noise: ingest/noise.py's NoiseOptions, for noisy copies of the training
    windows (see _add_copies). Returns a summary dict (recordings, read, skipped, windows, counts, classes, batches,
    ranges, cases, shape, audio_s, seconds, batch_dir).

    world: convnet_cli/parallel.py's, under `mpiexec -n K`: every process makes the same plan, the extraction
    tasks are dealt to the processes (their spill files go to the staging folder, which BATCH_DIR's file
    system shares), rank 0 assembles and writes the batches; the others return None.
    """
    o = AnnotationOptions.of(options, kw)
    world = world or SingleWorld()
    t_start = time.perf_counter()
    spec = new_set_features(features)
    o.check(spec)
    window = WindowSpec.of(spec, o.window_hop)
    if warn is None:
        def warn(line):
            print(line, file=sys.stderr)
    if not world.is_root:
        def warn(line):
            pass
    batch_dir = os.fspath(batch_dir)
    jobs = o.jobs
    if jobs is None:
        from convnet_cli.backend import default_threads

        jobs = max(1, default_threads() // getattr(world, "local_size", 1))
    refuse_existing(batch_dir, o.overwrite)
    recs, skipped, plan = _plan(recordings_dir, batch_dir, tables, spec, window, o, world, warn)
    train_b, test_b = _split(recs, plan, o, batch_dir, spec, world, noise)

    with contextlib.ExitStack() as rank0:
        # rank 0 holds the set's staging folder and lock; every rank gets the folder (or rank 0's error)
        staging = on_root(world, lambda: rank0.enter_context(writing_set(batch_dir, o.overwrite)))
        spill = _extract(world, recs, plan, spec, window, staging, jobs, o.progress)
        if not world.is_root:
            return None
        summary = _write_set(recs, plan, spill, train_b, test_b, spec, window, staging, o, skipped,
                             recordings_dir, noise)
        install_set(staging, batch_dir, summary.pop("_files"))
    summary.update(batch_dir=batch_dir, recordings=len(recs) + len(skipped), classes=len(plan.label_names),
                   label_names=list(plan.label_names), left_out=plan.left_out,
                   background_dropped=plan.background_dropped, window_hop=window.hop, multi_label=o.multi_label,
                   unknown=plan.unknown, seconds=time.perf_counter() - t_start)
    return summary


def _plan(recordings_dir, batch_dir, tables, spec, window, o, world, warn):
    """Steps 1 and 2: (recordings, skipped [(rel, reason)], WindowPlan). The one-line errors of a plan that
    cannot make a set (no recording, no window, one class, too large for the disk)."""
    recs, skipped, table_labels = collect_recordings(recordings_dir, tables, o.label_col, warn, o.channel,
                                                     o.time_expansion)
    num_vis = int(np.prod(spec.shape))
    if o.background_ratio is None:   # every window is kept: refuse a count that cannot fit before planning it
        on_root(world, lambda: check_windows_fit(batch_dir, sum(window_count(r.duration, window.duration, window.hop)
                                                                for r in recs), num_vis, o.dtype, o.window_hop))
    short = [r for r in recs if window_count(r.duration, window.duration, window.hop) == 0]
    for r in short:
        why = (r.rel, f"shorter ({r.duration:.3f} s) than one window ({window.duration:g} s)")
        if why not in skipped:   # the channels of one file: named once
            skipped.append(why)
    recs = [r for r in recs if r not in short]
    skipped.sort()
    if not recs:
        first = "; ".join(f"{n}: {r}" for n, r in skipped[:3])
        raise NothingReadError(f"{recordings_dir}: none of the {len(skipped)} recordings could be used ({first}"
                               f"{' …' if len(skipped) > 3 else ''}); nothing was written")
    if o.multi_label:
        plan = plan_multilabel_windows(recs, spec, window.hop, float(o.min_overlap), o.background_ratio,
                                       int(o.seed), o.label_names, table_labels)
    else:
        plan = plan_windows(recs, spec, window.hop, float(o.min_overlap), str(o.background), o.background_ratio,
                            int(o.seed), o.label_names, table_labels)
    empty = [c for c, k in plan.counts.items() if k == 0 and c != o.background]
    if empty:
        warn(f"warning: {len(empty)} class{'es have' if len(empty) > 1 else ' has'} no window ({', '.join(empty)}): "
             + ("annotations below --min-overlap" if o.multi_label else
                "annotations overlapped more by another class, below --min-overlap")
             + ", past a recording's end or in skipped recordings; kept as classes of 0 windows so label indices "
               "match other sets made from these tables")
    if plan.labels.size == 0:
        raise DataError(f"{recordings_dir}: no windows to write: recordings shorter than one window "
                        f"({window.duration:g} s), every window ambiguous, or --background-ratio 0 without any "
                        "annotated window")
    if not o.multi_label:
        _check_classes(plan, recs, str(o.background), o.label_names)
    return recs, skipped, plan


def _split(recs, plan, o, batch_dir, spec, world, noise):
    """The split by recording (or --split-by group) and the class deal: (train batches, test batches), each a
    list of index arrays into the plan. Stratified by each window's class (multi-label: its class of largest
    overlap, or none)."""
    if o.split_by:
        keys = split_groups([recs[i].rel for i in range(len(recs))], o.split_by)
        what = "--split-by group"
    else:
        keys, what = [r.rel for r in recs], "recording"   # the channels of a recording stay on one side
    key_id = {k: j for j, k in enumerate(sorted(set(keys)))}
    groups = np.array([key_id[k] for k in keys], dtype=np.int64)[plan.rec] if recs else np.zeros(0, np.int64)
    strata = plan.labels
    # a recording known only through review verdicts (not annotated whole) gives windows around detections, a
    # sample unlike what detect meets: it always trains, and the test range is made of annotated recordings
    reviewed_only = np.array([bool(r.selections) and not r.whole and all(s.verdict is not None for s in r.selections)
                              for r in recs], dtype=bool)
    test = np.zeros(plan.labels.size, dtype=bool)
    eligible = ~reviewed_only[plan.rec] if reviewed_only.size else np.ones(plan.labels.size, dtype=bool)
    if eligible.any():
        test[eligible] = split_by_group(groups[eligible], strata[eligible], float(o.test_fraction), int(o.seed),
                                        what)
    on_root(world, lambda: check_windows_fit(batch_dir, plan.labels.size, int(np.prod(spec.shape)), o.dtype,
                                             o.window_hop, noise, int((~test).sum())))
    rng = np.random.default_rng([int(o.seed), 13])
    train, held = np.flatnonzero(~test), np.flatnonzero(test)
    return (deal(train, strata, batch_count(train.size, int(o.batch_size)), rng),
            deal(held, strata, batch_count(held.size, int(o.batch_size)), rng))


def check_windows_fit(batch_dir, windows, num_vis, dtype, window_hop, noise=None, train_windows=0):
    """data/writer.py's check_fits for make-batches --annotations: `windows` windows (of which `train_windows`
    get `noise`'s copies), their features spilled to the staging folder while they are extracted. Called with
    every window of the recordings before the plan (when all are kept), and with the plan's windows after it."""
    copies = noise.copies * int(train_windows) if noise is not None else 0
    check_fits(batch_dir, num_vis, dtype, windows, copies, f"--copies {noise.copies}" if noise is not None else None,
               flag=f"--window-hop {window_hop:g}" if window_hop is not None else None, spill=True,
               fix="give a larger --window-hop, a --background-ratio, fewer --copies, store --dtype float16 or "
                   "uint8, free some space, or choose another BATCH_DIR")


@dataclass
class _Spill:
    """Where step 3 left each window's features: the spill file (task) and its row, per case of the plan."""

    task_of: np.ndarray     # int64 (n,): the task whose file holds the case's row (-1: none)
    row_of: np.ndarray      # int64 (n,)
    rows: dict              # task id -> rows in its file
    bad: dict               # recording index -> why it could not be read
    seconds: float          # extraction time


def _extract(world, recs, plan, spec, window, staging, jobs, progress) -> _Spill | None:
    """Step 3 over the processes of `world`: every planned window's features into spill files in staging.
    Returns the _Spill on rank 0, None on the other ranks (once their tasks are done)."""
    tasks = _tasks(plan, recs, window.hop)
    total_s = sum(recs[i].duration for i in sorted({t[1] for t in tasks}))
    if world.size > 1:  # the bar follows this process's tasks (shown on rank 0)
        total_s = sum(t[4] for t in tasks) / world.size
    n = plan.labels.size
    spill = _Spill(np.full(n, -1, dtype=np.int64), np.zeros(n, dtype=np.int64), {}, {}, 0.0)
    t0 = time.perf_counter()
    with AudioProgress("make-batches", total_s, enabled=progress and world.is_root) as bar:
        for t, rows, reason in _shared_tasks(world, tasks, recs, spec, window.hop, staging, jobs, bar.add):
            tid, ri, wins, cases, _ = t
            if reason is not None:
                spill.bad.setdefault(ri, reason)
                continue
            if rows != len(cases):
                spill.bad.setdefault(ri, f"decoded {rows} of {len(cases)} windows")
                continue
            spill.task_of[cases] = tid
            spill.row_of[cases] = np.arange(rows)
            spill.rows[tid] = rows
    spill.seconds = time.perf_counter() - t0
    return spill if world.is_root else None


def _write_set(recs, plan, spill, train_b, test_b, spec, window, staging, o, skipped, recordings_dir,
               noise=None) -> dict:
    """Step 4 (rank 0): the batch files from the spill files, then skipped.txt and batches.meta; the summary
    (with `_files`, the set's files for the install)."""
    for ri, reason in sorted(spill.bad.items()):
        if (recs[ri].rel, reason) not in skipped:     # the channels of one file fail alike: named once
            skipped.append((recs[ri].rel, reason))
    ok = np.ones(plan.labels.size, dtype=bool)
    for ri in spill.bad:
        ok &= plan.rec != ri
    if not ok.any():
        first = "; ".join(f"{n}: {r}" for n, r in skipped[:3])
        raise NothingReadError(f"{recordings_dir}: none of the recordings could be read ({first}"
                               f"{' …' if len(skipped) > 3 else ''}); nothing was written")
    copies = None
    if noise is not None:
        copies, ok = _add_copies(recs, plan, train_b, spec, window.hop, staging, noise, int(o.batch_size), int(o.seed),
                                 spill, ok)
        train_b = copies.train_batches
    t1 = time.perf_counter()
    num_vis = int(np.prod(spec.shape))
    writer = SetWriter(staging, num_vis, o.dtype, type(plan.targets))
    writer.write_all(_window_batches(recs, plan, spill, ok, copies, train_b, test_b, window, staging, num_vis))
    for tid in spill.rows:
        try:
            os.remove(os.path.join(staging, f"windows_{tid}.f32"))
        except OSError:
            pass
    if writer.moments.count == 0:
        raise DataError(f"{recordings_dir}: none of the windows planned for the training range could be read "
                        f"({len(skipped)} recordings skipped; see skipped.txt reasons with --jobs 1), or use "
                        "--test-fraction 0")
    kept = plan.take(ok[:plan.labels.size])
    counts = {c: int(v) for c, v in zip(plan.label_names, _class_counts(kept))}
    extra = {"window": window.to_dict(),
             "windows": {"counts": counts, "left_out": int(plan.left_out),
                         "background_dropped": int(plan.background_dropped),
                         "hard_negatives": int(plan.hard_negatives), "not_reviewed": int(plan.not_reviewed)}}
    if plan.multi is not None:
        extra["windows"]["unknown"] = int((kept.multi.matrix == UNKNOWN).sum())
    if noise is not None:  # as ingest/make_batches.py records them
        extra["copies"] = noise.meta()
    files = writer.finish(plan.label_names, spec, skipped, recordings_dir, extra)
    audio_s = sum(r.duration for i, r in enumerate(recs) if i not in spill.bad)
    return {
        "read": len(recs) - len(spill.bad), "skipped": len(skipped), "batches": len(writer.files),
        "windows": int(sum(writer.sizes)) - writer.copies, "copies": writer.copies, "counts": counts,
        "train_range": writer.train_range, "test_range": writer.test_range, "train_cases": writer.train_cases,
        "test_cases": writer.test_cases,
        "shape": tuple(spec.shape), "audio_s": float(audio_s), "hard_negatives": int(plan.hard_negatives),
        "not_reviewed": int(plan.not_reviewed),
        "timings": {"extract": spill.seconds, "write": time.perf_counter() - t1},
        "_files": files,
    }


def _window_batches(recs, plan, spill, ok, copies, train_b, test_b, window, staging, num_vis):
    """The batches of the windows (and their noisy copies, `copies`: a CopyPlan or None) as a source for
    data/writer.py's SetWriter: each batch's rows read back from the spill files, training batches first; the
    windows of recordings that could not be read (not `ok`) are left out."""
    targets = plan.targets
    for idx, is_train in [(b, True) for b in train_b] + [(b, False) for b in test_b]:
        idx = idx[ok[idx]]
        if idx.size == 0:
            continue
        cols = np.empty((num_vis, idx.size), dtype=np.float32)
        tids = spill.task_of[idx]
        for tid in np.unique(tids):
            at = np.flatnonzero(tids == tid)
            mm = np.memmap(os.path.join(staging, f"windows_{tid}.f32"), dtype=np.float32, mode="r",
                           shape=(spill.rows[int(tid)], num_vis))
            cols[:, at] = mm[spill.row_of[idx[at]]].T
            del mm
        source = idx if copies is None else copies.source[idx]
        copy_no = np.zeros(idx.size, np.int64) if copies is None else copies.copy_no[idx]
        names = [_window_name(recs, plan, window.hop, i, k) for i, k in zip(source, copy_no)]
        yield Batch(cols, targets.take(source), names, is_train, copies=int((copy_no > 0).sum()))


def _class_counts(plan) -> np.ndarray:
    """Windows per class: those labelled with it, or (multi-label) those where it is present."""
    k = len(plan.label_names)
    if plan.multi is not None:
        return (plan.multi.matrix == PRESENT).sum(axis=0)
    return np.bincount(plan.labels[plan.labels >= 0], minlength=k)


def _shared_tasks(world, tasks, recs, spec, hop_s, staging, jobs, on_progress):
    """_run_tasks over the processes of `world`: each runs the tasks dealt to it (longest first to the least
    loaded); rank 0 yields every task's (task, rows, reason) in task order, the others nothing."""
    if world.size == 1:
        yield from _run_tasks(tasks, recs, spec, hop_s, staging, jobs, on_progress)
        return
    load = [0.0] * world.size
    mine = []
    for t in sorted(tasks, key=lambda t: (-t[4], t[0])):
        r = min(range(world.size), key=lambda k: (load[k], k))
        load[r] += t[4]
        if r == world.rank:
            mine.append(t)
    mine.sort(key=lambda t: t[0])
    try:
        done = [(t[0], n, reason) for t, n, reason in _run_tasks(mine, recs, spec, hop_s, staging, jobs, on_progress)]
    except Exception as exc:  # noqa: BLE001 - e.g. a full disk here: every rank must hear of it (below)
        done = exc
    parts = world.gather(done)
    # A failure on any rank ends every rank with it; rank 0 raises it inside writing_set, which removes the
    # staging folder and releases the lock (a rank failing alone left rank 0 waiting until MPI_Abort killed it)
    failed = world.bcast(next((p for p in parts if isinstance(p, Exception)), None) if world.is_root else None)
    if failed is not None:
        raise failed
    if world.is_root:
        results = sorted((r for part in parts for r in part), key=lambda r: r[0])
        for tid, n, reason in results:
            yield tasks[tid], n, reason


def _add_copies(recs, plan, train_b, spec, hop_s, staging, noise, batch_size, seed, spill, ok):
    """The noisy copies of the training windows (ingest/noise.py), as an extra extraction 'task' whose rows
    the batches take like any other, placed by data/writer.py's plan_copies: returns (CopyPlan, ok) with
    `spill` (its task_of, row_of and rows) and ok extended past the plan's n windows."""
    n = plan.labels.size
    train = np.sort(np.concatenate(train_b)) if train_b else np.zeros(0, np.int64)
    train = train[ok[train]]
    tid = max(spill.rows, default=-1) + 1
    order, _bad = window_copies(recs, plan, train, spec, hop_s, noise, os.path.join(staging, f"windows_{tid}.f32"))
    spill.rows[tid] = len(order)
    spill.task_of = np.concatenate([spill.task_of, np.full(len(order), tid, dtype=np.int64)])
    spill.row_of = np.concatenate([spill.row_of, np.arange(len(order), dtype=np.int64)])
    ok = np.concatenate([ok, np.ones(len(order), dtype=bool)])
    return plan_copies(n, train, order, plan.labels, batch_size, np.random.default_rng([seed, 14])), ok


def _window_name(recs, plan, hop_s, i, copy):
    name = f"{recs[plan.rec[i]].name}@{plan.win[i] * hop_s:.3f}"
    return copy_name(name, int(copy)) if copy else name


def summary_line(s: dict) -> str:
    def rng(r, cases):
        return f"{r[0]}-{r[1]} ({cases} windows)" if r else "none"

    shape = "x".join(str(v) for v in s["shape"])
    counts = ", ".join(f"{c} {n}" for c, n in s["counts"].items())
    rate = s["audio_s"] / max(s["seconds"], 1e-9)
    if s.get("multi_label"):
        held = (f"windows holding each class: {counts}; {s.get('unknown', 0)} class entries unknown (touched below "
                f"--min-overlap)"
                f"{', %d windows without a class not drawn' % s['background_dropped'] if s['background_dropped'] else ''}")
    else:
        held = (f"{counts}; {s['left_out']} ambiguous left out"
                f"{', %d background not drawn' % s['background_dropped'] if s['background_dropped'] else ''}")
    if s.get("hard_negatives"):
        held += f", {s['hard_negatives']} verified negatives"
    recordings = "recording" if s["read"] == 1 else "recordings"
    batches = "batch" if s["batches"] == 1 else "batches"
    line = (f"make-batches: {s['read']} {recordings} read ({audio_span(s['audio_s'])} of audio), {s['skipped']} "
            f"skipped, {s['windows']} windows ({held}), "
            f"{s['batches']} {batches} (train {rng(s['train_range'], s['train_cases'])}, "
            f"test {rng(s['test_range'], s['test_cases'])}), case shape {shape}, "
            f"{s['seconds']:.1f} s ({rate:.0f}x real time) -> {s['batch_dir']}")
    if s["skipped"]:
        line += f"; skipped recordings listed in {os.path.join(s['batch_dir'], SKIPPED)}"
    return line
