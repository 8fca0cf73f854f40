"""A real ``tritonserver`` for the session, serving a CPU rendering of a tiny exported repository.

Started once (a few seconds) and shared by every ``triton``-marked test. Skipped, with the reason, where
``.venv-triton`` is absent; ``make test`` always creates it first, so CI runs these tests.
"""

from __future__ import annotations

import contextlib
import subprocess
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
from ich_devtools.local_gateway import LocalGateway
from ich_devtools.local_gateway import start_gateway as start_local_gateway
from ich_devtools.triton_local import LocalTriton, TritonStartError, default_venv, find_distribution
from tests.support.asgi_gateway import asgi_client
from tests.support.tiny_repository import build_exported_repository, build_tiny_repository

#: Small enough for 2 CPU cores, large enough for the U-Net's pooling and the opening.
TINY_SIZE = 32
TINY_MAX_BATCH = 4


REPO_ROOT = Path(__file__).resolve().parents[2]
#: How long ``serve`` waits for the gateway's /readyz.
START_TIMEOUT_S = 120.0


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
    """``tritonserver`` on held loopback ports, one intra-op thread a model, serving ``model_repository``."""
    server = LocalTriton.on_reserved_ports(model_repository, workdir=workdir)
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


@pytest.fixture(params=["sqlite", "postgresql"])
def store_settings(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """The gateway's job store: SQLite in the test's folder, then a real PostgreSQL (``postgres_url``)."""
    settings = {"ICH_DATA_DIR": str(tmp_path / "ich-data")}
    if request.param == "postgresql":
        settings["ICH_DATABASE_URL"] = request.getfixturevalue("postgres_url")
    return settings


def wait_jobs_finished(
    client: httpx.Client, ids: list[str], timeout_s: float = 180.0
) -> list[dict[str, Any]]:
    """Poll the jobs until every one is ``done`` or ``failed``; their JSON. Fails the test on the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        jobs = [client.get(f"/v1/studies/{job_id}").json() for job_id in ids]
        if all(job["status"] in ("done", "failed") for job in jobs):
            return jobs
        assert time.monotonic() < deadline, [job["status"] for job in jobs]
        time.sleep(0.3)


async def post_study(settings: Settings, body: bytes) -> dict[str, Any]:
    """POST ``body`` (a zipped study) to an in-process gateway made from ``settings``; the 200 answer JSON."""
    app = create_app(settings)
    async with asgi_client(app, timeout_s=300) as client:
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
    """Start ``ich-serve`` (``ich_devtools.local_gateway``) on ``ICH_PORT`` or a held loopback port.

    Only the given ``ICH_`` settings reach it, with INFO logging and a job store beside ``log`` unless
    they say otherwise. Returns the process and its base URL.
    """
    defaults = {"ICH_LOG_LEVEL": "INFO", "ICH_DATA_DIR": str(log.parent / "ich-data")}  # never the repo's
    gateway = start_local_gateway(log, {**defaults, **settings})
    return gateway.process, gateway.url


def wait_ready(process: subprocess.Popen[bytes], base: str, log: Path, path: str = "/readyz") -> None:
    """Poll ``path`` until it answers 200; fail the test with the log's tail if the process dies first."""
    LocalGateway(process, base, log).wait_ready(path, timeout_s=START_TIMEOUT_S, error=pytest.fail.Exception)


@contextmanager
def serve(log: Path, **settings: str) -> Iterator[str]:
    """The gateway on a held loopback port, ready, until the block ends (then SIGTERM, as Kubernetes)."""
    process, base = start_gateway(log, **settings)
    try:
        wait_ready(process, base, log)
        yield base
    finally:
        LocalGateway(process, base, log).stop()
