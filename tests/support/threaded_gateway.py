"""The gateway app served by a real uvicorn on loopback, in a thread of the test process.

For tests whose peers (a PACS, dcmtk) must reach the gateway over the network while the test keeps its
engine in hand (the fake engine): the app's lifespan runs as under ``ich-serve``, so the job workers, the
DICOM node's Storage SCP and the results delivery all start. Stopped by asking uvicorn to exit.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

START_TIMEOUT_S = 60.0


@contextlib.contextmanager
def serve_in_thread(app: FastAPI, port: int) -> Iterator[str]:
    """Serve ``app`` on ``127.0.0.1:port`` until the block ends; yields the base URL."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-gateway", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the gateway stopped during start-up (see the log)")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the gateway did not start in {START_TIMEOUT_S} s")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
