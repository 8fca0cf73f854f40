"""Fitting the subtype model (``ich.subtypes.SubtypeModel``) on prediction records; applying it to records.

One fit, on the records of some cases and the case model fitted on the same records
(:func:`fit_subtype_model`), for each of the five subtypes:

1. enough data? At least :data:`MIN_POSITIVE_CASES` cases carrying the subtype, and at least
   :data:`MIN_LESIONS` true lesion candidates with it and as many without it; otherwise the subtype is
   "not measured" with the count, and its outputs stay ``None``;
2. a logistic regression (standardised :data:`ich.subtypes.SUBTYPE_FEATURES`, L2 with C =
   :data:`SUBTYPE_C`) on the lesion candidates that overlap the ground truth, label: any slice the lesion
   spans carries the subtype. Only true lesions: whether a candidate is hemorrhage at all is the case
   model's question, and its answer multiplies this one (``ich.subtypes``);
3. Platt scaling of the case raw scores against the cases' labels and of the slice raw scores against the
   slices' labels.

For the figures the fit is cross-fitted with the case models of :func:`training.case_model.cross_fit`
(``training.case_model.cross_fit_with``): the cases of fold k are scored by the subtype model and the case
model fitted on the other folds only. The shipped subtype model is one fit on every out-of-fold record,
stored inside ``case_model.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ich.calibration import PlattCalibration
from ich.scoring import CaseModel
from ich.subtypes import (
    SUBTYPE_FEATURES,
    SUBTYPES,
    Probabilities,
    SubtypeFit,
    SubtypeModel,
    feature_matrix,
    raw_scores,
)
from training.calibration import fit_platt
from training.case_model import lesion_matrix
from training.records import Records, subtype_label_column

#: Fewest cases with a subtype, in the records a fit sees, for the subtype to be fitted at all.
MIN_POSITIVE_CASES: int = 6
#: Fewest true lesion candidates with (and without) a subtype for its lesion model.
MIN_LESIONS: int = 3
#: The identity map, until the raw scores it calibrates exist.
_IDENTITY = PlattCalibration(a=1.0, b=0.0)
#: L2 strength of each subtype's lesion model: stronger than the case model's, since a subtype rests on a
#: few dozen true candidates of a handful of patients.
SUBTYPE_C: float = 0.3


def has_subtype_inputs(records: Records) -> bool:
    """Whether the records carry subtype labels and shape features (records of older runs do not)."""
    columns = [subtype_label_column(s) for s in SUBTYPES]
    lesion_columns = [*columns, *SUBTYPE_FEATURES]
    return (
        bool(records.cases)
        and all(all(c in r for c in columns) for r in records.cases)
        and all(all(c in r for c in columns) for r in records.slices)
        and all(all(c in r for c in lesion_columns) for r in records.lesions)
    )


def _labels(rows: list[dict[str, Any]], subtype: str) -> np.ndarray:
    column = subtype_label_column(subtype)
    return np.array([int(r[column]) for r in rows], dtype=np.int64)


def _fit_lesion_model(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    from sklearn.linear_model import LogisticRegression

    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    model = LogisticRegression(C=SUBTYPE_C, max_iter=2000).fit((x - mean) / scale, y)
    return mean, scale, model.coef_[0], float(model.intercept_[0])


def hemorrhage_probabilities(case_model: CaseModel, records: Records) -> np.ndarray:
    """The case model's probability that each lesion candidate is hemorrhage (``records.lesions`` order)."""
    x, _ = lesion_matrix(records.lesions)
    return case_model.lesion_probabilities(x) if len(x) else np.zeros(0)


def _raw(records: Records, joint: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(case raw scores in ``records.cases`` order, slice raw scores in ``records.slices`` order)."""
    by_case: dict[Any, list[tuple[float, tuple[int, int]]]] = {}
    for row, p in zip(records.lesions, joint, strict=True):
        by_case.setdefault(row["case"], []).append(
            (float(p), (int(row["first_slice"]), int(row["last_slice"])))
        )
    case_raw, slice_raw = {}, {}
    for row in records.cases:
        found = by_case.get(row["case"], [])
        case_raw[row["case"]], per_slice = raw_scores(
            np.array([p for p, _ in found]), [span for _, span in found], int(row["slices"])
        )
        slice_raw[row["case"]] = per_slice
    return (
        np.array([case_raw[r["case"]] for r in records.cases]),
        np.array([slice_raw[r["case"]][int(r["slice"])] for r in records.slices]),
    )


def _not_enough(records: Records, subtype: str, lesion_y: np.ndarray) -> str | None:
    cases = int(_labels(records.cases, subtype).sum())
    if cases < MIN_POSITIVE_CASES:
        return f"not measured: {cases} positive cases (fewer than {MIN_POSITIVE_CASES})"
    with_it, without = int(lesion_y.sum()), int((1 - lesion_y).sum())
    if min(with_it, without) < MIN_LESIONS:
        return (
            f"not measured: {with_it} true lesion candidates with it and {without} without "
            f"(fewer than {MIN_LESIONS}), {cases} positive cases"
        )
    return None


def _fit_one(
    records: Records, subtype: str, x: np.ndarray, hemorrhage: np.ndarray, true: np.ndarray
) -> SubtypeFit | str:
    """One subtype's fit, or the reason it is not measured."""
    lesion_y = _labels(records.lesions, subtype)[true]
    reason = _not_enough(records, subtype, lesion_y)
    if reason is not None:
        return reason
    mean, scale, coef, intercept = _fit_lesion_model(x[true], lesion_y)
    unscaled = SubtypeFit(
        mean=tuple(mean.tolist()),
        scale=tuple(scale.tolist()),
        coef=tuple(coef.tolist()),
        intercept=intercept,
        case_calibration=_IDENTITY,
        slice_calibration=_IDENTITY,
    )
    case_raw, slice_raw = _raw(records, unscaled.conditional(x) * hemorrhage)
    try:
        case_cal = fit_platt(case_raw, _labels(records.cases, subtype))
        slice_cal = fit_platt(slice_raw, _labels(records.slices, subtype))
    except ValueError as exc:  # the raw scores do not rank this subtype's cases higher
        return f"not measured: {exc}"
    info = {"positive_cases": int(_labels(records.cases, subtype).sum()), "true_lesions": int(true.sum())}
    return replace(unscaled, case_calibration=case_cal, slice_calibration=slice_cal, info=info)


def fit_subtype_model(records: Records, case_model: CaseModel) -> SubtypeModel:
    """One fit of every subtype on ``records`` with ``case_model``'s lesion probabilities."""
    if not has_subtype_inputs(records):
        reason = "not measured: the records carry no subtype labels or shape features"
        return SubtypeModel(fits={}, not_measured=dict.fromkeys(SUBTYPES, reason))
    x = feature_matrix(records.lesions)
    hemorrhage = hemorrhage_probabilities(case_model, records)
    true = np.array([int(r["is_hemorrhage"]) == 1 for r in records.lesions], dtype=bool)
    fits: dict[str, SubtypeFit] = {}
    not_measured: dict[str, str] = {}
    for subtype in SUBTYPES:
        fitted = _fit_one(records, subtype, x, hemorrhage, true)
        if isinstance(fitted, str):
            not_measured[subtype] = fitted
        else:
            fits[subtype] = fitted
    return SubtypeModel(fits=fits, not_measured=not_measured, info={"cases": len(records.cases)})


def with_subtypes(case_model: CaseModel, records: Records) -> CaseModel:
    """``case_model`` with a subtype model fitted on the same ``records``."""
    return replace(case_model, subtypes=fit_subtype_model(records, case_model))


@dataclass(frozen=True)
class ScoredSubtypes:
    """One case's subtype probabilities as a case model with a subtype model gives them."""

    case: Any
    fold: int
    probabilities: Probabilities
    #: one per slice, in slice order
    slices: list[Probabilities]


def apply_subtype_model(model: CaseModel, records: Records) -> list[ScoredSubtypes]:
    """Score the cases of ``records`` (the gateway's rule, ``ich.subtypes.SubtypeModel.score``)."""
    subtypes = model.subtypes or SubtypeModel(
        fits={}, not_measured=dict.fromkeys(SUBTYPES, "no subtype model")
    )
    usable = bool(subtypes.fits) and has_subtype_inputs(records)
    hemorrhage = hemorrhage_probabilities(model, records)
    lesions: dict[Any, list[tuple[dict[str, Any], float]]] = {}
    for row, p in zip(records.lesions, hemorrhage, strict=True):
        lesions.setdefault(row["case"], []).append((row, float(p)))
    out = []
    for row in records.cases:
        found = lesions.get(row["case"], [])
        n = int(row["slices"])
        if usable:
            scored = subtypes.score(
                feature_matrix([r for r, _ in found]),
                np.array([p for _, p in found]),
                [(int(r["first_slice"]), int(r["last_slice"])) for r, _ in found],
                n,
            )
            case, slices = scored.case, scored.slices
        else:
            case, slices = dict.fromkeys(SUBTYPES), [dict.fromkeys(SUBTYPES) for _ in range(n)]
        out.append(ScoredSubtypes(row["case"], int(row["fold"]), case, slices))
    return out


def slice_probabilities(records: Records, scored: list[ScoredSubtypes], subtype: str) -> np.ndarray:
    """``[len(records.slices)]`` of one subtype's slice probabilities (nan where not measured)."""
    by_case = {s.case: s.slices for s in scored}
    values = [by_case[r["case"]][int(r["slice"])][subtype] for r in records.slices]
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


__all__ = [
    "MIN_POSITIVE_CASES",
    "ScoredSubtypes",
    "apply_subtype_model",
    "fit_subtype_model",
    "has_subtype_inputs",
    "slice_probabilities",
    "with_subtypes",
]
