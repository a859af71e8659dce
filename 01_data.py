"""Step 1, the data: KITTI raw reader, velodyne ground truth, splits, and a synthetic mini-KITTI.

What this file adds (SPEC.md sections 3, 4 and 6):
  * calibration parsing and the normalised intrinsics K of Monodepth2/SQLDepth, scaled to any
    training size (`scale_K`, Exercise 1.1);
  * velodyne ground truth exactly as Monodepth2's `kitti_utils.generate_depth_map` builds it
    (`project_velo_to_image`, Exercise 1.2, and `velodyne_to_depth`), the improved-GT png reader and
    an .npz export of evaluation ground truth;
  * split lists: parsing, any list a user brings (used as given), download of the standard lists
    with a SHA-256 check of what was downloaded (unique temporary names, so concurrent downloads
    cannot break each other), and the train/eval drive-overlap check (an older official SQLDepth
    train list leaked 451 of the 697 Eigen test frames through shared drives);
  * `KittiRaw`, the torch Dataset the trainer (06) and the evaluator (07) read: frames 0/-1/+1 and the
    stereo partner "s", PIL LANCZOS resize, flip and colour jitter drawn once per sample, uint8
    images batched by `collate` and turned into floats by `images_to_float` where they are used;
  * `make_synthetic_kitti`, a procedural street world rendered by vectorised ray casting and written
    in the KITTI raw layout, so the default run of the project exercises the real data path without
    downloading 175 GB.

Where we differ from Monodepth2's loader (which SQLDepth reuses): colour jitter has a fixed order
(brightness, contrast, saturation, hue; torchvision draws a random order) and is computed in numpy
on floats, then rounded once to uint8 (Monodepth2's PIL jitter rounds after every step);
images are mirrored after resizing (the two commute); depth_gt keeps its stored size; the
velodyne map is returned as float32. The synthetic calibration writes the principal point + 1
(KITTI's MATLAB pixel convention), so lidar points project back onto the pixels they came from.

Uses: numpy, torch, pillow (matplotlib for the demo figure). Used by 03 (its demo), 05, 06, 07.
Demo:  python 01_data.py                       (tiny world, sample schema, runs/demo_01_data.png)
       python 01_data.py --render_bench        (synthetic frames/s on one core)
       python 01_data.py --bench DIR           (loader samples/s against the bare decode + resize bound)
       python 01_data.py --make DIR            (the default synthetic data set, about 2,000 frames)
Tests: tests/test_01_data.py
"""
import argparse
import ctypes
import hashlib
import inspect
import json
import multiprocessing
import os
import re
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------
class DataError(Exception):
    """Bad input data (missing folder/frame, corrupt file, bad calibration): one line naming the file.

    The constructor takes a single string so the error pickles across DataLoader workers. When the
    DataLoader re-raises it in the main process it passes "Caught DataError in DataLoader worker...
    Original Traceback ..." as the message; we keep only our own one-line message from that text,
    so the trainer prints one clear line instead of a worker traceback.
    """

    def __init__(self, message):
        message = str(message)
        if "Original Traceback" in message:
            found = re.findall(r"DataError: (.*)", message)
            if found:
                message = found[-1].strip()
        super().__init__(message)


class SplitOverlapError(DataError):
    """The training split shares drives with the evaluation split (train/test leakage)."""


class SplitLineError(DataError, ValueError):
    """A split file line that is not `folder frame side` (also a ValueError, as the contract says)."""


# ----------------------------------------------------------------------------------------------
# Calibration and intrinsics
# ----------------------------------------------------------------------------------------------
def read_calib_file(path):
    """KITTI calibration text file -> {key: float64 array}; keys whose values are not numbers are skipped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"calibration file not found: {path}")
    data = {}
    for line in path.read_text().splitlines():
        if ":" not in line:
            continue
        key, value = line.split(":", 1)
        try:
            data[key.strip()] = np.array([float(x) for x in value.split()], dtype=np.float64)
        except ValueError:
            continue  # e.g. "calib_time: 09-Jan-2012 13:57:47"
    return data


def _calib_value(calib, key, size, path):
    """calib[key] reshaped to `size` numbers, or a DataError naming the file and the key."""
    if key not in calib or calib[key].size != size:
        raise DataError(f"calibration file {path} lacks key {key} ({size} numbers)")
    return calib[key]


def normalised_K():
    """KITTI intrinsics divided by the image size (Monodepth2/SQLDepth), 4x4 float32."""
    return np.array([[0.58, 0, 0.5, 0],
                     [0, 1.92, 0.5, 0],
                     [0, 0, 1, 0],
                     [0, 0, 0, 1]], dtype=np.float32)


def scale_K(K_norm, width, height):
    """Exercise 1.1: scale normalised intrinsics to an image of width x height pixels.

    K_norm is a 4x4 array whose first row (fx, 0, cx, 0) is in units of the image width and whose
    second row (0, fy, cy, 0) is in units of the image height. Return a new 4x4 float32 array
    (do not modify K_norm) in pixels, e.g. fx = 0.58 * width, cy = 0.5 * height.
    Hint: multiply the whole first row by width and the whole second row by height.
    """
    K = np.array(K_norm, dtype=np.float32, copy=True)  # (4, 4)
    K[0, :] *= width
    K[1, :] *= height
    return K


# ----------------------------------------------------------------------------------------------
# Velodyne ground truth (monodepth2's generate_depth_map, reproduced exactly)
# ----------------------------------------------------------------------------------------------
def load_velodyne(path):
    """KITTI velodyne .bin -> float32 [N, 4] (x forward, y left, z up, reflectance)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"velodyne file not found: {path}")
    raw = np.fromfile(path, dtype=np.float32)
    if raw.size % 4:
        raise DataError(f"corrupt velodyne file (size not a multiple of 4 floats): {path}")
    return raw.reshape(-1, 4)


def project_velo_to_image(points_velo, P_velo2im):
    """Exercise 1.2: project velodyne points into the image with a 3x4 (or 4x4) projection matrix.

    points_velo: [N, 3] (x, y, z) or [N, 4] whose 4th column is ignored (reflectance) and treated as
    the homogeneous 1. P_velo2im: [3, 4] or [4, 4] (only its first 3 rows are used).
    Returns uv [N, 2] float pixel coordinates (u = column, v = row) and depth [N], the third
    homogeneous coordinate (camera z for a rectified camera).
    Hint: append a column of ones, multiply by P[:3].T, then divide the first two columns by the third.
    """
    pts = np.asarray(points_velo, dtype=np.float64)[:, :3]
    homog = np.concatenate([pts, np.ones((len(pts), 1))], axis=1)  # (N, 4)
    proj = homog @ np.asarray(P_velo2im, dtype=np.float64)[:3].T  # (N, 3)
    depth = proj[:, 2]
    uv = proj[:, :2] / depth[:, None]
    return uv, depth


def velo_to_image_matrix(calib_dir, cam=2):
    """P_rect_0cam @ R_rect_00 @ [R|T]velo->cam (4x4) and the image size (H, W) from S_rect_02."""
    calib_dir = Path(calib_dir)
    cam2cam_path = calib_dir / "calib_cam_to_cam.txt"
    velo2cam_path = calib_dir / "calib_velo_to_cam.txt"
    cam2cam = read_calib_file(cam2cam_path)
    velo2cam = read_calib_file(velo2cam_path)
    T = np.eye(4)
    T[:3, :3] = _calib_value(velo2cam, "R", 9, velo2cam_path).reshape(3, 3)
    T[:3, 3] = _calib_value(velo2cam, "T", 3, velo2cam_path)
    R_rect = np.eye(4)
    R_rect[:3, :3] = _calib_value(cam2cam, "R_rect_00", 9, cam2cam_path).reshape(3, 3)
    P_rect = np.eye(4)
    P_rect[:3] = _calib_value(cam2cam, f"P_rect_0{cam}", 12, cam2cam_path).reshape(3, 4)
    # Monodepth2 takes the image size from S_rect_02 for both cameras; so do we.
    width, height = _calib_value(cam2cam, "S_rect_02", 2, cam2cam_path).astype(np.int64)
    return P_rect @ R_rect @ T, (int(height), int(width))


def velodyne_to_depth(calib_dir, velo_path, cam=2, vel_depth=False):
    """Sparse depth map (H, W) float32 from a velodyne scan, as Monodepth2's generate_depth_map.

    Steps: keep points with x >= 0 (in front of the sensor, an approximation of "in front of the
    image plane"), project with P_rect @ R_rect_00 @ velo_to_cam, depth = projected z (or the
    velodyne x when vel_depth, the legacy Eigen choice), column/row = round(coord) - 1 (KITTI's
    calibration uses MATLAB's 1-based pixels), keep points inside the image, write depths, then
    resolve pixels hit more than once by the nearest depth, and set negative depths to 0.
    """
    P, (height, width) = velo_to_image_matrix(calib_dir, cam)
    velo = load_velodyne(velo_path)
    velo = velo[velo[:, 0] >= 0]
    uv, depth = project_velo_to_image(velo, P)  # (N, 2), (N,)
    if vel_depth:
        depth = velo[:, 0].astype(np.float64)
    col = np.round(uv[:, 0]) - 1
    row = np.round(uv[:, 1]) - 1
    inside = (col >= 0) & (row >= 0) & (col < width) & (row < height)
    col, row, depth = col[inside].astype(np.int64), row[inside].astype(np.int64), depth[inside]
    out = np.zeros((height, width), dtype=np.float64)
    out[row, col] = depth  # repeated pixels: numpy keeps the last write, as in the original
    # Duplicates. Deviation from a true linear index, reproduced on purpose: the original groups
    # points by row * (W - 1) + col - 1, which also merges pixel (r, W-1) with pixel (r+1, 0); each
    # group writes its minimum depth at the pixel of its first point. Keeping this odd formula keeps
    # our ground truth (and so our metrics) identical to the published evaluation code's.
    group = row * (width - 1) + col - 1
    _, first, inverse, counts = np.unique(group, return_index=True, return_inverse=True,
                                          return_counts=True)
    group_min = np.full(len(first), np.inf)
    np.minimum.at(group_min, inverse, depth)
    dup = counts > 1
    out[row[first[dup]], col[first[dup]]] = group_min[dup]
    out[out < 0] = 0
    return out.astype(np.float32)


def read_depth_png(path):
    """KITTI improved ground truth png (uint16, metres * 256, 0 = no data) -> (H, W) float32 metres."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            arr = np.asarray(im, dtype=np.uint16) if im.mode != "I" else np.asarray(im).astype(np.uint16)
    except FileNotFoundError:
        raise DataError(f"depth png not found: {path}") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(f"cannot read depth png {path}: {err}") from None
    return arr.astype(np.float32) / 256.0


def write_depth_png(path, depth):
    """(H, W) metres -> uint16 png of round(depth * 256) (the KITTI improved-GT format)."""
    value = np.clip(np.round(np.asarray(depth, dtype=np.float64) * 256.0), 0, 65535).astype(np.uint16)
    Image.fromarray(value).save(path, compress_level=1)


def gt_png_path(data_path, folder, frame, side):
    """The improved (KITTI) or dense (synthetic) ground-truth png of one image:
    <folder>/proj_depth/groundtruth/image_02|03/<frame>.png by side."""
    cam = SIDE_TO_CAM[SIDE_NAMES[str(side)]]
    return Path(data_path) / folder / "proj_depth" / "groundtruth" / f"image_0{cam}" / f"{int(frame):010d}.png"


def velodyne_path(data_path, folder, frame):
    """The velodyne scan of one frame: <folder>/velodyne_points/data/<frame>.bin."""
    return Path(data_path) / folder / "velodyne_points" / "data" / f"{int(frame):010d}.bin"


def gt_depth_key(folder, frame, side):
    """The .npz key of one image's ground truth (npz keys cannot hold '/')."""
    return f"{folder.replace('/', '__')}__{int(frame):010d}__{side}"


def export_gt_depth(data_path, split_lines, out_path, source="auto"):
    """Write the ground truth of every split line into an .npz (one float32 array per image, no pickle).

    source: "velodyne" (Monodepth2's Eigen GT: camera 2, velodyne x as depth), "png" (the improved
    ground truth proj_depth/groundtruth/image_0{2,3} by side, e.g. eigen_benchmark, synthetic) or
    "auto" (png for a synthetic tree, velodyne otherwise). Keys come from `gt_depth_key`.
    """
    data_path = Path(data_path)
    if source == "auto":
        source = "png" if (data_path / SYNTH_MARKER).is_file() else "velodyne"
    maps = {}
    for folder, frame, side in split_lines:
        if source == "png":
            depth = read_depth_png(gt_png_path(data_path, folder, frame, side))
        elif source == "velodyne":
            depth = velodyne_to_depth(data_path / folder.split("/")[0], velodyne_path(data_path, folder, frame),
                                      cam=2, vel_depth=True)
        else:
            raise ValueError(f"export_gt_depth: unknown source {source!r} (velodyne, png, auto)")
        maps[gt_depth_key(folder, frame, side)] = depth.astype(np.float32)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out_path, **maps)
    return out_path


# ----------------------------------------------------------------------------------------------
# Split lists
# ----------------------------------------------------------------------------------------------
SIDE_NAMES = {"l": "l", "r": "r", "2": "l", "3": "r"}
SIDE_TO_CAM = {"l": 2, "r": 3}
SPLIT_URL_BASE = "https://raw.githubusercontent.com/nianticlabs/monodepth2/master/splits"
SPLIT_SHA256 = {  # the standard lists (eigen test 697, eigen_benchmark test 652, eigen_zhou 39,810 / 4,424)
    ("eigen", "test"): "e226d4ca16e0e6e9695435014347dcf973588531330536fd8a68d298ef091a6b",
    ("eigen_benchmark", "test"): "d56e5e509e6960a01fb93795f85028ac6e4a82ad40e64b6e968988e4db95b9be",
    ("eigen_zhou", "train"): "00173a231642151c4693274e701ddd4cae7916520a757c7a94eae8e1173f7b0c",
    ("eigen_zhou", "val"): "64a868b8d2c66c3979a2d74c22ea2e9146850d5b9f5786ed8e5f92201ba1ad04",
}
SPLIT_LINES = {("eigen", "test"): 697, ("eigen_benchmark", "test"): 652,  # lines of each standard list,
               ("eigen_zhou", "train"): 39810, ("eigen_zhou", "val"): 4424}  # for the "not standard" note
DOWNLOAD_MARK = ".sha256"  # NAME/KIND_files.txt.sha256: written next to a list this program downloaded


def read_split(path):
    """Split file -> [(folder, frame, side)] with side "l"/"r" (accepts 2/3 and zero-padded frames).

    Blank lines are skipped; a malformed line, or a file without a single split line, is one
    error naming the file (and the line number)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"split file not found: {path}")
    lines = []
    for number, text in enumerate(path.read_text().splitlines(), start=1):
        parts = text.split()
        if not parts:
            continue
        if len(parts) != 3 or not parts[1].isdigit() or parts[2] not in SIDE_NAMES:
            raise SplitLineError(f"{path}:{number}: bad split line {text.strip()!r} "
                                 f"(expected 'folder frame side' with side l/r/2/3)")
        lines.append((parts[0], int(parts[1]), SIDE_NAMES[parts[2]]))
    if not lines:
        raise DataError(f"split file {path} holds no split line (expected 'folder frame side' per line)")
    return lines


def split_file_line_number(path, index):
    """The line number in file `path` of its index-th split line (1-based; blank lines skipped), or
    None when the file is not there or is shorter (for error messages only)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    filled = [number for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    return filled[index - 1] if 0 < index <= len(filled) else None


def write_split(path, lines):
    """[(folder, frame, side)] -> split file in Monodepth2's format (`folder frame side`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{folder} {frame} {side}\n" for folder, frame, side in lines))


def default_split_dir():
    """Cache folder of downloaded split lists: $SQLDEPTH_SPLIT_DIR or ~/.cache/sqldepth/splits."""
    return Path(os.environ.get("SQLDEPTH_SPLIT_DIR", Path.home() / ".cache" / "sqldepth" / "splits"))


def write_atomic(path, payload):
    """Write bytes to `path` through a temporary file of a name no other writer uses, then rename.

    Several processes (torchrun ranks, two runs sharing a cache) may fetch the same file at once;
    with one shared temporary name one of them could rename it while another was still writing,
    and the second rename would fail. With a unique name per writer every rename succeeds, and a
    reader sees either no file or a complete one (the last rename wins; the contents are equal).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.part")
    try:
        with open(tmp, "xb") as f:  # "x": never share a file with another writer
            f.write(payload)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def get_split_file(name, kind, split_dir=None, *, data_path=None, base_url=None, timeout=20.0, log=print):
    """Path of split list `name`/`kind`_files.txt in split_dir (default `default_split_dir()`).

    Any name works: SPLIT_DIR/NAME/KIND_files.txt is used when it is there (a custom split is a
    folder NAME with train_files.txt and val_files.txt). A missing standard list (SPLIT_SHA256) is
    downloaded from base_url (default SPLIT_URL_BASE) and SHA-256 checked.
    Which lists are checked against the known sums, as one rule: a list this program downloaded has
    a sidecar KIND_files.txt.sha256 that the download writes; such a list must still have its known
    sum (a changed or corrupted download is refused). A list without that sidecar was put there by
    the user (in --split_dir, $SQLDEPTH_SPLIT_DIR or the cache by hand): it is used as given, and
    when it carries a standard name but other contents, `log` gets one informative line.
    name "synthetic" is data_path/splits/synthetic/<kind>_files.txt (written by make_synthetic_kitti).
    """
    if name == "synthetic":
        if data_path is None:
            raise DataError("split 'synthetic' needs the data folder (data_path)")
        path = Path(data_path) / "splits" / "synthetic" / f"{kind}_files.txt"
        if not path.is_file():
            raise DataError(f"split file not found: {path} (generate the world with make_synthetic_kitti)")
        return path
    expected = SPLIT_SHA256.get((name, kind))
    path = Path(split_dir if split_dir is not None else default_split_dir()) / name / f"{kind}_files.txt"
    mark = path.with_name(path.name + DOWNLOAD_MARK)
    if path.is_file():
        got = _sha256(path)
        if expected is None or got == expected:
            return path
        if mark.is_file():  # our own download, changed since: never train on a silently altered list
            raise DataError(f"split file {path} has SHA-256 {got}, expected {expected}: "
                            f"delete it to download it again (or delete {mark.name} if the list is yours)")
        if log is not None:
            count = sum(1 for line in path.read_text().splitlines() if line.strip())
            standard = SPLIT_LINES.get((name, kind))
            log(f"note: {path} differs from the standard {name}/{kind} list"
                f"{f' ({standard:,} lines)' if standard else ''}; yours has {count:,} lines and is used as given")
        return path
    if expected is None:
        known = ", ".join(f"{n}/{k}" for n, k in SPLIT_SHA256)
        raise DataError(f"split file not found: {path} ({name}/{kind} is not a list this program downloads "
                        f"({known}); a split NAME is NAME/train_files.txt + val_files.txt in --split_dir)")
    url = f"{(base_url or SPLIT_URL_BASE).rstrip('/')}/{name}/{kind}_files.txt"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            payload = response.read()
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise DataError(f"cannot download {url} ({reason}); put {name}/{kind}_files.txt in a folder "
                        f"and pass --split_dir FOLDER") from None
    got = hashlib.sha256(payload).hexdigest()
    if got != expected:
        raise DataError(f"downloaded {url} has SHA-256 {got}, expected {expected}")
    write_atomic(path, payload)  # the list first: a list without its mark only counts as the user's
    write_atomic(mark, f"{got}  {url}\n".encode())
    return path


def check_split_overlap(train_lines, eval_lines):
    """Drives present in both splits -> [(drive, n_train_lines, n_eval_lines)], sorted by drive."""
    train_count = Counter(folder for folder, _, _ in train_lines)
    eval_count = Counter(folder for folder, _, _ in eval_lines)
    return [(drive, train_count[drive], eval_count[drive]) for drive in sorted(set(train_count) & set(eval_count))]


def describe_overlap(shared, num_eval_lines, against="the evaluation split"):
    """'N drive(s) with <against> (M of its T test frames): drive (train a, eval b), ...' for a
    check_split_overlap result (M = the test frames on shared drives, the ones a leak affects)."""
    frames = sum(n for _, _, n in shared)
    listing = ", ".join(f"{d} (train {a}, eval {b})" for d, a, b in shared)
    return f"{len(shared)} drive(s) with {against} ({frames} of its {num_eval_lines} test frames): {listing}"


def require_disjoint_splits(train_lines, eval_lines, allow_overlap=False, what="training split",
                            against="the evaluation split"):
    """Raise SplitOverlapError naming the shared drives (with line counts) and the number of test
    frames on them, unless allow_overlap; returns the check_split_overlap result."""
    shared = check_split_overlap(train_lines, eval_lines)
    if shared and not allow_overlap:
        raise SplitOverlapError(f"{what} shares {describe_overlap(shared, len(eval_lines), against)} "
                                f"(train/test leakage); pass --allow_split_overlap to train anyway")
    return shared


# ----------------------------------------------------------------------------------------------
# Colour augmentation (numpy, no torchvision; numpy because it stays single-threaded, so a
# DataLoader without workers does not fight the training loop for cores)
# ----------------------------------------------------------------------------------------------
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601 grey weights, as PIL and torchvision
LUMA_ROW = np.array(LUMA, dtype=np.float32)
HUE_OFFSETS = np.array([5.0, 3.0, 1.0], dtype=np.float32).reshape(1, 3, 1, 1)  # r, g, b on the hexagon
HUE_CENTRES = np.array([-3.0, 1.0, -1.0], dtype=np.float32).reshape(1, 3, 1, 1)  # HUE_OFFSETS - 2, mod 6


def rgb_to_hsv(rgb):
    """[..., 3, H, W] RGB in [0, 1] -> HSV with hue in [0, 1) (the hexcone model of colorsys)."""
    rgb = np.asarray(rgb, dtype=np.float32)
    r, g, b = rgb[..., 0, :, :], rgb[..., 1, :, :], rgb[..., 2, :, :]
    maxc = np.maximum(np.maximum(r, g), b)
    delta = maxc - np.minimum(np.minimum(r, g), b)
    safe = np.where(delta > 0, delta, 1.0)
    pos = np.where(maxc == r, (g - b) / safe, np.where(maxc == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    hue = np.where(delta > 0, np.remainder(pos / 6.0, 1.0), 0.0)
    sat = np.where(maxc > 0, delta / np.where(maxc > 0, maxc, 1.0), 0.0)
    return np.stack([hue, sat, maxc], axis=-3).astype(np.float32)


def hsv_to_rgb(hsv):
    """[..., 3, H, W] HSV (hue in [0, 1)) -> RGB: channel n of (5, 3, 1) is v - v*s*clamp(min(k, 4-k), 0, 1)
    with k = (n + 6h) mod 6."""
    hsv = np.asarray(hsv, dtype=np.float32)
    hue, sat, val = hsv[..., 0:1, :, :], hsv[..., 1:2, :, :], hsv[..., 2:3, :, :]
    k = np.remainder(HUE_OFFSETS.reshape(3, 1, 1) + 6.0 * hue, 6.0)  # (..., 3, H, W)
    return val * (1.0 - sat * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0))


def shift_hue(rgb, hue):
    """Rotate the HSV hue of [F, 3, H, W] RGB by `hue` turns (saturation and value kept) -> new array.

    The maths of hsv_to_rgb(rgb_to_hsv(x) with h + hue), rewritten without branches because this is
    the loader's most expensive step (numpy's masked selects cost ~30x an add). In HSV terms
    v = max(r, g, b), v*s = max - min = d, and 6h = pos, the position on the colour hexagon,
    computed with 0/1 masks instead of selects. hsv_to_rgb's clamp(min(k, 4 - k), 0, 1) equals
    clamp(2 - dist(k - 2), 0, 1), dist being the distance to 0 around the 6-periodic circle; for
    |y| <= 9 that distance is |3 - ||y| - 3||, which needs no modulo. With the shift wrapped into
    [-3, 3) and the channel centres k - 2 taken as (-3, 1, -1), y stays within [-7, 9).
    """
    rgb = np.asarray(rgb, dtype=np.float32)
    r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    hi = np.maximum(r, g)
    np.maximum(hi, b, out=hi)
    d = np.minimum(r, g)
    np.minimum(d, b, out=d)
    np.subtract(hi, d, out=d)  # (F, H, W) = v * s
    red = r == hi  # which channel is the largest, ties resolved r, g, b as colorsys does
    green = g == hi
    green &= ~red
    blue = ~(red | green)
    pos = np.subtract(g, b)  # red sector: (g - b) / d in [-1, 1]
    pos *= red
    part = np.subtract(b, r)  # green sector: 2 + (b - r) / d
    part *= green
    pos += part
    np.subtract(r, g, out=part)  # blue sector: 4 + (r - g) / d
    part *= blue
    pos += part
    np.add(d, np.float32(1e-12), out=part)  # grey pixels (d = 0) have pos = 0 and keep v
    np.reciprocal(part, out=part)
    pos *= part
    pos += green  # the sector bases 2 and 4 (a grey pixel counts as red)
    pos += green
    pos += np.float32(4.0) * blue
    shift = np.float32((6.0 * hue + 3.0) % 6.0 - 3.0)  # whole turns do nothing
    y = pos[:, None] + (HUE_CENTRES + shift)  # (F, 3, H, W)
    np.abs(y, out=y)  # dist = |3 - ||y| - 3||
    y -= np.float32(3.0)
    np.abs(y, out=y)
    np.subtract(np.float32(3.0), y, out=y)
    np.abs(y, out=y)
    np.subtract(np.float32(2.0), y, out=y)
    np.clip(y, 0.0, 1.0, out=y)
    y *= d[:, None]
    np.subtract(hi[:, None], y, out=y)
    return y


def _grey(x):
    """[F, 3, H, W] -> [F, 1, H, W] grey value."""
    frames = x.shape[0]
    return np.matmul(LUMA_ROW, x.reshape(frames, 3, -1)).reshape(frames, 1, *x.shape[2:])


def color_jitter(imgs, brightness, contrast, saturation, hue):
    """One colour jitter applied identically to a stack of frames [F, 3, H, W] -> new float32 array in [0, 1].

    Fixed order brightness -> contrast -> saturation -> hue (torchvision draws a random order per
    call; we fix it, a documented deviation). Brightness scales, contrast blends with each frame's
    mean grey value, saturation with each pixel's grey value (clamping to [0, 1] after each, as
    torchvision; a factor <= 1 blends within [0, 1], so its clamp is skipped), hue rotates the HSV
    hue. Accepts float frames in [0, 1] or uint8 frames (numpy arrays or CPU tensors); returns a
    C-contiguous numpy array.
    """
    imgs = np.asarray(imgs)
    scale = brightness / 255.0 if imgs.dtype == np.uint8 else brightness
    x = np.multiply(imgs, np.float32(scale), dtype=np.float32, order="C")
    if brightness > 1.0:
        np.clip(x, 0.0, 1.0, out=x)
    frames = x.shape[0]
    mean = x.reshape(frames, 3, -1).mean(axis=2, dtype=np.float64) @ np.array(LUMA)  # (F,) mean grey
    x *= np.float32(contrast)
    x += ((1.0 - contrast) * mean).astype(np.float32)[:, None, None, None]
    if contrast > 1.0:
        np.clip(x, 0.0, 1.0, out=x)
    grey = _grey(x)
    grey *= np.float32(1.0 - saturation)
    x *= np.float32(saturation)
    x += grey
    if saturation > 1.0:
        np.clip(x, 0.0, 1.0, out=x)
    return shift_hue(x, hue) if hue != 0.0 else x


# ----------------------------------------------------------------------------------------------
# The dataset
# ----------------------------------------------------------------------------------------------
_MALLOC_TUNED_PID = None


def retain_freed_memory():
    """Ask glibc's malloc to keep freed memory for reuse instead of returning it to the system.

    A training sample allocates a few MB of fresh float arrays (frames, jitter temporaries) and frees
    them again. By default glibc hands such blocks straight back to the kernel, so every sample
    page-faults its memory anew: about 2,000 faults and more than half of the loading time of a
    416x128 sample on our test machine. Keeping blocks up to 32 MB on the heap (and up to 128 MB of
    free heap before trimming) removes those faults. Once per process (DataLoader workers included);
    does nothing where the C library is not glibc.
    """
    global _MALLOC_TUNED_PID
    if _MALLOC_TUNED_PID == os.getpid():
        return
    _MALLOC_TUNED_PID = os.getpid()
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-1, 128 << 20)  # M_TRIM_THRESHOLD: free heap kept before trimming
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: blocks below this come from the reusable heap
    except (OSError, AttributeError):
        pass


def load_rgb(path, size=None):
    """Image file -> uint8 array (H, W, 3), resized with LANCZOS to size=(width, height) if given."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size is not None and im.size != tuple(size):
                im = im.resize(tuple(size), Image.LANCZOS)
            return np.asarray(im)
    except FileNotFoundError:
        raise DataError(f"image not found: {path}") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(f"corrupt image {path}: {err}") from None


class KittiRaw(torch.utils.data.Dataset):
    """KITTI raw (or the synthetic world) as training/evaluation samples; see the contract in the docs.

    Each item: {"color": {fid: [3,H,W]}, "color_aug": {fid: [3,H,W]}, "K", "inv_K": [4,4],
    "stereo_T": [4,4] (when "s" in frame_ids), "depth_gt": [1,Hgt,Wgt] (when load_depth), "index"}.
    The images are uint8, as decoded (the jittered copies rounded back to uint8, as Monodepth2's
    PIL-based jitter leaves them): a quarter of the bytes of float images through the DataLoader's
    shared memory and on to the GPU. `images_to_float` turns them into float32 in [0, 1] where they
    are used (06 and 07 do it after moving a batch to the device); `collate` batches them.
    `flip_prob` and `jitter_prob` (0.5 each, training only) may be changed, e.g. by tests; the draws
    come from np.random.default_rng([seed, epoch, index]) (see set_epoch).
    depth_gt is returned at its stored size (not resized) and mirrored with the images.
    split_file (optional): the file the lines came from, named with its line number when a frame is missing.
    """

    def __init__(self, data_path, lines, height, width, frame_ids=(0, -1, 1), is_train=False,
                 img_ext=".jpg", load_depth=False, drop_missing=False, seed=0, split_file=None):
        self.data_path = Path(data_path)
        if not self.data_path.is_dir():
            raise DataError(f"data folder not found: {self.data_path}")
        self.height, self.width = int(height), int(width)
        self.frame_ids = tuple(frame_ids)
        self.is_train = is_train
        self.img_ext = img_ext
        self.load_depth = load_depth
        self.synthetic = (self.data_path / SYNTH_MARKER).is_file()
        self.flip_prob = 0.5
        self.jitter_prob = 0.5
        self.seed, self.epoch = int(seed), 0
        K = scale_K(normalised_K(), self.width, self.height)  # (4, 4) at the training size
        self.K = torch.from_numpy(K)
        self.inv_K = torch.from_numpy(np.linalg.pinv(K).astype(np.float32))
        listing = {}  # folder -> set of file names, one os.listdir per folder instead of a stat per file

        def exists(path):
            folder = path.parent
            if folder not in listing:
                listing[folder] = set(os.listdir(folder)) if folder.is_dir() else set()
            return path.name in listing[folder]

        kept, self.dropped = [], 0
        for number, (folder, frame, side) in enumerate(lines, start=1):
            missing = next((p for p in self._needed_files(folder, frame, side) if not exists(p)), None)
            if missing is None:
                kept.append((folder, int(frame), side))
            elif drop_missing:
                self.dropped += 1
            else:  # name the list's file and line when known: the user can open it there
                line = split_file_line_number(split_file, number) if split_file else None
                where = f"line {line} of {split_file}" if line else f"split line {number}"
                raise DataError(f"missing file {missing} ({where}: {folder} {frame} {side}); "
                                f"use drop_missing / --drop_missing to skip such lines")
        self.lines = kept

    def image_path(self, folder, frame, side):
        """Path of one camera image (side "l" -> image_02, "r" -> image_03)."""
        return self.data_path / folder / f"image_0{SIDE_TO_CAM[side]}" / "data" / f"{frame:010d}{self.img_ext}"

    def depth_source(self, folder, frame, side):
        """Synthetic: the dense proj_depth png; KITTI: the velodyne scan (projected on load)."""
        if self.synthetic:
            return gt_png_path(self.data_path, folder, frame, side)
        return velodyne_path(self.data_path, folder, frame)

    def frame_paths(self, folder, frame, side):
        """Image path of every frame id of one split line: temporal neighbours on the same camera,
        "s" = the same instant on the other camera."""
        other = {"l": "r", "r": "l"}[side]
        return [self.image_path(folder, frame, other) if fid == "s" else self.image_path(folder, frame + int(fid), side)
                for fid in self.frame_ids]

    def decode_frames(self, folder, frame, side):
        """Every frame of one split line decoded and resized to the training size -> (F, H, W, 3) uint8."""
        retain_freed_memory()
        size = (self.width, self.height)
        return np.stack([load_rgb(path, size) for path in self.frame_paths(folder, frame, side)])

    def _needed_files(self, folder, frame, side):
        yield from self.frame_paths(folder, frame, side)
        if self.load_depth:
            yield self.depth_source(folder, frame, side)
            if not self.synthetic:
                yield self.data_path / folder.split("/")[0] / "calib_cam_to_cam.txt"

    def set_epoch(self, epoch):
        """Select the epoch whose augmentation draws __getitem__ makes (call before each epoch)."""
        self.epoch = int(epoch)

    def __len__(self):
        return len(self.lines)

    def __getitem__(self, index):
        if isinstance(index, tuple):
            # (epoch, index) from 06's batch sampler: persistent DataLoader workers hold their own
            # copy of this dataset, so the epoch travels with every index instead of set_epoch().
            epoch, index = index
            self.set_epoch(epoch)
        folder, frame, side = self.lines[index]
        # Every draw comes from (seed, epoch, index), never from a global RNG: a sample is the same
        # whichever worker loads it and whether or not training was resumed.
        draws = np.random.default_rng([self.seed, self.epoch, index]).random(6) if self.is_train else np.ones(6)
        do_flip = bool(draws[0] < self.flip_prob)
        do_jitter = bool(draws[1] < self.jitter_prob)
        frames = self.decode_frames(folder, frame, side)  # (F, H, W, 3)
        if do_flip:
            frames = frames[:, :, ::-1]  # all frames together (resize and mirror commute)
        frames = np.ascontiguousarray(frames.transpose(0, 3, 1, 2))  # (F, 3, H, W) uint8
        color = {fid: torch.from_numpy(frames[i]) for i, fid in enumerate(self.frame_ids)}
        color_aug = dict(color)  # the same tensors unless jittered
        if do_jitter:
            # One draw per sample, applied to every frame (SPEC.md section 3).
            b, c, s = 0.8 + 0.4 * draws[2:5]  # brightness, contrast, saturation in [0.8, 1.2]
            h = 0.2 * draws[5] - 0.1  # hue in [-0.1, 0.1]
            aug = color_jitter(frames, b, c, s, h)  # float32 in [0, 1]
            aug *= np.float32(255.0)
            aug += np.float32(0.5)  # round to nearest (aug >= 0)
            aug = aug.astype(np.uint8)  # (F, 3, H, W)
            color_aug = {fid: torch.from_numpy(aug[i]) for i, fid in enumerate(self.frame_ids)}
        inputs = {"color": color, "color_aug": color_aug,
                  "K": self.K.clone(), "inv_K": self.inv_K.clone(), "index": index}
        if "s" in self.frame_ids:
            stereo_T = torch.eye(4)
            # The partner camera sits 0.54 m to one side; 0.1 is Monodepth2's scaled baseline. The
            # sign flips with the side and again when the images are mirrored.
            stereo_T[0, 3] = (-1.0 if side == "l" else 1.0) * (-1.0 if do_flip else 1.0) * 0.1
            inputs["stereo_T"] = stereo_T
        if self.load_depth:
            if self.synthetic:
                depth = read_depth_png(self.depth_source(folder, frame, side))
            else:  # camera z as depth, as Monodepth2's loader; the Eigen GT export uses velodyne x
                depth = velodyne_to_depth(self.data_path / folder.split("/")[0],
                                          self.depth_source(folder, frame, side), cam=SIDE_TO_CAM[side])
            if do_flip:
                depth = depth[:, ::-1]
            inputs["depth_gt"] = torch.from_numpy(np.ascontiguousarray(depth))[None]  # (1, Hgt, Wgt)
        return inputs


IMAGE_KEYS = ("color", "color_aug")


def collate(samples):
    """KittiRaw samples -> one batch, as torch's default_collate, except that all images of the
    batch are stacked into ONE tensor [2F*B, 3, H, W] whose slices fill the color and color_aug
    dicts. A DataLoader worker hands each tensor of a batch to the main process as its own
    shared-memory block, at a cost per block; one block instead of 2F makes a batch much cheaper
    to pass (see the loader benchmark)."""
    keys = [(key, fid) for key in IMAGE_KEYS for fid in samples[0][key]]
    images = torch.utils.data.default_collate([s[key][fid] for key, fid in keys for s in samples])
    images = images.view(len(keys), len(samples), *images.shape[1:])  # (2F, B, 3, H, W)
    batch = torch.utils.data.default_collate([{k: v for k, v in s.items() if k not in IMAGE_KEYS}
                                              for s in samples])
    for j, (key, fid) in enumerate(keys):
        batch.setdefault(key, {})[fid] = images[j]
    return batch


def image_to_float(image):
    """uint8 image tensor (any shape, any device) -> float32 in [0, 1]; float images pass unchanged."""
    return image.float().div_(255.0) if image.dtype == torch.uint8 else image


def images_to_float(inputs):
    """A sample or batch with its "color" / "color_aug" images as float32 in [0, 1], on the images'
    own device -> new dict (the other entries shared)."""
    return {**inputs, **{key: {fid: image_to_float(img) for fid, img in inputs[key].items()}
                         for key in IMAGE_KEYS if key in inputs}}


# ----------------------------------------------------------------------------------------------
# The synthetic mini-KITTI world
# ----------------------------------------------------------------------------------------------
# World frame: x right, y DOWN, z along the street (right-handed, like the camera frame), ground at
# y = 0, so heights are negative y. Camera 2 rides 1.65 m above the road; camera 3 is 0.54 m to
# its right. Facts from KITTI 2011_09_26 written into the synthetic calibration (the real
# velodyne-to-camera extrinsics, so the synthetic scans look like real ones in the velodyne frame):
VELO_TO_CAM_R = np.array([[7.533745e-03, -9.999714e-01, -6.166020e-04],
                          [1.480249e-02, 7.280733e-04, -9.998902e-01],
                          [9.998621e-01, 7.523790e-03, 1.480755e-02]])
VELO_TO_CAM_T = np.array([-4.069766e-03, -7.631618e-02, -2.717806e-01])
R_RECT_00 = np.array([[9.999239e-01, 9.837760e-03, -7.445048e-03],
                      [-9.869795e-03, 9.999421e-01, -4.278459e-03],
                      [7.402527e-03, 4.351614e-03, 9.999631e-01]])
SYNTH_DATE = "2000_01_01"
SYNTH_MARKER = "synthetic_world.json"
SYNTH_VERSION = 3  # bump when the rendered content changes: older trees are rebuilt
CAMERA_HEIGHT = 1.65
STEREO_BASELINE = 0.54
MAX_GT_DEPTH = 80.0  # beyond this the renderer shows haze/sky and the ground truth is 0
HAZE_START = 55.0
LIDAR_ELEVATIONS = np.linspace(2.0, -24.8, 64)  # HDL-64E scan lines, degrees above the horizon

# Materials (index into the shading code) and the thin structures the thin_mask marks.
SKY, ROAD, SIDEWALK, YARD, FACADE, CAR, GLASS, TYRE, POLE, TRUNK, CROWN, SIGN = range(12)
THIN_MATERIALS = (POLE, TRUNK)
SUN = np.array([0.35, -0.85, -0.4]) / np.linalg.norm([0.35, -0.85, -0.4])  # towards the sun (y down)
NOISE_FLAT = np.random.default_rng(20240101).uniform(-1.0, 1.0, 256 * 256).astype(np.float32)  # 256x256 lattice


class _Street:
    """Axis-aligned boxes of one drive's street (built from a seeded generator) plus street constants."""

    def __init__(self, rng, z_start, z_end):
        self.road_half = rng.uniform(5.0, 7.0)  # road half width (m): two lanes + parking lanes
        self.side_w = rng.uniform(1.6, 3.2)  # sidewalk width
        self.road_tone = rng.uniform(0.28, 0.4)
        self.yard_color = np.array([rng.uniform(0.2, 0.35), rng.uniform(0.3, 0.4), rng.uniform(0.12, 0.25)])
        self.dashes = rng.random() < 0.8  # dashed centre line
        bmin, bmax, mat, color, param = [], [], [], [], []
        self.side_streets = []  # (side sign, z0, z1): gaps between buildings paved like the road

        def box(x0, x1, h0, h1, z0, z1, material, rgb, p=(0.0, 0.0, 0.0, 0.0)):
            bmin.append((min(x0, x1), -h1, min(z0, z1)))
            bmax.append((max(x0, x1), -h0, max(z0, z1)))
            mat.append(material)
            color.append(rgb)
            param.append(p)

        facade = self.road_half + self.side_w
        for s in (-1.0, 1.0):
            box(s * self.road_half, s * facade, 0.0, 0.15, z_start, z_end, SIDEWALK, (0.55, 0.53, 0.5))
            gaps, z = [], z_start
            while z < z_end:  # buildings with set-backs, and side streets (gaps)
                if z > z_start + 15 and rng.random() < 0.18:
                    width = rng.uniform(8.0, 15.0)
                    gaps.append((z - 2.0, z + width + 2.0))
                    self.side_streets.append((s, z, z + width))
                    z += width
                    continue
                length = rng.uniform(8.0, 30.0)
                setback = 0.0 if rng.random() < 0.5 else rng.uniform(0.5, 5.0)
                tone = rng.uniform(0.35, 0.8)
                rgb = np.clip(tone * np.array([1.0, rng.uniform(0.8, 1.0), rng.uniform(0.6, 1.0)])
                              [rng.permutation(3)], 0, 1)
                windows = (rng.uniform(2.2, 3.8), rng.uniform(2.8, 3.6), rng.uniform(0.35, 0.6), rng.uniform(0.4, 0.6))
                box(s * (facade + setback), s * (facade + setback + 12.0), 0.0, rng.uniform(5.0, 22.0),
                    z, z + length, FACADE, rgb, windows)
                z += length
            z = z_start
            while z < z_end:  # a far row seen through the side streets
                length = rng.uniform(15.0, 40.0)
                dist = facade + rng.uniform(25.0, 50.0)
                rgb = np.clip(rng.uniform(0.35, 0.7) * np.array([1.0, 0.95, 0.85])[rng.permutation(3)], 0, 1)
                box(s * dist, s * (dist + 10.0), 0.0, rng.uniform(8.0, 30.0), z, z + length, FACADE, rgb,
                    (rng.uniform(2.5, 4.0), rng.uniform(3.0, 3.6), 0.5, 0.5))
                z += length
            z = z_start + rng.uniform(0.0, 5.0)
            while z < z_end:  # parked cars with gaps between them (packed cars read as one wall)
                length, width = rng.uniform(3.8, 4.8), rng.uniform(1.65, 1.9)
                if any(a < z + length and z < b for a, b in gaps):
                    z += 3.0
                    continue
                if rng.random() < 0.85:
                    x_out = s * (self.road_half - rng.uniform(0.15, 0.45))
                    x_in = x_out - s * width
                    rgb = np.clip(rng.uniform(0.22, 0.9) * np.array([1.0, rng.uniform(0.3, 1.0), rng.uniform(0.2, 1.0)])
                                  [rng.permutation(3)], 0.03, 1)
                    bottom, top, roof = rng.uniform(0.28, 0.35), rng.uniform(0.9, 1.05), rng.uniform(1.38, 1.6)
                    front, back = (rng.uniform(0.9, 1.3), rng.uniform(0.5, 0.9))[:: 1 if rng.random() < 0.5 else -1]
                    box(x_in + s * 0.1, x_out - s * 0.1, 0.0, bottom, z + 0.4, z + length - 0.4, TYRE, (0.05, 0.05, 0.05))
                    box(x_in, x_out, bottom, top, z, z + length, CAR, rgb)
                    box(x_in + s * 0.12, x_out - s * 0.12, top, roof, z + back, z + length - front, GLASS,
                        (0.17, 0.2, 0.25))
                z += length + (rng.uniform(0.6, 2.5) if rng.random() < 0.65 else rng.uniform(4.0, 14.0))
            z = z_start + rng.uniform(0.0, 10.0)
            while z < z_end:  # poles (some with a sign) near the curb
                x = s * (self.road_half + rng.uniform(0.3, 0.7))
                w = rng.uniform(0.1, 0.2)
                box(x - w / 2, x + w / 2, 0.0, rng.uniform(3.5, 8.0), z, z + w, POLE, (0.45, 0.45, 0.48))
                if rng.random() < 0.35:
                    sw, sh, y0 = rng.uniform(0.6, 0.9), rng.uniform(0.6, 0.9), rng.uniform(2.2, 3.0)
                    rgb = [(0.1, 0.25, 0.6), (0.7, 0.1, 0.1), (0.85, 0.85, 0.8), (0.9, 0.7, 0.1)][rng.integers(4)]
                    box(x - s * sw, x + s * 0.05, y0, y0 + sh, z - 0.04, z, SIGN, rgb)
                z += rng.uniform(6.0, 25.0)
            z = z_start + rng.uniform(0.0, 10.0)
            while z < z_end:  # trees: trunk + crown at the back of the sidewalk
                if rng.random() < 0.7:
                    x = s * (facade - rng.uniform(0.4, 0.9))
                    w, h = rng.uniform(0.25, 0.45), rng.uniform(2.2, 3.5)
                    box(x - w / 2, x + w / 2, 0.0, h, z - w / 2, z + w / 2, TRUNK, (0.3, 0.22, 0.15))
                    cw = rng.uniform(2.0, 3.5)
                    tint = rng.uniform(0.8, 1.2)
                    box(x - cw / 2, x + cw / 2, h - 0.3, h + rng.uniform(2.0, 3.5), z - cw / 2, z + cw / 2, CROWN,
                        (0.18 * tint, 0.32, 0.12 * tint))
                z += rng.uniform(8.0, 25.0)
        self.bmin = np.array(bmin, dtype=np.float64)  # (K, 3)
        self.bmax = np.array(bmax, dtype=np.float64)
        self.mat = np.array(mat, dtype=np.int64)  # (K,)
        self.color = np.array(color, dtype=np.float32)  # (K, 3)
        self.param = np.array(param, dtype=np.float32)  # (K, 4)


@lru_cache(maxsize=8)
def _camera_rays(height, width):
    """Ray directions (H*W, 3) in the camera frame with z = 1 (so the ray parameter is the z-depth)."""
    K = normalised_K() * np.array([[width], [height], [1], [1]], dtype=np.float32)  # (4, 4) in pixels
    d = np.ones((height, width, 3), dtype=np.float32)
    d[..., 0] = ((np.arange(width) - K[0, 2]) / K[0, 0])[None, :]
    d[..., 1] = ((np.arange(height) - K[1, 2]) / K[1, 1])[:, None]
    return d.reshape(-1, 3), float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])


def _value_noise(u, v):
    """Smooth value noise in [-1, 1] on a unit lattice, periodic over 256 cells."""
    fu, fv = np.floor(u), np.floor(v)
    a, b = u - fu, v - fv
    a = a * a * (3.0 - 2.0 * a)
    b = b * b * (3.0 - 2.0 * b)
    i, j = (fu.astype(np.int32) & 255) * 256, fv.astype(np.int32) & 255  # flat index = 256 i + j
    i1, j1 = (i + 256) & 65535, (j + 1) & 255
    n00, n10, n01, n11 = NOISE_FLAT[i + j], NOISE_FLAT[i1 + j], NOISE_FLAT[i + j1], NOISE_FLAT[i1 + j1]
    return n00 + a * (n10 - n00) + b * (n01 - n00 + a * (n11 - n01 - n10 + n00))


def _fbm(u, v, fp, octaves, offset=0.0, stretch=1.0):
    """Band-limited fractal noise: octave (wavelength, amplitude) fades out from 4 to 2 pixel footprints.

    This is the anti-aliasing of the renderer: detail finer than a pixel is faded to its mean (0)
    instead of being supersampled, so textures do not shimmer from frame to frame.
    """
    total = np.zeros_like(u)
    for k, (lam, amp) in enumerate(octaves):
        weight = np.clip(lam / fp * 0.5 - 1.0, 0.0, 1.0)
        if not weight.any():
            continue
        total += amp * weight * _value_noise(u / lam + offset + 37.1 * k, v / (lam * stretch) + 0.5 * offset)
    return total


def _pulse(x, period, start, end, width):
    """Box-filtered periodic pulse: fraction of [x - w/2, x + w/2] (in periods) inside [start, end) of a period."""
    def integral(y):
        return np.floor(y) * (end - start) + np.clip(y - np.floor(y) - start, 0.0, end - start)
    w = np.maximum(width / period, 1e-4)
    y = x / period
    return (integral(y + w / 2) - integral(y - w / 2)) / w


def _band(x, lo, hi, width):
    """Box-filtered indicator of lo <= x < hi (non-periodic), filter width `width`."""
    w = np.maximum(width, 1e-4)
    return np.clip((np.minimum(x + w / 2, hi) - np.maximum(x - w / 2, lo)) / w, 0.0, 1.0)


def _albedo(street, mat, k, P, axis, fp):
    """Surface colour (n, 3) of pixels of one material: world-fixed procedural textures."""
    x, y, z = P[:, 0], P[:, 1], P[:, 2]
    u = np.where(axis == 0, z, x)  # horizontal coordinate on the face
    v = np.where(axis == 1, z, y)  # second coordinate (height on walls, along-street on the ground)
    if mat == ROAD:
        n = _fbm(x, z, fp, [(8.0, 0.15), (2.0, 0.15), (0.5, 0.18), (0.12, 0.2), (0.03, 0.2)])
        col = (street.road_tone * (1.0 + n))[:, None] * np.array([1.0, 1.0, 1.04], dtype=np.float32)
        paint = _band(np.abs(x), street.road_half - 0.4, street.road_half - 0.28, fp)
        centre = _band(x, -0.075, 0.075, fp)
        if street.dashes:
            centre = centre * _pulse(z, 9.0, 0.0, 0.35, fp)
        paint = np.maximum(paint, centre)[:, None]
        return col * (1 - paint) + 0.85 * paint
    if mat == SIDEWALK:
        n = _fbm(u, v, fp, [(2.0, 0.08), (0.5, 0.1), (0.12, 0.1), (0.03, 0.08)], offset=11.0)
        joints = np.where(axis == 1, np.maximum(_pulse(x, 0.6, 0.0, 0.05, fp), _pulse(z, 0.6, 0.0, 0.05, fp)), 0.0)
        return street.color[k] * (1.0 + n - 0.3 * joints)[:, None]
    if mat == YARD:
        n = _fbm(x, z, fp, [(3.0, 0.2), (0.6, 0.2), (0.15, 0.2), (0.04, 0.15)], offset=23.0)
        return street.yard_color.astype(np.float32)[None] * (1.0 + n)[:, None]
    base = street.color[k]  # (n, 3)
    if mat == FACADE:
        p = street.param[k]
        off = (k % 97).astype(np.float32) * 3.3
        n = _fbm(u, v, fp, [(3.0, 0.08), (0.8, 0.08), (0.2, 0.1), (0.05, 0.08)], offset=off)
        height = -y
        col = base * (1.0 + n)[:, None]
        along = u - np.where(axis == 0, street.bmin[k, 2], street.bmin[k, 0])
        fw, fh = p[:, 2], p[:, 3]
        frame_x = _pulse(along, p[:, 0], 0.5 - fw / 2 - 0.08, 0.5 + fw / 2 + 0.08, fp)
        frame_y = _pulse(height, p[:, 1], 0.3 - 0.06, 0.3 + fh + 0.06, fp)
        glass_x = _pulse(along, p[:, 0], 0.5 - fw / 2, 0.5 + fw / 2, fp)
        glass_y = _pulse(height, p[:, 1], 0.3, 0.3 + fh, fp)
        upper = _band(height, 0.9, 1e9, fp)
        frame = (frame_x * frame_y * upper)[:, None]
        glass = (glass_x * glass_y * upper)[:, None]
        reflection = 1.0 + 0.6 * _fbm(u, v, fp, [(1.5, 0.6), (0.4, 0.4)], offset=off + 5.0)
        glass_col = np.array([0.12, 0.15, 0.2], dtype=np.float32) * reflection[:, None]
        return col * (1 - frame) + 0.85 * (frame - glass) + glass_col * glass
    if mat in (CAR, GLASS, TYRE, SIGN):
        n = _fbm(u, v, fp, [(1.0, 0.1 if mat != GLASS else 0.5), (0.25, 0.1 if mat != GLASS else 0.3),
                            (0.06, 0.08)], offset=(k % 89).astype(np.float32) * 2.7)
        col = base * (1.0 + n)[:, None]
        if mat == CAR:
            seam = np.where(axis == 1, 0.0, _band(-y, 0.62, 0.66, fp)) + _pulse(u, 1.1, 0.0, 0.04, fp) * (axis != 1)
            col = col * (1.0 - 0.5 * np.clip(seam, 0, 1))[:, None]
        if mat == SIGN:
            lo_x, hi_x = street.bmin[k, 0], street.bmax[k, 0]
            inner = _band(x, lo_x + 0.06, hi_x - 0.06, fp) * _band(y, street.bmin[k, 1] + 0.06, street.bmax[k, 1] - 0.06, fp)
            col = col * inner[:, None] + 0.9 * (1 - inner)[:, None]
        return col
    if mat == POLE:
        n = _fbm(u, v, fp, [(0.5, 0.1), (0.12, 0.1)], offset=7.0, stretch=4.0)
        band = _pulse(-y, 1.0, 0.0, 0.12, fp)
        return base * (1.0 + n - 0.35 * band)[:, None]
    if mat == TRUNK:
        n = _fbm(u, v, fp, [(0.12, 0.3), (0.04, 0.25)], offset=19.0, stretch=5.0)
        return base * (1.0 + n)[:, None]
    if mat == CROWN:
        n = _fbm(u, v, fp, [(1.0, 0.3), (0.3, 0.3), (0.08, 0.3), (0.03, 0.2)], offset=31.0)
        return base * (1.0 + n)[:, None]
    raise ValueError(f"no texture for material {mat}")


def render_view(street, cam_to_world, height, width):
    """Ray-cast one view: (rgb uint8 (H, W, 3), z-depth float32 (H, W) with 0 = sky/far, thin bool (H, W)).

    Nearest hit per pixel over the ground plane and the street's boxes; each box is tested only on
    the pixels of its projected bounding rectangle, which is what makes numpy fast enough here.
    """
    rays, fx, fy, cx, cy = _camera_rays(height, width)
    R = np.asarray(cam_to_world[:3, :3], dtype=np.float64)
    o = np.asarray(cam_to_world[:3, 3], dtype=np.float64)
    d = rays @ R.T.astype(np.float32)  # (HW, 3) world directions, camera z = 1
    inv = [1.0 / np.where(np.abs(d[:, a]) < 1e-9, np.float32(1e-9), d[:, a]).reshape(height, width) for a in range(3)]
    # Ground plane y = 0 (the camera is at y = -1.65, y points down).
    down = d[:, 1] > 1e-6
    t = np.full(height * width, np.inf, dtype=np.float32)
    t[down] = -o[1] / d[down, 1]
    t = t.reshape(height, width)
    obj = np.full((height, width), -1, dtype=np.int64)
    # Cull and bound every box on screen at once. A box's part closer along the street than 0.75x
    # its lateral distance lies outside the field of view (half-angle 41 deg plus a few deg of yaw),
    # so the corners are taken from the clipped box; boxes that still reach behind the camera get
    # the whole image.
    bmin, bmax = street.bmin, street.bmax
    lateral = np.maximum(np.maximum(bmin[:, 0] - o[0], o[0] - bmax[:, 0]), 0.0)
    z_lo = np.maximum(bmin[:, 2], o[2] + 0.75 * lateral)
    z_hi = np.minimum(bmax[:, 2], o[2] + MAX_GT_DEPTH + 15.0)
    keep = np.flatnonzero(z_lo < z_hi)
    xs = np.stack([bmin[keep, 0], bmax[keep, 0]], 1)
    ys = np.stack([bmin[keep, 1], bmax[keep, 1]], 1)
    zs = np.stack([z_lo[keep], z_hi[keep]], 1)
    corners = np.stack([np.stack([xs[:, i], ys[:, j], zs[:, l]], 1)
                        for i in (0, 1) for j in (0, 1) for l in (0, 1)], 1)  # (n, 8, 3)
    cam = (corners - o) @ R  # (n, 8, 3) camera coordinates
    front = cam[..., 2].min(1) > 0.05
    zc = np.where(cam[..., 2] > 0.05, cam[..., 2], 1.0)
    u, v = fx * cam[..., 0] / zc + cx, fy * cam[..., 1] / zc + cy
    c0 = np.where(front, np.clip(np.ceil(u.min(1)), 0, width), 0).astype(np.int64)
    c1 = np.where(front, np.clip(np.floor(u.max(1)) + 1, 0, width), width).astype(np.int64)
    r0 = np.where(front, np.clip(np.ceil(v.min(1)), 0, height), 0).astype(np.int64)
    r1 = np.where(front, np.clip(np.floor(v.max(1)) + 1, 0, height), height).astype(np.int64)
    lo, hi = bmin - o, bmax - o  # (K, 3) box bounds relative to the camera
    z_near = np.where(front, cam[..., 2].min(1), 0.0)  # no point of the box is nearer than this
    for n in np.argsort(z_near, kind="stable"):  # front to back, so occluded boxes are skipped cheaply
        if c0[n] >= c1[n] or r0[n] >= r1[n]:
            continue
        k = keep[n]
        sl = (slice(r0[n], r1[n]), slice(c0[n], c1[n]))
        if z_near[n] > 0.0 and t[sl].max() < z_near[n]:
            continue  # everything in its rectangle is already nearer
        ta, tb = lo[k, 0] * inv[0][sl], hi[k, 0] * inv[0][sl]  # slab test (Kay & Kajiya)
        near, far = np.minimum(ta, tb), np.maximum(ta, tb)
        for a in (1, 2):
            ta, tb = lo[k, a] * inv[a][sl], hi[k, a] * inv[a][sl]
            near = np.maximum(near, np.minimum(ta, tb))
            far = np.minimum(far, np.maximum(ta, tb))
        t_sub = t[sl]
        hit = (near <= far) & (near > 0.05) & (near < t_sub)
        t_sub[hit] = near[hit]
        obj[sl][hit] = k
    t, obj = t.ravel(), obj.ravel()
    # Shading of everything nearer than MAX_GT_DEPTH.
    rgb = np.empty((height * width, 3), dtype=np.float32)
    length = np.sqrt(np.einsum("ij,ij->i", d, d))  # (HW,) |d|: the distance per unit of z-depth
    up = np.clip(-d[:, 1] / length * 4.0, 0.0, 1.0)[:, None]
    horizon = np.array([0.78, 0.82, 0.86], dtype=np.float32)
    rgb[:] = horizon * (1 - up) + np.array([0.38, 0.52, 0.78], dtype=np.float32) * up
    idx = np.flatnonzero(t <= MAX_GT_DEPTH)
    th, kk = t[idx], obj[idx]
    P = o[None].astype(np.float32) + th[:, None] * d[idx]  # (n, 3) hit points
    on_box = kk >= 0
    kb = np.where(on_box, kk, 0)
    gap_lo = np.abs(P - street.bmin[kb].astype(np.float32))
    gap_hi = np.abs(P - street.bmax[kb].astype(np.float32))
    gap = np.minimum(gap_lo, gap_hi)
    axis = np.where(on_box, np.argmin(gap, axis=1), 1)
    sign = np.where(on_box, np.where(np.take_along_axis(gap_lo < gap_hi, axis[:, None], 1)[:, 0], -1.0, 1.0), -1.0)
    paved = np.abs(P[:, 0]) < street.road_half  # the ground is road, side streets included, else yard
    for s, z0, z1 in street.side_streets:
        paved |= (P[:, 0] * s > 0) & (P[:, 2] >= z0) & (P[:, 2] < z1)
    mat = np.where(on_box, street.mat[kb], np.where(paved, ROAD, YARD))
    dn = np.abs(np.take_along_axis(d[idx], axis[:, None], 1)[:, 0]) / length[idx]  # |cos| of incidence
    dist = th * length[idx]
    fp = dist / fx / np.sqrt(np.maximum(dn, 0.05))  # pixel footprint on the surface (m)
    shade = (0.45 + 0.6 * np.maximum(SUN[axis] * sign, 0.0)).astype(np.float32)
    col = np.empty((len(idx), 3), dtype=np.float32)
    for m in np.unique(mat):
        sel = np.flatnonzero(mat == m)
        col[sel] = _albedo(street, int(m), kb[sel], P[sel], axis[sel], fp[sel].astype(np.float32))
    col *= shade[:, None]
    haze = np.clip((th - HAZE_START) / (MAX_GT_DEPTH - HAZE_START), 0.0, 1.0)[:, None] ** 1.5
    rgb[idx] = col * (1 - haze) + rgb[idx] * haze
    depth = np.where(t <= MAX_GT_DEPTH, t, 0.0).astype(np.float32)
    thin = np.isin(np.where(obj >= 0, street.mat[np.maximum(obj, 0)], SKY), THIN_MATERIALS) & (depth > 0)
    image = (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return image.reshape(height, width, 3), depth.reshape(height, width), thin.reshape(height, width)


def _trajectory(rng, num_frames):
    """Camera-2-to-world poses [N, 4, 4]: about 1 m per frame along the street, gentle yaw and pitch."""
    speed = rng.uniform(0.75, 1.2)
    phase = rng.uniform(0, 2 * np.pi, 4)
    k = np.arange(num_frames)
    step = speed * (1.0 + 0.15 * np.sin(2 * np.pi * k / rng.uniform(20, 60) + phase[0]))
    z = np.concatenate([[0.0], np.cumsum(step)[:-1]])
    amp, wavelength = rng.uniform(0.0, 0.5), rng.uniform(40.0, 120.0)
    x0 = rng.uniform(-0.5, 0.5)  # keeps both cameras >= 1.1 m from the parked cars
    x = x0 + amp * np.sin(2 * np.pi * z / wavelength + phase[1])
    yaw = np.arctan(amp * 2 * np.pi / wavelength * np.cos(2 * np.pi * z / wavelength + phase[1]))
    yaw = yaw + 0.01 * np.sin(2 * np.pi * k / 17.0 + phase[2])  # a little steering wobble
    pitch = 0.006 * np.sin(2 * np.pi * z / rng.uniform(15, 40) + phase[3])
    poses = np.tile(np.eye(4), (num_frames, 1, 1))
    for i in range(num_frames):
        cy_, sy_, cp, sp = np.cos(yaw[i]), np.sin(yaw[i]), np.cos(pitch[i]), np.sin(pitch[i])
        Ry = np.array([[cy_, 0, sy_], [0, 1, 0], [-sy_, 0, cy_]])
        Rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
        poses[i, :3, :3] = Ry @ Rx
        poses[i, :3, 3] = (x[i], -CAMERA_HEIGHT, z[i])
    return poses


def _synthetic_calib_text(height, width):
    """calib_cam_to_cam.txt and calib_velo_to_cam.txt contents for the synthetic cameras."""
    _, fx, fy, cx, cy = _camera_rays(height, width)
    # KITTI's P_rect uses MATLAB's 1-based pixel coordinates (hence generate_depth_map's "- 1"), our
    # renderer 0-based ones: the principal point is written +1 so projected lidar points land on
    # the very pixel they were sampled from.
    P2 = np.array([[fx, 0, cx + 1, 0], [0, fy, cy + 1, 0], [0, 0, 1, 0]])
    P3 = P2.copy()
    P3[0, 3] = -fx * STEREO_BASELINE  # camera 3 sits 0.54 m to the right of camera 2

    def fmt(a):
        return " ".join(f"{x:.12e}" for x in np.ravel(a))

    cam = (f"calib_time: synthetic\ncorner_dist: 0.000000e+00\nR_rect_00: {fmt(R_RECT_00)}\n"
           f"S_rect_00: {fmt([width, height])}\nP_rect_00: {fmt(P2)}\n"
           f"S_rect_02: {fmt([width, height])}\nR_rect_02: {fmt(np.eye(3))}\nP_rect_02: {fmt(P2)}\n"
           f"S_rect_03: {fmt([width, height])}\nR_rect_03: {fmt(np.eye(3))}\nP_rect_03: {fmt(P3)}\n")
    velo = (f"calib_time: synthetic\nR: {fmt(VELO_TO_CAM_R)}\nT: {fmt(VELO_TO_CAM_T)}\n"
            f"delta_f: 0.000000e+00 0.000000e+00\ndelta_c: 0.000000e+00 0.000000e+00\n")
    return cam, velo


def _lidar_from_depth(depth, image, height, width):
    """Velodyne scan [N, 4] float32 sampled from the (quantised) GT along 64 scan lines.

    Each in-image scan line becomes one image row with a point every second column, never column 0
    (it would share Monodepth2's duplicate index with the previous row's last column). Points go
    from camera 2 (= the rectified frame) to the velodyne frame with the inverses of R_rect_00 and
    velo_to_cam. A mirrored eighth of them behind the sensor (x < 0) stands for the rear half of a
    real sweep (kept small: the files are about 100 KB per frame).
    """
    _, fx, fy, cx, cy = _camera_rays(height, width)
    rows = np.unique(np.round(cy - fy * np.tan(np.radians(LIDAR_ELEVATIONS))).astype(np.int64))
    rows = rows[(rows >= 0) & (rows < height)]
    rr, cc = np.meshgrid(rows, np.arange(1, width, 2), indexing="ij")
    z = depth[rr, cc].astype(np.float64)
    ok = z > 0
    rr, cc, z = rr[ok], cc[ok], z[ok]
    cam = np.stack([(cc - cx) / fx * z, (rr - cy) / fy * z, z, np.ones_like(z)], 1)  # (N, 4)
    velo_to_rect = np.eye(4)
    velo_to_rect[:3, :3] = R_RECT_00 @ VELO_TO_CAM_R
    velo_to_rect[:3, 3] = R_RECT_00 @ VELO_TO_CAM_T
    velo = cam @ np.linalg.inv(velo_to_rect).T  # (N, 4)
    reflect = image[rr, cc].mean(1) / 255.0
    front = np.concatenate([velo[:, :3], reflect[:, None]], 1)
    rear = front[::8] * np.array([-1.0, -1.0, 1.0, 1.0])
    return np.concatenate([front, rear], 0).astype(np.float32)


def _drive_name(index):
    return f"{SYNTH_DATE}/{SYNTH_DATE}_drive_{index:04d}_sync"


def _make_drive(job):
    """Render and write one drive (run in a worker process). job = (root, index, frames, H, W, seed)."""
    root, index, num_frames, height, width, seed = job
    rng = np.random.default_rng([seed, index])
    poses = _trajectory(rng, num_frames)
    street = _Street(rng, poses[0, 2, 3] - 30.0, poses[-1, 2, 3] + MAX_GT_DEPTH + 30.0)
    drive = Path(root) / _drive_name(index)
    folders = {key: drive / sub for key, sub in [
        ("l", "image_02/data"), ("r", "image_03/data"), ("velo", "velodyne_points/data"),
        ("gt", "proj_depth/groundtruth/image_02"), ("gt_r", "proj_depth/groundtruth/image_03"),
        ("thin", "thin_mask/image_02")]}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    right = np.eye(4)
    right[0, 3] = STEREO_BASELINE
    for i, pose in enumerate(poses):
        name = f"{i:010d}"
        image, depth, thin = render_view(street, pose, height, width)
        Image.fromarray(image).save(folders["l"] / f"{name}.jpg", quality=92)
        image_r, depth_r, _ = render_view(street, pose @ right, height, width)
        Image.fromarray(image_r).save(folders["r"] / f"{name}.jpg", quality=92)
        write_depth_png(folders["gt_r"] / f"{name}.png", depth_r)  # so depth_gt also works for "r" lines
        depth_q = np.round(depth.astype(np.float64) * 256.0) / 256.0  # what the png stores
        write_depth_png(folders["gt"] / f"{name}.png", depth_q)
        Image.fromarray(thin.astype(np.uint8) * 255).save(folders["thin"] / f"{name}.png", compress_level=1)
        _lidar_from_depth(depth_q, image, height, width).tofile(folders["velo"] / f"{name}.bin")
    (drive / "poses.txt").write_text("".join(" ".join(f"{x:.9e}" for x in p[:3].ravel()) + "\n" for p in poses))
    return num_frames


def make_synthetic_kitti(root, num_drives=40, frames_per_drive=50, height=128, width=416, seed=0, workers=1):
    """Write the synthetic mini-KITTI tree under root (KITTI raw layout + splits/synthetic); return root.

    Drives are split by drive: about 10% test and 10% validation (at least one each), the rest
    train; train lists both cameras, val/test camera 2 only; first and last frames are left out of
    the lists (they lack a neighbour). An existing complete tree made with the same arguments is kept.
    """
    root = Path(root)
    if num_drives < 3 or frames_per_drive < 3:
        raise ValueError(f"make_synthetic_kitti: need num_drives >= 3 and frames_per_drive >= 3, "
                         f"got {num_drives} and {frames_per_drive}")
    args = {"version": SYNTH_VERSION, "num_drives": num_drives, "frames_per_drive": frames_per_drive,
            "height": height, "width": width, "seed": seed}
    marker = root / SYNTH_MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == args:
                return root
        except ValueError:
            pass
        marker.unlink()  # a tree made with other arguments: rebuild it in place
    date = root / SYNTH_DATE
    date.mkdir(parents=True, exist_ok=True)
    cam_text, velo_text = _synthetic_calib_text(height, width)
    (date / "calib_cam_to_cam.txt").write_text(cam_text)
    (date / "calib_velo_to_cam.txt").write_text(velo_text)
    jobs = [(str(root), i, frames_per_drive, height, width, seed) for i in range(num_drives)]
    if workers > 1:
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else None)
        with context.Pool(workers) as pool:
            pool.map(_make_drive, jobs, chunksize=1)
    else:
        for job in jobs:
            _make_drive(job)
    n_test = max(1, round(0.1 * num_drives))
    n_val = max(1, round(0.1 * num_drives))
    test_ids = range(num_drives - n_test, num_drives)
    val_ids = range(num_drives - n_test - n_val, num_drives - n_test)
    train_ids = range(0, num_drives - n_test - n_val)
    inner = range(1, frames_per_drive - 1)
    splits = root / "splits" / "synthetic"
    write_split(splits / "train_files.txt", [(_drive_name(d), f, s) for d in train_ids for f in inner for s in "lr"])
    write_split(splits / "val_files.txt", [(_drive_name(d), f, "l") for d in val_ids for f in inner])
    write_split(splits / "test_files.txt", [(_drive_name(d), f, "l") for d in test_ids for f in inner])
    marker.write_text(json.dumps(args))  # written last: its presence means "complete"
    return root


def read_synthetic_poses(drive_dir):
    """poses.txt of a synthetic drive -> [N, 4, 4] camera-2-to-world matrices."""
    path = Path(drive_dir) / "poses.txt"
    if not path.is_file():
        raise DataError(f"poses file not found: {path}")
    rows = np.loadtxt(path, ndmin=2)
    if rows.shape[1] != 12:
        raise DataError(f"poses file {path}: expected 12 numbers per line, got {rows.shape[1]}")
    poses = np.tile(np.eye(4), (len(rows), 1, 1))
    poses[:, :3, :] = rows.reshape(-1, 3, 4)
    return poses


def synthetic_thin_mask_path(data_path, folder, frame):
    """Path of the thin-structure mask (uint8 0/255 png, camera 2) of one synthetic frame."""
    return Path(data_path) / folder / "thin_mask" / "image_02" / f"{int(frame):010d}.png"


# ----------------------------------------------------------------------------------------------
# Benchmarks, demo, command line
# ----------------------------------------------------------------------------------------------
@dataclass
class DataConfig:
    """What `python 01_data.py` does: the demo by default, or a benchmark / data-set build."""
    out: str = "runs/demo_01_data.png"  # where the demo saves its figure
    bench: str = ""  # a KITTI or synthetic data folder: time the loader against the decode bound
    render_bench: bool = False  # time the synthetic renderer on one core (frames/s)
    make: str = ""  # build the synthetic data set in this folder (the defaults below)
    num_drives: int = 40  # synthetic drives (10% test, 10% val, at least one each)
    frames_per_drive: int = 50  # frames per synthetic drive (about 1 m apart)
    height: int = 128  # synthetic render / loader height
    width: int = 416  # synthetic render / loader width
    seed: int = 0  # synthetic world seed
    workers: int = 2  # processes for --make
    bench_height: int = 64  # loader benchmark input size: the default run's 208x64 (KITTI presets: 640x192)
    bench_width: int = 208  # (frames are decoded at their stored size and resized to this)
    samples: int = 400  # samples per loader benchmark run (the first batch is not timed)
    split: str = "train"  # which split list the loader benchmark reads (synthetic or eigen_zhou)
    split_dir: str = ""  # folder of the standard split lists ("" = $SQLDEPTH_SPLIT_DIR or ~/.cache/sqldepth/splits)
    img_ext: str = ".jpg"  # image extension of the data (KITTI: .jpg or .png)


def render_benchmark(height=128, width=416, frames=40, seed=0):
    """Synthetic images rendered per second on this process (one core), plus a full-frame rate."""
    rng = np.random.default_rng([seed, 999])
    poses = _trajectory(rng, frames)
    street = _Street(rng, -30.0, poses[-1, 2, 3] + 110.0)
    render_view(street, poses[0], height, width)  # warm the ray table
    start = time.perf_counter()
    for pose in poses:
        render_view(street, pose, height, width)
    images_per_s = frames / (time.perf_counter() - start)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        _make_drive((tmp, 0, frames, height, width, seed))
        frames_per_s = frames / (time.perf_counter() - start)
    return images_per_s, frames_per_s


class DecodeOnly(torch.utils.data.Dataset):
    """The bare decode + resize work of a KittiRaw training sample: the same frame files, uint8, nothing else."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        return torch.from_numpy(self.dataset.decode_frames(*self.dataset.lines[index]))


def loader_benchmark(data_path, lines, height, width, samples=400, img_ext=".jpg", workers=(0, 1, 2),
                     batch_size=8, repeats=3):
    """Samples/s of KittiRaw training samples (frames 0, -1, +1, flip + jitter at their training
    probabilities) through a DataLoader with n workers, next to the bound: the same loader over
    DecodeOnly, i.e. decoding and resizing the same image files and nothing else -> {n: (bound, rate)}.
    Each figure is the best of `repeats` passes, the two loaders taking turns (a shared machine is noisy)."""
    dataset = KittiRaw(data_path, lines, height, width, frame_ids=(0, -1, 1), is_train=True, img_ext=img_ext)
    count = min(samples, len(dataset))
    if count <= batch_size:
        raise ValueError(f"the loader benchmark needs more samples than one batch ({batch_size}): "
                         f"--samples {samples}, {len(dataset)} split lines")
    order = list(range(count))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # like a DataLoader worker; batch collation with OpenMP threads on busy cores stalls

    def samples_per_s(data, n, collate_fn):
        loader = iter(torch.utils.data.DataLoader(torch.utils.data.Subset(data, order), batch_size=batch_size,
                                                  num_workers=n, collate_fn=collate_fn))
        next(loader)  # steady state: worker start-up (paid once per training run) is not timed
        start = time.perf_counter()
        for _ in loader:
            pass
        return (count - batch_size) / (time.perf_counter() - start)

    results = {}
    try:
        for n in workers:
            passes = [(samples_per_s(DecodeOnly(dataset), n, None), samples_per_s(dataset, n, collate))
                      for _ in range(repeats)]
            results[n] = (max(p[0] for p in passes), max(p[1] for p in passes))
    finally:
        torch.set_num_threads(threads)
    return results


def demo(cfg):
    """Tiny world -> sample schema printed -> figure with frames, GT depth and lidar points."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out = Path(cfg.out)
    root = out.parent / "demo_01_world"
    start = time.perf_counter()
    make_synthetic_kitti(root, num_drives=3, frames_per_drive=6, height=cfg.height, width=cfg.width, seed=cfg.seed)
    print(f"synthetic world: {root} ({time.perf_counter() - start:.1f} s)")
    lines = read_split(get_split_file("synthetic", "test", data_path=root))
    dataset = KittiRaw(root, lines, cfg.height, cfg.width, frame_ids=(0, -1, 1, "s"), is_train=True, load_depth=True)
    sample = dataset[1]
    print("sample schema:")
    for key, value in sample.items():
        if isinstance(value, dict):
            for fid, tensor in value.items():
                print(f"  {key}[{fid!r}]: {tuple(tensor.shape)} {tensor.dtype} "
                      f"in [{tensor.min().item():g}, {tensor.max().item():g}]")
        elif torch.is_tensor(value):
            print(f"  {key}: {tuple(value.shape)} {value.dtype}")
        else:
            print(f"  {key}: {value!r}")
    folder, frame, side = dataset.lines[1]
    lidar = velodyne_to_depth(root / SYNTH_DATE, velodyne_path(root, folder, frame))
    gt = read_depth_png(gt_png_path(root, folder, frame, side))
    image = load_rgb(dataset.image_path(folder, frame, side))
    fig, axes = plt.subplots(3, 2, figsize=(12, 6))
    for ax, fid in zip(axes[0], (-1, 1)):
        ax.imshow(load_rgb(dataset.image_path(folder, frame + fid, side)))
        ax.set_title(f"frame {fid:+d}")
    axes[1, 0].imshow(image)
    axes[1, 0].set_title("frame 0 (camera 2)")
    axes[1, 1].imshow(load_rgb(dataset.image_path(folder, frame, "r")))
    axes[1, 1].set_title("stereo partner (camera 3)")
    axes[2, 0].imshow(np.where(gt > 0, 1.0 / np.maximum(gt, 1e-3), np.nan), cmap="magma")
    axes[2, 0].set_title("dense GT (inverse depth; sky = no data)")
    rows, cols = np.nonzero(lidar)
    axes[2, 1].imshow(image)
    axes[2, 1].scatter(cols, rows, c=lidar[rows, cols], s=0.5, cmap="jet_r")
    axes[2, 1].set_title(f"velodyne_to_depth: {len(rows)} lidar pixels")
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    print(f"figure: {out}")


def field_comments(cls):
    """{field: its trailing '# comment'} from a dataclass's source: the --help text of each flag
    (every script's command line is generated from its config dataclass)."""
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    found = (re.match(r"\s+(\w+)\s*:[^#]*#\s*(.+)$", line) for line in lines)
    return {m.group(1): m.group(2).strip() for m in found if m}


def main(argv=None):
    """Command line generated from DataConfig; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    comments = {k: v.replace("%", "%%") for k, v in field_comments(DataConfig).items()}  # argparse %-formats
    for f in fields(DataConfig):
        if f.type is bool or f.type == "bool":
            parser.add_argument(f"--{f.name}", action="store_true", help=comments.get(f.name))
        else:
            parser.add_argument(f"--{f.name}", type=type(f.default), default=f.default,
                                help=f"{comments.get(f.name, '')} (default: {f.default!r})")
    cfg = DataConfig(**vars(parser.parse_args(argv)))
    try:
        if cfg.render_bench:
            images, frames = render_benchmark(cfg.height, cfg.width)
            print(f"renderer {cfg.width}x{cfg.height}: {images:.1f} images/s on one core; "
                  f"{frames:.1f} frames/s (2 images + GT + lidar + files)")
        elif cfg.bench:
            root = Path(cfg.bench)
            if not root.is_dir():
                raise DataError(f"data folder not found: {root}")
            if (root / SYNTH_MARKER).is_file():
                lines = read_split(get_split_file("synthetic", cfg.split, data_path=root))
            else:
                lines = read_split(get_split_file("eigen_zhou", cfg.split, cfg.split_dir or None))
            results = loader_benchmark(root, lines, cfg.bench_height, cfg.bench_width, cfg.samples, cfg.img_ext)
            print(f"loader at {cfg.bench_width}x{cfg.bench_height}, {min(cfg.samples, len(lines))} samples "
                  f"of frames 0, -1, +1 (samples/s)")
            for n, (bound, rate) in results.items():
                print(f"{n} worker(s): decode + resize bound {bound:.1f}, KittiRaw training samples {rate:.1f} "
                      f"({100 * rate / bound:.0f}% of the bound)")
        elif cfg.make:
            start = time.perf_counter()
            make_synthetic_kitti(cfg.make, cfg.num_drives, cfg.frames_per_drive, cfg.height, cfg.width,
                                 cfg.seed, cfg.workers)
            print(f"synthetic data set in {cfg.make} ({time.perf_counter() - start:.1f} s)")
        else:
            demo(cfg)
    except (DataError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
