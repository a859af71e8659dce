"""checkpoint_sweep - score several checkpoints (every kept epoch of a run) in one table.

Not a reading step: 07_eval.py hands it a --checkpoint that is a glob pattern
(`python 07_eval.py --checkpoint 'runs/RUN/epoch_*.pt' --post_process`), as the official practice
keeps every epoch's weights (weights_N) and evaluates them offline. The test split's lines and
ground truth are read once; each checkpoint is scored exactly as a single `--checkpoint` would be
(07_eval's functions: its own input size, median or x5.4 scaling, post-processing, leakage check);
one row per checkpoint, in one printed table and in eval_<split>_checkpoints.csv / .md, under a
CAUTION line: picking the best row on the test split selects on the test set.
Tests: tests/test_07_eval.py.
"""
import glob
from pathlib import Path

from helpers import eval_tables      # the table, the leakage warning
from helpers import model_files      # checkpoints -> DepthNet

CAUTION = ("CAUTION: choosing the best of these rows on the {split} test split is selection on the test set "
           "(an optimistic number): fix the epoch beforehand (e.g. the last, or the one the released recipe "
           "names), or choose it on a validation split")


def is_pattern(path):
    """Whether --checkpoint is a glob pattern (several checkpoints) rather than one file."""
    return glob.has_magic(str(path))


def checkpoint_paths(pattern):
    """The files matching the pattern, sorted (epoch_001.pt before epoch_002.pt)."""
    return sorted(Path(p) for p in glob.glob(str(pattern)) if Path(p).is_file())


def evaluate_checkpoints(cfg, device, ev):
    """Score every checkpoint matching cfg.checkpoint with the functions of 07_eval (the module `ev`);
    returns the rows (07's format: name + metrics), printed and saved as one table."""
    paths = checkpoint_paths(cfg.checkpoint)
    if not paths:
        raise ev.data.DataError(f"--checkpoint {cfg.checkpoint}: no checkpoint matches this pattern")
    rows, warnings, lines, gts, thin = [], [], None, None, None
    for path in paths:
        model, config = model_files.load_model(path, device)
        if lines is None:                        # the data, split and output folder of the first
            ev.defaults_from_checkpoint(config, cfg, path.parent)
            lines, gts, thin = ev.test_split(cfg)
            print(f"-> {len(paths)} checkpoints on {len(lines)} {cfg.split} frames from {cfg.data_path}"
                  f"{', post-processed' if cfg.post_process else ''}"
                  f", {'stereo evaluation: x5.4' if cfg.eval_stereo else 'mono evaluation: median scaling'}")
        height, width = int(config["height"]), int(config["width"])
        preds, _ = ev.run_network(model, ev.test_loader(cfg, lines, height, width), cfg, device)
        result = ev.evaluate_predictions(gts, preds, cfg.split, *ev.scaling(cfg), thin)
        warning = eval_tables.leakage_warning(config, lines, cfg.split)
        warnings += [warning] if warning else []
        name = path.name if len({p.parent for p in paths}) == 1 else str(path)
        rows.append(dict(result, name=name + (eval_tables.LEAK_MARK if warning else "")))
        print(f"   {name}: abs_rel {result['abs_rel']:.4f}", flush=True)
    warning = "; ".join(dict.fromkeys(warnings)) or None
    caution = CAUTION.format(split=cfg.split)
    print("\n" + eval_tables.format_table(rows, ev.METRICS, warning) + "\n" + caution + "\n")
    csv_path, md_path = eval_tables.save_table(rows, ev.METRICS, Path(cfg.out), f"{cfg.split}_checkpoints", warning)
    md_path.write_text(md_path.read_text() + f"\n{caution}\n")
    print(f"-> table saved to {csv_path} and {md_path}")
    return rows
