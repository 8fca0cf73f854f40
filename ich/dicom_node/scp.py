"""The Storage SCP (pynetdicom): C-ECHO and C-STORE of CT studies into the :class:`StudyAssembler`.

- **Who may connect.** Associations must call this node's AE title (``require_called_aet``) and come from
  one of the allowed calling AE titles (``require_calling_aet``), or any with ``*``; others are rejected at
  association (A-ASSOCIATE-RJ, permanent, calling/called AE title not recognised). At most
  ``max_associations`` are served at once.
- **What it takes.** Verification and, for the CT storage SOP classes and the classes it accepts and
  discards (``ich.dicom_node.instances``), the uncompressed and the usual compressed transfer syntaxes.
  Each dataset is taken as sent (``encoded_dataset``: pynetdicom never decodes it) and checked by
  ``inspect_instance`` before the assembler keeps it; the C-STORE status says what happened.
- **Limits per association.** The bytes an association sends are counted as they arrive
  (``EVT_DATA_RECV``); past ``max_association_bytes`` it is aborted, and the studies it delivered to are
  incomplete. An association that ends any way but a normal release (A-ABORT, a dropped connection, a
  timeout) likewise leaves its studies incomplete.

pynetdicom runs each association in a thread of its own; the handlers only check, count and hand over.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from ich.dicom_node.assembler import Sender, StudyAssembler
from ich.dicom_node.instances import (
    ACCEPTED_TRANSFER_SYNTAXES,
    DISCARDED_SOP_CLASSES,
    STORED_SOP_CLASSES,
    InstanceRefusedError,
    Status,
    inspect_instance,
)
from ich.dicom_node.metrics import DicomMetrics

__all__ = ["ANY_AE", "ScpConfig", "StorageSCP"]

logger = logging.getLogger(__name__)

#: The allowed-AE entry that accepts any calling AE title.
ANY_AE = "*"


@dataclass(frozen=True)
class ScpConfig:
    """The SCP's address, identity and limits (the gateway fills it from ``ICH_DICOM_*``)."""

    host: str
    port: int
    ae_title: str
    allowed_aes: tuple[str, ...]
    max_associations: int = 8
    max_association_bytes: int = 4096 * 2**20
    max_instance_bytes: int = 64 * 2**20
    network_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if not self.allowed_aes:
            raise ValueError("name the calling AE titles to accept (ICH_DICOM_ALLOWED_AES), or '*' for any")


@dataclass
class _Association:
    sender: Sender
    bytes_received: int = 0
    released: bool = False
    aborted_for_size: bool = False


class StorageSCP:
    """A Storage SCP feeding ``assembler``; :meth:`start` binds, :meth:`stop` closes every association."""

    def __init__(
        self, assembler: StudyAssembler, config: ScpConfig, metrics: DicomMetrics | None = None
    ) -> None:
        self.assembler = assembler
        self.config = config
        self.metrics = metrics or DicomMetrics()
        self._lock = threading.Lock()
        self._associations: dict[int, _Association] = {}
        self._server: ThreadedAssociationServer | None = None
        self.ae = self._application_entity()

    def _application_entity(self) -> AE:
        ae = AE(ae_title=self.config.ae_title)
        ae.require_called_aet = True
        if ANY_AE not in self.config.allowed_aes:
            ae.require_calling_aet = list(self.config.allowed_aes)
        ae.maximum_associations = self.config.max_associations
        ae.network_timeout = self.config.network_timeout_s
        ae.add_supported_context(Verification)
        for sop_class in sorted(STORED_SOP_CLASSES | DISCARDED_SOP_CLASSES):
            ae.add_supported_context(sop_class, list(ACCEPTED_TRANSFER_SYNTAXES))
        return ae

    @property
    def port(self) -> int:
        """The port bound (the configured one, or the one the system chose for port 0)."""
        if self._server is None:
            return self.config.port
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Bind and serve in background threads."""
        handlers = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_DATA_RECV, self._on_data),
            (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_CONN_CLOSE, self._on_closed),
        ]
        server = self.ae.start_server(
            (self.config.host, self.config.port),
            block=False,
            evt_handlers=handlers,  # type: ignore[arg-type]
        )
        assert server is not None
        self._server = server
        logger.info(
            "DICOM Storage SCP listening on port %d as %s (%s)",
            self.port,
            self.config.ae_title,
            "any calling AE"
            if ANY_AE in self.config.allowed_aes
            else f"{len(self.config.allowed_aes)} calling AE(s)",
        )

    def stop(self) -> None:
        """Stop listening and end open associations (their studies are incomplete)."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self.ae.shutdown()

    def _state(self, assoc: Association) -> _Association:
        with self._lock:
            state = self._associations.get(id(assoc))
            if state is None:
                state = _Association(self.assembler.open_sender("dicom"))
                self._associations[id(assoc)] = state
            return state

    def _on_data(self, event: Any) -> None:
        state = self._state(event.assoc)
        state.bytes_received += len(event.data)
        if state.bytes_received > self.config.max_association_bytes and not state.aborted_for_size:
            state.aborted_for_size = True
            logger.warning(
                "DICOM association aborted: it sent more than %d bytes", self.config.max_association_bytes
            )
            event.assoc.abort(block=False)

    def _on_store(self, event: Any) -> int:
        state = self._state(event.assoc)
        try:
            request = event.request
            instance = inspect_instance(
                event.encoded_dataset(include_meta=True),
                max_bytes=self.config.max_instance_bytes,
                announced_sop_class=str(request.AffectedSOPClassUID),
                announced_sop_instance=str(request.AffectedSOPInstanceUID),
            )
            if instance is not None:
                self.assembler.accept(state.sender, instance)
        except InstanceRefusedError as exc:
            logger.info("DICOM instance refused (status 0x%04X): %s", exc.status, exc.reason)
            self.metrics.instance("dicom", "refused")
            return exc.status
        except Exception as exc:  # a bug must not kill the association thread; the sender sees a failure
            logger.error("DICOM C-STORE failed (%s)", type(exc).__name__)
            self.metrics.instance("dicom", "refused")
            return Status.PROCESSING_FAILURE
        self.metrics.instance("dicom", "stored" if instance is not None else "discarded")
        return Status.SUCCESS

    def _on_released(self, event: Any) -> None:
        self._state(event.assoc).released = True

    def _on_closed(self, event: Any) -> None:
        with self._lock:
            state = self._associations.pop(id(event.assoc), None)
        if state is not None:
            self.assembler.close_sender(state.sender, released=state.released and not state.aborted_for_size)
