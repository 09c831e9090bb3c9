"""DETECTIONS -> the detections of each class -> the sample to review, and review.csv (docs/REVIEW.md).

DETECTIONS is a detect OUT_DIR (its detections.csv, else its tables), a detections.csv, or Raven tables (a file
or a folder) with `Class` and `Score` columns, read by convnet_cli.ingest.annotations.read_tables. Each
detection's audio file is found, in turn, under `--recordings DIR` (by the name's relative path, its longest
tail, its file name or stem, as make-batches pairs tables), through the OUT_DIR's done.jsonl (detect's record
of each recording's path), as a `Begin Path` that exists, or relative to the table's folder or the current one.

The draw, per class, seeded by (--seed, the class name), so adding a class to --classes leaves the others'
samples as they were. Detections are first put in a fixed order (recording, begin, end), so the sample does
not depend on the order the files were read in.
- top: the N highest scores (ties: the earlier recording and time).
- random: N drawn uniformly without replacement.
- stratified: B = min(N, 10) bins of equal width between the class's lowest and highest score (one bin when
  all scores are equal; the top edge belongs to the top bin); each bin is given N // B items and the
  N mod B top bins one more; a bin holding fewer than it is given passes the rest to the bins that still
  have detections, round-robin from the top bin; within a bin the items are drawn at random. So
  min(N, detections) items are drawn in all, and every score range is reviewed, not only the top.
Items are numbered from 1, class by class (in --classes order, else sorted), each class by falling score.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import zlib
from dataclasses import dataclass, replace

import numpy as np

from convnet_cli.detect.events import pick_classes
from convnet_cli.errors import ConfigError, DataError
from convnet_cli.fileio import write_text_atomic

SELECT = ("top", "random", "stratified")
MAX_BINS = 10
REVIEW_CSV = "review.csv"
REVIEW_JSON = "review.json"
# the eight columns of SPEC 18, then what the page and the verdict table need: the audio file found, the band
COLUMNS = ("id", "recording", "begin_s", "end_s", "class", "score", "clip", "image", "path", "low_freq",
           "high_freq")
CHANNEL_COLUMN = "channel"   # review.csv's last column: the channel a clip is cut from (empty: mixed)


@dataclass(frozen=True)
class Detection:
    recording: str          # as DETECTIONS names it: detect's relative name, a Begin Path or a Begin File
    begin: float
    end: float
    label: str
    score: float
    low_freq: float | None = None
    high_freq: float | None = None
    source: str = ""        # the file it was read from, and its line
    line: int = 0
    path: str = ""          # the audio file, once found
    channel: int | None = None   # the channel a detect --channel run found it on (1-based); None: mixed


@dataclass(frozen=True)
class Item:
    id: int
    recording: str
    begin: float
    end: float
    label: str
    score: float
    path: str
    low_freq: float | None = None
    high_freq: float | None = None
    channel: int | None = None   # the recording's channel the clip is cut from (1-based); None: mixed

    @property
    def stem(self) -> str:
        """File name stem of this item's clip, image and listening copy: '0007_upcall'."""
        safe = "".join(ch if ch.isascii() and (ch.isalnum() or ch in "-_") else "_" for ch in self.label)[:40]
        return f"{self.id:04d}_{safe or 'class'}"

    @property
    def clip(self) -> str:
        return f"clips/{self.stem}.wav"

    @property
    def image(self) -> str:
        return f"images/{self.stem}.png"

    @property
    def listen(self) -> str:
        return f"listen/{self.stem}.wav"


# ---- reading DETECTIONS -------------------------------------------------------------------------------

def is_detect_dir(path) -> bool:
    from convnet_cli.detect.detect import DONE, SETTINGS

    return os.path.isdir(path) and any(os.path.exists(os.path.join(path, n)) for n in (DONE, SETTINGS))


def _settings(folder):
    from convnet_cli.detect.detect import SETTINGS

    try:
        with open(os.path.join(folder, SETTINGS), encoding="utf-8") as f:
            s = json.load(f)
        return s if isinstance(s, dict) else None
    except (OSError, ValueError):
        return None


def load_detections(path: str, exclude: str | None = None):
    """(detections, context) of DETECTIONS. context: {'done': detect's records or {}, 'classes': the
    classes detect reported or None, 'band': (low, high) Hz of detect's features or None}. Tables under
    `exclude` (REVIEW_DIR, when it sits inside DETECTIONS) are not read."""
    from convnet_cli.detect.detect import read_done
    from convnet_cli.detect.raven import COMBINED_NAME, DETECTIONS_CSV
    from convnet_cli.ingest.annotations import read_tables

    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(f"{path}: no such detections folder or file; give a detect OUT_DIR, its detections.csv, "
                        "or Raven tables with Class and Score columns")
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    settings = _settings(folder) if is_detect_dir(folder) else None
    done = read_done(folder) if is_detect_dir(folder) else {}
    if os.path.isdir(path) and os.path.exists(os.path.join(path, DETECTIONS_CSV)) and is_detect_dir(path):
        selections = read_tables(os.path.join(path, DETECTIONS_CSV))
    elif os.path.isdir(path):
        selections = read_tables(path)
        ex = os.path.abspath(exclude) + os.sep if exclude else None
        selections = [s for s in selections if not ex or not os.path.abspath(s.source).startswith(ex)]
        singles = [s for s in selections if os.path.basename(s.source) != COMBINED_NAME]
        if singles:                      # detect's combined table repeats its per-recording tables
            selections = singles
    else:
        selections = read_tables(path)
    band = None
    feats = (settings or {}).get("features") or {}
    if feats.get("sample_rate"):
        hi = feats.get("fmax")
        band = (float(feats.get("fmin") or 0.0), float(hi if hi is not None else feats["sample_rate"] / 2))
    dets = []
    for s in selections:
        if s.score is None:
            raise DataError(f"{s.source} line {s.line}: no score; review needs detections with a Score column "
                            "(as detect writes them) to choose which to review")
        dets.append(Detection(s.recording, float(s.begin), float(s.end), s.label, float(s.score),
                              s.low_freq, s.high_freq, s.source, s.line))
    classes = list(settings["classes"]) if settings and settings.get("classes") else None
    by_channel = bool(settings) and settings.get("channel", "mix") != "mix"   # detect --channel N or all
    if by_channel:
        dets = [replace(d, channel=s.channel) for d, s in zip(dets, selections)]
    expansion = float((settings or {}).get("time_expansion", 1.0))
    return dets, {"done": done, "classes": classes, "band": band, "time_expansion": expansion}


def choose_classes(dets, classes, detect_classes):
    """The classes to review, in order: --classes (checked), else detect's, else those of the detections."""
    seen = sorted({d.label for d in dets})
    known = list(detect_classes or []) + [c for c in seen if c not in (detect_classes or [])]
    if classes:
        return pick_classes(classes, known, "no detections of class", "the classes detected")
    return list(detect_classes) if detect_classes else seen


# ---- the draw ------------------------------------------------------------------------------------------

def _rng(seed: int, label: str):
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(label.encode("utf-8"))])


def score_bins(scores, n: int):
    """Equal-width bin edges between the lowest and highest score (B = min(n, MAX_BINS), 1 when all are
    equal) and each score's bin (0 = lowest; the top edge is in the top bin)."""
    s = np.asarray(scores, dtype=np.float64)
    lo, hi = float(s.min()), float(s.max())
    b = 1 if hi <= lo else max(1, min(int(n), MAX_BINS))
    edges = [lo + (hi - lo) * k / b for k in range(b)] + [hi]
    return edges, bin_of(s, edges)


def bin_of(scores, edges):
    s = np.asarray(scores, dtype=np.float64)
    b = len(edges) - 1
    lo, hi = edges[0], edges[-1]
    if hi <= lo:
        return np.zeros(s.shape, dtype=np.int64)
    return np.clip(np.floor((s - lo) / (hi - lo) * b).astype(np.int64), 0, b - 1)


def stratified_counts(population, n: int):
    """How many of each bin's `population` to draw so that min(n, total) are drawn, spread evenly
    (see the module doc)."""
    b = len(population)
    quota = [n // b + (1 if k >= b - n % b else 0) for k in range(b)]     # the remainder to the top bins
    take = [min(q, p) for q, p in zip(quota, population)]
    left = min(n, sum(population)) - sum(take)
    while left > 0:
        for k in reversed(range(b)):
            if left and take[k] < population[k]:
                take[k] += 1
                left -= 1
    return take


def draw(dets, classes, per_class: int, select: str, seed: int):
    """The drawn detections in review order (class by class, each by falling score), and {class: its bins'
    edges and detection counts} for review.json (stratified only)."""
    if select not in SELECT:
        raise ConfigError(f"--select {select}: use one of {', '.join(SELECT)}")
    out, bins = [], {}
    for c in classes:
        pool = sorted((d for d in dets if d.label == c), key=lambda d: (d.recording, d.begin, d.end, -d.score))
        if not pool:
            continue
        scores = np.array([d.score for d in pool])
        rng = _rng(seed, c)
        if select == "top" or len(pool) <= per_class and select != "stratified":
            pick = np.argsort(-scores, kind="stable")[:per_class]
        elif select == "random":
            pick = rng.choice(len(pool), size=per_class, replace=False)
        else:
            edges, which = score_bins(scores, per_class)
            population = [int((which == k).sum()) for k in range(len(edges) - 1)]
            take = stratified_counts(population, per_class)
            pick = []
            for k, t in enumerate(take):
                members = np.flatnonzero(which == k)
                if t:
                    pick.extend(rng.choice(members, size=t, replace=False).tolist())
            bins[c] = {"edges": [float(e) for e in edges], "detections": population}
        chosen = [pool[int(i)] for i in pick]
        chosen.sort(key=lambda d: (-d.score, d.recording, d.begin, d.end))
        out.extend(chosen)
    return out, bins


# ---- finding each detection's audio ---------------------------------------------------------------------

def find_recordings(dets, done: dict, recordings_dir: str | None):
    """The detections with `path` set to their audio file (see the module doc); DataError naming the first
    one whose audio is not found."""
    from convnet_cli.ingest.annotations import Selection, assign_to_recordings, recording_key

    rels = None
    if recordings_dir:
        from convnet_cli.ingest.sources import find_audio

        if not os.path.isdir(recordings_dir):
            raise ConfigError(f"--recordings {recordings_dir}: not a folder; give the folder detect read")
        rels = find_audio(recordings_dir)
    by_table, by_name, by_key = {}, {}, {}
    for rec in done.values():
        if rec.get("table"):
            by_table[rec["table"]] = rec["path"]
        if rec.get("name"):
            by_name[rec["name"]] = rec["path"]
            by_key.setdefault(recording_key(rec["name"]), []).append(rec["path"])
    cache, out = {}, []
    for d in dets:
        key = (d.recording, d.source)
        if key not in cache:
            cache[key] = _find_one(d, recordings_dir, rels, by_table, by_name, by_key, Selection,
                                   assign_to_recordings, recording_key)
        out.append(replace(d, path=cache[key]))
    return out


def _find_one(d, root, rels, by_table, by_name, by_key, Selection, assign, recording_key):
    where = f"{d.source} line {d.line}" if d.source else "detection"
    if rels is not None:
        try:
            rel = next(iter(assign([Selection(d.recording, 0.0, 1.0, d.label, source=d.source, line=d.line)],
                                   root, rels)))
        except DataError as exc:
            if "could be any of" in str(exc):
                raise
            raise DataError(f"{where}: recording '{d.recording}' is not under --recordings {root}; give the "
                            "folder detect read") from None
        return os.path.abspath(os.path.join(root, rel))
    cands = []
    t = os.path.basename(d.source) if d.source else ""
    if t in by_table:
        cands.append(by_table[t])
    if d.recording in by_name:
        cands.append(by_name[d.recording])
    if len(by_key.get(recording_key(d.recording), [])) == 1:
        cands.append(by_key[recording_key(d.recording)][0])
    from_done = list(cands)
    name = d.recording.replace("\\", "/")
    if os.path.isabs(name):
        cands.append(name)
    if d.source:
        cands.append(os.path.join(os.path.dirname(os.path.abspath(d.source)), name))
    cands.append(os.path.abspath(name))
    for c in cands:
        if os.path.isfile(c):
            return os.path.abspath(c)
    seen = f" (detect read it from {from_done[0]}, which is not there now)" if from_done else ""
    raise DataError(f"{where}: recording '{d.recording}' not found{seen}; give --recordings DIR, the folder "
                    "that holds the recordings")


# ---- review.csv ----------------------------------------------------------------------------------------

def _t(x: float) -> str:
    return f"{x:.3f}"


def _hz(x) -> str:
    return "" if x is None else f"{float(x):.1f}"


def items_of(dets, band=None):
    """Numbered Items of the drawn detections (their `path` found); a detection without its own band takes
    detect's (features fmin..fmax)."""
    items = []
    for i, d in enumerate(dets, 1):
        lo, hi = d.low_freq, d.high_freq
        if lo is None and hi is None and band:
            lo, hi = band
        items.append(Item(i, d.recording, round(d.begin, 3), round(d.end, 3), d.label, round(d.score, 4), d.path,
                          lo, hi, d.channel))
    return items


def review_csv_text(items) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS + (CHANNEL_COLUMN,))
    for it in items:
        w.writerow([it.id, it.recording, _t(it.begin), _t(it.end), it.label, f"{it.score:.4f}", it.clip, it.image,
                    it.path, _hz(it.low_freq), _hz(it.high_freq), "" if it.channel is None else str(it.channel)])
    return buf.getvalue()


def write_sample(review_dir: str, items, settings: dict):
    """review.json (how the sample was drawn), then review.csv (the sample), each atomically."""
    write_text_atomic(os.path.join(review_dir, REVIEW_JSON), json.dumps(settings, indent=2) + "\n")
    write_text_atomic(os.path.join(review_dir, REVIEW_CSV), review_csv_text(items))


def read_sample(review_dir: str):
    """(items, settings) of the sample in REVIEW_DIR; DataError naming the line for a damaged review.csv."""
    path = os.path.join(review_dir, REVIEW_CSV)
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as exc:
        from convnet_cli.fileio import open_error

        raise open_error(path, exc, "review sample", "review.csv is the CSV convnet review writes") from None
    if not rows or [h.strip() for h in rows[0][:len(COLUMNS)]] != list(COLUMNS):
        raise DataError(f"{path} line 1: not the header convnet review writes ({','.join(COLUMNS)}); give another "
                        "--out, or restore the file")
    items = []
    for n, row in enumerate(rows[1:], 2):
        if not any(c.strip() for c in row):
            continue
        try:
            v = dict(zip(COLUMNS + (CHANNEL_COLUMN,), row))
            channel = v.get(CHANNEL_COLUMN, "").strip()
            items.append(Item(int(v["id"]), v["recording"], float(v["begin_s"]), float(v["end_s"]), v["class"],
                              float(v["score"]), v["path"], float(v["low_freq"]) if v["low_freq"] else None,
                              float(v["high_freq"]) if v["high_freq"] else None, int(channel) if channel else None))
        except (KeyError, ValueError):
            raise DataError(f"{path} line {n}: not a row convnet review writes (id, recording, times, class, "
                            "score, ...); restore the file or give another --out") from None
        if items[-1].id != len(items) or not math.isfinite(items[-1].score):
            raise DataError(f"{path} line {n}: item ids must run 1, 2, 3, ...; restore the file or give another --out")
    try:
        with open(os.path.join(review_dir, REVIEW_JSON), encoding="utf-8") as f:
            settings = json.load(f)
    except (OSError, ValueError):
        settings = {}
    return items, settings if isinstance(settings, dict) else {}
