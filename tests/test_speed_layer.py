"""Tests of helpers/speed_layer.py: every piece equals the stock PyTorch code it replaces, values and
gradients: the box-filter SSIM (05's SSIM, the avg_pool2d definition), FlatAdam (torch's fused Adam,
bit for bit), SmallMapConv2d (nn.Conv2d); the memory settings take effect; bf16 runs where it is native;
`apply` gives stock PyTorch when switched off, and the speed-ups only on a CPU.
"""
import importlib
import io
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers import speed_layer
from helpers.speed_layer import FlatAdam, flat_adam

ROOT = Path(__file__).resolve().parents[1]


def geo():
    return importlib.import_module("05_posenet_loss")


# ------------------------------------------------------------------ apply
def test_apply_is_stock_pytorch_when_off_and_on_cuda(monkeypatch):
    """On a CPU with the layer on: small-map convs, BoxFilterSSIM, FlatAdam; off: 05's SSIM, torch's
    plain Adam, no class changed. On CUDA (whatever the switch): 05's SSIM and torch's fused Adam.
    --amp: bf16 always on CUDA, on a CPU only with the layer on and native bf16, never without --amp."""
    resnet = importlib.import_module("02_unet").ResNet
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    nets = resnet(18), geo().PoseCNN()
    fast = speed_layer.apply(cpu, *nets)
    assert fast.ssim is speed_layer.BoxFilterSSIM and fast.adam is flat_adam and not fast.bf16
    assert any(isinstance(m, speed_layer.SmallMapConv2d) for m in nets[0].modules())
    nets = resnet(18), geo().PoseCNN()
    stock = speed_layer.apply(cpu, *nets, on=False)
    assert stock.ssim is geo().SSIM and stock.adam is torch.optim.Adam and not stock.bf16
    assert not any(isinstance(m, speed_layer.SmallMapConv2d) for n in nets for m in n.modules())
    gpu = speed_layer.apply(cuda, *nets)
    assert gpu.ssim is geo().SSIM and gpu.adam.keywords == {"fused": True} and not gpu.bf16
    for native in (True, False):
        monkeypatch.setattr(speed_layer, "cpu_has_native_bf16", lambda: native)
        assert speed_layer.apply(cpu, *nets, amp=True).bf16 is native
        assert speed_layer.apply(cpu, *nets, amp=True, on=False).bf16 is False
        assert speed_layer.apply(cuda, *nets, amp=True, on=False).bf16 is True


def test_autocast_forward_runs_the_network_in_bf16_and_keeps_its_state_dict():
    """--amp wraps the depth network's forward in bf16 autocast from outside: a Linear's output is bf16,
    the parameters and state dict are the module's own."""
    net = nn.Linear(4, 3)
    keys = net.state_dict().keys()
    speed_layer.autocast_forward(net, "cpu")
    assert net(torch.rand(2, 4)).dtype == torch.bfloat16 and net.state_dict().keys() == keys


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, monkeypatch):
    """cpu_has_native_bf16 is True for a CPU listing avx512_bf16 or amx_bf16 among its /proc/cpuinfo
    flags and False for one with AVX-512 but neither; where the file cannot be read, PyTorch's own
    probes answer."""
    for i, (flags, native) in enumerate([("avx512f avx512_bf16", True), ("avx512f amx_tile amx_bf16", True),
                                         ("avx2 avx512f avx512_vnni avx512_fp16", False)]):
        path = tmp_path / f"cpuinfo{i}"
        path.write_text("".join(f"processor\t: {n}\nflags\t\t: fpu sse2 {flags}\n\n" for n in range(2)))
        assert speed_layer.cpu_has_native_bf16(str(path)) is native, flags
    for native in (True, False):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
        assert speed_layer.cpu_has_native_bf16(str(tmp_path / f"no_cpuinfo_{native}")) is native


# ------------------------------------------------------------------ the box-filter SSIM
def test_box_mean_equals_average_pooling_and_passes_gradcheck():
    """box_mean (running window sums) equals avg_pool2d with stride 1 for several windows, and its
    hand-written backward (a box filter of the zero-padded gradient) passes gradcheck."""
    x = torch.rand(2, 3, 17, 23, dtype=torch.float64)
    for window in (3, 5, 7):
        torch.testing.assert_close(speed_layer.box_mean(x, window), F.avg_pool2d(x, window, 1), rtol=0, atol=1e-12)
    small = torch.rand(2, 2, 9, 11, dtype=torch.float64, requires_grad=True)
    for window in (3, 5):
        assert torch.autograd.gradcheck(lambda t: speed_layer.box_mean(t, window), (small,))


def image_pair(shape, seed=0):
    """A smooth bright image and a noisy copy in [0, 1]: flat, bright areas are where E[x^2] - mu^2
    cancels most, so they are the hard case for float32."""
    g = torch.Generator().manual_seed(seed)
    x = F.avg_pool2d(torch.rand(shape, generator=g), 5, 1, 2) * 0.4 + 0.55
    y = (x + 0.05 * torch.randn(shape, generator=g)).clamp(0, 1)
    return x, y


@pytest.mark.parametrize("window", [7, 3])
def test_box_filter_ssim_equals_05s_ssim_with_gradients(window):
    """BoxFilterSSIM equals 05's SSIM (the avg_pool2d definition), values and gradients: to 1e-10 in
    float64. In float32, at the default run's size, its values are within 1e-5 of the float64
    result (closer than 05's float32 SSIM, whose own rounding reaches ~1e-4 on bright flat areas),
    the same with and without autograd, and its gradients within 1e-5 + 1e-4 relative."""
    fast, stock = speed_layer.BoxFilterSSIM(window), geo().SSIM(window)
    x, y = image_pair((2, 3, 64, 208))
    weights = torch.rand(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def value_and_grad(fn, x, y):
        x = x.clone().requires_grad_(True)
        out = fn(x, y)
        (grad,) = torch.autograd.grad((out * weights.to(out.dtype)).sum(), x)
        return out.detach().double(), grad.double()

    gold, gold_grad = value_and_grad(stock, x.double(), y.double())
    got, got_grad = value_and_grad(fast, x.double(), y.double())
    torch.testing.assert_close(got, gold, rtol=0, atol=1e-10)
    torch.testing.assert_close(got_grad, gold_grad, rtol=1e-8, atol=1e-10)
    with torch.no_grad():
        stock_error = (stock(x, y).double() - gold).abs().max()
        error = (fast(x, y).double() - gold).abs().max()
    assert error <= stock_error and error < 1e-5, (float(error), float(stock_error))
    got32, grad32 = value_and_grad(fast, x, y)
    assert torch.equal(got32, fast(x, y).double())
    torch.testing.assert_close(grad32, gold_grad, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ FlatAdam
def _nhwc_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8),
                               torch.nn.Conv2d(8, 4, 1)).to(memory_format=torch.channels_last)


def _adam_steps(net, optimizer, steps, x):
    for _ in range(steps):
        optimizer.zero_grad()
        net(x).square().mean().backward()
        optimizer.step()


def test_flat_adam_steps_channels_last_weights_in_place_without_copies():
    """FlatAdam makes exactly the updates of torch's fused Adam on channels-last weights, without
    the copies that kernel makes of every non-contiguous tensor (counted with torch.profiler), and
    its moments read as torch.optim.Adam's (same shapes, layouts and values)."""
    x = torch.rand(2, 3, 9, 9).contiguous(memory_format=torch.channels_last)
    nets = {"flat": _nhwc_net(), "torch": _nhwc_net()}
    optimizers = {"flat": FlatAdam([{"params": list(nets["flat"].parameters()), "lr": 1e-2}]),
                  "torch": torch.optim.Adam(nets["torch"].parameters(), lr=1e-2, fused=True)}
    copies = {}
    for name, net in nets.items():
        _adam_steps(net, optimizers[name], 2, x)
        net(x).square().mean().backward()
        cpu = [torch.profiler.ProfilerActivity.CPU]
        with torch.profiler.profile(activities=cpu, record_shapes=True) as prof:
            optimizers[name].step()
        # tensor copies (the step counters, one number each, are copied by both)
        copies[name] = sum(1 for e in prof.events()
                           if e.name == "aten::copy_" and math.prod(e.input_shapes[0]) > 1)
    assert copies["torch"] > 0 and copies["flat"] == 0
    for a, b in zip(nets["flat"].parameters(), nets["torch"].parameters()):
        assert torch.equal(a, b) and a.stride() == b.stride()
    mine, theirs = optimizers["flat"].state_dict()["state"], optimizers["torch"].state_dict()["state"]
    assert mine.keys() == theirs.keys()
    for i in theirs:
        for key, value in theirs[i].items():
            assert torch.equal(mine[i][key], value) and mine[i][key].stride() == value.stride()


def test_flat_adam_resumes_from_its_own_or_torch_adams_state_and_clears_gradients():
    """A FlatAdam loaded from a FlatAdam's or a torch.optim.Adam's state dict (a checkpoint of either
    kind, saved and loaded with torch.save / torch.load) continues exactly as the original;
    zero_grad clears the network's gradients; a gradient given in another layout is stepped right."""
    x = torch.rand(2, 3, 9, 9).contiguous(memory_format=torch.channels_last)
    reference = _nhwc_net()
    ref_opt = FlatAdam([{"params": list(reference.parameters()), "lr": 1e-2}])
    _adam_steps(reference, ref_opt, 2, x)
    for kind in ("flat", "torch"):
        saved = _nhwc_net()
        opt = (FlatAdam([{"params": list(saved.parameters()), "lr": 1e-2}]) if kind == "flat"
               else torch.optim.Adam(saved.parameters(), lr=1e-2, fused=True))
        _adam_steps(saved, opt, 2, x)
        buffer = io.BytesIO()
        torch.save({"model": saved.state_dict(), "optimizer": opt.state_dict()}, buffer)
        buffer.seek(0)
        ckpt = torch.load(buffer, weights_only=True)
        resumed = _nhwc_net()
        resumed_opt = FlatAdam([{"params": list(resumed.parameters()), "lr": 1e-2}])
        resumed.load_state_dict(ckpt["model"])
        resumed_opt.load_state_dict(ckpt["optimizer"])
        _adam_steps(resumed, resumed_opt, 1, x)
        if kind == "flat":
            _adam_steps(reference, ref_opt, 1, x)
        for a, b in zip(resumed.parameters(), reference.parameters()):
            assert torch.equal(a, b)
        resumed_opt.zero_grad()
        assert all(p.grad is None for p in resumed.parameters())
    # A gradient laid out NCHW for an NHWC weight: the same step as with the NHWC gradient.
    nets = [_nhwc_net(), _nhwc_net()]
    opts = [FlatAdam([{"params": list(n.parameters()), "lr": 1e-2}]) for n in nets]
    for net, opt, layout in zip(nets, opts, (torch.contiguous_format, torch.channels_last)):
        net(x).square().mean().backward()
        net[0].weight.grad = net[0].weight.grad.contiguous(memory_format=layout)
        opt.step()
    assert not nets[0][0].weight.grad.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(nets[0][0].weight, nets[1][0].weight)


def test_flat_adam_falls_back_to_plain_adam_where_fused_is_missing(monkeypatch):
    """flat_adam gives a FlatAdam on CPU; where the fused Adam raises (a device or PyTorch without it),
    torch's plain Adam with the same options and groups."""
    net = _nhwc_net()
    groups = [{"params": list(net[0].parameters()), "lr": 1e-2}, {"params": list(net[2].parameters())}]
    assert isinstance(flat_adam(groups, lr=1e-3), FlatAdam)

    def no_fused(self, *args, **kwargs):
        raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of "
                           "supported devices")
    monkeypatch.setattr(FlatAdam, "__init__", no_fused)
    fallback = flat_adam(groups, lr=1e-3)
    assert type(fallback) is torch.optim.Adam
    assert [g["lr"] for g in fallback.param_groups] == [1e-2, 1e-3]


# ------------------------------------------------------------------ small-map convs
@pytest.mark.parametrize("stride,channels_last,bias", [(1, True, False), (2, True, True), (1, False, True),
                                                       (2, False, False)])
def test_small_map_conv_gives_the_same_output_and_gradients(monkeypatch, stride, channels_last, bias):
    """SmallMapConv2d (the weight gradient as one matrix product) against nn.Conv2d: the same output,
    input, weight and bias gradients to float rounding, in both memory layouts, on an odd-sized map;
    the weight gradient keeps the weight's layout. The fast path must actually run (counted)."""
    u = speed_layer
    calls = []
    original = u.conv3x3_weight_grad
    monkeypatch.setattr(u, "conv3x3_weight_grad", lambda *a: calls.append(1) or original(*a))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    ref = nn.Conv2d(256, 256, 3, stride, 1, bias=bias).to(memory_format=fmt)
    fast = nn.Conv2d(256, 256, 3, stride, 1, bias=bias)
    fast.load_state_dict(ref.state_dict())
    fast = fast.to(memory_format=fmt)
    assert u.use_small_map_convs(fast) == 1 and isinstance(fast, u.SmallMapConv2d)
    x = torch.randn(2, 256, 5, 9).contiguous(memory_format=fmt)
    xs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
    outs = [ref(xs[0]), fast(xs[1])]
    grad = torch.randn_like(outs[0])
    for out in outs:
        out.backward(grad)
    assert calls == [1]
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=0)          # the forward is PyTorch's
    torch.testing.assert_close(xs[1].grad, xs[0].grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-4)
    assert fast.weight.grad.stride() == fast.weight.stride()
    if bias:
        torch.testing.assert_close(fast.bias.grad, ref.bias.grad, rtol=1e-4, atol=1e-4)


def test_use_small_map_convs_picks_only_big_3x3_convs_and_keeps_the_state_dict():
    """Only 3x3 convs with >= 256 input and output channels change class (ResNet-18: layer3 and layer4,
    7 convs; not the 1x1 shortcuts); names, shapes and values of the state dict stay; without a
    gradient (evaluation) or on a map above the pixel limit the plain nn.Conv2d path runs."""
    u = speed_layer
    torch.manual_seed(0)
    net = importlib.import_module("02_unet").ResNet(18)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert u.use_small_map_convs(net) == 7
    turned = sorted(n for n, m in net.named_modules() if isinstance(m, u.SmallMapConv2d))
    assert turned == ["layer3.0.conv2", "layer3.1.conv1", "layer3.1.conv2", "layer4.0.conv1",
                      "layer4.0.conv2", "layer4.1.conv1", "layer4.1.conv2"]
    after = net.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    conv = net.layer4[1].conv1
    x = torch.randn(1, 512, 50, 50, requires_grad=True)       # 2,500 output pixels > 2,048
    with torch.no_grad():
        assert conv(x[:, :, :2, :7]).grad_fn is None
    assert type(conv(x).grad_fn).__name__ == "ConvolutionBackward0"            # PyTorch's own backward
    assert type(conv(x[:, :, :2, :7]).grad_fn).__name__ == "_SmallMapConvBackward"  # the matmul one


def test_small_map_bench_rows_and_command_line(capsys, monkeypatch):
    """The benchmark behind docs/benchmarks.md's table yields one row per shape with its output pixels and
    two positive times, and `python -m helpers.speed_layer` prints its table (one tiny
    shape here so the test stays fast)."""
    u = speed_layer
    rows = list(u.small_map_bench(shapes=((2, 256, 256, 2, 3, 1), (2, 256, 256, 4, 6, 2)), rounds=2, warmup=1))
    assert [(r[0], r[1]) for r in rows] == [((2, 256, 256, 2, 3, 1), 12), ((2, 256, 256, 4, 6, 2), 12)]
    assert all(r[2] > 0 and r[3] > 0 for r in rows)
    original = u.small_map_bench
    monkeypatch.setattr(u, "small_map_bench", lambda **kw: original(shapes=((2, 256, 256, 2, 3, 1),), rounds=2, warmup=1))
    assert u.main([]) == 0
    out = capsys.readouterr().out
    assert "(2, 256, 256, 2, 3, 1)" in out and "ratio" in out


# ------------------------------------------------------------------ CPU memory
def fresh_process(code, **env):
    """Run `code` in a new Python (this repository importable) and return its last output line."""
    full_env = {k: v for k, v in os.environ.items() if k != speed_layer.THP_SWITCH}
    full_env.update(env, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True, text=True,
                         check=True, cwd=ROOT)
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PyTorch madvises huge pages on Linux only")
def test_huge_pages_take_effect_at_the_start_of_a_process():
    code = "from helpers import speed_layer; print(speed_layer.tune_cpu_memory())"
    assert fresh_process(code) == "True"


def test_huge_pages_off_without_the_switch_or_when_the_environment_says_no():
    assert fresh_process("from helpers import speed_layer; print(speed_layer.huge_pages_in_effect())") == "False"
    code = "from helpers import speed_layer; print(speed_layer.use_huge_pages())"
    assert fresh_process(code, THP_MEM_ALLOC_ENABLE="0") == "False"


def test_huge_pages_switched_on_too_late_do_nothing():
    """PyTorch reads the switch once, at the first CPU tensor of 2 MB or more."""
    code = ("import torch\nfrom helpers import speed_layer; big = torch.zeros(1 << 20)\n"
            "print(speed_layer.use_huge_pages())")
    assert fresh_process(code) == "False"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_retained_memory_is_reused_without_page_faults():
    """A freed 16 MB array's memory serves the next one: its pages are not faulted in again (without
    retain_freed_memory glibc hands them back, and the new array cost ~500 faults on our machines)."""
    code = ("import numpy as np\nfrom helpers import speed_layer; speed_layer.retain_freed_memory()\n"
            "a = np.ones(4 << 20, np.float32); del a\n"
            "before = speed_layer.page_faults()\n"
            "b = np.ones(4 << 20, np.float32)\n"
            "print(speed_layer.page_faults() - before)")
    assert int(fresh_process(code)) < 50
