"""Open endpoints for probes and scrapers: ``/healthz``, ``/readyz``, ``/metrics`` (no API key)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from api.deps import Engine, MetricsDep, SettingsDep
from api.errors import error_response, request_id_of
from api.metrics import CONTENT_TYPE
from api.schemas import ErrorBody, HealthStatus, ReadyStatus

logger = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthStatus)
async def healthz() -> HealthStatus:
    """The process is alive (liveness: never depends on the engine, so a Triton outage restarts nothing)."""
    return HealthStatus(status="ok")


@router.get("/readyz", response_model=ReadyStatus, responses={503: {"model": ErrorBody}})
async def readyz(request: Request, settings: SettingsDep) -> ReadyStatus | JSONResponse:
    """Ready when the engine answers; 503 otherwise, so the load balancer sends cases elsewhere."""
    engine: Engine | None = getattr(request.app.state, "engine", None)
    ready = False
    if engine is not None:
        try:
            ready = await engine.ready()
        except Exception as exc:  # a probe must answer, whatever the engine raises
            logger.warning("readiness check failed: %s", type(exc).__name__)
    if not ready:
        return error_response(
            request_id_of(request),
            503,
            "not_ready",
            f"the {engine.name if engine is not None else settings.engine} engine is not ready",
            headers={"Retry-After": str(settings.retry_after_s)},
        )
    assert engine is not None
    return ReadyStatus(status="ready", engine=engine.name, model_version=engine.model_version)


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics(metrics: MetricsDep) -> Response:
    """Prometheus text exposition of this app's registry."""
    return Response(content=metrics.exposition(), media_type=CONTENT_TYPE)
