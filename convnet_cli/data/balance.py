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
    n = labels.shape[0]
    classes = np.unique(labels[labels >= 0])
    k = classes.size
    if k == 0:
        return rng.permutation(n)
    counts = np.full(k, n // k, dtype=np.int64)
    counts[rng.choice(k, size=n % k, replace=False)] += 1
    parts = []
    for c, count in zip(classes, counts):
        idx = np.flatnonzero(labels == c)
        cycles = -(-int(count) // idx.size)
        parts.append(np.concatenate([rng.permutation(idx) for _ in range(cycles)])[:count])
    return rng.permutation(np.concatenate(parts)).astype(np.int64)


def class_counts(labels, num_classes: int) -> np.ndarray:
    """How often each class 0..num_classes-1 occurs in labels (for the summary line and the tests)."""
    labels = np.asarray(labels).reshape(-1)
    return np.bincount(labels[labels >= 0].astype(np.int64), minlength=num_classes)
