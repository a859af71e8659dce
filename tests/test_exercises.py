"""The tutorial exercises and the tool that writes learner copies (tests/make_exercises.py).

An exercise is a function whose docstring has a line `Exercise N.M: ...`; the learner copy replaces
its body by `raise NotImplementedError("Exercise N.M")`. These tests check the exercise set itself
(enough of them, every script covered, ids unique and numbered by script, docstrings that say what
to implement, with a hint at the idea rather than the calls), that the learner copies keep everything
but the bodies and add only the step's questions (tests/exercise_questions.py), and that the tool
never overwrites a learner's file without --force. That every exercise is caught by a test when done
wrong is checked by the per-script test files (run with `--impl mine`).
"""
import ast
import importlib.util
import inspect
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("make_exercises",
                                               Path(__file__).with_name("make_exercises.py"))
make_exercises = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_exercises)

SCRIPTS = make_exercises.find_scripts(ROOT)
# A shape or a kind of value: [B,3,H,W], (N,), (B, Q, h, w), 4x4, "shape", "scalar".
SHAPE = re.compile(r"\[[^\]]*\]|\(\s*\w+\s*,[^)]*\)|\b\d+\s*x\s*\d+\b|\bshape|\bscalar", re.IGNORECASE)


def _all_exercises():
    return [ex for path in SCRIPTS for ex in make_exercises.find_exercises(path)]


def test_every_script_has_exercises():
    """Scripts 01..07 all exist, each holds at least one exercise, and there are at least 14."""
    assert [p.name[:2] for p in SCRIPTS] == ["01", "02", "03", "04", "05", "06", "07"]
    per_script = {p.name: len(make_exercises.find_exercises(p)) for p in SCRIPTS}
    assert all(n >= 1 for n in per_script.values()), per_script
    assert sum(per_script.values()) >= 14, per_script


def test_exercise_ids_are_unique_and_numbered_by_script():
    """Ids N.M are unique over the project, N is the script number, and M counts 1, 2, ... (no gaps)."""
    make_exercises.exercise_table(SCRIPTS)  # raises on a duplicate id across scripts
    for path in SCRIPTS:
        found = make_exercises.find_exercises(path)
        number = int(path.name[:2])
        minors = sorted(int(ex.id.split(".")[1]) for ex in found)
        assert all(ex.id.startswith(f"{number}.") for ex in found), path.name
        assert minors == list(range(1, len(found) + 1)), f"{path.name}: {[ex.id for ex in found]}"


@pytest.mark.parametrize("ex", _all_exercises(), ids=lambda ex: ex.id)
def test_exercise_docstring_says_what_shapes_and_hint(ex):
    """Each exercise docstring names the task after 'Exercise N.M:', gives shapes, and has a hint."""
    where = f"Exercise {ex.id} ({ex.script}, {ex.qualname})"
    says_what, has_shapes = len(ex.summary.split()) >= 3, bool(SHAPE.search(ex.docstring))
    has_hint, long_enough = "hint" in ex.docstring.lower(), len(ex.docstring) >= 120
    assert says_what, f"{where}: say what to implement after the colon"
    assert has_shapes, f"{where}: give the shapes in and out"
    assert has_hint, f"{where}: add a 'Hint: ...'"
    assert long_enough, f"{where}: the docstring is too short to work from"


# A library call in a docstring's hint hands the learner the code; tests/exercise_hints.py holds those.
LIBRARY_CALL = re.compile(r"\b(?:torch|F|np|nn)\.[\w.]+\(")


@pytest.mark.parametrize("ex", _all_exercises(), ids=lambda ex: ex.id)
def test_docstring_hint_points_at_the_idea_not_the_calls(ex):
    """The docstring's hint names no torch / F / np call (the code-level hint is asked for with
    `python tests/check_exercise.py N.M --hint`)."""
    hint = ex.docstring[ex.docstring.lower().index("hint"):]
    calls = LIBRARY_CALL.findall(hint)
    assert not calls, f"Exercise {ex.id} ({ex.script}): the hint names {calls}: say the idea and the shapes"


def _stubbed_reference_tree(path):
    """The reference's AST with every exercise body replaced as the tool should do it."""
    tree = ast.parse(path.read_text())
    ids = {ex.line: ex.id for ex in make_exercises.find_exercises(path)}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.lineno in ids:
            stub = ast.parse(f'raise NotImplementedError("Exercise {ids[node.lineno]}")').body
            node.body = node.body[:1] + stub
    return tree


def _public_names(tree):
    """Module-level names and class members a user can reach, with function signatures."""
    names = {}
    for node in tree.body:
        targets = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            targets = [node.name]
        elif isinstance(node, ast.Assign):
            targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            targets = [node.target.id]
        is_function = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        for name in targets:
            names[name] = ast.dump(node.args) if is_function else ""
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    names[f"{node.name}.{item.name}"] = ast.dump(item.args)
    return names


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_stub_compiles_and_changes_only_exercise_bodies(path):
    """A learner copy compiles, keeps every public name and signature, and differs from the reference
    only in the exercise bodies (AST equality after stubbing; decorators and docstrings included)."""
    stub = make_exercises.make_stub(path)
    compile(stub, path.name, "exec")
    stub_tree = ast.parse(stub)
    reference_tree = ast.parse(path.read_text())
    assert _public_names(stub_tree) == _public_names(reference_tree)
    assert ast.dump(stub_tree) == ast.dump(_stubbed_reference_tree(path))
    found = make_exercises.find_exercises(path)
    assert stub.count('raise NotImplementedError("Exercise ') == len(found)
    head = path.read_text().splitlines(keepends=True)[:found[0].body_start[0]]
    assert stub.startswith("".join(head)), "the text before the first exercise body must be untouched"


def _raw_function(owner, name):
    """The plain function behind a module function, method, staticmethod, classmethod or property."""
    obj = inspect.getattr_static(owner, name)
    for attr in ("__func__", "fget", "__wrapped__"):
        obj = getattr(obj, attr, obj)
    return obj


def test_stubs_import_and_raise_their_exercise_id(tmp_path):
    """Every learner copy imports cleanly and each stubbed function raises NotImplementedError naming
    its own exercise id, which is what tests/conftest.py turns into a skip."""
    assert make_exercises.main(["all", "--out", str(tmp_path)]) == 0
    for path in SCRIPTS:
        name = f"_stub_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, tmp_path / path.name)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the class is built
        try:
            spec.loader.exec_module(module)
            for ex in make_exercises.find_exercises(path):
                owner = module
                *classes, func_name = ex.qualname.split(".")
                for cls in classes:
                    owner = getattr(owner, cls)
                func = _raw_function(owner, func_name)
                params = inspect.signature(func).parameters.values()
                required = [p for p in params if p.default is p.empty]
                args = [None for p in required if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
                kwargs = {p.name: None for p in required if p.kind is p.KEYWORD_ONLY}
                with pytest.raises(NotImplementedError, match=rf"^Exercise {re.escape(ex.id)}$"):
                    func(*args, **kwargs)
        finally:
            del sys.modules[name]


def test_refuses_to_overwrite_a_learner_file_without_force(tmp_path, capsys):
    """An existing learner copy is never overwritten without --force, and then nothing is written at
    all (not even the other, new files); with --force it is replaced by a fresh stub."""
    first, second = SCRIPTS[0], SCRIPTS[1]
    assert make_exercises.main([first.name[:2], "--out", str(tmp_path)]) == 0
    learner = tmp_path / first.name
    learner.write_text("# my work\n")
    capsys.readouterr()
    assert make_exercises.main([first.name[:2], second.name[:2], "--out", str(tmp_path)]) == 2
    assert "error:" in capsys.readouterr().err
    assert learner.read_text() == "# my work\n"
    assert not (tmp_path / second.name).exists()
    assert make_exercises.main([first.name[:2], "--out", str(tmp_path), "--force"]) == 0
    assert learner.read_text() == make_exercises.make_copy(first)


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_copy_adds_only_the_questions_of_its_step_before_the_demo(path):
    """The learner copy is the stub plus, before `if __name__ == "__main__":`, one ANSWER_N_M = None per
    exercise of the step under its question: without those assignments its AST is the stub's, and
    importing it sets every answer to None (the demo block stays last)."""
    copy, stub = make_exercises.make_copy(path), make_exercises.make_stub(path)
    tree = ast.parse(copy)
    answers = [node for node in tree.body if isinstance(node, ast.Assign)
               and any(isinstance(t, ast.Name) and t.id.startswith("ANSWER_") for t in node.targets)]
    ids = [ex.id for ex in make_exercises.find_exercises(path)]
    assert [node.targets[0].id for node in answers] == ["ANSWER_" + i.replace(".", "_") for i in ids]
    assert all(isinstance(node.value, ast.Constant) and node.value.value is None for node in answers)
    tree.body = [node for node in tree.body if node not in answers]
    assert ast.dump(tree) == ast.dump(ast.parse(stub))
    for exercise_id in ids:
        assert f"# Question {exercise_id}: " in copy
    guard = make_exercises._demo_guard(ast.parse(copy))
    assert guard is not None and guard.lineno > answers[-1].lineno


def test_list_prints_every_exercise(capsys):
    """`--list` prints one row per exercise with its id, script and function, and writes nothing."""
    assert make_exercises.main(["--list", "--out", "does-not-exist"]) == 0
    out = capsys.readouterr().out
    for ex in _all_exercises():
        row = rf"^\s*{re.escape(ex.id)}\s+{re.escape(ex.script)}:\d+\s+{re.escape(ex.qualname)}\s"
        assert re.search(row, out, re.MULTILINE), ex.id
    assert not (ROOT / "does-not-exist").exists()


TOY = '''"""Toy script.

Exercise 9.9: a line in the module docstring is not an exercise.
"""
import functools


@functools.lru_cache(maxsize=None)
def add(a: int,
        b: int = 2) -> int:
    """Exercise 3.1: add two numbers.

    Hint: +.
    """
    # a comment inside the body
    c = a + b  # (scalar)
    return c
    # trailing body comment

# a module comment


class Thing:
    def square(self, x):
        \'\'\'Squares.

        Exercise 3.2: square x [B] -> [B].
        \'\'\'
        if x is None:
            return "\u00e9"
        return x * x

    def other(self):
        """Not one."""
        return "\u00fc"  # unicode
'''

TOY_STUB = '''"""Toy script.

Exercise 9.9: a line in the module docstring is not an exercise.
"""
import functools


@functools.lru_cache(maxsize=None)
def add(a: int,
        b: int = 2) -> int:
    """Exercise 3.1: add two numbers.

    Hint: +.
    """
    raise NotImplementedError("Exercise 3.1")

# a module comment


class Thing:
    def square(self, x):
        \'\'\'Squares.

        Exercise 3.2: square x [B] -> [B].
        \'\'\'
        raise NotImplementedError("Exercise 3.2")

    def other(self):
        """Not one."""
        return "\u00fc"  # unicode
'''


def test_splicing_keeps_every_other_byte(tmp_path):
    """On a toy script with decorators, a multi-line signature, methods, comments and non-ASCII text,
    the stub equals the hand-written expected text exactly (body comments go with the body)."""
    (tmp_path / "03_toy.py").write_text(TOY, encoding="utf-8")
    assert make_exercises.make_stub(tmp_path / "03_toy.py") == TOY_STUB


@pytest.mark.parametrize("source, message", [
    ('def f(x):\n    """Exercise 4.1: wrong number [B].\n    """\n    return x\n', "numbered 3.M"),
    ('def f(x):\n    """Exercise 3.1: a [B].\n    """\n    return x\n\n\n'
     'def g(x):\n    """Exercise 3.1: b [B].\n    """\n    return x\n', "more than once"),
    ('def f(x):\n    """Exercise 3.1: no body [B]."""\n', "no body"),
])
def test_malformed_markers_are_errors(tmp_path, capsys, source, message):
    """A wrong script number, a duplicate id or an exercise without a body is a one-line error."""
    (tmp_path / "03_toy.py").write_text(source)
    with pytest.raises(make_exercises.ExerciseError, match=message):
        make_exercises.find_exercises(tmp_path / "03_toy.py")
    assert make_exercises.main(["--root", str(tmp_path), "--list"]) == 2
    assert capsys.readouterr().err.startswith("error: ")
