"""Annotation tables -> `Selection`s: Raven Pro selection tables, folders of them, and CSV tables (docs/CONFIG.md).

Raven selection tables are tab-separated text with a header row. Raven writes each selection once per view
(`Waveform 1`, `Spectrogram 1`) under one `Selection` number: one row per number is kept (the spectrogram
view's frequencies win, since the waveform view's are not meaningful). Extra columns are ignored; a UTF-8
BOM, Windows line ends and latin-1 text (older Raven on Windows) are accepted.

Which recording a row belongs to:
- a `Begin Path` column (full path, Windows or POSIX) or `Begin File` column (file name): that value, with a
  `File Offset (s)` column giving the row's start within that file when the table spans several files;
- otherwise the table's file name: `<stem>.Table.1.selections.txt` (any `<stem>.*.txt`) belongs to
  `<stem>.<audio ext>`; `Selection.recording` is then the stem (see `table_stem`).

CSV tables: `filename,start,end,label[,low_freq,high_freq][,score]`, and detect's `detections.csv`
(`filename,begin_s,end_s,class,score`). The label is `label_col`, else the first present of `Annotation`,
`Class`, `Label`, `Species`, `Call Type` (any case); a table with none labels every row `call`.

Every problem is a DataError naming the file, the line, the column and the fix.
"""
from __future__ import annotations

import csv
import math
import os
import re
from dataclasses import dataclass, replace

from convnet_cli.errors import DataError, did_you_mean
from convnet_cli.ingest.audio import AUDIO_EXTENSIONS

LABEL_COLUMNS = ("Annotation", "Class", "Label", "Species", "Call Type")
DEFAULT_LABEL = "call"
_BEGIN_COLUMNS = ("Begin Time (s)", "Begin Time", "Begin (s)", "Start Time (s)", "start", "begin", "begin_s",
                  "start_s", "begin_time", "start_time", "onset")
_END_COLUMNS = ("End Time (s)", "End Time", "End (s)", "Stop Time (s)", "end", "stop", "end_s", "stop_s",
                "end_time", "stop_time", "offset")
_LOW_COLUMNS = ("Low Freq (Hz)", "Low Frequency (Hz)", "low_freq", "low_freq_hz", "fmin")
_HIGH_COLUMNS = ("High Freq (Hz)", "High Frequency (Hz)", "high_freq", "high_freq_hz", "fmax")
_FILE_COLUMNS_CSV = ("filename", "file", "recording", "clip_name", "path", "Begin Path", "Begin File")
_SCORE_COLUMNS = ("Score", "score", "probability", "confidence")
_RAVEN_SUFFIX = re.compile(r"(\.table\.\d+)?(\.selections)?$", re.IGNORECASE)


@dataclass(frozen=True)
class Selection:
    recording: str          # `Begin File`/`Begin Path` value or CSV `filename`, or the table's <stem>
    begin: float            # seconds from the recording's start
    end: float
    label: str
    low_freq: float | None = None
    high_freq: float | None = None
    score: float | None = None
    source: str = ""        # table file path
    line: int = 0           # 1-based line in that file


# ---- names ---------------------------------------------------------------------------------------

def _norm_path(name: str) -> str:
    return str(name).strip().replace("\\", "/")


def recording_key(name: str) -> str:
    """Basename without its audio extension: 'site1/rec01.flac' -> 'rec01', 'C:\\x\\rec01.WAV' -> 'rec01'."""
    base = _norm_path(name).rstrip("/").rsplit("/", 1)[-1]
    root, ext = os.path.splitext(base)
    return root if ext.lower() in AUDIO_EXTENSIONS else base


def table_stem(table_path: str) -> str:
    """The recording stem a Raven table names by its file name: 'rec01.Table.1.selections.txt' -> 'rec01'.

    Raven's own suffixes (`.Table.N.selections`, `.selections`) are removed when present; otherwise the
    name up to its first dot (`<stem>.*.txt`). `assign_to_recordings` also accepts any longer recording stem
    that the table name starts with, so stems holding dots still pair up.
    """
    base = os.path.basename(table_path)
    if base.lower().endswith(".txt"):
        base = base[:-4]
    stripped = _RAVEN_SUFFIX.sub("", base)
    if stripped != base and stripped:
        return stripped
    return base.split(".", 1)[0] or base


def _find(header, names):
    """Index of the first of `names` in header (case-insensitive, surrounding spaces ignored), else None."""
    low = [h.strip().lower() for h in header]
    for n in names:
        if n.lower() in low:
            return low.index(n.lower())
    return None


# ---- reading ----------------------------------------------------------------------------------------

def _read_lines(path):
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: annotation table not found; check the --annotations path") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if b"\0" in raw[:4096]:
        raise DataError(f"{path}: is a binary file, not an annotation table; give Raven selection tables "
                        "(tab-separated .txt) or a CSV")
    for enc in ("utf-8-sig", "cp1252", "latin-1"):
        try:
            text = raw.decode(enc)
            break
        except UnicodeDecodeError:
            continue
    return text.splitlines()


def read_tables(path: str, label_col: str | None = None) -> list[Selection]:
    """Selections of a Raven table, a folder of them (recursively, *.txt), or a CSV table. See the module doc.

    In a folder, `.txt` files whose header has neither a `Selection` nor a time column (notes, a
    skipped.txt) are not tables and are passed over; hidden files and folders are never read.
    """
    return read_tables_and_claims(path, label_col)[0]


def read_tables_and_claims(path: str, label_col: str | None = None):
    """(selections, claims): as read_tables, plus one `Selection` placeholder (begin = end = 0, label '') per
    Raven table matched to its recording by file name, so a table without any selection still says "this
    recording was annotated and holds no call" (all its windows are background)."""
    path = os.fspath(path)
    claims = []
    if os.path.isdir(path):
        files = []
        for folder, dirs, names in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            files.extend(os.path.join(folder, n) for n in sorted(names)
                         if n.lower().endswith(".txt") and not n.startswith("."))
        out, tables = [], 0
        for f in sorted(files):
            sel = _read_one(f, label_col, in_folder=True, claims=claims)
            if sel is not None:
                tables += 1
                out.extend(sel)
        if tables == 0:
            raise DataError(f"{path}: no Raven selection tables (*.txt with a header row naming 'Selection' and "
                            "'Begin Time (s)') in it or its subfolders; check the --annotations path")
        return out, claims
    if not os.path.exists(path):
        raise DataError(f"{path}: annotation table not found; check the --annotations path")
    return _read_one(path, label_col, in_folder=False, claims=claims), claims


def _read_one(path, label_col, in_folder, claims=None):
    lines = _read_lines(path)
    first = next((i for i, ln in enumerate(lines) if ln.strip()), None)
    if first is None:
        if in_folder:
            return None
        raise DataError(f"{path}: empty; expected a header row (Raven: Selection, View, Begin Time (s), "
                        "End Time (s), …; CSV: filename,start,end,label) and one row per selection")
    head = lines[first]
    if path.lower().endswith(".csv") or ("\t" not in head and "," in head):
        rows = list(csv.reader(lines[first:]))
        return _parse(path, rows, first + 1, label_col, in_folder, raven=False)
    rows = [ln.split("\t") for ln in lines[first:]]
    return _parse(path, rows, first + 1, label_col, in_folder, raven=True, claims=claims)


def _number(path, lineno, col_name, text, what):
    t = text.strip()
    try:
        v = float(t)
    except ValueError:
        v = None
    if v is None or not math.isfinite(v):
        shown = t if t else "(empty)"
        raise DataError(f"{path} line {lineno}, column '{col_name}': {what} {shown!r} is not a number of seconds; "
                        "fix that cell")
    return v


def _parse(path, rows, header_line, label_col, in_folder, raven, claims=None):
    header = [h.strip() for h in rows[0]]
    bi = _find(header, _BEGIN_COLUMNS)
    ei = _find(header, _END_COLUMNS)
    si = _find(header, ("Selection",))
    if bi is None or ei is None:
        if in_folder and si is None and bi is None and ei is None:
            return None   # not a selection table (a note, a skipped.txt): passed over
        missing = " and ".join(n for n, i in (("'Begin Time (s)'", bi), ("'End Time (s)'", ei)) if i is None)
        kind = "Raven selection table" if raven else "CSV table (filename,start,end,label)"
        raise DataError(f"{path} line {header_line}: no time columns: the header ({', '.join(header) or 'empty'}) "
                        f"lacks {missing}; a {kind} needs begin and end times in seconds")
    if label_col:
        li = _find(header, (label_col,))
        if li is None:
            raise DataError(f"{path} line {header_line}: no column '{label_col}' in the header ({', '.join(header)})"
                            f"{did_you_mean(label_col, header)}; fix --label-col")
    else:
        li = _find(header, LABEL_COLUMNS)
    low_i, high_i = _find(header, _LOW_COLUMNS), _find(header, _HIGH_COLUMNS)
    score_i = _find(header, _SCORE_COLUMNS)
    view_i = _find(header, ("View",))
    offset_i = _find(header, ("File Offset (s)", "File Offset"))
    if raven:
        file_i = _find(header, ("Begin Path",))
        if file_i is None:
            file_i = _find(header, ("Begin File",))
    else:
        file_i = _find(header, _FILE_COLUMNS_CSV)
        if file_i is None:
            raise DataError(f"{path} line {header_line}: no file name column in the header ({', '.join(header)}); "
                            "a CSV table needs filename,start,end,label (the recording's path relative to "
                            "RECORDINGS in 'filename')")
    stem = table_stem(path) if file_i is None else None
    if stem is not None and claims is not None:
        claims.append(Selection(stem, 0.0, 0.0, "", source=path, line=header_line))
    out = []
    by_number = {}   # Raven Selection number -> position in out
    for k, row in enumerate(rows[1:], start=1):
        lineno = header_line + k
        if not any(c.strip() for c in row):
            continue
        row = row + [""] * (len(header) - len(row))
        begin = _number(path, lineno, header[bi], row[bi], "begin time")
        end = _number(path, lineno, header[ei], row[ei], "end time")
        if offset_i is not None and row[offset_i].strip():
            offset = _number(path, lineno, header[offset_i], row[offset_i], "file offset")
            begin, end = offset, offset + (end - begin)
        if begin < 0 or end < 0:
            col = header[bi] if begin < 0 else header[ei]
            raise DataError(f"{path} line {lineno}, column '{col}': negative time "
                            f"{begin if begin < 0 else end:g} s; times are seconds from the recording's start")
        if end <= begin:
            raise DataError(f"{path} line {lineno}, column '{header[ei]}': end {end:g} s is not after begin "
                            f"{begin:g} s; fix the selection (or swap the two)")
        if li is None:
            label = DEFAULT_LABEL
        else:
            label = row[li].strip()
            if not label:
                raise DataError(f"{path} line {lineno}, column '{header[li]}': empty label; label every selection "
                                f"(or delete the row)")
        if file_i is None:
            recording = stem
        else:
            recording = _norm_path(row[file_i])
            if not recording:
                raise DataError(f"{path} line {lineno}, column '{header[file_i]}': empty file name; name the "
                                "recording this selection belongs to")
        low = _optional(path, lineno, header, low_i, row)
        high = _optional(path, lineno, header, high_i, row)
        score = _optional(path, lineno, header, score_i, row)
        sel = Selection(recording, begin, end, label, low, high, score, path, lineno)
        if raven and si is not None and row[si].strip():
            number = row[si].strip()
            at = by_number.get(number)
            if at is not None:
                view = row[view_i].strip().lower() if view_i is not None else ""
                if view.startswith("spectrogram"):   # the spectrogram view's frequency box wins
                    kept = out[at]
                    out[at] = replace(kept, low_freq=low if low is not None else kept.low_freq,
                                      high_freq=high if high is not None else kept.high_freq)
                continue
            by_number[number] = len(out)
        out.append(sel)
    return out


def _optional(path, lineno, header, i, row):
    if i is None or not row[i].strip():
        return None
    try:
        v = float(row[i])
    except ValueError:
        raise DataError(f"{path} line {lineno}, column '{header[i]}': {row[i].strip()!r} is not a number; "
                        "fix that cell") from None
    return v if math.isfinite(v) else None


# ---- pairing with recordings ----------------------------------------------------------------------

def assign_to_recordings(selections, recordings_root: str, recordings: list[str]) -> dict[str, list[Selection]]:
    """{recording path relative to recordings_root: its selections sorted by begin}, for every recording a
    selection names. Recordings no table mentions are not keys. DataError for a selection whose recording
    is not among `recordings` (naming the table file and line), or that could be several of them.

    A selection's recording is found by, in turn: its exact relative path; the longest path suffix
    (a Raven `Begin Path` such as 'D:\\survey\\site1\\rec01.wav'); its file name; its key (`recording_key`);
    and for tables matched by file name, the longest recording stem the table's name starts with. Where a name
    fits several recordings, the one whose folder the table's own folder path ends with wins.
    """
    rels = [_norm_path(r) for r in recordings]
    by_rel = {r: r for r in rels}
    by_base, by_key = {}, {}
    for r in rels:
        by_base.setdefault(r.rsplit("/", 1)[-1], []).append(r)
        by_key.setdefault(recording_key(r), []).append(r)
    cache = {}
    out: dict[str, list[Selection]] = {}
    for s in selections:
        ck = (s.recording, s.source)
        if ck not in cache:
            cache[ck] = _match(s, rels, by_rel, by_base, by_key, recordings_root)
        out.setdefault(cache[ck], []).append(s)
    for v in out.values():
        v.sort(key=lambda s: (s.begin, s.end, s.line))
    return out


def _match(s, rels, by_rel, by_base, by_key, root):
    name = _norm_path(s.recording)
    if name in by_rel:
        return name
    parts = [p for p in name.split("/") if p and p not in (".",)]
    # longest suffix of a full path that is a relative recording path
    for i in range(1, len(parts)):
        suffix = "/".join(parts[i:])
        if suffix in by_rel:
            return suffix
    base = parts[-1] if parts else name
    cands = by_base.get(base)
    if not cands:
        cands = by_key.get(recording_key(name))
    if not cands and s.source:
        tname = os.path.basename(s.source)
        if tname.lower().endswith(".txt"):
            tname = tname[:-4]
        best = [r for r in rels if tname.startswith(recording_key(r) + ".") or tname == recording_key(r)]
        if best:
            longest = max(len(recording_key(r)) for r in best)
            cands = [r for r in best if len(recording_key(r)) == longest]
    if not cands:
        where = f"{s.source} line {s.line}" if s.source else "annotation"
        raise DataError(f"{where}: recording '{s.recording}' is not in {root} (a table without a recording); "
                        f"add the recording, or remove its table{did_you_mean(base, list(by_base))}")
    if len(cands) == 1:
        return cands[0]
    # the same file name in several folders: prefer the folder the table sits in (TABLES/site1/… ~ site1/…)
    tfolder = _norm_path(os.path.dirname(os.path.abspath(s.source))) if s.source else ""
    fits = [r for r in cands if "/" in r and tfolder.endswith("/" + r.rsplit("/", 1)[0])]
    if len(fits) == 1:
        return fits[0]
    where = f"{s.source} line {s.line}" if s.source else "annotation"
    raise DataError(f"{where}: recording '{s.recording}' could be any of {', '.join(sorted(cands)[:4])}; name it by "
                    "its path relative to RECORDINGS (a 'Begin Path' column, or the CSV's filename), or mirror the "
                    "recordings' folders in the tables' folder")


def clip_to_duration(selections, duration_s: float, warn) -> list[Selection]:
    """Selections ending past `duration_s` clipped to it (warn(line) for each); those starting at or past the
    end are dropped (warn(line) too)."""
    out = []
    for s in selections:
        where = f"{s.source} line {s.line}" if s.source else s.recording
        if s.begin >= duration_s:
            warn(f"{where}: selection {s.begin:.3f}-{s.end:.3f} s starts after the end of '{s.recording}' "
                 f"({duration_s:.3f} s); left out")
            continue
        if s.end > duration_s:
            warn(f"{where}: selection {s.begin:.3f}-{s.end:.3f} s ends after the end of '{s.recording}' "
                 f"({duration_s:.3f} s); clipped to {duration_s:.3f} s")
            s = replace(s, end=float(duration_s))
        out.append(s)
    return out
