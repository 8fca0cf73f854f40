"""Benchmark ``ich.preprocess.preprocess_volume`` and its stages on one study.

Prints the median wall time (ms) over ``--repeat`` runs of each stage -- windowing, skull stripping
(``ich.skull``), resizing of the four channels -- and of the whole ``preprocess_volume`` call. The study is
``--study PATH`` (a DICOM zip read with ``ich.intake.read_study``; default: the example study in
``examples/``) or, with ``--synthetic N``, a generated N-slice 512x512 head phantom.

    nice -n 10 .venv/bin/python bench/bench_preprocess.py --size 128 --repeat 5

To time another version of the code (e.g. before a change), put its ``ich`` package first on the path:
``git archive <commit> ich | tar -x -C /tmp/old && PYTHONPATH=/tmp/old .venv/bin/python bench/...``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ich import preprocess, skull

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_STUDY = PROJECT_ROOT / "examples" / "ct_ich_study.zip"


def phantom(slices: int, side: int = 512, seed: int = 0) -> np.ndarray:
    """A head-like HU volume: air, a bone ring, brain tissue with noise and a small hyperdense lesion."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side]
    r = np.hypot((yy - side / 2) / (0.42 * side), (xx - side / 2) / (0.36 * side))
    base = np.where(r < 0.92, 35.0, np.where(r < 1.0, 1000.0, np.where(r < 1.04, 20.0, -1000.0)))
    lesion = np.hypot(yy - side * 0.4, xx - side * 0.6) < side * 0.04
    hu = np.empty((slices, side, side), dtype=np.float32)
    for i in range(slices):
        hu[i] = base + np.where(lesion, 40.0, 0.0) + rng.normal(0.0, 8.0, (side, side))
    return hu


def _median_ms(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def _masks(hu: np.ndarray) -> np.ndarray:
    batch = getattr(skull, "brain_masks", None)  # older versions only have the per-slice function
    if batch is not None:
        return np.asarray(batch(hu))
    return np.stack([skull.brain_mask(s) for s in hu])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, default=DEFAULT_STUDY, help="DICOM study zip")
    parser.add_argument("--synthetic", type=int, default=0, help="use a generated phantom of N slices")
    parser.add_argument("--size", type=int, default=128, help="model input side S")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)

    if args.synthetic:
        hu = phantom(args.synthetic)
        source = f"phantom {args.synthetic} slices"
    else:
        from ich.intake import IntakeLimits, read_study

        hu = read_study(args.study.read_bytes(), IntakeLimits()).volume.hu
        source = str(args.study.name)
    windows = (*preprocess.WINDOWS, preprocess.STRIPPED_WINDOW)
    chans = [preprocess.apply_window(hu[i], *win) for i in range(min(len(hu), 8)) for win in windows]
    per_channel = len(hu) * len(windows) / len(chans)

    resizer = getattr(preprocess, "_resizer", None)  # the path preprocess_volume takes, where it exists
    if resizer is not None:
        resize = resizer(hu.shape[1], hu.shape[2], args.size)
        chans_t = [np.ascontiguousarray(c.T) for c in chans]

        def resize_all() -> object:
            return [resize(c) for c in chans_t]
    else:

        def resize_all() -> object:
            return [preprocess.resize_channel(c, args.size) for c in chans]

    rows = {
        "windows": _median_ms(lambda: [preprocess.apply_window(hu, *w) for w in windows], args.repeat),
        "skull": _median_ms(lambda: _masks(hu), args.repeat),
        "resize": per_channel * _median_ms(resize_all, args.repeat),
        "total": _median_ms(lambda: preprocess.preprocess_volume(hu, args.size), args.repeat),
    }
    print(f"{source}: {hu.shape[0]} x {hu.shape[1]}x{hu.shape[2]} -> S={args.size}, median of {args.repeat}")
    for name, ms in rows.items():
        print(f"  {name:8s} {ms:8.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
