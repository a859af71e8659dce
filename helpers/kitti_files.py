"""kitti_files - KITTI's files made ready: the split lists (download, SHA-256, leakage check), jpgs, depth GT.

Not a reading step. `get_split_file` finds the list a run asks for (06_train.py, 07_eval.py); a training
split that shares a drive with the evaluation split is refused. Two commands prepare KITTI raw
(docs/kitti.md, "Data"), one process per core, resumable, one `error: ...` line per bad file:

  python -m helpers.kitti_files --to_jpg --data_path kitti_data [--delete_png]
  python -m helpers.kitti_files --depth_gt DIR --data_path kitti_data
Tests: tests/test_split_lists.py, tests/test_kitti_prepare.py.
"""
import argparse
import hashlib
import importlib
import os
import re
import shutil
import sys
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path

from PIL import Image

from helpers.cli import add_dataclass_flags, one_line
from helpers.run_record import atomic_path

data = importlib.import_module("01_data")  # a module name cannot start with a digit: loaded by name


class SplitOverlapError(data.DataError):
    """The training split shares drives with the evaluation split (train/test leakage)."""


# Training and test splits must share no drive: an older official SQLDepth train list shared 21 of
# the 28 Eigen test drives, and with them 451 of the 697 test frames (docs/kitti.md).
SPLIT_URL_BASE = "https://raw.githubusercontent.com/nianticlabs/monodepth2/master/splits"
SPLIT_SHA256 = {  # the standard lists
    ("eigen", "test"): "e226d4ca16e0e6e9695435014347dcf973588531330536fd8a68d298ef091a6b",
    ("eigen_benchmark", "test"): "d56e5e509e6960a01fb93795f85028ac6e4a82ad40e64b6e968988e4db95b9be",
    ("eigen_zhou", "train"): "00173a231642151c4693274e701ddd4cae7916520a757c7a94eae8e1173f7b0c",
    ("eigen_zhou", "val"): "64a868b8d2c66c3979a2d74c22ea2e9146850d5b9f5786ed8e5f92201ba1ad04",
}
SPLIT_LINES = {("eigen", "test"): 697, ("eigen_benchmark", "test"): 652,  # for the "not standard" note
               ("eigen_zhou", "train"): 39810, ("eigen_zhou", "val"): 4424}
DOWNLOAD_MARK = ".sha256"  # NAME/KIND_files.txt.sha256: written next to a list this program downloaded


def default_split_dir():
    """Cache folder of downloaded split lists: $SQLDEPTH_SPLIT_DIR or ~/.cache/sqldepth/splits."""
    return Path(os.environ.get("SQLDEPTH_SPLIT_DIR", Path.home() / ".cache" / "sqldepth" / "splits"))


def write_atomic(path, payload):
    """Write bytes to `path` atomically (several processes may fetch one file at once)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "xb") as f:  # "x": never share a file with another writer
        f.write(payload)


def get_split_file(name, kind, split_dir=None, *, data_path=None, base_url=None, timeout=20.0, log=print):
    """Path of split list NAME/KIND_files.txt in split_dir (default `default_split_dir()`), a missing
    standard list downloaded and SHA-256 checked (docs/kitti.md, "Split lists"); "synthetic" is the
    world's list under data_path. A DataError names what is missing."""
    if name == "synthetic":
        if data_path is None:
            raise data.DataError("split 'synthetic' needs the data folder (data_path)")
        path = data.synthetic_split_path(data_path, kind)
        if not path.is_file():
            raise data.DataError(f"split file not found: {path} (make the world: python -m helpers.synthetic_world --make DIR)")
        return path
    expected = SPLIT_SHA256.get((name, kind))
    path = Path(split_dir if split_dir is not None else default_split_dir()) / name / f"{kind}_files.txt"
    mark = path.with_name(path.name + DOWNLOAD_MARK)
    if path.is_file():
        got = hashlib.sha256(path.read_bytes()).hexdigest()
        if expected is None or got == expected:
            return path
        if mark.is_file():  # our own download, changed since: never train on a silently altered list
            raise data.DataError(f"split file {path} has SHA-256 {got}, expected {expected}: "
                            f"delete it to download it again (or delete {mark.name} if the list is yours)")
        if log is not None:
            count = sum(1 for line in path.read_text().splitlines() if line.strip())
            standard = SPLIT_LINES.get((name, kind))
            log(f"note: {path} differs from the standard {name}/{kind} list"
                f"{f' ({standard:,} lines)' if standard else ''}; yours has {count:,} lines "
                f"and is used as given")
        return path
    if expected is None:
        known = ", ".join(f"{n}/{k}" for n, k in SPLIT_SHA256)
        raise data.DataError(f"split file not found: {path} ({name}/{kind} is not a list this program downloads "
                        f"({known}); a split NAME is NAME/train_files.txt + val_files.txt in --split_dir)")
    url = f"{(base_url or SPLIT_URL_BASE).rstrip('/')}/{name}/{kind}_files.txt"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            payload = response.read()
    except (urllib.error.URLError, OSError) as err:
        # what was looked for where first: a user who passed --split_dir wants to know it was read
        looked = f"in --split_dir {split_dir}" if split_dir is not None else "in the download cache"
        fix = (f"put {name}/{kind}_files.txt there" if split_dir is not None else
               f"put {name}/{kind}_files.txt in a folder and pass --split_dir FOLDER")
        raise data.DataError(f"split file not found: {path.resolve()} ({looked}), and it cannot be downloaded "
                             f"from {url} ({getattr(err, 'reason', err)}): {fix}") from None
    got = hashlib.sha256(payload).hexdigest()
    if got != expected:
        raise data.DataError(f"downloaded {url} has SHA-256 {got}, expected {expected}")
    write_atomic(path, payload)  # the list first: a list without its mark only counts as the user's
    write_atomic(mark, f"{got}  {url}\n".encode())
    return path


def check_split_overlap(train_lines, eval_lines):
    """Drives present in both splits -> [(drive, n_train_lines, n_eval_lines)], sorted by drive."""
    train_count = Counter(folder for folder, _, _ in train_lines)
    eval_count = Counter(folder for folder, _, _ in eval_lines)
    shared = sorted(set(train_count) & set(eval_count))
    return [(drive, train_count[drive], eval_count[drive]) for drive in shared]


def describe_overlap(shared, num_eval_lines, against="the evaluation split"):
    """'N drive(s) with <against> (M of its T test frames): drive (train a, eval b), ...'."""
    frames = sum(n for _, _, n in shared)
    listing = ", ".join(f"{d} (train {a}, eval {b})" for d, a, b in shared)
    return f"{len(shared)} drive(s) with {against} ({frames} of its {num_eval_lines} test frames): {listing}"


def require_disjoint_splits(train_lines, eval_lines, allow_overlap=False, what="training split",
                            against="the evaluation split"):
    """SplitOverlapError naming the shared drives unless allow_overlap; returns the shared drives."""
    shared = check_split_overlap(train_lines, eval_lines)
    if shared and not allow_overlap:
        raise SplitOverlapError(f"{what} shares {describe_overlap(shared, len(eval_lines), against)} "
                                f"(train/test leakage); pass --allow_split_overlap to train anyway")
    return shared


# ---- KITTI raw made ready: --to_jpg, --depth_gt ----
JPEG_QUALITY = 92       # Monodepth2's README: convert -quality 92
JPEG_SUBSAMPLING = 2    # Pillow's 4:2:0, ImageMagick's -sampling-factor 2x2,1x1,1x1
DRIVE = re.compile(r"^(\d{4}_\d{2}_\d{2})_drive_\d{4}_sync$")   # 2011_09_26_drive_0001_sync -> its date


@dataclass
class PrepareConfig:
    """What `python -m helpers.kitti_files` does: --to_jpg, --depth_gt DIR, or both."""
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
    """(source, target) -> ("done" | "skipped", target) or ("error", message): one GT png, checked,
    hard-linked (copied across file systems)."""
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
    """Run fn over jobs on `workers` processes, printing each error line and a summary; returns the errors."""
    counts = {"done": 0, "skipped": 0, "error": 0}
    with Pool(workers or os.cpu_count() or 1) as pool:
        for status, detail in pool.imap_unordered(fn, jobs, chunksize=32):
            counts[status] += 1
            if status == "error":
                print(detail if detail.startswith("error:") else f"error: {detail}", file=sys.stderr, flush=True)
    print(f"{what}: {counts['done']} done, {counts['skipped']} already done, {counts['error']} failed")
    return counts["error"]


def main(argv=None):
    """Exit 0, or 2 when any file was bad (one line each)."""
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
