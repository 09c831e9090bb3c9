"""Shared test tools: build one layer from keys, and check its gradients numerically in float64."""
from __future__ import annotations

import numpy as np

from convnet_cli.config.layer_def import parse_props
from convnet_cli.layers.base import Context
from convnet_cli.layers.registry import layer_class
from convnet_cli.layers.neurons import parse_neuron


class _Main:
    """convnet_cli.cli.main (which ends in sys.exit) in the shape CliRunner invokes."""

    name = "convnet"

    def main(self, args=None, prog_name=None, standalone_mode=True, **extra):
        from convnet_cli.cli import main

        main(list(args or []))


def invoke(args, **kw):
    """Run the CLI in-process the way `convnet` runs (one-line errors, exit codes); a click Result."""
    from click.testing import CliRunner

    return CliRunner().invoke(_Main(), args, catch_exceptions=False, **kw)


def make_layer(type_name: str, in_shapes, name: str = "L", neuron: str | None = None, hyper: dict | None = None,
               **props):
    """A layer of `type_name` built through the real key parser. in_shapes: [(C, H, W), ...]."""
    cls = layer_class(type_name)
    assert cls is not None, type_name
    layer = cls(name, parse_props(cls, props, name, "test.yaml"), [tuple(s) for s in in_shapes],
                [f"in{i}" for i in range(len(in_shapes))], "test.yaml")
    layer.neuron = parse_neuron(neuron) if neuron else None
    layer.set_hyper(hyper or {})  # the type's own hyper_defaults where `hyper` gives none
    return layer


def nhwc(shape_chw, n=2, seed=0, dtype=np.float64):
    """A random (N, H, W, C) batch for a per-case shape (C, H, W)."""
    c, h, w = shape_chw
    return np.random.default_rng(seed).standard_normal((n, h, w, c)).astype(dtype)


def to64(params):
    return {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}


def _run(layer, xs, params, train, seed):
    ctx = Context(xp=np, train=train, rng=np.random.default_rng(seed))
    out, cache = layer.forward(xs, params, ctx)
    if getattr(layer, "neuron", None) is not None:
        out, ncache = layer.neuron.forward(out, np)
        cache = (cache, ncache)
    return out, cache, ctx


def _back(layer, dout, cache, params, ctx):
    if getattr(layer, "neuron", None) is not None:
        cache, ncache = cache
        dout = layer.neuron.backward(dout, ncache, np)
    return layer.backward(dout, cache, params, ctx)


def gradcheck(layer, xs, params=None, train=True, seed=3, eps=1e-6, rtol=1e-4, atol=1e-7, check_inputs=None,
              max_checks=60):
    """Compare analytic gradients of sum(out * dout) with central differences, in float64.

    Checks every input listed in check_inputs (default: all float inputs) and every learned parameter,
    at up to `max_checks` random coordinates each. Returns the largest relative error seen.
    """
    params = to64(params if params is not None else layer.init_params(np.random.default_rng(seed)))
    xs = [np.array(x) for x in xs]
    out, cache, ctx = _run(layer, xs, params, train, seed)
    dout = np.random.default_rng(seed + 1).standard_normal(np.shape(out))
    dxs, grads = _back(layer, dout, cache, params, ctx)
    rng = np.random.default_rng(seed + 2)

    def loss():
        o, _, _ = _run(layer, xs, params, train, seed)
        return float(np.sum(o * dout))

    targets = []
    for i, x in enumerate(xs):
        if (check_inputs is None and x.dtype.kind == "f") or (check_inputs is not None and i in check_inputs):
            targets.append((f"input {i}", x, dxs[i]))
    for name in layer.learned:
        if name in params:
            targets.append((name, params[name], grads[name]))
    worst = 0.0
    for label, arr, analytic in targets:
        assert analytic is not None, f"{layer.type}: no gradient for {label}"
        assert np.shape(analytic) == arr.shape, f"{layer.type}: gradient of {label} has shape {np.shape(analytic)}, want {arr.shape}"
        flat = arr.reshape(-1)
        idx = rng.choice(flat.size, size=min(max_checks, flat.size), replace=False)
        for j in idx:
            old = flat[j]
            flat[j] = old + eps
            plus = loss()
            flat[j] = old - eps
            minus = loss()
            flat[j] = old
            numeric = (plus - minus) / (2 * eps)
            a = np.asarray(analytic).reshape(-1)[j]
            err = abs(a - numeric) / max(atol, abs(a) + abs(numeric))
            worst = max(worst, err if abs(a - numeric) > atol else 0.0)
            assert abs(a - numeric) <= atol + rtol * max(abs(a), abs(numeric)), (
                f"{layer.type} {layer.name}: d/d{label}[{j}] analytic {a:.8g} vs numeric {numeric:.8g}")
    return worst
