"""The job store on a real SQLite file and a real PostgreSQL cluster: the same behaviour on both.

Enqueue, idempotency, paging, deletion, claims under leases (a dead worker's job is taken again, the dead
worker can no longer write), concurrent claimers, retries, retention and the migrations.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import inspect

from api.settings import Settings
from api.study_queue import STUDIES_FOLDER, open_job_store
from ich.jobs import DatabasePayloads, FilePayloads, IdempotencyConflictError, JobError, JobStore
from ich.jobs.migrate import current_revision, head_revision

LEASE = 30.0


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    """The database URL for the store (None: SQLite in the data directory)."""
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(backend: str | None, tmp_path: Path, clock: Clock) -> Iterator[JobStore]:
    opened = open_job_store(Settings(data_dir=tmp_path / "data", database_url=backend))
    opened.clock = clock
    yield opened
    opened.engine.dispose()


def test_submit_stores_the_upload_and_queues_the_job(store: JobStore, tmp_path: Path, clock: Clock) -> None:
    job, created = store.submit(b"zip-bytes-1", options=("seg",))
    assert created
    assert job.status == "queued" and job.attempts == 0 and job.created_at == clock.now
    assert job.result is None and job.error is None and job.options == ("seg",)
    if isinstance(store.payloads, FilePayloads):
        stored = tmp_path / "data" / STUDIES_FOLDER / f"{job.id}.zip"
        assert stored.read_bytes() == b"zip-bytes-1"
        assert not list(stored.parent.glob(".*"))  # no partial file left behind
    else:
        assert isinstance(store.payloads, DatabasePayloads)
    claimed = store.claim("w1", lease_s=LEASE, max_attempts=3)
    assert claimed is not None and claimed.data == b"zip-bytes-1" and claimed.options == ("seg",)


def test_one_idempotency_key_gives_one_job(store: JobStore) -> None:
    first, created = store.submit(b"study", idempotency_key="key-1")
    again, created_again = store.submit(b"study", idempotency_key="key-1")
    assert created and not created_again
    assert again.id == first.id
    assert store.counts()["queued"] == 1
    with pytest.raises(IdempotencyConflictError) as info:
        store.submit(b"another study", idempotency_key="key-1")
    assert info.value.job_id == first.id


def test_concurrent_uploads_with_one_key_make_one_job(store: JobStore) -> None:
    ids: list[str] = []
    barrier = threading.Barrier(6)

    def submit() -> None:
        barrier.wait()
        job, _ = store.submit(b"same study", idempotency_key="race")
        ids.append(job.id)

    threads = [threading.Thread(target=submit) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 6 and len(set(ids)) == 1
    assert store.counts()["queued"] == 1
    if isinstance(store.payloads, FilePayloads):
        assert len(list(store.payloads.root.iterdir())) == 1  # the losers' files are gone


def test_listing_is_newest_first_paged_and_filtered(store: JobStore, clock: Clock) -> None:
    ids = []
    for i in range(7):
        clock.now += 1
        ids.append(store.submit(f"study {i}".encode())[0].id)
    page = store.list(limit=3)
    assert [j.id for j in page.jobs] == ids[::-1][:3]
    assert all(j.result is None for j in page.jobs)
    seen = [j.id for j in page.jobs]
    while page.next_cursor is not None:
        page = store.list(limit=3, cursor=page.next_cursor)
        seen += [j.id for j in page.jobs]
    assert seen == ids[::-1]
    claimed = store.claim("w1", lease_s=LEASE, max_attempts=3)
    assert claimed is not None and claimed.id == ids[0]  # oldest first
    running = store.list(status="running")
    assert [j.id for j in running.jobs] == [ids[0]] and running.next_cursor is None
    with pytest.raises(ValueError, match="unknown status"):
        store.list(status="lost")
    with pytest.raises(ValueError, match="cursor"):
        store.list(cursor="not-a-cursor")


def test_delete_removes_job_result_and_upload(store: JobStore) -> None:
    job, _ = store.submit(b"to delete")
    assert store.delete(job.id)
    assert store.get(job.id) is None
    assert not store.delete(job.id)
    if isinstance(store.payloads, FilePayloads):
        assert not list(store.payloads.root.iterdir())
    assert store.claim("w1", lease_s=LEASE, max_attempts=3) is None


def test_a_job_is_finished_once_by_its_lease_holder(store: JobStore, clock: Clock) -> None:
    job, _ = store.submit(b"study")
    claimed = store.claim("w1", lease_s=LEASE, max_attempts=3)
    assert claimed is not None and claimed.attempts == 1
    assert store.claim("w2", lease_s=LEASE, max_attempts=3) is None  # held
    clock.now += LEASE / 2
    assert store.renew(job.id, "w1", lease_s=LEASE)
    clock.now += LEASE - 1
    assert store.claim("w2", lease_s=LEASE, max_attempts=3) is None  # renewed, still held
    clock.now += 2  # w1 stopped renewing (it died): the lease runs out
    again = store.claim("w2", lease_s=LEASE, max_attempts=3)
    assert again is not None and again.id == job.id and again.attempts == 2
    # The first worker comes back: it can neither renew, finish nor fail the job any more.
    assert not store.renew(job.id, "w1", lease_s=LEASE)
    assert not store.complete(job.id, "w1", {"from": "w1"})
    assert not store.fail(job.id, "w1", JobError("x", "y"))
    assert store.complete(job.id, "w2", {"from": "w2"})
    done = store.get(job.id)
    assert done is not None and done.status == "done" and done.result == {"from": "w2"}
    assert done.finished_at == clock.now and done.attempts == 2
    assert not store.complete(job.id, "w2", {"from": "w2 again"})


def test_a_job_whose_workers_keep_dying_fails(store: JobStore, clock: Clock) -> None:
    job, _ = store.submit(b"killer study")
    for attempt in (1, 2):
        claimed = store.claim(f"w{attempt}", lease_s=LEASE, max_attempts=2)
        assert claimed is not None and claimed.attempts == attempt
        clock.now += LEASE + 1
    assert store.claim("w3", lease_s=LEASE, max_attempts=2) is None
    failed = store.get(job.id)
    assert failed is not None and failed.status == "failed"
    assert failed.error is not None and failed.error.code == "worker_lost"


def test_retry_later_and_release(store: JobStore, clock: Clock) -> None:
    job, _ = store.submit(b"study")
    claimed = store.claim("w1", lease_s=LEASE, max_attempts=5)
    assert claimed is not None
    assert store.retry_later(job.id, "w1", delay_s=10)
    queued = store.get(job.id)
    assert queued is not None and queued.status == "queued" and queued.attempts == 1
    assert store.claim("w1", lease_s=LEASE, max_attempts=5) is None  # not due yet
    clock.now += 10
    claimed = store.claim("w2", lease_s=LEASE, max_attempts=5)
    assert claimed is not None and claimed.attempts == 2
    assert store.release(job.id, "w2")  # shutdown: back at once, the attempt not counted
    released = store.get(job.id)
    assert released is not None and released.status == "queued" and released.attempts == 1
    reasons = ({"series_instance_uid": "1.2.3", "reason": "modality MR, not CT"},)
    claimed = store.claim("w3", lease_s=LEASE, max_attempts=5)
    assert claimed is not None
    assert store.fail(job.id, "w3", JobError("no_usable_series", "no CT", reasons))
    failed = store.get(job.id)
    assert failed is not None and failed.error is not None
    assert failed.error.to_dict() == {"code": "no_usable_series", "detail": "no CT", "reasons": list(reasons)}


def test_concurrent_claimers_never_share_a_job(store: JobStore) -> None:
    for i in range(20):
        store.submit(f"study {i}".encode())
    claimed: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(5)

    def claim_all(owner: str) -> None:
        barrier.wait()
        while (job := store.claim(owner, lease_s=LEASE, max_attempts=3)) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=claim_all, args=(f"w{i}",)) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(claimed) == 20 and len(set(claimed)) == 20
    assert store.counts() == {"queued": 0, "running": 20, "done": 0, "failed": 0}


def test_purge_deletes_what_is_past_retention(store: JobStore, clock: Clock) -> None:
    old, _ = store.submit(b"old study")
    claimed = store.claim("w1", lease_s=LEASE, max_attempts=3)
    assert claimed is not None
    assert store.complete(old.id, "w1", {"ich_probability": 0.9})
    clock.now += 3600
    recent, _ = store.submit(b"recent study")
    assert store.oldest_queued_age() == 0.0
    clock.now += 60
    assert store.oldest_queued_age() == 60.0
    assert store.purge(older_than_s=1800) == 1
    assert store.get(old.id) is None
    assert store.get(recent.id) is not None
    if isinstance(store.payloads, FilePayloads):
        assert [p.name for p in store.payloads.root.iterdir()] == [f"{recent.id}.zip"]
    assert store.purge(older_than_s=1800) == 0


def test_orphan_upload_files_are_swept(tmp_path: Path) -> None:
    store = open_job_store(Settings(data_dir=tmp_path / "data"))
    assert isinstance(store.payloads, FilePayloads)
    orphan = store.payloads.path_of("00000000-0000-4000-8000-000000000000")
    orphan.write_bytes(b"left by a crash before the commit")
    kept, _ = store.submit(b"study")
    store.purge(older_than_s=3600)
    assert orphan.exists()  # too young: it may be an upload being committed right now
    two_hours_ago = time.time() - 7200  # files age by the real clock
    os.utime(orphan, (two_hours_ago, two_hours_ago))
    os.utime(store.payloads.path_of(kept.id), (two_hours_ago, two_hours_ago))
    store.purge(older_than_s=10 * 86400)
    assert not orphan.exists() and store.payloads.path_of(kept.id).exists()


def test_migrations_reach_head_and_rerun_harmlessly(backend: str | None, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", database_url=backend)
    first = open_job_store(settings)
    second = open_job_store(settings)  # a second replica starting on the same database
    try:
        assert current_revision(first.engine) == head_revision() == "0002_dicom_results"
        tables = set(inspect(first.engine).get_table_names())
        assert {"ich_jobs", "ich_job_payloads", "ich_job_outputs", "alembic_version"} <= tables
        job, _ = first.submit(b"study")
        assert second.get(job.id) is not None
    finally:
        first.engine.dispose()
        second.engine.dispose()


def test_database_url_must_be_postgresql_or_sqlite(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="postgresql://"):
        open_job_store(Settings(data_dir=tmp_path, database_url="mysql://u@h/db"))


def test_database_urls_get_the_psycopg_driver(tmp_path: Path) -> None:
    from ich.jobs.database import database_url

    assert database_url(None, tmp_path).startswith("sqlite:///") and database_url(None, tmp_path).endswith(
        "/ich.sqlite3"
    )
    assert database_url("postgresql://u:p@db:5432/ich", tmp_path) == "postgresql+psycopg://u:p@db:5432/ich"
    assert database_url("postgres://u@db/ich", tmp_path) == "postgresql+psycopg://u@db/ich"
    assert database_url("postgresql+psycopg://u@db/ich", tmp_path) == "postgresql+psycopg://u@db/ich"
