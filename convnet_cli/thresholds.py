"""Score thresholds per class: `--threshold` of detect and predict, and the thresholds.yaml that
`evaluate --calibrate` writes.

    --threshold 0.7                      every class
    --threshold upcall=0.8,gunshot=0.6   those classes; the others 0.5
    --threshold 0.3,upcall=0.9           both
    --threshold thresholds.yaml          a YAML mapping {class: threshold} (evaluate --calibrate's; a class it
                                         does not name keeps 0.5)
"""
from __future__ import annotations

import math
import os

from convnet_cli.errors import ConfigError, did_you_mean
from convnet_cli.fileio import write_text_atomic

DEFAULT_THRESHOLD = 0.5
THRESHOLDS_FILE = "thresholds.yaml"


def _is_file_arg(text: str) -> bool:
    return text.lower().endswith((".yaml", ".yml")) or os.path.isfile(text)


def parse_thresholds(text, label_names) -> dict:
    """--threshold text (see the module docstring) -> {label: threshold} for every label of `label_names`.
    ConfigError (one line naming the flag or the file and line) for a class the network lacks or a value
    outside 0..1."""
    names = list(label_names)
    if text is not None and _is_file_arg(str(text).strip()):
        return read_thresholds(str(text).strip(), names)
    default = DEFAULT_THRESHOLD
    per = {}
    if text is not None and str(text).strip():
        for part in str(text).split(","):
            part = part.strip()
            if not part:
                continue
            if "=" in part:
                name, value = (s.strip() for s in part.rsplit("=", 1))
                if name not in names:
                    raise ConfigError(f"--threshold {text!r}: the network has no class '{name}'"
                                      f"{did_you_mean(name, names)}; its classes: {', '.join(names)}")
            else:
                name, value = None, part
            try:
                t = float(value)
            except ValueError:
                raise ConfigError(f"--threshold {text!r}: {value!r} is not a number; give T or CLASS=T,... "
                                  f"with T between 0 and 1, or a thresholds.yaml") from None
            if not 0.0 <= t <= 1.0:
                raise ConfigError(f"--threshold {text!r}: {t:g} is outside 0..1 (thresholds are probabilities)")
            if name is None:
                default = t
            else:
                per[name] = t
    return {n: per.get(n, default) for n in names}


def read_thresholds(path: str, label_names) -> dict:
    """A thresholds.yaml ({class: threshold}) -> {label: threshold} for every label (unnamed ones 0.5)."""
    from convnet_cli.config.yamlio import load_yaml_text, read_text

    doc = load_yaml_text(read_text(path, "thresholds"), os.path.basename(path))
    if not isinstance(doc, dict) or not doc:
        raise ConfigError(f"{path}: must be a mapping of class: threshold (as evaluate --calibrate writes it)")
    lines = getattr(doc, "lines", {}) or {}
    names = list(label_names)
    out = {n: DEFAULT_THRESHOLD for n in names}
    for key, value in doc.items():
        name = str(key)
        at = f" (line {lines[key]})" if lines.get(key) else ""
        if name not in names:
            raise ConfigError(f"{path}: class '{name}'{at} is not a class of the network{did_you_mean(name, names)}; "
                              f"its classes: {', '.join(names)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not 0.0 <= value <= 1.0:
            raise ConfigError(f"{path}: the threshold of '{name}'{at} is {value!r}; give a probability between 0 "
                              "and 1")
        out[name] = float(value)
    return out


def write_thresholds(path: str, thresholds: dict, comment: str = "") -> str:
    """thresholds.yaml: {class: threshold}, atomically, with `comment` lines on top (how they were chosen)."""
    head = "".join(f"# {line}\n" for line in comment.splitlines() if line.strip())
    body = "".join(f"{_yaml_key(c)}: {float(t):.6g}\n" for c, t in thresholds.items())
    write_text_atomic(path, head + body)
    return path


def _yaml_key(name: str) -> str:
    import json

    plain = name and name[0].isalpha() and all(ch.isalnum() or ch in "_-. " for ch in name) and name.strip() == name
    return name if plain and name.lower() not in ("yes", "no", "true", "false", "null", "on", "off") else json.dumps(name)
