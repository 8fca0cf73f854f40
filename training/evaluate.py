"""``ich-model evaluate``: run the exported ensemble on a CT-ICH folder and write a JSON report.

What runs is exactly what the gateway's embedded engine runs: :class:`ich.ensemble.EnsembleRunner` on the
repository's ONNX files, fed by :func:`ich.preprocess.preprocess_volume` at the repository's input size.
Patients are read, preprocessed and scored one at a time; only per-slice scores and Dice counts are kept, so
memory does not grow with the number of patients.

Definitions (also written into the report's ``definitions``):

* slice label: the slice has hemorrhage in ``hemorrhage_diagnosis.csv`` or in its mask; slice score:
  the ensemble's ``SLICE_PROB`` (max of FUSED after the weight model's opening).
* case = patient; case label = any positive slice; case score = max slice score.
* sensitivity/specificity: ``score >= threshold`` (0.5) is positive.
* AUC intervals: 500 bootstrap replicates resampling patients (see :mod:`ich.metrics`), 95%, seed 0.
* Dice: FUSED > 0.5 (``spec.MASK_THRESHOLD``) against the ground-truth mask, both at the model input size
  (the mask is resized with the same area-averaging resize as the image channels and thresholded at 0.5).
  ``dice``: per-slice Dice on slices with hemorrhage in the ground truth, averaged per patient, then over
  patients (Hssayeni et al. 2020); ``dice_micro``: pooled over those slices; ``dice_by_patient``: each
  patient's own mean (the ensemble's only), since a mean over a handful of patients hides which ones fail.
* base model ``k`` alone: its PROB map goes through the *same* post-processing as the ensemble by feeding it
  to all five inputs of ``ich_weighting``: the weights sum to one, so FUSED equals that map and SLICE_PROB
  is its opened maximum. Its Dice uses PROB > 0.5.
* ``delong.<k>``: DeLong's paired test of the ensemble's AUC against model ``k``'s, on slices and on cases;
  ``z > 0`` means the ensemble is higher. The slice-level test ignores that slices cluster in patients.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from ich import metrics, repository, spec
from ich.ensemble import EnsembleRunner
from ich.preprocess import preprocess_volume, resize_channel

logger = logging.getLogger(__name__)

_REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SPLIT_FILE = _REPO_ROOT / "training" / "configs" / "split.json"


def default_repository() -> Path:
    """The checkout's ``model_repository/`` (beside ``training/``), else ``./model_repository``."""
    beside = _REPO_ROOT / "model_repository"
    return beside if beside.is_dir() else Path.cwd() / "model_repository"
ENSEMBLE = "ensemble"
_DEFINITIONS_HEADING = "Definitions (also written into the report's ``definitions``):"


def _subtype_names() -> tuple[str, ...]:
    from training.data.ct_ich import SUBTYPES

    return SUBTYPES


@dataclass
class _Scores:
    """Per-slice results of one scorer (the ensemble or one base model), appended patient by patient."""

    slice_prob: list[np.ndarray] = field(default_factory=list)
    dice_counts: list[np.ndarray] = field(default_factory=list)

    def add(self, prob: np.ndarray, counts: np.ndarray) -> None:
        self.slice_prob.append(np.asarray(prob, dtype=np.float64).reshape(-1))
        self.dice_counts.append(counts)

    def probs(self) -> np.ndarray:
        return np.concatenate(self.slice_prob)

    def counts(self) -> np.ndarray:
        return np.concatenate(self.dice_counts)


@dataclass
class _Collected:
    """Everything the report needs, gathered without keeping any image."""

    patients: list[str] = field(default_factory=list)  # per slice
    labels: list[np.ndarray] = field(default_factory=list)  # per slice, 0/1
    subtypes: list[np.ndarray] = field(default_factory=list)  # per slice, [N, 5]
    scorers: dict[str, _Scores] = field(
        default_factory=lambda: {name: _Scores() for name in (ENSEMBLE, *spec.MODEL_KEYS)}
    )


class _BaseAlone:
    """The weight model's ONNX fed one base map on all five inputs: that map's post-processed maximum."""

    def __init__(self, root: Path, intra_op_threads: int | None) -> None:
        options = ort.SessionOptions()
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
        path = repository.step_model_file(root, spec.WEIGHTING_MODEL)
        self._session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._inputs = [spec.WEIGHTING_INPUTS[key] for key in spec.MODEL_KEYS]

    def slice_prob(self, prob_map: np.ndarray) -> np.ndarray:
        """``[N, 1, S, S]`` -> ``[N]``."""
        feeds = {name: prob_map for name in self._inputs}
        fused, slice_prob = self._session.run([spec.FUSED, spec.SLICE_PROB], feeds)
        drift = float(np.max(np.abs(fused - prob_map)))
        if drift > 1e-4:  # weights that do not sum to one would make this a different post-processing
            logger.warning("weight model does not reproduce a single map (max drift %.3g)", drift)
        return np.asarray(slice_prob).reshape(-1)


def resize_masks(masks: np.ndarray, size: int) -> np.ndarray:
    """Ground-truth masks ``[N, H, W]`` -> ``[N, S, S]`` bool with the images' resize, thresholded at 0.5."""
    return np.stack([resize_channel(m.astype(np.float32), size) >= 0.5 for m in masks])


def _patient_key(value: str) -> str:
    """Compare patient ids by number when numeric, so "49", "049" and 49 in a split file all match."""
    value = value.strip()
    return str(int(value)) if value.isdigit() else value


def match_patients(requested: Sequence[str], available: Sequence[str]) -> list[str]:
    """Folder names of the ``requested`` patients, in request order.

    Raises:
        ValueError: some requested patients have no folder.
    """
    folders = {_patient_key(name): name for name in available}
    absent = [p for p in requested if _patient_key(p) not in folders]
    if absent:
        raise ValueError(f"patients not found: {', '.join(absent)}")
    return [folders[_patient_key(p)] for p in requested]


def patients_from_split(split_file: Path, subset: str) -> list[str]:
    """Patient ids of ``subset`` in a split file: ``{"val": [...]}`` or ``{"subsets": {"val": [...]}}``.

    Raises:
        ValueError: the file has no such subset.
    """
    data = json.loads(Path(split_file).read_text(encoding="utf-8"))
    holder = data.get("subsets", data) if isinstance(data, dict) else {}
    ids = holder.get(subset) if isinstance(holder, dict) else None
    if not isinstance(ids, list) or not ids:
        raise ValueError(f"{split_file}: no patient list for subset {subset!r}")
    return [str(v) for v in ids]


def collect(
    data: Path,
    runner: EnsembleRunner,
    base_alone: _BaseAlone,
    patients: Sequence[str],
) -> _Collected:
    """Score every patient (one at a time) with the ensemble and each base model alone."""
    from training.data.ct_ich import read_labels, read_patient

    csv_path = data / "hemorrhage_diagnosis.csv"
    labels = {}
    if csv_path.is_file():
        try:
            labels = read_labels(csv_path)
        except (KeyError, ValueError) as exc:  # a column missing or a malformed number
            logger.warning("%s is unusable (%s): slice labels come from the masks only", csv_path.name, exc)
    else:
        logger.warning("no %s in %s: slice labels come from the masks only", csv_path.name, data)
    size = runner.input_size
    out = _Collected()
    for i, pid in enumerate(patients, 1):
        patient = read_patient(data, pid, labels.get(pid))
        images = preprocess_volume(patient.hu, size)
        truth = resize_masks(patient.masks, size)
        result = runner.run(images)
        n = images.shape[0]
        out.patients.extend([pid] * n)
        out.labels.append(patient.slice_labels)
        out.subtypes.append(patient.subtypes)
        fused_mask = result.fused[:, 0] > spec.MASK_THRESHOLD
        out.scorers[ENSEMBLE].add(result.slice_prob, metrics.slice_dice_counts(fused_mask, truth))
        for key in spec.MODEL_KEYS:
            prob_map = result.probs[key]
            out.scorers[key].add(
                base_alone.slice_prob(prob_map),
                metrics.slice_dice_counts(prob_map[:, 0] > spec.MASK_THRESHOLD, truth),
            )
        logger.info("patient %d/%d: %d slices", i, len(patients), n)
    return out


def _num(value: float) -> float | None:
    """JSON-safe float rounded to 6 places (``None`` for nan, which JSON cannot hold)."""
    return None if math.isnan(value) else round(float(value), 6)


def _auc_block(
    labels: np.ndarray, scores: np.ndarray, groups: np.ndarray | None, args: Any
) -> dict[str, Any]:
    """AUC with its patient-bootstrap interval, sensitivity and specificity of one scorer at one level."""
    sens, spec_ = metrics.sensitivity_specificity(labels, scores, args.threshold)
    block: dict[str, Any] = {
        "n": int(labels.size),
        "n_positive": int(labels.sum()),
        "auc": None,
        "auc_ci": None,
        "sensitivity": _num(sens),
        "specificity": _num(spec_),
    }
    if 0 < labels.sum() < labels.size:
        block["auc"] = _num(metrics.roc_auc(labels, scores))
        ci = metrics.bootstrap_auc_ci(labels, scores, groups, n_boot=args.bootstrap, seed=args.seed)
        block["auc_ci"] = [_num(ci.low), _num(ci.high)]
        block["bootstrap_replicates"] = ci.replicates
    return block


def _delong(labels: np.ndarray, ensemble: np.ndarray, other: np.ndarray) -> dict[str, Any] | None:
    try:
        res = metrics.delong_test(labels, ensemble, other)
    except ValueError:
        return None
    z = None if math.isinf(res.z) else _num(res.z)
    return {"z": z, "p": _num(res.p), "auc_ensemble": _num(res.auc_a), "auc_model": _num(res.auc_b)}


def _case_scores(
    patients: np.ndarray, labels: np.ndarray, probs: np.ndarray
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Case = patient: label = any positive slice, score = max slice score."""
    ids, inverse = np.unique(patients, return_inverse=True)
    case_prob = np.full(ids.size, -np.inf)
    np.maximum.at(case_prob, inverse, probs)
    case_label = np.zeros(ids.size, dtype=np.int64)
    np.maximum.at(case_label, inverse, labels)
    return [str(i) for i in ids], case_label, case_prob


def build_report(col: _Collected, args: Any) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """The report dict and, per scorer, the arrays the ROC plot needs."""
    patients = np.asarray(col.patients)
    labels = np.concatenate(col.labels).astype(np.int64)
    subtypes = np.concatenate(col.subtypes)
    report: dict[str, Any] = {}
    curves: dict[str, dict[str, np.ndarray]] = {}
    for name, scorer in col.scorers.items():
        probs = scorer.probs()
        ids, case_label, case_prob = _case_scores(patients, labels, probs)
        dice = metrics.dice_summary(scorer.counts(), patients)
        block = {
            "slice": _auc_block(labels, probs, patients, args),
            "case": _auc_block(case_label, case_prob, None, args),
            "dice": _num(dice.per_patient),
            "dice_micro": _num(dice.micro),
            "dice_slices": dice.n_slices,
            "dice_patients": dice.n_patients,
        }
        curves[name] = {"slice_labels": labels, "slice_prob": probs, "case_labels": case_label,
                        "case_prob": case_prob}
        if name == ENSEMBLE:
            report.update(block)
            report["per_subtype"] = _per_subtype(subtypes, probs, args.threshold)
            report["cases"] = {"ids": ids, "labels": case_label, "probs": case_prob}
            report["dice_by_patient"] = {k: _num(v) for k, v in dice.by_patient.items()}
        else:
            report.setdefault("models", {})[name] = block
    ens = curves[ENSEMBLE]
    report["delong"] = {
        key: {
            "slice": _delong(labels, ens["slice_prob"], curves[key]["slice_prob"]),
            "case": _delong(ens["case_labels"], ens["case_prob"], curves[key]["case_prob"]),
        }
        for key in spec.MODEL_KEYS
    }
    return report, curves


def _per_subtype(subtypes: np.ndarray, probs: np.ndarray, threshold: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for j, name in enumerate(_subtype_names()):
        rows = subtypes[:, j] > 0
        n = int(rows.sum())
        sens = float((probs[rows] >= threshold).mean()) if n else float("nan")
        out[name.lower()] = {"sensitivity": _num(sens), "n_slices": n}
    return out


def plot_roc(curves: dict[str, dict[str, np.ndarray]], path: Path) -> None:
    """Slice- and case-level ROC curves of the ensemble and each base model, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 5), dpi=110)
    for ax, level in zip(axes, ("slice", "case"), strict=True):
        for name, arrays in curves.items():
            y, s = arrays[f"{level}_labels"], arrays[f"{level}_prob"]
            if not 0 < y.sum() < y.size:
                continue
            fpr, tpr, _ = metrics.roc_curve(y, s)
            auc = metrics.roc_auc(y, s)
            style = {"lw": 2.4, "color": "black"} if name == ENSEMBLE else {"lw": 1.2, "alpha": 0.8}
            ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})", **style)
        ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
        ax.set(title=f"{level}-level ROC", xlabel="1 - specificity", ylabel="sensitivity",
               xlim=(0, 1), ylim=(0, 1.01))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right", fontsize=8)
        else:
            ax.text(0.5, 0.5, "undefined: one class only", ha="center", va="center")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_predictions(cases: dict[str, Any], path: Path) -> None:
    """Case-level predictions CSV (``case``, ``probability``, ``label``): the input of ``review select``."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["case", "probability", "label"])
        for case, prob, label in zip(cases["ids"], cases["probs"], cases["labels"], strict=True):
            writer.writerow([case, f"{float(prob):.6f}", int(label)])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``ich-model evaluate``."""
    parser.add_argument("--data", type=Path, required=True, help="folder in CT-ICH layout (Patients_CT/...)")
    parser.add_argument("--out", type=Path, required=True, help="report JSON to write")
    parser.add_argument("--repository", type=Path, default=None,
                        help="model repository (default: the project's model_repository/)")
    chosen = parser.add_mutually_exclusive_group()
    chosen.add_argument("--patients", nargs="+", default=None, help="patient ids (default: all in --data)")
    chosen.add_argument("--subset", default=None, help="subset of --split-file to evaluate, e.g. val")
    parser.add_argument("--split-file", type=Path, default=DEFAULT_SPLIT_FILE,
                        help="patient split JSON used with --subset (default: training/configs/split.json)")
    parser.add_argument("--threshold", type=float, default=0.5, help="decision threshold (default: 0.5)")
    parser.add_argument("--bootstrap", type=int, default=500, help="bootstrap replicates (default: 500)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")


def run(args: argparse.Namespace) -> int:
    """Evaluate and write the report, the ROC PNG and the predictions CSV beside it; 0 on success."""
    from training.data.ct_ich import list_patients

    data = Path(args.data)
    try:
        available = list_patients(data)
        if args.subset:
            patients = match_patients(patients_from_split(args.split_file, args.subset), available)
        elif args.patients:
            patients = match_patients(args.patients, available)
        else:
            patients = available
        if not patients:
            raise ValueError(f"no patients in {data}")
        root = args.repository or default_repository()
        runner = EnsembleRunner.from_repository(root, intra_op_threads=args.threads)
        base_alone = _BaseAlone(root, args.threads)
    except (OSError, ValueError, repository.RepositoryError) as exc:
        logger.error("%s", exc)
        return 2
    logger.info("evaluating %d patients at input size %d", len(patients), runner.input_size)
    try:
        collected = collect(data, runner, base_alone, patients)
    except (OSError, ValueError, KeyError) as exc:  # unreadable image, malformed CSV row
        logger.error("cannot evaluate %s: %s", data, exc)
        return 1
    report, curves = build_report(collected, args)
    cases = report.pop("cases")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    roc_path = out.with_name(out.stem + "_roc.png")
    pred_path = out.with_name(out.stem + "_predictions.csv")
    report["meta"] = {
        "model_version": runner.model_version,
        "input_size": runner.input_size,
        "patients": len(patients),
        "slices": len(collected.patients),
        "threshold": args.threshold,
        "bootstrap_replicates": args.bootstrap,
        "bootstrap_seed": args.seed,
        "subset": args.subset,
        "roc_plot": roc_path.name,
        "predictions": pred_path.name,
    }
    report["definitions"] = (__doc__ or "").split(_DEFINITIONS_HEADING)[-1].strip()
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    plot_roc(curves, roc_path)
    write_predictions(cases, pred_path)
    logger.info(
        "slice AUC %s %s, case AUC %s %s, Dice %s (micro %s) -> %s",
        report["slice"]["auc"], report["slice"]["auc_ci"], report["case"]["auc"], report["case"]["auc_ci"],
        report["dice"], report["dice_micro"], out,
    )
    return 0
