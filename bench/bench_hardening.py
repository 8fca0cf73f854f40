"""Hardening figures of a real ich-serve on loopback: hostile clients, cancellation, memory per study size.

The script starts ``python -m api.main`` (the shipped weights, embedded engine unless ``--repository``) on a
held 127.0.0.1 port and talks only to it. Each phase prints its figures as soon as it ends:

1. ``usual``: the example study's time alone (median of two, after a warm-up).
2. ``hostile``: the same beside ``--slow`` senders at 1 KB/s and ``--stalled`` connections that sent their
   headers only; the study's time, how many hostile requests got 408, and the in-flight slots they held.
3. ``cancel``: a 64-slice study whose client disconnects once its inference has begun; the inference time of
   a one-slice study sent right after, against the same alone (the engine's wait for the abandoned work).
4. ``size``: one synthetic 512 x 512 study per ``--sizes`` entry, one at a time; the gateway's peak RSS for
   each (``VmHWM``, reset between studies) and the MiB per slice between the smallest and the largest.
5. ``clients``: ``--clients`` clients posting the example study at once; peak RSS, then the RSS idle.
6. ``cap``: a study above ``ICH_MAX_SLICES`` (``--refused-slices``, 64 x 64): its status and time.

Everything is bounded (counts and timeouts); the defaults take about a minute on two quiet cores.

    nice -n 19 .venv/bin/python -m bench.bench_hardening
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import numpy as np

from ich_devtools.dicom_writer import dataset_bytes, series_datasets, zip_members
from ich_devtools.local_gateway import running_gateway
from ich_devtools.processes import LOOPBACK, resident_mib

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_STUDY = PROJECT_ROOT / "examples" / "ct_ich_study.zip"
ZIP = {"content-type": "application/zip"}


def reset_peak(pid: int) -> None:
    """Reset ``VmHWM`` to the current RSS (``5`` into ``clear_refs``): each phase gets its own peak."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def synthetic_study(slices: int, matrix: int = 512) -> bytes:
    """A head-like CT series (brain, a bleed, a skull ring) of ``slices`` slices, zipped."""
    yy, xx = np.mgrid[:matrix, :matrix]
    radius = np.hypot(yy - matrix / 2, xx - matrix / 2) / (matrix / 2)
    plane = np.where(radius < 0.8, 32.0, -1000.0).astype(np.float32)
    plane[(radius >= 0.8) & (radius < 0.9)] = 1200.0
    # Scanner-like noise, so the zip compresses about as a real series does rather than to nothing.
    noise = np.random.default_rng(slices).normal(0.0, 6.0, (slices, matrix, matrix)).astype(np.float32)
    hu = np.clip(np.round(plane[None] + noise), -1024.0, 3000.0)
    hu[slices // 3 : slices // 3 + 3, matrix // 3 : matrix // 2, matrix // 3 : matrix // 2] = 70.0
    datasets = series_datasets(
        hu, pixel_spacing_mm=(0.45, 0.45), slice_thickness_mm=5.0 if slices < 80 else 1.0
    )
    return zip_members({f"s/IM{i:04d}.dcm": dataset_bytes(ds) for i, ds in enumerate(datasets)})


def gateway_settings(repository: Path | None, data_dir: Path) -> dict[str, str]:
    """The gateway's ``ICH_`` settings here: no job workers, uploads read at 5 s (hostile clients end)."""
    settings = {
        "ICH_DATA_DIR": str(data_dir),
        "ICH_JOB_WORKERS": "0",
        "ICH_LOG_LEVEL": "warning",
        "ICH_UPLOAD_TIMEOUT_S": "5",
    }
    if repository is not None:
        settings["ICH_MODEL_REPOSITORY"] = str(repository)
    return settings


def _open_upload(port: int, length: int) -> socket.socket:
    sock = socket.create_connection((LOOPBACK, port), timeout=30)
    sock.sendall(
        f"POST /v1/cases HTTP/1.1\r\nHost: {LOOPBACK}\r\nContent-Type: application/zip\r\n"
        f"Content-Length: {length}\r\n\r\n".encode()
    )
    return sock


def _trickle(sockets: list[socket.socket], stop: threading.Event) -> None:
    live = list(sockets)
    while live and not stop.wait(0.25):
        for sock in list(live):
            try:
                sock.sendall(b"\0" * 256)
            except OSError:
                live.remove(sock)


def _status(sock: socket.socket, timeout_s: float) -> int:
    sock.settimeout(timeout_s)
    with contextlib.suppress(OSError):
        head = sock.recv(64)
        match = re.match(rb"HTTP/1\.1 (\d{3})", head)
        if match:
            return int(match.group(1))
    return 0


def post(client: httpx.Client, body: bytes) -> tuple[int, float, dict[str, float]]:
    started = time.perf_counter()
    response = client.post("/v1/cases", content=body, headers=ZIP)
    elapsed = time.perf_counter() - started
    timing = response.json().get("timing_ms", {}) if response.status_code == 200 else {}
    return response.status_code, elapsed, timing


def phase_hostile(client: httpx.Client, base: str, study: bytes, slow: int, stalled: int) -> None:
    post(client, study)  # warm-up: onnxruntime's first run allocates its arenas
    usual = float(np.median([post(client, study)[1] for _ in range(2)]))
    print(f"usual      example study alone: {usual * 1000:.0f} ms", flush=True)
    port = int(base.rsplit(":", 1)[1])
    stop = threading.Event()
    slow_socks = [_open_upload(port, 10_000_000) for _ in range(slow)]
    stalled_socks = [_open_upload(port, 10_000_000) for _ in range(stalled)]
    threading.Thread(target=_trickle, args=(slow_socks, stop), daemon=True).start()
    time.sleep(0.5)
    inflight = re.search(r"^ich_inflight_cases (\S+)$", client.get("/metrics").text, re.M)
    status, elapsed, _ = post(client, study)
    statuses = [_status(s, 15.0) for s in slow_socks + stalled_socks]
    stop.set()
    for sock in slow_socks + stalled_socks:
        sock.close()
    print(
        f"hostile    beside {slow} slow + {stalled} stalled: {status} in {elapsed * 1000:.0f} ms "
        f"({elapsed / usual:.2f}x usual); slots held by them {inflight.group(1) if inflight else '?'}; "
        f"408s {statuses.count(408)}/{len(statuses)}",
        flush=True,
    )


def phase_cancel(client: httpx.Client, base: str) -> None:
    one = synthetic_study(1, 64)
    big = synthetic_study(64, 64)
    _, _, alone = post(client, one)
    preprocess = re.compile(r'^ich_stage_seconds_count\{stage="preprocess"\} (\S+)$', re.M)
    before = float(preprocess.search(client.get("/metrics").text).group(1))  # type: ignore[union-attr]
    sock = _open_upload(int(base.rsplit(":", 1)[1]), len(big))
    sock.sendall(big)
    deadline = time.monotonic() + 120
    while float(preprocess.search(client.get("/metrics").text).group(1)) <= before:  # type: ignore[union-attr]
        if time.monotonic() > deadline:
            print("cancel     the big study never reached the engine", flush=True)
            return
        time.sleep(0.05)
    time.sleep(0.3)
    sock.close()
    _, _, after = post(client, one)
    after_ms, alone_ms = after.get("inference", float("nan")), alone.get("inference", float("nan"))
    print(
        f"cancel     one slice after a 64-slice study was abandoned mid-inference: inference "
        f"{after_ms:.0f} ms (alone {alone_ms:.0f} ms; the engine was freed "
        f"{max(after_ms - alone_ms, 0.0):.0f} ms after the disconnect)",
        flush=True,
    )


def phase_sizes(client: httpx.Client, pid: int, sizes: Sequence[int]) -> None:
    peaks: dict[int, float] = {}
    for slices in sizes:
        body = synthetic_study(slices)
        time.sleep(1.0)  # the previous case's memory handed back (malloc_trim runs after each case)
        idle = resident_mib(pid)
        reset_peak(pid)
        status, elapsed, _ = post(client, body)
        peaks[slices] = resident_mib(pid, peak=True)
        print(
            f"size       {slices:4d} slices 512x512 ({len(body) / 2**20:.0f} MiB zip): {status} in "
            f"{elapsed:.1f} s, peak RSS {peaks[slices]:.0f} MiB (idle before {idle:.0f} MiB)",
            flush=True,
        )
    if len(peaks) >= 2:
        low, high = min(peaks), max(peaks)
        per_slice = (peaks[high] - peaks[low]) / (high - low)
        print(f"size       peak RSS per slice: {per_slice:.2f} MiB", flush=True)


async def _clients(base: str, body: bytes, clients: int) -> list[int]:
    async with httpx.AsyncClient(base_url=base, timeout=600) as client:

        async def one() -> int:
            return (await client.post("/v1/cases", content=body, headers=ZIP)).status_code

        return list(await asyncio.gather(*(one() for _ in range(clients))))


def phase_clients(base: str, pid: int, study: bytes, clients: int) -> None:
    reset_peak(pid)
    started = time.perf_counter()
    statuses = asyncio.run(_clients(base, study, clients))
    elapsed = time.perf_counter() - started
    peak = resident_mib(pid, peak=True)
    time.sleep(2.0)
    print(
        f"clients    {clients} at once: {statuses} in {elapsed:.1f} s; peak RSS {peak:.0f} MiB, "
        f"{resident_mib(pid):.0f} MiB idle 2 s later",
        flush=True,
    )


def phase_cap(client: httpx.Client, slices: int) -> None:
    body = synthetic_study(slices, 64)
    status, elapsed, _ = post(client, body)
    print(f"cap        {slices} slices (64x64): {status} in {elapsed * 1000:.0f} ms", flush=True)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_hardening", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--study", type=Path, default=DEFAULT_STUDY, help="the 'normal' study (a zip)")
    parser.add_argument("--repository", type=Path, default=None, help="model repository (default: shipped)")
    parser.add_argument("--slow", type=int, default=8, help="slow senders (1 KB/s)")
    parser.add_argument("--stalled", type=int, default=40, help="connections that send headers only")
    parser.add_argument("--sizes", default="31,96", help="slice counts of the synthetic studies")
    parser.add_argument("--clients", type=int, default=4, help="clients posting the study at once")
    parser.add_argument("--refused-slices", type=int, default=1000, help="a study above ICH_MAX_SLICES")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    study = args.study.read_bytes()
    with tempfile.TemporaryDirectory(prefix="ich-bench-hardening-") as folder:
        log, settings = Path(folder) / "gateway.log", gateway_settings(args.repository, Path(folder) / "data")
        with running_gateway(log, settings, error=SystemExit) as gateway:
            base, pid = gateway.url, gateway.pid
            print(f"idle       RSS {resident_mib(pid):.0f} MiB", flush=True)
            with httpx.Client(base_url=base, timeout=600) as client:
                phase_hostile(client, base, study, args.slow, args.stalled)
                phase_cancel(client, base)
                phase_sizes(client, pid, [int(n) for n in args.sizes.split(",") if n])
                phase_clients(base, pid, study, args.clients)
                phase_cap(client, args.refused_slices)
    return 0


if __name__ == "__main__":
    sys.exit(main())
