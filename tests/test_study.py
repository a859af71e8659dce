"""Tests of helpers/study.py: a study file read strictly, runs skipped / resumed / started, a study stopped
by a signal and given again, and its table equal to compare_runs over the run folders.

Oracle for the table: `python -m helpers.compare_runs --runs` over the same run folders (the study's table
is rebuilt from score files alone and must give the same variants, means and stds).
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import run_record, study

ROOT = Path(__file__).resolve().parents[1]


def write_study(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("lines, message", [
    (["# only a comment", ""], "lists no run"),
    (["a --seed 0", "a --seed 1"], "line 2: the run name a is used twice"),
    (["a --seed 0 --threads 2"], "line 1: --threads is set by the study itself"),
    (["a"], "line 1: expected 'NAME --flag value ...'"),
    (["--seed 0"], "line 1: expected 'NAME --flag value ...'"),
    (["@zero_shot data/styles", "a --seed 0"], "line 1: give one line '@zero_shot STYLES_FOLDER RUN_GLOB"),
    (["@zero_shot s a*", "@zero_shot s b*", "a --seed 0"], "line 2: give one line '@zero_shot"),
])
def test_read_study_refuses_a_bad_file_naming_the_line(tmp_path, lines, message):
    """A study file without runs, with a repeated name, a flag the study sets itself, a run without flags
    or without a name is refused with one error naming the file and the line."""
    path = write_study(tmp_path / "s.txt", lines)
    with pytest.raises(study.data.DataError, match=message) as err:
        study.read_study(path)
    assert str(path) in str(err.value)


def test_plan_skips_scored_runs_and_resumes_cut_off_ones(tmp_path):
    """A run with a score file is done, one whose folder holds ckpt.pt (and no score file) resumes, the
    others start; a resumed run keeps its stored flags (06's --resume), a new one gets its run folder,
    --no_eval and the thread count."""
    path = write_study(tmp_path / "s.txt", ["a --seed 0  # comment", "b --seed 1", "c --seed 2 --queries none"])
    runs, zero_shot = study.read_study(path)
    assert zero_shot is None
    assert runs == [("a", ["--seed", "0"]), ("b", ["--seed", "1"]), ("c", ["--seed", "2", "--queries", "none"])]
    (tmp_path / "scores").mkdir()
    (tmp_path / "scores" / "a.json").write_text("{}")
    (tmp_path / "runs" / "a").mkdir(parents=True)
    (tmp_path / "runs" / "a" / "ckpt.pt").write_text("")   # scored: the score file wins
    (tmp_path / "runs" / "b").mkdir()
    (tmp_path / "runs" / "b" / "ckpt.pt").write_text("")
    state = study.plan(runs, tmp_path / "runs", tmp_path / "scores")
    assert state == {"a": "scored", "b": "resume", "c": "start"}
    assert study.train_command("b", ["--seed", "1"], "resume", tmp_path / "runs", 1)[1:] == [
        "06_train.py", "--resume", str(tmp_path / "runs" / "b"), "--threads", "1"]
    assert study.train_command("c", ["--seed", "2"], "start", tmp_path / "runs", 0)[1:] == [
        "06_train.py", "--seed", "2", "--run_dir", str(tmp_path / "runs" / "c"), "--no_eval"]


def test_amp_runs_are_skipped_where_they_would_train_in_float32(tmp_path, monkeypatch, capsys):
    """On a CPU without native bf16 an --amp run would train in float32 under a bf16 label: the study
    says so in one note and leaves it for a machine that can run it."""
    monkeypatch.setattr(study, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(study.torch.cuda, "is_available", lambda: False)
    path = write_study(tmp_path / "s.txt", ["fp --seed 0", "bf --seed 0 --amp"])
    code = study.main(["--study", str(path), "--runs_dir", str(tmp_path / "runs"),
                       "--scores", str(tmp_path / "scores"), "--dry_run"])
    out = capsys.readouterr().out
    assert code == 0
    assert "note: bf asks for --amp" in out and "1 to do" in out
    assert "start  fp:" in out and "start  bf:" not in out


def test_provenance_keeps_the_commit_that_started_a_run():
    """The commit stored for a run is the one that started it; resumed with other code it reads
    'A then B', and so does a change of precision; unchanged, it stays as it was."""
    now = run_record.provenance(None, bf16=False)
    assert now["precision"] == "float32" and now["commit"]
    same = run_record.provenance({"config": dict(now)}, bf16=False)
    assert same == now
    older = run_record.provenance({"config": {"commit": "abc1234", "precision": "bf16"}}, bf16=False)
    assert older == {"commit": f"abc1234 then {now['commit']}", "precision": "bf16 then float32"}


def test_study_stopped_by_a_signal_resumes_and_tables_like_compare_runs(tiny_world, tmp_path):
    """Three runs (two seeds of one variant, one without queries), one at a time. SIGTERM while the first
    trains: the study stops it (exit 143, its checkpoint saved). Given again: the first resumes from its
    checkpoint, the others start, each is scored into SCORES/NAME.json (with the commit that trained it
    and its precision), and the study's table, rebuilt from the score files, equals compare_runs over
    the three run folders. Two runs are also scored zero-shot on the world styles (rendered from the
    training world's test drives): their table from score files equals compare_runs --worlds."""
    flags = (f"--data_path {tiny_world} --batch_size 2 --max_steps 12 --save_every 2 --pretrained none "
             "--num_features 32 --model_dim 16 --num_queries 8 --num_bins 16")  # small: quick to save
    styles = tmp_path / "styles"
    path = write_study(tmp_path / "tiny.txt", [f"a {flags} --seed 0", f"b {flags} --seed 1",
                                               f"c {flags} --seed 0 --queries none", f"@zero_shot {styles} a c"])
    runs, scores = tmp_path / "runs", tmp_path / "scores"
    cmd = [sys.executable, "-m", "helpers.study", "--study", str(path), "--runs_dir", str(runs),
           "--scores", str(scores), "--parallel", "1", "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while not (runs / "a" / "ckpt.pt").is_file() and first.poll() is None:
        time.sleep(0.2)
    first.send_signal(signal.SIGTERM)
    out, _ = first.communicate(timeout=600)
    assert first.returncode == 128 + signal.SIGTERM, out
    assert "stopped by SIGTERM: a saved for --resume" in out
    assert not (scores / "a.json").exists()

    second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "resume a:" in second.stdout and "start  b:" in second.stdout
    starts = [line for line in (runs / "a" / "train.log").read_text().splitlines() if line.startswith("train:")]
    assert len(starts) == 2 and "step 0 ->" in starts[0] and "step 0 ->" not in starts[1]   # resumed, not redone
    for name in "abc":
        record = json.loads((scores / f"{name}.json").read_text())
        assert record["run"] == name and record["precision"] == "float32"
        assert record["trained_with_commit"] and record["trained_with_commit"] != "unknown"

    oracle = subprocess.run([sys.executable, "-m", "helpers.compare_runs", "--runs", *(str(runs / n) for n in "abc"),
                             "--out", str(tmp_path / "oracle")], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert oracle.returncode == 0, oracle.stderr
    table = runs / "tiny"
    assert (table / "compare_synthetic.csv").read_text() == (tmp_path / "oracle" / "compare_synthetic.csv").read_text()
    assert (table / "compare_synthetic.md").read_text() == (tmp_path / "oracle" / "compare_synthetic.md").read_text()

    assert sorted(p.name for p in (scores / "zero_shot").iterdir()) == ["a.json", "c.json"]
    worlds = [str(tiny_world)] + [str(styles / n) for n in ("dusk", "other_town", "van_camera", "cluttered")]
    oracle = subprocess.run([sys.executable, "-m", "helpers.compare_runs", "--runs", str(runs / "a"), str(runs / "c"),
                             "--worlds", *worlds, "--out", str(tmp_path / "oracle_zero_shot")], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert oracle.returncode == 0, oracle.stderr
    assert ((table / "zero_shot" / "zero_shot.csv").read_text()
            == (tmp_path / "oracle_zero_shot" / "zero_shot.csv").read_text())
