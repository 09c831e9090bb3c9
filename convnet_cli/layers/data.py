"""`data`: where the features (dataIdx 0) or the labels (dataIdx 1) enter the net."""
from convnet_cli.layers.base import Key, Layer, register


@register
class DataLayer(Layer):
    type = "data"
    is_data = True
    keys = {"dataIdx": Key("int", 0, min=0, doc="0 = features, 1 = labels")}
    min_inputs = 0
    max_inputs = 0

    def infer_shape(self):
        if self.props.dataIdx == 0:
            return self.in_shapes[0]
        if self.props.dataIdx == 1:
            return (1, 1, 1)
        raise self.error(f"dataIdx {self.props.dataIdx} is not 0 (features) or 1 (labels)")

    def forward(self, xs, params, ctx):
        return xs[0], None

    def backward(self, dout, cache, params, ctx):
        return [], {}
