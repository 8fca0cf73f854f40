"""ich_client against a mock transport: requests, typed results, error mapping, retries (sync and async)."""

from __future__ import annotations

import io
import itertools
import json
import subprocess
import sys
import zipfile
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import httpx
import pytest
from ich_client import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AsyncICHClient,
    AuthenticationError,
    BadRequestError,
    CaseResult,
    ICHClient,
    ICHError,
    InternalServerError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitError,
    RetryPolicy,
    ServiceUnavailableError,
    UnprocessableStudyError,
    UnsupportedMediaTypeError,
)
from ich_client.retry import parse_retry_after

from ich_devtools.processes import reserved_port

URL = "http://ich.test"
KEYS = ("all", "subtype", "sdh", "sah", "small")


def case_payload(probability: float = 0.83, n_slices: int = 4, **extra: Any) -> dict[str, Any]:
    """A result as the contract describes it (docs/DESIGN.md), slice probabilities varied per slice."""
    slices = []
    for i in range(n_slices):
        p = round(probability * (i + 1) / n_slices, 4)
        slices.append(
            {
                "index": i,
                "sop_instance_uid": f"1.2.3.4.{i}",
                "probability": p,
                "model_probabilities": {k: round(p * (0.9 + 0.02 * j), 4) for j, k in enumerate(KEYS)},
                "weights": {k: 0.2 for k in KEYS},
            }
        )
    payload: dict[str, Any] = {
        "case_id": "c0ffee",
        "model_version": "2026.11.29-test",
        "engine": "embedded",
        "ich_probability": probability,
        "ich_detected": probability >= 0.5,
        "threshold": 0.5,
        "indeterminate": 0.4 <= probability <= 0.6,
        "hemorrhage_volume_ml": 12.5,
        "series": {
            "series_instance_uid": "1.2.3",
            "slices_used": n_slices,
            "slice_thickness_mm": 5.0,
            "pixel_spacing_mm": [0.5, 0.5],
            "skipped": [{"file": "README.txt", "reason": "not a DICOM file"}],
        },
        "slices": slices,
        "timing_ms": {"decode": 1.0, "preprocess": 2.0, "inference": 3.0, "aggregate": 0.5, "total": 7.0},
    }
    payload.update(extra)
    return payload


def error_response(status: int, code: str, detail: str, **headers: str) -> httpx.Response:
    body = {"code": code, "detail": detail, "request_id": f"rid-{status}"}
    return httpx.Response(status, json=body, headers=headers)


def zip_bytes(members: dict[str, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in (members or {"a.dcm": b"DICM" * 10}).items():
            archive.writestr(name, data)
    return buffer.getvalue()


class Recorder:
    """A scripted server: answers with ``responses`` in turn and keeps every request it saw."""

    def __init__(self, *responses: httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]):
        self.responses = list(responses)
        self.requests: list[httpx.Request] = []
        self.bodies: list[bytes] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.bodies.append(request.read())
        item = self.responses.pop(0) if len(self.responses) > 1 else self.responses[0]
        if isinstance(item, Exception):
            raise item
        if callable(item) and not isinstance(item, httpx.Response):
            return item(request)
        return item

    async def handle_async(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.bodies.append(await request.aread())
        item = self.responses.pop(0) if len(self.responses) > 1 else self.responses[0]
        if isinstance(item, Exception):
            raise item
        if callable(item) and not isinstance(item, httpx.Response):
            return item(request)
        return item


def make_client(recorder: Recorder, **kwargs: Any) -> tuple[ICHClient, list[float]]:
    client = ICHClient(URL, transport=httpx.MockTransport(recorder), **kwargs)
    sleeps: list[float] = []
    client._sleep = sleeps.append
    return client, sleeps


def make_async_client(recorder: Recorder, **kwargs: Any) -> tuple[AsyncICHClient, list[float]]:
    client = AsyncICHClient(URL, transport=httpx.MockTransport(recorder.handle_async), **kwargs)
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    client._sleep = sleep
    return client, sleeps


# --- requests and results ---------------------------------------------------------------------------------


def test_analyze_posts_the_zip_and_returns_a_typed_result() -> None:
    recorder = Recorder(httpx.Response(200, json=case_payload(0.83)))
    body = zip_bytes()
    client, _ = make_client(recorder, api_key="s3cret")
    with client:
        result = client.analyze(body)
    (request,) = recorder.requests
    assert request.method == "POST" and request.url.path == "/v1/cases"
    assert request.headers["content-type"] == "application/zip"
    assert request.headers["content-length"] == str(len(body))
    assert "transfer-encoding" not in request.headers
    assert request.headers["authorization"] == "Bearer s3cret"
    assert request.headers["user-agent"].startswith("ich-client/")
    assert recorder.bodies[0] == body
    assert isinstance(result, CaseResult)
    assert result.ich_probability == pytest.approx(0.83) and result.ich_detected is True
    assert result.series.pixel_spacing_mm == (0.5, 0.5)
    assert result.series.skipped[0].reason == "not a DICOM file"
    assert [s.index for s in result.slices] == [0, 1, 2, 3]
    assert result.slices[3].model_probabilities.small == pytest.approx(round(0.83 * 0.98, 4))
    assert result.slices[0].weights.sah == pytest.approx(0.2)
    assert result.timing_ms.total == pytest.approx(7.0)


def test_result_keeps_fields_the_client_does_not_know() -> None:
    payload = case_payload(0.2, overlay_url="/v1/cases/c0ffee/overlay.png")
    payload["series"]["manufacturer_model"] = "X"
    payload["slices"][0]["mask_area_mm2"] = 3.5
    recorder = Recorder(httpx.Response(200, json=payload))
    client, _ = make_client(recorder)
    result = client.analyze(zip_bytes())
    dumped = result.model_dump(mode="json")
    assert dumped["overlay_url"] == "/v1/cases/c0ffee/overlay.png"
    assert dumped["series"]["manufacturer_model"] == "X"
    assert dumped["slices"][0]["mask_area_mm2"] == 3.5
    assert dumped["slices"][1] == {**payload["slices"][1], "hemorrhage_volume_ml": None, "subtypes": None}


def test_a_result_missing_a_contract_field_is_an_ich_error() -> None:
    payload = case_payload()
    del payload["slices"][0]["weights"]
    client, _ = make_client(Recorder(httpx.Response(200, json=payload)))
    with pytest.raises(ICHError, match="CaseResult"):
        client.analyze(zip_bytes())


def test_top_slices_and_client_side_threshold() -> None:
    result = CaseResult.model_validate(case_payload(0.45))
    assert [s.index for s in result.top_slices(2)] == [3, 2]
    assert result.ich_detected is False
    lowered = result.with_threshold(0.3)
    assert lowered.ich_detected is True and lowered.threshold == 0.3
    assert lowered.indeterminate is result.indeterminate is True
    assert result.with_threshold(0.45).ich_detected is True  # "at or above", as the service decides
    assert result.with_threshold(0.46).ich_detected is False
    with pytest.raises(ValueError, match="threshold"):
        result.with_threshold(1.5)
    # Compared in float32 like the service: in float64, 0.3 < 0.1 + 0.2 (= 0.30000000000000004).
    assert result.model_copy(update={"ich_probability": 0.3}).with_threshold(0.1 + 0.2).ich_detected is True
    assert result.model_copy(update={"ich_probability": 0.6999}).with_threshold(0.7).ich_detected is False


def test_environment_gives_url_and_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ICH_URL", "http://from-env:9999/")
    monkeypatch.setenv("ICH_API_KEY", "env-key")
    recorder = Recorder(httpx.Response(200, json={"status": "ok"}))
    with ICHClient(transport=httpx.MockTransport(recorder)) as client:
        assert client.base_url == "http://from-env:9999"
        assert client.health().ok is True
    assert str(recorder.requests[0].url) == "http://from-env:9999/healthz"
    assert recorder.requests[0].headers["authorization"] == "Bearer env-key"


def test_no_key_no_authorization_header(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ICH_API_KEY", raising=False)
    recorder = Recorder(httpx.Response(200, json={"status": "ok"}))
    ICHClient(URL, transport=httpx.MockTransport(recorder)).health()
    assert "authorization" not in recorder.requests[0].headers


def test_base_url_without_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="http"):
        ICHClient("localhost:8080")


def test_ready_reports_not_ready_without_retrying() -> None:
    recorder = Recorder(error_response(503, "engine_unavailable", "loading models", **{"Retry-After": "5"}))
    client, sleeps = make_client(recorder)
    ready = client.ready()
    assert ready.ok is False and ready.model_extra is not None
    assert ready.model_extra["code"] == "engine_unavailable"
    assert len(recorder.requests) == 1 and sleeps == []


def test_models_is_typed() -> None:
    body = {
        "model_version": "v1",
        "engine": "triton",
        "models": [{"name": "ich_ensemble", "platform": "ensemble", "instance_count": 2}],
    }
    client, _ = make_client(Recorder(httpx.Response(200, json=body)))
    info = client.models()
    assert info.model_version == "v1" and info.engine == "triton"
    assert info.models[0].name == "ich_ensemble"
    assert info.models[0].platform == "ensemble"
    assert info.models[0].model_extra == {"instance_count": 2}


def test_progress_counts_up_to_the_size_and_restarts_on_retry() -> None:
    body = zip_bytes({f"{i}.dcm": bytes(range(256)) * 2000 for i in range(4)})
    recorder = Recorder(error_response(503, "x", "y"), httpx.Response(200, json=case_payload()))
    client, _ = make_client(recorder)
    seen: list[tuple[int, int]] = []
    client.analyze(body, progress=lambda sent, total: seen.append((sent, total)))
    totals = {total for _, total in seen}
    assert totals == {len(body)}
    sent = [s for s, _ in seen]
    restart = sent.index(0, 1)  # the retry starts again from 0
    assert sent[0] == 0 and sent[restart - 1] == len(body) and sent[-1] == len(body)
    assert all(a < b for a, b in itertools.pairwise(sent[1:restart]))
    assert recorder.bodies[0] == recorder.bodies[1] == body


# --- error mapping ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (404, NotFoundError),
        (413, PayloadTooLargeError),
        (415, UnsupportedMediaTypeError),
        (422, UnprocessableStudyError),
        (429, RateLimitError),
        (503, ServiceUnavailableError),
        (500, InternalServerError),
        (418, APIStatusError),
    ],
)
def test_status_maps_to_its_exception(status: int, cls: type[APIStatusError]) -> None:
    recorder = Recorder(error_response(status, f"code_{status}", f"detail {status}"))
    client, _ = make_client(recorder, max_retries=0)
    with pytest.raises(cls) as info:
        client.analyze(zip_bytes())
    assert type(info.value) is cls
    err = info.value
    assert (err.status_code, err.code, err.detail, err.request_id) == (
        status,
        f"code_{status}",
        f"detail {status}",
        f"rid-{status}",
    )
    assert str(status) in str(err) and f"rid-{status}" in str(err)


def test_422_is_raised_at_once_with_the_reasons() -> None:
    body = {
        "code": "no_usable_series",
        "detail": "no CT series",
        "request_id": "r1",
        "reasons": ["MR series skipped"],
    }
    recorder = Recorder(httpx.Response(422, json=body))
    client, sleeps = make_client(recorder, max_retries=5)
    with pytest.raises(UnprocessableStudyError) as info:
        client.analyze(zip_bytes())
    assert len(recorder.requests) == 1 and sleeps == []
    assert info.value.reasons == ["MR series skipped"]


def test_error_without_service_json_still_reads_well() -> None:
    html = httpx.Response(502, text="<html>Bad Gateway</html>", headers={"X-Request-ID": "proxy-1"})
    client, _ = make_client(Recorder(html), max_retries=3)
    with pytest.raises(InternalServerError) as info:
        client.health()
    assert info.value.code == "http_502" and "Bad Gateway" in info.value.detail
    assert info.value.request_id == "proxy-1"


def test_list_detail_is_kept_as_json_text() -> None:
    body = {"detail": [{"loc": ["body"], "msg": "field required"}]}
    client, _ = make_client(Recorder(httpx.Response(422, json=body)))
    with pytest.raises(UnprocessableStudyError) as info:
        client.analyze(zip_bytes())
    assert json.loads(info.value.detail) == body["detail"] and info.value.code == "http_422"


# --- retries ---------------------------------------------------------------------------------------------


def test_503_with_retry_after_then_success() -> None:
    recorder = Recorder(
        error_response(503, "engine_unavailable", "warming up", **{"Retry-After": "2"}),
        httpx.Response(200, json=case_payload(0.7)),
    )
    client, sleeps = make_client(recorder)
    result = client.analyze(zip_bytes())
    assert result.ich_probability == pytest.approx(0.7)
    assert sleeps == [2.0]
    assert len(recorder.requests) == 2 and recorder.bodies[0] == recorder.bodies[1]


def test_429_backs_off_exponentially_with_jitter() -> None:
    recorder = Recorder(
        error_response(429, "rate_limited", "slow down"),
        error_response(429, "rate_limited", "slow down"),
        error_response(429, "rate_limited", "slow down"),
        httpx.Response(200, json=case_payload()),
    )
    policy = RetryPolicy(max_retries=3, initial_delay=1.0, max_delay=3.0, jitter=0.5)
    client, sleeps = make_client(recorder, retry_policy=policy)
    client.analyze(zip_bytes())
    assert len(sleeps) == 3
    for wait, ceiling in zip(sleeps, [1.0, 2.0, 3.0], strict=True):
        assert ceiling * 0.5 <= wait <= ceiling


def test_retries_are_bounded_and_the_last_error_raised() -> None:
    recorder = Recorder(error_response(503, "engine_unavailable", "down", **{"Retry-After": "1"}))
    client, sleeps = make_client(recorder, max_retries=2)
    with pytest.raises(ServiceUnavailableError) as info:
        client.analyze(zip_bytes())
    assert len(recorder.requests) == 3 and sleeps == [1.0, 1.0]
    assert info.value.retry_after == 1.0


def test_max_retries_zero_never_retries() -> None:
    recorder = Recorder(error_response(503, "x", "y"))
    client, sleeps = make_client(recorder, max_retries=0)
    with pytest.raises(ServiceUnavailableError):
        client.analyze(zip_bytes())
    assert len(recorder.requests) == 1 and sleeps == []


def test_connection_error_is_retried_then_succeeds() -> None:
    recorder = Recorder(httpx.ConnectError("refused"), httpx.Response(200, json=case_payload(0.1)))
    client, sleeps = make_client(recorder)
    assert client.analyze(zip_bytes()).ich_probability == pytest.approx(0.1)
    assert len(recorder.requests) == 2 and len(sleeps) == 1


def test_connection_error_after_all_retries() -> None:
    recorder = Recorder(httpx.ConnectError("refused"))
    client, sleeps = make_client(recorder, max_retries=2)
    with pytest.raises(APIConnectionError) as info:
        client.health()
    assert not isinstance(info.value, APITimeoutError)
    assert len(recorder.requests) == 3 and len(sleeps) == 2


def test_read_timeout_is_not_retried() -> None:
    recorder = Recorder(httpx.ReadTimeout("slow"))
    client, sleeps = make_client(recorder, max_retries=3)
    with pytest.raises(APITimeoutError):
        client.analyze(zip_bytes())
    assert len(recorder.requests) == 1 and sleeps == []


def test_connect_timeout_is_retried_and_raised_as_timeout() -> None:
    recorder = Recorder(httpx.ConnectTimeout("no route"))
    client, sleeps = make_client(recorder, max_retries=1)
    with pytest.raises(APITimeoutError):
        client.health()
    assert len(sleeps) == 1
    assert len(recorder.requests) == 2


def closed_port_url() -> str:
    """A loopback URL nobody listens on: a real refused connection, not a mock."""
    return f"http://127.0.0.1:{reserved_port()}"  # held by this process, so nobody starts serving it


def test_real_refused_connection() -> None:
    url = closed_port_url()
    policy = RetryPolicy(max_retries=1, initial_delay=0.0)
    with ICHClient(url, retry_policy=policy) as c, pytest.raises(APIConnectionError) as info:
        c.health()
    assert url in str(info.value) and not isinstance(info.value, APITimeoutError)


def test_retry_policy_delays() -> None:
    policy = RetryPolicy(initial_delay=0.5, max_delay=4.0, max_retry_after=10.0, jitter=0.0)
    assert [policy.delay(n) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert policy.delay(1, retry_after=3.0) == 3.0
    assert policy.delay(1, retry_after=600.0) == 10.0
    with pytest.raises(ValueError):
        RetryPolicy(max_retries=-1)
    with pytest.raises(ValueError):
        RetryPolicy(jitter=2.0)


def test_parse_retry_after_forms() -> None:
    now = datetime(2026, 11, 29, 12, 0, 0, tzinfo=timezone.utc)  # noqa: UP017
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after("Sun, 29 Nov 2026 12:00:30 GMT", now) == 30.0
    assert parse_retry_after("Sun, 29 Nov 2026 11:00:00 GMT", now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None) is None


# --- async ----------------------------------------------------------------------------------------------


async def test_async_analyze_retries_503_then_succeeds() -> None:
    recorder = Recorder(
        error_response(503, "engine_unavailable", "warming up", **{"Retry-After": "3"}),
        httpx.Response(200, json=case_payload(0.66)),
    )
    client, sleeps = make_async_client(recorder, api_key="k")
    body = zip_bytes()
    async with client:
        result = await client.analyze(body)
    assert result.ich_probability == pytest.approx(0.66) and sleeps == [3.0]
    assert recorder.bodies == [body, body]
    assert recorder.requests[0].headers["content-length"] == str(len(body))
    assert recorder.requests[1].headers["authorization"] == "Bearer k"


async def test_async_422_raised_at_once() -> None:
    recorder = Recorder(error_response(422, "no_usable_series", "no CT"))
    client, sleeps = make_async_client(recorder)
    async with client:
        with pytest.raises(UnprocessableStudyError):
            await client.analyze(zip_bytes())
    assert len(recorder.requests) == 1 and sleeps == []


async def test_async_connection_error_retried_and_health_models_ready() -> None:
    recorder = Recorder(
        httpx.ConnectError("refused"),
        httpx.Response(200, json={"status": "ok"}),
        httpx.Response(200, json={"status": "ready"}),
        httpx.Response(200, json={"model_version": "v2", "engine": "embedded", "models": []}),
    )
    client, sleeps = make_async_client(recorder)
    async with client:
        assert (await client.health()).ok
        assert (await client.ready()).status == "ready"
        assert (await client.models()).model_version == "v2"
    assert len(sleeps) == 1 and [r.url.path for r in recorder.requests] == [
        "/healthz",
        "/healthz",
        "/readyz",
        "/v1/models",
    ]


def test_the_client_imports_nothing_of_the_service() -> None:
    """ich_client is its own distribution: importing it (and its CLI) must not load ich, api or training."""
    code = (
        "import sys, ich_client, ich_client.cli\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ich', 'api', 'training'))\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_base_url_with_a_path_prefix_is_kept() -> None:
    """A gateway behind an ingress at /ich: every route goes below the prefix."""
    recorder = Recorder(httpx.Response(200, json=case_payload()))
    with ICHClient("https://hospital.example/ich/", transport=httpx.MockTransport(recorder)) as client:
        client.analyze(zip_bytes(), include_overlays=True)
    assert str(recorder.requests[0].url) == "https://hospital.example/ich/v1/cases?include=overlays"
