"""The analysis slots and their line (``api.admission``): hand-over, order, bounds, deadline, cancellation.

Load shedding at once let clients that were just answered win the freed slot again and again while others
only ever got 503; these tests pin down the rules that stop it, on the admission itself (exact and fast) and
through the app with the fake engine (the route waits, leaves the line on a disconnect, counts the line).
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import numpy as np
import pytest
from starlette.requests import Request

from api.admission import CaseAdmission, client_of
from api.app import create_app
from api.auth import key_digest
from api.errors import ApiError
from api.settings import Settings
from tests.support.asgi_gateway import asgi_client
from tests.support.dicom_study import study_zip
from tests.support.fake_engine import FakeEngine

ZIP = {"content-type": "application/zip"}
PAPER_RULE = Path(tempfile.mkdtemp(prefix="paper-rule-"))


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def _waiting(admission: CaseAdmission, client: str) -> asyncio.Task[None]:
    return asyncio.create_task(admission.acquire(client))


async def test_a_freed_slot_goes_to_the_head_of_the_line_not_to_the_next_arrival() -> None:
    admission = CaseAdmission(slots=1, max_waiting=4, wait_s=10, retry_after_s=2)
    await admission.acquire("a")
    b = _waiting(admission, "b")
    await _settle()
    assert admission.waiting == 1 and not b.done()
    admission.release()  # a is answered ...
    late = _waiting(admission, "a")  # ... and sends again at once
    await _settle()
    assert b.done() and b.exception() is None  # b holds the slot a gave back
    assert not late.done() and admission.inflight == 1 and admission.waiting == 1
    admission.release()
    await _settle()
    assert late.done() and admission.waiting == 0
    admission.release()
    assert admission.inflight == 0


async def test_the_line_puts_the_least_recently_served_client_first() -> None:
    admission = CaseAdmission(slots=1, max_waiting=4, wait_s=10, retry_after_s=2)
    await admission.acquire("a")  # a is served: its next case ranks behind clients not yet served
    again = _waiting(admission, "a")
    await _settle()
    new = _waiting(admission, "c")
    await _settle()
    admission.release()
    await _settle()
    assert new.done() and not again.done()  # c came later but had never been served
    admission.release()
    await _settle()
    assert again.done()
    admission.release()


async def test_a_full_line_sheds_the_most_recently_served_client_with_503_busy() -> None:
    admission = CaseAdmission(slots=1, max_waiting=1, wait_s=10, retry_after_s=7)
    await admission.acquire("a")
    again = _waiting(admission, "a")
    await _settle()
    assert admission.would_shed("a") and not admission.would_shed("x")  # x has never been served
    newcomer = _waiting(admission, "x")
    await _settle()
    with pytest.raises(ApiError) as shed:
        await again
    assert shed.value.status_code == 503 and shed.value.code == "busy"
    assert shed.value.headers == {"Retry-After": "7"}
    assert admission.waiting == 1 and not newcomer.done()
    with pytest.raises(ApiError):  # a later arrival of an equal rank is the one shed
        await admission.acquire("a")
    admission.release()
    await _settle()
    assert newcomer.done() and newcomer.exception() is None
    admission.release()
    assert admission.inflight == 0


async def test_no_line_sheds_at_once_and_a_wait_past_the_deadline_is_503() -> None:
    admission = CaseAdmission(slots=1, max_waiting=0, wait_s=10, retry_after_s=2)
    await admission.acquire("a")
    assert admission.would_shed("b")
    with pytest.raises(ApiError):
        await admission.acquire("b")
    timed = CaseAdmission(slots=1, max_waiting=4, wait_s=0.2, retry_after_s=2)
    await timed.acquire("a")
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ApiError) as late:
        await timed.acquire("b")
    assert 0.2 <= loop.time() - started < 1.0
    assert late.value.status_code == 503 and "0.2 s" in late.value.detail
    assert timed.waiting == 0
    timed.release()
    assert timed.inflight == 0  # the timed-out waiter took nothing


async def test_a_waiter_that_leaves_gives_back_its_place_and_any_slot_handed_to_it() -> None:
    admission = CaseAdmission(slots=1, max_waiting=4, wait_s=10, retry_after_s=2)
    await admission.acquire("a")
    leaving = _waiting(admission, "b")
    staying = _waiting(admission, "c")
    await _settle()
    leaving.cancel()
    await asyncio.gather(leaving, return_exceptions=True)
    assert admission.waiting == 1
    # The slot is handed to c, and c's client leaves in the same moment: the slot must not be lost.
    admission.release()
    staying.cancel()
    await asyncio.gather(staying, return_exceptions=True)
    assert admission.inflight == 0 and admission.waiting == 0
    await asyncio.wait_for(admission.acquire("d"), timeout=1)


def _request(headers: dict[str, str], host: str = "10.0.0.7") -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "headers": raw, "client": (host, 4000)})


def test_a_client_is_its_api_keys_digest_or_else_its_address() -> None:
    keyed = client_of(_request({"Authorization": "Bearer s3cret"}))
    assert keyed == "key:" + key_digest("s3cret") and "s3cret" not in keyed
    assert client_of(_request({"Authorization": "Bearer s3cret"}, host="10.0.0.8")) == keyed
    assert client_of(_request({})) == "peer:10.0.0.7"
    assert client_of(_request({"Authorization": "Basic abc"})) == "peer:10.0.0.7"


def _volume() -> np.ndarray:
    hu = np.full((4, 32, 32), 30.0, np.float32)
    hu[2, 8:20, 8:20] = 70.0
    return hu


async def test_through_the_app_a_case_waits_for_the_slot_and_is_answered() -> None:
    engine = FakeEngine()
    engine.gate = asyncio.Event()
    settings = Settings(max_inflight_cases=1, max_waiting_cases=2, model_repository=PAPER_RULE)
    app = create_app(settings, engine=engine)
    data, _ = study_zip(_volume())
    async with asgi_client(app) as client:
        first = asyncio.create_task(client.post("/v1/cases", content=data, headers=ZIP))
        await asyncio.wait_for(engine.entered.wait(), timeout=30)
        second = asyncio.create_task(client.post("/v1/cases", content=data, headers=ZIP))
        while app.state.admission.waiting == 0:
            await asyncio.sleep(0.01)
        text = (await client.get("/metrics")).text
        assert "ich_waiting_cases 1.0" in text and "ich_inflight_cases 1.0" in text
        # The waiting body still counts against the upload buffer.
        assert app.state.upload_budget.used == len(data)
        engine.gate.set()
        assert (await first).status_code == 200
        assert (await second).status_code == 200
    assert app.state.admission.inflight == 0 and app.state.upload_budget.used == 0
