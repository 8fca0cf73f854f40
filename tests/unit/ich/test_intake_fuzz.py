"""Property-based fuzzing of the intake (``ich.intake.read_study``): hostile zips and hostile DICOM.

Whatever the bytes, intake either returns a study or raises an ``IntakeError`` (a 400, 413 or 422 with a
reason); any other exception would be a 500. Three generators, each bounded by hypothesis' example count so
the run takes seconds: arbitrary bytes, a valid study's zip with bytes overwritten, cut or inserted (the
central directory, local headers, deflate streams), and a valid zip whose DICOM members are mutated
(preamble, tags, lengths, pixel data). Inputs that ever broke intake are kept in
``tests/fixtures/intake_corpus/`` and replayed on every run, with hand-made hostile seeds beside them.
"""

from __future__ import annotations

import contextlib
import io
import os
import zipfile
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ich.errors import IntakeError
from ich.intake import IntakeLimits, check_archive, read_study
from ich_devtools.dicom_writer import dataset_bytes, series_datasets, zip_members

CORPUS = Path(__file__).resolve().parents[2] / "fixtures" / "intake_corpus"
#: Small caps, so a mutation that declares huge sizes is refused fast instead of being inflated.
LIMITS = IntakeLimits(
    max_upload_bytes=1024 * 1024, max_uncompressed_bytes=4 * 1024 * 1024, max_members=64, max_slices=16
)
#: Examples per generator; ``FUZZ_EXAMPLES=20000 pytest tests/unit/ich/test_intake_fuzz.py`` for a long
#: campaign (random rather than the fixed sequence ``make test`` replays).
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize="FUZZ_EXAMPLES" not in os.environ,
    database=None,
    suppress_health_check=list(HealthCheck),
)


@cache
def _members() -> dict[str, bytes]:
    hu = np.full((3, 16, 16), 30.0, np.float32)
    hu[1, 4:10, 4:10] = 70.0
    datasets = series_datasets(hu, pixel_spacing_mm=(0.5, 0.5), slice_thickness_mm=5.0)
    return {f"study/IM{i:04d}.dcm": dataset_bytes(ds) for i, ds in enumerate(datasets)}


@cache
def _seed_zip() -> bytes:
    return zip_members(_members())


def _intake(data: bytes) -> None:
    """Run both intake doors; only a study or an IntakeError may come out."""
    with contextlib.suppress(IntakeError):
        check_archive(data, LIMITS)
    try:
        study = read_study(bytearray(data), LIMITS)
    except IntakeError as exc:
        assert exc.detail and 400 <= exc.http_status < 500
        return
    assert study.volume.hu.ndim == 3 and study.volume.hu.shape[0] >= 1


def _mutate(
    data: bytes, edits: list[tuple[int, int]], cut: int | None, insert: tuple[int, bytes] | None
) -> bytes:
    out = bytearray(data)
    for position, value in edits:
        out[position % len(out)] = value
    if insert is not None:
        at, extra = insert
        out[at % (len(out) + 1) : at % (len(out) + 1)] = extra
    if cut is not None:
        del out[cut % (len(out) + 1) :]
    return bytes(out)


_EDITS = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=12)
_CUT = st.none() | st.integers(0, 1 << 20)
_INSERT = st.none() | st.tuples(st.integers(0, 1 << 20), st.binary(min_size=1, max_size=64))


def test_the_seed_study_is_read() -> None:
    study = read_study(_seed_zip(), LIMITS)
    assert study.volume.hu.shape == (3, 16, 16)


@FUZZ
@given(data=st.binary(max_size=4096))
def test_arbitrary_bytes_never_break_intake(data: bytes) -> None:
    _intake(data)


@FUZZ
@given(edits=_EDITS, cut=_CUT, insert=_INSERT)
def test_a_damaged_zip_never_breaks_intake(
    edits: list[tuple[int, int]], cut: int | None, insert: tuple[int, bytes] | None
) -> None:
    _intake(_mutate(_seed_zip(), edits, cut, insert))


@FUZZ
@given(
    member=st.integers(0, 2),
    edits=_EDITS,
    cut=_CUT,
    insert=_INSERT,
    header_only=st.booleans(),
)
def test_damaged_dicom_in_a_sound_zip_never_breaks_intake(
    member: int,
    edits: list[tuple[int, int]],
    cut: int | None,
    insert: tuple[int, bytes] | None,
    header_only: bool,
) -> None:
    members = dict(_members())
    name = sorted(members)[member]
    original = members[name]
    # Most of a file is pixel data; aim half of the edits at the header, where the parser works hardest.
    span = 512 if header_only else len(original)
    scaled = [(position % span, value) for position, value in edits]
    members[name] = _mutate(original, scaled, cut, insert)
    _intake(zip_members(members))


def _corpus_files() -> list[Path]:
    return sorted(p for p in CORPUS.iterdir() if p.is_file() and p.suffix == ".bin")


@pytest.mark.parametrize("path", _corpus_files(), ids=lambda p: p.stem)
def test_the_regression_corpus_never_breaks_intake(path: Path) -> None:
    _intake(path.read_bytes())


def test_the_corpus_holds_the_hand_made_seeds() -> None:
    names = {p.stem for p in _corpus_files()}
    assert {"empty", "truncated_central_directory", "lying_member_size", "garbage_after_preamble"} <= names


def _write_seeds() -> None:
    """Regenerate the hand-made seeds (``python -m tests.unit.ich.test_intake_fuzz``); found crashes are
    added."""
    seed = _seed_zip()
    (CORPUS / "empty.bin").write_bytes(b"")
    (CORPUS / "truncated_central_directory.bin").write_bytes(seed[:-30])
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a.dcm", b"\0" * 128 + b"DICM" + b"\xff" * 64)
    lying = bytearray(buffer.getvalue())
    # The local header's and the central directory's uncompressed sizes both claim 4 GiB - 1.
    for offset in (22, lying.rfind(b"PK\x01\x02") + 24):
        lying[offset : offset + 4] = b"\xff\xff\xff\xff"
    (CORPUS / "lying_member_size.bin").write_bytes(bytes(lying))
    (CORPUS / "garbage_after_preamble.bin").write_bytes(
        zip_members({"x.dcm": b"\0" * 128 + b"DICM" + bytes(range(256)) * 4})
    )


if __name__ == "__main__":
    _write_seeds()
