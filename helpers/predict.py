"""predict - depth for your own images with a trained (or the released) model: pictures, arrays, 3D.

Not a reading step (docs/kitti.md, "Depth for your own images"):
  python -m helpers.predict --checkpoint runs/RUN/best.pt --images my_images/ --ply
  python -m helpers.predict --official PATH/TO/RELEASED_MODEL --images DIR
Tests: tests/test_predict.py.
"""
import argparse
import importlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from helpers.distributed_training import choose_device
from helpers.cli import add_dataclass_flags, one_line
from helpers import cpu_threads
from helpers import model_files
from helpers import figures

# A module name cannot start with a digit: the numbered scripts are loaded by name.
data = importlib.import_module("01_data")
evaluation = importlib.import_module("07_eval")

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm")


def list_images(spec):
    """Image paths of --images: one file, every image of a folder (sorted), or a glob pattern."""
    path = Path(spec)
    if path.is_file():
        return [path]
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    else:
        found = sorted(p for p in Path(path.anchor or ".").glob(str(path.relative_to(path.anchor or ".")))
                       if p.suffix.lower() in IMAGE_EXTS) if any(c in spec for c in "*?[") else []
    if not found:
        raise data.DataError(f"--images {spec}: no image file, folder of images or matching frames")
    return found


def _output_names(paths):
    """File stems for the outputs; frames of different drives with equal names get their folders too."""
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    common = Path(os.path.commonpath([str(p.resolve().parent) for p in paths]))
    return ["__".join(p.resolve().with_suffix("").relative_to(common).parts) for p in paths]


def write_ply(path, points, colors, ascii=False):
    """A PLY 1.0 point cloud: points [N, 3] float32 metres, colors [N, 3] uint8."""
    header = ("ply\nformat {} 1.0\nelement vertex {}\nproperty float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n").format(
        "ascii" if ascii else "binary_little_endian", len(points))
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        if ascii:
            for p, c in zip(points, colors):
                f.write(f"{p[0]:.4f} {p[1]:.4f} {p[2]:.4f} {c[0]} {c[1]} {c[2]}\n".encode("ascii"))
        else:
            vertex = np.dtype([("xyz", "<f4", 3), ("rgb", "u1", 3)])  # 15 bytes per point, no padding
            rows = np.empty(len(points), vertex)
            rows["xyz"], rows["rgb"] = points, colors
            f.write(rows.tobytes())


def back_project(depth, K):
    """Camera-frame points [H*W, 3] from depth [H, W] and pixel intrinsics K (3x3 or 4x4)."""
    h, w = depth.shape
    v, u = np.mgrid[0:h, 0:w].astype(np.float32)  # [H, W] pixel rows, columns
    x = (u - K[0, 2]) / K[0, 0] * depth  # X right, Y down, Z forward (camera convention)
    y = (v - K[1, 2]) / K[1, 1] * depth
    return np.stack([x, y, depth], -1).reshape(-1, 3)


def run_predict(model, config, cfg, device, out_dir):
    """<stem>_depth.png (colour), <stem>_depth.npy (metres or relative) and <stem>.ply for cfg.images."""
    height, width = int(config["height"]), int(config["width"])
    scale = evaluation.STEREO_SCALE_FACTOR if cfg.eval_stereo else 1.0
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = list_images(cfg.images)
    for path, name in zip(paths, _output_names(paths)):
        try:
            image = Image.open(path).convert("RGB")
        except OSError as err:
            raise data.DataError(f"cannot read image {path}: {one_line(err)}") from None
        w0, h0 = image.size
        net_in = np.asarray(image.resize((width, height), Image.LANCZOS), np.float32) / 255.0  # [H, W, 3]
        tensor = torch.from_numpy(net_in).permute(2, 0, 1)[None].to(device)  # [1, 3, H, W]
        depth = evaluation.predict_depth(model, tensor, cfg.post_process)[0]
        depth = evaluation.resize_to(depth, h0, w0) * scale  # [h0, w0]
        stem = out_dir / f"{name}_depth"
        Image.fromarray(figures.colorize_inverse_depth(depth)).save(stem.with_suffix(".png"))
        np.save(stem.with_suffix(".npy"), depth.astype(np.float32))
        written = [stem.with_suffix(".png"), stem.with_suffix(".npy")]
        if cfg.ply:
            if cfg.fx > 0 and cfg.fy > 0:
                K = np.array([[cfg.fx, 0, cfg.cx or w0 / 2], [0, cfg.fy, cfg.cy or h0 / 2], [0, 0, 1]])
            else:  # KITTI's normalised intrinsics scaled to this image (a guess for other cameras)
                K = data.scale_K(data.normalised_K(), w0, h0)
            points = back_project(depth, K)
            keep = np.isfinite(points).all(1) & (depth.reshape(-1) < evaluation.MAX_DEPTH * scale)
            colors = np.asarray(image, np.uint8).reshape(-1, 3)
            write_ply(out_dir / f"{name}.ply", points[keep].astype(np.float32), colors[keep], cfg.ply_ascii)
            written.append(out_dir / f"{name}.ply")
        print(f"{path} -> " + ", ".join(str(p) for p in written))
    return 0


@dataclass
class PredictConfig:
    """What `python -m helpers.predict` does: depth (and a point cloud) for your images."""
    images: str = ""  # an image, a folder of images or a glob pattern ("frames/*.png")
    checkpoint: str = ""  # our checkpoint (RUN/best.pt or RUN/ckpt.pt)
    official: str = ""  # or a folder with the released official encoder.pth + depth.pth
    out: str = ""  # output folder ("" = predict/ next to the checkpoint)
    post_process: bool = False  # flip averaging with 5% border ramps (Monodepth2 / official)
    eval_stereo: bool = False  # a stereo-trained model: depth in metres (x5.4) instead of relative
    ply: bool = False  # also write a coloured point cloud per image
    ply_ascii: bool = False  # write ASCII PLY instead of binary little-endian
    fx: float = 0.0  # --ply intrinsics in pixels of the input image (0 = KITTI's normalised K)
    fy: float = 0.0  # focal length y, pixels
    cx: float = 0.0  # principal point x, pixels
    cy: float = 0.0  # principal point y, pixels
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # CPU threads for PyTorch ops (0 = auto: the cores free at the start)


def main(argv=None):
    """Returns the exit status (0 ok, 2 bad input with one `error:` line)."""
    parser = argparse.ArgumentParser(description="Depth for your own images (PNG, .npy, optional PLY).")
    add_dataclass_flags(parser, PredictConfig)
    cfg = PredictConfig(**vars(parser.parse_args(argv)))
    try:
        if bool(cfg.checkpoint) == bool(cfg.official) or not cfg.images:
            raise data.DataError("give --images and exactly one of --checkpoint FILE or --official DIR")
        device = choose_device(cfg.device)
        cpu_threads.use_threads(cfg.threads, say=False)
        model, config, source_dir = model_files.load_either(cfg.checkpoint, cfg.official, device)
        return run_predict(model, config, cfg, device, Path(cfg.out) if cfg.out else source_dir / "predict")
    except (data.DataError, ValueError, OSError) as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
