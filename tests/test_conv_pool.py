"""conv, local and pool layers: numerical gradients (float64), parity with PyTorch (float32), config errors."""
import re

import numpy as np
import pytest

from convnet_cli.errors import ConfigError
from convnet_cli.layers import conv as conv_mod
from convnet_cli.layers import pool as pool_mod
from convnet_cli.layers.base import Context
from convnet_cli.layers.init import INIT_KINDS, init_weights
from tests.helpers import gradcheck, make_layer, nhwc

CTX = Context(xp=np)


def randomized(layer, seed=0, dtype=np.float64):
    """Parameters with non-trivial biases and O(1) weights, so every gradient term is visible."""
    rng = np.random.default_rng(seed)
    params = layer.init_params(rng)
    return {k: rng.standard_normal(v.shape).astype(dtype) * (0.5 if k == "weights" else 1.0)
            for k, v in params.items()}


@pytest.fixture
def small_chunks(monkeypatch):
    """Force several chunks of cases (and, for pool, several threads) on tiny inputs."""
    monkeypatch.setattr(conv_mod, "CHUNK_BYTES", 2048)
    monkeypatch.setattr(pool_mod, "CHUNK_BYTES", 256)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")


# -- init --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", INIT_KINDS)
def test_init_weights_shapes_and_dtype(kind):
    w = init_weights(np.random.default_rng(0), kind, (64, 3, 5, 5), 75, 1600, 0.01)
    assert w.shape == (64, 3, 5, 5) and w.dtype == np.float32
    if kind == "gaussian":
        assert abs(w.std() - 0.01) < 0.001
    elif kind == "uniform":
        assert np.abs(w).max() <= 0.01
    elif kind == "kaiming_normal":
        assert abs(w.std() - np.sqrt(2 / 75)) < 0.02
    elif kind == "glorot_uniform":
        assert np.abs(w).max() <= np.sqrt(6 / (75 + 1600)) + 1e-7
    elif kind == "constant":
        assert np.all(w == np.float32(0.01))
    elif kind == "orthogonal":
        m = w.reshape(64, -1).astype(np.float64)
        np.testing.assert_allclose(m @ m.T, np.eye(64), atol=1e-5)  # gain 1 at the default initW


def test_orthogonal_gain_and_tall_matrices():
    w = init_weights(np.random.default_rng(1), "orthogonal", (20, 8), 8, 20, 2.0)
    np.testing.assert_allclose(w.T.astype(np.float64) @ w, 4 * np.eye(8), atol=1e-5)


# -- conv: gradients -----------------------------------------------------------------------------------------
CONV_CASES = [
    ("square", (3, 6, 7), dict(filters=4, filterSize=3)),
    ("non-square filter", (2, 6, 9), dict(filters=3, filterSize=[3, 2])),
    ("stride 2", (2, 7, 9), dict(filters=3, filterSize=3, stride=2)),
    ("stride [2,3] + padding [1,2]", (2, 7, 9), dict(filters=3, filterSize=[3, 4], stride=[2, 3], padding=[1, 2])),
    ("padding", (2, 5, 6), dict(filters=3, filterSize=3, padding=1)),
    ("groups 2", (4, 6, 7), dict(filters=6, filterSize=3, groups=2, padding=1)),
    ("one channel", (1, 6, 8), dict(filters=3, filterSize=[3, 5], padding=[1, 2])),
    ("depthwise", (3, 6, 7), dict(filters=6, filterSize=3, groups=3)),
    ("sharedBiases 0", (2, 5, 6), dict(filters=3, filterSize=3, sharedBiases=0)),
    ("1x1", (5, 4, 6), dict(filters=3, filterSize=1)),
    ("1x1 stride 2", (5, 5, 6), dict(filters=3, filterSize=1, stride=2)),
    ("full-size filter", (3, 4, 5), dict(filters=6, filterSize=[4, 5])),
    ("full-size filter + padding", (2, 3, 4), dict(filters=3, filterSize=[5, 4], padding=[1, 0])),
]


@pytest.mark.parametrize("label,shape,keys", CONV_CASES, ids=[c[0] for c in CONV_CASES])
def test_conv_gradients(label, shape, keys):
    layer = make_layer("conv", [shape], **keys)
    gradcheck(layer, [nhwc(shape, n=2)], randomized(layer), max_checks=40)


def test_conv_gradients_over_several_chunks(small_chunks):
    for shape, keys in [((3, 6, 7), dict(filters=4, filterSize=3, padding=1)),
                        ((1, 6, 7), dict(filters=2, filterSize=3, stride=2))]:
        layer = make_layer("conv", [shape], **keys)
        gradcheck(layer, [nhwc(shape, n=5)], randomized(layer), max_checks=30)


def test_conv_with_neuron_gradients():
    layer = make_layer("conv", [(2, 5, 6)], neuron="tanh[1,1]", filters=3, filterSize=3, padding=1)
    gradcheck(layer, [nhwc((2, 5, 6), n=2)], randomized(layer), max_checks=30)


def test_conv_shapes_and_layouts():
    layer = make_layer("conv", [(4, 64, 101)], filters=8, filterSize=[5, 3], padding=[2, 1], stride=[2, 1],
                       groups=2)
    assert layer.out_shape == (8, 32, 101)
    p = layer.init_params(np.random.default_rng(0))
    assert p["weights"].shape == (8, 2, 5, 3) and p["weights"].dtype == np.float32
    assert p["biases"].shape == (8,) and layer.learned == ("weights", "biases")
    unshared = make_layer("conv", [(4, 10, 12)], filters=8, filterSize=3, sharedBiases=0, initB=0.5)
    b = unshared.init_params(np.random.default_rng(0))["biases"]
    assert b.shape == (8, 8, 10) and np.all(b == 0.5)


def test_conv_float32_stays_float32_and_skips_input_grad():
    layer = make_layer("conv", [(1, 8, 9)], filters=4, filterSize=3, padding=1)
    params = layer.init_params(np.random.default_rng(0))
    x = nhwc((1, 8, 9), n=3, dtype=np.float32)
    out, cache = layer.forward([x], params, CTX)
    assert out.dtype == np.float32 and out.shape == (3, 8, 9, 4)
    (dx,), grads = layer.backward(np.ones_like(out), cache, params, CTX)
    assert dx.dtype == np.float32 and dx.shape == x.shape
    assert grads["weights"].dtype == np.float32 and grads["biases"].dtype == np.float32
    layer.input_grads = False
    (dx2,), grads2 = layer.backward(np.ones_like(out), cache, params, CTX)
    assert dx2 is None
    np.testing.assert_allclose(grads2["weights"], grads["weights"], rtol=1e-6)


# -- local ----------------------------------------------------------------------------------------------------
LOCAL_CASES = [
    ("square", (3, 5, 6), dict(filters=4, filterSize=3)),
    ("non-square, stride, padding, groups", (4, 6, 7), dict(filters=6, filterSize=[3, 2], stride=[2, 1],
                                                              padding=[1, 1], groups=2)),
    ("shared biases", (2, 4, 5), dict(filters=3, filterSize=2, sharedBiases=1)),
]


@pytest.mark.parametrize("label,shape,keys", LOCAL_CASES, ids=[c[0] for c in LOCAL_CASES])
def test_local_gradients(label, shape, keys):
    layer = make_layer("local", [shape], **keys)
    gradcheck(layer, [nhwc(shape, n=2)], randomized(layer), max_checks=40)


def test_local_layout():
    layer = make_layer("local", [(4, 6, 7)], filters=6, filterSize=[3, 2], groups=2)
    p = layer.init_params(np.random.default_rng(0))
    assert layer.out_shape == (6, 4, 6)
    assert p["weights"].shape == (4 * 6, 6, 2 * 3 * 2) and p["biases"].shape == (6, 4, 6)


def test_local_with_one_position_equals_conv():
    """A local layer whose filter covers the whole input is a conv layer (one position)."""
    shape = (3, 4, 5)
    lc = make_layer("local", [shape], filters=2, filterSize=[4, 5], sharedBiases=1)
    cv = make_layer("conv", [shape], filters=2, filterSize=[4, 5])
    p = randomized(cv)
    lp = {"weights": p["weights"].reshape(1, 2, -1), "biases": p["biases"]}
    x = nhwc(shape, n=3)
    np.testing.assert_allclose(lc.forward([x], lp, CTX)[0], cv.forward([x], p, CTX)[0], rtol=1e-12)


# -- pool: gradients -------------------------------------------------------------------------------------
POOL_CASES = [
    ("non-overlapping", (2, 6, 8), dict(sizeX=2)),
    ("overlapping stride < size", (2, 7, 9), dict(sizeX=3, stride=2)),
    ("ceil-mode truncated edge", (2, 8, 11), dict(sizeX=3, stride=3)),
    ("non-square window and stride", (2, 7, 10), dict(sizeX=[3, 2], stride=[2, 3])),
    ("start 1", (2, 8, 9), dict(sizeX=3, stride=2, start=1)),
    ("negative start", (2, 6, 7), dict(sizeX=3, stride=2, start=-1)),
    ("outputsX given", (2, 9, 9), dict(sizeX=3, stride=2, outputsX=3)),
    ("stride > size", (2, 7, 8), dict(sizeX=2, stride=3)),
    ("global all", (3, 5, 6), dict(sizeX="all")),
    ("window = whole map", (3, 5, 6), dict(sizeX=[5, 6])),
]


@pytest.mark.parametrize("pool", ["max", "avg"])
@pytest.mark.parametrize("label,shape,keys", POOL_CASES, ids=[c[0] for c in POOL_CASES])
def test_pool_gradients(pool, label, shape, keys):
    layer = make_layer("pool", [shape], pool=pool, **keys)
    gradcheck(layer, [nhwc(shape, n=2)], max_checks=40)


@pytest.mark.parametrize("pool", ["max", "avg"])
def test_pool_gradients_over_several_threads(pool, small_chunks):
    layer = make_layer("pool", [(3, 7, 9)], pool=pool, sizeX=3, stride=2)
    gradcheck(layer, [nhwc((3, 7, 9), n=6)], max_checks=40)


def test_pool_output_rule():
    # cuda-convnet: ceil((size - start - sizeX) / stride) + 1
    assert make_layer("pool", [(4, 64, 101)], pool="max", sizeX=3, stride=2).out_shape == (4, 32, 50)
    assert make_layer("pool", [(4, 8, 11)], pool="max", sizeX=3, stride=3).out_shape == (4, 3, 4)
    assert make_layer("pool", [(4, 9, 9)], pool="avg", sizeX=3, stride=2, start=1).out_shape == (4, 4, 4)
    assert make_layer("pool", [(4, 9, 9)], pool="avg", sizeX=3, stride=2, outputsX=[2, 3]).out_shape == (4, 2, 3)
    assert make_layer("pool", [(4, 8, 12)], pool="max", sizeX="all").out_shape == (4, 1, 1)
    assert make_layer("pool", [(4, 7, 8)], pool="max", sizeX=2, stride=3).out_shape == (4, 3, 3)


def test_avg_pool_divides_by_pixels_inside():
    layer = make_layer("pool", [(1, 1, 5)], pool="avg", sizeX=[1, 2])
    x = np.arange(1.0, 6.0).reshape(1, 1, 5, 1)
    out, _ = layer.forward([x], {}, CTX)
    np.testing.assert_allclose(out.ravel(), [1.5, 3.5, 5.0])  # the last window holds one pixel


def test_max_pool_ties_go_to_the_first():
    layer = make_layer("pool", [(1, 2, 2)], pool="max", sizeX=2)
    x = np.zeros((1, 2, 2, 1), dtype=np.float32)
    out, cache = layer.forward([x], {}, CTX)
    (dx,), _ = layer.backward(np.ones_like(out), cache, {}, CTX)
    np.testing.assert_array_equal(dx[0, :, :, 0], [[1, 0], [0, 0]])


# -- parity with PyTorch (float32) -----------------------------------------------------------------------
def _t(a):
    import torch

    return torch.tensor(np.ascontiguousarray(a))


CONV_PARITY = [
    ((3, 9, 11), dict(filters=4, filterSize=3)),
    ((3, 9, 11), dict(filters=4, filterSize=[3, 5], padding=[1, 2])),
    ((4, 10, 13), dict(filters=6, filterSize=[3, 2], stride=[2, 3], padding=[1, 0], groups=2)),
    ((1, 16, 25), dict(filters=5, filterSize=5, padding=2, stride=2)),
    ((6, 8, 9), dict(filters=6, filterSize=3, groups=3, padding=1)),
    ((8, 6, 7), dict(filters=4, filterSize=1)),
    ((5, 6, 7), dict(filters=4, filterSize=[6, 7])),
    ((16, 12, 20), dict(filters=24, filterSize=3, padding=1)),
]


@pytest.mark.parametrize("shape,keys", CONV_PARITY)
def test_conv_matches_pytorch(shape, keys, small_chunks):
    torch = pytest.importorskip("torch", reason="PyTorch not installed: parity tests need it")
    layer = make_layer("conv", [shape], **keys)
    params = randomized(layer, dtype=np.float32)
    x = nhwc(shape, n=5, dtype=np.float32)
    out, cache = layer.forward([x], params, CTX)
    dout = np.random.default_rng(7).standard_normal(out.shape).astype(np.float32)
    (dx,), grads = layer.backward(dout, cache, params, CTX)

    xt = _t(x.transpose(0, 3, 1, 2)).requires_grad_(True)
    wt = _t(params["weights"]).requires_grad_(True)
    bt = _t(params["biases"]).requires_grad_(True)
    yt = torch.nn.functional.conv2d(xt, wt, bt, stride=layer.props.stride, padding=layer.props.padding,
                                    groups=layer.props.groups)
    yt.backward(_t(dout.transpose(0, 3, 1, 2)))
    tol = dict(rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out.transpose(0, 3, 1, 2), yt.detach().numpy(), **tol)
    np.testing.assert_allclose(dx.transpose(0, 3, 1, 2), xt.grad.numpy(), **tol)
    np.testing.assert_allclose(grads["weights"], wt.grad.numpy(), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(grads["biases"], bt.grad.numpy(), rtol=1e-4, atol=1e-3)


def test_unshared_biases_match_pytorch():
    torch = pytest.importorskip("torch", reason="PyTorch not installed: parity tests need it")
    layer = make_layer("conv", [(3, 7, 8)], filters=4, filterSize=3, sharedBiases=0)
    params = randomized(layer, dtype=np.float32)
    x = nhwc((3, 7, 8), n=3, dtype=np.float32)
    out, cache = layer.forward([x], params, CTX)
    (_,), grads = layer.backward(np.ones_like(out), cache, params, CTX)
    bt = _t(params["biases"]).requires_grad_(True)
    yt = torch.nn.functional.conv2d(_t(x.transpose(0, 3, 1, 2)), _t(params["weights"])) + bt
    yt.sum().backward()
    np.testing.assert_allclose(out.transpose(0, 3, 1, 2), yt.detach().numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(grads["biases"], bt.grad.numpy(), rtol=1e-5)


# Shapes where cuda-convnet's output rule and PyTorch's ceil_mode agree; start s is emulated by cropping.
POOL_PARITY = [
    ((3, 9, 11), 3, 2, 0),
    ((3, 8, 11), 3, 3, 0),
    ((4, 12, 17), [3, 2], [2, 1], 0),
    ((2, 10, 13), 3, 2, 1),
    ((5, 64, 101), 3, 2, 0),
    ((4, 8, 12), 2, 2, 0),
    ((3, 5, 6), [5, 6], [5, 6], 0),
]


@pytest.mark.parametrize("pool", ["max", "avg"])
@pytest.mark.parametrize("shape,size,stride,start", POOL_PARITY)
def test_pool_matches_pytorch(pool, shape, size, stride, start, small_chunks):
    torch = pytest.importorskip("torch", reason="PyTorch not installed: parity tests need it")
    layer = make_layer("pool", [shape], pool=pool, sizeX=size, stride=stride, start=start)
    x = nhwc(shape, n=4, dtype=np.float32)
    x = np.round(x * 2) / 2  # many ties: both must pick the first maximum
    out, cache = layer.forward([x], {}, CTX)
    dout = np.random.default_rng(3).standard_normal(out.shape).astype(np.float32)
    (dx,), _ = layer.backward(dout, cache, {}, CTX)

    xt = _t(x.transpose(0, 3, 1, 2)[:, :, start:, start:]).requires_grad_(True)
    f = torch.nn.functional
    if pool == "max":
        yt = f.max_pool2d(xt, layer.size, layer.stride, ceil_mode=True)
    else:
        yt = f.avg_pool2d(xt, layer.size, layer.stride, ceil_mode=True, count_include_pad=False)
    assert tuple(yt.shape[1:]) == layer.out_shape
    yt.backward(_t(dout.transpose(0, 3, 1, 2)))
    want_dx = np.zeros((x.shape[0], shape[0], shape[1], shape[2]), dtype=np.float32)
    want_dx[:, :, start:, start:] = xt.grad.numpy()
    np.testing.assert_allclose(out.transpose(0, 3, 1, 2), yt.detach().numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dx.transpose(0, 3, 1, 2), want_dx, rtol=1e-6, atol=1e-6)


def test_global_pool_matches_pytorch():
    torch = pytest.importorskip("torch", reason="PyTorch not installed: parity tests need it")
    x = nhwc((6, 5, 7), n=3, dtype=np.float32)
    for pool, ref in (("max", torch.amax), ("avg", torch.mean)):
        layer = make_layer("pool", [(6, 5, 7)], pool=pool, sizeX="all")
        out, _ = layer.forward([x], {}, CTX)
        want = ref(_t(x), dim=(1, 2)).numpy()
        np.testing.assert_allclose(out.reshape(3, 6), want, rtol=1e-6, atol=1e-6)


# -- configuration errors --------------------------------------------------------------------------------
def _raises(message, type_name, shape, **keys):
    with pytest.raises(ConfigError, match=re.escape(message)):
        make_layer(type_name, [shape], name="conv2", **keys)


def test_conv_errors():
    _raises("test.yaml: layer 'conv2': filterSize 7 is larger than its input (5x40)", "conv", (3, 5, 40),
            filters=4, filterSize=7)
    _raises("filterSize 7x3 is larger than its input (5x40)", "conv", (3, 5, 40), filters=4, filterSize=[7, 3])
    _raises("filterSize 8 is larger than its input (5x40) with padding 1", "conv", (3, 5, 40), filters=4,
            filterSize=8, padding=1)
    _raises("its input's 3 channels are not divisible by groups 2", "conv", (3, 8, 8), filters=4, filterSize=3,
            groups=2)
    _raises("filters 5 is not divisible by groups 2", "conv", (4, 8, 8), filters=5, filterSize=3, groups=2)
    _raises("filterSize 9 is larger than its input (5x40)", "local", (3, 5, 40), filters=4, filterSize=9)
    with pytest.raises(ConfigError, match="missing required key 'filters'"):
        make_layer("conv", [(3, 8, 8)], filterSize=3)
    with pytest.raises(ConfigError, match="init 'xavier' must be one of"):
        make_layer("conv", [(3, 8, 8)], filters=2, filterSize=3, init="xavier")


def test_pool_errors():
    _raises("test.yaml: layer 'conv2': sizeX 7 is larger than its input (5x40)", "pool", (3, 5, 40), pool="max",
            sizeX=7)
    _raises("sizeX 3x41 is larger than its input (5x40)", "pool", (3, 5, 40), pool="avg", sizeX=[3, 41])
    _raises("outputsX 6 puts windows past the end of the input's 9 rows (stride 2, start 0); use at most 5",
            "pool", (3, 9, 9), pool="max", sizeX=3, stride=2, outputsX=6)
    _raises("start 9 leaves the first window outside the input", "pool", (3, 9, 9), pool="max", sizeX=3, start=9)
    with pytest.raises(ConfigError, match="pool 'min' must be one of max, avg"):
        make_layer("pool", [(3, 8, 8)], pool="min", sizeX=2)
