"""`--layer-params` YAML -> one LearnSpec per layer.

A mapping layer name -> settings; a `DEFAULT` entry applies to every layer that does not set a key, as an
INI DEFAULT section does. Re-read on every resume, so editing a learning rate takes effect with `train -f`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from convnet_cli.config.schedules import Schedule, parse_schedule
from convnet_cli.config.yamlio import Located
from convnet_cli.errors import ConfigError, did_you_mean

UPDATERS = ("sgd", "adam", "rmsprop", "adagrad", "adadelta")
# Learning rate and momentum (beta1 for adam) when the params file gives none.
DEFAULT_LR = {"sgd": 0.01, "adam": 0.001, "rmsprop": 0.001, "adagrad": 0.01, "adadelta": 1.0}
DEFAULT_MOM = {"sgd": 0.9, "adam": 0.9, "rmsprop": 0.0, "adagrad": 0.0, "adadelta": 0.0}

# key -> kind; HYPER_KEYS are read by layers at run time (their defaults are the layer classes').
KEYS = {
    "epsW": "schedules", "epsB": "schedule", "momW": "floats", "momB": "float", "wc": "floats",
    "updater": "updater", "clip": "float", "clipNorm": "float",
    "beta2": "float", "epsilon": "float", "rho": "float",
    "coeff": "float", "keep": "float", "scale": "float", "pow": "float", "minDiv": "float",
}
HYPER_KEYS = ("coeff", "keep", "scale", "pow", "minDiv")
# cuda-convnet / convnet2 keys with no meaning here; accepted so old files load.
IGNORED = ("wball", "updatePeriod", "sumWidth", "dropout")
UPDATER_DEFAULTS = {"beta2": 0.999, "epsilon": None, "rho": None}


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
    beta2: float = 0.999
    epsilon: float | None = None  # None: the updater's own default
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
            raise ValueError(f"must be one of {', '.join(UPDATERS)}{did_you_mean(str(value), UPDATERS)}")
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
        if k in ("keep",) and not (0 < out[k] <= 1):
            raise ConfigError(f"{prefix}layer '{name}': keep {v!r} must be in (0, 1]{kat}")
    return out


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
        lr = DEFAULT_LR[updater]
        mom = DEFAULT_MOM[updater]
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
            clipNorm=given.get("clipNorm"), beta2=given.get("beta2", 0.999), epsilon=given.get("epsilon"),
            rho=given.get("rho"), hyper=hyper)
    return specs
