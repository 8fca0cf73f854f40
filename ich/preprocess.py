"""HU volume -> model input: the one function training, evaluation and serving all call.

Channels (each scaled to [0, 1] by its window): stroke (L40 W40), brain (L40 W80), bone (L500 W3000) and
the brain window after deterministic skull stripping (``ich.skull``). Windows and the skull mask are computed
at the native resolution, then every channel is resized by area-style averaging (a box prefilter followed by
linear interpolation, scipy.ndimage) so the same slice always gives the same tensor, whatever the caller.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ich.skull import brain_mask

#: (level, width) of the three plain windows, in channel order.
WINDOWS: tuple[tuple[float, float], ...] = ((40.0, 40.0), (40.0, 80.0), (500.0, 3000.0))
#: Window used for the skull-stripped channel (the brain window).
STRIPPED_WINDOW: tuple[float, float] = (40.0, 80.0)


def apply_window(hu: np.ndarray, level: float, width: float) -> np.ndarray:
    """Map HU to [0, 1] with a display window (values outside are clipped)."""
    low = level - width / 2.0
    return np.clip((hu.astype(np.float32) - np.float32(low)) / np.float32(width), 0.0, 1.0)


def resize_channel(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a 2D float image to ``size x size`` deterministically.

    Downsizing by a large factor with plain interpolation aliases (stray bright pixels from bone edges);
    a box filter as wide as the zoom factor first approximates area averaging.
    """
    h, w = image.shape
    if (h, w) == (size, size):
        return image.astype(np.float32, copy=True)
    factor = max(h, w) / float(size)
    src = image.astype(np.float32)
    if factor > 1.5:
        src = ndimage.uniform_filter(src, size=round(factor), mode="nearest")
    out = ndimage.zoom(src, (size / h, size / w), order=1, mode="nearest", grid_mode=True)
    if out.shape != (size, size):  # zoom rounds the output shape; pin it exactly
        fixed = np.zeros((size, size), dtype=np.float32)
        fixed[: min(size, out.shape[0]), : min(size, out.shape[1])] = out[:size, :size]
        out = fixed
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def preprocess_slice(hu: np.ndarray, size: int) -> np.ndarray:
    """One [H, W] HU slice -> [4, size, size] float32 in [0, 1]."""
    channels = [apply_window(hu, level, width) for level, width in WINDOWS]
    stripped = apply_window(hu, *STRIPPED_WINDOW) * brain_mask(hu)
    channels.append(stripped.astype(np.float32))
    return np.stack([resize_channel(c, size) for c in channels])


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
    for i in range(arr.shape[0]):
        out[i] = preprocess_slice(arr[i], size)
    return out
