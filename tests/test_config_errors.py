"""Every user mistake in a layer-def or layer-params file is a ConfigError whose one-line message names the
file, the layer, the key and the fix (README.md and docs/COMMANDS.md, on user errors); the cuda-convnet spellings
still load."""
from __future__ import annotations

import numpy as np
import pytest

from convnet_cli.errors import ConfigError
from convnet_cli.net import Net

# A small net, one layer per line, so that line numbers in messages are predictable (conv2 is line 3).
BASE = """\
data: {type: data, dataIdx: 0}
labels: {type: data, dataIdx: 1}
conv2: {type: conv, inputs: data, filters: 4, filterSize: 3, padding: 1}
fc1: {type: fc, inputs: conv2, outputs: 3}
probs: {type: softmax, inputs: fc1}
logprob: {type: cost.logreg, inputs: [labels, probs]}
"""
SHAPE = (1, 5, 40)  # (C, H, W): a short, wide spectrogram


def build(layer_def=BASE, params="", shape=SHAPE):
    return Net.from_text(layer_def, params, shape, seed=0)


def error(layer_def=BASE, params="", shape=SHAPE) -> str:
    """The message of the ConfigError that building the net raises; checks that it is one line."""
    with pytest.raises(ConfigError) as e:
        build(layer_def, params, shape)
    msg = str(e.value)
    assert "\n" not in msg, msg
    assert "Traceback" not in msg
    return msg


def edit(old, new, text=BASE):
    assert old in text, old
    return text.replace(old, new, 1)


def test_the_base_net_builds():
    net = build()
    assert [l.name for l in net.layers] == ["data", "labels", "conv2", "fc1", "probs", "logprob"]
    assert net.by_name["conv2"].out_shape == (4, 5, 40)


# -- layer definition: types and keys ---------------------------------------------------------------------
def test_unknown_type_with_did_you_mean():
    msg = error(edit("type: conv,", "type: convv,"))
    assert msg.startswith("layers.yaml: layer 'conv2': unknown type 'convv' (did you mean 'conv'?)")
    assert "types: " in msg and "fc" in msg  # the list of types to choose from
    assert "(line 3)" in msg


def test_unknown_type_in_the_wrong_case():
    msg = error(edit("type: fc,", "type: FC,"))
    assert "layer 'fc1': unknown type 'FC' (did you mean 'fc'?)" in msg


def test_unknown_cost_type_with_did_you_mean():
    msg = error(edit("type: cost.logreg", "type: cost.logrec"))
    assert "layer 'logprob': unknown type 'cost.logrec' (did you mean 'cost.logreg'?)" in msg


def test_unknown_key_with_did_you_mean_exactly():
    msg = error(edit("filterSize: 3", "filtersize: 3"))
    assert msg.startswith("layers.yaml: layer 'conv2': unknown key 'filtersize' (did you mean 'filterSize'?)")
    assert "(line 3)" in msg


def test_unknown_key_lists_the_keys_of_the_type():
    msg = error(edit("outputs: 3", "outputs: 3, outptus: 2"))
    assert "layer 'fc1': unknown key 'outptus' (did you mean 'outputs'?)" in msg
    assert "keys of a fc layer: outputs, initW, initB, init" in msg


def test_unknown_key_far_from_any_name():
    msg = error(edit("outputs: 3", "outputs: 3, zzz: 2"))
    assert "layer 'fc1': unknown key 'zzz'" in msg and "did you mean" not in msg


def test_missing_required_key():
    msg = error(edit(", outputs: 3", ""))
    assert msg.startswith("layers.yaml: layer 'fc1': missing required key 'outputs' for a fc layer")
    assert "add it" in msg and "(line 4)" in msg


def test_missing_filter_size():
    msg = error(edit(", filterSize: 3", ""))
    assert "layer 'conv2': missing required key 'filterSize' for a conv layer" in msg and "add it" in msg


def test_missing_type():
    msg = error(edit("{type: softmax, inputs: fc1}", "{inputs: fc1}"))
    assert "layer 'probs': missing required key 'type'; add e.g. 'type: conv'" in msg


def test_missing_inputs():
    msg = error(edit("{type: softmax, inputs: fc1}", "{type: softmax}"))
    assert "layer 'probs': missing required key 'inputs'" in msg and "(line 5)" in msg


# -- inputs ------------------------------------------------------------------------------------------------
def test_input_not_defined_anywhere():
    msg = error(edit("inputs: conv2", "inputs: pool9"))
    assert msg.startswith("layers.yaml: layer 'fc1': input 'pool9' is not defined above it")
    assert "(line 4)" in msg


def test_input_misspelt_gets_did_you_mean():
    msg = error(edit("inputs: conv2", "inputs: conv3"))
    assert "layer 'fc1': input 'conv3' is not defined above it (did you mean 'conv2'?)" in msg


def test_input_defined_below():
    msg = error(edit("inputs: conv2", "inputs: probs"))
    assert "layer 'fc1': input 'probs' is not defined above it (it is defined below; move it above)" in msg


def test_input_is_the_layer_itself():
    msg = error(edit("inputs: fc1}", "inputs: probs}"))
    assert "layer 'probs': takes itself as input; name a layer above it" in msg


def test_inputs_of_the_wrong_kind():
    msg = error(edit("inputs: fc1}", "inputs: 5}"))
    assert "layer 'probs': inputs must be a layer name or a list of names" in msg


def test_a_data_layer_takes_no_inputs():
    msg = error(edit("dataIdx: 1}", "dataIdx: 1, inputs: data}"))
    assert "layer 'labels': a data layer has no inputs; remove 'inputs'" in msg


def test_unused_non_cost_layer():
    text = BASE + "extra: {type: fc, inputs: conv2, outputs: 2}\n"
    msg = error(text)
    assert msg.startswith("layers.yaml: layer 'extra': is not used as input by any layer below it")
    assert "remove it or name it in a later layer's inputs" in msg and "(line 7)" in msg


def test_no_cost_layer():
    # the last layer then feeds nothing, but the mistake to report is the missing cost
    text = BASE.replace("logprob: {type: cost.logreg, inputs: [labels, probs]}\n", "")
    msg = error(text)
    assert msg.startswith("layers.yaml: no cost layer; add one, e.g. 'logprob: {type: cost.logreg, inputs: "
                          "[labels, probs]}'")


@pytest.mark.parametrize("inputs,got", [("[labels]", 1), ("[labels, probs, fc1]", 3)])
def test_number_of_inputs_of_a_cost_layer(inputs, got):
    msg = error(edit("inputs: [labels, probs]", f"inputs: {inputs}"))
    assert f"layer 'logprob': a cost.logreg layer takes 2 input(s), got {got}" in msg


def test_logreg_inputs_swapped():
    msg = error(edit("inputs: [labels, probs]", "inputs: [probs, labels]"))
    assert msg.startswith("layers.yaml: layer 'logprob': its first input 'probs' must be the labels")
    assert "the inputs are swapped; write inputs: [labels, probs]" in msg  # the fix


def test_bce_inputs_swapped():
    text = edit("probs: {type: softmax, inputs: fc1}", "probs: {type: neuron, inputs: fc1, neuron: logistic}")
    msg = error(edit("type: cost.logreg, inputs: [labels, probs]", "type: cost.bce, inputs: [probs, labels]", text))
    assert "layer 'logprob': its first input 'probs' must be the labels" in msg
    assert "write inputs: [labels, probs]" in msg


def test_cost_without_labels_first():
    text = BASE + "sq: {type: cost.logreg, inputs: [fc1, probs]}\n"
    msg = error(text)
    assert "layer 'sq': its first input 'fc1' must be the labels" in msg
    assert "name the labels first: inputs: [labels, <scores>]" in msg


def test_logreg_on_a_map_instead_of_class_scores():
    text = BASE + "sq: {type: cost.sum2, inputs: probs}\n"  # keeps probs in use
    msg = error(edit("inputs: [labels, probs]", "inputs: [labels, conv2]", text))
    assert "layer 'logprob': its second input 'conv2' must be class scores of shape (K, 1, 1)" in msg
    assert "put an fc layer and a softmax before it" in msg


# -- values ------------------------------------------------------------------------------------------------
def test_wrong_value_type():
    msg = error(edit("filters: 4", "filters: abc"))
    assert msg.startswith("layers.yaml: layer 'conv2': filters 'abc' must be an integer")
    assert "(line 3)" in msg


@pytest.mark.parametrize("value,why", [("0", "must be at least 1"), ("2.5", "must be an integer"),
                                       ("[1, 2, 3]", "must be an integer")])
def test_wrong_values(value, why):
    msg = error(edit("filters: 4", f"filters: {value}"))
    assert "layer 'conv2': filters" in msg and why in msg


def test_pair_of_three():
    msg = error(edit("padding: 1", "padding: [1, 2, 3]"))
    assert "layer 'conv2': padding [1, 2, 3] must be an integer or a pair [h, w]" in msg


def test_choice_with_did_you_mean():
    msg = error(edit("outputs: 3", "outputs: 3, init: gausian"))
    assert "layer 'fc1': init 'gausian' must be one of" in msg and "(did you mean 'gaussian'?)" in msg


def test_filter_larger_than_its_input():
    msg = error(edit("filterSize: 3, padding: 1", "filterSize: 7"))
    assert msg.startswith("layers.yaml: layer 'conv2': filterSize 7 is larger than its input (5x40)")
    assert "use a smaller filterSize or more padding" in msg


def test_channels_given_and_wrong():
    msg = error(edit("filters: 4", "filters: 4, channels: 3"))
    assert msg.startswith("layers.yaml: layer 'conv2': channels 3 does not match its input's 1 channels")
    assert "remove 'channels' (it is inferred) or fix it" in msg


def test_channels_given_and_right_is_accepted():
    net = build(edit("outputs: 3", "outputs: 3, channels: 4"))
    assert net.by_name["fc1"].out_shape == (3, 1, 1)


def test_img_size_given_and_wrong():
    msg = error(edit("filters: 4", "filters: 4, imgSize: 32"))
    assert "layer 'conv2': imgSize 32 does not match its input (5x40)" in msg and "remove 'imgSize'" in msg


# -- neurons -----------------------------------------------------------------------------------------------
def test_unknown_neuron():
    msg = error(edit("outputs: 3}", "outputs: 3, neuron: rleu}"))
    assert msg.startswith("layers.yaml: layer 'fc1': unknown neuron 'rleu' (did you mean 'relu'?)")
    assert "neurons: ident, relu" in msg and "(line 4)" in msg


@pytest.mark.parametrize("spec", ["'relu[1'", "'tanh(1,2)'", "'1relu'"])
def test_bad_neuron_syntax(spec):
    msg = error(edit("outputs: 3}", f"outputs: 3, neuron: {spec}}}"))
    assert "layer 'fc1': neuron " in msg and "is not of the form name or name[a,b]" in msg


def test_neuron_parameters_not_numbers():
    msg = error(edit("outputs: 3}", "outputs: 3, neuron: 'tanh[a,b]'}"))
    assert "layer 'fc1': neuron 'tanh[a,b]': parameters must be numbers" in msg


def test_neuron_with_too_many_parameters():
    msg = error(edit("outputs: 3}", "outputs: 3, neuron: 'relu[1]'}"))
    assert "layer 'fc1': neuron 'relu[1]': relu takes 0 parameter(s), got 1" in msg


def test_neuron_not_a_word():
    msg = error(edit("outputs: 3}", "outputs: 3, neuron: 5}"))
    assert "layer 'fc1': neuron must be a word like relu or tanh[1,1]" in msg


def test_data_layer_takes_no_neuron():
    msg = error(edit("dataIdx: 0}", "dataIdx: 0, neuron: relu}"))
    assert "layer 'data': a data layer takes no neuron" in msg


# -- YAML itself -----------------------------------------------------------------------------------------
def test_yaml_syntax_error_names_the_line():
    text = edit("fc1: {type: fc, inputs: conv2, outputs: 3}", "fc1: {type: fc, inputs: conv2, outputs: 3")
    msg = error(text)
    assert msg.startswith("layers.yaml: not valid YAML (line 5")
    assert "fix the indentation or quoting there" in msg


def test_yaml_bad_indentation():
    text = "data:\n  type: data\n dataIdx: 0\n"
    msg = error(text)
    assert msg.startswith("layers.yaml: not valid YAML (line 3")


def test_duplicate_key_in_a_layer():
    msg = error(edit("outputs: 3", "outputs: 3, outputs: 4"))
    assert msg == "layers.yaml: 'outputs' appears twice (line 4); keep one of them"


def test_duplicate_layer_name():
    msg = error(BASE + "fc1: {type: fc, inputs: conv2, outputs: 3}\n")
    assert msg == "layers.yaml: 'fc1' appears twice (line 7); keep one of them"


@pytest.mark.parametrize("text", ["", "- data\n- fc1\n", "just words\n"])
def test_not_a_mapping(text):
    msg = error(text)
    assert msg.startswith("layers.yaml: expected a mapping of layer names to their keys")


def test_layer_without_keys():
    msg = error(edit("probs: {type: softmax, inputs: fc1}", "probs: softmax"))
    assert "layer 'probs': expected its keys (type: ..., inputs: ...)" in msg


def test_file_name_in_messages_is_the_given_one():
    with pytest.raises(ConfigError) as e:
        Net.from_text(edit("outputs: 3", "outptus: 3"), "", SHAPE, layer_def_path="/some/dir/my-net.yaml")
    assert str(e.value).startswith("my-net.yaml: layer 'fc1': unknown key 'outptus'")


# -- layer params -------------------------------------------------------------------------------------------
def test_params_bad_schedule_syntax():
    msg = error(params="conv2: {epsW: 'exp[base=0.01]'}")
    assert msg.startswith("params.yaml: layer 'conv2': epsW 'exp[base=0.01]'")
    assert "missing tgtFactor" in msg and "(line 1)" in msg


def test_params_unknown_schedule_kind_lists_the_kinds():
    msg = error(params="fc1: {epsW: 'expo[base=0.01;tgtFactor=10]'}")
    assert "params.yaml: layer 'fc1': epsW" in msg
    assert "is not a number or one of const[base=...], linear[base=...;tgtFactor=...]" in msg


def test_params_schedule_with_a_wrong_argument():
    msg = error(params="fc1: {epsB: 'exp[base=0.01;tgt=10]'}")
    assert "layer 'fc1': epsB" in msg and "exp takes base, tgtFactor, not 'tgt'" in msg


def test_params_for_a_layer_that_does_not_exist():
    msg = error(params="conv2: {epsW: 0.01}\nfc2: {epsW: 0.01}\n")
    assert msg.startswith("params.yaml: layer 'fc2' does not exist in the layer definition (did you mean 'fc1'?)")
    assert "remove its settings or rename them (line 2)" in msg


def test_params_unknown_key():
    msg = error(params="fc1: {epsw: 0.01}")
    assert msg.startswith("params.yaml: layer 'fc1': unknown key 'epsw' (did you mean 'epsW'?)")
    assert "keys: epsW, epsB" in msg


def test_params_unknown_key_in_default():
    msg = error(params="DEFAULT: {momentum: 0.9}")
    assert "params.yaml: layer 'DEFAULT': unknown key 'momentum'" in msg


def test_params_wrong_updater():
    msg = error(params="fc1: {updater: adma}")
    assert msg.startswith("params.yaml: layer 'fc1': updater 'adma' must be one of sgd, adam, rmsprop, adagrad, "
                          "adadelta (did you mean 'adam'?)")


def test_params_value_not_a_number():
    msg = error(params="fc1: {momW: fast}")
    assert "params.yaml: layer 'fc1': momW 'fast' must be a number" in msg


def test_params_keep_out_of_range():
    msg = error(params="fc1: {keep: 1.5}")
    assert "layer 'fc1': keep 1.5 must be in (0, 1]" in msg


def test_params_per_input_list_of_the_wrong_length():
    msg = error(params="fc1: {epsW: [0.1, 0.2]}")
    assert "layer 'fc1': epsW has 2 values but the layer has 1 inputs; give one value or one per input" in msg


def test_params_yaml_syntax_error():
    msg = error(params="fc1: {epsW: 0.1\nconv2: {epsW: 0.1}\n")
    assert msg.startswith("params.yaml: not valid YAML (line 2")


def test_params_duplicate_layer():
    msg = error(params="fc1: {epsW: 0.1}\nfc1: {epsW: 0.2}\n")
    assert msg == "params.yaml: 'fc1' appears twice (line 2); keep one of them"


def test_params_not_a_mapping():
    msg = error(params="- fc1\n")
    assert msg.startswith("params.yaml: expected a mapping of layer names to their settings")


def test_params_layer_settings_not_a_mapping():
    msg = error(params="fc1: 0.01\n")
    assert "params.yaml: layer 'fc1': expected its settings (epsW: ..., epsB: ...)" in msg


# -- cuda-convnet spellings that still load -----------------------------------------------------------------
def test_inputs_as_a_comma_string():
    text = """\
data: {type: data, dataIdx: 0}
labels: {type: data, dataIdx: 1}
conv1: {type: conv, inputs: data, filters: 2, filterSize: 3, padding: 1}
conv2: {type: conv, inputs: data, filters: 3, filterSize: 3, padding: 1}
both: {type: concat, inputs: "conv1,conv2"}
fc1: {type: fc, inputs: "conv1, both", outputs: 3}
probs: {type: softmax, inputs: fc1}
logprob: {type: cost.logreg, inputs: "labels,probs"}
"""
    net = build(text, shape=(1, 4, 6))
    assert net.by_name["both"].in_names == ["conv1", "conv2"]
    assert net.by_name["both"].out_shape == (5, 4, 6)
    assert net.by_name["fc1"].in_names == ["conv1", "both"]
    assert net.by_name["logprob"].in_names == ["labels", "probs"]


def test_filter_size_as_a_comma_string():
    net = build(edit("filterSize: 3, padding: 1", "filterSize: '3,5', padding: '1,2', stride: '1,2'"))
    conv = net.by_name["conv2"]
    assert conv.props.filterSize == (3, 5) and conv.props.padding == (1, 2) and conv.props.stride == (1, 2)
    assert conv.out_shape == (4, 5, 20)
    assert net.params["conv2"]["weights"].shape == (4, 1, 3, 5)


def test_filter_size_as_a_pair():
    net = build(edit("filterSize: 3, padding: 1", "filterSize: [5, 3], padding: [2, 0]"))
    assert net.by_name["conv2"].out_shape == (4, 5, 38)


def test_tanh_neuron_in_cuda_convnet_syntax():
    text = edit("fc1: {type: fc, inputs: conv2, outputs: 3}\n",
                "fc1:\n  type: fc\n  inputs: conv2\n  outputs: 3\n  neuron: tanh[1.7159,0.6666]\n")
    net = build(text)
    n = net.by_name["fc1"].neuron
    assert n.name == "tanh" and n.args == (1.7159, 0.6666)


def test_numbers_in_exponent_form():
    # YAML 1.1 reads 1e-3 (no dot) as a string; both files still take it as a number
    net = build(edit("outputs: 3", "outputs: 3, initW: 1e-3"), params="fc1: {epsW: 1e-3, wc: 5e-4}\n")
    assert net.by_name["fc1"].props.initW == [0.001]
    assert net.learn["fc1"].epsW[0](0.5) == 0.001 and net.learn["fc1"].wc == [0.0005]


def test_ignored_cuda_convnet_keys():
    text = edit("filters: 4", "filters: 4, partialSum: 4, sharedBiases: 1, gpu: 0, channels: 1")
    text = edit("outputs: 3", "outputs: 3, gpu: 1, randSparse: 0", text)
    net = build(text)
    assert net.by_name["conv2"].out_shape == (4, 5, 40)
    assert not hasattr(net.by_name["conv2"].props, "partialSum")


def test_ignored_cuda_convnet_params_keys():
    net = build(params="conv2: {epsW: 0.001, epsB: 0.002, momW: 0.9, momB: 0.9, wc: 0.004, wball: 0, "
                       "updatePeriod: 1}\nDEFAULT: {epsW: 0.01}\n")
    assert net.learn["conv2"].wc == [0.004] and net.learn["fc1"].epsW[0](0) == 0.01


def test_a_legacy_net_trains_a_step():
    # everything above at once, in the style of a cuda-convnet layers.cfg turned into YAML
    text = """\
data:
  type: data
  dataIdx: 0
labels:
  type: data
  dataIdx: 1
conv1:
  type: conv
  inputs: data
  channels: 1
  filters: 4
  filterSize: 3,5
  padding: 1,2
  partialSum: 5
  sharedBiases: 1
  neuron: tanh[1.7159,0.6666]
fc1:
  type: fc
  inputs: conv1
  outputs: 3
probs:
  type: softmax
  inputs: fc1
logprob:
  type: cost.logreg
  inputs: labels,probs
"""
    net = build(text, "conv1: {epsW: 0.01, epsB: 0.02, momW: 0.9, momB: 0.9, wc: 0.004}\n", shape=(1, 5, 8))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 5, 8, 1)).astype(np.float32)
    costs = net.forward({0: x, 1: np.array([0, 1, 2, 0])}, train=True)
    assert np.isfinite(costs["logprob"][0])
    net.update(net.backward(), 0.0, 0.0)
