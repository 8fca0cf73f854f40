"""``/v1/studies``: durable jobs. A study is checked and stored (202), analysed by a worker, kept for a while.

``POST`` takes the bodies ``POST /v1/cases`` takes; only the checks that need no decompression run before
the 202 (a readable zip, the caps, safe names), and whatever ``/v1/cases`` would refuse later (no usable
series) ends the job ``failed`` with the same code and reasons. The store is blocking SQLAlchemy: its calls
run in threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError

from api.auth import require_api_key
from api.deps import SettingsDep
from api.errors import ApiError, service_unavailable
from api.pipeline import run_blocking
from api.routers.cases import _REQUEST_BODY, include_options
from api.study_queue import JobQueue
from api.study_schemas import (
    STUDY_ERROR_RESPONSES,
    StudyAccepted,
    StudyJob,
    StudyPage,
    accepted_body,
    job_body,
)
from api.upload import pace_of, read_zip_upload
from ich.intake import IntakeLimits, check_archive
from ich.jobs import STATUSES, IdempotencyConflictError

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["studies"], dependencies=[Depends(require_api_key)])

IDEMPOTENCY_HEADER = "Idempotency-Key"
#: Keys are opaque tokens (a UUID is typical): visible ASCII, at most 255 characters.
_KEY_PATTERN = re.compile(r"^[\x21-\x7e]{1,255}$")
#: Job ids are UUIDs; anything else is unknown without asking the database.
_ID_PATTERN = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
MAX_PAGE = 500

T = TypeVar("T")


def get_job_queue(request: Request) -> JobQueue:
    """The queue the lifespan opened; 503 while there is none (start-up, shutdown)."""
    queue: JobQueue | None = getattr(request.app.state, "jobs", None)
    if queue is None:
        settings = request.app.state.settings
        raise service_unavailable("queue_unavailable", "the job queue is not open", settings.retry_after_s)
    return queue


JobQueueDep = Annotated[JobQueue, Depends(get_job_queue)]


async def _store(request: Request, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking store call in a thread; the database being unreachable is a 503, not a 500."""
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except (OperationalError, InterfaceError) as exc:
        # The type only: a driver's message may carry the database URL.
        logger.error(
            "job store unavailable (%s)", type(exc.orig).__name__ if exc.orig else type(exc).__name__
        )
        retry_after = request.app.state.settings.retry_after_s
        raise service_unavailable(
            "queue_unavailable", "the job store is unavailable; retry later", retry_after
        ) from None


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    if not _KEY_PATTERN.match(key):
        raise ApiError(
            400, "invalid_idempotency_key", "Idempotency-Key must be 1-255 visible ASCII characters"
        )
    return key


def _not_found() -> ApiError:
    return ApiError(404, "not_found", "no such study (unknown, deleted, or past retention)")


def _accepted(job_body_: dict[str, object], *, replayed: bool) -> JSONResponse:
    headers = {"Location": f"/v1/studies/{job_body_['id']}"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(status_code=202, content=job_body_, headers=headers)


@router.post(
    "/studies",
    status_code=202,
    response_model=StudyAccepted,
    responses=STUDY_ERROR_RESPONSES,
    openapi_extra=_REQUEST_BODY,
    summary="Queue a head CT study for analysis",
)
async def create_study(
    request: Request,
    settings: SettingsDep,
    queue: JobQueueDep,
    include: Annotated[
        str | None,
        Query(description="Optional outputs kept with the result, as in /v1/cases: 'overlays', 'seg'."),
    ] = None,
) -> JSONResponse:
    """Check and store the upload durably, then answer 202 with the job (``Idempotency-Key``: one job)."""
    options = tuple(sorted(include_options(include)))
    key = _idempotency_key(request)
    store = queue.store
    known = await _store(request, store.find_by_key, key) if key is not None else None
    if known is None:
        # Before the body is read: a full queue costs the client no upload and us no memory.
        active = await _store(request, store.active_count)
        if active >= settings.max_queued_jobs:
            raise ApiError(
                429,
                "queue_full",
                f"{active} studies are waiting or running (limit {settings.max_queued_jobs}); retry later",
                headers={"Retry-After": str(settings.retry_after_s)},
            )
    budget = request.app.state.upload_budget  # shared with /v1/cases: one bound on bodies arriving
    data = bytes(await read_zip_upload(request, settings.max_upload_bytes, pace_of(settings), budget))
    limits = IntakeLimits(
        max_upload_bytes=settings.max_upload_bytes,
        max_uncompressed_bytes=settings.max_uncompressed_bytes,
        max_members=settings.max_members,
    )
    await run_blocking(request.app.state.executor, check_archive, data, limits)
    try:
        job, created = await _store(request, store.submit, data, options=options, idempotency_key=key)
    except IdempotencyConflictError as exc:
        raise ApiError(
            409,
            "idempotency_key_conflict",
            "this Idempotency-Key was used for a different upload; use a new key for a new study",
            extra={"id": exc.job_id},
        ) from exc
    if created:
        queue.wake()
        logger.info("study job %s queued (%d bytes)", job.id, len(data))
    return _accepted(accepted_body(job), replayed=not created)


@router.get(
    "/studies/{study_id}",
    response_model=StudyJob,
    responses={404: STUDY_ERROR_RESPONSES[400] | {"description": "Unknown study."}},
    summary="A study's job: status, error, result",
)
async def get_study(request: Request, study_id: str, queue: JobQueueDep) -> JSONResponse:
    """The job; ``result`` is the ``/v1/cases`` result once ``status`` is ``done``."""
    if not _ID_PATTERN.match(study_id):
        raise _not_found()
    job = await _store(request, queue.store.get, study_id)
    if job is None:
        raise _not_found()
    return JSONResponse(job_body(job, with_result=True))


@router.get("/studies", response_model=StudyPage, summary="Studies, newest first, paged")
async def list_studies(
    request: Request,
    queue: JobQueueDep,
    status: Annotated[
        str | None, Query(description=f"Only jobs in this state: {', '.join(STATUSES)}.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Jobs per page.")] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page.")] = None,
) -> JSONResponse:
    """One page of jobs without their results."""
    if status is not None and status not in STATUSES:
        raise ApiError(422, "invalid_request", f"unknown status; known: {', '.join(STATUSES)}")
    try:
        page = await _store(request, queue.store.list, status=status, limit=limit, cursor=cursor)
    except ValueError as exc:
        raise ApiError(422, "invalid_request", "cursor is not one this service gave") from exc
    items = [job_body(job, with_result=False) for job in page.jobs]
    return JSONResponse({"items": items, "next_cursor": page.next_cursor})


@router.delete(
    "/studies/{study_id}",
    status_code=204,
    responses={404: STUDY_ERROR_RESPONSES[400] | {"description": "Unknown study."}},
    summary="Delete a study and its result now",
)
async def delete_study(request: Request, study_id: str, queue: JobQueueDep) -> Response:
    """Remove the job, its stored upload and its result at once (a running analysis is abandoned)."""
    if not _ID_PATTERN.match(study_id) or not await _store(request, queue.store.delete, study_id):
        raise _not_found()
    logger.info("study job %s deleted", study_id)
    return Response(status_code=204)
