"""``ich-model train``: the five base models and the weight model, each a resumable step.

Steps run in order ``all, subtype, sdh, sah, small, weight``, after any auxiliary step of the config
(:func:`training.selections.step_plan`). The specialists and the subtype model start from the best weights
of the step their ``init`` names (transfer learning: far fewer iterations). Each step trains a fixed number
of iterations (seeded per iteration, so a resumed step sees the same batches), evaluates on the validation
patients every ``eval_every`` iterations and keeps the best checkpoint by slice AUC + case AUC +
Dice. A step may mine hard negatives (``hard_negatives``, see :class:`HardNegatives`).
Output: ``<run>/<step>/best.pt`` (see ``training.networks.load_checkpoint``), ``<run>/<step>/last.pt``
(resume), ``<run>/<step>/done.json`` (a finished step is skipped), ``<run>/split.json``,
``<run>/summary.json`` and ``<run>/train.log``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F

from ich import metrics
from ich.preprocess import preprocess_volume, resize_channel
from ich.scoring import candidate_mask
from ich.spec import MODEL_KEYS
from training.allocator import keep_freed_memory
from training.augment import AugmentConfig, augment_batch, paste_lesions, scanner_augment
from training.data.ct_ich import read_dataset
from training.losses import DICE_MODES, DiceMode, dice_bce_loss, dice_loss, slice_bce_loss
from training.networks import (
    InceptionUNet,
    WeightModel,
    load_checkpoint,
    save_checkpoint,
    slice_probability,
)
from training.selections import SliceTable, load_or_make_split, selection_indices, step_plan

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``ich-model train``."""
    parser.add_argument("--data", type=Path, required=True, help="CT-ICH folder (Patients_CT/, csv)")
    parser.add_argument("--config", type=Path, default=Path("training/configs/default.toml"))
    parser.add_argument("--run-dir", type=Path, default=None, help="default: runs/<config run.name>")
    parser.add_argument("--steps", default=None, help="comma-separated subset of steps to run")


# ----------------------------------------------------------------------------------------------- data
@dataclass
class Cache:
    """Preprocessed slices at model size, plus the slice table."""

    images: np.ndarray  # [M, 4, S, S] float16
    masks: np.ndarray  # [M, 1, S, S] uint8
    table: SliceTable


def build_cache(data: Path, size: int, path: Path) -> Cache:
    """Read and preprocess the whole data set once (the slow part), store it as ``.npz``."""
    if path.exists():
        z = np.load(path, allow_pickle=False)
        cached_vols: dict[str, float] = json.loads(str(z["volumes"]))
        table = SliceTable(z["pids"], z["subtypes"], z["positive"], z["mask_pixels"], cached_vols)
        return Cache(z["images"], z["masks"], table)
    t0 = time.time()
    images, masks, pids, subs, pos = [], [], [], [], []
    vols: dict[str, float] = {}
    for patient in read_dataset(data):
        images.append(preprocess_volume(patient.hu, size).astype(np.float16))
        m = np.stack([resize_channel(mk.astype(np.float32), size) >= 0.5 for mk in patient.masks])
        masks.append(m[:, None].astype(np.uint8))
        pids += [patient.pid] * len(patient.slice_numbers)
        subs.append(patient.subtypes)
        pos.append(patient.slice_labels.astype(bool))
        vols[patient.pid] = patient.lesion_volume_ml
    img, msk = np.concatenate(images), np.concatenate(masks)
    table = SliceTable(
        np.asarray(pids), np.concatenate(subs), np.concatenate(pos), msk.reshape(len(msk), -1).sum(1), vols
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        path,
        images=img,
        masks=msk,
        pids=table.pids,
        subtypes=table.subtypes,
        positive=table.positive,
        mask_pixels=table.mask_pixels,
        volumes=json.dumps(vols),
    )
    logger.info(
        "cached %d slices of %d patients at %d px in %.0f s", len(img), len(vols), size, time.time() - t0
    )
    return Cache(img, msk, table)


# ------------------------------------------------------------------------------------------- metrics
def _auc(y: np.ndarray, s: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else float("nan")


def val_figures(
    slice_prob: np.ndarray, pred_masks: np.ndarray, cache: Cache, idx: np.ndarray
) -> dict[str, float]:
    """Slice AUC, case AUC (case = max slice), Dice per patient: the evaluation's definitions.

    Dice is :func:`ich.metrics.dice_summary` of :func:`ich.metrics.slice_dice_counts`, the code the
    evaluation and the cross-validation report use; ``pred_masks`` is the candidate mask
    (:func:`ich.scoring.candidate_mask` of the map).
    """
    t = cache.table
    y = t.positive[idx].astype(int)
    pids = t.pids[idx]
    cases = sorted(set(pids.tolist()))
    case_y = np.array([y[pids == p].max() for p in cases])
    case_s = np.array([slice_prob[pids == p].max() for p in cases])
    dice = metrics.dice_summary(metrics.slice_dice_counts(pred_masks, cache.masks[idx, 0] > 0), pids)
    return {
        "slice_auc": _auc(y, slice_prob),
        "case_auc": _auc(case_y, case_s),
        "dice": dice.per_patient,
    }


@torch.no_grad()
def predict_maps(model: torch.nn.Module, images: np.ndarray, batch: int, device: str = "cpu") -> np.ndarray:
    """[M, 4, S, S] -> [M, 1, S, S] float16 probability maps."""
    model.eval()
    if len(images) == 0:
        return np.zeros((0, 1, *images.shape[2:]), dtype=np.float16)
    out = [
        model(torch.from_numpy(images[i : i + batch].astype(np.float32)).to(device))
        .cpu()
        .numpy()
        .astype(np.float16)
        for i in range(0, len(images), batch)
    ]
    return np.concatenate(out)


def evaluate_maps(maps: np.ndarray, cache: Cache, idx: np.ndarray, opening: int) -> dict[str, float]:
    """Figures of one set of maps (a base model's or the fused one)."""
    t = torch.from_numpy(maps.astype(np.float32))
    sp = slice_probability(t, opening)[:, 0].numpy()
    return val_figures(sp, candidate_mask(maps[:, 0]), cache, idx)


def criterion(fig: dict[str, float]) -> float:
    """Checkpoint selection: slice AUC + case AUC + Dice (NaN counts as 0).

    Case AUC is in because a case is only as good as its worst slice: checkpoints with the same slice AUC
    differed by up to 0.14 in case AUC on the validation patients, through one or two confident false foci.
    """
    return float(sum(np.nan_to_num(fig[key]) for key in ("slice_auc", "case_auc", "dice")))


def weight_selection_key(fig: dict[str, float], floor: float) -> tuple[bool, float]:
    """Weight-model checkpoint order: first whether slice AUC reaches ``floor``, then :func:`criterion`.

    ``floor`` is the best single base model's validation slice AUC. Why: fusing is only worth its cost if
    the ensemble detects at least as well as its best member; with an ``all`` model trained for Dice, the
    weight model learned to lean on it (mean weight 0.5) and bought about +0.01 Dice with -0.01 slice AUC,
    below the best member, and the plain sum :func:`criterion` took that trade. Iteration 1 (the plain mean
    of the five maps) is always a candidate.
    """
    return bool(np.nan_to_num(fig["slice_auc"]) >= floor), criterion(fig)


# ---------------------------------------------------------------------------------------- base steps
def _dice_mode(cfg: dict[str, Any]) -> DiceMode:
    """A step's Dice convention (``dice = "batch" | "per_slice" | "mixed"``), checked before it starts."""
    mode = cfg.get("dice", "batch")
    if mode not in DICE_MODES:
        raise ValueError(f"dice = {mode!r} in the config: expected one of {DICE_MODES}")
    return cast(DiceMode, mode)


def _lr(it: int, total: int, peak: float, warmup: int) -> float:
    if it < warmup:
        return peak * (it + 1) / warmup
    progress = (it - warmup) / max(1, total - warmup)
    return peak * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclass(frozen=True)
class HardNegatives:
    """Hard-negative mining of one step (``hard_negatives = {...}`` in its config table).

    From iteration ``start`` on, every ``every`` iterations, the current network scores every training
    negative (max of its map) and the ``pool`` highest become the hard pool; then ``fraction`` of each
    batch's negative half is drawn from that pool, the rest from all negatives. Why: sampled uniformly,
    the normal slices rarely show the few structures (skull base, vault, calcifications) that set off a
    confident false focus, and one such focus makes a normal case positive (case = max slice).
    """

    start: int = 0
    every: int = 200
    pool: int = 200
    fraction: float = 0.5


@torch.no_grad()
def hardest_negatives(
    model: InceptionUNet, images: np.ndarray, neg: np.ndarray, pool: int, batch: int, device: str = "cpu"
) -> tuple[np.ndarray, int]:
    """(the ``pool`` negatives the model scores highest, sorted; how many score above 0.5).

    Scores with :meth:`InceptionUNet.logits` (one pass, no test-time flip): cheaper, and the ranking is what
    matters.
    """
    model.eval()
    chunks = []
    for i in range(0, len(neg), batch):
        x = torch.from_numpy(images[neg[i : i + batch]].astype(np.float32)).to(device)
        chunks.append(torch.amax(model.logits(x), dim=(1, 2, 3)).cpu().numpy())
    scores = np.concatenate(chunks)
    order = np.argsort(-scores, kind="stable")
    return np.sort(neg[order[:pool]]), int((scores > 0).sum())


@dataclass(frozen=True)
class Sampling:
    """How a step fills its batches with normal slices (``negative_fraction``, ``edge_negative_weight``).

    ``negative_fraction`` of each batch is normal slices (the paper balances 1:1; more normal slices teach
    the network what a normal head looks like, the false positives' cure). Normal slices at the vertex and
    the skull base (brain area below half the patient's largest, see :func:`edge_slices`) are drawn
    ``edge_negative_weight`` times as often as the others: there the brain is a small disc inside bone or
    lies beside the petrous bone and the middle cranial fossa, where false foci appear on unseen heads.
    """

    negative_fraction: float = 0.5
    edge_negative_weight: float = 1.0


def edge_slices(cache: Cache, fraction: float = 0.5) -> np.ndarray:
    """[M] bool: slices whose stripped-brain area is below ``fraction`` of their patient's largest."""
    area = (cache.images[:, 3] > 0).reshape(len(cache.images), -1).sum(axis=1).astype(np.float64)
    largest = {p: area[cache.table.pids == p].max() for p in set(cache.table.pids.tolist())}
    top = np.array([largest[p] for p in cache.table.pids.tolist()])
    return area < fraction * np.maximum(top, 1.0)


def _draw(pool: np.ndarray, n: int, gen: torch.Generator, weights: torch.Tensor | None) -> np.ndarray:
    if weights is None:
        return pool[torch.randint(len(pool), (n,), generator=gen).numpy()]
    return pool[torch.multinomial(weights, n, replacement=True, generator=gen).numpy()]


def _batch(
    cache: Cache,
    pos: np.ndarray,
    neg: np.ndarray,
    batch: int,
    gen: torch.Generator,
    hard: np.ndarray | None = None,
    hard_fraction: float = 0.0,
    negative_fraction: float = 0.5,
    neg_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Positives, then ``negative_fraction`` negatives; ``hard_fraction`` of those from the ``hard`` pool."""
    n_pos = batch - round(negative_fraction * batch)
    n_hard = round(hard_fraction * (batch - n_pos)) if hard is not None and len(hard) else 0
    ip = pos[torch.randint(len(pos), (n_pos,), generator=gen).numpy()]
    ineg = _draw(neg, batch - n_pos - n_hard, gen, neg_weights)
    if n_hard:
        assert hard is not None
        ineg = np.concatenate([ineg, hard[torch.randint(len(hard), (n_hard,), generator=gen).numpy()]])
    idx = np.concatenate([ip, ineg])
    x = torch.from_numpy(cache.images[idx].astype(np.float32))
    y = torch.from_numpy(cache.masks[idx].astype(np.float32))
    return x, y, idx


def negative_weights(cache: Cache, neg: np.ndarray, sampling: Sampling) -> torch.Tensor | None:
    """Sampling weights of the negatives (``None``: uniform, the draws of a config without the option)."""
    if sampling.edge_negative_weight == 1.0:
        return None
    edge = edge_slices(cache)[neg]
    return torch.from_numpy(np.where(edge, sampling.edge_negative_weight, 1.0))


def _validate(
    name: str,
    model: InceptionUNet,
    val_images: np.ndarray,
    val_idx: np.ndarray,
    cache: Cache,
    opening: int,
    eval_batch: int,
    device: str,
    it: int,
    iters: int,
    schedule: tuple[float, int],
    losses: list[float],
    t0: float,
    history: list[dict[str, Any]],
    best: dict[str, Any],
    step_dir: Path,
) -> dict[str, Any]:
    """Score the current model on the validation patients, log it, keep it as ``best.pt`` if it is best."""
    maps = predict_maps(model, val_images, eval_batch, device)
    fig = evaluate_maps(maps, cache, val_idx, opening)
    rate = (time.time() - t0) / max(1, len(losses))  # training + this evaluation, per iteration
    history.append({"iteration": it + 1, "loss": float(np.mean(losses)), **fig})
    logger.info(
        "step %s it %d/%d loss %.4f lr %.2e | val slice AUC %.3f case AUC %.3f Dice %.3f | %.2f s/it",
        name, it + 1, iters, np.mean(losses), _lr(it, iters, *schedule), fig["slice_auc"], fig["case_auc"],
        fig["dice"], rate,
    )
    if criterion(fig) > best["score"]:
        best = {"score": criterion(fig), "iteration": it + 1, **fig}
        save_checkpoint(step_dir / "best.pt", "unet", model, step=name, iteration=it + 1, val=fig)
    return best


def train_unet_step(
    name: str,
    cfg: dict[str, Any],
    net_cfg: dict[str, Any],
    cache: Cache,
    split: dict[str, list[str]],
    run_dir: Path,
    seed: int,
    opening: int,
    eval_batch: int,
    device: str = "cpu",
    amp: bool = False,
) -> dict[str, Any]:
    """Train one base model: optional subtype-classifier pre-training, then Dice+BCE segmentation.

    With no validation patients (``split["val"]`` empty: cross-validation folds and the shipped run) nothing
    is selected: the model after the configured number of iterations is the step's ``best.pt``. ``amp``
    runs the forward pass in bfloat16 (CPU autocast; the loss and the weights stay float32): about 1.6x
    faster on CPUs with AVX-512 BF16, and evaluation, export and serving stay float32.
    """
    step_dir = run_dir / name
    step_dir.mkdir(parents=True, exist_ok=True)
    selection = str(cfg.get("selection", name))
    pos, neg = selection_indices(cache.table, "all" if selection == "subtype" else selection, split["train"])
    val_idx = np.flatnonzero(np.isin(cache.table.pids, split["val"]))
    val_images = cache.images[val_idx]
    aug = AugmentConfig(**cfg.get("augment", {}))
    iters, peak, warmup, batch = (
        int(cfg["iterations"]),
        float(cfg["lr"]),
        int(cfg["warmup"]),
        int(cfg["batch"]),
    )
    eval_every = int(cfg["eval_every"])
    sampling = Sampling(
        float(cfg.get("negative_fraction", 0.5)), float(cfg.get("edge_negative_weight", 1.0))
    )
    neg_weights = negative_weights(cache, neg, sampling)
    has_val = len(val_idx) > 0
    mining = HardNegatives(**cfg["hard_negatives"]) if "hard_negatives" in cfg else None
    bce_weight, dice_mode = float(cfg.get("bce_weight", 1.0)), _dice_mode(cfg)
    slice_weight = float(cfg.get("slice_bce", 0.0))
    logger.info(
        "step %s: %d positive / %d negative training slices, %d iterations", name, len(pos), len(neg), iters
    )

    torch.manual_seed(seed)
    model = InceptionUNet(**net_cfg)
    init = cfg.get("init")
    if init:
        model.load_state_dict(load_checkpoint(run_dir / init / "best.pt").state_dict())
    # channels_last: oneDNN's convolutions run about 10% faster in this layout; the values are unchanged.
    model.to(device)
    model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stubs omit it
    opt = torch.optim.Adam(model.parameters(), lr=peak)
    start, best, history = 0, {"score": -1.0}, []
    hard: np.ndarray | None = None
    last = step_dir / "last.pt"
    if last.exists():
        ck = torch.load(last, map_location="cpu", weights_only=False)
        model.load_state_dict(ck["state_dict"])
        opt.load_state_dict(ck["optimizer"])
        start, best, history = ck["iteration"], ck["best"], ck["history"]
        hard = ck.get("hard_negatives")
        logger.info("step %s: resumed at iteration %d", name, start)

    cls_iters = int(cfg.get("cls_iterations", 0))
    if start == 0 and cls_iters > 0:
        # Subtype pre-training: the encoder learns the five subtype labels before segmentation.
        copt = torch.optim.Adam(
            list(model.stem.parameters()) + list(model.down.parameters()) + list(model.cls_head.parameters()),
            lr=peak,
        )
        subs = torch.from_numpy(cache.table.subtypes.astype(np.float32))
        model.train()
        for it in range(cls_iters):
            gen = torch.Generator().manual_seed(seed * 7919 + 100_000 + it)
            x, _, idx = _batch(cache, pos, neg, batch, gen)
            loss = F.binary_cross_entropy_with_logits(model.classify(x.to(device)), subs[idx].to(device))
            copt.zero_grad()
            loss.backward()
            copt.step()
            if (it + 1) % 25 == 0:
                logger.info("step %s: subtype classifier it %d loss %.4f", name, it + 1, float(loss))

    donors = pos if aug.paste > 0 else np.zeros(0, dtype=int)
    donor_img = torch.from_numpy(cache.images[donors].astype(np.float32))
    donor_msk = torch.from_numpy(cache.masks[donors].astype(np.float32))
    t0, losses = time.time(), []
    for it in range(start, iters):
        model.train()
        if mining is not None and it >= mining.start and (it - mining.start) % mining.every == 0:
            hard, n_false = hardest_negatives(model, cache.images, neg, mining.pool, eval_batch, device)
            logger.info("step %s it %d: mined %d hard negatives; %d of %d negatives score above 0.5",
                        name, it, len(hard), n_false, len(neg))
            model.train()
        gen = torch.Generator().manual_seed(seed * 7919 + it)
        x, y, _ = _batch(
            cache, pos, neg, batch, gen, hard, mining.fraction if mining else 0.0,
            sampling.negative_fraction, neg_weights,
        )
        x, y = paste_lesions(x, y, donor_img, donor_msk, aug.paste, gen)
        x, y = augment_batch(x, y, aug, gen)
        x = scanner_augment(x, aug, gen)
        for g in opt.param_groups:
            g["lr"] = _lr(it, iters, peak, warmup)
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=amp):
            logits = model.logits(x.to(device, memory_format=torch.channels_last))
        loss = dice_bce_loss(logits.float(), y.to(device), bce_weight, dice_mode)
        if slice_weight > 0:
            loss = loss + slice_weight * slice_bce_loss(logits.float(), y.to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if (it + 1) % eval_every == 0 or it + 1 == iters:
            if has_val:
                best = _validate(name, model, val_images, val_idx, cache, opening, eval_batch, device,
                                 it, iters, (peak, warmup), losses, t0, history, best, step_dir)
            else:
                history.append({"iteration": it + 1, "loss": float(np.mean(losses))})
                logger.info("step %s it %d/%d loss %.4f lr %.2e | %.2f s/it", name, it + 1, iters,
                            np.mean(losses), _lr(it, iters, peak, warmup), (time.time() - t0) / len(losses))
                if it + 1 == iters:
                    best = {"score": float("nan"), "iteration": iters}
                    save_checkpoint(step_dir / "best.pt", "unet", model, step=name, iteration=iters, val={})
            t0, losses = time.time(), []
            torch.save(
                {
                    "state_dict": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "iteration": it + 1,
                    "best": best,
                    "history": history,
                    "hard_negatives": hard,
                },
                last,
            )
    result = {"step": name, "best": best, "history": history}
    (step_dir / "done.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


# --------------------------------------------------------------------------------------- weight step
def train_weight_step(
    cfg: dict[str, Any],
    cache: Cache,
    split: dict[str, list[str]],
    run_dir: Path,
    seed: int,
    eval_batch: int,
    device: str = "cpu",
) -> dict[str, Any]:
    """Train the WeightModel on cached maps of the frozen base models (training patients only)."""
    step_dir = run_dir / "weight"
    step_dir.mkdir(parents=True, exist_ok=True)
    opening, dice_mode = int(cfg["opening"]), _dice_mode(cfg)  # a bad value fails before the maps
    pos, neg = selection_indices(cache.table, "all", split["train"])
    rng = np.random.default_rng(seed)
    neg_sub = np.sort(
        rng.choice(neg, size=min(len(neg), int(cfg["negatives_per_positive"]) * len(pos)), replace=False)
    )
    train_idx = np.concatenate([pos, neg_sub])
    val_idx = np.flatnonzero(np.isin(cache.table.pids, split["val"]))
    has_val = len(val_idx) > 0  # without validation patients the last iteration is kept (no selection)
    maps_path = step_dir / "maps.npz"
    if maps_path.exists():
        z = np.load(maps_path)
        tr_maps, va_maps = z["train"], z["val"]
    else:
        tr, va = [], []
        for key in MODEL_KEYS:
            base = load_checkpoint(run_dir / key / "best.pt").to(device)
            tr.append(predict_maps(base, cache.images[train_idx], eval_batch, device))
            va.append(predict_maps(base, cache.images[val_idx], eval_batch, device))
        tr_maps, va_maps = np.concatenate(tr, axis=1), np.concatenate(va, axis=1)
        np.savez(maps_path, train=tr_maps, val=va_maps)
    per_model = {
        key: evaluate_maps(va_maps[:, i : i + 1], cache, val_idx, opening)
        for i, key in enumerate(MODEL_KEYS)
        if has_val
    }
    mean_fig = evaluate_maps(va_maps.mean(axis=1, keepdims=True), cache, val_idx, opening) if has_val else {}
    for key, fig in per_model.items():
        logger.info(
            "weight: base %s val slice AUC %.3f case AUC %.3f Dice %.3f",
            key,
            fig["slice_auc"],
            fig["case_auc"],
            fig["dice"],
        )
    if has_val:
        logger.info(
            "weight: plain mean val slice AUC %.3f case AUC %.3f Dice %.3f",
            mean_fig["slice_auc"],
            mean_fig["case_auc"],
            mean_fig["dice"],
        )

    torch.manual_seed(seed)
    model = WeightModel(hidden=int(cfg["hidden"]), opening=opening)
    opt = torch.optim.Adam(model.parameters(), lr=float(cfg["lr"]))
    iters, batch = int(cfg["iterations"]), int(cfg["batch"])
    y_slice = torch.from_numpy(cache.table.positive[train_idx].astype(np.float32))[:, None]
    masks = torch.from_numpy(cache.masks[train_idx].astype(np.float32))
    tmaps = torch.from_numpy(tr_maps.astype(np.float32))
    va_t = torch.from_numpy(va_maps.astype(np.float32))

    def run_val() -> tuple[dict[str, float], np.ndarray]:
        model.eval()
        with torch.no_grad():
            w, fused, sp = model(*[va_t[:, i : i + 1] for i in range(len(MODEL_KEYS))])
        fig = val_figures(sp[:, 0].numpy(), candidate_mask(fused[:, 0].numpy()), cache, val_idx)
        return fig, w.mean(0).numpy()

    # The ensemble must detect at least as well as its best member (slice AUC), see weight_selection_key.
    floor = max((float(np.nan_to_num(fig["slice_auc"])) for fig in per_model.values()), default=0.0)
    best: dict[str, Any] = {"score": -1.0}
    history = []
    for it in range(iters):
        model.train()
        gen = torch.Generator().manual_seed(seed * 7919 + 200_000 + it)
        b = torch.randint(len(train_idx), (batch,), generator=gen)
        _, fused, sp = model(*[tmaps[b, i : i + 1] for i in range(len(MODEL_KEYS))])
        loss = dice_loss(fused, masks[b], dice_mode) + float(cfg["slice_bce"]) * F.binary_cross_entropy(
            sp.clamp(1e-6, 1 - 1e-6), y_slice[b]
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        if has_val and ((it + 1) % int(cfg["eval_every"]) == 0 or it == 0):
            fig, mean_w = run_val()
            history.append({"iteration": it + 1, "loss": float(loss), **fig})
            logger.info(
                "weight it %d loss %.4f | val slice AUC %.3f case AUC %.3f Dice %.3f | mean weights %s",
                it + 1,
                float(loss),
                fig["slice_auc"],
                fig["case_auc"],
                fig["dice"],
                np.round(mean_w, 3).tolist(),
            )
            first = "iteration" not in best
            if first or weight_selection_key(fig, floor) > weight_selection_key(best, floor):
                best = {"score": criterion(fig), "iteration": it + 1, **fig}
                save_checkpoint(
                    step_dir / "best.pt", "weight", model, step="weight", iteration=it + 1, val=fig
                )
    if not has_val:
        best = {"score": float("nan"), "iteration": iters}
        save_checkpoint(step_dir / "best.pt", "weight", model, step="weight", iteration=iters, val={})
    result = {
        "step": "weight",
        "best": best,
        "history": history,
        "base_models": per_model,
        "plain_mean": mean_fig,
    }
    (step_dir / "done.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


# ------------------------------------------------------------------------------------------------ run
def load_config(path: Path) -> dict[str, Any]:
    """Read a TOML training config."""
    with path.open("rb") as fh:
        return tomllib.load(fh)


def run(args: argparse.Namespace) -> int:
    """Run (or resume) every step of the config; finished steps are skipped."""
    cfg = load_config(args.config)
    try:
        plan = step_plan(cfg)
    except ValueError as err:
        logger.error("train: %s", err)
        return 2
    if args.steps and sorted(set(args.steps.split(",")) - set(plan)):
        logger.error("train: --steps %s: this config's steps are %s", args.steps, ", ".join(plan))
        return 2
    rc = cfg["run"]
    run_dir = args.run_dir or Path("runs") / rc["name"]
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    try:
        return _run(args, cfg, run_dir, plan)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


def train_steps(
    cfg: dict[str, Any],
    cache: Cache,
    split: dict[str, list[str]],
    run_dir: Path,
    plan: dict[str, int],
    wanted: list[str],
    device: str,
) -> dict[str, Any]:
    """Run (or resume) the ``wanted`` steps of ``plan`` on ``split``; finished steps are read back."""
    rc = cfg["run"]
    seed = int(rc["seed"])
    opening = int(rc.get("select_opening", cfg["weight"]["opening"]))
    amp = str(rc.get("amp", "none"))
    if amp not in ("none", "bf16"):
        raise ValueError(f"[run] amp = {amp!r}: expected 'none' or 'bf16'")
    results: dict[str, Any] = {}
    for name, offset in plan.items():
        done = run_dir / name / "done.json"
        if name not in wanted:
            if done.exists():  # keep finished steps in the summary
                results[name] = json.loads(done.read_text())
            continue
        if done.exists():
            logger.info("step %s already done, skipped", name)
            results[name] = json.loads(done.read_text())
            continue
        t0 = time.time()
        if name == "weight":
            results[name] = train_weight_step(
                cfg["weight"], cache, split, run_dir, seed + offset, int(rc["eval_batch"]), device
            )
        else:
            results[name] = train_unet_step(
                name,
                cfg["steps"][name],
                cfg["network"],
                cache,
                split,
                run_dir,
                seed + offset,
                opening,
                int(rc["eval_batch"]),
                device,
                amp == "bf16",
            )
        logger.info("step %s finished in %.1f min", name, (time.time() - t0) / 60)
    return results


def _run(args: argparse.Namespace, cfg: dict[str, Any], run_dir: Path, plan: dict[str, int]) -> int:
    """The body of :func:`run`, with the run's log file attached."""
    rc = cfg["run"]
    torch.set_num_threads(int(rc.get("threads", 2)))
    keep_freed_memory()  # about 20% faster CPU steps, same numbers (see training.allocator)
    seed, size = int(rc["seed"]), int(rc["size"])
    device = str(rc.get("device", "cpu"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    logger.info(
        "train: config %s, run dir %s, size %d, seed %d, device %s", args.config, run_dir, size, seed, device
    )
    wanted = args.steps.split(",") if args.steps else list(plan)
    (run_dir / "config.toml").write_bytes(args.config.read_bytes())

    cache = build_cache(args.data, size, run_dir / f"cache_{size}.npz")
    split_file = Path(rc["split_file"]) if rc.get("split_file") else None
    if int(rc.get("val_patients", 0)) == 0:  # every patient trains; nothing is selected on patients
        split = {"val": [], "train": sorted(set(cache.table.pids.tolist()))}
    else:
        split = load_or_make_split(split_file, cache.table, int(rc["val_patients"]), seed)
    (run_dir / "split.json").write_text(json.dumps(split, indent=1) + "\n")
    logger.info("split: %d training, %d validation patients", len(split["train"]), len(split["val"]))

    results = train_steps(cfg, cache, split, run_dir, plan, wanted, device)
    summary = {k: {"best": v["best"]} for k, v in results.items()}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    logger.info("train: done; summary in %s", run_dir / "summary.json")
    return 0
