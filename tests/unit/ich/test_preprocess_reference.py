"""The fast ``ich.skull`` and ``ich.preprocess`` must give exactly the output of the plain scipy formulation
the shipped models were trained on. The references below are that formulation, kept verbatim; any difference
in a single bit would change the model input, so the comparisons are exact (``np.array_equal``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from ich import preprocess, skull

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "ct_ich"
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


def _reference_resize(image: np.ndarray, size: int) -> np.ndarray:
    """The original ``resize_channel`` (full uniform_filter, then zoom)."""
    h, w = image.shape
    if (h, w) == (size, size):
        return image.astype(np.float32, copy=True)
    factor = max(h, w) / float(size)
    src = image.astype(np.float32)
    if factor > 1.5:
        src = ndimage.uniform_filter(src, size=round(factor), mode="nearest")
    out = ndimage.zoom(src, (size / h, size / w), order=1, mode="nearest", grid_mode=True)
    if out.shape != (size, size):
        fixed = np.zeros((size, size), dtype=np.float32)
        fixed[: min(size, out.shape[0]), : min(size, out.shape[1])] = out[:size, :size]
        out = fixed
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _reference_preprocess(hu: np.ndarray, size: int) -> np.ndarray:
    """The original per-slice ``preprocess_volume`` loop."""
    out = []
    for s in np.asarray(hu):
        channels = [preprocess.apply_window(s, level, width) for level, width in preprocess.WINDOWS]
        stripped = preprocess.apply_window(s, *preprocess.STRIPPED_WINDOW) * _reference_brain_mask(s)
        channels.append(stripped.astype(np.float32))
        out.append(np.stack([_reference_resize(c, size) for c in channels]))
    return np.stack(out)


@pytest.mark.parametrize("size", [128, 256, 100])
def test_preprocess_volume_equals_reference_on_fixture(size: int) -> None:
    hu = _fixture_slices()
    fast = preprocess.preprocess_volume(hu, size)
    ref = _reference_preprocess(hu, size)
    assert fast.dtype == ref.dtype and fast.shape == ref.shape
    assert np.array_equal(fast, ref) and fast.tobytes() == ref.tobytes()  # bits, not just values
    assert fast[:, 3].max() > 0.5  # not vacuous: the stripped channel carries the brain


def test_preprocess_volume_equals_reference_on_odd_shapes_and_dtypes() -> None:
    s = _fixture_slices()[3]
    cases = [
        (s[:, 50:-70], 128),  # non-square
        (s[::5, ::5], 128),  # upsampling, no box filter
        (s[:200, :190], 128),  # factor below 1.5
        (s[:128, :128], 128),  # already at size
        (np.round(s[None]).astype(np.int16), 64),
        (s.astype(np.float64)[None] + 0.3, 97),
        (np.full((2, 40, 40), -1000.0), 16),
    ]
    for hu, size in cases:
        assert np.array_equal(
            preprocess.preprocess_volume(hu, size),
            _reference_preprocess(hu if hu.ndim == 3 else hu[None], size),
        ), (hu.shape, size)
    image = np.random.default_rng(3).random((173, 211)).astype(np.float32)
    for size in (16, 64, 100, 173, 300):
        assert np.array_equal(preprocess.resize_channel(image, size), _reference_resize(image, size)), size
