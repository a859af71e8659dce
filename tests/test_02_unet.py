"""Tests of 02_unet.py: the ResNet encoder (torchvision names), the U-Net up-block and decoder."""
import importlib

import pytest
import torch
import torch.nn as nn

from exercise_checks import assert_close_explained, first_false_message, shape_message

# Blocks per stage and block kind of torchvision's ResNets, written here independently of 02_unet.
LAYOUT = {18: ("basic", [2, 2, 2, 2]), 34: ("basic", [3, 4, 6, 3]), 50: ("bottleneck", [3, 4, 6, 3])}


def torchvision_resnet_shapes(num_layers):
    """{key: shape} of torchvision's resnet{num_layers}().state_dict(), built from its naming scheme."""
    kind, blocks = LAYOUT[num_layers]
    exp = 1 if kind == "basic" else 4
    shapes = {"conv1.weight": (64, 3, 7, 7)}

    def bn(prefix, c):
        shapes.update({f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
                       f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()})
    bn("bn1", 64)
    in_ch = 64
    for s, (width, n) in enumerate(zip([64, 128, 256, 512], blocks), start=1):
        for i in range(n):
            p = f"layer{s}.{i}"
            if kind == "basic":
                shapes[f"{p}.conv1.weight"] = (width, in_ch, 3, 3)
                shapes[f"{p}.conv2.weight"] = (width, width, 3, 3)
                bn(f"{p}.bn1", width)
                bn(f"{p}.bn2", width)
            else:
                shapes[f"{p}.conv1.weight"] = (width, in_ch, 1, 1)
                shapes[f"{p}.conv2.weight"] = (width, width, 3, 3)
                shapes[f"{p}.conv3.weight"] = (width * 4, width, 1, 1)
                bn(f"{p}.bn1", width)
                bn(f"{p}.bn2", width)
                bn(f"{p}.bn3", width * 4)
            if i == 0 and (s > 1 or in_ch != width * exp):
                shapes[f"{p}.downsample.0.weight"] = (width * exp, in_ch, 1, 1)
                bn(f"{p}.downsample.1", width * exp)
            in_ch = width * exp
    shapes["fc.weight"] = (1000, in_ch)
    shapes["fc.bias"] = (1000,)
    return shapes


@pytest.mark.parametrize("num_layers,count", [(18, 11_689_512), (34, 21_797_672), (50, 25_557_032)])
def test_resnet_names_shapes_and_counts_match_torchvision(num_layers, count):
    """The encoder's state dict has exactly torchvision's keys and shapes, and its parameter count."""
    unet = importlib.import_module("02_unet")
    enc = unet.ResNet(num_layers)
    ours = {k: tuple(v.shape) for k, v in enc.state_dict().items()}
    assert ours == torchvision_resnet_shapes(num_layers)
    assert sum(p.numel() for p in enc.parameters()) == count


def test_load_pretrained_strict_from_file_and_errors(tmp_path, monkeypatch):
    """A torchvision-named file loads strictly (values land); a wrong file or an offline download gives a
    one-line ValueError."""
    unet = importlib.import_module("02_unet")
    enc = unet.ResNet(18)
    gen = torch.Generator().manual_seed(0)
    state = {k: (torch.randn(s, generator=gen) if k.endswith(("weight", "bias")) else
                 torch.zeros(s, dtype=torch.long) if k.endswith("tracked") else torch.rand(s, generator=gen))
             for k, s in torchvision_resnet_shapes(18).items()}
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    unet.load_pretrained(enc, str(path))
    for k, v in enc.state_dict().items():
        assert torch.equal(v, state[k]), k
    del state["fc.bias"]
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="bad.pth"):
        unet.load_pretrained(enc, str(tmp_path / "bad.pth"))
    with pytest.raises(ValueError, match="missing.pth"):
        unet.load_pretrained(enc, str(tmp_path / "missing.pth"))

    def offline(*args, **kwargs):
        raise OSError("no network")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(ValueError, match="could not download") as err:
        unet.load_pretrained(enc, "imagenet")
    assert "\n" not in str(err.value)


def test_up_block_closed_form_align_corners_true_and_concat_order():
    """Exercise 2.1: [0,3] upsampled to 4 columns with align_corners=True is [0,1,2,3], then [up, skip] concat.

    (align_corners=False would give [0,0.75,2.25,3]; concatenating [skip, up] swaps the channels.)
    The output takes the skip's exact size even when it is not twice the input (5 -> 11 columns).
    """
    unet = importlib.import_module("02_unet")
    what = "Exercise 2.1 up_block"
    x = torch.tensor([[[[0.0, 3.0]]]])  # (1, 1, 1, 2)
    skip = torch.full((1, 2, 1, 4), 7.0)
    out = unet.up_block(x, skip, nn.Identity())
    assert out.shape == (1, 3, 1, 4), shape_message(
        out.shape, (1, 3, 1, 4), f"{what}: x (1 channel, 2 columns) + skip (2 channels, 4 columns) through "
        f"net = nn.Identity()", "the skip concatenated along dim 1 (1 + 2 channels)? x upsampled to the skip's "
        "4 columns? the result passed through net?")
    assert_close_explained(out[0, 0, 0], torch.tensor([0.0, 1.0, 2.0, 3.0]),
                           f"{what}: upsampled [0, 3], output channel 0", "mode='bilinear' with "
                           "align_corners=True ([0, 3] -> [0, 1, 2, 3]; align_corners=False gives [0, 0.75, "
                           "2.25, 3])? the upsampled x first in torch.cat, then the skip?", names=("column",))
    assert torch.all(out[0, 1:] == 7.0), first_false_message(
        out[0, 1:] == 7.0, f"{what}: output channels 1-2 == the skip (7)", "concatenate [upsampled x, skip] in "
        "that order, the skip unchanged?", values=out[0, 1:], names=("channel", "row", "column"),
        where=lambda i: f"output channel {i[0] + 1}")
    odd = unet.up_block(torch.rand(1, 2, 3, 5), torch.rand(1, 1, 6, 11), nn.Identity())
    assert odd.shape == (1, 3, 6, 11), shape_message(
        odd.shape, (1, 3, 6, 11), f"{what}: x 3x5 with a 6x11 skip", "F.interpolate(x, size=skip.shape[-2:]): "
        "the skip's exact size, not scale_factor=2 (5 columns -> 11, not 10)?")
    # corners of an align_corners=True upsample are copied exactly from the input corners
    src = torch.rand(1, 1, 3, 5)
    up = unet.up_block(src, torch.zeros(1, 0, 7, 9), nn.Identity())
    assert_close_explained(up[0, 0, [0, 0, -1, -1], [0, -1, 0, -1]], src[0, 0, [0, 0, -1, -1], [0, -1, 0, -1]],
                           f"{what}: the 4 corners of x (3x5) upsampled to 7x9", "align_corners=True (it copies "
                           "the corner pixels exactly)?", names=("corner",),
                           where=lambda i: ("top left", "top right", "bottom left", "bottom right")[i[0]])


@pytest.mark.parametrize("num_layers", [18, 50])
def test_unet_shapes_normalisation_and_padding_quirk(num_layers):
    """S0 is [B,E,H/2,W/2]; the input is normalised with (x-0.45)/0.225; conv2 adds a 1-pixel border."""
    unet = importlib.import_module("02_unet")
    torch.manual_seed(0)
    net = unet.ResnetUNet(num_layers, 64, 16).eval()
    img = torch.rand(2, 3, 64, 96)
    seen = {}

    def hook(module, inputs, output):
        seen["conv2"] = output.shape
    net.decoder.conv2.register_forward_hook(hook)
    with torch.no_grad():
        s0 = net(img)
        feats = net.encoder.features((img - 0.45) / 0.225)
        ref = net.decoder(feats)
    assert s0.shape == (2, 16, 32, 48)
    torch.testing.assert_close(s0, ref)
    chans = (64, 64, 128, 256, 512) if num_layers == 18 else (64, 256, 512, 1024, 2048)
    for i, (f, c) in enumerate(zip(feats, chans)):
        assert f.shape == (2, c, 64 // 2 ** (i + 1), 96 // 2 ** (i + 1))
    assert seen["conv2"] == (2, 64, 2 + 2, 3 + 2)  # H/32 + 2 x W/32 + 2: the official padding=1
