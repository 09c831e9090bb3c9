"""A checkpoint as an ONNX model (opset 17), for ONNX Runtime and every other ONNX consumer.

    model = checkpoint_to_onnx("runs/ConvNet__.../best.npz")      # an onnx.ModelProto
    write_model(model, "model.onnx")                               # atomically

The model takes `features`, float32 (N, C, H, W): a case exactly as make-batches writes it (and as the
feature code computes it from audio), before normalisation. Inside, it first normalises as `convnet
predict` does, (features - data_mean) / max(data_std, 1e-6) with the checkpoint's arrays, then runs the
layers that lead to the probabilities (the second input of the first cost.logreg/cost.bce, as predict
picks it), and returns `probs`, float32 (N, classes). Metadata (`metadata_props`): label_names,
features, data_shape (JSON), convnet_version, epoch, batch.

The net computes in NHWC; the graph is NCHW, ONNX's layout, so every layer's math is restated here for
NCHW, and each translation says which ONNX operators reproduce which formula of convnet_cli/layers/:

  conv      Conv (groups, pads, strides); an unshared bias (F, Ho, Wo) is an Add after it.
  conv/local with several inputs: one translation per input (the bias on the first), then Sum.
  cnorm     composed: d = x - windowsum(x)/size^2, x * (minDiv + scale/size^2 * windowsum(d^2))^-pow.
  pass      identity; several inputs: Concat on C.
  local     patches by a Conv with one-hot filters (the unfold order (channel, row, column), exact: each
            output is one input pixel times 1 plus zeros), then one batched MatMul over the positions.
  pool      MaxPool / AveragePool(count_include_pad=0) with the pads that cuda-convnet's ceil rule implies
            (truncated windows: the pads are never counted), `start` > 0 by a Slice, < 0 by a leading pad,
            outputsX by a Slice of the output; sizeX 'all' by GlobalMaxPool / GlobalAveragePool.
  cmrnorm   LRN for odd sizes (same window, alpha/size scaling, bias = minDiv); an even size puts one
            more channel before than after, where ONNX's LRN puts it after: there it is composed.
  rnorm     composed: x * (minDiv + scale/size^2 * windowsum(x^2))^-pow, the window sum a depthwise
            Conv of ones (zero padded, as the layer clips its windows).
  rnn/lstm/gru  RNN / LSTM / GRU. PyTorch's gate blocks (what the layers use) are reordered to ONNX's:
            LSTM i,f,g,o -> i,o,f,c; GRU r,z,n -> z,r,h with linear_before_reset=1 (b_hn inside r's
            product, as PyTorch). `reverse` = direction 'reverse'; bidirectional = 'bidirectional', whose
            backward outputs ONNX, like the layer, aligns with the original time steps.
  seqpool   Slice (last), ReduceSum, ReduceMean, ReduceMax over W.
  fc        Flatten in (C, H, W) order, Gemm per input (transB), summed.
  others    batchnorm: BatchNormalization (running statistics); dropout: identity; eltsum: Mul + Sum;
            eltmax: Max; concat: Concat on C; softmax: Softmax on C; neurons by their formulas.

A layer type not in TRANSLATORS (one another module registers later) is refused with a one-line
ConfigError that names the layer.
"""
from __future__ import annotations

import json
import os

import numpy as np

from convnet_cli import __version__
from convnet_cli.backend import to_host
from convnet_cli.errors import ConfigError, DataError
from convnet_cli.fileio import atomic_write
from convnet_cli.predict.predict import load_model

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


# == neurons ================================================================================================
def _neuron(g: _Graph, fn, x: str, hint: str) -> str:
    """y = fn(x) for a convnet_cli.layers.neurons.Neuron, element-wise."""
    name, args = fn.name, fn.args
    if name == "ident":
        return x
    if name == "relu":
        return g.op("Relu", [x], hint)
    if name == "logistic":
        return g.op("Sigmoid", [x], hint)
    if name == "tanh":  # a * tanh(b * x)
        a, b = args
        return g.scale(g.op("Tanh", [g.scale(x, b, f"{hint}/b")], hint), a, f"{hint}/a")
    if name == "abs":
        return g.op("Abs", [x], hint)
    if name == "softrelu":  # max(x, 0) + log(1 + exp(-|x|)): no overflow, as the layer computes it
        e = g.op("Exp", [g.op("Neg", [g.op("Abs", [x], hint)], hint)], hint)
        return g.op("Add", [g.op("Relu", [x], hint), g.op("Log", [g.op("Add", [e, g.const(f"{hint}/one", 1.0)], hint)],
                                                           hint)], hint)
    if name == "square":
        return g.op("Mul", [x, x], hint)
    if name == "sqrt":
        return g.op("Sqrt", [x], hint)
    if name == "brelu":  # min(max(x, 0), a)
        return g.op("Clip", [x, g.const(f"{hint}/lo", 0.0), g.const(f"{hint}/hi", args[0])], hint)
    if name == "linear":  # a x + b
        a, b = args
        y = g.scale(x, a, hint)
        return y if b == 0 else g.op("Add", [y, g.const(f"{hint}/b", b)], hint)
    if name == "elu":
        return g.op("Elu", [x], hint, alpha=float(args[0]))
    if name == "leakyrelu":
        return g.op("LeakyRelu", [x], hint, alpha=float(args[0]))
    raise ConfigError(f"neuron '{fn!r}' ({hint}) cannot be exported to ONNX")


# == layers: each translator (graph, layer, input names, params) -> output name, NCHW ========================
def _conv(g, layer, xs, p):
    geo = layer.geo
    w = p["weights"]
    b = p["biases"]
    attrs = dict(kernel_shape=[geo.fh, geo.fw], pads=[geo.ph, geo.pw, geo.ph, geo.pw], strides=[geo.sh, geo.sw],
                 group=geo.g)
    n = layer.name
    if b.ndim == 1:
        return g.op("Conv", [xs[0], g.const(f"{n}/weights", w), g.const(f"{n}/biases", b)], n, **attrs)
    y = g.op("Conv", [xs[0], g.const(f"{n}/weights", w)], n, **attrs)
    return g.op("Add", [y, g.const(f"{n}/biases", b[None])], n)


def _local(g, layer, xs, p):
    geo = layer.geo
    n = layer.name
    k2 = geo.fh * geo.fw
    kg = geo.cg * k2
    pos = geo.ho * geo.wo
    # one-hot filters: output channel c*fh*fw + i*fw + j copies pixel (i, j) of channel c (unfold's order)
    eye = np.zeros((geo.c * k2, 1, geo.fh, geo.fw), np.float32)
    for c in range(geo.c):
        for i in range(geo.fh):
            for j in range(geo.fw):
                eye[c * k2 + i * geo.fw + j, 0, i, j] = 1
    patches = g.op("Conv", [xs[0], g.const(f"{n}/unfold", eye)], f"{n}/patches", kernel_shape=[geo.fh, geo.fw],
                   pads=[geo.ph, geo.pw, geo.ph, geo.pw], strides=[geo.sh, geo.sw], group=geo.c)
    cols = g.transpose(g.reshape(patches, [0, geo.g, kg, pos], f"{n}/cols"), (1, 3, 0, 2), f"{n}/cols")  # (g,P,N,Kg)
    w = p["weights"].reshape(pos, geo.g, geo.fg, kg).transpose(1, 0, 3, 2)  # (g, P, Kg, Fg)
    y = g.op("MatMul", [cols, g.const(f"{n}/weights", w)], n)  # (g, P, N, Fg)
    y = g.reshape(g.transpose(y, (2, 0, 3, 1), n), [0, geo.f, geo.ho, geo.wo], n)
    b = p["biases"]
    b = b.reshape(1, geo.f, 1, 1) if b.ndim == 1 else b[None]
    return g.op("Add", [y, g.const(f"{n}/biases", b)], n)


def _pool(g, layer, xs, p):
    n = layer.name
    is_max = layer.props.pool == "max"
    if layer.is_global:
        return g.op("GlobalMaxPool" if is_max else "GlobalAveragePool", [xs[0]], n)
    _, h, w = layer.in_shapes[0]
    _, oh, ow = layer.out_shape
    (kh, kw), (sh, sw), start = layer.size, layer.stride, layer.start
    x = xs[0]
    if start > 0:  # windows begin `start` pixels in: the first ones are never read
        x = g.slice(x, [start, start], [h, w], [2, 3], f"{n}/start")
    pads, counts = [], []
    for size, k, s, o in ((h, kh, sh, oh), (w, kw, sw, ow)):
        eff = size - max(start, 0)
        before = max(0, -start)
        after = max(0, (o - 1) * s + k - (eff + before))  # the last window's overhang (ceil rule)
        pads.append((before, after))
        counts.append((eff + before + after - k) // s + 1)
    attrs = dict(kernel_shape=[kh, kw], strides=[sh, sw],
                 pads=[pads[0][0], pads[1][0], pads[0][1], pads[1][1]])
    if is_max:
        y = g.op("MaxPool", [x], n, **attrs)
    else:  # the divisor counts only the pixels inside the input, as cuda-convnet's truncated windows
        y = g.op("AveragePool", [x], n, count_include_pad=0, **attrs)
    if counts != [oh, ow]:  # a given outputsX below what the windows allow
        y = g.slice(y, [0, 0], [oh, ow], [2, 3], f"{n}/outputsX")
    return y


def _window_sum_conv(g, x2, channels, kh, kw, pads, hint):
    """Depthwise sums of x2 over kh x kw windows, zero padded: pads [top, left, bottom, right]."""
    ones = np.ones((channels, 1, kh, kw), np.float32)
    return g.op("Conv", [x2, g.const(f"{hint}/ones", ones)], hint, kernel_shape=[kh, kw], pads=list(pads),
                group=channels)


def _response_norm(g, layer, xs, p):
    n = layer.name
    hyp = layer.hyper
    size = layer.props.size
    c, h, w = layer.in_shapes[0]
    x = xs[0]
    before, after = size // 2, size - 1 - size // 2
    if layer.type == "cmrnorm" and before == after:
        return g.op("LRN", [x], n, size=size, alpha=float(hyp.scale), beta=float(hyp.pow), bias=float(hyp.minDiv))
    x2 = g.op("Mul", [x, x], f"{n}/square")
    if layer.type == "rnorm":
        sums = _window_sum_conv(g, x2, c, size, size, [before, before, after, after], f"{n}/sum")
    else:  # channels as a spatial axis: (N, 1, C, H*W), summed over `size` rows
        col = g.reshape(x2, [0, 1, c, h * w], f"{n}/channels")
        sums = g.reshape(_window_sum_conv(g, col, 1, size, 1, [before, 0, after, 0], f"{n}/sum"), [0, c, h, w],
                         f"{n}/sum")
    denom = g.op("Add", [g.const(f"{n}/minDiv", hyp.minDiv),
                         g.op("Mul", [sums, g.const(f"{n}/scale", hyp.scale / layer.window_count)], f"{n}/denom")],
                 f"{n}/denom")
    return g.op("Mul", [x, g.op("Pow", [denom, g.const(f"{n}/pow", -hyp.pow)], f"{n}/pow")], n)


def _contrast_norm(g, layer, xs, p):
    """cnorm composed: d = x - windowsum(x)/n; x * (minDiv + scale/n * windowsum(d^2))^-pow (layers/cnorm.py)."""
    n = layer.name
    hyp = layer.hyper
    size = layer.props.size
    c = layer.in_shapes[0][0]
    before, after = size // 2, size - 1 - size // 2
    pads = [before, before, after, after]
    area = float(size * size)
    x = xs[0]
    mean = g.op("Mul", [_window_sum_conv(g, x, c, size, size, pads, f"{n}/mean"), g.const(f"{n}/inv_area", 1 / area)],
                f"{n}/mean")
    d = g.op("Sub", [x, mean], f"{n}/diff")
    sums = _window_sum_conv(g, g.op("Mul", [d, d], f"{n}/square"), c, size, size, pads, f"{n}/sum")
    denom = g.op("Add", [g.const(f"{n}/minDiv", hyp.minDiv),
                         g.op("Mul", [sums, g.const(f"{n}/scale", hyp.scale / area)], f"{n}/denom")], f"{n}/denom")
    return g.op("Mul", [x, g.op("Pow", [denom, g.const(f"{n}/pow", -hyp.pow)], f"{n}/pow")], n)


def _per_input(single):
    """conv/local with several inputs (layers/multiconv.py): one translation per input, then Sum."""
    def translate(g, layer, xs, p):
        if len(xs) == 1:
            return single(g, layer, xs, p)
        import copy

        outs = []
        for i, (part, x) in enumerate(zip(layer.parts, xs)):
            view = copy.copy(part)
            view.name = f"{layer.name}/in{i}"
            b = p["biases"] if i == 0 else np.zeros_like(p["biases"])
            outs.append(single(g, view, [x], {"weights": p[f"weights.{i}"], "biases": b}))
        return g.op("Sum", outs, layer.name)
    return translate


def _batchnorm(g, layer, xs, p):
    n = layer.name
    return g.op("BatchNormalization", [xs[0], g.const(f"{n}/gamma", p["gamma"]), g.const(f"{n}/beta", p["beta"]),
                                       g.const(f"{n}/running_mean", p["running_mean"]),
                                       g.const(f"{n}/running_var", p["running_var"])], n,
                epsilon=float(layer.props.epsilon))


def _fc(g, layer, xs, p):
    n = layer.name
    terms = []
    for x, wname in zip(xs, layer.weight_names):
        flat = g.op("Flatten", [x], f"{n}/flatten", axis=1)  # NCHW flattened: the (C, H, W) order of the weights
        terms.append(g.op("Gemm", [flat, g.const(f"{n}/{wname}", p[wname])], f"{n}/{wname}", transB=1))
    y = terms[0] if len(terms) == 1 else g.op("Sum", terms, f"{n}/sum")
    y = g.op("Add", [y, g.const(f"{n}/biases", p["biases"])], n)
    return g.reshape(y, [0, layer.props.outputs, 1, 1], n)


def _eltsum(g, layer, xs, p):
    n = layer.name
    terms = [g.scale(x, float(c), f"{n}/coeff{i}") for i, (x, c) in enumerate(zip(xs, layer.coeffs))]
    return g.op("Sum", terms, n)


def _recurrent(g, layer, xs, p):
    n = layer.name
    c, h, w = layer.in_shapes[0]
    units = layer.props.outputs
    # (N, C, H, W) -> (W, N, C*H): step t is case n's column t, flattened in (C, H) order (to_sequence)
    seq = g.reshape(g.transpose(xs[0], (3, 0, 1, 2), f"{n}/seq"), [0, 0, c * h], f"{n}/seq")
    blocks = {"lstm": [0, 3, 1, 2], "gru": [1, 0, 2], "rnn": [0]}[layer.type]  # PyTorch's -> ONNX's gate order

    def reorder(a):
        return np.concatenate([a[k * units:(k + 1) * units] for k in blocks], axis=0)

    suffixes = [s for s, _ in layer._directions()]
    wi = np.stack([reorder(p["weight_ih" + s]) for s in suffixes])
    wh = np.stack([reorder(p["weight_hh" + s]) for s in suffixes])
    bias = np.stack([np.concatenate([reorder(p["bias_ih" + s]), reorder(p["bias_hh" + s])]) for s in suffixes])
    if layer.props.bidirectional:
        direction = "bidirectional"
    else:
        direction = "reverse" if layer.props.reverse else "forward"
    attrs = dict(hidden_size=units, direction=direction)
    op = layer.type.upper()
    if op == "GRU":
        attrs["linear_before_reset"] = 1
    elif op == "RNN":
        attrs["activations"] = [{"tanh": "Tanh", "relu": "Relu"}[layer.fn.name]] * len(suffixes)
    ys = g.op(op, [seq, g.const(f"{n}/W", wi), g.const(f"{n}/R", wh), g.const(f"{n}/B", bias)], n,
              outputs=2 if op != "LSTM" else 3, **attrs)
    # Y: (W, D, N, units) -> (N, D*units, 1, W), the forward direction's units first
    y = g.transpose(ys[0], (2, 1, 3, 0), f"{n}/out")
    return g.reshape(y, [0, units * len(suffixes), 1, w], f"{n}/out")


def _seqpool(g, layer, xs, p):
    n = layer.name
    kind = layer.props.pool
    w = layer.in_shapes[0][2]
    if kind == "last":
        return g.slice(xs[0], [w - 1], [w], [3], n)
    if kind == "sum":
        return g.op("ReduceSum", [xs[0], g.ints(f"{n}/axes", [3])], n, keepdims=1)
    return g.op("ReduceMean" if kind == "mean" else "ReduceMax", [xs[0]], n, axes=[3], keepdims=1)


TRANSLATORS = {
    "conv": _per_input(_conv),
    "local": _per_input(_local),
    "cnorm": _contrast_norm,
    "pass": lambda g, layer, xs, p: xs[0] if len(xs) == 1 else g.op("Concat", list(xs), layer.name, axis=1),
    "pool": _pool,
    "rnorm": _response_norm,
    "cmrnorm": _response_norm,
    "batchnorm": _batchnorm,
    "fc": _fc,
    "neuron": lambda g, layer, xs, p: _neuron(g, layer.fn, xs[0], layer.name),
    "dropout": lambda g, layer, xs, p: xs[0],  # inverted dropout: the identity at test time
    "eltsum": _eltsum,
    "eltmax": lambda g, layer, xs, p: g.op("Max", list(xs), layer.name),
    "concat": lambda g, layer, xs, p: g.op("Concat", list(xs), layer.name, axis=1),
    "softmax": lambda g, layer, xs, p: g.op("Softmax", [xs[0]], layer.name, axis=1),
    "rnn": _recurrent,
    "lstm": _recurrent,
    "gru": _recurrent,
    "seqpool": _seqpool,
}


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
        if l.type != "data" and l.type not in TRANSLATORS:
            prefix = f"{l.source}: " if l.source else ""
            raise ConfigError(f"{prefix}layer '{l.name}': type '{l.type}' cannot be exported to ONNX (no ONNX operator "
                              f"reproduces it); export supports {', '.join(sorted(TRANSLATORS))}")
    shape = tuple(int(s) for s in state["data_shape"])
    g = _Graph(onnx)
    g._names.update((INPUT_NAME, OUTPUT_NAME))  # a layer called 'probs' gets a tensor 'probs_2' inside
    mean = np.asarray(state["data_mean"], np.float32).reshape((1,) + shape)
    std = np.maximum(np.asarray(state["data_std"], np.float32).reshape((1,) + shape), 1e-6)  # as predict
    normed = g.op("Div", [g.op("Sub", [INPUT_NAME, g.const("data_mean", mean)], "normalize"),
                          g.const("data_std", std)], "normalized")
    outs = {}
    for l in layers:
        if l.type == "data":
            if l.props.dataIdx != 0:
                raise ConfigError(f"layer '{l.name}': the output layer '{out_layer}' depends on labels (dataIdx "
                                  f"{l.props.dataIdx}); a deployed model has only features")
            outs[l.name] = normed
            continue
        params = {k: np.asarray(to_host(v), np.float32) for k, v in net.params[l.name].items()}
        y = TRANSLATORS[l.type](g, l, [outs[i] for i in l.in_names], params)
        if getattr(l, "neuron", None) is not None:
            y = _neuron(g, l.neuron, y, f"{l.name}/neuron")
        outs[l.name] = y
    c, h, w = net.by_name[out_layer].out_shape
    y = outs[out_layer]
    if h * w > 1:  # predict flattens the NHWC output: (H, W, C) order
        y = g.transpose(y, (0, 2, 3, 1), "probs/nhwc")
    g.op("Flatten", [y], "probs", out_name=OUTPUT_NAME, axis=1)

    k = c * h * w
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
    labels = list(state.get("label_names") or [])
    meta = {
        "label_names": json.dumps(labels),
        "features": json.dumps(state.get("features")),
        "data_shape": json.dumps(list(shape)),
        "convnet_version": __version__,
        "epoch": str(epoch),
        "batch": str(batch),
        "output_layer": out_layer,
        "normalization": "inside the model: (features - data_mean) / max(data_std, 1e-6)",
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
