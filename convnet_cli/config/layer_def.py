"""`--layer-def` mapping (YAML or .cfg, read by config/loader.py) -> validated layer specs -> Layer objects
with inferred shapes.

All checking of the layer definition happens here (and in each Layer's `infer_shape`); nothing past this
module sees an unchecked dict. Errors name the file, the layer, the key, the line and the fix.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from types import SimpleNamespace

from convnet_cli.config.limits import check_layer_size
from convnet_cli.config.yamlio import Located
from convnet_cli.errors import ConfigError, did_you_mean
from convnet_cli.layers.base import REQUIRED, Key
from convnet_cli.layers.registry import layer_class, layer_types

# Keys every layer with inputs may carry, besides those of its type.
COMMON_KEYS = ("type", "inputs", "neuron")
# cuda-convnet keys that are checked against the inferred shape, never needed.
CHECKED_KEYS = ("channels", "imgSize")
# cuda-convnet / convnet2 keys that only steered its GPU kernels; accepted and ignored.
IGNORED_KEYS = ("partialSum", "randSparse", "gpu", "sumWidth", "imgPixels", "modulesX", "trainingOnly")


@dataclass
class LayerSpec:
    name: str
    type: str
    cls: type
    props: SimpleNamespace
    inputs: list
    neuron: str | None = None
    line: int | None = None
    checks: dict = field(default_factory=dict)  # channels / imgSize given by the user


# docs/CONFIG.md: checkpoints name arrays '<layer>/<param>' and keep their state in '__state__'.
_LAYER_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


def check_layer_name(name, prefix: str = "", line=None):
    """ConfigError unless `name` is made of letters, digits, '_', '-' and '.' and does not start with '__'."""
    text = str(name)
    if not _LAYER_NAME.match(text) or text.startswith("__"):
        why = ("a leading '__' is reserved for the checkpoint's own entries" if text.startswith("__")
               and _LAYER_NAME.match(text) else "'/' separates a layer from its parameter in checkpoints"
               if "/" in text else "only letters, digits, '_', '-' and '.' are allowed")
        raise ConfigError(f"{prefix}layer {text!r}: not a valid layer name ({why}); rename it, e.g. "
                          f"'{_suggest_name(text)}'{_at(line)}")


def _suggest_name(text: str) -> str:
    out = re.sub(r"[^A-Za-z0-9_.\-]+", "_", text).lstrip("_")
    return out or "layer1"


def _at(line) -> str:
    return f" (line {line})" if line else ""


def convert_value(kind: str, value, key: Key):
    """Convert a YAML value to the key's kind; ValueError(message) when it does not fit."""
    if kind == "any":
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError("must be an integer")
        try:
            f = float(value)
        except ValueError:
            raise ValueError("must be an integer") from None
        if not math.isfinite(f):
            raise ValueError("must be a finite integer")
        if f != int(f):
            raise ValueError("must be an integer")
        v = int(f)
        if key.min is not None and v < key.min:
            raise ValueError(f"must be at least {int(key.min)}")
        return v
    if kind == "float":
        if isinstance(value, bool):
            raise ValueError("must be a number")
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise ValueError("must be a number") from None
        if not math.isfinite(v):
            raise ValueError("must be a finite number")
        if key.min is not None and v < key.min:
            raise ValueError(f"must be at least {key.min}")
        return v
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if value in (0, 1, "0", "1"):
            return bool(int(value))
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
            return value.lower() in ("true", "yes")
        raise ValueError("must be 0 or 1")
    if kind == "str":
        if not isinstance(value, str):
            raise ValueError("must be a word")
        if key.choices and value not in key.choices:
            raise ValueError("must be one of " + ", ".join(key.choices) + did_you_mean(value, key.choices))
        return value
    if kind == "pair":
        if isinstance(value, str) and "," in value:  # cuda-convnet style "3,5"
            value = [p.strip() for p in value.split(",")]
        if isinstance(value, (list, tuple)):
            if len(value) != 2:
                raise ValueError("must be an integer or a pair [h, w]")
            h = convert_value("int", value[0], key)
            w = convert_value("int", value[1], key)
            return (h, w)
        v = convert_value("int", value, key)
        return (v, v)
    if kind == "int_or_all":
        if isinstance(value, str) and value.strip().lower() == "all":
            return "all"
        return convert_value("pair", value, key)
    if kind == "floats":
        if isinstance(value, str):
            value = [p.strip() for p in value.split(",")]
        if isinstance(value, (list, tuple)):
            return [convert_value("float", v, key) for v in value]
        return [convert_value("float", value, key)]
    raise AssertionError(f"unknown key kind {kind}")


# Bounds a Key's inclusive `min` cannot say: (type, key) -> (test, what the value must be).
_BOUNDS = {
    ("batchnorm", "epsilon"): (lambda v: v > 0, "must be above 0 (e.g. 1e-5): it keeps the division finite"),
}


def _check_bounds(type_name, key, value):
    test = _BOUNDS.get((type_name, key))
    if test is not None and not test[0](value):
        raise ValueError(test[1])


def parse_props(cls, raw: dict, name: str, source: str, lines: dict | None = None) -> SimpleNamespace:
    """Check `raw` (a layer's keys without type/inputs/neuron) against `cls.keys`."""
    lines = lines or {}
    prefix = f"{source}: " if source else ""
    spellings = {}
    for key_name, key in cls.keys.items():
        spellings[key_name] = key_name
        for alt in key.legacy:
            spellings[alt] = key_name
    values = {}
    for k, v in raw.items():
        if k not in spellings:
            options = list(cls.keys) + [c for c in COMMON_KEYS if c != "type"]
            hint = did_you_mean(k, options)
            known = ", ".join(cls.keys) or "none besides inputs and neuron"
            raise ConfigError(
                f"{prefix}layer '{name}': unknown key '{k}'{hint}; keys of a {cls.type} layer: {known}{_at(lines.get(k))}"
            )
        canon = spellings[k]
        key = cls.keys[canon]
        try:
            values[canon] = convert_value(key.kind, v, key)
            _check_bounds(cls.type, canon, values[canon])
        except ValueError as exc:
            raise ConfigError(f"{prefix}layer '{name}': {canon} {v!r} {exc}{_at(lines.get(k))}") from None
    for key_name, key in cls.keys.items():
        if key_name not in values:
            if key.default is REQUIRED:
                raise ConfigError(
                    f"{prefix}layer '{name}': missing required key '{key_name}' for a {cls.type} layer"
                    f"{(' (' + key.doc + ')') if key.doc else ''}; add it{_at(getattr(raw, 'line', None))}"
                )
            values[key_name] = key.default
    return SimpleNamespace(**values)


def _inputs(value, name, prefix, line) -> list:
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",") if v.strip()]
    elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        items = list(value)
    else:
        raise ConfigError(f"{prefix}layer '{name}': inputs must be a layer name or a list of names{_at(line)}")
    if not items:
        raise ConfigError(f"{prefix}layer '{name}': inputs is empty; name the layer(s) it reads{_at(line)}")
    return items


def parse_layer_def(doc, source: str = "layers.yaml") -> list:
    """A loaded layer-def mapping -> [LayerSpec] in file order (no shapes yet)."""
    prefix = f"{source}: "
    if not isinstance(doc, dict) or not doc:
        raise ConfigError(f"{prefix}expected a mapping of layer names to their keys (name: {{type: conv, ...}})")
    specs = []
    defined = {}
    for name, raw in doc.items():
        line = doc.lines.get(name) if isinstance(doc, Located) else None
        check_layer_name(name, prefix, line)
        if not isinstance(raw, dict):
            raise ConfigError(f"{prefix}layer '{name}': expected its keys (type: ..., inputs: ...){_at(line)}")
        klines = raw.lines if isinstance(raw, Located) else {}
        if "type" not in raw:
            raise ConfigError(f"{prefix}layer '{name}': missing required key 'type'; add e.g. 'type: conv'{_at(line)}")
        type_name = raw["type"]
        cls = layer_class(str(type_name))
        if cls is None:
            raise ConfigError(
                f"{prefix}layer '{name}': unknown type '{type_name}'{did_you_mean(str(type_name), layer_types())}; "
                f"types: {', '.join(layer_types())}{_at(klines.get('type'))}"
            )
        if cls.is_data:
            inputs = []
            if "inputs" in raw:
                raise ConfigError(f"{prefix}layer '{name}': a data layer has no inputs; remove 'inputs'{_at(klines.get('inputs'))}")
        else:
            if "inputs" not in raw:
                raise ConfigError(
                    f"{prefix}layer '{name}': missing required key 'inputs'; name the layer(s) above it that feed it{_at(line)}"
                )
            inputs = _inputs(raw["inputs"], name, prefix, klines.get("inputs"))
            for inp in inputs:
                if inp == name:
                    raise ConfigError(f"{prefix}layer '{name}': takes itself as input; name a layer above it{_at(klines.get('inputs'))}")
                if inp not in defined:
                    later = " (it is defined below; move it above)" if inp in doc else did_you_mean(inp, defined)
                    raise ConfigError(f"{prefix}layer '{name}': input '{inp}' is not defined above it{later}{_at(klines.get('inputs'))}")
            n = len(inputs)
            if n < cls.min_inputs or (cls.max_inputs is not None and n > cls.max_inputs):
                want = str(cls.min_inputs) if cls.min_inputs == cls.max_inputs else (
                    f"at least {cls.min_inputs}" if cls.max_inputs is None else f"{cls.min_inputs} to {cls.max_inputs}")
                raise ConfigError(f"{prefix}layer '{name}': a {cls.type} layer takes {want} input(s), got {n}{_at(klines.get('inputs'))}")
        neuron = None
        # A type that owns its neuron (the `neuron` layer; `rnn`, whose cell nonlinearity it is) gets the
        # key in its props; for every other type the net applies it to the layer's output.
        owns_neuron = cls.owns_neuron
        if "neuron" in raw and not owns_neuron:
            if cls.is_data:
                raise ConfigError(f"{prefix}layer '{name}': a data layer takes no neuron{_at(klines.get('neuron'))}")
            neuron = _check_neuron(raw["neuron"], name, prefix, klines.get("neuron"))
        checks = {k: raw[k] for k in CHECKED_KEYS if k in raw and k not in cls.keys}
        own = {k: v for k, v in raw.items()
               if k not in ("type", "inputs") and not (k == "neuron" and not owns_neuron)
               and k not in checks and k not in IGNORED_KEYS}
        own = Located(own)
        own.line = line
        props = parse_props(cls, own, name, source, klines)
        specs.append(LayerSpec(name, cls.type, cls, props, inputs, neuron, line, checks))
        defined[name] = specs[-1]
    _check_all_used(specs, prefix)
    return specs


def _check_neuron(value, name, prefix, line) -> str:
    from convnet_cli.layers.neurons import parse_neuron

    if not isinstance(value, str):
        raise ConfigError(f"{prefix}layer '{name}': neuron must be a word like relu or tanh[1,1]{_at(line)}")
    try:
        parse_neuron(value)
    except ValueError as exc:
        raise ConfigError(f"{prefix}layer '{name}': {exc}{_at(line)}") from None
    return value


def _check_all_used(specs, prefix):
    # A missing cost is the real mistake when the last layer feeds nothing; say that, not "unused".
    if not any(s.cls.is_cost for s in specs):
        raise ConfigError(f"{prefix}no cost layer; add one, e.g. 'logprob: {{type: cost.logreg, inputs: [labels, probs]}}'")
    used = {i for s in specs for i in s.inputs}
    for s in specs:
        if s.name not in used and not s.cls.is_cost:
            raise ConfigError(
                f"{prefix}layer '{s.name}': is not used as input by any layer below it; "
                f"remove it or name it in a later layer's inputs{_at(s.line)}"
            )


def build_layers(specs: list, data_shape, source: str = "layers.yaml") -> list:
    """Instantiate every layer in order, inferring shapes. data_shape: (C, H, W) of the features."""
    from convnet_cli.layers.neurons import parse_neuron

    prefix = f"{source}: "
    layers = {}
    out = []
    for s in specs:
        if s.cls.is_data:
            in_shapes = [tuple(data_shape)]
        else:
            in_shapes = [layers[i].out_shape for i in s.inputs]
        layer = s.cls(s.name, s.props, in_shapes, list(s.inputs), source)
        if not s.cls.is_data:
            _check_given_shape(s, in_shapes[0], prefix)
            check_layer_size(layer, prefix, _at(s.line))
        layer.neuron = parse_neuron(s.neuron) if s.neuron else None
        layer.line = s.line
        if not s.cls.is_data:
            problem = layer.input_problem([layers[i] for i in s.inputs])
            if problem:
                raise ConfigError(f"{prefix}layer '{s.name}': {problem}{_at(s.line)}")
        layers[s.name] = layer
        out.append(layer)
    return out


def _check_given_shape(s, in_shape, prefix):
    if "channels" in s.checks:
        try:
            given = [int(v) for v in str(s.checks["channels"]).split(",")]
        except ValueError:
            raise ConfigError(f"{prefix}layer '{s.name}': channels must be an integer{_at(s.line)}") from None
        if given[0] != in_shape[0]:
            raise ConfigError(
                f"{prefix}layer '{s.name}': channels {given[0]} does not match its input's {in_shape[0]} channels; "
                f"remove 'channels' (it is inferred) or fix it{_at(s.line)}")
    if "imgSize" in s.checks:
        v = s.checks["imgSize"]
        hw = tuple(v) if isinstance(v, (list, tuple)) else (int(v), int(v))
        if tuple(int(x) for x in hw) != tuple(in_shape[1:]):
            raise ConfigError(
                f"{prefix}layer '{s.name}': imgSize {v} does not match its input ({in_shape[1]}x{in_shape[2]}); "
                f"remove 'imgSize' (it is inferred) or fix it{_at(s.line)}")
