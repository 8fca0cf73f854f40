"""``ich-serve`` as a child process on a held loopback port, for the integration tests and the benchmarks.

It runs ``python -m api.main`` (what the ``ich-serve`` script runs) from the project root with only the
``ICH_`` settings it is given: the caller's own ``ICH_`` variables are dropped, so that a developer's shell
changes nothing a test asserts or a benchmark measures. Its output goes to a log file, and it is stopped as
Kubernetes stops it (SIGTERM, then SIGKILL after 30 s).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ich_devtools.processes import (
    LOOPBACK,
    ServerStartError,
    http_answers,
    reserved_port,
    start_logged,
    stop_process,
    wait_answering,
)

__all__ = ["LocalGateway", "running_gateway", "start_gateway"]

PROJECT_ROOT = Path(__file__).resolve().parents[1]
#: How long a start waits for ``/readyz`` by default (the engine loads and warms up first).
START_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class LocalGateway:
    """A started ``ich-serve``: its process, base URL and log file."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(
        self,
        path: str = "/readyz",
        *,
        timeout_s: float = START_TIMEOUT_S,
        error: Callable[[str], BaseException] = ServerStartError,
    ) -> None:
        """Return once ``path`` answers 200; ``error`` (with the log's tail) if the process dies first."""
        wait_answering(
            self.process,
            lambda: http_answers(f"{self.url}{path}"),
            name="ich-serve",
            log=self.log,
            timeout_s=timeout_s,
            interval_s=0.3,
            error=error,
        )

    def stop(self) -> None:
        """SIGTERM, SIGKILL after 30 s; nothing when it has exited already."""
        stop_process(self.process)


def start_gateway(log: Path, settings: Mapping[str, str]) -> LocalGateway:
    """Start the gateway with ``settings`` (``ICH_`` variables) on ``ICH_PORT``, or on a reserved port."""
    port = int(settings["ICH_PORT"]) if "ICH_PORT" in settings else reserved_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("ICH_")}
    env.update({"ICH_HOST": LOOPBACK, "ICH_PORT": str(port), **settings})
    process = start_logged([sys.executable, "-m", "api.main"], log, env=env, cwd=PROJECT_ROOT)
    return LocalGateway(process, f"http://{LOOPBACK}:{port}", log)


@contextmanager
def running_gateway(
    log: Path,
    settings: Mapping[str, str],
    *,
    timeout_s: float = START_TIMEOUT_S,
    error: Callable[[str], BaseException] = ServerStartError,
) -> Iterator[LocalGateway]:
    """The gateway, ready, until the block ends; then stopped (see :meth:`LocalGateway.stop`)."""
    gateway = start_gateway(log, settings)
    try:
        gateway.wait_ready(timeout_s=timeout_s, error=error)
        yield gateway
    finally:
        gateway.stop()
