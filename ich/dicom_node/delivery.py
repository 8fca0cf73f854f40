"""Results back to the PACS: each done job's SEG, SR and key image sent to ``ICH_RESULTS_DESTINATION``.

The destination is ``dicom://AE@host:port`` (C-STORE SCU with pynetdicom, calling as this node's AE title)
or an ``http(s)://`` DICOMweb base URL (STOW-RS with dicomweb-client; credentials in the URL's user part are
sent as HTTP basic authentication and never logged). :class:`ResultsDelivery` runs in the gateway's event
loop: it claims due deliveries from the job store, sends them in a thread, and marks each ``delivered``, or
retries it with exponential backoff (``backoff_s`` doubling, at most 600 s) until ``max_attempts``, then
``failed``; the job's ``delivery`` field shows which. The objects' UIDs are derived from the job, so a
delivery sent twice (a retry after a lost answer) stores nothing new in the PACS.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit, urlunsplit

import pydicom
import requests
from dicomweb_client import DICOMwebClient
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from ich.dicom_node.background import RepeatingTask
from ich.dicom_node.metrics import DicomMetrics
from ich.jobs import JobError, JobStore

__all__ = [
    "DeliveryError",
    "DicomDestination",
    "DicomWebDestination",
    "ResultsDelivery",
    "parse_destination",
    "send_results",
]

logger = logging.getLogger(__name__)

MAX_BACKOFF_S = 600.0
#: Success and the warning statuses a PACS answers when it stores an object (coerced, already had it).
_STORED = frozenset({0x0000, 0xB000, 0xB006, 0xB007})


class DeliveryError(Exception):
    """A delivery that did not go through; ``code`` for the job's record, ``detail`` without secrets."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class DicomDestination:
    """A DICOM node to C-STORE to."""

    ae_title: str
    host: str
    port: int

    def describe(self) -> str:
        return f"dicom://{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class DicomWebDestination:
    """A DICOMweb service to STOW-RS to (``url`` without credentials)."""

    url: str
    username: str | None = None
    password: str | None = None

    def describe(self) -> str:
        return self.url


Destination = DicomDestination | DicomWebDestination


def parse_destination(value: str) -> Destination:
    """``ICH_RESULTS_DESTINATION`` as a destination.

    Raises:
        ValueError: neither ``dicom://AE@host:port`` nor an ``http(s)://`` URL (the message never repeats
            the value, which may hold a password).
    """
    parts = urlsplit(value.strip())
    if parts.scheme == "dicom":
        ae = unquote(parts.username or "")
        try:
            port = parts.port
        except ValueError:
            port = None
        if not ae or len(ae) > 16 or not parts.hostname or port is None:
            raise ValueError(
                "ICH_RESULTS_DESTINATION must be dicom://AE_TITLE@host:port (AE title 1-16 characters)"
            )
        return DicomDestination(ae, parts.hostname, port)
    if parts.scheme in ("http", "https") and parts.hostname:
        netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
        url = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), parts.query, ""))
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password else None
        return DicomWebDestination(url, username, password)
    raise ValueError(
        "ICH_RESULTS_DESTINATION must be dicom://AE_TITLE@host:port or an http(s):// DICOMweb URL"
    )


def _datasets(objects: Sequence[bytes]) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(io.BytesIO(data)) for data in objects]


def _send_cstore(
    datasets: list[pydicom.Dataset], destination: DicomDestination, calling_ae: str, timeout_s: float
) -> None:
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        code = "association_rejected" if assoc.is_rejected else "destination_unreachable"
        raise DeliveryError(code, f"no association with {destination.describe()} ({code.replace('_', ' ')})")
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            value = int(status.Status) if "Status" in status else None
            if value not in _STORED:
                shown = "no answer" if value is None else f"status 0x{value:04X}"
                raise DeliveryError(
                    "destination_refused", f"{destination.describe()} did not store an object ({shown})"
                )
    finally:
        if assoc.is_established:
            assoc.release()


def _send_stow(datasets: list[pydicom.Dataset], destination: DicomWebDestination, timeout_s: float) -> None:
    session = requests.Session()
    if destination.username is not None:
        session.auth = (destination.username, destination.password or "")
    client = DICOMwebClient(url=destination.url, session=session, timeout=timeout_s)
    try:
        client.store_instances(datasets=datasets)
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        raise DeliveryError(
            "destination_refused", f"{destination.url} answered HTTP {status} to STOW-RS"
        ) from None
    except requests.RequestException as exc:
        raise DeliveryError(
            "destination_unreachable", f"{destination.url} could not be reached ({type(exc).__name__})"
        ) from None
    finally:
        session.close()


def send_results(
    objects: Sequence[bytes], destination: Destination, *, calling_ae: str, timeout_s: float = 30.0
) -> None:
    """Send encoded DICOM objects to ``destination`` (blocking).

    Raises:
        DeliveryError: the destination could not be reached or did not store every object.
    """
    datasets = _datasets(objects)
    if isinstance(destination, DicomDestination):
        try:
            _send_cstore(datasets, destination, calling_ae, timeout_s)
        except DeliveryError:
            raise
        except (OSError, RuntimeError, ValueError) as exc:
            raise DeliveryError(
                "destination_unreachable", f"{destination.describe()}: {type(exc).__name__}"
            ) from None
    else:
        _send_stow(datasets, destination, timeout_s)


@dataclass(frozen=True)
class DeliveryConfig:
    """Retries and timing of the delivery loop."""

    max_attempts: int = 8
    backoff_s: float = 10.0
    lease_s: float = 300.0
    poll_s: float = 1.0

    def backoff(self, attempt: int) -> float:
        return float(min(MAX_BACKOFF_S, self.backoff_s * 2 ** max(0, attempt - 1)))


class ResultsDelivery:
    """Sends done jobs' results until :meth:`stop`.

    Args:
        store: the job store (deliveries are claimed from it).
        send: sends one job's encoded objects (blocking); raises :class:`DeliveryError`.
        config: retries and timing.
    """

    def __init__(
        self,
        store: JobStore,
        send: Callable[[Sequence[bytes]], None],
        config: DeliveryConfig,
        metrics: DicomMetrics | None = None,
    ) -> None:
        self.store = store
        self.send = send
        self.config = config
        self.metrics = metrics or DicomMetrics()
        self._wake = asyncio.Event()
        self._loop = RepeatingTask("ich-results-delivery", "results delivery", self._deliver_due, self._idle)

    def start(self) -> None:
        self._loop.start()

    def wake(self) -> None:
        """Look for due deliveries now (a job just finished)."""
        self._wake.set()

    async def stop(self) -> None:
        await self._loop.stop()

    async def _idle(self) -> None:
        """Until :meth:`wake` or ``poll_s``, whichever comes first (a wake during a round counts)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=self.config.poll_s)
        self._wake.clear()

    async def _deliver_due(self) -> None:
        while await self.deliver_one():
            pass

    async def deliver_one(self) -> bool:
        """Send one due delivery; False when none was due."""
        pending = await asyncio.to_thread(self.store.claim_delivery, lease_s=self.config.lease_s)
        if pending is None:
            return False
        objects = [pending.outputs[kind] for kind in sorted(pending.outputs)]
        try:
            try:
                await asyncio.to_thread(self.send, objects)
            except DeliveryError:
                raise
            except Exception as exc:  # a library's failure; its message may quote values: type only
                raise DeliveryError(
                    "delivery_error", f"the results could not be sent ({type(exc).__name__})"
                ) from None
        except DeliveryError as exc:
            error = JobError(exc.code, exc.detail)
            outcome = "failed" if pending.attempts >= self.config.max_attempts else "retried"
            self.metrics.deliveries.labels(outcome=outcome).inc()
            if outcome == "failed":
                await asyncio.to_thread(self.store.fail_delivery, pending.id, error)
                logger.warning(
                    "job %s: results not delivered after %d attempts (%s)",
                    pending.id,
                    pending.attempts,
                    exc.code,
                )
            else:
                delay = self.config.backoff(pending.attempts)
                await asyncio.to_thread(self.store.retry_delivery, pending.id, error, delay_s=delay)
                logger.warning(
                    "job %s: results delivery attempt %d failed (%s); retry in %.0f s",
                    pending.id,
                    pending.attempts,
                    exc.code,
                    delay,
                )
            return True
        await asyncio.to_thread(self.store.delivered, pending.id)
        self.metrics.deliveries.labels(outcome="delivered").inc()
        logger.info("job %s: %d result object(s) delivered", pending.id, len(objects))
        return True
