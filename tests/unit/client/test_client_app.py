"""ich_client against the real gateway in-process (httpx.ASGITransport): real responses and real errors.

The gateway (``api.app.create_app``) runs with the embedded onnxruntime engine on a tiny model repository,
so the numbers are the real pipeline's; a fake engine stands in only where an outage is simulated.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from ich_client import (
    AsyncICHClient,
    AuthenticationError,
    BadRequestError,
    CaseResult,
    PayloadTooLargeError,
    ServiceUnavailableError,
    UnprocessableStudyError,
)
from pydantic import BaseModel

from api.app import create_app
from api.auth import key_digest
from api.settings import Settings
from tests.support.dicom_study import study_zip
from tests.support.fake_engine import FakeEngine
from tests.support.tiny_repository import build_tiny_repository

BASE = "http://gateway.test"
KEY = "test-key-0123456789"


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_repository(tmp_path_factory.mktemp("repo"), size=16, version="tiny-client")


@pytest.fixture(scope="module")
def study() -> bytes:
    hu = np.full((5, 32, 32), 30.0, np.float32)
    hu[2:4, 10:20, 12:22] = 70.0  # blood-like density on two slices
    data, _ = study_zip(hu, shuffle=True)
    return data


def settings_for(repository: Path, **overrides: Any) -> Settings:
    return Settings(model_repository=repository, threads=1, intra_op_threads=1, **overrides)


@asynccontextmanager
async def serve(
    app: FastAPI, **client_kwargs: Any
) -> AsyncIterator[tuple[AsyncICHClient, httpx.AsyncClient]]:
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        AsyncICHClient(BASE, transport=transport, **client_kwargs) as client,
        httpx.AsyncClient(base_url=BASE, transport=transport) as raw,
    ):
        yield client, raw


def assert_no_unknown_fields(model: BaseModel, path: str = "$") -> None:
    """The client knows every field the service sent, at every level (nothing landed in model_extra)."""
    assert not model.model_extra, f"{path}: fields unknown to the client: {sorted(model.model_extra or {})}"
    for name in type(model).model_fields:
        value = getattr(model, name)
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            if isinstance(item, BaseModel):
                assert_no_unknown_fields(
                    item, f"{path}.{name}[{i}]" if isinstance(value, list) else f"{path}.{name}"
                )


def without_run_fields(payload: dict[str, Any]) -> dict[str, Any]:
    """A result minus what differs between two runs of the same study (id, timings)."""
    return {k: v for k, v in payload.items() if k not in ("case_id", "timing_ms")}


async def test_real_response_validates_and_matches_a_direct_post(repository: Path, study: bytes) -> None:
    app = create_app(settings_for(repository))
    async with serve(app) as (client, raw):
        result = await client.analyze(study)
        direct = await raw.post("/v1/cases", content=study, headers={"Content-Type": "application/zip"})
    assert direct.status_code == 200
    assert isinstance(result, CaseResult)
    assert_no_unknown_fields(result)
    assert without_run_fields(result.model_dump(mode="json")) == without_run_fields(direct.json())
    assert result.model_version == "tiny-client" and result.engine == "embedded"
    assert result.series.slices_used == 5 and len(result.slices) == 5
    assert result.ich_probability == max(s.probability for s in result.slices)
    assert result.ich_detected == (result.ich_probability >= result.threshold)


async def test_overlays_and_seg_decode(repository: Path, study: bytes) -> None:
    app = create_app(settings_for(repository))
    async with serve(app) as (client, _):
        plain = await client.analyze(study)
        full = await client.analyze(study, include_overlays=True, include_seg=True)
    assert plain.overlays is None and plain.seg is None
    assert_no_unknown_fields(full)
    assert full.hemorrhage_volume_ml > 0  # this study has a lesion on the tiny model, so both are sent
    assert full.overlays and all(o.image_bytes().startswith(b"\x89PNG") for o in full.overlays)
    assert {o.sop_instance_uid for o in full.overlays} <= {s.sop_instance_uid for s in full.slices}
    assert full.seg is not None and full.seg.dicom_bytes()[128:132] == b"DICM"
    assert full.seg.frames >= 1


async def test_every_input_form_gives_the_same_answer(repository: Path, study: bytes, tmp_path: Path) -> None:
    zip_path = tmp_path / "study.zip"
    zip_path.write_bytes(study)
    folder = tmp_path / "folder"
    with zipfile.ZipFile(io.BytesIO(study)) as archive:
        archive.extractall(folder)
    files = sorted(str(p) for p in folder.rglob("*.dcm"))
    app = create_app(settings_for(repository))
    probabilities = []
    async with serve(app) as (client, _):
        for form in (study, zip_path, folder, files):
            result = await client.analyze(form)
            probabilities.append((result.ich_probability, [s.sop_instance_uid for s in result.slices]))
    assert all(p == probabilities[0] for p in probabilities)


async def test_service_errors_map_to_client_errors(repository: Path, study: bytes) -> None:
    app = create_app(settings_for(repository, max_upload_bytes=len(study) + 10))
    async with serve(app, max_retries=0) as (client, _):
        with pytest.raises(BadRequestError) as bad:
            await client.analyze(b"this is not a zip archive")
        assert bad.value.code and bad.value.request_id

        no_dicom = io.BytesIO()
        with zipfile.ZipFile(no_dicom, "w") as archive:
            archive.writestr("notes.txt", "no images here")
        with pytest.raises(UnprocessableStudyError) as unprocessable:
            await client.analyze(no_dicom.getvalue())
        assert unprocessable.value.status_code == 422 and unprocessable.value.detail

        with pytest.raises(PayloadTooLargeError):
            await client.analyze(study + b"\0" * 100)


async def test_api_keys(
    repository: Path, study: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ICH_API_KEY", raising=False)
    keys = tmp_path / "keys.txt"
    keys.write_text(key_digest(KEY) + "\n")
    app = create_app(settings_for(repository, api_keys_file=keys))
    async with serve(app, api_key=None) as (client, _):
        with pytest.raises(AuthenticationError) as info:
            await client.models()
        assert info.value.status_code == 401
        assert (await client.health()).ok  # probes stay open
    async with serve(app, api_key="wrong") as (client, _):
        with pytest.raises(AuthenticationError):
            await client.analyze(study)
    async with serve(app, api_key=KEY) as (client, _):
        assert (await client.models()).model_version == "tiny-client"
        assert (await client.analyze(study)).series.slices_used == 5


async def test_engine_outage_is_retried_after_retry_after(study: bytes) -> None:
    engine = FakeEngine(input_size=16)
    app = create_app(Settings(threads=1, retry_after_s=3), engine=engine)
    async with serve(app, max_retries=2) as (client, _):
        engine.down = True
        assert (await client.ready()).ok is False
        sleeps: list[float] = []

        async def sleep_then_recover(seconds: float) -> None:
            sleeps.append(seconds)
            engine.down = len(sleeps) < 2  # back after the second wait

        client._sleep = sleep_then_recover
        result = await client.analyze(study)
        assert sleeps == [3.0, 3.0] and result.engine == "fake"
        assert (await client.ready()).ok is True

        engine.down = True
        client._sleep = _record(sleeps := [])
        with pytest.raises(ServiceUnavailableError) as info:
            await client.analyze(study)
        assert info.value.retry_after == 3.0 and len(sleeps) == 2


def _record(into: list[float]) -> Callable[[float], Any]:
    async def sleep(seconds: float) -> None:
        into.append(seconds)

    return sleep
