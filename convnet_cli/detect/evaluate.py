"""Event-level scoring of detections against annotations (docs/CONFIG.md).

Per recording and class, detections in falling score order (ties: earlier first): a detection is a true
positive when it overlaps a not yet matched annotation of its class by at least `min_overlap` of the
shorter of the two (of several such annotations, the one it overlaps most); other detections are false
positives; annotations left unmatched are false negatives.

Greedy matching by score makes the matches among the detections scoring >= t the same whatever lower-
scored detections exist, so one matching gives the whole precision-recall curve over the score threshold:
at each distinct score t, precision = TP(>= t) / detections(>= t), recall = TP(>= t) / annotations.
Average precision is the step-wise area under that curve, sum over thresholds of (R_i - R_{i-1}) * P_i
(scikit-learn's `average_precision_score`); recall that no threshold reaches adds nothing.
`overall` pools every class's detections and annotations (micro-average). A ratio of 0/0 is null.

Scores are probabilities: a score that is not a number in [0, 1] (nan, 7, -3) is a DataError naming the
file and line, since it would rank its detection first or last; so is a row without a score in a table
whose other rows have one. Detections without any score (a table with no Score column) all rank alike.

A detect OUT_DIR is read through its journal (done.jsonl): each finished recording's own table, under the
recording's relative name, so a run killed before it wrote detections.csv loses nothing. Given as the
annotations, it is read the same way (its combined table and detections.csv would count each event again).

A detection that overlaps several annotations of its class (by min_overlap of the shorter) can match only
one of them: such detections are counted in a note (a chorus merged into long events).
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from collections import defaultdict
from dataclasses import dataclass, replace

import numpy as np

from convnet_cli import metrics
from convnet_cli.detect.events import pick_classes
from convnet_cli.errors import ConfigError, DataError

DETECTIONS_LABEL_FLAG = "--detections-label-col"
RESULT_KEYS = ("tp", "fp", "fn", "precision", "recall", "f1", "average_precision", "threshold_at_precision",
               "recall_at_threshold")


@dataclass(frozen=True)
class Interval:
    begin: float
    end: float
    label: str
    score: float | None = None
    # the recording's channel (1-based; a detect --channel run's events, an annotation's Channel column); None:
    # any channel. A detection and an annotation on two different channels never match.
    channel: int | None = None


def overlap_fraction(b0, e0, b1, e1) -> float:
    """Overlap of [b0, e0] and [b1, e1] as a fraction of the shorter of the two."""
    inter = min(e0, e1) - max(b0, b1)
    shorter = min(e0 - b0, e1 - b1)
    if inter <= 0 or shorter <= 0:
        return 0.0
    return inter / shorter


def match(detections, annotations, min_overlap: float):
    """One recording, one class. detections: [Interval with score]; annotations: [Interval].
    -> ([(score, is_tp)] in matching order, number of unmatched annotations)."""
    dets = sorted(detections, key=lambda d: (-(d.score if d.score is not None else 1.0), d.begin))
    if annotations:
        ab = np.array([a.begin for a in annotations], dtype=np.float64)
        ae = np.array([a.end for a in annotations], dtype=np.float64)
        ach = np.array([0 if a.channel is None else a.channel for a in annotations], dtype=np.int64)
    else:
        ab = ae = np.zeros(0)
        ach = np.zeros(0, dtype=np.int64)
    free = np.ones(len(annotations), dtype=bool)
    out = []
    for d in dets:
        score = d.score if d.score is not None else 1.0
        hit = False
        if free.any():
            inter = np.minimum(ae, d.end) - np.maximum(ab, d.begin)
            shorter = np.minimum(ae - ab, d.end - d.begin)
            with np.errstate(divide="ignore", invalid="ignore"):
                frac = np.where((inter > 0) & (shorter > 0), inter / np.where(shorter > 0, shorter, 1), 0.0)
            frac = np.where(free, frac, -1.0)
            if d.channel is not None:          # an annotation on another channel is not this detection's
                frac = np.where((ach == 0) | (ach == d.channel), frac, -1.0)
            j = int(np.argmax(frac)) if frac.size else -1
            if j >= 0 and frac[j] >= min_overlap and frac[j] > 0:
                free[j] = False
                hit = True
        out.append((float(score), hit))
    return out, int(free.sum())


def pr_curve(scored, n_annotations: int):
    """scored: [(score, is_tp)] -> (thresholds, precision, recall) at each distinct score, falling
    (convnet_cli/metrics.py's pr_curve, with the annotations as the positives)."""
    return metrics.pr_curve([x for x, _ in scored], [t for _, t in scored], n_annotations)


def summarize(scored, n_fn: int, target_precision: float) -> dict:
    """scored: [(score, is_tp)] of all detections; n_fn unmatched annotations -> one class's dict in evaluation.json."""
    tp = sum(1 for _, t in scored if t)
    fp = len(scored) - tp
    n_ann = tp + n_fn
    precision, recall, f1 = metrics.prf(tp, fp, int(n_fn), undefined=None)
    thr, prec, rec = pr_curve(scored, n_ann)
    ap = None
    at, at_recall = None, None
    if n_ann:
        ap = metrics.average_precision_from_curve(prec, rec)
        ok = np.flatnonzero(prec >= target_precision)
        if ok.size:
            k = int(ok[-1])  # thresholds fall along the curve: the last one reaching P is the lowest
            at, at_recall = float(thr[k]), float(rec[k])
    elif len(thr):
        ok = np.flatnonzero(prec >= target_precision)
        if ok.size:
            at = float(thr[int(ok[-1])])
    return {"tp": tp, "fp": fp, "fn": int(n_fn), "precision": precision, "recall": recall, "f1": f1,
            "average_precision": ap, "threshold_at_precision": at, "recall_at_threshold": at_recall}


@dataclass
class Evaluation:
    result: dict          # evaluation.json
    curves: dict          # {class or 'overall': (thresholds, precision, recall)}
    notes: list           # one-line remarks about recordings left out or unannotated


def evaluate(detections: dict, annotations: dict, classes, min_overlap: float = 0.5,
             target_precision: float = 0.9, notes=None) -> Evaluation:
    """detections, annotations: {recording: [Interval]} over the same recording keys (already paired).
    classes: the classes scored, in order."""
    if not 0.0 < min_overlap <= 1.0:
        raise ConfigError(f"--min-overlap {min_overlap:g}: give a fraction in (0, 1]")
    if not 0.0 < target_precision <= 1.0:
        raise ConfigError(f"--target-precision {target_precision:g}: give a precision in (0, 1]")
    per_class = {c: ([], 0) for c in classes}
    recs = set(detections) | set(annotations)
    wide, covered = 0, 0   # detections overlapping several annotations, and those annotations
    for rec in sorted(recs):
        dets, anns = defaultdict(list), defaultdict(list)
        for d in detections.get(rec, ()):
            dets[d.label].append(d)
        for a in annotations.get(rec, ()):
            anns[a.label].append(a)
        for c in classes:
            scored, fn = match(dets.get(c, []), anns.get(c, []), min_overlap)
            prev, prev_fn = per_class[c]
            per_class[c] = (prev + scored, prev_fn + fn)
            n, m = overlapping_several(dets.get(c, []), anns.get(c, []), min_overlap)
            wide, covered = wide + n, covered + m
    notes = list(notes or [])
    if wide:
        notes.append(f"{wide} detection(s) overlap several annotations of their class ({covered} annotations); "
                     f"each matches one at most, so the others count as missed (detect's --split-dip and "
                     f"--max-event split such events)")
    result = {"classes": {}, "overall": None, "min_overlap": float(min_overlap)}
    curves = {}
    pooled, pooled_fn = [], 0
    for c in classes:
        scored, fn = per_class[c]
        result["classes"][c] = summarize(scored, fn, target_precision)
        curves[c] = pr_curve(scored, len([1 for _, t in scored if t]) + fn)
        pooled += scored
        pooled_fn += fn
    result["overall"] = summarize(pooled, pooled_fn, target_precision)
    curves["overall"] = pr_curve(pooled, len([1 for _, t in pooled if t]) + pooled_fn)
    return Evaluation(result, curves, notes)


def overlapping_several(detections, annotations, min_overlap: float) -> tuple:
    """(detections that overlap two or more of `annotations` by min_overlap of the shorter, the annotations
    they overlap so) for one recording and class."""
    if not detections or len(annotations) < 2:
        return 0, 0
    ab = np.array([a.begin for a in annotations], dtype=np.float64)
    ae = np.array([a.end for a in annotations], dtype=np.float64)
    n, hit = 0, np.zeros(len(annotations), dtype=bool)
    for d in detections:
        inter = np.minimum(ae, d.end) - np.maximum(ab, d.begin)
        shorter = np.minimum(ae - ab, d.end - d.begin)
        mine = (inter > 0) & (shorter > 0) & (inter >= min_overlap * shorter)
        if mine.sum() > 1:
            n += 1
            hit |= mine
    return n, int(hit.sum())


# ---- reading both sides ----------------------------------------------------------------------------

def _has_folder(name: str) -> bool:
    return "/" in name.replace("\\", "/").strip("/")


def _same_path(a: str, b: str) -> bool:
    """'site1/rec01.flac' and '/data/site1/rec01.flac' name the same file; 'site2/rec01.flac' does not."""
    a, b = a.replace("\\", "/"), b.replace("\\", "/")
    if a == b:
        return True
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    return long_.endswith("/" + short.lstrip("/"))


def pair_recordings(det_names, ann_names):
    """{annotation recording name: detection recording name} for every annotation name that has a
    partner: by relative path when both names have folders, else by recording_key. DataError when a name
    fits two recordings."""
    from convnet_cli.ingest.annotations import recording_key

    by_key = defaultdict(list)
    for d in det_names:
        by_key[recording_key(d)].append(d)
    out = {}
    for a in ann_names:
        cands = by_key.get(recording_key(a), [])
        if _has_folder(a):
            cands = [d for d in cands if not _has_folder(d) or _same_path(a, d)]
        if len(cands) > 1:
            raise DataError(f"annotations name the recording '{a}', which fits {len(cands)} recordings of the "
                            f"detections ({', '.join(sorted(cands)[:3])}); name recordings by their relative "
                            f"path in the tables (a 'Begin Path' column or a CSV filename with folders)")
        if cands:
            out[a] = cands[0]
    return out


def _group(selections):
    out = defaultdict(list)
    for s in selections:
        out[s.recording].append(Interval(float(s.begin), float(s.end), str(s.label),
                                         None if s.score is None else float(s.score), s.channel))
    return out


def check_scores(selections):
    """DataError naming the file and line of a selection whose score is not a probability, or that has none
    while another row of its table has one (the annotation reader leaves an unreadable score out)."""
    scored = {s.source for s in selections if s.score is not None}
    for s in selections:
        where = f"{s.source} line {s.line}" if s.source else f"a detection of '{s.recording}'"
        if s.score is None:
            if s.source in scored:
                raise DataError(f"{where}: no score (empty, nan or inf) while other rows of the table have one; "
                                "give every detection a score between 0 and 1")
        elif not (math.isfinite(s.score) and 0.0 <= s.score <= 1.0):
            raise DataError(f"{where}: score {s.score:g} is not between 0 and 1; fix that cell (scores are "
                            "probabilities)")
    return selections


def _read_detections_csv(path: str):
    """detect's detections.csv -> {recording: [Interval]}, every row checked (raven.detection_row); None when
    the header is not detect's (then it is read as any other table). Quoted names may hold line breaks."""
    from convnet_cli.detect.raven import CHANNEL_COLUMN, DETECTIONS_HEADER, detection_row
    from convnet_cli.fileio import open_error

    out, at = defaultdict(list), 1
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            head = tuple(h.strip() for h in header) if header is not None else None
            if head not in (DETECTIONS_HEADER, DETECTIONS_HEADER + (CHANNEL_COLUMN,)):
                return None
            at = reader.line_num + 1
            for row in reader:
                where, at = f"{path} line {at}", reader.line_num + 1
                if not any(c.strip() for c in row):
                    continue
                if len(row) != len(head):
                    raise DataError(f"{where}: {len(row)} cells, the header has {len(head)} "
                                    f"({','.join(head)}); fix that row")
                if not row[0].strip():
                    raise DataError(f"{where}: empty filename; name the recording of every detection")
                b, e, c, score = detection_row(where, row[1:5])
                channel = None
                if len(head) > len(DETECTIONS_HEADER):
                    cell = row[5].strip()
                    if not (cell.isdigit() and int(cell) >= 1):
                        raise DataError(f"{where}, channel {cell!r}: not a channel number (1 for the first); fix "
                                        "that cell")
                    channel = int(cell)
                out[row[0]].append(Interval(b, e, c, score, channel))
    except (OSError, UnicodeDecodeError) as exc:
        raise open_error(path, exc, "detections file", "give detect's detections.csv (UTF-8 CSV)") from None
    except csv.Error as exc:
        raise DataError(f"{path} line {at}: not a readable CSV line ({exc}); fix that line") from None
    return out


def _read_out_dir(folder, events: bool = True):
    """A detect OUT_DIR through its journal -> ({recording name: [Interval]} (empty unless `events`),
    {name of a recording finished: its duration in seconds as detect read it, or None}). A record whose table
    is gone (removed by hand) does not count as finished."""
    from convnet_cli.detect.detect import read_done
    from convnet_cli.detect.raven import read_own_table

    settings = _detect_settings(folder) or {}
    by_channel = settings.get("channel", "mix") != "mix"   # a --channel N or all run: its events' channels count
    out, names = {}, {}
    for rec in sorted(read_done(folder).values(), key=lambda r: r["name"]):
        table = os.path.join(folder, rec["table"])
        if not os.path.exists(table):
            continue
        names[rec["name"]] = float(rec["duration"]) if rec.get("duration") else None
        if events:
            out[rec["name"]] = [Interval(b, e, c, sc, ch if by_channel else None)
                                for b, e, c, sc, ch in read_own_table(table, channels=True)]
    return out, names


def _detect_settings(folder):
    path = os.path.join(folder, "detect.json")
    try:
        with open(path, encoding="utf-8") as f:
            settings = json.load(f)
    except (OSError, ValueError):
        return None
    return settings if isinstance(settings, dict) else None


def load_detections(path: str, label_col: str | None = None):
    """DETECTIONS -> ({recording: [Interval]}, {recording processed: its duration or None} or None when
    unknown, the classes detect reported or None). label_col: the class column of Raven tables of another
    detector (--detections-label-col; BirdNET-Analyzer's: 'Species Code' or 'Common Name')."""
    from convnet_cli.detect.detect import is_out_dir
    from convnet_cli.detect.raven import COMBINED_NAME, DETECTIONS_CSV
    from convnet_cli.ingest.annotations import read_tables

    if not os.path.exists(path):
        raise DataError(f"{path}: no such detections folder or file (give a detect OUT_DIR, its detections.csv, "
                        f"or Raven tables)")
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    settings = _detect_settings(folder)
    classes = settings.get("classes") if settings else None
    classes = [str(c) for c in classes] if isinstance(classes, list) and classes else None
    if is_out_dir(path):
        dets, done = _read_out_dir(path)
        return dets, done, classes
    if os.path.isdir(path):
        csv_path = os.path.join(path, DETECTIONS_CSV)
        if os.path.exists(csv_path):
            got = _read_detections_csv(csv_path)
            if got is not None:
                return got, None, classes
        tables = []
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            tables += [os.path.join(root, f) for f in sorted(files)
                       if f.endswith(".txt") and not f.startswith(".") and f != "skipped.txt"]
        singles = [t for t in tables if os.path.basename(t) != COMBINED_NAME]
        if not tables:
            raise DataError(f"{path}: no detections here (no detections.csv and no Raven tables *.txt)")
        sel = []
        for t in (singles or tables):
            sel += read_tables(t, label_col, label_flag=DETECTIONS_LABEL_FLAG)
        return _tables_channels(_group(check_scores(sel)), settings), None, classes
    done = None
    if os.path.basename(path) == DETECTIONS_CSV and is_out_dir(folder):
        done = _read_out_dir(folder, events=False)[1]
    got = _read_detections_csv(path) if path.lower().endswith(".csv") else None
    if got is not None:
        return got, done, classes
    return _tables_channels(_group(check_scores(read_tables(path, label_col, label_flag=DETECTIONS_LABEL_FLAG))),
                            settings), done, classes


def _tables_channels(dets, settings):
    """Detections read from Raven tables keep their Channel only when a detect --channel N or all run wrote
    them (its detect.json says so): another detector's tables, and detect's mixed runs, say Channel 1 for
    sound from every channel, and must match annotations on any channel."""
    if settings and settings.get("channel", "mix") != "mix":
        return dets
    return {r: [replace(i, channel=None) for i in v] for r, v in dets.items()}


def load_pair(detections_path: str, annotations_path: str, label_col=None, classes=None, detections_label_col=None):
    """Both sides keyed by the detection side's recording names, the classes to score, and notes. label_col:
    the annotations' class column; detections_label_col: the detection tables' (load_detections)."""
    from convnet_cli.detect.detect import is_out_dir
    from convnet_cli.detect.events import is_background
    from convnet_cli.ingest.annotations import read_tables

    dets, processed, detect_classes = load_detections(detections_path, detections_label_col)
    if is_out_dir(annotations_path):   # another detect's output as the reference: its tables, once each
        anns_raw = {r: [Interval(i.begin, i.end, i.label, None, i.channel) for i in v]
                    for r, v in _read_out_dir(annotations_path)[0].items()}
    else:
        # a reviewed table's false and unsure rows are not calls (convnet review's verdicts)
        anns_raw = _group([a for a in read_tables(annotations_path, label_col) if a.verdict in (None, "true")])
    universe = list(processed) if processed is not None else sorted(dets)
    pairs = pair_recordings(universe, sorted(anns_raw))
    notes = []
    anns = defaultdict(list)
    unpaired = [a for a in anns_raw if a not in pairs]
    past_end, example = 0, None
    for a, d in pairs.items():
        # a table that covers more than the audio detect read (a snippet of a long recording): what begins
        # after the recording's end cannot be detected, and is left out
        end = processed.get(d) if processed is not None else None
        keep = anns_raw[a] if end is None else [i for i in anns_raw[a] if i.begin < end]
        if len(keep) < len(anns_raw[a]):
            past_end += len(anns_raw[a]) - len(keep)
            example = example or (d, end, max(i.end for i in anns_raw[a]))
        anns[d].extend(keep)
    if past_end:
        d, end, last = example
        notes.append(f"{past_end} annotation(s) begin after the end of their recording as detect read it and are "
                     f"left out (e.g. '{d}' is {end:.1f} s, its annotations run to {last:.1f} s)")
    if unpaired:
        n = sum(len(anns_raw[a]) for a in unpaired)
        if processed is not None:
            notes.append(f"{len(unpaired)} annotated recording(s) ({n} annotations) were not run through detect "
                         f"and are left out")
        else:
            for a in unpaired:
                anns[a].extend(anns_raw[a])
            notes.append(f"{len(unpaired)} annotated recording(s) have no detections: their {n} annotations "
                         f"count as missed (give the detect OUT_DIR to score only the recordings it processed)")
    lonely = [d for d in universe if d not in anns]
    n_lonely = sum(len(dets.get(d, ())) for d in lonely)
    if lonely:
        notes.append(f"{len(lonely)} detected recording(s) have no annotations: their {n_lonely} detections "
                     f"count as false positives")
    if classes:
        present = sorted({i.label for v in dets.values() for i in v} | {i.label for v in anns_raw.values() for i in v}
                         | set(detect_classes or ()))
        wanted = pick_classes(classes, present, "no detection or annotation has the class", "the classes present")
    elif detect_classes:
        wanted = detect_classes
    else:
        seen = {i.label for v in dets.values() for i in v} | {i.label for v in anns.values() for i in v}
        wanted = sorted(c for c in seen if not is_background(c))
    unscored = sorted({i.label for v in anns.values() for i in v} - set(wanted))
    unscored = [c for c in unscored if not is_background(c)]
    if unscored:
        notes.append(f"annotation label(s) {', '.join(unscored[:5])} are not among the classes scored "
                     f"({', '.join(wanted)}); name them with --classes to score them")
    if not wanted:
        raise DataError(f"{detections_path}, {annotations_path}: no classes to score (no detections and no "
                        f"annotations); name them with --classes")
    universe_set = set(universe) | set(anns)
    return ({r: dets.get(r, []) for r in universe_set}, {r: anns.get(r, []) for r in universe_set}, wanted,
            notes)


# ---- calibration: thresholds per class from the precision-recall curves --------------------------------

def parse_calibrate(text: str):
    """--calibrate 'precision=P' -> ('precision', P); 'f1' -> ('f1', None). ConfigError otherwise."""
    t = str(text).strip().lower().replace(" ", "")
    if t == "f1":
        return "f1", None
    if t.startswith("precision="):
        try:
            p = float(t.split("=", 1)[1])
        except ValueError:
            p = float("nan")
        if 0.0 < p <= 1.0:
            return "precision", p
    raise ConfigError(f"--calibrate {text!r}: give precision=P (P in (0, 1], e.g. precision=0.9) or f1")


def calibrate(curves: dict, classes, rule) -> tuple:
    """({class: threshold}, notes): per class the lowest score threshold whose precision reaches P
    (`('precision', P)`), or the one of the highest F1 (`('f1', None)`), read off the class's precision-recall
    curve over its detections' scores. A class whose curve never reaches P gets 1.0 (detect then reports only
    scores of 1.0) and a class without detections or annotations keeps 0.5; the notes say which."""
    from convnet_cli.thresholds import DEFAULT_THRESHOLD

    kind, target = rule
    out, notes = {}, []
    for c in classes:
        thr, prec, rec = curves[c]
        if len(thr) == 0 or (kind == "f1" and not np.isfinite(rec).any()):
            out[c] = DEFAULT_THRESHOLD
            notes.append(f"{c}: no {'detections' if len(thr) == 0 else 'annotations'} to calibrate on; "
                         f"threshold {DEFAULT_THRESHOLD:g} kept")
            continue
        if kind == "precision":
            ok = np.flatnonzero(prec >= target)
            if ok.size:
                out[c] = float(thr[int(ok[-1])])  # thresholds fall along the curve: the last one is the lowest
            else:
                out[c] = 1.0
                notes.append(f"{c}: no threshold reaches precision {target:g} (at most {float(prec.max()):.3f}); "
                             "threshold 1.0")
        else:
            with np.errstate(invalid="ignore", divide="ignore"):
                f1 = np.where(prec + rec > 0, 2 * prec * rec / (prec + rec), 0.0)
            out[c] = float(thr[int(np.nanargmax(f1))])
    return out, notes


# ---- output -----------------------------------------------------------------------------------------

def _fmt(v, spec=".3f"):
    return "-" if v is None else format(v, spec)


def format_table(result: dict) -> str:
    rows = [("class", "tp", "fp", "fn", "precision", "recall", "f1", "AP", "thr@P", "recall@thr")]
    for name, r in list(result["classes"].items()) + [("overall", result["overall"])]:
        rows.append((name, str(r["tp"]), str(r["fp"]), str(r["fn"]), _fmt(r["precision"]), _fmt(r["recall"]),
                     _fmt(r["f1"]), _fmt(r["average_precision"]), _fmt(r["threshold_at_precision"], ".4f"),
                     _fmt(r["recall_at_threshold"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for k, r in enumerate(rows):
        lines.append("  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)))
        if k == 0 or k == len(rows) - 2:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(result: dict, folder: str, notes=None) -> str:
    """DIR/evaluation.json: the result, and the notes (when given) under "notes"."""
    from convnet_cli.fileio import make_out_dir, write_text_atomic

    make_out_dir(folder, "--out")
    path = os.path.join(folder, "evaluation.json")
    doc = dict(result) if notes is None else dict(result, notes=list(notes))
    write_text_atomic(path, json.dumps(doc, indent=2) + "\n")
    return path


def plot_pr(curves: dict, path: str, target_precision: float | None = None, title: str | None = None) -> str:
    """Precision against recall per class and overall; the step curve through each score threshold."""
    from matplotlib.figure import Figure  # ImportError without the `plot` extra: the caller says so

    from convnet_cli.fileio import atomic_write

    fig = Figure(figsize=(6.4, 5.2), dpi=100)
    ax = fig.subplots()
    for name, (thr, prec, rec) in curves.items():
        if not len(thr) or np.isnan(rec).all():
            continue
        r = np.r_[0.0, rec]
        p = np.r_[prec[0], prec]
        style = {"color": "black", "linewidth": 2.2} if name == "overall" else {"linewidth": 1.4}
        ap = float(np.sum(np.diff(r) * prec))
        ax.step(r, p, where="pre", label=f"{name} (AP {ap:.3f})", **style)
    if target_precision is not None:
        ax.axhline(target_precision, color="grey", linestyle=":", linewidth=1, label=f"precision {target_precision:g}")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title or "precision-recall over the score threshold")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, facecolor="white")
    atomic_write(path, lambda f: f.write(buf.getvalue()))
    return path
