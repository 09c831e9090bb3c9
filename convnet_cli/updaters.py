"""Weight updates: sgd (cuda-convnet's rule), adam, rmsprop, adagrad, adadelta; clipping.

Each updater is a small function `update(w, g, state, lr, mom, wc, spec)` that changes `w` in place and
keeps what it carries between steps in the dict `state` (arrays named as in checkpoints:
`<layer>/<param>/<state name>`). The formulas match torch.optim's (tested for parity), with cuda-convnet's
sgd written as it wrote it:  inc = mom*inc - lr*(g + wc*w);  w += inc.
Weight decay `wc` is L2 added to the gradient for every updater (torch's `weight_decay`).

On CuPy each updater is one fused element-wise CUDA kernel (`<name>_cupy`, below the NumPy functions),
with the same formulas in the same order of operations, and the same state arrays. Adam's step counter
stays on the device (the bias corrections are computed in the kernel), so an update never waits for the GPU.
"""
from __future__ import annotations

import math

from convnet_cli.backend import cuda_elementwise, get_array_module


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


def _is_cupy(a) -> bool:
    return type(a).__module__.startswith("cupy")


def sgd(w, g, state, lr, mom, wc, spec):
    if _is_cupy(w):
        return sgd_cupy(w, g, state, lr, mom, wc, spec)
    inc = _zeros(state, "inc", w)
    inc *= mom
    inc -= lr * _with_decay(w, g, wc)
    w += inc


def adam(w, g, state, lr, mom, wc, spec):
    if _is_cupy(w):
        return adam_cupy(w, g, state, lr, mom, wc, spec)
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
    if _is_cupy(w):
        return rmsprop_cupy(w, g, state, lr, mom, wc, spec)
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
    if _is_cupy(w):
        return adagrad_cupy(w, g, state, lr, mom, wc, spec)
    xp = get_array_module(w)
    g = _with_decay(w, g, wc)
    eps = 1e-10 if spec.epsilon is None else spec.epsilon
    acc = _zeros(state, "sum", w)
    acc += g * g
    w -= lr * g / (xp.sqrt(acc) + eps)


def adadelta(w, g, state, lr, mom, wc, spec):
    if _is_cupy(w):
        return adadelta_cupy(w, g, state, lr, mom, wc, spec)
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


# == the CUDA twins ========================================================================================
# One thread per weight. Scalars arrive as T (what numpy's float32 arithmetic does with a Python float:
# it rounds the scalar to float32 first), except where numpy computes in Python doubles first (1 - b1,
# lr / bc1), which the kernels do in double too before rounding. `decay` is 0 or 1 (wc given or not).
_DECAY = "const T gg = decay ? g + wc * w : g;"
_CUDA_SOURCES = {
    "sgd": (
        "T g, T lr, T mom, T wc, int32 decay",
        "T w, T inc",
        _DECAY + """
        T ic = inc * mom;
        ic = ic - lr * gg;
        inc = ic;
        w = w + ic;
        """,
    ),
    "adam": (
        "T g, raw float32 step, float64 lr, float64 b1, float64 b2, T eps, T wc, int32 decay",
        "T w, T m, T v",
        _DECAY + """
        const double t = (double)step[0];
        const T a = (T)(lr / (1.0 - pow(b1, t)));
        const T s = (T)sqrt(1.0 - pow(b2, t));
        const T mm = m * (T)b1 + (T)(1.0 - b1) * gg;
        const T vv = v * (T)b2 + (T)(1.0 - b2) * (gg * gg);
        m = mm;
        v = vv;
        w = w - a * mm / (sqrt(vv) / s + eps);
        """,
    ),
    "rmsprop": (
        "T g, T lr, float64 rho, T eps, T wc, int32 decay",
        "T w, T sq",
        _DECAY + """
        const T q = sq * (T)rho + (T)(1.0 - rho) * (gg * gg);
        sq = q;
        w = w - lr * (gg / (sqrt(q) + eps));
        """,
    ),
    "rmsprop_momentum": (
        "T g, T lr, float64 rho, T eps, T mom, T wc, int32 decay",
        "T w, T sq, T buf",
        _DECAY + """
        const T q = sq * (T)rho + (T)(1.0 - rho) * (gg * gg);
        sq = q;
        const T b = buf * mom + gg / (sqrt(q) + eps);
        buf = b;
        w = w - lr * b;
        """,
    ),
    "adagrad": (
        "T g, T lr, T eps, T wc, int32 decay",
        "T w, T acc",
        _DECAY + """
        const T a = acc + gg * gg;
        acc = a;
        w = w - lr * gg / (sqrt(a) + eps);
        """,
    ),
    "adadelta": (
        "T g, T lr, float64 rho, T eps, T wc, int32 decay",
        "T w, T sq, T acc_delta",
        _DECAY + """
        const T q = sq * (T)rho + (T)(1.0 - rho) * (gg * gg);
        sq = q;
        const T delta = sqrt(acc_delta + eps) / sqrt(q + eps) * gg;
        acc_delta = acc_delta * (T)rho + (T)(1.0 - rho) * (delta * delta);
        w = w - lr * delta;
        """,
    ),
}


def _cuda_kernel(name: str):
    return cuda_elementwise(_CUDA_SOURCES, name, prefix="convnet_update_")


def _grad_like(g, w):
    return g if g.dtype == w.dtype else g.astype(w.dtype)


def sgd_cupy(w, g, state, lr, mom, wc, spec):
    """CUDA twin of sgd: inc = mom*inc - lr*(g + wc*w); w += inc."""
    inc = _zeros(state, "inc", w)
    _cuda_kernel("sgd")(_grad_like(g, w), float(lr), float(mom), float(wc or 0), int(bool(wc)), w, inc)


def adam_cupy(w, g, state, lr, mom, wc, spec):
    """CUDA twin of adam; the step counter is incremented and read on the device."""
    import cupy

    m = _zeros(state, "m", w)
    v = _zeros(state, "v", w)
    if "step" not in state:
        state["step"] = cupy.zeros((1,), dtype=cupy.float32)
    state["step"] += 1
    step = state["step"].astype(cupy.float32, copy=False)
    eps = 1e-8 if spec.epsilon is None else spec.epsilon
    _cuda_kernel("adam")(_grad_like(g, w), step, float(lr), float(mom), float(spec.beta2), float(eps),
                         float(wc or 0), int(bool(wc)), w, m, v)


def rmsprop_cupy(w, g, state, lr, mom, wc, spec):
    """CUDA twin of rmsprop (the momentum buffer only when mom is set, as there)."""
    rho = 0.99 if spec.rho is None else spec.rho
    eps = 1e-8 if spec.epsilon is None else spec.epsilon
    sq = _zeros(state, "square_avg", w)
    g = _grad_like(g, w)
    if mom:
        buf = _zeros(state, "momentum", w)
        _cuda_kernel("rmsprop_momentum")(g, float(lr), float(rho), float(eps), float(mom), float(wc or 0),
                                         int(bool(wc)), w, sq, buf)
    else:
        _cuda_kernel("rmsprop")(g, float(lr), float(rho), float(eps), float(wc or 0), int(bool(wc)), w, sq)


def adagrad_cupy(w, g, state, lr, mom, wc, spec):
    """CUDA twin of adagrad."""
    eps = 1e-10 if spec.epsilon is None else spec.epsilon
    acc = _zeros(state, "sum", w)
    _cuda_kernel("adagrad")(_grad_like(g, w), float(lr), float(eps), float(wc or 0), int(bool(wc)), w, acc)


def adadelta_cupy(w, g, state, lr, mom, wc, spec):
    """CUDA twin of adadelta."""
    rho = 0.9 if spec.rho is None else spec.rho
    eps = 1e-6 if spec.epsilon is None else spec.epsilon
    sq = _zeros(state, "square_avg", w)
    acc_delta = _zeros(state, "acc_delta", w)
    _cuda_kernel("adadelta")(_grad_like(g, w), float(lr), float(rho), float(eps), float(wc or 0), int(bool(wc)),
                             w, sq, acc_delta)


UPDATERS = {"sgd": sgd, "adam": adam, "rmsprop": rmsprop, "adagrad": adagrad, "adadelta": adadelta}


def clip_gradients(grads: dict, clip: float | None, clip_norm: float | None) -> dict:
    """Clip each element to +-clip, then rescale the layer's gradients jointly to norm <= clip_norm."""
    if clip:
        xp = get_array_module(*grads.values())
        grads = {k: xp.clip(g, -clip, clip) for k, g in grads.items()}
    if clip_norm:
        xp = get_array_module(*grads.values())
        if _is_cupy(next(iter(grads.values()), None)):
            return _clip_norm_on_device(grads, clip_norm, xp)
        total = math.sqrt(sum(float((g * g).sum()) for g in grads.values()))
        if total > clip_norm:
            scale = clip_norm / (total + 1e-12)
            grads = {k: g * scale for k, g in grads.items()}
    return grads


def _clip_norm_on_device(grads: dict, clip_norm: float, xp) -> dict:
    """clip_gradients' norm rule without bringing the norm to the host (no wait for the GPU): the scale is
    a device scalar, exactly 1 when the norm is within bounds."""
    total = xp.sqrt(sum((g.astype(xp.float64) ** 2).sum() for g in grads.values()))
    scale = xp.where(total > clip_norm, clip_norm / (total + 1e-12), 1.0)
    return {k: g * scale.astype(g.dtype) for k, g in grads.items()}


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
