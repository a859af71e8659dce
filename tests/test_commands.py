"""Every command line shown in README.md and docs/ (and in the docstrings of the steps and helpers), and
every command the scripts in tools/ run, still works: its script or module answers --help, and every flag
the command uses is one that script accepts; and a documented command can be pasted as it stands (no
literal `...` standing for arguments).

A moved or renamed module, or a flag that was renamed or removed, would otherwise leave a dead
command in the documentation or in a tool script that no other test runs (tools/gpu_check.sh only
runs for real on a CUDA machine). The documented commands are read from the Markdown text itself
(fenced blocks and inline code): `python X.py ...`, `python -m helpers.X ...`, `torchrun ... X.py ...`,
`time python ...`; pip and pytest lines are not the project's commands and are left out. The inline
Python programs of the docs (`python - ARGS <<'EOF' ... EOF`) are run for real, their run-folder
arguments (runs/...) replaced by a two-step run of a tiny world. The tool scripts are run dry, with
PYTHON set to a recorder that notes each command it is given instead of running it, so the commands
checked are the ones the script would really run (arrays expanded).
"""
import ast
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TOOLS = sorted((ROOT / "tools").glob("*.sh"))
MODULES = sorted(ROOT.glob("0[1-7]_*.py")) + sorted((ROOT / "helpers").glob("*.py"))
COMMAND = re.compile(r"(?:^|[\s`(])((?:time\s+)?(?:python3?|torchrun)\s[^`\n]*)")
NOT_OURS = {"pip", "pytest"}  # `python -m pip ...`, `python -m pytest ...`


def _logical_lines(text):
    """The text's lines with shell continuations (a trailing backslash) joined."""
    return text.replace("\\\n", " ").splitlines()


def _documents():
    """[(name, text)]: the Markdown files, and the module docstrings of the steps and the helpers."""
    docs = [(doc.name, doc.read_text()) for doc in DOCS]
    for module in MODULES:
        docstring = ast.get_docstring(ast.parse(module.read_text()))
        if docstring:
            docs.append((f"{module.relative_to(ROOT)} (docstring)", docstring))
    return docs


def documented_commands():
    """[(file name, command)] of every project command in the README, docs/ and the module docstrings
    (comments cut off)."""
    found = []
    for doc, text in _documents():
        for line in _logical_lines(text):
            for match in COMMAND.finditer(line):
                for part in re.split(r"\s&&\s|\s&\s|;\s", match.group(1)):
                    command = part.split(" #")[0].strip().rstrip("&").strip()
                    if command:
                        found.append((doc, command))
    return found


def target_and_flags(command):
    """(target, flags): target is ("script", "06_train.py") or ("module", "helpers.predict"), or None
    for a command that is not the project's; flags are the --options given after the target."""
    tokens = [t.strip("[]()") for t in command.split()]
    while tokens and tokens[0] in ("time", "python", "python3"):
        tokens.pop(0)
    if tokens[:1] == ["torchrun"] or tokens[:2] == ["-m", "torch.distributed.run"]:
        tokens = tokens[1 if tokens[0] == "torchrun" else 2:]
        while tokens and tokens[0].startswith("-"):   # torchrun's own options, e.g. --nproc_per_node=8
            tokens.pop(0)
    if not tokens or tokens[0] in ("-", "-c"):
        return None, []
    if tokens[0] == "-m":
        if len(tokens) < 2 or tokens[1].split(".")[0] in NOT_OURS or tokens[1].endswith("NAME"):
            return None, []   # not ours, or a placeholder (python -m helpers.NAME)
        target, rest = ("module", tokens[1]), tokens[2:]
    elif tokens[0].endswith(".py") and not tokens[0].startswith("NN_"):   # NN_name.py: a placeholder
        # mine/NN_name.py is a learner's copy of the step (tests/make_exercises.py): the same flags
        target, rest = ("script", tokens[0].removeprefix("mine/")), tokens[1:]
    else:
        return None, []
    flags = sorted({t.split("=")[0] for t in rest if re.fullmatch(r"--[a-z][a-z0-9_-]*(=.*)?", t)})
    return target, flags


RECORDER = """import json, os, sys
with open(os.environ["DRY_RUN_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
if sys.argv[1:2] == ["-c"]:
    print("dry run")
"""


def dry_run(script, workdir):
    """Run a tool script with PYTHON set to a recorder (a Python program that notes its arguments and
    exits 0; its `-c` probes, such as "is there a GPU?", answer yes). (completed process, [argv of every
    command the script gave PYTHON]); the script's outputs go to workdir/out."""
    workdir = Path(workdir)
    recorder, log = workdir / "python", workdir / "commands.jsonl"
    recorder.write_text(f"#!{sys.executable}\n{RECORDER}")
    recorder.chmod(0o755)
    env = {**os.environ, "PYTHON": str(recorder), "DRY_RUN_LOG": str(log), "GPU_CHECK_STEP_LIMIT": "60"}
    done = subprocess.run(["bash", str(script), str(workdir / "out")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    argvs = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return done, argvs


def tool_commands():
    """[(tools/NAME.sh, command)] of every command the tool scripts run, from a dry run of each."""
    found = []
    for script in TOOLS:
        with tempfile.TemporaryDirectory() as workdir:
            _, argvs = dry_run(script, workdir)
        found += [(f"tools/{script.name}", " ".join(["python", *argv])) for argv in argvs]
    return found


def _targets():
    """{target: {flag: [where it is documented]}} over every documented command and tool command."""
    targets = {}
    for doc, command in documented_commands() + tool_commands():
        target, flags = target_and_flags(command)
        if target is not None:
            seen = targets.setdefault(target, {})
            for flag in flags:
                seen.setdefault(flag, []).append(f"{doc}: {command}")
    return targets


TARGETS = _targets()


def test_the_docs_show_commands_of_every_kind():
    """The reader finds the seven steps and the helpers' commands (a guard against a parser that
    silently reads nothing)."""
    scripts = {name for kind, name in TARGETS if kind == "script"}
    modules = {name for kind, name in TARGETS if kind == "module"}
    assert {"06_train.py", "07_eval.py"} <= scripts
    assert {"helpers.compare_runs", "helpers.predict", "helpers.benchmark", "helpers.synthetic_world"} <= modules


def test_documented_commands_can_be_pasted():
    """No documented command holds a literal `...` for arguments left out (placeholders in capitals,
    such as RUN or PATH/TO/RELEASED_MODEL, are named; a `...` cannot be pasted)."""
    elided = [f"{doc}: {command}" for doc, command in documented_commands()
              if any(token.strip("[]()`'\"").endswith("...") for token in command.split())]
    assert not elided, elided


def test_commands_are_read_with_their_flags():
    """The reader of the Markdown: continuation lines joined, comments and pip/pytest lines left out."""
    assert target_and_flags("python 06_train.py --run_dir runs/a --no-use_stereo --seed=3") == \
        (("script", "06_train.py"), ["--no-use_stereo", "--run_dir", "--seed"])
    assert target_and_flags("time python -m helpers.predict --images DIR [--ply]") == \
        (("module", "helpers.predict"), ["--images", "--ply"])
    assert target_and_flags("torchrun --nproc_per_node=2 06_train.py --data kitti")[1] == ["--data"]
    assert target_and_flags("python -m pytest -q") == (None, [])
    assert target_and_flags("python -m helpers.NAME --help") == (None, [])
    assert target_and_flags("python mine/03_self_query.py")[0] == ("script", "03_self_query.py")
    assert target_and_flags("python - runs/a <<'EOF'") == (None, [])
    assert target_and_flags("python -c import torch") == (None, [])
    assert target_and_flags("python -m torch.distributed.run --nproc_per_node=1 --standalone 06_train.py "
                            "--max_steps 2")[0] == ("script", "06_train.py")
    assert _logical_lines("python a.py --x \\\n  --y\nnext") == ["python a.py --x    --y", "next"]


@pytest.mark.parametrize("target", sorted(TARGETS), ids=lambda t: t[1])
def test_documented_command_answers_help_and_knows_its_flags(target):
    """`--help` of the documented script or module exits 0, and every flag the docs give it is in its help."""
    kind, name = target
    argv = [sys.executable, name] if kind == "script" else [sys.executable, "-m", name]
    if kind == "script":
        assert (ROOT / name).is_file(), f"documented script {name} does not exist"
    done = subprocess.run(argv + ["--help"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(argv[1:])} --help failed: {done.stderr.strip()[-400:]}"
    known = set(re.findall(r"--[a-z][a-z0-9_-]*", done.stdout))
    unknown = {flag: where for flag, where in TARGETS[target].items() if flag not in known}
    assert not unknown, f"{name} has no flag " + "; ".join(f"{f} (in {w[0]})" for f, w in unknown.items())


@pytest.mark.parametrize("script", TOOLS, ids=lambda p: p.name)
def test_tool_script_runs_to_its_end_dry(script, tmp_path):
    """A dry run of each tools/ script (PYTHON = the recorder) reaches its end with exit 0 and runs
    project commands, which the test above checks like the documented ones: a step that names a module
    by file path (`python helpers/x.py`, which cannot import helpers) or a flag that is gone fails there."""
    done, argvs = dry_run(script, tmp_path)
    assert done.returncode == 0, f"{script.name}, dry run: {(done.stdout + done.stderr).strip()[-600:]}"
    ours = [argv for argv in argvs if target_and_flags(" ".join(["python", *argv]))[0] is not None]
    assert ours, f"{script.name} ran no project command through $PYTHON: {argvs}"
    if script.name == "gpu_check.sh":
        assert "all GPU checks passed" in done.stdout
        run = {" ".join(argv) for argv in argvs}
        assert any("--no-channels_last" in c and "06_train.py" in c for c in run), "the NCHW profile is gone"
        assert any(c.startswith("-m helpers.benchmark") for c in run)


HEREDOC = re.compile(r"^(?:python3?) - (?P<args>[^<\n]*)<<\s*'?(?P<end>\w+)'?[^\n]*\n(?P<body>.*?)\n(?P=end)$",
                     re.M | re.S)


def documented_programs():
    """[(file name, [arguments], program text)] of every inline Python program in the README and docs/."""
    return [(doc.name, m.group("args").split(), m.group("body"))
            for doc in DOCS for m in HEREDOC.finditer(doc.read_text())]


@pytest.fixture(scope="module")
def tiny_run(tiny_world, tmp_path_factory):
    """A finished two-step run (log.csv, val.csv, checkpoints) of a tiny network on the tiny world."""
    run_dir = tmp_path_factory.mktemp("doc_programs") / "run"
    tiny = ["--num_layers", "18", "--num_features", "32", "--model_dim", "16", "--patch_size", "8",
            "--num_queries", "8", "--num_bins", "16", "--dim_feedforward", "32", "--batch_size", "2",
            "--log_every", "1", "--no_eval", "--threads", "1", "--max_steps", "2"]
    done = subprocess.run([sys.executable, "06_train.py", *tiny, "--data_path", str(tiny_world),
                           "--run_dir", str(run_dir)], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-600:]
    return run_dir


def test_the_docs_programs_are_found():
    """The reader of inline programs finds the collapse detector's replay (docs/monocular.md)."""
    assert any("CollapseWatch" in body for _, _, body in documented_programs())


@pytest.mark.parametrize("doc, args, body", documented_programs(), ids=lambda v: v if isinstance(v, str) and
                         v.endswith(".md") else "")
def test_documented_program_runs(doc, args, body, tiny_run):
    """Each inline program of the docs runs from the repository root and exits 0, every run folder it is
    given (runs/NAME) replaced by the tiny run: a name moved out of a module fails here."""
    argv = [str(tiny_run) if a.startswith("runs/") else a for a in args]
    done = subprocess.run([sys.executable, "-", *argv], input=body, cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, f"the program of {doc} failed: {done.stderr.strip()[-600:]}"
    assert done.stdout.strip(), f"the program of {doc} printed nothing"
