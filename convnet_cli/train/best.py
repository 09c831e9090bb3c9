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

from convnet_cli.backend import to_host
from convnet_cli.data.targets import kind_of
from convnet_cli.errors import ConfigError

BEST_BY = ("cost", "error", "auc", "map")
HIGHER_IS_BETTER = ("auc", "map")


def default_best_by(kind) -> str:
    """--best-by when none is given: the kind of target's (data/targets.py; map on multi-label batches, cost
    otherwise). kind: a Targets class, or anything data/targets.py kind_of takes (a bool: multi-label)."""
    return kind_of(kind).default_best_by


def check_best_by(best_by: str, label_names, layers, kind=False) -> None:
    """ConfigError when `best_by` is unknown or cannot be computed for this data (its kind of target, which
    says what it can rank by) and net (a cost whose scores rank the cases, or that reports an error)."""
    if best_by not in BEST_BY:
        raise ConfigError(f"--best-by {best_by!r}: expected one of {', '.join(BEST_BY)}")
    problem = kind_of(kind).best_by_problem(best_by, list(label_names))
    if problem:
        raise ConfigError(problem)
    cost = first_cost(layers)
    if best_by == "error" and (cost is None or not cost.reports_error):
        raise ConfigError("--best-by error: the net has no classification cost (cost.logreg or cost.bce) "
                          "that reports an error rate; use --best-by cost")
    if best_by in HIGHER_IS_BETTER and (cost is None or not cost.is_classifier):
        what = "cost.bce layer" if best_by == "map" else "cost.logreg or cost.bce layer"
        raise ConfigError(f"--best-by {best_by}: the net needs a {what} whose scores rank the cases; use "
                          "--best-by cost")


def first_cost(layers):
    return next((l for l in layers if l.is_cost), None)


class Scores:
    """The test's ranking metrics: hands the classification cost's scores of every test minibatch, with its
    labels input, to the kind of target's collector (metrics.py RocScores, ClassAPScores)."""

    def __init__(self, net, collector):
        self.net = net
        self.cost = first_cost(net.layers)
        self.collector = collector

    @classmethod
    def for_net(cls, net, label_names, kind=False):
        """A Scores when the net has a classification cost and the kind of target (data/targets.py) has
        ranking metrics for these classes (the ROC AUC of two classes, the classes' AP), else None."""
        cost = first_cost(net.layers)
        if cost is None or not cost.is_classifier:
            return None
        collector = kind_of(kind).test_scores(list(label_names))
        return None if collector is None else cls(net, collector)

    def add(self, labels) -> None:
        out = self.net.outputs.get(self.cost.in_names[self.cost.scores_input])
        if out is not None:
            self.collector.add(to_host(out), to_host(labels))

    @property
    def parts(self) -> list:
        """What was collected, for a data-parallel run to gather (train/data_parallel.py)."""
        return self.collector.parts

    @parts.setter
    def parts(self, value) -> None:
        self.collector.parts = value

    def metrics(self) -> dict:
        """What the test record gains: {'auc': ...} or {'map': ..., 'ap': {class: AP}}."""
        return self.collector.metrics()


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
