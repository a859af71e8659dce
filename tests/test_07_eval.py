"""Tests of 07_eval.py: the metrics, median scaling, Garg crop, post-processing, model loading, the CLI.

Oracles: metrics against a slow pure-Python loop and hand-computed numbers (with cases that break
plausible wrong formulas: log10, "<=", dividing by pred), the Garg crop against the indices of
KITTI's 375x1242 frame worked out by hand, the post-processing ramps against hand-evaluated
columns, back-projection against re-projection. End to end: a 2-step 06_train.py run on the tiny
synthetic world, then its checkpoint evaluated here; bad inputs give one `error:` line and exit 2.
"""
import importlib
import math
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import cli, eval_tables, figures, model_files
from helpers import model_files as official_weights  # the official release's conversion
from exercise_checks import assert_allclose_explained, value_message

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(num_layers=18, num_features=32, model_dim=16, patch_size=8, num_queries=8, num_bins=16)
TINY_FLAGS = ["--num_layers", "18", "--num_features", "32", "--model_dim", "16", "--patch_size", "8",
              "--num_queries", "8", "--num_bins", "16"]
# What to check in Exercise 7.2 when one metric is wrong.
METRIC_HINTS = {"abs_rel": "mean(|gt - pred| / gt): divided by gt, not by pred?",
                "sq_rel": "mean((gt - pred)^2 / gt): divided by gt, not by pred?",
                "rmse": "sqrt(mean((gt - pred)^2)): the root of the mean, not the mean of the roots?",
                "rmse_log": "natural logarithms (np.log, not np.log10)? sqrt(mean((ln gt - ln pred)^2))?",
                "a1": "the fraction of max(gt / pred, pred / gt) < 1.25, with a strict '<'?",
                "a2": "the fraction of max(gt / pred, pred / gt) < 1.25 ** 2 (a power, not 1.25 * 2), strict '<'?",
                "a3": "the fraction of max(gt / pred, pred / gt) < 1.25 ** 3 (a power, not 1.25 * 3), strict '<'?"}
MEDIAN_HINT = ("ratio = median(gt) / median(pred) (not inverted, not the mean, not the median of gt / pred), "
               "and it multiplies the prediction?")


def ev():
    return importlib.import_module("07_eval")


def _slow_metrics(gt, pred):
    """Pure-Python loop oracle of the seven metrics (natural log, strict thresholds)."""
    n = len(gt)
    out = {"abs_rel": sum(abs(g - p) / g for g, p in zip(gt, pred)) / n,
           "sq_rel": sum((g - p) ** 2 / g for g, p in zip(gt, pred)) / n,
           "rmse": math.sqrt(sum((g - p) ** 2 for g, p in zip(gt, pred)) / n),
           "rmse_log": math.sqrt(sum((math.log(g) - math.log(p)) ** 2 for g, p in zip(gt, pred)) / n)}
    for name, t in (("a1", 1.25), ("a2", 1.25 ** 2), ("a3", 1.25 ** 3)):
        out[name] = sum(max(g / p, p / g) < t for g, p in zip(gt, pred)) / n
    return out


def _tiny_checkpoint(path, height=64, width=208, data_path="", model_cfg=None, seed=0, use_stereo=False, **record):
    """A checkpoint in 06_train.py's format around a randomly initialised tiny DepthNet (`record`:
    more config entries, e.g. train_drives)."""
    bins = importlib.import_module("04_bins")
    torch.manual_seed(seed)
    net = bins.DepthNet(bins.DepthNetConfig(**TINY))
    config = {"model": model_cfg or asdict(net.cfg), "height": height, "width": width, "data": "synthetic",
              "data_path": str(data_path), "split": "synthetic", "use_stereo": use_stereo, **record}
    torch.save({"model": net.state_dict(), "config": config, "step": 0, "epoch": 0}, path)
    return net


def _run_main(argv, capsys):
    """main(argv) in-process -> (exit code, stdout, stderr)."""
    code = ev().main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


# ----------------------------------------------------------------------------- metrics

def test_metrics_match_hand_computed_values():
    """gt [1,2,4], pred [2,2,2]: AbsRel 0.5, SqRel 2/3, RMSE sqrt(5/3), RMSElog ln2*sqrt(2/3), a1..a3 1/3."""
    what = "Exercise 7.2 compute_depth_errors(gt=[1, 2, 4], pred=[2, 2, 2])"
    m = ev().compute_depth_errors(np.array([1.0, 2.0, 4.0]), np.array([2.0, 2.0, 2.0]))
    assert list(m) == ["abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3"], (
        f"{what} returned the keys {list(m)}. Check: the keys abs_rel, sq_rel, rmse, rmse_log, a1, a2, a3, in "
        f"that order?")
    expected = {"abs_rel": 0.5, "sq_rel": 2 / 3, "rmse": math.sqrt(5 / 3), "rmse_log": math.log(2) * math.sqrt(2 / 3),
                "a1": 1 / 3, "a2": 1 / 3, "a3": 1 / 3}
    for k, v in expected.items():
        assert m[k] == pytest.approx(v, rel=1e-9), value_message(m[k], v, f"{what}: {k}", METRIC_HINTS[k])


def test_metrics_match_slow_loop_and_reject_wrong_formulas():
    """Random depths agree with the loop oracle; a ratio of exactly 1.25 (pred 5, gt 4) is NOT inside
    d<1.25 (a "<=" counts it), log10 or dividing by pred would change RMSElog / AbsRel."""
    rng = np.random.default_rng(0)
    gt = np.concatenate([[4.0, 1.0], rng.uniform(1, 80, 50)])
    pred = np.concatenate([[5.0, 1.9], gt[2:] * rng.uniform(0.6, 1.7, 50)])
    what = "Exercise 7.2 compute_depth_errors"
    m, slow = ev().compute_depth_errors(gt, pred), _slow_metrics(gt.tolist(), pred.tolist())
    for k in slow:
        assert m[k] == pytest.approx(slow[k], rel=1e-9), value_message(
            m[k], slow[k], f"{what} on 52 random depths: {k}", METRIC_HINTS[k])
    ratio = np.maximum(gt / pred, pred / gt)
    wrong = {"a1": ("the '<=' formula", np.mean(ratio <= 1.25)),  # the exact-1.25 pixel is excluded
             "rmse_log": ("the log10 formula", np.sqrt(np.mean((np.log10(gt) - np.log10(pred)) ** 2))),
             "abs_rel": ("the formula dividing by pred", np.mean(np.abs(gt - pred) / pred)),
             "sq_rel": ("the formula dividing by pred", np.mean((gt - pred) ** 2 / pred))}
    for k, (formula, value) in wrong.items():
        assert m[k] != pytest.approx(value), (
            f"{what}: {k} is {m[k]:.6g}, the value of {formula} (gt 4, pred 5 has a ratio of exactly 1.25). "
            f"Check: {METRIC_HINTS[k]}")
    small = ev().compute_depth_errors(np.array([1.0, 1.0]), np.array([1.9, 1.5]))  # ratios 1.9, 1.5
    got = (small["a1"], small["a2"], small["a3"])
    assert got == (0.0, 0.5, 1.0), (  # each threshold on its own power
        f"{what}(gt=[1, 1], pred=[1.9, 1.5]) (ratios 1.9 and 1.5): (a1, a2, a3) = {got}, expected (0.0, 0.5, 1.0). "
        f"Check: thresholds 1.25, 1.25 ** 2 = 1.5625, 1.25 ** 3 = 1.953 (powers, not multiples), strict '<'?")


def test_median_scaling_uses_the_median_ratio_gt_over_pred():
    """ratio = median(gt) / median(pred) (not the mean, not inverted), and it multiplies the prediction."""
    what = "Exercise 7.1 median_scale"
    gt, pred = np.array([1.0, 2.0, 10.0]), np.array([1.0, 1.0, 1.0])
    scaled, ratio = ev().median_scale(gt, pred)
    assert ratio == pytest.approx(2.0), value_message(  # the mean ratio would be 13/3
        ratio, 2.0, f"{what}(gt=[1, 2, 10], pred=[1, 1, 1]): ratio", f"{MEDIAN_HINT} (the mean would give 13/3)")
    assert_allclose_explained(scaled, [2.0, 2.0, 2.0], f"{what}(gt=[1, 2, 10], pred=[1, 1, 1]): scaled prediction",
                              MEDIAN_HINT)
    scaled, ratio = ev().median_scale(np.array([2.0, 4.0, 6.0]), np.array([4.0, 8.0, 12.0]))
    assert ratio == pytest.approx(0.5), value_message(ratio, 0.5, f"{what}(gt=[2, 4, 6], pred=[4, 8, 12]): ratio",
                                                      f"{MEDIAN_HINT} (an inverted ratio gives 2)")
    assert_allclose_explained(scaled, [2.0, 4.0, 6.0], f"{what}(gt=[2, 4, 6], pred=[4, 8, 12]): scaled prediction",
                              MEDIAN_HINT)
    _, ratio = ev().median_scale(np.array([1.0, 2.0, 10.0]), np.array([2.0, 1.0, 4.0]))
    assert ratio == pytest.approx(1.0), value_message(  # median(gt) / median(pred) = 2 / 2; median(gt / pred) = 2
        ratio, 1.0, f"{what}(gt=[1, 2, 10], pred=[2, 1, 4]): ratio", f"{MEDIAN_HINT} (the median of gt / pred is 2)")


def test_garg_crop_indices_on_a_kitti_sized_frame():
    """375x1242: rows 153..370 and columns 44..1196 kept (int truncation of the Garg fractions)."""
    mask = ev().garg_crop_mask(375, 1242)
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    assert (rows[0], rows[-1], cols[0], cols[-1]) == (153, 370, 44, 1196)
    assert mask.sum() == (371 - 153) * (1197 - 44)


def test_eigen_protocol_on_a_crafted_ground_truth():
    """Outside the crop / outside (1e-3, 80) the prediction is garbage, inside it is 3x the GT:
    eigen scores perfectly after median scaling (ratio 1/3 reported), while eigen_benchmark (gt>0,
    no crop) and the synthetic split (no crop) do see the garbage; clamping caps predictions at 80."""
    e = ev()
    rng = np.random.default_rng(1)
    gt = rng.uniform(2, 60, (375, 1242)).astype(np.float32)
    gt[:, :20] = 0.0  # no data
    gt[-2:, :] = 95.0  # beyond 80 m: not scored by eigen
    pred = 3 * gt
    crop = e.garg_crop_mask(375, 1242)
    pred[~crop] = 1000.0
    pred[(gt <= 1e-3) | (gt >= 80)] = 1000.0
    res = e.evaluate_predictions([gt], [pred], "eigen")
    hint = f"Exercise 7.1 median_scale: {MEDIAN_HINT} Exercise 7.2 compute_depth_errors: do their tests pass?"
    assert res["abs_rel"] == pytest.approx(0, abs=1e-6) and res["a1"] == 1.0, (
        f"eigen protocol on a prediction 3x the ground truth: abs_rel {res['abs_rel']:.6g} and a1 {res['a1']:.6g} "
        f"after median scaling, expected 0 and 1. Check: {hint}")
    assert_allclose_explained(res["ratios"], [1 / 3], "eigen protocol on a prediction 3x the ground truth: the "
                              "median scaling ratio", hint, rtol=1e-6, names=("image",))
    assert res["n"] == 1
    for split in ("eigen_benchmark", "synthetic"):
        assert e.evaluate_predictions([gt], [pred], split)["abs_rel"] > 0.01, split
    # metric (stereo) scale: no median scaling, predictions x5.4
    res = e.evaluate_predictions([gt], [pred / 5.4 / 3], "eigen", median_scaling=False, scale=5.4)
    assert res["abs_rel"] == pytest.approx(0, abs=1e-5) and len(res["ratios"]) == 0


def test_prediction_is_resized_bilinearly_to_gt_and_averaged_per_image():
    """A constant prediction at half size is resized to the GT size; two frames with AbsRel 0 and 0.5
    (no median scaling) average to 0.25 (per-image mean, not pooled over pixels of unequal counts)."""
    e = ev()
    gt_a, gt_b = np.full((40, 100), 10.0, np.float32), np.full((20, 50), 10.0, np.float32)
    gt_b[:, :10] = 0
    res = e.evaluate_predictions([gt_a, gt_b], [np.full((20, 50), 10.0), np.full((10, 25), 15.0)],
                                 "synthetic", median_scaling=False)
    assert res["abs_rel"] == pytest.approx(0.25), value_message(
        res["abs_rel"], 0.25, "the mean AbsRel of frames with AbsRel 0 and 0.5",
        f"Exercise 7.2 compute_depth_errors: {METRIC_HINTS['abs_rel']}")
    assert e.resize_to(np.arange(4.0).reshape(1, 4), 1, 8).tolist()[0] == pytest.approx(
        [0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3])  # half-pixel centres, like cv2.resize


def test_thin_structure_abs_rel_is_pooled_over_thin_pixels():
    """Error only on thin pixels (AbsRel 0.5 there) shows in thin_abs_rel; the frame-level AbsRel is small."""
    e = ev()
    gt = np.full((30, 40), 10.0, np.float32)
    thin = np.zeros_like(gt, bool)
    thin[:, 5] = True
    pred = gt.copy()
    pred[thin] = 15.0
    res = e.evaluate_predictions([gt], [pred], "synthetic", median_scaling=True, thin_masks=[thin])
    hint = f"Exercise 7.1 median_scale: {MEDIAN_HINT} Exercise 7.2: {METRIC_HINTS['abs_rel']}"
    assert res["thin_abs_rel"] == pytest.approx(0.5), value_message(
        res["thin_abs_rel"], 0.5, "thin_abs_rel with AbsRel 0.5 on the thin pixels", hint)
    assert res["abs_rel"] == pytest.approx(0.5 / 40), value_message(
        res["abs_rel"], 0.5 / 40, "abs_rel of a frame wrong only on 1 column of 40", hint)


# ----------------------------------------------------------------------------- post-processing

def test_post_process_ramps_on_a_hand_built_case():
    """Direct prediction 1, flipped-back 3, width 41 (x step 0.025): the left 5% takes the flipped one
    (3), the right 5% the direct one (1), the middle their mean (2); x=0.075 is half-way up the ramp."""
    e = ev()
    d, f = torch.ones(1, 1, 2, 41), torch.full((1, 1, 2, 41), 3.0)
    out = e.post_process_depth(d, f)[0, 0, 0]
    assert out[:3].tolist() == pytest.approx([3, 3, 3])  # x = 0, 0.025, 0.05
    assert out[3].item() == pytest.approx(0.5 * 3 + 0.5 * 2)  # x = 0.075
    assert out[4:37].tolist() == pytest.approx([2.0] * 33)  # x in [0.1, 0.9]
    assert out[37].item() == pytest.approx(0.5 * 1 + 0.5 * 2)  # x = 0.925
    assert out[-3:].tolist() == pytest.approx([1, 1, 1])


def test_post_process_of_a_flip_equivariant_model_is_the_plain_prediction():
    """A 'network' that just reads the image (so flip(net(flip(x))) == net(x)) gives the same depth with
    and without post-processing: the mirrored prediction is mirrored back correctly."""
    e = ev()

    def net(img):
        return 1.0 + img[:, :1, ::2, ::2] * torch.linspace(1, 2, img.shape[-1] // 2)  # not symmetric in x

    class Mirror(torch.nn.Module):
        def forward(self, img):  # flip-equivariant by construction
            return 0.5 * (net(img) + net(img.flip(-1)).flip(-1))

    img = torch.rand(2, 3, 8, 24)
    np.testing.assert_allclose(e.predict_depth(Mirror(), img, True), e.predict_depth(Mirror(), img, False), rtol=1e-6)
    plain = e.predict_depth(lambda x: net(x), img, False)
    assert not np.allclose(plain, e.predict_depth(lambda x: net(x), img, True))


# ----------------------------------------------------------------------------- pictures and point clouds

def test_inverse_depth_colours_use_the_whole_colour_map():
    """One enormous outlier does not squash the rest into black: robust per-image normalisation."""
    depth = np.tile(np.linspace(2, 50, 64, dtype=np.float32), (16, 1))
    depth[0, 0] = 1e-4  # a near-infinite inverse depth
    rgb = figures.colorize_inverse_depth(depth)
    assert rgb.shape == (16, 64, 3) and rgb.dtype == np.uint8
    assert rgb.reshape(-1, 3).sum(1).std() > 60 and (rgb.reshape(-1, 3).sum(1) > 100).mean() > 0.3
    assert figures.colorize_inverse_depth(np.full((4, 4), 7.0)).shape == (4, 4, 3)  # constant: no crash


# ----------------------------------------------------------------------------- loading and the CLI

def test_load_model_round_trips_a_checkpoint(tmp_path):
    """load_model rebuilds the DepthNet from the stored config and gives the same depth as the saved net."""
    net = _tiny_checkpoint(tmp_path / "ckpt.pt").eval()
    model, config = model_files.load_model(tmp_path / "ckpt.pt", torch.device("cpu"))
    img = torch.rand(1, 3, 64, 208)
    with torch.no_grad():
        torch.testing.assert_close(model(img), net(img))
    assert config["height"] == 64 and not model.training


def test_bad_inputs_give_one_error_line_and_exit_2(tmp_path, tiny_world, capsys):
    """Missing checkpoint, a file that is not a checkpoint, a checkpoint whose weights belong to another
    architecture than its config, a missing data path, a negative --threads: each gives exactly one
    `error:` line, exit 2."""
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    _tiny_checkpoint(tmp_path / "other.pt", model_cfg={**asdict(importlib.import_module("04_bins").DepthNetConfig(**TINY)),
                                                       "num_bins": 32})
    _tiny_checkpoint(tmp_path / "ok.pt", data_path=tmp_path / "no_such_data")
    cases = [(["--checkpoint", tmp_path / "missing.pt"], "not found"),
             (["--checkpoint", tmp_path / "junk.pt"], "not a readable checkpoint"),
             (["--checkpoint", tmp_path / "other.pt"], "does not match"),
             (["--checkpoint", tmp_path / "ok.pt"], "no_such_data"),
             (["--checkpoint", tmp_path / "ok.pt", "--data_path", tiny_world, "--split", "nonsense"], "nonsense"),
             (["--checkpoint", tmp_path / "ok.pt", "--official", tmp_path], "exactly one"),
             (["--checkpoint", tmp_path / "ok.pt", "--threads", "-1"], "--threads -1")]
    for argv, needle in cases:
        code, _, err = _run_main(argv, capsys)
        assert code == 2, argv
        assert err.count("\n") == 1 and err.startswith("error: ") and needle in err, err



def test_eval_and_predict_threads_are_exact_or_the_free_cores(tmp_path, monkeypatch, capsys):
    """07_eval.py and helpers/predict.py: --threads N sets exactly N; no flag takes the cores free at the
    start (helpers/cpu_threads.py), never more than PyTorch's default."""
    threads = importlib.import_module("helpers.cpu_threads")
    predict = importlib.import_module("helpers.predict")
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.setattr(threads, "busy_cores", lambda **_: 1.0)   # one of the 2 cores is busy
    before = torch.get_num_threads()
    try:
        for main, flags in ((ev().main, []), (predict.main, ["--images", str(tmp_path)])):
            for given, expected in ((["--threads", "2"], 2), ([], 1)):
                torch.set_num_threads(2)
                assert main(flags + ["--checkpoint", str(tmp_path / "missing.pt"), *given]) == 2   # no model
                assert torch.get_num_threads() == expected, (main, given)
        capsys.readouterr()
    finally:
        torch.set_num_threads(before)

def test_evaluation_with_baselines_figures_and_tables(tmp_path, tiny_world, capsys):
    """A random tiny net on the synthetic test split: finite metrics for the model and both baselines,
    CSV/markdown with three rows, the two figures written, the thin-structure column present."""
    _tiny_checkpoint(tmp_path / "ckpt.pt", data_path=tiny_world)
    code, out, err = _run_main(["--checkpoint", tmp_path / "ckpt.pt", "--baselines", "--figures",
                                "--post_process", "--num_figure_frames", "2"], capsys)
    assert code == 0, err
    csv = (tmp_path / "eval_synthetic.csv").read_text().splitlines()
    assert csv[0].split(",")[:8] == ["model", "abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3"]
    names = [row.split(",")[0] for row in csv[1:]]
    assert names == ["SQLDepth ckpt.pt", "mean training depth", "untrained network"]
    values = np.array([[float(x) for x in row.split(",")[1:8]] for row in csv[1:]])
    assert np.isfinite(values).all() and (values[:, 4:] <= 1).all() and (values[:, 0] > 0).all()
    assert "thin_abs_rel" in out and "median scaling ratios" in out
    assert (tmp_path / "eval_synthetic.md").read_text().count("\n") == 5
    for name in ("eval_synthetic_predictions.png", "eval_synthetic_internals.png"):
        assert (tmp_path / name).stat().st_size > 1000, name


def test_evaluation_of_a_checkpoint_trained_on_test_drives_is_marked(tmp_path, tiny_world, capsys):
    """A checkpoint whose recorded training drives include drives of the evaluated lines: a WARNING
    line heads the printed table and the markdown (naming the drive and the frames on it) and the
    model's CSV row carries the mark; with disjoint drives nothing is marked; a checkpoint without
    the record says the overlap is unknown."""
    data = importlib.import_module("01_data")
    splits = tiny_world / "splits" / "synthetic"
    test_drive = data.read_split(splits / "test_files.txt")[0][0]
    train_drive = data.read_split(splits / "train_files.txt")[0][0]
    cases = {"leak": [train_drive, test_drive], "clean": [train_drive]}
    for name, drives in cases.items():
        _tiny_checkpoint(tmp_path / f"{name}.pt", data_path=tiny_world, train_drives=drives)
        code, out, err = _run_main(["--checkpoint", tmp_path / f"{name}.pt", "--max_images", "2",
                                    "--out", tmp_path / name], capsys)
        assert code == 0, err
        table = out[out.index("\n\n") + 2:].splitlines()
        md = (tmp_path / name / "eval_synthetic.md").read_text()
        row = (tmp_path / name / "eval_synthetic.csv").read_text().splitlines()[1]
        if name == "leak":
            assert table[0].startswith("WARNING: train/test leakage") and table[1].startswith("model"), table
            assert test_drive in table[0] and "(2 of its 2 frames)" in table[0] and train_drive not in table[0]
            assert md.splitlines()[0] == f"> **{table[0]}**"
            assert row.startswith(f"SQLDepth {name}.pt{eval_tables.LEAK_MARK},")
        else:
            assert "WARNING" not in out and "WARNING" not in md and row.startswith(f"SQLDepth {name}.pt,")
        assert "overlap: unknown" not in out
    _tiny_checkpoint(tmp_path / "old.pt", data_path=tiny_world)
    code, out, _ = _run_main(["--checkpoint", tmp_path / "old.pt", "--max_images", "1", "--out", tmp_path / "old"],
                             capsys)
    assert code == 0 and "train/test drive overlap: unknown" in out and "WARNING" not in out


def test_velodyne_ground_truth_path_with_a_custom_split_file(tmp_path, tiny_world, capsys):
    """--split eigen with --split_file on the synthetic tree: velodyne GT is exported once to an .npz in
    the data folder (reused on the second run), Garg-cropped metrics are finite and reproducible."""
    _tiny_checkpoint(tmp_path / "ckpt.pt", data_path=tiny_world)
    split_file = tiny_world / "splits" / "synthetic" / "test_files.txt"
    argv = ["--checkpoint", tmp_path / "ckpt.pt", "--split", "eigen", "--split_file", split_file,
            "--out", tmp_path / "velo"]
    code, out, err = _run_main(argv, capsys)
    assert code == 0, err
    assert "exporting velodyne ground truth" in out
    first = (tmp_path / "velo" / "eval_eigen.csv").read_text()
    assert len(list(tiny_world.glob("gt_depths_eigen_*.npz"))) == 1
    code, out, _ = _run_main(argv, capsys)
    assert code == 0 and "exporting" not in out
    assert (tmp_path / "velo" / "eval_eigen.csv").read_text() == first
    assert np.isfinite([float(x) for x in first.splitlines()[1].split(",")[1:8]]).all()


def test_official_checkpoint_path(tmp_path, tiny_world, capsys):
    """A fake official encoder.pth/depth.pth (our tiny net's weights under the official key names, with
    height/width/use_stereo metadata) loads through helpers/model_files.py and predicts exactly like the net."""
    net = _tiny_checkpoint(tmp_path / "unused.pt").eval()
    encoder_sd, depth_sd = {"height": 64, "width": 208, "use_stereo": True}, {}
    for key, value in net.state_dict().items():
        official, ours = next((o, n) for o, n in official_weights.OFFICIAL_PREFIXES if key.startswith(n))
        target = encoder_sd if official.startswith(("encoder.", "decoder.")) else depth_sd
        target[official + key[len(ours):]] = value
    official_dir = tmp_path / "official"
    official_dir.mkdir()
    torch.save(encoder_sd, official_dir / "encoder.pth")
    torch.save(depth_sd, official_dir / "depth.pth")
    model, config = model_files.load_official(official_dir, torch.device("cpu"))
    assert (config["height"], config["width"], config["use_stereo"]) == (64, 208, True)
    img = torch.rand(1, 3, 64, 208)
    with torch.no_grad():
        torch.testing.assert_close(model(img), net(img))
    code, out, err = _run_main(["--official", official_dir, "--data", "synthetic", "--data_path", tiny_world,
                                "--max_images", "2", "--eval_stereo", "--out", tmp_path / "off"], capsys)
    assert code == 0, err
    assert "stereo evaluation" in out and (tmp_path / "off" / "eval_synthetic.csv").is_file()


def test_train_two_steps_then_evaluate(tmp_path, tiny_world, capsys):
    """End to end: 06_train.py (subprocess, 2 steps, tiny model) writes a checkpoint that 07 evaluates on
    the synthetic test split with finite metrics and written CSV/markdown."""
    if not (ROOT / "06_train.py").is_file():
        pytest.skip("06_train.py not written yet")
    run = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "06_train.py"), "--data_path", str(tiny_world), "--run_dir", str(run),
           "--height", "64", "--width", "208", "--batch_size", "2", "--max_steps", "2", "--no_eval", *TINY_FLAGS]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ckpt = next(p for p in (run / "best.pt", run / "ckpt.pt") if p.is_file())
    code, out, err = _run_main(["--checkpoint", ckpt, "--data_path", tiny_world], capsys)
    assert code == 0, err
    row = (ckpt.parent / "eval_synthetic.csv").read_text().splitlines()[1].split(",")
    assert row[0] == f"SQLDepth {ckpt.name}" and np.isfinite([float(x) for x in row[1:8]]).all()
    assert (ckpt.parent / "eval_synthetic.md").is_file()


def test_every_flag_has_help(capsys):
    """--help describes every EvalConfig field with its comment; flags parse into the config."""
    e = ev()
    with pytest.raises(SystemExit) as exit_info:
        e.parse_args(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    comments = cli.field_comments(e.EvalConfig)
    assert set(comments) == set(e.EvalConfig.__dataclass_fields__)
    for name, comment in comments.items():
        assert " ".join(comment.split())[:30] in text, name
    cfg = e.parse_args(["--checkpoint", "x.pt", "--post-process", "--batch_size", "2"])
    assert (cfg.checkpoint, cfg.post_process, cfg.batch_size) == ("x.pt", True, 2)


def test_kept_epochs_are_scored_in_one_table_with_a_caution(tmp_path, tiny_world, capsys):
    """06_train.py --keep_epochs for two epochs leaves epoch_001.pt and epoch_002.pt (weights and config,
    no optimiser: smaller than ckpt.pt); --checkpoint 'RUN/epoch_*.pt' prints one row per file in one
    table, each row equal to that file's own single-checkpoint evaluation, under the caution that the
    best row on the test split is selection on the test set; a pattern matching nothing is one line."""
    run = tmp_path / "run"
    code = importlib.import_module("06_train").main(
        TINY_FLAGS + ["--data_path", str(tiny_world), "--run_dir", str(run), "--height", "64", "--width", "208",
                      "--batch_size", "2", "--num_workers", "0", "--epochs", "2", "--keep_epochs", "--no_eval",
                      "--dim_feedforward", "32", "--threads", "1"])
    assert code == 0
    kept = sorted(p.name for p in run.glob("epoch_*.pt"))
    assert kept == ["epoch_001.pt", "epoch_002.pt"]
    epoch = torch.load(run / "epoch_002.pt", weights_only=True)
    assert set(epoch) == {"model", "pose", "config", "step", "epoch"} and epoch["epoch"] == 2
    assert (run / "epoch_002.pt").stat().st_size < (run / "ckpt.pt").stat().st_size
    capsys.readouterr()
    code, out, err = _run_main(["--checkpoint", run / "epoch_*.pt", "--out", tmp_path / "all"], capsys)
    assert code == 0, err
    assert "CAUTION: choosing the best of these rows on the synthetic test split is selection on the test set" in out
    rows = (tmp_path / "all" / "eval_synthetic_checkpoints.csv").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == kept
    for name, row in zip(kept, rows):
        code, _, err = _run_main(["--checkpoint", run / name, "--out", tmp_path / name], capsys)
        assert code == 0, err
        single = (tmp_path / name / "eval_synthetic.csv").read_text().splitlines()[1].split(",")
        assert row.split(",")[1:] == single[1:]
    code, _, err = _run_main(["--checkpoint", run / "weights_*.pt"], capsys)
    assert code == 2 and err.strip().startswith("error: ") and "no checkpoint matches" in err
