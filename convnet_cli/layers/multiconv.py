"""`conv` and `local` with several inputs, as cuda-convnet: one filter bank per input, the outputs summed
(imagenet-2gpu-model's conv layers read the two GPUs' halves this way).

    out = sum_i conv(x_i, weights.i) + biases

Each input has its own weights (`weights.0`, `weights.1`, ... in checkpoints, shaped as the one-input layer's
`weights` for that input; `epsW`/`momW`/`wc` may be lists, one per input, as for fc); the biases are shared.
The filter geometry (filterSize, padding, stride, groups) is the layer's, for every input; the inputs may
differ in channels but must give outputs of one shape.

The one-input layer is untouched: these classes take the place of `conv` and `local` in the registry (this
module is imported after conv.py) and hand a single input straight to them. With several inputs, one
single-input view of the layer per input (its geometry inferred from that input) does the work.
"""
from __future__ import annotations

import copy

from convnet_cli.layers.base import PerInputWeights, register
from convnet_cli.layers.conv import ConvLayer, LocalLayer


class _MultiInput(PerInputWeights):
    max_inputs = None

    def _single(self):
        return next(c for c in type(self).__mro__ if c not in (type(self), _MultiInput, PerInputWeights))

    def infer_shape(self):
        base = self._single()
        if len(self.in_shapes) == 1:
            return base.infer_shape(self)
        self.parts = []
        out = None
        for name, shape in zip(self.in_names, self.in_shapes):
            part = copy.copy(self)
            part.in_shapes, part.in_names = [shape], [name]
            got = base.infer_shape(part)
            if out is not None and got != out:
                raise self.error(f"its inputs give outputs of different shapes ({'x'.join(map(str, out))} from "
                                 f"'{self.in_names[0]}', {'x'.join(map(str, got))} from '{name}'); every input of a "
                                 f"multi-input {self.type} needs the same HxW")
            out = got
            self.parts.append(part)
        self.geo = self.parts[0].geo
        return out

    def _sync(self):
        for part in self.parts:
            part.input_grads = self.input_grads

    def init_params(self, rng):
        base = self._single()
        if len(self.in_shapes) == 1:
            return base.init_params(self, rng)
        out = {}
        for i, part in enumerate(self.parts):
            p = base.init_params(part, rng)
            out[f"weights.{i}"] = p["weights"]
            if i == 0:
                out["biases"] = p["biases"]
        return out

    def param_shapes(self):
        base = self._single()
        if len(self.in_shapes) == 1:
            return base.param_shapes(self)
        out = {}
        for i, part in enumerate(self.parts):
            shapes = base.param_shapes(part)
            out[f"weights.{i}"] = shapes["weights"]
            if i == 0:
                out["biases"] = shapes["biases"]
        return out

    def to_onnx(self, g, xs, params):
        """Several inputs: one translation per input (the biases on the first), then Sum."""
        import numpy as np  # host arrays: the export's constants

        base = self._single()
        if len(xs) == 1:
            return base.to_onnx(self, g, xs, params)
        outs = []
        for i, (part, x) in enumerate(zip(self.parts, xs)):
            view = copy.copy(part)
            view.name = f"{self.name}/in{i}"
            b = params["biases"] if i == 0 else np.zeros_like(params["biases"])
            outs.append(base.to_onnx(view, g, [x], {"weights": params[f"weights.{i}"], "biases": b}))
        return g.op("Sum", outs, self.name)

    def forward(self, xs, params, ctx):
        base = self._single()
        if len(xs) == 1:
            return base.forward(self, xs, params, ctx)
        self._sync()
        zero = ctx.xp.zeros_like(params["biases"])
        out, caches = None, []
        for i, (part, x) in enumerate(zip(self.parts, xs)):
            o, cache = base.forward(part, [x], {"weights": params[f"weights.{i}"],
                                                "biases": params["biases"] if i == 0 else zero}, ctx)
            caches.append(cache)
            out = o if out is None else out.__iadd__(o)
        return self.neuron_on(out), caches  # the parts apply no neuron: the sum takes it (conv's relu)

    def backward(self, dout, cache, params, ctx):
        base = self._single()
        if len(self.in_shapes) == 1:
            return base.backward(self, dout, cache, params, ctx)
        self._sync()
        dxs, grads = [], {}
        for i, (part, c) in enumerate(zip(self.parts, cache)):
            (dx,), g = base.backward(part, dout, c, {"weights": params[f"weights.{i}"], "biases": params["biases"]},
                                     ctx)
            dxs.append(dx)
            grads[f"weights.{i}"] = g["weights"]
            if i == 0:
                grads["biases"] = g["biases"]
        return dxs, grads


@register
class MultiInputConv(_MultiInput, ConvLayer):
    """conv with one or several inputs (see the module docstring)."""


@register
class MultiInputLocal(_MultiInput, LocalLayer):
    """local with one or several inputs (see the module docstring)."""
