"""The durable study queue: its store (SQLite or PostgreSQL through SQLAlchemy), its files and its workers.

No web framework here (DESIGN.md): the HTTP gateway and the DICOM node are doors that call
:class:`JobStore` to enqueue, and :class:`WorkerPool` runs the one pipeline function it is given (the gateway
passes the function ``POST /v1/cases`` runs) on each claimed job.
"""

from ich.jobs.database import open_database
from ich.jobs.errors import IdempotencyConflictError, TransientJobError
from ich.jobs.payloads import DatabasePayloads, FilePayloads, Payloads
from ich.jobs.store import (
    ORIGINS,
    STATUSES,
    Delivery,
    Job,
    JobError,
    JobOutcome,
    JobPage,
    JobStore,
    PendingDelivery,
)
from ich.jobs.worker import Analyse, WorkerConfig, WorkerPool, current_job_id

__all__ = [
    "ORIGINS",
    "STATUSES",
    "Analyse",
    "DatabasePayloads",
    "Delivery",
    "FilePayloads",
    "IdempotencyConflictError",
    "Job",
    "JobError",
    "JobOutcome",
    "JobPage",
    "JobStore",
    "Payloads",
    "PendingDelivery",
    "TransientJobError",
    "WorkerConfig",
    "WorkerPool",
    "current_job_id",
    "open_database",
]
