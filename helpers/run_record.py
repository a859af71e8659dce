"""run_record - a training run's command line and record: flags over presets, the run folder, resume.

Not a reading step: nothing in it is SQLDepth. 06_train.py's Trainer is a TrainingRun: 06 sets up what a
run trains and its loop `fit`; this module keeps the rest: the flags (every TrainConfig and
04_bins.DepthNetConfig field, over the chosen --preset), the run folder and --resume, the atomic
checkpoint writes, the logs and curves, and the final evaluation (07_eval.py as a subprocess).
Tests: tests/test_06_train.py, tests/test_faults.py.
"""
import argparse
import csv
import errno
import importlib
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, fields, replace
from pathlib import Path

import numpy as np
import torch

from helpers import distributed_training as runtime   # rank, ranks' agreement, subprocesses
from helpers import model_files                       # checkpoints read back, the NaN/Inf checks
from helpers import training_health                   # the collapse signs
from helpers.cli import add_dataclass_flags, one_line, without_removed  # the command line (helpers/cli.py)

try:
    import fcntl            # POSIX file locks; on Windows the run folder is not locked
except ImportError:
    fcntl = None

# A module name cannot start with a digit in an `import` statement: loaded by name.
bins = importlib.import_module("04_bins")
posenet_loss = importlib.import_module("05_posenet_loss")

ROOT = Path(__file__).resolve().parents[1]   # the repository: runs/ and 07_eval.py are here
# 06_train.py's exit codes (its docstring lists them all): bad input, NaN/Inf, a failed save.
EXIT_BAD_INPUT, EXIT_NONFINITE, EXIT_SAVE_FAILED = 2, 3, 4


# ---- The command line: presets, flags over them, and what --resume may change ----
CHOICES = {"data": ["synthetic", "kitti"],
           "pose_scaling": list(posenet_loss.POSE_SCALINGS), "pose_net": ["posecnn", "resnet"],
           "num_layers": [18, 34, 50], "bins": ["sql", "fixed", "adabins"],
           "queries": ["self", "learned", "none"]}
MODEL_FIELDS = [f.name for f in fields(bins.DepthNetConfig)]
# What a checkpoint's architecture is made of: --resume refuses to change these.
ARCH_FIELDS = ("preset", "data", "height", "width", "use_stereo", "pose_net")
# Facts about the run stored in the checkpoint's config beside the TrainConfig fields: not options,
# so --resume leaves them out of the TrainConfig.
RECORD_KEYS = ("split_files", "train_drives", "commit", "precision", "threads_used")
# Training fields removed after measuring them (docs/ablations.md, "Removed knobs"), with their default then.
REMOVED_FIELDS = {"warmup_steps": 0, "smoothness_on": "depth", "small_map_convs": True}


def build_parser(config_class, preset_config, presets):
    """The CLI of 06_train.py from its TrainConfig and 04_bins.DepthNetConfig (synthetic-cpu's values)."""
    parser = argparse.ArgumentParser(
        prog="06_train.py",
        description="Self-supervised SQLDepth training. Without arguments: the synthetic-cpu preset "
                    "(generates data/synthetic, trains, evaluates with 07_eval.py).",
        epilog="Your own split: put NAME/train_files.txt and NAME/val_files.txt (lines 'folder frame side') "
               "in a folder and pass --split NAME --split_dir FOLDER, or pass --train_files FILE --val_files "
               "FILE; a run whose lists share a drive with the --eval_split test list is refused before any "
               "data is read (unless --allow_split_overlap). "
               "Model fields are flat flags (--num_layers 18 --num_queries 32 ...); --pretrained none "
               "trains from scratch. Exit codes: 0 done, 2 bad input, 3 non-finite loss or weights, 4 a "
               "checkpoint could not be written, 130/143 interrupted by SIGINT/SIGTERM after saving RUN/ckpt.pt.")
    base, choices = preset_config("synthetic-cpu"), {**CHOICES, "preset": list(presets)}
    add_dataclass_flags(parser, config_class, defaults=base, choices=choices, skip=("model",), only_given=True)
    group = parser.add_argument_group("model (04_bins.DepthNetConfig; defaults: the preset's)")
    add_dataclass_flags(group, bins.DepthNetConfig, defaults=base.model, choices=choices, only_given=True)
    return parser


def parse_args(argv, config_class, preset_config, presets):
    """(config of the chosen preset with the given flags applied, {flag: value} given)."""
    parser = build_parser(config_class, preset_config, presets)
    given = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    return apply_overrides(preset_config(given.get("preset", "synthetic-cpu")), given), given


def apply_overrides(cfg, given):
    """cfg with the given flags set; model flags go into cfg.model ("none" -> None for pretrained)."""
    model = dict(cfg.model)
    for name in MODEL_FIELDS:
        if name in given:
            model[name] = None if given[name] in ("none", "") and name == "pretrained" else given[name]
    train = {k: v for k, v in given.items() if k not in MODEL_FIELDS}
    return replace(cfg, **train, model=model)


def resume_config(ckpt, given, run_dir, config_class):
    """The checkpoint's TrainConfig with the given flags applied; refuses architecture changes."""
    stored = {k: v for k, v in ckpt["config"].items() if k not in RECORD_KEYS}
    where = f"{run_dir}/ckpt.pt"
    stored = {**without_removed(stored, REMOVED_FIELDS, where),
              "model": without_removed(stored.get("model", {}), bins.REMOVED_MODEL_FIELDS, where)}
    try:
        cfg = config_class(**stored)
    except TypeError as err:
        raise ValueError(f"{where} has an unknown config ({one_line(err)})") from None
    for name in ARCH_FIELDS + tuple(MODEL_FIELDS):
        old = stored["model"].get(name) if name in MODEL_FIELDS else stored[name]
        if name != "pretrained" and given.get(name, old) != old:   # pretrained: the weights are loaded
            raise ValueError(f"--resume {run_dir}: its checkpoint was trained with {name}={old!r}, "
                             f"not {given[name]!r} (a checkpoint of another preset/architecture)")
    return apply_overrides(cfg, {**given, "resume": str(run_dir), "run_dir": str(run_dir)})


def prepare_run(cfg, given, config_class):
    """(config, checkpoint or None): a new run folder, or the config stored in --resume RUN."""
    if cfg.resume:
        run_dir = Path(cfg.resume).resolve()
        if not run_dir.is_dir():
            raise FileNotFoundError(f"--resume {cfg.resume}: no such run folder")
        ckpt = model_files.read_checkpoint(run_dir / "ckpt.pt")
        return resume_config(ckpt, given, run_dir, config_class), ckpt
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(cfg.run_dir) if cfg.run_dir else ROOT / "runs" / f"{cfg.preset}-{stamp}"
    if (run_dir / "ckpt.pt").exists() and not cfg.profile:
        raise ValueError(f"{run_dir} already holds a checkpoint: continue it with --resume {run_dir} "
                         f"or choose another --run_dir")
    return replace(cfg, run_dir=str(run_dir.resolve())), None


# ---- The record of a run ----
class TrainingRun:
    """The record of one run: its counters, checkpoints (with validation), log lines and resume, over
    the parts 06_train.Trainer builds and hands over here. The subclass defines step_terms (what its
    train_step returns) and validate() -> (loss, {diagnostic: float})."""

    def __init__(self, cfg, info, nets, optimizer, scheduler, sampler, train_loader, split_record, threads):
        """nets: (depth_net, pose_net), unwrapped; sampler: distributed_training.EpochBatches; threads:
        helpers/cpu_threads.RunThreads; split_record: stored beside the config in every checkpoint."""
        self.cfg, self.info, self.threads, self.run_dir = cfg, info, threads, Path(cfg.run_dir)
        self.depth_net, self.pose_net = nets
        self.optimizer, self.scheduler = optimizer, scheduler
        self.sampler, self.train_loader, self.split_record = sampler, train_loader, split_record
        self.steps_per_epoch = sampler.batches_per_epoch
        total = cfg.epochs * self.steps_per_epoch
        self.total_steps = min(total, cfg.max_steps) if cfg.max_steps > 0 else total
        self.step, self.epoch, self.best_val = 0, 0, math.inf
        self.collapse_watch = training_health.CollapseWatch(collapse_advice(cfg))

    def log_columns(self):
        return ("step", "epoch") + tuple(self.step_terms) + ("lr", "img_per_s", "data_wait_pct", "eta_s")

    @staticmethod
    def val_columns():
        return (("step", "epoch", "val_loss", "best_val_loss") + bins.INTERNALS_STATS + training_health.HEALTH_TERMS
                + ("motion_ratio", "collapsed"))

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
        """RUN/ckpt.pt, and after a validation that improved, RUN/best.pt (rank 0 writes); NonFinite
        instead for a NaN/Inf weight (a finite loss can still have produced infinite gradients)."""
        bad = model_files.first_nonfinite([(f"{name}.{n}", p) for name, net in (("depth", self.depth_net),
                               ("pose", self.pose_net)) for n, p in net.named_parameters()])
        if bad:
            raise NonFinite(f"non-finite weights after step {self.step} (e.g. {bad})")
        improved = False
        if validate_too:
            val, stats = self.validate()
            stats["collapsed"] = float(bool(training_health.collapse_signs(stats, self.step)))
            improved = val < self.best_val
            self.best_val = val if improved else self.best_val
        if not self.info.main:
            return
        state = self.state()
        save_checkpoint(state, self.run_dir / "ckpt.pt")
        if self.cfg.keep_epochs:
            keep_epoch_weights(state, self.run_dir)
        if improved or not (self.run_dir / "best.pt").exists():
            save_checkpoint(state, self.run_dir / "best.pt")
        if validate_too:
            row = dict(step=self.step, epoch=self.epoch, val_loss=val, best_val_loss=self.best_val, **stats)
            append_csv(self.run_dir / "val.csv", self.val_columns(), row)
            print(f"val   step {self.step:>7} | loss {val:.4f} | best {self.best_val:.4f}"
                  f"{' -> best.pt' if improved else ''} | query similarity {stats['query_similarity']:.3f}, "
                  f"cost-volume rank {stats['effective_rank']:.1f}/{self.cfg.model['num_queries']}, "
                  f"bins for 99% {stats['bins_99']:.1f}/{self.cfg.model['num_bins']} | spread "
                  f"{stats['depth_spread']:.2f} motion {stats['motion']:.3f} (x{stats['motion_ratio']:.2f} "
                  f"the true one) mask {stats['automask_kept']:.2f}"
                  f"{' | COLLAPSED' if stats['collapsed'] else ''}", flush=True)

    def log(self, terms, interval):
        """One line and one log.csv row (this step's terms, throughput since the last log); a warning line
        when the run looks collapsed or the machine got busy."""
        now = time.perf_counter()
        elapsed = max(now - interval["start"], 1e-9)
        row = dict(step=self.step, epoch=self.epoch, **{k: terms.get(k, math.nan) for k in self.step_terms},
                   lr=float(self.optimizer.param_groups[0]["lr"]),
                   img_per_s=interval["steps"] * self.cfg.batch_size * self.info.world / elapsed,
                   data_wait_pct=100.0 * interval["data"] / elapsed,
                   eta_s=elapsed / max(interval["steps"], 1) * (self.total_steps - self.step))
        append_csv(self.run_dir / "log.csv", self.log_columns(), row)
        print(f"step {self.step:>7}/{self.total_steps} | epoch {self.epoch + 1:>3}/{self.cfg.epochs} | "
              f"loss {row['loss']:.4f} photo {row['photometric']:.4f} smooth {row['smoothness']:.4f} | "
              f"spread {row['depth_spread']:.2f} motion {row['motion']:.3f} mask {row['automask_kept']:.2f} | "
              f"lr {row['lr']:.1e} | "
              f"{row['img_per_s']:6.1f} img/s | data {row['data_wait_pct']:4.1f}% | "
              f"ETA {format_time(row['eta_s'])}", flush=True)
        interval.update(start=now, data=0.0, steps=0)
        for warning in (self.collapse_watch.update(self.step, row),
                        self.threads.update(self.step, row["img_per_s"], elapsed)):
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
        set_rng_state(ckpt["rng"])
        if self.info.world > 1:                  # rank 0's streams were saved; keep ranks distinct
            torch.manual_seed(self.cfg.seed + 1000 * self.info.rank + self.step)

    def state(self):
        return {"model": self.depth_net.state_dict(), "pose": self.pose_net.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "step": self.step, "epoch": self.epoch, "best_val": self.best_val,
                "steps_per_epoch": self.steps_per_epoch,
                "config": {**asdict(self.cfg), **self.split_record, "threads_used": self.threads.used},
                "rng": rng_state()}


def provenance(ckpt, bf16):
    """{"commit", "precision" ("bf16" or "float32")} of a run; "A then B" where a resume changed one."""
    now = {"commit": code_commit(), "precision": "bf16" if bf16 else "float32"}
    before = (ckpt or {}).get("config", {})
    return {k: v if not before.get(k) or before[k].split(" then ")[-1] == v else f"{before[k]} then {v}"
            for k, v in now.items()}


def collapse_advice(cfg):
    """What the collapse warning suggests for this run's recipe (README, "Monocular training")."""
    where = "(README, \"Monocular training\")"
    if not cfg.use_stereo and cfg.smoothness_weight not in (0.0, 1e-2):
        return f"try --smoothness_weight 1e-2 (the monocular recipe) or another --seed {where}"
    return f"try another --seed, or stereo (--use_stereo) if you have it {where}"


def run_eval(run_dir):
    """The final evaluation as a user would type it (06 never imports 07); SIGINT / SIGTERM stop it."""
    cmd = [sys.executable, "07_eval.py", "--checkpoint", str(run_dir / "best.pt"), "--baselines", "--figures"]
    print("eval: " + " ".join(cmd[1:]), flush=True)
    code, signum = runtime.run_until_stopped(cmd, cwd=ROOT)
    if signum:
        print(f"error: {signal.Signals(signum).name} during the final evaluation: stopped it; the checkpoints "
              f"in {run_dir} are complete (evaluate them with python {' '.join(cmd[1:])})", file=sys.stderr)
    elif code:
        print(f"error: 07_eval.py exited with code {code}; the checkpoints are in {run_dir}", file=sys.stderr)
    return code


# ---- The run folder ----
class SaveError(Exception):
    """A checkpoint could not be written; the previous file is intact."""


class NonFinite(Exception):
    """A NaN/Inf weight found when about to save."""


@contextmanager
def atomic_path(path):
    """The one atomic write: a unique temporary name beside `path` to write in the block, renamed over
    `path` at its end (removed if it raised); readers see the old file or the new one, never part of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.part")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:                          # a read-only folder: nothing was created there
            pass


def save_checkpoint(state, path):
    """torch.save through atomic_path; a failed write (torch.save reports a full disk as a RuntimeError)
    is a SaveError naming the file."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
    except (OSError, RuntimeError) as err:
        previous = f"the previous {path.name} is intact" if path.exists() else f"no {path.name} was written"
        raise SaveError(f"could not write {path} ({one_line(err)}); {previous}") from None


def keep_epoch_weights(state, run_dir):
    """RUN/epoch_NNN.pt (NNN = epochs done) when the state is at an epoch's end (not a --save_every save):
    the networks, config and counters without the optimiser."""
    epoch = state["epoch"]
    if epoch > 0 and state["step"] == epoch * state["steps_per_epoch"]:
        kept = {k: state[k] for k in ("model", "pose", "config", "step", "epoch")}
        save_checkpoint(kept, Path(run_dir) / f"epoch_{epoch:03d}.pt")


# ---- One training per run folder ----
class RunFolderBusy(Exception):
    """Another training holds the run folder's lock."""


def lock_run_folder(run_dir):
    """Create RUN and hold an exclusive lock on RUN/.lock while this process lives (the OS drops it on
    any exit): a second training there gets RunFolderBusy naming the holder's pid. Returns the open
    lock file (closing it releases the lock)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / ".lock", "a+")
    if fcntl is None:
        return handle
    try:   # a POSIX record lock: owned by this process, not by the DataLoader workers it forks
        fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno not in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
            raise
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise RunFolderBusy(f"{run_dir} is in use by another training (pid {holder}): wait for it, "
                            f"or choose another --run_dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


# ---- RNG states (exact resume) ----
def rng_state():
    """torch's and CUDA's generator states: the only global ones a run draws from (the sample order and
    the augmentation have their own seeded generators)."""
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- Logs and curves ----
def append_csv(path, columns, row):
    """One row into a CSV (header when new), floats at full precision."""
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(columns)
        writer.writerow([repr(row[c]) if isinstance(row[c], float) else row[c] for c in columns])


def read_csv(path, columns=None):
    """{column: np.array of floats} of a CSV log (only `columns` when given); {} when missing or empty."""
    path = Path(path)
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    names = [c for c in (columns or (rows[0] if rows else [])) if rows and c in rows[0]]
    return {k: np.array([float(r[k]) for r in rows]) for k in names}


def truncate_csv(path, step):
    """Drop the rows after `step` (a resumed run rewrites them) and rows a full disk cut short."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    keep = rows[:1] + [r for r in rows[1:] if len(r) == len(rows[0]) and int(r[0]) <= step]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        csv.writer(f).writerows(keep)


def format_time(seconds):
    seconds = int(max(seconds, 0))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def save_plots(run_dir, model):
    """RUN/curves.png from log.csv and val.csv (model: the DepthNetConfig as a dict); None without a log."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log, val = read_csv(run_dir / "log.csv"), read_csv(run_dir / "val.csv")
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
    (axes[1, 0].semilogy if (log["lr"] > 0).any() else axes[1, 0].plot)(log["step"], log["lr"])  # lr 0: no log
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
    if "depth_spread" in log:  # is self-supervision healthy? (older runs lack these columns)
        axes[1, 2].plot(log["step"], log["depth_spread"], label="depth spread (std / mean)")
        axes[1, 2].plot(log["step"], log["automask_kept"], label="auto-mask kept")
        if "motion_ratio" in val:
            axes[1, 2].plot(val["step"], val["motion_ratio"], "o-", label="motion / true motion (val)")
        axes[1, 2].axhline(1.0, color="grey", lw=0.5)
        axes[1, 2].legend(fontsize=8)
    axes[1, 2].set_title("training health")
    for ax in axes.flat:
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(run_dir / "curves.png", dpi=90)
    plt.close(fig)
    return run_dir / "curves.png"


def code_commit():
    """Short commit of this repository ("-dirty" added when tracked files differ from it), else "unknown"."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=30)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--"], cwd=ROOT, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):   # no git on this machine
        return "unknown"
    return head.stdout.strip() + ("-dirty" if dirty.returncode == 1 else "")
