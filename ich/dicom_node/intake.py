"""The DICOM node's door into the job queue: complete studies become jobs, as zips do.

:class:`DicomIntake` runs in the gateway's event loop: every ``tick_s`` it takes the studies the
:class:`StudyAssembler` finds complete, and submits each through ``JobStore.submit``, the call
``POST /v1/studies`` makes, with an idempotency key made from the study's instances, its origin, and whether
its results go back to the PACS. The study leaves the spool only once its job is committed; while the store
is unreachable it stays and is tried again at the next tick, so nothing acknowledged is lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ich.dicom_node.assembler import CompletedStudy, StudyAssembler
from ich.dicom_node.background import RepeatingTask
from ich.dicom_node.metrics import DicomMetrics
from ich.jobs import IdempotencyConflictError, JobStore

__all__ = ["DicomIntake", "submit_study"]

logger = logging.getLogger(__name__)


def submit_study(store: JobStore, study: CompletedStudy, *, deliver: bool) -> tuple[str, bool]:
    """Queue one complete study (blocking); its job id and whether the job is new.

    The same instances queued before (whichever door, whichever encoding) give the first job back: the
    key names it, and a different zip under that key is the same study sent again, not a conflict.
    """
    try:
        job, created = store.submit(
            study.data,
            idempotency_key=study.idempotency_key,
            origin=study.origin,
            deliver=deliver,
            error=study.error,
        )
    except IdempotencyConflictError as exc:
        return exc.job_id, False
    return job.id, created


class DicomIntake:
    """Queues complete studies in the running loop until :meth:`stop`.

    Args:
        assembler: the pending studies.
        submit: queues one study (blocking, run in a thread); returns the job id and whether it is new.
        wake: tells idle workers a job was queued.
        tick_s: how often complete studies are looked for.
    """

    def __init__(
        self,
        assembler: StudyAssembler,
        submit: Callable[[CompletedStudy], tuple[str, bool]],
        *,
        wake: Callable[[], None] = lambda: None,
        tick_s: float = 0.5,
        metrics: DicomMetrics | None = None,
    ) -> None:
        self.assembler = assembler
        self.submit = submit
        self.wake = wake
        self.tick_s = tick_s
        self.metrics = metrics or DicomMetrics()
        self._loop = RepeatingTask("ich-dicom-intake", "DICOM intake", self.queue_due, self._tick)

    def start(self) -> None:
        """Take up the spool left by a previous process, then start the loop."""
        self.assembler.recover()
        self._loop.start()

    async def stop(self) -> None:
        """Stop the loop (pending studies stay in the spool for the next start)."""
        await self._loop.stop()

    async def _tick(self) -> None:
        await asyncio.sleep(self.tick_s)

    async def queue_due(self) -> int:
        """Queue every study complete now; returns how many were queued (new jobs)."""
        queued = 0
        for study in self.assembler.due():
            completed = await asyncio.to_thread(self.assembler.assemble, study)
            if completed is None:
                continue
            try:
                job_id, created = await asyncio.to_thread(self.submit, completed)
            except Exception as exc:
                self.assembler.release(study)
                logger.error("DICOM study not queued yet (%s); trying again", type(exc).__name__)
                continue
            await asyncio.to_thread(self.assembler.finish, study, completed.instances)
            outcome = (completed.error.code if completed.error else "queued") if created else "duplicate"
            self.metrics.studies.labels(outcome=outcome).inc()
            if created:
                queued += 1
                self.wake()
                state = f"failed at once ({completed.error.code})" if completed.error else "queued"
                logger.info(
                    "DICOM study job %s %s (%d instances, %s)",
                    job_id,
                    state,
                    len(completed.instances),
                    completed.origin,
                )
            else:
                logger.info("DICOM study received again: job %s already has it", job_id)
        return queued
