"""Tests of helpers/training_health.py: the health numbers on cases with known answers, the motion
ratio against the truth, the collapse signs and the detector's patience."""
import importlib
import math

import pytest
import torch
import torch.nn.functional as F

from helpers import training_health as health

TEMPORAL = [-1, 1]  # the temporal sources of the default recipe (the stereo pose is not predicted)


def geo():
    return importlib.import_module("05_posenet_loss")


def test_training_health_numbers_on_cases_with_known_answers():
    """training_health: a flat depth map has spread 0 and a map of 1s and 3s spread 0.5 (std/mean,
    unbiased std); the motion is |t| / mean depth averaged over the temporal sources (the stereo
    pose is not predicted); the auto-mask fraction and the two photometric means are those of the
    maps given. collapse_signs names exactly the numbers below their limits."""
    g = geo()
    flat = torch.full((2, 1, 2, 2), 4.0)
    two = torch.tensor([1.0, 3.0, 1.0, 3.0]).view(1, 1, 2, 2).repeat(2, 1, 1, 1)
    t = torch.tensor([[0.4, 0.0, 0.3], [0.0, 0.0, 0.0]])                   # |t| = 0.5 and 0
    poses = {-1: g.transformation_from_parameters(torch.zeros(2, 3), t, invert=True),
             1: g.transformation_from_parameters(torch.zeros(2, 3), 2 * t),
             "s": torch.eye(4).repeat(2, 1, 1) * 100}
    reprojection = torch.stack([torch.full((2, 2, 2), 0.2), torch.full((2, 2, 2), 0.1)], 1)  # [2, 2, 2, 2]
    identity = torch.full((2, 2, 2, 2), 0.3)
    mask = torch.tensor([True, False, False, False]).view(1, 1, 2, 2).repeat(2, 1, 1, 1)
    h = health.training_health(flat, poses, reprojection, identity, mask, TEMPORAL)
    assert set(h) == set(health.HEALTH_TERMS) and all(v.dim() == 0 for v in h.values())
    assert float(h["depth_spread"]) == 0.0
    assert float(h["motion"]) == pytest.approx((0.5 / 4 + 1.0 / 4 + 0 + 0) / 4)
    assert float(h["automask_kept"]) == 0.25
    assert float(h["identity_photometric"]) == pytest.approx(0.3)
    assert float(h["warped_photometric"]) == pytest.approx(0.1)
    h2 = health.training_health(two, poses, reprojection, None, mask, TEMPORAL)
    assert float(h2["depth_spread"]) == pytest.approx(float(torch.tensor([1.0, 3, 1, 3]).std() / 2))
    assert math.isnan(float(h2["identity_photometric"]))
    signs = health.collapse_signs({k: float(v) for k, v in h.items()})
    assert len(signs) == 1 and signs[0].startswith("depth_spread 0")   # warped 0.1 beats identity 0.3
    healthy = {"depth_spread": 0.5, "motion": 0.05, "automask_kept": 0.8}
    assert health.collapse_signs(healthy) == []
    assert [s.split()[0] for s in health.collapse_signs({**healthy, "motion": 0.0, "automask_kept": 0.0})] == \
        ["motion", "automask_kept"]


def test_motion_vs_truth_is_one_for_a_consistent_prediction_at_any_scale():
    """motion_vs_truth: a prediction whose depth AND translation are the truth times one factor k
    (what monocular training can reach) scores 1 for every k; half the true translation scores
    0.5; pixels without ground truth (0) are ignored."""
    g = geo()
    torch.manual_seed(3)
    gt = 2 + 10 * torch.rand(2, 1, 8, 12)
    gt[:, :, :2] = 0                                                    # no ground truth there
    true_t = torch.tensor([[1.0, 1.2], [0.8, 0.9]])                     # [B, S] metres, sources -1, +1
    for k, speed, want in [(1.0, 1.0, 1.0), (0.1, 1.0, 1.0), (7.0, 1.0, 1.0), (3.0, 0.5, 0.5)]:
        t = {fid: torch.stack([torch.zeros(2), torch.zeros(2), true_t[:, i]], 1) * k * speed
             for i, fid in enumerate((-1, 1))}
        poses = {fid: g.transformation_from_parameters(torch.zeros(2, 3), t[fid], invert=fid < 0) for fid in t}
        pred = F.interpolate(gt * k, size=(4, 6), mode="nearest")      # the network's half size
        pred[pred == 0] = 50.0                                          # sky: anything
        ratios = health.motion_vs_truth(pred, poses, gt, true_t, TEMPORAL)
        torch.testing.assert_close(ratios, torch.full((2,), want), rtol=0.15, atol=0)


def test_collapse_watch_warns_once_after_patience_and_never_before_min_step():
    """CollapseWatch: a sign at every log line warns once, at the patience-th line from the sign's
    first step on (50 for the motion), naming the number and the advice; a healthy line resets the
    count; before that step nothing. The warp ratio (warped / identity error) counts from step 200."""
    watch = health.CollapseWatch("try X", patience=3)
    dead = {"depth_spread": 0.5, "motion": 0.0001, "automask_kept": 0.6}
    healthy = {"depth_spread": 0.5, "motion": 0.04, "automask_kept": 0.7}
    assert [watch.update(s, dead) for s in (10, 20, 30, 40)] == [None] * 4          # before min_step
    assert watch.update(50, dead) is None and watch.update(60, dead) is None
    assert watch.update(70, healthy) is None                                       # the count restarts
    lines = [watch.update(s, dead) for s in (80, 90, 100, 110, 120)]
    assert lines[:2] == [None, None] and lines[3:] == [None, None]
    assert lines[2].startswith("warning: step 100: this run looks collapsed (motion 0.0001 < ")
    assert lines[2].endswith("; try X")
    stalled = {**healthy, "warped_photometric": 0.17, "identity_photometric": 0.173}
    assert health.collapse_signs(stalled, step=150) == []
    assert health.collapse_signs(stalled, step=200)[0].startswith("warp_ratio 0.983 > 0.85")
    assert health.collapse_signs({**stalled, "warped_photometric": 0.06}) == []
