"""Recurrent layers `rnn`, `lstm`, `gru` (each one-way, `reverse` or `bidirectional`) and `seqpool`.

A recurrent layer reads its input `(C, H, W)` per case as a sequence over W (time, the spectrogram's
frames) with C*H features per step, ordered as a PyTorch user flattens an NCHW tensor:
step t of case n is `x_nchw[n, :, :, t].reshape(C*H)`. Its output is `(outputs, 1, W)`: the hidden state
at every step, so recurrent layers stack; `(2*outputs, 1, W)` when bidirectional, the forward direction's
units first, then the backward one's (as `torch.nn.LSTM(bidirectional=True)` concatenates them).
`seqpool` then turns `(C, 1, W)` into `(C, 1, 1)` for the fc layers above.

The cells are PyTorch's, gate for gate, so weights move between the two unchanged:

    rnn   h' = act(W_ih x + b_ih + W_hh h + b_hh)                   act: the layer's `neuron`, tanh or relu
    lstm  i, f, g, o = sig, sig, tanh, sig (W_ih x + b_ih + W_hh h + b_hh)      (gate blocks in that order)
          c' = f c + i g;   h' = o tanh(c')
    gru   r, z = sig(W_ir x + b_ir + W_hr h + b_hr), sig(W_iz x + b_iz + W_hz h + b_hz)
          n = tanh(W_in x + b_in + r (W_hn h + b_hn));   h' = (1 - z) n + z h

Parameters, named as in `torch.nn.RNN/LSTM/GRU` state dicts without the `_l0`: `weight_ih` (G*outputs,
C*H), `weight_hh` (G*outputs, outputs), `bias_ih`, `bias_hh` (G*outputs,), G = 1, 4, 3 gates; the backward
direction of a bidirectional layer has the same four with the suffix `_reverse`. A one-way `reverse: 1`
layer keeps the plain names: it is a torch module run on the time-flipped sequence. The initial hidden
(and cell) state is zero for every case; training backpropagates through the whole sequence.

Initial weights: `weight_ih` by `init` (glorot_uniform by default, fans C*H and G*outputs; `initW` is the
scale of gaussian/uniform/constant), `weight_hh` by `initHidden` (orthogonal, gain 1, by default), drawn
one outputs x outputs gate block at a time so every gate gets its own orthogonal matrix; `bias_ih` =
`initB`, `bias_hh` = 0 (the two always add up, except inside GRU's n gate).

Cost: the input projection of all steps is one GEMM, then a loop over steps does the (N, outputs) x
(outputs, G*outputs) recurrent GEMM and the cell update; the cell update of `lstm` and `gru` is one fused
element-wise CUDA kernel on CuPy (`*_cupy`), with a NumPy twin of the same name (`*_numpy`) that is the
reference. Backward loops the steps in reverse for the state gradients only; the weight gradients are
GEMMs over fixed blocks of steps, which on the CPU run on a pool thread beside the loop (`_WeightGrads`).
Measured (2 threads, batch 32, 64 -> 128, 100 steps): with OpenBLAS given its 2 threads for the loops the
LSTM took 30.8 ms, and its threads then spun ~0.1 s on the cores the next layers' threads want; with BLAS
on one thread and the weight gradients beside the backward loop, 31.2 ms and no spinning. A step's cell is
~15 NumPy calls on 16k-element arrays (~60 us, a float32 tanh alone 24 us), which is where the rest of the
time goes; splitting a step's cases over two Python threads was slower (GIL hand-offs).
"""
from __future__ import annotations

import functools
from typing import ClassVar

from convnet_cli.backend import cuda_elementwise, get_array_module
from convnet_cli.layers.base import Key, Layer, column_sums, register
from convnet_cli.layers import recurrent_jit
from convnet_cli.layers.cpu_threads import (background_executor, chunk_bounds, matmul, parallel_map,
                                            parallel_threads)
from convnet_cli.layers.init import INIT_KINDS
from convnet_cli.layers.neurons import parse_neuron


# == fused cell updates ==================================================================================
# Each cell function works on one time step of the whole minibatch. Gate pre-activations are (N, G*O)
# rows holding the G gate blocks of O units one after the other (PyTorch's layout); states are (N, O).
# `act` holds the activated gates, which is what the backward step needs.

def _is_cupy(a) -> bool:
    return type(a).__module__.startswith("cupy")


@functools.lru_cache(maxsize=64)
def _lstm_gate_consts(xp, units: int, dtype_str: str):
    """Per-column constants that turn one tanh into LSTM's four activations.

    sigmoid(x) = 0.5 tanh(0.5 x) + 0.5, so act = tanh(s x) s + b with s = 0.5 for i, f, o and 1 for g,
    b = 0.5 for i, f, o and 0 for g; and the derivative (of either) is (1 - act)(act + d), d = 0 for
    the sigmoids and 1 for the tanh."""
    def cols(i, f, g, o):
        return xp.repeat(xp.asarray([i, f, g, o], dtype=dtype_str), units)

    return cols(0.5, 0.5, 1.0, 0.5), cols(0.5, 0.5, 0.0, 0.5), cols(0.0, 0.0, 1.0, 0.0)


def _sigmoid(x, xp):
    # tanh form: no overflow warnings for large |x| in float32, and the same formula as the CUDA kernels
    return xp.tanh(x * 0.5) * 0.5 + 0.5


def lstm_cell_forward_numpy(pre, c_prev, out=None):
    """pre: (N, 4O) gate pre-activations (i, f, g, o blocks); c_prev: (N, O) -> (h, c, act).

    act: (N, 4O) the activated gates, kept for lstm_cell_backward. `out=(h, c, act)` writes the results
    into those arrays instead of new ones (act may be `pre` itself: the layer's loop overwrites each
    step's pre-activations with its gates); every operation then runs in place, with no temporary the
    size of the gates."""
    xp = get_array_module(pre)
    units = c_prev.shape[1]
    scale, shift, _ = _lstm_gate_consts(xp, units, pre.dtype.str)
    if out is None:
        out = (xp.empty_like(c_prev, dtype=pre.dtype), xp.empty_like(c_prev, dtype=pre.dtype),
               xp.empty_like(pre))
    h, c, act = out
    xp.multiply(pre, scale, out=act)
    xp.tanh(act, out=act)
    act *= scale
    act += shift
    i, f, g, o = (act[:, k * units:(k + 1) * units] for k in range(4))
    xp.multiply(f, c_prev, out=c)
    xp.multiply(i, g, out=h)  # h as scratch until its turn
    c += h
    xp.tanh(c, out=h)
    h *= o
    return h, c, act


def lstm_cell_backward_numpy(act, c, c_prev, dh, dc_next, out=None):
    """One LSTM step backward. act: (N, 4O) from forward; c, c_prev, dh, dc_next: (N, O).

    dh is the whole gradient reaching h at this step (from above and from step t+1); dc_next the gradient
    reaching c from step t+1. Returns (dpre (N, 4O), dc_prev (N, O)); `out=(dpre, dc_prev)` writes them
    there (dc_prev may be dc_next itself)."""
    xp = get_array_module(act)
    units = c.shape[1]
    _, _, tanh_col = _lstm_gate_consts(xp, units, act.dtype.str)
    if out is None:
        out = (xp.empty_like(act), xp.empty_like(c))
    dpre, dc = out
    i, f, g, o = (act[:, k * units:(k + 1) * units] for k in range(4))
    di, df, dg, do = (dpre[:, k * units:(k + 1) * units] for k in range(4))
    tc = xp.tanh(c)
    xp.multiply(dh, tc, out=do)
    xp.multiply(tc, tc, out=tc)
    xp.subtract(1, tc, out=tc)
    tc *= dh
    tc *= o
    if dc is not dc_next:
        xp.copyto(dc, dc_next)
    dc += tc  # dc = dc_next + dh o (1 - tanh(c)^2)
    xp.multiply(dc, g, out=di)
    xp.multiply(dc, c_prev, out=df)
    xp.multiply(dc, i, out=dg)
    # the gates' derivatives from their values: (1 - a) a for the sigmoids, (1 - a)(1 + a) for tanh
    deriv = xp.subtract(1, act)
    dpre *= deriv
    xp.add(act, tanh_col, out=deriv)
    dpre *= deriv
    dc *= f
    return dpre, dc


def gru_cell_forward_numpy(xg, hg, h_prev):
    """xg = W_ih x + b_ih and hg = W_hh h_prev + b_hh: (N, 3O) (r, z, n blocks); h_prev: (N, O).

    Returns (h, act, hn): act (N, 3O) the gates r, z, n; hn (N, O) = W_hn h_prev + b_hn (r's gradient
    needs it)."""
    xp = get_array_module(xg)
    units = h_prev.shape[1]
    two = 2 * units
    rz = _sigmoid(xg[:, :two] + hg[:, :two], xp)
    r, z = rz[:, :units], rz[:, units:]
    hn = hg[:, two:]
    n = xp.tanh(xg[:, two:] + r * hn)
    h = h_prev - n
    h *= z
    h += n
    return h, xp.concatenate([rz, n], axis=1), xp.ascontiguousarray(hn)


def gru_cell_backward_numpy(act, hn, h_prev, dh):
    """One GRU step backward. act: (N, 3O) from forward; hn, h_prev, dh: (N, O).

    Returns (dxg, dhg, dh_direct): gradients of xg and hg (N, 3O) and the part of dh_prev that does not
    go through W_hh (z dh); the caller adds dhg @ W_hh."""
    xp = get_array_module(act)
    units = hn.shape[1]
    r, z, n = (act[:, k * units:(k + 1) * units] for k in range(3))
    dn = dh * (1 - z) * (1 - n * n)
    dz = dh * (h_prev - n) * z * (1 - z)
    dr = dn * hn * r * (1 - r)
    dxg = xp.concatenate([dr, dz, dn], axis=1)
    dhg = xp.concatenate([dr, dz, dn * r], axis=1)
    return dxg, dhg, dh * z


# The CUDA twins: one thread per (case, unit); gate k of that unit sits at row * G*O + k*O + unit in the
# raw (C-contiguous) gate arrays. Compiled on first use, only when the arrays are CuPy's.
_CUDA_PREAMBLE = """
template <typename T> __device__ T cn_sigmoid(T x) {
    const T half = 0.5;
    return tanh(x * half) * half + half;
}
"""

_CUDA_SOURCES = {
    "lstm_fwd": (
        "raw T pre, T c_prev, int32 O",
        "T h, T c, raw T act",
        """
        const ptrdiff_t row = i / O, unit = i % O;
        const ptrdiff_t b = row * 4 * O + unit;
        const T ai = cn_sigmoid(pre[b]);
        const T af = cn_sigmoid(pre[b + O]);
        const T ag = tanh(pre[b + 2 * O]);
        const T ao = cn_sigmoid(pre[b + 3 * O]);
        act[b] = ai;
        act[b + O] = af;
        act[b + 2 * O] = ag;
        act[b + 3 * O] = ao;
        c = af * c_prev + ai * ag;
        h = ao * tanh(c);
        """,
    ),
    "lstm_bwd": (
        "raw T act, T c, T c_prev, T dh, T dc_next, int32 O",
        "raw T dpre, T dc_prev",
        """
        const ptrdiff_t row = i / O, unit = i % O;
        const ptrdiff_t b = row * 4 * O + unit;
        const T one = 1;
        const T ai = act[b], af = act[b + O], ag = act[b + 2 * O], ao = act[b + 3 * O];
        const T tc = tanh(c);
        const T dc = dc_next + dh * ao * (one - tc * tc);
        dpre[b] = dc * ag * ai * (one - ai);
        dpre[b + O] = dc * c_prev * af * (one - af);
        dpre[b + 2 * O] = dc * ai * (one - ag * ag);
        dpre[b + 3 * O] = dh * tc * ao * (one - ao);
        dc_prev = dc * af;
        """,
    ),
    # the rnn cell's backward through its nonlinearity, written into dpre[t]: h is the cell's output
    "rnn_relu_bwd": ("T dh, T h", "T d", "d = h > (T)0 ? dh : (T)0;"),
    "rnn_tanh_bwd": ("T dh, T h", "T d", "d = dh * ((T)1 - h * h);"),
    "gru_fwd": (
        "raw T xg, raw T hg, T h_prev, int32 O",
        "T h, raw T act, T hn",
        """
        const ptrdiff_t row = i / O, unit = i % O;
        const ptrdiff_t b = row * 3 * O + unit;
        const T r = cn_sigmoid(xg[b] + hg[b]);
        const T z = cn_sigmoid(xg[b + O] + hg[b + O]);
        const T hnv = hg[b + 2 * O];
        const T nv = tanh(xg[b + 2 * O] + r * hnv);
        act[b] = r;
        act[b + O] = z;
        act[b + 2 * O] = nv;
        hn = hnv;
        h = nv + z * (h_prev - nv);
        """,
    ),
    "gru_bwd": (
        "raw T act, T hn, T h_prev, T dh, int32 O",
        "raw T dxg, raw T dhg, T dh_direct",
        """
        const ptrdiff_t row = i / O, unit = i % O;
        const ptrdiff_t b = row * 3 * O + unit;
        const T one = 1;
        const T r = act[b], z = act[b + O], nv = act[b + 2 * O];
        const T dn = dh * (one - z) * (one - nv * nv);
        const T dz = dh * (h_prev - nv) * z * (one - z);
        const T dr = dn * hn * r * (one - r);
        dxg[b] = dr;
        dxg[b + O] = dz;
        dxg[b + 2 * O] = dn;
        dhg[b] = dr;
        dhg[b + O] = dz;
        dhg[b + 2 * O] = dn * r;
        dh_direct = dh * z;
        """,
    ),
}


def _cuda_kernel(name: str):
    return cuda_elementwise(_CUDA_SOURCES, name, preamble=_CUDA_PREAMBLE)


def lstm_cell_forward_cupy(pre, c_prev):
    """CUDA twin of lstm_cell_forward_numpy (same arguments and results)."""
    import cupy

    pre = cupy.ascontiguousarray(pre)
    c_prev = cupy.ascontiguousarray(c_prev, dtype=pre.dtype)
    h = cupy.empty_like(c_prev)
    c = cupy.empty_like(c_prev)
    act = cupy.empty_like(pre)
    _cuda_kernel("lstm_fwd")(pre, c_prev, c_prev.shape[1], h, c, act)
    return h, c, act


def lstm_cell_backward_cupy(act, c, c_prev, dh, dc_next):
    """CUDA twin of lstm_cell_backward_numpy."""
    import cupy

    act = cupy.ascontiguousarray(act)
    dpre = cupy.empty_like(act)
    dc_prev = cupy.empty(c.shape, dtype=act.dtype)
    _cuda_kernel("lstm_bwd")(act, c, c_prev, dh, dc_next, c.shape[1], dpre, dc_prev)
    return dpre, dc_prev


def gru_cell_forward_cupy(xg, hg, h_prev):
    """CUDA twin of gru_cell_forward_numpy."""
    import cupy

    xg = cupy.ascontiguousarray(xg)
    hg = cupy.ascontiguousarray(hg, dtype=xg.dtype)
    h = cupy.empty(h_prev.shape, dtype=xg.dtype)
    hn = cupy.empty_like(h)
    act = cupy.empty_like(xg)
    _cuda_kernel("gru_fwd")(xg, hg, h_prev, h_prev.shape[1], h, act, hn)
    return h, act, hn


def gru_cell_backward_cupy(act, hn, h_prev, dh):
    """CUDA twin of gru_cell_backward_numpy."""
    import cupy

    act = cupy.ascontiguousarray(act)
    dxg = cupy.empty_like(act)
    dhg = cupy.empty_like(act)
    dh_direct = cupy.empty(hn.shape, dtype=act.dtype)
    _cuda_kernel("gru_bwd")(act, hn, h_prev, dh, hn.shape[1], dxg, dhg, dh_direct)
    return dxg, dhg, dh_direct


def _into(out, results):
    """Copy a CuPy twin's fresh results into the caller's `out` arrays (the NumPy twins write there)."""
    if out is None:
        return results
    for dst, src in zip(out, results):
        dst[...] = src
    return out


def lstm_cell_forward(pre, c_prev, out=None):
    if _is_cupy(pre):
        return _into(out, lstm_cell_forward_cupy(pre, c_prev))
    return lstm_cell_forward_numpy(pre, c_prev, out)


def lstm_cell_backward(act, c, c_prev, dh, dc_next, out=None):
    if _is_cupy(act):
        return _into(out, lstm_cell_backward_cupy(act, c, c_prev, dh, dc_next))
    return lstm_cell_backward_numpy(act, c, c_prev, dh, dc_next, out)


def gru_cell_forward(xg, hg, h_prev):
    return (gru_cell_forward_cupy if _is_cupy(xg) else gru_cell_forward_numpy)(xg, hg, h_prev)


def gru_cell_backward(act, hn, h_prev, dh):
    return (gru_cell_backward_cupy if _is_cupy(act) else gru_cell_backward_numpy)(act, hn, h_prev, dh)


# == layout helpers =====================================================================================

def to_sequence(x):
    """x: (N, H, W, C) -> (W, N, C*H), step t = x_nchw[:, :, :, t] flattened in (C, H) order."""
    n, h, w, c = x.shape
    return x.transpose(2, 0, 3, 1).reshape(w, n, c * h)


def from_sequence(d, shape_nhwc):
    """Inverse of to_sequence: (W, N, C*H) -> (N, H, W, C)."""
    n, h, w, c = shape_nhwc
    return d.reshape(w, n, c, h).transpose(1, 3, 0, 2)


# == the layers =========================================================================================

class RecurrentLayer(Layer):
    """What rnn, lstm and gru share: keys, shapes, parameters, directions and the layout changes.

    Subclasses give `gates` and the pair `_run(seq, p, xp) -> (hs, cache)` /
    `_back(dhs, cache, p, xp) -> (dseq, grads)` for one direction over a (T, N, F) sequence, where `p`
    maps the plain names (weight_ih, ...) to this direction's arrays in the compute dtype."""

    gates: ClassVar[int] = 1
    # The ONNX operator of the cell, and PyTorch's gate blocks (what the layers use) in ONNX's order.
    onnx_op: ClassVar[str] = ""
    onnx_gate_order: ClassVar[tuple] = (0,)
    _onnx_outputs: ClassVar[int] = 2  # Y and Y_h (LSTM: and Y_c)
    keys = {
        "outputs": Key("int", min=1, doc="hidden units (per direction)"),
        "reverse": Key("bool", False, doc="1 = read the sequence from its last step to its first"),
        "bidirectional": Key("bool", False, doc="1 = a forward and a backward pass, outputs concatenated"),
        "init": Key("str", "glorot_uniform", choices=INIT_KINDS, doc="initializer of the input weights"),
        "initHidden": Key("str", "orthogonal", choices=INIT_KINDS, doc="initializer of the recurrent weights"),
        "initW": Key("float", 0.01, doc="scale of a gaussian/uniform/constant init"),
        "initB": Key("float", 0.0, doc="initial bias_ih"),
    }
    NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")

    def infer_shape(self):
        c, h, w = self.in_shapes[0]
        p = self.props
        if p.reverse and p.bidirectional:
            raise self.error("reverse: 1 and bidirectional: 1 together; a bidirectional layer already reads "
                             "both ways, remove one of them")
        self.features = c * h
        self.suffixes = ("", "_reverse") if p.bidirectional else ("",)
        self.learned = tuple(n + s for s in self.suffixes for n in self.NAMES)
        return (p.outputs * len(self.suffixes), 1, w)

    def param_shapes(self):
        units, rows = self.props.outputs, self.gates * self.props.outputs
        shapes = {}
        for s in self.suffixes:
            shapes.update({"weight_ih" + s: (rows, self.features), "weight_hh" + s: (rows, units),
                           "bias_ih" + s: (rows,), "bias_hh" + s: (rows,)})
        return shapes

    def init_params(self, rng):
        import numpy as np

        from convnet_cli.layers.init import DEFAULT_INIT_W, init_weights

        p = self.props
        units, rows = p.outputs, self.gates * p.outputs
        # An orthogonal recurrent matrix wants gain 1 whatever initW says about the input weights.
        hidden_scale = DEFAULT_INIT_W if p.initHidden == "orthogonal" else p.initW
        out = {}
        for s in self.suffixes:
            out["weight_ih" + s] = init_weights(rng, p.init, (rows, self.features), self.features, rows, p.initW)
            out["weight_hh" + s] = np.concatenate(
                [init_weights(rng, p.initHidden, (units, units), units, units, hidden_scale)
                 for _ in range(self.gates)], axis=0)
            out["bias_ih" + s] = np.full((rows,), p.initB, dtype=np.float32)
            out["bias_hh" + s] = np.zeros((rows,), dtype=np.float32)
        return out

    def to_onnx(self, g, xs, params):
        """The ONNX cell `onnx_op` over the W steps, the gate blocks reordered by `onnx_gate_order`;
        `reverse` = direction 'reverse'; bidirectional = 'bidirectional', whose backward outputs ONNX, like
        the layer, aligns with the original time steps."""
        import numpy as np  # host arrays: the export's constants

        n = self.name
        c, h, w = self.in_shapes[0]
        units = self.props.outputs
        # (N, C, H, W) -> (W, N, C*H): step t is case n's column t, flattened in (C, H) order (to_sequence)
        seq = g.reshape(g.transpose(xs[0], (3, 0, 1, 2), f"{n}/seq"), [0, 0, c * h], f"{n}/seq")

        def reorder(a):
            return np.concatenate([a[k * units:(k + 1) * units] for k in self.onnx_gate_order], axis=0)

        suffixes = [s for s, _ in self._directions()]
        wi = np.stack([reorder(params["weight_ih" + s]) for s in suffixes])
        wh = np.stack([reorder(params["weight_hh" + s]) for s in suffixes])
        bias = np.stack([np.concatenate([reorder(params["bias_ih" + s]), reorder(params["bias_hh" + s])])
                         for s in suffixes])
        if self.props.bidirectional:
            direction = "bidirectional"
        else:
            direction = "reverse" if self.props.reverse else "forward"
        ys = g.op(self.onnx_op, [seq, g.const(f"{n}/W", wi), g.const(f"{n}/R", wh), g.const(f"{n}/B", bias)], n,
                  outputs=self._onnx_outputs, hidden_size=units, direction=direction,
                  **self._onnx_attrs(len(suffixes)))
        # Y: (W, D, N, units) -> (N, D*units, 1, W), the forward direction's units first
        y = g.transpose(ys[0], (2, 1, 3, 0), f"{n}/out")
        return g.reshape(y, [0, units * len(suffixes), 1, w], f"{n}/out")

    def _onnx_attrs(self, directions: int) -> dict:
        """The cell's own attributes of its ONNX operator."""
        return {}

    def _directions(self):
        """(name suffix, runs backwards in time) of each direction, in output-channel order."""
        if self.props.bidirectional:
            return (("", False), ("_reverse", True))
        return (("", bool(self.props.reverse)),)

    def _params(self, params, suffix, dtype):
        return {n: params[n + suffix].astype(dtype, copy=False) for n in self.NAMES}

    # the cell has a numba twin (recurrent_jit.py): lstm and gru
    has_jit: ClassVar[bool] = False
    jit = False  # this forward pass's choice (forward sets it)

    def _use_jit(self, x, ctx) -> bool:
        """The fused numba cells for float32 NumPy arrays when the run (or this machine) takes that path."""
        import numpy as np

        if not self.has_jit or not isinstance(x, np.ndarray) or x.dtype != np.float32:
            return False
        return recurrent_jit.choose(ctx.algos) == "jit"

    def forward(self, xs, params, ctx):
        """xs[0]: (N, H, W, C) -> (N, 1, W, D*outputs), D = 2 when bidirectional."""
        xp = ctx.xp
        x = xs[0]
        seq = to_sequence(x)
        self.jit = self._use_jit(x, ctx)  # read by _run; _back reads it from the cache
        outs, caches = [], []
        for suffix, backwards in self._directions():
            s = seq[::-1] if backwards else seq
            hs, cache = self._run(xp.ascontiguousarray(s), self._params(params, suffix, x.dtype), xp)
            outs.append(hs[::-1] if backwards else hs)
            caches.append(cache)
        hs = outs[0] if len(outs) == 1 else xp.concatenate(outs, axis=2)
        out = xp.ascontiguousarray(hs.transpose(1, 0, 2))[:, None]
        return out, (x.shape, caches)

    def backward(self, dout, cache, params, ctx):
        xp = ctx.xp
        shape, caches = cache
        units = self.props.outputs
        d = dout[:, 0].transpose(1, 0, 2)  # (T, N, D*outputs)
        dseq = None
        grads = {}
        for k, ((suffix, backwards), c) in enumerate(zip(self._directions(), caches)):
            dhs = d[:, :, k * units:(k + 1) * units]
            if backwards:
                dhs = dhs[::-1]
            ds, g = self._back(xp.ascontiguousarray(dhs), c, self._params(params, suffix, dout.dtype), xp)
            if backwards:
                ds = ds[::-1]
            dseq = ds if dseq is None else dseq + ds
            grads.update({n + suffix: v for n, v in g.items()})
        return [xp.ascontiguousarray(from_sequence(dseq, shape))], grads

    # -- shared pieces of _run / _back ------------------------------------------------------------
    @staticmethod
    def _project(seq, w, b):
        """All steps' input projection in one GEMM: (T, N, F) -> (T, N, rows)."""
        t, n, f = seq.shape
        out = matmul(seq.reshape(t * n, f), w.T).reshape(t, n, -1)
        out += b
        return out


def case_chunks(n: int) -> list:
    """The JIT cells' split of a minibatch of n cases: chunks of at least 16 cases, at most 4 of them, fixed by
    n alone (so the bits do not depend on the thread count)."""
    return chunk_bounds(n, max(16, -(-n // 4)))


def run_case_chunks(fn, n: int, xp):
    """fn(worker, (first, stop)) for every chunk of case_chunks(n), spread over the pool's threads: the cases
    of a recurrent layer are independent over the whole sequence, so each chunk runs its own step loop (its
    GEMMs and the numba cells release the GIL) with no hand-off between steps."""
    chunks = case_chunks(n)
    parallel_map(fn, chunks, parallel_threads(xp, len(chunks)))


class _WeightGrads:
    """Weight, bias and input gradients of one direction, taken per fixed block of time steps while the
    backward loop runs on.

    dpre_x: (T, N, rows) gradient of the input projection; dpre_h: of the recurrent projection (the same
    array for rnn and lstm); hs: (T, N, O) the hidden states (step t reads hs[t-1]). The loop calls
    `passed(t)` after step t; once it is below a block's first step, that block's GEMMs (dW_ih, dW_hh,
    the biases and its rows of the input gradient) go to a pool thread on NumPy with more than one thread
    (cpu_threads.py), so they run beside the loop's own small GEMMs and element-wise work instead of after
    them; else they run at once on this thread. `finish()` adds the blocks' sums in block order: the
    blocks depend on T alone, so the result is the same on any thread count."""

    BLOCKS = 8
    # Blocks of fewer (steps x cases) rows than this make thin GEMMs (a short sequence, a small minibatch:
    # neon's whale BiRNN, 10 steps of 16 cases, 19456 features a step) that one core runs at a fraction of
    # its rate; such a layer takes its weight gradients in one block after the loop, each GEMM split over
    # the threads by its shape (cpu_threads.matmul). Measured there: rnn1's backward 107 -> 36 ms, the
    # step 364 -> 280 ms; whale-birnn-small (10 steps of 128: blocks of 160 rows) measured the same either
    # way and keeps its blocks.
    MIN_BLOCK_ROWS = 64

    def __init__(self, seq, dpre_x, hs, dpre_h, p, xp):
        self.seq, self.dpre_x, self.hs, self.dpre_h, self.p, self.xp = seq, dpre_x, hs, dpre_h, p, xp
        steps = seq.shape[0]
        # on a GPU the blocks would only multiply the launches (each costs the host tens of microseconds):
        # one block of every step
        on_cpu = xp.__name__ == "numpy"
        blocks = self.BLOCKS if on_cpu and steps * seq.shape[1] >= self.BLOCKS * self.MIN_BLOCK_ROWS else 1
        self.whole = on_cpu and blocks == 1   # one block, its GEMMs threaded, on the calling thread
        self.bounds = chunk_bounds(steps, max(1, -(-steps // blocks)))
        self.parts = [None] * len(self.bounds)
        self.next = len(self.bounds) - 1  # the next block to start, from the last one down
        self.dseq = xp.empty_like(seq)
        self.pool = background_executor() if not self.whole and parallel_threads(xp, 2) > 1 else None
        self.futures = []

    def _block(self, k):
        t0, t1 = self.bounds[k]
        seq, dx, hs, dh, p = self.seq, self.dpre_x[t0:t1], self.hs, self.dpre_h, self.p
        f = seq.shape[2]
        rows, units = dx.shape[2], hs.shape[2]
        dx2 = dx.reshape(-1, rows)
        mm = matmul if self.whole else self.xp.matmul   # blocks: one GEMM each, as before (their bits)
        part = {"weight_ih": mm(dx2.T, seq[t0:t1].reshape(-1, f)), "bias_ih": column_sums(dx2, self.xp)}
        # rnn and lstm add both biases before the cell, so their gradients are one sum
        part["bias_hh"] = part["bias_ih"] if dh is self.dpre_x else column_sums(dh[t0:t1].reshape(-1, rows),
                                                                                self.xp)
        h0 = max(t0, 1)  # step 0 reads the zero state: no recurrent weight gradient
        if h0 < t1:
            part["weight_hh"] = mm(dh[h0:t1].reshape(-1, rows).T, hs[h0 - 1:t1 - 1].reshape(-1, units))
        mm(dx2, p["weight_ih"], out=self.dseq[t0:t1].reshape(-1, f))
        self.parts[k] = part

    def passed(self, t: int):
        while self.next >= 0 and t <= self.bounds[self.next][0]:
            if self.pool is None:
                self._block(self.next)
            else:
                self.futures.append(self.pool.submit(self._block, self.next))
            self.next -= 1

    def finish_all(self):
        """All blocks at once, spread over the pool's threads (after a step loop that took the cores itself);
        one whole block on this thread, its GEMMs threaded."""
        if self.whole:
            self._block(0)
        else:
            parallel_map(lambda worker, k: self._block(k), range(len(self.bounds)),
                         parallel_threads(self.xp, len(self.bounds)))
        self.next = -1
        return self.finish()

    def finish(self):
        self.passed(0)
        for f in self.futures:
            f.result()
        grads = {}
        for part in self.parts:  # block order: the same sums on any thread count
            for name, value in part.items():
                if name not in grads:
                    grads[name] = value.copy()
                else:
                    grads[name] += value
        if "weight_hh" not in grads:  # one step: the recurrent weights got no gradient
            grads["weight_hh"] = self.p["weight_hh"] * 0
        return self.dseq, grads


@register
class RNNLayer(RecurrentLayer):
    """`rnn`: the Elman cell of torch.nn.RNN; its `neuron` (tanh or relu) is the cell's nonlinearity."""

    type = "rnn"
    gates = 1
    onnx_op = "RNN"
    # The parser hands `neuron` to this layer instead of applying it to the output (see layer_def.py).
    owns_neuron = True
    keys = dict(RecurrentLayer.keys, neuron=Key(
        "str", "tanh", choices=("tanh", "relu"), legacy=("nonlinearity",),
        doc="the cell's nonlinearity, as torch.nn.RNN's nonlinearity; not applied again to the output"))

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fn = parse_neuron(self.props.neuron)

    def _run(self, seq, p, xp):
        steps, n, _ = seq.shape
        pre = self._project(seq, p["weight_ih"], p["bias_ih"] + p["bias_hh"])
        hs = xp.empty((steps, n, self.props.outputs), dtype=seq.dtype)
        whh_t = p["weight_hh"].T
        if _is_cupy(seq):  # three launches a step, each result written where it stays
            rec = xp.empty_like(pre[0])
            relu = self.props.neuron == "relu"
            for t in range(steps):
                if t:
                    xp.matmul(hs[t - 1], whh_t, out=rec)
                    pre[t] += rec
                if relu:
                    xp.maximum(pre[t], 0, out=hs[t])
                else:
                    xp.tanh(pre[t], out=hs[t])
            return hs, (seq, hs)
        h = None
        for t in range(steps):
            if h is not None:  # the recurrent GEMM into step t's pre-activations (used up here)
                pre[t] += h @ whh_t
            h, _ = self.fn.forward(pre[t], xp)  # relu and tanh keep their output as the cache
            hs[t] = h
        return hs, (seq, hs)

    def _back(self, dhs, cache, p, xp):
        seq, hs = cache
        dpre = xp.empty_like(hs)
        wg = _WeightGrads(seq, dpre, hs, dpre, p, xp)
        whh = p["weight_hh"]
        if _is_cupy(hs):  # three launches a step (as _run)
            cell = _cuda_kernel("rnn_relu_bwd" if self.props.neuron == "relu" else "rnn_tanh_bwd")
            dh = xp.empty_like(hs[0])
            steps = hs.shape[0]
            for t in range(steps - 1, -1, -1):
                if t < steps - 1:
                    xp.matmul(dpre[t + 1], whh, out=dh)
                    dh += dhs[t]
                cell(dh if t < steps - 1 else dhs[t], hs[t], dpre[t])
                wg.passed(t)
            return wg.finish()
        dh_next = None
        for t in range(hs.shape[0] - 1, -1, -1):
            dh = dhs[t] if dh_next is None else dhs[t] + dh_next
            dpre[t] = self.fn.backward(dh, hs[t], xp)
            dh_next = dpre[t] @ whh
            wg.passed(t)
        return wg.finish()

    def _onnx_attrs(self, directions):
        return {"activations": [{"tanh": "Tanh", "relu": "Relu"}[self.fn.name]] * directions}


@register
class LSTMLayer(RecurrentLayer):
    """`lstm`: the cell of torch.nn.LSTM (gates i, f, g, o)."""

    type = "lstm"
    gates = 4
    onnx_op = "LSTM"
    onnx_gate_order = (0, 3, 1, 2)  # i, f, g, o -> i, o, f, c
    _onnx_outputs = 3

    has_jit = True

    def _run(self, seq, p, xp):
        steps, n, _ = seq.shape
        units = self.props.outputs
        pre = self._project(seq, p["weight_ih"], p["bias_ih"] + p["bias_hh"])
        hs = xp.empty((steps, n, units), dtype=seq.dtype)
        cs = xp.empty_like(hs)
        whh_t = p["weight_hh"].T
        recurrent = xp.empty_like(pre[0])
        c0 = xp.zeros((n, units), dtype=seq.dtype)
        jit = self.jit
        if jit:
            def run_cases(worker, rows):
                # one pass a step over this chunk's cases: the add, the gates (into pre[t]), c and h
                r = slice(*rows)
                rec, c_start = xp.empty_like(pre[0, r]), xp.zeros_like(c0[r])
                for t in range(steps):
                    if t:
                        xp.matmul(hs[t - 1, r], whh_t, out=rec)
                    recurrent_jit.lstm_forward(pre[t, r], rec if t else None, cs[t - 1, r] if t else c_start,
                                               hs[t, r], cs[t, r])

            run_case_chunks(run_cases, n, xp)
            return hs, (seq, hs, cs, pre, jit)
        for t in range(steps):
            if t:
                xp.matmul(hs[t - 1], whh_t, out=recurrent)
                pre[t] += recurrent
            # Every array of the step is written in place: step t's pre-activations are used up, so its
            # activated gates take their place, and h and c go straight into hs[t] and cs[t] (fresh
            # arrays per step cost a pass over memory each and page faults on every batch).
            lstm_cell_forward(pre[t], cs[t - 1] if t else c0, out=(hs[t], cs[t], pre[t]))
        return hs, (seq, hs, cs, pre, jit)

    def _back(self, dhs, cache, p, xp):
        seq, hs, cs, acts, jit = cache
        steps = hs.shape[0]
        dpre = xp.empty_like(acts)
        whh = p["weight_hh"]
        c0 = xp.zeros_like(hs[0])
        dh = xp.empty_like(hs[0])
        dc = xp.zeros_like(hs[0])  # the gradient reaching c from the step after; updated in place
        if jit:
            def back_cases(worker, rows):
                r = slice(*rows)
                dh_r, dc_r = xp.empty_like(dh[r]), xp.zeros_like(dc[r])
                for t in range(steps - 1, -1, -1):
                    if t == steps - 1:
                        dh_r[...] = dhs[t, r]
                    else:
                        xp.matmul(dpre[t + 1, r], whh, out=dh_r)
                        dh_r += dhs[t, r]
                    recurrent_jit.lstm_backward(acts[t, r], cs[t, r], cs[t - 1, r] if t else c0[r], dh_r, dc_r,
                                                dpre[t, r])

            run_case_chunks(back_cases, hs.shape[1], xp)
            return _WeightGrads(seq, dpre, hs, dpre, p, xp).finish_all()
        wg = _WeightGrads(seq, dpre, hs, dpre, p, xp)
        for t in range(steps - 1, -1, -1):
            if t == steps - 1:
                dh[...] = dhs[t]
            else:
                xp.matmul(dpre[t + 1], whh, out=dh)
                dh += dhs[t]
            lstm_cell_backward(acts[t], cs[t], cs[t - 1] if t else c0, dh, dc, out=(dpre[t], dc))
            wg.passed(t)
        return wg.finish()


@register
class GRULayer(RecurrentLayer):
    """`gru`: the cell of torch.nn.GRU (gates r, z, n; b_hn inside the reset gate's product)."""

    type = "gru"
    gates = 3
    onnx_op = "GRU"
    onnx_gate_order = (1, 0, 2)  # r, z, n -> z, r, h

    def _onnx_attrs(self, directions):
        return {"linear_before_reset": 1}  # b_hn inside r's product, as PyTorch

    has_jit = True

    def _run(self, seq, p, xp):
        steps, n, _ = seq.shape
        units = self.props.outputs
        xgs = self._project(seq, p["weight_ih"], p["bias_ih"])
        hs = xp.empty((steps, n, units), dtype=seq.dtype)
        hns = xp.empty_like(hs)
        whh_t, bhh = p["weight_hh"].T, p["bias_hh"]
        jit = self.jit
        if jit:
            def run_cases(worker, rows):
                # one pass a step over this chunk's cases: the recurrent bias, the gates (into xgs[t]), h, hn
                r = slice(*rows)
                h0 = xp.zeros((r.stop - r.start, units), dtype=seq.dtype)
                hg = xp.empty_like(xgs[0, r])
                for t in range(steps):
                    if t:
                        xp.matmul(hs[t - 1, r], whh_t, out=hg)
                    recurrent_jit.gru_forward(xgs[t, r], hg if t else None, bhh, hs[t - 1, r] if t else h0,
                                              hs[t, r], hns[t, r])

            run_case_chunks(run_cases, n, xp)
            return hs, (seq, hs, hns, xgs, jit)
        if _is_cupy(seq):
            return self._run_cupy(seq, xgs, hs, hns, whh_t, bhh, xp)
        h = xp.zeros((n, units), dtype=seq.dtype)
        for t in range(steps):
            hg = xp.broadcast_to(bhh, (n, bhh.shape[0])) if t == 0 else h @ whh_t + bhh
            # the gates replace step t's input projection, used up (as in LSTMLayer._run)
            h, xgs[t], hns[t] = gru_cell_forward(xgs[t], hg, h)
            hs[t] = h
        return hs, (seq, hs, hns, xgs, jit)

    def _run_cupy(self, seq, xgs, hs, hns, whh_t, bhh, xp):
        """_run on CuPy: three launches a step (the recurrent GEMM into one buffer, its bias, the cell kernel
        writing h, hn and the gates straight into their arrays), not a dozen with a fresh array each."""
        steps, n, _ = seq.shape
        units = self.props.outputs
        cell = _cuda_kernel("gru_fwd")
        acts = xp.empty_like(xgs)
        hg = xp.empty_like(xgs[0])
        h0 = xp.zeros((n, units), dtype=seq.dtype)
        for t in range(steps):
            if t:
                xp.matmul(hs[t - 1], whh_t, out=hg)
                hg += bhh
            else:
                hg[...] = bhh
            cell(xgs[t], hg, hs[t - 1] if t else h0, units, hs[t], acts[t], hns[t])
        return hs, (seq, hs, hns, acts, False)

    def _back(self, dhs, cache, p, xp):
        seq, hs, hns, acts, jit = cache
        dxg = xp.empty_like(acts)
        dhg = xp.empty_like(acts)
        whh = p["weight_hh"]
        zeros = xp.zeros_like(hs[0])
        wg = _WeightGrads(seq, dxg, hs, dhg, p, xp)
        steps = hs.shape[0]
        if _is_cupy(acts):  # four launches a step, every result written in place (as _run_cupy)
            cell = _cuda_kernel("gru_bwd")
            dh, direct = xp.empty_like(zeros), xp.empty_like(zeros)
            for t in range(steps - 1, -1, -1):
                if t == steps - 1:
                    dh[...] = dhs[t]
                else:
                    xp.matmul(dhg[t + 1], whh, out=dh)
                    dh += direct
                    dh += dhs[t]
                cell(acts[t], hns[t], hs[t - 1] if t else zeros, dh, hs.shape[2], dxg[t], dhg[t], direct)
                wg.passed(t)
            return wg.finish()
        if jit:
            def back_cases(worker, rows):
                r = slice(*rows)
                dh, direct = xp.empty_like(zeros[r]), xp.empty_like(zeros[r])
                for t in range(steps - 1, -1, -1):
                    if t == steps - 1:
                        dh[...] = dhs[t, r]
                    else:
                        xp.matmul(dhg[t + 1, r], whh, out=dh)
                        dh += direct
                        dh += dhs[t, r]
                    recurrent_jit.gru_backward(acts[t, r], hns[t, r], hs[t - 1, r] if t else zeros[r], dh,
                                               dxg[t, r], dhg[t, r], direct)

            run_case_chunks(back_cases, hs.shape[1], xp)
            return wg.finish_all()
        dh_next = None
        for t in range(steps - 1, -1, -1):
            dh = dhs[t] if dh_next is None else dhs[t] + dh_next
            dxg[t], dhg[t], direct = gru_cell_backward(acts[t], hns[t], hs[t - 1] if t else zeros, dh)
            dh_next = direct + dhg[t] @ whh
            wg.passed(t)
        return wg.finish()


@register
class SeqPoolLayer(Layer):
    """`seqpool`: (C, H, W) -> (C, H, 1) over the sequence axis W; normally (C, 1, W) -> (C, 1, 1).

    `last` takes step W-1 as stored, also after a reversed or bidirectional recurrent layer (as neon's
    RecurrentLast does): for a backward direction that is the state after reading one step only, so put a
    forward-reading layer last, or pool with `mean`/`max`, when the backward half should see everything."""

    type = "seqpool"
    keys = {"pool": Key("str", choices=("last", "mean", "sum", "max"), doc="last, mean, sum or max over W")}

    def infer_shape(self):
        c, h, _ = self.in_shapes[0]
        return (c, h, 1)

    def forward(self, xs, params, ctx):
        x = xs[0]
        kind = self.props.pool
        if kind == "last":
            return x[:, :, -1:, :].copy(), x.shape
        if kind == "sum":
            return x.sum(axis=2, keepdims=True), x.shape
        if kind == "mean":
            return x.mean(axis=2, keepdims=True), x.shape
        idx = x.argmax(axis=2)[:, :, None, :]
        return ctx.xp.take_along_axis(x, idx, axis=2), (x.shape, idx)

    def backward(self, dout, cache, params, ctx):
        xp = ctx.xp
        kind = self.props.pool
        if kind == "max":
            shape, idx = cache
            steps = xp.arange(shape[2]).reshape(1, 1, -1, 1)
            return [xp.where(steps == idx, dout, xp.zeros((), dtype=dout.dtype))], {}
        shape = cache
        if kind == "last":
            dx = xp.zeros(shape, dtype=dout.dtype)
            dx[:, :, -1:, :] = dout
            return [dx], {}
        if kind == "mean":
            dout = dout / shape[2]
        return [xp.ascontiguousarray(xp.broadcast_to(dout, shape))], {}

    def to_onnx(self, g, xs, params):
        """Slice (last), ReduceSum, ReduceMean, ReduceMax over W."""
        n = self.name
        kind = self.props.pool
        w = self.in_shapes[0][2]
        if kind == "last":
            return g.slice(xs[0], [w - 1], [w], [3], n)
        if kind == "sum":
            return g.op("ReduceSum", [xs[0], g.ints(f"{n}/axes", [3])], n, keepdims=1)
        return g.op("ReduceMean" if kind == "mean" else "ReduceMax", [xs[0]], n, axes=[3], keepdims=1)
