"""Which slices' base-model maps the scoring reads, so a remote engine fetches those and no others.

The result needs each member's slice probability (``PROB_MAX``, computed inside the ensemble) everywhere,
but the five full maps (``PROB_<KEY>``, 500 kB a slice at 160 px) only where ``ich.scoring`` looks at their
pixels: the candidate lesions (FUSED above the mask threshold: their agreement and spread) and the slice
with the highest SLICE_PROB (the spread when there is no candidate). A test fills every other slice with
noise and checks that the findings do not change, so a scoring change that reads further fails there.
"""

from __future__ import annotations

import numpy as np

from ich import spec

__all__ = ["slices_needing_maps"]


def slices_needing_maps(fused: np.ndarray, slice_prob: np.ndarray) -> np.ndarray:
    """Sorted indices of the slices whose member maps the scoring reads.

    Args:
        fused: ``[N, 1, S, S]`` (or ``[N, S, S]``) the fused map.
        slice_prob: ``[N]`` the slice probabilities.

    Returns:
        int64 indices: every slice holding a candidate pixel, and the slice of the highest SLICE_PROB.
    """
    arr = np.asarray(fused)
    n = int(arr.shape[0])
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    candidates = np.asarray((arr.reshape(n, -1) > np.float32(spec.MASK_THRESHOLD)).any(axis=1), dtype=bool)
    candidates[int(np.argmax(np.asarray(slice_prob).reshape(-1)))] = True
    return np.flatnonzero(candidates).astype(np.int64)
