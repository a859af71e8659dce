"""color_jitter - torchvision's ColorJitter (brightness, contrast, saturation, hue) in numpy.

Serves 01_data.KittiRaw. numpy, not torch: numpy stays single-threaded, so a DataLoader without
workers does not fight the training loop for cores. Tests: tests/test_01_data.py.
"""
import numpy as np

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
    k = np.remainder(HUE_OFFSETS.reshape(3, 1, 1) + 6.0 * hue, 6.0)  # [..., 3, H, W]
    return val * (1.0 - sat * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0))


def shift_hue(rgb, hue):
    """Rotate the HSV hue of [F, 3, H, W] RGB by `hue` turns -> new array: hsv_to_rgb(rgb_to_hsv(x) with
    h + hue) without branches (the loader's most expensive step; numpy's masked selects cost ~30x an
    add). v = max, d = v*s = max - min, pos = 6h from 0/1 masks; clamp(min(k, 4 - k), 0, 1) equals
    clamp(2 - dist(k - 2), 0, 1), and for |y| <= 9 the 6-periodic dist(y) is |3 - ||y| - 3|| (no modulo)."""
    rgb = np.asarray(rgb, dtype=np.float32)
    r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    hi = np.maximum(r, g)
    np.maximum(hi, b, out=hi)
    d = np.minimum(r, g)
    np.minimum(d, b, out=d)
    np.subtract(hi, d, out=d)  # [F, H, W] = v * s
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
    y = pos[:, None] + (HUE_CENTRES + shift)  # [F, 3, H, W]
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
    """One colour jitter applied to all frames [F, 3, H, W] (float in [0, 1] or uint8) -> new float32 array.
    Fixed order brightness -> contrast -> saturation -> hue (torchvision draws a random order: a
    documented deviation); the clamp to [0, 1] is skipped for a factor <= 1, which stays within it."""
    imgs = np.asarray(imgs)
    scale = brightness / 255.0 if imgs.dtype == np.uint8 else brightness
    x = np.multiply(imgs, np.float32(scale), dtype=np.float32, order="C")
    if brightness > 1.0:
        np.clip(x, 0.0, 1.0, out=x)
    frames = x.shape[0]
    mean = x.reshape(frames, 3, -1).mean(axis=2, dtype=np.float64) @ np.array(LUMA)  # [F] mean grey
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
