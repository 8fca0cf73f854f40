"""The client's job API and ``ich analyze --async`` / ``ich status`` / ``ich wait`` against a real uvicorn.

The gateway runs ``ich-serve`` with the embedded engine on the tiny repository and its SQLite job store in
the test's folder; the client speaks plain HTTP to it, as a user's would.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from ich_client import (
    AsyncICHClient,
    ConflictError,
    ICHClient,
    Job,
    NotFoundError,
    UnprocessableStudyError,
    cli,
)

from tests.integration.conftest import serve
from tests.support.dicom_study import study_zip

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gateway(tiny_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("client-jobs")
    settings = {
        "ICH_MODEL_REPOSITORY": str(tiny_repository),
        "ICH_INTRA_OP_THREADS": "1",
        "ICH_THREADS": "2",
        "ICH_DATA_DIR": str(folder / "ich-data"),
    }
    with serve(folder / "gateway.log", **settings) as base:
        yield base


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    hu = np.full((6, 64, 64), 32.0, np.float32)
    hu[2:4, 20:36, 24:40] = 72.0
    data, _ = study_zip(hu)
    path = tmp_path_factory.mktemp("study") / "study.zip"
    path.write_bytes(data)
    return path


def test_submit_wait_get_list_delete(gateway: str, study: Path) -> None:
    with ICHClient(gateway) as client:
        job = client.submit(study, idempotency_key="client-test-1")
        assert isinstance(job, Job) and job.status == "queued" and job.result is None
        seen: list[str] = []
        done = client.wait(job, timeout=120, poll_interval=0.1, on_update=lambda j: seen.append(j.status))
        assert done.status == "done" and done.finished and done.result is not None
        assert seen[-1] == "done" and len(seen) == len(set(seen))  # one call per change
        direct = client.analyze(study)
        assert done.result.ich_probability == direct.ich_probability
        assert [s.probability for s in done.result.slices] == [s.probability for s in direct.slices]
        assert client.get_job(job.id).result == done.result
        assert client.submit(study, idempotency_key="client-test-1").id == job.id
        with pytest.raises(ConflictError):
            client.submit(b"PK\x05\x06" + b"\x00" * 18, idempotency_key="client-test-1")
        page = client.list_jobs(status="done", limit=10)
        assert job.id in [item.id for item in page.items]
        client.delete_job(job)
        with pytest.raises(NotFoundError):
            client.get_job(job.id)
        with pytest.raises(ValueError, match="status"):
            client.list_jobs(status="lost")


def test_a_failed_job_has_the_cases_error(gateway: str, tmp_path: Path) -> None:
    empty = tmp_path / "empty.zip"
    empty.write_bytes(b"PK\x05\x06" + b"\x00" * 18)  # a valid zip with no members
    with ICHClient(gateway) as client:
        with pytest.raises(UnprocessableStudyError):
            client.analyze(empty)
        failed = client.wait(client.submit(empty), timeout=60, poll_interval=0.1)
        assert failed.status == "failed" and failed.result is None
        assert failed.error is not None and failed.error.code == "no_usable_series"


def test_the_async_client_submits_and_waits(gateway: str, study: Path) -> None:
    async def run() -> list[Job]:
        async with AsyncICHClient(gateway) as client:
            jobs = await asyncio.gather(*(client.submit(study) for _ in range(3)))
            assert len({job.id for job in jobs}) == 3  # a fresh key per submit: three jobs
            return list(await asyncio.gather(*(client.wait(j, timeout=120, poll_interval=0.1) for j in jobs)))

    finished = asyncio.run(run())
    assert [job.status for job in finished] == ["done"] * 3


def test_the_command_line_queues_reports_and_waits(
    gateway: str, study: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["analyze", "--async", str(study), str(study), "--url", gateway, "--no-progress"]) == 0
    ids = capsys.readouterr().out.split()
    assert len(ids) == 2 and all(re.fullmatch(r"[0-9a-f-]{36}", i) for i in ids)
    out = tmp_path / "results"
    code = cli.main(
        ["wait", *ids, "--url", gateway, "--json", "--poll", "0.1", "--no-progress", "--out", str(out)]
    )
    assert code == 0
    results = json.loads(capsys.readouterr().out)
    assert len(results) == 2 and all(r["ich_probability"] > 0 for r in results)
    assert json.loads((out / f"{ids[0]}.json").read_text()) == results[0]
    assert cli.main(["status", ids[0], "--url", gateway]) == 0
    assert capsys.readouterr().out.startswith(f"{ids[0]}: done")
    assert cli.main(["status", "00000000-0000-4000-8000-000000000000", "--url", gateway]) == 1
    assert "404" in capsys.readouterr().err


def test_waiting_for_a_failed_job_exits_1_with_the_reason(
    gateway: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty.zip"
    empty.write_bytes(b"PK\x05\x06" + b"\x00" * 18)
    assert cli.main(["analyze", "--async", str(empty), "--url", gateway, "--no-progress"]) == 0
    (job_id,) = capsys.readouterr().out.split()
    assert cli.main(["wait", job_id, "--url", gateway, "--poll", "0.1", "--no-progress"]) == 1
    assert f"{job_id}: failed: no_usable_series" in capsys.readouterr().err
