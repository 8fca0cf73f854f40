"""The case decision the gateway applies: the repository's case model, threshold and indeterminate band.

The threshold and the band are stored with the weights (``model_repository/case_model.json``, fitted on
out-of-fold predictions by ``ich-model cv``'s report), because they belong to those weights: a threshold
chosen for other weights means another sensitivity. ``ICH_THRESHOLD`` overrides the threshold. A repository
without a case model (older exports, the tests' tiny repositories) gets the paper's rule: the highest slice
probability, threshold 0.5 and the band [0.4, 0.6].
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from api.settings import Settings
from ich import spec
from ich.scoring import CASE_MODEL_FILENAME, CaseModel


@dataclass(frozen=True)
class Decision:
    """What turns the ensemble's output into a call."""

    case_model: CaseModel | None
    threshold: float
    band: tuple[float, float]


@lru_cache(maxsize=8)
def load_case_model(repository: Path) -> CaseModel | None:
    """The repository's case model, or ``None`` when it has none (a malformed one raises ``ValueError``)."""
    path = Path(repository) / CASE_MODEL_FILENAME
    return CaseModel.load(path) if path.is_file() else None


def decision_for(settings: Settings) -> Decision:
    """The gateway's decision: the repository's case model, its operating point unless overridden."""
    model = load_case_model(settings.model_repository)
    threshold = settings.threshold if settings.threshold is not None else (model.threshold if model else 0.5)
    band = model.band if model else spec.INDETERMINATE_BAND
    return Decision(model, float(threshold), (float(band[0]), float(band[1])))
