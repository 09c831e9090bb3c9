"""`convnet export`: the ONNX model gives `convnet predict`'s probabilities within 1e-4 under ONNX Runtime,
for every starter config and a net of every layer type; onnx.checker passes; the errors are one line.

Each case: a net built from its YAML with random weights (scaled so the probabilities are far from uniform,
so that a wrong layout or gate order shows), saved as the trainer saves a checkpoint; random cases in a
batch folder; `convnet predict --data-path` on them, `convnet export`, then ONNX Runtime on the same cases.
"""
from __future__ import annotations

import csv
import json
import os
import sys

import numpy as np
import pytest
import yaml

from convnet_cli import __version__
from convnet_cli.fileio import write_pickle_atomic
from convnet_cli.net import Net
from convnet_cli.train.checkpoint import save_checkpoint
from tests.helpers import invoke

try:
    import onnx
except ImportError:
    onnx = None
try:
    import onnxruntime as ort
except ImportError:
    ort = None

# The one test that needs neither: the error a user without the export extra gets.
RUN_WITHOUT_ONNX = {"test_missing_onnx_is_one_line_naming_the_extra"}


@pytest.fixture(autouse=True)
def _needs_onnx(request):
    if request.function.__name__ in RUN_WITHOUT_ONNX:
        return
    if onnx is None:
        pytest.skip("the onnx package is not installed (pip install 'convnet[export]')")
    if ort is None:
        pytest.skip("onnxruntime is not installed (pip install onnxruntime)")

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "convnet_cli", "layer_configs")
TOL = 1e-4


# -- building a checkpoint and a batch folder ----------------------------------------------------------------
def _randomize(net, rng):
    """Weights of a scale that makes activations O(1) (the initial 0.01 gaussians give near-uniform
    probabilities, which would hide a wrong layout); batchnorm statistics away from 0/1."""
    for layer in net.layers:
        for name, a in list(net.params[layer.name].items()):
            if name == "running_var":
                v = rng.uniform(0.5, 2.0, a.shape)
            elif name == "running_mean" or name == "beta" or name.startswith("bias"):
                v = 0.3 * rng.standard_normal(a.shape)
            elif name == "gamma":
                v = 1 + 0.3 * rng.standard_normal(a.shape)
            else:
                fan_in = int(np.prod(a.shape[1:])) if a.ndim == 4 else a.shape[-1]
                # recurrent matrices of spectral radius ~0.9, as trained ones are: a larger one makes a long
                # relu RNN explode, and float32 rounding with it
                gain = 0.9 if name.startswith("weight_hh") else 1.5
                v = gain * rng.standard_normal(a.shape) / np.sqrt(fan_in)
            net.params[layer.name][name] = v.astype(np.float32)


def make_checkpoint(folder, layer_def: str, data_shape, params: str = "", seed: int = 0, features=None,
                    epoch: int = 3, name: str = "3.12.npz"):
    """A checkpoint as the trainer writes it (arrays + the JSON __state__), random weights. Returns
    (path, state)."""
    rng = np.random.default_rng(seed)
    net = Net.from_text(layer_def, params, data_shape, seed=seed)
    _randomize(net, rng)
    out = next(l for l in net.cost_layers if l.type in ("cost.logreg", "cost.bce")).in_names[1]
    k = net.by_name[out].out_shape[0]
    n_vis = int(np.prod(data_shape))
    state = {
        "epoch": epoch + 1, "batch_in_epoch": 0, "batchnum": 12, "minibatch": 0, "batches_done": 24,
        "options": {"data_path": str(folder), "test_range": [1]}, "layer_def": layer_def, "layer_params": params,
        "layer_def_name": "layers.yaml", "layer_params_name": "params.yaml",
        "label_names": [f"class_{i}" for i in range(k)], "data_shape": list(data_shape),
        "data_mean": (0.5 * rng.standard_normal(n_vis)).astype(np.float32).tolist(),
        "data_std": rng.uniform(0.5, 2.0, n_vis).astype(np.float32).tolist(),
        "features": features, "data_path": str(folder),
        "rng": {"seed": seed}, "history": [], "best": None, "seconds": 0.0,
    }
    path = os.path.join(folder, name)
    save_checkpoint(path, net.get_arrays(), state)
    return path, state


def make_batches(folder, state, n: int = 12, seed: int = 1):
    """A batch folder with one batch of n raw cases around the checkpoint's mean; returns (dir, raw)."""
    rng = np.random.default_rng(seed)
    shape = tuple(state["data_shape"])
    mean = np.asarray(state["data_mean"], np.float32).reshape(shape)
    std = np.asarray(state["data_std"], np.float32).reshape(shape)
    raw = (mean + std * rng.standard_normal((n,) + shape)).astype(np.float32)
    bdir = os.path.join(folder, "batches")
    os.makedirs(bdir, exist_ok=True)
    k = len(state["label_names"])
    write_pickle_atomic(os.path.join(bdir, "data_batch_1"), {
        "data": np.ascontiguousarray(raw.reshape(n, -1).T), "labels": [i % k for i in range(n)],
        "filenames": [f"case{i}.wav" for i in range(n)]})
    n_vis = int(np.prod(shape))
    write_pickle_atomic(os.path.join(bdir, "batches.meta"), {
        "label_names": state["label_names"], "num_vis": n_vis, "data_shape": list(shape),
        "num_cases_per_batch": n, "num_batches": 1, "train_range": [1, 1], "test_range": [1, 1],
        "data_mean": np.asarray(state["data_mean"], np.float32).reshape(n_vis, 1),
        "data_std": np.asarray(state["data_std"], np.float32).reshape(n_vis, 1),
        "features": state["features"], "skipped": 0})
    return bdir, raw


def predict_csv(ckpt, bdir, out_csv):
    """`convnet predict` on the batch folder: (n, K) probabilities from its CSV."""
    res = invoke(["predict", "-f", ckpt, "--data-path", bdir, "--test-range", "1", "--out", out_csv, "--quiet"])
    assert res.exit_code == 0, res.output
    with open(out_csv, newline="") as f:
        rows = list(csv.reader(f))
    k = len(rows[0]) - 2 - (rows[0][-1] == "true")
    return np.array([[float(v) for v in r[2:2 + k]] for r in rows[1:]], np.float32)


def export_and_run(ckpt, out, raw):
    res = invoke(["export", "-f", ckpt, "--out", out])
    assert res.exit_code == 0, res.output
    assert os.path.exists(out) and "wrote" in res.output
    model = onnx.load(out)
    onnx.checker.check_model(model, full_check=True)
    sess = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    return model, sess.run(["probs"], {"features": raw})[0]


def check_parity(tmp_path, layer_def, data_shape, params="", seed=0, features=None):
    ckpt, state = make_checkpoint(str(tmp_path), layer_def, data_shape, params, seed, features)
    bdir, raw = make_batches(str(tmp_path), state, seed=seed + 1)
    ours = predict_csv(ckpt, bdir, str(tmp_path / "preds.csv"))
    model, theirs = export_and_run(ckpt, str(tmp_path / "model.onnx"), raw)
    assert theirs.shape == ours.shape == (raw.shape[0], len(state["label_names"]))
    # the comparison means something only when the probabilities vary from case to case
    assert np.ptp(ours, axis=0).max() > 0.01, ours
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=TOL)
    return model, state


# -- every starter config ----------------------------------------------------------------------------------
def _starters():
    names = sorted(f[:-5] for f in os.listdir(CONFIGS)
                   if f.endswith(".yaml") and not f.endswith(("-params.yaml", "-features.yaml")))
    assert len(names) >= 6, names
    return names


def _features_for(name):
    """The features file of a starter (gtzan.yaml -> gtzan-features.yaml; whale-birnn-small -> whale-birnn)."""
    stem = name
    while stem:
        path = os.path.join(CONFIGS, f"{stem}-features.yaml")
        if os.path.exists(path):
            return path
        stem = stem.rpartition("-")[0]
    return None


@pytest.mark.parametrize("name", _starters())
def test_starter_config_exports_and_matches_predict(tmp_path, name):
    from convnet_cli.ingest.features import FeatureSpec

    layer_def = open(os.path.join(CONFIGS, f"{name}.yaml")).read()
    params_path = os.path.join(CONFIGS, f"{name}-params.yaml")
    params = open(params_path).read() if os.path.exists(params_path) else ""
    feats = _features_for(name)
    if feats:
        spec = FeatureSpec.from_dict(yaml.safe_load(open(feats)), feats)
        shape, features = spec.shape, spec.to_dict()
    else:  # cifar-18pct: 32x32 RGB images
        shape, features = (3, 32, 32), None
    model, state = check_parity(tmp_path, layer_def, shape, params, features=features)
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["data_shape"]) == list(shape)
    assert json.loads(props["features"]) == features


# -- a net of every layer type -----------------------------------------------------------------------------
HEAD = "data: {type: data, dataIdx: 0}\nlabels: {type: data, dataIdx: 1}\n"
TAIL = ("out: {{type: fc, inputs: {src}, outputs: 3}}\n"
        "probs: {{type: softmax, inputs: out}}\n"
        "cost: {{type: cost.logreg, inputs: [labels, probs]}}\n")


def net(body: str, src: str) -> str:
    return HEAD + body + TAIL.format(src=src)


LAYER_NETS = {
    "conv_groups_padding_nonsquare_stride": (net(
        "c1: {type: conv, inputs: data, filters: 4, filterSize: [3, 2], padding: [1, 2], stride: [2, 1], "
        "neuron: relu}\n"
        "c2: {type: conv, inputs: c1, filters: 6, filterSize: 3, groups: 2, padding: 1, sharedBiases: 0}\n"
        "c3: {type: conv, inputs: c2, filters: 4, filterSize: 1, neuron: tanh}\n", "c3"), (3, 9, 8)),
    "conv_full_size_filter": (net(
        "c1: {type: conv, inputs: data, filters: 5, filterSize: [6, 7], neuron: abs}\n", "c1"), (2, 6, 7)),
    "local": (net(
        "l1: {type: local, inputs: data, filters: 4, filterSize: [3, 2], padding: [1, 0], stride: [1, 2], "
        "groups: 2, neuron: relu}\n"
        "l2: {type: local, inputs: l1, filters: 3, filterSize: 2, sharedBiases: 1}\n", "l2"), (2, 7, 8)),
    "rnorm_cmrnorm": (net(
        "c1: {type: conv, inputs: data, filters: 6, filterSize: 3, padding: 1}\n"
        "r3: {type: rnorm, inputs: c1, size: 3}\n"
        "r2: {type: rnorm, inputs: r3, size: 2}\n"
        "m5: {type: cmrnorm, inputs: r2, size: 5}\n"
        "m4: {type: cmrnorm, inputs: m5, size: 4}\n", "m4"), (2, 6, 5)),
    "batchnorm_dropout": (net(
        "c1: {type: conv, inputs: data, filters: 4, filterSize: 3}\n"
        "bn: {type: batchnorm, inputs: c1, epsilon: 0.001, neuron: relu}\n"
        "drop: {type: dropout, inputs: bn}\n"
        "f1: {type: fc, inputs: drop, outputs: 6}\n"
        "bn2: {type: batchnorm, inputs: f1}\n", "bn2"), (1, 6, 7)),
    "eltsum_eltmax_concat_fc_inputs": (HEAD +
        "a: {type: conv, inputs: data, filters: 3, filterSize: 3, padding: 1}\n"
        "b: {type: conv, inputs: data, filters: 3, filterSize: 3, padding: 1}\n"
        "c: {type: conv, inputs: data, filters: 2, filterSize: 3, padding: 1}\n"
        "s: {type: eltsum, inputs: [a, b], coeffs: [0.5, -1.5]}\n"
        "m: {type: eltmax, inputs: [a, b, s]}\n"
        "j: {type: concat, inputs: [m, c, a]}\n"
        "out: {type: fc, inputs: [j, s], outputs: 3}\n"
        "probs: {type: softmax, inputs: out}\n"
        "cost: {type: cost.logreg, inputs: [labels, probs]}\n", (2, 5, 4)),
    "cnorm_pass": (net(
        "c1: {type: conv, inputs: data, filters: 4, filterSize: 3, padding: 1}\n"
        "n3: {type: cnorm, inputs: c1, size: 3}\n"
        "n2: {type: cnorm, inputs: n3, size: 2}\n"
        "p1: {type: pass, inputs: n2}\n"
        "p2: {type: pass, inputs: [p1, c1]}\n", "p2"), (2, 6, 5)),
    "conv_local_several_inputs": (net(
        "a: {type: conv, inputs: data, filters: 3, filterSize: 3, padding: 1}\n"
        "b: {type: conv, inputs: data, filters: 2, filterSize: 3, padding: 1}\n"
        "m: {type: conv, inputs: [a, b], filters: 4, filterSize: 3, padding: 1, sharedBiases: 0}\n"
        "l: {type: local, inputs: [m, a], filters: 2, filterSize: 2}\n", "l"), (1, 6, 5)),
    "bce_logistic_output": (HEAD +
        "c1: {type: conv, inputs: data, filters: 3, filterSize: 2}\n"
        "out: {type: fc, inputs: c1, outputs: 2, neuron: logistic}\n"
        "cost: {type: cost.bce, inputs: [labels, out]}\n", (1, 4, 5)),
}

NEURONS = ["ident", "relu", "logistic", "tanh[1.7159,0.6667]", "abs", "softrelu", "square", "brelu[1.5]",
           "linear[2,-0.5]", "elu[0.7]", "leakyrelu[0.2]"]
for _i, _n in enumerate(NEURONS):
    LAYER_NETS[f"neuron_{_n}"] = (net(
        f"c1: {{type: conv, inputs: data, filters: 4, filterSize: 2, neuron: '{_n}'}}\n"
        f"n1: {{type: neuron, inputs: c1, neuron: '{_n}'}}\n", "n1"), (1, 4, 5))
LAYER_NETS["neuron_sqrt"] = (net(
    "c1: {type: conv, inputs: data, filters: 4, filterSize: 2, neuron: abs}\n"
    "n1: {type: neuron, inputs: c1, neuron: sqrt}\n", "n1"), (1, 4, 5))

POOLS = {
    "ceil_overhang": "sizeX: 3, stride: 2",            # 9x8 -> 4x4, last windows truncated
    "nonsquare": "sizeX: [2, 3], stride: [1, 2]",
    "start_positive": "sizeX: 3, stride: 2, start: 1",
    "start_negative": "sizeX: 3, stride: 2, start: -1",
    "outputsX": "sizeX: 2, stride: 2, outputsX: [3, 2]",
    "all": "sizeX: all",
    "whole_map": "sizeX: [9, 8]",
}
for _mode in ("max", "avg"):
    for _key, _spec in POOLS.items():
        LAYER_NETS[f"pool_{_mode}_{_key}"] = (net(
            f"p1: {{type: pool, inputs: data, pool: {_mode}, {_spec}}}\n", "p1"), (2, 9, 8))

for _cell in ("rnn", "lstm", "gru"):
    for _dir, _keys in (("forward", ""), ("reverse", ", reverse: 1"), ("bidirectional", ", bidirectional: 1")):
        _neuron = ", neuron: relu" if _cell == "rnn" and _dir == "reverse" else ""
        LAYER_NETS[f"{_cell}_{_dir}"] = (net(
            f"r1: {{type: {_cell}, inputs: data, outputs: 5{_keys}{_neuron}}}\n"
            f"r2: {{type: {_cell}, inputs: r1, outputs: 4{_keys}}}\n"
            "sp: {type: seqpool, inputs: r2, pool: mean}\n", "sp"), (2, 3, 7))
for _pool in ("last", "mean", "sum", "max"):
    LAYER_NETS[f"seqpool_{_pool}"] = (net(
        "r1: {type: lstm, inputs: data, outputs: 4, bidirectional: 1}\n"
        f"sp: {{type: seqpool, inputs: r1, pool: {_pool}}}\n", "sp"), (1, 4, 6))
LAYER_NETS["recurrent_then_fc_over_time"] = (net(
    "c1: {type: conv, inputs: data, filters: 3, filterSize: [2, 1]}\n"
    "r1: {type: gru, inputs: c1, outputs: 3, bidirectional: 1}\n", "r1"), (2, 3, 5))


@pytest.mark.parametrize("name", sorted(LAYER_NETS))
def test_layer_type_matches_predict(tmp_path, name):
    layer_def, shape = LAYER_NETS[name]
    check_parity(tmp_path, layer_def, shape, params="DEFAULT: {scale: 0.5, pow: 0.75, minDiv: 2}\n",
                 seed=sum(map(ord, name)))


# Registered layer types that export refuses on purpose (none so far); a type in neither this set nor
# TRANSLATORS fails the test below, so a new layer type comes with its ONNX translation and a net above.
NOT_EXPORTABLE: set = set()


def test_every_layer_type_has_a_translation_and_a_parity_net():
    from convnet_cli.export.onnx import TRANSLATORS
    from convnet_cli.layers.registry import REGISTRY

    tested = {spec["type"] for body, _ in LAYER_NETS.values() for spec in yaml.safe_load(body).values()}
    for t in TRANSLATORS:
        assert t in tested, f"layer type {t} has an ONNX translation but no parity net in this file"
    for t in REGISTRY:
        if t != "data" and not t.startswith("cost."):
            assert t in TRANSLATORS or t in NOT_EXPORTABLE, f"layer type {t}: no ONNX translation"


# -- the model itself ------------------------------------------------------------------------------------------
def test_model_metadata_inputs_and_opset(tmp_path):
    layer_def, shape = LAYER_NETS["conv_full_size_filter"]
    features = {"sample_rate": 2000, "duration": 2.0, "kind": "logspec", "n_fft": 160, "hop": 80}
    ckpt, state = make_checkpoint(str(tmp_path), layer_def, shape, features=features, epoch=7, name="7.30.npz")
    out = str(tmp_path / "sub" / "m.onnx")
    os.makedirs(os.path.dirname(out))
    res = invoke(["export", "-f", str(tmp_path), "--out", out])  # a run directory: its newest checkpoint
    assert res.exit_code == 0, res.output
    model = onnx.load(out)
    assert model.opset_import[0].version >= 17
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["label_names"]) == ["class_0", "class_1", "class_2"]
    assert json.loads(props["features"]) == features
    assert json.loads(props["data_shape"]) == list(shape)
    assert props["convnet_version"] == __version__
    assert props["epoch"] == "7" and props["batch"] == "12"
    assert props["output_layer"] == "probs"
    (inp,), (outp,) = model.graph.input, model.graph.output
    assert inp.name == "features" and outp.name == "probs"
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = [d.dim_value or d.dim_param for d in inp.type.tensor_type.shape.dim]
    assert dims == ["N", *shape]
    assert [d.dim_value or d.dim_param for d in outp.type.tensor_type.shape.dim] == ["N", 3]
    # no temporary file is left beside it
    assert sorted(os.listdir(os.path.dirname(out))) == ["m.onnx"]
    # any batch size
    sess = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    for n in (1, 5):
        p = sess.run(None, {"features": np.zeros((n, *shape), np.float32)})[0]
        assert p.shape == (n, 3)
        np.testing.assert_allclose(p.sum(axis=1), 1, atol=1e-5)


def test_layer_option_exports_an_inner_layer_in_predicts_order(tmp_path):
    """--layer c2: probs = that layer's (C, H, W) output, flattened in (H, W, C) order as predict does."""
    from convnet_cli.predict.predict import Runner, load_model

    layer_def, shape = LAYER_NETS["conv_groups_padding_nonsquare_stride"]
    ckpt, state = make_checkpoint(str(tmp_path), layer_def, shape)
    _, raw = make_batches(str(tmp_path), state)
    out = str(tmp_path / "m.onnx")
    res = invoke(["export", "-f", ckpt, "--out", out, "--layer", "c2"])
    assert res.exit_code == 0, res.output
    net, c = load_model(ckpt)
    ours = Runner(net, c, "c2", 64, 1)(raw)
    theirs = ort.InferenceSession(out, providers=["CPUExecutionProvider"]).run(["probs"], {"features": raw})[0]
    assert theirs.shape == ours.shape == (raw.shape[0], int(np.prod(net.by_name["c2"].out_shape)))
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=TOL)
    assert {p.key: p.value for p in onnx.load(out).metadata_props}["output_layer"] == "c2"
    res = invoke(["export", "-f", ckpt, "--out", out, "--layer", "C2x"])
    assert res.exit_code == 2 and "layer 'C2x' is not in the network" in res.output


def test_verify_flag_reports_the_difference(tmp_path):
    layer_def, shape = LAYER_NETS["rnorm_cmrnorm"]
    ckpt, _ = make_checkpoint(str(tmp_path), layer_def, shape, params="DEFAULT: {scale: 0.5}\n")
    res = invoke(["export", "-f", ckpt, "--out", str(tmp_path / "m.onnx"), "--verify"])
    assert res.exit_code == 0, res.output
    assert "verified with ONNX Runtime" in res.output


def test_export_overwrites_atomically_and_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    layer_def, shape = LAYER_NETS["conv_full_size_filter"]
    ckpt, _ = make_checkpoint(str(tmp_path), layer_def, shape)
    out = tmp_path / "m.onnx"
    out.write_bytes(b"old model")

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    res = invoke(["export", "-f", ckpt, "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert "m.onnx" in res.output and len(res.output.strip().splitlines()) == 1
    assert out.read_bytes() == b"old model"
    assert sorted(os.listdir(tmp_path)) == sorted(["m.onnx", os.path.basename(ckpt)])
    monkeypatch.undo()
    res = invoke(["export", "-f", ckpt, "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert onnx.load(str(out)).graph.output[0].name == "probs"


# -- errors ----------------------------------------------------------------------------------------------------
def test_missing_onnx_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    layer_def, shape = LAYER_NETS["conv_full_size_filter"]
    ckpt, _ = make_checkpoint(str(tmp_path), layer_def, shape)
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx -> ImportError
    res = invoke(["export", "-f", ckpt, "--out", str(tmp_path / "m.onnx")])
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "onnx" in lines[0] and "pip install 'convnet[export]'" in lines[0]
    assert "Traceback" not in res.output
    assert not os.path.exists(tmp_path / "m.onnx")


def test_unsupported_layer_is_named_in_one_line(tmp_path, monkeypatch):
    import convnet_cli.export.onnx as exp

    layer_def, shape = LAYER_NETS["local"]
    ckpt, _ = make_checkpoint(str(tmp_path), layer_def, shape)
    translators = dict(exp.TRANSLATORS)
    del translators["local"]  # as a layer type with no translation would be
    monkeypatch.setattr(exp, "TRANSLATORS", translators)
    res = invoke(["export", "-f", ckpt, "--out", str(tmp_path / "m.onnx")])
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1, res.output
    assert "layer 'l1'" in lines[0] and "'local'" in lines[0] and "ONNX" in lines[0]
    assert not os.path.exists(tmp_path / "m.onnx")


def test_missing_checkpoint_and_folder_out(tmp_path):
    res = invoke(["export", "-f", str(tmp_path / "nope"), "--out", str(tmp_path / "m.onnx")])
    assert res.exit_code == 2 and "no such checkpoint" in res.output
    layer_def, shape = LAYER_NETS["conv_full_size_filter"]
    ckpt, _ = make_checkpoint(str(tmp_path), layer_def, shape)
    (tmp_path / "dir.onnx").mkdir()
    res = invoke(["export", "-f", ckpt, "--out", str(tmp_path / "dir.onnx")])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1


# -- a trained run, and the README's ONNX Runtime example -------------------------------------------------------
TRAIN_LAYERS = """\
data:   {type: data, dataIdx: 0}
labels: {type: data, dataIdx: 1}
conv1:  {type: conv, inputs: data, filters: 4, filterSize: 3, padding: 1, init: kaiming_normal}
bn1:    {type: batchnorm, inputs: conv1, neuron: relu}
pool1:  {type: pool, inputs: bn1, pool: max, sizeX: 3, stride: 2}
gru:    {type: gru, inputs: pool1, outputs: 6, bidirectional: 1}
last:   {type: seqpool, inputs: gru, pool: mean}
drop:   {type: dropout, inputs: last}
fc2:    {type: fc, inputs: drop, outputs: 2, init: glorot_uniform}
probs:  {type: softmax, inputs: fc2}
logprob: {type: cost.logreg, inputs: [labels, probs]}
"""
README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def readme_example() -> str:
    text = open(README, encoding="utf-8").read()
    section = text[text.index("## Deploying a model"):]
    start = section.index("```python\n") + len("```python\n")
    return section[start:section.index("```", start)]


def test_readme_example_scores_a_recording_as_predict_does(tmp_path, tiny_audio_dir, tiny_batches):
    import subprocess

    (tmp_path / "layers.yaml").write_text(TRAIN_LAYERS)
    (tmp_path / "params.yaml").write_text("DEFAULT: {updater: adam, epsW: 0.01, epsB: 0.01}\n")
    res = invoke(["train", "--data-path", str(tiny_batches), "--save-path", str(tmp_path / "runs"),
                  "--layer-def", str(tmp_path / "layers.yaml"), "--layer-params", str(tmp_path / "params.yaml"),
                  "--epochs", "2", "--mini", "4", "--quiet"])
    assert res.exit_code == 0, res.output
    (run,) = [os.path.join(tmp_path / "runs", d) for d in os.listdir(tmp_path / "runs")]
    model_path = tmp_path / "upcall.onnx"  # the file name the README's example opens
    res = invoke(["export", "-f", run, "--out", str(model_path), "--verify"])
    assert res.exit_code == 0, res.output
    assert "verified with ONNX Runtime" in res.output
    model = onnx.load(str(model_path))
    props = {p.key: p.value for p in model.metadata_props}
    best = json.loads(str(np.load(os.path.join(run, "best.npz"))["__state__"]))["best"]
    assert props["epoch"] == str(best["epoch"]) and props["batch"] == str(best["batch"])
    assert json.loads(props["label_names"]) == ["high", "low"]

    code = readme_example()
    assert len(code.strip().splitlines()) <= 10, code  # "a ten-line example"
    (tmp_path / "score.py").write_text(code)
    clips = sorted((tiny_audio_dir / "low").glob("*.wav"))[:2] + sorted((tiny_audio_dir / "high").glob("*.wav"))[:2]
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out_csv = tmp_path / "preds.csv"
    res = invoke(["predict", "-f", run, *map(str, clips), "--out", str(out_csv), "--quiet"])
    assert res.exit_code == 0, res.output
    with open(out_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    for clip, row in zip(clips, rows):
        done = subprocess.run([sys.executable, "score.py", str(clip)], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        scores = dict(item.split("=") for item in done.stdout.split())
        assert set(scores) == {"high", "low"}
        for name, value in scores.items():  # printed to 4 decimals: 5e-5 of rounding on top of 1e-4
            assert abs(float(value) - float(row[name])) <= TOL + 5e-5, (clip, scores, row)
