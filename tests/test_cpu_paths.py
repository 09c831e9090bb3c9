"""CPU speed paths that must not change results: the element-wise threads (run_chunks), the threaded relu,
and the transposed-correlation input gradient of stride-1 convs."""
import threading

import numpy as np
import pytest

from convnet_cli.layers import conv as conv_mod
from convnet_cli.layers import neurons as neurons_mod
from convnet_cli.layers import pool as pool_mod
from convnet_cli.layers.base import Context
from convnet_cli.layers.neurons import parse_neuron
from tests.helpers import make_layer, nhwc


@pytest.fixture
def two_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")


def test_run_chunks_covers_every_case_once(two_threads, monkeypatch):
    monkeypatch.setattr(pool_mod, "CHUNK_BYTES", 3)
    seen, names = [], set()

    def fn(n0, n1):
        seen.append((n0, n1))
        names.add(threading.current_thread().name)

    pool_mod.run_chunks(fn, 10, 1, np)
    cases = sorted(i for n0, n1 in seen for i in range(n0, n1))
    assert cases == list(range(10))
    assert len(seen) == 4  # chunks of 3, 3, 3, 1
    assert threading.current_thread().name in names and any(n.startswith("convnet-pool") for n in names)


def test_run_chunks_raises_a_workers_error_after_all_finished(two_threads, monkeypatch):
    monkeypatch.setattr(pool_mod, "CHUNK_BYTES", 1)
    done = []

    def fn(n0, n1):
        if n0 == 7:
            raise ValueError("chunk 7")
        done.append(n0)

    with pytest.raises(ValueError, match="chunk 7"):
        pool_mod.run_chunks(fn, 8, 1, np)
    assert sorted(done) == list(range(7))


def test_threaded_relu_equals_plain(two_threads, monkeypatch):
    relu = parse_neuron("relu")
    x = np.random.default_rng(0).standard_normal((9, 6, 7, 5)).astype(np.float32)
    d = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    y0, c0 = relu.forward(x, np)
    dx0 = relu.backward(d, c0, np)
    monkeypatch.setattr(neurons_mod, "_THREADED_BYTES", 1)
    monkeypatch.setattr(pool_mod, "CHUNK_BYTES", 2 * x[0].nbytes)
    y1, c1 = relu.forward(x, np)
    dx1 = relu.backward(d, c1, np)
    np.testing.assert_array_equal(y1, y0)
    np.testing.assert_array_equal(dx1, dx0)


@pytest.mark.parametrize("shape,keys", [((3, 9, 8), dict(filters=4, filterSize=5, padding=2)),
                                        ((4, 7, 9), dict(filters=5, filterSize=3)),
                                        ((2, 6, 8), dict(filters=3, filterSize=[3, 5], padding=[0, 2]))])
def test_transposed_input_gradient_equals_per_offset_gemms(shape, keys, monkeypatch):
    """The stride-1 input gradient (correlation of dout with the flipped filters) equals the per-offset
    GEMM path it replaced, and so do dW and the bias gradient, over several chunks."""
    monkeypatch.setenv("CONVNET_CONV_ALGO", "direct")
    monkeypatch.setattr(conv_mod, "CHUNK_BYTES", 4096)
    layer = make_layer("conv", [shape], **keys)
    assert layer.geo.transposed_dx()
    params = {k: np.random.default_rng(2).standard_normal(v.shape) for k, v in
              layer.init_params(np.random.default_rng(0)).items()}
    x = nhwc(shape, n=5)
    ctx = Context(xp=np, train=True)
    out, cache = layer.forward([x], params, ctx)
    dout = np.random.default_rng(3).standard_normal(out.shape)
    (dx, ), grads = layer.backward(dout, cache, params, ctx)
    monkeypatch.setattr(conv_mod._Geometry, "transposed_dx", lambda self: False)
    (dx_ref, ), ref = layer.backward(dout, cache, params, ctx)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-12)
    for k in ("weights", "biases"):
        np.testing.assert_allclose(grads[k], ref[k], rtol=1e-12, atol=1e-12)


# -- a relu applied by the conv / batchnorm / pool layer to each chunk of its output (Layer.fuses_neuron) ----------
FUSED_NET = """\
data: {type: data, dataIdx: 0}
labels: {type: data, dataIdx: 1}
c1: {type: conv, inputs: data, filters: 6, filterSize: 3, padding: 1, neuron: relu}
bn1: {type: batchnorm, inputs: c1, neuron: relu}
c2: {type: conv, inputs: bn1, filters: 5, filterSize: 1, neuron: relu}
c3: {type: conv, inputs: [bn1, c2], filters: 4, filterSize: 3, padding: 1, stride: 2, neuron: relu}
c4: {type: conv, inputs: c3, filters: 4, filterSize: 1}
p1: {type: pool, inputs: c4, pool: max, sizeX: 3, stride: 2, neuron: relu}
p2: {type: pool, inputs: c4, pool: avg, sizeX: 2, neuron: relu}
p3: {type: pool, inputs: c4, pool: avg, sizeX: all, neuron: relu}
p4: {type: pool, inputs: c4, pool: max, sizeX: all, neuron: relu}
fc: {type: fc, inputs: [p1, p2, p3, p4], outputs: 3}
probs: {type: softmax, inputs: fc}
cost: {type: cost.logreg, inputs: [labels, probs]}
"""


@pytest.mark.parametrize("algo", ["direct", "winograd"])
def test_relu_fused_into_conv_batchnorm_and_pool_equals_the_net_applying_it(monkeypatch, algo):
    from convnet_cli.net import Net

    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setenv("CONVNET_CONV_ALGO", algo)
    monkeypatch.setattr(conv_mod, "CHUNK_BYTES", 1)
    net = Net.from_text(FUSED_NET, "", (2, 9, 11), seed=0)
    fused = [l.name for l in net.layers if l.chunk_neuron is not None]
    assert fused == ["c1", "bn1", "c2", "c3", "p1", "p2", "p3", "p4"]
    rng = np.random.default_rng(0)
    data = {0: rng.standard_normal((7, 9, 11, 2)).astype(np.float32), 1: rng.integers(0, 3, 7)}

    def run(train):
        costs = net.forward(data, train=train, rng=np.random.default_rng(1))
        outs = {k: v.copy() for k, v in net.outputs.items()}
        grads = net.backward() if train else {}
        return costs, outs, grads

    got = [run(True), run(False)]
    for l in net.layers:
        l.chunk_neuron = None
    net.init_params(0)  # the same start (batchnorm's running statistics moved in the runs above)
    want = [run(True), run(False)]
    for (gc, go, gg), (wc, wo, wg) in zip(got, want):
        assert gc.keys() == wc.keys() and all(np.array_equal(gc[k], wc[k]) for k in gc)
        for k in wo:
            np.testing.assert_array_equal(go[k], wo[k], err_msg=k)
        for k in ("c1", "p1", "p2"):
            assert (go[k] == 0).any(), k  # the relu did clip something
        for layer, g in wg.items():
            for name, arr in g.items():
                np.testing.assert_array_equal(gg[layer][name], arr, err_msg=f"{layer}.{name}")
