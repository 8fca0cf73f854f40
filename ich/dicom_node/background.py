"""The DICOM node's background loops: one asyncio task that repeats a step after each pause.

Both of the node's loops (queuing complete studies, delivering results) run in the gateway's event loop
from the lifespan's start to its end, and neither may stop because one step failed: a bad study or a store
that hiccups is logged and the next step tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

__all__ = ["RepeatingTask"]

logger = logging.getLogger(__name__)


class RepeatingTask:
    """``pause``, then ``step``, again and again in one task, from :meth:`start` until :meth:`stop`.

    Args:
        name: the asyncio task's name.
        what: what the loop does, for the log line of a failed step.
        step: one round of work.
        pause: waits until the next round is due.
    """

    def __init__(
        self,
        name: str,
        what: str,
        step: Callable[[], Awaitable[object]],
        pause: Callable[[], Awaitable[object]],
    ) -> None:
        self.name = name
        self.what = what
        self._step = step
        self._pause = pause
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        """Cancel the loop and wait until it has ended (a step in progress is cancelled with it)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await self._pause()
            try:
                await self._step()
            except Exception as exc:  # the type only: a library's message may quote header values
                logger.error("%s error %s", self.what, type(exc).__name__)
