"""cuda-convnet INI configs -> YAML: the converter (config/legacy_cfg.py) and `convnet convert-cfg`.

The fixtures in tests/fixtures/ are cuda-convnet-format files written for these tests: a CIFAR-10 net in
the manner of cuda-convnet's layers-18pct.cfg, and a cuda-convnet2-style pair with [DEFAULT], schedules,
dropout2, per-input lists and keys to drop. layer_configs/cifar-18pct*.yaml is the same CIFAR net written
by hand in this tool's YAML.
"""
from __future__ import annotations

import dataclasses
import os

import pytest
import yaml

from convnet_cli.config.convert import convert_files, convert_texts
from convnet_cli.config.layer_def import parse_layer_def
from convnet_cli.config.layer_params import parse_layer_params
from convnet_cli.config.loader import load_layer_def, load_layer_params, parse_layer_def_text, parse_layer_params_text
from convnet_cli.config.legacy_cfg import (
    cfg_to_layer_def,
    cfg_to_layer_params,
    read_ini,
    split_top,
)
from convnet_cli.errors import ConfigError
from tests.helpers import invoke

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FIX = os.path.join(HERE, "fixtures")
L18 = os.path.join(FIX, "layers-18pct.cfg")
P18 = os.path.join(FIX, "layer-params-18pct.cfg")
L2 = os.path.join(FIX, "layers-convnet2.cfg")
P2 = os.path.join(FIX, "layer-params-convnet2.cfg")
Y18 = os.path.join(ROOT, "layer_configs", "cifar-18pct.yaml")
YP18 = os.path.join(ROOT, "layer_configs", "cifar-18pct-params.yaml")


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def summary(specs):
    """What must survive a conversion: names, types, inputs, checked props, neuron, in order."""
    return [(s.name, s.type, list(s.inputs), vars(s.props), s.neuron) for s in specs]


def learn_summary(learn):
    def plain(v):
        if isinstance(v, list):
            return [plain(x) for x in v]
        if dataclasses.is_dataclass(v):  # a Schedule: compare what it computes, not how it was written
            return dataclasses.replace(v, text="")
        return v

    return {name: {k: plain(v) for k, v in vars(spec).items()} for name, spec in learn.items()}


def one_line_error(fn, *args):
    with pytest.raises(ConfigError) as info:
        fn(*args)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


# -- the CIFAR 18% net: INI == hand-written YAML --------------------------------------------------------
def test_18pct_cfg_gives_the_same_specs_as_the_handwritten_yaml():
    from_cfg = parse_layer_def(cfg_to_layer_def(read(L18), "layers-18pct.cfg"), "layers-18pct.cfg")
    from_yaml, _ = load_layer_def(Y18)
    assert summary(from_cfg) == summary(from_yaml)
    by_name = {s.name: s for s in from_cfg}
    # cuda-convnet 1 writes padding as a positive number of zeros per side
    assert by_name["conv1"].props.padding == (2, 2)
    assert by_name["conv1"].props.filterSize == (5, 5)
    assert by_name["conv1"].props.initW == 0.0001
    assert by_name["pool1"].neuron == "relu"
    assert by_name["logprob"].inputs == ["labels", "probs"]
    # channels= is kept as a check against the inferred shape
    assert by_name["conv2"].checks == {"channels": 32}


def test_18pct_params_cfg_gives_the_same_settings_as_the_handwritten_yaml():
    names = [s.name for s in load_layer_def(Y18)[0]]
    from_cfg, _ = load_layer_params(P18, names)
    from_yaml, _ = load_layer_params(YP18, names)
    assert learn_summary(from_cfg) == learn_summary(from_yaml)
    assert from_cfg["rnorm1"].hyper["scale"] == 0.00005
    assert from_cfg["rnorm1"].hyper["pow"] == 0.75  # written '.75'
    assert from_cfg["fc10"].wc == [1.0]


def test_train_reads_cfg_files_directly():
    specs = parse_layer_def_text(read(L18), "nets/layers-18pct.cfg")
    assert [s.name for s in specs][:3] == ["data", "labels", "conv1"]
    learn = parse_layer_params_text(read(P2), "layer-params-convnet2.cfg",
                                    [s.name for s in parse_layer_def_text(read(L2), "layers-convnet2.cfg")],
                                    {"fc1": 2})
    assert learn["fc1"].epsW[1](0.0) == pytest.approx(0.002)
    assert learn["conv1"].epsW[0].kind == "dexp"  # from [DEFAULT]


def test_built_18pct_net_has_cifar_shapes():
    from convnet_cli.config.layer_def import build_layers

    layers = build_layers(parse_layer_def_text(read(L18), "layers-18pct.cfg"), (3, 32, 32), "layers-18pct.cfg")
    shapes = {l.name: l.out_shape for l in layers}
    assert shapes["conv1"] == (32, 32, 32)
    assert shapes["pool1"] == (32, 16, 16)
    assert shapes["pool3"] == (64, 4, 4)
    assert shapes["fc10"] == (10, 1, 1)


# -- the cuda-convnet2-style pair -----------------------------------------------------------------------
def test_convnet2_values_types_and_defaults():
    doc = cfg_to_layer_def(read(L2), "layers-convnet2.cfg")
    specs = {s.name: s for s in parse_layer_def(doc, "layers-convnet2.cfg")}
    assert specs["conv2a"].neuron == "tanh[1.7159,0.6667]"       # brackets keep their comma
    assert specs["conv2b"].props.filterSize == (3, 3)            # 3,3 on a one-input layer: [h, w]
    assert specs["conv2b"].neuron == "relu"                      # '; the usual' is a comment
    assert specs["conv2a"].props.initW == 0.01                   # from [DEFAULT]
    assert specs["conv1"].props.initW == 0.0001                  # the layer's own value wins
    assert specs["fc1"].inputs == ["sum2", "act"]
    assert specs["fc1"].props.initW == [0.01, 0.02]              # one per input
    assert specs["sum2"].props.coeffs == [1.0, 0.5]
    assert specs["cat2"].inputs == ["conv2a", "conv2b"]          # 'conv2a, conv2b'
    assert specs["act"].type == "neuron" and specs["act"].props.neuron == "abs"
    assert specs["drop1"].type == "dropout"                      # dropout2 -> dropout
    assert specs["fc2"].props.initW == [0.01]
    # [DEFAULT] initW reaches no layer without that key; gpu and partialSum are not in the mapping
    assert "initW" not in doc["pool1"] and "initW" not in doc["probs"]
    assert "gpu" not in doc["conv1"] and "partialSum" not in doc["conv1"]
    # lines point into the INI file
    text = read(L2).splitlines()
    assert text[doc.lines["conv2b"] - 1] == "[conv2b]"
    assert text[doc["conv2b"].lines["filterSize"] - 1] == "filterSize=3,3"


def test_convnet2_params_default_schedules_and_lists():
    doc = cfg_to_layer_params(read(P2), "layer-params-convnet2.cfg")
    assert list(doc)[0] == "DEFAULT"
    assert doc["DEFAULT"]["epsW"] == "dexp[base=0.01;tgtFactor=100;numSteps=4]"
    assert doc["DEFAULT"]["epsB"] == "linear[base=0.02;tgtFactor=10]"
    assert doc["fc2"]["epsW"] == "step[base=0.01;factor=0.1;epochs=10,20]"   # its comma stays inside
    assert doc["fc1"]["epsW"] == [0.001, 0.002]
    assert doc["fc1"]["wc"] == [0.0005, 0.001]
    assert doc["conv1"]["wc"] == 0.0001
    assert "wball" not in doc["DEFAULT"] and "updatePeriod" not in doc["fc2"]
    assert doc["drop1"]["keep"] == 0.6


@pytest.mark.parametrize("layers_cfg,params_cfg", [(L18, P18), (L2, P2)])
def test_convert_files_round_trip(tmp_path, layers_cfg, params_cfg):
    ly, py = convert_files(layers_cfg, params_cfg, str(tmp_path / "out"))
    stem = os.path.splitext(os.path.basename(layers_cfg))[0]
    assert ly == str(tmp_path / "out" / f"{stem}.yaml")
    assert py == str(tmp_path / "out" / f"{stem}-params.yaml")
    from_cfg = parse_layer_def_text(read(layers_cfg), layers_cfg)
    from_yaml, _ = load_layer_def(ly)
    assert summary(from_yaml) == summary(from_cfg)
    names = [s.name for s in from_cfg]
    n_weights = {s.name: len(s.inputs) for s in from_cfg}
    assert learn_summary(load_layer_params(py, names, n_weights)[0]) == \
        learn_summary(load_layer_params(params_cfg, names, n_weights)[0])
    # file order is kept
    assert list(yaml.safe_load(read(ly))) == [s.name for s in from_cfg]


def test_converted_yaml_comments_every_dropped_key(tmp_path):
    ly, py = convert_files(L2, P2, str(tmp_path))
    lt, pt = read(ly), read(py)
    assert "  # not carried over: partialSum=4 (cuda-convnet GPU kernel hint; not needed here)" in lt
    assert "# not carried over: sumWidth=2" in lt
    assert "# [DEFAULT] not carried over: gpu=0" in lt
    assert "# not carried over: initWFunc=winit.makew(0.01)" in lt
    assert "type dropout2 -> dropout" in lt
    assert "# not carried over: wball=0.00" in pt
    assert "# not carried over: updatePeriod=1" in pt
    conv = convert_texts(read(L2), read(P2), "layers-convnet2.cfg", "layer-params-convnet2.cfg")
    assert len(conv.not_carried) == 6


def test_18pct_converted_yaml_is_as_expected(tmp_path):
    ly, py = convert_files(L18, P18, str(tmp_path))
    lt = read(ly)
    assert lt.count("# not carried over: partialSum=4 (cuda-convnet GPU kernel hint; not needed here)") == 3
    assert "  inputs: [labels, probs]\n" in lt
    assert "  initW: 0.0001\n" in lt
    assert "  pow: .75\n" in read(py)  # numbers keep their spelling where YAML reads them the same


# -- mappings and judgement calls -------------------------------------------------------------------------
NET = """\
[data]
type=data
dataIdx=0

[labels]
type=data
dataIdx=1

[fc1]
type=fc
inputs=data
outputs=8
neuron=relu

[fc2]
type=fc
inputs=fc1
outputs=2

[probs]
type=softmax
inputs=fc2

[logprob]
type=cost.logreg
inputs=labels,probs
"""


def test_keys_are_case_insensitive_like_configparser():
    doc = cfg_to_layer_def(NET.replace("outputs=8", "OUTPUTS=8").replace("dataIdx=1", "dataidx=1"), "l.cfg")
    assert doc["fc1"]["outputs"] == 8 and doc["labels"]["dataIdx"] == 1


def test_binxent_becomes_bce_and_interpolation():
    text = NET.replace("type=softmax", "type=neuron\nneuron=logistic").replace("cost.logreg", "cost.binxent")
    text = "[DEFAULT]\nunits=8\n\n" + text.replace("outputs=8", "outputs=%(units)s")
    specs = {s.name: s for s in parse_layer_def(cfg_to_layer_def(text, "l.cfg"), "l.cfg")}
    assert specs["logprob"].type == "cost.bce"
    assert specs["fc1"].props.outputs == 8


def test_layer_params_keys_in_layers_cfg_move_to_params():
    text = NET.replace("outputs=2", "outputs=2\nepsW=0.05")
    conv = convert_texts(text, "[fc1]\nepsW=0.01\n", "l.cfg", "p.cfg")
    assert conv.layer_params["fc2"]["epsW"] == 0.05
    assert conv.layer_params["fc1"]["epsW"] == 0.01
    assert "epsW" not in conv.layer_def["fc2"]
    assert "moved to the params file: epsW=0.05" in conv.layers_yaml


def test_dnouri_dropout_becomes_a_dropout_layer(tmp_path):
    params = "[fc1]\nepsW=0.01\ndropout=0.5\n"
    conv = convert_texts(NET, params, "l.cfg", "p.cfg")
    specs = parse_layer_def(conv.layer_def, "l.cfg")
    assert [s.name for s in specs] == ["data", "labels", "fc1", "fc1_dropout", "fc2", "probs", "logprob"]
    by = {s.name: s for s in specs}
    assert by["fc1_dropout"].type == "dropout" and by["fc1_dropout"].inputs == ["fc1"]
    assert by["fc2"].inputs == ["fc1_dropout"]
    learn = parse_layer_params(yaml_doc(conv.params_yaml), [s.name for s in specs], "p.yaml")
    assert learn["fc1_dropout"].hyper["keep"] == 0.5
    assert "dnouri" in conv.layers_yaml
    # training straight from the .cfg pair cannot insert the layer: it says to convert
    msg = one_line_error(cfg_to_layer_params, params, "p.cfg")
    assert "p.cfg" in msg and "line 3" in msg and "convert-cfg" in msg and "[fc1]" in msg


def test_dropout_enable_0_means_keep_1():
    doc = cfg_to_layer_params("[drop]\nenable=0\n", "p.cfg")
    assert doc["drop"]["keep"] == 1.0


def yaml_doc(text):
    from convnet_cli.config.yamlio import load_yaml_text

    return load_yaml_text(text, "p.yaml")


# -- errors ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["blockexpand", "resize", "hs"])
def test_unknown_layer_type_is_a_one_line_error(kind):
    text = NET.replace("[probs]\ntype=softmax", f"[probs]\ntype={kind}")
    msg = one_line_error(cfg_to_layer_def, text, "layers.cfg")
    line = text.splitlines().index(f"type={kind}") + 1
    assert msg.startswith("layers.cfg: ")
    assert f"line {line}" in msg
    assert "[probs]" in msg
    assert f"convnet has no layer type '{kind}'" in msg


def test_unknown_type_error_gives_the_hint():
    msg = one_line_error(cfg_to_layer_def, NET.replace("type=softmax", "type=blockexpand"), "layers.cfg")
    assert "use a conv layer" in msg


@pytest.mark.parametrize("text,parts", [
    ("type=data\n[data]\ndataIdx=0\n", ["line 1", "outside any section"]),
    ("[data]\ntype=data\ndataIdx 0\n", ["line 3", "'dataIdx 0'", "key=value"]),
    ("[data]\ntype=data\n\n[data]\ntype=data\n", ["line 4", "[data] appears twice", "line 1"]),
    ("[data]\ntype=data\ndataIdx=0\ndataidx=1\n", ["line 4", "'dataidx' appears twice", "[data]"]),
    ("[]\ntype=data\n", ["line 1", "empty section"]),
])
def test_malformed_ini_is_a_one_line_error(text, parts):
    msg = one_line_error(read_ini, text, "bad.cfg")
    assert msg.startswith("bad.cfg: ")
    for p in parts:
        assert p in msg


def test_parser_errors_carry_ini_lines():
    text = NET.replace("outputs=8", "outputs=eight")
    msg = one_line_error(parse_layer_def_text, text, "layers.cfg")
    line = text.splitlines().index("outputs=eight") + 1
    assert "layers.cfg" in msg and "fc1" in msg and f"line {line}" in msg
    msg = one_line_error(parse_layer_def_text, NET.replace("outputs=8", "outputz=8"), "layers.cfg")
    assert "did you mean 'outputs'" in msg


def test_multi_input_conv_converts_with_per_input_lists_collapsed():
    text = NET.replace("[fc1]\ntype=fc\ninputs=data\noutputs=8",
                       "[fc1]\ntype=conv\ninputs=data,data\nfilters=8\nfilterSize=3,3\nchannels=1,1")
    doc = cfg_to_layer_def(text, "layers.cfg")
    assert doc["fc1"]["inputs"] == ["data", "data"] and doc["fc1"]["filterSize"] == 3
    text = text.replace("filterSize=3,3", "filterSize=3,5")
    msg = one_line_error(cfg_to_layer_def, text, "layers.cfg")
    assert "filterSize=3,5 has a different value per input" in msg and "[fc1]" in msg


def test_per_input_values_that_differ_on_a_one_input_layer():
    text = NET.replace("outputs=8", "outputs=8,9")
    msg = one_line_error(parse_layer_def_text, text, "layers.cfg")
    assert "fc1" in msg


def test_random_sparse_is_refused():
    text = NET.replace("[fc1]\ntype=fc\ninputs=data\noutputs=8",
                       "[fc1]\ntype=conv\ninputs=data\nfilters=8\nfilterSize=3\nrandSparse=1")
    msg = one_line_error(cfg_to_layer_def, text, "layers.cfg")
    assert "randSparse" in msg and "groups" in msg


def test_split_top_respects_brackets():
    assert split_top("a, b") == ["a", "b"]
    assert split_top("tanh[1,1]") == ["tanh[1,1]"]
    assert split_top("step[base=1;factor=0.1;epochs=1,2],0.1") == ["step[base=1;factor=0.1;epochs=1,2]", "0.1"]


# -- the CLI -----------------------------------------------------------------------------------------------
run_cli = invoke


def test_cli_writes_both_files_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "yaml"
    r = run_cli(["convert-cfg", L2, P2, str(out)])
    assert r.exit_code == 0, r.output
    ly, py = out / "layers-convnet2.yaml", out / "layers-convnet2-params.yaml"
    assert ly.exists() and py.exists()
    assert str(ly) in r.output and str(py) in r.output
    assert "6 keys not carried over" in r.output
    before = ly.read_text()
    ly.write_text("# edited by hand\n" + before)
    r = run_cli(["convert-cfg", L2, P2, str(out)])
    assert r.exit_code == 2
    assert "already exists" in r.output and "--overwrite" in r.output
    assert ly.read_text().startswith("# edited by hand")  # untouched
    r = run_cli(["convert-cfg", L2, P2, str(out), "--overwrite"])
    assert r.exit_code == 0, r.output
    assert ly.read_text() == before


def test_cli_unknown_type_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "layers.cfg"
    bad.write_text(NET.replace("type=softmax", "type=blockexpand"))
    params = tmp_path / "params.cfg"
    params.write_text("[fc1]\nepsW=0.01\n")
    r = run_cli(["convert-cfg", str(bad), str(params), str(tmp_path / "out")])
    assert r.exit_code == 2
    lines = [l for l in r.output.splitlines() if l.strip()]
    assert len(lines) == 1 and "convnet has no layer type 'blockexpand'" in lines[0]
    assert not (tmp_path / "out").exists()


def test_cli_missing_file(tmp_path):
    r = run_cli(["convert-cfg", str(tmp_path / "nope.cfg"), P2, str(tmp_path / "out")])
    assert r.exit_code == 2 and "nope.cfg" in r.output
