"""BATCH_DIR/skipped.txt: the files make-batches could not use, as CSV with a header `file,reason` (quoted by
the csv module, so a name holding a comma, a quote or a newline stays one record)."""
from __future__ import annotations

import csv
import io

HEADER = ("file", "reason")


def format_skipped(rows) -> str:
    """[(file name, reason)] -> the text of skipped.txt (header first)."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(HEADER)
    for name, reason in rows:
        w.writerow([str(name), str(reason)])
    return out.getvalue()


def iter_skipped(f):
    """(file name, reason) of each record of an open skipped.txt (text mode, newline=''), one at a time.
    Reads the tab-separated lines of earlier versions too."""
    first = f.readline()
    if not first:
        return
    if first.strip() == ",".join(HEADER):
        for r in csv.reader(f):
            if r:
                yield r[0], (r[1] if len(r) > 1 else "")
        return
    for line in [first] if first.strip() else []:
        name, _, reason = line.rstrip("\r\n").partition("\t")
        yield name, reason
    for line in f:   # before: one 'name<TAB>reason' per line
        if line.strip():
            name, _, reason = line.rstrip("\r\n").partition("\t")
            yield name, reason


def parse_skipped(text: str) -> list:
    """The text of skipped.txt -> [(file name, reason)]."""
    return list(iter_skipped(io.StringIO(text, newline="")))
