"""The kinds of target (data/targets.py) answer what differs between one class per case and a set of classes:
which --best-by they rank by, the test's ranking metrics, predict's CSV columns and report, what batches.meta
records, and which costs train on them. A new kind is one subclass: the last test adds one and sees the
cost check, best-by and kind_of take it without an edit elsewhere."""
from __future__ import annotations

import numpy as np
import pytest

from convnet_cli import metrics
from convnet_cli.data import targets as tg
from convnet_cli.data.targets import PRESENT, UNKNOWN, ClassTargets, MultiLabelTargets, kind_of
from convnet_cli.errors import ConfigError
from convnet_cli.train import best


def test_kind_of_reads_meta_state_flags_and_objects():
    class HasFlag:
        multi_label = True

    assert kind_of({}) is ClassTargets
    assert kind_of({"multi_label": True, "label_names": ["a"]}) is MultiLabelTargets
    assert kind_of({"multi_label": 0}) is ClassTargets
    assert kind_of(True) is MultiLabelTargets and kind_of(False) is ClassTargets and kind_of(None) is ClassTargets
    assert kind_of(HasFlag()) is MultiLabelTargets
    assert kind_of(ClassTargets([0, 1])) is ClassTargets
    assert kind_of(MultiLabelTargets) is MultiLabelTargets
    assert ClassTargets.meta_entries() == {} and MultiLabelTargets.meta_entries() == {"multi_label": True}


def test_best_by_defaults_and_refusals_come_from_the_kind():
    assert best.default_best_by(ClassTargets) == "cost" and best.default_best_by(True) == "map"
    assert "multi-label" in ClassTargets.best_by_problem("map", ["a", "b"])
    assert "two classes" in ClassTargets.best_by_problem("auc", ["a", "b", "c"])
    assert ClassTargets.best_by_problem("auc", ["a", "b"]) is None
    assert "map" in MultiLabelTargets.best_by_problem("auc", ["a", "b"])
    assert MultiLabelTargets.best_by_problem("map", ["a", "b", "c"]) is None
    with pytest.raises(ConfigError, match="multi-label batches"):
        best.check_best_by("map", ["a", "b"], [], ClassTargets)


def test_the_test_collectors_give_the_metrics_module_figures():
    rng = np.random.default_rng(3)
    assert ClassTargets.test_scores(["a", "b", "c"]) is None
    roc = ClassTargets.test_scores(["a", "b"])
    y = np.array([0, 1, 1, 0, 1, -1, 0, 1])
    p = rng.random((8, 2))
    roc.add(p[:5], y[:5])
    roc.add(p[5:], y[5:])
    keep = y >= 0
    assert roc.metrics()["auc"] == pytest.approx(metrics.roc_auc(p[keep, 1], y[keep]))

    ap = MultiLabelTargets.test_scores(["x", "y"])
    t = np.array([[1, 0], [0, -1], [1, 1], [0, 0]], np.float64)
    s = rng.random((4, 2))
    ap.add(s[:2], t[:2])
    ap.add(s[2:], t[2:])
    want = metrics.per_class_average_precision(s, t > 0.5, t >= 0)
    got = ap.metrics()
    assert list(got["ap"].values()) == want
    assert got["map"] == pytest.approx(metrics.mean_average_precision(want))


def test_predict_columns_and_report_per_kind():
    probs = np.array([[0.2, 0.7, 0.6], [0.9, 0.1, 0.3]], np.float32)
    names = ["a", "b", "c"]
    single = ClassTargets([2, 0])
    assert single.predicted_column(probs, names) == ["b", "a"]
    assert single.true_column(names) == ["c", "a"]
    assert single.all_known() and not ClassTargets([0, -1]).all_known()
    rep = single.report(probs, names, topk=2)
    assert rep == metrics.classification_report(probs, np.array([2, 0]), names, topk=2)

    m = np.array([[PRESENT, PRESENT, 0], [0, UNKNOWN, PRESENT]], np.uint8)
    multi = MultiLabelTargets(m)
    assert multi.predicted_column(probs, names) == ["b;c", "a"]
    assert multi.predicted_column(probs, names, [0.1, 0.8, 0.8]) == ["a", "a"]
    assert multi.true_column(names) == ["a;b", "c"]
    assert multi.all_known() and not MultiLabelTargets.unknown(2, 3).all_known()
    rep = multi.report(probs, names)
    assert rep["per_class"]["b"]["unknown"] == 1 and rep["thresholds"] == {"a": 0.5, "b": 0.5, "c": 0.5}
    assert "macro mAP" in MultiLabelTargets.format_report(rep)


def test_a_new_kind_is_one_subclass(monkeypatch):
    """A kind that only a cost of its own trains on: kind_of finds it by its batches.meta entries, the
    existing costs refuse it naming it, and best-by asks it."""
    from convnet_cli.layers.cost import LogregCost

    class Weighted(ClassTargets):
        name = "weighted single-label"
        describe = "one class per case with a weight"

        @classmethod
        def meta_entries(cls):
            return {"weighted": True}

        @classmethod
        def cost_fix(cls, label_names):
            return "use a cost.weighted layer"

        @classmethod
        def best_by_problem(cls, best_by, label_names):
            return "--best-by auc: not for weighted cases" if best_by == "auc" else None

    monkeypatch.setattr(tg, "KINDS", tg.KINDS + (Weighted,))
    assert kind_of({"weighted": True, "label_names": ["a", "b"]}) is Weighted
    assert kind_of({"label_names": ["a", "b"]}) is ClassTargets
    layer = LogregCost.__new__(LogregCost)
    layer.name, layer.type = "cost", "cost.logreg"
    layer.error = lambda msg: ConfigError(f"layer 'cost': {msg}")
    with pytest.raises(ConfigError, match=r"weighted single-label \(one class per case with a weight\).*"
                                          r"cost.weighted"):
        layer.check_data(["a", "b"], Weighted)
    with pytest.raises(ConfigError, match="not for weighted cases"):
        best.check_best_by("auc", ["a", "b"], [], Weighted)
