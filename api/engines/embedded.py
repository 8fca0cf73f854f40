"""The embedded engine: ``ich_ensemble`` run in-process by ``ich.ensemble.EnsembleRunner`` (onnxruntime).

onnxruntime releases the GIL while it computes, so running the runner in a worker thread keeps the event
loop free for other requests (health checks, uploads) while one study is inferred.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from api.engines.base import Engine, describe_model
from api.schemas import ModelInfo
from ich.ensemble import EnsembleOutput, EnsembleRunner, RunControl

__all__ = ["EmbeddedEngine"]

logger = logging.getLogger(__name__)


class EmbeddedEngine(Engine):
    """Runs the ensemble with onnxruntime in a small thread pool of its own.

    Args:
        runner: the loaded ensemble.
        max_concurrency: studies inferred at the same time; onnxruntime already spreads one study over the
            cores, so more than one or two mostly adds memory and contention.
        batch_size: slices per onnxruntime run (None: the repository's ``max_batch_size``); onnxruntime's
            memory arena keeps the largest batch's activations for good, so this bounds the engine's memory.
    """

    name = "embedded"

    def __init__(
        self, runner: EnsembleRunner, *, max_concurrency: int = 1, batch_size: int | None = None
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.runner = runner
        self.model_version = runner.model_version
        self.input_size = runner.input_size
        self.max_batch_size = runner.max_batch_size
        self._executor: ThreadPoolExecutor | None = ThreadPoolExecutor(
            max_workers=max_concurrency, thread_name_prefix="ich-onnx"
        )
        self._count_lock = threading.Lock()

    @classmethod
    def from_repository(
        cls, root: Path, *, intra_op_threads: int | None = None, batch_size: int | None = None
    ) -> EmbeddedEngine:
        """Load the repository's ensemble (raises ``RepositoryError`` when it is incomplete)."""
        runner = EnsembleRunner.from_repository(root, intra_op_threads=intra_op_threads)
        return cls(runner, batch_size=batch_size)

    async def infer(self, images: np.ndarray) -> EnsembleOutput:
        """Run the ensemble in the engine's thread pool, batching within ``max_batch_size``.

        A cancelled caller cancels the run itself (``RunControl``): the thread stops within one onnxruntime
        operator instead of inferring the rest of the series for nobody.
        """
        if self._executor is None:
            raise RuntimeError("engine is closed")
        loop = asyncio.get_running_loop()
        control = RunControl(on_batch=self._count_slices)
        try:
            run = functools.partial(self.runner.run, images, control, batch_size=self.batch_size)
            return await loop.run_in_executor(self._executor, run)
        except asyncio.CancelledError:
            control.cancel()
            raise

    async def warm_up(self) -> None:
        """One blank batch of ``batch_size`` through every session, in the engine's own thread pool."""
        if self._executor is None:
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, functools.partial(self.runner.warm_up, self.batch_size))

    def _count_slices(self, slices: int) -> None:
        with self._count_lock:
            self.slices_inferred += slices

    async def ready(self) -> bool:
        """Ready as long as it is open: the sessions were loaded at construction."""
        return self._executor is not None

    async def models(self) -> list[ModelInfo]:
        """The ensemble and its step models from the repository's configs."""
        versions = self.runner.versions
        configs = [self.runner.ensemble_config, *self.runner.step_configs.values()]
        return [describe_model(c, [versions.get(c.name, "1")], ready=True) for c in configs]

    async def close(self) -> None:
        """Stop the thread pool (waits for a running inference)."""
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, wait=True)
