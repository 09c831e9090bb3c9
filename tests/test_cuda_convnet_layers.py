"""The layer types of cuda-convnet's and cuda-convnet2's example configs that convnet added for them:
`cnorm` (contrast normalization), `pass`, `conv`/`local` with several inputs, `topk` in a params file's cost
section; and the fixtures written in those configs' style (tests/fixtures/layers-example-cnorm.cfg,
layers-2gpu-model.cfg, layers-randsparse.cfg) converting and training."""
from __future__ import annotations

import os

import numpy as np
import pytest

from convnet_cli.errors import ConfigError
from convnet_cli.layers.base import Context
from tests.helpers import gradcheck, invoke, make_layer, nhwc

FIX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
HYPER = {"scale": 0.5, "pow": 0.75, "minDiv": 2.0}


def ctx(train=True):
    return Context(xp=np, train=train)


# -- cnorm -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size, shape", [(3, (2, 5, 6)), (4, (3, 6, 5)), (1, (1, 3, 4)), (5, (2, 4, 7))])
def test_cnorm_gradients(size, shape):
    layer = make_layer("cnorm", [shape], size=size, hyper=HYPER)
    gradcheck(layer, [nhwc(shape, n=2, seed=size)])


def _torch_cnorm(x, size, k, scale, power):
    import torch
    import torch.nn.functional as F

    before, after = size // 2, size - 1 - size // 2

    def window_mean(a):  # zero padded, divided by size^2 always (cuda-convnet's AvgPooler(size*size))
        return F.avg_pool2d(F.pad(a, (before, after, before, after)), size, stride=1, count_include_pad=True)

    d = x - window_mean(x)
    denom = k + scale * window_mean(d * d)
    return x * denom ** (-power)


def test_cnorm_matches_torch_composition():
    torch = pytest.importorskip("torch", reason="PyTorch not installed: parity tests need it")
    size, shape = 3, (4, 7, 9)
    layer = make_layer("cnorm", [shape], size=size, hyper=HYPER)
    x = 3 * nhwc(shape, n=3, seed=1)
    out, cache = layer.forward([x], {}, ctx())
    dout = nhwc(shape, n=3, seed=2)
    (dx,), _ = layer.backward(dout, cache, {}, ctx())
    tx = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    ref = _torch_cnorm(tx, size, HYPER["minDiv"], HYPER["scale"], HYPER["pow"])
    ref.backward(torch.tensor(dout.transpose(0, 3, 1, 2)))
    np.testing.assert_allclose(out, ref.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, tx.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-9, atol=1e-12)


def test_cnorm_by_hand_on_a_constant_patch():
    # a constant map: d = x - mean is 0 in the interior, so there out = x * minDiv^-pow
    layer = make_layer("cnorm", [(1, 5, 5)], size=3, hyper=HYPER)
    x = np.full((1, 5, 5, 1), 2.0)
    out, _ = layer.forward([x], {}, ctx())
    assert out[0, 2, 2, 0] == pytest.approx(2.0 * 2.0 ** -0.75)
    assert out[0, 0, 0, 0] < out[0, 2, 2, 0]  # at the border the zero padding makes a difference


def test_cnorm_errors():
    with pytest.raises(ConfigError, match="layer 'L': size 9 is larger than its input"):
        make_layer("cnorm", [(2, 4, 5)], size=9)
    with pytest.raises(ConfigError, match="minDiv"):
        make_layer("cnorm", [(2, 4, 5)], size=3, hyper={"minDiv": 0})


# -- pass --------------------------------------------------------------------------------------------------
def test_pass_is_identity_and_joins_several_inputs():
    one = make_layer("pass", [(3, 4, 5)])
    x = nhwc((3, 4, 5))
    out, cache = one.forward([x], {}, ctx())
    assert out is x and one.out_shape == (3, 4, 5)
    (dx,), _ = one.backward(x * 2, cache, {}, ctx())
    assert np.array_equal(dx, x * 2)
    two = make_layer("pass", [(3, 4, 5), (2, 4, 5)])
    assert two.out_shape == (5, 4, 5)
    gradcheck(two, [nhwc((3, 4, 5)), nhwc((2, 4, 5), seed=1)])
    with pytest.raises(ConfigError, match="pass joins several inputs along channels, so every input needs the same HxW"):
        make_layer("pass", [(3, 4, 5), (2, 4, 6)])


# -- conv / local with several inputs ----------------------------------------------------------------------
@pytest.mark.parametrize("kind, keys", [("conv", dict(filters=4, filterSize=3, padding=1)),
                                        ("conv", dict(filters=4, filterSize=[3, 2], stride=2, sharedBiases=0)),
                                        ("local", dict(filters=3, filterSize=3)),
                                        ("local", dict(filters=2, filterSize=2, stride=2, sharedBiases=1))])
def test_multi_input_gradients(kind, keys):
    shapes = [(2, 6, 7), (3, 6, 7)]
    layer = make_layer(kind, shapes, **keys)
    assert layer.learned == ("weights.0", "weights.1", "biases")
    gradcheck(layer, [nhwc(shapes[0]), nhwc(shapes[1], seed=1)])


def test_multi_input_conv_is_the_sum_of_one_conv_per_input_as_torch():
    torch = pytest.importorskip("torch", reason="PyTorch not installed: parity tests need it")
    F = torch.nn.functional
    shapes = [(2, 6, 7), (3, 6, 7)]
    layer = make_layer("conv", shapes, filters=4, filterSize=3, padding=1, init="pytorch")
    p = {k: v.astype(np.float64) for k, v in layer.init_params(np.random.default_rng(0)).items()}
    xs = [nhwc(shapes[0], n=3), nhwc(shapes[1], n=3, seed=1)]
    out, cache = layer.forward(xs, p, ctx())
    dout = nhwc((4, 6, 7), n=3, seed=2)
    dxs, grads = layer.backward(dout, cache, p, ctx())
    tx = [torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True) for x in xs]
    tw = [torch.tensor(p[f"weights.{i}"], requires_grad=True) for i in range(2)]
    tb = torch.tensor(p["biases"], requires_grad=True)
    ref = F.conv2d(tx[0], tw[0], tb, padding=1) + F.conv2d(tx[1], tw[1], None, padding=1)
    ref.backward(torch.tensor(dout.transpose(0, 3, 1, 2)))
    np.testing.assert_allclose(out, ref.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-10, atol=1e-12)
    for i in range(2):
        np.testing.assert_allclose(dxs[i], tx[i].grad.numpy().transpose(0, 2, 3, 1), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(grads[f"weights.{i}"], tw[i].grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grads["biases"], tb.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_single_input_conv_is_unchanged():
    layer = make_layer("conv", [(2, 5, 6)], filters=3, filterSize=3)
    assert layer.learned == ("weights", "biases") and "weights" in layer.init_params(np.random.default_rng(0))


def test_multi_input_outputs_must_agree():
    with pytest.raises(ConfigError, match="inputs give outputs of different shapes"):
        make_layer("conv", [(2, 6, 7), (2, 5, 7)], filters=3, filterSize=3)


# -- topk in the params file -------------------------------------------------------------------------------
def test_topk_from_params_overrides_the_layer_definition():
    from convnet_cli.config.layer_params import KEYS

    assert "topk" in KEYS
    layer = make_layer("cost.logreg", [(1, 1, 1), (4, 1, 1)], hyper={"topk": 3})
    assert layer.topk == 3
    p = np.array([[0.1, 0.2, 0.3, 0.4]] * 2).reshape(2, 1, 1, 4)
    (_, m), _ = layer.forward([np.array([1, 0]), p], {}, ctx())
    assert m["topk_error"] == 0.5  # class 1 ranks 3rd (a hit), class 0 4th (a miss)
    assert make_layer("cost.logreg", [(1, 1, 1), (4, 1, 1)], topk=2).topk == 2
    with pytest.raises(ConfigError, match="topk 1.5"):
        make_layer("cost.logreg", [(1, 1, 1), (4, 1, 1)], hyper={"topk": 1.5})


# -- the fixtures: convert-cfg, then train straight from the .cfg files ------------------------------------
from tests.test_cli_train import only_run, workspace  # noqa: E402,F401 (fixture)


@pytest.mark.parametrize("name", ["example-cnorm", "2gpu-model"])
def test_fixture_converts_and_trains(workspace, tmp_path, name):  # noqa: F811
    layers, params = os.path.join(FIX, f"layers-{name}.cfg"), os.path.join(FIX, f"layer-params-{name}.cfg")
    r = invoke(["convert-cfg", layers, params, str(tmp_path / "yaml")])
    assert r.exit_code == 0, r.output
    r = invoke(["train", "--data-path", str(workspace / "batches"), "--save-path", str(tmp_path / "runs"),
                "--layer-def", layers, "--layer-params", params, "--epochs", "1", "--mini", "4", "--quiet"])
    assert r.exit_code == 0, r.output
    run = only_run(tmp_path / "runs")
    with np.load(os.path.join(run, "best.npz"), allow_pickle=False) as z:
        names = set(z.files)
    if name == "2gpu-model":
        assert {"conv2a/weights.0", "conv2a/weights.1", "conv2b/weights.0", "conv2b/weights.1"} <= names
        import json

        records = [json.loads(line) for line in open(os.path.join(run, "train_log.jsonl"))]
        records = [r for r in records if "costs" in r]   # the log also records which params file took effect
        assert records and all(r["costs"]["logprob"]["topk_error"] == 0.0 for r in records)  # top-2 of 2 classes
    # the YAML the converter wrote trains too
    yaml_dir = tmp_path / "yaml"
    r = invoke(["train", "--data-path", str(workspace / "batches"), "--save-path", str(tmp_path / "runs2"),
                "--layer-def", str(yaml_dir / f"layers-{name}.yaml"), "--layer-params",
                str(yaml_dir / f"layers-{name}-params.yaml"), "--epochs", "1", "--mini", "4", "--quiet"])
    assert r.exit_code == 0, r.output


def test_random_sparse_fixture_is_refused_in_one_line(tmp_path):
    r = invoke(["convert-cfg", os.path.join(FIX, "layers-randsparse.cfg"),
                os.path.join(FIX, "layer-params-example-cnorm.cfg"), str(tmp_path / "out")])
    assert r.exit_code == 2
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "layers-randsparse.cfg: line 20: section [conv1]: randSparse=1" in lines[0]
    assert "not supported" in lines[0] and "randSparse=0" in lines[0]
