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


def _part(module: str) -> str:
    """convnet_cli.train.trainer -> 'train'; convnet_cli.net -> 'net'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


PIPELINES = {"train", "predict", "detect", "review", "info", "show", "export"}
FOUNDATION = {"net", "layers", "config", "data", "ingest", "metrics", "updaters", "backend", "errors", "fileio",
              "progress", "thresholds", "parallel"}


def upward_imports(graph: dict) -> list:
    """(module, imported) pairs against docs/DESIGN.md's direction: only cli.py and commands/ import the
    commands; train/ imports no other pipeline (it once took its metrics from predict/); the foundation
    (net, layers, config, data, ingest, metrics, ...) imports no pipeline."""
    bad = []
    for module, deps in graph.items():
        part = _part(module)
        for d in deps:
            dp = _part(d)
            if dp in ("commands", "cli") and part not in ("commands", "cli", "__main__"):
                bad.append((module, d))
            elif part == "train" and dp in PIPELINES - {"train"}:
                bad.append((module, d))
            elif part in FOUNDATION and dp in PIPELINES:
                bad.append((module, d))
    return sorted(bad)


def test_upward_imports_are_found():
    graph = {"convnet_cli.train.best": {"convnet_cli.predict.predict"}, "convnet_cli.net": {"convnet_cli.train.x"},
             "convnet_cli.data.writer": {"convnet_cli.commands.make_batches"},
             "convnet_cli.commands.train": {"convnet_cli.train.trainer"}}
    assert upward_imports(graph) == [("convnet_cli.data.writer", "convnet_cli.commands.make_batches"),
                                     ("convnet_cli.net", "convnet_cli.train.x"),
                                     ("convnet_cli.train.best", "convnet_cli.predict.predict")]


def test_imports_go_one_way():
    bad = upward_imports(import_graph())
    assert not bad, "imports against docs/DESIGN.md's direction: " + ", ".join(f"{a} -> {b}" for a, b in bad)
