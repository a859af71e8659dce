"""cpu_threads - how many CPU threads a run uses: the cores free when it starts, and one line (or one
step down, once, for an auto run of one process) when the machine gets busy later.

Not a reading step. Why and how (the rule, the mid-run step down, the threads_used record and how to
replay a run exactly): docs/benchmarks.md, "Threads on a busy machine".
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
    """Intra-op threads per process: max(1, min(ceiling, (cores - busy) // processes)), a core counting
    as busy from BUSY_SHARE of it on; busy None (unknown): the ceiling."""
    if cores < 1 or ceiling < 1 or processes < 1:
        raise ValueError(f"choose_threads: cores {cores}, ceiling {ceiling} and processes {processes} "
                         f"must be at least 1")
    if busy is None:
        return ceiling
    taken = math.floor(max(busy, 0.0) + 1.0 - BUSY_SHARE)   # round, with BUSY_SHARE as the halfway mark
    return max(1, min(ceiling, (cores - taken) // processes))


def usable_cores():
    """The cores this process may run on (its affinity mask)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                       # macOS, Windows: no affinity masks
        return os.cpu_count() or 1


def cpu_jiffies(text, cpus, nice_is_busy=True):
    """(busy, total) clock ticks of the given cores from the text of /proc/stat: busy = total - idle -
    iowait (stolen time is busy), less `nice` when not nice_is_busy (niced work yields to ours)."""
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
    tell): /proc/stat less our own CPU time; without it, the 1-minute load average less `ours`."""
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
    """(threads, why): the auto count for this process now, set nowhere."""
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
    """update(img/s of a log interval, its seconds) -> (earlier, now) the first time `patience` intervals
    in a row run under `factor` x the median of the first `baseline` ones; None otherwise. Intervals
    under `min_seconds` are skipped (mostly timer noise)."""

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
    """threads_used after a run (re)starts or changes its count at `step`: "2", "2; 1 from step 350"."""
    if not before:
        return str(threads)
    last = before.rsplit("; ", 1)[-1].split(" ")[0]
    return before if last == str(threads) else f"{before}; {threads} from step {step}"


@dataclass
class RunThreads:
    """The threads of one training run (use_threads makes it): the count, why, and its record."""
    threads: int
    why: str                     # "--threads 2" or "auto: 1.0 of 2 cores busy with other work"
    auto: bool                   # --threads 0: the count may go down once
    processes: int               # an automatic change needs just one (torchrun ranks would have to agree)
    run_dir: str                 # named in the advice line
    used: str                    # threads_used so far, stored in the checkpoint's config
    watch: BusyWatch = None      # None: nothing watched (a GPU run)

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
    """Set PyTorch's intra-op threads: `requested` > 0 exactly, 0 = auto (never above PyTorch's default).
    Prints the start line when `say`; returns the RunThreads (resumed: the checkpoint whose record it
    extends). A negative count is a ValueError naming it."""
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
