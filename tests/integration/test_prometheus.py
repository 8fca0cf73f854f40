"""A real Prometheus scrapes a real gateway: the deployment's monitoring works end to end.

``ich-serve`` (uvicorn + ``api.app.create_app``, embedded engine on a tiny ONNX repository) runs as a
subprocess; Debian's ``prometheus`` binary runs on loopback with a temporary configuration that scrapes it
every second under the job name the ServiceMonitor gives (``ich-gateway``) and loads the alert and recording
rules of monitoring/rules/gateway.yml. After one study is analysed, Prometheus' HTTP API must answer
``ich_cases_total`` for that study's outcome, the recording rules must evaluate, and every query of the
Grafana dashboard must be valid PromQL against that server.

Skipped only where the ``prometheus`` binary is absent (CI installs Debian's package, see .ci/run).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from tests.support.dicom_study import study_zip
from tests.support.tiny_repository import build_tiny_repository

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "monitoring" / "rules" / "gateway.yml"
DASHBOARD = ROOT / "monitoring" / "grafana" / "ich-dashboard.json"
JOB = "ich-gateway"
TINY_SIZE = 32
START_TIMEOUT_S = 180.0
SCRAPE_TIMEOUT_S = 60.0

PROMETHEUS = shutil.which("prometheus")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        PROMETHEUS is None,
        reason="no prometheus binary on PATH (Debian: apt-get install prometheus; CI installs it)",
    ),
]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for(
    what: str, probe: Callable[[], Any], timeout_s: float, process: subprocess.Popen[bytes] | None = None
) -> Any:
    """Poll ``probe`` until it returns something truthy; fail with the process's output if it dies."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            output = process.stdout.read().decode(errors="replace") if process.stdout else ""
            pytest.fail(f"{what}: process exited with {process.returncode}:\n{output[-4000:]}")
        try:
            value = probe()
            if value:
                return value
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            last_error = exc
        time.sleep(0.5)
    pytest.fail(f"{what}: not within {timeout_s:.0f} s (last error: {last_error!r})")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``ich-serve`` with the embedded engine on a tiny repository; yields its base URL."""
    repository = build_tiny_repository(
        tmp_path_factory.mktemp("prom_repository"), size=TINY_SIZE, max_batch_size=4
    )
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICH_")}
    env.update(
        ICH_ENGINE="embedded",
        ICH_MODEL_REPOSITORY=str(repository),
        ICH_HOST="127.0.0.1",
        ICH_PORT=str(port),
        ICH_WORKERS="1",
        ICH_THREADS="2",
        ICH_INTRA_OP_THREADS="1",
        ICH_LOG_LEVEL="warning",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "api.main"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(
            "gateway /readyz",
            lambda: httpx.get(f"{url}/readyz", timeout=5).status_code == 200,
            START_TIMEOUT_S,
            process,
        )
        yield url
    finally:
        _stop(process)


@pytest.fixture(scope="module")
def prometheus(gateway: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian's prometheus on loopback scraping the gateway every second; yields its base URL."""
    assert PROMETHEUS is not None
    workdir = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {
                "job_name": JOB,
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [gateway.removeprefix("http://")]}],
            }
        ],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = _free_port()
    process = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(
            "prometheus /-/ready",
            lambda: httpx.get(f"{url}/-/ready", timeout=5).status_code == 200,
            START_TIMEOUT_S,
            process,
        )
        yield url
    finally:
        _stop(process)


def _query(prometheus_url: str, expr: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": expr}, timeout=10)
    body = response.json()
    if body.get("status") != "success":
        raise ValueError(f"{expr}: {body.get('errorType')}: {body.get('error')}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


@pytest.fixture(scope="module")
def analysed(gateway: str, prometheus: str) -> str:
    """Wait until Prometheus has scraped the gateway once, post one study, return its outcome label."""
    _wait_for("first scrape", lambda: _query(prometheus, f'up{{job="{JOB}"}} == 1'), SCRAPE_TIMEOUT_S)
    hu = np.full((4, 64, 64), -1000.0, dtype=np.float32)
    hu[:, 12:52, 12:52] = 35.0  # brain-like tissue inside air, so preprocessing has something to window
    hu[1:3, 28:36, 28:36] = 70.0  # a small hyperdense spot
    body, _ = study_zip(hu)
    response = httpx.post(
        f"{gateway}/v1/cases", content=body, headers={"Content-Type": "application/zip"}, timeout=120
    )
    assert response.status_code == 200, response.text
    result = response.json()
    if result["indeterminate"]:
        return "indeterminate"
    return "positive" if result["ich_detected"] else "negative"


def test_prometheus_answers_ich_cases_total_after_a_study(prometheus: str, analysed: str) -> None:
    expr = f'sum(ich_cases_total{{job="{JOB}", outcome="{analysed}"}})'
    samples = _wait_for(
        f"{expr} == 1",
        lambda: [s for s in _query(prometheus, expr) if float(s["value"][1]) == 1.0],
        SCRAPE_TIMEOUT_S,
    )
    assert len(samples) == 1
    # Exactly one study was analysed: every other outcome's counter is still zero.
    others = _query(prometheus, f'sum(ich_cases_total{{job="{JOB}", outcome!="{analysed}"}})')
    assert [float(s["value"][1]) for s in others] == [0.0]
    # The per-stage histogram saw that study once per stage.
    counts = _query(prometheus, f'ich_stage_seconds_count{{job="{JOB}"}}')
    assert {s["metric"]["stage"]: float(s["value"][1]) for s in counts} == {
        "decode": 1.0,
        "preprocess": 1.0,
        "inference": 1.0,
        "aggregate": 1.0,
    }


def test_recording_rules_evaluate_on_the_scraped_series(prometheus: str, analysed: str) -> None:
    rules = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    assert {g["name"] for g in rules} == {"ich-gateway.records", "ich-gateway.alerts"}
    unhealthy = [r["name"] for g in rules for r in g["rules"] if r.get("health") not in ("ok", "unknown")]
    assert not unhealthy, unhealthy
    rate = _wait_for(
        "ich:cases:rate5m > 0",
        lambda: [
            s
            for s in _query(prometheus, f'ich:cases:rate5m{{outcome="{analysed}"}}')
            if float(s["value"][1]) > 0
        ],
        SCRAPE_TIMEOUT_S,
    )
    assert rate[0]["metric"]["outcome"] == analysed


def test_every_dashboard_query_is_valid_promql(prometheus: str) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", []) if t.get("expr")]
    assert len(exprs) >= 12
    for expr in exprs:
        concrete = expr.replace("$__rate_interval", "1m").replace("$namespace", ".*")
        _query(prometheus, concrete)  # raises ValueError with Prometheus' parse error
