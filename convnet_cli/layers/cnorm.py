"""`cnorm`: cuda-convnet's contrast normalization layer (layers-example's conv1 is followed by one).

Per channel, over a size x size window of positions (zero padded at the borders, the window of position i
covering [i - size//2, i - size//2 + size - 1] as for rnorm), with n = size*size:

    m     = (window sum of x) / n                   the local mean (cuda-convnet's convLocalPool, AvgPooler)
    d     = x - m                                   cuda-convnet's _meanDiffs
    denom = minDiv + scale / n * (window sum of d^2)
    out   = x * denom ^ (-pow)

So cnorm is rnorm applied to the mean-subtracted input for the denominator, and to x itself for the
numerator: cuda-convnet's ContrastNormLayer::fpropActs computes _meanDiffs by convLocalPool(avg) and
`_meanDiffs.add(images, -1, 1)`, then convContrastNorm(images, _meanDiffs, ...). `scale` is divided by
size^2 as cuda-convnet's layer.py does (`scale /= size**2` for rnorm and cnorm); `scale`, `pow`, `minDiv`
come from the params file. The sign of d does not matter (only d^2 enters).

Backward (g = dout): with t = g * out / denom,
    dd = (2 scale / n) * d * adjoint window sum of (-pow * t)
    dx = g * denom^-pow + dd - (adjoint window sum of dd) / n
The code is xp-generic (shifted slices), so it runs on CuPy as is.
"""
from __future__ import annotations

from convnet_cli.layers.base import register
from convnet_cli.layers.norm import ResponseNormBase, window_sums


def contrast_norm_forward(x, size: int, min_div: float, scale: float, power: float):
    """x: (N, H, W, C) -> (out, (d, denom)) as in the module docstring."""
    n = size * size
    d = x - window_sums(x, "rnorm", size) / n
    denom = min_div + (scale / n) * window_sums(d * d, "rnorm", size)
    return x * denom ** (-power), (d, denom)


def contrast_norm_backward(dout, x, out, d, denom, size: int, scale: float, power: float):
    """dx of contrast_norm_forward."""
    n = size * size
    g_denom = -power * dout * out / denom
    g_d = (2 * scale / n) * d * window_sums(g_denom, "rnorm", size, adjoint=True)
    return dout * denom ** (-power) + g_d - window_sums(g_d, "rnorm", size, adjoint=True) / n


@register
class ContrastNorm(ResponseNormBase):
    """cuda-convnet `cnorm`: each unit divided by the local variance of a size x size patch of its channel."""

    type = "cnorm"
    axes = (1, 2)

    def infer_shape(self):
        _, h, w = self.in_shapes[0]
        if self.props.size > max(h, w):
            raise self.error(f"size {self.props.size} is larger than its input ({h}x{w}); use a size of at most "
                             f"{max(h, w)}")
        return self.in_shapes[0]

    def forward(self, xs, params, ctx):
        """x: (N, H, W, C) -> out of the same shape."""
        x = xs[0]
        h = self.hyper
        out, (d, denom) = contrast_norm_forward(x, self.props.size, h.minDiv, h.scale, h.pow)
        return out, (x, out, d, denom)

    def backward(self, dout, cache, params, ctx):
        x, out, d, denom = cache
        h = self.hyper
        return [contrast_norm_backward(dout, x, out, d, denom, self.props.size, h.scale, h.pow)], {}

    def to_onnx(self, g, xs, params):
        """Composed: d = x - windowsum(x)/n, x * (minDiv + scale/n * windowsum(d^2))^-pow, n = size^2, the
        window sums depthwise Convs of ones."""
        n, hyp, x = self.name, self.hyper, xs[0]
        size = self.props.size
        c = self.in_shapes[0][0]
        before, after = self._window_span()
        pads = [before, before, after, after]
        area = float(size * size)
        mean = g.op("Mul", [g.window_sum(x, c, size, size, pads, f"{n}/mean"), g.const(f"{n}/inv_area", 1 / area)],
                    f"{n}/mean")
        d = g.op("Sub", [x, mean], f"{n}/diff")
        sums = g.window_sum(g.op("Mul", [d, d], f"{n}/square"), c, size, size, pads, f"{n}/sum")
        denom = g.op("Add", [g.const(f"{n}/minDiv", hyp.minDiv),
                             g.op("Mul", [sums, g.const(f"{n}/scale", hyp.scale / area)], f"{n}/denom")], f"{n}/denom")
        return g.op("Mul", [x, g.op("Pow", [denom, g.const(f"{n}/pow", -hyp.pow)], f"{n}/pow")], n)
