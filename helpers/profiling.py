"""profiling - where a training step's time goes (`python 06_train.py --profile N`).

Not a reading step: nothing in it is SQLDepth. `profile` runs N steps of a Trainer of 06_train.py and
prints the throughput and a table of the parts of a step: data wait, depth net, pose net, warping +
loss (of which SSIM), each forward and backward, and the optimizer (PartClock). The numbers and what
was tried with them: docs/benchmarks.md. Tests: tests/test_06_train.py.
"""
import importlib
import time
from collections import defaultdict
from contextlib import contextmanager

import torch

from helpers.distributed_training import unwrap      # the module inside DDP (helpers/distributed_training.py)
from helpers.speed_layer import huge_pages_in_effect  # page faults (helpers/speed_layer.py)

posenet_loss = importlib.import_module("05_posenet_loss")   # a name cannot start with a digit: loaded by name


class PartClock:
    """Where a training step's time goes, by part, for --profile. Forward: module hooks time the
    depth net, the pose net and SSIM; the rest of the forward pass is warping and the loss. Backward:
    autograd runs nodes in reverse order of creation, so the loss's backward comes first, then the
    pose net's, then the depth net's; a gradient hook on each network's output marks the moment its
    backward starts. The ends of the three phases of a step: the loss returned (`phases` wraps
    05's self_supervised_loss while it runs), the optimizer's step begins and ends (its step hooks).
    On CUDA every mark synchronises, so each part is charged its own GPU time."""

    NETS = ("depth net", "pose net")

    def __init__(self, depth_net, pose_net, ssim, device):
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.handles, self.started = [], {}
        self.watch("depth net", depth_net)
        self.watch("pose net", pose_net)
        if ssim is not None:
            self.watch("ssim", ssim)
        self.reset()

    def now(self):
        self.sync()
        return time.perf_counter()

    def reset(self):
        """Forget what was booked (after the warm-up steps)."""
        self.forward, self.backward, self.other = defaultdict(float), defaultdict(float), defaultdict(float)
        self.begin_step()

    def watch(self, part, module):
        def before(module, inputs):
            self.started[part] = self.now()

        def after(module, inputs, output):
            self.step_forward[part] += self.now() - self.started.pop(part)
            for t in (output if isinstance(output, tuple) else (output,)) if part != "ssim" else ():
                if t.requires_grad:
                    t.register_hook(lambda grad: self.mark_gradient(part))

        self.handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]

    def mark_gradient(self, part):
        """The first gradient that reaches a network's output: its backward pass starts now."""
        self.grad_marks.setdefault(part, self.now())

    def begin_step(self):
        self.step_forward, self.grad_marks, self.phase_end = defaultdict(float), {}, {}

    @contextmanager
    def phases(self, optimizer):
        """Mark the ends of a step's phases while inside: forward (the loss returned), backward (the
        optimizer's step begins) and optimizer (its step ends); the training step never knows."""
        real_loss = posenet_loss.self_supervised_loss

        def timed_loss(*args, **kwargs):
            out = real_loss(*args, **kwargs)
            self.phase_end["forward"] = self.now()
            return out

        mark = lambda phase: lambda *args: self.phase_end.__setitem__(phase, self.now())  # noqa: E731
        handles = [optimizer.register_step_pre_hook(mark("backward")),
                   optimizer.register_step_post_hook(mark("optimizer"))]
        posenet_loss.self_supervised_loss = timed_loss
        try:
            yield
        finally:
            posenet_loss.self_supervised_loss = real_loss
            for handle in handles:
                handle.remove()

    def end_step(self, start, data_ready):
        """Book one step from the times at its start, when its batch was ready and at the ends of its
        three phases (marked inside `phases`)."""
        forward_end, backward_end, optimizer_end = (self.phase_end[p] for p in ("forward", "backward", "optimizer"))
        self.other["data wait"] += data_ready - start
        nets = sum(self.step_forward[p] for p in self.NETS)
        for part in self.NETS:
            self.forward[part] += self.step_forward[part]
        self.forward["warping + loss"] += forward_end - data_ready - nets
        self.forward["of which SSIM"] += self.step_forward["ssim"]
        depth = self.grad_marks.get("depth net", backward_end)
        pose = self.grad_marks.get("pose net", depth)
        self.backward["warping + loss"] += pose - forward_end
        self.backward["pose net"] += depth - pose
        self.backward["depth net"] += backward_end - depth
        self.other["optimizer"] += optimizer_end - backward_end
        self.begin_step()

    def report(self, steps):
        """Lines of the per-part table, in ms per step."""
        total = sum(self.other.values()) + sum(self.backward.values()) + sum(
            v for k, v in self.forward.items() if k != "of which SSIM")
        per = 1000 / steps
        lines = [f"  {'part':<18} {'forward':>8} {'backward':>9} {'total':>8}   ms/step, share"]
        for part in ("data wait", "depth net", "pose net", "warping + loss", "of which SSIM", "optimizer"):
            f, b, o = self.forward[part], self.backward[part], self.other[part]
            if part == "of which SSIM":
                lines.append(f"    {part:<16} {per * f:8.1f} {'(in loss)':>9}")
                continue
            cells = f"{'':8} {'':9}" if part in ("data wait", "optimizer") else f"{per * f:8.1f} {per * b:9.1f}"
            lines.append(f"  {part:<18} {cells} {per * (f + b + o):8.1f}   {100 * (f + b + o) / total:4.1f}%")
        return total, lines

    def close(self):
        for handle in self.handles:
            handle.remove()


def profile(trainer, steps, prepare, step, amp, warmup=2):
    """--profile N of 06_train.py: N timed steps after `warmup` untimed ones; prints the throughput and
    where the time goes by part (PartClock). trainer: 06's Trainer (networks, loader, sampler, config);
    prepare(batch) -> the batch on the device; step(batch): one training step (06's train_step), whose
    phases PartClock.phases marks from outside. Writes nothing."""
    cfg, device, info = trainer.cfg, trainer.device, trainer.info
    clock = PartClock(*map(unwrap, trainer.nets), trainer.ssim, device)

    def endless():
        for epoch in range(10 ** 9):
            trainer.sampler.set_epoch(epoch)
            yield from trainer.train_loader

    batches = endless()
    with clock.phases(trainer.optimizer):
        for i in range(warmup + steps):
            start = clock.now()
            batch = prepare(next(batches))
            data_ready = clock.now()
            step(batch)
            clock.end_step(start, data_ready)
            if i + 1 == warmup:
                clock.reset()
    clock.close()
    total, lines = clock.report(steps)
    if info.main:
        print(f"profile: {steps} steps after {warmup} warm-up | batch {cfg.batch_size} x {info.world} | "
              f"{cfg.width}x{cfg.height} | {device} | amp {'on' if amp else 'off'} | "
              f"channels_last {'on' if cfg.channels_last else 'off'} | workers {cfg.num_workers} | "
              f"huge pages {'on' if huge_pages_in_effect() else 'off'}")
        print(f"  throughput {steps * cfg.batch_size * info.world / total:8.1f} img/s "
              f"({1000 * total / steps:.1f} ms/step)")
        print("\n".join(lines))
    return 0
