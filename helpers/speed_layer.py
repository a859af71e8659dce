"""speed_layer - every CPU speed-up of a training run in one layer; `--no-speed_layer`: stock PyTorch.

Not a reading step. On a CPU, `apply` swaps in pieces that compute the same numbers as stock PyTorch,
faster: BoxFilterSSIM, FlatAdam, SmallMapConv2d, bf16 where native; tune_cpu_memory cuts page faults.
On CUDA a run is stock PyTorch either way. Why each piece, and its measurements: docs/benchmarks.md.
Run: `python -m helpers.speed_layer` times SmallMapConv2d against PyTorch's conv per shape.
Tests: tests/test_speed_layer.py (each piece equal to the stock code, values and gradients).
"""
import argparse
import ctypes
import functools
import importlib
import os
import statistics
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers.cli import add_dataclass_flags

try:
    import resource  # Unix only
except ImportError:
    resource = None

# A module name cannot start with a digit in an `import` statement: loaded by name.
posenet_loss = importlib.import_module("05_posenet_loss")


# ---- The layer: what a run applies ----
@dataclass
class Speed:
    """What a run builds its loss and optimiser with, as `apply` chose them for its device."""
    ssim: type        # 05_posenet_loss.SSIM, or BoxFilterSSIM (same numbers)
    adam: object      # adam(param_groups) -> the optimiser
    bf16: bool        # whether --amp runs the depth network's forward under bf16 autocast


def apply(device, depth_net, pose_net, amp=False, on=True):
    """Make a run fast on `device` -> Speed. On a CPU with `on`: small-map convs in both networks (in
    place), BoxFilterSSIM, FlatAdam, and --amp where the CPU has native bf16. On CUDA: fused Adam and
    --amp. Otherwise stock PyTorch, float32."""
    fast = on and device.type == "cpu"
    if fast:
        for net in (depth_net, pose_net):
            use_small_map_convs(net)
        adam = flat_adam
    elif device.type == "cuda":
        adam = functools.partial(torch.optim.Adam, fused=True)
    else:
        adam = torch.optim.Adam
    bf16 = amp and (device.type == "cuda" or (fast and cpu_has_native_bf16()))
    if bf16:
        autocast_forward(depth_net, device.type)
    return Speed(ssim=BoxFilterSSIM if fast else posenet_loss.SSIM, adam=adam, bf16=bf16)


def autocast_forward(net, device_type):
    """Run net's forward under bf16 autocast from now on (--amp); 05's loss goes back to float32."""
    forward = net.forward

    @functools.wraps(forward)
    def bf16_forward(*args, **kwargs):
        with torch.autocast(device_type=device_type, dtype=torch.bfloat16):
            return forward(*args, **kwargs)
    net.forward = bf16_forward


# ---- SSIM by a box filter ----
def window_sum(x, window, dim):
    """Sums of `window` consecutive entries of x along dim ('valid'), as one running cumsum (first window,
    then enter minus leave): its partial sums stay within one window, so float32 keeps its precision."""
    n = x.shape[dim]
    shape = list(x.shape)
    shape[dim] = n - window + 1
    out = x.new_empty(shape)
    torch.sum(x.narrow(dim, 0, window), dim, keepdim=True, out=out.narrow(dim, 0, 1))
    torch.sub(x.narrow(dim, window, n - window), x.narrow(dim, 0, n - window),
              out=out.narrow(dim, 1, n - window))
    return out.cumsum_(dim)


def box_sum(x, window):
    """Sum of every window x window block of x [N, C, H, W] -> [N, C, H-window+1, W-window+1]."""
    return window_sum(window_sum(x, window, -1), window, -2)


class BoxMean(torch.autograd.Function):
    """Mean of every window x window block ('valid', stride 1), with a backward pass of its own:
    autograd through the cumsums took three times the forward; the adjoint of a box filter is the
    same box filter over the gradient zero-padded by window - 1."""

    @staticmethod
    def forward(ctx, x, window):
        ctx.window = window
        return box_sum(x, window) / (window * window)

    @staticmethod
    def backward(ctx, grad):
        w = ctx.window
        return box_sum(F.pad(grad, (w - 1, w - 1, w - 1, w - 1)), w) / (w * w), None


def box_mean(x, window):
    """avg_pool2d(x, window, stride=1) for x [N, C, H, W], by running window sums (BoxMean)."""
    return BoxMean.apply(x, window)


class BoxFilterSSIM(posenet_loss.SSIM):
    """05's SSIM by box_mean (to 1e-10 in float64), each image-channel's mean level subtracted first."""

    def forward(self, x, y):
        r = self.window // 2
        # The variances are shift-invariant: with the mean level c subtracted, E[x^2] - mu^2 cancels far
        # less in float32 (10-100x smaller rounding error); c is added back to the means.
        c = (0.5 * (x + y)).mean(dim=(2, 3), keepdim=True).detach()          # [B, C, 1, 1]
        x, y = x - c, y - c
        # Two stacks, one box filter each: the maps a gradient flows through (x), and those of y alone.
        r4 = [r, r, r, r]
        mu_x, e_xx, e_xy = box_mean(F.pad(torch.cat([x, x * x, x * y]), r4, mode="reflect"),
                                    self.window).chunk(3)               # each [B, C, H, W]
        mu_y, e_yy = box_mean(F.pad(torch.cat([y, y * y]), r4, mode="reflect"), self.window).chunk(2)
        sigma_x, sigma_y, sigma_xy = e_xx - mu_x * mu_x, e_yy - mu_y * mu_y, e_xy - mu_x * mu_y
        mu_x, mu_y = mu_x + c, mu_y + c
        num = (2 * mu_x * mu_y + self.C1) * (2 * sigma_xy + self.C2)
        den = (mu_x * mu_x + mu_y * mu_y + self.C1) * (sigma_x + sigma_y + self.C2)
        return torch.clamp((1 - num / den) / 2, 0, 1)


# ---- Adam on the parameters' memory as it lies ----
# PyTorch's fused CPU Adam makes every tensor contiguous first, copying each channels-last weight, its
# gradient and both moments out and back every step; FlatAdam hands it a 1-D view of the memory instead.
def memory_view(t):
    """A 1-D view of t's memory when t is dense (contiguous or channels-last); t itself otherwise."""
    dense = t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last))
    return t.detach().as_strided((t.numel(),), (1,), t.storage_offset()) if dense else t


class FlatAdam(torch.optim.Adam):
    """torch.optim.Adam(fused=True) that updates every parameter through a 1-D view of its memory;
    its state dict holds the moments in the parameters' shapes, interchangeable with torch.optim.Adam's."""

    def __init__(self, params, **adam_options):
        params = list(params)
        groups = params if params and isinstance(params[0], dict) else [{"params": params}]
        self.pairs = []                                   # (parameter, its view or itself)
        flat_groups = []
        for group in groups:
            pairs = [(p, memory_view(p)) for p in group["params"]]
            self.pairs += pairs
            flat_groups.append({**group, "params": [view for _, view in pairs]})
        super().__init__(flat_groups, **{**adam_options, "fused": True})

    @torch.no_grad()
    def step(self, closure=None):
        for p, view in self.pairs:
            grad = p.grad
            if view is p:                                 # not dense: Adam steps the parameter itself
                continue
            if grad is not None and grad.stride() != p.stride():  # e.g. a gradient set by hand in NCHW
                grad = torch.empty_like(p).copy_(grad)
            view.grad = None if grad is None else memory_view(grad)
        return super().step(closure)

    def zero_grad(self, set_to_none=True):
        super().zero_grad(set_to_none)
        for p, _ in self.pairs:
            if p.grad is not None:
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_().zero_()

    def state_dict(self):
        saved = super().state_dict()
        state = {}
        for i, entry in saved["state"].items():
            p, view = self.pairs[i]
            state[i] = {k: (v.as_strided(p.shape, p.stride(), v.storage_offset())
                            if view is not p and torch.is_tensor(v) and v.dim() == 1 else v)
                        for k, v in entry.items()}
        return {**saved, "state": state}

    def load_state_dict(self, state_dict):
        state = {}
        for i, entry in state_dict["state"].items():
            p, view = self.pairs[int(i)]
            state[i] = {k: (memory_view(torch.empty_like(p).copy_(v))
                            if view is not p and torch.is_tensor(v) and v.shape == p.shape and v.dim() else v)
                        for k, v in entry.items()}
        super().load_state_dict({**state_dict, "state": state})


def flat_adam(params, **adam_options):
    """A FlatAdam where the installed PyTorch has a fused CPU Adam, torch.optim.Adam otherwise."""
    params = list(params)
    try:
        return FlatAdam(params, **adam_options)
    except (RuntimeError, TypeError):             # no fused Adam for this device / PyTorch version
        return torch.optim.Adam(params, **adam_options)


# ---- Big 3x3 convs on small maps ----
# On CPU, PyTorch's (oneDNN) weight gradient of a 3x3 conv with many channels on a tiny map is slow;
# as grad_out [O, B*L] @ patches [B*L, 3*3*C] it takes less than half the time there. Used where it
# measured faster or even (docs/benchmarks.md): >= 256 channels, at most 2048 output pixels.
SMALL_MAP_MAX_PIXELS = 2048
SMALL_MAP_MIN_CHANNELS = 256


def conv3x3_weight_grad(x, grad_out, stride, padding):
    """dL/dW [O, C, 3, 3] of a 3x3 conv from x [B, C, H, W] and grad_out [B, O, Ho, Wo], one matrix
    product over the 9 shifted views of the padded input (taps in (i, j, c) order: channels-last)."""
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
    in place (only the class changes); returns how many were turned."""
    count = 0
    for module in net.modules():
        if (type(module) is nn.Conv2d and module.kernel_size == (3, 3) and module.dilation == (1, 1)
                and module.groups == 1 and module.padding_mode == "zeros" and isinstance(module.padding, tuple)
                and min(module.in_channels, module.out_channels) >= SMALL_MAP_MIN_CHANNELS):
            module.__class__ = SmallMapConv2d
            count += 1
    return count


# ---- CPU memory: page faults (neither setting changes a number) ----
THP_SWITCH = "THP_MEM_ALLOC_ENABLE"  # PyTorch's switch (c10/core/alloc_cpu.cpp)


def retain_freed_memory():
    """Ask glibc's malloc to keep freed memory (blocks up to 32 MB, 128 MB of free heap) for reuse, or
    each sample's arrays page-fault in afresh (docs/benchmarks.md); a no-op where libc is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-1, 128 << 20)  # M_TRIM_THRESHOLD: free heap kept before trimming
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: blocks below this come from the reusable heap
    except (OSError, AttributeError):
        pass


def huge_pages_in_effect():
    """Whether PyTorch's CPU allocator uses transparent huge pages here (Linux only): with them, blocks of
    2 MB or more are page-aligned, without, 64-byte aligned (three aligned by chance: 1 in 262,144)."""
    if not sys.platform.startswith("linux"):
        return False
    probes = [torch.empty(n << 20, dtype=torch.uint8) for n in (2, 3, 4)]
    return all(t.data_ptr() % 4096 == 0 for t in probes)


def use_huge_pages():
    """Turn PyTorch's huge-page allocation on unless THP_MEM_ALLOC_ENABLE=0; returns whether it is in
    effect. Call it before the first CPU tensor of 2 MB or more: later PyTorch no longer reads the switch."""
    os.environ.setdefault(THP_SWITCH, "1")
    return huge_pages_in_effect()


def tune_cpu_memory():
    """Both settings, for a training or benchmark process; returns whether huge pages are in effect."""
    retain_freed_memory()
    return use_huge_pages()


def page_faults():
    """Minor page faults of this process so far; 0 without `resource`."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource else 0


# ---- bf16 on a CPU ----
# bf16 only pays with native instructions (AVX-512 BF16, AMX); without them oneDNN converts to float32
# and back, so --amp runs float32 there. The /proc/cpuinfo flags:
NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}


@functools.lru_cache(maxsize=None)   # the training loop asks every step; the answer never changes
def cpu_has_native_bf16(cpuinfo="/proc/cpuinfo"):
    """True if the CPU lists a native bf16 flag in `cpuinfo`; where it cannot be read, PyTorch's probe."""
    try:
        with open(cpuinfo) as f:
            flags = {word for line in f if line.startswith("flags") for word in line.split()}
    except OSError:
        # get_cpu_capability() says only "AVX512", not BF16: torch.cpu's private finer probes.
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    return bool(flags & NATIVE_BF16_FLAGS)


# ---- The small-map benchmark ----
# (batch, in channels, out channels, height, width, stride): the rows of docs/benchmarks.md's table.
SMALL_MAP_BENCH_SHAPES = ((8, 512, 512, 2, 7, 1), (8, 256, 512, 4, 13, 2), (8, 256, 256, 4, 13, 1),
                          (8, 512, 512, 4, 13, 1), (2, 512, 512, 6, 20, 1), (16, 512, 512, 6, 20, 1),
                          (8, 256, 256, 16, 52, 1))


def small_map_bench(shapes=SMALL_MAP_BENCH_SHAPES, rounds=24, warmup=4):
    """Yields (shape, output pixels, ms F.conv2d, ms _SmallMapConv): forward+backward of one NHWC 3x3
    conv per shape, the two taking turns, medians after `warmup` rounds."""
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
    """What `python -m helpers.speed_layer` does: time 3x3 conv forward+backward per shape."""
    rounds: int = 24  # timed rounds per shape (PyTorch's conv and SmallMapConv2d take turns)
    warmup: int = 4  # untimed rounds first


def main(argv=None):
    parser = argparse.ArgumentParser(description="Time SmallMapConv2d against PyTorch's 3x3 conv per shape.")
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
