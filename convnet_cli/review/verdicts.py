"""The verdicts of a review: REVIEW_DIR/verdicts.csv and REVIEW_DIR/verdicts.selections.txt (docs/REVIEW.md).

- verdicts.csv: `id,recording,begin_s,end_s,class,score,verdict`, one row per reviewed item in id order;
  the record of the review (a --no-serve page downloads the same file). make-batches reads it as a CSV table.
- verdicts.selections.txt: a Raven selection table of the same rows, `Selection` = the item's id, with
  `Begin File`, `Begin Path` (the audio file), `Class`, `Score` and `Verdict` (true, false, unsure), which
  Raven Pro opens and make-batches --annotations reads.

`VerdictStore.record` saves one verdict: under a lock (a thread lock, and an flock on REVIEW_DIR/.verdicts.lock
where the OS has one, so two pages or two servers on one folder do not lose each other's marks) it reads
verdicts.csv again, sets the verdict, and writes verdicts.csv, then the table, each atomically (temp file,
fsync, rename). A kill at any moment leaves both files whole; the table may then lack the last verdict, and
`sync_table` (run whenever review starts) rewrites it from verdicts.csv.
"""
from __future__ import annotations

import contextlib
import csv
import io
import os
import threading

from convnet_cli.errors import DataError
from convnet_cli.fileio import write_text_atomic
from convnet_cli.ingest.annotations import VERDICTS

VERDICTS_CSV = "verdicts.csv"
VERDICTS_TABLE = "verdicts.selections.txt"
CSV_HEADER = ("id", "recording", "begin_s", "end_s", "class", "score", "channel", "verdict")
TABLE_HEADER = ("Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)", "High Freq (Hz)",
                "Begin File", "Begin Path", "Class", "Score", "Verdict")
LOCK = ".verdicts.lock"


def _clean(text) -> str:
    return str(text).replace("\t", " ").replace("\r", " ").replace("\n", " ")


def csv_text(items, verdicts: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_HEADER)
    for it in items:
        if it.id in verdicts:
            w.writerow([it.id, it.recording, f"{it.begin:.3f}", f"{it.end:.3f}", it.label, f"{it.score:.4f}",
                        "" if it.channel is None else it.channel, verdicts[it.id]])   # channel empty: mixed
    return buf.getvalue()


def table_text(items, verdicts: dict, nyquist=None) -> str:
    """nyquist: {id: Hz}, the High Freq of an item without a band of its own (default: 0 - 0: none known)."""
    lines = ["\t".join(TABLE_HEADER)]
    for it in items:
        if it.id not in verdicts:
            continue
        lo = 0.0 if it.low_freq is None else it.low_freq
        hi = it.high_freq if it.high_freq is not None else (nyquist or {}).get(it.id, 0.0)
        channel = "1" if it.channel is None else str(it.channel)   # the detection's channel (1 when mixed)
        lines.append("\t".join([str(it.id), "Spectrogram 1", channel, f"{it.begin:.3f}", f"{it.end:.3f}", f"{lo:.1f}",
                                f"{hi:.1f}", _clean(os.path.basename(it.path)), _clean(it.path), _clean(it.label),
                                f"{it.score:.4f}", verdicts[it.id]]))
    return "\n".join(lines) + "\n"


def read_verdicts(review_dir: str, items) -> dict:
    """{item id: verdict} from verdicts.csv (none: {}). DataError naming the line for a row that is not
    one of this sample's items (a verdicts.csv of another review)."""
    path = os.path.join(review_dir, VERDICTS_CSV)
    if not os.path.exists(path):
        return {}
    by_id = {it.id: it for it in items}
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as exc:
        from convnet_cli.fileio import open_error

        raise open_error(path, exc, "verdicts file", "verdicts.csv is the CSV convnet review writes") from None
    if not rows:
        return {}
    head = [h.strip().lower() for h in rows[0]]
    if "id" not in head or "verdict" not in head:
        raise DataError(f"{path} line 1: no 'id' and 'verdict' columns; this is not a verdicts.csv of convnet review "
                        f"(header: {','.join(CSV_HEADER)})")
    col = {h: i for i, h in enumerate(head)}
    out = {}
    for n, row in enumerate(rows[1:], 2):
        if not any(c.strip() for c in row):
            continue
        cell = dict((h, row[i].strip()) for h, i in col.items() if i < len(row))
        try:
            item = by_id.get(int(cell.get("id", "")))
        except ValueError:
            item = None
        if item is None:
            raise DataError(f"{path} line {n}: item '{cell.get('id', '')}' is not in review.csv; this verdicts.csv "
                            "belongs to another review (move it away, or give its own REVIEW_DIR)")
        if "class" in cell and cell["class"] != item.label or "begin_s" in cell and cell["begin_s"] != f"{item.begin:.3f}":
            raise DataError(f"{path} line {n}: item {item.id} is {item.label} at {item.begin:.3f} s in review.csv, not "
                            f"{cell.get('class')} at {cell.get('begin_s')} s; this verdicts.csv belongs to another "
                            "review (move it away, or give its own REVIEW_DIR)")
        v = cell.get("verdict", "").lower()
        if v not in VERDICTS:
            raise DataError(f"{path} line {n}, column 'verdict': '{cell.get('verdict', '')}' is not a verdict; use "
                            f"{', '.join(VERDICTS)}")
        out[item.id] = v
    return out


@contextlib.contextmanager
def _file_lock(review_dir):
    try:
        import fcntl
    except ImportError:          # Windows: the thread lock alone (one server per folder)
        yield
        return
    fd = os.open(os.path.join(review_dir, LOCK), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)              # closing releases the flock


class VerdictStore:
    """The verdicts of one REVIEW_DIR, saved as they come (see the module doc)."""

    def __init__(self, review_dir: str, items, nyquist=None):
        self.review_dir, self.items = review_dir, list(items)
        self.ids = {it.id for it in self.items}
        self.nyquist = nyquist or {}
        self._lock = threading.Lock()

    def read(self) -> dict:
        return read_verdicts(self.review_dir, self.items)

    def _write(self, verdicts):
        write_text_atomic(os.path.join(self.review_dir, VERDICTS_CSV), csv_text(self.items, verdicts))
        write_text_atomic(os.path.join(self.review_dir, VERDICTS_TABLE), table_text(self.items, verdicts, self.nyquist))

    def record(self, item_id: int, verdict: str) -> dict:
        """Save one verdict; -> every verdict now on disk."""
        if item_id not in self.ids:
            raise DataError(f"item {item_id} is not in review.csv")
        if verdict not in VERDICTS:
            raise DataError(f"'{verdict}' is not a verdict; use {', '.join(VERDICTS)}")
        with self._lock, _file_lock(self.review_dir):
            verdicts = self.read()
            verdicts[item_id] = verdict
            self._write(verdicts)
        return verdicts

    def sync_table(self) -> dict:
        """Rewrite verdicts.selections.txt from verdicts.csv when they differ (a kill between the two writes,
        a verdicts.csv downloaded from the --no-serve page); -> the verdicts."""
        with self._lock, _file_lock(self.review_dir):
            verdicts = self.read()
            table = os.path.join(self.review_dir, VERDICTS_TABLE)
            want = table_text(self.items, verdicts, self.nyquist)
            try:
                with open(table, encoding="utf-8") as f:
                    have = f.read()
            except OSError:
                have = None
            if verdicts and have != want:
                write_text_atomic(table, want)
        return verdicts
