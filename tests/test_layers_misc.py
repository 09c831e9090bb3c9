"""Neurons, normalization (rnorm, cmrnorm, batchnorm), dropout and the joining layers (eltsum, eltmax,
concat): numerical gradient checks in float64, PyTorch parity in float32, and the errors users see."""
from __future__ import annotations

import numpy as np
import pytest

from convnet_cli.config.layer_def import parse_props
from convnet_cli.config.loader import parse_layer_def_text
from convnet_cli.errors import ConfigError
from convnet_cli.layers.base import Context
from convnet_cli.layers.registry import layer_class
from convnet_cli.layers.neurons import NEURONS, parse_neuron
from tests.helpers import gradcheck, make_layer, nhwc

# Every neuron with non-default parameters where it has any; the kinks each one has (to keep the
# inputs of a gradient check away from them) and whether it needs positive inputs.
NEURON_CASES = {
    "ident": ("ident", ()),
    "relu": ("relu", (0.0,)),
    "logistic": ("logistic", ()),
    "tanh": ("tanh[1.7159,0.6667]", ()),
    "abs": ("abs", (0.0,)),
    "softrelu": ("softrelu", ()),
    "square": ("square", ()),
    "sqrt": ("sqrt", ()),
    "brelu": ("brelu[1.5]", (0.0, 1.5)),
    "linear": ("linear[-2,0.5]", ()),
    "elu": ("elu[0.7]", (0.0,)),
    "leakyrelu": ("leakyrelu[0.1]", (0.0,)),
}


def test_every_neuron_has_a_case():
    assert set(NEURON_CASES) == set(NEURONS)


def neuron_input(name, shape_chw=(3, 4, 5), n=2, seed=0, dtype=np.float64):
    """Random (N, H, W, C) values at least 0.05 from the neuron's kinks (positive for sqrt)."""
    x = 1.5 * nhwc(shape_chw, n=n, seed=seed)
    if name == "sqrt":
        x = np.abs(x) + 0.1
    for kink in NEURON_CASES[name][1]:
        near = np.abs(x - kink) < 0.05
        x = np.where(near, kink + np.where(x >= kink, 0.05, -0.05), x)
    return x.astype(dtype)


def neuron_layer(spec, shape_chw):
    """A `neuron` layer (make_layer's `neuron=` is the neuron *attached* to a layer, so build it here)."""
    cls = layer_class("neuron")
    return cls("N", parse_props(cls, {"neuron": spec}, "N", "test.yaml"), [shape_chw], ["in0"], "test.yaml")


def ctx(train=True, seed=0):
    return Context(xp=np, train=train, rng=np.random.default_rng(seed))


# -- neurons ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(NEURON_CASES))
def test_neuron_gradcheck(name):
    shape = (3, 4, 5)
    layer = neuron_layer(NEURON_CASES[name][0], shape)
    gradcheck(layer, [neuron_input(name, shape)], max_checks=40)


def test_neuron_attached_to_a_layer_gradcheck():
    # the path the net takes: a layer's output goes through its `neuron:`
    shapes = [(2, 3, 5), (1, 3, 5)]
    layer = make_layer("concat", shapes, neuron="tanh[1.7159,0.6667]")
    gradcheck(layer, [nhwc(s, seed=i) for i, s in enumerate(shapes)], max_checks=30)


@pytest.mark.parametrize("name", sorted(NEURON_CASES))
def test_neuron_keeps_float32(name):
    fn = parse_neuron(NEURON_CASES[name][0])
    x = neuron_input(name, dtype=np.float32)
    y, cache = fn.forward(x, np)
    dx = fn.backward(np.ones_like(y), cache, np)
    assert y.dtype == np.float32 and dx.dtype == np.float32


def _torch_neuron(torch, name, args):
    F = torch.nn.functional
    return {
        "ident": lambda t: t,
        "relu": F.relu,
        "logistic": torch.sigmoid,
        "tanh": lambda t: args[0] * torch.tanh(args[1] * t),
        "abs": torch.abs,
        "softrelu": F.softplus,
        "square": torch.square,
        "sqrt": torch.sqrt,
        "brelu": lambda t: F.hardtanh(t, 0.0, args[0]),
        "linear": lambda t: args[0] * t + args[1],
        "elu": lambda t: F.elu(t, alpha=args[0]),
        "leakyrelu": lambda t: F.leaky_relu(t, negative_slope=args[0]),
    }[name]


@pytest.mark.parametrize("name", sorted(NEURON_CASES))
def test_neuron_matches_torch(name):
    torch = pytest.importorskip("torch", reason="PyTorch not installed: parity tests need it")
    fn = parse_neuron(NEURON_CASES[name][0])
    x = neuron_input(name, (4, 3, 6), n=3, dtype=np.float32)
    if name == "softrelu":
        x[0, 0, :, 0] = [-30, -10, 10, 25, 40, 90]  # far tails: both must stay finite and exact
    dy = nhwc((4, 3, 6), n=3, seed=7, dtype=np.float32)
    y, cache = fn.forward(x, np)
    dx = fn.backward(dy, cache, np)
    t = torch.tensor(x, requires_grad=True)
    ty = _torch_neuron(torch, name, fn.args)(t)
    ty.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx, t.grad.numpy(), rtol=1e-5, atol=1e-6)


# -- rnorm / cmrnorm ------------------------------------------------------------------------------------
# a large scale so that the normalization is far from the identity and its cross terms are tested
NORM_HYPER = {"scale": 2.0, "pow": 0.75, "minDiv": 1.0}


@pytest.mark.parametrize("size,shape,hyper", [
    (3, (3, 4, 6), NORM_HYPER),
    (4, (2, 5, 3), NORM_HYPER),
    (5, (1, 3, 7), {"scale": 5.0, "pow": 0.5, "minDiv": 2.0}),  # window larger than H: clipped
])
def test_rnorm_gradcheck(size, shape, hyper):
    layer = make_layer("rnorm", [shape], size=size, hyper=hyper)
    gradcheck(layer, [nhwc(shape, n=2)], max_checks=40)


@pytest.mark.parametrize("size,shape", [(3, (5, 3, 4)), (4, (6, 2, 3)), (3, (3, 1, 1)), (1, (3, 2, 2))])
def test_cmrnorm_gradcheck(size, shape):
    layer = make_layer("cmrnorm", [shape], size=size, hyper=NORM_HYPER)
    gradcheck(layer, [nhwc(shape, n=2)], max_checks=40)


def test_rnorm_matches_a_direct_loop():
    # the definition written out: n = size*size, window [i - size//2, i - size//2 + size - 1], clipped
    size, shape, h = 4, (2, 5, 6), {"scale": 3.0, "pow": 0.6, "minDiv": 1.5}
    layer = make_layer("rnorm", [shape], size=size, hyper=h)
    x = nhwc(shape, n=2)
    out, _ = layer.forward([x], {}, ctx())
    want = np.empty_like(x)
    N, H, W, C = x.shape
    for i in range(H):
        for j in range(W):
            i0, j0 = i - size // 2, j - size // 2
            win = x[:, max(i0, 0):i0 + size, max(j0, 0):j0 + size, :]
            s = (win ** 2).sum(axis=(1, 2))
            want[:, i, j, :] = x[:, i, j, :] * (h["minDiv"] + h["scale"] / size ** 2 * s) ** -h["pow"]
    np.testing.assert_allclose(out, want, rtol=1e-12)


def test_norm_defaults_when_the_params_file_is_silent():
    layer = make_layer("cmrnorm", [(5, 2, 2)], size=3)
    layer.set_hyper({})
    assert (layer.hyper.scale, layer.hyper.pow, layer.hyper.minDiv) == (0.0001, 0.75, 1.0)


@pytest.mark.parametrize("size", [3, 4, 5])
def test_cmrnorm_matches_torch_local_response_norm(size):
    torch = pytest.importorskip("torch", reason="PyTorch not installed: parity tests need it")
    shape, h = (7, 3, 5), {"scale": 0.5, "pow": 0.75, "minDiv": 2.0}
    layer = make_layer("cmrnorm", [shape], size=size, hyper=h)
    x = 2 * nhwc(shape, n=3, dtype=np.float32)
    dout = nhwc(shape, n=3, seed=1, dtype=np.float32)
    out, cache = layer.forward([x], {}, ctx())
    (dx,), _ = layer.backward(dout, cache, {}, ctx())
    assert out.dtype == np.float32 and dx.dtype == np.float32
    lrn = torch.nn.LocalResponseNorm(size, alpha=h["scale"], beta=h["pow"], k=h["minDiv"])
    t = torch.tensor(x.transpose(0, 3, 1, 2).copy(), requires_grad=True)
    ty = lrn(t)
    ty.backward(torch.tensor(dout.transpose(0, 3, 1, 2).copy()))
    np.testing.assert_allclose(out, ty.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx, t.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-5)


# -- batchnorm -----------------------------------------------------------------------------------------
def bn_params(c, seed=5):
    rng = np.random.default_rng(seed)
    return {"gamma": rng.uniform(0.5, 1.5, c), "beta": rng.standard_normal(c),
            "running_mean": rng.standard_normal(c), "running_var": rng.uniform(0.5, 2.0, c)}


@pytest.mark.parametrize("shape,n", [((3, 4, 5), 3), ((4, 1, 1), 6)])
@pytest.mark.parametrize("train", [True, False])
def test_batchnorm_gradcheck(shape, n, train):
    layer = make_layer("batchnorm", [shape])
    gradcheck(layer, [nhwc(shape, n=n)], params=bn_params(shape[0]), train=train, max_checks=40)


def test_batchnorm_init_params():
    p = make_layer("batchnorm", [(3, 2, 2)]).init_params(np.random.default_rng(0))
    assert set(p) == {"gamma", "beta", "running_mean", "running_var"}
    assert all(v.dtype == np.float32 and v.shape == (3,) for v in p.values())
    np.testing.assert_array_equal(p["gamma"], 1)
    np.testing.assert_array_equal(p["running_var"], 1)
    assert not p["beta"].any() and not p["running_mean"].any()
    assert make_layer("batchnorm", [(3, 2, 2)]).learned == ("gamma", "beta")


def _torch_bn(torch, params, eps, momentum):
    c = params["gamma"].shape[0]
    bn = torch.nn.BatchNorm2d(c, eps=eps, momentum=1 - momentum)  # PyTorch's momentum is 1 - ours
    with torch.no_grad():
        bn.weight.copy_(torch.tensor(params["gamma"]))
        bn.bias.copy_(torch.tensor(params["beta"]))
        bn.running_mean.copy_(torch.tensor(params["running_mean"]))
        bn.running_var.copy_(torch.tensor(params["running_var"]))
    return bn


@pytest.mark.parametrize("train", [True, False])
def test_batchnorm_matches_torch(train):
    torch = pytest.importorskip("torch", reason="PyTorch not installed: parity tests need it")
    shape, n, eps, momentum = (3, 4, 5), 4, 1e-3, 0.8
    layer = make_layer("batchnorm", [shape], epsilon=eps, momentum=momentum)
    params = {k: v.astype(np.float32) for k, v in bn_params(shape[0]).items()}
    bn = _torch_bn(torch, params, eps, momentum)
    bn.train(train)
    x = (3 * nhwc(shape, n=n) + 1).astype(np.float32)
    dout = nhwc(shape, n=n, seed=2, dtype=np.float32)

    out, cache = layer.forward([x], params, ctx(train))
    (dx,), grads = layer.backward(dout, cache, params, ctx(train))
    t = torch.tensor(x.transpose(0, 3, 1, 2).copy(), requires_grad=True)
    ty = bn(t)
    ty.backward(torch.tensor(dout.transpose(0, 3, 1, 2).copy()))

    close = dict(rtol=1e-4, atol=1e-5)
    assert out.dtype == dx.dtype == np.float32
    np.testing.assert_allclose(out, ty.detach().numpy().transpose(0, 2, 3, 1), **close)
    np.testing.assert_allclose(dx, t.grad.numpy().transpose(0, 2, 3, 1), **close)
    np.testing.assert_allclose(grads["gamma"], bn.weight.grad.numpy(), **close)
    np.testing.assert_allclose(grads["beta"], bn.bias.grad.numpy(), **close)
    # running statistics: updated in place in train mode (unbiased variance), untouched in eval mode
    np.testing.assert_allclose(params["running_mean"], bn.running_mean.numpy(), **close)
    np.testing.assert_allclose(params["running_var"], bn.running_var.numpy(), **close)
    if not train:
        np.testing.assert_array_equal(params["running_mean"], bn_params(shape[0])["running_mean"].astype(np.float32))


def test_batchnorm_running_stats_follow_neon_momentum():
    layer = make_layer("batchnorm", [(2, 1, 1)], momentum=0.9)
    params = layer.init_params(np.random.default_rng(0))
    x = np.array([1.0, 2.0, 3.0, 6.0], np.float32).reshape(4, 1, 1, 1) * np.array([1.0, -1.0], np.float32)
    layer.forward([x], params, ctx(True))
    # batch mean (3, -3), unbiased variance 14/3: running = 0.9 * old + 0.1 * batch
    np.testing.assert_allclose(params["running_mean"], [0.3, -0.3], rtol=1e-6)
    np.testing.assert_allclose(params["running_var"], [0.9 + 0.1 * 14 / 3] * 2, rtol=1e-6)
    assert params["running_mean"].dtype == np.float32


# -- dropout ---------------------------------------------------------------------------------------------
def test_dropout_is_the_identity_at_test_time():
    layer = make_layer("dropout", [(3, 4, 5)], hyper={"keep": 0.3})
    x = nhwc((3, 4, 5), dtype=np.float32)
    out, cache = layer.forward([x], {}, ctx(train=False))
    np.testing.assert_array_equal(out, x)
    (dx,), _ = layer.backward(x, cache, {}, ctx(train=False))
    np.testing.assert_array_equal(dx, x)


def test_dropout_keep_rate_and_scaling():
    keep = 0.7
    layer = make_layer("dropout", [(16, 8, 8)], hyper={"keep": keep})
    x = np.ones((64, 8, 8, 16), np.float32)  # 65536 units: the kept share has sd 0.0018
    out, mask = layer.forward([x], {}, ctx(seed=11))
    assert out.dtype == np.float32
    kept = out != 0
    assert abs(kept.mean() - keep) < 0.01
    np.testing.assert_allclose(out[kept], 1 / keep, rtol=1e-6)  # inverted dropout: kept units scaled up
    assert abs(out.mean() - 1) < 0.015  # so the expected output is the input
    # the gradient passes through exactly the units the forward pass kept, with the same scale
    dout = nhwc((16, 8, 8), n=64, seed=3, dtype=np.float32)
    (dx,), _ = layer.backward(dout, mask, {}, ctx(seed=99))
    np.testing.assert_array_equal(dx != 0, kept)
    np.testing.assert_allclose(dx[kept], dout[kept] / keep, rtol=1e-6)


def test_dropout_masks_come_from_ctx_rng():
    layer = make_layer("dropout", [(4, 4, 4)], hyper={"keep": 0.5})
    x = nhwc((4, 4, 4), n=4)
    a, _ = layer.forward([x], {}, ctx(seed=1))
    b, _ = layer.forward([x], {}, ctx(seed=1))
    c, _ = layer.forward([x], {}, ctx(seed=2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_dropout_keep_1_and_default():
    x = nhwc((2, 3, 3))
    out, _ = make_layer("dropout", [(2, 3, 3)], hyper={"keep": 1.0}).forward([x], {}, ctx())
    np.testing.assert_array_equal(out, x)
    layer = make_layer("dropout", [(2, 3, 3)])
    layer.set_hyper({})
    assert layer.hyper.keep == 0.5


def test_dropout_gradcheck():
    # gradcheck re-seeds ctx.rng for every pass, so the mask is fixed and the check is exact
    layer = make_layer("dropout", [(3, 2, 5)], hyper={"keep": 0.6})
    gradcheck(layer, [nhwc((3, 2, 5), n=3)], max_checks=40)


# -- eltsum / eltmax / concat ------------------------------------------------------------------------------
def test_eltsum_gradcheck_and_value():
    shape = (3, 2, 5)
    layer = make_layer("eltsum", [shape] * 3, coeffs=[0.5, -2, 1.5])
    xs = [nhwc(shape, seed=i) for i in range(3)]
    gradcheck(layer, xs, max_checks=30)
    out, _ = layer.forward(xs, {}, ctx())
    np.testing.assert_allclose(out, 0.5 * xs[0] - 2 * xs[1] + 1.5 * xs[2])


def test_eltsum_default_coeffs_do_not_alias():
    shape = (2, 3, 3)
    layer = make_layer("eltsum", [shape] * 2)
    xs = [nhwc(shape, seed=i, dtype=np.float32) for i in range(2)]
    x0 = xs[0].copy()
    out, cache = layer.forward(xs, {}, ctx())
    out += 1  # a later in-place op must not reach the input
    np.testing.assert_array_equal(xs[0], x0)
    dxs, _ = layer.backward(np.ones_like(out), cache, {}, ctx())
    assert dxs[0] is not dxs[1] and dxs[0].dtype == np.float32
    gradcheck(make_layer("eltsum", [shape] * 2), [nhwc(shape, seed=i) for i in range(2)], max_checks=20)


def test_eltmax_gradcheck_and_routing():
    shape = (3, 4, 2)
    layer = make_layer("eltmax", [shape] * 3)
    xs = [nhwc(shape, seed=i) for i in range(3)]
    gradcheck(layer, xs, max_checks=30)
    out, cache = layer.forward(xs, {}, ctx())
    np.testing.assert_array_equal(out, np.maximum(np.maximum(xs[0], xs[1]), xs[2]))
    dxs, _ = layer.backward(np.ones_like(out), cache, {}, ctx())
    np.testing.assert_array_equal(sum(dxs), 1)  # each unit's gradient goes to exactly one input
    np.testing.assert_array_equal(dxs[1] == 1, (xs[1] == out))


def test_concat_gradcheck_and_shape():
    shapes = [(3, 2, 5), (1, 2, 5), (2, 2, 5)]
    layer = make_layer("concat", shapes)
    assert layer.out_shape == (6, 2, 5)
    xs = [nhwc(s, seed=i) for i, s in enumerate(shapes)]
    gradcheck(layer, xs, max_checks=30)
    out, _ = layer.forward(xs, {}, ctx())
    np.testing.assert_array_equal(out[..., 3:4], xs[1])


# -- errors users cause ---------------------------------------------------------------------------------------
def test_eltsum_coeffs_must_match_inputs():
    with pytest.raises(ConfigError, match=r"layer 'L': coeffs has 3 value\(s\) but the layer has 2 inputs"):
        make_layer("eltsum", [(2, 3, 3)] * 2, coeffs=[1, 2, 3])


@pytest.mark.parametrize("type_name", ["eltsum", "eltmax"])
def test_elementwise_shapes_must_agree(type_name):
    with pytest.raises(ConfigError, match=r"'in0' gives \(2, 3, 3\) and 'in1' gives \(2, 3, 4\)"):
        make_layer(type_name, [(2, 3, 3), (2, 3, 4)])


def test_concat_maps_must_agree():
    with pytest.raises(ConfigError, match=r"same HxW map, but 'in0' is 3x4 and 'in2' is 3x5"):
        make_layer("concat", [(2, 3, 4), (5, 3, 4), (1, 3, 5)])


def test_joining_layers_need_two_inputs():
    text = "d: {type: data}\ns: {type: eltsum, inputs: d}\n"
    with pytest.raises(ConfigError, match=r"layer 's': a eltsum layer takes at least 2 input\(s\), got 1"):
        parse_layer_def_text(text, "net.yaml")


def test_norm_errors():
    with pytest.raises(ConfigError, match=r"missing required key 'size' for a rnorm layer"):
        make_layer("rnorm", [(3, 4, 4)])
    with pytest.raises(ConfigError, match=r"size 5 is larger than the input's 3 channels"):
        make_layer("cmrnorm", [(3, 4, 4)], size=5)
    with pytest.raises(ConfigError, match=r"size 0 must be at least 1"):
        make_layer("rnorm", [(3, 4, 4)], size=0)
    with pytest.raises(ConfigError, match=r"minDiv 0 must be positive"):
        make_layer("rnorm", [(3, 4, 4)], size=3, hyper={"minDiv": 0})
    with pytest.raises(ConfigError, match=r"scale -1 must not be negative"):
        make_layer("cmrnorm", [(3, 4, 4)], size=3, hyper={"scale": -1})


def test_batchnorm_momentum_error():
    with pytest.raises(ConfigError, match=r"momentum 1.5 must be between 0 and 1"):
        make_layer("batchnorm", [(3, 4, 4)], momentum=1.5)


@pytest.mark.parametrize("keep", [0, 1.5, -0.2])
def test_dropout_keep_error(keep):
    with pytest.raises(ConfigError, match=r"layer 'L': keep .* must be in \(0, 1\]"):
        make_layer("dropout", [(3, 4, 4)], hyper={"keep": keep})


def test_column_sums_are_the_sums_of_the_columns():
    """The per-channel sums of batchnorm and the bias gradients of conv and the recurrent layers (one GEMV);
    the cached ones vector must follow the row count and the dtype."""
    import numpy as np

    from convnet_cli.layers.base import column_sums

    rng = np.random.default_rng(0)
    for rows, cols, dtype in [(7, 3, np.float32), (1000, 16, np.float32), (7, 5, np.float64), (1, 4, np.float32)]:
        a = rng.standard_normal((rows, cols)).astype(dtype)
        got = column_sums(a, np)
        assert got.shape == (cols,) and got.dtype == dtype
        np.testing.assert_allclose(got, a.sum(axis=0, dtype=np.float64), rtol=1e-5 if dtype == np.float32 else 1e-12)
