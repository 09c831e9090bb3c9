"""`conv` (shared weights) and `local` (one filter bank per output position) layers, by im2col + GEMM.

Activations are NHWC. For a window of fh x fw pixels the columns hold the pixels in (fh, fw, C) order, so
one window of an NHWC image is a run of fw*C contiguous floats per row, and `cols @ Wmat` gives the output
directly in NHWC: out (N*Ho*Wo, F) = cols (N*Ho*Wo, fh*fw*C) @ Wmat (fh*fw*C, F).

What was measured (2 threads of an AMD EPYC with AVX-512, OpenBLAS 0.3.31, float32, N = 128; ms for the
whole batch; the machine was shared, so take differences under ~10% as noise; see
benchmarks/bench_layers.py for the end-to-end numbers against PyTorch):

  * im2col from a strided view (as_strided, like sliding_window_view, then one copy) beats a loop over the
    fh*fw window offsets that copies one strided slice each: (32,32,50) 3x3: 5.8 vs 10.8; (3,32,32) 5x5:
    2.6 vs 14.9. With one input channel the copy into (rows, fh*fw) has an inner run of fw floats and is
    slow (17 for (1,64,101) 5x5); building the transposed columns (fh*fw, rows) copies whole image rows
    instead: 2.1. So a layer with one channel per group uses the transposed layout ("rows" mode below),
    every other layer the (rows, K) layout ("cols" mode).
  * Chunks of a few cases, so that a chunk's columns stay in the cache (~4 MiB; 1-4 MiB measure the same,
    8 is slower), are the largest single win: forward+backward of (32,32,50)->64 3x3 went from 500 to 155
    and (1,64,101)->32 5x5 from 470 to ~65. The columns of the whole batch (up to hundreds of MB) are never
    held: the backward pass rebuilds each chunk's columns, as fast as keeping them (215 vs 215) and
    without the memory. In the cache, OpenBLAS runs these GEMMs at ~200 GFLOP/s (150 on whole-batch ones).
  * col2im (the input gradient), per chunk: (a) one GEMM dcols = dout @ Wmat.T and fh*fw strided adds of
    its slices, or (b) one GEMM per window offset, dout @ W[i, j].T -> (rows, C), added into the shifted
    input. (b) wins everywhere measured: (32,20,49)->48 3x3 72 vs 81, (32,32,50)->64 134 vs 153,
    (64,16,25)->128 103 vs 109, (3,32,32)->32 5x5 28 vs 55 (whole backward pass). With one channel (b) is
    a GEMV per offset; there the transposed layout, Wmat @ dout.T -> (fh*fw, rows), wins: 16 vs 25.
    Measured again (2026-11-30, interleaved A/B in one process, backward pass only, the same machine
    shared with other jobs): for stride 1 and one group, the input gradient as the correlation of dout
    (padded by fh-1-ph) with the flipped, transposed filters, i.e. an im2col of dout (K' = fh*fw*F) and
    one GEMM per chunk written straight into dx, beats (b): (32,32,24)->32 5x5 128 vs 229, (32,20,49)->48
    3x3 188 vs 261, (32,16,12)->64 3x3 19.8 vs 22.1, (32,16,16)->32 5x5 81 vs 99; level on tiny maps
    ((64,5,13)->96: 28 vs 26). It needs no zeroed dxpad and no strided adds. Strided, grouped and
    one-channel layers keep (b) / the transposed layout. (The "far slower" of the line above, measured
    elsewhere and by another implementation, did not reproduce.)
  * Stride-1 3x3 layers may take Winograd F(2x2, 3x3) instead (winograd.py), chosen per shape by timing.
  * Where the time goes, backward of (32,20,49)->48 3x3 (62 in all): dW GEMM 19, dx GEMMs 20, dx adds 15,
    im2col 6, bias gradient 1. The forward pass is one im2col, the GEMM and the bias add, done while the
    chunk's output is in the cache. PyTorch's oneDNN kernels beat OpenBLAS's GEMM on the same FLOPs; that
    is most of the remaining gap on layers with many channels.
  * einsum vs matmul: the same BLAS call (45.8 vs 50.0, noise); matmul kept for its out= argument. The
    transposed GEMMs (out.T = Wmat.T @ cols.T, dW.T = dout.T @ cols) are not faster (within ~5%, or slower).
  * Groups: one GEMM per group on column slices (numpy passes strided operands to BLAS as leading
    dimensions): no copies of the per-group operands.
  * Threads (2026-11-30, quiet 2-core VM): with OpenBLAS on 2 threads and the chunks in order, a whole
    upcall step took 690 ms against 460 on 1 thread (conv2 forward 135 vs 83): each GEMM's other half
    ran on the other core, far from the columns this core had just written, and OpenBLAS's spinning
    threads took the core from the element-wise threads. Now BLAS runs on one thread and the chunks are
    spread over convnet's threads (cpu_threads.py), each building and multiplying its own columns: 255-290
    ms (conv2 forward 44). The weight and bias gradients are summed per fixed block of chunks and the
    blocks added in order, so the result is the same on any thread count. (Before, with BLAS on its 2
    threads, two Python threads each running half of the chunks were slower than one: 184 vs 153.)
  * 1x1 convolutions with stride 1 and no padding, and unpadded filters as large as the input, need no
    im2col at all: the input itself, reshaped, is the column matrix.
  * The bias gradient as a GEMV (ones @ dout) instead of dout.sum(0): 3.7 vs 12.7 for (827k, 32) (done per
    chunk, where the chunk of dout is in the cache for the other GEMMs anyway).

On CuPy (0.9-2.3x cuDNN's time on an H200, docs/GPU.md) the columns come from one CUDA kernel
that reads the unpadded input (zeros outside it), the GEMMs are cuBLAS calls on whole-batch chunks of up to
GPU_CHUNK_BYTES of columns (kept for backward when they fit in one chunk), and col2im gathers: one thread per
input pixel sums the column entries that came from it, in a fixed order (no atomics, deterministic). The
NumPy twins im2col_nhwc_numpy / col2im_nhwc_numpy state what both compute.

The input gradient is skipped when the net says none is needed (`layer.input_grads = False`, set on
layers fed by the data layer): then backward returns [None].

Weight layouts (fixed, so a model moves to PyTorch by copying arrays):
  conv   weights (filters, channels/groups, fh, fw)        = torch.nn.Conv2d.weight
         biases (filters,), or (filters, Ho, Wo) when sharedBiases is 0 (one bias per output, cuda-convnet)
  local  weights (Ho*Wo, filters, channels/groups*fh*fw), the last axis in (channel, row, column) order,
         which is the order of torch.nn.functional.unfold: out[n, f, p] = sum_k W[p, f, k] *
         unfold(x)[n, k, p] (per group); the filters of group g read channels g*C/groups .. (g+1)*C/groups.
         biases (filters, Ho, Wo), or (filters,) when sharedBiases is 1
"""
from __future__ import annotations

from convnet_cli.backend import cuda_elementwise, get_array_module
from convnet_cli.layers.base import Key, Layer, column_sums, conv_out_size, fmt_hw, register
from convnet_cli.layers import winograd
from convnet_cli.layers.cpu_threads import blocks, chunk_bounds, matmul, ordered_sum, parallel_map, parallel_threads
from convnet_cli.layers.init import INIT_KINDS, init_biases, init_weights

# Columns of one chunk of cases are kept around this size so that they stay in the cache. On a GPU there
# is no cache to fit: chunks only bound the memory that the columns take.
CHUNK_BYTES = 4 << 20
GPU_CHUNK_BYTES = 512 << 20

CONV_KEYS = {
    "filters": Key("int", min=1, doc="number of output channels"),
    "filterSize": Key("pair", min=1, doc="an int or [h, w]"),
    "padding": Key("pair", (0, 0), min=0, doc="zeros added on each side, an int or [h, w]"),
    "stride": Key("pair", (1, 1), min=1),
    "groups": Key("int", 1, min=1, doc="filters of group g see only the channels of group g"),
    "sharedBiases": Key("bool", True, doc="0: one bias per output position (C, H, W)"),
    "initW": Key("float", 0.01),
    "initB": Key("float", 0.0),
    "init": Key("str", "gaussian", choices=INIT_KINDS),
}


def _hw(pair) -> str:
    h, w = pair
    return str(h) if h == w else f"{h}x{w}"


# -- im2col / col2im on NHWC arrays --------------------------------------------------------------------------
def pad_nhwc(x, ph: int, pw: int, xp):
    """x: (N, H, W, C) -> (N, H+2ph, W+2pw, C) with zero borders (x itself when no padding)."""
    if ph == 0 and pw == 0:
        return x
    n, h, w, c = x.shape
    out = xp.zeros((n, h + 2 * ph, w + 2 * pw, c), dtype=x.dtype)
    out[:, ph:ph + h, pw:pw + w, :] = x
    return out


def windows(xpad, fh, fw, sh, sw, ho, wo, xp, order="cols"):
    """A strided view of every filter window of xpad (N, Hp, Wp, C), no copy.

    order 'cols': (N, Ho, Wo, fh, fw, C); order 'rows': (fh, fw, C, N, Ho, Wo).
    """
    n, _, _, c = xpad.shape
    s_n, s_h, s_w, s_c = xpad.strides
    as_strided = xp.lib.stride_tricks.as_strided
    if order == "cols":
        return as_strided(xpad, (n, ho, wo, fh, fw, c), (s_n, s_h * sh, s_w * sw, s_h, s_w, s_c))
    return as_strided(xpad, (fh, fw, c, n, ho, wo), (s_h, s_w, s_c, s_n, s_h * sh, s_w * sw))


def _window_slice(i, j, sh, sw, ho, wo):
    """The index of the input pixels that window offset (i, j) touches, for every output position."""
    return (slice(None), slice(i, i + sh * (ho - 1) + 1, sh), slice(j, j + sw * (wo - 1) + 1, sw))


class _Geometry:
    """Sizes of one conv/local layer, per case: input (C, H, W) -> output (F, Ho, Wo)."""

    def __init__(self, layer, in_shape, props):
        c, h, w = in_shape
        (fh, fw), (ph, pw), (sh, sw) = props.filterSize, props.padding, props.stride
        g, f = props.groups, props.filters
        if fh > h + 2 * ph or fw > w + 2 * pw:
            padded = f" with padding {_hw((ph, pw))}" if ph or pw else ""
            raise layer.error(f"filterSize {_hw((fh, fw))} is larger than its input ({fmt_hw(in_shape)}){padded}; "
                              f"use a smaller filterSize or more padding")
        if c % g:
            raise layer.error(f"its input's {c} channels are not divisible by groups {g}; "
                              f"use a groups value that divides {c}")
        if f % g:
            raise layer.error(f"filters {f} is not divisible by groups {g}; use a multiple of {g}")
        ho, wo = conv_out_size(h, fh, ph, sh), conv_out_size(w, fw, pw, sw)
        if ho < 1 or wo < 1:
            raise layer.error(f"output would be empty ({ho}x{wo}) for input {fmt_hw(in_shape)}")
        self.c, self.h, self.w, self.f, self.g = c, h, w, f, g
        self.fh, self.fw, self.ph, self.pw, self.sh, self.sw = fh, fw, ph, pw, sh, sw
        self.ho, self.wo = ho, wo
        self.cg, self.fg = c // g, f // g
        self.k = fh * fw * self.cg  # column length per group
        # One channel per group: transposed columns (see the measurements above).
        self.mode = "rows" if self.cg == 1 else "cols"

    def chunk_cases(self, n, itemsize, xp):
        per_case = self.ho * self.wo * self.k * itemsize
        budget = CHUNK_BYTES if xp.__name__ == "numpy" else GPU_CHUNK_BYTES
        return max(1, min(n, budget // max(per_case, 1)))

    def transposed_dx(self):
        """True when the input gradient is taken as a correlation of dout (stride 1, one group, channels,
        padding below the filter size): measured faster than per-offset GEMMs and adds (see above)."""
        return (self.sh == 1 and self.sw == 1 and self.g == 1 and self.mode == "cols"
                and self.ph <= self.fh - 1 and self.pw <= self.fw - 1)

    def direct(self):
        """True when the (unpadded) input, reshaped, is already the column matrix."""
        if self.g != 1 or self.ph or self.pw:
            return False
        one_by_one = self.fh == 1 and self.fw == 1 and self.sh == 1 and self.sw == 1
        full = self.fh == self.h and self.fw == self.w
        return one_by_one or full


class _ConvBase(Layer):
    keys = CONV_KEYS
    learned = ("weights", "biases")
    skips_input_grads = True  # the net sets input_grads False when no input gradient is wanted (first layer)

    def infer_shape(self):
        self.geo = _Geometry(self, self.in_shapes[0], self.props)
        return (self.geo.f, self.geo.ho, self.geo.wo)

    def _fans(self):
        geo = self.geo
        return geo.cg * geo.fh * geo.fw, geo.fg * geo.fh * geo.fw

    def _bias_shape(self) -> tuple:
        geo = self.geo
        return (geo.f,) if self.props.sharedBiases else (geo.f, geo.ho, geo.wo)

    def init_params(self, rng):
        shapes = self.param_shapes()
        fan_in, fan_out = self._fans()
        w = init_weights(rng, self.props.init, shapes["weights"], fan_in, fan_out, self.props.initW)
        return {"weights": w, "biases": init_biases(rng, self.props.init, shapes["biases"], fan_in, self.props.initB)}

    def filter_bank(self, params):
        w = params.get("weights", params.get("weights.0"))  # several inputs: the first input's filters
        return None if w is None else self._filters(w)

    def _onnx_geometry(self) -> dict:
        """The Conv attributes of the layer's windows (pads [top, left, bottom, right])."""
        geo = self.geo
        return dict(kernel_shape=[geo.fh, geo.fw], pads=[geo.ph, geo.pw, geo.ph, geo.pw], strides=[geo.sh, geo.sw])


@register
class ConvLayer(_ConvBase):
    """Convolution with weights shared across positions; x: (N, H, W, C) -> (N, Ho, Wo, F)."""

    type = "conv"
    fuses_neuron = True  # every NumPy path of forward applies `chunk_neuron` (CuPy: the net applies it)

    def param_shapes(self):
        geo = self.geo
        return {"weights": (geo.f, geo.cg, geo.fh, geo.fw), "biases": self._bias_shape()}

    def _filters(self, w):
        return w, f"{self.name} (conv, {w.shape[0]} filters)"

    def to_onnx(self, g, xs, params):
        """Conv (groups, pads, strides); an unshared bias (F, Ho, Wo) is an Add after it."""
        w, b, n = params["weights"], params["biases"], self.name
        attrs = dict(self._onnx_geometry(), group=self.geo.g)
        if b.ndim == 1:
            return g.op("Conv", [xs[0], g.const(f"{n}/weights", w), g.const(f"{n}/biases", b)], n, **attrs)
        y = g.op("Conv", [xs[0], g.const(f"{n}/weights", w)], n, **attrs)
        return g.op("Add", [y, g.const(f"{n}/biases", b[None])], n)

    # weights (F, Cg, fh, fw) <-> per-group GEMM matrices (g, fh*fw*Cg, Fg)
    def _wmats(self, w, dtype):
        geo = self.geo
        w = w.reshape(geo.g, geo.fg, geo.cg, geo.fh, geo.fw).transpose(0, 3, 4, 2, 1)
        return w.reshape(geo.g, geo.k, geo.fg).astype(dtype)  # astype copies: contiguous

    def _from_wmats(self, dw):
        geo = self.geo
        dw = dw.reshape(geo.g, geo.fh, geo.fw, geo.cg, geo.fg).transpose(0, 4, 3, 1, 2)
        return dw.reshape(geo.f, geo.cg, geo.fh, geo.fw).copy()  # contiguous, like the weights

    def _im2col(self, xpad, buf, xp):
        """Columns of the cases in xpad for every group: [(m, K) or, in 'rows' mode, (K, m)]."""
        geo = self.geo
        n = xpad.shape[0]
        m = n * geo.ho * geo.wo
        out = []
        for gi in range(geo.g):
            src = xpad if geo.g == 1 else xpad[..., gi * geo.cg:(gi + 1) * geo.cg]
            view = windows(src, geo.fh, geo.fw, geo.sh, geo.sw, geo.ho, geo.wo, xp, geo.mode)
            cols = buf[gi, :m * geo.k]
            cols.reshape(view.shape)[...] = view
            out.append(cols.reshape(m, geo.k) if geo.mode == "cols" else cols.reshape(geo.k, m))
        return out

    def forward(self, xs, params, ctx):
        xp, x, geo = ctx.xp, xs[0], self.geo
        n = x.shape[0]
        p = geo.ho * geo.wo
        wm = self._wmats(params["weights"], x.dtype)
        out = xp.empty((n, geo.ho, geo.wo, geo.f), dtype=x.dtype)
        out2 = out.reshape(n * p, geo.f)
        b = params["biases"].astype(x.dtype, copy=False)
        b = b if b.ndim == 1 else b.transpose(1, 2, 0)  # (F,) or (Ho, Wo, F)
        if geo.direct():
            matmul(x.reshape(n * p, geo.k), wm[0], out=out2)
            out += b
            return self.neuron_on(out), (x, x)
        if _is_cupy(x):
            return self._forward_cupy(x, wm, b, out, ctx)
        if winograd.eligible(geo):
            w33 = wm[0].reshape(3, 3, geo.c, geo.f)
            runs = {"direct": lambda: self._forward_im2col(x, wm, b, xp.empty_like(out), xp),
                    "winograd": lambda: (winograd.conv_forward(x, w33, b, geo.ph, geo.pw, xp.empty_like(out),
                                                               post=self.neuron_on), None)}
            flops = 2.0 * n * p * geo.k * geo.f
            algo, res = winograd.choose(self._algo_key("forward", x), flops, runs, ctx.algos)
            out, xpad = res if res is not None else runs[algo]()
            return out, (x, None)
        self._forward_im2col(x, wm, b, out, xp)
        # the padded copy of x is not kept: backward pads again (one copy of the map, while the layers
        # above have already let their caches go), which saves a map-sized array per layer at the peak
        return out, (x, None)

    def _algo_key(self, direction, x):
        """The shape key of the Winograd / im2col choice. Both paths run in chunks of cases, so the batch
        size does not enter: a net times each layer once, not again for a last, smaller minibatch."""
        geo = self.geo
        extra = f" dx{int(bool(self.input_grads))}" if direction == "backward" else ""
        return f"{direction} conv3x3 {geo.h}x{geo.w}x{geo.c}->{geo.f} pad{geo.ph},{geo.pw} {x.dtype}{extra}"

    def _forward_im2col(self, x, wm, b, out, xp):
        """(out, xpad): im2col + GEMM in chunks of cases (NumPy)."""
        geo = self.geo
        n = x.shape[0]
        p = geo.ho * geo.wo
        out2 = out.reshape(n * p, geo.f)
        xpad = pad_nhwc(x, geo.ph, geo.pw, xp)
        nc = geo.chunk_cases(n, x.dtype.itemsize, xp)
        bounds = chunk_bounds(n, nc)
        threads = parallel_threads(xp, len(bounds))
        bufs = [xp.empty((geo.g, nc * p * geo.k), dtype=x.dtype) for _ in range(threads)]

        def chunk(worker, bound):  # each thread builds its own columns and multiplies them in its cache
            n0, n1 = bound
            rows = slice(n0 * p, n1 * p)
            for gi, cols in enumerate(self._im2col(xpad[n0:n1], bufs[worker], xp)):
                lhs = cols if geo.mode == "cols" else cols.T
                xp.matmul(lhs, wm[gi], out=out2[rows, gi * geo.fg:(gi + 1) * geo.fg])
            out[n0:n1] += b  # while the chunk's output is in the cache
            self.neuron_on(out[n0:n1])  # and a fused relu (see base.py)

        parallel_map(chunk, bounds, threads)
        return out, xpad

    def backward(self, dout, cache, params, ctx):
        xp, geo = ctx.xp, self.geo
        x, xpad = cache
        n = x.shape[0]
        p = geo.ho * geo.wo
        dtype = x.dtype
        d2 = dout.reshape(n * p, geo.f)
        wm = self._wmats(params["weights"], dtype)
        want_dx = self.input_grads
        shared = params["biases"].ndim == 1
        if not shared:  # one bias per output: (F, Ho, Wo)
            db = (xp.ones(n, dtype=dtype) @ dout.reshape(n, p * geo.f)).reshape(geo.ho, geo.wo, geo.f)
            db = db.transpose(2, 0, 1).copy()
        if geo.direct():
            cols = x.reshape(n * p, geo.k)
            dw = matmul(cols.T, d2)[None]
            dx = matmul(d2, wm[0].T).reshape(x.shape) if want_dx else None
            if shared:
                db = column_sums(d2, xp)
            return [dx], {"weights": self._from_wmats(dw), "biases": db}
        if _is_cupy(x):
            dw, dx = self._backward_cupy(x, xpad, d2, wm, want_dx)
            if shared:
                db = column_sums(d2, get_array_module(x))
            return [dx], {"weights": self._from_wmats(dw), "biases": db}
        if winograd.eligible(geo):
            runs = {"direct": lambda: self._backward_im2col(x, xpad, dout, wm, want_dx, shared, xp),
                    "winograd": lambda: self._backward_winograd(x, dout, wm, want_dx, shared, xp)}
            flops = (3.0 if want_dx else 2.0) * n * p * geo.k * geo.f
            algo, res = winograd.choose(self._algo_key("backward", x), flops, runs, ctx.algos)
            dw, dx, db_shared = res if res is not None else runs[algo]()
        else:
            dw, dx, db_shared = self._backward_im2col(x, xpad, dout, wm, want_dx, shared, xp)
        if shared:
            db = db_shared
        return [dx], {"weights": self._from_wmats(dw), "biases": db}

    def _backward_winograd(self, x, dout, wm, want_dx, shared, xp):
        geo = self.geo
        w33 = wm[0].reshape(3, 3, geo.c, geo.f)
        dw33, dx = winograd.conv_backward(x, dout, w33, geo.ph, geo.pw, want_dx)
        db = xp.ones(dout.size // geo.f, dtype=x.dtype) @ dout.reshape(-1, geo.f) if shared else None
        return dw33.reshape(1, geo.k, geo.f), dx, db

    def _backward_im2col(self, x, xpad, dout, wm, want_dx, shared, xp):
        """(dW as (g, K, Fg) GEMM matrices, dx or None, the (F,) bias gradient or None) on NumPy."""
        geo = self.geo
        n = x.shape[0]
        p = geo.ho * geo.wo
        dtype = x.dtype
        d2 = dout.reshape(n * p, geo.f)
        if xpad is None:  # the forward pass does not keep its padded copy
            xpad = pad_nhwc(x, geo.ph, geo.pw, xp)
        db = xp.zeros(geo.f, dtype=dtype) if shared else None
        if want_dx and geo.transposed_dx():
            dw, dx = self._backward_transposed(x, xpad, dout, wm, db, xp)
            return dw, dx, db

        dxpad = xp.zeros(xpad.shape, dtype=dtype) if want_dx else None
        nc = geo.chunk_cases(n, dtype.itemsize, xp)
        blks = blocks(chunk_bounds(n, nc))
        threads = parallel_threads(xp, len(blks))
        bufs = [(xp.empty((geo.g, nc * p * geo.k), dtype=dtype),
                 xp.empty(nc * p * (geo.k if geo.mode == "rows" else geo.cg), dtype=dtype) if want_dx else None)
                for _ in range(threads)]
        ones = xp.ones(nc * p, dtype=dtype)
        if want_dx and geo.mode == "cols":
            # per window offset: (Fg, Cg) matrices, W[i, j].T of each group
            wo_t = wm.reshape(geo.g, geo.fh, geo.fw, geo.cg, geo.fg).transpose(0, 1, 2, 4, 3).copy()

        def block(worker, blk):  # (dW, db) of a block of chunks; dx written in place (its cases only)
            buf, dbuf = bufs[worker]
            dw_b = xp.zeros((geo.g, geo.k, geo.fg), dtype=dtype)
            db_b = xp.zeros(geo.f, dtype=dtype) if shared else None
            for n0, n1 in blk:
                m = (n1 - n0) * p
                rows = slice(n0 * p, n1 * p)
                if shared:  # a GEMV while the chunk of dout is in the cache
                    db_b += ones[:m] @ d2[rows]
                for gi, cols in enumerate(self._im2col(xpad[n0:n1], buf, xp)):
                    d = d2[rows, gi * geo.fg:(gi + 1) * geo.fg]
                    dw_b[gi] += (cols.T if geo.mode == "cols" else cols) @ d
                    if not want_dx:
                        continue
                    dx5 = dxpad[n0:n1].reshape(n1 - n0, *xpad.shape[1:3], geo.g, geo.cg)[..., gi, :]
                    if geo.mode == "rows":
                        dcols = dbuf[:m * geo.k].reshape(geo.k, m)
                        xp.matmul(wm[gi], d.T, out=dcols)
                        dcols = dcols.reshape(geo.fh, geo.fw, n1 - n0, geo.ho, geo.wo)
                        for i in range(geo.fh):
                            for j in range(geo.fw):
                                dx5[_window_slice(i, j, geo.sh, geo.sw, geo.ho, geo.wo) + (0,)] += dcols[i, j]
                    else:
                        part = dbuf[:m * geo.cg].reshape(m, geo.cg)
                        for i in range(geo.fh):
                            for j in range(geo.fw):
                                xp.matmul(d, wo_t[gi, i, j], out=part)
                                dx5[_window_slice(i, j, geo.sh, geo.sw, geo.ho, geo.wo)] += part.reshape(
                                    n1 - n0, geo.ho, geo.wo, geo.cg)
            return dw_b, db_b

        parts = parallel_map(block, blks, threads)
        dw = ordered_sum(pt[0] for pt in parts)
        if shared:
            db += ordered_sum(pt[1] for pt in parts)
        dx = None
        if want_dx:
            dx = dxpad[:, geo.ph:geo.ph + geo.h, geo.pw:geo.pw + geo.w, :] if (geo.ph or geo.pw) else dxpad
        return dw, dx, db

    def _backward_transposed(self, x, xpad, dout, wm, db, xp):
        """dW and dx of a stride-1 conv with channels: per chunk of cases, dW += cols.T @ dout (the columns
        of x built again in the cache), and dx = the correlation of dout, padded by (fh-1-ph, fw-1-pw),
        with the flipped, transposed filters: an im2col of dout (K' = fh*fw*F) and one GEMM written
        straight into dx, with no zeroed dxpad and no strided adds. `db` the (F,) bias gradient to add
        into, or None."""
        geo = self.geo
        n = x.shape[0]
        p = geo.ho * geo.wo
        hw = geo.h * geo.w
        dtype = x.dtype
        d2 = dout.reshape(n * p, geo.f)
        kt = geo.fh * geo.fw * geo.f
        # (fh, fw, C, F) -> flipped in (i, j) -> (fh*fw*F, C)
        wflip = wm[0].reshape(geo.fh, geo.fw, geo.c, geo.f)[::-1, ::-1].transpose(0, 1, 3, 2)
        wflip = xp.ascontiguousarray(wflip).reshape(kt, geo.c)
        dpad = pad_nhwc(dout, geo.fh - 1 - geo.ph, geo.fw - 1 - geo.pw, xp)
        dx = xp.empty(x.shape, dtype=dtype)
        dx2 = dx.reshape(n * hw, geo.c)
        per_case = max(p * geo.k, hw * kt) * dtype.itemsize
        nc = max(1, min(n, CHUNK_BYTES // max(per_case, 1)))
        blks = blocks(chunk_bounds(n, nc))
        threads = parallel_threads(xp, len(blks))
        bufs = [(xp.empty((1, nc * p * geo.k), dtype=dtype), xp.empty(nc * hw * kt, dtype=dtype))
                for _ in range(threads)]
        ones = xp.ones(nc * p, dtype=dtype) if db is not None else None

        def block(worker, blk):  # (dW, db) of a block of chunks; dx written in place (its cases only)
            buf, tbuf = bufs[worker]
            dw_b = xp.zeros((geo.k, geo.f), dtype=dtype)
            db_b = xp.zeros(geo.f, dtype=dtype) if ones is not None else None
            for n0, n1 in blk:
                rows = slice(n0 * p, n1 * p)
                d = d2[rows]
                if ones is not None:
                    db_b += ones[:d.shape[0]] @ d
                cols = self._im2col(xpad[n0:n1], buf, xp)[0]
                dw_b += cols.T @ d
                view = windows(dpad[n0:n1], geo.fh, geo.fw, 1, 1, geo.h, geo.w, xp)
                tcols = tbuf[:(n1 - n0) * hw * kt]
                tcols.reshape(view.shape)[...] = view
                xp.matmul(tcols.reshape((n1 - n0) * hw, kt), wflip, out=dx2[n0 * hw:n1 * hw])
            return dw_b, db_b

        parts = parallel_map(block, blks, threads)
        dw = ordered_sum(pt[0] for pt in parts)[None]
        if db is not None:
            db += ordered_sum(pt[1] for pt in parts)
        return dw, dx

    # -- CuPy: im2col by a kernel, one cuBLAS GEMM per chunk and group, col2im by a gathering kernel --------
    def _forward_cupy(self, x, wm, b, out, ctx):
        import cupy

        geo = self.geo
        x = cupy.ascontiguousarray(x)
        n = x.shape[0]
        p = geo.ho * geo.wo
        out2 = out.reshape(n * p, geo.f)
        nc = geo.chunk_cases(n, x.dtype.itemsize, cupy)
        kept = None
        for n0 in range(0, n, nc):
            n1 = min(n, n0 + nc)
            rows = slice(n0 * p, n1 * p)
            for gi in range(geo.g):
                cols = im2col_nhwc_cupy(x[n0:n1], geo, gi)
                if geo.g == 1:
                    cupy.matmul(cols, wm[0], out=out2[rows])
                else:
                    out2[rows, gi * geo.fg:(gi + 1) * geo.fg] = cols @ wm[gi]
                if nc >= n and geo.g == 1 and ctx.train:
                    kept = cols  # one chunk: backward reuses the columns instead of building them again
        out += b
        return out, (x, kept)

    def _backward_cupy(self, x, kept, d2, wm, want_dx):
        """(dW as (g, K, Fg) GEMM matrices, dx or None) on CuPy; `kept` the forward's columns or None."""
        import cupy

        geo = self.geo
        n = x.shape[0]
        p = geo.ho * geo.wo
        dw = cupy.zeros((geo.g, geo.k, geo.fg), dtype=x.dtype)
        dx = cupy.empty(x.shape, dtype=x.dtype) if want_dx else None
        nc = geo.chunk_cases(n, x.dtype.itemsize, cupy)
        for n0 in range(0, n, nc):
            n1 = min(n, n0 + nc)
            rows = slice(n0 * p, n1 * p)
            for gi in range(geo.g):
                cols = kept if kept is not None else im2col_nhwc_cupy(x[n0:n1], geo, gi)
                d = d2[rows, gi * geo.fg:(gi + 1) * geo.fg]
                dw[gi] += cols.T @ d
                if want_dx:
                    _col2im_cupy(d @ wm[gi].T, geo, gi, dx[n0:n1])
        return dw, dx


# == im2col / col2im on NHWC: the NumPy reference and the CUDA twins =======================================
# The CPU path above builds its columns from strided views in chunks (and in 'rows' mode for one channel);
# these functions state what every path computes, for one group g of channels:
#   cols[(n, oy, ox), (i, j, c)] = xpad[n, oy*sh + i, ox*sw + j, g*Cg + c]          (N*Ho*Wo, fh*fw*Cg)
#   dx[n, y, x, c] = sum over (oy, ox, i, j) with oy*sh + i = y + ph, ox*sw + j = x + pw of dcols[...]
# The CUDA col2im gathers (one thread per input pixel, offsets in (i, j) order, as the NumPy loop adds
# them): no atomics, deterministic, and the same rounding as im2col's NumPy twin.

def _is_cupy(a) -> bool:
    return type(a).__module__.startswith("cupy")


def im2col_nhwc_numpy(x, geo, group: int = 0):
    """x: (N, H, W, C) -> cols (N*Ho*Wo, fh*fw*Cg) of channel group `group`; geo: a conv layer's geometry."""
    xp = get_array_module(x)
    xpad = pad_nhwc(x, geo.ph, geo.pw, xp)
    src = xpad[..., group * geo.cg:(group + 1) * geo.cg]
    view = windows(src, geo.fh, geo.fw, geo.sh, geo.sw, geo.ho, geo.wo, xp, "cols")
    return xp.ascontiguousarray(view).reshape(x.shape[0] * geo.ho * geo.wo, geo.k)


def col2im_nhwc_numpy(dcols, geo, n: int):
    """dcols (N*Ho*Wo, fh*fw*Cg) -> dx (N, H, W, Cg): the transpose of im2col_nhwc_numpy."""
    xp = get_array_module(dcols)
    dxpad = xp.zeros((n, geo.h + 2 * geo.ph, geo.w + 2 * geo.pw, geo.cg), dtype=dcols.dtype)
    d = dcols.reshape(n, geo.ho, geo.wo, geo.fh, geo.fw, geo.cg)
    for i in range(geo.fh):
        for j in range(geo.fw):
            dxpad[_window_slice(i, j, geo.sh, geo.sw, geo.ho, geo.wo)] += d[:, :, :, i, j, :]
    return xp.ascontiguousarray(dxpad[:, geo.ph:geo.ph + geo.h, geo.pw:geo.pw + geo.w, :])


_CONV_GEOMETRY = ("int32 H, int32 W, int32 C, int32 Ho, int32 Wo, int32 fh, int32 fw, int32 sh, int32 sw, "
                  "int32 ph, int32 pw, int32 c0, int32 cg")
_CUDA_SOURCES = {
    # one thread per element of cols (m, K); x is read through a raw argument, zero outside the input
    "im2col_nhwc": (
        "raw T x, " + _CONV_GEOMETRY,
        "T col",
        """
        const int K = fh * fw * cg;
        const ptrdiff_t row = i / K;
        const int k = (int)(i % K);
        const int c = k % cg;
        const int b = (k / cg) % fw;
        const int a = k / (cg * fw);
        const int ox = (int)(row % Wo);
        const int oy = (int)((row / Wo) % Ho);
        const ptrdiff_t img = row / ((ptrdiff_t)Wo * Ho);
        const int yy = oy * sh - ph + a;
        const int xx = ox * sw - pw + b;
        col = (yy >= 0 && yy < H && xx >= 0 && xx < W) ? (T)x[((img * H + yy) * W + xx) * C + c0 + c] : (T)0;
        """,
    ),
    # one thread per input element (img, y, x, c) of the group's Cg channels; writes dx[..., c0 + c]
    "col2im_nhwc": (
        "raw T dcols, " + _CONV_GEOMETRY,
        "raw T dx",
        """
        const int K = fh * fw * cg;
        const int c = (int)(i % cg);
        const ptrdiff_t pix = i / cg;
        const int px = (int)(pix % W);
        const int py = (int)((pix / W) % H);
        const ptrdiff_t img = pix / ((ptrdiff_t)W * H);
        T s = 0;
        for (int a = 0; a < fh; ++a) {
            const int ty = py + ph - a;
            if (ty < 0 || ty % sh != 0) continue;
            const int oy = ty / sh;
            if (oy >= Ho) continue;
            for (int b = 0; b < fw; ++b) {
                const int tx = px + pw - b;
                if (tx < 0 || tx % sw != 0) continue;
                const int ox = tx / sw;
                if (ox >= Wo) continue;
                s += dcols[((img * Ho + oy) * Wo + ox) * K + (a * fw + b) * cg + c];
            }
        }
        dx[pix * C + c0 + c] = s;
        """,
    ),
}


def _cuda_kernel(name: str):
    return cuda_elementwise(_CUDA_SOURCES, name)


def _geometry_args(geo, c, group):
    return (geo.h, geo.w, c, geo.ho, geo.wo, geo.fh, geo.fw, geo.sh, geo.sw, geo.ph, geo.pw, group * geo.cg, geo.cg)


def im2col_nhwc_cupy(x, geo, group: int = 0):
    """CUDA twin of im2col_nhwc_numpy."""
    import cupy

    x = cupy.ascontiguousarray(x)
    cols = cupy.empty((x.shape[0] * geo.ho * geo.wo, geo.k), dtype=x.dtype)
    _cuda_kernel("im2col_nhwc")(x, *_geometry_args(geo, x.shape[3], group), cols)
    return cols


def _col2im_cupy(dcols, geo, group, dx):
    """Write the gradient of group `group` into the channels it owns of dx (n, H, W, C), a C-contiguous view."""
    import cupy

    dcols = cupy.ascontiguousarray(dcols)
    n = dx.shape[0]
    _cuda_kernel("col2im_nhwc")(dcols, *_geometry_args(geo, dx.shape[3], group), dx,
                                size=n * geo.h * geo.w * geo.cg)


def col2im_nhwc_cupy(dcols, geo, n: int):
    """CUDA twin of col2im_nhwc_numpy."""
    import cupy

    dx = cupy.empty((n, geo.h, geo.w, geo.cg), dtype=dcols.dtype)
    _col2im_cupy(dcols, geo, 0, dx)
    return dx


@register
class LocalLayer(_ConvBase):
    """Locally connected: like conv, but every output position has its own filters (no weight sharing).

    x: (N, H, W, C) -> (N, Ho, Wo, F). weights (Ho*Wo, F, C/groups*fh*fw), the last axis in (channel, row,
    column) order; biases (F, Ho, Wo), or (F,) with sharedBiases 1. The columns of the whole batch are
    built once, as (groups, Ho*Wo, N, fh*fw*C/groups), and kept for the backward pass; one batched matmul
    over the (group, position) pairs does the rest.
    """

    type = "local"
    keys = dict(CONV_KEYS, sharedBiases=Key("bool", False, doc="1: one bias per filter, shared by positions"))

    def param_shapes(self):
        geo = self.geo
        return {"weights": (geo.ho * geo.wo, geo.f, geo.k), "biases": self._bias_shape()}

    def _filters(self, w):
        """The filter bank of the output position at the center of the map."""
        geo = self.geo
        center = (geo.ho // 2) * geo.wo + geo.wo // 2
        bank = w[center].reshape(w.shape[1], geo.cg, geo.fh, geo.fw)
        return bank, f"{self.name} (local, the filters at output position {geo.ho // 2},{geo.wo // 2})"

    def to_onnx(self, g, xs, params):
        """Patches by a Conv with one-hot filters (the unfold order (channel, row, column), exact: each output
        is one input pixel times 1 plus zeros), then one batched MatMul over the positions."""
        import numpy as np  # host arrays: the export's constants

        geo, n = self.geo, self.name
        k2 = geo.fh * geo.fw
        pos = geo.ho * geo.wo
        # one-hot filters: output channel c*fh*fw + i*fw + j copies pixel (i, j) of channel c (unfold's order)
        eye = np.zeros((geo.c * k2, 1, geo.fh, geo.fw), np.float32)
        for c in range(geo.c):
            for i in range(geo.fh):
                for j in range(geo.fw):
                    eye[c * k2 + i * geo.fw + j, 0, i, j] = 1
        patches = g.op("Conv", [xs[0], g.const(f"{n}/unfold", eye)], f"{n}/patches", **self._onnx_geometry(),
                       group=geo.c)
        cols = g.transpose(g.reshape(patches, [0, geo.g, geo.k, pos], f"{n}/cols"), (1, 3, 0, 2),
                           f"{n}/cols")  # (g, P, N, Kg)
        w = params["weights"].reshape(pos, geo.g, geo.fg, geo.k).transpose(1, 0, 3, 2)  # (g, P, Kg, Fg)
        y = g.op("MatMul", [cols, g.const(f"{n}/weights", w)], n)  # (g, P, N, Fg)
        y = g.reshape(g.transpose(y, (2, 0, 3, 1), n), [0, geo.f, geo.ho, geo.wo], n)
        b = params["biases"]
        b = b.reshape(1, geo.f, 1, 1) if b.ndim == 1 else b[None]
        return g.op("Add", [y, g.const(f"{n}/biases", b)], n)

    # weights (P, F, Cg*fh*fw) in (c, i, j) order <-> (g, P, fh*fw*Cg, Fg) GEMM matrices in (i, j, c) order
    def _wmats(self, w, dtype):
        geo = self.geo
        p = geo.ho * geo.wo
        w = w.reshape(p, geo.g, geo.fg, geo.cg, geo.fh, geo.fw).transpose(1, 0, 4, 5, 3, 2)
        return w.reshape(geo.g, p, geo.k, geo.fg).astype(dtype)

    def _from_wmats(self, dw):
        geo = self.geo
        p = geo.ho * geo.wo
        dw = dw.reshape(geo.g, p, geo.fh, geo.fw, geo.cg, geo.fg).transpose(1, 0, 5, 4, 2, 3)
        return dw.reshape(p, geo.f, geo.k)  # reshape of a transposed array: a contiguous copy

    def _windows(self, xpad, xp):
        """(g, Ho, Wo, N, fh, fw, Cg) view of every window of xpad."""
        geo = self.geo
        s_n, s_h, s_w, s_c = xpad.strides
        return xp.lib.stride_tricks.as_strided(
            xpad, (geo.g, geo.ho, geo.wo, xpad.shape[0], geo.fh, geo.fw, geo.cg),
            (s_c * geo.cg, s_h * geo.sh, s_w * geo.sw, s_n, s_h, s_w, s_c))

    def forward(self, xs, params, ctx):
        xp, x, geo = ctx.xp, xs[0], self.geo
        n = x.shape[0]
        p = geo.ho * geo.wo
        xpad = pad_nhwc(x, geo.ph, geo.pw, xp)
        cols = xp.empty((geo.g, p, n, geo.k), dtype=x.dtype)
        cols.reshape(geo.g, geo.ho, geo.wo, n, geo.fh, geo.fw, geo.cg)[...] = self._windows(xpad, xp)
        y = xp.matmul(cols, self._wmats(params["weights"], x.dtype))  # (g, P, N, Fg)
        out = xp.empty((n, geo.ho, geo.wo, geo.f), dtype=x.dtype)
        out.reshape(n, p, geo.g, geo.fg)[...] = y.transpose(2, 1, 0, 3)
        b = params["biases"].astype(x.dtype, copy=False)
        out += b if b.ndim == 1 else b.transpose(1, 2, 0)
        return out, (x.shape, xpad.shape, cols)

    def backward(self, dout, cache, params, ctx):
        xp, geo = ctx.xp, self.geo
        x_shape, pad_shape, cols = cache
        n = x_shape[0]
        p = geo.ho * geo.wo
        dtype = cols.dtype
        dy = dout.reshape(n, p, geo.g, geo.fg).transpose(2, 1, 0, 3)  # (g, P, N, Fg), a view
        dw = self._from_wmats(xp.matmul(cols.transpose(0, 1, 3, 2), dy))
        if params["biases"].ndim == 1:
            db = column_sums(dout.reshape(n * p, geo.f), xp)
        else:
            db = (xp.ones(n, dtype=dtype) @ dout.reshape(n, p * geo.f)).reshape(geo.ho, geo.wo, geo.f)
            db = db.transpose(2, 0, 1).copy()
        dx = None
        if self.input_grads:
            dcols = xp.matmul(dy, self._wmats(params["weights"], dtype).transpose(0, 1, 3, 2))  # (g, P, N, K)
            dcols = dcols.reshape(geo.g, geo.ho, geo.wo, n, geo.fh, geo.fw, geo.cg)
            dxpad = xp.zeros(pad_shape, dtype=dtype)
            dx5 = dxpad.reshape(*pad_shape[:3], geo.g, geo.cg)
            for i in range(geo.fh):
                for j in range(geo.fw):
                    dx5[_window_slice(i, j, geo.sh, geo.sw, geo.ho, geo.wo)] += dcols[:, :, :, :, i, j, :].transpose(
                        3, 1, 2, 0, 4)
            dx = dxpad[:, geo.ph:geo.ph + geo.h, geo.pw:geo.pw + geo.w, :] if (geo.ph or geo.pw) else dxpad
        return [dx], {"weights": dw, "biases": db}
