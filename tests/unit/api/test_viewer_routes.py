"""The viewer's routes through the whole app: the page, its assets, the slice PNGs, the offline docs.

A real SQLite job store and workers in the app's loop with the fake engine (``tests.support.fake_engine``),
so the mask is known: the blob of blood-like voxels.
"""

from __future__ import annotations

import base64
import hashlib
import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from api.app import create_app
from api.settings import Settings
from tests.support.dicom_study import PATIENT_ID, PATIENT_NAME, study_zip
from tests.support.fake_engine import FakeEngine

ZIP = {"content-type": "application/zip"}
N, SIZE = 5, 128
BLOB = (slice(70, 100), slice(40, 80))  # rows, columns: below the caption, right of the marker


def _volume() -> np.ndarray:
    hu = np.full((N, SIZE, SIZE), 30.0, np.float32)
    hu[2][BLOB] = 70.0
    return hu


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        data_dir=tmp_path / "data",
        model_repository=tmp_path / "paper-rule-repository",  # no case model: the fake maps' paper rule
    )
    with TestClient(create_app(settings, engine=FakeEngine(input_size=32))) as test_client:
        yield test_client


def _done(client: TestClient, include: str = "seg") -> str:
    data, _ = study_zip(_volume())
    response = client.post(f"/v1/studies?include={include}", content=data, headers=ZIP)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    deadline = time.monotonic() + 30
    while client.get(f"/v1/studies/{job_id}").json()["status"] != "done":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return job_id


def _rgb(response: Any) -> np.ndarray:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))


def _red(rgb: np.ndarray) -> np.ndarray:
    return (rgb[..., 0] == 255) & (rgb[..., 1] == 0) & (rgb[..., 2] == 0)


def test_the_page_and_its_assets_are_served_without_patient_data(client: TestClient) -> None:
    for path in ("/", "/viewer", "/viewer?study=x"):
        page = client.get(path)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "not for clinical use" in page.text.lower()
        assert "http://" not in page.text and "https://" not in page.text  # nothing from elsewhere
    for asset in ("viewer.js", "viewer.css"):
        response = client.get(f"/static/viewer/{asset}")
        assert response.status_code == 200 and len(response.content) > 1000
        assert "cdn" not in response.text.lower()
    assert client.get("/static/viewer/nothing.js").status_code == 404


def test_docs_and_redoc_use_assets_from_the_gateway(client: TestClient) -> None:
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/static/docs/swagger-ui-bundle.js" in docs.text
    redoc = client.get("/redoc")
    assert redoc.status_code == 200 and "/static/docs/redoc.standalone.js" in redoc.text
    for text in (docs.text, redoc.text):
        assert "cdn." not in text and "fonts.googleapis" not in text
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"):
        response = client.get(f"/static/docs/{asset}")
        assert response.status_code == 200 and len(response.content) > 100_000
    assert client.get("/docs/oauth2-redirect").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert "/v1/studies/{study_id}/slices/{index}.png" in paths
    assert "/" not in paths and "/viewer" not in paths


def test_slices_are_captioned_pngs_with_the_outline_on_the_mask(client: TestClient) -> None:
    job_id = _done(client)
    url = f"/v1/studies/{job_id}/slices"
    lesion = client.get(f"{url}/2.png")
    rgb = _rgb(lesion)
    assert rgb.shape == (SIZE, SIZE, 3) and lesion.headers["x-ich-mask"] == "outlined"
    red = _red(rgb)
    rows, cols = np.nonzero(red)
    assert red.sum() > 50
    assert rows.min() >= 68 and rows.max() <= 101 and cols.min() >= 38 and cols.max() <= 81
    # Caption (top left) and marker (left edge): grey text, drawn on every slice.
    plain = _rgb(client.get(f"{url}/0.png"))
    assert not _red(plain).any()
    assert (plain[:30, :] != plain[64, 64]).any()
    # Outline off: the same slice without red; other windows differ.
    off = client.get(f"{url}/2.png?outline=false")
    assert off.headers["x-ich-mask"] == "off" and not _red(_rgb(off)).any()
    bone = _rgb(client.get(f"{url}/2.png?window=bone&outline=false"))
    assert bone.shape == rgb.shape and not np.array_equal(bone, _rgb(off))


def test_slice_pngs_are_cached_and_revalidated(client: TestClient) -> None:
    job_id = _done(client)
    cache = client.app.state.slice_images  # type: ignore[attr-defined]
    first = client.get(f"/v1/studies/{job_id}/slices/1.png")
    again = client.get(f"/v1/studies/{job_id}/slices/1.png?window=stroke")
    assert first.status_code == again.status_code == 200
    assert cache.decodes == 1  # one decode of the stored study for every picture
    assert "max-age" in first.headers["cache-control"]
    etag = first.headers["etag"]
    not_modified = client.get(f"/v1/studies/{job_id}/slices/1.png", headers={"If-None-Match": etag})
    assert not_modified.status_code == 304 and not not_modified.content
    assert again.headers["etag"] != etag


def test_slice_errors_are_json(client: TestClient) -> None:
    job_id = _done(client)
    for path, status, code in [
        (f"/v1/studies/{job_id}/slices/{N}.png", 404, "not_found"),
        (f"/v1/studies/{job_id}/slices/-1.png", 404, "not_found"),
        ("/v1/studies/00000000-0000-4000-8000-000000000000/slices/0.png", 404, "not_found"),
        ("/v1/studies/not-an-id/slices/0.png", 404, "not_found"),
        (f"/v1/studies/{job_id}/slices/0.png?window=lung", 422, "invalid_request"),
        (f"/v1/studies/{job_id}/slices/x.png", 422, "invalid_request"),
    ]:
        response = client.get(path)
        assert response.status_code == status, (path, response.text)
        body = response.json()
        assert body["code"] == code and body["detail"] and body["request_id"]
    assert client.delete(f"/v1/studies/{job_id}").status_code == 204
    assert client.get(f"/v1/studies/{job_id}/slices/0.png").status_code == 404  # never from the cache


def test_a_job_without_its_seg_says_the_mask_is_unavailable(client: TestClient) -> None:
    job_id = _done(client, include="overlays")
    response = client.get(f"/v1/studies/{job_id}/slices/2.png")
    assert response.headers["x-ich-mask"] == "unavailable" and not _red(_rgb(response)).any()


def test_a_study_not_done_is_409(client: TestClient) -> None:
    engine: FakeEngine = client.app.state.engine  # type: ignore[attr-defined]
    engine.down = True  # workers claim nothing while the engine is not ready: the job stays queued
    data, _ = study_zip(_volume())
    job_id = client.post("/v1/studies", content=data, headers=ZIP).json()["id"]
    response = client.get(f"/v1/studies/{job_id}/slices/0.png")
    assert response.status_code == 409 and response.json()["code"] == "study_not_done"


def test_overlays_of_the_result_carry_the_caption(client: TestClient) -> None:
    job_id = _done(client, include="overlays,seg")
    result = client.get(f"/v1/studies/{job_id}").json()["result"]
    (overlay,) = result["overlays"]
    rgb = np.asarray(Image.open(io.BytesIO(base64.b64decode(overlay["data_base64"]))).convert("RGB"))
    slice_png = _rgb(client.get(f"/v1/studies/{job_id}/slices/2.png"))
    np.testing.assert_array_equal(rgb, slice_png)  # the same picture: outline, caption and marker
    assert PATIENT_NAME not in str(result) and PATIENT_ID not in str(result)


def test_with_api_keys_the_page_is_public_and_its_pictures_need_the_key(tmp_path: Path) -> None:
    key = "viewer-test-key"
    keys = tmp_path / "keys.txt"
    keys.write_text(hashlib.sha256(key.encode()).hexdigest() + "\n", encoding="utf-8")
    settings = Settings(
        data_dir=tmp_path / "data", model_repository=tmp_path / "paper-rule-repository", api_keys_file=keys
    )
    auth = {"Authorization": f"Bearer {key}"}
    with TestClient(create_app(settings, engine=FakeEngine(input_size=32))) as client:
        assert client.get("/").status_code == 200
        assert client.get("/static/viewer/viewer.js").status_code == 200
        assert client.get("/docs").status_code == 200
        data, _ = study_zip(_volume())
        job_id = client.post("/v1/studies?include=seg", content=data, headers={**ZIP, **auth}).json()["id"]
        deadline = time.monotonic() + 30
        while client.get(f"/v1/studies/{job_id}", headers=auth).json()["status"] != "done":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        refused = client.get(f"/v1/studies/{job_id}/slices/2.png")
        assert refused.status_code == 401 and refused.json()["code"] == "unauthorized"
        assert _red(_rgb(client.get(f"/v1/studies/{job_id}/slices/2.png", headers=auth))).any()
