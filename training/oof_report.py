"""``ich-model cv-report``: out-of-fold records, the cross-fitted figures, and the case model to ship.

From a cross-validation run (:mod:`training.cv`) it writes, into ``--out`` (committed, the record the model
card is made from):

- ``cases.csv``, ``slices.csv``, ``lesions.csv``, ``lesion_slices.csv`` (:mod:`training.records`);
- ``report.json``: every figure, each from out-of-fold predictions, and every choice made after training
  (lesion model, calibration, threshold, band) cross-fitted over the same folds (``training.case_model``);
- ``reliability.png``, ``roc.png`` and ``uncertainty.png`` (each case's probability and uncertainty, the
  wrong calls marked);
- ``case_model.json``: the case model fitted on all out-of-fold records, with its subtype model
  (``training.subtype_model``) inside, which ``ich-model export`` copies into ``model_repository/``.

The subtype figures (per-subtype AUCs with intervals, the counts they rest on, or why a subtype is not
measured) and the uncertainty figures (does a wrong call come with a high uncertainty?) are in
``report.json`` under ``subtypes`` and ``uncertainty``; the subtype models are cross-fitted with the very
case models of each fold (``training.case_model.cross_fit_with``).

:func:`build_report` reads only records, so evaluation (``ich-model evaluate``) and this command report the
same figures the same way.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ich import spec
from ich.scoring import CaseModel, model_pixel_mm
from ich.subtypes import SUBTYPES
from training import metrics
from training.calibration import (
    brier_score,
    expected_calibration_error,
    operating_point,
    reliability_bins,
    reliability_diagram,
    roc_diagram,
)
from training.case_model import (
    DecisionTargets,
    ScoredCase,
    cross_fit,
    cross_fit_with,
    fit_case_model,
    kept_dice_counts,
)
from training.records import (
    CasePrediction,
    Records,
    case_records,
    subtype_label_column,
    subtypes_from_ct_ich,
)
from training.subtype_model import (
    MIN_POSITIVE_CASES,
    ScoredSubtypes,
    apply_subtype_model,
    has_subtype_inputs,
    slice_probabilities,
    with_subtypes,
)
from training.uncertainty_figure import uncertainty_diagram

logger = logging.getLogger(__name__)

BOOTSTRAP = 1000
SEED = 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``ich-model cv-report``."""
    parser.add_argument("--run-dir", type=Path, default=Path("runs/cv-default"), help="an ich-model cv run")
    parser.add_argument("--data", type=Path, default=None, help="CT-ICH folder (for the pixel spacing)")
    parser.add_argument("--out", type=Path, default=Path("training/cv/default"), help="records and report")
    parser.add_argument("--records-only", action="store_true", help="reuse --out's records (no run needed)")


# ------------------------------------------------------------------------------------------- records
def run_records(run_dir: Path, data: Path, earlier: Records | None = None) -> Records:
    """Records of every finished fold of a cross-validation run.

    A fold without out-of-fold maps in ``run_dir`` takes its rows from ``earlier`` (the committed records of
    the same folds) when they hold it: the folds of a long recipe can run in different sessions and
    checkouts, and only the records of each finished fold are kept.
    """
    from training.config import load_config
    from training.cv import OOF_FILE
    from training.data.ct_ich import read_patient
    from training.train import build_cache

    cfg = load_config(run_dir / "config.toml")
    size, opening = cfg.run.size, cfg.weight.opening
    cache = build_cache(data, size, run_dir / f"cache_{size}.npz")
    folds = json.loads((run_dir / "folds.json").read_text())["folds"]
    out = Records()
    for k, patients in enumerate(folds):
        path = run_dir / f"fold_{k}" / OOF_FILE
        if not path.exists():
            kept = earlier.of_fold(k) if earlier is not None else Records()
            if kept.cases:
                logger.info("cv-report: fold %d from the earlier records (%d cases)", k, len(kept.cases))
                out.extend(kept)
            else:
                logger.warning("cv-report: fold %d has no out-of-fold predictions yet", k)
            continue
        z = np.load(path)
        for pid in patients:
            rows = np.flatnonzero(z["pids"] == pid)
            patient = read_patient(data, pid)
            hu_shape = (int(patient.hu.shape[1]), int(patient.hu.shape[2]))
            spacing = (patient.pixel_spacing_mm, patient.pixel_spacing_mm)
            pixel_mm = model_pixel_mm(spacing, hu_shape, size)
            cache_rows = z["rows"][rows]
            out.extend(
                case_records(
                    CasePrediction(
                        case_id=pid,
                        fold=k,
                        fused=z["fused"][rows],
                        probs=z["probs"][rows],
                        slice_prob=z["slice_prob"][rows],
                        images=cache.images[cache_rows],
                        truth=cache.masks[cache_rows, 0] > 0,
                        slice_labels=cache.table.positive[cache_rows].astype(np.int64),
                        pixel_mm=pixel_mm,
                        voxel_ml=pixel_mm[0] * pixel_mm[1] * patient.slice_thickness_mm / 1000.0,
                        opening=opening,
                        slice_subtypes=subtypes_from_ct_ich(
                            cache.table.subtypes[cache_rows], cache.table.positive[cache_rows]
                        ),
                    )
                )
            )
    return out


# ------------------------------------------------------------------------------------------- figures
def _num(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else round(float(value), 4)


def _auc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray | None) -> dict[str, Any]:
    if not 0 < labels.sum() < labels.size:
        return {"n": int(labels.size), "n_positive": int(labels.sum()), "auc": None, "auc_ci": None}
    ci = metrics.bootstrap_auc_ci(labels, scores, groups, n_boot=BOOTSTRAP, seed=SEED)
    return {
        "n": int(labels.size),
        "n_positive": int(labels.sum()),
        "auc": _num(metrics.roc_auc(labels, scores)),
        "auc_ci": [_num(ci.low), _num(ci.high)],
    }


def _proportion(k: int, n: int) -> dict[str, Any]:
    """A proportion with its exact (Clopper-Pearson) 95% interval: few cases, so no normal approximation."""
    from scipy.stats import binomtest

    if n == 0:
        return {"value": None, "k": 0, "n": 0, "ci": None}
    ci = binomtest(k, n).proportion_ci(0.95, method="exact")
    return {"value": _num(k / n), "k": k, "n": n, "ci": [_num(ci.low), _num(ci.high)]}


def _dice(counts: np.ndarray, cases: np.ndarray) -> dict[str, Any]:
    d = metrics.dice_summary(counts, cases)
    return {
        "per_patient": _num(d.per_patient),
        "micro": _num(d.micro),
        "patients": d.n_patients,
        "by_patient": {k: _num(v) for k, v in d.by_patient.items()},
    }


def _slice_arrays(records: Records) -> dict[str, np.ndarray]:
    s = records.slices
    out = {
        "case": np.array([str(r["case"]) for r in s]),
        "label": np.array([int(r["label"]) for r in s]),
        "ensemble": np.array([float(r["slice_prob"]) for r in s]),
        "truth": np.array([int(r["truth_voxels"]) for r in s]),
        "candidate_inter": np.array([int(r["candidate_inter"]) for r in s]),
        "candidate_voxels": np.array([int(r["candidate_voxels"]) for r in s]),
    }
    for key in spec.MODEL_KEYS:
        out[key] = np.array([float(r[f"prob_{key}"]) for r in s])
        out[f"inter_{key}"] = np.array([int(r[f"inter_{key}"]) for r in s])
        out[f"voxels_{key}"] = np.array([int(r[f"voxels_{key}"]) for r in s])
    return out


def _case_max(cases: np.ndarray, scores: np.ndarray, order: list[str]) -> np.ndarray:
    best = {c: -np.inf for c in order}
    for c, v in zip(cases.tolist(), scores.tolist(), strict=True):
        best[c] = max(best[c], v)
    return np.array([best[c] for c in order])


def _delong(labels: np.ndarray, ensemble: np.ndarray, other: np.ndarray) -> dict[str, Any] | None:
    """DeLong's paired test (z > 0: the ensemble higher); ``None`` with fewer than two of each class.

    On slices it treats slices as independent, which they are not within a patient: read it as indicative.
    """
    try:
        res = metrics.delong_test(labels, ensemble, other)
    except ValueError:
        return None
    return {"z": None if math.isinf(res.z) else _num(res.z), "p": _num(res.p)}


def _base_models(sl: dict[str, np.ndarray], ids: list[str], case_y: np.ndarray) -> dict[str, Any]:
    """The paper's comparison: each base model alone and the ensemble's slice score against each."""
    out: dict[str, Any] = {}
    for key in ("ensemble", *spec.MODEL_KEYS):
        block: dict[str, Any] = {
            "slice": _auc(sl["label"], sl[key], sl["case"]),
            "case_max_slice": _auc(case_y, _case_max(sl["case"], sl[key], ids), None),
        }
        if key != "ensemble":
            counts = np.stack([sl[f"inter_{key}"], sl[f"voxels_{key}"], sl["truth"]], axis=1)
            block["dice_candidates"] = _dice(counts, sl["case"])["per_patient"]
            block["delong_slice_vs_ensemble"] = _delong(sl["label"], sl["ensemble"], sl[key])
        out[key] = block
    return out


def _decision(scored: list[ScoredCase]) -> dict[str, Any]:
    y = np.array([s.label for s in scored])
    detected = np.array([s.detected for s in scored])
    tp, fn = int((detected & (y == 1)).sum()), int((~detected & (y == 1)).sum())
    tn, fp = int((~detected & (y == 0)).sum()), int((detected & (y == 0)).sum())
    return {
        "sensitivity": _proportion(tp, tp + fn),
        "specificity": _proportion(tn, tn + fp),
        "normal_heads_flagged_per_10": _num(10 * fp / max(1, tn + fp)),
        "indeterminate": _proportion(int(sum(s.indeterminate for s in scored)), len(scored)),
        "missed_cases": [str(s.case) for s in scored if s.label == 1 and not s.detected],
        "flagged_normal_cases": [str(s.case) for s in scored if s.label == 0 and s.detected],
    }


def _subtype_block(
    records: Records, scored: list[ScoredSubtypes], models: list[CaseModel], subtype: str
) -> dict[str, Any]:
    column = subtype_label_column(subtype)
    positives = {
        "positive_cases": sum(int(r.get(column) or 0) for r in records.cases),
        "positive_slices": sum(int(r.get(column) or 0) for r in records.slices),
    }
    reasons = [
        (m.subtypes.not_measured.get(subtype) if m.subtypes else "not measured: no subtype model")
        for m in models
    ]
    missing = [r for r in reasons if r]
    if missing:
        n = positives["positive_cases"]
        if not has_subtype_inputs(records):
            reason = missing[0]
        elif n < MIN_POSITIVE_CASES:
            reason = f"not measured: {n} positive cases (fewer than {MIN_POSITIVE_CASES})"
        else:
            reason = f"{missing[0]}, in {len(missing)} of {len(models)} fitted models"
        return {"measured": False, "reason": reason, **positives}
    y = np.array([int(r[column]) for r in records.cases])
    p = np.array([float(s.probabilities[subtype] or 0.0) for s in scored])
    slice_y = np.array([int(r[column]) for r in records.slices])
    slice_cases = np.array([str(r["case"]) for r in records.slices])
    return {
        "measured": True,
        "reason": None,
        **positives,
        "case": _auc(y, p, None),
        "slice": _auc(slice_y, slice_probabilities(records, scored, subtype), slice_cases),
        "brier": _num(brier_score(p, y)),
        "ece": _num(expected_calibration_error(p, y, bins=10)),
    }


def subtype_figures(
    records: Records, scored: list[ScoredSubtypes], models: list[CaseModel]
) -> dict[str, Any]:
    """Per subtype: case and slice AUC with intervals, calibration, the counts; or why it is not measured.

    ``models``: the case models that scored the cases (one per fold when cross-fitted); a subtype is
    measured only when every one of them fitted it.
    """
    return {s: _subtype_block(records, scored, models, s) for s in SUBTYPES}


def _thirds(u: np.ndarray, wrong: np.ndarray) -> list[dict[str, Any]]:
    order = np.argsort(u, kind="stable")
    out = []
    for part in np.array_split(order, 3):
        if len(part):
            out.append(
                {
                    "uncertainty": [_num(float(u[part].min())), _num(float(u[part].max()))],
                    "wrong": _proportion(int(wrong[part].sum()), len(part)),
                }
            )
    return out


def uncertainty_figures(
    scored: list[ScoredCase], thresholds: list[float], out: Path | None = None
) -> dict[str, Any]:
    """Whether wrong calls concentrate among uncertain cases (out of fold).

    ``thresholds``: each scored case's threshold (its fold's). Reports the AUC of the uncertainty for "the
    call is wrong", beside the AUC of the closeness of the probability to the threshold (what the band
    uses), and the share of wrong calls in each third of the cases by uncertainty.
    """
    if not scored or any(s.uncertainty is None for s in scored):
        return {"measured": False, "reason": "the records carry no base-model spread"}
    u = np.array([float(s.uncertainty or 0.0) for s in scored])
    p = np.array([s.probability for s in scored])
    wrong = np.array([int(s.detected != bool(s.label)) for s in scored])
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        uncertainty_diagram(p, u, wrong.astype(bool), out / "uncertainty.png")
    return {
        "measured": True,
        "definition": "spread (standard deviation) of the five base models' peak probabilities on the "
        "lesion that decided the case; without a candidate, on the slice with the highest SLICE_PROB",
        "wrong_calls": int(wrong.sum()),
        "auc_for_wrong_call": _auc(wrong, u, None),
        "closeness_to_threshold_auc_for_wrong_call": _auc(wrong, -np.abs(p - np.array(thresholds)), None),
        "by_third": _thirds(u, wrong),
        "median_uncertainty": {
            "wrong": _num(float(np.median(u[wrong == 1]))) if wrong.any() else None,
            "right": _num(float(np.median(u[wrong == 0]))) if (wrong == 0).any() else None,
        },
    }


def _calibration(p: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Brier score, expected calibration error and the reliability bins of case probabilities."""
    return {
        "brier": _num(brier_score(p, y)),
        "ece": _num(expected_calibration_error(p, y, bins=10)),
        "bins": [b.__dict__ for b in reliability_bins(p, y, bins=10)],
    }


def _case_rows(scored: list[ScoredCase], max_slice: np.ndarray) -> list[dict[str, Any]]:
    """One row per case: its fold, label, both case scores, the decision and the uncertainty."""
    return [
        {
            "case": s.case,
            "fold": s.fold,
            "label": s.label,
            "probability": _num(s.probability),
            "max_slice_probability": _num(float(m)),
            "detected": s.detected,
            "indeterminate": s.indeterminate,
            "uncertainty": None if s.uncertainty is None else _num(s.uncertainty),
        }
        for s, m in zip(scored, max_slice, strict=True)
    ]


def figures(
    records: Records,
    scored: list[ScoredCase],
    out: Path | None = None,
    subtypes: tuple[list[ScoredSubtypes], list[CaseModel]] | None = None,
    thresholds: list[float] | None = None,
) -> dict[str, Any]:
    """Every figure of ``records`` under the decisions ``scored`` (one per case, ``records.cases`` order).

    ``out``: the folder for ``reliability.png``, ``roc.png`` and ``uncertainty.png`` (none written when
    ``None``). ``subtypes``: the cases' subtype probabilities and the case models that gave them (no
    subtype figures without). ``thresholds``: each case's threshold (default 0.5).
    """
    ids = [str(s.case) for s in scored]
    y = np.array([s.label for s in scored])
    p = np.array([s.probability for s in scored])
    max_slice = np.array([float(r["max_slice_probability"]) for r in records.cases])
    sl = _slice_arrays(records)
    kept = kept_dice_counts(records, scored)
    report: dict[str, Any] = {
        "patients": len(ids),
        "patients_with_hemorrhage": int(y.sum()),
        "slices": len(records.slices),
        "case": {
            "ich_probability": _auc(y, p, None),
            "max_slice_probability": _auc(y, max_slice, None),
            "max_slice_probability_at_0.5": operating_point(max_slice, y, 0.5),
        },
        "operating_point": _decision(scored),
        "calibration": _calibration(p, y),
        "dice": {
            "kept_lesions": _dice(kept, sl["case"]),
            "candidates": _dice(
                np.stack([sl["candidate_inter"], sl["candidate_voxels"], sl["truth"]], axis=1), sl["case"]
            ),
        },
        "models": _base_models(sl, ids, y),
        "cases": _case_rows(scored, max_slice),
        "uncertainty": uncertainty_figures(scored, thresholds or [0.5] * len(scored), out),
        "subtypes": None if subtypes is None else subtype_figures(records, *subtypes),
    }
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        reliability_diagram(p, y, out / "reliability.png", title="Case probability: reliability")
        if 0 < y.sum() < y.size:  # a ROC needs both classes
            roc_diagram(p, y, out / "roc.png", title="Case ROC")
    return report


def build_report(records: Records, targets: DecisionTargets, out: Path | None = None) -> dict[str, Any]:
    """The cross-validation report: case-model choices cross-fitted over the records' folds."""
    scored, fold_models = cross_fit(records, targets)
    by_fold = dict(zip(sorted({int(r["fold"]) for r in records.cases}), fold_models, strict=True))
    subtypes = cross_fit_with(
        records, lambda training, fold: with_subtypes(by_fold[fold], training), apply_subtype_model
    )
    thresholds = [by_fold[s.fold].threshold for s in scored]
    report = figures(records, scored, out, (subtypes[0], subtypes[1]), thresholds)
    report["folds"] = len(fold_models)
    report["targets"] = targets.__dict__
    report["operating_point"]["thresholds_by_fold"] = [_num(m.threshold) for m in fold_models]
    report["operating_point"]["bands_by_fold"] = [[_num(m.band[0]), _num(m.band[1])] for m in fold_models]
    return report


def _earlier_records(out: Path, run_dir: Path) -> Records | None:
    """``out``'s records when they were made on the run's very folds (else none: rows would not match)."""
    folds = out / "folds.json"
    if not (out / "cases.csv").is_file() or not folds.is_file():
        return None
    if json.loads(folds.read_text())["folds"] != json.loads((run_dir / "folds.json").read_text())["folds"]:
        logger.warning("cv-report: %s holds records of other folds; they are not reused", out)
        return None
    return Records.read(out)


def run(args: argparse.Namespace) -> int:
    """Write the records, the report, the figures and the case model."""
    from training.config import load_config

    if args.records_only:
        records = Records.read(args.out)
        cfg = load_config(args.out / "config.toml")
    else:
        if args.data is None:
            logger.error("cv-report: --data is needed to read the run's records (or --records-only)")
            return 2
        records = run_records(args.run_dir, args.data, _earlier_records(args.out, args.run_dir))
        records.write(args.out)
        cfg = load_config(args.run_dir / "config.toml")
        (args.out / "config.toml").write_bytes((args.run_dir / "config.toml").read_bytes())
        (args.out / "folds.json").write_bytes((args.run_dir / "folds.json").read_bytes())
    targets = cfg.decision_targets()
    report = build_report(records, targets, args.out)
    (args.out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    shipped = with_subtypes(
        fit_case_model(records, targets, {"fitted_on": "every out-of-fold record", "folds": report["folds"]}),
        records,
    )
    if shipped.subtypes is not None and not shipped.subtypes.fits:
        # nothing measured: no subtype part at all, so the result's `subtypes` is null rather than all-null
        shipped = replace(shipped, subtypes=None)
    shipped.save(args.out / "case_model.json")
    op = report["operating_point"]
    logger.info(
        "cv-report: %d patients; case AUC %s (max slice %s), sensitivity %s, specificity %s, ECE %s, Dice %s",
        report["patients"],
        report["case"]["ich_probability"]["auc"],
        report["case"]["max_slice_probability"]["auc"],
        op["sensitivity"]["value"],
        op["specificity"]["value"],
        report["calibration"]["ece"],
        report["dice"]["kept_lesions"]["per_patient"],
    )
    return 0
