"""figures - pictures of depth and of SQLDepth's insides: 07_eval's figures, the demos of 03 and 04.

Depth is shown as inverse depth normalised per image (docs/kitti.md says why).
Tests: tests/test_07_eval.py, tests/test_03_self_query.py, tests/test_04_bins.py.
"""
import argparse
import importlib
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from helpers import model_files
from helpers.cli import add_dataclass_flags, one_line

# A module name cannot start with a digit: the numbered scripts are loaded by name.
data = importlib.import_module("01_data")
bins = importlib.import_module("04_bins")

MIN_DEPTH = 1e-3  # metres: the evaluation's lower bound (07_eval.MIN_DEPTH), a floor before inverting


def colorize_inverse_depth(depth):
    """[H, W] depth -> [H, W, 3] uint8 magma of 1/depth, its 2nd..98th percentile spanning the map."""
    import matplotlib
    inv = 1.0 / np.maximum(depth, MIN_DEPTH)
    lo, hi = np.percentile(inv, 2), np.percentile(inv, 98)
    norm = np.clip((inv - lo) / max(hi - lo, 1e-8), 0, 1)
    return (matplotlib.colormaps["magma"](norm)[..., :3] * 255).astype(np.uint8)


def pyplot():
    """matplotlib.pyplot without a display."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def show(ax, image, title, **imshow_options):
    """An image panel: the image, a small title, no axes."""
    ax.imshow(image, **imshow_options)
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def save_prediction_figure(images, preds, gts, path):
    """Rows of input | predicted inverse depth | GT inverse depth | abs-rel error, for a few frames.
    preds [H, W] each at the size of its GT, median-scaled here."""
    plt = pyplot()
    aspect = images[0].shape[-2] / images[0].shape[-1]  # H / W of the input
    fig, axes = plt.subplots(len(images), 4, figsize=(16, (4 * aspect + 0.35) * len(images)), squeeze=False)
    for row, (img, pred, gt) in enumerate(zip(images, preds, gts)):
        pred = pred * np.median(gt[gt > 0]) / np.median(pred[gt > 0]) if (gt > 0).any() else pred
        err = np.where(gt > 0, np.abs(pred - gt) / np.maximum(gt, MIN_DEPTH), np.nan)
        gt_inv = np.where(gt > 0, 1.0 / np.maximum(gt, MIN_DEPTH), np.nan)
        panels = [(img.permute(1, 2, 0).numpy(), {}), (colorize_inverse_depth(pred), {}),
                  (gt_inv, {"cmap": "magma"}), (err, {"cmap": "inferno", "vmin": 0, "vmax": 0.5})]
        for ax, title, (im, kw) in zip(axes[row], ("input", "prediction (1/depth)", "GT (1/depth)",
                                                   "abs rel error (0-0.5)"), panels):
            show(ax, im, title, **kw)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


@torch.no_grad()
def save_internals_figure(model, image, path, num_slices=4):
    """Cost-volume slices V[q] (paper Fig. 3) and the bins: centres and P(d) at a few pixels."""
    plt = pyplot()
    out = model(image[None], return_extras=True)
    if "cost_volume" not in out or "bin_centers" not in out:
        print("   (this variant has no cost volume / bins: internals figure skipped)")
        return False
    volume, centres = out["cost_volume"][0].cpu(), out["bin_centers"][0].cpu()  # [Q, h, w], [D]
    probs = out["probs"][0].cpu() if "probs" in out else None  # [D, h, w]
    h, w = volume.shape[-2:]
    stats = bins.stats_from_extras(out)
    fig, axes = plt.subplots(2, num_slices, figsize=(4 * num_slices, 5.5), squeeze=False)
    fig.suptitle(f"query similarity {stats['query_similarity']:.2f} (1 = collapsed) | cost-volume effective rank "
                 f"{stats['effective_rank']:.1f} of Q={volume.shape[0]} | {stats['bins_99']:.0f} of "
                 f"D={len(centres)} bins hold 99% of P", fontsize=10)
    for i, q in enumerate(np.linspace(0, volume.shape[0] - 1, num_slices).astype(int)):
        show(axes[0, i], volume[q].numpy(), f"cost volume slice q={q}", cmap="viridis")
    show(axes[1, 0], image.permute(1, 2, 0).cpu().numpy(), "input")
    axes[1, 1].plot(centres.numpy(), "o-", ms=2)
    axes[1, 1].set(title="bin centres (m)", xlabel="bin d", ylabel="c_d")
    pixels = [(h // 4, w // 2), (h // 2, w // 2), (3 * h // 4, w // 4), (h - 1, w // 2)]
    for y, x in pixels if probs is not None else []:
        axes[1, 2].plot(centres.numpy(), probs[:, y, x].numpy(), label=f"(y={y}, x={x})")
    axes[1, 2].set(title="P(d) at a few pixels", xlabel="depth (m)")
    axes[1, 2].legend(fontsize=6)
    show(axes[1, 3], colorize_inverse_depth(out["depth"][0, 0].cpu().numpy()), "depth (1/depth, magma)")
    fig.tight_layout(rect=(0, 0, 1, 0.95))  # room for the title line
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


# ---- The demos of 03 and 04 ----
@dataclass
class CostVolumeDemoConfig:
    """What `python 03_self_query.py` does: save cost-volume slices of a synthetic frame."""
    checkpoint: str = ""  # optional trained checkpoint (06_train format); its model config is used
    num_layers: int = 18  # ResNet depth of the untrained network (kitti-r18-640x192 preset)
    num_features: int = 256  # U-Net width nf of the untrained network
    model_dim: int = 32  # E of the untrained network
    patch_size: int = 16  # p of the untrained network
    num_queries: int = 120  # Q of the untrained network
    height: int = 192  # network input height (taken from the checkpoint when given)
    width: int = 640  # network input width (taken from the checkpoint when given)
    num_slices: int = 6  # how many cost-volume slices (queries) to show
    out: str = "runs/demo_03_cost_volume.png"  # output figure
    seed: int = 0  # seed of the synthetic world and of the untrained weights


def synthetic_frame(height, width, seed=0):
    """One synthetic RGB frame [1, 3, height, width] in [0, 1] and its thin-structure mask."""
    from helpers import synthetic_world
    from PIL import Image
    with tempfile.TemporaryDirectory() as tmp:
        root = synthetic_world.make_synthetic_kitti(Path(tmp), num_drives=3, frames_per_drive=3, seed=seed)
        folder, frame, side = data.read_split(data.synthetic_split_path(root, "test"))[0]
        sample = data.KittiRaw(root, [(folder, frame, side)], height, width, frame_ids=(0,))[0]
        mask_path = synthetic_world.synthetic_thin_mask_path(root, folder, frame)
        mask = np.asarray(Image.open(mask_path)) > 0  # [H_r, W_r]
    return data.image_to_float(sample["color"][0]).unsqueeze(0), mask  # [1, 3, H, W] in [0, 1]


def load_trained(path, net_class):
    """(net_class(**model config), height, width) from a 06_train checkpoint, its U-Net and Self-Query
    Layer weights loaded; ValueError with the path if unusable."""
    try:
        ckpt = model_files.read_checkpoint(path, keys=("model", "config"))
    except data.DataError as err:                # missing, unreadable, not ours, NaN/Inf weights
        raise ValueError(str(err)) from None
    model_cfg = ckpt["config"]["model"]
    if model_cfg.get("queries", "self") == "none":
        raise ValueError(f"{path} is a model without queries (queries='none'): it has no cost volume")
    try:
        net = net_class(**model_cfg)
        net.load_state_dict({k: v for k, v in ckpt["model"].items() if k.startswith(("unet.", "sql."))})
    except (TypeError, RuntimeError) as err:     # a state dict that does not fit: one line
        raise ValueError(f"cannot load checkpoint {path} ({one_line(err)})") from None
    return net, int(ckpt["config"]["height"]), int(ckpt["config"]["width"])


def main(argv, net_class):
    """`python 03_self_query.py` with net_class 03's CostVolumeNet; returns the exit status (2 = bad input)."""
    parser = argparse.ArgumentParser(description="Save cost-volume slices of a synthetic frame.")
    add_dataclass_flags(parser, CostVolumeDemoConfig)
    cfg = CostVolumeDemoConfig(**vars(parser.parse_args(argv)))
    plt = pyplot()
    torch.manual_seed(cfg.seed)
    try:
        untrained = net_class(cfg.num_layers, cfg.num_features, cfg.model_dim, cfg.patch_size, cfg.num_queries)
        nets = [("untrained", untrained, cfg.height, cfg.width)]
        if cfg.checkpoint:
            net, h, w = load_trained(cfg.checkpoint, net_class)
            nets.append(("trained", net, h, w))
        for _, net, h, w in nets:
            net.sql.check_size(h // 2, w // 2)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rows = []
    for name, net, h, w in nets:
        img, _ = synthetic_frame(h, w, cfg.seed)
        with torch.no_grad():
            V = net.eval()(img)[0]  # [Q, h/2, w/2]
        picks = np.linspace(0, V.shape[0] - 1, cfg.num_slices).round().astype(int)
        print(f"{name}: image {tuple(img.shape)} -> cost volume {tuple(V.shape)}, "
              f"values in [{V.min():.1f}, {V.max():.1f}]")
        rows.append((name, img[0].permute(1, 2, 0).numpy(), [(q, V[q].numpy()) for q in picks]))
    fig, axes = plt.subplots(len(rows), cfg.num_slices + 1, figsize=(3 * (cfg.num_slices + 1), 1.4 * len(rows)),
                             squeeze=False)
    for r, (name, rgb, slices) in enumerate(rows):
        show(axes[r, 0], rgb, f"{name} input")
        for c, (q, v) in enumerate(slices, start=1):
            show(axes[r, c], v, f"query {q}", cmap="magma")  # each slice normalised on its own range
    fig.tight_layout()
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(cfg.out, dpi=100)
    print(f"saved {cfg.out}")
    return 0


def save_bins_figure(img, thin, out, path, title=""):
    """04_bins.py's demo figure: the image with three pixels (near road, far, a thin pole), the bin
    centres, and P(d) at the three pixels. img [1, 3, H, W]; thin [H, W] bool or None; out: DepthNet's
    extras. Returns {pixel label: depth in m}."""
    plt = pyplot()
    P, c = out["probs"][0], out["bin_centers"][0]  # [D, h/2, w/2], [D]
    ph, pw = P.shape[-2:]
    pixels = {"near road": (ph - 3, pw // 2), "far (image centre)": (int(ph * 0.4), pw // 2)}
    if thin is not None and thin.any():
        ys, xs = np.nonzero(thin)
        y, x = int(ys[len(ys) // 2]), int(xs[len(xs) // 2])  # a thin-structure pixel at full size
        pixels["thin pole"] = (min(y * ph // thin.shape[0], ph - 1), min(x * pw // thin.shape[1], pw - 1))
    fig, axes = plt.subplots(1, 3, figsize=(16, 3.5))
    axes[0].imshow(img[0].permute(1, 2, 0).numpy())
    for label, (y, x) in pixels.items():
        axes[0].plot(2 * x, 2 * y, "o", label=label)
        axes[2].plot(c.numpy(), P[:, y, x].numpy(), ".-", label=f"{label}: {out['depth'][0, 0, y, x]:.1f} m")
    axes[0].legend(fontsize=7)
    axes[1].stem(c.numpy(), np.ones(len(c)), markerfmt=" ", basefmt=" ")
    axes[1].set(xlabel="bin centre (m)", title=f"{len(c)} bin centres of this image", yticks=[])
    axes[2].set(xlabel="bin centre (m)", ylabel="probability", title="per-pixel bin probabilities")
    axes[2].set_ylim(bottom=0)  # from 0: a flat P must look flat, not zoomed into noise
    axes[2].legend(fontsize=7)
    axes[0].axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return {label: float(out["depth"][0, 0, y, x]) for label, (y, x) in pixels.items()}
