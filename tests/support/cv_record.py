"""A small synthetic cross-validation record (``training.records.Records``), like ``ich-model cv-report``'s.

Twelve patients ("049" to "060") over three folds, each fold two hemorrhage and two normal patients; six
slices each; voxel volume 0.01 mL.

- A hemorrhage patient has one true lesion on slices 2-4 (large, several slices, central, inside the brain,
  seen by most base models; most of its voxels on the truth); patient "059"'s is weaker. Patients "049",
  "053" and "057" also have one false focus at the vertex (slice 0), against the bone, tiny.
- A normal patient has the false foci of :data:`NORMAL_FOCI`; the last one of "060" looks like a true
  lesion, so that the decision is not perfect.

Counted by hand over :data:`NORMAL_FOCI` (the false-positive section of the card counts only the normal
patients' candidates): :data:`NORMAL_CANDIDATES` candidates in :data:`NORMAL_PATIENTS` patients,
:data:`EDGE` with brain area fraction < 0.5, :data:`NEAR_BONE` within 3 mm of bone, :data:`SMALL` under
0.1 mL. The hemorrhage patients' false foci are edge, near-bone and small too, so counting them would show.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ich import spec
from ich.scoring import FEATURES
from training.records import Records

FOLDS = 3
SLICES = 6
VOXEL_ML = 0.01
SEED = 45
CASES: tuple[str, ...] = tuple(f"{49 + i:03d}" for i in range(12))
#: Even positions have hemorrhage; consecutive pairs share a fold, so each fold holds 2 + 2 patients.
LABELS: dict[str, int] = {c: int(i % 2 == 0) for i, c in enumerate(CASES)}
FOLD_OF: dict[str, int] = {c: (i // 2) % FOLDS for i, c in enumerate(CASES)}
HEMORRHAGE_WITH_FALSE_FOCUS: frozenset[str] = frozenset({"049", "053", "057"})
WEAK_TRUE_LESION = "059"


@dataclass(frozen=True)
class Focus:
    """A false lesion candidate (one slice)."""

    slice: int
    brain_area_fraction: float
    bone_distance_mm: float
    volume_ml: float
    looks_true: bool = False


NORMAL_FOCI: dict[str, tuple[Focus, ...]] = {
    "050": (Focus(0, 0.20, 1.5, 0.05),),  # edge, bone, small
    "052": (Focus(5, 0.30, 2.0, 0.08), Focus(1, 0.70, 3.5, 0.20)),  # edge, bone, small; none
    "054": (Focus(0, 0.25, 2.8, 0.15),),  # edge, bone
    "056": (Focus(5, 0.40, 1.0, 0.30), Focus(2, 0.80, 2.5, 0.06)),  # edge, bone; bone, small
    "058": (Focus(1, 0.60, 6.0, 0.12),),  # none
    "060": (Focus(0, 0.15, 0.5, 0.04), Focus(3, 0.85, 9.0, 0.90, looks_true=True)),  # edge, bone, small; none
}
NORMAL_PATIENTS = 6
NORMAL_CANDIDATES = 9
EDGE = 5
NEAR_BONE = 6
SMALL = 4


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _features(
    *,
    volume_ml: float,
    peak: float,
    mean_probability: float,
    slices: int,
    bone_distance_mm: float,
    brain_area_fraction: float,
    inside_brain_fraction: float,
    mean_hu: float,
    agreement: float,
) -> dict[str, float]:
    out = {
        "log_volume_ml": math.log1p(volume_ml),
        "logit_peak": _logit(peak),
        "mean_probability": mean_probability,
        "log_slices": math.log(slices),
        "bone_distance_mm": bone_distance_mm,
        "brain_area_fraction": brain_area_fraction,
        "inside_brain_fraction": inside_brain_fraction,
        "mean_hu": mean_hu,
        "agreement": agreement,
    }
    assert tuple(out) == FEATURES
    return out


def _true_lesion(case: str, rng: np.random.Generator) -> tuple[dict[str, float], list[int], list[int], float]:
    """(features, voxels per slice from slice 2, true voxels per slice, peak): large, over one to three
    slices, away from the bone, inside the brain, seen by most base models; "059"'s is weaker."""
    weak = case == WEAK_TRUE_LESION
    n = 1 if weak else int(rng.integers(1, 4))
    voxels = [int(v) for v in rng.integers(5, 15 if weak else 60, size=n)]
    inter = [max(1, int(v * rng.uniform(0.6, 0.95))) for v in voxels]
    peak = float(rng.uniform(0.62, 0.75) if weak else rng.uniform(0.75, 0.97))
    feats = _features(
        volume_ml=sum(voxels) * VOXEL_ML,
        peak=peak,
        mean_probability=float(rng.uniform(0.55, 0.85)),
        slices=n,
        bone_distance_mm=float(rng.uniform(2.0, 8.0) if weak else rng.uniform(4.0, 20.0)),
        brain_area_fraction=float(rng.uniform(0.45, 1.0)),
        inside_brain_fraction=float(rng.uniform(0.75, 1.0)),
        mean_hu=float(rng.normal(60.0, 10.0)),
        agreement=float(rng.uniform(0.35 if weak else 0.4, 1.0)),
    )
    return feats, voxels, inter, peak


def _false_focus(f: Focus, rng: np.random.Generator) -> tuple[dict[str, float], float]:
    """(features, peak) of a false focus: one slice, seen by few base models; a ``looks_true`` one is
    described like a true lesion (its place and size are ``f``'s in both cases)."""
    peak = float(rng.uniform(0.8, 0.95) if f.looks_true else rng.uniform(0.55, 0.85))
    feats = _features(
        volume_ml=f.volume_ml,
        peak=peak,
        mean_probability=float(rng.uniform(0.65, 0.85) if f.looks_true else rng.uniform(0.52, 0.7)),
        slices=1,
        bone_distance_mm=f.bone_distance_mm,
        brain_area_fraction=f.brain_area_fraction,
        inside_brain_fraction=float(rng.uniform(0.85, 1.0) if f.looks_true else rng.uniform(0.4, 0.95)),
        mean_hu=float(rng.normal(60.0 if f.looks_true else 50.0, 10.0)),
        agreement=float(rng.uniform(0.6, 1.0) if f.looks_true else rng.uniform(0.2, 0.7)),
    )
    return feats, peak


def synthetic_records(seed: int = SEED) -> Records:
    """The record described in the module docstring, with every column ``training.records`` writes."""
    rng = np.random.default_rng(seed)
    rec = Records()
    for case in CASES:
        fold, label = FOLD_OF[case], LABELS[case]
        truth = [0] * SLICES
        # lesion number -> (features, {slice: (voxels, inter)}, peak, volume_ml, is_hemorrhage)
        lesions: list[tuple[dict[str, float], dict[int, tuple[int, int]], float, float, int]] = []
        if label:
            feats, voxels, inter, peak = _true_lesion(case, rng)
            truth[2:5] = [15, 20, 10] if case == WEAK_TRUE_LESION else [70, 80, 60]
            on = {2 + k: (v, t) for k, (v, t) in enumerate(zip(voxels, inter, strict=True))}
            lesions.append((feats, on, peak, sum(voxels) * VOXEL_ML, 1))
        foci = list(NORMAL_FOCI.get(case, ()))
        if case in HEMORRHAGE_WITH_FALSE_FOCUS:
            foci.append(Focus(0, 0.20, 1.0, 0.05))
        for f in foci:
            feats, peak = _false_focus(f, rng)
            voxels_here = round(f.volume_ml / VOXEL_ML)
            lesions.append((feats, {f.slice: (voxels_here, 0)}, peak, f.volume_ml, 0))

        slice_prob = [float(v) for v in rng.uniform(0.02, 0.3, SLICES)]
        cand_voxels, cand_inter = [0] * SLICES, [0] * SLICES
        for _feats, on, peak, _vol, _true in lesions:
            for z, (v, t) in on.items():
                slice_prob[z] = max(slice_prob[z], peak - 0.02)
                cand_voxels[z] += v
                cand_inter[z] += t
        rec.cases.append(
            {
                "case": case,
                "fold": fold,
                "label": label,
                "slices": SLICES,
                "max_slice_probability": max(slice_prob),
                "truth_voxels": sum(truth),
                "voxel_ml": VOXEL_ML,
            }
        )
        for z in range(SLICES):
            row: dict[str, Any] = {
                "case": case,
                "fold": fold,
                "slice": z,
                "label": int(truth[z] > 0),
                "truth_voxels": truth[z],
                "slice_prob": slice_prob[z],
                "candidate_inter": cand_inter[z],
                "candidate_voxels": cand_voxels[z],
            }
            for j, key in enumerate(spec.MODEL_KEYS):
                row.update(
                    {
                        f"prob_{key}": max(0.0, slice_prob[z] - 0.03 * j),
                        f"inter_{key}": max(0, cand_inter[z] - 2 * j),
                        f"voxels_{key}": cand_voxels[z] + j,
                    }
                )
            rec.slices.append(row)
        for number, (feats, on, _peak, volume_ml, is_true) in enumerate(lesions, start=1):
            overlap = sum(t for _v, t in on.values())
            rec.lesions.append(
                {
                    "case": case,
                    "fold": fold,
                    "lesion": number,
                    "voxels": sum(v for v, _t in on.values()),
                    "volume_ml": volume_ml,
                    "first_slice": min(on),
                    "last_slice": max(on),
                    "truth_overlap": overlap,
                    "is_hemorrhage": int(overlap > 0),
                    **feats,
                }
            )
            assert int(overlap > 0) == is_true
            for z in sorted(on):
                rec.lesion_slices.append(
                    {"case": case, "lesion": number, "slice": z, "voxels": on[z][0], "inter": on[z][1]}
                )
    return rec


def folds_json(seed: int = 20261201) -> dict[str, Any]:
    """``folds.json`` of the record: ``{"seed", "k", "folds"}`` (patients by fold)."""
    return {"seed": seed, "k": FOLDS, "folds": [[c for c in CASES if FOLD_OF[c] == k] for k in range(FOLDS)]}
