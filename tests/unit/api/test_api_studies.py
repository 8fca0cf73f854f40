"""``/v1/studies`` through the whole app: real SQLite store, real workers in the app's loop, the fake engine.

Each test's store lives in its own folder. The fake engine's probability follows the stroke window (see
``tests.support.fake_engine``), so results are known; a job's result must be what ``/v1/cases`` answers.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.engines.base import EngineUnavailableError
from api.settings import Settings
from tests.support.dicom_study import PATIENT_ID, PATIENT_NAME, blob_volume, study_zip
from tests.support.fake_engine import FakeEngine

ZIP = {"content-type": "application/zip"}
#: Fields of a result that differ between two analyses of one study by design.
PER_ANALYSIS = ("case_id", "timing_ms")


def make_client(engine: FakeEngine, tmp_path: Path, **settings: Any) -> TestClient:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "model_repository": tmp_path / "paper-rule-repository",  # no case model: the fake maps' paper rule
        "job_lease_s": 3.0,
        "job_retry_backoff_s": 0.05,
        **settings,
    }
    return TestClient(create_app(Settings(**values), engine=engine))


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine(input_size=32)


@pytest.fixture
def client(engine: FakeEngine, tmp_path: Path) -> Iterator[TestClient]:
    with make_client(engine, tmp_path) as test_client:
        yield test_client


def wait_finished(client: TestClient, job_id: str, timeout_s: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        response = client.get(f"/v1/studies/{job_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        if body["status"] in ("done", "failed"):
            return body
        assert time.monotonic() < deadline, f"job still {body['status']} after {timeout_s} s"
        time.sleep(0.05)


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["code"] == code and body["detail"]
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def same_analysis(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return {k: v for k, v in a.items() if k not in PER_ANALYSIS} == {
        k: v for k, v in b.items() if k not in PER_ANALYSIS
    }


def test_a_queued_study_gets_the_result_cases_gives(
    client: TestClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    data, uids = study_zip(blob_volume(), shuffle=True)
    accepted = client.post("/v1/studies", content=data, headers=ZIP)
    assert accepted.status_code == 202, accepted.text
    body = accepted.json()
    assert set(body) == {"id", "status", "created_at"} and body["status"] == "queued"
    assert accepted.headers["location"] == f"/v1/studies/{body['id']}"
    stored = tmp_path / "data" / "studies" / f"{body['id']}.zip"
    assert hashlib.sha256(stored.read_bytes()).digest() == hashlib.sha256(data).digest()

    job = wait_finished(client, body["id"])
    assert set(job) == {
        "id", "status", "created_at", "started_at", "finished_at", "attempts", "error", "result",
        "origin", "delivery",
    }  # fmt: skip
    assert job["origin"] == "upload" and job["delivery"] is None
    assert job["status"] == "done" and job["attempts"] == 1 and job["error"] is None
    assert job["created_at"] == body["created_at"]
    assert job["created_at"] <= job["started_at"] <= job["finished_at"]
    direct = client.post("/v1/cases", content=data, headers=ZIP).json()
    assert same_analysis(job["result"], direct)
    assert job["result"]["ich_probability"] == pytest.approx(0.95, abs=1e-4)
    assert [s["sop_instance_uid"] for s in job["result"]["slices"]] == uids

    metrics = client.get("/metrics").text
    assert 'ich_job_attempts_total{outcome="done"} 1.0' in metrics
    assert "ich_job_queue_seconds_count 1.0" in metrics
    assert 'ich_jobs{status="queued"}' in metrics and "ich_job_oldest_queued_seconds" in metrics
    for patient_data in (PATIENT_NAME, PATIENT_ID, *uids):
        assert patient_data not in caplog.text


def test_multipart_upload_and_include_options_are_kept(client: TestClient) -> None:
    data, _ = study_zip(blob_volume())
    accepted = client.post(
        "/v1/studies?include=overlays", files={"file": ("study.zip", data, "application/zip")}
    )
    assert accepted.status_code == 202, accepted.text
    job = wait_finished(client, accepted.json()["id"])
    assert job["status"] == "done"
    assert job["result"]["overlays"] and job["result"]["overlays"][0]["media_type"] == "image/png"
    assert_error(
        client.post("/v1/studies?include=everything", content=data, headers=ZIP), 422, "invalid_request"
    )


def test_the_same_idempotency_key_twice_gives_one_job(client: TestClient) -> None:
    data, _ = study_zip(blob_volume())
    key = {"Idempotency-Key": "pacs-7f3a-0001", **ZIP}
    first = client.post("/v1/studies", content=data, headers=key)
    second = client.post("/v1/studies", content=data, headers=key)
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    assert second.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first.headers
    assert len(client.get("/v1/studies").json()["items"]) == 1
    other, _ = study_zip(blob_volume(blob_slice=None))
    conflict = assert_error(
        client.post("/v1/studies", content=other, headers=key), 409, "idempotency_key_conflict"
    )
    assert conflict["id"] == first.json()["id"]
    bad_key = {"Idempotency-Key": "has spaces in it", **ZIP}
    assert_error(client.post("/v1/studies", content=data, headers=bad_key), 400, "invalid_idempotency_key")
    assert len(client.get("/v1/studies").json()["items"]) == 1


def test_bad_uploads_get_the_cases_errors_and_store_nothing(engine: FakeEngine, tmp_path: Path) -> None:
    data, _ = study_zip(blob_volume())
    with make_client(engine, tmp_path, max_upload_bytes=len(data) - 1) as client:
        assert_error(client.post("/v1/studies", content=b"not a zip", headers=ZIP), 400, "invalid_archive")
        assert_error(client.post("/v1/studies", content=data, headers=ZIP), 413, "upload_too_large")
        assert_error(
            client.post("/v1/studies", content=b"x", headers={"content-type": "text/plain"}),
            415,
            "unsupported_media_type",
        )
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("../escape.dcm", b"x")
        assert_error(
            client.post("/v1/studies", content=buffer.getvalue(), headers=ZIP), 400, "unsafe_archive"
        )
    with make_client(engine, tmp_path, max_members=2) as client:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for i in range(3):
                archive.writestr(f"IM{i}.dcm", b"x")
        body = assert_error(
            client.post("/v1/studies", content=buffer.getvalue(), headers=ZIP), 413, "study_too_large"
        )
        assert "members" in body["detail"]
        assert client.get("/v1/studies").json() == {"items": [], "next_cursor": None}
        assert not list((tmp_path / "data" / "studies").iterdir())


def test_a_study_without_ct_fails_with_the_reasons_cases_gives(client: TestClient) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("notes.txt", "no images here")
    data = buffer.getvalue()
    accepted = client.post("/v1/studies", content=data, headers=ZIP)
    assert accepted.status_code == 202
    job = wait_finished(client, accepted.json()["id"])
    direct = assert_error(client.post("/v1/cases", content=data, headers=ZIP), 422, "no_usable_series")
    assert job["status"] == "failed" and job["attempts"] == 1 and job["result"] is None
    assert job["error"] == {"code": direct["code"], "detail": direct["detail"], "reasons": direct["reasons"]}


def test_jobs_wait_while_the_engine_is_down(client: TestClient, engine: FakeEngine) -> None:
    engine.down = True
    data, _ = study_zip(blob_volume())
    job_id = client.post("/v1/studies", content=data, headers=ZIP).json()["id"]
    time.sleep(1.5)
    waiting = client.get(f"/v1/studies/{job_id}").json()
    assert waiting["status"] == "queued" and waiting["attempts"] == 0
    engine.down = False
    job = wait_finished(client, job_id)
    assert job["status"] == "done" and job["attempts"] == 1


def test_an_engine_failing_mid_analysis_is_retried_then_the_job_fails(
    engine: FakeEngine, tmp_path: Path
) -> None:
    engine.error = EngineUnavailableError("triton timed out", reason="timeout")
    data, _ = study_zip(blob_volume())
    with make_client(engine, tmp_path, job_max_attempts=3) as client:
        job_id = client.post("/v1/studies", content=data, headers=ZIP).json()["id"]
        job = wait_finished(client, job_id)
        assert job["status"] == "failed" and job["attempts"] == 3
        assert job["error"]["code"] == "engine_unavailable" and "3 attempts" in job["error"]["detail"]
        metrics = client.get("/metrics").text
        assert 'ich_job_attempts_total{outcome="retried"} 2.0' in metrics
        engine.error = None
        retry = client.post("/v1/studies", content=data, headers=ZIP).json()["id"]
        assert wait_finished(client, retry)["status"] == "done"


def test_a_full_queue_answers_429_with_retry_after(engine: FakeEngine, tmp_path: Path) -> None:
    data, _ = study_zip(blob_volume())
    with make_client(engine, tmp_path, job_workers=0, max_queued_jobs=2, retry_after_s=7) as client:
        key = {"Idempotency-Key": "first", **ZIP}
        first = client.post("/v1/studies", content=data, headers=key)
        assert client.post("/v1/studies", content=data, headers=ZIP).status_code == 202
        full = client.post("/v1/studies", content=data, headers=ZIP)
        assert_error(full, 429, "queue_full")
        assert full.headers["retry-after"] == "7"
        replay = client.post("/v1/studies", content=data, headers=key)  # a retried upload still gets its job
        assert replay.status_code == 202 and replay.json()["id"] == first.json()["id"]


def test_listing_pages_newest_first_and_filters_by_status(engine: FakeEngine, tmp_path: Path) -> None:
    data, _ = study_zip(blob_volume())
    with make_client(engine, tmp_path, job_workers=0) as client:
        ids = [client.post("/v1/studies", content=data, headers=ZIP).json()["id"] for _ in range(5)]
        seen: list[str] = []
        page = client.get("/v1/studies", params={"limit": 2}).json()
        while True:
            assert len(page["items"]) <= 2 and all("result" not in item for item in page["items"])
            seen += [item["id"] for item in page["items"]]
            if page["next_cursor"] is None:
                break
            page = client.get("/v1/studies", params={"limit": 2, "cursor": page["next_cursor"]}).json()
        assert seen == ids[::-1]
        assert len(client.get("/v1/studies", params={"status": "queued"}).json()["items"]) == 5
        assert client.get("/v1/studies", params={"status": "done"}).json()["items"] == []
        assert_error(client.get("/v1/studies", params={"status": "lost"}), 422, "invalid_request")
        assert_error(client.get("/v1/studies", params={"cursor": "%%%"}), 422, "invalid_request")
        assert_error(client.get("/v1/studies", params={"limit": 0}), 422, "invalid_request")


def test_delete_removes_the_study_and_its_result(client: TestClient, tmp_path: Path) -> None:
    data, _ = study_zip(blob_volume())
    job_id = client.post("/v1/studies", content=data, headers=ZIP).json()["id"]
    assert wait_finished(client, job_id)["status"] == "done"
    assert client.delete(f"/v1/studies/{job_id}").status_code == 204
    assert_error(client.get(f"/v1/studies/{job_id}"), 404, "not_found")
    assert_error(client.delete(f"/v1/studies/{job_id}"), 404, "not_found")
    assert not (tmp_path / "data" / "studies" / f"{job_id}.zip").exists()
    assert_error(client.get("/v1/studies/not-a-uuid"), 404, "not_found")
    assert_error(client.get("/v1/studies/00000000-0000-4000-8000-000000000000"), 404, "not_found")


def test_studies_need_a_key_when_keys_are_configured(engine: FakeEngine, tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text(hashlib.sha256(b"secret-key").hexdigest() + "\n")
    data, _ = study_zip(blob_volume())
    with make_client(engine, tmp_path, api_keys_file=keys) as client:
        assert_error(client.post("/v1/studies", content=data, headers=ZIP), 401, "unauthorized")
        assert_error(client.get("/v1/studies"), 401, "unauthorized")
        ok = client.get("/v1/studies", headers={"Authorization": "Bearer secret-key"})
        assert ok.status_code == 200


def test_an_unreachable_database_is_503_not_500(client: TestClient) -> None:
    # A real connection attempt to a port nobody listens on, as when PostgreSQL is down.
    from sqlalchemy import create_engine

    store = client.app.state.jobs.store  # type: ignore[attr-defined]
    working, store.engine = store.engine, create_engine("postgresql+psycopg://ich@127.0.0.1:1/ich")
    try:
        data, _ = study_zip(blob_volume())
        for response in (
            client.post("/v1/studies", content=data, headers=ZIP),
            client.get("/v1/studies"),
            client.get("/v1/studies/00000000-0000-4000-8000-000000000000"),
        ):
            assert_error(response, 503, "queue_unavailable")
            assert response.headers["retry-after"] == "5"
    finally:
        store.engine.dispose()
        store.engine = working


def test_openapi_documents_the_study_routes(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert set(paths["/v1/studies"]) == {"get", "post"}
    assert set(paths["/v1/studies/{study_id}"]) == {"get", "delete"}
    assert "429" in paths["/v1/studies"]["post"]["responses"]
