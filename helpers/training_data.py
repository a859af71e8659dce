"""training_data - where 06_train.py's samples come from: the world, the split lists, the loaders.

Not a reading step: 01_data.py is the concept; `prepare` is the plumbing around it (the default world
rendered once, the checked split lists, the loaders). Tests: tests/test_06_train.py.
"""
import importlib
import time
from collections import namedtuple
from pathlib import Path

import numpy as np
import torch

from helpers.distributed_training import EpochBatches, main_rank_first
from helpers import kitti_files

data = importlib.import_module("01_data")  # a module name cannot start with a digit: loaded by name


Loaders = namedtuple("Loaders", "train val sampler split_record true_motion")


def prepare(cfg, info, device):
    """(data path, Loaders) of a run; split_record holds the lists and drive names for the checkpoint
    (07_eval warns when it evaluates on these drives)."""
    if cfg.data == "kitti" and not cfg.data_path:
        raise ValueError("--data kitti needs --data_path DIR (the KITTI raw root with the date folders)")
    default_world = cfg.data == "synthetic" and not cfg.data_path
    root = ensure_synthetic_world(cfg, info) if default_world else Path(cfg.data_path)
    if not root.is_dir():
        raise FileNotFoundError(f"data path {root} not found")
    root = root.resolve()
    train_set, val_set, files = make_datasets(cfg, root, info)
    record = {"split_files": {k: str(v) for k, v in files.items()},
              "train_drives": sorted({f for f, _, _ in train_set.lines + val_set.lines})}
    train, val, sampler = make_loaders(cfg, train_set, val_set, info, device)
    return str(root), Loaders(train, val, sampler, record, true_motion(val_set, frame_ids(cfg), device))


def ensure_synthetic_world(cfg, info):
    """data/synthetic rendered by rank 0 (skipped when complete); returns its path."""
    from helpers import synthetic_world                       # only the default run needs the renderer
    root = Path(__file__).resolve().parents[1] / "data" / "synthetic"

    def make():
        if info.main:
            start = time.perf_counter()
            synthetic_world.make_synthetic_kitti(root, num_drives=cfg.synth_drives,
                                                 frames_per_drive=cfg.synth_frames, height=cfg.synth_height,
                                                 width=cfg.synth_width, seed=0, workers=2)
            print(f"data: synthetic world at {root} ({time.perf_counter() - start:.0f} s)", flush=True)

    main_rank_first(info, make)
    return root


def split_names(cfg):
    """(training split name, evaluation split name) with the defaults of the data kind filled in."""
    synthetic = cfg.data == "synthetic"
    return (cfg.split or ("synthetic" if synthetic else "eigen_zhou"),
            cfg.eval_split or ("synthetic" if synthetic else "eigen"))


def split_files(cfg, root, log=print):
    """{"train", "val", "test"}: this run's list files (--train_files/--val_files as given, else
    kitti_files.get_split_file's); test is --eval_split's, for the leakage check."""
    split, eval_split = split_names(cfg)
    if bool(cfg.train_files) != bool(cfg.val_files):
        raise ValueError("--train_files and --val_files go together (a run needs a validation list)")
    if cfg.train_files and cfg.split:
        raise ValueError(f"give --split {cfg.split} or --train_files/--val_files, not both")

    def find(name, kind):
        return kitti_files.get_split_file(name, kind, cfg.split_dir or None, data_path=str(root), log=log)

    if cfg.train_files:
        files = {"train": Path(cfg.train_files).resolve(), "val": Path(cfg.val_files).resolve()}
    else:
        files = {"train": find(split, "train"), "val": find(split, "val")}
    files["test"] = find(eval_split, "test")
    return files


def load_splits(cfg, root, log=print):
    """(train lines, val lines, list files), after the leakage check against the evaluation split's test
    list; reads no image."""
    files = split_files(cfg, root, log)
    train, val, test = (data.read_split(files[k]) for k in ("train", "val", "test"))
    split, eval_split = split_names(cfg)
    what = f"the {'--train_files/--val_files' if cfg.train_files else split} split (train + val lines)"
    against = f"the {eval_split} test split"
    shared = kitti_files.require_disjoint_splits(train + val, test, cfg.allow_split_overlap, what, against)
    if shared and log is not None:
        log(f"warning: {what} shares {kitti_files.describe_overlap(shared, len(test), against)} "
            f"(allowed by --allow_split_overlap): test numbers on these drives will be optimistic")
    return train, val, files


def frame_ids(cfg):
    """The frames of a sample: 0, the temporal sources, plus "s" (the other camera) with stereo."""
    return (0, *(int(f) for f in cfg.source_frames)) + (("s",) if cfg.use_stereo else ())


def make_datasets(cfg, root, info):
    """(train KittiRaw with augmentation, val KittiRaw without, list files); rank 0 resolves lists first."""
    log = (lambda line: print(line, flush=True)) if info.main else None
    train_lines, val_lines, files = main_rank_first(info, lambda: load_splits(cfg, root, log))
    common = dict(height=cfg.height, width=cfg.width, frame_ids=frame_ids(cfg), img_ext=cfg.img_ext,
                  drop_missing=cfg.drop_missing, seed=cfg.seed, cache_mb=cfg.cache_mb)
    # The synthetic world's validation samples carry their dense ground truth (motion_vs_truth).
    synthetic = cfg.data == "synthetic"
    return (data.KittiRaw(str(root), train_lines, is_train=True, split_file=files["train"], **common),
            data.KittiRaw(str(root), val_lines, is_train=False, split_file=files["val"], load_depth=synthetic,
                          **common), files)


def true_motion(dataset, frame_ids, device):
    """[N, S] metres the camera moves from each sample's frame to each temporal source (the synthetic
    world's poses); None for KITTI."""
    if not dataset.synthetic:
        return None
    from helpers import synthetic_world
    temporal = [int(f) for f in frame_ids[1:] if f != "s"]
    poses, rows = {}, []
    for folder, frame, _ in dataset.lines:
        if folder not in poses:
            poses[folder] = synthetic_world.read_synthetic_poses(dataset.data_path / folder)  # [F, 4, 4]
        P = poses[folder]
        rows.append([np.linalg.norm((np.linalg.inv(P[frame + fid]) @ P[frame])[:3, 3]) for fid in temporal])
    return torch.tensor(rows, dtype=torch.float32, device=device)


def make_loaders(cfg, train_set, val_set, info, device):
    """(train loader over EpochBatches, val loader over this rank's shard, sampler). Own generators keep
    the loaders off the global RNG (exact resume)."""
    workers = cfg.num_workers
    common = dict(num_workers=workers, pin_memory=cfg.pin_memory and device.type == "cuda",
                  persistent_workers=cfg.persistent_workers and workers > 0)
    sampler = EpochBatches(len(train_set), cfg.batch_size, cfg.seed, info.rank, info.world)
    if sampler.batches_per_epoch == 0:
        raise ValueError(f"the train split has {len(train_set)} samples, fewer than batch_size "
                         f"{cfg.batch_size} x {info.world} process(es)")
    train = torch.utils.data.DataLoader(train_set, batch_sampler=sampler, collate_fn=data.collate,
                                        generator=torch.Generator().manual_seed(cfg.seed), **common)
    val = torch.utils.data.DataLoader(val_set, batch_size=cfg.batch_size, collate_fn=data.collate,
                                      sampler=list(range(info.rank, len(val_set), info.world)),
                                      generator=torch.Generator().manual_seed(cfg.seed), **common)
    return train, val, sampler


def to_device(batch, device, channels_last=False):
    """A collated batch on the device, uint8 images made float there (a quarter of the bytes cross to the
    GPU); 4-D tensors NHWC if asked."""
    def move(value):  # .float() in images_to_float keeps the memory format
        if isinstance(value, dict):
            return {k: move(v) for k, v in value.items()}
        if not torch.is_tensor(value):
            return value
        value = value.to(device, non_blocking=True)
        return value.contiguous(memory_format=torch.channels_last) if channels_last and value.dim() == 4 else value

    return data.images_to_float(move(batch))
