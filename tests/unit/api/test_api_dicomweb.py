"""STOW-RS and the DICOM result routes through the whole app: real SQLite store, spool, workers; fake engine.

A study stored by STOW-RS becomes a job once quiet (origin ``dicomweb``), its SEG, SR and key image are
downloadable as ``application/dicom``, a second STOW of the same study is the same job, and bad requests get
the gateway's JSON errors or the STOW-RS failure items.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.sr.codedict import codes

from api.app import create_app
from api.settings import Settings
from ich.dicom_uids import derived_uid
from tests.support.dicom_results import sr_numbers
from tests.support.dicom_study import PATIENT_ID, PATIENT_NAME
from tests.support.fake_engine import FakeEngine
from tests.support.pacs_study import pacs_study, stow_body

REFERENCED = "00081199"
FAILED = "00081198"
UID_VALUE = "00081155"
FAILURE_REASON = "00081197"


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        data_dir=tmp_path / "data",
        model_repository=tmp_path / "paper-rule-repository",  # no case model: the fake maps' paper rule
        dicom_study_quiet_s=0.3,
        job_lease_s=5.0,
    )
    with TestClient(create_app(settings, engine=FakeEngine(input_size=32))) as test_client:
        yield test_client


def stow(client: TestClient, files: list[bytes], path: str = "/dicomweb/studies") -> Any:
    body, content_type = stow_body(files)
    return client.post(path, content=body, headers={"content-type": content_type})


def wait_for_jobs(client: TestClient, count: int, timeout_s: float = 30.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        items = client.get("/v1/studies").json()["items"]
        if len(items) >= count and all(item["status"] in ("done", "failed") for item in items):
            return [client.get(f"/v1/studies/{item['id']}").json() for item in items]
        assert time.monotonic() < deadline, items
        time.sleep(0.05)


def test_a_stowed_study_becomes_one_job_with_downloadable_results(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    study = pacs_study(slices=4)
    response = stow(client, study.files)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/dicom+json")
    referenced = response.json()[REFERENCED]["Value"]
    assert sorted(item[UID_VALUE]["Value"][0] for item in referenced) == sorted(
        str(ds.SOPInstanceUID) for ds in study.datasets
    )
    assert FAILED not in response.json()

    (job,) = wait_for_jobs(client, 1)
    assert job["status"] == "done" and job["origin"] == "dicomweb" and job["delivery"] is None
    assert job["result"]["ich_detected"] and job["result"]["series"]["slices_used"] == 4

    seg = client.get(f"/v1/studies/{job['id']}/seg")
    assert seg.status_code == 200 and seg.headers["content-type"] == "application/dicom"
    seg_ds = pydicom.dcmread(io.BytesIO(seg.content))
    assert seg_ds.Modality == "SEG" and seg_ds.StudyInstanceUID == study.study_uid
    assert seg_ds.SeriesInstanceUID == derived_uid(job["id"], "seg/series")
    sr = pydicom.dcmread(io.BytesIO(client.get(f"/v1/studies/{job['id']}/sr").content))
    assert sr_numbers(sr)[codes.SCT.Volume.meaning] == job["result"]["hemorrhage_volume_ml"]
    key = pydicom.dcmread(io.BytesIO(client.get(f"/v1/studies/{job['id']}/key-images").content))
    assert key.Modality == "OT" and key.BurnedInAnnotation == "YES" and key.pixel_array.shape == (64, 64, 3)

    again = stow(client, list(reversed(study.files)))
    assert again.status_code == 200
    time.sleep(1.0)
    assert len(client.get("/v1/studies").json()["items"]) == 1  # the same study: the same job
    metrics = client.get("/metrics").text
    assert 'ich_dicom_instances_total{door="dicomweb",outcome="stored"} 8.0' in metrics
    assert 'ich_dicom_studies_total{outcome="queued"} 1.0' in metrics
    assert 'ich_dicom_studies_total{outcome="duplicate"} 1.0' in metrics
    for secret in (PATIENT_NAME, PATIENT_ID, study.study_uid, str(study.datasets[0].SOPInstanceUID)):
        assert secret not in caplog.text


def test_a_negative_study_has_an_sr_only_and_results_wait_for_the_job(client: TestClient) -> None:
    study = pacs_study(slices=3, blob=False)
    assert stow(client, study.files).status_code == 200
    (job,) = wait_for_jobs(client, 1)
    assert not job["result"]["ich_detected"]
    assert client.get(f"/v1/studies/{job['id']}/sr").status_code == 200
    for kind in ("seg", "key-images"):
        missing = client.get(f"/v1/studies/{job['id']}/{kind}")
        assert missing.status_code == 404 and missing.json()["code"] == "not_available"
    unknown = client.get("/v1/studies/00000000-0000-4000-8000-000000000000/sr")
    assert unknown.status_code == 404 and unknown.json()["code"] == "not_found"


def test_parts_that_are_not_ct_instances_fail_alone(client: TestClient) -> None:
    study = pacs_study(slices=2)
    response = stow(client, [*study.files, b"not dicom at all"])
    assert response.status_code == 202
    body = response.json()
    assert len(body[REFERENCED]["Value"]) == 2
    (failure,) = body[FAILED]["Value"]
    assert failure[FAILURE_REASON]["Value"] == [0xC000]
    only_bad = stow(client, [b"x" * 300])
    assert only_bad.status_code == 409 and FAILED in only_bad.json()
    other_study = stow(client, study.files, path="/dicomweb/studies/1.2.3.4")
    assert other_study.status_code == 409
    assert {f[FAILURE_REASON]["Value"][0] for f in other_study.json()[FAILED]["Value"]} == {0xA900}


def test_bad_stow_requests_get_json_errors(client: TestClient) -> None:
    study = pacs_study(slices=1)
    body, _ = stow_body(study.files)
    wrong_type = client.post("/dicomweb/studies", content=body, headers={"content-type": "application/zip"})
    assert wrong_type.status_code == 415 and wrong_type.json()["code"] == "unsupported_media_type"
    json_type = client.post(
        "/dicomweb/studies",
        content=body,
        headers={"content-type": 'multipart/related; type="application/dicom+json"; boundary=x'},
    )
    assert json_type.status_code == 415
    no_boundary = client.post(
        "/dicomweb/studies",
        content=body,
        headers={"content-type": 'multipart/related; type="application/dicom"'},
    )
    assert no_boundary.status_code == 400 and no_boundary.json()["code"] == "invalid_multipart"
    _, content_type = stow_body([])
    empty = client.post("/dicomweb/studies", content=b"", headers={"content-type": content_type})
    assert empty.status_code == 400
    bad_uid = stow(client, study.files, path="/dicomweb/studies/..%2F..%2Fetc")
    assert bad_uid.status_code in (400, 404)


def test_stow_bodies_are_held_to_the_upload_caps(tmp_path: Path) -> None:
    study = pacs_study(slices=3)
    size = max(len(f) for f in study.files)
    settings = Settings(
        data_dir=tmp_path / "data",
        model_repository=tmp_path / "paper-rule-repository",
        max_members=2,
        max_upload_bytes=3 * size - 1,
    )
    with TestClient(create_app(settings, engine=FakeEngine(input_size=32))) as client:
        too_many = stow(client, study.files)
        assert too_many.status_code == 413 and too_many.json()["code"] == "study_too_large"
        body, content_type = stow_body(study.files[:2])
        cut = body[:-40]
        truncated = client.post("/dicomweb/studies", content=cut, headers={"content-type": content_type})
        assert truncated.status_code == 400 and "incomplete" in truncated.json()["detail"]
        declared = client.post(
            "/dicomweb/studies",
            content=body,
            headers={"content-type": content_type, "content-length": str(3 * size + 2 * 1024 * 1024)},
        )
        assert declared.status_code == 413 and declared.json()["code"] == "upload_too_large"
        assert client.get("/v1/studies").json()["items"] == []
    small = settings.model_copy(update={"max_members": 10, "max_upload_bytes": size})
    with TestClient(create_app(small, engine=FakeEngine(input_size=32))) as client:
        too_large = stow(client, study.files[:2])
        assert too_large.status_code == 413 and too_large.json()["code"] == "upload_too_large"
        assert f"limit of {size} bytes" in too_large.json()["detail"]
