"""Which test result is the best so far (`--best-by`): the lowest test cost (the default for single-label
batches), the lowest test error, the highest test ROC AUC (two classes only), or the highest test mean
average precision over the classes (`map`: multi-label batches, where it is the default).

Why cost by default: on imbalanced or small test sets the error rate sits at the prior for many epochs while
the model improves (it moves in steps of 1/cases), so best.npz chosen by error can be an early model; the
log-loss moves with every case's probability. AUC ranks cases by the positive class's score, which is what a
detector is judged by when its threshold is set later. mAP does the same per class for multi-label targets
(SPEC 17): each class's average precision over the test cases whose entry for it is known, the mean over
the classes that have a positive among them.
"""
from __future__ import annotations

import numpy as np

from convnet_cli.backend import to_host
from convnet_cli.errors import ConfigError
from convnet_cli.metrics import mean_average_precision, per_class_average_precision, roc_auc

BEST_BY = ("cost", "error", "auc", "map")
HIGHER_IS_BETTER = ("auc", "map")


def default_best_by(multi_label: bool) -> str:
    """--best-by when none is given: map on multi-label batches, cost otherwise."""
    return "map" if multi_label else "cost"


def check_best_by(best_by: str, label_names, layers, multi_label: bool = False) -> None:
    """ConfigError when `best_by` is unknown or cannot be computed for this data and net."""
    if best_by not in BEST_BY:
        raise ConfigError(f"--best-by {best_by!r}: expected one of {', '.join(BEST_BY)}")
    cost = first_cost(layers)
    if best_by == "map":
        if not multi_label:
            raise ConfigError("--best-by map: the mean average precision over classes is for multi-label batches "
                              "(make-batches --multi-label); on these single-label batches use --best-by cost, "
                              "error or auc")
        if cost is None or not cost.is_classifier:
            raise ConfigError("--best-by map: the net needs a cost.bce layer whose scores rank the cases; use "
                              "--best-by cost")
    if best_by == "auc" and multi_label:
        raise ConfigError("--best-by auc: the batches are multi-label; rank by the mean of the classes' average "
                          "precision with --best-by map (the default), or use cost or error")
    if best_by == "error" and (cost is None or not cost.reports_error):
        raise ConfigError("--best-by error: the net has no classification cost (cost.logreg or cost.bce) "
                          "that reports an error rate; use --best-by cost")
    if best_by == "auc":
        if len(label_names) != 2:
            raise ConfigError(f"--best-by auc: ROC AUC needs two classes, the data has {len(label_names)} "
                              f"({', '.join(map(str, label_names[:4]))}{'…' if len(label_names) > 4 else ''}); "
                              "use --best-by cost or error")
        if cost is None or not cost.is_classifier:
            raise ConfigError("--best-by auc: the net needs a cost.logreg or cost.bce layer whose scores "
                              "rank the cases; use --best-by cost")


def first_cost(layers):
    return next((l for l in layers if l.is_cost), None)


class Scores:
    """Collects the positive class's score and the label of every test case, for the ROC AUC."""

    def __init__(self, net):
        self.net = net
        self.cost = first_cost(net.layers)
        self.scores, self.labels = [], []

    @classmethod
    def for_net(cls, net, label_names, multi_label: bool = False):
        """A collector when the data has two classes and the net a classification cost (the ROC AUC), or on
        multi-label batches (MultiLabelScores: per-class AP), else None."""
        cost = first_cost(net.layers)
        if cost is None or not cost.is_classifier:
            return None
        if multi_label:
            return MultiLabelScores(net, label_names)
        if len(label_names) != 2:
            return None
        return cls(net)

    def metrics(self) -> dict:
        """What the test record gains: {'auc': ROC AUC or None}."""
        return {"auc": self.auc()}

    def add(self, labels) -> None:
        out = self.net.outputs.get(self.cost.in_names[self.cost.scores_input])
        if out is None:
            return
        p = np.asarray(to_host(out), dtype=np.float64)
        p = p.reshape(p.shape[0], -1)
        self.scores.append(p[:, 1] if p.shape[1] >= 2 else p[:, 0])
        self.labels.append(np.asarray(to_host(labels)).reshape(-1).astype(np.int64))

    def auc(self):
        """The ROC AUC over the cases seen, or None when the test range holds only one class."""
        if not self.scores:
            return None
        y = np.concatenate(self.labels)
        s = np.concatenate(self.scores)
        keep = y >= 0
        y, s = y[keep], s[keep]
        if y.size == 0 or np.unique(y).size < 2:
            return None
        return float(roc_auc(s, y))


class MultiLabelScores(Scores):
    """Collects every test case's K scores and its targets ((n, K): 1 present, 0 absent, -1 unknown), for
    the classes' average precision (known entries only) and their mean."""

    def __init__(self, net, label_names):
        super().__init__(net)
        self.label_names = [str(n) for n in label_names]

    def add(self, labels) -> None:
        out = self.net.outputs.get(self.cost.in_names[self.cost.scores_input])
        if out is None:
            return
        p = np.asarray(to_host(out), dtype=np.float64)
        self.scores.append(p.reshape(p.shape[0], -1))
        self.labels.append(np.asarray(to_host(labels), dtype=np.float64).reshape(p.shape[0], -1))

    def per_class_ap(self) -> list:
        """[AP or None] per class (None: no positive among the known test entries)."""
        if not self.scores:
            return [None] * len(self.label_names)
        s, t = np.concatenate(self.scores), np.concatenate(self.labels)
        return per_class_average_precision(s, t > 0.5, t >= 0)

    def metrics(self) -> dict:
        """What the test record gains: {'map': mean AP, 'ap': {class: AP or None}}."""
        aps = self.per_class_ap()
        return {"map": mean_average_precision(aps), "ap": dict(zip(self.label_names, aps))}


def metric(record: dict, best_by: str):
    """The record's value for `best_by` (None when it has none)."""
    return record.get(best_by)


def improves(value, best: dict | None, best_by: str) -> bool:
    """True when `value` beats the best so far (a first test always does; a best kept by another
    --best-by, from before a resume that changed it, is replaced)."""
    if best is None or best.get("by", best_by) != best_by or best.get("metric") is None:
        return True
    if value is None:
        return False
    return value > best["metric"] if best_by in HIGHER_IS_BETTER else value < best["metric"]


def improves_record(record: dict, best: dict | None, best_by: str) -> bool:
    """improves() for a test record; a tie in map (it saturates at 1 on an easy test set) goes to the lower
    test cost, so best.npz is not the first of many equal tests."""
    value = metric(record, best_by)
    if improves(value, best, best_by):
        return True
    return (best_by == "map" and value is not None and value == best.get("metric")
            and record.get("cost") is not None and record["cost"] < best.get("cost", float("inf")))


def best_of_run(best: dict | None, best_file_state: dict | None, best_by: str) -> dict | None:
    """The best test a resumed run must beat: the resumed checkpoint's `best`, or the one best.npz records
    (its own state, `best_file_state`) when that is better by the same `best_by`."""
    recorded = (best_file_state or {}).get("best")
    if not isinstance(recorded, dict) or recorded.get("by", "error") != best_by:  # no "by": before --best-by
        return best
    value = recorded.get("metric")
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
        return best
    if best is None or best.get("by", best_by) != best_by or improves(value, best, best_by):
        return dict(recorded, by=best_by)
    return best
