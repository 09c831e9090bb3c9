"""A checkpoint as an ONNX model (opset 17), for ONNX Runtime and every other ONNX consumer.

    model = checkpoint_to_onnx("runs/ConvNet__.../best.npz")      # an onnx.ModelProto
    write_model(model, "model.onnx")                               # atomically

The model takes `features`, float32 (N, C, H, W): a case exactly as make-batches writes it (and as the
feature code computes it from audio), before normalisation. Inside, it first normalises as `convnet
predict` does, (features - data_mean) / max(data_std, 1e-6) with the checkpoint's arrays, then runs the
layers that lead to the probabilities (the second input of the first cost.logreg/cost.bce, as predict
picks it), and returns `probs`, float32 (N, classes): the softmax's class probabilities, or for a
multi-label network the logistic output of each class. Metadata (`metadata_props`): label_names,
features, data_shape (JSON), convnet_version, epoch, batch, multi_label ("true" or "false").

The net computes in NHWC; the graph is NCHW, ONNX's layout, so every layer's math is restated for NCHW by
its class: `Layer.to_onnx(g, xs, params)` in convnet_cli/layers/ adds the layer's nodes to the builder `g`
below (its docstring says which ONNX operators reproduce which formula of the layer), and each Neuron's
`to_onnx(g, x, hint)` its formula. A layer whose class does not translate itself (the registered types
that do are TRANSLATORS) is refused with a one-line ConfigError that names the layer.
"""
from __future__ import annotations

import json
import os

import numpy as np

from convnet_cli import __version__
from convnet_cli.backend import to_host
from convnet_cli.errors import ConfigError, DataError
from convnet_cli.fileio import atomic_write
from convnet_cli.layers.registry import REGISTRY
from convnet_cli.predict.predict import checkpoint_multi_label, load_model

OPSET = 17
INPUT_NAME = "features"
OUTPUT_NAME = "probs"
EXTRA_HINT = "pip install 'convnet[export]'"


def require_onnx():
    """The onnx module, or a one-line ConfigError naming the extra that installs it."""
    try:
        import onnx
    except ImportError:
        raise ConfigError(f"exporting needs the onnx package, which is not installed; {EXTRA_HINT}") from None
    return onnx


# == a small graph builder over onnx.helper ================================================================
class _Graph:
    """The `g` that a layer's `to_onnx` and a neuron's get: named nodes and constants, a few shortcuts."""

    def __init__(self, onnx):
        self.onnx = onnx
        self.helper = onnx.helper
        self.nodes = []
        self.inits = []
        self._names = set()

    def name(self, hint: str) -> str:
        base = hint
        k = 1
        while hint in self._names:
            k += 1
            hint = f"{base}_{k}"
        self._names.add(hint)
        return hint

    def const(self, hint: str, array, dtype=np.float32) -> str:
        name = self.name(hint)
        self.inits.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(np.asarray(array, dtype=dtype)),
                                                            name))
        return name

    def ints(self, hint: str, values) -> str:
        return self.const(hint, np.asarray(values, dtype=np.int64), np.int64)

    def op(self, op_type: str, inputs: list, hint: str, outputs: int = 1, out_name: str | None = None, **attrs):
        """Add a node; returns its output name (a list when outputs > 1)."""
        names = [out_name or self.name(hint)] if outputs == 1 else [self.name(f"{hint}_{i}") for i in range(outputs)]
        if out_name:
            self._names.add(out_name)
        self.nodes.append(self.helper.make_node(op_type, inputs, names, name=self.name(f"{hint}/{op_type}"),
                                                **attrs))
        return names[0] if outputs == 1 else names

    # -- shortcuts --------------------------------------------------------------------------------------
    def reshape(self, x, shape, hint):
        return self.op("Reshape", [x, self.ints(f"{hint}/shape", shape)], hint)

    def transpose(self, x, perm, hint):
        return self.op("Transpose", [x], hint, perm=list(perm))

    def slice(self, x, starts, ends, axes, hint):
        return self.op("Slice", [x, self.ints(f"{hint}/starts", starts), self.ints(f"{hint}/ends", ends),
                                 self.ints(f"{hint}/axes", axes)], hint)

    def scale(self, x, a: float, hint):
        return x if a == 1 else self.op("Mul", [x, self.const(f"{hint}/a", a)], hint)

    def window_sum(self, x, channels: int, kh: int, kw: int, pads, hint):
        """Depthwise sums of x over kh x kw windows, zero padded: pads [top, left, bottom, right]."""
        ones = np.ones((channels, 1, kh, kw), np.float32)
        return self.op("Conv", [x, self.const(f"{hint}/ones", ones)], hint, kernel_shape=[kh, kw], pads=list(pads),
                       group=channels)


# The layer types export takes, by type name: the registered classes that translate themselves.
TRANSLATORS = {t: c for t, c in REGISTRY.items() if c.provides("to_onnx")}


# == the whole model =======================================================================================
def _needed(net, out_layer: str) -> list:
    """The layers `out_layer` depends on, in file order (cost layers and labels drop out)."""
    need = {out_layer}
    for l in reversed(net.layers):
        if l.name in need:
            need.update(l.in_names)
    return [l for l in net.layers if l.name in need]


def checkpoint_epoch(state: dict) -> tuple:
    """(epoch, batch) the checkpoint was written at, as its file name <epoch>.<batch>.npz says."""
    epoch = int(state.get("epoch", 0))
    if state.get("batch_in_epoch", 0) == 0 and epoch > 0:
        epoch -= 1  # the trainer counts on to the next epoch once one is finished
    return epoch, int(state.get("batchnum", 0))


def net_to_onnx(net, state: dict, out_layer: str | None = None, source: str = "checkpoint"):
    """An onnx.ModelProto of `net` (weights as they are) with the normalisation and metadata of `state`."""
    onnx = require_onnx()
    helper = onnx.helper
    out_layer = net.output_layer(out_layer)
    layers = _needed(net, out_layer)
    for l in layers:  # refuse before building anything
        if not l.is_data and l.type not in TRANSLATORS:
            raise l.not_exportable(sorted(TRANSLATORS))
    shape = tuple(int(s) for s in state["data_shape"])
    g = _Graph(onnx)
    g._names.update((INPUT_NAME, OUTPUT_NAME))  # a layer called 'probs' gets a tensor 'probs_2' inside
    mean = np.asarray(state["data_mean"], np.float32).reshape((1,) + shape)
    std = np.maximum(np.asarray(state["data_std"], np.float32).reshape((1,) + shape), 1e-6)  # as predict
    normed = g.op("Div", [g.op("Sub", [INPUT_NAME, g.const("data_mean", mean)], "normalize"),
                          g.const("data_std", std)], "normalized")
    outs = {}
    for l in layers:
        if l.is_data:
            if l.props.dataIdx != 0:
                raise ConfigError(f"layer '{l.name}': the output layer '{out_layer}' depends on labels (dataIdx "
                                  f"{l.props.dataIdx}); a deployed model has only features")
            outs[l.name] = normed
            continue
        params = {k: np.asarray(to_host(v), np.float32) for k, v in net.params[l.name].items()}
        y = l.to_onnx(g, [outs[i] for i in l.in_names], params)
        if l.neuron is not None:
            y = l.neuron.to_onnx(g, y, f"{l.name}/neuron")
        outs[l.name] = y
    c, h, w = net.by_name[out_layer].out_shape
    y = outs[out_layer]
    if h * w > 1:  # predict flattens the NHWC output: (H, W, C) order
        y = g.transpose(y, (0, 2, 3, 1), "probs/nhwc")
    k = c * h * w
    cost = net.scores_cost(out_layer)
    labels = list(state.get("label_names") or [])
    if cost is not None:
        # one probability per class, as predict gives them (layers/base.py class_probabilities)
        classes = cost.class_probabilities_onnx(g, y, len(labels))
        if classes != y:
            y, k = classes, len(labels)
    g.op("Flatten", [y], "probs", out_name=OUTPUT_NAME, axis=1)

    graph = helper.make_graph(
        g.nodes, "convnet",
        [helper.make_tensor_value_info(INPUT_NAME, onnx.TensorProto.FLOAT, ["N", *shape])],
        [helper.make_tensor_value_info(OUTPUT_NAME, onnx.TensorProto.FLOAT, ["N", k])],
        initializer=g.inits,
        doc_string=f"features (N, C, H, W) as make-batches writes a case, normalised inside; probs = the output "
                   f"of layer '{out_layer}'")
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="convnet",
                              producer_version=__version__,
                              doc_string=f"convnet network from {os.path.basename(source)}")
    # the IR version of opset 17 (onnx 1.12), so that runtimes older than the onnx package can load it
    model.ir_version = 8
    epoch, batch = checkpoint_epoch(state)
    meta = {
        "label_names": json.dumps(labels),
        "features": json.dumps(state.get("features")),
        "data_shape": json.dumps(list(shape)),
        "convnet_version": __version__,
        "epoch": str(epoch),
        "batch": str(batch),
        "output_layer": out_layer,
        "normalization": "inside the model: (features - data_mean) / max(data_std, 1e-6)",
        # true: probs are one logistic output per class, each case a set of classes (SPEC 17); false: softmax
        "multi_label": "true" if checkpoint_multi_label(state) else "false",
    }
    helper.set_model_props(model, meta)
    onnx.checker.check_model(model)
    return model


def checkpoint_to_onnx(checkpoint, out_layer: str | None = None):
    """An onnx.ModelProto of a checkpoint file or run directory (best.npz, else the newest)."""
    require_onnx()
    net, ckpt = load_model(checkpoint, "cpu")
    return net_to_onnx(net, ckpt.state, out_layer, ckpt.path), ckpt


def write_model(model, path: str) -> str:
    """Serialize to `path` atomically (temp file + rename; the temp removed on failure)."""
    if os.path.isdir(path):
        raise DataError(f"{path}: is a folder; give --out a file name such as model.onnx")
    if model.ByteSize() >= 2 ** 31:
        raise DataError(f"{path}: the model is {model.ByteSize() / 2 ** 30:.1f} GiB, beyond the 2 GiB that one ONNX "
                        f"file can hold; export a smaller network")
    data = model.SerializeToString()
    atomic_write(path, lambda f: f.write(data))
    return path
