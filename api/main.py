"""``ich-serve``: run the gateway with uvicorn on ``ICH_HOST:ICH_PORT`` (default 0.0.0.0:8080)."""

from __future__ import annotations

import logging

import uvicorn

from api.errors import RequestIdLogFilter
from api.settings import get_settings

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


def configure_logging(level: str) -> None:
    """Root logging with the request id in every line (no patient data is ever logged)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(RequestIdLogFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def main() -> None:
    """Entry point of the ``ich-serve`` script; the app is built by uvicorn's factory in each worker."""
    settings = get_settings()
    configure_logging(settings.log_level)
    uvicorn.run(
        "api.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        log_config=None,  # keep the handler above, with request ids
        access_log=False,  # the request middleware logs one line per request, with its id
        proxy_headers=True,
    )


if __name__ == "__main__":
    main()
