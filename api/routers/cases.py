"""``POST /v1/cases``: a zipped DICOM study in, the case result out."""

from __future__ import annotations

import logging
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from api.auth import require_api_key
from api.deps import EngineDep, ExecutorDep, MetricsDep, SettingsDep
from api.engines import EngineUnavailableError
from api.errors import ApiError, service_unavailable
from api.pipeline import INCLUDE_OPTIONS, analyse_case
from api.schemas import ERROR_RESPONSES, CaseResult
from api.upload import FILE_FIELD, read_zip_upload
from ich.errors import IntakeError

logger = logging.getLogger(__name__)

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
    """Read the zip (capped while streaming), choose the CT series, run the ensemble, aggregate."""
    started = time.perf_counter()
    options = _include_options(include)
    state = request.app.state
    if state.inflight_cases >= settings.max_inflight_cases:
        # Shed load before reading the body: memory stays bounded and the client retries elsewhere.
        raise service_unavailable(
            "busy",
            f"{settings.max_inflight_cases} cases are being analysed; retry later",
            settings.retry_after_s,
        )
    state.inflight_cases += 1
    metrics.inflight.inc()
    try:
        try:
            data = await read_zip_upload(request, settings.max_upload_bytes)
            result = await analyse_case(
                data,
                engine=engine,
                executor=executor,
                settings=settings,
                metrics=metrics,
                started=started,
                include=options,
            )
        except (ApiError, IntakeError) as exc:
            status = exc.status_code if isinstance(exc, ApiError) else exc.http_status
            metrics.cases.labels(outcome="rejected" if status < 500 else "error").inc()
            raise
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
        state.inflight_cases -= 1
        metrics.inflight.dec()

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
