"""official_weights - the released SQLDepth weights (encoder.pth + depth.pth) as a DepthNet state dict.

Serves 07_eval.py --official (through helpers/model_files.py) and anyone who wants to start from the
released models (github.com/hisfog/SfMNeXt-Impl, the resnet_lite models): their keys are renamed to
ours, the architecture is inferred from the tensor shapes, and the result is checked strictly against
04_bins.DepthNet, so a loaded official model computes exactly what ours would with those weights.
Tests: tests/test_04_bins.py (a hand-written official-format pair converts and gives the same depth).
"""
import importlib

import torch

bins = importlib.import_module("04_bins")  # a module name cannot start with a digit: loaded by name

# Official key prefix (encoder.pth of ResnetEncoderDecoder / LiteResnetEncoderDecoder, depth.pth of
# Lite_Depth_Decoder_QueryTr) -> our prefix.
OFFICIAL_PREFIXES = [
    ("encoder.encoder.", "unet.encoder."), ("decoder.", "unet.decoder."),
    ("embedding_convPxP.", "sql.patch_embed."), ("positional_encodings", "sql.pos_encoding"),
    ("transformer_encoder.", "sql.transformer."), ("conv3x3.", "sql.fine_conv."),
    ("bins_regressor.", "bins_mlp."), ("convert_to_prob.0.", "to_logits."),
]


def _tensors(sd):
    """Only the tensors of a state dict, with DataParallel's "module." prefix removed."""
    return {(k[7:] if k.startswith("module.") else k): v for k, v in sd.items() if torch.is_tensor(v)}


def official_metadata(encoder_sd):
    """The training size and stereo flag saved in an official encoder.pth (None where absent)."""
    return {k: encoder_sd.get(k) for k in ("height", "width", "use_stereo")}


def config_from_official(encoder_sd, depth_sd):
    """Infer the DepthNetConfig of an official encoder.pth + depth.pth pair from its tensor shapes."""
    enc, dep = _tensors(encoder_sd), _tensors(depth_sd)
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
    """Official encoder.pth + depth.pth state dicts -> a DepthNet state dict (checked strictly).

    Raises ValueError listing missing / unexpected / mis-shaped keys. Use with
    `DepthNet(config_from_official(e, d)).load_state_dict(convert_official_checkpoint(e, d))`.
    """
    cfg = config_from_official(encoder_sd, depth_sd)
    out, unexpected = {}, []
    for key, value in {**_tensors(encoder_sd), **_tensors(depth_sd)}.items():
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
