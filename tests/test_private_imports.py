"""No module of convnet_cli imports another module's private (`_`-prefixed) names: what two modules share
is public in one of them (docs/CONTRIBUTING.md)."""
from __future__ import annotations

import ast
import os

PKG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "convnet_cli")


def _private_imports():
    found = []
    for folder, _, files in os.walk(PKG):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            tree = ast.parse(open(path, encoding="utf-8").read(), path)
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("convnet_cli"):
                    for alias in node.names:
                        if alias.name.startswith("_") and not alias.name.startswith("__"):
                            found.append(f"{os.path.relpath(path, PKG)}:{node.lineno} {node.module}.{alias.name}")
                elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                    # module._name, where `module` was imported from convnet_cli (e.g. batch_files.str_keys)
                    if isinstance(node.value, ast.Name) and node.value.id in _imported_modules(tree):
                        found.append(f"{os.path.relpath(path, PKG)}:{node.lineno} {node.value.id}.{node.attr}")
    return found


def _imported_modules(tree) -> set:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("convnet_cli"):
            names.update(a.asname or a.name for a in node.names if not a.name[:1].isupper())
        elif isinstance(node, ast.Import):
            names.update((a.asname or a.name).split(".")[0] for a in node.names if a.name.startswith("convnet_cli"))
    return names


def test_no_module_imports_another_modules_private_names():
    found = _private_imports()
    assert not found, "private names used across modules (make them public where they are shared): " + \
        "; ".join(found)
