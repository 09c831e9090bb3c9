"""fc, softmax and the cost layers (cost.logreg plain and fused, cost.bce, cost.sum2): numerical gradient
checks in float64, costs against hand computations, and parity with PyTorch in float32."""
from __future__ import annotations

import math

import numpy as np
import pytest

from convnet_cli.layers.base import Context
from tests.helpers import gradcheck, make_layer, nhwc


def ctx(train=True):
    return Context(xp=np, train=train, rng=np.random.default_rng(0))


def probs_nhwc(n, k, seed=0, dtype=np.float64):
    """Softmax of random logits, shaped as a softmax layer's output: (N, 1, 1, K)."""
    z = np.random.default_rng(seed).standard_normal((n, k))
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return (p / p.sum(axis=1, keepdims=True)).reshape(n, 1, 1, k).astype(dtype)


def numeric_grad(f, x, eps=1e-6):
    """Central differences of the scalar f() with respect to every element of x (changed in place)."""
    g = np.zeros_like(x)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    for j in range(flat.size):
        old = flat[j]
        flat[j] = old + eps
        plus = f()
        flat[j] = old - eps
        minus = f()
        flat[j] = old
        gflat[j] = (plus - minus) / (2 * eps)
    return g


def cost_value(layer, labels, x):
    (cost, _), _ = layer.forward([labels, x], {}, ctx())
    return cost


# -- fc --------------------------------------------------------------------------------------------------
def test_fc_gradcheck_one_input_from_a_map():
    shape = (3, 4, 5)  # H, W > 1: the (C, H, W) flatten order matters
    layer = make_layer("fc", [shape], outputs=7, initW=0.3, initB=0.1)
    params = layer.init_params(np.random.default_rng(1))
    params["biases"] = np.random.default_rng(2).standard_normal(7).astype(np.float32)
    gradcheck(layer, [nhwc(shape, n=3)], params=params)


def test_fc_gradcheck_two_inputs():
    shapes = [(2, 3, 4), (5, 1, 1)]
    layer = make_layer("fc", shapes, outputs=4, initW=[0.2, 0.5])
    assert layer.learned == ("weights.0", "weights.1", "biases")
    params = layer.init_params(np.random.default_rng(1))
    assert params["weights.0"].shape == (4, 24) and params["weights.1"].shape == (4, 5)
    gradcheck(layer, [nhwc(s, n=3, seed=i) for i, s in enumerate(shapes)], params=params)


def test_fc_gradcheck_with_a_neuron():
    layer = make_layer("fc", [(6, 1, 1)], outputs=5, neuron="tanh[1.7159,0.6666]", initW=0.5)
    gradcheck(layer, [nhwc((6, 1, 1), n=4)])


def test_fc_output_shape_and_init():
    layer = make_layer("fc", [(3, 4, 5)], outputs=10, initW=0.02, initB=0.5)
    assert layer.out_shape == (10, 1, 1)
    p = layer.init_params(np.random.default_rng(0))
    assert p["weights"].dtype == np.float32 and p["weights"].shape == (10, 60)
    assert abs(float(p["weights"].std()) - 0.02) < 0.004
    np.testing.assert_array_equal(p["biases"], np.full(10, 0.5, np.float32))


def test_fc_weights_follow_chw_flatten_order():
    # weight column j multiplies the j-th element of the case in (C, H, W) order
    shape = (2, 3, 4)
    layer = make_layer("fc", [shape], outputs=1)
    x = nhwc(shape, n=1)
    j = 1 * 12 + 2 * 4 + 3  # c=1, h=2, w=3
    w = np.zeros((1, 24))
    w[0, j] = 1.0
    out, _ = layer.forward([x], {"weights": w, "biases": np.zeros(1)}, ctx())
    assert out.shape == (1, 1, 1, 1)
    assert out[0, 0, 0, 0] == x[0, 2, 3, 1]


def test_fc_matches_torch_linear():
    torch = pytest.importorskip("torch", reason="PyTorch not installed: parity tests need it")
    F = torch.nn.functional
    shape, n, k = (3, 4, 5), 6, 7
    layer = make_layer("fc", [shape], outputs=k, initW=0.1)
    params = layer.init_params(np.random.default_rng(0))
    params["biases"] = np.random.default_rng(1).standard_normal(k).astype(np.float32)
    x = nhwc(shape, n=n, dtype=np.float32)
    dout = np.random.default_rng(2).standard_normal((n, 1, 1, k)).astype(np.float32)
    out, cache = layer.forward([x], params, ctx())
    (dx,), grads = layer.backward(dout, cache, params, ctx())
    assert out.dtype == dx.dtype == grads["weights"].dtype == np.float32

    tx = torch.tensor(x.transpose(0, 3, 1, 2).copy(), requires_grad=True)  # NCHW
    tw = torch.tensor(params["weights"], requires_grad=True)
    tb = torch.tensor(params["biases"], requires_grad=True)
    ty = F.linear(tx.flatten(1), tw, tb)
    ty.backward(torch.tensor(dout.reshape(n, k)))
    np.testing.assert_allclose(out.reshape(n, k), ty.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx, tx.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grads["weights"], tw.grad.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grads["biases"], tb.grad.numpy(), rtol=1e-5, atol=1e-5)


def test_fc_two_inputs_match_torch_on_the_concatenation():
    torch = pytest.importorskip("torch", reason="PyTorch not installed: parity tests need it")
    shapes, n = [(2, 3, 2), (4, 1, 1)], 5
    layer = make_layer("fc", shapes, outputs=3, initW=0.3)
    params = layer.init_params(np.random.default_rng(0))
    xs = [nhwc(s, n=n, seed=i, dtype=np.float32) for i, s in enumerate(shapes)]
    out, _ = layer.forward(xs, params, ctx())
    flat = torch.cat([torch.tensor(x.transpose(0, 3, 1, 2).copy()).flatten(1) for x in xs], dim=1)
    w = torch.tensor(np.concatenate([params["weights.0"], params["weights.1"]], axis=1))
    want = torch.nn.functional.linear(flat, w, torch.tensor(params["biases"]))
    np.testing.assert_allclose(out.reshape(n, 3), want.numpy(), rtol=1e-5, atol=1e-6)


# -- softmax ---------------------------------------------------------------------------------------------
def test_softmax_gradcheck():
    layer = make_layer("softmax", [(6, 1, 1)])
    gradcheck(layer, [3 * nhwc((6, 1, 1), n=4)])


def test_softmax_is_stable_and_sums_to_one():
    layer = make_layer("softmax", [(3, 1, 1)])
    x = np.array([[1000.0, 1001.0, 999.0], [-1000.0, -1000.0, -1000.0]], np.float32).reshape(2, 1, 1, 3)
    p, _ = layer.forward([x], {}, ctx())
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(axis=-1), 1, rtol=1e-6)
    e = np.exp([1.0, 2.0, 0.0])
    np.testing.assert_allclose(p[0, 0, 0], e / e.sum(), rtol=1e-6)
    np.testing.assert_allclose(p[1, 0, 0], [1 / 3] * 3, rtol=1e-6)


# -- cost.logreg -------------------------------------------------------------------------------------------
def logreg(k, topk=1):
    return make_layer("cost.logreg", [(1, 1, 1), (k, 1, 1)], topk=topk)


def test_logreg_cost_by_hand():
    layer = logreg(3, topk=2)
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.3, 0.2], [0.2, 0.5, 0.3]]).reshape(4, 1, 1, 3)
    y = np.array([0, 2, 2, 0])
    (cost, m), _ = layer.forward([y, p], {}, ctx())
    want = -(math.log(0.7) + math.log(0.6) + math.log(0.2) + math.log(0.2)) / 4
    assert cost == pytest.approx(want, rel=1e-12)
    assert m["cost"] == pytest.approx(want, rel=1e-12)
    assert m["error"] == pytest.approx(2 / 4)  # cases 2 and 3 are wrong at top-1
    assert m["topk_error"] == pytest.approx(2 / 4)  # case 2: class 2 ranks 3rd; case 3: class 0 ranks 3rd


def test_logreg_plain_gradient_matches_numeric():
    n, k, coeff = 5, 4, 0.7
    layer = logreg(k)
    p = probs_nhwc(n, k)
    y = np.array([0, 3, 1, 1, 2])
    (_, _), cache = layer.forward([y, p], {}, ctx())
    dxs, grads = layer.backward(coeff, cache, {}, ctx())
    assert dxs[0] is None and grads == {}
    num = numeric_grad(lambda: coeff * cost_value(layer, y, p), p)
    np.testing.assert_allclose(dxs[1], num, rtol=1e-6, atol=1e-9)


def test_logreg_fused_gradient_matches_numeric_of_the_cost_wrt_logits():
    n, k, coeff = 6, 5, 1.3
    layer = logreg(k)
    z = 2 * nhwc((k, 1, 1), n=n)
    y = np.array([0, 4, 2, 2, 1, 3])

    def cost():
        (c, _), _ = layer.forward_fused(y, z, ctx())
        return coeff * c

    (c, m), cache = layer.forward_fused(y, z, ctx())
    dz = layer.backward_fused(coeff, cache, ctx())
    assert dz.shape == z.shape
    np.testing.assert_allclose(dz, numeric_grad(cost, z), rtol=1e-6, atol=1e-9)


def test_logreg_fused_equals_softmax_then_plain():
    n, k = 5, 4
    layer, sm = logreg(k, topk=2), make_layer("softmax", [(k, 1, 1)])
    z = 3 * nhwc((k, 1, 1), n=n)
    y = np.array([1, 0, 3, 3, 2])
    (c1, m1), cache1 = layer.forward_fused(y, z, ctx())
    p, smcache = sm.forward([z], {}, ctx())
    (c2, m2), cache2 = layer.forward([y, p], {}, ctx())
    assert c1 == pytest.approx(c2, rel=1e-12)
    assert m1 == pytest.approx(m2)
    dp = layer.backward(0.5, cache2, {}, ctx())[0][1]
    (dz,), _ = sm.backward(dp, smcache, {}, ctx())
    np.testing.assert_allclose(layer.backward_fused(0.5, cache1, ctx()), dz, rtol=1e-10, atol=1e-12)


def test_logreg_soft_targets():
    # mixup-style labels (N, K): the cost is the cross-entropy against the target distribution
    layer = logreg(3)
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]).reshape(2, 1, 1, 3)
    t = np.array([[0.5, 0.5, 0.0], [0.0, 0.25, 0.75]])
    (cost, m), cache = layer.forward([t, p], {}, ctx())
    want = -(0.5 * math.log(0.7) + 0.5 * math.log(0.2) + 0.25 * math.log(0.3) + 0.75 * math.log(0.6)) / 2
    assert cost == pytest.approx(want, rel=1e-12)
    assert m["error"] == 0.0  # argmax of the soft targets are classes 0 and 2
    num = numeric_grad(lambda: cost_value(layer, t, p), p)
    np.testing.assert_allclose(layer.backward(1.0, cache, {}, ctx())[0][1], num, rtol=1e-6, atol=1e-9)


def test_logreg_matches_torch_cross_entropy():
    torch = pytest.importorskip("torch", reason="PyTorch not installed: parity tests need it")
    F = torch.nn.functional
    n, k = 16, 10
    layer = logreg(k)
    z = 4 * nhwc((k, 1, 1), n=n, dtype=np.float32)
    y = np.random.default_rng(1).integers(0, k, n)
    (cost, m), cache = layer.forward_fused(y, z, ctx())
    dz = layer.backward_fused(1.0, cache, ctx())
    assert dz.dtype == np.float32
    tz = torch.tensor(z.reshape(n, k), requires_grad=True)
    loss = F.cross_entropy(tz, torch.tensor(y))
    loss.backward()
    assert cost == pytest.approx(loss.item(), rel=1e-5)
    np.testing.assert_allclose(dz.reshape(n, k), tz.grad.numpy(), rtol=1e-5, atol=1e-7)
    want_err = float((tz.argmax(dim=1).numpy() != y).mean())
    assert m["error"] == pytest.approx(want_err)

    # the plain path (probabilities from a softmax layer) agrees too
    p, _ = make_layer("softmax", [(k, 1, 1)]).forward([z], {}, ctx())
    (cost2, _), _ = layer.forward([y, p], {}, ctx())
    assert cost2 == pytest.approx(loss.item(), rel=1e-5)


def test_logreg_soft_targets_match_torch():
    torch = pytest.importorskip("torch", reason="PyTorch not installed: parity tests need it")
    n, k = 8, 5
    layer = logreg(k)
    z = 2 * nhwc((k, 1, 1), n=n, dtype=np.float32)
    t = np.random.default_rng(3).dirichlet(np.ones(k), n).astype(np.float32)
    (cost, _), cache = layer.forward_fused(t, z, ctx())
    tz = torch.tensor(z.reshape(n, k), requires_grad=True)
    loss = torch.nn.functional.cross_entropy(tz, torch.tensor(t))
    loss.backward()
    assert cost == pytest.approx(loss.item(), rel=1e-5)
    np.testing.assert_allclose(layer.backward_fused(1.0, cache, ctx()).reshape(n, k), tz.grad.numpy(),
                               rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("topk", [1, 2, 3, 5])
def test_topk_error_matches_torch_topk(topk):
    torch = pytest.importorskip("torch", reason="PyTorch not installed: parity tests need it")
    n, k = 50, 7
    layer = logreg(k, topk=topk)
    p = probs_nhwc(n, k, seed=4, dtype=np.float32)
    y = np.random.default_rng(5).integers(0, k, n)
    (_, m), _ = layer.forward([y, p], {}, ctx())
    idx = torch.topk(torch.tensor(p.reshape(n, k)), topk, dim=1).indices.numpy()
    want = 1.0 - float((idx == y[:, None]).any(axis=1).mean())
    assert m["topk_error"] == pytest.approx(want)
    top1 = torch.topk(torch.tensor(p.reshape(n, k)), 1, dim=1).indices.numpy()[:, 0]
    assert m["error"] == pytest.approx(float((top1 != y).mean()))


def test_topk_larger_than_classes_is_zero_error():
    layer = logreg(3, topk=5)
    (_, m), _ = layer.forward([np.array([0, 1, 2]), probs_nhwc(3, 3)], {}, ctx())
    assert m["topk_error"] == 0.0


def test_logreg_cost_is_finite_for_a_zero_probability():
    layer = logreg(2)
    p = np.array([[1.0, 0.0]], np.float32).reshape(1, 1, 1, 2)
    (cost, _), cache = layer.forward([np.array([1]), p], {}, ctx())
    dp = layer.backward(1.0, cache, {}, ctx())[0][1]
    assert math.isfinite(cost) and cost > 80
    assert np.isfinite(dp).all()


# -- cost.bce ----------------------------------------------------------------------------------------------
def bce(k, pos_weight=1.0):
    return make_layer("cost.bce", [(1, 1, 1), (k, 1, 1)], posWeight=pos_weight)


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def test_bce_one_output_by_hand():
    layer = bce(1, pos_weight=2.0)
    p = np.array([0.9, 0.2, 0.6, 0.3]).reshape(4, 1, 1, 1)
    y = np.array([1, 0, 0, 1])
    (cost, m), _ = layer.forward([y, p], {}, ctx())
    want = -(2 * math.log(0.9) + math.log(0.8) + math.log(0.4) + 2 * math.log(0.3)) / 4
    assert cost == pytest.approx(want, rel=1e-12)
    assert m["error"] == pytest.approx(2 / 4)  # cases 2 (0.6 > 0.5, label 0) and 3 (0.3, label 1)


def test_bce_k_outputs_by_hand():
    # K outputs: one-vs-rest against the one-hot label, summed over units, averaged over cases
    layer = bce(3)
    p = np.array([[0.8, 0.1, 0.3], [0.4, 0.5, 0.2]]).reshape(2, 1, 1, 3)
    y = np.array([0, 2])
    (cost, m), _ = layer.forward([y, p], {}, ctx())
    want = -(math.log(0.8) + math.log(0.9) + math.log(0.7) + math.log(0.6) + math.log(0.5) + math.log(0.2)) / 2
    assert cost == pytest.approx(want, rel=1e-12)
    assert m["error"] == pytest.approx(1 / 2)


@pytest.mark.parametrize("k", [1, 4])
@pytest.mark.parametrize("pos_weight", [1.0, 3.0])
def test_bce_gradient_matches_numeric(k, pos_weight):
    n, coeff = 5, 0.8
    layer = bce(k, pos_weight)
    p = sigmoid(nhwc((k, 1, 1), n=n, seed=k))
    y = np.array([1, 0, 1, 1, 0]) if k == 1 else np.array([0, 3, 1, 1, 2])
    (_, _), cache = layer.forward([y, p], {}, ctx())
    dxs, _ = layer.backward(coeff, cache, {}, ctx())
    assert dxs[0] is None and dxs[1].shape == p.shape
    num = numeric_grad(lambda: coeff * cost_value(layer, y, p), p)
    np.testing.assert_allclose(dxs[1], num, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("k", [1, 4])
def test_bce_matches_torch_binary_cross_entropy(k):
    torch = pytest.importorskip("torch", reason="PyTorch not installed: parity tests need it")
    n = 12
    layer = bce(k)
    p = sigmoid(2 * nhwc((k, 1, 1), n=n, seed=2)).astype(np.float32)
    y = np.random.default_rng(3).integers(0, 2 if k == 1 else k, n)
    (cost, _), cache = layer.forward([y, p], {}, ctx())
    dp = layer.backward(1.0, cache, {}, ctx())[0][1]
    t = np.eye(k, dtype=np.float32)[y] if k > 1 else y.astype(np.float32).reshape(n, 1)
    tp = torch.tensor(p.reshape(n, k), requires_grad=True)
    # ours sums over the K units and averages over cases
    loss = torch.nn.functional.binary_cross_entropy(tp, torch.tensor(t), reduction="sum") / n
    loss.backward()
    assert cost == pytest.approx(loss.item(), rel=1e-5)
    np.testing.assert_allclose(dp.reshape(n, k), tp.grad.numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("k", [1, 3])
def test_bce_pos_weight_matches_torch_with_logits(k):
    torch = pytest.importorskip("torch", reason="PyTorch not installed: parity tests need it")
    n, w = 10, 2.5
    layer = bce(k, w)
    z = 2 * nhwc((k, 1, 1), n=n, seed=6, dtype=np.float32)
    p = sigmoid(z).astype(np.float32)
    y = np.random.default_rng(7).integers(0, 2 if k == 1 else k, n)
    (cost, _), cache = layer.forward([y, p], {}, ctx())
    dp = layer.backward(1.0, cache, {}, ctx())[0][1]
    dz = dp * p * (1 - p)  # through the logistic neuron
    t = np.eye(k, dtype=np.float32)[y] if k > 1 else y.astype(np.float32).reshape(n, 1)
    tz = torch.tensor(z.reshape(n, k), requires_grad=True)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(
        tz, torch.tensor(t), pos_weight=torch.full((k,), w), reduction="sum") / n
    loss.backward()
    assert cost == pytest.approx(loss.item(), rel=1e-5)
    np.testing.assert_allclose(dz.reshape(n, k), tz.grad.numpy(), rtol=1e-4, atol=1e-6)


def test_bce_clips_saturated_outputs():
    layer = bce(1)
    p = np.array([1.0, 0.0], np.float32).reshape(2, 1, 1, 1)
    (cost, _), cache = layer.forward([np.array([0, 1]), p], {}, ctx())
    assert math.isfinite(cost) and cost > 10
    assert np.isfinite(layer.backward(1.0, cache, {}, ctx())[0][1]).all()


# -- cost.sum2 ---------------------------------------------------------------------------------------------
def test_sum2_by_hand_and_gradient():
    layer = make_layer("cost.sum2", [(2, 3, 1)])
    assert layer.out_shape == (1, 1, 1)
    x = nhwc((2, 3, 1), n=4)
    (cost, m), cache = layer.forward([x], {}, ctx())
    assert cost == pytest.approx(0.5 * float((x ** 2).sum()) / 4, rel=1e-12)
    assert m["error"] is None
    (dx,), _ = layer.backward(0.3, cache, {}, ctx())
    num = numeric_grad(lambda: 0.3 * layer.forward([x], {}, ctx())[0][0], x)
    np.testing.assert_allclose(dx, num, rtol=1e-6, atol=1e-9)


def test_sum2_matches_torch_mse():
    torch = pytest.importorskip("torch", reason="PyTorch not installed: parity tests need it")
    x = nhwc((3, 2, 2), n=5, dtype=np.float32)
    layer = make_layer("cost.sum2", [(3, 2, 2)])
    (cost, _), cache = layer.forward([x], {}, ctx())
    tx = torch.tensor(x, requires_grad=True)
    loss = 0.5 * (tx ** 2).sum() / 5
    loss.backward()
    assert cost == pytest.approx(loss.item(), rel=1e-5)
    np.testing.assert_allclose(layer.backward(1.0, cache, {}, ctx())[0][0], tx.grad.numpy(), rtol=1e-6)
