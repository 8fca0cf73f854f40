"""``training.data.cases``: one entry point for evaluation cases in the CT-ICH or the DICOM + mask layout."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nibabel")

from tests.unit.training.test_dicom_masks import _write_case  # a DICOM series + NIfTI mask on disk
from training.data.cases import (
    CaseReadError,
    EvalCase,
    detect_layout,
    list_cases,
    read_case,
    read_case_labels,
)
from training.data.ct_ich import SUBTYPES, read_labels, read_patient

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "ct_ich"
LOGGER = "training.data.cases"


@pytest.fixture
def dicom_root(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """Two DICOM-layout cases, "flipped" and "plain", with the same mask; returns the root and the mask."""
    root = tmp_path / "dicom_cases"
    _write_case(root, flip_k=True)
    _, mask = _write_case(root, flip_k=False)
    return root, mask


def _ct_ich_copy(tmp_path: Path) -> Path:
    data = tmp_path / "ct_ich"
    shutil.copytree(FIXTURE, data)
    return data


def test_detect_layout(tmp_path: Path, dicom_root: tuple[Path, np.ndarray]) -> None:
    assert detect_layout(FIXTURE) == "ct-ich"
    assert detect_layout(dicom_root[0]) == "dicom"
    (tmp_path / "other" / "sub").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="neither"):
        detect_layout(tmp_path / "other")
    with pytest.raises(FileNotFoundError):
        detect_layout(tmp_path / "absent")


def test_list_cases_both_layouts(dicom_root: tuple[Path, np.ndarray]) -> None:
    assert list_cases(FIXTURE) == ["049", "081"]
    root = dicom_root[0]
    (root / "broken").mkdir()  # no dicom/: listed, so that reading it reports it
    (root / ".hidden").mkdir()
    assert list_cases(root) == ["broken", "flipped", "plain"]
    with pytest.raises(CaseReadError, match="no dicom/ folder"):
        read_case(root, "broken")


def test_read_ct_ich_case_matches_the_patient_reader() -> None:
    labels = read_case_labels(FIXTURE)
    case = read_case(FIXTURE, "049", labels)
    patient = read_patient(FIXTURE, "049", labels["049"])
    assert isinstance(case, EvalCase) and case.case_id == "049"
    assert np.array_equal(case.hu, patient.hu) and case.hu.dtype == np.float32
    assert np.array_equal(case.masks, patient.masks) and case.masks.dtype == bool
    assert case.slice_labels.tolist() == [0, 1, 1]
    assert case.subtypes.shape == (3, len(SUBTYPES))
    assert case.subtypes[:, SUBTYPES.index("Epidural")].tolist() == [0, 1, 1]
    assert case.pixel_spacing_mm == (patient.pixel_spacing_mm, patient.pixel_spacing_mm)
    assert case.slice_thickness_mm == 5.0
    assert case.warnings == ()
    # without labels the subtypes are unknown (zeros) and the slice labels come from the masks
    assert read_case(FIXTURE, "049").subtypes.sum() == 0


def test_read_dicom_case(dicom_root: tuple[Path, np.ndarray]) -> None:
    root, mask = dicom_root
    assert read_case_labels(root) == {}
    case = read_case(root, "flipped", {"flipped": {}})  # labels are ignored for DICOM
    assert case.case_id == "flipped"
    assert case.hu.shape == mask.shape == (4, 24, 20)
    assert np.array_equal(case.masks, mask)
    assert case.slice_labels.tolist() == [0, 1, 1, 0]
    assert case.subtypes.shape == (4, len(SUBTYPES)) and not case.subtypes.any()
    assert case.pixel_spacing_mm == pytest.approx((0.8, 0.6))
    assert case.slice_thickness_mm == pytest.approx(5.0)


def test_damaged_ct_ich_case_carries_the_reader_warnings(tmp_path: Path) -> None:
    data = _ct_ich_copy(tmp_path)
    (data / "Patients_CT" / "049" / "bone" / "13.jpg").unlink()
    case = read_case(data, "049", read_case_labels(data))
    assert len(case.warnings) == 1 and "slice 13: bone-window image missing" in case.warnings[0]
    assert case.hu[0].min() >= -20 and case.hu[0].max() <= 100


def test_unreadable_ct_ich_case_raises_case_read_error(tmp_path: Path) -> None:
    data = _ct_ich_copy(tmp_path)
    shutil.rmtree(data / "Patients_CT" / "049")
    (data / "Patients_CT" / "049").mkdir()
    labels = read_case_labels(data)
    with pytest.raises(CaseReadError, match="none of its 3 slices has a readable brain image") as info:
        read_case(data, "049", labels)
    assert info.value.case_id == "049"
    with pytest.raises(CaseReadError, match="no patient folder"):
        read_case(data, "999", labels)
    with pytest.raises(CaseReadError, match="not a case folder name"):
        read_case(data, "../049", labels)


@pytest.mark.parametrize("damage", ["no_mask", "garbage_mask"])
def test_unreadable_dicom_case_names_no_path(dicom_root: tuple[Path, np.ndarray], damage: str) -> None:
    root, _ = dicom_root
    nifti = root / "plain" / "mask.nii.gz"
    if damage == "no_mask":
        nifti.unlink()
    else:
        nifti.write_bytes(b"this is not a NIfTI file")
    with pytest.raises(CaseReadError) as info:
        read_case(root, "plain")
    assert info.value.case_id == "plain"
    assert info.value.reason and str(root) not in str(info.value)
    if damage == "no_mask":
        assert str(info.value) == "the case folder has neither mask.nii[.gz] nor seg.dcm"
    assert read_case(root, "flipped").slice_labels.tolist() == [0, 1, 1, 0]  # the other case still reads


@pytest.mark.parametrize("damage", ["no_csv", "no_subtype_columns"])
def test_case_labels_fall_back_to_empty_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    data = _ct_ich_copy(tmp_path)
    assert read_case_labels(data) == read_labels(FIXTURE / "hemorrhage_diagnosis.csv") != {}
    csv_path = data / "hemorrhage_diagnosis.csv"
    if damage == "no_csv":
        csv_path.unlink()
    else:
        lines = csv_path.read_text(encoding="utf-8-sig").splitlines()
        csv_path.write_text("\n".join(",".join(line.split(",")[:2]) for line in lines) + "\n")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert read_case_labels(data) == {}
    assert any("slice labels come from the masks only" in m for m in caplog.messages)
