"""`detect --from-scores OUT_DIR --out NEW_DIR`: the events and tables of an earlier detect run made again from
its per-window scores (scores.csv, written by `detect --scores`) with other thresholds (or event settings),
without reading audio or running the net: seconds for months of recordings (docs/CONFIG.md, detect).

The events are those detect itself would give with the new settings, up to the 6-decimal rounding of the
scores in scores.csv. Settings not given are the earlier run's (detect.json): classes, merge gap, split dip,
max event. NEW_DIR gets the tables (the earlier run's names), detections.csv, the combined table when asked,
and a detect.json that records the settings and the scores it came from.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field, replace

import numpy as np

from convnet_cli.detect import raven
from convnet_cli.detect.events import check_class_names, reported_classes, windows_to_events
from convnet_cli.errors import ConfigError, DataError
from convnet_cli.fileio import make_out_dir, write_text_atomic
from convnet_cli.thresholds import parse_thresholds

SETTINGS = "detect.json"
DONE = "done.jsonl"


@dataclass
class RescoreSummary:
    out_dir: str
    recordings: int = 0
    detections: int = 0
    windows: int = 0
    files: dict = field(default_factory=dict)


def _settings(src: str) -> dict:
    path = os.path.join(src, SETTINGS)
    try:
        with open(path, encoding="utf-8") as f:
            st = json.load(f)
    except FileNotFoundError:
        raise DataError(f"{src}: no {SETTINGS}; --from-scores takes the OUT_DIR of an earlier convnet detect "
                        "--scores run") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not readable ({exc}); run that detect again") from None
    need = ("label_names", "duration", "features")
    if not isinstance(st, dict) or any(k not in st for k in need):
        raise DataError(f"{path}: not a detect settings file (it lacks {', '.join(need)}); run that detect again")
    return st


def _recordings(src: str) -> dict:
    """{recording name: its journal record} of the earlier run (path, name, table, duration, ...)."""
    from convnet_cli.detect.detect import read_done

    return {rec["name"]: rec for rec in read_done(src).values()}


def iter_scores(path: str, label_names):
    """scores.csv -> yield (recording name, starts (n,), probs (n, K)) per recording, one recording at a time
    (detect writes each recording's rows together). DataError naming the line of a row that is not one."""
    k = len(label_names)
    try:
        f = open(path, encoding="utf-8", newline="")
    except FileNotFoundError:
        raise DataError(f"{path}: missing; --from-scores needs the scores.csv that detect --scores writes (run "
                        "the earlier detect with --scores)") from None
    with f:
        reader = csv.reader(f)
        header = next(reader, None)
        want = ["filename", "begin_s", "end_s"] + list(label_names)
        if header != want:
            raise DataError(f"{path} line 1: the header is not detect's for this run's classes "
                            f"({','.join(want)}); give the OUT_DIR the scores came from")
        name, starts, probs = None, [], []
        for row in reader:
            where = f"{path} line {reader.line_num}"
            if len(row) != 3 + k:
                raise DataError(f"{where}: {len(row)} cells, the header has {3 + k}; fix or remove that row")
            try:
                b = float(row[1])
                p = [float(v) for v in row[3:]]
            except ValueError:
                raise DataError(f"{where}: not a number; fix or remove that row") from None
            if not all(0.0 <= v <= 1.0 for v in p) or not np.isfinite(b):
                raise DataError(f"{where}: a probability outside 0..1 or a time that is not a number; fix that row")
            if row[0] != name:
                if name is not None:
                    yield name, np.asarray(starts), np.asarray(probs, dtype=np.float64).reshape(-1, k)
                name, starts, probs = row[0], [], []
            starts.append(b)
            probs.append(p)
        if name is not None:
            yield name, np.asarray(starts), np.asarray(probs, dtype=np.float64).reshape(-1, k)


def _recording_streams(path: str, label_names, channel):
    """scores.csv -> yield (recording name, [(channel, starts, probs)]) per recording: under the earlier run's
    --channel all its rows name each channel '<name>#ch<k>' (detect writes a recording's channels one after
    another); under --channel N every row is channel N; under mix the channel is None."""
    from convnet_cli.ingest.audio import split_stream_name

    base, streams = None, []
    for name, starts, probs in iter_scores(path, label_names):
        ch = None if channel == "mix" else channel
        if channel == "all":
            name, ch = split_stream_name(name)
        if name != base and streams:
            yield base, streams
            streams = []
        base = name
        streams.append((ch, starts, probs))
    if streams:
        yield base, streams


def detect_from_scores(src: str, out_dir: str, *, threshold=None, classes=None, merge_gap=None, split_dip=None,
                       max_event=None, combined: bool = False, overwrite: bool = False) -> RescoreSummary:
    """Write NEW_DIR's tables from SRC's scores.csv (the module docstring). ConfigError/DataError one line."""
    src, out_dir = os.fspath(src), os.fspath(out_dir)
    if os.path.abspath(src) == os.path.abspath(out_dir):
        raise ConfigError(f"--out {out_dir}: is the --from-scores folder itself; give a new folder for the new tables")
    st = _settings(src)
    label_names = [str(n) for n in st["label_names"]]
    wanted = reported_classes(label_names, classes if classes is not None else st.get("classes"),
                              bool(st.get("multi_label")))
    check_class_names(wanted, os.path.join(src, SETTINGS))
    thresholds = parse_thresholds(threshold, label_names)
    merge_gap = float(st.get("merge_gap", 0.0) if merge_gap is None else merge_gap)
    split_dip = float(st.get("split_dip", 0.0) if split_dip is None else split_dip)
    max_event = st.get("max_event") if max_event is None else float(max_event)
    duration = float(st["duration"])
    feats = st["features"]
    low_hz = float(feats.get("fmin") or 0.0)
    high_hz = float(feats["fmax"]) if feats.get("fmax") is not None else float(feats["sample_rate"]) / 2
    records = _recordings(src)
    make_out_dir(out_dir, "--out")
    earlier = [n for n in os.listdir(out_dir) if n in (SETTINGS, DONE, raven.DETECTIONS_CSV)]
    if earlier and not overwrite:
        raise ConfigError(f"{out_dir}: holds an earlier detect's output ({', '.join(sorted(earlier))}); give "
                          "--overwrite to replace it, or another --out")
    summary = RescoreSummary(out_dir)
    per_rec, journal = [], []
    channel = st.get("channel", "mix")    # the earlier run's --channel: its events keep their channels
    for name, streams in _recording_streams(os.path.join(src, raven.SCORES_CSV), label_names, channel):
        n_windows = sum(len(starts) for _, starts, _ in streams)
        last = max(float(starts[-1]) for _, starts, _ in streams)
        rec = dict(records.get(name) or {"name": name, "path": name, "duration": last + duration,
                                         "size": 0, "mtime": 0.0, "table": raven.table_names([name])[name]})
        events = []
        for ch, starts, probs in streams:
            found = windows_to_events(starts, probs, label_names, duration, thresholds, wanted, merge_gap,
                                      split_dip, max_event)
            events.extend(replace(e, channel=ch) for e in found)
        events.sort(key=lambda e: (e.begin, e.channel or 0, e.label))
        raven.write_table(os.path.join(out_dir, rec["table"]), events, os.path.basename(rec["path"]), low_hz,
                          high_hz)
        rec.update(windows=n_windows, detections=len(events))
        rec.pop("scores", None)
        journal.append(json.dumps(rec, sort_keys=True) + "\n")
        per_rec.append((rec, [(e.begin, e.end, e.label, e.score, e.channel or raven.CHANNEL) for e in events]))
        summary.recordings += 1
        summary.windows += n_windows
        summary.detections += len(events)
    per_rec.sort(key=lambda r: r[0]["name"])
    summary.files["detections"] = raven.write_detections_csv(os.path.join(out_dir, raven.DETECTIONS_CSV),
                                                             ((r["name"], ev) for r, ev in per_rec),
                                                             channel != "mix")
    if combined:
        summary.files["combined"] = raven.write_combined_table(
            os.path.join(out_dir, raven.COMBINED_NAME),
            ((r["path"], float(r.get("duration", 0.0)), ev) for r, ev in per_rec), low_hz, high_hz)
    settings = dict(st, thresholds={c: thresholds[c] for c in wanted}, classes=wanted, merge_gap=merge_gap,
                    split_dip=split_dip, max_event=max_event, from_scores=os.path.abspath(src),
                    outputs=sorted([raven.DETECTIONS_CSV] + ([raven.COMBINED_NAME] if combined else [])))
    write_text_atomic(os.path.join(out_dir, SETTINGS), json.dumps(settings, indent=2) + "\n")
    # the journal last: NEW_DIR is then a detect OUT_DIR that evaluate and review read as any other
    write_text_atomic(os.path.join(out_dir, DONE), "".join(journal))
    return summary
