"""A compact copy of a CT-ICH folder, for a machine that can receive only a few tens of megabytes.

The `device` machines receive the working tree and nothing else, at most 64 MiB, and CT-ICH's images are
92 MB of 650 x 650 JPEGs. A GPU run trains at 256 px, so the copy keeps the layout that
:mod:`training.data.ct_ich` reads (same folders, file names and CSVs) with each image shrunk to ``size``
pixels on its longer side (area averaging) and re-encoded as JPEG at ``quality``. Masks are thresholded as
the reader does (> 127), shrunk by area and thresholded at half, and saved at a high quality so that the
reader's threshold gives back the shrunk mask exactly.

What it changes, so that figures made from a pack say so: the two windows are shrunk before the reader
recovers HU from them (edges of bone and brain mix a little differently), a second JPEG loss is added,
and the reader's pixel spacing comes out larger in proportion (the skull is measured in the copy's pixels).
The pack carries the dataset's licence and a NOTICE saying it is derived and how.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from training.data.ct_ich import MASK_THRESHOLD, check_root, list_patients

logger = logging.getLogger(__name__)

__all__ = ["PackSummary", "add_arguments", "pack_dataset", "run", "shrink_image", "shrink_mask"]

#: Files at the dataset's root that travel unchanged (the licence must: CC BY 4.0).
_ROOT_FILES = ("hemorrhage_diagnosis.csv", "patient_demographics.csv", "LICENSE.txt", "README.txt")
_MASK_SUFFIX = "_HGE_Seg"
_MASK_QUALITY = 95


@dataclass(frozen=True)
class PackSummary:
    """What was written: counts and bytes, for the CLI to print."""

    patients: int
    images: int
    masks: int
    bytes: int


def _shrunk_size(width: int, height: int, size: int) -> tuple[int, int]:
    scale = min(1.0, size / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def shrink_image(image: Image.Image, size: int) -> Image.Image:
    """The 8-bit grey image with its longer side at most ``size`` pixels, averaged by area."""
    grey = image.convert("L")
    return grey.resize(_shrunk_size(*grey.size, size), Image.Resampling.BOX)


def shrink_mask(image: Image.Image, size: int) -> Image.Image:
    """The mask (white > 127) shrunk by area and thresholded at half: 0 or 255."""
    binary = (np.asarray(image.convert("L")) > MASK_THRESHOLD).astype(np.float32)
    shrunk = Image.fromarray(binary, mode="F").resize(
        _shrunk_size(image.width, image.height, size), Image.Resampling.BOX
    )
    return Image.fromarray(np.where(np.asarray(shrunk) >= 0.5, 255, 0).astype(np.uint8), mode="L")


def _pack_file(source: Path, target: Path, size: int, quality: int) -> bool:
    """Write the shrunk copy of one JPEG; True when it was a mask."""
    is_mask = source.stem.endswith(_MASK_SUFFIX)
    with Image.open(source) as image:
        small = shrink_mask(image, size) if is_mask else shrink_image(image, size)
    small.save(target, format="JPEG", quality=_MASK_QUALITY if is_mask else quality, optimize=True)
    return is_mask


def _notice(size: int, quality: int, source_notice: Path) -> str:
    lines = [
        "# A shrunk copy of CT-ICH, made by `ich-model pack`",
        "",
        f"Each image was shrunk to at most {size} px on its longer side (area averaging) and saved again",
        f"as JPEG at quality {quality}; masks were thresholded (> 127), shrunk and thresholded at half.",
        "Folders, file names and CSVs are unchanged. Made to carry the data set to a machine that receives",
        "little; figures made from this copy are not those of the full-size images.",
        "",
        "The data set's own notice follows; its licence (CC BY 4.0) is in LICENSE.txt.",
        "",
    ]
    original = source_notice.read_text(encoding="utf-8") if source_notice.is_file() else ""
    return "\n".join(lines) + original


def pack_dataset(root: Path, out: Path, size: int = 352, quality: int = 75) -> PackSummary:
    """Write the compact copy of the CT-ICH folder ``root`` into ``out`` (which must not exist yet)."""
    if size < 64 or not 1 <= quality <= 95:
        raise ValueError(f"size must be 64 px or more and quality 1-95, not {size} and {quality}")
    root = check_root(root)
    if out.exists():
        raise FileExistsError(f"{out} exists: pack into a new folder")
    images = masks = 0
    patients = list_patients(root)
    for pid in patients:
        for sub in ("brain", "bone"):
            folder = root / "Patients_CT" / pid / sub
            target = out / "Patients_CT" / pid / sub
            target.mkdir(parents=True)
            for source in sorted(folder.glob("*.jpg")) if folder.is_dir() else []:
                is_mask = _pack_file(source, target / source.name, size, quality)
                masks += is_mask
                images += not is_mask
    for name in _ROOT_FILES:
        if (root / name).is_file():
            shutil.copyfile(root / name, out / name)
    (out / "NOTICE.md").write_text(_notice(size, quality, root / "NOTICE.md"), encoding="utf-8")
    written = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    logger.info(
        "pack: %d patients, %d images, %d masks, %.1f MB", len(patients), images, masks, written / 1e6
    )
    return PackSummary(patients=len(patients), images=images, masks=masks, bytes=written)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``ich-model pack``'s arguments."""
    parser.add_argument("--data", type=Path, required=True, help="CT-ICH folder (with Patients_CT/)")
    parser.add_argument("--out", type=Path, required=True, help="new folder for the compact copy")
    parser.add_argument("--size", type=int, default=352, help="longer side of each image, px (default 352)")
    parser.add_argument("--quality", type=int, default=75, help="JPEG quality of the images (default 75)")


def run(args: argparse.Namespace) -> int:
    """Write the pack and print what it holds."""
    try:
        summary = pack_dataset(args.data, args.out, size=args.size, quality=args.quality)
    except (FileExistsError, ValueError) as exc:
        print(f"ich-model pack: error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{args.out}: {summary.patients} patients, {summary.images} images, {summary.masks} masks, "
        f"{summary.bytes / 2**20:.1f} MiB"
    )
    return 0
