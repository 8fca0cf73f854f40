"""Fleiss' kappa, reader scores and majority consensus (training/agreement.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.agreement import (
    ConsensusStatus,
    binary_scores,
    binary_table,
    fleiss_kappa,
    majority_consensus,
    validate_majority,
)

# The worked example of Fleiss' kappa reproduced on Wikipedia ("Fleiss' kappa", Worked example):
# 10 subjects, 14 raters each, 5 categories; P-bar = 0.378, P_e = 0.213, kappa = 0.210.
WIKIPEDIA_TABLE = np.array(
    [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
)


def test_fleiss_kappa_matches_published_worked_example() -> None:
    assert fleiss_kappa(WIKIPEDIA_TABLE) == pytest.approx(0.210, abs=5e-4)


def test_fleiss_kappa_matches_hand_computed_binary_table() -> None:
    # 5 subjects, 4 raters, positive votes 4, 4, 3, 0, 1.
    # P_i = 1, 1, 1/2, 1, 1/2 -> P-bar = 0.8; p(pos) = 12/20 = 0.6 -> P_e = 0.36 + 0.16 = 0.52;
    # kappa = (0.8 - 0.52) / (1 - 0.52) = 7/12.
    table = binary_table([4, 4, 3, 0, 1], raters=4)
    assert table.tolist() == [[0, 4], [0, 4], [1, 3], [4, 0], [3, 1]]
    assert fleiss_kappa(table) == pytest.approx(7 / 12, abs=1e-12)


def _kappa_by_rater_pairs(table: np.ndarray) -> float:
    """Fleiss' kappa from its definition, counting rater pairs one by one.

    Observed: of the ``n (n - 1)`` ordered pairs of a subject's ratings, the share that agree, averaged over
    subjects. Chance: the probability that two ratings drawn from all ratings pooled agree.
    """
    observed = []
    for row in table:
        ratings = np.repeat(np.arange(row.size), row)
        pairs = [(a, b) for i, a in enumerate(ratings) for j, b in enumerate(ratings) if i != j]
        observed.append(sum(a == b for a, b in pairs) / len(pairs))
    shares = table.sum(axis=0) / table.sum()
    chance = float(np.sum(shares**2))
    return (float(np.mean(observed)) - chance) / (1.0 - chance)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_fleiss_kappa_agrees_with_a_count_of_rater_pairs(seed: int) -> None:
    rng = np.random.default_rng(seed)
    raters, categories = int(rng.integers(2, 9)), int(rng.integers(2, 6))
    table = np.stack([rng.multinomial(raters, rng.dirichlet(np.ones(categories))) for _ in range(25)])
    assert fleiss_kappa(table) == pytest.approx(_kappa_by_rater_pairs(table), abs=1e-12)
    assert fleiss_kappa(WIKIPEDIA_TABLE) == pytest.approx(_kappa_by_rater_pairs(WIKIPEDIA_TABLE), abs=1e-12)


def test_fleiss_kappa_perfect_and_chance_disagreement() -> None:
    assert fleiss_kappa(binary_table([6, 0, 6, 0], raters=6)) == pytest.approx(1.0)
    # Every subject split 1-1 between two raters: observed agreement 0 < chance 0.5 -> kappa -1.
    assert fleiss_kappa(binary_table([1, 1, 1], raters=2)) == pytest.approx(-1.0)


def test_fleiss_kappa_undefined_when_only_one_category_is_used() -> None:
    assert math.isnan(fleiss_kappa(binary_table([5, 5, 5], raters=5)))


@pytest.mark.parametrize(
    ("table", "match"),
    [
        ([[1, 2], [2, 2]], "same number"),
        ([[1, 0], [0, 1]], "at least two"),
        ([[-1, 3], [1, 1]], "non-negative"),
        ([[0.5, 1.5], [1, 1]], "integer"),
        ([1, 2, 3], "2-D"),
        (np.zeros((0, 2)), "2-D"),
    ],
)
def test_fleiss_kappa_rejects_bad_tables(table: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fleiss_kappa(table)  # type: ignore[arg-type]


def test_binary_scores_counts_and_rates() -> None:
    truth = [1, 1, 1, 0, 0, 0, 0, 1]
    calls = [1, 0, 1, 0, 1, 0, 0, 1]
    s = binary_scores(truth, calls)
    assert (s.true_positive, s.false_negative, s.true_negative, s.false_positive) == (3, 1, 3, 1)
    assert s.accuracy == pytest.approx(6 / 8)
    assert s.sensitivity == pytest.approx(3 / 4)
    assert s.specificity == pytest.approx(3 / 4)
    assert s.as_dict()["cases"] == 8


def test_binary_scores_undefined_rate_is_none() -> None:
    s = binary_scores([1, 1], [1, 0])
    assert s.sensitivity == pytest.approx(0.5)
    assert s.specificity is None


def test_binary_scores_rejects_non_binary() -> None:
    with pytest.raises(ValueError, match="0 and 1"):
        binary_scores([0, 2], [0, 1])
    with pytest.raises(ValueError, match="length"):
        binary_scores([0, 1], [0])


def test_consensus_six_readers_majority_four_with_ties() -> None:
    votes = [4, 2, 3, 3, 6, 5, 1]
    original = [0, 1, 0, 1, 1, 1, 0]
    verdicts = majority_consensus(votes, readers=6, original_labels=original, majority=4)
    assert [v.status for v in verdicts] == [
        ConsensusStatus.OVERTURNED,  # 4 of 6 say hemorrhage against a 0
        ConsensusStatus.OVERTURNED,  # 4 of 6 say no hemorrhage against a 1
        ConsensusStatus.TIE,
        ConsensusStatus.TIE,
        ConsensusStatus.CONFIRMED,
        ConsensusStatus.CONFIRMED,
        ConsensusStatus.CONFIRMED,
    ]
    assert [v.revised_label for v in verdicts] == [1, 0, 0, 1, 1, 1, 0]
    assert [v.unanimous for v in verdicts] == [False, False, False, False, True, False, False]


def test_consensus_without_a_strong_enough_majority_keeps_the_original() -> None:
    # 6 readers, 5 needed: a 4-2 split against the label is no majority, a 3-3 split is a tie.
    verdicts = majority_consensus([4, 2, 3, 5], readers=6, original_labels=[0, 1, 1, 0], majority=5)
    assert [v.status for v in verdicts] == [
        ConsensusStatus.NO_MAJORITY,
        ConsensusStatus.NO_MAJORITY,
        ConsensusStatus.TIE,
        ConsensusStatus.OVERTURNED,
    ]
    assert [v.revised_label for v in verdicts] == [0, 1, 1, 1]


def test_consensus_odd_readers_never_tie() -> None:
    verdicts = majority_consensus([0, 1, 2, 3, 4, 5], readers=5, original_labels=[1] * 6, majority=3)
    assert ConsensusStatus.TIE not in {v.status for v in verdicts}
    assert [v.revised_label for v in verdicts] == [0, 0, 0, 1, 1, 1]


@pytest.mark.parametrize(
    ("majority", "readers", "match"),
    [(7, 6, "larger than the number of readers"), (3, 6, "more than half"), (1, 0, "no readers")],
)
def test_validate_majority_rejects(majority: int, readers: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        validate_majority(majority, readers)


def test_consensus_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="0 or 1"):
        majority_consensus([1], readers=3, original_labels=[2], majority=2)
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        majority_consensus([4], readers=3, original_labels=[1], majority=2)


def test_binary_scores_of_no_case_has_no_rates() -> None:
    s = binary_scores([], [])
    assert (s.accuracy, s.sensitivity, s.specificity, s.cases) == (None, None, None, 0)
