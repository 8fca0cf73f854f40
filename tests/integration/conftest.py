"""A real ``tritonserver`` for the session, serving a CPU rendering of a tiny exported repository.

Started once (a few seconds) and shared by every ``triton``-marked test. Skipped, with the reason, where
``.venv-triton`` is absent; ``make test`` always creates it first, so CI runs these tests.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from ich.triton_local import LocalTriton, TritonStartError, default_venv, find_distribution
from tests.support.tiny_repository import build_exported_repository, build_tiny_repository

#: Small enough for 2 CPU cores, large enough for the U-Net's pooling and the opening.
TINY_SIZE = 32
TINY_MAX_BATCH = 4


def free_port() -> int:
    """A TCP port nobody listens on now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def tiny_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real exporter's output for tiny random networks, or hand-built ONNX graphs without torch."""
    root = tmp_path_factory.mktemp("tiny_repository")
    exported = build_exported_repository(root, size=TINY_SIZE, max_batch_size=TINY_MAX_BATCH)
    if exported is not None:
        return exported
    return build_tiny_repository(root, size=TINY_SIZE, max_batch_size=TINY_MAX_BATCH)


@pytest.fixture(scope="session")
def triton_server(tiny_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTriton]:
    """``tritonserver`` on free ports serving the rendered tiny repository, stopped after the session."""
    try:
        find_distribution(default_venv())
    except TritonStartError as exc:
        pytest.skip(f"no local tritonserver: {exc}")
    server = LocalTriton(
        tiny_repository,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        intra_op_threads=1,
        workdir=tmp_path_factory.mktemp("triton"),
    )
    server.start(timeout_s=180)
    try:
        yield server
    finally:
        server.stop()
