"""One slice of an analysed study as a captioned PNG, in a chosen window, with or without the mask outline.

What the viewer's slice images are made of (``GET /v1/studies/{id}/slices/{index}.png``): the HU slice
decoded from the stored study, the display window by name, the kept-lesion mask read back from the DICOM SEG
stored with the result (so the picture shows exactly the voxels the SEG and the volume count), the outline
and tint of :mod:`ich.overlay`, and the caption and orientation marker of :mod:`ich.burn_in`.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import highdicom as hd
import numpy as np

from ich.burn_in import burn_in
from ich.intake import Study
from ich.overlay import encode_png, overlay_rgb
from ich.preprocess import STRIPPED_WINDOW, WINDOWS

__all__ = ["DISPLAY_WINDOWS", "image_orientation", "mask_from_seg", "render_slice"]

#: Display windows by name: the three the models see (``ich.preprocess.WINDOWS``), brain first.
DISPLAY_WINDOWS: Mapping[str, tuple[float, float]] = {
    "brain": STRIPPED_WINDOW,
    "stroke": WINDOWS[0],
    "bone": WINDOWS[2],
}


def image_orientation(study: Study) -> Sequence[float] | None:
    """The chosen series' Image Orientation (Patient), or None when its headers were not kept or lack it.

    Slices of one chosen series share their orientation (intake groups by it), so the first header speaks
    for all.
    """
    if not study.source_headers:
        return None
    value = study.source_headers[0].get("ImageOrientationPatient")
    return None if value is None else [float(v) for v in value]


def mask_from_seg(
    seg_bytes: bytes, sop_instance_uids: Sequence[str], shape: tuple[int, int, int]
) -> np.ndarray:
    """The ``[N, H, W]`` bool mask a DICOM SEG holds, slice by slice in the order of ``sop_instance_uids``.

    Slices the SEG stores no frame for are empty (the service's SEGs omit empty frames).

    Raises:
        ValueError: not a readable SEG, or one whose frames do not fit the slices (other matrix, other
            instances).
    """
    try:
        seg = hd.seg.segread(io.BytesIO(seg_bytes))
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=list(sop_instance_uids),
            combine_segments=True,
            ignore_spatial_locations=True,
            assert_missing_frames_are_empty=True,
        )
    except Exception as exc:  # pydicom and highdicom raise many types for a malformed object
        raise ValueError(f"the stored SEG cannot be read for these slices ({type(exc).__name__})") from exc
    mask = np.asarray(pixels) > 0
    if mask.shape != tuple(shape):
        raise ValueError(f"the stored SEG has shape {mask.shape}, the slices {tuple(shape)}")
    return mask


def render_slice(
    hu_slice: np.ndarray,
    mask_slice: np.ndarray | None,
    *,
    window: str = "brain",
    lines: Sequence[str] = (),
    right_marker: str = "",
) -> bytes:
    """One slice as a PNG at its own matrix: the named window, the mask's red outline, the caption burned in.

    Args:
        hu_slice: ``[H, W]`` Hounsfield units.
        mask_slice: ``[H, W]`` bool mask to outline, or None for the plain slice.
        window: a name of :data:`DISPLAY_WINDOWS`.
        lines: caption lines (``ich.burn_in.slice_lines``).
        right_marker: the left edge's orientation letter (``ich.burn_in.left_edge_marker``).

    Raises:
        ValueError: an unknown window, or what ``ich.overlay.overlay_rgb`` refuses.
    """
    if window not in DISPLAY_WINDOWS:
        raise ValueError(f"unknown window {window!r}; known: {', '.join(DISPLAY_WINDOWS)}")
    hu = np.asarray(hu_slice)
    mask = np.zeros(hu.shape, dtype=bool) if mask_slice is None else np.asarray(mask_slice, dtype=bool)
    rgb = overlay_rgb(hu, mask, window=DISPLAY_WINDOWS[window])
    if lines or right_marker:
        rgb = burn_in(rgb, lines, right_marker=right_marker)
    return encode_png(rgb)
