"""The FastAPI application factory: ``create_app(settings=None, engine=None)``.

Nothing is built at import time. The engine is made in the lifespan (so ``uvicorn --factory`` workers each
load their own, and a test can pass a fake one), together with the bounded thread pool for blocking work.
An engine passed in by the caller belongs to the caller and is not closed here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from api.admission import CaseAdmission
from api.auth import ApiKeyVerifier, load_key_digests
from api.decision import decision_for
from api.deps import Engine
from api.dicom_node import start_dicom_node
from api.engines import create_engine
from api.errors import RequestContextMiddleware, error_response, install_error_handlers, request_id_of
from api.log_redaction import DICOM_LIBRARY_LOGGERS
from api.metrics import GatewayMetrics
from api.openapi_errors import install_error_schema
from api.pipeline import warm_up_pipeline
from api.routers import cases, dicomweb, health, models, studies, study_results
from api.routers.docs import install_offline_docs
from api.routers.viewer import install_viewer
from api.settings import Settings, get_settings
from api.study_queue import start_job_queue
from api.upload import UploadBudget
from ich.dicom_node import DicomMetrics
from ich.errors import IntakeError
from ich.jobs.metrics import JobMetrics
from ich.repository import RepositoryError

logger = logging.getLogger(__name__)

#: Longest wait for an engine's warm-up (a Triton that hangs must not hold the start-up).
WARM_UP_TIMEOUT_S = 60.0

DESCRIPTION = (
    "Detects intracranial hemorrhage on non-contrast head CT with a weighted ensemble of five 2D Inception "
    "U-Nets. **Research use only: not a medical device, not for clinical decisions.**"
)


def _make_engine(settings: Settings) -> Engine:
    try:
        engine: Engine = create_engine(
            settings.engine,
            repository=settings.model_repository,
            triton_url=settings.triton_url,
            timeout_s=settings.triton_timeout_s,
            intra_op_threads=settings.intra_op_threads,
            batch_size=settings.embedded_batch_size,
        )
    except RepositoryError as exc:
        logger.error(
            "cannot load the model repository %s (%s): set ICH_MODEL_REPOSITORY to an exported repository "
            "(ich-model export), or use ICH_ENGINE=triton",
            settings.model_repository,
            exc,
        )
        raise
    return engine


def _check_input_size(settings: Settings, engine: Engine) -> None:
    if settings.input_size is not None and settings.input_size != engine.input_size:
        raise RuntimeError(
            f"ICH_INPUT_SIZE={settings.input_size} but the {engine.name} engine's models take "
            f"{engine.input_size}x{engine.input_size}; unset ICH_INPUT_SIZE or serve a matching repository"
        )


async def _warm_up(engine: Engine, executor: ThreadPoolExecutor) -> None:
    """The first study's one-off costs paid before the lifespan lets the gateway serve (and say ready)."""
    started = time.perf_counter()
    await warm_up_pipeline(executor, engine.input_size)
    try:
        await asyncio.wait_for(engine.warm_up(), WARM_UP_TIMEOUT_S)
    except TimeoutError:
        logger.warning("the %s engine's warm-up took over %.0f s; going on", engine.name, WARM_UP_TIMEOUT_S)
    logger.info("warmed up in %.2f s", time.perf_counter() - started)


async def _intake_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, IntakeError)
    reasons = getattr(exc, "reasons", None)  # NoUsableSeriesError lists why each series or file was refused
    extra = {"reasons": list(reasons)} if reasons else None
    return error_response(request_id_of(request), exc.http_status, exc.code, exc.detail, extra=extra)


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    """Build the gateway.

    Args:
        settings: the settings to serve with (default: ``get_settings()``, from the environment).
        engine: an engine to use instead of creating one from the settings (tests, embedding).

    Raises:
        ValueError: ``ICH_API_KEYS_FILE`` is set but unreadable, malformed or empty.
    """
    settings = settings or get_settings()
    keys = ApiKeyVerifier(load_key_digests(settings.api_keys_file)) if settings.api_keys_file else None
    metrics = GatewayMetrics()
    app = FastAPI(
        title="ICH ensemble",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=_lifespan(settings, engine, keys, metrics),
        docs_url=None,  # /docs and /redoc come from install_offline_docs: no CDN
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.api_keys = keys
    app.state.engine = None
    app.state.jobs = None
    app.state.dicom = None
    app.state.admission = CaseAdmission(
        settings.max_inflight_cases, settings.max_waiting_cases, settings.case_wait_s, settings.retry_after_s
    )
    metrics.watch_admission(app.state.admission)
    app.state.upload_budget = UploadBudget(settings.max_upload_buffer_bytes, settings.retry_after_s)
    _install_routes(app, metrics)
    return app


def _install_routes(app: FastAPI, metrics: GatewayMetrics) -> None:
    """Error handlers, the request-context middleware, the routers, the viewer and the offline docs."""
    install_error_handlers(app)
    app.add_exception_handler(IntakeError, _intake_error_handler)
    app.add_middleware(RequestContextMiddleware, on_response=metrics.observe_http)
    for router in (health, cases, models, studies, study_results, dicomweb):
        app.include_router(router.router)
    install_error_schema(app)
    install_viewer(app)
    install_offline_docs(app)


def _lifespan(
    settings: Settings, engine: Engine | None, keys: ApiKeyVerifier | None, metrics: GatewayMetrics
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The gateway's lifespan: the thread pool, the engine, the job queue and the DICOM node, in that order.

    They are closed in the opposite order, each once it has started: the DICOM node before the queue (no
    study is handed to a closing store), the queue before the engine (running jobs are released, not
    failed), and only an engine made here (one passed in belongs to the caller).
    """
    job_metrics = JobMetrics(metrics.registry)
    dicom_metrics = DicomMetrics(metrics.registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Every job writes DICOM (SEG, SR, key image); below WARNING these libraries log UIDs.
        for name in DICOM_LIBRARY_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        async with AsyncExitStack() as stack:
            executor = ThreadPoolExecutor(max_workers=settings.threads, thread_name_prefix="ich-work")
            stack.callback(executor.shutdown, wait=False, cancel_futures=True)
            current = await _open_engine(settings, engine, executor, stack)
            app.state.executor = executor
            _serve(app, stack, "engine", current)
            metrics.watch_engine(current)
            jobs = await start_job_queue(settings, current, executor, metrics, job_metrics)
            stack.push_async_callback(jobs.close)
            _serve(app, stack, "jobs", jobs)
            dicom = await start_dicom_node(settings, jobs.store, jobs.wake, dicom_metrics)
            stack.push_async_callback(dicom.close)
            _serve(app, stack, "dicom", dicom)
            _log_serving(settings, current, keys)
            yield

    return lifespan


def _serve(app: FastAPI, stack: AsyncExitStack, name: str, service: object) -> None:
    """``service`` in ``app.state`` under ``name`` until the stack unwinds (taken away before it closes)."""
    setattr(app.state, name, service)
    stack.callback(setattr, app.state, name, None)


async def _open_engine(
    settings: Settings, engine: Engine | None, executor: ThreadPoolExecutor, stack: AsyncExitStack
) -> Engine:
    """The caller's engine, else one made from the settings and closed with the stack; checked, warmed up."""
    current = engine
    if current is None:
        # Loading ONNX sessions takes seconds: off the loop, though nothing else runs yet.
        current = await asyncio.get_running_loop().run_in_executor(executor, _make_engine, settings)
        stack.push_async_callback(current.close)
    _check_input_size(settings, current)
    await _warm_up(current, executor)
    return current


def _log_serving(settings: Settings, engine: Engine, keys: ApiKeyVerifier | None) -> None:
    logger.info(
        "serving model %s with the %s engine (input %d, threshold %.2f, API keys %s)",
        engine.model_version,
        engine.name,
        engine.input_size,
        decision_for(settings).threshold,
        "on" if keys else "off",
    )
