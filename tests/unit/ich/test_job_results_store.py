"""The job store's DICOM results and their delivery, on real SQLite and PostgreSQL; the worker's outcome.

A job's DICOM outputs are stored with its result in one transaction and deleted with it; a delivery waits
for its job, is held while it is sent, retried later or given up, and a failed job has none. A study the
DICOM node received only in part is stored ``failed`` at once and never claimed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from api.settings import Settings
from api.study_queue import open_job_store
from ich.jobs import JobError, JobOutcome, JobStore, WorkerConfig, WorkerPool, current_job_id
from ich.jobs.metrics import JobMetrics
from tests.unit.ich.test_job_store import Clock

LEASE = 30.0
OUTPUTS = {"seg": b"SEG-BYTES", "sr": b"SR-BYTES", "key-images": b"SC-BYTES"}


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobStore]:
    url = None if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    opened = open_job_store(Settings(data_dir=tmp_path / "data", database_url=url))
    opened.clock = Clock()
    yield opened
    opened.engine.dispose()


def finish(store: JobStore, job_id: str, outputs: dict[str, bytes] | None = None) -> None:
    claimed = store.claim("w1", lease_s=LEASE, max_attempts=3)
    assert claimed is not None and claimed.id == job_id
    assert store.complete(job_id, "w1", {"ich_probability": 0.9}, outputs=outputs)


def test_outputs_are_stored_with_the_result_and_deleted_with_the_job(store: JobStore) -> None:
    job, _ = store.submit(b"study", origin="dicom")
    assert job.origin == "dicom" and job.delivery is None
    assert store.output(job.id, "seg") is None
    finish(store, job.id, OUTPUTS)
    assert {kind: store.output(job.id, kind) for kind in OUTPUTS} == OUTPUTS
    assert store.output(job.id, "other") is None
    assert store.delete(job.id)
    assert all(store.output(job.id, kind) is None for kind in OUTPUTS)


def test_a_lost_lease_stores_no_outputs(store: JobStore) -> None:
    job, _ = store.submit(b"study")
    assert store.claim("w1", lease_s=1.0, max_attempts=3) is not None
    store.clock.now += 5  # type: ignore[attr-defined]
    assert store.claim("w2", lease_s=LEASE, max_attempts=3) is not None
    assert not store.complete(job.id, "w1", {"from": "w1"}, outputs={"seg": b"stale"})
    assert store.output(job.id, "seg") is None
    assert store.complete(job.id, "w2", {"from": "w2"}, outputs={"seg": b"fresh"})
    assert store.output(job.id, "seg") == b"fresh"


def test_a_delivery_waits_for_its_job_then_is_held_retried_and_delivered(store: JobStore) -> None:
    clock: Clock = store.clock  # type: ignore[assignment]
    job, _ = store.submit(b"study", origin="dicomweb", deliver=True)
    assert job.delivery is not None and job.delivery.status == "pending" and job.delivery.attempts == 0
    assert store.claim_delivery(lease_s=LEASE) is None  # nothing to send before the job is done
    finish(store, job.id, OUTPUTS)

    first = store.claim_delivery(lease_s=LEASE)
    assert first is not None and first.id == job.id and first.attempts == 1 and first.outputs == OUTPUTS
    assert store.claim_delivery(lease_s=LEASE) is None  # held while it is being sent
    assert store.retry_delivery(job.id, JobError("destination_unreachable", "refused"), delay_s=10)
    pending = store.get(job.id)
    assert pending is not None and pending.delivery is not None
    assert pending.delivery.status == "pending" and pending.delivery.error is not None
    assert pending.delivery.error.code == "destination_unreachable"
    assert store.claim_delivery(lease_s=LEASE) is None
    clock.now += 11
    second = store.claim_delivery(lease_s=LEASE)
    assert second is not None and second.attempts == 2
    assert store.delivered(job.id)
    done = store.get(job.id)
    assert done is not None and done.delivery is not None
    assert done.delivery.status == "delivered" and done.delivery.delivered_at == clock.now
    assert done.delivery.error is None and done.delivery.attempts == 2
    assert store.claim_delivery(lease_s=LEASE) is None
    assert not store.fail_delivery(job.id, JobError("late", "a delivered job stays delivered"))


def test_a_delivery_given_up_and_a_failed_job_has_none(store: JobStore) -> None:
    job, _ = store.submit(b"study", origin="dicom", deliver=True)
    finish(store, job.id, OUTPUTS)
    assert store.claim_delivery(lease_s=LEASE) is not None
    assert store.fail_delivery(job.id, JobError("destination_refused", "status 0xA700"))
    given_up = store.get(job.id)
    assert given_up is not None and given_up.delivery is not None and given_up.delivery.status == "failed"

    bad, _ = store.submit(b"not a study", origin="dicom", deliver=True)
    claimed = store.claim("w1", lease_s=LEASE, max_attempts=3)
    assert claimed is not None and claimed.id == bad.id
    assert store.fail(bad.id, "w1", JobError("no_usable_series", "no CT"))
    failed = store.get(bad.id)
    assert failed is not None and failed.status == "failed" and failed.delivery is None


def test_a_study_received_in_part_is_stored_failed_and_never_claimed(store: JobStore) -> None:
    error = JobError("study_incomplete", "the association was aborted")
    job, created = store.submit(b"partial", origin="dicom", deliver=True, error=error, idempotency_key="k1")
    assert created and job.status == "failed" and job.error == error and job.finished_at is not None
    assert job.delivery is None and job.attempts == 0
    assert store.claim("w1", lease_s=LEASE, max_attempts=3) is None
    again, created = store.submit(b"partial", origin="dicom", error=error, idempotency_key="k1")
    assert not created and again.id == job.id


def test_an_unknown_origin_is_refused(store: JobStore) -> None:
    with pytest.raises(ValueError, match="unknown origin"):
        store.submit(b"study", origin="fax")


async def test_the_worker_stores_a_pipelines_outputs_and_names_the_job(store: JobStore) -> None:
    seen: list[str | None] = []

    async def pipeline(data: bytes, options: tuple[str, ...]) -> JobOutcome:
        seen.append(current_job_id.get())
        return JobOutcome({"size": len(data)}, {"sr": b"SR-" + data})

    async def ready() -> bool:
        return True

    config = WorkerConfig(workers=1, lease_s=5.0, poll_s=0.05, gauges_every_s=0.05)
    pool = WorkerPool(store, pipeline, ready, config, JobMetrics(CollectorRegistry()))
    job, _ = store.submit(b"abc")
    pool.start()
    try:
        async with asyncio.timeout(10):
            while (current := store.get(job.id)) is None or current.status != "done":
                await asyncio.sleep(0.02)
    finally:
        await pool.stop()
    assert current.result == {"size": 3}
    assert store.output(job.id, "sr") == b"SR-abc"
    assert seen == [job.id]
    assert current_job_id.get() is None  # set only inside the attempt
