"""06 - train: the self-supervised training program: presets, one step, validation, the loop.

Concept. Everything before this file is a piece; here they become a program, following the
protocol of Monodepth2 that SQLDepth reuses (paper Sec. 4, implementation details): a batch of
frame triplets (I-1, I0, I+1) from 01_data.KittiRaw, depth of I0 from 04_bins.DepthNet, the two
camera motions from the pose network and the photometric loss of 05_posenet_loss, minimised with
Adam; StepLR divides the learning rate by 10 after `lr_step` epochs. Read in this order:
`TrainConfig` and `PRESETS` (the CPU default and the three KITTI set-ups of the released models),
`build_networks`, `make_optimizer`, `loss_config`, `train_step` (Exercise 6.1), `validate` (the
validation loss, the self-query diagnostics, the health numbers that tell a collapsed run) and
`fit` (the loop). Below the engineering banner: the Trainer that sets a run up and writes RUN/
(ckpt.pt, best.pt = the lowest validation loss, log.csv, val.csv), the command line and main.
Helpers hold what a reader of the concept never needs: distributed_training.py (torchrun, the
resumable sampler, signals), run_folder.py (checkpoints, the lock, logs), training_data.py and
profiling.py (--profile). Deviations from the official trainer: docs/kitti.md.

Run: `python 06_train.py` (synthetic world, about ten minutes on 2 CPU cores, ends with 07_eval.py),
`python 06_train.py --data kitti --data_path DIR --preset kitti-r50-640x192`,
`torchrun --nproc_per_node=N 06_train.py ...`, `python 06_train.py --help` for every option.
Tests: tests/test_06_train.py, tests/test_faults.py.

Exit codes: 0 done, 2 bad input (one `error: ...` line), 3 non-finite loss or weights, 4 a
checkpoint could not be written (the previous one is intact), 130 / 143 stopped by SIGINT / SIGTERM
(128 + the signal; a checkpoint was saved first), else 07_eval.py's code if the evaluation failed.
"""
import errno
import importlib
import math
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

# The unnumbered helpers: engineering that a reader of the training concept can skip.
import distributed_training as runtime   # torchrun, the resumable sampler, signals (distributed_training.py)
import profiling                         # --profile (profiling.py)
import run_folder                        # checkpoints, the run folder's lock, logs (run_folder.py)
import training_cli                      # the command line, presets, --resume (training_cli.py)
import training_data                     # the world, split lists, loaders (training_data.py)
from cli import one_line                 # errors as one line (cli.py)
from cpu_memory import tune_cpu_memory   # page faults (cpu_memory.py)
from fused_adam import make_adam         # Adam, fused where it can be (fused_adam.py)
from mixed_precision import bf16_autocast_available  # where --amp runs (mixed_precision.py)
from training_data import frame_ids      # the frames of a sample: 0, the sources (and "s")

# A module name cannot start with a digit in an `import` statement, so the numbered scripts are
# loaded by name; the alias is the file name without its number.
data = importlib.import_module("01_data")
unet = importlib.import_module("02_unet")
bins = importlib.import_module("04_bins")
posenet_loss = importlib.import_module("05_posenet_loss")

HERE = Path(__file__).resolve().parent
EXIT_BAD_INPUT, EXIT_NONFINITE, EXIT_SAVE_FAILED = 2, 3, 4


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
    source_frames: list = field(default_factory=lambda: [-1, 1])  # temporal sources: offsets from the target
    pose_scaling: str = "depth"     # monocular translation scaling: depth | inv_depth (official) | none
    pose_net: str = "posecnn"       # posecnn (official trainer) or resnet (Monodepth2's PoseResNet-18)
    smoothness_weight: float = 0.0  # smoothness weight; 0 = the recipe's: 1e-3 with stereo, 1e-2 without
    smoothness_on: str = "depth"    # smooth "depth" (official SQLDepth) or "disparity" (Monodepth2)
    ssim_window: int = 7            # SSIM window (7 as SQLDepth, 3 as Monodepth2, 0 = L1 only)
    automask: bool = True           # Monodepth2's auto-masking of static pixels
    model: dict = field(default_factory=dict)  # DepthNetConfig as a plain dict (flat flags --num_layers ...)
    seed: int = 0                   # seeds the initialisation, the sample order and the augmentation
    device: str = "auto"            # auto | cpu | cuda | cuda:N (under torchrun: cuda:LOCAL_RANK)
    amp: bool = False               # bf16 autocast of the depth network (CUDA, CPUs with native bf16)
    channels_last: bool = True    # NHWC layout of both networks and their inputs (docs/benchmarks.md)
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
    """A released-model set-up: Adam 1e-4, batch 16, 25 epochs, StepLR(15, 0.1) (docs/kitti.md)."""
    model = asdict(replace(bins.PRESETS[name], pretrained="imagenet"))
    return dict(preset=name, data="kitti", height=height, width=width, batch_size=16, epochs=25,
                lr=1e-4, lr_step=15, lr_gamma=0.1, model=model, num_workers=8, log_every=200,
                save_every=2000, smoothness_weight=1e-3)


PRESETS = {
    # Sized for the 15-minute default on 2 CPU cores: 64x208 input, lr 5e-4 (1e-4 learns too slowly
    # in 10 minutes), 4 epochs of the 3,072 training samples (about 20 img/s on 2 idle cores: ~10
    # minutes), lr / 10 for the last epoch. Stereo ("MS"): at this budget monocular training
    # reached AbsRel 0.16-0.19 on the synthetic test split, MS 0.095 (the fixed stereo baseline
    # supervises the far range near the vanishing point, where forward motion gives no parallax).
    # Loading in the loop (num_workers 0): on 2 cores a worker process fights the step's threads and
    # slows it more than the loading it takes over; each decoded frame is kept (the world's frames
    # at 416x128 fit in ~610 MB; at 208x64 in a quarter of that), so later epochs skip the decoding
    # (docs/benchmarks.md).
    "synthetic-cpu": lambda: dict(model=_synthetic_model(), use_stereo=True, num_workers=0,
                                  cache_mb=1024),
    # The same run at the world's stored 416x128 (4x the pixels: poles a few pixels wide instead of
    # one or two): about 35 minutes on 2 cores by its --profile (docs/ablations.md, "Thin structures").
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


# The smoothness weight when none is given: the paper's 1e-3 for MS; 1e-2 for monocular (M) runs,
# where 1e-3 let textureless road regions go far on some seeds (README, "Monocular training").
SMOOTHNESS_WEIGHT = {True: 1e-3, False: 1e-2}


def loss_config(cfg):
    """05's LossConfig of this run."""
    min_depth, max_depth = bins.output_depth_range(bins.DepthNetConfig(**cfg.model))
    smoothness_weight = cfg.smoothness_weight or SMOOTHNESS_WEIGHT[cfg.use_stereo]
    return posenet_loss.LossConfig(frame_ids=frame_ids(cfg), use_stereo=cfg.use_stereo,
                                   ssim_window=cfg.ssim_window, smoothness_weight=smoothness_weight,
                                   smoothness_on=cfg.smoothness_on, automask=cfg.automask,
                                   pose_scaling=cfg.pose_scaling, min_depth=min_depth, max_depth=max_depth)


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
    truth: true_motion [N, S] metres per val sample, and depth_gt in the batches). Eval mode, and a
    forked RNG seeded with cfg.seed: the auto-mask noise is the same at every validation and the
    training RNG stream is untouched (so validating or not never changes the training run)."""
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
            batch = training_data.to_device(batch, device, cfg.channels_last)
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
    return (total[0] / total[1] if total[1] else float("nan")), {**stats, **health}


def amp_on(cfg, device):
    """bf16 autocast if asked for and worth it: on CUDA, and on a CPU with native bf16 instructions
    (mixed_precision.py); elsewhere --amp runs float32 (bf16 pays only where it is computed natively)."""
    return cfg.amp and bf16_autocast_available(device)


# ---- The loop ----
def fit(trainer, stop):
    """The training loop of a Trainer (set up below the engineering banner) until its total_steps, a
    signal (stop.signum) or a non-finite loss; returns the exit code. Each step: a batch, the
    learning-rate warm-up, train_step, one host read of the loss terms (runtime.step_outcome), the
    log line; at epoch ends StepLR and a validation with checkpoints (trainer.save)."""
    cfg, info = trainer.cfg, trainer.info
    if info.main:   # one training per run folder: a second one is refused (run_folder.py)
        trainer.lock = run_folder.lock_run_folder(trainer.run_dir)
        for name in ("log.csv", "val.csv"):
            run_folder.truncate_csv(trainer.run_dir / name, trainer.step)
        print(f"train: {cfg.preset} | {cfg.data} {cfg.width}x{cfg.height} | batch {cfg.batch_size} x "
              f"{info.world} process(es) | {trainer.steps_per_epoch} steps/epoch | step {trainer.step} -> "
              f"{trainer.total_steps} | {trainer.device} | {trainer.run_dir}", flush=True)
    interval = dict(start=time.perf_counter(), data=0.0, steps=0)
    last_saved, data_iter = trainer.step, trainer.batches()
    while trainer.step < trainer.total_steps:
        tick = time.perf_counter()
        try:
            b, batch = next(data_iter)
        except Exception:
            if stop.signum:                  # Ctrl-C also reaches the workers: they may be gone
                break
            raise
        interval["data"] += time.perf_counter() - tick
        batch = training_data.to_device(batch, trainer.device, cfg.channels_last)
        warm_up(trainer.optimizer, trainer.scheduler, trainer.step, trainer.epoch, cfg)
        terms = train_step(*trainer.nets, batch, trainer.optimizer, trainer.loss_cfg, trainer.ssim,
                           amp=amp_on(cfg, trainer.device))
        trainer.step += 1
        interval["steps"] += 1
        log_now = info.main and (trainer.step % cfg.log_every == 0 or trainer.step == trainer.total_steps)
        values, nonfinite, signum = runtime.step_outcome(terms, LOSS_TERMS, stop.signum, info,
                                                         need_values=log_now)
        if nonfinite:                        # nothing is saved: the model may hold NaNs now
            bad = [f"{k}={values[k]}" for k in LOSS_TERMS if values and not math.isfinite(values[k])]
            where = ", ".join(bad) or "on another process"
            return trainer.stop_nonfinite(f"non-finite loss at step {trainer.step} ({where})", last_saved)
        if log_now:
            trainer.log(values, interval)
        epoch_end = b + 1 == trainer.steps_per_epoch
        if epoch_end:
            trainer.epoch += 1
            trainer.scheduler.step()            # StepLR counts epochs (after the optimizer steps)
        if signum:
            stop.signum = signum
            break
        validate_now = epoch_end or (cfg.val_every and trainer.step % cfg.val_every == 0)
        if validate_now or (cfg.save_every and trainer.step % cfg.save_every == 0):
            paused = time.perf_counter()
            try:
                trainer.save(validate_too=validate_now)
            except run_folder.NonFinite as err:
                return trainer.stop_nonfinite(str(err), last_saved)
            last_saved = trainer.step
            interval["start"] += time.perf_counter() - paused   # img/s and ETA exclude saving
    data_iter.close()
    try:
        if stop.signum or last_saved != trainer.step:
            trainer.save(validate_too=not stop.signum)   # no validation when asked to stop
    except run_folder.NonFinite as err:
        return trainer.stop_nonfinite(str(err), last_saved)
    if stop.signum:
        if info.main:
            print(f"{signal.Signals(stop.signum).name}: saved {trainer.run_dir / 'ckpt.pt'} at step "
                  f"{trainer.step}; continue with --resume {trainer.run_dir}", flush=True)
        return 128 + stop.signum
    runtime.report_checksums(trainer.nets, info, trainer.device)
    return 0


# ==============================================================================================
# ---- Engineering: not needed to understand SQLDepth ----
# The Trainer (set-up, validation + checkpoints, log lines, resume), the command line and main.
# Processes, the sampler and signals live in distributed_training.py, checkpoints and logs in
# run_folder.py, the data plumbing in training_data.py, --profile in profiling.py.
# ==============================================================================================
# ---- The run: set-up, validation and checkpoints, log lines, resume ----
# The columns of RUN/log.csv (one row per logged step) and RUN/val.csv (one row per validation).
LOG_COLUMNS = ("step", "epoch") + STEP_TERMS + ("lr", "img_per_s", "data_wait_pct", "eta_s")
VAL_COLUMNS = (("step", "epoch", "val_loss", "best_val_loss") + bins.INTERNALS_STATS + posenet_loss.HEALTH_TERMS
               + ("motion_ratio", "collapsed"))


class Trainer:
    """State of one run: networks, optimiser, schedule, loaders, counters, log files."""

    def __init__(self, cfg, info, device, ckpt=None):
        self.info, self.device = info, device
        data_path, loaders = training_data.prepare(cfg, info, device)
        self.cfg = cfg = replace(cfg, data_path=data_path)
        self.train_loader, self.val_loader, self.sampler = loaders.train, loaders.val, loaders.sampler
        self.split_record, self.true_motion = loaders.split_record, loaders.true_motion
        self.steps_per_epoch = self.sampler.batches_per_epoch
        total = cfg.epochs * self.steps_per_epoch
        self.total_steps = min(total, cfg.max_steps) if cfg.max_steps > 0 else total

        torch.manual_seed(cfg.seed)              # same initial weights on every rank
        # rank 0 first: one ImageNet download into torch's cache, the other ranks then load it
        self.depth_net, self.pose_net = runtime.main_rank_first(
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
        self.collapse_watch = posenet_loss.CollapseWatch(collapse_advice(cfg))
        if info.world > 1:                       # static_graph: the encoder's fc is never used
            wrap = dict(device_ids=[device.index] if device.type == "cuda" else None, static_graph=True)
            self.nets = tuple(torch.nn.parallel.DistributedDataParallel(n, **wrap) for n in self.nets)
        self.run_dir, self.lock = Path(cfg.run_dir), None   # the lock: held from fit() on (rank 0)

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
        bad = run_folder.first_nonfinite([(f"{name}.{n}", p) for name, net in (("depth", self.depth_net),
                               ("pose", self.pose_net)) for n, p in net.named_parameters()])
        if bad:
            raise run_folder.NonFinite(f"non-finite weights after step {self.step} (e.g. {bad})")
        improved = False
        if validate_too:
            val, stats = validate(*map(runtime.unwrap, self.nets), self.val_loader, self.loss_cfg, self.ssim,
                                  self.cfg, self.device, self.info, self.true_motion)
            # 1.0 when 05's collapse_signs sees a sign in the validation's health numbers at this step
            stats["collapsed"] = float(bool(posenet_loss.collapse_signs(stats, self.step)))
            improved = val < self.best_val
            self.best_val = val if improved else self.best_val
        if not self.info.main:
            return
        state = self.state()
        run_folder.save_checkpoint(state, self.run_dir / "ckpt.pt")
        if improved or not (self.run_dir / "best.pt").exists():
            run_folder.save_checkpoint(state, self.run_dir / "best.pt")
        if validate_too:
            row = dict(step=self.step, epoch=self.epoch, val_loss=val, best_val_loss=self.best_val, **stats)
            run_folder.append_csv(self.run_dir / "val.csv", VAL_COLUMNS, row)
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
        run_folder.append_csv(self.run_dir / "log.csv", LOG_COLUMNS, row)
        print(f"step {self.step:>7}/{self.total_steps} | epoch {self.epoch + 1:>3}/{self.cfg.epochs} | "
              f"loss {row['loss']:.4f} photo {row['photometric']:.4f} smooth {row['smoothness']:.4f} | "
              f"spread {row['depth_spread']:.2f} motion {row['motion']:.3f} mask {row['automask_kept']:.2f} | "
              f"lr {row['lr']:.1e} | "
              f"{row['img_per_s']:6.1f} img/s | data {row['data_wait_pct']:4.1f}% | "
              f"ETA {run_folder.format_time(row['eta_s'])}", flush=True)
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

    def load_state(self, ckpt):
        """Continue from a checkpoint (weights, optimiser, schedule, counters, RNG states)."""
        try:
            self.depth_net.load_state_dict(ckpt["model"])
            self.pose_net.load_state_dict(ckpt["pose"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise ValueError(f"the checkpoint does not match its config: {one_line(err)}") from None
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.step, self.epoch, self.best_val = ckpt["step"], ckpt["epoch"], ckpt["best_val"]
        if ckpt["steps_per_epoch"] != self.steps_per_epoch:
            raise ValueError(f"the checkpoint has {ckpt['steps_per_epoch']} steps per epoch, this run "
                             f"{self.steps_per_epoch}: resume with the same data, batch size and processes")
        run_folder.set_rng_state(ckpt["rng"])
        if self.info.world > 1:                  # rank 0's streams were saved; keep ranks distinct
            torch.manual_seed(self.cfg.seed + 1000 * self.info.rank + self.step)

    def state(self):
        return {"model": self.depth_net.state_dict(), "pose": self.pose_net.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "step": self.step, "epoch": self.epoch, "best_val": self.best_val,
                "steps_per_epoch": self.steps_per_epoch, "config": {**asdict(self.cfg), **self.split_record},
                "rng": run_folder.rng_state()}


# ---- Command line: one flag per TrainConfig field, model fields as flat flags (training_cli.py) ----
def parse_args(argv=None):
    """(TrainConfig of the chosen preset with the given flags applied, {flag: value} given)."""
    return training_cli.parse_args(argv, TrainConfig, preset_config, PRESETS)




# ---- The final evaluation, main ----
def collapse_advice(cfg):
    """What the collapse warning suggests for this run's recipe (README, "Monocular training")."""
    where = "(README, \"Monocular training\")"
    if not cfg.use_stereo and cfg.smoothness_weight not in (0.0, 1e-2):
        return f"try --smoothness_weight 1e-2 (the monocular recipe) or another --seed {where}"
    return f"try another --seed, or stereo (--use_stereo) if you have it {where}"


def run_eval(run_dir):
    """The final evaluation, exactly as a user would type it (06 never imports 07). SIGINT / SIGTERM
    while it runs stop it with one line (the checkpoints are complete: they were saved before)."""
    cmd = [sys.executable, "07_eval.py", "--checkpoint", str(run_dir / "best.pt"), "--baselines", "--figures"]
    print("eval: " + " ".join(cmd[1:]), flush=True)
    code, signum = runtime.run_until_stopped(cmd, cwd=HERE)
    if signum:
        print(f"error: {signal.Signals(signum).name} during the final evaluation: stopped it; the checkpoints "
              f"in {run_dir} are complete (evaluate them with python {' '.join(cmd[1:])})", file=sys.stderr)
    elif code:
        print(f"error: 07_eval.py exited with code {code}; the checkpoints are in {run_dir}", file=sys.stderr)
    return code


def main(argv=None):
    """Parse, train (and evaluate); returns the exit code (see the module docstring)."""
    tune_cpu_memory()                            # before the first big tensor, or PyTorch ignores it
    try:
        cfg, given = parse_args(argv)
    except SystemExit as exit_:                  # --help, or argparse's own usage error (code 2)
        return int(exit_.code or 0)
    trainer = None
    try:
        cfg, ckpt = training_cli.prepare_run(cfg, given, TrainConfig)
        info, device = runtime.setup_process(cfg)
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        np.random.seed(cfg.seed)
        random.seed(cfg.seed)
        if cfg.amp and info.main and not amp_on(cfg, device):
            print("note: --amp runs in float32: this CPU has no native bf16 instructions (AVX-512 BF16 or AMX)",
                  flush=True)
        trainer = Trainer(cfg, info, device, ckpt)
        if cfg.profile:
            amp = amp_on(trainer.cfg, device)
            step = lambda batch, timer: train_step(*trainer.nets, batch, trainer.optimizer, trainer.loss_cfg,
                                                   trainer.ssim, amp=amp, timer=timer)
            prepare = lambda batch: training_data.to_device(batch, device, trainer.cfg.channels_last)
            return profiling.profile(trainer, cfg.profile, prepare, step, amp)
        stop = runtime.StopRequest()
        with stop.installed():
            code = fit(trainer, stop)
        if info.main and code != EXIT_NONFINITE:
            curves = run_folder.save_plots(trainer.run_dir, trainer.cfg.model)
        if info.main and code == 0:
            print(f"done: step {trainer.step}, best validation loss {trainer.best_val:.4f}, checkpoints "
                  f"{trainer.run_dir}/ckpt.pt and best.pt, curves {curves}", flush=True)
        if code == 0 and info.main and trainer.cfg.data == "synthetic" and not cfg.no_eval:
            code = run_eval(trainer.run_dir)
        return code
    except (data.DataError, FileNotFoundError, ValueError, run_folder.RunFolderBusy) as err:
        print(f"error: {one_line(err)}", file=sys.stderr)   # SplitOverlapError is a DataError
        return EXIT_BAD_INPUT
    except run_folder.SaveError as err:          # a full disk: the previous checkpoint is intact
        print(f"error: {one_line(err)}", file=sys.stderr)
        return EXIT_SAVE_FAILED
    except OSError as err:                       # a read-only run folder, a full disk while logging
        where = f" ({err.filename})" if err.filename else ""
        print(f"error: cannot write{where}: {err.strerror or one_line(err)}; the checkpoints written "
              f"before are intact", file=sys.stderr)
        return EXIT_SAVE_FAILED if err.errno == errno.ENOSPC else EXIT_BAD_INPUT
    except runtime.PeerFailed:                           # rank 0 printed the reason
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("error: interrupted again before the checkpoint was saved; the previous checkpoint "
              "(if any) is intact", file=sys.stderr)
        return 128 + signal.SIGINT
    finally:
        if trainer is not None and trainer.lock is not None:
            trainer.lock.close()                 # the run folder is free for the next training
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
