"""Engines that run the ensemble: ``embedded`` (onnxruntime in-process) and ``triton`` (a Triton server).

``create_engine`` is the one place the gateway turns settings into an engine.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from api.engines.base import Engine, EngineUnavailableError, describe_model
from ich import repository, spec

if TYPE_CHECKING:
    from api.engines.triton import TritonEngine

__all__ = ["ENGINE_KINDS", "Engine", "EngineUnavailableError", "create_engine", "describe_model"]

logger = logging.getLogger(__name__)

ENGINE_KINDS = ("embedded", "triton")


def create_engine(
    kind: str,
    *,
    repository: Path,
    triton_url: str,
    timeout_s: float,
    intra_op_threads: int | None = None,
    batch_size: int | None = None,
) -> Engine:
    """Build the engine the settings ask for.

    Args:
        kind: ``"embedded"`` or ``"triton"``.
        repository: the model repository. The embedded engine loads it entirely; the Triton engine reads only
            its ensemble config and VERSION (when present) for the input size and the version it reports.
        triton_url: Triton gRPC ``host:port`` (Triton engine only).
        timeout_s: deadline of one inference request (Triton engine only).
        intra_op_threads: onnxruntime threads per operator (embedded engine only).
        batch_size: slices per onnxruntime run (embedded engine only; None: the repository's batch).

    Raises:
        ValueError: unknown ``kind``.
        ich.repository.RepositoryError: the embedded engine's repository is incomplete.
    """
    if kind == "embedded":
        from api.engines.embedded import EmbeddedEngine

        return EmbeddedEngine.from_repository(
            repository, intra_op_threads=intra_op_threads, batch_size=batch_size
        )
    if kind == "triton":
        from api.engines.triton import TritonEngine

        return _triton_engine(TritonEngine, repository, triton_url, timeout_s)
    raise ValueError(f"unknown engine {kind!r}; expected one of {', '.join(ENGINE_KINDS)}")


def _triton_engine(engine_cls: type[TritonEngine], root: Path, url: str, timeout_s: float) -> TritonEngine:
    """Input size, batch size and version from the local copy of the repository, when it is there."""
    version = repository.read_version(root)
    config_file = repository.config_path(root, spec.ENSEMBLE_MODEL)
    if not config_file.is_file():
        logger.warning("no %s: assuming input size %d", config_file, spec.DEFAULT_INPUT_SIZE)
        return engine_cls(url, timeout_s=timeout_s, model_version=version)
    config = repository.read_config(config_file)
    return engine_cls(
        url,
        timeout_s=timeout_s,
        input_size=repository.input_size_of(config),
        max_batch_size=int(config.max_batch_size) or repository.DEFAULT_MAX_BATCH_SIZE,
        model_version=version,
    )
