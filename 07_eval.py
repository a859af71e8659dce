"""07 - eval: the Eigen protocol, the synthetic test split, baselines and figures.

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
SQL internals: cost-volume slices and bin distributions), `--official DIR` (the released SQLDepth
weights through 04_bins.convert_official_checkpoint). Built on this file, not reading steps:
compare_runs.py (several runs on one test split, one row per variant, mean +- std over seeds) and
predict.py (depth for your own images: colour PNG, .npy, PLY point clouds).

Leakage: 06_train records the drives of its train and val lists in the checkpoint. When they include
drives of the evaluated lines, a WARNING line heads the printed and the markdown table and the
model's row is marked, so a leaked number is never read as a clean one (a checkpoint without the
record, e.g. the official weights: the overlap is reported as unknown).

Deviation from the official code: the official SQLDepth evaluation passes its DEPTH output (named
"disp") through Monodepth2's disparity post-processing unchanged; we do the same thing on purpose
(flip-average of depth, not of 1/depth), so our numbers are comparable with the released ones.
The untrained-network baseline is built with pretrained=None (truly untrained, and no download).

The metrics come first; below the engineering banner: loading models, data and ground truth,
tables, pictures and the command line.
Uses: 01_data (splits, GT, KittiRaw), 04_bins (DepthNet, official conversion). Used by: 06_train
(runs this file as a subprocess at the end of the default run), compare_runs.py, predict.py.
Run: `python 07_eval.py --checkpoint runs/RUN/best.pt [--baselines --figures]`.
Tests: tests/test_07_eval.py.
"""
import argparse
import hashlib
import importlib
import signal
import sys
import threading
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import checkpoint_sweep  # --checkpoint 'RUN/epoch_*.pt': every kept epoch in one table (checkpoint_sweep.py)
from cli import add_dataclass_flags, one_line  # the command line of every script (cli.py)

# A module name cannot start with a digit in an `import` statement, so the numbered scripts are
# loaded by name; the alias is the file name without its number.
data = importlib.import_module("01_data")
bins = importlib.import_module("04_bins")

MIN_DEPTH, MAX_DEPTH = 1e-3, 80.0  # KITTI evaluation range, metres
STEREO_SCALE_FACTOR = 5.4  # KITTI baseline 0.54 m / training baseline 0.1 (Monodepth2)
GARG_CROP = (0.40810811, 0.99189189, 0.03594771, 0.96405229)  # rows top, bottom; cols left, right
METRICS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")  # the paper's column order


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


def scored_pixels(gt, pred, split, median_scaling=True, scale=1.0):
    """One frame's scored pixels: (mask, gt [N], scaled and clipped prediction [N], ratio), or None
    when no pixel has valid GT. pred is at the GT's size; ratio is the median-scaling ratio (1.0 off)."""
    mask = evaluation_mask(gt, split)
    if not mask.any():
        return None
    gt_valid, pred_valid = gt[mask], pred[mask] * scale  # [N]
    ratio = 1.0
    if median_scaling:
        pred_valid, ratio = median_scale(gt_valid, pred_valid)
    return mask, gt_valid, np.clip(pred_valid, MIN_DEPTH, MAX_DEPTH), ratio


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
        scored = scored_pixels(gt, pred, split, median_scaling, scale)
        if scored is None:
            continue  # a frame without valid GT cannot be scored (Monodepth2 would produce NaN)
        mask, gt_valid, pred_valid, ratio = scored
        if median_scaling:
            ratios.append(ratio)
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
# Loading models, data and ground truth, tables, pictures and the command line (--compare and
# --predict moved to compare_runs.py and predict.py).
# ==============================================================================================
# ---- Models ----
def _build_and_load(model_cfg, state_dict, source, device):
    """A DepthNet from a config dict, strictly loaded; mismatches become one DataError line."""
    try:
        model = bins.depthnet_from_config(model_cfg, state_dict)
    except (RuntimeError, TypeError, ValueError, KeyError) as err:
        raise data.DataError(f"{source} does not match the architecture of its config: {one_line(err)}") from None
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
            raise data.DataError(f"{folder / name} is not a readable checkpoint ({one_line(err)})") from None
    encoder_sd, depth_sd = sds
    try:
        state_dict = bins.convert_official_checkpoint(encoder_sd, depth_sd)
        model_cfg = bins.config_from_official(encoder_sd, depth_sd)
    except (KeyError, ValueError, RuntimeError) as err:
        raise data.DataError(f"{folder} does not hold an official SQLDepth checkpoint: {one_line(err)}") from None
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
        raise data.DataError(f"{path} is not an .npz of 01_data.export_gt_depth ({one_line(err)})") from None


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
    constant offset) never leave the picture black (docs/kitti.md).
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


# ---- Command line ----
@dataclass
class EvalConfig:
    """What `python 07_eval.py` does: evaluate a checkpoint (ours or the released one) on a test split."""
    checkpoint: str = ""  # our checkpoint (RUN/best.pt), or a glob of several ('RUN/epoch_*.pt': one table)
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
    out: str = ""  # output folder ("" = next to the checkpoint)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0  # seed of the untrained-network baseline
    model_name: str = ""  # name of the model's row in the table ("" = from the checkpoint file)


def defaults_from_checkpoint(config, cfg, source_dir):
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
        print("   note: trained with stereo; the paper's MS rows are median-scaled as here (the official --eval_mono); "
              "--eval_stereo scores metric depth (x5.4)")
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
    parser = argparse.ArgumentParser(description="Evaluate SQLDepth (Eigen protocol) on a test split.")
    add_dataclass_flags(parser, EvalConfig)
    return EvalConfig(**vars(parser.parse_args(argv)))


# Command lines that moved to unnumbered helpers: one line says where (README, "Reading order").
MOVED = {"--compare": "compare_runs.py (python compare_runs.py --runs RUN RUN ... --out DIR)",
         "--predict": "predict.py (python predict.py --checkpoint RUN/best.pt --images DIR [--ply])"}


def choose_device(spec):
    """torch.device of --device auto | cpu | cuda | cuda:N (a DataError naming a value that is not one)."""
    try:
        device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if spec == "auto" else spec)
    except RuntimeError:
        raise data.DataError(f"--device {spec!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise data.DataError(f"--device {spec}: no CUDA device is available")
    return device


def main(argv=None):
    """CLI entry point; returns the exit status (0 ok, 2 bad input with one `error:` line)."""
    given = sys.argv[1:] if argv is None else argv
    moved = [flag for flag in MOVED if any(a.split("=")[0] == flag for a in given)]
    if moved:
        print(f"error: {moved[0]} moved out of 07_eval.py to {MOVED[moved[0]]}", file=sys.stderr)
        return 2
    cfg = parse_args(argv)
    stop = signal.signal(signal.SIGTERM, _stopped) if threading.current_thread() is threading.main_thread() else None
    try:
        if bool(cfg.checkpoint) == bool(cfg.official):
            raise data.DataError("give exactly one of --checkpoint FILE or --official DIR")
        device = choose_device(cfg.device)
        if checkpoint_sweep.is_pattern(cfg.checkpoint):   # several checkpoints, one table (checkpoint_sweep.py)
            checkpoint_sweep.evaluate_checkpoints(cfg, device, sys.modules[__name__])
            return 0
        if cfg.checkpoint:
            model, config = load_model(cfg.checkpoint, device)
            source_dir = Path(cfg.checkpoint).parent
        else:
            model, config = load_official(cfg.official, device)
            source_dir = Path(cfg.official)
        defaults_from_checkpoint(config, cfg, source_dir)
        cfg.model_name = cfg.model_name or ("SQLDepth " + (Path(cfg.checkpoint).name if cfg.checkpoint else "official"))
        evaluate(model, config, cfg, device)
    except (data.DataError, ValueError, OSError) as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:             # Ctrl-C, or SIGTERM through _stopped
        signum = err.args[0] if err.args else signal.SIGINT
        print(f"error: stopped by {signal.Signals(signum).name}; the evaluation is incomplete (the "
              f"checkpoint is untouched)", file=sys.stderr)
        return 128 + signum
    finally:
        if stop is not None:
            signal.signal(signal.SIGTERM, stop)
    return 0


def _stopped(signum, frame):
    """SIGTERM ends the evaluation like Ctrl-C: one line, no traceback (main catches it)."""
    raise KeyboardInterrupt(signum)


if __name__ == "__main__":
    sys.exit(main())
