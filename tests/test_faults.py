"""Faults a long training run meets, each ending in one clear line or a clean recovery (docs/reliability.md):
a diverging run (NaN weights) reaching the warp, a full disk while saving, a checkpoint holding
NaN/Inf weights, a rank dying under torchrun, two trainings on one run folder, SIGTERM during the
final evaluation, a run folder that cannot be written, a killed DataLoader worker, an error in a
validation batch, SIGTERM during a save, a full disk at log.csv or the curves, a --split_dir
without the lists; and tools/gpu_check.sh without a GPU.

Everything runs the tiny model of tests/test_06_train.py on the session's tiny synthetic world.
What could crash the interpreter itself (a segfault) runs in a subprocess.
"""
import errno
import importlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from test_06_train import TINY, _free_port, load, run, train

ROOT = Path(__file__).resolve().parents[1]


def folder():
    return importlib.import_module("helpers.run_record")


def error_lines(capsys):
    """The lines a call wrote to stderr."""
    return capsys.readouterr().err.strip().splitlines()


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one thread per test


# ------------------------------------------------------------------ 0. NaN weights reach the warp
_NAN_WEIGHTS = r"""
import importlib, os, sys
sys.path.insert(0, os.getcwd())
import torch
t = importlib.import_module("06_train")
real = t.build_networks
def poisoned(*args, **kwargs):
    depth_net, pose_net = real(*args, **kwargs)
    with torch.no_grad():
        weight = depth_net.unet.encoder.conv1.weight
        weight[(0,) * weight.dim()] = float("nan")
    return depth_net, pose_net
t.build_networks = poisoned
sys.exit(t.main(sys.argv[1:]))
"""


def test_nan_weights_end_through_the_nan_guard_not_a_segfault(tiny_world, tmp_path):
    """A depth network with a NaN weight (a diverged run) makes depth and the sampling grid NaN; the
    warp keeps NaN coordinates from grid_sample (whose CPU backward would read out of bounds and
    crash: exit -11) and makes the loss NaN instead: exit 3 with one line naming the step."""
    argv = TINY + ["--data_path", str(tiny_world), "--run_dir", str(tmp_path / "r"), "--max_steps", "3"]
    done = subprocess.run([sys.executable, "-c", _NAN_WEIGHTS, *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 3, (done.returncode, done.stderr[-2000:])
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and "non-finite loss at step 1" in err[0], err
    assert not (tmp_path / "r" / "ckpt.pt").exists()


def test_warp_turns_non_finite_coordinates_into_a_nan_image_without_a_host_read():
    """warp: a NaN depth pixel or a NaN pose gives an all-NaN warped image (so the loss is NaN), the
    backward pass runs and gives finite source gradients; finite inputs are warped exactly as
    before (no NaN); nothing reads the device."""
    from test_06_train import HostReads
    g = importlib.import_module("05_posenet_loss")
    K = torch.tensor([[20.0, 0, 6, 0], [0, 20, 4, 0], [0, 0, 1, 0], [0, 0, 0, 1]]).repeat(2, 1, 1)
    T = torch.eye(4).repeat(2, 1, 1)
    T[:, 0, 3] = 0.1
    source = torch.rand(2, 3, 8, 12, requires_grad=True)
    depth = torch.rand(2, 1, 8, 12) + 1
    clean = g.warp(source, depth, K, torch.linalg.inv(K), T)
    assert torch.isfinite(clean).all()
    for bad_depth, bad_T in ((True, False), (False, True)):
        d, pose = depth.clone(), T.clone()
        if bad_depth:
            d[1, 0, 2, 3] = float("nan")
        if bad_T:
            pose[0, 2, 3] = float("inf")
        with HostReads() as reads:
            warped = g.warp(source, d, K, torch.linalg.inv(K), pose)
        assert reads.seen == [] and torch.isnan(warped).all()
        warped.sum().backward()
        assert torch.isfinite(source.grad).all()
        source.grad = None


# ------------------------------------------------------------------ 1. a full disk while saving
def test_full_disk_at_a_save_keeps_the_previous_checkpoints_and_exits_4(tiny_world, tmp_path, monkeypatch,
                                                                       capsys):
    """torch.save failing at the second save as it does on a full disk (a RuntimeError from the zip
    writer; also an OSError ENOSPC): exit 4 with one line naming the file; ckpt.pt and best.pt of the
    first save stay intact and loadable, and no temporary file is left behind."""
    real_save = torch.save
    for failure in (RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed "
                                 "writing file data/12: file write failed"),
                    OSError(errno.ENOSPC, "No space left on device")):
        calls = []

        def full_disk(obj, f, *args, **kwargs):
            calls.append(1)
            if len(calls) > 2:                       # ckpt.pt and best.pt of step 2 are written
                Path(f).write_bytes(b"PK\x03\x04 a few bytes")
                raise failure
            return real_save(obj, f, *args, **kwargs)

        monkeypatch.setattr(torch, "save", full_disk)
        run_dir = tmp_path / type(failure).__name__
        capsys.readouterr()
        assert run(tiny_world, run_dir, "--max_steps", "4", "--save_every", "2") == 4
        err = error_lines(capsys)
        assert len(err) == 1 and "could not write" in err[0] and "ckpt.pt" in err[0], err
        assert "the previous ckpt.pt is intact" in err[0]
        monkeypatch.setattr(torch, "save", real_save)
        assert load(run_dir / "ckpt.pt")["step"] == 2 and load(run_dir / "best.pt")["step"] == 2
        assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".ckpt")) == []


# ------------------------------------------------------------------ 2. a checkpoint with NaN weights
def test_checkpoints_with_nan_or_inf_weights_are_refused_with_the_parameter_named(tiny_world, tmp_path,
                                                                                capsys):
    """A finished run's ckpt.pt with one NaN weight (depth net) or an Inf one (pose net): --resume and
    07_eval.py --checkpoint each refuse it with exit 2 and one line naming the parameter; nothing is
    trained or evaluated, the file is not changed."""
    assert run(tiny_world, tmp_path / "r", "--max_steps", "2") == 0
    ckpt = load(tmp_path / "r" / "ckpt.pt")
    evaluation = importlib.import_module("07_eval")
    for part, name, value in (("model", "unet.encoder.conv1.weight", float("nan")),
                              ("pose", "net.0.weight", float("inf"))):
        bad = {**ckpt, part: dict(ckpt[part])}
        bad[part][name] = bad[part][name].clone()
        bad[part][name][(0,) * bad[part][name].dim()] = value
        torch.save(bad, tmp_path / "r" / "ckpt.pt")
        before = (tmp_path / "r" / "ckpt.pt").read_bytes()
        capsys.readouterr()
        assert train().main(["--resume", str(tmp_path / "r"), "--max_steps", "4"]) == 2
        err = error_lines(capsys)
        assert len(err) == 1 and "non-finite weights" in err[0] and name in err[0], err
        assert (tmp_path / "r" / "ckpt.pt").read_bytes() == before
        if part == "model":
            torch.save(bad, tmp_path / "bad.pt")
            assert evaluation.main(["--checkpoint", str(tmp_path / "bad.pt"), "--data_path", str(tiny_world)]) == 2
            err = error_lines(capsys)
            assert len(err) == 1 and "non-finite weights" in err[0] and name in err[0], err
            assert not (tmp_path / "eval_synthetic.csv").exists()


# ------------------------------------------------------------------ 3. a rank dies under torchrun
def _children(pid):
    """Pids of the processes whose parent is pid (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _rank_of(pid):
    try:
        env = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
    except OSError:
        return None
    return next((int(v.split(b"=")[1]) for v in env if v.startswith(b"RANK=")), None)


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc to find the ranks")
def test_a_killed_rank_stops_torchrun_quickly_and_the_run_resumes(tiny_world, tmp_path):
    """torchrun with 2 gloo processes, a checkpoint every 2 steps; rank 1 is killed (SIGKILL) mid-run:
    torchrun and the surviving rank are gone within 30 s, the last ckpt.pt is intact and loadable,
    and `torchrun ... --resume RUN` continues from it to the end."""
    run_dir = tmp_path / "r"
    base = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
            "06_train.py", *TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    agent = subprocess.Popen(base + ["--data_path", str(tiny_world), "--run_dir", str(run_dir), "--max_steps",
                                     "400", "--save_every", "2"], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not (run_dir / "ckpt.pt").exists() and time.monotonic() < deadline and agent.poll() is None:
            time.sleep(0.5)
        assert (run_dir / "ckpt.pt").exists(), "no checkpoint was written"
        ranks = {_rank_of(p): p for p in _children(agent.pid)}
        assert set(ranks) >= {0, 1}, ranks
        killed = time.monotonic()
        os.kill(ranks[1], signal.SIGKILL)
        agent.wait(timeout=60)
        assert time.monotonic() - killed < 30 and agent.returncode != 0
        assert not Path(f"/proc/{ranks[0]}").exists() or "zombie" in Path(f"/proc/{ranks[0]}/status").read_text()
    finally:
        if agent.poll() is None:
            agent.kill()
    saved = load(run_dir / "ckpt.pt")["step"]
    assert saved >= 2 and saved % 2 == 0
    done = subprocess.run(base[:4] + [f"--master_port={_free_port()}"] + base[5:] + [
        "--resume", str(run_dir), "--max_steps", str(saved + 2)], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert load(run_dir / "ckpt.pt")["step"] == saved + 2


# ------------------------------------------------------------------ 4. two trainings, one run folder
_HOLD_LOCK = r"""
import importlib, os, sys, time
sys.path.insert(0, os.getcwd())
handle = importlib.import_module("helpers.run_record").lock_run_folder(sys.argv[1])
print("locked", flush=True)
time.sleep(600)
"""


@pytest.mark.skipif(folder().fcntl is None, reason="run folders are locked with POSIX file locks")
def test_a_second_training_on_a_busy_run_folder_is_refused_and_a_crash_leaves_no_stale_lock(
        tiny_world, tmp_path, capsys):
    """While another process holds RUN's lock (a training that has not saved yet), 06_train.py on RUN
    exits 2 with one line naming the holder's pid and writes nothing; once that process is killed
    (SIGKILL: no clean-up at all) the lock is gone and a training on RUN runs."""
    run_dir = tmp_path / "r"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(run_dir)], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        capsys.readouterr()
        assert run(tiny_world, run_dir, "--max_steps", "2") == 2
        err = error_lines(capsys)
        assert len(err) == 1 and "in use by another training" in err[0] and f"pid {holder.pid}" in err[0], err
        assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]
    finally:
        holder.kill()
        holder.wait()
    assert run(tiny_world, run_dir, "--max_steps", "2") == 0
    assert load(run_dir / "ckpt.pt")["step"] == 2


# ------------------------------------------------------------------ 5. SIGTERM in the final evaluation
def test_sigterm_during_the_final_evaluation_is_one_line_and_keeps_the_checkpoints(tiny_world, tmp_path,
                                                                                  monkeypatch, capsys):
    """The default run ends with 07_eval.py as a subprocess; SIGTERM arriving while it runs stops it:
    exit 143, one line naming the signal and the command that evaluates the saved checkpoints, which
    are complete."""
    t = train()
    real_popen = subprocess.Popen

    def slow_eval(cmd, **kwargs):                # an evaluation that takes long, then the signal
        if "07_eval.py" not in cmd:              # other children (git, asked for the run's commit) as they are
            return real_popen(cmd, **kwargs)
        child = real_popen([sys.executable, "-c", "import time; time.sleep(60)"], **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        return child

    monkeypatch.setattr(importlib.import_module("helpers.distributed_training").subprocess, "Popen", slow_eval)
    flags = [a for a in TINY if a != "--no_eval"]
    capsys.readouterr()
    code = t.main(flags + ["--data_path", str(tiny_world), "--run_dir", str(tmp_path / "r"), "--max_steps", "2"])
    assert code == 128 + signal.SIGTERM
    err = error_lines(capsys)
    assert len(err) == 1 and "SIGTERM during the final evaluation" in err[0] and "07_eval.py" in err[0], err
    assert load(tmp_path / "r" / "ckpt.pt")["step"] == 2 and load(tmp_path / "r" / "best.pt")["step"] == 2


def test_sigterm_stops_07_eval_with_one_line(tmp_path, tiny_world):
    """07_eval.py receiving SIGTERM mid-evaluation: exit 143 and one `error:` line, no traceback."""
    from test_07_eval import _tiny_checkpoint
    _tiny_checkpoint(tmp_path / "ckpt.pt", data_path=tiny_world)
    script = ("import importlib, os, signal, sys; sys.path.insert(0, os.getcwd()); e = importlib.import_module("
              "'07_eval'); real = e.evaluate\n"
              "def evaluate(*a, **k):\n    os.kill(os.getpid(), signal.SIGTERM)\n    return real(*a, **k)\n"
              "e.evaluate = evaluate\nsys.exit(e.main(sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", script, "--checkpoint", str(tmp_path / "ckpt.pt")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 143, done.stderr
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: stopped by SIGTERM"), err


def test_a_run_folder_that_cannot_be_written_is_one_line_and_nothing_is_lost(tiny_world, tmp_path, monkeypatch,
                                                                            capsys):
    """A run folder that cannot be written (read-only: made so with chmod, or, as root, whom chmod does
    not stop, by refusing the open): a new run and a --resume both exit 2 with one line naming the
    folder's file; the checkpoint of the resumed run is untouched."""
    assert run(tiny_world, tmp_path / "done", "--max_steps", "2") == 0
    before = (tmp_path / "done" / "ckpt.pt").read_bytes()
    os.remove(tmp_path / "done" / ".lock")
    (tmp_path / "new").mkdir()
    if os.geteuid() != 0:
        for path in (tmp_path / "new", tmp_path / "done"):
            path.chmod(0o555)
    else:
        real_open = open

        def read_only(file, mode="r", *args, **kwargs):
            if any(c in mode for c in "wax+") and Path(file).parent in (tmp_path / "new", tmp_path / "done"):
                raise PermissionError(errno.EACCES, "Permission denied", str(file))
            return real_open(file, mode, *args, **kwargs)
        monkeypatch.setattr("builtins.open", read_only)
    try:
        capsys.readouterr()
        assert run(tiny_world, tmp_path / "new", "--max_steps", "2") == 2
        err = error_lines(capsys)
        assert len(err) == 1 and "cannot write" in err[0] and ".lock" in err[0], err
        assert train().main(["--resume", str(tmp_path / "done"), "--max_steps", "4"]) == 2
        err = error_lines(capsys)
        assert len(err) == 1 and "cannot write" in err[0], err
    finally:
        for path in (tmp_path / "new", tmp_path / "done"):
            path.chmod(0o755)
    assert (tmp_path / "done" / "ckpt.pt").read_bytes() == before


# ------------------------------------------------------------------ 6. the GPU check without a GPU
def test_gpu_check_says_there_is_no_gpu_and_exits_0(tmp_path):
    """tools/gpu_check.sh on a machine without CUDA: one line saying so, exit 0, nothing written."""
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: run tools/gpu_check.sh itself")
    done = subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh"), str(tmp_path / "out")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHON": sys.executable})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "gpu_check: no CUDA device on this machine: nothing to check (exit 0)"
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ 7. a DataLoader worker killed
_KILL_WORKER = r"""
import importlib, os, signal, sys
sys.path.insert(0, os.getcwd())
t = importlib.import_module("06_train")
where, at = sys.argv[1], int(sys.argv[2])
trainers, calls = [], []


def kill(loader):
    # the loader's own worker (its persistent iterator), dead before the step goes on: waitid
    # without reaping it, so that PyTorch still sees how it died
    pid = loader._iterator._workers[0].pid
    os.kill(pid, signal.SIGKILL)
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    print(f"killed {pid}", flush=True)


real_init, real_step, real_validate = t.Trainer.__init__, t.train_step, t.validate
def init(self, *args, **kwargs):
    real_init(self, *args, **kwargs)
    trainers.append(self)
def train_step(*args, **kwargs):   # in the middle of step `at`, before the optimizer step
    calls.append(1)
    if where == "train" and len(calls) == at:
        kill(trainers[0].train_loader)
    return real_step(*args, **kwargs)
def validate(depth_net, pose_net, loader, *args, **kwargs):
    if where == "val" and trainers[0].step == at:
        iter(loader)               # starts the (persistent) val workers
        kill(loader)
    return real_validate(depth_net, pose_net, loader, *args, **kwargs)
t.Trainer.__init__, t.train_step, t.validate = init, train_step, validate
sys.exit(t.main(sys.argv[3:]))
"""


WORKER_FLAGS = ["--num_workers", "1", "--val_every", "2", "--max_steps", "4"]


@pytest.fixture(scope="module")
def whole_run(tiny_world, tmp_path_factory):
    """An uninterrupted 4-step run with one DataLoader worker per loader (the resume oracle)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    run_dir = tmp_path_factory.mktemp("whole") / "run"
    assert run(tiny_world, run_dir, *WORKER_FLAGS) == 0
    torch.set_num_threads(before)
    return run_dir


@pytest.mark.skipif(not hasattr(signal, "SIGKILL") or not hasattr(os, "waitid"), reason="needs POSIX")
@pytest.mark.parametrize("where", ["train", "val"])
def test_a_killed_dataloader_worker_is_one_line_exit_5_and_the_run_resumes_exactly(tiny_world, tmp_path,
                                                                                   whole_run, where):
    """kill -9 of a real DataLoader worker (num_workers 1), as the out-of-memory killer does: of the
    train loader in the middle of step 3 (PyTorch's SIGCHLD check used to raise there, inside the
    step: a traceback), or of the val loader as the validation of step 2 starts. Exit 5, one `error:`
    line naming the worker and --resume; ckpt.pt holds that step (saved without the failed
    validation); resumed, the run's log.csv equals an uninterrupted run's (the oracle: the step was
    not left half-done)."""
    killed = tmp_path / "killed"
    at = 3 if where == "train" else 2
    done = subprocess.run([sys.executable, "-c", _KILL_WORKER, where, str(at), *TINY, *WORKER_FLAGS,
                           "--data_path", str(tiny_world), "--run_dir", str(killed)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 5, (done.returncode, done.stderr[-3000:])
    pid = done.stdout.split("killed ")[1].split()[0]
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: DataLoader worker (pid") and pid in err[0], err
    assert f"--resume {killed}" in err[0] and "--num_workers" in err[0]
    assert load(killed / "ckpt.pt")["step"] == at
    assert not any(int(row[0]) == at for row in _rows(killed / "val.csv"))
    assert train().main(["--resume", str(killed)]) == 0
    assert _losses(killed) == _losses(whole_run) and len(_losses(killed)) == 4


def _rows(path):
    """The data rows of a CSV log ([] when missing)."""
    return [line.split(",") for line in path.read_text().splitlines()[1:]] if path.exists() else []


def _losses(run_dir):
    """(step, loss) of each log.csv row, as written (full precision)."""
    return [(row[0], row[2]) for row in _rows(run_dir / "log.csv")]


# ------------------------------------------------------------------ 8. a validation batch that fails
def test_an_error_in_a_validation_batch_saves_the_training_first(tiny_world, tmp_path, monkeypatch, capsys):
    """The validation of step 4 meets a corrupt val image (a DataError from inside the validation):
    exit 2 with the error's one line, as for any bad data; the training up to step 4 is in ckpt.pt
    (saved without that validation: val.csv and best.pt stay at step 2), so --resume loses nothing."""
    t = train()
    real = t.validate

    def corrupt_at_step_4(*args, **kwargs):
        if len(_rows(tmp_path / "r" / "log.csv")) == 4:
            data = importlib.import_module("01_data")
            raise data.DataError(f"corrupt image {tmp_path / 'x.jpg'}: truncated")
        return real(*args, **kwargs)

    monkeypatch.setattr(t, "validate", corrupt_at_step_4)
    capsys.readouterr()
    assert run(tiny_world, tmp_path / "r", "--max_steps", "6", "--val_every", "2") == 2
    err = error_lines(capsys)
    assert err == [f"error: corrupt image {tmp_path / 'x.jpg'}: truncated"], err
    assert load(tmp_path / "r" / "ckpt.pt")["step"] == 4 and load(tmp_path / "r" / "best.pt")["step"] == 2
    assert [int(row[0]) for row in _rows(tmp_path / "r" / "val.csv")] == [2]


# ------------------------------------------------------------------ 9. a signal during a save
def test_sigterm_during_a_save_completes_it_and_trains_no_further(tiny_world, tmp_path, monkeypatch, capsys):
    """SIGTERM arriving while torch.save writes ckpt.pt at step 2 (save_every 2): the file is finished
    (loadable, step 2), the run trains no further step and exits 143 with its one line."""
    real_save = torch.save
    sent = []

    def save_then_signal(obj, f, *args, **kwargs):
        if not sent:
            sent.append(1)
            os.kill(os.getpid(), signal.SIGTERM)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_then_signal)
    capsys.readouterr()
    assert run(tiny_world, tmp_path / "r", "--max_steps", "6", "--save_every", "2") == 128 + signal.SIGTERM
    out = capsys.readouterr().out.strip().splitlines()
    run_dir = tmp_path / "r"
    assert out[-1] == f"SIGTERM: saved {run_dir / 'ckpt.pt'} at step 2; continue with --resume {run_dir}"
    assert load(tmp_path / "r" / "ckpt.pt")["step"] == 2
    assert [int(row[0]) for row in _rows(tmp_path / "r" / "log.csv")] == [1, 2]


# ------------------------------------------------------------------ 10. a full disk while logging
def test_a_full_disk_at_log_csv_or_the_curves_is_one_line_exit_4_and_resume_continues(tiny_world, tmp_path,
                                                                                     monkeypatch, capsys):
    """No space left when the row of step 3 goes into log.csv (after the checkpoint of step 2; half a
    row reaches the file), or when curves.png is written at the end: exit 4, one line naming the
    file; the checkpoints written before are intact. Resumed with space again, the run ends with the
    rows 1..4 once each (the torn row dropped)."""
    folder_module = folder()
    real_append = folder_module.append_csv

    def full_at_step_3(path, columns, row):
        if path.name == "log.csv" and row["step"] == 3:
            with open(path, "a") as f:
                f.write("3,0,0.18")
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_append(path, columns, row)

    monkeypatch.setattr(folder_module, "append_csv", full_at_step_3)
    capsys.readouterr()
    assert run(tiny_world, tmp_path / "r", "--max_steps", "4", "--save_every", "2") == 4
    err = error_lines(capsys)
    assert len(err) == 1 and f"{tmp_path / 'r' / 'log.csv'}" in err[0] and "No space left" in err[0], err
    assert load(tmp_path / "r" / "ckpt.pt")["step"] == 2
    monkeypatch.setattr(folder_module, "append_csv", real_append)
    assert train().main(["--resume", str(tmp_path / "r")]) == 0
    assert [int(row[0]) for row in _rows(tmp_path / "r" / "log.csv")] == [1, 2, 3, 4]

    import matplotlib.figure

    def full_disk(self, fname, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(fname))

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full_disk)
    capsys.readouterr()
    assert run(tiny_world, tmp_path / "c", "--max_steps", "2") == 4
    err = error_lines(capsys)
    assert len(err) == 1 and f"{tmp_path / 'c' / 'curves.png'}" in err[0] and "No space left" in err[0], err
    assert load(tmp_path / "c" / "ckpt.pt")["step"] == 2 and load(tmp_path / "c" / "best.pt")["step"] == 2


def test_truncating_a_log_on_a_full_disk_keeps_it(tmp_path, monkeypatch):
    """truncate_csv (at --resume) that cannot write its new log leaves the old one byte for byte (it
    used to be emptied first); with space it keeps the rows up to the step, minus a torn row."""
    log = tmp_path / "log.csv"
    log.write_text("step,loss\n1,0.5\n2,0.4\n3,0.3\n4")
    before = log.read_bytes()
    real_open = open

    def full(file, mode="r", *args, **kwargs):   # the file is created, nothing fits in it
        if "w" in mode:
            real_open(file, mode).close()
            raise OSError(errno.ENOSPC, "No space left on device", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", full)
    with pytest.raises(OSError):
        folder().truncate_csv(log, 3)
    monkeypatch.setattr("builtins.open", real_open)
    assert log.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["log.csv"]
    folder().truncate_csv(log, 2)
    assert log.read_text().splitlines() == ["step,loss", "1,0.5", "2,0.4"]
    log.write_text("step,loss\n1,0.5\n2")
    folder().truncate_csv(log, 5)
    assert log.read_text().splitlines() == ["step,loss", "1,0.5"]


# ------------------------------------------------------------------ 11. a --split_dir without the lists
def test_a_split_dir_without_the_lists_names_the_path_before_the_download(tmp_path, monkeypatch, capsys):
    """--split_dir EMPTY offline: one line that names the exact list path looked for and the folder
    given, then the failed download; the advice is to put the list there (not to pass --split_dir,
    which was passed). Without --split_dir, the cache path and the advice to pass it."""
    split_lists = importlib.import_module("helpers.kitti_files")
    monkeypatch.setattr(split_lists, "SPLIT_URL_BASE", "http://127.0.0.1:9/splits")   # nothing listens: offline
    monkeypatch.setenv("SQLDEPTH_SPLIT_DIR", str(tmp_path / "cache"))
    (tmp_path / "empty").mkdir()
    capsys.readouterr()
    for given in (True, False):
        flags = ["--split_dir", str(tmp_path / "empty")] if given else []
        code = train().main(["--data", "kitti", "--data_path", str(tmp_path / "empty"), "--run_dir",
                             str(tmp_path / "r"), *flags])
        assert code == 2
        err = error_lines(capsys)
        folder_given = tmp_path / ("empty" if given else "cache")
        looked_for = folder_given.resolve() / "eigen_zhou" / "train_files.txt"
        assert len(err) == 1 and err[0].startswith(f"error: split file not found: {looked_for} ("), err
        assert "http://127.0.0.1:9/splits/eigen_zhou/train_files.txt" in err[0]
        assert err[0].endswith("put eigen_zhou/train_files.txt there" if given else "pass --split_dir FOLDER")
