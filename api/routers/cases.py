"""``POST /v1/cases``: a zipped DICOM study in, the case result out.

The upload is read first, at the pace ``ICH_UPLOAD_TIMEOUT_S`` and ``ICH_UPLOAD_MIN_BYTES_PER_S`` demand
(408 below it), and only then does the case take one of the ``ICH_MAX_INFLIGHT_CASES`` slots: a slow or
stalled sender holds its connection, never a slot, so it cannot shut out the clients that do send. When all
slots are taken the case waits its turn (``api.admission``: bounded, time-limited, fair between clients).
While the case waits and while it is analysed the route listens for the client's disconnect and then leaves
the line or cancels the analysis (and so the engine's work), answering 499 to nobody.

The route only strings the parts together: the door (``api.admission.admitted_case``), the analysis
(``api.pipeline.analyse_case``) and the case's outcome, counted and logged once (``api.case_outcome``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from api.admission import admitted_case
from api.auth import require_api_key
from api.case_outcome import CaseOutcome
from api.deps import Engine, EngineDep, ExecutorDep, MetricsDep, SettingsDep
from api.disconnect import unless_disconnected
from api.engines import EngineUnavailableError
from api.errors import ApiError, service_unavailable
from api.memory import release_free_memory
from api.metrics import GatewayMetrics
from api.pipeline import INCLUDE_OPTIONS, analyse_case
from api.schemas import ERROR_RESPONSES, CaseResult
from api.settings import Settings
from api.upload import FILE_FIELD

router = APIRouter(prefix="/v1", tags=["cases"], dependencies=[Depends(require_api_key)])

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


def include_options(include: str | None) -> frozenset[str]:
    """Parse ``?include=`` (here and on ``/v1/studies``); an unknown option is a 422, never ignored."""
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
    options = include_options(include)
    with CaseOutcome(metrics, started) as outcome:
        async with admitted_case(request, settings) as data:
            result = await _analyse(request, data, engine, executor, settings, metrics, started, options)
        return outcome.answered(result)


async def _analyse(
    request: Request,
    data: bytearray,
    engine: Engine,
    executor: ThreadPoolExecutor,
    settings: Settings,
    metrics: GatewayMetrics,
    started: float,
    options: frozenset[str],
) -> CaseResult:
    """The analysis, cancelled if the client leaves; an unavailable engine is a 503 with Retry-After."""
    work = analyse_case(
        data,
        engine=engine,
        executor=executor,
        settings=settings,
        metrics=metrics,
        started=started,
        include=options,
    )
    try:
        return await unless_disconnected(request, work, "in analysis")
    except EngineUnavailableError as exc:
        raise service_unavailable(
            "engine_unavailable", "the inference engine is unavailable; retry later", settings.retry_after_s
        ) from exc
    finally:
        # Not awaited: the answer need not wait for the allocator to hand the case's memory back (and a
        # pool already shut down, at exit, has nothing left to give back).
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().run_in_executor(executor, release_free_memory)
