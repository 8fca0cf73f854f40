"""The gateway app in the test process, its lifespan running, and an httpx client speaking ASGI to it.

No socket: for tests that need ``asyncio`` concurrency against the app (requests in flight at once, a
client that leaves) without a server around it. ``tests.support.threaded_gateway`` serves the app over
loopback instead, for peers that must reach it over the network.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI


@contextlib.asynccontextmanager
async def asgi_client(app: FastAPI, timeout_s: float = 30.0) -> AsyncIterator[httpx.AsyncClient]:
    """A client on ``app`` (base URL ``http://gateway``) while its lifespan runs (engine, workers...)."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://gateway", timeout=timeout_s
        ) as client:
            yield client
