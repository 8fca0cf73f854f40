"""Where a lesion lies and what shape it has: the features the subtype model reads.

Radiologists tell the five kinds of bleed apart mostly by location and shape, which the fused mask, the
windows and the brain mask show without any further network:

- **epidural**: a lens (biconvex) against the inner table: much bone contact, thick for its length, convex
  (high solidity), outside the skull-stripped brain;
- **subdural**: a crescent along the inner table: long contact, thin, concave (low solidity), outside the
  brain;
- **subarachnoid**: thin, branching strands in the sulci and cisterns: low solidity, next to CSF, shallow;
- **intraparenchymal**: a compact blob deep in the brain: little bone contact, high solidity, deep;
- **intraventricular**: in the ventricles: central, next to the midline, surrounded by CSF density.

Every feature is measured on the model grid (``S x S``) with the model-grid pixel size, so the gateway and the
records of training compute the same numbers from the same tensors. Shape features (thickness, length,
solidity, elongation, position) are taken on the lesion's peak slice (its largest area), contact and depth
on all its pixels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

__all__ = ["CONTACT_MM", "SHAPE_FEATURES", "brain_depth_maps", "shape_features"]

#: A lesion pixel this close to bone (mm) touches the inner table (or the skull base).
CONTACT_MM: float = 2.0
#: Brain-window channel (L40 W80, 0 HU at 0) below which a pixel has CSF density (under 15 HU).
_CSF_CHANNEL: float = 15.0 / 80.0
#: Depths below the brain surface are clipped here (mm).
_MAX_DEPTH_MM: float = 30.0
#: Positions beyond the brain's edge are clipped here (in brain radii or half-widths).
_MAX_POSITION: float = 1.5
#: Width (pixels) of the ring around a lesion whose density is looked at.
_RING_PIXELS: int = 2

#: The shape and location features, in the order :func:`shape_features` returns them.
SHAPE_FEATURES: tuple[str, ...] = (
    "bone_contact_fraction",
    "log_contact_length_mm",
    "log_thickness_mm",
    "thickness_to_length",
    "solidity",
    "elongation",
    "depth_mm",
    "centrality",
    "midline_distance",
    "csf_ring_fraction",
)


def brain_depth_maps(
    brain: np.ndarray, slices: list[int], pixel_mm: tuple[float, float]
) -> dict[int, np.ndarray]:
    """Distance (mm) of every pixel to the outside of the skull-stripped brain (0 outside), per slice."""
    out = {}
    for z in slices:
        inside = brain[z]
        out[z] = (
            np.minimum(ndimage.distance_transform_edt(inside, sampling=pixel_mm), _MAX_DEPTH_MM)
            if inside.any()
            else np.zeros(inside.shape)
        )
    return out


def _sample(maps: Mapping[int, np.ndarray], zs: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """The values of per-slice maps at the pixels ``(zs, ys, xs)``."""
    out = np.empty(len(zs), dtype=np.float64)
    for z in np.unique(zs):
        on = zs == z
        out[on] = maps[int(z)][ys[on], xs[on]]
    return out


def _solidity(ys: np.ndarray, xs: np.ndarray) -> float:
    """Area / convex-hull area of a pixel set (pixels as unit squares): 1 for a convex blob."""
    corners = np.concatenate(
        [np.stack([ys + dy, xs + dx], axis=1) for dy in (0.0, 1.0) for dx in (0.0, 1.0)]
    ).astype(np.float64)
    try:
        hull = ConvexHull(corners)
    except QhullError:  # a single row or column of pixels: its hull is the pixels themselves
        return 1.0
    return float(min(1.0, len(ys) / hull.volume))


def _axes_mm(ys: np.ndarray, xs: np.ndarray, pixel_mm: tuple[float, float]) -> tuple[float, float]:
    """Major and minor axis lengths (mm) of the ellipse with the pixels' second moments."""
    if len(ys) < 2:
        return max(pixel_mm), min(pixel_mm)
    coords = np.stack([ys * pixel_mm[0], xs * pixel_mm[1]], axis=0).astype(np.float64)
    # a pixel's own extent (1/12 of its side squared) keeps a line of pixels from having zero width
    cov = np.cov(coords) + np.diag([pixel_mm[0] ** 2 / 12.0, pixel_mm[1] ** 2 / 12.0])
    small, large = np.linalg.eigvalsh(cov)
    return 4.0 * math.sqrt(max(large, 0.0)), 4.0 * math.sqrt(max(small, 0.0))


def _ring(where: np.ndarray) -> np.ndarray:
    return ndimage.binary_dilation(where, iterations=_RING_PIXELS) & ~where


def _position(brain: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> tuple[float, float]:
    """Median over the pixels of (distance from the brain's centre in brain radii, left-right distance
    from its midline in half-widths): per pixel, so that a crescent's arc does not average to its chord."""
    by, bx = np.nonzero(brain)
    if len(by) == 0:
        return _MAX_POSITION, _MAX_POSITION
    radius = max(math.sqrt(len(by) / math.pi), 1.0)
    cy, cx = float(by.mean()), float(bx.mean())
    half_width = max((float(bx.max()) - float(bx.min()) + 1.0) / 2.0, 1.0)
    central = float(np.median(np.hypot(ys - cy, xs - cx))) / radius
    midline = float(np.median(np.abs(xs - cx))) / half_width
    return min(central, _MAX_POSITION), min(midline, _MAX_POSITION)


def shape_features(
    zs: np.ndarray,
    ys: np.ndarray,
    xs: np.ndarray,
    peak_slice: int,
    bone_distance: Mapping[int, np.ndarray],
    brain_depth: Mapping[int, np.ndarray],
    images: np.ndarray,
    pixel_mm: tuple[float, float],
) -> dict[str, float]:
    """The :data:`SHAPE_FEATURES` of one lesion given by its pixels ``(zs, ys, xs)``.

    Args:
        zs, ys, xs: the lesion's pixels on the model grid.
        peak_slice: the slice holding its largest area.
        bone_distance: per slice it touches, distance (mm) of each pixel to bone.
        brain_depth: per slice it touches, :func:`brain_depth_maps`.
        images: ``[N, 4, S, S]`` model input (stroke, brain, bone, skull-stripped brain).
        pixel_mm: model-grid pixel size (row, column) in mm.
    """
    bone = _sample(bone_distance, zs, ys, xs)
    depth = _sample(brain_depth, zs, ys, xs)
    on_peak = zs == peak_slice
    py, px = ys[on_peak], xs[on_peak]
    pixel_area = pixel_mm[0] * pixel_mm[1]
    contact = int((bone[on_peak] <= CONTACT_MM).sum())
    # the pixels within CONTACT_MM of bone form a band along the table: its area over its depth is its length
    contact_length = contact * pixel_area / CONTACT_MM
    # the peak slice cropped around the lesion, with room for the ring (a lesion is small, the slice is not)
    margin = _RING_PIXELS + 1
    y0, x0 = max(int(py.min()) - margin, 0), max(int(px.min()) - margin, 0)
    y1 = min(int(py.max()) + margin + 1, images.shape[2])
    x1 = min(int(px.max()) + margin + 1, images.shape[3])
    where = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    where[py - y0, px - x0] = True
    thickness = 2.0 * float(ndimage.distance_transform_edt(np.pad(where, 1), sampling=pixel_mm).max())
    major, minor = _axes_mm(py, px, pixel_mm)
    brain = images[peak_slice, 3] > 0
    central, midline = _position(brain, py, px)
    ring = _ring(where) & brain[y0:y1, x0:x1]
    csf = float((images[peak_slice, 1, y0:y1, x0:x1][ring] < _CSF_CHANNEL).mean()) if ring.any() else 0.0
    return {
        "bone_contact_fraction": float((bone <= CONTACT_MM).mean()),
        "log_contact_length_mm": math.log1p(contact_length),
        "log_thickness_mm": math.log1p(thickness),
        "thickness_to_length": thickness / max(major, thickness, 1e-6),
        "solidity": _solidity(py, px),
        "elongation": 1.0 - minor / max(major, 1e-6),
        "depth_mm": float(np.median(depth)),
        "centrality": central,
        "midline_distance": midline,
        "csf_ring_fraction": csf,
    }
