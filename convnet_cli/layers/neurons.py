"""Neurons (element-wise activations) in cuda-convnet syntax, and the `neuron` layer type.

`parse_neuron('tanh[1.7159,0.6667]')` -> a Neuron; any layer with inputs may carry `neuron:` and the net
applies it to that layer's output. Each Neuron keeps what its backward needs in a cache.
"""
from __future__ import annotations

import re

from convnet_cli.errors import ConfigError, did_you_mean
from convnet_cli.layers.base import Key, Layer, register

_SYNTAX = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_]*)\s*(?:\[([^\]]*)\])?\s*$")


class Neuron:
    name = ""
    nargs = 0
    defaults: tuple = ()

    def __init__(self, *args: float):
        self.args = args

    def forward(self, x, xp):
        """x: any shape -> (y, cache)."""
        raise NotImplementedError

    def backward(self, dy, cache, xp):
        raise NotImplementedError

    def to_onnx(self, g, x: str, hint: str) -> str:
        """y = fn(x) element-wise in an ONNX graph (g: export/onnx.py's builder); the name of y."""
        raise ConfigError(f"neuron '{self!r}' ({hint}) cannot be exported to ONNX")

    # A neuron whose backward cache is its output may define forward_inplace(x): x (NumPy) becomes the
    # output, in place. Layers with `fuses_neuron` call it on each chunk of their output (see base.py).
    forward_inplace = None

    def __repr__(self):
        return self.name + (f"[{','.join(f'{a:g}' for a in self.args)}]" if self.args else "")


class Ident(Neuron):
    name = "ident"

    def forward(self, x, xp):
        return x, None

    def backward(self, dy, cache, xp):
        return dy

    def to_onnx(self, g, x, hint):
        return x


# Above this size a relu on the CPU runs in cache-sized chunks of cases on convnet's threads
# (pool.run_chunks, cpu_threads.py): numpy's own loops use one core.
_THREADED_BYTES = 4 << 20


def _threaded(xp, a) -> bool:
    return xp.__name__ == "numpy" and a.ndim > 1 and a.nbytes >= _THREADED_BYTES


class Relu(Neuron):
    name = "relu"

    def forward(self, x, xp):
        if not _threaded(xp, x):
            y = xp.maximum(x, 0)
            return y, y
        from convnet_cli.layers.pool import run_chunks

        y = xp.empty_like(x)
        run_chunks(lambda n0, n1: xp.maximum(x[n0:n1], 0, out=y[n0:n1]), x.shape[0], x[0].nbytes, xp)
        return y, y

    def forward_inplace(self, x):
        """x (NumPy, a chunk of a layer's output) -> relu(x), in place; the cache of backward is x."""
        import numpy as np

        np.maximum(x, 0, out=x)

    def backward(self, dy, y, xp):
        if not _threaded(xp, dy):
            return dy * (y > 0)
        from convnet_cli.layers.pool import run_chunks

        dx = xp.empty_like(dy)
        run_chunks(lambda n0, n1: xp.multiply(dy[n0:n1], y[n0:n1] > 0, out=dx[n0:n1]), dy.shape[0], dy[0].nbytes,
                   xp)
        return dx

    def to_onnx(self, g, x, hint):
        return g.op("Relu", [x], hint)


class Logistic(Neuron):
    name = "logistic"

    def forward(self, x, xp):
        # exp of a non-positive number never overflows
        e = xp.exp(-xp.abs(x))
        y = xp.where(x >= 0, 1 / (1 + e), e / (1 + e))
        return y, y

    def backward(self, dy, y, xp):
        return dy * y * (1 - y)

    def to_onnx(self, g, x, hint):
        return g.op("Sigmoid", [x], hint)


class Tanh(Neuron):
    """a * tanh(b * x), cuda-convnet's tanh[a,b]."""

    name = "tanh"
    nargs = 2
    defaults = (1.0, 1.0)

    def forward(self, x, xp):
        a, b = self.args
        t = xp.tanh(b * x)
        return (a * t if a != 1 else t), t

    def backward(self, dy, t, xp):
        a, b = self.args
        return dy * (a * b) * (1 - t * t)

    def to_onnx(self, g, x, hint):
        a, b = self.args
        return g.scale(g.op("Tanh", [g.scale(x, b, f"{hint}/b")], hint), a, f"{hint}/a")


class Abs(Neuron):
    name = "abs"

    def forward(self, x, xp):
        return xp.abs(x), x

    def backward(self, dy, x, xp):
        return dy * xp.sign(x)

    def to_onnx(self, g, x, hint):
        return g.op("Abs", [x], hint)


class SoftRelu(Neuron):
    """log(1 + e^x), computed without overflow."""

    name = "softrelu"

    def forward(self, x, xp):
        return xp.maximum(x, 0) + xp.log1p(xp.exp(-xp.abs(x))), x

    def backward(self, dy, x, xp):
        e = xp.exp(-xp.abs(x))
        sig = xp.where(x >= 0, 1 / (1 + e), e / (1 + e))
        return dy * sig

    def to_onnx(self, g, x, hint):
        """max(x, 0) + log(1 + exp(-|x|)): no overflow, as forward computes it."""
        e = g.op("Exp", [g.op("Neg", [g.op("Abs", [x], hint)], hint)], hint)
        return g.op("Add", [g.op("Relu", [x], hint), g.op("Log", [g.op("Add", [e, g.const(f"{hint}/one", 1.0)], hint)],
                                                           hint)], hint)


class Square(Neuron):
    name = "square"

    def forward(self, x, xp):
        return x * x, x

    def backward(self, dy, x, xp):
        return dy * 2 * x

    def to_onnx(self, g, x, hint):
        return g.op("Mul", [x, x], hint)


class Sqrt(Neuron):
    name = "sqrt"

    def forward(self, x, xp):
        y = xp.sqrt(x)
        return y, y

    def backward(self, dy, y, xp):
        return dy / (2 * y)

    def to_onnx(self, g, x, hint):
        return g.op("Sqrt", [x], hint)


class BRelu(Neuron):
    """Bounded relu: min(max(x, 0), a)."""

    name = "brelu"
    nargs = 1
    defaults = (1.0,)

    def forward(self, x, xp):
        return xp.clip(x, 0, self.args[0]), x

    def backward(self, dy, x, xp):
        return dy * ((x > 0) & (x < self.args[0]))

    def to_onnx(self, g, x, hint):
        return g.op("Clip", [x, g.const(f"{hint}/lo", 0.0), g.const(f"{hint}/hi", self.args[0])], hint)


class Linear(Neuron):
    """a * x + b."""

    name = "linear"
    nargs = 2
    defaults = (1.0, 0.0)

    def forward(self, x, xp):
        a, b = self.args
        return a * x + b, None

    def backward(self, dy, cache, xp):
        return dy * self.args[0]

    def to_onnx(self, g, x, hint):
        a, b = self.args
        y = g.scale(x, a, hint)
        return y if b == 0 else g.op("Add", [y, g.const(f"{hint}/b", b)], hint)


class Elu(Neuron):
    """x for x > 0, a (e^x - 1) otherwise."""

    name = "elu"
    nargs = 1
    defaults = (1.0,)

    def forward(self, x, xp):
        a = self.args[0]
        em1 = xp.expm1(xp.minimum(x, 0))
        return xp.where(x > 0, x, a * em1), (x, em1)

    def backward(self, dy, cache, xp):
        x, em1 = cache
        a = self.args[0]
        return dy * xp.where(x > 0, 1, a * (em1 + 1))

    def to_onnx(self, g, x, hint):
        return g.op("Elu", [x], hint, alpha=float(self.args[0]))


class LeakyRelu(Neuron):
    """x for x > 0, a x otherwise (a = 0.01 unless given)."""

    name = "leakyrelu"
    nargs = 1
    defaults = (0.01,)

    def forward(self, x, xp):
        return xp.where(x > 0, x, self.args[0] * x), x

    def backward(self, dy, x, xp):
        # where(x > 0, 1, a) would be float64 (Python scalars on both sides) and promote dy
        return xp.where(x > 0, dy, self.args[0] * dy)

    def to_onnx(self, g, x, hint):
        return g.op("LeakyRelu", [x], hint, alpha=float(self.args[0]))


NEURONS = {c.name: c for c in (Ident, Relu, Logistic, Tanh, Abs, SoftRelu, Square, Sqrt, BRelu, Linear, Elu,
                                LeakyRelu)}
ALIASES = {"sigmoid": "logistic", "linear": "linear", "identity": "ident", "softplus": "softrelu",
           "lrelu": "leakyrelu"}


def parse_neuron(text: str) -> Neuron:
    """'relu', 'tanh[1.7,0.66]', 'brelu[6]', ... -> Neuron; ValueError with a one-line reason."""
    m = _SYNTAX.match(str(text))
    if not m:
        raise ValueError(f"neuron '{text}' is not of the form name or name[a,b], e.g. relu or tanh[1,1]")
    name, argtext = m.group(1), m.group(2)
    key = ALIASES.get(name.lower(), name.lower())
    cls = NEURONS.get(key)
    if cls is None:
        raise ValueError(f"unknown neuron '{name}'{did_you_mean(name, NEURONS)}; neurons: {', '.join(NEURONS)}")
    args = []
    if argtext is not None and argtext.strip():
        try:
            args = [float(a) for a in argtext.split(",")]
        except ValueError:
            raise ValueError(f"neuron '{text}': parameters must be numbers, e.g. {cls.name}"
                             f"[{','.join(str(d) for d in cls.defaults) or ''}]") from None
    if len(args) > cls.nargs:
        raise ValueError(f"neuron '{text}': {cls.name} takes {cls.nargs} parameter(s), got {len(args)}")
    args = tuple(args) + tuple(cls.defaults[len(args):])
    return cls(*args)


@register
class NeuronLayer(Layer):
    """A layer that only applies its `neuron`."""

    type = "neuron"
    owns_neuron = True
    keys = {"neuron": Key("str", doc="e.g. relu, tanh[1,1], leakyrelu[0.1]")}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        try:
            self.fn = parse_neuron(self.props.neuron)
        except ValueError as exc:
            raise self.error(str(exc)) from None

    def forward(self, xs, params, ctx):
        return self.fn.forward(xs[0], ctx.xp)

    def backward(self, dout, cache, params, ctx):
        return [self.fn.backward(dout, cache, ctx.xp)], {}

    def to_onnx(self, g, xs, params):
        """The neuron by its formula (each Neuron's to_onnx)."""
        return self.fn.to_onnx(g, xs[0], self.name)
