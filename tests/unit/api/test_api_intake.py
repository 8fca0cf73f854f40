"""Intake outcomes as the API reports them: each intake error's status, code and reasons, and the account
of what was used (``skipped``, ``passed_over``, ``warnings``), with real DICOM built by
``ich_devtools.dicom_writer``.

The intake rules themselves are tested in the intake tests; these check that the gateway passes every
outcome through to the client unchanged and with the right HTTP status.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydicom.uid import RLELossless

from api.app import create_app
from api.settings import Settings
from ich_devtools.dicom_writer import dataset_bytes, series_datasets, series_zip, zip_members
from tests.support.fake_engine import FakeEngine

ZIP = {"content-type": "application/zip"}


def brain(n: int = 4, size: int = 48) -> np.ndarray:
    hu = np.full((n, size, size), 30.0, np.float32)
    hu[n // 2, 10:20, 10:20] = 70.0
    return hu


def members(hu: np.ndarray, folder: str, **options: Any) -> dict[str, bytes]:
    return {f"{folder}/{i:03d}.dcm": dataset_bytes(ds) for i, ds in enumerate(series_datasets(hu, **options))}


def error_body(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["request_id"] == response.headers["x-request-id"]
    return body


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(create_app(Settings(), engine=FakeEngine())) as test_client:
        yield test_client


def test_localizer_and_non_ct_series_are_passed_over_with_reasons(client: TestClient) -> None:
    study = {
        **members(brain(6), "axial", series_instance_uid="1.2.826.0.1.3680043.10.1.1"),
        **members(
            brain(1), "scout", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
            series_instance_uid="1.2.826.0.1.3680043.10.1.2",
        ),
        **members(brain(8), "mr", modality="MR", series_instance_uid="1.2.826.0.1.3680043.10.1.3"),
        "README.txt": b"exported by the PACS",
    }
    response = client.post("/v1/cases", content=zip_members(study), headers=ZIP)
    assert response.status_code == 200, response.text
    series = response.json()["series"]
    assert series["series_instance_uid"] == "1.2.826.0.1.3680043.10.1.1"
    assert series["slices_used"] == 6
    passed = {p["series_instance_uid"]: p for p in series["passed_over"]}
    assert set(passed) == {"1.2.826.0.1.3680043.10.1.2", "1.2.826.0.1.3680043.10.1.3"}
    assert all(p["reason"] for p in passed.values())
    assert passed["1.2.826.0.1.3680043.10.1.3"]["modality"] == "MR"
    assert any(s["file"] == "README.txt" and s["reason"] for s in series["skipped"])


def test_compressed_transfer_syntax_gives_the_same_answer(client: TestClient) -> None:
    hu = brain()
    plain = client.post("/v1/cases", content=series_zip(hu), headers=ZIP).json()
    rle = client.post("/v1/cases", content=series_zip(hu, transfer_syntax=RLELossless), headers=ZIP)
    assert rle.status_code == 200, rle.text
    assert [s["probability"] for s in rle.json()["slices"]] == [s["probability"] for s in plain["slices"]]


def test_single_slice_study_is_valid(client: TestClient) -> None:
    response = client.post("/v1/cases", content=series_zip(brain(1)), headers=ZIP)
    assert response.status_code == 200, response.text
    assert response.json()["series"]["slices_used"] == 1


def test_gantry_tilt_reaches_the_warnings(client: TestClient) -> None:
    response = client.post("/v1/cases", content=series_zip(brain(5), gantry_tilt_deg=15.0), headers=ZIP)
    assert response.status_code == 200, response.text
    assert any("tilt" in w.lower() for w in response.json()["warnings"])


def test_only_a_localizer_is_422_with_the_series_reason(client: TestClient) -> None:
    data = series_zip(brain(1), image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    body = error_body(client.post("/v1/cases", content=data, headers=ZIP), 422)
    assert body["code"] == "no_usable_series"
    assert any("series_instance_uid" in r and r["reason"] for r in body["reasons"])


def test_traversal_path_is_400_unsafe_archive(client: TestClient) -> None:
    data = zip_members({**members(brain(2), "ok"), "../../etc/evil.dcm": b"x"})
    assert error_body(client.post("/v1/cases", content=data, headers=ZIP), 400)["code"] == "unsafe_archive"


def test_member_and_uncompressed_caps_are_413() -> None:
    data = series_zip(brain(6))
    for settings in (Settings(max_members=3), Settings(max_uncompressed_bytes=10_000)):
        with TestClient(create_app(settings, engine=FakeEngine())) as capped:
            response = capped.post("/v1/cases", content=data, headers=ZIP)
            assert error_body(response, 413)["code"] == "study_too_large"


def test_truncated_zip_is_400(client: TestClient) -> None:
    data = series_zip(brain())
    body = error_body(client.post("/v1/cases", content=data[: len(data) // 2], headers=ZIP), 400)
    assert body["code"] == "invalid_archive"
