"""DICOM SEG of the lesion mask: resize back to the source matrix, build, write, read back, compare.

The source series is written by ``ich_devtools.dicom_writer`` and read back header-only
(``stop_before_pixels``), as the gateway keeps it, so the tests also show that a SEG needs no source pixel
data.
"""

from __future__ import annotations

import io
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import SegmentationStorage
from scipy import ndimage

from ich import spec
from ich.seg import build_segmentation, resize_mask_to_source

N, ROWS, COLUMNS = 4, 24, 32
MODEL_VERSION = "2026.11.29-test"


# ---------------------------------------------------------------------------------------- source series


def _read_headers(tmp_path: Path, **options: object) -> list[Dataset]:
    writer = pytest.importorskip("ich_devtools.dicom_writer")
    hu = np.full((N, ROWS, COLUMNS), 30.0, dtype=np.float32)
    paths = writer.write_series(hu, tmp_path, pixel_spacing_mm=(0.5, 0.6), slice_thickness_mm=5.0, **options)
    # write_series returns the files in spatial order, the order of the volume the mask comes from.
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]


@pytest.fixture
def headers(tmp_path: Path) -> list[Dataset]:
    """A small CT series from ``ich_devtools.dicom_writer``, read back without pixel data, in volume order."""
    return _read_headers(tmp_path)


def _mask() -> np.ndarray:
    mask = np.zeros((N, ROWS, COLUMNS), dtype=bool)
    mask[1, 5:12, 8:20] = True
    mask[2, 6:10, 10:14] = True
    mask[2, 20, 30] = True
    return mask


def _roundtrip(seg: Dataset) -> Dataset:
    buffer = io.BytesIO()
    seg.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


def _frame_sources(seg: Dataset) -> list[str]:
    return [
        str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        for item in seg.PerFrameFunctionalGroupsSequence
    ]


# ---------------------------------------------------------------------------------------- resize


def test_resize_identity_size_is_a_plain_strict_threshold() -> None:
    rng = np.random.default_rng(0)
    fused = rng.random((3, 1, 8, 8)).astype(np.float32)
    fused[0, 0, 0, 0] = spec.MASK_THRESHOLD  # exactly at the threshold: not lesion (aggregate's rule)
    out = resize_mask_to_source(fused, (8, 8))
    assert out.dtype == np.bool_ and out.shape == (3, 8, 8)
    np.testing.assert_array_equal(out, fused[:, 0] > spec.MASK_THRESHOLD)
    assert not out[0, 0, 0]


def test_resize_upsamples_a_block_onto_the_matching_source_pixels() -> None:
    # A model pixel of a 2x upsampling covers 2x2 source pixels; bilinear + threshold keeps a block's
    # edges where the block's pixel areas end (the centre of source pixel 2 lies 3/4 inside model pixel 1).
    fused = np.zeros((1, 1, 4, 4), dtype=np.float32)
    fused[0, 0, 1:3, 1:3] = 1.0
    out = resize_mask_to_source(fused, (8, 8))
    expected = np.zeros((8, 8), dtype=bool)
    expected[2:6, 2:6] = True
    np.testing.assert_array_equal(out[0], expected)


def test_resize_to_a_non_square_matrix_keeps_rows_and_columns_apart() -> None:
    fused = np.zeros((1, 1, 4, 4), dtype=np.float32)
    fused[0, 0, 0, 3] = 1.0  # top-right model pixel
    out = resize_mask_to_source(fused, (8, 12))
    assert out.shape == (1, 8, 12)
    rows, cols = np.nonzero(out[0])
    assert rows.max() < 2 + 1 and cols.min() >= 12 - 3 - 1  # stays in the top-right corner
    assert out[0, 0, 11]


def test_resize_gives_a_smooth_disc_of_about_the_model_area() -> None:
    s, scale = 32, 4
    yy, xx = np.mgrid[:s, :s]
    fused = ((yy - 15.5) ** 2 + (xx - 15.5) ** 2 <= 8.0**2).astype(np.float32)[None, None]
    out = resize_mask_to_source(fused, (s * scale, s * scale))[0]
    model_area = fused.sum() * scale * scale
    assert abs(out.sum() - model_area) / model_area < 0.05
    nearest = np.kron(fused[0, 0], np.ones((scale, scale))) > 0.5
    assert not np.array_equal(out, nearest)  # not blocky: the contour is re-drawn at the source resolution


def test_resize_never_invents_lesion_on_a_slice_below_threshold() -> None:
    rng = np.random.default_rng(1)
    fused = (rng.random((2, 1, 16, 16)) * 0.5).astype(np.float32)  # all <= 0.5
    assert not resize_mask_to_source(fused, (40, 50)).any()


def test_resize_equals_resizing_every_slice_when_slices_below_threshold_are_skipped() -> None:
    # Slices just below the threshold (0.499), a little above it in four pixels, with a blob: the mask is the
    # one zooming every slice gives, so skipping the slices with nothing above the threshold changes nothing.
    rng = np.random.default_rng(2)
    fused = (rng.random((4, 1, 20, 20)) * 0.499).astype(np.float32)
    fused[1, 0, 7:9, 11:13] = 0.6
    fused[2, 0, 3:9, 4:12] = 0.9
    fused[3] = rng.random((1, 20, 20)).astype(np.float32)
    out = resize_mask_to_source(fused, (64, 72))
    every = np.stack(
        [ndimage.zoom(f[0], (64 / 20, 72 / 20), order=1, mode="nearest", grid_mode=True) for f in fused]
    )
    np.testing.assert_array_equal(out, every > spec.MASK_THRESHOLD)
    assert not out[0].any() and out[1].any() and out[2].any()


def test_resize_keep_slices_clears_the_others() -> None:
    fused = np.ones((3, 1, 4, 4), dtype=np.float32)
    out = resize_mask_to_source(fused, (6, 6), keep_slices=np.array([True, False, True]))
    assert out[0].all() and not out[1].any() and out[2].all()


@pytest.mark.parametrize(
    ("fused", "shape", "kwargs", "message"),
    [
        (np.zeros((2, 2, 4, 4)), (8, 8), {}, r"\[N, 1, S, S\]"),
        (np.zeros((4, 4)), (8, 8), {}, r"\[N, 1, S, S\]"),
        (np.zeros((1, 1, 4, 4)), (0, 8), {}, "positive"),
        (np.full((1, 1, 4, 4), np.nan), (8, 8), {}, "non-finite"),
        (np.zeros((1, 1, 4, 4)), (8, 8), {"threshold": 1.5}, "threshold"),
        (np.zeros((2, 1, 4, 4)), (8, 8), {"keep_slices": np.array([True])}, "keep_slices"),
    ],
)
def test_resize_bad_input(fused: np.ndarray, shape: tuple[int, int], kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resize_mask_to_source(fused, shape, **kwargs)


# ---------------------------------------------------------------------------------------- SEG


def test_seg_round_trips_segment_frames_references_and_pixels(headers: list[Dataset]) -> None:
    mask = _mask()
    seg = build_segmentation(headers, mask, model_version=MODEL_VERSION)
    assert seg is not None
    back = _roundtrip(seg)

    assert back.SOPClassUID == SegmentationStorage
    assert back.Modality == "SEG" and back.SegmentationType == "BINARY"
    assert back.StudyInstanceUID == headers[0].StudyInstanceUID
    assert back.FrameOfReferenceUID == headers[0].FrameOfReferenceUID
    assert back.SeriesInstanceUID != headers[0].SeriesInstanceUID
    assert back.PatientID == headers[0].PatientID

    (segment,) = back.SegmentSequence
    assert segment.SegmentNumber == 1 and segment.SegmentLabel == "Hemorrhage"
    assert segment.SegmentAlgorithmType == "AUTOMATIC"
    category = segment.SegmentedPropertyCategoryCodeSequence[0]
    assert (category.CodeValue, category.CodingSchemeDesignator) == ("49755003", "SCT")
    kind = segment.SegmentedPropertyTypeCodeSequence[0]
    assert (kind.CodeValue, kind.CodingSchemeDesignator) == ("50960005", "SCT")
    assert kind.CodeMeaning == "Hemorrhage"
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == spec.ENSEMBLE_MODEL and algorithm.AlgorithmVersion == MODEL_VERSION
    assert MODEL_VERSION in list(back.SoftwareVersions)
    assert back.Manufacturer and back.ManufacturerModelName

    # Only the two slices with lesion pixels are stored, each pointing at its own source image (highdicom
    # orders frames along the slice normal, so compare through the references, not the frame order).
    assert int(back.NumberOfFrames) == 2
    sources = _frame_sources(back)
    assert sorted(sources) == sorted([str(headers[1].SOPInstanceUID), str(headers[2].SOPInstanceUID)])
    referenced = {
        str(item.ReferencedSOPInstanceUID)
        for series in back.ReferencedSeriesSequence
        for item in series.ReferencedInstanceSequence
    }
    assert referenced == {str(ds.SOPInstanceUID) for ds in headers}

    index = {str(ds.SOPInstanceUID): i for i, ds in enumerate(headers)}
    frames = back.pixel_array.astype(bool)
    for frame, uid in zip(frames, sources, strict=True):
        np.testing.assert_array_equal(frame, mask[index[uid]])
    # highdicom's reader puts every source slice back, the empty ones included.
    pixels = hd.seg.Segmentation.from_dataset(back).get_pixels_by_source_instance(
        [str(ds.SOPInstanceUID) for ds in headers], assert_missing_frames_are_empty=True
    )
    np.testing.assert_array_equal(pixels[..., 0].astype(bool), mask)


def test_empty_mask_gives_none_or_all_frames_on_request(headers: list[Dataset]) -> None:
    empty = np.zeros((N, ROWS, COLUMNS), dtype=bool)
    assert build_segmentation(headers, empty, model_version=MODEL_VERSION) is None
    seg = build_segmentation(headers, empty, model_version=MODEL_VERSION, allow_empty=True)
    assert seg is not None
    back = _roundtrip(seg)
    assert int(back.NumberOfFrames) == N
    assert not back.pixel_array.any()
    assert sorted(_frame_sources(back)) == sorted(str(ds.SOPInstanceUID) for ds in headers)


def test_anonymised_headers_get_empty_type2_fills_on_copies_only(headers: list[Dataset]) -> None:
    for ds in headers:
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "StudyID", "AccessionNumber"):
            if keyword in ds:
                delattr(ds, keyword)
        ds.SliceThickness = None
    seg = build_segmentation(headers, _mask(), model_version=MODEL_VERSION)
    assert seg is not None
    back = _roundtrip(seg)
    assert "PatientID" in back and not back.PatientID
    assert "PatientName" in back and not back.PatientName
    measures = back.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert float(measures.SliceThickness) == pytest.approx(5.0)
    assert [float(v) for v in measures.PixelSpacing] == pytest.approx([0.5, 0.6])
    # The caller's datasets are untouched.
    assert all("PatientID" not in ds and ds.SliceThickness is None for ds in headers)


def test_tilted_series_derives_thickness_along_the_normal(tmp_path: Path) -> None:
    headers = _read_headers(tmp_path, gantry_tilt_deg=20.0, slice_spacing_mm=4.0)
    for ds in headers:
        del ds.SliceThickness
    seg = build_segmentation(headers, _mask(), model_version=MODEL_VERSION)
    assert seg is not None
    measures = _roundtrip(seg).SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert float(measures.SliceThickness) == pytest.approx(4.0)  # not the z step, 4 * cos(20 deg)


def test_integer_zero_one_mask_is_accepted(headers: list[Dataset]) -> None:
    seg = build_segmentation(headers, _mask().astype(np.uint8), model_version=MODEL_VERSION)
    assert seg is not None and int(seg.NumberOfFrames) == 2


def test_bad_inputs_are_clear_value_errors(headers: list[Dataset]) -> None:
    mask = _mask()
    with pytest.raises(ValueError, match="3 source images for a mask of 4"):
        build_segmentation(headers[:3], mask, model_version=MODEL_VERSION)
    with pytest.raises(ValueError, match=f"{ROWS}x{COLUMNS} but the mask is"):
        build_segmentation(headers, mask[:, :, :-1], model_version=MODEL_VERSION)
    with pytest.raises(ValueError, match="bool"):
        build_segmentation(headers, mask.astype(np.float32) * 0.7, model_version=MODEL_VERSION)
    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        build_segmentation(headers, mask[0], model_version=MODEL_VERSION)
    with pytest.raises(ValueError, match="model_version"):
        build_segmentation(headers, mask, model_version="")
    with pytest.raises(ValueError, match="repeat"):
        build_segmentation([headers[0]] * N, mask, model_version=MODEL_VERSION)
    del headers[2].FrameOfReferenceUID
    with pytest.raises(ValueError, match="FrameOfReferenceUID"):
        build_segmentation(headers, mask, model_version=MODEL_VERSION)
