"""Case findings from the ensemble's per-slice output: probability, call, indeterminate flag, volume, slices.

The rules (docs/DESIGN.md):

- ``ich_probability`` is the highest slice probability (``SLICE_PROB``), as in the paper: one convincing
  slice makes a positive case.
- ``ich_detected`` is ``ich_probability >= threshold``; ``indeterminate`` when the probability lies in the
  closed band :data:`ich.spec.INDETERMINATE_BAND` (the paper's "difficult for AI" cases, for a human first).
- ``hemorrhage_volume_ml`` counts ``FUSED > MASK_THRESHOLD`` voxels. Only slices whose ``SLICE_PROB`` passes
  the same mask threshold count: ``SLICE_PROB`` is taken after the weight model's post-processing (an opening
  against stray pixels), so on a slice where it stays below the threshold the remaining pixels above it are
  exactly the strays the post-processing removes, and counting them would give a negative case a volume.
- The models see each slice resized (stretched, not padded) from its ``H x W`` matrix to ``S x S``, so one
  model pixel covers ``(row_spacing * H / S) * (column_spacing * W / S)`` mm²; the voxel depth is the slice
  spacing of the volume.

Per-model slice probabilities are the maxima of each base model's raw map (no post-processing), reported for
explanation beside the weight model's per-slice weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ich import spec

__all__ = ["CaseFindings", "EnsembleResult", "SliceFinding", "VolumeGeometry", "aggregate"]


class EnsembleResult(Protocol):
    """What aggregation reads from the ensemble's output (``ich.ensemble.EnsembleOutput`` fits)."""

    @property
    def fused(self) -> np.ndarray: ...  # [N, 1, S, S]
    @property
    def slice_prob(self) -> np.ndarray: ...  # [N]
    @property
    def weights(self) -> np.ndarray: ...  # [N, 5] in spec.MODEL_KEYS order
    @property
    def probs(self) -> dict[str, np.ndarray]: ...  # key -> [N, 1, S, S]


class VolumeGeometry(Protocol):
    """What aggregation reads from the CT volume (``ich.volume.CTVolume`` fits)."""

    @property
    def hu(self) -> np.ndarray: ...  # [N, H, W]
    @property
    def pixel_spacing_mm(self) -> tuple[float, float]: ...
    @property
    def slice_thickness_mm(self) -> float: ...
    @property
    def sop_instance_uids(self) -> list[str]: ...


@dataclass(frozen=True)
class SliceFinding:
    """One slice, in the order of the volume (sorted along the slice normal, 0-based)."""

    index: int
    sop_instance_uid: str
    probability: float
    model_probabilities: dict[str, float]
    weights: dict[str, float]
    hemorrhage_volume_ml: float


@dataclass(frozen=True)
class CaseFindings:
    """The case-level result of one study."""

    ich_probability: float
    ich_detected: bool
    threshold: float
    indeterminate: bool
    indeterminate_band: tuple[float, float]
    hemorrhage_volume_ml: float
    voxel_volume_ml: float
    slices: list[SliceFinding]
    #: ``[N, S, S]`` the lesion mask the volume was counted on (for DICOM SEG and overlays).
    mask: np.ndarray = field(repr=False)


def _check_probability(name: str, value: float) -> None:
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be a finite number in [0, 1], got {value!r}")


def voxel_volume_ml(volume: VolumeGeometry, input_size: int) -> float:
    """Volume in mL of one model-space voxel (see the module docstring for the resize factor)."""
    if input_size <= 0:
        raise ValueError(f"input_size must be positive, got {input_size}")
    if volume.hu.ndim != 3:
        raise ValueError(f"volume.hu must be [N, H, W], got shape {volume.hu.shape}")
    height, width = int(volume.hu.shape[1]), int(volume.hu.shape[2])
    row_mm, col_mm = (float(v) for v in volume.pixel_spacing_mm)
    depth_mm = float(volume.slice_thickness_mm)
    checks = (("pixel row spacing", row_mm), ("pixel column spacing", col_mm), ("slice spacing", depth_mm))
    for name, value in checks:
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive number of mm, got {value!r}")
    area_mm2 = (row_mm * height / input_size) * (col_mm * width / input_size)
    return area_mm2 * depth_mm / 1000.0


def aggregate(
    output: EnsembleResult,
    volume: VolumeGeometry,
    *,
    threshold: float = 0.5,
    band: tuple[float, float] = spec.INDETERMINATE_BAND,
    mask_threshold: float = spec.MASK_THRESHOLD,
) -> CaseFindings:
    """Turn the ensemble's output for one volume into case findings.

    Args:
        output: the ensemble's output for the volume's N slices, in the volume's order.
        volume: the CT volume the slices came from (matrix size, spacing, SOP Instance UIDs).
        threshold: case probability at or above which ICH is called.
        band: closed interval of case probabilities flagged indeterminate.
        mask_threshold: pixel threshold on FUSED for the lesion mask.

    Raises:
        ValueError: shapes that do not match each other or the volume, non-finite probabilities, or
            settings out of range.
    """
    _check_probability("threshold", threshold)
    _check_probability("mask_threshold", mask_threshold)
    low, high = (float(b) for b in band)
    if not (0.0 <= low <= high <= 1.0):
        raise ValueError(f"band must satisfy 0 <= low <= high <= 1, got {band!r}")

    slice_prob = np.asarray(output.slice_prob, dtype=np.float32).reshape(-1)
    n = int(slice_prob.shape[0])
    if n == 0:
        raise ValueError("the ensemble output has no slices")
    if volume.hu.ndim != 3 or volume.hu.shape[0] != n:
        raise ValueError(f"the volume has shape {volume.hu.shape} but the ensemble output has {n} slices")
    if len(volume.sop_instance_uids) != n:
        raise ValueError(f"{len(volume.sop_instance_uids)} SOP Instance UIDs for {n} slices")
    fused = np.asarray(output.fused, dtype=np.float32)
    if fused.ndim != 4 or fused.shape[0] != n or fused.shape[1] != 1 or fused.shape[2] != fused.shape[3]:
        raise ValueError(f"FUSED must be [N, 1, S, S] with N={n}, got {fused.shape}")
    size = int(fused.shape[2])
    weights = np.asarray(output.weights, dtype=np.float32)
    if weights.shape != (n, len(spec.MODEL_KEYS)):
        raise ValueError(f"WEIGHTS must be [{n}, {len(spec.MODEL_KEYS)}], got {weights.shape}")
    missing = [key for key in spec.MODEL_KEYS if key not in output.probs]
    if missing:
        raise ValueError(f"the ensemble output lacks the maps of {missing}")
    model_max: dict[str, np.ndarray] = {}
    for key in spec.MODEL_KEYS:
        prob = np.asarray(output.probs[key], dtype=np.float32)
        if prob.shape != fused.shape:
            raise ValueError(f"PROB of {key!r} must have FUSED's shape {fused.shape}, got {prob.shape}")
        model_max[key] = prob.reshape(n, -1).max(axis=1)
    for name, array in (("SLICE_PROB", slice_prob), ("FUSED", fused), ("WEIGHTS", weights)):
        if not np.isfinite(array).all():
            raise ValueError(f"{name} holds non-finite values")

    # Strays on slices the post-processing cleared are not lesion (see the module docstring).
    kept_slices = slice_prob > mask_threshold
    mask = (fused[:, 0] > mask_threshold) & kept_slices[:, None, None]
    voxel_ml = voxel_volume_ml(volume, size)
    voxels_per_slice = mask.reshape(n, -1).sum(axis=1)

    slices = [
        SliceFinding(
            index=i,
            sop_instance_uid=str(volume.sop_instance_uids[i]),
            probability=float(slice_prob[i]),
            model_probabilities={key: float(model_max[key][i]) for key in spec.MODEL_KEYS},
            weights={key: float(weights[i, j]) for j, key in enumerate(spec.MODEL_KEYS)},
            hemorrhage_volume_ml=float(voxels_per_slice[i]) * voxel_ml,
        )
        for i in range(n)
    ]
    peak = slice_prob.max()
    # Compare in float32, the models' precision: a probability of float32(0.7) meets a threshold of 0.7.
    f32 = np.float32
    return CaseFindings(
        ich_probability=float(peak),
        ich_detected=bool(peak >= f32(threshold)),
        threshold=float(threshold),
        indeterminate=bool(f32(low) <= peak <= f32(high)),
        indeterminate_band=(low, high),
        hemorrhage_volume_ml=float(voxels_per_slice.sum()) * voxel_ml,
        voxel_volume_ml=voxel_ml,
        slices=slices,
        mask=mask,
    )
