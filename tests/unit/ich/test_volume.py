"""Pixel decoding and the HU rescale, including third-party compressed files from pydicom's test data."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from ich.errors import NoUsableSeriesError
from ich.series import SliceHeader, select_series
from ich.volume import CTVolume, decode_hu, load_volume
from ich_devtools.dicom_writer import dataset_bytes, series_datasets


def _testdata(name: str) -> Path:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom test file {name} not available")
    return Path(str(path))


def _selection(datasets: list[pydicom.Dataset]):
    headers = [SliceHeader(f"s/{i}", ds, dataset_bytes(ds)) for i, ds in enumerate(datasets)]
    result = select_series(headers)
    assert result.selection is not None
    return result.selection


def test_slope_and_intercept_give_hu() -> None:
    stored = np.array([[[0, 10], [100, 2000]]], dtype=np.float32)
    (ds,) = series_datasets(stored, signed=True)  # stored values as given, intercept 0
    ds.RescaleSlope = 2
    ds.RescaleIntercept = -100
    ds = pydicom.dcmread(io.BytesIO(dataset_bytes(ds)))
    hu = decode_hu(ds)
    assert hu.dtype == np.float32
    np.testing.assert_array_equal(hu, 2 * stored[0] - 100)


def test_fractional_slope_is_applied_before_anything_else() -> None:
    stored = np.array([[[3, 7]]], dtype=np.float32)
    (ds,) = series_datasets(stored, signed=True)
    ds.RescaleSlope = 0.5
    ds.RescaleIntercept = -1.25
    np.testing.assert_allclose(decode_hu(pydicom.dcmread(io.BytesIO(dataset_bytes(ds)))), [[0.25, 2.25]])


@pytest.mark.parametrize(
    "compressed",
    ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"],
)
def test_third_party_lossless_files_decode_like_the_uncompressed_original(compressed: str) -> None:
    original = decode_hu(pydicom.dcmread(_testdata("MR_small.dcm")))
    decoded = decode_hu(pydicom.dcmread(_testdata(compressed)))
    np.testing.assert_array_equal(decoded, original)


def test_a_real_ct_slice_decodes_to_hu() -> None:
    ds = pydicom.dcmread(_testdata("CT_small.dcm"))
    hu = decode_hu(ds)
    assert float(ds.RescaleIntercept) == -1024
    np.testing.assert_array_equal(hu, ds.pixel_array.astype(np.float32) - 1024)


def test_the_volume_keeps_order_spacing_uids_and_defaults() -> None:
    hu = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5) - 30
    datasets = series_datasets(hu, pixel_spacing_mm=(0.7, 0.8), slice_thickness_mm=2.0)
    selection = _selection(datasets)
    decoded = load_volume(selection)
    volume = decoded.volume
    assert decoded.failed == []
    assert [id(ds) for ds in decoded.headers] == [id(h.dataset) for h in selection.slices]
    np.testing.assert_array_equal(volume.hu, hu)
    assert volume.pixel_spacing_mm == pytest.approx((0.7, 0.8))
    assert volume.slice_thickness_mm == pytest.approx(2.0)
    assert volume.sop_instance_uids == [str(ds.SOPInstanceUID) for ds in datasets]
    assert volume.slice_positions_mm == pytest.approx((0.0, 2.0, 4.0))
    assert volume.gantry_tilt_deg == 0.0 and volume.warnings == ()
    bare = CTVolume(
        hu=hu,
        pixel_spacing_mm=(1.0, 1.0),
        slice_thickness_mm=5.0,
        series_instance_uid="1.2",
        sop_instance_uids=["1", "2", "3"],
    )
    assert bare.slice_positions_mm == () and bare.gantry_tilt_deg == 0.0 and bare.warnings == ()


def test_a_slice_that_does_not_decode_is_left_out_and_the_spacing_rechecked() -> None:
    hu = np.zeros((5, 4, 4), dtype=np.float32)
    datasets = series_datasets(hu, slice_thickness_mm=5.0)
    selection = _selection(datasets)
    assert selection.warnings == []
    broken = selection.slices[2]
    selection.slices[2] = SliceHeader(broken.file, broken.dataset, dataset_bytes(datasets[2])[:-20])
    decoded = load_volume(selection)
    volume, failed = decoded.volume, decoded.failed
    assert volume.hu.shape[0] == 4
    kept = [id(h.dataset) for i, h in enumerate(selection.slices) if i != 2]
    assert [id(ds) for ds in decoded.headers] == kept  # the headers of the slices in the volume, no others
    assert [str(ds.SOPInstanceUID) for ds in decoded.headers] == volume.sop_instance_uids
    assert volume.slice_positions_mm == pytest.approx((0.0, 5.0, 15.0, 20.0))
    assert [f.file for f in failed] == [broken.file]
    assert failed[0].reason.startswith("pixel data could not be decoded (")
    assert volume.slice_thickness_mm == pytest.approx(5.0)
    assert any(w.startswith("irregular slice spacing") for w in volume.warnings)


def test_no_decodable_slice_is_no_usable_series() -> None:
    datasets = series_datasets(np.zeros((2, 4, 4), dtype=np.float32))
    selection = _selection(datasets)
    for i, header in enumerate(selection.slices):
        selection.slices[i] = SliceHeader(header.file, header.dataset, dataset_bytes(datasets[i])[:-8])
    with pytest.raises(NoUsableSeriesError) as caught:
        load_volume(selection)
    assert caught.value.http_status == 422
    assert sorted(r["file"] for r in caught.value.reasons) == ["s/0", "s/1"]


def test_a_decoded_shape_other_than_rows_by_columns_is_refused() -> None:
    (ds,) = series_datasets(np.zeros((1, 4, 4), dtype=np.float32))
    ds = pydicom.dcmread(io.BytesIO(dataset_bytes(ds)))
    ds.NumberOfFrames = 2
    ds.Rows = 2  # two frames of 2 x 4 from the same 32 bytes
    with pytest.raises(ValueError, match="not Rows x Columns"):
        decode_hu(ds)
