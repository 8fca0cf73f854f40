"""STOW-RS: ``POST /dicomweb/studies`` (and ``/dicomweb/studies/{study}``), the DICOMweb door of the node.

The body is ``multipart/related; type="application/dicom"``, one DICOM Part 10 instance per part. Each
instance is checked as a C-STORE's is (``ich.dicom_node.inspect_instance``) and handed to the same study
assembler, so a study sent this way becomes a job exactly as one sent by C-STORE does: when the quiet period
has passed. The request is one sender: its instances count only once the whole body was read, and a body
that breaks off stores nothing.

The answer is the STOW-RS response (PS3.18 10.5.3), ``application/dicom+json``: ReferencedSOPSequence for
the instances kept (or accepted and discarded, as a C-STORE would), FailedSOPSequence with the C-STORE
failure status as FailureReason for the others; 200 when all were kept, 202 when some failed, 409 when none
was kept. Errors of the request itself are the gateway's JSON errors (400, 401, 408, 413, 415, 503).
"""

from __future__ import annotations

import asyncio
import io
import logging
from typing import Annotated, Any

import pydicom
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydicom.dataset import Dataset

from api.auth import require_api_key
from api.deps import SettingsDep
from api.dicom_node import DicomNode
from api.errors import ApiError, service_unavailable
from api.multipart_related import Part, read_related_parts, related_type
from api.schemas import ErrorBody
from api.settings import Settings
from api.upload import UploadBudget, pace_of
from ich.dicom_node import InstanceRefusedError, ReceivedInstance, Sender, StudyAssembler, inspect_instance
from ich.dicom_uids import is_valid_uid

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/dicomweb", tags=["dicomweb"], dependencies=[Depends(require_api_key)])

DICOM_MEDIA_TYPE = "application/dicom"
DICOM_JSON = "application/dicom+json"
_RELATED = "multipart/related"


def get_dicom_node(request: Request) -> DicomNode:
    """The node the lifespan started; 503 while there is none (start-up, shutdown, another worker's spool)."""
    node: DicomNode | None = getattr(request.app.state, "dicom", None)
    if node is None or node.assembler is None:
        settings = request.app.state.settings
        raise service_unavailable(
            "dicom_unavailable", "the DICOM node is not running", settings.retry_after_s
        )
    return node


DicomNodeDep = Annotated[DicomNode, Depends(get_dicom_node)]


def _check_content_type(request: Request) -> None:
    media, kind, _ = related_type(request.headers.get("content-type", ""))
    if media != _RELATED or (kind is not None and kind != DICOM_MEDIA_TYPE):
        raise ApiError(
            415,
            "unsupported_media_type",
            'STOW-RS takes multipart/related; type="application/dicom" (one DICOM file per part)',
        )


def _reference(sop_class: str, sop_instance: str, failure: int | None = None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    if failure is not None:
        item.FailureReason = failure
    return item


def _announced_uids(data: bytes) -> tuple[str, str]:
    """SOP Class and Instance UIDs of a refused part, where they can be read and are valid."""
    try:
        ds = pydicom.dcmread(
            io.BytesIO(data), stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"]
        )
        found = (str(ds.get("SOPClassUID", "")), str(ds.get("SOPInstanceUID", "")))
    except Exception:  # a part that does not parse names nothing
        return "", ""
    return tuple(v if is_valid_uid(v) else "" for v in found)  # type: ignore[return-value]


def _store_parts(
    node: DicomNode, assembler: StudyAssembler, sender: Sender, parts: list[Part], study: str | None
) -> tuple[list[Dataset], list[Dataset]]:
    """Check and keep each part (blocking); the referenced and the failed items."""
    stored: list[Dataset] = []
    failed: list[Dataset] = []
    for part in parts:
        try:
            if part.media_type not in (DICOM_MEDIA_TYPE, ""):
                raise InstanceRefusedError(0xC000, "not an application/dicom part")
            instance: ReceivedInstance | None = inspect_instance(part.data, max_bytes=node.max_instance_bytes)
            if instance is not None:
                if study is not None and instance.study_uid != study:
                    raise InstanceRefusedError(0xA900, "the instance belongs to another study than the URL's")
                assembler.accept(sender, instance)
                stored.append(_reference(instance.sop_class_uid, instance.sop_instance_uid))
                node.metrics.instance("dicomweb", "stored")
            else:
                ds = pydicom.dcmread(io.BytesIO(part.data), stop_before_pixels=True)
                stored.append(_reference(str(ds.SOPClassUID), str(ds.SOPInstanceUID)))
                node.metrics.instance("dicomweb", "discarded")
        except InstanceRefusedError as exc:
            logger.info("STOW-RS instance refused (status 0x%04X): %s", exc.status, exc.reason)
            failed.append(_reference(*_announced_uids(part.data), failure=exc.status))
            node.metrics.instance("dicomweb", "refused")
    return stored, failed


async def _stow(request: Request, settings: Settings, node: DicomNode, study: str | None) -> JSONResponse:
    _check_content_type(request)
    budget: UploadBudget = request.app.state.upload_budget
    with budget.hold() as share:  # the body counts against the upload buffer until it is stored
        parts = await read_related_parts(
            request,
            limit=settings.max_upload_bytes,
            max_parts=settings.max_members,
            pace=pace_of(settings),
            hold=share,
        )
        if not parts:
            raise ApiError(400, "no_instances", "the body holds no DICOM instance")
        assembler = node.assembler
        assert assembler is not None  # get_dicom_node
        sender = assembler.open_sender("dicomweb")
        try:
            stored, failed = await asyncio.to_thread(_store_parts, node, assembler, sender, parts, study)
        finally:
            assembler.close_sender(sender, released=True)
    response = Dataset()
    response.RetrieveURL = None
    response.ReferencedSOPSequence = stored
    if failed:
        response.FailedSOPSequence = failed
    status = 200 if not failed else (202 if stored else 409)
    logger.info("STOW-RS: %d instance(s) stored, %d failed", len(stored), len(failed))
    return JSONResponse(response.to_json_dict(), status_code=status, media_type=DICOM_JSON)


_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            # The type parameter (type="application/dicom") and the boundary come with the header.
            "multipart/related": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    "responses": {
        "200": {"description": "Every instance stored.", "content": {DICOM_JSON: {}}},
        "202": {
            "description": "Some instances stored, some failed (FailedSOPSequence).",
            "content": {DICOM_JSON: {}},
        },
        "409": {
            "description": "No instance stored (FailedSOPSequence says why).",
            "content": {DICOM_JSON: {}},
        },
    },
}


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Malformed body, no instance, or an invalid study UID."},
    401: {"model": ErrorBody, "description": "Missing or invalid API key (when keys are configured)."},
    408: {"model": ErrorBody, "description": "The body came too slowly."},
    413: {"model": ErrorBody, "description": "Body or part count beyond the upload limits."},
    415: {"model": ErrorBody, "description": 'Not multipart/related; type="application/dicom".'},
    503: {"model": ErrorBody, "description": "The DICOM node is not running in this process; retry later."},
}


@router.post(
    "/studies",
    summary="STOW-RS: store instances (each study becomes a job)",
    responses=_ERRORS,
    openapi_extra=_OPENAPI,
)
async def store_instances(request: Request, settings: SettingsDep, node: DicomNodeDep) -> JSONResponse:
    """Store DICOM instances; each study is analysed once complete (``ICH_DICOM_STUDY_QUIET_S`` quiet)."""
    return await _stow(request, settings, node, None)


@router.post(
    "/studies/{study}",
    summary="STOW-RS: store instances of one study",
    responses=_ERRORS,
    openapi_extra=_OPENAPI,
)
async def store_study_instances(
    request: Request, study: str, settings: SettingsDep, node: DicomNodeDep
) -> JSONResponse:
    """As ``POST /dicomweb/studies``; instances of another study than ``study`` fail (0xA900)."""
    if not is_valid_uid(study):
        raise ApiError(400, "invalid_uid", "the study in the URL is not a valid DICOM UID")
    return await _stow(request, settings, node, study)
