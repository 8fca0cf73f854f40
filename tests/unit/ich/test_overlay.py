"""PNG overlays: decodable, the slice's size, brain-window grey, pure red exactly on the mask outline."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from ich.overlay import mask_outline, render_overlay, top_slice_indices


def _decode(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    assert image.mode == "RGB"
    return np.asarray(image)


def _is_red(rgb: np.ndarray) -> np.ndarray:
    return (rgb[..., 0] == 255) & (rgb[..., 1] == 0) & (rgb[..., 2] == 0)


def _phantom(height: int = 40, width: int = 56) -> np.ndarray:
    """HU ramp from -100 to 180 across columns: below, inside and above the brain window (0..80)."""
    return np.tile(np.linspace(-100.0, 180.0, width, dtype=np.float32), (height, 1))


def test_png_has_slice_size_and_brain_window_grey_without_mask() -> None:
    hu = _phantom()
    rgb = _decode(render_overlay(hu, np.zeros(hu.shape, dtype=bool)))
    assert rgb.shape == (40, 56, 3)  # rows x columns, not transposed
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    # Brain window L40 W80: HU <= 0 black, >= 80 white, 40 mid-grey.
    assert (rgb[hu <= 0.0] == 0).all()
    assert (rgb[hu >= 80.0] == 255).all()
    mid = np.round(np.clip(hu / 80.0, 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(rgb[..., 0], mid)
    assert not _is_red(rgb).any()


def test_red_pixels_exactly_on_the_outline() -> None:
    hu = _phantom()
    mask = np.zeros(hu.shape, dtype=bool)
    mask[10:20, 5:15] = True  # a rectangle over dark and bright columns
    mask[25:32, 40:52] = True
    mask[30:35, 44:47] = True  # overlaps the previous one: an L-shaped union
    rgb = _decode(render_overlay(hu, mask))

    # The contour worked out independently of scipy: mask pixels with a 4-neighbour outside the mask
    # (outside the image counts as outside).
    padded = np.pad(mask, 1)
    expected = np.zeros_like(mask)
    for r, c in zip(*np.nonzero(mask), strict=True):
        neighbours = (padded[r, c + 1], padded[r + 2, c + 1], padded[r + 1, c], padded[r + 1, c + 2])
        expected[r, c] = not all(neighbours)
    # Spot checks of the hand-drawn shapes: corners and edges are outline, centres are not.
    assert expected[10, 5] and expected[19, 14] and expected[15, 5] and not expected[15, 10]
    assert expected[34, 45] and not expected[30, 45] and expected[33, 44] and not expected[31, 44]
    np.testing.assert_array_equal(_is_red(rgb), expected)
    np.testing.assert_array_equal(mask_outline(mask), expected)

    # Inside the outline: tinted (red dominates) but not pure red; outside the mask: untouched grey.
    inner = mask & ~expected
    assert inner.any()
    assert (rgb[inner][:, 0] > rgb[inner][:, 1]).all()
    plain = _decode(render_overlay(hu, np.zeros_like(mask)))
    np.testing.assert_array_equal(rgb[~mask], plain[~mask])


def test_mask_on_the_border_is_closed_and_tint_zero_leaves_interior_grey() -> None:
    hu = np.full((12, 12), 40.0, dtype=np.float32)
    mask = np.zeros((12, 12), dtype=bool)
    mask[:5, :5] = True  # touches the top and left edges
    rgb = _decode(render_overlay(hu, mask, tint=0.0))
    red = _is_red(rgb)
    assert red[0, :5].all() and red[:5, 0].all() and red[4, :5].all() and red[:5, 4].all()
    assert not red[1:4, 1:4].any()
    assert (rgb[1:4, 1:4] == rgb[8, 8]).all()  # interior keeps the plain grey


def test_single_pixel_lesion_is_its_own_outline() -> None:
    hu = np.zeros((7, 9), dtype=np.float32)
    mask = np.zeros((7, 9), dtype=bool)
    mask[3, 4] = True
    red = _is_red(_decode(render_overlay(hu, mask)))
    assert red.sum() == 1 and red[3, 4]


@pytest.mark.parametrize(
    ("hu", "mask", "kwargs", "message"),
    [
        (np.zeros((4, 4)), np.zeros((4, 5), bool), {}, "mask_slice has shape"),
        (np.zeros((2, 4, 4)), np.zeros((2, 4, 4), bool), {}, r"\[H, W\]"),
        (np.full((4, 4), np.nan), np.zeros((4, 4), bool), {}, "finite"),
        (np.zeros((4, 4)), np.full((4, 4), 2), {}, "bool"),
        (np.zeros((4, 4)), np.zeros((4, 4), bool), {"tint": 1.0}, "tint"),
        (np.zeros((4, 4)), np.zeros((4, 4), bool), {"window": (40.0, 0.0)}, "width"),
    ],
)
def test_bad_input_is_a_clear_value_error(
    hu: np.ndarray, mask: np.ndarray, kwargs: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        render_overlay(hu, mask, **kwargs)


def test_top_slices_skip_empty_masks_and_rank_by_probability() -> None:
    mask = np.zeros((5, 4, 4), dtype=bool)
    for i in (0, 2, 3, 4):
        mask[i, 1, 1] = True
    prob = np.array([0.7, 0.99, 0.9, 0.7, 0.8], dtype=np.float32)  # slice 1 is likely but has no mask
    assert top_slice_indices(prob, mask, k=3) == [2, 4, 0]  # tie 0.7 between 0 and 3: lower index first
    assert top_slice_indices(prob, mask, k=10) == [2, 4, 0, 3]
    assert top_slice_indices(prob, np.zeros_like(mask), k=3) == []
    with pytest.raises(ValueError, match="N=5"):
        top_slice_indices(prob, mask[:4])
