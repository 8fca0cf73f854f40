"""The local Triton: its CPU rendering keeps every tensor and the ensemble, swaps only the backend."""

from __future__ import annotations

from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from ich import repository, spec
from ich.repository import RepositoryError
from ich_devtools.triton_local import TritonStartError, find_distribution, render_cpu_repository
from tests.support.tiny_repository import build_tiny_repository


def test_rendering_serves_each_onnx_model_with_the_python_backend(tmp_path: Path) -> None:
    source = build_tiny_repository(tmp_path / "src", size=16, max_batch_size=4, version="v-render")
    target = render_cpu_repository(source, tmp_path / "cpu", intra_op_threads=2)
    for name in [*spec.BASE_MODELS.values(), spec.WEIGHTING_MODEL]:
        original = repository.read_config(source / name)
        rendered = repository.read_config(target / name)
        assert rendered.backend == "python"
        assert rendered.platform == ""
        assert [g.kind for g in rendered.instance_group] == [mc.ModelInstanceGroup.KIND_CPU]
        assert rendered.max_batch_size == original.max_batch_size == 4
        assert list(rendered.input) == list(original.input)
        assert list(rendered.output) == list(original.output)
        assert rendered.parameters["intra_op_threads"].string_value == "2"
        onnx_link = repository.model_file(target, name)
        assert onnx_link.is_symlink()
        assert onnx_link.resolve() == repository.model_file(source, name).resolve()
        assert "TritonPythonModel" in (onnx_link.parent / "model.py").read_text()
    ensemble_src = (source / spec.ENSEMBLE_MODEL / "config.pbtxt").read_bytes()
    assert (target / spec.ENSEMBLE_MODEL / "config.pbtxt").read_bytes() == ensemble_src
    assert (target / spec.ENSEMBLE_MODEL / "1").is_dir()
    assert repository.read_version(target) == "v-render"


def test_rendering_refuses_missing_weights(tmp_path: Path) -> None:
    source = build_tiny_repository(tmp_path / "src", size=16)
    repository.model_file(source, spec.BASE_MODELS["small"]).unlink()
    with pytest.raises(RepositoryError, match="ich_unet_small"):
        render_cpu_repository(source, tmp_path / "cpu")


def test_rendering_refuses_an_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match="no model"):
        render_cpu_repository(tmp_path, tmp_path / "cpu")


def test_missing_triton_venv_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(TritonStartError, match="make triton-env"):
        find_distribution(tmp_path / "no-venv")


def test_a_binary_that_cannot_load_its_libraries_is_named(tmp_path: Path) -> None:
    import os
    import shutil

    from ich_devtools.triton_local import _check_shared_libraries, default_venv

    try:
        distribution = find_distribution(default_venv())
    except TritonStartError:
        pytest.skip(".venv-triton not installed")
    stub = tmp_path / "stub"
    shutil.copy2(distribution.stub, stub)  # away from its bundled libraries, found through its rpath
    with pytest.raises(TritonStartError, match="cannot load libcudart"):
        _check_shared_libraries(stub, {"PATH": os.environ.get("PATH", "")})
    library_path = [str(distribution.libs_dir), str(distribution.python_libdir or "")]
    _check_shared_libraries(
        stub, {"PATH": os.environ.get("PATH", ""), "LD_LIBRARY_PATH": ":".join(library_path)}
    )
