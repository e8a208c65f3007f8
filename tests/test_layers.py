"""pytest tests/test_layers.py

The package's layering, read from the source with `ast` (function-local imports count: they are
dependencies too): no import cycle between megamid's packages or between modules, and every import goes
to a lower layer (DESIGN.md):

    cli, tools > recipe > train > eval > checkpoint > model > attention, rope, kernels, data, optim > config > errors
    platform imports nothing of megamid
"""

import ast
import pathlib
from collections import defaultdict

ROOT = pathlib.Path(__file__).resolve().parents[1] / "megamid"
PARTS = {"attention", "rope", "kernels", "data", "optim"}   # one layer: may import each other, without cycles
RANK = {"errors": 0, "platform": 0, "config": 1, **{p: 2 for p in PARTS}, "model": 3, "checkpoint": 4, "eval": 5,
        "train": 6, "recipe": 7, "study": 8, "cli": 9}


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path):
    """(imported megamid module, line) for every import in the file, at any depth."""
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name == "megamid" or name.startswith("megamid."):
                yield name, node.lineno


def _graph():
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    modules = defaultdict(dict)    # module -> {imported module: "file:line"}
    for name, path in files.items():
        for target, line in _imports(path):
            while target not in files and "." in target:
                target = target.rsplit(".", 1)[0]      # `from megamid.x import y` where y is not a module
            if target in files and target != name:
                modules[name].setdefault(target, f"{path.relative_to(ROOT.parent)}:{line}")
    return files, modules


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _find_cycle(edges: dict):
    """One cycle of the directed graph `edges` (node -> iterable of nodes) as a list of nodes, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_package_cycles():
    _, modules = _graph()
    packages = defaultdict(set)
    where = {}
    for source, targets in modules.items():
        for target, line in targets.items():
            a, b = _package(source), _package(target)
            if a and b and a != b:
                packages[a].add(b)
                where.setdefault((a, b), line)
    cycle = _find_cycle(packages)
    assert cycle is None, "package import cycle: " + " -> ".join(cycle) + "\n" + "\n".join(
        f"  {a} -> {b}: {where[(a, b)]}" for a, b in zip(cycle, cycle[1:]))


def test_no_module_cycles():
    """Between modules too (a package's __init__ re-exporting its own modules is not a cycle)."""
    _, modules = _graph()
    edges = {m: {t for t in ts if not (m.startswith(t + ".") or t.startswith(m + "."))} for m, ts in modules.items()}
    cycle = _find_cycle(edges)
    assert cycle is None, "module import cycle: " + " -> ".join(cycle) + "\n" + "\n".join(
        f"  {a} -> {b}: {modules[a][b]}" for a, b in zip(cycle, cycle[1:]))


def test_imports_go_down_the_layers():
    files, modules = _graph()
    assert set(RANK) >= {_package(m) for m in files if _package(m)}, "a new package needs a layer in RANK"
    wrong = []
    for source, targets in modules.items():
        a = _package(source)
        for target, line in targets.items():
            b = _package(target)
            if not a or not b or a == b:
                continue
            same_layer_ok = a in PARTS and b in PARTS
            if RANK[b] > RANK[a] or (RANK[b] == RANK[a] and not same_layer_ok):
                wrong.append(f"{a} (layer {RANK[a]}) imports {b} (layer {RANK[b]}): {line}")
    assert not wrong, "imports that go up or across the layers:\n" + "\n".join(wrong)


def test_platform_and_config_are_leaves():
    _, modules = _graph()
    for source, targets in modules.items():
        package = _package(source)
        outside = sorted(t for t in targets if _package(t) != package)
        if package == "platform":
            assert not outside, f"{source} imports {outside}: platform imports nothing else of megamid"
        if package == "config":
            assert set(outside) <= {"megamid.errors"}, f"{source} imports {outside}: config is a leaf"


def test_the_checker_finds_a_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set(), "c": {"a"}}) is None
