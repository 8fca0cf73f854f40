"""Case findings from the ensemble's per-slice output: probability, call, indeterminate flag, volume, slices.

The rules (docs/DESIGN.md) live in :mod:`ich.scoring`, the one definition of mask, lesions, case score and
volume; this module checks the engine's output and turns that scoring into the result's fields:

- ``ich_probability`` is the calibrated lesion-based case probability (``ich.scoring.score_case``) when the
  repository carries a case model, else the paper's highest slice probability; ``max_slice_probability``
  is always the paper's highest slice probability (``SLICE_PROB``), so the two can be compared.
- ``ich_detected`` is ``ich_probability >= threshold``; ``indeterminate`` when the probability lies in the
  closed band. Threshold and band default to the case model's (stored with the weights); the gateway's
  settings may override them.
- ``hemorrhage_volume_ml`` counts the kept lesions' voxels at the source matrix (the mask a DICOM SEG
  holds) times the source voxel volume; each slice's ``hemorrhage_volume_ml`` is that slice's share.

- ``uncertainty``: the spread of the five base models on the lesion that decided the case; ``subtypes``
  (case and slice): the five subtypes' probabilities when the case model carries a subtype model, ``None``
  (null) otherwise, and ``None`` for a subtype it does not measure.

Per-model slice probabilities are the maxima of each base model's raw map (no post-processing), reported for
explanation beside the weight model's per-slice weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ich import spec
from ich.scoring import CaseModel, CaseScore, Lesion, kept_map, model_pixel_mm, score_case, source_volume_ml
from ich.seg import resize_mask_to_source

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
    #: the five subtypes' probabilities on this slice (``None`` for one not measured); ``None`` without a
    #: subtype model
    subtypes: dict[str, float | None] | None = None


@dataclass(frozen=True)
class CaseFindings:
    """The case-level result of one study."""

    ich_probability: float
    max_slice_probability: float
    ich_detected: bool
    threshold: float
    indeterminate: bool
    indeterminate_band: tuple[float, float]
    hemorrhage_volume_ml: float
    voxel_volume_ml: float
    slices: list[SliceFinding]
    #: ``[N, S, S]`` the kept lesions on the model grid.
    mask: np.ndarray = field(repr=False)
    #: ``[N, H, W]`` the same lesions at the source matrix: the voxels the volume counts and a SEG holds.
    source_mask: np.ndarray = field(repr=False)
    lesions: list[Lesion] = field(default_factory=list)
    #: the lesions' scoring (raw and calibrated case score).
    scoring: CaseScore | None = field(default=None, repr=False)
    #: the ensemble's disagreement on the lesion that decided the case (``ich.scoring.case_uncertainty``)
    uncertainty: float = 0.0
    #: the five subtypes' case probabilities (``None`` for one not measured); ``None`` without a subtype model
    subtypes: dict[str, float | None] | None = None


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
    images: np.ndarray,
    *,
    case_model: CaseModel | None = None,
    threshold: float | None = None,
    band: tuple[float, float] | None = None,
) -> CaseFindings:
    """Turn the ensemble's output for one volume into case findings.

    Args:
        output: the ensemble's output for the volume's N slices, in the volume's order.
        volume: the CT volume the slices came from (matrix size, spacing, SOP Instance UIDs).
        images: ``[N, 4, S, S]`` the model input the output came from (lesion features read it).
        case_model: the repository's lesion model and calibration (``None``: the paper's rule).
        threshold: case probability at or above which ICH is called (default: the case model's, else 0.5).
        band: closed interval of case probabilities flagged indeterminate (default: the case model's, else
            the paper's).

    Raises:
        ValueError: shapes that do not match each other or the volume, non-finite probabilities, or
            settings out of range.
    """
    threshold, (low, high) = _decision(case_model, threshold, band)
    slice_prob, fused, weights, model_max = _checked(output, volume)
    n, size = int(slice_prob.shape[0]), int(fused.shape[2])
    if images.shape != (n, spec.IN_CHANNELS, size, size):
        raise ValueError(f"images must be [{n}, {spec.IN_CHANNELS}, {size}, {size}], got {images.shape}")
    probs = np.concatenate(
        [np.asarray(output.probs[key], dtype=np.float32) for key in spec.MODEL_KEYS], axis=1
    )
    height, width = int(volume.hu.shape[1]), int(volume.hu.shape[2])
    pixel_mm = model_pixel_mm(volume.pixel_spacing_mm, (height, width), size)
    scored = score_case(fused, probs, slice_prob, images, pixel_mm, voxel_volume_ml(volume, size), case_model)
    source = resize_mask_to_source(kept_map(fused, scored.mask), (height, width))
    # Compare in float32, the models' precision: a probability of float32(0.7) meets a threshold of 0.7.
    f32 = np.float32
    prob = f32(scored.ich_probability)
    return CaseFindings(
        ich_probability=float(prob),
        max_slice_probability=scored.max_slice_probability,
        ich_detected=bool(prob >= f32(threshold)),
        threshold=float(threshold),
        indeterminate=bool(f32(low) <= prob <= f32(high)),
        indeterminate_band=(low, high),
        hemorrhage_volume_ml=source_volume_ml(source, volume.pixel_spacing_mm, volume.slice_thickness_mm),
        voxel_volume_ml=voxel_volume_ml(volume, size),
        slices=_slice_findings(volume, slice_prob, weights, model_max, source, scored),
        mask=scored.mask,
        source_mask=source,
        lesions=scored.lesions,
        scoring=scored,
        uncertainty=scored.uncertainty,
        subtypes=None if scored.subtypes is None else dict(scored.subtypes.case),
    )


def _decision(
    case_model: CaseModel | None, threshold: float | None, band: tuple[float, float] | None
) -> tuple[float, tuple[float, float]]:
    """The threshold and indeterminate band in force: those given, else the case model's, else the paper's."""
    threshold = (case_model.threshold if case_model else 0.5) if threshold is None else threshold
    band = (case_model.band if case_model else spec.INDETERMINATE_BAND) if band is None else band
    _check_probability("threshold", threshold)
    low, high = (float(b) for b in band)
    if not (0.0 <= low <= high <= 1.0):
        raise ValueError(f"band must satisfy 0 <= low <= high <= 1, got {band!r}")
    return threshold, (low, high)


def _slice_findings(
    volume: VolumeGeometry,
    slice_prob: np.ndarray,
    weights: np.ndarray,
    model_max: dict[str, np.ndarray],
    source: np.ndarray,
    scored: CaseScore,
) -> list[SliceFinding]:
    """One finding per slice, in the volume's order; the volume measured on the source-matrix mask."""
    return [
        SliceFinding(
            index=i,
            sop_instance_uid=str(volume.sop_instance_uids[i]),
            probability=float(slice_prob[i]),
            model_probabilities={key: float(model_max[key][i]) for key in spec.MODEL_KEYS},
            weights={key: float(weights[i, j]) for j, key in enumerate(spec.MODEL_KEYS)},
            hemorrhage_volume_ml=source_volume_ml(
                source[i], volume.pixel_spacing_mm, volume.slice_thickness_mm
            ),
            subtypes=None if scored.subtypes is None else dict(scored.subtypes.slices[i]),
        )
        for i in range(int(slice_prob.shape[0]))
    ]


def _checked(
    output: EnsembleResult, volume: VolumeGeometry
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """The output's SLICE_PROB, FUSED, WEIGHTS and per-model maxima, checked against each other."""
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
    weights = np.asarray(output.weights, dtype=np.float32)
    if weights.shape != (n, len(spec.MODEL_KEYS)):
        raise ValueError(f"WEIGHTS must be [{n}, {len(spec.MODEL_KEYS)}], got {weights.shape}")
    missing = [key for key in spec.MODEL_KEYS if key not in output.probs]
    if missing:
        raise ValueError(f"the ensemble output lacks the maps of {missing}")
    # The ensemble's PROB_MAX where it has one: an engine may hold the full maps of some slices only.
    maxima = getattr(output, "prob_max", None)
    if maxima is not None:
        maxima = np.asarray(maxima, dtype=np.float32)
        if maxima.shape != (n, len(spec.MODEL_KEYS)) or not np.isfinite(maxima).all():
            raise ValueError(f"PROB_MAX must be [{n}, {len(spec.MODEL_KEYS)}] finite, got {maxima.shape}")
    model_max: dict[str, np.ndarray] = {}
    for j, key in enumerate(spec.MODEL_KEYS):
        prob = np.asarray(output.probs[key], dtype=np.float32)
        if prob.shape != fused.shape:
            raise ValueError(f"PROB of {key!r} must have FUSED's shape {fused.shape}, got {prob.shape}")
        model_max[key] = prob.reshape(n, -1).max(axis=1) if maxima is None else maxima[:, j]
    for name, array in (("SLICE_PROB", slice_prob), ("FUSED", fused), ("WEIGHTS", weights)):
        if not np.isfinite(array).all():
            raise ValueError(f"{name} holds non-finite values")
    return slice_prob, fused, weights, model_max
