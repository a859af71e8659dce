"""01 - data: KITTI raw as SQLDepth reads it: calibration, velodyne ground truth, splits, samples.

SQLDepth trains and is evaluated on KITTI raw through Monodepth2's data pipeline (paper Sec. 4;
github.com/nianticlabs/monodepth2). This file rebuilds that pipeline:
  * the calibration files and the normalised intrinsics K, scaled to the training size (Exercise 1.1);
  * velodyne ground truth exactly as Monodepth2's `generate_depth_map` (Exercise 1.2), the improved
    ground-truth pngs, and an .npz export of the evaluation ground truth;
  * split lists: Monodepth2's `folder frame side` files (where the standard lists come from, and the
    train/test drive-overlap check: helpers/kitti_files.py);
  * `KittiRaw`, the Dataset that 06 and 07 read: frames 0/-1/+1 and the stereo partner "s", flip and
    colour jitter drawn once per sample, uint8 images batched by `collate`.
Where we deviate from Monodepth2's loader, the function concerned says so. The synthetic mini-KITTI
of the default run is written in this layout by helpers/synthetic_world.py (a data source, not a
reading step).

This is the longest step: KITTI raw's layout, calibration, velodyne ground truth, split lists and
the dataset are each needed to train or evaluate at all. What a reader can skip lives in helpers/:
the colour jitter's HSV maths (color_jitter.py), the split-list download (kitti_files.py), the
loader's benchmark (benchmark.py).

Demo:  python 01_data.py    (a tiny synthetic world, one sample's schema, a figure)
Tests: tests/test_01_data.py
"""
import argparse
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from helpers.cli import add_dataclass_flags  # the command line of every script (helpers/cli.py)
from helpers.color_jitter import color_jitter  # torchvision's ColorJitter maths in numpy (helpers/)


# ---- Errors ----
class DataError(Exception):
    """Bad input data (missing folder/frame, corrupt file, bad calibration): one line naming the file.
    One string argument, so it pickles across DataLoader workers; re-raised in the main process, its
    message holds the worker's traceback, of which we keep our own line (one clear line to print)."""

    def __init__(self, message):
        message = str(message)
        if "Original Traceback" in message:
            found = re.findall(r"DataError: (.*)", message)
            if found:
                message = found[-1].strip()
        super().__init__(message)


class SplitLineError(DataError, ValueError):
    """A split file line that is not `folder frame side` (also a ValueError, for callers that catch those)."""


# ---- Calibration and intrinsics ----
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


def write_calib_file(path, entries):
    """{key: numbers or text} -> a KITTI calibration text file that read_calib_file reads back: one
    `key: values` line per entry, numbers as %.12e, text as given (e.g. "calib_time: ...")."""
    def text(value):
        return value if isinstance(value, str) else " ".join(f"{x:.12e}" for x in np.ravel(value))

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{key}: {text(value)}\n" for key, value in entries.items()))


def _calib_value(calib, key, size, path):
    """calib[key] reshaped to `size` numbers, or a DataError naming the file and the key."""
    if key not in calib or calib[key].size != size:
        raise DataError(f"calibration file {path} lacks key {key} ({size} numbers)")
    return calib[key]


def normalised_K():
    """KITTI intrinsics divided by the image size (Monodepth2/SQLDepth), [4, 4] float32."""
    return np.array([[0.58, 0, 0.5, 0],
                     [0, 1.92, 0.5, 0],
                     [0, 0, 1, 0],
                     [0, 0, 0, 1]], dtype=np.float32)


def scale_K(K_norm, width, height):
    """Exercise 1.1: scale normalised intrinsics to an image of width x height pixels.

    K_norm is a [4, 4] array whose first row (fx, 0, cx, 0) is in units of the image width and whose
    second row (0, fy, cy, 0) is in units of the image height. Return a new [4, 4] float32 array
    in pixels (K_norm itself stays as it was).
    Hint: "in units of the width" means a fraction of it (fx = 0.58: 58% of the width in pixels).
    Which entries are measured along the image's x axis, which along its y axis, and which rows
    are not lengths at all?
    """
    K = np.array(K_norm, dtype=np.float32, copy=True)  # [4, 4]
    K[0, :] *= width
    K[1, :] *= height
    return K


# ---- The folder layout of KITTI raw (the synthetic world writes the same one) ----
# <data_path>/<date>/calib_cam_to_cam.txt, calib_velo_to_cam.txt        one calibration per day
# <data_path>/<date>/<drive>/image_02/data/<frame>.jpg                  camera 2 (left), side "l"
# <data_path>/<date>/<drive>/image_03/data/<frame>.jpg                  camera 3 (right), side "r"
# <data_path>/<date>/<drive>/velodyne_points/data/<frame>.bin           lidar scans
# <data_path>/<date>/<drive>/proj_depth/groundtruth/image_0{2,3}/<frame>.png   improved / dense GT
# Frames are written with 10 digits (0000000005). A split line is `<date>/<drive> <frame> <side>`.
SIDE_NAMES = {"l": "l", "r": "r", "2": "l", "3": "r"}
SIDE_TO_CAM = {"l": 2, "r": 3}
CAM_TO_CAM_FILE = "calib_cam_to_cam.txt"
VELO_TO_CAM_FILE = "calib_velo_to_cam.txt"
# A data folder holding this file holds a complete synthetic world (helpers/synthetic_world.py
# writes it last):
# its ground truth is then the dense png of every image, and its split lists live in the folder.
SYNTH_MARKER = "synthetic_world.json"


def calib_folder(data_path, folder):
    """The date folder of a drive (split-line folder <date>/<drive>): it holds the calibration files."""
    return Path(data_path) / folder.split("/")[0]


def image_path(data_path, folder, frame, side, img_ext=".jpg"):
    """One camera image: side "l" -> image_02, "r" -> image_03."""
    cam = SIDE_TO_CAM[SIDE_NAMES[str(side)]]
    return Path(data_path) / folder / f"image_0{cam}" / "data" / f"{int(frame):010d}{img_ext}"


def velodyne_path(data_path, folder, frame):
    """The velodyne scan of one frame."""
    return Path(data_path) / folder / "velodyne_points" / "data" / f"{int(frame):010d}.bin"


def gt_png_path(data_path, folder, frame, side):
    """The improved (KITTI) or dense (synthetic) ground-truth png of one image, by side."""
    cam = SIDE_TO_CAM[SIDE_NAMES[str(side)]]
    gt_folder = Path(data_path) / folder / "proj_depth" / "groundtruth" / f"image_0{cam}"
    return gt_folder / f"{int(frame):010d}.png"


def synthetic_split_path(data_path, kind):
    """The split list `kind` (train, val, test) of a synthetic world: inside its data folder."""
    return Path(data_path) / "splits" / "synthetic" / f"{kind}_files.txt"


# ---- Velodyne ground truth (Monodepth2's generate_depth_map, reproduced exactly) ----
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
    Hint: P maps a homogeneous point (x, y, z, 1) to a homogeneous pixel (u d, v d, d); do all N
    points in one product ([N, 4] against P's 3 rows -> [N, 3]), then leave homogeneous
    coordinates.
    """
    pts = np.asarray(points_velo, dtype=np.float64)[:, :3]
    homog = np.concatenate([pts, np.ones((len(pts), 1))], axis=1)  # [N, 4]
    proj = homog @ np.asarray(P_velo2im, dtype=np.float64)[:3].T  # [N, 3]
    depth = proj[:, 2]
    uv = proj[:, :2] / depth[:, None]
    return uv, depth


def velo_to_image_matrix(calib_dir, cam=2):
    """P_rect_0cam @ R_rect_00 @ [R|T]velo->cam [4, 4] and the image size (H, W) from S_rect_02."""
    calib_dir = Path(calib_dir)
    cam2cam_path, velo2cam_path = calib_dir / CAM_TO_CAM_FILE, calib_dir / VELO_TO_CAM_FILE
    cam2cam, velo2cam = read_calib_file(cam2cam_path), read_calib_file(velo2cam_path)
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
    """Sparse depth map [H, W] float32 from a velodyne scan, as Monodepth2's generate_depth_map.
    Steps: keep points with x >= 0 (in front of the sensor, an approximation of "in front of the
    image plane"), project with P_rect @ R_rect_00 @ velo_to_cam, depth = projected z (or the
    velodyne x when vel_depth, the legacy Eigen choice), column/row = round(coord) - 1 (KITTI's
    calibration uses MATLAB's 1-based pixels), keep points inside the image, write depths, then
    resolve pixels hit more than once by the nearest depth, and set negative depths to 0. Returned
    as float32 (Monodepth2's map is float64).
    """
    P, (height, width) = velo_to_image_matrix(calib_dir, cam)
    velo = load_velodyne(velo_path)
    velo = velo[velo[:, 0] >= 0]
    uv, depth = project_velo_to_image(velo, P)  # [N, 2], [N]
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
    """KITTI improved ground truth png (uint16, metres * 256, 0 = no data) -> [H, W] float32 metres."""
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
    """[H, W] metres -> uint16 png of round(depth * 256) (the KITTI improved-GT format)."""
    value = np.clip(np.round(np.asarray(depth, dtype=np.float64) * 256.0), 0, 65535).astype(np.uint16)
    Image.fromarray(value).save(path, compress_level=1)


def gt_depth_key(folder, frame, side):
    """The .npz key of one image's ground truth (npz keys cannot hold '/')."""
    return f"{folder.replace('/', '__')}__{int(frame):010d}__{side}"


def export_gt_depth(data_path, split_lines, out_path, source="auto"):
    """Write the ground truth of every split line into an .npz (one float32 array per image, no pickle,
    keys from `gt_depth_key`). source: "velodyne" (Monodepth2's Eigen GT: camera 2, velodyne x as
    depth), "png" (the improved GT proj_depth/groundtruth/image_0{2,3} by side: eigen_benchmark,
    synthetic) or "auto" (png for a synthetic tree, velodyne otherwise)."""
    data_path = Path(data_path)
    if source == "auto":
        source = "png" if (data_path / SYNTH_MARKER).is_file() else "velodyne"
    maps = {}
    for folder, frame, side in split_lines:
        if source == "png":
            depth = read_depth_png(gt_png_path(data_path, folder, frame, side))
        elif source == "velodyne":
            scan = velodyne_path(data_path, folder, frame)
            depth = velodyne_to_depth(calib_folder(data_path, folder), scan, cam=2, vel_depth=True)
        else:
            raise ValueError(f"export_gt_depth: unknown source {source!r} (velodyne, png, auto)")
        maps[gt_depth_key(folder, frame, side)] = depth.astype(np.float32)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out_path, **maps)
    return out_path


# ---- Split lists: `folder frame side` per line, as Monodepth2's ----
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


# ---- The dataset ----
def load_rgb(path, size=None):
    """Image file -> uint8 array [H, W, 3], resized with LANCZOS to size=(width, height) if given."""
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
    """KITTI raw (or the synthetic world) as training/evaluation samples, one dict per split line.
    Each item: {"color": {fid: [3, H, W]}, "color_aug": {fid: [3, H, W]}, "K", "inv_K": [4, 4],
    "stereo_T": [4, 4] (when "s" in frame_ids), "depth_gt": [1, Hgt, Wgt] (when load_depth), "index"}.
    Images are uint8 as decoded (the jittered copy rounded once; Monodepth2's PIL jitter rounds after
    every step): a quarter of the bytes of float images on their way to the GPU, where 06 and 07
    turn them into float in [0, 1] (`images_to_float`). Flip and jitter (`flip_prob`, `jitter_prob`:
    0.5, training only) are drawn from np.random.default_rng([seed, epoch, index]) (see set_epoch).
    depth_gt keeps its stored size and is mirrored with the images. split_file (optional): the file
    the lines came from, named with the line number when a frame is missing. cache_mb: keep up to
    this many MB of decoded, resized frames in memory (FrameCache; 0 = decode every time).
    """

    def __init__(self, data_path, lines, height, width, frame_ids=(0, -1, 1), is_train=False,
                 img_ext=".jpg", load_depth=False, drop_missing=False, seed=0, split_file=None,
                 cache_mb=0):
        self.data_path = Path(data_path)
        if not self.data_path.is_dir():
            raise DataError(f"data folder not found: {self.data_path}")
        self.height, self.width = int(height), int(width)
        self.frame_ids, self.is_train = tuple(frame_ids), is_train
        self.img_ext, self.load_depth = img_ext, load_depth
        self.synthetic = (self.data_path / SYNTH_MARKER).is_file()
        self.flip_prob, self.jitter_prob = 0.5, 0.5
        self.seed, self.epoch = int(seed), 0
        self.frame_cache = FrameCache(cache_mb)
        K = scale_K(normalised_K(), self.width, self.height)  # [4, 4] at the training size
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
        """Path of one camera image (side "l" -> image_02, "r" -> image_03) with this dataset's extension."""
        return image_path(self.data_path, folder, frame, side, self.img_ext)

    def depth_source(self, folder, frame, side):
        """Synthetic: the dense proj_depth png; KITTI: the velodyne scan (projected on load)."""
        if self.synthetic:
            return gt_png_path(self.data_path, folder, frame, side)
        return velodyne_path(self.data_path, folder, frame)

    def frame_paths(self, folder, frame, side):
        """Image path of every frame id of one split line: temporal neighbours on the same camera,
        "s" = the same instant on the other camera."""
        other = {"l": "r", "r": "l"}[side]
        return [self.image_path(folder, frame, other) if fid == "s"
                else self.image_path(folder, frame + int(fid), side) for fid in self.frame_ids]

    def decode_frames(self, folder, frame, side):
        """Every frame of one split line, decoded and resized to the training size -> [F, H, W, 3] uint8."""
        size = (self.width, self.height)
        return np.stack([self.frame_cache.get(path, lambda p: load_rgb(p, size))
                         for path in self.frame_paths(folder, frame, side)])

    def _needed_files(self, folder, frame, side):
        yield from self.frame_paths(folder, frame, side)
        if self.load_depth:
            yield self.depth_source(folder, frame, side)
            if not self.synthetic:
                yield calib_folder(self.data_path, folder) / CAM_TO_CAM_FILE

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
        rng = np.random.default_rng([self.seed, self.epoch, index])
        draws = rng.random(6) if self.is_train else np.ones(6)
        do_flip = bool(draws[0] < self.flip_prob)
        do_jitter = bool(draws[1] < self.jitter_prob)
        frames = self.decode_frames(folder, frame, side)  # [F, H, W, 3]
        if do_flip:
            frames = frames[:, :, ::-1]  # all frames together (resize and mirror commute)
        frames = np.ascontiguousarray(frames.transpose(0, 3, 1, 2))  # [F, 3, H, W] uint8
        color = {fid: torch.from_numpy(frames[i]) for i, fid in enumerate(self.frame_ids)}
        color_aug = dict(color)  # the same tensors unless jittered
        if do_jitter:
            # One draw per sample, applied to every frame, with Monodepth2's ranges (its
            # datasets/mono_dataset.py); see docs/kitti.md, "Where we follow the paper, and where the
            # official code".
            b, c, s = 0.8 + 0.4 * draws[2:5]  # brightness, contrast, saturation in [0.8, 1.2]
            h = 0.2 * draws[5] - 0.1  # hue in [-0.1, 0.1]
            aug = color_jitter(frames, b, c, s, h)  # float32 in [0, 1] (helpers/color_jitter.py)
            aug *= np.float32(255.0)
            aug += np.float32(0.5)  # round to nearest (aug >= 0)
            aug = aug.astype(np.uint8)  # [F, 3, H, W]
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
                depth = velodyne_to_depth(calib_folder(self.data_path, folder),
                                          self.depth_source(folder, frame, side), cam=SIDE_TO_CAM[side])
            if do_flip:
                depth = depth[:, ::-1]
            inputs["depth_gt"] = torch.from_numpy(np.ascontiguousarray(depth))[None]  # [1, Hgt, Wgt]
        return inputs


IMAGE_KEYS = ("color", "color_aug")


def collate(samples):
    """KittiRaw samples -> one batch, as torch's default_collate, except that all images of the batch
    are ONE tensor [2F*B, 3, H, W] whose slices fill the color and color_aug dicts: a DataLoader
    worker pays per shared-memory block it hands over, so one block beats 2F (loader benchmark)."""
    keys = [(key, fid) for key in IMAGE_KEYS for fid in samples[0][key]]
    images = torch.utils.data.default_collate([s[key][fid] for key, fid in keys for s in samples])
    images = images.view(len(keys), len(samples), *images.shape[1:])  # [2F, B, 3, H, W]
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


# ==============================================================================================
# ---- Engineering: not needed to understand SQLDepth ----
# Loader speed (the frame cache; its benchmark is helpers/benchmark.py's), the demo and the command line.
# ==============================================================================================
class FrameCache:
    """Decoded, resized frames kept in memory, up to a byte budget (then new frames are not kept).

    Decoding and resizing a frame is deterministic, and every frame serves several samples (the
    target of one, the -1 / +1 neighbour of two more, the "s" partner of the other camera), so a
    cached frame is the same array a fresh decode would give, ~1 ms sooner. Each DataLoader worker
    holds its own cache. Sized for small data sets (the synthetic world at 208x64: ~160 MB);
    KITTI's ~45,000 frames at 640x192 (~17 GB) would not fit, and a partial cache helps little."""

    def __init__(self, budget_mb=0):
        if budget_mb < 0:
            raise ValueError(f"cache size must be >= 0 MB, got {budget_mb}")
        self.budget = int(budget_mb * 2 ** 20)
        self.used = 0
        self.frames = {}

    def get(self, key, load):
        """The frame stored under key, or load(key) (kept if it fits the budget)."""
        frame = self.frames.get(key)
        if frame is None:
            frame = load(key)
            if self.used + frame.nbytes <= self.budget:
                frame.setflags(write=False)     # shared by every sample that uses it: read-only
                self.frames[key] = frame
                self.used += frame.nbytes
        return frame


# ---- Demo and command line ----
@dataclass
class DataConfig:
    """What `python 01_data.py` does: the demo (the loader benchmark moved to helpers/benchmark.py)."""
    out: str = "runs/demo_01_data.png"  # where the demo saves its figure (its world goes next to it)
    height: int = 128  # image height of the tiny synthetic world and of the sample
    width: int = 416  # image width of the tiny synthetic world and of the sample
    seed: int = 0  # synthetic world seed


def demo(cfg):
    """Tiny world -> sample schema printed -> figure with frames, GT depth and lidar points."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    # The world is a data source, not a reading step: only this demo imports it. Run as a script,
    # this file is __main__ and the world's import of "01_data" loads a second copy (another
    # DataError class): so the world only renders here, and this file's own functions read it.
    from helpers import synthetic_world
    out = Path(cfg.out)
    root = out.parent / "demo_01_world"
    start = time.perf_counter()
    synthetic_world.make_synthetic_kitti(root, num_drives=3, frames_per_drive=6, height=cfg.height,
                                         width=cfg.width, seed=cfg.seed)
    print(f"synthetic world: {root} ({time.perf_counter() - start:.1f} s)")
    lines = read_split(synthetic_split_path(root, "test"))
    dataset = KittiRaw(root, lines, cfg.height, cfg.width, frame_ids=(0, -1, 1, "s"), is_train=True,
                       load_depth=True)
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
    lidar = velodyne_to_depth(calib_folder(root, folder), velodyne_path(root, folder, frame))
    gt = read_depth_png(gt_png_path(root, folder, frame, side))
    image = load_rgb(dataset.image_path(folder, frame, side))
    rows, cols = np.nonzero(lidar)
    panels = [(load_rgb(dataset.image_path(folder, frame - 1, side)), "frame -1"),
              (load_rgb(dataset.image_path(folder, frame + 1, side)), "frame +1"),
              (image, "frame 0 (camera 2)"),
              (load_rgb(dataset.image_path(folder, frame, "r")), "stereo partner (camera 3)"),
              (np.where(gt > 0, 1.0 / np.maximum(gt, 1e-3), np.nan), "dense GT (inverse depth; sky = no data)"),
              (image, f"velodyne_to_depth: {len(rows)} lidar pixels")]
    fig, axes = plt.subplots(3, 2, figsize=(12, 6))
    for ax, (picture, title) in zip(axes.ravel(), panels):
        ax.imshow(picture, cmap="magma" if picture.ndim == 2 else None)
        ax.set_title(title)
        ax.axis("off")
    axes[2, 1].scatter(cols, rows, c=lidar[rows, cols], s=0.5, cmap="jet_r")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    print(f"figure: {out}")


def main(argv=None):
    """Command line generated from DataConfig; returns the exit status (2 = bad input, one line).
    The synthetic world has its own: python -m helpers.synthetic_world --help."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_dataclass_flags(parser, DataConfig)
    cfg = DataConfig(**vars(parser.parse_args(argv)))
    try:
        demo(cfg)
    except (DataError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
