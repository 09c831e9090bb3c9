"""`train --balance`: the order in which a training batch file's cases are served, drawn so that every
class present in the file is seen equally often.

Each batch file keeps its number of cases per epoch; those n slots are dealt equally over the classes
present (the n mod k extra slots go to classes drawn at random), and each class fills its slots by going
through its cases in a shuffled cycle: every case of a class is served once before any is served again. So
a minority class is oversampled (its cases repeat within an epoch) and a majority class undersampled (a
different part of it each epoch). make-batches deals every class into every batch file, so balancing each
file balances the epoch, and memory stays one batch file. The draw comes from the generator of
(seed, epoch, batch), as the plain shuffle does, which keeps a resumed run exact.
"""
from __future__ import annotations

import numpy as np


def balanced_order(labels, rng) -> np.ndarray:
    """labels: (n,) int (cases of unknown class, -1, are never served) -> (n,) int64 indices into labels,
    each class present drawn n // k or n // k + 1 times, in shuffled order. rng: a numpy Generator."""
    labels = np.asarray(labels).reshape(-1)
    classes = np.unique(labels[labels >= 0])
    return _deal_slots([np.flatnonzero(labels == c) for c in classes], labels.shape[0], rng)


def multilabel_balanced_order(present, rng) -> np.ndarray:
    """present: (n, K) bool (multi-label targets, unknown entries False) -> (n,) int64 indices into the
    cases: the n slots are dealt equally over the groups found in the file (each class present in some
    case, and "no class" when some case holds none), and each group fills its slots by going through its
    cases in a shuffled cycle, as balanced_order does for single labels. A case holding several classes
    belongs to each of their groups, so a class that often co-occurs is seen a little more than 1/k."""
    present = np.asarray(present, dtype=bool)
    groups = [np.flatnonzero(present[:, c]) for c in range(present.shape[1]) if present[:, c].any()]
    empty = np.flatnonzero(~present.any(axis=1))
    if empty.size:
        groups.append(empty)
    return _deal_slots(groups, present.shape[0], rng)


def _deal_slots(groups, n: int, rng) -> np.ndarray:
    """n slots dealt equally over `groups` (index arrays; the n mod k extra slots to groups drawn at random),
    each group filling its slots from a shuffled cycle of its cases; the slots shuffled."""
    k = len(groups)
    if k == 0:
        return rng.permutation(n)
    counts = np.full(k, n // k, dtype=np.int64)
    counts[rng.choice(k, size=n % k, replace=False)] += 1
    parts = []
    for idx, count in zip(groups, counts):
        cycles = -(-int(count) // idx.size)
        parts.append(np.concatenate([rng.permutation(idx) for _ in range(cycles)])[:count])
    return rng.permutation(np.concatenate(parts)).astype(np.int64)


def class_counts(labels, num_classes: int) -> np.ndarray:
    """How often each class 0..num_classes-1 occurs in labels (for the summary line and the tests)."""
    labels = np.asarray(labels).reshape(-1)
    return np.bincount(labels[labels >= 0].astype(np.int64), minlength=num_classes)
