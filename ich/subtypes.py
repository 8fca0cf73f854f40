"""Subtype probabilities (epidural, subdural, subarachnoid, intraparenchymal, intraventricular) from lesions.

The rule, applied alike by the gateway (through :func:`ich.scoring.score_case`) and by the training records:

1. each lesion candidate's **conditional** probability of subtype ``s`` given that it is hemorrhage: one
   logistic regression per subtype on :data:`SUBTYPE_FEATURES` (its location and shape,
   ``ich.lesion_shape``), fitted by ``training.subtype_model`` on out-of-fold lesions that overlap the ground
   truth, labelled by the subtype labels of the slices the lesion spans;
2. its **joint** probability: that conditional times the case model's probability that the lesion is
   hemorrhage at all (so a false focus at the vertex does not become a confident subdural);
3. the **raw** case score of ``s``: the highest joint probability of any candidate
   (:data:`NO_LESION_SCORE` without one); a slice's raw score: the highest joint probability of the
   candidates that touch it;
4. **Platt scaling** of the raw scores against the case labels (case) and the slice labels (slice), fitted on
   the same out-of-fold records.

A subtype with too few positive cases in the records it would be fitted on is not fitted: it is listed in
:attr:`SubtypeModel.not_measured` with the reason ("n positive cases") and its probabilities are ``None``
(``null`` in the JSON), never an invented number. The parameters live inside ``case_model.json`` under
``"subtypes"``; a case model without that key has no subtype model and every output is ``None``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ich.calibration import PlattCalibration, calibration_from_dict
from ich.lesion_shape import SHAPE_FEATURES

__all__ = [
    "NO_LESION_SCORE",
    "SUBTYPES",
    "SUBTYPE_FEATURES",
    "SubtypeFit",
    "SubtypeModel",
    "SubtypeScores",
    "feature_matrix",
    "raw_scores",
]

#: The five subtypes, as the JSON names them (``subtypes`` keys, docs/DESIGN.md).
SUBTYPES: tuple[str, ...] = ("epidural", "subdural", "subarachnoid", "intraparenchymal", "intraventricular")
#: Raw score without any candidate: ``ich.scoring.NO_LESION_SCORE`` (kept off 0 for a finite logit).
NO_LESION_SCORE: float = 1e-3
#: Lesion features the subtype models read, in their coefficient order: a few of the case model's
#: (``ich.scoring.FEATURES``) and the shape features.
SUBTYPE_FEATURES: tuple[str, ...] = (
    "log_volume_ml",
    "log_slices",
    "bone_distance_mm",
    "brain_area_fraction",
    "inside_brain_fraction",
    "mean_hu",
    *SHAPE_FEATURES,
)

Probabilities = dict[str, float | None]


def feature_matrix(rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """``[L, len(SUBTYPE_FEATURES)]`` of lesions given as mappings of feature name -> value."""
    return np.array([[float(r[f]) for f in SUBTYPE_FEATURES] for r in rows], dtype=np.float64).reshape(
        -1, len(SUBTYPE_FEATURES)
    )


def raw_scores(
    joint: np.ndarray, spans: Sequence[tuple[int, int]], n_slices: int
) -> tuple[float, np.ndarray]:
    """(case raw score, ``[n_slices]`` slice raw scores) from each lesion's joint probability and its
    ``(first_slice, last_slice)``."""
    slices = np.full(n_slices, NO_LESION_SCORE, dtype=np.float64)
    for p, (first, last) in zip(np.asarray(joint, dtype=np.float64), spans, strict=True):
        slices[first : last + 1] = np.maximum(slices[first : last + 1], p)
    case = float(max(NO_LESION_SCORE, float(np.max(joint)))) if len(joint) else NO_LESION_SCORE
    return case, slices


def _floats(values: Sequence[Any]) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


@dataclass(frozen=True)
class SubtypeFit:
    """One subtype: the conditional lesion model and the case and slice calibrations."""

    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    case_calibration: PlattCalibration
    slice_calibration: PlattCalibration
    info: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(SUBTYPE_FEATURES)
        if not (len(self.mean) == len(self.scale) == len(self.coef) == n):
            raise ValueError(f"subtype model: mean, scale and coef need {n} values each")
        values = np.array([*self.mean, *self.scale, *self.coef, self.intercept])
        if not np.isfinite(values).all() or min(self.scale) <= 0:
            raise ValueError("subtype model: parameters must be finite and scales positive")

    def conditional(self, x: np.ndarray) -> np.ndarray:
        """``[L, F]`` -> ``[L]`` probability of this subtype given that the lesion is hemorrhage."""
        z = (np.asarray(x, dtype=np.float64) - np.asarray(self.mean)) / np.asarray(self.scale)
        return 1.0 / (1.0 + np.exp(-(z @ np.asarray(self.coef) + self.intercept)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": list(self.mean),
            "scale": list(self.scale),
            "coef": list(self.coef),
            "intercept": self.intercept,
            "case_calibration": self.case_calibration.to_dict(),
            "slice_calibration": self.slice_calibration.to_dict(),
            "info": dict(self.info),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SubtypeFit:
        calibrations = [calibration_from_dict(d[k]) for k in ("case_calibration", "slice_calibration")]
        if not all(isinstance(c, PlattCalibration) for c in calibrations):
            raise ValueError("subtype model: the calibrations must be Platt maps")
        case, slice_ = calibrations
        assert isinstance(case, PlattCalibration) and isinstance(slice_, PlattCalibration)
        return cls(
            mean=_floats(d["mean"]),
            scale=_floats(d["scale"]),
            coef=_floats(d["coef"]),
            intercept=float(d["intercept"]),
            case_calibration=case,
            slice_calibration=slice_,
            info=dict(d.get("info", {})),
        )


@dataclass(frozen=True)
class SubtypeScores:
    """One study's subtype probabilities: ``None`` for a subtype the model does not measure."""

    case: Probabilities
    slices: list[Probabilities]


@dataclass(frozen=True)
class SubtypeModel:
    """The fitted subtypes and, for each of the others, why it is not measured."""

    fits: Mapping[str, SubtypeFit]
    not_measured: Mapping[str, str]
    info: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        named = sorted([*self.fits, *self.not_measured])
        if named != sorted(SUBTYPES):
            raise ValueError(f"subtype model: every subtype of {SUBTYPES} once, fitted or not, got {named}")

    def joint(self, x: np.ndarray, hemorrhage: np.ndarray) -> dict[str, np.ndarray]:
        """Each fitted subtype's ``[L]`` joint probability: conditional x the hemorrhage probability."""
        p = np.asarray(hemorrhage, dtype=np.float64)
        return {s: fit.conditional(x) * p if len(p) else np.zeros(0) for s, fit in self.fits.items()}

    def score(
        self,
        x: np.ndarray,
        hemorrhage: np.ndarray,
        spans: Sequence[tuple[int, int]],
        n_slices: int,
    ) -> SubtypeScores:
        """Case and slice probabilities of one study's lesion candidates (module docstring, steps 2-4).

        Args:
            x: ``[L, len(SUBTYPE_FEATURES)]`` the candidates' features (:func:`feature_matrix`).
            hemorrhage: ``[L]`` the case model's probability that each candidate is hemorrhage.
            spans: each candidate's ``(first_slice, last_slice)``.
            n_slices: the study's slices.
        """
        case: Probabilities = dict.fromkeys(SUBTYPES)
        slices: list[Probabilities] = [dict.fromkeys(SUBTYPES) for _ in range(n_slices)]
        for s, joint in self.joint(x, hemorrhage).items():
            fit = self.fits[s]
            case_raw, slice_raw = raw_scores(joint, spans, n_slices)
            case[s] = float(fit.case_calibration.apply(case_raw))
            for row, value in zip(slices, np.atleast_1d(fit.slice_calibration.apply(slice_raw)), strict=True):
                row[s] = float(value)
        return SubtypeScores(case, slices)

    def to_dict(self) -> dict[str, Any]:
        return {
            "features": list(SUBTYPE_FEATURES),
            "fits": {s: self.fits[s].to_dict() for s in SUBTYPES if s in self.fits},
            "not_measured": {s: self.not_measured[s] for s in SUBTYPES if s in self.not_measured},
            "info": dict(self.info),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SubtypeModel:
        if list(d.get("features", [])) != list(SUBTYPE_FEATURES):
            raise ValueError(f"subtype model: features {d.get('features')} are not {list(SUBTYPE_FEATURES)}")
        return cls(
            fits={str(s): SubtypeFit.from_dict(v) for s, v in dict(d.get("fits", {})).items()},
            not_measured={str(s): str(v) for s, v in dict(d.get("not_measured", {})).items()},
            info=dict(d.get("info", {})),
        )
