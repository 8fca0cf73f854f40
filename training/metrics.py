"""Evaluation metrics: ROC AUC, its patient bootstrap interval, DeLong's test and Dice.

The AUC is scikit-learn's ``roc_auc_score`` behind checks that name what is wrong with the input (scikit-learn
would take labels 0/2 as a binary problem); the patient bootstrap, DeLong's test and the Dice conventions of
the paper are not in scikit-learn or statsmodels and are written here.

Conventions (the evaluation report and the model card rely on them):

* AUC is the trapezoidal area under the ROC curve, which equals the Mann-Whitney statistic: the
  probability that a random positive scores higher than a random negative, ties counting one half. It is
  undefined (``ValueError``) when one class is missing.
* Bootstrap intervals resample *patients* (clusters), not slices: slices of one patient are strongly
  correlated, so resampling slices independently would give intervals that are too narrow. For case-level
  figures each patient is one case, so the cluster bootstrap is the ordinary bootstrap. Percentile method,
  500 replicates, seeded; replicates that draw only one class are skipped and counted.
* DeLong's test treats every row (slice or case) as independent; on slices it is therefore optimistic, and
  the report says which level each test is on.
* Dice follows Hssayeni et al. (2020): per-slice Dice only on slices whose ground truth has hemorrhage,
  averaged within each patient, then over patients. ``micro`` Dice pools the intersections and sums over
  the same slices (large bleeds weigh more).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats
from sklearn.metrics import roc_auc_score

__all__ = [
    "BootstrapInterval",
    "DeLongResult",
    "DiceSummary",
    "bootstrap_auc_ci",
    "delong_test",
    "dice_coefficient",
    "dice_summary",
    "roc_auc",
    "slice_dice_counts",
]


def _as_binary_labels(labels: Sequence[int] | np.ndarray) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    return y.astype(bool)


def _as_scores(scores: Sequence[float] | np.ndarray, n: int) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != (n,):
        raise ValueError(f"scores must have shape ({n},) like the labels, got {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    return s


def roc_auc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve (scikit-learn's ``roc_auc_score``; ties count one half).

    Raises:
        ValueError: when the labels hold only one class (AUC undefined), are not 0/1, or shapes disagree.
    """
    y = _as_binary_labels(labels)
    s = _as_scores(scores, y.size)
    if y.all() or not y.any():
        raise ValueError("AUC needs at least one positive and one negative")
    return float(roc_auc_score(y, s))


@dataclass(frozen=True)
class BootstrapInterval:
    """A percentile bootstrap interval and how many replicates were usable."""

    low: float
    high: float
    replicates: int
    skipped: int


def bootstrap_auc_ci(
    labels: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    groups: Sequence[object] | np.ndarray | None = None,
    *,
    n_boot: int = 500,
    confidence: float = 0.95,
    seed: int = 0,
) -> BootstrapInterval:
    """Percentile bootstrap interval of the AUC, resampling whole groups (patients) with replacement.

    Args:
        labels: 0/1 per row.
        scores: score per row.
        groups: cluster id per row (the patient); ``None`` treats every row as its own cluster.
        n_boot: number of replicates drawn (those with one class only are skipped and counted).
        confidence: two-sided coverage, 0.95 for a 95% interval.
        seed: seed of the numpy generator, so the report is reproducible.
    """
    y = _as_binary_labels(labels)
    s = _as_scores(scores, y.size)
    if not 0.0 < confidence < 1.0:
        raise ValueError("confidence must lie in (0, 1)")
    if n_boot < 1:
        raise ValueError("n_boot must be positive")
    rows_of = _cluster_rows(np.arange(y.size) if groups is None else np.asarray(groups), y.shape)
    aucs, skipped = _replicate_aucs(y, s, rows_of, n_boot, np.random.default_rng(seed))
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(aucs, [tail, 100.0 - tail])
    return BootstrapInterval(float(low), float(high), len(aucs), skipped)


def _cluster_rows(groups: np.ndarray, shape: tuple[int, ...]) -> list[np.ndarray]:
    """The row indices of each cluster, clusters in sorted id order."""
    if groups.shape != shape:
        raise ValueError("groups must have one entry per label")
    _, cluster = np.unique(groups, return_inverse=True)
    if cluster.size == 0:
        raise ValueError("no data")
    return [np.flatnonzero(cluster == c) for c in range(int(cluster.max()) + 1)]


#: Replicates per matrix product in :func:`_replicate_aucs` (bounds its memory on slice-level data).
_REPLICATES_PER_PRODUCT = 200


def _replicate_aucs(
    y: np.ndarray, s: np.ndarray, rows_of: list[np.ndarray], n_boot: int, rng: np.random.Generator
) -> tuple[list[float], int]:
    """The AUC of each replicate that holds both classes, and how many did not.

    A replicate is the multiset of clusters drawn, so its AUC follows from how often each cluster was drawn:
    the Mann-Whitney form (ties one half) over per-cluster histograms of the positive and negative scores,
    many replicates per matrix product. Why not ``roc_auc_score`` per replicate: the same numbers (a test
    compares them) at a small fraction of the time, and a report draws thousands of replicates.
    """
    clusters = len(rows_of)
    counts = np.stack([np.bincount(rng.integers(0, clusters, size=clusters), minlength=clusters)
                       for _ in range(n_boot)]).astype(np.float64)
    pos_hist, neg_hist = _cluster_histograms(y, s, rows_of)
    aucs: list[float] = []
    for chunk in np.array_split(counts, max(1, n_boot // _REPLICATES_PER_PRODUCT)):
        pos, neg = chunk @ pos_hist, chunk @ neg_hist  # [replicates, distinct scores]
        n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
        below = np.cumsum(neg, axis=1) - neg
        wins = np.sum(pos * (below + 0.5 * neg), axis=1)
        both = (n_pos > 0) & (n_neg > 0)
        aucs.extend((wins[both] / (n_pos[both] * n_neg[both])).tolist())
    if not aucs:
        raise ValueError("every bootstrap replicate held one class only")
    return aucs, n_boot - len(aucs)


def _cluster_histograms(
    y: np.ndarray, s: np.ndarray, rows_of: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """[clusters, distinct scores] counts of each cluster's positive and of its negative rows per score."""
    _, value = np.unique(s, return_inverse=True)
    cluster = np.empty(y.size, dtype=np.int64)
    for c, rows in enumerate(rows_of):
        cluster[rows] = c
    shape = (len(rows_of), int(value.max()) + 1)
    pos_hist, neg_hist = np.zeros(shape), np.zeros(shape)
    np.add.at(pos_hist, (cluster[y == 1], value[y == 1]), 1.0)
    np.add.at(neg_hist, (cluster[y == 0], value[y == 0]), 1.0)
    return pos_hist, neg_hist


@dataclass(frozen=True)
class DeLongResult:
    """DeLong et al. (1988) comparison of two correlated AUCs on the same cases."""

    auc_a: float
    auc_b: float
    variance: float  # variance of auc_a - auc_b
    z: float
    p: float


def _placements(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Structural components: V10[i] = P(neg < pos_i), V01[j] = P(pos > neg_j), ties one half."""
    # psi(x, y) = 1 if x > y, 0.5 if equal, 0 otherwise; rank-based to stay O(n log n)
    neg_sorted = np.sort(neg)
    pos_sorted = np.sort(pos)
    below = np.searchsorted(neg_sorted, pos, side="left")
    below_or_eq = np.searchsorted(neg_sorted, pos, side="right")
    v10 = (below + 0.5 * (below_or_eq - below)) / neg.size
    above = pos.size - np.searchsorted(pos_sorted, neg, side="right")
    above_or_eq = pos.size - np.searchsorted(pos_sorted, neg, side="left")
    v01 = (above + 0.5 * (above_or_eq - above)) / pos.size
    return v10, v01


def delong_test(
    labels: Sequence[int] | np.ndarray,
    scores_a: Sequence[float] | np.ndarray,
    scores_b: Sequence[float] | np.ndarray,
) -> DeLongResult:
    """Paired DeLong test of H0: AUC(a) == AUC(b), both scored on the same cases.

    Var(A - B) = (S10_aa + S10_bb - 2 S10_ab) / m + (S01_aa + S01_bb - 2 S01_ab) / n with the sample
    (co)variances (ddof=1) of the structural components over the m positives and n negatives;
    z = (A - B) / sqrt(Var), p two-sided from the normal distribution. When the variance is zero (identical
    rankings) z is 0 and p is 1 if the AUCs agree.
    """
    y = _as_binary_labels(labels)
    a = _as_scores(scores_a, y.size)
    b = _as_scores(scores_b, y.size)
    m = int(y.sum())
    n = y.size - m
    if m < 2 or n < 2:
        raise ValueError("DeLong's test needs at least two positives and two negatives")
    v10a, v01a = _placements(a[y], a[~y])
    v10b, v01b = _placements(b[y], b[~y])
    auc_a = float(v10a.mean())
    auc_b = float(v10b.mean())
    s10 = np.cov(np.vstack([v10a, v10b]), ddof=1)
    s01 = np.cov(np.vstack([v01a, v01b]), ddof=1)
    var = float(
        (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    )
    diff = auc_a - auc_b
    if var <= 1e-15:
        z = 0.0 if abs(diff) < 1e-12 else float(np.sign(diff) * np.inf)
    else:
        z = diff / float(np.sqrt(var))
    p = float(2.0 * stats.norm.sf(abs(z)))
    return DeLongResult(auc_a=auc_a, auc_b=auc_b, variance=max(var, 0.0), z=float(z), p=p)


def dice_coefficient(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two binary masks, 2|P∩T| / (|P| + |T|); 1.0 when both are empty (nothing to miss)."""
    p = np.asarray(pred).astype(bool)
    t = np.asarray(truth).astype(bool)
    if p.shape != t.shape:
        raise ValueError(f"mask shapes differ: {p.shape} vs {t.shape}")
    denom = int(p.sum()) + int(t.sum())
    if denom == 0:
        return 1.0
    return float(2.0 * np.logical_and(p, t).sum() / denom)


def slice_dice_counts(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-slice ``[intersection, |pred|, |truth|]`` of binary masks ``[N, ...]``, shape ``[N, 3]`` int64.

    Evaluation keeps only these counts, so memory stays bounded however many patients are scored.
    """
    p = np.asarray(pred).astype(bool)
    t = np.asarray(truth).astype(bool)
    if p.shape != t.shape or p.ndim < 2:
        raise ValueError(f"masks must share a shape [N, ...], got {p.shape} vs {t.shape}")
    axes = tuple(range(1, p.ndim))
    return np.stack(
        [np.logical_and(p, t).sum(axis=axes), p.sum(axis=axes), t.sum(axis=axes)], axis=1
    ).astype(np.int64)


@dataclass(frozen=True)
class DiceSummary:
    """Dice on ground-truth-positive slices: per-patient convention and pooled (micro)."""

    per_patient: float  # mean over patients of the mean slice Dice within the patient
    micro: float  # 2 * sum(intersection) / (sum(|pred|) + sum(|truth|))
    slice_mean: float  # plain mean over slices, for reference
    n_slices: int
    n_patients: int
    # Each patient's own mean slice Dice, by patient id (as a string): the mean hides which patients fail.
    by_patient: dict[str, float] = field(default_factory=dict)


def dice_summary(counts: np.ndarray, patients: Sequence[object] | np.ndarray) -> DiceSummary:
    """Summarise per-slice counts from :func:`slice_dice_counts` into both Dice conventions.

    Only slices with hemorrhage in the ground truth (``|truth| > 0``) enter, as in Hssayeni et al. 2020;
    patients without such slices do not count. ``nan`` when no slice qualifies.
    """
    c = np.asarray(counts, dtype=np.int64)
    g = np.asarray(patients)
    if c.ndim != 2 or c.shape[1] != 3 or g.shape != (c.shape[0],):
        raise ValueError("counts must be [N, 3] with one patient id per row")
    keep = c[:, 2] > 0
    if not keep.any():
        nan = float("nan")
        return DiceSummary(nan, nan, nan, 0, 0, {})
    c = c[keep]
    g = g[keep]
    per_slice = 2.0 * c[:, 0] / (c[:, 1] + c[:, 2])
    patient_ids, inverse = np.unique(g, return_inverse=True)
    per_patient = np.bincount(inverse, weights=per_slice) / np.bincount(inverse)
    micro = 2.0 * c[:, 0].sum() / (c[:, 1].sum() + c[:, 2].sum())
    return DiceSummary(
        per_patient=float(per_patient.mean()),
        micro=float(micro),
        slice_mean=float(per_slice.mean()),
        n_slices=int(keep.sum()),
        n_patients=int(patient_ids.size),
        by_patient={str(pid): float(d) for pid, d in zip(patient_ids, per_patient, strict=True)},
    )
