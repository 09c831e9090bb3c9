"""Annotation tables -> `Selection`s: Raven Pro selection tables, folders of them, and CSV tables (docs/CONFIG.md).

Raven selection tables are tab-separated text with a header row. Raven writes each selection once per view
(`Waveform 1`, `Spectrogram 1`) under one `Selection` number: rows with the same number, file and times are
one selection (the spectrogram view's frequencies win, since the waveform view's are not meaningful). A
multi-file table numbers each file's selections from 1, so the number alone identifies nothing; the same
number and file with other times is kept twice, with a warning naming both lines. Extra columns are
ignored; a UTF-8 BOM and Windows line ends are accepted.

Text: lines end at \n, \r\n or \r only (not at U+2028, NEL or form feed, as str.splitlines would), so line
numbers are an editor's. Each line is UTF-8 when it is valid UTF-8; one that is not (older Raven on Windows)
is read as Windows-1252 and a warning names it. Only regular files up to MAX_TABLE_BYTES, with lines up to
MAX_LINE_BYTES, are read (a FIFO or /dev/zero is refused, naming it).

Which recording a row belongs to:
- a `Begin Path` column (full path, Windows or POSIX) or `Begin File` column (file name): that value, with a
  `File Offset (s)` column giving the row's start within that file when the table spans several files;
- otherwise the table's file name: `<stem>.Table.1.selections.txt` (any `<stem>.*.txt`) belongs to
  `<stem>.<audio ext>`; `Selection.recording` is then the stem (see `table_stem`).

A `Channel` column (Raven's, 1-based; in a CSV `channel`) gives `Selection.channel`: with make-batches
`--channel all` (or N) a selection labels that channel only; a table without it (or an empty cell) labels
every channel.

A `Verdict` column (`convnet review`'s tables and CSVs) gives each row's `Selection.verdict`: true, false or
unsure (any case; an empty cell is unsure); such a table does not claim its recording as annotated whole.

CSV tables: `filename,start,end,label[,low_freq,high_freq][,score]`, and detect's `detections.csv`
(`filename,begin_s,end_s,class,score`). The label is `label_col`, else the first present of `Annotation`,
`Class`, `Label`, `Species`, `Call Type` (any case); a table with none labels every row `call` (with a
warning naming its text columns, when it has some). A label holding a tab, a line break (also U+2028, NEL)
or another control character is refused: in a Raven table a tab splits the cell (the row then has more
cells than the header: refused), and a class name must survive tab-separated tables and CSV cells.

Times, frequencies and scores are plain decimals (`12.5`, `-1`, `1.5e-3`): float() would also take `1_0`
(as 10), `inf`, `nan`, ' 1' and non-ASCII digits. Every problem is a DataError naming the file, the line,
the column and the fix.
"""
from __future__ import annotations

import csv
import math
import os
import re
import stat
import sys
import unicodedata
from dataclasses import dataclass, replace

from convnet_cli.errors import DataError, did_you_mean
from convnet_cli.fileio import special_mode
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
_CHANNEL_COLUMNS = ("Channel", "channel")
VERDICTS = ("true", "false", "unsure")
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
    # a reviewed detection (`convnet review`, a `Verdict` column): 'true' (an annotation of its class), 'false'
    # (its class verified absent), 'unsure' (unknown); None for an ordinary annotation. A multi-label planner
    # reads false as "class absent" and unsure as "class unknown" for the windows the selection covers.
    verdict: str | None = None
    # the recording's channel the selection is on (Raven's `Channel` column, 1-based); None: every channel
    channel: int | None = None


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

MAX_TABLE_BYTES = 256 * 2 ** 20      # far above any real table (6,125 selections: ~1 MB); /dev/zero is not one
MAX_LINE_BYTES = 2 ** 20
_EOL_BYTES = re.compile(rb"\r\n|\r|\n")
_EOL = re.compile(r"\r\n|\r|\n")
# times and frequencies: what Raven and spreadsheets write; float() also takes '1_0', 'inf', ' 1', '١٠'
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_LINE_BREAKS = {"\n": "a line break", "\r": "a line break", "\x85": "a line break (NEL)",
                "\u2028": "a line separator (U+2028)", "\u2029": "a paragraph separator (U+2029)",
                "\t": "a tab", "\x0b": "a vertical tab", "\x0c": "a form feed"}
# columns a table without a label column may hold text in that is not a label (Raven's clock and date columns)
_NOT_LABELS = re.compile(r"time|date|clock|file|path|view|channel|selection|offset", re.IGNORECASE)


def _stderr_warn(line):
    print(f"warning: {line}", file=sys.stderr)


def _secs(x: float) -> str:
    """Seconds for a message: 3 decimals, or a short exponent form for absurd values (1e300 -> 1e+300)."""
    return f"{x:.3f}" if abs(x) < 1e9 else f"{x:g}"


def _shown(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "…")


def _file_kind(mode):
    if stat.S_ISDIR(mode):
        return "a folder"
    return special_mode(mode) or "not a regular file"


def _read_raw(path):
    """The bytes of `path`, a regular file of at most MAX_TABLE_BYTES: DataError for anything else."""
    try:
        # O_NONBLOCK: opening a FIFO does not wait for a writer, so fstat can refuse it
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise DataError(f"{path}: annotation table not found; check the --annotations path") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise DataError(f"{path}: is {_file_kind(mode)}, not a file; give --annotations Raven selection tables "
                            "(tab-separated .txt), a folder of them, or a CSV")
        try:
            raw = f.read(MAX_TABLE_BYTES + 1)
        except OSError as exc:
            raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if len(raw) > MAX_TABLE_BYTES:
        raise DataError(f"{path}: larger than {MAX_TABLE_BYTES // 2 ** 20} MB; not an annotation table (check the "
                        "--annotations path)")
    return raw


def _read_lines(path, warn):
    """The lines of a table as text, split at \\n, \\r\\n and \\r only (so line numbers are an editor's).

    Each line is UTF-8 when it is valid UTF-8; a line that is not is read as Windows-1252 (older Raven on
    Windows), and one warning names those lines."""
    raw = _read_raw(path)
    if b"\0" in raw[:4096]:
        raise DataError(f"{path}: is a binary file, not an annotation table; give Raven selection tables "
                        "(tab-separated .txt) or a CSV")
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None:
        lines = _EOL.split(text)
        long = next((i for i, ln in enumerate(lines) if len(ln) > MAX_LINE_BYTES // 4
                     and len(ln.encode("utf-8")) > MAX_LINE_BYTES), None)
        if long is not None:
            _long_line(path, long + 1)
    else:
        lines, legacy = [], []
        for i, b in enumerate(_EOL_BYTES.split(raw), start=1):
            if len(b) > MAX_LINE_BYTES:
                _long_line(path, i)
            try:
                lines.append(b.decode("utf-8"))
            except UnicodeDecodeError:
                legacy.append(i)
                try:
                    lines.append(b.decode("cp1252"))
                except UnicodeDecodeError:      # the 5 bytes cp1252 leaves undefined
                    lines.append(b.decode("latin-1"))
        more = f" (and {len(legacy) - 1} more lines: {', '.join(map(str, legacy[1:6]))}" \
               f"{' …' if len(legacy) > 6 else ''})" if len(legacy) > 1 else ""
        warn(f"{path} line {legacy[0]}: not UTF-8; read as Windows-1252{more}; save the table as UTF-8 if its "
             "labels look wrong")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _long_line(path, lineno):
    raise DataError(f"{path} line {lineno}: longer than {MAX_LINE_BYTES // 2 ** 20} MB; not an annotation table line "
                    "(check the --annotations path)")


def read_tables(path: str, label_col: str | None = None, warn=None, label_flag: str = "--label-col") -> list[Selection]:
    """Selections of a Raven table, a folder of them (recursively, *.txt), or a CSV table. See the module doc.

    In a folder, `.txt` files whose header has neither a `Selection` nor a time column (notes, a
    skipped.txt) are not tables and are passed over; hidden files and folders are never read.
    warn(line): what is read but may be wrong (a line read as Windows-1252, a repeated Selection number);
    default: printed to stderr. label_flag: the flag that names `label_col`, for the warning on a table
    without a label column (evaluate reads other detectors' tables with --detections-label-col).
    """
    return read_tables_and_claims(path, label_col, warn, label_flag)[0]


def read_tables_and_claims(path: str, label_col: str | None = None, warn=None, label_flag: str = "--label-col"):
    """(selections, claims): as read_tables, plus one `Selection` placeholder (begin = end = 0, label '') per
    Raven table matched to its recording by file name, so a table without any selection still says "this
    recording was annotated and holds no call" (all its windows are background)."""
    path = os.fspath(path)
    warn = warn or _stderr_warn
    claims = []
    if os.path.isdir(path):
        files = []
        for folder, dirs, names in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            files.extend(os.path.join(folder, n) for n in sorted(names)
                         if n.lower().endswith(".txt") and not n.startswith("."))
        out, tables = [], 0
        folder_warn = _FolderWarn(warn, label_flag)
        for f in sorted(files):
            sel = _read_one(f, label_col, in_folder=True, claims=claims, warn=folder_warn, label_flag=label_flag)
            if sel is not None:
                tables += 1
                out.extend(sel)
        folder_warn.flush(path)
        if tables == 0:
            raise DataError(f"{path}: no Raven selection tables (*.txt with a header row naming 'Selection' and "
                            "'Begin Time (s)') in it or its subfolders; check the --annotations path")
        return out, claims
    if not os.path.lexists(path):
        raise DataError(f"{path}: annotation table not found; check the --annotations path")
    return _read_one(path, label_col, in_folder=False, claims=claims, warn=warn, label_flag=label_flag), claims


def _read_one(path, label_col, in_folder, claims=None, warn=_stderr_warn, label_flag="--label-col"):
    lines = _read_lines(path, warn)
    first = next((i for i, ln in enumerate(lines) if ln.strip()), None)
    if first is None:
        if in_folder:
            return None
        raise DataError(f"{path}: empty; expected a header row (Raven: Selection, View, Begin Time (s), "
                        "End Time (s), …; CSV: filename,start,end,label) and one row per selection")
    head = lines[first]
    if path.lower().endswith(".csv") or ("\t" not in head and "," in head):
        return _parse(path, _csv_rows(path, lines, first), label_col, in_folder, raven=False, warn=warn,
                      label_flag=label_flag)
    rows = [(first + 1 + k, ln.split("\t")) for k, ln in enumerate(lines[first:])]
    return _parse(path, rows, label_col, in_folder, raven=True, claims=claims, warn=warn, label_flag=label_flag)


def _csv_rows(path, lines, first):
    """[(line the row starts on, cells)]: a quoted field may run over several lines (it then holds '\\n')."""
    reader = csv.reader(ln + "\n" for ln in lines[first:])
    rows, at = [], first + 1
    try:
        for cells in reader:
            rows.append((at, cells))
            at = first + 1 + reader.line_num
    except csv.Error as exc:
        raise DataError(f"{path} line {at}: not a readable CSV line ({exc}); fix that line") from None
    return rows


def plain_decimal(text: str):
    """A plain decimal number (what Raven and spreadsheets write: no spaces, '_', inf, nan or hex) as a finite
    float, else None. Every reader of a table's numbers (annotations, detect's own tables) goes through it."""
    if not _DECIMAL.fullmatch(text):
        return None
    v = float(text)
    return v if math.isfinite(v) else None


def _number(path, lineno, col_name, text, what):
    v = plain_decimal(text)
    if v is None:
        shown = _shown(text) if text else "'(empty)'"
        raise DataError(f"{path} line {lineno}, column '{col_name}': {what} {shown} is not a number of seconds "
                        "(a plain decimal such as 12.5: no spaces, '_', inf or nan); fix that cell")
    return v


def breaking_char(text: str):
    """What in `text` a one-line cell cannot hold (a tab, a line break, another control character), as
    words ('a tab'), else None. Class names go into tab-separated tables, CSV cells and one-line lists."""
    for ch in str(text):
        if ch in _LINE_BREAKS or unicodedata.category(ch) in ("Cc", "Zl", "Zp"):
            return _LINE_BREAKS.get(ch) or f"U+{ord(ch):04X} (a control character)"
    return None


def label_char_error(where, col_name, label):
    """The one-line DataError for a label holding a tab, a line break or another control character, else
    None (where: 'file line N'); the tables' and the --labels CSV's readers refuse them."""
    what = breaking_char(label)
    if what is None:
        return None
    return DataError(f"{where}, column '{col_name}': the label {_shown(label)} holds {what}; remove it "
                     "(a class name is one line without tabs or control characters)")


@dataclass
class _Columns:
    """Where a table's header puts each column a selection is read from (indices; None: absent)."""

    header: list
    line: int                     # the header's line
    begin: int
    end: int
    number: int | None            # Raven's `Selection`
    label: int | None
    low: int | None
    high: int | None
    score: int | None
    verdict: int | None
    view: int | None
    offset: int | None            # `File Offset (s)`
    file: int | None              # `Begin Path`/`Begin File` (Raven) or the CSV's file column
    channel: int | None           # Raven's `Channel` (1-based)
    delta: int | None = None      # Raven's `Delta Time (s)`, for a table without `End Time (s)`

    def known(self) -> set:
        return {i for i in (self.begin, self.end, self.number, self.label, self.low, self.high, self.score,
                            self.verdict, self.view, self.offset, self.file, self.channel, self.delta)
                if i is not None}


def _columns(path, header, header_line, label_col, in_folder, raven):
    """The _Columns of a table's header; None for a .txt in a folder that is not a selection table (a note, a
    skipped.txt). DataError for a table without its time or file columns, or without --label-col's column."""
    bi, ei = _find(header, _BEGIN_COLUMNS), _find(header, _END_COLUMNS)
    si = _find(header, ("Selection",))
    di = _find(header, ("Delta Time (s)",)) if raven and ei is None else None   # end = begin + delta
    if bi is None or (ei is None and di is None):
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
    return _Columns(header, header_line, bi, ei, si, li, _find(header, _LOW_COLUMNS),
                    _find(header, _HIGH_COLUMNS), _find(header, _SCORE_COLUMNS), _find(header, ("Verdict",)),
                    _find(header, ("View",)), _find(header, ("File Offset (s)", "File Offset")), file_i,
                    _find(header, _CHANNEL_COLUMNS), di)


def _row_times(path, lineno, cols, row):
    """(begin, end) of a row in seconds from its recording's start (its `File Offset (s)` when given)."""
    header = cols.header
    begin = _number(path, lineno, header[cols.begin], row[cols.begin], "begin time")
    if cols.end is None:    # Begin Time and Delta Time (s), no End Time
        end_col = header[cols.delta]
        end = begin + _number(path, lineno, end_col, row[cols.delta], "duration")
    else:
        end_col = header[cols.end]
        end = _number(path, lineno, end_col, row[cols.end], "end time")
    if cols.offset is not None and row[cols.offset].strip():
        offset = _number(path, lineno, header[cols.offset], row[cols.offset], "file offset")
        if offset < 0:
            raise DataError(f"{path} line {lineno}, column '{header[cols.offset]}': negative file offset "
                            f"{offset:g} s; the offset is seconds from the start of the row's file")
        begin, end = offset, offset + (end - begin)
    if begin < 0 or end < 0:
        col = header[cols.begin] if begin < 0 else end_col
        raise DataError(f"{path} line {lineno}, column '{col}': negative time "
                        f"{begin if begin < 0 else end:g} s; times are seconds from the recording's start")
    if end <= begin:
        raise DataError(f"{path} line {lineno}, column '{end_col}': end {end:g} s is not after begin "
                        f"{begin:g} s; fix the selection (or swap the two)")
    return begin, end


def _row_label(path, lineno, cols, row):
    """The row's label: its label column's cell (refused when empty or holding a tab or control character),
    or DEFAULT_LABEL in a table without a label column."""
    if cols.label is None:
        return DEFAULT_LABEL
    name = cols.header[cols.label]
    exc = label_char_error(f"{path} line {lineno}", name, row[cols.label].strip(" "))
    if exc is not None:
        raise exc
    label = row[cols.label].strip()
    if not label:
        raise DataError(f"{path} line {lineno}, column '{name}': empty label; label every selection "
                        f"(or delete the row)")
    return label


def _row_recording(path, lineno, cols, row, stem):
    """The recording a row names: its file column's path, or (a Raven table without one) the table's stem."""
    if cols.file is None:
        return stem
    recording = _norm_path(row[cols.file])
    if not recording:
        raise DataError(f"{path} line {lineno}, column '{cols.header[cols.file]}': empty file name; name the "
                        "recording this selection belongs to")
    return recording


def _row_channel(path, lineno, cols, row):
    """The row's `Channel` (1-based int), None without that column or with an empty cell."""
    if cols.channel is None or not row[cols.channel].strip():
        return None
    text = row[cols.channel].strip()
    if not (text.isdigit() and int(text) >= 1):
        raise DataError(f"{path} line {lineno}, column '{cols.header[cols.channel]}': {_shown(text)} is not a "
                        "channel number (1 for the first channel); fix that cell")
    return int(text)


class _Views:
    """Raven writes each selection once per view under one `Selection` number: `add` keeps the first row of a
    number, file, channel and times, takes a spectrogram view's frequency box into it, and warns when a number
    comes back with other times (both kept) or another view of it has another label (the first kept)."""

    def __init__(self, path, cols, warn, raven):
        self.path, self.cols, self.warn, self.raven = path, cols, warn, raven
        self.out = []
        self.kept = {}       # (Selection, recording, channel, begin, end) -> position in out
        self.numbered = {}   # (Selection, recording, channel) -> [(begin, end, line)] kept under that number

    def add(self, sel, row, lineno):
        cols = self.cols
        number = row[cols.number].strip() if self.raven and cols.number is not None else ""
        if not number:
            self.out.append(sel)
            return
        key = (number, sel.recording, sel.channel)
        at = self.kept.get(key + (sel.begin, sel.end))
        if at is not None:                     # another view of a selection already read
            first = self.out[at]
            if sel.label != first.label:       # the views of one selection share its annotation: a true conflict
                where = "" if cols.file is None else f" of '{sel.recording}'"
                self.warn(f"{self.path} lines {first.line} and {lineno}: Selection {number}{where} "
                          f"({_secs(sel.begin)}-{_secs(sel.end)} s) is labelled {_shown(first.label)} and "
                          f"{_shown(sel.label)}; kept {_shown(first.label)} (line {first.line}): fix the wrong row")
            view = row[cols.view].strip().lower() if cols.view is not None else ""
            if view.startswith("spectrogram"):   # the spectrogram view's frequency box wins
                k = self.out[at]
                self.out[at] = replace(k, low_freq=sel.low_freq if sel.low_freq is not None else k.low_freq,
                                       high_freq=sel.high_freq if sel.high_freq is not None else k.high_freq)
            return
        others = self.numbered.setdefault(key, [])
        if others:
            b0, e0, line0 = others[0]
            where = "" if cols.file is None else f" of '{sel.recording}'"
            self.warn(f"{self.path} lines {line0} and {lineno}: Selection {number}{where} appears with other times "
                      f"({_secs(b0)}-{_secs(e0)} s and {_secs(sel.begin)}-{_secs(sel.end)} s); both kept: give them "
                      "their own numbers if they are two calls, or delete the wrong row")
        others.append((sel.begin, sel.end, lineno))
        self.kept[key + (sel.begin, sel.end)] = len(self.out)
        self.out.append(sel)


def _parse(path, rows, label_col, in_folder, raven, claims=None, warn=_stderr_warn, label_flag="--label-col"):
    """The selections of a table's rows [(line, cells)], the first the header (see the module doc); None for
    a .txt in a folder that is not a selection table. claims: where a Raven table matched to its recording by
    its file name (and not a review's) says so (read_tables_and_claims)."""
    header_line, header = rows[0][0], [h.strip() for h in rows[0][1]]
    cols = _columns(path, header, header_line, label_col, in_folder, raven)
    if cols is None:
        return None
    stem = table_stem(path) if cols.file is None else None
    if stem is not None and claims is not None and cols.verdict is None:   # reviewed detections annotate nothing whole
        claims.append(Selection(stem, 0.0, 0.0, "", source=path, line=header_line))
    known = cols.known()
    text_cols = set()        # columns holding text, for a table without a label column
    views = _Views(path, cols, warn, raven)
    for lineno, row in rows[1:]:
        if not any(c.strip() for c in row):
            continue
        if raven and len(row) > len(header) and any(c.strip() for c in row[len(header):]):
            raise DataError(f"{path} line {lineno}: {len(row)} tab-separated cells, the header has {len(header)}: a "
                            "tab inside a label or note? Remove it (a tab separates cells in a Raven table)")
        row = row + [""] * (len(header) - len(row))
        begin, end = _row_times(path, lineno, cols, row)
        if cols.label is None and not label_col:
            text_cols.update(i for i, c in enumerate(row[:len(header)])
                             if i not in known and c.strip() and plain_decimal(c.strip()) is None)
        verdict = None if cols.verdict is None else _verdict(path, lineno, header[cols.verdict], row[cols.verdict])
        sel = Selection(_row_recording(path, lineno, cols, row, stem), begin, end, _row_label(path, lineno, cols, row),
                        _optional(path, lineno, header, cols.low, row), _optional(path, lineno, header, cols.high, row),
                        _optional(path, lineno, header, cols.score, row), path, lineno, verdict,
                        _row_channel(path, lineno, cols, row))
        views.add(sel, row, lineno)
    _warn_unlabelled(path, header, text_cols, warn, label_flag)
    if not views.out and cols.file is not None and raven and claims is not None and cols.verdict is None:
        # a table with a Begin File column but no selection names no file: it is its file name's recording's
        # table, annotated and holding no call (Raven writes the column into empty tables too)
        claims.append(Selection(table_stem(path), 0.0, 0.0, "", source=path, line=header_line))
    return views.out


def _warn_unlabelled(path, header, text_cols, warn, label_flag="--label-col"):
    """The warning for a table without a label column whose text columns may hold the labels (a folder's
    tables say it once for all of them: _FolderWarn)."""
    names = [header[i] for i in sorted(text_cols) if header[i] and not _NOT_LABELS.search(header[i])]
    if not names:
        return
    if isinstance(warn, _FolderWarn):
        warn.unlabelled.append((path, names))
        return
    warn(_unlabelled_message(path, names, flag=label_flag))


def _unlabelled_message(path, names, tables=1, flag="--label-col"):
    which = "its" if tables == 1 else "their"
    head = f"{path}: no label column" if tables == 1 else f"{path}: {tables} tables have no label column"
    return (f"{head} ({', '.join(LABEL_COLUMNS)}): every selection is labelled '{DEFAULT_LABEL}'; {which} text "
            f"column(s) {', '.join(repr(n) for n in names)} may hold the labels: name one with {flag}")


class _FolderWarn:
    """The warn of a folder's tables: passes every warning on, and keeps the tables without a label column
    for one line at the end (36 survey tables, one line)."""

    def __init__(self, warn, flag="--label-col"):
        self.warn, self.unlabelled, self.flag = warn, [], flag

    def __call__(self, message):
        self.warn(message)

    def flush(self, folder):
        if len(self.unlabelled) == 1:
            self.warn(_unlabelled_message(*self.unlabelled[0], flag=self.flag))
        elif self.unlabelled:
            names = list(dict.fromkeys(n for _, ns in self.unlabelled for n in ns))
            self.warn(_unlabelled_message(f"{folder} ({os.path.basename(self.unlabelled[0][0])} the first)", names,
                                          len(self.unlabelled), flag=self.flag))
        self.unlabelled = []


def _verdict(path, lineno, col_name, text):
    """A `Verdict` cell: true, false or unsure (any case); an empty cell is a detection not reviewed: unsure."""
    v = text.strip().lower()
    if not v:
        return "unsure"
    if v not in VERDICTS:
        raise DataError(f"{path} line {lineno}, column '{col_name}': {_shown(text.strip())} is not a verdict; use "
                        "true, false or unsure (an empty cell counts as unsure)")
    return v


def _optional(path, lineno, header, i, row):
    if i is None or not row[i].strip():
        return None
    v = plain_decimal(row[i])
    if v is None:
        raise DataError(f"{path} line {lineno}, column '{header[i]}': {_shown(row[i])} is not a number (a plain "
                        "decimal such as 12.5); fix that cell")
    return v


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
            warn(f"{where}: selection {_secs(s.begin)}-{_secs(s.end)} s starts after the end of '{s.recording}' "
                 f"({_secs(duration_s)} s); left out")
            continue
        if s.end > duration_s:
            warn(f"{where}: selection {_secs(s.begin)}-{_secs(s.end)} s ends after the end of '{s.recording}' "
                 f"({_secs(duration_s)} s); clipped to {_secs(duration_s)} s")
            s = replace(s, end=float(duration_s))
        out.append(s)
    return out
