"""House rules of the project, checked on the source text of the numbered scripts and of the world.

Data flows one way (01 -> 07): a script may import only scripts with a lower number. The synthetic
world (synthetic_world.py, a data source outside the reading order) imports 01 only, and 01-05
import the world only inside functions (their demos), never when they are imported themselves.
Run-time dependencies stay torch, numpy, pillow, matplotlib (and the standard library).
"""
import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(ROOT.glob("0[1-7]_*.py"))
WORLD = ROOT / "synthetic_world.py"
ALLOWED_THIRD_PARTY = {"torch", "numpy", "PIL", "matplotlib"}
LOCAL_MODULES = {"synthetic_world", "cli"}  # unnumbered files of this repository, importable by name


def _imports(path):
    """Top-level package names imported by a file, and the numbered scripts it loads with importlib."""
    tree = ast.parse(path.read_text())
    packages, scripts = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            packages.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            packages.add(node.module.split(".")[0])
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if re.fullmatch(r"0[1-7]_[a-z_]+", node.value):
                scripts.add(node.value)
    return packages, scripts


def _world_imports_at_import_time(path):
    """Lines where a file imports the world outside any function (i.e. when it is itself imported)."""
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            names = []
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom) and child.module:
                names = [child.module]
            elif isinstance(child, ast.Constant) and child.value == "synthetic_world":
                names = [child.value]  # importlib.import_module("synthetic_world")
            if not inside and any(n.split(".")[0] == "synthetic_world" for n in names):
                found.append(child.lineno)
            visit(child, inside)

    visit(ast.parse(path.read_text()), False)
    return found


def test_all_seven_scripts_exist():
    """The reading order 01..07 is complete, and the world is there."""
    assert [p.name[:2] for p in SCRIPTS] == ["01", "02", "03", "04", "05", "06", "07"]
    assert WORLD.is_file()


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_imports_only_lower_numbers(path):
    """A script loads only scripts with a lower number (07 may load 06, never the reverse)."""
    _, scripts = _imports(path)
    number = int(path.name[:2])
    higher = sorted(s for s in scripts if int(s[:2]) >= number)
    assert not higher, f"{path.name} refers to {higher}"


def test_world_imports_only_01():
    """The world reads and writes through 01 (layout, calibration, splits, DataError) and nothing later."""
    _, scripts = _imports(WORLD)
    assert scripts == {"01_data"}, f"synthetic_world.py refers to {sorted(scripts)}"


@pytest.mark.parametrize("path", [p for p in SCRIPTS if int(p.name[:2]) <= 5], ids=lambda p: p.name)
def test_early_scripts_import_the_world_only_in_functions(path):
    """01-05 use the world in their demos only: importing them never loads the renderer."""
    lines = _world_imports_at_import_time(path)
    assert not lines, f"{path.name} imports synthetic_world at module level (lines {lines})"


@pytest.mark.parametrize("path", SCRIPTS + [WORLD], ids=lambda p: p.name)
def test_dependencies_are_the_five(path):
    """No run-time dependency beyond torch, numpy, pillow, matplotlib and the standard library."""
    packages, _ = _imports(path)
    stdlib = set(sys.stdlib_module_names)
    extra = sorted(p for p in packages if p not in stdlib | ALLOWED_THIRD_PARTY | LOCAL_MODULES)
    assert not extra, f"{path.name} imports {extra}"


@pytest.mark.parametrize("path", SCRIPTS + [WORLD], ids=lambda p: p.name)
def test_script_opens_with_docstring_and_has_a_demo(path):
    """Every script says what it adds in a docstring and runs a demo only under __main__."""
    tree = ast.parse(path.read_text())
    assert ast.get_docstring(tree), f"{path.name} has no module docstring"
    assert "__main__" in path.read_text(), f"{path.name} has no __main__ demo"
