"""compare_runs - several training runs scored on one test split: one table row per variant, seeds averaged.

Runs whose stored configs differ only in bookkeeping (BOOKKEEPING_FIELDS) are seeds of one variant
(docs/ablations.md). Run:
  python -m helpers.compare_runs --runs runs/sql_s0 runs/sql_s1 runs/noq_s0 runs/noq_s1 --out runs/ablation
  python -m helpers.compare_runs --scores docs/scores/sql_s*.json --out runs/ablation_from_scores
(--save_scores DIR writes one score file per run; --worlds: the zero-shot table, docs/zero_shot.md).
Tests: tests/test_compare_runs.py.
"""
import argparse
import glob
import importlib
import json
import math
import sys
import textwrap
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime
from pathlib import Path

import numpy as np

from helpers import figures                         # inverse depth in colour
from helpers import model_files                     # checkpoints -> DepthNet
from helpers import run_record                      # val.csv, the training fields removed since older runs
from helpers import synthetic_world                 # thin-structure masks, the mean-depth map
from helpers.distributed_training import choose_device  # --device
from helpers.cli import add_dataclass_flags, one_line  # the command line of every script

# A module name cannot start with a digit in an `import` statement: the numbered scripts load by name.
data = importlib.import_module("01_data")
bins = importlib.import_module("04_bins")
train = importlib.import_module("06_train")
evaluation = importlib.import_module("07_eval")


# Config fields that change only a run's random draws or bookkeeping: runs differing in these alone are
# seeds of one variant (data_path too: every run is scored on the same test split, with a note).
BOOKKEEPING_FIELDS = frozenset({
    "seed", "run_dir", "resume", "data_path", "split_dir", "device", "num_workers", "threads", "pin_memory",
    "persistent_workers", "channels_last", "small_map_convs", "speed_layer", "log_every", "save_every", "no_eval",
    "profile", "cache_mb", "val_every", "split_files", "keep_epochs", "commit", "precision", "threads_used"})

COMPARE_COLUMNS = evaluation.METRICS + ("thin_abs_rel",) + bins.INTERNALS_STATS
COMPARE_DIGITS = {"effective_rank": 2, "bins_99": 1}  # the others: 3 decimals, as in the paper's tables


def resolve_run(spec):
    """Checkpoint of one --runs entry: a run folder's best.pt (else its ckpt.pt) or a checkpoint file."""
    path = Path(spec)
    if path.is_dir():
        for name in ("best.pt", "ckpt.pt"):
            if (path / name).is_file():
                return path / name
        raise data.DataError(f"--runs {spec}: the folder holds neither best.pt nor ckpt.pt")
    if not path.is_file():
        raise data.DataError(f"--runs {spec}: no such run folder or checkpoint file")
    return path


def flat_config(config):
    """A stored training config as one flat dict: the model's fields beside the run's ("model.x" on a clash)."""
    flat = {k: v for k, v in config.items() if k != "model"}
    for k, v in config.get("model", {}).items():
        flat["model." + k if k in flat else k] = v
    return flat


def group_runs(configs):
    """(groups, labels): runs whose configs agree outside BOOKKEEPING_FIELDS share a group (a list of
    indices into configs, in the order given); a label names the fields that differ between the groups
    ("queries=none"), "default" for a single group. A field a run's older code lacked counts as today's
    default, smoothness_weight 0 ("the recipe's") as the weight 06 gave the run."""
    today = flat_config({**asdict(train.TrainConfig()), "model": asdict(bins.DepthNetConfig())})
    defaults = {**run_record.REMOVED_FIELDS, **bins.REMOVED_MODEL_FIELDS, **today}  # removed: old default
    stored = [k for c in configs for k in flat_config(c)]   # the fields the runs hold, in config order
    keys = [k for k in dict.fromkeys(stored) if k not in BOOKKEEPING_FIELDS]
    flats, by_signature = [], {}
    for i, config in enumerate(configs):
        flat = {**defaults, **flat_config(config)}
        if flat.get("smoothness_weight") == 0:
            flat["smoothness_weight"] = train.SMOOTHNESS_WEIGHT[bool(flat["use_stereo"])]
        flats.append({k: v for k, v in flat.items() if k in keys})
        by_signature.setdefault(repr([flat.get(k) for k in keys]), []).append(i)
    groups = list(by_signature.values())
    differing = [k for k in keys if len({repr(flats[g[0]].get(k)) for g in groups}) > 1]
    labels = [", ".join(f"{k}={flats[g[0]].get(k)}" for k in differing) or "default" for g in groups]
    return groups, labels


def mean_std(values):
    """(mean, sample standard deviation with ddof=1) of per-seed values; std is NaN for a single run."""
    values = np.asarray(values, np.float64)
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")


def student_t_p(t, df, steps=4000):
    """Two-sided P(|T| >= |t|) of Student's t with df degrees of freedom (df need not be whole): the
    density integrated from 0 to |t| by Simpson's rule (no scipy)."""
    x = np.linspace(0.0, abs(t), steps + 1)
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    density = np.exp(log_c - (df + 1) / 2 * np.log1p(x * x / df))
    weights = np.where(np.arange(steps + 1) % 2 == 1, 4.0, 2.0)
    weights[[0, -1]] = 1.0
    return float(max(0.0, 1 - 2 * (x[1] - x[0]) / 3 * (weights @ density)))


def welch(a, b):
    """Welch's t test of two samples of 2+ values: (mean(b) - mean(a), t, degrees of freedom, two-sided p);
    t, df and p are NaN where both samples have no spread."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    diff = float(np.mean(b) - np.mean(a))
    if va + vb == 0:
        return diff, float("nan"), float("nan"), float("nan")
    t = diff / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va * va / (len(a) - 1) + vb * vb / (len(b) - 1))
    return diff, t, float(df), student_t_p(t, df)


def welch_tables(runs, groups, labels, columns):
    """(rows, markdown) of every variant of 2+ seeds against the first variant: per column the difference
    of means and Welch's two-sided p; None where no pair of variants has 2+ seeds each."""
    if len(groups[0]) < 2:
        return None
    rows, body = [], []
    for members, label in zip(groups[1:], labels[1:]):
        if len(members) < 2:
            continue
        row, cells = {"variant": label, "against": labels[0]}, [label]
        for c in columns:
            diff, t, df, p = welch([runs[i][c] for i in groups[0]], [runs[i][c] for i in members])
            row.update({c + "_diff": diff, c + "_t": t, c + "_df": df, c + "_p": p})
            cells.append("-" if not np.isfinite(diff) else
                         f"{diff:+.{COMPARE_DIGITS.get(c, 3)}f}" + (f" (p {p:.2f})" if np.isfinite(p) else ""))
        rows.append(row)
        body.append(cells)
    header = [f"against {labels[0]}"] + list(columns)
    return (rows, _markdown([header] + body)) if rows else None


def _markdown(table):
    """A markdown table of rows of strings (the first row the header), columns padded to one width."""
    widths = [max(len(row[j]) for row in table) for j in range(len(table[0]))]
    md = ["| " + " | ".join(t.ljust(w) for t, w in zip(row, widths)) + " |" for row in table]
    md.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(md)


def densest_window(mask, height, width):
    """(top, left) of the height x width window (shrunk to the mask) of a [H, W] bool mask holding the
    most True pixels; ties go to the first in raster order."""
    H, W = mask.shape
    height, width = min(height, H), min(width, W)
    table = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))  # [H+1, W+1]
    counts = (table[height:, width:] - table[:-height, width:] - table[height:, :-width]
              + table[:-height, :-width])  # [H-height+1, W-width+1]: window counts by top-left corner
    top, left = np.unravel_index(np.argmax(counts), counts.shape)
    return int(top), int(left)


def score_run(model, config, cfg, device, lines, gts, thin):
    """(07's result dict plus bins.INTERNALS_STATS averaged over the frames, the predictions) of one run."""
    sums, count = dict.fromkeys(bins.INTERNALS_STATS, 0.0), [0]

    def add_internals(img):
        stats = bins.internals_stats(model, img)
        for k in sums:
            sums[k] += stats[k] * len(img)
        count[0] += len(img)
    loader = evaluation.test_loader(cfg, lines, int(config["height"]), int(config["width"]))
    preds, _ = evaluation.run_network(model, loader, cfg, device, on_batch=add_internals)
    result = evaluation.evaluate_predictions(gts, preds, cfg.split, *evaluation.scaling(cfg), thin)
    result.update({k: v / max(count[0], 1) for k, v in sums.items()})
    return result, preds


DEPTH_RANGES = ((0, 10), (10, 20), (20, 40), (40, 60), (60, 80))  # metres of ground truth


def errors_by_range(gts, preds, split, median_scaling=True, scale=1.0):
    """Per range of true depth, over the scored pixels of every frame: list of dicts of range, pixels
    (share), pred_over_gt (median ratio, < 1 = too near), rmse (metres) and sq_error_share."""
    true, pred = [], []
    for gt, p in zip(gts, preds):
        scored = evaluation.scored_pixels(gt, evaluation.resize_to(p, *gt.shape), split, median_scaling, scale)
        if scored is not None:
            true.append(scored[1])
            pred.append(scored[2])
    true, pred = np.concatenate(true), np.concatenate(pred)
    squared = (true - pred) ** 2
    rows = []
    for low, high in DEPTH_RANGES:
        inside = (true >= low) & (true < high)
        some = bool(inside.any())
        rows.append({"range": f"{low}-{high} m", "pixels": float(inside.mean()),
                     "pred_over_gt": float(np.median(pred[inside] / true[inside])) if some else float("nan"),
                     "rmse": float(np.sqrt(squared[inside].mean())) if some else float("nan"),
                     "sq_error_share": float(squared[inside].sum() / max(squared.sum(), 1e-12))})
    return rows


def _cell(value, column, std=None):
    """Table text of a value (+- its std); "-" for NaN (a variant without queries)."""
    if not np.isfinite(value):
        return "-"
    digits = COMPARE_DIGITS.get(column, 3)
    return f"{value:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None and np.isfinite(std) else "")


def compare_tables(runs, groups, labels, columns=None):
    """(aggregated rows, per-run rows, markdown table) of runs: dicts with "run", "seed" and every column."""
    columns = columns or COMPARE_COLUMNS
    per_run = [dict(runs[i], variant=labels[g]) for g, members in enumerate(groups) for i in members]
    aggregated = []
    for members, label in zip(groups, labels):
        row = {"variant": label, "n": len(members), "seeds": " ".join(str(runs[i]["seed"]) for i in members)}
        for c in columns:
            row[c + "_mean"], row[c + "_std"] = mean_std([runs[i][c] for i in members])
        aggregated.append(row)
    header = ["variant", "n"] + list(columns)
    body = [[r["variant"], str(r["n"])] + [_cell(r[c + "_mean"], c, r[c + "_std"]) for c in columns]
            for r in aggregated]
    return aggregated, per_run, _markdown([header] + body)


COMPARE_LEGEND = """\
Mean ± sample standard deviation (ddof 1) over the n runs (seeds) of each variant; every run scored on
the same test frames. thin_abs_rel: AbsRel pooled over thin-structure pixels. query_similarity: mean
cosine similarity of distinct queries (1 = all queries identical, collapsed). effective_rank: effective
rank of the cost volume V as a Q x (h*w) matrix (1 = one image in Q copies, Q = fully diverse).
bins_99: bins holding 99% of the mean probability mass (out of D). "-": the variant has no queries."""


WELCH_LEGEND = """\
Each variant of 2+ seeds against the first variant given: the difference of the means (this variant's
minus the first's) and, in brackets, Welch's t test, two-sided p (unequal variances, Welch-Satterthwaite
degrees of freedom; the t distribution integrated numerically). With 3 seeds against 3, p < 0.05 needs a
difference of 2.8 (equal spreads: 4 degrees of freedom) to 4.3 standard errors (one spread dominating: 2). The t values and degrees of freedom: the _welch.csv."""


def write_csv(path, rows, columns):
    """path as a CSV of the rows' columns: floats with 6 significant digits, no comma inside a cell."""
    def text(value):
        return (f"{value:.6g}" if isinstance(value, float) else str(value)).replace(",", ";")
    lines = [",".join(columns)] + [",".join(text(r[c]) for c in columns) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def save_compare_figure(images, gts, thin, columns, path, names):
    """Per frame (caption in names): a row of inputs, one of inverse depth, one of an enlarged crop
    around the densest thin structures. images: [3, H, W]; gts, thin: [H_gt, W_gt] (thin may be None);
    columns: (title, the frames' predictions or None for the GT)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    panel_w = 3.2  # inches per column
    aspect = gts[0].shape[0] / gts[0].shape[1]  # H / W (KITTI's GT sizes differ by a few pixels)
    ratios = [aspect, aspect, 0.4] * len(images)  # the crop is 1:2, shown a little smaller
    fig, axes = plt.subplots(3 * len(images), len(columns), squeeze=False, gridspec_kw={"height_ratios": ratios},
                             figsize=(panel_w * len(columns), panel_w * sum(ratios) + 0.6 * len(images)))
    for f, (img, gt) in enumerate(zip(images, gts)):
        H, W = gt.shape
        crop_h, crop_w = max(H // 2, 1), min(W, H)  # a 1:2 window: poles and signs are tall and thin
        mask = thin[f] if thin is not None else np.zeros(gt.shape, bool)
        if mask.any():
            top, left = densest_window(mask, crop_h, crop_w)
        else:  # no thin structure in this frame: the image centre
            top, left = (H - crop_h) // 2, (W - crop_w) // 2
        window = (slice(top, top + crop_h), slice(left, left + crop_w))
        for c, (title, preds) in enumerate(columns):
            if preds is None:  # ground truth: pixels without GT drawn as far as the farthest GT pixel
                colour = figures.colorize_inverse_depth(np.where(gt > 0, gt, gt.max()))
            else:
                colour = figures.colorize_inverse_depth(evaluation.resize_to(preds[f], H, W))
            ax_img, ax_depth, ax_crop = axes[3 * f: 3 * f + 3, c]
            ax_img.imshow(img.permute(1, 2, 0).numpy(), extent=(0, W, H, 0))  # drawn in GT pixel units
            ax_img.add_patch(Rectangle((left, top), crop_w, crop_h, fill=False, ec="cyan", lw=1))
            ax_img.set_title("\n".join(textwrap.wrap(title, 40)) if f == 0 else "", fontsize=7)  # long labels wrap
            ax_depth.imshow(colour)
            ax_crop.imshow(colour[window], interpolation="nearest")
            if mask[window].any():
                ax_crop.contour(mask[window].astype(float), levels=[0.5], colors="cyan", linewidths=0.7)
            caption = f"{names[f]}: thin structures (cyan), x{W / crop_w:.1f}"
            ax_crop.set_title(caption if c == 0 else "", fontsize=7)
            for ax in (ax_img, ax_depth, ax_crop):
                ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def read_val_log(run_dir):
    """{column: values} of a run folder's val.csv (step and the self-query diagnostics); {} without one."""
    return run_record.read_csv(Path(run_dir) / "val.csv", ("step",) + bins.INTERNALS_STATS)


def save_diagnostics_figure(logs, labels, path):
    """The self-query diagnostics over training: a panel per diagnostic, a line per run, a colour per
    variant. logs: [(variant index, read_val_log's dict)]."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    titles = {"query_similarity": "query similarity (mean pairwise cosine)",
              "effective_rank": "cost-volume effective rank", "bins_99": "bins holding 99% of the probability"}
    fig, axes = plt.subplots(1, len(titles), figsize=(4.2 * len(titles), 3.2), squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax, (column, title) in zip(axes[0], titles.items()):
        shown = set()
        for variant, log in logs:
            if column in log and not all(np.isnan(log[column])):
                ax.plot(log["step"], log[column], "o-", ms=3, color=colours(variant % 10),
                        label=None if variant in shown else labels[variant])
                shown.add(variant)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("training step", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_tables(runs, configs, out, stem, columns, legend, ranges=(), baseline=None):
    """Print and write <stem>.md / .csv / _runs.csv of the runs (dicts with "run", "seed", the columns,
    maybe "frames") grouped by their configs, the baseline row last; _ranges.csv of errors_by_range's
    rows with a "run" key. Returns (groups, labels, paths)."""
    groups, labels = group_runs(configs)
    for members, label in zip(groups, labels):
        seeds = [str(runs[i]["seed"]) for i in members]
        repeated = sorted({s for s in seeds if seeds.count(s) > 1})
        if repeated:  # the same run given twice, or a copy: its std is no seed spread
            print(f"   note: variant {label} has seed {', '.join(repeated)} more than once")
    rows = (runs, groups, labels)
    if baseline:
        rows = (runs + [baseline], groups + [[len(runs)]],
                labels + ["baseline: mean depth map of the training world"])
    aggregated, per_run, md = compare_tables(*rows, columns)
    print("\n" + md + "\n")
    out.mkdir(parents=True, exist_ok=True)
    stats = [c + s for c in columns for s in ("_mean", "_std")]
    run_columns = ["variant", "run", "seed"] + list(columns) + (["frames"] if "frames" in runs[0] else [])
    paths = [write_csv(out / f"{stem}.csv", aggregated, ["variant", "n", "seeds"] + stats),
             write_csv(out / f"{stem}_runs.csv", per_run, run_columns),
             out / f"{stem}.md"]
    paths[2].write_text(md + "\n\n" + legend + "\n")
    if ranges:
        range_columns = ["run", "range", "pixels", "pred_over_gt", "rmse", "sq_error_share"]
        paths.append(write_csv(out / f"{stem}_ranges.csv", ranges, range_columns))
    tests = welch_tables(runs, groups, labels, columns)
    if tests:  # how far each variant lies from the first beyond the seed noise
        print(tests[1] + "\n")
        welch_columns = ["variant", "against"] + [c + s for c in columns for s in ("_diff", "_t", "_df", "_p")]
        paths.append(write_csv(out / f"{stem}_welch.csv", tests[0], welch_columns))
        paths.append(out / f"{stem}_welch.md")
        paths[-1].write_text(tests[1] + "\n\n" + WELCH_LEGEND + "\n")
    return groups, labels, paths


def run_compare(options, device):
    """Score every run of options (a CompareConfig) on one test split; write the tables and figures."""
    paths = [resolve_run(spec) for spec in options.runs]
    names = file_names(options.runs, paths) if options.save_scores else []
    commit = run_record.code_commit() if options.save_scores else ""
    model, config = model_files.load_model(paths[0], device)
    cfg = evaluation_config(options)
    evaluation.defaults_from_checkpoint(config, cfg, paths[0].parent.resolve().parent / "compare")
    lines, gts, thin = evaluation.test_split(cfg)
    print(f"-> comparing {len(paths)} runs on {len(lines)} {cfg.split} frames from {cfg.data_path}"
          f"{', post-processed' if cfg.post_process else ''}; "
          f"{'stereo: x5.4' if cfg.eval_stereo else 'mono: median scaling'}")
    # The figure's frames: spread evenly over the split (neighbouring frames of a drive look alike).
    frames = sorted(set(np.linspace(0, len(lines) - 1, min(cfg.num_figure_frames, len(lines))).round().astype(int)))
    runs, configs, figure_preds, ranges = [], [], [], []
    evaluated = {"split": cfg.split, "data": Path(cfg.data_path).name, "split_file": Path(cfg.split_file).name,
                 "max_images": cfg.max_images, "test_frames": len(lines), "post_process": cfg.post_process,
                 "eval_stereo": cfg.eval_stereo}
    for index, (spec, path) in enumerate(zip(options.runs, paths)):
        if model is None:  # the first run's network was loaded above
            model, config = model_files.load_model(path, device)
        if config.get("use_stereo") and not cfg.eval_stereo:
            print(f"   hint: {spec} was trained with stereo; --eval_stereo scores every run at metric scale")
        if config.get("data_path") and Path(config["data_path"]).resolve() != Path(cfg.data_path).resolve():
            print(f"   note: {spec} was trained on {config['data_path']}; it is scored on {cfg.data_path}")
        result, preds = score_run(model, config, cfg, device, lines, gts, thin)
        runs.append({**{c: result[c] for c in COMPARE_COLUMNS}, "run": str(spec), "seed": config.get("seed", ""),
                     "frames": result["n"]})
        configs.append(config)
        figure_preds.append([preds[i] for i in frames])
        print(f"   {spec}: " + " ".join(f"{c} {result[c]:.4f}" for c in COMPARE_COLUMNS))
        by_range = errors_by_range(gts, preds, cfg.split, *evaluation.scaling(cfg))
        ranges.extend({"run": str(spec), **r} for r in by_range)
        print("     by true depth: " + " | ".join(f"{r['range']} pred/gt {r['pred_over_gt']:.2f} rmse "
                                                  f"{r['rmse']:.1f} ({100 * r['sq_error_share']:.0f}%)" for r in by_range))
        if options.save_scores:  # at once: a later run's failure loses no finished run's scores
            record = make_record(names[index], path.name, flat_config(config), commit, evaluation=evaluated,
                                 frames=result["n"], metrics={c: result[c] for c in COMPARE_COLUMNS},
                                 error_by_range=by_range)
            print(f"     scores: {write_record(record, options.save_scores)}")
        model = None  # one network in memory at a time
    out_dir = Path(cfg.out)
    groups, labels, written = write_tables(runs, configs, out_dir, f"compare_{cfg.split}", COMPARE_COLUMNS,
                                           COMPARE_LEGEND, ranges)
    # the figure: the first run's test frames at its input size, each variant's first seed
    dataset = evaluation.test_loader(cfg, lines, int(configs[0]["height"]), int(configs[0]["width"])).dataset
    images = [data.image_to_float(dataset[i]["color"][0]) for i in frames]
    columns = [("ground truth", None)] + [(labels[g], figure_preds[members[0]]) for g, members in enumerate(groups)]
    fig_path = out_dir / f"compare_{cfg.split}.png"
    save_compare_figure(images, [gts[i] for i in frames], [thin[i] for i in frames] if thin else None,
                        columns, fig_path, names=[f"test frame {i}" for i in frames])
    written.append(fig_path)
    logs = [(g, read_val_log(paths[i].parent)) for g, members in enumerate(groups) for i in members]
    if any(log for _, log in logs):
        diag_path = out_dir / "compare_diagnostics.png"
        save_diagnostics_figure(logs, labels, diag_path)
        written.append(diag_path)
    print("-> " + ", ".join(str(p) for p in written))


def compare_scores(options):
    """The tables (no figures) rebuilt from the score files of options.scores."""
    zero_shot = _read(score_paths(options.scores)[0]).get("kind") == "zero_shot"
    records = read_records(options.scores, zero_shot)
    configs, out = [r["config"] for r in records], Path(options.out)
    if zero_shot:
        print(f"-> {len(records)} zero-shot score files, worlds {', '.join(records[0]['worlds'])}")
        runs = [{**r["metrics"], "run": r["run"], "seed": r["seed"]} for r in records]
        baseline = {**records[0]["baseline"], "run": "mean training depth map", "seed": ""}
        written = write_zero_shot_tables(runs, configs, baseline, records[0]["worlds"], out)[2]
    else:
        shown = records[0]["evaluation"]
        print(f"-> {len(records)} score files of runs on {shown['test_frames']} {shown['split']} frames of "
              f"{shown['data']}{', post-processed' if shown['post_process'] else ''}; "
              f"{'stereo: x5.4' if shown['eval_stereo'] else 'mono: median scaling'}")
        # a column the file lacks (written before the column existed) shows as "-"
        runs = [{**{c: r["metrics"].get(c, float("nan")) for c in COMPARE_COLUMNS}, "run": r["run"],
                 "seed": r["seed"], "frames": r["frames"]} for r in records]
        ranges = [{"run": r["run"], **row} for r in records for row in r["error_by_range"]]
        stem = f"compare_{shown['split']}"
        written = write_tables(runs, configs, out, stem, COMPARE_COLUMNS, COMPARE_LEGEND, ranges)[2]
    print("   no figures from score files: the figures need each run's network and val.csv")
    print("-> " + ", ".join(str(p) for p in written))


# ---- Zero-shot: the same runs on worlds they never saw ----
ZERO_SHOT_METRICS = ("abs_rel", "a1", "thin_abs_rel")  # per world


def world_name(folder):
    """A synthetic world's style (from its marker file; "default" for the world of the default run)."""
    marker = Path(folder) / data.SYNTH_MARKER
    try:
        return json.loads(marker.read_text()).get("style", "default")
    except (OSError, ValueError):
        raise data.DataError(f"--worlds {folder}: not a synthetic world (no readable {data.SYNTH_MARKER})") from None


def zero_shot_row(row, per_world, predictions):
    """row with ZERO_SHOT_METRICS per world (median scaling, the paper's zero-shot protocol) of the
    predictions (one list per world) and the mean AbsRel increase off the first world."""
    for (name, _, _, gts, thin), preds in zip(per_world, predictions):
        result = evaluation.evaluate_predictions(gts, preds, "synthetic", True, 1.0, thin)
        row.update({f"{name} {m}": result[m] for m in ZERO_SHOT_METRICS})
    base = row[f"{per_world[0][0]} abs_rel"]
    row["abs_rel increase"] = float(np.mean([row[f"{w} abs_rel"] / base - 1 for w, *_ in per_world[1:]]))
    return row


def run_zero_shot(options, device):
    """Score every run on every world of options.worlds, and the mean depth map of the first run's
    training world as a baseline; write zero_shot.md / .csv / _runs.csv / .png."""
    paths = [resolve_run(spec) for spec in options.runs]
    names = file_names(options.runs, paths) if options.save_scores else []
    worlds = [(world_name(w), Path(w)) for w in options.worlds]
    first_config = model_files.load_model(paths[0], device)[1]
    train_cfg = evaluation_config(options)
    evaluation.defaults_from_checkpoint(first_config, train_cfg, Path(options.out or "."))
    train_lines = evaluation.split_lines(replace(train_cfg, split="synthetic"), "train")
    mean_map = synthetic_world.mean_training_depth(train_cfg.data_path, train_lines)  # [H, W]
    per_world = []                                                 # (name, cfg, lines, gts, thin)
    for name, folder in worlds:
        cfg = evaluation_config(options)
        cfg.data_path, cfg.split, cfg.data, cfg.eval_stereo = str(folder), "synthetic", "synthetic", False
        evaluation.defaults_from_checkpoint(first_config, cfg, folder)
        lines = evaluation.split_lines(cfg)
        per_world.append((name, cfg, lines, evaluation.load_ground_truth(cfg, lines),
                          synthetic_world.load_thin_masks(cfg.data_path, lines)))
        print(f"-> world {name}: {len(lines)} test frames in {folder}")
    world_names = [name for name, *_ in per_world]
    columns = zero_shot_columns(world_names)
    runs, configs, figure = [], [], []
    frame = len(per_world[0][2]) // 2                             # the figure's test frame, in every world
    for spec, path in zip(options.runs, paths):
        model, config = model_files.load_model(path, device)
        size = int(config["height"]), int(config["width"])
        preds = [evaluation.run_network(model, evaluation.test_loader(cfg, lines, *size), cfg, device)[0]
                 for _, cfg, lines, _, _ in per_world]
        row = zero_shot_row({"run": str(spec), "seed": config.get("seed", "")}, per_world, preds)
        runs.append(row)
        configs.append(config)
        figure.append([pred[min(frame, len(pred) - 1)] for pred in preds])
        print(f"   {spec}: " + " ".join(f"{w} {row[f'{w} abs_rel']:.3f}" for w in world_names))
    baseline = zero_shot_row({"run": "mean training depth map", "seed": ""}, per_world,
                             [[mean_map] * len(gts) for _, _, _, gts, _ in per_world])
    if options.save_scores:
        commit = run_record.code_commit()
        for index, (row, config) in enumerate(zip(runs, configs)):
            record = make_record(names[index], paths[index].name, flat_config(config), commit,
                                 kind="zero_shot", worlds=world_names, metrics={c: row[c] for c in columns},
                                 baseline={c: baseline[c] for c in columns})
            print(f"     zero-shot scores: {write_record(record, options.save_scores)}")
    out = Path(options.out) if options.out else Path(options.runs[0]).resolve().parent / "zero_shot"
    groups, labels, written = write_zero_shot_tables(runs, configs, baseline, world_names, out)
    save_zero_shot_figure(per_world, frame, figure, groups, labels, configs, out / "zero_shot.png")
    print("-> " + ", ".join(str(p) for p in written + [out / "zero_shot.png"]))


def zero_shot_columns(worlds):
    return [f"{w} {m}" for w in worlds for m in ZERO_SHOT_METRICS] + ["abs_rel increase"]


def write_zero_shot_tables(runs, configs, baseline, worlds, out):
    """write_tables for zero_shot.md / .csv / _runs.csv; worlds: style names, the training world first."""
    legend = (f"Zero-shot: every run trained on the {worlds[0]} world, scored on the test drives of each "
              f"world with per-image median scaling in every column (the paper's zero-shot protocol). "
              f"abs_rel increase: mean over the other worlds of AbsRel / AbsRel on {worlds[0]} - 1, per "
              f"run. Mean ± sample std over the n seeds of each variant.")
    return write_tables(runs, configs, out, "zero_shot", zero_shot_columns(worlds), legend, baseline=baseline)


def save_zero_shot_figure(per_world, frame, predictions, groups, labels, configs, path):
    """One row per world (the same test frame): input, ground truth, the first seed of each variant."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    columns = 2 + len(groups)
    fig, axes = plt.subplots(len(per_world), columns, figsize=(3.2 * columns, 1.25 * len(per_world) + 0.4),
                             squeeze=False)
    for r, (name, cfg, lines, gts, _) in enumerate(per_world):
        f = min(frame, len(lines) - 1)
        config = configs[0]
        sample = evaluation.test_loader(cfg, lines[f:f + 1], int(config["height"]), int(config["width"])).dataset[0]
        gt = gts[f]
        panels = [(data.image_to_float(sample["color"][0]).permute(1, 2, 0).numpy(), f"{name}: input"),
                  (figures.colorize_inverse_depth(np.where(gt > 0, gt, gt.max())), "ground truth")]
        panels += [(figures.colorize_inverse_depth(evaluation.resize_to(predictions[members[0]][r], *gt.shape)),
                    labels[g]) for g, members in enumerate(groups)]
        for ax, (image, title) in zip(axes[r], panels):
            ax.imshow(image)
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ---- Score files: one small JSON per run, so that tables outlive the checkpoints ----
FORMAT = 1  # bumped when a field changes meaning; a reader refuses files of another format
DATA_PATH_FIELDS = ("data_path", "split_dir")   # kept by their last component: no trace of the machine
# relative paths stay as given (they can tell two variants apart), absolute ones keep their last component
OTHER_PATH_FIELDS = ("train_files", "val_files", "run_dir", "resume", "init_from", "pose_init")
# must agree for two runs to share one table
EVALUATION_FIELDS = ("split", "data", "split_file", "max_images", "test_frames", "post_process", "eval_stereo")
READ_FIELDS = ("run", "seed", "evaluation", "frames", "metrics", "error_by_range", "config")


def portable_config(flat):
    """A flattened training config with its paths made machine-independent."""
    out = dict(flat)   # same field order: variant labels name the differing fields in this order
    for key in DATA_PATH_FIELDS:
        if out.get(key):
            out[key] = Path(out[key]).name
    for key in OTHER_PATH_FIELDS:
        if out.get(key) and Path(out[key]).is_absolute():
            out[key] = Path(out[key]).name
    if isinstance(out.get("split_files"), dict):
        out["split_files"] = {k: Path(v).name for k, v in out["split_files"].items()}
    return out


def make_record(run, checkpoint, config, commit, kind=None, **body):
    """One run's score file as a dict, in the key order it is written in; config: flattened; body: the
    evaluation, frames, metrics and error_by_range (zero-shot, kind="zero_shot": worlds, metrics and
    baseline). trained_with_commit and precision are null for runs of older code."""
    return {"format": FORMAT, **({"kind": kind} if kind else {}), "run": run, "checkpoint": checkpoint,
            "seed": config.get("seed", ""), **body, "scored_with_commit": commit,
            "trained_with_commit": config.get("commit"), "precision": config.get("precision"),
            "scored_at": datetime.now().astimezone().isoformat(timespec="seconds"),
            "config": portable_config(config)}


def file_names(specs, checkpoints):
    """Each run's score file name: its folder's, <folder>_<file stem> for a checkpoint file. DataError
    (before any scoring) when two runs would share one."""
    names = [Path(spec).name if Path(spec).is_dir() else f"{path.parent.name}_{path.stem}"
             for spec, path in zip(specs, checkpoints)]
    for spec, name in zip(specs, names):
        if names.count(name) > 1:
            raise data.DataError(f"--save_scores: two runs would write {name}.json ({spec} and another); "
                                 f"score them in separate calls with separate folders")
    return names


def _json_ready(value):
    """Floats as plain numbers, a non-finite one (NaN: a variant without queries) as null."""
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, float) or type(value).__name__.startswith("float"):   # numpy floats too
        return float(value) if math.isfinite(value) else None
    return value


def write_record(record, folder):
    """FOLDER/<run>.json (the folder made if missing); returns its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{record['run']}.json"
    path.write_text(json.dumps(_json_ready(record), indent=1, allow_nan=False) + "\n")
    return path


def score_paths(specs):
    """The score files of --scores entries (a file, a folder of *.json, or a glob), each once, in order."""
    found = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            matches = sorted(path.glob("*.json"))
        elif path.is_file():
            matches = [path]
        elif glob.has_magic(spec):
            matches = sorted(Path(p) for p in glob.glob(spec))
        else:
            raise data.DataError(f"--scores {spec}: no such score file or folder")
        if not matches:
            raise data.DataError(f"--scores {spec}: holds no score file (*.json)")
        found.extend(matches)
    return list(dict.fromkeys(found))


def _nan_for_null(value):
    """A stored number back as a float (null -> NaN); text (a range's name) as it is."""
    return float("nan") if value is None else value


def _read(path):
    """One score file as a dict; DataError naming the file when it is unreadable or of another format."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise data.DataError(f"--scores {path}: not a readable score file ({err})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise data.DataError(f"--scores {path}: not a score file of format {FORMAT} "
                             f"(written by compare_runs --save_scores)")
    return record


def read_records(specs, zero_shot=False):
    """The score files of --scores, of one kind and one evaluation (test split and settings, or list of
    worlds), null numbers back as NaN; DataError naming the file otherwise."""
    records = []
    for path in score_paths(specs):
        record = _read(path)
        if (record.get("kind") == "zero_shot") != zero_shot:
            raise data.DataError(f"--scores {path}: {'not ' if zero_shot else ''}a zero-shot score file; "
                                 f"give those of one kind")
        if zero_shot:
            if records and record["worlds"] != records[0]["worlds"]:
                raise data.DataError(f"--scores {path}: scored on the worlds {record['worlds']}, the first "
                                     f"file ({records[0]['path']}) on {records[0]['worlds']}: one table, "
                                     f"one list of worlds")
            record["baseline"] = {k: _nan_for_null(v) for k, v in record["baseline"].items()}
        else:
            missing = [k for k in READ_FIELDS if k not in record]
            if missing:
                raise data.DataError(f"--scores {path}: the score file lacks {', '.join(missing)}")
            record["error_by_range"] = [{k: _nan_for_null(v) for k, v in r.items()}
                                        for r in record["error_by_range"]]
            first, here = (records[0] if records else record)["evaluation"], record["evaluation"]
            differ = [k for k in EVALUATION_FIELDS if first.get(k) != here.get(k)]
            if differ:
                raise data.DataError(
                    f"--scores {path}: scored with " + ", ".join(f"{k}={here.get(k)!r}" for k in differ)
                    + f", the first file ({records[0]['path']}) with "
                    + ", ".join(f"{k}={first.get(k)!r}" for k in differ)
                    + ": one table holds runs of one test split and one evaluation")
        record["metrics"] = {k: _nan_for_null(v) for k, v in record["metrics"].items()}
        record["path"] = str(path)
        records.append(record)
    return records


# ---- Command line ----
@dataclass
class CompareConfig:
    """The flags of `python -m helpers.compare_runs`."""
    runs: list = field(default_factory=list)  # run folders (their best.pt, else ckpt.pt) or checkpoint files
    out: str = ""  # output folder ("" = compare/ next to the first run folder)
    data_path: str = ""  # dataset root ("" = the first run's)
    split: str = ""  # eigen | eigen_benchmark | synthetic ("" = the first run's data kind)
    split_file: str = ""  # a custom list of "folder frame side" lines; GT kind still set by --split
    split_dir: str = ""  # folder of downloaded split lists ("" = the first run's)
    img_ext: str = ""  # image extension ("" = the first run's)
    batch_size: int = 4  # images per forward pass
    num_workers: int = 0  # DataLoader workers
    post_process: bool = False  # flip averaging with 5% border ramps (Monodepth2 / official)
    eval_stereo: bool = False  # metric scale x5.4 for every run instead of per-image median scaling
    max_images: int = 0  # score only the first N frames (0 = all)
    num_figure_frames: int = 4  # test frames in the comparison figure
    worlds: list = field(default_factory=list)  # synthetic worlds (the training one first): zero-shot table
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    save_scores: str = ""  # also write each run's scores (with --worlds: its zero-shot scores) to DIR/<run>.json
    scores: list = field(default_factory=list)  # instead of --runs: score files, folders of them or globs


def evaluation_config(options):
    """07_eval's EvalConfig with the fields a comparison shares with it."""
    shared = {f.name for f in fields(evaluation.EvalConfig)} & {f.name for f in fields(CompareConfig)}
    return evaluation.EvalConfig(**{k: getattr(options, k) for k in shared if k != "runs"})


def main(argv=None):
    """Parse, compare; returns the exit status (0 ok, 2 bad input with one `error:` line)."""
    parser = argparse.ArgumentParser(description="Score several training runs on one test split: one table "
                                                 "row per variant, mean +- std over its seeds.")
    add_dataclass_flags(parser, CompareConfig)
    options = CompareConfig(**vars(parser.parse_args(argv)))
    try:
        if options.scores:
            if options.runs or options.worlds or options.save_scores:
                raise data.DataError("--scores builds the table from score files alone: give it without "
                                     "--runs, --worlds and --save_scores")
            if not options.out:
                raise data.DataError("--scores needs --out DIR: the folder the tables are written to")
            compare_scores(options)
            return 0
        if not options.runs:
            raise data.DataError("give the runs to compare: --runs RUN [RUN ...] (or their score files: --scores)")
        device = choose_device(options.device)
        if options.worlds:
            run_zero_shot(options, device)
        else:
            run_compare(options, device)
    except (data.DataError, ValueError, OSError) as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
