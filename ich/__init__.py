"""Domain core of the ICH service: DICOM intake, preprocessing, the ensemble runner, aggregation, metrics.

Imports neither FastAPI nor torch, so the gateway, the evaluation and the tests share one implementation.
"""

__all__: list[str] = []
