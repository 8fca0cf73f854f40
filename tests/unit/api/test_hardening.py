"""The gateway against slow, stalled and vanishing clients and oversized studies, in-process (issue 23).

The same behaviours under a real uvicorn, with real sockets, are in ``tests/integration/test_hardening.py``;
here each rule is pinned down fast and exactly: the upload pace and its 408, the slot taken only once the
body is in, a disconnect cancelling the engine's work, the slice cap (422 before any pixel is decoded), the
engine runner's cancellation, the log filter, the OpenAPI error bodies and the SDK's retry window.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from ich_client.retry import DEFAULT_MAX_RETRIES, RetryPolicy

from api.app import create_app
from api.log_redaction import REDACTED, RedactingFilter, redact
from api.settings import Settings
from api.upload import UploadPace
from ich.ensemble import EnsembleRunner, RunCancelledError, RunControl
from ich.intake import IntakeLimits, read_study
from ich_devtools.dicom_writer import dataset_bytes, series_datasets, zip_members
from tests.support.asgi_gateway import asgi_client
from tests.support.dicom_study import study_zip
from tests.support.fake_engine import FakeEngine
from tests.support.tiny_repository import build_tiny_repository

ZIP = {"content-type": "application/zip"}
PAPER_RULE = Path(tempfile.mkdtemp(prefix="paper-rule-"))


def _volume(n: int = 4) -> np.ndarray:
    hu = np.full((n, 32, 32), 30.0, np.float32)
    hu[n // 2, 8:20, 8:20] = 70.0
    return hu


def _app(engine: FakeEngine, **settings: Any) -> Any:
    settings.setdefault("model_repository", PAPER_RULE)
    return create_app(Settings(**settings), engine=engine)


# --- the upload pace -------------------------------------------------------------------------------------


def test_the_pace_allows_a_silence_of_the_timeout_then_the_minimum_rate() -> None:
    pace = UploadPace(timeout_s=10.0, min_bytes_per_s=1000)
    assert pace.wait_s(0.0, 0) == 10.0  # the first chunk gets the whole grace
    assert pace.wait_s(9.0, 0) == pytest.approx(1.0)
    assert pace.wait_s(11.0, 5000) == pytest.approx(4.0)  # 10 s + 5000 B / 1000 B/s, minus 11 s spent
    assert pace.wait_s(20.0, 5000) < 0  # behind the floor: no more waiting
    assert UploadPace(timeout_s=2.0, min_bytes_per_s=0).wait_s(100.0, 0) == 2.0  # silences only
    with pytest.raises(ValueError):
        UploadPace(timeout_s=0)


async def _trickle(data: bytes, chunk: int, pause_s: float) -> AsyncIterator[bytes]:
    for start in range(0, len(data), chunk):
        yield data[start : start + chunk]
        await asyncio.sleep(pause_s)


async def _stall(first: bytes, forever_s: float = 30.0) -> AsyncIterator[bytes]:
    yield first
    await asyncio.sleep(forever_s)
    yield b""


async def test_a_stalled_and_a_slow_upload_get_408_and_never_hold_the_only_slot() -> None:
    engine = FakeEngine()
    app = _app(engine, max_inflight_cases=1, upload_timeout_s=0.4, upload_min_bytes_per_s=20_000)
    data, _ = study_zip(_volume())
    async with asgi_client(app) as client:
        stalled = asyncio.create_task(client.post("/v1/cases", content=_stall(data[:100]), headers=ZIP))
        slow = asyncio.create_task(
            client.post("/v1/cases", content=_trickle(data, 200, 0.05), headers=ZIP)
        )
        await asyncio.sleep(0.1)
        # Both uploads are in progress; the one slot is free for a client that sends its study.
        normal = await client.post("/v1/cases", content=data, headers=ZIP)
        assert normal.status_code == 200, normal.text
        for response in (await stalled, await slow):
            assert response.status_code == 408, response.text
            body = response.json()
            assert (
                body["code"] == "upload_timeout"
                and body["request_id"] == response.headers["x-request-id"]
            )
        metrics = (await client.get("/metrics")).text
    assert len(engine.calls) == 1  # only the normal study reached the engine
    assert 'ich_cases_total{outcome="rejected"} 2.0' in metrics
    assert "ich_inflight_cases 0.0" in metrics


async def test_a_full_gateway_with_a_full_line_still_refuses_before_reading_the_body() -> None:
    engine = FakeEngine()
    engine.gate = asyncio.Event()
    app = _app(engine, max_inflight_cases=1, max_waiting_cases=0)
    data, _ = study_zip(_volume())
    async with asgi_client(app) as client:
        first = asyncio.create_task(client.post("/v1/cases", content=data, headers=ZIP))
        await asyncio.wait_for(engine.entered.wait(), timeout=30)
        pulled: list[int] = []

        async def counted() -> AsyncIterator[bytes]:
            for start in range(0, len(data), 1024):
                pulled.append(start)
                yield data[start : start + 1024]

        second = await client.post("/v1/cases", content=counted(), headers=ZIP)
        assert second.status_code == 503 and second.json()["code"] == "busy"
        assert len(pulled) <= 1  # refused on arrival, not after the upload
        engine.gate.set()
        assert (await first).status_code == 200


def test_the_upload_buffer_bounds_the_bodies_being_received_together() -> None:
    engine = FakeEngine()
    data, _ = study_zip(_volume())
    app = _app(engine, max_upload_buffer_bytes=len(data) - 1)
    with TestClient(app) as client:
        refused = client.post("/v1/cases", content=data, headers=ZIP)
        assert refused.status_code == 503 and refused.json()["code"] == "busy"
        assert refused.headers["retry-after"] == str(Settings().retry_after_s)
        assert app.state.upload_budget.used == 0  # the refused upload's share was given back
    with TestClient(_app(engine, max_upload_buffer_bytes=len(data))) as client:
        assert client.post("/v1/cases", content=data, headers=ZIP).status_code == 200
    assert len(engine.calls) == 1


# --- a client that goes away -----------------------------------------------------------------------------


async def test_a_disconnect_mid_analysis_cancels_the_engine_work_and_frees_the_slot() -> None:
    engine = FakeEngine()
    engine.gate = asyncio.Event()  # inference waits here until cancelled (or released)
    app = _app(engine, max_inflight_cases=1)
    data, _ = study_zip(_volume())
    gone = asyncio.Event()
    sent: list[dict[str, Any]] = []
    body_sent = False

    async def receive() -> dict[str, Any]:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": data, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/cases",
        "raw_path": b"/v1/cases",
        "query_string": b"",
        "headers": [(b"content-type", b"application/zip"), (b"content-length", str(len(data)).encode())],
        "client": ("127.0.0.1", 5000),
        "server": ("gateway", 80),
    }
    async with app.router.lifespan_context(app):
        call = asyncio.create_task(app(scope, receive, send))
        await asyncio.wait_for(engine.entered.wait(), timeout=30)
        gone.set()
        await asyncio.wait_for(call, timeout=1.0)  # the route returns within a second of the disconnect
        assert app.state.admission.inflight == 0
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            metrics = (await client.get("/metrics")).text
    assert engine.calls == []  # the inference was cancelled inside the engine, never completed
    assert sent[0]["status"] == 499
    assert 'ich_cases_total{outcome="cancelled"} 1.0' in metrics


def test_a_cancelled_run_stops_before_its_next_step(tmp_path: Path) -> None:
    runner = EnsembleRunner.from_repository(build_tiny_repository(tmp_path, size=16, max_batch_size=2))
    images = np.random.default_rng(0).random((6, 4, 16, 16), dtype=np.float32)
    done: list[int] = []
    control = RunControl(on_batch=done.append)
    assert runner.run(images, control).num_slices == 6
    assert done == [2, 2, 2]

    small: list[int] = []
    smaller = runner.run(images, RunControl(on_batch=small.append), batch_size=1)
    assert small == [1] * 6  # the engine's batch bounds onnxruntime's arena; the numbers are the same
    np.testing.assert_allclose(smaller.fused, runner.run(images).fused, atol=1e-6)

    cancelled = RunControl(on_batch=done.append)
    cancelled.cancel()
    with pytest.raises(RunCancelledError):
        runner.run(images, cancelled)
    assert done == [2, 2, 2] and cancelled.run_options.terminate


# --- the slice cap ---------------------------------------------------------------------------------------


def test_a_study_longer_than_the_slice_cap_is_422_and_never_decoded() -> None:
    engine = FakeEngine()
    data, _ = study_zip(_volume(6))
    with TestClient(_app(engine, max_slices=5)) as client:
        response = client.post("/v1/cases", content=data, headers=ZIP)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == "no_usable_series" and "more than 5 slices" in body["detail"]
    assert any("6 slices, more than the limit of 5" in r["reason"] for r in body["reasons"])
    assert engine.calls == []


def test_a_thousand_slice_study_is_refused_under_the_default_cap() -> None:
    datasets = series_datasets(np.full((1000, 4, 4), 30.0, np.float32), slice_thickness_mm=1.0)
    data = zip_members({f"s/IM{i:04d}.dcm": dataset_bytes(ds) for i, ds in enumerate(datasets)})
    engine = FakeEngine()
    with TestClient(_app(engine)) as client:
        response = client.post("/v1/cases", content=data, headers=ZIP)
    assert response.status_code == 422 and Settings().max_slices < 1000
    assert engine.calls == []


def test_the_slice_cap_passes_a_long_series_over_for_one_that_fits() -> None:
    thin = series_datasets(_volume(12), slice_thickness_mm=1.0, series_number=2)
    routine = series_datasets(_volume(4), slice_thickness_mm=5.0, series_number=3)
    data = zip_members(
        {f"s{ds.SeriesNumber}/IM{ds.InstanceNumber:04d}.dcm": dataset_bytes(ds) for ds in thin + routine}
    )
    uncapped = read_study(data, IntakeLimits())
    capped = read_study(bytearray(data), IntakeLimits(max_slices=8))
    assert uncapped.volume.hu.shape[0] == 12 and capped.volume.hu.shape[0] == 4
    assert any("more than the limit of 8" in p.reason for p in capped.passed_over)


# --- logs, schema, client -------------------------------------------------------------------------------


def test_the_log_filter_redacts_uids_from_any_library() -> None:
    uid = "1.2.826.0.1.3680043.8.498.12345678901234567890"
    record = logging.LogRecord(
        "highdicom.seg.sop", logging.WARNING, __file__, 1, "source %s of %s", (uid, "x"), None
    )
    assert RedactingFilter().filter(record)
    assert record.getMessage() == f"source {REDACTED} of x"
    assert (
        redact("2.25.339487213040287165409834658293847 on 127.0.0.1 v2.51.0")
        == f"{REDACTED} on 127.0.0.1 v2.51.0"
    )
    try:
        raise ValueError(f"bad reference {uid}")
    except ValueError:
        import sys

        failed = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    RedactingFilter().filter(failed)
    assert failed.exc_text is not None and uid not in failed.exc_text and REDACTED in failed.exc_text


def test_the_openapi_document_names_the_error_body_the_gateway_sends() -> None:
    document = _app(FakeEngine()).openapi()
    text = str(document)
    assert "HTTPValidationError" not in text
    responses = document["paths"]["/v1/cases"]["post"]["responses"]
    assert responses["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorBody"
    }
    assert "408" in responses


def test_the_sdk_default_retries_outlast_a_gateway_restart_of_several_seconds() -> None:
    class Unlucky:
        """Jitter always taking off the most: the shortest retry window the defaults allow."""

        def random(self) -> float:
            return 1.0

    policy = RetryPolicy(rng=Unlucky())  # type: ignore[arg-type]
    window = sum(policy.delay(n) for n in range(1, policy.max_retries + 1))
    assert policy.max_retries == DEFAULT_MAX_RETRIES
    assert window >= 7.0  # the last retry comes at least this long after the first attempt
