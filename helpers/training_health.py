"""training_health - is self-supervision teaching anything? Health numbers and the collapse detector.

Serves 05_posenet_loss.self_supervised_loss (which computes the numbers with the loss, from tensors
it already has) and 06_train.py (which logs them in log.csv and val.csv and warns once when a run
looks collapsed). Self-supervised depth can fail silently: a flat depth map with a pose network that
predicts no motion still gives a finite, slowly falling loss. These numbers show it within a few
hundred steps (README "Monocular training"; docs/monocular.md says how they were calibrated).
Tests: tests/test_05_posenet_loss.py (the numbers), tests/test_06_train.py (the detector in a run).
"""
import torch
import torch.nn.functional as F

HEALTH_TERMS = ("depth_spread", "motion", "automask_kept", "identity_photometric", "warped_photometric")


@torch.no_grad()
def training_health(depth, poses, reprojection, identity, automask, temporal):
    """Is self-supervision working? Five cheap numbers of one batch, as detached 0-d tensors (no host
    sync), named in HEALTH_TERMS. A collapsed run shows them first (06_train.py logs them):
      depth_spread          std / mean of the depth of each image, averaged: 0 = a flat depth map;
      motion                predicted camera translation per frame over the image's mean depth
                            (scale-free, the temporal sources): ~0 = the pose net predicts no motion;
      automask_kept         fraction of pixels where a warped source beats every unwarped one;
      identity_photometric  the photometric error of the best UNWARPED source (what "no motion" scores),
      warped_photometric    and of the best warped one: warping must beat not warping.
    depth [B, 1, H, W], reprojection and identity [B, S, H, W] (identity None without auto-masking),
    temporal: the temporal source ids (-1, +1, ...) whose poses count as motion.
    """
    mean_depth = depth.mean(dim=(1, 2, 3))                                 # [B]
    spread = (depth.std(dim=(1, 2, 3)) / mean_depth).mean()
    moves = [poses[fid][:, :3, 3].norm(dim=1) / mean_depth for fid in temporal]   # [B] each
    nan = torch.full_like(spread, float("nan"))
    motion = torch.stack(moves).mean() if moves else nan
    no_warp = identity.min(dim=1).values.mean() if identity is not None else nan
    return dict(depth_spread=spread, motion=motion, automask_kept=automask.float().mean(),
                identity_photometric=no_warp, warped_photometric=reprojection.min(dim=1).values.mean())


# Signs of a collapsed or stalled run in the health numbers, calibrated on monocular runs of the
# synthetic world (README, "Monocular training"): (what, limit, from step, meaning). warp_ratio is
# warped_photometric / identity_photometric: a healthy run's warping beats not warping within ~150
# steps (the ratio falls to 0.3-0.6); a stalled one stays near 1.
COLLAPSE_SIGNS = (("depth_spread", "<", 0.05, 50, "a flat depth map"),
                  ("motion", "<", 0.002, 50, "the pose net predicts no motion"),
                  ("automask_kept", "<", 0.2, 50, "not warping wins almost everywhere"),
                  ("warp_ratio", ">", 0.85, 200, "warping barely beats not warping"))


def collapse_signs(health, step=None):
    """The signs of collapse in {health name: float} at a training step (None: all of them, as at a
    validation) -> list of short texts (empty = healthy)."""
    health = dict(health)
    if "warped_photometric" in health and "identity_photometric" in health:
        health["warp_ratio"] = health["warped_photometric"] / max(health["identity_photometric"], 1e-12)
    signs = []
    for name, side, limit, start, meaning in COLLAPSE_SIGNS:
        value = health.get(name, float("nan"))
        if (step is None or step >= start) and (value < limit if side == "<" else value > limit):
            signs.append(f"{name} {value:.3g} {side} {limit:g} ({meaning})")
    return signs


class CollapseWatch:
    """The collapse detector of a training log: update() with each logged step's health numbers
    returns one `warning:` line, once, when `patience` consecutive log lines show a sign of collapse
    (collapse_signs at that step: each sign from its own step on, since a young run's pose net moves
    little and its warping is no better yet), with the numbers and `advice` (what to try); else None."""

    def __init__(self, advice, patience=3):
        self.advice, self.patience = advice, patience
        self.seen, self.warned = 0, False

    def update(self, step, health):
        signs = collapse_signs(health, step)
        self.seen = self.seen + 1 if signs else 0
        if self.warned or self.seen < self.patience:
            return None
        self.warned = True
        return (f"warning: step {step}: this run looks collapsed ({'; '.join(signs)}, for {self.patience} "
                f"log lines in a row); {self.advice}")


@torch.no_grad()
def motion_vs_truth(depth, poses, depth_gt, true_translation, temporal):
    """Predicted over true camera motion, both relative to the scene's depth: [B] ratios (1 = right).

    depth [B, 1, h, w] predicted, depth_gt [B, 1, Hg, Wg] (0 = no ground truth), true_translation
    [B, S] metres per temporal source, in the order of `temporal` (05's source_ids without "s"). Per image and source: |t_pred| /
    median(pred) over |t_true| / median(gt), the medians over the pixels with ground truth, so
    the ratio is free of the depth scale (monocular training has none), then the mean over sources.
    """
    pred = F.interpolate(depth.float(), size=depth_gt.shape[-2:], mode="bilinear", align_corners=False)
    moved = torch.stack([poses[fid][:, :3, 3].norm(dim=1) for fid in temporal], 1)   # [B, S]
    ratios = []
    for b in range(len(depth)):
        valid = depth_gt[b, 0] > 0
        scale = depth_gt[b, 0][valid].median() / pred[b, 0][valid].median()          # gt / pred
        ratios.append((moved[b] * scale / true_translation[b].clamp_min(1e-6)).mean())
    return torch.stack(ratios)
