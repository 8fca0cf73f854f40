"""The fast skull stripping in ``ich.skull`` must give exactly the masks of the plain scipy formulation the
shipped models were trained on. The reference below is that formulation, kept verbatim; any difference in a
single pixel would change the model input, so the comparisons are exact (``np.array_equal``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from ich import skull

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "ct_ich"
_CROSS = ndimage.generate_binary_structure(2, 1)


def _reference_brain_mask(hu: np.ndarray) -> np.ndarray:
    """The original ``brain_mask`` (scipy morphology, label, sum_labels, fill_holes)."""
    side = max(hu.shape)
    tissue = (hu >= skull.TISSUE_HU[0]) & (hu <= skull.TISSUE_HU[1])
    bone_it = max(1, round(3 * side / 650))
    erode_it = max(1, round(6 * side / 650))
    dilated = ndimage.binary_dilation(hu >= skull.BONE_HU, _CROSS, iterations=bone_it)
    candidate = tissue & ~dilated
    core = ndimage.binary_erosion(candidate, _CROSS, iterations=erode_it)
    labels, count = ndimage.label(core)
    if count == 0:
        return np.zeros(hu.shape, dtype=bool)
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, count + 1))
    largest = labels == (int(np.argmax(sizes)) + 1)
    grown = ndimage.binary_dilation(largest, _CROSS, iterations=erode_it) & candidate
    return np.asarray(ndimage.binary_fill_holes(grown), dtype=bool)


def _fixture_slices() -> np.ndarray:
    ct_ich = pytest.importorskip("training.data.ct_ich")
    return np.concatenate([ct_ich.read_patient(FIXTURE, pid).hu for pid in ("049", "081")])


def test_brain_mask_equals_scipy_reference_on_fixture_slices() -> None:
    hu = _fixture_slices()
    masks = skull.brain_masks(hu)
    assert masks.shape == hu.shape and masks.dtype == bool
    for i, s in enumerate(hu):
        ref = _reference_brain_mask(s)
        assert np.array_equal(skull.brain_mask(s), ref)
        assert np.array_equal(masks[i], ref)
    assert any(m.sum() > 0.05 * m.size for m in masks)  # not vacuous: real brains are found


def test_brain_mask_equals_reference_on_cropped_and_edge_slices() -> None:
    slices = _fixture_slices()
    s = slices[len(slices) // 2]
    cases = [
        s[:, 40:-60],  # non-square
        s[100:300, 100:400],  # brain cut by the image border: erosion at the edge matters
        s[::9, ::9],  # tiny, radius 1
        np.full((64, 80), -1000.0),
        np.full((50, 50), 1500.0),
        np.full((30, 30), 40.0),
        np.full((1, 7), 40.0),
    ]
    for hu in cases:
        assert np.array_equal(skull.brain_mask(hu), _reference_brain_mask(hu)), hu.shape


def test_brain_mask_equals_reference_on_random_tissue_with_holes() -> None:
    rng = np.random.default_rng(7)
    for _ in range(40):
        h, w = (int(v) for v in rng.integers(8, 160, 2))
        hu = ndimage.gaussian_filter(rng.normal(40.0, 300.0, (h, w)), float(rng.uniform(0.5, 3.0)))
        assert np.array_equal(skull.brain_mask(hu), _reference_brain_mask(hu))


@pytest.mark.parametrize("iterations", [1, 2, 5])
def test_morphology_helpers_equal_scipy(iterations: int) -> None:
    rng = np.random.default_rng(iterations)
    for _ in range(60):
        h, w = (int(v) for v in rng.integers(1, 48, 2))
        m = rng.random((h, w)) < rng.uniform(0.1, 0.9)
        dil = ndimage.binary_dilation(m, _CROSS, iterations=iterations)
        ero = ndimage.binary_erosion(m, _CROSS, iterations=iterations)
        assert np.array_equal(skull._dilate_cross(m[None], iterations)[0], dil)
        assert np.array_equal(skull._erode_cross(m[None], iterations)[0], ero)
        assert np.array_equal(skull._fill_holes(m), ndimage.binary_fill_holes(m))
        assert np.array_equal(skull._fill_holes(ero), ndimage.binary_fill_holes(ero))


def test_brain_masks_rejects_wrong_rank() -> None:
    with pytest.raises(ValueError):
        skull.brain_masks(np.zeros((4, 4)))
    with pytest.raises(ValueError):
        skull.brain_mask(np.zeros((2, 4, 4)))
