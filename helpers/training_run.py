"""training_run - a training run's command line and record: flags over presets, checkpoints, logs, resume.

Serves 06_train.py, whose Trainer is a TrainingRun: 06 sets up what a run trains (networks,
optimiser, schedule, loss, loaders) and its loop `fit`; this module keeps the rest, which a reader of
"one training step and the loop" never needs:
  build_parser, parse_args   every TrainConfig field and every 04_bins.DepthNetConfig field is a flag
                             (both spellings, help from the field's comment: helpers/cli.py); a flag given
                             overrides the chosen --preset, model fields as flat flags (--num_layers 18)
  prepare_run                a new run folder (refused when it holds a checkpoint already), or the
                             config stored in --resume RUN's ckpt.pt (refused: an architecture change)
  save            RUN/ckpt.pt (and best.pt after a validation that improved), val.csv, the val line
  log             one fixed-format line and a log.csv row per interval, the collapse warning
  load_state      continue from a checkpoint (weights, optimiser, schedule, counters, RNG states)
  stop_nonfinite  one error line for a NaN/Inf, nothing written (exit 3)
and the final evaluation the default run ends with (`run_eval`, 07_eval.py as a subprocess: 06 never
imports 07). Checkpoint files and CSVs themselves are helpers/run_folder.py's.
Tests: tests/test_06_train.py, tests/test_faults.py.
"""
import argparse
import importlib
import math
import signal
import sys
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

import torch

from helpers import distributed_training as runtime   # rank, ranks' agreement, subprocesses
from helpers import run_folder                        # checkpoint files, CSVs, the lock
from helpers import training_health                   # the collapse signs
from helpers.cli import add_dataclass_flags, one_line, without_removed  # the command line (helpers/cli.py)

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
# Facts about the run stored in the checkpoint's config next to the TrainConfig fields (for
# 07_eval's leakage warning, the score files' provenance, the threads a run used: helpers/cpu_threads.py);
# not options, so --resume leaves them out of the TrainConfig.
RECORD_KEYS = ("split_files", "train_drives", "commit", "precision", "threads_used")
# Training fields of earlier code that were measured, lost and removed (docs/ablations.md, "Removed
# knobs"), with their default then (the model's: 04_bins.REMOVED_MODEL_FIELDS); small_map_convs became
# the speed layer's switch.
REMOVED_FIELDS = {"warmup_steps": 0, "smoothness_on": "depth", "small_map_convs": True}


def build_parser(config_class, preset_config, presets):
    """The CLI of 06_train.py, generated from its TrainConfig (config_class) and 04_bins.DepthNetConfig
    (defaults: the synthetic-cpu preset, preset_config("synthetic-cpu"); presets: the preset names)."""
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
    # only_given: a flag not given parses to None, so parse_args applies only the given ones over
    # the chosen preset (the help shows the synthetic-cpu values).
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
        raise ValueError(f"{run_dir}/ckpt.pt has an unknown config ({one_line(err)})") from None
    for name in ARCH_FIELDS + tuple(MODEL_FIELDS):
        old = stored["model"].get(name) if name in MODEL_FIELDS else stored[name]
        new = given.get(name, old)
        if name == "pretrained":
            continue                             # the weights come from the checkpoint anyway
        if new != old:
            raise ValueError(f"--resume {run_dir}: its checkpoint was trained with {name}={old!r}, "
                             f"not {new!r} (a checkpoint of another preset/architecture)")
    return apply_overrides(cfg, {**given, "resume": str(run_dir), "run_dir": str(run_dir)})


def prepare_run(cfg, given, config_class):
    """(config, checkpoint or None): a new run folder, or the config stored in --resume RUN."""
    if cfg.resume:
        run_dir = Path(cfg.resume).resolve()
        if not run_dir.is_dir():
            raise FileNotFoundError(f"--resume {cfg.resume}: no such run folder")
        ckpt = run_folder.load_checkpoint(run_dir / "ckpt.pt")
        return resume_config(ckpt, given, run_dir, config_class), ckpt
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(cfg.run_dir) if cfg.run_dir else ROOT / "runs" / f"{cfg.preset}-{stamp}"
    if (run_dir / "ckpt.pt").exists() and not cfg.profile:
        raise ValueError(f"{run_dir} already holds a checkpoint: continue it with --resume {run_dir} "
                         f"or choose another --run_dir")
    return replace(cfg, run_dir=str(run_dir.resolve())), None


# ---- The record of a run ----
class TrainingRun:
    """The record of one run. A subclass (06_train.Trainer) sets cfg, info, device, run_dir, lock,
    depth_net, pose_net, nets (DDP-wrapped or not), optimizer, scheduler, sampler, train_loader,
    val_loader, split_record, step, epoch, best_val, steps_per_epoch, total_steps, collapse_watch,
    threads (helpers/cpu_threads.RunThreads) and step_terms (what its train_step returns), and defines
    validate() -> (loss, {diagnostic: float})."""

    def log_columns(self):
        """The columns of RUN/log.csv: one row per logged step."""
        return ("step", "epoch") + tuple(self.step_terms) + ("lr", "img_per_s", "data_wait_pct", "eta_s")

    @staticmethod
    def val_columns():
        """The columns of RUN/val.csv: one row per validation."""
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
        """RUN/ckpt.pt, and after a validation that improved, RUN/best.pt (rank 0 writes). A model
        with a NaN/Inf weight (a finite loss can still have produced infinite gradients) is never
        written: NonFinite is raised instead."""
        bad = run_folder.first_nonfinite([(f"{name}.{n}", p) for name, net in (("depth", self.depth_net),
                               ("pose", self.pose_net)) for n, p in net.named_parameters()])
        if bad:
            raise run_folder.NonFinite(f"non-finite weights after step {self.step} (e.g. {bad})")
        improved = False
        if validate_too:
            val, stats = self.validate()
            # 1.0 when collapse_signs sees a sign in the validation's health numbers at this step
            stats["collapsed"] = float(bool(training_health.collapse_signs(stats, self.step)))
            improved = val < self.best_val
            self.best_val = val if improved else self.best_val
        if not self.info.main:
            return
        state = self.state()
        run_folder.save_checkpoint(state, self.run_dir / "ckpt.pt")
        if self.cfg.keep_epochs:                 # RUN/epoch_NNN.pt at each epoch's end, weights only
            run_folder.keep_epoch_weights(state, self.run_dir)
        if improved or not (self.run_dir / "best.pt").exists():
            run_folder.save_checkpoint(state, self.run_dir / "best.pt")
        if validate_too:
            row = dict(step=self.step, epoch=self.epoch, val_loss=val, best_val_loss=self.best_val, **stats)
            run_folder.append_csv(self.run_dir / "val.csv", self.val_columns(), row)
            print(f"val   step {self.step:>7} | loss {val:.4f} | best {self.best_val:.4f}"
                  f"{' -> best.pt' if improved else ''} | query similarity {stats['query_similarity']:.3f}, "
                  f"cost-volume rank {stats['effective_rank']:.1f}/{self.cfg.model['num_queries']}, "
                  f"bins for 99% {stats['bins_99']:.1f}/{self.cfg.model['num_bins']} | spread "
                  f"{stats['depth_spread']:.2f} motion {stats['motion']:.3f} (x{stats['motion_ratio']:.2f} "
                  f"the true one) mask {stats['automask_kept']:.2f}"
                  f"{' | COLLAPSED' if stats['collapsed'] else ''}", flush=True)

    def log(self, terms, interval):
        """One fixed-format line and one log.csv row (the loss terms and health numbers of this step,
        throughput over the interval since the last); a warning line when the run looks collapsed, one when
        the machine got busy (an auto run may lower its threads there: helpers/cpu_threads.py)."""
        now = time.perf_counter()
        elapsed = max(now - interval["start"], 1e-9)
        row = dict(step=self.step, epoch=self.epoch, **{k: terms.get(k, math.nan) for k in self.step_terms},
                   lr=float(self.optimizer.param_groups[0]["lr"]),
                   img_per_s=interval["steps"] * self.cfg.batch_size * self.info.world / elapsed,
                   data_wait_pct=100.0 * interval["data"] / elapsed,
                   eta_s=elapsed / max(interval["steps"], 1) * (self.total_steps - self.step))
        run_folder.append_csv(self.run_dir / "log.csv", self.log_columns(), row)
        print(f"step {self.step:>7}/{self.total_steps} | epoch {self.epoch + 1:>3}/{self.cfg.epochs} | "
              f"loss {row['loss']:.4f} photo {row['photometric']:.4f} smooth {row['smoothness']:.4f} | "
              f"spread {row['depth_spread']:.2f} motion {row['motion']:.3f} mask {row['automask_kept']:.2f} | "
              f"lr {row['lr']:.1e} | "
              f"{row['img_per_s']:6.1f} img/s | data {row['data_wait_pct']:4.1f}% | "
              f"ETA {run_folder.format_time(row['eta_s'])}", flush=True)
        interval.update(start=now, data=0.0, steps=0)
        # a collapsed run; a machine that got busy (helpers/cpu_threads.py: one line, at most once)
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
        run_folder.set_rng_state(ckpt["rng"])
        if self.info.world > 1:                  # rank 0's streams were saved; keep ranks distinct
            torch.manual_seed(self.cfg.seed + 1000 * self.info.rank + self.step)

    def state(self):
        """What ckpt.pt and best.pt hold: weights, optimiser, schedule, counters, config, RNG states."""
        return {"model": self.depth_net.state_dict(), "pose": self.pose_net.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "step": self.step, "epoch": self.epoch, "best_val": self.best_val,
                "steps_per_epoch": self.steps_per_epoch,
                "config": {**asdict(self.cfg), **self.split_record, "threads_used": self.threads.used},
                "rng": run_folder.rng_state()}


def provenance(ckpt, bf16):
    """What a score file says of how a run was trained: the commit of the code (the one that started the
    run; "A then B" when it was resumed with other code) and the precision it ran in ("bf16" where --amp
    ran bf16 autocast of the depth network, else "float32"; a resumed run that changed it: "A then B")."""
    now = {"commit": run_folder.code_commit(), "precision": "bf16" if bf16 else "float32"}
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
    """The final evaluation, exactly as a user would type it (06 never imports 07). SIGINT / SIGTERM
    while it runs stop it with one line (the checkpoints are complete: they were saved before)."""
    cmd = [sys.executable, "07_eval.py", "--checkpoint", str(run_dir / "best.pt"), "--baselines", "--figures"]
    print("eval: " + " ".join(cmd[1:]), flush=True)
    code, signum = runtime.run_until_stopped(cmd, cwd=ROOT)
    if signum:
        print(f"error: {signal.Signals(signum).name} during the final evaluation: stopped it; the checkpoints "
              f"in {run_dir} are complete (evaluate them with python {' '.join(cmd[1:])})", file=sys.stderr)
    elif code:
        print(f"error: 07_eval.py exited with code {code}; the checkpoints are in {run_dir}", file=sys.stderr)
    return code
