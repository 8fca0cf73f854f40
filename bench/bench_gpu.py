"""The ensemble on one NVIDIA GPU: slices/s per batch size and per-study latency, written as JSON.

Run by ``bench/gpu.sh`` (which checks for the GPU and sets up the environment). The ensemble is the
repository's own, interpreted by ``ich.ensemble.EnsembleRunner`` as the embedded engine does, with
onnxruntime's TensorRT execution provider at FP16 (what Triton's onnxruntime backend runs with the GPU
repository's ``tensorrt`` accelerator, ``ich.gpu_repository``), falling back to the CUDA provider (FP32)
where TensorRT cannot be loaded; the JSON says which ran. Each batch size is warmed first (TensorRT builds
its engines then, cached in ``--cache``), then run for ``--seconds``. Per-study latency is the median of
``--repeats`` runs of a whole study (``--study-slices``, in batches of the largest size), host copies of
every output included.

    python -m bench.bench_gpu --out gpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BATCHES = (1, 2, 4, 8, 16, 32, 64)


def gpu_name() -> str:
    """What ``nvidia-smi`` calls GPU 0 (empty when it cannot tell)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.strip().splitlines()[0] if out.strip() else ""


def providers_for(kind: str, cache: Path) -> list[Any]:
    """The execution providers of ``kind`` (``tensorrt`` or ``cuda``), CUDA and CPU behind them."""
    cuda = ("CUDAExecutionProvider", {"device_id": "0"})
    if kind == "cuda":
        return [cuda, "CPUExecutionProvider"]
    trt = (
        "TensorrtExecutionProvider",
        {
            "device_id": "0",
            "trt_fp16_enable": "True",
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": str(cache),
            "trt_max_workspace_size": str(2 << 30),
        },
    )
    return [trt, cuda, "CPUExecutionProvider"]


def load_runner(root: Path, kinds: Sequence[str], cache: Path) -> tuple[Any, str]:
    """The ensemble on the first provider kind that loads; the runner and the kind."""
    import onnxruntime as ort

    from ich.ensemble import EnsembleRunner

    available = set(ort.get_available_providers())
    if "CUDAExecutionProvider" not in available:
        raise SystemExit(
            f"onnxruntime sees no CUDA provider (available: {sorted(available)}); install onnxruntime-gpu"
        )
    for kind in kinds:
        if kind == "tensorrt" and "TensorrtExecutionProvider" not in available:
            continue
        try:
            runner = EnsembleRunner.from_repository(root, providers=providers_for(kind, cache))
        except Exception as exc:  # a provider library that does not load: try the next kind
            sys.stderr.write(f"{kind} provider failed to load the ensemble: {exc}\n")
            continue
        session = runner._steps[0].session
        if session.get_providers()[0] != providers_for(kind, cache)[0][0]:
            sys.stderr.write(
                f"{kind} provider not used by onnxruntime (it fell back to {session.get_providers()})\n"
            )
            continue
        return runner, kind
    raise SystemExit(f"no GPU provider among {list(kinds)} could run the ensemble")


def measure(runner: Any, batches: Sequence[int], seconds: float) -> dict[str, float]:
    """Slices/s at each batch size (warmed first)."""
    size = runner.input_size
    rates: dict[str, float] = {}
    for batch in batches:
        images = np.random.default_rng(batch).random((batch, 4, size, size), dtype=np.float32)
        runner.run(images, batch_size=batch)
        runner.run(images, batch_size=batch)
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            runner.run(images, batch_size=batch)
            done += batch
        rates[str(batch)] = done / (time.perf_counter() - started)
        sys.stdout.write(f"batch {batch:3d}: {rates[str(batch)]:8.1f} slices/s\n")
        sys.stdout.flush()
    return rates


def study_latency(runner: Any, slices: int, batch: int, repeats: int) -> float:
    """Median seconds of the ensemble over one study of ``slices`` slices."""
    size = runner.input_size
    images = np.random.default_rng(slices).random((slices, 4, size, size), dtype=np.float32)
    runner.run(images, batch_size=batch)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        runner.run(images, batch_size=batch)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=PROJECT_ROOT / "model_repository")
    parser.add_argument("--out", type=Path, default=Path("gpu.json"))
    parser.add_argument("--batches", type=int, nargs="+", default=list(DEFAULT_BATCHES))
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per batch size")
    parser.add_argument("--study-slices", type=int, nargs="+", default=[40, 300])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--providers", nargs="+", default=["tensorrt", "cuda"], choices=["tensorrt", "cuda"])
    parser.add_argument("--cache", type=Path, default=Path("/tmp/ich-trt-cache"))
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point (``python -m bench.bench_gpu``)."""
    args = _parse_args(argv)
    args.cache.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    runner, kind = load_runner(args.repository.resolve(), args.providers, args.cache)
    # The repository's CPU limit (16) does not bind a GPU run: the runner batches within max_batch_size.
    runner.max_batch_size = max(runner.max_batch_size, *args.batches)
    rates = measure(runner, sorted(args.batches), args.seconds)
    best = max(args.batches)
    studies = {str(n): study_latency(runner, n, min(best, n), args.repeats) for n in args.study_slices}
    for n, seconds in studies.items():
        sys.stdout.write(f"study of {n} slices: {seconds * 1000:.1f} ms (median of {args.repeats})\n")
    result = {
        "gpu": gpu_name(),
        "provider": kind,
        "precision": "FP16" if kind == "tensorrt" else "FP32",
        "model_version": runner.model_version,
        "input_size": runner.input_size,
        "slices_per_s_by_batch": rates,
        "study_seconds": studies,
        "wall_s": time.perf_counter() - started,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    sys.stdout.write(f"wrote {args.out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
