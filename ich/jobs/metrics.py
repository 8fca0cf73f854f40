"""The queue's Prometheus metrics, registered in the gateway's registry (no patient data in labels)."""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ich.jobs.store import STATUSES

#: Outcomes of ``ich_job_attempts_total``: how each attempt ended.
ATTEMPT_OUTCOMES: Final[tuple[str, ...]] = ("done", "failed", "retried", "released", "lost")
_QUEUE_BUCKETS: Final = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


class JobMetrics:
    """``ich_jobs{status}``, ``ich_job_queue_seconds``, ``ich_job_attempts_total{outcome}`` and friends.

    ``ich_jobs`` and ``ich_job_oldest_queued_seconds`` describe the shared queue (every replica reports the
    same values; alert on their ``max``); they are refreshed by the worker pool every few seconds.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.jobs = Gauge("ich_jobs", "Jobs in the queue's store, by status.", ["status"], registry=registry)
        self.oldest_queued = Gauge(
            "ich_job_oldest_queued_seconds",
            "Age of the oldest queued job (0 with none).",
            registry=registry,
        )
        self.queue_seconds = Histogram(
            "ich_job_queue_seconds",
            "Time from acceptance (202) to the first start of a job's analysis.",
            buckets=_QUEUE_BUCKETS,
            registry=registry,
        )
        self.attempts = Counter(
            "ich_job_attempts_total",
            "Analysis attempts of jobs, by how they ended.",
            ["outcome"],
            registry=registry,
        )
        self.purged = Counter(
            "ich_jobs_purged_total",
            "Jobs (studies and results) deleted by the retention purge.",
            registry=registry,
        )
        for status in STATUSES:
            self.jobs.labels(status=status)
        for outcome in ATTEMPT_OUTCOMES:
            self.attempts.labels(outcome=outcome)

    def observe_counts(self, counts: dict[str, int], oldest_queued_s: float) -> None:
        """Set the queue gauges from one reading of the store."""
        for status, n in counts.items():
            self.jobs.labels(status=status).set(n)
        self.oldest_queued.set(oldest_queued_s)
