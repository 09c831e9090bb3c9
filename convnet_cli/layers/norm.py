"""Normalization layers: `rnorm`, `cmrnorm` (cuda-convnet's response normalizations) and `batchnorm`.

Response normalization, as cuda-convnet computes it (x: (N, H, W, C); the sum runs over a window of
`size` positions, clipped at the borders, i.e. zero padded):

    out = x * (minDiv + scale / n * sum(x^2 over the window)) ^ (-pow)

`rnorm` sums over a size x size spatial window within each channel (n = size*size); `cmrnorm` sums over
`size` neighbouring channels at each position (n = size). The division by n is cuda-convnet's and
cuda-convnet2's: their layer.py does `scale /= size if cross-map else size**2` before handing the value
to the kernels, so the `scale` a user copies from a cuda-convnet layers-params.cfg keeps its meaning here.
It is also what PyTorch's LocalResponseNorm does (`alpha / n`), so cmrnorm with k=minDiv, alpha=scale,
beta=pow, n=size is exactly torch.nn.LocalResponseNorm; the test suite checks it.

The window of output position i covers [i - size//2, i - size//2 + size - 1]: centered for odd sizes,
one more position before than after for even sizes, which is where both cuda-convnet's kernels
(`start = -size/2 + i`) and PyTorch (pad size//2 before, (size-1)//2 after) put it.
"""
from __future__ import annotations

import numpy as np  # host arrays for init_params only; compute takes ctx.xp

from convnet_cli.layers.base import Key, Layer, register


def _axis_slice(ndim: int, axis: int, start: int, stop: int) -> tuple:
    index = [slice(None)] * ndim
    index[axis] = slice(start, stop)
    return tuple(index)


def _window_sum(a, axis: int, before: int, after: int):
    """s[i] = sum of a[j] for j in [i - before, i + after] along `axis`, positions outside the array
    counting as zero. A loop over the (few) offsets of shifted slices: exact, and the same on CuPy."""
    s = a.copy()
    n = a.shape[axis]
    for d in range(-before, after + 1):
        if d == 0 or abs(d) >= n:
            continue
        if d > 0:  # s[i] += a[i + d]
            s[_axis_slice(a.ndim, axis, 0, n - d)] += a[_axis_slice(a.ndim, axis, d, n)]
        else:
            s[_axis_slice(a.ndim, axis, -d, n)] += a[_axis_slice(a.ndim, axis, 0, n + d)]
    return s


class _ResponseNorm(Layer):
    keys = {"size": Key("int", min=1, doc="width of the normalization window, e.g. 5")}
    hyper_keys = ("scale", "pow", "minDiv")
    hyper_defaults = {"scale": 0.0001, "pow": 0.75, "minDiv": 1.0}
    axes: tuple = ()  # activation axes the window runs along (NHWC)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.set_hyper({})

    def set_hyper(self, values: dict):
        merged = dict(self.hyper_defaults)
        merged.update({k: v for k, v in values.items() if v is not None})
        for k in self.hyper_keys:
            merged[k] = float(merged[k])
        if merged["scale"] < 0:
            raise self.error(f"scale {merged['scale']:g} must not be negative; set scale in the layer-params file "
                             f"(cuda-convnet's usual value is 0.0001)")
        if merged["minDiv"] <= 0:
            raise self.error(f"minDiv {merged['minDiv']:g} must be positive (the denominator's constant term); "
                             f"set minDiv in the layer-params file, e.g. 1 or 2")
        super().set_hyper(merged)

    @property
    def window_count(self) -> int:
        """n in scale / n: the number of positions a full window covers."""
        return self.props.size ** len(self.axes)

    def _sum(self, a, adjoint=False):
        size = self.props.size
        before, after = size // 2, size - 1 - size // 2
        if adjoint:  # the transpose of the window sum: each position gives to the windows that read it
            before, after = after, before
        for axis in self.axes:
            a = _window_sum(a, axis, before, after)
        return a

    def forward(self, xs, params, ctx):
        """x: (N, H, W, C) -> out of the same shape."""
        x = xs[0]
        h = self.hyper
        denom = h.minDiv + (h.scale / self.window_count) * self._sum(x * x)
        out = x * denom ** (-h.pow)
        return out, (x, denom, out)

    def backward(self, dout, cache, params, ctx):
        # out_i = x_i d_i^-p with d_i = k + a/n sum_{j in win(i)} x_j^2, so
        # dx_j = dout_j d_j^-p - 2 p a/n x_j sum_{i: j in win(i)} dout_i x_i d_i^(-p-1)
        x, denom, out = cache
        h = self.hyper
        back = self._sum(dout * out / denom, adjoint=True)
        dx = dout * denom ** (-h.pow) - (2 * h.pow * h.scale / self.window_count) * x * back
        return [dx], {}


@register
class ResponseNorm(_ResponseNorm):
    """cuda-convnet `rnorm`: each unit divided by the energy of a size x size patch of its own channel."""

    type = "rnorm"
    axes = (1, 2)


@register
class CrossMapResponseNorm(_ResponseNorm):
    """cuda-convnet `cmrnorm` (AlexNet's local response normalization): across `size` adjacent channels."""

    type = "cmrnorm"
    axes = (3,)

    def infer_shape(self):
        c = self.in_shapes[0][0]
        if self.props.size > c:
            raise self.error(f"size {self.props.size} is larger than the input's {c} channels; "
                             f"use a size of at most {c}")
        return self.in_shapes[0]


@register
class BatchNorm(Layer):
    """Spatial batch normalization: per-channel statistics over N, H and W (x: (N, H, W, C)).

    Training: out = gamma * (x - mean) / sqrt(var + epsilon) + beta with the batch's mean and biased
    variance, and the running averages move neon style, running = momentum * running + (1 - momentum) *
    batch (the unbiased variance for running_var, as PyTorch; PyTorch's momentum is 1 - ours).
    Test: the running statistics take the batch's place.
    """

    type = "batchnorm"
    keys = {
        "epsilon": Key("float", 1e-5, min=0.0, doc="added to the variance before the square root"),
        "momentum": Key("float", 0.9, min=0.0, doc="running-average decay: the share of the old value kept"),
    }
    learned = ("gamma", "beta")
    stat_axes = (0, 1, 2)

    def infer_shape(self):
        if self.props.momentum > 1:
            raise self.error(f"momentum {self.props.momentum:g} must be between 0 and 1 (the share of the running "
                             f"average kept at each step; 0.9 is usual)")
        return self.in_shapes[0]

    def init_params(self, rng):
        c = self.in_shapes[0][0]
        # running_* are not learned: forward updates them in place during training
        return {
            "gamma": np.ones(c, np.float32),
            "beta": np.zeros(c, np.float32),
            "running_mean": np.zeros(c, np.float32),
            "running_var": np.ones(c, np.float32),
        }

    def forward(self, xs, params, ctx):
        x = xs[0]
        xp = ctx.xp
        gamma = params["gamma"].astype(x.dtype, copy=False)
        beta = params["beta"].astype(x.dtype, copy=False)
        if ctx.train:
            count = x.size // x.shape[-1]
            mean = x.mean(axis=self.stat_axes)
            centered = x - mean
            var = (centered * centered).mean(axis=self.stat_axes)
            m = self.props.momentum
            running_mean, running_var = params["running_mean"], params["running_var"]
            running_mean[...] = m * running_mean + (1 - m) * mean.astype(running_mean.dtype, copy=False)
            unbiased = var * (count / max(count - 1, 1))
            running_var[...] = m * running_var + (1 - m) * unbiased.astype(running_var.dtype, copy=False)
        else:
            mean = params["running_mean"].astype(x.dtype, copy=False)
            var = params["running_var"].astype(x.dtype, copy=False)
            centered = x - mean
        inv_std = 1 / xp.sqrt(var + self.props.epsilon)
        xhat = centered * inv_std
        return xhat * gamma + beta, (xhat, inv_std, gamma, bool(ctx.train))

    def backward(self, dout, cache, params, ctx):
        xhat, inv_std, gamma, train = cache
        dbeta = dout.sum(axis=self.stat_axes)
        dgamma = (dout * xhat).sum(axis=self.stat_axes)
        if train:
            # the batch mean and variance depend on x too (cs231n's batchnorm_backward, simplified)
            count = dout.size // dout.shape[-1]
            dx = (gamma * inv_std / count) * (count * dout - dbeta - xhat * dgamma)
        else:
            dx = dout * (gamma * inv_std)
        return [dx], {"gamma": dgamma, "beta": dbeta}
