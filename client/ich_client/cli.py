"""The ``ich`` command line: analyse studies, check the service, list its models.

Results go to stdout (a readable summary, or JSON with ``--json``); progress bars and errors go to stderr,
so ``ich analyze ... --json > out.json`` stays clean. The exit code is 0 only when every study was analysed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from tqdm import tqdm

from ich_client.client import ICHClient
from ich_client.errors import APIStatusError, ICHError, JobTimeoutError
from ich_client.models import CaseResult, Job, as_dict
from ich_client.retry import DEFAULT_MAX_RETRIES
from ich_client.study import PackedStudy, pack_study
from ich_client.version import __version__

#: Exit codes: every study analysed / at least one failed (or the service is unhealthy) / bad usage.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


#: The connection options' values when given nowhere.
_CONNECTION_DEFAULTS: dict[str, Any] = {
    "url": None,
    "api_key": None,
    "timeout": None,
    "max_retries": DEFAULT_MAX_RETRIES,
    "verbose": False,
}


def _add_connection_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """The service options, accepted before the command (``ich --url U analyze``) and after it.

    The top-level parser holds the defaults; each command's copy has none (``SUPPRESS``), so that an option
    given before the command is not overwritten by the command's default, and one given after it wins.
    """
    def default(name: str) -> Any:
        return _CONNECTION_DEFAULTS[name] if defaults else argparse.SUPPRESS

    group = parser.add_argument_group("service")
    group.add_argument(
        "--url", default=default("url"), help="gateway URL (default: $ICH_URL, else http://localhost:8080)"
    )
    group.add_argument(
        "--api-key",
        default=default("api_key"),
        help="API key (default: $ICH_API_KEY); sent as a Bearer token",
    )
    group.add_argument(
        "--timeout", type=float, default=default("timeout"), help="seconds to wait for an answer (300)"
    )
    group.add_argument(
        "--max-retries",
        type=int,
        default=default("max_retries"),
        help=f"retries on connection errors, 429, 503 (default {DEFAULT_MAX_RETRIES})",
    )
    group.add_argument(
        "-v", "--verbose", action="store_true", default=default("verbose"),
        help="log retries and requests to stderr",
    )


def _connection_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    _add_connection_options(parent, defaults=False)
    return parent


def format_probability(p: float, digits: int = 3) -> str:
    """``p`` with ``digits`` decimals, more where rounding would print a certainty the model did not give.

    0.999735 prints as 0.9997, not 1.000; 0.0004 as 0.0004, not 0.000. Exactly 0 and 1 print as they are.
    """
    for places in range(digits, 7):
        text = f"{p:.{places}f}"
        if (float(text) not in (0.0, 1.0)) or p in (0.0, 1.0):
            return text
    return "<0.000001" if p < 0.5 else ">0.999999"


def _threshold(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {number}")
    return number


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (separate so that tests and docs can inspect it)."""
    parent = _connection_options()
    parser = argparse.ArgumentParser(
        prog="ich", description="Client of the ICH (intracranial hemorrhage) detection service."
    )
    parser.add_argument("--version", action="version", version=f"ich-client {__version__}")
    _add_connection_options(parser, defaults=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_analyze_command(commands, parent)
    _add_job_commands(commands, parent)
    _add_service_commands(commands, parent)
    return parser


def _add_analyze_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], parent: argparse.ArgumentParser
) -> None:
    """``analyze``: upload studies and print, or queue, their findings."""
    analyze = commands.add_parser(
        "analyze",
        parents=[parent],
        help="analyse one or more studies",
        description="Upload each study (a .zip, a folder of DICOM files, or a single DICOM file) and "
        "print the findings.",
    )
    analyze.add_argument("paths", nargs="+", metavar="PATH", help="a study: .zip, folder or DICOM file")
    analyze.add_argument(
        "--json", action="store_true", help="print JSON: one object for one study, a list for several"
    )
    analyze.add_argument("--out", type=Path, metavar="DIR", help="also write one <study>.json per study")
    analyze.add_argument(
        "--threshold",
        type=_threshold,
        metavar="T",
        help="re-decide ich_detected on the client as ich_probability >= T (the service's own threshold "
        "is replaced in the output); default: keep the service's decision",
    )
    analyze.add_argument(
        "--overlays",
        action="store_true",
        help="with --out: also write PNG previews of the slices with the most certain lesion",
    )
    analyze.add_argument(
        "--seg",
        action="store_true",
        help="with --out: also write the lesion mask as a DICOM SEG (<study>-seg.dcm), when there is one",
    )
    analyze.add_argument(
        "--one-study",
        action="store_true",
        help="all PATHs are files and folders of ONE study (default: each PATH is a study)",
    )
    analyze.add_argument("--top", type=int, default=3, metavar="N", help="top slices in the summary (3)")
    analyze.add_argument("--no-progress", action="store_true", help="no progress bars")
    analyze.add_argument(
        "--async",
        dest="queue",
        action="store_true",
        help="queue each study (POST /v1/studies) and print its job id, one per line, without waiting; "
        "then `ich status ID` or `ich wait ID`",
    )


def _add_job_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], parent: argparse.ArgumentParser
) -> None:
    """``status`` and ``wait``: the jobs queued by ``analyze --async``."""
    status = commands.add_parser(
        "status",
        parents=[parent],
        help="the state of queued studies",
        description="GET /v1/studies/{id} for each job id: queued, running, done or failed.",
    )
    status.add_argument("ids", nargs="+", metavar="ID", help="a job id printed by `ich analyze --async`")
    status.add_argument("--json", action="store_true", help="print the jobs as JSON")
    wait = commands.add_parser(
        "wait",
        parents=[parent],
        help="wait for queued studies and print their findings",
        description="Poll each job until it is done or failed, showing its state, then print the findings.",
    )
    wait.add_argument("ids", nargs="+", metavar="ID", help="a job id printed by `ich analyze --async`")
    wait.add_argument(
        "--json", action="store_true", help="print JSON: one result for one job, a list for several"
    )
    wait.add_argument("--wait-timeout", type=float, metavar="S", help="give up after S seconds per job")
    wait.add_argument("--poll", type=float, default=1.0, metavar="S", help="seconds between polls (1)")
    wait.add_argument("--top", type=int, default=3, metavar="N", help="top slices in the summary (3)")
    wait.add_argument("--no-progress", action="store_true", help="no progress line")
    wait.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="also write <id>.json per job (and the previews and SEG queued with --overlays/--seg)",
    )


def _add_service_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], parent: argparse.ArgumentParser
) -> None:
    """``health`` and ``models``: what the service is and whether it is ready."""
    health = commands.add_parser(
        "health", parents=[parent], help="is the service alive and ready", description="GET /healthz, /readyz"
    )
    health.add_argument("--json", action="store_true", help="print JSON")
    models = commands.add_parser(
        "models", parents=[parent], help="what the service runs", description="GET /v1/models"
    )
    models.add_argument("--json", action="store_true", help="print JSON")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ich`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="ich: %(message)s",
        stream=sys.stderr,
    )
    if args.max_retries < 0:
        parser.error("--max-retries must be >= 0")
    try:
        client = ICHClient(args.url, args.api_key, timeout=args.timeout, max_retries=args.max_retries)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        with client:
            if args.command == "analyze":
                return _submit_all(client, args) if args.queue else _analyze(client, args)
            if args.command == "status":
                return _status(client, args)
            if args.command == "wait":
                return _wait(client, args)
            if args.command == "health":
                return _health(client, args)
            return _models(client, args)
    except KeyboardInterrupt:
        _err("interrupted")
        return 130


def _analyze(client: ICHClient, args: argparse.Namespace) -> int:
    if args.top < 0:
        _err("--top must be >= 0")
        return EXIT_USAGE
    if (args.overlays or args.seg) and args.out is None:
        _err("--overlays and --seg need --out DIR (the files go there)")
        return EXIT_USAGE
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    # tqdm: True hides the bars; None shows them only when stderr is a terminal.
    disable: bool | None = True if args.no_progress else None
    results: list[CaseResult | None] = []
    used_names: set[str] = set()
    # Each study: (what to pack, how to name it in messages and --out).
    studies: list[tuple[str | list[str], str]] = (
        [(list(args.paths), str(Path(args.paths[0]).resolve().parent))]
        if args.one_study
        else [(path, path) for path in args.paths]
    )
    overall = tqdm(
        total=len(studies),
        desc="studies",
        unit="study",
        file=sys.stderr,
        disable=True if disable or len(studies) < 2 else None,
        position=0,
        leave=False,
    )
    with overall:
        for study, path in studies:
            answer = _analyze_one(
                client,
                study,
                path,
                disable,
                position=1 if len(studies) > 1 else 0,
                include=(args.overlays, args.seg),
            )
            result = answer if isinstance(answer, CaseResult) else None
            if result is not None and args.threshold is not None:
                result = result.with_threshold(args.threshold)
            results.append(result)
            overall.update(1)
            if result is None:
                continue
            if args.out is not None:
                _write_outputs(args.out, _unique_name(_stem(path), used_names), result)
            if not args.json:
                # tqdm.write keeps the summary from tearing a progress bar that is still drawn.
                tqdm.write(_summary(path, result, args.top), file=sys.stdout)
    return _finish(results, as_json=args.json)


def _finish(items: Sequence[BaseModel | None], *, as_json: bool, as_list: bool = False) -> int:
    """Print the ``--json`` output and return the exit status (failed if any item is missing).

    The output is a list aligned with the arguments, null where one failed; a single result stands alone
    (nothing when it failed) unless ``as_list``.
    """
    if as_json:
        payload: Any = [as_dict(item) if item is not None else None for item in items]
        if len(items) == 1 and not as_list:
            payload = payload[0]
        if payload is not None:
            sys.stdout.write(json.dumps(payload, indent=2) + "\n")
    return EXIT_OK if all(item is not None for item in items) else EXIT_FAILED


def _report(job_id: str, exc: ICHError) -> None:
    """One stderr line for a job the service could not be asked about."""
    if isinstance(exc, APIStatusError):
        _err(f"{job_id}: {exc.status_code} {exc.code}: {exc.detail}")
    else:
        _err(f"{job_id}: {exc}")


def _write_outputs(out: Path, name: str, result: CaseResult) -> None:
    """``<name>.json``, and the overlay PNGs and the SEG when the result carries them, in ``out``."""
    (out / f"{name}.json").write_text(json.dumps(as_dict(result), indent=2) + "\n", encoding="utf-8")
    for overlay in result.overlays or []:
        (out / f"{name}-slice{overlay.index:03d}.png").write_bytes(overlay.image_bytes())
    if result.seg is not None:
        (out / f"{name}-seg.dcm").write_bytes(result.seg.dicom_bytes())


def _submit_all(client: ICHClient, args: argparse.Namespace) -> int:
    """``ich analyze --async``: queue every study, print one job id per line (or the jobs as JSON)."""
    if args.out is not None or args.threshold is not None:
        _err("--out and --threshold apply to results: use them with `ich wait`, not with --async")
        return EXIT_USAGE
    disable: bool | None = True if args.no_progress else None
    studies: list[tuple[str | list[str], str]] = (
        [(list(args.paths), str(Path(args.paths[0]).resolve().parent))]
        if args.one_study
        else [(path, path) for path in args.paths]
    )
    jobs: list[Job | None] = []
    for study, path in studies:

        def send(packed: PackedStudy, progress: Callable[[int, int], None]) -> Job:
            return client.submit_packed(
                packed, include_overlays=args.overlays, include_seg=args.seg, progress=progress
            )

        job = _analyze_one(client, study, path, disable, position=0, send=send)
        jobs.append(job if isinstance(job, Job) else None)
        if isinstance(job, Job) and not args.json:
            sys.stdout.write(f"{job.id}\n")
            sys.stdout.flush()
    return _finish(jobs, as_json=args.json, as_list=True)


def _status(client: ICHClient, args: argparse.Namespace) -> int:
    jobs: list[Job | None] = []
    for job_id in args.ids:
        try:
            job = client.get_job(job_id)
        except ICHError as exc:
            _report(job_id, exc)
            jobs.append(None)
            continue
        jobs.append(job)
        if not args.json:
            sys.stdout.write(_job_line(job) + "\n")
    return _finish(jobs, as_json=args.json, as_list=True)


def _job_line(job: Job) -> str:
    line = f"{job.id}: {job.status}"
    if job.attempts > 1 or (job.attempts and job.status in ("queued", "failed")):
        line += f" (attempt {job.attempts})"
    if job.error is not None:
        line += f": {job.error.code}: {job.error.detail}"
    if job.result is not None:
        decision = "ICH DETECTED" if job.result.ich_detected else "no ICH detected"
        line += f": {decision} (probability {format_probability(job.result.ich_probability)})"
    return line


def _wait(client: ICHClient, args: argparse.Namespace) -> int:
    if args.poll <= 0 or (args.wait_timeout is not None and args.wait_timeout < 0):
        _err("--poll must be positive and --wait-timeout >= 0")
        return EXIT_USAGE
    disable: bool | None = True if args.no_progress else None
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    results: list[CaseResult | None] = []
    for job_id in args.ids:
        with tqdm(total=1, desc=f"{job_id[:8]} …", file=sys.stderr, disable=disable, leave=False) as bar:

            def on_update(job: Job, bar: tqdm[Any] = bar) -> None:
                bar.set_description_str(f"{job.id[:8]} {job.status}")

            try:
                job = client.wait(
                    job_id, timeout=args.wait_timeout, poll_interval=args.poll, on_update=on_update
                )
            except JobTimeoutError as exc:
                _err(f"{job_id}: still {exc.job.status} after {args.wait_timeout:g} s")
                results.append(None)
                continue
            except ICHError as exc:
                _report(job_id, exc)
                results.append(None)
                continue
            bar.update(1)
        if job.status != "done" or job.result is None:
            error = job.error
            _err(f"{job_id}: failed: {error.code}: {error.detail}" if error else f"{job_id}: failed")
            for reason in (error.reasons or []) if error else []:
                _err(f"  {', '.join(f'{k}: {v}' for k, v in reason.items())}")
            results.append(None)
            continue
        results.append(job.result)
        if args.out is not None:
            _write_outputs(args.out, job.id, job.result)
        if not args.json:
            tqdm.write(_summary(job_id, job.result, args.top), file=sys.stdout)
    return _finish(results, as_json=args.json)


def _analyze_one(
    client: ICHClient,
    study: str | list[str],
    path: str,
    disable: bool | None,
    position: int,
    include: tuple[bool, bool] = (False, False),
    send: Callable[[PackedStudy, Callable[[int, int], None]], Job] | None = None,
) -> CaseResult | Job | None:
    """Zip, upload and analyse (or queue) one study; errors are printed and give None."""
    label = Path(path).name or path
    bars = {"disable": disable, "leave": False, "position": position, "file": sys.stderr}
    try:
        packed = _pack_with_progress(study, label, bars)
        with (
            packed,
            tqdm(
                total=packed.size,
                desc=f"upload {label}",
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                **bars,
            ) as upload,
        ):

            def on_bytes(sent: int, total: int) -> None:
                if sent < upload.n:  # a retry starts the upload again
                    upload.reset(total=total)
                upload.update(sent - upload.n)
                if sent == total:
                    upload.set_description_str(f"{'queue' if send else 'analyse'} {label}")

            if send is not None:
                return send(packed, on_bytes)
            return client.analyze_packed(
                packed, include_overlays=include[0], include_seg=include[1], progress=on_bytes
            )
    except APIStatusError as exc:
        _err(f"{path}: {exc.status_code} {exc.code}: {exc.detail}" + _request_id(exc))
    except ICHError as exc:
        _err(f"{path}: {exc}")
    except (OSError, ValueError) as exc:
        _err(f"{path}: {exc}")
    return None


def _pack_with_progress(study: str | list[str], label: str, bars: dict[str, Any]) -> PackedStudy:
    """Pack the study, with a bar only when files are zipped (a ready zip is sent as it is)."""
    zipping: tqdm[Any] | None = None

    def on_file(done: int, total: int) -> None:
        nonlocal zipping
        if zipping is None:
            zipping = tqdm(total=total, desc=f"zip {label}", unit="file", **bars)
        zipping.update(done - zipping.n)

    try:
        return pack_study(study, on_file=on_file)
    finally:
        if zipping is not None:
            zipping.close()


def _summary(path: str, result: CaseResult, top: int) -> str:
    decision = "ICH DETECTED" if result.ich_detected else "no ICH detected"
    series = result.series
    lines = [
        f"{path}: {decision} (probability {format_probability(result.ich_probability)}, "
        f"threshold {format_probability(result.threshold)})",
        f"  indeterminate: {'yes' if result.indeterminate else 'no'}",
        f"  hemorrhage volume: {result.hemorrhage_volume_ml:.1f} mL",
        f"  series: {series.slices_used} slices, {series.slice_thickness_mm:g} mm"
        + (f", {_count(len(series.skipped), 'file')} skipped" if series.skipped else "")
        + (f", {_count(len(series.passed_over), 'other series')} passed over" if series.passed_over else ""),
    ]
    if result.uncertainty is not None:
        lines.append(f"  uncertainty (base models' disagreement): {result.uncertainty:.3f}")
    if result.subtypes is not None:
        measured = {k: v for k, v in result.subtypes.model_dump().items() if v is not None}
        shown = ", ".join(f"{k} {format_probability(v)}" for k, v in measured.items()) or "none measured"
        lines.append(f"  subtypes: {shown}")
    for warning in result.warnings:
        lines.append(f"  warning: {warning}")
    best = result.top_slices(top)
    if best:
        lines.append(
            "  top slices: " + ", ".join(f"#{s.index} ({format_probability(s.probability)})" for s in best)
        )
    lines.append(
        f"  model {result.model_version} on {result.engine}, {result.timing_ms.total:.0f} ms, "
        f"case_id {result.case_id}"
    )
    return "\n".join(lines)


def _health(client: ICHClient, args: argparse.Namespace) -> int:
    try:
        alive = client.health()
        ready = client.ready()
    except ICHError as exc:
        _err(str(exc))
        return EXIT_FAILED
    if args.json:
        sys.stdout.write(json.dumps({"healthz": as_dict(alive), "readyz": as_dict(ready)}, indent=2) + "\n")
    else:
        sys.stdout.write(f"{client.base_url}: alive, {'ready' if ready.ok else 'NOT ready'}\n")
        if not ready.ok:
            reason = (ready.model_extra or {}).get("detail")
            if reason:
                sys.stdout.write(f"  {reason}\n")
    return EXIT_OK if alive.ok and ready.ok else EXIT_FAILED


def _models(client: ICHClient, args: argparse.Namespace) -> int:
    try:
        info = client.models()
    except ICHError as exc:
        _err(str(exc))
        return EXIT_FAILED
    if args.json:
        sys.stdout.write(json.dumps(as_dict(info), indent=2) + "\n")
        return EXIT_OK
    sys.stdout.write(f"model version {info.model_version or '?'} on {info.engine or '?'}\n")
    if info.input_size is not None:
        sys.stdout.write(f"  input {info.input_size}x{info.input_size}, threshold {info.threshold}\n")
    for model in info.models:
        state = {True: "ready", False: "NOT ready", None: ""}[model.ready]
        parts = [model.name, model.platform or "", f"version {model.version}" if model.version else "", state]
        sys.stdout.write("  " + "  ".join(p for p in parts if p) + "\n")
    return EXIT_OK


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 or noun.endswith("s") else f"{n} {noun}s"


def _stem(path: str) -> str:
    name = Path(path).resolve().name
    return name[:-4] if name.lower().endswith(".zip") else (name or "study")


def _unique_name(stem: str, used: set[str]) -> str:
    name, n = stem, 1
    while name in used:
        n += 1
        name = f"{stem}-{n}"
    used.add(name)
    return name


def _request_id(exc: APIStatusError) -> str:
    return f" (request_id {exc.request_id})" if exc.request_id else ""


def _err(message: str) -> None:
    tqdm.write(f"ich: {message}", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
