"""Tests of 05_posenet_loss.py: pose maths, view synthesis, SSIM, the self-supervised loss.

Oracles: closed-form rotations and the matrix exponential (Rodrigues), the pinhole model
(back-projection), a slow per-pixel SSIM and smoothness, gradcheck of the warping, and the true
depth and pose of 01_data's synthetic world (the warped source must match the target).
"""
import importlib
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from exercise_checks import (assert_allclose_explained, assert_close_explained, first_false_message,
                             gradcheck_explained, shape_message, value_message)

RODRIGUES = ("R = I + sin(a) [k]x + (1 - cos(a)) [k]x^2 with [k]x = [[0, -kz, ky], [kz, 0, -kx], [-ky, kx, 0]] "
             "(a flipped sign or a transpose gives R^T, the rotation the other way)? k = axisangle / (a + 1e-7), "
             "a = its norm per row?")
BACKPROJECTION = ("pixel grid u = column 0..W-1, v = row 0..H-1 (torch.meshgrid(rows, cols, indexing='ij')), "
                  "flattened row-major (u and v swapped go wrong on a non-square image)? rays inv_K[:, :3, :3] @ "
                  "(u, v, 1) multiplied by the depth? a fourth row of ones?")
SSIM_HINTS = ("reflection padding by window // 2 (F.pad(x, [r, r, r, r], mode='reflect'), not zeros)? local means "
              "over window x window with stride 1? population variances E[x^2] - mu^2 and E[xy] - mu_x mu_y? "
              "C1 = 0.01^2, C2 = 0.03^2? (1 - SSIM) / 2 clamped to [0, 1]?")
MIN_REPROJECTION = ("noise of std 1e-5 added to the identity errors, then identity and warped errors concatenated "
                    "along dim 1 (identity first) and the minimum taken over dim 1 with keepdim=True (not over "
                    "the batch, dim 0)? automask = the index of the minimum falls among the warped errors?")
SMOOTHNESS = ("depth divided by its own image's mean (+1e-7; depth.mean(dim=(2, 3), keepdim=True))? horizontal "
              "differences weighted by exp(-|horizontal image difference|) averaged over the colour channels, "
              "vertical by vertical? mean(x-term) + mean(y-term)?")


def geo():
    return importlib.import_module("05_posenet_loss")


def intrinsics(height, width, batch=1, dtype=torch.float32):
    """KITTI's normalised K scaled to (width, height), and its inverse, as [B, 4, 4]."""
    K = torch.tensor([[0.58 * width, 0, 0.5 * width, 0], [0, 1.92 * height, 0.5 * height, 0],
                      [0, 0, 1, 0], [0, 0, 0, 1]], dtype=dtype)
    return K.repeat(batch, 1, 1), torch.linalg.inv(K).repeat(batch, 1, 1)


def skew(v):
    x, y, z = v
    return torch.tensor([[0, -z, y], [z, 0, -x], [-y, x, 0]], dtype=torch.float64)


# ------------------------------------------------------------------ pose maths
def test_rodrigues_matches_closed_form_rotations():
    """Exercise 5.1: rotations about x, y, z by a known angle equal the textbook matrices (catches a
    transposed R / wrong sign), the homogeneous row and column are [0 0 0 1], zero gives I."""
    a = 0.3
    c, s = math.cos(a), math.sin(a)
    expected = {
        (1.0, 0.0, 0.0): [[1, 0, 0], [0, c, -s], [0, s, c]],
        (0.0, 1.0, 0.0): [[c, 0, s], [0, 1, 0], [-s, 0, c]],
        (0.0, 0.0, 1.0): [[c, -s, 0], [s, c, 0], [0, 0, 1]],
    }
    what = "Exercise 5.1 rot_from_axisangle"
    axes = torch.tensor(list(expected), dtype=torch.float64) * a                  # (3, 3)
    M = geo().rot_from_axisangle(axes)
    assert M.shape == (3, 4, 4), shape_message(M.shape, (3, 4, 4), f"{what} of 3 axis-angles",
                                               "a homogeneous [B, 4, 4] with R in the top-left 3x3?")
    for i, rot in enumerate(expected.values()):
        assert_close_explained(M[i, :3, :3], torch.tensor(rot, dtype=torch.float64),
                               f"{what}: R for 0.3 rad about the {'xyz'[i]} axis", RODRIGUES, atol=1e-6, rtol=0,
                               names=("row", "col"))
    assert_close_explained(M[:, 3], torch.tensor([0, 0, 0, 1.0], dtype=torch.float64).expand(3, 4),
                           f"{what}: the bottom row", "row 3 of the 4x4 is [0, 0, 0, 1]?", names=("b", "col"))
    assert_close_explained(M[:, :3, 3], torch.zeros(3, 3, dtype=torch.float64), f"{what}: the last column",
                           "no translation: M[:, :3, 3] = 0?", names=("b", "row"))
    assert_close_explained(geo().rot_from_axisangle(torch.zeros(1, 3))[0], torch.eye(4),
                           f"{what} of a zero axis-angle (float32)", "add 1e-7 to the angle before dividing, so "
                           "a zero rotation gives I, not NaN? the input's dtype kept?", names=("row", "col"))


def test_rodrigues_matches_matrix_exponential():
    """Exercise 5.1: for random axis-angles (angles up to ~2.5 rad) R = expm([v]x), the exact
    exponential map of so(3); R is orthonormal with determinant 1."""
    what = "Exercise 5.1 rot_from_axisangle"
    torch.manual_seed(0)
    v = torch.randn(6, 3, dtype=torch.float64)
    R = geo().rot_from_axisangle(v)[:, :3, :3]
    for i in range(6):
        assert_close_explained(R[i], torch.linalg.matrix_exp(skew(v[i])),  # atol: the 1e-7 guard
                               f"{what}: R of the random axis-angle {i} {[round(x, 4) for x in v[i].tolist()]}",
                               RODRIGUES, atol=1e-6, rtol=0, names=("row", "col"))
    assert_close_explained(R @ R.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(6, 3, 3),
                           f"{what}: R R^T", f"R must be orthonormal: {RODRIGUES}", atol=1e-6, rtol=0,
                           names=("b", "row", "col"))
    assert_close_explained(torch.linalg.det(R), torch.ones(6, dtype=torch.float64), f"{what}: det(R)",
                           f"a rotation has determinant +1: {RODRIGUES}", atol=1e-6, rtol=0, names=("b",))


def test_transformation_and_inverse_compose_to_identity():
    """T = [R|t] applies the rotation, then the translation (T p = R p + t), and invert=True gives
    exactly T^-1 from both sides: the transform used for the source frame -1."""
    torch.manual_seed(1)
    aa, t = 0.2 * torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    T = geo().transformation_from_parameters(aa, t)
    T_inv = geo().transformation_from_parameters(aa, t, invert=True)
    eye = torch.eye(4, dtype=torch.float64).expand(4, 4, 4)
    orthonormal = ("the inverse [R^T | -R^T t] needs an orthonormal R: does Exercise 5.1 rot_from_axisangle pass "
                   "test_rodrigues_matches_matrix_exponential?")
    assert_close_explained(T @ T_inv, eye, "T @ T^-1", orthonormal, names=("b", "row", "col"))
    assert_close_explained(T_inv @ T, eye, "T^-1 @ T", orthonormal, names=("b", "row", "col"))
    R = geo().rot_from_axisangle(aa)[:, :3, :3]
    p = torch.randn(4, 3, 1, dtype=torch.float64)
    moved = T @ torch.cat([p, torch.ones(4, 1, 1, dtype=torch.float64)], 1)
    torch.testing.assert_close(moved[:, :3], R @ p + t[..., None])


# ------------------------------------------------------------------ view synthesis
def test_backprojection_follows_the_pinhole_model():
    """Exercise 5.2: pixel (u = column, v = row) at depth d goes to ((u-cx) d/fx, (v-cy) d/fy, d, 1),
    flattened row-major; a non-square image catches swapped axes."""
    what = "Exercise 5.2 BackprojectDepth"
    h, w = 5, 7
    K, inv_K = intrinsics(h, w, batch=2, dtype=torch.float64)
    depth = 1 + torch.rand(2, 1, h, w, dtype=torch.float64)
    pts = geo().BackprojectDepth()(depth, inv_K)
    assert pts.shape == (2, 4, h * w), shape_message(pts.shape, (2, 4, h * w), f"{what} of depth [2, 1, 5, 7]",
                                                     f"[B, 4, H*W]: {BACKPROJECTION}")
    fx, fy, cx, cy = K[0, 0, 0], K[0, 1, 1], K[0, 0, 2], K[0, 1, 2]
    pixels = [(0, 0, 0), (1, 4, 6), (0, 2, 5), (1, 3, 1)]
    got, expected = [], []
    for b, v, u in pixels:
        d = depth[b, 0, v, u]
        expected.append(torch.stack([(u - cx) * d / fx, (v - cy) * d / fy, d, torch.ones_like(d)]))
        got.append(pts[b, :, v * w + u])
    assert_close_explained(torch.stack(got), torch.stack(expected), f"{what}: the 3-D point", BACKPROJECTION,
                           names=("pixel", "xyz1"), where=lambda i: "{} of image {}, row v={}, column u={}".format(
                               "XYZ1"[i[1]], *pixels[i[0]]))


def test_projection_normalises_with_size_minus_one():
    """With T = I the back-projected points land on their own pixels, and the grid is normalised
    with (W-1), (H-1): the corner pixels map to exactly -1 and +1 (align_corners=True)."""
    h, w = 6, 9
    K, inv_K = intrinsics(h, w, batch=3)
    depth = 0.5 + 10 * torch.rand(3, 1, h, w)
    grid = geo().Project3D()(geo().BackprojectDepth()(depth, inv_K), K, torch.eye(4).repeat(3, 1, 1), h, w)
    assert grid.shape == (3, h, w, 2)
    xs = torch.linspace(-1, 1, w).expand(3, h, w)
    ys = torch.linspace(-1, 1, h)[:, None].expand(3, h, w)
    hint = f"with T = I each pixel lands on itself only if Exercise 5.2 BackprojectDepth is right: {BACKPROJECTION}"
    assert_close_explained(grid[..., 0], xs, "the projected grid x (T = I, 6x9 image)", hint, atol=1e-5, rtol=0,
                           names=("b", "row", "col"))
    assert_close_explained(grid[..., 1], ys, "the projected grid y (T = I, 6x9 image)", hint, atol=1e-5, rtol=0,
                           names=("b", "row", "col"))


@pytest.mark.parametrize("batch", [1, 3])
def test_identity_pose_reprojects_perfectly_for_any_depth(batch):
    """With no motion the warped source is the source itself, whatever the depth (batch sizes 1, 3:
    nothing is fixed to a batch size)."""
    torch.manual_seed(2)
    h, w = 12, 20
    K, inv_K = intrinsics(h, w, batch)
    img = torch.rand(batch, 3, h, w)
    for kind, depth in [("constant", torch.full((batch, 1, h, w), 7.0)),
                        ("random", 0.1 + 80 * torch.rand(batch, 1, h, w))]:
        out = geo().warp(img, depth, K, inv_K, torch.eye(4).repeat(batch, 1, 1))
        assert_close_explained(out, img, f"the source warped with T = I ({kind} depth)", "with no motion every pixel "
                               f"must sample itself: Exercise 5.2 BackprojectDepth: {BACKPROJECTION}", atol=1e-4,
                               rtol=0, names=("b", "c", "row", "col"))


def test_warp_gradcheck_float64():
    """The warp (back-project, transform, project, bilinear sample) has correct gradients with
    respect to the source image, the depth and the pose (gradcheck, float64, tiny sizes)."""
    torch.manual_seed(3)
    h, w = 4, 5
    K, inv_K = intrinsics(h, w, dtype=torch.float64)
    img = torch.rand(1, 2, h, w, dtype=torch.float64, requires_grad=True)
    depth = (2 + torch.rand(1, 1, h, w, dtype=torch.float64)).requires_grad_()
    aa = torch.tensor([[0.01, -0.02, 0.015]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([[0.05, 0.02, -0.1]], dtype=torch.float64, requires_grad=True)

    def fn(img, depth, aa, t):
        T = geo().transformation_from_parameters(aa, t)
        return geo().warp(img, depth, K, inv_K, T)

    gradcheck_explained(fn, (img, depth, aa, t), "the warp's gradients (Exercises 5.1 rot_from_axisangle, 5.2 "
                        "BackprojectDepth)", "no .detach(), .item(), numpy or torch.no_grad() in them? new tensors "
                        "made with the input's dtype and device (float64 here)?",
                        ("img", "depth", "axisangle", "translation"), eps=1e-6, atol=1e-5)


def synthetic_batch(tiny_world):
    """A KittiRaw batch (frames 0, -1, +1) of every camera-2 line of the tiny world's train drive,
    the true depth (ground truth 0 = sky: filled with 80 m, and `valid` masks it out) and the true
    target->source transforms {-1: [B,4,4], 1: [B,4,4]} from poses.txt (camera-to-world)."""
    data = importlib.import_module("01_data")
    from helpers import synthetic_world
    lines = data.read_split(tiny_world / "splits" / "synthetic" / "train_files.txt")
    lines = [line for line in lines if line[2] == "l"]                       # poses are camera 2's
    ds = data.KittiRaw(tiny_world, lines, 64, 208, frame_ids=(0, -1, 1), load_depth=True)
    inputs = data.images_to_float(data.collate([ds[i] for i in range(len(ds))]))
    gt = F.interpolate(inputs["depth_gt"], size=(64, 208), mode="nearest")   # (B, 1, 64, 208)
    valid = gt > 0
    depth = torch.where(valid, gt, torch.full_like(gt, 80.0))
    T = {-1: [], 1: []}
    for folder, frame, _ in lines:
        poses = torch.from_numpy(synthetic_world.read_synthetic_poses(tiny_world / folder)).float()  # (N, 4, 4)
        for fid in T:
            T[fid].append(torch.linalg.inv(poses[frame + fid]) @ poses[frame])
    return inputs, depth, valid, {fid: torch.stack(Ts) for fid, Ts in T.items()}


def test_true_depth_and_pose_reconstruct_the_target(tiny_world):
    """With the synthetic world's true depth and pose the warped source matches the target where it
    is visible: its photometric error is far below that of a constant depth and of no warp, and
    scaling the true translation by 0.8 or 1.2 makes it worse (the true pose is the minimum)."""
    inputs, depth, valid, T = synthetic_batch(tiny_world)
    h, w = 64, 208
    ssim = geo().SSIM()
    K, inv_K, target = inputs["K"], inputs["inv_K"], inputs["color"][0]

    def error(source, d, pose):
        grid = geo().Project3D()(geo().BackprojectDepth()(d, inv_K), K, pose, h, w)
        inside = (grid.abs() < 1).all(-1)[:, None] & valid                   # (B, 1, H, W)
        return geo().photometric_loss(geo().warp(source, d, K, inv_K, pose), target, ssim)[inside].mean()

    constant = depth[valid].mean() * torch.ones_like(depth)
    hint = ("the warp uses Exercises 5.2 (BackprojectDepth: rays times the depth, u = column, v = row) and 5.3 "
            "(SSIM); do their tests pass?")
    for fid in (-1, 1):
        source = inputs["color"][fid]
        true = error(source, depth, T[fid])
        none = geo().photometric_loss(source, target, ssim)[valid].mean()
        flat = error(source, constant, T[fid])
        assert true < 0.5 * flat and true < 0.35 * none, (
            f"source {fid}: the photometric error with the true depth and pose is {float(true):.4g}, with a "
            f"constant depth {float(flat):.4g}, unwarped {float(none):.4g}; expected below half the first and "
            f"0.35 x the second. Check: {hint}")
        for factor in (0.8, 1.2):
            wrong = T[fid].clone()
            wrong[:, :3, 3] *= factor
            worse = error(source, depth, wrong)
            assert worse > 1.3 * true, (
                f"source {fid}: the true translation x {factor} gives error {float(worse):.4g}, not above 1.3 x "
                f"the true pose's {float(true):.4g}. Check: {hint}")


# ------------------------------------------------------------------ photometric terms
def slow_ssim(x, y, window):
    """(1 - SSIM)/2 clamped, by explicit loops over pixels of reflect-padded numpy arrays."""
    r = window // 2
    x = np.pad(x, ((0, 0), (0, 0), (r, r), (r, r)), mode="reflect")
    y = np.pad(y, ((0, 0), (0, 0), (r, r), (r, r)), mode="reflect")
    b, c, hp, wp = x.shape
    out = np.zeros((b, c, hp - 2 * r, wp - 2 * r))
    for i in range(b):
        for k in range(c):
            for v in range(hp - 2 * r):
                for u in range(wp - 2 * r):
                    px, py = x[i, k, v:v + window, u:u + window], y[i, k, v:v + window, u:u + window]
                    mx, my = px.mean(), py.mean()
                    sx, sy = (px ** 2).mean() - mx ** 2, (py ** 2).mean() - my ** 2
                    sxy = (px * py).mean() - mx * my
                    s = ((2 * mx * my + 1e-4) * (2 * sxy + 9e-4)) / ((mx ** 2 + my ** 2 + 1e-4) * (sx + sy + 9e-4))
                    out[i, k, v, u] = min(max((1 - s) / 2, 0), 1)
    return out


@pytest.mark.parametrize("window", [None, 3])
def test_ssim_matches_slow_reference(window):
    """Exercise 5.3: SSIM() (default window 7) and SSIM(3) equal a per-pixel loop with reflection
    padding, population variances, C1 = 0.01^2, C2 = 0.03^2; identical images give 0."""
    what = f"Exercise 5.3 SSIM(window={window or 7})"
    torch.manual_seed(4)
    x = torch.rand(2, 3, 9, 11, dtype=torch.float64)
    y = (x + 0.3 * torch.rand_like(x)).clamp(0, 1)
    ssim = geo().SSIM() if window is None else geo().SSIM(window)
    got = ssim(x, y)
    assert got.shape == x.shape, shape_message(got.shape, x.shape, f"{what} of two [2, 3, 9, 11] images",
                                               "one value per pixel and channel, the input's shape: pad by "
                                               "window // 2 before pooling with stride 1?")
    assert_allclose_explained(got, slow_ssim(x.numpy(), y.numpy(), window or 7), f"{what}: (1 - SSIM) / 2",
                              SSIM_HINTS, atol=1e-10, names=("b", "c", "row", "col"))
    same = ssim(x, x).abs().max()
    assert same < 1e-10, value_message(same, 0, f"{what}: max |(1 - SSIM(x, x)) / 2| of an image with itself",
                                       SSIM_HINTS)


def test_ssim_rejects_even_window():
    """An even window has no centre pixel: refused with a ValueError naming the value."""
    with pytest.raises(ValueError, match="4"):
        geo().SSIM(4)


def test_photometric_loss_weights():
    """Photometric error = 0.85 x channel-mean SSIM term + 0.15 x channel-mean L1, shape [B,1,H,W];
    ssim=None gives the plain L1."""
    torch.manual_seed(5)
    a, b = torch.rand(2, 3, 8, 10), torch.rand(2, 3, 8, 10)
    ssim = geo().SSIM()
    l1 = (a - b).abs().mean(1, keepdim=True)
    torch.testing.assert_close(geo().photometric_loss(a, b, ssim),
                               0.85 * ssim(a, b).mean(1, keepdim=True) + 0.15 * l1)
    torch.testing.assert_close(geo().photometric_loss(a, b, None), l1)


def test_min_reprojection_and_automask_select_static_pixels():
    """Exercise 5.4: the minimum is over identity and warped errors of all sources; pixels where
    not warping is better (static scene, camera not moving) are masked out, the others kept."""
    torch.manual_seed(6)
    reproj = torch.rand(2, 2, 6, 8) + 0.1
    identity = torch.rand(2, 2, 6, 8) + 0.1
    static = torch.zeros(2, 1, 6, 8, dtype=torch.bool)
    static[:, :, :, :3] = True
    identity = torch.where(static, torch.full_like(identity, 0.01), identity)  # static: unwarped wins
    what = "Exercise 5.4 min_reprojection"
    names = ("b", "c", "row", "col")
    best, mask = geo().min_reprojection(reproj, identity)
    assert best.shape == (2, 1, 6, 8) and mask.dtype == torch.bool and mask.shape == (2, 1, 6, 8), (
        f"{what}: the minimum has shape {tuple(best.shape)}, the mask {tuple(mask.shape)} {mask.dtype}; expected "
        f"(2, 1, 6, 8) both, the mask torch.bool. Check: {MIN_REPROJECTION}")
    expected = torch.minimum(reproj.min(1, keepdim=True).values, identity.min(1, keepdim=True).values)
    assert_close_explained(best, expected, f"{what}: the minimum", MIN_REPROJECTION, atol=1e-4, rtol=0, names=names)
    assert not mask[static].any(), first_false_message(
        ~(mask & static), f"{what}: automask False where the unwarped source wins (static pixels, columns 0-2)",
        MIN_REPROJECTION, values=mask, names=names)
    which = identity.min(1, keepdim=True).values > reproj.min(1, keepdim=True).values
    assert torch.equal(mask, which), first_false_message(
        mask == which, f"{what}: automask == (a warped source beats every unwarped one)", MIN_REPROJECTION,
        values=mask, names=names)
    best, mask = geo().min_reprojection(reproj, None)                 # auto-masking disabled
    assert_close_explained(best, reproj.min(1, keepdim=True).values, f"{what} without identity errors",
                           "identity=None: the minimum over the warped errors alone, dim 1?", names=names)
    assert mask.all(), first_false_message(mask, f"{what} without identity errors: automask all True",
                                           "identity=None: every pixel kept (torch.ones_like(best, dtype=torch.bool))?",
                                           names=names)


def test_automask_noise_breaks_ties():
    """Exercise 5.4: 1e-5 Gaussian noise is added to the identity errors, so exact ties (e.g. a
    textureless region) are decided at random instead of always by the identity term; the noise
    is small (values move by < 1e-4)."""
    torch.manual_seed(7)
    what = "Exercise 5.4 min_reprojection with identity errors equal to the warped ones"
    errors = torch.rand(1, 2, 64, 64)
    best, mask = geo().min_reprojection(errors, errors.clone())
    kept = mask.float().mean().item()
    assert 0.3 < kept < 0.7, (
        f"{what}: the automask keeps {kept:.3g} of the pixels, expected between 0.3 and 0.7 (ties decided at "
        f"random). Check: {MIN_REPROJECTION}")
    assert_close_explained(best, errors.min(1, keepdim=True).values, f"{what}: the minimum",
                           "noise 1e-5 * randn, small enough to move values by < 1e-4? the minimum over dim 1?",
                           atol=1e-4, rtol=0, names=("b", "c", "row", "col"))


def slow_smoothness(depth, img):
    """Edge-aware smoothness by explicit loops over neighbour pairs (float64 numpy)."""
    b, _, h, w = depth.shape
    sx, sy = 0.0, 0.0
    for i in range(b):
        d = depth[i, 0] / (depth[i, 0].mean() + 1e-7)
        for v in range(h):
            for u in range(w):
                if u + 1 < w:
                    edge = np.abs(img[i, :, v, u + 1] - img[i, :, v, u]).mean()
                    sx += abs(d[v, u + 1] - d[v, u]) * math.exp(-edge)
                if v + 1 < h:
                    edge = np.abs(img[i, :, v + 1, u] - img[i, :, v, u]).mean()
                    sy += abs(d[v + 1, u] - d[v, u]) * math.exp(-edge)
    return sx / (b * h * (w - 1)) + sy / (b * (h - 1) * w)


def test_smoothness_matches_slow_reference_and_ignores_scale():
    """Exercise 5.5: the loop reference (x-gradients weighted by x image edges, y by y, exp(-|edge|),
    depth divided by its per-image mean) matches, and multiplying the depth by any per-image
    factor leaves the term unchanged."""
    torch.manual_seed(8)
    what = "Exercise 5.5 smoothness_loss"
    depth = 1 + 30 * torch.rand(2, 1, 5, 7, dtype=torch.float64)
    img = torch.rand(2, 3, 5, 7, dtype=torch.float64)
    got = geo().smoothness_loss(depth, img)
    assert got.dim() == 0, shape_message(got.shape, (), f"{what}", "a scalar: mean(x-term) + mean(y-term)?")
    slow = slow_smoothness(depth.numpy(), img.numpy())
    assert abs(got.item() - slow) < 1e-9, value_message(got.item(), slow, f"{what} of depth [2, 1, 5, 7]",
                                                        SMOOTHNESS)
    scaled = depth * torch.tensor([3.0, 0.2], dtype=torch.float64)[:, None, None, None]
    assert_close_explained(geo().smoothness_loss(scaled, img), got,
                           f"{what} of the depth scaled by 3 (image 0) and 0.2 (image 1)", "unchanged only if the "
                           "depth is divided by its own image's mean: depth.mean(dim=(2, 3), keepdim=True), not the "
                           "batch mean, not left out?")


def test_smoothness_is_cheaper_at_image_edges():
    """A depth step along an image edge costs less than the same step in a flat image (edge-aware:
    the weight is exp(-|image gradient|), not exp(+...))."""
    depth = torch.ones(1, 1, 8, 8)
    depth[..., 4:] = 2.0                                             # vertical depth step
    flat = torch.full((1, 3, 8, 8), 0.5)
    edge = flat.clone()
    edge[..., 4:] = 1.0                                              # image edge at the same place
    at_edge, in_flat = geo().smoothness_loss(depth, edge), geo().smoothness_loss(depth, flat)
    assert at_edge < 0.8 * in_flat, (
        f"Exercise 5.5 smoothness_loss: a depth step costs {float(at_edge):.4g} on an image edge and "
        f"{float(in_flat):.4g} in a flat image; expected below 0.8 x the second. Check: the weight is "
        f"exp(-|image difference|) (minus: an edge lowers it), taken in the same direction as the depth difference?")


# ------------------------------------------------------------------ networks and the training step
def test_posecnn_matches_official_layout():
    """PoseCNN: official parameter names (net.0-6, pose_conv) with 16..256 channels, kernels 7,5,3..,
    outputs (axis-angle, translation) [B,3] each, x0.01-scaled (small at initialisation)."""
    net = geo().PoseCNN()
    names = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert names["net.0.weight"] == (16, 6, 7, 7) and names["net.1.weight"] == (32, 16, 5, 5)
    assert names["net.6.weight"] == (256, 256, 3, 3) and names["pose_conv.weight"] == (6, 256, 1, 1)
    assert len([k for k in names if k.startswith("net.")]) == 14
    aa, t = net(torch.rand(3, 6, 64, 96))
    assert aa.shape == (3, 3) and t.shape == (3, 3)
    assert aa.abs().max() < 0.05 and t.abs().max() < 0.05


def test_pose_resnet_adapts_conv1_to_pairs():
    """PoseResNet: the 6-channel conv1 is the 3-channel one repeated and halved, so a pair of two
    identical frames gives the same conv1 response as the single frame; outputs [B,3] x 2."""
    torch.manual_seed(9)
    unet = importlib.import_module("02_unet")
    torch.manual_seed(9)
    reference = unet.ResNet(18)
    torch.manual_seed(9)
    net = geo().PoseResNet(18)
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(net.encoder.conv1(torch.cat([x, x], 1)), reference.conv1(x))
    aa, t = net(torch.rand(2, 6, 64, 96))
    assert aa.shape == (2, 3) and t.shape == (2, 3)


class RecordingPoseNet(torch.nn.Module):
    """A fake pose net: records its inputs and returns fixed (axis-angle, translation)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, pair):
        self.seen.append(pair)
        b = pair.shape[0]
        return (torch.tensor([0.01, 0.02, 0.03]).expand(b, 3), torch.tensor([0.1, 0.0, 0.5]).expand(b, 3))


def fake_inputs(b=2, h=8, w=12, stereo=False):
    ids = [0, -1, 1] + (["s"] if stereo else [])
    colour = {fid: torch.rand(b, 3, h, w) for fid in ids}
    K, inv_K = intrinsics(h, w, b)
    inputs = {"color": colour, "color_aug": {k: v + 0.01 for k, v in colour.items()}, "K": K, "inv_K": inv_K}
    if stereo:
        inputs["stereo_T"] = torch.eye(4).repeat(b, 1, 1)
        inputs["stereo_T"][:, 0, 3] = 0.1
    return inputs


def test_predict_poses_order_inversion_and_scaling():
    """Pairs go in temporal order ([I-1, I0], [I0, I+1], augmented colours), -1's transform is
    inverted, the translation is scaled by mean depth / mean inverse depth / not at all, and with
    stereo no scaling is applied and "s" is the given stereo_T."""
    inputs = fake_inputs()
    depth = torch.rand(2, 1, 4, 6) * 10 + 1
    aa, t = torch.tensor([[0.01, 0.02, 0.03]]).expand(2, 3), torch.tensor([[0.1, 0.0, 0.5]]).expand(2, 3)
    for scaling, factor in [("depth", depth.mean((1, 2, 3))), ("inv_depth", (1 / depth).mean((1, 2, 3))),
                            ("none", torch.ones(2))]:
        net = RecordingPoseNet()
        cfg = geo().LossConfig(pose_scaling=scaling)
        poses = geo().predict_poses(net, inputs, cfg, depth)
        assert list(poses) == [-1, 1]
        c = inputs["color_aug"]
        assert len(net.seen) == 1       # no BatchNorm: both pairs in one batch, -1's pair first
        assert torch.equal(net.seen[0], torch.cat([torch.cat([c[-1], c[0]], 1), torch.cat([c[0], c[1]], 1)]))
        ts = t * factor[:, None]
        torch.testing.assert_close(poses[1], geo().transformation_from_parameters(aa, ts))
        torch.testing.assert_close(poses[-1], geo().transformation_from_parameters(aa, ts, invert=True))
    inputs = fake_inputs(stereo=True)
    cfg = geo().LossConfig(frame_ids=(0, -1, 1, "s"), use_stereo=True, pose_scaling="inv_depth")
    poses = geo().predict_poses(RecordingPoseNet(), inputs, cfg)      # no depth needed with stereo
    assert list(poses) == [-1, 1, "s"] and poses["s"] is inputs["stereo_T"]
    torch.testing.assert_close(poses[1], geo().transformation_from_parameters(aa, t))


def test_pairs_share_a_batch_only_without_batch_statistics():
    """PoseCNN (no BatchNorm) gets both pairs in one call and gives the poses of two separate calls;
    PoseResNet (BatchNorm: a sample's output depends on its batch in training) gets one call per pair."""
    torch.manual_seed(0)
    inputs, cfg = fake_inputs(h=64, w=96), geo().LossConfig(pose_scaling="none")
    net = geo().PoseCNN()
    calls = []
    net.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    poses = geo().predict_poses(net, inputs, cfg)
    c = inputs["color_aug"]
    for fid, pair in ((-1, [c[-1], c[0]]), (1, [c[0], c[1]])):
        aa, t = net(torch.cat(pair, 1))
        torch.testing.assert_close(poses[fid], geo().transformation_from_parameters(aa, t, invert=fid < 0))
    assert calls == [4, 2, 2]                                   # one batched call, then our two checks
    assert not geo().has_batch_statistics(net) and geo().has_batch_statistics(geo().PoseResNet(18))
    net = geo().PoseResNet(18)
    calls = []
    net.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    geo().predict_poses(net, inputs, cfg)
    assert calls == [2, 2]


def test_config_errors_are_clear():
    """A bad pose_scaling, SSIM window or depth range (when the LossConfig is made), a missing depth
    for scaling, or 's' without use_stereo raise ValueError."""
    with pytest.raises(ValueError, match="pose_scaling"):
        geo().LossConfig(pose_scaling="mean")
    with pytest.raises(ValueError, match="ssim_window"):
        geo().LossConfig(ssim_window=-1)
    with pytest.raises(ValueError, match="min_depth"):
        geo().LossConfig(min_depth=0.0)
    with pytest.raises(ValueError, match="depth"):
        geo().predict_poses(RecordingPoseNet(), fake_inputs(), geo().LossConfig())
    with pytest.raises(ValueError, match="use_stereo"):
        geo().predict_poses(RecordingPoseNet(), fake_inputs(), geo().LossConfig(frame_ids=(0, "s")), torch.ones(2, 1, 4, 6))


def test_depth_scaling_makes_the_loss_scale_invariant():
    """With pose_scaling="depth" the photometric loss is unchanged when the depth is multiplied by a
    constant (translation in units of mean depth), unlike with "none"."""
    torch.manual_seed(10)
    inputs = fake_inputs(h=16, w=24)
    depth = 5 + 5 * torch.rand(2, 1, 8, 12)
    ssim = geo().SSIM()
    losses = {}
    for scaling in ("depth", "none"):
        cfg = geo().LossConfig(pose_scaling=scaling)
        for k in (1.0, 3.0):
            torch.manual_seed(0)
            poses = geo().predict_poses(RecordingPoseNet(), inputs, cfg, depth * k)
            losses[scaling, k] = geo().self_supervised_loss(inputs, depth * k, poses, cfg, ssim)["photometric"]
    hint = ("the warp is scale-free only if Exercise 5.2 BackprojectDepth multiplies the rays by the depth: "
            f"{BACKPROJECTION}")
    assert_close_explained(losses["depth", 1.0], losses["depth", 3.0], "the photometric loss (pose_scaling='depth') "
                           "of the depth x 1, against the depth x 3", hint)
    assert abs(losses["none", 1.0] - losses["none", 3.0]) > 1e-4, (
        f"the photometric loss (pose_scaling='none') is {float(losses['none', 1.0]):.6g} for the depth x 1 and "
        f"{float(losses['none', 3.0]):.6g} for the depth x 3: a fixed translation must see the depth's scale. "
        f"Check: {hint}")


def test_loss_outputs_with_stereo():
    """self_supervised_loss returns the documented keys and shapes; with stereo the "s" frame is
    warped too and the auto-mask has the target's size."""
    inputs = fake_inputs(stereo=True)
    cfg = geo().LossConfig(frame_ids=(0, -1, 1), use_stereo=True)
    poses = geo().predict_poses(geo().PoseCNN(), inputs, cfg)
    out = geo().self_supervised_loss(inputs, 5 + torch.rand(2, 1, 4, 6), poses, cfg, geo().make_ssim(cfg))
    assert set(out) >= {"loss", "photometric", "smoothness", "automask", "min_reproj", "warped"}
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
    assert out["automask"].shape == (2, 1, 8, 12) and out["automask"].dtype == torch.bool, (
        f"the automask is {tuple(out['automask'].shape)} {out['automask'].dtype}, expected (2, 1, 8, 12) "
        f"torch.bool. Check: Exercise 5.4 min_reprojection: {MIN_REPROJECTION}")
    assert out["min_reproj"].shape == (2, 1, 8, 12), shape_message(
        out["min_reproj"].shape, (2, 1, 8, 12), "the minimum reprojection (3 sources, batch 2)",
        f"Exercise 5.4 min_reprojection: {MIN_REPROJECTION}")
    assert list(out["warped"]) == [-1, 1, "s"]
    torch.testing.assert_close(out["loss"], out["photometric"] + 1e-3 * out["smoothness"])


def test_loss_reaches_every_parameter_of_depthnet_and_posecnn():
    """One training step on a tiny batch: the loss is finite and every trainable parameter of a
    tiny DepthNet (04_bins) and of PoseCNN gets a finite, non-zero gradient (the ResNet classifier
    fc, never used by depth estimation, excepted)."""
    bins = importlib.import_module("04_bins")
    torch.manual_seed(11)
    cfg_net = bins.DepthNetConfig(num_layers=18, num_features=32, model_dim=16, patch_size=8,
                                  num_queries=8, num_bins=16)
    depth_net, pose_net = bins.DepthNet(cfg_net), geo().PoseCNN()
    inputs = fake_inputs(b=2, h=64, w=192)
    cfg = geo().LossConfig()
    depth = depth_net(inputs["color_aug"][0])
    assert depth.shape == (2, 1, 32, 96)
    poses = geo().predict_poses(pose_net, inputs, cfg, depth)
    out = geo().self_supervised_loss(inputs, depth, poses, cfg, geo().make_ssim(cfg))
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    for prefix, net in [("depth", depth_net), ("pose", pose_net)]:
        for name, p in net.named_parameters():
            if ".fc." in f".{name}" or not p.requires_grad:
                continue
            assert p.grad is not None, f"{prefix}.{name} gets no gradient"
            assert torch.isfinite(p.grad).all(), f"{prefix}.{name} has a non-finite gradient"
            assert p.grad.abs().sum() > 0, f"{prefix}.{name} has an all-zero gradient"


def test_loss_is_computed_in_full_precision_under_autocast():
    """Under bf16 autocast (06's --amp) the geometry and the loss still run in float32: the loss
    equals the one computed without autocast (bf16 pixel coordinates would be off by pixels)."""
    torch.manual_seed(12)
    inputs = fake_inputs(h=32, w=96)
    depth = 5 + 5 * torch.rand(2, 1, 16, 48)
    cfg = geo().LossConfig()
    net = RecordingPoseNet()
    losses = []
    for amp in (False, True):
        torch.manual_seed(0)
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=amp):
            poses = geo().predict_poses(net, inputs, cfg, depth.bfloat16() if amp else depth)
            out = geo().self_supervised_loss(inputs, depth.bfloat16() if amp else depth, poses, cfg, geo().SSIM())
        assert out["loss"].dtype == torch.float32 and poses[1].dtype == torch.float32
        losses.append(out["loss"])
    torch.testing.assert_close(losses[0], losses[1], atol=2e-3, rtol=0)
