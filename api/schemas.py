"""Response bodies of the HTTP API, field for field as docs/DESIGN.md fixes them.

Additions beyond the contract (never renames): ``indeterminate_band``, ``warnings``, ``series.passed_over``,
each slice's ``hemorrhage_volume_ml``, and ``overlays`` and ``seg`` on request. ``subtypes`` (case and
slice) and ``uncertainty`` are the contract's names (docs/DESIGN.md). Errors are :class:`ErrorBody`.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from ich import spec


class ModelScores(BaseModel):
    """One number per base model, keyed as ``ich.spec.MODEL_KEYS``."""

    model_config = ConfigDict(frozen=True)

    all: float
    subtype: float
    sdh: float
    sah: float
    small: float

    @classmethod
    def from_mapping(cls, values: dict[str, float]) -> ModelScores:
        """Build from a ``{key: value}`` mapping holding every key of ``spec.MODEL_KEYS``."""
        return cls(**{key: float(values[key]) for key in spec.MODEL_KEYS})


class Subtypes(BaseModel):
    """Probability of each hemorrhage subtype (``ich.subtypes``); ``null`` for a subtype the model does not
    measure (too few cases to fit it: the model card says which)."""

    epidural: float | None = None
    subdural: float | None = None
    subarachnoid: float | None = None
    intraparenchymal: float | None = None
    intraventricular: float | None = None


class SkippedFile(BaseModel):
    """A zip member that was not used, and why (non-DICOM, unreadable, duplicate...)."""

    file: str
    reason: str


class PassedOverSeries(BaseModel):
    """A series of the study that was not analysed, and why (localizer, not CT, fewer slices...)."""

    series_instance_uid: str
    reason: str
    modality: str | None = None
    slices: int | None = None


class SeriesInfo(BaseModel):
    """The series that was analysed."""

    series_instance_uid: str
    slices_used: int
    slice_thickness_mm: float = Field(description="Spacing of slice centres, else SliceThickness.")
    pixel_spacing_mm: tuple[float, float] = Field(description="(row, column) spacing in mm.")
    skipped: list[SkippedFile] = Field(default_factory=list)
    passed_over: list[PassedOverSeries] = Field(default_factory=list)


class SliceResult(BaseModel):
    """One slice, in order along the slice normal (``index`` is 0-based, from the first position)."""

    index: int
    sop_instance_uid: str
    probability: float
    model_probabilities: ModelScores
    weights: ModelScores
    hemorrhage_volume_ml: float = 0.0
    subtypes: Subtypes | None = Field(
        default=None, description="Subtype probabilities on this slice; null when the model has no subtypes."
    )


class Overlay(BaseModel):
    """A PNG preview of one slice with the lesion outlined (``?include=overlays``)."""

    index: int
    sop_instance_uid: str
    media_type: str = "image/png"
    data_base64: str


class SegObject(BaseModel):
    """The lesion mask as a DICOM Segmentation over the analysed series (``?include=seg``)."""

    media_type: str = "application/dicom"
    series_instance_uid: str
    sop_instance_uid: str
    frames: int
    data_base64: str


class Timing(BaseModel):
    """Milliseconds per stage; ``total`` is the whole request including reading the upload."""

    decode: float
    preprocess: float
    inference: float
    aggregate: float
    total: float


class CaseResult(BaseModel):
    """The result of ``POST /v1/cases``."""

    case_id: UUID
    model_version: str
    engine: str
    ich_probability: float
    #: The paper's case score (highest slice probability), beside the lesion-based ``ich_probability``.
    max_slice_probability: float
    ich_detected: bool
    threshold: float
    indeterminate: bool
    indeterminate_band: tuple[float, float]
    hemorrhage_volume_ml: float
    series: SeriesInfo
    slices: list[SliceResult]
    timing_ms: Timing
    warnings: list[str] = Field(default_factory=list)
    uncertainty: float | None = Field(
        default=None,
        description="Spread (0-0.5) of the five base models' peak probabilities on the lesion that decided "
        "the case; high: the models disagree and the call deserves a look.",
    )
    subtypes: Subtypes | None = Field(
        default=None, description="Subtype probabilities of the case; null when the model has no subtypes."
    )
    overlays: list[Overlay] | None = Field(
        default=None, description="Only with ?include=overlays: up to 3 slices with the most certain lesion."
    )
    seg: SegObject | None = Field(
        default=None, description="Only with ?include=seg: the mask as a DICOM SEG; null when no lesion."
    )


class ErrorBody(BaseModel):
    """Every error answer: a stable machine code, a human sentence and the request id to quote."""

    code: str
    detail: str
    request_id: str
    reasons: list[Any] | None = None


class HealthStatus(BaseModel):
    """``GET /healthz``: the process is alive."""

    status: str


class ReadyStatus(BaseModel):
    """``GET /readyz``: the engine answers."""

    status: str
    engine: str
    model_version: str | None = None


class TensorInfo(BaseModel):
    """A model input or output; ``shape`` excludes the batch dimension."""

    name: str
    datatype: str
    shape: list[int]


class ModelInfo(BaseModel):
    """One model of the ensemble as the engine reports it (``api.engines.base.describe_model``)."""

    name: str
    version: str | None = None
    versions: list[str] = Field(default_factory=list)
    platform: str | None = None
    ready: bool | None = None
    max_batch_size: int | None = None
    inputs: list[TensorInfo] = Field(default_factory=list)
    outputs: list[TensorInfo] = Field(default_factory=list)


class ModelsResponse(BaseModel):
    """``GET /v1/models``: what answers the cases."""

    engine: str
    model_version: str
    ensemble: str = spec.ENSEMBLE_MODEL
    input_size: int
    threshold: float
    indeterminate_band: tuple[float, float]
    models: list[ModelInfo]


#: OpenAPI documentation of the error answers, shared by the routes.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Not a readable zip."},
    401: {"model": ErrorBody, "description": "Missing or invalid API key (when keys are configured)."},
    408: {"model": ErrorBody, "description": "The upload came too slowly (ICH_UPLOAD_TIMEOUT_S)."},
    413: {"model": ErrorBody, "description": "Upload, uncompressed size or member count too large."},
    415: {"model": ErrorBody, "description": "Neither application/zip nor multipart/form-data."},
    422: {"model": ErrorBody, "description": "No usable CT series (or above ICH_MAX_SLICES); see `reasons`."},
    503: {"model": ErrorBody, "description": "Engine unavailable; retry after Retry-After seconds."},
}
