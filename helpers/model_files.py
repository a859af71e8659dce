"""model_files - weight files read back: our checkpoints, the released weights, --init_from/--pose_init.

Not a reading step. Every .pt/.pth goes through `read_weights` (weights_only=True); a bad file is one
DataError line naming it. The released SQLDepth weights (encoder.pth + depth.pth of
github.com/hisfog/SfMNeXt-Impl) are converted to our names, the architecture inferred from the shapes.
Tests: tests/test_07_eval.py, tests/test_04_bins.py (the conversion), tests/test_weights_init.py.
"""
import importlib
from dataclasses import asdict, replace
from pathlib import Path

import torch

from helpers.cli import one_line

# A module name cannot start with a digit: the numbered scripts are loaded by name.
data = importlib.import_module("01_data")
bins = importlib.import_module("04_bins")


def read_weights(path, what="weights file"):
    """torch.load(path, weights_only=True) on the CPU; a missing or unreadable file is a DataError."""
    path = Path(path)
    if not path.is_file():
        raise data.DataError(f"{what} {path} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:                     # zip / pickle errors of every kind
        raise data.DataError(f"{path} is not a readable {what} ({one_line(err)})") from None


def require_finite(state_dict, what):
    """ValueError naming the first floating-point tensor of a state dict that holds a NaN/Inf."""
    floats = [(k, v) for k, v in state_dict.items() if torch.is_tensor(v) and v.is_floating_point()]
    bad = first_nonfinite(floats) if floats else None
    if bad:
        raise ValueError(f"{what} holds non-finite weights (first: {bad}): it comes from a run that "
                         f"diverged, or the file is damaged; use an earlier checkpoint")


def first_nonfinite(named_tensors):
    """The name of the first tensor holding a NaN/Inf, or None: one host read for all tensors, not one
    per tensor (hundreds of waits for the GPU before every save)."""
    finite = torch.stack([torch.isfinite(t).all() for _, t in named_tensors])   # [P] bools
    if bool(finite.all()):
        return None
    return named_tensors[int((~finite).int().argmax())][0]


CHECKPOINT_KEYS = {"model", "pose", "optimizer", "scheduler", "step", "epoch", "best_val", "steps_per_epoch",
                   "config", "rng"}


def read_checkpoint(path, keys=CHECKPOINT_KEYS):
    """A checkpoint dict of 06_train.py holding `keys`; a DataError when it is missing, unreadable or not
    ours, a ValueError naming a NaN/Inf weight."""
    ckpt = read_weights(path, "checkpoint")
    if not isinstance(ckpt, dict) or not set(keys) <= set(ckpt) or "model" not in ckpt.get("config", {}):
        raise data.DataError(f"{path} is not a checkpoint of 06_train.py")
    for part, name in (("model", "depth network"), ("pose", "pose network")):
        if part in keys:
            require_finite(ckpt[part], f"{path} ({name})")
    return ckpt


def strip_module(state):
    """The tensors of a state dict without DataParallel's "module." key prefix."""
    return {k.removeprefix("module."): v for k, v in state.items() if torch.is_tensor(v)}


# ---- A trained depth network for evaluation ----
def _build_and_load(model_cfg, state_dict, source, device):
    """A DepthNet from a config dict, strictly loaded, in eval mode; a mismatch is a DataError."""
    try:
        model = bins.depthnet_from_config(model_cfg, state_dict)
    except (RuntimeError, TypeError, ValueError, KeyError) as err:
        raise data.DataError(f"{source} does not match the architecture of its config: {one_line(err)}") from None
    return model.to(device).eval()


def load_model(checkpoint_path, device):
    """(DepthNet of a checkpoint in eval mode on device, the checkpoint's TrainConfig dict)."""
    ckpt = read_checkpoint(checkpoint_path, keys=("model", "config"))
    return _build_and_load(ckpt["config"]["model"], ckpt["model"], checkpoint_path, device), ckpt["config"]


def read_official(folder):
    """(encoder.pth and depth.pth state dicts, our DepthNet state dict) of a released model's folder."""
    folder = Path(folder)
    encoder_sd, depth_sd = (read_weights(folder / name) for name in ("encoder.pth", "depth.pth"))
    try:
        return encoder_sd, depth_sd, convert_official_checkpoint(encoder_sd, depth_sd)
    except (KeyError, ValueError, RuntimeError) as err:
        raise data.DataError(f"{folder} does not hold an official SQLDepth checkpoint: {one_line(err)}") from None


def load_official(folder, device):
    """(DepthNet of a released encoder.pth + depth.pth, a config dict shaped like ours)."""
    encoder_sd, depth_sd, state_dict = read_official(folder)
    model_cfg = config_from_official(encoder_sd, depth_sd)
    config = {"model": asdict(model_cfg), "data": "kitti", "use_stereo": bool(encoder_sd.get("use_stereo", False)),
              "height": int(encoder_sd.get("height", 192)), "width": int(encoder_sd.get("width", 640))}
    return _build_and_load(config["model"], state_dict, folder, device), config


def load_either(checkpoint, official, device):
    """(model, config, the folder it came from) of --checkpoint FILE (ours) or --official DIR."""
    if checkpoint:
        return (*load_model(checkpoint, device), Path(checkpoint).parent)
    return (*load_official(official, device), Path(official))


# ---- The released official weights as a DepthNet state dict ----
# Official key prefix -> ours.
OFFICIAL_PREFIXES = [
    ("encoder.encoder.", "unet.encoder."), ("decoder.", "unet.decoder."),
    ("embedding_convPxP.", "sql.patch_embed."), ("positional_encodings", "sql.pos_encoding"),
    ("transformer_encoder.", "sql.transformer."), ("conv3x3.", "sql.fine_conv."),
    ("bins_regressor.", "bins_mlp."), ("convert_to_prob.0.", "to_logits."),
]


def official_metadata(encoder_sd):
    """The training size and stereo flag saved in an official encoder.pth (None where absent)."""
    return {k: encoder_sd.get(k) for k in ("height", "width", "use_stereo")}


def config_from_official(encoder_sd, depth_sd):
    """Infer the DepthNetConfig of an official encoder.pth + depth.pth pair from its tensor shapes."""
    enc, dep = strip_module(encoder_sd), strip_module(depth_sd)
    needed = ["encoder.encoder.layer1.0.conv1.weight", "decoder.conv2.weight", "decoder.conv3.weight"]
    needed_d = ["embedding_convPxP.weight", "convert_to_prob.0.weight", "bins_regressor.0.weight",
                "transformer_encoder.layers.0.linear1.weight"]
    missing = [k for k in needed if k not in enc] + [k for k in needed_d if k not in dep]
    if missing:
        raise ValueError(f"not an official SQLDepth encoder.pth/depth.pth pair: missing {missing}")
    bottleneck = "encoder.encoder.layer1.0.conv3.weight" in enc
    n3 = len({k.split(".")[3] for k in enc if k.startswith("encoder.encoder.layer3.")})
    num_layers = {(True, 6): 50, (False, 6): 34, (False, 2): 18}.get((bottleneck, n3))
    n_tr = len({k.split(".")[2] for k in dep if k.startswith("transformer_encoder.layers.")})
    if num_layers is None or n_tr != 4:
        raise ValueError(f"unsupported official model: ResNet layer3 has {n3} blocks (bottleneck={bottleneck}), "
                         f"{n_tr} transformer layers (we support ResNet-18/34/50 and 4 layers)")
    D, Q = dep["convert_to_prob.0.weight"].shape[:2]
    E = dep["embedding_convPxP.weight"].shape[0]
    cfg = bins.DepthNetConfig(num_layers=num_layers, num_features=enc["decoder.conv2.weight"].shape[0],
                              model_dim=E, patch_size=dep["embedding_convPxP.weight"].shape[-1], num_queries=Q,
                              num_bins=D, dim_feedforward=dep["transformer_encoder.layers.0.linear1.weight"].shape[0])
    if dep["bins_regressor.0.weight"].shape[1] != Q * E:  # min/max depth are not stored: KITTI's 0.001/80
        raise ValueError(f"bins_regressor.0 takes {dep['bins_regressor.0.weight'].shape[1]} inputs, "
                         f"expected Q*E={Q * E}")
    return cfg


def convert_official_checkpoint(encoder_sd, depth_sd):
    """Official encoder.pth + depth.pth state dicts -> a DepthNet state dict; ValueError listing missing,
    unexpected and mis-shaped keys."""
    cfg = config_from_official(encoder_sd, depth_sd)
    out, unexpected = {}, []
    for key, value in {**strip_module(encoder_sd), **strip_module(depth_sd)}.items():
        for old, new in OFFICIAL_PREFIXES:
            if key.startswith(old):
                out[new + key[len(old):]] = value
                break
        else:
            unexpected.append(key)
    with torch.device("meta"):  # shapes only, no memory, no init cost
        expected = {k: v.shape for k, v in bins.DepthNet(cfg).state_dict().items()}
    for k in expected:  # checkpoints from PyTorch < 0.4.1 have no BN counters: harmless, start at 0
        if k.endswith("num_batches_tracked") and k not in out:
            out[k] = torch.zeros((), dtype=torch.long)
    missing = [k for k in expected if k not in out]
    unexpected += [k for k in out if k not in expected]
    shapes = [f"{k} {tuple(out[k].shape)}!={tuple(s)}" for k, s in expected.items() if k in out and out[k].shape != s]
    if missing or unexpected or shapes:
        raise ValueError(f"official checkpoint does not match DepthNet({cfg}): missing {missing[:8]}, "
                         f"unexpected {unexpected[:8]}, wrong shapes {shapes[:8]}")
    return out


# ---- A training that starts from weights (--init_from, --pose_init) ----
def _ours(ckpt, part):
    """The `part` ("model" or "pose") state dict of one of our checkpoints or epoch files, else None."""
    if isinstance(ckpt, dict) and isinstance(ckpt.get(part), dict) and isinstance(ckpt.get("config"), dict):
        return ckpt[part]
    return None


def depth_weights(path):
    """(DepthNet state dict, what it is) from --init_from PATH: ours, or the official encoder+depth pair."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent if path.name == "encoder.pth" else None
    if folder is not None:
        return read_official(folder)[2], "official encoder.pth + depth.pth"
    state = _ours(read_weights(path), "model")
    if state is None:
        raise ValueError(f"--init_from {path}: neither a checkpoint of 06_train.py nor an official "
                         f"encoder.pth (+ depth.pth beside it)")
    return state, "checkpoint of 06_train.py"


def pose_weights(path):
    """(pose network state dict, what it is) from --pose_init PATH: ours, or the official pose.pth."""
    state = read_weights(path)
    if _ours(state, "pose") is not None:
        return state["pose"], "checkpoint of 06_train.py"
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"--pose_init {path}: neither a checkpoint of 06_train.py nor an official pose.pth")
    return strip_module(state), "official pose.pth"   # the official trainer may save it from DataParallel


def first_mismatch(net, state):
    """The first key of `net` that `state` lacks or shapes differently, else its first extra key, or None."""
    expected = net.state_dict()
    for key, value in expected.items():
        if key not in state:
            return f"{key} is missing"
        if tuple(state[key].shape) != tuple(value.shape):
            return f"{key} has shape {tuple(state[key].shape)}, this run's network {tuple(value.shape)}"
    extra = [k for k in state if k not in expected]
    return f"{extra[0]} is not in this run's network" if extra else None


def load_into(net, state, source, what):
    """Strict load of `state` into `net`; a ValueError names the first mismatch or NaN/Inf."""
    mismatch = first_mismatch(net, state)
    if mismatch:
        raise ValueError(f"{source} does not fit the {what} of this run: {mismatch}")
    require_finite(state, str(source))
    net.load_state_dict(state, strict=True)


def start_networks(cfg, depth_net, pose_net, verbose=True):
    """Load --init_from / --pose_init into fresh networks; returns cfg with both paths made absolute."""
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
