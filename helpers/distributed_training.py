"""distributed_training - what several processes and a restartable loop need: torchrun, the sampler, signals.

Not a reading step: nothing in it is SQLDepth. 06_train.py uses it: torchrun's environment -> this
process's rank, device and process group (nccl on CUDA, gloo on CPU; `choose_device`, the one device
choice); rank 0 first for shared jobs; `EpochBatches`, the batch order as a pure function of (seed,
epoch), sharded over ranks and restartable mid-epoch; SIGINT / SIGTERM or a dead DataLoader worker as a
request to stop after saving; `step_outcome`, the one host read per step, agreed over all ranks.
Tests: tests/test_06_train.py (sampler, DDP with two gloo processes, signals, the NaN guard),
tests/test_faults.py (a killed DataLoader worker, a failing validation, a signal during a save).
"""
import gc
import math
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from helpers.cli import one_line  # errors as one line

# 06_train.py's exit code when a DataLoader worker died (its docstring lists them all).
EXIT_WORKER_DIED = 5
# StopRequest.signum of a dead worker: not a signal number, and above them all, so that step_outcome's
# max over the processes stops every process for the worker's reason.
WORKER_DIED = 256


# ---- Processes and devices ----
@dataclass
class Dist:
    rank: int = 0        # this process's rank (torchrun's RANK)
    world: int = 1       # number of processes (WORLD_SIZE)
    local_rank: int = 0  # GPU index on this machine (LOCAL_RANK)

    @property
    def main(self):
        return self.rank == 0


class PeerFailed(Exception):
    """Rank 0 failed at a step the other ranks wait for; rank 0 prints the one error line."""


def main_rank_first(info, work):
    """work() on rank 0 first, then on the other ranks: downloads into a shared cache (split lists,
    ImageNet weights) and the synthetic world are made once, and the others find them complete.

    The other ranks wait in a broadcast from rank 0 instead of a bare barrier: it says whether
    rank 0 succeeded, so a failure there (offline, a leaking split) stops every rank at once
    instead of leaving them at a barrier that rank 0 never reaches.
    """
    if info.world == 1:
        return work()
    result, error = None, None
    if info.main:
        try:
            result = work()
        except Exception as err:                 # re-raised below, after telling the others
            error = err
    box = [error is not None]
    dist.broadcast_object_list(box, src=0)
    if box[0]:
        if info.main:
            raise error
        raise PeerFailed()
    return result if info.main else work()


def setup_process(cfg):
    """(Dist, device): reads torchrun's environment, picks the device once (cuda:LOCAL_RANK under
    torchrun) and joins the process group (nccl on CUDA, gloo on CPU)."""
    info = Dist(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                int(os.environ.get("LOCAL_RANK", 0)))
    device = choose_device(cfg.device, info)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True    # fixed input sizes: autotune each conv once
    if info.world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return info, device


def wait_for_all(info):
    """Under torchrun, on a normal end: every rank waits here for the others (rank 0 may still be
    plotting or evaluating), so that the ranks tear the process group down together."""
    if info.world > 1 and dist.is_initialized():
        dist.barrier()


def leave_process_group():
    """Destroy the process group now, after the caller dropped its DDP wrappers: gc.collect() frees a
    reference cycle that still holds one, so gloo's threads stop while the interpreter is whole, not
    during its shutdown. A rank of a finished 2-process CPU run once aborted at exit ('terminate called
    without an active exception'), failing the run."""
    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def choose_device(spec, info=Dist()):
    """torch.device of --device auto | cpu | cuda | cuda:N, for every script (07, predict, compare_runs
    with one process); a ValueError naming the value when that device does not exist (also when
    torchrun starts more processes than the machine has GPUs)."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {spec!r}: choose auto, cpu, cuda or cuda:N")
    if device.type == "cpu":
        return device
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ValueError(f"--device {spec}: no CUDA device is available")
    if info.world > 1:
        if device.index is not None:
            raise ValueError(f"--device {spec}: under torchrun each process uses cuda:LOCAL_RANK; "
                             f"pass --device cuda (or auto)")
        if info.local_rank >= count:
            raise ValueError(f"torchrun process LOCAL_RANK={info.local_rank} has no GPU: this machine "
                             f"has {count}; use --nproc_per_node {count} or fewer")
        return torch.device("cuda", info.local_rank)
    index = device.index or 0
    if index >= count:
        raise ValueError(f"--device {spec}: this machine has {count} CUDA device(s), cuda:0 to "
                         f"cuda:{count - 1}")
    return torch.device("cuda", index)


# ---- The batch sampler ----
class EpochBatches:
    """Batch sampler whose order is a pure function of (seed, epoch): rank r takes every world-th
    index of one permutation (a DistributedSampler without padding), `drop_last`; set_epoch(epoch,
    skip) restarts the epoch after `skip` batches (resume). Yields [(epoch, index), ...] so that
    the dataset copies in (persistent) workers know the epoch of each sample (01_data.KittiRaw
    accepts such keys)."""

    def __init__(self, num_samples, batch_size, seed, rank=0, world=1):
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.rank, self.world = rank, world
        self.batches_per_epoch = num_samples // (batch_size * world)
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch, skip=0):
        self.epoch, self.skip = epoch, skip

    def order(self, epoch):
        """The epoch's permutation of all indices (identical on every rank)."""
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0]))
        return torch.randperm(self.num_samples, generator=g).tolist()

    def __len__(self):
        return self.batches_per_epoch - self.skip

    def __iter__(self):
        used = self.batches_per_epoch * self.batch_size * self.world
        mine = self.order(self.epoch)[self.rank:used:self.world]       # this rank's shard
        for b in range(self.skip, self.batches_per_epoch):
            yield [(self.epoch, i) for i in mine[b * self.batch_size:(b + 1) * self.batch_size]]


# ---- Signals and dead workers: finish the step, save, exit ----
def is_worker_failure(err):
    """Is err PyTorch's report of a DataLoader worker that died (killed by a signal, or exited)?"""
    return isinstance(err, RuntimeError) and str(err).startswith("DataLoader worker (pid")


class StopRequest:
    """SIGINT/SIGTERM set `signum`: the loop finishes the step, saves and exits. Copies of the same
    signal within a second are ignored (`timeout`, torchrun and the terminal's process group each
    deliver one); a later SIGINT raises KeyboardInterrupt at once (an impatient second Ctrl-C).

    A DataLoader worker that dies (kill -9, as the kernel's out-of-memory killer does) sets `signum`
    to WORKER_DIED (when watch_workers) and `worker_error` to PyTorch's line. PyTorch learns of it from
    SIGCHLD, and its handler raises at whatever line the main thread is on: inside the optimizer
    step (half the parameters updated) or torch.save. While installed, that check runs deferred: it
    only records the death, and the loop stops at the end of the step, with a model it can save. The
    loader itself raises at the next batch (it checks its workers every 5 s): worker_died(err)."""

    def __init__(self, watch_workers=True):
        self.signum, self.when, self.worker_error = 0, 0.0, ""
        self.watch_workers = watch_workers

    def handle(self, signum, frame):
        now = time.monotonic()
        if not self.signum:
            self.signum, self.when = signum, now
        elif signum == signal.SIGINT and now - self.when > 1.0:
            raise KeyboardInterrupt

    def worker_died(self, err):
        """True (and the death recorded) when err says that a DataLoader worker died."""
        if not is_worker_failure(err):
            return False
        self.worker_error = self.worker_error or one_line(err)
        if self.watch_workers and not self.signum:   # a signal first: Ctrl-C also reached the workers
            self.signum = WORKER_DIED
        return True

    def _check_workers(self, check, signum, frame):
        try:
            check(signum, frame)
        except RuntimeError as err:
            if not self.worker_died(err):
                raise

    @contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        old = {s: signal.signal(s, self.handle) for s in (signal.SIGINT, signal.SIGTERM)}
        if hasattr(signal, "SIGCHLD"):               # POSIX: PyTorch watches its workers by SIGCHLD
            from torch.utils.data._utils import signal_handling
            signal_handling._set_SIGCHLD_handler()   # PyTorch's check (once per process), to defer it
            check = signal.getsignal(signal.SIGCHLD)
            if callable(check):
                old[signal.SIGCHLD] = signal.signal(
                    signal.SIGCHLD, lambda signum, frame: self._check_workers(check, signum, frame))
        try:
            yield self
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def report(self, run_dir, step, main):
        """After the checkpoint of `step` was saved: one line (rank 0) and the exit code, 128 + the
        signal, or EXIT_WORKER_DIED."""
        saved = f"saved {run_dir / 'ckpt.pt'} at step {step}"
        if self.signum != WORKER_DIED:
            if main:
                print(f"{signal.Signals(self.signum).name}: {saved}; continue with --resume {run_dir}",
                      flush=True)
            return 128 + self.signum
        if main:
            what = (self.worker_error or "a DataLoader worker of another process died").rstrip(".")
            print(f"error: {what}; {saved}; a killed worker is most often the out-of-memory killer's "
                  f"doing: use fewer --num_workers, a smaller --cache_mb or more memory, then continue "
                  f"with --resume {run_dir}", file=sys.stderr, flush=True)
        return EXIT_WORKER_DIED


def save_or_stop(save, validate_too, stop):
    """save(validate_too), keeping the training when the validation fails: the checkpoint is then
    saved without it (as when a signal stops the run at a validation step; the weights are those of
    the step). A DataLoader worker gone during the validation stops the run as a signal does
    (stop.signum); any other error (bad data in the val split, memory) is raised again after that
    save. The save's own errors (a failed write, NaN weights) are raised as they come."""
    from helpers.run_record import NonFinite, SaveError   # the save's own errors
    try:
        save(validate_too)
    except (SaveError, NonFinite, OSError):
        raise
    except Exception as err:
        if not validate_too:
            raise
        save(False)
        if not stop.worker_died(err):
            raise


def run_until_stopped(cmd, cwd):
    """Run a child process to its end, or until SIGINT / SIGTERM reaches this one (then the child is
    terminated). Returns (exit code, signal number or 0); the code is 128 + signal when stopped. A
    DataLoader worker of the finished training dying meanwhile is no reason to stop."""
    stop = StopRequest(watch_workers=False)
    with stop.installed():
        child = subprocess.Popen(cmd, cwd=cwd)
        while child.poll() is None and not stop.signum:
            try:
                child.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                pass
        if stop.signum:
            child.terminate()
            child.wait()
            return 128 + stop.signum, stop.signum
    return child.returncode, 0


# ---- Once per step ----
def step_outcome(terms, loss_terms, signum, info, need_values):
    """({term: float} or None, a non-finite loss term on any process, a signal on any process) after
    a step, with one host read, after the optimizer step. terms: {name: 0-d tensor} as train_step
    returns them; loss_terms: the names whose NaN/Inf stops the run. One process: every term. Under
    torchrun: a (non-finite, signal) pair reduced with max over all processes on the device, so
    everyone stops together; the terms only when logged (need_values) or bad."""
    names = list(terms)
    values = torch.stack([terms[k] for k in names])                   # [T] on the device
    if info.world == 1:
        host = dict(zip(names, values.tolist()))
        return host, not all(math.isfinite(host[k]) for k in loss_terms), signum
    watched = torch.stack([terms[k] for k in loss_terms])
    flags = torch.stack([(~torch.isfinite(watched).all()).long(),     # (2,): a fill, no host copy
                         torch.full((), signum, dtype=torch.int64, device=values.device)])
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    nonfinite, signum = flags.tolist()
    host = dict(zip(names, values.tolist())) if need_values or nonfinite else None
    return host, bool(nonfinite), signum


def unwrap(net):
    """The module inside DistributedDataParallel (or the module itself)."""
    return net.module if isinstance(net, torch.nn.parallel.DistributedDataParallel) else net


def report_checksums(nets, info, device):
    """Under torchrun: gather a checksum of each rank's parameters; rank 0 prints them (they must
    agree, or the gradients were not averaged)."""
    if info.world == 1:
        return
    params = [p.detach().double() for n in nets for p in unwrap(n).parameters()]
    mine = torch.stack([sum(p.sum() for p in params), sum((p * p).sum() for p in params)]).to(device)
    gathered = [torch.zeros_like(mine) for _ in range(info.world)]
    dist.all_gather(gathered, mine)
    if info.main:
        sums = [tuple(float(x) for x in g.cpu()) for g in gathered]
        same = all(s == sums[0] for s in sums)
        print(f"ddp: parameter checksums of {len(sums)} ranks {'agree' if same else 'DIFFER'}: {sums}",
              flush=True)
