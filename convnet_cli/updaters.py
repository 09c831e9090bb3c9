"""Weight updates: sgd (cuda-convnet's rule), adam, rmsprop, adagrad, adadelta; clipping.

Each updater is a small function `update(w, g, state, lr, mom, wc, spec)` that changes `w` in place and
keeps what it carries between steps in the dict `state` (arrays named as in checkpoints:
`<layer>/<param>/<state name>`). The formulas match torch.optim's (tested for parity), with cuda-convnet's
sgd written as it wrote it:  inc = mom*inc - lr*(g + wc*w);  w += inc.
Weight decay `wc` is L2 added to the gradient for every updater (torch's `weight_decay`).
"""
from __future__ import annotations

import math

from convnet_cli.backend import get_array_module


def _zeros(state, key, w):
    if key not in state:
        state[key] = get_array_module(w).zeros_like(w)
    return state[key]


def _step(state, w):
    """Step counter kept as a 1-element array so checkpoints hold it like any other state."""
    xp = get_array_module(w)
    if "step" not in state:
        state["step"] = xp.zeros((1,), dtype=xp.float32)
    state["step"] += 1
    return int(state["step"][0])


def _with_decay(w, g, wc):
    return g + wc * w if wc else g


def sgd(w, g, state, lr, mom, wc, spec):
    inc = _zeros(state, "inc", w)
    inc *= mom
    inc -= lr * _with_decay(w, g, wc)
    w += inc


def adam(w, g, state, lr, mom, wc, spec):
    xp = get_array_module(w)
    g = _with_decay(w, g, wc)
    m = _zeros(state, "m", w)
    v = _zeros(state, "v", w)
    t = _step(state, w)
    b1, b2 = mom, spec.beta2
    eps = 1e-8 if spec.epsilon is None else spec.epsilon
    m *= b1
    m += (1 - b1) * g
    v *= b2
    v += (1 - b2) * (g * g)
    bc1 = 1 - b1 ** t
    bc2 = 1 - b2 ** t
    w -= (lr / bc1) * m / (xp.sqrt(v) / math.sqrt(bc2) + eps)


def rmsprop(w, g, state, lr, mom, wc, spec):
    xp = get_array_module(w)
    g = _with_decay(w, g, wc)
    rho = 0.99 if spec.rho is None else spec.rho
    eps = 1e-8 if spec.epsilon is None else spec.epsilon
    sq = _zeros(state, "square_avg", w)
    sq *= rho
    sq += (1 - rho) * (g * g)
    scaled = g / (xp.sqrt(sq) + eps)
    if mom:
        buf = _zeros(state, "momentum", w)
        buf *= mom
        buf += scaled
        scaled = buf
    w -= lr * scaled


def adagrad(w, g, state, lr, mom, wc, spec):
    xp = get_array_module(w)
    g = _with_decay(w, g, wc)
    eps = 1e-10 if spec.epsilon is None else spec.epsilon
    acc = _zeros(state, "sum", w)
    acc += g * g
    w -= lr * g / (xp.sqrt(acc) + eps)


def adadelta(w, g, state, lr, mom, wc, spec):
    xp = get_array_module(w)
    g = _with_decay(w, g, wc)
    rho = 0.9 if spec.rho is None else spec.rho
    eps = 1e-6 if spec.epsilon is None else spec.epsilon
    sq = _zeros(state, "square_avg", w)
    acc_delta = _zeros(state, "acc_delta", w)
    sq *= rho
    sq += (1 - rho) * (g * g)
    delta = xp.sqrt(acc_delta + eps) / xp.sqrt(sq + eps) * g
    acc_delta *= rho
    acc_delta += (1 - rho) * (delta * delta)
    w -= lr * delta


UPDATERS = {"sgd": sgd, "adam": adam, "rmsprop": rmsprop, "adagrad": adagrad, "adadelta": adadelta}


def clip_gradients(grads: dict, clip: float | None, clip_norm: float | None) -> dict:
    """Clip each element to +-clip, then rescale the layer's gradients jointly to norm <= clip_norm."""
    if clip:
        xp = get_array_module(*grads.values())
        grads = {k: xp.clip(g, -clip, clip) for k, g in grads.items()}
    if clip_norm:
        xp = get_array_module(*grads.values())
        total = math.sqrt(sum(float((g * g).sum()) for g in grads.values()))
        if total > clip_norm:
            scale = clip_norm / (total + 1e-12)
            grads = {k: g * scale for k, g in grads.items()}
    return grads


def update_layer(params: dict, grads: dict, states: dict, spec, progress: float, epoch: float) -> dict:
    """Apply one update to every learned parameter of a layer; returns {param: learning rate used}."""
    fn = UPDATERS[spec.updater]
    grads = clip_gradients(grads, spec.clip, spec.clipNorm)
    rates = {}
    for name, g in grads.items():
        schedule, mom, wc = spec.for_param(name)
        lr = schedule(progress, epoch)
        fn(params[name], g, states.setdefault(name, {}), lr, mom, wc, spec)
        rates[name] = lr
    return rates
