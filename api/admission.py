"""Who is analysed next: the ``ICH_MAX_INFLIGHT_CASES`` slots of ``POST /v1/cases`` and the line before them.

A case whose body is in takes a free slot at once. When every slot is taken it waits in a bounded line
(``ICH_MAX_WAITING_CASES``) for at most ``ICH_CASE_WAIT_S`` seconds, then gets 503 ``busy`` with Retry-After.
A freed slot is handed straight to the head of the line, never left for whoever arrives next: a client that
has just been answered and sends again goes behind those already waiting, instead of winning the race for
the slot its own answer freed (which is how shedding at once starved some clients while others were served
again and again).

The line is ordered by when each waiter's client was last given a slot (never first), then by arrival, and
when it overflows the waiter shed is the last in that order: with more clients than slots and line
together, the ones shed are those served most recently, so every client is served in turn. A client is its
API key's digest when keys are configured, its address otherwise (clients behind one proxy share a turn).
Everything here runs on the event loop, so no lock is needed.

:func:`admitted_case` is the whole door of one case, as the route uses it: shed at once when saturated,
the body read (paced, its upload-buffer share held while it waits), then a slot held for the block.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from starlette.requests import Request

from api.auth import key_digest
from api.disconnect import unless_disconnected
from api.errors import ApiError, service_unavailable
from api.settings import Settings
from api.upload import pace_of, read_zip_upload

#: Clients whose last turn is remembered; the least recently served are forgotten first (and then rank as
#: never served, which only moves them forward).
REMEMBERED_CLIENTS = 10_000

_NEVER = -1


@dataclass(order=True)
class _Waiter:
    rank: tuple[int, int]
    client: str = field(compare=False)
    turn: asyncio.Future[None] = field(compare=False)


class CaseAdmission:
    """The analysis slots and the fair, bounded, time-limited line for them."""

    def __init__(self, slots: int, max_waiting: int, wait_s: float, retry_after_s: int) -> None:
        if slots < 1 or max_waiting < 0 or wait_s <= 0:
            raise ValueError(
                "CaseAdmission needs slots >= 1, max_waiting >= 0, wait_s > 0; "
                f"got {slots}, {max_waiting}, {wait_s}"
            )
        self.slots = slots
        self.max_waiting = max_waiting
        self.wait_s = wait_s
        self.retry_after_s = retry_after_s
        self.inflight = 0
        self._line: list[_Waiter] = []
        self._last_turn: OrderedDict[str, int] = OrderedDict()
        self._turns = itertools.count()
        self._arrivals = itertools.count()

    @property
    def waiting(self) -> int:
        """Cases in the line (their bodies are in, their slot is not)."""
        return len(self._line)

    def would_shed(self, client: str) -> bool:
        """True when a case of ``client`` arriving now would be shed at once: checked before its body is read,
        so a saturated gateway costs the client no upload."""
        if self.inflight < self.slots or len(self._line) < self.max_waiting:
            return False
        return not self._line or self._priority(client) >= self._line[-1].rank[0]

    async def acquire(self, client: str) -> None:
        """Return once ``client``'s case holds a slot (give it back with :meth:`release`).

        Raises:
            ApiError: 503 ``busy`` when the line is full and this case is last in it, when a case ranked
                before it pushes it out, or after ``wait_s`` in the line.
        """
        if self.inflight < self.slots:  # a free slot means nobody waits: slots pass to the line first
            self.inflight += 1
            self._record_turn(client)
            return
        waiter = _Waiter(
            (self._priority(client), next(self._arrivals)), client, asyncio.get_running_loop().create_future()
        )
        bisect.insort(self._line, waiter)
        if len(self._line) > self.max_waiting:
            shed = self._line.pop()
            if shed is waiter:
                raise self.busy("every slot is taken and the line is full")
            shed.turn.set_exception(self.busy("every slot is taken and the line is full"))
        try:
            async with asyncio.timeout(self.wait_s):
                await waiter.turn
        except TimeoutError:
            self._abandon(waiter)
            raise self.busy(f"no slot came free within {self.wait_s:g} s") from None
        except BaseException:  # cancelled (the client left) or pushed out of the line
            self._abandon(waiter)
            raise

    def release(self) -> None:
        """Give a slot back: to the head of the line if anyone waits, else free."""
        if self._line:
            waiter = self._line.pop(0)
            self._record_turn(waiter.client)
            waiter.turn.set_result(None)  # the slot passes on; inflight stays as it is
            return
        self.inflight -= 1

    def _abandon(self, waiter: _Waiter) -> None:
        """A waiter gives up; a slot handed to it in the same moment is passed on."""
        turn = waiter.turn
        if turn.done() and not turn.cancelled() and turn.exception() is None:
            self.release()
        elif waiter in self._line:
            self._line.remove(waiter)

    def _priority(self, client: str) -> int:
        return self._last_turn.get(client, _NEVER)

    def _record_turn(self, client: str) -> None:
        self._last_turn[client] = next(self._turns)
        self._last_turn.move_to_end(client)
        if len(self._last_turn) > REMEMBERED_CLIENTS:
            self._last_turn.popitem(last=False)

    def busy(self, why: str) -> ApiError:
        """The 503 ``busy`` answer of a shed case, with Retry-After."""
        return service_unavailable(
            "busy", f"{self.slots} cases are being analysed ({why}); retry later", self.retry_after_s
        )


def client_of(request: Request) -> str:
    """Whose turn a request is: its API key's digest if it presents one, else its peer address.

    The key itself is never kept; the digest is only compared, never logged.
    """
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and key.strip():
        return "key:" + key_digest(key.strip())
    return "peer:" + (request.client.host if request.client else "")


@asynccontextmanager
async def admitted_case(request: Request, settings: Settings) -> AsyncIterator[bytearray]:
    """The case's zip, read at the pace the settings demand, with an analysis slot held for the block.

    A case that would be shed at once is refused before its body is read, so a saturated gateway costs
    the client no upload. The body's share of the upload buffer is held until the slot is, so the bodies
    waiting in the line count against the buffer; a slow sender holds its connection, never a slot.

    Raises:
        ApiError: 503 ``busy`` (shed, the line full or its deadline passed, the upload buffer full); the
            upload's own errors (408, 413, 400).
        api.disconnect.ClientGoneError: the client left while its case waited for a slot.
    """
    admission: CaseAdmission = request.app.state.admission
    client = client_of(request)
    if admission.would_shed(client):
        raise admission.busy("every slot is taken and the line is full")
    with request.app.state.upload_budget.hold() as share:
        data = await read_zip_upload(request, settings.max_upload_bytes, pace_of(settings), share=share)
        await unless_disconnected(request, admission.acquire(client), "waiting for a slot")
    try:
        yield data
    finally:
        admission.release()
