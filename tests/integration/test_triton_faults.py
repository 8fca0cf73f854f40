"""A real ``tritonserver`` killed with SIGKILL under a running gateway, then started again (issue 23).

- The local launcher leaves nothing behind: after the server's SIGKILL, ``stop`` kills its python-backend
  stubs (re-parented to init, a model's memory each) and removes their ``/dev/shm`` regions.
- While Triton is down the gateway answers 503 with Retry-After; once Triton is ready again, the first 200
  comes within 2 s (the gateway's gRPC channel retries every half second at most, where gRPC's default
  backoff would have grown to several seconds over the outage).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from ich_devtools.processes import reserved_port
from ich_devtools.triton_local import SHM_DIR, LocalTriton, _processes
from tests.integration.conftest import require_tritonserver, serve
from tests.support.dicom_study import study_zip

pytestmark = [pytest.mark.triton, pytest.mark.slow]

#: How long the gateway keeps knocking on a dead Triton before it comes back (the backoff grows meanwhile).
OUTAGE_S = 6.0
RECOVERY_BAR_S = 2.0


def _alive(pids: set[int]) -> set[int]:
    return {p.pid for p in _processes() if p.pid in pids and p.state != "Z"}


def test_triton_killed_leaves_nothing_and_the_gateway_recovers_within_two_seconds(
    tiny_repository: Path, tmp_path: Path
) -> None:
    require_tritonserver()
    ports = {"http_port": reserved_port(), "grpc_port": reserved_port(), "metrics_port": reserved_port()}
    first = LocalTriton(tiny_repository, intra_op_threads=1, workdir=tmp_path / "first", **ports)
    first.start(timeout_s=180)
    study, _ = study_zip(np.full((4, 32, 32), 30.0, np.float32))
    zip_header = {"content-type": "application/zip"}
    settings = {
        "ICH_ENGINE": "triton",
        "ICH_TRITON_URL": first.grpc_url,
        "ICH_TRITON_TIMEOUT_S": "10",
        "ICH_MODEL_REPOSITORY": str(tiny_repository),
        "ICH_JOB_WORKERS": "0",
    }
    second: LocalTriton | None = None
    try:
        with (
            serve(tmp_path / "gateway.log", **settings) as base,
            httpx.Client(base_url=base, timeout=60) as client,
        ):
            assert client.post("/v1/cases", content=study, headers=zip_header).status_code == 200

            assert first.process is not None
            server_pid = first.process.pid
            stubs = {p.pid for p in _processes() if p.pgid == server_pid and p.pid != server_pid}
            assert stubs, "no python-backend stub found in the server's process group"
            first.process.send_signal(signal.SIGKILL)
            first.process.wait(timeout=30)
            first.stop()
            assert _alive(stubs) == set(), "python-backend stubs outlived their server"
            assert sorted(SHM_DIR.glob(f"{first.shm_prefix}*")) == []

            outage_ends = time.monotonic() + OUTAGE_S
            while time.monotonic() < outage_ends:
                down = client.post("/v1/cases", content=study, headers=zip_header)
                assert down.status_code == 503 and down.headers.get("retry-after"), down.text
                assert client.get("/readyz").status_code == 503
                time.sleep(0.5)

            second = LocalTriton(tiny_repository, intra_op_threads=1, workdir=tmp_path / "second", **ports)
            second.start(timeout_s=180)
            ready_at = time.monotonic()
            while True:
                response = client.post("/v1/cases", content=study, headers=zip_header)
                waited = time.monotonic() - ready_at
                if response.status_code == 200:
                    break
                assert response.status_code == 503, response.text
                assert waited < RECOVERY_BAR_S + 5, "the gateway did not recover"
                time.sleep(0.1)
    finally:
        first.stop()
        if second is not None:
            second.stop()
    assert waited <= RECOVERY_BAR_S, f"first 200 {waited:.2f} s after Triton was ready"
