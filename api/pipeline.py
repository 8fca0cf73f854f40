"""One case through the gateway: intake, preprocessing, the engine, aggregation, timed stage by stage.

The blocking stages (unzip and decode, preprocess, aggregate) run in the app's bounded thread pool so the
event loop keeps answering probes and other uploads; the engine's ``infer`` is already asynchronous. Each
stage is timed for the result's ``timing_ms`` and the ``ich_stage_seconds`` histogram.

Preprocessing and inference overlap: the series is preprocessed in chunks of ``OVERLAP_CHUNK`` slices and
each chunk goes to the engine as soon as it is ready, so the engine infers one chunk while the next is
being preprocessed. ``preprocess`` is then the time spent preprocessing (mostly hidden behind inference)
and ``inference`` the time from the first chunk's inference to the last one's end.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import io
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from api.decision import decision_for
from api.deps import Engine
from api.engines import EngineUnavailableError
from api.metrics import GatewayMetrics
from api.schemas import (
    CaseResult,
    ModelScores,
    Overlay,
    PassedOverSeries,
    SegObject,
    SeriesInfo,
    SkippedFile,
    SliceResult,
    Subtypes,
    Timing,
)
from api.settings import Settings
from ich import spec
from ich.aggregate import CaseFindings, aggregate
from ich.burn_in import left_edge_marker, slice_lines
from ich.ensemble import EnsembleOutput, concat_outputs
from ich.intake import IntakeLimits, Study, read_study
from ich.overlay import render_overlay, top_slice_indices
from ich.preprocess import preprocess_volume
from ich.seg import build_segmentation
from ich.slice_render import image_orientation
from ich.volume import CTVolume

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Called in the thread pool with the study, its findings, the engine's output and the finished result,
#: before the result is returned: what a job renders from the analysis besides the JSON (its DICOM SEG, SR
#: and key image, ``api.study_queue``); it may add to ``result.warnings``.
FindingsHook = Callable[[Study, CaseFindings, EnsembleOutput, CaseResult], None]

#: Optional outputs a caller may ask for with ``?include=``.
INCLUDE_OPTIONS = frozenset({"overlays", "seg"})
#: Most overlay previews in one result (they are base64 PNGs inside the JSON).
MAX_OVERLAYS = 3

#: Decimals kept in probabilities and weights: float32 carries about seven significant digits.
_DECIMALS = 6
#: Slices preprocessed before they go to the engine: small, so the first inference starts early (only the
#: first chunk's preprocessing is not hidden behind inference), and a multiple of the embedded batch.
OVERLAP_CHUNK = 8


async def run_blocking(executor: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn`` in the pool with the caller's context (request id in log records)."""
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()
    return await loop.run_in_executor(executor, context.run, fn, *args)


@dataclass
class StageClock:
    """Seconds per stage, observed into the histogram as each stage ends."""

    metrics: GatewayMetrics
    seconds: dict[str, float]

    def record(self, stage: str, started: float) -> None:
        self.record_seconds(stage, time.perf_counter() - started)

    def record_seconds(self, stage: str, elapsed: float) -> None:
        self.seconds[stage] = elapsed
        self.metrics.stage_seconds.labels(stage=stage).observe(elapsed)


def _decode(data: bytes | bytearray, settings: Settings) -> Study:
    limits = IntakeLimits(
        max_upload_bytes=settings.max_upload_bytes,
        max_uncompressed_bytes=settings.max_uncompressed_bytes,
        max_members=settings.max_members,
        max_slices=settings.max_slices,
    )
    return read_study(data, limits=limits)


async def analyse_case(
    data: bytes | bytearray,
    *,
    engine: Engine,
    executor: ThreadPoolExecutor,
    settings: Settings,
    metrics: GatewayMetrics,
    started: float,
    include: frozenset[str] = frozenset(),
    on_findings: FindingsHook | None = None,
) -> CaseResult:
    """Analyse one zipped study; ``started`` is the request's ``perf_counter`` start, for ``total``.

    ``include`` may hold ``"overlays"`` (PNG previews of the lesion slices) and ``"seg"`` (the lesion mask
    as a DICOM SEG); both are rendered in the aggregate stage, at the source matrix. A ``bytearray`` upload
    is emptied once decoded, so its memory is given back before the engine runs (the volume holds what is
    needed from then on).

    Raises:
        ich.errors.IntakeError: the zip is unreadable, too large, or holds no usable CT series.
        api.engines.EngineUnavailableError: the engine cannot answer (the route maps it to 503).
    """
    clock = StageClock(metrics, {})

    t = time.perf_counter()
    try:
        study = await run_blocking(executor, _decode, data, settings)
    finally:
        if isinstance(data, bytearray):
            del data[:]
    clock.record("decode", t)
    volume = study.volume

    images, output = await _preprocess_and_infer(volume.hu, engine, executor, clock)

    t = time.perf_counter()
    findings, extras = await run_blocking(
        executor, _aggregate, output, images, study, settings, include, engine.model_version
    )
    clock.record("aggregate", t)

    total = time.perf_counter() - started
    result = _result(study, findings, engine, clock.seconds, total)
    if "overlays" in include:
        result.overlays = extras.overlays
    if "seg" in include:
        result.seg = extras.seg
    result.warnings.extend(extras.warnings)
    if on_findings is not None:
        await run_blocking(executor, on_findings, study, findings, output, result)
    return result


async def _preprocess_and_infer(
    hu: np.ndarray, engine: Engine, executor: ThreadPoolExecutor, clock: StageClock
) -> tuple[np.ndarray, EnsembleOutput]:
    """Preprocess in chunks, each handed to the engine at once; the images and the joined output.

    A chunk's inference runs as a task while the next chunk is preprocessed. On any failure or
    cancellation the inferences still running are cancelled (the engine stops their work).
    """
    n = int(hu.shape[0])
    size = engine.input_size
    images = np.empty((n, spec.IN_CHANNELS, size, size), dtype=np.float32)
    tasks: list[asyncio.Task[EnsembleOutput]] = []
    preprocess_s = 0.0
    inference_started = 0.0
    try:
        for start in range(0, n, OVERLAP_CHUNK):
            t = time.perf_counter()
            chunk = await run_blocking(executor, preprocess_volume, hu[start : start + OVERLAP_CHUNK], size)
            preprocess_s += time.perf_counter() - t
            images[start : start + chunk.shape[0]] = chunk
            if not tasks:
                inference_started = time.perf_counter()
            tasks.append(asyncio.create_task(engine.infer(images[start : start + chunk.shape[0]])))
        # Recorded once every slice is preprocessed, while inference goes on (a probe of the metrics sees
        # a study in its inference then).
        clock.record_seconds("preprocess", preprocess_s)
        parts = await _gather_inferences(tasks, clock.metrics)
    except BaseException:
        for task in tasks:
            task.cancel()
        raise
    clock.record("inference", inference_started)
    return images, concat_outputs(parts)


async def _gather_inferences(
    tasks: list[asyncio.Task[EnsembleOutput]], metrics: GatewayMetrics
) -> list[EnsembleOutput]:
    try:
        return list(await asyncio.gather(*tasks))
    except EngineUnavailableError as exc:
        metrics.engine_errors.labels(reason=str(exc.reason or "unavailable")).inc()
        raise
    except Exception:
        metrics.engine_errors.labels(reason="error").inc()
        raise


async def warm_up_pipeline(executor: ThreadPoolExecutor, input_size: int) -> None:
    """A generated HU volume through preprocessing (the resize tables, cached per matrix, and skull strip).

    What the first study would otherwise pay; the lifespan runs it before the service says it is ready.
    Nothing is inferred or counted. DICOM decoding is not warmed: its first call costs a few milliseconds
    more than later ones, and a gateway that wrote DICOM to warm it would carry a DICOM writer.
    """
    await run_blocking(executor, _warm_preprocess, input_size)


def _warm_preprocess(input_size: int) -> None:
    hu = np.full((2, WARM_UP_MATRIX, WARM_UP_MATRIX), -1000.0, dtype=np.float32)
    hu[:, 128:384, 128:384] = 40.0
    preprocess_volume(hu, input_size)


#: The matrix of the warm-up volume: the usual head CT's (the resize tables are cached per matrix).
WARM_UP_MATRIX = 512


@dataclass
class _Extras:
    """Optional outputs rendered on request (``?include=``)."""

    overlays: list[Overlay] | None = None
    seg: SegObject | None = None
    warnings: list[str] = field(default_factory=list)


def _aggregate(
    output: EnsembleOutput,
    images: np.ndarray,
    study: Study,
    settings: Settings,
    include: frozenset[str],
    model_version: str,
) -> tuple[CaseFindings, _Extras]:
    volume = study.volume
    decision = decision_for(settings)
    findings = aggregate(
        output,
        volume,
        images,
        case_model=decision.case_model,
        threshold=decision.threshold,
        band=decision.band,
    )
    extras = _Extras()
    if include:
        mask = findings.source_mask
        if "overlays" in include:
            extras.overlays = _overlays(output, volume, findings, mask, image_orientation(study))
        if "seg" in include:
            extras.seg, note = _seg(study, mask, model_version)
            if note:
                extras.warnings.append(note)
    return findings, extras


def _overlays(
    output: EnsembleOutput,
    volume: CTVolume,
    findings: CaseFindings,
    mask: np.ndarray,
    orientation: Sequence[float] | None,
) -> list[Overlay]:
    """PNG previews of the up to three most certain lesion slices, at the source matrix, captioned."""
    hu = np.asarray(volume.hu)
    n = hu.shape[0]
    marker = left_edge_marker(orientation)
    overlays = []
    for i in top_slice_indices(output.slice_prob, mask, k=MAX_OVERLAYS):
        lines = slice_lines(i, n, float(output.slice_prob[i]))
        png = render_overlay(hu[i], mask[i], lines=lines, right_marker=marker)
        overlays.append(
            Overlay(
                index=i,
                sop_instance_uid=findings.slices[i].sop_instance_uid,
                data_base64=base64.b64encode(png).decode("ascii"),
            )
        )
    return overlays


def _seg(study: Study, mask: np.ndarray, model_version: str) -> tuple[SegObject | None, str | None]:
    """The mask as a DICOM SEG over the analysed series, or None and why not.

    No lesion gives None without a note. A series whose headers lack what a SEG must reference (unique SOP
    Instance UIDs, a Frame of Reference, positions) gives None and a warning: the analysis stands, only this
    optional output is impossible, so the request does not fail for it.
    """
    if not mask.any():
        return None, None
    if len(study.source_headers) != mask.shape[0]:
        return None, "no DICOM SEG: the series lacks unique SOP Instance UIDs"
    try:
        seg = build_segmentation(list(study.source_headers), mask, model_version=model_version)
    except ValueError as exc:
        # ich.seg's messages name the missing attributes, never their values.
        return None, f"no DICOM SEG: {exc}"
    if seg is None:
        return None, None
    buffer = io.BytesIO()
    seg.save_as(buffer, enforce_file_format=True)
    encoded = SegObject(
        series_instance_uid=str(seg.SeriesInstanceUID),
        sop_instance_uid=str(seg.SOPInstanceUID),
        frames=int(seg.NumberOfFrames),
        data_base64=base64.b64encode(buffer.getvalue()).decode("ascii"),
    )
    return encoded, None


def _round(value: float) -> float:
    return round(float(value), _DECIMALS)


def _result(
    study: Study, findings: CaseFindings, engine: Engine, seconds: dict[str, float], total: float
) -> CaseResult:
    volume = study.volume
    spacing = tuple(float(v) for v in volume.pixel_spacing_mm)
    series = SeriesInfo(
        series_instance_uid=volume.series_instance_uid,
        slices_used=int(np.asarray(volume.hu).shape[0]),
        slice_thickness_mm=float(volume.slice_thickness_mm),
        pixel_spacing_mm=(spacing[0], spacing[1]),
        skipped=[SkippedFile(file=s.file, reason=s.reason) for s in study.skipped],
        passed_over=[
            PassedOverSeries(
                series_instance_uid=p.series_instance_uid,
                reason=p.reason,
                modality=p.modality,
                slices=p.slices,
            )
            for p in study.passed_over
        ],
    )
    slices = [
        SliceResult(
            index=s.index,
            sop_instance_uid=s.sop_instance_uid,
            probability=_round(s.probability),
            model_probabilities=ModelScores.from_mapping(
                {k: _round(v) for k, v in s.model_probabilities.items()}
            ),
            weights=ModelScores.from_mapping({k: _round(v) for k, v in s.weights.items()}),
            hemorrhage_volume_ml=round(s.hemorrhage_volume_ml, 3),
            subtypes=_subtypes(s.subtypes),
        )
        for s in findings.slices
    ]
    ms = {stage: round(value * 1000.0, 2) for stage, value in seconds.items()}
    return CaseResult(
        case_id=uuid.uuid4(),
        model_version=engine.model_version,
        engine=engine.name,
        ich_probability=_round(findings.ich_probability),
        max_slice_probability=_round(findings.max_slice_probability),
        ich_detected=findings.ich_detected,
        threshold=findings.threshold,
        indeterminate=findings.indeterminate,
        indeterminate_band=findings.indeterminate_band,
        hemorrhage_volume_ml=round(findings.hemorrhage_volume_ml, 3),
        series=series,
        slices=slices,
        timing_ms=Timing(
            decode=ms["decode"],
            preprocess=ms["preprocess"],
            inference=ms["inference"],
            aggregate=ms["aggregate"],
            total=round(total * 1000.0, 2),
        ),
        warnings=list(study.warnings),
        uncertainty=_round(findings.uncertainty),
        subtypes=_subtypes(findings.subtypes),
    )


def _subtypes(values: dict[str, float | None] | None) -> Subtypes | None:
    if values is None:
        return None
    return Subtypes(**{k: None if v is None else _round(v) for k, v in values.items()})
