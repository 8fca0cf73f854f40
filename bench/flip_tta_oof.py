"""Out of fold: what the base models' left-right flip averaging is worth, against what it costs.

Why: each base model averages its map of the slice with the mirrored map of the mirrored slice, which
doubles the ensemble's work on every engine. This predicts each fold's held-out patients again with the
flip off (the same fold weights, runs/cv-default/fold_k), compares with the fold's stored out-of-fold
record (flip on), and prints slice AUC, case AUC (highest slice probability) and Dice per patient of both,
by the training-time definitions (``training.train.val_figures``), with issue 19's rule for a faster
variant: slice AUC within 0.005 and Dice within 0.01. Nothing is chosen here; the no-flip maps are kept as
a cv run of their own (``--out``) so that ``ich-model cv-report`` can make its whole record.

    .venv/bin/python -m bench.flip_tta_oof --run-dir runs/cv-default --out runs/cv-noflip
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import torch

from ich.scoring import candidate_mask
from training.cv import OOF_FILE, predict_ensemble, run_cache
from training.train import val_figures


def _figures(cache, rows: np.ndarray, slice_prob: np.ndarray, fused: np.ndarray) -> dict[str, float]:
    return {k: round(v, 4) for k, v in val_figures(slice_prob, candidate_mask(fused), cache, rows).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, default=Path("runs/cv-default"))
    parser.add_argument("--out", type=Path, default=Path("runs/cv-noflip"))
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--folds", default=None, help="comma-separated (default: every fold with a record)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    cache = run_cache(args.run_dir, args.size)
    folds = (
        sorted(args.run_dir.glob("fold_*"))
        if args.folds is None
        else [args.run_dir / f"fold_{k}" for k in args.folds.split(",")]
    )
    args.out.mkdir(parents=True, exist_ok=True)
    for name in ("config.toml", "folds.json"):
        shutil.copyfile(args.run_dir / name, args.out / name)
    rows, on_sp, on_fused, off_sp, off_fused = [], [], [], [], []
    for fold in folds:
        stored = np.load(fold / OOF_FILE)
        target = args.out / fold.name / OOF_FILE
        if not target.exists():
            out = predict_ensemble(fold, cache.images[stored["rows"]], args.batch, flip_tta=False)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".tmp.npz")
            np.savez_compressed(tmp, rows=stored["rows"], pids=stored["pids"], **out)
            tmp.replace(target)
        off = np.load(target)
        rows.append(stored["rows"])
        on_sp.append(stored["slice_prob"])
        on_fused.append(stored["fused"])
        off_sp.append(off["slice_prob"])
        off_fused.append(off["fused"])
        print(f"{fold.name}: done", flush=True)
    r = np.concatenate(rows)
    on = _figures(cache, r, np.concatenate(on_sp), np.concatenate(on_fused))
    off = _figures(cache, r, np.concatenate(off_sp), np.concatenate(off_fused))
    keeps = on["slice_auc"] - off["slice_auc"] <= 0.005 and on["dice"] - off["dice"] <= 0.01
    print(json.dumps({"slices": len(r), "flip_on": on, "flip_off": off, "within_issue_19_rule": keeps}))


if __name__ == "__main__":
    main()
