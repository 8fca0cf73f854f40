"""CT-ICH reader on committed fixture slices: HU recovery, mask threshold, labels, spacing, fault fixes,
and damaged copies of the fixture (missing or corrupt images, an emptied patient folder)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.data.ct_ich import (
    SUBTYPES,
    UnreadablePatientError,
    brain_window_hu,
    estimate_pixel_spacing,
    list_patients,
    read_dataset,
    read_labels,
    read_patient,
    recover_hu,
)

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "ct_ich"


@pytest.fixture(scope="module")
def patients():
    return {p.pid: p for p in read_dataset(FIXTURE)}


def test_recover_hu_formulas() -> None:
    brain = np.array([[0, 51, 128, 255, 1]], dtype=np.uint8)
    bone = np.array([[0, 71, 73, 150, 0]], dtype=np.uint8)
    hu = recover_hu(brain, bone)
    # air: brain saturated at 0 -> bone window: 0/255*3200 - 900
    assert hu[0, 0] == -900
    # unsaturated brain pixel consistent with the bone window -> brain formula, rounded
    assert hu[0, 1] == round(51 / 255 * 120 - 20)
    assert hu[0, 2] == round(128 / 255 * 120 - 20)
    # saturated brain (bone) -> bone formula
    assert hu[0, 3] == round(150 / 255 * 3200 - 900)
    # JPEG noise (v=1) in air is not trusted when the bone window says air
    assert hu[0, 4] == -900
    assert np.array_equal(hu, np.rint(hu))


def test_bone_offset_applies_to_bone_derived_pixels_only() -> None:
    brain = np.array([[255, 100]], dtype=np.uint8)
    bone = np.array([[150, 73]], dtype=np.uint8)
    plain, shifted = recover_hu(brain, bone), recover_hu(brain, bone, 93.0)
    assert shifted[0, 0] - plain[0, 0] == 93
    assert shifted[0, 1] == plain[0, 1]


def test_patient_layout_masks_and_labels(patients) -> None:
    p = patients["049"]
    assert p.slice_numbers == [13, 14, 15]
    assert p.hu.shape == (3, 650, 650) and p.hu.dtype == np.float32
    assert np.array_equal(p.hu, np.rint(p.hu))
    assert not p.masks[0].any() and p.masks[1].any() and p.masks[2].any()
    # threshold > 127: the mask holds only pixels bright in the JPEG, none of its dark artefacts
    assert set(np.unique(p.masks[1])) == {False, True}
    assert p.slice_labels.tolist() == [0, 1, 1]
    assert p.subtypes[1, SUBTYPES.index("Epidural")] == 1 and p.subtypes[0].sum() == 0
    assert p.lesion_volume_ml > 0


def test_brain_hu_plausible(patients) -> None:
    hu = patients["049"].hu[1]
    centre = hu[250:400, 250:400]
    # brain parenchyma is 20-45 HU
    assert 15 < np.median(centre) < 50
    assert hu.min() >= -900 and hu.max() <= 2300


def test_spacing_estimate_plausible(patients) -> None:
    for p in patients.values():
        assert 0.15 <= p.pixel_spacing_mm <= 0.6
    # a synthetic skull 500 px wide -> 150 mm / 500 px
    hu = np.zeros((1, 650, 650), dtype=np.float32)
    hu[0, 300:310, 75:575] = 1000.0
    assert estimate_pixel_spacing(hu) == pytest.approx(150.0 / 500.0)


def test_patient_081_bone_shift_corrected(patients) -> None:
    """After the shift, brain and bone windows agree where both are unsaturated."""
    from PIL import Image

    base = FIXTURE / "Patients_CT" / "081"
    brain = np.asarray(Image.open(base / "brain" / "13.jpg").convert("L"))
    both = (brain > 5) & (brain < 250)

    def disagreement(bone_n: int) -> float:
        bone = np.asarray(Image.open(base / "bone" / f"{bone_n}.jpg").convert("L")).astype(float)
        return float(np.median(np.abs(brain[both] / 255 * 120 - 20 - (bone[both] / 255 * 3200 - 900))))

    assert disagreement(14) < disagreement(13)
    p = patients["081"]
    bone14 = np.asarray(Image.open(base / "bone" / "14.jpg").convert("L"))
    sat = brain == 255
    expected = np.rint(bone14[sat] / 255 * 3200 - 900)
    assert np.array_equal(p.hu[0][sat], expected)


def test_labels_csv_with_bom(tmp_path) -> None:
    csv = tmp_path / "labels.csv"
    csv.write_text(
        "\ufeffPatientNumber,SliceNumber,Intraventricular,Intraparenchymal,Subarachnoid,Epidural,Subdural,"
        "No_Hemorrhage,Fracture_Yes_No\n7,2,0,0,1,0,0,0,0\n",
        encoding="utf-8",
    )
    labels = read_labels(csv)
    assert labels["007"][2].subtypes == (0, 0, 1, 0, 0)
    assert labels["007"][2].no_hemorrhage == 0


def test_missing_folder_raises(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        read_dataset(tmp_path)


def test_weak_csv_long_rsna_form(tmp_path) -> None:
    from training.data.weak_csv import read_weak_labels

    csv = tmp_path / "stage_2_train.csv"
    csv.write_text(
        "ID,Label\nID_abc_epidural,0\nID_abc_subdural,1\nID_abc_any,1\nID_def_any,0\nID_def_subdural,0\n"
    )
    labels = read_weak_labels(csv)
    assert labels["ID_abc"].any == 1
    assert labels["ID_abc"].subtypes == (0, 0, 0, 0, 1)
    assert labels["ID_def"].any == 0 and sum(labels["ID_def"].subtypes) == 0


def test_weak_csv_wide_form_and_any_derived(tmp_path) -> None:
    from training.data.weak_csv import read_weak_labels

    csv = tmp_path / "labels.csv"
    csv.write_text("SOPInstanceUID,Subarachnoid,Subdural\n1.2.3,1,0\n1.2.4,0,0\n")
    labels = read_weak_labels(csv)
    assert labels["1.2.3"].any == 1 and labels["1.2.3"].subtypes[2] == 1
    assert labels["1.2.4"].any == 0


@pytest.mark.parametrize(
    "text",
    ["ID,Label\nnounderscore,1\n", "ID,Label\nID_a_any,2\n", "foo,bar\n1,2\n", "ID,Label\nID_a_unknown,1\n"],
)
def test_weak_csv_rejects_bad_input(tmp_path, text) -> None:
    from training.data.weak_csv import read_weak_labels

    csv = tmp_path / "bad.csv"
    csv.write_text(text)
    with pytest.raises(ValueError):
        read_weak_labels(csv)


# ------------------------------------------------------------------ damaged copies of the fixture
LOGGER = "training.data.ct_ich"


def _damaged_copy(tmp_path: Path) -> Path:
    """A writable copy of the fixture (CC BY 4.0, see its NOTICE.md) to delete or corrupt files in."""
    data = tmp_path / "ct_ich"
    shutil.copytree(FIXTURE, data)
    return data


def _read(data: Path, pid: str):
    return read_patient(data, pid, read_labels(data / "hemorrhage_diagnosis.csv").get(pid))


def _gray(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"))


def test_brain_window_hu_formula_and_range() -> None:
    brain = np.array([[0, 1, 128, 254, 255]], dtype=np.uint8)
    hu = brain_window_hu(brain)
    assert hu.tolist() == [[-20, -20, 40, 100, 100]]
    assert hu.dtype == np.float32


def test_missing_bone_image_gives_brain_window_hu(tmp_path, caplog) -> None:
    data = _damaged_copy(tmp_path)
    (data / "Patients_CT" / "049" / "bone" / "14.jpg").unlink()
    full = _read(FIXTURE, "049")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        p = _read(data, "049")
    assert p.slice_numbers == [13, 14, 15]
    # the damaged slice: brain window alone, clipped to [-20, 100]; the intact one had bone above 250 HU
    assert p.hu[1].min() >= -20 and p.hu[1].max() <= 100
    assert full.hu[1].max() > 250
    assert np.array_equal(p.hu[1], np.rint(_gray(data / "Patients_CT/049/brain/14.jpg") / 255 * 120 - 20))
    # the other slices, the masks and the labels are untouched
    assert np.array_equal(p.hu[[0, 2]], full.hu[[0, 2]])
    assert np.array_equal(p.masks, full.masks)
    assert p.slice_labels.tolist() == full.slice_labels.tolist() == [0, 1, 1]
    assert len(p.warnings) == 1
    assert "patient 049 slice 14" in p.warnings[0] and "bone-window image missing" in p.warnings[0]
    assert p.warnings[0] in caplog.messages
    assert full.warnings == ()


@pytest.mark.parametrize("corruption", ["garbage", "truncated"])
def test_corrupt_bone_jpeg_of_shifted_patient(tmp_path, caplog, corruption) -> None:
    """081's brain 13 uses bone 14 (the shift): corrupting bone 14 makes slice 13 brain-window only."""
    data = _damaged_copy(tmp_path)
    bone14 = data / "Patients_CT" / "081" / "bone" / "14.jpg"
    raw = bone14.read_bytes()
    bone14.write_bytes(b"not a jpeg at all" if corruption == "garbage" else raw[: len(raw) // 3])
    full = _read(FIXTURE, "081")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        p = _read(data, "081")
    assert p.slice_numbers == [13, 14]
    assert p.hu[0].min() >= -20 and p.hu[0].max() <= 100
    assert np.array_equal(p.hu[1], full.hu[1])  # brain 14 still reads bone 15
    assert len(p.warnings) == 1 and "patient 081 slice 13: bone-window image unreadable" in p.warnings[0]
    assert p.warnings[0] in caplog.messages


def test_shifted_patient_middle_slice_never_takes_its_own_bone_image(tmp_path) -> None:
    """081's own bone image 13 belongs to brain 12: with bone 14 gone, brain 13 must not use it."""
    data = _damaged_copy(tmp_path)
    (data / "Patients_CT" / "081" / "bone" / "14.jpg").unlink()
    p = _read(data, "081")
    assert p.hu[0].max() <= 100
    assert "slice 13: bone-window image missing" in p.warnings[0]


def test_missing_brain_image_leaves_the_slice_out(tmp_path, caplog) -> None:
    data = _damaged_copy(tmp_path)
    (data / "Patients_CT" / "049" / "brain" / "14.jpg").unlink()
    full = _read(FIXTURE, "049")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        p = _read(data, "049")
    assert p.slice_numbers == [13, 15]
    assert np.array_equal(p.hu, full.hu[[0, 2]])
    assert np.array_equal(p.masks, full.masks[[0, 2]])
    assert np.array_equal(p.subtypes, full.subtypes[[0, 2]])
    assert p.warnings == ("patient 049 slice 14: brain-window image missing; slice left out",)
    assert p.warnings[0] in caplog.messages


@pytest.mark.parametrize("damage", ["corrupt", "wrong_shape"])
def test_unusable_brain_image_leaves_the_slice_out(tmp_path, damage) -> None:
    data = _damaged_copy(tmp_path)
    brain15 = data / "Patients_CT" / "049" / "brain" / "15.jpg"
    if damage == "corrupt":
        brain15.write_bytes(b"\xff\xd8\xff garbage")
    else:
        Image.fromarray(np.zeros((64, 64), dtype=np.uint8)).save(brain15)
    p = _read(data, "049")
    assert p.slice_numbers == [13, 14]
    assert p.hu.shape == (2, 650, 650)
    assert len(p.warnings) == 1 and "slice 15: brain-window image" in p.warnings[0]
    assert p.warnings[0].endswith("slice left out")


def test_missing_mask_on_labelled_slice_keeps_the_label(tmp_path, caplog) -> None:
    data = _damaged_copy(tmp_path)
    (data / "Patients_CT" / "049" / "brain" / "14_HGE_Seg.jpg").unlink()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        p = _read(data, "049")
    assert not p.masks[1].any() and p.masks[2].any()
    assert p.slice_labels.tolist() == [0, 1, 1]  # the CSV's Epidural label survives the lost mask
    assert (
        len(p.warnings) == 1 and "slice 14: labelled hemorrhage in the CSV but has no mask" in p.warnings[0]
    )
    assert p.warnings[0] in caplog.messages
    # without the CSV nothing says the slice bleeds: no label, and nothing to warn about
    unlabelled = read_patient(data, "049")
    assert unlabelled.slice_labels.tolist() == [0, 0, 1] and unlabelled.warnings == ()


def test_corrupt_mask_is_empty_and_warned(tmp_path) -> None:
    data = _damaged_copy(tmp_path)
    (data / "Patients_CT" / "049" / "brain" / "15_HGE_Seg.jpg").write_bytes(b"broken")
    p = _read(data, "049")
    assert p.masks[1].any() and not p.masks[2].any()
    assert p.slice_labels.tolist() == [0, 1, 1]
    assert p.warnings == (
        "patient 049 slice 15: mask unreadable (UnidentifiedImageError); mask empty, CSV label kept",
    )


def _empty_patient(data: Path, pid: str) -> None:
    folder = data / "Patients_CT" / pid
    shutil.rmtree(folder)
    folder.mkdir()


def test_emptied_patient_folder_raises(tmp_path) -> None:
    data = _damaged_copy(tmp_path)
    _empty_patient(data, "049")
    assert "049" in list_patients(data)  # still listed, so that it is reported, not silently dropped
    with pytest.raises(UnreadablePatientError, match="patient 049 has no slice images"):
        read_patient(data, "049")
    # with its CSV rows the slices are known, and each is missing its brain image
    with pytest.raises(UnreadablePatientError, match="none of its 3 slices has a readable brain image"):
        _read(data, "049")


def test_read_dataset_skips_an_unreadable_patient(tmp_path, caplog) -> None:
    data = _damaged_copy(tmp_path)
    _empty_patient(data, "049")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        patients = read_dataset(data)
    assert [p.pid for p in patients] == ["081"]
    assert any(m.startswith("patient skipped: patient 049") for m in caplog.messages)
    _empty_patient(data, "081")
    with pytest.raises(UnreadablePatientError, match="none of the 2 patients"):
        read_dataset(data)
