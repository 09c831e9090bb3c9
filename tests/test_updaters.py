"""Updaters against torch.optim, clipping against torch.nn.utils, every schedule of docs/CONFIG.md
('Layer params') by hand, and how the params file (DEFAULT, per-layer settings, per-input lists) reaches the updates."""
from __future__ import annotations

import math

import numpy as np
import pytest

from convnet_cli.config.layer_params import LearnSpec, parse_layer_params
from convnet_cli.config.loader import parse_layer_params_text
from convnet_cli.config.schedules import Schedule, parse_schedule
from convnet_cli.net import Net
from convnet_cli.updaters import UPDATERS, clip_gradients, update_layer


def spec_for(updater, lr, mom=0.0, wc=0.0, **kw):
    return LearnSpec(epsW=[parse_schedule(lr)], epsB=parse_schedule(lr), momW=[mom], momB=mom, wc=[wc],
                     updater=updater, **kw)


def gradients(steps, shapes, seed=0):
    rng = np.random.default_rng(seed)
    return [{k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()} for _ in range(steps)]


SHAPES = {"weights": (5, 7), "biases": (5,)}


def run_ours(spec, steps, seed=0):
    rng = np.random.default_rng(100 + seed)
    params = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    start = {k: v.copy() for k, v in params.items()}
    states = {}
    for g in gradients(steps, SHAPES, seed):
        update_layer(params, g, states, spec, progress=0.0, epoch=0.0)
    return start, params, states


def run_torch(torch, make_opt, start, steps, seed=0):
    """make_opt(param_groups) -> optimizer. Weight decay applies to weights only, as ours does."""
    tw = {k: torch.tensor(v.copy()) for k, v in start.items()}
    opt = make_opt(tw)
    for g in gradients(steps, SHAPES, seed):
        for k, t in tw.items():
            t.grad = torch.tensor(g[k])
        opt.step()
    return {k: t.detach().numpy() for k, t in tw.items()}


def groups(tw, wc):
    return [{"params": [tw["weights"]], "weight_decay": wc}, {"params": [tw["biases"]], "weight_decay": 0.0}]


# updater -> (our spec kwargs, torch optimizer factory)
def _cases(torch):
    O = torch.optim
    return {
        "sgd": (dict(updater="sgd", lr=0.05, mom=0.9, wc=0.01),
                lambda tw: O.SGD(groups(tw, 0.01), lr=0.05, momentum=0.9)),
        "sgd-nomom": (dict(updater="sgd", lr=0.1, mom=0.0, wc=0.0),
                      lambda tw: O.SGD(groups(tw, 0.0), lr=0.1)),
        "adam": (dict(updater="adam", lr=0.01, mom=0.9, wc=0.001),
                 lambda tw: O.Adam(groups(tw, 0.001), lr=0.01, betas=(0.9, 0.999), eps=1e-8)),
        "adam-betas": (dict(updater="adam", lr=0.003, mom=0.8, beta2=0.99, epsilon=1e-6),
                       lambda tw: O.Adam(groups(tw, 0.0), lr=0.003, betas=(0.8, 0.99), eps=1e-6)),
        "rmsprop": (dict(updater="rmsprop", lr=0.01, wc=0.001),
                    lambda tw: O.RMSprop(groups(tw, 0.001), lr=0.01)),  # alpha 0.99, eps 1e-8 both sides
        "rmsprop-mom": (dict(updater="rmsprop", lr=0.01, mom=0.9, rho=0.9),
                        lambda tw: O.RMSprop(groups(tw, 0.0), lr=0.01, alpha=0.9, momentum=0.9)),
        "adagrad": (dict(updater="adagrad", lr=0.1, wc=0.001),
                    lambda tw: O.Adagrad(groups(tw, 0.001), lr=0.1)),
        "adadelta": (dict(updater="adadelta", lr=1.0, wc=0.001),
                     lambda tw: O.Adadelta(groups(tw, 0.001), lr=1.0)),
        "adadelta-rho": (dict(updater="adadelta", lr=1.0, rho=0.95, epsilon=1e-5),
                         lambda tw: O.Adadelta(groups(tw, 0.0), lr=1.0, rho=0.95, eps=1e-5)),
    }


CASES = ["sgd", "sgd-nomom", "adam", "adam-betas", "rmsprop", "rmsprop-mom", "adagrad", "adadelta", "adadelta-rho"]


@pytest.mark.parametrize("steps", [1, 6])
@pytest.mark.parametrize("case", CASES)
def test_updater_matches_torch_optim(case, steps):
    torch = pytest.importorskip("torch", reason="PyTorch not installed: parity tests need it")
    kw, make_opt = _cases(torch)[case]
    kw = dict(kw)
    spec = spec_for(kw.pop("updater"), kw.pop("lr"), kw.pop("mom", 0.0), kw.pop("wc", 0.0), **kw)
    start, ours, _ = run_ours(spec, steps)
    want = run_torch(torch, make_opt, start, steps)
    for k in SHAPES:
        assert ours[k].dtype == np.float32
        assert not np.array_equal(ours[k], start[k])
        np.testing.assert_allclose(ours[k], want[k], rtol=2e-6, atol=2e-7, err_msg=f"{case} {k}")


def test_every_updater_is_covered():
    assert {c.split("-")[0] for c in CASES} == set(UPDATERS)


def test_sgd_is_cuda_convnets_rule_written_out():
    # inc = mom*inc - lr*(g + wc*w); w += inc, with the bias free of weight decay
    spec = spec_for("sgd", 0.1, mom=0.5, wc=0.2)
    w = np.array([1.0, -2.0], np.float32)
    b = np.array([0.5], np.float32)
    states = {}
    params = {"weights": w, "biases": b}
    update_layer(params, {"weights": np.array([0.3, 0.1], np.float32), "biases": np.array([1.0], np.float32)},
                 states, spec, 0.0, 0.0)
    inc1 = -0.1 * (np.array([0.3, 0.1]) + 0.2 * np.array([1.0, -2.0]))
    np.testing.assert_allclose(params["weights"], [1.0 + inc1[0], -2.0 + inc1[1]], rtol=1e-6)
    np.testing.assert_allclose(params["biases"], [0.5 - 0.1], rtol=1e-6)
    w1 = params["weights"].copy()
    update_layer(params, {"weights": np.zeros(2, np.float32), "biases": np.zeros(1, np.float32)},
                 states, spec, 0.0, 0.0)
    inc2 = 0.5 * inc1 - 0.1 * 0.2 * w1
    np.testing.assert_allclose(params["weights"], w1 + inc2, rtol=1e-6)
    np.testing.assert_allclose(states["weights"]["inc"], inc2, rtol=1e-6)


def test_updater_state_names_and_step_counter():
    _, _, states = run_ours(spec_for("adam", 0.01, mom=0.9), 3)
    assert set(states["weights"]) == {"m", "v", "step"}
    assert int(states["weights"]["step"][0]) == 3
    _, _, states = run_ours(spec_for("rmsprop", 0.01, mom=0.9), 2)
    assert set(states["weights"]) == {"square_avg", "momentum"}


def test_learning_rate_follows_the_schedule():
    spec = LearnSpec(epsW=[parse_schedule("linear[base=0.1;tgtFactor=10]")], epsB=parse_schedule(0.5),
                     momW=[0.0], momB=0.0, wc=[0.0], updater="sgd")
    params = {"weights": np.zeros(3, np.float32), "biases": np.zeros(1, np.float32)}
    rates = update_layer(params, {"weights": np.ones(3, np.float32), "biases": np.ones(1, np.float32)}, {},
                         spec, progress=0.5, epoch=0.0)
    assert rates["weights"] == pytest.approx(0.055)
    assert rates["biases"] == 0.5
    np.testing.assert_allclose(params["weights"], -0.055, rtol=1e-6)
    np.testing.assert_allclose(params["biases"], -0.5, rtol=1e-6)


# -- clipping ----------------------------------------------------------------------------------------------
def test_clip_matches_torch_clip_grad_value():
    torch = pytest.importorskip("torch", reason="PyTorch not installed: parity tests need it")
    g = {k: 3 * v for k, v in gradients(1, SHAPES)[0].items()}
    ours = clip_gradients(g, 1.5, None)
    ts = {k: torch.zeros(v.shape, requires_grad=True) for k, v in g.items()}
    for k, t in ts.items():
        t.grad = torch.tensor(g[k])
    torch.nn.utils.clip_grad_value_(list(ts.values()), 1.5)
    for k in g:
        np.testing.assert_array_equal(ours[k], ts[k].grad.numpy())
    assert max(float(np.abs(v).max()) for v in ours.values()) == pytest.approx(1.5)


@pytest.mark.parametrize("max_norm", [0.5, 2.0, 1e3])
def test_clip_norm_matches_torch_clip_grad_norm(max_norm):
    torch = pytest.importorskip("torch", reason="PyTorch not installed: parity tests need it")
    g = gradients(1, SHAPES, seed=2)[0]
    ours = clip_gradients(g, None, max_norm)
    ts = {k: torch.zeros(v.shape, requires_grad=True) for k, v in g.items()}
    for k, t in ts.items():
        t.grad = torch.tensor(g[k])
    torch.nn.utils.clip_grad_norm_(list(ts.values()), max_norm)
    for k in g:
        np.testing.assert_allclose(ours[k], ts[k].grad.numpy(), rtol=1e-5, atol=1e-7)
    total = math.sqrt(sum(float((v.astype(np.float64) ** 2).sum()) for v in ours.values()))
    assert total <= max_norm * (1 + 1e-5)


def test_clip_then_clip_norm_in_an_update():
    torch = pytest.importorskip("torch", reason="PyTorch not installed: parity tests need it")
    spec = spec_for("sgd", 0.1, clip=0.5, clipNorm=1.0)
    start, ours, _ = run_ours(spec, 1)

    def opt(tw):
        class Clipped(torch.optim.SGD):
            def step(self):
                ps = list(tw.values())
                torch.nn.utils.clip_grad_value_(ps, 0.5)
                torch.nn.utils.clip_grad_norm_(ps, 1.0)
                super().step()
        return Clipped(list(tw.values()), lr=0.1)

    want = run_torch(torch, opt, start, 1)
    for k in SHAPES:
        np.testing.assert_allclose(ours[k], want[k], rtol=1e-5, atol=1e-7)


# -- schedules (docs/CONFIG.md, 'Layer params') ------------------------------------------------------------------------
SCHEDULES = [
    # (text, [(progress, epoch, expected)])
    ("0.01", [(0.0, 0, 0.01), (0.5, 3, 0.01), (1.0, 9, 0.01)]),
    ("const[base=0.02]", [(0.0, 0, 0.02), (0.7, 5, 0.02), (1.0, 9, 0.02)]),
    ("linear[base=0.1;tgtFactor=10]", [(0.0, 0, 0.1), (0.5, 0, 0.1 * 0.5 + 0.01 * 0.5), (0.25, 0, 0.0775),
                                       (1.0, 0, 0.01)]),
    ("exp[base=0.1;tgtFactor=100]", [(0.0, 0, 0.1), (0.5, 0, 0.01), (0.25, 0, 0.1 * 100 ** -0.25),
                                     (1.0, 0, 0.001)]),
    # 4 steps from 0.1 down to 0.1/1000: 0.1, 0.01, 0.001, 0.0001, each for a quarter of training
    ("dexp[base=0.1;tgtFactor=1000;numSteps=4]", [(0.0, 0, 0.1), (0.2, 0, 0.1), (0.3, 0, 0.01), (0.6, 0, 0.001),
                                                  (0.8, 0, 0.0001), (1.0, 0, 0.0001)]),
    ("dexp[base=1;tgtFactor=4;numSteps=3]", [(0.1, 0, 1.0), (0.5, 0, 0.5), (0.9, 0, 0.25)]),
    ("step[base=0.1;factor=0.1;epochs=10,20]", [(0.0, 0, 0.1), (0.3, 9.5, 0.1), (0.4, 10, 0.01), (0.6, 15, 0.01),
                                                (0.8, 20, 0.001), (1.0, 30, 0.001)]),
    ("step[base=0.5;factor=0.5;epochs=2]", [(0.0, 1.99, 0.5), (0.0, 2.0, 0.25)]),
    # spaces and progress outside [0, 1] (a resumed run that trains longer) are tolerated
    (" exp[ base=0.1 ; tgtFactor=10 ] ", [(0.0, 0, 0.1), (1.0, 0, 0.01), (1.5, 0, 0.01), (-0.1, 0, 0.1)]),
]


@pytest.mark.parametrize("text,points", SCHEDULES, ids=[s[0].strip() for s in SCHEDULES])
def test_schedule_values(text, points):
    s = parse_schedule(text)
    for progress, epoch, want in points:
        assert s(progress, epoch) == pytest.approx(want, rel=1e-12), (text, progress, epoch)


def test_schedule_from_a_number_and_its_text():
    s = parse_schedule(0.001)
    assert isinstance(s, Schedule) and s.kind == "const" and s(0.3) == 0.001
    assert str(parse_schedule("exp[base=0.1;tgtFactor=10]")) == "exp[base=0.1;tgtFactor=10]"
    assert parse_schedule("step[base=0.1;factor=0.5;epochs=3,6]").epochs == (3.0, 6.0)


@pytest.mark.parametrize("bad", ["exp[base=0.1]", "foo[base=1]", "exp[base=0.1;tgt=3]", "exp[base=x;tgtFactor=2]",
                                 "dexp[base=1;tgtFactor=2;numSteps=0]", "linear[base=1;tgtFactor=0]", "fast", True])
def test_schedule_errors(bad):
    with pytest.raises(ValueError) as e:
        parse_schedule(bad)
    assert "\n" not in str(e.value)


# -- the params file -------------------------------------------------------------------------------------
LAYERS = """
data: {type: data, dataIdx: 0}
labels: {type: data, dataIdx: 1}
fc1: {type: fc, inputs: data, outputs: 4}
fc2: {type: fc, inputs: [fc1, data], outputs: 3}
probs: {type: softmax, inputs: fc2}
logprob: {type: cost.logreg, inputs: [labels, probs]}
"""
NAMES = ["data", "labels", "fc1", "fc2", "probs", "logprob"]


def test_default_applies_to_every_layer_that_does_not_set_the_key():
    text = """
DEFAULT: {epsW: 0.05, epsB: 0.1, momW: 0.5, momB: 0.6, wc: 0.001, updater: adam}
fc1: {epsW: 'exp[base=0.2;tgtFactor=10]', wc: 0}
logprob: {coeff: 2}
"""
    specs = parse_layer_params_text(text, "params.yaml", NAMES, {"fc1": 1, "fc2": 2})
    fc1, fc2 = specs["fc1"], specs["fc2"]
    assert fc1.epsW[0].kind == "exp" and fc1.epsW[0](1.0) == pytest.approx(0.02)  # overridden
    assert fc1.wc == [0.0]  # overridden
    assert fc1.momW == [0.5] and fc1.epsB(0.3) == 0.1 and fc1.momB == 0.6 and fc1.updater == "adam"  # DEFAULT
    assert fc2.epsW[0](0.0) == 0.05 and fc2.wc == [0.001] and fc2.updater == "adam"
    assert specs["logprob"].hyper["coeff"] == 2.0 and "coeff" not in specs["probs"].hyper
    # a setting nobody gives takes the layer class's default when the net installs the params
    from convnet_cli.layers.registry import layer_class

    assert layer_class("cost.logreg").hyper_defaults["coeff"] == 1.0
    assert layer_class("dropout").hyper_defaults["keep"] == 0.5


def test_defaults_without_a_params_file():
    specs = parse_layer_params(None, NAMES)
    s = specs["fc1"]
    assert s.updater == "sgd" and s.epsW[0](0.5) == 0.01 and s.epsB(0.5) == 0.01
    assert s.momW == [0.9] and s.momB == 0.9 and s.wc == [0.0] and s.clip is None and s.clipNorm is None
    adam = parse_layer_params({"DEFAULT": {"updater": "adam"}}, NAMES)["fc2"]
    assert adam.epsW[0](0) == 0.001 and adam.momW == [0.9] and adam.beta2 == 0.999


def test_for_param_routes_weights_biases_and_per_input_lists():
    specs = parse_layer_params_text("fc2: {epsW: [0.1, 0.2], momW: [0.3, 0.4], wc: [0.01, 0.02], epsB: 0.5}",
                                    "params.yaml", NAMES, {"fc1": 1, "fc2": 2})
    s = specs["fc2"]
    lr, mom, wc = s.for_param("weights.0")
    assert (lr(0), mom, wc) == (0.1, 0.3, 0.01)
    lr, mom, wc = s.for_param("weights.1")
    assert (lr(0), mom, wc) == (0.2, 0.4, 0.02)
    lr, mom, wc = s.for_param("biases")
    assert (lr(0), mom, wc) == (0.5, 0.9, 0.0)
    lr, mom, wc = s.for_param("gamma")  # batchnorm's scale learns like a weight, without decay
    assert (lr(0), mom, wc) == (0.1, 0.3, 0.0)


def test_legacy_comma_list_of_learning_rates():
    specs = parse_layer_params_text("fc2: {epsW: '0.1,0.2', wc: '0.01,0'}", "params.yaml", NAMES, {"fc2": 2})
    assert [e(0) for e in specs["fc2"].epsW] == [0.1, 0.2] and specs["fc2"].wc == [0.01, 0.0]


def test_per_input_learning_rates_on_a_two_input_fc_in_a_net():
    params = """
DEFAULT: {momW: 0, momB: 0, wc: 0}
fc2: {epsW: [0.1, 0.3], epsB: 0.7}
"""
    net = Net.from_text(LAYERS, params, (2, 3, 1), seed=1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 1, 2)).astype(np.float32)
    y = np.array([0, 1, 2, 1])
    before = {k: v.copy() for k, v in net.params["fc2"].items()}
    net.forward({0: x, 1: y}, train=True)
    grads = net.backward()
    assert set(grads["fc2"]) == {"weights.0", "weights.1", "biases"}
    rates = net.update(grads, progress=0.0, epoch=0.0)
    assert rates["fc2"] == 0.1 and rates["fc1"] == 0.01
    for k, lr in (("weights.0", 0.1), ("weights.1", 0.3), ("biases", 0.7)):
        np.testing.assert_allclose(net.params["fc2"][k], before[k] - lr * grads["fc2"][k], rtol=1e-5, atol=1e-8)


def test_a_new_updater_is_one_registered_class():
    # the params parser takes updater names, defaults and settings from the registry in updaters.py
    from convnet_cli import updaters as U

    @U.register_updater
    class Halve(U.UpdateRule):
        name = "halve"
        lr = 0.5
        mom = 0.0
        hyperparams = {"epsilon": 0.25}

        def update_cpu(self, w, g, state, lr, mom, wc, spec):
            w -= lr * (g + self.hyper(spec, "epsilon"))

    try:
        specs = parse_layer_params({"fc1": {"updater": "halve"}}, NAMES)
        s = specs["fc1"]
        assert s.updater == "halve" and s.epsW[0](0) == 0.5 and s.epsilon == 0.25
        params = {"weights": np.ones(2, np.float32)}
        update_layer(params, {"weights": np.ones(2, np.float32)}, {}, s, 0.0, 0.0)
        np.testing.assert_allclose(params["weights"], [1 - 0.5 * 1.25] * 2)
    finally:
        del U.UPDATERS["halve"]
    with pytest.raises(Exception, match="must be one of sgd, adam, rmsprop, adagrad, adadelta"):
        parse_layer_params({"fc1": {"updater": "halve"}}, NAMES)
