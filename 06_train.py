"""06 - train: the self-supervised training program: presets, the loop, checkpoints, exact resume.

Concept. Everything before this file is a piece; here they become a program, following the
protocol of Monodepth2 that SQLDepth reuses (paper Sec. 4, implementation details): a batch of
frame triplets (I-1, I0, I+1) from 01_data.KittiRaw, depth of I0 from 04_bins.DepthNet, the two
camera motions from the pose network and the photometric loss of 05_posenet_loss, minimised with
Adam; StepLR divides the learning rate by 10 after `lr_step` epochs. Read in this order:
`TrainConfig` and `PRESETS` (the CPU default on the synthetic world and the three KITTI set-ups of
the released models), `build_networks`, `loss_config`, `train_step` (one step: Exercise 6.1),
`validate`, and `Trainer.fit` (the loop: RUN/ckpt.pt after every epoch, RUN/best.pt = lowest
validation loss). Below the engineering banner: the command line (every field of TrainConfig and
of the model's DepthNetConfig is a flag), torchrun / DistributedDataParallel, a batch sampler
whose order is a function of (seed, epoch) so that --resume continues with the same loss sequence,
split lists checked for train/test drive overlap, atomic checkpoints, logs and curves, Ctrl-C /
SIGTERM handling, --profile, and main. Where we differ from the official trainer: README, "Where we
follow the paper, and where the official code".

Run: `python 06_train.py` (synthetic world, 11 to 30 minutes on 2 CPU cores, ends with 07_eval.py),
`python 06_train.py --data kitti --data_path DIR --preset kitti-r50-640x192`,
`torchrun --nproc_per_node=N 06_train.py ...`, `python 06_train.py --help` for every option.
Uses 01_data, 04_bins, 05_posenet_loss; runs 07_eval.py as a subprocess at the end (06 never
imports 07). Tests: tests/test_06_train.py.

Exit codes: 0 done, 2 bad input (one `error: ...` line), 3 non-finite loss, 130 stopped by SIGINT,
143 stopped by SIGTERM (the shell convention 128 + signal number; a checkpoint was saved first),
otherwise the exit code of 07_eval.py when the final evaluation fails.
"""
import argparse
import csv
import importlib
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from cli import add_dataclass_flags  # the command line of every script (cli.py)
from cpu_memory import huge_pages_in_effect, tune_cpu_memory  # page faults (cpu_memory.py)
from fused_adam import make_adam    # Adam, fused where it can be (fused_adam.py)

# A module name cannot start with a digit in an `import` statement, so the numbered scripts are
# loaded by name; the alias is the file name without its number.
data = importlib.import_module("01_data")
unet = importlib.import_module("02_unet")
bins = importlib.import_module("04_bins")
posenet_loss = importlib.import_module("05_posenet_loss")

HERE = Path(__file__).resolve().parent
EXIT_BAD_INPUT, EXIT_NONFINITE = 2, 3


# ---- Configuration and presets ----
@dataclass
class TrainConfig:
    """Everything a run needs; the defaults, with _synthetic_model() and use_stereo, make the
    synthetic-cpu preset."""
    preset: str = "synthetic-cpu"   # starting point from PRESETS; every other field overrides it
    data: str = "synthetic"         # "synthetic" (generated world) or "kitti" (KITTI raw)
    data_path: str = ""             # dataset root; "" = data/synthetic here (generated if missing)
    split: str = ""                 # NAME: SPLIT_DIR/NAME/{train,val}_files.txt; "" = synthetic / eigen_zhou
    split_dir: str = ""             # SPLIT_DIR: your lists, used as given ("" = 01's download cache)
    train_files: str = ""           # a one-off train list ("folder frame side" lines) instead of --split
    val_files: str = ""             # the validation list file that goes with --train_files
    eval_split: str = ""            # test split whose drives train + val may not use ("" = synthetic/eigen)
    allow_split_overlap: bool = False  # train anyway when train and test splits share drives (leakage!)
    img_ext: str = ".jpg"           # image file extension (KITTI as downloaded: .png)
    drop_missing: bool = False      # drop split lines whose frames are missing instead of stopping
    synth_drives: int = 40          # synthetic world: number of drives (about 80/10/10% train/val/test)
    synth_frames: int = 50          # synthetic world: frames per drive
    synth_height: int = 128         # synthetic world: stored image height
    synth_width: int = 416          # synthetic world: stored image width
    height: int = 64                # network input height (KITTI presets 192 / 320)
    width: int = 208                # network input width (KITTI presets 640 / 1024)
    batch_size: int = 8             # samples per step and per process (global batch = this x processes)
    epochs: int = 4                 # epochs (passes over the train split)
    max_steps: int = 0              # stop after this many steps in total (0 = run all epochs)
    lr: float = 5e-4                # Adam learning rate of the depth network
    pose_lr_scale: float = 1.0      # pose network lr = lr x this (0.1 = the optional "pose lr/10")
    query_lr_scale: float = 1.0     # lr of what makes the queries (patch embedding, transformer) = lr x this
    warmup_steps: int = 0           # linear learning-rate warm-up over the first N steps (0 = none)
    lr_step: int = 3                # StepLR: multiply the lr by lr_gamma every lr_step epochs
    lr_gamma: float = 0.1           # StepLR factor
    use_stereo: bool = False        # add the stereo frame "s" as a source ("MS" training)
    pose_scaling: str = "depth"     # monocular translation scaling: depth | inv_depth (official) | none
    pose_net: str = "posecnn"       # posecnn (official trainer) or resnet (Monodepth2's PoseResNet-18)
    smoothness_weight: float = 1e-3  # weight of the edge-aware smoothness term
    ssim_window: int = 7            # SSIM window (7 as SQLDepth, 3 as Monodepth2, 0 = L1 only)
    automask: bool = True           # Monodepth2's auto-masking of static pixels
    model: dict = field(default_factory=dict)  # DepthNetConfig as a plain dict (flat flags --num_layers ...)
    seed: int = 0                   # seeds the initialisation, the sample order and the augmentation
    device: str = "auto"            # auto | cpu | cuda | cuda:N (under torchrun: cuda:LOCAL_RANK)
    amp: bool = False               # bf16 autocast of the depth network on CUDA (a no-op on CPU)
    channels_last: bool = True      # NHWC layout of both networks and their inputs (faster here, README)
    small_map_convs: bool = True    # CPU: big 3x3 convs on small maps take their weight gradient by matmul
    num_workers: int = 1            # DataLoader worker processes per training process (0 = in the loop)
    cache_mb: int = 0               # keep this many MB of decoded frames in memory, per dataset and process
    threads: int = 0                # CPU threads per process for PyTorch ops (0 = PyTorch's default)
    pin_memory: bool = True         # page-locked host batches (only used on CUDA)
    persistent_workers: bool = True  # keep the workers alive between epochs (when num_workers > 0)
    log_every: int = 25             # steps between log lines / log.csv rows
    save_every: int = 0             # also checkpoint every N steps (0 = only at epoch ends)
    val_batches: int = 0            # validation batches per evaluation (0 = the whole val split)
    val_every: int = 0              # also validate (and checkpoint) every N steps (0 = at epoch ends)
    run_dir: str = ""               # output folder; "" = runs/<preset>-<date-time> next to this file
    resume: str = ""                # a run folder to continue from its ckpt.pt
    no_eval: bool = False           # skip the final 07_eval.py run (synthetic data only)
    profile: int = 0                # run N timed steps, print throughput and time split, write nothing


def _synthetic_model(patch_size=8):
    """The small SQLDepth of the CPU default: R18, the official nf=256 decoder, a lite SQL head.
    patch 8 on the 32x104 S0 of a 64x208 input gives N = 4 x 13 = 52 tokens >= Q = 32 (patch 16
    on the 64x208 S0 of a 128x416 input: the same 4 x 13 tokens, each over the same image region)."""
    return asdict(bins.DepthNetConfig(num_layers=18, num_features=256, model_dim=32, patch_size=patch_size,
                                      num_queries=32, num_bins=64, dim_feedforward=512))


def _kitti_preset(name, height, width):
    """A released-model set-up: Adam 1e-4, batch 16, 25 epochs, StepLR(15, 0.1) (README, "KITTI")."""
    model = asdict(replace(bins.PRESETS[name], pretrained="imagenet"))
    return dict(preset=name, data="kitti", height=height, width=width, batch_size=16, epochs=25,
                lr=1e-4, lr_step=15, lr_gamma=0.1, model=model, num_workers=8, log_every=200,
                save_every=2000)


PRESETS = {
    # Sized for the 15-minute default on 2 CPU cores: 64x208 input, lr 5e-4 (1e-4 learns too slowly
    # in 10 minutes), 4 epochs of the 3,072 training samples (about 20 img/s on 2 idle cores: ~10
    # minutes), lr / 10 for the last epoch. Stereo ("MS"): at this budget monocular training
    # reached AbsRel 0.16-0.19 on the synthetic test split, MS 0.095 (the fixed stereo baseline
    # supervises the far range near the vanishing point, where forward motion gives no parallax).
    # Loading in the loop (num_workers 0): on 2 cores a worker process fights the step's threads and
    # slows it more than the loading it takes over; each decoded frame is kept (the world's frames
    # at 416x128 fit in ~610 MB; at 208x64 in a quarter of that), so later epochs skip the decoding (README,
    # "Benchmarks").
    "synthetic-cpu": lambda: dict(model=_synthetic_model(), use_stereo=True, num_workers=0,
                                  cache_mb=1024),
    # The same run at the world's stored 416x128 (4x the pixels: poles a few pixels wide instead of
    # one or two): about 35 minutes on 2 cores by its --profile (README, "Thin structures at 416x128").
    "synthetic-cpu-416x128": lambda: dict(model=_synthetic_model(patch_size=16), use_stereo=True,
                                          num_workers=0, cache_mb=1024, height=128, width=416),
    "kitti-r50-640x192": lambda: _kitti_preset("kitti-r50-640x192", 192, 640),
    "kitti-r50-1024x320": lambda: _kitti_preset("kitti-r50-1024x320", 320, 1024),
    "kitti-r18-640x192": lambda: _kitti_preset("kitti-r18-640x192", 192, 640),
}


def preset_config(name):
    """The TrainConfig of a preset (ValueError for an unknown name)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return TrainConfig(**{"preset": name, **PRESETS[name]()})


# ---- Networks, the loss configuration, one training step, validation ----
def build_networks(cfg, device, load_pretrained=True):
    """(DepthNet, pose network) on the device, initialised from the global torch RNG."""
    model = dict(cfg.model) if load_pretrained else {**cfg.model, "pretrained": None}
    depth_net = bins.DepthNet(bins.DepthNetConfig(**model))
    # Monodepth2's ResNet pose encoder starts from ImageNet when the depth encoder does (a local
    # --pretrained file is a depth-encoder checkpoint, possibly ResNet-50: not for the pose net).
    pose_pretrained = "imagenet" if model.get("pretrained") == "imagenet" else None
    pose_net = (posenet_loss.PoseCNN(num_input_frames=2) if cfg.pose_net == "posecnn"
                else posenet_loss.PoseResNet(18, pose_pretrained))
    if cfg.small_map_convs:  # the same gradients, faster on CPU (02_unet.SmallMapConv2d; unused on GPU)
        for net in (depth_net, pose_net):
            unet.use_small_map_convs(net)
    layout = torch.channels_last if cfg.channels_last else torch.contiguous_format
    # Both networks in the layout of their (4-D) inputs: a mismatch re-lays out weights every call.
    return depth_net.to(device, memory_format=layout), pose_net.to(device, memory_format=layout)


def make_optimizer(cfg, depth_net, pose_net):
    """Adam over both networks (pose lr = lr x pose_lr_scale; with query_lr_scale != 1 the query
    path of the self-query layer in a group of its own at lr x query_lr_scale). The fused kernel (one
    pass over all parameters instead of several ops per tensor; the same update up to float
    rounding), run on the parameters' memory as it lies (fused_adam.py), where the installed
    PyTorch has it for the device; the plain one otherwise."""
    query = {id(p) for p in depth_net.query_parameters()} if cfg.query_lr_scale != 1 else set()
    groups = [{"params": [p for p in depth_net.parameters() if id(p) not in query], "lr": cfg.lr},
              {"params": list(pose_net.parameters()), "lr": cfg.lr * cfg.pose_lr_scale}]
    if query:
        groups.append({"params": depth_net.query_parameters(), "lr": cfg.lr * cfg.query_lr_scale})
    return make_adam(groups)


def warm_up(optimizer, scheduler, step, epoch, cfg):
    """Linear warm-up: before step `step` (counted from 0), each group's lr is its StepLR value times
    (step + 1) / warmup_steps, and exactly its StepLR value from step warmup_steps on. A function of
    (step, epoch) only, so a resumed run continues the same schedule."""
    if not 0 <= step <= cfg.warmup_steps or not cfg.warmup_steps:
        return
    factor = min(1.0, (step + 1) / cfg.warmup_steps) * cfg.lr_gamma ** (epoch // cfg.lr_step)
    for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = base * factor


def frame_ids(cfg):
    """The frames of a sample: target 0, sources -1 and +1, plus "s" (the other camera) with stereo."""
    return (0, -1, 1) + (("s",) if cfg.use_stereo else ())


def loss_config(cfg):
    """05's LossConfig of this run."""
    min_depth, max_depth = bins.output_depth_range(bins.DepthNetConfig(**cfg.model))
    return posenet_loss.LossConfig(frame_ids=frame_ids(cfg), use_stereo=cfg.use_stereo,
                                   ssim_window=cfg.ssim_window, smoothness_weight=cfg.smoothness_weight,
                                   automask=cfg.automask, pose_scaling=cfg.pose_scaling,
                                   min_depth=min_depth, max_depth=max_depth)


def train_step(depth_net, pose_net, inputs, optimizer, loss_cfg, ssim, amp=False, timer=None):
    """One optimisation step of self-supervised training; returns the loss terms (0-d tensors).

    Exercise 6.1: implement one training step. Clear the old gradients, predict the depth
    [B, 1, H/2, W/2] of the augmented target frame inputs["color_aug"][0] [B, 3, H, W], the source
    poses with posenet_loss.predict_poses(pose_net, inputs, loss_cfg, depth=depth) ({fid: [B, 4, 4]}),
    the loss dict with posenet_loss.self_supervised_loss(inputs, depth, poses, loss_cfg, ssim),
    back-propagate its "loss" (a scalar) and take one optimizer step. Return the loss dict's
    entries named in STEP_TERMS (the three loss terms and 05's health numbers) as detached 0-d
    tensors, not floats: float() makes the host wait for the GPU, and the loop reads them all at
    once, after the step. Only the depth network runs under
    torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp); take its output back to
    float32 before the poses and the loss (bf16 keeps 3 digits: SSIM's E[x^2] - mu^2 and the
    rotation matrices would drown in rounding). If `timer` is given, call timer("forward"),
    timer("backward"), timer("optimizer") after each phase (--profile).
    Hint: without zero_grad the gradients of all earlier steps add up; without optimizer.step()
    nothing learns (tests/test_06_train.py checks both against a step computed by hand).
    """
    tick = timer or (lambda phase: None)
    target = inputs["color_aug"][0]                                    # [B, 3, H, W]
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device_type=target.device.type, dtype=torch.bfloat16, enabled=amp):
        depth = depth_net(target)                                      # [B, 1, H/2, W/2]
    depth = depth.float()
    poses = posenet_loss.predict_poses(pose_net, inputs, loss_cfg, depth=depth)  # {fid: [B, 4, 4]}
    out = posenet_loss.self_supervised_loss(inputs, depth, poses, loss_cfg, ssim)
    tick("forward")
    out["loss"].backward()
    tick("backward")
    optimizer.step()
    tick("optimizer")
    return {k: out[k].detach() for k in STEP_TERMS}


LOSS_TERMS = ("loss", "photometric", "smoothness")
STEP_TERMS = LOSS_TERMS + posenet_loss.HEALTH_TERMS   # what train_step returns (05's health numbers)


@torch.no_grad()
def validate(depth_net, pose_net, loader, loss_cfg, ssim, cfg, device, info, true_motion=None):
    """(mean self-supervised loss over the val split (all ranks' shards), {diagnostic: float}): the
    self-query diagnostics of 04_bins.stats_from_extras on this rank's first val batch, 05's health
    numbers averaged over the split, "motion_ratio" (05's motion_vs_truth; NaN without ground
    truth: true_motion [N, S] metres per val sample, and depth_gt in the batches) and "collapsed"
    (1.0 when 05's collapse_signs sees any). Eval mode, and a forked RNG seeded with cfg.seed: the
    auto-mask noise is the same at every validation and the training RNG stream is untouched (so
    validating or not never changes the training run)."""
    depth_net.eval()
    pose_net.eval()
    names = posenet_loss.HEALTH_TERMS
    # summed on the device, read once: loss, count, health numbers, motion ratios and their count
    sums = torch.zeros(2 + len(names) + 2, dtype=torch.float64, device=device)
    stats = dict.fromkeys(bins.INTERNALS_STATS, float("nan"))
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(cfg.seed)
        for i, batch in enumerate(loader):
            if cfg.val_batches and i >= cfg.val_batches:
                break
            batch = to_device(batch, device, cfg.channels_last)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp_on(cfg, device)):
                out = depth_net(batch["color"][0], return_extras=True)
            depth = out["depth"].float()                                # as in train_step
            if i == 0:   # do the queries differ, how many bins are used? (reads the device: once)
                stats = bins.stats_from_extras(out)
            poses = posenet_loss.predict_poses(pose_net, batch, loss_cfg, depth=depth)
            loss = posenet_loss.self_supervised_loss(batch, depth, poses, loss_cfg, ssim)
            n = len(depth)
            sums[:2 + len(names)] += torch.stack([loss["loss"].double(), torch.ones((), device=device)]
                                                 + [loss[k].double() for k in names]) * n
            if true_motion is not None and "depth_gt" in batch:
                truth = true_motion[batch["index"]]                      # [B, S] on the device
                ratio = posenet_loss.motion_vs_truth(depth, poses, batch["depth_gt"], truth, loss_cfg)
                sums[-2:] += torch.stack([ratio.double().sum(), torch.full((), n, device=device)])
    depth_net.train()
    pose_net.train()
    if info.world > 1:
        dist.all_reduce(sums)
    total = sums.tolist()                                            # the one host read
    count = max(total[1], 1.0)
    health = {k: v / count for k, v in zip(names, total[2:2 + len(names)])}
    health["motion_ratio"] = total[-2] / total[-1] if total[-1] else float("nan")
    health["collapsed"] = float(bool(posenet_loss.collapse_signs(health)))
    return (total[0] / total[1] if total[1] else float("nan")), {**stats, **health}


class CollapseWatch:
    """The collapse detector of the training log: one `warning:` line, once, when `patience`
    consecutive log lines show a sign of collapse (05's collapse_signs of the step's health
    numbers), with the numbers and what to try."""

    def __init__(self, cfg, patience=3):
        self.cfg, self.patience, self.seen, self.warned = cfg, patience, 0, False

    def update(self, step, row):
        signs = posenet_loss.collapse_signs(row)
        self.seen = self.seen + 1 if signs else 0
        if self.warned or self.seen < self.patience:
            return None
        self.warned = True
        return (f"warning: step {step}: this run looks collapsed ({'; '.join(signs)} for {self.patience} "
                f"log lines); try another --seed, {try_after_collapse(self.cfg)} (README, \"Monocular training\")")


def try_after_collapse(cfg):
    """What the collapse warning suggests for this run's recipe."""
    return "a lower --lr or --warmup_steps 200"


def amp_on(cfg, device):
    """bf16 autocast only on CUDA: on CPU --amp is a documented no-op."""
    return cfg.amp and device.type == "cuda"


# ---- The loop ----
class Trainer:
    """State of one run: networks, optimiser, schedule, loaders, counters, log files."""

    def __init__(self, cfg, info, device, ckpt=None):
        self.cfg, self.info, self.device = cfg, info, device
        if cfg.data == "kitti" and not cfg.data_path:
            raise ValueError("--data kitti needs --data_path DIR (the KITTI raw root with the date folders)")
        default_world = cfg.data == "synthetic" and not cfg.data_path
        root = ensure_synthetic_world(cfg, info) if default_world else Path(cfg.data_path)
        if not root.is_dir():
            raise FileNotFoundError(f"data path {root} not found")
        self.cfg = cfg = replace(cfg, data_path=str(root.resolve()))
        train_set, val_set, files = make_datasets(cfg, root, info)
        # Recorded in the checkpoint for 07_eval (which warns when it evaluates on these drives),
        # as drive names, so the check works wherever the list files end up.
        self.split_record = {"split_files": {k: str(v) for k, v in files.items()},
                             "train_drives": sorted({f for f, _, _ in train_set.lines + val_set.lines})}
        self.train_loader, self.val_loader, self.sampler = make_loaders(cfg, train_set, val_set, info, device)
        self.true_motion = true_motion(val_set, frame_ids(cfg), device)   # [N, S] metres, or None
        self.steps_per_epoch = self.sampler.batches_per_epoch
        total = cfg.epochs * self.steps_per_epoch
        self.total_steps = min(total, cfg.max_steps) if cfg.max_steps > 0 else total

        torch.manual_seed(cfg.seed)              # same initial weights on every rank
        # rank 0 first: one ImageNet download into torch's cache, the other ranks then load it
        self.depth_net, self.pose_net = main_rank_first(
            info, lambda: build_networks(cfg, device, load_pretrained=ckpt is None))
        self.optimizer = make_optimizer(cfg, self.depth_net, self.pose_net)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, cfg.lr_step, cfg.lr_gamma)
        self.loss_cfg, self.step, self.epoch, self.best_val = loss_config(cfg), 0, 0, math.inf
        self.ssim = posenet_loss.make_ssim(self.loss_cfg)
        self.ssim = self.ssim.to(device) if self.ssim is not None else None
        if ckpt is not None:
            self.load_state(ckpt)
        else:
            torch.manual_seed(cfg.seed + 1000 * info.rank)   # dropout / auto-mask noise per rank
        self.nets = (self.depth_net, self.pose_net)
        self.collapse_watch = CollapseWatch(cfg)
        if info.world > 1:                       # static_graph: the encoder's fc is never used
            wrap = dict(device_ids=[device.index] if device.type == "cuda" else None, static_graph=True)
            self.nets = tuple(torch.nn.parallel.DistributedDataParallel(n, **wrap) for n in self.nets)
        self.run_dir = Path(cfg.run_dir)

    def fit(self, stop):
        """The loop until total_steps, a signal or a non-finite loss; returns the exit code."""
        cfg, info = self.cfg, self.info
        if info.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            for name in ("log.csv", "val.csv"):
                truncate_csv(self.run_dir / name, self.step)
            print(f"train: {cfg.preset} | {cfg.data} {cfg.width}x{cfg.height} | batch {cfg.batch_size} x "
                  f"{info.world} process(es) | {self.steps_per_epoch} steps/epoch | step {self.step} -> "
                  f"{self.total_steps} | {self.device} | {self.run_dir}", flush=True)
        interval = dict(start=time.perf_counter(), data=0.0, steps=0)
        last_saved, data_iter = self.step, self.batches()
        while self.step < self.total_steps:
            tick = time.perf_counter()
            try:
                b, batch = next(data_iter)
            except Exception:
                if stop.signum:                  # Ctrl-C also reaches the workers: they may be gone
                    break
                raise
            interval["data"] += time.perf_counter() - tick
            batch = to_device(batch, self.device, cfg.channels_last)
            warm_up(self.optimizer, self.scheduler, self.step, self.epoch, cfg)
            terms = train_step(*self.nets, batch, self.optimizer, self.loss_cfg, self.ssim,
                               amp=amp_on(cfg, self.device))
            self.step += 1
            interval["steps"] += 1
            log_now = info.main and (self.step % cfg.log_every == 0 or self.step == self.total_steps)
            values, nonfinite, signum = step_outcome(terms, stop.signum, info, need_values=log_now)
            if nonfinite:                        # nothing is saved: the model may hold NaNs now
                bad = [f"{k}={values[k]}" for k in LOSS_TERMS if values and not math.isfinite(values[k])]
                where = ", ".join(bad) or "on another process"
                return self.stop_nonfinite(f"non-finite loss at step {self.step} ({where})", last_saved)
            if log_now:
                self.log(values, interval)
            epoch_end = b + 1 == self.steps_per_epoch
            if epoch_end:
                self.epoch += 1
                self.scheduler.step()            # StepLR counts epochs (after the optimizer steps)
            if signum:
                stop.signum = signum
                break
            validate_now = epoch_end or (cfg.val_every and self.step % cfg.val_every == 0)
            if validate_now or (cfg.save_every and self.step % cfg.save_every == 0):
                paused = time.perf_counter()
                try:
                    self.save(validate_too=validate_now)
                except NonFinite as err:
                    return self.stop_nonfinite(str(err), last_saved)
                last_saved = self.step
                interval["start"] += time.perf_counter() - paused   # img/s and ETA exclude saving
        data_iter.close()
        try:
            if stop.signum or last_saved != self.step:
                self.save(validate_too=not stop.signum)   # no validation when asked to stop
        except NonFinite as err:
            return self.stop_nonfinite(str(err), last_saved)
        if stop.signum:
            if info.main:
                print(f"{signal.Signals(stop.signum).name}: saved {self.run_dir / 'ckpt.pt'} at step "
                      f"{self.step}; continue with --resume {self.run_dir}", flush=True)
            return 128 + stop.signum
        self.ddp_check()
        return 0

    def batches(self):
        """(batch index within the epoch, batch) from the current position to total_steps."""
        while self.step < self.total_steps:
            skip = self.step - self.epoch * self.steps_per_epoch  # > 0 only when resumed mid-epoch
            self.sampler.set_epoch(self.epoch, skip)
            for b, batch in enumerate(self.train_loader, start=skip):
                yield b, batch
                if self.step >= self.total_steps:
                    return

    def save(self, validate_too):
        """RUN/ckpt.pt, and after a validation that improved, RUN/best.pt (rank 0 writes). A model
        with a NaN/Inf weight (a finite loss can still have produced infinite gradients) is never
        written: NonFinite is raised instead."""
        bad = first_nonfinite([(f"{name}.{n}", p) for name, net in (("depth", self.depth_net),
                               ("pose", self.pose_net)) for n, p in net.named_parameters()])
        if bad:
            raise NonFinite(f"non-finite weights after step {self.step} (e.g. {bad})")
        improved = False
        if validate_too:
            val, stats = validate(*map(_unwrap, self.nets), self.val_loader, self.loss_cfg, self.ssim,
                                  self.cfg, self.device, self.info, self.true_motion)
            improved = val < self.best_val
            self.best_val = val if improved else self.best_val
        if not self.info.main:
            return
        state = self.state()
        save_checkpoint(state, self.run_dir / "ckpt.pt")
        if improved or not (self.run_dir / "best.pt").exists():
            save_checkpoint(state, self.run_dir / "best.pt")
        if validate_too:
            row = dict(step=self.step, epoch=self.epoch, val_loss=val, best_val_loss=self.best_val, **stats)
            append_csv(self.run_dir / "val.csv", VAL_COLUMNS, row)
            print(f"val   step {self.step:>7} | loss {val:.4f} | best {self.best_val:.4f}"
                  f"{' -> best.pt' if improved else ''} | query similarity {stats['query_similarity']:.3f}, "
                  f"cost-volume rank {stats['effective_rank']:.1f}/{self.cfg.model['num_queries']}, "
                  f"bins for 99% {stats['bins_99']:.1f}/{self.cfg.model['num_bins']} | spread "
                  f"{stats['depth_spread']:.2f} motion {stats['motion']:.3f} (x{stats['motion_ratio']:.2f} "
                  f"the true one) mask {stats['automask_kept']:.2f}"
                  f"{' | COLLAPSED' if stats['collapsed'] else ''}", flush=True)

    def log(self, terms, interval):
        """One fixed-format line and one log.csv row (the loss terms and health numbers of this step,
        throughput over the interval since the last); a warning line when the run looks collapsed."""
        now = time.perf_counter()
        elapsed = max(now - interval["start"], 1e-9)
        row = dict(step=self.step, epoch=self.epoch, **{k: terms.get(k, math.nan) for k in STEP_TERMS},
                   lr=float(self.optimizer.param_groups[0]["lr"]),
                   img_per_s=interval["steps"] * self.cfg.batch_size * self.info.world / elapsed,
                   data_wait_pct=100.0 * interval["data"] / elapsed,
                   eta_s=elapsed / max(interval["steps"], 1) * (self.total_steps - self.step))
        append_csv(self.run_dir / "log.csv", LOG_COLUMNS, row)
        print(f"step {self.step:>7}/{self.total_steps} | epoch {self.epoch + 1:>3}/{self.cfg.epochs} | "
              f"loss {row['loss']:.4f} photo {row['photometric']:.4f} smooth {row['smoothness']:.4f} | "
              f"spread {row['depth_spread']:.2f} motion {row['motion']:.3f} mask {row['automask_kept']:.2f} | "
              f"lr {row['lr']:.1e} | "
              f"{row['img_per_s']:6.1f} img/s | data {row['data_wait_pct']:4.1f}% | "
              f"ETA {format_time(row['eta_s'])}", flush=True)
        interval.update(start=now, data=0.0, steps=0)
        warning = self.collapse_watch.update(self.step, row)
        if warning:
            print(warning, flush=True)

    def stop_nonfinite(self, what, last_saved):
        """One error line (rank 0) for a NaN/Inf; nothing is written. Returns exit code 3."""
        if self.info.main:
            print(f"error: {what}; stopped without saving, the last good checkpoint is "
                  f"{self.run_dir / 'ckpt.pt'} (step {last_saved})", file=sys.stderr, flush=True)
        return EXIT_NONFINITE

    def ddp_check(self):
        """Under torchrun: gather a checksum of each rank's parameters; rank 0 prints them (they
        must agree, or the gradients were not averaged)."""
        if self.info.world == 1:
            return
        params = [p.detach().double() for n in self.nets for p in _unwrap(n).parameters()]
        mine = torch.stack([sum(p.sum() for p in params), sum((p * p).sum() for p in params)]).to(self.device)
        gathered = [torch.zeros_like(mine) for _ in range(self.info.world)]
        dist.all_gather(gathered, mine)
        if self.info.main:
            sums = [tuple(float(x) for x in g.cpu()) for g in gathered]
            same = all(s == sums[0] for s in sums)
            print(f"ddp: parameter checksums of {len(sums)} ranks {'agree' if same else 'DIFFER'}: {sums}",
                  flush=True)

    def load_state(self, ckpt):
        """Continue from a checkpoint (weights, optimiser, schedule, counters, RNG states)."""
        try:
            self.depth_net.load_state_dict(ckpt["model"])
            self.pose_net.load_state_dict(ckpt["pose"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise ValueError(f"the checkpoint does not match its config: {_one_line(err)}") from None
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.step, self.epoch, self.best_val = ckpt["step"], ckpt["epoch"], ckpt["best_val"]
        if ckpt["steps_per_epoch"] != self.steps_per_epoch:
            raise ValueError(f"the checkpoint has {ckpt['steps_per_epoch']} steps per epoch, this run "
                             f"{self.steps_per_epoch}: resume with the same data, batch size and processes")
        set_rng_state(ckpt["rng"])
        if self.info.world > 1:                  # rank 0's streams were saved; keep ranks distinct
            torch.manual_seed(self.cfg.seed + 1000 * self.info.rank + self.step)

    def state(self):
        return {"model": self.depth_net.state_dict(), "pose": self.pose_net.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "step": self.step, "epoch": self.epoch, "best_val": self.best_val,
                "steps_per_epoch": self.steps_per_epoch, "config": {**asdict(self.cfg), **self.split_record},
                "rng": rng_state()}


# ==============================================================================================
# ---- Engineering: not needed to understand SQLDepth ----
# The command line, processes and devices (torchrun / DDP), the batch sampler, data loading,
# checkpoints and RNG states (exact resume), logging and plots, signals, profiling, main.
# ==============================================================================================
# ---- Command line: one flag per TrainConfig field, model fields as flat flags ----
CHOICES = {"preset": list(PRESETS), "data": ["synthetic", "kitti"],
           "pose_scaling": list(posenet_loss.POSE_SCALINGS), "pose_net": ["posecnn", "resnet"],
           "num_layers": [18, 34, 50], "bins": ["sql", "fixed", "adabins"],
           "queries": ["self", "learned", "none"]}
MODEL_FIELDS = [f.name for f in fields(bins.DepthNetConfig)]
# What a checkpoint's architecture is made of: --resume refuses to change these.
ARCH_FIELDS = ("preset", "data", "height", "width", "use_stereo", "pose_net")
# Facts about the run stored in the checkpoint's config next to the TrainConfig fields (for
# 07_eval's leakage warning); not options, so --resume leaves them out of the TrainConfig.
RECORD_KEYS = ("split_files", "train_drives")


def build_parser():
    """The CLI, generated from TrainConfig and 04_bins.DepthNetConfig (defaults: synthetic-cpu)."""
    parser = argparse.ArgumentParser(
        prog="06_train.py",
        description="Self-supervised SQLDepth training. Without arguments: the synthetic-cpu preset "
                    "(generates data/synthetic, trains, evaluates with 07_eval.py).",
        epilog="Your own split: put NAME/train_files.txt and NAME/val_files.txt (lines 'folder frame side') "
               "in a folder and pass --split NAME --split_dir FOLDER, or pass --train_files FILE --val_files "
               "FILE; a run whose lists share a drive with the --eval_split test list is refused before any "
               "data is read (unless --allow_split_overlap). "
               "Model fields are flat flags (--num_layers 18 --num_queries 32 ...); --pretrained none "
               "trains from scratch. Exit codes: 0 done, 2 bad input, 3 non-finite loss, 130/143 "
               "interrupted by SIGINT/SIGTERM after saving RUN/ckpt.pt.")
    base = preset_config("synthetic-cpu")
    # only_given: a flag not given parses to None, so parse_args applies only the given ones over
    # the chosen preset (the help shows the synthetic-cpu values).
    add_dataclass_flags(parser, TrainConfig, defaults=base, choices=CHOICES, skip=("model",), only_given=True)
    group = parser.add_argument_group("model (04_bins.DepthNetConfig; defaults: the preset's)")
    add_dataclass_flags(group, bins.DepthNetConfig, defaults=base.model, choices=CHOICES, only_given=True)
    return parser


def parse_args(argv=None):
    """(TrainConfig of the chosen preset with the given flags applied, {flag: value} given)."""
    given = {k: v for k, v in vars(build_parser().parse_args(argv)).items() if v is not None}
    return apply_overrides(preset_config(given.get("preset", "synthetic-cpu")), given), given


def apply_overrides(cfg, given):
    """cfg with the given flags set; model flags go into cfg.model ("none" -> None for pretrained)."""
    model = dict(cfg.model)
    for name in MODEL_FIELDS:
        if name in given:
            model[name] = None if given[name] in ("none", "") and name == "pretrained" else given[name]
    train = {k: v for k, v in given.items() if k not in MODEL_FIELDS}
    return replace(cfg, **train, model=model)


# ---- Processes and devices ----
@dataclass
class Dist:
    rank: int = 0        # this process's rank (torchrun's RANK)
    world: int = 1       # number of processes (WORLD_SIZE)
    local_rank: int = 0  # GPU index on this machine (LOCAL_RANK)

    @property
    def main(self):
        return self.rank == 0


class PeerFailed(Exception):
    """Rank 0 failed at a step the other ranks wait for; rank 0 prints the one error line."""


def main_rank_first(info, work):
    """work() on rank 0 first, then on the other ranks: downloads into a shared cache (split lists,
    ImageNet weights) and the synthetic world are made once, and the others find them complete.

    The other ranks wait in a broadcast from rank 0 instead of a bare barrier: it says whether
    rank 0 succeeded, so a failure there (offline, a leaking split) stops every rank at once
    instead of leaving them at a barrier that rank 0 never reaches.
    """
    if info.world == 1:
        return work()
    result, error = None, None
    if info.main:
        try:
            result = work()
        except Exception as err:                 # re-raised below, after telling the others
            error = err
    box = [error is not None]
    dist.broadcast_object_list(box, src=0)
    if box[0]:
        if info.main:
            raise error
        raise PeerFailed()
    return result if info.main else work()


def setup_process(cfg):
    """(Dist, device): reads torchrun's environment, picks the device once (cuda:LOCAL_RANK under
    torchrun) and joins the process group (nccl on CUDA, gloo on CPU)."""
    info = Dist(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                int(os.environ.get("LOCAL_RANK", 0)))
    device = choose_device(cfg.device, info)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True    # fixed input sizes: autotune each conv once
    if info.world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return info, device


def choose_device(spec, info):
    """torch.device of --device auto | cpu | cuda | cuda:N; a ValueError naming the value when that
    device does not exist (also when torchrun starts more processes than the machine has GPUs)."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {spec!r}: choose auto, cpu, cuda or cuda:N")
    if device.type == "cpu":
        return device
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ValueError(f"--device {spec}: no CUDA device is available")
    if info.world > 1:
        if device.index is not None:
            raise ValueError(f"--device {spec}: under torchrun each process uses cuda:LOCAL_RANK; "
                             f"pass --device cuda (or auto)")
        if info.local_rank >= count:
            raise ValueError(f"torchrun process LOCAL_RANK={info.local_rank} has no GPU: this machine "
                             f"has {count}; use --nproc_per_node {count} or fewer")
        return torch.device("cuda", info.local_rank)
    index = device.index or 0
    if index >= count:
        raise ValueError(f"--device {spec}: this machine has {count} CUDA device(s), cuda:0 to "
                         f"cuda:{count - 1}")
    return torch.device("cuda", index)


# ---- The batch sampler ----
class EpochBatches:
    """Batch sampler whose order is a pure function of (seed, epoch): rank r takes every world-th
    index of one permutation (a DistributedSampler without padding), `drop_last`; set_epoch(epoch,
    skip) restarts the epoch after `skip` batches (resume). Yields [(epoch, index), ...] so that
    the dataset copies in (persistent) workers know the epoch of each sample (01_data.KittiRaw
    accepts such keys)."""

    def __init__(self, num_samples, batch_size, seed, rank=0, world=1):
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.rank, self.world = rank, world
        self.batches_per_epoch = num_samples // (batch_size * world)
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch, skip=0):
        self.epoch, self.skip = epoch, skip

    def order(self, epoch):
        """The epoch's permutation of all indices (identical on every rank)."""
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0]))
        return torch.randperm(self.num_samples, generator=g).tolist()

    def __len__(self):
        return self.batches_per_epoch - self.skip

    def __iter__(self):
        used = self.batches_per_epoch * self.batch_size * self.world
        mine = self.order(self.epoch)[self.rank:used:self.world]       # this rank's shard
        for b in range(self.skip, self.batches_per_epoch):
            yield [(self.epoch, i) for i in mine[b * self.batch_size:(b + 1) * self.batch_size]]


# ---- Data loading ----
def ensure_synthetic_world(cfg, info):
    """The default data: generate data/synthetic with synthetic_world.py (rank 0 first; skipped when
    complete)."""
    import synthetic_world                       # only the default run needs the renderer
    root = HERE / "data" / "synthetic"

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
    """{"train", "val", "test"}: the list files of this run, resolved (and downloaded) through
    01_data.get_split_file: --train_files/--val_files as given, else SPLIT_DIR/<split>/; the
    test list of --eval_split (synthetic / eigen by default) for the leakage check. `log` gets the
    informative line about a user's list that differs from the standard list of its name."""
    split, eval_split = split_names(cfg)
    if bool(cfg.train_files) != bool(cfg.val_files):
        raise ValueError("--train_files and --val_files go together (a run needs a validation list)")
    if cfg.train_files and cfg.split:
        raise ValueError(f"give --split {cfg.split} or --train_files/--val_files, not both")

    def find(name, kind):
        return data.get_split_file(name, kind, cfg.split_dir or None, data_path=str(root), log=log)

    if cfg.train_files:
        files = {"train": Path(cfg.train_files).resolve(), "val": Path(cfg.val_files).resolve()}
    else:
        files = {"train": find(split, "train"), "val": find(split, "val")}
    files["test"] = find(eval_split, "test")
    return files


def load_splits(cfg, root, log=print):
    """(train lines, val lines, list files), after 01's leakage check of the train and val lines
    against the evaluation split's test list (an old official train list shared 21 drives with the
    Eigen test split). Reads only the lists, no image: it runs before any data is read."""
    files = split_files(cfg, root, log)
    train, val, test = (data.read_split(files[k]) for k in ("train", "val", "test"))
    split, eval_split = split_names(cfg)
    what = f"the {'--train_files/--val_files' if cfg.train_files else split} split (train + val lines)"
    against = f"the {eval_split} test split"
    shared = data.require_disjoint_splits(train + val, test, cfg.allow_split_overlap, what, against)
    if shared and log is not None:
        log(f"warning: {what} shares {data.describe_overlap(shared, len(test), against)} "
            f"(allowed by --allow_split_overlap): test numbers on these drives will be optimistic")
    return train, val, files


def make_datasets(cfg, root, info=None):
    """(train KittiRaw with augmentation, val KittiRaw without, list files) at the network size.
    The lists are resolved on rank 0 first (it downloads what is missing), then on the others."""
    info = info or Dist()
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
    """[N, S] float32 on the device: metres that the camera moves from each sample's frame to each
    temporal source frame, from the synthetic world's poses (the left camera's); None for KITTI."""
    if not dataset.synthetic:
        return None
    import synthetic_world                       # the poses file is the world's
    temporal = [int(f) for f in frame_ids[1:] if f != "s"]
    poses, rows = {}, []
    for folder, frame, _ in dataset.lines:
        if folder not in poses:
            poses[folder] = synthetic_world.read_synthetic_poses(dataset.data_path / folder)  # [F, 4, 4]
        P = poses[folder]
        rows.append([np.linalg.norm((np.linalg.inv(P[frame + fid]) @ P[frame])[:3, 3]) for fid in temporal])
    return torch.tensor(rows, dtype=torch.float32, device=device)


def make_loaders(cfg, train_set, val_set, info, device):
    """Train loader over EpochBatches, val loader over this rank's shard (in order, all samples).
    Own torch.Generators keep the loaders from drawing on the global RNG (exact resume)."""
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
    """A collated batch (nested dicts of tensors) on the device, its uint8 images turned into float
    in [0, 1] there (a quarter of the bytes cross to the GPU); 4-D tensors NHWC if asked."""
    def move(value):  # .float() in images_to_float keeps the memory format
        if isinstance(value, dict):
            return {k: move(v) for k, v in value.items()}
        if not torch.is_tensor(value):
            return value
        value = value.to(device, non_blocking=True)
        return value.contiguous(memory_format=torch.channels_last) if channels_last and value.dim() == 4 else value

    return data.images_to_float(move(batch))


# ---- Checkpoints (atomic) and RNG states ----
def rng_state():
    """torch / CUDA / numpy / python RNG states in types torch.load(weights_only=True) accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next}}


def set_rng_state(state):
    """Inverse of rng_state()."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))


def save_checkpoint(state, path):
    """torch.save to a temporary file in the same folder, then os.replace: a crash or kill while
    writing leaves the previous file as it was (rename is atomic on POSIX and Windows)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_checkpoint(path):
    """A checkpoint dict of this script (ValueError / FileNotFoundError with one line otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:                     # zip / pickle errors of every kind
        raise ValueError(f"{path} is not a readable checkpoint ({_one_line(err)})") from None
    needed = {"model", "pose", "optimizer", "scheduler", "step", "epoch", "best_val", "steps_per_epoch",
              "config", "rng"}
    if not isinstance(ckpt, dict) or not needed <= set(ckpt):
        raise ValueError(f"{path} is not a checkpoint of 06_train.py")
    return ckpt


def resume_config(ckpt, given, run_dir):
    """The checkpoint's TrainConfig with the given flags applied; refuses architecture changes."""
    stored = {k: v for k, v in ckpt["config"].items() if k not in RECORD_KEYS}
    try:
        cfg = TrainConfig(**stored)
    except TypeError as err:
        raise ValueError(f"{run_dir}/ckpt.pt has an unknown config ({_one_line(err)})") from None
    for name in ARCH_FIELDS + tuple(MODEL_FIELDS):
        old = stored["model"].get(name) if name in MODEL_FIELDS else stored[name]
        new = given.get(name, old)
        if name == "pretrained":
            continue                             # the weights come from the checkpoint anyway
        if new != old:
            raise ValueError(f"--resume {run_dir}: its checkpoint was trained with {name}={old!r}, "
                             f"not {new!r} (a checkpoint of another preset/architecture)")
    return apply_overrides(cfg, {**given, "resume": str(run_dir), "run_dir": str(run_dir)})


def _one_line(err):
    """The first line of an exception message (state-dict errors span many lines)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _unwrap(net):
    return net.module if isinstance(net, torch.nn.parallel.DistributedDataParallel) else net


# ---- Logging and plots (rank 0) ----
LOG_COLUMNS = ("step", "epoch") + STEP_TERMS + ("lr", "img_per_s", "data_wait_pct", "eta_s")
VAL_COLUMNS = (("step", "epoch", "val_loss", "best_val_loss") + bins.INTERNALS_STATS + posenet_loss.HEALTH_TERMS
               + ("motion_ratio", "collapsed"))


def append_csv(path, columns, row):
    """One row into a CSV (header when new). Floats keep full precision (resume comparisons)."""
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(columns)
        writer.writerow([repr(row[c]) if isinstance(row[c], float) else row[c] for c in columns])


def truncate_csv(path, step):
    """Drop the rows written after `step` (a resumed run rewrites them)."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    keep = rows[:1] + [r for r in rows[1:] if int(r[0]) <= step]
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(keep)


def format_time(seconds):
    seconds = int(max(seconds, 0))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def save_plots(run_dir, model):
    """RUN/curves.png: training loss terms, validation loss, learning rate, throughput and the
    self-query diagnostics of each validation (model: the run's DepthNetConfig as a dict)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def read(path):
        if not path.exists():
            return {}
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        return {k: np.array([float(r[k]) for r in rows]) for k in (rows[0] if rows else {})}

    log, val = read(run_dir / "log.csv"), read(run_dir / "val.csv")
    if not log:
        return None
    fig, axes = plt.subplots(2, 3, figsize=(15, 7))
    axes[0, 0].plot(log["step"], log["loss"], label="total")
    axes[0, 0].plot(log["step"], log["photometric"], label="photometric", alpha=0.7)
    axes[0, 0].set_title("training loss")
    if val:
        axes[0, 0].plot(val["step"], val["val_loss"], "o-", label="validation")
    axes[0, 0].legend()
    axes[0, 1].plot(log["step"], log["smoothness"])
    axes[0, 1].set_title("smoothness term (unweighted)")
    axes[1, 0].semilogy(log["step"], log["lr"])
    axes[1, 0].set_title("learning rate")
    axes[1, 1].plot(log["step"], log["img_per_s"])
    axes[1, 1].set_title("throughput (img/s, all processes)")
    if val and "query_similarity" in val:  # older runs lack these columns
        axes[0, 2].plot(val["step"], val["query_similarity"], "o-", label="query cosine similarity")
        axes[0, 2].plot(val["step"], val["effective_rank"] / model["num_queries"], "s-",
                        label="cost-volume effective rank / Q")
        axes[0, 2].plot(val["step"], val["bins_99"] / model["num_bins"], "^-", label="bins holding 99% / D")
        axes[0, 2].set_ylim(0, 1.05)
        axes[0, 2].legend(fontsize=8)
    axes[0, 2].set_title("self-query layer (1st val batch)")
    axes[1, 2].axis("off")
    for ax in axes.flat:
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(run_dir / "curves.png", dpi=90)
    plt.close(fig)
    return run_dir / "curves.png"


# ---- Signals: finish the step, save, exit ----
class NonFinite(Exception):
    """A NaN/Inf weight found when about to save."""


def first_nonfinite(named_tensors):
    """The name of the first tensor holding a NaN/Inf, or None: one stacked check on the device and
    one host read, not one per tensor (hundreds of waits for the GPU before every save)."""
    finite = torch.stack([torch.isfinite(t).all() for _, t in named_tensors])   # [P] bools
    if bool(finite.all()):
        return None
    return named_tensors[int((~finite).int().argmax())][0]


class StopRequest:
    """SIGINT/SIGTERM set `signum`: the loop finishes the step, saves and exits. Copies of the same
    signal within a second are ignored (`timeout`, torchrun and the terminal's process group each
    deliver one); a later SIGINT raises KeyboardInterrupt at once (an impatient second Ctrl-C)."""

    def __init__(self):
        self.signum, self.when = 0, 0.0

    def handle(self, signum, frame):
        now = time.monotonic()
        if not self.signum:
            self.signum, self.when = signum, now
        elif signum == signal.SIGINT and now - self.when > 1.0:
            raise KeyboardInterrupt

    @contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        old = {s: signal.signal(s, self.handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, h in old.items():
                signal.signal(s, h)


def step_outcome(terms, signum, info, need_values):
    """({term: float} or None, a non-finite loss term on any process, a signal on any process) after
    a step, with one host read, after the optimizer step. One process: the terms themselves (the
    loss terms and the health numbers that train_step returned). Under torchrun: a (non-finite,
    signal) pair reduced with max over all processes on the device, so everyone stops together; the
    terms only when logged (need_values) or bad."""
    names = [k for k in STEP_TERMS if k in terms]
    values = torch.stack([terms[k] for k in names])                   # [T] on the device
    if info.world == 1:
        host = dict(zip(names, values.tolist()))
        return host, not all(math.isfinite(host[k]) for k in LOSS_TERMS), signum
    loss_finite = torch.isfinite(values[:len(LOSS_TERMS)]).all()
    flags = torch.stack([(~loss_finite).long(),                       # (2,): a fill, no host copy
                         torch.full((), signum, dtype=torch.int64, device=values.device)])
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    nonfinite, signum = flags.tolist()
    host = dict(zip(names, values.tolist())) if need_values or nonfinite else None
    return host, bool(nonfinite), signum


# ---- Profiling ----
class PartClock:
    """Where a training step's time goes, by part, for --profile. Forward: module hooks time the
    depth net, the pose net and SSIM; the rest of the forward pass is warping and the loss. Backward:
    autograd runs nodes in reverse order of creation, so the loss's backward comes first, then the
    pose net's, then the depth net's; a gradient hook on each network's output marks the moment its
    backward starts. On CUDA every mark synchronises, so each part is charged its own GPU time."""

    NETS = ("depth net", "pose net")

    def __init__(self, depth_net, pose_net, ssim, device):
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.handles, self.started = [], {}
        self.watch("depth net", depth_net)
        self.watch("pose net", pose_net)
        if ssim is not None:
            self.watch("ssim", ssim)
        self.reset()

    def now(self):
        self.sync()
        return time.perf_counter()

    def reset(self):
        """Forget what was booked (after the warm-up steps)."""
        self.forward, self.backward, self.other = defaultdict(float), defaultdict(float), defaultdict(float)
        self.begin_step()

    def watch(self, part, module):
        def before(module, inputs):
            self.started[part] = self.now()

        def after(module, inputs, output):
            self.step_forward[part] += self.now() - self.started.pop(part)
            for t in (output if isinstance(output, tuple) else (output,)) if part != "ssim" else ():
                if t.requires_grad:
                    t.register_hook(lambda grad: self.mark_gradient(part))

        self.handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]

    def mark_gradient(self, part):
        """The first gradient that reaches a network's output: its backward pass starts now."""
        self.grad_marks.setdefault(part, self.now())

    def begin_step(self):
        self.step_forward, self.grad_marks = defaultdict(float), {}

    def end_step(self, start, data_ready, forward_end, backward_end, optimizer_end):
        """Book one step from the times at its start, when its batch was ready and at the ends of its
        three phases (train_step's timer)."""
        self.other["data wait"] += data_ready - start
        nets = sum(self.step_forward[p] for p in self.NETS)
        for part in self.NETS:
            self.forward[part] += self.step_forward[part]
        self.forward["warping + loss"] += forward_end - data_ready - nets
        self.forward["of which SSIM"] += self.step_forward["ssim"]
        depth = self.grad_marks.get("depth net", backward_end)
        pose = self.grad_marks.get("pose net", depth)
        self.backward["warping + loss"] += pose - forward_end
        self.backward["pose net"] += depth - pose
        self.backward["depth net"] += backward_end - depth
        self.other["optimizer"] += optimizer_end - backward_end
        self.begin_step()

    def report(self, steps):
        """Lines of the per-part table, in ms per step."""
        total = sum(self.other.values()) + sum(self.backward.values()) + sum(
            v for k, v in self.forward.items() if k != "of which SSIM")
        per = 1000 / steps
        lines = [f"  {'part':<18} {'forward':>8} {'backward':>9} {'total':>8}   ms/step, share"]
        for part in ("data wait", "depth net", "pose net", "warping + loss", "of which SSIM", "optimizer"):
            f, b, o = self.forward[part], self.backward[part], self.other[part]
            if part == "of which SSIM":
                lines.append(f"    {part:<16} {per * f:8.1f} {'(in loss)':>9}")
                continue
            cells = f"{'':8} {'':9}" if part in ("data wait", "optimizer") else f"{per * f:8.1f} {per * b:9.1f}"
            lines.append(f"  {part:<18} {cells} {per * (f + b + o):8.1f}   {100 * (f + b + o) / total:4.1f}%")
        return total, lines

    def close(self):
        for handle in self.handles:
            handle.remove()


def profile(trainer, steps, warmup=2):
    """--profile N: N timed steps after `warmup` untimed ones; prints the throughput and where the
    time goes by part (PartClock). Writes nothing."""
    cfg, device, info = trainer.cfg, trainer.device, trainer.info
    clock = PartClock(*map(_unwrap, trainer.nets), trainer.ssim, device)

    def endless():
        for epoch in range(10 ** 9):
            trainer.sampler.set_epoch(epoch)
            yield from trainer.train_loader

    batches, phase_end = endless(), {}

    def timer(phase):
        phase_end[phase] = clock.now()

    for i in range(warmup + steps):
        start = clock.now()
        batch = to_device(next(batches), device, cfg.channels_last)
        data_ready = clock.now()
        train_step(*trainer.nets, batch, trainer.optimizer, trainer.loss_cfg, trainer.ssim,
                   amp=amp_on(cfg, device), timer=timer)
        clock.end_step(start, data_ready, phase_end["forward"], phase_end["backward"], phase_end["optimizer"])
        if i + 1 == warmup:
            clock.reset()
    clock.close()
    total, lines = clock.report(steps)
    if info.main:
        print(f"profile: {steps} steps after {warmup} warm-up | batch {cfg.batch_size} x {info.world} | "
              f"{cfg.width}x{cfg.height} | {device} | amp {'on' if amp_on(cfg, device) else 'off'} | "
              f"channels_last {'on' if cfg.channels_last else 'off'} | workers {cfg.num_workers} | "
              f"huge pages {'on' if huge_pages_in_effect() else 'off'}")
        print(f"  throughput {steps * cfg.batch_size * info.world / total:8.1f} img/s "
              f"({1000 * total / steps:.1f} ms/step)")
        print("\n".join(lines))
    return 0


# ---- The final evaluation, the run folder, main ----
def run_eval(run_dir):
    """The final evaluation, exactly as a user would type it (06 never imports 07)."""
    cmd = [sys.executable, "07_eval.py", "--checkpoint", str(run_dir / "best.pt"), "--baselines", "--figures"]
    print("eval: " + " ".join(cmd[1:]), flush=True)
    code = subprocess.run(cmd, cwd=HERE).returncode
    if code:
        print(f"error: 07_eval.py exited with code {code}; the checkpoints are in {run_dir}", file=sys.stderr)
    return code


def prepare_run(cfg, given):
    """(config, checkpoint or None): a new run folder, or the config stored in --resume RUN."""
    if cfg.resume:
        run_dir = Path(cfg.resume).resolve()
        if not run_dir.is_dir():
            raise FileNotFoundError(f"--resume {cfg.resume}: no such run folder")
        ckpt = load_checkpoint(run_dir / "ckpt.pt")
        return resume_config(ckpt, given, run_dir), ckpt
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(cfg.run_dir) if cfg.run_dir else HERE / "runs" / f"{cfg.preset}-{stamp}"
    if (run_dir / "ckpt.pt").exists() and not cfg.profile:
        raise ValueError(f"{run_dir} already holds a checkpoint: continue it with --resume {run_dir} "
                         f"or choose another --run_dir")
    return replace(cfg, run_dir=str(run_dir.resolve())), None


def main(argv=None):
    """Parse, train (and evaluate); returns the exit code (see the module docstring)."""
    tune_cpu_memory()                            # before the first big tensor, or PyTorch ignores it
    try:
        cfg, given = parse_args(argv)
    except SystemExit as exit_:                  # --help, or argparse's own usage error (code 2)
        return int(exit_.code or 0)
    try:
        cfg, ckpt = prepare_run(cfg, given)
        info, device = setup_process(cfg)
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        np.random.seed(cfg.seed)
        random.seed(cfg.seed)
        trainer = Trainer(cfg, info, device, ckpt)
        if cfg.profile:
            return profile(trainer, cfg.profile)
        stop = StopRequest()
        with stop.installed():
            code = trainer.fit(stop)
        if info.main and code != EXIT_NONFINITE:
            curves = save_plots(trainer.run_dir, trainer.cfg.model)
        if info.main and code == 0:
            print(f"done: step {trainer.step}, best validation loss {trainer.best_val:.4f}, checkpoints "
                  f"{trainer.run_dir}/ckpt.pt and best.pt, curves {curves}", flush=True)
        if code == 0 and info.main and trainer.cfg.data == "synthetic" and not cfg.no_eval:
            code = run_eval(trainer.run_dir)
        return code
    except (data.DataError, FileNotFoundError, ValueError) as err:   # SplitOverlapError is a DataError
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except PeerFailed:                           # rank 0 printed the reason
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("error: interrupted again before the checkpoint was saved; the previous checkpoint "
              "(if any) is intact", file=sys.stderr)
        return 128 + signal.SIGINT
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
