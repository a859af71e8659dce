"""eval_tables - the result table of an evaluation: printed, as CSV and markdown, with the leakage warning.

Serves 07_eval.py. A number is only as good as the split it was measured on: when a checkpoint's
training lists used drives of the evaluated test lines (06_train records them), a WARNING line heads
the printed and the markdown table and the model's row is marked (README "Train on KITTI").
Tests: tests/test_07_eval.py.
"""
import numpy as np


LEAK_MARK = " [trained on test drives]"  # appended to the model's row name when its training leaked


def leakage_warning(config, lines, split):
    """The warning line when the checkpoint's training lists used drives of the evaluated lines, else
    None; "unknown" (a note, also returned as None) when the checkpoint does not record its drives.

    06_train stores the drives of its train and val lists in the checkpoint config ("train_drives");
    older checkpoints and the official weights lack it, so nothing can be said about them."""
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
    """Fixed-width table (name + the metrics in the given order, the paper's, + thin AbsRel when known),
    headed by the warning line when one is given (a leaked number never appears without it)."""
    thin = any(np.isfinite(r.get("thin_abs_rel", np.nan)) for r in rows)
    head = f"{'model':<24}" + "".join(f"{k:>10}" for k in metrics) + (f"{'thin_abs_rel':>14}" if thin else "")
    lines = ([warning] if warning else []) + [head]
    for r in rows:
        line = f"{r['name']:<24}" + "".join(f"{r[k]:>10.3f}" for k in metrics)
        lines.append(line + (f"{r.get('thin_abs_rel', np.nan):>14.3f}" if thin else ""))
    return "\n".join(lines)


def save_table(rows, metrics, out_dir, split, warning=None):
    """Write eval_<split>.csv and eval_<split>.md (the warning line above the markdown table when
    given; in the CSV, which has no place for it, the model row's name carries LEAK_MARK); returns
    their paths."""
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
