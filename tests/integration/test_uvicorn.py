"""``ich-serve`` as a user runs it: a real uvicorn process on loopback, a study posted over TCP.

Covers what the in-process TestClient cannot: the ``ich-serve`` entry point reading ``ICH_`` variables,
uvicorn's app factory and lifespan, a real multipart and a real chunked upload over a socket, log lines with
request ids and without patient data, and a clean shutdown on SIGTERM (what Kubernetes sends).
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.integration.conftest import REPO_ROOT, serve, start_gateway, wait_ready
from tests.support.dicom_study import PATIENT_ID, PATIENT_NAME, study_zip

pytestmark = pytest.mark.slow


SHIPPED_REPOSITORY = REPO_ROOT / "model_repository"
UPLOAD_CAP = 1024 * 1024
EXAMPLES = sorted((REPO_ROOT / "examples").glob("*.zip"))


@pytest.fixture(scope="module")
def gateway(tiny_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The gateway on the tiny repository, with its log file."""
    log = tmp_path_factory.mktemp("uvicorn") / "gateway.log"
    settings = {
        "ICH_MODEL_REPOSITORY": str(tiny_repository),
        "ICH_INTRA_OP_THREADS": "1",
        "ICH_THREADS": "2",
        "ICH_MAX_UPLOAD_BYTES": str(UPLOAD_CAP),
    }
    with serve(log, **settings) as base:
        yield base, log


def test_a_study_posted_over_tcp_gets_a_full_result(gateway: tuple[str, Path]) -> None:
    base, log = gateway
    hu = np.full((6, 64, 64), 32.0, np.float32)
    hu[2:4, 20:36, 24:40] = 72.0
    data, uids = study_zip(hu, shuffle=True)
    with httpx.Client(base_url=base, timeout=60.0) as client:
        raw = client.post(
            "/v1/cases", content=data, headers={"content-type": "application/zip", "X-Request-ID": "it-raw-1"}
        )
        form = client.post("/v1/cases", files={"file": ("study.zip", data, "application/zip")})

        def chunks() -> Iterator[bytes]:
            for start in range(0, len(data), 4096):
                yield data[start : start + 4096]

        chunked = client.post("/v1/cases", content=chunks(), headers={"content-type": "application/zip"})
        garbage = client.post("/v1/cases", content=b"not a zip", headers={"content-type": "application/zip"})
        models = client.get("/v1/models")
        metrics = client.get("/metrics").text

    for response in (raw, form, chunked):
        assert response.status_code == 200, response.text
    body = raw.json()
    assert raw.headers["x-request-id"] == "it-raw-1"
    assert body["engine"] == "embedded"
    assert [s["sop_instance_uid"] for s in body["slices"]] == uids
    assert len(body["slices"]) == body["series"]["slices_used"] == 6
    assert 0.0 <= body["ich_probability"] <= 1.0
    assert body["ich_probability"] == max(s["probability"] for s in body["slices"])  # no case model here
    assert body["max_slice_probability"] == body["ich_probability"]
    # Three transports of one study, one answer.
    assert form.json()["slices"] == body["slices"] == chunked.json()["slices"]
    assert garbage.status_code == 400 and garbage.json()["request_id"] == garbage.headers["x-request-id"]
    assert models.status_code == 200 and models.json()["input_size"] > 0
    assert 'ich_http_requests_total{route="/v1/cases",status="200"} 3.0' in metrics

    text = log.read_text()
    assert "it-raw-1" in text  # the request id reaches the log lines
    for patient_data in (PATIENT_NAME, PATIENT_ID, *uids):
        assert patient_data not in text


def test_sigterm_stops_the_gateway_cleanly(tiny_repository: Path, tmp_path: Path) -> None:
    log = tmp_path / "gateway.log"
    process, base = start_gateway(log, ICH_MODEL_REPOSITORY=str(tiny_repository))
    try:
        wait_ready(process, base, log, "/healthz")
        assert process.poll() is None, log.read_text()
        process.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal (exit -15), or exits 0 in older versions.
        assert process.wait(timeout=30) in (0, -signal.SIGTERM), log.read_text()
        assert "Application shutdown complete" in log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_oversized_uploads_are_refused_over_tcp_and_the_server_stays_up(gateway: tuple[str, Path]) -> None:
    base, _ = gateway
    big = b"\0" * (3 * UPLOAD_CAP)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536]

    with httpx.Client(base_url=base, timeout=60.0) as client:
        declared = client.post("/v1/cases", content=big, headers={"content-type": "application/zip"})
        streamed = client.post("/v1/cases", content=chunks(), headers={"content-type": "application/zip"})
        form = client.post("/v1/cases", files={"file": ("big.zip", big, "application/zip")})
        for response in (declared, streamed, form):
            assert response.status_code == 413, response.text
            assert response.json()["code"] == "upload_too_large"
        assert client.get("/healthz").status_code == 200


@pytest.mark.skipif(
    not (SHIPPED_REPOSITORY / "VERSION").is_file() or not EXAMPLES,
    reason="needs the shipped weights (model_repository/) and the example study (examples/*.zip)",
)
def test_shipped_weights_on_the_example_study(tmp_path: Path) -> None:
    """What the README promises a newcomer: ``make serve`` defaults, the example study, every field."""
    # No ICH_ variables: the defaults of `make serve`.
    with serve(tmp_path / "gateway.log") as base, httpx.Client(base_url=base, timeout=600.0) as client:
        response = client.post(
            "/v1/cases", content=EXAMPLES[0].read_bytes(), headers={"content-type": "application/zip"}
        )
        version = (SHIPPED_REPOSITORY / "VERSION").read_text().strip()
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["engine"] == "embedded" and body["model_version"] == version
    assert 0.0 <= body["ich_probability"] <= 1.0
    assert body["ich_detected"] == (body["ich_probability"] >= body["threshold"])
    assert body["hemorrhage_volume_ml"] >= 0.0
    assert body["series"]["slices_used"] == len(body["slices"]) > 0
    assert body["series"]["slice_thickness_mm"] > 0 and len(body["series"]["pixel_spacing_mm"]) == 2
    keys = {"all", "subtype", "sdh", "sah", "small"}
    for item in body["slices"]:
        assert set(item["model_probabilities"]) == set(item["weights"]) == keys
        assert 0.0 <= item["probability"] <= 1.0
    assert [s["index"] for s in body["slices"]] == list(range(len(body["slices"])))
    # The paper's score is always reported; the shipped case model decides from lesions (ich.scoring).
    assert body["max_slice_probability"] == max(s["probability"] for s in body["slices"])
    if (SHIPPED_REPOSITORY / "case_model.json").is_file():
        stored = json.loads((SHIPPED_REPOSITORY / "case_model.json").read_text())
        assert body["threshold"] == stored["threshold"] and body["indeterminate_band"] == stored["band"]
    assert all(body["timing_ms"][k] >= 0 for k in ("decode", "preprocess", "inference", "aggregate", "total"))
