"""``ich-model export --precision int8`` and ``ich-model precision-check`` on a tiny exported repository."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from ich import repository, spec  # noqa: E402
from ich.ensemble import EnsembleRunner  # noqa: E402
from tests.support.ct_ich_data import synthetic_ct_ich  # noqa: E402
from tests.support.dicom_study import study_zip  # noqa: E402
from tests.support.tiny_repository import build_exported_repository  # noqa: E402
from training import precision_check  # noqa: E402
from training.cli import main  # noqa: E402
from training.quantize import quantize_repository  # noqa: E402

SIZE = 32
PATIENTS = {"049": ("049", True), "060": ("049", False), "081": ("081", True)}


@pytest.fixture(scope="module")
def fp32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = build_exported_repository(tmp_path_factory.mktemp("fp32") / "repo", size=SIZE, version="p-1")
    assert root is not None
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_ct_ich(tmp_path_factory.mktemp("data") / "ct_ich", PATIENTS)


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, spec.IN_CHANNELS, SIZE, SIZE), dtype=np.float32)


def test_int8_repository_quantizes_the_base_models_only(fp32: Path, tmp_path: Path) -> None:
    out = quantize_repository(fp32, tmp_path / "int8", _images(8), "int8")
    assert repository.read_version(out) == "p-1-int8"
    for key in spec.MODEL_KEYS:
        ops = {
            n.op_type for n in onnx.load(str(repository.model_file(out, spec.BASE_MODELS[key]))).graph.node
        }
        assert "QLinearConv" in ops and "Conv" not in ops
    for name in (spec.WEIGHTING_MODEL, spec.PROB_MAX_MODEL):
        assert repository.model_file(out, name).read_bytes() == repository.model_file(fp32, name).read_bytes()
    images = _images(3, seed=1)
    reference = EnsembleRunner.from_repository(fp32).run(images)
    quantized = EnsembleRunner.from_repository(out).run(images)
    assert quantized.fused.shape == reference.fused.shape
    assert float(np.abs(quantized.fused - reference.fused).max()) < 0.25  # close, not equal
    assert not np.array_equal(quantized.fused, reference.fused)


def test_a_variant_is_never_written_over_its_source(fp32: Path) -> None:
    with pytest.raises(ValueError, match="beside"):
        quantize_repository(fp32, fp32, _images(4), "int8")
    with pytest.raises(ValueError, match="precision"):
        quantize_repository(fp32, fp32.parent / "x", _images(4), "bf16")


def test_export_converts_an_existing_repository(fp32: Path, tmp_path: Path) -> None:
    hu = np.full((4, 64, 64), 30.0, dtype=np.float32)
    hu[:, :6, :] = 1000.0
    calibration = tmp_path / "study.zip"
    calibration.write_bytes(study_zip(hu)[0])
    out = tmp_path / "int8"
    status = main(
        ["export", "--from-repository", str(fp32), "--out", str(out), "--precision", "int8",
         "--calibration", str(calibration)]
    )  # fmt: skip
    assert status == 0
    assert repository.read_version(out).endswith("-int8")
    assert repository.missing_files(out) == []


def test_precision_check_passes_the_same_weights_and_fails_others(
    fp32: Path, data: Path, tmp_path: Path
) -> None:
    report = tmp_path / "same.json"
    same = ["precision-check", "--reference", str(fp32), "--candidate", str(fp32), "--data", str(data)]
    assert main([*same, "--out", str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["passed"] is True
    assert result["reference"]["cases"] == len(PATIENTS)
    assert all(row["drop"] == 0.0 for row in result["checks"].values())

    other = build_exported_repository(tmp_path / "other", size=SIZE, version="p-2", seed=5)
    assert other is not None
    verdict = precision_check.verdict(
        result["reference"],
        precision_check.repository_figures(other, data, sorted(PATIENTS), None),
        max_auc_drop=-1.0,  # any figure at all fails a drop below -1: the comparison itself is tested
        max_dice_drop=-1.0,
    )
    assert verdict["passed"] is False


def test_verdict_counts_only_drops() -> None:
    reference = {"slice_auc": 0.90, "dice_candidates": 0.50, "dice_kept_lesions": 0.40}
    better = {"slice_auc": 0.95, "dice_candidates": 0.495, "dice_kept_lesions": 0.40}
    worse = {"slice_auc": 0.894, "dice_candidates": 0.50, "dice_kept_lesions": 0.40}
    assert precision_check.verdict(reference, better, 0.005, 0.01)["passed"]
    failed = precision_check.verdict(reference, worse, 0.005, 0.01)
    assert not failed["passed"] and not failed["checks"]["slice_auc"]["ok"]
    assert failed["checks"]["dice_candidates"]["ok"]
