"""The DICOM node: a second door into the job queue, and the way results go back to the PACS.

No web framework here (DESIGN.md): the Storage SCP (``scp``, pynetdicom) and the gateway's STOW-RS route
hand checked instances (``instances``) to one :class:`StudyAssembler` (``assembler``, over the durable
``spool``), which groups them by study until each is complete; :class:`DicomIntake` (``intake``) then queues
every complete study through ``JobStore.submit``, as ``POST /v1/studies`` does. :class:`ResultsDelivery`
(``delivery``) sends each done job's SEG, SR and key image to ``ICH_RESULTS_DESTINATION``.
"""

from ich.dicom_node.assembler import AssemblyLimits, CompletedStudy, Sender, StudyAssembler
from ich.dicom_node.delivery import (
    DeliveryConfig,
    DeliveryError,
    DicomDestination,
    DicomWebDestination,
    ResultsDelivery,
    parse_destination,
    send_results,
)
from ich.dicom_node.instances import InstanceRefusedError, ReceivedInstance, Status, inspect_instance
from ich.dicom_node.intake import DicomIntake, submit_study
from ich.dicom_node.metrics import DicomMetrics
from ich.dicom_node.scp import ANY_AE, ScpConfig, StorageSCP
from ich.dicom_node.spool import StudySpool

__all__ = [
    "ANY_AE",
    "AssemblyLimits",
    "CompletedStudy",
    "DeliveryConfig",
    "DeliveryError",
    "DicomDestination",
    "DicomIntake",
    "DicomMetrics",
    "DicomWebDestination",
    "InstanceRefusedError",
    "ReceivedInstance",
    "ResultsDelivery",
    "ScpConfig",
    "Sender",
    "Status",
    "StorageSCP",
    "StudyAssembler",
    "StudySpool",
    "inspect_instance",
    "parse_destination",
    "send_results",
    "submit_study",
]
