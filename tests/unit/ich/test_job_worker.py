"""``ich.jobs.WorkerPool`` on a real SQLite store with small pipeline functions: each way an attempt ends.

No web framework and no engine here: the pool gets a function from zip to result and a readiness check,
exactly what the gateway hands it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from ich.errors import NoUsableSeriesError
from ich.jobs import FilePayloads, JobStore, TransientJobError, WorkerConfig, WorkerPool, open_database
from ich.jobs.metrics import JobMetrics


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[JobStore]:
    engine = open_database(None, tmp_path / "data")
    yield JobStore(engine, FilePayloads(tmp_path / "data" / "studies"))
    engine.dispose()


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def finished(store: JobStore, job_id: str, timeout_s: float = 10.0) -> Any:
    async with asyncio.timeout(timeout_s):
        while True:
            job = await asyncio.to_thread(store.get, job_id)
            if job is not None and job.status in ("done", "failed"):
                return job
            await asyncio.sleep(0.02)


class Pipeline:
    """A pipeline function that records its calls and does what the test asks."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, tuple[str, ...]]] = []
        self.failures: list[BaseException] = []
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def __call__(self, data: bytes, options: tuple[str, ...]) -> dict[str, Any]:
        self.calls.append((data, options))
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.failures:
            raise self.failures.pop(0)
        return {"size": len(data), "options": list(options)}


async def always_ready() -> bool:
    return True


@contextlib.asynccontextmanager
async def running(pool: WorkerPool) -> AsyncIterator[None]:
    """The pool's workers run while the block does; stopped after it, whatever happened."""
    pool.start()
    try:
        yield
    finally:
        await pool.stop()


def pool_for(store: JobStore, pipeline: Pipeline, **config: Any) -> tuple[WorkerPool, CollectorRegistry]:
    registry = CollectorRegistry()
    ready = config.pop("ready", always_ready)
    values = {"workers": 1, "lease_s": 1.0, "poll_s": 0.05, "backoff_s": 0.01, "gauges_every_s": 0.05}
    values.update(config)
    return WorkerPool(store, pipeline, ready, WorkerConfig(**values), JobMetrics(registry)), registry


async def test_a_job_is_analysed_once_and_its_result_stored(store: JobStore) -> None:
    pipeline = Pipeline()
    pool, registry = pool_for(store, pipeline)
    job, _ = await asyncio.to_thread(store.submit, b"abc", options=("seg",))
    async with running(pool):
        done = await finished(store, job.id)
        await asyncio.sleep(0.2)  # the gauges refresh
        assert sample(registry, "ich_jobs", status="done") == 1.0
    assert done.status == "done" and done.result == {"size": 3, "options": ["seg"]} and done.attempts == 1
    assert pipeline.calls == [(b"abc", ("seg",))]
    assert sample(registry, "ich_job_attempts_total", outcome="done") == 1.0
    assert sample(registry, "ich_job_queue_seconds_count") == 1.0


async def test_a_bad_study_fails_at_once_with_its_reasons(store: JobStore) -> None:
    pipeline = Pipeline()
    reasons = [{"file": "notes.txt", "reason": "not a DICOM file"}]
    pipeline.failures.append(NoUsableSeriesError("no usable CT series", reasons))
    pool, registry = pool_for(store, pipeline, max_attempts=5)
    job, _ = await asyncio.to_thread(store.submit, b"no ct")
    async with running(pool):
        failed = await finished(store, job.id)
    assert failed.status == "failed" and failed.attempts == 1 and len(pipeline.calls) == 1
    assert failed.error.to_dict() == {
        "code": "no_usable_series",
        "detail": "no usable CT series",
        "reasons": reasons,
    }
    assert sample(registry, "ich_job_attempts_total", outcome="failed") == 1.0


async def test_transient_failures_are_retried_with_backoff(store: JobStore) -> None:
    pipeline = Pipeline()
    pipeline.failures += [TransientJobError("engine down"), TransientJobError("engine down")]
    pool, registry = pool_for(store, pipeline, max_attempts=3)
    job, _ = await asyncio.to_thread(store.submit, b"study")
    async with running(pool):
        done = await finished(store, job.id)
    assert done.status == "done" and done.attempts == 3 and len(pipeline.calls) == 3
    assert sample(registry, "ich_job_attempts_total", outcome="retried") == 2.0


async def test_retries_run_out_and_a_bug_does_not_kill_the_worker(store: JobStore) -> None:
    pipeline = Pipeline()
    pipeline.failures += [TypeError("a bug, mentioning Doe^John"), TypeError("a bug, mentioning Doe^John")]
    pool, _ = pool_for(store, pipeline, max_attempts=2)
    first, _ = await asyncio.to_thread(store.submit, b"first")
    async with running(pool):
        failed = await finished(store, first.id)
        second, _ = await asyncio.to_thread(store.submit, b"second")
        pool.wake()
        done = await finished(store, second.id)
    assert failed.status == "failed" and failed.attempts == 2
    assert failed.error.code == "internal_error" and "Doe^John" not in failed.error.detail
    assert done.status == "done"


def test_backoff_doubles_up_to_its_cap() -> None:
    config = WorkerConfig(backoff_s=5.0, max_backoff_s=30.0)
    assert [config.backoff(n) for n in (1, 2, 3, 4, 5)] == [5.0, 10.0, 20.0, 30.0, 30.0]
    with pytest.raises(ValueError, match="max_attempts"):
        WorkerConfig(max_attempts=0)


async def test_nothing_is_claimed_while_the_engine_is_not_ready(store: JobStore) -> None:
    pipeline = Pipeline()
    up = asyncio.Event()

    async def ready() -> bool:
        return up.is_set()

    pool, _ = pool_for(store, pipeline, ready=ready)
    job, _ = await asyncio.to_thread(store.submit, b"study")
    async with running(pool):
        await asyncio.sleep(0.3)
        waiting = await asyncio.to_thread(store.get, job.id)
        assert waiting is not None and waiting.status == "queued" and waiting.attempts == 0
        assert pipeline.calls == []
        up.set()
        done = await finished(store, job.id)
    assert done.status == "done" and done.attempts == 1


async def test_the_lease_is_renewed_while_a_long_analysis_runs(store: JobStore) -> None:
    pipeline = Pipeline()
    pipeline.gate = asyncio.Event()
    pool, _ = pool_for(store, pipeline, lease_s=0.3)
    job, _ = await asyncio.to_thread(store.submit, b"study")
    async with running(pool):
        await asyncio.wait_for(pipeline.entered.wait(), 5)
        await asyncio.sleep(1.0)  # more than three leases
        stolen = await asyncio.to_thread(store.claim, "intruder", lease_s=10, max_attempts=5)
        assert stolen is None
        pipeline.gate.set()
        done = await finished(store, job.id)
    assert done.status == "done" and done.attempts == 1


async def test_stopping_releases_the_running_job(store: JobStore) -> None:
    pipeline = Pipeline()
    pipeline.gate = asyncio.Event()
    pool, registry = pool_for(store, pipeline)
    job, _ = await asyncio.to_thread(store.submit, b"study")
    pool.start()
    await asyncio.wait_for(pipeline.entered.wait(), 5)
    await pool.stop()
    released = await asyncio.to_thread(store.get, job.id)
    assert released is not None and released.status == "queued" and released.attempts == 0
    assert sample(registry, "ich_job_attempts_total", outcome="released") == 1.0


async def test_a_deleted_running_job_is_abandoned(store: JobStore) -> None:
    pipeline = Pipeline()
    pipeline.gate = asyncio.Event()
    pool, registry = pool_for(store, pipeline, lease_s=0.3)
    job, _ = await asyncio.to_thread(store.submit, b"study")
    async with running(pool):
        await asyncio.wait_for(pipeline.entered.wait(), 5)
        assert await asyncio.to_thread(store.delete, job.id)
        async with asyncio.timeout(5):
            while sample(registry, "ich_job_attempts_total", outcome="lost") < 1:
                await asyncio.sleep(0.02)
    assert await asyncio.to_thread(store.get, job.id) is None


async def test_retention_purges_with_a_metric_and_a_log_line(
    store: JobStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ich.jobs.worker")
    pool, registry = pool_for(store, Pipeline(), workers=0, retention_s=3600.0)
    old, _ = await asyncio.to_thread(store.submit, b"old")
    store.clock = lambda: 1e10  # far in the future: the job is past retention
    assert await pool.purge() == 1
    assert await asyncio.to_thread(store.get, old.id) is None
    assert sample(registry, "ich_jobs_purged_total") == 1.0
    lines = [r.getMessage() for r in caplog.records if "retention" in r.getMessage()]
    assert lines == ["retention: purged 1 job(s) older than 1.0 h"]
    assert old.id not in caplog.text


def test_the_queue_knows_no_web_framework() -> None:
    code = (
        "import sys, ich.jobs, ich.jobs.worker, ich.jobs.metrics; "
        "bad = sorted(m for m in ('fastapi', 'starlette', 'uvicorn', 'api') if m in sys.modules); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[3])
