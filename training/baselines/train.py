"""``ich-model baselines``: the paper's four classifiers, weak against strong, on the ensemble's folds.

Each *unit* is one (fold, architecture, mode): the classifier is trained on the other folds' patients for
the config's fixed number of iterations (no validation patients, the last weights are kept: nothing is
selected on anyone) and predicts its fold's patients once. Modes (section 2.1.5 of the paper):

- ``weak``: the slice label (CT-ICH's) and binary cross-entropy on the slice logit;
- ``strong``: the same plus ``seg_weight`` x the soft Dice between the saliency map (sigmoid of the
  class-activation map of the last convolutional layer, upsampled: :func:`.networks.saliency`) and the mask;
- ``weak_csv``: as ``weak``, with the slice labels of an RSNA-style CSV (``--weak-csv``,
  :mod:`training.data.weak_csv`), a CT-ICH slice being named ``ID_<patient>_<slice number>``.

Weak and strong units of one fold and architecture start from the same weights and draw the same batches
(one seed), so they differ by the loss alone.

Records: a finished unit writes ``<out>/<architecture>/<mode>/fold_<k>.csv`` (one row per out-of-fold
slice: probability, saliency-map Dice counts) and then ``fold_<k>.json`` (its settings and loss curve),
which marks it done. Both are small and committed, so that later runs on fresh checkouts skip the units
already there (``--out`` defaults to ``training/baselines/<run name>``). ``<run-dir>`` holds the cache and a
unit's ``last.pt`` while it trains (a stopped unit resumes from it). After the units, the comparison
(:mod:`.report`) is written from every record present.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from training.amp import warn_if_bf16_emulated
from training.augment import augment_batch, scanner_augment
from training.baselines.networks import (
    ARCHITECTURES,
    SliceClassifier,
    build_classifier,
    normalised_cam,
    saliency,
)
from training.config import (
    BaselinesConfig,
    BaselinesTrain,
    ConfigError,
    DiceMode,
    load_baselines_config,
)
from training.losses import dice_loss
from training.records import _read_csv, _write_csv
from training.seeds import batch_generator, unit_seed
from training.train import Cache, Sampling, _batch, _lr, build_cache, negative_weights

logger = logging.getLogger(__name__)

MODES: tuple[str, ...] = ("weak", "strong", "weak_csv")
DEFAULT_FOLDS = Path("training/cv/default/folds.json")
DEFAULT_ENSEMBLE = Path("training/cv/default")
DEFAULT_DOC = Path("docs/baselines.md")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``ich-model baselines``."""
    parser.add_argument(
        "--data", type=Path, default=None, help="CT-ICH folder (not needed with --report-only)"
    )
    parser.add_argument("--config", type=Path, default=Path("training/configs/baselines.toml"))
    parser.add_argument(
        "--out", type=Path, default=None, help="records; default training/baselines/<run name>"
    )
    parser.add_argument(
        "--run-dir", type=Path, default=None, help="cache, checkpoints; default runs/baselines-<name>"
    )
    parser.add_argument("--folds-from", type=Path, default=DEFAULT_FOLDS, help="the ensemble's folds.json")
    parser.add_argument("--folds", default=None, help="comma-separated fold numbers (default: all)")
    parser.add_argument(
        "--architectures", default=None, help=f"comma-separated subset of {','.join(ARCHITECTURES)}"
    )
    parser.add_argument("--modes", default=None, help="comma-separated subset of the config's modes")
    parser.add_argument("--weak-csv", type=Path, default=None, help="RSNA-style slice labels (mode weak_csv)")
    parser.add_argument(
        "--stop-after", type=float, default=None, help="start no unit after this many minutes"
    )
    parser.add_argument(
        "--ensemble", type=Path, default=DEFAULT_ENSEMBLE, help="the ensemble's cv-report folder"
    )
    parser.add_argument("--doc", type=Path, default=DEFAULT_DOC, help="the Markdown file the table goes into")
    parser.add_argument("--report-only", action="store_true", help="train nothing; rebuild the comparison")


# ------------------------------------------------------------------------------------------------ units
@dataclass(frozen=True)
class Unit:
    """One classifier trained on the other folds and predicting ``fold``."""

    fold: int
    architecture: str
    mode: str

    def stem(self, out: Path) -> Path:
        return out / self.architecture / self.mode / f"fold_{self.fold}"

    def __str__(self) -> str:
        return f"{self.architecture}/{self.mode}/fold {self.fold}"


def unit_settings(cfg: BaselinesConfig, unit: Unit, labels_digest: str) -> dict[str, Any]:
    """What defines a unit's result: a record made with other settings is refused, never mixed in.

    The tables as the config file writes them (defaults left out), so that records made before a default
    was named compare equal.
    """
    network = cfg.network.get(unit.architecture)
    return {
        "size": cfg.run.size,
        "seed": cfg.run.seed,
        "amp": cfg.run.amp,
        "train": cfg.train.as_written(),
        "network": network.as_written() if network is not None else {},
        "labels": labels_digest,
    }


def seed_of(cfg: BaselinesConfig, unit: Unit) -> int:
    """The unit's seed (:func:`training.seeds.unit_seed`): weak and strong share it."""
    return unit_seed(cfg.run.seed, unit.fold, ARCHITECTURES.index(unit.architecture))


def is_done(unit: Unit, out: Path, settings: dict[str, Any]) -> bool:
    """Whether ``unit`` has its records; ``ValueError`` if they were made with other settings."""
    done = unit.stem(out).with_suffix(".json")
    if not done.is_file():
        return False
    made_with = json.loads(done.read_text())["settings"]
    if made_with != settings:
        raise ValueError(
            f"{done}: made with other settings than {unit}'s in this config; "
            "write to another --out or remove the records"
        )
    return True


# --------------------------------------------------------------------------------------------- labels
def slice_id(pid: str, number: int) -> str:
    """How a weak CSV names a CT-ICH slice (its ``SOPInstanceUID`` column or the ID before ``_<subtype>``)."""
    return f"ID_{pid}_{number}"


def csv_labels(path: Path, data: Path, cache: Cache) -> np.ndarray:
    """[M] slice labels from an RSNA-style CSV: 1, 0, or -1 where the CSV does not name the slice."""
    from training.data.ct_ich import read_patient
    from training.data.weak_csv import read_weak_labels

    weak = read_weak_labels(path)
    pids = cache.table.pids
    out = np.full(len(pids), -1, dtype=np.int8)
    for pid in dict.fromkeys(pids.tolist()):
        rows = np.flatnonzero(pids == pid)
        numbers = read_patient(data, pid).slice_numbers
        if len(numbers) != len(rows):
            raise ValueError(f"patient {pid}: {len(numbers)} slices read, {len(rows)} in the cache")
        for row, number in zip(rows, numbers, strict=True):
            label = weak.get(slice_id(pid, number))
            if label is not None:
                out[row] = label.any
    named = int((out >= 0).sum())
    if named == 0:
        raise ValueError(
            f"{path}: names none of the data's slices (expected IDs like {slice_id(pids[0], 1)})"
        )
    logger.info(
        "baselines: %s labels %d of %d slices (%d positive)",
        path.name,
        named,
        len(out),
        int((out == 1).sum()),
    )
    return out


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------- training
def saliency_loss(cam: torch.Tensor, masks: torch.Tensor, keep: torch.Tensor, mode: DiceMode) -> torch.Tensor:
    """Soft Dice between the saliency map (upsampled CAM) and the mask, over the slices ``keep`` marks.

    Zero, with a vanishing gradient, when the map agrees with the mask; 0 without a slice to keep.
    """
    if not bool(keep.any()):
        return cam.sum() * 0.0
    return dice_loss(saliency(cam[keep], masks.shape[-2:]), masks[keep], mode)


def unit_loss(
    logit: torch.Tensor,
    cam: torch.Tensor,
    labels: torch.Tensor,
    masks: torch.Tensor,
    keep: torch.Tensor,
    mode: str,
    train: BaselinesTrain,
) -> tuple[torch.Tensor, dict[str, float]]:
    """BCE on the slice logit, plus in ``strong`` mode ``seg_weight`` x :func:`saliency_loss`."""
    bce = F.binary_cross_entropy_with_logits(logit, labels)
    if mode != "strong":
        return bce, {"bce": bce.item()}
    seg = saliency_loss(cam, masks, keep, train.dice)
    return bce + train.seg_weight * seg, {"bce": bce.item(), "seg": seg.item()}


def train_step(
    model: SliceClassifier,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    masks: torch.Tensor,
    labels: torch.Tensor,
    keep: torch.Tensor,
    mode: str,
    train: BaselinesTrain,
    amp: bool = False,
) -> dict[str, float]:
    """One optimiser step on a batch; returns the loss and its terms."""
    model.train()
    device = x.device.type
    with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=amp):
        logit, cam = model(x.contiguous(memory_format=torch.channels_last))
    loss, parts = unit_loss(logit.float(), cam.float(), labels, masks, keep, mode, train)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return {"loss": loss.item(), **parts}


def _checkpoint(
    path: Path, model: SliceClassifier, opt: torch.optim.Optimizer, it: int, curve: list[Any]
) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(
        {"state_dict": model.state_dict(), "optimizer": opt.state_dict(), "iteration": it, "curve": curve},
        tmp,
    )
    tmp.replace(path)


@dataclass(frozen=True)
class UnitData:
    """The slices a unit trains on and their targets."""

    pos: np.ndarray  # training slices labelled with hemorrhage
    neg: np.ndarray  # training slices labelled without
    neg_weights: torch.Tensor | None  # sampling weights of ``neg`` (None: uniform)
    slice_labels: torch.Tensor  # [M] the mode's slice labels
    has_target: torch.Tensor  # [M] the mask is a target: negatives (empty) and masks that survived the resize


def unit_data(
    cache: Cache, unit: Unit, train_patients: Sequence[str], labels: np.ndarray, train: BaselinesTrain
) -> UnitData:
    """The training slices of ``unit`` by its mode's ``labels`` (1, 0, or -1 for unlabelled)."""
    in_train = np.isin(cache.table.pids, np.asarray(list(train_patients)))
    pos, neg = np.flatnonzero(in_train & (labels == 1)), np.flatnonzero(in_train & (labels == 0))
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError(f"{unit}: the training patients need labelled slices with and without hemorrhage")
    sampling = Sampling(train.negative_fraction, train.edge_negative_weight)
    return UnitData(
        pos=pos,
        neg=neg,
        neg_weights=negative_weights(cache, neg, sampling),
        slice_labels=torch.from_numpy(labels.astype(np.float32)),
        has_target=torch.from_numpy(~cache.table.positive | (cache.table.mask_pixels > 0)),
    )


def build_unit_model(
    cfg: BaselinesConfig, unit: Unit, seed: int, device: str
) -> tuple[SliceClassifier, torch.optim.Optimizer]:
    """The seeded classifier of the unit's architecture (the config's width and blocks) and its optimiser."""
    torch.manual_seed(seed)
    net = cfg.network.get(unit.architecture)
    model = build_classifier(
        unit.architecture, net.width if net else 1.0, net.blocks if net else None
    )
    model.to(device)
    model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stubs omit it
    return model, torch.optim.Adam(model.parameters(), lr=cfg.train.lr)


def resume_unit(
    last: Path, model: SliceClassifier, opt: torch.optim.Optimizer, unit: Unit, device: str
) -> tuple[int, list[Any]]:
    """(iteration, loss curve) of ``last.pt``, restoring its weights and optimiser; (0, []) without one."""
    if not last.exists():
        return 0, []
    ck = torch.load(last, map_location=device, weights_only=False)
    model.load_state_dict(ck["state_dict"])
    opt.load_state_dict(ck["optimizer"])
    logger.info("baselines: %s resumed at iteration %d", unit, int(ck["iteration"]))
    return int(ck["iteration"]), list(ck["curve"])


def unit_batch(
    cache: Cache, data: UnitData, train: BaselinesTrain, seed: int, it: int
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Iteration ``it``'s augmented batch (images, masks, rows), from its own seeded generator."""
    gen = batch_generator(seed, it)
    x, masks, idx = _batch(
        cache, data.pos, data.neg, train.batch, gen,
        negative_fraction=train.negative_fraction, neg_weights=data.neg_weights,
    )
    x, masks = augment_batch(x, masks, train.augment, gen)
    return scanner_augment(x, train.augment, gen), masks, idx


def curve_point(it: int, window: list[dict[str, float]]) -> dict[str, Any]:
    """The mean of each loss term over the iterations since the last point."""
    return {"iteration": it + 1, **{k: round(float(np.mean([w[k] for w in window])), 5) for k in window[0]}}


def train_unit(
    cfg: BaselinesConfig,
    cache: Cache,
    unit: Unit,
    train_patients: Sequence[str],
    labels: np.ndarray,
    work: Path,
    device: str,
) -> tuple[SliceClassifier, dict[str, Any]]:
    """Train one unit's classifier (resuming from ``work/last.pt``); returns it and its training facts."""
    train = cfg.train
    data = unit_data(cache, unit, train_patients, labels, train)
    seed, amp = seed_of(cfg, unit), cfg.run.amp == "bf16"
    model, opt = build_unit_model(cfg, unit, seed, device)
    work.mkdir(parents=True, exist_ok=True)
    last = work / "last.pt"
    start, curve = resume_unit(last, model, opt, unit, device)
    logger.info("baselines: %s: %d positive / %d negative training slices, %d iterations",
                unit, len(data.pos), len(data.neg), train.iterations)
    t0, window = time.time(), []
    for it in range(start, train.iterations):
        x, masks, idx = unit_batch(cache, data, train, seed, it)
        for group in opt.param_groups:
            group["lr"] = _lr(it, train.iterations, train.lr, train.warmup)
        labels_t, keep = data.slice_labels[idx].to(device), data.has_target[idx].to(device)
        window.append(
            train_step(model, opt, x.to(device), masks.to(device), labels_t, keep, unit.mode, train, amp)
        )
        if (it + 1) % train.log_every == 0 or it + 1 == train.iterations:
            curve.append(curve_point(it, window))
            logger.info("baselines: %s it %d/%d loss %.4f | %.2f s/it", unit, it + 1, train.iterations,
                        curve[-1]["loss"], (time.time() - t0) / len(window))
            t0, window = time.time(), []
            _checkpoint(last, model, opt, it + 1, curve)
    return model, {"positive_slices": len(data.pos), "negative_slices": len(data.neg), "curve": curve}


# ----------------------------------------------------------------------------------------- prediction
@torch.no_grad()
def predict_rows(
    model: SliceClassifier, cache: Cache, patients: Sequence[str], fold: int, batch: int, device: str
) -> list[dict[str, Any]]:
    """One record row per slice of ``patients`` (cache order): probability and saliency Dice counts.

    ``map``: the saliency map the strong mode trains, above 0.5; ``cam``: the CAM divided by its slice
    maximum, above 0.5 (scale-free, so that weak models' maps are read out fairly too).
    """
    model.eval()
    rows = np.flatnonzero(np.isin(cache.table.pids, np.asarray(list(patients))))
    size = cache.images.shape[-2:]
    out: list[dict[str, Any]] = []
    position: dict[str, int] = {}
    for start in range(0, len(rows), batch):
        idx = rows[start : start + batch]
        x = torch.from_numpy(cache.images[idx].astype(np.float32)).to(device)
        logit, cam = model(x.contiguous(memory_format=torch.channels_last))
        prob = torch.sigmoid(logit).cpu().numpy()
        by_map = (saliency(cam, size) >= 0.5)[:, 0].cpu().numpy()
        by_cam = (normalised_cam(cam, size) >= 0.5)[:, 0].cpu().numpy()
        truth = cache.masks[idx, 0] > 0
        for j, row in enumerate(idx.tolist()):
            pid = str(cache.table.pids[row])
            i = position.get(pid, 0)
            position[pid] = i + 1
            out.append(
                {
                    "case": pid,
                    "fold": fold,
                    "slice": i,
                    "label": int(cache.table.positive[row]),
                    "truth_voxels": int(truth[j].sum()),
                    "prob": float(prob[j]),
                    "inter_map": int((by_map[j] & truth[j]).sum()),
                    "voxels_map": int(by_map[j].sum()),
                    "inter_cam": int((by_cam[j] & truth[j]).sum()),
                    "voxels_cam": int(by_cam[j].sum()),
                }
            )
    return out


def write_unit(unit: Unit, out: Path, rows: list[dict[str, Any]], facts: dict[str, Any]) -> None:
    """The unit's records: the CSV first, then the JSON that marks it done."""
    stem = unit.stem(out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    _write_csv(stem.with_suffix(".csv"), rows)
    tmp = stem.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"unit": unit.__dict__, **facts}, indent=1) + "\n")
    tmp.replace(stem.with_suffix(".json"))


def read_unit_rows(unit: Unit, out: Path) -> list[dict[str, Any]]:
    return _read_csv(unit.stem(out).with_suffix(".csv"))


# ------------------------------------------------------------------------------------------------ run
def _pick(value: str | None, allowed: Sequence[str], what: str) -> list[str]:
    if value is None:
        return list(allowed)
    picked = [v.strip() for v in value.split(",") if v.strip()]
    unknown = sorted(set(picked) - set(allowed))
    if unknown:
        raise ValueError(f"{what} {', '.join(unknown)}: expected some of {', '.join(allowed)}")
    return picked


def load_baseline_folds(out: Path, folds_from: Path, cache: Cache | None) -> list[list[str]]:
    """The ensemble's patient folds, copied into ``out/folds.json`` (records keep the folds they used)."""
    from training.cv import load_folds

    target = out / "folds.json"
    given = json.loads(folds_from.read_text())
    if target.is_file():
        if json.loads(target.read_text())["folds"] != given["folds"]:
            raise ValueError(f"{target} holds other folds than {folds_from}; write to another --out")
    else:
        out.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(given, indent=1) + "\n")
    if cache is None:
        return list(given["folds"])
    return load_folds(target, cache.table, len(given["folds"]), int(given.get("seed", 0)))


def command_line(args: argparse.Namespace) -> str:
    """The command as it would be typed again; the data folder is written ``PATH`` (each user's own copy, and
    the report is committed: no machine's path in it)."""
    parts = ["ich-model baselines"]
    if args.data is not None:
        parts.append("--data PATH")
    parts.append(f"--config {args.config}")
    for flag, value, default in (
        ("--out", args.out, None),
        ("--folds-from", args.folds_from, DEFAULT_FOLDS),
        ("--ensemble", args.ensemble, DEFAULT_ENSEMBLE),
        ("--weak-csv", args.weak_csv, None),
    ):
        if value is not None and value != default:
            parts.append(f"{flag} {value}")
    if args.report_only:
        parts.append("--report-only")
    return " ".join(parts)


def run(args: argparse.Namespace) -> int:
    """Train every requested unit not yet recorded, then write the comparison."""
    from training.baselines import report

    try:
        cfg = load_baselines_config(args.config)
    except ConfigError as err:
        logger.error("baselines: %s", err)
        return 2
    out = args.out or Path("training/baselines") / cfg.run.name
    try:
        architectures = _pick(
            args.architectures, [a for a in cfg.architectures if a in ARCHITECTURES], "architecture"
        )
        modes = _pick(args.modes, list(cfg.modes), "mode")
        if [a for a in cfg.architectures if a not in ARCHITECTURES] or set(cfg.modes) - set(MODES):
            raise ValueError(f"config: architectures are some of {ARCHITECTURES}, modes some of {MODES}")
        if "weak_csv" in modes and args.weak_csv is None and not args.report_only:
            if args.modes is not None:
                raise ValueError("mode weak_csv needs --weak-csv")
            modes.remove("weak_csv")
    except ValueError as err:
        logger.error("baselines: %s", err)
        return 2
    if not args.report_only:
        if args.data is None:
            logger.error("baselines: --data is needed to train (or --report-only)")
            return 2
        status = _train(args, cfg, out, architectures, modes)
        if status:
            return status
    elif not (out / "folds.json").is_file():
        logger.error("baselines: %s holds no records (run without --report-only first)", out)
        return 2
    built = report.build_report(out, args.ensemble, cfg)
    (out / "config.toml").write_bytes(args.config.read_bytes())
    built["command"] = command_line(args)
    (out / "report.json").write_text(json.dumps(built, indent=1) + "\n")
    report.write_doc(args.doc, built)
    logger.info(
        "baselines: %d of %d units recorded; report in %s, table in %s",
        built["units_done"],
        built["units_expected"],
        out / "report.json",
        args.doc,
    )
    return 0


def mode_labels(
    args: argparse.Namespace, cache: Cache, modes: list[str]
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Each mode's slice labels and what names them in a unit's settings (the weak CSV by its digest)."""
    labels = {"weak": cache.table.positive.astype(np.int8), "strong": cache.table.positive.astype(np.int8)}
    digest = {"weak": "ct-ich", "strong": "ct-ich"}
    if "weak_csv" in modes:
        labels["weak_csv"] = csv_labels(args.weak_csv, args.data, cache)
        digest["weak_csv"] = f"{args.weak_csv.name} sha256:{file_digest(args.weak_csv)}"
    return labels, digest


def run_unit(
    unit: Unit,
    cfg: BaselinesConfig,
    cache: Cache,
    folds: list[list[str]],
    labels: np.ndarray,
    digest: str,
    dirs: tuple[Path, Path],
    device: str,
) -> None:
    """Train ``unit``, predict its fold and write its records; ``dirs`` = (run folder, records folder)."""
    from training.cv import fold_split

    run_dir, out = dirs
    t0 = time.time()
    work = run_dir / unit.architecture / unit.mode / f"fold_{unit.fold}"
    work.mkdir(parents=True, exist_ok=True)
    train_patients = fold_split(folds, unit.fold)["train"]
    model, facts = train_unit(cfg, cache, unit, train_patients, labels, work, device)
    rows = predict_rows(model, cache, folds[unit.fold], unit.fold, cfg.run.eval_batch, device)
    seconds = round(time.time() - t0, 1)
    made = {"settings": unit_settings(cfg, unit, digest), "seconds": seconds, "device": device}
    write_unit(unit, out, rows, {**made, "train_patients": len(train_patients), **facts})
    (work / "last.pt").unlink(missing_ok=True)
    logger.info("baselines: %s done in %.1f min", unit, seconds / 60)


def _train(
    args: argparse.Namespace, cfg: BaselinesConfig, out: Path, architectures: list[str], modes: list[str]
) -> int:
    from training.allocator import keep_freed_memory

    rc = cfg.run
    run_dir = args.run_dir or Path("runs") / f"baselines-{rc.name}"
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / "baselines.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    try:
        torch.set_num_threads(rc.threads)
        keep_freed_memory()
        device = rc.resolved_device()
        warn_if_bf16_emulated(rc.amp, device)
        cache = build_cache(args.data, rc.size, run_dir / f"cache_{rc.size}.npz")
        try:
            folds = load_baseline_folds(out, args.folds_from, cache)
            wanted = [int(v) for v in args.folds.split(",")] if args.folds else list(range(len(folds)))
            if any(k < 0 or k >= len(folds) for k in wanted):
                raise ValueError(f"--folds {args.folds}: the folds are 0..{len(folds) - 1}")
            labels, digest = mode_labels(args, cache, modes)
            units = [Unit(k, a, m) for a in architectures for k in wanted for m in modes]
            todo = [u for u in units if not is_done(u, out, unit_settings(cfg, u, digest[u.mode]))]
        except ValueError as err:
            logger.error("baselines: %s", err)
            return 2
        logger.info("baselines: %d units requested, %d already recorded", len(units), len(units) - len(todo))
        began = time.time()
        for unit in todo:
            if args.stop_after is not None and (time.time() - began) / 60 > args.stop_after:
                logger.info("baselines: --stop-after %.0f min reached; %s and later left for another run",
                            args.stop_after, unit)
                break
            run_unit(unit, cfg, cache, folds, labels[unit.mode], digest[unit.mode], (run_dir, out), device)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    return 0
