"""Series choice and slice order from headers alone (no pixel decoding)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydicom.dataset import Dataset

from ich.series import PREFERRED_THICKNESS_MM, SliceHeader, select_series
from ich.slice_geometry import SliceSpacing, angle_from_z_deg, position_along, slice_normal, slice_spacing
from ich_devtools.dicom_writer import series_datasets


def headers(datasets: list[Dataset], prefix: str = "s") -> list[SliceHeader]:
    return [SliceHeader(f"{prefix}/{i}", ds, b"") for i, ds in enumerate(datasets)]


def hu(n: int) -> np.ndarray:
    return np.zeros((n, 4, 4), dtype=np.float32)


# ------------------------------------------------------------------------------------------- geometry


def test_normal_of_axial_coronal_and_tilted_planes() -> None:
    np.testing.assert_allclose(slice_normal([1, 0, 0, 0, 1, 0]), [0, 0, 1])
    coronal = slice_normal([1, 0, 0, 0, 0, -1])
    np.testing.assert_allclose(coronal, [0, 1, 0])
    assert angle_from_z_deg(coronal) == pytest.approx(90.0)
    t = math.radians(25.0)
    tilted = slice_normal([1, 0, 0, 0, math.cos(t), -math.sin(t)])
    assert angle_from_z_deg(tilted) == pytest.approx(25.0)
    assert angle_from_z_deg(-tilted) == pytest.approx(25.0)  # feet-first: the normal points down


@pytest.mark.parametrize("orientation", [[1, 0, 0, 1, 0, 0], [1, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0]])
def test_a_degenerate_orientation_is_a_value_error(orientation: list[float]) -> None:
    with pytest.raises(ValueError):
        slice_normal(orientation)


def test_spacing_regular_irregular_and_single() -> None:
    assert slice_spacing([0.0, 5.0, 10.0, 15.0]) == SliceSpacing(5.0)
    regular = slice_spacing([0.0, 5.0, 10.05])  # within 0.1 mm
    assert regular.median_mm == pytest.approx(5.025) and regular.warnings == ()
    gap = slice_spacing([0.0, 5.0, 10.0, 20.0, 25.0])
    assert gap.median_mm == 5.0
    (warning,) = gap.warnings
    assert "5.00 to 10.00 mm" in warning and "1 gap(s)" in warning
    assert slice_spacing([3.0]) == SliceSpacing(None)


def test_the_spacing_falls_back_only_where_the_positions_give_none() -> None:
    assert slice_spacing([0.0, 2.5, 5.0]).or_else(4.0) == 2.5
    assert slice_spacing([7.0]).or_else(4.0) == 4.0
    assert slice_spacing([]).or_else(3.0) == 3.0


def test_a_position_along_a_tilted_normal() -> None:
    t = math.radians(30.0)
    normal = slice_normal([1, 0, 0, 0, math.cos(t), -math.sin(t)])
    assert position_along([0.0, 0.0, 10.0], normal) == pytest.approx(10.0 * math.cos(t))
    assert position_along([5.0, 0.0, 0.0], normal) == pytest.approx(0.0)


# ------------------------------------------------------------------------------------------- sorting


def test_slices_sort_along_the_normal_not_along_z() -> None:
    # Tilted 30 degrees: slice 1 lies 5 mm further along the normal than slice 0 but is shifted 20 mm
    # within its plane (along the column direction, which points down in z), so its z is lower.
    datasets = series_datasets(hu(2), gantry_tilt_deg=30.0)
    t = math.radians(30.0)
    normal = np.array([0.0, math.sin(t), math.cos(t)])
    column = np.array([0.0, math.cos(t), -math.sin(t)])
    datasets[0].ImagePositionPatient = [0.0, 0.0, 0.0]
    datasets[1].ImagePositionPatient = [float(v) for v in 5.0 * normal + 20.0 * column]
    assert datasets[1].ImagePositionPatient[2] < datasets[0].ImagePositionPatient[2]
    result = select_series(headers(datasets[::-1]))
    assert result.selection is not None
    assert [h.dataset.InstanceNumber for h in result.selection.slices] == [1, 2]
    assert result.selection.positions_mm == pytest.approx([0.0, 5.0])
    assert result.selection.slice_spacing_mm == pytest.approx(5.0)
    assert result.selection.gantry_tilt_deg == pytest.approx(30.0)


def test_a_tilted_orientation_without_gantry_tilt_tag_is_still_warned() -> None:
    datasets = series_datasets(hu(3), gantry_tilt_deg=12.0)
    for ds in datasets:
        del ds.GantryDetectorTilt
    result = select_series(headers(datasets))
    assert result.selection is not None
    assert result.selection.gantry_tilt_deg == pytest.approx(12.0, abs=1e-3)
    assert any("tilted 12.0 degrees from the axial plane" in w for w in result.selection.warnings)


def test_an_untilted_series_has_no_warning() -> None:
    result = select_series(headers(series_datasets(hu(3))))
    assert result.selection is not None
    assert result.selection.warnings == [] and result.selection.gantry_tilt_deg == 0.0


def test_missing_orientation_is_assumed_axial_with_a_warning() -> None:
    datasets = series_datasets(hu(3))
    for ds in datasets:
        del ds.ImageOrientationPatient
    result = select_series(headers(datasets[::-1]))
    assert result.selection is not None
    assert [h.dataset.InstanceNumber for h in result.selection.slices] == [1, 2, 3]
    assert "ImageOrientationPatient missing: axial orientation assumed" in result.selection.warnings


def test_one_slice_without_thickness_assumes_the_training_thickness() -> None:
    (ds,) = series_datasets(hu(1))
    del ds.SliceThickness
    result = select_series(headers([ds]))
    assert result.selection is not None
    assert result.selection.slice_spacing_mm == PREFERRED_THICKNESS_MM
    assert any("slice thickness unknown" in w for w in result.selection.warnings)


def test_thickness_falls_back_to_the_spacing_between_positions() -> None:
    datasets = series_datasets(hu(3), slice_thickness_mm=3.0)
    for ds in datasets:
        del ds.SliceThickness
    result = select_series(headers(datasets))
    assert result.selection is not None and result.selection.slice_spacing_mm == pytest.approx(3.0)


def test_spacing_between_centres_wins_over_slice_thickness() -> None:
    # 5 mm thick slices every 4 mm (overlapping reconstruction): the voxel depth is the 4 mm step
    result = select_series(headers(series_datasets(hu(4), slice_thickness_mm=5.0, slice_spacing_mm=4.0)))
    assert result.selection is not None and result.selection.slice_spacing_mm == pytest.approx(4.0)


# ------------------------------------------------------------------------------------------- choosing


def test_equal_counts_prefer_the_thickness_nearest_five_mm_then_the_lower_series_number() -> None:
    thin = series_datasets(hu(4), slice_thickness_mm=1.0, series_number=1)
    five = series_datasets(hu(4), slice_thickness_mm=5.0, series_number=3)
    five_again = series_datasets(hu(4), slice_thickness_mm=5.0, series_number=2)
    result = select_series(headers(thin, "a") + headers(five, "b") + headers(five_again, "c"))
    assert result.selection is not None
    assert result.selection.series_instance_uid == five_again[0].SeriesInstanceUID
    reasons = {p.series_instance_uid: p.reason for p in result.passed_over}
    assert reasons[thin[0].SeriesInstanceUID].startswith("as many slices as the chosen series")
    assert reasons[five[0].SeriesInstanceUID].startswith("as many slices as the chosen series")


def test_more_slices_win_over_a_nicer_thickness() -> None:
    thin = series_datasets(hu(6), slice_thickness_mm=1.0)
    five = series_datasets(hu(4), slice_thickness_mm=5.0)
    result = select_series(headers(thin, "a") + headers(five, "b"))
    assert result.selection is not None
    assert result.selection.series_instance_uid == thin[0].SeriesInstanceUID


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda ds: setattr(ds, "Modality", "MR"), "modality MR, not CT"),
        (lambda ds: setattr(ds, "ImageType", ["ORIGINAL", "PRIMARY", "SCOUT"]), "localizer (scout)"),
        (lambda ds: setattr(ds, "NumberOfFrames", 2), "multi-frame (enhanced) CT"),
        (lambda ds: setattr(ds, "SamplesPerPixel", 3), "colour images"),
        (lambda ds: setattr(ds, "SliceThickness", 0.3), "slice thickness 0.3 mm outside 0.5-10 mm"),
        (lambda ds: setattr(ds, "SliceThickness", 12.0), "slice thickness 12 mm outside 0.5-10 mm"),
        (lambda ds: delattr(ds, "PixelSpacing"), "no PixelSpacing"),
        (lambda ds: setattr(ds, "ImageOrientationPatient", [0, 1, 0, 0, 0, -1]), "not axial"),
    ],
)
def test_each_rule_passes_a_series_over_with_its_reason(change, reason: str) -> None:
    datasets = series_datasets(hu(3))
    for ds in datasets:
        change(ds)
    result = select_series(headers(datasets))
    assert result.selection is None
    (passed,) = result.passed_over
    assert passed.reason.startswith(reason) and passed.slices == 3


def test_imager_pixel_spacing_stands_in_for_pixel_spacing() -> None:
    datasets = series_datasets(hu(2), pixel_spacing_mm=(0.4, 0.6))
    for ds in datasets:
        ds.ImagerPixelSpacing = ds.PixelSpacing
        del ds.PixelSpacing
    result = select_series(headers(datasets))
    assert result.selection is not None and result.selection.pixel_spacing_mm == pytest.approx((0.4, 0.6))


def test_mixed_orientations_in_one_series_are_passed_over() -> None:
    datasets = series_datasets(hu(3))
    datasets[1].ImageOrientationPatient = [1, 0, 0, 0, math.cos(0.3), -math.sin(0.3)]
    result = select_series(headers(datasets))
    assert result.selection is None
    assert result.passed_over[0].reason == "slices of more than one orientation in one series"


def test_files_that_are_not_images_or_lack_a_series_are_skipped_before_grouping() -> None:
    report = Dataset()
    report.Modality = "SR"
    report.SeriesInstanceUID = "1.2.3"
    orphan = series_datasets(hu(1))[0]
    del orphan.SeriesInstanceUID
    good = series_datasets(hu(2))
    result = select_series(
        [SliceHeader("sr.dcm", report, b""), SliceHeader("orphan.dcm", orphan, b""), *headers(good)]
    )
    assert result.selection is not None and len(result.selection.slices) == 2
    assert [(s.file, s.reason) for s in result.skipped] == [
        ("sr.dcm", "not an image (no Rows/Columns; SR)"),
        ("orphan.dcm", "no SeriesInstanceUID"),
    ]


def test_no_headers_no_selection() -> None:
    result = select_series([])
    assert result.selection is None and result.passed_over == [] and result.skipped == []


def test_a_localizer_filed_inside_the_axial_series_is_left_out_of_it() -> None:
    axial = series_datasets(hu(3), slice_thickness_mm=5.0)
    (scout,) = series_datasets(
        hu(1), image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), series_instance_uid=axial[0].SeriesInstanceUID
    )
    scout.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]  # sagittal, as scouts are
    scout.SliceThickness = 1.0
    result = select_series(headers([scout, *axial]))
    assert result.selection is not None and len(result.selection.slices) == 3
    assert [(e.file, e.reason) for e in result.selection.excluded] == [
        ("s/0", "localizer (scout) image inside the series")
    ]
    assert result.selection.slice_spacing_mm == pytest.approx(5.0)


def test_a_slice_with_another_pixel_spacing_is_left_out() -> None:
    datasets = series_datasets(hu(4), pixel_spacing_mm=(0.5, 0.5))
    datasets[3].PixelSpacing = [0.7, 0.7]
    result = select_series(headers(datasets))
    assert result.selection is not None and len(result.selection.slices) == 3
    assert result.selection.pixel_spacing_mm == (0.5, 0.5)
    assert [(e.file, e.reason) for e in result.selection.excluded] == [
        ("s/3", "pixel spacing 0.7 x 0.7 mm differs from the series' 0.5 x 0.5 mm")
    ]
