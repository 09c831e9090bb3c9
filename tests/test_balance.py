"""train --balance (data/balance.py through the DataProvider) and cost.logreg's classWeights: the two
remedies for imbalanced data."""
from __future__ import annotations


import numpy as np
import pytest

from convnet_cli.backend import get_backend
from convnet_cli.data.balance import balanced_order, class_counts
from convnet_cli.data.batch_files import BatchSet, encode_batch
from convnet_cli.data.provider import DataProvider
from convnet_cli.fileio import write_pickle_atomic
from convnet_cli.layers.base import Context
from tests.helpers import make_layer, nhwc


# -- balanced_order ----------------------------------------------------------------------------------------
def test_balanced_order_draws_classes_equally_and_cycles_each_class():
    labels = np.array([0] * 17 + [1] * 3 + [2] * 5)       # 68% / 12% / 20%
    order = balanced_order(labels, np.random.default_rng(0))
    assert order.shape == (25,)
    counts = class_counts(labels[order], 3)
    assert counts.sum() == 25 and counts.max() - counts.min() <= 1
    # the minority class: every case served before any repeats (3 cases, 8 or 9 slots -> each 2-3 times)
    served = np.bincount(order[labels[order] == 1], minlength=20)[17:20]
    assert served.min() >= 2 and served.max() - served.min() <= 1
    # the majority class: 8 or 9 distinct cases, none twice
    maj = order[labels[order] == 0]
    assert len(set(maj.tolist())) == len(maj)


def test_balanced_order_is_seeded_and_skips_unknown_labels():
    labels = np.array([0, 0, 0, 1, -1, 1, 0, 0])
    a = balanced_order(labels, np.random.default_rng(5))
    b = balanced_order(labels, np.random.default_rng(5))
    c = balanced_order(labels, np.random.default_rng(6))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert 4 not in a.tolist()
    assert class_counts(labels[a], 2).tolist() == [4, 4]


# -- through the provider ----------------------------------------------------------------------------------
def _imbalanced_set(folder, n_batches=4, per_batch=20, positives=4):
    folder.mkdir(parents=True, exist_ok=True)
    shape = (1, 2, 3)
    for b in range(1, n_batches + 1):
        rows = np.arange(per_batch * 6, dtype=np.float32).reshape(per_batch, 6) + 1000 * b
        labels = [1 if k < positives else 0 for k in range(per_batch)]
        batch, _ = encode_batch(rows.T, labels, [f"b{b}/c{k}" for k in range(per_batch)], "float32")
        write_pickle_atomic(folder / f"data_batch_{b}", batch)
    meta = {"label_names": ["neg", "pos"], "num_vis": 6, "data_shape": list(shape), "num_cases_per_batch": per_batch,
            "num_batches": n_batches, "train_range": [1, n_batches - 1], "test_range": [n_batches, n_batches],
            "data_mean": np.zeros((6, 1), np.float32), "data_std": np.ones((6, 1), np.float32),
            "features": None, "skipped": 0, "batch_cases": [per_batch] * n_batches}
    write_pickle_atomic(folder / "batches.meta", meta)
    return BatchSet(str(folder))


def _epoch(provider, epoch):
    out = []
    for bnum, mbs in provider.iter_epoch(epoch):
        for mb in mbs:
            out.append((bnum, np.asarray(mb.labels).copy(), list(mb.filenames)))
    return out


def test_provider_balance_serves_classes_equally_exact_per_seed(tmp_path):
    bs = _imbalanced_set(tmp_path / "b")
    cpu = get_backend("cpu")
    plain = DataProvider(bs, [1, 2, 3], 8, cpu, seed=3, train=True)
    bal = DataProvider(bs, [1, 2, 3], 8, cpu, seed=3, train=True, balance=True)
    y_plain = np.concatenate([y for _, y, _ in _epoch(plain, 1)])
    y_bal = np.concatenate([y for _, y, _ in _epoch(bal, 1)])
    assert y_plain.size == y_bal.size == 60
    assert class_counts(y_plain, 2).tolist() == [48, 12]
    assert class_counts(y_bal, 2).tolist() == [30, 30]
    # same seed and epoch: the same minibatches (what makes a resume exact); another epoch: another draw
    again = DataProvider(bs, [1, 2, 3], 8, cpu, seed=3, train=True, balance=True)
    e1, e1b = _epoch(bal, 1), _epoch(again, 1)
    assert [(b, y.tolist(), f) for b, y, f in e1] == [(b, y.tolist(), f) for b, y, f in e1b]
    assert [f for _, _, f in _epoch(bal, 2)] != [f for _, _, f in e1]
    # a case's data travels with its label (the draw indexes x, labels and names together)
    for bnum, mbs in bal.iter_epoch(1):
        for mb in mbs:
            for x, y, name in zip(np.asarray(mb.x), np.asarray(mb.labels), mb.filenames):
                k = int(name.split("/c")[1])
                assert y == (1 if k < 4 else 0)
                assert x.reshape(-1)[0] == pytest.approx(1000 * bnum + 6 * k)
    # the test range is never balanced
    test = DataProvider(bs, [4], 8, cpu, seed=3, train=False, balance=True)
    assert class_counts(np.concatenate([y for _, y, _ in _epoch(test, 1)]), 2).tolist() == [16, 4]


# -- classWeights ------------------------------------------------------------------------------------------
def ctx():
    return Context(xp=np)


def _weighted(k, w):
    return make_layer("cost.logreg", [(1, 1, 1), (k, 1, 1)], classWeights=w)


def test_class_weights_gradients_match_numeric_plain_and_fused():
    n, k, coeff = 6, 3, 0.8
    w = [0.2, 1.0, 3.0]
    layer = _weighted(k, w)
    y = np.array([0, 2, 1, 1, 0, 2])
    z = 2 * nhwc((k, 1, 1), n=n)
    p = np.exp(z - z.max(axis=3, keepdims=True))
    p /= p.sum(axis=3, keepdims=True)

    def numeric(f, x, eps=1e-6):
        g = np.zeros_like(x)
        for i in np.ndindex(x.shape):
            old = x[i]
            x[i] = old + eps
            a = f()
            x[i] = old - eps
            b = f()
            x[i] = old
            g[i] = (a - b) / (2 * eps)
        return g

    (_, _), cache = layer.forward([y, p], {}, ctx())
    dp = layer.backward(coeff, cache, {}, ctx())[0][1]
    np.testing.assert_allclose(dp, numeric(lambda: coeff * layer.forward([y, p], {}, ctx())[0][0], p),
                               rtol=1e-6, atol=1e-9)
    (_, _), cache = layer.forward_fused(y, z, ctx())
    dz = layer.backward_fused(coeff, cache, ctx())
    np.testing.assert_allclose(dz, numeric(lambda: coeff * layer.forward_fused(y, z, ctx())[0][0], z),
                               rtol=1e-6, atol=1e-9)
    # soft targets (mixup) too
    t = np.random.default_rng(0).dirichlet(np.ones(k), size=n)
    (_, _), cache = layer.forward_fused(t, z, ctx())
    dz = layer.backward_fused(coeff, cache, ctx())
    np.testing.assert_allclose(dz, numeric(lambda: coeff * layer.forward_fused(t, z, ctx())[0][0], z),
                               rtol=1e-6, atol=1e-9)


def test_class_weights_match_torch_cross_entropy_weight():
    torch = pytest.importorskip("torch", reason="PyTorch not installed: parity tests need it")
    n, k = 32, 4
    w = [0.5, 2.0, 1.0, 4.0]
    layer = _weighted(k, w)
    z = 3 * nhwc((k, 1, 1), n=n, seed=2)
    y = np.random.default_rng(3).integers(0, k, n)
    (cost, m), cache = layer.forward_fused(y, z, ctx())
    dz = layer.backward_fused(1.0, cache, ctx())
    tz = torch.tensor(z.reshape(n, k), requires_grad=True)
    loss = torch.nn.CrossEntropyLoss(weight=torch.tensor(w, dtype=torch.float64))(tz, torch.tensor(y))
    loss.backward()
    assert cost == pytest.approx(loss.item(), rel=1e-10)
    np.testing.assert_allclose(dz.reshape(n, k), tz.grad.numpy(), rtol=1e-9, atol=1e-12)
    # unweighted error rate: weights change the cost, not what counts as an error
    assert m["error"] == pytest.approx(float((z.reshape(n, k).argmax(1) != y).mean()))


def test_all_ones_class_weights_equal_the_plain_cost():
    layer, plain = _weighted(3, [1, 1, 1]), make_layer("cost.logreg", [(1, 1, 1), (3, 1, 1)])
    z = nhwc((3, 1, 1), n=5)
    y = np.array([0, 1, 2, 1, 1])
    (c1, _), k1 = layer.forward_fused(y, z, ctx())
    (c2, _), k2 = plain.forward_fused(y, z, ctx())
    assert c1 == pytest.approx(c2, rel=1e-12)
    np.testing.assert_allclose(layer.backward_fused(1.0, k1, ctx()), plain.backward_fused(1.0, k2, ctx()), rtol=1e-12)


@pytest.mark.parametrize("w, message", [([1, 2], "classWeights has 2 values but 'in1' scores 3 classes"),
                                        ([0, 0, 0], "classWeights are all 0"),
                                        ([1, -1, 1], "at least 0")])
def test_bad_class_weights_name_the_layer_and_fix(w, message):
    from convnet_cli.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        _weighted(3, w)
