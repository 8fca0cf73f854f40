"""API keys: the digests file, constant-time verification, and 401 on every /v1 route without a valid key."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.auth import ApiKeyVerifier, key_digest, load_key_digests
from api.settings import Settings
from tests.support.dicom_study import study_zip
from tests.support.fake_engine import FakeEngine

KEY = "s3cret-key-for-tests"
OTHER = "another-valid-key"


def write_keys(path: Path, *keys: str, extra: str = "") -> Path:
    lines = [hashlib.sha256(k.encode()).hexdigest() for k in keys]
    path.write_text(extra + "\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    keys = write_keys(tmp_path / "keys.txt", KEY, OTHER, extra="# team A\n\n")
    with TestClient(create_app(Settings(api_keys_file=keys), engine=FakeEngine())) as test_client:
        yield test_client


def test_digests_file_accepts_comments_blank_lines_and_upper_case(tmp_path: Path) -> None:
    digest = key_digest(KEY)
    path = tmp_path / "keys.txt"
    path.write_text(f"# comment\n\n{digest.upper()}  # laptop\n", encoding="utf-8")
    assert load_key_digests(path) == frozenset({digest})


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "no key digest"),
        ("# only a comment\n", "no key digest"),
        ("not-a-digest\n", "line 1"),
        (f"{'a' * 64}\n{'b' * 63}\n", "line 2"),
    ],
)
def test_bad_digests_files_are_refused(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "keys.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        load_key_digests(path)


def test_missing_keys_file_stops_the_app_from_being_built(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot be read"):
        create_app(Settings(api_keys_file=tmp_path / "absent.txt"), engine=FakeEngine())


def test_verifier_accepts_only_configured_keys() -> None:
    verifier = ApiKeyVerifier([key_digest(KEY), key_digest(OTHER)])
    assert verifier.verify(KEY)
    assert verifier.verify(OTHER)
    assert not verifier.verify(KEY + "x")
    assert not verifier.verify("")
    assert not verifier.verify(key_digest(KEY))  # the digest itself is not a key


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": f"Bearer {KEY}x"},
        {"Authorization": f"Basic {KEY}"},
        {"Authorization": "Bearer "},
        {"Authorization": KEY},
    ],
)
@pytest.mark.parametrize(("method", "path"), [("GET", "/v1/models"), ("POST", "/v1/cases")])
def test_v1_routes_need_a_valid_bearer_key(
    client: TestClient, method: str, path: str, headers: dict[str, str]
) -> None:
    all_headers = {**headers, "content-type": "application/zip"}
    response = client.request(method, path, headers=all_headers, content=b"x")
    assert response.status_code == 401
    body = response.json()
    assert body["code"] == "unauthorized"
    assert body["request_id"] == response.headers["x-request-id"]
    assert response.headers["www-authenticate"] == "Bearer"
    assert KEY not in response.text


def test_valid_keys_are_accepted(client: TestClient) -> None:
    data, _ = study_zip(np.full((2, 32, 32), 30.0, np.float32))
    for key in (KEY, OTHER):
        auth = {"Authorization": f"Bearer {key}"}
        assert client.get("/v1/models", headers=auth).status_code == 200
        response = client.post("/v1/cases", content=data, headers={**auth, "content-type": "application/zip"})
        assert response.status_code == 200, response.text
    # The scheme name is case-insensitive (RFC 7235).
    assert client.get("/v1/models", headers={"Authorization": f"bearer {KEY}"}).status_code == 200


def test_rejected_key_reads_no_upload(client: TestClient) -> None:
    """Authentication runs before the body is read: an unauthenticated client cannot make us buffer data."""
    engine = client.app.state.engine  # type: ignore[attr-defined]
    response = client.post("/v1/cases", content=b"\0" * 1024, headers={"content-type": "application/zip"})
    assert response.status_code == 401
    assert engine.calls == []
    assert 'ich_cases_total{outcome="rejected"} 0.0' in client.get("/metrics").text


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_probes_and_metrics_stay_open(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 200


def test_without_a_keys_file_v1_is_open() -> None:
    with TestClient(create_app(Settings(), engine=FakeEngine())) as open_client:
        assert open_client.get("/v1/models").status_code == 200
