"""``ich_cases_total{outcome}`` counted in one place (``api.case_outcome``), and ``ich_inflight_cases`` read
from the admission's slots rather than kept by hand beside them."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import generate_latest

from api.admission import CaseAdmission
from api.case_outcome import CLIENT_CLOSED_REQUEST, CaseOutcome, failure_outcome
from api.disconnect import ClientGoneError
from api.errors import ApiError, service_unavailable
from api.metrics import GatewayMetrics
from ich.errors import InvalidArchiveError, NoUsableSeriesError, StudyTooLargeError


def _count(metrics: GatewayMetrics, outcome: str) -> float:
    value = metrics.registry.get_sample_value("ich_cases_total", {"outcome": outcome})
    return 0.0 if value is None else value


@pytest.mark.parametrize(
    ("exc", "label"),
    [
        (service_unavailable("busy", "every slot is taken", 1), None),  # load shed: no case
        (service_unavailable("engine_unavailable", "down", 1), "error"),
        (ApiError(408, "upload_timeout", "too slow"), "rejected"),
        (ApiError(413, "upload_too_large", "too big"), "rejected"),
        (NoUsableSeriesError("no usable CT series"), "rejected"),
        (InvalidArchiveError("not a zip"), "rejected"),
        (StudyTooLargeError("too many", limit_name="members", limit=1), "rejected"),
        (RuntimeError("a bug"), "error"),
        (asyncio.CancelledError(), None),  # the server's own cancellation (shutdown) is no outcome
    ],
)
def test_the_outcome_of_a_case_that_fails(exc: BaseException, label: str | None) -> None:
    assert failure_outcome(exc) == label


def test_a_failure_is_counted_once_and_passes_through_unchanged() -> None:
    metrics = GatewayMetrics()
    error = ApiError(422, "invalid_request", "unknown include option")
    with pytest.raises(ApiError) as caught, CaseOutcome(metrics, 0.0):
        raise error
    assert caught.value is error
    assert _count(metrics, "rejected") == 1.0 and _count(metrics, "error") == 0.0


def test_a_shed_case_is_not_counted() -> None:
    metrics = GatewayMetrics()
    with pytest.raises(ApiError), CaseOutcome(metrics, 0.0):
        raise service_unavailable("busy", "the line is full", 1)
    assert all(_count(metrics, o) == 0.0 for o in ("rejected", "error", "cancelled"))


def test_a_client_that_left_is_a_499_counted_as_cancelled() -> None:
    metrics = GatewayMetrics()
    with pytest.raises(ApiError) as caught, CaseOutcome(metrics, 0.0):
        raise ClientGoneError("in analysis")
    assert caught.value.status_code == CLIENT_CLOSED_REQUEST
    assert caught.value.code == "client_closed_request"
    assert _count(metrics, "cancelled") == 1.0 and _count(metrics, "error") == 0.0


async def test_the_inflight_gauge_is_the_admissions_slots_in_use() -> None:
    metrics = GatewayMetrics()
    admission = CaseAdmission(slots=2, max_waiting=1, wait_s=5.0, retry_after_s=1)
    metrics.watch_admission(admission)

    def inflight() -> str:
        return next(
            line
            for line in generate_latest(metrics.registry).decode().splitlines()
            if line.startswith("ich_inflight_cases ")
        )

    assert inflight() == "ich_inflight_cases 0.0"
    await admission.acquire("peer:a")
    await admission.acquire("peer:b")
    assert inflight() == "ich_inflight_cases 2.0"
    waiter = asyncio.create_task(admission.acquire("peer:c"))
    await asyncio.sleep(0)
    admission.release()  # the slot passes to the waiter: still two in use
    await waiter
    assert inflight() == "ich_inflight_cases 2.0"
    admission.release()
    admission.release()
    assert inflight() == "ich_inflight_cases 0.0"
