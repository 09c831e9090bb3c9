"""The forward-only inference path: Net.forward(keep_cache=False), as predict uses it."""
from __future__ import annotations

import numpy as np
import pytest

from convnet_cli.layers.base import Context
from convnet_cli.layers.pool import pool_forward_numpy
from convnet_cli.net import Net
from tests.helpers import make_layer, nhwc

NET = """\
data: {type: data, dataIdx: 0}
labels: {type: data, dataIdx: 1}
conv1: {type: conv, inputs: data, filters: 8, filterSize: 3, padding: 1, initW: 0.1}
bn1: {type: batchnorm, inputs: conv1, neuron: relu}
pool1: {type: pool, inputs: bn1, pool: max, sizeX: 3, stride: 2}
conv2: {type: conv, inputs: pool1, filters: 16, filterSize: 3, padding: 1, initW: 0.1, neuron: relu}
conv3: {type: conv, inputs: pool1, filters: 16, filterSize: 1, initW: 0.1}
sum: {type: eltsum, inputs: [conv2, conv3]}
pool2: {type: pool, inputs: sum, pool: avg, sizeX: all}
fc1: {type: fc, inputs: pool2, outputs: 4, initW: 0.1}
probs: {type: softmax, inputs: fc1}
logprob: {type: cost.logreg, inputs: [labels, probs]}
"""
SHAPE = (1, 16, 20)


def make_net():
    net = Net.from_text(NET, "", SHAPE, seed=3)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 16, 20, 1)).astype(np.float32)
    y = rng.integers(0, 4, 6)
    net.forward({0: x, 1: y}, train=True)  # batchnorm running statistics that are not the initial ones
    net.update(net.backward(), progress=0.0, epoch=0.0)
    return net, x, y


def test_inference_gives_the_same_outputs_and_costs():
    net, x, y = make_net()
    costs = net.forward({0: x, 1: y}, train=False)
    want = {k: v.copy() for k, v in net.outputs.items() if v is not None and k != "labels"}
    got_costs = net.forward({0: x, 1: y}, train=False, keep_cache=False)
    assert got_costs == costs
    np.testing.assert_array_equal(net.outputs["probs"], want["probs"])
    net.forward({0: x}, train=False, keep_cache=False, keep=("fc1", "pool1"))
    for name in ("probs", "fc1", "pool1"):
        np.testing.assert_array_equal(net.outputs[name], want[name], err_msg=name)


def test_inference_drops_intermediate_outputs_and_caches():
    net, x, _ = make_net()
    net.forward({0: x}, train=False, keep_cache=False)
    # read only by later layers: gone; probs (and fc1, for the fused softmax + logreg) feed the cost
    for name in ("conv1", "bn1", "pool1", "conv2", "conv3", "sum", "pool2"):
        assert net.outputs[name] is None, name
    assert net.outputs["probs"] is not None and net.outputs["fc1"] is not None
    with pytest.raises(RuntimeError, match="keep_cache=False"):
        net.backward()
    # a training step afterwards works as ever
    net.forward({0: x, 1: np.zeros(len(x), dtype=np.int64)}, train=True)
    assert set(net.backward()) >= {"conv1", "conv2", "conv3", "fc1"}


@pytest.mark.parametrize("keys", [dict(sizeX=3, stride=2), dict(sizeX=2), dict(sizeX=3, stride=2, start=-1)])
def test_max_pool_without_argmax_matches(keys):
    layer = make_layer("pool", [(5, 9, 11)], pool="max", **keys)
    x = nhwc((5, 9, 11), n=3, dtype=np.float32)
    out, idx = pool_forward_numpy(x, layer, True)
    fast, none = pool_forward_numpy(x, layer, True, want_idx=False)
    assert none is None and idx is not None
    np.testing.assert_array_equal(fast, out)
    ctx = Context(xp=np, keep_cache=False)
    np.testing.assert_array_equal(layer.forward([x], {}, ctx)[0], out)
