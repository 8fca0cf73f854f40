"""Python SDK for the ICH (intracranial hemorrhage) detection service.

>>> from ich_client import ICHClient                      # doctest: +SKIP
>>> with ICHClient("http://localhost:8080") as client:     # doctest: +SKIP
...     result = client.analyze("path/to/study_folder")
...     print(result.ich_probability, result.ich_detected, result.hemorrhage_volume_ml)

The package imports nothing of the service: it speaks only the HTTP contract (docs/DESIGN.md).
"""

from ich_client.client import DEFAULT_BASE_URL, AsyncICHClient, ICHClient
from ich_client.errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    ICHError,
    InternalServerError,
    JobTimeoutError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitError,
    ServiceUnavailableError,
    UnprocessableStudyError,
    UnsupportedMediaTypeError,
)
from ich_client.models import (
    CaseResult,
    Health,
    Job,
    JobDelivery,
    JobError,
    JobPage,
    JobSummary,
    ModelInfo,
    ModelsInfo,
    ModelValues,
    Overlay,
    SegObject,
    SeriesInfo,
    SkippedFile,
    SliceResult,
    Subtypes,
    TensorInfo,
    Timing,
)
from ich_client.retry import RetryPolicy
from ich_client.study import PackedStudy, StudyInput, pack_study
from ich_client.version import __version__

__all__ = [
    "DEFAULT_BASE_URL",
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncICHClient",
    "AuthenticationError",
    "BadRequestError",
    "CaseResult",
    "ConflictError",
    "Health",
    "ICHClient",
    "ICHError",
    "InternalServerError",
    "Job",
    "JobDelivery",
    "JobError",
    "JobPage",
    "JobSummary",
    "JobTimeoutError",
    "ModelInfo",
    "ModelValues",
    "ModelsInfo",
    "NotFoundError",
    "Overlay",
    "PackedStudy",
    "PayloadTooLargeError",
    "RateLimitError",
    "RetryPolicy",
    "SegObject",
    "SeriesInfo",
    "ServiceUnavailableError",
    "SkippedFile",
    "SliceResult",
    "StudyInput",
    "Subtypes",
    "TensorInfo",
    "Timing",
    "UnprocessableStudyError",
    "UnsupportedMediaTypeError",
    "__version__",
    "pack_study",
]
