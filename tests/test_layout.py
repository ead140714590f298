"""The package layout: imports go downward only and no module imports itself back through others.

The layers and what each may import are the table in relulab/__init__.py's docstring (and the README's "How
the code is laid out"); this test is the table as data. Imports inside functions count too: a lazy import
that goes upward is still a dependency the lower package should not have.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "relulab"

_BELOW_EXPERIMENTS = {"core", "zoo", "kernels", "data", "training", "probes", "packing", "store"}
MAY_IMPORT = {
    "core": set(),
    "zoo": {"core"},
    "kernels": {"core", "zoo"},
    "data": {"core"},
    "training": {"core", "zoo", "data"},
    "probes": {"core", "zoo", "data", "training"},
    "packing": {"core", "zoo", "kernels", "data", "training"},
    "store": {"core", "zoo", "data", "training"},
    "experiments": _BELOW_EXPERIMENTS,
    "search": _BELOW_EXPERIMENTS | {"experiments"},
    "report": _BELOW_EXPERIMENTS | {"experiments", "search"},
    "results": _BELOW_EXPERIMENTS | {"experiments", "search", "report"},
    "cli": _BELOW_EXPERIMENTS | {"experiments", "search", "report", "results"},
    "integrations": {"core", "zoo", "probes", "store"},  # nothing imports it
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every relulab module `path` imports (absolute or relative, at any depth in the file)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "relulab"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] != "relulab":
                continue
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names if (SRC.parent / base.replace(".", "/") / a.name).exists()
                      or (SRC.parent / f"{base.replace('.', '/')}/{a.name}.py").exists()}
    return found - {name}


MODULES = {module_name(p): p for p in sorted(SRC.rglob("*.py")) if p.name != "__main__.py"}
GRAPH = {name: {m for m in imported_modules(path) if m in MODULES} for name, path in MODULES.items()}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_module_sits_in_a_known_package():
    loose = sorted(m for m in MODULES if layer(m) not in MAY_IMPORT and m != "relulab")
    assert loose == [], f"modules outside the layout's packages: {loose}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_downward_only(module):
    own = layer(module)
    if module == "relulab":
        return  # the package's face may re-export from anywhere below it
    upward = sorted(m for m in GRAPH[module] if layer(m) not in MAY_IMPORT[own] | {own, ""})
    assert upward == [], f"{module} ({own}) imports {upward}: {own} may import only {sorted(MAY_IMPORT[own])}"


def test_no_import_cycles():
    """Tarjan's strongly connected components over the module graph: any of more than one module is a cycle."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in GRAPH[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in GRAPH:
        if node not in index:
            visit(node)
    assert cycles == [], f"import cycles: {cycles}"


def test_the_check_sees_imports():
    """The graph is not empty by a parsing slip: the loop imports the model zoo, the CLI the experiments."""
    assert "relulab.zoo.models" in GRAPH["relulab.training.loop"]
    assert any(m.startswith("relulab.experiments") for m in GRAPH["relulab.cli.run"])
