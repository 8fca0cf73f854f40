"""HU volume -> model input: the one function training, evaluation and serving all call.

Channels (each scaled to [0, 1] by its window): stroke (L40 W40), brain (L40 W80), bone (L500 W3000) and
the brain window after deterministic skull stripping (``ich.skull``). Windows and the skull mask are computed
at the native resolution, then every channel is resized by area-style averaging (a box prefilter followed by
linear interpolation, scipy.ndimage) so the same slice always gives the same tensor, whatever the caller.

The shipped models were trained on the exact output of the plain formulation (``uniform_filter`` then
``zoom`` per channel). The resize below gives the same bits with less work: ``uniform_filter`` is two 1D
passes (axis 0, then axis 1, each rounded to float32); the axis-0 pass runs on a transposed contiguous copy
(same lines, same arithmetic, no strided access) and the axis-1 pass only on the rows the linear zoom reads
with a non-zero weight; the other rows are left at zero, which multiplies a zero weight to the same sum.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np
from scipy import ndimage

from ich.skull import brain_masks

#: (level, width) of the three plain windows, in channel order.
WINDOWS: tuple[tuple[float, float], ...] = ((40.0, 40.0), (40.0, 80.0), (500.0, 3000.0))
#: Window used for the skull-stripped channel (the brain window).
STRIPPED_WINDOW: tuple[float, float] = (40.0, 80.0)
#: Slices processed together: bounds the temporary arrays (a few bytes per pixel each) for long series.
_CHUNK: int = 16
#: Columns of the identity probed at once by ``_read_rows``.
_PROBE_BLOCK: int = 256


def apply_window(hu: np.ndarray, level: float, width: float) -> np.ndarray:
    """Map HU to [0, 1] with a display window (values outside are clipped)."""
    low = level - width / 2.0
    return np.clip((hu.astype(np.float32) - np.float32(low)) / np.float32(width), 0.0, 1.0)


def _window_into(hu32: np.ndarray, level: float, width: float, out: np.ndarray) -> np.ndarray:
    """``apply_window`` on float32 HU, written into ``out`` (same float32 operations, no temporaries)."""
    low = level - width / 2.0
    np.subtract(hu32, np.float32(low), out=out)
    np.divide(out, np.float32(width), out=out)
    return np.clip(out, 0.0, 1.0, out=out)


@lru_cache(maxsize=64)
def _read_rows(length: int, size: int) -> np.ndarray:
    """Indices along an axis of ``length`` that ``ndimage.zoom`` (order 1, grid mode) reads to ``size``.

    Found by zooming the identity along that axis only (in blocks of columns, to bound memory): column ``r``
    of the result is the weight row ``r`` gets at every output position, so rows with no non-zero weight
    never influence the output.
    """
    used = np.zeros(length, dtype=bool)
    for start in range(0, length, _PROBE_BLOCK):
        block = min(_PROBE_BLOCK, length - start)
        probe = np.zeros((length, block))
        probe[np.arange(start, start + block), np.arange(block)] = 1.0
        weights = ndimage.zoom(
            probe, (size / length, 1.0), order=1, mode="nearest", grid_mode=True, prefilter=False
        )
        used[start : start + block] = np.any(weights != 0.0, axis=0)
    return np.flatnonzero(used)


class _BoxFilter:
    """``ndimage.uniform_filter(src, k, mode="nearest")`` at the rows a zoom of axis 0 to ``size`` reads.

    Takes the image transposed (``src.T``, C-contiguous float32) so the axis-0 pass runs along contiguous
    lines, and returns [H, W] with the other rows zero. Bit-identical on the rows it fills to the full filter:
    the same two 1D passes in the same order, each rounded to float32. Its buffers are reused for every
    channel of a call: fresh megabyte arrays cost page faults each time. The returned array is one of them,
    valid until the next call.
    """

    def __init__(self, h: int, w: int, k: int, size: int) -> None:
        self.k = k
        self.rows = _read_rows(h, size)
        self.all_rows = len(self.rows) == h  # e.g. halving: then filter straight into the result
        self.along0 = np.empty((w, h), dtype=np.float32)
        self.filtered = np.empty((len(self.rows), w), dtype=np.float32)
        self.full = np.zeros((h, w), dtype=np.float32)

    def __call__(self, src_t: np.ndarray) -> np.ndarray:
        ndimage.uniform_filter1d(src_t, self.k, axis=1, output=self.along0, mode="nearest")
        if self.all_rows:
            picked = np.ascontiguousarray(self.along0.T)
            ndimage.uniform_filter1d(picked, self.k, axis=1, output=self.full, mode="nearest")
            return self.full
        picked = np.ascontiguousarray(self.along0.T[self.rows])
        ndimage.uniform_filter1d(picked, self.k, axis=1, output=self.filtered, mode="nearest")
        self.full[self.rows] = self.filtered
        return self.full


def _resizer(h: int, w: int, size: int) -> Callable[[np.ndarray], np.ndarray]:
    """A function mapping one C-contiguous float32 image given transposed ([W, H]) to ``size x size``.

    Equals ``resize_channel(image_t.T, size)``; built once per image shape so buffers are reused.
    """
    factor = max(h, w) / float(size)
    box = _BoxFilter(h, w, round(factor), size) if factor > 1.5 else None

    def resize(image_t: np.ndarray) -> np.ndarray:
        if (h, w) == (size, size):
            return image_t.T.copy()
        src = box(image_t) if box is not None else np.ascontiguousarray(image_t.T)
        out = ndimage.zoom(src, (size / h, size / w), order=1, mode="nearest", grid_mode=True)
        if out.shape != (size, size):  # zoom rounds the output shape; pin it exactly
            fixed = np.zeros((size, size), dtype=np.float32)
            fixed[: min(size, out.shape[0]), : min(size, out.shape[1])] = out[:size, :size]
            out = fixed
        return np.clip(out, 0.0, 1.0, out=out)

    return resize


def resize_channel(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a 2D float image to ``size x size`` deterministically.

    Downsizing by a large factor with plain interpolation aliases (stray bright pixels from bone edges);
    a box filter as wide as the zoom factor first approximates area averaging.
    """
    h, w = np.shape(image)
    return _resizer(h, w, size)(np.ascontiguousarray(np.asarray(image).T, dtype=np.float32))


def _windows_transposed(hu: np.ndarray) -> np.ndarray:
    """[N, H, W] HU -> [N, 4, W, H] float32 windows at native resolution, the last one skull-stripped.

    Transposed (per-pixel identical values) because the resize's first, axis-0 pass is fastest along
    contiguous lines; one transpose of the HU replaces one per channel.
    """
    hu32_t = np.ascontiguousarray(np.asarray(hu, dtype=np.float32).transpose(0, 2, 1))
    out = np.empty((hu.shape[0], len(WINDOWS) + 1, *hu32_t.shape[1:]), dtype=np.float32)
    for c, (level, width) in enumerate(WINDOWS):
        _window_into(hu32_t, level, width, out[:, c])
    brain = WINDOWS.index(STRIPPED_WINDOW)
    np.multiply(out[:, brain], brain_masks(hu).transpose(0, 2, 1), out=out[:, -1])
    return out


def preprocess_slice(hu: np.ndarray, size: int) -> np.ndarray:
    """One [H, W] HU slice -> [4, size, size] float32 in [0, 1]."""
    h, w = np.shape(hu)
    resize = _resizer(h, w, size)
    return np.stack([resize(c) for c in _windows_transposed(hu[None])[0]])


def preprocess_volume(hu: np.ndarray, size: int) -> np.ndarray:
    """Turn HU slices into the models' input tensor.

    Args:
        hu: [N, H, W] (or a single [H, W] slice) Hounsfield units, any float or int dtype.
        size: model input side S (pixels).

    Returns:
        [N, 4, S, S] float32 in [0, 1]; channels: stroke, brain, bone, skull-stripped brain.

    Raises:
        ValueError: on a wrong rank, an empty volume, a non-positive size or non-finite values.
    """
    arr = np.asarray(hu)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0 or arr.shape[2] == 0:
        raise ValueError(f"expected HU of shape [N, H, W] or [H, W], got {np.asarray(hu).shape}")
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    if not np.issubdtype(arr.dtype, np.number) or not np.all(np.isfinite(arr)):
        raise ValueError("HU values must be finite numbers")
    out = np.empty((arr.shape[0], 4, size, size), dtype=np.float32)
    resize = _resizer(arr.shape[1], arr.shape[2], size)
    for start in range(0, arr.shape[0], _CHUNK):
        chunk = _windows_transposed(arr[start : start + _CHUNK])
        for i, channels in enumerate(chunk, start):
            for c, channel in enumerate(channels):
                out[i, c] = resize(channel)
    return out
