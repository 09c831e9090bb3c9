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

    def __len__(self):
        return len(self.paths)


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
                    label_names=None) -> Dataset:
    """List the clips of AUDIO_DIR and their labels (the layouts of README.md, 'From a folder of audio to a
    CSV'). ConfigError/DataError on bad input."""
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
        return _from_csv(audio_dir, os.fspath(labels_csv), file_col, label_col, label_names)
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


def _from_csv(audio_dir, csv_path, file_col, label_col, label_names) -> Dataset:
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
        if not label:
            raise DataError(f"{csv_path} line {lineno}: empty label in column '{header[li]}' for '{name}'; "
                            "give every clip a label, or use --no-labels")
        if name in seen:
            raise DataError(f"{csv_path} line {lineno}: '{name}' is listed again (first on line {seen[name]}); "
                            "keep one row per clip")
        seen[name] = lineno
        entries.append((lineno, name, label))
    if not entries:
        raise DataError(f"{csv_path}: has a header but no rows; expected one row per clip")
    base = os.path.dirname(os.path.abspath(csv_path))
    paths, names, missing, outside, kept = [], [], [], [], []
    for entry in entries:
        lineno, name, _ = entry
        p = os.path.join(audio_dir, name)
        if not _inside(p, audio_dir):
            outside.append((name.replace(os.sep, "/"), f"{csv_path} line {lineno}: the name points outside AUDIO_DIR "
                                                       f"({audio_dir}); only files inside it are read"))
            continue
        if not _is_file(p):
            alt = os.path.join(base, name)  # names written relative to the CSV (e.g. 'train/x.aiff')
            if _is_file(alt) and _inside(alt, audio_dir):
                p = alt
            else:
                missing.append((lineno, name))
        paths.append(p)
        names.append(name.replace(os.sep, "/"))
        kept.append(entry)
    if not kept:
        raise DataError(f"{csv_path}: every file it names lies outside {audio_dir} (first: '{outside[0][0]}'); "
                        "name the files relative to AUDIO_DIR")
    entries = kept
    if missing:
        lineno, name = missing[0]
        raise DataError(f"{csv_path}: {len(missing)} of {len(entries)} files named in column '{header[fi]}' are "
                        f"not in {audio_dir} (first: line {lineno}, '{name}'); check AUDIO_DIR or remove those rows")
    if label_names is None:
        label_names = _sorted_labels(lbl for _, _, lbl in entries)
    index = _check_names([(lbl, f"{csv_path} line {ln}") for ln, _, lbl in entries], label_names,
                         "fix the CSV or --label-names")
    labels = np.array([index[lbl] for _, _, lbl in entries], dtype=np.int64)
    return Dataset(audio_dir, paths, names, labels, list(label_names), "csv", source=csv_path,
                   extra={"skipped": outside})


def _inside(path, root) -> bool:
    """Whether `path` lies inside the folder `root`, by its normalised absolute path (an absolute name or
    '..' steps can leave it; symbolic links the user put inside AUDIO_DIR are the user's choice and allowed)."""
    root = os.path.normpath(os.path.abspath(root))
    path = os.path.normpath(os.path.abspath(path))
    return os.path.commonpath([root, path]) == root and path != root


def _is_file(path) -> bool:
    """A file, or a FIFO or device (the reader refuses it with the reason, listed in skipped.txt): not a folder."""
    return os.path.isfile(path) or special_file(path) is not None
