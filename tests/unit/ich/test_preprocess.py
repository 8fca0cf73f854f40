"""Preprocessing: channel ranges, shapes, determinism, skull stripping keeps the brain."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ich.preprocess import WINDOWS, apply_window, preprocess_volume, resize_channel
from ich.skull import brain_mask
from training.data.ct_ich import read_dataset

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "ct_ich"


@pytest.fixture(scope="module")
def patient049():
    return read_dataset(FIXTURE, ["049"])[0]


def test_shapes_dtype_and_range(patient049) -> None:
    x = preprocess_volume(patient049.hu, 64)
    assert x.shape == (3, 4, 64, 64)
    assert x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0
    # every channel carries signal on a real slice
    assert all(x[1, c].std() > 0.01 for c in range(4))


def test_single_slice_and_non_square_input() -> None:
    hu = np.full((100, 80), 40.0)
    x = preprocess_volume(hu, 32)
    assert x.shape == (1, 4, 32, 32)
    # 40 HU sits at the middle of the stroke and brain windows
    assert np.allclose(x[0, 0], 0.5, atol=1e-5) and np.allclose(x[0, 1], 0.5, atol=1e-5)


def test_window_values() -> None:
    hu = np.array([[-1000.0, 20.0, 40.0, 60.0, 3000.0]])
    level, width = WINDOWS[0]
    w = apply_window(hu, level, width)
    assert w.tolist() == [[0.0, 0.0, 0.5, 1.0, 1.0]]
    bone = apply_window(hu, *WINDOWS[2])
    assert bone[0, 0] == 0.0 and bone[0, -1] == 1.0
    assert bone[0, 2] == pytest.approx((40 - (500 - 1500)) / 3000)


def test_deterministic(patient049) -> None:
    a = preprocess_volume(patient049.hu, 48)
    b = preprocess_volume(patient049.hu.copy(), 48)
    assert np.array_equal(a, b)


def test_int16_round_trip_is_identical(patient049) -> None:
    """Integer HU stored as int16 (as DICOM does) gives the identical tensor."""
    a = preprocess_volume(patient049.hu, 48)
    b = preprocess_volume(patient049.hu.astype(np.int16), 48)
    assert np.array_equal(a, b)


def test_skull_strip_keeps_brain_and_removes_bone(patient049) -> None:
    hu = patient049.hu[1]
    mask = brain_mask(hu)
    lesion = patient049.masks[1]
    assert lesion.sum() > 0
    # most hemorrhage pixels survive (epidural bleeds against bone may lose a few)
    assert (mask & lesion).sum() / lesion.sum() > 0.8
    assert not (mask & (hu >= 250)).any()
    # the mask is one compact region covering a plausible share of the image
    assert 0.1 < mask.mean() < 0.6


def test_skull_strip_on_empty_slice() -> None:
    assert not brain_mask(np.full((64, 64), -1000.0)).any()


def test_resize_exact_size_and_constant_preserved() -> None:
    img = np.full((650, 650), 0.25, dtype=np.float32)
    out = resize_channel(img, 128)
    assert out.shape == (128, 128)
    assert np.allclose(out, 0.25, atol=1e-6)


@pytest.mark.parametrize("bad", [np.zeros((2, 2, 2, 2)), np.zeros((0, 4, 4)), np.array([[np.nan, 0.0]])])
def test_bad_input_raises(bad) -> None:
    with pytest.raises(ValueError):
        preprocess_volume(bad, 16)
