"""`ich-model pack` on the committed CT-ICH fixture: the shrunk copy reads back as the same data set
(patients, slices, labels, the masks' area in mm^2, the head's width in mm), carries the licence and says
what it changed; the reader's spacing bounds follow the image's width."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.data.ct_ich import MASK_THRESHOLD, estimate_pixel_spacing, read_dataset
from training.data.pack import pack_dataset, shrink_mask

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "ct_ich"
SIZE = 325  # half of CT-ICH's 650 px


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("pack") / "ct-ich"
    return out, pack_dataset(FIXTURE, out, size=SIZE, quality=75)


def test_pack_reads_back_as_the_same_patients_slices_and_labels(packed) -> None:
    out, summary = packed
    original = {p.pid: p for p in read_dataset(FIXTURE)}
    small = {p.pid: p for p in read_dataset(out)}
    assert sorted(small) == sorted(original) and summary.patients == len(original)
    for pid, p in original.items():
        q = small[pid]
        assert q.slice_numbers == p.slice_numbers
        assert q.hu.shape[1:] == (SIZE, SIZE)
        np.testing.assert_array_equal(q.subtypes, p.subtypes)
        np.testing.assert_array_equal(q.slice_labels, p.slice_labels)
        assert q.warnings == p.warnings


def test_pack_keeps_sizes_in_millimetres(packed) -> None:
    out, _ = packed
    original = {p.pid: p for p in read_dataset(FIXTURE)}
    for q in read_dataset(out):
        p = original[q.pid]
        # the head measured in the copy's pixels: the same width in mm
        assert q.pixel_spacing_mm * SIZE == pytest.approx(p.pixel_spacing_mm * 650, rel=0.02)
        area = p.masks.sum(axis=(1, 2)) * p.pixel_spacing_mm**2
        shrunk_area = q.masks.sum(axis=(1, 2)) * q.pixel_spacing_mm**2
        np.testing.assert_allclose(shrunk_area, area, rtol=0.1, atol=5.0)
        assert (q.masks.any(axis=(1, 2)) == p.masks.any(axis=(1, 2))).all()


def test_pack_is_smaller_and_carries_licence_and_notice(packed, tmp_path: Path) -> None:
    out, summary = packed
    source_bytes = sum(f.stat().st_size for f in (FIXTURE / "Patients_CT").rglob("*.jpg"))
    image_bytes = sum(f.stat().st_size for f in (out / "Patients_CT").rglob("*.jpg"))
    assert image_bytes < 0.5 * source_bytes
    assert summary.images + summary.masks == len(list((FIXTURE / "Patients_CT").rglob("*.jpg")))
    notice = (out / "NOTICE.md").read_text(encoding="utf-8")
    assert f"at most {SIZE} px" in notice and "quality 75" in notice
    assert (FIXTURE / "NOTICE.md").read_text(encoding="utf-8") in notice
    assert (out / "hemorrhage_diagnosis.csv").read_bytes() == (
        FIXTURE / "hemorrhage_diagnosis.csv"
    ).read_bytes()
    with pytest.raises(FileExistsError):
        pack_dataset(FIXTURE, out)
    with pytest.raises(ValueError, match="size"):
        pack_dataset(FIXTURE, tmp_path / "tiny", size=16)


def test_shrunk_mask_survives_jpeg_and_the_readers_threshold(tmp_path: Path) -> None:
    mask = np.zeros((650, 650), dtype=np.uint8)
    mask[200:260, 300:330] = 255  # 60 x 30 px block
    mask[400, 400] = 255  # a lone pixel vanishes at half size
    small = shrink_mask(Image.fromarray(mask), SIZE)
    small.save(tmp_path / "m.jpg", format="JPEG", quality=95)
    back = np.asarray(Image.open(tmp_path / "m.jpg").convert("L")) > MASK_THRESHOLD
    np.testing.assert_array_equal(back, np.asarray(small) > 0)
    assert back.sum() == 30 * 15


def test_spacing_bounds_follow_the_image_width() -> None:
    # a 60 px "skull" would mean 2.5 mm a pixel: clamped to the widest field of view, 390 mm across
    for width in (650, 325):
        hu = np.zeros((1, width, width), dtype=np.float32)
        hu[0, 100:110, 10:70] = 1000.0
        assert estimate_pixel_spacing(hu) == pytest.approx(390.0 / width)
