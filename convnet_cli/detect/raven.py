"""What detect writes (docs/CONFIG.md), every file atomically (temp file + rename):

- `<stem>.selections.txt`: a Raven Pro selection table per recording, tab-separated, header
  `Selection View Channel Begin Time (s) End Time (s) Low Freq (Hz) High Freq (Hz) Begin File Class Score`,
  one row per event, View `Spectrogram 1`, Channel the event's (1 for a mix of the channels), times in
  seconds from the recording's start.
- `detections.selections.txt` (--combined): one table over all recordings with Raven's multi-file columns:
  `Begin Time (s)` counts from the start of the first recording as if the recordings were played one after
  another (Raven's file-sequence time), `File Offset (s)` from the start of the recording `Begin Path`.
- `detections.csv`: `filename,begin_s,end_s,class,score` over all recordings (and `,channel` when detect read
  the channels apart: `--channel N` or `all`).
- `scores.csv` (--scores): `filename,begin_s,end_s,<label 1>,...` one row per window.

Times are written with 3 decimals (1 ms: finer than any spectrogram hop), scores with 4 and window
probabilities with 6.

Names: the CSVs quote a recording name holding a comma, a quote or a line break, so every name comes back
as it was. A Raven table cannot quote (tab-separated, one row a line): its `Begin File` and `Begin Path`
cells hold the name with each tab or line break turned into a space; detect and evaluate find a table's
recording through done.jsonl, never through that cell. Class names with a tab or a line break are refused
before any table is written (events.check_class_names).
"""
from __future__ import annotations

import csv
import io
import os
import shutil

from convnet_cli.errors import DataError
from convnet_cli.fileio import atomic_write, write_text_atomic
from convnet_cli.ingest.annotations import plain_decimal

TABLE_SUFFIX = ".selections.txt"
COMBINED_NAME = "detections" + TABLE_SUFFIX
DETECTIONS_CSV = "detections.csv"
DETECTIONS_HEADER = ("filename", "begin_s", "end_s", "class", "score")
CHANNEL_COLUMN = "channel"      # detections.csv's last column when detect read the channels apart
SCORES_CSV = "scores.csv"
TABLE_HEADER = ("Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)",
                "High Freq (Hz)", "Begin File", "Class", "Score")
COMBINED_HEADER = ("Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)",
                   "High Freq (Hz)", "Begin Path", "File Offset (s)", "Begin File", "Class", "Score")
VIEW, CHANNEL = "Spectrogram 1", 1


def _t(x: float) -> str:
    return f"{x:.3f}"


def _hz(x: float) -> str:
    return f"{x:.1f}"


def _clean(text) -> str:
    """A cell of a tab-separated table: no tabs or line breaks inside."""
    return str(text).replace("\t", " ").replace("\r", " ").replace("\n", " ")


def table_text(events, begin_file: str, low_hz: float, high_hz: float) -> str:
    """A Raven selection table of one recording's events (Event-like: begin, end, label, score; a `channel`
    attribute that is not None goes into the Channel column)."""
    lines = ["\t".join(TABLE_HEADER)]
    for i, e in enumerate(events, 1):
        lines.append("\t".join([str(i), VIEW, str(getattr(e, "channel", None) or CHANNEL), _t(e.begin), _t(e.end), _hz(low_hz), _hz(high_hz),
                                _clean(begin_file), _clean(e.label), f"{e.score:.4f}"]))
    return "\n".join(lines) + "\n"


def write_table(path: str, events, begin_file: str, low_hz: float, high_hz: float) -> str:
    write_text_atomic(path, table_text(events, begin_file, low_hz, high_hz))
    return path




def detection_row(where: str, cells) -> tuple:
    """(begin, end, class, score) from the text cells (begin, end, class, score) of a detection; DataError
    naming `where` ('file line N') and the cell when a time is not a plain number of seconds >= 0, the end is
    not after the begin, the class is empty, or the score is not a number in [0, 1] (a nan or a 7 would rank
    a detection first)."""
    b, e, c, sc = (str(x).strip() for x in cells)
    times = []
    for col, text in (("begin", b), ("end", e)):
        v = plain_decimal(text)
        if v is None or v < 0:
            raise DataError(f"{where}, {col} time {text!r}: not a number of seconds >= 0; fix that cell")
        times.append(v)
    if times[1] <= times[0]:
        raise DataError(f"{where}: end {times[1]:g} s is not after begin {times[0]:g} s; fix that row")
    if not c:
        raise DataError(f"{where}: empty class; name the class of every detection")
    score = plain_decimal(sc)
    if score is None or not 0.0 <= score <= 1.0:
        raise DataError(f"{where}, score {sc!r}: not a number between 0 and 1; fix that cell (detect writes "
                        "probabilities)")
    return times[0], times[1], c, score


def read_own_table(path: str, channels: bool = False) -> list:
    """Rows of a table this module wrote -> [(begin, end, class, score)] (with `channels`: (begin, end, class,
    score, channel)); DataError naming the line of a row that is not one (detection_row). (Other tables go
    through convnet_cli.ingest.annotations.read_tables.)"""
    out = []
    try:
        with open(path, encoding="utf-8", newline="") as f:
            lines = f.read().split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the table ({getattr(exc, 'strerror', None) or exc}); run detect "
                        "again with --overwrite") from None
    header = lines[0].rstrip("\r").split("\t") if lines and lines[0].strip() else None
    if not header:
        return out
    try:
        cols = [header.index(h) for h in ("Begin Time (s)", "End Time (s)", "Class", "Score")]
    except ValueError:
        raise DataError(f"{path} line 1: not a table detect wrote (its header lacks Begin Time (s), End Time (s), "
                        "Class or Score); run detect again with --overwrite") from None
    ci = header.index("Channel") if "Channel" in header else None
    for lineno, line in enumerate(lines[1:], 2):
        row = line.rstrip("\r").split("\t")
        if not line.strip():
            continue
        if len(row) != len(header):
            raise DataError(f"{path} line {lineno}: {len(row)} cells, the header has {len(header)}; run detect "
                            "again with --overwrite")
        det = detection_row(f"{path} line {lineno}", [row[i] for i in cols])
        if channels:
            cell = row[ci].strip() if ci is not None else ""
            det = det + (int(cell) if cell.isdigit() and int(cell) >= 1 else CHANNEL,)
        out.append(det)
    return out


def table_names(rel_paths, reserved=("detections",)) -> dict:
    """{relative recording path: table file name}: `<stem>.selections.txt`; stems that clash (or that
    would overwrite the combined table) get their relative folder joined with '__'
    ('site1/rec01.flac' -> 'site1__rec01.selections.txt')."""
    def stem(rel):
        return os.path.splitext(os.path.basename(rel))[0]

    counts = {}
    for rel in rel_paths:
        counts[stem(rel)] = counts.get(stem(rel), 0) + 1
    names, used = {}, set()
    for rel in rel_paths:
        s = stem(rel)
        if counts[s] > 1 or s in reserved:
            folder = os.path.dirname(rel.replace("\\", "/"))
            s = "__".join([p for p in folder.split("/") if p] + [s])
            if s in reserved:
                s = s + "__rec"
        base, k = s, 1
        while s in used:  # 'a__b/c' and 'a/b__c' can still meet
            k += 1
            s = f"{base}__{k}"
        used.add(s)
        names[rel] = s + TABLE_SUFFIX
    return names


def _rows_to_csv(rows) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue().encode("utf-8")


def write_detections_csv(path: str, per_recording, channels: bool = False) -> str:
    """per_recording: iterable of (filename, [(begin, end, class, score[, channel])]) -> detections.csv,
    atomically; with `channels` a last column `channel` (the 5th item of each event, 1 when absent)."""
    def write(f):
        f.write(_rows_to_csv([DETECTIONS_HEADER + ((CHANNEL_COLUMN,) if channels else ())]))
        for name, events in per_recording:
            f.write(_rows_to_csv([(name, _t(ev[0]), _t(ev[1]), ev[2], f"{ev[3]:.4f}")
                                  + ((str(ev[4] if len(ev) > 4 else CHANNEL),) if channels else ())
                                  for ev in events]))

    atomic_write(path, write)
    return path


def write_combined_table(path: str, per_recording, low_hz: float, high_hz: float) -> str:
    """per_recording: iterable of (Begin Path, duration seconds, [(begin, end, class, score[, channel])]), in the
    order the recordings follow each other -> one Raven table with file-sequence times, atomically."""
    def write(f):
        f.write(("\t".join(COMBINED_HEADER) + "\n").encode("utf-8"))
        sel, offset = 0, 0.0
        for begin_path, duration, events in per_recording:
            lines = []
            for ev in events:
                b, e, c, s = ev[:4]
                sel += 1
                lines.append("\t".join([str(sel), VIEW, str(ev[4] if len(ev) > 4 else CHANNEL), _t(offset + b), _t(offset + e), _hz(low_hz),
                                        _hz(high_hz), _clean(begin_path), _t(b),
                                        _clean(os.path.basename(begin_path)), _clean(c), f"{s:.4f}"]))
            if lines:
                f.write(("\n".join(lines) + "\n").encode("utf-8"))
            offset += float(duration)

    atomic_write(path, write)
    return path


def scores_text(name: str, starts, duration: float, probs) -> str:
    """scores.csv rows (no header) of one recording's windows."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for s, p in zip(starts, probs):
        w.writerow([name, _t(s), _t(s + duration)] + [f"{v:.6f}" for v in p])
    return buf.getvalue()


def write_scores_csv(path: str, label_names, parts) -> str:
    """parts: (filename, path of a file of that recording's rows) in order -> scores.csv, streamed,
    atomically (never more than one part's block in memory)."""
    def write(f):
        f.write(_rows_to_csv([["filename", "begin_s", "end_s"] + list(label_names)]))
        for _, part in parts:
            with open(part, "rb") as src:
                shutil.copyfileobj(src, f, 1 << 20)

    atomic_write(path, write)
    return path
