"""``ich-model cv``: patient-grouped k-fold cross-validation of the whole training recipe.

Why: a figure is honest only on patients whose predictions chose nothing. Each fold trains the five base
models and the weight model on the other folds' patients with the config's fixed iteration counts (no
validation patients, so no checkpoint is selected on anyone), then predicts its own patients once. Every
patient is predicted out of fold exactly once. What is chosen afterwards (the lesion model, the calibration,
the threshold and the indeterminate band) is fitted on out-of-fold predictions by
:mod:`training.oof_report`, which cross-fits those choices over the same folds for the figures it reports.

Layout (``--run-dir``, default ``runs/cv-<run.name>``): ``folds.json``, ``cache_<size>.npz``, and per fold
``fold_<k>/`` holding the usual step directories (resumable, see :mod:`training.train`) and ``oof.npz``
(the fold's out-of-fold maps; a fold with it is done and skipped). ``--folds 0,2`` runs only those folds, so
the folds can spread over several runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ich.spec import MODEL_KEYS
from training.allocator import keep_freed_memory
from training.amp import warn_if_bf16_emulated
from training.config import ConfigError, load_config
from training.networks import InceptionUNet, load_checkpoint
from training.seeds import STEP_ORDER
from training.selections import SliceTable
from training.train import Cache, build_cache, predict_maps, train_steps, unconfigured_steps

logger = logging.getLogger(__name__)

OOF_FILE = "oof.npz"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``ich-model cv``."""
    parser.add_argument("--data", type=Path, required=True, help="CT-ICH folder (Patients_CT/, csv)")
    parser.add_argument("--config", type=Path, default=Path("training/configs/default.toml"))
    parser.add_argument("--run-dir", type=Path, default=None, help="default: runs/cv-<config run.name>")
    parser.add_argument("--folds", default=None, help="comma-separated fold numbers to run (default: all)")
    parser.add_argument(
        "--folds-from",
        type=Path,
        default=None,
        help="another run's folds.json: the same patient folds, so two recipes compare patient by patient",
    )


def patient_folds(table: SliceTable, k: int, seed: int) -> list[list[str]]:
    """``k`` disjoint patient lists covering every patient, stratified by "has hemorrhage".

    Stratified so that each fold holds about the same share of hemorrhage patients (with 29 of 66, an
    unstratified fold could have few of either class, and its case figures would say little).
    """
    from sklearn.model_selection import StratifiedKFold

    pids = np.array(sorted(set(table.pids.tolist())))
    labels = np.array([int(table.positive[table.pids == p].any()) for p in pids])
    if k < 2 or k > min(np.bincount(labels, minlength=2)):
        raise ValueError(f"{k} folds need at least {k} patients of each class")
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [sorted(pids[test].tolist()) for _, test in splitter.split(pids, labels)]


def fold_split(folds: list[list[str]], k: int) -> dict[str, list[str]]:
    """Training patients of fold ``k`` (every other fold) and no validation patients."""
    train = sorted(p for j, fold in enumerate(folds) if j != k for p in fold)
    return {"train": train, "val": []}


@torch.no_grad()
def predict_ensemble(
    run_dir: Path, images: np.ndarray, batch: int, device: str = "cpu", flip_tta: bool | None = None
) -> dict[str, Any]:
    """The trained ensemble of ``run_dir`` on ``images`` [N, 4, S, S], in float32 as exported and served.

    Returns ``probs`` [N, 5, S, S] (MODEL_KEYS order), ``fused`` [N, S, S], ``slice_prob`` [N] and
    ``weights`` [N, 5]; maps are float16 (what a map cache stores), scores float32. ``flip_tta``, when
    given, overrides the base models' trained setting (bench/flip_tta_oof.py measures what it costs).
    """

    def base_model(key: str) -> torch.nn.Module:
        model = load_checkpoint(run_dir / key / "best.pt").to(device)
        if flip_tta is not None and isinstance(model, InceptionUNet):
            model.flip_tta = flip_tta
        return model

    probs = np.concatenate(
        [predict_maps(base_model(key), images, batch, device) for key in MODEL_KEYS], axis=1
    )
    weight_model = load_checkpoint(run_dir / "weight" / "best.pt").to(device).eval()
    fused, slice_prob, weights = [], [], []
    for i in range(0, len(images), batch):
        maps = torch.from_numpy(probs[i : i + batch].astype(np.float32)).to(device)
        w, f, sp = weight_model(*[maps[:, j : j + 1] for j in range(len(MODEL_KEYS))])
        weights.append(w.cpu().numpy())
        fused.append(f[:, 0].cpu().numpy().astype(np.float16))
        slice_prob.append(sp[:, 0].cpu().numpy())
    return {
        "probs": probs,
        "fused": np.concatenate(fused),
        "slice_prob": np.concatenate(slice_prob).astype(np.float32),
        "weights": np.concatenate(weights).astype(np.float32),
    }


def run_cache(run_dir: Path, size: int) -> Cache:
    """The preprocessed cache a cv run left in ``run_dir``, for tools that read a finished run's folds."""
    path = run_dir / f"cache_{size}.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no cache of a cv run at {size} px (run ich-model cv first)")
    return build_cache(path.parent, size, path)


def write_oof(path: Path, cache: Cache, patients: list[str], run_dir: Path, batch: int, device: str) -> None:
    """Predict ``patients`` with the fold's ensemble and store the maps (atomically: the fold's done mark)."""
    rows = np.flatnonzero(np.isin(cache.table.pids, np.asarray(patients)))
    out = predict_ensemble(run_dir, cache.images[rows], batch, device)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, rows=rows, pids=cache.table.pids[rows], **out)
    tmp.replace(path)


def load_folds(path: Path, table: SliceTable, k: int, seed: int) -> list[list[str]]:
    """The run's folds: read back when present (a resumed run keeps its folds), else made and written."""
    if path.exists():
        folds: list[list[str]] = json.loads(path.read_text())["folds"]
        if sorted(p for f in folds for p in f) != sorted(set(table.pids.tolist())):
            raise ValueError(f"{path}: the folds do not cover exactly the data's patients")
        return folds
    folds = patient_folds(table, k, seed)
    path.write_text(json.dumps({"seed": seed, "k": k, "folds": folds}, indent=1) + "\n")
    return folds


def run(args: argparse.Namespace) -> int:
    """Train and predict every requested fold; finished folds are skipped."""
    try:
        cfg = load_config(args.config)
    except ConfigError as err:
        logger.error("cv: %s", err)
        return 2
    if missing := unconfigured_steps(cfg, list(STEP_ORDER)):
        logger.error("cv: %s has no %s", args.config, ", ".join(f"[steps.{m}]" for m in missing))
        return 2
    rc = cfg.run
    run_dir = args.run_dir or Path("runs") / f"cv-{rc.name}"
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / "cv.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    try:
        torch.set_num_threads(rc.threads)
        keep_freed_memory()
        (run_dir / "config.toml").write_bytes(args.config.read_bytes())
        cache = build_cache(args.data, rc.size, run_dir / f"cache_{rc.size}.npz")
        folds_path = run_dir / "folds.json"
        if args.folds_from is not None and not folds_path.exists():
            folds_path.write_bytes(args.folds_from.read_bytes())
        folds = load_folds(folds_path, cache.table, cfg.cv.folds, rc.seed)
        wanted = [int(v) for v in args.folds.split(",")] if args.folds else list(range(len(folds)))
        device = rc.resolved_device()
        warn_if_bf16_emulated(rc.amp, device)
        for k in wanted:
            fold_dir = run_dir / f"fold_{k}"
            if (fold_dir / OOF_FILE).exists():
                logger.info("cv: fold %d already done, skipped", k)
                continue
            t0 = time.time()
            fold_dir.mkdir(parents=True, exist_ok=True)
            logger.info(
                "cv: fold %d: %d training, %d held-out patients",
                k,
                len(fold_split(folds, k)["train"]),
                len(folds[k]),
            )
            train_steps(cfg, cache, fold_split(folds, k), fold_dir, list(STEP_ORDER), device)
            write_oof(fold_dir / OOF_FILE, cache, folds[k], fold_dir, rc.eval_batch, device)
            logger.info("cv: fold %d done in %.1f min", k, (time.time() - t0) / 60)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    return 0
