"""synthetic_world - the synthetic mini-KITTI: a procedural street written in the KITTI raw layout.

Not a reading step: the data of the default run, so the method trains and is evaluated on a 2-core
CPU without KITTI, through the very code that reads KITTI (01_data.py). Each drive is a street of
boxes ray-cast with numpy: stereo jpgs, dense depth pngs, velodyne scans sampled from that depth,
camera poses and masks of the thin structures (poles, trunks). It imports 01; 01 imports it only in
its demo. STYLES: the default world and four zero-shot variants (docs/zero_shot.md).

Run:   python -m helpers.synthetic_world --make DIR      (the default data set: 40 drives x 50 frames)
       python -m helpers.synthetic_world --styles DIR --first_drive 36 --num_drives 4
       python -m helpers.synthetic_world --render_bench  (synthetic frames/s on one core)
Tests: tests/test_synthetic_world.py
"""
import argparse
import importlib
import json
import multiprocessing
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from helpers.cli import add_dataclass_flags

# A module name cannot start with a digit: the numbered scripts are loaded by name.
data = importlib.import_module("01_data")

# World frame: x right, y DOWN, z along the street (like the camera frame), ground at y = 0.
# KITTI 2011_09_26's real velodyne-to-camera extrinsics, so the scans look like real ones:
VELO_TO_CAM_R = np.array([[7.533745e-03, -9.999714e-01, -6.166020e-04],
                          [1.480249e-02, 7.280733e-04, -9.998902e-01],
                          [9.998621e-01, 7.523790e-03, 1.480755e-02]])
VELO_TO_CAM_T = np.array([-4.069766e-03, -7.631618e-02, -2.717806e-01])
R_RECT_00 = np.array([[9.999239e-01, 9.837760e-03, -7.445048e-03],
                      [-9.869795e-03, 9.999421e-01, -4.278459e-03],
                      [7.402527e-03, 4.351614e-03, 9.999631e-01]])
SYNTH_DATE = "2000_01_01"  # the one "day" of the world: its date folder holds the calibration
SYNTH_VERSION = 3  # bump when the rendered content changes: older trees are rebuilt
CAMERA_HEIGHT = 1.65
STEREO_BASELINE = 0.54
MAX_GT_DEPTH = 80.0  # beyond this the renderer shows haze/sky and the ground truth is 0
HAZE_START = 55.0
LIDAR_ELEVATIONS = np.linspace(2.0, -24.8, 64)  # HDL-64E scan lines, degrees above the horizon

# Materials (index into the shading code) and the thin structures the thin_mask marks.
SKY, ROAD, SIDEWALK, YARD, FACADE, CAR, GLASS, TYRE, POLE, TRUNK, CROWN, SIGN = range(12)
THIN_MATERIALS = (POLE, TRUNK)
NOISE_FLAT = np.random.default_rng(20240101).uniform(-1.0, 1.0, 256 * 256).astype(np.float32)  # 256x256 grid


# ---- World styles: what a depth network could over-fit to, changed one family at a time ----
@dataclass(frozen=True)
class WorldStyle:
    """A world's look, camera and clutter; the defaults are the default run's world."""
    sun: tuple = (0.35, -0.85, -0.4)  # direction towards the sun (x right, y down, z along the street)
    ambient: float = 0.45  # shade of a face turned away from the sun
    sun_strength: float = 0.6  # added shade of a face lit head-on
    exposure: float = 1.0  # scales every colour (a darker or brighter camera)
    sky_horizon: tuple = (0.78, 0.82, 0.86)  # sky colour at the horizon (and of the haze)
    sky_zenith: tuple = (0.38, 0.52, 0.78)  # sky colour overhead
    facade_tone: tuple = (0.35, 0.8)  # range of a building's brightness
    facade_tint: tuple = (1.0, 1.0, 1.0)  # RGB factors on every facade colour (another town's paint)
    road_tone: tuple = (0.28, 0.4)  # range of the asphalt's brightness
    texture_gain: float = 1.0  # amplitude of the procedural textures of facades and road
    camera_height: float = 1.65  # camera above the road, metres (KITTI's car)
    focal: tuple = ()  # normalised (fx, fy) of the camera; () = KITTI's (0.58, 1.92)
    clutter: float = 1.0  # street furniture density: gaps between poles and trees are divided by this
    sign_share: float = 0.35  # fraction of poles that carry a sign


STYLES = {  # docs/zero_shot.md, "The world styles"
    "default": WorldStyle(),
    "dusk": WorldStyle(sun=(-0.75, -0.3, 0.6), ambient=0.3, sun_strength=0.8, exposure=0.75,
                       sky_horizon=(0.9, 0.66, 0.45), sky_zenith=(0.3, 0.3, 0.5)),
    "other_town": WorldStyle(facade_tone=(0.25, 0.65), facade_tint=(1.25, 0.8, 0.6), road_tone=(0.18, 0.28),
                             texture_gain=1.8),
    "van_camera": WorldStyle(camera_height=2.2, focal=(0.70, 0.70 * 416 / 128)),
    "cluttered": WorldStyle(clutter=2.5, sign_share=0.6),
}


class _Street:
    """Axis-aligned boxes of one drive's street plus street constants. A style never changes the order
    of the draws: the styles that change only the look render the very same streets."""

    def __init__(self, rng, z_start, z_end, style=STYLES["default"]):
        self.style = style
        self.road_half = rng.uniform(5.0, 7.0)  # road half width (m): two lanes + parking lanes
        self.side_w = rng.uniform(1.6, 3.2)  # sidewalk width
        self.road_tone = rng.uniform(*style.road_tone)
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
                tone = rng.uniform(*style.facade_tone)
                rgb = np.clip(tone * np.array([1.0, rng.uniform(0.8, 1.0), rng.uniform(0.6, 1.0)])
                              [rng.permutation(3)] * style.facade_tint, 0, 1)
                windows = (rng.uniform(2.2, 3.8), rng.uniform(2.8, 3.6), rng.uniform(0.35, 0.6),
                           rng.uniform(0.4, 0.6))
                box(s * (facade + setback), s * (facade + setback + 12.0), 0.0, rng.uniform(5.0, 22.0),
                    z, z + length, FACADE, rgb, windows)
                z += length
            z = z_start
            while z < z_end:  # a far row seen through the side streets
                length = rng.uniform(15.0, 40.0)
                dist = facade + rng.uniform(25.0, 50.0)
                rgb = np.clip(rng.uniform(0.35, 0.7) * np.array([1.0, 0.95, 0.85])[rng.permutation(3)]
                              * style.facade_tint, 0, 1)
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
                    tone = rng.uniform(0.22, 0.9)
                    rgb = np.clip(tone * np.array([1.0, rng.uniform(0.3, 1.0), rng.uniform(0.2, 1.0)])
                                  [rng.permutation(3)], 0.03, 1)
                    bottom, top = rng.uniform(0.28, 0.35), rng.uniform(0.9, 1.05)
                    roof = rng.uniform(1.38, 1.6)
                    overhangs = (rng.uniform(0.9, 1.3), rng.uniform(0.5, 0.9))
                    front, back = overhangs[:: 1 if rng.random() < 0.5 else -1]
                    box(x_in + s * 0.1, x_out - s * 0.1, 0.0, bottom, z + 0.4, z + length - 0.4, TYRE,
                        (0.05, 0.05, 0.05))
                    box(x_in, x_out, bottom, top, z, z + length, CAR, rgb)
                    box(x_in + s * 0.12, x_out - s * 0.12, top, roof, z + back, z + length - front, GLASS,
                        (0.17, 0.2, 0.25))
                z += length + (rng.uniform(0.6, 2.5) if rng.random() < 0.65 else rng.uniform(4.0, 14.0))
            z = z_start + rng.uniform(0.0, 10.0)
            while z < z_end:  # poles (some with a sign) near the curb
                x = s * (self.road_half + rng.uniform(0.3, 0.7))
                w = rng.uniform(0.1, 0.2)
                box(x - w / 2, x + w / 2, 0.0, rng.uniform(3.5, 8.0), z, z + w, POLE, (0.45, 0.45, 0.48))
                if rng.random() < style.sign_share:
                    sw, sh, y0 = rng.uniform(0.6, 0.9), rng.uniform(0.6, 0.9), rng.uniform(2.2, 3.0)
                    palette = [(0.1, 0.25, 0.6), (0.7, 0.1, 0.1), (0.85, 0.85, 0.8), (0.9, 0.7, 0.1)]
                    rgb = palette[rng.integers(4)]
                    box(x - s * sw, x + s * 0.05, y0, y0 + sh, z - 0.04, z, SIGN, rgb)
                z += rng.uniform(6.0, 25.0) / style.clutter
            z = z_start + rng.uniform(0.0, 10.0)
            while z < z_end:  # trees: trunk + crown at the back of the sidewalk
                if rng.random() < 0.7:
                    x = s * (facade - rng.uniform(0.4, 0.9))
                    w, h = rng.uniform(0.25, 0.45), rng.uniform(2.2, 3.5)
                    box(x - w / 2, x + w / 2, 0.0, h, z - w / 2, z + w / 2, TRUNK, (0.3, 0.22, 0.15))
                    cw = rng.uniform(2.0, 3.5)
                    tint = rng.uniform(0.8, 1.2)
                    box(x - cw / 2, x + cw / 2, h - 0.3, h + rng.uniform(2.0, 3.5), z - cw / 2, z + cw / 2,
                        CROWN, (0.18 * tint, 0.32, 0.12 * tint))
                z += rng.uniform(8.0, 25.0) / style.clutter
        self.bmin = np.array(bmin, dtype=np.float64)  # [K, 3]
        self.bmax = np.array(bmax, dtype=np.float64)
        self.mat = np.array(mat, dtype=np.int64)  # [K]
        self.color = np.array(color, dtype=np.float32)  # [K, 3]
        self.param = np.array(param, dtype=np.float32)  # [K, 4]


@lru_cache(maxsize=8)
def _camera_rays(height, width, focal=()):
    """Ray directions [H*W, 3] in the camera frame with z = 1 (so the ray parameter is the z-depth);
    focal: normalised (fx, fy), () = KITTI's."""
    K = data.normalised_K()
    if focal:
        K[0, 0], K[1, 1] = focal
    K = K * np.array([[width], [height], [1], [1]], dtype=np.float32)  # [4, 4] in pixels
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
    """Band-limited fractal noise: an octave (wavelength, amplitude) fades out from 4 to 2 pixel footprints,
    the renderer's anti-aliasing (no supersampling, no shimmer)."""
    total = np.zeros_like(u)
    for k, (lam, amp) in enumerate(octaves):
        weight = np.clip(lam / fp * 0.5 - 1.0, 0.0, 1.0)
        if not weight.any():
            continue
        total += amp * weight * _value_noise(u / lam + offset + 37.1 * k, v / (lam * stretch) + 0.5 * offset)
    return total


def _pulse(x, period, start, end, width):
    """Box-filtered periodic pulse: the fraction of [x - w/2, x + w/2] (measured in periods) that lies
    inside [start, end) of a period."""
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
    """Surface colour [n, 3] of pixels of one material: world-fixed procedural textures."""
    x, y, z = P[:, 0], P[:, 1], P[:, 2]
    u = np.where(axis == 0, z, x)  # horizontal coordinate on the face
    v = np.where(axis == 1, z, y)  # second coordinate (height on walls, along-street on the ground)
    if mat == ROAD:
        n = street.style.texture_gain * _fbm(x, z, fp, [(8.0, 0.15), (2.0, 0.15), (0.5, 0.18), (0.12, 0.2),
                                                        (0.03, 0.2)])
        col = (street.road_tone * (1.0 + n))[:, None] * np.array([1.0, 1.0, 1.04], dtype=np.float32)
        paint = _band(np.abs(x), street.road_half - 0.4, street.road_half - 0.28, fp)
        centre = _band(x, -0.075, 0.075, fp)
        if street.dashes:
            centre = centre * _pulse(z, 9.0, 0.0, 0.35, fp)
        paint = np.maximum(paint, centre)[:, None]
        return col * (1 - paint) + 0.85 * paint
    if mat == SIDEWALK:
        n = _fbm(u, v, fp, [(2.0, 0.08), (0.5, 0.1), (0.12, 0.1), (0.03, 0.08)], offset=11.0)
        tiles = np.maximum(_pulse(x, 0.6, 0.0, 0.05, fp), _pulse(z, 0.6, 0.0, 0.05, fp))
        joints = np.where(axis == 1, tiles, 0.0)
        return street.color[k] * (1.0 + n - 0.3 * joints)[:, None]
    if mat == YARD:
        n = _fbm(x, z, fp, [(3.0, 0.2), (0.6, 0.2), (0.15, 0.2), (0.04, 0.15)], offset=23.0)
        return street.yard_color.astype(np.float32)[None] * (1.0 + n)[:, None]
    base = street.color[k]  # [n, 3]
    if mat == FACADE:
        p = street.param[k]
        off = (k % 97).astype(np.float32) * 3.3
        n = street.style.texture_gain * _fbm(u, v, fp, [(3.0, 0.08), (0.8, 0.08), (0.2, 0.1), (0.05, 0.08)],
                                             offset=off)
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
            seam = (np.where(axis == 1, 0.0, _band(-y, 0.62, 0.66, fp))
                    + _pulse(u, 1.1, 0.0, 0.04, fp) * (axis != 1))
            col = col * (1.0 - 0.5 * np.clip(seam, 0, 1))[:, None]
        if mat == SIGN:
            lo_x, hi_x = street.bmin[k, 0], street.bmax[k, 0]
            lo_y, hi_y = street.bmin[k, 1], street.bmax[k, 1]
            inner = _band(x, lo_x + 0.06, hi_x - 0.06, fp) * _band(y, lo_y + 0.06, hi_y - 0.06, fp)
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
    """Ray-cast one view -> (rgb uint8 [H, W, 3], z-depth float32 [H, W] with 0 = sky/far, thin bool [H, W]).
    Each box is tested only on the pixels of its projected bounding rectangle (fast enough in numpy)."""
    style = street.style
    rays, fx, fy, cx, cy = _camera_rays(height, width, style.focal)
    R = np.asarray(cam_to_world[:3, :3], dtype=np.float64)
    o = np.asarray(cam_to_world[:3, 3], dtype=np.float64)
    d = rays @ R.T.astype(np.float32)  # [HW, 3] world directions, camera z = 1
    inv = [1.0 / np.where(np.abs(d[:, a]) < 1e-9, np.float32(1e-9), d[:, a]).reshape(height, width)
           for a in range(3)]  # 1 / direction, per axis, as [H, W] images
    # Ground plane y = 0 (the camera is at y = -1.65, y points down).
    down = d[:, 1] > 1e-6
    t = np.full(height * width, np.inf, dtype=np.float32)
    t[down] = -o[1] / d[down, 1]
    t = t.reshape(height, width)
    obj = np.full((height, width), -1, dtype=np.int64)
    # Cull and bound every box on screen at once: a box's part nearer along the street than 0.75x its
    # lateral distance is out of view (half-angle 41 deg + yaw); a box reaching behind gets the whole image.
    bmin, bmax = street.bmin, street.bmax
    lateral = np.maximum(np.maximum(bmin[:, 0] - o[0], o[0] - bmax[:, 0]), 0.0)
    z_lo = np.maximum(bmin[:, 2], o[2] + 0.75 * lateral)
    z_hi = np.minimum(bmax[:, 2], o[2] + MAX_GT_DEPTH + 15.0)
    keep = np.flatnonzero(z_lo < z_hi)
    xs = np.stack([bmin[keep, 0], bmax[keep, 0]], 1)
    ys = np.stack([bmin[keep, 1], bmax[keep, 1]], 1)
    zs = np.stack([z_lo[keep], z_hi[keep]], 1)
    corners = np.stack([np.stack([xs[:, i], ys[:, j], zs[:, l]], 1)
                        for i in (0, 1) for j in (0, 1) for l in (0, 1)], 1)  # [n, 8, 3]
    cam = (corners - o) @ R  # [n, 8, 3] camera coordinates
    front = cam[..., 2].min(1) > 0.05
    zc = np.where(cam[..., 2] > 0.05, cam[..., 2], 1.0)
    u, v = fx * cam[..., 0] / zc + cx, fy * cam[..., 1] / zc + cy
    c0 = np.where(front, np.clip(np.ceil(u.min(1)), 0, width), 0).astype(np.int64)
    c1 = np.where(front, np.clip(np.floor(u.max(1)) + 1, 0, width), width).astype(np.int64)
    r0 = np.where(front, np.clip(np.ceil(v.min(1)), 0, height), 0).astype(np.int64)
    r1 = np.where(front, np.clip(np.floor(v.max(1)) + 1, 0, height), height).astype(np.int64)
    lo, hi = bmin - o, bmax - o  # [K, 3] box bounds relative to the camera
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
    length = np.sqrt(np.einsum("ij,ij->i", d, d))  # [HW] |d|: the distance per unit of z-depth
    up = np.clip(-d[:, 1] / length * 4.0, 0.0, 1.0)[:, None]
    horizon = np.array(style.sky_horizon, dtype=np.float32)
    rgb[:] = horizon * (1 - up) + np.array(style.sky_zenith, dtype=np.float32) * up
    idx = np.flatnonzero(t <= MAX_GT_DEPTH)
    th, kk = t[idx], obj[idx]
    P = o[None].astype(np.float32) + th[:, None] * d[idx]  # [n, 3] hit points
    on_box = kk >= 0
    kb = np.where(on_box, kk, 0)
    gap_lo = np.abs(P - street.bmin[kb].astype(np.float32))
    gap_hi = np.abs(P - street.bmax[kb].astype(np.float32))
    gap = np.minimum(gap_lo, gap_hi)
    axis = np.where(on_box, np.argmin(gap, axis=1), 1)
    lower_face = np.take_along_axis(gap_lo < gap_hi, axis[:, None], 1)[:, 0]
    sign = np.where(on_box, np.where(lower_face, -1.0, 1.0), -1.0)
    paved = np.abs(P[:, 0]) < street.road_half  # the ground is road, side streets included, else yard
    for s, z0, z1 in street.side_streets:
        paved |= (P[:, 0] * s > 0) & (P[:, 2] >= z0) & (P[:, 2] < z1)
    mat = np.where(on_box, street.mat[kb], np.where(paved, ROAD, YARD))
    dn = np.abs(np.take_along_axis(d[idx], axis[:, None], 1)[:, 0]) / length[idx]  # |cos| of incidence
    dist = th * length[idx]
    fp = dist / fx / np.sqrt(np.maximum(dn, 0.05))  # pixel footprint on the surface (m)
    sun = np.array(style.sun) / np.linalg.norm(style.sun)  # towards the sun (y down)
    shade = (style.ambient + style.sun_strength * np.maximum(sun[axis] * sign, 0.0)).astype(np.float32)
    col = np.empty((len(idx), 3), dtype=np.float32)
    for m in np.unique(mat):
        sel = np.flatnonzero(mat == m)
        col[sel] = _albedo(street, int(m), kb[sel], P[sel], axis[sel], fp[sel].astype(np.float32))
    col *= shade[:, None]
    haze = np.clip((th - HAZE_START) / (MAX_GT_DEPTH - HAZE_START), 0.0, 1.0)[:, None] ** 1.5
    rgb[idx] = col * (1 - haze) + rgb[idx] * haze
    rgb *= np.float32(style.exposure)
    depth = np.where(t <= MAX_GT_DEPTH, t, 0.0).astype(np.float32)
    thin = np.isin(np.where(obj >= 0, street.mat[np.maximum(obj, 0)], SKY), THIN_MATERIALS) & (depth > 0)
    image = (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return image.reshape(height, width, 3), depth.reshape(height, width), thin.reshape(height, width)


def _trajectory(rng, num_frames, camera_height=CAMERA_HEIGHT):
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
        poses[i, :3, 3] = (x[i], -camera_height, z[i])
    return poses


def _synthetic_calibration(height, width, focal=()):
    """The entries of calib_cam_to_cam.txt and calib_velo_to_cam.txt for the synthetic cameras."""
    _, fx, fy, cx, cy = _camera_rays(height, width, focal)
    # KITTI's P_rect uses MATLAB's 1-based pixel coordinates (hence generate_depth_map's "- 1"), our
    # renderer 0-based ones: the principal point is written +1 so projected lidar points land on
    # the very pixel they were sampled from.
    P2 = np.array([[fx, 0, cx + 1, 0], [0, fy, cy + 1, 0], [0, 0, 1, 0]])
    P3 = P2.copy()
    P3[0, 3] = -fx * STEREO_BASELINE  # camera 3 sits 0.54 m to the right of camera 2
    size = [width, height]
    cam = {"calib_time": "synthetic", "corner_dist": "0.000000e+00", "R_rect_00": R_RECT_00,
           "S_rect_00": size, "P_rect_00": P2,
           "S_rect_02": size, "R_rect_02": np.eye(3), "P_rect_02": P2,
           "S_rect_03": size, "R_rect_03": np.eye(3), "P_rect_03": P3}
    velo = {"calib_time": "synthetic", "R": VELO_TO_CAM_R, "T": VELO_TO_CAM_T,
            "delta_f": "0.000000e+00 0.000000e+00", "delta_c": "0.000000e+00 0.000000e+00"}
    return cam, velo


def _lidar_from_depth(depth, image, height, width, focal=()):
    """Velodyne scan [N, 4] float32 sampled from the (quantised) GT along 64 scan lines: a point every
    second column, never column 0 (it would share Monodepth2's duplicate index with the previous row's
    last column), plus a mirrored eighth behind the sensor for the rear half of a sweep."""
    _, fx, fy, cx, cy = _camera_rays(height, width, focal)
    rows = np.unique(np.round(cy - fy * np.tan(np.radians(LIDAR_ELEVATIONS))).astype(np.int64))
    rows = rows[(rows >= 0) & (rows < height)]
    rr, cc = np.meshgrid(rows, np.arange(1, width, 2), indexing="ij")
    z = depth[rr, cc].astype(np.float64)
    ok = z > 0
    rr, cc, z = rr[ok], cc[ok], z[ok]
    cam = np.stack([(cc - cx) / fx * z, (rr - cy) / fy * z, z, np.ones_like(z)], 1)  # [N, 4]
    velo_to_rect = np.eye(4)
    velo_to_rect[:3, :3] = R_RECT_00 @ VELO_TO_CAM_R
    velo_to_rect[:3, 3] = R_RECT_00 @ VELO_TO_CAM_T
    velo = cam @ np.linalg.inv(velo_to_rect).T  # [N, 4]
    reflect = image[rr, cc].mean(1) / 255.0
    front = np.concatenate([velo[:, :3], reflect[:, None]], 1)
    rear = front[::8] * np.array([-1.0, -1.0, 1.0, 1.0])
    return np.concatenate([front, rear], 0).astype(np.float32)


def _drive_name(index):
    """<date>/<date>_drive_<index>_sync, as KITTI names drives."""
    return f"{SYNTH_DATE}/{SYNTH_DATE}_drive_{index:04d}_sync"


def _frame_files(root, folder, frame):
    return {"l": data.image_path(root, folder, frame, "l"),
            "r": data.image_path(root, folder, frame, "r"),
            "gt": data.gt_png_path(root, folder, frame, "l"),
            "gt_r": data.gt_png_path(root, folder, frame, "r"),
            "velo": data.velodyne_path(root, folder, frame),
            "thin": synthetic_thin_mask_path(root, folder, frame)}


def _make_drive(job):
    """Render and write one drive. job = (root, index, frames, H, W, seed, style name)."""
    root, index, num_frames, height, width, seed, style = job
    style = STYLES[style]
    rng = np.random.default_rng([seed, index])
    poses = _trajectory(rng, num_frames, style.camera_height)
    street = _Street(rng, poses[0, 2, 3] - 30.0, poses[-1, 2, 3] + MAX_GT_DEPTH + 30.0, style)
    folder = _drive_name(index)
    for path in _frame_files(root, folder, 0).values():
        path.parent.mkdir(parents=True, exist_ok=True)
    right = np.eye(4)
    right[0, 3] = STEREO_BASELINE
    for i, pose in enumerate(poses):
        files = _frame_files(root, folder, i)
        image, depth, thin = render_view(street, pose, height, width)
        Image.fromarray(image).save(files["l"], quality=92)
        image_r, depth_r, _ = render_view(street, pose @ right, height, width)
        Image.fromarray(image_r).save(files["r"], quality=92)
        data.write_depth_png(files["gt_r"], depth_r)  # so depth_gt also works for "r" lines
        depth_q = np.round(depth.astype(np.float64) * 256.0) / 256.0  # what the png stores
        data.write_depth_png(files["gt"], depth_q)
        Image.fromarray(thin.astype(np.uint8) * 255).save(files["thin"], compress_level=1)
        _lidar_from_depth(depth_q, image, height, width, style.focal).tofile(files["velo"])
    rows = ("".join(" ".join(f"{x:.9e}" for x in p[:3].ravel()) + "\n") for p in poses)
    (Path(root) / folder / "poses.txt").write_text("".join(rows))
    return num_frames


def make_synthetic_kitti(root, num_drives=40, frames_per_drive=50, height=128, width=416, seed=0, workers=1,
                         style="default", test_only=False, first_drive=0):
    """Write the synthetic mini-KITTI tree under root (KITTI raw layout + splits/synthetic); return root.
    About 10% of the drives test, 10% validation (at least one each), the rest train (both cameras);
    test_only: every drive a test drive. A complete tree made with the same arguments is kept."""
    root = Path(root)
    if num_drives < (1 if test_only else 3) or frames_per_drive < 3:
        raise ValueError(f"make_synthetic_kitti: need num_drives >= 3 (1 with test_only) and frames_per_drive "
                         f">= 3, got {num_drives} and {frames_per_drive}")
    if height < 1 or width < 1:
        raise ValueError(f"make_synthetic_kitti: need a positive image size, "
                         f"got height {height} and width {width}")
    if style not in STYLES:
        raise ValueError(f"unknown world style {style!r}; choose one of {', '.join(STYLES)}")
    args = {"version": SYNTH_VERSION, "num_drives": num_drives, "frames_per_drive": frames_per_drive,
            "height": height, "width": width, "seed": seed}
    extra = {"style": style if style != "default" else None, "test_only": test_only or None,
             "first_drive": first_drive or None}
    args.update({k: v for k, v in extra.items() if v is not None})  # the default world's marker as before
    marker = root / data.SYNTH_MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == args:
                return root
        except ValueError:
            pass
        marker.unlink()  # a tree made with other arguments: rebuild it in place
    cam, velo = _synthetic_calibration(height, width, STYLES[style].focal)
    calib = data.calib_folder(root, _drive_name(first_drive))
    data.write_calib_file(calib / data.CAM_TO_CAM_FILE, cam)
    data.write_calib_file(calib / data.VELO_TO_CAM_FILE, velo)
    drives = range(first_drive, first_drive + num_drives)
    jobs = [(str(root), i, frames_per_drive, height, width, seed, style) for i in drives]
    if workers > 1:
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else None)
        with context.Pool(workers) as pool:
            pool.map(_make_drive, jobs, chunksize=1)
    else:
        for job in jobs:
            _make_drive(job)
    n_test = num_drives if test_only else max(1, round(0.1 * num_drives))
    n_val = 0 if test_only else max(1, round(0.1 * num_drives))
    train_ids, val_ids, test_ids = (drives[:num_drives - n_test - n_val],
                                    drives[num_drives - n_test - n_val:num_drives - n_test], drives[num_drives - n_test:])
    inner = range(1, frames_per_drive - 1)
    lists = {"train": [(_drive_name(d), f, s) for d in train_ids for f in inner for s in "lr"],
             "val": [(_drive_name(d), f, "l") for d in val_ids for f in inner],
             "test": [(_drive_name(d), f, "l") for d in test_ids for f in inner]}
    for kind, lines in lists.items():
        data.write_split(data.synthetic_split_path(root, kind), lines)
    marker.write_text(json.dumps(args))  # written last: its presence means "complete"
    return root


def read_synthetic_poses(drive_dir):
    """poses.txt of a synthetic drive -> [N, 4, 4] camera-2-to-world matrices."""
    path = Path(drive_dir) / "poses.txt"
    if not path.is_file():
        raise data.DataError(f"poses file not found: {path}")
    rows = np.loadtxt(path, ndmin=2)
    if rows.shape[1] != 12:
        raise data.DataError(f"poses file {path}: expected 12 numbers per line, got {rows.shape[1]}")
    poses = np.tile(np.eye(4), (len(rows), 1, 1))
    poses[:, :3, :] = rows.reshape(-1, 3, 4)
    return poses


def synthetic_thin_mask_path(data_path, folder, frame):
    """Path of a synthetic frame's thin-structure mask (uint8 0/255 png, camera 2)."""
    return Path(data_path) / folder / "thin_mask" / "image_02" / f"{int(frame):010d}.png"


def load_thin_masks(data_path, lines):
    """Thin-structure masks [H, W] bool of the given split lines; None when absent (not a synthetic world)."""
    masks = []
    for folder, frame, _ in lines:
        path = synthetic_thin_mask_path(data_path, folder, frame)
        if not path.is_file():
            return None
        masks.append(np.array(Image.open(path)) > 127)
    return masks


def mean_training_depth(data_path, train_lines):
    """07_eval.py's baseline: the per-pixel mean [H, W] of the training frames' ground truth (zeros
    ignored); never-observed pixels get the global mean."""
    total = count = None
    for folder, frame, side in train_lines:
        path = data.gt_png_path(data_path, folder, frame, side)
        if not path.is_file():
            continue
        gt = data.read_depth_png(path).astype(np.float64)
        total = gt if total is None else total + gt  # zeros add nothing
        count = (gt > 0).astype(np.float64) if count is None else count + (gt > 0)
    if total is None:
        raise data.DataError(f"no training ground truth under {data_path} for the mean-depth baseline")
    fill = total.sum() / max(count.sum(), 1.0)
    return np.where(count > 0, total / np.maximum(count, 1.0), fill).astype(np.float32)


# ---- Engineering: not needed to understand SQLDepth ----
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
        _make_drive((tmp, 0, frames, height, width, seed, "default"))
        frames_per_s = frames / (time.perf_counter() - start)
    return images_per_s, frames_per_s


@dataclass
class WorldConfig:
    """What `python -m helpers.synthetic_world` does."""
    make: str = ""  # build the synthetic data set in this folder (skipped when a complete one is there)
    num_drives: int = 40  # synthetic drives (10% test, 10% val, at least one each)
    frames_per_drive: int = 50  # frames per drive (about 1 m apart)
    height: int = 128  # rendered image height (the default run's; KITTI's images are 375)
    width: int = 416  # rendered image width (KITTI's: 1242)
    seed: int = 0  # world seed: the same seed renders the same pixels
    workers: int = 2  # processes rendering drives in parallel for --make
    style: str = "default"  # world style of --make (STYLES: default, dusk, other_town, van_camera, cluttered)
    test_only: bool = False  # --make: every drive is a test drive (a world for zero-shot evaluation)
    styles: str = ""  # render every style but the default into DIR/<style>, test drives only
    first_drive: int = 0  # index of the first drive (36 with --num_drives 4: the default world's test drives)
    render_bench: bool = False  # time the renderer on one core (images/s and complete frames/s)


def main(argv=None):
    """Returns the exit status (2 = bad input, one line)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_dataclass_flags(parser, WorldConfig)
    cfg = WorldConfig(**vars(parser.parse_args(argv)))
    try:
        if cfg.render_bench:
            images, frames = render_benchmark(cfg.height, cfg.width)
            print(f"renderer {cfg.width}x{cfg.height}: {images:.1f} images/s on one core; "
                  f"{frames:.1f} frames/s (2 images + GT + lidar + files)")
        elif cfg.make:
            start = time.perf_counter()
            make_synthetic_kitti(cfg.make, cfg.num_drives, cfg.frames_per_drive, cfg.height, cfg.width,
                                 cfg.seed, cfg.workers, cfg.style, cfg.test_only, cfg.first_drive)
            print(f"synthetic data set in {cfg.make} ({time.perf_counter() - start:.1f} s)")
        elif cfg.styles:
            for name in (n for n in STYLES if n != "default"):
                start = time.perf_counter()
                folder = Path(cfg.styles) / name
                make_synthetic_kitti(folder, cfg.num_drives, cfg.frames_per_drive, cfg.height, cfg.width, cfg.seed,
                                     cfg.workers, name, test_only=True, first_drive=cfg.first_drive)
                print(f"style {name}: {folder} ({time.perf_counter() - start:.1f} s)")
        else:
            parser.print_help()
    except (data.DataError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
