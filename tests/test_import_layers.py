"""Layers without cycles (issue 17): bouncetrack's imports go one way.

An AST walk over every module of ``bouncetrack/`` collects its imports of other
bouncetrack modules, at module level and inside functions alike: an import
hidden in a function is still a dependency (and hiding one to dodge a cycle is
what this forbids). Only ``if TYPE_CHECKING:`` blocks are left out: they never
run. Two rules:

1. no cycle, neither between modules nor between the units of the top level
   (``bouncetrack.X``, a package or a module);
2. the flow's layers, :data:`LAYERS`, lowest first: a module imports only
   modules of its own layer or of lower ones. A module's layer is that of the
   longest prefix listed (``bouncetrack.forward.jobs``, the outbox policy the
   pipe applies, sits below the rest of ``bouncetrack.forward``, the worker).

And an import inside a function is there for start-up cost only, and says so:
a comment at it (the line before or on it), or one ``# Lazy imports: why``
line at the top level of its module when one reason holds for all of them.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "bouncetrack"

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("core: vocabulary and configuration", ("bouncetrack", "bouncetrack.core")),
    ("classifier", ("bouncetrack.classifier",)),
    ("store and the policies over its records", (
        "bouncetrack.store", "bouncetrack.suppression", "bouncetrack.validation", "bouncetrack.forward.jobs",
    )),
    ("pipe and milter", ("bouncetrack.bounce_pipe", "bouncetrack.milter")),
    ("worker, API, metrics and the operator's tools", (
        "bouncetrack.forward", "bouncetrack.api", "bouncetrack.metrics", "bouncetrack.doctor",
        "bouncetrack.ops", "bouncetrack.harness",
    )),
    ("command line", ("bouncetrack.cli", "bouncetrack.__main__")),
)


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__``)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, outside ``if TYPE_CHECKING:`` blocks."""
    out: list[ast.Import | ast.ImportFrom] = []
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        elif isinstance(node, ast.If) and _type_checking_only(node):
            stack.extend(node.orelse)
        else:
            stack.extend(ast.iter_child_nodes(node))
    return out


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the bouncetrack modules it imports (``from x import name`` counts
    ``x.name`` when that is a module, else ``x``)."""
    mods = modules(root)
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                wanted = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    here = name.split(".") if is_package else name.split(".")[:-1]
                    here = here[: len(here) - (node.level - 1)]
                    base = ".".join(here + ([node.module] if node.module else []))
                wanted = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for target in wanted:
                while target not in mods and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in mods and target != name:
                    targets.add(target)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def unit(module: str) -> str:
    return ".".join(module.split(".")[:2])


def layer_of(module: str) -> int:
    best = (-1, -1)
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or (module.startswith(prefix + ".") and prefix != "bouncetrack"):
                best = max(best, (len(prefix), rank))
    assert best[1] >= 0, f"{module} is in no layer: add it to LAYERS"
    return best[1]


def problems(graph: dict[str, set[str]]) -> list[str]:
    """Every cycle and every import that goes up a layer, as readable lines."""
    out = [f"import cycle between modules: {' <-> '.join(c)}" for c in cycles(graph)]
    units: dict[str, set[str]] = {}
    for source, targets in graph.items():
        units.setdefault(unit(source), set()).update(unit(t) for t in targets if unit(t) != unit(source))
    out += [f"import cycle between top-level units: {' <-> '.join(c)}" for c in cycles(units)]
    for source, targets in sorted(graph.items()):
        for target in sorted(targets):
            if layer_of(target) > layer_of(source):
                out.append(f"{source} (layer {LAYERS[layer_of(source)][0]!r}) imports {target} "
                           f"(layer {LAYERS[layer_of(target)][0]!r}, above it)")
    return out


def _function_import_blocks(tree: ast.Module) -> list[tuple[int, int]]:
    """(first line, last line) of each run of bouncetrack imports inside a function."""
    found = []
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            for field in ("body", "orelse", "finalbody"):
                statements = getattr(node, field, None)
                if not isinstance(statements, list):
                    continue
                run: list[ast.stmt] = []
                for stmt in [*statements, None]:
                    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                        run.append(stmt)
                        continue
                    if any(_ours(i) for i in run):
                        found.append((run[0].lineno, run[-1].end_lineno or run[-1].lineno))
                    run = []
    return sorted(set(found))


def _ours(node: ast.stmt) -> bool:
    if isinstance(node, ast.ImportFrom):
        return node.level > 0 or (node.module or "").startswith("bouncetrack")
    return isinstance(node, ast.Import) and any(a.name.startswith("bouncetrack") for a in node.names)


def unexplained_lazy_imports(root: Path = PACKAGE) -> list[str]:
    out = []
    for name, path in modules(root).items():
        text = path.read_text()
        if any(line.startswith("# Lazy imports:") for line in text.splitlines()):
            continue
        lines = text.splitlines()
        for first, last in _function_import_blocks(ast.parse(text)):
            if not any("#" in line for line in lines[first - 2 : last]):
                out.append(f"{path.relative_to(root.parent)}:{first}: an import inside a function, without a word why")
    return out


def test_lazy_imports_say_why() -> None:
    assert unexplained_lazy_imports() == []


def test_imports_go_one_way() -> None:
    assert problems(import_graph()) == []


def test_an_added_cycle_or_upward_import_is_caught(tmp_path: Path) -> None:
    """The walk sees an import inside a function: a store module importing the pipe
    there is both a cycle (the pipe imports the store) and an import up a layer."""
    import shutil

    copy = tmp_path / "bouncetrack"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    with open(copy / "store" / "sql.py", "a") as fh:
        fh.write("\n\ndef _sneaky() -> None:\n    from ..bounce_pipe import process  # noqa: F401\n")
    found = problems(import_graph(copy))
    assert any("cycle between modules" in p and "bouncetrack.store.sql" in p for p in found), found
    assert any("cycle between top-level units" in p for p in found), found
    assert "bouncetrack.store.sql (layer 'store and the policies over its records') imports " \
        "bouncetrack.bounce_pipe.process (layer 'pipe and milter', above it)" in found
