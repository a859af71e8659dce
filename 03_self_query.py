"""03 - self-query: the Self-Query Layer: patch tokens, a transformer, queries, the self-cost volume.

Concept (paper Sec. 3.2, Eq. 1-3): the U-Net feature map S0 [B, E, h, w] is cut into p x p patches
(Exercise 3.1), the patch tokens (plus a learned positional encoding) go through a small transformer
encoder, and the first Q output tokens become *queries* K [B, Q, E]: coarse, image-wide summaries of
what is in the scene. Each query is compared (a plain dot product, no 1/sqrt(E) scaling) with every
pixel of a fine feature map S = conv3x3(S0) (Exercise 3.2), giving the self-cost volume V
[B, Q, h, w]: how much each pixel "looks like" each query. 04 turns V into depth bins and per-pixel
probabilities.

Variants (paper ablations): queries="self" (above, the released models) or "learned": DETR-style
nn.Embedding queries that attend to the tokens through a TransformerDecoder (our choice of
architecture for this ablation; the official code has none). queries="none" is handled in 04
(no self-query layer at all).

Differences from the official code (github.com/hisfog/SfMNeXt-Impl, Lite_Depth_Decoder_QueryTr),
none of which change the numbers: we run the transformer batch-first (same parameters, and the
fused SDPA/"fast path" kernels are used in eval), and we raise a clear error when Q > N or N > 500
where the official code would fail later or silently use fewer queries.

Used by: 04_bins.DepthNet. Demo: `python 03_self_query.py [--checkpoint RUN/ckpt.pt]` saves a PNG
of several cost-volume slices for a synthetic frame. Tests: tests/test_03_self_query.py.
"""
import argparse
import importlib
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from helpers.cli import add_dataclass_flags  # the command line of every script (helpers/cli.py)

# A module name cannot start with a digit in an `import` statement, so the numbered scripts are
# loaded by name; the alias is the file name without its number.
unet = importlib.import_module("02_unet")

MAX_TOKENS = 500  # rows of the learned positional encoding (official value)


def embed_patches(s0, patch_conv, pos_encoding):
    """Exercise 3.1: patch embedding plus learned positional encoding -> tokens.

    s0 [B, E, h, w]; patch_conv: Conv2d(E, E, kernel p, stride p); pos_encoding [500, E].
    Returns tokens [B, N, E] with N = floor(h/p) * floor(w/p) in raster order (row by row), token n
    having pos_encoding[n] added. Hint: conv -> flatten the two spatial dims -> move E last.
    """
    patches = patch_conv(s0)  # [B, E, h/p, w/p]
    tokens = patches.flatten(2).transpose(1, 2)  # [B, N, E]
    return tokens + pos_encoding[: tokens.shape[1]].unsqueeze(0)  # [B, N, E]


def self_cost_volume(S, K):
    """Exercise 3.2: the self-cost volume V = S^T K of the paper's Eq. 3, reshaped per query.

    S [B, E, h, w] (fine per-pixel features), K [B, Q, E] (queries). Returns V [B, Q, h, w] with
    V[b, q, i, j] = sum_e K[b, q, e] * S[b, e, i, j]: raw dot products, no scaling, no softmax.
    Hint: one batched matmul of K [B, Q, E] with S flattened to [B, E, h*w], then reshape.
    """
    B, E, h, w = S.shape
    V = torch.bmm(K, S.reshape(B, E, h * w))  # [B, Q, h*w]
    return V.reshape(B, K.shape[1], h, w)  # [B, Q, h, w]


class SelfQueryLayer(nn.Module):
    """S0 [B, E, h, w] -> (V [B, Q, h, w] self-cost volume, S [B, E, h, w] fine features)."""

    def __init__(self, model_dim, patch_size, num_queries, dim_feedforward=512, num_layers=4,
                 num_heads=4, queries="self", dropout=0.1):
        super().__init__()
        if queries not in ("self", "learned"):
            raise ValueError(f"queries={queries!r}: SelfQueryLayer supports 'self' or 'learned' "
                             f"('none' means no self-query layer, see 04_bins)")
        if model_dim % num_heads:
            raise ValueError(f"model_dim={model_dim} must be divisible by num_heads={num_heads}")
        E = model_dim
        self.patch_size, self.num_queries, self.queries = patch_size, num_queries, queries
        # Official names in comments: embedding_convPxP, positional_encodings, transformer_encoder, conv3x3.
        self.patch_embed = nn.Conv2d(E, E, patch_size, stride=patch_size)
        self.pos_encoding = nn.Parameter(torch.rand(MAX_TOKENS, E))  # U[0,1) init like the official code
        layer = nn.TransformerEncoderLayer(E, num_heads, dim_feedforward, dropout=dropout, batch_first=True)
        self.transformer = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.fine_conv = nn.Conv2d(E, E, 3, 1, 1)
        if queries == "learned":  # DETR-style: Q learned vectors read the tokens by cross-attention
            self.query_embed = nn.Embedding(num_queries, E)
            dec = nn.TransformerDecoderLayer(E, num_heads, dim_feedforward, dropout=dropout, batch_first=True)
            self.query_decoder = nn.TransformerDecoder(dec, num_layers)

    def query_parameters(self):
        """The parameters that make the queries (patch embedding, positional encoding, transformer,
        learned queries): everything but the fine-feature conv (06's --query_lr_scale)."""
        return [p for name, p in self.named_parameters() if not name.startswith("fine_conv.")]

    def check_size(self, h, w):
        """Raise ValueError unless the S0 size h x w gives Q <= N <= 500 patch tokens."""
        p, Q = self.patch_size, self.num_queries
        N = (h // p) * (w // p)
        if N < 1 or N > MAX_TOKENS:
            raise ValueError(f"S0 of {h}x{w} with patch_size {p} gives N={N} tokens; need 1 <= N <= "
                             f"{MAX_TOKENS} (the positional encoding has {MAX_TOKENS} rows)")
        if self.queries == "self" and Q > N:
            raise ValueError(f"num_queries Q={Q} > number of patch tokens N={N} (S0 {h}x{w}, patch_size "
                             f"{p}): use a larger input, a smaller patch_size or fewer queries")
        return N

    def tokens(self, s0):
        """S0 [B, E, h, w] -> transformer output tokens [B, N, E]."""
        self.check_size(*s0.shape[-2:])
        return self.transformer(embed_patches(s0, self.patch_embed, self.pos_encoding))  # [B, N, E]

    def forward(self, s0, return_tokens=False):
        """(V, S); with return_tokens also the tokens [B, N, E] and the queries K [B, Q, E] (for 04's bins
        and diagnostics: for "learned" queries K cannot be read back from the tokens)."""
        tokens = self.tokens(s0)  # [B, N, E]
        if self.queries == "self":
            K = tokens[:, : self.num_queries]  # [B, Q, E]: the first Q tokens in raster order
        else:
            tgt = self.query_embed.weight.unsqueeze(0).expand(s0.shape[0], -1, -1)  # [B, Q, E]
            K = self.query_decoder(tgt, tokens)  # [B, Q, E]
        # V holds unscaled dot products that 04 exponentiates (two softmaxes): under bf16 autocast
        # their rounding error would grow with their size, so S and V are float32 (cheap: E channels).
        with torch.autocast(device_type=s0.device.type, enabled=False):
            S = self.fine_conv(s0.float())  # [B, E, h, w]
            V = self_cost_volume(S, K.float())  # [B, Q, h, w]
        return (V, S, tokens, K) if return_tokens else (V, S)


# ==============================================================================================
# ---- Engineering: not needed to understand SQLDepth ----
# The demo (a U-Net + Self-Query Layer without 04, a synthetic frame, a trained checkpoint) and the
# command line.
# ==============================================================================================
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


class CostVolumeNet(nn.Module):
    """U-Net (02) + Self-Query Layer (03): image -> self-cost volume, for the demo.

    Its submodules are named `unet` and `sql` as in 04_bins.DepthNet, so the first half of a trained
    DepthNet's state dict loads into it; this file never imports 04 (data flows one way).
    """

    def __init__(self, num_layers, num_features, model_dim, patch_size, num_queries, dim_feedforward=512,
                 queries="self", **_unused_model_fields):
        super().__init__()
        self.unet = unet.ResnetUNet(num_layers, num_features, model_dim)
        self.sql = SelfQueryLayer(model_dim, patch_size, num_queries, dim_feedforward, queries=queries)

    def forward(self, img):
        V, _ = self.sql(self.unet(img))  # [B, Q, h, w]
        return V


def synthetic_frame(height, width, seed=0):
    """One synthetic RGB frame [1, 3, height, width] in [0, 1] (synthetic_world, read by 01_data) and its
    thin-structure mask."""
    from helpers import split_lists  # the synthetic world's test list
    data = importlib.import_module("01_data")
    from helpers import synthetic_world
    from PIL import Image
    with tempfile.TemporaryDirectory() as tmp:
        root = synthetic_world.make_synthetic_kitti(Path(tmp), num_drives=3, frames_per_drive=3, seed=seed)
        folder, frame, side = data.read_split(split_lists.get_split_file("synthetic", "test", data_path=root))[0]
        sample = data.KittiRaw(root, [(folder, frame, side)], height, width, frame_ids=(0,))[0]
        mask_path = synthetic_world.synthetic_thin_mask_path(root, folder, frame)
        mask = np.asarray(Image.open(mask_path)) > 0  # [H_r, W_r]
    return data.image_to_float(sample["color"][0]).unsqueeze(0), mask  # [1, 3, H, W] in [0, 1]


def load_trained(path):
    """(CostVolumeNet, height, width) from a 06_train checkpoint; ValueError with the path if unusable."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        model_cfg = ckpt["config"]["model"]
        if model_cfg.get("queries", "self") == "none":
            raise ValueError(f"{path} is a model without queries (queries='none'): it has no cost volume")
        net = CostVolumeNet(**model_cfg)
        wanted = {k: v for k, v in ckpt["model"].items() if k.startswith(("unet.", "sql."))}
        net.load_state_dict(wanted)
        return net, int(ckpt["config"]["height"]), int(ckpt["config"]["width"])
    except ValueError:
        raise
    except Exception as err:  # missing file, not a checkpoint, a state dict that does not fit: one line
        raise ValueError(f"cannot load checkpoint {path} ({type(err).__name__}: {err})".splitlines()[0]) from None


def main(argv=None):
    """Command line generated from CostVolumeDemoConfig; returns the exit status (2 = bad input)."""
    parser = argparse.ArgumentParser(description="Save cost-volume slices of a synthetic frame.")
    add_dataclass_flags(parser, CostVolumeDemoConfig)
    cfg = CostVolumeDemoConfig(**vars(parser.parse_args(argv)))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    torch.manual_seed(cfg.seed)
    try:
        untrained = CostVolumeNet(cfg.num_layers, cfg.num_features, cfg.model_dim, cfg.patch_size,
                                  cfg.num_queries)
        nets = [("untrained", untrained, cfg.height, cfg.width)]
        if cfg.checkpoint:
            net, h, w = load_trained(cfg.checkpoint)
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


if __name__ == "__main__":
    sys.exit(main())
