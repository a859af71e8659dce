"""Tests of 06_train.py: the training step, the loop's safety nets, resume, DDP, the CLI.

Oracles: two SGD steps computed by hand with torch.autograd.grad (train_step), an uninterrupted
run (resume), the previous checkpoint file (atomic save, NaN guard), identical parameter
checksums across two gloo processes (DDP). Everything runs on the session's tiny synthetic
world with a tiny model (R18, nf 32, E 16, 64x208, batch 2).
"""
import copy
import csv
import functools
import importlib
import math
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import kitti_files  # the standard split lists (helpers/kitti_files.py)

from exercise_checks import assert_close_explained, value_message

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--num_layers", "18", "--num_features", "32", "--model_dim", "16", "--patch_size", "8",
        "--num_queries", "8", "--num_bins", "16", "--dim_feedforward", "32", "--height", "64",
        "--width", "208", "--batch_size", "2", "--num_workers", "0", "--log_every", "1", "--no_eval",
        "--no-use_stereo"]


def train():
    return importlib.import_module("06_train")


def geo():
    return importlib.import_module("05_posenet_loss")


def runtime():
    return importlib.import_module("helpers.distributed_training")


def folder():
    return importlib.import_module("helpers.run_record")


def plumbing():
    return importlib.import_module("helpers.training_data")


def cli_module():
    return importlib.import_module("helpers.run_record")


def run(world, run_dir, *extra):
    """06_train.main in-process on the tiny world; returns its exit code."""
    return train().main(TINY + ["--data_path", str(world), "--run_dir", str(run_dir), *extra])


def losses(run_dir):
    with open(Path(run_dir) / "log.csv", newline="") as f:
        return [(int(r["step"]), r["loss"], r["photometric"], r["smoothness"]) for r in csv.DictReader(f)]


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: the machine's 2 cores are shared, and OpenMP threads that outnumber the
    free cores spin and slow a step down by 10x or more."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def two_step_run(tiny_world, tmp_path_factory):
    """A finished 2-step run of the tiny model (shared by the smoke and bad-resume tests)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    run_dir = tmp_path_factory.mktemp("two_step") / "run"
    assert run(tiny_world, run_dir, "--max_steps", "2") == 0
    torch.set_num_threads(before)
    return run_dir


# ------------------------------------------------------------------ Exercise 6.1
def test_train_step_equals_two_sgd_steps_by_hand(tiny_world):
    """Exercise 6.1: two train_step calls with SGD equal p <- p - lr * grad(loss)(p) applied twice,
    the gradients taken with torch.autograd.grad on copies of the networks (fails without
    zero_grad: the second step would use g1 + g2; without optimizer.step: nothing moves), and the
    returned terms are the detached 0-d tensors of the loss dict of each step (STEP_TERMS: the loss
    terms and the health numbers)."""
    t, g, data = train(), geo(), importlib.import_module("01_data")
    cfg = cli_module().apply_overrides(t.preset_config("synthetic-cpu"), dict(
        num_layers=18, num_features=32, model_dim=16, patch_size=8, num_queries=8, num_bins=16,
        dim_feedforward=32, use_stereo=False))
    lines = data.read_split(kitti_files.get_split_file("synthetic", "train", data_path=str(tiny_world)))[:2]
    dataset = data.KittiRaw(str(tiny_world), lines, 64, 208, frame_ids=(0, -1, 1), is_train=False)
    inputs = data.images_to_float(data.collate([dataset[0], dataset[1]]))
    # a distinct "augmented" copy: a step that feeds the networks inputs["color"] must fail
    inputs["color_aug"] = {k: 0.8 * v + 0.1 for k, v in inputs["color"].items()}
    torch.manual_seed(0)
    depth_net, pose_net = t.build_networks(cfg, torch.device("cpu"))
    loss_cfg = t.loss_config(cfg)
    ssim = g.make_ssim(loss_cfg)
    ref = [copy.deepcopy(depth_net), copy.deepcopy(pose_net)]
    params = [p for n in (depth_net, pose_net) for p in n.parameters()]
    ref_params = [p for n in ref for p in n.parameters()]
    lr = 1e-2
    expected_terms = []
    for step in range(2):                                  # the oracle: plain gradient descent
        torch.manual_seed(10 + step)                       # dropout + auto-mask noise
        depth = ref[0](inputs["color_aug"][0])
        out = g.self_supervised_loss(inputs, depth, g.predict_poses(ref[1], inputs, loss_cfg, depth=depth),
                                     loss_cfg, ssim)
        grads = torch.autograd.grad(out["loss"], ref_params, allow_unused=True)
        with torch.no_grad():
            for p, grad in zip(ref_params, grads):
                if grad is not None:
                    p -= lr * grad
        expected_terms.append({k: float(out[k].detach()) for k in t.STEP_TERMS})
    optimizer = torch.optim.SGD(params, lr=lr)
    before = [p.detach().clone() for p in params]
    what = "Exercise 6.1 train_step"
    for step in range(2):
        torch.manual_seed(10 + step)
        terms = t.train_step(depth_net, pose_net, inputs, optimizer, loss_cfg, ssim)
        assert set(terms) == set(t.STEP_TERMS), (
            f"{what}: returned the keys {sorted(terms)}, expected {sorted(t.STEP_TERMS)}. Check: return "
            f"{{k: out[k].detach() for k in STEP_TERMS}} of the loss dict?")
        assert all(torch.is_tensor(v) and v.dim() == 0 and not v.requires_grad for v in terms.values()), (
            f"{what}: returned {[(k, type(v).__name__) for k, v in terms.items()]}. Check: 0-d tensors, "
            f"detached (.detach(), not float() or .item(): no host read in the step)?")
        for k, v in expected_terms[step].items():   # health numbers: statistics of outputs, looser
            rel = 1e-5 if k in t.LOSS_TERMS else 1e-3
            assert float(terms[k]) == pytest.approx(v, rel=rel, abs=1e-7, nan_ok=True), value_message(
                float(terms[k]), v, f"{what}: {k!r} at step {step + 1}", "the depth of the augmented frame "
                "inputs['color_aug'][0], not inputs['color']? predict_poses(..., depth=depth) and "
                "self_supervised_loss on that depth? zero_grad, backward, optimizer.step once per call, in that "
                "order?")
    moved = max(float((p.detach() - b).abs().max()) for p, b in zip(params, before))
    assert moved > 1e-4, (f"{what} did not change the parameters (largest change {moved:.3g}). Check: "
                          f"optimizer.step() after the backward?")
    named = [(f"{net}.{name}", p) for net, module in (("depth", depth_net), ("pose", pose_net))
             for name, p in module.named_parameters()]
    for (name, p), r in zip(named, ref_params):
        assert_close_explained(p, r, f"{what}: parameter {name} after two steps", "optimizer.zero_grad() before "
                               "the backward (without it the second step applies g1 + g2)? one backward of "
                               "out['loss'] and one optimizer.step() per call?", rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------ the GPU path, checked on CPU
class HostReads:
    """Counts the operations that make the host wait for a GPU result (a tensor read as a Python
    number, a data-dependent shape, a tensor built from Python data and copied to the device),
    seen through a dispatch mode: they dispatch the same on CPU, so a CPU test catches them."""
    SYNCING = ("aten._local_scalar_dense", "aten.item", "aten.is_nonzero", "aten.equal", "aten.nonzero",
               "aten.masked_select", "aten.lift_fresh")

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        outer = self
        self.seen = []

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                # x[i] = 1 lifts a 0-d Python number: on a GPU that is a fill kernel, not a copy
                lifted_number = "lift_fresh" in str(func) and args[0].dim() == 0
                if str(func).startswith(outer.SYNCING) and not lifted_number:
                    outer.seen.append(str(func))
                return func(*args, **(kwargs or {}))

        self.mode = Mode()

    def __enter__(self):
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)


def tiny_step_setup(tiny_world, use_stereo, channels_last=False):
    """Networks, optimizer (as the Trainer makes it), loss config and a float batch of 2 samples."""
    t, data = train(), importlib.import_module("01_data")
    cfg = cli_module().apply_overrides(t.preset_config("synthetic-cpu"), dict(
        num_layers=18, num_features=32, model_dim=16, patch_size=8, num_queries=8, num_bins=16,
        dim_feedforward=32, use_stereo=use_stereo, channels_last=channels_last))
    lines = data.read_split(kitti_files.get_split_file("synthetic", "train", data_path=str(tiny_world)))[:2]
    dataset = data.KittiRaw(str(tiny_world), lines, 64, 208, frame_ids=t.frame_ids(cfg), is_train=True)
    batch = plumbing().to_device(data.collate([dataset[0], dataset[1]]), torch.device("cpu"), channels_last)
    torch.manual_seed(0)
    depth_net, pose_net = t.build_networks(cfg, torch.device("cpu"))
    loss_cfg = t.loss_config(cfg)
    # the fused Adam of a CUDA run (the for-loop Adam reads its step counter on the host)
    optimizer = t.make_optimizer(cfg, depth_net, pose_net, functools.partial(torch.optim.Adam, fused=True))
    return cfg, depth_net, pose_net, optimizer, loss_cfg, batch


@pytest.mark.parametrize("use_stereo", [True, False])
def test_train_step_never_waits_for_the_device(tiny_world, use_stereo):
    """One train_step (mono with pose scaling, and MS) makes no host read at all: no .item()/float(),
    no torch.tensor(python data), no data-dependent shapes between the forward pass and the optimizer
    step. The loop then reads the loss terms and health numbers once (step_outcome). Adding a sync
    fails this."""
    t = train()
    cfg, depth_net, pose_net, optimizer, loss_cfg, batch = tiny_step_setup(tiny_world, use_stereo)
    ssim = geo().make_ssim(loss_cfg)
    t.train_step(depth_net, pose_net, batch, optimizer, loss_cfg, ssim)      # warm-up: optimizer state
    with HostReads() as reads:
        terms = t.train_step(depth_net, pose_net, batch, optimizer, loss_cfg, ssim)
    assert reads.seen == []
    values, nonfinite, signum = runtime().step_outcome(terms, t.LOSS_TERMS, 0, runtime().Dist(), need_values=False)
    assert values == {k: float(terms[k]) for k in t.STEP_TERMS} and not nonfinite and signum == 0


def test_channels_last_lays_out_both_networks(tiny_world):
    """--channels_last puts every 4-D weight of the depth AND the pose network in NHWC (a pose net
    left NCHW would be re-laid-out at every call); without it both stay contiguous NCHW. A step in
    NHWC gives the same loss as in NCHW (to float rounding)."""
    t = train()
    results = {}
    for channels_last in (False, True):
        cfg, depth_net, pose_net, optimizer, loss_cfg, batch = tiny_step_setup(tiny_world, True, channels_last)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        for net in (depth_net, pose_net):
            weights = [p for p in net.parameters() if p.dim() == 4]
            assert weights and all(p.is_contiguous(memory_format=fmt) for p in weights)
        depth_net.eval(), pose_net.eval()                                       # no dropout
        torch.manual_seed(1)
        results[channels_last] = t.train_step(depth_net, pose_net, batch, optimizer, loss_cfg,
                                              geo().make_ssim(loss_cfg))["loss"]
    torch.testing.assert_close(results[True], results[False], rtol=1e-4, atol=1e-6)


def test_fused_adam_matches_plain_adam():
    """make_optimizer with the speed layer's Adam (fused where available) makes the same updates as
    torch's plain Adam, with the pose network's own learning rate, to float rounding over five steps."""
    t = train()
    cfg = t.TrainConfig(lr=1e-2, pose_lr_scale=0.1)
    torch.manual_seed(0)
    nets = [torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(5, 2)]
    copies = copy.deepcopy(nets)
    fast = t.make_optimizer(cfg, *nets, importlib.import_module("helpers.speed_layer").flat_adam)
    plain = torch.optim.Adam([{"params": copies[0].parameters(), "lr": 1e-2},
                              {"params": copies[1].parameters(), "lr": 1e-3}], foreach=False)
    x, v = torch.rand(2, 3, 6, 6), torch.rand(3, 5)
    for _ in range(5):
        for (conv, lin), opt in ((nets, fast), (copies, plain)):
            opt.zero_grad()
            (conv(x).square().mean() + lin(v).sin().sum()).backward()
            opt.step()
    for a, b in zip([p for n in nets for p in n.parameters()], [p for n in copies for p in n.parameters()]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_nonfinite_check_is_one_read_and_names_the_tensor():
    """first_nonfinite reads the device once for all tensors (not once per tensor) and names the
    first tensor holding a NaN or Inf; None when all are finite."""
    named = [(f"p{i}", torch.rand(3, 3)) for i in range(50)]
    with HostReads() as reads:
        assert importlib.import_module("helpers.model_files").first_nonfinite(named) is None
    assert len(reads.seen) == 1
    named[17][1][1, 2] = float("nan")
    named[30][1][0, 0] = float("inf")
    assert importlib.import_module("helpers.model_files").first_nonfinite(named) == "p17"


def test_missing_cuda_device_or_too_many_processes_give_one_line(tmp_path, monkeypatch, capsys):
    """--device cuda:N beyond the GPU count, torchrun with more processes than GPUs, --device cuda
    without CUDA, and an unknown device: one `error:` line naming the value, exit 2 (checked with
    a pretend 2-GPU machine; nothing reaches CUDA)."""
    t = train()
    args = ["--run_dir", str(tmp_path / "r"), "--no_eval"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    capsys.readouterr()
    assert t.main(["--device", "cuda", *args]) == 2
    assert "no CUDA device" in _one_error_line(capsys)
    assert t.main(["--device", "tpu", *args]) == 2
    assert "'tpu'" in _one_error_line(capsys)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert t.main(["--device", "cuda:5", *args]) == 2
    assert "cuda:5" in (line := _one_error_line(capsys)) and "2 CUDA device(s)" in line
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert t.main(["--device", "cuda", *args]) == 2
    assert "LOCAL_RANK=2" in (line := _one_error_line(capsys)) and "--nproc_per_node 2" in line


def test_profile_splits_a_step_into_parts_that_add_up(tiny_world, tmp_path, capsys):
    """--profile 2 writes nothing, prints the throughput and one row per part (data wait, depth net,
    pose net, warping + loss, optimizer) whose totals add up to the step time, with both networks
    charged forward and backward time (the gradient hooks fired)."""
    capsys.readouterr()
    assert run(tiny_world, tmp_path / "p", "--profile", "2") == 0
    out = capsys.readouterr().out
    assert not (tmp_path / "p").exists()
    step_ms = float(out.split(" ms/step)")[0].rsplit("(", 1)[1])
    rows = {line[2:20].strip(): line[20:].split() for line in out.splitlines()
            if line.startswith("  ") and line[2:20].strip() in ("data wait", "depth net", "pose net",
                                                                "warping + loss", "optimizer")}
    assert len(rows) == 5, out
    assert sum(float(cells[-2]) for cells in rows.values()) == pytest.approx(step_ms, rel=0.01, abs=0.2)
    for net in ("depth net", "pose net"):
        forward, backward = float(rows[net][0]), float(rows[net][1])
        assert forward > 0 and backward > 0, (net, rows[net])



# ------------------------------------------------------------------ threads (helpers/cpu_threads.py)
def threads_module():
    return importlib.import_module("helpers.cpu_threads")


def test_thread_choice_leaves_the_cores_of_other_work_free():
    """choose_threads (pure): the cores other work keeps busy (a core counts from half of it) are left
    free, shared by the run's processes, never above the ceiling (PyTorch's default), never below 1;
    unknown load (None) keeps the ceiling, what a run did before; nonsense counts are one ValueError."""
    choose = threads_module().choose_threads
    assert choose(2, 0.0, 2) == 2 and choose(2, 0.3, 2) == 2        # idle (a browser): unchanged
    assert choose(2, 1.0, 2) == 1 and choose(2, 0.5, 2) == 1        # one core taken, or half of it
    assert choose(2, 2.0, 2) == 1 and choose(2, 5.0, 2) == 1        # all taken: still one thread
    assert choose(16, 1.0, 8) == 8 and choose(16, 3.2, 16) == 13    # the ceiling; round 3.2 -> 3
    assert choose(16, 0.0, 16, processes=4) == 4 and choose(2, 1.0, 2, processes=2) == 1
    assert choose(2, None, 2) == 2 and choose(2, -0.1, 2) == 2      # unknown; counters that ran back
    with pytest.raises(ValueError, match="cores 0"):
        choose(0, 0.0, 2)


def test_thread_busy_cores_read_only_the_cores_we_may_use(monkeypatch):
    """cpu_jiffies sums user..steal of the listed cores from /proc/stat's text, idle + iowait not busy
    (nice neither, when niced work yields to us), ignoring the all-cores line and other counters;
    busy_cores (minus this process's own CPU time) lies between 0 and our cores. Without affinity masks
    and /proc/stat (macOS): the load average less our own threads; with neither: None (unknown)."""
    text = ("cpu  100 0 0 300 0 0 0 0 0 0\ncpu0 10 1 2 80 5 0 1 1 0 0\ncpu1 50 0 0 50 0 0 0 0 0 0\n"
            "cpu2 90 0 0 10 0 0 0 0 0 0\nintr 5 3\nctxt 99\n")
    assert threads_module().cpu_jiffies(text, {0, 2}) == (10 + 1 + 2 + 1 + 1 + 90, 100 + 100)
    assert threads_module().cpu_jiffies(text, {0, 2}, nice_is_busy=False) == (10 + 2 + 1 + 1 + 90, 100 + 100)
    assert 0.0 <= threads_module().busy_cores(0.05) <= threads_module().usable_cores()
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (3.0, 2.0, 1.0))
    assert threads_module().busy_cores(ours=2) == 1.0 and threads_module().busy_cores(ours=4) == 0.0
    monkeypatch.delattr(os, "getloadavg")
    assert threads_module().busy_cores() is None


def test_thread_busy_watch_warns_once_when_the_rate_halves():
    """BusyWatch: steady rates and a single dip say nothing; two intervals in a row under half the
    median of the first four say (earlier, now) once and never again; intervals under 2 s are skipped."""
    watch = threads_module().BusyWatch()
    assert all(watch.update(rate, 10.0) is None for rate in [14.0, 20.0, 21.0, 19.0] * 5)   # a slow start
    assert watch.update(9.0, 10.0) is None and watch.update(19.0, 10.0) is None        # a dip alone
    assert watch.update(1.0, 0.5) is None and watch.update(1.0, 0.5) is None           # too short to judge
    assert watch.update(9.0, 10.0) is None
    assert watch.update(7.0, 10.0) == (19.5, 8.0)
    assert all(watch.update(rate, 10.0) is None for rate in (6.0, 5.0, 20.0, 3.0, 3.0))


def test_thread_record_names_every_count_and_its_first_step():
    """recorded: a new run's count; a change (mid-run, or a resume with another count) appended with its
    step; the same count again changes nothing; an old checkpoint without the record says so."""
    recorded = threads_module().recorded
    assert recorded("", 2, 0) == "2" and recorded("2", 2, 40) == "2"
    assert recorded("2", 1, 350) == "2; 1 from step 350"
    assert recorded("2; 1 from step 350", 1, 400) == "2; 1 from step 350"
    assert recorded("2; 1 from step 350", 2, 400) == "2; 1 from step 350; 2 from step 400"
    use = threads_module().use_threads
    assert use(1, say=False, resumed={"config": {"threads": 1}, "step": 4}).used == "1"
    assert use(1, say=False, resumed={"config": {"threads": 0}, "step": 4}).used == "unrecorded; 1 from step 4"


def slow_down(run, rates=(20.0, 20.0, 20.0, 20.0, 6.0, 6.2, 6.0, 5.0)):
    """RunThreads.update over log intervals of 25 steps and 10 s each: its lines (None: nothing said)."""
    return [run.update(25 * (i + 1), rate, 10.0) for i, rate in enumerate(rates)]


def test_thread_auto_run_lowers_its_count_once_and_records_it(monkeypatch):
    """Auto: the free cores at the start (under PyTorch's default, the ceiling); a run that then slows to
    under half its rate for two intervals measures the cores again and drops to the free count at that
    step, once: torch's threads, the record and the one line agree. A run at one thread only says so."""
    ct = threads_module()
    monkeypatch.setattr(ct, "usable_cores", lambda: 2)
    monkeypatch.setattr(ct, "busy_cores", lambda **_: 1.0)
    torch.set_num_threads(2)                                  # PyTorch's default on 2 cores
    run = ct.use_threads(0, say=False, run_dir="runs/r")      # a start with one core busy
    assert (run.threads, run.used, torch.get_num_threads()) == (1, "1", 1)
    assert run.start_line() == "threads: 1 (auto: 1.0 of 2 cores busy with other work)"
    lines = slow_down(run)
    assert [line for line in lines if line] == [lines[5]] and "already uses one thread" in lines[5]
    monkeypatch.setattr(ct, "busy_cores", lambda **_: 0.1)
    torch.set_num_threads(2)
    run = ct.use_threads(0, say=False, run_dir="runs/r")      # a start on an idle machine: unchanged
    assert (run.threads, run.used, torch.get_num_threads()) == (2, "2", 2)
    monkeypatch.setattr(ct, "busy_cores", lambda **_: 1.0)   # ... that gets busy later
    lines = slow_down(run)
    assert [line for line in lines if line] == [lines[5]], lines
    assert "img/s fell from 20.0 to 6.1" in lines[5] and "threads 2 -> 1 from step 150 on" in lines[5]
    assert (run.threads, run.used, torch.get_num_threads()) == (1, "2; 1 from step 150", 1)


def test_thread_explicit_count_is_exact_and_never_changed(monkeypatch):
    """--threads N sets exactly N without measuring anything, and a run that slows down keeps N: one
    line of advice naming its folder, and the record unchanged."""
    ct = threads_module()
    monkeypatch.setattr(ct, "busy_cores", lambda **_: pytest.fail("an explicit count measured the cores"))
    run = ct.use_threads(2, say=False, run_dir="runs/r")
    assert (run.threads, run.used, torch.get_num_threads()) == (2, "2", 2)
    assert run.start_line() == "threads: 2 (--threads 2)"
    lines = slow_down(run)
    assert [line for line in lines if line] == [lines[5]] and "--resume runs/r --threads 1" in lines[5]
    assert (run.threads, run.used, torch.get_num_threads()) == (2, "2", 2)



def test_thread_change_is_replayed_exactly_from_its_record(tiny_world, tmp_path, monkeypatch, capsys):
    """An auto run whose watch fires at step 2 (a core got busy) runs steps 3-4 on one thread and records
    "2; 1 from step 2"; replaying that record (--threads 2 --max_steps 2, then --resume --threads 1)
    gives the same loss sequence in log.csv and the same final weights."""
    ct = threads_module()

    class FiresAtTheSecondInterval(ct.BusyWatch):
        def update(self, rate, seconds):
            self.calls = getattr(self, "calls", 0) + 1
            return (20.0, 5.0) if self.calls == 2 else None

    measured = iter([0.0, 1.0])                               # idle at the start, a core busy later
    monkeypatch.setattr(ct, "busy_cores", lambda **_: next(measured))
    monkeypatch.setattr(ct, "usable_cores", lambda: 2)
    monkeypatch.setattr(ct, "BusyWatch", FiresAtTheSecondInterval)
    torch.set_num_threads(2)                                  # PyTorch's default on 2 cores
    auto, replay = tmp_path / "auto", tmp_path / "replay"
    capsys.readouterr()
    assert run(tiny_world, auto, "--max_steps", "4", "--batch_size", "4") == 0
    assert "threads 2 -> 1 from step 2 on" in capsys.readouterr().out
    assert load(auto / "ckpt.pt")["config"]["threads_used"] == "2; 1 from step 2"
    assert run(tiny_world, replay, "--max_steps", "2", "--batch_size", "4", "--threads", "2") == 0
    assert train().main(["--resume", str(replay), "--max_steps", "4", "--threads", "1"]) == 0
    assert losses(replay) == losses(auto) and len(losses(auto)) == 4
    a, b = load(auto / "ckpt.pt"), load(replay / "ckpt.pt")
    assert b["config"]["threads_used"] == "2; 1 from step 2"
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key

def test_thread_start_line_and_checkpoint_name_the_count(tiny_world, tmp_path, monkeypatch, capsys):
    """06_train.py prints the threads it runs with before the train line and stores them as threads_used
    beside the config (threads keeps 0 = auto): --threads 1 exactly (nothing measured), auto from the
    free cores; a negative count is one error line and exit 2."""
    ct = threads_module()
    monkeypatch.setattr(ct, "busy_cores", lambda **_: pytest.fail("an explicit count measured the cores"))
    torch.set_num_threads(2)
    capsys.readouterr()
    assert run(tiny_world, tmp_path / "fixed", "--max_steps", "1", "--threads", "1") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "threads: 1 (--threads 1)" and out[1].startswith("train: "), out[:2]
    config = load(tmp_path / "fixed" / "ckpt.pt")["config"]
    assert (config["threads"], config["threads_used"], torch.get_num_threads()) == (1, "1", 1)
    monkeypatch.setattr(ct, "busy_cores", lambda **_: 1.0)
    monkeypatch.setattr(ct, "usable_cores", lambda: 2)
    torch.set_num_threads(2)                                  # PyTorch's default on 2 cores
    assert run(tiny_world, tmp_path / "auto", "--max_steps", "1") == 0
    assert capsys.readouterr().out.splitlines()[0] == "threads: 1 (auto: 1.0 of 2 cores busy with other work)"
    config = load(tmp_path / "auto" / "ckpt.pt")["config"]
    assert (config["threads"], config["threads_used"], torch.get_num_threads()) == (0, "1", 1)
    assert run(tiny_world, tmp_path / "bad", "--threads", "-1") == 2
    assert "--threads -1" in _one_error_line(capsys) and not (tmp_path / "bad").exists()


# ------------------------------------------------------------------ --amp on CPU (helpers/speed_layer.py)
NATIVE_BF16 = importlib.import_module("helpers.speed_layer").cpu_has_native_bf16()


def precision(run_dir):
    """The precision a run's checkpoint says it trained in ("bf16" or "float32")."""
    return load(Path(run_dir) / "ckpt.pt")["config"]["precision"]


def test_amp_without_native_bf16_runs_float32_with_one_note(tiny_world, tmp_path, monkeypatch, capsys):
    """On a CPU without native bf16, and with the speed layer off on any CPU, --amp prints one `note:`
    line saying why and trains in float32 (the checkpoint's precision)."""
    monkeypatch.setattr(importlib.import_module("helpers.speed_layer"), "cpu_has_native_bf16", lambda: False)
    for extra, why in ((), "no native bf16"), (("--no-speed_layer",), "speed layer is off"):
        capsys.readouterr()
        run_dir = tmp_path / f"run{len(extra)}"
        assert run(tiny_world, run_dir, "--max_steps", "1", "--amp", *extra) == 0
        notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note: --amp")]
        assert len(notes) == 1 and "float32" in notes[0] and why in notes[0]
        assert precision(run_dir) == "float32"


@pytest.mark.skipif(not NATIVE_BF16, reason="this CPU has no native bf16 (avx512_bf16 / amx_bf16)")
def test_cpu_bf16_depth_is_close_to_float32_with_the_cuda_split():
    """Under CPU bf16 autocast the encoder, decoder and transformer compute in bf16 and the cost
    volume V and the bins' logits in float32 (the split of --amp on CUDA); the depth is float32 and
    within 1% of the float32 network's, its pattern (depth minus the image's mean) within 5% of its
    spread (measured: 0.01% and 0.7%)."""
    t = train()
    cfg = cli_module().apply_overrides(t.preset_config("synthetic-cpu"), dict(
        num_layers=18, num_features=32, model_dim=16, patch_size=8, num_queries=8, num_bins=16,
        dim_feedforward=32))
    torch.manual_seed(0)
    net, _ = t.build_networks(cfg, torch.device("cpu"), load_pretrained=False)
    net.eval()
    dtypes = {}   # the first (autocast) pass's output dtypes; a hook returning a value would replace the output
    for name, module in [("encoder", net.unet.encoder.conv1), ("decoder", net.unet.decoder),
                         ("transformer", net.sql.transformer), ("logits", net.to_logits)]:
        module.register_forward_hook(lambda m, i, out, name=name: dtypes.setdefault(name, out.dtype) and None)
    image = torch.rand(2, 3, 64, 208).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            V, *_ = net.sql(net.unet(image), return_tokens=True)
            low = net(image)
        full = net(image)
    assert {k: dtypes[k] for k in ("encoder", "decoder", "transformer")} == dict.fromkeys(
        ("encoder", "decoder", "transformer"), torch.bfloat16)
    assert dtypes["logits"] == V.dtype == low.dtype == torch.float32
    assert ((low - full) / full).abs().max() < 1e-2
    pattern = lambda d: d - d.mean(dim=(2, 3), keepdim=True)
    assert (pattern(low) - pattern(full)).abs().max() < 0.05 * (full.amax() - full.amin())


@pytest.mark.skipif(not NATIVE_BF16, reason="this CPU has no native bf16 (avx512_bf16 / amx_bf16)")
def test_cpu_bf16_run_trains_and_validates(tiny_world, tmp_path, monkeypatch):
    """With --amp on a CPU with native bf16, a 2-step run trains in bf16 (the checkpoint's precision)
    and ends with finite training losses, a validation row with a finite loss, and its checkpoints."""
    run_dir = tmp_path / "run"
    assert run(tiny_world, run_dir, "--max_steps", "2", "--amp") == 0
    assert precision(run_dir) == "bf16"
    assert all(math.isfinite(float(v)) for row in losses(run_dir) for v in row[1:])
    with open(run_dir / "val.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and math.isfinite(float(rows[-1]["val_loss"]))
    assert (run_dir / "best.pt").exists() and (run_dir / "ckpt.pt").exists()


# ------------------------------------------------------------------ the loop
def test_two_step_smoke_run_writes_checkpoints_log_and_curves(two_step_run):
    """A 2-step run writes ckpt.pt and best.pt (loadable with weights_only=True, the contract's
    keys, the tiny architecture in config["model"]), a log.csv row per step, val.csv and curves."""
    ckpt = load(two_step_run / "ckpt.pt")
    assert {"model", "pose", "optimizer", "scheduler", "step", "epoch", "config", "rng"} <= set(ckpt)
    assert ckpt["step"] == 2
    cfg = ckpt["config"]
    assert (cfg["height"], cfg["width"], cfg["use_stereo"]) == (64, 208, False)
    assert cfg["model"]["num_queries"] == 8 and cfg["model"]["model_dim"] == 16
    bins = importlib.import_module("04_bins")
    net = bins.DepthNet(bins.DepthNetConfig(**cfg["model"]))
    net.load_state_dict(ckpt["model"])                      # rebuilt from the stored config
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert load(two_step_run / "best.pt")["step"] == 2
    assert [row[0] for row in losses(two_step_run)] == [1, 2]
    assert all(math.isfinite(float(row[1])) for row in losses(two_step_run))
    assert (two_step_run / "val.csv").exists() and (two_step_run / "curves.png").exists()


def test_validation_logs_the_self_query_diagnostics(two_step_run):
    """Each val.csv row carries the self-query diagnostics of 04_bins, inside their ranges: query
    cosine similarity in [-1, 1], cost-volume effective rank in [1, Q], bins holding 99% in [1, D]."""
    with open(two_step_run / "val.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows
    for row in rows:
        assert -1 <= float(row["query_similarity"]) <= 1
        assert 1 <= float(row["effective_rank"]) <= 8 + 1e-4          # Q = 8 in the tiny model
        assert 1 <= float(row["bins_99"]) <= 16                         # D = 16


def test_log_and_validation_carry_the_health_numbers(two_step_run):
    """log.csv has the loss's health numbers for every logged step (finite, in their ranges); val.csv has
    them averaged over the split, the ratio of predicted to true motion (the synthetic world has
    poses and dense ground truth: finite and positive) and the collapse flag (0 or 1)."""
    health_module = importlib.import_module("helpers.training_health")
    with open(two_step_run / "log.csv", newline="") as f:
        log = list(csv.DictReader(f))
    with open(two_step_run / "val.csv", newline="") as f:
        val = list(csv.DictReader(f))
    for row in log + val:
        assert float(row["depth_spread"]) >= 0 and float(row["motion"]) >= 0
        assert 0 <= float(row["automask_kept"]) <= 1
        assert 0 < float(row["warped_photometric"]) < 1 and 0 < float(row["identity_photometric"]) < 1
    for row in val:
        assert 0 < float(row["motion_ratio"]) < 100 and float(row["collapsed"]) in (0.0, 1.0)
        health = {k: float(row[k]) for k in health_module.HEALTH_TERMS}
        assert float(row["collapsed"]) == float(bool(health_module.collapse_signs(health, int(row["step"]))))


def test_collapse_detector_fires_on_a_broken_run_and_not_on_a_healthy_one(tiny_world, tmp_path, capsys):
    """A monocular run whose pose network cannot learn (--pose_lr_scale 0: it keeps predicting its tiny
    initial motion) gets one `warning:` line naming the motion and what to try, and its validation
    row says collapsed; the same run with a learning pose network gets neither."""
    for name, extra, broken in (("broken", ["--pose_lr_scale", "0"], True), ("healthy", [], False)):
        capsys.readouterr()
        assert run(tiny_world, tmp_path / name, "--epochs", "10", "--max_steps", "60", "--log_every", "5", *extra) == 0
        warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
        with open(tmp_path / name / "val.csv", newline="") as f:
            collapsed = float(list(csv.DictReader(f))[-1]["collapsed"])
        if broken:
            assert len(warnings) == 1 and "motion" in warnings[0] and "try" in warnings[0], warnings
            assert collapsed == 1.0
        else:
            assert warnings == [] and collapsed == 0.0


def test_checkpoint_with_removed_knobs_resumes_at_their_old_default_only(tiny_world, tmp_path, capsys):
    """A checkpoint of older code that stored knobs since removed (warmup_steps, smoothness_on, the
    model's bins_space) resumes when they hold their old defaults; another value is one error line
    naming the knob and the commit that had it."""
    run_dir = tmp_path / "run"
    assert run(tiny_world, run_dir, "--max_steps", "1") == 0
    for warmup, code in ((0, 0), (300, 2)):
        ckpt = load(run_dir / "ckpt.pt")
        ckpt["config"].update(warmup_steps=warmup, smoothness_on="depth")
        ckpt["config"]["model"]["bins_space"] = "depth"
        torch.save(ckpt, run_dir / "ckpt.pt")
        capsys.readouterr()
        assert train().main(["--resume", str(run_dir), "--max_steps", str(2 + warmup)]) == code
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and "warmup_steps=300" in errors[0] and "f51d69b" in errors[0]


def test_query_lr_scale_gives_the_query_path_its_own_learning_rate(tiny_world):
    """--query_lr_scale 0.1: a third Adam group holds exactly the self-query layer's query path at
    lr x 0.1; the rest of the depth network and the pose network keep theirs. At 1 (the default)
    there are the two groups of before."""
    t = train()
    for scale, groups in ((0.1, 3), (1.0, 2)):
        cfg, depth_net, pose_net, _, _, _ = tiny_step_setup(tiny_world, False)
        cfg = cli_module().apply_overrides(cfg, {"query_lr_scale": scale, "lr": 2e-3, "pose_lr_scale": 0.5})
        opt = t.make_optimizer(cfg, depth_net, pose_net)
        assert len(opt.param_groups) == groups
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([2e-3, 1e-3, 2e-4][:groups])
        everything = {p.data_ptr() for n in (depth_net, pose_net) for p in n.parameters()}
        assert sorted(p.data_ptr() for g in opt.param_groups for p in g["params"]) == sorted(everything)
        if groups == 3:   # (fused Adam may hold 1-D views of the parameters: compare their memory)
            assert ({p.data_ptr() for p in opt.param_groups[2]["params"]}
                    == {p.data_ptr() for p in depth_net.query_parameters()})


def test_val_every_validates_between_epoch_ends_without_changing_training(tiny_world, tmp_path):
    """--val_every N adds a val.csv row (with the diagnostics) every N steps; the training run itself
    (its logged losses) is the same as without the extra validations."""
    assert run(tiny_world, tmp_path / "plain", "--max_steps", "4", "--log_every", "1") == 0
    assert run(tiny_world, tmp_path / "often", "--max_steps", "4", "--log_every", "1",
               "--val_every", "2") == 0
    with open(tmp_path / "often" / "val.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [2, 4]
    assert all(math.isfinite(float(r["query_similarity"])) for r in rows)
    assert losses(tmp_path / "often") == losses(tmp_path / "plain")


def test_stereo_run_adds_the_stereo_source(tiny_world, tmp_path, monkeypatch):
    """--use_stereo ("MS") trains with frame ids 0 -1 1 s: the loss sees the poses of -1, 1 and
    the fixed stereo transform, and the checkpoint records use_stereo for 07_eval."""
    g, seen = geo(), []
    real_loss = g.self_supervised_loss

    def spy(inputs, depth, poses, cfg, ssim):
        seen.append(sorted(map(str, poses)))
        return real_loss(inputs, depth, poses, cfg, ssim)

    monkeypatch.setattr(g, "self_supervised_loss", spy)
    assert run(tiny_world, tmp_path / "ms", "--max_steps", "1", "--use_stereo", "--val_batches", "1") == 0
    assert seen[0] == ["-1", "1", "s"]
    assert load(tmp_path / "ms" / "ckpt.pt")["config"]["use_stereo"] is True


def test_resume_reproduces_the_uninterrupted_run(tiny_world, tmp_path):
    """Run 4 steps at once vs 2 steps, then --resume to 4. 12 train samples / batch 4 = 3 steps per
    epoch, so the resume starts mid-epoch and crosses an epoch end (LR step, validation); the runs
    load with 0, 1 and 2 worker processes (augmentation comes from (seed, epoch, index), not from
    the worker). The loss sequences in log.csv and the final weights are identical."""
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert run(tiny_world, whole, "--max_steps", "4", "--num_workers", "0", "--batch_size", "4") == 0
    assert run(tiny_world, split, "--max_steps", "2", "--num_workers", "1", "--batch_size", "4") == 0
    assert train().main(["--resume", str(split), "--max_steps", "4", "--num_workers", "2"]) == 0
    assert losses(split) == losses(whole) and len(losses(whole)) == 4
    a, b = load(whole / "ckpt.pt"), load(split / "ckpt.pt")
    assert a["step"] == b["step"] == 4 and a["epoch"] == b["epoch"] == 1
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def test_sigint_saves_and_exits_130_then_resume_finishes(tiny_world, tmp_path, monkeypatch):
    """SIGINT during step 2 lets the step finish, saves ckpt.pt at step 2 and returns 130; resuming
    completes the run and logs each step once."""
    t = train()
    real_step, calls = t.train_step, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(t, "train_step", interrupted)
    assert run(tiny_world, tmp_path / "r", "--max_steps", "3") == 130
    assert load(tmp_path / "r" / "ckpt.pt")["step"] == 2
    monkeypatch.setattr(t, "train_step", real_step)
    assert t.main(["--resume", str(tmp_path / "r")]) == 0
    assert [row[0] for row in losses(tmp_path / "r")] == [1, 2, 3]


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_world, tmp_path, monkeypatch, capsys):
    """A NaN photometric term at step 3 stops the run (exit 3) with one line naming the step and
    the term; ckpt.pt still holds the finite step-2 model (it is never overwritten by a NaN one)."""
    g, calls = geo(), []
    real_loss = g.self_supervised_loss

    def poisoned(*args, **kwargs):
        out = real_loss(*args, **kwargs)
        if torch.is_grad_enabled():                         # training calls only, not validation
            calls.append(1)
            if len(calls) == 3:
                out["photometric"] = out["photometric"] * float("nan")
                out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(g, "self_supervised_loss", poisoned)
    capsys.readouterr()
    assert run(tiny_world, tmp_path / "r", "--max_steps", "5", "--save_every", "2") == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "step 3" in err[0] and "photometric=nan" in err[0], err
    ckpt = load(tmp_path / "r" / "ckpt.pt")
    assert ckpt["step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_infinite_weights_after_a_finite_loss_are_never_saved(tiny_world, tmp_path, monkeypatch, capsys):
    """A step whose loss is finite but leaves an infinite weight (e.g. an overflowing gradient) is
    caught when saving: exit 3, one line naming the step, ckpt.pt keeps the step-1 model."""
    t, calls = train(), []
    real_step = t.train_step

    def overflowing(depth_net, *args, **kwargs):
        terms = real_step(depth_net, *args, **kwargs)
        calls.append(1)
        if len(calls) == 2:                                 # the loss was finite, the weight is not
            with torch.no_grad():
                weight = next(depth_net.parameters())
                weight[(0,) * weight.dim()] = float("inf")          # any layout (NHWC by default)
        return terms

    monkeypatch.setattr(t, "train_step", overflowing)
    capsys.readouterr()
    assert run(tiny_world, tmp_path / "r", "--max_steps", "3", "--save_every", "1") == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "non-finite weights after step 2" in err[0], err
    assert load(tmp_path / "r" / "ckpt.pt")["step"] == 1


def test_checkpoint_save_is_atomic(tmp_path, monkeypatch):
    """A save that dies half-way (torch.save writes some bytes, then raises) leaves the previous
    checkpoint readable and unchanged, and no temporary file behind."""
    path = tmp_path / "ckpt.pt"
    folder().save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"PK\x03\x04 half a zip")
        raise RuntimeError("killed during save")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(folder().SaveError, match="killed during save.*the previous ckpt.pt is intact"):
        folder().save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    old = load(path)
    assert old["step"] == 1 and torch.equal(old["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_epoch_batches_are_deterministic_disjoint_shards():
    """The sampler's order depends only on (seed, epoch); two ranks get disjoint shards of one
    permutation; set_epoch(e, skip) yields exactly the tail of the epoch (resume)."""
    a = [runtime().EpochBatches(21, 2, seed=5, rank=r, world=2) for r in range(2)]
    for s in a:
        s.set_epoch(3)
    shards = [[i for batch in s for _, i in batch] for s in a]
    assert len(a[0]) == 5 and all(len(x) == 10 for x in shards)
    assert not set(shards[0]) & set(shards[1])
    again = runtime().EpochBatches(21, 2, seed=5, rank=0, world=2)
    again.set_epoch(3, skip=2)
    assert [i for batch in again for _, i in batch] == shards[0][4:]
    assert all(e == 3 for batch in again for e, _ in batch)
    other = runtime().EpochBatches(21, 2, seed=5, rank=0, world=2)
    other.set_epoch(4)
    assert [i for batch in other for _, i in batch] != shards[0]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_gloo_processes_keep_identical_parameters(tiny_world, tmp_path):
    """torchrun with 2 CPU processes (gloo): after a step on different data shards, the parameter
    checksums of both ranks agree (gradients are averaged), and only rank 0 writes the run."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           "06_train.py", *TINY, "--data_path", str(tiny_world), "--run_dir", str(tmp_path / "r"),
           "--max_steps", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    line = next(l for l in done.stdout.splitlines() if l.startswith("ddp: parameter checksums"))
    sums = eval(line.split(": ", 2)[2])                    # [(sum, sum of squares) per rank]
    assert len(sums) == 2 and sums[0] == sums[1], line
    assert "agree" in line
    assert load(tmp_path / "r" / "ckpt.pt")["step"] == 1
    assert done.stdout.count("train: ") == 1               # rank 1 prints nothing


# ------------------------------------------------------------------ CLI and bad input
def test_cli_overrides_presets_including_flat_model_flags():
    """Every TrainConfig and DepthNetConfig field has a flag; flags override the chosen preset."""
    t = train()
    options = {a.dest for a in cli_module().build_parser(t.TrainConfig, t.preset_config, t.PRESETS)._actions}
    assert {f for f in t.TrainConfig.__dataclass_fields__ if f != "model"} <= options
    assert set(cli_module().MODEL_FIELDS) <= options
    cfg, _ = t.parse_args(["--preset", "kitti-r18-640x192", "--num_queries", "64", "--no-automask",
                           "--lr", "0.001", "--pretrained", "none"])
    assert (cfg.data, cfg.batch_size, cfg.height, cfg.width, cfg.epochs) == ("kitti", 16, 192, 640, 25)
    assert cfg.model["num_layers"] == 18 and cfg.model["num_queries"] == 64
    assert cfg.model["pretrained"] is None and cfg.automask is False and cfg.lr == 0.001
    default, _ = t.parse_args([])
    assert default.preset == "synthetic-cpu" and default.data == "synthetic" and default.use_stereo
    assert t.parse_args(["--preset", "kitti-r50-640x192"])[0].use_stereo is False
    assert t.main(["--help"]) == 0


def test_high_resolution_synthetic_preset_is_the_default_at_416x128():
    """synthetic-cpu-416x128 is the default run at the world's stored size: only the input size and
    the patch size (16 on the twice larger S0: the same 4 x 13 tokens) differ; its network runs."""
    t = train()
    low, high = t.preset_config("synthetic-cpu"), t.preset_config("synthetic-cpu-416x128")
    differ = {k for k in t.TrainConfig.__dataclass_fields__ if getattr(low, k) != getattr(high, k)}
    assert differ == {"preset", "height", "width", "model"}
    assert (high.height, high.width) == (128, 416)
    assert {k for k in low.model if low.model[k] != high.model[k]} == {"patch_size"}
    bins = importlib.import_module("04_bins")
    net = bins.DepthNet(bins.DepthNetConfig(**{**high.model, "pretrained": None})).eval()
    with torch.no_grad():
        assert net(torch.rand(1, 3, 128, 416)).shape == (1, 1, 64, 208)


def _one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_bad_inputs_give_one_line_and_exit_2(tiny_world, two_step_run, tmp_path, capsys):
    """Missing data path, missing split file, a missing frame (01's DataError), train/test drive
    overlap, KITTI without --data_path, a --resume folder without checkpoint, a checkpoint of another
    architecture/preset, a run folder that already holds a run: one `error:` line, exit 2."""
    import shutil
    capsys.readouterr()
    assert run(tmp_path / "nowhere", tmp_path / "a") == 2
    assert "nowhere" in _one_error_line(capsys)
    (tmp_path / "empty").mkdir()
    assert run(tmp_path / "empty", tmp_path / "b") == 2
    assert "split" in _one_error_line(capsys)
    broken = tmp_path / "broken"
    shutil.copytree(tiny_world, broken)
    data = importlib.import_module("01_data")
    folder, frame, side = data.read_split(broken / "splits" / "synthetic" / "train_files.txt")[0]
    (broken / folder / "image_02" / "data" / f"{frame:010d}.jpg").unlink()
    assert run(broken, tmp_path / "c") == 2
    assert f"{frame:010d}.jpg" in _one_error_line(capsys)
    leaky = tmp_path / "leaky"
    shutil.copytree(tiny_world, leaky)
    splits = leaky / "splits" / "synthetic"
    (splits / "test_files.txt").write_text((splits / "train_files.txt").read_text().splitlines()[0] + "\n")
    assert run(leaky, tmp_path / "d") == 2                   # train and test share a drive
    assert "--allow_split_overlap" in _one_error_line(capsys)
    assert train().main(["--data", "kitti", "--run_dir", str(tmp_path / "e")]) == 2
    assert "--data_path" in _one_error_line(capsys)
    (tmp_path / "no_ckpt").mkdir()
    assert train().main(["--resume", str(tmp_path / "no_ckpt")]) == 2
    assert "ckpt.pt" in _one_error_line(capsys)
    assert train().main(["--resume", str(two_step_run), "--num_layers", "34"]) == 2
    assert "num_layers" in _one_error_line(capsys)
    assert train().main(["--resume", str(two_step_run), "--preset", "kitti-r50-640x192"]) == 2
    assert "preset" in _one_error_line(capsys)
    assert run(tiny_world, two_step_run) == 2             # would overwrite a run: refused
    assert "--resume" in _one_error_line(capsys)


def test_cli_bad_input_has_no_traceback(tmp_path):
    """As a program: a missing data path prints exactly one `error:` line on stderr, exit code 2."""
    done = subprocess.run([sys.executable, "06_train.py", "--data_path", str(tmp_path / "missing"),
                           "--run_dir", str(tmp_path / "r"), "--no_eval"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and done.stderr.startswith("error: ")
    assert "Traceback" not in done.stderr


# ------------------------------------------------------------------ split lists a researcher brings
def _split_dir_from_world(world, root, name, train_drives=None):
    """root/name/{train,val}_files.txt made of the tiny world's own lines (train lines of the given
    drives, default the world's train drives; the val list as it is); returns root."""
    data = importlib.import_module("01_data")
    synthetic = Path(world) / "splits" / "synthetic"
    train = data.read_split(synthetic / "train_files.txt")
    if train_drives is not None:
        everything = train + data.read_split(synthetic / "test_files.txt")
        train = [line for line in everything if line[0] in train_drives]
    data.write_split(root / name / "train_files.txt", train)
    data.write_split(root / name / "val_files.txt", data.read_split(synthetic / "val_files.txt"))
    return root


def test_a_custom_split_name_trains_and_the_checkpoint_records_its_drives(tiny_world, tmp_path):
    """--split my_split --split_dir D reads D/my_split/train_files.txt and val_files.txt (a name
    this program never heard of), trains, and the checkpoint records the list files and the drives
    of the train + val lines (what 07_eval's leakage warning needs)."""
    data = importlib.import_module("01_data")
    splits = _split_dir_from_world(tiny_world, tmp_path / "splits", "my_split")
    assert run(tiny_world, tmp_path / "r", "--split", "my_split", "--split_dir", str(splits),
               "--max_steps", "1", "--val_batches", "1") == 0
    config = load(tmp_path / "r" / "ckpt.pt")["config"]
    assert config["split_files"]["train"] == str(splits / "my_split" / "train_files.txt")
    assert config["split_files"]["val"] == str(splits / "my_split" / "val_files.txt")
    lines = data.read_split(splits / "my_split" / "train_files.txt") + data.read_split(
        splits / "my_split" / "val_files.txt")
    assert config["train_drives"] == sorted({line[0] for line in lines})


def test_a_user_list_with_a_standard_name_trains_with_one_note(tiny_world, tmp_path, capsys):
    """A user's eigen_zhou/ in --split_dir whose lists are not the standard ones (no download mark)
    is used as given: the run trains, printing one note per list that names the standard list and
    both line counts, and no error."""
    splits = _split_dir_from_world(tiny_world, tmp_path / "theirs", "eigen_zhou")
    capsys.readouterr()
    assert run(tiny_world, tmp_path / "r", "--split", "eigen_zhou", "--split_dir", str(splits),
               "--max_steps", "1", "--val_batches", "1") == 0
    out = capsys.readouterr()
    notes = [line for line in out.out.splitlines() if line.startswith("note: ")]
    assert len(notes) == 2 and out.err == "", out
    assert "standard eigen_zhou/train list (39,810 lines)" in notes[0]
    assert "standard eigen_zhou/val list (4,424 lines)" in notes[1]
    assert (tmp_path / "r" / "ckpt.pt").is_file()


def test_user_lists_sharing_test_drives_are_refused_before_any_data_is_read(tiny_world, tmp_path, capsys,
                                                                           monkeypatch):
    """A user's eigen_zhou train list (via --split_dir) or a one-off --train_files list that uses
    the test split's drive is refused with exit 2 and one line naming the shared drive and the
    number of test frames on it, before a dataset is built and before the run folder exists;
    --train_files without --val_files is one error line too; --allow_split_overlap lets the lists
    load with a warning line naming the drive."""
    data = importlib.import_module("01_data")
    synthetic = tiny_world / "splits" / "synthetic"
    test = data.read_split(synthetic / "test_files.txt")
    test_drive = test[0][0]
    built = []
    monkeypatch.setattr(plumbing().data, "KittiRaw", lambda *a, **k: built.append(1))
    splits = _split_dir_from_world(tiny_world, tmp_path / "theirs", "eigen_zhou", {test_drive})
    leaky = splits / "eigen_zhou" / "train_files.txt"
    capsys.readouterr()
    for flags in (["--split", "eigen_zhou", "--split_dir", str(splits)],
                  ["--train_files", str(leaky), "--val_files", str(synthetic / "val_files.txt")]):
        assert run(tiny_world, tmp_path / "r", *flags) == 2, flags
        err = _one_error_line(capsys)
        assert test_drive in err and f"({len(test)} of its {len(test)} test frames)" in err, err
        assert "--allow_split_overlap" in err
    assert built == [] and not (tmp_path / "r").exists()
    assert run(tiny_world, tmp_path / "r", "--train_files", str(leaky)) == 2
    assert "--val_files" in _one_error_line(capsys)
    cfg, _ = train().parse_args(["--data_path", str(tiny_world), "--split", "eigen_zhou", "--split_dir", str(splits),
                                 "--allow_split_overlap"])
    logged = []                                          # the override: the lists load, with a warning
    assert len(plumbing().load_splits(cfg, tiny_world, logged.append)[0]) == len(data.read_split(leaky))
    assert logged[-1].startswith("warning: the eigen_zhou split") and test_drive in logged[-1]


_RANK_SCRIPT = r"""
import importlib, json, os, sys
sys.path.insert(0, os.getcwd())
t = importlib.import_module("06_train")
runtime, plumbing = importlib.import_module("helpers.distributed_training"), importlib.import_module("helpers.training_data")
url, world, digests = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
plumbing.kitti_files.SPLIT_URL_BASE = url
plumbing.kitti_files.SPLIT_SHA256.update({(n, k): d for n, k, d in digests})
info, device = runtime.setup_process(t.TrainConfig(device="cpu"))
for eval_split in ("", "not_served"):
    cfg = t.TrainConfig(data="kitti", data_path=world, eval_split=eval_split, device="cpu", height=64, width=208)
    try:
        train_set, val_set, files = plumbing.make_datasets(cfg, world, info)
        print("rank", info.rank, "lines", len(train_set), len(val_set), files["train"], flush=True)
    except runtime.PeerFailed:
        print("rank", info.rank, "peer failed", flush=True)
    except plumbing.data.DataError as err:
        print("rank", info.rank, "error", err, flush=True)
runtime.dist.destroy_process_group()
"""


def test_two_ranks_fetch_the_split_lists_into_an_empty_cache(tiny_world, tmp_path):
    """Two gloo processes (torchrun's RANK/WORLD_SIZE/MASTER_* variables) start with an empty
    $SQLDEPTH_SPLIT_DIR and a local HTTP server holding eigen_zhou train/val and eigen test: rank 0
    downloads each list once (rank 1 waits and downloads nothing), then both ranks read the same
    intact lists (no temporary file left).
    When rank 0 fails (a list the server lacks), it prints the error and rank 1 stops too instead of
    waiting for it."""
    import hashlib
    import http.server
    import json
    import threading
    from functools import partial
    synthetic = tiny_world / "splits" / "synthetic"
    served = tmp_path / "served"
    lists = {("eigen_zhou", "train"): "train", ("eigen_zhou", "val"): "val", ("eigen", "test"): "test"}
    for (name, kind), source in lists.items():
        (served / name).mkdir(parents=True, exist_ok=True)
        (served / name / f"{kind}_files.txt").write_bytes((synthetic / f"{source}_files.txt").read_bytes())
    digests = [(n, k, hashlib.sha256((served / n / f"{k}_files.txt").read_bytes()).hexdigest()) for n, k in lists]
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, fmt, *args):
            requests.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    cache, port = tmp_path / "cache", _free_port()
    try:
        procs = [subprocess.Popen(
            [sys.executable, "-c", _RANK_SCRIPT, f"http://127.0.0.1:{server.server_address[1]}", str(tiny_world),
             json.dumps(digests)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1", "SQLDEPTH_SPLIT_DIR": str(cache)})
            for r in range(2)]
        outputs = [p.communicate(timeout=120) for p in procs]
    finally:
        server.shutdown()
        server.server_close()
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, out + err[-3000:]
    rank0, rank1 = (out.splitlines() for out, _ in outputs)
    train_lines = (synthetic / "train_files.txt").read_text().count("\n")
    val_lines = (synthetic / "val_files.txt").read_text().count("\n")
    expected = f"lines {train_lines} {val_lines} {cache / 'eigen_zhou' / 'train_files.txt'}"
    assert rank0[0] == f"rank 0 {expected}" and rank1[0] == f"rank 1 {expected}", (rank0, rank1)
    assert rank0[1].startswith("rank 0 error") and "not_served/test_files.txt" in rank0[1], rank0
    assert rank1[1] == "rank 1 peer failed", rank1
    assert sorted(path for path in requests) == sorted(f"/{n}/{k}_files.txt" for n, k in lists)  # once each
    for name, kind, digest in digests:
        assert hashlib.sha256((cache / name / f"{kind}_files.txt").read_bytes()).hexdigest() == digest
    assert not list(cache.rglob("*.part"))
