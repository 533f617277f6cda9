"""The modules of ``ilnas_tf`` import each other without cycles.

Every ``import`` statement counts, at module level and inside functions (a lazy import inside a
function only hides a cycle): the graph of intra-package imports must be acyclic, so the
package has a module order (``genotype`` -> ``ops`` -> ``search_cell`` -> ``fused_cell`` ->
``search_space`` -> ...).
"""

from __future__ import annotations

import ast
import pathlib

PACKAGE = "ilnas_tf"
PACKAGE_DIR = pathlib.Path(__file__).resolve().parents[1] / PACKAGE


def package_modules(package_dir: pathlib.Path = PACKAGE_DIR) -> dict[str, pathlib.Path]:
    """Module name (``ops``, ``search_space``; ``__init__`` for the package) -> path."""
    return {path.stem: path for path in sorted(package_dir.glob("*.py"))}


def imported_modules(source: str, modules) -> set[str]:
    """The package modules that ``source`` imports anywhere (any nesting level)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == PACKAGE:
                    found.add(parts[1] if len(parts) > 1 else "__init__")
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: ``from . import x`` / ``from .x import y``
                base = node.module.split(".")[0] if node.module else None
            elif node.module and node.module.split(".")[0] == PACKAGE:
                parts = node.module.split(".")
                base = parts[1] if len(parts) > 1 else None
            else:
                continue
            if base is not None:
                found.add(base)
            else:  # ``from ilnas_tf import a, b``: submodules, or names of __init__
                for alias in node.names:
                    found.add(alias.name if alias.name in modules else "__init__")
    return {name for name in found if name in modules}


def import_graph(package_dir: pathlib.Path = PACKAGE_DIR) -> dict[str, set[str]]:
    modules = package_modules(package_dir)
    graph = {}
    for name, path in modules.items():
        graph[name] = imported_modules(path.read_text(encoding="utf-8"), modules) - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle ``[a, b, ..., a]``, or None (depth-first search)."""
    state = dict.fromkeys(graph, 0)  # 0 new, 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state[target] == 1:
                return stack[stack.index(target) :] + [target]
            if state[target] == 0:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if state[node] == 0:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert {"ops", "search_space", "fused_cell", "search_cell", "genotype"} <= set(graph)
    assert "search_cell" in graph["fused_cell"] and "fused_cell" in graph["search_space"]
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_function_level_imports_count(tmp_path):
    """A lazy import inside a function closes a cycle too (as ``search_space`` once did)."""
    (tmp_path / "a.py").write_text("from ilnas_tf.b import thing\n")
    (tmp_path / "b.py").write_text(
        "def make():\n    from ilnas_tf.a import other\n    return other\n"
    )
    (tmp_path / "c.py").write_text("from ilnas_tf import a, b\nimport ilnas_tf.d\n")
    (tmp_path / "d.py").write_text("import numpy\n")
    graph = import_graph(tmp_path)
    assert graph == {"a": {"b"}, "b": {"a"}, "c": {"a", "b", "d"}, "d": set()}
    assert find_cycle(graph) in (["a", "b", "a"], ["b", "a", "b"])
    (tmp_path / "b.py").write_text("def make():\n    return 1\n")
    assert find_cycle(import_graph(tmp_path)) is None
