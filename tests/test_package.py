"""Invariants of the package's structure that the maintainers rely on."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "fffsklearn"


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield name, path, ast.parse(path.read_text())


def _imported_modules(name, path, tree, known):
    """The package's modules that ``name`` imports, at module level or inside functions."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            candidates = [base] + [f"{base}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found.update(c for c in candidates if c in known and c != name)
    return found


def test_the_package_has_no_import_cycle_lazy_imports_included():
    modules = {name: (path, tree) for name, path, tree in _modules()}
    graph = {name: _imported_modules(name, *modules[name], modules) for name in modules}
    # A package's __init__ re-exports its modules: importing it from them is not a cycle
    # through the package, which Python resolves by loading the submodule alone.
    for name, targets in graph.items():
        if "." in name:
            targets.discard(name.rsplit(".", 1)[0])
    state = {}

    def visit(name, stack):
        state[name] = "open"
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                cycle = stack[stack.index(target):] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, stack + [target])
        state[name] = "done"

    for name in graph:
        if name not in state:
            visit(name, [name])


def test_no_function_over_80_lines_and_no_class_over_350():
    too_long = []
    for name, _, tree in _modules():
        for node in ast.walk(tree):
            limit = {ast.FunctionDef: 80, ast.ClassDef: 350}.get(type(node))
            if limit and node.end_lineno - node.lineno + 1 > limit:
                too_long.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1}")
    assert not too_long
