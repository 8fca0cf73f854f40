"""A real, throw-away PostgreSQL for tests: Debian's ``postgresql`` binaries, an unprivileged cluster.

``initdb`` writes a cluster into a fresh temporary folder, and ``postgres`` serves it on a free loopback
port (and a unix socket in that folder) with ``trust`` authentication, fsync off (a test cluster need not
survive a power cut; the queue's own durability is SQLite's and PostgreSQL's business) and small buffers.
PostgreSQL refuses to run as root: when the tests run as root (CI, containers) the cluster runs as the
unprivileged ``nobody`` (``ICH_TEST_PG_USER`` to choose another), which then owns the folder. The server is
stopped by its process id (SIGINT: PostgreSQL's fast shutdown). Where the binaries are absent,
:func:`find_postgres_bin` says so and the tests skip with that reason (``make test`` installs them through
``.ci/run``: ``apt-get install postgresql``).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg

from ich_devtools.processes import reserved_port, start_logged, stop_process, wait_answering

#: Where Debian installs each major version's server binaries.
DEBIAN_BIN_GLOB = "/usr/lib/postgresql/*/bin"
START_TIMEOUT_S = 60.0


def find_postgres_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/<major>/bin`` holding ``initdb`` and ``postgres``, or ``PATH``'s."""
    candidates = sorted(glob.glob(DEBIAN_BIN_GLOB), key=lambda p: int(Path(p).parent.name or 0))
    for folder in reversed(candidates):
        if (Path(folder) / "initdb").is_file() and (Path(folder) / "postgres").is_file():
            return Path(folder)
    initdb = shutil.which("initdb")
    if initdb and shutil.which("postgres"):
        return Path(initdb).parent
    return None


@dataclass
class PostgresServer:
    """A running cluster; :meth:`create_database` gives each test a database of its own."""

    process: subprocess.Popen[bytes]
    port: int
    root: Path
    superuser: str

    def url(self, database: str = "postgres") -> str:
        """``postgresql://`` URL of ``database`` over loopback TCP."""
        return f"postgresql://{self.superuser}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A fresh empty database; its URL."""
        name = f"ich_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def accepts(self) -> bool:
        """True when the server takes a connection."""
        try:
            with psycopg.connect(self.url(), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False


def _run_as() -> tuple[int | None, int | None, str]:
    """(uid, gid, user) to run the server as: ourselves, or an unprivileged user when we are root."""
    if os.geteuid() != 0:
        return None, None, pwd.getpwuid(os.geteuid()).pw_name
    account = pwd.getpwnam(os.environ.get("ICH_TEST_PG_USER", "nobody"))
    return account.pw_uid, account.pw_gid, account.pw_name


@contextlib.contextmanager
def running_postgres(bin_dir: Path) -> Iterator[PostgresServer]:
    """Init a cluster in a new temporary folder, serve it until the block ends, then remove it.

    Raises:
        RuntimeError: initdb failed or the server did not accept connections in time (with its log).
    """
    uid, gid, user = _run_as()
    root = Path(tempfile.mkdtemp(prefix="ich-pg-"))
    if uid is not None:
        os.chown(root, uid, gid if gid is not None else -1)
    data = root / "data"
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
    init = subprocess.run(
        [str(bin_dir / "initdb"), "-D", str(data), "-U", user, "--auth=trust", "-E", "UTF8", "--no-sync"],
        user=uid,
        group=gid,
        env=env,
        cwd=root,
        capture_output=True,
    )
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {init.stderr.decode(errors='replace')[-2000:]}")
    port = reserved_port()
    log = root / "postgres.log"
    log.touch()
    if uid is not None:
        os.chown(log, uid, gid if gid is not None else -1)
    process = start_logged(
        [
            str(bin_dir / "postgres"),
            "-D", str(data),
            "-p", str(port),
            "-h", "127.0.0.1",
            "-k", str(root),
            "-c", "fsync=off",
            "-c", "synchronous_commit=off",
            "-c", "full_page_writes=off",
            "-c", "shared_buffers=16MB",
            "-c", "max_connections=60",
        ],
        log,
        env=env,
        cwd=root,
        user=uid,
        group=gid,
    )  # fmt: skip
    server = PostgresServer(process, port, root, user)
    try:
        wait_answering(process, server.accepts, name="postgres", log=log, timeout_s=START_TIMEOUT_S)
        yield server
    finally:
        stop_process(process, signal.SIGINT)  # PostgreSQL's fast shutdown
        shutil.rmtree(root, ignore_errors=True)
