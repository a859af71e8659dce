"""split_lists - the standard KITTI split lists: download, SHA-256 check, and the train/test leakage check.

Serves 06_train.py and 07_eval.py (through helpers/training_data.py and directly): a split list is
Monodepth2's `folder frame side` file, read by 01_data.read_split. This module finds the list a run
asks for: the synthetic world's own lists, any list a user puts in --split_dir (used as given), or
one of the standard lists (eigen, eigen_benchmark, eigen_zhou) downloaded once from Monodepth2's
repository and held to its known SHA-256. It also refuses a training split that shares a drive with
the evaluation split (README "Train on KITTI"; docs/kitti.md).
Tests: tests/test_split_lists.py
"""
import hashlib
import importlib
import os
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

from helpers.run_folder import atomic_path  # the one atomic write

data = importlib.import_module("01_data")  # a module name cannot start with a digit: loaded by name


class SplitOverlapError(data.DataError):
    """The training split shares drives with the evaluation split (train/test leakage)."""


# Training and test splits must share no drive: an older official SQLDepth train list shared 21 of
# the 28 Eigen test drives, and with them 451 of the 697 test frames (docs/kitti.md).
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


def default_split_dir():
    """Cache folder of downloaded split lists: $SQLDEPTH_SPLIT_DIR or ~/.cache/sqldepth/splits."""
    return Path(os.environ.get("SQLDEPTH_SPLIT_DIR", Path.home() / ".cache" / "sqldepth" / "splits"))


def write_atomic(path, payload):
    """Write bytes to `path` through a temporary file of a name no other writer uses, then rename.
    Several processes (torchrun ranks, two runs sharing a cache) may fetch one file at once: with a
    unique temporary name each, every rename succeeds and a reader sees no file or a complete one."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "xb") as f:  # "x": never share a file with another writer
        f.write(payload)


def get_split_file(name, kind, split_dir=None, *, data_path=None, base_url=None, timeout=20.0, log=print):
    """Path of split list `name`/`kind`_files.txt in split_dir (default `default_split_dir()`).
    Any name works: SPLIT_DIR/NAME/KIND_files.txt is used when it is there. A missing standard list
    (SPLIT_SHA256) is downloaded from base_url (default SPLIT_URL_BASE), SHA-256 checked, and marked
    by a sidecar KIND_files.txt.sha256: only such a list is held to its known sum. A list without
    the sidecar is the user's, used as given (`log` gets one line when it has a standard name but
    other contents; docs/kitti.md). "synthetic" is `data.synthetic_split_path(data_path, kind)`.
    """
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
