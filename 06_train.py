"""06 - train: the self-supervised training program: presets, one step, validation, the loop.

Concept. Everything before this file is a piece; here they become a program, following the
protocol of Monodepth2 that SQLDepth reuses (paper Sec. 4, implementation details): a batch of
frame triplets (I-1, I0, I+1) from 01_data.KittiRaw, depth of I0 from 04_bins.DepthNet, the two
camera motions from the pose network and the photometric loss of 05_posenet_loss, minimised with
Adam; StepLR divides the learning rate by 10 after `lr_step` epochs. Read in this order:
`TrainConfig` and `PRESETS` (the CPU default and the KITTI set-ups of the released models),
`build_networks`, `make_optimizer`, `loss_config`, `train_step` (Exercise 6.1), `validate` (the
validation loss, the self-query diagnostics, the health numbers that tell a collapsed run) and
`fit` (the loop). Below the engineering banner: the Trainer that sets a run up, the command line
and main. What a reader of the concept never needs is in helpers/: run_record.py (the run's
record in RUN/: ckpt.pt, best.pt = the lowest validation loss, log.csv, val.csv; resume),
distributed_training.py (torchrun, the resumable sampler, signals), training_data.py (loaders),
training_health.py (is the run collapsing?), benchmark.py (--profile), cpu_threads.py (how many CPU
threads: the cores free at the start). Deviations from the official trainer: docs/kitti.md.

Run: `python 06_train.py` (synthetic world, about ten minutes on 2 CPU cores, ends with 07_eval.py),
`python 06_train.py --data kitti --data_path DIR --preset kitti-r50-640x192`,
`torchrun --nproc_per_node=N 06_train.py --data kitti --data_path DIR --preset kitti-r50-640x192`
(N GPUs), `python 06_train.py --help` for every option.
Tests: tests/test_06_train.py, tests/test_faults.py.

Exit codes: 0 done, 2 bad input (one `error: ...` line), 3 non-finite loss or weights, 4 a
checkpoint, log or figure could not be written (a full disk: the previous checkpoint is intact), 5 a
DataLoader worker died (out of memory; a checkpoint was saved first), 130 / 143 stopped by SIGINT /
SIGTERM (128 + the signal; a checkpoint was saved first), else 07_eval.py's code if the evaluation failed.
"""
import errno
import importlib
import math
import signal
import sys
import time
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.distributed as dist

# The helpers: engineering that a reader of the training concept can skip (helpers/NAME.py).
from helpers import cpu_threads                      # threads from the cores free at the start
from helpers import distributed_training as runtime  # torchrun, the resumable sampler, signals
from helpers import model_files                      # --init_from, --pose_init
from helpers import run_record                       # the command line, run folder, checkpoints, logs
from helpers import speed_layer                      # the CPU speed-ups (--no-speed_layer: stock PyTorch)
from helpers import training_data                    # the world, split lists, loaders
from helpers import training_health                  # is self-supervision working? (a collapsed run)
from helpers.cli import one_line                     # errors as one line
from helpers.training_data import frame_ids          # the frames of a sample: 0, the sources (and "s")
from helpers.run_record import EXIT_BAD_INPUT, EXIT_NONFINITE, EXIT_SAVE_FAILED

# A module name cannot start with a digit in an `import` statement, so the numbered scripts are
# loaded by name; the alias is the file name without its number.
data = importlib.import_module("01_data")
unet = importlib.import_module("02_unet")
bins = importlib.import_module("04_bins")
posenet_loss = importlib.import_module("05_posenet_loss")


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
    lr_step: int = 3                # StepLR: multiply the lr by lr_gamma every lr_step epochs
    lr_gamma: float = 0.1           # StepLR factor
    use_stereo: bool = False        # add the stereo frame "s" as a source ("MS" training)
    source_frames: list = field(default_factory=lambda: [-1, 1])  # temporal sources: offsets from the target
    pose_scaling: str = "depth"     # monocular translation scaling: depth | inv_depth (official) | none
    pose_net: str = "posecnn"       # posecnn (official trainer) or resnet (Monodepth2's PoseResNet-18)
    smoothness_weight: float = 0.0  # smoothness weight; 0 = the recipe's: 1e-3 with stereo, 1e-2 without
    ssim_window: int = 7            # SSIM window (7 as SQLDepth, 3 as Monodepth2, 0 = L1 only)
    automask: bool = True           # Monodepth2's auto-masking of static pixels
    model: dict = field(default_factory=dict)  # DepthNetConfig as a plain dict (flat flags --num_layers ...)
    seed: int = 0                   # seeds the initialisation, the sample order and the augmentation
    device: str = "auto"            # auto | cpu | cuda | cuda:N (under torchrun: cuda:LOCAL_RANK)
    amp: bool = False               # bf16 autocast of the depth network (CUDA, CPUs with native bf16)
    channels_last: bool = True    # NHWC layout of both networks and their inputs (docs/benchmarks.md)
    speed_layer: bool = True        # CPU: the speed-ups of helpers/speed_layer.py (same numbers); off: stock
    num_workers: int = 1            # DataLoader worker processes per training process (0 = in the loop)
    cache_mb: int = 0               # keep this many MB of decoded frames in memory, per dataset and process
    threads: int = 0                # CPU threads per process for PyTorch ops (0 = auto: the free cores)
    pin_memory: bool = True         # page-locked host batches (only used on CUDA)
    persistent_workers: bool = True  # keep the workers alive between epochs (when num_workers > 0)
    log_every: int = 25             # steps between log lines / log.csv rows
    save_every: int = 0             # also checkpoint every N steps (0 = only at epoch ends)
    val_batches: int = 0            # validation batches per evaluation (0 = the whole val split)
    val_every: int = 0              # also validate (and checkpoint) every N steps (0 = at epoch ends)
    run_dir: str = ""               # output folder; "" = runs/<preset>-<date-time> next to this file
    resume: str = ""                # a run folder to continue from its ckpt.pt
    no_eval: bool = False           # skip the final 07_eval.py run (synthetic data only)
    init_from: str = ""             # depth net from weights: our checkpoint, or official encoder+depth.pth
    pose_init: str = ""             # pose net from weights: our checkpoint, or the official pose.pth
    keep_epochs: bool = False       # also keep each epoch's weights as RUN/epoch_NNN.pt (for 07_eval.py)
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


def _released_ms(name, height, width, **model):
    """A released MS model's recipe: its set-up with the stereo source and the pose lr / 10."""
    base = _kitti_preset(name, height, width)
    return {**base, "preset": f"{name}-ms", "use_stereo": True, "pose_lr_scale": 0.1,
            "model": {**base["model"], **model}}


PRESETS = {
    # Sized for a run of about ten minutes on 2 CPU cores (8 min 36 s in all, training at a median
    # 26 img/s, on an idle 2-core AMD EPYC with AVX-512: docs/benchmarks.md): 64x208 input, lr 5e-4
    # (1e-4 scored worse at this budget: docs/ablations.md), 4 epochs of the 3,072 training samples,
    # lr / 10 for the last epoch. Stereo ("MS"): at this budget monocular training reached AbsRel
    # 0.159-0.177 on the synthetic test split over five seeds, MS 0.096 +- 0.001 over three
    # (docs/monocular.md; the fixed stereo baseline supervises the far range, where forward motion
    # gives little parallax).
    # Loading in the loop (num_workers 0): on 2 cores a worker process fights the step's threads and
    # slows it more than the loading it takes over; each decoded frame is kept (the world's frames
    # at 416x128 fit in ~610 MB; at 208x64 in a quarter of that), so later epochs skip the decoding
    # (docs/benchmarks.md).
    "synthetic-cpu": lambda: dict(model=_synthetic_model(), use_stereo=True, num_workers=0,
                                  cache_mb=1024),
    # The same run at the world's stored 416x128 (4x the pixels: poles a few pixels wide instead of
    # one or two): its 1,536 steps take about 29 minutes of training on an idle 2-core Intel Xeon by
    # its --profile 10 (docs/ablations.md, "Thin structures at 416x128").
    "synthetic-cpu-416x128": lambda: dict(model=_synthetic_model(patch_size=16), use_stereo=True,
                                          num_workers=0, cache_mb=1024, height=128, width=416),
    "kitti-r50-640x192": lambda: _kitti_preset("kitti-r50-640x192", 192, 640),
    "kitti-r50-1024x320": lambda: _kitti_preset("kitti-r50-1024x320", 320, 1024),
    "kitti-r18-640x192": lambda: _kitti_preset("kitti-r18-640x192", 192, 640),
    # The released MS models, as their official argument files differ from the set-ups above:
    # stereo, pose lr / 10 (--diff_lr), and min_depth 0.01 at 1024x320 (docs/kitti.md, "The released recipe").
    "kitti-r50-640x192-ms": lambda: _released_ms("kitti-r50-640x192", 192, 640),
    "kitti-r50-1024x320-ms": lambda: _released_ms("kitti-r50-1024x320", 320, 1024, min_depth=0.01),
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
    layout = torch.channels_last if cfg.channels_last else torch.contiguous_format
    # Both networks in the layout of their (4-D) inputs: a mismatch re-lays out weights every call.
    return depth_net.to(device, memory_format=layout), pose_net.to(device, memory_format=layout)


def make_optimizer(cfg, depth_net, pose_net, adam=torch.optim.Adam):
    """Adam over both networks (pose lr = lr x pose_lr_scale; with query_lr_scale != 1 the query
    path of the self-query layer in a group of its own at lr x query_lr_scale). `adam`: the class
    (or factory) a run's speed layer chose: fused where it runs faster, the same update."""
    query = {id(p) for p in depth_net.query_parameters()} if cfg.query_lr_scale != 1 else set()
    groups = [{"params": [p for p in depth_net.parameters() if id(p) not in query], "lr": cfg.lr},
              {"params": list(pose_net.parameters()), "lr": cfg.lr * cfg.pose_lr_scale}]
    if query:
        groups.append({"params": depth_net.query_parameters(), "lr": cfg.lr * cfg.query_lr_scale})
    return adam(groups)


# The smoothness weight when none is given: the paper's 1e-3 for MS; 1e-2 for monocular (M) runs,
# where 1e-3 let textureless road regions go far on some seeds (README, "Monocular training").
SMOOTHNESS_WEIGHT = {True: 1e-3, False: 1e-2}


def loss_config(cfg):
    """05's LossConfig of this run."""
    min_depth, max_depth = bins.output_depth_range(bins.DepthNetConfig(**cfg.model))
    smoothness_weight = cfg.smoothness_weight or SMOOTHNESS_WEIGHT[cfg.use_stereo]
    return posenet_loss.LossConfig(frame_ids=frame_ids(cfg), use_stereo=cfg.use_stereo,
                                   ssim_window=cfg.ssim_window, smoothness_weight=smoothness_weight,
                                   automask=cfg.automask,
                                   pose_scaling=cfg.pose_scaling, min_depth=min_depth, max_depth=max_depth)


def train_step(depth_net, pose_net, inputs, optimizer, loss_cfg, ssim):
    """One optimisation step of self-supervised training; returns the loss terms (0-d tensors).

    Exercise 6.1: implement one training step. Clear the old gradients, predict the depth
    [B, 1, H/2, W/2] of the augmented target frame inputs["color_aug"][0] [B, 3, H, W], the source
    poses with posenet_loss.predict_poses(pose_net, inputs, loss_cfg, depth=depth) ({fid: [B, 4, 4]}),
    the loss dict with posenet_loss.self_supervised_loss(inputs, depth, poses, loss_cfg, ssim),
    back-propagate its "loss" (a scalar) and take one optimizer step. Return the loss dict's
    entries named in STEP_TERMS (the three loss terms and the loss's health numbers) as detached 0-d
    tensors, not floats: float() makes the host wait for the GPU, and the loop reads them all at
    once, after the step.
    Hint: without zero_grad the gradients of all earlier steps add up; without optimizer.step()
    nothing learns (tests/test_06_train.py checks both against a step computed by hand).
    """
    optimizer.zero_grad(set_to_none=True)
    depth = depth_net(inputs["color_aug"][0])                          # [B, 1, H/2, W/2]
    poses = posenet_loss.predict_poses(pose_net, inputs, loss_cfg, depth=depth)  # {fid: [B, 4, 4]}
    out = posenet_loss.self_supervised_loss(inputs, depth, poses, loss_cfg, ssim)
    out["loss"].backward()
    optimizer.step()
    return {k: out[k].detach() for k in STEP_TERMS}


LOSS_TERMS = ("loss", "photometric", "smoothness")
STEP_TERMS = LOSS_TERMS + training_health.HEALTH_TERMS   # what train_step returns (with the health numbers)


@torch.no_grad()
def validate(depth_net, pose_net, loader, loss_cfg, ssim, cfg, device, info, true_motion=None):
    """(mean self-supervised loss over the val split (all ranks' shards), {diagnostic: float}): the
    self-query diagnostics of 04_bins.stats_from_extras on this rank's first val batch, the loss's health
    numbers averaged over the split, "motion_ratio" (training_health.motion_vs_truth; NaN without ground
    truth: true_motion [N, S] metres per val sample, and depth_gt in the batches). Eval mode, and a
    forked RNG seeded with cfg.seed: the auto-mask noise is the same at every validation and the
    training RNG stream is untouched (so validating or not never changes the training run)."""
    depth_net.eval()
    pose_net.eval()
    names = training_health.HEALTH_TERMS
    # summed on the device, read once: loss, count, health numbers, motion ratios and their count
    sums = torch.zeros(2 + len(names) + 2, dtype=torch.float64, device=device)
    stats = dict.fromkeys(bins.INTERNALS_STATS, float("nan"))
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(cfg.seed)
        for i, batch in enumerate(loader):
            if cfg.val_batches and i >= cfg.val_batches:
                break
            batch = training_data.to_device(batch, device, cfg.channels_last)
            out = depth_net(batch["color"][0], return_extras=True)
            depth = out["depth"].float()                                # bf16 under --amp
            if i == 0:   # do the queries differ, how many bins are used? (reads the device: once)
                stats = bins.stats_from_extras(out)
            poses = posenet_loss.predict_poses(pose_net, batch, loss_cfg, depth=depth)
            loss = posenet_loss.self_supervised_loss(batch, depth, poses, loss_cfg, ssim)
            n = len(depth)
            sums[:2 + len(names)] += torch.stack([loss["loss"].double(), torch.ones((), device=device)]
                                                 + [loss[k].double() for k in names]) * n
            if true_motion is not None and "depth_gt" in batch:
                truth = true_motion[batch["index"]]                      # [B, S] on the device
                temporal = [fid for fid in posenet_loss.source_ids(loss_cfg) if fid != "s"]
                ratio = training_health.motion_vs_truth(depth, poses, batch["depth_gt"], truth, temporal)
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


# ---- The loop ----
def fit(trainer, stop):
    """The training loop of a Trainer (set up below the engineering banner) until its total_steps, a
    signal or a dead DataLoader worker (stop.signum) or a non-finite loss; returns the exit code.
    Each step: a batch, train_step, one host read of the loss terms
    (runtime.step_outcome), the log line; at epoch ends StepLR and a validation with checkpoints
    (trainer.save)."""
    cfg, info = trainer.cfg, trainer.info
    if info.main:   # one training per run folder: a second one is refused (helpers/run_record.py)
        trainer.lock = run_record.lock_run_folder(trainer.run_dir)
        for name in ("log.csv", "val.csv"):
            run_record.truncate_csv(trainer.run_dir / name, trainer.step)
        print(f"train: {cfg.preset} | {cfg.data} {cfg.width}x{cfg.height} | batch {cfg.batch_size} x "
              f"{info.world} process(es) | {trainer.steps_per_epoch} steps/epoch | step {trainer.step} -> "
              f"{trainer.total_steps} | {trainer.device} | {trainer.run_dir}", flush=True)
    interval = dict(start=time.perf_counter(), data=0.0, steps=0)
    last_saved, data_iter = trainer.step, trainer.batches()
    while trainer.step < trainer.total_steps and not stop.signum:
        tick = time.perf_counter()
        try:
            b, batch = next(data_iter)
        except Exception as err:             # Ctrl-C also reaches the workers: they may be gone
            if stop.signum or stop.worker_died(err):
                break
            raise
        interval["data"] += time.perf_counter() - tick
        batch = training_data.to_device(batch, trainer.device, cfg.channels_last)
        terms = train_step(*trainer.nets, batch, trainer.optimizer, trainer.loss_cfg, trainer.ssim)
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
            try:   # a failed validation: the checkpoint without it (helpers/distributed_training.py)
                runtime.save_or_stop(trainer.save, validate_now, stop)
            except run_record.NonFinite as err:
                return trainer.stop_nonfinite(str(err), last_saved)
            last_saved = trainer.step
            interval["start"] += time.perf_counter() - paused   # img/s and ETA exclude saving
    data_iter.close()
    try:
        if stop.signum or last_saved != trainer.step:
            runtime.save_or_stop(trainer.save, not stop.signum, stop)   # no validation when asked to stop
    except run_record.NonFinite as err:
        return trainer.stop_nonfinite(str(err), last_saved)
    if stop.signum:                          # a signal or a dead DataLoader worker: one line
        return stop.report(trainer.run_dir, trainer.step, info.main)
    runtime.report_checksums(trainer.nets, info, trainer.device)
    return 0


# ==============================================================================================
# ---- Engineering: not needed to understand SQLDepth ----
# The Trainer (what a run holds; its checkpoints, logs and resume are helpers/run_record.py's),
# the command line and main.
# ==============================================================================================
class Trainer(run_record.TrainingRun):
    """One run: networks, optimiser, schedule, loss, loaders and counters. Its record (checkpoints
    with validation, log lines, resume) is helpers/run_record.py's TrainingRun."""

    step_terms = STEP_TERMS

    def __init__(self, cfg, info, device, ckpt, threads):
        self.device = device
        data_path, loaders = training_data.prepare(cfg, info, device)
        cfg = replace(cfg, data_path=data_path)
        self.val_loader, self.true_motion = loaders.val, loaders.true_motion

        torch.manual_seed(cfg.seed)              # same initial weights on every rank
        # rank 0 first: one ImageNet download into torch's cache, the other ranks then load it
        depth_net, pose_net = runtime.main_rank_first(
            info, lambda: build_networks(cfg, device, load_pretrained=ckpt is None and not cfg.init_from))
        if ckpt is None:                         # a resumed run has its weights in the checkpoint
            cfg = model_files.start_networks(cfg, depth_net, pose_net, info.main)
        # On a CPU: small-map convs in place, the box-filter SSIM, flat Adam, bf16 only where native
        self.speed = speed_layer.apply(device, depth_net, pose_net, cfg.amp, cfg.speed_layer)
        # stored beside the config: the split lists and drives (07's leakage warning), commit, precision
        split_record = {**loaders.split_record, **run_record.provenance(ckpt, self.speed.bf16)}
        optimizer = make_optimizer(cfg, depth_net, pose_net, self.speed.adam)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, cfg.lr_step, cfg.lr_gamma)
        super().__init__(cfg, info, (depth_net, pose_net), optimizer, scheduler, loaders.sampler, loaders.train,
                         split_record, threads)
        self.loss_cfg = loss_config(cfg)
        self.ssim = self.speed.ssim(self.loss_cfg.ssim_window).to(device) if self.loss_cfg.ssim_window else None
        if ckpt is not None:
            self.load_state(ckpt)
        else:
            torch.manual_seed(cfg.seed + 1000 * info.rank)   # dropout / auto-mask noise per rank
        self.nets = (depth_net, pose_net)
        if info.world > 1:                       # static_graph: the encoder's fc is never used
            wrap = dict(device_ids=[device.index] if device.type == "cuda" else None, static_graph=True)
            self.nets = tuple(torch.nn.parallel.DistributedDataParallel(n, **wrap) for n in self.nets)
        self.lock = None                         # the run folder's lock: held from fit() on (rank 0)

    def validate(self):
        """validate() of this file on the run's networks and val loader."""
        return validate(*map(runtime.unwrap, self.nets), self.val_loader, self.loss_cfg, self.ssim, self.cfg,
                        self.device, self.info, self.true_motion)


# ---- Command line: one flag per TrainConfig field, model fields as flat flags (helpers/run_record.py)
def parse_args(argv=None):
    """(TrainConfig of the chosen preset with the given flags applied, {flag: value} given)."""
    return run_record.parse_args(argv, TrainConfig, preset_config, PRESETS)


def main(argv=None):
    """Parse, train (and evaluate); returns the exit code (see the module docstring)."""
    try:
        cfg, given = parse_args(argv)
    except SystemExit as exit_:                  # --help, or argparse's own usage error (code 2)
        return int(exit_.code or 0)
    if cfg.speed_layer:
        speed_layer.tune_cpu_memory()            # before the first big tensor, or PyTorch ignores it
    trainer = None
    try:
        cfg, ckpt = run_record.prepare_run(cfg, given, TrainConfig)
        info, device = runtime.setup_process(cfg)
        threads = cpu_threads.use_threads(cfg.threads, info.world, say=info.main, run_dir=cfg.run_dir,
                                          resumed=ckpt, watch=device.type == "cpu")
        trainer = Trainer(cfg, info, device, ckpt, threads)
        if cfg.amp and info.main and not trainer.speed.bf16:
            why = "this CPU has no native bf16 instructions" if cfg.speed_layer else "the speed layer is off"
            print(f"note: --amp runs in float32: {why} (bf16 on a CPU: AVX-512 BF16 or AMX)", flush=True)
        if cfg.profile:
            step = lambda batch: train_step(*trainer.nets, batch, trainer.optimizer, trainer.loss_cfg,
                                            trainer.ssim)
            prepare = lambda batch: training_data.to_device(batch, device, trainer.cfg.channels_last)
            from helpers import benchmark        # --profile: where a step's time goes
            return benchmark.profile(trainer, cfg.profile, prepare, step, trainer.speed.bf16)
        stop = runtime.StopRequest()
        with stop.installed():
            code = fit(trainer, stop)
        if info.main and code != EXIT_NONFINITE:
            curves = run_record.save_plots(trainer.run_dir, trainer.cfg.model)
        if info.main and code == 0:
            print(f"done: step {trainer.step}, best validation loss {trainer.best_val:.4f}, checkpoints "
                  f"{trainer.run_dir}/ckpt.pt and best.pt, curves {curves}", flush=True)
        if code == 0 and info.main and trainer.cfg.data == "synthetic" and not cfg.no_eval:
            code = run_record.run_eval(trainer.run_dir)
        runtime.wait_for_all(info)               # rank 0 may still be plotting: leave gloo together
        return code
    except (data.DataError, FileNotFoundError, ValueError, run_record.RunFolderBusy) as err:
        print(f"error: {one_line(err)}", file=sys.stderr)   # SplitOverlapError is a DataError
        return EXIT_BAD_INPUT
    except run_record.SaveError as err:          # a full disk: the previous checkpoint is intact
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
        trainer = None                           # the DDP wrappers go before their process group
        runtime.leave_process_group()


if __name__ == "__main__":
    sys.exit(main())
