"""POST /v1/cases through the whole app with a fake engine: each status with its JSON body, both upload forms.

The fake engine's probability follows the stroke window (see ``tests.support.fake_engine``), so a study
with a blood-density (70 HU) blob is positive, plain 30 HU brain is negative, 41 HU is indeterminate.
"""

from __future__ import annotations

import asyncio
import base64
import io
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from api.app import create_app
from api.settings import Settings
from ich import spec
from ich_devtools.dicom_writer import dataset_bytes, series_datasets, zip_members
from tests.support.asgi_gateway import asgi_client
from tests.support.dicom_study import blob_volume, study_zip
from tests.support.fake_engine import FakeEngine

ZIP = {"content-type": "application/zip"}
#: A repository folder without case_model.json: the fake engine's maps are decided by the paper's rule (the
#: shipped case model is for the shipped weights' maps; api.decision is tested in test_scoring).
PAPER_RULE = Path(tempfile.mkdtemp(prefix="paper-rule-"))


def make_client(engine: FakeEngine, **settings: object) -> TestClient:
    settings.setdefault("model_repository", PAPER_RULE)
    return TestClient(create_app(Settings(**settings), engine=engine))  # type: ignore[arg-type]


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine(input_size=32)


@pytest.fixture
def client(engine: FakeEngine) -> Iterator[TestClient]:
    with make_client(engine) as test_client:
        yield test_client


def assert_error(response: httpx.Response, status: int) -> dict[str, Any]:
    """The status, and the JSON error body every error must have (its request id in the header too)."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) >= {"code", "detail", "request_id"}
    assert body["request_id"] == response.headers["x-request-id"]
    assert isinstance(body["code"], str) and body["code"]
    assert isinstance(body["detail"], str) and body["detail"]
    return body


def test_positive_study_as_raw_zip_gets_every_contract_field(client: TestClient, engine: FakeEngine) -> None:
    data, uids = study_zip(blob_volume(), shuffle=True)
    response = client.post("/v1/cases", content=data, headers=ZIP)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) >= {
        "case_id", "model_version", "engine", "ich_probability", "ich_detected", "threshold",
        "indeterminate", "hemorrhage_volume_ml", "series", "slices", "timing_ms",
    }
    assert body["engine"] == "fake" and body["model_version"] == "fake-1"
    assert body["ich_probability"] == pytest.approx(0.95, abs=1e-4)
    assert body["ich_detected"] is True and body["indeterminate"] is False
    assert body["threshold"] == 0.5
    assert body["indeterminate_band"] == list(spec.INDETERMINATE_BAND)
    series = body["series"]
    assert series["slices_used"] == 4
    assert series["slice_thickness_mm"] == pytest.approx(5.0)
    assert series["pixel_spacing_mm"] == pytest.approx([0.5, 0.5])
    assert isinstance(series["skipped"], list)
    # Slices come back in spatial order whatever the zip order, with the right SOP Instance UIDs.
    assert [s["index"] for s in body["slices"]] == [0, 1, 2, 3]
    assert [s["sop_instance_uid"] for s in body["slices"]] == uids
    blob = body["slices"][2]
    assert blob["probability"] == pytest.approx(0.95, abs=1e-4)
    assert set(blob["model_probabilities"]) == set(spec.MODEL_KEYS) == set(blob["weights"])
    assert blob["model_probabilities"]["small"] == pytest.approx(0.95 * 0.6, abs=1e-4)
    assert blob["weights"]["all"] == pytest.approx(0.3)
    assert body["slices"][0]["probability"] < 0.5
    # The blob: 16 x 16 pixels of 0.5 mm, 5 mm thick = 8 * 8 * 5 mm3 = 0.32 mL (resizing blurs its edge).
    assert body["hemorrhage_volume_ml"] == pytest.approx(0.32, abs=0.06)
    assert blob["hemorrhage_volume_ml"] == pytest.approx(body["hemorrhage_volume_ml"])
    assert set(body["timing_ms"]) == {"decode", "preprocess", "inference", "aggregate", "total"}
    assert body["timing_ms"]["total"] >= body["timing_ms"]["inference"]
    assert engine.calls == [(4, 4, 32, 32)]


def test_multipart_upload_gives_the_same_answer(client: TestClient) -> None:
    data, _ = study_zip(blob_volume(blob_slice=None))
    raw = client.post("/v1/cases", content=data, headers=ZIP).json()
    form = client.post("/v1/cases", files={"file": ("study.zip", data, "application/octet-stream")})
    assert form.status_code == 200, form.text
    assert form.json()["ich_probability"] == raw["ich_probability"]
    assert form.json()["ich_detected"] is False
    assert form.json()["case_id"] != raw["case_id"]


def test_indeterminate_case(client: TestClient) -> None:
    data, _ = study_zip(blob_volume(blob_slice=None, background=41.0))
    body = client.post("/v1/cases", content=data, headers=ZIP).json()
    assert body["indeterminate"] is True
    assert 0.4 <= body["ich_probability"] <= 0.6


def test_threshold_setting_changes_the_call(engine: FakeEngine) -> None:
    data, _ = study_zip(blob_volume(blob_slice=None, background=41.0))
    with make_client(engine, threshold=0.45) as low:
        assert low.post("/v1/cases", content=data, headers=ZIP).json()["ich_detected"] is True
    with make_client(engine, threshold=0.55) as high:
        body = high.post("/v1/cases", content=data, headers=ZIP).json()
        assert body["ich_detected"] is False and body["threshold"] == 0.55


def test_garbage_body_is_400(client: TestClient) -> None:
    assert_error(client.post("/v1/cases", content=b"this is not a zip", headers=ZIP), 400)


def test_zip_without_dicom_is_422_with_reasons(client: TestClient) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("notes.txt", "no images here")
        archive.writestr("scan.jpg", b"\xff\xd8\xff\xe0 not dicom")
    body = assert_error(client.post("/v1/cases", content=buffer.getvalue(), headers=ZIP), 422)
    assert body["reasons"], body


@pytest.mark.parametrize("content_type", ["text/plain", "application/json", "image/jpeg"])
def test_other_content_types_are_415(client: TestClient, content_type: str) -> None:
    data, _ = study_zip(blob_volume())
    body = assert_error(client.post("/v1/cases", content=data, headers={"content-type": content_type}), 415)
    assert body["code"] == "unsupported_media_type"


def test_missing_content_type_is_415(client: TestClient) -> None:
    assert_error(client.post("/v1/cases", content=b""), 415)


def test_declared_length_over_the_cap_is_413_before_reading(engine: FakeEngine) -> None:
    data, _ = study_zip(blob_volume())
    with make_client(engine, max_upload_bytes=len(data) - 1) as small:
        body = assert_error(small.post("/v1/cases", content=data, headers=ZIP), 413)
        assert body["code"] == "upload_too_large"
        assert engine.calls == []


def test_streamed_body_over_the_cap_is_413(engine: FakeEngine) -> None:
    """Chunked upload without Content-Length: the cap is enforced while reading."""
    sent: list[int] = []

    def chunks() -> Iterator[bytes]:
        for _ in range(64):
            sent.append(1)
            yield b"\0" * 1024

    with make_client(engine, max_upload_bytes=10 * 1024) as small:
        response = small.post("/v1/cases", content=chunks(), headers=ZIP)
        assert_error(response, 413)


def test_multipart_file_over_the_cap_is_413(engine: FakeEngine) -> None:
    data, _ = study_zip(blob_volume())
    with make_client(engine, max_upload_bytes=len(data) // 2) as small:
        response = small.post("/v1/cases", files={"file": ("s.zip", data, "application/zip")})
        assert_error(response, 413)


def test_multipart_without_file_field_is_400(client: TestClient) -> None:
    data, _ = study_zip(blob_volume())
    response = client.post("/v1/cases", files={"study": ("s.zip", data, "application/zip")})
    assert assert_error(response, 400)["code"] == "missing_file"


def test_malformed_multipart_is_400(client: TestClient) -> None:
    response = client.post(
        "/v1/cases",
        content=b"--xyz\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nabc",  # never closed
        headers={"content-type": "multipart/form-data; boundary=xyz"},
    )
    assert assert_error(response, 400)["code"] == "invalid_multipart"


def test_engine_down_is_503_with_retry_after(client: TestClient, engine: FakeEngine) -> None:
    engine.down = True
    data, _ = study_zip(blob_volume())
    response = client.post("/v1/cases", content=data, headers=ZIP)
    assert assert_error(response, 503)["code"] == "engine_unavailable"
    assert int(response.headers["retry-after"]) > 0


def test_unexpected_engine_failure_is_a_json_500_without_the_message(
    client: TestClient, engine: FakeEngine, caplog: pytest.LogCaptureFixture
) -> None:
    engine.error = RuntimeError("Doe^John 19700101")  # what a careless library might put in a message
    data, _ = study_zip(blob_volume())
    response = client.post("/v1/cases", content=data, headers={**ZIP, "X-Request-ID": "trace-42"})
    body = assert_error(response, 500)
    assert body == {"code": "internal_error", "detail": body["detail"], "request_id": "trace-42"}
    assert "Doe^John" not in response.text
    assert "trace-42" in caplog.text
    assert "Doe^John" not in caplog.text


def test_request_id_is_honoured_or_replaced(client: TestClient) -> None:
    ok = client.get("/healthz", headers={"X-Request-ID": "ris-2026.11.29:abc_1"})
    assert ok.headers["x-request-id"] == "ris-2026.11.29:abc_1"
    unsafe = client.get("/nope", headers={"X-Request-ID": "bad id\nwith newline"})
    assert unsafe.headers["x-request-id"] != "bad id\nwith newline"
    assert assert_error(unsafe, 404)["code"] == "not_found"


def test_wrong_method_is_json_405(client: TestClient) -> None:
    assert assert_error(client.get("/v1/cases"), 405)["code"] == "method_not_allowed"


def test_metrics_count_cases_by_outcome_and_stage(client: TestClient) -> None:
    positive, _ = study_zip(blob_volume())
    negative, _ = study_zip(blob_volume(blob_slice=None))
    client.post("/v1/cases", content=positive, headers=ZIP)
    client.post("/v1/cases", content=negative, headers=ZIP)
    client.post("/v1/cases", content=b"junk", headers=ZIP)
    text = client.get("/metrics").text
    assert 'ich_cases_total{outcome="positive"} 1.0' in text
    assert 'ich_cases_total{outcome="negative"} 1.0' in text
    assert 'ich_cases_total{outcome="rejected"} 1.0' in text
    for stage in ("decode", "preprocess", "inference", "aggregate"):
        assert f'ich_stage_seconds_count{{stage="{stage}"}} 2.0' in text
    assert "ich_case_probability_count 2.0" in text
    assert "ich_slices_per_case_sum 8.0" in text
    assert "ich_inflight_cases 0.0" in text
    assert 'ich_http_requests_total{route="/v1/cases",status="200"} 2.0' in text
    # No study identifiers in any label.
    assert "1.2.826" not in text


def test_engine_errors_are_counted_by_reason(client: TestClient, engine: FakeEngine) -> None:
    data, _ = study_zip(blob_volume())
    engine.down = True
    client.post("/v1/cases", content=data, headers=ZIP)
    engine.down = False
    engine.error = RuntimeError("boom")
    client.post("/v1/cases", content=data, headers=ZIP)
    text = client.get("/metrics").text
    assert 'ich_engine_errors_total{reason="unavailable"} 1.0' in text
    assert 'ich_engine_errors_total{reason="error"} 1.0' in text
    assert 'ich_cases_total{outcome="error"} 2.0' in text


def test_two_apps_keep_separate_metrics(engine: FakeEngine) -> None:
    data, _ = study_zip(blob_volume())
    with make_client(engine) as first, make_client(FakeEngine()) as second:
        first.post("/v1/cases", content=data, headers=ZIP)
        assert 'ich_cases_total{outcome="positive"} 1.0' in first.get("/metrics").text
        assert 'ich_cases_total{outcome="positive"} 0.0' in second.get("/metrics").text


def test_include_overlays_adds_png_previews_of_lesion_slices(client: TestClient) -> None:
    data, uids = study_zip(blob_volume())
    plain = client.post("/v1/cases", content=data, headers=ZIP).json()
    assert plain["overlays"] is None
    body = client.post("/v1/cases?include=overlays", content=data, headers=ZIP).json()
    assert [o["index"] for o in body["overlays"]] == [2]  # the only slice with a lesion
    overlay = body["overlays"][0]
    assert overlay["sop_instance_uid"] == uids[2] and overlay["media_type"] == "image/png"
    image = Image.open(io.BytesIO(base64.b64decode(overlay["data_base64"])))
    assert image.size == (64, 64) and image.mode == "RGB"
    pixels = np.asarray(image)
    red = (pixels[..., 0] == 255) & (pixels[..., 1] == 0) & (pixels[..., 2] == 0)
    rows, cols = np.nonzero(red)
    # The outline sits on the blob's edge (pixels 24..39), not elsewhere.
    assert red.any() and rows.min() >= 22 and rows.max() <= 41 and cols.min() >= 22 and cols.max() <= 41


def test_negative_case_has_no_overlays_and_unknown_options_are_422(client: TestClient) -> None:
    data, _ = study_zip(blob_volume(blob_slice=None))
    assert client.post("/v1/cases?include=overlays", content=data, headers=ZIP).json()["overlays"] == []
    response = client.post("/v1/cases?include=overlays,pixels", content=data, headers=ZIP)
    assert "pixels" in assert_error(response, 422)["detail"]


async def test_over_the_inflight_limit_without_a_line_is_503_busy_while_probes_still_answer() -> None:
    """One case held inside the engine: the event loop stays free, and a second case is shed (no line)."""
    engine = FakeEngine()
    settings = Settings(
        max_inflight_cases=1, max_waiting_cases=0, retry_after_s=3, model_repository=PAPER_RULE
    )
    app = create_app(settings, engine=engine)
    data, _ = study_zip(blob_volume())
    engine.gate = asyncio.Event()
    async with asgi_client(app) as client:
        first = asyncio.create_task(client.post("/v1/cases", content=data, headers=ZIP))
        await asyncio.wait_for(engine.entered.wait(), timeout=30)
        assert (await client.get("/healthz")).status_code == 200
        second = await client.post("/v1/cases", content=data, headers=ZIP)
        assert assert_error(second, 503)["code"] == "busy"
        assert second.headers["retry-after"] == "3"
        assert "ich_inflight_cases 1.0" in (await client.get("/metrics")).text
        engine.gate.set()
        assert (await first).status_code == 200
        third = await client.post("/v1/cases", content=data, headers=ZIP)
        assert third.status_code == 200


def test_include_seg_returns_a_dicom_seg_referencing_the_series(client: TestClient) -> None:
    data, uids = study_zip(blob_volume())
    body = client.post("/v1/cases?include=seg,overlays", content=data, headers=ZIP).json()
    assert body["overlays"] and body["seg"]
    seg = pydicom.dcmread(io.BytesIO(base64.b64decode(body["seg"]["data_base64"])))
    assert seg.Modality == "SEG"
    assert str(seg.SOPInstanceUID) == body["seg"]["sop_instance_uid"]
    assert seg.SeriesInstanceUID != body["series"]["series_instance_uid"]  # a new series over the CT
    referenced = {
        str(item.ReferencedSOPInstanceUID)
        for frame in seg.PerFrameFunctionalGroupsSequence
        for item in frame.DerivationImageSequence[0].SourceImageSequence
    }
    assert referenced == {uids[2]}  # only the lesion slice has a frame
    frames = seg.pixel_array.reshape(-1, 64, 64)
    assert frames.shape[0] == body["seg"]["frames"] == 1
    assert frames[0, 26:38, 26:38].all() and not frames[0, :20].any()


def test_include_seg_is_null_for_a_case_without_lesion(client: TestClient) -> None:
    data, _ = study_zip(blob_volume(blob_slice=None))
    body = client.post("/v1/cases?include=seg", content=data, headers=ZIP).json()
    assert body["seg"] is None and body["overlays"] is None


def test_seg_impossible_for_the_series_is_a_warning_not_a_failure(client: TestClient) -> None:
    datasets = series_datasets(blob_volume())
    for ds in datasets:
        del ds.FrameOfReferenceUID  # a SEG must reference a frame of reference
    data = zip_members({f"s/{i}.dcm": dataset_bytes(ds) for i, ds in enumerate(datasets)})
    response = client.post("/v1/cases?include=seg", content=data, headers=ZIP)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["seg"] is None and body["ich_detected"] is True
    assert any("DICOM SEG" in w and "FrameOfReferenceUID" in w for w in body["warnings"]), body["warnings"]


@pytest.mark.parametrize("media_type", ["application/x-zip-compressed", "Application/ZIP; charset=binary"])
def test_zip_media_type_variants_are_accepted(client: TestClient, media_type: str) -> None:
    data, _ = study_zip(blob_volume())
    assert client.post("/v1/cases", content=data, headers={"content-type": media_type}).status_code == 200


def test_multipart_with_other_fields_uses_the_file_field(client: TestClient) -> None:
    data, _ = study_zip(blob_volume())
    response = client.post(
        "/v1/cases",
        data={"note": "from the RIS", "priority": "high"},
        files={"file": ("study.zip", data, "application/zip"), "extra": ("x.bin", b"junk", "text/plain")},
    )
    assert response.status_code == 200, response.text
    assert response.json()["ich_detected"] is True
