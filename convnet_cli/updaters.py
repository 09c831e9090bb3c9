"""Weight updates: sgd (cuda-convnet's rule), adam, rmsprop, adagrad, adadelta; clipping.

Each updater is one `UpdateRule` class, registered by name in `UPDATERS` with `@register_updater` (Chainer's
UpdateRule is the model). The class owns everything about it:
  lr, mom          its learning rate and momentum (beta1 for adam) when the params file gives none;
  hyperparams      its other settings (beta2, epsilon, rho) and their defaults; the params file accepts
                   exactly these keys besides the common ones (config/layer_params.py reads them here);
  update_cpu       the NumPy update: `update_cpu(w, g, state, lr, mom, wc, spec)` changes `w` in place and
                   keeps what it carries between steps in the dict `state` (arrays named as in checkpoints:
                   `<layer>/<param>/<state name>`);
  update_gpu       its CUDA twin: one fused element-wise kernel (sources in `kernels`), the same formulas in
                   the same order of operations, and the same state arrays.
Calling a rule, `UPDATERS[name](w, g, state, lr, mom, wc, spec)`, picks the twin that fits `w`.

The formulas match torch.optim's (tested for parity), with cuda-convnet's sgd written as it wrote it:
inc = mom*inc - lr*(g + wc*w);  w += inc. Weight decay `wc` is L2 added to the gradient for every updater
(torch's `weight_decay`). Adam's step counter stays on the device (the bias corrections are computed in the
kernel), so an update never waits for the GPU.
"""
from __future__ import annotations

import math
from typing import ClassVar

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


def _running_mean(avg, rho, value):
    """avg = rho * avg + (1 - rho) * value, in place: the decaying averages of rmsprop and adadelta."""
    avg *= rho
    avg += (1 - rho) * value
    return avg


def _is_cupy(a) -> bool:
    return type(a).__module__.startswith("cupy")


def _grad_like(g, w):
    return g if g.dtype == w.dtype else g.astype(w.dtype)


# CUDA kernels: one thread per weight. Scalars arrive as T (what numpy's float32 arithmetic does with a Python
# float: it rounds the scalar to float32 first), except where numpy computes in Python doubles first (1 - b1,
# lr / bc1), which the kernels do in double too before rounding. `decay` is 0 or 1 (wc given or not).
_DECAY = "const T gg = decay ? g + wc * w : g;"


class UpdateRule:
    """One updater. Subclass it, set the class attributes, write `update_cpu` and `update_gpu`, register it."""

    name: ClassVar[str] = ""
    lr: ClassVar[float] = 0.01
    mom: ClassVar[float] = 0.0
    hyperparams: ClassVar[dict] = {}  # setting -> default (None: none, the rule decides)
    kernels: ClassVar[dict] = {}      # kernel name -> (in_params, out_params, body) for update_gpu

    def __call__(self, w, g, state, lr, mom, wc, spec):
        if _is_cupy(w):
            return self.update_gpu(w, g, state, lr, mom, wc, spec)
        return self.update_cpu(w, g, state, lr, mom, wc, spec)

    def hyper(self, spec, key):
        """The value of setting `key` for this layer: the params file's, else this rule's default."""
        value = getattr(spec, key, None)
        return self.hyperparams[key] if value is None else value

    def kernel(self, name: str):
        return cuda_elementwise(self.kernels, name, prefix="convnet_update_")

    def update_cpu(self, w, g, state, lr, mom, wc, spec):
        raise NotImplementedError

    def update_gpu(self, w, g, state, lr, mom, wc, spec):
        raise NotImplementedError(f"updater {self.name} has no CUDA twin")


UPDATERS: dict = {}  # name -> UpdateRule instance, in registration order


def register_updater(cls):
    """Class decorator: make an UpdateRule available to the params file's `updater` key under `cls.name`."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no name")
    UPDATERS[cls.name] = cls()
    return cls


def hyperparam_keys() -> tuple:
    """Every updater setting a params file may give (beta2, epsilon, rho), in registration order."""
    keys = {}
    for rule in UPDATERS.values():
        keys.update(dict.fromkeys(rule.hyperparams))
    return tuple(keys)


@register_updater
class SGD(UpdateRule):
    """cuda-convnet's rule: inc = mom*inc - lr*(g + wc*w); w += inc."""

    name = "sgd"
    lr = 0.01
    mom = 0.9
    kernels = {"sgd": (
        "T g, T lr, T mom, T wc, int32 decay",
        "T w, T inc",
        _DECAY + """
        T ic = inc * mom;
        ic = ic - lr * gg;
        inc = ic;
        w = w + ic;
        """,
    )}

    def update_cpu(self, w, g, state, lr, mom, wc, spec):
        inc = _zeros(state, "inc", w)
        inc *= mom
        inc -= lr * _with_decay(w, g, wc)
        w += inc

    def update_gpu(self, w, g, state, lr, mom, wc, spec):
        inc = _zeros(state, "inc", w)
        self.kernel("sgd")(_grad_like(g, w), float(lr), float(mom), float(wc or 0), int(bool(wc)), w, inc)


@register_updater
class Adam(UpdateRule):
    """torch.optim.Adam; `mom` is beta1."""

    name = "adam"
    lr = 0.001
    mom = 0.9
    hyperparams = {"beta2": 0.999, "epsilon": 1e-8}
    kernels = {"adam": (
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
    )}

    def update_cpu(self, w, g, state, lr, mom, wc, spec):
        xp = get_array_module(w)
        g = _with_decay(w, g, wc)
        m = _zeros(state, "m", w)
        v = _zeros(state, "v", w)
        t = _step(state, w)
        b1, b2 = mom, self.hyper(spec, "beta2")
        eps = self.hyper(spec, "epsilon")
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * (g * g)
        bc1 = 1 - b1 ** t
        bc2 = 1 - b2 ** t
        w -= (lr / bc1) * m / (xp.sqrt(v) / math.sqrt(bc2) + eps)

    def update_gpu(self, w, g, state, lr, mom, wc, spec):
        """The step counter is incremented and read on the device."""
        import cupy

        m = _zeros(state, "m", w)
        v = _zeros(state, "v", w)
        if "step" not in state:
            state["step"] = cupy.zeros((1,), dtype=cupy.float32)
        state["step"] += 1
        step = state["step"].astype(cupy.float32, copy=False)
        self.kernel("adam")(_grad_like(g, w), step, float(lr), float(mom), float(self.hyper(spec, "beta2")),
                            float(self.hyper(spec, "epsilon")), float(wc or 0), int(bool(wc)), w, m, v)


@register_updater
class RMSprop(UpdateRule):
    """torch.optim.RMSprop; `rho` is its alpha; the momentum buffer only when mom is set."""

    name = "rmsprop"
    lr = 0.001
    mom = 0.0
    hyperparams = {"rho": 0.99, "epsilon": 1e-8}
    kernels = {
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
    }

    def update_cpu(self, w, g, state, lr, mom, wc, spec):
        xp = get_array_module(w)
        g = _with_decay(w, g, wc)
        rho = self.hyper(spec, "rho")
        eps = self.hyper(spec, "epsilon")
        sq = _running_mean(_zeros(state, "square_avg", w), rho, g * g)
        scaled = g / (xp.sqrt(sq) + eps)
        if mom:
            buf = _zeros(state, "momentum", w)
            buf *= mom
            buf += scaled
            scaled = buf
        w -= lr * scaled

    def update_gpu(self, w, g, state, lr, mom, wc, spec):
        rho = self.hyper(spec, "rho")
        eps = self.hyper(spec, "epsilon")
        sq = _zeros(state, "square_avg", w)
        g = _grad_like(g, w)
        if mom:
            buf = _zeros(state, "momentum", w)
            self.kernel("rmsprop_momentum")(g, float(lr), float(rho), float(eps), float(mom), float(wc or 0),
                                            int(bool(wc)), w, sq, buf)
        else:
            self.kernel("rmsprop")(g, float(lr), float(rho), float(eps), float(wc or 0), int(bool(wc)), w, sq)


@register_updater
class Adagrad(UpdateRule):
    """torch.optim.Adagrad."""

    name = "adagrad"
    lr = 0.01
    mom = 0.0
    hyperparams = {"epsilon": 1e-10}
    kernels = {"adagrad": (
        "T g, T lr, T eps, T wc, int32 decay",
        "T w, T acc",
        _DECAY + """
        const T a = acc + gg * gg;
        acc = a;
        w = w - lr * gg / (sqrt(a) + eps);
        """,
    )}

    def update_cpu(self, w, g, state, lr, mom, wc, spec):
        xp = get_array_module(w)
        g = _with_decay(w, g, wc)
        eps = self.hyper(spec, "epsilon")
        acc = _zeros(state, "sum", w)
        acc += g * g
        w -= lr * g / (xp.sqrt(acc) + eps)

    def update_gpu(self, w, g, state, lr, mom, wc, spec):
        acc = _zeros(state, "sum", w)
        self.kernel("adagrad")(_grad_like(g, w), float(lr), float(self.hyper(spec, "epsilon")), float(wc or 0),
                               int(bool(wc)), w, acc)


@register_updater
class Adadelta(UpdateRule):
    """torch.optim.Adadelta."""

    name = "adadelta"
    lr = 1.0
    mom = 0.0
    hyperparams = {"rho": 0.9, "epsilon": 1e-6}
    kernels = {"adadelta": (
        "T g, T lr, float64 rho, T eps, T wc, int32 decay",
        "T w, T sq, T acc_delta",
        _DECAY + """
        const T q = sq * (T)rho + (T)(1.0 - rho) * (gg * gg);
        sq = q;
        const T delta = sqrt(acc_delta + eps) / sqrt(q + eps) * gg;
        acc_delta = acc_delta * (T)rho + (T)(1.0 - rho) * (delta * delta);
        w = w - lr * delta;
        """,
    )}

    def update_cpu(self, w, g, state, lr, mom, wc, spec):
        xp = get_array_module(w)
        g = _with_decay(w, g, wc)
        rho = self.hyper(spec, "rho")
        eps = self.hyper(spec, "epsilon")
        sq = _running_mean(_zeros(state, "square_avg", w), rho, g * g)
        acc_delta = _zeros(state, "acc_delta", w)
        delta = xp.sqrt(acc_delta + eps) / xp.sqrt(sq + eps) * g
        _running_mean(acc_delta, rho, delta * delta)
        w -= lr * delta

    def update_gpu(self, w, g, state, lr, mom, wc, spec):
        sq = _zeros(state, "square_avg", w)
        acc_delta = _zeros(state, "acc_delta", w)
        self.kernel("adadelta")(_grad_like(g, w), float(lr), float(self.hyper(spec, "rho")),
                                float(self.hyper(spec, "epsilon")), float(wc or 0), int(bool(wc)), w, sq, acc_delta)


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
    rule = UPDATERS[spec.updater]
    grads = clip_gradients(grads, spec.clip, spec.clipNorm)
    rates = {}
    for name, g in grads.items():
        schedule, mom, wc = spec.for_param(name)
        lr = schedule(progress, epoch)
        rule(params[name], g, states.setdefault(name, {}), lr, mom, wc, spec)
        rates[name] = lr
    return rates
