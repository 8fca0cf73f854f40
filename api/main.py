"""``ich-serve``: run the gateway with uvicorn on ``ICH_HOST:ICH_PORT`` (default 0.0.0.0:8080).

Every setting comes from ``ICH_`` environment variables (see the README); ``--host``, ``--port`` and
``--workers`` override theirs for a quick local run. Each uvicorn worker builds its own app through the
factory, so nothing is shared between worker processes.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

import uvicorn

from api.errors import RequestIdLogFilter
from api.log_redaction import RedactingFilter, quiet_dicom_libraries
from api.settings import get_settings

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


def configure_logging(level: str) -> None:
    """Root logging with the request id in every line, and no DICOM identifier, libraries' lines included."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(RequestIdLogFilter())
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    quiet_dicom_libraries()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line overrides of the listening address (the rest is configured by environment)."""
    parser = argparse.ArgumentParser(
        prog="ich-serve",
        description="Serve the ICH ensemble gateway (research use only). Settings: ICH_* variables.",
    )
    parser.add_argument("--host", help="address to bind (default: ICH_HOST, 0.0.0.0)")
    parser.add_argument("--port", type=int, help="port to listen on (default: ICH_PORT, 8080)")
    parser.add_argument("--workers", type=int, help="uvicorn worker processes (default: ICH_WORKERS, 1)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``ich-serve`` script; the app is built by uvicorn's factory in each worker."""
    args = parse_args(argv)
    settings = get_settings()
    configure_logging(settings.log_level)
    workers = args.workers or settings.workers
    if settings.dicom_port is not None and workers > 1:
        # Each worker process would bind the DICOM port and keep its own studies being received.
        raise SystemExit("ICH_DICOM_PORT needs ICH_WORKERS=1: scale the DICOM node with replicas instead")
    uvicorn.run(
        "api.app:create_app",
        factory=True,
        host=args.host or settings.host,
        port=args.port or settings.port,
        workers=workers,
        log_level=settings.log_level,
        log_config=None,  # keep the handler above, with request ids
        access_log=False,  # the request middleware logs one line per request, with its id
        proxy_headers=True,
    )


if __name__ == "__main__":
    main()
