"""training.metrics against values worked out by hand and the AUC against a count of every pair."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from training import metrics

# Scorer A: positives 0.9, 0.6, 0.4; negatives 0.5, 0.4, 0.1.
# Pairs (pos > neg = 1, tie = 1/2): 0.9 beats all 3 -> 3; 0.6 beats all 3 -> 3; 0.4: <0.5 -> 0,
# tie with 0.4 -> 0.5, >0.1 -> 1 -> 1.5. AUC = 7.5 / 9 = 5/6.
LABELS = np.array([1, 1, 1, 0, 0, 0])
SCORES_A = np.array([0.9, 0.6, 0.4, 0.5, 0.4, 0.1])
# Scorer B: positives 0.8, 0.3, 0.7; negatives 0.2, 0.6, 0.1. 0.8 -> 3; 0.3 -> 2; 0.7 -> 3. AUC = 8/9.
SCORES_B = np.array([0.8, 0.3, 0.7, 0.2, 0.6, 0.1])


def test_auc_by_hand_with_ties() -> None:
    assert metrics.roc_auc(LABELS, SCORES_A) == pytest.approx(5 / 6)
    assert metrics.roc_auc(LABELS, SCORES_B) == pytest.approx(8 / 9)
    assert metrics.roc_auc([1, 0], [0.3, 0.3]) == pytest.approx(0.5)
    assert metrics.roc_auc([0, 1], [0.2, 0.7]) == pytest.approx(1.0)
    assert metrics.roc_auc([1, 0], [0.2, 0.7]) == pytest.approx(0.0)


def test_auc_undefined_for_one_class() -> None:
    with pytest.raises(ValueError, match="positive and one negative"):
        metrics.roc_auc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="0 or 1"):
        metrics.roc_auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="shape"):
        metrics.roc_auc([0, 1], [0.1, 0.2, 0.3])


def _pairwise_auc(y: np.ndarray, s: np.ndarray) -> float:
    """The AUC by its definition: the share of (positive, negative) pairs ordered right, ties one half."""
    pos, neg = s[y == 1][:, None], s[y == 0][None, :]
    return float(((pos > neg) + 0.5 * (pos == neg)).mean())


def test_auc_counts_every_pair_on_tied_scores() -> None:
    rng = np.random.default_rng(3)
    for decimals in (0, 1, 3):
        y = rng.integers(0, 2, size=400)
        s = np.round(rng.normal(size=400) + y, decimals)  # rounding creates many ties
        assert metrics.roc_auc(y, s) == pytest.approx(_pairwise_auc(y, s), abs=1e-12)


def test_auc_rejects_scores_that_are_not_finite() -> None:
    with pytest.raises(ValueError, match="finite"):
        metrics.roc_auc([0, 1], [0.1, np.nan])


def test_delong_by_hand() -> None:
    # Structural components (fraction of the other class beaten, ties 1/2):
    #   A: V10 = [1, 1, 1/2] over positives, V01 = [2/3, 5/6, 1] over negatives
    #   B: V10 = [1, 2/3, 1],                 V01 = [1, 2/3, 1]
    # S10: var_a = 1/12, var_b = 1/27, cov = -1/36 -> (1/12 + 1/27 + 2/36) / 3 = 19/324
    # S01: var_a = 1/36, var_b = 1/27, cov = 0     -> (1/36 + 1/27) / 3         = 7/324
    # Var(A - B) = 26/324 = 13/162; z = (5/6 - 8/9) / sqrt(13/162)
    res = metrics.delong_test(LABELS, SCORES_A, SCORES_B)
    assert res.auc_a == pytest.approx(5 / 6)
    assert res.auc_b == pytest.approx(8 / 9)
    assert res.variance == pytest.approx(13 / 162)
    z = (5 / 6 - 8 / 9) / math.sqrt(13 / 162)
    assert res.z == pytest.approx(z)
    assert res.p == pytest.approx(2 * stats.norm.sf(abs(z)))
    swapped = metrics.delong_test(LABELS, SCORES_B, SCORES_A)
    assert swapped.z == pytest.approx(-z) and swapped.p == pytest.approx(res.p)


def test_delong_by_hand_with_unequal_class_sizes() -> None:
    # Three positives, two negatives (cases interleaved), so dividing S10 by n and S01 by m shows:
    #   A: positives 0.9, 0.6, 0.3; negatives 0.5, 0.1 -> V10 = [1, 1, 1/2], V01 = [2/3, 1]
    #   B: positives 0.8, 0.4, 0.3; negatives 0.2, 0.6 -> V10 = [1, 1/2, 1/2], V01 = [1, 1/3]
    # S10: var_a = 1/12, var_b = 1/12, cov = 1/24 -> term 1/12 + 1/12 - 2/24 = 1/12
    # S01: var_a = 1/18, var_b = 2/9, cov = -1/9  -> term 1/18 + 2/9 + 2/9 = 1/2
    # Var = (1/12) / 3 + (1/2) / 2 = 5/18 (with m and n swapped: 5/24); z = (5/6 - 2/3) / sqrt(5/18)
    labels = [1, 0, 1, 1, 0]
    a = [0.9, 0.5, 0.6, 0.3, 0.1]
    b = [0.8, 0.2, 0.4, 0.3, 0.6]
    res = metrics.delong_test(labels, a, b)
    assert (res.auc_a, res.auc_b) == pytest.approx((5 / 6, 2 / 3))
    assert res.variance == pytest.approx(5 / 18)
    assert res.z == pytest.approx(1 / math.sqrt(10))
    assert res.p == pytest.approx(math.erfc(1 / math.sqrt(20)))


def test_delong_identical_scorers_and_clear_difference() -> None:
    same = metrics.delong_test(LABELS, SCORES_A, SCORES_A)
    assert same.z == 0.0 and same.p == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(200), np.zeros(200)].astype(int)
    good = y * 2.0 + rng.normal(size=400)
    noise = rng.normal(size=400)
    res = metrics.delong_test(y, good, noise)
    assert res.auc_a > res.auc_b and res.z > 5 and res.p < 1e-6


def test_bootstrap_resamples_patients_not_rows() -> None:
    # Repeating every row k times inside its own cluster must give exactly the row-level interval with the
    # same seed (AUC is invariant to repeating all rows equally); a slice-level bootstrap would not.
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, size=60)
    s = rng.normal(size=60) + y
    base = metrics.bootstrap_auc_ci(y, s, n_boot=200, seed=7)
    k = 4
    rep = metrics.bootstrap_auc_ci(np.repeat(y, k), np.repeat(s, k), np.repeat(np.arange(60), k),
                                   n_boot=200, seed=7)
    assert (rep.low, rep.high) == pytest.approx((base.low, base.high))
    naive = metrics.bootstrap_auc_ci(np.repeat(y, k), np.repeat(s, k), n_boot=200, seed=7)
    assert naive.high - naive.low < rep.high - rep.low  # ignoring clusters narrows the interval
    auc = metrics.roc_auc(y, s)
    assert base.low < auc < base.high
    assert base.replicates + base.skipped == 200


def test_bootstrap_interval_is_the_percentiles_of_the_replicates_aucs() -> None:
    # The same draws redone here (one cluster per row, the generator used the same way), each replicate's AUC
    # counted pair by pair: the interval is their 2.5th and 97.5th percentiles.
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, size=30)
    s = np.round(rng.normal(size=30) + y, 1)
    draws = np.random.default_rng(5)
    aucs = []
    for _ in range(100):
        idx = draws.integers(0, 30, size=30)
        if 0 < y[idx].sum() < 30:
            aucs.append(_pairwise_auc(y[idx], s[idx]))
    ci = metrics.bootstrap_auc_ci(y, s, n_boot=100, seed=5)
    assert ci.replicates == len(aucs)
    assert (ci.low, ci.high) == pytest.approx(tuple(np.percentile(aucs, [2.5, 97.5])), abs=1e-12)


def test_bootstrap_of_uneven_clusters_matches_scikit_learn_replicate_by_replicate() -> None:
    # Clusters of 1 to 30 rows, tied scores: each replicate's rows rebuilt from the same draws and scored by
    # roc_auc_score give the same interval and the same count of one-class replicates.
    rng = np.random.default_rng(9)
    sizes = rng.integers(1, 31, size=25)
    groups = np.repeat(np.arange(25), sizes)
    y = (rng.random(groups.size) < 0.2).astype(int)
    s = np.round(rng.random(groups.size) + 0.4 * y, 1)
    rows_of = [np.flatnonzero(groups == c) for c in range(25)]
    draws = np.random.default_rng(3)
    aucs, skipped = [], 0
    for _ in range(300):
        idx = np.concatenate([rows_of[c] for c in draws.integers(0, 25, size=25)])
        if y[idx].all() or not y[idx].any():
            skipped += 1
        else:
            aucs.append(roc_auc_score(y[idx], s[idx]))
    ci = metrics.bootstrap_auc_ci(y, s, groups, n_boot=300, seed=3)
    assert (ci.replicates, ci.skipped) == (len(aucs), skipped)
    assert (ci.low, ci.high) == pytest.approx(tuple(np.percentile(aucs, [2.5, 97.5])), abs=1e-12)


def test_bootstrap_is_seeded_and_skips_one_class_draws() -> None:
    y = np.array([1, 0, 1, 0])
    s = np.array([0.9, 0.1, 0.4, 0.6])
    a = metrics.bootstrap_auc_ci(y, s, n_boot=500, seed=11)
    b = metrics.bootstrap_auc_ci(y, s, n_boot=500, seed=11)
    assert a == b
    # with 4 rows a draw has one class with probability 2 * (1/2)^4 = 1/8
    assert 30 < a.skipped < 100
    assert 0.0 <= a.low <= a.high <= 1.0


def test_dice_coefficient_by_hand() -> None:
    truth = np.zeros((4, 4), bool)
    truth[0, 0:3] = True  # 3 pixels
    pred = np.zeros((4, 4), bool)
    pred[0, 1:4] = True  # 3 pixels, overlap 2 -> Dice = 4/6
    assert metrics.dice_coefficient(pred, truth) == pytest.approx(2 / 3)
    assert metrics.dice_coefficient(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0
    assert metrics.dice_coefficient(np.zeros((2, 2)), np.ones((2, 2))) == 0.0


def test_dice_conventions_by_hand() -> None:
    truth = np.zeros((5, 4, 4), bool)
    pred = np.zeros((5, 4, 4), bool)
    # patient "p1": slice 0 perfect (4 px), slice 1 half-overlap (truth 2, pred 2, overlap 1 -> 1/2)
    truth[0, :2, :2] = pred[0, :2, :2] = True
    truth[1, 0, 0:2] = True
    pred[1, 0, 1:3] = True
    # patient "p2": slice 2 missed (truth 8 px, pred empty -> 0); slice 3 no hemorrhage but a false
    # positive (excluded from both Dice conventions)
    truth[2, :2, :] = True
    pred[3, 3, 3] = True
    # patient "p3": slice 4 nothing anywhere -> patient excluded
    patients = np.array(["p1", "p1", "p2", "p2", "p3"])
    counts = metrics.slice_dice_counts(pred, truth)
    np.testing.assert_array_equal(counts, [[4, 4, 4], [1, 2, 2], [0, 0, 8], [0, 1, 0], [0, 0, 0]])
    summary = metrics.dice_summary(counts, patients)
    # per patient: p1 = (1 + 1/2)/2 = 3/4, p2 = 0 -> mean 3/8
    assert summary.per_patient == pytest.approx(3 / 8)
    # micro: 2 * (4 + 1 + 0) / ((4 + 2 + 0) + (4 + 2 + 8)) = 10 / 20
    assert summary.micro == pytest.approx(0.5)
    # slice mean: (1 + 1/2 + 0) / 3
    assert summary.slice_mean == pytest.approx(0.5)
    assert (summary.n_slices, summary.n_patients) == (3, 2)
    assert summary.by_patient == pytest.approx({"p1": 0.75, "p2": 0.0})


def test_dice_summary_without_positive_slices_is_nan() -> None:
    summary = metrics.dice_summary(np.zeros((2, 3), np.int64), ["a", "b"])
    assert math.isnan(summary.per_patient) and summary.n_slices == 0
    with pytest.raises(ValueError):
        metrics.dice_summary(np.zeros((2, 3)), ["a"])
