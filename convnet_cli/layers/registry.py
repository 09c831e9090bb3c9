"""The table from a layer's `type` string to its class.

Each module of this package registers its classes with `@register` (see base.py); importing this module
imports them all, so a new layer type is one new file here plus its test.
"""
import importlib
import pkgutil

import convnet_cli.layers as _pkg
from convnet_cli.layers.base import _ALIASES, _REGISTRY  # noqa: F401  (re-exported for inspection)

for _mod in sorted(m.name for m in pkgutil.iter_modules(_pkg.__path__)):
    if _mod not in ("base", "registry"):
        importlib.import_module(f"convnet_cli.layers.{_mod}")

REGISTRY = _REGISTRY
ALIASES = _ALIASES
