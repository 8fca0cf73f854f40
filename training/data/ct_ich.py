"""Reader for the CT-ICH layout (PhysioNet "CT images for ICH detection and segmentation").

The dataset stores windowed 8-bit JPEG renderings, not HU. We recover approximate HU from the two windows:
the brain window (L40 W120: HU = v/255*120 - 20) where it is unsaturated and consistent with the bone
window, the bone window (L700 W3200: HU = v/255*3200 - 900) elsewhere. JPEG noise puts grey levels of 1-3
into air and 252-254 into bone on the brain image, so "unsaturated" also requires the bone-window HU to be
within the brain window (with a margin covering the bone window's 12.5 HU grey step and JPEG error).
Recovered HU is rounded to integers so that writing a slice to int16 DICOM and reading it back gives
identical tensors.

Known faults corrected here (both found by comparing the windows where both are unsaturated):
- patient 081: bone image n+1 belongs to brain image n (28 of 29 slices); we shift by one, and the last
  slice, which has no successor, keeps its own bone image.
- patient 050: bone images are about 93 HU below the brain images; we add 93 HU to its bone-derived HU.

Pixel spacing is not stored. We estimate it per patient from the skull: the widest left-right extent of
the largest bone component (>= 250 HU: the skull, not the head rest) over the patient's slices is taken to
be 150 mm (adult skulls are 140-160 mm wide), so
spacing = 150 / width_px, clamped to a plausible 0.15-0.6 mm. Lesion volume in mL = mask pixels * spacing^2
* 5 mm slice thickness / 1000.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

logger = logging.getLogger(__name__)

#: Subtype columns of hemorrhage_diagnosis.csv, in the order used for subtype label vectors.
SUBTYPES: tuple[str, ...] = ("Intraventricular", "Intraparenchymal", "Subarachnoid", "Epidural", "Subdural")
SLICE_THICKNESS_MM: float = 5.0
#: Assumed adult skull width used for the spacing estimate.
SKULL_WIDTH_MM: float = 150.0
MASK_THRESHOLD: int = 127
_BONE_SHIFT_PATIENTS: frozenset[str] = frozenset({"081"})
_BONE_OFFSET_HU: dict[str, float] = {"050": 93.0}
_BRAIN_MARGIN_HU: float = 60.0


def recover_hu(brain: np.ndarray, bone: np.ndarray, bone_offset_hu: float = 0.0) -> np.ndarray:
    """Recover integer HU from the brain-window and bone-window 8-bit renderings of one slice.

    Args:
        brain: [H, W] uint8, brain window (L40 W120).
        bone: [H, W] uint8, bone window (L700 W3200).
        bone_offset_hu: added to the bone-derived HU (calibration fault correction).

    Returns:
        [H, W] float32 with integer values.
    """
    if brain.shape != bone.shape:
        raise ValueError(f"brain and bone images differ in shape: {brain.shape} vs {bone.shape}")
    v = brain.astype(np.float32)
    hu_brain = v / 255.0 * 120.0 - 20.0
    hu_bone = bone.astype(np.float32) / 255.0 * 3200.0 - 900.0 + np.float32(bone_offset_hu)
    consistent = (hu_bone >= -20.0 - _BRAIN_MARGIN_HU) & (hu_bone <= 100.0 + _BRAIN_MARGIN_HU)
    use_brain = (v > 0) & (v < 255) & consistent
    return np.rint(np.where(use_brain, hu_brain, hu_bone)).astype(np.float32)


def _read_gray(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("L"), dtype=np.uint8)


def estimate_pixel_spacing(hu: np.ndarray) -> float:
    """Estimate pixel spacing (mm) from the widest skull (largest bone component) over a patient's slices.

    Args:
        hu: [N, H, W] HU of one patient.
    """
    widest = 0
    for sl in hu:
        labels, count = ndimage.label(sl >= 250.0)
        if count == 0:
            continue
        sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, count + 1))
        cols = np.flatnonzero((labels == int(np.argmax(sizes)) + 1).any(axis=0))
        widest = max(widest, int(cols[-1] - cols[0] + 1))
    if widest < 50:
        return SKULL_WIDTH_MM / (0.65 * hu.shape[2])  # no skull found: assume the head fills 65% of the width
    return float(np.clip(SKULL_WIDTH_MM / widest, 0.15, 0.6))


@dataclass(frozen=True)
class SliceLabel:
    """Per-slice labels from hemorrhage_diagnosis.csv."""

    subtypes: tuple[int, ...]  # in SUBTYPES order
    no_hemorrhage: int
    fracture: int


@dataclass
class Patient:
    """One CT-ICH patient: HU slices, masks and labels in slice order."""

    pid: str
    slice_numbers: list[int]
    hu: np.ndarray  # [N, H, W] float32, integer HU
    masks: np.ndarray  # [N, H, W] bool
    subtypes: np.ndarray  # [N, 5] int8, SUBTYPES order
    pixel_spacing_mm: float
    slice_thickness_mm: float = SLICE_THICKNESS_MM
    fracture: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int8))

    @property
    def slice_labels(self) -> np.ndarray:
        """[N] int: 1 where the slice has hemorrhage (by labels or mask)."""
        return ((self.subtypes.sum(axis=1) > 0) | self.masks.any(axis=(1, 2))).astype(np.int64)

    @property
    def lesion_volume_ml(self) -> float:
        """Total hemorrhage volume of the patient in mL, from the masks and the estimated spacing."""
        voxel_mm3 = self.pixel_spacing_mm**2 * self.slice_thickness_mm
        return float(self.masks.sum() * voxel_mm3 / 1000.0)


def read_labels(csv_path: Path) -> dict[str, dict[int, SliceLabel]]:
    """Read hemorrhage_diagnosis.csv (may start with a BOM) into {patient id "049": {slice: label}}."""
    out: dict[str, dict[int, SliceLabel]] = {}
    with csv_path.open(newline="", encoding="utf-8-sig") as fh:
        for row in csv.DictReader(fh):
            pid = f"{int(row['PatientNumber']):03d}"
            label = SliceLabel(
                subtypes=tuple(int(row[s]) for s in SUBTYPES),
                no_hemorrhage=int(row["No_Hemorrhage"]),
                fracture=int(row.get("Fracture_Yes_No", 0) or 0),
            )
            out.setdefault(pid, {})[int(row["SliceNumber"])] = label
    return out


def list_patients(root: Path) -> list[str]:
    """Patient ids (folder names) under ``root/Patients_CT``, sorted."""
    base = Path(root) / "Patients_CT"
    if not base.is_dir():
        raise FileNotFoundError(f"not a CT-ICH folder (no Patients_CT/): {root}")
    return sorted(p.name for p in base.iterdir() if p.is_dir() and (p / "brain").is_dir())


def _slice_numbers(brain_dir: Path) -> list[int]:
    nums = []
    for p in brain_dir.glob("*.jpg"):
        if p.stem.isdigit():
            nums.append(int(p.stem))
    return sorted(nums)


def read_patient(root: Path, pid: str, labels: dict[int, SliceLabel] | None = None) -> Patient:
    """Read one patient's slices (HU), masks (> 127) and labels, with the known faults corrected."""
    pdir = Path(root) / "Patients_CT" / pid
    nums = _slice_numbers(pdir / "brain")
    if not nums:
        raise FileNotFoundError(f"patient {pid} has no brain slices")
    shift = pid in _BONE_SHIFT_PATIENTS
    offset = _BONE_OFFSET_HU.get(pid, 0.0)
    hus, masks = [], []
    for n in nums:
        brain = _read_gray(pdir / "brain" / f"{n}.jpg")
        bone_n = n + 1 if shift and (pdir / "bone" / f"{n + 1}.jpg").exists() else n
        bone = _read_gray(pdir / "bone" / f"{bone_n}.jpg")
        hus.append(recover_hu(brain, bone, offset))
        seg = pdir / "brain" / f"{n}_HGE_Seg.jpg"
        masks.append(_read_gray(seg) > MASK_THRESHOLD if seg.exists() else np.zeros(brain.shape, dtype=bool))
    hu = np.stack(hus)
    labels = labels or {}
    sub = np.zeros((len(nums), len(SUBTYPES)), dtype=np.int8)
    frac = np.zeros(len(nums), dtype=np.int8)
    for i, n in enumerate(nums):
        if n in labels:
            sub[i] = labels[n].subtypes
            frac[i] = labels[n].fracture
    return Patient(
        pid=pid,
        slice_numbers=nums,
        hu=hu,
        masks=np.stack(masks),
        subtypes=sub,
        pixel_spacing_mm=estimate_pixel_spacing(hu),
        fracture=frac,
    )


def read_dataset(root: Path, patients: Sequence[str] | None = None) -> list[Patient]:
    """Read every (or the listed) patient of a CT-ICH folder."""
    root = Path(root)
    all_labels = read_labels(root / "hemorrhage_diagnosis.csv")
    pids = list(patients) if patients is not None else list_patients(root)
    return [read_patient(root, pid, all_labels.get(pid)) for pid in pids]
