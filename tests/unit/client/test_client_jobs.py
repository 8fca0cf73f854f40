"""The client's job calls against a scripted transport: the idempotency key across retries, wait's timeout
and progress callbacks, and the JSON of a job (the real gateway is in tests/integration/test_client_jobs.py).
"""

from __future__ import annotations

import httpx
import pytest
from ich_client import ICHClient, JobTimeoutError, RateLimitError, RetryPolicy

ACCEPTED = {
    "id": "3f1c7a52-0000-4000-8000-000000000001",
    "status": "queued",
    "created_at": "2026-12-01T10:00:00+00:00",
}


def client_for(handler: object, **kwargs: object) -> ICHClient:
    transport = httpx.MockTransport(handler)  # type: ignore[arg-type]
    policy = RetryPolicy(max_retries=2, initial_delay=0.0, max_delay=0.0, jitter=0.0)
    client = ICHClient("http://ich.test", transport=transport, retry_policy=policy, **kwargs)  # type: ignore[arg-type]
    client._sleep = lambda _s: None
    return client


def test_a_retried_submit_sends_one_idempotency_key() -> None:
    keys: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/studies" and request.url.params.get("include") == "seg"
        keys.append(request.headers["idempotency-key"])
        if len(keys) < 3:
            return httpx.Response(
                429, json={"code": "queue_full", "detail": "full"}, headers={"Retry-After": "0"}
            )
        return httpx.Response(202, json=ACCEPTED)

    with client_for(handler) as client:
        job = client.submit(b"PK\x05\x06" + b"\x00" * 18, include_seg=True)
    assert job.id == ACCEPTED["id"] and job.status == "queued"
    assert len(keys) == 3 and len(set(keys)) == 1  # the retries carry the first attempt's key
    full = client_for(lambda r: httpx.Response(429, json={"code": "queue_full", "detail": "full"}))
    with full as client, pytest.raises(RateLimitError):
        client.submit(b"PK\x05\x06" + b"\x00" * 18, idempotency_key="mine")


def test_wait_reports_each_change_and_times_out() -> None:
    states = iter(["queued", "queued", "running", "running", "running"])

    def handler(request: httpx.Request) -> httpx.Response:
        status = next(states, "running")
        return httpx.Response(200, json={**ACCEPTED, "status": status, "attempts": int(status == "running")})

    seen: list[str] = []
    with client_for(handler) as client, pytest.raises(JobTimeoutError) as info:
        client.wait(
            ACCEPTED["id"], timeout=0.05, poll_interval=0.01, on_update=lambda j: seen.append(j.status)
        )
    assert seen == ["queued", "running"]
    assert info.value.job.status == "running"
    with client_for(handler) as client, pytest.raises(ValueError, match="poll_interval"):
        client.wait(ACCEPTED["id"], poll_interval=0)


def test_a_failed_job_carries_its_error() -> None:
    body = {
        **ACCEPTED,
        "status": "failed",
        "attempts": 1,
        "error": {
            "code": "no_usable_series",
            "detail": "no CT",
            "reasons": [{"file": "a.txt", "reason": "x"}],
        },
        "result": None,
    }
    with client_for(lambda r: httpx.Response(200, json=body)) as client:
        job = client.wait(ACCEPTED["id"])
    assert job.finished and job.result is None
    assert (
        job.error is not None
        and job.error.code == "no_usable_series"
        and job.error.reasons == body["error"]["reasons"]
    )
