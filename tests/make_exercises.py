"""Write learner copies of the numbered scripts with the exercise bodies taken out.

An exercise is a function or method whose docstring has a line starting with `Exercise N.M:` (N is
the script number). The learner copy `mine/NN_name.py` is the script byte for byte, except that
each exercise body (everything after its docstring) becomes `raise NotImplementedError("Exercise
N.M")`; signatures, decorators, docstrings, comments and the rest of the file stay as they are.
One block is added before the demo (`if __name__ == "__main__":`): a question of understanding per
exercise of the step, each with its `ANSWER_N_M = None` for the learner to fill in
(tests/exercise_questions.py; `python tests/check_exercise.py N.M` checks exercise and answer).

    python tests/make_exercises.py --list          # the exercises, script by script
    python tests/make_exercises.py 03              # writes mine/03_self_query.py
    python tests/make_exercises.py all             # a learner copy of every script
    python tests/check_exercise.py 3.1             # one exercise's tests and question, then your progress
    python -m pytest --impl=mine tests/test_03_self_query.py   # or --impl mine alone: every test
    PYTHONPATH=. python mine/03_self_query.py      # the demo, on your code

An existing learner file is never overwritten unless --force is given (it may hold your work).
Only the standard library is used: ast finds the bodies, text splicing keeps everything else.
"""
import argparse
import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script or loaded by file: tests/ modules
from exercise_questions import answers_block  # noqa: E402  (the questions appended to a copy)

ROOT = Path(__file__).resolve().parents[1]
EXERCISE_LINE = re.compile(r"^\s*Exercise (\d+)\.(\d+):\s*(.*)$")
SCRIPT_NAME = re.compile(r"^(\d\d)_[A-Za-z0-9_]+\.py$")


class ExerciseError(Exception):
    """A script's exercise markers are malformed (duplicate id, wrong script number, no body...)."""


@dataclass
class Exercise:
    """One exercise found in a script."""
    id: str          # "N.M"
    script: str      # file name, e.g. "03_self_query.py"
    qualname: str    # "function" or "Class.method"
    line: int        # 1-based line of the `def`
    summary: str     # the text after "Exercise N.M:" on the marker line
    docstring: str   # the whole cleaned docstring
    body_start: tuple  # (line, col) just after the docstring, 1-based line, 0-based col
    body_end: tuple    # (line, col) end of the last body statement
    indent: str      # indentation of the body statements


def find_scripts(root=ROOT):
    """The numbered scripts NN_name.py directly under root, sorted by number."""
    return sorted(p for p in Path(root).iterdir() if p.is_file() and SCRIPT_NAME.match(p.name))


def _functions(tree):
    """(qualname, node) for every function and method, nested ones included."""
    def walk(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield prefix + child.name, child
                yield from walk(child, prefix + child.name + ".")
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, prefix + child.name + ".")
            else:
                yield from walk(child, prefix)
    yield from walk(tree, "")


def _end_with_comments(lines, last, indent):
    """(line, col) where an exercise body ends: its last statement plus the comments that belong to
    the body (a trailing `# shape` comment, comment lines indented like the body right after it)."""
    line, col = last.end_lineno, last.end_col_offset
    text = lines[line - 1].encode()
    rest = text[col:].decode().rstrip("\r\n")
    if rest.strip().startswith("#"):
        col = len(text.decode().rstrip("\r\n").encode())
    for number in range(line + 1, len(lines) + 1):
        following = lines[number - 1].rstrip("\r\n")
        if not following.strip():
            continue
        if following.lstrip().startswith("#") and following.startswith(indent) and indent:
            line, col = number, len(following.encode())
            continue
        break
    return line, col


def find_exercises(path):
    """The exercises of one script, in file order; ExerciseError on a malformed marker."""
    path = Path(path)
    number = int(path.name[:2])
    source = path.read_text()
    tree = ast.parse(source, filename=str(path))
    lines = source.splitlines(keepends=True)
    found = []
    for qualname, node in _functions(tree):
        doc = ast.get_docstring(node, clean=True)
        if not doc:
            continue
        markers = [m for m in map(EXERCISE_LINE.match, doc.splitlines()) if m]
        if not markers:
            continue
        where = f"{path.name}:{node.lineno} ({qualname})"
        if len(markers) > 1:
            raise ExerciseError(f"{where}: more than one 'Exercise N.M:' line in one docstring")
        major, minor, summary = markers[0].groups()
        if int(major) != number:
            raise ExerciseError(f"{where}: Exercise {major}.{minor} must be numbered {number}.M "
                                f"in script {path.name}")
        if len(node.body) < 2:
            raise ExerciseError(f"{where}: Exercise {major}.{minor} has a docstring but no body")
        docnode, first, last = node.body[0], node.body[1], node.body[-1]
        if first.lineno == docnode.end_lineno:
            raise ExerciseError(f"{where}: put the body of Exercise {major}.{minor} on its own lines")
        body_line = lines[first.lineno - 1]
        indent = body_line[:len(body_line) - len(body_line.lstrip())]
        found.append(Exercise(
            id=f"{int(major)}.{int(minor)}", script=path.name, qualname=qualname, line=node.lineno,
            summary=summary.strip(), docstring=doc,
            body_start=(docnode.end_lineno, docnode.end_col_offset),
            body_end=_end_with_comments(lines, last, indent), indent=indent))
    found.sort(key=lambda e: e.line)
    for outer in found:  # an exercise inside another one would be removed with the outer body
        for inner in found:
            if inner is not outer and outer.body_start < (inner.line, 0) <= outer.body_end:
                raise ExerciseError(f"{inner.script}:{inner.line}: Exercise {inner.id} is nested "
                                    f"inside Exercise {outer.id}")
    ids = [e.id for e in found]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ExerciseError(f"{path.name}: exercise ids used more than once: {', '.join(dup)}")
    return found


def make_stub(path):
    """The learner copy of a script as text: every exercise body replaced by a NotImplementedError."""
    path = Path(path)
    source = path.read_text()
    lines = source.splitlines(keepends=True)
    starts = [0]  # character offset of each line, so (line, col) -> offset
    for line in lines:
        starts.append(starts[-1] + len(line))

    def offset(pos):
        line, col = pos
        # ast columns count UTF-8 bytes; convert to characters of that line
        return starts[line - 1] + len(lines[line - 1].encode()[:col].decode())

    out, cursor = [], 0
    for ex in find_exercises(path):
        begin, end = offset(ex.body_start), offset(ex.body_end)
        newline = "\r\n" if lines[ex.body_start[0] - 1].endswith("\r\n") else "\n"
        out.append(source[cursor:begin])
        out.append(f'{newline}{ex.indent}raise NotImplementedError("Exercise {ex.id}")')
        cursor = end
    out.append(source[cursor:])
    stub = "".join(out)
    compile(stub, str(path), "exec")  # a stub that does not compile is a bug of this tool
    return stub


def _demo_guard(tree):
    """The last top-level `if __name__ == "__main__":` statement of a module, or None."""
    for node in reversed(tree.body):
        test = node.test if isinstance(node, ast.If) else None
        if (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__"):
            return node
    return None


def make_copy(path):
    """The learner copy as written to mine/: make_stub's text plus the step's questions of understanding
    (answers_block), placed before the demo so that the answers are set when the step is imported."""
    stub = make_stub(path)
    block = answers_block([ex.id for ex in find_exercises(path)])
    guard = _demo_guard(ast.parse(stub))
    if guard is None:
        return stub.rstrip("\n") + "\n" + block
    lines = stub.splitlines(keepends=True)
    head, tail = "".join(lines[:guard.lineno - 1]), "".join(lines[guard.lineno - 1:])
    return head.rstrip("\n") + "\n" + block + "\n\n" + tail


def _select(names, root):
    """Scripts chosen on the command line: 'all', or numbers such as 3 / 03 / file names."""
    scripts = find_scripts(root)
    if not scripts:
        raise ExerciseError(f"no numbered scripts NN_name.py in {root}")
    if not names or "all" in names:
        return scripts
    chosen = []
    for name in names:
        key = name[:-3] if name.endswith(".py") else name
        match = [p for p in scripts if p.stem == key or (key.isdigit() and int(p.name[:2]) == int(key))]
        if not match:
            raise ExerciseError(f"no script {name!r} (have: {', '.join(p.name[:2] for p in scripts)})")
        chosen += [p for p in match if p not in chosen]
    return chosen


def exercise_table(scripts):
    """Markdown-ish table of the exercises of the given scripts; checks ids are unique overall."""
    rows, seen = [], {}
    for path in scripts:
        for ex in sorted(find_exercises(path), key=lambda e: tuple(map(int, e.id.split(".")))):
            if ex.id in seen:
                raise ExerciseError(f"Exercise {ex.id} is in both {seen[ex.id]} and {ex.script}")
            seen[ex.id] = ex.script
            rows.append(f"{ex.id:>5}  {ex.script}:{ex.line:<5} {ex.qualname:<32} {ex.summary}")
    return rows


def _shown(path, root):
    """A path as the user should type it: relative to the repository root when inside it."""
    return path.relative_to(root) if path.is_relative_to(root) else path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scripts", nargs="*", help="script numbers (03, 3) or names, or 'all' (default)")
    parser.add_argument("--out", default="mine", help="folder of the learner copies, relative to the "
                        "repository root unless absolute (default: mine)")
    parser.add_argument("--force", action="store_true", help="overwrite existing learner files")
    parser.add_argument("--list", action="store_true", help="print the exercises and write nothing")
    parser.add_argument("--root", default=str(ROOT), help=argparse.SUPPRESS)  # tests: a toy repository
    args = parser.parse_args(argv)
    root = Path(args.root)
    try:
        scripts = _select(args.scripts, root)
        rows = exercise_table(scripts)
        if args.list:
            print("\n".join(rows) if rows else "no exercises found")
            return 0
        out = Path(args.out) if Path(args.out).is_absolute() else root / args.out
        targets = [(path, out / path.name) for path in scripts]
        existing = [t for _, t in targets if t.exists()]
        if existing and not args.force:
            names = ", ".join(str(_shown(t, root)) for t in existing)
            raise ExerciseError(f"{names} already {'exists' if len(existing) == 1 else 'exist'} and "
                                f"may hold your work; nothing written (pass --force to overwrite, "
                                f"or name only the scripts you want)")
        stubs = [(target, make_copy(path), len(find_exercises(path))) for path, target in targets]
        out.mkdir(parents=True, exist_ok=True)  # every stub was built (and compiled) before writing
        for target, text, count in stubs:
            target.write_text(text)
            print(f"wrote {_shown(target, root)} ({count} exercise{'s' if count != 1 else ''})")
        folder = _shown(out, root)
        tests = sorted((root / "tests").glob(f"test_{scripts[0].name[:2]}_*.py"))
        where = " ".join(str(t.relative_to(root)) for t in tests) if len(scripts) == 1 else ""
        first = find_exercises(scripts[0])
        if first:
            impl = "" if folder == Path("mine") else f" --impl {folder}"
            print(f"next: python tests/check_exercise.py {first[0].id}{impl}   (one exercise's tests and "
                  f"its question, then your progress)")
        print(f"      python -m pytest --impl={folder} {where}".rstrip())
        if len(scripts) == 1:
            print(f"      PYTHONPATH=. python {folder / scripts[0].name}   (the demo, on your code)")
    except (ExerciseError, SyntaxError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
