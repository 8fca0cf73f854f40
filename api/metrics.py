"""Prometheus metrics of the gateway (docs/ARCHITECTURE.md, issue 5).

Each app owns a :class:`GatewayMetrics` with its own ``CollectorRegistry``: several apps in one test process
(or one process serving two apps) never collide on metric names, and ``/metrics`` exposes exactly this
app's series. Labels carry only bounded, non-patient values (outcomes, stages, reasons, route templates).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

#: Outcomes of ``ich_cases_total``: a finding (positive, negative, indeterminate), a refusal, a failure.
#: Exactly one per case: a case in the indeterminate band counts as indeterminate, not as positive/negative.
#: ``cancelled``: the client went away before the answer, and its analysis was stopped.
OUTCOMES: Final[tuple[str, ...]] = ("positive", "negative", "indeterminate", "rejected", "error", "cancelled")
#: Stages of ``ich_stage_seconds``, the same names as the result's ``timing_ms``.
STAGES: Final[tuple[str, ...]] = ("decode", "preprocess", "inference", "aggregate")

#: Reasons of ``ich_engine_errors_total`` (``api.engines.EngineUnavailableError.reason``, or ``error``).
ENGINE_ERROR_REASONS: Final[tuple[str, ...]] = ("unavailable", "timeout", "error")

#: Latency buckets (seconds) from tens of milliseconds (aggregate) to minutes (CPU inference of a big study).
_STAGE_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_PROBABILITY_BUCKETS: Final = tuple(round(0.05 * i, 2) for i in range(1, 21))
_SLICE_BUCKETS: Final = (1, 5, 10, 20, 30, 40, 60, 80, 120, 200, 400, 800)

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST


class _CountsSlices(Protocol):
    slices_inferred: int


class _HasLine(Protocol):
    @property
    def waiting(self) -> int: ...

    @property
    def inflight(self) -> int: ...


class _EngineSlices(Collector):
    """``ich_inference_slices_total``, read from the engine when scraped (the engine counts its batches)."""

    def __init__(self) -> None:
        self.engine: _CountsSlices | None = None

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "ich_inference_slices",
            "Slices the engine finished inferring (a cancelled case's rest never counts).",
        )
        family.add_metric([], float(self.engine.slices_inferred if self.engine is not None else 0))
        yield family


class GatewayMetrics:
    """The gateway's metrics, registered in a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.cases = Counter(
            "ich_cases_total",
            "Cases posted to /v1/cases, one outcome each (indeterminate before positive/negative).",
            ["outcome"],
            registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "ich_stage_seconds",
            "Time spent per pipeline stage of one case.",
            ["stage"],
            buckets=_STAGE_BUCKETS,
            registry=self.registry,
        )
        self.case_probability = Histogram(
            "ich_case_probability",
            "Case-level ICH probability of analysed cases (watch for drift).",
            buckets=_PROBABILITY_BUCKETS,
            registry=self.registry,
        )
        self.slices_per_case = Histogram(
            "ich_slices_per_case",
            "Slices analysed per case.",
            buckets=_SLICE_BUCKETS,
            registry=self.registry,
        )
        self.engine_errors = Counter(
            "ich_engine_errors_total",
            "Engine failures, by reason (unavailable, timeout, error).",
            ["reason"],
            registry=self.registry,
        )
        self.inflight = Gauge(
            "ich_inflight_cases",
            "Cases being analysed right now.",
            registry=self.registry,
        )
        self.waiting = Gauge(
            "ich_waiting_cases",
            "Cases whose upload is in, waiting for an analysis slot.",
            registry=self.registry,
        )
        self.http_requests = Counter(
            "ich_http_requests_total",
            "HTTP requests by route template and status code.",
            ["route", "status"],
            registry=self.registry,
        )
        self._engine_slices = _EngineSlices()
        self.registry.register(self._engine_slices)
        # Zero-valued series from the start, so rate() and absent() queries work before the first case.
        for outcome in OUTCOMES:
            self.cases.labels(outcome=outcome)
        for stage in STAGES:
            self.stage_seconds.labels(stage=stage)
        for reason in ENGINE_ERROR_REASONS:
            self.engine_errors.labels(reason=reason)

    def watch_engine(self, engine: _CountsSlices | None) -> None:
        """Report ``engine``'s inferred slices from now on (None: zero)."""
        self._engine_slices.engine = engine

    def watch_admission(self, admission: _HasLine) -> None:
        """Report the cases holding ``admission``'s slots and those waiting in its line, read when scraped."""
        self.inflight.set_function(lambda: admission.inflight)
        self.waiting.set_function(lambda: admission.waiting)

    def observe_http(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one HTTP response (the middleware's callback; method and time are not labels)."""
        del method, seconds
        self.http_requests.labels(route=route, status=str(status)).inc()

    def exposition(self) -> bytes:
        """The registry in Prometheus text format, for ``GET /metrics``."""
        return generate_latest(self.registry)
