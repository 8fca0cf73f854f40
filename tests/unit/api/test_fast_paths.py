"""The speed-ups change no number: each file parsed once, the small PROB_MAX output, maps fetched only where
the scoring reads them, preprocessing chunked beside inference, engines warmed before the gateway serves."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest

from api.app import create_app
from api.engines.embedded import EmbeddedEngine
from api.metrics import GatewayMetrics
from api.pipeline import OVERLAP_CHUNK, WARM_UP_MATRIX, analyse_case, warm_up_pipeline
from api.settings import Settings
from ich import preprocess, spec, volume
from ich.aggregate import aggregate
from ich.ensemble import EnsembleOutput, EnsembleRunner, concat_outputs
from ich.intake import read_folder, read_study
from ich.member_maps import slices_needing_maps
from ich.preprocess import preprocess_volume
from ich.scoring import CaseModel
from tests.support.dicom_study import study_zip
from tests.support.tiny_repository import build_tiny_repository

SIZE = 16
SHIPPED = Path(__file__).resolve().parents[3] / "model_repository"


@pytest.fixture()
def tiny_repo(tmp_path: Path) -> Path:
    return build_tiny_repository(tmp_path / "repo", size=SIZE, max_batch_size=4)


@pytest.fixture()
def parses(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every ``pydicom.dcmread`` call that ``ich.volume`` makes (the seam all DICOM parsing goes through)."""
    calls: list[int] = []
    real = pydicom.dcmread

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(volume.pydicom, "dcmread", counting)
    return calls


def _head(n: int, size: int = 64) -> np.ndarray:
    hu = np.full((n, size, size), -1000.0, dtype=np.float32)
    hu[:, 8:-8, 8:-8] = 1000.0
    hu[:, 12:-12, 12:-12] = 35.0
    hu[n // 2, 20:28, 20:30] = 70.0
    return hu


# ------------------------------------------------------------------------------------------ parsed once


def test_each_file_of_a_zip_is_parsed_once(parses: list[int]) -> None:
    body, uids = study_zip(_head(7), shuffle=True)
    study = read_study(body)
    assert study.volume.sop_instance_uids == uids
    assert len(parses) == 7


def test_each_file_of_a_folder_is_parsed_once(parses: list[int], tmp_path: Path) -> None:
    import io
    import zipfile

    from tests.support.dicom_study import study_zip as zipped

    body, _ = zipped(_head(5))
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        archive.extractall(tmp_path / "study")
    study = read_folder(tmp_path / "study")
    assert study.volume.hu.shape[0] == 5
    assert len(parses) == 5


def test_headers_kept_for_the_seg_hold_no_pixels_nor_the_file(parses: list[int]) -> None:
    body, _ = study_zip(_head(3))
    study = read_study(body)
    assert len(study.source_headers) == 3
    for ds in study.source_headers:
        assert "PixelData" not in ds  # decoded into the volume, then let go
        assert getattr(ds, "buffer", None) is None  # no reference to the uploaded file's bytes


def test_a_slice_whose_pixels_are_cut_short_is_left_out_with_the_decoders_reason() -> None:
    import io
    import zipfile

    body, _ = study_zip(_head(4))
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(body)) as src, zipfile.ZipFile(out, "w") as dst:
        names = sorted(src.namelist())
        for name in names:
            data = src.read(name)
            dst.writestr(name, data[:-2000] if name == names[1] else data)
    study = read_study(out.getvalue())
    assert study.volume.hu.shape[0] == 3
    reasons = [s.reason for s in study.skipped if s.file == names[1]]
    assert reasons and reasons[0].startswith("pixel data could not be decoded")


# ------------------------------------------------------------------------------------------ PROB_MAX


def test_prob_max_of_the_shipped_ensemble_is_the_maximum_of_each_map() -> None:
    runner = EnsembleRunner.from_repository(SHIPPED)
    images = np.random.default_rng(0).random((2, 4, runner.input_size, runner.input_size), dtype=np.float32)
    out = runner.run(images)
    assert any(step.model_name == spec.PROB_MAX_MODEL for step in runner._steps)
    stack = np.concatenate([out.probs[k] for k in spec.MODEL_KEYS], axis=1)
    assert out.prob_max is not None
    np.testing.assert_array_equal(out.prob_max, stack.max(axis=(2, 3)))


def test_an_output_without_prob_max_takes_it_from_the_maps() -> None:
    probs = {
        k: np.random.default_rng(i).random((3, 1, 8, 8), dtype=np.float32)
        for i, k in enumerate(spec.MODEL_KEYS)
    }
    out = EnsembleOutput(
        fused=np.zeros((3, 1, 8, 8), np.float32),
        slice_prob=np.zeros(3, np.float32),
        weights=np.full((3, 5), 0.2, np.float32),
        probs=probs,
    )
    assert out.prob_max is not None
    np.testing.assert_array_equal(out.prob_max[:, 2], probs["sdh"].reshape(3, -1).max(axis=1))


# ------------------------------------------------------------------------------------------ maps on demand


def _synthetic_output(n: int = 6, size: int = 32, seed: int = 0) -> tuple[EnsembleOutput, np.ndarray]:
    rng = np.random.default_rng(seed)
    probs = {k: rng.random((n, 1, size, size), dtype=np.float32) * 0.4 for k in spec.MODEL_KEYS}
    fused = rng.random((n, 1, size, size), dtype=np.float32) * 0.3
    fused[2:4, 0, 10:16, 12:18] = 0.9  # one lesion over two slices
    fused[5, 0, 3:5, 3:5] = 0.7  # a small focus elsewhere
    for i, k in enumerate(spec.MODEL_KEYS):
        probs[k][2:4, 0, 10:16, 12:18] = 0.5 + 0.1 * i
    slice_prob = fused.reshape(n, -1).max(axis=1)
    weights = np.full((n, 5), 0.2, dtype=np.float32)
    images = rng.random((n, 4, size, size), dtype=np.float32)
    return EnsembleOutput(fused=fused, slice_prob=slice_prob, weights=weights, probs=probs), images


def test_the_slices_needing_maps_are_the_candidates_and_the_top_slice() -> None:
    out, _ = _synthetic_output()
    np.testing.assert_array_equal(slices_needing_maps(out.fused, out.slice_prob), [2, 3, 5])
    quiet = np.zeros((4, 1, 8, 8), np.float32)
    quiet[1, 0, 0, 0] = 0.3
    np.testing.assert_array_equal(slices_needing_maps(quiet, quiet.reshape(4, -1).max(axis=1)), [1])


@pytest.mark.parametrize("with_case_model", [True, False])
def test_findings_are_the_same_with_maps_only_where_the_scoring_reads(with_case_model: bool) -> None:
    full, images = _synthetic_output()
    n = full.num_slices
    needed = slices_needing_maps(full.fused, full.slice_prob)
    noise = np.random.default_rng(9)
    partial_probs = {}
    for key, prob in full.probs.items():
        partial = noise.random(prob.shape, dtype=np.float32)  # anything at all where nothing reads it
        partial[needed] = prob[needed]
        partial_probs[key] = partial
    partial_out = EnsembleOutput(
        fused=full.fused,
        slice_prob=full.slice_prob,
        weights=full.weights,
        probs=partial_probs,
        prob_max=full.prob_max,
        map_slices=needed,
    )
    from tests.support.ensemble_case import Volume

    vol = Volume(
        hu=np.zeros((n, 64, 64), np.float32),
        pixel_spacing_mm=(0.5, 0.5),
        slice_thickness_mm=5.0,
        sop_instance_uids=[f"1.2.{i}" for i in range(n)],
    )
    case_model = CaseModel.load(SHIPPED / "case_model.json") if with_case_model else None
    a = aggregate(full, vol, images, case_model=case_model)
    b = aggregate(partial_out, vol, images, case_model=case_model)
    assert a.lesions and a.lesions == b.lesions
    assert a.ich_probability == b.ich_probability
    assert a.slices == b.slices
    assert getattr(a, "uncertainty", None) == getattr(b, "uncertainty", None)
    np.testing.assert_array_equal(a.source_mask, b.source_mask)


def test_joined_outputs_keep_the_slices_their_maps_belong_to() -> None:
    first, _ = _synthetic_output(n=6)
    second, _ = _synthetic_output(n=6, seed=1)
    partial = EnsembleOutput(
        fused=second.fused,
        slice_prob=second.slice_prob,
        weights=second.weights,
        probs=second.probs,
        prob_max=second.prob_max,
        map_slices=np.array([2, 3]),
    )
    joined = concat_outputs([first, partial])
    assert joined.num_slices == 12
    np.testing.assert_array_equal(joined.map_slices, [0, 1, 2, 3, 4, 5, 8, 9])
    assert joined.prob_max is not None and joined.prob_max.shape == (12, 5)


# ------------------------------------------------------------------------------------------ overlap


class RecordingEngine(EmbeddedEngine):
    """The real embedded engine, noting each ``infer`` call's slice count and warm-ups."""

    def __init__(self, runner: EnsembleRunner, **kwargs: Any) -> None:
        super().__init__(runner, **kwargs)
        self.calls: list[int] = []
        self.warmed_at: float | None = None

    async def infer(self, images: np.ndarray) -> EnsembleOutput:
        self.calls.append(int(images.shape[0]))
        return await super().infer(images)

    async def warm_up(self) -> None:
        await super().warm_up()
        self.warmed_at = time.monotonic()


def test_preprocessing_a_chunk_gives_the_same_tensor_as_the_whole_volume() -> None:
    hu = _head(2 * OVERLAP_CHUNK + 3)
    whole = preprocess_volume(hu, SIZE)
    np.testing.assert_array_equal(
        whole[OVERLAP_CHUNK : 2 * OVERLAP_CHUNK],
        preprocess_volume(hu[OVERLAP_CHUNK : 2 * OVERLAP_CHUNK], SIZE),
    )


async def test_chunks_go_to_the_engine_and_the_result_is_the_one_shot_result(tiny_repo: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    n = 2 * OVERLAP_CHUNK + 3
    body, _ = study_zip(_head(n))
    runner = EnsembleRunner.from_repository(tiny_repo, intra_op_threads=1)
    engine = RecordingEngine(runner)
    settings = Settings(model_repository=tiny_repo)
    with ThreadPoolExecutor(2) as executor:
        result = await analyse_case(
            body,
            engine=engine,
            executor=executor,
            settings=settings,
            metrics=GatewayMetrics(),
            started=time.perf_counter(),
        )
    await engine.close()
    assert engine.calls == [OVERLAP_CHUNK, OVERLAP_CHUNK, n - 2 * OVERLAP_CHUNK]
    reference = runner.run(preprocess_volume(read_study(body).volume.hu, SIZE))
    np.testing.assert_allclose([s.probability for s in result.slices], reference.slice_prob, atol=1e-6)
    assert result.timing_ms.preprocess > 0 and result.timing_ms.inference > 0


async def test_a_cancelled_case_cancels_every_chunk_inference(tiny_repo: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    started: list[int] = []
    cancelled: list[int] = []

    class Slow(EmbeddedEngine):
        async def infer(self, images: np.ndarray) -> EnsembleOutput:
            started.append(int(images.shape[0]))
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.append(int(images.shape[0]))
                raise
            raise AssertionError("not reached")

    engine = Slow(EnsembleRunner.from_repository(tiny_repo, intra_op_threads=1))
    body, _ = study_zip(_head(2 * OVERLAP_CHUNK))
    with ThreadPoolExecutor(2) as executor:
        task = asyncio.create_task(
            analyse_case(
                body,
                engine=engine,
                executor=executor,
                settings=Settings(model_repository=tiny_repo),
                metrics=GatewayMetrics(),
                started=time.perf_counter(),
            )
        )
        while len(started) < 2:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await engine.close()
    assert sorted(cancelled) == sorted(started) == [OVERLAP_CHUNK, OVERLAP_CHUNK]


# ------------------------------------------------------------------------------------------ warm-up


def test_warm_up_runs_every_step_at_the_serving_batch(
    tiny_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = EnsembleRunner.from_repository(tiny_repo, intra_op_threads=1)
    sizes: list[int] = []
    real = runner._run_batch

    def recording(images: np.ndarray, control: Any) -> dict[str, np.ndarray]:
        sizes.append(int(images.shape[0]))
        return real(images, control)

    monkeypatch.setattr(runner, "_run_batch", recording)
    images = np.random.default_rng(0).random((3, 4, SIZE, SIZE), dtype=np.float32)
    before = runner.run(images, batch_size=3)
    sizes.clear()
    runner.warm_up(3)
    assert sizes and set(sizes) == {3}
    after = runner.run(images, batch_size=3)
    np.testing.assert_array_equal(before.fused, after.fused)


async def test_the_engine_is_warm_before_the_gateway_serves(tiny_repo: Path) -> None:
    engine = RecordingEngine(EnsembleRunner.from_repository(tiny_repo, intra_op_threads=1), batch_size=2)
    app = create_app(Settings(model_repository=tiny_repo), engine=engine)
    async with app.router.lifespan_context(app):
        assert engine.warmed_at is not None  # before the lifespan yields, i.e. before any request
        warmed = engine.warmed_at
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            response = await client.get("/readyz")
        assert response.status_code == 200
        assert warmed < time.monotonic()
    assert engine.calls == []  # the warm-up infers nothing a metric would count
    assert engine.slices_inferred == 0
    await engine.close()


async def test_the_pipeline_warm_up_fills_the_resize_tables_of_the_usual_matrix() -> None:
    preprocess._read_rows.cache_clear()
    with ThreadPoolExecutor(max_workers=1) as executor:
        await warm_up_pipeline(executor, SIZE)
    before = preprocess._read_rows.cache_info()
    assert before.currsize >= 1
    preprocess._read_rows(WARM_UP_MATRIX, SIZE)  # what the first 512 x 512 study asks for
    after = preprocess._read_rows.cache_info()
    assert after.hits == before.hits + 1 and after.misses == before.misses
