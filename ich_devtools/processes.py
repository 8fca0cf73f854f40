"""Servers that tests and benchmarks start as child processes: a held loopback port, output to a log file,
a wait until the server answers, and a stop by process id.

Ports: picking a free port and closing it before the server binds leaves a window (seconds, for a gateway
that loads its engine first) in which another process on the machine can take it. ``reserved_port`` binds a
socket with ``SO_REUSEADDR`` and keeps it, never listening, until this process exits: the kernel then gives
the port to no other ``bind(port 0)`` and refuses a plain bind of it, while a server that sets
``SO_REUSEADDR`` itself (asyncio and uvicorn, pynetdicom, dcmtk, Orthanc, PostgreSQL, tritonserver, Go's
net package) binds and listens on it as usual. A server stopped and started again finds its port still held
for it. Connecting to a reserved port nobody serves is refused at once, as for any closed port.

Output: a child writes to a file, never to a pipe: a pipe nobody drains blocks the child once its 64 KiB
fill, and the file is there to quote when the server fails to start.

Only the standard library: ``make triton`` runs this without the test dependencies.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

__all__ = [
    "LOOPBACK",
    "ServerStartError",
    "http_answers",
    "log_tail",
    "reserved_port",
    "resident_mib",
    "start_logged",
    "stop_process",
    "wait_answering",
]

LOOPBACK = "127.0.0.1"
#: How much of a server's log a start-up failure quotes.
TAIL_LINES = 60

_HELD: list[socket.socket] = []


class ServerStartError(RuntimeError):
    """A server exited while starting or did not answer in time; the message ends with its log's tail."""


def reserved_port(host: str = LOOPBACK) -> int:
    """A TCP port on ``host`` held for this process (see the module's docstring)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    _HELD.append(sock)
    return int(sock.getsockname()[1])


def start_logged(
    command: Sequence[str],
    log: Path | None,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    user: int | None = None,
    group: int | None = None,
    new_session: bool = False,
) -> subprocess.Popen[bytes]:
    """Start ``command`` with its stdout and stderr in ``log`` (created or emptied; None: this console).

    ``user``/``group`` run it as another account (a server that refuses root); ``new_session`` makes it
    the leader of its own process group, so that what it spawns can be found and stopped with it.
    """
    with log.open("wb") if log is not None else contextlib.nullcontext() as sink:
        # The child keeps its own descriptor of the file; this one closes when the block ends.
        return subprocess.Popen(
            list(command),
            env=env,
            cwd=cwd,
            user=user,
            group=group,
            start_new_session=new_session,
            stdout=sink,
            stderr=None if sink is None else subprocess.STDOUT,
        )


def log_tail(log: Path | None, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of ``log``; empty when there is no such file."""
    if log is None or not log.is_file():
        return ""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def http_answers(url: str, timeout_s: float = 2.0) -> bool:
    """True when ``GET url`` answers 200; False for any other status and when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def wait_answering(
    process: subprocess.Popen[bytes],
    answers: Callable[[], bool],
    *,
    name: str,
    log: Path | None,
    timeout_s: float,
    interval_s: float = 0.2,
    error: Callable[[str], BaseException] = ServerStartError,
) -> None:
    """Poll ``answers`` until it returns True.

    Raises:
        ServerStartError: (or what ``error`` makes of the message) the process exited first, or
            ``timeout_s`` passed; the message names ``name`` and ends with the tail of ``log``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        code = process.poll()
        if code is not None:
            raise error(f"{name} exited with {code}:\n{log_tail(log)}")
        if answers():
            return
        if time.monotonic() > deadline:
            raise error(f"{name} not answering after {timeout_s:.0f} s:\n{log_tail(log)}")
        time.sleep(interval_s)


def stop_process(
    process: subprocess.Popen[bytes], stop_signal: int = signal.SIGTERM, timeout_s: float = 30.0
) -> bool:
    """Send ``stop_signal`` to a live ``process``, wait up to ``timeout_s``, then SIGKILL it.

    Returns:
        True when it had to be killed; False when it stopped in time or had exited already.
    """
    if process.poll() is not None:
        return False
    process.send_signal(stop_signal)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return True
    return False


def resident_mib(pid: int, *, peak: bool = False) -> float:
    """A live process's resident set size in MiB (``VmRSS``; ``peak``: its high-water mark, ``VmHWM``).

    NaN where ``/proc`` does not tell (not Linux, or the process is gone).
    """
    field = "VmHWM:" if peak else "VmRSS:"
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")
