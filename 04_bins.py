"""04 - bins: depth from the self-cost volume: adaptive bins, probabilities, and the full DepthNet.

Concept (paper Sec. 3.3, Eq. 4-6). From the cost volume V [B, Q, h, w] and the fine features
S [B, E, h, w] of 03:
1. Eq. 4: each query "counts" the pixels it matches: a softmax of V over the h*w positions weights
   S into one summary per query -> [B, Q, E] (Exercise 4.1). As in the official code, the summaries
   use S (after the 3x3 conv), not S0.
2. An MLP (Q*E -> 16Q -> 256 -> D, LeakyReLU) regresses D numbers per image; relu + 0.1, normalise,
   scale to (max - min), cumsum from min_depth -> D+1 bin edges and D centres c per image
   (Exercise 4.2).
3. Eq. 5-6: a 1x1 conv maps V's Q channels to D logits per pixel, a softmax over the D bins gives
   probabilities P, and depth = sum_d P_d * c_d (Exercise 4.3). (The paper's Eq. 5 writes the
   softmax index as Q; the official code, and we, use D.)
`DepthNet` assembles 02 + 03 + this file: image [B, 3, H, W] in [0, 1] -> depth [B, 1, H/2, W/2] metres.
`PRESETS` are the released models (their parameter counts are exact: docs/kitti.md, "Where we follow
the paper, and where the official code").

Ablation variants (config fields bins / queries): bins "fixed" (uniform edges in [min, max]),
"adabins" (AdaBins' mini-ViT: the bins come from the first transformer token through an MLP
E -> 256 -> 256 -> D), "sql" (above); queries "learned" (03) and "none": no self-query layer and no
bins, the plain head of the field instead (the paper's no-query baseline): Monodepth2's disparity
head on S0 (`disparity_to_depth`): conv -> sigmoid -> disparity in [1/100, 1/0.1] -> depth =
1/disparity, at one scale like our head (Monodepth2 predicts four; github.com/nianticlabs/monodepth2).

Diagnostics (is the self-query layer used as intended?): `query_similarity` (1 = collapsed
queries), `cost_volume_effective_rank` (1 .. Q), `bins_holding_mass` (bins holding 99% of P), and
`internals_stats(net, images)`, all three at once for logging.

Below the engineering banner: loading our checkpoints, and the demo (the official encoder.pth +
depth.pth of github.com/hisfog/SfMNeXt-Impl become our state dict in helpers/model_files.py). Run
`python 04_bins.py` for the demo figure (bin centres and per-pixel bin probabilities); the speed
table of the presets (parameters, MACs, inference and training step) is helpers/benchmark.py's.
Tests: tests/test_04_bins.py.
"""
import argparse
import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers.cli import add_dataclass_flags, without_removed  # the command line of every script

# A module name cannot start with a digit in an `import` statement, so the numbered scripts are
# loaded by name; the alias is the file name without its number.
unet = importlib.import_module("02_unet")
self_query = importlib.import_module("03_self_query")


def spatial_softmax_summaries(V, S):
    """Exercise 4.1: per-query summaries of the fine features (paper Eq. 4).

    V [B, Q, h, w] cost volume, S [B, E, h, w] fine features. For each query q: a softmax of V[b, q] over
    all h*w pixels gives weights that sum to 1; the summary is the weighted sum of S's pixel
    vectors. Returns [B, Q, E]. Hint: per image, the weights form a [Q, pixels] matrix whose rows
    sum to 1 and the pixel vectors a [pixels, E] one: a weighted sum for every query at once is
    their product.
    """
    B, Q, h, w = V.shape
    weights = torch.softmax(V.reshape(B, Q, h * w), dim=-1)  # [B, Q, h*w], each row sums to 1
    return torch.bmm(weights, S.reshape(B, S.shape[1], h * w).transpose(1, 2))  # [B, Q, E]


def bins_from_mlp_output(y, min_depth, max_depth):
    """Exercise 4.2: bin edges and centres from the MLP's raw output (per image).

    y [B, D] raw numbers. widths: relu(y) + 0.1, divided by their sum, times (max - min).
    edges = min_depth followed by the cumulative sum of the widths added to it -> [B, D+1]
    (first = min_depth, last = max_depth); centres = mid-points of consecutive edges -> [B, D].
    Returns (edges, centres). Hint: edge k is min_depth plus the widths of the k bins before it, so
    D widths make D + 1 edges; a running sum along the bins gives them for every image at once.
    """
    y = torch.relu(y) + 0.1  # the 0.1 keeps every bin strictly wider than zero
    widths = (max_depth - min_depth) * y / y.sum(dim=1, keepdim=True)  # [B, D]
    edges = torch.cumsum(F.pad(widths, (1, 0), value=min_depth), dim=1)  # [B, D+1]
    centres = 0.5 * (edges[:, :-1] + edges[:, 1:])  # [B, D]
    return edges, centres


def combine_probabilities(logits, centres):
    """Exercise 4.3: probabilistic combination (paper Eq. 5-6).

    logits [B, D, h, w] (one score per bin and pixel), centres [B, D] (per-image bin centres).
    P = softmax over the D bins at each pixel; depth = sum_d P_d * c_d -> [B, 1, h, w].
    Returns (depth [B, 1, h, w], P [B, D, h, w]). Hint: the bins are dim 1. All pixels of an image
    share its D centres, so the centres must broadcast against P [B, D, h, w]; depth is an expected
    value over the bins, and it stays 4-D.
    """
    P = torch.softmax(logits, dim=1)  # [B, D, h, w], sums to 1 over D
    depth = (P * centres[:, :, None, None]).sum(dim=1, keepdim=True)  # [B, 1, h, w]
    return depth, P


# The plain head's depth range: Monodepth2's min_depth 0.1 and max_depth 100 (not the bins' 0.001
# and 80: a sigmoid over disparities up to 1/0.001 would spend most of its range on the first metre).
PLAIN_HEAD_DEPTH_RANGE = (0.1, 100.0)


def disparity_to_depth(sigmoid_output, min_depth, max_depth):
    """The plain head's output: a sigmoid in (0, 1) [B, 1, h, w] -> depth [B, 1, h, w].

    Monodepth2's disp_to_depth: the sigmoid is a disparity scaled to [1/max_depth, 1/min_depth],
    and depth is its reciprocal. Scaled in disparity, the sigmoid's range spreads evenly over
    1/depth, as parallax does: near depths get fine steps, far ones coarse ones.
    """
    min_disp, max_disp = 1.0 / max_depth, 1.0 / min_depth
    disparity = min_disp + (max_disp - min_disp) * sigmoid_output  # [B, 1, h, w]
    return 1.0 / disparity


def output_depth_range(cfg):
    """(min, max) depth that a DepthNet of this config can output: its bins' range, or the plain head's."""
    return PLAIN_HEAD_DEPTH_RANGE if cfg.queries == "none" else (cfg.min_depth, cfg.max_depth)


@dataclass
class DepthNetConfig:
    num_layers: int = 50  # ResNet depth of the encoder: 18, 34 or 50
    num_features: int = 256  # U-Net decoder width nf (channels nf -> nf/16)
    model_dim: int = 32  # E: channels of S0/S, token and query size
    patch_size: int = 16  # p: patch size of the patch embedding (N = (h/p) * (w/p) tokens)
    num_queries: int = 64  # Q: number of queries (first Q tokens); needs Q <= N
    num_bins: int = 64  # D: number of depth bins
    dim_feedforward: int = 512  # FFN width of the transformer layers (512 = "lite" released models)
    min_depth: float = 0.001  # first bin edge, metres
    max_depth: float = 80.0  # last bin edge, metres
    bins: str = "sql"  # "sql" (from the cost volume), "fixed" (uniform) or "adabins" (first token)
    queries: str = "self"  # "self" (first Q tokens), "learned" (DETR-style), "none" (disparity head, no bins)
    dropout: float = 0.1  # dropout of the self-query transformer layers (0.1 as the official code)
    pretrained: Optional[str] = None  # None, "imagenet" (torchvision download) or a .pth path


# The released KITTI models; pretrained=None so building one never downloads: training sets
# pretrained="imagenet". Their input sizes (H, W) in PRESET_SIZES.
PRESETS = {
    "kitti-r50-640x192": DepthNetConfig(50, 256, 32, 16, 64, 64, 512),
    "kitti-r50-1024x320": DepthNetConfig(50, 256, 32, 20, 128, 128, 512),
    "kitti-r18-640x192": DepthNetConfig(18, 256, 32, 16, 120, 128, 512),
}
PRESET_SIZES = {"kitti-r50-640x192": (192, 640), "kitti-r50-1024x320": (320, 1024),
                "kitti-r18-640x192": (192, 640)}


def _mlp(sizes):
    """Linear layers with LeakyReLU(0.01) between them (indices 0, 2, 4 like the official Sequential)."""
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [nn.Linear(a, b)] + ([nn.LeakyReLU(0.01)] if i < len(sizes) - 2 else [])
    return nn.Sequential(*layers)


class DepthNet(nn.Module):
    """Image [B, 3, H, W] in [0, 1] -> depth [B, 1, H/2, W/2] in metres (SQLDepth and its ablations)."""

    def __init__(self, cfg: DepthNetConfig):
        super().__init__()
        if cfg.bins not in ("sql", "fixed", "adabins"):
            raise ValueError(f"bins={cfg.bins!r}: choose 'sql', 'fixed' or 'adabins'")
        if cfg.queries not in ("self", "learned", "none"):
            raise ValueError(f"queries={cfg.queries!r}: choose 'self', 'learned' or 'none'")
        if not 0 < cfg.min_depth < cfg.max_depth:
            raise ValueError(f"need 0 < min_depth < max_depth, got {cfg.min_depth}, {cfg.max_depth}")
        self.cfg = cfg
        E, Q, D = cfg.model_dim, cfg.num_queries, cfg.num_bins
        self.unet = unet.ResnetUNet(cfg.num_layers, cfg.num_features, E)
        if cfg.queries == "none":  # no cost volume: Monodepth2's ConvBlock (conv3x3 + ELU), dispconv
            self.head = nn.Sequential(nn.Conv2d(E, E, 3, 1, 1, padding_mode="reflect"), nn.ELU(),
                                      nn.Conv2d(E, 1, 3, 1, 1, padding_mode="reflect"))
        else:
            self.sql = self_query.SelfQueryLayer(E, cfg.patch_size, Q, cfg.dim_feedforward,
                                                 queries=cfg.queries, dropout=cfg.dropout)
            if cfg.bins == "sql":
                self.bins_mlp = _mlp([Q * E, 16 * Q, 256, D])  # official bins_regressor
            elif cfg.bins == "adabins":
                self.bins_mlp = _mlp([E, 256, 256, D])  # AdaBins' regressor on the first token
            self.to_logits = nn.Conv2d(Q, D, 1)  # official convert_to_prob.0
        unet.load_pretrained(self.unet.encoder, cfg.pretrained)

    def forward(self, img, return_extras=False):
        return self.depth_from_features(self.unet(img), return_extras)

    def query_parameters(self):
        """The parameters that make the queries (03's SelfQueryLayer.query_parameters); none without."""
        return self.sql.query_parameters() if self.cfg.queries != "none" else []

    def depth_from_features(self, s0, return_extras=False):
        """S0 [B, E, h, w] -> depth [B, 1, h, w] (or the extras dict): everything after the U-Net."""
        cfg = self.cfg
        if cfg.queries == "none":
            sigmoid = torch.sigmoid(self.head(s0).float())  # [B, 1, H/2, W/2]
            depth = disparity_to_depth(sigmoid, *PLAIN_HEAD_DEPTH_RANGE)
            return {"depth": depth} if return_extras else depth
        # V [B, Q, h, w] and S [B, E, h, w] in float32, tokens [B, N, E], queries K [B, Q, E]
        V, S, tokens, K = self.sql(s0, return_tokens=True)
        # Everything after the transformer runs in float32 even under bf16 autocast (it is cheap):
        # the summaries and logits come from softmaxes of V, and bf16 keeps 8 bits of mantissa,
        # i.e. steps of 0.25-0.5 m near 80 m, too coarse for bin centres and depth.
        lo, hi = cfg.min_depth, cfg.max_depth   # the bins span depth [min, max] (the paper)
        with torch.autocast(device_type=V.device.type, enabled=False):
            if cfg.bins == "sql":
                summaries = spatial_softmax_summaries(V, S)  # [B, Q, E]
                y = self.bins_mlp(summaries.flatten(1))  # [B, D]
                edges, centres = bins_from_mlp_output(y, lo, hi)
            elif cfg.bins == "adabins":
                y = self.bins_mlp(tokens[:, 0].float())  # [B, D], from the first token only
                edges, centres = bins_from_mlp_output(y, lo, hi)
            else:  # fixed: uniform edges, the same for every image
                edges = torch.linspace(lo, hi, cfg.num_bins + 1, device=V.device)
                edges = edges.expand(V.shape[0], -1)  # [B, D+1]
                centres = 0.5 * (edges[:, :-1] + edges[:, 1:])  # [B, D]
            depth, P = combine_probabilities(self.to_logits(V), centres)  # [B, 1, h, w], [B, D, h, w]
        if return_extras:
            return {"depth": depth, "cost_volume": V, "bin_centers": centres, "bin_edges": edges, "probs": P,
                    "queries": K}
        return depth


# ---- Diagnostics ----
# Is the self-query layer used as intended? Three numbers, each defined so that its extremes are easy
# to read: queries that all point one way (collapse), a cost volume whose Q slices are one image in Q
# copies, and a few bins carrying all the probability while the rest sit unused.
INTERNALS_STATS = ("query_similarity", "effective_rank", "bins_99")


def query_similarity(queries):
    """Mean pairwise cosine similarity of the Q query vectors, queries [B, Q, E] -> float.

    The off-diagonal mean of each image's Q x Q cosine matrix, averaged over the batch: 1.0 = every
    query points the same way (collapsed), 0.0 = mutually orthogonal. NaN when Q < 2.
    """
    B, Q, _ = queries.shape
    if Q < 2:
        return float("nan")
    unit = F.normalize(queries.detach().float(), dim=-1)  # [B, Q, E]; a zero vector stays zero
    cos = torch.bmm(unit, unit.transpose(1, 2))  # [B, Q, Q]
    off_diagonal = cos.sum((1, 2)) - cos.diagonal(dim1=1, dim2=2).sum(-1)  # [B]
    return float((off_diagonal / (Q * (Q - 1))).mean())


def cost_volume_effective_rank(V):
    """Effective rank (Roy & Vetterli 2007) of the cost volume V [B, Q, h, w] -> float in [1, Q].

    Per image, V as a Q x (h*w) matrix: singular values s, p = s / sum(s), rank = exp(-sum p ln p)
    (0 ln 0 = 0), then the mean over the batch. 1 = every slice is a multiple of one image; Q = Q
    orthogonal slices of equal energy. V is not centred: a constant offset per slice counts as
    a direction of its own.
    """
    B, Q, h, w = V.shape
    s = torch.linalg.svdvals(V.detach().float().reshape(B, Q, h * w))  # [B, min(Q, h*w)]
    p = s / s.sum(-1, keepdim=True).clamp_min(1e-30)  # [B, min(Q, h*w)]; an all-zero V has p = 0
    entropy = -torch.where(p > 0, p * torch.log(p.clamp_min(1e-30)), torch.zeros_like(p)).sum(-1)  # [B]
    return float(torch.exp(entropy).mean())


def bins_holding_mass(probabilities, fraction=0.99):
    """How many bins hold `fraction` of the probability mass, probabilities [B, D, h, w] -> float.

    Per image: the mean of P over the pixels gives one mass per bin [D]; sorted in descending
    order, count bins until the cumulative mass reaches `fraction`. Averaged over the batch: a small
    number out of D means most bins are never used.
    """
    mass = probabilities.detach().float().mean((2, 3))  # [B, D], each row sums to 1
    cumulative = mass.sort(dim=1, descending=True).values.cumsum(1)  # [B, D]
    # The 1e-6 keeps float round-off (a total of 0.9999999) from counting one bin too many.
    count = (cumulative < fraction - 1e-6).sum(1) + 1  # [B] bins needed to reach the fraction
    return float(count.clamp(max=mass.shape[1]).float().mean())


def stats_from_extras(extras):
    """The three diagnostics of one forward pass's extras dict (DepthNet(img, return_extras=True)).

    Returns {name: float} for the names in INTERNALS_STATS; NaN where the variant lacks the part
    (queries="none" has no queries, no cost volume and no bins).
    """
    nan = float("nan")
    return {"query_similarity": query_similarity(extras["queries"]) if "queries" in extras else nan,
            "effective_rank": (cost_volume_effective_rank(extras["cost_volume"])
                               if "cost_volume" in extras else nan),
            "bins_99": bins_holding_mass(extras["probs"]) if "probs" in extras else nan}


@torch.no_grad()
def internals_stats(depth_net, images):
    """Query similarity, cost-volume effective rank and bins holding 99% of P for images [B, 3, H, W].

    For logging during training: runs depth_net (a DepthNet, also inside DDP) in eval mode under
    no_grad and restores its mode. Returns {name: float} (see stats_from_extras).
    """
    was_training = depth_net.training
    depth_net.eval()
    try:
        extras = depth_net(images, return_extras=True)
    finally:
        depth_net.train(was_training)
    return stats_from_extras(extras)


# ==============================================================================================
# ---- Engineering: not needed to understand SQLDepth ----
# Loading our checkpoints, the demo and the command line (the official weights' conversion is
# helpers/model_files.py, the speed table helpers/benchmark.py).
# ==============================================================================================
# ---- Our checkpoints, the demo and the command line ----
@dataclass
class BinsDemoConfig:
    """What `python 04_bins.py` does: the demo figure."""
    preset: str = ""  # the untrained network's preset (default: kitti-r18-640x192)
    checkpoint: str = ""  # a trained 06_train checkpoint to show instead of an untrained network
    out: str = "runs/demo_04_bins.png"  # demo figure
    seed: int = 0  # synthetic frame and weights seed


# Model fields of earlier code that were measured, lost and removed (docs/ablations.md, "Removed knobs"),
# with their default then: a checkpoint that stored one at that default loads as if it lacked it.
REMOVED_MODEL_FIELDS = {"bins_space": "depth"}


def depthnet_from_config(model_cfg, state_dict=None):
    """A DepthNet rebuilt from a stored config dict; its weights come from state_dict (strict) or
    stay at their seeded random initialisation, never from a download."""
    model_cfg = without_removed(model_cfg, REMOVED_MODEL_FIELDS, "this checkpoint")
    net = DepthNet(DepthNetConfig(**{**model_cfg, "pretrained": None}))
    if state_dict is not None:
        net.load_state_dict(state_dict, strict=True)
    return net


def run_demo(cfg):
    """Figure: the per-image bin centres and the bin probabilities of three pixels of a synthetic frame."""
    from helpers import figures, model_files  # a rendered synthetic frame, the figure; our checkpoints
    torch.manual_seed(cfg.seed)
    if cfg.checkpoint:
        try:
            net, config = model_files.load_model(cfg.checkpoint, torch.device("cpu"))
        except model_files.data.DataError as err:    # missing, unreadable, not ours, NaN/Inf weights
            raise ValueError(str(err)) from None
        h, w = int(config["height"]), int(config["width"])
    else:
        name = cfg.preset or "kitti-r18-640x192"
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        net, (h, w) = DepthNet(PRESETS[name]), PRESET_SIZES[name]
    img, thin = figures.synthetic_frame(h, w, cfg.seed)
    with torch.no_grad():
        out = net.eval()(img, return_extras=True)
    if "probs" not in out:
        raise ValueError("this model has no bins (queries='none'): nothing to plot")
    c = out["bin_centers"][0]  # [D]
    # Say which state the figure shows: an untrained network's flat P and equal depths look like a bug
    # in 4.2/4.3 to a learner who does not know they are what random weights give.
    if cfg.checkpoint:
        state = f"trained network ({cfg.checkpoint})"
    else:
        state = f"UNTRAINED network ({name}, random weights, no --checkpoint): flat P, about equal depths"
    title = state if cfg.checkpoint else (state + "\na trained one: python 06_train.py, then python 04_bins.py "
                                                   "--checkpoint runs/RUN/best.pt")
    depths = figures.save_bins_figure(img, thin, out, Path(cfg.out), title=title)
    peak = float(out["probs"][0].max(dim=0).values.mean())  # mean over pixels of the largest P_d
    print(state)
    print(f"bin centres: {c[:4].numpy().round(2)} ... {c[-2:].numpy().round(2)} m; saved {cfg.out}")
    print("marked pixels: " + ", ".join(f"{label} {d:.1f} m" for label, d in depths.items())
          + f"; mean peak probability {peak:.3f} (flat: 1/D = {1 / len(c):.3f})")
    if not cfg.checkpoint:
        print("  Random weights give near-equal logits, so P is almost flat and every pixel's depth is\n"
              "  about the mean of the bin centres: what an untrained network shows, not a wrong 4.2 or\n"
              "  4.3. A trained one puts the near road closer than the far centre, with peaked\n"
              "  probabilities. To see it: `python 06_train.py` (about 10 min; it prints its run folder),\n"
              "  then `python 04_bins.py --checkpoint runs/RUN/best.pt`.")


def main(argv=None):
    """Command line generated from BinsDemoConfig; returns the exit status (2 = bad input, one line)."""
    parser = argparse.ArgumentParser(description="Bins demo figure: bin centres and per-pixel probabilities.")
    add_dataclass_flags(parser, BinsDemoConfig)
    cfg = BinsDemoConfig(**vars(parser.parse_args(argv)))
    try:
        run_demo(cfg)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
