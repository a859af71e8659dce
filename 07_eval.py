"""07 - eval: the Eigen protocol, the synthetic test split, baselines, figures, and inference.

Concept: how monocular depth is scored (paper Sec. 4, Tables 1-2; the protocol of Eigen et al. 2014
as coded by Monodepth2, github.com/nianticlabs/monodepth2, which SQLDepth's official code,
github.com/hisfog/SfMNeXt-Impl, reuses unchanged):

1. predict depth at the network's input size (optionally `--post_process`: average with the
   flipped-back prediction of the mirrored image, with 5% ramps at the borders);
2. resize the prediction to the ground-truth size (bilinear; Monodepth2 resizes disparity and then
   inverts it, the official SQLDepth code and we resize the depth itself);
3. keep the pixels with 1e-3 < gt < 80 inside the Garg crop (eigen; eigen_benchmark keeps every
   pixel with gt > 0, as Monodepth2 does);
4. monocular models predict depth up to scale: multiply by median(gt) / median(pred) per image
   (Exercise 7.1); stereo-trained ("MS") models are scored at metric scale instead, x5.4
   (`--eval_stereo`, because training used a stereo baseline of 0.1 while KITTI's is 0.54 m);
5. clamp to [1e-3, 80] and compute seven metrics per image (Exercise 7.2), then average.

Splits: `eigen` (697 frames, velodyne GT exported once with 01_data.export_gt_depth),
`eigen_benchmark` (652 frames, KITTI's improved GT png), `synthetic` (dense GT of 01's synthetic
world, plus AbsRel on thin-structure pixels), and `--split_file` for any list in KITTI layout.

Also: `--baselines` (mean training depth map, untrained network), `--figures` (predictions and the
SQL internals: cost-volume slices and bin distributions), `--predict PATH` (depth for your images:
colour PNG, .npy, optional .ply point cloud), `--official DIR` (the released SQLDepth weights through
04_bins.convert_official_checkpoint), `--compare RUN RUN ...` (several runs on one test split, one
table row per variant with mean +- std over its seeds, plus 04's query/bin diagnostics and a figure).

Leakage: 06_train records the drives of its train and val lists in the checkpoint. When they include
drives of the evaluated lines, a WARNING line heads the printed and the markdown table and the
model's row is marked, so a leaked number is never read as a clean one (a checkpoint without the
record, e.g. the official weights: the overlap is reported as unknown).

Deviation from the official code: the official SQLDepth evaluation passes its DEPTH output (named
"disp") through Monodepth2's disparity post-processing unchanged; we do the same thing on purpose
(flip-average of depth, not of 1/depth), so our numbers are comparable with the released ones.
The untrained-network baseline is built with pretrained=None (truly untrained, and no download).

The metrics come first; below the engineering banner: loading models, data and ground truth,
tables, pictures, `--compare`, `--predict` with PLY point clouds, and the command line.
Uses: 01_data (splits, GT, KittiRaw), 04_bins (DepthNet, official conversion). Used by: 06_train
(runs this file as a subprocess at the end of the default run).
Run: `python 07_eval.py --checkpoint runs/RUN/best.pt [--baselines --figures]`,
`python 07_eval.py --compare runs/A_s0 runs/A_s1 runs/B_s0 runs/B_s1 --out runs/ablation`.
Tests: tests/test_07_eval.py.
"""
import argparse
import csv
import hashlib
import importlib
import os
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cli import add_dataclass_flags  # the command line of every script (cli.py)

# A module name cannot start with a digit in an `import` statement, so the numbered scripts are
# loaded by name; the alias is the file name without its number.
data = importlib.import_module("01_data")
bins = importlib.import_module("04_bins")

MIN_DEPTH, MAX_DEPTH = 1e-3, 80.0  # KITTI evaluation range, metres
STEREO_SCALE_FACTOR = 5.4  # KITTI baseline 0.54 m / training baseline 0.1 (Monodepth2)
GARG_CROP = (0.40810811, 0.99189189, 0.03594771, 0.96405229)  # rows top, bottom; cols left, right
METRICS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")  # the paper's column order
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm")


# ---- Metrics ----
def median_scale(gt, pred):
    """Per-image median scaling of a scale-ambiguous monocular prediction.

    Exercise 7.1: given the valid GT and predicted depths of ONE image, 1-D arrays [N], return
    (pred * ratio, ratio) with ratio = median(gt) / median(pred), so the scaled prediction has the
    same median as the GT. Hint: the ratio multiplies the prediction (not divides it).
    """
    ratio = float(np.median(gt) / np.median(pred))
    return pred * ratio, ratio


def compute_depth_errors(gt, pred):
    """The seven standard depth metrics between matching valid depths.

    Exercise 7.2: implement the metrics of Eigen et al. (paper Table 1) on 1-D float arrays gt, pred
    [N] of positive depths in metres, returning a dict with keys abs_rel = mean(|gt-pred|/gt),
    sq_rel = mean((gt-pred)^2/gt), rmse = sqrt(mean((gt-pred)^2)), rmse_log = sqrt(mean((ln gt -
    ln pred)^2)) and a1, a2, a3 = fraction of pixels with max(gt/pred, pred/gt) < 1.25, 1.25^2, 1.25^3.
    Hint: natural logarithms, and a strict "<" for the thresholds.
    """
    gt, pred = np.asarray(gt, np.float64), np.asarray(pred, np.float64)
    ratio = np.maximum(gt / pred, pred / gt)
    return {
        "abs_rel": float(np.mean(np.abs(gt - pred) / gt)),
        "sq_rel": float(np.mean((gt - pred) ** 2 / gt)),
        "rmse": float(np.sqrt(np.mean((gt - pred) ** 2))),
        "rmse_log": float(np.sqrt(np.mean((np.log(gt) - np.log(pred)) ** 2))),
        "a1": float(np.mean(ratio < 1.25)),
        "a2": float(np.mean(ratio < 1.25 ** 2)),
        "a3": float(np.mean(ratio < 1.25 ** 3)),
    }


def garg_crop_mask(height, width):
    """Boolean [H, W] mask of the Garg et al. crop used with the eigen split (fractions of the size)."""
    top, bottom, left, right = (np.array(GARG_CROP) * [height, height, width, width]).astype(np.int32)
    mask = np.zeros((height, width), bool)
    mask[top:bottom, left:right] = True
    return mask


def evaluation_mask(gt, split):
    """Pixels that count: 1e-3 < gt < 80 (+ Garg crop for eigen); eigen_benchmark: gt > 0 (Monodepth2)."""
    if split == "eigen_benchmark":
        return gt > 0
    mask = (gt > MIN_DEPTH) & (gt < MAX_DEPTH)
    return mask & garg_crop_mask(*gt.shape) if split == "eigen" else mask


def post_process_depth(depth, depth_flipped_back):
    """Monodepth(1)'s flip post-processing with 5% border ramps, applied to depth as the official code does.

    depth, depth_flipped_back: [B, 1, h, w]; the second is the prediction for the mirrored image,
    mirrored back. Near the left border the mirrored prediction is used (its view of that border is
    not disoccluded), near the right border the direct one; in the middle their mean. Weights: 1 on
    the outer 5% of the width, a linear ramp to 0 at 10%.
    """
    w = depth.shape[-1]
    x = torch.linspace(0, 1, w, device=depth.device, dtype=depth.dtype)  # [w]
    left = 1.0 - torch.clamp(20 * (x - 0.05), 0, 1)  # 1 near the left border, 0 after 10%
    right = left.flip(0)  # mirror image of the left ramp
    mean = 0.5 * (depth + depth_flipped_back)
    return right * depth + left * depth_flipped_back + (1.0 - left - right) * mean


def resize_to(pred, height, width):
    """Bilinear resize of a [h, w] numpy prediction to (height, width) (cv2.resize's half-pixel rule)."""
    if pred.shape == (height, width):
        return pred
    t = torch.from_numpy(np.ascontiguousarray(pred, np.float32))[None, None]  # [1, 1, h, w]
    return F.interpolate(t, size=(height, width), mode="bilinear", align_corners=False)[0, 0].numpy()


def evaluate_predictions(gts, preds, split, median_scaling=True, scale=1.0, thin_masks=None):
    """Score predictions against GT per image, then average (steps 2-5 of the module docstring).

    gts: list of [H_i, W_i] GT depth (0 = none); preds: list of [h, w] predicted depth at any size;
    thin_masks: optional list of [H_i, W_i] bool masks of thin structures. Returns a dict with the
    seven metrics, "n" (frames scored), "ratios" (median-scaling ratios) and "thin_abs_rel"
    (pooled over every valid thin pixel of every frame; NaN without masks or thin pixels).
    """
    errors, ratios, thin_err, thin_n = [], [], 0.0, 0
    for i, (gt, pred) in enumerate(zip(gts, preds)):
        pred = resize_to(pred, *gt.shape)
        mask = evaluation_mask(gt, split)
        if not mask.any():
            continue  # a frame without valid GT cannot be scored (Monodepth2 would produce NaN)
        gt_valid, pred_valid = gt[mask], pred[mask] * scale  # [N]
        ratio = 1.0
        if median_scaling:
            pred_valid, ratio = median_scale(gt_valid, pred_valid)
            ratios.append(ratio)
        pred_valid = np.clip(pred_valid, MIN_DEPTH, MAX_DEPTH)
        errors.append(compute_depth_errors(gt_valid, pred_valid))
        if thin_masks is not None:
            thin = thin_masks[i] & mask
            if thin.any():
                thin_pred = np.clip(pred[thin] * scale * ratio, MIN_DEPTH, MAX_DEPTH)
                thin_err += float(np.sum(np.abs(gt[thin] - thin_pred) / gt[thin]))
                thin_n += int(thin.sum())
    if not errors:
        raise data.DataError(f"no frame of the {split} split has valid ground truth")
    result = {k: float(np.mean([e[k] for e in errors])) for k in METRICS}
    result.update(n=len(errors), ratios=np.array(ratios),
                  thin_abs_rel=thin_err / thin_n if thin_n else float("nan"))
    return result


def scaling(cfg):
    """(median_scaling, scale) of evaluate_predictions: per-image median scaling for monocular models,
    or metric scale x5.4 with --eval_stereo."""
    return (False, STEREO_SCALE_FACTOR) if cfg.eval_stereo else (True, 1.0)


def print_ratio_stats(ratios):
    """Median of the median-scaling ratios and their spread (std of ratio / median), as Monodepth2 prints."""
    if len(ratios):
        med = float(np.median(ratios))
        print(f"   median scaling ratios | median {med:.3f} | std/median {np.std(ratios / med):.3f}")


@torch.no_grad()
def predict_depth(model, images, post_process=False):
    """Network depth [B, h, w] numpy for images [B, 3, H, W] in [0, 1]; h, w = H/2, W/2."""
    if post_process:  # one pass on the image and its mirror, like Monodepth2
        both = model(torch.cat([images, images.flip(-1)], 0))  # [2B, 1, h, w]
        depth = post_process_depth(both[: len(images)], both[len(images):].flip(-1))
    else:
        depth = model(images)  # [B, 1, h, w]
    return depth[:, 0].float().cpu().numpy()


# ==============================================================================================
# ---- Engineering: not needed to understand SQLDepth ----
# Loading models, data and ground truth, tables, pictures, run comparison (--compare), inference on
# your own images (--predict, PLY) and the command line.
# ==============================================================================================
# ---- Models ----
def _one_line(err):
    """First line of an exception message (PyTorch's state-dict errors span many lines)."""
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _build_and_load(model_cfg, state_dict, source, device):
    """A DepthNet from a config dict, strictly loaded; mismatches become one DataError line."""
    try:
        model = bins.depthnet_from_config(model_cfg, state_dict)
    except (RuntimeError, TypeError, ValueError, KeyError) as err:
        raise data.DataError(f"{source} does not match the architecture of its config: {_one_line(err)}") from None
    return model.to(device).eval()


def load_model(checkpoint_path, device):
    """Rebuild DepthNet from ckpt["config"]["model"] and load ckpt["model"] strictly (04_bins.load_checkpoint).

    Returns (model in eval mode on device, the checkpoint's TrainConfig dict).
    """
    try:
        model, config = bins.load_checkpoint(checkpoint_path)
    except ValueError as err:
        raise data.DataError(str(err)) from None
    return model.to(device).eval(), config


def load_official(folder, device):
    """The released official encoder.pth + depth.pth, converted by 04_bins into our DepthNet.

    Returns (model, a config dict shaped like ours: model, height, width, use_stereo, data).
    """
    folder = Path(folder)
    sds = []
    for name in ("encoder.pth", "depth.pth"):
        if not (folder / name).is_file():
            raise data.DataError(f"official checkpoint file {folder / name} not found")
        try:
            sds.append(torch.load(folder / name, map_location="cpu", weights_only=True))
        except Exception as err:
            raise data.DataError(f"{folder / name} is not a readable checkpoint ({_one_line(err)})") from None
    encoder_sd, depth_sd = sds
    try:
        state_dict = bins.convert_official_checkpoint(encoder_sd, depth_sd)
        model_cfg = bins.config_from_official(encoder_sd, depth_sd)
    except (KeyError, ValueError, RuntimeError) as err:
        raise data.DataError(f"{folder} does not hold an official SQLDepth checkpoint: {_one_line(err)}") from None
    config = {"model": asdict(model_cfg), "data": "kitti", "use_stereo": bool(encoder_sd.get("use_stereo", False)),
              "height": int(encoder_sd.get("height", 192)), "width": int(encoder_sd.get("width", 640))}
    return _build_and_load(config["model"], state_dict, folder, device), config


# ---- Data and ground truth ----
def split_lines(cfg, kind="test"):
    """Split lines (folder, frame, side) of --split_file, or of the named split's `kind` list."""
    if cfg.split_file and kind == "test":
        path = cfg.split_file
    else:
        path = data.get_split_file(cfg.split, kind, cfg.split_dir or None, data_path=cfg.data_path,
                                   log=lambda line: print("   " + line))
    lines = data.read_split(path)
    return lines[: cfg.max_images] if cfg.max_images and kind == "test" else lines


def load_ground_truth(cfg, lines):
    """List of [H, W] float32 GT depths for the lines: eigen from an .npz, others from pngs."""
    if cfg.split != "eigen":
        gts = []
        for folder, frame, side in lines:
            path = data.gt_png_path(cfg.data_path, folder, frame, side)
            if not path.is_file():
                raise data.DataError(f"ground-truth depth {path} not found")
            gts.append(data.read_depth_png(path))
        return gts
    if cfg.gt_path:
        path = Path(cfg.gt_path)
    else:  # velodyne GT is slow to project: export once into the data folder, named after the list
        tag = "eigen" if not cfg.split_file else "eigen_" + hashlib.sha1(Path(cfg.split_file).read_bytes()).hexdigest()[:10]
        path = Path(cfg.data_path) / f"gt_depths_{tag}.npz"
        if not path.is_file():
            print(f"-> exporting velodyne ground truth of {len(lines)} frames to {path}")
            data.export_gt_depth(cfg.data_path, split_lines(replace(cfg, max_images=0)), path, source="velodyne")
    if not path.is_file():
        raise data.DataError(f"ground-truth file {path} not found")
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = [data.gt_depth_key(*line) for line in lines]
            missing = [k for k in keys if k not in npz.files]
            if missing:
                raise data.DataError(f"{path} has no ground truth for {len(missing)} split lines (first: {missing[0]})"
                                     f"; export it with 01_data.export_gt_depth")
            return [npz[k].astype(np.float32) for k in keys]
    except ValueError as err:  # e.g. Monodepth2's gt_depths.npz, a pickled object array
        raise data.DataError(f"{path} is not an .npz of 01_data.export_gt_depth ({_one_line(err)})") from None


def load_thin_masks(cfg, lines):
    """Thin-structure masks [H, W] bool of the synthetic world (None when the files are absent)."""
    import synthetic_world
    masks = []
    for folder, frame, _ in lines:
        path = Path(synthetic_world.synthetic_thin_mask_path(cfg.data_path, folder, frame))
        if not path.is_file():
            return None
        masks.append(np.array(Image.open(path)) > 127)
    return masks


def test_loader(cfg, lines, height, width):
    """DataLoader of the test frames resized to the network input (KittiRaw, frame 0 only)."""
    dataset = data.KittiRaw(cfg.data_path, lines, height, width, frame_ids=(0,), is_train=False,
                            img_ext=cfg.img_ext)
    return torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, shuffle=False,
                                       num_workers=cfg.num_workers, collate_fn=data.collate)


def run_network(model, loader, cfg, device, keep_images=0, on_batch=None):
    """Predictions (list of [h, w] depth) for every test frame, plus the first keep_images inputs.

    on_batch(img), if given, sees every input batch [B, 3, H, W] too (the comparison's statistics).
    """
    preds, images = [], []
    for batch in loader:
        img = data.image_to_float(batch["color"][0].to(device))  # [B, 3, H, W] in [0, 1]
        preds.extend(predict_depth(model, img, cfg.post_process))
        images.extend(img[: max(0, keep_images - len(images))].cpu())
        if on_batch is not None:
            on_batch(img)
    return preds, images


def mean_training_depth(cfg):
    """Baseline: the per-pixel mean of the dense training GT maps of the synthetic world, ignoring zeros [H, W]."""
    total = count = None
    train = replace(cfg, split="synthetic")  # a custom split file may sit on a synthetic tree too
    for folder, frame, side in split_lines(train, "train"):
        path = data.gt_png_path(cfg.data_path, folder, frame, side)
        if not path.is_file():
            continue
        gt = data.read_depth_png(path).astype(np.float64)
        total = gt if total is None else total + gt  # zeros add nothing
        count = (gt > 0).astype(np.float64) if count is None else count + (gt > 0)
    if total is None:
        raise data.DataError(f"no training ground truth under {cfg.data_path} for the mean-depth baseline")
    fill = total.sum() / max(count.sum(), 1.0)  # never-observed pixels: the global mean depth
    return np.where(count > 0, total / np.maximum(count, 1.0), fill).astype(np.float32)


# ---- Tables ----
LEAK_MARK = " [trained on test drives]"  # appended to the model's row name when its training leaked


def leakage_warning(config, lines, split):
    """The warning line when the checkpoint's training lists used drives of the evaluated lines, else
    None; "unknown" (a note, also returned as None) when the checkpoint does not record its drives.

    06_train stores the drives of its train and val lists in the checkpoint config ("train_drives");
    older checkpoints and the official weights lack it, so nothing can be said about them."""
    drives = config.get("train_drives")
    if drives is None:
        print("   train/test drive overlap: unknown (the checkpoint does not record its training drives)")
        return None
    drives = set(drives)
    shared = sorted({folder for folder, _, _ in lines} & drives)
    if not shared:
        return None
    frames = sum(1 for folder, _, _ in lines if folder in drives)
    return (f"WARNING: train/test leakage: the checkpoint trained on {len(shared)} drive(s) of this {split} "
            f"test split ({frames} of its {len(lines)} frames): {', '.join(shared)}; these numbers are optimistic")


def format_table(rows, warning=None):
    """Fixed-width table (name + the seven metrics in the paper's order, + thin AbsRel when known),
    headed by the warning line when one is given (a leaked number never appears without it)."""
    thin = any(np.isfinite(r.get("thin_abs_rel", np.nan)) for r in rows)
    head = f"{'model':<24}" + "".join(f"{k:>10}" for k in METRICS) + (f"{'thin_abs_rel':>14}" if thin else "")
    lines = ([warning] if warning else []) + [head]
    for r in rows:
        line = f"{r['name']:<24}" + "".join(f"{r[k]:>10.3f}" for k in METRICS)
        lines.append(line + (f"{r.get('thin_abs_rel', np.nan):>14.3f}" if thin else ""))
    return "\n".join(lines)


def save_table(rows, out_dir, split, warning=None):
    """Write eval_<split>.csv and eval_<split>.md (the warning line above the markdown table when
    given; in the CSV, which has no place for it, the model row's name carries LEAK_MARK); returns
    their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cols = list(METRICS) + ["thin_abs_rel", "n"]
    csv_path, md_path = out_dir / f"eval_{split}.csv", out_dir / f"eval_{split}.md"
    csv = ["model," + ",".join(cols)] + [r["name"] + "," + ",".join(f"{r.get(c, np.nan):.6g}" for c in cols)
                                         for r in rows]
    csv_path.write_text("\n".join(csv) + "\n")
    md = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    md += ["| " + r["name"] + " | " + " | ".join(f"{r.get(c, np.nan):.3f}" if c != "n" else str(r["n"]) for c in cols)
           + " |" for r in rows]
    md = ([f"> **{warning}**", ""] if warning else []) + md
    md_path.write_text("\n".join(md) + "\n")
    return csv_path, md_path


# ---- Pictures ----
def colorize_inverse_depth(depth):
    """[H, W] depth -> [H, W, 3] uint8 magma of 1/depth, normalised per image by robust percentiles.

    The 2nd..98th percentile of inverse depth spans the colour map, so a few extreme pixels (or a
    constant offset) never leave the picture black (README, "KITTI").
    """
    import matplotlib
    inv = 1.0 / np.maximum(depth, MIN_DEPTH)
    lo, hi = np.percentile(inv, 2), np.percentile(inv, 98)
    norm = np.clip((inv - lo) / max(hi - lo, 1e-8), 0, 1)
    return (matplotlib.colormaps["magma"](norm)[..., :3] * 255).astype(np.uint8)


def save_prediction_figure(images, preds, gts, path):
    """Rows of input | predicted inverse depth | GT inverse depth | abs-rel error, for a few frames."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    aspect = images[0].shape[-2] / images[0].shape[-1]  # H / W of the input
    fig, axes = plt.subplots(len(images), 4, figsize=(16, (4 * aspect + 0.35) * len(images)), squeeze=False)
    for row, (img, pred, gt) in enumerate(zip(images, preds, gts)):
        pred = resize_to(pred, *gt.shape)
        pred = pred * np.median(gt[gt > 0]) / np.median(pred[gt > 0]) if (gt > 0).any() else pred
        err = np.where(gt > 0, np.abs(pred - gt) / np.maximum(gt, MIN_DEPTH), np.nan)
        gt_inv = np.where(gt > 0, 1.0 / np.maximum(gt, MIN_DEPTH), np.nan)
        panels = [(img.permute(1, 2, 0).numpy(), {}), (colorize_inverse_depth(pred), {}),
                  (gt_inv, {"cmap": "magma"}), (err, {"cmap": "inferno", "vmin": 0, "vmax": 0.5})]
        for ax, title, (im, kw) in zip(axes[row], ("input", "prediction (1/depth)", "GT (1/depth)",
                                                   "abs rel error (0-0.5)"), panels):
            ax.imshow(im, **kw)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


@torch.no_grad()
def save_internals_figure(model, image, path, num_slices=4):
    """Cost-volume slices V[q] (paper Fig. 3) and the bins: centres and P(d) at a few pixels."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out = model(image[None], return_extras=True)
    if "cost_volume" not in out or "bin_centers" not in out:
        print("   (this variant has no cost volume / bins: internals figure skipped)")
        return False
    volume, centres = out["cost_volume"][0].cpu(), out["bin_centers"][0].cpu()  # [Q, h, w], [D]
    probs = out["probs"][0].cpu() if "probs" in out else None  # [D, h, w]
    h, w = volume.shape[-2:]
    stats = bins.stats_from_extras(out)
    fig, axes = plt.subplots(2, num_slices, figsize=(4 * num_slices, 5.5), squeeze=False)
    # The numbers say what the picture only suggests: do the queries differ, are the bins used?
    fig.suptitle(f"query similarity {stats['query_similarity']:.2f} (1 = collapsed) | cost-volume effective rank "
                 f"{stats['effective_rank']:.1f} of Q={volume.shape[0]} | {stats['bins_99']:.0f} of "
                 f"D={len(centres)} bins hold 99% of P", fontsize=10)
    for i, q in enumerate(np.linspace(0, volume.shape[0] - 1, num_slices).astype(int)):
        axes[0, i].imshow(volume[q].numpy(), cmap="viridis")
        axes[0, i].set_title(f"cost volume slice q={q}", fontsize=8)
        axes[0, i].axis("off")
    axes[1, 0].imshow(image.permute(1, 2, 0).cpu().numpy())
    axes[1, 0].set_title("input", fontsize=8)
    axes[1, 0].axis("off")
    axes[1, 1].plot(centres.numpy(), "o-", ms=2)
    axes[1, 1].set(title="bin centres (m)", xlabel="bin d", ylabel="c_d")
    pixels = [(h // 4, w // 2), (h // 2, w // 2), (3 * h // 4, w // 4), (h - 1, w // 2)]
    for y, x in pixels if probs is not None else []:
        axes[1, 2].plot(centres.numpy(), probs[:, y, x].numpy(), label=f"(y={y}, x={x})")
    axes[1, 2].set(title="P(d) at a few pixels", xlabel="depth (m)")
    axes[1, 2].legend(fontsize=6)
    axes[1, 3].imshow(colorize_inverse_depth(out["depth"][0, 0].cpu().numpy()))
    axes[1, 3].set_title("depth (1/depth, magma)", fontsize=8)
    axes[1, 3].axis("off")
    fig.tight_layout(rect=(0, 0, 1, 0.95))  # room for the title line
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


# ---- Run comparison ----
# `--compare RUN ...`: what does each variant buy? One run's noise can be as large as the effect of
# a design choice, so runs that differ only by seed are one variant, reported as mean +- std.

# Stored training-config fields that do not change what a run learns, only its random draws or its
# bookkeeping: runs whose configs differ in these alone are seeds of one variant. (data_path too:
# every run is scored on the same test split anyway, and a note is printed when it differs; and
# split_files: where the lists were found, the split itself is named by `split`.)
BOOKKEEPING_FIELDS = frozenset({
    "seed", "run_dir", "resume", "data_path", "split_dir", "device", "num_workers", "threads", "pin_memory",
    "persistent_workers", "channels_last", "small_map_convs", "log_every", "save_every", "no_eval", "profile",
    "cache_mb", "val_every", "split_files"})
COMPARE_COLUMNS = METRICS + ("thin_abs_rel",) + bins.INTERNALS_STATS
COMPARE_DIGITS = {"effective_rank": 2, "bins_99": 1}  # the others: 3 decimals, as in the paper's tables


def resolve_run(spec):
    """Checkpoint of one --compare entry: a run folder's best.pt (else its ckpt.pt) or a checkpoint file."""
    path = Path(spec)
    if path.is_dir():
        for name in ("best.pt", "ckpt.pt"):
            if (path / name).is_file():
                return path / name
        raise data.DataError(f"--compare {spec}: the folder holds neither best.pt nor ckpt.pt")
    if not path.is_file():
        raise data.DataError(f"--compare {spec}: no such run folder or checkpoint file")
    return path


def flat_config(config):
    """A stored training config as one flat dict: the model's fields beside the run's ("model.x" on a clash)."""
    flat = {k: v for k, v in config.items() if k != "model"}
    for k, v in config.get("model", {}).items():
        flat["model." + k if k in flat else k] = v
    return flat


def group_runs(configs):
    """Runs grouped into variants: (groups, labels), each group a list of indices into configs.

    Two runs are one variant when their flattened configs agree on every field outside
    BOOKKEEPING_FIELDS (a field one config lacks counts as None). Groups keep the order in which
    their first run was given. A label names the fields whose values differ between the groups,
    e.g. "queries=none" or "bins=fixed, use_stereo=False"; "default" when there is only one group.
    """
    flats = [{k: v for k, v in flat_config(c).items() if k not in BOOKKEEPING_FIELDS} for c in configs]
    keys = list(dict.fromkeys(k for f in flats for k in f))  # every field, in config order
    groups, by_signature = [], {}
    for i, f in enumerate(flats):
        signature = repr([f.get(k) for k in keys])
        if signature not in by_signature:
            by_signature[signature] = len(groups)
            groups.append([])
        groups[by_signature[signature]].append(i)
    differing = [k for k in keys if len({repr(flats[g[0]].get(k)) for g in groups}) > 1]
    labels = [", ".join(f"{k}={flats[g[0]].get(k)}" for k in differing) or "default" for g in groups]
    return groups, labels


def mean_std(values):
    """(mean, sample standard deviation with ddof=1) of per-seed values; std is NaN for a single run."""
    values = np.asarray(values, np.float64)
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")


def densest_window(mask, height, width):
    """(top, left) of the height x width window of a [H, W] bool mask holding the most True pixels.

    A summed-area table gives every window's count at once; ties go to the first window in raster
    order. The window is shrunk to the mask where the mask is smaller.
    """
    H, W = mask.shape
    height, width = min(height, H), min(width, W)
    table = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))  # [H+1, W+1]
    counts = (table[height:, width:] - table[:-height, width:] - table[height:, :-width]
              + table[:-height, :-width])  # [H-height+1, W-width+1]: window counts by top-left corner
    top, left = np.unravel_index(np.argmax(counts), counts.shape)
    return int(top), int(left)


def score_run(model, config, cfg, device, lines, gts, thin):
    """One run on the test split: evaluate_predictions' dict plus bins.INTERNALS_STATS averaged over the
    frames (each batch weighted by its size), and the predictions."""
    sums, count = dict.fromkeys(bins.INTERNALS_STATS, 0.0), [0]

    def add_internals(img):
        stats = bins.internals_stats(model, img)
        for k in sums:
            sums[k] += stats[k] * len(img)
        count[0] += len(img)
    loader = test_loader(cfg, lines, int(config["height"]), int(config["width"]))
    preds, _ = run_network(model, loader, cfg, device, on_batch=add_internals)
    result = evaluate_predictions(gts, preds, cfg.split, *scaling(cfg), thin)
    result.update({k: v / max(count[0], 1) for k, v in sums.items()})
    return result, preds


def _cell(value, column, std=None):
    """Table text of a value (+- its std); "-" for NaN (a variant without queries has no query numbers)."""
    if not np.isfinite(value):
        return "-"
    digits = COMPARE_DIGITS.get(column, 3)
    return f"{value:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None and np.isfinite(std) else "")


def compare_tables(runs, groups, labels):
    """(aggregated rows, per-run rows) for the CSVs, and the markdown table text.

    runs: list of dicts with "run", "seed", "frames" and every COMPARE_COLUMNS value of that run.
    """
    per_run = [dict(run, variant=labels[g]) for g, members in enumerate(groups) for run in
               (runs[i] for i in members)]
    aggregated = []
    for members, label in zip(groups, labels):
        row = {"variant": label, "n": len(members), "seeds": " ".join(str(runs[i]["seed"]) for i in members)}
        for c in COMPARE_COLUMNS:
            row[c + "_mean"], row[c + "_std"] = mean_std([runs[i][c] for i in members])
        aggregated.append(row)
    header = ["variant", "n"] + list(COMPARE_COLUMNS)
    body = [[r["variant"], str(r["n"])] + [_cell(r[c + "_mean"], c, r[c + "_std"]) for c in COMPARE_COLUMNS]
            for r in aggregated]
    widths = [max(len(row[j]) for row in [header] + body) for j in range(len(header))]
    md = ["| " + " | ".join(t.ljust(w) for t, w in zip(row, widths)) + " |" for row in [header] + body]
    md.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return aggregated, per_run, "\n".join(md)


COMPARE_LEGEND = """\
Mean ± sample standard deviation (ddof 1) over the n runs (seeds) of each variant; every run scored on
the same test frames. thin_abs_rel: AbsRel pooled over thin-structure pixels. query_similarity: mean
cosine similarity of distinct queries (1 = all queries identical, collapsed). effective_rank: effective
rank of the cost volume V as a Q x (h*w) matrix (1 = one image in Q copies, Q = fully diverse).
bins_99: bins holding 99% of the mean probability mass (out of D). "-": the variant has no queries."""


def save_compare(aggregated, per_run, md, out_dir, split):
    """compare_<split>.csv (one row per variant: <column>_mean, <column>_std), compare_<split>_runs.csv
    (one row per run) and compare_<split>.md; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = out_dir / f"compare_{split}.csv", out_dir / f"compare_{split}_runs.csv", out_dir / f"compare_{split}.md"

    def text(value):  # floats with 6 significant digits (NaN stays "nan"); no comma may split a cell
        return (f"{value:.6g}" if isinstance(value, float) else str(value)).replace(",", ";")
    stats = [c + s for c in COMPARE_COLUMNS for s in ("_mean", "_std")]
    for path, rows, cols in ((paths[0], aggregated, ["variant", "n", "seeds"] + stats),
                             (paths[1], per_run, ["variant", "run", "seed"] + list(COMPARE_COLUMNS) + ["frames"])):
        lines = [",".join(cols)] + [",".join(text(r[c]) for c in cols) for r in rows]
        path.write_text("\n".join(lines) + "\n")
    paths[2].write_text(md + "\n\n" + COMPARE_LEGEND + "\n")
    return paths


def save_compare_figure(images, gts, thin, columns, path, names=None):
    """The same test frames side by side: per frame a row of inputs (the crop outlined), a row of
    inverse depth and a row of an enlarged crop around the densest thin structures (outlined in cyan).

    images: list of [3, H, W] inputs; gts, thin: their [H_gt, W_gt] GT depth and thin masks (thin may be
    None); columns: list of (title, list of [h, w] predictions of those frames, None for the GT column);
    names: a caption per frame.
    """
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
                colour = colorize_inverse_depth(np.where(gt > 0, gt, gt.max()))
            else:
                colour = colorize_inverse_depth(resize_to(preds[f], H, W))
            ax_img, ax_depth, ax_crop = axes[3 * f: 3 * f + 3, c]
            ax_img.imshow(img.permute(1, 2, 0).numpy(), extent=(0, W, H, 0))  # drawn in GT pixel units
            ax_img.add_patch(Rectangle((left, top), crop_w, crop_h, fill=False, ec="cyan", lw=1))
            ax_img.set_title(f"{title}" if f == 0 else "", fontsize=8)
            ax_depth.imshow(colour)
            ax_crop.imshow(colour[window], interpolation="nearest")
            if mask[window].any():
                ax_crop.contour(mask[window].astype(float), levels=[0.5], colors="cyan", linewidths=0.7)
            caption = names[f] if names else f"frame {f}"
            ax_crop.set_title(f"{caption}: thin structures (cyan), x{W / crop_w:.1f}" if c == 0 else "", fontsize=7)
            for ax in (ax_img, ax_depth, ax_crop):
                ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def read_val_log(run_dir):
    """{column: [values]} of a run folder's val.csv (step and the self-query diagnostics); {} without one."""
    path = Path(run_dir) / "val.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: [float(r[k]) for r in rows] for k in ("step",) + bins.INTERNALS_STATS if rows and k in rows[0]}


def save_diagnostics_figure(logs, labels, path):
    """The self-query diagnostics over training (val.csv of each run): one panel per diagnostic, one
    line per run, the runs of one variant in one colour. logs: [(variant index, {column: values})]."""
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


def run_compare(cfg, device):
    """--compare: score every run on one test split, group seeds into variants, write the tables and figure."""
    paths = [resolve_run(spec) for spec in cfg.compare]
    model, config = load_model(paths[0], device)
    first = Path(cfg.compare[0]) if Path(cfg.compare[0]).is_dir() else paths[0].parent
    _defaults_from(config, cfg, first.resolve().parent / "compare")  # the first run's data and split
    lines = split_lines(cfg)
    gts = load_ground_truth(cfg, lines)
    thin = load_thin_masks(cfg, lines) if cfg.split == "synthetic" else None
    print(f"-> comparing {len(paths)} runs on {len(lines)} {cfg.split} frames from {cfg.data_path}"
          f"{', post-processed' if cfg.post_process else ''}; "
          f"{'stereo: x5.4' if cfg.eval_stereo else 'mono: median scaling'}")
    # The figure's frames: spread evenly over the split (neighbouring frames of a drive look alike).
    frames = sorted(set(np.linspace(0, len(lines) - 1, min(cfg.num_figure_frames, len(lines))).round().astype(int)))
    runs, configs, figure_preds = [], [], []
    for spec, path in zip(cfg.compare, paths):
        if model is None:  # (the first run's network was loaded above, for its data and split)
            model, config = load_model(path, device)
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
        model = None  # one network in memory at a time
    groups, labels = group_runs(configs)
    for members, label in zip(groups, labels):
        seeds = [str(runs[i]["seed"]) for i in members]
        repeated = sorted({s for s in seeds if seeds.count(s) > 1})
        if repeated:  # the same run given twice, or a copy: its std is no seed spread
            print(f"   note: variant {label} has seed {', '.join(repeated)} more than once")
    aggregated, per_run, md = compare_tables(runs, groups, labels)
    print("\n" + md + "\n")
    out_dir = Path(cfg.out)
    written = list(save_compare(aggregated, per_run, md, out_dir, cfg.split))
    # Images for the figure: the first run's test frames at its input size; predictions of each
    # variant's first seed.
    dataset = test_loader(cfg, lines, int(configs[0]["height"]), int(configs[0]["width"])).dataset
    images = [data.image_to_float(dataset[i]["color"][0]) for i in frames]
    columns = [("ground truth", None)] + [(labels[g], figure_preds[members[0]]) for g, members in enumerate(groups)]
    fig_path = out_dir / f"compare_{cfg.split}.png"
    save_compare_figure(images, [gts[i] for i in frames], [thin[i] for i in frames] if thin else None,
                        columns, fig_path, names=[f"test frame {i}" for i in frames])
    written.append(fig_path)
    logs = [(g, read_val_log(Path(cfg.compare[i]) if Path(cfg.compare[i]).is_dir() else paths[i].parent))
            for g, members in enumerate(groups) for i in members]
    if any(log for _, log in logs):
        diag_path = out_dir / "compare_diagnostics.png"
        save_diagnostics_figure(logs, labels, diag_path)
        written.append(diag_path)
    print("-> " + ", ".join(str(p) for p in written))
    return aggregated, per_run


# ---- Inference on your own images ----
def list_images(spec):
    """Image paths of --predict: one file, every image of a folder (sorted), or a glob pattern."""
    path = Path(spec)
    if path.is_file():
        return [path]
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    else:
        found = sorted(p for p in Path(path.anchor or ".").glob(str(path.relative_to(path.anchor or ".")))
                       if p.suffix.lower() in IMAGE_EXTS) if any(c in spec for c in "*?[") else []
    if not found:
        raise data.DataError(f"--predict {spec}: no image file, folder of images or matching frames")
    return found


def _output_names(paths):
    """File stems for the outputs; frames of different drives with equal names get their folders too."""
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    common = Path(os.path.commonpath([str(p.resolve().parent) for p in paths]))
    return ["__".join(p.resolve().with_suffix("").relative_to(common).parts) for p in paths]


def write_ply(path, points, colors, ascii=False):
    """Coloured point cloud: points [N, 3] float32 metres, colors [N, 3] uint8; PLY 1.0 by hand."""
    header = ("ply\nformat {} 1.0\nelement vertex {}\nproperty float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n").format(
        "ascii" if ascii else "binary_little_endian", len(points))
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        if ascii:
            for p, c in zip(points, colors):
                f.write(f"{p[0]:.4f} {p[1]:.4f} {p[2]:.4f} {c[0]} {c[1]} {c[2]}\n".encode("ascii"))
        else:
            vertex = np.dtype([("xyz", "<f4", 3), ("rgb", "u1", 3)])  # 15 bytes per point, no padding
            rows = np.empty(len(points), vertex)
            rows["xyz"], rows["rgb"] = points, colors
            f.write(rows.tobytes())


def back_project(depth, K):
    """Camera-frame points [H*W, 3] from depth [H, W] and pixel intrinsics K (3x3 or 4x4)."""
    h, w = depth.shape
    v, u = np.mgrid[0:h, 0:w].astype(np.float32)  # [H, W] pixel rows, columns
    x = (u - K[0, 2]) / K[0, 0] * depth  # X right, Y down, Z forward (camera convention)
    y = (v - K[1, 2]) / K[1, 1] * depth
    return np.stack([x, y, depth], -1).reshape(-1, 3)


def run_predict(model, config, cfg, device, out_dir):
    """Depth for own images: <stem>_depth.png (colour), <stem>_depth.npy (metres or relative), .ply."""
    height, width = int(config["height"]), int(config["width"])
    scale = STEREO_SCALE_FACTOR if cfg.eval_stereo else 1.0
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = list_images(cfg.predict)
    names = _output_names(paths)
    for path, name in zip(paths, names):
        try:
            image = Image.open(path).convert("RGB")
        except OSError as err:
            raise data.DataError(f"cannot read image {path}: {_one_line(err)}") from None
        w0, h0 = image.size
        net_in = np.asarray(image.resize((width, height), Image.LANCZOS), np.float32) / 255.0  # [H, W, 3]
        tensor = torch.from_numpy(net_in).permute(2, 0, 1)[None].to(device)  # [1, 3, H, W]
        depth = resize_to(predict_depth(model, tensor, cfg.post_process)[0], h0, w0) * scale  # (h0, w0)
        stem = out_dir / f"{name}_depth"
        Image.fromarray(colorize_inverse_depth(depth)).save(stem.with_suffix(".png"))
        np.save(stem.with_suffix(".npy"), depth.astype(np.float32))
        written = [stem.with_suffix(".png"), stem.with_suffix(".npy")]
        if cfg.ply:
            if cfg.fx > 0 and cfg.fy > 0:
                K = np.array([[cfg.fx, 0, cfg.cx or w0 / 2], [0, cfg.fy, cfg.cy or h0 / 2], [0, 0, 1]])
            else:  # KITTI's normalised intrinsics scaled to this image (a guess for other cameras)
                K = data.scale_K(data.normalised_K(), w0, h0)
            points = back_project(depth, K)
            keep = np.isfinite(points).all(1) & (depth.reshape(-1) < MAX_DEPTH * scale)
            colors = np.asarray(image, np.uint8).reshape(-1, 3)
            write_ply(out_dir / f"{name}.ply", points[keep].astype(np.float32), colors[keep], cfg.ply_ascii)
            written.append(out_dir / f"{name}.ply")
        print(f"{path} -> " + ", ".join(str(p) for p in written))
    return 0


# ---- Command line ----
@dataclass
class EvalConfig:
    """What `python 07_eval.py` does: evaluate a checkpoint, compare runs, or predict for images."""
    checkpoint: str = ""  # our checkpoint (RUN/best.pt or RUN/ckpt.pt)
    official: str = ""  # or a folder with the released official encoder.pth + depth.pth
    data: str = ""  # "synthetic" or "kitti"; "" = the checkpoint's training data (kitti for --official)
    data_path: str = ""  # dataset root; "" = the checkpoint's data_path
    split: str = ""  # eigen | eigen_benchmark | synthetic; "" = synthetic or eigen by data
    split_file: str = ""  # a custom list of "folder frame side" lines; GT kind still set by --split
    split_dir: str = ""  # folder of downloaded split lists; "" = the checkpoint's (else 01's cache)
    gt_path: str = ""  # eigen: a GT .npz from 01_data.export_gt_depth ("" = made in data_path)
    img_ext: str = ""  # image extension; "" = the checkpoint's (else .jpg)
    batch_size: int = 4  # images per forward pass
    num_workers: int = 0  # DataLoader workers
    post_process: bool = False  # flip averaging with 5% border ramps (Monodepth2 / official)
    eval_stereo: bool = False  # metric scale x5.4 instead of per-image median scaling
    max_images: int = 0  # evaluate only the first N frames (0 = all)
    baselines: bool = False  # add the mean-training-depth and untrained-network rows
    figures: bool = False  # save prediction and cost-volume/bin figures
    num_figure_frames: int = 4  # rows of the prediction figure
    predict: str = ""  # an image, a folder of images or a glob: run inference only
    ply: bool = False  # --predict: also write a coloured point cloud
    ply_ascii: bool = False  # write ASCII PLY instead of binary little-endian
    fx: float = 0.0  # --ply intrinsics in pixels of the input image (0 = KITTI's normalised K)
    fy: float = 0.0  # focal length y, pixels
    cx: float = 0.0  # principal point x, pixels
    cy: float = 0.0  # principal point y, pixels
    out: str = ""  # output folder ("" = next to the checkpoint; --predict: <that>/predict; --compare: <runs>/compare)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0  # seed of the untrained-network baseline
    model_name: str = ""  # name of the model's row in the table ("" = from the checkpoint file)
    compare: list = field(default_factory=list)  # run folders (best.pt) or checkpoints: one table, seeds averaged


def _defaults_from(config, cfg, source_dir):
    """Fill the empty fields of cfg from the checkpoint's training config."""
    cfg.data = cfg.data or config.get("data", "kitti")
    cfg.data_path = cfg.data_path or config.get("data_path", "")
    cfg.split = cfg.split or ("synthetic" if cfg.data == "synthetic" else "eigen")
    cfg.img_ext = cfg.img_ext or config.get("img_ext", ".jpg")
    cfg.split_dir = cfg.split_dir or config.get("split_dir", "")
    cfg.out = cfg.out or str(source_dir)
    if cfg.split not in ("eigen", "eigen_benchmark", "synthetic"):
        raise data.DataError(f"--split {cfg.split}: expected eigen, eigen_benchmark or synthetic")
    if not cfg.data_path or not Path(cfg.data_path).is_dir():
        raise data.DataError(f"data path '{cfg.data_path}' not found (pass --data_path)")


def evaluate(model, config, cfg, device):
    """The whole evaluation: predictions, metrics table (+ baselines), CSV/markdown, figures."""
    height, width = int(config["height"]), int(config["width"])
    lines = split_lines(cfg)
    warning = leakage_warning(config, lines, cfg.split)
    gts = load_ground_truth(cfg, lines)
    thin = load_thin_masks(cfg, lines) if cfg.split == "synthetic" else None
    print(f"-> {len(lines)} {cfg.split} frames from {cfg.data_path}, network input {width}x{height}"
          f"{', post-processed' if cfg.post_process else ''}")
    if config.get("use_stereo") and not cfg.eval_stereo:
        print("   hint: this model was trained with stereo; --eval_stereo scores it at metric scale (x5.4)")
    median, scale = scaling(cfg)
    print("   stereo evaluation: x5.4, no median scaling" if cfg.eval_stereo else "   mono evaluation: median scaling")
    preds, images = run_network(model, test_loader(cfg, lines, height, width), cfg, device,
                                keep_images=cfg.num_figure_frames if cfg.figures else 0)
    result = evaluate_predictions(gts, preds, cfg.split, median, scale, thin)
    print_ratio_stats(result["ratios"])
    rows = [dict(result, name=cfg.model_name + (LEAK_MARK if warning else ""))]
    if cfg.baselines and not (Path(cfg.data_path) / data.SYNTH_MARKER).is_file():
        print("   (the mean-training-depth baseline needs the dense GT of the synthetic world: skipped)")
    elif cfg.baselines:
        mean_map = mean_training_depth(cfg)
        rows.append(dict(evaluate_predictions(gts, [mean_map] * len(gts), cfg.split, median, scale, thin),
                         name="mean training depth"))
    if cfg.baselines:
        torch.manual_seed(cfg.seed)  # the same random network every run
        untrained = bins.depthnet_from_config(config["model"]).to(device).eval()
        raw, _ = run_network(untrained, test_loader(cfg, lines, height, width), cfg, device)
        rows.append(dict(evaluate_predictions(gts, raw, cfg.split, median, scale, thin), name="untrained network"))
    print("\n" + format_table(rows, warning) + "\n")
    csv_path, md_path = save_table(rows, Path(cfg.out), cfg.split, warning)
    print(f"-> table saved to {csv_path} and {md_path}")
    if cfg.figures and images:
        fig_path = Path(cfg.out) / f"eval_{cfg.split}_predictions.png"
        save_prediction_figure(images, preds[: len(images)], gts[: len(images)], fig_path)
        print(f"-> figure saved to {fig_path}")
        fig_path = Path(cfg.out) / f"eval_{cfg.split}_internals.png"
        if save_internals_figure(model, images[0].to(device), fig_path):
            print(f"-> figure saved to {fig_path}")
    return rows


def parse_args(argv=None):
    """EvalConfig from the command line (one flag per field, generated by cli.add_dataclass_flags)."""
    parser = argparse.ArgumentParser(description="Evaluate SQLDepth (Eigen protocol) or predict depth for images.")
    add_dataclass_flags(parser, EvalConfig)
    return EvalConfig(**vars(parser.parse_args(argv)))


def main(argv=None):
    """CLI entry point; returns the exit status (0 ok, 2 bad input with one `error:` line)."""
    cfg = parse_args(argv)
    try:
        if sum(map(bool, (cfg.checkpoint, cfg.official, cfg.compare))) != 1:
            raise data.DataError("give exactly one of --checkpoint FILE, --official DIR or --compare RUN RUN ...")
        if cfg.compare and (cfg.predict or cfg.baselines):
            raise data.DataError("--compare scores runs on a test split: it takes neither --predict nor --baselines")
        try:
            device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)
        except RuntimeError:
            raise data.DataError(f"--device {cfg.device!r}: use auto, cpu, cuda or cuda:N") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise data.DataError(f"--device {cfg.device}: no CUDA device is available")
        if cfg.compare:
            run_compare(cfg, device)
            return 0
        if cfg.checkpoint:
            model, config = load_model(cfg.checkpoint, device)
            source_dir = Path(cfg.checkpoint).parent
        else:
            model, config = load_official(cfg.official, device)
            source_dir = Path(cfg.official)
        if cfg.predict:
            return run_predict(model, config, cfg, device, Path(cfg.out) if cfg.out else source_dir / "predict")
        _defaults_from(config, cfg, source_dir)
        cfg.model_name = cfg.model_name or ("SQLDepth " + (Path(cfg.checkpoint).name if cfg.checkpoint else "official"))
        evaluate(model, config, cfg, device)
    except (data.DataError, ValueError, OSError) as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
