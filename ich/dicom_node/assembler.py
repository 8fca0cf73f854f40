"""Instances grouped into studies until each is complete, then zipped for the job queue.

Both doors of the DICOM node (the Storage SCP's associations and STOW-RS requests) are *senders*: a sender
opens, delivers instances, and ends, released normally or not (an A-ABORT, a dropped connection). Instances
are grouped by their Study Instance UID. A study is complete when none of its instances arrived for the
quiet period and no sender that delivered to it is still open; then it is zipped exactly as an upload would
be (one member per instance) and queued through the same ``JobStore.submit`` the HTTP door uses, so its
series is chosen and analysed as a zip's is.

- **Incomplete studies.** A study one of whose senders ended without a normal release (and no sender that
  started after that ended normally) is not analysed: it becomes a job that is ``failed`` at once with
  ``study_incomplete``, so the partial study is kept and listed but never gives results. A sender that
  sends it again in full gives a new, complete job.
- **Limits.** A study may hold at most ``max_study_instances`` instances and ``max_study_bytes`` bytes (the
  caps of an upload); past them its instances are refused and the study becomes a failed job with
  ``study_too_large``. At most ``max_pending_studies`` studies are received at once, and a new study is
  refused while ``admit`` says no (the queue is full): refused instances have a C-STORE failure status,
  so the sender knows to send them later.
- **Twice.** The same instance twice is one file. A study queued again with the same instances gives the
  same idempotency key, so the job store returns the first job instead of queuing a second (one set of
  results, whichever door and encoding it came through).

Thread-safe: the SCP calls in from its association threads, STOW-RS and the queueing loop from the event
loop's threads.
"""

from __future__ import annotations

import hashlib
import io
import logging
import threading
import time
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field

from ich.dicom_node.instances import InstanceRefusedError, ReceivedInstance, Status
from ich.dicom_node.spool import StudySpool
from ich.dicom_uids import uid_digest
from ich.jobs import JobError

__all__ = ["AssemblyLimits", "CompletedStudy", "Sender", "StudyAssembler"]

logger = logging.getLogger(__name__)

#: Bytes a zip adds per member (local and central headers with the member's name), for the upload cap.
_ZIP_OVERHEAD_PER_MEMBER = 256
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
TOO_LARGE = "study_too_large"
INCOMPLETE = "study_incomplete"
ORIGINS = ("dicom", "dicomweb")


@dataclass(frozen=True)
class AssemblyLimits:
    """When a study is complete, and how much of it and of them the node holds."""

    quiet_s: float = 10.0
    max_study_instances: int = 5000
    max_study_bytes: int = 512 * 2**20
    max_pending_studies: int = 20

    def __post_init__(self) -> None:
        if self.quiet_s <= 0:
            raise ValueError(f"quiet_s must be positive, got {self.quiet_s}")
        for name in ("max_study_instances", "max_study_bytes", "max_pending_studies"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


@dataclass
class Sender:
    """One association or STOW-RS request, from its first instance to its end."""

    origin: str
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    started_at: float = field(default_factory=time.monotonic)
    studies: set[str] = field(default_factory=set)


@dataclass
class _Pending:
    origin: str
    last_arrival: float
    instances: dict[str, int] = field(default_factory=dict)
    senders: set[str] = field(default_factory=set)
    aborted_at: float | None = None
    problem: str | None = None
    taken: bool = False

    @property
    def size(self) -> int:
        return sum(self.instances.values())


@dataclass(frozen=True)
class CompletedStudy:
    """A study ready for the queue: the zip, its idempotency key, and the error when it is not analysable."""

    study: str
    origin: str
    data: bytes
    idempotency_key: str
    instances: frozenset[str]
    error: JobError | None


def _problem_error(problem: str, pending: _Pending, limits: AssemblyLimits) -> JobError:
    count = len(pending.instances)
    if problem == TOO_LARGE:
        return JobError(
            TOO_LARGE,
            f"the study exceeds the limit of {limits.max_study_instances} instances or "
            f"{limits.max_study_bytes} bytes; its further instances were refused ({count} kept)",
        )
    return JobError(
        INCOMPLETE,
        f"the study arrived only in part: a sender that delivered to it ended without a normal release "
        f"({count} instances received); send the study again",
    )


class StudyAssembler:
    """Pending studies over a :class:`StudySpool`.

    Args:
        spool: where instances are kept until their study is queued.
        limits: the quiet period and the caps.
        admit: asked before a new study's first instance; a reason to refuse it (the queue is full), or None.
        clock: monotonic seconds (tests move it).
    """

    def __init__(
        self,
        spool: StudySpool,
        limits: AssemblyLimits,
        *,
        admit: Callable[[], str | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spool = spool
        self.limits = limits
        self.admit = admit
        self.clock = clock
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}

    # --- senders --------------------------------------------------------------------------------------

    def open_sender(self, origin: str) -> Sender:
        """A new sender (``dicom``: an association, ``dicomweb``: a STOW-RS request)."""
        if origin not in ORIGINS:
            raise ValueError(f"unknown origin {origin!r}")
        return Sender(origin=origin, started_at=self.clock())

    def accept(self, sender: Sender, instance: ReceivedInstance) -> None:
        """Keep one checked instance (durably) for its study.

        Raises:
            InstanceRefusedError: a limit is reached, the queue is full, or the spool cannot be written.
        """
        study = uid_digest(instance.study_uid)
        key = uid_digest(instance.sop_instance_uid)
        with self._lock:
            known = study in self._pending
        if not known and self.admit is not None:
            reason = self.admit()
            if reason:
                raise InstanceRefusedError(Status.OUT_OF_RESOURCES, reason)
        with self._lock:
            pending, new_sender = self._reserve(sender, study, key, len(instance.data))
        try:
            if new_sender:
                self.spool.set_marker(study, f"sender-{sender.token}")
                self.spool.set_marker(study, f"origin-{pending.origin}")
            self.spool.write_instance(study, key, instance.data)
        except OSError as exc:
            with self._lock:
                pending.instances.pop(key, None)
            logger.error("DICOM spool cannot be written (%s)", type(exc).__name__)
            raise InstanceRefusedError(
                Status.OUT_OF_RESOURCES, "the instance could not be stored; send it later"
            ) from None

    def _reserve(self, sender: Sender, study: str, key: str, size: int) -> tuple[_Pending, bool]:
        pending = self._pending.get(study)
        if pending is None:
            if len(self._pending) >= self.limits.max_pending_studies:
                raise InstanceRefusedError(
                    Status.OUT_OF_RESOURCES,
                    f"{len(self._pending)} studies are being received (limit "
                    f"{self.limits.max_pending_studies}); send this one later",
                )
            pending = _Pending(origin=sender.origin, last_arrival=self.clock())
            self._pending[study] = pending
        if pending.problem == TOO_LARGE:
            raise InstanceRefusedError(Status.OUT_OF_RESOURCES, "the study already exceeds the limits")
        if key not in pending.instances:
            count = len(pending.instances) + 1
            total = pending.size + size + count * _ZIP_OVERHEAD_PER_MEMBER
            if count > self.limits.max_study_instances or total > self.limits.max_study_bytes:
                pending.problem = TOO_LARGE
                self._mark_later(study, f"refused-{TOO_LARGE}")
                raise InstanceRefusedError(
                    Status.OUT_OF_RESOURCES,
                    f"the study exceeds the limit of {self.limits.max_study_instances} instances or "
                    f"{self.limits.max_study_bytes} bytes",
                )
        pending.instances[key] = size
        pending.last_arrival = self.clock()
        new_sender = sender.token not in pending.senders and study not in sender.studies
        pending.senders.add(sender.token)
        sender.studies.add(study)
        return pending, new_sender

    def _mark_later(self, study: str, name: str) -> None:
        # Called under the lock; a marker is a tiny file, and losing it to a crash only forgets a refusal.
        try:
            self.spool.set_marker(study, name)
        except OSError as exc:
            logger.warning("DICOM spool marker not written (%s)", type(exc).__name__)

    def close_sender(self, sender: Sender, *, released: bool) -> None:
        """The sender ended: normally (``released``), or not (aborted, connection lost, request broken)."""
        now = self.clock()
        cleared: list[str] = []
        still_pending: list[str] = []
        with self._lock:
            for study in sender.studies:
                pending = self._pending.get(study)
                if pending is None:  # already queued: nothing left to mark
                    continue
                still_pending.append(study)
                pending.senders.discard(sender.token)
                if not released:
                    pending.aborted_at = now
                elif pending.aborted_at is not None and sender.started_at > pending.aborted_at:
                    pending.aborted_at = None
                    cleared.append(study)
        for study in still_pending:
            try:
                self.spool.clear_marker(study, f"sender-{sender.token}")
                if not released:
                    self.spool.set_marker(study, "aborted")
                elif study in cleared:
                    self.spool.clear_marker(study, "aborted")
            except OSError as exc:
                logger.warning("DICOM spool marker not updated (%s)", type(exc).__name__)
        if not released and sender.studies:
            logger.warning(
                "a DICOM sender ended without a normal release; %d study(ies) incomplete", len(sender.studies)
            )

    # --- completion -----------------------------------------------------------------------------------

    def recover(self) -> int:
        """Take up the studies a previous process left in the spool; returns how many.

        A study whose sender was still open when the process ended is incomplete (that sender never
        finished). Every recovered study waits a full quiet period again.
        """
        count = 0
        for study in self.spool.studies():
            instances = self.spool.instances(study)
            if not instances:
                self.spool.remove(study)
                continue
            markers = self.spool.markers(study)
            origin = next((m[len("origin-") :] for m in markers if m.startswith("origin-")), "dicom")
            interrupted = [m for m in markers if m.startswith("sender-")]
            pending = _Pending(
                origin=origin if origin in ORIGINS else "dicom",
                last_arrival=self.clock(),
                instances=instances,
            )
            if interrupted or "aborted" in markers:
                pending.aborted_at = self.clock()
                self.spool.set_marker(study, "aborted")
            for marker in interrupted:
                self.spool.clear_marker(study, marker)
            if f"refused-{TOO_LARGE}" in markers:
                pending.problem = TOO_LARGE
            with self._lock:
                self._pending.setdefault(study, pending)
            count += 1
        if count:
            logger.info("DICOM spool: %d study(ies) taken up again", count)
        return count

    def pending_count(self) -> int:
        """Studies being received or waiting for their quiet period."""
        with self._lock:
            return len(self._pending)

    def due(self) -> list[str]:
        """The studies complete now (quiet, no open sender), not yet being queued."""
        now = self.clock()
        with self._lock:
            return [
                study
                for study, p in self._pending.items()
                if not p.taken and not p.senders and now - p.last_arrival >= self.limits.quiet_s
            ]

    def assemble(self, study: str) -> CompletedStudy | None:
        """Zip a due study for the queue (it is held until :meth:`finish` or :meth:`release`)."""
        with self._lock:
            pending = self._pending.get(study)
            if pending is None or pending.taken:
                return None
            pending.taken = True
            instances = sorted(pending.instances)
            problem = pending.problem or (INCOMPLETE if pending.aborted_at is not None else None)
            error = _problem_error(problem, pending, self.limits) if problem else None
            origin = pending.origin
        buffer = io.BytesIO()
        kept = []
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
            for key in instances:
                try:
                    data = self.spool.read(study, key)
                except FileNotFoundError:
                    continue
                archive.writestr(zipfile.ZipInfo(f"{key}.dcm", date_time=_ZIP_TIME), data)
                kept.append(key)
        if not kept:
            self.finish(study, frozenset())
            return None
        fingerprint = hashlib.sha256(
            ":".join([study, *kept, error.code if error else "complete"]).encode()
        ).hexdigest()
        return CompletedStudy(
            study=study,
            origin=origin,
            data=buffer.getvalue(),
            idempotency_key=f"dicom-study:{fingerprint}",
            instances=frozenset(kept),
            error=error,
        )

    def release(self, study: str) -> None:
        """Queueing failed (the store is away): the study stays pending and is tried again."""
        with self._lock:
            pending = self._pending.get(study)
            if pending is not None:
                pending.taken = False

    def finish(self, study: str, queued: frozenset[str]) -> None:
        """The study's job is committed: forget the instances it holds (later arrivals stay pending)."""
        with self._lock:
            pending = self._pending.get(study)
            if pending is None:
                return
            late = {k: v for k, v in pending.instances.items() if k not in queued}
            if late or pending.senders:
                pending.instances = late
                pending.taken = False
                pending.problem = None
                pending.aborted_at = None
                remove: list[str] = list(queued)
                whole = False
            else:
                del self._pending[study]
                remove, whole = [], True
        if whole:
            self.spool.remove(study)
            return
        for key in remove:
            (self.spool.folder(study) / f"{key}.dcm").unlink(missing_ok=True)
        self.spool.clear_marker(study, "aborted")
        self.spool.clear_marker(study, f"refused-{TOO_LARGE}")
