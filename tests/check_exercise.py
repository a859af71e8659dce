"""Check one tutorial exercise against your copy of its step, and see your progress over all of them.

    python tests/check_exercise.py 4.2           # 4.2's tests and question against mine/, then the table
    python tests/check_exercise.py               # the progress table alone (runs no test)
    python tests/check_exercise.py 4.2 --hint    # the code-level hint of 4.2 (runs no test)
    python tests/check_exercise.py 4.2 --tests   # which tests check 4.2
    python tests/check_exercise.py --all         # every exercise's tests (a few minutes), then the table

The tests of an exercise N.M are the test functions of tests/test_NN_*.py whose code names
"Exercise N.M" (their docstring, a message or a hint), found when the command runs, so a test added
or renamed later is found too; plus its question, tests/test_exercise_questions.py::test_question[N.M].
Only those run (pytest -q -rs, in this process), against the learner copies in mine/ (--impl), and
their outcome is kept in mine/.progress.json with a fingerprint of the exercise's body: the table
shows an exercise as done, failing (each failing test's first line) or waiting on another exercise
as last checked, "not checked" once its body changed since, "not started" while the body is still
the stub, and "no copy" before tests/make_exercises.py made the step's copy. The questions' state
is read from the copies' ANSWER_N_M constants each time (tests/exercise_questions.py).
"""
import argparse
import ast
import hashlib
import json
import os
import re
import sys
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/ modules, also when run as a script
from exercise_hints import HINTS  # noqa: E402
from exercise_questions import BY_ID, check_answer  # noqa: E402
from make_exercises import ROOT, find_exercises, find_scripts  # noqa: E402

TESTS = ROOT / "tests"
QUESTION_TEST = "tests/test_exercise_questions.py::test_question[{}]"
MENTION = re.compile(r"Exercise (\d+\.\d+)\b")
NOT_DONE = re.compile(r"(Exercise \d+\.\d+) is not done yet")
PROGRESS_FILE = ".progress.json"
WIDTH = 106  # the table's and the hint's lines are wrapped to this many characters
NOT_A_LITERAL = object()  # an ANSWER_N_M that is an expression, not a value written out


def exercises():
    """{id: Exercise} of the reference scripts, in order."""
    found = {}
    for path in find_scripts(ROOT):
        for ex in sorted(find_exercises(path), key=lambda e: tuple(map(int, e.id.split(".")))):
            found[ex.id] = ex
    return found


def tests_of_exercises():
    """{exercise id: [pytest node ids]}: each test function of tests/test_NN_*.py whose source names
    "Exercise N.M" belongs to N.M (one test may check several exercises)."""
    found = {}
    for path in sorted(TESTS.glob("test_[0-9][0-9]_*.py")):
        source = path.read_text()
        for node in ast.parse(source).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
                for exercise_id in sorted(set(MENTION.findall(ast.get_source_segment(source, node)))):
                    found.setdefault(exercise_id, []).append(f"tests/{path.name}::{node.name}")
    return found


def _body(ex, path):
    """The text of an exercise's body in a copy (everything after its docstring)."""
    lines = path.read_text().splitlines(keepends=True)
    (l0, c0), (l1, c1) = ex.body_start, ex.body_end
    if l0 == l1:
        return lines[l0 - 1].encode()[c0:c1].decode()
    text = lines[l0 - 1].encode()[c0:].decode() + "".join(lines[l0:l1 - 1])
    return text + lines[l1 - 1].encode()[:c1].decode()


def copy_state(impl):
    """{id: (state, fingerprint)} from the learner copies alone: "no copy", "not started" (the body is
    still the stub), or "written" (with the body's fingerprint), and "unreadable" for a copy that
    does not parse (the check itself then says why)."""
    states = {}
    for script in find_scripts(ROOT):
        copy = impl / script.name
        ids = [ex.id for ex in find_exercises(script)]
        if not copy.is_file():
            states.update({i: ("no copy", None) for i in ids})
            continue
        try:
            found = {ex.id: ex for ex in find_exercises(copy)}
        except Exception as err:  # a copy in the middle of an edit: say why, check the others
            states.update({i: ("unreadable", f"{type(err).__name__}: {err}".splitlines()[0]) for i in ids})
            continue
        for i in ids:
            if i not in found:
                states[i] = ("unreadable", f"no 'Exercise {i}:' docstring in {copy.name}")
                continue
            body = _body(found[i], copy).strip()
            stub = body == f'raise NotImplementedError("Exercise {i}")'
            fingerprint = hashlib.sha256(body.encode()).hexdigest()[:16]
            states[i] = ("not started", None) if stub else ("written", fingerprint)
    return states


def answers(impl):
    """{id: (state, message)} of every question: read with ast from the copies' ANSWER_N_M lines."""
    values = {}
    for script in find_scripts(ROOT):
        copy = impl / script.name
        if not copy.is_file():
            continue
        try:
            tree = ast.parse(copy.read_text())
        except SyntaxError:
            continue
        for node in tree.body:
            target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None
            if isinstance(target, ast.Name) and target.id.startswith("ANSWER_"):
                try:
                    values[target.id] = ast.literal_eval(node.value)
                except ValueError:
                    values[target.id] = NOT_A_LITERAL
    out = {}
    for qid, q in BY_ID.items():
        if q.constant not in values:
            out[qid] = ("-", f"no {q.constant} in the copy")
        elif values[q.constant] is NOT_A_LITERAL:
            out[qid] = ("wrong", f"{q.constant}: write the answer itself (a letter, a number or a tuple)")
        else:
            out[qid] = check_answer(q, values[q.constant])
    return out


class Collector:
    """A pytest plugin that keeps every test's outcome and first line: {node id: (outcome, line)}."""

    def __init__(self):
        self.results = {}

    def pytest_runtest_logreport(self, report):
        if report.passed and report.when != "call":
            return
        line = ""
        if report.failed:
            crash = getattr(report.longrepr, "reprcrash", None)
            text = crash.message if crash is not None else str(report.longrepr)
            line = text.strip().splitlines()[0] if text.strip() else "failed"
            line = re.sub(r"^(AssertionError|Failed): ", "", line)
        elif report.skipped:
            line = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            line = re.sub(r"^Skipped: ", "", line)
        before = self.results.get(report.nodeid)
        if before is None or before[0] == "passed":  # a failed teardown after a passed call counts
            self.results[report.nodeid] = (report.outcome, line)


def run_tests(node_ids, impl):
    """Run the given tests in this process against impl; returns (exit code, {node id: (outcome, line)})."""
    collector = Collector()
    import pytest  # only when tests run: the table alone needs no pytest (nor torch)
    os.chdir(ROOT)
    # --tb=short: the explained message (tests/exercise_checks.py) is what helps, not the test's code
    args = ["-p", "no:cacheprovider", "-q", "-rs", "--tb=short", f"--impl={impl}", *node_ids]
    code = pytest.main(args, plugins=[collector])
    return int(code), collector.results


def _belongs(node_id, test_id):
    """Whether a reported node id (maybe a parametrized case) is the test test_id."""
    return node_id == test_id or node_id.startswith(test_id + "[")


def verdict(exercise_id, test_ids, results):
    """(state, lines) of one exercise from its tests' outcomes: failing (with each failing test's first
    line), not started, done, or waits on (another exercise that is not done)."""
    mine = {n: r for n, r in results.items() if any(_belongs(n, t) for t in test_ids)}
    failed = [f"{n.split('::')[-1]}: {line}" for n, (outcome, line) in mine.items() if outcome == "failed"]
    passed = sum(outcome == "passed" for outcome, _ in mine.values())
    blockers = []  # the exercise each test skipped for (an unfinished stub it reached)
    for outcome, line in mine.values():
        found = NOT_DONE.search(line) if outcome == "skipped" else None
        if found:
            blockers.append(found.group(1).split()[1])
    if failed:
        return "failing", failed
    if exercise_id in blockers:
        return "not started", []
    if passed:
        waiting = sorted(set(blockers))
        many = len(blockers) != 1
        note = f"{len(blockers)} more test{'s wait' if many else ' waits'} on {', '.join(waiting)}"
        return "done", [note] if waiting else []
    if blockers:
        return "waits on " + ", ".join(sorted(set(blockers))), []
    return "no test ran", []


def load_progress(impl):
    try:
        return json.loads((impl / PROGRESS_FILE).read_text())
    except (OSError, ValueError):
        return {}


def save_progress(impl, progress):
    path = impl / PROGRESS_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(progress, indent=1, sort_keys=True))
    tmp.replace(path)  # atomic: an interrupted check never leaves half a file


def table(impl, exercises_, progress):
    """The progress table over all exercises, as lines."""
    copies, questions = copy_state(impl), answers(impl)
    counts = {}
    rows = [f"Progress ({impl.name}/):", f"  {'id':<5}{'function':<28}{'code':<24}question"]
    for i, ex in exercises_.items():
        state, fingerprint = copies[i]
        lines = []
        if state == "written":
            record = progress.get(i)
            if record is None or record.get("fingerprint") != fingerprint:
                state = "not checked"
            else:
                state, lines = record["state"], record["lines"]
        elif state == "unreadable":
            lines = [fingerprint]
        counts[state.split(" on ")[0]] = counts.get(state.split(" on ")[0], 0) + 1
        q_state, q_message = questions[i]
        rows.append(f"  {i:<5}{ex.qualname:<28}{state:<24}{q_state}")
        if q_state == "wrong":
            lines = [*lines, f"question: {q_message}"]
        for line in lines:
            rows += textwrap.wrap(line, WIDTH, initial_indent=" " * 7, subsequent_indent=" " * 9)
    order = ["done", "failing", "waits", "not checked", "not started", "no copy", "unreadable", "no test ran"]
    summary = ", ".join(f"{counts[k]} {k}" for k in order if k in counts)
    right = sum(s == "right" for s, _ in questions.values())
    rows.append(f"{summary}; questions: {right} of {len(questions)} right")
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description="Check one tutorial exercise (its tests and its question) "
                                     "against your copy, then show your progress over all exercises.")
    parser.add_argument("exercise", nargs="?", help="exercise id N.M, e.g. 4.2 (none: the progress table only)")
    parser.add_argument("--hint", action="store_true", help="print the exercise's code-level hint and stop")
    parser.add_argument("--tests", action="store_true", help="list the tests that check the exercise and stop")
    parser.add_argument("--all", action="store_true",
                        help="check every exercise of the steps you copied (a few minutes), then the table")
    parser.add_argument("--impl", default=os.environ.get("TUTORIAL_IMPL", "mine"),
                        help="folder of your copies, relative to the repository root (default: mine)")
    args = parser.parse_args(argv)
    found = exercises()
    if args.exercise is not None and args.exercise not in found:
        parser.error(f"no exercise {args.exercise!r}; the exercises: {', '.join(found)}")
    if (args.hint or args.tests) and args.exercise is None:
        parser.error("--hint and --tests need an exercise id, e.g. 4.2")
    if args.hint:
        print(f"Exercise {args.exercise} ({found[args.exercise].qualname}), a code-level hint:")
        print(textwrap.fill(HINTS[args.exercise], WIDTH, initial_indent="  ", subsequent_indent="  "))
        return 0
    mapping = tests_of_exercises()
    if args.tests:
        print("\n".join([*mapping.get(args.exercise, []), QUESTION_TEST.format(args.exercise)]))
        return 0
    impl = ROOT / args.impl
    if not impl.is_dir():
        print(f"error: no folder {args.impl}/: make your copies first (python tests/make_exercises.py 01)",
              file=sys.stderr)
        return 2
    code = 0
    # --all: the exercises of the steps you copied (the others would only test the reference)
    copied = [i for i, ex in found.items() if (impl / ex.script).is_file()]
    chosen = copied if args.all else ([args.exercise] if args.exercise else [])
    if args.exercise and not (impl / found[args.exercise].script).is_file():
        script = found[args.exercise].script
        print(f"error: no {args.impl}/{script}: make your copy first (python tests/make_exercises.py "
              f"{script[:2]})", file=sys.stderr)
        return 2
    if chosen:
        node_ids = sorted({t for i in chosen for t in mapping.get(i, [])})
        node_ids += [QUESTION_TEST.format(i) for i in chosen]
        started = time.time()
        code, results = run_tests(node_ids, args.impl)
        if code not in (0, 1):  # interrupted, a usage error, nothing collected: no outcome to keep
            print(f"error: pytest stopped with exit code {code}; nothing recorded", file=sys.stderr)
            return 2
        progress, copies = load_progress(impl), copy_state(impl)
        for i in chosen:
            if copies[i][0] == "written":
                state, lines = verdict(i, mapping.get(i, []), results)
                progress[i] = {"state": state, "lines": lines, "fingerprint": copies[i][1],
                               "checked": time.strftime("%Y-%m-%d %H:%M:%S")}
            else:
                progress.pop(i, None)
        save_progress(impl, progress)
        what = "every exercise you copied" if args.all else ", ".join(chosen)
        print(f"\nchecked {what} in {time.time() - started:.0f} s")
    print("\n".join(table(impl, found, load_progress(impl))))
    if args.exercise and load_progress(impl).get(args.exercise, {}).get("state") == "failing":
        print(f"stuck? python tests/check_exercise.py {args.exercise} --hint   (a code-level hint)")
    return 1 if code == 1 else 0


if __name__ == "__main__":
    sys.exit(main())
