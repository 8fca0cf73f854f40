"""Jobs wait for a stopped Triton: a real ``tritonserver`` goes away while studies are queued, comes back, and
every job finishes; none fails and none spends an attempt while the engine is down.

Real parts only: ``ich-serve`` under uvicorn with ``ICH_ENGINE=triton``, its job store (SQLite, then a real
PostgreSQL), and a CPU ``tritonserver`` (``.venv-triton``; the test skips, saying why, where it is absent)
serving the tiny repository, stopped with SIGTERM and started again on the same ports.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.integration.conftest import require_tritonserver, running_triton, serve, wait_jobs_finished
from tests.support.dicom_study import study_zip

pytestmark = [pytest.mark.slow, pytest.mark.triton]

JOBS = 4


def test_queued_jobs_wait_for_triton_and_then_finish(
    tiny_repository: Path, tmp_path: Path, store_settings: dict[str, str]
) -> None:
    require_tritonserver()
    bodies = []
    for i in range(JOBS):
        hu = np.full((4, 64, 64), 32.0, np.float32)
        hu[1 + i % 2, 16:32, 20 + 4 * i : 36 + 4 * i] = 72.0
        bodies.append(study_zip(hu, seed=i)[0])
    with running_triton(tiny_repository, tmp_path / "triton") as server:
        settings = {
            "ICH_ENGINE": "triton",
            "ICH_TRITON_URL": server.grpc_url,
            "ICH_TRITON_TIMEOUT_S": "20",
            "ICH_MODEL_REPOSITORY": str(tiny_repository),
            "ICH_THREADS": "2",
            "ICH_JOB_WORKERS": "1",
            **store_settings,
        }
        with (
            serve(tmp_path / "gateway.log", **settings) as base,
            httpx.Client(base_url=base, timeout=60) as client,
        ):
            server.stop()
            deadline = time.monotonic() + 60
            while client.get("/readyz").status_code != 503:
                assert time.monotonic() < deadline, "the gateway still calls a stopped Triton ready"
                time.sleep(0.2)
            ids = []
            for data in bodies:
                accepted = client.post(
                    "/v1/studies", content=data, headers={"content-type": "application/zip"}
                )
                assert accepted.status_code == 202, accepted.text  # accepting needs no engine
                ids.append(accepted.json()["id"])
            time.sleep(3.0)
            waiting = [client.get(f"/v1/studies/{job_id}").json() for job_id in ids]
            assert [(j["status"], j["attempts"]) for j in waiting] == [("queued", 0)] * JOBS

            server.start(timeout_s=180)
            jobs = wait_jobs_finished(client, ids)
            direct = [
                client.post("/v1/cases", content=data, headers={"content-type": "application/zip"}).json()
                for data in bodies
            ]
    assert [j["status"] for j in jobs] == ["done"] * JOBS, [j["error"] for j in jobs]
    assert all(j["attempts"] == 1 for j in jobs)
    for job, answer in zip(jobs, direct, strict=True):
        assert job["result"]["engine"] == "triton"
        assert job["result"]["slices"] == answer["slices"]
