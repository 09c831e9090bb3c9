"""`convnet info` for a batch folder (or one batch file): classes, cases per class and per batch, ranges,
shape, dtype, features and skipped files — from batches.meta and the `labels` of each batch file, never
from the data arrays (data/batch_labels.py seeks over them). A multi-label folder (SPEC 17) adds, from the
`targets` of each file: unknown entries per class, class co-occurrence and cases with 0 / 1 / 2+ classes."""
from __future__ import annotations

import os
import sys
from collections import Counter

import numpy as np

from convnet_cli.data.batch_files import META, BatchSet
from convnet_cli.data.batch_labels import load_without_data, read_batch_labels
from convnet_cli.data.batch_set_swap import pending_swap
from convnet_cli.data.skipped_list import iter_skipped
from convnet_cli.errors import DataError
from convnet_cli.progress import Progress

SKIPPED_TXT = "skipped.txt"
_EXAMPLES = 3   # skipped files named in the summary
_REASONS = 5    # distinct reasons counted in the summary
_BAR_FROM = 16  # batch files: from this many on, a progress bar (on a terminal)


def _cases_and_labels(bl, num_vis: int, k: int, path: str):
    """(n, labels int64 (n,)) of one batch file read by read_batch_labels, checked as BatchSet checks it."""
    a, b = bl.data_shape
    n_labels = None if bl.labels is None else bl.labels.size
    if a == num_vis and (n_labels is None or b == n_labels):
        n = b  # one case per column, as make-batches writes
    elif b == num_vis and (n_labels is None or a == n_labels):
        n = a  # one case per row (CIFAR-10)
    else:
        raise DataError(f"{path}: data has shape {bl.data_shape}, but batches.meta says {num_vis} values per case "
                        f"and the file has {'no' if n_labels is None else n_labels} labels; this file does not "
                        "belong here — re-create the batches with convnet make-batches")
    y = np.full(n, -1, dtype=np.int64) if bl.labels is None else bl.labels
    if y.size and (y.min() < -1 or (k and y.max() >= k)):
        bad = int(y.max() if y.max() >= k else y.min())
        raise DataError(f"{path}: label {bad} is outside 0..{k - 1} (batches.meta has {k} label_names); "
                        "re-create the batches with convnet make-batches")
    return n, y


def _multilabel_counts(bl, n: int, y, k: int, path: str):
    """(counts as _class_counts gives them, the (n, k) uint8 targets) of a multi-label batch file: per_class
    counts the cases where each class is present (a case may count for several)."""
    from convnet_cli.data.targets import PRESENT, read_targets

    m = read_targets({"labels": y, "targets": bl.targets}, n, k, True, path).matrix
    return {"per_class": [int(c) for c in (m == PRESENT).sum(axis=0)], "unlabelled": 0}, m


def _multilabel_summary(m, k: int) -> dict:
    """Of targets m (n, k) uint8: unknown entries per class, cooccurrence (k, k) (cases where both classes
    are present; the diagonal: where each is) and how many cases hold 0, 1 and 2+ classes."""
    from convnet_cli.data.targets import PRESENT, UNKNOWN

    on = (m == PRESENT).astype(np.int64)
    per = on.sum(axis=1)
    return {"unknown": [int(c) for c in (m == UNKNOWN).sum(axis=0)],
            "cooccurrence": (on.T @ on).tolist(),
            "cardinality": {"0": int((per == 0).sum()), "1": int((per == 1).sum()), "2+": int((per >= 2).sum())}}


def _class_counts(y, k: int) -> dict:
    """{'per_class': [count of class 0..k-1], 'unlabelled': count of -1}."""
    counts = np.bincount(y[y >= 0], minlength=k) if y.size else np.zeros(k, np.int64)
    return {"per_class": [int(c) for c in counts[:k]], "unlabelled": int((y < 0).sum())}


def _skipped_summary(batch_dir: str, meta_count) -> dict:
    path = os.path.join(batch_dir, SKIPPED_TXT)
    out = {"count": int(meta_count or 0), "file": None, "listed": 0, "reasons": [], "examples": []}
    if not os.path.isfile(path):
        return out
    out["file"] = path
    reasons = Counter()
    try:
        with open(path, "r", encoding="utf-8", errors="replace", newline="") as f:
            for name, reason in iter_skipped(f):
                out["listed"] += 1
                reasons[reason.strip() or "(no reason given)"] += 1
                if len(out["examples"]) < _EXAMPLES:
                    out["examples"].append({"file": name, "reason": reason.strip()})
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    out["reasons"] = [{"reason": r, "count": c} for r, c in reasons.most_common(_REASONS)]
    out["other_reasons"] = max(0, len(reasons) - _REASONS)
    return out


def describe_batch_folder(batch_dir: str, progress: bool = False) -> dict:
    bs = BatchSet(batch_dir)  # checks batches.meta: shape, ranges, files named by the ranges
    k = len(bs.label_names)
    train, test = set(bs.train_range), set(bs.test_range)
    batches, dtypes, scaled = [], Counter(), False
    totals = {"train": np.zeros(k, np.int64), "test": np.zeros(k, np.int64), "all": np.zeros(k, np.int64)}
    unlabelled, cases = Counter(), Counter()
    targets = {"train": [], "test": [], "all": []}   # multi-label: each split's (n, k) targets
    numbers = bs.batch_numbers
    show_bar = progress and len(numbers) >= _BAR_FROM and sys.stderr.isatty()
    with Progress("reading labels", len(numbers), "batches", enabled=show_bar) as bar:
        for i in numbers:
            path = bs.batch_file(i)
            bl = read_batch_labels(path)
            n, y = _cases_and_labels(bl, bs.num_vis, k, path)
            split = "train" if i in train else "test" if i in test else None
            if bs.multi_label:
                counts, m = _multilabel_counts(bl, n, y, k, path)
                for key in ("all", split):
                    if key:
                        targets[key].append(m)
            else:
                counts = _class_counts(y, k)
            batches.append({"batch": i, "file": os.path.basename(path), "split": split, "cases": n, **counts})
            dtypes[str(bl.data_dtype)] += 1
            scaled = scaled or bl.has_scale
            for key in ("all", split):
                if key:
                    totals[key] += counts["per_class"]
                    unlabelled[key] += counts["unlabelled"]
                    cases[key] += n
            bar.add()
    meta = bs.meta
    stored = meta.get("dtype")
    dtype = ", ".join(dtypes) if dtypes else (str(stored) if stored else None)
    multi = None
    if bs.multi_label:
        multi = {key: _multilabel_summary(np.concatenate(v) if v else np.zeros((0, k), np.uint8), k)
                 for key, v in targets.items()}
    return {
        "kind": "batches",
        "path": bs.batch_dir,
        "label_names": list(bs.label_names),
        "num_classes": k,
        "data_shape": list(bs.data_shape),
        "num_vis": bs.num_vis,
        "dtype": dtype,
        "uint8_scaled": scaled,
        "num_batches": len(numbers),
        "num_cases": int(sum(b["cases"] for b in batches)),
        "num_cases_per_batch": bs.num_cases_per_batch or None,
        "train_range": list(bs.train_range),
        "test_range": list(bs.test_range),
        "per_class": {key: {"per_class": [int(c) for c in v], "unlabelled": int(unlabelled[key]),
                            "cases": int(cases[key])} for key, v in totals.items()},
        # a set of classes per case (SPEC 17): per split, unknown entries, co-occurrence and cardinality
        "multi_label": multi,
        "batches": batches,
        "normalisation": "data_mean/data_std in batches.meta (training range)"
        if meta.get("data_mean") is not None and meta.get("data_std") is not None
        else "none stored: computed over the training range when training starts",
        "features": bs.features,
        "skipped": _skipped_summary(bs.batch_dir, meta.get("skipped")),
        "interrupted_install": pending_swap(bs.batch_dir) is not None,
    }


def describe_batch_file(path: str) -> dict:
    """One data_batch_N (or CIFAR test_batch): its cases per class; label names from the folder's meta."""
    folder = os.path.dirname(path) or "."
    names, num_vis, split, multi = [], None, None, False
    meta_path = os.path.join(folder, META)
    if os.path.isfile(meta_path):
        try:
            bs = BatchSet(folder)
        except DataError:
            bs = None  # the file alone still has something to say
        if bs is not None:
            names, num_vis, multi = list(bs.label_names), bs.num_vis, bs.multi_label
            number = next((i for i in bs.batch_numbers
                           if os.path.abspath(bs.batch_file(i)) == os.path.abspath(path)), None)
            split = "train" if number in bs.train_range else "test" if number in bs.test_range else None
    bl = read_batch_labels(path)
    if num_vis is None:  # no usable meta: take make-batches' layout, one case per column
        n = bl.data_shape[1] if bl.labels is None or bl.labels.size == bl.data_shape[1] else bl.data_shape[0]
        y = np.full(n, -1, np.int64) if bl.labels is None else bl.labels
        k = int(y.max()) + 1 if y.size and y.max() >= 0 else 0
    else:
        k = len(names)
        n, y = _cases_and_labels(bl, num_vis, k, path)
    summary = None
    if multi:
        counts, m = _multilabel_counts(bl, n, y, k, path)
        summary = _multilabel_summary(m, k)
    else:
        counts = _class_counts(y, k)
    return {"kind": "batch_file", "path": path, "folder_meta": meta_path if names else None,
            "label_names": names or [str(i) for i in range(k)], "cases": n, "stored_shape": list(bl.data_shape),
            "dtype": str(bl.data_dtype), "uint8_scaled": bl.has_scale, "split": split, **counts,
            "multi_label": summary}


def looks_like_batch_pickle(path: str) -> str | None:
    """'meta' or 'batch' for a pickle that is a batches.meta or a batch file by its keys, else None.
    DataError for a pickle that is truncated or holds more than data."""
    d = load_without_data(path)  # truncated or refused: its own one-line DataError
    if not isinstance(d, dict):
        return None
    keys = {k.decode("latin1") if isinstance(k, bytes) else k for k in d}
    if "label_names" in keys:
        return "meta"
    if "data" in keys:
        return "batch"
    return None
