"""`pass`: cuda-convnet2's pass-through layer (imagenet-4gpu-data-model uses it to hand activations between
model-parallel replicas). On one device it moves nothing: one input is passed on unchanged; several are
joined along channels, as cuda-convnet2's parser counts its outputs (the sum of its inputs' outputs)."""
from __future__ import annotations

from convnet_cli.layers.base import register
from convnet_cli.layers.elementwise import Concat


@register
class PassThrough(Concat):
    """Identity on one input; several inputs (C1, H, W), (C2, H, W), ... -> (C1 + C2 + ..., H, W)."""

    type = "pass"
    min_inputs = 1

    def infer_shape(self):
        if len(self.in_shapes) == 1:
            return self.in_shapes[0]
        return super().infer_shape()

    def forward(self, xs, params, ctx):
        if len(xs) == 1:
            return xs[0], None
        return super().forward(xs, params, ctx)

    def backward(self, dout, cache, params, ctx):
        if len(self.in_shapes) == 1:
            return [dout], {}
        return super().backward(dout, cache, params, ctx)
