"""The layering of the five packages (docs: DESIGN "Layout"):

    prereg      the torch-free ground floor: imports none of the others
    producers   on prereg; never analysis or reports
    analysis    on prereg; never producers, never torch
    reports     on analysis and prereg; never producers
    dcr         the CLI on top: may import all

(a) reads every import statement of every module with ``ast`` (imports inside functions count)
and checks these rules and that no two packages import each other in a cycle; (b) imports every
module of dcr.analysis and dcr.prereg in a fresh interpreter where ``import torch`` fails.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("prereg", "producers", "analysis", "reports", "dcr")
MAY_IMPORT = {
    "prereg": {"prereg"},
    "producers": {"producers", "prereg"},
    "analysis": {"analysis", "prereg"},
    "reports": {"reports", "analysis", "prereg"},
    "dcr": set(PACKAGES),
}
TORCH_FREE = ("prereg", "analysis")
HEAVY = ("torch", "triton", "transformers")


def _modules(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "assets" not in p.relative_to(ROOT).parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``, at any depth."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: relative import (import as dcr.<package>)"
            base = node.module or ""
            # `from dcr import reports` imports the package dcr.reports
            out += [(node.lineno, f"{base}.{a.name}" if base == "dcr" else base) for a in node.names]
    return out


def _package_of(module: str) -> str | None:
    """The project package an imported module belongs to (None: a third-party or stdlib module)."""
    parts = module.split(".")
    if parts[0] in PACKAGES[:-1]:
        raise AssertionError(f"'{module}' is imported as a top-level module; import it as dcr.{module}")
    if parts[0] != "dcr":
        return None
    return parts[1] if len(parts) > 1 and parts[1] in PACKAGES[:-1] else "dcr"


def import_map() -> dict[str, dict[str, list[str]]]:
    """package -> imported package -> ['file:line', ...]."""
    out: dict[str, dict[str, list[str]]] = {p: {} for p in PACKAGES}
    for package in PACKAGES:
        for path in _modules(package):
            for line, module in _imports(path):
                target = _package_of(module)
                if target is not None:
                    out[package].setdefault(target, []).append(f"{path.relative_to(ROOT)}:{line}")
    return out


def test_every_package_has_modules():
    for package in PACKAGES:
        assert _modules(package), package


def test_packages_import_only_what_their_layer_allows():
    imports = import_map()
    assert imports["producers"].get("prereg") and imports["analysis"].get("prereg")  # the map sees imports
    problems = [f"{package} imports {target} at {', '.join(where)}"
                for package, targets in imports.items() for target, where in targets.items()
                if target not in MAY_IMPORT[package]]
    assert problems == []


def test_no_cycles_between_packages():
    graph = {p: {t for t in ts if t != p} for p, ts in import_map().items()}
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                raise AssertionError(f"import cycle: {' -> '.join(path + [nxt])}")
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for p in PACKAGES:
        if p not in state:
            visit(p, [p])


def test_torch_free_packages_never_import_torch():
    found = [f"{path.relative_to(ROOT)}:{line} imports {module}"
             for package in TORCH_FREE for path in _modules(package) for line, module in _imports(path)
             if module.split(".")[0] in HEAVY]
    assert found == []


@pytest.mark.parametrize("package", TORCH_FREE)
def test_modules_import_with_torch_blocked(package):
    """Every module of dcr.<package> imports in an interpreter where torch cannot be imported."""
    names = [f"dcr.{package}." + ".".join(p.relative_to(ROOT / package).with_suffix("").parts)
             for p in _modules(package) if p.name != "__init__.py"]
    code = ("import importlib, sys\n"
            "sys.modules['torch'] = None  # `import torch` now raises ImportError\n"
            f"for name in {names!r}:\n"
            "    importlib.import_module(name)\n"
            f"loaded = [m for m in {HEAVY!r} if sys.modules.get(m) is not None]\n"
            "assert not loaded, loaded\n"
            "print(len(" + repr(names) + "))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT / "tests")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(len(names)) and len(names) >= 4
