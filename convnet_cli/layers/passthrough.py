"""`pass`: cuda-convnet2's pass-through layer (imagenet-4gpu-data-model uses it to hand activations between
model-parallel replicas). On one device it moves nothing: one input is passed on unchanged; several are
joined along channels, as cuda-convnet2's parser counts its outputs (the sum of its inputs' outputs)."""
from __future__ import annotations

from convnet_cli.layers.base import fmt_hw, register
from convnet_cli.layers.elementwise import Concat


@register
class PassThrough(Concat):
    """Identity on one input; several inputs (C1, H, W), (C2, H, W), ... -> (C1 + C2 + ..., H, W)."""

    type = "pass"
    min_inputs = 1

    def infer_shape(self):
        if len(self.in_shapes) == 1:
            return self.in_shapes[0]
        first = self.in_shapes[0]
        for name, shape in zip(self.in_names[1:], self.in_shapes[1:]):
            if shape[1:] != first[1:]:
                raise self.error(f"pass joins several inputs along channels, so every input needs the same HxW map, "
                                 f"but '{self.in_names[0]}' is {fmt_hw(first)} and '{name}' is {fmt_hw(shape)}; "
                                 f"pool, pad or stride them to agree")
        return (sum(s[0] for s in self.in_shapes),) + tuple(first[1:])

    def forward(self, xs, params, ctx):
        if len(xs) == 1:
            return xs[0], None
        return super().forward(xs, params, ctx)

    def backward(self, dout, cache, params, ctx):
        if len(self.in_shapes) == 1:
            return [dout], {}
        return super().backward(dout, cache, params, ctx)

    def to_onnx(self, g, xs, params):
        """The identity; several inputs: Concat on C."""
        return xs[0] if len(xs) == 1 else super().to_onnx(g, xs, params)
