"""Minimal stand-ins for what ``ich.aggregate`` reads: a CT volume's geometry and an ensemble output."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Volume:
    hu: np.ndarray
    pixel_spacing_mm: tuple[float, float]
    slice_thickness_mm: float
    sop_instance_uids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Output:
    fused: np.ndarray
    slice_prob: np.ndarray
    weights: np.ndarray
    probs: dict[str, np.ndarray]
