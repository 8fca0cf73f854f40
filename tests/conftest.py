"""Session-wide test settings: the apps tests build keep their job store in a temporary folder.

``ICH_DATA_DIR`` is set for the whole session (before any fixture, whatever its scope, builds a
``Settings``), so no test writes the repository's ``data/``; tests of the queue pass their own folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

from tests.support.postgres import PostgresServer, find_postgres_bin, running_postgres

_OWN_DATA_DIR: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    del config
    path = tempfile.mkdtemp(prefix="ich-test-data-")
    _OWN_DATA_DIR.append(path)
    os.environ["ICH_DATA_DIR"] = path
    os.environ.pop("ICH_DATABASE_URL", None)


def pytest_unconfigure(config: pytest.Config) -> None:
    del config
    for path in _OWN_DATA_DIR:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL cluster for the session; the test skips, saying why, without the binaries."""
    bin_dir = find_postgres_bin()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binaries (Debian: apt-get install postgresql; .ci/run does it)")
    with running_postgres(bin_dir) as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh database of the session's cluster, for one test."""
    return postgres_server.create_database()
