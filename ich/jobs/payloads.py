"""Where the uploaded zips live until the retention purge: files in the data directory, or the database.

With SQLite (one replica) each upload is a file ``<data dir>/studies/<job id>.zip``, written to a temporary
name, fsynced, renamed into place and its directory fsynced, all before the job row is committed and the 202
is sent: a crash leaves either no file or a complete one. With PostgreSQL the gateway replicas share no disk,
so the upload is a row of ``ich_job_payloads`` written in the job's own transaction (PostgreSQL fsyncs its
WAL at commit). A job's payload is deleted with the job.
"""

from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path
from typing import Protocol

from sqlalchemy import Connection, delete, insert, select

from ich.durable_file import write_durably
from ich.jobs import schema

_JOB_FILE = re.compile(r"^[0-9a-f-]{36}\.zip$")


class Payloads(Protocol):
    """The upload store the :class:`ich.jobs.JobStore` writes through."""

    def stage(self, job_id: str, data: bytes) -> None:
        """Make ``data`` durable before the job's transaction (files); may do nothing."""

    def put(self, connection: Connection, job_id: str, data: bytes) -> None:
        """Write ``data`` within the job's transaction (database); may do nothing."""

    def discard(self, job_id: str) -> None:
        """Undo :meth:`stage` when the job's transaction did not commit."""

    def get(self, connection: Connection, job_id: str) -> bytes | None:
        """The upload, or None when it is gone (the job was deleted)."""

    def delete(self, connection: Connection, job_id: str) -> None:
        """Remove the upload (with its job)."""


class FilePayloads:
    """Uploads as files under ``root`` (``<ICH_DATA_DIR>/studies``), written atomically and fsynced."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def path_of(self, job_id: str) -> Path:
        """The file of one job's upload."""
        name = f"{job_id}.zip"
        if not _JOB_FILE.match(name):
            raise ValueError("not a job id")
        return self.root / name

    def stage(self, job_id: str, data: bytes) -> None:
        write_durably(self.path_of(job_id), data)

    def put(self, connection: Connection, job_id: str, data: bytes) -> None:
        del connection, job_id, data

    def discard(self, job_id: str) -> None:
        self.path_of(job_id).unlink(missing_ok=True)

    def get(self, connection: Connection, job_id: str) -> bytes | None:
        del connection
        try:
            return self.path_of(job_id).read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, connection: Connection, job_id: str) -> None:
        del connection
        self.path_of(job_id).unlink(missing_ok=True)

    def orphans(self, known: set[str], older_than_s: float) -> list[Path]:
        """Files without a job (a crash between the file and the commit), older than ``older_than_s``."""
        cutoff = time.time() - older_than_s
        found = []
        for path in self.root.iterdir():
            if path.name.startswith("."):
                job_id = path.name[1:].removesuffix(".zip.partial")
            elif _JOB_FILE.match(path.name):
                job_id = path.stem
            else:
                continue
            with contextlib.suppress(FileNotFoundError):
                if job_id not in known and path.stat().st_mtime < cutoff:
                    found.append(path)
        return found


class DatabasePayloads:
    """Uploads as rows of ``ich_job_payloads``, in the job's own transaction."""

    def stage(self, job_id: str, data: bytes) -> None:
        del job_id, data

    def put(self, connection: Connection, job_id: str, data: bytes) -> None:
        connection.execute(insert(schema.payloads).values(job_id=job_id, data=data))

    def discard(self, job_id: str) -> None:
        del job_id

    def get(self, connection: Connection, job_id: str) -> bytes | None:
        row = connection.execute(
            select(schema.payloads.c.data).where(schema.payloads.c.job_id == job_id)
        ).first()
        return None if row is None else bytes(row[0])

    def delete(self, connection: Connection, job_id: str) -> None:
        connection.execute(delete(schema.payloads).where(schema.payloads.c.job_id == job_id))
