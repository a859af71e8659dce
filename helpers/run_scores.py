"""run_scores - one small JSON file of scores per finished run, so that tables outlive the checkpoints.

Not a reading step. A study of many long runs spans several sessions, and run folders (with their
checkpoints) do not survive between them; what helpers/compare_runs.py computes of each run does, as
one file in the repository (docs/scores/ for the studies of docs/ablations.md). From these files
alone compare_runs rebuilds the study's table (`--scores`), grouped into variants exactly as from the
run folders, because each file keeps the run's stored training config.

A file holds: the run's name and checkpoint file, its seed, the evaluation (split, data folder name,
custom split list, frames, post_process, eval_stereo), every per-run column of the comparison, its
error by range of true depth, the commit of the code that scored it and the date, and the training
config. Paths keep no trace of the machine: data folders by their last component, other paths as
given when relative and by their last component when absolute.
Written by `python -m helpers.compare_runs --runs RUN_A RUN_B --save_scores DIR`, read by
`python -m helpers.compare_runs --scores DIR --out OUT`. Tests: tests/test_compare_runs.py.
"""
import glob
import importlib
import json
import math
import subprocess
from datetime import datetime
from pathlib import Path

data = importlib.import_module("01_data")       # DataError: the one kind of bad-input error

FORMAT = 1  # bumped when a field changes meaning; a reader refuses files of another format
ROOT = Path(__file__).resolve().parents[1]       # the repository whose commit scored the runs

# Config fields naming data folders: kept by their last component only (the folder's name, which
# says which world or dataset it was, not where it lay on the machine that trained the run).
DATA_PATH_FIELDS = ("data_path", "split_dir")
# Config fields naming files or runs: relative paths stay as given (they can tell two variants apart,
# e.g. --init_from runs/a/best.pt vs runs/b/best.pt), absolute ones keep their last component.
OTHER_PATH_FIELDS = ("train_files", "val_files", "run_dir", "resume", "init_from", "pose_init")
# The fields of a file's "evaluation" that must agree for two runs to share one table.
EVALUATION_FIELDS = ("split", "data", "split_file", "max_images", "test_frames", "post_process", "eval_stereo")
# The fields a table is rebuilt from.
READ_FIELDS = ("run", "seed", "evaluation", "frames", "metrics", "error_by_range", "config")


def code_commit():
    """Short commit of this repository ("-dirty" added when tracked files differ from it), else "unknown"."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=30)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--"], cwd=ROOT, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):   # no git on this machine
        return "unknown"
    return head.stdout.strip() + ("-dirty" if dirty.returncode == 1 else "")


def portable_config(flat):
    """A flattened training config with its paths made machine-independent (see the field lists above)."""
    out = dict(flat)   # same field order: variant labels name the differing fields in this order
    for key in DATA_PATH_FIELDS:
        if out.get(key):
            out[key] = Path(out[key]).name
    for key in OTHER_PATH_FIELDS:
        if out.get(key) and Path(out[key]).is_absolute():
            out[key] = Path(out[key]).name
    if isinstance(out.get("split_files"), dict):
        out["split_files"] = {k: Path(v).name for k, v in out["split_files"].items()}
    return out


def make_record(run, checkpoint, config, evaluation, frames, metrics, by_range, commit):
    """One run's score file as a dict, in the key order it is written in.

    run: the file's name (the run folder's); checkpoint: the scored file's name; config: the run's
    flattened training config; evaluation: {field of EVALUATION_FIELDS: value}; frames: frames scored;
    metrics: {column: value}; by_range: compare_runs.errors_by_range's rows; commit: code_commit().
    """
    return {"format": FORMAT, "run": run, "checkpoint": checkpoint, "seed": config.get("seed", ""),
            "evaluation": {k: evaluation[k] for k in EVALUATION_FIELDS}, "frames": frames,
            "metrics": dict(metrics), "error_by_range": [dict(r) for r in by_range],
            "scored_with_commit": commit,
            # 06_train.py stores both beside the config (helpers/training_run.provenance); null for runs
            # of older code
            "trained_with_commit": config.get("commit"), "precision": config.get("precision"),
            "scored_at": datetime.now().astimezone().isoformat(timespec="seconds"),
            "config": portable_config(config)}


def make_zero_shot_record(run, checkpoint, config, worlds, row, baseline, commit):
    """One run's zero-shot score file (compare_runs --worlds ... --save_scores DIR): as make_record, but
    the evaluation is the list of worlds (their style names, the training world first) and the metrics
    are the zero-shot columns ("<world> <metric>" and "abs_rel increase"); baseline: the same columns of
    the training world's mean depth map, so that a table rebuilt from these files shows it too."""
    return {"format": FORMAT, "kind": "zero_shot", "run": run, "checkpoint": checkpoint,
            "seed": config.get("seed", ""), "worlds": list(worlds), "metrics": dict(row),
            "baseline": dict(baseline), "scored_with_commit": commit,
            "trained_with_commit": config.get("commit"), "precision": config.get("precision"),
            "scored_at": datetime.now().astimezone().isoformat(timespec="seconds"),
            "config": portable_config(config)}


def file_names(specs, checkpoints):
    """The name of each run's score file: its run folder's name, <folder>_<file stem> for a checkpoint
    file given (several checkpoints of one run, e.g. epoch_*.pt). Refuses two runs of one name before
    any scoring, so that no file of a call overwrites another of the same call."""
    names = [Path(spec).name if Path(spec).is_dir() else f"{path.parent.name}_{path.stem}"
             for spec, path in zip(specs, checkpoints)]
    for spec, name in zip(specs, names):
        if names.count(name) > 1:
            raise data.DataError(f"--save_scores: two runs would write {name}.json ({spec} and another); "
                                 f"score them in separate calls with separate folders")
    return names


def _json_ready(value):
    """Floats as plain numbers, a non-finite one (NaN: a variant without queries) as null."""
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, float) or type(value).__name__.startswith("float"):   # numpy floats too
        return float(value) if math.isfinite(value) else None
    return value


def write_record(record, folder):
    """FOLDER/<run>.json (the folder made if missing); returns its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{record['run']}.json"
    path.write_text(json.dumps(_json_ready(record), indent=1, allow_nan=False) + "\n")
    return path


def score_paths(specs):
    """The score files named by --scores entries (a file, a folder of *.json, or a glob), in the order
    given (a folder's and a glob's files by name), each file once."""
    found = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            matches = sorted(path.glob("*.json"))
        elif path.is_file():
            matches = [path]
        elif glob.has_magic(spec):
            matches = sorted(Path(p) for p in glob.glob(spec))
        else:
            raise data.DataError(f"--scores {spec}: no such score file or folder")
        if not matches:
            raise data.DataError(f"--scores {spec}: holds no score file (*.json)")
        found.extend(matches)
    return list(dict.fromkeys(found))


def _nan_for_null(value):
    """A stored number back as a float (null -> NaN); text (a range's name) as it is."""
    return float("nan") if value is None else value


def _read(path):
    """One score file as a dict; DataError naming the file when it is unreadable or of another format."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise data.DataError(f"--scores {path}: not a readable score file ({err})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise data.DataError(f"--scores {path}: not a score file of format {FORMAT} "
                             f"(written by compare_runs --save_scores)")
    return record


def is_zero_shot(specs):
    """Whether the first score file of --scores is a zero-shot one (then all must be)."""
    return _read(score_paths(specs)[0]).get("kind") == "zero_shot"


def read_zero_shot_records(specs):
    """The zero-shot score files of --scores, checked to share one list of worlds: list of records
    (null numbers back as NaN). DataError naming the file otherwise."""
    records = []
    for path in score_paths(specs):
        record = _read(path)
        if record.get("kind") != "zero_shot":
            raise data.DataError(f"--scores {path}: not a zero-shot score file; give those of one kind")
        if records and record["worlds"] != records[0]["worlds"]:
            raise data.DataError(f"--scores {path}: scored on the worlds {record['worlds']}, the first file "
                                 f"({records[0]['path']}) on {records[0]['worlds']}: one table, one list of worlds")
        for key in ("metrics", "baseline"):
            record[key] = {k: _nan_for_null(v) for k, v in record[key].items()}
        record["path"] = str(path)
        records.append(record)
    return records


def read_records(specs):
    """The score files of --scores, checked to share one evaluation: list of records (dicts as
    written, null numbers back as NaN). Raises DataError naming the file for an unreadable file, one
    of another format, or one scored on another split or with other evaluation settings."""
    records = []
    for path in score_paths(specs):
        record = _read(path)
        if record.get("kind") == "zero_shot":
            raise data.DataError(f"--scores {path}: a zero-shot score file; give those of one kind")
        missing = [k for k in READ_FIELDS if k not in record]
        if missing:
            raise data.DataError(f"--scores {path}: the score file lacks {', '.join(missing)}")
        record["metrics"] = {k: _nan_for_null(v) for k, v in record["metrics"].items()}
        record["error_by_range"] = [{k: _nan_for_null(v) for k, v in r.items()} for r in record["error_by_range"]]
        if records:
            first, here = records[0]["evaluation"], record["evaluation"]
            differ = [k for k in EVALUATION_FIELDS if first.get(k) != here.get(k)]
            if differ:
                raise data.DataError(
                    f"--scores {path}: scored with " + ", ".join(f"{k}={here.get(k)!r}" for k in differ)
                    + f", the first file ({records[0]['path']}) with "
                    + ", ".join(f"{k}={first.get(k)!r}" for k in differ)
                    + ": one table holds runs of one test split and one evaluation")
        record["path"] = str(path)
        records.append(record)
    return records
