"""Typed results of the service (docs/DESIGN.md, "HTTP contract").

Every model accepts fields it does not know (``extra="allow"``): the service may add fields, and an older
client must keep working and keep those fields (they survive ``model_dump()``). A contract test compares
these models with the service's OpenAPI schema so that the two cannot drift apart silently.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True, protected_namespaces=())


class SkippedFile(_Model):
    """A member of the upload that was not used, and why (not DICOM, another series, duplicate...)."""

    file: str
    reason: str


class PassedOverSeries(_Model):
    """Another series of the study that was not analysed, and why (localizer, not CT, too few slices...)."""

    series_instance_uid: str
    reason: str
    modality: str | None = None
    slices: int | None = None


class SeriesInfo(_Model):
    """The CT series the service chose and analysed."""

    series_instance_uid: str
    slices_used: int
    slice_thickness_mm: float
    pixel_spacing_mm: tuple[float, float] = Field(description="(row, column) spacing in mm")
    skipped: list[SkippedFile] = Field(default_factory=list)
    passed_over: list[PassedOverSeries] = Field(default_factory=list)


class ModelValues(_Model):
    """One number per base model of the ensemble, by the contract's short keys."""

    all: float
    subtype: float
    sdh: float
    sah: float
    small: float


class Subtypes(_Model):
    """Probability of each hemorrhage subtype; ``None`` for a subtype the service does not measure."""

    epidural: float | None = None
    subdural: float | None = None
    subarachnoid: float | None = None
    intraparenchymal: float | None = None
    intraventricular: float | None = None


class SliceResult(_Model):
    """The ensemble's output for one slice."""

    index: int = Field(description="0-based position along the slice normal")
    sop_instance_uid: str
    probability: float
    model_probabilities: ModelValues
    weights: ModelValues
    hemorrhage_volume_ml: float | None = None
    #: subtype probabilities on this slice; ``None`` when the service's model has no subtypes
    subtypes: Subtypes | None = None


class Overlay(_Model):
    """A PNG preview of one slice with the lesion outlined (asked for with ``include_overlays=True``)."""

    index: int
    sop_instance_uid: str
    media_type: str = "image/png"
    data_base64: str

    def image_bytes(self) -> bytes:
        """The decoded image (PNG), e.g. to write to a file."""
        return base64.b64decode(self.data_base64, validate=True)


class SegObject(_Model):
    """The lesion mask as a DICOM Segmentation over the analysed series (``include_seg=True``)."""

    media_type: str = "application/dicom"
    series_instance_uid: str
    sop_instance_uid: str
    frames: int
    data_base64: str

    def dicom_bytes(self) -> bytes:
        """The decoded DICOM SEG file, e.g. to write to a file or send to a PACS."""
        return base64.b64decode(self.data_base64, validate=True)


class Timing(_Model):
    """Milliseconds spent in each stage of the service's pipeline."""

    decode: float
    preprocess: float
    inference: float
    aggregate: float
    total: float


class CaseResult(_Model):
    """The service's answer for one study.

    Fields the design contract fixes are required; the service's additions (``indeterminate_band``,
    ``warnings``, ``series.passed_over``, a slice's ``hemorrhage_volume_ml``, ``overlays``, ``seg``) and the
    fields added to the contract later (``uncertainty``, ``subtypes``) have
    defaults, so the client also reads a service that does not send them.
    """

    case_id: str
    model_version: str
    engine: str
    ich_probability: float
    #: The paper's case score (highest slice probability), beside the lesion-based ``ich_probability``.
    max_slice_probability: float | None = None
    ich_detected: bool
    threshold: float
    indeterminate: bool
    indeterminate_band: tuple[float, float] | None = None
    hemorrhage_volume_ml: float
    series: SeriesInfo
    slices: list[SliceResult]
    timing_ms: Timing
    warnings: list[str] = Field(default_factory=list)
    #: the five base models' disagreement on what decided the case (0 to 0.5; high: look at it)
    uncertainty: float | None = None
    #: subtype probabilities of the case; ``None`` when the service's model has no subtypes
    subtypes: Subtypes | None = None
    overlays: list[Overlay] | None = None
    seg: SegObject | None = None

    def top_slices(self, n: int = 3) -> list[SliceResult]:
        """The ``n`` slices with the highest probability, highest first (ties: lower index first)."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        return sorted(self.slices, key=lambda s: (-s.probability, s.index))[:n]

    def with_threshold(self, threshold: float) -> CaseResult:
        """A copy whose decision is re-made on the client at ``threshold``.

        ``ich_detected`` becomes ``ich_probability >= threshold`` and ``threshold`` is replaced. The
        service's own decision uses its configured threshold; this lets a site apply a locally validated
        operating point without redeploying the service. ``indeterminate`` (the fixed [0.4, 0.6] band of the
        method) is left as the service computed it. Both numbers are compared in float32, as the service
        does (the models' precision), so that a threshold equal to the service's gives the service's
        decision; the probability is the value the service sent (rounded to 6 decimals).
        """
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        detected = _float32(self.ich_probability) >= _float32(threshold)
        return self.model_copy(update={"threshold": threshold, "ich_detected": detected})


class Health(_Model):
    """Answer of ``GET /healthz`` (liveness) or ``GET /readyz`` (readiness).

    ``ok`` is filled in by the client from the HTTP status (a 503 from ``/readyz`` means "not ready"); the
    other fields are what the service says about itself.
    """

    ok: bool = True
    status: str | None = None
    engine: str | None = None
    model_version: str | None = None


class TensorInfo(_Model):
    """A model input or output; ``shape`` excludes the batch dimension."""

    name: str
    datatype: str
    shape: list[int]


class ModelInfo(_Model):
    """One model of the ensemble as the service's engine reports it."""

    name: str
    version: str | None = None
    versions: list[str] = Field(default_factory=list)
    platform: str | None = None
    ready: bool | None = None
    max_batch_size: int | None = None
    inputs: list[TensorInfo] = Field(default_factory=list)
    outputs: list[TensorInfo] = Field(default_factory=list)


class ModelsInfo(_Model):
    """Answer of ``GET /v1/models``: what answers the cases."""

    engine: str
    model_version: str
    ensemble: str | None = None
    input_size: int | None = None
    threshold: float | None = None
    indeterminate_band: tuple[float, float] | None = None
    models: list[ModelInfo] = Field(default_factory=list)


def _float32(value: float) -> float:
    """``value`` rounded to the nearest float32 (no numpy: the client stays light)."""
    return float(struct.unpack("<f", struct.pack("<f", value))[0])


def as_dict(model: BaseModel) -> dict[str, Any]:
    """JSON-ready dict of a result, extra fields included."""
    return model.model_dump(mode="json")


#: States of a job (``GET /v1/studies/{id}``); ``done`` and ``failed`` are final.
JOB_STATUSES = ("queued", "running", "done", "failed")


class JobError(_Model):
    """Why a job failed: the code and detail ``/v1/cases`` would give (``reasons`` for a study without CT)."""

    code: str
    detail: str
    reasons: list[dict[str, Any]] | None = None


class JobDelivery(_Model):
    """Where a job's DICOM results (SEG, SR, key image) stand on their way to the service's PACS."""

    status: str
    attempts: int = 0
    delivered_at: str | None = None
    error: JobError | None = None


class JobSummary(_Model):
    """A job as listed (``list_jobs``): its state, without the result."""

    id: str
    status: str
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    attempts: int = 0
    error: JobError | None = None
    #: How the study arrived: ``upload``, ``dicom`` (C-STORE) or ``dicomweb`` (STOW-RS).
    origin: str = "upload"
    #: The results' delivery to the PACS, or None when they are not sent anywhere.
    delivery: JobDelivery | None = None

    @property
    def finished(self) -> bool:
        """Whether the job is ``done`` or ``failed`` (it will not change any more)."""
        return self.status in ("done", "failed")


class Job(JobSummary):
    """A study queued with ``submit`` (``POST /v1/studies``); ``result`` once ``status`` is ``done``.

    The answer to ``submit`` carries only ``id``, ``status`` and ``created_at``; ``get_job`` and ``wait``
    fill in the rest.
    """

    result: CaseResult | None = None


class JobPage(_Model):
    """``GET /v1/studies``: jobs newest first (no results); ``next_cursor`` for the next page, or None."""

    items: list[JobSummary]
    next_cursor: str | None = None
