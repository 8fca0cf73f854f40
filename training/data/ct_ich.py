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
spacing = 150 / width_px, clamped to a plausible field of view of 97.5-390 mm across the image (0.15-0.6
mm for CT-ICH's 650 px images; a shrunk copy, :mod:`training.data.pack`, keeps the same bounds in mm).
Lesion volume in mL = mask pixels * spacing^2 * 5 mm slice thickness / 1000.

Incomplete copies. Public copies of the data set lack some images, so a patient is read slice by slice and
what could not be read is logged (patient and slice numbers only: they are data-set indices, not patient
data) and recorded in :attr:`Patient.warnings`, so that evaluation can report it:

- bone-window image missing, unreadable or of another shape: HU comes from the brain window alone
  (:func:`brain_window_hu`). Everything outside the brain window is clipped to its ends, -20 and 100 HU:
  air reads as -20 HU and bone as at most ~100 HU. The stroke and brain channels of the model input are
  almost unchanged (their windows lie inside -20..100 HU; only the few pixels where the two windows
  disagreed differ), but the bone channel is nearly flat (0.33-0.37 instead of showing the skull), and as
  no pixel reaches the skull stripping's bone threshold (250 HU) while air counts as soft tissue, the
  skull-stripped channel is not stripped at all (its mask covers the whole image); the slice adds nothing
  to the spacing estimate either. It is rare (a single slice here and there in a damaged copy), so the
  slice is kept, flagged, rather than lost.
- brain-window image missing (the slice is then known from its bone image or its CSV row), unreadable, or
  of another shape than the patient's first readable slice: the slice is left out.
- hemorrhage mask unreadable, or missing on a slice that the CSV labels with a subtype: the mask is empty,
  the slice label still comes from the CSV (:attr:`Patient.slice_labels` is labels OR mask), so only the
  slice's Dice is lost.
- no readable slice at all: :class:`UnreadablePatientError`; :func:`read_dataset` skips such a patient with
  a warning.
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
#: Plausible field of view (mm across the image) that bounds the spacing estimate.
_FIELD_OF_VIEW_MM: tuple[float, float] = (97.5, 390.0)


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


def brain_window_hu(brain: np.ndarray) -> np.ndarray:
    """Integer HU from the brain-window image alone, for a slice whose bone-window image is unusable.

    Values outside the window are clipped to its ends: the result lies in [-20, 100] HU, so bone reads as
    at most ~100 HU and air as -20 HU (see the module docstring for what this does to the model input).

    Args:
        brain: [H, W] uint8, brain window (L40 W120).

    Returns:
        [H, W] float32 with integer values.
    """
    return np.rint(brain.astype(np.float32) / 255.0 * 120.0 - 20.0).astype(np.float32)


def _read_gray(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("L"), dtype=np.uint8)


def _try_read_gray(path: Path) -> tuple[np.ndarray | None, str]:
    """``(image, "")``, or ``(None, why)`` when the file is missing or cannot be decoded.

    The reason names the exception type only: PIL's messages can carry the file path.
    """
    if not path.is_file():
        return None, "missing"
    try:
        return _read_gray(path), ""
    except (OSError, ValueError, Image.DecompressionBombError) as exc:  # truncated, not an image, ...
        return None, f"unreadable ({type(exc).__name__})"


def _try_read_shaped(path: Path, shape: tuple[int, ...]) -> tuple[np.ndarray | None, str]:
    """As :func:`_try_read_gray`, and ``(None, why)`` too when the image is not of ``shape``."""
    image, why = _try_read_gray(path)
    if image is not None and image.shape != shape:
        return None, f"of shape {image.shape}, not {shape}"
    return image, why


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
    low, high = (mm / hu.shape[2] for mm in _FIELD_OF_VIEW_MM)
    return float(np.clip(SKULL_WIDTH_MM / widest, low, high))


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
    #: What could not be read and what was done instead, one note per slice (no patient data).
    warnings: tuple[str, ...] = ()

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


def check_root(root: Path) -> Path:
    """``root`` when it is a CT-ICH folder; else a FileNotFoundError that says which of two things is wrong.

    A folder that does not exist and a folder in another layout need different fixes from the user.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    if not (root / "Patients_CT").is_dir():
        raise FileNotFoundError(f"not a CT-ICH folder (no Patients_CT/): {root}")
    return root


def list_patients(root: Path) -> list[str]:
    """Patient ids (folder names) under ``root/Patients_CT``, sorted.

    A folder counts when it has a ``brain/`` folder or a numeric name (CT-ICH numbers its patients), so a
    patient folder emptied in a damaged copy is still listed and then reported as unreadable instead of
    silently disappearing from training and evaluation.
    """
    base = check_root(root) / "Patients_CT"
    return sorted(
        p.name for p in base.iterdir() if p.is_dir() and ((p / "brain").is_dir() or p.name.isdigit())
    )


def _numbered_jpgs(folder: Path) -> set[int]:
    return {int(p.stem) for p in folder.glob("*.jpg") if p.stem.isdigit()}


def _slice_numbers(pdir: Path, pid: str, labels: dict[int, SliceLabel]) -> list[int]:
    """The patient's slice numbers: its brain images and those that its bone images and CSV rows name.

    Numbers known only from the bone images or the CSV are slices whose brain image is missing, so that
    they can be reported. Patient 081's bone images are numbered one ahead of its brain images, so they
    name no slice.
    """
    nums = _numbered_jpgs(pdir / "brain") | set(labels)
    if pid not in _BONE_SHIFT_PATIENTS:
        nums |= _numbered_jpgs(pdir / "bone")
    return sorted(nums)


class UnreadablePatientError(ValueError):
    """A CT-ICH patient folder holds no slice that can be read; the message says why."""


def _bone_number(pdir: Path, pid: str, n: int, last: int) -> int:
    """The bone image that belongs to brain image ``n``: ``n``, or ``n + 1`` for patient 081.

    For 081 only the last slice, which has no successor, falls back to its own bone image; a middle slice
    whose successor is missing gets ``n + 1`` anyway and so is read as one without a bone image, since its
    own bone image belongs to the slice before.
    """
    if pid not in _BONE_SHIFT_PATIENTS or (n == last and not (pdir / "bone" / f"{n + 1}.jpg").exists()):
        return n
    return n + 1


def _slice_hu(
    pdir: Path, pid: str, n: int, last: int, shape: tuple[int, ...] | None
) -> tuple[np.ndarray | None, str]:
    """HU of slice ``n`` and a note ("" when all went well); ``None`` when the slice must be left out.

    Args:
        last: the patient's last slice number.
        shape: the shape of the patient's slices read so far (``None`` for the first one).
    """
    where = f"patient {pid} slice {n}"
    brain, why = _try_read_gray(pdir / "brain" / f"{n}.jpg")
    if brain is None:
        return None, f"{where}: brain-window image {why}; slice left out"
    if shape is not None and brain.shape != shape:
        return None, f"{where}: brain-window image is {brain.shape}, not {shape} as before; slice left out"
    bone, why = _try_read_shaped(pdir / "bone" / f"{_bone_number(pdir, pid, n, last)}.jpg", brain.shape)
    if bone is None:
        return brain_window_hu(brain), f"{where}: bone-window image {why}; HU from the brain window alone"
    return recover_hu(brain, bone, _BONE_OFFSET_HU.get(pid, 0.0)), ""


def _slice_mask(
    pdir: Path, pid: str, n: int, shape: tuple[int, ...], label: SliceLabel | None
) -> tuple[np.ndarray, str]:
    """Mask of slice ``n`` (> 127) and a note; empty when absent (normal unless the CSV says hemorrhage)."""
    where = f"patient {pid} slice {n}"
    empty = np.zeros(shape, dtype=bool)
    path = pdir / "brain" / f"{n}_HGE_Seg.jpg"
    if not path.exists():
        if label is not None and any(label.subtypes):
            return empty, f"{where}: labelled hemorrhage in the CSV but has no mask; mask empty, label kept"
        return empty, ""
    seg, why = _try_read_shaped(path, shape)
    if seg is None:
        return empty, f"{where}: mask {why}; mask empty, CSV label kept"
    return seg > MASK_THRESHOLD, ""


def read_patient(root: Path, pid: str, labels: dict[int, SliceLabel] | None = None) -> Patient:
    """Read one patient's slices (HU), masks (> 127) and labels, with the known faults corrected.

    Slices with unusable images are handled as the module docstring says; each note is logged and kept in
    ``Patient.warnings``.

    Raises:
        UnreadablePatientError: the folder has no slice images, or no slice has a readable brain image.
    """
    pdir = Path(root) / "Patients_CT" / pid
    labels = labels or {}
    nums = _slice_numbers(pdir, pid, labels)
    if not nums:
        raise UnreadablePatientError(f"patient {pid} has no slice images (brain/<n>.jpg, bone/<n>.jpg)")
    kept: list[int] = []
    hus: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    notes: list[str] = []
    for n in nums:
        hu, note = _slice_hu(pdir, pid, n, nums[-1], hus[0].shape if hus else None)
        notes.append(note)
        if hu is None:
            continue
        mask, note = _slice_mask(pdir, pid, n, hu.shape, labels.get(n))
        notes.append(note)
        kept.append(n)
        hus.append(hu)
        masks.append(mask)
    notes = [note for note in notes if note]
    for note in notes:
        logger.warning("%s", note)
    if not kept:
        raise UnreadablePatientError(
            f"patient {pid}: none of its {len(nums)} slices has a readable brain image"
        )
    return _patient(pid, kept, np.stack(hus), np.stack(masks), labels, tuple(notes))


def _patient(
    pid: str,
    nums: list[int],
    hu: np.ndarray,
    masks: np.ndarray,
    labels: dict[int, SliceLabel],
    notes: tuple[str, ...],
) -> Patient:
    """Assemble a :class:`Patient` with the CSV labels of the slices read (zeros for unlabelled ones)."""
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
        masks=masks,
        subtypes=sub,
        pixel_spacing_mm=estimate_pixel_spacing(hu),
        fracture=frac,
        warnings=notes,
    )


def read_dataset(root: Path, patients: Sequence[str] | None = None) -> list[Patient]:
    """Read every (or the listed) patient of a CT-ICH folder, skipping (with a warning) unreadable ones.

    Training should not stop over one damaged patient of a public copy; the log says which was skipped.

    Raises:
        UnreadablePatientError: patients were asked for and none of them could be read.
    """
    root = check_root(root)
    all_labels = read_labels(root / "hemorrhage_diagnosis.csv")
    pids = list(patients) if patients is not None else list_patients(root)
    out = []
    for pid in pids:
        try:
            out.append(read_patient(root, pid, all_labels.get(pid)))
        except UnreadablePatientError as exc:
            logger.warning("patient skipped: %s", exc)
    if pids and not out:
        raise UnreadablePatientError(f"none of the {len(pids)} patients could be read")
    return out
