"""Whole networks through the Python API (Net): training steps against the same network in PyTorch, the
checkpoint arrays round trip, the non-finite check, a gradient check through branches, and dropout at
test time."""
from __future__ import annotations

import numpy as np
import pytest

from convnet_cli.net import Net

# -- (a) a small conv net trained for a few steps, ours vs PyTorch -----------------------------------------
SMALL = """\
data: {type: data, dataIdx: 0}
labels: {type: data, dataIdx: 1}
conv1: {type: conv, inputs: data, filters: 8, filterSize: 3, padding: 1, initW: 0.1}
bn1: {type: batchnorm, inputs: conv1, neuron: relu}
pool1: {type: pool, inputs: bn1, pool: max, sizeX: 2, stride: 2}
conv2: {type: conv, inputs: pool1, filters: 16, filterSize: 3, padding: 1, initW: 0.1}
bn2: {type: batchnorm, inputs: conv2, neuron: relu}
pool2: {type: pool, inputs: bn2, pool: max, sizeX: 2, stride: 2}
fc1: {type: fc, inputs: pool2, outputs: 4, initW: 0.1}
probs: {type: softmax, inputs: fc1}
logprob: {type: cost.logreg, inputs: [labels, probs]}
"""
SMALL_SHAPE = (1, 16, 20)  # (C, H, W), spectrogram-like

SGD_PARAMS = """\
DEFAULT: {updater: sgd, epsW: 0.05, epsB: 0.1, momW: 0.9, momB: 0.8, wc: 0.01}
"""
# The gradient of a conv bias followed by batchnorm is zero up to rounding, and adam would turn that noise
# into full-size steps of either sign; so those biases stay put here (a per-layer override of DEFAULT).
ADAM_PARAMS = """\
DEFAULT: {updater: adam, epsW: 0.01, epsB: 0.02, momW: 0.9, momB: 0.85, wc: 0.001}
conv1: {epsB: 0}
conv2: {epsB: 0}
"""


def batch(n, shape, k, seed=0, dtype=np.float32):
    """Features (N, H, W, C) and int labels (N,)."""
    c, h, w = shape
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, h, w, c)).astype(dtype), rng.integers(0, k, n)


def nchw(x):
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


class TorchSmall:
    """The SMALL net in PyTorch (NCHW), weights copied from ours."""

    def __init__(self, torch, net):
        nn = torch.nn
        self.torch = torch
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8, eps=1e-5, momentum=0.1)  # ours keeps 0.9 of the old average
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16, eps=1e-5, momentum=0.1)
        self.fc1 = nn.Linear(16 * 4 * 5, 4)
        self.modules = {"conv1": self.conv1, "bn1": self.bn1, "conv2": self.conv2, "bn2": self.bn2, "fc1": self.fc1}
        with torch.no_grad():
            for name, m in self.modules.items():
                p = net.params[name]
                if name.startswith("bn"):
                    m.weight.copy_(torch.tensor(p["gamma"]))
                    m.bias.copy_(torch.tensor(p["beta"]))
                    m.running_mean.copy_(torch.tensor(p["running_mean"]))
                    m.running_var.copy_(torch.tensor(p["running_var"]))
                else:
                    m.weight.copy_(torch.tensor(p["weights"]))
                    m.bias.copy_(torch.tensor(p["biases"]))

    def loss(self, x, y):
        F = self.torch.nn.functional
        h = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        h = F.max_pool2d(F.relu(self.bn2(self.conv2(h))), 2)
        return F.cross_entropy(self.fc1(h.flatten(1)), y)

    def groups(self, lr_w, lr_b, mom_w, mom_b, wc, key="momentum", lr_conv_b=None):
        """Param groups as our params file routes them: weights (decayed), gamma (epsW/momW, no decay), and
        biases and beta (epsB/momB; the conv biases at lr_conv_b when given)."""
        weights = [m.weight for n, m in self.modules.items() if not n.startswith("bn")]
        gammas = [m.weight for n, m in self.modules.items() if n.startswith("bn")]
        conv_b = [m.bias for n, m in self.modules.items() if n.startswith("conv")]
        rest = [m.bias for n, m in self.modules.items() if not n.startswith("conv")]
        mw = mom_w if key == "momentum" else (mom_w, 0.999)
        mb = mom_b if key == "momentum" else (mom_b, 0.999)
        return [{"params": weights, "lr": lr_w, key: mw, "weight_decay": wc},
                {"params": gammas, "lr": lr_w, key: mw, "weight_decay": 0.0},
                {"params": conv_b, "lr": lr_b if lr_conv_b is None else lr_conv_b, key: mb, "weight_decay": 0.0},
                {"params": rest, "lr": lr_b, key: mb, "weight_decay": 0.0}]

    def compare(self, net, rtol, atol, what=""):
        for name, m in self.modules.items():
            p = net.params[name]
            pairs = ([("gamma", m.weight), ("beta", m.bias), ("running_mean", m.running_mean),
                      ("running_var", m.running_var)] if name.startswith("bn") else
                     [("weights", m.weight), ("biases", m.bias)])
            for pname, t in pairs:
                np.testing.assert_allclose(p[pname], t.detach().numpy(), rtol=rtol, atol=atol,
                                           err_msg=f"{what} {name}/{pname}")


@pytest.mark.parametrize("updater", ["sgd", "adam"])
def test_small_net_trains_like_torch(updater):
    torch = pytest.importorskip("torch", reason="PyTorch not installed: parity tests need it")
    torch.manual_seed(0)
    params = SGD_PARAMS if updater == "sgd" else ADAM_PARAMS
    net = Net.from_text(SMALL, params, SMALL_SHAPE, seed=3)
    assert net.by_name["pool2"].out_shape == (16, 4, 5)
    ref = TorchSmall(torch, net)
    if updater == "sgd":
        opt = torch.optim.SGD(ref.groups(0.05, 0.1, 0.9, 0.8, 0.01), lr=0.05)
    else:
        opt = torch.optim.Adam(ref.groups(0.01, 0.02, 0.9, 0.85, 0.001, key="betas", lr_conv_b=0.0), lr=0.01, eps=1e-8)
    ref.compare(net, 0, 0, "initial")
    for step in range(5):
        x, y = batch(8, SMALL_SHAPE, 4, seed=step)
        costs = net.forward({0: x, 1: y}, train=True)
        grads = net.backward()
        assert net.fused == {"logprob": "probs"}
        opt.zero_grad()
        loss = ref.loss(torch.tensor(nchw(x)), torch.tensor(y))
        loss.backward()
        assert costs["logprob"][0] == pytest.approx(loss.item(), rel=1e-4, abs=1e-6), f"step {step}"
        if step == 0:  # gradients of the first step, before the weights move apart
            np.testing.assert_allclose(grads["conv1"]["weights"], ref.conv1.weight.grad.numpy(),
                                       rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(grads["fc1"]["weights"], ref.fc1.weight.grad.numpy(), rtol=1e-4, atol=1e-6)
        net.update(grads, progress=step / 5, epoch=0.0)
        opt.step()
        ref.compare(net, 1e-4, 1e-5, f"{updater} step {step}")
    # both now predict the same at test time (running statistics in place of the batch's)
    x, y = batch(8, SMALL_SHAPE, 4, seed=99)
    net.forward({0: x}, train=False)
    for m in ref.modules.values():
        m.eval()
    with torch.no_grad():
        F = torch.nn.functional
        h = F.max_pool2d(F.relu(ref.bn1(ref.conv1(torch.tensor(nchw(x))))), 2)
        h = F.max_pool2d(F.relu(ref.bn2(ref.conv2(h))), 2)
        want = F.softmax(ref.fc1(h.flatten(1)), dim=1).numpy()
    np.testing.assert_allclose(net.outputs["probs"].reshape(8, 4), want, rtol=1e-4, atol=1e-5)


def test_forward_without_labels_skips_the_cost():
    net = Net.from_text(SMALL, "", SMALL_SHAPE, seed=0)
    x, _ = batch(3, SMALL_SHAPE, 4)
    assert net.forward({0: x}, train=False) == {}
    p = net.outputs["probs"]
    assert p.shape == (3, 1, 1, 4) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(axis=-1), 1, rtol=1e-6)


# -- (b) get_arrays / set_arrays -------------------------------------------------------------------------
def test_get_set_arrays_round_trip_is_bit_identical():
    a = Net.from_text(SMALL, SGD_PARAMS, SMALL_SHAPE, seed=1)
    for step in range(2):  # fills updater states and moves the running statistics
        x, y = batch(6, SMALL_SHAPE, 4, seed=step)
        a.forward({0: x, 1: y}, train=True)
        a.update(a.backward(), 0.0, 0.0)
    arrays = a.get_arrays()
    assert "conv1/weights" in arrays and "bn1/running_var" in arrays and "conv1/weights/inc" in arrays
    assert all(isinstance(v, np.ndarray) for v in arrays.values())

    b = Net.from_text(SMALL, SGD_PARAMS, SMALL_SHAPE, seed=2)  # different initial weights
    b.set_arrays(arrays)
    got = b.get_arrays()
    assert set(got) == set(arrays)
    for k in arrays:
        assert got[k].dtype == arrays[k].dtype and np.array_equal(got[k], arrays[k]), k

    x, y = batch(6, SMALL_SHAPE, 4, seed=10)
    a.forward({0: x}, train=False)
    b.forward({0: x}, train=False)
    for name in ("conv1", "bn2", "fc1", "probs"):
        assert np.array_equal(a.outputs[name], b.outputs[name]), name
    # and training goes on identically, updater state included
    ca = a.forward({0: x, 1: y}, train=True)
    cb = b.forward({0: x, 1: y}, train=True)
    assert ca["logprob"][0] == cb["logprob"][0]
    a.update(a.backward(), 0.5, 1.0)
    b.update(b.backward(), 0.5, 1.0)
    for k, v in a.get_arrays().items():
        assert np.array_equal(v, b.get_arrays()[k]), k


def test_get_arrays_are_copies_on_the_host():
    # a snapshot (say, of the best model so far) must not move with the training that goes on
    net = Net.from_text(SMALL, "", SMALL_SHAPE, seed=0)
    arrays = net.get_arrays()
    before = {k: v.copy() for k, v in arrays.items()}
    x, y = batch(4, SMALL_SHAPE, 4)
    net.forward({0: x, 1: y}, train=True)
    net.update(net.backward(), 0.0, 0.0)
    assert not np.array_equal(net.params["fc1"]["weights"], before["fc1/weights"])
    for k, v in arrays.items():
        assert np.array_equal(v, before[k]), k
    arrays["fc1/weights"][...] = 0
    assert net.params["fc1"]["weights"].any()


def test_set_arrays_copies_them_in():
    net = Net.from_text(SMALL, "", SMALL_SHAPE, seed=0)
    arrays = net.get_arrays()
    net.set_arrays(arrays)
    x, y = batch(4, SMALL_SHAPE, 4)
    net.forward({0: x, 1: y}, train=True)
    net.update(net.backward(), 0.0, 0.0)
    assert not np.array_equal(net.params["fc1"]["weights"], arrays["fc1/weights"])
    arrays["fc1/weights"][...] = 0
    assert net.params["fc1"]["weights"].any()


def test_set_arrays_rejects_a_wrong_shape():
    from convnet_cli.errors import DataError

    net = Net.from_text(SMALL, "", SMALL_SHAPE, seed=0)
    arrays = net.get_arrays()
    arrays["fc1/weights"] = np.zeros((3, 320), np.float32)
    with pytest.raises(DataError) as e:
        net.set_arrays(arrays, source="ckpt.npz")
    assert "ckpt.npz: 'fc1/weights' has shape (3, 320), the network needs (4, 320)" in str(e.value)


# -- (c) first_nonfinite -----------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("layer,param", [("conv2", "weights"), ("fc1", "biases"), ("conv1", "weights")])
def test_first_nonfinite_names_the_layer(layer, param):
    net = Net.from_text(SMALL, "", SMALL_SHAPE, seed=0)
    x, y = batch(4, SMALL_SHAPE, 4)
    net.forward({0: x, 1: y}, train=True)
    assert net.first_nonfinite() is None
    net.params[layer][param].reshape(-1)[3] = np.inf
    net.forward({0: x, 1: y}, train=True)
    assert net.first_nonfinite() == layer


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_first_nonfinite_with_nan_input():
    net = Net.from_text(SMALL, "", SMALL_SHAPE, seed=0)
    x, y = batch(4, SMALL_SHAPE, 4)
    x[1, 2, 3, 0] = np.nan
    net.forward({0: x, 1: y}, train=True)
    assert net.first_nonfinite() == "conv1"


# -- (d) branches: whole-net gradient check in float64 -----------------------------------------------------
BRANCHES = """\
data: {type: data, dataIdx: 0}
labels: {type: data, dataIdx: 1}
conv1: {type: conv, inputs: data, filters: 3, filterSize: 3, padding: 1, initW: 0.5, neuron: tanh}
a: {type: conv, inputs: conv1, filters: 4, filterSize: 3, padding: 1, initW: 0.5}
b: {type: conv, inputs: data, filters: 4, filterSize: [1, 3], padding: [0, 1], initW: 0.5}
sum: {type: eltsum, inputs: [a, b], coeffs: [1, -0.5], neuron: logistic}
mx: {type: eltmax, inputs: [sum, a]}
cat: {type: concat, inputs: [mx, conv1]}
bn: {type: batchnorm, inputs: cat}
pool: {type: pool, inputs: bn, pool: avg, sizeX: 2, stride: 2}
fc1: {type: fc, inputs: [pool, conv1], outputs: 3, initW: 0.3}
probs: {type: softmax, inputs: fc1}
logprob: {type: cost.logreg, inputs: [labels, probs]}
sq: {type: cost.sum2, inputs: b}
"""
BRANCH_PARAMS = "sq: {coeff: 0.1}\n"


def float64_net(text, params, shape, seed=0):
    net = Net.from_text(text, params, shape, seed=seed)
    rng = np.random.default_rng(seed + 7)
    for lname, ps in net.params.items():
        for k, v in ps.items():
            v = v.astype(np.float64)
            if k.startswith("bias") or k == "beta":  # nonzero biases, so that they matter
                v = v + 0.1 * rng.standard_normal(v.shape)
            ps[k] = v
    return net


def capture_input_grads(net):
    """Wrap the backward of every layer fed by the data layer; returns the dict it fills with d/d(input)."""
    got = {"dx": None}
    for l in net.layers:
        if "data" in l.in_names:
            if hasattr(l, "input_grads"):
                l.input_grads = True
            orig = l.backward

            def backward(dout, cache, params, ctx, _orig=orig, _l=l):
                dxs, g = _orig(dout, cache, params, ctx)
                for name, d in zip(_l.in_names, dxs):
                    if name == "data":
                        got["dx"] = d if got["dx"] is None else got["dx"] + d
                return dxs, g

            l.backward = backward
    return got


def total_loss(net, x, y):
    costs = net.forward({0: x, 1: y}, train=True)
    return sum(net.by_name[k].hyper.coeff * c for k, (c, _) in costs.items())


def test_branches_gradcheck_float64():
    shape = (2, 4, 6)
    net = float64_net(BRANCHES, BRANCH_PARAMS, shape)
    assert net.by_name["cat"].out_shape == (7, 4, 6) and net.by_name["pool"].out_shape == (7, 2, 3)
    x, y = batch(3, shape, 3, seed=1, dtype=np.float64)
    got = capture_input_grads(net)
    total_loss(net, x, y)
    assert net.outputs["probs"].dtype == np.float64
    grads = net.backward()
    dx = got["dx"]
    assert dx is not None and dx.shape == x.shape and dx.dtype == np.float64

    rng = np.random.default_rng(0)
    eps = 1e-6

    def check(arr, analytic, label, count=25):
        flat, a = arr.reshape(-1), np.asarray(analytic).reshape(-1)
        for j in rng.choice(flat.size, size=min(count, flat.size), replace=False):
            old = flat[j]
            flat[j] = old + eps
            plus = total_loss(net, x, y)
            flat[j] = old - eps
            minus = total_loss(net, x, y)
            flat[j] = old
            num = (plus - minus) / (2 * eps)
            assert abs(a[j] - num) <= 1e-7 + 1e-5 * max(abs(a[j]), abs(num)), (
                f"d loss / d {label}[{j}]: analytic {a[j]:.10g} vs numeric {num:.10g}")

    check(x, dx, "input", count=40)
    for lname in ("conv1", "a", "b", "bn", "fc1"):
        for pname in net.by_name[lname].learned:
            check(net.params[lname][pname], grads[lname][pname], f"{lname}/{pname}", count=10)


# -- (e) dropout -----------------------------------------------------------------------------------------
DROP = """\
data: {type: data, dataIdx: 0}
labels: {type: data, dataIdx: 1}
fc1: {type: fc, inputs: data, outputs: 16, initW: 0.3, neuron: relu}
drop: {type: dropout, inputs: fc1}
fc2: {type: fc, inputs: drop, outputs: 3, initW: 0.3}
probs: {type: softmax, inputs: fc2}
logprob: {type: cost.logreg, inputs: [labels, probs]}
"""


def test_dropout_is_the_identity_at_test_time():
    net = Net.from_text(DROP, "drop: {keep: 0.5}", (2, 3, 4), seed=0)
    assert net.by_name["drop"].hyper.keep == 0.5
    nodrop = Net.from_text(DROP.replace("drop: {type: dropout, inputs: fc1}\n", "").replace("inputs: drop",
                                                                                           "inputs: fc1"),
                           "", (2, 3, 4), seed=5)
    nodrop.set_arrays(net.get_arrays())
    x, y = batch(5, (2, 3, 4), 3)
    net.forward({0: x, 1: y}, train=False)
    assert np.array_equal(net.outputs["drop"], net.outputs["fc1"])
    nodrop.forward({0: x, 1: y}, train=False)
    assert np.array_equal(net.outputs["probs"], nodrop.outputs["probs"])

    # training drops about half the units and scales the rest by 1/keep
    net.forward({0: x, 1: y}, train=True, rng=np.random.default_rng(0))
    h, d = net.outputs["fc1"], net.outputs["drop"]
    live = h != 0
    kept = d[live] != 0
    assert 0.2 < kept.mean() < 0.8
    np.testing.assert_allclose(d[live][kept], 2 * h[live][kept], rtol=1e-6)
    grads = net.backward()
    assert np.isfinite(grads["fc1"]["weights"]).all()


def test_dropout_keep_comes_from_the_params_file_and_one_is_identity():
    net = Net.from_text(DROP, "drop: {keep: 1.0}", (2, 3, 4), seed=0)
    x, y = batch(5, (2, 3, 4), 3)
    net.forward({0: x, 1: y}, train=True, rng=np.random.default_rng(0))
    assert np.array_equal(net.outputs["drop"], net.outputs["fc1"])


# -- float32 throughout ----------------------------------------------------------------------------------
def test_training_stays_float32():
    net = Net.from_text(SMALL, "", SMALL_SHAPE, seed=0)
    x, y = batch(4, SMALL_SHAPE, 4)
    net.forward({0: x, 1: y}, train=True)
    grads = net.backward()
    net.update(grads, 0.0, 0.0)
    for lname, ps in net.params.items():
        for k, v in ps.items():
            assert v.dtype == np.float32, f"{lname}/{k}"
    for lname, out in net.outputs.items():
        if out is not None and lname != "labels":
            assert out.dtype == np.float32, lname
    for lname, g in grads.items():
        for k, v in g.items():
            assert v.dtype == np.float32, f"grad {lname}/{k}"


# -- memory: what a training step keeps -------------------------------------------------------------------
def test_a_step_keeps_no_caches_past_their_backward_and_no_pass_past_the_next():
    """Each layer's cache and output go once backward has run past the layer (a second backward is refused
    in one line), and a forward lets the last pass's arrays go before it computes."""
    import weakref

    net = Net.from_text(SMALL, SGD_PARAMS, SMALL_SHAPE, seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 16, 20, 1)).astype(np.float32)
    y = rng.integers(0, 4, 6)
    net.forward({0: x, 1: y}, train=True)
    inner = ("conv1", "bn1", "pool1", "conv2", "bn2", "pool2")   # fc1 and probs, read by the cost, stay
    refs = {name: weakref.ref(net.outputs[name]) for name in inner}
    net.backward()
    assert {name: r() is None for name, r in refs.items()} == {name: True for name in inner}
    assert all(net.outputs[name] is None for name in inner)
    assert net.outputs["probs"] is not None and net.outputs["fc1"] is not None
    with pytest.raises(RuntimeError, match="needs a forward"):
        net.backward()
    net.forward({0: x, 1: y}, train=True)
    first_conv_out = weakref.ref(net.outputs["conv1"])
    seen = {}

    def watch(layer_forward):
        def run(xs, params, ctx):
            seen.setdefault("alive", first_conv_out() is not None)
            return layer_forward(xs, params, ctx)
        return run

    conv1 = net.by_name["conv1"]
    conv1.forward = watch(conv1.forward)
    net.forward({0: x, 1: y}, train=True)
    assert seen == {"alive": False}  # the first pass's conv1 output was gone before conv1 ran again
    assert net.first_nonfinite() is None


def test_a_backward_after_a_nonfinite_cost_keeps_the_outputs_for_first_nonfinite():
    net = Net.from_text(SMALL, SGD_PARAMS, SMALL_SHAPE, seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 16, 20, 1)).astype(np.float32)
    x[2, 3, 4, 0] = np.inf
    with np.errstate(all="ignore"):
        costs = net.forward({0: x, 1: rng.integers(0, 4, 6)}, train=True)
        assert not np.isfinite(costs["logprob"][0])
        net.backward()
    assert all(net.outputs[name] is not None for name in ("conv1", "bn1", "fc1"))
    assert net.first_nonfinite() == "conv1"


def test_batchnorm_backward_from_x_gives_the_bits_of_the_kept_xhat():
    """CPU training batchnorm keeps x and the mean, not xhat; backward recomputes xhat by the forward's own
    operations, so dx, dgamma and dbeta are the bits the kept xhat gave."""
    from convnet_cli.layers.norm import batchnorm_backward_numpy

    rng = np.random.default_rng(1)
    x = (rng.standard_normal((4, 5, 6, 7)) * 3 + 1).astype(np.float32)
    dout = rng.standard_normal(x.shape).astype(np.float32)
    mean = x.reshape(-1, 7).mean(axis=0)
    inv_std = (1 / np.sqrt(x.reshape(-1, 7).var(axis=0) + 1e-5)).astype(np.float32)
    gamma = rng.uniform(0.5, 1.5, 7).astype(np.float32)
    xhat = x - mean
    xhat *= inv_std
    want = batchnorm_backward_numpy(dout, xhat, inv_std, gamma, True)
    got = batchnorm_backward_numpy(dout, None, inv_std, gamma, True, x=x, mean=mean)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
