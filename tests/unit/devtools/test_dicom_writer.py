"""The CT series writer: valid, de-identified CT Image Storage files with the right geometry and values."""

from __future__ import annotations

import io
import math
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless

from ich_devtools.dicom_writer import (
    ANONYMOUS,
    dataset_bytes,
    series_datasets,
    series_zip,
    write_series,
    zip_members,
)


def ramp(n: int = 3, rows: int = 6, columns: int = 5) -> np.ndarray:
    return (np.arange(n * rows * columns, dtype=np.float32).reshape(n, rows, columns) * 7.0) - 1000.0


def test_written_files_are_ct_image_storage_part10_files(tmp_path: Path) -> None:
    paths = write_series(ramp(), tmp_path / "out", pixel_spacing_mm=(0.5, 0.6), slice_thickness_mm=2.5)
    assert [p.name for p in paths] == ["CT0001.dcm", "CT0002.dcm", "CT0003.dcm"]
    for i, path in enumerate(paths):
        raw = path.read_bytes()
        assert raw[128:132] == b"DICM"
        ds = pydicom.dcmread(path)
        assert ds.SOPClassUID == CTImageStorage == ds.file_meta.MediaStorageSOPClassUID
        assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.Modality == "CT" and ds.InstanceNumber == i + 1
        assert [float(v) for v in ds.PixelSpacing] == [0.5, 0.6]
        assert float(ds.SliceThickness) == 2.5
    uids = {pydicom.dcmread(p).SOPInstanceUID for p in paths}
    assert len(uids) == 3
    series = {pydicom.dcmread(p).SeriesInstanceUID for p in paths}
    assert len(series) == 1


def test_the_patient_is_synthetic_and_nothing_identifying_is_written() -> None:
    ds = series_datasets(ramp(1))[0]
    assert str(ds.PatientName) == f"{ANONYMOUS}^" and ds.PatientID == ANONYMOUS
    assert ds.PatientBirthDate == "" and ds.PatientIdentityRemoved == "YES"
    names = [str(elem.value) for elem in ds.iterall() if elem.VR == "PN"]
    assert all(name in ("", f"{ANONYMOUS}^") for name in names)


def test_unsigned_storage_is_hu_plus_1024_and_signed_storage_is_hu() -> None:
    hu = np.array([[[-1024.0, 0.0], [40.4, 3071.0]]], dtype=np.float32)
    unsigned = series_datasets(hu)[0]
    assert (unsigned.PixelRepresentation, float(unsigned.RescaleIntercept)) == (0, -1024.0)
    stored = np.frombuffer(unsigned.PixelData, dtype="<u2").reshape(2, 2)
    np.testing.assert_array_equal(stored, [[0, 1024], [1064, 4095]])  # 40.4 HU rounds to 40
    signed = series_datasets(hu, signed=True)[0]
    assert (signed.PixelRepresentation, float(signed.RescaleIntercept)) == (1, 0.0)
    np.testing.assert_array_equal(
        np.frombuffer(signed.PixelData, dtype="<i2").reshape(2, 2), [[-1024, 0], [40, 3071]]
    )


def test_positions_step_along_z_from_a_centred_origin() -> None:
    datasets = series_datasets(
        ramp(3, rows=6, columns=5), pixel_spacing_mm=(0.5, 0.6), slice_thickness_mm=5.0
    )
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    np.testing.assert_allclose(positions[:, 2], [0.0, 5.0, 10.0])
    np.testing.assert_allclose(positions[0, :2], [-(5 - 1) / 2 * 0.6, -(6 - 1) / 2 * 0.5])
    assert [float(v) for v in datasets[0].ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]


def test_slice_spacing_may_differ_from_thickness() -> None:
    datasets = series_datasets(ramp(3), slice_thickness_mm=5.0, slice_spacing_mm=3.0)
    assert [float(ds.ImagePositionPatient[2]) for ds in datasets] == pytest.approx([0.0, 3.0, 6.0])


def test_gantry_tilt_rotates_the_plane_about_x() -> None:
    datasets = series_datasets(ramp(2), gantry_tilt_deg=20.0, slice_thickness_mm=5.0, origin_mm=(0, 0, 0))
    t = math.radians(20.0)
    assert float(datasets[0].GantryDetectorTilt) == 20.0
    np.testing.assert_allclose(
        [float(v) for v in datasets[0].ImageOrientationPatient],
        [1, 0, 0, 0, math.cos(t), -math.sin(t)],
        atol=1e-6,
    )
    step = np.array([float(v) for v in datasets[1].ImagePositionPatient])
    np.testing.assert_allclose(step, 5.0 * np.array([0, math.sin(t), math.cos(t)]), atol=1e-5)


def test_uid_seed_makes_the_files_reproducible() -> None:
    a = series_datasets(ramp(2), uid_seed="x")
    b = series_datasets(ramp(2), uid_seed="x")
    c = series_datasets(ramp(2), uid_seed="y")
    random = series_datasets(ramp(2))
    assert [ds.SOPInstanceUID for ds in a] == [ds.SOPInstanceUID for ds in b]
    assert a[0].StudyInstanceUID == b[0].StudyInstanceUID != c[0].StudyInstanceUID
    assert a[0].SOPInstanceUID != a[1].SOPInstanceUID
    assert random[0].SOPInstanceUID not in {ds.SOPInstanceUID for ds in a + c}


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_uid_seed_makes_compressed_files_reproducible_too(syntax: str) -> None:
    hu = ramp(2, rows=32, columns=32)  # JPEG 2000 needs 32 pixels a side
    a, b = (series_datasets(hu, uid_seed="x", transfer_syntax=syntax) for _ in range(2))
    plain = series_datasets(hu, uid_seed="x")
    assert [ds.SOPInstanceUID for ds in a] == [ds.SOPInstanceUID for ds in b]
    assert [ds.SOPInstanceUID for ds in a] == [ds.SOPInstanceUID for ds in plain]
    assert all(ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID for ds in a)


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless])
def test_compressed_files_declare_their_syntax_and_round_trip(syntax: str) -> None:
    if syntax == JPEGLSLossless:
        pytest.importorskip("jpeg_ls")
    hu = ramp(1, rows=40, columns=36)
    ds = pydicom.dcmread(io.BytesIO(dataset_bytes(series_datasets(hu, transfer_syntax=syntax)[0])))
    assert ds.file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(ds.pixel_array.astype(np.float32) - 1024, hu[0])


@pytest.mark.parametrize(
    ("hu", "options", "message"),
    [
        (np.full((1, 2, 2), -1100.0), {}, "do not fit unsigned"),
        (np.full((1, 2, 2), 40000.0), {"signed": True}, "do not fit signed"),
        (np.full((1, 2, 2), np.nan), {}, "finite"),
        (np.zeros((2, 2, 2, 2)), {}, "shape"),
        (np.zeros((0, 2, 2)), {}, "shape"),
        (np.zeros((1, 2, 2)), {"pixel_spacing_mm": (0.0, 1.0)}, "positive"),
        (np.zeros((1, 2, 2)), {"transfer_syntax": "1.2.840.10008.1.2.4.50"}, "unsupported transfer syntax"),
    ],
)
def test_bad_input_is_a_value_error(hu: np.ndarray, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        series_datasets(hu, **options)


def test_a_single_2d_slice_is_accepted() -> None:
    assert len(series_datasets(np.zeros((3, 3), dtype=np.float32))) == 1


def test_shuffled_zip_hides_the_order_and_zips_are_deterministic() -> None:
    data = series_zip(ramp(4), shuffle=True, seed=1, uid_seed="z")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = archive.namelist()
        numbers = [
            int(pydicom.dcmread(io.BytesIO(archive.read(n)), stop_before_pixels=True).InstanceNumber)
            for n in names
        ]
    assert sorted(numbers) == [1, 2, 3, 4] and numbers != [1, 2, 3, 4]
    assert not any("CT000" in n for n in names)
    assert zip_members({"a": b"1", "b": b"2"}) == zip_members({"a": b"1", "b": b"2"})
