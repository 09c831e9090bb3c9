"""Recurrent layers (rnn, lstm, gru; forward, reverse, bidirectional, stacked) and seqpool: numerical
gradient checks in float64, parity with torch.nn.RNN/LSTM/GRU in float32 (forward, backward, one SGD
step), the NumPy cell twins, and the config rules (rnn's own neuron)."""
from __future__ import annotations

import numpy as np
import pytest

from convnet_cli.config.layer_def import build_layers
from convnet_cli.config.loader import parse_layer_def_text
from convnet_cli.errors import ConfigError
from convnet_cli.layers.base import Context
from convnet_cli.layers.recurrent import (from_sequence, gru_cell_backward_numpy, gru_cell_forward_numpy,
                                          lstm_cell_backward_numpy, lstm_cell_forward_numpy, to_sequence)
from tests.helpers import gradcheck, make_layer, nhwc

SHAPE = (2, 3, 5)  # (C, H, W): 6 features per step, 5 steps
CELLS = [("rnn", "tanh"), ("rnn", "relu"), ("lstm", None), ("gru", None)]
MODES = {"forward": {}, "reverse": {"reverse": 1}, "bidirectional": {"bidirectional": 1}}


def recurrent(type_name, in_shape, neuron=None, name="L", **props):
    """A recurrent layer through the real parser; an rnn's `neuron` goes into its props (it owns it)."""
    if neuron is not None:
        props["nonlinearity"] = neuron  # make_layer's own `neuron` is the output neuron; use the alias
    return make_layer(type_name, [in_shape], name=name, **props)


def run(layer, x, params, dout=None):
    ctx = Context(xp=np, train=True)
    out, cache = layer.forward([x], params, ctx)
    if dout is None:
        return out, None, None
    dxs, grads = layer.backward(dout, cache, params, ctx)
    return out, dxs[0], grads


# -- gradient checks -----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("type_name,neuron", CELLS)
def test_gradcheck(type_name, neuron, mode):
    layer = recurrent(type_name, SHAPE, neuron, outputs=4, **MODES[mode])
    params = layer.init_params(np.random.default_rng(1))
    # Non-zero biases, so the bias paths (and GRU's b_hn inside r * (.)) are exercised.
    for k in params:
        if k.startswith("bias"):
            params[k] = np.random.default_rng(len(k)).uniform(-0.5, 0.5, params[k].shape).astype(np.float32)
    x = nhwc(SHAPE, n=2, seed=4)
    gradcheck(layer, [x], params, max_checks=25)


def test_gradcheck_one_step_sequence():
    layer = recurrent("lstm", (2, 3, 1), outputs=3, bidirectional=1)
    gradcheck(layer, [nhwc((2, 3, 1))])


@pytest.mark.parametrize("pool", ["last", "mean", "sum", "max"])
def test_seqpool(pool):
    layer = make_layer("seqpool", [(4, 1, 6)], pool=pool)
    assert layer.out_shape == (4, 1, 1)
    x = nhwc((4, 1, 6), n=3, seed=2)
    want = {"last": x[:, :, -1], "mean": x.mean(2), "sum": x.sum(2), "max": x.max(2)}[pool]
    out, _, _ = run(layer, x, {})
    np.testing.assert_allclose(out[:, :, 0], want)
    gradcheck(layer, [x], {})
    assert run(layer, x.astype(np.float32), {})[0].dtype == np.float32


# -- shapes, parameters, dtype ----------------------------------------------------------------------
@pytest.mark.parametrize("type_name,gates", [("rnn", 1), ("lstm", 4), ("gru", 3)])
def test_params_and_shapes(type_name, gates):
    layer = recurrent(type_name, (8, 5, 11), outputs=6, bidirectional=1)
    assert layer.out_shape == (12, 1, 11)
    params = layer.init_params(np.random.default_rng(0))
    assert set(params) == set(layer.learned) == {
        f"{n}{s}" for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh") for s in ("", "_reverse")}
    assert params["weight_ih"].shape == (gates * 6, 40)
    assert params["weight_hh_reverse"].shape == (gates * 6, 6)
    assert params["bias_hh"].shape == (gates * 6,)
    assert all(p.dtype == np.float32 for p in params.values())
    # glorot_uniform input weights, an orthogonal (gain 1) block per gate for the recurrent ones
    bound = np.sqrt(6 / (40 + gates * 6))
    assert np.abs(params["weight_ih"]).max() <= bound
    for g in range(gates):
        block = params["weight_hh"][g * 6:(g + 1) * 6].astype(np.float64)
        np.testing.assert_allclose(block @ block.T, np.eye(6), atol=1e-5)
    one_way = recurrent(type_name, (8, 5, 11), outputs=6, reverse=1)
    assert one_way.out_shape == (6, 1, 11)
    assert set(one_way.init_params(np.random.default_rng(0))) == {"weight_ih", "weight_hh", "bias_ih", "bias_hh"}


def test_float32_stays_float32():
    layer = recurrent("gru", SHAPE, outputs=4, bidirectional=1)
    params = layer.init_params(np.random.default_rng(0))
    x = nhwc(SHAPE, dtype=np.float32)
    out, dx, grads = run(layer, x, params, np.ones((2, 1, 5, 8), np.float32))
    assert out.dtype == dx.dtype == np.float32
    assert all(g.dtype == np.float32 for g in grads.values())


def test_sequence_layout_roundtrip():
    x = nhwc((3, 4, 5), n=2)
    seq = to_sequence(x)
    nchw = x.transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(seq[2, 1], nchw[1, :, :, 2].reshape(-1))
    np.testing.assert_array_equal(from_sequence(seq, x.shape), x)


# -- config ------------------------------------------------------------------------------------------
NET = """
d: {{type: data}}
labels: {{type: data, dataIdx: 1}}
r: {{type: {type}, inputs: d, outputs: 4, {extra}}}
p: {{type: seqpool, inputs: r, pool: last}}
f: {{type: fc, inputs: p, outputs: 2}}
probs: {{type: softmax, inputs: f}}
cost: {{type: cost.logreg, inputs: [labels, probs]}}
"""


def test_rnn_owns_its_neuron():
    specs = parse_layer_def_text(NET.format(type="rnn", extra="neuron: relu"), "net.yaml")
    r = specs[2]
    assert r.props.neuron == "relu" and r.neuron is None  # the cell's, not applied again to the output
    layers = build_layers(specs, (2, 3, 5), "net.yaml")
    assert layers[2].fn.name == "relu" and layers[2].neuron is None
    assert layers[3].out_shape == (4, 1, 1)
    assert parse_layer_def_text(NET.format(type="rnn", extra="reverse: 1"), "net.yaml")[2].props.neuron == "tanh"
    # any other layer's neuron still goes to the net, applied to the output
    lstm = parse_layer_def_text(NET.format(type="lstm", extra="neuron: relu"), "net.yaml")[2]
    assert lstm.neuron == "relu" and not hasattr(lstm.props, "neuron")


def test_rnn_neuron_must_be_tanh_or_relu():
    with pytest.raises(ConfigError, match=r"net.yaml: layer 'r': neuron 'logistic' must be one of tanh, relu"):
        parse_layer_def_text(NET.format(type="rnn", extra="neuron: logistic"), "net.yaml")


def test_reverse_and_bidirectional_conflict():
    with pytest.raises(ConfigError, match=r"layer 'L': reverse: 1 and bidirectional: 1 together"):
        recurrent("gru", SHAPE, outputs=3, reverse=1, bidirectional=1)


def test_recurrent_key_errors():
    with pytest.raises(ConfigError, match=r"missing required key 'outputs' for a lstm layer"):
        make_layer("lstm", [SHAPE])
    with pytest.raises(ConfigError, match=r"initHidden 'orthogonl' must be one of .*did you mean 'orthogonal'"):
        make_layer("lstm", [SHAPE], outputs=3, initHidden="orthogonl")
    with pytest.raises(ConfigError, match=r"missing required key 'pool' for a seqpool layer"):
        make_layer("seqpool", [(4, 1, 6)])


# -- the NumPy cell twins against a plain transcription of PyTorch's formulas -------------------------
def _sig(x):
    return 1 / (1 + np.exp(-x))


def test_lstm_cell_twin():
    rng = np.random.default_rng(0)
    n, o = 3, 4
    pre, c_prev = rng.standard_normal((n, 4 * o)) * 2, rng.standard_normal((n, o))
    h, c, act = lstm_cell_forward_numpy(pre, c_prev)
    i, f, g, og = _sig(pre[:, :o]), _sig(pre[:, o:2 * o]), np.tanh(pre[:, 2 * o:3 * o]), _sig(pre[:, 3 * o:])
    np.testing.assert_allclose(c, f * c_prev + i * g, atol=1e-12)
    np.testing.assert_allclose(h, og * np.tanh(c), atol=1e-12)
    # backward against central differences of sum(h * dh + c * dc)
    dh, dc = rng.standard_normal((n, o)), rng.standard_normal((n, o))
    dpre, dc_prev = lstm_cell_backward_numpy(act, c, c_prev, dh, dc)

    def loss(p, cp):
        hh, cc, _ = lstm_cell_forward_numpy(p, cp)
        return np.sum(hh * dh + cc * dc)

    for arr, grad in ((pre, dpre), (c_prev, dc_prev)):
        num = np.zeros_like(arr)
        for j in range(arr.size):
            e = np.zeros(arr.size)
            e[j] = 1e-6
            e = e.reshape(arr.shape)
            args_p = (pre + e, c_prev) if arr is pre else (pre, c_prev + e)
            args_m = (pre - e, c_prev) if arr is pre else (pre, c_prev - e)
            num.flat[j] = (loss(*args_p) - loss(*args_m)) / 2e-6
        np.testing.assert_allclose(grad, num, atol=1e-7)


def test_gru_cell_twin():
    rng = np.random.default_rng(1)
    n, o = 3, 4
    xg, hg, h_prev = (rng.standard_normal((n, 3 * o)), rng.standard_normal((n, 3 * o)),
                      rng.standard_normal((n, o)))
    h, act, hn = gru_cell_forward_numpy(xg, hg, h_prev)
    r = _sig(xg[:, :o] + hg[:, :o])
    z = _sig(xg[:, o:2 * o] + hg[:, o:2 * o])
    nn = np.tanh(xg[:, 2 * o:] + r * hg[:, 2 * o:])
    np.testing.assert_allclose(h, (1 - z) * nn + z * h_prev, atol=1e-12)
    np.testing.assert_array_equal(hn, hg[:, 2 * o:])
    dh = rng.standard_normal((n, o))
    dxg, dhg, direct = gru_cell_backward_numpy(act, hn, h_prev, dh)

    def loss(a, b, c):
        return np.sum(gru_cell_forward_numpy(a, b, c)[0] * dh)

    for which, grad in ((0, dxg), (1, dhg), (2, direct)):
        args = [xg, hg, h_prev]
        arr = args[which]
        num = np.zeros_like(arr)
        for j in range(arr.size):
            e = np.zeros(arr.size)
            e[j] = 1e-6
            plus, minus = list(args), list(args)
            plus[which] = arr + e.reshape(arr.shape)
            minus[which] = arr - e.reshape(arr.shape)
            num.flat[j] = (loss(*plus) - loss(*minus)) / 2e-6
        if which == 2:  # `direct` is z * dh; the rest of dh_prev is dhg @ W_hh, outside the cell
            np.testing.assert_allclose(grad, dh * act[:, o:2 * o], atol=1e-12)
        else:
            np.testing.assert_allclose(grad, num, atol=1e-7)


# -- parity with PyTorch -------------------------------------------------------------------------------
N, C, H, W, O = 3, 2, 3, 7, 5
TORCH_CLASS = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}


def _torch_module(torch, type_name, neuron, layers, params_list, bidirectional):
    """A torch module holding our weights: one layer per (layer, params) pair, stacked."""
    kwargs = {"nonlinearity": neuron} if type_name == "rnn" else {}
    m = getattr(torch.nn, TORCH_CLASS[type_name])(layers[0].features, O, num_layers=len(layers),
                                                  bidirectional=bidirectional, **kwargs)
    with torch.no_grad():
        for k, params in enumerate(params_list):
            for name, value in params.items():
                stem, rev = (name[:-8], "_reverse") if name.endswith("_reverse") else (name, "")
                getattr(m, f"{stem}_l{k}{rev}").copy_(torch.from_numpy(value))
    return m


def _torch_run(torch, module, x, dout, flip=False):
    """x: (N, H, W, C) -> torch output as ours (N, 1, W, D*O), dx as ours, module grads by our names."""
    xt = torch.tensor(x.transpose(0, 3, 1, 2).copy(), requires_grad=True)  # NCHW
    seq = xt.reshape(N, C * H, W).permute(2, 0, 1)  # (W, N, F)
    if flip:
        seq = seq.flip(0)
    out = module(seq)[0]
    if flip:
        out = out.flip(0)
    out.backward(torch.from_numpy(dout[:, 0].transpose(1, 0, 2).copy()))
    ours = out.detach().numpy().transpose(1, 0, 2)[:, None]
    return ours, xt.grad.numpy().transpose(0, 2, 3, 1)


def _grads_by_our_names(module, layer_index):
    out = {}
    for name, p in module.named_parameters():
        stem, _, rest = name.rpartition(f"_l{layer_index}")
        if stem and rest in ("", "_reverse"):
            out[stem + rest] = p.grad.numpy()
    return out


def _close(a, b, what):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5, err_msg=what)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("type_name,neuron", CELLS)
def test_torch_parity(type_name, neuron, mode):
    torch = pytest.importorskip("torch", reason="PyTorch not installed: parity tests need it")
    props = MODES[mode]
    layer = recurrent(type_name, (C, H, W), neuron, outputs=O, **props)
    rng = np.random.default_rng(7)
    params = layer.init_params(rng)
    for k in params:  # torch-like biases, so every bias path is compared
        if k.startswith("bias"):
            params[k] = rng.uniform(-0.3, 0.3, params[k].shape).astype(np.float32)
    x = nhwc((C, H, W), n=N, seed=3, dtype=np.float32)
    dout = rng.standard_normal((N, 1, W, layer.out_shape[0])).astype(np.float32)
    out, dx, grads = run(layer, x, params, dout)

    module = _torch_module(torch, type_name, neuron or "tanh", [layer], [params], bool(props.get("bidirectional")))
    t_out, t_dx = _torch_run(torch, module, x, dout, flip=bool(props.get("reverse")))
    _close(out, t_out, "output")
    _close(dx, t_dx, "dx")
    t_grads = _grads_by_our_names(module, 0)
    assert set(t_grads) == set(grads) == set(layer.learned)
    for name in grads:
        _close(grads[name], t_grads[name], name)

    # one SGD step each, then the updated weights and the next forward pass agree
    lr = 0.1
    new = {k: params[k] - lr * grads[k] for k in params}
    opt = torch.optim.SGD(module.parameters(), lr=lr)
    opt.step()
    for name, p in module.named_parameters():
        stem, _, rest = name.rpartition("_l0")
        _close(new[stem + rest], p.detach().numpy(), f"{name} after one step")
    out2, _, _ = run(layer, x, new)
    seq = torch.from_numpy(x.transpose(0, 3, 1, 2).reshape(N, C * H, W).transpose(2, 0, 1).copy())
    with torch.no_grad():
        t2 = module(seq.flip(0) if props.get("reverse") else seq)[0]
    t2 = (t2.flip(0) if props.get("reverse") else t2).numpy().transpose(1, 0, 2)[:, None]
    _close(out2, t2, "output after one step")


@pytest.mark.parametrize("type_name,neuron", [("lstm", None), ("gru", None), ("rnn", "relu")])
def test_torch_parity_stacked_bidirectional(type_name, neuron):
    """Two bidirectional layers of ours = a 2-layer bidirectional torch module."""
    torch = pytest.importorskip("torch", reason="PyTorch not installed: parity tests need it")
    first = recurrent(type_name, (C, H, W), neuron, name="r1", outputs=O, bidirectional=1)
    second = recurrent(type_name, first.out_shape, neuron, name="r2", outputs=O, bidirectional=1)
    rng = np.random.default_rng(11)
    p1, p2 = first.init_params(rng), second.init_params(rng)
    for p in (p1, p2):
        for k in p:
            if k.startswith("bias"):
                p[k] = rng.uniform(-0.3, 0.3, p[k].shape).astype(np.float32)
    x = nhwc((C, H, W), n=N, seed=5, dtype=np.float32)
    dout = rng.standard_normal((N, 1, W, 2 * O)).astype(np.float32)

    ctx = Context(xp=np, train=True)
    h1, c1 = first.forward([x], p1, ctx)
    out, c2 = second.forward([h1], p2, ctx)
    (dh1,), g2 = second.backward(dout, c2, p2, ctx)
    (dx,), g1 = first.backward(dh1, c1, p1, ctx)

    module = _torch_module(torch, type_name, neuron or "tanh", [first, second], [p1, p2], True)
    t_out, t_dx = _torch_run(torch, module, x, dout)
    _close(out, t_out, "output")
    _close(dx, t_dx, "dx")
    for k, grads in ((0, g1), (1, g2)):
        t_grads = _grads_by_our_names(module, k)
        assert set(t_grads) == set(grads)
        for name in grads:
            _close(grads[name], t_grads[name], f"layer {k + 1} {name}")


def test_torch_parity_lstm_into_seqpool():
    """An LSTM then seqpool last/mean: the gradient that reaches only the last step (or every step)."""
    torch = pytest.importorskip("torch", reason="PyTorch not installed: parity tests need it")
    layer = recurrent("lstm", (C, H, W), outputs=O)
    params = layer.init_params(np.random.default_rng(2))
    x = nhwc((C, H, W), n=N, seed=6, dtype=np.float32)
    module = _torch_module(torch, "lstm", None, [layer], [params], False)
    for pool in ("last", "mean"):
        sp = make_layer("seqpool", [layer.out_shape], pool=pool)
        ctx = Context(xp=np, train=True)
        h, c = layer.forward([x], params, ctx)
        y, cs = sp.forward([h], {}, ctx)
        dy = np.ones_like(y)
        (dh,), _ = sp.backward(dy, cs, {}, ctx)
        (dx,), grads = layer.backward(dh, c, params, ctx)

        module.zero_grad()
        xt = torch.tensor(x.transpose(0, 3, 1, 2).copy(), requires_grad=True)
        seq = xt.reshape(N, C * H, W).permute(2, 0, 1)
        out = module(seq)[0]
        (out[-1] if pool == "last" else out.mean(0)).sum().backward()
        _close(dx, xt.grad.numpy().transpose(0, 2, 3, 1), f"{pool} dx")
        _close(grads["weight_hh"], module.weight_hh_l0.grad.numpy(), f"{pool} weight_hh")


# -- the numba cells (the optional jit extra) against the NumPy twins, the reference ---------------------
def _numba():
    return pytest.importorskip("numba", reason="numba not installed (the jit extra): the JIT cells are not built")


def test_jit_lstm_cell_equals_numpy_twin():
    _numba()
    from convnet_cli.layers import recurrent_jit

    assert recurrent_jit.available()
    rng = np.random.default_rng(3)
    n, o = 5, 7
    pre = (rng.standard_normal((n, 4 * o)) * 3).astype(np.float32)
    rec = rng.standard_normal((n, 4 * o)).astype(np.float32)
    c_prev = rng.standard_normal((n, o)).astype(np.float32)
    h, c, act = lstm_cell_forward_numpy(pre + rec, c_prev)
    jp, jh, jc = pre.copy(), np.empty_like(c_prev), np.empty_like(c_prev)
    recurrent_jit.lstm_forward(jp, rec, c_prev, jh, jc)
    for got, want in ((jp, act), (jh, h), (jc, c)):
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
    jp0 = pre.copy()  # the first step: no recurrent term
    recurrent_jit.lstm_forward(jp0, None, c_prev, jh, jc)
    np.testing.assert_allclose(jh, lstm_cell_forward_numpy(pre, c_prev)[0], rtol=0, atol=2e-6)
    dh, dc = rng.standard_normal((n, o)).astype(np.float32), rng.standard_normal((n, o)).astype(np.float32)
    dpre, dc_prev = lstm_cell_backward_numpy(act, c, c_prev, dh, dc.copy())
    jd, jdc = np.empty_like(act), dc.copy()
    recurrent_jit.lstm_backward(act, c, c_prev, dh, jdc, jd)
    np.testing.assert_allclose(jd, dpre, rtol=0, atol=2e-6)
    np.testing.assert_allclose(jdc, dc_prev, rtol=0, atol=2e-6)


def test_jit_gru_cell_equals_numpy_twin():
    _numba()
    from convnet_cli.layers import recurrent_jit

    rng = np.random.default_rng(4)
    n, o = 5, 7
    xg, hg = (rng.standard_normal((n, 3 * o)) * 2).astype(np.float32), rng.standard_normal((n, 3 * o)).astype(np.float32)
    bhh = rng.standard_normal(3 * o).astype(np.float32)
    h_prev = rng.standard_normal((n, o)).astype(np.float32)
    h, act, hn = gru_cell_forward_numpy(xg, hg + bhh, h_prev)
    jx, jh, jhn = xg.copy(), np.empty_like(h_prev), np.empty_like(h_prev)
    recurrent_jit.gru_forward(jx, hg, bhh, h_prev, jh, jhn)
    for got, want in ((jx, act), (jh, h), (jhn, hn)):
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
    jx0 = xg.copy()  # the first step: hg is the bias alone
    recurrent_jit.gru_forward(jx0, None, bhh, h_prev, jh, jhn)
    np.testing.assert_allclose(jh, gru_cell_forward_numpy(xg, np.broadcast_to(bhh, hg.shape), h_prev)[0],
                               rtol=0, atol=2e-6)
    dh = rng.standard_normal((n, o)).astype(np.float32)
    want = gru_cell_backward_numpy(act, hn, h_prev, dh)
    got = (np.empty_like(act), np.empty_like(act), np.empty_like(h_prev))
    recurrent_jit.gru_backward(act, hn, h_prev, dh, *got)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=0, atol=2e-6)


def test_jit_tanh_is_within_its_stated_error():
    """The kernels' rational tanh (recurrent_jit.py: within 3.2e-7 of the exact one) over its whole range,
    through the LSTM's g gate (pre-activation x -> tanh(x)) and beyond its clamp."""
    _numba()
    from convnet_cli.layers import recurrent_jit

    x = np.linspace(-12, 12, 4001, dtype=np.float32)
    o = x.size
    pre = np.zeros((1, 4 * o), dtype=np.float32)
    pre[0, 2 * o:3 * o] = x
    recurrent_jit.lstm_forward(pre, None, np.zeros((1, o), np.float32), np.empty((1, o), np.float32),
                               np.empty((1, o), np.float32))
    err = np.abs(pre[0, 2 * o:3 * o].astype(np.float64) - np.tanh(x.astype(np.float64)))
    assert err.max() <= 3.5e-7
    assert np.all(np.abs(pre[0, 2 * o:3 * o]) <= 1)


@pytest.mark.parametrize("type_name", ["lstm", "gru"])
def test_jit_layer_path_equals_numpy_path(type_name):
    """The whole layer on the JIT cells (case chunks on the pool's threads) against the NumPy cells: outputs
    and every gradient within float32 rounding of each other."""
    _numba()
    from convnet_cli.layers import recurrent_jit

    layer = recurrent(type_name, (3, 2, 11), outputs=9, bidirectional=1)
    params = {k: v.astype(np.float32) for k, v in layer.init_params(np.random.default_rng(0)).items()}
    params["bias_hh"] = np.random.default_rng(5).uniform(-0.5, 0.5, params["bias_hh"].shape).astype(np.float32)
    x = nhwc((3, 2, 11), n=37, seed=6, dtype=np.float32)
    c, h, w = layer.out_shape
    dout = np.random.default_rng(7).standard_normal((37, h, w, c)).astype(np.float32)
    results = {}
    for path in ("numpy", "jit"):
        ctx = Context(xp=np, train=True, algos={recurrent_jit.CELL_KEY: path})
        out, cache = layer.forward([x], params, ctx)
        dxs, grads = layer.backward(dout, cache, params, ctx)
        results[path] = [out, dxs[0]] + [grads[k] for k in sorted(grads)]
        assert ctx.algos == {recurrent_jit.CELL_KEY: path}
    for a, b in zip(results["numpy"], results["jit"]):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


def test_jit_path_is_recorded_and_can_be_turned_off(monkeypatch):
    """A run records the cell path in its algos (kept in checkpoints, so a resume takes the same one);
    CONVNET_JIT=0 takes the NumPy cells; float64 (the gradient checks) always does."""
    _numba()
    from convnet_cli.layers import recurrent_jit

    layer = recurrent("lstm", SHAPE, outputs=4)
    params = {k: v.astype(np.float32) for k, v in layer.init_params(np.random.default_rng(0)).items()}
    x = nhwc(SHAPE, n=3, dtype=np.float32)
    monkeypatch.delenv("CONVNET_JIT", raising=False)
    record = {}
    _, cache = layer.forward([x], params, Context(xp=np, train=True, algos=record))
    assert record == {recurrent_jit.CELL_KEY: "jit"} and cache[1][0][-1] is True
    _, cache = layer.forward([x.astype(np.float64)], params, Context(xp=np, train=True, algos={}))
    assert cache[1][0][-1] is False
    monkeypatch.setenv("CONVNET_JIT", "0")
    record = {}
    _, cache = layer.forward([x], params, Context(xp=np, train=True, algos=record))
    assert record == {recurrent_jit.CELL_KEY: "numpy"} and cache[1][0][-1] is False
    monkeypatch.delenv("CONVNET_JIT")
    _, cache = layer.forward([x], params, Context(xp=np, train=True, algos={recurrent_jit.CELL_KEY: "numpy"}))
    assert cache[1][0][-1] is False  # a resumed run keeps the NumPy path it started on


def test_a_run_recorded_on_the_jit_path_resumes_on_numpy_with_one_warning(monkeypatch, capsys):
    """Without numba a checkpoint that says 'jit' cannot be followed: the NumPy cells run, and one warning
    says the numbers differ by float32 rounding and how to install the extra."""
    from convnet_cli.layers import recurrent_jit

    monkeypatch.setattr(recurrent_jit, "available", lambda: False)
    monkeypatch.setattr(recurrent_jit, "unavailable_reason", lambda: "numba does not import (test)")
    monkeypatch.setattr(recurrent_jit, "_WARNED", [False])
    monkeypatch.delenv("CONVNET_JIT", raising=False)
    record = {recurrent_jit.CELL_KEY: "jit"}
    assert recurrent_jit.choose(record) == "numpy"
    assert recurrent_jit.choose(record) == "numpy"
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "numba does not import (test)" in err and "convnet[jit]" in err
    assert record == {recurrent_jit.CELL_KEY: "jit"}  # the record is the run's: left as it was
    assert recurrent_jit.choose({}) == "numpy"
