"""ich.repository: configs written with ModelConfig read back identically and as Triton expects them."""

from __future__ import annotations

from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from ich import repository, spec


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    written = repository.write_repository_configs(tmp_path, 64, max_batch_size=8)
    assert [p.parent.name for p in written] == [*repository.model_names(), spec.COMPACT_ENSEMBLE_MODEL]
    for path in written:
        config = repository.read_config(path)
        expected_name = path.parent.name
        assert config.name == expected_name
        assert config.max_batch_size == 8
    base = repository.read_config(repository.config_path(tmp_path, spec.BASE_MODELS["sdh"]))
    assert base == repository.base_model_config(spec.BASE_MODELS["sdh"], 64, max_batch_size=8)


def test_base_model_config_matches_design(tmp_path: Path) -> None:
    repository.write_config(tmp_path, repository.base_model_config("ich_unet_all", 256))
    config = repository.read_config(tmp_path / "ich_unet_all")
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 16
    assert [(t.name, list(t.dims), t.data_type) for t in config.input] == [
        (spec.IMAGE, [4, 256, 256], mc.TYPE_FP32)
    ]
    assert [(t.name, list(t.dims)) for t in config.output] == [(spec.PROB, [1, 256, 256])]
    assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    assert config.HasField("dynamic_batching")
    assert repository.input_size_of(config) == 256


def test_weighting_config_tensors() -> None:
    config = repository.weighting_model_config(32)
    names = [t.name for t in config.input]
    assert names == ["PROB_ALL", "PROB_SUBTYPE", "PROB_SDH", "PROB_SAH", "PROB_SMALL"]
    assert {t.name: list(t.dims) for t in config.output} == {
        "WEIGHTS": [5],
        "FUSED": [1, 32, 32],
        "SLICE_PROB": [1],
    }


def test_ensemble_steps_wire_each_member_to_its_weighting_input() -> None:
    config = repository.ensemble_config(32)
    assert config.platform == "ensemble"
    assert repository.ensemble_step_models(config) == [
        *spec.BASE_MODELS.values(),
        spec.WEIGHTING_MODEL,
        spec.PROB_MAX_MODEL,
    ]
    steps = list(config.ensemble_scheduling.step)
    for key, step in zip(spec.MODEL_KEYS, steps[:5], strict=True):
        assert dict(step.input_map) == {spec.IMAGE: spec.IMAGE}
        assert dict(step.output_map) == {spec.PROB: f"PROB_{key.upper()}"}
    assert set(steps[5].input_map.values()) == set(spec.WEIGHTING_INPUTS.values())
    assert set(steps[6].input_map.values()) == set(spec.WEIGHTING_INPUTS.values())
    assert dict(steps[6].output_map) == {"PROB_MAX": "PROB_MAX"}
    outputs = [t.name for t in config.output]
    assert outputs[:3] == ["FUSED", "SLICE_PROB", "WEIGHTS"]
    assert set(outputs[3:8]) == set(spec.WEIGHTING_INPUTS.values())
    assert outputs[8] == "PROB_MAX"


def test_config_text_is_protobuf_text_format(tmp_path: Path) -> None:
    path = repository.write_config(tmp_path, repository.ensemble_config(16))
    text = path.read_text()
    assert 'platform: "ensemble"' in text
    assert "ensemble_scheduling {" in text


def test_invalid_configs_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="input_size"):
        repository.base_model_config("x", 0)
    with pytest.raises(ValueError, match="unknown instance kind"):
        repository.base_model_config("x", 8, kind="KIND_TPU")
    bad = tmp_path / "broken" / "config.pbtxt"
    bad.parent.mkdir()
    bad.write_text("name: 'broken'\nno_such_field: 3\n")
    with pytest.raises(repository.RepositoryError, match="not a valid Triton model configuration"):
        repository.read_config(bad)
    with pytest.raises(repository.RepositoryError, match="not found"):
        repository.read_config(tmp_path / "absent")


def test_name_defaults_to_folder(tmp_path: Path) -> None:
    path = tmp_path / "ich_unet_sah" / "config.pbtxt"
    path.parent.mkdir()
    path.write_text('platform: "onnxruntime_onnx"\nmax_batch_size: 2\n')
    assert repository.read_config(path).name == "ich_unet_sah"


def test_version_file(tmp_path: Path) -> None:
    assert repository.read_version(tmp_path) == "unversioned"
    repository.write_version(tmp_path, " 2026.11.29-abc123 \n")
    assert (tmp_path / "VERSION").read_text() == "2026.11.29-abc123\n"
    assert repository.read_version(tmp_path) == "2026.11.29-abc123"
    with pytest.raises(ValueError):
        repository.write_version(tmp_path, "two words")


def test_missing_files_lists_every_problem(tmp_path: Path) -> None:
    repository.write_repository_configs(tmp_path, 16)
    problems = repository.missing_files(tmp_path)
    assert len(problems) == 7  # five base models, the weighting and the maxima: no weights yet
    onnx_path = repository.model_file(tmp_path, spec.WEIGHTING_MODEL)
    onnx_path.parent.mkdir(parents=True)
    onnx_path.write_bytes(b"placeholder")
    assert len(repository.missing_files(tmp_path)) == 6
    (tmp_path / spec.ENSEMBLE_MODEL / "config.pbtxt").unlink()
    assert "ich_ensemble/config.pbtxt is missing" in repository.missing_files(tmp_path)
    with pytest.raises(repository.RepositoryError, match="incomplete"):
        repository.require_complete(tmp_path)


def test_step_model_file_picks_highest_version(tmp_path: Path) -> None:
    for version in (1, 3, 2):
        path = repository.model_file(tmp_path, "m", version)
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")
    assert repository.step_model_file(tmp_path, "m").parent.name == "3"
    assert repository.step_model_file(tmp_path, "m", 2).parent.name == "2"
