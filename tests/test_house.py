"""House rules of the project, checked on the source text of the numbered scripts.

Data flows one way (01 -> 07): a script may import only scripts with a lower number. Run-time
dependencies stay torch, numpy, pillow, matplotlib (and the standard library).
"""
import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(ROOT.glob("0[1-7]_*.py"))
ALLOWED_THIRD_PARTY = {"torch", "numpy", "PIL", "matplotlib"}


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


def test_all_seven_scripts_exist():
    """The reading order 01..07 is complete."""
    assert [p.name[:2] for p in SCRIPTS] == ["01", "02", "03", "04", "05", "06", "07"]


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_imports_only_lower_numbers(path):
    """A script loads only scripts with a lower number (07 may load 06, never the reverse)."""
    _, scripts = _imports(path)
    number = int(path.name[:2])
    higher = sorted(s for s in scripts if int(s[:2]) >= number)
    assert not higher, f"{path.name} refers to {higher}"


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_dependencies_are_the_five(path):
    """No run-time dependency beyond torch, numpy, pillow, matplotlib and the standard library."""
    packages, _ = _imports(path)
    stdlib = set(sys.stdlib_module_names)
    extra = sorted(p for p in packages if p not in stdlib and p not in ALLOWED_THIRD_PARTY)
    assert not extra, f"{path.name} imports {extra}"


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_script_opens_with_docstring_and_has_a_demo(path):
    """Every script says what it adds in a docstring and runs a demo only under __main__."""
    tree = ast.parse(path.read_text())
    assert ast.get_docstring(tree), f"{path.name} has no module docstring"
    assert "__main__" in path.read_text(), f"{path.name} has no __main__ demo"
