"""The job store: enqueue, look up, page, delete, claim under a lease, finish, retry, purge.

Every method is one short transaction (SQLAlchemy Core, the same statements on SQLite and PostgreSQL) and
blocks: async callers run it in a thread. A claim takes the oldest job that is ``queued`` and due, or
``running`` with an expired lease (its worker died); on PostgreSQL the candidate row is locked with
``FOR UPDATE SKIP LOCKED`` so replicas claim different jobs without waiting on each other, on SQLite the
transaction holds the database's write lock (``BEGIN IMMEDIATE``). Every later write of a running job is
fenced by ``lease_owner``: a worker that lost its lease (it stalled past it and another worker took the job)
can neither finish nor fail the job, so each job gets exactly one result.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import Connection, Engine, and_, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from ich.jobs import schema
from ich.jobs.errors import IdempotencyConflictError
from ich.jobs.payloads import FilePayloads, Payloads

QUEUED: Final = "queued"
RUNNING: Final = "running"
DONE: Final = "done"
FAILED: Final = "failed"
#: The job states of ``GET /v1/studies/{id}``, in lifecycle order.
STATUSES: Final[tuple[str, ...]] = (QUEUED, RUNNING, DONE, FAILED)
#: Upload files without a job row are swept once this old (a crash between the file and the commit).
ORPHAN_AGE_S: Final = 3600.0
#: Where a study came from: ``POST /v1/studies``, the Storage SCP (C-STORE), STOW-RS.
ORIGINS: Final[tuple[str, ...]] = ("upload", "dicom", "dicomweb")
#: States of a job's results delivery (``delivery.status``).
DELIVERY_PENDING: Final = "pending"
DELIVERED: Final = "delivered"
DELIVERY_FAILED: Final = "failed"

_jobs = schema.jobs
_outputs = schema.outputs
_SUMMARY_COLUMNS = [c for c in _jobs.c if c.name != "result"]


@dataclass(frozen=True)
class JobError:
    """Why a job failed: the code and detail ``/v1/cases`` would give, and its ``reasons`` (422)."""

    code: str
    detail: str
    reasons: tuple[dict[str, str], ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "detail": self.detail}
        if self.reasons:
            out["reasons"] = [dict(r) for r in self.reasons]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobError:
        reasons = data.get("reasons")
        return cls(
            str(data["code"]), str(data["detail"]), tuple(dict(r) for r in reasons) if reasons else None
        )


@dataclass(frozen=True)
class Delivery:
    """Where a job's results stand on their way to the PACS (``ICH_RESULTS_DESTINATION``)."""

    status: str
    attempts: int
    delivered_at: float | None
    error: JobError | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "attempts": self.attempts,
            "delivered_at": self.delivered_at,
            "error": self.error.to_dict() if self.error else None,
        }


@dataclass(frozen=True)
class JobOutcome:
    """What a pipeline may return instead of the bare result: the result and the job's DICOM outputs.

    Attributes:
        result: the JSON-ready result.
        outputs: encoded DICOM objects by kind (``seg``, ``sr``, ``key-images``), stored with the result.
    """

    result: dict[str, Any]
    outputs: Mapping[str, bytes]


@dataclass(frozen=True)
class PendingDelivery:
    """A done job whose results are to be sent now, with them."""

    id: str
    attempts: int
    outputs: dict[str, bytes]


@dataclass(frozen=True)
class Job:
    """One study's job as stored; ``result`` is None in listings and until the job is done."""

    id: str
    status: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    attempts: int
    options: tuple[str, ...]
    error: JobError | None
    result: dict[str, Any] | None
    payload_sha256: str
    origin: str = "upload"
    delivery: Delivery | None = None


@dataclass(frozen=True)
class ClaimedJob:
    """A job a worker now holds, with its upload."""

    id: str
    attempts: int
    created_at: float
    started_at: float
    options: tuple[str, ...]
    data: bytes


@dataclass(frozen=True)
class JobPage:
    """One page of ``list``: newest first; ``next_cursor`` is None on the last page."""

    jobs: list[Job]
    next_cursor: str | None


def _encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"s{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The position a cursor of :meth:`JobStore.list` stands for.

    Raises:
        ValueError: not a cursor this store made.
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not raw.startswith("s") or not raw[1:].isdigit():
            raise ValueError
        return int(raw[1:])
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise ValueError("not a valid cursor") from exc


def _options(raw: str) -> tuple[str, ...]:
    return tuple(part for part in raw.split(",") if part)


def _delivery(m: Mapping[str, Any]) -> Delivery | None:
    if m["delivery_status"] is None:
        return None
    error = m["delivery_error"]
    return Delivery(
        status=m["delivery_status"],
        attempts=int(m["delivery_attempts"]),
        delivered_at=m["delivered_at"],
        error=JobError.from_dict(json.loads(error)) if error else None,
    )


def _job(row: Any, *, with_result: bool) -> Job:
    m = row._mapping
    error = m["error"]
    result = m["result"] if with_result else None
    return Job(
        id=m["id"],
        status=m["status"],
        created_at=float(m["created_at"]),
        started_at=m["started_at"],
        finished_at=m["finished_at"],
        attempts=int(m["attempts"]),
        options=_options(m["options"]),
        error=JobError.from_dict(json.loads(error)) if error else None,
        result=json.loads(result) if result else None,
        payload_sha256=m["payload_sha256"],
        origin=m["origin"],
        delivery=_delivery(m),
    )


def _new_job_row(
    job_id: str,
    data: bytes,
    digest: str,
    options: Sequence[str],
    idempotency_key: str | None,
    origin: str,
    deliver: bool,
    error: JobError | None,
    now: float,
) -> dict[str, Any]:
    """The row of a job just submitted: queued, or failed at once with ``error``; delivery pending if so."""
    queued = error is None
    return {
        "id": job_id,
        "status": QUEUED if queued else FAILED,
        "idempotency_key": idempotency_key,
        "payload_sha256": digest,
        "payload_bytes": len(data),
        "options": ",".join(sorted(set(options))),
        "created_at": now,
        "available_at": now,
        "finished_at": None if queued else now,
        "error": None if error is None else json.dumps(error.to_dict()),
        "attempts": 0,
        "origin": origin,
        "delivery_status": DELIVERY_PENDING if deliver and queued else None,
        "delivery_available_at": now if deliver and queued else None,
    }


class JobStore:
    """The durable queue over one SQLAlchemy engine and one upload store.

    Args:
        engine: from :func:`ich.jobs.open_database` (migrated).
        payloads: where uploads live (files with SQLite, the database with PostgreSQL).
        clock: UNIX seconds now (tests move it).
    """

    def __init__(self, engine: Engine, payloads: Payloads, *, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.payloads = payloads
        self.clock = clock
        self._skip_locked = engine.dialect.name == "postgresql"

    # --- the doors: enqueue and look up ---------------------------------------------------------------

    def submit(
        self,
        data: bytes,
        *,
        options: Sequence[str] = (),
        idempotency_key: str | None = None,
        origin: str = "upload",
        deliver: bool = False,
        error: JobError | None = None,
    ) -> tuple[Job, bool]:
        """Store the upload durably and enqueue it; returns the job and whether it is new.

        With ``idempotency_key``, a key already stored returns its job (``False``) and stores nothing.

        Args:
            data: the zipped study.
            options: the pipeline's options (``?include=``).
            idempotency_key: at most one job per key.
            origin: the door it came through (one of ``ORIGINS``).
            deliver: send the results to the PACS once the job is done (delivery ``pending``).
            error: store the study as ``failed`` at once with this error instead of queuing it (a study the
                DICOM node received only in part: kept, listed, never analysed).

        Raises:
            IdempotencyConflictError: the key names a job with a different upload.
            ValueError: an unknown origin.
        """
        if origin not in ORIGINS:
            raise ValueError(f"unknown origin {origin!r}; known: {', '.join(ORIGINS)}")
        digest = hashlib.sha256(data).hexdigest()
        if idempotency_key is not None:
            existing = self._by_key(idempotency_key, digest)
            if existing is not None:
                return existing, False
        job_id = str(uuid.uuid4())
        now = self.clock()
        self.payloads.stage(job_id, data)
        try:
            with self.engine.begin() as connection:
                row = _new_job_row(
                    job_id, data, digest, options, idempotency_key, origin, deliver, error, now
                )
                connection.execute(insert(_jobs).values(**row))
                self.payloads.put(connection, job_id, data)
        except IntegrityError:
            self.payloads.discard(job_id)
            # Two uploads with one key at once: the other committed first, and its job is the answer.
            existing = self._by_key(idempotency_key, digest) if idempotency_key is not None else None
            if existing is None:
                raise
            return existing, False
        except BaseException:
            self.payloads.discard(job_id)
            raise
        job = self.get(job_id)
        assert job is not None
        return job, True

    def find_by_key(self, key: str) -> Job | None:
        """The job an ``Idempotency-Key`` names (without its result), or None."""
        with self.engine.connect() as connection:
            row = connection.execute(select(*_SUMMARY_COLUMNS).where(_jobs.c.idempotency_key == key)).first()
        return None if row is None else _job(row, with_result=False)

    def _by_key(self, key: str, digest: str) -> Job | None:
        job = self.find_by_key(key)
        if job is None:
            return None
        if job.payload_sha256 != digest:
            raise IdempotencyConflictError(job.id)
        return job

    def get(self, job_id: str) -> Job | None:
        """The job with its result, or None for an unknown (or deleted, or purged) id."""
        with self.engine.connect() as connection:
            row = connection.execute(select(_jobs).where(_jobs.c.id == job_id)).first()
        return None if row is None else _job(row, with_result=True)

    def list(self, *, status: str | None = None, limit: int = 50, cursor: str | None = None) -> JobPage:
        """Jobs newest first, without results, ``limit`` at a time.

        Raises:
            ValueError: an unknown ``status``, a ``limit`` below 1, or a cursor this store did not make.
        """
        if status is not None and status not in STATUSES:
            raise ValueError(f"unknown status {status!r}; known: {', '.join(STATUSES)}")
        if limit < 1:
            raise ValueError("limit must be at least 1")
        query = select(*_SUMMARY_COLUMNS).order_by(_jobs.c.seq.desc()).limit(limit + 1)
        if status is not None:
            query = query.where(_jobs.c.status == status)
        if cursor is not None:
            query = query.where(_jobs.c.seq < decode_cursor(cursor))
        with self.engine.connect() as connection:
            rows = connection.execute(query).all()
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = _encode_cursor(int(rows[-1]._mapping["seq"])) if more and rows else None
        return JobPage([_job(r, with_result=False) for r in rows], next_cursor)

    def delete(self, job_id: str) -> bool:
        """Remove the job, its result and its upload; False when there was none."""
        with self.engine.begin() as connection:
            self.payloads.delete(connection, job_id)
            removed = connection.execute(delete(_jobs).where(_jobs.c.id == job_id)).rowcount
        return bool(removed)

    def counts(self) -> dict[str, int]:
        """Jobs per status (every status present, zeros included)."""
        with self.engine.connect() as connection:
            rows = connection.execute(select(_jobs.c.status, func.count()).group_by(_jobs.c.status)).all()
        found = {str(status): int(n) for status, n in rows}
        return {status: found.get(status, 0) for status in STATUSES}

    def active_count(self) -> int:
        """Jobs waiting or running: what the queue-depth limit compares."""
        with self.engine.connect() as connection:
            n = connection.execute(
                select(func.count()).select_from(_jobs).where(_jobs.c.status.in_((QUEUED, RUNNING)))
            ).scalar_one()
        return int(n)

    def oldest_queued_age(self) -> float:
        """Seconds the oldest queued job has waited since it was accepted (0 with none)."""
        with self.engine.connect() as connection:
            oldest = connection.execute(
                select(func.min(_jobs.c.created_at)).where(_jobs.c.status == QUEUED)
            ).scalar_one()
        return 0.0 if oldest is None else max(0.0, self.clock() - float(oldest))

    # --- the workers: claim, renew, finish ------------------------------------------------------------

    def _claimable(self, now: float) -> Any:
        return or_(
            and_(_jobs.c.status == QUEUED, _jobs.c.available_at <= now),
            and_(_jobs.c.status == RUNNING, _jobs.c.lease_until < now),
        )

    def claim(self, owner: str, *, lease_s: float, max_attempts: int) -> ClaimedJob | None:
        """Take the oldest due job for ``owner`` until ``now + lease_s``; None when nothing is due.

        A job whose worker died with it for the ``max_attempts``-th time is failed (``worker_lost``) rather
        than taken again, so a study that kills its worker cannot loop forever.
        """
        while True:
            now = self.clock()
            with self.engine.begin() as connection:
                query = select(_jobs.c.id, _jobs.c.status, _jobs.c.attempts).where(self._claimable(now))
                query = query.order_by(_jobs.c.seq).limit(1)
                if self._skip_locked:
                    query = query.with_for_update(skip_locked=True)
                row = connection.execute(query).first()
                if row is None:
                    return None
                job_id, status, attempts = row
                if status == RUNNING and attempts >= max_attempts:
                    error = JobError(
                        "worker_lost",
                        f"the analysis was interrupted {attempts} times (its worker stopped); giving up",
                    )
                    self._finish(connection, job_id, None, FAILED, now, error=error)
                    continue
                connection.execute(
                    update(_jobs)
                    .where(_jobs.c.id == job_id)
                    .values(
                        status=RUNNING,
                        attempts=_jobs.c.attempts + 1,
                        lease_owner=owner,
                        lease_until=now + lease_s,
                        started_at=now,
                    )
                )
                claimed = connection.execute(
                    select(_jobs.c.attempts, _jobs.c.created_at, _jobs.c.options).where(_jobs.c.id == job_id)
                ).one()
                data = self.payloads.get(connection, job_id)
            if data is None:  # the upload vanished (deleted by hand): nothing to analyse, ever
                with self.engine.begin() as connection:
                    error = JobError("payload_missing", "the stored study is gone")
                    self._finish(connection, job_id, owner, FAILED, now, error=error)
                continue
            return ClaimedJob(
                id=job_id,
                attempts=int(claimed.attempts),
                created_at=float(claimed.created_at),
                started_at=now,
                options=_options(claimed.options),
                data=data,
            )

    def _fence(self, job_id: str, owner: str | None) -> Any:
        condition = and_(_jobs.c.id == job_id, _jobs.c.status == RUNNING)
        return condition if owner is None else and_(condition, _jobs.c.lease_owner == owner)

    def _finish(
        self,
        connection: Connection,
        job_id: str,
        owner: str | None,
        status: str,
        now: float,
        *,
        error: JobError | None = None,
        result: Mapping[str, Any] | None = None,
    ) -> bool:
        values: dict[str, Any] = {
            "status": status,
            "finished_at": now,
            "lease_owner": None,
            "lease_until": None,
            "error": json.dumps(error.to_dict()) if error else None,
            "result": json.dumps(result, separators=(",", ":")) if result is not None else None,
        }
        if status == FAILED:  # no results, so nothing to deliver
            values["delivery_status"] = None
        return bool(
            connection.execute(update(_jobs).where(self._fence(job_id, owner)).values(**values)).rowcount
        )

    def renew(self, job_id: str, owner: str, *, lease_s: float) -> bool:
        """Extend ``owner``'s lease; False when the job is no longer its own (lost, deleted, purged)."""
        with self.engine.begin() as connection:
            changed = connection.execute(
                update(_jobs).where(self._fence(job_id, owner)).values(lease_until=self.clock() + lease_s)
            ).rowcount
        return bool(changed)

    def complete(
        self,
        job_id: str,
        owner: str,
        result: Mapping[str, Any],
        *,
        outputs: Mapping[str, bytes] | None = None,
    ) -> bool:
        """Store the result (and its DICOM outputs) and mark the job ``done``; False without the lease."""
        with self.engine.begin() as connection:
            now = self.clock()
            if not self._finish(connection, job_id, owner, DONE, now, result=result):
                return False
            for kind, data in (outputs or {}).items():
                connection.execute(insert(_outputs).values(job_id=job_id, kind=kind, data=data))
            # A delivery waits for the job; it becomes due when the results exist.
            connection.execute(
                update(_jobs)
                .where(and_(_jobs.c.id == job_id, _jobs.c.delivery_status == DELIVERY_PENDING))
                .values(delivery_available_at=now)
            )
            return True

    def output(self, job_id: str, kind: str) -> bytes | None:
        """One DICOM output of a done job (``seg``, ``sr``, ``key-images``), or None."""
        with self.engine.connect() as connection:
            row = connection.execute(
                select(_outputs.c.data).where(and_(_outputs.c.job_id == job_id, _outputs.c.kind == kind))
            ).first()
        return None if row is None else bytes(row[0])

    # --- results delivery -----------------------------------------------------------------------------

    def claim_delivery(self, *, lease_s: float) -> PendingDelivery | None:
        """The oldest done job whose delivery is due, held for ``lease_s``; None when none is due.

        The hold is the delivery's own ``available_at`` moved ahead, so a sender that dies is retried when
        it passes. Two senders could still overlap after a stall; that is harmless, because the results'
        UIDs are derived from the job and a PACS stores an instance it already has only once.
        """
        now = self.clock()
        with self.engine.begin() as connection:
            query = (
                select(_jobs.c.id, _jobs.c.delivery_attempts)
                .where(
                    and_(
                        _jobs.c.status == DONE,
                        _jobs.c.delivery_status == DELIVERY_PENDING,
                        _jobs.c.delivery_available_at <= now,
                    )
                )
                .order_by(_jobs.c.seq)
                .limit(1)
            )
            if self._skip_locked:
                query = query.with_for_update(skip_locked=True)
            row = connection.execute(query).first()
            if row is None:
                return None
            job_id, attempts = row
            connection.execute(
                update(_jobs)
                .where(_jobs.c.id == job_id)
                .values(delivery_attempts=_jobs.c.delivery_attempts + 1, delivery_available_at=now + lease_s)
            )
            outputs = {
                str(kind): bytes(data)
                for kind, data in connection.execute(
                    select(_outputs.c.kind, _outputs.c.data).where(_outputs.c.job_id == job_id)
                ).all()
            }
        return PendingDelivery(id=job_id, attempts=int(attempts) + 1, outputs=outputs)

    def _set_delivery(self, job_id: str, **values: Any) -> bool:
        with self.engine.begin() as connection:
            changed = connection.execute(
                update(_jobs)
                .where(and_(_jobs.c.id == job_id, _jobs.c.delivery_status == DELIVERY_PENDING))
                .values(**values)
            ).rowcount
        return bool(changed)

    def delivered(self, job_id: str) -> bool:
        """The results reached the destination."""
        return self._set_delivery(
            job_id, delivery_status=DELIVERED, delivered_at=self.clock(), delivery_error=None
        )

    def retry_delivery(self, job_id: str, error: JobError, *, delay_s: float) -> bool:
        """The delivery failed this time; due again in ``delay_s``."""
        return self._set_delivery(
            job_id,
            delivery_available_at=self.clock() + delay_s,
            delivery_error=json.dumps(error.to_dict()),
        )

    def fail_delivery(self, job_id: str, error: JobError) -> bool:
        """The delivery is given up."""
        return self._set_delivery(
            job_id, delivery_status=DELIVERY_FAILED, delivery_error=json.dumps(error.to_dict())
        )

    def fail(self, job_id: str, owner: str, error: JobError) -> bool:
        """Mark the job ``failed`` with ``error``; False without the lease."""
        with self.engine.begin() as connection:
            return self._finish(connection, job_id, owner, FAILED, self.clock(), error=error)

    def retry_later(self, job_id: str, owner: str, *, delay_s: float) -> bool:
        """Put the job back in the queue, due in ``delay_s``; False without the lease."""
        with self.engine.begin() as connection:
            changed = connection.execute(
                update(_jobs)
                .where(self._fence(job_id, owner))
                .values(
                    status=QUEUED, available_at=self.clock() + delay_s, lease_owner=None, lease_until=None
                )
            ).rowcount
        return bool(changed)

    def release(self, job_id: str, owner: str) -> bool:
        """Give a job back at shutdown, due now, without counting the interrupted attempt."""
        with self.engine.begin() as connection:
            changed = connection.execute(
                update(_jobs)
                .where(self._fence(job_id, owner))
                .values(
                    status=QUEUED,
                    available_at=self.clock(),
                    attempts=_jobs.c.attempts - 1,
                    lease_owner=None,
                    lease_until=None,
                )
            ).rowcount
        return bool(changed)

    # --- retention ------------------------------------------------------------------------------------

    def purge(self, *, older_than_s: float) -> int:
        """Delete every job (any status), result and upload accepted more than ``older_than_s`` ago."""
        cutoff = self.clock() - older_than_s
        with self.engine.begin() as connection:
            ids = list(connection.execute(select(_jobs.c.id).where(_jobs.c.created_at < cutoff)).scalars())
            for job_id in ids:
                self.payloads.delete(connection, job_id)
            if ids:
                connection.execute(delete(_jobs).where(_jobs.c.id.in_(ids)))
        if isinstance(self.payloads, FilePayloads):
            with self.engine.connect() as connection:
                known = set(connection.execute(select(_jobs.c.id)).scalars())
            for path in self.payloads.orphans(known, ORPHAN_AGE_S):
                path.unlink(missing_ok=True)
        return len(ids)
