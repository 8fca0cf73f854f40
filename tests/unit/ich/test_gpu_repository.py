"""The GPU rendering of the shipped repository (TensorRT FP16, warmup) and bench/gpu.sh's checks, on a CPU."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from ich import repository, spec
from ich.ensemble import EnsembleRunner
from ich.gpu_repository import GpuOptions, main, render_gpu_repository

ROOT = Path(__file__).resolve().parents[3]
SHIPPED = ROOT / "model_repository"
GPU_SH = ROOT / "bench" / "gpu.sh"
BASH = shutil.which("bash") or "/bin/bash"
ONNX_MODELS = [*spec.BASE_MODELS.values(), spec.WEIGHTING_MODEL, spec.PROB_MAX_MODEL]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render_gpu_repository(SHIPPED, tmp_path_factory.mktemp("gpu") / "repo", max_batch_size=64)


@pytest.mark.parametrize("name", ONNX_MODELS)
def test_every_onnx_model_runs_on_the_gpu_with_tensorrt_fp16_and_warms_up(rendered: Path, name: str) -> None:
    source = repository.read_config(repository.config_path(SHIPPED, name))
    config = repository.read_config(repository.config_path(rendered, name))  # parses as Triton's proto text
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 64
    assert [(g.kind, g.count) for g in config.instance_group] == [(mc.ModelInstanceGroup.KIND_GPU, 2)]
    (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt"
    assert accelerator.parameters["precision_mode"] == "FP16"
    assert accelerator.parameters["trt_engine_cache_enable"] == "1"
    assert list(config.dynamic_batching.preferred_batch_size) == [16, 32, 64]
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    assert [w.batch_size for w in config.model_warmup] == [1, 64]
    for warmup in config.model_warmup:
        assert set(warmup.inputs) == {t.name for t in source.input}
        for tensor in source.input:
            given = warmup.inputs[tensor.name]
            assert (given.data_type, list(given.dims), given.zero_data) == (
                tensor.data_type,
                list(tensor.dims),
                True,
            )
    # names, tensors and batching semantics are the CPU repository's
    assert [t.name for t in config.input] == [t.name for t in source.input]
    assert [t.name for t in config.output] == [t.name for t in source.output]
    assert (
        repository.model_file(rendered, name).read_bytes()
        == repository.model_file(SHIPPED, name).read_bytes()
    )


def test_ensembles_keep_their_wiring_and_the_repository_its_files(rendered: Path) -> None:
    for name in (spec.ENSEMBLE_MODEL, spec.COMPACT_ENSEMBLE_MODEL):
        source = repository.read_config(repository.config_path(SHIPPED, name))
        config = repository.read_config(repository.config_path(rendered, name))
        assert config.max_batch_size == 64
        assert list(config.ensemble_scheduling.step) == list(source.ensemble_scheduling.step)
        assert not config.model_warmup  # an ensemble's models warm themselves
    for extra in ("VERSION", "case_model.json", "SHA256SUMS"):
        if (SHIPPED / extra).is_file():
            assert (rendered / extra).read_bytes() == (SHIPPED / extra).read_bytes()
    runner = EnsembleRunner.from_repository(rendered)  # our reader and the checksums accept it
    assert runner.model_version == repository.read_version(SHIPPED)


def test_options_are_checked_and_warmup_can_be_left_out(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="precision"):
        GpuOptions(precision="INT4")
    with pytest.raises(ValueError, match="instance_count"):
        GpuOptions(instance_count=0)
    out = render_gpu_repository(SHIPPED, tmp_path / "fp32", GpuOptions(precision="FP32", warmup=False))
    config = repository.read_config(repository.config_path(out, spec.BASE_MODELS["all"]))
    assert not config.model_warmup
    assert (
        config.max_batch_size
        == repository.read_config(repository.config_path(SHIPPED, spec.BASE_MODELS["all"])).max_batch_size
    )
    assert (
        config.optimization.execution_accelerators.gpu_execution_accelerator[0].parameters["precision_mode"]
        == "FP32"
    )


def test_command_line_reports_a_repository_without_models(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), str(tmp_path / "out")]) == 1
    assert "no model" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ bench/gpu.sh


def _run_gpu_sh(tmp_path: Path, path_dirs: list[Path], **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ICH_")}
    base.update(
        {"PATH": os.pathsep.join(str(p) for p in path_dirs), "ICH_GPU_VENV": str(tmp_path / "venv"), **env}
    )
    return subprocess.run(
        [BASH, str(GPU_SH), str(tmp_path / "out")],
        cwd=ROOT,
        env=base,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _tools(tmp_path: Path, nvidia_smi: str | None) -> Path:
    """A PATH folder with the basic tools and, when given, a stand-in nvidia-smi printing ``nvidia_smi``."""
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    for tool in ("dirname", "head", "mkdir", "cat", "timeout", "python3", "seq", "sleep"):
        found = subprocess.run(
            ["bash", "-c", f"command -v {tool}"], capture_output=True, text=True
        ).stdout.strip()
        if found and not (folder / tool).exists():
            (folder / tool).symlink_to(found)
    if nvidia_smi is not None:
        script = folder / "nvidia-smi"
        script.write_text(f"#!/bin/bash\nprintf '%s' '{nvidia_smi}'\n")
        script.chmod(0o755)
    return folder


def test_gpu_sh_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(GPU_SH)], check=True)


def test_gpu_sh_fails_fast_without_nvidia_smi(tmp_path: Path) -> None:
    result = _run_gpu_sh(tmp_path, [_tools(tmp_path, None)])
    assert result.returncode == 2
    assert "no NVIDIA GPU here: nvidia-smi is not installed" in result.stderr
    assert not (tmp_path / "venv").exists() and not (tmp_path / "out").exists()  # nothing set up first


def test_gpu_sh_fails_fast_when_nvidia_smi_lists_no_device(tmp_path: Path) -> None:
    result = _run_gpu_sh(tmp_path, [_tools(tmp_path, "")])
    assert result.returncode == 2
    assert "lists no device" in result.stderr
    assert not (tmp_path / "venv").exists()


def test_gpu_sh_refuses_an_onnxruntime_without_cuda(tmp_path: Path) -> None:
    # A machine that reports a GPU, with a Python whose onnxruntime is the CPU build (this one).
    result = _run_gpu_sh(
        tmp_path, [_tools(tmp_path, "GPU 0: NVIDIA Test (UUID: GPU-0)\\n")], ICH_GPU_PYTHON=sys.executable
    )
    assert result.returncode == 2
    assert "has no CUDA provider" in result.stderr
    assert not (tmp_path / "out" / "gpu.json").exists()
