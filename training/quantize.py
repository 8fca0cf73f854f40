"""Reduced-precision variants of a model repository: the base U-Nets quantized to INT8 for CPUs with VNNI.

``ich-model export --precision int8`` writes one: the repository as exported (or ``--from-repository``, an
existing FP32 one), with each base model's ONNX replaced by onnxruntime's static quantization of it
(QOperator format: QLinearConv, which onnxruntime runs with VNNI instructions; weights per channel, signed;
activations unsigned; ranges calibrated on real slices). The weight model and ``ich_prob_max`` stay FP32:
they are a few operators and hold the post-processing every engine must apply identically. ``VERSION``
gets a ``-int8`` suffix, so a result always says which variant made it.

Whether a variant may ship is decided on patients, not here: ``ich-model precision-check`` compares it with
the FP32 repository on the same cases (slice AUC within 0.005, Dice within 0.01). BF16 is not offered:
onnxruntime's CPU execution provider has no BF16 convolution kernels, so a BF16 graph would run slower
than FP32 on this machine class.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ich import repository, spec

__all__ = ["PRECISIONS", "calibration_images", "quantize_repository"]

logger = logging.getLogger(__name__)

#: What ``--precision`` accepts.
PRECISIONS: tuple[str, ...] = ("fp32", "int8")
#: Slices per calibration batch.
_CALIBRATION_BATCH = 4


def calibration_images(sources: Sequence[Path], input_size: int, limit: int = 64) -> np.ndarray:
    """Preprocessed slices for calibration, at most ``limit``, spread over the studies given.

    Args:
        sources: DICOM zips, or folders (DICOM files, or a CT-ICH layout with ``Patients_CT``).
        input_size: S of the models.

    Raises:
        ValueError: no slice could be read from ``sources``.
    """
    from ich.intake import read_folder, read_study
    from ich.preprocess import preprocess_volume

    volumes: list[np.ndarray] = []
    for source in sources:
        source = Path(source)
        if source.is_dir() and (source / "Patients_CT").is_dir():
            volumes.extend(_ct_ich_volumes(source, limit))
        elif source.is_dir():
            volumes.append(read_folder(source).volume.hu)
        else:
            volumes.append(read_study(source.read_bytes()).volume.hu)
    if not volumes:
        raise ValueError("no calibration study could be read")
    per_study = max(1, limit // len(volumes))
    picked = []
    for hu in volumes:
        index = np.linspace(0, hu.shape[0] - 1, num=min(per_study, hu.shape[0])).round().astype(int)
        picked.append(preprocess_volume(hu[np.unique(index)], input_size))
    return np.concatenate(picked)[:limit]


def _ct_ich_volumes(root: Path, limit: int) -> Iterator[np.ndarray]:
    from training.data.cases import CaseReadError, list_cases, read_case, read_case_labels

    labels = read_case_labels(root)
    for case_id in list_cases(root)[: max(1, limit // 8)]:
        try:
            yield read_case(root, case_id, labels).hu
        except CaseReadError as exc:
            logger.warning("calibration case skipped: %s", exc.reason)


class _Reader:
    """onnxruntime's calibration data reader over ``images`` in small batches."""

    def __init__(self, images: np.ndarray) -> None:
        self._batches = iter(
            [
                {spec.IMAGE: images[i : i + _CALIBRATION_BATCH]}
                for i in range(0, len(images), _CALIBRATION_BATCH)
            ]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantize_model(source: Path, target: Path, images: np.ndarray) -> None:
    """Static INT8 quantization of one base model (QOperator, per-channel signed weights)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(_Reader, CalibrationDataReader):
        pass

    with tempfile.TemporaryDirectory(prefix="ich-quantize-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        quantize_static(
            str(prepared),
            str(target),
            Reader(images),
            quant_format=QuantFormat.QOperator,
            op_types_to_quantize=["Conv"],
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
        )


def quantize_repository(source: Path, out: Path, images: np.ndarray, precision: str = "int8") -> Path:
    """Write ``out``: ``source`` with its base models at ``precision`` (``fp32``: a plain copy).

    Raises:
        ValueError: an unknown precision, or ``out`` is ``source``.
        RepositoryError: ``source`` is incomplete.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    source, out = Path(source).resolve(), Path(out).resolve()
    if source == out:
        raise ValueError("write the reduced-precision repository beside the FP32 one, not over it")
    repository.require_complete(source)
    shutil.copytree(source, out, dirs_exist_ok=True, symlinks=False)
    if precision == "fp32":
        return out
    for key in spec.MODEL_KEYS:
        name = spec.BASE_MODELS[key]
        path = repository.step_model_file(source, name)
        quantize_model(path, out / path.relative_to(source), images)
        logger.info("quantized %s to %s", name, precision)
    repository.write_version(out, f"{repository.read_version(source)}-{precision}")
    _rewrite_checksums(out)
    return out


#: The checksum file a repository may carry over its ONNX files; the source's does not describe new weights.
_CHECKSUMS = "SHA256SUMS"


def _rewrite_checksums(root: Path) -> None:
    """Record the new weights' checksums where the repository keeps them (a copied file would not match)."""
    if not (root / _CHECKSUMS).is_file():
        return
    try:
        from ich.weights_manifest import write_manifest  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        (root / _CHECKSUMS).unlink()
        return
    write_manifest(root)
