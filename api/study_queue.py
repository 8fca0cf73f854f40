"""The gateway's side of the durable queue: the store from the settings, and the pipeline the workers run.

The workers run ``api.pipeline.analyse_case``, the function ``POST /v1/cases`` runs, through
:func:`job_pipeline`, which only translates: the engine's unavailability becomes the queue's
:class:`ich.jobs.TransientJobError` (retried), the result becomes JSON, and the job's DICOM results (SEG,
SR, key image: ``ich.dicom_outputs``, UIDs derived from the job) are rendered from the same analysis and
stored with it.
"""

from __future__ import annotations

import asyncio
import base64
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from api.engines.base import Engine, EngineUnavailableError
from api.metrics import GatewayMetrics
from api.pipeline import FindingsHook, analyse_case
from api.schemas import CaseResult, SegObject
from api.settings import Settings
from ich.aggregate import CaseFindings
from ich.dicom_outputs import DicomOutputs, build_dicom_outputs
from ich.ensemble import EnsembleOutput
from ich.errors import IntakeError
from ich.intake import Study
from ich.jobs import (
    Analyse,
    DatabasePayloads,
    FilePayloads,
    JobOutcome,
    JobStore,
    Payloads,
    TransientJobError,
    WorkerConfig,
    WorkerPool,
    current_job_id,
    open_database,
)
from ich.jobs.metrics import JobMetrics
from ich.sr import ReportValues

#: Uploads of the SQLite store live in this folder of ``ICH_DATA_DIR``.
STUDIES_FOLDER = "studies"


def open_job_store(settings: Settings) -> JobStore:
    """The store the settings name (blocking: connects and migrates)."""
    engine = open_database(settings.database_url, settings.data_dir)
    payloads: Payloads
    if engine.dialect.name == "sqlite":
        payloads = FilePayloads(settings.data_dir / STUDIES_FOLDER)
    else:
        payloads = DatabasePayloads()
    return JobStore(engine, payloads)


def worker_config(settings: Settings) -> WorkerConfig:
    """The pool's timings and limits from ``ICH_JOB_*`` and ``ICH_RETENTION_HOURS``."""
    return WorkerConfig(
        workers=settings.job_workers,
        lease_s=settings.job_lease_s,
        max_attempts=settings.job_max_attempts,
        backoff_s=settings.job_retry_backoff_s,
        poll_s=min(1.0, settings.job_lease_s / 3.0),
        retention_s=settings.retention_hours * 3600.0,
    )


def report_values(result: CaseResult) -> ReportValues:
    """The figures the SR states, taken from the JSON result so that both say the same."""
    return ReportValues(
        ich_probability=result.ich_probability,
        ich_detected=result.ich_detected,
        indeterminate=result.indeterminate,
        threshold=result.threshold,
        hemorrhage_volume_ml=result.hemorrhage_volume_ml,
        subtypes=None if result.subtypes is None else result.subtypes.model_dump(),
        uncertainty=result.uncertainty,
    )


def dicom_outputs_hook(job_id: str, rendered: list[DicomOutputs]) -> FindingsHook:
    """The findings hook that renders a job's DICOM results into ``rendered`` (and notes into warnings).

    A job asked with ``include=seg`` carries this very SEG in its result, so the JSON, the download and the
    PACS hold one object with one UID.
    """

    def render(study: Study, findings: CaseFindings, output: EnsembleOutput, result: CaseResult) -> None:
        outputs = build_dicom_outputs(
            study.source_headers,
            study.volume.hu,
            findings.source_mask,
            output.slice_prob,
            report_values(result),
            job_id=job_id,
            model_version=result.model_version,
        )
        rendered.append(outputs)
        result.warnings.extend(outputs.notes)
        if result.seg is not None and outputs.seg is not None:
            encoded = outputs.encoded()["seg"]
            result.seg = SegObject(
                series_instance_uid=str(outputs.seg.SeriesInstanceUID),
                sop_instance_uid=str(outputs.seg.SOPInstanceUID),
                frames=int(outputs.seg.NumberOfFrames),
                data_base64=base64.b64encode(encoded).decode("ascii"),
            )

    return render


def job_pipeline(
    engine: Engine, executor: ThreadPoolExecutor, settings: Settings, metrics: GatewayMetrics
) -> Analyse:
    """The pipeline function of the workers: ``analyse_case`` on the stored zip, its result as JSON and
    the job's DICOM results beside it."""

    async def analyse(data: bytes, options: tuple[str, ...]) -> dict[str, Any] | JobOutcome:
        started = time.perf_counter()
        job_id = current_job_id.get()
        rendered: list[DicomOutputs] = []
        hook = dicom_outputs_hook(job_id, rendered) if job_id is not None else None
        try:
            result = await analyse_case(
                data,
                engine=engine,
                executor=executor,
                settings=settings,
                metrics=metrics,
                started=started,
                include=frozenset(options),
                on_findings=hook,
            )
        except EngineUnavailableError as exc:
            raise TransientJobError("the inference engine is unavailable") from exc
        except IntakeError:
            metrics.cases.labels(outcome="rejected").inc()
            raise
        outcome = (
            "indeterminate" if result.indeterminate else ("positive" if result.ich_detected else "negative")
        )
        metrics.cases.labels(outcome=outcome).inc()
        metrics.case_probability.observe(result.ich_probability)
        metrics.slices_per_case.observe(result.series.slices_used)
        body = result.model_dump(mode="json")
        if not rendered:
            return body
        return JobOutcome(body, rendered[0].encoded())

    return analyse


@dataclass
class JobQueue:
    """What the lifespan keeps on ``app.state.jobs``: the store and this process's worker pool."""

    store: JobStore
    pool: WorkerPool

    def wake(self) -> None:
        """Tell this process's idle workers that a job was queued."""
        self.pool.wake()

    async def close(self) -> None:
        """Stop the workers (their jobs are released) and close the database connections."""
        await self.pool.stop()
        await asyncio.to_thread(self.store.engine.dispose)


async def start_job_queue(
    settings: Settings,
    engine: Engine,
    executor: ThreadPoolExecutor,
    metrics: GatewayMetrics,
    job_metrics: JobMetrics,
) -> JobQueue:
    """Open the store and start ``ICH_JOB_WORKERS`` workers in the running loop."""
    store = await asyncio.to_thread(open_job_store, settings)
    # With ICH_JOB_WORKERS=0 the pool still purges and refreshes the queue gauges; it just claims nothing.
    analyse = job_pipeline(engine, executor, settings, metrics)
    pool = WorkerPool(store, analyse, engine.ready, worker_config(settings), job_metrics)
    pool.start()
    return JobQueue(store, pool)
