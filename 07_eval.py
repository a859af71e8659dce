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
weights through helpers/model_files.py). Built on this file, not reading steps:
helpers/compare_runs.py (several runs on one test split, one row per variant, mean +- std over seeds) and
helpers/predict.py (depth for your own images: colour PNG, .npy, PLY point clouds).

Leakage: 06_train records the drives of its train and val lists in the checkpoint. When they include
drives of the evaluated lines, a WARNING line heads the printed and the markdown table and the
model's row is marked, so a leaked number is never read as a clean one (a checkpoint without the
record, e.g. the official weights: the overlap is reported as unknown).

Deviation from the official code: the official SQLDepth evaluation passes its DEPTH output (named
"disp") through Monodepth2's disparity post-processing unchanged; we do the same thing on purpose
(flip-average of depth, not of 1/depth), so our numbers are comparable with the released ones.
The untrained-network baseline is built with pretrained=None (truly untrained, and no download).

The metrics come first, then the test frames, their ground truth and the whole evaluation; below
the engineering banner only the command line (EvalConfig, defaults taken from the checkpoint, the
device, main). Loading models, the tables and the pictures live in helpers (model_files,
eval_tables, figures).
Uses: 01_data (splits, GT, KittiRaw), 04_bins (DepthNet, official conversion). Used by: 06_train
(runs this file as a subprocess at the end of the default run), helpers/compare_runs.py, helpers/predict.py.
Run: `python 07_eval.py --checkpoint runs/RUN/best.pt [--baselines --figures]`.
Tests: tests/test_07_eval.py.
"""
import argparse
import hashlib
import importlib
import signal
import sys
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# The helpers: engineering that a reader of the evaluation can skip (helpers/NAME.py).
from helpers import cpu_threads      # threads from the cores free at the start
from helpers import figures          # --figures: predictions and the SQL internals
from helpers import eval_tables      # the tables (one checkpoint, or every kept epoch), the leakage warning
from helpers import model_files      # our checkpoints and the official weights -> DepthNet
from helpers import kitti_files      # the standard split lists (download, SHA-256)
from helpers import synthetic_world  # the synthetic world's thin-structure masks and mean-depth map
from helpers.cli import add_dataclass_flags, one_line  # the command line of every script
from helpers.distributed_training import choose_device  # --device, chosen as 06 chooses it

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
    same median as the GT. Hint: a monocular network knows depth only up to one scale per image:
    the ratio is that scale, read off the medians (robust to outliers, unlike the means).
    """
    ratio = float(np.median(gt) / np.median(pred))
    return pred * ratio, ratio


def compute_depth_errors(gt, pred):
    """The seven standard depth metrics between matching valid depths.

    Exercise 7.2: implement the metrics of Eigen et al. (paper Table 1) on 1-D float arrays gt, pred
    [N] of positive depths in metres, returning a dict with keys abs_rel = mean(|gt-pred|/gt),
    sq_rel = mean((gt-pred)^2/gt), rmse = sqrt(mean((gt-pred)^2)), rmse_log = sqrt(mean((ln gt -
    ln pred)^2)) and a1, a2, a3 = fraction of pixels with max(gt/pred, pred/gt) < 1.25, 1.25^2, 1.25^3.
    Hint: each metric is one mean over the N pixels (the rmse ones: its root); the logarithms are
    natural ones and the thresholds strict ("<"), as in Monodepth2.
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


# ---- The test frames, their ground truth, the whole evaluation ----
def split_lines(cfg, kind="test"):
    """Split lines (folder, frame, side) of --split_file, or of the named split's `kind` list."""
    if cfg.split_file and kind == "test":
        path = cfg.split_file
    else:
        path = kitti_files.get_split_file(cfg.split, kind, cfg.split_dir or None, data_path=cfg.data_path,
                                   log=lambda line: print("   " + line))
    lines = data.read_split(path)
    return lines[: cfg.max_images] if cfg.max_images and kind == "test" else lines


def test_split(cfg):
    """(lines, ground truth [H, W] per line, thin-structure masks [H, W] or None) of the evaluated split."""
    lines = split_lines(cfg)
    thin = synthetic_world.load_thin_masks(cfg.data_path, lines) if cfg.split == "synthetic" else None
    return lines, load_ground_truth(cfg, lines), thin


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
        digest = hashlib.sha1(Path(cfg.split_file).read_bytes()).hexdigest()[:10] if cfg.split_file else ""
        tag = "eigen_" + digest if digest else "eigen"
        path = Path(cfg.data_path) / f"gt_depths_{tag}.npz"
        if not path.is_file():
            print(f"-> exporting velodyne ground truth of {len(lines)} frames to {path}")
            every_line = split_lines(replace(cfg, max_images=0))
            data.export_gt_depth(cfg.data_path, every_line, path, source="velodyne")
    if not path.is_file():
        raise data.DataError(f"ground-truth file {path} not found")
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = [data.gt_depth_key(*line) for line in lines]
            missing = [k for k in keys if k not in npz.files]
            if missing:
                raise data.DataError(f"{path} has no ground truth for {len(missing)} split lines "
                                     f"(first: {missing[0]})"
                                     f"; export it with 01_data.export_gt_depth")
            return [npz[k].astype(np.float32) for k in keys]
    except ValueError as err:  # e.g. Monodepth2's gt_depths.npz, a pickled object array
        raise data.DataError(f"{path} is not an .npz of 01_data.export_gt_depth ({one_line(err)})") from None


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


def evaluate(model, config, cfg, device):
    """The whole evaluation: predictions, metrics table (+ baselines), CSV/markdown, figures."""
    height, width = int(config["height"]), int(config["width"])
    lines, gts, thin = test_split(cfg)
    warning = eval_tables.leakage_warning(config, lines, cfg.split)
    print(f"-> {len(lines)} {cfg.split} frames from {cfg.data_path}, network input {width}x{height}"
          f"{', post-processed' if cfg.post_process else ''}")
    if config.get("use_stereo") and not cfg.eval_stereo:
        print("   note: trained with stereo; the paper's MS rows are median-scaled as here (the official "
              "--eval_mono); --eval_stereo scores metric depth (x5.4)")
    median, scale = scaling(cfg)
    print("   stereo evaluation: x5.4, no median scaling" if cfg.eval_stereo
          else "   mono evaluation: median scaling")
    preds, images = run_network(model, test_loader(cfg, lines, height, width), cfg, device,
                                keep_images=cfg.num_figure_frames if cfg.figures else 0)
    result = evaluate_predictions(gts, preds, cfg.split, median, scale, thin)
    print_ratio_stats(result["ratios"])
    rows = [dict(result, name=cfg.model_name + (eval_tables.LEAK_MARK if warning else ""))]
    if cfg.baselines and not (Path(cfg.data_path) / data.SYNTH_MARKER).is_file():
        print("   (the mean-training-depth baseline needs the dense GT of the synthetic world: skipped)")
    elif cfg.baselines:
        train_lines = split_lines(replace(cfg, split="synthetic"), "train")  # also under a custom list
        mean_map = synthetic_world.mean_training_depth(cfg.data_path, train_lines)
        rows.append(dict(evaluate_predictions(gts, [mean_map] * len(gts), cfg.split, median, scale, thin),
                         name="mean training depth"))
    if cfg.baselines:
        torch.manual_seed(cfg.seed)  # the same random network every run
        untrained = bins.depthnet_from_config(config["model"]).to(device).eval()
        raw, _ = run_network(untrained, test_loader(cfg, lines, height, width), cfg, device)
        untrained_result = evaluate_predictions(gts, raw, cfg.split, median, scale, thin)
        rows.append(dict(untrained_result, name="untrained network"))
    print("\n" + eval_tables.format_table(rows, METRICS, warning) + "\n")
    csv_path, md_path = eval_tables.save_table(rows, METRICS, Path(cfg.out), cfg.split, warning)
    print(f"-> table saved to {csv_path} and {md_path}")
    if cfg.figures and images:
        fig_path = Path(cfg.out) / f"eval_{cfg.split}_predictions.png"
        at_gt_size = [resize_to(pred, *gt.shape) for pred, gt in zip(preds, gts[: len(images)])]
        figures.save_prediction_figure(images, at_gt_size, gts[: len(images)], fig_path)
        print(f"-> figure saved to {fig_path}")
        fig_path = Path(cfg.out) / f"eval_{cfg.split}_internals.png"
        if figures.save_internals_figure(model, images[0].to(device), fig_path):
            print(f"-> figure saved to {fig_path}")
    return rows


# ==============================================================================================
# ---- Engineering: not needed to understand SQLDepth ----
# The command line: EvalConfig, defaults from the checkpoint, the device, main (several runs in one
# table: helpers/compare_runs.py; your own images: helpers/predict.py).
# ==============================================================================================
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
    threads: int = 0  # CPU threads for PyTorch ops (0 = auto: the cores free at the start)
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


def parse_args(argv=None):
    """EvalConfig from the command line (one flag per field, generated by cli.add_dataclass_flags)."""
    parser = argparse.ArgumentParser(description="Evaluate SQLDepth (Eigen protocol) on a test split.")
    add_dataclass_flags(parser, EvalConfig)
    return EvalConfig(**vars(parser.parse_args(argv)))


def main(argv=None):
    """CLI entry point; returns the exit status (0 ok, 2 bad input with one `error:` line)."""
    cfg = parse_args(argv)
    stop = signal.signal(signal.SIGTERM, _stopped) if threading.current_thread() is threading.main_thread() else None
    try:
        if bool(cfg.checkpoint) == bool(cfg.official):
            raise data.DataError("give exactly one of --checkpoint FILE or --official DIR")
        device = choose_device(cfg.device)
        cpu_threads.use_threads(cfg.threads, say=False)
        if eval_tables.is_pattern(cfg.checkpoint):   # several checkpoints, one table
            eval_tables.evaluate_checkpoints(cfg, device, sys.modules[__name__])
            return 0
        model, config, source_dir = model_files.load_either(cfg.checkpoint, cfg.official, device)
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
