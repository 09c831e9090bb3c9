"""cost.bce on multi-label targets (SPEC 17): unknown entries (255 in a batch file, -1 in the labels input)
add nothing to the cost or the gradient, posWeight one number or one per class; the fused path on logits
(an fc with neuron: logistic read by the cost alone); numerical gradient checks in float64, parity with
PyTorch's BCELoss (on probabilities) and BCEWithLogitsLoss (on logits) with a mask and pos_weight; and the
one-line refusals of a net that does not fit the batches."""
from __future__ import annotations

import numpy as np
import pytest

from convnet_cli.errors import ConfigError
from convnet_cli.layers.base import Context
from convnet_cli.net import Net
from tests.helpers import make_layer

K = 4


def ctx():
    return Context(xp=np, train=True, rng=np.random.default_rng(0))


def bce(k=K, pos_weight=1.0, multi=True):
    layer = make_layer("cost.bce", [(1, 1, 1), (k, 1, 1)], posWeight=pos_weight)
    layer.check_data([f"c{i}" for i in range(k)], multi)
    return layer


def targets(n, k=K, seed=0):
    """(n, k) float targets as the provider hands them: 1 present, 0 absent, -1 unknown (about 1 in 5)."""
    rng = np.random.default_rng(seed)
    t = (rng.random((n, k)) < 0.4).astype(np.float64)
    t[rng.random((n, k)) < 0.2] = -1.0
    t[0, 0], t[1, 1] = -1.0, 1.0  # at least one of each
    return t


def logits(n, k=K, seed=1, scale=2.0):
    return scale * np.random.default_rng(seed).standard_normal((n, 1, 1, k))


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def cost_of(layer, y, p):
    (c, _), _ = layer.forward([y, p], {}, ctx())
    return c


def numeric_grad(f, x, eps=1e-6):
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


def by_hand(p, t, w):
    """-(w t log p + (1 - t) log(1 - p)) over the known entries, summed, over the cases."""
    p, t = p.reshape(t.shape), t
    known = t >= 0
    per = -(w * t * np.log(p) + (1 - t) * np.log(1 - p))
    return float(np.where(known, per, 0).sum()) / t.shape[0]


@pytest.mark.parametrize("pos_weight", [1.0, 2.5, [1.0, 3.0, 0.5, 2.0]])
def test_cost_by_hand_and_unknown_entries_add_nothing(pos_weight):
    n = 6
    layer = bce(pos_weight=pos_weight)
    y = targets(n)
    p = sigmoid(logits(n))
    w = np.asarray(pos_weight, dtype=np.float64).reshape(1, -1)
    assert cost_of(layer, y, p) == pytest.approx(by_hand(p, y, w), rel=1e-12)
    # whatever the net says for an unknown entry, the cost and the gradient stay the same
    q = p.copy()
    unknown = (y < 0).reshape(q.shape)
    q[unknown] = 1 - q[unknown]
    assert cost_of(layer, y, q) == pytest.approx(cost_of(layer, y, p), rel=1e-12)
    (_, _), cache = layer.forward([y, p], {}, ctx())
    d = layer.backward(1.0, cache, {}, ctx())[0][1]
    assert np.all(d[unknown] == 0) and np.all(d[~unknown] != 0)


@pytest.mark.parametrize("pos_weight", [1.0, [1.0, 3.0, 0.5, 2.0]])
def test_gradient_on_probabilities_matches_numeric(pos_weight):
    n, coeff = 5, 0.7
    layer = bce(pos_weight=pos_weight)
    y = targets(n, seed=2)
    p = sigmoid(logits(n, seed=3))
    (_, _), cache = layer.forward([y, p], {}, ctx())
    dxs, _ = layer.backward(coeff, cache, {}, ctx())
    assert dxs[0] is None and dxs[1].shape == p.shape
    num = numeric_grad(lambda: coeff * cost_of(layer, y, p), p)
    np.testing.assert_allclose(dxs[1], num, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("pos_weight", [1.0, [2.0, 1.0, 0.25, 4.0]])
def test_gradient_on_logits_matches_numeric_and_the_probability_path(pos_weight):
    n, coeff = 5, 1.3
    layer = bce(pos_weight=pos_weight)
    y = targets(n, seed=4)
    z = logits(n, seed=5)

    def cost_z():
        (c, _), _ = layer.forward_logits(y, z, sigmoid(z), ctx())
        return c

    (c, m), cache = layer.forward_logits(y, z, sigmoid(z), ctx())
    (c2, m2), _ = layer.forward([y, sigmoid(z)], {}, ctx())
    assert c == pytest.approx(c2, rel=1e-9) and m["error"] == m2["error"]
    d = layer.backward_logits(coeff, cache, ctx())
    np.testing.assert_allclose(d, numeric_grad(lambda: coeff * cost_z(), z), rtol=1e-6, atol=1e-9)
    assert np.all(d[(y < 0).reshape(d.shape)] == 0)


def test_logits_path_stays_finite_where_the_outputs_saturate():
    layer = bce(pos_weight=1.0)
    y = np.array([[1.0, 0.0, 1.0, -1.0]])
    z = np.array([[-60.0, 60.0, 40.0, 80.0]]).reshape(1, 1, 1, K).astype(np.float32)
    (c, _), cache = layer.forward_logits(y, z, sigmoid(z.astype(np.float64)).astype(np.float32), ctx())
    d = layer.backward_logits(1.0, cache, ctx())
    assert c == pytest.approx(120.0, rel=1e-5)  # softplus(60) twice; the saturated right answer adds ~0
    np.testing.assert_allclose(d.reshape(-1), [-1.0, 1.0, 0.0, 0.0], atol=1e-6)


def test_error_is_the_wrong_class_decisions_of_known_entries():
    layer = bce()
    y = np.array([[1, 0, -1, 0], [0, 1, 1, -1]], dtype=np.float64)
    p = np.array([[0.9, 0.6, 0.9, 0.1], [0.2, 0.4, 0.7, 0.9]]).reshape(2, 1, 1, K)
    (_, m), _ = layer.forward([y, p], {}, ctx())
    assert m["error"] == pytest.approx(2 / 8)  # case 0 class 1 (0.6, absent), case 1 class 1 (0.4, present)


def test_single_label_bce_is_unchanged_by_the_multi_label_path():
    """One-hot labels (N,) on a net that was checked against single-label data: the error stays top-1."""
    layer = bce(multi=False)
    p = np.array([[0.8, 0.1, 0.3, 0.2], [0.4, 0.5, 0.2, 0.1]]).reshape(2, 1, 1, K)
    y = np.array([0, 2])
    (cost, m), _ = layer.forward([y, p], {}, ctx())
    onehot = np.eye(K)[y]
    assert cost == pytest.approx(by_hand(p, onehot, 1.0), rel=1e-12)
    assert m["error"] == pytest.approx(1 / 2)


def test_pos_weight_of_the_wrong_length_is_refused():
    with pytest.raises(ConfigError, match="posWeight has 3 values .* 4 outputs"):
        make_layer("cost.bce", [(1, 1, 1), (K, 1, 1)], posWeight=[1, 2, 3])


# -- PyTorch parity ------------------------------------------------------------------------------------------
def _torch():
    return pytest.importorskip("torch", reason="PyTorch not installed: parity tests need it")


@pytest.mark.parametrize("pos_weight", [1.0, [1.0, 3.0, 0.5, 2.0]])
def test_matches_torch_bce_on_probabilities_with_a_mask(pos_weight):
    torch = _torch()
    n = 16
    layer = bce(pos_weight=pos_weight)
    y = targets(n, seed=6).astype(np.float32)
    p = sigmoid(logits(n, seed=7)).astype(np.float32)
    (cost, _), cache = layer.forward([y, p], {}, ctx())
    dp = layer.backward(1.0, cache, {}, ctx())[0][1]
    mask = torch.tensor((y >= 0).astype(np.float32))
    t = torch.tensor(np.where(y >= 0, y, 0))
    tp = torch.tensor(p.reshape(n, K), requires_grad=True)
    w = torch.tensor(np.broadcast_to(np.asarray(pos_weight, np.float32), (K,)).copy())
    if pos_weight == 1.0:  # BCELoss itself (it has no pos_weight): the mask as its element weight
        loss = torch.nn.functional.binary_cross_entropy(tp, t, weight=mask, reduction="sum") / n
    else:
        loss = -(mask * (w * t * torch.log(tp) + (1 - t) * torch.log(1 - tp))).sum() / n
    loss.backward()
    assert cost == pytest.approx(float(loss.detach()), rel=1e-5)
    np.testing.assert_allclose(dp.reshape(n, K), tp.grad.numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("pos_weight", [1.0, 2.0, [1.0, 3.0, 0.5, 2.0]])
def test_fused_logits_match_torch_bce_with_logits(pos_weight):
    torch = _torch()
    n = 16
    layer = bce(pos_weight=pos_weight)
    y = targets(n, seed=8).astype(np.float32)
    z = logits(n, seed=9, scale=4.0).astype(np.float32)
    (cost, _), cache = layer.forward_logits(y, z, sigmoid(z).astype(np.float32), ctx())
    dz = layer.backward_logits(1.0, cache, ctx())
    tz = torch.tensor(z.reshape(n, K), requires_grad=True)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(
        tz, torch.tensor(np.where(y >= 0, y, 0)), weight=torch.tensor((y >= 0).astype(np.float32)),
        pos_weight=torch.tensor(np.broadcast_to(np.asarray(pos_weight, np.float32), (K,)).copy()), reduction="sum") / n
    loss.backward()
    assert cost == pytest.approx(float(loss.detach()), rel=1e-5)
    np.testing.assert_allclose(dz.reshape(n, K), tz.grad.numpy(), rtol=1e-4, atol=1e-6)


# -- through the net: the fc's logistic neuron is taken over by the cost ----------------------------------------
NET = """\
data: {type: data, dataIdx: 0}
labels: {type: data, dataIdx: 1}
fc: {type: fc, inputs: data, outputs: 4, initW: 0.3, neuron: logistic}
bce: {type: cost.bce, inputs: [labels, fc], posWeight: [1, 2, 1, 0.5]}
"""
SHAPE = (1, 3, 5)


def test_net_fuses_the_logistic_neuron_and_its_weight_gradient_is_bce_with_logits():
    net = Net.from_text(NET, "", SHAPE, seed=0)
    assert net.fused_neuron == {"bce": "fc"}
    net.check_data(["a", "b", "c", "d"], True)
    n = 7
    x = np.random.default_rng(0).standard_normal((n, 3, 5, 1)).astype(np.float32)
    y = targets(n, seed=10).astype(np.float32)
    costs = net.forward({0: x, 1: y}, train=True)
    grads = net.backward()
    w, b = net.params["fc"]["weights"].astype(np.float64), net.params["fc"]["biases"].astype(np.float64)
    xf = x.reshape(n, -1).astype(np.float64)  # one channel: NHWC and NCHW flatten alike
    z = xf @ w.T + b.reshape(1, -1)  # weights (outputs, inputs)
    p = sigmoid(z)
    t, known = np.where(y >= 0, y, 0), (y >= 0)
    pw = np.array([1, 2, 1, 0.5])
    dz = np.where(known, p * (pw * t + 1 - t) - pw * t, 0) / n
    np.testing.assert_allclose(grads["fc"]["weights"], dz.T @ xf, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(net.outputs["fc"].reshape(n, K), p, rtol=1e-5, atol=1e-6)
    assert costs["bce"][0] == pytest.approx(by_hand(p, y.astype(np.float64), pw.reshape(1, -1)), rel=1e-4)


def test_net_does_not_fuse_when_another_layer_reads_the_outputs():
    text = NET + "extra: {type: fc, inputs: fc, outputs: 2}\nsq: {type: cost.sum2, inputs: extra}\n"
    net = Net.from_text(text, "", SHAPE, seed=0)
    assert net.fused_neuron == {}
    x = np.random.default_rng(1).standard_normal((3, 3, 5, 1)).astype(np.float32)
    net.forward({0: x, 1: targets(3).astype(np.float32)}, train=True)
    assert set(net.backward()) == {"fc", "extra"}


# -- net and batches that do not fit ---------------------------------------------------------------------------------
SOFTMAX_NET = """\
data: {type: data, dataIdx: 0}
labels: {type: data, dataIdx: 1}
fc: {type: fc, inputs: data, outputs: 4}
probs: {type: softmax, inputs: fc}
logprob: {type: cost.logreg, inputs: [labels, probs]}
"""


def test_a_softmax_logreg_net_on_multi_label_batches_is_refused_in_one_line():
    net = Net.from_text(SOFTMAX_NET, "", SHAPE, seed=0)
    with pytest.raises(ConfigError) as e:
        net.check_data(["a", "b", "c", "d"], True)
    msg = str(e.value)
    assert "\n" not in msg and "multi-label" in msg and "neuron: logistic" in msg and "cost.bce" in msg


def test_a_bce_net_with_outputs_unlike_the_classes_is_refused():
    net = Net.from_text(NET, "", SHAPE, seed=0)
    with pytest.raises(ConfigError, match="has 4 outputs but the data has 3 classes.*outputs: 3") as e:
        net.check_data(["a", "b", "c"], True)
    assert "--multi-label" not in str(e.value)
    # single-label batches (one class a case, a background class among them): the fix may be the batches
    with pytest.raises(ConfigError, match="has 4 outputs but the data has 5 classes.*outputs: 5") as e:
        net.check_data(["a", "b", "c", "d", "noise"], False)
    assert "make-batches --multi-label" in str(e.value) and "\n" not in str(e.value)


def test_a_softmax_feeding_cost_bce_is_refused_in_one_line_naming_the_layer_and_line():
    text = SOFTMAX_NET.replace("logprob: {type: cost.logreg, inputs: [labels, probs]}",
                               "bce: {type: cost.bce, inputs: [labels, probs]}")
    with pytest.raises(ConfigError) as e:
        Net.from_text(text, "", SHAPE, seed=0)
    msg = str(e.value)
    assert "\n" not in msg and "layer 'bce'" in msg and "'probs' is a softmax" in msg
    assert "neuron: logistic" in msg and "(line 5)" in msg
