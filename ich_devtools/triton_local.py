"""A real ``tritonserver`` on a machine without a GPU, serving a CPU rendering of the model repository.

The ``nvidia-pytriton`` wheel (installed in ``.venv-triton``, which pins numpy<2) ships the ``tritonserver``
binary with the python backend but not the onnxruntime backend. So the rendering replaces each ONNX model by
a thin python-backend model (``ich_devtools/triton_python_model.py``) that runs the same ``model.onnx`` with
onnxruntime, with the same tensor names and ``max_batch_size``; the ``ich_ensemble`` config is copied
unchanged, so Triton's own ensemble scheduler does the wiring, as in production.

How the python backend finds its packages: the stub embeds libpython, which locates its prefix by looking for
``python3`` on ``PATH``. Putting ``.venv-triton/bin`` first on the server's ``PATH`` makes the stub run with
that virtual environment's site-packages (numpy, onnxruntime); this is what PyTriton itself does.

``python -m ich_devtools.triton_local --serve`` (``make triton``) serves ``model_repository/`` on ports 8000
(HTTP), 8001 (gRPC) and 8002 (metrics) in the foreground; the tests use ``LocalTriton`` on free ports.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from ich import repository
from ich.repository import RepositoryError
from ich.weights_manifest import verify_manifest
from ich_devtools import processes

__all__ = [
    "LocalTriton",
    "TritonDistribution",
    "TritonStartError",
    "default_venv",
    "find_distribution",
    "main",
    "render_cpu_repository",
    "sweep_orphans",
]

logger = logging.getLogger(__name__)

#: Source of the python-backend runner copied as ``model.py`` next to each ONNX file.
RUNNER_SOURCE = Path(__file__).with_name("triton_python_model.py")
PROJECT_ROOT = Path(__file__).resolve().parents[1]


class TritonStartError(processes.ServerStartError):
    """``tritonserver`` could not be found, did not start, or did not become ready in time."""


@dataclass(frozen=True)
class TritonDistribution:
    """Where the pieces of the pytriton wheel live inside a virtual environment."""

    server_dir: Path  # .../site-packages/pytriton/tritonserver (bin/, backends/, python_backend_stubs/)
    libs_dir: Path  # .../site-packages/nvidia_pytriton.libs (bundled shared libraries)
    venv_bin: Path  # the venv's bin/, put first on PATH for the python-backend stub
    python_version: str  # "3.11": which stub to use
    python_libdir: Path | None = None  # where the venv's base Python keeps libpython (the stub links it)

    @property
    def stub(self) -> Path:
        """The python-backend stub built for this environment's Python version."""
        return self.server_dir / "python_backend_stubs" / self.python_version / "triton_python_backend_stub"


def default_venv() -> Path:
    """``ICH_TRITON_VENV`` when set, else the project's ``.venv-triton`` (made by ``make triton-env``)."""
    return Path(os.environ.get("ICH_TRITON_VENV", PROJECT_ROOT / ".venv-triton"))


def find_distribution(venv: Path) -> TritonDistribution:
    """Locate ``tritonserver`` and its libraries in ``venv``.

    Raises:
        TritonStartError: the venv lacks ``nvidia-pytriton`` (run ``make triton-env``).
    """
    venv = Path(venv)
    for site in sorted(venv.glob("lib/python3.*/site-packages")):
        server_dir = site / "pytriton" / "tritonserver"
        if (server_dir / "bin" / "tritonserver").is_file():
            distribution = TritonDistribution(
                server_dir=server_dir,
                libs_dir=site / "nvidia_pytriton.libs",
                venv_bin=venv / "bin",
                python_version=site.parent.name.removeprefix("python"),
                python_libdir=_python_libdir(venv / "bin" / "python"),
            )
            if not distribution.stub.is_file():
                raise TritonStartError(f"no python-backend stub for Python {distribution.python_version}")
            return distribution
    raise TritonStartError(f"tritonserver not found in {venv}; run `make triton-env` (nvidia-pytriton 0.7.0)")


def _python_libdir(python: Path) -> Path | None:
    """LIBDIR of the interpreter behind ``python``: a pyenv or custom-built Python keeps libpython there."""
    try:
        result = subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR') or '')"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    libdir = result.stdout.strip()
    return Path(libdir) if libdir else None


def _cpu_config(config: mc.ModelConfig, intra_op_threads: int | None) -> mc.ModelConfig:
    """The same model (names, dims, batching) served by the python backend on one CPU instance."""
    cpu = mc.ModelConfig()
    cpu.CopyFrom(config)
    cpu.platform = ""
    cpu.backend = "python"
    del cpu.instance_group[:]
    cpu.instance_group.append(mc.ModelInstanceGroup(count=1, kind=mc.ModelInstanceGroup.KIND_CPU))
    cpu.ClearField("default_model_filename")
    if intra_op_threads is not None:
        cpu.parameters["intra_op_threads"].string_value = str(intra_op_threads)
    return cpu


def render_cpu_repository(source: Path, target: Path, *, intra_op_threads: int | None = None) -> Path:
    """Write a CPU rendering of repository ``source`` into ``target`` (created; must not exist or be empty).

    ONNX models become python-backend models whose ``model.onnx`` links to the source file (no copy of the
    weights); ensembles are copied byte for byte; ``VERSION`` is copied.

    Raises:
        RepositoryError: ``source`` holds no model, a model of an unsupported platform, a model without a
            version folder, or ONNX files that differ from its ``SHA256SUMS``.
    """
    source, target = Path(source).resolve(), Path(target)
    verify_manifest(source)
    target.mkdir(parents=True, exist_ok=True)
    models = sorted(p.parent for p in source.glob(f"*/{repository.CONFIG_FILENAME}"))
    if not models:
        raise RepositoryError(f"no model (*/config.pbtxt) in {source}")
    for model_dir in models:
        config = repository.read_config(model_dir)
        destination = target / model_dir.name
        destination.mkdir(exist_ok=True)
        if config.platform == "ensemble":
            shutil.copyfile(model_dir / repository.CONFIG_FILENAME, destination / repository.CONFIG_FILENAME)
            # Triton needs a version folder for an ensemble too (empty).
            (destination / str(repository.DEFAULT_MODEL_VERSION)).mkdir(exist_ok=True)
            continue
        if config.platform != repository.ONNX_PLATFORM and config.backend != "onnxruntime":
            raise RepositoryError(f"model {config.name}: cannot render platform {config.platform!r} for CPU")
        versions = sorted(p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())
        if not versions:
            raise RepositoryError(f"model {config.name}: no version folder in {model_dir}")
        for version in versions:
            onnx_file = version / repository.MODEL_FILENAME
            if not onnx_file.is_file():
                raise RepositoryError(f"model {config.name}: {onnx_file} is missing")
            version_dir = destination / version.name
            version_dir.mkdir(exist_ok=True)
            shutil.copyfile(RUNNER_SOURCE, version_dir / "model.py")
            link = version_dir / repository.MODEL_FILENAME
            link.unlink(missing_ok=True)
            link.symlink_to(onnx_file.resolve())
        rendered = _cpu_config(config, intra_op_threads)
        (destination / repository.CONFIG_FILENAME).write_text(text_format.MessageToString(rendered))
    version_file = source / repository.VERSION_FILENAME
    if version_file.is_file():
        shutil.copyfile(version_file, target / repository.VERSION_FILENAME)
    return target


def _prepare_server(distribution: TritonDistribution, target: Path) -> Path:
    """Copy the server (without the stubs of other Pythons) and put the right stub into backends/python/."""
    shutil.copytree(
        distribution.server_dir,
        target,
        ignore=shutil.ignore_patterns("python_backend_stubs", "__pycache__"),
        dirs_exist_ok=True,
    )
    shutil.copy2(distribution.stub, target / "backends" / "python" / "triton_python_backend_stub")
    return target


def _check_shared_libraries(binary: Path, env: dict[str, str]) -> None:
    """Fail early, naming the library, when the stub or server cannot load (e.g. no libpython3.X.so).

    Without this the server starts, every python-backend model fails to load, and the cause is buried in
    its log.
    """
    ldd = shutil.which("ldd")
    if ldd is None:
        return
    try:
        result = subprocess.run([ldd, str(binary)], env=env, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return
    missing = sorted({line.split()[0] for line in result.stdout.splitlines() if "not found" in line})
    if missing:
        hint = ""
        if any(name.startswith("libpython") for name in missing):
            hint = " (install the shared Python library, e.g. `apt-get install libpython3.11`)"
        raise TritonStartError(f"{binary.name} cannot load {', '.join(missing)}{hint}")


#: Where the python backend keeps its shared-memory regions (one per model instance).
SHM_DIR = Path("/dev/shm")
STUB_NAME = "triton_python_backend_stub"


@dataclass(frozen=True)
class _Process:
    pid: int
    ppid: int
    pgid: int
    state: str
    argv: tuple[str, ...]


def _processes() -> list[_Process]:
    """Every process readable in ``/proc`` (Linux); empty elsewhere."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
            argv = tuple(
                a.decode(errors="replace") for a in (entry / "cmdline").read_bytes().split(b"\0") if a
            )
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may hold spaces and parentheses, so split after the last ')'.
        fields = stat[stat.rindex(")") + 2 :].split()
        found.append(_Process(int(entry.name), int(fields[1]), int(fields[2]), fields[0], argv))
    return found


def _stub_region(process: _Process) -> str | None:
    """The shared-memory region a python-backend stub serves (its second argument), or None."""
    if process.argv and process.argv[0].endswith(STUB_NAME) and len(process.argv) > 2:
        return process.argv[2]
    return None


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


def sweep_orphans(region_prefix: str) -> int:
    """Kill python-backend stubs of ``region_prefix`` whose server is gone, and remove their regions.

    A ``tritonserver`` killed with SIGKILL (by the OOM killer, a test, a crashed launcher) cannot stop its
    python-backend stubs: they are re-parented to init and keep their memory (about a model's worth each)
    and their ``/dev/shm`` regions. Stubs of a live server are left alone, and so are their regions.

    Returns:
        How many processes and regions were removed.
    """
    processes = _processes()
    live = {p.pid for p in processes if p.state != "Z"}
    removed = 0
    in_use: set[str] = set()
    for process in processes:
        region = _stub_region(process)
        if region is None or not region.startswith(region_prefix) or process.state == "Z":
            continue
        server_pid = process.pgid  # the launcher starts the server as its process group's leader
        if process.ppid == 1 or server_pid not in live:
            _kill(process.pid)
            removed += 1
        else:
            in_use.add(region)
    for path in SHM_DIR.glob(f"{region_prefix}*"):
        if path.name not in in_use:
            path.unlink(missing_ok=True)
            removed += 1
    return removed


class LocalTriton:
    """A ``tritonserver`` process serving a CPU rendering of a model repository.

    Use as a context manager, or call ``start`` and ``stop``. Everything it writes lives in ``workdir`` (a
    fresh temporary folder by default, removed on ``stop``). ``stop`` leaves nothing behind even when the
    server was killed with SIGKILL: its python-backend stubs (its process group) and their ``/dev/shm``
    regions go with it, and ``start`` sweeps what an earlier, killed launcher left (``sweep_orphans``).
    """

    def __init__(
        self,
        model_repository: Path,
        *,
        venv: Path | None = None,
        host: str = "127.0.0.1",
        http_port: int = 8000,
        grpc_port: int = 8001,
        metrics_port: int = 8002,
        intra_op_threads: int | None = 1,
        workdir: Path | None = None,
        log_to_console: bool = False,
    ) -> None:
        self.model_repository = Path(model_repository)
        self.venv = Path(venv) if venv is not None else default_venv()
        self.host = host
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.metrics_port = metrics_port
        self.intra_op_threads = intra_op_threads
        self._workdir = Path(workdir) if workdir is not None else None
        self._owns_workdir = workdir is None
        self._log_to_console = log_to_console
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def on_reserved_ports(
        cls, model_repository: Path, *, intra_op_threads: int | None = 1, workdir: Path | None = None
    ) -> LocalTriton:
        """A server on loopback whose three ports are held for this process (``processes.reserved_port``)."""
        return cls(
            model_repository,
            http_port=processes.reserved_port(),
            grpc_port=processes.reserved_port(),
            metrics_port=processes.reserved_port(),
            intra_op_threads=intra_op_threads,
            workdir=workdir,
        )

    @property
    def grpc_url(self) -> str:
        """``host:port`` for ``tritonclient.grpc``."""
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        """Base URL of the HTTP/REST endpoint."""
        return f"http://{self.host}:{self.http_port}"

    @property
    def log_path(self) -> Path | None:
        """The server's log file (None when logging to the console or not started)."""
        if self._workdir is None or self._log_to_console:
            return None
        return self._workdir / "tritonserver.log"

    def command(self, server_dir: Path, model_repository: Path) -> list[str]:
        """The ``tritonserver`` command line."""
        return [
            str(server_dir / "bin" / "tritonserver"),
            f"--model-repository={model_repository}",
            f"--backend-directory={server_dir / 'backends'}",
            f"--cache-directory={server_dir / 'caches'}",
            f"--http-address={self.host}",
            f"--grpc-address={self.host}",
            f"--metrics-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            "--exit-on-error=true",
            "--strict-readiness=true",
            "--allow-gpu-metrics=false",
            # No CUDA on these machines: skip the pinned/CUDA pools instead of failing to allocate them.
            "--pinned-memory-pool-byte-size=0",
            # Each server names its python-backend shared-memory regions apart, so a test server and
            # `make triton` can run on one machine.
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
        ]

    @property
    def shm_prefix(self) -> str:
        """The prefix of this server's python-backend shared-memory regions in ``/dev/shm``."""
        return f"ich{self.grpc_port}_"

    def start(self, timeout_s: float = 180.0) -> None:
        """Render the repository, launch ``tritonserver`` and wait until it reports ready.

        Raises:
            TritonStartError: the server exited or was not ready within ``timeout_s`` (with its log's tail).
        """
        if self.process is not None:
            raise TritonStartError("server already started")
        distribution = find_distribution(self.venv)
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="ich-triton-"))
        self._workdir.mkdir(parents=True, exist_ok=True)
        rendered = render_cpu_repository(
            self.model_repository, self._workdir / "model_repository", intra_op_threads=self.intra_op_threads
        )
        server_dir = _prepare_server(distribution, self._workdir / "tritonserver")
        env = dict(os.environ)
        # The bundled libraries first; then the directory of libpython, which the python-backend stub links
        # (system Pythons keep it on the default search path, pyenv-style builds in their own LIBDIR).
        library_path = [str(distribution.libs_dir), env.get("LD_LIBRARY_PATH", "")]
        if distribution.python_libdir is not None:
            library_path.append(str(distribution.python_libdir))
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in library_path if p)
        env["PATH"] = os.pathsep.join((str(distribution.venv_bin), env.get("PATH", "")))
        # The stub must use .venv-triton's packages only, not the gateway venv's (numpy 2 vs numpy<2).
        env.pop("PYTHONPATH", None)
        env.pop("PYTHONHOME", None)
        env.pop("VIRTUAL_ENV", None)
        _check_shared_libraries(server_dir / "bin" / "tritonserver", env)
        _check_shared_libraries(server_dir / "backends" / "python" / "triton_python_backend_stub", env)
        command = self.command(server_dir, rendered)
        swept = sweep_orphans(self.shm_prefix)
        if swept:
            logger.warning(
                "removed %d orphaned python-backend stub(s) or region(s) of %s", swept, self.shm_prefix
            )
        logger.info("starting tritonserver: %s", " ".join(command))
        self.process = processes.start_logged(command, self.log_path, env=env, new_session=True)
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise

    def is_ready(self) -> bool:
        """True when the server answers ``/v2/health/ready`` with 200 (all models loaded)."""
        return processes.http_answers(f"{self.http_url}/v2/health/ready")

    def _wait_ready(self, timeout_s: float) -> None:
        assert self.process is not None
        processes.wait_answering(
            self.process,
            self.is_ready,
            name="tritonserver",
            log=self.log_path,
            timeout_s=timeout_s,
            interval_s=0.5,
            error=TritonStartError,
        )
        logger.info("tritonserver ready: gRPC %s, HTTP %s", self.grpc_url, self.http_url)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server log (empty when logging to the console)."""
        return processes.log_tail(self.log_path, lines)

    def wait(self) -> int:
        """Block until the server exits; return its exit status."""
        if self.process is None:
            raise TritonStartError("server not started")
        return self.process.wait()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout_s``) and clean up after it.

        Whether the server stopped, was killed here, or had died already (SIGKILL, OOM), what is left of
        its process group (python-backend stubs) is killed and its shared-memory regions are removed.
        """
        process, self.process = self.process, None
        if process is not None:
            if processes.stop_process(process, timeout_s=timeout_s):
                logger.warning(
                    "tritonserver did not stop in %.0f s; killed it and its process group", timeout_s
                )
            self._kill_group(process.pid)
            for path in SHM_DIR.glob(f"{self.shm_prefix}*"):
                path.unlink(missing_ok=True)
        if self._owns_workdir and self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    @staticmethod
    def _kill_group(pgid: int) -> None:
        """SIGKILL what is left of the server's process group (its leader, the server, is gone)."""
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            if not any(p.pgid == pgid and p.state != "Z" for p in _processes()):
                return
            time.sleep(0.05)
        logger.warning("python-backend stubs of process group %d outlived SIGKILL for 5 s", pgid)

    def __enter__(self) -> LocalTriton:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ich_devtools.triton_local", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--serve", action="store_true", help="serve in the foreground until interrupted")
    parser.add_argument("--render", type=Path, metavar="DIR", help="only write the CPU rendering into DIR")
    parser.add_argument("--repository", type=Path, default=PROJECT_ROOT / "model_repository")
    parser.add_argument("--venv", type=Path, default=None, help="venv holding nvidia-pytriton (.venv-triton)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="onnxruntime threads per model (the five members run at once; 0: onnxruntime default)",
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for readiness")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """``--serve``: run tritonserver in the foreground; ``--render DIR``: only write the rendering."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.render is not None:
        render_cpu_repository(args.repository, args.render, intra_op_threads=args.threads or None)
        logger.info("CPU rendering written to %s", args.render)
        return 0
    if not args.serve:
        logger.error("nothing to do: pass --serve or --render DIR")
        return 2
    try:
        repository.require_complete(args.repository)
    except RepositoryError as exc:
        logger.error("%s (export the models first: `ich-model export`)", exc)
        return 1
    server = LocalTriton(
        args.repository,
        venv=args.venv,
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        intra_op_threads=args.threads or None,
        log_to_console=True,
    )

    def _terminate(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    try:
        server.start(timeout_s=args.timeout)
        logger.info("serving %s; ICH_ENGINE=triton ICH_TRITON_URL=%s", args.repository, server.grpc_url)
        return server.wait()
    except KeyboardInterrupt:
        return 0
    except (TritonStartError, RepositoryError) as exc:
        logger.error("%s", exc)
        return 1
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
