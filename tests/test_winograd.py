"""Winograd F(2x2, 3x3) convolution: agreement with im2col + GEMM, gradients, PyTorch parity, the per-shape
choice and its cache."""
import json

import numpy as np
import pytest

from convnet_cli.layers import winograd
from convnet_cli.layers.base import Context
from tests.helpers import gradcheck, make_layer, nhwc

CTX = Context(xp=np, train=True)

# (C, H, W), keys: even and odd output sizes, padding 0 / 1 / 2 and unequal, unshared biases
CASES = [
    ((4, 6, 7), dict(filters=5, filterSize=3, padding=1)),
    ((6, 7, 8), dict(filters=3, filterSize=3)),
    ((5, 5, 9), dict(filters=4, filterSize=3, padding=2)),
    ((4, 8, 5), dict(filters=6, filterSize=3, padding=[1, 0])),
    ((4, 6, 6), dict(filters=3, filterSize=3, padding=1, sharedBiases=0)),
]


@pytest.fixture(autouse=True)
def fresh_choices(monkeypatch, tmp_path):
    """No decision of another test (or of the user's cache file) leaks in; nothing is written to $HOME."""
    monkeypatch.setenv("CONVNET_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(winograd, "_CHOICES", {})
    monkeypatch.setattr(winograd, "_LOADED", [False])


def randomized(layer, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    params = layer.init_params(rng)
    return {k: rng.standard_normal(v.shape).astype(dtype) * (0.5 if k == "weights" else 1.0)
            for k, v in params.items()}


def run(layer, x, params, algo, monkeypatch, dout=None):
    monkeypatch.setenv("CONVNET_CONV_ALGO", algo)
    out, cache = layer.forward([x], params, CTX)
    if dout is None:
        dout = np.random.default_rng(7).standard_normal(out.shape).astype(x.dtype)
    (dx,), grads = layer.backward(dout, cache, params, CTX)
    return out, dx, grads


def test_transforms_are_exact_on_integers():
    """F(2x2, 3x3) of one tile equals the direct correlation exactly (small integers, float64)."""
    rng = np.random.default_rng(0)
    x = rng.integers(-3, 4, (1, 4, 4, 1)).astype(np.float64)
    w = rng.integers(-3, 4, (3, 3, 1, 1)).astype(np.float64)
    out = winograd.conv_forward(x, w, None, 0, 0)
    want = np.array([[sum(x[0, y + i, z + j, 0] * w[i, j, 0, 0] for i in range(3) for j in range(3))
                      for z in range(2)] for y in range(2)])
    np.testing.assert_array_equal(out[0, :, :, 0], want)


@pytest.mark.parametrize("shape,keys", CASES)
def test_winograd_matches_im2col_float32(shape, keys, monkeypatch):
    layer = make_layer("conv", [shape], **keys)
    assert winograd.eligible(layer.geo)
    params = randomized(layer, dtype=np.float32)
    x = nhwc(shape, n=5, dtype=np.float32)
    ref = run(layer, x, params, "direct", monkeypatch)
    got = run(layer, x, params, "winograd", monkeypatch)
    for name, a, b in zip(("out", "dx"), got[:2], ref[:2]):
        assert a.dtype == np.float32, name
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max(), err_msg=name)
    for k in ("weights", "biases"):
        np.testing.assert_allclose(got[2][k], ref[2][k], rtol=1e-4, atol=1e-4 * np.abs(ref[2][k]).max(), err_msg=k)


def test_winograd_over_several_chunks(monkeypatch):
    """Chunks of one case (and a last, shorter chunk) give what one chunk gives."""
    layer = make_layer("conv", [(4, 7, 9)], filters=5, filterSize=3, padding=1)
    params = randomized(layer, dtype=np.float64)
    x = nhwc((4, 7, 9), n=5)
    whole = run(layer, x, params, "winograd", monkeypatch)
    monkeypatch.setattr(winograd, "WINO_CHUNK_BYTES", 1)
    parts = run(layer, x, params, "winograd", monkeypatch)
    for a, b in zip(whole[:2], parts[:2]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(whole[2]["weights"], parts[2]["weights"], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape,keys", CASES)
def test_winograd_gradients(shape, keys, monkeypatch):
    monkeypatch.setenv("CONVNET_CONV_ALGO", "winograd")
    layer = make_layer("conv", [shape], **keys)
    gradcheck(layer, [nhwc(shape, n=2)], randomized(layer), max_checks=30)


def test_winograd_without_input_gradient(monkeypatch):
    layer = make_layer("conv", [(4, 6, 7)], filters=5, filterSize=3, padding=1)
    layer.input_grads = False
    params = randomized(layer)
    x = nhwc((4, 6, 7), n=3)
    _, dx, grads = run(layer, x, params, "winograd", monkeypatch)
    assert dx is None
    layer.input_grads = True
    _, _, ref = run(layer, x, params, "direct", monkeypatch)
    np.testing.assert_allclose(grads["weights"], ref["weights"], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("shape,keys", CASES[:4])
def test_winograd_matches_pytorch(shape, keys, monkeypatch):
    torch = pytest.importorskip("torch", reason="PyTorch not installed: parity tests need it")
    layer = make_layer("conv", [shape], **keys)
    params = randomized(layer, dtype=np.float32)
    x = nhwc(shape, n=4, dtype=np.float32)
    out, dx, grads = run(layer, x, params, "winograd", monkeypatch)
    dout = np.random.default_rng(7).standard_normal(out.shape).astype(np.float32)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
    wt = torch.from_numpy(params["weights"].copy()).requires_grad_(True)
    bt = torch.from_numpy(params["biases"].copy()).requires_grad_(True)
    yt = torch.nn.functional.conv2d(xt, wt, bt, padding=layer.props.padding)
    yt.backward(torch.from_numpy(dout.transpose(0, 3, 1, 2).copy()))
    np.testing.assert_allclose(out.transpose(0, 3, 1, 2), yt.detach().numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx.transpose(0, 3, 1, 2), xt.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(grads["weights"], wt.grad.numpy(), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(grads["biases"], bt.grad.numpy(), rtol=1e-4, atol=1e-3)


def test_not_eligible_shapes():
    for keys, shape in ((dict(filters=4, filterSize=5, padding=2), (4, 8, 8)),
                        (dict(filters=4, filterSize=3, stride=2), (4, 8, 8)),
                        (dict(filters=4, filterSize=3, groups=2), (4, 8, 8)),
                        (dict(filters=4, filterSize=3, padding=1), (1, 8, 8))):
        assert not winograd.eligible(make_layer("conv", [shape], **keys).geo), keys


def test_choice_is_timed_once_per_shape_and_cached(monkeypatch, tmp_path):
    monkeypatch.delenv("CONVNET_CONV_ALGO", raising=False)
    monkeypatch.setattr(winograd, "SMALL_FLOPS", 0)
    calls = {"direct": 0, "winograd": 0}
    real_forward = winograd.conv_forward

    def counted(*a, **k):
        calls["winograd"] += 1
        return real_forward(*a, **k)

    monkeypatch.setattr(winograd, "conv_forward", counted)
    layer = make_layer("conv", [(4, 6, 7)], filters=5, filterSize=3, padding=1)
    params = randomized(layer, dtype=np.float32)
    x = nhwc((4, 6, 7), n=3, dtype=np.float32)
    out1, cache = layer.forward([x], params, CTX)
    assert calls["winograd"] == 2  # timed twice
    key = layer._algo_key("forward", x)
    algo = winograd.choices()[key]
    assert algo in winograd.ALGOS
    out2, _ = layer.forward([x], params, CTX)
    assert calls["winograd"] == 2 + (algo == "winograd")  # not timed again
    np.testing.assert_array_equal(out1, out2)  # the timed call returned the chosen path's result
    layer.backward(np.ones_like(out1), cache, params, CTX)
    saved = json.loads((tmp_path / "conv_algos.json").read_text())
    (table,) = saved.values()
    assert table[key] == algo and layer._algo_key("backward", x) in table
    # a new process (the in-memory choices gone) takes the saved choice without timing
    monkeypatch.setattr(winograd, "_CHOICES", {})
    monkeypatch.setattr(winograd, "_LOADED", [False])
    before = calls["winograd"]
    layer.forward([x], params, CTX)
    assert winograd.choices()[key] == algo and calls["winograd"] == before + (algo == "winograd")


def test_small_layers_are_not_timed(monkeypatch):
    monkeypatch.delenv("CONVNET_CONV_ALGO", raising=False)
    monkeypatch.setattr(winograd, "conv_forward", lambda *a, **k: pytest.fail("timed a tiny layer"))
    layer = make_layer("conv", [(4, 6, 7)], filters=5, filterSize=3, padding=1)
    layer.forward([nhwc((4, 6, 7), n=2, dtype=np.float32)], randomized(layer, dtype=np.float32), CTX)
    assert set(winograd.choices().values()) == {"direct"}

