"""The engine interface: what the gateway asks of whatever runs the ensemble.

Two implementations give the same numbers for the same input: ``EmbeddedEngine`` (onnxruntime in-process,
the default) and ``TritonEngine`` (a Triton server over gRPC). The gateway depends only on this module.
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from api.schemas import ModelInfo, TensorInfo
from ich.ensemble import EnsembleOutput

__all__ = ["Engine", "EngineUnavailableError", "describe_model"]


class EngineUnavailableError(RuntimeError):
    """The engine cannot answer now (server down, timeout, not loaded); the API answers 503 + Retry-After.

    Attributes:
        reason: a short, label-safe word for metrics: ``unavailable``, ``timeout`` or ``error``.
    """

    def __init__(self, detail: str, *, reason: str = "unavailable") -> None:
        super().__init__(detail)
        self.reason = reason


class Engine(abc.ABC):
    """Runs ``ich_ensemble`` on preprocessed slices.

    Attributes:
        name: ``"embedded"`` or ``"triton"``, reported in every result.
        model_version: the repository's VERSION, reported as ``model_version``.
        input_size: S of the ``[N, 4, S, S]`` images the ensemble takes.
    """

    name: str
    model_version: str
    input_size: int
    #: Slices whose inference has finished since the engine was made (``ich_inference_slices_total``);
    #: a cancelled request's unfinished batches never count, which is how a test sees the work stop.
    slices_inferred: int = 0

    @abc.abstractmethod
    async def infer(self, images: np.ndarray) -> EnsembleOutput:
        """Run the ensemble on ``images`` ``[N, 4, S, S]`` float32, batching within ``max_batch_size``.

        Cancelling the awaiting task stops the engine's work for these images (what a client's disconnect
        does), not only the wait for it.

        Raises:
            ValueError: ``images`` has the wrong shape.
            EngineUnavailableError: the engine cannot answer now.
        """

    async def warm_up(self) -> None:
        """Pay the engine's first-run costs before the gateway says it is ready (default: nothing).

        Never raises: an engine that cannot warm up now (a Triton still starting) is warmed by its first
        request instead, and readiness reports whether it can answer.
        """
        return

    @abc.abstractmethod
    async def ready(self) -> bool:
        """Whether the engine can answer now (never raises)."""

    @abc.abstractmethod
    async def models(self) -> list[ModelInfo]:
        """The ensemble and the models it calls: name, version(s), platform, readiness, inputs, outputs."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release sessions, threads and connections."""


def _tensors(tensors: Any) -> list[TensorInfo]:
    return [
        TensorInfo(
            name=t.name,
            datatype=mc.DataType.Name(t.data_type).removeprefix("TYPE_"),
            shape=[int(d) for d in t.dims],
        )
        for t in tensors
    ]


def describe_model(config: mc.ModelConfig, versions: list[str], *, ready: bool | None = None) -> ModelInfo:
    """One entry of ``GET /v1/models`` from a model's config, the same for both engines.

    ``shape`` excludes the batch dimension (all models are batched, up to ``max_batch_size``).
    """
    return ModelInfo(
        name=config.name,
        version=versions[-1] if versions else None,
        versions=versions,
        platform=config.platform or config.backend,
        ready=ready,
        max_batch_size=int(config.max_batch_size),
        inputs=_tensors(config.input),
        outputs=_tensors(config.output),
    )
