"""The harness the other tests stand on: ports held until the servers bind them, no undrained pipes.

A port picked and released before the server binds can be taken by another process in between (the shared
CI machine runs several suites at once), and a child's output sent to a pipe nobody reads blocks the child
once the pipe's 64 KiB fill. ``ich_devtools.processes`` does both right (``tests/unit/devtools/
test_processes.py``); these tests keep the two patterns out of the tests, the benchmarks and the tools.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted(p for folder in ("tests", "bench", "ich_devtools") for p in (ROOT / folder).rglob("*.py"))


def test_nothing_picks_a_port_and_releases_it_before_the_server_binds() -> None:
    pattern = re.compile(r"\.bind\(\(\s*[\w\"'.]+\s*,\s*0\s*\)\)")
    offenders = [
        p.relative_to(ROOT).as_posix()
        for p in SOURCES
        if p.name not in {"processes.py", "test_processes.py", "test_test_harness.py"}
        and pattern.search(p.read_text())
    ]
    assert offenders == [], f"use ich_devtools.processes.reserved_port instead: {offenders}"


def test_no_child_process_writes_to_a_pipe_nobody_drains() -> None:
    # subprocess.run(capture_output=True) and communicate() drain; a Popen with PIPE in these suites did not.
    offenders = [
        p.relative_to(ROOT).as_posix()
        for p in SOURCES
        if p.name != "test_test_harness.py" and re.search(r"std(out|err)=subprocess\.PIPE", p.read_text())
    ]
    assert offenders == [], f"send the child's output to a log file: {offenders}"
