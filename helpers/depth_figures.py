"""depth_figures - pictures of depth: inverse depth in colour, predictions beside the truth, SQL internals.

Serves 07_eval.py (--figures), helpers/predict.py and helpers/compare_runs.py. Depth is shown as
inverse depth with a colour map normalised per image (near is bright, far is dark): plain depth or a
fixed normalisation leaves most of a KITTI frame black or one colour (docs/kitti.md).
Tests: tests/test_07_eval.py.
"""
import importlib

import numpy as np
import torch

bins = importlib.import_module("04_bins")  # a module name cannot start with a digit: loaded by name

MIN_DEPTH = 1e-3  # metres: the evaluation's lower bound (07_eval.MIN_DEPTH), a floor before inverting


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
    """Rows of input | predicted inverse depth | GT inverse depth | abs-rel error, for a few frames.
    preds [H, W] each at the size of its GT (07_eval.resize_to), median-scaled here for the picture."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
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
