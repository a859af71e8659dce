"""demo_figures - what the demos of 03 and 04 show, drawn on a synthetic frame.

Serves `python 03_self_query.py` (main: a small synthetic world is rendered, one test frame goes
through 03's CostVolumeNet, untrained and, with --checkpoint, trained, and slices V[q] of the
self-cost volume are saved, each normalised on its own range) and `python 04_bins.py`
(save_bins_figure: bin centres and per-pixel bin probabilities). Nothing here is SQLDepth: the
networks come from 03 and 04. Tests: tests/test_03_self_query.py, tests/test_04_bins.py.
"""
import argparse
import importlib
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from helpers.cli import add_dataclass_flags  # the command line of every script

data = importlib.import_module("01_data")  # a module name cannot start with a digit: loaded by name


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
    """One synthetic RGB frame [1, 3, height, width] in [0, 1] (synthetic_world, read by 01_data) and its
    thin-structure mask."""
    from helpers import synthetic_world  # the renderer, only when a frame is asked for
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
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        model_cfg = ckpt["config"]["model"]
        if model_cfg.get("queries", "self") == "none":
            raise ValueError(f"{path} is a model without queries (queries='none'): it has no cost volume")
        net = net_class(**model_cfg)
        wanted = {k: v for k, v in ckpt["model"].items() if k.startswith(("unet.", "sql."))}
        net.load_state_dict(wanted)
        return net, int(ckpt["config"]["height"]), int(ckpt["config"]["width"])
    except ValueError:
        raise
    except Exception as err:  # missing file, not a checkpoint, a state dict that does not fit: one line
        raise ValueError(f"cannot load checkpoint {path} ({type(err).__name__}: {err})".splitlines()[0]) from None


def main(argv, net_class):
    """`python 03_self_query.py`: the command line generated from CostVolumeDemoConfig, the figure;
    net_class is 03's CostVolumeNet. Returns the exit status (2 = bad input)."""
    parser = argparse.ArgumentParser(description="Save cost-volume slices of a synthetic frame.")
    add_dataclass_flags(parser, CostVolumeDemoConfig)
    cfg = CostVolumeDemoConfig(**vars(parser.parse_args(argv)))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    torch.manual_seed(cfg.seed)
    try:
        untrained = net_class(cfg.num_layers, cfg.num_features, cfg.model_dim, cfg.patch_size,
                                  cfg.num_queries)
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
        axes[r, 0].imshow(rgb)
        axes[r, 0].set_title(f"{name} input", fontsize=8)
        for c, (q, v) in enumerate(slices, start=1):
            axes[r, c].imshow(v, cmap="magma")  # each slice normalised on its own range
            axes[r, c].set_title(f"query {q}", fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(cfg.out, dpi=100)
    print(f"saved {cfg.out}")
    return 0


def save_bins_figure(img, thin, out, path, title=""):
    """04_bins.py's demo figure: the image with three pixels (near road, far, a thin pole), the bin
    centres of this image, and the bin probabilities P(d) at the three pixels. img [1, 3, H, W];
    thin [H, W] bool or None; out: DepthNet's extras (probs [1, D, h, w], bin_centers [1, D], depth);
    title: what the figure shows (trained or not), above the panels. Returns {pixel label: depth in m}."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
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
