"""What each case is trained towards: one class (`ClassTargets`) or a set of classes (`MultiLabelTargets`).

A batch file stores cuda-convnet's `labels` (one int per case: the class, -1 for none or unknown) in every
case, so that single-label readers keep working; a multi-label batch file adds `targets`, a uint8 array
(classes, cases) with 1 = present, 0 = absent, 255 = unknown (left out of the cost and the metrics).

Everything that differs between the kinds of target is asked of the kind (the class), never decided by
a flag elsewhere: the batch files, the provider (its order, its draws), `--balance`, the writer, the costs'
check of the data, the test metrics and `--best-by`, predict's CSV and report, and show. A new kind (say,
a case's class with a weight, or a set with ranks) is one subclass here plus its test, and the cost that
trains on it (docs/CONTRIBUTING.md, "A kind of target").

    kind = kind_of(batchset.meta)        # the class, from batches.meta / a checkpoint's state / a bool
    t = read_targets(batch_dict, n, num_classes, multi_label, path)  # from a batch file (restricted_load)
    t.take(order)                    # the cases in another order (a shuffle, a balanced draw)
    t.array()                        # what the net's labels input gets, on the host: int64 (n,) class
                                     # indices, or float32 (n, K) with 1 / 0 / -1 (unknown); a cost reads it
    t.dense(K), t.known(K)           # (n, K) 0/1 and the mask of known entries, for metrics
    t.batch_entries()                # the entries of a batch file; kind.meta_entries(): of batches.meta
    t.balanced_order(rng)            # `train --balance`'s draw (data/balance.py)
    kind.default_best_by, kind.best_by_problem(by, names)   # train --best-by
    kind.test_scores(names)          # the collector of the test's ranking metrics (metrics.py), or None
    t.report(probs, names, ...)      # predict --report's dict; kind.format_report(d): its text
    kind.predicted_column(probs, names, thresholds), t.true_column(names)   # predict's CSV
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np

from convnet_cli import metrics
from convnet_cli.data.balance import balanced_order, multilabel_balanced_order
from convnet_cli.errors import DataError
from convnet_cli.thresholds import DEFAULT_THRESHOLD

PRESENT, ABSENT, UNKNOWN = 1, 0, 255


class Targets:
    """The targets of n cases (see the module docstring)."""

    multi_label: ClassVar[bool] = False   # the batches.meta / checkpoint flag that names the kind
    name: ClassVar[str] = ""              # how messages name the kind ("single-label", "multi-label")
    describe: ClassVar[str] = ""          # what it means, in a message ("one class per case")
    made_with: ClassVar[str] = ""         # how it is made ("make-batches --multi-label")
    default_best_by: ClassVar[str] = "cost"
    no_truth: ClassVar[str] = ""          # predict --report's one-line error when all_known() is False
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

    def all_known(self) -> bool:
        """Whether the truth of these cases is known well enough for predict's `true` column and report."""
        raise NotImplementedError

    @classmethod
    def meta_entries(cls) -> dict:
        """What batches.meta (and a checkpoint's state) records of the kind."""
        return {"multi_label": True} if cls.multi_label else {}

    @classmethod
    def named_by(cls, entries: dict) -> bool:
        """Whether a batches.meta or checkpoint state's entries name this kind (meta_entries's)."""
        return all(entries.get(k) == v for k, v in cls.meta_entries().items())

    @classmethod
    def cost_fix(cls, label_names) -> str:
        """How to end a net so that it trains on this kind (for a cost that cannot)."""
        raise NotImplementedError

    @classmethod
    def best_by_problem(cls, best_by: str, label_names) -> str | None:
        """Why `--best-by best_by` cannot rank tests on targets of this kind with these classes (the
        one-line error, with the fix), or None. best_by is one of cost, error, auc, map."""
        return None

    @classmethod
    def test_scores(cls, label_names):
        """A collector of the test cases' scores (metrics.py RocScores / ClassAPScores: add(scores, targets),
        metrics()) for the ranking metrics the test record gains, or None when there are none."""
        return None

    @classmethod
    def predicted_column(cls, probs, label_names, thresholds=None) -> list:
        """predict's CSV `predicted` of each case."""
        raise NotImplementedError

    def true_column(self, label_names) -> list:
        """predict's CSV `true` of each case."""
        raise NotImplementedError

    def report(self, probs, label_names, topk: int = 5, thresholds=None) -> dict:
        """predict --report's dict (metrics.py), over the cases whose truth is known."""
        raise NotImplementedError

    @staticmethod
    def format_report(report: dict) -> str:
        raise NotImplementedError

    @classmethod
    def from_batch(cls, d: dict, labels, n: int, k: int, path: str) -> "Targets":
        """The targets of a batch file's dict `d` of n cases of k classes, its `labels` (n,) already read and
        checked (read_targets); DataError naming the file when the kind's own entries do not fit."""
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
    name = "single-label"
    describe = "one class per case"
    made_with = "make-batches without --multi-label"
    default_best_by = "cost"
    no_truth = ("--report needs the true labels, and these cases have none (unlabeled batches or audio outside "
                "class-named folders)")

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

    def all_known(self):
        return len(self) > 0 and bool((self.labels >= 0).all())

    @classmethod
    def from_batch(cls, d, labels, n, k, path):
        return cls(labels)

    @classmethod
    def cost_fix(cls, label_names):
        return (f"end the net in an fc layer with one output per class ({len(label_names)}), a softmax and a "
                "cost.logreg layer")

    @classmethod
    def best_by_problem(cls, best_by, label_names):
        if best_by == "map":
            return ("--best-by map: the mean average precision over classes is for multi-label batches "
                    "(make-batches --multi-label); on these single-label batches use --best-by cost, error or auc")
        if best_by == "auc" and len(label_names) != 2:
            return (f"--best-by auc: ROC AUC needs two classes, the data has {len(label_names)} "
                    f"({', '.join(map(str, label_names[:4]))}{'…' if len(label_names) > 4 else ''}); "
                    "use --best-by cost or error")
        return None

    @classmethod
    def test_scores(cls, label_names):
        return metrics.RocScores() if len(label_names) == 2 else None

    @classmethod
    def predicted_column(cls, probs, label_names, thresholds=None):
        pred = np.asarray(probs).argmax(axis=1) if len(probs) else []
        return [label_names[int(c)] for c in pred]

    def true_column(self, label_names):
        return [label_names[int(c)] for c in self.labels]

    def report(self, probs, label_names, topk=5, thresholds=None):
        return metrics.classification_report(probs, self.labels, label_names, topk=topk)

    @staticmethod
    def format_report(report):
        return metrics.format_report(report)

    @staticmethod
    def _concat(parts):
        return ClassTargets(np.concatenate([p.labels for p in parts]))


class MultiLabelTargets(Targets):
    """A set of classes per case: `matrix` uint8 (n, K) of PRESENT / ABSENT / UNKNOWN.

    `labels` (what single-label readers see) is the class named by `primary` (the class of largest
    overlap, given by the maker), else the first present class, else -1."""

    multi_label = True
    name = "multi-label"
    describe = "several classes per case"
    made_with = "make-batches --multi-label"
    default_best_by = "map"
    no_truth = ("--report needs the true classes, and these cases have none: for a multi-label network predict "
                "batches made with make-batches --multi-label (--data-path)")

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

    @classmethod
    def from_batch(cls, d, labels, n, k, path):
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
            raise DataError(f"{path}: targets hold {int(t[c, i])} for class {c} of case {i}; entries are 1 "
                            "(present), 0 (absent) or 255 (unknown); re-create the batches with convnet make-batches")
        return cls(t.T, labels)

    @classmethod
    def cost_fix(cls, label_names):
        return (f"end the net in an fc layer with neuron: logistic and one output per class ({len(label_names)}), "
                "and a cost.bce layer")

    @classmethod
    def unknown(cls, n: int, k: int) -> "MultiLabelTargets":
        """n cases of k classes whose every entry is unknown (audio whose set of classes nobody gave)."""
        return cls(np.full((n, k), UNKNOWN, np.uint8))

    def all_known(self):
        return len(self) > 0 and bool((self.matrix != UNKNOWN).any())

    @classmethod
    def best_by_problem(cls, best_by, label_names):
        if best_by == "auc":
            return ("--best-by auc: the batches are multi-label; rank by the mean of the classes' average "
                    "precision with --best-by map (the default), or use cost or error")
        return None

    @classmethod
    def test_scores(cls, label_names):
        return metrics.ClassAPScores(label_names)

    @staticmethod
    def _thresholds(thresholds, k: int) -> list:
        """The K class thresholds: those given, else DEFAULT_THRESHOLD each."""
        return [DEFAULT_THRESHOLD] * k if thresholds is None else list(thresholds)

    @classmethod
    def predicted_column(cls, probs, label_names, thresholds=None):
        k = len(label_names)
        sets = metrics.predicted_sets(np.asarray(probs).reshape(-1, k), cls._thresholds(thresholds, k))
        return metrics.class_sets(sets, label_names)

    def true_column(self, label_names):
        return metrics.class_sets(self.matrix == PRESENT, label_names)

    def report(self, probs, label_names, topk=5, thresholds=None):
        return metrics.multilabel_report(probs, self.matrix == PRESENT, self.matrix != UNKNOWN, label_names,
                                         self._thresholds(thresholds, len(label_names)))

    @staticmethod
    def format_report(report):
        return metrics.format_multilabel_report(report)

    @staticmethod
    def _concat(parts):
        return MultiLabelTargets(np.concatenate([p.matrix for p in parts]),
                                 np.concatenate([p.labels for p in parts]))


# The kinds, the default first: kind_of takes the last whose entries a batches.meta holds
KINDS = (ClassTargets, MultiLabelTargets)


def kind_of(source) -> type:
    """The kind of target (a Targets subclass) that `source` names: a Targets subclass or instance itself, a
    batches.meta or checkpoint-state dict (the kinds' meta_entries), an object with `multi_label` (a
    BatchSet, a RunState), or a bool (True: multi-label)."""
    if isinstance(source, type) and issubclass(source, Targets):
        return source
    if isinstance(source, Targets):
        return type(source)
    if isinstance(source, dict):
        entries = source
    elif isinstance(source, (bool, np.bool_, int)) or source is None:
        entries = {"multi_label": bool(source)}
    else:
        entries = {"multi_label": bool(getattr(source, "multi_label", False))}
    entries = {k: (bool(v) if k == "multi_label" else v) for k, v in entries.items()}
    return next(k for k in reversed(KINDS) if k.named_by(entries))


def read_targets(d: dict, n: int, num_classes: int, multi_label, path: str) -> Targets:
    """The targets of a batch file's dict `d` (str keys) of n cases, of the kind `multi_label` names (a bool,
    or anything kind_of takes). DataError (one line, naming the file) for labels or targets that do not fit
    the batches.meta."""
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
    return kind_of(multi_label).from_batch(d, y, n, k, path)
