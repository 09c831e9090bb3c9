"""The CuPy cell kernels of recurrent.py against their NumPy twins, and whole recurrent layers on the GPU
against the same layers on the CPU. Skipped (with the reason) where CuPy or a GPU is missing."""
from __future__ import annotations

import numpy as np
import pytest

from convnet_cli.layers import recurrent as R
from convnet_cli.layers.base import Context
from tests.gpu.device import CUPY as cupy  # None without a GPU: conftest.py skips every test then
from tests.helpers import make_layer, nhwc

DTYPES = [(np.float32, 2e-6), (np.float64, 1e-12)]


def _same(gpu, cpu, atol, what):
    np.testing.assert_allclose(cupy.asnumpy(gpu), cpu, rtol=atol * 10, atol=atol, err_msg=what)


@pytest.mark.parametrize("dtype,atol", DTYPES)
def test_lstm_kernels_match_numpy(dtype, atol):
    rng = np.random.default_rng(0)
    n, o = 37, 19  # not multiples of anything, so the index arithmetic is tested
    pre = (rng.standard_normal((n, 4 * o)) * 3).astype(dtype)
    c_prev = rng.standard_normal((n, o)).astype(dtype)
    want = R.lstm_cell_forward_numpy(pre, c_prev)
    got = R.lstm_cell_forward_cupy(cupy.asarray(pre), cupy.asarray(c_prev))
    for g, w, name in zip(got, want, ("h", "c", "act")):
        assert g.dtype == dtype
        _same(g, w, atol, f"lstm forward {name}")
    h, c, act = want
    dh, dc = rng.standard_normal((n, o)).astype(dtype), rng.standard_normal((n, o)).astype(dtype)
    want = R.lstm_cell_backward_numpy(act, c, c_prev, dh, dc)
    got = R.lstm_cell_backward_cupy(*(cupy.asarray(a) for a in (act, c, c_prev, dh, dc)))
    for g, w, name in zip(got, want, ("dpre", "dc_prev")):
        _same(g, w, atol, f"lstm backward {name}")


@pytest.mark.parametrize("dtype,atol", DTYPES)
def test_gru_kernels_match_numpy(dtype, atol):
    rng = np.random.default_rng(1)
    n, o = 37, 19
    xg = (rng.standard_normal((n, 3 * o)) * 3).astype(dtype)
    hg = (rng.standard_normal((n, 3 * o)) * 3).astype(dtype)
    h_prev = rng.standard_normal((n, o)).astype(dtype)
    want = R.gru_cell_forward_numpy(xg, hg, h_prev)
    got = R.gru_cell_forward_cupy(cupy.asarray(xg), cupy.asarray(hg), cupy.asarray(h_prev))
    for g, w, name in zip(got, want, ("h", "act", "hn")):
        assert g.dtype == dtype
        _same(g, w, atol, f"gru forward {name}")
    _, act, hn = want
    dh = rng.standard_normal((n, o)).astype(dtype)
    want = R.gru_cell_backward_numpy(act, hn, h_prev, dh)
    got = R.gru_cell_backward_cupy(*(cupy.asarray(a) for a in (act, hn, h_prev, dh)))
    for g, w, name in zip(got, want, ("dxg", "dhg", "dh_direct")):
        _same(g, w, atol, f"gru backward {name}")


def test_gru_kernel_takes_a_broadcast_bias():
    """Step 0 passes hg = b_hh broadcast over the batch (a stride-0 view)."""
    rng = np.random.default_rng(2)
    n, o = 5, 3
    xg = rng.standard_normal((n, 3 * o)).astype(np.float32)
    b = rng.standard_normal(3 * o).astype(np.float32)
    h0 = np.zeros((n, o), np.float32)
    want = R.gru_cell_forward_numpy(xg, np.broadcast_to(b, (n, 3 * o)), h0)
    got = R.gru_cell_forward_cupy(cupy.asarray(xg), cupy.broadcast_to(cupy.asarray(b), (n, 3 * o)),
                                  cupy.asarray(h0))
    for g, w in zip(got, want):
        _same(g, w, 2e-6, "gru step 0")


@pytest.mark.parametrize("type_name,props", [("rnn", {"nonlinearity": "relu"}), ("rnn", {}),
                                             ("rnn", {"nonlinearity": "relu", "bidirectional": 1}),
                                             ("lstm", {}), ("gru", {}), ("lstm", {"bidirectional": 1}),
                                             ("gru", {"reverse": 1}), ("gru", {"bidirectional": 1})])
def test_layer_on_gpu_matches_cpu(type_name, props):
    shape = (4, 5, 9)
    layer = make_layer(type_name, [shape], outputs=8, **props)
    params = layer.init_params(np.random.default_rng(3))
    x = nhwc(shape, n=6, seed=4, dtype=np.float32)
    dout = np.random.default_rng(5).standard_normal((6, 1, 9, layer.out_shape[0])).astype(np.float32)

    cpu = Context(xp=np, train=True)
    out, cache = layer.forward([x], params, cpu)
    (dx,), grads = layer.backward(dout, cache, params, cpu)

    gpu = Context(xp=cupy, train=True)
    gparams = {k: cupy.asarray(v) for k, v in params.items()}
    gout, gcache = layer.forward([cupy.asarray(x)], gparams, gpu)
    (gdx,), ggrads = layer.backward(cupy.asarray(dout), gcache, gparams, gpu)
    _same(gout, out, 1e-5, "output")
    _same(gdx, dx, 1e-5, "dx")
    for k in grads:
        _same(ggrads[k], grads[k], 1e-4, k)


@pytest.mark.parametrize("pool", ["last", "mean", "sum", "max"])
def test_seqpool_on_gpu(pool):
    layer = make_layer("seqpool", [(4, 1, 6)], pool=pool)
    x = nhwc((4, 1, 6), n=3, seed=2, dtype=np.float32)
    out, cache = layer.forward([x], {}, Context(xp=np))
    (dx,), _ = layer.backward(np.ones_like(out), cache, {}, Context(xp=np))
    gout, gcache = layer.forward([cupy.asarray(x)], {}, Context(xp=cupy))
    (gdx,), _ = layer.backward(cupy.ones_like(gout), gcache, {}, Context(xp=cupy))
    _same(gout, out, 1e-6, "output")
    _same(gdx, dx, 1e-6, "dx")
