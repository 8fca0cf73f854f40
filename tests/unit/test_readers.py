"""CT-ICH reader on committed fixture slices: HU recovery, mask threshold, labels, spacing, fault fixes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.data.ct_ich import (
    SUBTYPES,
    estimate_pixel_spacing,
    read_dataset,
    read_labels,
    recover_hu,
)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "ct_ich"


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
