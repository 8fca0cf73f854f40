"""Done-when check: the shipped ensemble on the example study gives the same numbers on Triton as embedded.

``make triton`` serves exactly this rendering of ``model_repository/``; the gateway is the one ``make serve``
runs, switched to the Triton engine.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from api.settings import Settings
from ich import repository
from ich_devtools.triton_local import LocalTriton
from tests.integration.conftest import assert_same_numbers, post_study, require_tritonserver, running_triton

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "model_repository"
EXAMPLE = ROOT / "examples" / "ct_ich_study.zip"

pytestmark = [pytest.mark.triton, pytest.mark.slow]


@pytest.fixture(scope="module")
def shipped_triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTriton]:
    require_tritonserver()
    repository.require_complete(SHIPPED)  # the shipped weights are part of the repository: never skip
    with running_triton(SHIPPED, tmp_path_factory.mktemp("triton_shipped")) as server:
        yield server


async def test_example_study_same_numbers_on_both_engines(shipped_triton: LocalTriton) -> None:
    body = EXAMPLE.read_bytes()
    common = Settings(model_repository=SHIPPED, intra_op_threads=1, threads=2)
    embedded = await post_study(common.model_copy(update={"engine": "embedded"}), body)
    triton = await post_study(
        common.model_copy(update={"engine": "triton", "triton_url": shipped_triton.grpc_url}), body
    )
    assert embedded["model_version"] == triton["model_version"] == repository.read_version(SHIPPED)
    assert len(triton["slices"]) == len(embedded["slices"]) > 1
    assert [s["sop_instance_uid"] for s in triton["slices"]] == [
        s["sop_instance_uid"] for s in embedded["slices"]
    ]
    assert_same_numbers(triton, embedded, per_model="weights")
    assert triton["ich_detected"] == embedded["ich_detected"]
    assert triton["hemorrhage_volume_ml"] == pytest.approx(
        embedded["hemorrhage_volume_ml"], rel=1e-2, abs=0.05
    )
