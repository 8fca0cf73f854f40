"""``ich_cases_total{outcome}`` of one ``POST /v1/cases``: counted once, in one place, however the case ends.

A case answered is positive, negative or indeterminate; refused for its input (a 4xx, the intake's 400, 413
and 422 among them) it is rejected; failed on the gateway's side (a 5xx, the engine unavailable) an error;
left by its client, cancelled (answered 499 to nobody). A 503 ``busy`` is load shed before the case took a
slot, so it is no case and not counted; neither is a cancellation of the server's own (shutdown).
"""

from __future__ import annotations

import logging
import time
from types import TracebackType

from api.disconnect import ClientGoneError
from api.errors import ApiError
from api.metrics import GatewayMetrics
from api.schemas import CaseResult
from ich.errors import IntakeError

logger = logging.getLogger(__name__)

#: nginx's "client closed request": logged and counted for a case whose client left before its answer.
CLIENT_CLOSED_REQUEST = 499


def failure_outcome(exc: BaseException) -> str | None:
    """The outcome label of a case that ended with ``exc``; None when it is not counted as a case."""
    if isinstance(exc, ApiError):
        if exc.code == "busy":
            return None
        return "rejected" if exc.status_code < 500 else "error"
    if isinstance(exc, IntakeError):
        return "rejected" if exc.http_status < 500 else "error"
    return "error" if isinstance(exc, Exception) else None


def result_outcome(result: CaseResult) -> str:
    """The outcome label of an answered case."""
    if result.indeterminate:
        return "indeterminate"
    return "positive" if result.ich_detected else "negative"


class CaseOutcome:
    """Counts and logs one case's outcome: ``with`` it around the route, hand it the result with
    :meth:`answered`; a :class:`ClientGoneError` leaving the block becomes the 499 answer."""

    def __init__(self, metrics: GatewayMetrics, started: float) -> None:
        self.metrics = metrics
        self.started = started

    def __enter__(self) -> CaseOutcome:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            return
        if isinstance(exc, ClientGoneError):
            self.metrics.cases.labels(outcome="cancelled").inc()
            logger.info(
                "case cancelled %s: the client disconnected after %.0f ms", exc.where, self._ms_since_start()
            )
            raise ApiError(
                CLIENT_CLOSED_REQUEST, "client_closed_request", "the client disconnected; analysis stopped"
            ) from None
        label = failure_outcome(exc)
        if label is not None:
            self.metrics.cases.labels(outcome=label).inc()

    def answered(self, result: CaseResult) -> CaseResult:
        """Count and log an answered case; returns ``result``."""
        outcome = result_outcome(result)
        self.metrics.cases.labels(outcome=outcome).inc()
        self.metrics.case_probability.observe(result.ich_probability)
        self.metrics.slices_per_case.observe(result.series.slices_used)
        logger.info(
            "case %s: %s, %d slices, %.0f ms",
            result.case_id,
            outcome,
            result.series.slices_used,
            result.timing_ms.total,
        )
        return result

    def _ms_since_start(self) -> float:
        return (time.perf_counter() - self.started) * 1000.0
