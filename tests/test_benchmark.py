"""Tests of helpers/benchmark.py: the depth-network and loader tables (no speed is asserted: measuring is the
benchmark's job, and the figures are in docs/benchmarks.md)."""
import importlib

import torch
from helpers import split_lists  # the standard split lists (helpers/split_lists.py)


def bench_module():
    return importlib.import_module("helpers.benchmark")


def test_benchmark_times_forward_backward_and_the_step(monkeypatch):
    """The speed table's row: params and MACs of the preset, and three medians of timed calls; with
    fused_adam the step uses fused_adam.make_adam's FlatAdam (as 06_train.py), without it the plain Adam."""
    b, bins = bench_module(), importlib.import_module("04_bins")
    made = []
    real_make_adam = b.make_adam

    def spy(*args, **kwargs):
        optimizer = real_make_adam(*args, **kwargs)
        made.append(type(optimizer).__name__)
        return optimizer
    monkeypatch.setattr(b, "make_adam", spy)
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
    assert made == ["FlatAdam", "Adam"]


def test_loader_benchmark_reports_both_loaders(tiny_world, capsys):
    """The loader benchmark times KittiRaw and the decode-only bound for each worker count (no
    speed is asserted: that is the benchmark's job); DecodeOnly yields the same uint8 frames."""
    data, b = importlib.import_module("01_data"), bench_module()
    lines = data.read_split(split_lists.get_split_file("synthetic", "train", data_path=tiny_world))
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
