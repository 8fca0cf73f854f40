"""A fake engine for gateway tests: deterministic, transparent maths, switchable outages.

The fused map is the stroke-window channel (channel 0) scaled by 0.95, so a study's probability follows its
HU values: blood-like voxels (>= 60 HU) give 0.95 (positive), 30 HU brain gives 0.2375 (negative), 41 HU
gives 0.49875 (indeterminate). Tests can therefore build studies with a known expected answer.
"""

from __future__ import annotations

import asyncio

import numpy as np

from api.engines.base import Engine, EngineUnavailableError
from api.schemas import ModelInfo
from ich import spec
from ich.ensemble import EnsembleOutput

SCALE = 0.95
#: Each member's map is the fused map times its factor (so per-model maxima are checkable).
MEMBER_FACTORS = {"all": 1.0, "subtype": 0.9, "sdh": 0.8, "sah": 0.7, "small": 0.6}
WEIGHTS = np.array([0.3, 0.25, 0.2, 0.15, 0.1], np.float32)


class FakeEngine(Engine):
    """In-memory engine; set ``down`` to make ``infer`` and ``ready`` fail like an unreachable Triton."""

    def __init__(self, *, input_size: int = 32, name: str = "fake", model_version: str = "fake-1") -> None:
        self.name = name
        self.model_version = model_version
        self.input_size = input_size
        self.down = False
        self.error: Exception | None = None
        self.calls: list[tuple[int, ...]] = []
        self.closed = False
        #: When set, ``infer`` signals ``entered`` and waits for ``gate`` (tests of concurrency).
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def infer(self, images: np.ndarray) -> EnsembleOutput:
        if self.down:
            raise EngineUnavailableError("fake engine is down", reason="unavailable")
        if self.error is not None:
            raise self.error
        if self.gate is not None:
            self.entered.set()
            await self.gate.wait()
        expected = (spec.IN_CHANNELS, self.input_size, self.input_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"images must be [N, {expected}], got {images.shape}")
        self.calls.append(tuple(images.shape))
        fused = (images[:, 0:1] * SCALE).astype(np.float32)
        n = images.shape[0]
        return EnsembleOutput(
            fused=fused,
            slice_prob=fused.reshape(n, -1).max(axis=1),
            weights=np.tile(WEIGHTS, (n, 1)),
            probs={key: (fused * MEMBER_FACTORS[key]).astype(np.float32) for key in spec.MODEL_KEYS},
        )

    async def ready(self) -> bool:
        return not self.down

    async def models(self) -> list[ModelInfo]:
        if self.down:
            raise EngineUnavailableError("fake engine is down")
        return [ModelInfo(name=spec.ENSEMBLE_MODEL, version="1", platform="ensemble", ready=True)]

    async def close(self) -> None:
        self.closed = True
