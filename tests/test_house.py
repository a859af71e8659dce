"""House rules of the project, checked on the source text of the numbered scripts and of the world.

Data flows one way (01 -> 07): a script may import only scripts with a lower number. The synthetic
world (helpers/synthetic_world.py, a data source outside the reading order) imports 01 only, and 01-05
import the world only inside functions (their demos), never when they are imported themselves.
Run-time dependencies stay torch, numpy, pillow, matplotlib (and the standard library). Unnumbered
helpers never import a numbered script of the same or a later rank than a script that imports
them, and a numbered script stays near ~600 lines (one concept).
Every script reads top-down: a docstring opening "NN - name: ...", the concept code first (its
first definition within 120 lines, lines of at most 110 characters), then one engineering section
below ENGINEERING_BANNER. References are self-contained (no file outside the repository is cited),
and every command line follows helpers/cli.py: --a_b and --a-b, help text for every flag, --flag/--no-flag.
"""
import argparse
import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(ROOT.glob("0[1-7]_*.py"))
HELPERS_DIR = ROOT / "helpers"
WORLD = HELPERS_DIR / "synthetic_world.py"
CLI = HELPERS_DIR / "cli.py"
ENGINEERING_BANNER = "# ---- Engineering: not needed to understand SQLDepth ----"
FIRST_DEFINITION_WITHIN, CONCEPT_LINE_LENGTH = 120, 110
IMPORTLIB_NOTE = "A module name cannot start with a digit"
ALLOWED_THIRD_PARTY = {"torch", "numpy", "PIL", "matplotlib"}
HELPERS = sorted(p for p in HELPERS_DIR.glob("*.py") if p.name != "__init__.py")
LOCAL_MODULES = {"helpers"}  # the package of unnumbered modules (helpers/), imported as `from helpers import x`
# A numbered script holds one concept and what runs it, at most 600 lines; 01's concept (KITTI raw's
# layout, calibration, velodyne ground truth, split lists, the dataset) is the one allowed to be
# longer (its docstring says why). Shorter by removing (a knob that lost, a second copy), not by moving.
MAX_LINES = {"01": 700}
MAX_LINES_DEFAULT = 600
# What a new user's `ls` shows: the seven steps, the front door, the usual project files and folders.
ROOT_FILES = {"README.md", "LICENSE", "requirements.txt", "pyproject.toml", "conftest.py", ".gitignore"}
ROOT_FOLDERS = {"tests", "docs", "figures", "tools", "helpers", ".ci"}


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


def _imported_names(node):
    """Names an import statement brings in, helpers by their module name: `from helpers import
    run_record` and `from helpers.run_record import x` both give "run_record"."""
    if isinstance(node, ast.Import):
        return {alias.name.split(".")[1] if alias.name.startswith("helpers.") else alias.name.split(".")[0]
                for alias in node.names}
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        if node.module == "helpers":
            return {alias.name for alias in node.names}
        if node.module.startswith("helpers."):
            return {node.module.split(".")[1]}
        return {node.module.split(".")[0]}
    return set()


def _world_imports_at_import_time(path):
    """Lines where a file imports the world outside any function (i.e. when it is itself imported)."""
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            names = _imported_names(child)
            if isinstance(child, ast.Constant) and child.value == "helpers.synthetic_world":
                names = {"synthetic_world"}  # importlib.import_module("helpers.synthetic_world")
            if not inside and "synthetic_world" in names:
                found.append(child.lineno)
            visit(child, inside)

    visit(ast.parse(path.read_text()), False)
    return found


def _tracked_root_entries():
    """The top-level names of the files git tracks (a clone's `ls`, without untracked run folders)."""
    try:
        listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return {line.split("/")[0] for line in listed.stdout.splitlines() if line}


def test_the_root_shows_the_design_card():
    """The root holds the seven numbered steps, README.md, the usual project files and a few folders;
    every other module lives in helpers/ (a learner meets the reading order first)."""
    entries = _tracked_root_entries()
    steps = {p.name for p in SCRIPTS}
    extra = sorted(entries - steps - ROOT_FILES - ROOT_FOLDERS)
    assert not extra, f"the root holds {extra}: move modules to helpers/, other files into a folder"
    assert steps <= entries and "helpers" in entries


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


def _numbered(names):
    return sorted(int(n[:2]) for n in names)


def _top_level_imports(path):
    """Module names a file imports when it is itself imported (statements outside functions)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        names |= _imported_names(node)
    return names


def _importers(helper):
    """The numbered scripts that import an unnumbered helper when they are imported (`import x` or
    `from x import ...` at module level; the demos' imports of the world inside functions aside)."""
    return [p for p in SCRIPTS if helper.stem in _top_level_imports(p)]


@pytest.mark.parametrize("helper", HELPERS, ids=lambda p: p.name)
def test_helpers_never_import_a_later_numbered_script(helper):
    """An unnumbered helper loads only numbered scripts of lower rank than every numbered script that
    imports it (directly or through another helper): data still flows one way, 01 -> 07. A helper
    that no numbered script imports (helpers/compare_runs.py, helpers/predict.py, helpers/benchmark.py) may build on any."""
    importers, seen, todo = set(), set(), [helper]
    while todo:                                  # helpers imported by helpers: follow them up
        h = todo.pop()
        if h in seen:
            continue
        seen.add(h)
        importers.update(int(p.name[:2]) for p in _importers(h))
        todo += [other for other in HELPERS if h.stem in _top_level_imports(other)]
    _, scripts = _imports(helper)
    if importers and scripts:
        assert max(_numbered(scripts)) < min(importers), \
            f"{helper.name} loads {sorted(scripts)} but is imported by script {min(importers):02d}"


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_numbered_scripts_stay_one_concept_long(path):
    """A numbered script stays near ~600 lines (01: its concept is the biggest)."""
    limit = MAX_LINES.get(path.name[:2], MAX_LINES_DEFAULT)
    lines = len(path.read_text().splitlines())
    assert lines <= limit, f"{path.name} has {lines} lines (limit {limit}): remove what lost or repeats"


def test_world_imports_only_01():
    """The world reads and writes through 01 (layout, calibration, splits, DataError) and nothing later."""
    _, scripts = _imports(WORLD)
    assert scripts == {"01_data"}, f"helpers/synthetic_world.py refers to {sorted(scripts)}"


@pytest.mark.parametrize("path", [p for p in SCRIPTS if int(p.name[:2]) <= 5], ids=lambda p: p.name)
def test_early_scripts_import_the_world_only_in_functions(path):
    """01-05 use the world in their demos only: importing them never loads the renderer."""
    lines = _world_imports_at_import_time(path)
    assert not lines, f"{path.name} imports synthetic_world at module level (lines {lines})"


@pytest.mark.parametrize("path", SCRIPTS + HELPERS, ids=lambda p: p.name)
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


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_script_reads_top_down(path):
    """Docstring "NN - name: ...", the first concept definition within 120 lines, one engineering
    banner, concept lines of at most 110 characters, and the importlib convention explained where
    the script first uses it."""
    text = path.read_text()
    tree = ast.parse(text)
    assert ast.get_docstring(tree).startswith(f"{path.name[:2]} - "), f"{path.name}: docstring opening"
    first = min(n.lineno for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)))
    assert first <= FIRST_DEFINITION_WITHIN, f"{path.name}: first definition at line {first}"
    lines = text.splitlines()
    assert lines.count(ENGINEERING_BANNER) == 1, f"{path.name}: one engineering banner"
    concept = lines[: lines.index(ENGINEERING_BANNER)]
    long = [i + 1 for i, line in enumerate(concept) if len(line) > CONCEPT_LINE_LENGTH]
    assert not long, f"{path.name}: concept lines over {CONCEPT_LINE_LENGTH} characters: {long}"
    use = text.find('importlib.import_module("0')
    if use >= 0:
        assert IMPORTLIB_NOTE in text[:use], f"{path.name}: explain the importlib convention at its first use"


def _project_text_files():
    skip = {".git", ".venv", "runs", "data", "cache", "__pycache__", ".pytest_cache"}
    for path in sorted(ROOT.rglob("*")):
        parts = path.relative_to(ROOT).parts
        if path.suffix in (".py", ".md") and not (set(parts) & skip or parts[0].startswith("mine")):
            yield path


def test_references_are_self_contained():
    """No file cites the project's former internal notes (the names are built here so that this
    file does not match itself); references are the paper, the official repositories and the README."""
    internal = ["SPEC" + ".md", "DESIGN" + ".md", "SPEC" + " sec"]
    found = [f"{p.relative_to(ROOT)}: {name}" for p in _project_text_files() for name in internal
             if name in p.read_text()]
    assert not found, found


class _Parsed(Exception):
    """Raised instead of parsing, carrying the parser a script built."""

    def __init__(self, parser):
        super().__init__("parser built")
        self.parser = parser


def _module(path):
    if path.parent == HELPERS_DIR:
        return importlib.import_module(f"helpers.{path.stem}")
    if path.parent != ROOT:
        raise ValueError(path)
    return importlib.import_module(path.stem)


@pytest.mark.parametrize("path", SCRIPTS + [WORLD], ids=lambda p: p.name)
def test_command_line_convention(path, monkeypatch):
    """Every flag has both spellings (--num_layers and --num-layers) and help text; a bool is a
    --flag / --no-flag pair (no store_true): the parser each script's main builds, caught before
    it parses."""
    def capture(self, args=None, namespace=None):
        raise _Parsed(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(_Parsed) as caught:
        _module(path).main([])
    actions = [a for a in caught.value.parser._actions if not isinstance(a, argparse._HelpAction)]
    assert actions, f"{path.name}: no flags"
    for action in actions:
        names = set(action.option_strings)
        assert action.help and action.help.strip(), f"{path.name}: {sorted(names)} has no help"
        assert not isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)), \
            f"{path.name}: {sorted(names)} is a store_true/false flag, not --flag / --no-flag"
        both = {f"--{action.dest}", f"--{action.dest.replace('_', '-')}"}
        assert both <= names, f"{path.name}: {sorted(names)} lacks {sorted(both - names)}"


def test_cli_bool_named_no_and_list_fields():
    """helpers/cli.py: a bool field named no_x keeps both spellings positive (--no-x is not its negation),
    and a list field takes one or more values."""
    import dataclasses
    cli = importlib.import_module("helpers.cli")

    @dataclasses.dataclass
    class Config:
        no_eval: bool = False  # skip the evaluation
        runs: list = dataclasses.field(default_factory=list)  # run folders

    parser = argparse.ArgumentParser()
    cli.add_dataclass_flags(parser, Config)
    assert parser.parse_args(["--no-eval"]).no_eval is True
    assert parser.parse_args(["--no_eval", "--no-no-eval"]).no_eval is False
    assert parser.parse_args(["--runs", "a", "b"]).runs == ["a", "b"]
    assert parser.parse_args([]).runs == []


README_MAX_LINES = 250   # the front door: what it is, the two commands, the reading order, the results in brief


def test_readme_stays_a_front_door():
    """README.md stays short (the long write-ups live in docs/), and every doc it links to exists."""
    text = (ROOT / "README.md").read_text()
    lines = len(text.splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES}): move detail to docs/"
    for target in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (ROOT / target).is_file(), f"README.md links to {target}, which does not exist"


def test_install_line_agrees_with_ci_and_pyproject():
    """The README's install line pins the PyTorch that CI installs, its Python version is pyproject's
    requires-python, and its test command is the one CI runs."""
    readme, ci = (ROOT / "README.md").read_text(), (ROOT / ".ci" / "run").read_text()
    pins = set(re.findall(r"pip install(?: -q)? torch==([0-9.]+)", readme))
    assert pins and pins == set(re.findall(r"pip install(?: -q)? torch==([0-9.]+)", ci)), (pins, "vs .ci/run")
    python = re.search(r'requires-python = ">=([0-9.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert f"Python {python} or newer" in readme, f"README.md does not say 'Python {python} or newer'"
    assert "python -m pytest -q\n" in readme and "\npython -m pytest -q\n" in ci
