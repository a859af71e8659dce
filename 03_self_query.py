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
import importlib
import sys

import torch
import torch.nn as nn

# A module name cannot start with a digit in an `import` statement, so the numbered scripts are
# loaded by name; the alias is the file name without its number.
unet = importlib.import_module("02_unet")

MAX_TOKENS = 500  # rows of the learned positional encoding (official value)


def embed_patches(s0, patch_conv, pos_encoding):
    """Exercise 3.1: patch embedding plus learned positional encoding -> tokens.

    s0 [B, E, h, w]; patch_conv: Conv2d(E, E, kernel p, stride p); pos_encoding [500, E].
    Returns tokens [B, N, E] with N = floor(h/p) * floor(w/p) in raster order (row by row), token n
    having pos_encoding[n] added. Hint: the stride-p conv already turns each p x p patch into one
    E-vector, a map [B, E, h/p, w/p]; what is left is to line those vectors up as a sequence, row
    by row, with E last, and to give each position n its own learned vector.
    """
    patches = patch_conv(s0)  # [B, E, h/p, w/p]
    tokens = patches.flatten(2).transpose(1, 2)  # [B, N, E]
    return tokens + pos_encoding[: tokens.shape[1]].unsqueeze(0)  # [B, N, E]


def self_cost_volume(S, K):
    """Exercise 3.2: the self-cost volume V = S^T K of the paper's Eq. 3, reshaped per query.

    S [B, E, h, w] (fine per-pixel features), K [B, Q, E] (queries). Returns V [B, Q, h, w] with
    V[b, q, i, j] = sum_e K[b, q, e] * S[b, e, i, j]: raw dot products, no scaling, no softmax.
    Hint: for one image this is a matrix product, [Q, E] times [E, pixels]; the pixels need to be
    one dimension only while you multiply, and get their (h, w) back afterwards.
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
# The demo: a U-Net + Self-Query Layer without 04 (its figure, the synthetic frame and the command
# line: helpers/figures.py).
# ==============================================================================================
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


def main(argv=None):
    """The demo: cost-volume slices V[q] of a synthetic frame, untrained and (with --checkpoint) trained;
    helpers/figures.py draws them with this file's CostVolumeNet. Returns the exit status."""
    from helpers import figures
    return figures.main(argv, CostVolumeNet)


if __name__ == "__main__":
    sys.exit(main())
