"""benchmark - how fast the depth network, the data loader and a training step are, and where the time goes.

Not a reading step. Commands (docs/benchmarks.md has the figures and what was tried):

  python -m helpers.benchmark [--preset kitti-r50-640x192] [--amp]
      per preset of 04_bins.py: parameters, GMACs per image, inference, forward+backward and
      training step ms (medians over --iters), page faults per step
  python -m helpers.benchmark --loader data/synthetic [--height 64 --width 208]
      KittiRaw training samples/s with 0, 1 and 2 workers, against a decode + resize only bound
  python -m helpers.benchmark --train_memory WORLD --batch_size N [--preset NAME]
      resident memory of one CPU training step per KITTI preset (docs/kitti.md, "Planning a GPU run")
  python 06_train.py --profile 20
      a training step split into its parts (`profile`, PartClock)

Tests: tests/test_benchmark.py, tests/test_06_train.py.
"""
import argparse
import copy
import importlib
import statistics
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from helpers.cli import add_dataclass_flags, one_line
from helpers import kitti_files
from helpers.distributed_training import choose_device, unwrap
from helpers.speed_layer import (cpu_has_native_bf16, flat_adam, huge_pages_in_effect, page_faults,
                                 tune_cpu_memory, use_small_map_convs)

# A module name cannot start with a digit in an `import` statement: the numbered scripts are loaded by name.
data = importlib.import_module("01_data")
bins = importlib.import_module("04_bins")
posenet_loss = importlib.import_module("05_posenet_loss")


# ---- The depth network ----
def count_macs(model, img):
    """Multiply-accumulates of one forward pass (hooks on Conv2d / Linear / attention; the cost volume
    and summaries added by hand). A copy in train mode: the fused transformer fast path skips hooks."""
    model, total = copy.deepcopy(model).train(), [0]

    def conv(m, inp, out):
        total[0] += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear(m, inp, out):
        total[0] += out.numel() * m.in_features

    def attention(m, inp, out):  # q,k,v projections + QK^T + AV + output projection
        q, k = inp[0], inp[1]
        B, L, E = q.shape  # batch_first
        S = k.shape[1]
        total[0] += B * (L * E * E + 2 * S * E * E + 2 * L * S * E + L * E * E)

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(conv)
        elif isinstance(m, nn.Linear) and not isinstance(m, nn.modules.linear.NonDynamicallyQuantizableLinear):
            m.register_forward_hook(linear)
        elif isinstance(m, nn.MultiheadAttention):
            m.register_forward_hook(attention)
    with torch.no_grad():
        out = model(img, return_extras=True)
    if "cost_volume" in out:  # V = S^T K, plus the softmax-weighted summaries of the sql bins
        B, Q, h, w = out["cost_volume"].shape
        total[0] += (2 if model.cfg.bins == "sql" else 1) * B * Q * h * w * model.cfg.model_dim
    return total[0]


def benchmark(preset, size, device, batch_size=2, amp=False, channels_last=False, iters=3, fused_adam=True,
              small_map_convs=True):
    """(params, MACs/image, inference ms/image, forward+backward ms/step, train step ms, minor page
    faults per train step) of one preset at size (H, W): medians (faults: the mean) over `iters`."""
    torch.manual_seed(0)
    model = bins.DepthNet(bins.PRESETS[preset]).to(device)
    if small_map_convs:
        use_small_map_convs(model)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    img = torch.rand(batch_size, 3, *size, device=device).contiguous(memory_format=fmt)
    params = sum(p.numel() for p in model.parameters())
    macs = count_macs(model, img[:1])
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def timed(fn):
        fn()  # warm-up
        times, faults_before = [], page_faults()
        for _ in range(iters):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times.append((time.perf_counter() - start) * 1000.0)
        return statistics.median(times), (page_faults() - faults_before) / iters

    model.eval()

    def infer():
        with torch.inference_mode(), autocast:
            model(img)
    infer_ms = timed(infer)[0] / batch_size
    model.train()
    if not fused_adam:
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    elif device.type == "cuda":
        opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)
    else:
        opt = flat_adam(model.parameters(), lr=1e-4)

    def forward_backward():
        with autocast:
            loss = model(img).float().mean()
        model.zero_grad(set_to_none=True)
        loss.backward()

    def step():
        forward_backward()
        opt.step()
    fwd_bwd_ms = timed(forward_backward)[0]
    return (params, macs, infer_ms, fwd_bwd_ms, *timed(step))


def run_bench(cfg, device):
    """The depth-network table: one row per preset (and per dtype with --amp where bf16 runs)."""
    presets = [cfg.preset] if cfg.preset else list(bins.PRESETS)
    modes = [False, True] if cfg.amp and (device.type == "cuda" or cpu_has_native_bf16()) else [False]
    print(f"device {device}, batch {cfg.batch_size}, channels_last {cfg.channels_last}, fused Adam "
          f"{cfg.fused_adam}, small-map convs {cfg.small_map_convs}, huge pages {huge_pages_in_effect()}, "
          f"threads {torch.get_num_threads()}, median of {cfg.iters}")
    print(f"{'preset':20s} {'size':>9s} {'dtype':>5s} {'params':>12s} {'GMACs/img':>9s} {'infer ms/img':>12s} "
          f"{'fwd+bwd ms':>10s} {'train ms/step':>13s} {'page faults/step':>16s}")
    for name in presets:
        for amp in modes:
            h, w = bins.PRESET_SIZES[name]
            p, macs, inf, fb, tr, faults = benchmark(name, (h, w), device, cfg.batch_size, amp, cfg.channels_last,
                                                     cfg.iters, cfg.fused_adam, cfg.small_map_convs)
            print(f"{name:20s} {w:>4d}x{h:<4d} {'bf16' if amp else 'fp32':>5s} {p:>12,d} {macs / 1e9:>9.2f} "
                  f"{inf:>12.1f} {fb:>10.1f} {tr:>13.1f} {faults:>16,.0f}", flush=True)


# ---- Memory of one training step ----
def resident_mb(field="VmHWM"):
    """Resident MB: VmRSS now, or VmHWM, the peak since reset_peak_rss(); None off Linux."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    return next(int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith(field + ":"))


def reset_peak_rss():
    """Start the peak over from the current resident memory (Linux)."""
    Path("/proc/self/clear_refs").write_text("5")


def train_step_memory(preset, world, batch_size):
    """(resident MB before, peak MB during) the first CPU training step of a 06_train.py preset on a
    batch of the world's frames (later steps reuse freed memory)."""
    train = importlib.import_module("06_train")
    training_data = importlib.import_module("helpers.training_data")
    cfg = train.preset_config(preset)
    cfg = train.TrainConfig(**{**vars(cfg), "batch_size": batch_size, "model": {**cfg.model, "pretrained": None}})
    lines = data.read_split(kitti_files.get_split_file("synthetic", "train", data_path=str(world)))[:batch_size]
    dataset = data.KittiRaw(str(world), lines, cfg.height, cfg.width, frame_ids=train.frame_ids(cfg), is_train=True)
    batch = training_data.to_device(data.collate([dataset[i] for i in range(len(lines))]), torch.device("cpu"),
                                    cfg.channels_last)
    torch.manual_seed(0)
    depth_net, pose_net = train.build_networks(cfg, torch.device("cpu"), load_pretrained=False)
    optimizer = train.make_optimizer(cfg, depth_net, pose_net)
    loss_cfg = train.loss_config(cfg)
    ssim = posenet_loss.make_ssim(loss_cfg)
    before = resident_mb("VmRSS")
    reset_peak_rss()
    train.train_step(depth_net, pose_net, batch, optimizer, loss_cfg, ssim)
    return before, resident_mb()


def run_memory(cfg):
    if resident_mb() is None:
        raise ValueError("--train_memory reads /proc/self/status: Linux only")
    world = Path(cfg.train_memory)
    if not (world / data.SYNTH_MARKER).is_file():
        raise data.DataError(f"--train_memory {world}: not a synthetic world (make one with helpers/synthetic_world.py)")
    names = [cfg.preset] if cfg.preset else ["kitti-r18-640x192", "kitti-r50-640x192-ms", "kitti-r50-1024x320-ms"]
    print(f"one training step on CPU, batch {cfg.batch_size}, threads {torch.get_num_threads()} (resident MB; "
          f"an upper bound on a GPU's activations: CPU kernels keep extra temporaries)")
    print(f"{'preset':22s} {'before step':>11s} {'peak in step':>12s} {'step adds':>10s}")
    for name in names:
        before, peak = train_step_memory(name, world, cfg.batch_size)
        print(f"{name:22s} {before:>11,.0f} {peak:>12,.0f} {peak - before:>10,.0f}", flush=True)


# ---- The data loader ----
class DecodeOnly(torch.utils.data.Dataset):
    """Only the decode + resize of a data.KittiRaw training sample: the same frames, uint8."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        return torch.from_numpy(self.dataset.decode_frames(*self.dataset.lines[index]))


def loader_benchmark(data_path, lines, height, width, samples=400, img_ext=".jpg", workers=(0, 1, 2),
                     batch_size=8, repeats=3):
    """{n workers: (bound, rate)}: samples/s of DecodeOnly and of data.KittiRaw training samples, best
    of `repeats` passes taking turns (shared machines are noisy)."""
    dataset = data.KittiRaw(data_path, lines, height, width, frame_ids=(0, -1, 1), is_train=True, img_ext=img_ext)
    count = min(samples, len(dataset))
    if count <= batch_size:
        raise ValueError(f"the loader benchmark needs more samples than one batch ({batch_size}): "
                         f"--samples {samples}, {len(dataset)} split lines")
    order = list(range(count))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # like a DataLoader worker (collating with OpenMP threads on busy cores stalls)

    def samples_per_s(data, n, collate_fn):
        loader = iter(torch.utils.data.DataLoader(torch.utils.data.Subset(data, order), batch_size=batch_size,
                                                  num_workers=n, collate_fn=collate_fn))
        next(loader)  # steady state: worker start-up (paid once per training run) is not timed
        start = time.perf_counter()
        for _ in loader:
            pass
        return (count - batch_size) / (time.perf_counter() - start)

    results = {}
    try:
        for n in workers:
            passes = [(samples_per_s(DecodeOnly(dataset), n, None), samples_per_s(dataset, n, data.collate))
                      for _ in range(repeats)]
            results[n] = (max(p[0] for p in passes), max(p[1] for p in passes))
    finally:
        torch.set_num_threads(threads)
    return results


# ---- A training step, part by part (python 06_train.py --profile N) ----
class PartClock:
    """Where a training step's time goes, by part, for --profile. Forward: module hooks on the nets and
    SSIM. Backward runs in reverse order of creation (loss, pose net, depth net): a gradient hook on
    each net's output marks its start. On CUDA every mark synchronises."""

    NETS = ("depth net", "pose net")

    def __init__(self, depth_net, pose_net, ssim, device):
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.handles, self.started = [], {}
        for part, net in zip(self.NETS, (depth_net, pose_net)):
            self.watch(part, net)
        if ssim is not None:
            self.watch("ssim", ssim)
        self.reset()

    def now(self):
        self.sync()
        return time.perf_counter()

    def reset(self):
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
        self.grad_marks.setdefault(part, self.now())

    def begin_step(self):
        self.step_forward, self.grad_marks, self.phase_end = defaultdict(float), {}, {}

    @contextmanager
    def phases(self, optimizer):
        """Mark the ends of forward (the loss returned), backward and optimizer (its step hooks)."""
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
    """--profile N of 06_train.py: N timed steps after `warmup`; prints the throughput and the
    PartClock table. prepare(batch) -> the batch on the device; step(batch): 06's train_step."""
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


# ---- Command line ----
@dataclass
class BenchConfig:
    """What `python -m helpers.benchmark` does."""
    preset: str = ""  # one preset of 04_bins.py (default: all three)
    device: str = "auto"  # "auto", "cpu" or "cuda"
    amp: bool = False  # also time bf16 autocast next to fp32 (GPU, CPU with native bf16; else ignored)
    channels_last: bool = True  # channels_last memory format (06_train.py's default)
    fused_adam: bool = True  # the train step's Adam fused where available (as 06_train.py)
    small_map_convs: bool = True  # matmul weight gradient of big 3x3 convs on small maps (CPU, as 06)
    tune_memory: bool = True  # huge pages and malloc reuse for CPU tensors (as 06_train.py)
    batch_size: int = 2  # depth-network batch size
    iters: int = 3  # timed iterations after one warm-up (the median is reported)
    loader: str = ""  # a KITTI or synthetic data folder: time the loader instead of the network
    train_memory: str = ""  # a synthetic world: peak memory of one CPU training step per KITTI preset instead
    height: int = 64  # loader: input height, the default run's (KITTI presets: 192)
    width: int = 208  # loader: input width (KITTI presets: 640); frames are resized to it
    samples: int = 400  # loader: samples per run (the first batch is not timed)
    split: str = "train"  # loader: which split list it reads (synthetic or eigen_zhou)
    split_dir: str = ""  # loader: folder of the standard split lists ("" = the download cache)
    img_ext: str = ".jpg"  # loader: image extension of the data (KITTI: .jpg or .png)


def run_loader_bench(cfg):
    root = Path(cfg.loader)
    if not root.is_dir():
        raise data.DataError(f"data folder not found: {root}")
    name = "synthetic" if (root / data.SYNTH_MARKER).is_file() else "eigen_zhou"
    lines = data.read_split(kitti_files.get_split_file(name, cfg.split, cfg.split_dir or None, data_path=root))
    results = loader_benchmark(root, lines, cfg.height, cfg.width, cfg.samples, cfg.img_ext)
    print(f"loader at {cfg.width}x{cfg.height}, {min(cfg.samples, len(lines))} samples of frames 0, -1, +1 "
          f"(samples/s)")
    for n, (bound, rate) in results.items():
        print(f"{n} worker(s): decode + resize bound {bound:.1f}, KittiRaw training samples {rate:.1f} "
              f"({100 * rate / bound:.0f}% of the bound)")


def main(argv=None):
    """Command line generated from BenchConfig; returns the exit status (2 = bad input, one line)."""
    parser = argparse.ArgumentParser(description="Speed of the depth network (per preset) or of the loader.")
    add_dataclass_flags(parser, BenchConfig)
    cfg = BenchConfig(**vars(parser.parse_args(argv)))
    if cfg.tune_memory:
        tune_cpu_memory()  # before the first big tensor, or PyTorch ignores it
    try:
        if cfg.loader:
            run_loader_bench(cfg)
        elif cfg.train_memory:
            run_memory(cfg)
        else:
            device = choose_device(cfg.device)
            if cfg.preset and cfg.preset not in bins.PRESETS:
                raise ValueError(f"unknown preset {cfg.preset!r}; choose one of {sorted(bins.PRESETS)}")
            run_bench(cfg, device)
    except (data.DataError, ValueError, OSError) as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
