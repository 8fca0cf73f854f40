"""Work that stops when the client leaves: the case's wait for a slot and its analysis.

The request body is read by then, so the next ASGI message the request receives is the disconnect; work
still running at that moment is cancelled (and with it the engine's calls), and the caller learns where the
client left from :class:`ClientGoneError`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request

T = TypeVar("T")


class ClientGoneError(Exception):
    """The client disconnected while its case was ``where`` (waiting for a slot, in analysis)."""

    def __init__(self, where: str) -> None:
        super().__init__(where)
        self.where = where


async def _wait_for_disconnect(request: Request) -> None:
    """Return once the client has gone (the body is read, so the next ASGI message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(request: Request, work: Awaitable[T], where: str) -> T:
    """``work``'s result; :class:`ClientGoneError`, with ``work`` cancelled, once the client disconnects."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        raise ClientGoneError(where)
    return task.result()
