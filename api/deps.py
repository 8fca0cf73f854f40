"""``Annotated`` dependencies of the routes (FastAPI full-stack template style).

Everything a route needs lives on ``app.state`` (set by ``create_app`` and its lifespan), so two apps in one
process (tests) never share an engine, a thread pool or a metrics registry.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Annotated

from fastapi import Depends, Request

from api.engines.base import Engine
from api.errors import service_unavailable
from api.metrics import GatewayMetrics
from api.settings import Settings

__all__ = [
    "Engine",
    "EngineDep",
    "ExecutorDep",
    "MetricsDep",
    "SettingsDep",
    "get_app_settings",
    "get_engine",
    "get_executor",
    "get_metrics",
]


def get_app_settings(request: Request) -> Settings:
    """The settings the app was created with."""
    settings: Settings = request.app.state.settings
    return settings


def get_metrics(request: Request) -> GatewayMetrics:
    """The app's own metrics."""
    metrics: GatewayMetrics = request.app.state.metrics
    return metrics


def get_engine(request: Request) -> Engine:
    """The engine made by the lifespan; 503 while there is none (start-up, shutdown)."""
    engine: Engine | None = getattr(request.app.state, "engine", None)
    if engine is None:
        settings = get_app_settings(request)
        raise service_unavailable("engine_unavailable", "the engine is not started", settings.retry_after_s)
    return engine


def get_executor(request: Request) -> ThreadPoolExecutor:
    """The bounded pool for blocking work (unzip, decode, preprocess, aggregate)."""
    executor: ThreadPoolExecutor = request.app.state.executor
    return executor


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
MetricsDep = Annotated[GatewayMetrics, Depends(get_metrics)]
EngineDep = Annotated[Engine, Depends(get_engine)]
ExecutorDep = Annotated[ThreadPoolExecutor, Depends(get_executor)]
