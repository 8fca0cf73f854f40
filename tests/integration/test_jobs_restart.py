"""Durable jobs through real uvicorn processes: a gateway killed with SIGKILL mid-queue loses no study.

Once with SQLite in the data directory and once with a real PostgreSQL (``tests/support/postgres.py``): ten
studies are queued, the gateway is killed (SIGKILL: no shutdown code runs) while some run, and a new gateway
on the same store finishes them all: each ends ``done`` with exactly one result, equal to what ``/v1/cases``
answers for the same study. The lease is short so that the dead worker's jobs are taken again quickly.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.integration.conftest import serve, start_gateway, wait_jobs_finished, wait_ready
from tests.support.dicom_study import PATIENT_ID, PATIENT_NAME, study_zip

pytestmark = pytest.mark.slow

STUDIES = 10
PER_ANALYSIS = ("case_id", "timing_ms")


def studies() -> list[bytes]:
    """Ten different studies (blob position and size vary), big enough that an analysis takes a moment."""
    out = []
    for i in range(STUDIES):
        hu = np.full((12, 96, 96), 32.0, np.float32)
        hu[2 + i % 8 : 4 + i % 8, 20 + 2 * i : 40 + 2 * i, 30:50] = 72.0
        data, _ = study_zip(hu, seed=i)
        out.append(data)
    return out


def comparable(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k not in PER_ANALYSIS}


def test_jobs_survive_a_killed_gateway(
    tiny_repository: Path, tmp_path: Path, store_settings: dict[str, str]
) -> None:
    settings = {
        "ICH_MODEL_REPOSITORY": str(tiny_repository),
        "ICH_INTRA_OP_THREADS": "1",
        "ICH_THREADS": "2",
        "ICH_JOB_WORKERS": "2",
        "ICH_JOB_LEASE_S": "2",
        **store_settings,
    }
    bodies = studies()
    first_log = tmp_path / "first.log"
    process, base = start_gateway(first_log, **settings)
    try:
        wait_ready(process, base, first_log)
        with httpx.Client(base_url=base, timeout=60.0) as client:
            ids = []
            for i, data in enumerate(bodies):
                accepted = client.post(
                    "/v1/studies",
                    content=data,
                    headers={"content-type": "application/zip", "Idempotency-Key": f"restart-{i}"},
                )
                assert accepted.status_code == 202, accepted.text
                ids.append(accepted.json()["id"])
            deadline = time.monotonic() + 60
            while not client.get("/v1/studies", params={"status": "running"}).json()["items"]:
                assert time.monotonic() < deadline, "no job started"
                time.sleep(0.01)
            at_kill = client.get("/v1/studies", params={"limit": 100}).json()["items"]
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    with (
        serve(tmp_path / "second.log", **settings) as base,
        httpx.Client(base_url=base, timeout=60.0) as client,
    ):
        before = client.get("/v1/studies", params={"limit": 100}).json()["items"]
        assert sorted(job["id"] for job in before) == sorted(ids)
        jobs = wait_jobs_finished(client, ids)
        # The same upload with its key again, after the restart: still one job.
        replay = client.post(
            "/v1/studies",
            content=bodies[0],
            headers={"content-type": "application/zip", "Idempotency-Key": "restart-0"},
        )
        assert replay.status_code == 202 and replay.json()["id"] == ids[0]
        listed = client.get("/v1/studies", params={"limit": 100}).json()["items"]
        assert len(listed) == STUDIES
        direct = [
            client.post("/v1/cases", content=data, headers={"content-type": "application/zip"}).json()
            for data in bodies
        ]
    # Judged on the first gateway's last answer: the second one's workers may finish everything before the
    # test's first request to it.
    assert any(job["status"] != "done" for job in at_kill), "every job finished before the kill"
    assert [job["status"] for job in jobs] == ["done"] * STUDIES, [job["error"] for job in jobs]
    assert len({job["result"]["case_id"] for job in jobs}) == STUDIES  # one result each
    assert any(job["attempts"] >= 2 for job in jobs)  # the killed worker's jobs were taken again
    for job, answer in zip(jobs, direct, strict=True):
        assert comparable(job["result"]) == comparable(answer)
    for log in (first_log, tmp_path / "second.log"):
        text = log.read_text()
        assert PATIENT_NAME not in text and PATIENT_ID not in text
