"""Evaluation cases from a folder of either annotated layout, behind one entry point.

Evaluation should not need to know how a folder is organised. Two layouts are recognised:

* ``"ct-ich"``: ``root/Patients_CT/<pid>/brain|bone/<n>.jpg`` and ``root/hemorrhage_diagnosis.csv``, read with
  :mod:`training.data.ct_ich` (HU recovered from the JPEG windows, damaged slices handled as it documents);
  a case is a patient.
* ``"dicom"``: ``root/<case>/dicom/...`` with ``mask.nii[.gz]`` or ``seg.dcm``, read with
  :mod:`training.data.dicom_masks`; slice labels come from the mask, subtypes are unknown (zeros).

Both give an :class:`EvalCase` with the same fields. Any failure to read one case is a :class:`CaseReadError`
carrying a readable reason, so that evaluation can report the case as skipped and go on. Neither the reasons
nor the log lines name a DICOM case folder (its name may be a patient's); CT-ICH patient numbers are data-set
indices and do appear.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from ich.errors import IntakeError
from training.data import ct_ich, dicom_masks

logger = logging.getLogger(__name__)

Layout = Literal["ct-ich", "dicom"]
#: {patient id: {slice number: label}}, as :func:`training.data.ct_ich.read_labels` returns.
Labels = Mapping[str, Mapping[int, ct_ich.SliceLabel]]


class CaseReadError(Exception):
    """One case could not be read.

    Attributes:
        case_id: the case (folder name) that failed; not part of the message, so logging the message alone
            never leaks a DICOM folder name.
        reason: what went wrong, for a person.
    """

    def __init__(self, case_id: str, reason: str) -> None:
        super().__init__(reason)
        self.case_id = case_id
        self.reason = reason


@dataclass(frozen=True, eq=False)  # eq=False: field-wise == on arrays is ambiguous; identity is enough
class EvalCase:
    """One case, slices in reading order, as evaluation consumes it.

    Attributes:
        hu: [N, H, W] float32 HU.
        masks: [N, H, W] bool ground-truth hemorrhage.
        slice_labels: [N] int, 1 where the slice has hemorrhage (labels or mask).
        subtypes: [N, 5] int in :data:`training.data.ct_ich.SUBTYPES` order; zeros when unknown (DICOM).
        pixel_spacing_mm: (row, column); estimated from the skull for CT-ICH.
        warnings: what could not be read and what was done instead.
    """

    case_id: str
    hu: np.ndarray
    masks: np.ndarray
    slice_labels: np.ndarray
    subtypes: np.ndarray
    pixel_spacing_mm: tuple[float, float]
    slice_thickness_mm: float
    warnings: tuple[str, ...] = ()


def _is_dicom_case(path: Path) -> bool:
    return path.is_dir() and (path / "dicom").is_dir()


def detect_layout(root: Path) -> Layout:
    """``"ct-ich"`` if ``root`` has ``Patients_CT/``, else ``"dicom"`` if a subfolder has ``dicom/``.

    Raises:
        FileNotFoundError: neither layout (or no such folder).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    if (root / "Patients_CT").is_dir():
        return "ct-ich"
    if root.is_dir() and any(_is_dicom_case(p) for p in root.iterdir()):
        return "dicom"
    raise FileNotFoundError(
        f"{root}: neither the CT-ICH layout (Patients_CT/) nor the DICOM layout (<case>/dicom/ + mask)"
    )


def list_cases(root: Path) -> list[str]:
    """Case ids under ``root``, sorted: CT-ICH patient folders, or every visible DICOM-layout case folder.

    In the DICOM layout every visible subfolder is a case, as for :func:`dicom_masks.read_cases`, so that a
    case folder missing its ``dicom/`` is reported when read rather than silently left out.
    """
    root = Path(root)
    if detect_layout(root) == "ct-ich":
        return ct_ich.list_patients(root)
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_case_labels(root: Path) -> dict[str, dict[int, ct_ich.SliceLabel]]:
    """The CSV slice labels of a CT-ICH folder; ``{}`` for the DICOM layout or an absent/unusable CSV.

    Without labels the slice labels come from the masks only, which evaluation can still use, hence a
    warning rather than an error.
    """
    root = Path(root)
    if detect_layout(root) == "dicom":
        logger.info("DICOM layout: slice labels come from the masks")
        return {}
    csv_path = root / "hemorrhage_diagnosis.csv"
    if not csv_path.is_file():
        logger.warning("no %s in %s: slice labels come from the masks only", csv_path.name, root)
        return {}
    try:
        return ct_ich.read_labels(csv_path)
    except (KeyError, ValueError, OSError) as exc:  # a column missing, a malformed number, unreadable
        logger.warning("%s is unusable (%s): slice labels come from the masks only", csv_path.name, exc)
        return {}


def read_case(root: Path, case_id: str, labels: Labels | None = None) -> EvalCase:
    """Read one case of ``root`` (either layout).

    Args:
        labels: for CT-ICH, the labels of :func:`read_case_labels` (ignored for DICOM).

    Raises:
        CaseReadError: the case cannot be read; ``reason`` says why.
        FileNotFoundError: ``root`` is in neither layout.
    """
    root = Path(root)
    layout = detect_layout(root)
    if not case_id or Path(case_id).name != case_id or case_id in (".", ".."):
        raise CaseReadError(case_id, "not a case folder name")
    if layout == "ct-ich":
        return _read_ct_ich(root, case_id, (labels or {}).get(case_id))
    return _read_dicom(root, case_id)


def _read_ct_ich(root: Path, pid: str, labels: Mapping[int, ct_ich.SliceLabel] | None) -> EvalCase:
    if not (root / "Patients_CT" / pid).is_dir():
        raise CaseReadError(pid, f"no patient folder Patients_CT/{pid}")
    try:
        patient = ct_ich.read_patient(root, pid, dict(labels) if labels else None)
    except (OSError, ValueError) as exc:  # UnreadablePatientError is a ValueError
        raise CaseReadError(pid, str(exc)) from exc
    spacing = float(patient.pixel_spacing_mm)
    return EvalCase(
        case_id=pid,
        hu=patient.hu,
        masks=patient.masks,
        slice_labels=patient.slice_labels,
        subtypes=patient.subtypes.astype(np.int64),
        pixel_spacing_mm=(spacing, spacing),
        slice_thickness_mm=float(patient.slice_thickness_mm),
        warnings=patient.warnings,
    )


def _read_dicom(root: Path, case_id: str) -> EvalCase:
    case_dir = root / case_id
    try:
        case = dicom_masks.read_case(case_dir)
    except (OSError, ValueError, IntakeError) as exc:
        raise CaseReadError(case_id, _reason(exc, case_dir)) from exc
    except Exception as exc:  # nibabel and highdicom raise their own types for a broken mask file
        # Their messages may hold paths or UIDs: the type only; the chained exception keeps the rest.
        raise CaseReadError(case_id, f"case unreadable ({type(exc).__name__})") from exc
    volume = case.volume
    row, col = volume.pixel_spacing_mm
    return EvalCase(
        case_id=case_id,
        hu=volume.hu,
        masks=case.mask,
        slice_labels=case.slice_labels,
        subtypes=np.zeros((volume.hu.shape[0], len(ct_ich.SUBTYPES)), dtype=np.int64),
        pixel_spacing_mm=(float(row), float(col)),
        slice_thickness_mm=float(volume.slice_thickness_mm),
        warnings=tuple(volume.warnings),
    )


def _reason(exc: Exception, case_dir: Path) -> str:
    """The reader's message with the case folder's path replaced, so that it names no case."""
    return str(exc).replace(str(case_dir), "the case folder") or type(exc).__name__
