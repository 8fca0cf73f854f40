"""``ich_cases_total{outcome}`` labels a case in the band "indeterminate", even when it is over the threshold.

The expected labels are written out by hand for studies whose answer the fake engine fixes (its probability
follows the HU values), not recomputed by the gateway's own rule: a reordering of the rule then shows.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.settings import Settings
from tests.support.dicom_study import study_zip
from tests.support.fake_engine import FakeEngine

ZIP = {"content-type": "application/zip"}
#: A repository folder without case_model.json: the paper's rule (threshold 0.5, band 0.4 to 0.6).
PAPER_RULE = Path(tempfile.mkdtemp(prefix="paper-rule-"))


def _study(peak_hu: float) -> bytes:
    hu = np.full((4, 32, 32), 30.0, np.float32)
    hu[2, 8:20, 8:20] = peak_hu
    return study_zip(hu)[0]


@pytest.mark.parametrize(
    ("peak_hu", "detected", "indeterminate", "label"),
    [
        (42.0, True, True, "indeterminate"),  # 0.5225: over the threshold, inside the band
        (41.0, False, True, "indeterminate"),  # 0.49875: under the threshold, inside the band
        (70.0, True, False, "positive"),  # 0.95
        (30.0, False, False, "negative"),  # 0.2375
    ],
)
def test_the_outcome_label_of_a_case(peak_hu: float, detected: bool, indeterminate: bool, label: str) -> None:
    with TestClient(create_app(Settings(model_repository=PAPER_RULE), engine=FakeEngine())) as client:
        body = client.post("/v1/cases", content=_study(peak_hu), headers=ZIP).json()
        metrics = client.get("/metrics").text
    assert (body["ich_detected"], body["indeterminate"]) == (detected, indeterminate), body
    counts = {
        outcome: f'ich_cases_total{{outcome="{outcome}"}} {1.0 if outcome == label else 0.0}' in metrics
        for outcome in ("positive", "negative", "indeterminate")
    }
    assert all(counts.values()), f"expected only {label!r} counted: {counts}"
