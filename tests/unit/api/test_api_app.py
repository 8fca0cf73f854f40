"""The app around the cases: health, readiness, models, metrics, start-up checks, and the embedded engine.

The embedded-engine tests serve the tiny repository of ``tests.support.tiny_repository`` through
``create_engine`` (as ``ich-serve`` does) and compare what the API returns with the ensemble run directly on
the same preprocessed volume: the gateway must not reorder, drop or mislabel anything on the way.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.settings import Settings, get_settings
from ich import spec
from ich.ensemble import EnsembleRunner
from ich.preprocess import preprocess_volume
from tests.support.dicom_study import study_zip
from tests.support.fake_engine import FakeEngine
from tests.support.tiny_repository import build_tiny_repository

ZIP = {"content-type": "application/zip"}
TINY_SIZE = 16


@pytest.fixture(scope="module")
def tiny_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_repository(tmp_path_factory.mktemp("repo"), size=TINY_SIZE, max_batch_size=2)


@pytest.fixture
def embedded(tiny_repository: Path) -> Iterator[TestClient]:
    settings = Settings(engine="embedded", model_repository=tiny_repository, intra_op_threads=1)
    with TestClient(create_app(settings)) as client:
        yield client


def test_healthz_is_alive_even_when_the_engine_is_down() -> None:
    engine = FakeEngine()
    engine.down = True
    with TestClient(create_app(Settings(), engine=engine)) as client:
        response = client.get("/healthz")
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}


def test_readyz_follows_the_engine() -> None:
    engine = FakeEngine()
    with TestClient(create_app(Settings(retry_after_s=7), engine=engine)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready", "engine": "fake", "model_version": "fake-1"}
        engine.down = True
        down = client.get("/readyz")
        assert down.status_code == 503
        assert down.json()["code"] == "not_ready"
        assert down.json()["request_id"] == down.headers["x-request-id"]
        assert down.headers["retry-after"] == "7"
        engine.down = False
        assert client.get("/readyz").status_code == 200


def test_readyz_answers_503_when_the_readiness_check_itself_fails() -> None:
    class Exploding(FakeEngine):
        async def ready(self) -> bool:
            raise ConnectionError("socket closed")

    with TestClient(create_app(Settings(), engine=Exploding())) as client:
        assert client.get("/readyz").status_code == 503


def test_models_503_when_the_engine_is_down() -> None:
    engine = FakeEngine()
    engine.down = True
    with TestClient(create_app(Settings(), engine=engine)) as client:
        response = client.get("/v1/models")
        assert response.status_code == 503
        assert response.json()["code"] == "engine_unavailable"
        assert "retry-after" in response.headers


def test_metrics_are_prometheus_text_with_every_family() -> None:
    with TestClient(create_app(Settings(), engine=FakeEngine())) as client:
        response = client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        for family in (
            "ich_cases_total", "ich_stage_seconds", "ich_case_probability", "ich_slices_per_case",
            "ich_engine_errors_total", "ich_inflight_cases", "ich_http_requests_total",
        ):
            assert f"# TYPE {family.removesuffix('_total')}" in response.text, family


def test_input_size_setting_must_match_the_engine() -> None:
    app = create_app(Settings(input_size=256), engine=FakeEngine(input_size=32))
    with pytest.raises(RuntimeError, match="ICH_INPUT_SIZE=256"), TestClient(app):
        pass


def test_a_callers_engine_is_not_closed_but_an_owned_one_is(tiny_repository: Path) -> None:
    engine = FakeEngine()
    with TestClient(create_app(Settings(), engine=engine)):
        pass
    assert engine.closed is False
    app = create_app(Settings(model_repository=tiny_repository))
    with TestClient(app):
        owned = app.state.engine
        assert owned is not None and owned.name == "embedded"
    assert app.state.engine is None


def test_settings_come_from_ich_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ICH_ENGINE", "triton")
    monkeypatch.setenv("ICH_TRITON_URL", "triton.example:8001")
    monkeypatch.setenv("ICH_PORT", "9090")
    monkeypatch.setenv("ICH_THRESHOLD", "0.35")
    monkeypatch.setenv("ICH_LOG_LEVEL", "WARNING")
    monkeypatch.setenv("ICH_MAX_UPLOAD_BYTES", "1000")
    settings = Settings()
    assert (settings.engine, settings.triton_url, settings.port) == ("triton", "triton.example:8001", 9090)
    assert (settings.threshold, settings.log_level, settings.max_upload_bytes) == (0.35, "warning", 1000)
    get_settings.cache_clear()
    try:
        assert get_settings() is get_settings()
        assert get_settings().port == 9090
    finally:
        get_settings.cache_clear()


def test_empty_variables_mean_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ICH_API_KEYS_FILE", "")
    monkeypatch.setenv("ICH_INPUT_SIZE", "")
    settings = Settings()
    assert settings.api_keys_file is None and settings.input_size is None


@pytest.mark.parametrize(
    ("name", "value"), [("ICH_ENGINE", "gpu"), ("ICH_THRESHOLD", "1.5"), ("ICH_PORT", "0")]
)
def test_invalid_settings_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=name.removeprefix("ICH_").lower()):
        Settings()


def test_embedded_engine_serves_the_repository_and_matches_the_runner(
    embedded: TestClient, tiny_repository: Path
) -> None:
    rng = np.random.default_rng(3)
    hu = rng.normal(35, 25, size=(5, 40, 48)).astype(np.float32)  # non-square matrix, 5 slices, batch 2
    hu[3, 10:20, 10:30] = 75.0
    data, uids = study_zip(hu, spacing=(0.7, 0.6), thickness=2.5, shuffle=True)
    response = embedded.post("/v1/cases", content=data, headers=ZIP)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["engine"] == "embedded"
    assert body["model_version"] == "tiny-test"

    # The same volume straight through preprocess + runner (rounded HU as stored in the DICOM files).
    runner = EnsembleRunner.from_repository(tiny_repository)
    expected = runner.run(preprocess_volume(np.round(hu), TINY_SIZE))
    got = np.array([s["probability"] for s in body["slices"]])
    np.testing.assert_allclose(got, expected.slice_prob, atol=1e-5)
    assert [s["sop_instance_uid"] for s in body["slices"]] == uids
    assert body["ich_probability"] == pytest.approx(float(expected.slice_prob.max()), abs=1e-5)
    for i, key in enumerate(spec.MODEL_KEYS):
        weights = [s["weights"][key] for s in body["slices"]]
        np.testing.assert_allclose(weights, expected.weights[:, i], atol=1e-5)
        np.testing.assert_allclose(
            [s["model_probabilities"][key] for s in body["slices"]],
            expected.probs[key].reshape(5, -1).max(axis=1),
            atol=1e-5,
        )


def test_embedded_models_lists_the_ensemble_and_its_steps(embedded: TestClient) -> None:
    body = embedded.get("/v1/models").json()
    assert body["engine"] == "embedded"
    assert body["input_size"] == TINY_SIZE
    assert body["ensemble"] == spec.ENSEMBLE_MODEL
    names = {m["name"] for m in body["models"]}
    steps = {spec.WEIGHTING_MODEL, spec.PROB_MAX_MODEL, *spec.BASE_MODELS.values()}
    assert names == {spec.ENSEMBLE_MODEL, *steps}
    ensemble = next(m for m in body["models"] if m["name"] == spec.ENSEMBLE_MODEL)
    assert {t["name"] for t in ensemble["outputs"]} >= {spec.FUSED, spec.SLICE_PROB, spec.WEIGHTS}
    assert embedded.get("/readyz").json()["engine"] == "embedded"


def test_models_json_keeps_its_shape_for_every_entry(embedded: TestClient) -> None:
    """Engines describe models with a typed ``ModelInfo``; the JSON clients read is what DESIGN.md fixes."""
    body = embedded.get("/v1/models").json()
    base = next(m for m in body["models"] if m["name"] == spec.BASE_MODELS["all"])
    assert base == {
        "name": spec.BASE_MODELS["all"],
        "version": "1",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "ready": True,
        "max_batch_size": 2,
        "inputs": [{"name": spec.IMAGE, "datatype": "FP32", "shape": [4, TINY_SIZE, TINY_SIZE]}],
        "outputs": [{"name": spec.PROB, "datatype": "FP32", "shape": [1, TINY_SIZE, TINY_SIZE]}],
    }
    with TestClient(create_app(Settings(), engine=FakeEngine())) as client:
        (entry,) = client.get("/v1/models").json()["models"]
    assert entry == {
        "name": spec.ENSEMBLE_MODEL,
        "version": "1",
        "versions": [],
        "platform": "ensemble",
        "ready": True,
        "max_batch_size": None,
        "inputs": [],
        "outputs": [],
    }


def test_missing_repository_fails_at_start_up(tmp_path: Path) -> None:
    app = create_app(Settings(model_repository=tmp_path / "nothing"))
    with pytest.raises(Exception, match="nothing"), TestClient(app):
        pass


def test_the_gateway_runs_without_torch(tiny_repository: Path) -> None:
    """``make serve`` installs the runtime only: building the app and its engine must not import torch."""
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any 'import torch' now raises ImportError
        "from fastapi.testclient import TestClient\n"
        "from api.app import create_app\n"
        "from api.settings import Settings\n"
        f"app = create_app(Settings(model_repository={str(tiny_repository)!r}))\n"
        "with TestClient(app) as client:\n"
        "    assert client.get('/readyz').status_code == 200\n"
        "    assert client.get('/v1/models').status_code == 200\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_openapi_documents_the_contract() -> None:
    """The published schema carries DESIGN.md's names, both upload forms and every error status."""
    with TestClient(create_app(Settings(), engine=FakeEngine())) as client:
        schema = client.get("/openapi.json").json()
    post = schema["paths"]["/v1/cases"]["post"]
    assert set(post["requestBody"]["content"]) == {"application/zip", "multipart/form-data"}
    assert {"200", "400", "401", "413", "415", "422", "503"} <= set(post["responses"])
    assert "/v1/models" in schema["paths"] and "/readyz" in schema["paths"]
    components = schema["components"]["schemas"]
    case = components["CaseResult"]
    assert set(case["required"]) >= {
        "case_id", "model_version", "engine", "ich_probability", "ich_detected", "threshold",
        "indeterminate", "hemorrhage_volume_ml", "series", "slices", "timing_ms",
    }
    assert set(components["SeriesInfo"]["properties"]) >= {
        "series_instance_uid", "slices_used", "slice_thickness_mm", "pixel_spacing_mm", "skipped",
    }
    assert set(components["SkippedFile"]["required"]) == {"file", "reason"}
    assert set(components["SliceResult"]["required"]) >= {
        "index", "sop_instance_uid", "probability", "model_probabilities", "weights",
    }
    assert set(components["ModelScores"]["required"]) == set(spec.MODEL_KEYS)
    stages = {"decode", "preprocess", "inference", "aggregate", "total"}
    assert set(components["Timing"]["required"]) == stages
    assert set(components["ErrorBody"]["required"]) == {"code", "detail", "request_id"}
