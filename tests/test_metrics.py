"""metrics.py against numbers worked out by hand (in the comments) and brute-force references."""
from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from convnet_cli.metrics import (
    classification_report,
    confusion_matrix,
    format_report,
    log_loss,
    per_class_prf,
    roc_auc,
    topk_accuracy,
)


def test_confusion_matrix_by_hand():
    # true 0 -> predicted 0, 1;  true 1 -> 1, 1;  true 2 -> 2, 0, 2
    conf = confusion_matrix([0, 0, 1, 1, 2, 2, 2], [0, 1, 1, 1, 2, 0, 2], 3)
    assert conf.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 2]]
    assert conf.sum() == 7


def test_confusion_matrix_rejects_out_of_range():
    with pytest.raises(ValueError):
        confusion_matrix([0, 3], [0, 1], 3)
    with pytest.raises(ValueError):
        confusion_matrix([0, 1], [0], 3)


def test_per_class_prf_by_hand():
    conf = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 2]])
    p, r, f1, support = per_class_prf(conf)
    # predicted counts (column sums) 2, 3, 2; true positives 1, 2, 2
    np.testing.assert_allclose(p, [1 / 2, 2 / 3, 2 / 2])
    # support (row sums) 2, 2, 3
    np.testing.assert_allclose(r, [1 / 2, 2 / 2, 2 / 3])
    # f1 = 2pr/(p+r): 0.5; 2*(2/3)*1/(5/3) = 0.8; same for class 2
    np.testing.assert_allclose(f1, [0.5, 0.8, 0.8])
    assert support.tolist() == [2, 2, 3]


def test_per_class_prf_undefined_is_zero():
    # class 1 is never predicted (precision 0/0) and class 2 never occurs (recall 0/0)
    conf = np.array([[2, 0, 1], [1, 0, 0], [0, 0, 0]])
    p, r, f1, support = per_class_prf(conf)
    assert p[1] == 0 and r[1] == 0 and f1[1] == 0
    assert p[2] == 0 and r[2] == 0 and f1[2] == 0 and support[2] == 0
    assert np.all(np.isfinite(p)) and np.all(np.isfinite(f1))


def test_roc_auc_by_hand():
    # positives 0.35, 0.8; negatives 0.1, 0.4: pairs won 0.35>0.1, 0.8>0.1, 0.8>0.4 = 3 of 4
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    # a tie between a positive and a negative counts one half:
    # positive 0.5 vs negatives 0.5 (1/2), 0.2 (1); positive 0.9 wins both: 3.5 / 4
    assert roc_auc([0.5, 0.5, 0.2, 0.9], [1, 0, 0, 1]) == pytest.approx(0.875)
    assert roc_auc([1, 2, 3], [0, 1, 1]) == 1.0
    assert roc_auc([3, 2, 1], [0, 1, 1]) == 0.0
    assert roc_auc([7, 7, 7, 7], [0, 1, 0, 1]) == 0.5


def _auc_brute_force(scores, y):
    pos = [s for s, t in zip(scores, y) if t == 1]
    neg = [s for s, t in zip(scores, y) if t == 0]
    won = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return won / (len(pos) * len(neg))


def test_roc_auc_with_many_ties_matches_pair_count():
    rng = np.random.default_rng(0)
    for trial in range(20):
        n = int(rng.integers(2, 60))
        scores = rng.integers(0, 5, size=n) / 4.0  # few distinct values: lots of ties
        y = rng.integers(0, 2, size=n)
        y[0], y[1] = 0, 1
        assert roc_auc(scores, y) == pytest.approx(_auc_brute_force(scores, y), abs=1e-12)


def test_roc_auc_one_class_raises():
    with pytest.raises(ValueError, match="one class"):
        roc_auc([0.1, 0.9], [1, 1])
    with pytest.raises(ValueError):
        roc_auc([0.1, 0.9], [0, 2])


def test_log_loss_by_hand_and_clipped():
    # -(ln 0.5 + ln 0.9) / 2 = (0.693147 + 0.105361) / 2
    assert log_loss([[0.5, 0.5], [0.1, 0.9]], [0, 1]) == pytest.approx((math.log(2) - math.log(0.9)) / 2)
    # a probability of exactly 0 is clipped to 1e-15: -ln(1e-15) = 34.538776
    assert log_loss([[1.0, 0.0]], [1]) == pytest.approx(-math.log(1e-15))
    assert log_loss([[1.0, 0.0]], [0]) == pytest.approx(-math.log(1 - 1e-15), abs=1e-12)


def test_topk_accuracy_by_hand():
    probs = np.array([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1], [0.1, 0.2, 0.7]])
    y = np.array([2, 1, 0])
    # top-1 predictions 1, 0, 2: none right
    assert topk_accuracy(probs, y, 1) == 0.0
    # top-2 sets {1,2} (has 2), {0,1} (has 1), {2,1} (lacks 0)
    assert topk_accuracy(probs, y, 2) == pytest.approx(2 / 3)
    assert topk_accuracy(probs, y, 3) == 1.0
    assert topk_accuracy(probs, y, 10) == 1.0  # k is capped at K


def test_classification_report_three_classes():
    probs = np.array([
        [0.7, 0.2, 0.1],   # true 0, pred 0
        [0.3, 0.6, 0.1],   # true 0, pred 1
        [0.1, 0.8, 0.1],   # true 1, pred 1
        [0.2, 0.5, 0.3],   # true 1, pred 1
        [0.1, 0.1, 0.8],   # true 2, pred 2
        [0.5, 0.2, 0.3],   # true 2, pred 0
        [0.2, 0.2, 0.6],   # true 2, pred 2
    ])
    y = np.array([0, 0, 1, 1, 2, 2, 2])
    rep = classification_report(probs, y, ["a", "b", "c"], topk=5)
    assert set(rep) == {"cases", "accuracy", "topk", "log_loss", "per_class", "confusion_matrix", "labels"}
    assert rep["cases"] == 7
    assert rep["accuracy"] == pytest.approx(5 / 7)
    assert list(rep["topk"]) == [3]  # min(5, K)
    assert rep["topk"][3] == 1.0
    # -(ln .7 + ln .3 + ln .8 + ln .5 + ln .8 + ln .3 + ln .6) / 7
    want = -sum(math.log(p) for p in (0.7, 0.3, 0.8, 0.5, 0.8, 0.3, 0.6)) / 7
    assert rep["log_loss"] == pytest.approx(want)
    assert rep["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 2]]
    assert rep["per_class"]["b"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})
    assert rep["labels"] == ["a", "b", "c"]
    json.dumps(rep)  # report.json must be writable as is
    text = format_report(rep)
    assert "accuracy" in text and "0.7143" in text and "confusion" in text
    assert len(text.splitlines()) > 8


def test_classification_report_binary_has_auc():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.65, 0.35], [0.2, 0.8]])
    y = np.array([0, 0, 1, 1])
    rep = classification_report(probs, y, ["no", "yes"], topk=5)
    assert set(rep) == {"cases", "accuracy", "topk", "log_loss", "per_class", "confusion_matrix", "labels",
                        "roc_auc"}
    assert rep["roc_auc"] == pytest.approx(0.75)  # scores 0.1, 0.4 | 0.35, 0.8, as in test_roc_auc_by_hand
    assert list(rep["topk"]) == [2]
    assert "ROC AUC" in format_report(rep)
    one_class = classification_report(probs[:2], y[:2], ["no", "yes"])
    assert one_class["roc_auc"] is None
    assert "n/a" in format_report(one_class)


def test_prf_with_nothing_to_count():
    from convnet_cli.metrics import prf

    assert prf(3, 1, 2) == (0.75, 0.6, 2 * 0.75 * 0.6 / 1.35)
    assert prf(0, 0, 0) == (0.0, 0.0, 0.0)                     # predict's report: 0 where undefined
    assert prf(0, 0, 4, undefined=None) == (None, 0.0, None)   # evaluate: no detection has no precision
    assert prf(0, 3, 0, undefined=None) == (0.0, None, None)
    assert prf(0, 2, 5, undefined=None) == (0.0, 0.0, 0.0)
