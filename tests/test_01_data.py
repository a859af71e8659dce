"""Tests of 01_data.py: calibration, velodyne ground truth, splits, KittiRaw, the command-line helper."""
import argparse
import colorsys
import importlib
import pickle
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import cli
from helpers import color_jitter as jitter  # the colour augmentation maths (helpers/color_jitter.py)
from helpers import kitti_files  # the standard split lists (helpers/kitti_files.py)
from exercise_checks import assert_allclose_explained, shape_message

# The real KITTI 2011_09_26 calibration (the keys Monodepth2 reads, plus the non-numeric time).
CAM_TO_CAM_2011_09_26 = """calib_time: 09-Jan-2012 13:57:47
corner_dist: 9.950000e-02
S_rect_00: 1.242000e+03 3.750000e+02
R_rect_00: 9.999239e-01 9.837760e-03 -7.445048e-03 -9.869795e-03 9.999421e-01 -4.278459e-03 7.402527e-03 4.351614e-03 9.999631e-01
P_rect_00: 7.215377e+02 0.000000e+00 6.095593e+02 0.000000e+00 0.000000e+00 7.215377e+02 1.728540e+02 0.000000e+00 0.000000e+00 0.000000e+00 1.000000e+00 0.000000e+00
S_rect_02: 1.242000e+03 3.750000e+02
R_rect_02: 9.998817e-01 1.511453e-02 -2.841595e-03 -1.511724e-02 9.998853e-01 -9.338510e-04 2.827154e-03 9.766976e-04 9.999955e-01
P_rect_02: 7.215377e+02 0.000000e+00 6.095593e+02 4.485728e+01 0.000000e+00 7.215377e+02 1.728540e+02 2.163791e-01 0.000000e+00 0.000000e+00 1.000000e+00 2.745884e-03
S_rect_03: 1.242000e+03 3.750000e+02
P_rect_03: 7.215377e+02 0.000000e+00 6.095593e+02 -3.395242e+02 0.000000e+00 7.215377e+02 1.728540e+02 2.199936e+00 0.000000e+00 0.000000e+00 1.000000e+00 2.729905e-03
"""
VELO_TO_CAM_2011_09_26 = """calib_time: 15-Mar-2012 11:37:16
R: 7.533745e-03 -9.999714e-01 -6.166020e-04 1.480249e-02 7.280733e-04 -9.998902e-01 9.998621e-01 7.523790e-03 1.480755e-02
T: -4.069766e-03 -7.631618e-02 -2.717806e-01
delta_f: 0.000000e+00 0.000000e+00
delta_c: 0.000000e+00 0.000000e+00
"""


def _data():
    return importlib.import_module("01_data")


@pytest.fixture
def kitti_calib(tmp_path):
    """A date folder holding the real 2011_09_26 calibration files."""
    folder = tmp_path / "2011_09_26"
    folder.mkdir()
    (folder / "calib_cam_to_cam.txt").write_text(CAM_TO_CAM_2011_09_26)
    (folder / "calib_velo_to_cam.txt").write_text(VELO_TO_CAM_2011_09_26)
    return folder


# ---------------------------------------------------------------------------------------------
# Calibration, intrinsics, projection
# ---------------------------------------------------------------------------------------------
def test_read_calib_file_real_numbers(kitti_calib):
    """Numeric keys parse to float arrays with KITTI's values; the date line is skipped."""
    data = _data()
    cam = data.read_calib_file(kitti_calib / "calib_cam_to_cam.txt")
    velo = data.read_calib_file(kitti_calib / "calib_velo_to_cam.txt")
    assert "calib_time" not in cam and "calib_time" not in velo
    np.testing.assert_allclose(cam["S_rect_02"], [1242, 375])
    P2 = cam["P_rect_02"].reshape(3, 4)
    assert P2[0, 0] == pytest.approx(721.5377) and P2[0, 3] == pytest.approx(44.85728)
    assert cam["P_rect_03"].reshape(3, 4)[0, 3] == pytest.approx(-339.5242)
    R = velo["R"].reshape(3, 3)
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-5)  # a rotation
    np.testing.assert_allclose(velo["T"], [-4.069766e-03, -7.631618e-02, -2.717806e-01])


def test_velo_to_image_matrix_is_the_documented_product(kitti_calib):
    """P_velo2im = P_rect_02 @ R_rect_00 @ [R|T], image size from S_rect_02 as (H, W)."""
    data = _data()
    P, size = data.velo_to_image_matrix(kitti_calib, cam=2)
    cam = data.read_calib_file(kitti_calib / "calib_cam_to_cam.txt")
    velo = data.read_calib_file(kitti_calib / "calib_velo_to_cam.txt")
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = velo["R"].reshape(3, 3), velo["T"]
    R_rect = np.eye(4)
    R_rect[:3, :3] = cam["R_rect_00"].reshape(3, 3)
    np.testing.assert_allclose(P[:3], cam["P_rect_02"].reshape(3, 4) @ R_rect @ T)
    assert size == (375, 1242)
    # A point 10 m straight ahead of the velodyne lands near the image centre, about 10 m deep.
    uv, depth = data.project_velo_to_image(np.array([[10.0, 0.0, 0.0, 0.5]]), P)
    assert 550 < uv[0, 0] < 700 and 150 < uv[0, 1] < 250 and depth[0] == pytest.approx(10.0, abs=0.3), (
        f"Exercise 1.2 project_velo_to_image: a point 10 m ahead lands at (u, v) = ({uv[0, 0]:.6g}, "
        f"{uv[0, 1]:.6g}) with depth {depth[0]:.6g}, expected u in (550, 700), v in (150, 250), depth "
        f"about 10. Check: u and v divided by the third coordinate? uv = (column, row)? depth = the third "
        f"coordinate, before any division?")


def test_project_velo_to_image_hand_computed():
    """Exercise 1.2: (1, 2, 4) through [[100,0,50,0],[0,100,20,0],[0,0,1,0]] -> (75, 70), depth 4.

    The 4th input column is reflectance (0.3 here) and must be treated as homogeneous 1; a 4x4 P
    gives the same answer as its 3x4 top; forgetting the division by depth gives (305, 280)."""
    data = _data()
    what = "Exercise 1.2 project_velo_to_image"
    P = np.array([[100.0, 0, 50, 5], [0, 100, 20, 0], [0, 0, 1, 0]])
    pts = np.array([[1.0, 2.0, 4.0, 0.3], [0.0, 0.0, 2.0, 0.9]])
    uv, depth = data.project_velo_to_image(pts, P)
    which = lambda i: f"{'u, the column' if i[1] == 0 else 'v, the row'} of point {i[0]}"  # noqa: E731
    assert_allclose_explained(uv, [[(100 + 200 + 5) / 4, 70.0], [(100 + 5) / 2, 20.0]], f"{what}: uv",
                              "u and v divided by the third homogeneous coordinate (without it (1, 2, 4) "
                              "lands at (305, 280))? the 4th column (reflectance) replaced by a 1? "
                              "uv = (column, row), not (row, column)?", names=("point", "uv"), where=which)
    assert_allclose_explained(depth, [4.0, 2.0], f"{what}: depth",
                              "depth = the third coordinate of P[:3] @ (x, y, z, 1), not divided by itself, "
                              "not the velodyne x?", names=("point",))
    P4 = np.vstack([P, [0, 0, 0, 1]])
    uv3, depth3 = data.project_velo_to_image(pts[:, :3], P4)
    four_by_four = ("a 4x4 P and [N, 3] points must give what its top 3x4 rows give: use P[:3] only and "
                    "append the homogeneous 1 to (x, y, z)?")
    assert_allclose_explained(uv3, uv, f"{what}: uv with a 4x4 P", four_by_four, names=("point", "uv"), where=which)
    assert_allclose_explained(depth3, depth, f"{what}: depth with a 4x4 P", four_by_four, names=("point",))


def test_scale_K_with_size():
    """Exercise 1.1: fx = 0.58 W, fy = 1.92 H, cx = W/2, cy = H/2; the input is not modified."""
    data = _data()
    what = "Exercise 1.1 scale_K"
    K_norm = data.normalised_K()
    before = K_norm.copy()
    K = data.scale_K(K_norm, 640, 192)
    assert_allclose_explained(K, [[0.58 * 640, 0, 320, 0], [0, 1.92 * 192, 96, 0], [0, 0, 1, 0], [0, 0, 0, 1]],
                              f"{what}(K_norm, 640, 192)",
                              "the first row (fx, cx) times the width 640 and the second (fy, cy) times the "
                              "height 192, not swapped? the whole row, cx and cy included? rows 3 and 4 "
                              "unchanged?", rtol=1e-6, names=("row", "col"))
    assert_allclose_explained(K_norm, before, f"{what}: K_norm after the call",
                              "scale a copy (np.array(K_norm, dtype=np.float32, copy=True)): the input must "
                              "not change", rtol=0, names=("row", "col"))
    assert K.shape == (4, 4), shape_message(K.shape, (4, 4), what, "return the whole [4, 4] matrix")
    # A point keeps its relative image position when the image size changes (width != height).
    X = np.array([1.0, -0.5, 7.0, 1.0])
    for w, h in [(416, 128), (1024, 320)]:
        p = data.scale_K(K_norm, w, h) @ X
        assert_allclose_explained([p[0] / p[2] / w, p[1] / p[2] / h], [(0.58 + 0.5 * 7) / 7, (-0.96 + 3.5) / 7],
                                  f"{what}(K_norm, {w}, {h}): (u / width, v / height) of a 3-D point",
                                  "a point keeps its place relative to the image size only if fx and cx scale "
                                  "with the width and fy and cy with the height (width != height here)?",
                                  rtol=1e-6, where=lambda i: "u / width" if i[0] == 0 else "v / height")


# ---------------------------------------------------------------------------------------------
# Velodyne ground truth
# ---------------------------------------------------------------------------------------------
def _generate_depth_map_oracle(P, height, width, velo, vel_depth):
    """Slow literal re-statement of Monodepth2's generate_depth_map (Counter and a loop)."""
    velo = velo.astype(np.float64).copy()
    velo[:, 3] = 1.0
    velo = velo[velo[:, 0] >= 0, :]
    pts = (P[:3] @ velo.T).T
    pts[:, :2] = pts[:, :2] / pts[:, 2][..., None]
    if vel_depth:
        pts[:, 2] = velo[:, 0]
    pts[:, 0] = np.round(pts[:, 0]) - 1
    pts[:, 1] = np.round(pts[:, 1]) - 1
    ok = (pts[:, 0] >= 0) & (pts[:, 1] >= 0) & (pts[:, 0] < width) & (pts[:, 1] < height)
    pts = pts[ok]
    depth = np.zeros((height, width))
    for x, y, z in pts:  # sequential writes: the last point wins, like numpy's fancy assignment
        depth[int(y), int(x)] = z
    inds = pts[:, 1] * (width - 1) + pts[:, 0] - 1
    for dd in [i for i, c in Counter(inds).items() if c > 1]:
        group = np.where(inds == dd)[0]
        depth[int(pts[group[0], 1]), int(pts[group[0], 0])] = pts[group, 2].min()
    depth[depth < 0] = 0
    return depth


@pytest.mark.parametrize("vel_depth", [False, True])
def test_velodyne_to_depth_matches_monodepth2_oracle(tmp_path, vel_depth):
    """Same map as the original on crowded points: duplicates, the (r, W-1)/(r+1, 0) index collision,
    points behind the sensor, out-of-image points and negative projected depths."""
    data = _data()
    height, width = 6, 9
    calib = tmp_path / "date"
    calib.mkdir()
    P = np.array([[4.0, 0, 5.0, 0.3], [0, 3.0, 3.5, 0], [0, 0, 1, -0.5]])
    (calib / "calib_cam_to_cam.txt").write_text(
        f"calib_time: x\nS_rect_02: {width} {height}\nR_rect_00: 1 0 0 0 1 0 0 0 1\n"
        f"P_rect_02: {' '.join(map(str, P.ravel()))}\n")
    (calib / "calib_velo_to_cam.txt").write_text("R: 0 -1 0 0 0 -1 1 0 0\nT: 0 0 0\n")
    rng = np.random.default_rng(3)
    velo = np.column_stack([rng.uniform(-1, 6, 600), rng.uniform(-7, 7, 600), rng.uniform(-3, 3, 600),
                            rng.uniform(0, 1, 600)]).astype(np.float32)
    # Two points on pixels (r, W-1) and (r+1, 0), which the original's index formula merges.
    velo = np.vstack([velo, [[2.0, -2.0 * (width + 1 - 0.3 - 5.0) / 4.0 + 0.0, 0.0, 0.5]]]).astype(np.float32)
    path = tmp_path / "scan.bin"
    velo.tofile(path)
    T = np.zeros((4, 4))
    T[0, 1], T[1, 2], T[2, 0], T[3, 3] = -1, -1, 1, 1
    expected = _generate_depth_map_oracle(np.vstack([P, [0, 0, 0, 1]]) @ T, height, width, velo, vel_depth)
    got = data.velodyne_to_depth(calib, path, cam=2, vel_depth=vel_depth)
    assert got.dtype == np.float32 and got.shape == (height, width)
    assert_allclose_explained(got, expected.astype(np.float32), "velodyne_to_depth: depth map",
                              "it projects with your Exercise 1.2 project_velo_to_image: does "
                              "test_project_velo_to_image_hand_computed pass?", rtol=1e-6, names=("row", "col"))
    assert (expected > 0).sum() > 20


def test_read_depth_png_and_export(tiny_world, tmp_path):
    """uint16/256 decoding; the .npz export loads without pickle, one key per line, equal to the source."""
    data = _data()
    path = tmp_path / "d.png"
    Image.fromarray(np.array([[0, 256, 65535]], dtype=np.uint16)).save(path)
    np.testing.assert_allclose(data.read_depth_png(path), [[0.0, 1.0, 65535 / 256]])
    lines = data.read_split(kitti_files.get_split_file("synthetic", "test", data_path=tiny_world))[:3]
    out = data.export_gt_depth(tiny_world, lines, tmp_path / "gt.npz")
    with np.load(out, allow_pickle=False) as npz:
        assert len(npz.files) == 3
        for folder, frame, side in lines:
            png = tiny_world / folder / "proj_depth" / "groundtruth" / "image_02" / f"{frame:010d}.png"
            np.testing.assert_array_equal(npz[data.gt_depth_key(folder, frame, side)], data.read_depth_png(png))
    out = data.export_gt_depth(tiny_world, lines[:1], tmp_path / "velo.npz", source="velodyne")
    folder, frame, _ = lines[0]
    expected = data.velodyne_to_depth(tiny_world / folder.split("/")[0],
                                      tiny_world / folder / "velodyne_points" / "data" / f"{frame:010d}.bin",
                                      vel_depth=True)
    with np.load(out, allow_pickle=False) as npz:
        np.testing.assert_array_equal(npz[data.gt_depth_key(*lines[0])], expected)


# ---------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------
def test_read_split_formats_and_bad_line(tmp_path):
    """Zero-padded frames and sides l/r/2/3 parse; a bad line is a ValueError naming file and line;
    a missing or empty file is a DataError naming it."""
    data = _data()
    path = tmp_path / "s.txt"
    path.write_text("2011_09_26/d_0002_sync 0000000069 l\n\n2011_09_26/d_0002_sync 5 3\nx 7 2\n")
    assert data.read_split(path) == [("2011_09_26/d_0002_sync", 69, "l"), ("2011_09_26/d_0002_sync", 5, "r"),
                                      ("x", 7, "l")]
    path.write_text("a 1 l\na b l\n")
    with pytest.raises(ValueError, match=r"s\.txt:2"):
        data.read_split(path)
    path.write_text("a 1 x\n")
    with pytest.raises(data.DataError, match=r"s\.txt:1"):
        data.read_split(path)
    with pytest.raises(data.DataError, match="not found"):
        data.read_split(tmp_path / "none.txt")
    path.write_text("\n  \n")                         # a list without a single line is refused too
    with pytest.raises(data.DataError, match=r"s\.txt holds no split line"):
        data.read_split(path)


def test_hsv_round_trip_matches_colorsys():
    """rgb_to_hsv agrees with the standard library's colorsys; hsv_to_rgb inverts it; the
    branch-free shift_hue equals the HSV round trip with the hue moved, for any turn."""
    rgb = np.random.default_rng(0).random((1, 3, 7, 5)).astype(np.float32)
    rgb[0, :, 0, 0] = 0.5  # a grey pixel (hue undefined -> 0)
    rgb[0, :, 1] = np.array([[0.2, 0.2, 0.6], [0.6, 0.6, 0.2], [0.6, 0.2, 0.6], [0.6, 0.6, 0.6], [0.0, 0.0, 0.0]]).T
    # row 1: two equal channels (ties between hexagon sectors), grey and black
    hsv = jitter.rgb_to_hsv(rgb)
    for i in range(7):
        for j in range(5):
            expected = colorsys.rgb_to_hsv(*rgb[0, :, i, j].tolist())
            np.testing.assert_allclose(hsv[0, :, i, j], expected, atol=1e-5)
    np.testing.assert_allclose(jitter.hsv_to_rgb(hsv), rgb, atol=1e-5)
    for turn in (0.07, -0.1, 0.5, -0.5, 0.33, 1.7, 0.0):
        shifted = hsv.copy()
        shifted[:, 0] = np.remainder(shifted[:, 0] + turn, 1.0)
        np.testing.assert_allclose(jitter.shift_hue(rgb, turn), jitter.hsv_to_rgb(shifted), atol=1e-5)


@pytest.mark.parametrize("b, c, s, h", [(1.1, 0.9, 1.2, 0.07), (0.85, 1.15, 0.8, -0.09)])
def test_color_jitter_against_pixel_formulas(b, c, s, h):
    """Brightness, contrast (to the frame's mean grey), saturation (to the pixel's grey) and hue, in
    that order, against colorsys pixel by pixel; each frame of a stack uses its own mean grey.
    Factors above and below 1 (the clamps are skipped where a factor <= 1 cannot leave [0, 1])."""
    img = np.random.default_rng(1).random((2, 3, 4, 4)).astype(np.float32)
    out = jitter.color_jitter(torch.from_numpy(img), b, c, s, h)
    grey = lambda t: 0.299 * t[0:1] + 0.587 * t[1:2] + 0.114 * t[2:3]  # noqa: E731
    for f in range(2):
        x = np.clip(img[f] * b, 0, 1)
        x = np.clip(c * x + (1 - c) * grey(x).mean(), 0, 1)
        x = np.clip(s * x + (1 - s) * grey(x), 0, 1)
        for i in range(4):
            for j in range(4):
                hh, ss, vv = colorsys.rgb_to_hsv(*x[:, i, j].tolist())
                expected = colorsys.hsv_to_rgb((hh + h) % 1.0, ss, vv)
                np.testing.assert_allclose(out[f, :, i, j], expected, atol=1e-5)
    np.testing.assert_allclose(jitter.color_jitter(img, 1.0, 1.0, 1.0, 0.0), img, atol=1e-6)


def _write_tree(root, frames, images=None, size=(40, 16)):
    """A minimal KITTI-layout drive: image_02/03 jpgs (the same picture unless `images` given)."""
    folder = "2011_09_26/2011_09_26_drive_0001_sync"
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    for cam in ("image_02", "image_03"):
        (root / folder / cam / "data").mkdir(parents=True, exist_ok=True)
        for f in frames:
            pixels = picture if images is None else images[f]
            Image.fromarray(pixels).save(root / folder / cam / "data" / f"{f:010d}.jpg", quality=95)
    return folder


def test_jitter_identical_across_frames(tmp_path):
    """One jitter per sample: identical input frames stay identical in color_aug, and differ from color."""
    data = _data()
    folder = _write_tree(tmp_path, range(3))
    ds = data.KittiRaw(tmp_path, [(folder, 1, "l")], 16, 40, frame_ids=(0, -1, 1, "s"), is_train=True)
    ds.flip_prob, ds.jitter_prob = 0.0, 1.0
    changed = 0
    for epoch in range(5):
        ds.set_epoch(epoch)
        sample = ds[0]
        ref = sample["color_aug"][0]
        for fid in (-1, 1, "s"):
            assert torch.equal(sample["color"][fid], sample["color"][0])
            assert torch.equal(sample["color_aug"][fid], ref)
        changed += not torch.equal(ref, sample["color"][0])
    assert changed >= 4
    ds.is_train = False  # evaluation: no augmentation, color_aug is color
    sample = ds[0]
    assert all(sample["color_aug"][f] is sample["color"][f] for f in (0, -1, 1, "s"))


def test_color_aug_is_color_jitter_of_color_rounded(tiny_world):
    """A jittered color_aug is color_jitter (with the sample's draws from (seed, epoch, index)) of the
    uint8 frames, rounded to the nearest uint8; every frame gets the same draw; uint8 input gives the
    float input's result."""
    data = _data()
    lines = data.read_split(kitti_files.get_split_file("synthetic", "train", data_path=tiny_world))[:3]
    ds = data.KittiRaw(tiny_world, lines, 32, 104, is_train=True, seed=7)
    ds.flip_prob, ds.jitter_prob = 0.0, 1.0
    ds.set_epoch(2)
    for index in range(3):
        sample = ds[index]
        draws = np.random.default_rng([7, 2, index]).random(6)
        b, c, s = 0.8 + 0.4 * draws[2:5]
        h = 0.2 * draws[5] - 0.1
        color = np.stack([sample["color"][f].numpy() for f in (0, -1, 1)])  # (3, 3, H, W) uint8
        jittered = jitter.color_jitter(color, b, c, s, h)
        np.testing.assert_allclose(jittered, jitter.color_jitter(color / np.float32(255), b, c, s, h), atol=1e-6)
        expected = np.floor(jittered * np.float32(255) + np.float32(0.5)).astype(np.uint8)
        got = np.stack([sample["color_aug"][f].numpy() for f in (0, -1, 1)])
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, expected)


def test_collate_puts_the_images_of_a_batch_in_one_block(tiny_world):
    """collate gives default_collate's batch, but every image is a slice of one tensor (one
    shared-memory block per batch in a worker); also through a DataLoader worker."""
    data = _data()
    lines = data.read_split(kitti_files.get_split_file("synthetic", "train", data_path=tiny_world))[:3]
    ds = data.KittiRaw(tiny_world, lines, 32, 104, frame_ids=(0, -1, 1, "s"), is_train=True)
    samples = [ds[i] for i in range(3)]
    reference = torch.utils.data.default_collate(samples)
    batch = data.collate(samples)
    assert set(batch) == set(reference)
    for key in reference:
        if key in data.IMAGE_KEYS:
            for fid in (0, -1, 1, "s"):
                assert batch[key][fid].shape == (3, 3, 32, 104) and torch.equal(batch[key][fid], reference[key][fid])
        else:
            assert torch.equal(batch[key], reference[key])
    pointers = {batch[k][f].untyped_storage().data_ptr() for k in data.IMAGE_KEYS for f in batch[k]}
    assert len(pointers) == 1
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=1, collate_fn=data.collate)
    through_worker = next(iter(loader))
    for fid in (0, -1, 1, "s"):
        assert torch.equal(through_worker["color"][fid], reference["color"][fid])
        assert torch.equal(through_worker["color_aug"][fid], reference["color_aug"][fid])


def test_augmentation_is_a_function_of_seed_epoch_index(tiny_world):
    """Draws come from (seed, epoch, index) only: the global RNGs neither matter nor change; another
    epoch or seed gives other draws."""
    data = _data()
    lines = data.read_split(kitti_files.get_split_file("synthetic", "train", data_path=tiny_world))[:4]
    ds = data.KittiRaw(tiny_world, lines, 32, 104, is_train=True, seed=3)
    torch.manual_seed(0)
    np.random.seed(0)
    first = [ds[i]["color_aug"][0] for i in range(4)]
    torch.manual_seed(1)
    np.random.seed(1)
    again = [ds[i]["color_aug"][0] for i in range(4)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    state = torch.get_rng_state()
    [ds[i] for i in range(4)]
    assert torch.equal(torch.get_rng_state(), state)
    ds.set_epoch(1)
    other_epoch = [ds[i]["color_aug"][0] for i in range(4)]
    other_seed = [data.KittiRaw(tiny_world, lines, 32, 104, is_train=True, seed=4)[i]["color_aug"][0] for i in range(4)]
    assert any(not torch.equal(a, b) for a, b in zip(first, other_epoch))
    assert any(not torch.equal(a, b) for a, b in zip(first, other_seed))


def test_flip_consistency(tiny_world):
    """A flipped sample is the mirror image of the unflipped one in every frame and in depth_gt;
    K is unchanged and stereo_T's baseline sign flips (and depends on the side)."""
    data = _data()
    lines = data.read_split(kitti_files.get_split_file("synthetic", "train", data_path=tiny_world))
    lines = [l for l in lines if l[1] == 3]  # one frame, both sides
    ds = data.KittiRaw(tiny_world, lines, 32, 104, frame_ids=(0, -1, 1, "s"), is_train=True, load_depth=False)
    ds.jitter_prob = 0.0
    side = {l[2]: i for i, l in enumerate(ds.lines)}
    ds.flip_prob = 0.0
    plain = {s: ds[i] for s, i in side.items()}
    ds.flip_prob = 1.0
    flipped = {s: ds[i] for s, i in side.items()}
    for s in "lr":
        for fid in (0, -1, 1, "s"):
            assert torch.equal(flipped[s]["color"][fid], plain[s]["color"][fid].flip(-1))
            assert torch.equal(flipped[s]["color_aug"][fid], plain[s]["color_aug"][fid].flip(-1))
        assert torch.equal(flipped[s]["K"], plain[s]["K"])
        assert flipped[s]["stereo_T"][0, 3] == -plain[s]["stereo_T"][0, 3]
    assert plain["l"]["stereo_T"][0, 3] == pytest.approx(-0.1) and plain["r"]["stereo_T"][0, 3] == pytest.approx(0.1)
    val = data.read_split(kitti_files.get_split_file("synthetic", "val", data_path=tiny_world))[:1]
    ds = data.KittiRaw(tiny_world, val, 32, 104, is_train=True, load_depth=True)
    ds.jitter_prob, ds.flip_prob = 0.0, 0.0
    a = ds[0]
    ds.flip_prob = 1.0
    b = ds[0]
    assert a["depth_gt"].shape == (1, 64, 208) and torch.equal(b["depth_gt"], a["depth_gt"].flip(-1))
    np.testing.assert_allclose(a["K"].numpy(), data.scale_K(data.normalised_K(), 104, 32))
    np.testing.assert_allclose((a["K"] @ a["inv_K"]).numpy(), np.eye(4), atol=1e-5)


def test_resize_is_pil_lanczos(tiny_world):
    """Frames are resized with PIL LANCZOS to (H, W), kept uint8; images_to_float scales them to [0, 1]."""
    data = _data()
    line = data.read_split(kitti_files.get_split_file("synthetic", "test", data_path=tiny_world))[0]
    ds = data.KittiRaw(tiny_world, [line], 40, 96)
    sample = ds[0]
    with Image.open(ds.image_path(*line)) as im:
        expected = np.asarray(im.convert("RGB").resize((96, 40), Image.LANCZOS))
    got = sample["color"][0]
    assert got.dtype == torch.uint8 and got.shape == (3, 40, 96)
    np.testing.assert_array_equal(got.permute(1, 2, 0).numpy(), expected)
    floats = data.images_to_float(sample)
    assert floats["K"] is sample["K"] and floats["color"][0].dtype == torch.float32
    np.testing.assert_allclose(floats["color_aug"][0].permute(1, 2, 0).numpy(), expected / 255.0, atol=1e-6)
    assert data.image_to_float(floats["color"][0]) is floats["color"][0]  # float images pass unchanged


def test_frame_cache_gives_the_same_samples_and_keeps_its_budget(tiny_world, monkeypatch):
    """With a frame cache every sample (flip and jitter included, two epochs) equals the uncached
    one, each frame file is decoded once, and a small budget keeps only what fits."""
    data = _data()
    lines = data.read_split(kitti_files.get_split_file("synthetic", "train", data_path=tiny_world))[:6]
    kwargs = dict(frame_ids=(0, -1, 1, "s"), is_train=True, seed=5)
    plain = data.KittiRaw(tiny_world, lines, 32, 104, **kwargs)
    cached = data.KittiRaw(tiny_world, lines, 32, 104, cache_mb=64, **kwargs)
    decoded = Counter()
    real_load = data.load_rgb
    monkeypatch.setattr(data, "load_rgb", lambda path, size=None: decoded.update([path]) or real_load(path, size))
    for epoch in (0, 1):
        for i in range(len(lines)):
            a, b = plain[(epoch, i)], cached[(epoch, i)]
            for key in ("color", "color_aug"):
                for fid in kwargs["frame_ids"]:
                    assert torch.equal(a[key][fid], b[key][fid]), (epoch, i, key, fid)
    frames = len(cached.frame_cache.frames)
    assert frames == len({p for i in range(len(lines)) for p in cached.frame_paths(*cached.lines[i])})
    assert cached.frame_cache.used == frames * 32 * 104 * 3
    assert sum(decoded.values()) == 2 * 4 * len(lines) + frames   # the uncached set decodes every time
    small = data.KittiRaw(tiny_world, lines, 32, 104, cache_mb=2.5 * 32 * 104 * 3 / 2 ** 20, **kwargs)
    small[0]
    assert len(small.frame_cache.frames) == 2 and small.frame_cache.used <= small.frame_cache.budget
    with pytest.raises(ValueError, match="-1"):
        data.KittiRaw(tiny_world, lines, 32, 104, cache_mb=-1)


def test_missing_inputs_found_at_construction(tiny_world, tmp_path):
    """Missing data folder / neighbour frame: DataError with the path (and the split file and its
    line number when known); drop_missing counts them."""
    data = _data()
    with pytest.raises(data.DataError, match="data folder not found"):
        data.KittiRaw(tmp_path / "nowhere", [], 32, 104)
    folder = data.read_split(kitti_files.get_split_file("synthetic", "train", data_path=tiny_world))[0][0]
    lines = [(folder, 0, "l"), (folder, 3, "l"), (folder, 7, "r")]  # 0 and 7 lack a neighbour
    with pytest.raises(data.DataError, match=r"0000000008\.jpg|-?0000000-01"):
        data.KittiRaw(tiny_world, lines[1:], 32, 104)
    with pytest.raises(data.DataError, match="split line 1"):
        data.KittiRaw(tiny_world, lines, 32, 104)
    listed = tmp_path / "mine.txt"                        # with its file: the file's own line number
    listed.write_text(f"\n{folder} 3 l\n\n{folder} 7 r\n")
    with pytest.raises(data.DataError, match=r"line 4 of .*mine\.txt"):
        data.KittiRaw(tiny_world, data.read_split(listed), 32, 104, split_file=listed)
    ds = data.KittiRaw(tiny_world, lines, 32, 104, drop_missing=True)
    assert ds.lines == [(folder, 3, "l")] and ds.dropped == 2
    with pytest.raises(data.DataError, match="image_02"):
        data.KittiRaw(tiny_world, [(folder, 3, "l")], 32, 104, img_ext=".png")


def test_corrupt_image_is_one_line_through_workers(tmp_path):
    """A corrupt jpg raises DataError naming the file, also out of a DataLoader worker, in one line."""
    data = _data()
    folder = _write_tree(tmp_path, range(3))
    bad = tmp_path / folder / "image_02" / "data" / f"{2:010d}.jpg"
    bad.write_bytes(b"\xff\xd8 this is not a jpeg")
    ds = data.KittiRaw(tmp_path, [(folder, 1, "l")], 16, 40)
    with pytest.raises(data.DataError, match=str(bad.name)):
        ds[0]
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=1)
    with pytest.raises(data.DataError) as err:
        next(iter(loader))
    assert "\n" not in str(err.value) and bad.name in str(err.value) and "Traceback" not in str(err.value)
    again = pickle.loads(pickle.dumps(data.DataError("corrupt image x.jpg")))
    assert isinstance(again, data.DataError) and str(again) == "corrupt image x.jpg"


def test_calibration_lacking_a_key(kitti_calib, tmp_path):
    """velodyne_to_depth names the calibration file and the missing key."""
    data = _data()
    text = (kitti_calib / "calib_cam_to_cam.txt").read_text()
    (kitti_calib / "calib_cam_to_cam.txt").write_text(
        "\n".join(l for l in text.splitlines() if not l.startswith("R_rect_00")))
    np.zeros((3, 4), dtype=np.float32).tofile(tmp_path / "scan.bin")
    with pytest.raises(data.DataError, match=r"calib_cam_to_cam\.txt lacks key R_rect_00"):
        data.velodyne_to_depth(kitti_calib, tmp_path / "scan.bin")
    with pytest.raises(data.DataError, match="velodyne file not found"):
        (kitti_calib / "calib_cam_to_cam.txt").write_text(text)
        data.velodyne_to_depth(kitti_calib, tmp_path / "none.bin")


def test_cli_bad_input_is_one_error_line(tmp_path, capsys):
    """The command line turns bad input (here an output folder that is a file) into one `error: ...`
    line naming the path and exit status 2, without a traceback."""
    data = _data()
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert data.main(["--out", str(blocker / "demo.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "a_file" in err and err.count("\n") == 1


@dataclass
class _FlagsConfig:
    num_layers: int = 18  # ResNet depth (a % sign survives argparse)
    use_stereo: bool = False  # add the stereo frame
    pretrained: Optional[str] = None
    model: dict = field(default_factory=dict)  # not a flag


def test_add_dataclass_flags_spellings_bools_help_and_only_given():
    """Both spellings, --flag/--no-flag bools, help text for every flag (comment or field name, then
    the default), choices, preset defaults, and only_given parsing to None for flags not given."""
    parser = argparse.ArgumentParser()
    cli.add_dataclass_flags(parser, _FlagsConfig, skip=("model",))
    assert vars(parser.parse_args([])) == {"num_layers": 18, "use_stereo": False, "pretrained": None}
    args = parser.parse_args(["--num-layers", "34", "--use_stereo", "--pretrained", "x.pth"])
    assert (args.num_layers, args.use_stereo, args.pretrained) == (34, True, "x.pth")
    assert parser.parse_args(["--use-stereo", "--no-use_stereo"]).use_stereo is False
    helps = {a.dest: a.help % {} for a in parser._actions if a.dest != "help"}
    assert helps == {"num_layers": "ResNet depth (a % sign survives argparse) (default: 18)",
                     "use_stereo": "add the stereo frame (default: False)",
                     "pretrained": "pretrained (default: None)"}
    given = argparse.ArgumentParser()
    cli.add_dataclass_flags(given, _FlagsConfig, defaults={"num_layers": 50, "use_stereo": True},
                             choices={"num_layers": [18, 34, 50], "bins": ["sql"]}, skip=("model",),
                             only_given=True)
    assert vars(given.parse_args([])) == {"num_layers": None, "use_stereo": None, "pretrained": None}
    assert given.parse_args(["--no-use-stereo"]).use_stereo is False
    text = " ".join(given.format_help().split())  # the help as one line
    assert "(a % sign survives argparse) (default: 50)" in text and "frame (default: True)" in text
    assert "--no-use-stereo" in text
    with pytest.raises(SystemExit):
        given.parse_args(["--num_layers", "20"])
