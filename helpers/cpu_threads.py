"""cpu_threads - how many CPU threads a run uses: the cores free when it starts, and one line (or one
step down) when the machine gets busy later.

Not a reading step: nothing in it is SQLDepth. PyTorch runs each op on all the cores by default
(OpenMP). When another process holds one of them, every parallel op waits at its end for the thread
that shares a core: on a 2-core machine one busy process made the default training step three times
slower than on an idle machine and half as fast as one thread (docs/benchmarks.md, "Threads on a busy
machine"). So the thread count follows the cores that are free:
  choose_threads     the rule, a pure function: max(1, min(ceiling, (cores - busy) // processes))
  busy_cores         how many cores other work keeps busy, sampled over half a second: /proc/stat
                     over the cores this process may run on (os.sched_getaffinity) minus our own CPU
                     time (niced work yields to us: free); os.getloadavg where there is no /proc/stat
                     (macOS); None where neither is
  use_threads        --threads N: exactly N, as before. --threads 0 (auto): choose_threads, never
                     above PyTorch's own default (which honours OMP_NUM_THREADS, and so torchrun's one
                     thread per process); returns the RunThreads of a training run
  auto_threads       the auto count alone, set nowhere (the test suite's setting, conftest.py)
  BusyWatch          a log interval's img/s far below the run's own earlier rate -> once
  RunThreads         one training run: its start line, the watch, the one automatic step down, and
                     the record "threads_used" stored beside the config in ckpt.pt

Mid-run. A changed thread count splits PyTorch's sums differently, so the floats of every later step
differ (not the method, not the expected result: the rounding). A run given `--threads N` is the
reproducible kind (the studies and the README's seed band use it): its count never changes, and when
it slows down it says so in one line with what to do. An auto run was never reproducible to the bit:
its count depends on how busy the machine was at its start. So an auto run of one process (under
torchrun the ranks would have to agree: they only warn) that slows to under half its own earlier rate
for two log intervals measures the cores again and, if others' work now holds some of them, drops to
the free count, once, and records it: threads_used "2; 1 from step 350" in the checkpoint's config
(the line it prints says the same). Resuming is exact, so `--threads 2 --max_steps 350`, then
`--resume RUN --threads 1 --max_steps 0` replays such a run to the bit. It never raises the count
again (a busy spell that ends would make it flip back and forth); `--resume RUN` chooses afresh.
Not handled: a container's CPU quota (cgroups) that leaves the count of cores unchanged (PyTorch's
default oversubscribes it, as before).
Tests: tests/test_06_train.py (-k thread).
"""
import math
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

SAMPLE_S = 0.5   # how long busy_cores watches the cores: long enough for 100 Hz CPU counters, short at start
BUSY_SHARE = 0.5  # a core counts as busy when other work uses at least this share of it


def choose_threads(cores, busy, ceiling, processes=1):
    """Intra-op threads per process: the cores that other work leaves free, shared by this run's
    `processes` on this machine, at least 1 and at most `ceiling` (PyTorch's own default). busy: the
    cores other work keeps busy (a float from busy_cores; a core counts from BUSY_SHARE of it on);
    None (unknown): the ceiling, which is what a run did before this choice existed."""
    if cores < 1 or ceiling < 1 or processes < 1:
        raise ValueError(f"choose_threads: cores {cores}, ceiling {ceiling} and processes {processes} "
                         f"must be at least 1")
    if busy is None:
        return ceiling
    taken = math.floor(max(busy, 0.0) + 1.0 - BUSY_SHARE)   # round, with BUSY_SHARE as the halfway mark
    return max(1, min(ceiling, (cores - taken) // processes))


def usable_cores():
    """The cores this process may run on (its affinity mask: taskset, a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                       # macOS, Windows: no affinity masks
        return os.cpu_count() or 1


def cpu_jiffies(text, cpus, nice_is_busy=True):
    """(busy, total) CPU time of the given cores from the text of /proc/stat, in its clock ticks:
    total = user nice system idle iowait irq softirq steal, busy = total - idle - iowait (stolen
    time is busy: a hypervisor gave the core to someone else), and without `nice` when not
    nice_is_busy (work at a lower priority than ours yields its core to our threads)."""
    busy = total = 0
    for line in text.splitlines():
        name, *values = line.split()
        if name[:3] == "cpu" and name[3:].isdigit() and int(name[3:]) in cpus:
            ticks = [int(v) for v in values[:8]]
            total += sum(ticks)
            busy += sum(ticks) - ticks[3] - ticks[4] - (0 if nice_is_busy else ticks[1])
    return busy, total


def busy_cores(seconds=SAMPLE_S, ours=0):
    """Cores kept busy by other work over the next `seconds` (float; None when this system cannot
    tell): the busy share of our cores from /proc/stat times their count, minus this process's own
    CPU time (its threads may still spin). Niced work counts only when we are niced too (else it
    yields to us). Without /proc/stat: the 1-minute load average less `ours` (the threads this
    process ran with lately, part of that average)."""
    try:
        cpus, niced = os.sched_getaffinity(0), os.nice(0) > 0
        before = Path("/proc/stat").read_text()
    except (AttributeError, OSError):
        try:
            return max(0.0, os.getloadavg()[0] - ours)   # lags by a minute, but says whether others run
        except (AttributeError, OSError):
            return None
    own, wall = time.process_time(), time.perf_counter()
    time.sleep(seconds)
    busy, total = (a - b for a, b in zip(cpu_jiffies(Path("/proc/stat").read_text(), cpus, niced),
                                         cpu_jiffies(before, cpus, niced)))
    own, wall = time.process_time() - own, time.perf_counter() - wall
    if total <= 0:
        return None
    return max(0.0, busy / total * len(cpus) - own / max(wall, 1e-9))


def auto_threads(processes=1):
    """(threads, why): the auto count for this process now, set nowhere. Measures only when there is
    something to lower (PyTorch's default above 1)."""
    ceiling, cores = torch.get_num_threads(), usable_cores()
    env = os.environ.get("OMP_NUM_THREADS")
    if ceiling <= 1:
        return 1, f"auto: {'OMP_NUM_THREADS=' + env if env else 'PyTorch uses 1 here'}"
    busy = busy_cores()
    if busy is None:
        return ceiling, "auto: PyTorch's default, this system does not say how busy its cores are"
    threads = choose_threads(cores, busy, ceiling, processes)
    shared = f", {processes} processes" if processes > 1 else ""
    return threads, f"auto: {busy:.1f} of {cores} cores busy with other work{shared}"


class BusyWatch:
    """Has the step rate fallen far below the run's own earlier rate? update(img/s of a log interval,
    its seconds) -> (earlier, now) the first time `patience` intervals in a row run under `factor` x
    the median of the first `baseline` intervals (the median shrugs off a slow first interval, the
    warm-up); None otherwise, and always None after that. Intervals shorter than
    `min_seconds` are skipped: their rate is mostly timer noise (tests log every step)."""

    def __init__(self, baseline=4, factor=0.5, patience=2, min_seconds=2.0):
        self.baseline, self.factor, self.patience, self.min_seconds = baseline, factor, patience, min_seconds
        self.rates, self.low, self.fired = [], [], False

    def update(self, rate, seconds):
        if self.fired or seconds < self.min_seconds or not math.isfinite(rate):
            return None
        if len(self.rates) < self.baseline:
            self.rates.append(rate)
            return None
        earlier = statistics.median(self.rates)
        self.low = self.low + [rate] if rate < self.factor * earlier else []
        if len(self.low) < self.patience:
            return None
        self.fired = True
        return earlier, statistics.median(self.low)


def recorded(before, threads, step):
    """threads_used after a run (re)starts or changes its count at `step`: "2", "2; 1 from step 350",
    ... (before: the record so far, "" for a new run)."""
    if not before:
        return str(threads)
    last = before.rsplit("; ", 1)[-1].split(" ")[0]
    return before if last == str(threads) else f"{before}; {threads} from step {step}"


@dataclass
class RunThreads:
    """The threads of one training run (use_threads makes it): the count, why, and its record."""
    threads: int                 # intra-op threads now
    why: str                     # "--threads 2" or "auto: 1.0 of 2 cores busy with other work"
    auto: bool                   # --threads 0: the count may go down once (module docstring)
    processes: int               # training processes (torchrun); an automatic change needs just one
    run_dir: str                 # named in the advice line
    used: str                    # threads_used so far, stored in the checkpoint's config
    watch: BusyWatch = None      # None: nothing watched (on a GPU the step rate hardly depends on the cores)

    def start_line(self):
        return f"threads: {self.threads} ({self.why})"

    def update(self, step, rate, seconds):
        """The one line when the machine got busy (None otherwise); an auto run lowers its count here."""
        seen = self.watch.update(rate, seconds) if self.watch else None
        if seen is None:
            return None
        head = f"the machine got busy: img/s fell from {seen[0]:.1f} to {seen[1]:.1f}"
        if self.auto and self.threads > 1 and self.processes == 1:
            busy = busy_cores(ours=self.threads)
            lower = choose_threads(usable_cores(), busy, self.threads)
            if lower < self.threads:
                torch.set_num_threads(lower)
                was, self.threads, self.used = self.threads, lower, recorded(self.used, lower, step)
                return (f"{head} ({busy:.1f} cores busy with other work): threads {was} -> {lower} from step "
                        f"{step} on (auto; recorded as threads_used in ckpt.pt's config)")
        if self.threads > 1:
            return (f"{head}; if other work now shares the cores, stop (Ctrl-C saves a checkpoint) and "
                    f"continue with --resume {self.run_dir} --threads 1")
        return f"{head}; the run already uses one thread: it speeds up again when the other work ends"


def use_threads(requested, processes=1, say=True, run_dir="", resumed=None, watch=True):
    """Set PyTorch's intra-op threads for a run: `requested` > 0 exactly (as always), 0 = auto. Prints
    the start line ("threads: 1 (auto: 1.0 of 2 cores busy with other work)") when `say`; returns the
    RunThreads (resumed: the checkpoint continued, whose record the new one extends; watch: watch its
    step rate, a run on the CPU). A negative count is a ValueError naming it."""
    if requested < 0:
        raise ValueError(f"--threads {requested}: give a positive count, or 0 for the cores free at the "
                         f"start")
    if requested:
        threads, why = requested, f"--threads {requested}"
    else:
        threads, why = auto_threads(processes)
    torch.set_num_threads(threads)
    before, step = "", 0
    if resumed is not None:   # an old checkpoint without the record: its fixed count, else unknown
        config, step = resumed["config"], resumed["step"]
        before = config.get("threads_used") or str(config.get("threads") or "unrecorded")
    run = RunThreads(threads, why, auto=not requested, processes=processes, run_dir=run_dir,
                     used=recorded(before, threads, step), watch=BusyWatch() if watch else None)
    if say:
        print(run.start_line(), flush=True)
    return run
