"""Metrics on host arrays (NumPy only), the one place for them: what `predict --report` prints and writes,
the test metrics of `train` and `--best-by`, the precision-recall arithmetic of `evaluate`, and the interval
of a reviewed precision (`evaluate REVIEW_DIR`).

Every function takes plain arrays: probs (n, K) class probabilities, y_true (n,) int labels in [0, K).
Cases with an unknown label (-1) are the caller's to drop before calling these.
"""
from __future__ import annotations

import math

import numpy as np

LOG_LOSS_EPS = 1e-15


def confusion_matrix(y_true, y_pred, k: int) -> np.ndarray:
    """(k, k) int64 counts; rows = true class, columns = predicted class."""
    y_true = np.asarray(y_true, dtype=np.int64).reshape(-1)
    y_pred = np.asarray(y_pred, dtype=np.int64).reshape(-1)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} labels but y_pred has {y_pred.size}")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.size and (y.min() < 0 or y.max() >= k):
            raise ValueError(f"{name} holds a class outside 0..{k - 1}")
    conf = np.zeros((k, k), dtype=np.int64)
    np.add.at(conf, (y_true, y_pred), 1)
    return conf


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of x; tied values share the mean of the ranks they span."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    # boundaries of runs of equal values in the sorted array
    starts = np.r_[0, np.flatnonzero(xs[1:] != xs[:-1]) + 1]
    ends = np.r_[starts[1:], xs.size]
    avg = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def roc_auc(scores, y_true) -> float:
    """Area under the ROC curve for a binary problem, by the Mann-Whitney U statistic.

    scores: (n,) higher = more likely class 1; y_true: (n,) 0/1. A tie between a positive and a negative
    counts one half (average ranks). ValueError when only one class is present.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(y_true).reshape(-1)
    if scores.shape != y.shape:
        raise ValueError(f"{scores.size} scores but {y.size} labels")
    pos = y == 1
    n_pos = int(pos.sum())
    n_neg = int((y == 0).sum())
    if n_pos + n_neg != y.size:
        raise ValueError("roc_auc needs labels 0 and 1 only")
    if n_pos == 0 or n_neg == 0:
        raise ValueError("roc_auc is undefined when only one class is present")
    ranks = _average_ranks(scores)
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def log_loss(probs, y_true) -> float:
    """Mean of -log p(true class), each probability clipped to [1e-15, 1 - 1e-15]."""
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.int64).reshape(-1)
    if probs.ndim != 2 or probs.shape[0] != y.size:
        raise ValueError(f"probs must be (n, K) with n = {y.size}, got {probs.shape}")
    if y.size == 0:
        return float("nan")
    p = np.clip(probs[np.arange(y.size), y], LOG_LOSS_EPS, 1 - LOG_LOSS_EPS)
    return float(-np.mean(np.log(p)))


def topk_accuracy(probs, y_true, k: int) -> float:
    """Fraction of cases whose true class is among the k most probable.

    Ties at the k-th place are broken by class order (a stable sort of -probs), so the count never
    exceeds k classes per case.
    """
    probs = np.asarray(probs)
    y = np.asarray(y_true, dtype=np.int64).reshape(-1)
    if y.size == 0:
        return float("nan")
    k = max(1, min(int(k), probs.shape[1]))
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == y[:, None], axis=1)))


def per_class_prf(conf) -> tuple:
    """(precision, recall, f1, support), each (K,), from a confusion matrix (rows = true).

    A ratio whose denominator is 0 is reported as 0 (a class never predicted has precision 0).
    """
    conf = np.asarray(conf, dtype=np.float64)
    tp = np.diag(conf)
    predicted = conf.sum(axis=0)
    support = conf.sum(axis=1)

    def ratio(a, b):
        out = np.zeros_like(a)
        np.divide(a, b, out=out, where=b > 0)
        return out

    precision = ratio(tp, predicted)
    recall = ratio(tp, support)
    f1 = ratio(2 * precision * recall, precision + recall)
    return precision, recall, f1, support.astype(np.int64)


def classification_report(probs, y_true, label_names, topk: int = 5) -> dict:
    """Everything `predict --report` shows, as a JSON-ready dict.

    probs: (n, K); y_true: (n,) ints in [0, K); label_names: K names.
    Keys: cases, accuracy, topk {k: acc} with k = min(topk, K), log_loss, per_class
    {name: {precision, recall, f1, support}}, confusion_matrix (rows = true), labels, and roc_auc for
    K == 2 (score = probability of class 1; null when one class is missing).
    """
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.int64).reshape(-1)
    n, k = probs.shape
    names = [str(s) for s in label_names]
    if len(names) != k:
        raise ValueError(f"{len(names)} label names for {k} classes")
    pred = np.argmax(probs, axis=1) if n else np.zeros(0, dtype=np.int64)
    conf = confusion_matrix(y, pred, k)
    precision, recall, f1, support = per_class_prf(conf)
    kk = max(1, min(int(topk), k))
    report = {
        "cases": int(n),
        "accuracy": float(np.mean(pred == y)) if n else float("nan"),
        "topk": {kk: topk_accuracy(probs, y, kk)},
        "log_loss": log_loss(probs, y),
        "per_class": {
            names[c]: {
                "precision": float(precision[c]),
                "recall": float(recall[c]),
                "f1": float(f1[c]),
                "support": int(support[c]),
            }
            for c in range(k)
        },
        "confusion_matrix": conf.tolist(),
        "labels": names,
    }
    if k == 2:
        try:
            report["roc_auc"] = roc_auc(probs[:, 1], y)
        except ValueError:
            report["roc_auc"] = None
    return report


def format_report(report: dict) -> str:
    """A readable text table of a classification_report dict."""
    lines = [f"cases     {report['cases']}", f"accuracy  {report['accuracy']:.4f}"]
    for k, acc in report["topk"].items():
        lines.append(f"top-{k}".ljust(10) + f"{acc:.4f}")
    lines.append(f"log-loss  {report['log_loss']:.4f}")
    if "roc_auc" in report:
        auc = report["roc_auc"]
        lines.append(f"ROC AUC   {'n/a (one class only)' if auc is None else format(auc, '.4f')}")
    names = list(report["labels"])
    width = max([5] + [len(n) for n in names])
    lines.append("")
    lines.append(f"{'class'.ljust(width)}  precision  recall  f1      support")
    for name in names:
        r = report["per_class"][name]
        lines.append(f"{name.ljust(width)}  {r['precision']:9.4f}  {r['recall']:6.4f}  {r['f1']:6.4f}  {r['support']:7d}")
    lines.append("")
    lines.append("confusion matrix (rows = true, columns = predicted)")
    conf = report["confusion_matrix"]
    cell = max([len(str(v)) for row in conf for v in row] + [len(n) for n in names] + [1])
    lines.append(" " * width + "  " + " ".join(n.rjust(cell) for n in names))
    for name, row in zip(names, conf):
        lines.append(name.ljust(width) + "  " + " ".join(str(v).rjust(cell) for v in row))
    return "\n".join(lines)


# ---- ranking: precision-recall over a score threshold -----------------------------------------------

def pr_curve(scores, hits, n_positives: int):
    """Precision and recall at each distinct score threshold, highest first.

    scores: (n,) scores of n detections or cases; hits: (n,) bool, True where that one is a true positive;
    n_positives: how many positives there are in all (may exceed hits.sum(): positives that no detection
    found, such as unmatched annotations). -> (thresholds, precision, recall), each (m,) float64; recall is
    NaN when n_positives is 0."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    tp = np.asarray(hits, dtype=np.float64).reshape(-1)
    if s.size == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    order = np.argsort(-s, kind="stable")
    s, tp = s[order], tp[order]
    ctp = np.cumsum(tp)
    cnt = np.arange(1, len(s) + 1, dtype=np.float64)
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]  # the last of each run of tied scores
    prec = ctp[last] / cnt[last]
    rec = ctp[last] / n_positives if n_positives else np.full(len(last), np.nan)
    return s[last], prec, rec


def average_precision_from_curve(precision, recall) -> float:
    """The step-wise area under a pr_curve: sum over thresholds of (R_i - R_{i-1}) * P_i (scikit-learn's
    average_precision_score); recall that no threshold reaches adds nothing."""
    if len(precision) == 0:
        return 0.0
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def average_precision(scores, y_true) -> float | None:
    """Average precision of binary labels y_true (0/1) ranked by scores; None when there is no positive."""
    y = np.asarray(y_true).reshape(-1).astype(bool)
    n_pos = int(y.sum())
    if n_pos == 0:
        return None
    _, prec, rec = pr_curve(scores, y, n_pos)
    return average_precision_from_curve(prec, rec)


def per_class_average_precision(scores, present, known=None) -> list:
    """scores, present: (n, K) (present 0/1); known: (n, K) bool, the entries that count (default all).
    -> [AP or None] per class: over the known cases of that class, None where it has no positive."""
    scores = np.asarray(scores, dtype=np.float64)
    present = np.asarray(present).astype(bool)
    known = np.ones_like(present) if known is None else np.asarray(known, dtype=bool)
    return [average_precision(scores[known[:, c], c], present[known[:, c], c]) for c in range(scores.shape[1])]


def mean_average_precision(aps) -> float | None:
    """The mean of the classes' APs that are defined (a class without a positive has none), or None."""
    vals = [a for a in aps if a is not None]
    return float(np.mean(vals)) if vals else None


# ---- multi-label: a set of classes per case (SPEC 17) -------------------------------------------------

def predicted_sets(probs, thresholds) -> np.ndarray:
    """(n, K) bool: class c is predicted for a case when its probability is at or above thresholds[c]."""
    probs = np.asarray(probs, dtype=np.float64)
    return probs >= np.asarray(thresholds, dtype=np.float64).reshape(1, -1)


def class_sets(present, names) -> list:
    """The ';'-joined names of the classes of each row of present (n, K) bool ('' for none)."""
    return [";".join(names[c] for c in np.flatnonzero(row)) for row in np.asarray(present, dtype=bool)]


def _cardinality(sets) -> dict:
    """How many cases hold 0, 1 and 2 or more classes; sets: (n, K) bool."""
    per = np.asarray(sets, dtype=bool).sum(axis=1)
    return {"0": int((per == 0).sum()), "1": int((per == 1).sum()), "2+": int((per >= 2).sum())}


def prf(tp: int, fp: int, fn: int, undefined=0.0) -> tuple:
    """(precision, recall, F1) of tp, fp, fn counts. A ratio with nothing to count (no detection, no
    positive) is `undefined`: 0.0 for predict's report, None for evaluate (no detection is not a precision
    of 0); F1 is then `undefined` too, and 0.0 where precision and recall are both 0."""
    precision = tp / (tp + fp) if tp + fp else undefined
    recall = tp / (tp + fn) if tp + fn else undefined
    if precision is None or recall is None:
        return precision, recall, None
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def multilabel_report(probs, present, known, label_names, thresholds) -> dict:
    """What `predict --report` shows for a multi-label network, as a JSON-ready dict.

    probs: (n, K) per-class probabilities (logistic outputs); present: (n, K) 0/1 true targets; known: (n, K)
    bool, the entries that count (unknown ones are left out of every figure); thresholds: K probabilities.
    Keys: multi_label (true), cases, labels, thresholds {name: t}, per_class {name: {average_precision,
    roc_auc, precision, recall, f1 (at the threshold), support (cases where present), negatives, unknown}},
    macro_map (mean of the per-class APs that are defined), micro_map (the AP of every known entry ranked as
    one list), micro {precision, recall, f1} at the thresholds, exact_match (cases whose predicted set is the
    true set, over the cases with no unknown entry), cardinality {true, predicted: {"0", "1", "2+": cases}}
    (true counts the present classes; predicted, the classes at or above their threshold), unknown_entries.
    An AP or ROC AUC that is undefined (no positive, or one kind of target only) is null."""
    probs = np.asarray(probs, dtype=np.float64)
    n, k = probs.shape if probs.ndim == 2 else (0, len(label_names))
    names = [str(s) for s in label_names]
    if len(names) != k:
        raise ValueError(f"{len(names)} label names for {k} classes")
    present = np.asarray(present).astype(bool).reshape(n, k)
    known = np.asarray(known, dtype=bool).reshape(n, k)
    thr = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    pred = predicted_sets(probs, thr)
    aps = per_class_average_precision(probs, present, known)
    per_class, tps, fps, fns = {}, 0, 0, 0
    for c in range(k):
        m = known[:, c]
        y, p, s = present[m, c], pred[m, c], probs[m, c]
        tp, fp, fn = int((p & y).sum()), int((p & ~y).sum()), int((~p & y).sum())
        tps, fps, fns = tps + tp, fps + fp, fns + fn
        precision, recall, f1 = prf(tp, fp, fn)
        try:
            auc = roc_auc(s, y.astype(np.int64))
        except ValueError:
            auc = None
        per_class[names[c]] = {"average_precision": aps[c], "roc_auc": auc, "threshold": float(thr[c]),
                               "precision": precision, "recall": recall, "f1": f1, "support": int(y.sum()),
                               "negatives": int((~y).sum()), "unknown": int((~m).sum())}
    precision, recall, f1 = prf(tps, fps, fns)
    full = known.all(axis=1)
    return {
        "multi_label": True,
        "cases": int(n),
        "labels": names,
        "thresholds": {names[c]: float(thr[c]) for c in range(k)},
        "per_class": per_class,
        "macro_map": mean_average_precision(aps),
        "micro_map": average_precision(probs[known], present[known]),
        "micro": {"precision": precision, "recall": recall, "f1": f1},
        "exact_match": float(np.mean((pred[full] == present[full]).all(axis=1))) if full.any() else None,
        "cardinality": {"true": _cardinality(present & known), "predicted": _cardinality(pred)},
        "unknown_entries": int((~known).sum()),
    }


def format_multilabel_report(report: dict) -> str:
    """A readable text table of a multilabel_report dict."""
    def num(v, width):
        return ("n/a" if v is None else f"{v:.4f}").rjust(width)

    names = list(report["labels"])
    width = max([5] + [len(n) for n in names])
    lines = [f"cases       {report['cases']}",
             f"macro mAP   {num(report['macro_map'], 0)}",
             f"micro mAP   {num(report['micro_map'], 0)}",
             "",
             f"{'class'.ljust(width)}  AP      ROC AUC  thresh  precision  recall  f1      support  unknown"]
    for name in names:
        r = report["per_class"][name]
        lines.append(f"{name.ljust(width)}  {num(r['average_precision'], 6)}  {num(r['roc_auc'], 7)}  "
                     f"{r['threshold']:6.3f}  {r['precision']:9.4f}  {r['recall']:6.4f}  {r['f1']:6.4f}  "
                     f"{r['support']:7d}  {r['unknown']:7d}")
    m = report["micro"]
    lines.append(f"{'micro'.ljust(width)}  {'':6}  {'':7}  {'':6}  {m['precision']:9.4f}  {m['recall']:6.4f}  "
                 f"{m['f1']:6.4f}")
    lines.append("")
    exact = report["exact_match"]
    lines.append(f"exact set match  {'n/a' if exact is None else format(exact, '.4f')} (cases without unknown entries)")
    for which in ("true", "predicted"):
        c = report["cardinality"][which]
        lines.append(f"cases with 0 / 1 / 2+ classes ({which}): {c['0']} / {c['1']} / {c['2+']}")
    lines.append(f"unknown entries (left out): {report['unknown_entries']}")
    return "\n".join(lines)


# ---- a proportion with its confidence interval ------------------------------------------------------

Z_95 = 1.959963984540054   # the standard normal's 97.5% quantile: a two-sided 95% interval


def wilson_interval(successes: int, n: int, z: float = Z_95):
    """The Wilson score interval (Wilson, 1927) of a proportion successes/n: (low, high), or None for n = 0.

    (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n), p = successes/n. Unlike p ± z·sqrt(p(1-p)/n) it stays
    inside [0, 1] and is not of zero width at 0/n or n/n, which is what a reviewed sample of 20 often is."""
    if n <= 0:
        return None
    p = successes / n
    zz = z * z
    denom = 1.0 + zz / n
    center = (p + zz / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + zz / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


# ---- the test's ranking metrics, collected minibatch by minibatch (train's test records, --best-by) --------

class _Collected:
    """What the test's minibatches added (`parts`), for a data-parallel run to gather over its processes."""

    def __init__(self):
        self.parts = []


class RocScores(_Collected):
    """The ROC AUC of the second class's score over the test cases of two classes: add(scores (n, K),
    labels (n,) int, -1 unknown) per minibatch, then metrics() -> {'auc': AUC or None}."""

    def add(self, scores, labels) -> None:
        p = np.asarray(scores, dtype=np.float64)
        p = p.reshape(p.shape[0], -1)
        self.parts.append((p[:, 1] if p.shape[1] >= 2 else p[:, 0],
                           np.asarray(labels).reshape(-1).astype(np.int64)))

    def auc(self):
        """None when the cases seen hold one class only."""
        if not self.parts:
            return None
        s = np.concatenate([p[0] for p in self.parts])
        y = np.concatenate([p[1] for p in self.parts])
        keep = y >= 0
        y, s = y[keep], s[keep]
        if y.size == 0 or np.unique(y).size < 2:
            return None
        return float(roc_auc(s, y))

    def metrics(self) -> dict:
        return {"auc": self.auc()}


class ClassAPScores(_Collected):
    """Each class's average precision over the test cases whose entry for it is known, and their mean:
    add(scores (n, K), targets (n, K) 1 present / 0 absent / -1 unknown), then metrics() -> {'map': mean AP,
    'ap': {class: AP or None}}."""

    def __init__(self, label_names):
        super().__init__()
        self.label_names = [str(n) for n in label_names]

    def add(self, scores, targets) -> None:
        p = np.asarray(scores, dtype=np.float64)
        p = p.reshape(p.shape[0], -1)
        self.parts.append((p, np.asarray(targets, dtype=np.float64).reshape(p.shape[0], -1)))

    def per_class_ap(self) -> list:
        """[AP or None] per class (None: no positive among the known test entries)."""
        if not self.parts:
            return [None] * len(self.label_names)
        s = np.concatenate([p[0] for p in self.parts])
        t = np.concatenate([p[1] for p in self.parts])
        return per_class_average_precision(s, t > 0.5, t >= 0)

    def metrics(self) -> dict:
        aps = self.per_class_ap()
        return {"map": mean_average_precision(aps), "ap": dict(zip(self.label_names, aps))}
