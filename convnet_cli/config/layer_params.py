"""`--layer-params` mapping (YAML or .cfg, read by config/loader.py) -> one LearnSpec per layer.

A mapping layer name -> settings; a `DEFAULT` entry applies to every layer that does not set a key, as an
INI DEFAULT section does. Re-read on every resume, so editing a learning rate takes effect with `train -f`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from convnet_cli.config.schedules import Schedule, parse_schedule
from convnet_cli.config.yamlio import Located
from convnet_cli.errors import ConfigError, did_you_mean
from convnet_cli.layers.registry import REGISTRY
from convnet_cli.updaters import UPDATERS, hyperparam_keys


def _hyper_keys() -> tuple:
    """Run-time layer settings (coeff, keep, scale, ...): the keys of the registered layers' hyper_defaults."""
    keys = {}
    for cls in sorted(REGISTRY.values(), key=lambda c: c.__module__):
        keys.update(dict.fromkeys(cls.hyper_defaults))
    return tuple(keys)


# Read by layers at run time; their defaults are the layer classes' (hyper_defaults).
HYPER_KEYS = _hyper_keys()
# key -> kind. Updater names, their defaults and their settings (beta2, epsilon, rho) come from updaters.py.
KEYS = {
    "epsW": "schedules", "epsB": "schedule", "momW": "floats", "momB": "float", "wc": "floats",
    "updater": "updater", "clip": "float", "clipNorm": "float",
    **{k: "float" for k in hyperparam_keys()},
    **{k: "float" for k in HYPER_KEYS},
}
# cuda-convnet / convnet2 keys with no meaning here; accepted so old files load.
IGNORED = ("wball", "updatePeriod", "sumWidth", "dropout")


@dataclass
class LearnSpec:
    """How one layer learns. Lists (epsW, momW, wc) hold one entry per weight matrix (per input)."""

    epsW: list = field(default_factory=list)
    epsB: Schedule = None
    momW: list = field(default_factory=list)
    momB: float = 0.9
    wc: list = field(default_factory=list)
    updater: str = "sgd"
    clip: float | None = None
    clipNorm: float | None = None
    # The updater's own settings; None: the updater's default (see updaters.py)
    beta2: float | None = None
    epsilon: float | None = None
    rho: float | None = None
    hyper: dict = field(default_factory=dict)

    def for_param(self, pname: str):
        """(lr schedule, momentum, weight decay) for parameter `pname` of this layer.

        'weights', 'weights.i', 'weight_ih...' and 'gamma' learn with epsW/momW; weight decay applies to
        weight matrices only; everything else (biases, beta, bias_*) learns with epsB/momB.
        """
        if pname.startswith("weight") or pname == "gamma":
            i = int(pname.split(".")[1]) if pname.startswith("weights.") else 0
            pick = lambda lst: lst[min(i, len(lst) - 1)]  # noqa: E731
            wc = pick(self.wc) if pname.startswith("weight") else 0.0
            return pick(self.epsW), pick(self.momW), wc
        return self.epsB, self.momB, 0.0


def _convert(kind, key, value):
    if kind == "schedule":
        return parse_schedule(value)
    if kind == "schedules":
        items = value if isinstance(value, list) else (
            [v for v in str(value).split(",")] if isinstance(value, str) and "[" not in value else [value])
        return [parse_schedule(v) for v in items]
    if kind == "float":
        if isinstance(value, bool):
            raise ValueError("must be a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError("must be a number") from None
    if kind == "floats":
        items = value if isinstance(value, list) else str(value).split(",") if isinstance(value, str) else [value]
        return [_convert("float", key, v) for v in items]
    if kind == "updater":
        v = str(value).strip().lower()
        if v not in UPDATERS:
            names = list(UPDATERS)
            raise ValueError(f"must be one of {', '.join(names)}{did_you_mean(str(value), names)}")
        return v
    raise AssertionError(kind)


def _check_entry(name, raw, source, lines):
    prefix = f"{source}: "
    line = lines.get(name)
    at = f" (line {line})" if line else ""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix}layer '{name}': expected its settings (epsW: ..., epsB: ...){at}")
    klines = raw.lines if isinstance(raw, Located) else {}
    out = {}
    for k, v in raw.items():
        kat = f" (line {klines[k]})" if k in klines else at
        if k in IGNORED:
            continue
        if k not in KEYS:
            raise ConfigError(f"{prefix}layer '{name}': unknown key '{k}'{did_you_mean(k, KEYS)}; "
                              f"keys: {', '.join(KEYS)}{kat}")
        try:
            out[k] = _convert(KEYS[k], k, v)
        except ValueError as exc:
            raise ConfigError(f"{prefix}layer '{name}': {k} {v!r} {exc}{kat}") from None
        problem = validate_learning(k, out[k])
        if problem:
            raise ConfigError(f"{prefix}layer '{name}': {k} {v!r} {problem}{kat}")
    return out


# key -> (test, what the value must be). Every learning setting is checked here, once, when the params file
# is read: a value that passes cannot make an updater raise or train on NaN by itself.
_RANGES = {
    "lr": (lambda x: x >= 0, "must be a finite number, 0 or more"),
    "momW": (lambda x: 0 <= x < 1, "must be at least 0 and below 1 (momentum / adam's beta1)"),
    "momB": (lambda x: 0 <= x < 1, "must be at least 0 and below 1 (momentum / adam's beta1)"),
    "wc": (lambda x: x >= 0, "must be a finite number, 0 or more (L2 weight decay)"),
    "clip": (lambda x: x > 0, "must be a finite number above 0 (or leave clip out)"),
    "clipNorm": (lambda x: x > 0, "must be a finite number above 0 (or leave clipNorm out)"),
    "beta2": (lambda x: 0 < x < 1, "must be above 0 and below 1 (e.g. 0.999)"),
    "epsilon": (lambda x: x > 0, "must be a finite number above 0 (e.g. 1e-8)"),
    "rho": (lambda x: 0 <= x < 1, "must be at least 0 and below 1 (e.g. 0.9)"),
    "coeff": (lambda x: x >= 0, "must be a finite number, 0 or more"),
    "keep": (lambda x: 0 < x <= 1, "must be in (0, 1]"),
    "minDiv": (lambda x: x > 0, "must be a finite number above 0"),
}


def validate_learning(key: str, value) -> str | None:
    """What is wrong with the converted value of params key `key` (a reason to follow 'key value'), or None."""
    if key in ("epsW", "epsB"):
        for sched in value if isinstance(value, list) else [value]:
            problem = _check_schedule(sched)
            if problem:
                return problem
        return None
    if not isinstance(value, (int, float, list)):
        return None
    for x in value if isinstance(value, list) else [value]:
        if not math.isfinite(x):
            return "must be a finite number"
        test = _RANGES.get(key)
        if test is not None and not test[0](x):
            return test[1]
    return None


def _check_schedule(s: Schedule) -> str | None:
    if not math.isfinite(s.base) or s.base < 0:
        return "must be a learning rate that is finite and 0 or more (base of the schedule)"
    for name in ("tgtFactor", "factor"):
        v = getattr(s, name)
        if not math.isfinite(v) or v <= 0:
            return f"must have a finite {name} above 0"
    if not all(math.isfinite(e) for e in s.epochs):
        return "must list finite epochs"
    return None


def parse_layer_params(doc, layer_names: list, source: str = "params.yaml", n_weights: dict | None = None) -> dict:
    """Loaded params mapping -> {layer name: LearnSpec} for every layer in `layer_names`.

    n_weights: {layer: number of weight matrices} to check per-input lists (epsW: [a, b]).
    """
    prefix = f"{source}: "
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{prefix}expected a mapping of layer names to their settings (conv1: {{epsW: 0.001}})")
    lines = doc.lines if isinstance(doc, Located) else {}
    default = _check_entry("DEFAULT", doc.get("DEFAULT"), source, lines)
    for name in doc:
        if name != "DEFAULT" and name not in layer_names:
            line = lines.get(name)
            raise ConfigError(
                f"{prefix}layer '{name}' does not exist in the layer definition{did_you_mean(name, layer_names)}; "
                f"remove its settings or rename them{f' (line {line})' if line else ''}")
    specs = {}
    for name in layer_names:
        given = dict(default)
        given.update(_check_entry(name, doc.get(name), source, lines))
        updater = given.get("updater", "sgd")
        nw = (n_weights or {}).get(name, 1) or 1
        rule = UPDATERS[updater]
        lr, mom = rule.lr, rule.mom
        eps_w = given.get("epsW", [Schedule("const", lr, text=f"{lr:g}")])
        mom_w = given.get("momW", [mom])
        wc = given.get("wc", [0.0])
        for key, lst in (("epsW", eps_w), ("momW", mom_w), ("wc", wc)):
            if len(lst) not in (1, nw):
                at = f" (line {lines[name]})" if name in lines else ""
                raise ConfigError(f"{prefix}layer '{name}': {key} has {len(lst)} values but the layer has {nw} "
                                  f"inputs; give one value or one per input{at}")
        hyper = {k: given[k] for k in HYPER_KEYS if k in given}
        specs[name] = LearnSpec(
            epsW=eps_w, epsB=given.get("epsB", Schedule("const", lr, text=f"{lr:g}")), momW=mom_w,
            momB=given.get("momB", mom), wc=wc, updater=updater, clip=given.get("clip"),
            clipNorm=given.get("clipNorm"), hyper=hyper,
            **{k: given.get(k, rule.hyperparams.get(k)) for k in hyperparam_keys()})
    return specs
