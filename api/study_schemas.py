"""Bodies of the durable-job routes (``/v1/studies``), field for field as docs/DESIGN.md fixes them.

Times are ISO 8601 in UTC. ``result`` is the ``POST /v1/cases`` result of the study, stored when the job
finished; ``error`` is the error ``/v1/cases`` would have answered (``reasons`` for 422), or why the retries
ran out.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from api.schemas import CaseResult, ErrorBody
from ich.jobs import Job

JobStatus = Literal["queued", "running", "done", "failed"]
JobOrigin = Literal["upload", "dicom", "dicomweb"]
DeliveryStatus = Literal["pending", "delivered", "failed"]


def _time(seconds: float | None) -> str | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC).isoformat()


class StudyAccepted(BaseModel):
    """``202`` of ``POST /v1/studies``: the stored job (a replayed ``Idempotency-Key``: its status now)."""

    id: str
    status: JobStatus
    created_at: datetime


class StudyError(BaseModel):
    """Why a job failed."""

    code: str
    detail: str
    reasons: list[dict[str, Any]] | None = Field(default=None, description="With no_usable_series.")


class StudyDelivery(BaseModel):
    """Where the job's DICOM results stand on their way to ``ICH_RESULTS_DESTINATION``."""

    status: DeliveryStatus = Field(description="pending (also while the job runs), delivered, failed.")
    attempts: int
    delivered_at: datetime | None
    error: StudyError | None = Field(description="Why the latest attempt failed.")


class StudyJobSummary(BaseModel):
    """A job in a listing (no result)."""

    id: str
    status: JobStatus
    created_at: datetime
    started_at: datetime | None = Field(description="Start of the latest attempt.")
    finished_at: datetime | None
    attempts: int
    error: StudyError | None
    origin: JobOrigin = Field(description="upload (POST /v1/studies), dicom (C-STORE), dicomweb (STOW-RS).")
    delivery: StudyDelivery | None = Field(
        description="The results' delivery to the PACS; null when they are not sent anywhere."
    )


class StudyJob(StudyJobSummary):
    """``GET /v1/studies/{id}``."""

    result: CaseResult | None


class StudyPage(BaseModel):
    """``GET /v1/studies``: newest first; pass ``next_cursor`` as ``cursor`` for the next page."""

    items: list[StudyJobSummary]
    next_cursor: str | None


def _delivery(job: Job) -> dict[str, Any] | None:
    if job.delivery is None:
        return None
    body = job.delivery.to_dict()
    body["delivered_at"] = _time(job.delivery.delivered_at)
    return body


def accepted_body(job: Job) -> dict[str, Any]:
    """The JSON of :class:`StudyAccepted` for ``job``."""
    return {"id": job.id, "status": job.status, "created_at": _time(job.created_at)}


def job_body(job: Job, *, with_result: bool) -> dict[str, Any]:
    """The JSON of :class:`StudyJob` (or the summary without ``result``) for ``job``.

    Built from the stored JSON rather than re-validated, so a result stored by an older version still reads.
    """
    body: dict[str, Any] = {
        "id": job.id,
        "status": job.status,
        "created_at": _time(job.created_at),
        "started_at": _time(job.started_at),
        "finished_at": _time(job.finished_at),
        "attempts": job.attempts,
        "error": job.error.to_dict() if job.error else None,
        "origin": job.origin,
        "delivery": _delivery(job),
    }
    if with_result:
        body["result"] = job.result
    return body


STUDY_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Not a readable zip, or a malformed Idempotency-Key."},
    401: {"model": ErrorBody, "description": "Missing or invalid API key (when keys are configured)."},
    408: {"model": ErrorBody, "description": "The upload came too slowly (ICH_UPLOAD_TIMEOUT_S)."},
    409: {"model": ErrorBody, "description": "The Idempotency-Key was used for a different upload."},
    413: {"model": ErrorBody, "description": "Upload, uncompressed size or member count too large."},
    415: {"model": ErrorBody, "description": "Neither application/zip nor multipart/form-data."},
    429: {"model": ErrorBody, "description": "The queue is full; retry after Retry-After seconds."},
    503: {"model": ErrorBody, "description": "The job store (database) is unavailable; retry later."},
}
