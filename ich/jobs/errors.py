"""Exceptions of the job queue."""

from __future__ import annotations


class TransientJobError(RuntimeError):
    """The analysis could not run now (engine unavailable); the job is retried with backoff.

    The pipeline function a :class:`ich.jobs.WorkerPool` runs raises it (the gateway's adapter turns the
    engine's own unavailability error into this one), so the queue knows no engine.

    Attributes:
        code: a short, label-safe word reported in the job's error when the retries run out.
    """

    def __init__(self, detail: str, *, code: str = "engine_unavailable") -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class IdempotencyConflictError(ValueError):
    """An ``Idempotency-Key`` already names a job whose upload differs from this one."""

    def __init__(self, job_id: str) -> None:
        super().__init__("the Idempotency-Key was used for a different upload")
        self.job_id = job_id
