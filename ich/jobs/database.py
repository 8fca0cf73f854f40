"""The queue's database: SQLite in the data directory (the default) or PostgreSQL, migrated on open.

SQLite runs in WAL mode with ``synchronous=FULL`` (a committed job survives a power cut) and every
transaction starts with ``BEGIN IMMEDIATE``, which takes the write lock at once: claims can then never race,
and readers and writers wait on ``busy_timeout`` instead of failing on a lock upgrade. PostgreSQL uses
psycopg 3; claims lock rows with ``FOR UPDATE SKIP LOCKED`` (see ``store``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url

from ich.jobs.migrate import upgrade

logger = logging.getLogger(__name__)

#: The SQLite file inside the data directory.
SQLITE_FILE = "ich.sqlite3"
#: How long a SQLite statement waits for the write lock, milliseconds.
SQLITE_BUSY_TIMEOUT_MS = 30_000


def database_url(database_url: str | None, data_dir: Path) -> str:
    """The SQLAlchemy URL: ``ICH_DATABASE_URL`` (``postgresql://`` gets the psycopg 3 driver) or SQLite.

    Raises:
        ValueError: a URL of a database other than PostgreSQL or SQLite.
    """
    if not database_url:
        return f"sqlite:///{(data_dir / SQLITE_FILE).resolve()}"
    url = make_url(database_url)
    backend = url.get_backend_name()
    if backend in {"postgresql", "postgres"}:
        if url.drivername in {"postgres", "postgresql", "postgresql+psycopg2"}:
            url = url.set(drivername="postgresql+psycopg")  # the driver this project installs
        return url.render_as_string(hide_password=False)
    if backend == "sqlite":
        return database_url
    raise ValueError(f"ICH_DATABASE_URL must be a postgresql:// (or sqlite://) URL, got {backend}://")


def _sqlite_engine(url: str) -> Engine:
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # transactions begin below, not in the driver
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def open_database(database_url_or_none: str | None, data_dir: Path) -> Engine:
    """Connect, and bring the schema to the newest migration (idempotent; safe from several replicas).

    Args:
        database_url_or_none: ``ICH_DATABASE_URL``; empty or None for SQLite in ``data_dir``.
        data_dir: ``ICH_DATA_DIR``, created if missing.
    """
    url = database_url(database_url_or_none, data_dir)
    if url.startswith("sqlite"):
        data_dir.mkdir(parents=True, exist_ok=True)
        engine = _sqlite_engine(url)
    else:
        engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))
    upgrade(engine)
    logger.info("job store: %s", engine.dialect.name)  # never the URL: it may carry a password
    return engine
