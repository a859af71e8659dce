"""study - train the runs of a study file to the end, across as many sittings as it takes, and score them.

A study file (docs/studies/*.txt) lists one run a line: a name, then its 06_train.py flags; a line
`@zero_shot STYLES GLOB ...` also scores the matching runs on the world styles. Each call skips scored
runs, resumes cut-off ones and starts the rest; docs/ablations.md ("A study") has the details. Run:
  python -m helpers.study --study docs/studies/three_questions.txt [--parallel 1] [--only NAME] [--dry_run]
Tests: tests/test_study.py.
"""
import argparse
import fnmatch
import importlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from pathlib import Path

import torch

from helpers import compare_runs
from helpers import distributed_training as runtime    # SIGINT / SIGTERM as a request to stop
from helpers import synthetic_world
from helpers import training_data
from helpers.cli import add_dataclass_flags, one_line
from helpers.speed_layer import cpu_has_native_bf16

data = importlib.import_module("01_data")

ROOT = Path(__file__).resolve().parents[1]              # 06_train.py runs from here
# Flags the study sets itself: a study file that gives them would fight it.
OWN_FLAGS = ("--run_dir", "--run-dir", "--resume", "--no_eval", "--no-eval", "--threads", "--profile")


@dataclass
class StudyConfig:
    """The flags of `python -m helpers.study`."""
    study: str = ""  # the study file: one run per line, "NAME 06_train.py-flags ..." ('#' comments)
    parallel: int = 2  # runs trained at once
    threads: int = 0  # CPU threads per run (0 = the cores / --parallel, at least 1); unused on a GPU
    runs_dir: str = "runs/study"  # the run folders RUNS/NAME (kept until the run is scored)
    scores: str = "docs/scores"  # the score files SCORES/NAME.json
    out: str = ""  # the study's table from the score files ("" = RUNS/<study file name>)
    only: list = field(default_factory=list)  # train only these runs of the file (the table still shows every scored run)
    dry_run: bool = False  # print what would run, and run nothing


def read_study(path):
    """([(name, [flags])], (styles folder, [name globs]) of its @zero_shot line or None); DataError
    naming the file and line for a line without flags, a repeated name, a flag in OWN_FLAGS, a second or
    empty @zero_shot line."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise data.DataError(f"study file {path}: {err.strerror or one_line(err)}") from None
    runs, zero_shot = [], None
    for number, line in enumerate(text.splitlines(), start=1):
        words = shlex.split(line, comments=True)
        if not words:
            continue
        name, flags = words[0], words[1:]
        where = f"study file {path}, line {number}"
        if name == "@zero_shot":
            if zero_shot or len(flags) < 2:
                raise data.DataError(f"{where}: give one line '@zero_shot STYLES_FOLDER RUN_GLOB ...'")
            zero_shot = (flags[0], flags[1:])
            continue
        if name.startswith("-") or "/" in name or not flags:
            raise data.DataError(f"{where}: expected 'NAME --flag value ...', got {line.strip()!r}")
        if name in {n for n, _ in runs}:
            raise data.DataError(f"{where}: the run name {name} is used twice")
        own = [f for f in flags if f.split("=")[0] in OWN_FLAGS]
        if own:
            raise data.DataError(f"{where}: {own[0]} is set by the study itself; leave it out")
        runs.append((name, flags))
    if not runs:
        raise data.DataError(f"study file {path}: lists no run")
    return runs, zero_shot


def training_world(flags):
    """The data folder a run trains on: its --data_path, else the default world data/synthetic."""
    for i, flag in enumerate(flags[:-1]):
        if flag in ("--data_path", "--data-path"):
            return (ROOT / flags[i + 1]).resolve()
    return ROOT / "data" / "synthetic"


def render_styles(world, styles):
    """The training world's test drives (same frames, size and seed) rendered in every world style
    missing from STYLES/<style>."""
    missing = [n for n in synthetic_world.STYLES if n != "default" and not (styles / n / data.SYNTH_MARKER).is_file()]
    if not missing:
        return
    try:
        marker = json.loads((world / data.SYNTH_MARKER).read_text())
        lines = (world / "splits" / "synthetic" / "test_files.txt").read_text().splitlines()
    except (OSError, ValueError) as err:
        raise data.DataError(f"zero-shot: {world} is not a readable synthetic world ({one_line(err)})") from None
    drives = sorted({int(line.split()[0].split("_drive_")[1][:4]) for line in lines if line.strip()})
    cmd = [sys.executable, "-m", "helpers.synthetic_world", "--styles", str(styles), "--first_drive", str(drives[0]),
           "--num_drives", str(drives[-1] - drives[0] + 1), "--frames_per_drive", str(marker["frames_per_drive"]),
           "--height", str(marker["height"]), "--width", str(marker["width"]), "--seed", str(marker["seed"])]
    print(f"{time.strftime('%H:%M:%S')} rendering the world styles: {shlex.join(cmd[1:])}", flush=True)
    if subprocess.call(cmd, cwd=ROOT) != 0:
        raise data.DataError(f"zero-shot: rendering the world styles into {styles} failed")


def score(name, runs_dir, scores, threads, worlds=()):
    """compare_runs --save_scores on one finished run, in a child process (its own thread count): on the
    test split into SCORES, or on the worlds into SCORES/zero_shot; returns its exit code."""
    folder, kind = Path(runs_dir) / name, "zero_shot" if worlds else "compare"
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    cmd = [sys.executable, "-m", "helpers.compare_runs", "--runs", str(folder),
           *(["--worlds", *worlds] if worlds else []), "--out", str(folder / kind),
           "--save_scores", str(Path(scores) / "zero_shot" if worlds else scores)]
    with open(folder / "score.log", "a" if worlds else "w") as log:
        return subprocess.call(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)


def score_zero_shot(name, flags, runs_dir, scores, styles, threads):
    """score on the training world, then every world style (rendered when missing)."""
    world = training_world(flags)
    render_styles(world, styles)
    worlds = [str(world)] + [str(styles / n) for n in synthetic_world.STYLES if n != "default"]
    return score(name, runs_dir, scores, threads, worlds)


def plan(runs, runs_dir, scores, zero_shot=()):
    """{name: "scored" | "zero-shot" | "resume" | "start"}: what this call does with each run
    ("zero-shot": scored, but not yet on the world styles; zero_shot: the names that need it)."""
    state = {}
    for name, _ in runs:
        if (Path(scores) / f"{name}.json").is_file():
            needs = name in zero_shot and not (Path(scores) / "zero_shot" / f"{name}.json").is_file()
            state[name] = "zero-shot" if needs and (Path(runs_dir) / name / "best.pt").is_file() else "scored"
        elif (Path(runs_dir) / name / "ckpt.pt").is_file():
            state[name] = "resume"
        else:
            state[name] = "start"
    return state


def train_command(name, flags, state, runs_dir, threads):
    """The 06_train.py command of one run (a resumed run keeps its stored flags)."""
    folder = str(Path(runs_dir) / name)
    cmd = [sys.executable, "06_train.py"]
    cmd += ["--resume", folder] if state == "resume" else [*flags, "--run_dir", folder, "--no_eval"]
    return cmd + (["--threads", str(threads)] if threads else [])


def rebuild_table(runs, scores, out, zero_shot=()):
    """The study's tables from its runs' score files (compare_runs --scores): OUT and OUT/zero_shot."""
    every = [n for n, _ in runs]
    for folder, names, table in ((Path(scores), every, Path(out)),
                                 (Path(scores) / "zero_shot", [n for n in every if n in zero_shot],
                                  Path(out) / "zero_shot")):
        files = [str(folder / f"{n}.json") for n in names if (folder / f"{n}.json").is_file()]
        if files:
            compare_runs.main(["--scores", *files, "--out", str(table)])


def run_study(options):
    """Train, score and table every run of the study; returns the exit code (0: every run scored)."""
    runs, zero_shot = read_study(options.study)
    unknown = [n for n in options.only if n not in dict(runs)]
    if unknown:
        raise data.DataError(f"--only {unknown[0]}: no such run in {options.study}")
    runs_dir, scores = Path(options.runs_dir).resolve(), Path(options.scores).resolve()
    out = Path(options.out or runs_dir / Path(options.study).stem).resolve()
    gpu = torch.cuda.is_available()
    threads = 0 if gpu else (options.threads or max(1, (os.cpu_count() or 1) // max(options.parallel, 1)))
    globs = zero_shot[1] if zero_shot else []
    shot = {n for n, _ in runs if any(fnmatch.fnmatchcase(n, g) for g in globs)}
    styles = (ROOT / zero_shot[0]).resolve() if zero_shot else None
    state = plan(runs, runs_dir, scores, shot)
    for name in sorted(shot):
        if state[name] == "scored" and not (scores / "zero_shot" / f"{name}.json").is_file():
            print(f"note: {name} is scored but not zero-shot, and its run folder is gone (no best.pt in "
                  f"{runs_dir / name}): delete {scores / (name + '.json')} to train it again", flush=True)
    todo = [(n, f) for n, f in runs if state[n] != "scored" and (not options.only or n in options.only)]
    native_bf16 = gpu or cpu_has_native_bf16()
    skipped = [n for n, f in todo if "--amp" in f and not native_bf16]
    for name in skipped:
        print(f"note: {name} asks for --amp, which runs float32 on this CPU (no native bf16): skipped; "
              f"run it on a CPU with AVX-512 BF16 or AMX, or on a GPU", flush=True)
    todo = [(n, f) for n, f in todo if n not in skipped]
    print(f"study {options.study}: {len(runs)} runs, {sum(s == 'scored' for s in state.values())} scored, "
          f"{len(todo)} to do ({options.parallel} at a time"
          f"{f', --threads {threads} each' if threads else ''}); scores in {scores}", flush=True)
    for name, flags in todo:
        what = ("score on the world styles" if state[name] == "zero-shot"
                else shlex.join(train_command(name, flags, state[name], runs_dir, threads)[1:]))
        print(f"   {state[name]:6} {name}: {what}")
    if options.dry_run:
        return 0
    if any("--data_path" not in f and "--data-path" not in f for _, f in todo):
        # the default world, rendered once here: two runs would render it together
        train = importlib.import_module("06_train")
        training_data.ensure_synthetic_world(train.TrainConfig(), SimpleNamespace(main=True, world=1, rank=0))
    flags_of = dict(runs)

    def finish(name, zero_only=False):
        """Score a finished run (and on the world styles), rebuild the tables; a failure joins failed."""
        steps = [] if zero_only else [("score", lambda: score(name, runs_dir, scores, threads),
                                       scores / f"{name}.json")]
        if name in shot:
            steps.append(("zero-shot", lambda: score_zero_shot(name, flags_of[name], runs_dir, scores, styles,
                                                               threads), scores / "zero_shot" / f"{name}.json"))
        for what, call, made in steps:
            code = call()
            if code != 0:
                print(f"{time.strftime('%H:%M:%S')} error: {what} of {name} exited with code {code}; see "
                      f"{runs_dir / name / 'score.log'}", flush=True)
                failed.append(name)
                return
            print(f"{time.strftime('%H:%M:%S')} {what} {name}: {made}", flush=True)
        rebuild_table(runs, scores, out, shot)

    failed, running, stop = [], {}, runtime.StopRequest(watch_workers=False)
    with stop.installed():
        while (todo or running) and not stop.signum:
            while todo and len(running) < options.parallel:
                name, flags = todo.pop(0)
                if state[name] == "zero-shot":      # trained and scored before: the world styles only
                    finish(name, zero_only=True)
                    continue
                (runs_dir / name).mkdir(parents=True, exist_ok=True)
                log = open(runs_dir / name / "train.log", "a")
                cmd = train_command(name, flags, state[name], runs_dir, threads)
                running[name] = (subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT), log)
                print(f"{time.strftime('%H:%M:%S')} {state[name]} {name} (log: {runs_dir / name / 'train.log'})",
                      flush=True)
            time.sleep(1.0)
            for name, (child, log) in list(running.items()):
                if child.poll() is None:
                    continue
                log.close()
                del running[name]
                if child.returncode != 0:
                    failed.append(name)
                    print(f"{time.strftime('%H:%M:%S')} error: {name} exited with code {child.returncode}; "
                          f"see {runs_dir / name / 'train.log'} (given again, the study resumes it)", flush=True)
                    continue
                finish(name)
        if stop.signum:   # each run saves its checkpoint on SIGTERM: a later call resumes it
            for child, log in running.values():
                child.terminate()
            for child, log in running.values():
                child.wait()
                log.close()
            print(f"stopped by {signal.Signals(stop.signum).name}: {', '.join(running) or 'no run'} saved for "
                  f"--resume; give the same command again to go on", file=sys.stderr, flush=True)
            return 128 + stop.signum
    left = [n for n, _ in runs if not (scores / f"{n}.json").is_file()]
    print(f"study {options.study}: {len(runs) - len(left)} of {len(runs)} runs scored"
          + (f"; not yet: {', '.join(left)}" if left else "") + f"; table: {out}", flush=True)
    return 1 if failed else 0


def main(argv=None):
    """Parse and run the study; returns the exit code (0 ok, 1 a run failed, 2 bad input, 128 + signal)."""
    parser = argparse.ArgumentParser(description="Train, score and table every run of a study file; "
                                                 "stop it at any time and give it again to go on.")
    add_dataclass_flags(parser, StudyConfig)
    options = StudyConfig(**vars(parser.parse_args(argv)))
    try:
        if not options.study:
            raise data.DataError("give the study file: --study docs/studies/NAME.txt")
        if options.parallel < 1:
            raise data.DataError(f"--parallel {options.parallel}: give at least 1")
        return run_study(options)
    except (data.DataError, ValueError, OSError) as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
