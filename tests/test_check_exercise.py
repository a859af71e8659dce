"""tests/check_exercise.py: one command checks one exercise (its tests and its question) and shows the
progress over all exercises; the code-level hints (tests/exercise_hints.py) cover every exercise.

The table is built from the learner copies alone (no test runs) plus the outcomes kept from earlier
checks; the states are checked on copies written into a temporary folder, and one real check of
Exercise 7.1 (a fast one) runs end to end in a subprocess.
"""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("check_exercise", Path(__file__).with_name("check_exercise.py"))
check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check)
from exercise_hints import HINTS  # noqa: E402  (check_exercise put tests/ on the path)
import make_exercises  # noqa: E402


def test_every_exercise_has_a_hint_and_tests():
    """Each exercise has a code-level hint and at least one test that names it, among them the test the
    exercise is known by (a test added later is found by its 'Exercise N.M' mention)."""
    found, mapping = check.exercises(), check.tests_of_exercises()
    assert sorted(HINTS) == sorted(found)
    assert all(mapping.get(i) for i in found), {i: mapping.get(i) for i in found}
    assert "tests/test_04_bins.py::test_bins_closed_form_and_properties" in mapping["4.2"]
    assert "tests/test_03_self_query.py::test_embed_patches_matches_per_patch_loop" in mapping["3.1"]
    assert "tests/test_06_train.py::test_train_step_equals_two_sgd_steps_by_hand" in mapping["6.1"]


def test_verdict_from_the_outcomes_of_an_exercises_tests():
    """Failing (each failing test's first line) wins over everything; a skip of the exercise's own stub is
    "not started"; a pass with tests skipped for other exercises is done with a note; only skips for
    other exercises is "waits on"; outcomes of other tests are ignored."""
    t = "tests/test_04_bins.py::test_a"
    other = "tests/test_04_bins.py::test_b"
    results = {f"{t}[1]": ("passed", ""), f"{t}[2]": ("failed", "Exercise 4.2 f: x is 1, expected 2"),
               other: ("failed", "not this exercise's")}
    assert check.verdict("4.2", [t], results) == ("failing", ["test_a[2]: Exercise 4.2 f: x is 1, expected 2"])
    assert check.verdict("4.2", [t], {t: ("skipped", "Exercise 4.2 is not done yet")}) == ("not started", [])
    waits = {f"{t}[1]": ("passed", ""), f"{t}[2]": ("skipped", "Exercise 4.1 is not done yet")}
    assert check.verdict("4.2", [t], waits) == ("done", ["1 more test waits on 4.1"])
    assert check.verdict("4.2", [t], {t: ("skipped", "Exercise 3.1 is not done yet")}) == ("waits on 3.1", [])


def test_table_shows_each_state_from_the_copies_and_the_kept_outcomes(tmp_path):
    """No copy, not started (the stub), not checked (a body never checked or changed since), the kept
    outcome while the body is unchanged; questions: unanswered, right, wrong with where to look."""
    assert make_exercises.main(["07", "--out", str(tmp_path)]) == 0
    copy = tmp_path / "07_eval.py"
    body = "ratio = float(np.median(gt) / np.median(pred))\n    return pred * ratio, ratio"
    text = copy.read_text().replace('raise NotImplementedError("Exercise 7.1")', body)
    copy.write_text(text.replace("ANSWER_7_1 = None", "ANSWER_7_1 = 40").replace("ANSWER_7_2 = None",
                                                                                  "ANSWER_7_2 = 0.75"))
    found = check.exercises()
    rows = "\n".join(check.table(tmp_path, found, {}))
    assert "  1.1  scale_K" in rows and rows.split("  1.1  scale_K")[1].split()[0:3] == ["no", "copy", "-"]
    line_71 = next(r for r in rows.splitlines() if r.startswith("  7.1"))
    line_72 = next(r for r in rows.splitlines() if r.startswith("  7.2"))
    assert "not checked" in line_71 and line_71.endswith("right")
    assert "not started" in line_72 and line_72.endswith("wrong")
    assert "question: ANSWER_7_2 = 0.75 is not right." in " ".join(rows.split())
    fingerprint = check.copy_state(tmp_path)["7.1"][1]
    kept = {"7.1": {"state": "failing", "lines": ["test_x: Exercise 7.1 median_scale: ratio is 1, expected 2"],
                    "fingerprint": fingerprint}}
    rows = check.table(tmp_path, found, kept)
    at = next(n for n, r in enumerate(rows) if r.startswith("  7.1"))
    assert "failing" in rows[at] and rows[at + 1].strip() == kept["7.1"]["lines"][0]
    assert rows[-1] == "1 failing, 1 not started, 14 no copy; questions: 1 of 16 right"
    copy.write_text(copy.read_text().replace("return pred * ratio", "return pred * ratio  # changed"))
    assert "not checked" in next(r for r in check.table(tmp_path, found, kept) if r.startswith("  7.1"))


def test_hint_and_tests_print_without_running_anything(capsys):
    """--hint prints the exercise's code-level hint, --tests its tests and question; an unknown id is a
    usage error naming the exercises."""
    assert check.main(["4.2", "--hint"]) == 0
    assert "F.pad(widths, (1, 0), value=min_depth)" in " ".join(capsys.readouterr().out.split())
    assert check.main(["4.2", "--tests"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "tests/test_exercise_questions.py::test_question[4.2]"
    with pytest.raises(SystemExit):
        check.main(["9.9"])
    assert "no exercise '9.9'" in capsys.readouterr().err


def test_checking_one_exercise_runs_its_tests_and_keeps_the_outcome(tmp_path):
    """`check_exercise.py 7.1 --impl FOLDER` on a copy with 7.1 written wrongly (ratio upside down) runs
    7.1's tests, exits 1, names the failing test's first line and the hint command, and keeps the
    outcome; an answered question is checked in the same run."""
    assert make_exercises.main(["07", "--out", str(tmp_path)]) == 0
    copy = tmp_path / "07_eval.py"
    copy.write_text(copy.read_text().replace(
        'raise NotImplementedError("Exercise 7.1")',
        "ratio = float(np.median(pred) / np.median(gt))\n    return pred * ratio, ratio").replace(
        "ANSWER_7_1 = None", "ANSWER_7_1 = 40"))
    done = subprocess.run([sys.executable, "tests/check_exercise.py", "7.1", "--impl", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    table = done.stdout[done.stdout.index("Progress ("):]
    line_71 = next(r for r in table.splitlines() if r.startswith("  7.1"))
    assert "failing" in line_71 and line_71.endswith("right"), table
    first_line = "test_median_scaling_uses_the_median_ratio_gt_over_pred: Exercise 7.1 median_scale"
    assert first_line in " ".join(table.split())
    assert "stuck? python tests/check_exercise.py 7.1 --hint" in done.stdout
    kept = json.loads((tmp_path / check.PROGRESS_FILE).read_text())
    assert kept["7.1"]["state"] == "failing" and "7.2" not in kept
