"""What a layer type does is said by its class (convnet_cli/layers/), never by a comparison of its type name
elsewhere: outside layers/, no `l.type == "conv"`, `l.type in ("cost.logreg", "cost.bce")` and the like.

A comparison counts when one side is an attribute `.type` (or `.type_name`) and the other a string or a
tuple/list/set of strings; comparing two layers' types (`src.type == l.fuses_with`) is not a per-type table.
"""
from __future__ import annotations

import ast
import os

import convnet_cli

PKG_DIR = os.path.dirname(os.path.abspath(convnet_cli.__file__))
LAYERS_DIR = os.path.join(PKG_DIR, "layers")
TYPE_ATTRS = ("type", "type_name")
COMPARISONS = (ast.Eq, ast.NotEq, ast.In, ast.NotIn)

def _is_type_attr(node) -> bool:
    return isinstance(node, ast.Attribute) and node.attr in TYPE_ATTRS


def _is_strings(node) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return bool(node.elts) and all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts)
    return False


def type_comparisons(source: str, filename: str = "<source>") -> list:
    """Line numbers of the comparisons of a `.type` / `.type_name` attribute with string constants."""
    lines = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        for op, left, right in zip(node.ops, operands, operands[1:]):
            if isinstance(op, COMPARISONS) and ((_is_type_attr(left) and _is_strings(right))
                                                or (_is_type_attr(right) and _is_strings(left))):
                lines.append(node.lineno)
                break
    return sorted(lines)


def offences() -> dict:
    """{path relative to convnet_cli/: [line, ...]} for every module outside layers/."""
    found = {}
    for folder, _, files in os.walk(PKG_DIR):
        if os.path.commonpath([folder, LAYERS_DIR]) == LAYERS_DIR:
            continue
        for f in sorted(files):
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                with open(path, encoding="utf-8") as fh:
                    lines = type_comparisons(fh.read(), path)
                if lines:
                    found[os.path.relpath(path, PKG_DIR).replace(os.sep, "/")] = lines
    return found


def test_the_detector_finds_each_form_and_only_those():
    src = """\
a = l.type == "conv"
b = "conv" != layer.type
c = l.type in ("conv", "local", "fc")
d = spec.type_name not in ["rnn", "gru"]
e = 0 < x < 3 or l.type in {"pool"}
f = src.type == l.fuses_with
g = rec.get("type") in ("train", "test")
h = l.type in TRANSLATORS
i = type(l) is Layer
"""
    assert type_comparisons(src) == [1, 2, 3, 4, 5]


def test_no_layer_type_name_is_compared_outside_layers():
    found = offences()
    assert not found, ("a layer's type name compared outside convnet_cli/layers/ (say it with a class attribute "
                       f"or method of the layer instead): {found}")
