"""The second, code-level hint of every tutorial exercise: shown only when the learner asks for it.

The docstring of an exercise says what to build, the shapes in and out, and a hint at the idea; it
does not spell out the calls. Stuck learners ask for this second hint with

    python tests/check_exercise.py 4.2 --hint

and every failing exercise test points at that command (tests/exercise_checks.py). Only the standard
library is used: tests/make_exercises.py and tests/check_exercise.py read this file without torch.
"""

# Exercise id -> the calls (or a sketch of the code) that the docstring leaves out.
HINTS = {
    "1.1": "Copy first: K = np.array(K_norm, dtype=np.float32, copy=True). Row 0 is in units of the "
           "width: K[0, :] *= width; row 1 in units of the height: K[1, :] *= height. Rows 2 and 3 "
           "stay as they are.",
    "1.2": "Keep [:, :3] of the points (float64), append a column of ones -> [N, 4] (np.concatenate "
           "with np.ones((N, 1))), multiply by P[:3].T -> [N, 3]; depth is column 2, and uv is "
           "columns 0-1 divided by it (depth[:, None] broadcasts over the two columns).",
    "2.1": "up = F.interpolate(x, size=skip.shape[-2:], mode='bilinear', align_corners=True); then "
           "net(torch.cat([up, skip], dim=1)). scale_factor=2 fails where the sizes are not exact "
           "doubles (conv2's padding=1 makes the deepest map 2 pixels larger).",
    "3.1": "patch_conv(s0) is [B, E, h/p, w/p]; .flatten(2) -> [B, E, N] (row by row), "
           ".transpose(1, 2) -> [B, N, E]; add pos_encoding[:N] with a leading batch dimension "
           "(.unsqueeze(0)).",
    "3.2": "torch.bmm(K, S.reshape(B, E, h * w)) is [B, Q, h*w]: entry (q, pixel) is the dot product "
           "of query q with that pixel's E features; .reshape(B, Q, h, w).",
    "4.1": "weights = torch.softmax(V.reshape(B, Q, h * w), dim=-1); the pixel vectors as rows: "
           "S.reshape(B, E, h * w).transpose(1, 2) -> [B, h*w, E]; torch.bmm(weights, that) -> [B, Q, E].",
    "4.2": "w = torch.relu(y) + 0.1; widths = (max - min) * w / w.sum(1, keepdim=True); "
           "edges = torch.cumsum(F.pad(widths, (1, 0), value=min_depth), dim=1) -> [B, D+1]; "
           "centres = 0.5 * (edges[:, :-1] + edges[:, 1:]).",
    "4.3": "P = torch.softmax(logits, dim=1); depth = (P * centres[:, :, None, None]).sum(dim=1, "
           "keepdim=True). Return (depth, P).",
    "5.1": "angle = torch.linalg.vector_norm(axisangle, dim=1, keepdim=True) [B, 1]; the unit axis "
           "(kx, ky, kz) = (axisangle / (angle + 1e-7)).unbind(1); build [k]x with torch.stack of the "
           "nine entries (zeros_like for the zeros) and .view(-1, 3, 3); sin and cos as [B, 1, 1]; "
           "R = I + sin * K + (1 - cos) * K @ K; write R into out[:, :3, :3] of a zero [B, 4, 4] and "
           "set out[:, 3, 3] = 1.",
    "5.2": "v, u = torch.meshgrid(torch.arange(h), torch.arange(w), indexing='ij') (dtype and device "
           "of depth); pix = torch.stack([u.reshape(-1), v.reshape(-1), ones], 0) [3, HW]; rays = "
           "inv_K[:, :3, :3] @ pix [B, 3, HW]; points = rays * depth.reshape(B, 1, HW); torch.cat with "
           "a [B, 1, HW] row of ones along dim 1.",
    "5.3": "r = window // 2; pad with F.pad(t, [r, r, r, r], mode='reflect'); a local mean is "
           "F.avg_pool2d(padded, window, stride=1); build the five maps mu_x, mu_y, E[x*x], E[y*y], "
           "E[x*y] that way, the variances and covariance from them, then the SSIM fraction; return "
           "torch.clamp((1 - ssim) / 2, 0, 1).",
    "5.4": "identity = identity + 1e-5 * torch.randn_like(identity); combined = torch.cat([identity, "
           "reprojection], dim=1) [B, 2S, H, W]; best, index = combined.min(dim=1, keepdim=True); the "
           "mask is index >= S (a warped source won). Without identity: reprojection.min(dim=1, "
           "keepdim=True).values and torch.ones_like(best, dtype=torch.bool).",
    "5.5": "norm = depth / (depth.mean(dim=(2, 3), keepdim=True) + 1e-7); grad_x = (norm[..., :, 1:] - "
           "norm[..., :, :-1]).abs(); edge_x = (img[..., :, 1:] - img[..., :, :-1]).abs().mean(1, "
           "keepdim=True); the same along rows; (grad_x * torch.exp(-edge_x)).mean() + the y term.",
    "6.1": "optimizer.zero_grad(); depth = depth_net(inputs['color_aug'][0]); poses = "
           "posenet_loss.predict_poses(pose_net, inputs, loss_cfg, depth=depth); out = "
           "posenet_loss.self_supervised_loss(inputs, depth, poses, loss_cfg, ssim); "
           "out['loss'].backward(); optimizer.step(); return {k: out[k].detach() for k in STEP_TERMS}.",
    "7.1": "ratio = float(np.median(gt) / np.median(pred)); return pred * ratio, ratio.",
    "7.2": "gt, pred as float64 arrays; ratio = np.maximum(gt / pred, pred / gt); each metric is one "
           "np.mean (rmse and rmse_log inside np.sqrt) with np.log for the logs; a1 = np.mean(ratio < "
           "1.25), a2 and a3 with 1.25 ** 2 and 1.25 ** 3; wrap every value in float().",
}
