"""training_cli - the command line of 06_train.py: presets, flags over them, and what --resume may change.

Not a reading step: the concept (TrainConfig, PRESETS) is in 06_train.py, which passes them in.
  build_parser, parse_args   every TrainConfig field and every 04_bins.DepthNetConfig field is a flag
                             (both spellings, help from the field's comment: helpers/cli.py); a flag given
                             overrides the chosen --preset, model fields as flat flags (--num_layers 18)
  prepare_run                a new run folder (refused when it holds a checkpoint already), or the
                             config stored in --resume RUN's ckpt.pt (refused: an architecture change)
Tests: tests/test_06_train.py.
"""
import argparse
import importlib
import time
from dataclasses import fields, replace
from pathlib import Path

from helpers import run_folder                                 # checkpoints (helpers/run_folder.py)
from helpers.cli import add_dataclass_flags, one_line, without_removed  # the command line (helpers/cli.py)

# A module name cannot start with a digit in an `import` statement, so the numbered scripts are
# loaded by name; the alias is the file name without its number.
bins = importlib.import_module("04_bins")
posenet_loss = importlib.import_module("05_posenet_loss")

HERE = Path(__file__).resolve().parents[1]  # the repository root
CHOICES = {"data": ["synthetic", "kitti"],
           "pose_scaling": list(posenet_loss.POSE_SCALINGS), "pose_net": ["posecnn", "resnet"],
           "num_layers": [18, 34, 50], "bins": ["sql", "fixed", "adabins"],
           "queries": ["self", "learned", "none"]}
MODEL_FIELDS = [f.name for f in fields(bins.DepthNetConfig)]
# What a checkpoint's architecture is made of: --resume refuses to change these.
ARCH_FIELDS = ("preset", "data", "height", "width", "use_stereo", "pose_net")
# Facts about the run stored in the checkpoint's config next to the TrainConfig fields (for
# 07_eval's leakage warning, the score files' provenance); not options, so --resume leaves them out of the TrainConfig.
RECORD_KEYS = ("split_files", "train_drives", "commit", "precision")
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
    run_dir = Path(cfg.run_dir) if cfg.run_dir else HERE / "runs" / f"{cfg.preset}-{stamp}"
    if (run_dir / "ckpt.pt").exists() and not cfg.profile:
        raise ValueError(f"{run_dir} already holds a checkpoint: continue it with --resume {run_dir} "
                         f"or choose another --run_dir")
    return replace(cfg, run_dir=str(run_dir.resolve())), None
