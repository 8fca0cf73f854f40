"""Where a series' slices lie: the slice normal, each slice's position along it, the spacing between them.

The one place the geometry of a stack of slices is computed: series selection sorts and checks a series
with it, and the volume step asks it again for the slices that decoded (an undecodable slice leaves a hole
that must show as a gap). Numbers in, numbers out: reading them from DICOM headers is the caller's job.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: A spacing further than this fraction from the median spacing is irregular (and at least 0.1 mm).
SPACING_TOLERANCE = 0.1


def slice_normal(orientation: Sequence[float]) -> np.ndarray:
    """Unit normal of the slice plane: row direction cosine x column direction cosine.

    Raises:
        ValueError: the orientation does not hold six numbers or its cosines are parallel.
    """
    values = np.asarray([float(v) for v in orientation], dtype=np.float64)
    if values.shape != (6,):
        raise ValueError(f"ImageOrientationPatient needs 6 values, got {values.size}")
    normal = np.cross(values[:3], values[3:])
    norm = float(np.linalg.norm(normal))
    if not math.isfinite(norm) or norm < 1e-6:
        raise ValueError("ImageOrientationPatient row and column cosines are parallel")
    return normal / norm


def angle_from_z_deg(normal: np.ndarray) -> float:
    """Angle (degrees, 0-90) between a slice normal and the patient's z axis, whichever way it points."""
    return math.degrees(math.acos(min(1.0, abs(float(normal[2])))))


def position_along(position: Sequence[float], normal: np.ndarray) -> float:
    """A slice's position (mm) along the normal: its ImagePositionPatient dotted with the unit normal."""
    return float(np.dot(np.asarray(position, dtype=np.float64), normal))


@dataclass(frozen=True)
class SliceSpacing:
    """The spacing of slices sorted along the normal.

    Attributes:
        median_mm: the median distance between neighbouring slice centres; None for fewer than two slices.
        warnings: a note when the spacing is irregular (a gap from a missing slice, mixed spacings).
    """

    median_mm: float | None
    warnings: tuple[str, ...] = ()

    def or_else(self, fallback_mm: float) -> float:
        """The median spacing where the positions give one (above zero), else ``fallback_mm``."""
        if self.median_mm is not None and self.median_mm > 0:
            return self.median_mm
        return fallback_mm


def slice_spacing(positions_mm: Sequence[float]) -> SliceSpacing:
    """The median spacing of sorted positions, with a warning when the spacing is irregular."""
    if len(positions_mm) < 2:
        return SliceSpacing(None)
    diffs = np.diff(np.asarray(positions_mm, dtype=np.float64))
    median = float(np.median(diffs))
    tolerance = max(0.1, SPACING_TOLERANCE * median)
    if not (np.abs(diffs - median) > tolerance).any():
        return SliceSpacing(median)
    gaps = int(np.count_nonzero(diffs > median + tolerance))
    warning = (
        f"irregular slice spacing: {float(diffs.min()):.2f} to {float(diffs.max()):.2f} mm "
        f"(median {median:.2f} mm, {gaps} gap(s) wider than usual); the volume is not resampled"
    )
    return SliceSpacing(median, (warning,))
