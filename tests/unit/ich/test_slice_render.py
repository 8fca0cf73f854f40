"""Slice pictures: windows by name, captions burned into overlays, the mask read back from a stored SEG."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from ich.burn_in import NOT_FOR_CLINICAL_USE, slice_lines
from ich.overlay import render_overlay
from ich.seg import build_segmentation
from ich.slice_render import DISPLAY_WINDOWS, mask_from_seg, render_slice
from ich_devtools.dicom_writer import write_series

N, ROWS, COLUMNS = 4, 96, 128


def _decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _red(rgb: np.ndarray) -> np.ndarray:
    return (rgb[..., 0] == 255) & (rgb[..., 1] == 0) & (rgb[..., 2] == 0)


def _lesion() -> tuple[np.ndarray, np.ndarray]:
    hu = np.full((ROWS, COLUMNS), 30.0, dtype=np.float32)
    mask = np.zeros((ROWS, COLUMNS), dtype=bool)
    mask[60:80, 70:100] = True  # away from the caption (top left) and the marker (left edge)
    hu[mask] = 70.0
    return hu, mask


def test_slice_lines_count_from_one_and_round_the_probability() -> None:
    assert slice_lines(11, 31, 0.9261) == [NOT_FOR_CLINICAL_USE, "slice 12/31", "p=0.93"]
    assert slice_lines(0, 1) == [NOT_FOR_CLINICAL_USE, "slice 1/1"]
    with pytest.raises(ValueError, match="index"):
        slice_lines(31, 31)


def test_captioned_overlay_keeps_the_outline_and_writes_the_caption_top_left() -> None:
    hu, mask = _lesion()
    plain = _decode(render_overlay(hu, mask))
    captioned = _decode(render_overlay(hu, mask, lines=slice_lines(2, N, 0.91), right_marker="R"))
    changed = (plain != captioned).any(axis=2)
    assert changed[:40, :].any()  # the caption
    assert changed[40:56, :12].any()  # the marker, mid-height on the left edge
    assert not changed[56:, 12:].any()  # nothing over the lesion
    np.testing.assert_array_equal(_red(captioned), _red(plain))
    assert _red(plain).any()
    # A different slice number is a different picture: the caption is really drawn from the lines.
    other = _decode(render_overlay(hu, mask, lines=slice_lines(3, N, 0.91), right_marker="R"))
    assert not np.array_equal(other, captioned)


def test_render_slice_windows_and_optional_outline() -> None:
    hu, mask = _lesion()
    greys = {}
    for name in DISPLAY_WINDOWS:
        rgb = _decode(render_slice(hu, None, window=name))
        assert rgb.shape == (ROWS, COLUMNS, 3)
        assert not _red(rgb).any()
        greys[name] = (int(rgb[10, 10, 0]), int(rgb[70, 80, 0]))  # brain tissue, blood
    # 30 HU brain: brain window (40/80) 0.375, stroke (40/40) 0.25, bone (500/3000) about 0.34.
    assert greys["brain"] == (96, 223)
    assert greys["stroke"] == (64, 255)
    assert abs(greys["bone"][0] - 87) <= 1 and greys["bone"][1] - greys["bone"][0] <= 4
    outlined = _decode(render_slice(hu, mask, window="bone"))
    red = _red(outlined)
    assert red.any() and not red[~mask].any()
    with pytest.raises(ValueError, match="unknown window"):
        render_slice(hu, None, window="lung")


def test_the_mask_comes_back_from_the_seg_slice_by_slice(tmp_path: Path) -> None:
    hu = np.full((N, ROWS, COLUMNS), 30.0, dtype=np.float32)
    paths = write_series(hu, tmp_path, pixel_spacing_mm=(0.5, 0.5), slice_thickness_mm=5.0)
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    uids = [str(h.SOPInstanceUID) for h in headers]
    mask = np.zeros((N, ROWS, COLUMNS), dtype=bool)
    mask[1, 10:30, 40:60] = True
    mask[2, 50:55, 5:9] = True
    seg = build_segmentation(headers, mask, model_version="test")
    assert seg is not None
    buffer = io.BytesIO()
    seg.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()

    np.testing.assert_array_equal(mask_from_seg(data, uids, mask.shape), mask)
    # The slice order is the caller's: reversed UIDs give the reversed mask.
    np.testing.assert_array_equal(mask_from_seg(data, uids[::-1], mask.shape), mask[::-1])
    with pytest.raises(ValueError, match="shape"):
        mask_from_seg(data, uids, (N, ROWS, COLUMNS + 1))
    with pytest.raises(ValueError, match="cannot be read"):
        mask_from_seg(b"not a dicom file", uids, mask.shape)
