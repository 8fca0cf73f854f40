"""Intake of a zipped study: caps, hostile members, skipped files, series choice, decoding, errors.

Studies are written with ``ich_devtools.dicom_writer`` (synthetic HU, patient "ANONYMOUS"); real third-party
files come from pydicom's own test data (``CT_small.dcm``, a real scanner's slice; ``693_J2KI.dcm``, JPEG
2000).
"""

from __future__ import annotations

import io
import stat
import struct
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000Lossless, JPEGLosslessSV1, JPEGLSLossless, RLELossless

from ich import intake
from ich.errors import (
    IntakeError,
    InvalidArchiveError,
    NoUsableSeriesError,
    StudyTooLargeError,
    UnsafeArchiveError,
)
from ich.intake import IntakeLimits, read_files, read_folder, read_study
from ich_devtools.dicom_writer import dataset_bytes, series_datasets, series_zip, zip_members


def volume(n: int = 5, rows: int = 16, columns: int = 12, seed: int = 0) -> np.ndarray:
    """Integer HU, every slice different, so any reordering shows."""
    rng = np.random.default_rng(seed)
    hu = rng.integers(-1000, 1500, size=(n, rows, columns)).astype(np.float32)
    hu[:, 0, 0] = np.arange(n) * 10  # a per-slice tag
    return hu


def members(datasets: list[Dataset], folder: str = "s") -> dict[str, bytes]:
    return {f"{folder}/CT{i:03d}.dcm": dataset_bytes(ds) for i, ds in enumerate(datasets)}


def reason_of(items: list, name: str) -> str:
    found = [s.reason for s in items if s.file == name]
    assert found, f"{name} not among {[s.file for s in items]}"
    return found[0]


# ------------------------------------------------------------------------------------------- happy paths


def test_shuffled_slices_come_back_in_spatial_order_not_instance_order() -> None:
    hu = volume(7)
    datasets = series_datasets(hu, slice_thickness_mm=5.0)
    for ds in datasets:  # InstanceNumber counting the wrong way: sorting by it would reverse the volume
        ds.InstanceNumber = 100 - int(ds.InstanceNumber)
    order = [3, 0, 6, 2, 5, 1, 4]
    data = zip_members({f"x/{k:02d}_{i}": dataset_bytes(datasets[i]) for k, i in enumerate(order)})

    study = read_study(data)

    np.testing.assert_array_equal(study.volume.hu, hu)
    assert study.volume.sop_instance_uids == [str(ds.SOPInstanceUID) for ds in datasets]
    assert study.volume.slice_thickness_mm == pytest.approx(5.0)
    assert list(study.volume.slice_positions_mm) == sorted(study.volume.slice_positions_mm)
    assert study.skipped == [] and study.passed_over == [] and study.warnings == []


def test_hu_are_float32_and_the_rescale_is_applied() -> None:
    hu = volume(2)
    study = read_study(series_zip(hu))  # stored unsigned with intercept -1024
    assert study.volume.hu.dtype == np.float32
    np.testing.assert_array_equal(study.volume.hu, hu)


def test_spacing_and_series_uid_come_from_the_headers() -> None:
    study = read_study(series_zip(volume(3), pixel_spacing_mm=(0.45, 0.55), slice_thickness_mm=2.5))
    assert study.volume.pixel_spacing_mm == pytest.approx((0.45, 0.55))
    assert study.volume.slice_thickness_mm == pytest.approx(2.5)
    with zipfile.ZipFile(io.BytesIO(series_zip(volume(1)))) as archive:
        first = pydicom.dcmread(io.BytesIO(archive.read(archive.namelist()[0])))
    assert first.PatientName == "ANONYMOUS^"


def test_one_slice_is_a_valid_study() -> None:
    hu = volume(1)
    study = read_study(series_zip(hu, slice_thickness_mm=5.0))
    assert study.volume.hu.shape == (1, 16, 12)
    np.testing.assert_array_equal(study.volume.hu, hu)
    assert study.volume.slice_thickness_mm == pytest.approx(5.0)


def test_folder_and_file_list_read_like_the_zip(tmp_path: Path) -> None:
    from ich_devtools.dicom_writer import write_series

    hu = volume(4)
    write_series(hu, tmp_path / "study" / "series", slice_thickness_mm=3.0)
    (tmp_path / "study" / "notes.txt").write_text("report")
    (tmp_path / "study" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")

    study = read_folder(tmp_path / "study")
    np.testing.assert_array_equal(study.volume.hu, hu)
    assert [(s.file, s.reason) for s in study.skipped] == [("notes.txt", intake._NOT_DICOM)]

    files = sorted((tmp_path / "study" / "series").glob("*.dcm"))
    listed = read_files(reversed(files))
    np.testing.assert_array_equal(listed.volume.hu, hu)


def test_read_folder_needs_a_folder(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError):
        read_folder(tmp_path / "absent")


# ------------------------------------------------------------------------------------ choosing the series


def test_the_axial_series_is_chosen_over_a_localizer_a_shorter_series_and_mr() -> None:
    axial = series_datasets(volume(6), slice_thickness_mm=5.0, series_number=2)
    scout = series_datasets(
        volume(8, seed=1), image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), series_number=1
    )
    thin = series_datasets(volume(3, seed=2), slice_thickness_mm=1.0, series_number=3)
    mr = series_datasets(volume(9, seed=3), modality="MR", series_number=4)
    data = zip_members(
        {**members(scout, "scout"), **members(axial, "axial"), **members(thin, "thin"), **members(mr, "mr")}
    )

    study = read_study(data)

    assert study.volume.series_instance_uid == axial[0].SeriesInstanceUID
    assert study.volume.hu.shape[0] == 6
    reasons = {p.series_instance_uid: p for p in study.passed_over}
    assert "localizer" in reasons[scout[0].SeriesInstanceUID].reason
    assert reasons[scout[0].SeriesInstanceUID].slices == 8
    assert "3 usable slice(s); the chosen series has 6" in reasons[thin[0].SeriesInstanceUID].reason
    assert reasons[mr[0].SeriesInstanceUID].reason == "modality MR, not CT"
    assert reasons[mr[0].SeriesInstanceUID].modality == "MR"


def test_a_coronal_series_is_passed_over_as_not_axial() -> None:
    coronal = series_datasets(volume(9, seed=4))
    for ds in coronal:
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]
    axial = series_datasets(volume(3))
    study = read_study(zip_members({**members(coronal, "cor"), **members(axial, "ax")}))
    assert study.volume.series_instance_uid == axial[0].SeriesInstanceUID
    (passed,) = study.passed_over
    assert passed.reason.startswith("not axial: slice normal 90 degrees")


# ----------------------------------------------------------------------------------- skipped members


def test_non_dicom_members_are_skipped_with_a_reason_and_litter_quietly() -> None:
    hu = volume(3)
    data = zip_members(
        {
            **members(series_datasets(hu)),
            "report.pdf": b"%PDF-1.4 not an image",
            "s/preview.jpg": b"\xff\xd8\xff\xe0 jpeg",
            "__MACOSX/s/._CT000.dcm": b"\0\5\26\7 apple double",
            "s/.DS_Store": b"\0\0\0\1Bud1",
        }
    )
    study = read_study(data)
    np.testing.assert_array_equal(study.volume.hu, hu)
    assert sorted(s.file for s in study.skipped) == ["report.pdf", "s/preview.jpg"]
    assert reason_of(study.skipped, "report.pdf") == intake._NOT_DICOM


@pytest.mark.parametrize("implicit_vr", [False, True])
def test_bare_datasets_without_preamble_are_read_too(implicit_vr: bool) -> None:
    """Older exports write the dataset alone: no 128-byte preamble, no "DICM", no file meta."""
    from pydicom.filewriter import dcmwrite

    hu = volume(3)
    files = {}
    for i, ds in enumerate(series_datasets(hu)):
        del ds.file_meta
        buffer = io.BytesIO()
        dcmwrite(buffer, ds, enforce_file_format=False, implicit_vr=implicit_vr, little_endian=True)
        assert buffer.getvalue()[128:132] != b"DICM"
        files[f"s/{2 - i}"] = buffer.getvalue()
    study = read_study(zip_members(files))
    np.testing.assert_array_equal(study.volume.hu, hu)
    assert study.skipped == []


def test_directories_are_skipped_quietly() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.mkdir("study")
        archive.mkdir("study/series")
        for name, data in members(series_datasets(volume(2)), "study/series").items():
            archive.writestr(name, data)
    study = read_study(buffer.getvalue())
    assert study.volume.hu.shape[0] == 2 and study.skipped == []


def test_a_nested_archive_is_skipped_unopened() -> None:
    inner = series_zip(volume(4, seed=5))
    hu = volume(2)
    data = zip_members({**members(series_datasets(hu)), "more.zip": inner, "renamed.bin": inner})
    study = read_study(data)
    np.testing.assert_array_equal(study.volume.hu, hu)  # the inner zip's four slices were not used
    assert reason_of(study.skipped, "more.zip").startswith("nested archive")
    assert reason_of(study.skipped, "renamed.bin").startswith("nested archive")  # found by its magic


def test_a_corrupt_header_skips_that_file_only() -> None:
    hu = volume(3)
    datasets = members(series_datasets(hu))
    good = next(iter(datasets.values()))
    garbage = good[:140] + b"\xff" * (len(good) - 140)  # DICM marker intact, the elements after it garbage
    truncated = good[:200]  # cut inside the file meta information
    data = zip_members({**datasets, "garbage.dcm": garbage, "truncated.dcm": truncated})
    study = read_study(data)
    np.testing.assert_array_equal(study.volume.hu, hu)
    assert reason_of(study.skipped, "garbage.dcm").startswith("DICOM header could not be read")
    assert reason_of(study.skipped, "truncated.dcm").startswith("DICOM header could not be read")


def test_the_headers_come_with_the_volume_one_per_slice_in_its_order() -> None:
    hu = volume(5)
    datasets = series_datasets(hu)
    files = members(datasets)
    files["s/CT002.dcm"] = files["s/CT002.dcm"][: len(files["s/CT002.dcm"]) - hu[0].nbytes // 2]
    study = read_study(zip_members(dict(reversed(files.items()))))
    assert [str(ds.SOPInstanceUID) for ds in study.source_headers] == study.volume.sop_instance_uids
    assert study.volume.sop_instance_uids == [str(datasets[i].SOPInstanceUID) for i in (0, 1, 3, 4)]
    assert all("PixelData" not in ds for ds in study.source_headers)


def test_no_headers_for_a_seg_when_a_slice_in_the_volume_has_no_sop_instance_uid() -> None:
    datasets = series_datasets(volume(3))
    del datasets[1].SOPInstanceUID  # kept: it still has its SOP Class UID
    study = read_study(zip_members(members(datasets)))
    assert study.volume.hu.shape[0] == 3
    assert study.source_headers == ()


def test_a_slice_without_uid_that_does_not_decode_leaves_the_others_referenceable() -> None:
    hu = volume(4)
    datasets = series_datasets(hu)
    del datasets[1].SOPInstanceUID
    files = members(datasets)
    files["s/CT001.dcm"] = files["s/CT001.dcm"][: len(files["s/CT001.dcm"]) - hu[0].nbytes // 2]
    study = read_study(zip_members(files))
    assert study.volume.hu.shape[0] == 3  # the SEG references the slices of the volume, each by its UID
    assert [str(ds.SOPInstanceUID) for ds in study.source_headers] == study.volume.sop_instance_uids


def test_corrupt_pixel_data_leaves_the_slice_out_and_reports_the_gap() -> None:
    hu = volume(5)
    datasets = series_datasets(hu)
    files = members(datasets)
    name = "s/CT002.dcm"
    files[name] = files[name][: len(files[name]) - hu[0].nbytes // 2]  # truncated pixel data
    study = read_study(zip_members(files))
    np.testing.assert_array_equal(study.volume.hu, hu[[0, 1, 3, 4]])
    assert reason_of(study.skipped, name).startswith("pixel data could not be decoded")
    assert any(w.startswith("irregular slice spacing") for w in study.warnings)
    assert any("1 slice(s) left out" in w for w in study.warnings)


def test_a_member_that_fails_to_inflate_is_skipped() -> None:
    hu = volume(2)
    files = members(series_datasets(hu))
    data = bytearray(zip_members({**files, "z/bad.dcm": bytes(range(256)) * 64}))
    # flip bytes inside the deflated data of the last member (its local header is the last "PK\3\4")
    start = bytes(data).rindex(b"PK\x03\x04") + 30 + len("z/bad.dcm")
    data[start + 10 : start + 40] = b"\x00" * 30
    study = read_study(bytes(data))
    np.testing.assert_array_equal(study.volume.hu, hu)
    assert reason_of(study.skipped, "z/bad.dcm").startswith("member could not be decompressed")


# ------------------------------------------------------------------------------------- hostile archives


@pytest.mark.parametrize("name", ["../escape.dcm", "a/../../escape.dcm", "/etc/escape.dcm", "..\\escape.dcm"])
def test_paths_escaping_the_archive_are_refused(name: str) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("s/ok.dcm", dataset_bytes(series_datasets(volume(1))[0]))
        archive.writestr(zipfile.ZipInfo(name), b"x")
    with pytest.raises(UnsafeArchiveError) as caught:
        read_study(buffer.getvalue())
    assert caught.value.http_status == 400 and caught.value.code == "unsafe_archive"


def test_a_symbolic_link_member_is_refused() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("s/ok.dcm", dataset_bytes(series_datasets(volume(1))[0]))
        link = zipfile.ZipInfo("s/link.dcm")
        link.create_system = 3
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
    with pytest.raises(UnsafeArchiveError, match="symbolic link"):
        read_study(buffer.getvalue())


def test_the_compressed_size_cap() -> None:
    data = series_zip(volume(3))
    assert read_study(data, IntakeLimits(max_upload_bytes=len(data))).volume.hu.shape[0] == 3
    with pytest.raises(StudyTooLargeError) as caught:
        read_study(data, IntakeLimits(max_upload_bytes=len(data) - 1))
    assert caught.value.http_status == 413 and caught.value.limit_name == "compressed_bytes"


def test_the_member_count_cap() -> None:
    data = series_zip(volume(4))
    assert read_study(data, IntakeLimits(max_members=4)).volume.hu.shape[0] == 4
    with pytest.raises(StudyTooLargeError) as caught:
        read_study(data, IntakeLimits(max_members=3))
    assert caught.value.limit_name == "members" and caught.value.limit == 3


def test_the_declared_uncompressed_size_cap() -> None:
    data = series_zip(volume(4))
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        total = sum(info.file_size for info in archive.infolist())
    assert read_study(data, IntakeLimits(max_uncompressed_bytes=total)).volume.hu.shape[0] == 4
    with pytest.raises(StudyTooLargeError) as caught:
        read_study(data, IntakeLimits(max_uncompressed_bytes=total - 1))
    assert caught.value.limit_name == "uncompressed_bytes"


def _lie_about_size(data: bytes, name: bytes, declared: int) -> bytes:
    """Rewrite the uncompressed size of member ``name`` in its local header and the central directory."""
    out = bytearray(data)
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = 0
        while (at := bytes(out).find(signature, at)) >= 0:
            name_len_at = 26 if signature == b"PK\x03\x04" else 28
            name_start = at + (30 if signature == b"PK\x03\x04" else 46)
            (name_len,) = struct.unpack_from("<H", out, at + name_len_at)
            if bytes(out[name_start : name_start + name_len]) == name:
                struct.pack_into("<I", out, at + offset, declared)
            at += 4
    return bytes(out)


def test_a_bomb_whose_headers_lie_is_not_inflated_past_its_declared_size() -> None:
    hu = volume(2)
    bomb = b"\0" * (8 * 1024 * 1024)  # deflates to a few kB
    data = zip_members({**members(series_datasets(hu)), "bomb.dcm": bomb})
    lying = _lie_about_size(data, b"bomb.dcm", 1000)
    with zipfile.ZipFile(io.BytesIO(lying)) as archive:
        assert archive.getinfo("bomb.dcm").file_size == 1000
    study = read_study(lying, IntakeLimits(max_uncompressed_bytes=1024 * 1024))
    np.testing.assert_array_equal(study.volume.hu, hu)
    assert reason_of(study.skipped, "bomb.dcm").startswith("member could not be decompressed")


def test_inflated_bytes_are_counted_against_the_remaining_budget() -> None:
    data = zip_members({"a.bin": b"\1" * 5000})
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = archive.getinfo("a.bin")
        budget = [5000]
        assert intake._inflate(archive, info, budget, 5000, []) == b"\1" * 5000
        assert budget == [0]
        with pytest.raises(StudyTooLargeError, match="inflates beyond"):
            intake._inflate(archive, info, [4999], 5000, [])


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_members"):
        IntakeLimits(max_members=0)


# ------------------------------------------------------------------------------------------- 400 / 422


@pytest.mark.parametrize("data", [b"", b"garbage bytes, not a zip", b"PK\x03\x04 truncated", bytes(100)])
def test_garbage_is_an_invalid_archive(data: bytes) -> None:
    with pytest.raises(InvalidArchiveError) as caught:
        read_study(data)
    assert caught.value.http_status == 400 and caught.value.code == "invalid_archive"


def test_a_zip_without_dicom_is_no_usable_series_with_a_reason_per_file() -> None:
    data = zip_members({"scan.jpg": b"\xff\xd8\xff\xe0 not dicom", "notes/readme.txt": b"hello"})
    with pytest.raises(NoUsableSeriesError) as caught:
        read_study(data)
    error = caught.value
    assert error.http_status == 422 and error.code == "no_usable_series"
    assert "no DICOM files" in error.detail
    assert sorted(r["file"] for r in error.reasons) == ["notes/readme.txt", "scan.jpg"]
    assert all(r["reason"] == intake._NOT_DICOM for r in error.reasons)


def test_only_unusable_series_gives_their_reasons() -> None:
    mr = series_datasets(volume(3), modality="MR")
    thick = series_datasets(volume(3, seed=7), slice_thickness_mm=20.0)
    with pytest.raises(NoUsableSeriesError) as caught:
        read_study(zip_members({**members(mr, "mr"), **members(thick, "thick")}))
    by_uid = {r.get("series_instance_uid"): r["reason"] for r in caught.value.reasons}
    assert by_uid[mr[0].SeriesInstanceUID] == "modality MR, not CT"
    assert by_uid[thick[0].SeriesInstanceUID] == "slice thickness 20 mm outside 0.5-10 mm"


def test_an_empty_zip_is_no_usable_series() -> None:
    with pytest.raises(NoUsableSeriesError) as caught:
        read_study(zip_members({}))
    assert caught.value.reasons == []


def test_reasons_are_capped() -> None:
    data = zip_members({f"f{i:04d}.txt": b"x" for i in range(intake.MAX_REASONS + 20)})
    with pytest.raises(NoUsableSeriesError) as caught:
        read_study(data)
    assert len(caught.value.reasons) == intake.MAX_REASONS
    assert caught.value.reasons[-1]["reason"] == "and 21 more not listed"


def test_every_intake_error_is_an_intake_error() -> None:
    for cls in (InvalidArchiveError, UnsafeArchiveError, NoUsableSeriesError):
        assert issubclass(cls, IntakeError)
    assert StudyTooLargeError("x", limit_name="members", limit=1).http_status == 413


# ------------------------------------------------------------------------ positions, duplicates, tilt


def test_a_slice_without_position_among_placed_ones_is_left_out() -> None:
    hu = volume(4)
    datasets = series_datasets(hu)
    del datasets[2].ImagePositionPatient
    study = read_study(zip_members(members(datasets)))
    np.testing.assert_array_equal(study.volume.hu, hu[[0, 1, 3]])
    assert (
        reason_of(study.skipped, "s/CT002.dcm") == "no ImagePositionPatient while the other slices have one"
    )


def test_no_positions_at_all_falls_back_to_instance_number_with_a_warning() -> None:
    hu = volume(4)
    datasets = series_datasets(hu, slice_thickness_mm=4.0)
    for ds in datasets:
        del ds.ImagePositionPatient
    shuffled = {f"s/{k}.dcm": dataset_bytes(datasets[i]) for k, i in enumerate([2, 0, 3, 1])}
    study = read_study(zip_members(shuffled))
    np.testing.assert_array_equal(study.volume.hu, hu)
    assert study.volume.slice_thickness_mm == pytest.approx(4.0)
    assert study.volume.slice_positions_mm == ()
    assert any("ordered by InstanceNumber" in w for w in study.warnings)


def test_duplicates_by_position_and_by_uid_are_left_out() -> None:
    hu = volume(3)
    datasets = series_datasets(hu)
    again = series_datasets(hu[1:2], series_instance_uid=datasets[0].SeriesInstanceUID)[0]
    again.ImagePositionPatient = datasets[1].ImagePositionPatient  # same place, another SOP instance
    again.InstanceNumber = 50
    files = members(datasets)
    files["copy/CT001.dcm"] = files["s/CT001.dcm"]  # the very same file twice
    files["s/z_repeat.dcm"] = dataset_bytes(again)
    study = read_study(zip_members(files))
    np.testing.assert_array_equal(study.volume.hu, hu)
    assert reason_of(study.skipped, "s/z_repeat.dcm").startswith("duplicate slice position")
    assert reason_of(study.skipped, "s/CT001.dcm").startswith("duplicate SOPInstanceUID")
    assert len(study.volume.sop_instance_uids) == len(set(study.volume.sop_instance_uids)) == 3


def test_a_missing_slice_is_reported_as_a_gap() -> None:
    hu = volume(6)
    files = members(series_datasets(hu, slice_thickness_mm=5.0))
    del files["s/CT003.dcm"]
    study = read_study(zip_members(files))
    assert study.volume.hu.shape[0] == 5
    assert study.volume.slice_thickness_mm == pytest.approx(5.0)  # the median spacing
    (warning,) = study.warnings
    assert warning.startswith("irregular slice spacing: 5.00 to 10.00 mm") and "1 gap(s)" in warning


def test_gantry_tilt_is_warned_and_spacing_measured_along_the_normal() -> None:
    hu = volume(4)
    study = read_study(series_zip(hu, gantry_tilt_deg=20.0, slice_thickness_mm=5.0))
    np.testing.assert_array_equal(study.volume.hu, hu)
    assert study.volume.gantry_tilt_deg == pytest.approx(20.0)
    assert study.volume.slice_thickness_mm == pytest.approx(5.0)
    assert any(w.startswith("gantry tilt 20.0 degrees") for w in study.warnings)


def test_a_slice_with_another_matrix_is_left_out() -> None:
    hu = volume(4)
    datasets = series_datasets(hu)
    odd = series_datasets(volume(1, rows=20, columns=20), series_instance_uid=datasets[0].SeriesInstanceUID)[
        0
    ]
    odd.ImagePositionPatient = [0.0, 0.0, 100.0]
    study = read_study(zip_members({**members(datasets), "odd.dcm": dataset_bytes(odd)}))
    np.testing.assert_array_equal(study.volume.hu, hu)
    assert reason_of(study.skipped, "odd.dcm") == "matrix 20x20 differs from the series' 16x12"


# --------------------------------------------------------------------------- compressed transfer syntaxes


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless, JPEGLosslessSV1])
@pytest.mark.parametrize("signed", [False, True])
def test_compressed_series_decode_to_the_exact_hu(syntax: str, signed: bool) -> None:
    if syntax == JPEGLosslessSV1:
        pytest.importorskip("imagecodecs")
    if syntax == JPEGLSLossless:
        pytest.importorskip("jpeg_ls")
    hu = volume(3, rows=40, columns=36)  # openjpeg's default 6 resolution levels need 32 px or more a side
    data = series_zip(hu, transfer_syntax=syntax, signed=signed, shuffle=True, seed=3)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        first = pydicom.dcmread(io.BytesIO(archive.read(archive.namelist()[0])), stop_before_pixels=True)
    assert first.file_meta.TransferSyntaxUID == syntax
    study = read_study(data)
    np.testing.assert_array_equal(study.volume.hu, hu)


def _testdata(name: str) -> Path:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom test file {name} not available")
    return Path(str(path))


def test_a_real_scanner_slice_reads_as_a_one_slice_study() -> None:
    path = _testdata("CT_small.dcm")
    ds = pydicom.dcmread(path)
    expected = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    study = read_study(zip_members({"CT_small.dcm": path.read_bytes()}))
    assert study.volume.hu.shape == (1, int(ds.Rows), int(ds.Columns))
    np.testing.assert_array_equal(study.volume.hu[0], expected.astype(np.float32))
    assert study.volume.pixel_spacing_mm == pytest.approx(tuple(float(v) for v in ds.PixelSpacing))
    assert study.volume.slice_thickness_mm == pytest.approx(float(ds.SliceThickness))


def test_a_real_jpeg2000_ct_slice_is_decoded() -> None:
    path = _testdata("693_J2KI.dcm")
    study = read_study(zip_members({"j2k.dcm": path.read_bytes()}))
    hu = study.volume.hu
    assert hu.shape[0] == 1 and np.isfinite(hu).all()
    # a head slice in HU: air (and padding) below -900, a fifth soft tissue, some bone
    assert (hu < -900).mean() > 0.3
    assert 0.1 < ((hu > -100) & (hu < 100)).mean() < 0.5
    assert (hu > 300).mean() > 0.01


# --------------------------------------------------------------------------------- the example study

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "ct_ich_study.zip"


def test_the_committed_example_study_reads_as_one_clean_512_series() -> None:
    if not EXAMPLE.exists():
        pytest.skip("examples/ct_ich_study.zip not present")
    data = EXAMPLE.read_bytes()
    study = read_study(data)
    assert study.volume.hu.shape == (31, 512, 512)
    assert study.volume.slice_thickness_mm == pytest.approx(5.0)
    assert 0.3 < study.volume.pixel_spacing_mm[0] < 0.7
    assert study.skipped == [] and study.passed_over == [] and study.warnings == []
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        first = pydicom.dcmread(io.BytesIO(archive.read(archive.namelist()[0])), stop_before_pixels=True)
    assert str(first.PatientName) == "ANONYMOUS^" and first.PatientID == "ANONYMOUS"
    assert "CT-ICH" in first.ImageComments and "CC BY 4.0" in first.ImageComments
    # a head: air around, brain inside, skull
    hu = study.volume.hu[15]
    assert (hu < -500).mean() > 0.2 and ((hu > 0) & (hu < 80)).mean() > 0.2 and (hu > 700).mean() > 0.01


# ------------------------------------------------------------------------------------- hostile bytes


def test_mutated_archives_give_a_study_or_an_intake_error_never_anything_else() -> None:
    """A seeded fuzz: flipped, cut and inserted bytes in a stored (uncompressed) zip of RLE slices hit the
    zip parser, the DICOM parser and the RLE decoder; each must answer with a study or an IntakeError
    (which the gateway turns into 400/413/422), never another exception (a 500)."""
    import random

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for i, ds in enumerate(series_datasets(volume(3), transfer_syntax=RLELossless)):
            archive.writestr(f"s/{i}.dcm", dataset_bytes(ds))
    original = buffer.getvalue()
    rng = random.Random(20261129)
    outcomes: set[str] = set()
    for _ in range(200):
        data = bytearray(original)
        for _ in range(rng.randint(1, 6)):
            at = rng.randrange(len(data))
            roll = rng.random()
            if roll < 0.6:
                data[at] = rng.randrange(256)
            elif roll < 0.8:
                del data[at : at + rng.randint(1, 40)]
            else:
                data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        try:
            study = read_study(bytes(data))
        except IntakeError as exc:
            outcomes.add(type(exc).__name__)
        else:
            assert np.isfinite(study.volume.hu).all() and study.volume.hu.shape[1:] == (16, 12)
            outcomes.add("study")
    assert {"study", "NoUsableSeriesError", "InvalidArchiveError"} <= outcomes


def test_intake_logs_no_patient_data(caplog: pytest.LogCaptureFixture) -> None:
    """File names and headers can hold names; logs carry counts and reasons only."""
    datasets = series_datasets(volume(3))
    for ds in datasets:
        ds.PatientName = "Doe^Jane"
        ds.PatientID = "MRN-0042"
    files = {f"Doe_Jane_MRN-0042/{i}.dcm": dataset_bytes(ds) for i, ds in enumerate(datasets)}
    files["Doe_Jane_MRN-0042/broken.dcm"] = b"\0" * 128 + b"DICM" + b"\xff" * 64
    files["Doe_Jane_MRN-0042/notes.txt"] = b"Doe Jane"
    with caplog.at_level("DEBUG", logger="ich"):
        read_study(zip_members(files))
        with pytest.raises(NoUsableSeriesError):
            read_study(zip_members({"Doe_Jane_MRN-0042/notes.txt": b"Doe Jane"}))
    assert caplog.records, "intake should log what it did"
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "Doe" not in text and "0042" not in text


def test_intake_limits_default_to_the_gateways_settings() -> None:
    from api.settings import Settings
    from ich.intake import IntakeLimits

    limits, settings = IntakeLimits(), Settings()
    assert limits.max_upload_bytes == settings.max_upload_bytes
    assert limits.max_uncompressed_bytes == settings.max_uncompressed_bytes
    assert limits.max_members == settings.max_members
    assert limits.max_slices == settings.max_slices
