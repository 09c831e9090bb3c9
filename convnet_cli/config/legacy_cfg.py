"""cuda-convnet and cuda-convnet2 INI configs (layers.cfg, layer-params.cfg) -> this tool's YAML mappings.

    cfg_to_layer_def(text, source)     -> Located {layer: Located {key: value}}   (what --layer-def loads)
    cfg_to_layer_params(text, source)  -> Located {layer or 'DEFAULT': Located {key: value}}
    translate_texts(layers_text, params_text, ...) -> Conversion (both files as commented YAML)

A pure translator: it reads no files and parses no YAML. config/loader.py picks it or YAML for a path;
config/convert.py reads, checks and writes for `convnet convert-cfg`.

The mappings carry the INI line numbers in `.lines`, so the YAML parsers' errors point into the .cfg file.

How the INI is read, as cuda-convnet's ConfigParser read it:
- `[name]` starts a layer; `key=value` (or `key: value`); `#` and `;` start comments (whole lines, or after
  a space); an indented line without `key=` continues the value above; `%(key)s` is interpolated from the
  same section or [DEFAULT]; key names are matched case-insensitively (ConfigParser lowercased them, so
  cuda-convnet accepted `filtersize`), and written in this tool's spelling (`filterSize`).
- `[DEFAULT]` applies to every section. In a layer-params file it becomes the `DEFAULT` entry, which the
  params parser applies the same way. In a layers file a DEFAULT key is copied into each layer whose
  type has that key (cuda-convnet read only the keys a type needs, so `[DEFAULT] initW=0.01` never meant
  anything to a pool layer).
- A comma list is one value per input (`epsW=0.001,0.002`, `filterSize=5,5`), except inside brackets
  (`neuron=tanh[1,1]`, `epsW=step[base=0.01;factor=0.1;epochs=10,20]` stay strings, parsed later).
  A list of equal values on a one-input layer becomes one value; a 2-value list on a key that takes
  `[h, w]` (filterSize, padding, stride, sizeX), where the layer has one input, is read as [h, w].

Layer types: data, conv, local (also with several inputs: one filter bank per input, summed), pool, fc,
neuron, rnorm, cmrnorm, cnorm, pass, softmax, cost.logreg, cost.sum2, eltsum, eltmax, concat, dropout and
batchnorm keep their names (`topk` in a params file's cost section carries over); cuda-convnet2's `cost.binxent` becomes
`cost.bce`, `cost.crossent` becomes `cost.logreg` (labels are class indices here, not a label matrix) and
`dropout2` becomes `dropout` (dropout2 scales at test time, this tool at training time: the same expected
output). Any other type (blockexpand, resize, hs, ...) is an error naming the file, line and section, and
so is `randSparse` other than 0 (random sparse connectivity: use groups).

Keys that steered cuda-convnet's GPU kernels or placement (partialSum, sumWidth, gpu, randSparse=0,
filterChannels, imgPixels, modulesX) or were Python hooks (initWFunc, initBFunc) are dropped, each with a
`# not carried over:` comment in the converted YAML. Layer-params keys written in layers.cfg (epsW,
coeff, keep, scale, ...), which cuda-convnet ignored there, move to the params file when it does not set
them. In layer-params: `wball` and `updatePeriod` are dropped with a comment; dropout layers'
`enable=0` becomes `keep: 1`; dnouri's fork's `dropout=p` on a layer (it dropped that layer's outputs)
becomes a new dropout layer `<layer>_dropout` right after it, with `keep: 1-p`, and the layers that read
the layer read the dropout layer instead. That needs both files, so only convert-cfg does it; training
straight from such a .cfg pair stops with an error that says to convert.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import yaml

from convnet_cli.config import layer_def, layer_params
from convnet_cli.config.yamlio import Located
from convnet_cli.errors import ConfigError, did_you_mean
from convnet_cli.layers.registry import layer_class, layer_types

# cuda-convnet / convnet2 type -> this tool's type, with the reason written into the YAML.
TYPE_MAP = {
    "cost.binxent": ("cost.bce", "cuda-convnet2's cost.binxent is convnet's cost.bce"),
    "cost.crossent": ("cost.logreg", "cuda-convnet2's cost.crossent took a label matrix; "
                                     "here labels are class indices, which cost.logreg takes"),
    "dropout2": ("dropout", "dropout2 scaled at test time; convnet's dropout scales at training time "
                            "(inverted dropout): the same expected output"),
}
# Types with no equivalent, and what to use instead.
TYPE_HINTS = {
    "cost.dce": "use cost.logreg",
    "blockexpand": "use a conv layer",
    "resize": "resize the features in make-batches instead",
    "rgb2yuv": "a color-space conversion; spectrograms have one channel",
    "rgb2lab": "a color-space conversion; spectrograms have one channel",
    "nailbourne": "use rnorm or batchnorm",
}
# Layer keys dropped with a comment, and why.
DROPPED_LAYER_KEYS = {
    "partialSum": "cuda-convnet GPU kernel hint; not needed here",
    "sumWidth": "cuda-convnet2 GPU kernel hint; not needed here",
    "gpu": "cuda-convnet2 multi-GPU placement; convnet runs on one device, chosen with --device",
    "randSparse": "random sparse connectivity is off (0); nothing to carry over",
    "filterChannels": "inferred here from channels / groups",
    "imgPixels": "inferred here from the input shape",
    "modulesX": "inferred here from the input shape",
    "initWFunc": "a cuda-convnet2 Python weight-init hook; the weights start from init/initW instead",
    "initBFunc": "a cuda-convnet2 Python bias-init hook; the biases start from initB instead",
    "initCFunc": "a cuda-convnet2 Python init hook; not supported",
    "trainingOnly": "cuda-convnet2 training-only flag; not supported",
}
# Params keys dropped with a comment, and why.
DROPPED_PARAM_KEYS = {
    "wball": "cuda-convnet2's weight-norm constraint; convnet has clip/clipNorm on gradients instead",
    "updatePeriod": "cuda-convnet2 updated every N minibatches; convnet updates after every minibatch",
    "sumWidth": "cuda-convnet2 GPU kernel hint; not needed here",
    "gpu": "cuda-convnet2 multi-GPU placement; not needed here",
    "enable": "dropout is on unless keep is 1",
}
# Keys of the layer-params file (also recognized, and moved there, when found in layers.cfg).
PARAM_KEYS = tuple(layer_params.KEYS)
PARAM_PER_INPUT = ("epsW", "momW", "wc", "wball")
# Layer keys holding one value per input in cuda-convnet.
LAYER_PER_INPUT = ("channels", "padding", "stride", "filterSize", "filterChannels", "groups", "randSparse",
                   "initW", "imgSize")
# Keys whose comma list (or cuda-convnet list) may also mean [h, w] here.
HW_KEYS = ("filterSize", "padding", "stride", "sizeX", "imgSize")
COMMON_KEYS = layer_def.COMMON_KEYS
CHECKED_KEYS = layer_def.CHECKED_KEYS

_KEY_LINE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.\-]*)\s*[=:]")
_SECTION = re.compile(r"^\s*\[([^\]]*)\]\s*$")
_INT = re.compile(r"^[-+]?\d+$")
_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
_INTERP = re.compile(r"%\(([^)]*)\)s")


# ---------------------------------------------------------------------------------------------------
# The INI reader
# ---------------------------------------------------------------------------------------------------
@dataclass
class _Entry:
    key: str
    value: str
    line: int


@dataclass
class _Section:
    name: str
    line: int
    entries: dict = field(default_factory=dict)  # lowercase key -> _Entry, in file order


def _strip_comment(line: str) -> str:
    """Drop a `;` or `#` comment that starts the line or follows whitespace."""
    s = line.strip()
    if s.startswith(("#", ";")):
        return ""
    m = re.search(r"\s[;#]", line)
    return (line[: m.start()] if m else line).rstrip()


def read_ini(text: str, source: str) -> tuple:
    """(DEFAULT _Section or None, [_Section] in file order). Malformed lines raise a one-line ConfigError."""
    if text.startswith("\ufeff"):
        text = text[1:]
    default = None
    sections = []
    by_name = {}
    current = None
    last = None
    for n, raw in enumerate(text.splitlines(), start=1):
        line = _strip_comment(raw)
        if not line.strip():
            continue
        m = _SECTION.match(line)
        if m:
            name = m.group(1).strip()
            if not name:
                raise ConfigError(f"{source}: line {n}: empty section header '[]'; write the layer name in it")
            if name in by_name:
                raise ConfigError(f"{source}: line {n}: section [{name}] appears twice (first at line "
                                  f"{by_name[name].line}); rename one or merge them")
            current = _Section(name, n)
            by_name[name] = current
            if name == "DEFAULT":
                default = current
            else:
                sections.append(current)
            last = None
            continue
        km = _KEY_LINE.match(line)
        if not km:
            if raw[:1].isspace() and last is not None:  # a continuation line, as ConfigParser read it
                last.value = (last.value + " " + line.strip()).strip()
                continue
            if line.lstrip().startswith("["):
                raise ConfigError(f"{source}: line {n}: '{line.strip()}' is not a section header; "
                                  f"write it as [name] alone on its line")
            raise ConfigError(f"{source}: line {n}: '{line.strip()}' is not a key=value line or a [section] "
                              f"header; write it as key=value")
        if current is None:
            raise ConfigError(f"{source}: line {n}: '{line.strip()}' is outside any section; put a [layer name] "
                              f"header above it")
        key = km.group(1)
        value = line[km.end():].strip()
        lower = key.lower()
        if lower in current.entries:
            first = current.entries[lower]
            raise ConfigError(f"{source}: line {n}: section [{current.name}]: key '{key}' appears twice "
                              f"(first at line {first.line}); keep one of them")
        last = current.entries[lower] = _Entry(key, value, n)
    for sec in ([default] if default else []) + sections:
        for e in sec.entries.values():
            e.value = _interpolate(e, sec, default, source)
    return default, sections


def _interpolate(entry, sec, default, source, depth=0) -> str:
    if "%" not in entry.value:
        return entry.value

    def lookup(m):
        name = m.group(1).lower()
        for s in (sec, default):
            if s is not None and name in s.entries:
                if depth > 10:
                    raise ConfigError(f"{source}: line {entry.line}: %({m.group(1)})s refers to itself")
                return _interpolate(s.entries[name], s, default, source, depth + 1)
        raise ConfigError(f"{source}: line {entry.line}: section [{sec.name}]: %({m.group(1)})s names no key of "
                          f"this section or [DEFAULT]")

    out = _INTERP.sub(lookup, entry.value.replace("%%", "\0"))
    return out.replace("\0", "%")


# ---------------------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------------------
def split_top(value: str) -> list:
    """Split on commas outside brackets: 'a,b' -> ['a', 'b']; 'tanh[1,1]' -> ['tanh[1,1]']."""
    parts, depth, cur = [], 0, []
    for ch in value:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth = max(0, depth - 1)
        if ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur).strip())
    return parts


def scalar(token: str):
    """'5' -> 5, '0.001' / '.75' / '1e-3' -> float, anything else -> the string."""
    t = token.strip()
    if _INT.match(t):
        return int(t)
    if _FLOAT.match(t):
        return float(t)
    return t


@dataclass
class _Item:
    """One key of a converted layer (value, with the INI tokens it came from), or a comment."""

    key: str | None
    value: object = None
    tokens: object = None  # str, or list of str for a list value
    line: int | None = None
    comment: str | None = None


@dataclass
class _Layer:
    name: str
    line: int | None
    items: list = field(default_factory=list)
    notes: list = field(default_factory=list)  # comments written above the layer

    def get(self, key):
        for it in self.items:
            if it.key == key:
                return it
        return None

    def keys(self):
        return [it.key for it in self.items if it.key is not None]

    def to_located(self) -> Located:
        out = Located()
        out.line = self.line
        for it in self.items:
            if it.key is not None:
                out[it.key] = it.value
                out.lines[it.key] = it.line
        return out


def _to_located(layers: list) -> Located:
    doc = Located()
    doc.line = 1
    for lay in layers:
        doc[lay.name] = lay.to_located()
        doc.lines[lay.name] = lay.line
    return doc


def _note(key, raw, why) -> str:
    return f"not carried over: {key}={raw} ({why})"


def _list_value(tokens: list):
    values = [scalar(t) for t in tokens]
    return values[0] if len(values) == 1 else values


# ---------------------------------------------------------------------------------------------------
# layers.cfg
# ---------------------------------------------------------------------------------------------------
@dataclass
class _LayerResult:
    layers: list
    header: list  # comments for the top of the file
    moved: dict  # layer -> [(key, raw value, line)] params keys found in layers.cfg


def _canonical(key: str, known) -> str:
    lower = {k.lower(): k for k in known}
    return lower.get(key.lower(), key)


def _type_keys(cls) -> dict:
    """Every spelling a layer class accepts (its keys and their legacy spellings) -> the key's name."""
    out = {}
    for name, key in cls.keys.items():
        out[name] = name
        for alt in key.legacy:
            out[alt] = name
    return out


def _convert_layers(text: str, source: str) -> _LayerResult:
    default, sections = read_ini(text, source)
    if not sections:
        raise ConfigError(f"{source}: no [layer] sections; a layers.cfg has one [name] section per layer")
    res = _LayerResult([], [], {})
    default_used = set()
    for sec in sections:
        res.layers.append(_convert_layer(sec, default, source, res, default_used))
    if default is not None:
        for lower, e in default.entries.items():
            if lower in default_used:
                continue
            key = _canonical(e.key, list(DROPPED_LAYER_KEYS) + list(PARAM_KEYS))
            if key in DROPPED_LAYER_KEYS:
                why = DROPPED_LAYER_KEYS[key]
            elif key in PARAM_KEYS:
                why = "a layer-params key; set it in the params file"
            else:
                why = "no layer here has this key"
            res.header.append("[DEFAULT] " + _note(e.key, e.value, why))
    return res


def _layer_error(source, line, name, message):
    return ConfigError(f"{source}: line {line}: section [{name}]: {message}")


def _convert_layer(sec, default, source, res, default_used) -> _Layer:
    """One [section] of layers.cfg -> a _Layer of YAML items (and comments for what is not carried over)."""
    lay = _Layer(sec.name, sec.line)
    cls, given_type, our_type = _layer_type(sec, default, source, lay)
    own = _type_keys(cls)
    known = list(own) + list(COMMON_KEYS) + list(CHECKED_KEYS) + list(DROPPED_LAYER_KEYS) + list(PARAM_KEYS)
    entries = _entries_with_default(sec, default, cls, own, known, lay, default_used)
    inputs_entry = next((e for e in entries if e.key.lower() == "inputs"), None)
    n_inputs = len([t for t in split_top(inputs_entry.value) if t]) if inputs_entry else 0
    for e in entries:
        key = _canonical(e.key, known)
        key = own.get(key, key)  # a legacy spelling is written under the key's own name
        if key == "type":
            lay.items.append(_Item("type", our_type, given_type, e.line))
        else:
            _convert_entry(e, key, cls, own, n_inputs, source, res, lay)
    return lay


def _layer_type(sec, default, source, lay) -> tuple:
    """(layer class, type as written, this tool's type name) of a section; notes a renamed type on `lay`."""
    type_entry = sec.entries.get("type") or (default.entries.get("type") if default else None)
    if type_entry is None:
        raise _layer_error(source, sec.line, sec.name, "has no type=; add e.g. type=conv")
    given_type = type_entry.value.strip()
    our_type, why = TYPE_MAP.get(given_type, (given_type, None))
    cls = layer_class(our_type)
    if cls is None:
        hint = TYPE_HINTS.get(given_type)
        hint = f" ({hint})" if hint else did_you_mean(given_type, layer_types())
        raise _layer_error(source, type_entry.line, sec.name,
                           f"convnet has no layer type '{given_type}'{hint}; its types: {', '.join(layer_types())}")
    if why:
        lay.notes.append(f"type {given_type} -> {our_type}: {why}")
    return cls, given_type, our_type


def _entries_with_default(sec, default, cls, own, known, lay, default_used) -> list:
    """The section's entries plus the [DEFAULT] keys its type has (and it does not set)."""
    entries = list(sec.entries.values())
    if default is not None:
        for lower, e in default.entries.items():
            canon = _canonical(e.key, known)
            if lower in sec.entries:
                continue
            if canon in own or (canon == "neuron" and cls.owns_neuron):
                entries.append(e)
                default_used.add(lower)
                lay.notes.append(f"{canon} from [DEFAULT] (line {e.line})")
    return entries


def _convert_entry(e, key, cls, own, n_inputs, source, res, lay):
    """One `key=value` of a layer section (key: its name here) -> an item, or a comment, on `lay`."""
    name, raw = lay.name, e.value
    if key in DROPPED_LAYER_KEYS and key not in own:
        if key == "randSparse" and scalar(raw) not in (0, "0"):
            raise _layer_error(source, e.line, name, f"randSparse={raw}: random sparse connectivity is not "
                                                     f"supported; use groups, or set randSparse=0")
        lay.items.append(_Item(None, comment=_note(e.key, raw, DROPPED_LAYER_KEYS[key]), line=e.line))
        return
    if key in PARAM_KEYS and key not in own:
        res.moved.setdefault(name, []).append((key, raw, e.line))
        lay.items.append(_Item(None, comment=f"moved to the params file: {e.key}={raw}", line=e.line))
        return
    if raw == "":
        raise _layer_error(source, e.line, name, f"key '{e.key}' has no value; give one or remove the line")
    if key == "inputs":
        toks = [t for t in split_top(raw) if t]
        lay.items.append(_Item("inputs", toks[0] if len(toks) == 1 else toks, raw, e.line))
        return
    if key == "neuron":
        lay.items.append(_Item("neuron", raw.strip(), raw, e.line))
        return
    if key == "channels" and "," in raw:  # checked against the input's shape as written
        lay.items.append(_Item(key, raw.replace(" ", ""), raw, e.line))
        return
    toks = split_top(raw)
    if len(toks) > 1 and key in LAYER_PER_INPUT:
        key_kind = cls.keys[own[key]].kind if key in own else None
        values = [scalar(t) for t in toks]
        if len(toks) == n_inputs and key_kind != "floats":
            if len(set(map(str, values))) == 1:
                lay.items.append(_Item(key, values[0], toks[0], e.line))
                return
            if key in CHECKED_KEYS:
                lay.items.append(_Item(key, raw.replace(" ", ""), raw, e.line))
                return
            raise _layer_error(source, e.line, name,
                               f"{e.key}={raw} has a different value per input; convnet's {cls.type} layer "
                               f"takes one {key}: use one value")
        if not (key_kind == "floats" or (key in HW_KEYS and len(toks) == 2)):
            raise _layer_error(source, e.line, name,
                               f"{e.key}={raw} has {len(toks)} values but the layer has {n_inputs} input(s); "
                               f"give one value per input")
    lay.items.append(_Item(key, _list_value(toks), toks if len(toks) > 1 else toks[0], e.line))


def cfg_to_layer_def(text: str, source: str = "layers.cfg") -> Located:
    """cuda-convnet layers.cfg text -> the mapping `parse_layer_def` takes, with INI line numbers."""
    return _to_located(_convert_layers(text, source).layers)


# ---------------------------------------------------------------------------------------------------
# layer-params.cfg
# ---------------------------------------------------------------------------------------------------
@dataclass
class _ParamsResult:
    layers: list
    dropout: dict  # layer -> (p, line): dnouri's fork's `dropout=p`


def _convert_params(text: str, source: str) -> _ParamsResult:
    default, sections = read_ini(text, source)
    res = _ParamsResult([], {})
    known = list(PARAM_KEYS) + list(DROPPED_PARAM_KEYS) + ["dropout"]
    for sec in ([default] if default else []) + sections:
        lay = _Layer(sec.name, sec.line)
        for e in sec.entries.values():
            key = _canonical(e.key, known)
            raw = e.value
            if raw == "":
                raise _layer_error(source, e.line, sec.name, f"key '{e.key}' has no value; give one or remove the line")
            if key == "dropout":
                p = scalar(raw)
                if not isinstance(p, (int, float)) or not 0 <= p < 1:
                    raise _layer_error(source, e.line, sec.name, f"dropout={raw} must be a number in [0, 1)")
                if p > 0:
                    res.dropout[sec.name] = (float(p), e.line)
                lay.items.append(_Item(None, comment=f"dropout={raw}: see the dropout layer after {sec.name}"
                                       if p > 0 else _note(e.key, raw, "no dropout"), line=e.line))
                continue
            if key == "enable":
                on = scalar(raw)
                if on in (0, "0", "false", "False"):
                    lay.items.append(_Item("keep", 1.0, "1", e.line))
                    lay.notes.append(f"enable={raw} -> keep: 1 (dropout switched off)")
                else:
                    lay.items.append(_Item(None, comment=_note(e.key, raw, DROPPED_PARAM_KEYS["enable"]), line=e.line))
                continue
            if key in DROPPED_PARAM_KEYS:
                lay.items.append(_Item(None, comment=_note(e.key, raw, DROPPED_PARAM_KEYS[key]), line=e.line))
                continue
            toks = split_top(raw)
            if len(toks) > 1 and key not in PARAM_PER_INPUT:
                raise _layer_error(source, e.line, sec.name, f"{e.key}={raw} must be one value (only epsW, momW "
                                                             f"and wc take one per input)")
            lay.items.append(_Item(key, _list_value(toks), toks if len(toks) > 1 else toks[0], e.line))
        res.layers.append(lay)
    return res


def cfg_to_layer_params(text: str, source: str = "layer-params.cfg") -> Located:
    """cuda-convnet layer-params.cfg text -> the mapping `parse_layer_params` takes ([DEFAULT] -> 'DEFAULT')."""
    res = _convert_params(text, source)
    if res.dropout:
        name, (p, line) = next(iter(res.dropout.items()))
        raise ConfigError(
            f"{source}: line {line}: section [{name}]: dropout={p:g} is dnouri's cuda-convnet fork's dropout on a "
            f"layer's outputs; convnet has dropout layers: run `convnet convert-cfg LAYERS.cfg {source} OUT_DIR`, "
            f"which inserts one after '{name}' with keep {1 - p:g}")
    return _to_located(res.layers)


# ---------------------------------------------------------------------------------------------------
# Both files -> commented YAML
# ---------------------------------------------------------------------------------------------------
@dataclass
class Conversion:
    layers_yaml: str
    params_yaml: str
    layer_def: Located
    layer_params: Located
    not_carried: list  # the '# not carried over' comments, one per dropped key


def _dropout_name(base: str, taken) -> str:
    name = f"{base}_dropout"
    i = 2
    while name in taken:
        name = f"{base}_dropout{i}"
        i += 1
    return name


def translate_texts(layers_text: str, params_text: str, layers_source: str = "layers.cfg",
                    params_source: str = "layer-params.cfg") -> Conversion:
    """Both INI texts -> commented YAML texts and their mappings (unchecked: see config/convert.py)."""
    lres = _convert_layers(layers_text, layers_source)
    pres = _convert_params(params_text, params_source)
    layers = lres.layers
    names = [lay.name for lay in layers]
    params_by_name = {p.name: p for p in pres.layers}

    # dnouri's `dropout=p`: a dropout layer right after the layer; later layers read it instead.
    for base, (p, line) in pres.dropout.items():
        if base not in names:
            continue
        new = _dropout_name(base, set(names) | set(params_by_name))
        idx = names.index(base)
        for lay in layers[idx + 1:]:
            it = lay.get("inputs")
            if it is None:
                continue
            if isinstance(it.value, list):
                it.value = [new if v == base else v for v in it.value]
            elif it.value == base:
                it.value = new
        drop = _Layer(new, None, [_Item("type", "dropout"), _Item("inputs", base)],
                      [f"inserted by convert-cfg: dropout={p:g} on '{base}' in {params_source} (line {line}), "
                       f"dnouri's cuda-convnet fork"])
        layers.insert(idx + 1, drop)
        names.insert(idx + 1, new)
        keep = round(1.0 - p, 12)
        plain = _Layer(new, None, [_Item("keep", keep)], [f"from dropout={p:g} on '{base}': keep = 1 - dropout"])
        pres.layers.append(plain)
        params_by_name[new] = plain

    # layer-params keys found in layers.cfg move to the params file unless it sets them.
    for lname, moved in lres.moved.items():
        target = params_by_name.get(lname)
        if target is None:
            target = _Layer(lname, None)
            pres.layers.append(target)
            params_by_name[lname] = target
        for key, raw, line in moved:
            if target.get(key) is not None:
                target.items.append(_Item(None, comment=_note(key, raw, f"also in {layers_source} line {line}; "
                                                                        f"the value here wins")))
                continue
            toks = split_top(raw)
            target.items.append(_Item(key, _list_value(toks), toks if len(toks) > 1 else toks[0], None))
            target.notes.append(f"{key} moved here from {layers_source} line {line}")

    # params sections that name no layer (cuda-convnet ignored them)
    kept_params = []
    header_params = []
    for p in pres.layers:
        if p.name != "DEFAULT" and p.name not in names:
            header_params.append(f"[{p.name}] (line {p.line}) names no layer of {layers_source}; not carried over")
            continue
        kept_params.append(p)

    layer_def = _to_located(layers)
    layer_params = _to_located(kept_params)
    not_carried = ([h for h in lres.header if "not carried over" in h]
                   + [it.comment for lay in layers for it in lay.items if it.comment and "not carried over" in it.comment]
                   + [it.comment for lay in kept_params for it in lay.items
                      if it.comment and "not carried over" in it.comment]
                   + header_params)
    layers_yaml = _emit(layers, layers_source, "layer definition", lres.header)
    params_yaml = _emit(kept_params, params_source, "layer params", header_params)
    return Conversion(layers_yaml, params_yaml, layer_def, layer_params, not_carried)


# ---------------------------------------------------------------------------------------------------
# YAML text
# ---------------------------------------------------------------------------------------------------
_PLAIN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
_YAML_WORDS = {"yes", "no", "on", "off", "true", "false", "null", "y", "n", "~"}


def _yaml_key(name: str) -> str:
    if _PLAIN_NAME.match(name) and name.lower() not in _YAML_WORDS:
        return name
    return _quote(name)


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _loads(text: str):
    try:
        return yaml.safe_load("k: " + text)["k"]
    except yaml.YAMLError:
        return object()


def _same(a, b) -> bool:
    return type(a) is type(b) and a == b


def _yaml_scalar(value, token=None, in_list=False) -> str:
    if isinstance(value, float):
        if token is not None and _same(_loads(token.strip()), value):
            return token.strip()
        return repr(value)
    if isinstance(value, int):
        return str(value)
    s = str(value)
    if not in_list and _same(_loads(s), s):
        return s
    if in_list and not re.search(r"[\[\]{},:#&*!|>'\"%@`]", s) and _same(_loads(s), s):
        return s
    return _quote(s)


def _yaml_value(value, tokens=None) -> str:
    if isinstance(value, list):
        toks = tokens if isinstance(tokens, list) and len(tokens) == len(value) else [None] * len(value)
        return "[" + ", ".join(_yaml_scalar(v, t, in_list=True) for v, t in zip(value, toks)) + "]"
    return _yaml_scalar(value, tokens if isinstance(tokens, str) else None)


def _emit(layers: list, source: str, what: str, header: list) -> str:
    out = [f"# {what}, converted by `convnet convert-cfg` from {source} (cuda-convnet INI)."]
    out += [f"# {h}" for h in header]
    for lay in layers:
        out.append("")
        out += [f"# {n}" for n in lay.notes]
        if not lay.keys():  # nothing but comments: write them above an empty mapping
            out += [f"# {it.comment}" for it in lay.items]
            out.append(f"{_yaml_key(lay.name)}: {{}}")
            continue
        out.append(f"{_yaml_key(lay.name)}:")
        for it in lay.items:
            if it.key is None:
                out.append(f"  # {it.comment}")
            else:
                out.append(f"  {it.key}: {_yaml_value(it.value, it.tokens)}")
    return "\n".join(out) + "\n"
