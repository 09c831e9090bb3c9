"""Which audio files make the set, and their labels: folder per class, flat folder + CSV, or unlabeled.

Hidden files and folders (names starting with '.', e.g. macOS '._x.wav' forks) are never listed.
Label names: class folder names, sorted; or the CSV's label values, sorted (numerically when every value
is an integer, so the Kaggle whale labels 0/1 keep their meaning as indices); or the list the caller gives
(`--label-names`), in its order, when a set must use the same indices as another.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field

import numpy as np

from convnet_cli.data.targets import ABSENT, PRESENT, UNKNOWN, ClassTargets, MultiLabelTargets
from convnet_cli.errors import ConfigError, DataError, did_you_mean
from convnet_cli.fileio import open_error, special_file
from convnet_cli.ingest.annotations import label_char_error
from convnet_cli.ingest.audio import AUDIO_KINDS, is_audio_name

FILE_COLUMNS = ("clip_name", "filename", "file", "fname", "path")
LABEL_COLUMNS = ("label", "labels", "class")
SPLIT_NAMES = {"train", "test", "valid", "validation", "val", "dev", "eval"}


@dataclass
class Dataset:
    audio_dir: str
    paths: list            # absolute paths, in `names` order
    names: list            # relative to audio_dir, '/'-separated (what batch files store as filenames)
    labels: np.ndarray     # int64 (n,); -1 when unlabeled
    label_names: list
    layout: str            # 'folders', 'csv' or 'unlabeled'
    source: str = ""       # the CSV, for messages
    extra: dict = field(default_factory=dict)
    multi: object = None   # data/targets.py MultiLabelTargets of the clips (make-batches --multi-label), else None
    channels: list | None = None   # the channel read of each case (1-based; None: mixed), under make-batches --channel

    def __len__(self):
        return len(self.paths)

    @property
    def targets(self):
        """What each clip is trained towards (data/targets.py): its class, or its set of classes."""
        return self.multi if self.multi is not None else ClassTargets(self.labels)


def scan_audio(root: str) -> tuple:
    """(relative '/'-paths of every file under root with an audio extension (ingest/audio.py), sorted; how
    many other files there are). Hidden files and folders are left out of both. A FIFO or device with an
    audio name is listed: the reader refuses it with the reason, so it ends up in skipped.txt."""
    out, other = [], 0
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if is_audio_name(name):
                rel = os.path.relpath(os.path.join(folder, name), root)
                out.append(rel.replace(os.sep, "/"))
            elif not name.startswith("."):
                other += 1
    return sorted(out), other


def find_audio(root: str) -> list:
    """Relative '/'-paths of every audio file under root, sorted; hidden files and folders left out."""
    return scan_audio(root)[0]


def _exts() -> str:
    return AUDIO_KINDS


def _check_names(found, label_names, where):
    """Map label strings to indices through `label_names` (DataError for a name not in it)."""
    index = {n: i for i, n in enumerate(label_names)}
    for value, place in found:
        if value not in index:
            raise DataError(f"{place}: label '{value}' is not one of the label names "
                            f"({', '.join(label_names)}){did_you_mean(value, label_names)}; {where}")
    return index


def _sorted_labels(values):
    vals = sorted(set(values))
    try:
        ints = [int(v) for v in vals]
        if all(str(i) == v.strip() for i, v in zip(ints, vals)):
            return [v for _, v in sorted(zip(ints, vals))]
    except ValueError:
        pass
    return vals


def collect_dataset(audio_dir, labels_csv=None, file_col=None, label_col=None, no_labels=False,
                    label_names=None, multi_label=False) -> Dataset:
    """List the clips of AUDIO_DIR and their labels (the layouts of docs/COMMANDS.md, 'make-batches'; README.md, 'From a folder of audio to a
    CSV'). multi_label: every clip a set of classes (docs/CONFIG.md, multi-label): from the --labels CSV's
    `;`-separated labels column or its 0/1 column per class, or, with class folders, the folder's class
    present and the others absent. ConfigError/DataError on bad input."""
    ds = _collect(audio_dir, labels_csv, file_col, label_col, no_labels, label_names, multi_label)
    if multi_label and ds.multi is None:
        if ds.layout == "unlabeled":
            raise ConfigError("--multi-label needs labels: give --labels FILE.csv (a labels column of ';'-separated "
                              "classes, or one 0/1 column per class) or class folders, not --no-labels")
        matrix = np.zeros((len(ds), len(ds.label_names)), dtype=np.uint8)
        matrix[np.arange(len(ds)), ds.labels] = PRESENT
        ds.multi = MultiLabelTargets(matrix, ds.labels)
    return ds


def _collect(audio_dir, labels_csv, file_col, label_col, no_labels, label_names, multi_label) -> Dataset:
    audio_dir = os.fspath(audio_dir)
    if not os.path.exists(audio_dir):
        raise DataError(f"{audio_dir}: no such folder; give the folder that holds the audio")
    if not os.path.isdir(audio_dir):
        raise DataError(f"{audio_dir}: is a file; AUDIO_DIR must be a folder of audio files")
    if label_names is not None:
        label_names = [str(n) for n in label_names]
        if len(set(label_names)) != len(label_names) or not label_names:
            raise ConfigError(f"--label-names {','.join(label_names)}: give each name once")
    if labels_csv is not None and no_labels:
        raise ConfigError("--labels and --no-labels exclude each other; give one")
    if labels_csv is not None:
        return _from_csv(audio_dir, os.fspath(labels_csv), file_col, label_col, label_names, multi_label)
    if file_col or label_col:
        raise ConfigError("--file-col and --label-col name columns of the --labels CSV; give --labels FILE.csv too")
    rel, ignored = scan_audio(audio_dir)
    if not rel:
        raise DataError(f"{audio_dir}: no audio files ({_exts()}) found in it or its subfolders; check the path")
    if no_labels:
        return Dataset(audio_dir, [os.path.join(audio_dir, r) for r in rel], rel,
                       np.full(len(rel), -1, dtype=np.int64), [], "unlabeled", extra={"ignored_files": ignored})
    classes = sorted({r.split("/", 1)[0] for r in rel if "/" in r})
    if not classes:
        raise ConfigError(f"{audio_dir}: holds audio files but no class folders; for a flat folder give "
                          "--labels FILE.csv (columns clip_name,label), or --no-labels for an unlabeled set")
    if set(classes) <= SPLIT_NAMES and all(any(r.startswith(c + "/") and r.count("/") >= 2 for r in rel)
                                           for c in classes):
        raise ConfigError(f"{audio_dir}: its folders ({', '.join(classes)}) look like splits, not classes; "
                          f"point AUDIO_DIR at one of them, e.g. {os.path.join(audio_dir, classes[-1])}")
    loose = [r for r in rel if "/" not in r]
    rel = [r for r in rel if "/" in r]
    if label_names is None:
        label_names = classes
    else:
        _check_names([(c, os.path.join(audio_dir, c)) for c in classes], label_names,
                     "rename the class folder or add it to --label-names")
    index = {n: i for i, n in enumerate(label_names)}
    labels = np.array([index[r.split("/", 1)[0]] for r in rel], dtype=np.int64)
    return Dataset(audio_dir, [os.path.join(audio_dir, r) for r in rel], rel, labels, list(label_names),
                   "folders", extra={"ignored_loose_files": len(loose), "ignored_files": ignored})


def _pick_column(header, given, defaults, csv_path, flag, what):
    if given:
        if given not in header:
            raise DataError(f"{csv_path}: no column '{given}' in the header ({', '.join(header)})"
                            f"{did_you_mean(given, header)}; fix {flag}")
        return header.index(given)
    for name in defaults:
        if name in header:
            return header.index(name)
    raise DataError(f"{csv_path}: no {what} column in the header ({', '.join(header) or 'empty'}); expected one of "
                    f"{', '.join(defaults)} — or name it with {flag}")


def _from_csv(audio_dir, csv_path, file_col, label_col, label_names, multi_label=False) -> Dataset:
    rows, at = [], 1          # (line the row starts on, cells): a quoted field may hold line breaks
    try:
        with open(csv_path, "r", encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            for cells in reader:
                rows.append((at, cells))
                at = reader.line_num + 1
    except csv.Error as exc:
        raise DataError(f"{csv_path} line {at}: not a readable CSV ({exc})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise open_error(csv_path, exc, "labels file", "--labels must be a CSV file with a header line",
                         "check the --labels path") from None
    if not rows or not any(c.strip() for c in rows[0][1]):
        raise DataError(f"{csv_path}: empty; expected a header line such as clip_name,label and one row per clip")
    header = [c.strip() for c in rows[0][1]]
    fi = _pick_column(header, file_col, FILE_COLUMNS, csv_path, "--file-col", "file name")
    if multi_label and not label_col and not any(c in header for c in LABEL_COLUMNS):
        return _from_class_columns(audio_dir, csv_path, rows, header, fi, label_names)
    li = _pick_column(header, label_col, LABEL_COLUMNS, csv_path, "--label-col", "label")
    entries = []   # (line, name, label)
    seen = {}
    for lineno, row in rows[1:]:
        if not any(c.strip() for c in row):
            continue
        if len(row) <= max(fi, li):
            raise DataError(f"{csv_path} line {lineno}: {len(row)} field(s), but the header has {len(header)}; "
                            "fix that line")
        exc = label_char_error(f"{csv_path} line {lineno}", header[li], row[li].strip(" "))
        if exc is not None:
            raise exc
        name, label = row[fi].strip(), row[li].strip()
        if not name:
            raise DataError(f"{csv_path} line {lineno}: empty file name in column '{header[fi]}'")
        if multi_label:   # a set of classes, ';'-separated; empty: none
            label = tuple(sorted({v.strip() for v in label.split(";") if v.strip()}))
        elif not label:
            raise DataError(f"{csv_path} line {lineno}: empty label in column '{header[li]}' for '{name}'; "
                            "give every clip a label, or use --no-labels")
        if name in seen:
            raise DataError(f"{csv_path} line {lineno}: '{name}' is listed again (first on line {seen[name]}); "
                            "keep one row per clip")
        seen[name] = lineno
        entries.append((lineno, name, label))
    if not entries:
        raise DataError(f"{csv_path}: has a header but no rows; expected one row per clip")
    paths, names, keep, outside = _resolve_files(audio_dir, csv_path, [(ln, name) for ln, name, _ in entries],
                                                 header[fi])
    entries = [entries[k] for k in keep]
    if multi_label:
        found = [(c, f"{csv_path} line {ln}") for ln, _, lbl in entries for c in lbl]
        if label_names is None:
            label_names = _sorted_labels(c for c, _ in found)
        if not label_names:
            raise DataError(f"{csv_path}: no clip has a class in column '{header[li]}' (';'-separated class names)")
        index = _check_names(found, label_names, "fix the CSV or --label-names")
        matrix = np.zeros((len(entries), len(label_names)), dtype=np.uint8)
        for row, (_, _, lbl) in enumerate(entries):
            matrix[row, [index[c] for c in lbl]] = PRESENT
        multi = MultiLabelTargets(matrix)
        return Dataset(audio_dir, paths, names, multi.labels.copy(), list(label_names), "csv", source=csv_path,
                       extra={"skipped": outside}, multi=multi)
    if label_names is None:
        label_names = _sorted_labels(lbl for _, _, lbl in entries)
    index = _check_names([(lbl, f"{csv_path} line {ln}") for ln, _, lbl in entries], label_names,
                         "fix the CSV or --label-names")
    labels = np.array([index[lbl] for _, _, lbl in entries], dtype=np.int64)
    return Dataset(audio_dir, paths, names, labels, list(label_names), "csv", source=csv_path,
                   extra={"skipped": outside})


_PRESENT_CELLS = {"1": PRESENT, "1.0": PRESENT, "true": PRESENT, "yes": PRESENT,
                  "0": ABSENT, "0.0": ABSENT, "false": ABSENT, "no": ABSENT, "": UNKNOWN}


def _from_class_columns(audio_dir, csv_path, rows, header, fi, label_names) -> Dataset:
    """--multi-label with one 0/1 column per class (`file,<class 1>,<class 2>,...`, OpenSoundscape's layout): a
    cell 1 (or true, yes) is present, 0 (false, no) absent, an empty cell unknown. The classes: the columns in
    the header's order, or --label-names (which must name them all)."""
    cols = [j for j in range(len(header)) if j != fi and header[j]]
    if not cols:
        raise DataError(f"{csv_path}: --multi-label needs a labels column (';'-separated classes) or one 0/1 column "
                        f"per class besides the file column '{header[fi]}'; the header has no other column")
    classes = [header[j] for j in cols]
    for c in classes:
        exc = label_char_error(f"{csv_path} line 1", c, c)
        if exc is not None:
            raise exc
    order = list(label_names) if label_names is not None else classes
    if sorted(order) != sorted(classes) or len(set(order)) != len(order):
        raise DataError(f"{csv_path}: its class columns ({', '.join(classes)}) are not the --label-names "
                        f"({', '.join(order)}); name every column once")
    pos = [classes.index(c) for c in order]
    names, matrix, seen = [], [], {}
    for lineno, row in rows[1:]:
        if not any(c.strip() for c in row):
            continue
        if len(row) < len(header):
            raise DataError(f"{csv_path} line {lineno}: {len(row)} field(s), but the header has {len(header)}; "
                            "fix that line")
        name = row[fi].strip()
        if not name:
            raise DataError(f"{csv_path} line {lineno}: empty file name in column '{header[fi]}'")
        if name in seen:
            raise DataError(f"{csv_path} line {lineno}: '{name}' is listed again (first on line {seen[name]}); "
                            "keep one row per clip")
        seen[name] = lineno
        cells = []
        for j in cols:
            v = _PRESENT_CELLS.get(row[j].strip().lower())
            if v is None:
                raise DataError(f"{csv_path} line {lineno}, column '{header[j]}': {row[j].strip()[:40]!r} is not 0 "
                                "or 1 (1 present, 0 absent, empty unknown); fix that cell")
            cells.append(v)
        names.append(name)
        matrix.append([cells[p] for p in pos])
    if not names:
        raise DataError(f"{csv_path}: has a header but no rows; expected one row per clip")
    paths, names, keep, outside = _resolve_files(audio_dir, csv_path, [(seen[n], n) for n in names], header[fi])
    multi = MultiLabelTargets(np.asarray(matrix, dtype=np.uint8)[keep])
    return Dataset(audio_dir, paths, names, multi.labels.copy(), list(order), "csv", source=csv_path,
                   extra={"skipped": outside}, multi=multi)


def _resolve_files(audio_dir, csv_path, entries, column):
    """The files the CSV's rows `entries` [(line, name)] name: (paths, '/'-names, indices of the rows kept,
    [(name, reason)] of rows naming a file outside AUDIO_DIR, which are left out). A name is relative to
    AUDIO_DIR, or to the CSV's folder (e.g. 'train/x.aiff') when that lies inside AUDIO_DIR. DataError when
    a named file is missing, or every name lies outside."""
    base = os.path.dirname(os.path.abspath(csv_path))
    paths, names, keep, missing, outside = [], [], [], [], []
    for k, (lineno, name) in enumerate(entries):
        p = os.path.join(audio_dir, name)
        if not _inside(p, audio_dir):
            outside.append((name.replace(os.sep, "/"), f"{csv_path} line {lineno}: the name points outside AUDIO_DIR "
                                                       f"({audio_dir}); only files inside it are read"))
            continue
        if not _is_file(p):
            alt = os.path.join(base, name)
            if _is_file(alt) and _inside(alt, audio_dir):
                p = alt
            else:
                missing.append((lineno, name))
        paths.append(p)
        names.append(name.replace(os.sep, "/"))
        keep.append(k)
    if not keep:
        raise DataError(f"{csv_path}: every file it names lies outside {audio_dir} (first: '{outside[0][0]}'); "
                        "name the files relative to AUDIO_DIR")
    if missing:
        lineno, name = missing[0]
        raise DataError(f"{csv_path}: {len(missing)} of {len(keep)} files named in column '{column}' are "
                        f"not in {audio_dir} (first: line {lineno}, '{name}'); check AUDIO_DIR or remove those rows")
    return paths, names, keep, outside


def _inside(path, root) -> bool:
    """Whether `path` lies inside the folder `root`, by its normalised absolute path (an absolute name or
    '..' steps can leave it; symbolic links the user put inside AUDIO_DIR are the user's choice and allowed)."""
    root = os.path.normpath(os.path.abspath(root))
    path = os.path.normpath(os.path.abspath(path))
    return os.path.commonpath([root, path]) == root and path != root


def _is_file(path) -> bool:
    """A file, or a FIFO or device (the reader refuses it with the reason, listed in skipped.txt): not a folder."""
    return os.path.isfile(path) or special_file(path) is not None
