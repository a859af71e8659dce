"""model_files - a trained depth network from a file: our checkpoints and the released official weights.

Serves 07_eval.py, helpers/predict.py and helpers/compare_runs.py: each turns a file into a DepthNet
in eval mode. Our checkpoints (RUN/best.pt, RUN/ckpt.pt) rebuild the network from the config they
store (04_bins.load_checkpoint); the official SQLDepth release (encoder.pth + depth.pth of
github.com/hisfog/SfMNeXt-Impl) goes through helpers/official_weights.py. A file that is not
what it should be is one DataError line naming it.
Tests: tests/test_07_eval.py, tests/test_04_bins.py (the conversion).
"""
import importlib
from dataclasses import asdict
from pathlib import Path

import torch

from helpers import official_weights  # the released weights -> our state dict
from helpers.cli import one_line  # errors as one line

# A module name cannot start with a digit: the numbered scripts are loaded by name.
data = importlib.import_module("01_data")
bins = importlib.import_module("04_bins")


def _build_and_load(model_cfg, state_dict, source, device):
    """A DepthNet from a config dict, strictly loaded; mismatches become one DataError line."""
    try:
        model = bins.depthnet_from_config(model_cfg, state_dict)
    except (RuntimeError, TypeError, ValueError, KeyError) as err:
        raise data.DataError(f"{source} does not match the architecture of its config: {one_line(err)}") from None
    return model.to(device).eval()


def load_model(checkpoint_path, device):
    """Rebuild DepthNet from ckpt["config"]["model"] and load ckpt["model"] strictly (04_bins.load_checkpoint).

    Returns (model in eval mode on device, the checkpoint's TrainConfig dict).
    """
    try:
        model, config = bins.load_checkpoint(checkpoint_path)
    except ValueError as err:
        raise data.DataError(str(err)) from None
    return model.to(device).eval(), config


def read_official(folder):
    """(encoder.pth and depth.pth state dicts, our DepthNet state dict) of a released model's folder;
    a file missing or unreadable, or not an official pair, is one DataError line naming it."""
    folder = Path(folder)
    sds = []
    for name in ("encoder.pth", "depth.pth"):
        if not (folder / name).is_file():
            raise data.DataError(f"official checkpoint file {folder / name} not found")
        try:
            sds.append(torch.load(folder / name, map_location="cpu", weights_only=True))
        except Exception as err:
            raise data.DataError(f"{folder / name} is not a readable checkpoint ({one_line(err)})") from None
    encoder_sd, depth_sd = sds
    try:
        return encoder_sd, depth_sd, official_weights.convert_official_checkpoint(encoder_sd, depth_sd)
    except (KeyError, ValueError, RuntimeError) as err:
        raise data.DataError(f"{folder} does not hold an official SQLDepth checkpoint: {one_line(err)}") from None


def load_official(folder, device):
    """The released official encoder.pth + depth.pth, converted into our DepthNet.

    Returns (model, a config dict shaped like ours: model, height, width, use_stereo, data).
    """
    encoder_sd, depth_sd, state_dict = read_official(folder)
    model_cfg = official_weights.config_from_official(encoder_sd, depth_sd)
    config = {"model": asdict(model_cfg), "data": "kitti", "use_stereo": bool(encoder_sd.get("use_stereo", False)),
              "height": int(encoder_sd.get("height", 192)), "width": int(encoder_sd.get("width", 640))}
    return _build_and_load(config["model"], state_dict, folder, device), config


def load_either(checkpoint, official, device):
    """(model, config, the folder it came from) of --checkpoint FILE (ours) or --official DIR."""
    if checkpoint:
        return (*load_model(checkpoint, device), Path(checkpoint).parent)
    return (*load_official(official, device), Path(official))
