"""Done-when check: the shipped ensemble on the example study gives the same numbers on Triton as embedded.

``make triton`` serves exactly this rendering of ``model_repository/``; the gateway is the one ``make serve``
runs, switched to the Triton engine.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from api.app import create_app
from api.settings import Settings
from ich import repository, spec
from ich.triton_local import LocalTriton, TritonStartError, default_venv, find_distribution
from tests.integration.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "model_repository"
EXAMPLE = ROOT / "examples" / "ct_ich_study.zip"

pytestmark = [pytest.mark.triton, pytest.mark.slow]


@pytest.fixture(scope="module")
def shipped_triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTriton]:
    try:
        find_distribution(default_venv())
    except TritonStartError as exc:
        pytest.skip(f"no local tritonserver: {exc}")
    repository.require_complete(SHIPPED)  # the shipped weights are part of the repository: never skip
    server = LocalTriton(
        SHIPPED,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        intra_op_threads=1,
        workdir=tmp_path_factory.mktemp("triton_shipped"),
    )
    server.start(timeout_s=180)
    try:
        yield server
    finally:
        server.stop()


async def _post(settings: Settings, body: bytes) -> dict:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway", timeout=300) as client:
            response = await client.post(
                "/v1/cases", content=body, headers={"Content-Type": "application/zip"}
            )
    assert response.status_code == 200, response.text
    result: dict = response.json()
    return result


async def test_example_study_same_numbers_on_both_engines(shipped_triton: LocalTriton) -> None:
    body = EXAMPLE.read_bytes()
    common = Settings(model_repository=SHIPPED, intra_op_threads=1, threads=2)
    embedded = await _post(common.model_copy(update={"engine": "embedded"}), body)
    triton = await _post(
        common.model_copy(update={"engine": "triton", "triton_url": shipped_triton.grpc_url}), body
    )
    assert embedded["model_version"] == triton["model_version"] == repository.read_version(SHIPPED)
    assert len(triton["slices"]) == len(embedded["slices"]) > 1
    assert [s["sop_instance_uid"] for s in triton["slices"]] == [
        s["sop_instance_uid"] for s in embedded["slices"]
    ]
    np.testing.assert_allclose(
        [s["probability"] for s in triton["slices"]],
        [s["probability"] for s in embedded["slices"]],
        atol=1e-3,
    )
    for key in spec.MODEL_KEYS:
        np.testing.assert_allclose(
            [s["weights"][key] for s in triton["slices"]],
            [s["weights"][key] for s in embedded["slices"]],
            atol=1e-3,
        )
    assert triton["ich_probability"] == pytest.approx(embedded["ich_probability"], abs=1e-3)
    assert triton["ich_detected"] == embedded["ich_detected"]
    assert triton["hemorrhage_volume_ml"] == pytest.approx(
        embedded["hemorrhage_volume_ml"], rel=1e-2, abs=0.05
    )
