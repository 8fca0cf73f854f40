"""Workers that claim jobs and run the pipeline on them, plus the retention purge; asyncio, in-process.

``WorkerPool`` runs ``workers`` loops in the caller's event loop (the gateway's lifespan starts it, so the
workers live inside ``ich-serve``). A loop claims a job only while the engine says it is ready: when the
engine is down the jobs simply wait, queued, and cost no attempts. While a job runs, its lease is renewed
every third of ``lease_s``; a worker that crashes stops renewing, and another takes the job when the lease
runs out. How an attempt ends:

- the pipeline returns a result: ``done``;
- it raises :class:`ich.errors.IntakeError` (bad study): ``failed`` at once with the code, detail and reasons
  ``/v1/cases`` would give;
- it raises :class:`ich.jobs.TransientJobError` (engine unavailable) or anything else: queued again after a
  backoff of ``backoff_s * 2**(attempt-1)`` (capped), ``failed`` once ``max_attempts`` are spent;
- the pool stops (SIGTERM): the job is released, due again at once, the attempt not counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import os
import socket
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from ich.errors import IntakeError
from ich.jobs.errors import TransientJobError
from ich.jobs.metrics import JobMetrics
from ich.jobs.store import ClaimedJob, JobError, JobOutcome, JobStore

logger = logging.getLogger(__name__)

#: The pipeline: a zipped study and its options in, the JSON-ready result out (``POST /v1/cases``' one),
#: or a :class:`JobOutcome` that adds the job's DICOM outputs.
Analyse = Callable[[bytes, tuple[str, ...]], Coroutine[Any, Any, "dict[str, Any] | JobOutcome"]]
#: The id of the job the running pipeline analyses (set around each attempt), so that what must not change
#: between attempts, such as the UIDs of the job's DICOM outputs, can be derived from it.
current_job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "ich_current_job_id", default=None
)
#: Whether the engine can answer now.
Ready = Callable[[], Awaitable[bool]]


@dataclass(frozen=True)
class WorkerConfig:
    """How the pool works (the gateway fills it from ``ICH_JOB_*`` and ``ICH_RETENTION_HOURS``)."""

    workers: int = 1
    lease_s: float = 30.0
    max_attempts: int = 5
    backoff_s: float = 5.0
    max_backoff_s: float = 300.0
    poll_s: float = 1.0
    retention_s: float = 72 * 3600.0
    purge_every_s: float = 60.0
    gauges_every_s: float = 5.0

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.lease_s <= 0 or self.poll_s <= 0 or self.retention_s <= 0:
            raise ValueError("lease_s, poll_s and retention_s must be positive")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")

    def backoff(self, attempt: int) -> float:
        """Seconds before attempt ``attempt + 1`` after a transient failure of attempt ``attempt``."""
        return float(min(self.max_backoff_s, self.backoff_s * 2 ** max(0, attempt - 1)))


def worker_identity() -> str:
    """A lease owner name unique to this process and start (host, pid, random suffix)."""
    return f"{socket.gethostname()[:64]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class WorkerPool:
    """Runs ``config.workers`` claim loops and the housekeeping loop until :meth:`stop`.

    Args:
        store: the queue.
        analyse: the pipeline function (the one ``POST /v1/cases`` runs).
        ready: the engine's readiness check.
        config: timings and limits.
        metrics: where to count attempts, queue times and purges.
    """

    def __init__(
        self,
        store: JobStore,
        analyse: Analyse,
        ready: Ready,
        config: WorkerConfig,
        metrics: JobMetrics,
    ) -> None:
        self.store = store
        self.analyse = analyse
        self.ready = ready
        self.config = config
        self.metrics = metrics
        self.owner = worker_identity()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start the loops in the running event loop."""
        for i in range(self.config.workers):
            self._tasks.append(
                asyncio.create_task(self._work(f"{self.owner}/{i}"), name=f"ich-job-worker-{i}")
            )
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="ich-job-housekeeping"))
        logger.info(
            "job workers: %d (lease %.0f s, at most %d attempts)",
            self.config.workers,
            self.config.lease_s,
            self.config.max_attempts,
        )

    def wake(self) -> None:
        """A job was just queued here: let an idle worker look now rather than at its next poll."""
        self._wake.set()

    async def stop(self) -> None:
        """Stop claiming, release the jobs in progress (due again at once) and wait for the loops."""
        self._stopping.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _idle(self) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=self.config.poll_s)

    async def _engine_ready(self) -> bool:
        try:
            return await self.ready()
        except Exception as exc:  # a readiness check must not kill the loop
            logger.warning("engine readiness check failed: %s", type(exc).__name__)
            return False

    async def _work(self, owner: str) -> None:
        while not self._stopping.is_set():
            try:
                if not await self._engine_ready():
                    await asyncio.sleep(self.config.poll_s)
                    continue
                job = await asyncio.to_thread(
                    self.store.claim,
                    owner,
                    lease_s=self.config.lease_s,
                    max_attempts=self.config.max_attempts,
                )
                if job is None:
                    await self._idle()
                    continue
                await self._run(owner, job)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database hiccupped: log, wait, go on
                logger.error(
                    "job worker error %s; retrying in %.0f s", type(exc).__name__, self.config.poll_s
                )
                await asyncio.sleep(self.config.poll_s)

    async def _run(self, owner: str, job: ClaimedJob) -> None:
        if job.attempts == 1:
            self.metrics.queue_seconds.observe(max(0.0, job.started_at - job.created_at))
        logger.info("job %s: attempt %d started", job.id, job.attempts)
        context = contextvars.copy_context()
        context.run(current_job_id.set, job.id)
        analysis: asyncio.Task[dict[str, Any] | JobOutcome] = asyncio.create_task(
            self.analyse(job.data, job.options), context=context
        )
        renewal = asyncio.create_task(self._renew(owner, job.id, analysis))
        try:
            result = await analysis
        except asyncio.CancelledError:
            if self._stopping.is_set():
                await asyncio.shield(self._release(owner, job.id))
                raise
            # Cancelled by the renewal: the lease is lost (the job was deleted, purged or taken over).
            self.metrics.attempts.labels(outcome="lost").inc()
            logger.warning("job %s: lease lost, attempt %d abandoned", job.id, job.attempts)
            return
        except IntakeError as exc:
            reasons = getattr(exc, "reasons", None)
            error = JobError(exc.code, exc.detail, tuple(reasons) if reasons else None)
            await self._end(job, "failed", self.store.fail, job.id, owner, error)
            return
        except Exception as exc:
            await self._transient(owner, job, exc)
            return
        finally:
            renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewal
        if isinstance(result, JobOutcome):
            write = functools.partial(self.store.complete, outputs=result.outputs)
            await self._end(job, "done", write, job.id, owner, result.result)
        else:
            await self._end(job, "done", self.store.complete, job.id, owner, result)

    async def _end(self, job: ClaimedJob, outcome: str, write: Callable[..., bool], *args: Any) -> None:
        if await asyncio.to_thread(write, *args):
            self.metrics.attempts.labels(outcome=outcome).inc()
            logger.info("job %s: %s after %d attempt(s)", job.id, outcome, job.attempts)
        else:
            self.metrics.attempts.labels(outcome="lost").inc()
            logger.warning("job %s: lease lost before the %s result was stored", job.id, outcome)

    async def _transient(self, owner: str, job: ClaimedJob, exc: Exception) -> None:
        if isinstance(exc, TransientJobError):
            code, detail = exc.code, exc.detail
        else:
            # Type only: an exception's message may quote DICOM values (patient data).
            frames = "".join(traceback.format_tb(exc.__traceback__))
            logger.error("job %s: attempt %d raised %s\n%s", job.id, job.attempts, type(exc).__name__, frames)
            code, detail = "internal_error", f"the analysis failed ({type(exc).__name__})"
        if job.attempts >= self.config.max_attempts:
            error = JobError(code, f"{detail}; gave up after {job.attempts} attempts")
            await self._end(job, "failed", self.store.fail, job.id, owner, error)
            return
        delay = self.config.backoff(job.attempts)
        if await asyncio.to_thread(self.store.retry_later, job.id, owner, delay_s=delay):
            self.metrics.attempts.labels(outcome="retried").inc()
            logger.warning("job %s: attempt %d: %s; retry in %.0f s", job.id, job.attempts, code, delay)

    async def _renew(self, owner: str, job_id: str, analysis: asyncio.Task[Any]) -> None:
        interval = self.config.lease_s / 3.0
        while True:
            await asyncio.sleep(interval)
            try:
                kept = await asyncio.to_thread(self.store.renew, job_id, owner, lease_s=self.config.lease_s)
            except Exception as exc:  # the database is away: keep trying until the lease would run out
                logger.warning("job %s: lease renewal failed (%s)", job_id, type(exc).__name__)
                continue
            if not kept:
                analysis.cancel()
                return

    async def _release(self, owner: str, job_id: str) -> None:
        try:
            if await asyncio.to_thread(self.store.release, job_id, owner):
                self.metrics.attempts.labels(outcome="released").inc()
                logger.info("job %s: released at shutdown", job_id)
        except Exception as exc:  # its lease will expire and another worker will take it
            logger.warning("job %s: not released (%s)", job_id, type(exc).__name__)

    async def _housekeeping(self) -> None:
        last_purge = 0.0
        while not self._stopping.is_set():
            try:
                if time.monotonic() - last_purge >= self.config.purge_every_s:
                    last_purge = time.monotonic()
                    await self.purge()
                counts = await asyncio.to_thread(self.store.counts)
                oldest = await asyncio.to_thread(self.store.oldest_queued_age)
                self.metrics.observe_counts(counts, oldest)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.error("job housekeeping error %s", type(exc).__name__)
            await asyncio.sleep(self.config.gauges_every_s)

    async def purge(self) -> int:
        """Delete the jobs past retention now; logs and counts how many (never which patients)."""
        purged = await asyncio.to_thread(self.store.purge, older_than_s=self.config.retention_s)
        if purged:
            self.metrics.purged.inc(purged)
            logger.info(
                "retention: purged %d job(s) older than %.1f h", purged, self.config.retention_s / 3600
            )
        return purged
