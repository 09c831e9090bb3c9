"""The CuPy kernels of the layers against their NumPy twins, every layer type on CuPy against the same layer on
NumPy, gradient checks in float64 on CuPy (conv, pool, batchnorm), whole networks, the device random
generator and the spectrogram features. Skipped (with the reason) where CuPy or a GPU is missing."""
from __future__ import annotations

import numpy as np
import pytest

from convnet_cli.backend import Backend
from convnet_cli.layers import conv as CV
from convnet_cli.layers import cost as CO
from convnet_cli.layers import norm as NO
from convnet_cli.layers import pool as PO
from convnet_cli.layers.base import Context
from tests.gpu.device import CUPY as cupy  # None without a GPU: conftest.py skips every test then
from tests.helpers import make_layer, nhwc


def dev(a):
    return cupy.asarray(a)


def host(a):
    return None if a is None else cupy.asnumpy(a)


def same(gpu, cpu, what, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(host(gpu), cpu, rtol=rtol, atol=atol, err_msg=what)


# == kernels against their NumPy twins ====================================================================
CONVS = [  # (in (C, H, W), conv keys): channels 1 and many, groups, strides, asymmetric padding and filters
    ((1, 9, 11), dict(filters=4, filterSize=3, padding=1)),
    ((3, 8, 7), dict(filters=6, filterSize=(3, 2), padding=(2, 1), stride=(1, 2))),
    ((4, 9, 10), dict(filters=6, filterSize=3, padding=1, stride=2, groups=2)),
    ((5, 6, 6), dict(filters=3, filterSize=5, stride=3)),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("in_shape,keys", CONVS)
def test_im2col_col2im_match_numpy(in_shape, keys, dtype):
    layer = make_layer("conv", [in_shape], **keys)
    geo = layer.geo
    n = 3
    x = nhwc(in_shape, n=n, seed=1, dtype=dtype)
    for g in range(geo.g):
        cols = CV.im2col_nhwc_numpy(x, geo, g)
        got = CV.im2col_nhwc_cupy(dev(x), geo, g)
        assert got.shape == cols.shape and got.dtype == dtype
        np.testing.assert_array_equal(host(got), cols, err_msg=f"im2col group {g}")
        d = np.random.default_rng(2).standard_normal(cols.shape).astype(dtype)
        want = CV.col2im_nhwc_numpy(d, geo, n)
        gdx = CV.col2im_nhwc_cupy(dev(d), geo, n)
        # the gather adds the same terms in the same order as the NumPy loop
        np.testing.assert_allclose(host(gdx), want, rtol=1e-6 if dtype == np.float32 else 1e-13, atol=0,
                                   err_msg=f"col2im group {g}")


POOLS = [  # (in (C, H, W), pool keys): overlapping, ceil-rule truncated windows, negative start, strides > size
    ((3, 9, 11), dict(pool="max", sizeX=3, stride=2)),
    ((2, 8, 8), dict(pool="max", sizeX=2)),
    ((2, 7, 10), dict(pool="max", sizeX=(3, 2), stride=(2, 3), start=-1)),
    ((2, 9, 9), dict(pool="max", sizeX=2, stride=3)),
    ((3, 9, 11), dict(pool="avg", sizeX=3, stride=2)),
    ((2, 7, 10), dict(pool="avg", sizeX=(3, 2), stride=(2, 3), start=-1)),
    ((2, 8, 8), dict(pool="avg", sizeX=2)),
]


@pytest.mark.parametrize("in_shape,keys", POOLS)
def test_pool_kernels_match_numpy(in_shape, keys):
    layer = make_layer("pool", [in_shape], **keys)
    is_max = keys["pool"] == "max"
    # small integers: many ties, which must go to the first maximum as in the NumPy code
    x = np.random.default_rng(3).integers(-3, 4, size=(4,) + in_shape[1:] + in_shape[:1]).astype(np.float32)
    out, idx = PO.pool_forward_numpy(x, layer, is_max)
    gout, gidx = PO.pool_forward_cupy(dev(x), layer, is_max)
    np.testing.assert_array_equal(host(gout), out)
    if is_max:
        np.testing.assert_array_equal(host(gidx).astype(np.int64), idx.astype(np.int64))
    dout = np.random.default_rng(4).standard_normal(out.shape).astype(np.float32)
    dx = PO.pool_backward_numpy(dout, idx, layer, is_max, x.shape)
    gdx = PO.pool_backward_cupy(dev(dout), gidx, layer, is_max, x.shape)
    # gathered in the NumPy code's order of window offsets: the same sums (avg: the compiler may fuse
    # dout * inv + s into one rounding)
    if is_max:
        np.testing.assert_array_equal(host(gdx), dx)
    else:
        np.testing.assert_allclose(host(gdx), dx, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("train", [True, False])
def test_batchnorm_kernels_match_numpy(train):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 5, 7, 4)).astype(np.float32) * 3 + 1
    mean = x.mean(axis=(0, 1, 2))
    inv_std = (1 / np.sqrt(x.var(axis=(0, 1, 2)) + 1e-5)).astype(np.float32)
    gamma, beta = rng.standard_normal(4).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    out, xhat = NO.batchnorm_forward_numpy(x, mean, inv_std, gamma, beta)
    gout, gxhat = NO.batchnorm_forward_cupy(*(dev(a) for a in (x, mean, inv_std, gamma, beta)))
    same(gout, out, "out")
    same(gxhat, xhat, "xhat")
    dout = rng.standard_normal(x.shape).astype(np.float32)
    want = NO.batchnorm_backward_numpy(dout, xhat, inv_std, gamma, train)
    got = NO.batchnorm_backward_cupy(dev(dout), dev(xhat), dev(inv_std), dev(gamma), train)
    for g, w, name in zip(got, want, ("dx", "dgamma", "dbeta")):
        same(g, w, name, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind,size", [("cmrnorm", 5), ("cmrnorm", 4), ("rnorm", 3), ("rnorm", 2)])
def test_response_norm_kernels_match_numpy(kind, size):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 6, 7, 8)).astype(np.float32) * 4
    n = size if kind == "cmrnorm" else size * size
    out, denom = NO.response_norm_forward_numpy(x, kind, size, 2.0, 0.01, n, 0.75)
    gout, gdenom = NO.response_norm_forward_cupy(dev(x), kind, size, 2.0, 0.01, n, 0.75)
    same(gout, out, "out")
    same(gdenom, denom, "denom")
    dout = rng.standard_normal(x.shape).astype(np.float32)
    dx = NO.response_norm_backward_numpy(x, denom, out, dout, kind, size, 0.01, n, 0.75)
    gdx = NO.response_norm_backward_cupy(dev(x), gdenom, gout, dev(dout), kind, size, 0.01, n, 0.75)
    same(gdx, dx, "dx")


@pytest.mark.parametrize("k,topk", [(2, 1), (5, 1), (5, 3), (10, 12)])
def test_softmax_logloss_kernels_match_numpy(k, topk):
    rng = np.random.default_rng(7)
    z = (rng.standard_normal((33, k)) * 4).astype(np.float32)
    y = rng.integers(0, k, 33)
    p, cost, top1, topk_err = CO.softmax_logloss_forward_numpy(z, y, topk)
    gp, gcost, gtop1, gtopk = CO.softmax_logloss_forward_cupy(dev(z), dev(y.astype(np.int32)), topk)
    same(gp, p, "p")
    assert gcost == pytest.approx(cost, rel=1e-5)
    assert (gtop1, gtopk) == (top1, topk_err)
    d = CO.softmax_logloss_backward_numpy(p, y, 0.7)
    same(CO.softmax_logloss_backward_cupy(gp, dev(y.astype(np.int32)), 0.7), d, "gradient")


# == every layer type: CuPy against NumPy =================================================================
LAYERS = [  # (type, input shapes, keys, hyper, train)
    ("conv", [(1, 12, 15)], dict(filters=4, filterSize=5, padding=2), {}, True),
    ("conv", [(6, 9, 10)], dict(filters=8, filterSize=3, padding=1, stride=(1, 2)), {}, True),
    ("conv", [(4, 9, 10)], dict(filters=6, filterSize=3, groups=2, sharedBiases=0), {}, True),
    ("conv", [(8, 5, 6)], dict(filters=4, filterSize=1), {}, True),
    ("local", [(3, 6, 7)], dict(filters=4, filterSize=3, padding=1), {}, True),
    ("pool", [(4, 9, 11)], dict(pool="max", sizeX=3, stride=2), {}, True),
    ("pool", [(4, 9, 11)], dict(pool="avg", sizeX=3, stride=2), {}, True),
    ("pool", [(4, 5, 6)], dict(pool="max", sizeX="all"), {}, True),
    ("pool", [(4, 5, 6)], dict(pool="avg", sizeX="all"), {}, True),
    ("fc", [(4, 3, 5)], dict(outputs=7), {}, True),
    ("batchnorm", [(5, 6, 7)], {}, {}, True),
    ("batchnorm", [(5, 6, 7)], {}, {}, False),
    ("cmrnorm", [(8, 4, 5)], dict(size=5), dict(scale=0.01, pow=0.75, minDiv=2.0), True),
    ("rnorm", [(3, 6, 7)], dict(size=3), dict(scale=0.01, pow=0.75, minDiv=1.0), True),
    ("neuron", [(3, 4, 5)], dict(neuron="tanh[1.7,0.66]"), {}, True),
    ("neuron", [(3, 4, 5)], dict(neuron="softrelu"), {}, True),
    ("neuron", [(3, 4, 5)], dict(neuron="elu[1.5]"), {}, True),
    ("eltsum", [(3, 4, 5), (3, 4, 5)], dict(coeffs=[1, -0.5]), {}, True),
    ("eltmax", [(3, 4, 5), (3, 4, 5), (3, 4, 5)], {}, {}, True),
    ("concat", [(3, 4, 5), (2, 4, 5)], {}, {}, True),
    ("softmax", [(6, 1, 1)], {}, {}, True),
    ("dropout", [(3, 4, 5)], {}, dict(keep=1.0), True),
    ("cnorm", [(3, 6, 7)], dict(size=3), dict(scale=0.01, pow=0.75, minDiv=1.0), True),
    ("pass", [(3, 4, 5), (2, 4, 5)], {}, {}, True),
    ("conv", [(2, 6, 7), (3, 6, 7)], dict(filters=4, filterSize=3, padding=1), {}, True),
    ("local", [(2, 6, 7), (3, 6, 7)], dict(filters=3, filterSize=3), {}, True),
]


def build(type_name, shapes, keys, hyper):
    """make_layer, also for the `neuron` type (whose key make_layer takes as the attached neuron)."""
    if type_name != "neuron":
        return make_layer(type_name, shapes, hyper=hyper, **keys)
    from convnet_cli.config.layer_def import parse_props
    from convnet_cli.layers.registry import layer_class

    cls = layer_class("neuron")
    layer = cls("L", parse_props(cls, dict(keys), "L", "test.yaml"), shapes, ["in0"], "test.yaml")
    layer.neuron = None
    return layer


@pytest.mark.parametrize("type_name,shapes,keys,hyper,train", LAYERS,
                         ids=[f"{t}-{i}" for i, (t, *_) in enumerate(LAYERS)])
def test_layer_on_gpu_matches_cpu(type_name, shapes, keys, hyper, train):
    layer = build(type_name, shapes, keys, hyper)
    params = layer.init_params(np.random.default_rng(8))
    if type_name == "batchnorm":
        params["running_mean"][:] = 0.3
        params["running_var"][:] = 1.7
    xs = [nhwc(s, n=5, seed=9 + i, dtype=np.float32) for i, s in enumerate(shapes)]
    dout = np.random.default_rng(10).standard_normal((5,) + layer.out_shape[1:] + layer.out_shape[:1]).astype(
        np.float32)
    if hasattr(layer, "input_grads"):
        layer.input_grads = True

    cpu_params = {k: v.copy() for k, v in params.items()}
    ctx = Context(xp=np, train=train, rng=np.random.default_rng(0))
    out, cache = layer.forward(xs, cpu_params, ctx)
    dxs, grads = layer.backward(dout, cache, cpu_params, ctx)

    gpu_params = {k: dev(v) for k, v in params.items()}
    gctx = Context(xp=cupy, train=train, rng=Backend(cupy, "gpu:0", 0).rng(0))
    gout, gcache = layer.forward([dev(x) for x in xs], gpu_params, gctx)
    gdxs, ggrads = layer.backward(dev(dout), gcache, gpu_params, gctx)

    same(gout, out, "output", rtol=1e-4, atol=1e-5)
    for i, (g, c) in enumerate(zip(gdxs, dxs)):
        same(g, c, f"dx {i}", rtol=1e-4, atol=1e-5)
    for k in grads:
        same(ggrads[k], grads[k], k, rtol=1e-4, atol=1e-4)
    for k in params:  # running statistics move the same way
        same(gpu_params[k], cpu_params[k], f"param {k} after forward", rtol=1e-5, atol=1e-6)


def test_dropout_mask_on_gpu():
    layer = make_layer("dropout", [(4, 50, 50)], hyper=dict(keep=0.7))
    x = cupy.ones((8, 50, 50, 4), dtype=cupy.float32)
    ctx = Context(xp=cupy, train=True, rng=Backend(cupy, "gpu:0", 0).rng(123))
    out, mask = layer.forward([x], {}, ctx)
    kept = host(out) != 0
    assert abs(kept.mean() - 0.7) < 0.01
    np.testing.assert_allclose(host(out)[kept], 1 / 0.7, rtol=1e-6)
    again, _ = layer.forward([x], {}, Context(xp=cupy, train=True, rng=Backend(cupy, "gpu:0", 0).rng(123)))
    np.testing.assert_array_equal(host(again), host(out))  # seeded: the same masks on a resume


def test_device_random_is_uniform_and_seeded():
    be = Backend(cupy, "gpu:0", 0)
    for dtype in (np.float32, np.float64):
        r = host(be.rng(5).random((1000, 1000), dtype=dtype))
        assert r.dtype == dtype and r.min() >= 0 and r.max() < 1
        assert abs(r.mean() - 0.5) < 2e-3 and abs(r.var() - 1 / 12) < 2e-3
        hist = np.histogram(r, bins=10, range=(0, 1))[0] / r.size
        assert np.all(np.abs(hist - 0.1) < 3e-3)
    g = be.rng(5)
    a, b = host(g.random(1000, dtype=np.float32)), host(g.random(1000, dtype=np.float32))
    assert not np.array_equal(a, b)  # a generator moves on
    np.testing.assert_array_equal(a, host(be.rng(5).random(1000, dtype=np.float32)))
    assert not np.array_equal(a, host(be.rng(6).random(1000, dtype=np.float32)))


# == gradient checks in float64 on CuPy ===================================================================
def gpu_gradcheck(layer, x, params, train=True, checks=40, eps=1e-6, rtol=1e-5, atol=1e-8):
    """Central differences of sum(out * dout) on the GPU, float64, against the layer's analytic gradients."""
    gparams = {k: dev(np.asarray(v, np.float64)) for k, v in params.items()}
    gx = dev(x)
    dout = None

    def loss():
        ctx = Context(xp=cupy, train=train)
        out, _ = layer.forward([gx], gparams, ctx)
        return float((out * dout).sum())

    ctx = Context(xp=cupy, train=train)
    out, cache = layer.forward([gx], gparams, ctx)
    dout = dev(np.random.default_rng(11).standard_normal(out.shape))
    (dx,), grads = layer.backward(dout, cache, gparams, ctx)
    targets = [("input", gx, dx)] + [(k, gparams[k], grads[k]) for k in layer.learned if k in gparams]
    rng = np.random.default_rng(12)
    for name, arr, analytic in targets:
        analytic = host(analytic).reshape(-1)
        flat = arr.reshape(-1)
        for j in rng.choice(flat.size, size=min(checks, flat.size), replace=False):
            old = float(flat[j])
            flat[j] = old + eps
            plus = loss()
            flat[j] = old - eps
            minus = loss()
            flat[j] = old
            numeric = (plus - minus) / (2 * eps)
            assert abs(analytic[j] - numeric) <= atol + rtol * max(abs(analytic[j]), abs(numeric)), (
                f"{layer.type}: d/d{name}[{j}] analytic {analytic[j]:.10g} vs numeric {numeric:.10g}")


@pytest.mark.parametrize("in_shape,keys", CONVS)
def test_conv_gradients_on_gpu(in_shape, keys):
    layer = make_layer("conv", [in_shape], **keys)
    layer.input_grads = True
    gpu_gradcheck(layer, nhwc(in_shape, n=2, seed=13), layer.init_params(np.random.default_rng(14)))


@pytest.mark.parametrize("in_shape,keys", POOLS)
def test_pool_gradients_on_gpu(in_shape, keys):
    layer = make_layer("pool", [in_shape], **keys)
    gpu_gradcheck(layer, nhwc(in_shape, n=2, seed=15), {})  # random inputs: no ties


@pytest.mark.parametrize("train", [True, False])
def test_batchnorm_gradients_on_gpu(train):
    layer = make_layer("batchnorm", [(4, 5, 6)])
    params = layer.init_params(None)
    params["gamma"] = np.random.default_rng(16).standard_normal(4).astype(np.float32)
    params["running_var"][:] = 2.0
    # momentum 0 would keep the running statistics still; in test mode they are the constants used
    gpu_gradcheck(layer, nhwc((4, 5, 6), n=3, seed=17), params, train=train)


@pytest.mark.parametrize("type_name,shape,keys,hyper", [
    ("fc", (3, 4, 5), dict(outputs=6), {}),
    ("local", (2, 5, 6), dict(filters=3, filterSize=3, padding=1), {}),
    ("cmrnorm", (6, 3, 4), dict(size=3), dict(scale=0.5, pow=0.75, minDiv=1.0)),
    ("rnorm", (2, 5, 6), dict(size=3), dict(scale=0.5, pow=0.75, minDiv=1.0)),
    ("rnn", (2, 3, 5), dict(outputs=4, bidirectional=1), {}),
    ("lstm", (2, 3, 5), dict(outputs=4), {}),
    ("gru", (2, 3, 5), dict(outputs=4, bidirectional=1), {}),
])
def test_more_gradients_on_gpu(type_name, shape, keys, hyper):
    layer = make_layer(type_name, [shape], hyper=hyper, **keys)
    if hasattr(layer, "input_grads"):
        layer.input_grads = True
    gpu_gradcheck(layer, nhwc(shape, n=2, seed=18), layer.init_params(np.random.default_rng(19)), checks=20)


# == whole networks ========================================================================================
# (a batchnorm straight after a conv would cancel the conv's bias: its true gradient is 0, and adam and
# rmsprop blow the rounding noise that stands for it up to full steps, different on each device)
NET = """\
data:   {type: data, dataIdx: 0}
labels: {type: data, dataIdx: 1}
conv1:  {type: conv, inputs: data, filters: 8, filterSize: 5, padding: 2, init: kaiming_normal, neuron: relu}
bn1:    {type: batchnorm, inputs: conv1}
pool1:  {type: pool, inputs: bn1, pool: max, sizeX: 3, stride: 2}
conv2:  {type: conv, inputs: pool1, filters: 8, filterSize: 3, padding: 1, neuron: relu}
rn:     {type: cmrnorm, inputs: conv2, size: 3}
pool2:  {type: pool, inputs: rn, pool: avg, sizeX: 3, stride: 2}
gru:    {type: gru, inputs: pool2, outputs: 6, bidirectional: 1}
last:   {type: seqpool, inputs: gru, pool: last}
fc2:    {type: fc, inputs: last, outputs: 3, init: glorot_uniform}
probs:  {type: softmax, inputs: fc2}
logprob: {type: cost.logreg, inputs: [labels, probs], topk: 2}
"""


@pytest.mark.parametrize("updater", ["sgd", "adam", "rmsprop"])
def test_net_training_steps_on_gpu_match_cpu(updater):
    from convnet_cli.net import Net

    # rmsprop divides by sqrt(v) + epsilon: gradients near 1e-9 (rounded differently on each device) would
    # get steps of any size between 0 and lr with torch's epsilon 1e-8; 1e-4 keeps such noise below lr/100
    eps = ", epsilon: 0.0001" if updater == "rmsprop" else ""
    params = (f"DEFAULT: {{updater: {updater}, epsW: 0.01, epsB: 0.01, momW: 0.9, wc: 0.001{eps}}}\n"
              "gru: {clipNorm: 1}\n")
    shape = (1, 16, 21)
    cpu = Net.from_text(NET, params, shape, seed=3)
    gpu = Net.from_text(NET, params, shape, backend=Backend(cupy, "gpu:0", 0), seed=3)
    rng = np.random.default_rng(18)
    for step in range(3):
        x = rng.standard_normal((12, 16, 21, 1)).astype(np.float32)
        y = rng.integers(0, 3, 12)
        c = cpu.forward({0: x, 1: y.astype(np.int32)}, train=True)
        g = gpu.forward({0: dev(x), 1: dev(y.astype(np.int32))}, train=True)
        for k in ("cost", "error", "topk_error"):
            assert g["logprob"][1][k] == pytest.approx(c["logprob"][1][k], rel=1e-4, abs=1e-6)
        cpu.update(cpu.backward(), progress=step / 10)
        gpu.update(gpu.backward(), progress=step / 10)
    a, b = cpu.get_arrays(), gpu.get_arrays()
    assert a.keys() == b.keys()
    for k in a:
        assert isinstance(b[k], np.ndarray) and b[k].dtype == a[k].dtype, k
        # updater state (rmsprop's momentum of g / sqrt(v) reaches tens) is compared at its own scale, and
        # looser: g / sqrt(v) of a weight whose gradient is near 0 amplifies the devices' different rounding
        # (on an H200, one of conv1's 200 momenta was 0.605 against 0.562, at a scale of 24.6), while the
        # weights themselves still agree to 2e-4 of theirs
        scale = max(1.0, float(np.abs(a[k]).max())) if a[k].size else 1.0
        state = updater == "rmsprop" and k.count("/") > 1
        np.testing.assert_allclose(b[k], a[k], rtol=2e-3, atol=(3e-3 if state else 2e-4) * scale, err_msg=k)


# == features on the GPU ===================================================================================
@pytest.mark.parametrize("kind", ["logmel", "mel", "logspec", "spec", "mfcc", "pcen"])
def test_features_on_gpu_match_cpu(kind):
    from convnet_cli.ingest.features import FeatureSpec, compute_features

    spec = FeatureSpec.from_dict(dict(sample_rate=8000, duration=0.5, kind=kind, n_fft=256, hop=100, n_mels=20,
                                      n_mfcc=13), "test")
    sig = np.random.default_rng(19).standard_normal((5, spec.num_samples)).astype(np.float32)
    want = compute_features(sig, spec, np)
    got = compute_features(dev(sig), spec, cupy)
    assert got.shape == want.shape == (5,) + spec.shape
    log = kind in ("logmel", "logspec", "mfcc", "pcen")
    same(got, want, kind, rtol=1e-3 if log else 1e-4, atol=1e-3 if log else 1e-5)
    again = compute_features(dev(sig), spec, cupy)  # the device tables are cached
    np.testing.assert_array_equal(host(again), host(got))


def test_column_sums_on_gpu():
    from convnet_cli.layers.base import column_sums

    a = np.random.default_rng(20).standard_normal((384 * 7, 16)).astype(np.float32)
    same(column_sums(dev(a), cupy), a.sum(axis=0, dtype=np.float64), "column sums", rtol=1e-5, atol=1e-4)
    b = a[:5, :3].copy()
    same(column_sums(dev(b), cupy), b.sum(axis=0), "another shape", rtol=1e-5, atol=1e-5)
