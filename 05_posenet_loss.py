"""05 - pose net and loss: how a depth network learns from video alone: pose, view synthesis, loss.

Concept. If the depth D of every pixel of the target frame I0 and the camera motion T from I0 to
a neighbouring frame Is are right, each target pixel can be lifted to 3D (back-projection with
inv(K)), moved by T, projected into Is (with K), and the colour found there must equal the
target's colour. The photometric difference between I0 and this "warped" Is is therefore a
training signal for both networks, and no ground-truth depth is needed (Monodepth2, ICCV 2019,
Sec. 3; SQLDepth, AAAI 2024, Sec. 3.4 reuses it unchanged). In symbols, for a target pixel p:

  Is->0(p) = Is< proj(K T D(p) inv(K) p) >        (bilinear sampling of Is: `warp`)
  pe(a, b) = 0.85 (1 - SSIM(a, b)) / 2 + 0.15 |a - b|   (mean over colour channels)
  L = mean_p min_s pe(I0, Is->0)(p)  +  lambda * smoothness(D / mean(D), I0),   lambda = 1e-3

with the minimum over the sources s in {-1, +1} (and the stereo partner "s" in MS training) and
Monodepth2's auto-mask: the unwarped sources join the minimum, so a pixel that one of them already
matches better (a static scene, a car moving with the camera) gives no gradient.
This file adds:

  PoseCNN / PoseResNet          the pose network: (axis-angle, translation) for a frame pair
  rot_from_axisangle            Rodrigues' formula                               (Exercise 5.1)
  transformation_from_parameters  4x4 [R|t], or its inverse for the source -1
  BackprojectDepth / Project3D  pixels -> 3D points -> pixels of another camera  (Exercise 5.2)
  warp                          grid_sample of the source at the projected pixels
  SSIM, photometric_loss        0.85 * (1 - SSIM)/2 + 0.15 * L1                  (Exercise 5.3)
  min_reprojection              per-pixel minimum over sources + auto-masking    (Exercise 5.4)
  smoothness_loss               edge-aware smoothness on mean-normalised depth   (Exercise 5.5)
  LossConfig, predict_poses, self_supervised_loss   what 06_train.py calls every step

The numbers that tell whether self-supervision teaches anything (a collapsed run) are computed with
the loss but live in helpers/training_health.py: a reader of the loss can skip them.

Uses 02_unet (the ResNet for PoseResNet only) and, in the demo, helpers/synthetic_world.py read by 01_data.
Used by 06_train.py. Demo: `python 05_posenet_loss.py` warps a synthetic frame with its true
depth and pose, saves a figure and prints the loss for true vs constant depth.
Tests: tests/test_05_posenet_loss.py.

Where we differ from the official code (github.com/hisfog/SfMNeXt-Impl, itself Monodepth2's
trainer, github.com/nianticlabs/monodepth2):
- BackprojectDepth/Project3D take their sizes from the tensors, so any batch size works (the
  originals fix the batch size in __init__ and need drop_last=True).
- SSIM uses a 7x7 window (SQLDepth) where Monodepth2 uses 3x3; both are available.
- The monocular translation scaling defaults to "depth" (x mean depth), not the official
  "inv_depth" (x mean inverse depth); see LossConfig.pose_scaling for why.
"""
import argparse
import importlib
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers.cli import add_dataclass_flags  # the command line of every script (helpers/cli.py)
from helpers.training_health import training_health  # does self-supervision teach? (helpers/)

# A module name cannot start with a digit in an `import` statement, so the numbered scripts are
# loaded by name; the alias is the file name without its number.
unet = importlib.import_module("02_unet")


# ---- Pose networks ----
# A frame pair [B, 6, H, W] in [0, 1] -> (axis-angle [B, 3], translation [B, 3]).
class PoseCNN(nn.Module):
    """The official trainer's pose network: 7 strided convs + ReLU, no BatchNorm, 1x1 conv to 6
    numbers per predicted transform, spatial mean, x 0.01 (small initial motions).
    Parameter names (net.0..6, pose_conv) follow the official module so its pose.pth loads."""

    def __init__(self, num_input_frames=2):
        super().__init__()
        if num_input_frames < 2:
            raise ValueError(f"PoseCNN needs num_input_frames >= 2, got {num_input_frames}")
        self.num_input_frames = num_input_frames
        channels = [3 * num_input_frames, 16, 32, 64, 128, 256, 256, 256]
        kernels = [7, 5, 3, 3, 3, 3, 3]
        self.net = nn.ModuleList(
            nn.Conv2d(cin, cout, k, stride=2, padding=k // 2)
            for cin, cout, k in zip(channels[:-1], channels[1:], kernels))
        self.pose_conv = nn.Conv2d(256, 6 * (num_input_frames - 1), 1)

    def forward(self, frames):
        """frames [B, 3*num_input_frames, H, W] in [0, 1] (no normalisation, as official).
        Returns axis-angle and translation, each [B, 3] for a pair, [B, N-1, 3] otherwise."""
        x = frames
        for conv in self.net:
            x = F.relu(conv(x))                                # [B, C, H/2^k, W/2^k]
        out = 0.01 * self.pose_conv(x).mean(dim=(2, 3))        # [B, 6 * (N-1)]
        out = out.view(-1, self.num_input_frames - 1, 6)       # [B, N-1, 6]
        if self.num_input_frames == 2:
            out = out[:, 0]                                    # [B, 6]
        return out[..., :3], out[..., 3:]


class PoseResNet(nn.Module):
    """Monodepth2's pose network: a ResNet-18 (02_unet's encoder) whose conv1 takes the 6-channel
    pair, then its pose decoder: squeeze 1x1 (512 -> 256) + ReLU, 3x3 conv 256 + ReLU, 3x3 conv
    256 + ReLU, 1x1 conv -> 6, spatial mean, x 0.01. ImageNet weights for the 6-channel conv1 are
    the 3-channel ones repeated twice and halved, so the response to a static pair is unchanged.
    Deviation: Monodepth2's decoder outputs 12 numbers (two transforms) and uses the first; we
    output the 6 that are used."""

    def __init__(self, num_layers=18, pretrained=None):
        super().__init__()
        self.encoder = unet.ResNet(num_layers)                 # torchvision names, 3-channel conv1
        unet.load_pretrained(self.encoder, pretrained)    # None, "imagenet" or a .pth path (02)
        old = self.encoder.conv1.weight.detach()               # (64, 3, 7, 7)
        self.encoder.conv1 = nn.Conv2d(6, 64, 7, stride=2, padding=3, bias=False)
        with torch.no_grad():
            self.encoder.conv1.weight.copy_(torch.cat([old, old], 1) / 2)   # (64, 6, 7, 7)
        self.encoder.fc = nn.Identity()   # the classifier is never used (DDP dislikes unused params)
        self.squeeze = nn.Conv2d(self.encoder.channels[-1], 256, 1)
        self.pose = nn.Sequential(
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 6, 1))

    def forward(self, frames):
        """frames [B, 6, H, W] in [0, 1] -> (axis-angle [B, 3], translation [B, 3])."""
        deepest = self.encoder.features(unet.normalise(frames))[-1]  # [B, C4, H/32, W/32]
        out = self.pose(F.relu(self.squeeze(deepest)))         # [B, 6, H/32, W/32]
        out = 0.01 * out.mean(dim=(2, 3))                      # [B, 6]
        return out[:, :3], out[:, 3:]


# ---- Pose maths ----
def rot_from_axisangle(axisangle):
    """Rotation matrix of an axis-angle vector, as a homogeneous 4x4.

    Exercise 5.1: implement Rodrigues' formula. axisangle [B, 3] = angle * unit axis (angle in
    radians, right-handed). Return [B, 4, 4] with R in the top-left 3x3, 1 at [3, 3], 0 elsewhere:
        R = I + sin(a) [k]x + (1 - cos(a)) [k]x^2,   [k]x = [[0,-kz,ky],[kz,0,-kx],[-ky,kx,0]].
    Hint: the angle a is the vector's length and the axis k its direction; a zero vector must give
    R = I (add 1e-7 to the length before dividing). Build [k]x for the whole batch, [B, 3, 3].
    """
    angle = torch.linalg.vector_norm(axisangle, dim=1, keepdim=True)    # [B, 1]
    kx, ky, kz = (axisangle / (angle + 1e-7)).unbind(1)                 # each [B]
    zero = torch.zeros_like(kx)
    skew = torch.stack([zero, -kz, ky, kz, zero, -kx, -ky, kx, zero], 1).view(-1, 3, 3)
    sin, cos = torch.sin(angle)[..., None], torch.cos(angle)[..., None]  # [B, 1, 1]
    eye = torch.eye(3, dtype=axisangle.dtype, device=axisangle.device)
    rot = eye + sin * skew + (1 - cos) * (skew @ skew)                  # [B, 3, 3]
    out = torch.zeros(axisangle.shape[0], 4, 4, dtype=axisangle.dtype, device=axisangle.device)
    out[:, :3, :3] = rot
    out[:, 3, 3] = 1
    return out


def transformation_from_parameters(axisangle, translation, invert=False):
    """(axis-angle [B, 3], translation [B, 3]) -> T [B, 4, 4] = [R | t] (rotate, then translate).
    invert=True returns T^-1 = [R^T | -R^T t]: the pose net always sees frames in temporal order,
    so for the source -1 it predicts the motion I-1 -> I0 and we need the inverse."""
    rot = rot_from_axisangle(axisangle.reshape(-1, 3))                  # [B, 4, 4]
    t = translation.reshape(-1, 3)                                      # [B, 3]
    if invert:
        rot = rot.transpose(1, 2)
        t = -t
    trans = torch.eye(4, dtype=rot.dtype, device=rot.device).repeat(rot.shape[0], 1, 1)
    trans[:, :3, 3] = t                                                 # [B, 4, 4] pure translation
    return rot @ trans if invert else trans @ rot


# ---- View synthesis: back-project, transform, project, sample ----
class BackprojectDepth(nn.Module):
    """depth [B, 1, H, W] + inv_K [B, 4, 4] -> homogeneous camera points [B, 4, H*W]."""

    def forward(self, depth, inv_K):
        """Exercise 5.2: lift every pixel to 3D in the camera frame.
        Build the pixel grid p = (u, v, 1) with u = column 0..W-1 and v = row 0..H-1, flattened
        row-major to [3, H*W]; camera rays inv_K[:, :3, :3] @ p -> [B, 3, H*W]; multiply by the
        depth (flattened the same way) and append a row of ones -> [B, 4, H*W].
        Hint: entry i of a row-major flattening is row i // W, column i % W: build the grid so that
        its flattening and depth's agree; new tensors take depth's dtype and device.
        """
        b, _, h, w = depth.shape
        opts = dict(dtype=depth.dtype, device=depth.device)
        v, u = torch.meshgrid(torch.arange(h, **opts), torch.arange(w, **opts), indexing="ij")
        pix = torch.stack([u.reshape(-1), v.reshape(-1), torch.ones(h * w, **opts)], 0)  # [3, HW]
        rays = inv_K[:, :3, :3] @ pix                                   # [B, 3, HW]
        points = rays * depth.reshape(b, 1, h * w)                      # [B, 3, HW]
        return torch.cat([points, torch.ones(b, 1, h * w, **opts)], 1)  # [B, 4, HW]


class Project3D(nn.Module):
    """Points [B, 4, H*W] seen from the target -> sampling grid [B, H, W, 2] in the source camera
    (K @ T), normalised to [-1, 1] with (W-1), (H-1) for grid_sample(align_corners=True)."""

    def __init__(self, eps=1e-7):
        super().__init__()
        self.eps = eps      # keeps the division finite for points on the camera plane

    def forward(self, points, K, T, height, width):
        proj = (K @ T)[:, :3, :]                                        # [B, 3, 4]
        cam = proj @ points                                             # [B, 3, HW]
        pix = cam[:, :2] / (cam[:, 2:3] + self.eps)                     # [B, 2, HW] pixels
        # To [-1, 1] with Python numbers: a torch.tensor([W - 1, H - 1]) made here would be a copy
        # from host memory in the middle of every forward pass (a host sync on a GPU).
        grid = torch.stack([pix[:, 0] * (2 / (width - 1)), pix[:, 1] * (2 / (height - 1))], -1) - 1
        return grid.view(-1, height, width, 2)                          # [B, H, W, 2]


def warp(source, depth, K, inv_K, T):
    """Synthesise the target view from `source` [B, C, H, W] given the target depth [B, 1, H, W]
    and T [B, 4, 4] (target camera -> source camera). Out-of-image samples repeat the border.
    A NaN/Inf in depth or T (a diverging run) never reaches grid_sample, whose CPU backward reads
    out of bounds on a NaN coordinate and crashes the process (github.com/pytorch/pytorch/issues/24823):
    such coordinates are replaced by 0, and the warped image is made NaN instead, so the loss is
    non-finite and 06's NaN guard stops the run with one line. Done on the device, with no host
    sync (a check with .item() would make the GPU wait every step)."""
    h, w = depth.shape[-2:]
    points = BackprojectDepth()(depth, inv_K)                           # [B, 4, HW]
    grid = Project3D()(points, K, T, h, w)                              # [B, H, W, 2]
    finite = torch.isfinite(grid)
    grid = torch.where(finite, grid, torch.zeros((), dtype=grid.dtype, device=grid.device))
    warped = F.grid_sample(source, grid, mode="bilinear", padding_mode="border", align_corners=True)
    poison = torch.where(finite.all(), 0.0, float("nan")).to(warped.dtype)  # 0-d: 0, or NaN if any was not
    return warped + poison


# ---- Photometric error, minimum reprojection, smoothness ----
class SSIM(nn.Module):
    """Structural dissimilarity map between two images [B, C, H, W] -> [B, C, H, W] in [0, 1].
    A training run on a CPU uses helpers/speed_layer.py's BoxFilterSSIM: the same numbers, faster."""

    def __init__(self, window=7):
        super().__init__()
        if window < 3 or window % 2 == 0:
            raise ValueError(f"SSIM window must be odd and >= 3, got {window}")
        self.window = window    # 7 in SQLDepth, 3 in Monodepth2
        self.C1 = 0.01 ** 2     # stabilisers for images in [0, 1] (Wang et al. 2004)
        self.C2 = 0.03 ** 2

    def forward(self, x, y):
        """Exercise 5.3: (1 - SSIM) / 2, clamped to [0, 1], per pixel and channel.
        Reflection-pad both images by window // 2, then take local means over window x window
        blocks (stride 1): mu_x, mu_y, sigma_x = E[x^2] - mu_x^2, sigma_y likewise, sigma_xy =
        E[xy] - mu_x mu_y, and SSIM = (2 mu_x mu_y + C1)(2 sigma_xy + C2) /
        ((mu_x^2 + mu_y^2 + C1)(sigma_x + sigma_y + C2)). Output has the input's shape.
        Hint: a local mean over a window, taken at every pixel, is an average pooling with stride 1;
        mirror the border by window // 2 first, so that the map keeps its size. The variances and
        the covariance are then local means of products, less products of local means.
        """
        r = self.window // 2
        x = F.pad(x, [r, r, r, r], mode="reflect")                          # [B, C, H+2r, W+2r]
        y = F.pad(y, [r, r, r, r], mode="reflect")
        mu_x, mu_y = F.avg_pool2d(x, self.window, 1), F.avg_pool2d(y, self.window, 1)  # [B, C, H, W]
        sigma_x = F.avg_pool2d(x * x, self.window, 1) - mu_x * mu_x
        sigma_y = F.avg_pool2d(y * y, self.window, 1) - mu_y * mu_y
        sigma_xy = F.avg_pool2d(x * y, self.window, 1) - mu_x * mu_y
        num = (2 * mu_x * mu_y + self.C1) * (2 * sigma_xy + self.C2)
        den = (mu_x * mu_x + mu_y * mu_y + self.C1) * (sigma_x + sigma_y + self.C2)
        return torch.clamp((1 - num / den) / 2, 0, 1)


def photometric_loss(pred, target, ssim):
    """Per-pixel error [B, 1, H, W] = 0.85 * mean_c SSIM-dissimilarity + 0.15 * mean_c |pred -
    target| (Monodepth2 Eq. 1). ssim=None gives the plain L1 (Monodepth2's --no_ssim)."""
    l1 = (pred - target).abs().mean(1, keepdim=True)                    # [B, 1, H, W]
    if ssim is None:
        return l1
    return 0.85 * ssim(pred, target).mean(1, keepdim=True) + 0.15 * l1


def min_reprojection(reprojection, identity=None):
    """Per-pixel minimum reprojection with auto-masking (Monodepth2 Sec. 3.3, Eq. 4 and 5).

    Exercise 5.4: reprojection [B, S, H, W] holds the error of each warped source, identity
    [B, S, H, W] (or None: no auto-masking) that of each *unwarped* source. Add Gaussian noise of
    standard deviation 1e-5 to the identity errors (breaks ties on static, textureless pixels),
    put them before the reprojection errors along dim 1 and take the minimum over that dim.
    Return (minimum [B, 1, H, W], automask [B, 1, H, W] bool = a warped source won); without
    identity errors the minimum is over the reprojection errors and the mask is all True.
    Hint: one minimum over all 2S candidates gives both outputs: its value is the error, and where
    the winner sits along dim 1 (an identity or a warped source) is the mask.
    """
    if identity is None:
        best = reprojection.min(dim=1, keepdim=True).values
        return best, torch.ones_like(best, dtype=torch.bool)
    identity = identity + 1e-5 * torch.randn_like(identity)
    combined = torch.cat([identity, reprojection], dim=1)               # [B, 2S, H, W]
    best, index = combined.min(dim=1, keepdim=True)                     # [B, 1, H, W] each
    return best, index >= identity.shape[1]


def smoothness_loss(depth, img):
    """Edge-aware smoothness of a depth map [B, 1, H, W] given its image [B, 3, H, W] -> scalar.

    Exercise 5.5: divide depth by its per-image mean (+1e-7) so the term ignores global scale,
    take absolute differences between horizontal neighbours ([..., :, 1:] vs [..., :, :-1]) and
    vertical neighbours, weight each by exp(-|image difference in the SAME direction|) averaged
    over colour channels, and return mean(x-term) + mean(y-term).
    Hint: differences between neighbours along x are one column shorter, [B, C, H, W-1]: the
    weight of a depth difference comes from the same pair of pixels of the image, averaged over
    its 3 channels to one. SQLDepth (official) smooths depth, Monodepth2 disparity (1/depth).
    """
    norm = depth / (depth.mean(dim=(2, 3), keepdim=True) + 1e-7)       # [B, 1, H, W]
    grad_x = (norm[..., :, 1:] - norm[..., :, :-1]).abs()               # [B, 1, H, W-1]
    grad_y = (norm[..., 1:, :] - norm[..., :-1, :]).abs()               # [B, 1, H-1, W]
    edge_x = (img[..., :, 1:] - img[..., :, :-1]).abs().mean(1, keepdim=True)
    edge_y = (img[..., 1:, :] - img[..., :-1, :]).abs().mean(1, keepdim=True)
    return (grad_x * torch.exp(-edge_x)).mean() + (grad_y * torch.exp(-edge_y)).mean()


# ---- What the training loop calls ----
@dataclass
class LossConfig:
    """What self_supervised_loss and predict_poses compute (06_train.py builds it from its config)."""
    frame_ids: tuple = (0, -1, 1)     # target 0 first, then temporal sources; "s" allowed with use_stereo
    use_stereo: bool = False         # add the other camera "s" as a source (fixed inputs["stereo_T"])
    ssim_window: int = 7             # SSIM window: 7 as SQLDepth, 3 as Monodepth2, 0 = L1 only
    smoothness_weight: float = 1e-3  # weight of the edge-aware smoothness term (paper Sec. 3.4)
    automask: bool = True            # Monodepth2's auto-masking of pixels that do not move
    # Monocular translation scaling, skipped when use_stereo (the stereo baseline fixes the scale).
    # "inv_depth": t * mean(1/depth), the official code (from arXiv 1712.00175). "depth": t * mean
    # (depth): the pose net then predicts motion in units of the scene's mean depth, so the warp
    # is invariant to a global rescale of depth; with the SQL head starting near 40 m, the
    # official choice shrinks the first motions to ~2e-4 m, nothing moves, depth gets no signal,
    # and a prototype stalled and then collapsed, while "depth" learned at once. "none": raw t.
    pose_scaling: str = "depth"
    min_depth: float = 0.001         # depth is clamped to [min_depth, max_depth] before warping
    max_depth: float = 80.0          # (a no-op for DepthNet, whose bins span this range)

    def __post_init__(self):
        if self.pose_scaling not in POSE_SCALINGS:
            raise ValueError(f"pose_scaling must be one of {POSE_SCALINGS}, got {self.pose_scaling!r}")
        if self.ssim_window < 0:
            raise ValueError(f"ssim_window must be >= 0 (0 = L1 only), got {self.ssim_window}")
        if not 0 < self.min_depth < self.max_depth:
            raise ValueError(f"need 0 < min_depth < max_depth, got {self.min_depth} and {self.max_depth}")


POSE_SCALINGS = ("depth", "inv_depth", "none")


def _full_precision(x):
    """Geometry in at least float32, outside autocast: bf16 keeps 8 mantissa bits, i.e. errors of
    several pixels on coordinates of a few hundred, which would wreck the warp under --amp."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def source_ids(cfg):
    """The source frames in loss order: temporal ones from cfg.frame_ids, then "s" if stereo."""
    frame_ids = list(cfg.frame_ids)
    if not frame_ids or frame_ids[0] != 0:
        raise ValueError(f"frame_ids must start with the target 0, got {frame_ids}")
    if "s" in frame_ids and not cfg.use_stereo:
        raise ValueError(f"frame_ids {frame_ids} contain 's' but use_stereo is False")
    temporal = [int(f) for f in frame_ids[1:] if f != "s"]
    return temporal + (["s"] if cfg.use_stereo else [])


def predict_poses(pose_net, inputs, cfg, depth=None):
    """{source id: T [B, 4, 4] target -> source} for a collated batch (uses inputs["color_aug"]).
    Pairs are fed in temporal order ([I-1, I0] or [I0, I+1]) and the transform of -1 is inverted;
    a pose net without batch statistics (PoseCNN) takes all pairs in one batch.
    depth [B, 1, h, w] (the network output) is needed for pose_scaling "depth"/"inv_depth"."""
    poses, scale = {}, None
    sources = source_ids(cfg)
    if cfg.pose_scaling != "none" and not cfg.use_stereo:
        if depth is None:
            raise ValueError(f"pose_scaling={cfg.pose_scaling!r} needs the predicted depth")
        depth = _full_precision(depth).clamp(cfg.min_depth, cfg.max_depth)  # [B, 1, h, w]
        scale = (depth if cfg.pose_scaling == "depth" else 1 / depth).mean(dim=(1, 2, 3))  # [B]
    colour = inputs["color_aug"]
    temporal = [fid for fid in sources if fid != "s"]
    pairs = [torch.cat([colour[fid], colour[0]] if fid < 0 else [colour[0], colour[fid]], 1)
             for fid in temporal]                                       # [B, 6, H, W] each
    if len(pairs) > 1 and not has_batch_statistics(pose_net):  # one pass for all pairs: same numbers, faster
        axisangle, translation = pose_net(torch.cat(pairs))             # [S*B, 3] each
        outputs = list(zip(axisangle.chunk(len(pairs)), translation.chunk(len(pairs))))
    else:                                             # BatchNorm (PoseResNet) sees each pair's batch alone
        outputs = [pose_net(pair) for pair in pairs]
    for fid, (axisangle, translation) in zip(temporal, outputs):       # [B, 3] each
        with torch.autocast(device_type=axisangle.device.type, enabled=False):
            axisangle, translation = _full_precision(axisangle), _full_precision(translation)
            if scale is not None:
                translation = translation * scale[:, None]
            poses[fid] = transformation_from_parameters(axisangle, translation, invert=fid < 0)
    if "s" in sources:
        poses["s"] = inputs["stereo_T"]
    return poses


def has_batch_statistics(net):
    """True if `net` normalises with batch statistics in training (BatchNorm): then its output for one
    sample depends on the rest of the batch, and frame pairs must not be stacked into one batch."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


def self_supervised_loss(inputs, depth, poses, cfg, ssim):
    """The total loss of one batch (module docstring): minimum reprojection with auto-masking plus
    weighted smoothness. depth [B, 1, H/2, W/2] is upsampled to the image size first. Returns
    loss (scalar, with graph) and, detached, photometric and smoothness (0-d tensors: no host
    sync), automask and min_reproj [B, 1, H, W], warped {source id: [B, 3, H, W]}, and the
    numbers of helpers/training_health.py (is self-supervision working? HEALTH_TERMS)."""
    target = inputs["color"][0]                                         # [B, 3, H, W]
    h, w = target.shape[-2:]
    with torch.autocast(device_type=depth.device.type, enabled=False):  # see _full_precision
        depth = F.interpolate(_full_precision(depth), size=(h, w), mode="bilinear",
                              align_corners=False).clamp(cfg.min_depth, cfg.max_depth)  # [B, 1, H, W]
        warped, reprojection, identity = {}, [], []
        for fid in source_ids(cfg):
            if fid not in poses:
                raise ValueError(f"no pose for source frame {fid!r} (got {sorted(map(str, poses))})")
            source = inputs["color"][fid]
            T = _full_precision(poses[fid])
            warped[fid] = warp(source, depth, inputs["K"], inputs["inv_K"], T)
            reprojection.append(photometric_loss(warped[fid], target, ssim))  # [B, 1, H, W]
            if cfg.automask:            # unwarped source vs target: no parameter involved
                with torch.no_grad():
                    identity.append(photometric_loss(source, target, ssim))
        reprojection = torch.cat(reprojection, 1)                       # [B, S, H, W]
        identity = torch.cat(identity, 1) if cfg.automask else None      # [B, S, H, W] or None
        best, automask = min_reprojection(reprojection, identity)
        photometric = best.mean()
        smoothness = smoothness_loss(depth, target)   # depth as official SQLDepth (Monodepth2: disparity)
        temporal = [fid for fid in source_ids(cfg) if fid != "s"]
        health = training_health(depth.detach(), poses, reprojection.detach(), identity, automask, temporal)
    return dict(loss=photometric + cfg.smoothness_weight * smoothness,
                photometric=photometric.detach(), smoothness=smoothness.detach(),
                automask=automask, min_reproj=best.detach(),
                warped={fid: img.detach() for fid, img in warped.items()}, **health)


def make_ssim(cfg):
    """The SSIM module a LossConfig asks for (None when ssim_window is 0: L1 only)."""
    return SSIM(cfg.ssim_window) if cfg.ssim_window else None


# ==============================================================================================
# ---- Engineering: not needed to understand SQLDepth ----
# The demo (warp a synthetic frame with its true depth and pose) and the command line.
# ==============================================================================================
@dataclass
class DemoConfig:
    """What `python 05_posenet_loss.py` does: warp a synthetic frame, compare losses, save a figure."""
    out: str = "runs/demo_05_posenet_loss.png"   # where the figure is saved
    height: int = 128        # synthetic image height
    width: int = 416         # synthetic image width
    seed: int = 0            # seed of the synthetic world
    sky_depth: float = 80.0  # depth given to sky pixels (ground truth 0 = no data)
    ssim_window: int = 7     # SSIM window of the photometric error


def synthetic_pair(root, height, width, sky_depth):
    """One target/source pair of the synthetic world as a batch of 1: a KittiRaw inputs dict
    (frames 0 and +1, float images), the true depth [1, 1, H, W] (sky filled with sky_depth) and the true
    T [1, 4, 4] target camera -> source camera, from poses.txt (camera-to-world matrices)."""
    data = importlib.import_module("01_data")
    from helpers import synthetic_world
    lines = data.read_split(Path(root) / "splits" / "synthetic" / "train_files.txt")
    folder, frame, side = next(line for line in lines if line[2] == "l")   # poses are camera 2's
    dataset = data.KittiRaw(root, [(folder, frame, side)], height, width, frame_ids=(0, 1),
                            load_depth=True, img_ext=".jpg")
    inputs = data.images_to_float(data.collate([dataset[0]]))          # images as float in [0, 1]
    depth = inputs["depth_gt"]                                          # [1, 1, Hgt, Wgt]
    depth = F.interpolate(depth, size=(height, width), mode="nearest")
    depth = torch.where(depth > 0, depth, torch.full_like(depth, sky_depth))
    poses = torch.from_numpy(synthetic_world.read_synthetic_poses(Path(root) / folder)).float()  # [N, 4, 4]
    T = torch.linalg.inv(poses[frame + 1]) @ poses[frame]                # target -> source
    return inputs, depth, T[None]


def demo(cfg):
    """Warp with true and with constant depth, print both losses, save the figure."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from helpers import synthetic_world
    loss_cfg = LossConfig(frame_ids=(0, 1), ssim_window=cfg.ssim_window)
    ssim = make_ssim(loss_cfg)                          # a bad window fails before rendering
    with tempfile.TemporaryDirectory() as tmp:
        root = synthetic_world.make_synthetic_kitti(tmp, num_drives=3, frames_per_drive=4, height=cfg.height,
                                                    width=cfg.width, seed=cfg.seed)
        inputs, depth, T = synthetic_pair(root, cfg.height, cfg.width, cfg.sky_depth)
    torch.manual_seed(0)                                # the auto-mask's tie-breaking noise
    results = {}
    for name, d in [("true depth", depth), ("constant depth", torch.full_like(depth, depth.mean()))]:
        out = self_supervised_loss(inputs, d, {1: T}, loss_cfg, ssim)
        error = photometric_loss(out["warped"][1], inputs["color"][0], ssim).mean()
        results[name] = out
        print(f"{name:>14}: loss {out['loss'].item():.4f} = photometric (min, auto-masked) "
              f"{out['photometric'].item():.4f} + {loss_cfg.smoothness_weight:g} x smoothness "
              f"{out['smoothness'].item():.4f}; warped-source error {error.item():.4f}; auto-mask keeps "
              f"{out['automask'].float().mean().item():.1%} of pixels")
    no_warp = photometric_loss(inputs["color"][1], inputs["color"][0], ssim).mean()
    print(f"{'no warp':>14}: error of the unwarped source {no_warp.item():.4f}")

    true = results["true depth"]
    panels = [("target I0", inputs["color"][0]), ("source I+1", inputs["color"][1]),
              ("I+1 warped with true depth + pose", true["warped"][1]),
              ("photometric error (min over sources)", true["min_reproj"]),
              ("auto-mask (white = pixel used)", true["automask"].float())]
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.0 * len(panels)))
    for ax, (title, img) in zip(axes, panels):
        img = img[0].permute(1, 2, 0).numpy()                          # [H, W, C]
        ax.imshow(img.clip(0, 1) if img.shape[2] == 3 else img[..., 0],
                  cmap=None if img.shape[2] == 3 else ("magma" if "error" in title else "gray"))
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(cfg.out, dpi=100)
    print(f"figure saved to {cfg.out}")


def main(argv=None):
    """Command line generated from DemoConfig; returns the exit status (2 = bad input, one line)."""
    parser = argparse.ArgumentParser(description="Warp a synthetic frame with its true depth and "
                                     "pose; compare the loss with that of a constant depth.")
    add_dataclass_flags(parser, DemoConfig)
    cfg = DemoConfig(**vars(parser.parse_args(argv)))
    torch.set_grad_enabled(False)
    data = importlib.import_module("01_data")
    try:
        demo(cfg)
    except (ValueError, OSError, data.DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
