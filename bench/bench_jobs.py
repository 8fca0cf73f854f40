"""Bounded load test of the durable queue: N studies from M clients, on loopback, against a real ich-serve.

The script starts ``python -m api.main`` (what ``ich-serve`` runs) on a held 127.0.0.1 port with a job store
in a temporary folder (SQLite; ``--database-url`` for a PostgreSQL), and only ever talks to that process. M
client tasks share N uploads to ``POST /v1/studies`` (each with its own ``Idempotency-Key``; a 429 is retried
after its ``Retry-After``), then every job is polled until it is done. It prints jobs per second (from the
first upload to the last finished job), the queue time (``started_at - created_at`` of each job's latest
attempt) and the time to result (``finished_at - created_at``) as p50/p95, and the gateway's peak RSS
(``VmHWM`` of its process, Linux).

    .venv/bin/python -m bench.bench_jobs --studies 8 --clients 4 --job-workers 1
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from ich_devtools.local_gateway import running_gateway
from ich_devtools.processes import resident_mib

logger = logging.getLogger("bench")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_STUDY = PROJECT_ROOT / "examples" / "ct_ich_study.zip"


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (linear interpolation), NaN for no values."""
    return float(np.percentile(values, q)) if values else float("nan")


def _seconds(iso: str | None) -> float:
    return datetime.fromisoformat(iso).timestamp() if iso else float("nan")


def gateway_settings(args: argparse.Namespace, data_dir: Path) -> dict[str, str]:
    """The ``ICH_`` settings of the gateway under test."""
    settings = {
        "ICH_DATA_DIR": str(data_dir),
        "ICH_JOB_WORKERS": str(args.job_workers),
        "ICH_MAX_QUEUED_JOBS": str(args.max_queued),
        "ICH_LOG_LEVEL": "warning",
    }
    if args.model_repository:
        settings["ICH_MODEL_REPOSITORY"] = str(args.model_repository)
    if args.database_url:
        settings["ICH_DATABASE_URL"] = args.database_url
    if args.threads:
        settings["ICH_THREADS"] = str(args.threads)
    return settings


async def submit_all(base: str, body: bytes, studies: int, clients: int) -> tuple[list[str], int]:
    """M clients share the N uploads; returns the job ids and how many 429s were answered."""
    todo: asyncio.Queue[int] = asyncio.Queue()
    for i in range(studies):
        todo.put_nowait(i)
    ids: list[str] = []
    refused = 0

    async def client() -> None:
        nonlocal refused
        async with httpx.AsyncClient(base_url=base, timeout=120.0) as http:
            while True:
                try:
                    todo.get_nowait()
                except asyncio.QueueEmpty:
                    return
                headers = {"content-type": "application/zip", "Idempotency-Key": str(uuid.uuid4())}
                while True:
                    response = await http.post("/v1/studies", content=body, headers=headers)
                    if response.status_code != 429:
                        break
                    refused += 1
                    await asyncio.sleep(float(response.headers.get("retry-after", "1")))
                if response.status_code != 202:
                    raise SystemExit(f"POST /v1/studies: {response.status_code} {response.text[:300]}")
                ids.append(response.json()["id"])

    await asyncio.gather(*(client() for _ in range(clients)))
    return ids, refused


async def wait_all(base: str, ids: list[str], timeout_s: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=base, timeout=60.0) as http:
        while True:
            jobs = [(await http.get(f"/v1/studies/{job_id}")).json() for job_id in ids]
            if all(job["status"] in ("done", "failed") for job in jobs):
                return jobs
            if time.monotonic() > deadline:
                raise SystemExit(f"jobs unfinished after {timeout_s} s: {[j['status'] for j in jobs]}")
            await asyncio.sleep(0.5)


def report(
    args: argparse.Namespace, jobs: list[dict[str, Any]], wall_s: float, refused: int, rss: float
) -> str:
    done = [j for j in jobs if j["status"] == "done"]
    queue = [_seconds(j["started_at"]) - _seconds(j["created_at"]) for j in done]
    latency = [_seconds(j["finished_at"]) - _seconds(j["created_at"]) for j in done]
    lines = [
        f"studies {args.studies} from {args.clients} clients, {args.job_workers} job worker(s), "
        f"store {'PostgreSQL' if args.database_url else 'SQLite'}, study {args.study.name}",
        f"done {len(done)}, failed {len(jobs) - len(done)}, 429 answered {refused}",
        f"jobs/s {len(done) / wall_s:.3f} (wall {wall_s:.1f} s, first upload to last result)",
        f"queue time p50 {percentile(queue, 50):.1f} s, p95 {percentile(queue, 95):.1f} s",
        f"time to result p50 {percentile(latency, 50):.1f} s, p95 {percentile(latency, 95):.1f} s",
        f"gateway peak RSS {rss:.0f} MiB",
    ]
    return "\n".join(lines)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--studies", type=int, default=8, help="N: studies submitted in all (8)")
    parser.add_argument("--clients", type=int, default=4, help="M: concurrent submitting clients (4)")
    parser.add_argument("--job-workers", type=int, default=1, help="ICH_JOB_WORKERS of the gateway (1)")
    parser.add_argument("--max-queued", type=int, default=1000, help="ICH_MAX_QUEUED_JOBS (1000)")
    parser.add_argument("--threads", type=int, help="ICH_THREADS of the gateway (its default)")
    parser.add_argument("--study", type=Path, default=DEFAULT_STUDY, help="the zipped study to submit")
    parser.add_argument("--model-repository", type=Path, help="ICH_MODEL_REPOSITORY (the shipped one)")
    parser.add_argument("--database-url", help="ICH_DATABASE_URL (a PostgreSQL on loopback); default SQLite")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for all jobs (1800)")
    args = parser.parse_args(argv)
    if args.studies < 1 or args.clients < 1 or args.job_workers < 1:
        parser.error("--studies, --clients and --job-workers must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the load test and print its figures."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    body = args.study.read_bytes()
    with tempfile.TemporaryDirectory(prefix="ich-bench-jobs-") as folder:
        settings = gateway_settings(args, Path(folder) / "data")
        with running_gateway(Path(folder) / "gateway.log", settings, error=SystemExit) as gateway:
            started = time.perf_counter()
            ids, refused = asyncio.run(submit_all(gateway.url, body, args.studies, args.clients))
            jobs = asyncio.run(wait_all(gateway.url, ids, args.timeout))
            wall_s = time.perf_counter() - started
            rss = resident_mib(gateway.pid, peak=True)
    sys.stdout.write(report(args, jobs, wall_s, refused, rss) + "\n")
    return 0 if all(job["status"] == "done" for job in jobs) else 1


if __name__ == "__main__":
    sys.exit(main())
