"""YAML loading that remembers line numbers, so errors can say where a layer or key was written."""
from __future__ import annotations

import os

import yaml

from convnet_cli.errors import ConfigError
from convnet_cli.fileio import open_error


class Located(dict):
    """A mapping loaded from YAML; `lines[key]` is the 1-based line of each key, `line` the mapping's."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lines = {}
        self.line = None


class _Loader(yaml.SafeLoader):
    pass


def _construct_mapping(loader, node):
    loader.flatten_mapping(node)
    out = Located()
    out.line = node.start_mark.line + 1
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, (str, int, float, bool)) and key is not None:
            raise ConfigError(f"line {key_node.start_mark.line + 1}: a key must be a plain name, not {key!r}")
        key = str(key)
        if key in out:
            raise _Dup(key, key_node.start_mark.line + 1)
        out[key] = loader.construct_object(value_node, deep=True)
        out.lines[key] = key_node.start_mark.line + 1
    return out


class _Dup(Exception):
    def __init__(self, key, line):
        self.key, self.line = key, line


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml_text(text: str, source: str):
    """Parse YAML text; errors name `source` and the line PyYAML reports."""
    try:
        return yaml.load(text, Loader=_Loader)
    except _Dup as d:
        raise ConfigError(f"{source}: '{d.key}' appears twice (line {d.line}); keep one of them") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{source}: not valid YAML{where}: {problem}; fix the indentation or quoting there") from None


def read_text(path: str, what: str) -> str:
    try:
        with open(path, "r", encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise open_error(path, exc, f"{what} file", f"{what} must be a YAML file", error=ConfigError) from None


def display_name(path: str) -> str:
    return os.path.basename(path) if path else "<config>"
