"""Fitting the case model (``ich.scoring.CaseModel``) on prediction records, and applying it to records.

One fit, on the records of some cases (:func:`fit_case_model`):

1. a logistic regression (scikit-learn, standardised features, L2 with C = 1) on their lesion candidates,
   label "overlaps the ground truth";
2. each case's raw score = its highest lesion probability (:data:`ich.scoring.NO_LESION_SCORE` without one),
   the paper's highest slice probability, or its burden (the lesions' volumes weighted by their
   probabilities, ``ich.scoring.burden_raw``); with ``score = "select"`` the one with the lower Brier score
   in an inner cross-fit over the fitted records' own folds (:func:`select_score`), so that inside
   :func:`cross_fit` even this choice is made on the training folds only;
3. Platt scaling of the raw score against the case label (``training.calibration.fit_platt``): with a few
   dozen cases an isotonic map would be a staircase of a few steps;
4. the threshold: the highest calibrated probability that keeps ``target_sensitivity`` of those cases'
   hemorrhages detected; the indeterminate band around it (``training.calibration.indeterminate_band``);
5. ``keep``: the raw score whose calibrated value is the threshold; a lesion is kept when its probability
   (for the slice score: the highest value of the opened fused map on it) reaches it, for the burden when
   it is among the largest lesions that carry the case's burden to it, so that a case is called positive
   exactly when it holds a kept lesion and the mask shows what made the call.

For the reported figures the fit is cross-fitted over the cross-validation folds (:func:`cross_fit`): the
cases of fold k are scored by a case model fitted on the other folds' out-of-fold records only, so that no
figure comes from a threshold, calibration or lesion model that saw its own case. The shipped case model is
one fit on every out-of-fold record.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

import numpy as np

from ich import spec
from ich.calibration import PlattCalibration, sigmoid
from ich.scoring import (
    FEATURES,
    NO_LESION_SCORE,
    SCORES,
    CaseModel,
    burden_contribution,
    burden_kept,
    burden_raw,
)
from training.calibration import fit_platt, indeterminate_band, threshold_for_sensitivity
from training.records import Records

#: L2 strength of the lesion model (scikit-learn's default): a few hundred candidates, nine features.
LESION_C: float = 1.0


@dataclass(frozen=True)
class DecisionTargets:
    """What the operating point and the band are chosen for (``[decision]`` in the config)."""

    target_sensitivity: float = 0.95
    band_sensitivity: float = 1.0
    band_specificity: float = 0.95
    #: the raw case score: one of ``ich.scoring.SCORES``, or "select" to choose between them inside the
    #: fitted records by an inner cross-fit over their folds (lower Brier score wins)
    score: str = "lesion"
    #: the weight model's opening (pixels), stored with the case model for each lesion's opened peak
    opening: int = 3


def lesion_matrix(rows: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """``(X [L, len(FEATURES)], y [L])`` of lesion rows."""
    x = np.array([[float(r[f]) for f in FEATURES] for r in rows], dtype=np.float64).reshape(-1, len(FEATURES))
    y = np.array([int(r["is_hemorrhage"]) for r in rows], dtype=np.int64)
    return x, y


def fit_lesion_model(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """``(mean, scale, coef, intercept)`` of a standardised L2 logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    if len(set(y.tolist())) < 2:
        raise ValueError("the lesion model needs true and false lesion candidates")
    scaler = StandardScaler().fit(x)
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    model = LogisticRegression(C=LESION_C, max_iter=2000).fit((x - scaler.mean_) / scale, y)
    return scaler.mean_, scale, model.coef_[0], float(model.intercept_[0])


def raw_case_scores(records: Records, lesion_p: np.ndarray) -> dict[Any, float]:
    """Each case's highest lesion probability (``lesion_p`` in ``records.lesions`` order)."""
    scores = {row["case"]: NO_LESION_SCORE for row in records.cases}
    for row, p in zip(records.lesions, lesion_p, strict=True):
        scores[row["case"]] = max(scores[row["case"]], float(p))
    return scores


def subset(records: Records, cases: set[Any]) -> Records:
    """The rows of ``records`` that belong to ``cases``."""
    return Records(
        **{
            name: [r for r in getattr(records, name) if r["case"] in cases]
            for name in ("cases", "slices", "lesions", "lesion_slices")
        }
    )


def _keep_for(threshold: float, platt: PlattCalibration) -> float:
    """The lowest raw score whose Platt-calibrated value reaches ``threshold``.

    The closed-form inverse ``sigmoid((logit(threshold) - b) / a)`` can land an ulp above the raw score of
    the case that set the threshold, which would then be called positive with no kept lesion. The map is
    non-decreasing, so a bisection over the float64 values of [0, 1] (ordered like their bit patterns)
    finds the exact boundary: ``raw >= keep`` exactly when ``platt.apply(raw) >= threshold``.
    """
    if platt.apply(0.0) >= threshold:
        return 0.0
    lo, hi = 0, int(np.float64(1.0).view(np.int64))  # platt.apply(1.0) >= threshold: some case reached it
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if platt.apply(float(np.int64(mid).view(np.float64))) >= threshold:
            hi = mid
        else:
            lo = mid
    return float(np.int64(hi).view(np.float64))


def _contributions(records: Records, lesion_p: np.ndarray) -> dict[Any, list[tuple[int, float]]]:
    """Each case's lesions with their share of the burden (``ich.scoring.burden_contribution``)."""
    out: dict[Any, list[tuple[int, float]]] = {row["case"]: [] for row in records.cases}
    for row, p in zip(records.lesions, lesion_p, strict=True):
        out.setdefault(row["case"], []).append(
            (int(row["lesion"]), burden_contribution(float(p), float(row["volume_ml"])))
        )
    return out


def _raw_scores(records: Records, kind: str, lesion_p: np.ndarray) -> dict[Any, float]:
    """Each case's raw score of ``kind``: its highest lesion probability, its highest SLICE_PROB, or its
    burden (``ich.scoring.burden_raw``)."""
    if kind == "max_slice":
        return {r["case"]: max(NO_LESION_SCORE, float(r["max_slice_probability"])) for r in records.cases}
    if kind == "burden":
        return {c: burden_raw([v for _, v in ls]) for c, ls in _contributions(records, lesion_p).items()}
    return raw_case_scores(records, lesion_p)


def _opened_peak(row: Mapping[str, Any]) -> float:
    """A lesion row's opened peak; rows without the column give their unopened peak (an upper bound)."""
    if "opened_peak" in row:
        return float(row["opened_peak"])
    return float(sigmoid(float(row["logit_peak"])))


def _kept(records: Records, kind: str, lesion_p: np.ndarray, keep: float) -> dict[Any, set[int]]:
    """Lesions that count, by case: lesion probability (or, for ``max_slice``, opened peak) >= ``keep``;
    for ``burden`` the largest lesions that carry the case's burden to ``keep`` (``burden_kept``)."""
    if kind == "burden":
        return {
            c: {ls[i][0] for i in burden_kept([v for _, v in ls], keep)}
            for c, ls in _contributions(records, lesion_p).items()
        }
    kept: dict[Any, set[int]] = {}
    for row, v in zip(records.lesions, lesion_p, strict=True):
        value = _opened_peak(row) if kind == "max_slice" else float(v)
        if value >= keep:
            kept.setdefault(row["case"], set()).add(int(row["lesion"]))
    return kept


def _fit_kind(records: Records, targets: DecisionTargets, kind: str, info: Mapping[str, Any]) -> CaseModel:
    """One fit with the raw score ``kind`` (see the module docstring)."""
    x, y = lesion_matrix(records.lesions)
    mean, scale, coef, intercept = fit_lesion_model(x, y)
    raw = _raw_scores(records, kind, 1.0 / (1.0 + np.exp(-(((x - mean) / scale) @ coef + intercept))))
    ids = [row["case"] for row in records.cases]
    labels = np.array([int(row["label"]) for row in records.cases])
    scores = np.array([raw[c] for c in ids])
    platt = fit_platt(scores, labels)
    calibrated = np.asarray(platt.apply(scores))
    threshold = threshold_for_sensitivity(calibrated, labels, targets.target_sensitivity)
    band = indeterminate_band(
        calibrated, labels, threshold, targets.band_sensitivity, targets.band_specificity
    )
    return CaseModel(
        mean=tuple(float(v) for v in mean),
        scale=tuple(float(v) for v in scale),
        coef=tuple(float(v) for v in coef),
        intercept=intercept,
        keep=_keep_for(threshold, platt),
        calibration=platt,
        threshold=float(threshold),
        band=(float(band[0]), float(band[1])),
        info={"cases": len(ids), "lesion_candidates": len(x), "targets": targets.__dict__, **info},
        score=kind,
        opening=targets.opening,
    )


def select_score(records: Records, targets: DecisionTargets) -> tuple[str, dict[str, float]]:
    """The raw score with the lower Brier score when cross-fitted over ``records``' own folds.

    A score whose fit fails in the inner cross-fit (its Platt slope is not positive) loses.
    Only the records passed in are used, so inside :func:`cross_fit` the choice is made on the training
    folds; with fewer than two folds there is nothing to cross-fit and the lesion score is kept.
    """
    if len({int(r["fold"]) for r in records.cases}) < 2:
        return "lesion", {}
    brier = {}
    for kind in SCORES:
        try:
            scored, _ = cross_fit(records, replace(targets, score=kind))
        except ValueError:  # e.g. a score that does not rank the inner folds' positives higher: it loses
            brier[kind] = float("inf")
            continue
        p = np.array([c.probability for c in scored])
        y = np.array([c.label for c in scored])
        brier[kind] = float(np.mean((p - y) ** 2))
    return min(SCORES, key=lambda k: (brier[k], SCORES.index(k))), brier


def fit_case_model(
    records: Records, targets: DecisionTargets, info: Mapping[str, Any] | None = None
) -> CaseModel:
    """One fit of the case model on ``records`` (see the module docstring)."""
    extra = dict(info or {})
    kind = targets.score
    if kind == "select":
        kind, brier = select_score(records, targets)
        extra["selection_brier"] = brier
    if kind not in SCORES:
        raise ValueError(f"[decision] score = {targets.score!r}: expected one of {SCORES} or 'select'")
    return _fit_kind(records, targets, kind, extra)


@dataclass(frozen=True)
class ScoredCase:
    """One case as a case model scores it."""

    case: Any
    fold: int
    label: int
    raw: float
    probability: float
    detected: bool
    indeterminate: bool
    kept_lesions: frozenset[int]
    #: the ensemble's disagreement on the deciding lesion (``ich.scoring.case_uncertainty``); ``None`` for
    #: records made before the base models' spread was recorded
    uncertainty: float | None = None


def _spread(row: Mapping[str, Any], column: str) -> float | None:
    value = row.get(column)
    return None if value is None or value == "" else float(value)


def uncertainties(records: Records, deciding_value: Sequence[float] | np.ndarray) -> dict[Any, float | None]:
    """Each case's uncertainty: the ``model_spread`` of its lesion with the highest ``deciding_value``
    (``records.lesions`` order), else its ``slice_spread`` (``ich.scoring.case_uncertainty``'s rule)."""
    best: dict[Any, tuple[float, float | None]] = {}
    for row, value in zip(records.lesions, deciding_value, strict=True):
        if row["case"] not in best or float(value) > best[row["case"]][0]:
            best[row["case"]] = (float(value), _spread(row, "model_spread"))
    cases = records.cases
    return {r["case"]: best[r["case"]][1] if r["case"] in best else _spread(r, "slice_spread") for r in cases}


def _deciding(records: Records, kind: str, lesion_p: np.ndarray) -> list[float]:
    """Each lesion row's value that decides its case (``ich.scoring.case_uncertainty``'s ``by``)."""
    if kind == "lesion":
        return [float(v) for v in lesion_p]
    if kind == "burden":
        return [
            burden_contribution(float(v), float(r["volume_ml"]))
            for r, v in zip(records.lesions, lesion_p, strict=True)
        ]
    return [_opened_peak(r) for r in records.lesions]


def apply_case_model(model: CaseModel, records: Records, threshold: float | None = None) -> list[ScoredCase]:
    """Score the cases of ``records`` with ``model`` (the gateway's rule, on the recorded lesions).

    ``threshold`` overrides the model's, as ``ICH_THRESHOLD`` does in the gateway.
    """
    threshold = model.threshold if threshold is None else threshold
    x, _ = lesion_matrix(records.lesions)
    p = model.lesion_probabilities(x) if len(x) else np.zeros(0)
    raw = _raw_scores(records, model.score, p)
    kept = _kept(records, model.score, p, model.keep)
    spread = uncertainties(records, _deciding(records, model.score, p))
    out = []
    for row in records.cases:
        prob = float(model.calibration.apply(raw[row["case"]]))
        out.append(
            ScoredCase(
                case=row["case"],
                fold=int(row["fold"]),
                label=int(row["label"]),
                raw=raw[row["case"]],
                probability=prob,
                detected=prob >= threshold,
                indeterminate=model.band[0] <= prob <= model.band[1],
                kept_lesions=frozenset(kept.get(row["case"], set())),
                uncertainty=spread[row["case"]],
            )
        )
    return out


def paper_rule(
    records: Records, threshold: float = 0.5, band: tuple[float, float] = spec.INDETERMINATE_BAND
) -> list[ScoredCase]:
    """The paper's decision on the recorded cases: the highest slice probability, every candidate kept."""
    kept: dict[Any, set[int]] = {}
    for row in records.lesions:
        kept.setdefault(row["case"], set()).add(int(row["lesion"]))
    spread = uncertainties(records, [_opened_peak(r) for r in records.lesions])
    out = []
    for row in records.cases:
        prob = float(row["max_slice_probability"])
        out.append(
            ScoredCase(
                case=row["case"],
                fold=int(row["fold"]),
                label=int(row["label"]),
                raw=prob,
                probability=prob,
                detected=prob >= threshold,
                indeterminate=band[0] <= prob <= band[1],
                kept_lesions=frozenset(kept.get(row["case"], set())),
                uncertainty=spread[row["case"]],
            )
        )
    return out


class _Scored(Protocol):
    @property
    def case(self) -> Any: ...


M = TypeVar("M")
S = TypeVar("S", bound=_Scored)


def cross_fit_with(
    records: Records, fit: Callable[[Records, int], M], apply: Callable[[M, Records], Sequence[S]]
) -> tuple[list[S], list[M]]:
    """Every case scored by ``apply`` with what ``fit`` made of the other folds' records only.

    ``fit(training_records, held_out_fold)`` fits; ``apply(fitted, held_out_records)`` scores one row per
    case. Returns the scored cases in ``records.cases`` order and the fitted objects by fold: the one
    cross-fit of every choice made after training (case model, subtype model).
    """
    folds = sorted({int(row["fold"]) for row in records.cases})
    by_fold = {f: {row["case"] for row in records.cases if int(row["fold"]) == f} for f in folds}
    scored: list[S] = []
    models = []
    for f in folds:
        others = set().union(*(by_fold[g] for g in folds if g != f))
        model = fit(subset(records, others), f)
        models.append(model)
        scored.extend(apply(model, subset(records, by_fold[f])))
    order = {row["case"]: i for i, row in enumerate(records.cases)}
    return sorted(scored, key=lambda s: order[s.case]), models


def cross_fit(records: Records, targets: DecisionTargets) -> tuple[list[ScoredCase], list[CaseModel]]:
    """Every case scored by a case model fitted on the other folds only; and those models, by fold."""

    def fit(training: Records, fold: int) -> CaseModel:
        return fit_case_model(training, targets, {"fitted_without_fold": fold})

    return cross_fit_with(records, fit, lambda model, held_out: apply_case_model(model, held_out))


def kept_dice_counts(records: Records, scored: Sequence[ScoredCase]) -> np.ndarray:
    """Per-slice ``[intersection, |kept|, |truth|]`` (``records.slices`` order) of the kept lesions."""
    kept = {s.case: s.kept_lesions for s in scored}
    inter: dict[tuple[Any, int], int] = {}
    voxels: dict[tuple[Any, int], int] = {}
    for row in records.lesion_slices:
        if int(row["lesion"]) in kept.get(row["case"], frozenset()):
            key = (row["case"], int(row["slice"]))
            inter[key] = inter.get(key, 0) + int(row["inter"])
            voxels[key] = voxels.get(key, 0) + int(row["voxels"])
    return np.array(
        [
            [
                inter.get((r["case"], int(r["slice"])), 0),
                voxels.get((r["case"], int(r["slice"])), 0),
                int(r["truth_voxels"]),
            ]
            for r in records.slices
        ],
        dtype=np.int64,
    ).reshape(-1, 3)


__all__ = [
    "DecisionTargets",
    "ScoredCase",
    "apply_case_model",
    "cross_fit",
    "cross_fit_with",
    "fit_case_model",
    "kept_dice_counts",
    "lesion_matrix",
    "paper_rule",
    "uncertainties",
]
