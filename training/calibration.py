"""Fitting and judging the case-probability calibration, and choosing the operating point and band.

Everything here is meant to run on *out-of-fold* case scores (each case scored by a model that did not train
on it): scores of training cases are overconfident, and a calibration or threshold fitted on them would be
too. The fitted maps are the runtime classes of :mod:`ich.calibration`, so the gateway applies exactly what
was fitted here, without scikit-learn.

Conventions (shared with :mod:`training.metrics`):

* A case is called positive when ``score >= threshold``.
* Calibration quality uses ``n_bins`` equal-width bins on [0, 1], binned like scikit-learn's
  ``calibration_curve(strategy="uniform")``: bin ``i`` is ``(i/n, (i+1)/n]``, the first bin also holds 0.
  The expected calibration error (ECE) is the mean over *cases* of ``|mean predicted - observed fraction|``
  of their bin, i.e. bins weighted by their count; empty bins contribute nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, confusion_matrix, roc_auc_score, roc_curve

from ich.calibration import IsotonicCalibration, PlattCalibration, logit

__all__ = [
    "ReliabilityBin",
    "brier_score",
    "expected_calibration_error",
    "fit_isotonic",
    "fit_platt",
    "indeterminate_band",
    "operating_point",
    "reliability_bins",
    "reliability_diagram",
    "roc_diagram",
    "threshold_for_sensitivity",
]

ArrayLike = Sequence[float] | np.ndarray

#: Inverse regularisation strength of the Platt fit. Platt scaling is a maximum-likelihood fit of two
#: parameters to hundreds of cases: there is nothing to regularise, and scikit-learn's default ``C=1``
#: would shrink the slope towards 0 and so flatten the probabilities it is meant to correct. ``C`` stays
#: finite rather than ``inf`` so that on perfectly separated scores (where the unpenalised optimum is at
#: infinity) the fit still ends with finite, storable parameters.
PLATT_C = 1e6


def _labels(labels: Sequence[int] | np.ndarray) -> np.ndarray:
    """Labels as a 1-d bool array; ``ValueError`` unless every label is 0 or 1."""
    y = np.asarray(labels)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"labels must be a non-empty 1-d array, got shape {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    return y.astype(bool)


def _scores(scores: ArrayLike, y: np.ndarray, *, probabilities: bool = False) -> np.ndarray:
    """Scores as float64 of the labels' shape, finite (and in [0, 1] where they must be probabilities)."""
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != y.shape:
        raise ValueError(f"scores must have shape {y.shape} like the labels, got {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    if probabilities and ((s < 0).any() or (s > 1).any()):
        raise ValueError("probabilities must lie in [0, 1]")
    return s


def _both_classes(y: np.ndarray) -> None:
    if not 0 < y.sum() < y.size:
        raise ValueError("need at least one positive and one negative case")


def _check_target(name: str, target: float) -> None:
    if not 0 < target <= 1:
        raise ValueError(f"{name} must be in (0, 1], got {target!r}")


# --- fitting ------------------------------------------------------------------------------------------


def fit_platt(scores: ArrayLike, labels: Sequence[int] | np.ndarray) -> PlattCalibration:
    """Platt scaling: logistic regression of the label on ``logit(score)``, essentially unpenalised.

    The logit (with :data:`ich.calibration.SCORE_CLIP`) makes the map the identity at ``a=1, b=0``, so a
    calibrated model is left alone. ``ValueError`` when the fitted slope is not positive: such scores do
    not rank positives above negatives and no monotone calibration can rescue them.
    """
    y = _labels(labels)
    s = _scores(scores, y)
    _both_classes(y)
    model = LogisticRegression(C=PLATT_C, max_iter=1000).fit(logit(s).reshape(-1, 1), y)
    a, b = float(model.coef_[0, 0]), float(model.intercept_[0])
    if a <= 0:
        raise ValueError(f"Platt slope {a:.3g} is not positive: the scores do not rank positives higher")
    return PlattCalibration(a=a, b=b)


def fit_isotonic(scores: ArrayLike, labels: Sequence[int] | np.ndarray) -> IsotonicCalibration:
    """Isotonic regression of the label on the score, clipped to the end values outside the fitted range.

    Stores scikit-learn's fitted thresholds, so :meth:`IsotonicCalibration.apply` reproduces ``predict``.
    """
    y = _labels(labels)
    s = _scores(scores, y)
    _both_classes(y)
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(s, y)
    return IsotonicCalibration(x=tuple(map(float, iso.X_thresholds_)), y=tuple(map(float, iso.y_thresholds_)))


# --- calibration quality ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReliabilityBin:
    """One equal-width bin ``(lower, upper]``; the means are ``None`` where the bin is empty."""

    lower: float
    upper: float
    count: int
    mean_predicted: float | None
    observed_fraction: float | None


def brier_score(p: ArrayLike, y: Sequence[int] | np.ndarray) -> float:
    """Mean squared difference between probability and outcome (lower is better; 0.25 for a constant 1/2)."""
    labels = _labels(y)
    return float(brier_score_loss(labels, _scores(p, labels, probabilities=True)))


def _bin_sums(p: ArrayLike, y: Sequence[int] | np.ndarray, bins: int) -> tuple[np.ndarray, ...]:
    """Edges, and per-bin count, sum of probabilities and sum of labels, binned as in the module docstring."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    labels = _labels(y)
    probs = _scores(p, labels, probabilities=True)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.searchsorted(edges[1:-1], probs)  # the assignment of sklearn.calibration.calibration_curve
    counts = np.bincount(which, minlength=bins)
    sum_p = np.bincount(which, weights=probs, minlength=bins)
    sum_y = np.bincount(which, weights=labels.astype(np.float64), minlength=bins)
    return edges, counts, sum_p, sum_y


def reliability_bins(p: ArrayLike, y: Sequence[int] | np.ndarray, bins: int = 10) -> list[ReliabilityBin]:
    """Per-bin count, mean predicted probability and observed positive fraction, for all ``bins`` bins.

    Binned as in the module docstring (scikit-learn's ``calibration_curve``), but empty bins are kept, with
    their counts, so that a diagram or report shows where there are no cases.
    """
    edges, counts, sum_p, sum_y = _bin_sums(p, y, bins)
    return [
        ReliabilityBin(
            lower=float(edges[i]),
            upper=float(edges[i + 1]),
            count=int(counts[i]),
            mean_predicted=float(sum_p[i] / counts[i]) if counts[i] else None,
            observed_fraction=float(sum_y[i] / counts[i]) if counts[i] else None,
        )
        for i in range(bins)
    ]


def expected_calibration_error(p: ArrayLike, y: Sequence[int] | np.ndarray, bins: int = 10) -> float:
    """ECE: ``sum_b (n_b / n) * |mean predicted_b - observed fraction_b|`` over non-empty equal-width bins.

    Weighting by count makes it the average miscalibration a *case* meets; as ``n_b * |mean_p - mean_y|``
    is ``|sum_p - sum_y|``, empty bins drop out by themselves. It depends on ``bins`` and is 0 for any
    predictor calibrated within each bin, so report it with the Brier score and the diagram.
    """
    _, counts, sum_p, sum_y = _bin_sums(p, y, bins)
    return float(np.abs(sum_p - sum_y).sum() / counts.sum())


# --- operating point and band -------------------------------------------------------------------------


def threshold_for_sensitivity(scores: ArrayLike, labels: Sequence[int] | np.ndarray, target: float) -> float:
    """The highest threshold ``t`` at which the sensitivity ``mean(score[positives] >= t)`` is ``>= target``.

    Sensitivity only drops when ``t`` passes a positive's score, so ``t`` is the ``k``-th highest positive
    score, ``k`` the fewest positives that reach ``target`` (``k / n_pos >= target``, computed in the same
    floating point as the sensitivity itself). Positives tied with it are all detected, so on ties the
    sensitivity reached may exceed ``target`` but never falls short; any higher threshold falls short.
    Negatives do not enter. ``target`` in (0, 1]; 1.0 gives the lowest positive score.
    """
    _check_target("target", target)
    y = _labels(labels)
    s = _scores(scores, y)
    positives = np.sort(s[y])[::-1]
    n_pos = positives.size
    if n_pos == 0:
        raise ValueError("need at least one positive case")
    k = int(np.searchsorted(np.arange(1, n_pos + 1) / n_pos, target, side="left")) + 1
    return float(positives[k - 1])


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def operating_point(
    scores: ArrayLike, labels: Sequence[int] | np.ndarray, threshold: float
) -> dict[str, Any]:
    """Confusion counts and rates of the rule ``score >= threshold``; a rate is ``None`` where undefined.

    Keys: ``threshold``, ``n``, ``tp``, ``fn``, ``tn``, ``fp``, ``sensitivity``, ``specificity``, ``ppv``,
    ``npv``; JSON-safe, for the report and the model card.
    """
    y = _labels(labels)
    s = _scores(scores, y)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y, s >= threshold, labels=[False, True]).ravel())
    return {
        "threshold": float(threshold),
        "n": int(y.size),
        "tp": tp,
        "fn": fn,
        "tn": tn,
        "fp": fp,
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
    }


def _lowest_threshold_for_specificity(s: np.ndarray, y: np.ndarray, target: float, floor: float) -> float:
    """Lowest ``t >= floor`` among ``floor`` and the observed scores with ``mean(s[neg] < t) >= target``.

    Specificity at ``score >= t`` is non-decreasing in ``t``, so the first candidate that reaches the
    target is the lowest. If no observed score does (a negative has the highest score), the answer is the
    float just above the highest score, where every negative is below ``t``.
    """
    negatives = np.sort(s[~y])
    candidates = np.unique(np.concatenate([[floor], s[s >= floor], [np.nextafter(s.max(), np.inf)]]))
    candidates = candidates[candidates >= floor]
    specificity = np.searchsorted(negatives, candidates, side="left") / negatives.size
    return float(candidates[np.argmax(specificity >= target)])


def indeterminate_band(
    scores: ArrayLike,
    labels: Sequence[int] | np.ndarray,
    threshold: float,
    low_sensitivity: float = 1.0,
    high_specificity: float = 0.95,
) -> tuple[float, float]:
    """A closed band ``[low, high]`` around ``threshold``, from out-of-fold scores: "indeterminate" inside.

    * ``low = min(threshold_for_sensitivity(scores, labels, low_sensitivity), threshold)``: the highest
      ``t <= threshold`` at which ``score >= t`` still detects at least ``low_sensitivity`` of the positives.
      With the default 1.0 no positive scores below the band, so a case below it (``score < low``) is
      confidently negative.
    * ``high``: the lowest ``t >= threshold``, among ``threshold`` and the observed scores, at which the
      specificity of ``score >= t`` is at least ``high_specificity`` (default 0.95), i.e. at most 5 % of the
      negatives score ``>= high``. A case above the band (``score > high``) is therefore confidently positive
      (the specificity of ``score > high`` is at least as high).

    So ``low <= threshold <= high`` always; the band collapses to the threshold where the threshold alone
    already meets both targets. Both classes are needed.
    """
    _check_target("low_sensitivity", low_sensitivity)
    _check_target("high_specificity", high_specificity)
    y = _labels(labels)
    s = _scores(scores, y)
    _both_classes(y)
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold!r}")
    low = min(threshold_for_sensitivity(s, y, low_sensitivity), float(threshold))
    high = _lowest_threshold_for_specificity(s, y, high_specificity, float(threshold))
    return low, high


# --- figures ------------------------------------------------------------------------------------------


def _pyplot() -> Any:
    """pyplot on the Agg backend (no display on training machines), imported only when a figure is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def reliability_diagram(
    p: ArrayLike,
    y: Sequence[int] | np.ndarray,
    path: Path,
    bins: int = 10,
    title: str = "Reliability diagram",
) -> None:
    """PNG of observed fraction against mean predicted probability per bin, with the histogram beneath.

    The diagonal is perfect calibration; each point is labelled with its bin's count, because a point of
    three cases far from the diagonal means little. The title carries the ECE and Brier score.
    """
    table = [b for b in reliability_bins(p, y, bins) if b.count]
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5.5, 6.5), dpi=110, sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], ls=":", color="grey", lw=1, label="perfectly calibrated")
    xs = [b.mean_predicted for b in table]
    ys = [b.observed_fraction for b in table]
    top.plot(xs, ys, marker="o", color="black", lw=1.5, label="observed")
    for b in table:
        top.annotate(str(b.count), (b.mean_predicted, b.observed_fraction), textcoords="offset points",
                     xytext=(4, -10), fontsize=7)
    ece, brier = expected_calibration_error(p, y, bins), brier_score(p, y)
    top.set(title=f"{title}\nECE {ece:.3f}, Brier {brier:.3f}", ylabel="observed fraction positive",
            xlim=(0, 1), ylim=(0, 1.02))
    top.legend(loc="upper left", fontsize=8)
    bottom.hist(np.asarray(p, dtype=np.float64), bins=np.linspace(0, 1, bins + 1), color="grey",
                edgecolor="black")
    bottom.set(xlabel="predicted probability", ylabel="cases")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def roc_diagram(
    scores: ArrayLike,
    labels: Sequence[int] | np.ndarray,
    path: Path,
    title: str = "Case-level ROC",
    threshold: float | None = None,
) -> None:
    """PNG of the ROC curve with its AUC; ``threshold``, if given, is marked as the stated operating point."""
    y = _labels(labels)
    s = _scores(scores, y)
    _both_classes(y)
    fpr, tpr, _ = roc_curve(y, s)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=110)
    ax.plot(fpr, tpr, color="black", lw=2, label=f"AUC {roc_auc_score(y, s):.3f}")
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
    if threshold is not None:
        point = operating_point(s, y, threshold)
        ax.plot(1 - point["specificity"], point["sensitivity"], "o", color="tab:red",
                label=f"threshold {threshold:.3g}: sens {point['sensitivity']:.2f}, "
                      f"spec {point['specificity']:.2f}")
    ax.set(title=title, xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
