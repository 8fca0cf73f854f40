"""``ich-model train``: the five base models and the weight model, each a resumable step.

Steps run in the order of :data:`training.seeds.STEP_ORDER` (``all, subtype, sdh, sah, small, weight``),
each configured by its table of the validated config (:mod:`training.config`). The specialists and the
subtype model start from the best weights of the step their ``init`` names (transfer learning: far fewer
iterations). Each step trains a fixed number of iterations (seeded per iteration, :mod:`training.seeds`, so
a resumed step sees the same batches), evaluates on the validation patients every ``eval_every`` iterations
and keeps the best checkpoint by slice AUC + case AUC + Dice. A step may mine hard negatives
(``hard_negatives``, see :class:`training.config.HardNegatives`).
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ich.preprocess import preprocess_volume, resize_channel
from ich.scoring import candidate_mask
from ich.spec import MODEL_KEYS
from training import metrics
from training.allocator import keep_freed_memory
from training.amp import warn_if_bf16_emulated
from training.augment import augment_batch, paste_lesions, scanner_augment
from training.config import (
    ConfigError,
    NetworkConfig,
    StepConfig,
    TrainingConfig,
    WeightConfig,
    load_config,
)
from training.data.ct_ich import read_dataset
from training.losses import dice_bce_loss, dice_loss, slice_bce_loss
from training.networks import (
    InceptionUNet,
    WeightModel,
    load_checkpoint,
    save_checkpoint,
    slice_probability,
)
from training.seeds import STEP_ORDER, batch_generator, step_seed
from training.selections import SliceTable, load_or_make_split, selection_indices

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
    # written aside and renamed: processes that share a run folder (training/gpu.sh's parallel folds) either
    # find the whole cache or none
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(
        tmp,
        images=img,
        masks=msk,
        pids=table.pids,
        subtypes=table.subtypes,
        positive=table.positive,
        mask_pixels=table.mask_pixels,
        volumes=json.dumps(vols),
    )
    tmp.replace(path)
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

    Dice is :func:`training.metrics.dice_summary` of :func:`training.metrics.slice_dice_counts`, the code the
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
def _lr(it: int, total: int, peak: float, warmup: int) -> float:
    if it < warmup:
        return peak * (it + 1) / warmup
    progress = (it - warmup) / max(1, total - warmup)
    return peak * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def hardest_negatives(
    model: InceptionUNet, images: np.ndarray, neg: np.ndarray, pool: int, batch: int, device: str = "cpu"
) -> tuple[np.ndarray, int]:
    """(the ``pool`` negatives the model scores highest, sorted; how many score above 0.5).

    Scores with :meth:`InceptionUNet.logits` (one pass, no test-time flip): cheaper, and the ranking is what
    matters. Why mine at all: :class:`training.config.HardNegatives`.
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


@dataclass(frozen=True)
class BaseStep:
    """What one base model's step trains on and how: fixed for the whole step (:func:`prepare_base_step`)."""

    name: str
    cfg: StepConfig
    cache: Cache
    pos: np.ndarray  # training slices with hemorrhage of the step's selection
    neg: np.ndarray  # training slices without
    neg_weights: torch.Tensor | None
    val_idx: np.ndarray  # validation slices (none: nothing is selected, the last weights are kept)
    seed: int
    opening: int
    eval_batch: int
    device: str
    amp: bool
    step_dir: Path

    @property
    def has_val(self) -> bool:
        return len(self.val_idx) > 0

    def lr(self, it: int) -> float:
        return _lr(it, self.cfg.iterations, self.cfg.lr, self.cfg.warmup)


@dataclass
class Progress:
    """What a step's ``last.pt`` keeps besides the weights, plus the losses since the last checkpoint."""

    iteration: int = 0
    best: dict[str, Any] = field(default_factory=lambda: {"score": -1.0})
    history: list[dict[str, Any]] = field(default_factory=list)
    hard: np.ndarray | None = None  # the mined hard negatives (None until the first mining)
    losses: list[float] = field(default_factory=list)
    t0: float = field(default_factory=time.time)


def prepare_base_step(
    name: str,
    cfg: StepConfig,
    cache: Cache,
    split: dict[str, list[str]],
    run_dir: Path,
    seed: int,
    opening: int,
    eval_batch: int,
    device: str,
    amp: bool,
) -> BaseStep:
    """The step's training slices (its selection; ``subtype`` trains on ``all``'s) and validation slices."""
    step_dir = run_dir / name
    step_dir.mkdir(parents=True, exist_ok=True)
    pos, neg = selection_indices(cache.table, "all" if name == "subtype" else name, split["train"])
    sampling = Sampling(cfg.negative_fraction, cfg.edge_negative_weight)
    return BaseStep(
        name=name,
        cfg=cfg,
        cache=cache,
        pos=pos,
        neg=neg,
        neg_weights=negative_weights(cache, neg, sampling),
        val_idx=np.flatnonzero(np.isin(cache.table.pids, split["val"])),
        seed=seed,
        opening=opening,
        eval_batch=eval_batch,
        device=device,
        amp=amp,
        step_dir=step_dir,
    )


def build_base_model(
    step: BaseStep, network: NetworkConfig, run_dir: Path
) -> tuple[InceptionUNet, torch.optim.Optimizer]:
    """The seeded network (from the ``init`` step's best weights if it names one) and its optimiser."""
    torch.manual_seed(step.seed)
    model = InceptionUNet(**network.model_dump())
    if step.cfg.init:
        model.load_state_dict(load_checkpoint(run_dir / step.cfg.init / "best.pt").state_dict())
    # channels_last: oneDNN's convolutions run about 10% faster in this layout; the values are unchanged.
    model.to(step.device)
    model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stubs omit it
    return model, torch.optim.Adam(model.parameters(), lr=step.cfg.lr)


def resume_base_step(step: BaseStep, model: InceptionUNet, opt: torch.optim.Optimizer) -> Progress:
    """The progress of ``last.pt`` (weights and optimiser restored into ``model`` and ``opt``), or a start."""
    last = step.step_dir / "last.pt"
    if not last.exists():
        return Progress()
    ck = torch.load(last, map_location="cpu", weights_only=False)
    model.load_state_dict(ck["state_dict"])
    opt.load_state_dict(ck["optimizer"])
    logger.info("step %s: resumed at iteration %d", step.name, ck["iteration"])
    return Progress(ck["iteration"], ck["best"], ck["history"], ck.get("hard_negatives"))


def save_base_progress(
    step: BaseStep, model: InceptionUNet, opt: torch.optim.Optimizer, progress: Progress
) -> None:
    """``last.pt``: what :func:`resume_base_step` reads back."""
    state = {
        "state_dict": model.state_dict(),
        "optimizer": opt.state_dict(),
        "iteration": progress.iteration,
        "best": progress.best,
        "history": progress.history,
        "hard_negatives": progress.hard,
    }
    torch.save(state, step.step_dir / "last.pt")


def pretrain_subtype_classifier(step: BaseStep, model: InceptionUNet) -> None:
    """``cls_iterations`` of the encoder as a 5-label subtype classifier, before segmentation starts."""
    copt = torch.optim.Adam(
        list(model.stem.parameters()) + list(model.down.parameters()) + list(model.cls_head.parameters()),
        lr=step.cfg.lr,
    )
    subs = torch.from_numpy(step.cache.table.subtypes.astype(np.float32))
    model.train()
    for it in range(step.cfg.cls_iterations):
        gen = batch_generator(step.seed, it, "classify")
        x, _, idx = _batch(step.cache, step.pos, step.neg, step.cfg.batch, gen)
        logits = model.classify(x.to(step.device))
        loss = F.binary_cross_entropy_with_logits(logits, subs[idx].to(step.device))
        copt.zero_grad()
        loss.backward()
        copt.step()
        if (it + 1) % 25 == 0:
            logger.info("step %s: subtype classifier it %d loss %.4f", step.name, it + 1, loss.item())


def mine_if_due(step: BaseStep, model: InceptionUNet, it: int, progress: Progress) -> None:
    """Refresh the hard-negative pool at the iterations ``hard_negatives`` asks for."""
    mining = step.cfg.hard_negatives
    if mining is None or it < mining.start or (it - mining.start) % mining.every:
        return
    images, neg = step.cache.images, step.neg
    hard, n_false = hardest_negatives(model, images, neg, mining.pool, step.eval_batch, step.device)
    progress.hard = hard
    logger.info("step %s it %d: mined %d hard negatives; %d of %d negatives score above 0.5",
                step.name, it, len(hard), n_false, len(neg))
    model.train()


def sample_batch(
    step: BaseStep, it: int, hard: np.ndarray | None, donors: tuple[torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Iteration ``it``'s augmented batch (images, masks), drawn from its own seeded generator."""
    cfg, gen = step.cfg, batch_generator(step.seed, it)
    hard_fraction = cfg.hard_negatives.fraction if cfg.hard_negatives else 0.0
    x, y, _ = _batch(
        step.cache, step.pos, step.neg, cfg.batch, gen, hard, hard_fraction, cfg.negative_fraction,
        step.neg_weights,
    )
    x, y = paste_lesions(x, y, donors[0], donors[1], cfg.augment.paste, gen)
    x, y = augment_batch(x, y, cfg.augment, gen)
    return scanner_augment(x, cfg.augment, gen), y


def optimisation_step(
    step: BaseStep,
    model: InceptionUNet,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    it: int,
) -> float:
    """One Adam step on Dice + BCE (+ the slice term) at the scheduled learning rate; returns the loss."""
    cfg = step.cfg
    for g in opt.param_groups:
        g["lr"] = step.lr(it)
    with torch.autocast(device_type=step.device.split(":")[0], dtype=torch.bfloat16, enabled=step.amp):
        logits = model.logits(x.to(step.device, memory_format=torch.channels_last))
    y = y.to(step.device)
    loss = dice_bce_loss(logits.float(), y, cfg.bce_weight, cfg.dice)
    if cfg.slice_bce > 0:
        loss = loss + cfg.slice_bce * slice_bce_loss(logits.float(), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def validate(step: BaseStep, model: InceptionUNet, it: int, progress: Progress) -> None:
    """Score the model on the validation patients, log it, keep it as ``best.pt`` if it is the best yet."""
    cache = step.cache
    maps = predict_maps(model, cache.images[step.val_idx], step.eval_batch, step.device)
    fig = evaluate_maps(maps, cache, step.val_idx, step.opening)
    rate = (time.time() - progress.t0) / max(1, len(progress.losses))  # training + evaluation, per iteration
    progress.history.append({"iteration": it + 1, "loss": float(np.mean(progress.losses)), **fig})
    logger.info(
        "step %s it %d/%d loss %.4f lr %.2e | val slice AUC %.3f case AUC %.3f Dice %.3f | %.2f s/it",
        step.name, it + 1, step.cfg.iterations, np.mean(progress.losses), step.lr(it), fig["slice_auc"],
        fig["case_auc"], fig["dice"], rate,
    )
    if criterion(fig) > progress.best["score"]:
        progress.best = {"score": criterion(fig), "iteration": it + 1, **fig}
        save_checkpoint(step.step_dir / "best.pt", "unet", model, step=step.name, iteration=it + 1, val=fig)


def log_without_validation(step: BaseStep, model: InceptionUNet, it: int, progress: Progress) -> None:
    """Log the loss; at the last iteration the model is the step's ``best.pt`` (nothing is selected)."""
    iters = step.cfg.iterations
    progress.history.append({"iteration": it + 1, "loss": float(np.mean(progress.losses))})
    logger.info("step %s it %d/%d loss %.4f lr %.2e | %.2f s/it", step.name, it + 1, iters,
                np.mean(progress.losses), step.lr(it), (time.time() - progress.t0) / len(progress.losses))
    if it + 1 == iters:
        progress.best = {"score": float("nan"), "iteration": iters}
        save_checkpoint(step.step_dir / "best.pt", "unet", model, step=step.name, iteration=iters, val={})


def train_unet_step(
    name: str,
    cfg: StepConfig,
    network: NetworkConfig,
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
    step = prepare_base_step(name, cfg, cache, split, run_dir, seed, opening, eval_batch, device, amp)
    logger.info("step %s: %d positive / %d negative training slices, %d iterations",
                name, len(step.pos), len(step.neg), cfg.iterations)
    model, opt = build_base_model(step, network, run_dir)
    progress = resume_base_step(step, model, opt)
    if progress.iteration == 0 and cfg.cls_iterations > 0:
        pretrain_subtype_classifier(step, model)
    donors = step.pos if cfg.augment.paste > 0 else np.zeros(0, dtype=int)
    donor_maps = (
        torch.from_numpy(cache.images[donors].astype(np.float32)),
        torch.from_numpy(cache.masks[donors].astype(np.float32)),
    )
    progress.t0 = time.time()
    for it in range(progress.iteration, cfg.iterations):
        model.train()
        mine_if_due(step, model, it, progress)
        x, y = sample_batch(step, it, progress.hard, donor_maps)
        progress.losses.append(optimisation_step(step, model, opt, x, y, it))
        if (it + 1) % cfg.eval_every == 0 or it + 1 == cfg.iterations:
            (validate if step.has_val else log_without_validation)(step, model, it, progress)
            progress.iteration, progress.t0, progress.losses = it + 1, time.time(), []
            save_base_progress(step, model, opt, progress)
    result = {"step": name, "best": progress.best, "history": progress.history}
    (step.step_dir / "done.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


# --------------------------------------------------------------------------------------- weight step
@dataclass(frozen=True)
class WeightData:
    """The weight model's slices and the frozen base models' maps of them ([N, 5, S, S], MODEL_KEYS order)."""

    train_idx: np.ndarray  # every training slice with hemorrhage, and a seeded subsample of the others
    val_idx: np.ndarray
    train_maps: np.ndarray
    val_maps: np.ndarray

    @property
    def has_val(self) -> bool:
        return len(self.val_idx) > 0


def weight_training_rows(
    cache: Cache, split: dict[str, list[str]], seed: int, negatives_per_positive: int
) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, validation rows) of the weight model."""
    pos, neg = selection_indices(cache.table, "all", split["train"])
    rng = np.random.default_rng(seed)
    neg_sub = np.sort(rng.choice(neg, size=min(len(neg), negatives_per_positive * len(pos)), replace=False))
    return np.concatenate([pos, neg_sub]), np.flatnonzero(np.isin(cache.table.pids, split["val"]))


def weight_data(
    cfg: WeightConfig, cache: Cache, split: dict[str, list[str]], run_dir: Path, seed: int,
    eval_batch: int, device: str,
) -> WeightData:
    """The rows and the base models' maps, predicted once and kept in ``<run>/weight/maps.npz``."""
    train_idx, val_idx = weight_training_rows(cache, split, seed, cfg.negatives_per_positive)
    maps_path = run_dir / "weight" / "maps.npz"
    if maps_path.exists():
        z = np.load(maps_path)
        return WeightData(train_idx, val_idx, z["train"], z["val"])
    tr, va = [], []
    for key in MODEL_KEYS:
        base = load_checkpoint(run_dir / key / "best.pt").to(device)
        tr.append(predict_maps(base, cache.images[train_idx], eval_batch, device))
        va.append(predict_maps(base, cache.images[val_idx], eval_batch, device))
    tr_maps, va_maps = np.concatenate(tr, axis=1), np.concatenate(va, axis=1)
    np.savez(maps_path, train=tr_maps, val=va_maps)
    return WeightData(train_idx, val_idx, tr_maps, va_maps)


def _log_figures(what: str, fig: dict[str, float]) -> None:
    logger.info("weight: %s val slice AUC %.3f case AUC %.3f Dice %.3f",
                what, fig["slice_auc"], fig["case_auc"], fig["dice"])


def member_figures(
    data: WeightData, cache: Cache, opening: int
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Validation figures of each base model and of their plain mean (empty without validation patients)."""
    if not data.has_val:
        return {}, {}
    va = data.val_maps
    per_model = {
        key: evaluate_maps(va[:, i : i + 1], cache, data.val_idx, opening) for i, key in enumerate(MODEL_KEYS)
    }
    mean_fig = evaluate_maps(va.mean(axis=1, keepdims=True), cache, data.val_idx, opening)
    for key, fig in per_model.items():
        _log_figures(f"base {key}", fig)
    _log_figures("plain mean", mean_fig)
    return per_model, mean_fig


def _members(maps: torch.Tensor) -> list[torch.Tensor]:
    return [maps[:, i : i + 1] for i in range(len(MODEL_KEYS))]


def weight_iteration(
    model: WeightModel, opt: torch.optim.Optimizer, cfg: WeightConfig, tensors: dict[str, torch.Tensor],
    seed: int, it: int,
) -> torch.Tensor:
    """One Adam step on a seeded batch: Dice of the fused map + ``slice_bce`` x BCE of the slice score."""
    model.train()
    gen = batch_generator(seed, it, "weight")
    b = torch.randint(len(tensors["maps"]), (cfg.batch,), generator=gen)
    _, fused, sp = model(*_members(tensors["maps"][b]))
    loss = dice_loss(fused, tensors["masks"][b], cfg.dice) + cfg.slice_bce * F.binary_cross_entropy(
        sp.clamp(1e-6, 1 - 1e-6), tensors["labels"][b]
    )
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss


def validate_weight_model(
    model: WeightModel, data: WeightData, cache: Cache, loss: torch.Tensor, it: int
) -> dict[str, float]:
    """Validation figures of the fused map, logged with the mean weight of each base model."""
    model.eval()
    with torch.no_grad():
        w, fused, sp = model(*_members(torch.from_numpy(data.val_maps.astype(np.float32))))
    fig = val_figures(sp[:, 0].numpy(), candidate_mask(fused[:, 0].numpy()), cache, data.val_idx)
    logger.info(
        "weight it %d loss %.4f | val slice AUC %.3f case AUC %.3f Dice %.3f | mean weights %s",
        it + 1, loss.item(), fig["slice_auc"], fig["case_auc"], fig["dice"],
        np.round(w.mean(0).numpy(), 3).tolist(),
    )
    return fig


def train_weight_step(
    cfg: WeightConfig,
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
    data = weight_data(cfg, cache, split, run_dir, seed, eval_batch, device)
    per_model, mean_fig = member_figures(data, cache, cfg.opening)
    torch.manual_seed(seed)
    model = WeightModel(hidden=cfg.hidden, opening=cfg.opening)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    tensors = {
        "labels": torch.from_numpy(cache.table.positive[data.train_idx].astype(np.float32))[:, None],
        "masks": torch.from_numpy(cache.masks[data.train_idx].astype(np.float32)),
        "maps": torch.from_numpy(data.train_maps.astype(np.float32)),
    }
    # The ensemble must detect at least as well as its best member (slice AUC), see weight_selection_key.
    floor = max((float(np.nan_to_num(fig["slice_auc"])) for fig in per_model.values()), default=0.0)
    best: dict[str, Any] = {"score": -1.0}
    history, best_pt = [], step_dir / "best.pt"
    for it in range(cfg.iterations):
        loss = weight_iteration(model, opt, cfg, tensors, seed, it)
        if data.has_val and ((it + 1) % cfg.eval_every == 0 or it == 0):
            fig = validate_weight_model(model, data, cache, loss, it)
            history.append({"iteration": it + 1, "loss": loss.item(), **fig})
            first = "iteration" not in best
            if first or weight_selection_key(fig, floor) > weight_selection_key(best, floor):
                best = {"score": criterion(fig), "iteration": it + 1, **fig}
                save_checkpoint(best_pt, "weight", model, step="weight", iteration=it + 1, val=fig)
    if not data.has_val:
        best = {"score": float("nan"), "iteration": cfg.iterations}
        save_checkpoint(best_pt, "weight", model, step="weight", iteration=cfg.iterations, val={})
    result = {"step": "weight", "best": best, "history": history}
    result |= {"base_models": per_model, "plain_mean": mean_fig}
    (step_dir / "done.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


# ------------------------------------------------------------------------------------------------ run
def unconfigured_steps(cfg: TrainingConfig, wanted: list[str]) -> list[str]:
    """The base steps among ``wanted`` that the config has no ``[steps.<name>]`` table for."""
    return [name for name in wanted if name != "weight" and name not in cfg.steps]


def run(args: argparse.Namespace) -> int:
    """Run (or resume) every step of the config; finished steps are skipped."""
    try:
        cfg = load_config(args.config)
    except ConfigError as err:
        logger.error("train: %s", err)
        return 2
    wanted = args.steps.split(",") if args.steps else list(STEP_ORDER)
    if sorted(set(wanted) - set(STEP_ORDER)):
        logger.error("train: --steps %s: the steps are %s", args.steps, ", ".join(STEP_ORDER))
        return 2
    if missing := unconfigured_steps(cfg, wanted):
        tables = ", ".join(f"[steps.{m}]" for m in missing)
        logger.error("train: %s has no %s (asked for by --steps)", args.config, tables)
        return 2
    run_dir = args.run_dir or Path("runs") / cfg.run.name
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    try:
        return _run(args, cfg, run_dir, wanted)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


def train_steps(
    cfg: TrainingConfig,
    cache: Cache,
    split: dict[str, list[str]],
    run_dir: Path,
    wanted: list[str],
    device: str,
) -> dict[str, Any]:
    """Run (or resume) the ``wanted`` steps, in :data:`STEP_ORDER`; finished steps are read back."""
    rc = cfg.run
    results: dict[str, Any] = {}
    for name in STEP_ORDER:
        done = run_dir / name / "done.json"
        if name not in wanted:
            if done.exists():  # keep finished steps in the summary
                results[name] = json.loads(done.read_text())
            continue
        if done.exists():
            logger.info("step %s already done, skipped", name)
            results[name] = json.loads(done.read_text())
            continue
        t0, seed = time.time(), step_seed(rc.seed, name)
        if name == "weight":
            results[name] = train_weight_step(cfg.weight, cache, split, run_dir, seed, rc.eval_batch, device)
        else:
            results[name] = train_unet_step(
                name, cfg.steps[name], cfg.network, cache, split, run_dir, seed, cfg.select_opening,
                rc.eval_batch, device, rc.amp == "bf16",
            )
        logger.info("step %s finished in %.1f min", name, (time.time() - t0) / 60)
    return results


def patients_split(cfg: TrainingConfig, table: SliceTable) -> dict[str, list[str]]:
    """Training and validation patients: every patient trains when ``val_patients`` is 0."""
    rc = cfg.run
    if rc.val_patients == 0:  # nothing is selected on patients
        return {"val": [], "train": sorted(set(table.pids.tolist()))}
    return load_or_make_split(rc.split_path, table, rc.val_patients, rc.seed)


def _run(args: argparse.Namespace, cfg: TrainingConfig, run_dir: Path, wanted: list[str]) -> int:
    """The body of :func:`run`, with the run's log file attached."""
    rc = cfg.run
    torch.set_num_threads(rc.threads)
    keep_freed_memory()  # about 20% faster CPU steps, same numbers (see training.allocator)
    device = rc.resolved_device()
    warn_if_bf16_emulated(rc.amp, device)
    logger.info("train: config %s, run dir %s, size %d, seed %d, device %s",
                args.config, run_dir, rc.size, rc.seed, device)
    (run_dir / "config.toml").write_bytes(args.config.read_bytes())
    cache = build_cache(args.data, rc.size, run_dir / f"cache_{rc.size}.npz")
    split = patients_split(cfg, cache.table)
    (run_dir / "split.json").write_text(json.dumps(split, indent=1) + "\n")
    logger.info("split: %d training, %d validation patients", len(split["train"]), len(split["val"]))
    results = train_steps(cfg, cache, split, run_dir, wanted, device)
    summary = {k: {"best": v["best"]} for k, v in results.items()}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    logger.info("train: done; summary in %s", run_dir / "summary.json")
    return 0
