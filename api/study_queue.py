"""The gateway's side of the durable queue: the store from the settings, and the pipeline the workers run.

The workers run ``api.pipeline.analyse_case``, the function ``POST /v1/cases`` runs, through
:func:`job_pipeline`, which only translates: the engine's unavailability becomes the queue's
:class:`ich.jobs.TransientJobError` (retried), the result becomes JSON.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from api.engines.base import Engine, EngineUnavailableError
from api.metrics import GatewayMetrics
from api.pipeline import analyse_case
from api.settings import Settings
from ich.errors import IntakeError
from ich.jobs import (
    Analyse,
    DatabasePayloads,
    FilePayloads,
    JobStore,
    Payloads,
    TransientJobError,
    WorkerConfig,
    WorkerPool,
    open_database,
)
from ich.jobs.metrics import JobMetrics

#: Uploads of the SQLite store live in this folder of ``ICH_DATA_DIR``.
STUDIES_FOLDER = "studies"


def open_job_store(settings: Settings) -> JobStore:
    """The store the settings name (blocking: connects and migrates)."""
    engine = open_database(settings.database_url, settings.data_dir)
    payloads: Payloads
    if engine.dialect.name == "sqlite":
        payloads = FilePayloads(settings.data_dir / STUDIES_FOLDER)
    else:
        payloads = DatabasePayloads()
    return JobStore(engine, payloads)


def worker_config(settings: Settings) -> WorkerConfig:
    """The pool's timings and limits from ``ICH_JOB_*`` and ``ICH_RETENTION_HOURS``."""
    return WorkerConfig(
        workers=settings.job_workers,
        lease_s=settings.job_lease_s,
        max_attempts=settings.job_max_attempts,
        backoff_s=settings.job_retry_backoff_s,
        poll_s=min(1.0, settings.job_lease_s / 3.0),
        retention_s=settings.retention_hours * 3600.0,
    )


def job_pipeline(
    engine: Engine, executor: ThreadPoolExecutor, settings: Settings, metrics: GatewayMetrics
) -> Analyse:
    """The pipeline function of the workers: ``analyse_case`` on the stored zip, its result as JSON."""

    async def analyse(data: bytes, options: tuple[str, ...]) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            result = await analyse_case(
                data,
                engine=engine,
                executor=executor,
                settings=settings,
                metrics=metrics,
                started=started,
                include=frozenset(options),
            )
        except EngineUnavailableError as exc:
            raise TransientJobError("the inference engine is unavailable") from exc
        except IntakeError:
            metrics.cases.labels(outcome="rejected").inc()
            raise
        outcome = (
            "indeterminate" if result.indeterminate else ("positive" if result.ich_detected else "negative")
        )
        metrics.cases.labels(outcome=outcome).inc()
        metrics.case_probability.observe(result.ich_probability)
        metrics.slices_per_case.observe(result.series.slices_used)
        return result.model_dump(mode="json")

    return analyse


@dataclass
class JobQueue:
    """What the lifespan keeps on ``app.state.jobs``: the store and this process's worker pool."""

    store: JobStore
    pool: WorkerPool

    def wake(self) -> None:
        """Tell this process's idle workers that a job was queued."""
        self.pool.wake()

    async def close(self) -> None:
        """Stop the workers (their jobs are released) and close the database connections."""
        await self.pool.stop()
        await asyncio.to_thread(self.store.engine.dispose)


async def start_job_queue(
    settings: Settings,
    engine: Engine,
    executor: ThreadPoolExecutor,
    metrics: GatewayMetrics,
    job_metrics: JobMetrics,
) -> JobQueue:
    """Open the store and start ``ICH_JOB_WORKERS`` workers in the running loop."""
    store = await asyncio.to_thread(open_job_store, settings)
    # With ICH_JOB_WORKERS=0 the pool still purges and refreshes the queue gauges; it just claims nothing.
    analyse = job_pipeline(engine, executor, settings, metrics)
    pool = WorkerPool(store, analyse, engine.ready, worker_config(settings), job_metrics)
    pool.start()
    return JobQueue(store, pool)
