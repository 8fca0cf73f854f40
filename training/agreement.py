"""Agreement between expert readers: Fleiss' kappa, per-reader scores and majority consensus.

The difficult-case study (paper section 2.3) has several experts re-read the cases the model or the original
annotators found hard, measures every reader and the model, and settles a revised ground truth by majority
vote. This module holds the arithmetic of that study so that it can be tested on its own; the command line
(`ich-model review`) only reads files and writes reports. Fleiss' kappa is statsmodels' and the confusion
counts scikit-learn's, behind checks that name what is wrong with the input; the review must not import
torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum

import numpy as np
import numpy.typing as npt
from sklearn.metrics import confusion_matrix
from statsmodels.stats.inter_rater import fleiss_kappa as _statsmodels_fleiss_kappa

__all__ = [
    "BinaryScores",
    "CaseConsensus",
    "ConsensusStatus",
    "binary_scores",
    "binary_table",
    "fleiss_kappa",
    "majority_consensus",
    "validate_majority",
]


def fleiss_kappa(table: npt.ArrayLike) -> float:
    """Fleiss' kappa of a subjects x categories table of rating counts (statsmodels, ``method="fleiss"``).

    Fleiss (1971) generalises Scott's pi to any fixed number of raters per subject; raters need not be the
    same people for every subject, only the same number. Row ``i`` counts how many raters put subject ``i``
    in each category.

    Args:
        table: ``[subjects, categories]`` non-negative integer counts; every row has the same sum ``n >= 2``.

    Returns:
        kappa in ``[-1, 1]``; ``nan`` when it is undefined, i.e. every rating of every subject fell in one
        category (chance agreement is then 1 and kappa is 0/0).

    Raises:
        ValueError: the table is not 2-D, is empty, has negative or non-integer counts, rows with different
            sums, or fewer than two raters per subject.
    """
    counts = _rating_counts(table)
    if np.count_nonzero(counts.sum(axis=0)) == 1:
        return math.nan
    return float(_statsmodels_fleiss_kappa(counts, method="fleiss"))


def _rating_counts(table: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """The table as float counts, checked for what Fleiss' kappa assumes."""
    counts = np.asarray(table, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] == 0 or counts.shape[1] == 0:
        raise ValueError(f"table must be a non-empty 2-D subjects x categories array, not {counts.shape}")
    if not np.all(np.isfinite(counts)) or np.any(counts < 0) or np.any(counts != np.round(counts)):
        raise ValueError("table must hold non-negative integer counts")
    raters = counts.sum(axis=1)
    if np.any(raters != raters[0]):
        sums = sorted({int(r) for r in raters})
        raise ValueError(f"every subject needs the same number of ratings, got row sums {sums}")
    if raters[0] < 2:
        raise ValueError(f"Fleiss' kappa needs at least two ratings per subject, got {int(raters[0])}")
    return counts


def binary_table(votes_positive: npt.ArrayLike, raters: int) -> npt.NDArray[np.int64]:
    """Turn per-subject positive vote counts into the ``[subjects, 2]`` table Fleiss' kappa takes.

    Args:
        votes_positive: number of raters who said "hemorrhage" for each subject.
        raters: raters per subject.

    Returns:
        ``[subjects, 2]`` int64 counts, columns (negative, positive).

    Raises:
        ValueError: a vote count is outside ``[0, raters]``.
    """
    votes = np.asarray(votes_positive, dtype=np.int64).reshape(-1)
    if np.any(votes < 0) or np.any(votes > raters):
        raise ValueError(f"positive votes must lie in [0, {raters}]")
    return np.stack([raters - votes, votes], axis=1)


@dataclass(frozen=True)
class BinaryScores:
    """Accuracy, sensitivity and specificity of binary calls against a truth, with the counts behind them.

    A rate whose denominator is zero (no positive or no negative truth cases) is ``None``, not 0 or 1,
    because a worklist may legitimately hold only one class and a made-up number would mislead.
    """

    accuracy: float | None
    sensitivity: float | None
    specificity: float | None
    true_positive: int
    false_positive: int
    true_negative: int
    false_negative: int

    @property
    def cases(self) -> int:
        """Number of cases scored."""
        return self.true_positive + self.false_positive + self.true_negative + self.false_negative

    def as_dict(self) -> dict[str, float | int | None]:
        """JSON-ready mapping (``None`` becomes ``null``)."""
        out: dict[str, float | int | None] = dict(asdict(self))
        out["cases"] = self.cases
        return out


def _rate(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def binary_scores(truth: npt.ArrayLike, predicted: npt.ArrayLike) -> BinaryScores:
    """Score binary calls (readers' reads or thresholded model output) against a binary truth.

    The review scores readers, whose calls are labels, not probabilities; a rate with no case to count is
    ``None`` (see :class:`BinaryScores`).

    Args:
        truth: 0/1 ground truth per case.
        predicted: 0/1 call per case, same length.

    Raises:
        ValueError: lengths differ or a value is not 0/1.
    """
    t = np.asarray(truth).reshape(-1)
    p = np.asarray(predicted).reshape(-1)
    if t.shape != p.shape:
        raise ValueError(f"truth and predicted differ in length: {t.size} vs {p.size}")
    for name, arr in (("truth", t), ("predicted", p)):
        if not np.all(np.isin(arr, (0, 1))):
            raise ValueError(f"{name} must hold only 0 and 1")
    counts = confusion_matrix(t, p, labels=[0, 1]) if t.size else np.zeros((2, 2), dtype=np.int64)
    tn, fp, fn, tp = (int(v) for v in counts.ravel())
    return BinaryScores(
        accuracy=_rate(tp + tn, t.size),
        sensitivity=_rate(tp, tp + fn),
        specificity=_rate(tn, tn + fp),
        true_positive=tp,
        false_positive=fp,
        true_negative=tn,
        false_negative=fn,
    )


class ConsensusStatus(StrEnum):
    """What the readers' vote did to a case's ground truth.

    - ``confirmed``: at least ``majority`` readers agree with the original label.
    - ``overturned``: at least ``majority`` readers agree on the opposite label; the truth is revised.
    - ``tie``: an even number of readers split exactly in half; the original label stands.
    - ``no_majority``: not a tie, but neither label reaches ``majority`` votes; the original label stands.
    """

    CONFIRMED = "confirmed"
    OVERTURNED = "overturned"
    TIE = "tie"
    NO_MAJORITY = "no_majority"


@dataclass(frozen=True)
class CaseConsensus:
    """The readers' verdict on one case."""

    votes_positive: int
    readers: int
    original_label: int
    revised_label: int
    status: ConsensusStatus

    @property
    def unanimous(self) -> bool:
        """All readers gave the same label (either one)."""
        return self.votes_positive in (0, self.readers)


def validate_majority(majority: int, readers: int) -> None:
    """Check that ``majority`` votes out of ``readers`` is a real, reachable majority.

    It must exceed half the readers, otherwise both labels could reach it at once (3 of 6 on each side) and
    the revised truth would depend on the order of the checks; and it cannot exceed the number of readers.

    Raises:
        ValueError: with a message a user can act on.
    """
    if readers < 1:
        raise ValueError("there are no readers")
    if majority > readers:
        raise ValueError(f"--majority {majority} is larger than the number of readers ({readers})")
    if 2 * majority <= readers:
        raise ValueError(
            f"--majority {majority} is not more than half of {readers} readers; "
            f"use at least {readers // 2 + 1}"
        )


def majority_consensus(
    votes_positive: Sequence[int] | npt.ArrayLike,
    readers: int,
    original_labels: Sequence[int] | npt.ArrayLike,
    majority: int,
) -> list[CaseConsensus]:
    """Settle each case's revised truth by majority vote, as the paper's consensus meeting did.

    The original label is overturned only when at least ``majority`` readers agree on the opposite label;
    ties (possible only with an even number of readers) and weaker splits keep the original label, because
    the paper amended the ground truth only with a majority (4 or more of 6) and a split panel is not
    evidence against the original annotation. Such cases are marked so the team can discuss them.

    Args:
        votes_positive: per case, how many readers said "hemorrhage".
        readers: readers per case (every reader reads every case).
        original_labels: per case, the original 0/1 label.
        majority: votes needed to overturn (and to confirm); see ``validate_majority``.

    Raises:
        ValueError: bad majority, mismatched lengths, labels other than 0/1, or votes outside
            ``[0, readers]``.
    """
    validate_majority(majority, readers)
    votes = np.asarray(votes_positive, dtype=np.int64).reshape(-1)
    labels = np.asarray(original_labels).reshape(-1)
    if votes.shape != labels.shape:
        raise ValueError(f"votes and labels differ in length: {votes.size} vs {labels.size}")
    if not np.all(np.isin(labels, (0, 1))):
        raise ValueError("original labels must be 0 or 1")
    if np.any(votes < 0) or np.any(votes > readers):
        raise ValueError(f"positive votes must lie in [0, {readers}]")
    verdicts: list[CaseConsensus] = []
    for v, label in zip(votes.tolist(), labels.astype(np.int64).tolist(), strict=True):
        agree = v if label == 1 else readers - v
        oppose = readers - agree
        if oppose >= majority:
            status, revised = ConsensusStatus.OVERTURNED, 1 - label
        elif agree >= majority:
            status, revised = ConsensusStatus.CONFIRMED, label
        elif 2 * v == readers:
            status, revised = ConsensusStatus.TIE, label
        else:
            status, revised = ConsensusStatus.NO_MAJORITY, label
        verdicts.append(CaseConsensus(v, readers, label, revised, status))
    return verdicts
