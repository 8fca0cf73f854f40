"""A real ``tritonserver`` for the session, serving a CPU rendering of a tiny exported repository.

Started once (a few seconds) and shared by every ``triton``-marked test. Skipped, with the reason, where
``.venv-triton`` is absent; ``make test`` always creates it first, so CI runs these tests.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from api.app import create_app
from api.settings import Settings
from ich import spec
from ich_devtools.triton_local import LocalTriton, TritonStartError, default_venv, find_distribution
from tests.support.ports import reserved_port
from tests.support.tiny_repository import build_exported_repository, build_tiny_repository

#: Small enough for 2 CPU cores, large enough for the U-Net's pooling and the opening.
TINY_SIZE = 32
TINY_MAX_BATCH = 4


REPO_ROOT = Path(__file__).resolve().parents[2]
#: How long ``serve`` waits for the gateway's /readyz.
START_TIMEOUT_S = 120.0


def free_port() -> int:
    """A loopback TCP port held for the servers of this test process (``tests.support.ports``)."""
    return reserved_port()


@pytest.fixture(scope="session")
def tiny_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real exporter's output for tiny random networks, or hand-built ONNX graphs without torch."""
    root = tmp_path_factory.mktemp("tiny_repository")
    exported = build_exported_repository(root, size=TINY_SIZE, max_batch_size=TINY_MAX_BATCH)
    if exported is not None:
        return exported
    return build_tiny_repository(root, size=TINY_SIZE, max_batch_size=TINY_MAX_BATCH)


def require_tritonserver() -> None:
    """Skip the calling test (or fixture), with the reason, where ``.venv-triton`` has no tritonserver."""
    try:
        find_distribution(default_venv())
    except TritonStartError as exc:
        pytest.skip(f"no local tritonserver: {exc}")


@contextlib.contextmanager
def running_triton(model_repository: Path, workdir: Path) -> Iterator[LocalTriton]:
    """``tritonserver`` on free ports, one intra-op thread a model, serving ``model_repository``."""
    server = LocalTriton(
        model_repository,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        intra_op_threads=1,
        workdir=workdir,
    )
    server.start(timeout_s=180)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def triton_server(tiny_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTriton]:
    """``tritonserver`` on free ports serving the rendered tiny repository, stopped after the session."""
    require_tritonserver()
    with running_triton(tiny_repository, tmp_path_factory.mktemp("triton")) as server:
        yield server


async def post_study(settings: Settings, body: bytes) -> dict[str, Any]:
    """POST ``body`` (a zipped study) to an in-process gateway made from ``settings``; the 200 answer JSON."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway", timeout=300) as client:
            response = await client.post(
                "/v1/cases", content=body, headers={"Content-Type": "application/zip"}
            )
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def assert_same_numbers(triton: dict[str, Any], embedded: dict[str, Any], per_model: str) -> None:
    """Two engines' answers to one study agree (atol 1e-3) slice by slice and for the case.

    Args:
        triton: the gateway's JSON answer with the Triton engine.
        embedded: the same with the embedded engine.
        per_model: the slice field holding one value per ensemble member to compare too
            (``"weights"`` or ``"model_probabilities"``).
    """
    np.testing.assert_allclose(
        [s["probability"] for s in triton["slices"]],
        [s["probability"] for s in embedded["slices"]],
        atol=1e-3,
    )
    for key in spec.MODEL_KEYS:
        np.testing.assert_allclose(
            [s[per_model][key] for s in triton["slices"]],
            [s[per_model][key] for s in embedded["slices"]],
            atol=1e-3,
        )
    assert triton["ich_probability"] == pytest.approx(embedded["ich_probability"], abs=1e-3)
    assert triton["uncertainty"] == pytest.approx(embedded["uncertainty"], abs=1e-3)
    assert (triton["subtypes"] is None) == (embedded["subtypes"] is None)


def start_gateway(log: Path, **settings: str) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``python -m api.main`` (the ``ich-serve`` script's function) on a free loopback port.

    Only the given ``ICH_`` settings reach it (the caller's environment's own ``ICH_`` variables are dropped);
    output goes to ``log``. Returns the process and its base URL.
    """
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICH_")}
    env.update({"ICH_HOST": "127.0.0.1", "ICH_PORT": str(port), "ICH_LOG_LEVEL": "INFO", **settings})
    env.setdefault("ICH_DATA_DIR", str(log.parent / "ich-data"))  # the job store: never the repository's
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "api.main"], cwd=REPO_ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT
        )
    return process, f"http://127.0.0.1:{port}"


def wait_ready(process: subprocess.Popen[bytes], base: str, log: Path, path: str = "/readyz") -> None:
    """Poll ``path`` until it answers 200; fail the test with the log if the process dies or times out."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            pytest.fail(f"ich-serve exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{base}{path}", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"ich-serve not ready after {START_TIMEOUT_S} s:\n{log.read_text()}")
        time.sleep(0.3)


@contextmanager
def serve(log: Path, **settings: str) -> Iterator[str]:
    """The gateway on a free loopback port, ready, until the block ends (then SIGTERM, as Kubernetes)."""
    process, base = start_gateway(log, **settings)
    try:
        wait_ready(process, base, log)
        yield base
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
