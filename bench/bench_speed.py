"""One run, side by side: how fast the ensemble is on this machine, against what the machine can do.

Each section prints as soon as it is measured, and the end prints one table (Markdown) with every figure:

1. ``machine``: cores, the CPU's vector extensions (AVX-512, VNNI, BF16, AMX), and the matrix-multiply
   GFLOP/s of onnxruntime's own GEMM here (float32, 1024 x 1024, all intra-op threads): the practical peak.
2. ``flops``: FLOPs per slice of each model of the ensemble, counted from the ONNX graphs
   (``bench.onnx_flops``: Conv, ConvTranspose, MatMul, Gemm; the flip averaging inside counts twice).
3. ``engines``: slices/s of the whole ensemble through the embedded engine (``ICH_EMBEDDED_BATCH_SIZE``
   slices a run, warmed), a local CPU Triton started here (the Triton engine's compact answer; its
   python-backend runners use one thread a model), and the same five networks in torch eager (random
   weights of the shipped architecture: the FLOPs are the same), each with its achieved GFLOP/s and its
   share of the matrix-multiply peak.
4. ``end to end``: a real ``ich-serve`` (embedded engine) started here; the first request after
   ``/readyz`` (cold) against the warm median at the smallest size, then the warm median per study size
   (default 30, 120, 300 slices of 512 x 512), the gateway's own share (the server's total minus its
   inference, over its total), and the server's peak RSS (``VmHWM``) per size.

``--quick`` measures the same things with fewer slices and repeats and only the smallest study (under two
minutes on two quiet cores). Figures are only as good as the machine is quiet: run it alone.

    .venv/bin/python -m bench.bench_speed              # the full table
    .venv/bin/python -m bench.bench_speed --quick      # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.bench_hardening import gateway_settings, reset_peak, synthetic_study
from bench.onnx_flops import graph_flops
from ich import repository, spec
from ich_devtools.local_gateway import running_gateway
from ich_devtools.processes import resident_mib

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REPOSITORY = PROJECT_ROOT / "model_repository"
_CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


@dataclass
class Figures:
    """Everything one run measured (``--json`` writes it)."""

    machine: dict[str, Any] = field(default_factory=dict)
    flops_per_slice: dict[str, int] = field(default_factory=dict)
    engines: dict[str, dict[str, float]] = field(default_factory=dict)
    end_to_end: dict[str, Any] = field(default_factory=dict)

    @property
    def ensemble_flops(self) -> int:
        return sum(self.flops_per_slice.values())


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def timed(fn: Callable[[], object], repeats: int) -> list[float]:
    """Wall seconds of ``repeats`` calls of ``fn``."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


# ------------------------------------------------------------------------------------------ machine


def cpu_flags() -> list[str]:
    """The vector extensions of ``_CPU_FLAGS`` this CPU reports (/proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    present = set(line.split(":", 1)[-1].split())
    return [flag for flag in _CPU_FLAGS if flag in present]


def matmul_gflops(size: int = 1024, seconds: float = 3.0) -> float:
    """GFLOP/s of onnxruntime's float32 GEMM (one MatMul graph), the best of runs over ``seconds``."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "matmul",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [size, size]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [size, size]),
        ],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [size, size])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {"a": rng.random((size, size), dtype=np.float32), "b": rng.random((size, size), dtype=np.float32)}
    session.run(None, feeds)
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        best = min(best, timed(lambda: session.run(None, feeds), 1)[0])
    return 2.0 * size**3 / best / 1e9


def measure_machine(figures: Figures, quick: bool) -> None:
    import onnxruntime as ort

    figures.machine = {
        "cores": os.cpu_count(),
        "cpu_flags": cpu_flags(),
        "onnxruntime": ort.__version__,
        "matmul_gflops": matmul_gflops(seconds=1.5 if quick else 4.0),
    }
    m = figures.machine
    say(
        f"machine: {m['cores']} cores, {' '.join(m['cpu_flags']) or 'no AVX flags seen'}; onnxruntime "
        f"{m['onnxruntime']}; float32 matrix multiply {m['matmul_gflops']:.1f} GFLOP/s"
    )


# ------------------------------------------------------------------------------------------ flops


def measure_flops(figures: Figures, root: Path) -> None:
    ensemble = repository.read_config(repository.config_path(root, spec.ENSEMBLE_MODEL))
    for name in repository.ensemble_step_models(ensemble):
        figures.flops_per_slice[name] = graph_flops(repository.step_model_file(root, name))
    parts = ", ".join(f"{name} {flops / 1e9:.3f}" for name, flops in figures.flops_per_slice.items())
    say(f"flops: {figures.ensemble_flops / 1e9:.2f} GFLOP per slice for the ensemble ({parts} GFLOP)")


# ------------------------------------------------------------------------------------------ engines


def _images(n: int, size: int) -> np.ndarray:
    return np.random.default_rng(0).random((n, spec.IN_CHANNELS, size, size), dtype=np.float32)


def _record(figures: Figures, engine: str, slices: int, seconds: Sequence[float]) -> None:
    rate = slices / statistics.median(seconds)
    gflops = rate * figures.ensemble_flops / 1e9
    peak = figures.machine.get("matmul_gflops") or float("nan")
    figures.engines[engine] = {"slices_per_s": rate, "gflops": gflops, "of_matmul_peak": gflops / peak}
    say(
        f"engine {engine}: {rate:.1f} slices/s, {gflops:.1f} GFLOP/s = {100 * gflops / peak:.0f}% of the peak"
    )


def measure_embedded(figures: Figures, root: Path, slices: int, repeats: int) -> None:
    from api.settings import Settings
    from ich.ensemble import EnsembleRunner

    batch = Settings().embedded_batch_size
    runner = EnsembleRunner.from_repository(root)
    runner.warm_up(batch)
    images = _images(slices, runner.input_size)
    _record(figures, "embedded", slices, timed(lambda: runner.run(images, batch_size=batch), repeats))


def measure_triton(figures: Figures, root: Path, slices: int, repeats: int) -> None:
    from api.engines.triton import TritonEngine
    from ich_devtools.triton_local import LocalTriton, TritonStartError

    input_size = repository.input_size_of(
        repository.read_config(repository.config_path(root, spec.ENSEMBLE_MODEL))
    )
    server = LocalTriton.on_reserved_ports(root)
    try:
        server.start(300.0)
    except TritonStartError as exc:
        say(f"engine triton: not measured ({exc})")
        return

    async def run() -> list[float]:
        engine = TritonEngine(server.grpc_url, input_size=input_size, timeout_s=600.0)
        images = _images(slices, input_size)
        try:
            await engine.warm_up()
            await engine.infer(images[: min(slices, 4)])
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                await engine.infer(images)
                times.append(time.perf_counter() - started)
            return times
        finally:
            await engine.close()

    try:
        _record(figures, "triton", slices, asyncio.run(run()))
    finally:
        server.stop()


def measure_torch(figures: Figures, root: Path, slices: int, repeats: int) -> None:
    """One of the five networks timed, the ensemble's rate a fifth of it (the five share one architecture)."""
    try:
        import torch

        from training.networks import InceptionUNet
    except ImportError as exc:
        say(f"engine torch: not measured ({exc})")
        return
    size = repository.input_size_of(repository.read_config(repository.config_path(root, spec.ENSEMBLE_MODEL)))
    net = InceptionUNet(flip_tta=True).eval()
    x = torch.from_numpy(_images(slices, size))

    def run() -> None:
        with torch.inference_mode():
            for start in range(0, slices, 4):
                net(x[start : start + 4])

    run()
    seconds = [len(spec.MODEL_KEYS) * t for t in timed(run, repeats)]
    _record(figures, "torch eager", slices, seconds)


# ------------------------------------------------------------------------------------------ end to end


def _post(client: httpx.Client, body: bytes) -> tuple[float, dict[str, float]]:
    started = time.perf_counter()
    response = client.post("/v1/cases", content=body, headers={"content-type": "application/zip"})
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise SystemExit(f"ich-serve answered {response.status_code}: {response.text[:300]}")
    timing: dict[str, float] = response.json()["timing_ms"]
    return elapsed, timing


def _study_figures(runs: list[tuple[float, dict[str, float]]], peak_mib: float) -> dict[str, float]:
    client = statistics.median(r[0] for r in runs)
    total = statistics.median(r[1]["total"] for r in runs) / 1000.0
    inference = statistics.median(r[1]["inference"] for r in runs) / 1000.0
    stages = {s: statistics.median(r[1][s] for r in runs) for s in ("decode", "preprocess", "aggregate")}
    return {
        "client_s": client,
        "server_s": total,
        "inference_s": inference,
        "gateway_share": (total - inference) / total if total > 0 else float("nan"),
        **{f"{s}_ms": v for s, v in stages.items()},
        "peak_rss_mib": peak_mib,
    }


def measure_end_to_end(figures: Figures, root: Path, sizes: Sequence[int], repeats: int) -> None:
    bodies = {n: synthetic_study(n) for n in sizes}
    with tempfile.TemporaryDirectory(prefix="ich-bench-speed-") as tmp:
        log, settings = Path(tmp) / "ich-serve.log", gateway_settings(root, Path(tmp) / "data")
        started = time.perf_counter()
        with running_gateway(log, settings, timeout_s=300.0, error=SystemExit) as gateway:
            ready_s = time.perf_counter() - started
            with httpx.Client(base_url=gateway.url, timeout=900.0) as client:
                cold = _post(client, bodies[sizes[0]])
                figures.end_to_end = {"start_to_ready_s": ready_s, "cold_s": cold[0], "sizes": {}}
                for n in sizes:
                    reset_peak(gateway.pid)
                    runs = [_post(client, bodies[n]) for _ in range(repeats)]
                    figures.end_to_end["sizes"][str(n)] = _study_figures(
                        runs, resident_mib(gateway.pid, peak=True)
                    )
                    _say_size(n, figures.end_to_end["sizes"][str(n)])
    e2e = figures.end_to_end
    warm = e2e["sizes"][str(sizes[0])]["client_s"]
    e2e["cold_over_warm"] = e2e["cold_s"] / warm
    say(
        f"end to end: ready {e2e['start_to_ready_s']:.1f} s after start; first request {e2e['cold_s']:.2f} s "
        f"against {warm:.2f} s warm ({e2e['cold_over_warm']:.2f}x) at {sizes[0]} slices"
    )


def _say_size(n: int, f: dict[str, float]) -> None:
    say(
        f"end to end {n} slices: {f['client_s']:.2f} s at the client, {f['server_s']:.2f} s in the server "
        f"({f['inference_s']:.2f} s inference; gateway's own share {100 * f['gateway_share']:.1f}%: decode "
        f"{f['decode_ms']:.0f} ms, preprocess {f['preprocess_ms']:.0f} ms mostly beside inference, aggregate "
        f"{f['aggregate_ms']:.0f} ms), peak RSS {f['peak_rss_mib']:.0f} MiB"
    )


# ------------------------------------------------------------------------------------------ table


def table(figures: Figures, command: str) -> str:
    """The figures as one Markdown table (what the README carries), with the command that made them."""
    m = figures.machine
    rows = [
        ("machine", f"{m.get('cores')} cores, {' '.join(m.get('cpu_flags', []))}"),
        ("float32 matrix multiply (onnxruntime)", f"{m.get('matmul_gflops', float('nan')):.1f} GFLOP/s"),
        ("ensemble FLOPs per slice (ONNX graphs)", f"{figures.ensemble_flops / 1e9:.2f} GFLOP"),
    ]
    for engine, f in figures.engines.items():
        share = 100 * f["of_matmul_peak"]
        rows.append(
            (
                f"{engine}: ensemble slices/s",
                f"{f['slices_per_s']:.1f} ({f['gflops']:.1f} GFLOP/s, {share:.0f}% of the matmul peak)",
            )
        )
    e2e = figures.end_to_end
    for n, f in e2e.get("sizes", {}).items():
        rows.append(
            (
                f"end to end, {n} slices (p50 warm)",
                f"{f['client_s']:.2f} s; gateway's share {100 * f['gateway_share']:.1f}%; "
                f"peak RSS {f['peak_rss_mib']:.0f} MiB",
            )
        )
    if e2e:
        rows.append(("cold first request / warm", f"{e2e['cold_s']:.2f} s / {e2e['cold_over_warm']:.2f}x"))
        rows.append(("start to ready", f"{e2e['start_to_ready_s']:.1f} s"))
    lines = [f"`{command}`", "", "| measure | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_speed", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="fewer slices and repeats, the smallest study only"
    )
    parser.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    parser.add_argument("--sizes", type=int, nargs="+", default=[30, 120, 300], help="study sizes (slices)")
    parser.add_argument("--repeats", type=int, default=3, help="warm requests per study size")
    parser.add_argument("--slices", type=int, default=64, help="slices per engine run")
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["triton", "torch", "end-to-end"],
        help="sections to leave out",
    )
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point (``python -m bench.bench_speed``)."""
    args = _parse_args(argv)
    slices, repeats, sizes = args.slices, args.repeats, sorted(args.sizes)
    if args.quick:
        slices, repeats, sizes = 16, 2, sizes[:1]
    root = args.repository.resolve()
    figures = Figures()
    measure_machine(figures, args.quick)
    measure_flops(figures, root)
    measure_embedded(figures, root, slices, 3 if not args.quick else 1)
    if "triton" not in args.skip:
        measure_triton(figures, root, slices if not args.quick else 8, 2 if not args.quick else 1)
    if "torch" not in args.skip:
        measure_torch(figures, root, slices if not args.quick else 4, 2 if not args.quick else 1)
    if "end-to-end" not in args.skip:
        measure_end_to_end(figures, root, sizes, repeats)
    command = "python -m bench.bench_speed " + " ".join(argv if argv is not None else sys.argv[1:])
    say("")
    say(table(figures, command.strip()))
    if args.json:
        args.json.write_text(json.dumps(figures.__dict__, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
