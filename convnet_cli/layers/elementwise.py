"""Layers that join several inputs: `eltsum` (weighted sum), `eltmax` (element-wise maximum) and
`concat` (along channels). Activations x: (N, H, W, C)."""
from __future__ import annotations

from convnet_cli.layers.base import Key, Layer, fmt_hw, register


def _fmt(shape) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


class _SameShape(Layer):
    """Element-wise layers: every input has the shape of the first."""

    min_inputs = 2
    max_inputs = None

    def infer_shape(self):
        first = self.in_shapes[0]
        for name, shape in zip(self.in_names[1:], self.in_shapes[1:]):
            if shape != first:
                raise self.error(
                    f"a {self.type} layer needs inputs of equal shape (C, H, W), but '{self.in_names[0]}' gives "
                    f"{_fmt(first)} and '{name}' gives {_fmt(shape)}; make them agree (e.g. a conv with the same "
                    f"filters, padding and stride)")
        return first


@register
class EltSum(_SameShape):
    """out = sum_i coeffs[i] * x_i (cuda-convnet's eltsum)."""

    type = "eltsum"
    keys = {"coeffs": Key("floats", None, doc="one weight per input, default all 1, e.g. [1, -1]")}

    def infer_shape(self):
        shape = super().infer_shape()
        n = len(self.in_shapes)
        if self.props.coeffs is None:
            self.coeffs = [1.0] * n
        elif len(self.props.coeffs) != n:
            raise self.error(f"coeffs has {len(self.props.coeffs)} value(s) but the layer has {n} inputs; "
                             f"give one coefficient per input")
        else:
            self.coeffs = list(self.props.coeffs)
        return shape

    def forward(self, xs, params, ctx):
        out = xs[0] * self.coeffs[0]  # a new array, never the input itself
        for c, x in zip(self.coeffs[1:], xs[1:]):
            out += x if c == 1 else c * x
        return out, None

    def backward(self, dout, cache, params, ctx):
        # fresh arrays even for coefficient 1: two inputs must never share one gradient buffer
        return [dout * c for c in self.coeffs], {}

    def to_onnx(self, g, xs, params):
        """Mul by each coefficient (none for 1), then Sum."""
        n = self.name
        return g.op("Sum", [g.scale(x, float(c), f"{n}/coeff{i}") for i, (x, c) in enumerate(zip(xs, self.coeffs))], n)


@register
class EltMax(_SameShape):
    """out = max_i x_i element-wise; the gradient goes to the (first) input that held the maximum."""

    type = "eltmax"
    keys = {}

    def forward(self, xs, params, ctx):
        xp = ctx.xp
        out = xs[0].copy()
        which = xp.zeros(out.shape, dtype=xp.uint8 if len(xs) < 256 else xp.int32)
        for i, x in enumerate(xs[1:], 1):
            bigger = x > out
            out = xp.where(bigger, x, out)
            if xp.__name__ == "numpy":
                which[bigger] = i
            else:  # a masked store on CuPy counts the mask first (a wait for the GPU); a select does not
                which = xp.where(bigger, which.dtype.type(i), which)
        return out, which

    def backward(self, dout, cache, params, ctx):
        which = cache
        return [dout * (which == i) for i in range(len(self.in_shapes))], {}

    def to_onnx(self, g, xs, params):
        """Max."""
        return g.op("Max", list(xs), self.name)


@register
class Concat(Layer):
    """Join the inputs along channels: (C1, H, W), (C2, H, W), ... -> (C1 + C2 + ..., H, W)."""

    type = "concat"
    keys = {}
    min_inputs = 2
    max_inputs = None

    def infer_shape(self):
        first = self.in_shapes[0]
        for name, shape in zip(self.in_names[1:], self.in_shapes[1:]):
            if shape[1:] != first[1:]:
                raise self.error(
                    f"concat joins along channels, so every input needs the same HxW map, but "
                    f"'{self.in_names[0]}' is {fmt_hw(first)} and '{name}' is {fmt_hw(shape)}; "
                    f"pool, pad or stride them to agree")
        return (sum(s[0] for s in self.in_shapes),) + tuple(first[1:])

    def forward(self, xs, params, ctx):
        return ctx.xp.concatenate(xs, axis=3), None

    def backward(self, dout, cache, params, ctx):
        xp = ctx.xp
        dxs, start = [], 0
        for shape in self.in_shapes:
            dxs.append(xp.ascontiguousarray(dout[..., start:start + shape[0]]))
            start += shape[0]
        return dxs, {}

    def to_onnx(self, g, xs, params):
        """Concat on C."""
        return g.op("Concat", list(xs), self.name, axis=1)
