"""Calibration maps from a case score to a calibrated case probability, as the gateway applies them.

The ensemble's case score (the maximum slice probability, or a lesion score) ranks cases well but is not a
risk: a score of 0.7 need not mean that 70 % of such cases bleed. A calibration map fitted on out-of-fold
scores (``training.calibration``) turns the score into a probability that can be read as one; the map is
stored with the weights as a small JSON object and rebuilt here with :func:`calibration_from_dict`.

Only numpy is used because ``ich`` is imported by the gateway, which must not need scikit-learn: the
fitting lives in ``training.calibration`` and writes the parameters this module applies.

Both maps are non-decreasing in the score, so a threshold on the calibrated probability is a threshold on
the score and the ranking (hence the AUC) is unchanged; the constructors reject parameters that would
reverse it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np

__all__ = [
    "SCORE_CLIP",
    "Calibration",
    "IsotonicCalibration",
    "PlattCalibration",
    "calibration_from_dict",
    "logit",
    "sigmoid",
]

#: Scores are clipped to ``[SCORE_CLIP, 1 - SCORE_CLIP]`` before the logit, which is infinite at 0 and 1;
#: a float32 sigmoid output saturates at exactly 1.0, so the clip is reached in practice.
SCORE_CLIP = 1e-6


def logit(score: float | np.ndarray) -> np.ndarray:
    """``log(p / (1 - p))`` of the clipped score: the feature Platt scaling is linear in.

    Shared with ``training.calibration`` so that fitting and applying use the same transform and clip.
    """
    p = np.clip(np.asarray(score, dtype=np.float64), SCORE_CLIP, 1.0 - SCORE_CLIP)
    return np.log(p) - np.log1p(-p)


def sigmoid(z: float | np.ndarray) -> np.ndarray:
    """Logistic function, written with ``tanh`` so that large ``|z|`` neither overflows nor warns."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))


def _finite_scores(score: float | np.ndarray) -> np.ndarray:
    """The score as float64, refusing NaN/inf: a NaN score is an upstream bug, not a probability."""
    s = np.asarray(score, dtype=np.float64)
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    return s


def _finite_number(d: Mapping[str, Any], key: str) -> float:
    """``d[key]`` as a finite float, or ``ValueError`` (also for bools, strings and a missing key)."""
    if key not in d:
        raise ValueError(f"calibration dict lacks {key!r}")
    value = d[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"calibration {key!r} must be a finite number, got {value!r}")
    return float(value)


def _finite_numbers(d: Mapping[str, Any], key: str) -> tuple[float, ...]:
    """``d[key]`` as a tuple of finite floats, or ``ValueError``."""
    if key not in d:
        raise ValueError(f"calibration dict lacks {key!r}")
    values = d[key]
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise ValueError(f"calibration {key!r} must be a list of numbers, got {values!r}")
    return tuple(_finite_number({key: v}, key) for v in values)


def _check_keys(d: Mapping[str, Any], method: str, keys: set[str]) -> None:
    """Refuse a dict of another method, or with missing or extra keys (a typo must not pass silently)."""
    if d.get("method") != method:
        raise ValueError(f"not a {method} calibration: method is {d.get('method')!r}")
    if set(d) != keys | {"method"}:
        raise ValueError(f"{method} calibration keys must be {sorted(keys | {'method'})}, got {sorted(d)}")


@dataclass(frozen=True)
class PlattCalibration:
    """Platt scaling: ``p = sigmoid(a * logit(score) + b)``.

    Two parameters, so it needs few cases and cannot overfit the way a free-form map can; it assumes the
    score's miscalibration is a logistic distortion (over- or under-confidence plus a shift). ``a`` must be
    positive: ``a <= 0`` would flatten or reverse the ranking the model was chosen for.
    """

    a: float
    b: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.a) and math.isfinite(self.b)):
            raise ValueError(f"Platt parameters must be finite, got a={self.a!r}, b={self.b!r}")
        if self.a <= 0:
            raise ValueError(f"Platt slope a must be positive (a monotone map), got {self.a!r}")

    @overload
    def apply(self, score: float) -> float: ...
    @overload
    def apply(self, score: np.ndarray) -> np.ndarray: ...

    def apply(self, score: float | np.ndarray) -> float | np.ndarray:
        """Calibrated probability of ``score`` (a float for a float, an array of the same shape otherwise)."""
        p = sigmoid(self.a * logit(_finite_scores(score)) + self.b)
        return float(p) if p.ndim == 0 else p

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe parameters, stored with the weights."""
        return {"method": "platt", "a": float(self.a), "b": float(self.b)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PlattCalibration:
        """Inverse of :meth:`to_dict`; ``ValueError`` on another method, bad keys or non-finite values."""
        _check_keys(d, "platt", {"a", "b"})
        return cls(a=_finite_number(d, "a"), b=_finite_number(d, "b"))


@dataclass(frozen=True)
class IsotonicCalibration:
    """Isotonic regression: a non-decreasing piecewise-linear map through the fitted points ``(x, y)``.

    ``x`` are the fitted score thresholds (strictly increasing), ``y`` the calibrated probabilities there
    (non-decreasing, in [0, 1]); between them the map interpolates linearly and outside it holds the end
    values, exactly as scikit-learn's ``IsotonicRegression(out_of_bounds="clip").predict``. It assumes no
    shape, so it needs more cases than Platt scaling and is flat (ties scores) where data are sparse.
    """

    x: tuple[float, ...]
    y: tuple[float, ...]

    def __post_init__(self) -> None:
        x = np.asarray(self.x, dtype=np.float64)
        y = np.asarray(self.y, dtype=np.float64)
        if x.ndim != 1 or x.size == 0 or x.shape != y.shape:
            raise ValueError(f"isotonic x and y must be non-empty, of one length; got {x.shape}, {y.shape}")
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise ValueError("isotonic points must be finite")
        if np.any(np.diff(x) <= 0):
            raise ValueError("isotonic x must be strictly increasing")
        if np.any(np.diff(y) < 0) or y[0] < 0 or y[-1] > 1:
            raise ValueError("isotonic y must be non-decreasing probabilities in [0, 1]")

    @overload
    def apply(self, score: float) -> float: ...
    @overload
    def apply(self, score: np.ndarray) -> np.ndarray: ...

    def apply(self, score: float | np.ndarray) -> float | np.ndarray:
        """Calibrated probability of ``score`` (a float for a float, an array of the same shape otherwise)."""
        p = np.interp(_finite_scores(score), self.x, self.y)
        return float(p) if np.ndim(p) == 0 else np.asarray(p)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe points, stored with the weights."""
        return {"method": "isotonic", "x": [float(v) for v in self.x], "y": [float(v) for v in self.y]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> IsotonicCalibration:
        """Inverse of :meth:`to_dict`; ``ValueError`` on another method, bad keys or invalid points."""
        _check_keys(d, "isotonic", {"x", "y"})
        return cls(x=_finite_numbers(d, "x"), y=_finite_numbers(d, "y"))


Calibration = PlattCalibration | IsotonicCalibration

_BY_METHOD: dict[str, type[PlattCalibration] | type[IsotonicCalibration]] = {
    "platt": PlattCalibration,
    "isotonic": IsotonicCalibration,
}


def calibration_from_dict(d: Mapping[str, Any]) -> Calibration:
    """Rebuild the calibration stored with the weights, whichever method it is; ``ValueError`` otherwise."""
    if not isinstance(d, Mapping):
        raise ValueError(f"calibration must be a JSON object, got {type(d).__name__}")
    method = d.get("method")
    if method not in _BY_METHOD:
        raise ValueError(f"unknown calibration method {method!r}; known: {sorted(_BY_METHOD)}")
    return _BY_METHOD[method].from_dict(d)
