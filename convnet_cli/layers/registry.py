"""The table from a layer's `type` string to its class.

Each module of this package registers its classes with `@register` (see base.py); importing this module
imports them all, so a new layer type is one new file in this package plus its test. Everything that looks a
layer type up by name (the layer-def parser, the .cfg converter, tests) goes through `layer_class` here.
"""
import importlib
import pkgutil

import convnet_cli.layers as _pkg
from convnet_cli.layers.base import LAYER_ALIASES, LAYER_CLASSES

for _mod in sorted(m.name for m in pkgutil.iter_modules(_pkg.__path__)):
    if _mod not in ("base", "registry"):
        importlib.import_module(f"convnet_cli.layers.{_mod}")

REGISTRY = LAYER_CLASSES
ALIASES = LAYER_ALIASES


def layer_class(type_name: str):
    """The class for a type name (or a legacy alias of one), or None."""
    return REGISTRY.get(ALIASES.get(type_name, type_name))


def layer_types() -> list:
    """Every registered type name, sorted."""
    return sorted(REGISTRY)
