"""The gateway's side of the DICOM node: built from the settings, started and stopped by the lifespan.

Always: the study assembler over ``<ICH_DATA_DIR>/dicom-incoming`` and the loop that queues complete
studies (STOW-RS at ``POST /dicomweb/studies`` feeds it whether or not the SCP runs). One process owns the
spool (an exclusive lock on ``dicom-incoming.lock``): with several uvicorn workers the others answer
STOW-RS with 503 and a Retry-After, and a data directory that cannot be written leaves the intake off, with
a warning. With ``ICH_DICOM_PORT``: the Storage SCP. With ``ICH_RESULTS_DESTINATION``: the delivery loop,
and every study that arrives by C-STORE or STOW-RS is marked for delivery. A configuration that cannot
work (no allowed calling AEs, a destination that is not a URL) stops the start-up with a clear message
rather than failing at the first study.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from api.settings import Settings
from ich.dicom_node import (
    AssemblyLimits,
    CompletedStudy,
    DeliveryConfig,
    DicomIntake,
    DicomMetrics,
    ResultsDelivery,
    ScpConfig,
    StorageSCP,
    StudyAssembler,
    StudySpool,
    parse_destination,
    send_results,
    submit_study,
)
from ich.jobs import JobStore

logger = logging.getLogger(__name__)

#: The spool's folder inside ``ICH_DATA_DIR``.
SPOOL_FOLDER = "dicom-incoming"
LOCK_FILE = "dicom-incoming.lock"


def _lock_spool(data_dir: Path) -> int | None:
    """An exclusive lock on the spool (its file descriptor), or None when another process holds it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


@dataclass
class DicomNode:
    """What the lifespan keeps on ``app.state.dicom`` (no ``assembler`` where this process has no spool)."""

    assembler: StudyAssembler | None
    intake: DicomIntake | None
    scp: StorageSCP | None
    delivery: ResultsDelivery | None
    max_instance_bytes: int
    metrics: DicomMetrics
    lock_fd: int | None = None

    async def close(self) -> None:
        """Stop the SCP (open associations end: their studies are incomplete), the loops, the delivery."""
        if self.scp is not None:
            await asyncio.to_thread(self.scp.stop)
        if self.intake is not None:
            await self.intake.stop()
        if self.delivery is not None:
            await self.delivery.stop()
        if self.lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.lock_fd)  # releases the lock
            self.lock_fd = None


def assembly_limits(settings: Settings) -> AssemblyLimits:
    """A study holds at most what an upload may (``ICH_MAX_MEMBERS``, ``ICH_MAX_UPLOAD_BYTES``)."""
    return AssemblyLimits(
        quiet_s=settings.dicom_study_quiet_s,
        max_study_instances=settings.max_members,
        max_study_bytes=settings.max_upload_bytes,
        max_pending_studies=settings.dicom_max_pending_studies,
    )


def scp_config(settings: Settings) -> ScpConfig:
    """The SCP's configuration; ``ICH_DICOM_PORT`` must be set.

    Raises:
        ValueError: ``ICH_DICOM_ALLOWED_AES`` is empty.
    """
    assert settings.dicom_port is not None
    return ScpConfig(
        host=settings.dicom_host,
        port=settings.dicom_port,
        ae_title=settings.dicom_ae_title,
        allowed_aes=settings.dicom_allowed_ae_titles,
        max_associations=settings.dicom_max_associations,
        max_association_bytes=settings.dicom_max_association_bytes,
        max_instance_bytes=settings.dicom_max_instance_bytes,
    )


def _admit(store: JobStore, limit: int) -> str | None:
    try:
        active = store.active_count()
    except Exception as exc:  # the database is away: the sender is told to send later
        logger.error("job store unavailable to the DICOM node (%s)", type(exc).__name__)
        return "the job queue is unavailable; send later"
    if active >= limit:
        return f"{active} studies are waiting or running (limit {limit}); send later"
    return None


def _delivery(settings: Settings, store: JobStore, metrics: DicomMetrics) -> ResultsDelivery | None:
    if not settings.results_destination:
        return None
    destination = parse_destination(settings.results_destination)

    def send(objects: Sequence[bytes]) -> None:
        send_results(
            objects, destination, calling_ae=settings.dicom_ae_title, timeout_s=settings.results_timeout_s
        )

    config = DeliveryConfig(
        max_attempts=settings.results_max_attempts,
        backoff_s=settings.results_retry_backoff_s,
        lease_s=max(60.0, 4 * settings.results_timeout_s),
    )
    return ResultsDelivery(store, send, config, metrics)


async def start_dicom_node(
    settings: Settings, store: JobStore, wake: Callable[[], None], metrics: DicomMetrics
) -> DicomNode:
    """Build and start the node's parts the settings ask for, in the running loop.

    Without the spool (another process owns it, or the data directory cannot be written, and no SCP is
    asked for) the node has no assembler: STOW-RS answers 503, results are still delivered.

    Raises:
        ValueError: a setting the node cannot work with (the message names it).
        OSError: the DICOM port cannot be bound, or (with ``ICH_DICOM_PORT``) the spool cannot be had.
    """
    delivery = _delivery(settings, store, metrics)
    if settings.dicom_port is not None:
        config = scp_config(settings)  # before anything starts: a bad setting stops the start-up
    try:
        lock_fd = await asyncio.to_thread(_lock_spool, Path(settings.data_dir))
    except OSError as exc:
        if settings.dicom_port is not None:
            raise
        logger.warning("DICOM intake off: the data directory cannot be written (%s)", type(exc).__name__)
        lock_fd = None
    else:
        if lock_fd is None:
            if settings.dicom_port is not None:
                raise OSError("another process owns the DICOM spool of ICH_DATA_DIR")
            logger.info("DICOM intake off in this process: another worker owns the spool")
    if lock_fd is None:
        if delivery is not None:
            delivery.start()
        return DicomNode(None, None, None, delivery, settings.dicom_max_instance_bytes, metrics)
    spool = StudySpool(Path(settings.data_dir) / SPOOL_FOLDER)
    assembler = StudyAssembler(
        spool, assembly_limits(settings), admit=functools.partial(_admit, store, settings.max_queued_jobs)
    )
    deliver = delivery is not None

    def submit(study: CompletedStudy) -> tuple[str, bool]:
        return submit_study(store, study, deliver=deliver)

    tick_s = min(0.5, settings.dicom_study_quiet_s / 4)
    intake = DicomIntake(assembler, submit, wake=wake, tick_s=tick_s, metrics=metrics)
    scp = StorageSCP(assembler, config, metrics) if settings.dicom_port is not None else None
    intake.start()  # takes up what a previous process left in the spool
    if delivery is not None:
        delivery.start()
    node = DicomNode(assembler, intake, None, delivery, settings.dicom_max_instance_bytes, metrics, lock_fd)
    if scp is not None:
        try:
            await asyncio.to_thread(scp.start)
        except BaseException:
            await node.close()
            raise
        node.scp = scp
    return node
