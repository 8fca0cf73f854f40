"""The same study through the embedded engine and a real tritonserver gives the same numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from api.engines import EngineUnavailableError, create_engine
from api.engines.embedded import EmbeddedEngine
from api.engines.triton import TritonEngine
from ich import spec
from ich.member_maps import slices_needing_maps
from ich_devtools.processes import reserved_port
from ich_devtools.triton_local import LocalTriton
from tests.integration.conftest import (
    TINY_MAX_BATCH,
    TINY_SIZE,
    assert_same_numbers,
    post_study,
    require_tritonserver,
    running_triton,
)

pytestmark = pytest.mark.triton


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((n, spec.IN_CHANNELS, TINY_SIZE, TINY_SIZE), dtype=np.float32)


async def test_embedded_and_triton_agree(tiny_repository: Path, triton_server: LocalTriton) -> None:
    images = _images(2 * TINY_MAX_BATCH + 3, seed=7)  # three requests to Triton, three runner batches
    embedded = EmbeddedEngine.from_repository(tiny_repository, intra_op_threads=1)
    triton = create_engine(
        "triton", repository=tiny_repository, triton_url=triton_server.grpc_url, timeout_s=30.0
    )
    try:
        assert await triton.ready()
        local = await embedded.infer(images)
        remote = await triton.infer(images)
    finally:
        await embedded.close()
        await triton.close()
    assert triton.model_version == embedded.model_version
    assert triton.input_size == embedded.input_size == TINY_SIZE
    assert remote.slice_prob.shape == local.slice_prob.shape == (images.shape[0],)
    assert remote.fused.shape == local.fused.shape == (images.shape[0], 1, TINY_SIZE, TINY_SIZE)
    assert remote.weights.shape == local.weights.shape == (images.shape[0], len(spec.MODEL_KEYS))
    np.testing.assert_allclose(remote.slice_prob, local.slice_prob, atol=1e-3)
    np.testing.assert_allclose(remote.weights, local.weights, atol=1e-3)
    np.testing.assert_allclose(remote.fused, local.fused, atol=1e-3)
    for key in spec.MODEL_KEYS:
        assert remote.probs[key].shape == local.probs[key].shape
        np.testing.assert_allclose(remote.probs[key], local.probs[key], atol=1e-3)
    # The slices must come back in order: a shuffled study gives the shuffled probabilities.
    order = np.random.default_rng(1).permutation(images.shape[0])
    triton2 = TritonEngine(triton_server.grpc_url, input_size=TINY_SIZE, max_batch_size=TINY_MAX_BATCH)
    try:
        shuffled = await triton2.infer(images[order])
    finally:
        await triton2.close()
    np.testing.assert_allclose(shuffled.slice_prob, local.slice_prob[order], atol=1e-3)


async def test_compact_answer_fetches_maps_only_where_the_scoring_reads(
    tiny_repository: Path, triton_server: LocalTriton
) -> None:
    images = _images(2 * TINY_MAX_BATCH + 1, seed=3)
    images[::2] *= 0.05  # dark slices: a fused map further from the mask threshold
    compact = TritonEngine(triton_server.grpc_url, input_size=TINY_SIZE, max_batch_size=TINY_MAX_BATCH)
    full = TritonEngine(
        triton_server.grpc_url, input_size=TINY_SIZE, max_batch_size=TINY_MAX_BATCH, full_maps=True
    )
    embedded = EmbeddedEngine.from_repository(tiny_repository, intra_op_threads=1)
    try:
        assert await compact.ready() and await full.ready()
        small, everything, local = (
            await compact.infer(images),
            await full.infer(images),
            await embedded.infer(images),
        )
    finally:
        await compact.close()
        await full.close()
        await embedded.close()
    assert everything.map_slices is None
    assert small.map_slices is not None
    np.testing.assert_array_equal(
        small.map_slices, slices_needing_maps(everything.fused, everything.slice_prob)
    )
    np.testing.assert_allclose(small.fused, everything.fused, atol=1e-6)
    np.testing.assert_allclose(small.weights, everything.weights, atol=1e-6)
    # PROB_MAX computed inside the ensemble is the maximum of each full map, on every slice.
    stack = np.concatenate([everything.probs[k] for k in spec.MODEL_KEYS], axis=1)
    np.testing.assert_allclose(small.prob_max, stack.max(axis=(2, 3)), atol=1e-6)
    np.testing.assert_allclose(local.prob_max, small.prob_max, atol=1e-3)
    for key in spec.MODEL_KEYS:
        np.testing.assert_allclose(
            small.probs[key][small.map_slices], everything.probs[key][small.map_slices]
        )
        others = np.setdiff1d(np.arange(images.shape[0]), small.map_slices)
        assert not small.probs[key][others].any()
    assert compact.slices_inferred == images.shape[0]  # the second call for the maps is not counted twice


async def test_models_lists_the_ensemble_and_its_steps(triton_server: LocalTriton) -> None:
    engine = TritonEngine(triton_server.grpc_url, input_size=TINY_SIZE)
    try:
        models = await engine.models()
    finally:
        await engine.close()
    by_name = {m.name: m for m in models}
    assert set(by_name) == {
        spec.ENSEMBLE_MODEL,
        spec.WEIGHTING_MODEL,
        spec.PROB_MAX_MODEL,
        *spec.BASE_MODELS.values(),
    }
    assert by_name[spec.ENSEMBLE_MODEL].platform == "ensemble"
    assert by_name[spec.BASE_MODELS["sah"]].platform == "python"  # the CPU rendering's runner
    assert all(m.ready for m in models)
    assert [t.model_dump() for t in by_name[spec.BASE_MODELS["all"]].inputs] == [
        {"name": spec.IMAGE, "datatype": "FP32", "shape": [4, TINY_SIZE, TINY_SIZE]}
    ]
    assert by_name[spec.ENSEMBLE_MODEL].versions == ["1"]


async def test_ready_refuses_a_size_mismatch(triton_server: LocalTriton) -> None:
    engine = TritonEngine(triton_server.grpc_url, input_size=TINY_SIZE * 2)
    try:
        assert not await engine.ready()
    finally:
        await engine.close()


async def test_deadline_becomes_engine_unavailable(tiny_repository: Path, tmp_path: Path) -> None:
    """A deadline shorter than the work: the engine says ``timeout`` (or ``unavailable``), never hangs.

    On a server of its own: Triton 2.51 can crash with SIGSEGV when a client cancels a gRPC request
    (triton-inference-server/server#7368), and a crash here must not take the other tests' server with it.
    """
    require_tritonserver()
    with running_triton(tiny_repository, tmp_path / "triton") as server:
        engine = TritonEngine(server.grpc_url, input_size=TINY_SIZE, timeout_s=1e-4)
        try:
            with pytest.raises(EngineUnavailableError) as err:
                await engine.infer(_images(TINY_MAX_BATCH, seed=3))
        finally:
            await engine.close()
    assert err.value.reason in {"timeout", "unavailable"}


async def test_server_down() -> None:
    engine = TritonEngine(f"127.0.0.1:{reserved_port()}", input_size=TINY_SIZE, timeout_s=2.0)
    try:
        assert not await engine.ready()
        with pytest.raises(EngineUnavailableError) as err:
            await engine.infer(_images(2, seed=4))
        assert err.value.reason == "unavailable"
        with pytest.raises(EngineUnavailableError):
            await engine.models()
    finally:
        await engine.close()


async def test_wrong_shape_is_rejected_before_the_network(triton_server: LocalTriton) -> None:
    engine = TritonEngine(triton_server.grpc_url, input_size=TINY_SIZE)
    try:
        with pytest.raises(ValueError, match="shape"):
            await engine.infer(np.zeros((2, 3, TINY_SIZE, TINY_SIZE), np.float32))
    finally:
        await engine.close()


async def test_same_study_through_the_gateway_with_both_engines(
    tiny_repository: Path, triton_server: LocalTriton
) -> None:
    """A DICOM study posted to the gateway: the embedded and the Triton engine give the same slices."""
    from api.settings import Settings
    from tests.support.dicom_study import study_zip

    hu = np.full((6, 64, 64), 30.0, dtype=np.float32)
    hu[2:4, 20:30, 20:34] = 70.0  # a hyperdense patch on two slices
    hu[:, :4, :] = 1000.0  # some bone
    body, uids = study_zip(hu, shuffle=True)
    results = {}
    for kind in ("embedded", "triton"):
        settings = Settings(
            engine=kind,
            model_repository=tiny_repository,
            triton_url=triton_server.grpc_url,
            intra_op_threads=1,
            threads=2,
        )
        results[kind] = await post_study(settings, body)
    embedded, triton = results["embedded"], results["triton"]
    assert (embedded["engine"], triton["engine"]) == ("embedded", "triton")
    assert embedded["model_version"] == triton["model_version"]
    assert [s["sop_instance_uid"] for s in triton["slices"]] == uids
    assert [s["sop_instance_uid"] for s in embedded["slices"]] == uids
    assert_same_numbers(triton, embedded, per_model="model_probabilities")
