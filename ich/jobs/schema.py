"""The queue's tables (SQLAlchemy Core); the migrations in ``migrations/versions`` create exactly these.

Times are UNIX seconds (float) rather than SQL timestamps: SQLite has no time zone type, and comparing
numbers (leases, backoff, retention) behaves the same in both databases. ``seq`` orders the listing
(newest first) and is the paging cursor; ``id`` is the public, unguessable id.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

jobs = Table(
    "ich_jobs",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(36), nullable=False, unique=True),
    Column("status", String(16), nullable=False),
    Column("idempotency_key", String(255), nullable=True, unique=True),
    Column("payload_sha256", String(64), nullable=False),
    Column("payload_bytes", Integer, nullable=False),
    Column("options", String(255), nullable=False, default=""),
    Column("created_at", Float, nullable=False),
    Column("available_at", Float, nullable=False),
    Column("started_at", Float, nullable=True),
    Column("finished_at", Float, nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("lease_owner", String(128), nullable=True),
    Column("lease_until", Float, nullable=True),
    Column("error", Text, nullable=True),
    Column("result", Text, nullable=True),
    # Where the study came from (``upload``, ``dicom``: C-STORE, ``dicomweb``: STOW-RS) and, for studies
    # whose results go back to a PACS, the delivery: ``pending`` (also while the job runs), ``delivered``,
    # ``failed``; NULL when nothing is to be delivered.
    Column("origin", String(16), nullable=False, server_default="upload"),
    Column("delivery_status", String(16), nullable=True),
    Column("delivery_attempts", Integer, nullable=False, server_default="0"),
    Column("delivery_available_at", Float, nullable=True),
    Column("delivered_at", Float, nullable=True),
    Column("delivery_error", Text, nullable=True),
    Index("ix_ich_jobs_status_available", "status", "available_at"),
    Index("ix_ich_jobs_created", "created_at"),
    Index("ix_ich_jobs_delivery", "delivery_status", "delivery_available_at"),
)

#: The uploads, when they live in the database (PostgreSQL: every replica reads what any replica stored).
payloads = Table(
    "ich_job_payloads",
    metadata,
    Column("job_id", String(36), ForeignKey("ich_jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("data", LargeBinary, nullable=False),
)

#: A finished job's DICOM results (``seg``, ``sr``, ``key-images``), deleted with the job.
outputs = Table(
    "ich_job_outputs",
    metadata,
    Column("job_id", String(36), ForeignKey("ich_jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("kind", String(16), primary_key=True),
    Column("data", LargeBinary, nullable=False),
)
