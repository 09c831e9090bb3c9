"""`convnet convert-cfg`: read a cuda-convnet layers.cfg and layer-params.cfg, translate them (legacy_cfg.py),
check the result with the YAML parsers, and write the two commented YAML files atomically."""
from __future__ import annotations

import os

from convnet_cli.config.layer_def import parse_layer_def
from convnet_cli.config.layer_params import parse_layer_params
from convnet_cli.config.legacy_cfg import Conversion, translate_texts
from convnet_cli.config.yamlio import display_name, read_text
from convnet_cli.errors import ConfigError
from convnet_cli.fileio import write_text_atomic


def convert_texts(layers_text: str, params_text: str, layers_source: str = "layers.cfg",
                  params_source: str = "layer-params.cfg", check: bool = True) -> Conversion:
    """Both INI texts -> commented YAML texts and their mappings, checked with the YAML parsers."""
    conv = translate_texts(layers_text, params_text, layers_source, params_source)
    if check:
        specs = parse_layer_def(conv.layer_def, layers_source)
        parse_layer_params(conv.layer_params, [s.name for s in specs], params_source,
                           {s.name: len(s.inputs) for s in specs})
    return conv


def convert_files(layers_cfg: str, params_cfg: str, out_dir: str, overwrite: bool = False) -> tuple:
    """Write OUT_DIR/<stem>.yaml and OUT_DIR/<stem>-params.yaml (stem of layers_cfg); return both paths."""
    conv = convert_paths(layers_cfg, params_cfg)
    return write_conversion(conv, layers_cfg, out_dir, overwrite)


def convert_paths(layers_cfg: str, params_cfg: str) -> Conversion:
    for path in (layers_cfg, params_cfg):
        if not path.endswith(".cfg"):
            raise ConfigError(f"{path}: expected a cuda-convnet .cfg file")
    return convert_texts(read_text(layers_cfg, "layer definition"), read_text(params_cfg, "layer params"),
                         display_name(layers_cfg), display_name(params_cfg))


def output_paths(layers_cfg: str, out_dir: str) -> tuple:
    stem = os.path.splitext(os.path.basename(layers_cfg))[0]
    return os.path.join(out_dir, f"{stem}.yaml"), os.path.join(out_dir, f"{stem}-params.yaml")


def write_conversion(conv: Conversion, layers_cfg: str, out_dir: str, overwrite: bool = False) -> tuple:
    layers_yaml, params_yaml = output_paths(layers_cfg, out_dir)
    if not overwrite:
        for path in (layers_yaml, params_yaml):
            if os.path.exists(path):
                raise ConfigError(f"{path}: already exists; pass --overwrite to replace it, or pick another OUT_DIR")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ConfigError(f"{out_dir}: is a file; OUT_DIR must be a folder")
    os.makedirs(out_dir, exist_ok=True)
    for path, text in ((layers_yaml, conv.layers_yaml), (params_yaml, conv.params_yaml)):
        write_text_atomic(path, text)
    return layers_yaml, params_yaml
