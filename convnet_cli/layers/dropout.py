"""`dropout`: inverted dropout. Training keeps each unit with probability `keep` (from the layer-params
file, default 0.5) and scales the kept ones by 1/keep, so the test-time pass is the identity."""
from __future__ import annotations

from convnet_cli.layers.base import Layer, register


@register
class Dropout(Layer):
    type = "dropout"
    keys = {}
    hyper_defaults = {"keep": 0.5}

    def check_hyper(self, hyper: dict):
        keep = hyper["keep"] = float(hyper["keep"])
        if not 0 < keep <= 1:
            raise self.error(f"keep {keep:g} must be in (0, 1] (the probability of keeping a unit); "
                             f"set keep in the layer-params file, e.g. 0.5")

    def forward(self, xs, params, ctx):
        """x: (N, H, W, C) -> out of the same shape; cache: the scaled mask (None when nothing dropped)."""
        x = xs[0]
        keep = self.hyper.keep
        if not ctx.train or keep == 1:
            return x, None
        if ctx.rng is None:
            raise RuntimeError(f"dropout layer '{self.name}': training needs a random generator in ctx.rng")
        # the generator of the device the activations live on (numpy or cupy), never the global state
        mask = (ctx.rng.random(x.shape, dtype=x.dtype) < keep).astype(x.dtype)
        mask *= 1.0 / keep
        return x * mask, mask

    def backward(self, dout, cache, params, ctx):
        mask = cache
        return [dout if mask is None else dout * mask], {}

    def to_onnx(self, g, xs, params):
        """The identity: inverted dropout does nothing at test time."""
        return xs[0]
