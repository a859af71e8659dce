"""weights_init - a training that starts from weights: --init_from (depth network), --pose_init (pose network).

Not a reading step: nothing in it is SQLDepth. The released KITTI models were not trained from
ImageNet alone: the official argument file of the R50 640x192 MS model (github.com/hisfog/SfMNeXt-Impl,
args_files/hisfog/kitti/resnet_192x640.txt) starts its pose network from another run's pose.pth
(`--pretrained_pose --pose_net_path`), and Monodepth2's trainer fine-tunes from a weights folder
(`--load_weights_folder`). 06_train.py does both through this module:
  --init_from PATH   the depth network's weights: one of our checkpoints (RUN/best.pt, ckpt.pt, a kept
                     epoch_NNN.pt) or the official release (a folder with encoder.pth + depth.pth, or
                     its encoder.pth), converted by helpers/official_weights.py. The optimiser,
                     schedule and step start afresh (fine-tuning), and no ImageNet weights are fetched.
  --pose_init PATH   the pose network's weights: one of our checkpoints, or the official pose.pth (or
                     the folder holding it) of its PoseCNN, "module." prefixes (DataParallel) removed.
Both load strictly: a file that is not one of these, or whose tensors do not fit this run's network,
is one ValueError line naming the file and the first mismatching parameter (06_train.py: exit 2).
The run's checkpoint records the resolved paths (config init_from / pose_init).
Tests: tests/test_weights_init.py.
"""
from dataclasses import replace
from pathlib import Path

import torch

from helpers import model_files  # the released weights' files -> our state dict
from helpers import run_folder  # the NaN/Inf check of checkpoints
from helpers.cli import one_line  # errors as one line


def _read(path):
    """torch.load(weights_only=True) of one file; one-line ValueError when missing or unreadable."""
    if not path.is_file():
        raise ValueError(f"{path} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:                     # zip / pickle errors of every kind
        raise ValueError(f"{path} is not a readable weights file ({one_line(err)})") from None


def _ours(path, part):
    """The `part` ("model" or "pose") state dict of one of our checkpoints, or None when the file is
    not one (a checkpoint of 06_train.py, or a weights-only epoch file of --keep_epochs)."""
    ckpt = _read(path)
    if isinstance(ckpt, dict) and isinstance(ckpt.get(part), dict) and isinstance(ckpt.get("config"), dict):
        return ckpt[part]
    return None


def depth_weights(path):
    """(DepthNet state dict, what it is) from --init_from PATH: ours, or the official encoder+depth pair."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent if path.name == "encoder.pth" else None
    if folder is not None:
        return model_files.read_official(folder)[2], "official encoder.pth + depth.pth"
    state = _ours(path, "model")
    if state is None:
        raise ValueError(f"--init_from {path}: neither a checkpoint of 06_train.py nor an official "
                         f"encoder.pth (+ depth.pth beside it)")
    return state, "checkpoint of 06_train.py"


def pose_weights(path):
    """(pose network state dict, what it is) from --pose_init PATH: ours, or the official pose.pth."""
    path = Path(path)
    state = _ours(path, "pose")
    if state is not None:
        return state, "checkpoint of 06_train.py"
    state = _read(path)
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"--pose_init {path}: neither a checkpoint of 06_train.py nor an official pose.pth")
    # The official trainer may save it from a DataParallel wrapper, whose keys start with "module."
    return {k.removeprefix("module."): v for k, v in state.items()}, "official pose.pth"


def first_mismatch(net, state):
    """The first parameter or buffer of `net` that `state` lacks or has in another shape, else the
    first key of `state` that `net` lacks; None when they fit exactly."""
    expected = net.state_dict()
    for key, value in expected.items():
        if key not in state:
            return f"{key} is missing"
        if tuple(state[key].shape) != tuple(value.shape):
            return f"{key} has shape {tuple(state[key].shape)}, this run's network {tuple(value.shape)}"
    extra = [k for k in state if k not in expected]
    return f"{extra[0]} is not in this run's network" if extra else None


def load_into(net, state, source, what):
    """Strict load of `state` into `net` (copied into its tensors: their device and layout stay)."""
    mismatch = first_mismatch(net, state)
    if mismatch:
        raise ValueError(f"{source} does not fit the {what} of this run: {mismatch}")
    run_folder.require_finite(state, str(source))
    net.load_state_dict(state, strict=True)


def start_networks(cfg, depth_net, pose_net, verbose=True):
    """Load --init_from / --pose_init into freshly built networks (a line each when verbose); returns
    cfg with both paths made absolute (the checkpoint's record of where the networks started). A
    no-op without them."""
    log = print if verbose else (lambda line: None)
    if cfg.init_from:
        path = Path(cfg.init_from).resolve()
        state, kind = depth_weights(path)
        load_into(depth_net, state, path, "depth network")
        log(f"init: depth network from {path} ({kind}); optimiser and schedule start afresh")
        cfg = replace(cfg, init_from=str(path))
    if cfg.pose_init:
        path = Path(cfg.pose_init).resolve()
        path = path / "pose.pth" if path.is_dir() else path     # the official weights folder
        state, kind = pose_weights(path)
        load_into(pose_net, state, path, f"pose network ({cfg.pose_net})")
        log(f"init: pose network from {path} ({kind}), lr x {cfg.pose_lr_scale}")
        cfg = replace(cfg, pose_init=str(path))
    return cfg
