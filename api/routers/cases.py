"""``POST /v1/cases``: a zipped DICOM study in, the case result out.

The upload is read first, at the pace ``ICH_UPLOAD_TIMEOUT_S`` and ``ICH_UPLOAD_MIN_BYTES_PER_S`` demand
(408 below it), and only then does the case take one of the ``ICH_MAX_INFLIGHT_CASES`` slots: a slow or
stalled sender holds its connection, never a slot, so it cannot shut out the clients that do send. When all
slots are taken the case waits its turn (``api.admission``: bounded, time-limited, fair between clients).
While the case waits and while it is analysed the route listens for the client's disconnect and then leaves
the line or cancels the analysis (and so the engine's work), answering 499 to nobody.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from typing import Annotated, TypeVar

from fastapi import APIRouter, Depends, Query, Request

from api.admission import CaseAdmission, client_of
from api.auth import require_api_key
from api.deps import EngineDep, ExecutorDep, MetricsDep, SettingsDep
from api.engines import EngineUnavailableError
from api.errors import ApiError, service_unavailable
from api.memory import release_free_memory
from api.pipeline import INCLUDE_OPTIONS, analyse_case
from api.schemas import ERROR_RESPONSES, CaseResult
from api.upload import FILE_FIELD, pace_of, read_zip_upload
from ich.errors import IntakeError

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["cases"], dependencies=[Depends(require_api_key)])

T = TypeVar("T")

#: nginx's "client closed request": logged and counted for a case whose client left before its answer.
CLIENT_CLOSED_REQUEST = 499

_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "description": "A zip of the study's DICOM files, raw or as the multipart field 'file'.",
        "content": {
            "application/zip": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FILE_FIELD],
                    "properties": {FILE_FIELD: {"type": "string", "format": "binary"}},
                }
            },
        },
    }
}


def _include_options(include: str | None) -> frozenset[str]:
    """Parse ``?include=``; unknown options are a 422 rather than silently ignored."""
    options = frozenset(part.strip().lower() for part in (include or "").split(",") if part.strip())
    unknown = sorted(options - INCLUDE_OPTIONS)
    if unknown:
        raise ApiError(
            422,
            "invalid_request",
            f"unknown include option(s) {', '.join(unknown)}; known: {', '.join(sorted(INCLUDE_OPTIONS))}",
        )
    return options


@router.post(
    "/cases",
    response_model=CaseResult,
    responses=ERROR_RESPONSES,
    openapi_extra=_REQUEST_BODY,
    summary="Analyse a head CT study",
)
async def create_case(
    request: Request,
    settings: SettingsDep,
    metrics: MetricsDep,
    engine: EngineDep,
    executor: ExecutorDep,
    include: Annotated[
        str | None,
        Query(
            description="Comma-separated optional outputs: 'overlays' (PNG previews of lesion slices), "
            "'seg' (the lesion mask as a base64 DICOM SEG)."
        ),
    ] = None,
) -> CaseResult:
    """Read the zip (capped and paced while streaming), wait for a slot, then analyse it there."""
    started = time.perf_counter()
    options = _include_options(include)
    admission: CaseAdmission = request.app.state.admission
    client = client_of(request)
    if admission.would_shed(client):
        # Saturated already: refuse before the body is read, so a busy replica costs the client no upload.
        raise admission.busy("every slot is taken and the line is full")
    with request.app.state.upload_budget.hold() as share:  # kept while the case waits for its slot
        try:
            data = await read_zip_upload(request, settings.max_upload_bytes, pace_of(settings), share=share)
        except ApiError as exc:
            if exc.status_code < 500:  # a 503 "busy" is load shed, like the one before the body, not a case
                metrics.cases.labels(outcome="rejected").inc()
            raise
        try:
            await _unless_disconnected(request, admission.acquire(client))
        except _ClientGoneError:
            raise _cancelled(metrics, started, "waiting for a slot") from None
    metrics.inflight.inc()
    try:
        try:
            result = await _unless_disconnected(
                request,
                analyse_case(
                    data,
                    engine=engine,
                    executor=executor,
                    settings=settings,
                    metrics=metrics,
                    started=started,
                    include=options,
                ),
            )
        except (ApiError, IntakeError) as exc:
            status = exc.status_code if isinstance(exc, ApiError) else exc.http_status
            metrics.cases.labels(outcome="rejected" if status < 500 else "error").inc()
            raise
        except _ClientGoneError:
            raise _cancelled(metrics, started, "in analysis") from None
        except EngineUnavailableError as exc:
            metrics.cases.labels(outcome="error").inc()
            raise service_unavailable(
                "engine_unavailable",
                "the inference engine is unavailable; retry later",
                settings.retry_after_s,
            ) from exc
        except Exception:
            metrics.cases.labels(outcome="error").inc()
            raise
    finally:
        admission.release()
        metrics.inflight.dec()
        # Not awaited: the answer need not wait for the allocator to hand the case's memory back (and a
        # pool already shut down, at exit, has nothing left to give back).
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().run_in_executor(executor, release_free_memory)

    outcome = "indeterminate" if result.indeterminate else ("positive" if result.ich_detected else "negative")
    metrics.cases.labels(outcome=outcome).inc()
    metrics.case_probability.observe(result.ich_probability)
    metrics.slices_per_case.observe(result.series.slices_used)
    logger.info(
        "case %s: %s, %d slices, %.0f ms",
        result.case_id,
        outcome,
        result.series.slices_used,
        result.timing_ms.total,
    )
    return result


def _cancelled(metrics: MetricsDep, started: float, where: str) -> ApiError:
    metrics.cases.labels(outcome="cancelled").inc()
    logger.info("case cancelled %s: the client disconnected after %.0f ms", where, _ms_since(started))
    return ApiError(
        CLIENT_CLOSED_REQUEST, "client_closed_request", "the client disconnected; analysis stopped"
    )


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


class _ClientGoneError(Exception):
    """The client disconnected while its case was analysed."""


async def _wait_for_disconnect(request: Request) -> None:
    """Return once the client has gone (the body is read, so the next ASGI message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """``work``'s result; ``_ClientGoneError``, with ``work`` cancelled, once the client disconnects."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        raise _ClientGoneError
    return task.result()
