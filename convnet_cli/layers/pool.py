"""`pool`: max or average pooling over sizeX windows, cuda-convnet's output rule ("ceil mode").

Geometry, per axis (h and w separately; an int key means the same for both):
  outputs = ceil((size - start - sizeX) / stride) + 1 when outputsX is 0 (cuda-convnet's rule), so the last
  window may run off the end of the input; it is truncated to the pixels that exist. (When stride > sizeX
  the rule can count a window that would start past the end; such windows are dropped.) `start` may be
  negative, which pads the beginning the same way. A given outputsX (an int or [h, w]) overrides the rule.
  sizeX 'all' pools each channel over its whole map (global pooling): output (C, 1, 1).
Average pooling divides each window by the number of its pixels inside the input, as cuda-convnet does for
truncated windows (= PyTorch's avg_pool2d with count_include_pad=False). Max pooling routes the gradient to
the first maximum of each window in row-major order (= PyTorch; cuda-convnet sent it to every tie).

What was measured (2 threads of a shared AMD EPYC, NHWC float32, (32, 64, 101) max 3x3 stride 2, N = 128,
ms; see benchmarks/bench_layers.py for the comparison with PyTorch):
  * the max over the kh*kw strided slices of the window offsets: 41 on the whole batch at once, 24 in
    chunks of 8 cases (in the cache), 14 with the chunks split over 2 threads (numpy releases the GIL in
    its loops; the threads are cpu_threads.py's, which also run the conv chunks, BLAS being held to one
    thread). Chunks of 2-4 MiB measure best.
  * non-overlapping windows by reshaping, x.reshape(n, oh, kh, ow, kw, C).max(axis=(2, 4)), is 4-5x slower
    than the slices on the same chunk (0.89 vs 0.18 per 4 cases of (32, 64, 100) 2x2; sums 0.64 vs 0.19),
    so stride == size takes the same path as every other window.
  * the argmax, kept as a uint8 per output and updated by arithmetic (idx += (k - idx) * (x > out)), costs
    2-5 per slice; masked stores (copyto(where=), putmask, boolean indexing) cost 25-36. Finding the
    argmax again in backward from x == out instead (first hit per window) makes forward cheaper but
    backward dearer: 12 + 53 against 24 + 31.
  * windows truncated at the border need no padded copy of the input: each window offset (i, j) updates
    only the outputs whose window still has row i and column j inside the input.
  * global pooling: one reduction over the (H*W) axis per chunk of cases.

On CuPy, windowed pooling is one CUDA kernel per direction (pool_forward_cupy / pool_backward_cupy, twins of
pool_forward_numpy / pool_backward_numpy): forward one thread per output, backward one thread per input pixel
gathering from the windows that hold it, both in the NumPy code's order of window offsets, so ties, NaNs and
the rounding of the sums come out as on the CPU. Global pooling runs the same reductions as on the CPU.
"""
from __future__ import annotations

from convnet_cli.backend import cuda_elementwise, get_array_module
from convnet_cli.layers.cpu_threads import chunk_bounds, elementwise_threads, parallel_map
from convnet_cli.layers.base import Key, Layer, fmt_hw, register

# Cases per chunk are chosen so that a chunk's input is about this size (stays in the cache).
CHUNK_BYTES = 2 << 20


# -- running chunks of cases on several threads (numpy only) -------------------------------------------------
def run_chunks(fn, n: int, per_case_bytes: int, xp):
    """Call fn(n0, n1) for chunks of the n cases that fit CHUNK_BYTES; on several threads with numpy.

    The chunks must write disjoint parts of their outputs. Each thread gets one contiguous share of the
    chunks (one task per thread, not one per chunk), and the calling thread runs the first share itself
    instead of waiting idle: a few tasks per call instead of tens (measured: see the note at the top).
    """
    if xp.__name__ != "numpy":  # a GPU: one launch per operation over the whole batch
        fn(0, n)
        return
    bounds = chunk_bounds(n, max(1, min(n, CHUNK_BYTES // max(per_case_bytes, 1))))
    parallel_map(lambda worker, b: fn(*b), bounds, elementwise_threads(xp, len(bounds)))


# -- geometry ------------------------------------------------------------------------------------------------
def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def axis_outputs(size: int, k: int, stride: int, start: int, given: int) -> int:
    """Outputs along one axis (cuda-convnet's rule, windows starting past the end dropped)."""
    if given:
        return given
    n = _ceil_div(size - start - k, stride) + 1
    return max(1, min(n, _ceil_div(size - start, stride)))


def offset_range(size: int, k_off: int, stride: int, start: int, outs: int):
    """(lo, hi): outputs o whose window pixel start + o*stride + k_off lies in [0, size)."""
    first = start + k_off
    lo = 0 if first >= 0 else _ceil_div(-first, stride)
    hi = min(outs, _ceil_div(size - first, stride)) if size - first > 0 else 0
    return lo, max(lo, hi)


def window_counts(size: int, k: int, stride: int, start: int, outs: int):
    """Pixels inside the input for each window along one axis (a host list)."""
    return [min(size, start + o * stride + k) - max(0, start + o * stride) for o in range(outs)]


@register
class PoolLayer(Layer):
    """x: (N, H, W, C) -> (N, Ho, Wo, C)."""

    type = "pool"
    fuses_neuron = True  # every NumPy path of forward applies `chunk_neuron` (CuPy: the net applies it)
    keys = {
        "pool": Key("str", choices=("max", "avg"), doc="max or avg"),
        "sizeX": Key("int_or_all", doc="window size, an int, [h, w], or 'all' for global pooling"),
        "stride": Key("pair", None, min=1, doc="default: sizeX (windows do not overlap)"),
        "start": Key("int", 0, doc="offset of the first window; negative pads the start"),
        "outputsX": Key("pair", (0, 0), min=0, doc="0 = cuda-convnet's rule ceil((size-start-sizeX)/stride)+1"),
    }

    def infer_shape(self):
        c, h, w = self.in_shapes[0]
        p = self.props
        self.is_global = p.sizeX == "all"
        if self.is_global:
            self.size, self.stride, self.start = (h, w), (h, w), 0
            return (c, 1, 1)
        kh, kw = p.sizeX
        if kh > h or kw > w:
            label = str(kh) if kh == kw else f"{kh}x{kw}"
            raise self.error(f"sizeX {label} is larger than its input ({fmt_hw(self.in_shapes[0])}); "
                             f"use a smaller sizeX, or 'all' to pool the whole map")
        sh, sw = p.stride if p.stride is not None else (kh, kw)
        start = p.start
        if start <= -min(kh, kw) or start >= min(h, w):
            raise self.error(f"start {start} leaves the first window outside the input ({fmt_hw(self.in_shapes[0])}); "
                             f"use a start from {1 - min(kh, kw)} to {min(h, w) - 1}")
        gh, gw = p.outputsX
        oh = axis_outputs(h, kh, sh, start, gh)
        ow = axis_outputs(w, kw, sw, start, gw)
        for size, s, o, axis in ((h, sh, oh, "rows"), (w, sw, ow, "columns")):
            if start + (o - 1) * s >= size:
                raise self.error(f"outputsX {o} puts windows past the end of the input's {size} {axis} "
                                 f"(stride {s}, start {start}); use at most {_ceil_div(size - start, s)}, "
                                 f"or 0 for the rule")
        self.size, self.stride, self.start = (kh, kw), (sh, sw), start
        # Global in effect: one window covering the whole map.
        self.is_global = (oh, ow) == (1, 1) and (kh, kw) == (h, w) and start == 0
        self.offsets = self._offsets((h, w), (oh, ow))
        return (c, oh, ow)

    def to_onnx(self, g, xs, params):
        """MaxPool / AveragePool(count_include_pad=0) with the pads that cuda-convnet's ceil rule implies
        (truncated windows: the pads are never counted), `start` > 0 by a Slice, < 0 by a leading pad,
        outputsX by a Slice of the output; sizeX 'all' by GlobalMaxPool / GlobalAveragePool."""
        n = self.name
        is_max = self.props.pool == "max"
        if self.is_global:
            return g.op("GlobalMaxPool" if is_max else "GlobalAveragePool", [xs[0]], n)
        _, h, w = self.in_shapes[0]
        _, oh, ow = self.out_shape
        (kh, kw), (sh, sw), start = self.size, self.stride, self.start
        x = xs[0]
        if start > 0:  # windows begin `start` pixels in: the first ones are never read
            x = g.slice(x, [start, start], [h, w], [2, 3], f"{n}/start")
        pads, counts = [], []
        for size, k, s, o in ((h, kh, sh, oh), (w, kw, sw, ow)):
            eff = size - max(start, 0)
            before = max(0, -start)
            after = max(0, (o - 1) * s + k - (eff + before))  # the last window's overhang (ceil rule)
            pads.append((before, after))
            counts.append((eff + before + after - k) // s + 1)
        attrs = dict(kernel_shape=[kh, kw], strides=[sh, sw],
                     pads=[pads[0][0], pads[1][0], pads[0][1], pads[1][1]])
        if is_max:
            y = g.op("MaxPool", [x], n, **attrs)
        else:  # the divisor counts only the pixels inside the input, as cuda-convnet's truncated windows
            y = g.op("AveragePool", [x], n, count_include_pad=0, **attrs)
        if counts != [oh, ow]:  # a given outputsX below what the windows allow
            y = g.slice(y, [0, 0], [oh, ow], [2, 3], f"{n}/outputsX")
        return y

    # -- helpers -------------------------------------------------------------------------------------------
    def _offsets(self, in_hw, out_hw):
        """[(k, (lo_h, hi_h), (lo_w, hi_w), in_rows slice, in_cols slice)] for each window offset (i, j):
        k = i * kw + j, the outputs [lo_h, hi_h) x [lo_w, hi_w) whose window has that pixel inside the input,
        and the input pixels they take."""
        (h, w), (oh, ow) = in_hw, out_hw
        (kh, kw), (sh, sw), st = self.size, self.stride, self.start
        out = []
        for i in range(kh):
            lh, hh = offset_range(h, i, sh, st, oh)
            if hh <= lh:
                continue
            for j in range(kw):
                lw, hw = offset_range(w, j, sw, st, ow)
                if hw <= lw:
                    continue
                r0, c0 = st + lh * sh + i, st + lw * sw + j
                out.append((i * kw + j, (lh, hh), (lw, hw),
                            slice(r0, r0 + (hh - lh - 1) * sh + 1, sh), slice(c0, c0 + (hw - lw - 1) * sw + 1, sw)))
        return out

    def _inv_count(self, xp, dtype):
        """1 / (pixels inside the input) per window: a python float when every window is whole, else
        an (Ho, Wo, 1) array."""
        _, h, w = self.in_shapes[0]
        _, oh, ow = self.out_shape
        (kh, kw), (sh, sw), st = self.size, self.stride, self.start
        ch = window_counts(h, kh, sh, st, oh)
        cw = window_counts(w, kw, sw, st, ow)
        if all(c == kh for c in ch) and all(c == kw for c in cw):
            return 1.0 / (kh * kw)
        import numpy as np  # host-side table of a few numbers

        table = 1.0 / (np.asarray(ch, dtype=np.float64)[:, None] * np.asarray(cw, dtype=np.float64)[None, :])
        return xp.asarray(table[:, :, None], dtype=dtype)

    # -- forward / backward ----------------------------------------------------------------------------------
    def forward(self, xs, params, ctx):
        xp, x = ctx.xp, xs[0]
        is_max = self.props.pool == "max"
        if not self.is_global:
            if _is_cupy(x):
                out, idx = pool_forward_cupy(x, self, is_max)
            else:  # inference (keep_cache False) needs no argmax
                out, idx = pool_forward_numpy(x, self, is_max, want_idx=ctx.keep_cache, post=self.neuron_on)
            return out, (x.shape, idx)
        n, h, w, c = x.shape
        out = xp.empty((n, 1, 1, c), dtype=x.dtype)
        per_case = h * w * c * x.dtype.itemsize
        x3 = x.reshape(n, h * w, c)
        o2 = out.reshape(n, c)
        if is_max:
            idx = xp.empty((n, c), dtype=xp.int64)

            def chunk(n0, n1):
                idx[n0:n1] = x3[n0:n1].argmax(axis=1)
                o2[n0:n1] = xp.take_along_axis(x3[n0:n1], idx[n0:n1, None, :], axis=1)[:, 0, :]
                self.neuron_on(o2[n0:n1])
        else:
            idx = None
            scale = 1.0 / (h * w)

            def chunk(n0, n1):
                xp.multiply(x3[n0:n1].sum(axis=1), scale, out=o2[n0:n1])
                self.neuron_on(o2[n0:n1])
        run_chunks(chunk, n, per_case, xp)
        return out, (x.shape, idx)

    def backward(self, dout, cache, params, ctx):
        xp = ctx.xp
        shape, idx = cache
        is_max = self.props.pool == "max"
        if not self.is_global:
            fn = pool_backward_cupy if _is_cupy(dout) else pool_backward_numpy
            return [fn(dout, idx, self, is_max, shape)], {}
        n, h, w, c = shape
        dx = xp.empty(shape, dtype=dout.dtype)
        per_case = h * w * c * dout.dtype.itemsize
        dx3 = dx.reshape(n, h * w, c)
        d2 = dout.reshape(n, c)
        if is_max:
            pos = xp.arange(h * w).reshape(1, h * w, 1)

            def chunk(n0, n1):
                xp.multiply(pos == idx[n0:n1, None, :], d2[n0:n1, None, :], out=dx3[n0:n1])
        else:
            scale = 1.0 / (h * w)

            def chunk(n0, n1):
                dx3[n0:n1] = d2[n0:n1, None, :] * scale
        run_chunks(chunk, n, per_case, xp)
        return [dx], {}


# == windowed pooling: the NumPy code and its CUDA twin ==================================================
# `geo` is the PoolLayer (its size, stride, start, offsets, out_shape and _inv_count). Returns and caches
# agree between the two: out (N, Ho, Wo, C); idx the window offset k = i*kw + j of each output's (first)
# maximum, or None for avg.

def _is_cupy(a) -> bool:
    return type(a).__module__.startswith("cupy")


def pool_forward_numpy(x, geo, is_max: bool, want_idx: bool = True, post=None):
    """x: (N, H, W, C) -> (out, idx), by slices of the window offsets over chunks of cases (threads).
    want_idx False (inference): max pooling without the argmax, idx None. post: None, or a function
    applied in place to each chunk of out once it is done (the layer's fused relu)."""
    xp = get_array_module(x)
    n, h, w, c = x.shape
    _, oh, ow = geo.out_shape
    out = xp.empty((n, oh, ow, c), dtype=x.dtype)
    per_case = h * w * c * x.dtype.itemsize
    offsets = geo.offsets
    if is_max:
        kk = geo.size[0] * geo.size[1]
        idx = xp.zeros((n, oh, ow, c), dtype=xp.uint8 if kk < 256 else xp.int32) if want_idx else None
        full0 = offsets[0][1] == (0, oh) and offsets[0][2] == (0, ow)

        def chunk(n0, n1):
            o, xc = out[n0:n1], x[n0:n1]
            a = idx[n0:n1] if want_idx else None
            first = 0
            if full0:  # the first offset is inside every window: start from it
                k, _, _, rs, cs = offsets[0]
                o[...] = xc[:, rs, cs, :]
                first = 1
            else:
                o.fill(-xp.inf)
            for k, (lh, hh), (lw, hw), rs, cs in offsets[first:]:
                v = xc[:, rs, cs, :]
                ov = o[:, lh:hh, lw:hw, :]
                if a is None:
                    xp.maximum(ov, v, out=ov)
                    continue
                av = a[:, lh:hh, lw:hw, :]
                better = v > ov  # strict: the first maximum wins ties
                xp.maximum(ov, v, out=ov)
                # av = where(better, k, av), by arithmetic (masked stores are slow): av < k always
                step = xp.subtract(k, av, dtype=av.dtype)
                step *= better
                av += step
            if post is not None:
                post(o)
    else:
        idx = None
        inv = geo._inv_count(xp, x.dtype)

        def chunk(n0, n1):
            o, xc = out[n0:n1], x[n0:n1]
            k, (lh, hh), (lw, hw), rs, cs = offsets[0]
            if (lh, hh, lw, hw) != (0, oh, 0, ow):
                o.fill(0)
                o[:, lh:hh, lw:hw, :] += xc[:, rs, cs, :]
            else:
                o[...] = xc[:, rs, cs, :]
            for k, (lh, hh), (lw, hw), rs, cs in offsets[1:]:
                o[:, lh:hh, lw:hw, :] += xc[:, rs, cs, :]
            o *= inv
            if post is not None:
                post(o)

    run_chunks(chunk, n, per_case, xp)
    return out, idx


def pool_backward_numpy(dout, idx, geo, is_max: bool, x_shape):
    """dx (N, H, W, C) of pool_forward_numpy: each output's gradient added to the pixels of its window
    (max: to the pixel idx names), one window offset at a time."""
    xp = get_array_module(dout)
    n, h, w, c = x_shape
    dx = xp.zeros(x_shape, dtype=dout.dtype)
    per_case = h * w * c * dout.dtype.itemsize
    offsets = geo.offsets
    if is_max:
        def chunk(n0, n1):
            dc, d, a = dx[n0:n1], dout[n0:n1], idx[n0:n1]
            for k, (lh, hh), (lw, hw), rs, cs in offsets:
                g = d[:, lh:hh, lw:hw, :] * (a[:, lh:hh, lw:hw, :] == k)
                dc[:, rs, cs, :] += g
    else:
        inv = geo._inv_count(xp, dout.dtype)

        def chunk(n0, n1):
            dc = dx[n0:n1]
            g = dout[n0:n1] * inv
            for k, (lh, hh), (lw, hw), rs, cs in offsets:
                dc[:, rs, cs, :] += g[:, lh:hh, lw:hw, :]

    run_chunks(chunk, n, per_case, xp)
    return dx


# The CUDA twins. Forward: one thread per output (n, oy, ox, c) walks its window's offsets k = a*kw + b in
# the order the NumPy code takes them (strict > keeps the first maximum; a NaN sticks, as numpy.maximum's).
# Backward gathers instead of scattering (no atomics, deterministic): one thread per input pixel adds, in
# the same offset order, the gradients of the windows that hold it (max: only where idx names the pixel).
# The sums therefore round exactly as the NumPy ones. Compiled on first use, only for CuPy arrays.
_POOL_PREAMBLE = """
// 1 / (pixels of window (oy, ox) inside the input), rounded once from double as numpy's table is
template <typename T>
__device__ T cn_inv_count(int oy, int ox, int H, int W, int kh, int kw, int sh, int sw, int start) {
    const int y0 = start + oy * sh, x0 = start + ox * sw;
    const int ch = min(H, y0 + kh) - max(0, y0);
    const int cw = min(W, x0 + kw) - max(0, x0);
    return (T)(1.0 / ((double)ch * (double)cw));
}
"""
_POOL_GEOMETRY = "int32 H, int32 W, int32 C, int32 Ho, int32 Wo, int32 kh, int32 kw, int32 sh, int32 sw, int32 start"
_POOL_SOURCES = {
    "maxpool_fwd": (
        "raw T x, " + _POOL_GEOMETRY,
        "T out, int32 idx",
        """
        const int c = (int)(i % C);
        const ptrdiff_t r = i / C;
        const int ox = (int)(r % Wo);
        const int oy = (int)((r / Wo) % Ho);
        const ptrdiff_t img = r / ((ptrdiff_t)Wo * Ho);
        const int y0 = start + oy * sh, x0 = start + ox * sw;
        T best = -(T)__int_as_float(0x7f800000);
        int arg = 0;
        for (int a = 0; a < kh; ++a) {
            const int yy = y0 + a;
            if (yy < 0 || yy >= H) continue;
            for (int b = 0; b < kw; ++b) {
                const int xx = x0 + b;
                if (xx < 0 || xx >= W) continue;
                const T v = x[((img * H + yy) * W + xx) * C + c];
                if (v > best) {
                    best = v;
                    arg = a * kw + b;
                } else if (v != v) {
                    best = v;
                }
            }
        }
        out = best;
        idx = arg;
        """,
    ),
    "avgpool_fwd": (
        "raw T x, " + _POOL_GEOMETRY,
        "T out",
        """
        const int c = (int)(i % C);
        const ptrdiff_t r = i / C;
        const int ox = (int)(r % Wo);
        const int oy = (int)((r / Wo) % Ho);
        const ptrdiff_t img = r / ((ptrdiff_t)Wo * Ho);
        const int y0 = start + oy * sh, x0 = start + ox * sw;
        T s = 0;
        for (int a = 0; a < kh; ++a) {
            const int yy = y0 + a;
            if (yy < 0 || yy >= H) continue;
            for (int b = 0; b < kw; ++b) {
                const int xx = x0 + b;
                if (xx < 0 || xx >= W) continue;
                s += x[((img * H + yy) * W + xx) * C + c];
            }
        }
        out = s * cn_inv_count<T>(oy, ox, H, W, kh, kw, sh, sw, start);
        """,
    ),
    # is_max 1: raw idx is read; 0: avg (idx is a dummy)
    "pool_bwd": (
        "raw T dout, raw int32 idx, int32 is_max, " + _POOL_GEOMETRY,
        "T dx",
        """
        const int c = (int)(i % C);
        const ptrdiff_t r = i / C;
        const int px = (int)(r % W);
        const int py = (int)((r / W) % H);
        const ptrdiff_t img = r / ((ptrdiff_t)W * H);
        T s = 0;
        for (int a = 0; a < kh; ++a) {
            const int ty = py - start - a;  // = oy * sh for a window oy holding this row at offset a
            if (ty < 0 || ty % sh != 0) continue;
            const int oy = ty / sh;
            if (oy >= Ho) continue;
            for (int b = 0; b < kw; ++b) {
                const int tx = px - start - b;
                if (tx < 0 || tx % sw != 0) continue;
                const int ox = tx / sw;
                if (ox >= Wo) continue;
                const ptrdiff_t o = ((img * Ho + oy) * Wo + ox) * C + c;
                if (is_max) {
                    if (idx[o] == a * kw + b) s += dout[o];
                } else {
                    s += dout[o] * cn_inv_count<T>(oy, ox, H, W, kh, kw, sh, sw, start);
                }
            }
        }
        dx = s;
        """,
    ),
}


def _cuda_kernel(name: str):
    return cuda_elementwise(_POOL_SOURCES, name, preamble=_POOL_PREAMBLE)


def _geometry_args(geo, x_shape):
    _, h, w, c = x_shape
    _, oh, ow = geo.out_shape
    (kh, kw), (sh, sw) = geo.size, geo.stride
    return h, w, c, oh, ow, kh, kw, sh, sw, int(geo.start)


def pool_forward_cupy(x, geo, is_max: bool):
    """CUDA twin of pool_forward_numpy (idx is int32 here)."""
    import cupy

    x = cupy.ascontiguousarray(x)
    _, oh, ow = geo.out_shape
    out = cupy.empty((x.shape[0], oh, ow, x.shape[3]), dtype=x.dtype)
    args = _geometry_args(geo, x.shape)
    if is_max:
        idx = cupy.empty(out.shape, dtype=cupy.int32)
        _cuda_kernel("maxpool_fwd")(x, *args, out, idx)
        return out, idx
    _cuda_kernel("avgpool_fwd")(x, *args, out)
    return out, None


def pool_backward_cupy(dout, idx, geo, is_max: bool, x_shape):
    """CUDA twin of pool_backward_numpy."""
    import cupy

    dout = cupy.ascontiguousarray(dout)
    dx = cupy.empty(x_shape, dtype=dout.dtype)
    if idx is None:
        idx = cupy.empty((1,), dtype=cupy.int32)  # not read for avg
    else:
        idx = cupy.ascontiguousarray(idx, dtype=cupy.int32)
    _cuda_kernel("pool_bwd")(dout, idx, int(is_max), *_geometry_args(geo, x_shape), dx)
    return dx
