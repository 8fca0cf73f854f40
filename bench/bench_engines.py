"""Benchmark the gateway with each engine: post one study repeatedly, report per-stage latency and throughput.

For each engine (embedded onnxruntime; Triton, a local CPU ``tritonserver`` started here unless
``--triton-url`` points at one) the gateway app from ``api.app.create_app`` runs in this process behind
httpx's ASGI transport, or a running gateway is used with ``--url``. The script prints p50 and p95 of every
stage of the response's ``timing_ms`` and of the client-side end-to-end time, studies per second, and the
share of the gateway's own work (decode + preprocess + aggregate) in the gateway's total.

The study is ``--study PATH`` (a DICOM zip, e.g. the one in ``examples/``) or, by default, a generated
30-slice 512x512 CT series (a synthetic head phantom with a small hyperdense lesion).

    .venv/bin/python -m bench.bench_engines --engines embedded triton --requests 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

logger = logging.getLogger("bench")

STAGES = ("decode", "preprocess", "inference", "aggregate", "total")
GATEWAY_STAGES = ("decode", "preprocess", "aggregate")
PROJECT_ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ the study


def phantom_hu(slices: int = 30, size: int = 512, seed: int = 0) -> np.ndarray:
    """A crude head: air, a skull ring (~1000 HU), brain (~30 HU) with noise, and a 60-70 HU lesion."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    cy = cx = size / 2
    volume = np.full((slices, size, size), -1000.0, dtype=np.float32)
    for k in range(slices):
        scale = 1.0 - 0.4 * abs(k - slices / 2) / slices  # the head narrows towards the ends
        r = ((yy - cy) / (0.42 * size * scale)) ** 2 + ((xx - cx) / (0.36 * size * scale)) ** 2
        volume[k][r <= 1.0] = 1000.0
        volume[k][r <= 0.85] = 30.0
        lesion = ((yy - cy * 0.8) ** 2 + (xx - cx * 1.2) ** 2) <= (size * 0.04) ** 2
        if slices // 3 <= k < slices // 3 + 4:
            volume[k][lesion] = 65.0
    volume += rng.normal(0.0, 4.0, volume.shape).astype(np.float32)
    return volume


def study_zip(hu: np.ndarray, *, spacing_mm: float = 0.45, thickness_mm: float = 5.0) -> bytes:
    """An uncompressed CT series as a zip, one DICOM file per slice (``ich_devtools.dicom_writer``).

    Signed storage (intercept 0): every HU of the noisy phantom fits, even air a little below -1024.
    """
    from ich_devtools.dicom_writer import series_zip

    return series_zip(
        hu, pixel_spacing_mm=(spacing_mm, spacing_mm), slice_thickness_mm=thickness_mm, signed=True
    )


# ------------------------------------------------------------------------------------------ the runs


@dataclass
class RunResult:
    """What one engine's run measured."""

    engine: str
    model_version: str = ""
    slices: int = 0
    wall_s: float = 0.0
    client_ms: list[float] = field(default_factory=list)
    stages_ms: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STAGES})
    errors: list[str] = field(default_factory=list)

    @property
    def studies_per_s(self) -> float:
        """Completed studies per second of wall time (with the run's concurrency)."""
        return len(self.client_ms) / self.wall_s if self.wall_s > 0 else 0.0

    def gateway_share(self) -> float:
        """Sum of decode + preprocess + aggregate over the sum of the gateway's totals."""
        total = sum(self.stages_ms["total"])
        own = sum(sum(self.stages_ms[s]) for s in GATEWAY_STAGES)
        return own / total if total > 0 else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (linear interpolation), NaN for no values."""
    return float(np.percentile(values, q)) if values else float("nan")


async def _post_many(
    client: httpx.AsyncClient,
    body: bytes,
    result: RunResult,
    requests: int,
    concurrency: int,
    headers: dict[str, str],
) -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)

    async def worker() -> None:
        while True:
            try:
                queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            started = time.perf_counter()
            response = await client.post("/v1/cases", content=body, headers=headers)
            elapsed = (time.perf_counter() - started) * 1000.0
            if response.status_code != 200:
                result.errors.append(f"{response.status_code}: {response.text[:300]}")
                continue
            payload = response.json()
            result.client_ms.append(elapsed)
            result.model_version = payload.get("model_version", "")
            result.slices = len(payload.get("slices", []))
            for stage in STAGES:
                result.stages_ms[stage].append(float(payload["timing_ms"][stage]))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.wall_s = time.perf_counter() - started


@contextlib.asynccontextmanager
async def _client_for(
    engine: str, args: argparse.Namespace, triton_url: str | None
) -> AsyncIterator[httpx.AsyncClient]:
    timeout = httpx.Timeout(600.0)
    if args.url:
        async with httpx.AsyncClient(base_url=args.url, timeout=timeout) as client:
            yield client
        return
    from api.app import create_app
    from api.settings import Settings

    overrides: dict[str, Any] = {"engine": engine, "model_repository": args.repository}
    if triton_url:
        overrides["triton_url"] = triton_url
    if args.threads is not None:
        overrides["intra_op_threads"] = args.threads
    app = create_app(Settings(**overrides))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench", timeout=timeout) as client:
            yield client


async def run_engine(engine: str, body: bytes, args: argparse.Namespace, triton_url: str | None) -> RunResult:
    """Warm up, then post ``args.requests`` times with ``args.concurrency`` clients."""
    result = RunResult(engine=engine)
    headers = {"Content-Type": "application/zip"}
    if args.api_key:
        headers["Authorization"] = f"Bearer {args.api_key}"
    async with _client_for(engine, args, triton_url) as client:
        warm = RunResult(engine=engine)
        await _post_many(client, body, warm, args.warmup, 1, headers)
        if warm.errors:
            result.errors.extend(warm.errors)
            return result
        await _post_many(client, body, result, args.requests, args.concurrency, headers)
    return result


# ------------------------------------------------------------------------------------------ report


def report(results: list[RunResult], *, study: str, concurrency: int) -> str:
    """A plain-text table: p50/p95 per stage, studies/s and the gateway's share, per engine."""
    lines = [f"study: {study}; concurrency {concurrency}; cpu cores {os.cpu_count()}"]
    header = f"{'engine':<10}{'stage':<12}{'p50 ms':>10}{'p95 ms':>10}"
    for r in results:
        lines.append("")
        if r.errors:
            lines.append(f"{r.engine}: {len(r.errors)} failed request(s); first: {r.errors[0]}")
        if not r.client_ms:
            continue
        lines.append(f"{r.engine}: model {r.model_version}, {r.slices} slices, {len(r.client_ms)} studies")
        lines.append(header)
        for stage in STAGES:
            values = r.stages_ms[stage]
            lines.append(
                f"{r.engine:<10}{stage:<12}{percentile(values, 50):>10.1f}{percentile(values, 95):>10.1f}"
            )
        p50, p95 = percentile(r.client_ms, 50), percentile(r.client_ms, 95)
        lines.append(f"{r.engine:<10}{'client e2e':<12}{p50:>10.1f}{p95:>10.1f}")
        lines.append(f"{r.engine}: {r.studies_per_s:.3f} studies/s")
        lines.append(
            f"{r.engine}: gateway's own work (decode+preprocess+aggregate) = {100 * r.gateway_share():.1f}% "
            "of the gateway's total"
        )
    return "\n".join(lines)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_engines", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--study", type=Path, help="DICOM zip to post (default: a generated series)")
    parser.add_argument("--slices", type=int, default=30, help="slices of the generated series")
    parser.add_argument("--size", type=int, default=512, help="rows = columns of the generated series")
    parser.add_argument(
        "--engines", nargs="+", default=["embedded", "triton"], choices=["embedded", "triton"]
    )
    parser.add_argument("--repository", type=Path, default=PROJECT_ROOT / "model_repository")
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (embedded)")
    parser.add_argument("--triton-url", help="use this Triton (gRPC host:port) instead of starting one")
    parser.add_argument("--triton-threads", type=int, default=1, help="intra-op threads per Triton model")
    parser.add_argument("--url", help="post to a running gateway at this base URL instead of in-process")
    parser.add_argument("--api-key", default=os.environ.get("ICH_BENCH_API_KEY"))
    parser.add_argument("--json", type=Path, help="also write the raw figures as JSON")
    return parser.parse_args(argv)


async def _main(args: argparse.Namespace) -> int:
    if args.study:
        body, study = args.study.read_bytes(), str(args.study)
    else:
        body = study_zip(phantom_hu(args.slices, args.size))
        study = f"generated {args.slices}x{args.size}x{args.size} CT series ({len(body) / 1e6:.1f} MB zip)"
    results = []
    for engine in args.engines:
        if engine == "triton" and not args.triton_url and not args.url:
            from ich_devtools.triton_local import LocalTriton

            server = LocalTriton.on_reserved_ports(args.repository, intra_op_threads=args.triton_threads)
            await asyncio.to_thread(server.start, 300.0)
            try:
                results.append(await run_engine(engine, body, args, server.grpc_url))
            finally:
                await asyncio.to_thread(server.stop)
        else:
            results.append(await run_engine(engine, body, args, args.triton_url))
    text = report(results, study=study, concurrency=args.concurrency)
    sys.stdout.write(text + "\n")
    if args.json:
        args.json.write_text(
            json.dumps(
                [
                    {
                        "engine": r.engine,
                        "studies_per_s": r.studies_per_s,
                        "gateway_share": r.gateway_share(),
                        "client_ms": r.client_ms,
                        "stages_ms": r.stages_ms,
                        "errors": r.errors,
                    }
                    for r in results
                ],
                indent=2,
            )
        )
    return 1 if any(r.errors for r in results) else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point (``python -m bench.bench_engines``)."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(_main(_parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
