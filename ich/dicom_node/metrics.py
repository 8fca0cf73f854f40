"""The DICOM node's Prometheus metrics, in the gateway's registry (labels carry outcomes, never UIDs)."""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter

#: ``ich_dicom_instances_total{door, outcome}``.
INSTANCE_OUTCOMES: Final[tuple[str, ...]] = ("stored", "discarded", "refused")
DOORS: Final[tuple[str, ...]] = ("dicom", "dicomweb")
#: ``ich_dicom_studies_total{outcome}``: what became of complete studies.
STUDY_OUTCOMES: Final[tuple[str, ...]] = ("queued", "study_incomplete", "study_too_large", "duplicate")
#: ``ich_results_deliveries_total{outcome}``: how each delivery attempt ended.
DELIVERY_OUTCOMES: Final[tuple[str, ...]] = ("delivered", "retried", "failed")


class DicomMetrics:
    """Counters of instances received, studies queued and results delivered."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.instances = Counter(
            "ich_dicom_instances_total",
            "DICOM instances received, by door (C-STORE or STOW-RS) and outcome.",
            ["door", "outcome"],
            registry=registry,
        )
        self.studies = Counter(
            "ich_dicom_studies_total",
            "Complete studies handed to the job queue, by outcome.",
            ["outcome"],
            registry=registry,
        )
        self.deliveries = Counter(
            "ich_results_deliveries_total",
            "Attempts to send a job's DICOM results to the destination, by outcome.",
            ["outcome"],
            registry=registry,
        )
        for door in DOORS:
            for outcome in INSTANCE_OUTCOMES:
                self.instances.labels(door=door, outcome=outcome)
        for outcome in STUDY_OUTCOMES:
            self.studies.labels(outcome=outcome)
        for outcome in DELIVERY_OUTCOMES:
            self.deliveries.labels(outcome=outcome)

    def instance(self, door: str, outcome: str) -> None:
        self.instances.labels(door=door, outcome=outcome).inc()
