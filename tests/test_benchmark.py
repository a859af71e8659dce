"""Tests of helpers/benchmark.py: the depth-network and loader tables (no speed is asserted: measuring is the
benchmark's job, and the figures are in docs/benchmarks.md)."""
import importlib
import subprocess
import sys
from pathlib import Path

import torch
from helpers import kitti_files  # the standard split lists (helpers/kitti_files.py)


def bench_module():
    return importlib.import_module("helpers.benchmark")


def test_benchmark_times_forward_backward_and_the_step(monkeypatch):
    """The speed table's row: params and MACs of the preset, and three medians of timed calls; with
    fused_adam the CPU step uses the speed layer's flat_adam (as 06_train.py), without it the plain Adam."""
    b, bins = bench_module(), importlib.import_module("04_bins")
    made = []
    real_flat_adam = b.flat_adam

    def spy(*args, **kwargs):
        optimizer = real_flat_adam(*args, **kwargs)
        made.append(type(optimizer).__name__)
        return optimizer
    monkeypatch.setattr(b, "flat_adam", spy)
    small = bins.DepthNetConfig(num_layers=18, num_features=32, model_dim=16, patch_size=4, num_queries=8,
                                num_bins=16, dim_feedforward=32)
    monkeypatch.setitem(bins.PRESETS, "small", small)
    for fused in (True, False):
        params, macs, infer, fwd_bwd, step, faults = b.benchmark("small", (32, 96), torch.device("cpu"),
                                                                    batch_size=1, iters=1, fused_adam=fused)
        net = bins.DepthNet(small)
        assert params == sum(p.numel() for p in net.parameters())
        assert macs == b.count_macs(net, torch.rand(1, 3, 32, 96))
        assert min(infer, fwd_bwd, step) > 0 and faults >= 0
    assert made == ["FlatAdam"]             # fused_adam=False: torch.optim.Adam, no flat_adam


def test_loader_benchmark_reports_both_loaders(tiny_world, capsys):
    """The loader benchmark times KittiRaw and the decode-only bound for each worker count (no
    speed is asserted: that is the benchmark's job); DecodeOnly yields the same uint8 frames."""
    data, b = importlib.import_module("01_data"), bench_module()
    lines = data.read_split(kitti_files.get_split_file("synthetic", "train", data_path=tiny_world))
    results = b.loader_benchmark(tiny_world, lines, 32, 104, samples=12, workers=(0, 1), batch_size=4,
                                    repeats=1)
    assert set(results) == {0, 1}
    assert all(bound > 0 and rate > 0 for bound, rate in results.values())
    dataset = data.KittiRaw(tiny_world, lines, 32, 104)
    frames = b.DecodeOnly(dataset)[2]  # (F, H, W, 3)
    sample = dataset[2]
    assert frames.dtype == torch.uint8 and frames.shape == (3, 32, 104, 3)
    assert all(torch.equal(frames[i].permute(2, 0, 1), sample["color"][f]) for i, f in enumerate((0, -1, 1)))
    capsys.readouterr()
    assert b.main(["--loader", str(tiny_world), "--height", "32", "--width", "104",
                   "--samples", "8", "--no-tune_memory"]) == 2  # not more than one batch of 8
    assert "more samples than one batch" in capsys.readouterr().err
    assert b.main(["--loader", str(tiny_world), "--height", "32", "--width", "104",
                   "--samples", "12", "--no-tune_memory"]) == 0
    out = capsys.readouterr().out
    assert "loader at 104x32" in out and out.count("% of the bound") == 3


def test_command_line_errors_are_one_line(tmp_path, capsys):
    """An unknown preset, an unknown device and a missing loader folder: one `error:` line, exit 2."""
    b = bench_module()
    for argv, needle in ((["--preset", "nope"], "unknown preset"), (["--device", "tpu"], "'tpu'"),
                         (["--loader", str(tmp_path / "none")], "data folder not found")):
        assert b.main(argv + ["--no-tune_memory"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and needle in err and err.count("\n") == 1, err



MEMORY_PROBE = """
import importlib, sys, torch
torch.set_num_threads(1)
b, train = importlib.import_module("helpers.benchmark"), importlib.import_module("06_train")
tiny = dict(num_layers=18, num_features=32, model_dim=16, patch_size=8, num_queries=8, num_bins=16,
            dim_feedforward=32, pretrained=None)
train.PRESETS["tiny"] = lambda: dict(model={**train.preset_config("synthetic-cpu").model, **tiny}, use_stereo=True)
b.reset_peak_rss()
start = b.resident_mb("VmRSS")
buffer = torch.ones(16 << 20)   # 64 MB, written, then freed
del buffer
print(b.resident_mb() - start)
before, peak = b.train_step_memory("tiny", sys.argv[1], batch_size=2)
nets = train.build_networks(train.preset_config("tiny"), torch.device("cpu"), load_pretrained=False)
print(peak - before, 3 * 4 * sum(p.numel() for net in nets for p in net.parameters()) / 2**20)
"""


def test_peak_memory_of_a_training_step_counts_at_least_its_gradients_and_adam(tiny_world):
    """Linux, in a fresh process (as --train_memory is run: no memory freed earlier to reuse): the peak
    after reset_peak_rss() sees a 64 MB buffer written and freed in between; the first training step
    of a (tiny) 06_train.py preset adds at least what it must hold: one gradient and Adam's two
    moments per parameter (3 x 4 bytes each, both networks)."""
    if bench_module().resident_mb() is None:
        return                                   # not Linux: --train_memory refuses with one line
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(tiny_world)], cwd=root, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    buffer_mb, (step_mb, must_hold_mb) = proc.stdout.split("\n")[0], proc.stdout.split("\n")[1].split()
    assert float(buffer_mb) >= 60
    assert float(step_mb) >= float(must_hold_mb)
