"""`fc`: fully connected, one weight matrix per input.

weights (or weights.i for input i): (outputs, inputs_i) with each input flattened in (C, H, W) order, so
a PyTorch `nn.Linear` takes them as they are after `x.flatten(1)` of an NCHW tensor. Output (outputs, 1, 1).
"""
from convnet_cli.errors import ConfigError
from convnet_cli.layers.base import Key, Layer, PerInputWeights, register
from convnet_cli.layers.cpu_threads import matmul
from convnet_cli.layers.init import INIT_KINDS


def flatten_chw(x):
    """x: (N, H, W, C) -> (N, C*H*W) in (C, H, W) order (a view when H = W = 1)."""
    n, h, w, c = x.shape
    if h == 1 and w == 1:
        return x.reshape(n, c)
    return x.transpose(0, 3, 1, 2).reshape(n, c * h * w)


def unflatten_chw(d, shape_nhwc):
    """Inverse of flatten_chw: (N, C*H*W) -> (N, H, W, C)."""
    n, h, w, c = shape_nhwc
    if h == 1 and w == 1:
        return d.reshape(n, 1, 1, c)
    return d.reshape(n, c, h, w).transpose(0, 2, 3, 1)


@register
class FCLayer(PerInputWeights, Layer):
    type = "fc"
    keys = {
        "outputs": Key("int", min=1, doc="number of output units"),
        "initW": Key("floats", [0.01]),
        "initB": Key("float", 0.0),
        "init": Key("str", "gaussian", choices=INIT_KINDS),
    }
    max_inputs = None

    def infer_shape(self):
        return (self.props.outputs, 1, 1)

    def param_shapes(self):
        shapes = {name: (self.props.outputs, c * h * w) for name, (c, h, w) in zip(self.weight_names, self.in_shapes)}
        shapes["biases"] = (self.props.outputs,)
        return shapes

    def init_params(self, rng):
        from convnet_cli.layers.init import init_biases, init_weights

        out = {}
        shapes = self.param_shapes()
        fan_in_total = sum(c * h * w for c, h, w in self.in_shapes)
        init_w = self.props.initW
        if len(init_w) not in (1, len(self.in_shapes)):
            raise self.error(f"initW has {len(init_w)} values for {len(self.in_shapes)} inputs; give one or one per input")
        for i, name in enumerate(self.weight_names):
            scale = init_w[min(i, len(init_w) - 1)]
            out[name] = init_weights(rng, self.props.init, shapes[name], fan_in=fan_in_total,
                                     fan_out=self.props.outputs, scale=scale)
        out["biases"] = init_biases(rng, self.props.init, shapes["biases"], fan_in_total, self.props.initB)
        return out

    def filter_bank(self, params):
        """The weights as filters over the layer's (first) input: (outputs, C, H, W)."""
        w = params.get("weights", params.get("weights.0"))
        if w is None:
            return None
        c, h, wd = self.in_shapes[0]
        if w.shape[1] != c * h * wd:
            raise ConfigError(f"layer '{self.name}': weights {w.shape} do not match its input {self.in_shapes[0]}")
        return w.reshape(w.shape[0], c, h, wd), f"{self.name} (fc, {w.shape[0]} units over its {c}x{h}x{wd} input)"

    def to_onnx(self, g, xs, params):
        """Flatten in (C, H, W) order, Gemm per input (transB), summed."""
        n = self.name
        terms = []
        for x, wname in zip(xs, self.weight_names):
            flat = g.op("Flatten", [x], f"{n}/flatten", axis=1)  # NCHW flattened: the (C, H, W) order of the weights
            terms.append(g.op("Gemm", [flat, g.const(f"{n}/{wname}", params[wname])], f"{n}/{wname}", transB=1))
        y = terms[0] if len(terms) == 1 else g.op("Sum", terms, f"{n}/sum")
        y = g.op("Add", [y, g.const(f"{n}/biases", params["biases"])], n)
        return g.reshape(y, [0, self.props.outputs, 1, 1], n)

    def forward(self, xs, params, ctx):
        flats = [flatten_chw(x) for x in xs]
        out = matmul(flats[0], params[self.weight_names[0]].T)
        for f, name in zip(flats[1:], self.weight_names[1:]):
            out += matmul(f, params[name].T)
        out += params["biases"]
        return out.reshape(out.shape[0], 1, 1, -1), (flats, [x.shape for x in xs])

    def backward(self, dout, cache, params, ctx):
        flats, shapes = cache
        d = dout.reshape(dout.shape[0], -1)
        grads = {"biases": d.sum(axis=0)}
        dxs = []
        for f, shape, name in zip(flats, shapes, self.weight_names):
            grads[name] = matmul(d.T, f)
            dxs.append(unflatten_chw(matmul(d, params[name]), shape))
        return dxs, grads
