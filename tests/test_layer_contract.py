"""What a layer class declares about itself besides its math (layers/base.py): `param_shapes` gives exactly
the shapes `init_params` draws, without drawing (config/limits.py sizes a layer by it), for every layer type
of the test nets, the starter configs and the cuda-convnet fixtures; `show --filters` and export take the
types whose class says so."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import yaml

from convnet_cli.config.layer_def import build_layers
from convnet_cli.config.limits import MAX_WEIGHT_VALUES, weight_values
from convnet_cli.config.loader import parse_layer_def_text
from convnet_cli.errors import ConfigError
from convnet_cli.layers.base import Layer
from convnet_cli.layers.registry import REGISTRY
from tests.helpers import make_layer
from tests.test_export import CONFIGS, LAYER_NETS, _features_for, _starters, net

FIX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
# (file, data shape (C, H, W)) of the cuda-convnet fixtures, as their headers say
CFG_FIXTURES = {"layers-18pct.cfg": (3, 32, 32), "layers-2gpu-model.cfg": (1, 16, 38),
                "layers-convnet2.cfg": (1, 40, 101), "layers-example-cnorm.cfg": (1, 16, 38)}

# Single layers through the key parser: the variants of each type that change its parameters' shapes.
MADE = {
    "conv_shared": ("conv", [(4, 7, 6)], dict(filters=6, filterSize=3, padding=1, groups=2)),
    "conv_unshared": ("conv", [(3, 7, 6)], dict(filters=4, filterSize=[3, 2], stride=2, sharedBiases=0)),
    "conv_two_inputs": ("conv", [(3, 6, 6), (2, 6, 6)], dict(filters=4, filterSize=3, padding=1)),
    "local_unshared": ("local", [(4, 6, 5)], dict(filters=4, filterSize=2, groups=2)),
    "local_shared": ("local", [(2, 6, 5)], dict(filters=3, filterSize=[3, 2], padding=1, sharedBiases=1)),
    "local_two_inputs": ("local", [(2, 5, 5), (3, 5, 5)], dict(filters=2, filterSize=2)),
    "fc": ("fc", [(3, 4, 5)], dict(outputs=7)),
    "fc_three_inputs": ("fc", [(3, 4, 5), (2, 1, 1), (1, 2, 2)], dict(outputs=4, initW=[0.1, 0.2, 0.3])),
    "batchnorm": ("batchnorm", [(5, 3, 4)], {}),
    "rnn": ("rnn", [(2, 3, 7)], dict(outputs=5)),
    "lstm_bidirectional": ("lstm", [(2, 3, 7)], dict(outputs=4, bidirectional=1)),
    "gru_reverse": ("gru", [(1, 6, 7)], dict(outputs=3, reverse=1)),
    "gru_bidirectional": ("gru", [(2, 3, 5)], dict(outputs=3, bidirectional=1, init="pytorch")),
    "pool": ("pool", [(2, 6, 6)], dict(pool="max", sizeX=2)),
    "softmax": ("softmax", [(3, 1, 1)], {}),
    "cost.sum2": ("cost.sum2", [(3, 2, 2)], {}),
}


def _shapes_drawn(layer) -> dict:
    return {k: v.shape for k, v in layer.init_params(np.random.default_rng(0)).items()}


def _check(layer):
    declared = layer.param_shapes()
    assert declared == _shapes_drawn(layer), f"{layer.type} layer '{layer.name}'"
    assert all(type(d) is int for shape in declared.values() for d in shape), declared


def _net_layers():
    """(case, built layers) of every test net, starter config and cuda-convnet fixture."""
    for name, (text, shape) in sorted(LAYER_NETS.items()):
        yield f"export:{name}", build_layers(parse_layer_def_text(text), shape)
    from convnet_cli.ingest.features import FeatureSpec

    for name in _starters():
        feats = _features_for(name)
        shape = FeatureSpec.from_dict(yaml.safe_load(open(feats)), feats).shape if feats else (3, 32, 32)
        path = os.path.join(CONFIGS, f"{name}.yaml")
        yield f"starter:{name}", build_layers(parse_layer_def_text(open(path).read(), path), shape)
    for name, shape in CFG_FIXTURES.items():
        path = os.path.join(FIX, name)
        yield f"cfg:{name}", build_layers(parse_layer_def_text(open(path).read(), path), shape, name)


@pytest.mark.parametrize("case", sorted(MADE))
def test_param_shapes_are_what_init_params_draws(case):
    type_name, in_shapes, keys = MADE[case]
    _check(make_layer(type_name, in_shapes, **keys))


def test_param_shapes_of_every_layer_of_every_config():
    seen = set()
    for case, layers in _net_layers():
        for layer in layers:
            _check(layer)
            seen.add(layer.type)
    seen.update(t for t, _, _ in MADE.values())
    assert seen >= set(REGISTRY), f"no config has a layer of type {sorted(set(REGISTRY) - seen)}"


def test_weight_limit_counts_the_declared_shapes():
    layer = make_layer("gru", [(2, 3, 5)], outputs=3, bidirectional=1)
    assert weight_values(layer) == sum(math.prod(s) for s in _shapes_drawn(layer).values())
    layer = make_layer("local", [(2, 6, 5)], filters=3, filterSize=2)
    assert weight_values(layer) == sum(math.prod(s) for s in _shapes_drawn(layer).values())
    # an lstm whose output is small but whose weights are not: refused before a weight is drawn
    huge = net("r1: {type: lstm, inputs: data, outputs: 30000}\n", "r1")
    assert 4 * 30000 * (2 * 3 + 30000) > MAX_WEIGHT_VALUES
    with pytest.raises(ConfigError, match=r"layers.yaml: layer 'r1': its weights would hold 3.6e\+09 values"):
        build_layers(parse_layer_def_text(huge), (2, 3, 5))


def test_filters_and_onnx_are_offered_by_the_classes_that_have_them():
    with_filters = sorted(t for t, c in REGISTRY.items() if c.provides("filter_bank"))
    assert with_filters == ["conv", "fc", "local"]
    assert not Layer.provides("to_onnx")
    assert REGISTRY["conv"].provides("to_onnx") and not REGISTRY["data"].provides("to_onnx")
    pool = make_layer("pool", [(2, 6, 6)], pool="max", sizeX=2)
    assert pool.filter_bank({"weights": np.zeros((1, 1))}) is None
