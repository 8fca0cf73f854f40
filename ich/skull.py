"""Deterministic skull stripping from Hounsfield units.

The CT-ICH skull is not closed at the skull base and the orbits, so "fill the bone ring" fails. Instead we
keep soft tissue (-20..100 HU), cut it away from a dilated bone mask, erode to break thin bridges to scalp,
keep the largest component (the brain), dilate back and fill holes. The result is used as one input channel
beside the unstripped windows, never as a hard cut of the input, because it loses 3-4% of hemorrhage pixels
(epidural/subdural bleeds against the bone).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: Soft-tissue range kept as candidate brain, HU.
TISSUE_HU: tuple[float, float] = (-20.0, 100.0)
#: Pixels at or above this are treated as bone.
BONE_HU: float = 250.0
#: Reference image side the morphology radii below are tuned for (CT-ICH's 650 px, ~0.23-0.25 mm/px);
#: radii scale with the image side so 512 px DICOM gets proportionally similar structures.
_REFERENCE_SIDE: int = 650
_SKULL_DILATE: int = 3
_ERODE: int = 6

_CROSS = ndimage.generate_binary_structure(2, 1)


def _scaled(radius: int, side: int) -> int:
    return max(1, round(radius * side / _REFERENCE_SIDE))


def brain_mask(hu: np.ndarray) -> np.ndarray:
    """Return a boolean brain mask for one 2D slice of HU values.

    Args:
        hu: [H, W] Hounsfield units.

    Returns:
        [H, W] bool; all False when no tissue component exists (e.g. a slice above the vertex).
    """
    if hu.ndim != 2:
        raise ValueError(f"brain_mask expects a 2D slice, got shape {hu.shape}")
    side = max(hu.shape)
    tissue = (hu >= TISSUE_HU[0]) & (hu <= TISSUE_HU[1])
    skull = ndimage.binary_dilation(hu >= BONE_HU, _CROSS, iterations=_scaled(_SKULL_DILATE, side))
    candidate = tissue & ~skull
    erode_it = _scaled(_ERODE, side)
    core = ndimage.binary_erosion(candidate, _CROSS, iterations=erode_it)
    labels, count = ndimage.label(core)
    if count == 0:
        return np.zeros(hu.shape, dtype=bool)
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, count + 1))
    largest = labels == (int(np.argmax(sizes)) + 1)
    grown = ndimage.binary_dilation(largest, _CROSS, iterations=erode_it) & candidate
    return np.asarray(ndimage.binary_fill_holes(grown), dtype=bool)
