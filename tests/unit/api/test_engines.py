"""api.engines: the factory and the embedded engine (the Triton engine is tested against a real server)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from api.engines import create_engine
from api.engines.embedded import EmbeddedEngine
from api.engines.triton import TritonEngine
from ich import spec
from ich.repository import RepositoryError
from tests.support.tiny_repository import build_tiny_repository, reference_outputs

SIZE = 16


@pytest.fixture()
def tiny_repo(tmp_path: Path) -> Path:
    return build_tiny_repository(tmp_path / "repo", size=SIZE, max_batch_size=4, version="tiny-e")


async def test_embedded_engine_runs_off_the_event_loop(tiny_repo: Path) -> None:
    engine = create_engine("embedded", repository=tiny_repo, triton_url="", timeout_s=1.0, intra_op_threads=1)
    assert isinstance(engine, EmbeddedEngine)
    assert (engine.name, engine.model_version, engine.input_size) == ("embedded", "tiny-e", SIZE)
    images = np.random.default_rng(0).random((6, 4, SIZE, SIZE), dtype=np.float32)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    try:
        out = await engine.infer(images)
    finally:
        task.cancel()
    assert ticks > 0  # the loop kept running while the ensemble computed
    np.testing.assert_allclose(out.slice_prob, reference_outputs(images)["slice_prob"], atol=1e-5)
    assert await engine.ready()
    await engine.close()
    assert not await engine.ready()
    with pytest.raises(RuntimeError, match="closed"):
        await engine.infer(images)


async def test_embedded_models_describe_configs(tiny_repo: Path) -> None:
    engine = EmbeddedEngine.from_repository(tiny_repo)
    try:
        models = await engine.models()
    finally:
        await engine.close()
    by_name = {m.name: m for m in models}
    steps = {spec.WEIGHTING_MODEL, spec.PROB_MAX_MODEL, *spec.BASE_MODELS.values()}
    assert set(by_name) == {spec.ENSEMBLE_MODEL, *steps}
    weighting = by_name[spec.WEIGHTING_MODEL]
    assert weighting.platform == "onnxruntime_onnx"
    assert weighting.versions == ["1"]
    assert {o.name: o.shape for o in weighting.outputs} == {
        "WEIGHTS": [5],
        "FUSED": [1, SIZE, SIZE],
        "SLICE_PROB": [1],
    }


def test_triton_engine_takes_size_and_version_from_the_local_repository(tiny_repo: Path) -> None:
    engine = create_engine("triton", repository=tiny_repo, triton_url="127.0.0.1:1", timeout_s=5.0)
    assert isinstance(engine, TritonEngine)
    assert (engine.input_size, engine.max_batch_size, engine.model_version) == (SIZE, 4, "tiny-e")


def test_triton_engine_without_local_repository_uses_defaults(tmp_path: Path) -> None:
    engine = create_engine("triton", repository=tmp_path, triton_url="127.0.0.1:1", timeout_s=5.0)
    assert engine.input_size == spec.DEFAULT_INPUT_SIZE


def test_factory_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown engine"):
        create_engine("tensorrt", repository=tmp_path, triton_url="", timeout_s=1.0)
    with pytest.raises(RepositoryError):
        create_engine("embedded", repository=tmp_path, triton_url="", timeout_s=1.0)
    with pytest.raises(ValueError, match="timeout_s"):
        TritonEngine("127.0.0.1:1", timeout_s=0)
