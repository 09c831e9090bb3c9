"""What each case is trained towards: one class (`ClassTargets`) or a set of classes (`MultiLabelTargets`).

A batch file stores cuda-convnet's `labels` (one int per case: the class, -1 for none or unknown) in every
case, so that single-label readers keep working; a multi-label batch file adds `targets`, a uint8 array
(classes, cases) with 1 = present, 0 = absent, 255 = unknown (left out of the cost and the metrics).

The batch files, the provider (its order, its draws, what it hands the net), `--balance`, the writer,
predict and show take a `Targets` and ask it, rather than assuming one int per case. The net's labels input,
and with it the costs and best-by, gets `array()`: class indices, or the (n, K) targets on multi-label
batches (the costs tell them apart by their shape, best-by by the set's `multi_label`).

    t = read_targets(batch_dict, num_classes, multi_label, path)  # from a batch file (restricted_load)
    t.take(order)                    # the cases in another order (a shuffle, a balanced draw)
    t.array()                        # what the net's labels input gets, on the host: int64 (n,) class
                                     # indices, or float32 (n, K) with 1 / 0 / -1 (unknown)
    t.dense(K), t.known(K)           # (n, K) 0/1 and the mask of known entries, for metrics
    t.batch_entries()                # the entries of a batch file
    t.balanced_order(rng)            # `train --balance`'s draw (data/balance.py)
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np

from convnet_cli.data.balance import balanced_order, multilabel_balanced_order
from convnet_cli.errors import DataError

PRESENT, ABSENT, UNKNOWN = 1, 0, 255


class Targets:
    """The targets of n cases (see the module docstring)."""

    multi_label: ClassVar[bool] = False
    labels: np.ndarray   # (n,) int64: cuda-convnet's label per case (-1: none or unknown)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def take(self, idx) -> "Targets":
        raise NotImplementedError

    def array(self) -> np.ndarray:
        raise NotImplementedError

    def dense(self, k: int) -> np.ndarray:
        """(n, k) float64: 1 where the class is present, 0 where absent (and where unknown: see known)."""
        raise NotImplementedError

    def known(self, k: int) -> np.ndarray:
        """(n, k) bool: the entries that count in the metrics."""
        raise NotImplementedError

    def batch_entries(self) -> dict:
        raise NotImplementedError

    def balanced_order(self, rng) -> np.ndarray:
        raise NotImplementedError

    @staticmethod
    def concat(parts: list) -> "Targets":
        """The cases of `parts` (Targets of one kind) in order."""
        if not parts:
            return ClassTargets(np.zeros(0, np.int64))
        return type(parts[0])._concat(parts)


class ClassTargets(Targets):
    """One class per case (cuda-convnet's labels): index into label_names, -1 for unlabelled."""

    multi_label = False

    def __init__(self, labels):
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)

    def take(self, idx):
        return ClassTargets(self.labels[np.asarray(idx, dtype=np.int64)])

    def array(self):
        return self.labels

    def dense(self, k):
        out = np.zeros((len(self), k), np.float64)
        ok = self.labels >= 0
        out[np.flatnonzero(ok), self.labels[ok]] = 1.0
        return out

    def known(self, k):
        return np.repeat((self.labels >= 0)[:, None], k, axis=1)

    def batch_entries(self):
        return {"labels": [int(v) for v in self.labels]}

    def balanced_order(self, rng):
        return balanced_order(self.labels, rng)

    @staticmethod
    def _concat(parts):
        return ClassTargets(np.concatenate([p.labels for p in parts]))


class MultiLabelTargets(Targets):
    """A set of classes per case: `matrix` uint8 (n, K) of PRESENT / ABSENT / UNKNOWN.

    `labels` (what single-label readers see) is the class named by `primary` (the class of largest
    overlap, given by the maker), else the first present class, else -1."""

    multi_label = True

    def __init__(self, matrix, primary=None):
        m = np.asarray(matrix)
        if m.ndim != 2:
            raise ValueError("multi-label targets must be (cases, classes)")
        self.matrix = np.ascontiguousarray(m, dtype=np.uint8)
        if primary is None:
            present = self.matrix == PRESENT
            primary = np.where(present.any(axis=1), present.argmax(axis=1), -1)
        self.labels = np.asarray(primary, dtype=np.int64).reshape(-1)

    @property
    def num_classes(self) -> int:
        return int(self.matrix.shape[1])

    def take(self, idx):
        idx = np.asarray(idx, dtype=np.int64)
        return MultiLabelTargets(self.matrix[idx], self.labels[idx])

    def array(self):
        out = (self.matrix == PRESENT).astype(np.float32)
        out[self.matrix == UNKNOWN] = -1.0
        return out

    def dense(self, k):
        return (self.matrix[:, :k] == PRESENT).astype(np.float64)

    def known(self, k):
        return self.matrix[:, :k] != UNKNOWN

    def batch_entries(self):
        return {"labels": [int(v) for v in self.labels], "targets": np.ascontiguousarray(self.matrix.T)}

    def balanced_order(self, rng):
        return multilabel_balanced_order(self.matrix == PRESENT, rng)

    @staticmethod
    def _concat(parts):
        return MultiLabelTargets(np.concatenate([p.matrix for p in parts]),
                                 np.concatenate([p.labels for p in parts]))


def read_targets(d: dict, n: int, num_classes: int, multi_label: bool, path: str) -> Targets:
    """The targets of a batch file's dict `d` (str keys) of n cases. DataError (one line, naming the file)
    for labels or targets that do not fit the batches.meta."""
    labels = d.get("labels")
    if labels is None:
        y = np.full(n, -1, dtype=np.int64)
    else:
        try:
            y = np.asarray(labels).astype(np.int64).reshape(-1)
        except (TypeError, ValueError):
            raise DataError(f"{path}: labels must be integers; re-create it with convnet make-batches") from None
    k = num_classes
    if y.size and (y.min() < -1 or (k and y.max() >= k)):
        raise DataError(f"{path}: label {int(y.max() if y.max() >= k else y.min())} is outside 0..{k - 1} "
                        f"(batches.meta has {k} label_names); re-create the batches with convnet make-batches")
    if not multi_label:
        return ClassTargets(y)
    t = d.get("targets")
    if t is None:
        raise DataError(f"{path}: batches.meta says multi_label, but this batch file has no 'targets'; "
                        "re-create the batches with convnet make-batches --multi-label")
    if not isinstance(t, np.ndarray) or t.shape != (k, n) or t.dtype.kind not in "ui":
        shape = getattr(t, "shape", None)
        raise DataError(f"{path}: 'targets' must be a ({k}, {n}) integer array (classes x cases), found "
                        f"{type(t).__name__}{'' if shape is None else ' of shape ' + str(tuple(shape))}; "
                        "re-create the batches with convnet make-batches --multi-label")
    bad = ~np.isin(t, (PRESENT, ABSENT, UNKNOWN))
    if bad.any():
        c, i = (int(v[0]) for v in np.nonzero(bad))
        raise DataError(f"{path}: targets hold {int(t[c, i])} for class {c} of case {i}; entries are 1 (present), "
                        "0 (absent) or 255 (unknown); re-create the batches with convnet make-batches")
    return MultiLabelTargets(t.T, y)
