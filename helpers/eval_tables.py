"""eval_tables - the result tables of 07_eval.py: one checkpoint's, or one row per checkpoint of a glob.

Also the train/test leakage warning (docs/kitti.md, "The leakage check"). A glob pattern as --checkpoint:
  python 07_eval.py --checkpoint 'runs/RUN/epoch_*.pt' --post_process
Tests: tests/test_07_eval.py.
"""
import glob
from pathlib import Path

import numpy as np

from helpers import model_files      # checkpoints -> DepthNet


LEAK_MARK = " [trained on test drives]"  # appended to the model's row name when its training leaked


def leakage_warning(config, lines, split):
    """The warning line when the checkpoint's training drives (06_train stores them as "train_drives")
    include drives of the evaluated lines, else None (with a printed note when it does not record them)."""
    drives = config.get("train_drives")
    if drives is None:
        print("   train/test drive overlap: unknown (the checkpoint does not record its training drives)")
        return None
    drives = set(drives)
    shared = sorted({folder for folder, _, _ in lines} & drives)
    if not shared:
        return None
    frames = sum(1 for folder, _, _ in lines if folder in drives)
    return (f"WARNING: train/test leakage: the checkpoint trained on {len(shared)} drive(s) of this {split} "
            f"test split ({frames} of its {len(lines)} frames): {', '.join(shared)}; these numbers are optimistic")


def format_table(rows, metrics, warning=None):
    """Fixed-width table (name, metrics, thin AbsRel when known), headed by the warning line if any."""
    thin = any(np.isfinite(r.get("thin_abs_rel", np.nan)) for r in rows)
    head = f"{'model':<24}" + "".join(f"{k:>10}" for k in metrics) + (f"{'thin_abs_rel':>14}" if thin else "")
    lines = ([warning] if warning else []) + [head]
    for r in rows:
        line = f"{r['name']:<24}" + "".join(f"{r[k]:>10.3f}" for k in metrics)
        lines.append(line + (f"{r.get('thin_abs_rel', np.nan):>14.3f}" if thin else ""))
    return "\n".join(lines)


def save_table(rows, metrics, out_dir, split, warning=None):
    """Write eval_<split>.csv and eval_<split>.md (the warning above the table; the CSV has no place
    for it, the row's name carries LEAK_MARK); returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cols = list(metrics) + ["thin_abs_rel", "n"]
    csv_path, md_path = out_dir / f"eval_{split}.csv", out_dir / f"eval_{split}.md"
    csv = ["model," + ",".join(cols)] + [r["name"] + "," + ",".join(f"{r.get(c, np.nan):.6g}" for c in cols)
                                         for r in rows]
    csv_path.write_text("\n".join(csv) + "\n")
    md = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    md += ["| " + r["name"] + " | " + " | ".join(f"{r.get(c, np.nan):.3f}" if c != "n" else str(r["n"]) for c in cols)
           + " |" for r in rows]
    md = ([f"> **{warning}**", ""] if warning else []) + md
    md_path.write_text("\n".join(md) + "\n")
    return csv_path, md_path


# ---- Several checkpoints in one table ----
CAUTION = ("CAUTION: choosing the best of these rows on the {split} test split is selection on the test set "
           "(an optimistic number): fix the epoch beforehand (e.g. the last, or the one the released recipe "
           "names), or choose it on a validation split")


def is_pattern(path):
    """Whether --checkpoint is a glob pattern (several checkpoints) rather than one file."""
    return glob.has_magic(str(path))


def evaluate_checkpoints(cfg, device, ev):
    """Score every checkpoint matching cfg.checkpoint (sorted) as 07_eval (the module `ev`) scores one;
    print and save the rows as one table under CAUTION."""
    paths = sorted(Path(p) for p in glob.glob(str(cfg.checkpoint)) if Path(p).is_file())
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
        warning = leakage_warning(config, lines, cfg.split)
        warnings += [warning] if warning else []
        name = path.name if len({p.parent for p in paths}) == 1 else str(path)
        rows.append(dict(result, name=name + (LEAK_MARK if warning else "")))
        print(f"   {name}: abs_rel {result['abs_rel']:.4f}", flush=True)
    warning = "; ".join(dict.fromkeys(warnings)) or None
    caution = CAUTION.format(split=cfg.split)
    print("\n" + format_table(rows, ev.METRICS, warning) + "\n" + caution + "\n")
    csv_path, md_path = save_table(rows, ev.METRICS, Path(cfg.out), f"{cfg.split}_checkpoints", warning)
    md_path.write_text(md_path.read_text() + f"\n{caution}\n")
    print(f"-> table saved to {csv_path} and {md_path}")
