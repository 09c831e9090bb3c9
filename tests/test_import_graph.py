"""The package's import graph has no cycle, counting imports inside functions too (a cycle hidden behind a
function-level import is still a cycle: the two modules cannot be understood, or split, one at a time)."""
from __future__ import annotations

import ast
import os

import convnet_cli

PKG = "convnet_cli"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(convnet_cli.__file__)))


def modules() -> dict:
    """module name -> (path, is_package) for every .py file of the package."""
    out = {}
    for folder, _, files in os.walk(os.path.join(ROOT, PKG)):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                is_pkg = name.endswith(".__init__")
                out[name[: -len(".__init__")] if is_pkg else name] = (path, is_pkg)
    return out


def imports_of(name: str, path: str, is_pkg: bool, known) -> set:
    """Package modules that `name` imports anywhere in its source (module level or inside functions)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    here = name if is_pkg else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                parts = here.split(".")
                base = ".".join(parts[: len(parts) - (node.level - 1)])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.add(target)
            # `from pkg import mod` imports the module pkg.mod
            found.update(f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known)
    return {m for m in found if m in known and m != name}


def import_graph() -> dict:
    mods = modules()
    return {name: imports_of(name, path, is_pkg, mods) for name, (path, is_pkg) in mods.items()}


def find_cycle(graph: dict):
    """One cycle as a list of module names [a, b, ..., a], or None."""
    state = {}  # name -> 1 on the current path, 2 done
    path = []

    def visit(v):
        state[v] = 1
        path.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                return path[path.index(w):] + [w]
            if w not in state:
                cycle = visit(w)
                if cycle:
                    return cycle
        path.pop()
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state:
            cycle = visit(v)
            if cycle:
                return cycle
    return None


def test_the_graph_sees_function_level_and_relative_imports(tmp_path):
    src = tmp_path / "mod.py"
    src.write_text("from . import sibling\nfrom ..other import thing\n\n\ndef f():\n    import convnet_cli.deep\n")
    known = {"convnet_cli.pkg.mod", "convnet_cli.pkg.sibling", "convnet_cli.other", "convnet_cli.deep"}
    assert imports_of("convnet_cli.pkg.mod", str(src), False, known) == known - {"convnet_cli.pkg.mod"}
    assert len(import_graph()) > 40


def test_finder_reports_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
