"""ich.ensemble: the runner follows the steps, batches, and fails clearly on a broken repository."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from ich import repository, spec
from ich.ensemble import EnsembleRunner, RepositoryError, check_images
from tests.support.tiny_repository import build_tiny_repository, reference_outputs

SIZE = 16


@pytest.fixture()
def tiny_repo(tmp_path: Path) -> Path:
    return build_tiny_repository(tmp_path / "repo", size=SIZE, max_batch_size=4, version="tiny-1")


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, spec.IN_CHANNELS, SIZE, SIZE), dtype=np.float32)


def test_runner_reads_size_batch_and_version(tiny_repo: Path) -> None:
    runner = EnsembleRunner.from_repository(tiny_repo, intra_op_threads=1)
    assert runner.input_size == SIZE
    assert runner.max_batch_size == 4
    assert runner.model_version == "tiny-1"


def test_runner_matches_numpy_reference_across_batches(tiny_repo: Path) -> None:
    runner = EnsembleRunner.from_repository(tiny_repo, intra_op_threads=1)
    images = _images(11)  # 11 > max_batch_size 4: three batches (4, 4, 3)
    out = runner.run(images)
    ref = reference_outputs(images)
    assert out.fused.shape == (11, 1, SIZE, SIZE)
    assert out.slice_prob.shape == (11,)
    assert out.weights.shape == (11, 5)
    assert out.num_slices == 11
    np.testing.assert_allclose(out.slice_prob, ref["slice_prob"], atol=1e-5)
    np.testing.assert_allclose(out.weights, ref["weights"], atol=1e-5)
    np.testing.assert_allclose(out.fused, ref["fused"], atol=1e-5)
    for key in spec.MODEL_KEYS:
        np.testing.assert_allclose(out.probs[key], ref[f"prob_{key}"], atol=1e-5)
    # Batching must not mix slices: each slice alone gives the same answer as inside a batch.
    single = runner.run(images[9:10])
    np.testing.assert_allclose(single.slice_prob, out.slice_prob[9:10], atol=1e-6)


def test_runner_follows_the_configured_wiring(tiny_repo: Path) -> None:
    """Swap two members in the output maps: the runner must follow the config, not a fixed wiring."""
    config = repository.read_config(tiny_repo / spec.ENSEMBLE_MODEL)
    steps = {step.model_name: step for step in config.ensemble_scheduling.step}
    steps["ich_unet_all"].output_map[spec.PROB] = "PROB_SDH"
    steps["ich_unet_sdh"].output_map[spec.PROB] = "PROB_ALL"
    # Put the weighting step first: the runner must order steps by data readiness, as Triton does.
    config.ensemble_scheduling.step.insert(0, config.ensemble_scheduling.step.pop())
    repository.write_config(tiny_repo, config)

    images = _images(3, seed=1)
    out = EnsembleRunner.from_repository(tiny_repo).run(images)
    ref = reference_outputs(images)
    np.testing.assert_allclose(out.probs["all"], ref["prob_sdh"], atol=1e-5)
    np.testing.assert_allclose(out.probs["sdh"], ref["prob_all"], atol=1e-5)
    assert not np.allclose(out.weights, ref["weights"], atol=1e-4)


def test_wrong_image_shape_is_a_value_error(tiny_repo: Path) -> None:
    runner = EnsembleRunner.from_repository(tiny_repo)
    with pytest.raises(ValueError, match=r"\[N, 4, 16, 16\]"):
        runner.run(np.zeros((2, 4, 32, 32), dtype=np.float32))
    with pytest.raises(ValueError, match="no slice"):
        runner.run(np.zeros((0, 4, SIZE, SIZE), dtype=np.float32))


def test_check_images_gives_a_contiguous_float32_batch_or_names_the_shape() -> None:
    """The one input check both engines call: converts what it accepts, names the shape it wants."""
    images = np.arange(2 * spec.IN_CHANNELS * SIZE * SIZE, dtype=np.float64).reshape(
        2, spec.IN_CHANNELS, SIZE, SIZE
    )
    strided = images[::-1]  # negative strides: not C-contiguous
    checked = check_images(strided, SIZE)
    assert checked.dtype == np.float32 and checked.flags.c_contiguous
    np.testing.assert_array_equal(checked, strided.astype(np.float32))
    with pytest.raises(ValueError, match=r"\[N, 4, 8, 8\], got \(2, 4, 16, 16\)"):
        check_images(images, 8)
    with pytest.raises(ValueError, match="shape"):
        check_images(images[0], SIZE)
    with pytest.raises(ValueError, match="no slice"):
        check_images(images[:0], SIZE)


def test_missing_weights_named_in_error(tiny_repo: Path) -> None:
    repository.model_file(tiny_repo, "ich_unet_sah").unlink()
    shutil.rmtree(tiny_repo / "ich_weighting" / "1")
    with pytest.raises(RepositoryError) as err:
        EnsembleRunner.from_repository(tiny_repo)
    message = str(err.value)
    assert "ich_unet_sah" in message
    assert "ich_weighting" in message


def test_missing_ensemble_config(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match="ich_ensemble"):
        EnsembleRunner.from_repository(tmp_path)


def test_step_reading_an_unproduced_tensor(tiny_repo: Path) -> None:
    config = repository.read_config(tiny_repo / spec.ENSEMBLE_MODEL)
    config.ensemble_scheduling.step[0].input_map[spec.IMAGE] = "NOT_A_TENSOR"
    repository.write_config(tiny_repo, config)
    with pytest.raises(RepositoryError, match="NOT_A_TENSOR"):
        EnsembleRunner.from_repository(tiny_repo)


def test_step_mapping_a_tensor_the_model_lacks(tiny_repo: Path) -> None:
    config = repository.read_config(tiny_repo / spec.ENSEMBLE_MODEL)
    step = config.ensemble_scheduling.step[0]
    del step.output_map[spec.PROB]
    step.output_map["LOGITS"] = "PROB_ALL"
    repository.write_config(tiny_repo, config)
    with pytest.raises(RepositoryError, match="LOGITS"):
        EnsembleRunner.from_repository(tiny_repo)
