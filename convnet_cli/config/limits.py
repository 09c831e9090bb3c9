"""Sizes a layer definition may ask for, checked when the layers are built (before anything is allocated).

A layer whose output or weights would not fit in any machine's memory is a configuration mistake (a
`filters: 1000000000`, a `padding: 100000`): it is refused with the layer and the keys that make it large,
rather than failing later as an anonymous MemoryError.
"""
from __future__ import annotations

import math

from convnet_cli.errors import ConfigError

# float32 values: 2^28 per case (1 GiB) for one layer's output; 2^31 (8 GiB) for one layer's weights.
MAX_OUTPUT_VALUES = 1 << 28
MAX_WEIGHT_VALUES = 1 << 31
_SIZE_KEYS = ("filters", "outputs", "filterSize", "padding", "stride", "sizeX", "outputsX", "size")


def _gib(values: int) -> str:
    return f"{values * 4 / 2**30:.3g} GiB"


def weight_values(layer) -> int:
    """How many float32 values the parameters of `layer` will hold (its `param_shapes`, nothing allocated)."""
    return sum(math.prod(int(d) for d in shape) for shape in layer.param_shapes().values())


def check_layer_size(layer, prefix: str = "", at: str = ""):
    """ConfigError naming the layer and its size keys when its output per case or its weights are absurd."""
    given = [f"{k} {_show(getattr(layer.props, k))}" for k in _SIZE_KEYS
             if getattr(layer.props, k, None) not in (None, 0, (0, 0))]
    keys = ", ".join(given) or "its input shape"
    out = int(math.prod(int(v) for v in layer.out_shape))
    if out > MAX_OUTPUT_VALUES:
        raise ConfigError(
            f"{prefix}layer '{layer.name}': its output {tuple(layer.out_shape)} would hold {out:.3g} values per case "
            f"({_gib(out)}; at most {_gib(MAX_OUTPUT_VALUES)} per case); lower {keys}{at}")
    w = weight_values(layer)
    if w > MAX_WEIGHT_VALUES:
        raise ConfigError(
            f"{prefix}layer '{layer.name}': its weights would hold {w:.3g} values ({_gib(w)}; at most "
            f"{_gib(MAX_WEIGHT_VALUES)}); lower {keys}{at}")


def _show(v):
    if isinstance(v, tuple) and len(v) == 2 and v[0] == v[1]:
        return str(v[0])
    return str(list(v)) if isinstance(v, tuple) else str(v)
