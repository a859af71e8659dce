"""Tests of helpers/fused_adam.py: FlatAdam makes torch's fused Adam updates on channels-last weights without
copies, and its checkpoints are torch.optim.Adam's; make_adam falls back to the plain Adam.

Oracle: torch.optim.Adam(fused=True) on the same network (equal parameters and moments, bit for bit).
"""
import io
import math

import torch

from helpers.fused_adam import FlatAdam, make_adam


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


def test_make_adam_is_flat_where_fused_exists_and_plain_otherwise(monkeypatch):
    """make_adam gives a FlatAdam on CPU; with fused=False, or where the fused Adam raises (a device or
    PyTorch without it), torch's plain Adam with the same options and groups."""
    net = _nhwc_net()
    groups = [{"params": list(net[0].parameters()), "lr": 1e-2}, {"params": list(net[2].parameters())}]
    assert isinstance(make_adam(groups, lr=1e-3), FlatAdam)
    plain = make_adam(net.parameters(), fused=False, lr=1e-3)
    assert type(plain) is torch.optim.Adam and not plain.defaults["fused"]

    def no_fused(self, *args, **kwargs):
        raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of "
                           "supported devices")
    monkeypatch.setattr(FlatAdam, "__init__", no_fused)
    fallback = make_adam(groups, lr=1e-3)
    assert type(fallback) is torch.optim.Adam
    assert [g["lr"] for g in fallback.param_groups] == [1e-2, 1e-3]
