"""Soak and faults: a real ich-serve on loopback under steady load, a Triton killed mid-load, hostile clients.

The script starts everything itself on 127.0.0.1 (``python -m api.main``, and a local ``tritonserver`` from
``.venv-triton`` for the third phase), talks only to it, and stops it all when its phases are over; each
phase is bounded in time and in clients. Phases:

1. ``embedded``: ``--clients`` clients post a synthetic study back to back for ``--minutes`` against the
   embedded engine (the shipped weights unless ``--repository``).
2. ``hostile``: the same clients for ``--hostile-s`` beside ``--slow`` senders (256 B every quarter second)
   and ``--stalled`` connections that sent their headers only (the gateway reads uploads at
   ``ICH_UPLOAD_TIMEOUT_S`` = 5 s here, so they all end with 408 within the phase).
3. ``triton``: the gateway on a local Triton serving the same repository; ``--kill-after-s`` into the load
   the server is SIGKILLed, started again ``--outage-s`` later on the same ports, and the load goes on for
   ``--after-s`` once it is ready.

A client answered 503 retries after a quarter second (not its Retry-After), so the outage's edges are seen
to that resolution. Each phase prints its statuses, the latency p50/p95 of its 200s, studies/s and the
gateway's RSS sampled every second; the ``triton`` phase adds the 503 window (first to last 503 after the
kill) and the time from Triton's readiness to the first 200.

    nice -n 19 .venv/bin/python -m bench.bench_soak --clients 3 --minutes 0.5 --hostile-s 20
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.bench_hardening import _open_upload, _status, _trickle, synthetic_study
from bench.bench_jobs import percentile
from ich_devtools.local_gateway import running_gateway
from ich_devtools.processes import reserved_port, resident_mib

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHIPPED = PROJECT_ROOT / "model_repository"
ZIP = {"content-type": "application/zip"}
RETRY_PAUSE_S = 0.25
HOSTILE_UPLOAD_TIMEOUT_S = 5


@dataclass(frozen=True)
class Answer:
    """One request: when it ended (seconds since the phase began), its status and how long it took."""

    ended: float
    status: int
    seconds: float


@dataclass
class Load:
    """Clients posting one study back to back until ``stop``; every answer recorded."""

    base: str
    study: bytes
    clients: int
    started: float = field(default_factory=time.monotonic)
    answers: list[Answer] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> list[threading.Thread]:
        threads = [threading.Thread(target=self._client, daemon=True) for _ in range(self.clients)]
        for thread in threads:
            thread.start()
        return threads

    def _client(self) -> None:
        with httpx.Client(base_url=self.base, timeout=120) as client:
            while not self.stop.is_set():
                began = time.monotonic()
                try:
                    status = client.post("/v1/cases", content=self.study, headers=ZIP).status_code
                except httpx.TransportError:
                    status = 0  # refused or reset: counted, never raised
                ended = time.monotonic()
                with self._lock:
                    self.answers.append(Answer(ended - self.started, status, ended - began))
                if status != 200:
                    self.stop.wait(RETRY_PAUSE_S)

    def finish(self, threads: list[threading.Thread]) -> None:
        self.stop.set()
        for thread in threads:
            thread.join(timeout=150)


class RssSampler:
    """The gateway's RSS every second, in a thread, until ``stop``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = time.monotonic()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic() - self._started, resident_mib(self.pid)))
            self._stop.wait(1.0)

    def stop(self) -> str:
        self._stop.set()
        self._thread.join(timeout=5)
        values = [v for _, v in self.samples if v == v]
        if not values:
            return "RSS n/a"
        step = max(1, len(self.samples) // 8)
        series = " ".join(f"{t:.0f}s:{v:.0f}" for t, v in self.samples[::step])
        return f"RSS MiB min {min(values):.0f} max {max(values):.0f}; over time {series}"


def summary(name: str, load: Load, elapsed_s: float) -> str:
    statuses = Counter(a.status for a in load.answers)
    ok = [a.seconds for a in load.answers if a.status == 200]
    return (
        f"{name:<9} {load.clients} clients, {elapsed_s:.0f} s: statuses {dict(sorted(statuses.items()))}; "
        f"200 latency p50 {percentile(ok, 50):.2f} s p95 {percentile(ok, 95):.2f} s; "
        f"{len(ok) / elapsed_s:.2f} studies/s"
    )


@contextlib.contextmanager
def gateway(log: Path, data_dir: Path, **settings: str) -> Iterator[tuple[int, str]]:
    """ich-serve on a held loopback port with only these ICH_ settings; yields its PID and base URL."""
    defaults = {"ICH_DATA_DIR": str(data_dir), "ICH_JOB_WORKERS": "0", "ICH_LOG_LEVEL": "warning"}
    with running_gateway(log, {**defaults, **settings}, error=SystemExit) as server:
        yield server.pid, server.url


def phase_steady(pid: int, base: str, study: bytes, clients: int, seconds: float) -> None:
    rss = RssSampler(pid)
    load = Load(base, study, clients)
    threads = load.run()
    time.sleep(seconds)
    load.finish(threads)
    print(summary("embedded", load, time.monotonic() - load.started), flush=True)
    print(f"{'':<9} {rss.stop()}", flush=True)


def phase_hostile(
    pid: int, base: str, study: bytes, clients: int, slow: int, stalled: int, seconds: float
) -> None:
    rss = RssSampler(pid)
    port = int(base.rsplit(":", 1)[1])
    stop = threading.Event()
    slow_socks = [_open_upload(port, 10_000_000) for _ in range(slow)]
    stalled_socks = [_open_upload(port, 10_000_000) for _ in range(stalled)]
    threading.Thread(target=_trickle, args=(slow_socks, stop), daemon=True).start()
    load = Load(base, study, clients)
    threads = load.run()
    time.sleep(seconds)
    load.finish(threads)
    hostile = [_status(sock, HOSTILE_UPLOAD_TIMEOUT_S + 10.0) for sock in slow_socks + stalled_socks]
    stop.set()
    for sock in slow_socks + stalled_socks:
        sock.close()
    print(summary("hostile", load, time.monotonic() - load.started), flush=True)
    print(
        f"{'':<9} beside {slow} slow + {stalled} stalled: their statuses {dict(Counter(hostile))}", flush=True
    )
    print(f"{'':<9} {rss.stop()}", flush=True)


def print_outage(load: Load, killed_at: float, ready_at: float) -> None:
    """What the callers saw between Triton's SIGKILL and its restart, and just after."""
    after_kill = [a for a in load.answers if a.ended >= killed_at]
    refused = [a.ended for a in after_kill if a.status == 503]
    first_ok = next(
        (
            a.ended
            for a in sorted(after_kill, key=lambda a: a.ended)
            if a.status == 200 and a.ended >= ready_at
        ),
        float("nan"),
    )
    window = f"{refused[0] - killed_at:.1f} to {max(refused) - killed_at:.1f} s" if refused else "none"
    print(
        f"{'':<9} SIGKILL at {killed_at:.1f} s, Triton ready again at {ready_at:.1f} s "
        f"({ready_at - killed_at:.1f} s down); 503 window after the kill: {window} ({len(refused)} "
        f"answers); first 200 {first_ok - ready_at:.2f} s after Triton was ready",
        flush=True,
    )
    sent_after = [a for a in load.answers if a.ended - a.seconds >= ready_at]
    if sent_after:
        first_sent = min(sent_after, key=lambda a: a.ended - a.seconds)
        print(
            f"{'':<9} the first request sent after Triton was ready: {first_sent.status} in "
            f"{first_sent.seconds:.2f} s (a case's own time is in the first 200's wait above)",
            flush=True,
        )


def phase_triton(args: argparse.Namespace, workdir: Path, study: bytes) -> None:
    from ich_devtools.triton_local import LocalTriton, TritonStartError

    http_port, grpc_port, metrics_port = reserved_port(), reserved_port(), reserved_port()

    def triton(name: str) -> LocalTriton:  # the same ports each time: the gateway keeps its URL
        return LocalTriton(
            args.repository,
            http_port=http_port,
            grpc_port=grpc_port,
            metrics_port=metrics_port,
            intra_op_threads=1,
            workdir=workdir / name,
        )

    first = triton("triton-1")
    second: LocalTriton | None = None
    try:
        first.start(timeout_s=300)
    except TritonStartError as exc:
        print(f"triton    skipped: no local tritonserver ({str(exc)[:200]})", flush=True)
        return
    try:
        settings = {
            "ICH_ENGINE": "triton",
            "ICH_TRITON_URL": first.grpc_url,
            "ICH_TRITON_TIMEOUT_S": "30",
            "ICH_MODEL_REPOSITORY": str(args.repository),
        }
        with gateway(workdir / "gateway-triton.log", workdir / "data-triton", **settings) as (pid, base):
            rss = RssSampler(pid)
            load = Load(base, study, args.clients)
            threads = load.run()
            time.sleep(args.kill_after_s)
            assert first.process is not None
            first.process.send_signal(signal.SIGKILL)
            killed_at = time.monotonic() - load.started
            first.process.wait(timeout=30)
            first.stop()
            time.sleep(args.outage_s)
            second = triton("triton-2")
            second.start(timeout_s=300)
            ready_at = time.monotonic() - load.started
            time.sleep(args.after_s)
            load.finish(threads)
            elapsed = time.monotonic() - load.started
        print(summary("triton", load, elapsed), flush=True)
        print_outage(load, killed_at, ready_at)
        print(f"{'':<9} {rss.stop()}", flush=True)
    finally:
        first.stop()
        if second is not None:
            second.stop()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument(
        "--repository", type=Path, default=SHIPPED, help="model repository (the shipped weights)"
    )
    parser.add_argument("--clients", type=int, default=4, help="clients of every phase (4)")
    parser.add_argument("--minutes", type=float, default=1.0, help="length of the embedded phase (1)")
    parser.add_argument("--hostile-s", type=float, default=30.0, help="length of the hostile phase (30)")
    parser.add_argument("--slow", type=int, default=8, help="slow senders in the hostile phase (8)")
    parser.add_argument(
        "--stalled", type=int, default=40, help="stalled connections in the hostile phase (40)"
    )
    parser.add_argument("--slices", type=int, default=16, help="slices of the study the clients post (16)")
    parser.add_argument("--matrix", type=int, default=256, help="its matrix, pixels (256)")
    parser.add_argument("--kill-after-s", type=float, default=15.0, help="Triton SIGKILLed this far in (15)")
    parser.add_argument("--outage-s", type=float, default=5.0, help="before Triton is started again (5)")
    parser.add_argument("--after-s", type=float, default=15.0, help="load after Triton is back (15)")
    parser.add_argument("--skip-triton", action="store_true", help="leave out the Triton phase")
    args = parser.parse_args(argv)
    if (
        min(args.clients, args.slices, args.matrix) < 1
        or args.minutes <= 0
        or min(args.slow, args.stalled) < 0
    ):
        parser.error(
            "--clients, --slices and --matrix must be positive, --minutes > 0, --slow/--stalled >= 0"
        )
    if max(args.minutes * 60, args.hostile_s, args.kill_after_s + args.outage_s + args.after_s) > 1800:
        parser.error("a phase is limited to 30 minutes")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    study = synthetic_study(args.slices, args.matrix)
    print(
        f"study     {args.slices} slices {args.matrix}x{args.matrix} ({len(study) / 2**20:.1f} MiB zip), "
        f"repository {args.repository}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="ich-soak-") as tmp:
        workdir = Path(tmp)
        settings = {
            "ICH_MODEL_REPOSITORY": str(args.repository),
            "ICH_UPLOAD_TIMEOUT_S": str(HOSTILE_UPLOAD_TIMEOUT_S),
        }
        with gateway(workdir / "gateway.log", workdir / "data", **settings) as (pid, base):
            with httpx.Client(base_url=base, timeout=120) as client:
                client.post("/v1/cases", content=study, headers=ZIP)  # warm-up, not counted
            phase_steady(pid, base, study, args.clients, args.minutes * 60)
            phase_hostile(pid, base, study, args.clients, args.slow, args.stalled, args.hostile_s)
        if not args.skip_triton:
            phase_triton(args, workdir, study)


if __name__ == "__main__":
    main()
