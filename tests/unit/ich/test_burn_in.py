"""Burned-in text: where it says, never pure red, the input untouched, the marker from the orientation."""

from __future__ import annotations

import numpy as np
import pytest

from ich.burn_in import NOT_FOR_CLINICAL_USE, burn_in, left_edge_marker

LINES = [NOT_FOR_CLINICAL_USE, "slice 12/31", "p=0.93"]


def _grey(height: int = 512, width: int = 512, value: int = 90) -> np.ndarray:
    return np.full((height, width, 3), value, dtype=np.uint8)


def _changed(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    return (before != after).any(axis=2)


def test_text_lands_top_left_and_marker_on_the_left_edge_only() -> None:
    image = _grey()
    out = burn_in(image, LINES)
    assert out.shape == image.shape and out.dtype == np.uint8
    changed = _changed(image, out)
    # Three lines of ~16 px type from the top-left corner; nothing in the right half or the bottom quarter.
    assert changed[:80, :200].sum() > 500
    assert not changed[:, 300:].any()
    assert not changed[400:, :].any()
    # The marker sits at mid-height on the left edge.
    assert changed[240:272, :30].any()
    assert not changed[100:230, :].any()
    # Both the white text and its black rim are there.
    assert (out[changed] == 255).all(axis=1).any() and (out[changed] == 0).all(axis=1).any()


def test_input_is_left_unchanged() -> None:
    image = _grey()
    copy = image.copy()
    burn_in(image, LINES)
    np.testing.assert_array_equal(image, copy)


def test_text_never_makes_pure_red_and_keeps_red_and_green_equal() -> None:
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, size=(256, 256), dtype=np.uint8)
    image = np.repeat(grey[:, :, None], 3, axis=2)
    out = burn_in(image, LINES)
    changed = _changed(image, out)
    assert changed.any()
    assert (out[changed][:, 0] == out[changed][:, 1]).all()
    red = (out[..., 0] == 255) & (out[..., 1] == 0) & (out[..., 2] == 0)
    assert not red.any()


def test_different_text_draws_different_pixels() -> None:
    image = _grey()
    assert not np.array_equal(burn_in(image, ["slice 1/31"]), burn_in(image, ["slice 2/31"]))
    left = burn_in(image, [], right_marker="R")
    mirrored = burn_in(image, [], right_marker="L")
    assert not np.array_equal(left, mirrored)
    np.testing.assert_array_equal(burn_in(image, [], right_marker=""), image)


def test_small_images_get_legible_type_cut_at_the_edge() -> None:
    image = _grey(40, 56)
    out = burn_in(image, LINES)
    assert out.shape == (40, 56, 3)
    assert _changed(image, out).any()


@pytest.mark.parametrize(
    ("rgb", "lines", "marker", "message"),
    [
        (np.zeros((8, 8), dtype=np.uint8), [], "R", "shape"),
        (np.zeros((8, 8, 4), dtype=np.uint8), [], "R", "shape"),
        (np.zeros((8, 8, 3), dtype=np.float32), [], "R", "uint8"),
        (np.zeros((8, 8, 3), dtype=np.uint8), ["a\nb"], "R", "single line"),
        (np.zeros((8, 8, 3), dtype=np.uint8), [3], "R", "str"),
        (np.zeros((8, 8, 3), dtype=np.uint8), [], None, "str"),
    ],
)
def test_bad_arguments_raise_value_error(rgb: np.ndarray, lines: list, marker: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        burn_in(rgb, lines, right_marker=marker)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("orientation", "marker"),
    [
        ([1, 0, 0, 0, 1, 0], "R"),  # the usual axial CT: rows run towards the patient's left
        ([-1, 0, 0, 0, 1, 0], "L"),  # mirrored
        ([0.97, 0.26, 0, -0.26, 0.97, 0], "R"),  # rotated a little
        ([0, 1, 0, 0, 0, -1], ""),  # sagittal: no left-right along the rows
        (None, ""),
        ([1, 0, 0], ""),
        ([float("nan"), 0, 0, 0, 1, 0], ""),
    ],
)
def test_left_edge_marker_from_image_orientation(orientation: list[float] | None, marker: str) -> None:
    assert left_edge_marker(orientation) == marker
