"""Gateway settings, read from ``ICH_``-prefixed environment variables.

One :class:`Settings` object is built per process through the cached :func:`get_settings`; tests pass their
own ``Settings`` to ``create_app`` instead. Limits are settings (not constants) because studies vary: a
0.625 mm whole-head acquisition is far larger than a 5 mm routine head CT.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: The repository's own ``model_repository/`` (the shipped weights), next to the ``api`` package.
DEFAULT_MODEL_REPOSITORY = Path(__file__).resolve().parent.parent / "model_repository"

#: Where the job store keeps its SQLite database and the uploaded studies by default (``ICH_DATA_DIR``).
DEFAULT_DATA_DIR = Path(__file__).resolve().parent.parent / "data"

MIB = 1024 * 1024


def _default_threads() -> int:
    return max(2, min(4, os.cpu_count() or 1))


class Settings(BaseSettings):
    """Everything the gateway reads from its environment (the README's settings table)."""

    # env_ignore_empty: ICH_API_KEYS_FILE= (set but empty, as templated manifests leave it) means unset.
    model_config = SettingsConfigDict(env_prefix="ICH_", extra="ignore", frozen=True, env_ignore_empty=True)

    #: Which engine runs the ensemble: in-process onnxruntime (``embedded``) or a Triton server.
    engine: Literal["embedded", "triton"] = "embedded"
    #: Triton's gRPC endpoint, ``host:port``.
    triton_url: str = "127.0.0.1:8001"
    #: Timeout of one Triton inference call, seconds.
    triton_timeout_s: float = Field(default=30.0, gt=0)
    #: Model repository read by the embedded engine (default: the shipped ``model_repository/``).
    model_repository: Path = DEFAULT_MODEL_REPOSITORY
    #: Address and port ``ich-serve`` binds.
    host: str = "0.0.0.0"
    port: int = Field(default=8080, ge=1, le=65535)
    #: Largest accepted request body in bytes (413 above), enforced while the body streams in.
    max_upload_bytes: int = Field(default=512 * MIB, gt=0)
    #: Largest total uncompressed size of the zip's members in bytes (413 above).
    max_uncompressed_bytes: int = Field(default=2048 * MIB, gt=0)
    #: Most members a zip may hold (413 above).
    max_members: int = Field(default=5000, gt=0)
    #: Case probability at or above which ICH is called; unset: the operating point stored with the weights
    #: (``model_repository/case_model.json``, see api.decision), 0.5 for a repository without one.
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    #: Model input size; when set it must match the model repository (a start-up error otherwise).
    input_size: int | None = Field(default=None, gt=0)
    #: File of SHA-256 hex digests of the accepted API keys, one per line; unset: no authentication.
    api_keys_file: Path | None = None
    #: Log level of the gateway and uvicorn.
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    #: uvicorn worker processes (each loads its own engine; scale with replicas first).
    workers: int = Field(default=1, ge=1)
    #: Threads per process for blocking work (unzip, decode, preprocess, aggregate).
    threads: int = Field(default_factory=_default_threads, ge=1)
    #: onnxruntime intra-op threads of the embedded engine (unset: onnxruntime's default).
    intra_op_threads: int | None = Field(default=None, ge=1)
    #: Slices per onnxruntime run of the embedded engine (at most the repository's max_batch_size). Its
    #: memory arena grows to the largest batch's activations: 4 keeps it near 1 GiB at 160 px, where 16
    #: (the GPU batch) holds about 4 GiB, and on CPU the small batch is no slower.
    embedded_batch_size: int = Field(default=4, ge=1)
    #: Cases analysed at once per process, counted once the upload is in; more wait in line (each holds its
    #: upload and volume in memory).
    max_inflight_cases: int = Field(default=8, ge=1)
    #: Cases whose upload is in that may wait for a slot (served by whose client was served least recently,
    #: then by arrival); past it the last of them gets 503 "busy". Their bodies still count against
    #: ``max_upload_buffer_bytes`` while they wait.
    max_waiting_cases: int = Field(default=16, ge=0)
    #: Longest wait for a slot, seconds; 503 "busy" with Retry-After after it.
    case_wait_s: float = Field(default=60.0, gt=0)
    #: Most slices in the analysed series; a series above it is passed over (422 when nothing else fits).
    max_slices: int = Field(default=400, ge=1)
    #: Longest silence while an upload streams in, seconds, and the grace before its rate counts (408 after).
    upload_timeout_s: float = Field(default=10.0, gt=0)
    #: Slowest average upload rate accepted after the grace, bytes per second (408 below).
    upload_min_bytes_per_s: int = Field(default=65536, ge=0)
    #: Bytes of uploads being received at once, all requests together; an upload that would pass it gets
    #: 503 "busy" (so many fast senders cannot fill the memory before any of them holds a slot).
    max_upload_buffer_bytes: int = Field(default=1024 * MIB, gt=0)
    #: Seconds announced in Retry-After when the engine is unavailable.
    retry_after_s: int = Field(default=5, ge=1)
    #: Durable jobs (``/v1/studies``): the SQLite database and the uploads live here unless
    #: ``database_url`` names a PostgreSQL (then the uploads live in it too).
    data_dir: Path = DEFAULT_DATA_DIR
    #: ``postgresql://user:password@host:5432/db`` when several replicas share the queue; unset: SQLite.
    database_url: str | None = Field(default=None, repr=False)
    #: Job workers inside each ``ich-serve`` process (0: this process only accepts jobs).
    job_workers: int = Field(default=1, ge=0)
    #: A running job's lease, seconds: renewed while it runs; a dead worker's job is taken again after it.
    job_lease_s: float = Field(default=30.0, gt=0)
    #: Attempts of one job before it is ``failed`` (engine unavailable mid-analysis, a worker lost).
    job_max_attempts: int = Field(default=5, ge=1)
    #: First retry delay after a transient failure, seconds; doubled per attempt, at most 300.
    job_retry_backoff_s: float = Field(default=5.0, ge=0)
    #: Jobs queued or running at most; more uploads get 429 with Retry-After.
    max_queued_jobs: int = Field(default=1000, ge=1)
    #: Studies and their results are deleted this many hours after they were accepted.
    retention_hours: float = Field(default=72.0, gt=0)
    #: The DICOM node (``api.dicom_node``): a Storage SCP on this port inside ``ich-serve``; unset: none
    #: (STOW-RS at ``/dicomweb/studies`` works either way).
    dicom_port: int | None = Field(default=None, ge=1, le=65535)
    #: Address the Storage SCP binds.
    dicom_host: str = "0.0.0.0"
    #: The SCP's own AE title (what senders call), also the calling AE title when results are sent back.
    dicom_ae_title: str = "ICH"
    #: Calling AE titles accepted, comma-separated; ``*`` accepts any. Required with ``dicom_port``.
    dicom_allowed_aes: str | None = None
    #: A study is complete when none of its instances arrived for this long, seconds.
    dicom_study_quiet_s: float = Field(default=10.0, gt=0)
    #: Associations served at once; more are rejected (the sender retries).
    dicom_max_associations: int = Field(default=8, ge=1)
    #: Bytes one association may send; beyond it the association is aborted.
    dicom_max_association_bytes: int = Field(default=4096 * MIB, gt=0)
    #: Largest instance as sent, and largest pixel data it may declare or a deflated dataset may inflate to.
    dicom_max_instance_bytes: int = Field(default=64 * MIB, gt=0)
    #: Studies being received at once (C-STORE and STOW-RS); instances of a further study are refused.
    dicom_max_pending_studies: int = Field(default=20, ge=1)
    #: Where finished jobs' SEG, SR and key image go: ``dicom://AE@host:port`` (C-STORE) or an
    #: ``http(s)://`` DICOMweb base URL (STOW-RS); unset: nowhere (they stay downloadable).
    results_destination: str | None = Field(default=None, repr=False)
    #: Delivery attempts before a job's delivery is ``failed``.
    results_max_attempts: int = Field(default=8, ge=1)
    #: First delay after a failed delivery, seconds; doubled per attempt, at most 600.
    results_retry_backoff_s: float = Field(default=10.0, ge=0)
    #: Network timeout of one delivery (connect, each response), seconds.
    results_timeout_s: float = Field(default=30.0, gt=0)

    @field_validator("dicom_ae_title")
    @classmethod
    def _check_ae_title(cls, value: str) -> str:
        # PS3.5: AE titles are at most 16 characters of the default repertoire, no backslash or control.
        if not value.strip() or len(value) > 16 or not all(" " <= c <= "~" and c != "\\" for c in value):
            raise ValueError("an AE title is 1-16 printable ASCII characters without a backslash")
        return value.strip()

    @property
    def dicom_allowed_ae_titles(self) -> tuple[str, ...]:
        """``ICH_DICOM_ALLOWED_AES`` as a tuple (``("*",)`` accepts any calling AE title)."""
        return tuple(part.strip() for part in (self.dicom_allowed_aes or "").split(",") if part.strip())

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_log_level(cls, value: object) -> object:
        # People write LOG_LEVEL=INFO; uvicorn and logging both take the lower-case names.
        return value.lower() if isinstance(value, str) else value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once from the environment."""
    return Settings()
