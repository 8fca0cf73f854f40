"""Reader for strongly annotated data of your own: a DICOM CT series plus a mask (NIfTI or DICOM SEG).

Layout: one folder per case under ``root``::

    root/<case>/dicom/...        the CT series (any file names; read with ich.intake, the gateway's rules)
    root/<case>/mask.nii[.gz]    hemorrhage mask (any non-zero voxel is hemorrhage), or
    root/<case>/seg.dcm          a DICOM SEG referencing the series (all segments combined)

The NIfTI mask is mapped onto the DICOM pixel grid through both geometries: each DICOM pixel's patient
position (ImagePositionPatient/Orientation/PixelSpacing, LPS) goes through the inverse NIfTI affine (RAS)
to a voxel index (nearest neighbour), so any axis order or flip that a converter chose is handled. The
DICOM SEG is read with highdicom by source SOP Instance UID. The result has the same shape and slice order
as the volume's HU, so it feeds the same preprocessing as the CT-ICH reader.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from ich.intake import read_folder
from ich.volume import CTVolume

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnnotatedCase:
    """One case: the CT volume and its [N, H, W] boolean mask, slices in the volume's order."""

    case_id: str
    volume: CTVolume
    mask: np.ndarray

    @property
    def slice_labels(self) -> np.ndarray:
        """[N] int: 1 where the slice has any mask pixel."""
        return np.asarray(self.mask.reshape(self.mask.shape[0], -1).any(axis=1), dtype=np.int64)

    @property
    def lesion_volume_ml(self) -> float:
        """Mask volume in mL from the DICOM spacing."""
        r, c = self.volume.pixel_spacing_mm
        return float(self.mask.sum() * r * c * self.volume.slice_thickness_mm / 1000.0)


def _geometry(dicom_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """SOPInstanceUID -> (position, row direction, column direction, (row, col) spacing), LPS, mm."""
    out = {}
    for path in dicom_dir.rglob("*"):
        if not path.is_file():
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (pydicom.errors.InvalidDicomError, OSError):
            continue
        if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
            continue
        iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
        out[str(ds.SOPInstanceUID)] = (
            np.asarray(ds.ImagePositionPatient, dtype=float),
            iop[:3],
            iop[3:],
            np.asarray(ds.PixelSpacing, dtype=float),
        )
    return out


def nifti_mask_on_grid(nifti_path: Path, volume: CTVolume, dicom_dir: Path) -> np.ndarray:
    """Resample a NIfTI mask onto the DICOM grid (nearest voxel), [N, H, W] bool."""
    import nibabel as nib

    img: Any = nib.load(str(nifti_path))
    data = np.asarray(img.dataobj)
    while data.ndim > 3:
        data = data[..., 0]
    inv = np.linalg.inv(img.affine)
    geo = _geometry(dicom_dir)
    n, h, w = volume.hu.shape
    rows, cols = np.mgrid[0:h, 0:w]
    mask = np.zeros((n, h, w), dtype=bool)
    lps_to_ras = np.array([-1.0, -1.0, 1.0])
    for s, uid in enumerate(volume.sop_instance_uids):
        if uid not in geo:
            raise ValueError(f"slice {s} of the series has no geometry; cannot place the NIfTI mask")
        pos, rdir, cdir, (dr, dc) = geo[uid]
        # DICOM: pixel (row a, column b) at pos + b*dc*rdir + a*dr*cdir (rdir runs along a row).
        lps = pos[None, None, :] + cols[..., None] * dc * rdir + rows[..., None] * dr * cdir
        ras = lps * lps_to_ras
        ijk = np.rint(ras @ inv[:3, :3].T + inv[:3, 3]).astype(np.int64)
        ok = np.all((ijk >= 0) & (ijk < np.asarray(data.shape[:3])), axis=-1)
        vals = np.zeros((h, w), dtype=bool)
        vals[ok] = data[ijk[ok, 0], ijk[ok, 1], ijk[ok, 2]] != 0
        mask[s] = vals
    return mask


def seg_mask_on_grid(seg_path: Path, volume: CTVolume) -> np.ndarray:
    """Read a DICOM SEG (highdicom), all segments combined, in the volume's slice order, [N, H, W] bool."""
    import highdicom as hd

    seg = hd.seg.segread(str(seg_path))
    referenced = {str(uid) for _, _, uid in seg.get_source_image_uids()}
    n, h, w = volume.hu.shape
    mask = np.zeros((n, h, w), dtype=bool)
    present = [(i, uid) for i, uid in enumerate(volume.sop_instance_uids) if uid in referenced]
    if not present:
        raise ValueError("the DICOM SEG references none of the series' slices")
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[uid for _, uid in present],
        combine_segments=True,
        skip_overlap_checks=True,
    )
    for k, (i, _) in enumerate(present):
        mask[i] = pixels[k] != 0
    return mask


def read_case(case_dir: Path) -> AnnotatedCase:
    """Read one case folder (``dicom/`` + ``mask.nii[.gz]`` or ``seg.dcm``)."""
    case_dir = Path(case_dir)
    dicom_dir = case_dir / "dicom"
    if not dicom_dir.is_dir():
        raise FileNotFoundError(f"{case_dir} has no dicom/ folder")
    volume = read_folder(dicom_dir).volume
    niftis = [p for p in (case_dir / "mask.nii.gz", case_dir / "mask.nii") if p.exists()]
    if niftis:
        mask = nifti_mask_on_grid(niftis[0], volume, dicom_dir)
    elif (case_dir / "seg.dcm").exists():
        mask = seg_mask_on_grid(case_dir / "seg.dcm", volume)
    else:
        raise FileNotFoundError(f"{case_dir} has neither mask.nii[.gz] nor seg.dcm")
    return AnnotatedCase(case_id=case_dir.name, volume=volume, mask=mask)


def read_cases(root: Path) -> list[AnnotatedCase]:
    """Read every case folder under ``root`` (sorted by name)."""
    root = Path(root)
    dirs = sorted(p for p in root.iterdir() if p.is_dir())
    if not dirs:
        raise FileNotFoundError(f"no case folders under {root}")
    return [read_case(d) for d in dirs]
