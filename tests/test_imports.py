"""The module graph: every module imports on its own in a fresh interpreter, and the package's
modules form no import cycle (the entry scripts -> models/, datasets/ -> utils/ direction)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("utils", "datasets", "models")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules that ``name`` imports anywhere in its source (also inside functions),
    except under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    # a package's __init__ that only re-exports its submodules is not a dependency of those
    return {n: {d for d in _imports(n, p, known) if not n.startswith(d + ".")} for n, p in mods.items()}


def test_no_import_cycle_between_project_modules():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for d in sorted(graph[n]):
            if state.get(d) == 1:
                cycle = stack[stack.index(d):] + [d]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)


def test_dependency_direction():
    """utils imports nothing of the project's packages above it; datasets not models."""
    graph = _graph()
    for n, deps in graph.items():
        if n.startswith("utils"):
            assert not {d for d in deps if d.split(".")[0] in ("models", "datasets")}, (n, deps)
        if n.startswith("datasets"):
            assert not {d for d in deps if d.split(".")[0] == "models"}, (n, deps)


def test_decoder_does_not_know_cmsr():
    assert "models.cmsr" not in _graph()["models.decoder"]


def _dependency_order(graph: dict[str, set[str]]) -> list[str]:
    order: list[str] = []

    def visit(n: str) -> None:
        if n not in order:
            for d in sorted(graph[n]):
                visit(d)
            order.append(n)

    for n in sorted(graph):
        visit(n)
    return order


#: optional third-party packages: a module that needs one that is not installed is skipped
#: (e.g. models.triton_kernels without triton: models.triton_render imports it only when used)
OPTIONAL = ("triton",)

_IMPORT_EACH = """
import importlib, sys
project, optional = {packages!r}, {optional!r}
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m.split(".")[0] in project]:
        del sys.modules[loaded]   # each module starts from no project module loaded
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in optional:
            raise
        print("skipped", name, "needs", exc.name)
"""


def test_every_module_imports_on_its_own_in_dependency_order():
    """In a fresh interpreter, each module is imported with no project module loaded before it
    (third-party libraries such as torch stay loaded, to keep this fast), in dependency order."""
    order = _dependency_order(_graph())
    code = _IMPORT_EACH.format(packages=PACKAGES, optional=OPTIONAL)
    r = subprocess.run([sys.executable, "-c", code, *order], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    skipped = [line.split()[1] for line in r.stdout.splitlines() if line.startswith("skipped ")]
    assert set(skipped) <= {"models.triton_kernels"}, skipped  # only a module that needs an optional package
