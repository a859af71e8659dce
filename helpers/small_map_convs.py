"""small_map_convs - a faster CPU backward for big 3x3 convolutions on small maps (the same gradients).

Serves 06_train.py (`--small_map_convs`, on by default) and helpers/benchmark.py: a speed-up of
ResNet's deepest layers on a CPU that changes no number a reader of 02_unet.py needs to know. It
swaps qualifying nn.Conv2d modules for SmallMapConv2d, whose weight gradient is one matrix product.
Run: `python -m helpers.small_map_convs` times it against PyTorch's conv per shape.
Tests: tests/test_small_map_convs.py.
"""
import argparse
import statistics
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers.cli import add_dataclass_flags  # the command line of every script

# On CPU, PyTorch's (oneDNN) backward of a 3x3 conv with many channels on a tiny map is slow for the
# weight gradient: ResNet layer4 of the 64x208 default (512 -> 512 channels on 2x7 maps, batch 8)
# spends several times its forward pass there on a 2-core CPU. The gradient is one sum of products:
#     dL/dW[o, c, i, j] = sum over images b and output pixels (y, x) of
#                         grad_out[b, o, y, x] * x_padded[b, c, y*stride + i, x*stride + j],
# i.e. grad_out [O, B*L] @ patches [B*L, 3*3*C] with L output pixels per image, which one matrix
# product computes in less than half the time there. The forward pass and the input gradient stay
# PyTorch's. Used where it measured faster or even (`python -m helpers.small_map_convs`,
# docs/benchmarks.md): 3x3 kernel, >= 256 input and output channels, at most 2048 output pixels
# over the batch (layer3 and layer4 of ResNet-18 at 64x208); beyond that, or with fewer output
# channels, it was slower.
SMALL_MAP_MAX_PIXELS = 2048
SMALL_MAP_MIN_CHANNELS = 256


def conv3x3_weight_grad(x, grad_out, stride, padding):
    """dL/dW [O, C, 3, 3] of a 3x3 conv from its input x [B, C, H, W] and grad_out [B, O, Ho, Wo],
    as one matrix product over the 9 shifted views of the zero-padded input (taps in (i, j, c)
    order, so the result comes out in the channels-last weight layout without a copy)."""
    B, C = x.shape[:2]
    Ho, Wo = grad_out.shape[2:]
    (sy, sx), (py, px) = stride, padding
    padded = F.pad(x, (px, px, py, py)).permute(0, 2, 3, 1)  # [B, H+2p, W+2p, C]
    taps = [padded[:, i:i + (Ho - 1) * sy + 1:sy, j:j + (Wo - 1) * sx + 1:sx] for i in range(3) for j in range(3)]
    patches = torch.stack(taps, dim=3).reshape(B * Ho * Wo, 9 * C)  # [B*L, (i, j, c)]
    grad_rows = grad_out.permute(0, 2, 3, 1).reshape(B * Ho * Wo, -1)  # [B*L, O]
    return (grad_rows.t() @ patches).view(-1, 3, 3, C).permute(0, 3, 1, 2)  # [O, C, 3, 3]


class _SmallMapConv(torch.autograd.Function):
    """F.conv2d whose backward takes the weight gradient from conv3x3_weight_grad."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding, ctx.has_bias = stride, padding, bias is not None
        return F.conv2d(x, weight, bias, stride, padding)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, ctx.stride, ctx.padding, (1, 1), False, (0, 0), 1,
                (True, False, False))[0]
        if ctx.needs_input_grad[1]:
            grad_w = conv3x3_weight_grad(x, grad_out, ctx.stride, ctx.padding)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None, None


class SmallMapConv2d(nn.Conv2d):
    """An nn.Conv2d (same parameters, same state dict) that uses _SmallMapConv where it is faster."""

    def forward(self, x):
        B, _, H, W = x.shape
        out_pixels = B * ((H + 2 * self.padding[0] - 3) // self.stride[0] + 1) * (
            (W + 2 * self.padding[1] - 3) // self.stride[1] + 1)
        if (x.device.type == "cpu" and x.dtype == torch.float32 and torch.is_grad_enabled()
                and not torch.is_autocast_enabled("cpu") and out_pixels <= SMALL_MAP_MAX_PIXELS):
            return _SmallMapConv.apply(x, self.weight, self.bias, self.stride, self.padding)
        return super().forward(x)


def use_small_map_convs(net):
    """Turn every plain 3x3 conv of `net` with >= 256 input and output channels into a SmallMapConv2d,
    in place (only the class changes: parameters, names and hooks stay); returns how many were turned."""
    count = 0
    for module in net.modules():
        if (type(module) is nn.Conv2d and module.kernel_size == (3, 3) and module.dilation == (1, 1)
                and module.groups == 1 and module.padding_mode == "zeros" and isinstance(module.padding, tuple)
                and min(module.in_channels, module.out_channels) >= SMALL_MAP_MIN_CHANNELS):
            module.__class__ = SmallMapConv2d
            count += 1
    return count


# (batch, in channels, out channels, height, width, stride) of the benchmark: ResNet-18 layer4 and
# layer3 of the 64x208 default, layer4 of the 128x416 preset, R50's 3x3 layer4 conv at 640x192 (batch
# 2 and 16), and a 16x52 map above the pixel limit.
SMALL_MAP_BENCH_SHAPES = ((8, 512, 512, 2, 7, 1), (8, 256, 512, 4, 13, 2), (8, 256, 256, 4, 13, 1),
                          (8, 512, 512, 4, 13, 1), (2, 512, 512, 6, 20, 1), (16, 512, 512, 6, 20, 1),
                          (8, 256, 256, 16, 52, 1))


def small_map_bench(shapes=SMALL_MAP_BENCH_SHAPES, rounds=24, warmup=4):
    """Forward+backward ms of one 3x3 conv (NHWC, float32, CPU) per shape, F.conv2d against
    _SmallMapConv (whatever the pixel limit), the two taking turns; medians after `warmup` rounds.
    Yields rows (shape, output pixels over the batch, ms F.conv2d, ms _SmallMapConv)."""
    fmt = torch.channels_last
    for B, cin, cout, H, W, stride in shapes:
        weight = nn.Conv2d(cin, cout, 3, bias=False).weight.detach().to(memory_format=fmt).requires_grad_()
        x = torch.randn(B, cin, H, W).contiguous(memory_format=fmt).requires_grad_()
        plain = lambda: F.conv2d(x, weight, None, stride, 1)  # noqa: E731
        fast = lambda: _SmallMapConv.apply(x, weight, None, (stride, stride), (1, 1))  # noqa: E731
        grad = torch.randn_like(plain())
        times = {plain: [], fast: []}
        for r in range(warmup + rounds):
            for conv in (plain, fast) if r % 2 else (fast, plain):
                start = time.perf_counter()
                conv().backward(grad)
                if r >= warmup:
                    times[conv].append(1000 * (time.perf_counter() - start))
        yield ((B, cin, cout, H, W, stride), B * grad.shape[2] * grad.shape[3],
               statistics.median(times[plain]), statistics.median(times[fast]))


@dataclass
class SmallMapBenchConfig:
    """What `python -m helpers.small_map_convs` does: time 3x3 conv forward+backward per shape."""
    rounds: int = 24  # timed rounds per shape (PyTorch's conv and SmallMapConv2d take turns)
    warmup: int = 4  # untimed rounds first


def main(argv=None):
    """Print the table of small_map_bench; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_dataclass_flags(parser, SmallMapBenchConfig)
    cfg = SmallMapBenchConfig(**vars(parser.parse_args(argv)))
    print(f"3x3 conv forward+backward, NHWC float32 CPU, {torch.get_num_threads()} threads, medians of "
          f"{cfg.rounds} interleaved rounds\n{'B, C in, C out, H, W, stride':30s} {'pixels':>7s} "
          f"{'PyTorch ms':>10s} {'SmallMap ms':>11s} {'ratio':>6s}")
    for shape, pixels, plain, fast in small_map_bench(rounds=cfg.rounds, warmup=cfg.warmup):
        print(f"{str(shape):30s} {pixels:7d} {plain:10.1f} {fast:11.1f} {fast / plain:6.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
