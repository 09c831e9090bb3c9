"""Weight initializers shared by conv, local, fc and the recurrent layers (the `init` key).

`init_weights(rng, kind, shape, fan_in, fan_out, scale)` -> float32 numpy array of `shape`, drawn on the
host from the numpy Generator `rng`; `scale` is the layer's `initW`.

    gaussian        N(0, initW^2)                      cuda-convnet's default
    uniform         U(-initW, initW)
    glorot_uniform  U(-a, a), a = sqrt(6 / (fan_in + fan_out))          (initW not used)
    glorot_normal   N(0, 2 / (fan_in + fan_out))                        (initW not used)
    kaiming_normal  N(0, 2 / fan_in)                                    (initW not used)
    kaiming_uniform U(-a, a), a = sqrt(6 / fan_in)                      (initW not used)
    lecun_normal    N(0, 1 / fan_in)                                    (initW not used)
    lecun_uniform   U(-a, a), a = sqrt(3 / fan_in)                      (initW not used)
    pytorch         U(-a, a), a = 1 / sqrt(fan_in): torch.nn.Conv2d's and Linear's default (their
                    kaiming_uniform_ with a = sqrt(5)); the biases too (see init_biases), initB not used
    orthogonal      a (semi-)orthogonal matrix from the QR decomposition of a gaussian one, the array
                    seen as shape[0] x prod(shape[1:]); times a gain: initW when the user set one, 1 when
                    initW is left at its default 0.01 (an orthogonal matrix scaled by 0.01 would make a
                    recurrent net forget its state at once, which is never what `orthogonal` is asked for)
    constant        every element = initW
"""
from __future__ import annotations

import math

import numpy as np

INIT_KINDS = ("gaussian", "uniform", "glorot_uniform", "glorot_normal", "kaiming_normal", "kaiming_uniform",
              "lecun_normal", "lecun_uniform", "pytorch", "orthogonal", "constant")
DEFAULT_INIT_W = 0.01


def orthogonal(rng, shape, gain: float = 1.0) -> np.ndarray:
    """A (semi-)orthogonal array: rows orthonormal when shape[0] <= prod(shape[1:]), else columns."""
    rows = shape[0] if len(shape) else 1
    cols = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    a = rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    # Sign fix makes the distribution uniform over orthogonal matrices (Mezzadri 2007).
    q *= np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    return (gain * q).reshape(shape).astype(np.float32)


def init_weights(rng, kind: str, shape, fan_in: int, fan_out: int, scale: float = DEFAULT_INIT_W) -> np.ndarray:
    """Initial weights of `shape` (float32 numpy). kind: one of INIT_KINDS; scale: initW."""
    shape = tuple(int(s) for s in shape)
    fan_in = max(int(fan_in), 1)
    fan_out = max(int(fan_out), 1)
    if kind == "gaussian":
        w = rng.standard_normal(shape) * scale
    elif kind == "uniform":
        w = rng.uniform(-scale, scale, shape)
    elif kind == "glorot_uniform":
        a = math.sqrt(6.0 / (fan_in + fan_out))
        w = rng.uniform(-a, a, shape)
    elif kind == "glorot_normal":
        w = rng.standard_normal(shape) * math.sqrt(2.0 / (fan_in + fan_out))
    elif kind == "kaiming_normal":
        w = rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)
    elif kind == "kaiming_uniform":
        a = math.sqrt(6.0 / fan_in)
        w = rng.uniform(-a, a, shape)
    elif kind == "lecun_normal":
        w = rng.standard_normal(shape) * math.sqrt(1.0 / fan_in)
    elif kind == "lecun_uniform":
        a = math.sqrt(3.0 / fan_in)
        w = rng.uniform(-a, a, shape)
    elif kind == "pytorch":
        a = 1.0 / math.sqrt(fan_in)
        w = rng.uniform(-a, a, shape)
    elif kind == "orthogonal":
        return orthogonal(rng, shape, 1.0 if scale == DEFAULT_INIT_W else scale)
    elif kind == "constant":
        w = np.full(shape, scale)
    else:
        raise ValueError(f"unknown init '{kind}'; choose one of {', '.join(INIT_KINDS)}")
    return np.asarray(w, dtype=np.float32)


def init_biases(rng, kind: str, shape, fan_in: int, init_b: float = 0.0) -> np.ndarray:
    """Initial biases of `shape` (float32 numpy): U(+-1/sqrt(fan_in)) for `pytorch` (as torch's Conv2d and
    Linear), else every element = initB."""
    shape = tuple(int(s) for s in shape)
    if kind == "pytorch":
        a = 1.0 / math.sqrt(max(int(fan_in), 1))
        return rng.uniform(-a, a, shape).astype(np.float32)
    return np.full(shape, init_b, dtype=np.float32)
