"""kitti_prepare - KITTI raw made ready for training and evaluation, as two commands.

Not a reading step: nothing in it is SQLDepth. Pillow and the standard library only, one process per
core, resumable (a finished file is never redone: run the same command again after a stop), one
`error: ...` line per bad file while the others go on (exit 2 at the end when there was one):

  python -m helpers.kitti_prepare --to_jpg --data_path kitti_data [--delete_png]
      every camera image <date>/<drive>/image_0N/data/*.png -> the same name .jpg, as Monodepth2's
      README recommends (ImageMagick `-quality 92 -sampling-factor 2x2,1x1,1x1`: JPEG quality 92,
      4:2:0 chroma), which the default `--img_ext .jpg` of 06_train.py expects. Only image folders
      are touched: the depth ground truth (also png, 16-bit) never is. Each jpg is written to a
      temporary name and renamed, so an interrupted run leaves no half file; --delete_png removes
      each png after its jpg is in place (Monodepth2's command deletes them too).
  python -m helpers.kitti_prepare --depth_gt DIR --data_path kitti_data
      KITTI's depth-completion ground truth (data_depth_annotated.zip: DIR/{train,val}/<drive>/
      proj_depth/groundtruth/image_0{2,3}/*.png) arranged as <date>/<drive>/proj_depth/... under the
      raw data, where the eigen_benchmark split of 07_eval.py reads it. Hard links where DIR is on
      the same file system (no extra space, DIR stays as it was), copies elsewhere.
Tests: tests/test_kitti_prepare.py.
"""
import argparse
import os
import re
import shutil
import sys
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path

from PIL import Image

from helpers.cli import add_dataclass_flags, one_line  # the command line of every script
from helpers.run_folder import atomic_path  # the one atomic write

JPEG_QUALITY = 92       # Monodepth2's README: convert -quality 92
JPEG_SUBSAMPLING = 2    # Pillow's 4:2:0, ImageMagick's -sampling-factor 2x2,1x1,1x1
DRIVE = re.compile(r"^(\d{4}_\d{2}_\d{2})_drive_\d{4}_sync$")   # 2011_09_26_drive_0001_sync -> its date


@dataclass
class PrepareConfig:
    """What `python kitti_prepare.py` does: --to_jpg, --depth_gt DIR, or both."""
    data_path: str = "kitti_data"  # KITTI raw root: <date>/<drive>/image_0N/data/*.png
    to_jpg: bool = False  # convert the camera pngs under --data_path to jpg (quality 92, 4:2:0 chroma)
    delete_png: bool = False  # with --to_jpg: remove each png once its jpg is in place
    depth_gt: str = ""  # KITTI depth-completion folder holding train/ and val/: arrange it under --data_path
    workers: int = 0  # parallel processes (0 = one per core)


def convert_one(job):
    """(png, delete) -> ("done" | "skipped", png) or ("error", message): one image to jpg."""
    png, delete = job
    jpg = png.with_suffix(".jpg")
    if jpg.exists():                             # done by an earlier run (written atomically)
        if delete:
            png.unlink(missing_ok=True)
        return "skipped", str(png)
    try:
        with atomic_path(jpg) as tmp, Image.open(png) as im:
            im = im if im.mode in ("RGB", "L") else im.convert("RGB")   # KITTI: RGB (cams 2, 3), L (0, 1)
            im.save(tmp, "JPEG", quality=JPEG_QUALITY, subsampling=JPEG_SUBSAMPLING)
    except (OSError, SyntaxError, ValueError) as err:
        return "error", f"cannot convert {png}: {one_line(err)}"
    if delete:
        png.unlink()
    return "done", str(png)


def camera_pngs(data_path):
    """The camera images of a KITTI raw tree (never the depth ground truth's pngs), sorted."""
    return sorted(Path(data_path).glob("*/*/image_0[0-3]/data/*.png"))


def gt_jobs(gt_root, data_path):
    """([(source png, target png)], [error lines]) for a depth-completion folder (train/, val/)."""
    gt_root, jobs, errors = Path(gt_root), [], []
    parts = [gt_root / part for part in ("train", "val") if (gt_root / part).is_dir()]
    if not parts:
        raise FileNotFoundError(f"--depth_gt {gt_root}: expected the train/ and val/ folders of KITTI's "
                                f"data_depth_annotated.zip in it")
    for part in parts:
        for drive in sorted(p for p in part.iterdir() if p.is_dir()):
            match = DRIVE.match(drive.name)
            if not match:
                errors.append(f"error: {drive} is not a KITTI drive folder (<date>_drive_NNNN_sync): skipped")
                continue
            target = Path(data_path) / match.group(1) / drive.name
            for src in sorted(drive.glob("proj_depth/groundtruth/image_0[23]/*.png")):
                jobs.append((src, target / src.relative_to(drive)))
    return jobs, errors


def place_one(job):
    """(source, target) -> ("done" | "skipped", target) or ("error", message): one GT png, checked
    (a 16-bit png whose chunks are intact) and hard-linked, or copied across file systems."""
    src, dst = job
    if dst.exists() and dst.stat().st_size == src.stat().st_size:
        return "skipped", str(dst)
    try:
        with Image.open(src) as im:
            if im.mode not in ("I", "I;16", "I;16B"):
                return "error", f"{src} is not a 16-bit depth png (mode {im.mode})"
            im.verify()
        dst.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(dst) as tmp:
            try:
                os.link(src, tmp)
            except OSError:                      # another file system (or no links): copy
                shutil.copyfile(src, tmp)
    except (OSError, SyntaxError, ValueError) as err:
        return "error", f"cannot place {src}: {one_line(err)}"
    return "done", str(dst)


def run_jobs(fn, jobs, workers, what):
    """Run fn over jobs on `workers` processes; prints each error line and a summary; returns the
    number of errors."""
    counts = {"done": 0, "skipped": 0, "error": 0}
    with Pool(workers or os.cpu_count() or 1) as pool:
        for status, detail in pool.imap_unordered(fn, jobs, chunksize=32):
            counts[status] += 1
            if status == "error":
                print(detail if detail.startswith("error:") else f"error: {detail}", file=sys.stderr, flush=True)
    print(f"{what}: {counts['done']} done, {counts['skipped']} already done, {counts['error']} failed")
    return counts["error"]


def main(argv=None):
    """Command line generated from PrepareConfig; exit 0, or 2 when any file was bad (one line each)."""
    parser = argparse.ArgumentParser(description="Prepare KITTI raw: png -> jpg, depth-completion GT arranged.")
    add_dataclass_flags(parser, PrepareConfig)
    cfg = PrepareConfig(**vars(parser.parse_args(argv)))
    try:
        if not (cfg.to_jpg or cfg.depth_gt):
            raise ValueError("nothing to do: give --to_jpg and/or --depth_gt DIR")
        if not Path(cfg.data_path).is_dir():
            raise FileNotFoundError(f"--data_path {cfg.data_path}: no such folder")
        bad = 0
        if cfg.to_jpg:
            pngs = camera_pngs(cfg.data_path)
            print(f"png -> jpg: {len(pngs)} camera pngs under {cfg.data_path}")
            bad += run_jobs(convert_one, [(p, cfg.delete_png) for p in pngs], cfg.workers, "png -> jpg")
        if cfg.depth_gt:
            jobs, errors = gt_jobs(cfg.depth_gt, cfg.data_path)
            for line in errors:
                print(line, file=sys.stderr)
            print(f"depth GT: {len(jobs)} pngs from {cfg.depth_gt} -> {cfg.data_path}/<date>/<drive>/proj_depth")
            bad += len(errors) + run_jobs(place_one, jobs, cfg.workers, "depth GT")
    except (OSError, ValueError) as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    return 2 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
