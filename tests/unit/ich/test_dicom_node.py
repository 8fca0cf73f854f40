"""The DICOM node's parts without a network: instance checks, the study assembler over a real spool, the
destination parser and the delivery loop on a real SQLite store.

Instances come from ``ich_devtools.dicom_writer`` (and hand-forged bombs); the assembler's clock is moved
by hand.
"""

from __future__ import annotations

import asyncio
import io
import struct
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import JPEGLSLossless

from api.settings import Settings
from api.study_queue import open_job_store
from ich.dicom_node import (
    AssemblyLimits,
    DeliveryConfig,
    DeliveryError,
    DicomDestination,
    DicomWebDestination,
    InstanceRefusedError,
    ResultsDelivery,
    Status,
    StudyAssembler,
    StudySpool,
    inspect_instance,
    parse_destination,
    submit_study,
)
from ich.dicom_node.background import RepeatingTask
from ich.dicom_outputs import encode
from ich.jobs import Job, JobStore
from tests.support.pacs_study import pacs_study

MAX = 16 * 2**20


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def forged(ds: pydicom.Dataset, **changes: object) -> bytes:
    copy = pydicom.Dataset()
    copy.update(ds)
    copy.file_meta = ds.file_meta
    for keyword, value in changes.items():
        setattr(copy, keyword, value)
    return encode(copy)


def received(data: bytes) -> object:
    instance = inspect_instance(data, max_bytes=MAX)
    assert instance is not None
    return instance


# --- instances ----------------------------------------------------------------------------------------


def test_a_ct_instance_is_kept_with_its_uids() -> None:
    study = pacs_study(slices=2)
    instance = inspect_instance(study.files[0], max_bytes=MAX)
    assert instance is not None
    assert (
        instance.study_uid == study.study_uid
        and instance.sop_instance_uid == study.datasets[0].SOPInstanceUID
    )
    assert instance.data == study.files[0]


@pytest.mark.parametrize(
    ("changes", "status"),
    [
        ({"SOPInstanceUID": "../../etc/passwd"}, Status.DATASET_MISMATCH),
        ({"StudyInstanceUID": "1.2.03"}, Status.DATASET_MISMATCH),
        ({"SeriesInstanceUID": "1." + "2" * 70}, Status.DATASET_MISMATCH),
        ({"Rows": 60000, "Columns": 60000}, Status.OUT_OF_RESOURCES),
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.4"}, Status.SOP_CLASS_NOT_SUPPORTED),  # MR
    ],
)
def test_hostile_or_foreign_instances_are_refused(changes: dict[str, object], status: int) -> None:
    data = forged(pacs_study(slices=1).datasets[0], **changes)
    with pytest.raises(InstanceRefusedError) as caught:
        inspect_instance(data, max_bytes=MAX)
    assert caught.value.status == status
    assert "passwd" not in caught.value.reason


def test_garbage_too_large_and_mismatched_announcements_are_refused() -> None:
    study = pacs_study(slices=1)
    for data in (b"\x00" * 200, b"DICM", study.files[0][:300]):
        with pytest.raises(InstanceRefusedError) as caught:
            inspect_instance(data, max_bytes=MAX)
        assert caught.value.status == Status.CANNOT_UNDERSTAND
    with pytest.raises(InstanceRefusedError, match="limit of 100 bytes"):
        inspect_instance(study.files[0], max_bytes=100)
    with pytest.raises(InstanceRefusedError, match="SOP Instance UID is not the announced"):
        inspect_instance(study.files[0], max_bytes=MAX, announced_sop_instance="1.2.3.4")


def test_a_deflate_bomb_is_refused_before_it_is_inflated() -> None:
    ds = pacs_study(slices=1).datasets[0]
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    honest = encode(ds)
    assert inspect_instance(honest, max_bytes=MAX) is not None
    # A small file whose deflated dataset inflates to far more than the limit.
    head = honest[: 144 + struct.unpack("<I", honest[140:144])[0]]
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    bomb = head + compressor.compress(b"\x00" * (64 * 2**20)) + compressor.flush()
    assert len(bomb) < 200_000
    with pytest.raises(InstanceRefusedError, match="inflates beyond"):
        inspect_instance(bomb, max_bytes=MAX)


def test_a_compressed_frame_must_declare_the_images_matrix() -> None:
    ds = pacs_study(slices=1, transfer_syntax=JPEGLSLossless).datasets[0]
    assert inspect_instance(encode(ds), max_bytes=MAX) is not None
    with pytest.raises(InstanceRefusedError, match="own header"):
        inspect_instance(forged(ds, Rows=32, Columns=32), max_bytes=MAX)


def test_other_classes_of_a_ct_study_are_accepted_and_discarded() -> None:
    ds = pacs_study(slices=1).datasets[0]
    data = forged(ds, SOPClassUID=pydicom.uid.SecondaryCaptureImageStorage)
    assert inspect_instance(data, max_bytes=MAX) is None


# --- the assembler ----------------------------------------------------------------------------------


@pytest.fixture
def clock() -> Clock:
    return Clock()


def assembler_for(tmp_path: Path, clock: Clock, **limits: object) -> StudyAssembler:
    values: dict[str, object] = {"quiet_s": 10.0, **limits}
    return StudyAssembler(StudySpool(tmp_path / "spool"), AssemblyLimits(**values), clock=clock)  # type: ignore[arg-type]


def members(data: bytes) -> list[bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return sorted(archive.read(name) for name in archive.namelist())


def sender_delivers(
    assembler: StudyAssembler, files: Iterable[bytes], *, origin: str = "dicom", released: bool = True
) -> None:
    """One sender (an association, a STOW-RS request) delivers ``files`` and ends, normally or not."""
    sender = assembler.open_sender(origin)
    for data in files:
        assembler.accept(sender, received(data))  # type: ignore[arg-type]
    assembler.close_sender(sender, released=released)


def test_a_study_is_complete_after_the_quiet_period_with_no_sender_open(tmp_path: Path, clock: Clock) -> None:
    assembler = assembler_for(tmp_path, clock)
    study = pacs_study(slices=3)
    sender = assembler.open_sender("dicom")
    for data in study.files:
        assembler.accept(sender, received(data))  # type: ignore[arg-type]
    assembler.accept(sender, received(study.files[0]))  # type: ignore[arg-type]  # twice: one file
    clock.now += 60
    assert assembler.due() == []  # quiet, but the association is still open
    assembler.close_sender(sender, released=True)
    (digest,) = assembler.due()  # quiet for 60 s and closed: complete at once

    late = assembler_for(tmp_path / "other", clock)
    other = late.open_sender("dicom")
    late.accept(other, received(study.files[0]))  # type: ignore[arg-type]
    late.close_sender(other, released=True)
    clock.now += 9
    assert late.due() == []  # closed, but not yet quiet
    clock.now += 2
    assert len(late.due()) == 1
    completed = assembler.assemble(digest)
    assert completed is not None and completed.error is None and completed.origin == "dicom"
    assert members(completed.data) == sorted(study.files)
    assert assembler.due() == []  # held while it is queued
    assembler.finish(digest, completed.instances)
    assert assembler.pending_count() == 0 and not (tmp_path / "spool" / digest).exists()


def test_an_aborted_sender_makes_the_study_incomplete_until_sent_again(tmp_path: Path, clock: Clock) -> None:
    assembler = assembler_for(tmp_path, clock)
    study = pacs_study(slices=4)
    sender_delivers(assembler, study.files[:2], released=False)
    clock.now += 11
    (digest,) = assembler.due()
    partial = assembler.assemble(digest)
    assert partial is not None and partial.error is not None and partial.error.code == "study_incomplete"
    assembler.release(digest)  # say queueing failed: still pending, same answer later

    clock.now += 1
    sender_delivers(assembler, study.files)
    clock.now += 11
    complete = assembler.assemble(digest)
    assert complete is not None and complete.error is None and len(complete.instances) == 4
    assert complete.idempotency_key != partial.idempotency_key


def test_the_same_instances_give_the_same_key(tmp_path: Path, clock: Clock) -> None:
    study = pacs_study(slices=2)
    keys = []
    for name in ("a", "b"):
        assembler = assembler_for(tmp_path / name, clock)
        files = reversed(study.files) if name == "b" else study.files
        sender_delivers(assembler, files, origin="dicomweb" if name == "b" else "dicom")
        clock.now += 11
        (digest,) = assembler.due()
        completed = assembler.assemble(digest)
        assert completed is not None
        keys.append(completed.idempotency_key)
    assert keys[0] == keys[1]


def test_limits_refuse_instances_and_mark_the_study_too_large(tmp_path: Path, clock: Clock) -> None:
    refusals: list[str] = []

    def admit() -> str | None:
        return refusals[-1] if refusals else None

    assembler = StudyAssembler(
        StudySpool(tmp_path / "spool"),
        AssemblyLimits(quiet_s=1, max_study_instances=2, max_pending_studies=1),
        admit=admit,
        clock=clock,
    )
    study, other = pacs_study(slices=3), pacs_study(slices=1)
    sender = assembler.open_sender("dicom")
    for data in study.files[:2]:
        assembler.accept(sender, received(data))  # type: ignore[arg-type]
    with pytest.raises(InstanceRefusedError) as caught:
        assembler.accept(sender, received(study.files[2]))  # type: ignore[arg-type]
    assert caught.value.status == Status.OUT_OF_RESOURCES
    with pytest.raises(InstanceRefusedError, match="being received"):
        assembler.accept(sender, received(other.files[0]))  # type: ignore[arg-type]
    assembler.close_sender(sender, released=True)
    clock.now += 2
    (digest,) = assembler.due()
    completed = assembler.assemble(digest)
    assert completed is not None and completed.error is not None and completed.error.code == "study_too_large"
    assembler.finish(digest, completed.instances)
    refusals.append("the queue is full")
    with pytest.raises(InstanceRefusedError, match="queue is full"):
        assembler.accept(assembler.open_sender("dicom"), received(other.files[0]))  # type: ignore[arg-type]


def test_a_restart_takes_up_the_spool_and_an_interrupted_sender_is_incomplete(
    tmp_path: Path, clock: Clock
) -> None:
    study, other = pacs_study(slices=2), pacs_study(slices=2)
    before = assembler_for(tmp_path, clock)
    open_sender = before.open_sender("dicom")
    done_sender = before.open_sender("dicomweb")
    before.accept(open_sender, received(study.files[0]))  # type: ignore[arg-type]
    for data in other.files:
        before.accept(done_sender, received(data))  # type: ignore[arg-type]
    before.close_sender(done_sender, released=True)
    # The process dies here: the first sender never ends.
    after = assembler_for(tmp_path, clock)
    assert after.recover() == 2
    clock.now += 11
    results = {c.origin: c for c in (after.assemble(d) for d in after.due()) if c is not None}
    assert results["dicom"].error is not None and results["dicom"].error.code == "study_incomplete"
    assert results["dicomweb"].error is None and len(results["dicomweb"].instances) == 2


def test_instances_after_the_study_was_taken_stay_for_the_next_job(tmp_path: Path, clock: Clock) -> None:
    assembler = assembler_for(tmp_path, clock)
    study = pacs_study(slices=3)
    sender_delivers(assembler, study.files[:2])
    clock.now += 11
    (digest,) = assembler.due()
    completed = assembler.assemble(digest)
    assert completed is not None
    late = assembler.open_sender("dicom")
    assembler.accept(late, received(study.files[2]))  # type: ignore[arg-type]
    assembler.close_sender(late, released=True)
    assembler.finish(digest, completed.instances)
    clock.now += 11
    again = assembler.assemble(digest)
    assert again is not None and len(again.instances) == 1 and again.error is None


# --- queueing, destinations, delivery ------------------------------------------------------------------


def test_a_study_queued_twice_is_one_job(tmp_path: Path, clock: Clock) -> None:
    store = open_job_store(Settings(data_dir=tmp_path / "data"))
    assembler = assembler_for(tmp_path, clock)
    study = pacs_study(slices=2)
    ids = []
    for _ in range(2):
        sender_delivers(assembler, study.files)
        clock.now += 11
        (digest,) = assembler.due()
        completed = assembler.assemble(digest)
        assert completed is not None
        job_id, created = submit_study(store, completed, deliver=True)
        assembler.finish(digest, completed.instances)
        ids.append((job_id, created))
    assert ids[0][1] and not ids[1][1] and ids[0][0] == ids[1][0]
    job = store.get(ids[0][0])
    assert job is not None and job.origin == "dicom" and job.delivery is not None
    store.engine.dispose()


def test_destinations_are_parsed_without_repeating_secrets() -> None:
    assert parse_destination("dicom://PACS@10.0.0.5:104") == DicomDestination("PACS", "10.0.0.5", 104)
    web = parse_destination("https://user:s%40cret@pacs.example.org/dicom-web/")
    assert web == DicomWebDestination("https://pacs.example.org/dicom-web", "user", "s@cret")
    for bad in ("dicom://10.0.0.5:104", "dicom://PACS@host", "ftp://user:hunter2@x/", "PACS@host:104"):
        with pytest.raises(ValueError) as caught:
            parse_destination(bad)
        assert "hunter2" not in str(caught.value)


async def delivery_reaches(delivery: ResultsDelivery, store: JobStore, job_id: str, status: str) -> Job:
    """Run ``delivery`` until the job's delivery is ``status`` (10 s at most); the job then."""
    delivery.start()
    try:
        async with asyncio.timeout(10):
            while (job := store.get(job_id)) is None or job.delivery is None or job.delivery.status != status:
                await asyncio.sleep(0.02)
    finally:
        await delivery.stop()
    return job


async def test_a_delivery_is_retried_with_backoff_until_it_goes_through(tmp_path: Path) -> None:
    store = open_job_store(Settings(data_dir=tmp_path / "data"))
    job, _ = store.submit(b"zip", origin="dicom", deliver=True)
    claimed = store.claim("w", lease_s=30, max_attempts=3)
    assert claimed is not None
    store.complete(job.id, "w", {"ich_probability": 0.9}, outputs={"sr": b"SR", "seg": b"SEG"})
    sent: list[Sequence[bytes]] = []

    def send(objects: Sequence[bytes]) -> None:
        sent.append(objects)
        if len(sent) < 3:
            raise DeliveryError("destination_unreachable", "connection refused")

    config = DeliveryConfig(max_attempts=5, backoff_s=0.05, poll_s=0.02)
    current = await delivery_reaches(ResultsDelivery(store, send, config), store, job.id, "delivered")
    assert current.delivery is not None
    assert len(sent) == 3 and sorted(sent[-1]) == [b"SEG", b"SR"]
    assert current.delivery.attempts == 3 and current.delivery.error is None

    given_up, _ = store.submit(b"zip2", origin="dicom", deliver=True)
    store.claim("w", lease_s=30, max_attempts=3)
    store.complete(given_up.id, "w", {"ich_probability": 0.9}, outputs={"sr": b"SR"})

    def refuse(objects: Sequence[bytes]) -> None:
        raise DeliveryError("destination_refused", "status 0xA700")

    failing = ResultsDelivery(store, refuse, DeliveryConfig(max_attempts=2, backoff_s=0.01, poll_s=0.02))
    state = await delivery_reaches(failing, store, given_up.id, "failed")
    assert state.delivery is not None
    assert state.delivery.attempts == 2 and state.delivery.error is not None
    assert state.delivery.error.code == "destination_refused"
    store.engine.dispose()


async def test_a_background_loop_survives_a_failing_step_and_stops_mid_step(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rounds: list[int] = []
    blocked = asyncio.Event()
    cancelled = asyncio.Event()

    async def step() -> None:
        rounds.append(len(rounds))
        if len(rounds) == 1:
            raise KeyError("1.2.840.99999 Doe^Jane")  # a message that must not reach the log
        if len(rounds) == 3:
            blocked.set()
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.set()
                raise

    loop = RepeatingTask("test-loop", "test loop", step, lambda: asyncio.sleep(0))
    loop.start()
    async with asyncio.timeout(5):
        await blocked.wait()
    await loop.stop()
    assert rounds == [0, 1, 2] and cancelled.is_set()
    errors = [r.getMessage() for r in caplog.records if r.name == "ich.dicom_node.background"]
    assert errors == ["test loop error KeyError"]
    await loop.stop()  # stopping twice is harmless

