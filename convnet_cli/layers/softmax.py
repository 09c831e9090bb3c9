"""`softmax` over the channels of each position (for an fc output: over its units)."""
from convnet_cli.layers.base import Layer, register


def log_softmax(x, xp):
    """Along the last axis, stable: x - max - log(sum(exp(x - max)))."""
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=-1, keepdims=True))


@register
class SoftmaxLayer(Layer):
    type = "softmax"
    keys = {}

    def forward(self, xs, params, ctx):
        xp = ctx.xp
        x = xs[0]
        e = xp.exp(x - x.max(axis=-1, keepdims=True))
        p = e / e.sum(axis=-1, keepdims=True)
        return p, p

    def backward(self, dout, p, params, ctx):
        return [p * (dout - (dout * p).sum(axis=-1, keepdims=True))], {}

    def to_onnx(self, g, xs, params):
        """Softmax on C."""
        return g.op("Softmax", [xs[0]], self.name, axis=1)
