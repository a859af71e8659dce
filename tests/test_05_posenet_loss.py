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
    axes = torch.tensor(list(expected), dtype=torch.float64) * a                  # (3, 3)
    M = geo().rot_from_axisangle(axes)
    assert M.shape == (3, 4, 4)
    for i, rot in enumerate(expected.values()):
        torch.testing.assert_close(M[i, :3, :3], torch.tensor(rot, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(M[:, 3], torch.tensor([0, 0, 0, 1.0], dtype=torch.float64).expand(3, 4))
    torch.testing.assert_close(M[:, :3, 3], torch.zeros(3, 3, dtype=torch.float64))
    torch.testing.assert_close(geo().rot_from_axisangle(torch.zeros(1, 3))[0], torch.eye(4))


def test_rodrigues_matches_matrix_exponential():
    """Exercise 5.1: for random axis-angles (angles up to ~2.5 rad) R = expm([v]x), the exact
    exponential map of so(3); R is orthonormal with determinant 1."""
    torch.manual_seed(0)
    v = torch.randn(6, 3, dtype=torch.float64)
    R = geo().rot_from_axisangle(v)[:, :3, :3]
    for i in range(6):
        torch.testing.assert_close(R[i], torch.linalg.matrix_exp(skew(v[i])), atol=1e-6, rtol=0)  # 1e-7 guard
    torch.testing.assert_close(R @ R.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(6, 3, 3),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(6, dtype=torch.float64), atol=1e-6, rtol=0)


def test_transformation_and_inverse_compose_to_identity():
    """T = [R|t] applies the rotation, then the translation (T p = R p + t), and invert=True gives
    exactly T^-1 from both sides: the transform used for the source frame -1."""
    torch.manual_seed(1)
    aa, t = 0.2 * torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    T = geo().transformation_from_parameters(aa, t)
    T_inv = geo().transformation_from_parameters(aa, t, invert=True)
    eye = torch.eye(4, dtype=torch.float64).expand(4, 4, 4)
    torch.testing.assert_close(T @ T_inv, eye)
    torch.testing.assert_close(T_inv @ T, eye)
    R = geo().rot_from_axisangle(aa)[:, :3, :3]
    p = torch.randn(4, 3, 1, dtype=torch.float64)
    moved = T @ torch.cat([p, torch.ones(4, 1, 1, dtype=torch.float64)], 1)
    torch.testing.assert_close(moved[:, :3], R @ p + t[..., None])


# ------------------------------------------------------------------ view synthesis
def test_backprojection_follows_the_pinhole_model():
    """Exercise 5.2: pixel (u = column, v = row) at depth d goes to ((u-cx) d/fx, (v-cy) d/fy, d, 1),
    flattened row-major; a non-square image catches swapped axes."""
    h, w = 5, 7
    K, inv_K = intrinsics(h, w, batch=2, dtype=torch.float64)
    depth = 1 + torch.rand(2, 1, h, w, dtype=torch.float64)
    pts = geo().BackprojectDepth()(depth, inv_K)
    assert pts.shape == (2, 4, h * w)
    fx, fy, cx, cy = K[0, 0, 0], K[0, 1, 1], K[0, 0, 2], K[0, 1, 2]
    for b, v, u in [(0, 0, 0), (1, 4, 6), (0, 2, 5), (1, 3, 1)]:
        d = depth[b, 0, v, u]
        expected = torch.stack([(u - cx) * d / fx, (v - cy) * d / fy, d, torch.ones_like(d)])
        torch.testing.assert_close(pts[b, :, v * w + u], expected)


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
    torch.testing.assert_close(grid[..., 0], xs, atol=1e-5, rtol=0)
    torch.testing.assert_close(grid[..., 1], ys, atol=1e-5, rtol=0)


@pytest.mark.parametrize("batch", [1, 3])
def test_identity_pose_reprojects_perfectly_for_any_depth(batch):
    """With no motion the warped source is the source itself, whatever the depth (batch sizes 1, 3:
    nothing is fixed to a batch size)."""
    torch.manual_seed(2)
    h, w = 12, 20
    K, inv_K = intrinsics(h, w, batch)
    img = torch.rand(batch, 3, h, w)
    for depth in [torch.full((batch, 1, h, w), 7.0), 0.1 + 80 * torch.rand(batch, 1, h, w)]:
        out = geo().warp(img, depth, K, inv_K, torch.eye(4).repeat(batch, 1, 1))
        torch.testing.assert_close(out, img, atol=1e-4, rtol=0)


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

    assert torch.autograd.gradcheck(fn, (img, depth, aa, t), eps=1e-6, atol=1e-5)


def synthetic_batch(tiny_world):
    """A KittiRaw batch (frames 0, -1, +1) of every camera-2 line of the tiny world's train drive,
    the true depth (ground truth 0 = sky: filled with 80 m, and `valid` masks it out) and the true
    target->source transforms {-1: [B,4,4], 1: [B,4,4]} from poses.txt (camera-to-world)."""
    data = importlib.import_module("01_data")
    import synthetic_world
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
    for fid in (-1, 1):
        source = inputs["color"][fid]
        true = error(source, depth, T[fid])
        none = geo().photometric_loss(source, target, ssim)[valid].mean()
        assert true < 0.5 * error(source, constant, T[fid]) and true < 0.35 * none, fid
        for factor in (0.8, 1.2):
            wrong = T[fid].clone()
            wrong[:, :3, 3] *= factor
            assert error(source, depth, wrong) > 1.3 * true, (fid, factor)


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
    torch.manual_seed(4)
    x = torch.rand(2, 3, 9, 11, dtype=torch.float64)
    y = (x + 0.3 * torch.rand_like(x)).clamp(0, 1)
    ssim = geo().SSIM() if window is None else geo().SSIM(window)
    got = ssim(x, y)
    assert got.shape == x.shape
    np.testing.assert_allclose(got.numpy(), slow_ssim(x.numpy(), y.numpy(), window or 7), atol=1e-10)
    assert ssim(x, x).abs().max() < 1e-10


def pooled_ssim(x, y, window):
    """The plain formulation (reflect padding, then five separate avg_pool2d calls, as in
    Monodepth2's code): the slow reference of the box-sum SSIM."""
    r = window // 2
    x, y = F.pad(x, [r, r, r, r], mode="reflect"), F.pad(y, [r, r, r, r], mode="reflect")
    mu_x, mu_y = F.avg_pool2d(x, window, 1), F.avg_pool2d(y, window, 1)
    sigma_x = F.avg_pool2d(x * x, window, 1) - mu_x ** 2
    sigma_y = F.avg_pool2d(y * y, window, 1) - mu_y ** 2
    sigma_xy = F.avg_pool2d(x * y, window, 1) - mu_x * mu_y
    num = (2 * mu_x * mu_y + 1e-4) * (2 * sigma_xy + 9e-4)
    den = (mu_x ** 2 + mu_y ** 2 + 1e-4) * (sigma_x + sigma_y + 9e-4)
    return torch.clamp((1 - num / den) / 2, 0, 1)


def image_pair(shape, seed=0):
    """A smooth bright image and a noisy copy in [0, 1]: flat, bright areas are where E[x^2] - mu^2
    cancels most, so they are the hard case for float32."""
    g = torch.Generator().manual_seed(seed)
    x = F.avg_pool2d(torch.rand(shape, generator=g), 5, 1, 2) * 0.4 + 0.55
    y = (x + 0.05 * torch.randn(shape, generator=g)).clamp(0, 1)
    return x, y


def test_box_mean_equals_average_pooling_and_passes_gradcheck():
    """box_mean (two cumulative sums) equals avg_pool2d with stride 1 for several windows, and its
    hand-written backward (a box filter of the zero-padded gradient) passes gradcheck."""
    x = torch.rand(2, 3, 17, 23, dtype=torch.float64)
    for window in (3, 5, 7):
        torch.testing.assert_close(geo().box_mean(x, window), F.avg_pool2d(x, window, 1), rtol=0, atol=1e-12)
    small = torch.rand(2, 2, 9, 11, dtype=torch.float64, requires_grad=True)
    for window in (3, 5):
        assert torch.autograd.gradcheck(lambda t: geo().box_mean(t, window), (small,))


@pytest.mark.parametrize("window", [7, 3])
def test_fast_ssim_equals_pooled_reference_with_gradients(window):
    """The box-sum SSIM equals the avg_pool2d formulation, values and gradients: to 1e-10 in
    float64. In float32, at the default run's size, its values are within 1e-5 of the float64
    result (closer than the float32 pooled version, whose own rounding reaches ~1e-4 on bright
    flat areas) and its gradients within 1e-5 + 1e-4 relative."""
    ssim = geo().SSIM(window)
    x, y = image_pair((2, 3, 64, 208))
    weights = torch.rand(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def value_and_grad(fn, x, y):
        x = x.clone().requires_grad_(True)
        out = fn(x, y)
        (grad,) = torch.autograd.grad((out * weights.to(out.dtype)).sum(), x)
        return out.detach().double(), grad.double()

    gold, gold_grad = value_and_grad(lambda a, b: pooled_ssim(a, b, window), x.double(), y.double())
    got, got_grad = value_and_grad(ssim, x.double(), y.double())
    torch.testing.assert_close(got, gold, rtol=0, atol=1e-10)
    torch.testing.assert_close(got_grad, gold_grad, rtol=1e-8, atol=1e-10)
    pooled_error = (pooled_ssim(x, y, window).double() - gold).abs().max()
    with torch.no_grad():
        error = (ssim(x, y).double() - gold).abs().max()
    assert error <= pooled_error and error < 1e-5, (float(error), float(pooled_error))
    got32, grad32 = value_and_grad(ssim, x, y)
    assert torch.equal(got32, ssim(x, y).double())          # the same with and without autograd
    torch.testing.assert_close(grad32, gold_grad, rtol=1e-4, atol=1e-5)


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
    best, mask = geo().min_reprojection(reproj, identity)
    assert best.shape == (2, 1, 6, 8) and mask.dtype == torch.bool and mask.shape == (2, 1, 6, 8)
    expected = torch.minimum(reproj.min(1, keepdim=True).values, identity.min(1, keepdim=True).values)
    torch.testing.assert_close(best, expected, atol=1e-4, rtol=0)
    assert not mask[static].any()
    which = identity.min(1, keepdim=True).values > reproj.min(1, keepdim=True).values
    assert torch.equal(mask, which)
    best, mask = geo().min_reprojection(reproj, None)                 # auto-masking disabled
    torch.testing.assert_close(best, reproj.min(1, keepdim=True).values)
    assert mask.all()


def test_automask_noise_breaks_ties():
    """Exercise 5.4: 1e-5 Gaussian noise is added to the identity errors, so exact ties (e.g. a
    textureless region) are decided at random instead of always by the identity term; the noise
    is small (values move by < 1e-4)."""
    torch.manual_seed(7)
    errors = torch.rand(1, 2, 64, 64)
    best, mask = geo().min_reprojection(errors, errors.clone())
    assert 0.3 < mask.float().mean().item() < 0.7
    torch.testing.assert_close(best, errors.min(1, keepdim=True).values, atol=1e-4, rtol=0)


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
    depth = 1 + 30 * torch.rand(2, 1, 5, 7, dtype=torch.float64)
    img = torch.rand(2, 3, 5, 7, dtype=torch.float64)
    got = geo().smoothness_loss(depth, img)
    assert got.dim() == 0
    assert abs(got.item() - slow_smoothness(depth.numpy(), img.numpy())) < 1e-9
    scaled = depth * torch.tensor([3.0, 0.2], dtype=torch.float64)[:, None, None, None]
    torch.testing.assert_close(geo().smoothness_loss(scaled, img), got)


def test_smoothness_is_cheaper_at_image_edges():
    """A depth step along an image edge costs less than the same step in a flat image (edge-aware:
    the weight is exp(-|image gradient|), not exp(+...))."""
    depth = torch.ones(1, 1, 8, 8)
    depth[..., 4:] = 2.0                                             # vertical depth step
    flat = torch.full((1, 3, 8, 8), 0.5)
    edge = flat.clone()
    edge[..., 4:] = 1.0                                              # image edge at the same place
    assert geo().smoothness_loss(depth, edge) < 0.8 * geo().smoothness_loss(depth, flat)


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
    torch.testing.assert_close(losses["depth", 1.0], losses["depth", 3.0])
    assert abs(losses["none", 1.0] - losses["none", 3.0]) > 1e-4


def test_loss_outputs_with_stereo():
    """self_supervised_loss returns the documented keys and shapes; with stereo the "s" frame is
    warped too and the auto-mask has the target's size."""
    inputs = fake_inputs(stereo=True)
    cfg = geo().LossConfig(frame_ids=(0, -1, 1), use_stereo=True)
    poses = geo().predict_poses(geo().PoseCNN(), inputs, cfg)
    out = geo().self_supervised_loss(inputs, 5 + torch.rand(2, 1, 4, 6), poses, cfg, geo().make_ssim(cfg))
    assert set(out) >= {"loss", "photometric", "smoothness", "automask", "min_reproj", "warped"}
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
    assert out["automask"].shape == (2, 1, 8, 12) and out["automask"].dtype == torch.bool
    assert out["min_reproj"].shape == (2, 1, 8, 12) and list(out["warped"]) == [-1, 1, "s"]
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


def test_training_health_numbers_on_cases_with_known_answers():
    """training_health: a flat depth map has spread 0 and a map of 1s and 3s spread 0.5 (std/mean,
    unbiased std); the motion is |t| / mean depth averaged over the temporal sources (the stereo
    pose is not predicted); the auto-mask fraction and the two photometric means are those of the
    maps given. collapse_signs names exactly the numbers below their limits."""
    g = geo()
    cfg = g.LossConfig(frame_ids=(0, -1, 1, "s"), use_stereo=True)
    flat = torch.full((2, 1, 2, 2), 4.0)
    two = torch.tensor([1.0, 3.0, 1.0, 3.0]).view(1, 1, 2, 2).repeat(2, 1, 1, 1)
    t = torch.tensor([[0.4, 0.0, 0.3], [0.0, 0.0, 0.0]])                   # |t| = 0.5 and 0
    poses = {-1: g.transformation_from_parameters(torch.zeros(2, 3), t, invert=True),
             1: g.transformation_from_parameters(torch.zeros(2, 3), 2 * t),
             "s": torch.eye(4).repeat(2, 1, 1) * 100}
    reprojection = torch.stack([torch.full((2, 2, 2), 0.2), torch.full((2, 2, 2), 0.1)], 1)  # [2, 2, 2, 2]
    identity = torch.full((2, 2, 2, 2), 0.3)
    mask = torch.tensor([True, False, False, False]).view(1, 1, 2, 2).repeat(2, 1, 1, 1)
    h = g.training_health(flat, poses, reprojection, identity, mask, cfg)
    assert set(h) == set(g.HEALTH_TERMS) and all(v.dim() == 0 for v in h.values())
    assert float(h["depth_spread"]) == 0.0
    assert float(h["motion"]) == pytest.approx((0.5 / 4 + 1.0 / 4 + 0 + 0) / 4)
    assert float(h["automask_kept"]) == 0.25
    assert float(h["identity_photometric"]) == pytest.approx(0.3)
    assert float(h["warped_photometric"]) == pytest.approx(0.1)
    h2 = g.training_health(two, poses, reprojection, None, mask, cfg)
    assert float(h2["depth_spread"]) == pytest.approx(float(torch.tensor([1.0, 3, 1, 3]).std() / 2))
    assert math.isnan(float(h2["identity_photometric"]))
    signs = g.collapse_signs({k: float(v) for k, v in h.items()})
    assert len(signs) == 1 and signs[0].startswith("depth_spread 0")   # warped 0.1 beats identity 0.3
    healthy = {"depth_spread": 0.5, "motion": 0.05, "automask_kept": 0.8}
    assert g.collapse_signs(healthy) == []
    assert [s.split()[0] for s in g.collapse_signs({**healthy, "motion": 0.0, "automask_kept": 0.0})] == \
        ["motion", "automask_kept"]


def test_motion_vs_truth_is_one_for_a_consistent_prediction_at_any_scale():
    """motion_vs_truth: a prediction whose depth AND translation are the truth times one factor k
    (what monocular training can reach) scores 1 for every k; half the true translation scores
    0.5; pixels without ground truth (0) are ignored."""
    g = geo()
    cfg = g.LossConfig()
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
        ratios = g.motion_vs_truth(pred, poses, gt, true_t, cfg)
        torch.testing.assert_close(ratios, torch.full((2,), want), rtol=0.15, atol=0)


def test_collapse_watch_warns_once_after_patience_and_never_before_min_step():
    """CollapseWatch: a sign at every log line warns once, at the patience-th line from the sign's
    first step on (50 for the motion), naming the number and the advice; a healthy line resets the
    count; before that step nothing. The warp ratio (warped / identity error) counts from step 200."""
    watch = geo().CollapseWatch("try X", patience=3)
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
    assert geo().collapse_signs(stalled, step=150) == []
    assert geo().collapse_signs(stalled, step=200)[0].startswith("warp_ratio 0.983 > 0.85")
    assert geo().collapse_signs({**stalled, "warped_photometric": 0.06}) == []
