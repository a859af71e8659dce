"""Tests of helpers/small_map_convs.py: the matmul weight gradient equals PyTorch's, which convs it
replaces, and the benchmark's rows and command line."""
import importlib

import pytest
import torch
import torch.nn as nn

from helpers import small_map_convs


@pytest.mark.parametrize("stride,channels_last,bias", [(1, True, False), (2, True, True), (1, False, True),
                                                       (2, False, False)])
def test_small_map_conv_gives_the_same_output_and_gradients(monkeypatch, stride, channels_last, bias):
    """SmallMapConv2d (the weight gradient as one matrix product) against nn.Conv2d: the same output,
    input, weight and bias gradients to float rounding, in both memory layouts, on an odd-sized map;
    the weight gradient keeps the weight's layout. The fast path must actually run (counted)."""
    u = small_map_convs
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
    u = small_map_convs
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
    two positive times, and `python -m helpers.small_map_convs` prints its table (one tiny
    shape here so the test stays fast)."""
    u = small_map_convs
    rows = list(u.small_map_bench(shapes=((2, 256, 256, 2, 3, 1), (2, 256, 256, 4, 6, 2)), rounds=2, warmup=1))
    assert [(r[0], r[1]) for r in rows] == [((2, 256, 256, 2, 3, 1), 12), ((2, 256, 256, 4, 6, 2), 12)]
    assert all(r[2] > 0 and r[3] > 0 for r in rows)
    original = u.small_map_bench
    monkeypatch.setattr(u, "small_map_bench", lambda **kw: original(shapes=((2, 256, 256, 2, 3, 1),), rounds=2, warmup=1))
    assert u.main([]) == 0
    out = capsys.readouterr().out
    assert "(2, 256, 256, 2, 3, 1)" in out and "ratio" in out
