"""Text burned into exported pictures: what must stay with an image once it leaves the service.

A PNG preview or a key image travels on its own (a report, a slide, a PACS), without the JSON that explains
it, so the warning that it is not for clinical use, the slice it shows, its probability and which side is
the patient's right are written into the pixels.

The text is white with a black rim (readable over bone and over air) and every pixel it touches keeps
R = G (white, black and their blends over grey all do). Pure red (255, 0, 0), the mask outline of
``ich.overlay``, needs G = 0 with R = 255, so burned-in text never creates an outline pixel.

The orientation marker sits at the middle of the image's left edge. In the radiological convention (the
patient seen from the feet) that edge is the patient's right, so the marker is ``"R"``; an image whose rows
run towards the patient's right is mirrored and takes ``"L"`` (:func:`left_edge_marker` reads it from the
DICOM Image Orientation).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["NOT_FOR_CLINICAL_USE", "burn_in", "left_edge_marker", "slice_lines"]

#: The warning every exported picture carries.
NOT_FOR_CLINICAL_USE = "NOT FOR CLINICAL USE"
#: Text colour and its rim; both grey, so they never make pure red (see the module docstring).
_FILL: tuple[int, int, int] = (255, 255, 255)
_RIM: tuple[int, int, int] = (0, 0, 0)
#: Smallest font size in pixels; below it the text is no longer legible.
_MIN_FONT_PX = 8


def _font_px(height: int, width: int) -> int:
    """Font size for an image: about 1/32 of its shorter side (16 px on a 512 matrix)."""
    return max(_MIN_FONT_PX, round(min(height, width) / 32))


def burn_in(rgb: np.ndarray, lines: Sequence[str], *, right_marker: str = "R") -> np.ndarray:
    """Write text lines (top left) and an orientation marker (middle of the left edge) into an image.

    Args:
        rgb: ``[H, W, 3]`` uint8 image; left unchanged.
        lines: text lines drawn from the top-left corner down, e.g.
            ``["NOT FOR CLINICAL USE", "slice 12/31", "p=0.93"]``. Text wider than the image is cut at its
            edge rather than shrunk, so every picture of one study has the same type size.
        right_marker: the letter for the image's left edge (``"R"`` in the radiological convention, ``"L"``
            for a mirrored image, see :func:`left_edge_marker`); ``""`` draws no marker.

    Returns:
        A new ``[H, W, 3]`` uint8 array with the text drawn in.

    Raises:
        ValueError: on an image that is not ``[H, W, 3]`` uint8, or lines or marker that are not text on one
            line.
    """
    image = np.asarray(rgb)
    if image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise ValueError(f"rgb must be [H, W, 3], got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"rgb must be uint8, got {image.dtype}")
    texts = list(lines)
    for text in [*texts, right_marker]:
        if not isinstance(text, str):
            raise ValueError(f"lines and right_marker must be str, got {type(text).__name__}")
        if "\n" in text or "\r" in text:
            raise ValueError("each line must be a single line (no newline characters)")

    height, width = image.shape[:2]
    size = _font_px(height, width)
    font = ImageFont.load_default(size=size)
    rim = max(1, size // 8)
    margin = rim + max(2, size // 4)
    canvas = Image.fromarray(image, mode="RGB")
    draw = ImageDraw.Draw(canvas)
    y = margin
    for text in texts:
        draw.text((margin, y), text, fill=_FILL, font=font, stroke_width=rim, stroke_fill=_RIM)
        y += size + 2 * rim + 1
    if right_marker:
        draw.text(
            (margin, height / 2),
            right_marker,
            fill=_FILL,
            font=font,
            anchor="lm",
            stroke_width=rim,
            stroke_fill=_RIM,
        )
    return np.asarray(canvas, dtype=np.uint8).copy()


def left_edge_marker(image_orientation: Sequence[float] | None) -> str:
    """The patient side at an image's left edge, from its DICOM Image Orientation (Patient).

    The first three values are the direction cosines of a row (left to right on screen) in the patient
    system, whose x axis points to the patient's left (LPS). A row running towards the left (x > 0, the
    usual axial CT) starts at the patient's right: ``"R"``; one running towards the right starts at ``"L"``.
    A row without a left-right component (sagittal) or a missing orientation gives ``""``: no marker beats
    a wrong one.
    """
    if image_orientation is None:
        return ""
    values = [float(v) for v in image_orientation]
    if len(values) != 6 or not all(np.isfinite(values)):
        return ""
    x = values[0]
    if abs(x) < 0.5:
        return ""
    return "R" if x > 0 else "L"


def slice_lines(index: int, count: int, probability: float | None = None) -> list[str]:
    """The standard caption of one slice: the warning, ``slice k/N`` and ``p=0.93``.

    ``k`` counts from 1 as viewers do (the JSON's 0-based ``index`` plus one); the probability is the
    slice's fused probability, left out when None.

    Raises:
        ValueError: an index outside ``[0, count)``.
    """
    if not 0 <= index < count:
        raise ValueError(f"index must be in [0, {count}), got {index}")
    lines = [NOT_FOR_CLINICAL_USE, f"slice {index + 1}/{count}"]
    if probability is not None:
        lines.append(f"p={probability:.2f}")
    return lines
