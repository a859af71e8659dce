"""training_health - is self-supervision teaching anything? Health numbers and the collapse detector.

A flat depth map with a pose net that predicts no motion still gives a finite, slowly falling loss;
these numbers show it within a few hundred steps. What they mean and how the limits were calibrated:
docs/monocular.md, "The health numbers". Used by 05_posenet_loss.py and 06_train.py.
Tests: tests/test_training_health.py, tests/test_05_posenet_loss.py, tests/test_06_train.py.
"""
import torch
import torch.nn.functional as F

HEALTH_TERMS = ("depth_spread", "motion", "automask_kept", "identity_photometric", "warped_photometric")


@torch.no_grad()
def training_health(depth, poses, reprojection, identity, automask, temporal):
    """The HEALTH_TERMS of one batch as detached 0-d tensors (no host sync). depth [B, 1, H, W],
    reprojection and identity [B, S, H, W] (identity None without auto-masking), temporal: the
    source ids (-1, +1, ...) whose poses count as motion."""
    mean_depth = depth.mean(dim=(1, 2, 3))                                 # [B]
    spread = (depth.std(dim=(1, 2, 3)) / mean_depth).mean()
    moves = [poses[fid][:, :3, 3].norm(dim=1) / mean_depth for fid in temporal]   # [B] each
    nan = torch.full_like(spread, float("nan"))
    motion = torch.stack(moves).mean() if moves else nan
    no_warp = identity.min(dim=1).values.mean() if identity is not None else nan
    return dict(depth_spread=spread, motion=motion, automask_kept=automask.float().mean(),
                identity_photometric=no_warp, warped_photometric=reprojection.min(dim=1).values.mean())


# (what, side, limit, from step, meaning); warp_ratio = warped_photometric / identity_photometric.
COLLAPSE_SIGNS = (("depth_spread", "<", 0.05, 50, "a flat depth map"),
                  ("motion", "<", 0.002, 50, "the pose net predicts no motion"),
                  ("automask_kept", "<", 0.2, 50, "not warping wins almost everywhere"),
                  ("warp_ratio", ">", 0.85, 200, "warping barely beats not warping"))


def collapse_signs(health, step=None):
    """The signs of collapse in {health name: float} at a training step (None: all signs) -> list of
    short texts (empty = healthy)."""
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
    """update(step, health numbers) -> one `warning:` line with `advice`, once, when `patience`
    consecutive log lines show a sign of collapse; else None."""

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
    """Predicted over true camera motion, each over the median depth of the pixels with ground truth,
    averaged over sources: [B] scale-free ratios (1 = right). depth_gt [B, 1, Hg, Wg] (0 = none),
    true_translation [B, S] metres per source of `temporal`."""
    pred = F.interpolate(depth.float(), size=depth_gt.shape[-2:], mode="bilinear", align_corners=False)
    moved = torch.stack([poses[fid][:, :3, 3].norm(dim=1) for fid in temporal], 1)   # [B, S]
    ratios = []
    for b in range(len(depth)):
        valid = depth_gt[b, 0] > 0
        scale = depth_gt[b, 0][valid].median() / pred[b, 0][valid].median()          # gt / pred
        ratios.append((moved[b] * scale / true_translation[b].clamp_min(1e-6)).mean())
    return torch.stack(ratios)
