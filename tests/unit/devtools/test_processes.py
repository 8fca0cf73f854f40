"""The servers' harness: held ports, a child's output in its log, the wait until it answers, the stop by PID.

Every child here is a real Python process and every server a real socket; the gateway launcher is run once
with settings that make ``ich-serve`` refuse to start, so that its own message must come back.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ich_devtools.local_gateway import start_gateway
from ich_devtools.processes import (
    ServerStartError,
    http_answers,
    log_tail,
    reserved_port,
    start_logged,
    stop_process,
    wait_answering,
)

PYTHON = sys.executable


def test_a_reserved_port_is_given_to_nobody_else() -> None:
    port = reserved_port()
    taken = []
    try:
        for _ in range(500):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            taken.append(sock)
            sock.bind(("127.0.0.1", 0))
            assert sock.getsockname()[1] != port
    finally:
        for sock in taken:
            sock.close()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as plain, pytest.raises(OSError):
        plain.bind(("127.0.0.1", port))  # a server that does not share the reservation cannot take it
    with pytest.raises(ConnectionRefusedError):  # held, not served
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


async def test_a_server_binds_its_reserved_port_and_again_after_a_restart() -> None:
    port = reserved_port()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    for _ in range(2):  # started, stopped, started again on the same port
        server = await asyncio.start_server(answer, "127.0.0.1", port)
        async with server:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert await reader.read() == b"ok"
            writer.close()


def test_a_child_that_dies_while_starting_is_named_with_its_log_tail(tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    script = (
        "import sys\nfor i in range(100): print('line', i)\n"
        "sys.stdout.flush(); sys.stderr.write('the cause\\n'); sys.exit(3)"
    )
    process = start_logged([PYTHON, "-c", script], log)
    with pytest.raises(ServerStartError) as raised:
        wait_answering(process, lambda: False, name="child", log=log, timeout_s=30)
    message = str(raised.value)
    assert message.startswith("child exited with 3:")
    assert message.endswith("the cause")  # stderr goes to the same log
    assert "line 99" in message and "line 10\n" not in message  # the tail only
    assert log_tail(log, lines=2) == "line 99\nthe cause"


def test_a_child_that_never_answers_times_out_with_the_callers_error(tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    process = start_logged([PYTHON, "-c", "import time; print('waiting', flush=True); time.sleep(60)"], log)
    try:
        with pytest.raises(SystemExit, match=r"(?s)child not answering after 1 s:.*waiting"):
            wait_answering(process, lambda: False, name="child", log=log, timeout_s=1.0, error=SystemExit)
    finally:
        assert stop_process(process) is False  # it ends on SIGTERM
    assert process.returncode == -signal.SIGTERM


def test_a_child_deaf_to_its_stop_signal_is_killed(tmp_path: Path) -> None:
    log = tmp_path / "deaf.log"
    script = (
        "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "print('deaf', flush=True)\ntime.sleep(60)"
    )
    process = start_logged([PYTHON, "-c", script], log)
    wait_answering(process, lambda: "deaf" in log.read_text(), name="deaf", log=log, timeout_s=30)
    assert stop_process(process, signal.SIGINT, timeout_s=0.5) is True
    assert process.returncode == -signal.SIGKILL
    assert stop_process(process) is False  # already gone: nothing to do


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/ready" else 503)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", reserved_port()), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_only_a_200_counts_as_answering(health_server: str) -> None:
    assert http_answers(f"{health_server}/ready")
    assert not http_answers(f"{health_server}/starting")  # 503
    assert not http_answers(f"http://127.0.0.1:{reserved_port()}/ready")  # nobody serves it


def test_the_gateway_gets_the_given_settings_and_its_refusal_comes_back(tmp_path: Path) -> None:
    gateway = start_gateway(tmp_path / "gateway.log", {"ICH_DICOM_PORT": "11112", "ICH_WORKERS": "2"})
    try:
        with pytest.raises(ServerStartError, match=r"(?s)ich-serve exited with 1:.*ICH_DICOM_PORT needs"):
            gateway.wait_ready(timeout_s=120)
    finally:
        gateway.stop()
    assert gateway.url.startswith("http://127.0.0.1:")
