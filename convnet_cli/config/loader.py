"""The one config loader: a `--layer-def` or `--layer-params` file, YAML or a cuda-convnet INI `.cfg`, read and
handed to its parser (layer_def.py, layer_params.py), which only ever sees a mapping.

    load_layer_def(path)                          -> (specs, text)
    parse_layer_def_text(text, path)              -> specs
    load_layer_params(path, names, n_weights)     -> ({layer: LearnSpec}, text)
    parse_layer_params_text(text, path, names, n_weights) -> {layer: LearnSpec}

A path ending in `.cfg` is translated by legacy_cfg.py; anything else is YAML. Errors name the file.
"""
from __future__ import annotations

from convnet_cli.config.layer_def import parse_layer_def
from convnet_cli.config.layer_params import parse_layer_params
from convnet_cli.config.legacy_cfg import cfg_to_layer_def, cfg_to_layer_params
from convnet_cli.config.yamlio import display_name, load_yaml_text, read_text


def load_mapping(text: str, path: str, translate_cfg) -> tuple:
    """(mapping, source name) of a config text: `translate_cfg(text, source)` for a .cfg path, else YAML."""
    source = display_name(path)
    if path.endswith(".cfg"):
        return translate_cfg(text, source), source
    return load_yaml_text(text, source), source


def parse_layer_def_text(text: str, path: str = "layers.yaml") -> list:
    doc, source = load_mapping(text, path, cfg_to_layer_def)
    return parse_layer_def(doc, source)


def load_layer_def(path: str) -> tuple:
    """(specs, text) of a layer-def file (.yaml, or a cuda-convnet .cfg)."""
    text = read_text(path, "layer definition")
    return parse_layer_def_text(text, path), text


def parse_layer_params_text(text: str, path: str, layer_names: list, n_weights: dict | None = None) -> dict:
    doc, source = load_mapping(text, path, cfg_to_layer_params)
    return parse_layer_params(doc, layer_names, source, n_weights)


def load_layer_params(path: str, layer_names: list, n_weights: dict | None = None) -> tuple:
    """({layer: LearnSpec}, text) of a layer-params file (.yaml, or a cuda-convnet .cfg)."""
    text = read_text(path, "layer params")
    return parse_layer_params_text(text, path, layer_names, n_weights), text
