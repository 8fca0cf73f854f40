"""DICOM series + NIfTI mask reader: the mask lands on the right pixels whatever the NIfTI axis layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

nib = pytest.importorskip("nibabel")
dicom_writer = pytest.importorskip("ich_devtools.dicom_writer")

from training.data.dicom_masks import read_case, read_cases  # noqa: E402


def _write_case(tmp_path: Path, flip_k: bool) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(0)
    hu = rng.integers(0, 80, size=(4, 24, 20)).astype(np.float32)
    case = tmp_path / ("flipped" if flip_k else "plain")
    paths = dicom_writer.write_series(hu, case / "dicom", pixel_spacing_mm=(0.8, 0.6), slice_thickness_mm=5.0)
    mask = np.zeros(hu.shape, dtype=np.uint8)
    mask[1, 5:9, 3:12] = 1  # asymmetric in rows/columns so any transposition or flip is caught
    mask[2, 10:11, 15:19] = 1
    first = pydicom.dcmread(paths[0], stop_before_pixels=True)
    second = pydicom.dcmread(paths[1], stop_before_pixels=True)
    iop = np.asarray(first.ImageOrientationPatient, dtype=float)
    dr, dc = (float(v) for v in first.PixelSpacing)
    origin = np.asarray(first.ImagePositionPatient, dtype=float)
    step = np.asarray(second.ImagePositionPatient, dtype=float) - origin
    # voxel (i=column, j=row, k=slice) -> LPS, then LPS -> RAS for NIfTI
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = iop[:3] * dc, iop[3:] * dr, step, origin
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    data = mask.transpose(2, 1, 0)  # [N, H, W] -> [W, H, N]
    if flip_k:
        data = data[:, :, ::-1]
        affine = affine @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, -1, hu.shape[0] - 1], [0, 0, 0, 1.0]])
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), affine), str(case / "mask.nii.gz"))
    return case, mask.astype(bool)


@pytest.mark.parametrize("flip_k", [False, True])
def test_nifti_mask_on_dicom_grid(tmp_path, flip_k) -> None:
    case_dir, mask = _write_case(tmp_path, flip_k)
    case = read_case(case_dir)
    assert case.volume.hu.shape == mask.shape
    assert np.array_equal(case.mask, mask)
    assert case.slice_labels.tolist() == [0, 1, 1, 0]
    assert case.lesion_volume_ml == pytest.approx(mask.sum() * 0.8 * 0.6 * 5.0 / 1000.0)


def test_read_cases_and_missing_mask(tmp_path) -> None:
    _write_case(tmp_path, False)
    assert [c.case_id for c in read_cases(tmp_path)] == ["plain"]
    (tmp_path / "plain" / "mask.nii.gz").unlink()
    with pytest.raises(FileNotFoundError):
        read_case(tmp_path / "plain")


def test_dicom_seg_mask(tmp_path) -> None:
    """A DICOM SEG (built with the service's own ich.seg) is read back onto the series' slices."""
    seg_module = pytest.importorskip("ich.seg")
    case_dir, mask = _write_case(tmp_path, False)
    (case_dir / "mask.nii.gz").unlink()
    sources = [pydicom.dcmread(p) for p in sorted((case_dir / "dicom").glob("*.dcm"))]
    seg = seg_module.build_segmentation(sources, mask, model_version="test")
    assert seg is not None
    seg.save_as(case_dir / "seg.dcm")
    case = read_case(case_dir)
    assert np.array_equal(case.mask, mask)
