"""The viewer: the page at ``/`` and ``/viewer``, its assets, and the slice pictures it shows.

The page is plain HTML, CSS and JavaScript in ``api/static/viewer`` (no framework, no CDN: it works on a
network without internet). It talks to the public API only: ``POST /v1/studies`` to upload,
``GET /v1/studies/{id}`` for the result, and ``GET /v1/studies/{id}/slices/{index}.png`` (this module) for
the pictures, rendered on the server from the job's stored study (docs/decisions.md says why).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from api.auth import require_api_key
from api.errors import ApiError
from api.routers.studies import JobQueueDep
from api.slice_images import SliceImageError, SliceImages
from ich.jobs.store import DONE

STATIC_DIR = Path(__file__).resolve().parent.parent / "static" / "viewer"
#: Where the page's own assets are served.
ASSETS_PATH = "/static/viewer"
#: Browsers may keep a slice picture this long; a finished job's pictures never change.
SLICE_MAX_AGE_S = 3600

#: The page may talk to this origin only; pictures arrive as blob: URLs of fetched PNGs.
PAGE_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

pages = APIRouter(include_in_schema=False)
slices = APIRouter(prefix="/v1", tags=["viewer"], dependencies=[Depends(require_api_key)])

Window = Literal["brain", "stroke", "bone"]


def _page() -> FileResponse:
    # no-cache: the page is small, and a new version of the service must not meet an old page.
    return FileResponse(
        STATIC_DIR / "index.html",
        media_type="text/html",
        headers={"Cache-Control": "no-cache", "Content-Security-Policy": PAGE_CSP},
    )


@pages.get("/")
async def root_page() -> FileResponse:
    """The viewer (the service's front door for people)."""
    return _page()


@pages.get("/viewer")
async def viewer_page() -> FileResponse:
    """The viewer; ``?study=ID`` opens a job."""
    return _page()


def _not_found(detail: str = "no such study (unknown, deleted, or past retention)") -> ApiError:
    return ApiError(404, "not_found", detail)


@slices.get(
    "/studies/{study_id}/slices/{index}.png",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}, "description": "The slice, captioned, at its own matrix."},
        404: {"description": "Unknown study, or no such slice."},
        409: {"description": "The study is not done (queued, running or failed)."},
    },
    summary="One slice of a finished study as a PNG",
)
async def slice_image(
    request: Request,
    study_id: str,
    index: int,
    queue: JobQueueDep,
    window: Annotated[
        Window, Query(description="Display window: brain (40/80), stroke (40/40), bone (500/3000).")
    ] = "brain",
    outline: Annotated[bool, Query(description="Draw the kept lesions' outline in red.")] = True,
) -> Response:
    """The slice ``index`` (0-based, the result's order) in a window, with ``NOT FOR CLINICAL USE``, ``slice
    k/N``, its probability and the R/L marker burned in. ``X-ICH-Mask`` says whether the outline is drawn
    (``outlined``), not asked for (``off``) or not known (``unavailable``: the job kept no SEG).
    """
    cache: SliceImages = request.app.state.slice_images
    job = await asyncio.to_thread(queue.store.get, study_id) if len(study_id) == 36 else None
    if job is None:
        cache.forget(study_id)
        raise _not_found()
    if job.status != DONE or job.result is None:
        raise ApiError(
            409, "study_not_done", f"the study is {job.status}; its slices are drawn once it is done"
        )
    etag = f'"{job.payload_sha256[:16]}-{index}-{window}-{int(outline)}"'
    headers = {"ETag": etag, "Cache-Control": f"private, max-age={SLICE_MAX_AGE_S}"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    executor = request.app.state.executor
    try:
        png, state, _ = await cache.png(
            job,
            queue.store,
            executor,
            request.app.state.settings,
            index=index,
            window=window,
            outline=outline,
        )
    except IndexError:
        raise _not_found("no such slice in this study") from None
    except SliceImageError as exc:
        raise ApiError(409, "slices_unavailable", str(exc)) from exc
    headers["X-ICH-Mask"] = state
    return Response(content=png, media_type="image/png", headers=headers)


def install_viewer(app: FastAPI) -> None:
    """Add the page, its assets and the slice route to ``app``."""
    app.state.slice_images = SliceImages()
    app.include_router(pages)
    app.include_router(slices)
    app.mount(ASSETS_PATH, StaticFiles(directory=STATIC_DIR), name="viewer-assets")
