"""The harness the other tests stand on: ports held until the servers bind them, no undrained pipes.

A port picked and released before the server binds can be taken by another process in between (the shared
CI machine runs several suites at once), and a child's output sent to a pipe nobody reads blocks the child
once the pipe's 64 KiB fill. These tests pin down the reservation and keep both patterns out of the suite.
"""

from __future__ import annotations

import asyncio
import re
import socket
from pathlib import Path

import pytest

from tests.support.ports import reserved_port

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted(p for folder in ("tests", "bench") for p in (ROOT / folder).rglob("*.py"))


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


def test_no_test_picks_a_port_and_releases_it_before_the_server_binds() -> None:
    pattern = re.compile(r"\.bind\(\(\s*[\w\"'.]+\s*,\s*0\s*\)\)")
    offenders = [
        p.relative_to(ROOT).as_posix()
        for p in SOURCES
        if p.parts[len(ROOT.parts)] == "tests"
        and p.name not in {"ports.py", "test_test_harness.py"}
        and pattern.search(p.read_text())
    ]
    assert offenders == [], f"use tests.support.ports.reserved_port instead: {offenders}"


def test_no_child_process_writes_to_a_pipe_nobody_drains() -> None:
    # subprocess.run(capture_output=True) and communicate() drain; a Popen with PIPE in these suites did not.
    offenders = [
        p.relative_to(ROOT).as_posix()
        for p in SOURCES
        if p.name != "test_test_harness.py" and re.search(r"std(out|err)=subprocess\.PIPE", p.read_text())
    ]
    assert offenders == [], f"send the child's output to a log file: {offenders}"
