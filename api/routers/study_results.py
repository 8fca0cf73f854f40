"""A finished job's DICOM results: ``GET /v1/studies/{id}/seg``, ``/sr`` and ``/key-images``.

Each answers ``application/dicom`` (one Part 10 file) with the object the job stored when it finished
(``ich.dicom_outputs``): the same bytes, with the same UIDs, that the DICOM node sends to the PACS. 404
``not_found`` for an unknown job; 409 ``not_done`` while it is queued or running, or when it failed; 404
``not_available`` when the job has no such object (no lesion: no SEG and no key image; or the series' headers
could not carry it, which the result's ``warnings`` say).
"""

from __future__ import annotations

import re

from fastapi import APIRouter, Depends, Request, Response

from api.auth import require_api_key
from api.errors import ApiError
from api.routers.studies import JobQueueDep, _store
from api.schemas import ErrorBody
from ich.jobs.store import DONE

router = APIRouter(prefix="/v1", tags=["studies"], dependencies=[Depends(require_api_key)])

DICOM_MEDIA_TYPE = "application/dicom"
_ID_PATTERN = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_WHAT = {
    "seg": "DICOM Segmentation of the kept lesions",
    "sr": "DICOM Structured Report (TID 1500) of the finding",
    "key-images": "Secondary Capture key image of the most certain lesion slice",
}
_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"content": {DICOM_MEDIA_TYPE: {}}, "description": "The object, a DICOM Part 10 file."},
    401: {"model": ErrorBody, "description": "Missing or invalid API key (when keys are configured)."},
    404: {
        "model": ErrorBody,
        "description": "Unknown study (not_found), or the job has no such object (not_available).",
    },
    409: {"model": ErrorBody, "description": "The study is not done (queued, running or failed)."},
    503: {"model": ErrorBody, "description": "The job store is unavailable; retry later."},
}


async def _output(request: Request, queue: JobQueueDep, study_id: str, kind: str) -> Response:
    if not _ID_PATTERN.match(study_id):
        raise ApiError(404, "not_found", "no such study (unknown, deleted, or past retention)")
    job = await _store(request, queue.store.get, study_id)
    if job is None:
        raise ApiError(404, "not_found", "no such study (unknown, deleted, or past retention)")
    if job.status != DONE:
        raise ApiError(409, "not_done", f"the study is {job.status}; its results exist once it is done")
    data = await _store(request, queue.store.output, study_id, kind)
    if data is None:
        raise ApiError(
            404,
            "not_available",
            f"this study has no {kind} object: no lesion was kept, or the series' headers cannot carry it "
            "(see the result's warnings)",
        )
    return Response(
        content=data,
        media_type=DICOM_MEDIA_TYPE,
        headers={"Content-Disposition": f'attachment; filename="{study_id}-{kind}.dcm"'},
    )


@router.get("/studies/{study_id}/seg", response_class=Response, responses=_RESPONSES, summary=_WHAT["seg"])
async def study_seg(request: Request, study_id: str, queue: JobQueueDep) -> Response:
    """The job's DICOM SEG (BINARY, one "Hemorrhage" segment over the analysed CT series)."""
    return await _output(request, queue, study_id, "seg")


@router.get("/studies/{study_id}/sr", response_class=Response, responses=_RESPONSES, summary=_WHAT["sr"])
async def study_sr(request: Request, study_id: str, queue: JobQueueDep) -> Response:
    """The job's Comprehensive 3D SR: present or absent, probability, volume, indeterminate, model version."""
    return await _output(request, queue, study_id, "sr")


@router.get(
    "/studies/{study_id}/key-images",
    response_class=Response,
    responses=_RESPONSES,
    summary=_WHAT["key-images"],
)
async def study_key_images(request: Request, study_id: str, queue: JobQueueDep) -> Response:
    """The job's key image: the most certain lesion slice, outline and "NOT FOR CLINICAL USE" burned in."""
    return await _output(request, queue, study_id, "key-images")
