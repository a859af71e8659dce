"""Tests of helpers/compare_runs.py: runs grouped into variants (seeds averaged), the tables, the figures.

Oracles: each run evaluated alone by 07_eval.py (the comparison's mean and sample std must equal
those of the single evaluations), 04's internals_stats frame by frame, a brute-force window search.
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

from helpers import model_files

from test_07_eval import MEDIAN_HINT, ROOT, TINY_FLAGS, _run_main, ev


def compare():
    return importlib.import_module("helpers.compare_runs")


# ----------------------------------------------------------------------------- run comparison

def test_group_runs_labels_variants_by_the_fields_that_differ():
    """Configs that differ only by seed / run_dir / resume / threads are one variant ("default" when
    alone); a model field (queries) or a run field (use_stereo) splits them, and the label names exactly
    the fields that differ between the groups, groups in the order their first run was given."""
    c = compare()
    base = {"model": {"queries": "self", "bins": "sql", "num_bins": 16}, "use_stereo": True, "lr": 5e-4,
            "seed": 0, "run_dir": "runs/a", "resume": "", "threads": 0}
    seeds = [{**base, "seed": s, "run_dir": f"runs/s{s}", "resume": "runs/x" * s, "threads": s} for s in range(3)]
    assert c.group_runs(seeds) == ([[0, 1, 2]], ["default"])
    none = {**base, "model": {**base["model"], "queries": "none"}, "seed": 7}
    mono = {**base, "use_stereo": False}
    groups, labels = c.group_runs([none, seeds[0], mono, seeds[1], none])
    assert groups == [[0, 4], [1, 3], [2]]
    assert labels == ["use_stereo=True, queries=none", "use_stereo=True, queries=self", "use_stereo=False, queries=self"]
    assert c.group_runs([base, {**base, "lr": 1e-4}])[1] == ["lr=0.0005", "lr=0.0001"]
    # a run of a version without the frame cache or --val_every is still a seed of the same variant
    assert c.group_runs([base, {**base, "cache_mb": 1024, "val_every": 64, "num_workers": 0,
                                "split_files": {"train": "elsewhere/train_files.txt"}}])[0] == [[0, 1]]


def test_group_runs_reads_a_field_an_older_run_lacks_as_todays_default():
    """A run of older code lacks the fields added since: it is one variant with a run holding their
    defaults (06's TrainConfig, 04's DepthNetConfig), and no label shows None: against a run that
    changes such a field the label names that field alone, the old run's value being the default.
    smoothness_weight 0 (the recipe's) is the weight 06 trains with: one variant with a run that
    stored the same weight by hand, and labelled with the weight itself, 1e-3 with stereo, 1e-2
    without. A knob removed since (warmup_steps, bins_space) stored at its old default splits nothing."""
    c = compare()
    train, depth_net = importlib.import_module("06_train"), importlib.import_module("04_bins")
    defaults = depth_net.DepthNetConfig()
    new = {**asdict(train.TrainConfig(use_stereo=True)), "model": asdict(depth_net.DepthNetConfig(num_layers=18))}
    old = {k: v for k, v in new.items() if k != "source_frames"}
    old["model"] = {k: v for k, v in new["model"].items() if k != "dropout"}
    old["smoothness_weight"] = train.SMOOTHNESS_WEIGHT[True]   # older code stored the weight itself
    # knobs removed since (warmup_steps, bins_space): at their old default they split nothing
    older = {**old, "warmup_steps": 0, "model": {**old["model"], "bins_space": "depth"}}
    log_bins = {**new, "seed": 1, "model": {**new["model"], "bins_space": "log"}}
    groups, labels = c.group_runs([old, new, older, log_bins])
    assert groups == [[0, 1, 2], [3]]
    assert labels == ["bins_space=depth", "bins_space=log"]
    mono = {**new, "use_stereo": False}
    groups, labels = c.group_runs([old, mono, new])
    assert groups == [[0, 2], [1]]
    assert labels == [f"use_stereo=True, smoothness_weight={train.SMOOTHNESS_WEIGHT[True]}",
                      f"use_stereo=False, smoothness_weight={train.SMOOTHNESS_WEIGHT[False]}"]
    dropout = {**new, "model": {**new["model"], "dropout": 0.0}}
    assert c.group_runs([old, dropout])[1] == [f"dropout={defaults.dropout}", "dropout=0.0"]


def test_densest_window_matches_a_brute_force_search():
    """The summed-area table picks the window with the most mask pixels, as a loop over every window
    does (first in raster order on ties), and shrinks a window larger than the mask."""
    c = compare()
    rng = np.random.default_rng(0)
    for trial in range(5):
        mask = rng.random((13, 29)) < 0.15
        mask[2:9, 20:23] = trial % 2 == 0  # a pole in half of the trials
        best, where = -1, None
        for top in range(13 - 5 + 1):
            for left in range(29 - 7 + 1):
                count = int(mask[top:top + 5, left:left + 7].sum())
                if count > best:
                    best, where = count, (top, left)
        assert c.densest_window(mask, 5, 7) == where
    assert c.densest_window(np.ones((4, 6), bool), 10, 10) == (0, 0)


def test_welch_p_matches_the_closed_forms_of_student_t():
    """Student's t at 1 and 2 degrees of freedom has a closed-form tail (1 - 2 atan(t) / pi and
    1 - t / sqrt(2 + t^2)); the integrated p must equal it. Two samples of 2 values with the same spread
    give Welch exactly 2 degrees of freedom: [0, 2] against [3, 5] is t = 3 / sqrt(2)."""
    c = compare()
    for t in (0.3, 2.0, 4.303, 12.0):
        assert c.student_t_p(t, 1) == pytest.approx(1 - 2 * math.atan(t) / math.pi, abs=1e-9)
        assert c.student_t_p(-t, 2) == pytest.approx(1 - t / math.sqrt(2 + t * t), abs=1e-9)
    assert c.student_t_p(1.959964, 1e7) == pytest.approx(0.05, abs=1e-5)  # the normal limit
    diff, t, df, p = c.welch([0, 2], [3, 5])
    assert (diff, df) == (3.0, pytest.approx(2.0)) and t == pytest.approx(3 / math.sqrt(2))
    assert p == pytest.approx(1 - t / math.sqrt(2 + t * t), abs=1e-9)
    assert all(math.isnan(v) for v in c.welch([1, 1], [2, 2])[1:])  # no spread at all: no test


def test_tables_test_each_variant_of_two_seeds_or_more_against_the_first(tmp_path, capsys):
    """write_tables adds <stem>_welch.csv/.md: each variant with 2+ seeds against the first variant given,
    per column welch() of the per-seed values; a variant of one seed gets no row, and without a second
    variant of 2+ seeds there is no Welch table."""
    c = compare()
    rng = np.random.default_rng(1)
    sizes = {"self": 3, "none": 3, "learned": 1}
    runs, configs = [], []
    for queries, n in sizes.items():
        for seed in range(n):
            runs.append({"run": f"{queries}_s{seed}", "seed": seed, "abs_rel": rng.random(), "rmse": rng.random()})
            configs.append({"queries": queries, "seed": seed})
    paths = c.write_tables(runs, configs, tmp_path, "t", ("abs_rel", "rmse"), "legend")[2]
    assert tmp_path / "t_welch.md" in paths and "(p " in capsys.readouterr()[0]
    rows = _csv_rows(tmp_path / "t_welch.csv")
    assert [(r["variant"], r["against"]) for r in rows] == [("queries=none", "queries=self")]
    for column in ("abs_rel", "rmse"):
        expected = c.welch([r[column] for r in runs[:3]], [r[column] for r in runs[3:6]])
        got = [float(rows[0][f"{column}_{k}"]) for k in ("diff", "t", "df", "p")]
        assert got == pytest.approx(expected, rel=1e-5)
    md = (tmp_path / "t_welch.md").read_text()
    assert f"{expected[0]:+.3f} (p {expected[3]:.2f})" in md and "queries=learned" not in md
    c.write_tables(runs[:4] + runs[6:], configs[:4] + configs[6:], tmp_path / "no_pairs", "t", ("abs_rel",), "")
    assert not (tmp_path / "no_pairs" / "t_welch.csv").exists()


def test_errors_by_range_locate_the_error_by_true_depth():
    """Two frames whose prediction is right below 10 m and half the truth from 40 m on (median scaling
    off): the ranges hold their share of the pixels, pred/gt is 1 and 0.5 there, the RMSE of each
    range is the hand-computed one, the squared-error shares sum to 1; the evaluation mask drops
    gt = 0 and gt >= 80; median scaling makes a prediction off by one factor everywhere exact."""
    c = compare()
    gt = np.array([[5.0, 5.0, 50.0, 70.0], [0.0, 90.0, 5.0, 50.0]])  # 0 and 90: not scored
    pred = np.where(gt < 10, gt, gt / 2)
    rows = c.errors_by_range([gt, gt], [pred, pred], "synthetic", median_scaling=False)
    by = {r["range"]: r for r in rows}
    assert [r["range"] for r in rows] == ["0-10 m", "10-20 m", "20-40 m", "40-60 m", "60-80 m"]
    assert by["0-10 m"]["pixels"] == pytest.approx(0.5) and by["40-60 m"]["pixels"] == pytest.approx(1 / 3)
    assert by["0-10 m"]["pred_over_gt"] == pytest.approx(1) and by["60-80 m"]["pred_over_gt"] == pytest.approx(0.5)
    assert by["40-60 m"]["rmse"] == pytest.approx(25) and by["60-80 m"]["rmse"] == pytest.approx(35)
    assert math.isnan(by["10-20 m"]["rmse"]) and by["10-20 m"]["sq_error_share"] == 0
    assert sum(r["sq_error_share"] for r in rows) == pytest.approx(1)
    assert by["60-80 m"]["sq_error_share"] == pytest.approx(35 ** 2 / (35 ** 2 + 2 * 25 ** 2))
    scaled = c.errors_by_range([gt], [gt * 3.0], "synthetic", median_scaling=True)
    assert all(r["rmse"] == pytest.approx(0) for r in scaled if not math.isnan(r["rmse"])), (
        f"median scaling of a prediction 3x the truth leaves the RMSE by range "
        f"{[(r['range'], round(r['rmse'], 6)) for r in scaled]}, expected 0 wherever there are pixels. "
        f"Check: Exercise 7.1 median_scale: {MEDIAN_HINT}")


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory, tiny_world):
    """Three 2-step tiny runs of 06_train.py: seeds 0 and 1 of the default model, and queries=none."""
    if not (ROOT / "06_train.py").is_file():
        pytest.skip("06_train.py not written yet")
    root = tmp_path_factory.mktemp("compare")
    common = [sys.executable, str(ROOT / "06_train.py"), "--data_path", str(tiny_world), "--height", "64",
              "--width", "208", "--batch_size", "2", "--max_steps", "2", "--no_eval", "--no-use_stereo",
              "--num_workers", "0", "--threads", "1", "--dim_feedforward", "32", *TINY_FLAGS]
    runs = {"seed0": [], "seed1": ["--seed", "1"], "none": ["--queries", "none"]}
    for name, extra in runs.items():
        proc = subprocess.run(common + ["--run_dir", str(root / name), *extra], cwd=ROOT, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
    return root


def _csv_rows(path):
    """Rows of a CSV as dicts of strings."""
    import csv
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_compare_aggregates_seeds_and_separates_variants(three_runs, tiny_world, capsys):
    """helpers/compare_runs.py seed0 seed1 none: 2 rows; the seeds are one row with n=2 whose mean and sample std
    (ddof 1) are those of the two runs evaluated alone by the normal evaluation; the per-run internals
    equal the per-frame mean of 04's internals_stats; queries=none has no query numbers ("-", NaN);
    CSVs, markdown and the figure are written."""
    c = compare()
    bins = importlib.import_module("04_bins")
    specs = [three_runs / "seed0", three_runs / "seed1", three_runs / "none"]
    out = three_runs / "table"
    code = c.main([str(a) for a in ["--runs", *specs, "--out", out, "--num_figure_frames", "2"]])
    printed, err = capsys.readouterr()
    assert code == 0, err
    rows = _csv_rows(out / "compare_synthetic.csv")
    assert [(r["variant"], r["n"], r["seeds"]) for r in rows] == [("queries=self", "2", "0 1"),
                                                                   ("queries=none", "1", "0")]
    alone = []
    for spec in specs[:2]:
        code, _, err = _run_main(["--checkpoint", spec / "best.pt", "--out", spec / "alone"], capsys)
        assert code == 0, err
        alone.append(_csv_rows(spec / "alone" / "eval_synthetic.csv")[0])
    for metric in ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3", "thin_abs_rel"):
        values = [float(a[metric]) for a in alone]
        rounding = 1e-5 * max(abs(v) for v in values)  # both CSVs keep 6 significant digits
        assert float(rows[0][metric + "_mean"]) == pytest.approx(np.mean(values), abs=rounding), metric
        assert float(rows[0][metric + "_std"]) == pytest.approx(np.std(values, ddof=1), abs=rounding), metric
        assert math.isnan(float(rows[1][metric + "_std"]))  # one run: no spread
    per_run = _csv_rows(out / "compare_synthetic_runs.csv")
    assert [(r["variant"], Path(r["run"]).name, r["seed"]) for r in per_run] == [
        ("queries=self", "seed0", "0"), ("queries=self", "seed1", "1"), ("queries=none", "none", "0")]
    e = ev()
    model, config = model_files.load_model(specs[0] / "best.pt", torch.device("cpu"))
    cfg = e.EvalConfig(data_path=str(tiny_world), split="synthetic", img_ext=".jpg")
    frames = [batch["color"][0] for batch in e.test_loader(cfg, e.split_lines(cfg), 64, 208)]
    frames = [img[None] for batch in frames for img in batch]  # one (1, 3, H, W) uint8 frame at a time
    for name in bins.INTERNALS_STATS:
        per_frame = [bins.internals_stats(model, e.data.image_to_float(img))[name] for img in frames]
        assert float(per_run[0][name]) == pytest.approx(np.mean(per_frame), rel=1e-4), name
        assert float(rows[0][name + "_mean"]) == pytest.approx(
            np.mean([float(r[name]) for r in per_run[:2]]), rel=1e-5), name
        assert math.isnan(float(rows[1][name + "_mean"])) and math.isnan(float(per_run[2][name]))
    md = (out / "compare_synthetic.md").read_text().splitlines()
    table = [line for line in md if line.startswith("|")]
    assert len(table) == 4 and "query_similarity" in table[0] and " ± " in table[2]
    assert table[3].rstrip(" |").endswith("-")  # queries=none: no bins, no queries
    assert "queries=self" in printed and "queries=none" in printed
    assert (out / "compare_synthetic.png").stat().st_size > 1000
    ranges = _csv_rows(out / "compare_synthetic_ranges.csv")  # five ranges per run, shares summing to 1
    assert len(ranges) == 15 and "by true depth: 0-10 m pred/gt" in printed
    assert sum(float(r["pixels"]) for r in ranges[:5]) == pytest.approx(1, abs=1e-4)
    log = c.read_val_log(specs[0])                 # the run's val.csv: one validation, at its last step
    assert list(log["step"]) == [2.0] and -1 <= log["query_similarity"][0] <= 1
    assert math.isnan(c.read_val_log(specs[2])["query_similarity"][0]) and c.read_val_log(out) == {}
    assert (out / "compare_diagnostics.png").stat().st_size > 1000


def test_bad_inputs_give_one_error_line_and_exit_2(tmp_path, capsys):
    """No runs, a folder without checkpoints, a missing run: one `error:` line each, exit 2."""
    cases = [([], "--runs"), (["--runs", tmp_path], "neither best.pt"), (["--runs", tmp_path / "nope"], "nope")]
    for argv, needle in cases:
        code = compare().main([str(a) for a in argv])
        err = capsys.readouterr().err
        assert code == 2, argv
        assert err.count("\n") == 1 and err.startswith("error: ") and needle in err, err


def test_zero_shot_table_over_worlds(three_runs, tiny_world, tmp_path, capsys):
    """--worlds TRAIN STYLE: per variant and world AbsRel / d<1.25 / thin AbsRel with median scaling,
    equal to each run scored alone on that world by 07_eval.py; the abs_rel increase of a run is its
    AbsRel on the other world over that on the training world, minus 1; a baseline row (the mean
    depth map of the training world); the figure and the CSVs are written."""
    world = importlib.import_module("helpers.synthetic_world")
    dusk = world.make_synthetic_kitti(tmp_path / "dusk", num_drives=1, frames_per_drive=8, height=64, width=208,
                                      style="dusk", test_only=True, first_drive=2)   # tiny_world's test drive
    out = tmp_path / "zs"
    specs = [three_runs / "seed0", three_runs / "seed1", three_runs / "none"]
    code = compare().main([str(a) for a in ["--runs", *specs, "--worlds", tiny_world, dusk, "--out", out]])
    assert code == 0, capsys.readouterr().err
    rows = _csv_rows(out / "zero_shot.csv")
    assert [r["variant"] for r in rows] == ["queries=self", "queries=none",
                                            "baseline: mean depth map of the training world"]
    runs = _csv_rows(out / "zero_shot_runs.csv")
    for spec, run in zip(specs, runs):
        for name, folder in (("default", tiny_world), ("dusk", dusk)):
            assert ev().main([str(a) for a in ["--checkpoint", spec / "best.pt", "--data_path", folder,
                                               "--out", tmp_path / "alone"]]) == 0
            alone = _csv_rows(tmp_path / "alone" / "eval_synthetic.csv")[0]
            for metric in ("abs_rel", "a1", "thin_abs_rel"):
                assert float(run[f"{name} {metric}"]) == pytest.approx(float(alone[metric]), rel=1e-4), (name, metric)
        increase = float(run["dusk abs_rel"]) / float(run["default abs_rel"]) - 1
        assert float(run["abs_rel increase"]) == pytest.approx(increase, abs=1e-5)  # CSVs: 6 digits
    assert (out / "zero_shot.png").stat().st_size > 1000 and "median scaling" in (out / "zero_shot.md").read_text()
    assert compare().main(["--runs", str(specs[0]), "--worlds", str(tmp_path)]) == 2    # not a world


# ----------------------------------------------------------------------------- score files

@pytest.fixture(scope="module")
def saved_scores(three_runs):
    """The three tiny runs compared with --save_scores: (table folder, score folder, the runs' specs)."""
    specs = [three_runs / "seed0", three_runs / "seed1", three_runs / "none"]
    out, scores = three_runs / "scored", three_runs / "scores"
    code = compare().main([str(a) for a in ["--runs", *specs, "--out", out, "--save_scores", scores,
                                            "--num_figure_frames", "1"]])
    assert code == 0
    return out, scores, specs


def test_save_scores_writes_one_file_per_run_equal_to_its_table_row(saved_scores, tiny_world):
    """--save_scores: one JSON per run, named after its folder, whose metrics equal that run's row of
    compare_<split>_runs.csv (6 significant digits there), whose error by range equals _ranges.csv; the
    keys in a fixed order; NaN (no queries) as null; the split, data folder name and evaluation
    settings stored; no absolute path of this machine anywhere in the file."""
    import json
    c = compare()
    out, scores, specs = saved_scores
    assert sorted(p.name for p in scores.iterdir()) == ["none.json", "seed0.json", "seed1.json"]
    per_run = _csv_rows(out / "compare_synthetic_runs.csv")
    ranges = _csv_rows(out / "compare_synthetic_ranges.csv")
    for spec, row in zip(specs, per_run):
        text = (scores / f"{spec.name}.json").read_text()
        record = json.loads(text)
        assert list(record) == ["format", "run", "checkpoint", "seed", "evaluation", "frames", "metrics",
                                "error_by_range", "scored_with_commit", "trained_with_commit", "precision",
                                "scored_at", "config"]
        assert (record["run"], str(record["seed"]), str(record["frames"])) == (spec.name, row["seed"], row["frames"])
        assert record["evaluation"] == {"split": "synthetic", "data": tiny_world.name, "split_file": "",
                                        "max_images": 0, "test_frames": record["evaluation"]["test_frames"],
                                        "post_process": False, "eval_stereo": False}
        assert list(record["metrics"]) == list(c.COMPARE_COLUMNS)
        for column, value in record["metrics"].items():
            if row[column] == "nan":
                assert value is None, column
            else:
                assert value == pytest.approx(float(row[column]), rel=1e-5), column
        mine = [r for r in ranges if r["run"] == str(spec)]
        assert [r["range"] for r in record["error_by_range"]] == [r["range"] for r in mine]
        for stored, written in zip(record["error_by_range"], mine):
            for key in ("pixels", "pred_over_gt", "rmse", "sq_error_share"):
                if written[key] == "nan":
                    assert stored[key] is None
                else:
                    assert stored[key] == pytest.approx(float(written[key]), rel=1e-5, abs=1e-12), key
        assert record["config"]["data_path"] == tiny_world.name and record["config"]["run_dir"] == spec.name
        assert str(tiny_world.parent) not in text and str(spec.parent) not in text
        # the commit that trained the run and its precision, as 06 stored them beside its config
        assert record["scored_with_commit"] and record["trained_with_commit"] == record["scored_with_commit"]
        assert record["precision"] == "float32"


def test_scores_rebuild_the_run_folders_table(saved_scores, capsys):
    """--scores on the score folder (and on the files given one by one) writes the same markdown table
    and per-variant CSV as the run-folder mode, byte for byte, the same error-by-range rows, and says
    that it draws no figures."""
    out, scores, specs = saved_scores
    for given, folder in (([scores], out.parent / "rebuilt"),
                          ([scores / f"{s.name}.json" for s in specs], out.parent / "rebuilt_files")):
        code = compare().main([str(a) for a in ["--scores", *given, "--out", folder]])
        printed, err = capsys.readouterr()
        assert code == 0, err
        if len(given) == 1:   # a folder's files in name order: none, seed0, seed1
            expected = ["queries=none", "queries=self"]
            assert [r["variant"] for r in _csv_rows(folder / "compare_synthetic.csv")] == expected
            continue
        for name in ("compare_synthetic.md", "compare_synthetic.csv"):
            assert (folder / name).read_text() == (out / name).read_text(), name
        assert (folder / "compare_synthetic.md").read_text().split("\n\n")[0] in printed
        drop_run = [{k: v for k, v in r.items() if k != "run"} for r in _csv_rows(out / "compare_synthetic_ranges.csv")]
        assert [{k: v for k, v in r.items() if k != "run"} for r in
                _csv_rows(folder / "compare_synthetic_ranges.csv")] == drop_run
        assert "no figures" in printed and not list(folder.glob("*.png"))


def test_scores_refuse_mixed_evaluations_and_bad_files(saved_scores, tmp_path, capsys):
    """Score files of another split, or scored with other evaluation settings, are refused with one
    `error:` line naming the file and the field (exit 2); so are a missing path, a JSON that is not a
    score file, a score file without its fields, --scores without --out, and --scores beside --runs;
    no table is written."""
    import json
    out, scores, specs = saved_scores
    first = scores / "seed0.json"
    record = json.loads((scores / "seed1.json").read_text())
    bad = {}
    for name, change in (("eigen", {"split": "eigen"}), ("post", {"post_process": True})):
        bad[name] = tmp_path / f"{name}.json"
        bad[name].write_text(json.dumps({**record, "evaluation": {**record["evaluation"], **change}}))
    (tmp_path / "other.json").write_text('{"abs_rel": 0.1}')
    (tmp_path / "partial.json").write_text('{"format": 1, "run": "x"}')
    cases = [(["--scores", first, bad["eigen"], "--out", tmp_path / "t"], "eigen.json: scored with split='eigen'"),
             (["--scores", first, bad["post"], "--out", tmp_path / "t"], "post_process=True"),
             (["--scores", tmp_path / "missing", "--out", tmp_path / "t"], "missing"),
             (["--scores", tmp_path / "other.json", "--out", tmp_path / "t"], "other.json: not a score file"),
             (["--scores", tmp_path / "partial.json", "--out", tmp_path / "t"], "lacks seed, evaluation"),
             (["--scores", first], "--out"),
             (["--scores", first, "--runs", specs[0], "--out", tmp_path / "t"], "without --runs")]
    for argv, needle in cases:
        code = compare().main([str(a) for a in argv])
        err = capsys.readouterr().err
        assert code == 2, argv
        assert err.count("\n") == 1 and err.startswith("error: ") and needle in err, err
    assert not (tmp_path / "t").exists()
