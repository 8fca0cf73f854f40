"""ich_client.study: every study input form becomes the right zip, and large folders do not fill memory."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import httpx
import pytest
from ich_client import ICHClient, pack_study

from tests.unit.client.test_client import case_payload


def members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


@pytest.fixture
def study_dir(tmp_path: Path) -> Path:
    root = tmp_path / "Study 1"
    (root / "series_a").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "series_a" / "IM0001.dcm").write_bytes(b"a" * 300)
    (root / "series_a" / "IM0002").write_bytes(b"b" * 200)
    (root / "top.dcm").write_bytes(b"c" * 100)
    (root / ".DS_Store").write_bytes(b"finder")
    (root / ".git" / "HEAD").write_bytes(b"ref")
    return root


def test_zip_path_is_sent_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "case.ZIP"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.dcm", b"x" * 1000)
    with pack_study(path) as packed:
        assert packed.name == "case" and packed.files == 0
        assert packed.size == path.stat().st_size
        assert packed.read_all() == path.read_bytes()
        assert packed.read_all() == path.read_bytes()  # re-readable for retries


def test_folder_is_zipped_recursively_without_hidden_files(study_dir: Path) -> None:
    with pack_study(str(study_dir)) as packed:
        assert packed.name == "Study 1" and packed.files == 3
        content = members(packed.read_all())
    assert content == {
        "series_a/IM0001.dcm": b"a" * 300,
        "series_a/IM0002": b"b" * 200,
        "top.dcm": b"c" * 100,
    }


def test_folder_zip_is_the_same_every_time(study_dir: Path) -> None:
    with pack_study(study_dir) as first, pack_study(study_dir) as second:
        assert zipfile.ZipFile(io.BytesIO(first.read_all())).namelist() == sorted(
            zipfile.ZipFile(io.BytesIO(second.read_all())).namelist()
        )


def test_list_of_files_uses_names_relative_to_their_common_parent(study_dir: Path) -> None:
    a = study_dir / "series_a" / "IM0001.dcm"
    c = study_dir / "top.dcm"
    with pack_study([a, str(c), a, study_dir / "series_a" / ".." / "top.dcm"]) as packed:
        content = members(packed.read_all())
    assert content == {"series_a/IM0001.dcm": b"a" * 300, "top.dcm": b"c" * 100}


def test_list_may_hold_folders(study_dir: Path) -> None:
    with pack_study([study_dir / "series_a", study_dir / "top.dcm"]) as packed:
        assert sorted(members(packed.read_all())) == ["series_a/IM0001.dcm", "series_a/IM0002", "top.dcm"]


def test_single_dicom_file_is_zipped(study_dir: Path) -> None:
    dicom = b"\0" * 128 + b"DICM" + b"c" * 100
    (study_dir / "top.dcm").write_bytes(dicom)
    with pack_study(study_dir / "top.dcm") as packed:
        assert members(packed.read_all()) == {"top.dcm": dicom}
    bare = b"\x08\x00\x05\x00" + b"c" * 100  # no preamble: the first tag, (0008,0005)
    (study_dir / "bare").write_bytes(bare)
    with pack_study(study_dir / "bare") as packed:
        assert members(packed.read_all()) == {"bare": bare}


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("head.zip", b"PK\x03\x04 truncated", "not a readable zip archive"),
        ("head.zip", b"not a zip at all", "not a readable zip archive"),
        ("notes.txt", b"patient seen on Monday\n" * 10, "neither a zip archive nor a DICOM file"),
    ],
)
def test_a_lone_broken_zip_or_non_dicom_file_is_refused_before_upload(
    tmp_path: Path, name: str, content: bytes, match: str
) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=match):
        pack_study(tmp_path / name)


def test_bytes_are_sent_unchanged() -> None:
    data = b"PK\x05\x06" + bytes(18)  # an empty zip
    for form in (data, bytearray(data), memoryview(data)):
        with pack_study(form) as packed:
            assert packed.read_all() == data and packed.size == len(data)


def test_seekable_file_object_is_read_from_its_position(tmp_path: Path) -> None:
    buffer = io.BytesIO(b"junk" + b"PKzipdata")
    buffer.seek(4)
    packed = pack_study(buffer)
    assert packed.size == 9 and packed.read_all() == b"PKzipdata" and packed.read_all() == b"PKzipdata"
    packed.close()
    assert not buffer.closed  # the caller's file stays the caller's


def test_unseekable_stream_is_copied_once(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    os.write(write_end, b"PK" + b"z" * 5000)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe, pack_study(pipe) as packed:
        assert packed.read_all() == b"PK" + b"z" * 5000
        assert packed.read_all() == b"PK" + b"z" * 5000


def test_large_folder_spills_to_disk(tmp_path: Path) -> None:
    folder = tmp_path / "big"
    folder.mkdir()
    payloads = {f"{i:03d}.dcm": os.urandom(64 * 1024) for i in range(20)}  # incompressible: ~1.3 MB zip
    for name, data in payloads.items():
        (folder / name).write_bytes(data)
    done: list[tuple[int, int]] = []
    with pack_study(folder, spool_bytes=256 * 1024, on_file=lambda d, t: done.append((d, t))) as packed:
        spool = packed._file
        assert getattr(spool, "_rolled", None) is True  # on disk, not in memory
        assert packed.size > 20 * 64 * 1024
        chunks = list(packed.chunks(chunk_size=100_000))
        assert max(len(c) for c in chunks) <= 100_000
        assert members(b"".join(chunks)) == payloads
    assert done[-1] == (20, 20) and len(done) == 20


def test_small_folder_stays_in_memory(study_dir: Path) -> None:
    with pack_study(study_dir) as packed:
        assert getattr(packed._file, "_rolled", None) is False


@pytest.mark.parametrize(
    ("study", "error", "match"),
    [
        ("/nonexistent/study.zip", FileNotFoundError, "no such file"),
        (["/nonexistent/a.dcm"], FileNotFoundError, "no such file"),
        ([], ValueError, "empty"),
        (42, ValueError, "unsupported study type"),
    ],
)
def test_bad_inputs_are_clear_errors(study: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        pack_study(study)  # type: ignore[arg-type]


def test_empty_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="holds no files"):
        pack_study(tmp_path)


def test_every_input_form_reaches_the_service_as_the_same_members(study_dir: Path, tmp_path: Path) -> None:
    """analyze() with a folder, a file list, a zip path and bytes uploads the same DICOM members."""
    seen: list[dict[str, bytes]] = []

    def server(request: httpx.Request) -> httpx.Response:
        seen.append(members(request.read()))
        return httpx.Response(200, json=case_payload())

    zipped = tmp_path / "study.zip"
    with zipfile.ZipFile(zipped, "w") as archive:
        for path in sorted(study_dir.rglob("*")):
            if path.is_file() and not any(p.startswith(".") for p in path.relative_to(study_dir).parts):
                archive.write(path, path.relative_to(study_dir).as_posix())
    files = [study_dir / "series_a" / "IM0001.dcm", study_dir / "series_a" / "IM0002", study_dir / "top.dcm"]
    transport = httpx.MockTransport(server)
    with ICHClient("http://ich.test", transport=transport) as client, zipped.open("rb") as handle:
        for form in (study_dir, files, zipped, zipped.read_bytes(), handle):
            assert client.analyze(form).case_id == "c0ffee"
    assert len(seen) == 5 and all(s == seen[0] for s in seen)
    assert set(seen[0]) == {"series_a/IM0001.dcm", "series_a/IM0002", "top.dcm"}
