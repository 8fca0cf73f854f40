"""training/gpu.sh, the prepared GPU training command, on a machine without a GPU: it refuses early, with
the reason, before anything is trained or packed, and names what is missing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "training" / "gpu.sh"
BASH = shutil.which("bash") or "/bin/bash"


def _path_with(tmp_path: Path, nvidia_smi: str | None) -> str:
    """A PATH of the basic tools, this Python as python3, and, when given, an nvidia-smi printing it."""
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    for tool in ("dirname", "head", "date", "mkdir", "ls", "timeout", "cat", "grep"):
        found = shutil.which(tool)
        if found and not (folder / tool).exists():
            (folder / tool).symlink_to(found)
    if not (folder / "python3").exists():
        (folder / "python3").symlink_to(sys.executable)
    if nvidia_smi is not None:
        script = folder / "nvidia-smi"
        script.write_text(f"#!{BASH}\nprintf '%s' '{nvidia_smi}'\n")
        script.chmod(0o755)
    return str(folder)


def _run(
    tmp_path: Path, args: list[str], nvidia_smi: str | None, **env: str
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ICH_")}
    base.update({"PATH": _path_with(tmp_path, nvidia_smi), "ICH_GPU_CARRY": str(tmp_path / "carry"), **env})
    return subprocess.run(
        [BASH, str(SCRIPT), *args], cwd=ROOT, env=base, capture_output=True, text=True, timeout=120
    )


def test_gpu_script_is_valid_bash() -> None:
    subprocess.run([BASH, "-n", str(SCRIPT)], check=True)


def test_usage_is_refused_with_the_commands() -> None:
    result = subprocess.run([BASH, str(SCRIPT), "fit"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "prepare DATA | cv OUT | train OUT | baselines OUT" in result.stderr


@pytest.mark.parametrize("step", ["cv", "train", "baselines"])
def test_every_step_needs_a_gpu_first(tmp_path: Path, step: str) -> None:
    result = _run(tmp_path, [step, str(tmp_path / "out")], nvidia_smi=None)
    assert result.returncode == 2
    assert "no NVIDIA GPU here: nvidia-smi is not installed" in result.stderr
    assert not list((tmp_path / "out").glob("*.tar.gz"))


def test_a_gpu_listing_no_device_is_refused(tmp_path: Path) -> None:
    result = _run(tmp_path, ["cv", str(tmp_path / "out")], nvidia_smi="")
    assert result.returncode == 2 and "lists no device" in result.stderr


def test_the_carried_data_must_be_there(tmp_path: Path) -> None:
    result = _run(tmp_path, ["cv", str(tmp_path / "out")], nvidia_smi="GPU 0: NVIDIA Test (UUID: GPU-0)\\n")
    assert result.returncode == 2
    assert "run 'training/gpu.sh prepare DATA' first" in result.stderr


def test_a_torch_without_cuda_is_refused_before_training(tmp_path: Path) -> None:
    (tmp_path / "carry" / "ct-ich").mkdir(parents=True)  # the data's place, as prepare leaves it
    result = _run(
        tmp_path, ["train", str(tmp_path / "out")], nvidia_smi="GPU 0: NVIDIA Test (UUID: GPU-0)\\n"
    )
    assert result.returncode == 2
    assert "torch sees no CUDA device" in result.stderr
    assert not (tmp_path / "out" / "train.log").exists()  # nothing was started


def test_prepare_refuses_a_folder_that_is_not_ct_ich(tmp_path: Path) -> None:
    result = _run(tmp_path, ["prepare", str(tmp_path)], nvidia_smi=None)
    assert result.returncode == 2 and "not a CT-ICH folder" in result.stderr
    assert not (tmp_path / "carry").exists()
