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

from convnet_cli.backend import cuda_elementwise
from convnet_cli.layers.base import Key, Layer, column_sums, register
from convnet_cli.layers.cpu_threads import (blocks, chunk_bounds, elementwise_threads, ordered_sum, parallel_map,
                                            parallel_threads)
from convnet_cli.layers.pool import run_chunks


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


def _is_cupy(a) -> bool:
    return type(a).__module__.startswith("cupy")


# == response normalization: the NumPy code and its CUDA twin =============================================
# kind 'rnorm' sums over a size x size patch of (H, W), 'cmrnorm' over `size` neighbouring channels;
# n = the window's size (size^2 or size), as in the module docstring.
_RNORM_AXES = {"rnorm": (1, 2), "cmrnorm": (3,)}


def window_sums(a, kind: str, size: int, adjoint: bool = False):
    before, after = size // 2, size - 1 - size // 2
    if adjoint:  # the transpose of the window sum: each position gives to the windows that read it
        before, after = after, before
    for axis in _RNORM_AXES[kind]:
        a = _window_sum(a, axis, before, after)
    return a


def response_norm_forward_numpy(x, kind: str, size: int, min_div: float, scale: float, n: int, power: float):
    """x: (N, H, W, C) -> (out, denom): denom = minDiv + scale/n * (window sum of x^2), out = x denom^-pow."""
    denom = min_div + (scale / n) * window_sums(x * x, kind, size)
    return x * denom ** (-power), denom


def response_norm_backward_numpy(x, denom, out, dout, kind: str, size: int, scale: float, n: int, power: float):
    """dx of response_norm_forward_numpy.

    out_i = x_i d_i^-p with d_i = k + a/n sum_{j in win(i)} x_j^2, so
    dx_j = dout_j d_j^-p - 2 p a/n x_j sum_{i: j in win(i)} dout_i x_i d_i^(-p-1)."""
    back = window_sums(dout * out / denom, kind, size, adjoint=True)
    return dout * denom ** (-power) - (2 * power * scale / n) * x * back


# One thread per element (n, y, x, c) of the NHWC arrays; the window is read through a raw argument.
# cn_window_sum sums src (squared when `square`) over offsets lo..hi along C (cmrnorm) or along both H and
# W (rnorm) around the element's position, positions outside the map counting as zero.
_RNORM_PREAMBLE = """
template <typename T, typename A>
__device__ T cn_window_sum(const A& src, ptrdiff_t idx, int H, int W, int C, int spatial, int lo, int hi,
                           int square) {
    const int ch = (int)(idx % C);
    const ptrdiff_t pix = idx / C;
    T s = 0;
    if (spatial) {
        const int px = (int)(pix % W);
        const int py = (int)((pix / W) % H);
        const ptrdiff_t img = pix / ((ptrdiff_t)W * H);
        for (int oy = lo; oy <= hi; ++oy) {
            const int y2 = py + oy;
            if (y2 < 0 || y2 >= H) continue;
            for (int ox = lo; ox <= hi; ++ox) {
                const int x2 = px + ox;
                if (x2 < 0 || x2 >= W) continue;
                const T v = src[((img * H + y2) * W + x2) * C + ch];
                s += square ? v * v : v;
            }
        }
    } else {
        for (int oc = lo; oc <= hi; ++oc) {
            const int c2 = ch + oc;
            if (c2 < 0 || c2 >= C) continue;
            const T v = src[pix * C + c2];
            s += square ? v * v : v;
        }
    }
    return s;
}
"""

_RNORM_SOURCES = {
    "rnorm_fwd": (
        "raw T xr, T x, int32 H, int32 W, int32 C, int32 spatial, int32 lo, int32 hi, T min_div, T scale_n, "
        "T power",
        "T out, T denom",
        """
        const T d = min_div + scale_n * cn_window_sum<T>(xr, i, H, W, C, spatial, lo, hi, 1);
        denom = d;
        out = x * pow(d, -power);
        """,
    ),
    # t = dout * out / denom, computed before; the adjoint window sum of t gives the second term
    "rnorm_bwd": (
        "raw T t, T x, T denom, T dout, int32 H, int32 W, int32 C, int32 spatial, int32 lo, int32 hi, "
        "T coef, T power",
        "T dx",
        """
        const T back = cn_window_sum<T>(t, i, H, W, C, spatial, lo, hi, 0);
        dx = dout * pow(denom, -power) - coef * x * back;
        """,
    ),
}


def _cuda_kernel(sources: dict, name: str, preamble: str = ""):
    return cuda_elementwise(sources, name, preamble=preamble)


def response_norm_forward_cupy(x, kind: str, size: int, min_div: float, scale: float, n: int, power: float):
    """CUDA twin of response_norm_forward_numpy."""
    import cupy

    x = cupy.ascontiguousarray(x)
    _, h, w, c = x.shape
    before, after = size // 2, size - 1 - size // 2
    out = cupy.empty_like(x)
    denom = cupy.empty_like(x)
    _cuda_kernel(_RNORM_SOURCES, "rnorm_fwd", _RNORM_PREAMBLE)(
        x, x, h, w, c, int(kind == "rnorm"), -before, after, float(min_div), float(scale / n), float(power),
        out, denom)
    return out, denom


def response_norm_backward_cupy(x, denom, out, dout, kind: str, size: int, scale: float, n: int, power: float):
    """CUDA twin of response_norm_backward_numpy."""
    import cupy

    _, h, w, c = x.shape
    before, after = size // 2, size - 1 - size // 2
    t = cupy.ascontiguousarray(dout * out / denom)
    dx = cupy.empty(x.shape, dtype=x.dtype)
    # the adjoint window: position j receives from the windows of positions j - after .. j + before
    _cuda_kernel(_RNORM_SOURCES, "rnorm_bwd", _RNORM_PREAMBLE)(
        t, x, denom, dout, h, w, c, int(kind == "rnorm"), -after, before, float(2 * power * scale / n),
        float(power), dx)
    return dx


class ResponseNormBase(Layer):
    keys = {"size": Key("int", min=1, doc="width of the normalization window, e.g. 5")}
    hyper_defaults = {"scale": 0.0001, "pow": 0.75, "minDiv": 1.0}
    axes: tuple = ()  # activation axes the window runs along (NHWC)

    def check_hyper(self, hyper: dict):
        for k in self.hyper_defaults:
            hyper[k] = float(hyper[k])
        if hyper["scale"] < 0:
            raise self.error(f"scale {hyper['scale']:g} must not be negative; set scale in the layer-params file "
                             f"(cuda-convnet's usual value is 0.0001)")
        if hyper["minDiv"] <= 0:
            raise self.error(f"minDiv {hyper['minDiv']:g} must be positive (the denominator's constant term); "
                             f"set minDiv in the layer-params file, e.g. 1 or 2")

    @property
    def window_count(self) -> int:
        """n in scale / n: the number of positions a full window covers."""
        return self.props.size ** len(self.axes)

    def forward(self, xs, params, ctx):
        """x: (N, H, W, C) -> out of the same shape."""
        x = xs[0]
        h = self.hyper
        args = (self.type, self.props.size, h.minDiv, h.scale, self.window_count, h.pow)
        if _is_cupy(x):
            out, denom = response_norm_forward_cupy(x, *args)
            return out, (x, denom, out)
        # On the CPU, in chunks of cases (a window never leaves its case) that stay in the cache, over the
        # threads: the same arithmetic per case as on the whole batch, so the same bits.
        out, denom = np.empty_like(x), np.empty_like(x)

        def chunk(n0, n1):
            out[n0:n1], denom[n0:n1] = response_norm_forward_numpy(x[n0:n1], *args)

        run_chunks(chunk, x.shape[0], x[0].nbytes, np)
        return out, (x, denom, out)

    def backward(self, dout, cache, params, ctx):
        x, denom, out = cache
        h = self.hyper
        args = (self.type, self.props.size, h.scale, self.window_count, h.pow)
        if _is_cupy(x):
            return [response_norm_backward_cupy(x, denom, out, dout, *args)], {}
        dx = np.empty_like(dout)

        def chunk(n0, n1):
            dx[n0:n1] = response_norm_backward_numpy(x[n0:n1], denom[n0:n1], out[n0:n1], dout[n0:n1], *args)

        run_chunks(chunk, x.shape[0], x[0].nbytes, np)
        return [dx], {}

    def to_onnx(self, g, xs, params):
        """Composed: x * (minDiv + scale/n * windowsum(x^2))^-pow, the window sums by `_onnx_window_sums`."""
        n, hyp, x = self.name, self.hyper, xs[0]
        sums = self._onnx_window_sums(g, g.op("Mul", [x, x], f"{n}/square"))
        denom = g.op("Add", [g.const(f"{n}/minDiv", hyp.minDiv),
                             g.op("Mul", [sums, g.const(f"{n}/scale", hyp.scale / self.window_count)], f"{n}/denom")],
                     f"{n}/denom")
        return g.op("Mul", [x, g.op("Pow", [denom, g.const(f"{n}/pow", -hyp.pow)], f"{n}/pow")], n)

    def _window_span(self) -> tuple:
        """(positions before, after) the center that a window covers."""
        size = self.props.size
        return size // 2, size - 1 - size // 2


@register
class ResponseNorm(ResponseNormBase):
    """cuda-convnet `rnorm`: each unit divided by the energy of a size x size patch of its own channel."""

    type = "rnorm"
    axes = (1, 2)

    def _onnx_window_sums(self, g, x2):
        """A depthwise Conv of ones (zero padded, as the layer clips its windows)."""
        size = self.props.size
        before, after = self._window_span()
        return g.window_sum(x2, self.in_shapes[0][0], size, size, [before, before, after, after], f"{self.name}/sum")


@register
class CrossMapResponseNorm(ResponseNormBase):
    """cuda-convnet `cmrnorm` (AlexNet's local response normalization): across `size` adjacent channels."""

    type = "cmrnorm"
    axes = (3,)

    def infer_shape(self):
        c = self.in_shapes[0][0]
        if self.props.size > c:
            raise self.error(f"size {self.props.size} is larger than the input's {c} channels; "
                             f"use a size of at most {c}")
        return self.in_shapes[0]

    def to_onnx(self, g, xs, params):
        """LRN for odd sizes (same window, alpha/size scaling, bias = minDiv); an even size puts one more
        channel before than after, where ONNX's LRN puts it after: there it is composed."""
        before, after = self._window_span()
        if before == after:
            hyp = self.hyper
            return g.op("LRN", [xs[0]], self.name, size=self.props.size, alpha=float(hyp.scale), beta=float(hyp.pow),
                        bias=float(hyp.minDiv))
        return super().to_onnx(g, xs, params)

    def _onnx_window_sums(self, g, x2):
        """Channels as a spatial axis: (N, 1, C, H*W), summed over `size` rows."""
        n = self.name
        c, h, w = self.in_shapes[0]
        before, after = self._window_span()
        col = g.reshape(x2, [0, 1, c, h * w], f"{n}/channels")
        return g.reshape(g.window_sum(col, 1, self.props.size, 1, [before, 0, after, 0], f"{n}/sum"), [0, c, h, w],
                         f"{n}/sum")


@register
class BatchNorm(Layer):
    """Spatial batch normalization: per-channel statistics over N, H and W (x: (N, H, W, C)).

    Training: out = gamma * (x - mean) / sqrt(var + epsilon) + beta with the batch's mean and biased
    variance, and the running averages move neon style, running = momentum * running + (1 - momentum) *
    batch (the unbiased variance for running_var, as PyTorch; PyTorch's momentum is 1 - ours).
    Test: the running statistics take the batch's place.
    """

    type = "batchnorm"
    fuses_neuron = True  # every NumPy path of forward applies `chunk_neuron` (CuPy: the net applies it)
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

    def param_shapes(self):
        c = self.in_shapes[0][0]
        return {"gamma": (c,), "beta": (c,), "running_mean": (c,), "running_var": (c,)}

    def init_params(self, rng):
        c = self.in_shapes[0][0]
        # running_* are not learned: forward updates them in place during training
        return {
            "gamma": np.ones(c, np.float32),
            "beta": np.zeros(c, np.float32),
            "running_mean": np.zeros(c, np.float32),
            "running_var": np.ones(c, np.float32),
        }

    def to_onnx(self, g, xs, params):
        """BatchNormalization with the running statistics (the test-time pass)."""
        n = self.name
        return g.op("BatchNormalization", [xs[0], g.const(f"{n}/gamma", params["gamma"]),
                                           g.const(f"{n}/beta", params["beta"]),
                                           g.const(f"{n}/running_mean", params["running_mean"]),
                                           g.const(f"{n}/running_var", params["running_var"])], n,
                    epsilon=float(self.props.epsilon))

    def forward(self, xs, params, ctx):
        x = xs[0]
        xp = ctx.xp
        gamma = params["gamma"].astype(x.dtype, copy=False)
        beta = params["beta"].astype(x.dtype, copy=False)
        if ctx.train and ctx.allreduce is not None:
            return self._forward_split(x, params, gamma, beta, ctx)
        if _is_cupy(x):
            return self._forward_cupy(x, params, gamma, beta, ctx)
        # On the CPU the (N, H, W, C) maps are seen as (N*H*W, C) matrices cut into chunks of rows that fit
        # the cache, spread over the threads (cpu_threads.py): per-channel sums as GEMVs and einsums, and
        # in-place arithmetic, because each pass over a map of tens of MB (and each fresh allocation of one)
        # costs more than the arithmetic (measured: 190 -> 45 ms for the first batchnorm of keywords.yaml,
        # forward + backward, batch 128, one thread).
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        count = x2.shape[0]
        eps = self.props.epsilon
        if ctx.train:
            # (x - mean) goes into the output's buffer and is normalized there: no map-sized xhat is kept;
            # backward recomputes it, by the same operations (the same bits), from x, which the layer below
            # keeps as its output anyway
            out = np.empty_like(x2)
            mean, var, _ = _batch_stats_numpy(x2, out)
            m = self.props.momentum
            running_mean, running_var = params["running_mean"], params["running_var"]
            running_mean[...] = m * running_mean + (1 - m) * mean.astype(running_mean.dtype, copy=False)
            unbiased = var * (count / max(count - 1, 1))
            running_var[...] = m * running_var + (1 - m) * unbiased.astype(running_var.dtype, copy=False)
            inv_std = (1 / xp.sqrt(var + eps)).astype(x.dtype, copy=False)

            def normalize(worker, bound):  # xhat in place, then out, while the rows are in the cache
                r0, r1 = bound
                h = out[r0:r1]
                h *= inv_std
                h *= gamma
                h += beta
                self.neuron_on(h)  # a fused relu (see base.py)

            _row_chunks_map(normalize, x2)
            return out.reshape(shape), (None, inv_std, gamma, True, (x, mean))
        # test mode: one scale and one shift per channel, two passes over the map (detect and predict
        # spend most of their time here and in the convolutions); xhat only when backward may follow
        mean = params["running_mean"].astype(x.dtype, copy=False)
        var = params["running_var"].astype(x.dtype, copy=False)
        inv_std = (1 / xp.sqrt(var + eps)).astype(x.dtype, copy=False)
        scale = inv_std * gamma
        shift = beta - mean * scale
        out = np.empty_like(x2)
        xhat = np.empty_like(x2) if ctx.keep_cache else None

        def apply(worker, bound):
            r0, r1 = bound
            np.multiply(x2[r0:r1], scale, out=out[r0:r1])
            out[r0:r1] += shift
            self.neuron_on(out[r0:r1])
            if xhat is not None:
                np.subtract(x2[r0:r1], mean, out=xhat[r0:r1])
                xhat[r0:r1] *= inv_std

        _row_chunks_map(apply, x2)
        if xhat is None:
            return out.reshape(shape), None
        return out.reshape(shape), (xhat.reshape(shape), inv_std, gamma, False)

    def _forward_cupy(self, x, params, gamma, beta, ctx):
        """forward on CuPy: the statistics by reductions, the normalization by one fused kernel."""
        import cupy

        x = cupy.ascontiguousarray(x)
        eps = float(self.props.epsilon)
        running_mean, running_var = params["running_mean"], params["running_var"]
        if ctx.train:
            count = x.size // x.shape[-1]
            # per-channel sums as GEMVs (column_sums): CuPy's reductions over N, H, W are 100x slower
            x2 = x.reshape(count, x.shape[-1])
            mean = column_sums(x2, cupy) / count
            sqdev = column_sums(_cuda_kernel(_BN_SOURCES, "bn_sq")(x2, mean), cupy)
            m = float(self.props.momentum)
            unbias = count / max(count - 1, 1)
            if running_mean.dtype == x.dtype and running_var.dtype == x.dtype:
                # variance, running averages and 1/std of all channels in one small kernel
                inv_std = cupy.empty_like(mean)
                _cuda_kernel(_BN_SOURCES, "bn_stats")(mean, sqdev, float(count), m, 1 - m, unbias, eps,
                                                      running_mean, running_var, inv_std)
            else:  # float64 gradient checks with float32 running statistics
                var = sqdev / count
                running_mean[...] = m * running_mean + (1 - m) * mean.astype(running_mean.dtype, copy=False)
                unbiased = var * unbias
                running_var[...] = m * running_var + (1 - m) * unbiased.astype(running_var.dtype, copy=False)
                inv_std = 1 / cupy.sqrt(var + eps)
        else:
            mean = running_mean.astype(x.dtype, copy=False)
            inv_std = 1 / cupy.sqrt(running_var.astype(x.dtype, copy=False) + eps)
        out, xhat = batchnorm_forward_cupy(x, mean, inv_std, gamma, beta)
        return out, (xhat, inv_std, gamma, bool(ctx.train))

    def _forward_split(self, x, params, gamma, beta, ctx):
        """Training forward when the minibatch is split over processes (train/data_parallel.py): each
        process's per-channel sum and sum of squares go through ctx.allreduce, so mean and variance are the
        whole minibatch's. The sums are taken around the running mean (the same on every process) and
        added in float64, which keeps the one-pass variance within float32 rounding of the two-pass one."""
        xp = ctx.xp
        shape = x.shape
        c = shape[-1]
        x2 = x.reshape(-1, c)
        running_mean, running_var = params["running_mean"], params["running_var"]
        shift = running_mean.astype(x.dtype)
        d = x2 - shift
        local = xp.concatenate([d.sum(axis=0, dtype=xp.float64), (d * d).sum(axis=0, dtype=xp.float64),
                                xp.full(1, x2.shape[0], dtype=xp.float64)])
        total = ctx.allreduce(local)
        count = float(total[-1])
        m1 = total[:c] / count
        var64 = xp.maximum(total[c:2 * c] / count - m1 * m1, 0.0)
        mean = (shift.astype(xp.float64) + m1).astype(x.dtype)
        var = var64.astype(x.dtype)
        m = self.props.momentum
        running_mean[...] = m * running_mean + (1 - m) * mean.astype(running_mean.dtype, copy=False)
        unbiased = var * (count / max(count - 1, 1))
        running_var[...] = m * running_var + (1 - m) * unbiased.astype(running_var.dtype, copy=False)
        inv_std = (1 / xp.sqrt(var + self.props.epsilon)).astype(x.dtype, copy=False)
        xhat = (x2 - mean) * inv_std
        out = self.neuron_on(xhat * gamma + beta)
        return out.reshape(shape), (xhat.reshape(shape), inv_std, gamma, True)

    def _backward_split(self, dout, xhat, inv_std, gamma, ctx):
        """Training backward of _forward_split: dx needs the whole minibatch's sums of dout and dout*xhat
        (summed over the processes); the parameter gradients stay this process's own (the trainer sums
        every gradient over the processes afterwards)."""
        xp = ctx.xp
        shape = dout.shape
        c = shape[-1]
        d2 = dout.reshape(-1, c)
        xh = xhat.reshape(-1, c)
        dbeta = d2.sum(axis=0)
        dgamma = (d2 * xh).sum(axis=0)
        total = ctx.allreduce(xp.concatenate([dbeta.astype(xp.float64), dgamma.astype(xp.float64),
                                              xp.full(1, d2.shape[0], dtype=xp.float64)]))
        count = float(total[-1])
        sum_dbeta = total[:c].astype(dout.dtype)
        sum_dgamma = total[c:2 * c].astype(dout.dtype)
        dx = (d2 - sum_dbeta / count - xh * (sum_dgamma / count)) * (gamma * inv_std)
        return [dx.reshape(shape)], {"gamma": dgamma, "beta": dbeta}

    def backward(self, dout, cache, params, ctx):
        xhat, inv_std, gamma, train = cache[:4]
        if train and ctx.allreduce is not None:
            return self._backward_split(dout, xhat, inv_std, gamma, ctx)
        if xhat is None:  # the CPU's training forward kept x and the mean instead
            x, mean = cache[4]
            dx, dgamma, dbeta = batchnorm_backward_numpy(dout, None, inv_std, gamma, train, x=x, mean=mean)
            return [dx], {"gamma": dgamma, "beta": dbeta}
        fn = batchnorm_backward_cupy if _is_cupy(dout) else batchnorm_backward_numpy
        dx, dgamma, dbeta = fn(dout, xhat, inv_std, gamma, train)
        return [dx], {"gamma": dgamma, "beta": dbeta}


# == batchnorm: the element-wise parts, NumPy and CUDA ====================================================
# Statistics are over every axis but the last (channels, NHWC); per-channel arrays (C,) broadcast.

def batchnorm_forward_numpy(x, mean, inv_std, gamma, beta):
    """x: (N, H, W, C) -> (out, xhat): xhat = (x - mean) * inv_std, out = xhat * gamma + beta (the same
    operations as BatchNorm.forward on the CPU, which keeps x - mean for the variance as well)."""
    xhat = (x - mean) * inv_std
    return xhat * gamma + beta, xhat


def batchnorm_backward_numpy(dout, xhat, inv_std, gamma, train: bool, x=None, mean=None):
    """(dx, dgamma, dbeta). In training the batch mean and variance depend on x too (cs231n's
    batchnorm_backward, simplified); in test mode they are constants. In chunks of rows on the threads,
    the sums per fixed block of chunks (cpu_threads.py). xhat None: it is recomputed from x and mean, as
    the forward pass computed it, into dx's buffer, which the gradient then overwrites in place."""
    shape = dout.shape
    d2 = dout.reshape(-1, shape[-1])
    dx = np.empty_like(d2)
    if xhat is None:
        x2 = x.reshape(-1, shape[-1])
        xh = dx

        def sums(rows):
            h = dx[rows]
            np.subtract(x2[rows], mean, out=h)
            h *= inv_std
            return column_sums(d2[rows], np), np.einsum("ij,ij->j", d2[rows], h)
    else:
        xh = xhat.reshape(-1, shape[-1])

        def sums(rows):
            return (column_sums(d2[rows], np),
                    np.einsum("ij,ij->j", d2[rows], xh[rows]))
    count = d2.shape[0]

    parts = _row_blocks_map(sums, d2)
    dbeta = ordered_sum(p[0] for p in parts)
    dgamma = ordered_sum(p[1] for p in parts)
    scale = gamma * inv_std
    if train:
        # gamma * inv_std * (dout - dbeta / count - xhat * dgamma / count)
        a, b = -dgamma / count, dbeta / count

        def grad(worker, bound):
            r0, r1 = bound
            g = dx[r0:r1]
            np.multiply(xh[r0:r1], a, out=g)  # in place where xh is dx itself
            g += d2[r0:r1]
            g -= b
            g *= scale
    else:
        def grad(worker, bound):
            r0, r1 = bound
            np.multiply(d2[r0:r1], scale, out=dx[r0:r1])

    _row_chunks_map(grad, d2)
    return dx.reshape(shape), dgamma, dbeta


# Rows of an (N*H*W, C) map per chunk are chosen so that a chunk is about this size (stays in the cache).
BN_CHUNK_BYTES = 1 << 20


def _row_bounds(x2):
    per_row = max(1, x2.shape[1] * x2.dtype.itemsize)
    return chunk_bounds(x2.shape[0], max(1, BN_CHUNK_BYTES // per_row))


def _row_chunks_map(fn, x2):
    """fn(worker, (r0, r1)) for chunks of rows of x2 (element-wise work), over the threads."""
    bounds = _row_bounds(x2)
    parallel_map(fn, bounds, elementwise_threads(np, len(bounds)))


def _row_blocks_map(fn, x2):
    """[fn(rows) for each fixed block of row chunks], over the threads; the results are per-channel sums,
    to be added in order (the same whatever the thread count)."""
    blks = blocks(_row_bounds(x2))
    return parallel_map(lambda worker, blk: fn(slice(blk[0][0], blk[-1][1])), blks,
                        parallel_threads(np, len(blks)))


def _batch_stats_numpy(x2, out=None):
    """(mean, biased variance, x - mean) of the columns of x2 (N*H*W, C): the two-pass variance, each pass
    in blocks of rows over the threads; x - mean is written into `out` when given."""
    count = x2.shape[0]
    mean = ordered_sum(_row_blocks_map(lambda rows: column_sums(x2[rows], np), x2))
    mean /= count
    xhat = np.empty_like(x2) if out is None else out

    def sqdev(rows):
        np.subtract(x2[rows], mean, out=xhat[rows])
        return np.einsum("ij,ij->j", xhat[rows], xhat[rows])

    var = ordered_sum(_row_blocks_map(sqdev, x2)) / count
    return mean, var, xhat


_BN_SOURCES = {
    # per channel, from the batch mean and the sum of squared deviations: the running averages (as numpy
    # computes them, scalars rounded to T first) and 1 / sqrt(var + eps)
    "bn_stats": (
        "T mean, T sqdev, T count, T m, T one_minus_m, T unbias, T eps",
        "T running_mean, T running_var, T inv_std",
        """
        const T var = sqdev / count;
        running_mean = m * running_mean + one_minus_m * mean;
        running_var = m * running_var + one_minus_m * (var * unbias);
        inv_std = (T)1 / sqrt(var + eps);
        """,
    ),
    "bn_sq": ("T x, T mean", "T y", "const T d = x - mean; y = d * d;"),
    "bn_fwd": (
        "T x, T mean, T inv_std, T gamma, T beta",
        "T out, T xhat",
        """
        const T h = (x - mean) * inv_std;
        xhat = h;
        out = h * gamma + beta;
        """,
    ),
    "bn_bwd": (
        "T dout, T xhat, T scale, T dbeta, T dgamma, T count",
        "T dx",
        "dx = scale * (count * dout - dbeta - xhat * dgamma);",
    ),
}
def batchnorm_forward_cupy(x, mean, inv_std, gamma, beta):
    """CUDA twin of batchnorm_forward_numpy (one pass over x)."""
    return _cuda_kernel(_BN_SOURCES, "bn_fwd")(x, mean.astype(x.dtype, copy=False),
                                               inv_std.astype(x.dtype, copy=False),
                                               gamma.astype(x.dtype, copy=False), beta.astype(x.dtype, copy=False))


def batchnorm_backward_cupy(dout, xhat, inv_std, gamma, train: bool):
    """CUDA twin of batchnorm_backward_numpy: two reductions and one fused kernel for dx."""
    import cupy

    d2 = dout.reshape(-1, dout.shape[-1])
    dbeta = column_sums(d2, cupy)
    dgamma = column_sums(d2 * xhat.reshape(d2.shape), cupy)
    if not train:
        return dout * (gamma * inv_std), dgamma, dbeta
    count = dout.size // dout.shape[-1]
    scale = gamma * inv_std / count
    dx = _cuda_kernel(_BN_SOURCES, "bn_bwd")(dout, xhat, scale, dbeta, dgamma, float(count))
    return dx, dgamma, dbeta
