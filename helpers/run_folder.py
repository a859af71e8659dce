"""run_folder - what a training run leaves on disk, and how another process takes it up again.

Not a reading step: nothing in it is SQLDepth. 06_train.py writes a run folder (RUN/ckpt.pt, best.pt,
log.csv, val.csv, curves.png) through it, and 04_bins.py / 07_eval.py read checkpoints with its checks:
  save_checkpoint   atomic (a temporary file, then a rename): a crash, a kill or a full disk while
                    writing leaves the previous file as it was; a failed write is one SaveError line
  load_checkpoint   a checkpoint of 06_train.py, refused in one line when it is unreadable, not ours,
                    or holds NaN/Inf weights (a diverged run's, or a corrupted file)
  keep_epoch_weights  RUN/epoch_NNN.pt at an epoch's end (--keep_epochs): the weights and config only,
                    for 07_eval.py to score every epoch offline, as the official trainer's weights_N
  lock_run_folder   one training per run folder: a second one is refused; the lock is the operating
                    system's, so a crashed run never leaves it stuck
  rng_state         the torch and CUDA RNG states a run draws from (exact resume)
  append_csv, read_csv, truncate_csv, save_plots   the logs and the curves figure
Tests: tests/test_06_train.py and tests/test_faults.py.
"""
import csv
import errno
import os
import subprocess
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from helpers.cli import one_line  # errors as one line (helpers/cli.py)

try:
    import fcntl            # POSIX file locks; on Windows the run folder is not locked
except ImportError:
    fcntl = None


# ---- Checkpoints ----
class SaveError(Exception):
    """A checkpoint could not be written (a full disk, a read-only folder); the previous file is intact."""


class NonFinite(Exception):
    """A NaN/Inf weight found when about to save."""


@contextmanager
def atomic_path(path):
    """The one atomic write of the project: a temporary name beside `path` that no other writer uses,
    to write to inside the block; renamed over `path` when the block ends, removed if it raised. A
    reader sees the previous file or the complete new one, never part of one, also when several
    processes write the same file at once (torchrun ranks, two runs sharing a download cache)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.part")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:                          # a read-only folder: nothing was created there
            pass


def save_checkpoint(state, path):
    """torch.save to a temporary file in the same folder, then os.replace: a crash or kill while
    writing leaves the previous file as it was (rename is atomic on POSIX and Windows). A failed
    write (torch.save reports a full disk as a RuntimeError) is a SaveError naming the file."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
    except (OSError, RuntimeError) as err:
        previous = f"the previous {path.name} is intact" if path.exists() else f"no {path.name} was written"
        raise SaveError(f"could not write {path} ({one_line(err)}); {previous}") from None


CHECKPOINT_KEYS = {"model", "pose", "optimizer", "scheduler", "step", "epoch", "best_val", "steps_per_epoch",
                   "config", "rng"}


def load_checkpoint(path):
    """A checkpoint dict of 06_train.py; one-line ValueError / FileNotFoundError when it is missing,
    unreadable, not ours, or holds a NaN/Inf weight (named)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:                     # zip / pickle errors of every kind
        raise ValueError(f"{path} is not a readable checkpoint ({one_line(err)})") from None
    if not isinstance(ckpt, dict) or not CHECKPOINT_KEYS <= set(ckpt):
        raise ValueError(f"{path} is not a checkpoint of 06_train.py")
    for part, name in (("model", "depth network"), ("pose", "pose network")):
        require_finite(ckpt[part], f"{path} ({name})")
    return ckpt


EPOCH_KEYS = ("model", "pose", "config", "step", "epoch")


def keep_epoch_weights(state, run_dir):
    """RUN/epoch_NNN.pt (NNN = epochs done) from a checkpoint state taken at an epoch's end: the
    networks, config and counters without the optimiser (a third of ckpt.pt with Adam's two moments).
    Returns its path, or None when the state is not at an epoch's end (a --save_every save)."""
    epoch = state["epoch"]
    if epoch == 0 or state["step"] != epoch * state["steps_per_epoch"]:
        return None
    path = Path(run_dir) / f"epoch_{epoch:03d}.pt"
    save_checkpoint({k: state[k] for k in EPOCH_KEYS}, path)
    return path


def require_finite(state_dict, what):
    """ValueError naming the first floating-point tensor of a state dict that holds a NaN/Inf."""
    floats = [(k, v) for k, v in state_dict.items() if torch.is_tensor(v) and v.is_floating_point()]
    bad = first_nonfinite(floats) if floats else None
    if bad:
        raise ValueError(f"{what} holds non-finite weights (first: {bad}): it comes from a run that "
                         f"diverged, or the file is damaged; use an earlier checkpoint")


def first_nonfinite(named_tensors):
    """The name of the first tensor holding a NaN/Inf, or None: one stacked check on the device and
    one host read, not one per tensor (hundreds of waits for the GPU before every save)."""
    finite = torch.stack([torch.isfinite(t).all() for _, t in named_tensors])   # [P] bools
    if bool(finite.all()):
        return None
    return named_tensors[int((~finite).int().argmax())][0]


# ---- One training per run folder ----
class RunFolderBusy(Exception):
    """Another training holds the run folder's lock."""


def lock_run_folder(run_dir):
    """Create RUN (if needed) and hold an exclusive lock on RUN/.lock for the life of this process:
    a second training on the same folder gets RunFolderBusy (naming the holder's pid) instead of
    overwriting its checkpoints. The operating system drops the lock when the holder exits, however
    it exits, so a crashed run never leaves a stale lock; forked children (DataLoader workers) do
    not inherit it. Returns the open lock file (keep it open; closing it releases the lock).
    A folder that cannot be written raises PermissionError / OSError before anything is trained."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / ".lock", "a+")
    if fcntl is None:
        return handle
    try:   # a POSIX record lock: owned by this process, not by the DataLoader workers it forks
        fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno not in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
            raise
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise RunFolderBusy(f"{run_dir} is in use by another training (pid {holder}): wait for it, "
                            f"or choose another --run_dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


# ---- RNG states (exact resume) ----
def rng_state():
    """The states of the generators a run draws from: torch's (dropout, the auto-mask's noise, the
    DataLoader workers' seeds) and CUDA's. The sample order and the augmentation draw from their own
    seeded generators (01_data, the sampler), nothing from numpy's or Python's global ones; the
    numpy/python entries of older checkpoints are ignored."""
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state):
    """Inverse of rng_state()."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- Logs and curves ----
def append_csv(path, columns, row):
    """One row into a CSV (header when new). Floats keep full precision (resume comparisons)."""
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(columns)
        writer.writerow([repr(row[c]) if isinstance(row[c], float) else row[c] for c in columns])


def read_csv(path, columns=None):
    """{column: np.array of floats} of a CSV log (only `columns` when given); {} when missing or empty."""
    path = Path(path)
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    names = [c for c in (columns or (rows[0] if rows else [])) if rows and c in rows[0]]
    return {k: np.array([float(r[k]) for r in rows]) for k in names}


def truncate_csv(path, step):
    """Drop the rows written after `step` (a resumed run rewrites them) and a row that a full disk cut
    short (fewer fields than the header). Written to a temporary file, then renamed: a full disk
    here leaves the log as it was, not emptied."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    keep = rows[:1] + [r for r in rows[1:] if len(r) == len(rows[0]) and int(r[0]) <= step]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        csv.writer(f).writerows(keep)


def format_time(seconds):
    seconds = int(max(seconds, 0))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def save_plots(run_dir, model):
    """RUN/curves.png: training loss terms, validation loss, learning rate, throughput, the
    self-query diagnostics of each validation and the health numbers (model: the run's
    DepthNetConfig as a dict)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log, val = read_csv(run_dir / "log.csv"), read_csv(run_dir / "val.csv")
    if not log:
        return None
    fig, axes = plt.subplots(2, 3, figsize=(15, 7))
    axes[0, 0].plot(log["step"], log["loss"], label="total")
    axes[0, 0].plot(log["step"], log["photometric"], label="photometric", alpha=0.7)
    axes[0, 0].set_title("training loss")
    if val:
        axes[0, 0].plot(val["step"], val["val_loss"], "o-", label="validation")
    axes[0, 0].legend()
    axes[0, 1].plot(log["step"], log["smoothness"])
    axes[0, 1].set_title("smoothness term (unweighted)")
    axes[1, 0].semilogy(log["step"], log["lr"])
    axes[1, 0].set_title("learning rate")
    axes[1, 1].plot(log["step"], log["img_per_s"])
    axes[1, 1].set_title("throughput (img/s, all processes)")
    if val and "query_similarity" in val:  # older runs lack these columns
        axes[0, 2].plot(val["step"], val["query_similarity"], "o-", label="query cosine similarity")
        axes[0, 2].plot(val["step"], val["effective_rank"] / model["num_queries"], "s-",
                        label="cost-volume effective rank / Q")
        axes[0, 2].plot(val["step"], val["bins_99"] / model["num_bins"], "^-", label="bins holding 99% / D")
        axes[0, 2].set_ylim(0, 1.05)
        axes[0, 2].legend(fontsize=8)
    axes[0, 2].set_title("self-query layer (1st val batch)")
    if "depth_spread" in log:  # is self-supervision healthy? (older runs lack these columns)
        axes[1, 2].plot(log["step"], log["depth_spread"], label="depth spread (std / mean)")
        axes[1, 2].plot(log["step"], log["automask_kept"], label="auto-mask kept")
        if "motion_ratio" in val:
            axes[1, 2].plot(val["step"], val["motion_ratio"], "o-", label="motion / true motion (val)")
        axes[1, 2].axhline(1.0, color="grey", lw=0.5)
        axes[1, 2].legend(fontsize=8)
    axes[1, 2].set_title("training health")
    for ax in axes.flat:
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(run_dir / "curves.png", dpi=90)
    plt.close(fig)
    return run_dir / "curves.png"


def code_commit():
    """Short commit of this repository ("-dirty" added when tracked files differ from it), else "unknown"."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                              timeout=30)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--"], cwd=Path(__file__).resolve().parents[1], capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):   # no git on this machine
        return "unknown"
    return head.stdout.strip() + ("-dirty" if dirty.returncode == 1 else "")
