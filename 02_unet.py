"""02 - unet: the feature extractor, a ResNet encoder and a U-Net decoder giving S0 at half size.

SQLDepth (paper Sec. 3.1) first turns the image into a dense, fairly coarse-grained feature map
S0 [B, E, H/2, W/2] with an ordinary encoder-decoder. Everything clever (the self-query layer, 03;
the bins, 04) happens on top of S0.

- Encoder: ResNet-18/34/50 written here in plain PyTorch with *torchvision's parameter names*
  (conv1, bn1, layer1.0.conv1, ..., layer4, fc), so torchvision-format ImageNet weights load with
  strict=True (load_pretrained, below the banner). The classifier `fc` is never used but is kept so
  the weights load strictly and the parameter counts match the paper's 31M / 37M.
- Input in [0, 1], normalised inside with (x - 0.45) / 0.225 like Monodepth2 and the official code.
- Decoder (the official `DecoderBN`, github.com/hisfog/SfMNeXt-Impl): a 1x1 conv on layer4 then
  four up-blocks (Exercise 2.1), each "bilinear upsample to the skip's size (align_corners=True),
  concatenate the skip, [conv3x3 -> BN -> LeakyReLU(0.01)] x 2", and a final conv3x3 to E channels
  with no activation.

Deviation kept on purpose: the official 1x1 bottleneck conv has padding=1, which adds a one-pixel
border of pure bias to the coarsest map (the next upsample then stretches it). It is harmless but
odd; we keep it so the released checkpoints load and give the same numbers (docs/kitti.md, "Where
we follow the paper, and where the official code").

Used by: 04_bins.DepthNet. Demo: `python 02_unet.py [--num_layers 18]` prints the feature shapes.
Tests: tests/test_02_unet.py.
"""
import argparse
import sys
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers.cli import add_dataclass_flags  # the command line of every script (helpers/cli.py)

# ---- Encoder: ResNet-18/34/50 with torchvision's parameter names ----
# (block type, blocks per stage) of each depth, as in the ResNet paper / torchvision.
RESNET_LAYOUT = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3))}


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (ResNet-18/34)."""
    expansion = 1

    def __init__(self, in_ch, width, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_ch, width * self.expansion, stride)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride, torchvision's "v1.5"), 1x1 expand x4 (ResNet-50)."""
    expansion = 4

    def __init__(self, in_ch, width, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_ch, width * self.expansion, stride)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


def _shortcut(in_ch, out_ch, stride):
    """Projection shortcut (1x1 conv + BN, named downsample.0/.1) when the shape changes, else None."""
    if stride == 1 and in_ch == out_ch:
        return None
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))


class ResNet(nn.Module):
    """ResNet-18/34/50 with torchvision's module names; `features` returns the five maps the U-Net uses."""

    def __init__(self, num_layers):
        super().__init__()
        if num_layers not in RESNET_LAYOUT:
            raise ValueError(f"num_layers={num_layers}: choose one of {sorted(RESNET_LAYOUT)}")
        kind, blocks = RESNET_LAYOUT[num_layers]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.num_layers = num_layers
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_ch = 64
        for stage, (width, n) in enumerate(zip((64, 128, 256, 512), blocks), start=1):
            stride = 1 if stage == 1 else 2
            layers = []
            for i in range(n):
                layers.append(block(in_ch, width, stride if i == 0 else 1))
                in_ch = width * block.expansion
            setattr(self, f"layer{stage}", nn.Sequential(*layers))
        self.fc = nn.Linear(in_ch, 1000)  # unused classifier, kept for strict loading / param counts
        # Channels of the five feature maps (conv1, layer1..layer4).
        self.channels = (64,) + tuple(w * block.expansion for w in (64, 128, 256, 512))
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def features(self, x):
        """x: normalised image [B, 3, H, W] -> [f0 /2, f1 /4, f2 /8, f3 /16, f4 /32]."""
        f0 = self.relu(self.bn1(self.conv1(x)))  # [B, 64, H/2, W/2]
        f1 = self.layer1(self.maxpool(f0))  # [B, C1, H/4, W/4]
        f2 = self.layer2(f1)  # [B, C2, H/8, W/8]
        f3 = self.layer3(f2)  # [B, C3, H/16, W/16]
        f4 = self.layer4(f3)  # [B, C4, H/32, W/32]
        return [f0, f1, f2, f3, f4]


# ---- Decoder: the U-Net that gives S0 ----
def normalise(img):
    """Images in [0, 1] -> the encoders' input: (x - 0.45) / 0.225 as Monodepth2 and the official
    code (not ImageNet's per-channel mean and std)."""
    return (img - 0.45) / 0.225


def up_block(x, skip, net):
    """Exercise 2.1: one U-Net up-block: upsample, concatenate the skip, then two conv-BN-LeakyReLU.

    x [B, C, h, w] (coarse), skip [B, Cs, H', W'] (finer), net: the Sequential(conv3x3, BN, LeakyReLU,
    conv3x3, BN, LeakyReLU) taking C + Cs channels. Returns net's output [B, C_out, H', W'].
    Hint: the concatenation needs x at the skip's exact size (H', W'), and H' need not be 2h (conv2's
    padding=1 makes the deepest map 2 pixels larger), so ask for a size, not a factor. Bilinear
    with align_corners=True as in the official code; channels [upsampled x, skip] in that order.
    """
    up = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=True)  # [B, C, H', W']
    return net(torch.cat([up, skip], dim=1))  # [B, C_out, H', W']


class UpBlock(nn.Module):
    """Parameters of one up-block; named `_net.{0,1,3,4}` like the official UpSampleBN."""

    def __init__(self, in_ch, out_ch):
        super().__init__()
        self._net = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 3, 1, 1), nn.BatchNorm2d(out_ch), nn.LeakyReLU(0.01),
            nn.Conv2d(out_ch, out_ch, 3, 1, 1), nn.BatchNorm2d(out_ch), nn.LeakyReLU(0.01))

    def forward(self, x, skip):
        return up_block(x, skip, self._net)


class UNetDecoder(nn.Module):
    """Official DecoderBN: conv2 (1x1, padding=1 quirk), up1..up4 with skips layer3..conv1, conv3."""

    def __init__(self, enc_channels, num_features, model_dim):
        super().__init__()
        nf = int(num_features)
        c0, c1, c2, c3, c4 = enc_channels
        self.conv2 = nn.Conv2d(c4, nf, 1, 1, padding=1)  # padding=1: official quirk, see module doc
        self.up1 = UpBlock(nf + c3, nf // 2)
        self.up2 = UpBlock(nf // 2 + c2, nf // 4)
        self.up3 = UpBlock(nf // 4 + c1, nf // 8)
        self.up4 = UpBlock(nf // 8 + c0, nf // 16)
        self.conv3 = nn.Conv2d(nf // 16, model_dim, 3, 1, 1)  # no activation: S0 is a raw embedding

    def forward(self, feats):
        f0, f1, f2, f3, f4 = feats
        x = self.conv2(f4)  # [B, nf, H/32 + 2, W/32 + 2]
        x = self.up1(x, f3)  # [B, nf/2, H/16, W/16]
        x = self.up2(x, f2)  # [B, nf/4, H/8, W/8]
        x = self.up3(x, f1)  # [B, nf/8, H/4, W/4]
        x = self.up4(x, f0)  # [B, nf/16, H/2, W/2]
        return self.conv3(x)  # [B, E, H/2, W/2]


class ResnetUNet(nn.Module):
    """Image [B, 3, H, W] in [0, 1] -> S0 [B, E, H/2, W/2] (ResNet encoder + U-Net decoder)."""

    def __init__(self, num_layers=50, num_features=256, model_dim=32):
        super().__init__()
        if num_features % 16 or num_features < 16:
            raise ValueError(f"num_features={num_features} must be a positive multiple of 16")
        self.encoder = ResNet(num_layers)
        self.decoder = UNetDecoder(self.encoder.channels, num_features, model_dim)

    def forward(self, img):
        return self.decoder(self.encoder.features(normalise(img)))  # [B, E, H/2, W/2]


# ==============================================================================================
# ---- Engineering: not needed to understand SQLDepth ----
# torchvision's ImageNet weights, the demo and the command line (a faster CPU
# backward of big 3x3 convs on small maps: helpers/speed_layer.py).
# ==============================================================================================
# torchvision's published ImageNet weights (IMAGENET1K_V1, the ones `pretrained=True` gives).
IMAGENET_URLS = {
    18: "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    34: "https://download.pytorch.org/models/resnet34-b627a593.pth",
    50: "https://download.pytorch.org/models/resnet50-0676ba61.pth",
}


def load_pretrained(encoder_module, spec):
    """Load ImageNet weights into a `ResNet`: spec None (nothing), "imagenet" (download) or a file path.

    Loading is strict: a file with other keys or shapes raises ValueError naming the file.
    """
    if spec is None or spec == "" or spec == "none":
        return
    if spec == "imagenet":
        url = IMAGENET_URLS[encoder_module.num_layers]
        # torch.hub downloads into a temporary file of a unique name and then renames it, so several
        # processes fetching at once (torchrun ranks, two runs) cannot break each other; check_hash
        # compares the download with the SHA-256 prefix in torchvision's file name.
        try:
            state = torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False, check_hash=True)
        except Exception as err:  # offline, proxy, certificate...: one clear line
            raise ValueError(f"could not download ImageNet weights from {url} ({type(err).__name__}); "
                             f"download the file elsewhere and pass its path as --pretrained PATH") from None
        source = url
    else:
        try:
            state = torch.load(spec, map_location="cpu", weights_only=True)
        except Exception as err:  # missing file, not a torch file, pickled objects, ...: one line
            raise ValueError(f"cannot read pretrained weights {spec} (not a PyTorch weights file? "
                             f"{type(err).__name__}: {err})".splitlines()[0]) from None
        source = spec
    try:
        encoder_module.load_state_dict(state, strict=True)
    except (RuntimeError, AttributeError, TypeError) as err:
        first = str(err).splitlines()[1:2] or [str(err)]
        raise ValueError(f"{source} is not a torchvision ResNet-{encoder_module.num_layers} state dict: "
                         f"{first[0].strip()}") from None


@dataclass
class UNetDemoConfig:
    """What `python 02_unet.py` does: print the feature shapes of one random image."""
    num_layers: int = 50  # ResNet depth: 18, 34 or 50
    num_features: int = 256  # decoder width nf (released models: 256)
    model_dim: int = 32  # E, channels of S0
    height: int = 192  # input height (multiple of 32)
    width: int = 640  # input width (multiple of 32)
    pretrained: str = ""  # "" (random), "imagenet" (download) or a torchvision .pth path


def main(argv=None):
    """Command line generated from UNetDemoConfig; returns the exit status (2 = bad input, one line)."""
    parser = argparse.ArgumentParser(description="Print the shapes of the ResNet + U-Net features.")
    add_dataclass_flags(parser, UNetDemoConfig)
    cfg = UNetDemoConfig(**vars(parser.parse_args(argv)))
    try:
        net = ResnetUNet(cfg.num_layers, cfg.num_features, cfg.model_dim).eval()
        load_pretrained(net.encoder, cfg.pretrained or None)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    img = torch.rand(1, 3, cfg.height, cfg.width)
    with torch.no_grad():
        for i, f in enumerate(net.encoder.features(normalise(img))):
            print(f"encoder feature {i}: {tuple(f.shape)}")
        print(f"S0: {tuple(net(img).shape)}  params: {sum(p.numel() for p in net.parameters()):,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
