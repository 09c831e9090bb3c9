"""Training-time augmentations, registered by name: the one list `--augment` is checked against, and the one
parser of the flag (`parse_augment`).

Augmentations (train only, applied per case after normalisation, in the order of this registry, whatever
the order given on the command line):
- `timeshift`: circular roll along W by a uniform integer in [-m, m], m = max(1, round(0.1 W));
- `freqmask`: SpecAugment frequency mask — zero a band of f ~ U{0..F} rows (F = max(1, floor(0.15 H)))
  starting at a uniform row; zero is the mean after normalisation;
- `timemask`: the same along W (up to floor(0.15 W) columns);
- `mixup`: within each minibatch, case i becomes lam_i x_i + (1 - lam_i) x_p(i) for a random pairing p,
  lam_i = max(l, 1 - l), l ~ Beta(0.2, 0.2) (so the case keeps its own file name as the larger part);
  the targets mix the same way (multi-label targets too: a class unknown in either case is unknown in the
  mix).

An augmentation is a function `fn(x, y, rng, xp, ctx) -> (x, y)` registered with `@augmentation(name)`:
x is the (n, H, W, C) float32 batch on `xp` (numpy or cupy), y the host labels ((n,) ints, or (n, K) soft
targets once mixup ran), rng a numpy Generator on the host (the same draws on every device), ctx an
`AugmentContext`. The data provider calls `apply_augmentations` once per batch file.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from convnet_cli.errors import ConfigError, DataError, did_you_mean

MIXUP_ALPHA = 0.2
SHIFT_FRACTION = 0.1
MASK_FRACTION = 0.15


@dataclass(frozen=True)
class AugmentContext:
    mini: int         # minibatch size (mixup pairs cases within a minibatch)
    num_classes: int  # 0 for unlabeled batches
    source: str       # the batch folder, for error messages


@dataclass(frozen=True)
class Augmentation:
    name: str
    fn: object
    needs_labels: bool = False


AUGMENTATIONS: dict = {}  # name -> Augmentation, in the order they are applied


def augmentation(name: str, needs_labels: bool = False):
    """Decorator: register `fn(x, y, rng, xp, ctx) -> (x, y)` as the augmentation `name`."""

    def wrap(fn):
        AUGMENTATIONS[name] = Augmentation(name, fn, needs_labels)
        return fn

    return wrap


def parse_augment(augment) -> tuple:
    """'timeshift,mixup' or an iterable of names -> a tuple of checked names (ConfigError otherwise)."""
    if augment is None:
        return ()
    if isinstance(augment, str):
        augment = [a for a in (p.strip() for p in augment.split(",")) if a]
    names = []
    for a in augment:
        a = str(a).strip().lower()
        if not a:
            continue
        if a not in AUGMENTATIONS:
            raise ConfigError(f"--augment: unknown augmentation '{a}'{did_you_mean(a, AUGMENTATIONS)}; "
                              f"choose from {', '.join(AUGMENTATIONS)}")
        if a not in names:
            names.append(a)
    return tuple(names)


def check_labels(names, num_classes: int):
    """ConfigError when an augmentation that needs labels is asked for on unlabeled batches."""
    for name in names:
        if AUGMENTATIONS[name].needs_labels and num_classes == 0:
            raise ConfigError(f"--augment {name} needs labeled batches (batches.meta has no label_names)")


def apply_augmentations(names, x, y, rng, xp, ctx: AugmentContext):
    """Apply the augmentations in `names` to one batch, in registry order."""
    for name, aug in AUGMENTATIONS.items():
        if name in names:
            x, y = aug.fn(x, y, rng, xp, ctx)
    return x, y


def _band_keep(rng, n, size):
    """(n, size) float32: 0 on one random band per case of up to MASK_FRACTION * size, 1 elsewhere."""
    most = max(1, int(MASK_FRACTION * size))
    width = rng.integers(0, most + 1, size=n)
    start = rng.integers(0, size - width + 1)
    pos = np.arange(size)[None, :]
    return ~((pos >= start[:, None]) & (pos < (start + width)[:, None])) * np.float32(1)


@augmentation("timeshift")
def timeshift(x, y, rng, xp, ctx):
    n, h, w, _ = x.shape
    if w > 1:
        m = max(1, int(round(SHIFT_FRACTION * w)))
        shift = rng.integers(-m, m + 1, size=n)
        idx = (np.arange(w)[None, :] - shift[:, None]) % w                      # out[t] = in[t - shift]
        x = xp.take_along_axis(x, xp.asarray(idx[:, None, :, None]), axis=2)
    return x, y


@augmentation("freqmask")
def freqmask(x, y, rng, xp, ctx):
    n, h = x.shape[:2]
    x *= xp.asarray(_band_keep(rng, n, h)[:, :, None, None])
    return x, y


@augmentation("timemask")
def timemask(x, y, rng, xp, ctx):
    n, _, w, _ = x.shape
    x *= xp.asarray(_band_keep(rng, n, w)[:, None, :, None])
    return x, y


@augmentation("mixup", needs_labels=True)
def mixup(x, y, rng, xp, ctx):
    n = x.shape[0]
    if y.ndim == 2:  # multi-label targets (data/targets.py): 1 / 0 / -1 unknown
        onehot = np.asarray(y, np.float32)
    else:
        if y.size and y.min() < 0:
            raise DataError(f"{ctx.source}: mixup needs every case labeled, but some labels are -1")
        onehot = np.zeros((n, ctx.num_classes), np.float32)
        onehot[np.arange(n), y] = 1.0
    y = onehot.copy()
    unknown = (onehot < 0) if y.ndim == 2 and bool((onehot < 0).any()) else None
    for a in range(0, n, ctx.mini):
        b = min(n, a + ctx.mini)
        m = b - a
        pair = a + rng.permutation(m)
        lam = rng.beta(MIXUP_ALPHA, MIXUP_ALPHA, size=m).astype(np.float32)
        lam = np.maximum(lam, 1 - lam)
        lx = xp.asarray(lam)
        x[a:b] = lx[:, None, None, None] * x[a:b] + (1 - lx)[:, None, None, None] * x[xp.asarray(pair)]
        y[a:b] = lam[:, None] * onehot[a:b] + (1 - lam)[:, None] * onehot[pair]
        if unknown is not None:  # a class unknown in either case is unknown in the mix
            y[a:b][unknown[a:b] | unknown[pair]] = -1.0
    return x, y
