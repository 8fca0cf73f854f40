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
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import yaml

from ich import spec
from ich_devtools.local_gateway import running_gateway
from ich_devtools.processes import http_answers, reserved_port, start_logged, stop_process, wait_answering
from ich_devtools.triton_local import LocalTriton
from tests.integration.conftest import TINY_SIZE as TRITON_SIZE
from tests.support.dicom_study import study_zip
from tests.support.tiny_repository import build_tiny_repository

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "monitoring" / "rules" / "gateway.yml"
TRITON_RULES = ROOT / "monitoring" / "rules" / "triton.yml"
ADAPTER_VALUES = ROOT / "monitoring" / "prometheus-adapter" / "values.yaml"
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


def _wait_for(what: str, probe: Callable[[], Any], timeout_s: float) -> Any:
    """Poll ``probe`` until it returns something truthy; fail with the last error after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value:
                return value
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            last_error = exc
        time.sleep(0.5)
    pytest.fail(f"{what}: not within {timeout_s:.0f} s (last error: {last_error!r})")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``ich-serve`` with the embedded engine on a tiny repository; yields its base URL."""
    repository = build_tiny_repository(
        tmp_path_factory.mktemp("prom_repository"), size=TINY_SIZE, max_batch_size=4
    )
    settings = {
        "ICH_ENGINE": "embedded",
        "ICH_MODEL_REPOSITORY": str(repository),
        "ICH_WORKERS": "1",
        "ICH_THREADS": "2",
        "ICH_INTRA_OP_THREADS": "1",
        "ICH_LOG_LEVEL": "warning",
    }
    log = tmp_path_factory.mktemp("prom_gateway") / "gateway.log"
    with running_gateway(log, settings, timeout_s=START_TIMEOUT_S, error=pytest.fail.Exception) as server:
        yield server.url


@contextmanager
def _running_prometheus(workdir: Path, job: str, target: str, rules: Path) -> Iterator[str]:
    """Debian's prometheus on loopback scraping ``target`` every second as ``job``; yields its base URL."""
    assert PROMETHEUS is not None
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [
            {"job_name": job, "metrics_path": "/metrics", "static_configs": [{"targets": [target]}]}
        ],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = reserved_port()
    log = workdir / "prometheus.log"
    command = [
        PROMETHEUS,
        f"--config.file={workdir / 'prometheus.yml'}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    process = start_logged(command, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_answering(
            process,
            lambda: http_answers(f"{url}/-/ready"),
            name="prometheus",
            log=log,
            timeout_s=START_TIMEOUT_S,
            interval_s=0.5,
            error=pytest.fail.Exception,
        )
        yield url
    finally:
        stop_process(process)


@pytest.fixture(scope="module")
def prometheus(gateway: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Prometheus scraping the gateway under the ServiceMonitor's job name, with the gateway rules."""
    workdir = tmp_path_factory.mktemp("prometheus")
    with _running_prometheus(workdir, JOB, gateway.removeprefix("http://"), RULES) as url:
        yield url


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


@pytest.mark.triton
def test_triton_metrics_feed_the_rules_and_the_hpa_query(
    triton_server: LocalTriton, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The Triton counters the alerts, the dashboard and the HPA's adapter rule read exist under these names
    on a real tritonserver (2.51, the production version), per base model, and give a finite queue time."""
    workdir = tmp_path_factory.mktemp("prometheus_triton")
    target = f"{triton_server.host}:{triton_server.metrics_port}"
    with _running_prometheus(workdir, "ich-triton", target, TRITON_RULES) as url:
        _wait_for("first Triton scrape", lambda: _query(url, 'up{job="ich-triton"} == 1'), SCRAPE_TIMEOUT_S)
        client = grpcclient.InferenceServerClient(triton_server.grpc_url)
        images = np.random.default_rng(0).random(
            (2, spec.IN_CHANNELS, TRITON_SIZE, TRITON_SIZE), dtype=np.float32
        )
        for _ in range(5):
            request = grpcclient.InferInput(spec.IMAGE, list(images.shape), "FP32")
            request.set_data_from_numpy(images)
            client.infer(spec.ENSEMBLE_MODEL, [request])  # every output, as the gateway asks
        client.close()
        served = _wait_for(
            "base-model successes",
            lambda: _query(
                url,
                'sum by (model) (nv_inference_request_success{job="ich-triton", model=~"ich_unet_.*"}) > 0',
            ),
            SCRAPE_TIMEOUT_S,
        )
        assert {s["metric"]["model"] for s in served} == set(spec.BASE_MODELS.values())
        for metric in ("nv_inference_queue_duration_us", "nv_inference_compute_infer_duration_us"):
            assert _query(url, f'{metric}{{job="ich-triton", model="ich_unet_all"}}'), metric
        queue = _wait_for(
            "ich:triton_queue_seconds_per_request:rate1m",
            lambda: _query(url, "ich:triton_queue_seconds_per_request:rate1m >= 0"),
            SCRAPE_TIMEOUT_S,
        )
        assert 0.0 <= float(queue[0]["value"][1]) < 60.0
        # The prometheus-adapter rule, with its placeholders filled as the adapter would for one pod.
        rule = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"][0]
        expr = (
            rule["metricsQuery"]
            .replace("<<.GroupBy>>", "job")
            .replace("<<.LabelMatchers>>", 'job="ich-triton"')
        )
        adapter = _wait_for("adapter query", lambda: _query(url, expr), SCRAPE_TIMEOUT_S)
        assert len(adapter) == 1 and 0.0 <= float(adapter[0]["value"][1]) < 60.0
