"""``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) with their assets served by the gateway itself.

FastAPI's default pages load their JavaScript and CSS from a CDN, so on a hospital network without internet
they stay blank. These are FastAPI's own page builders (``get_swagger_ui_html``, ``get_redoc_html``) pointed
at copies of the assets that ship inside the ``fastapi-offline`` distribution (only its static files are
used), served under :data:`ASSETS_PATH`. A Content-Security-Policy keeps both pages to this origin: ReDoc's
sidebar links its vendor's logo from the internet, which the policy stops before any request is made.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_PATH = "/static/docs"
#: Same origin only; inline script (Swagger UI's initialiser), inline styles and blob workers (ReDoc).
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
OAUTH2_REDIRECT_PATH = "/docs/oauth2-redirect"

router = APIRouter(include_in_schema=False)


def assets_dir() -> Path:
    """The folder holding ``swagger-ui-bundle.js``, ``swagger-ui.css``, ``redoc.standalone.js``."""
    return Path(str(files("fastapi_offline") / "static"))


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", ""))


def _same_origin(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = DOCS_CSP
    return page


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    root = _root(request)
    page = get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - Swagger UI",
        oauth2_redirect_url=f"{root}{OAUTH2_REDIRECT_PATH}",
        swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css",
        swagger_favicon_url=f"{root}{ASSETS_PATH}/favicon.png",
    )
    return _same_origin(page)


@router.get(OAUTH2_REDIRECT_PATH)
async def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    root = _root(request)
    page = get_redoc_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{root}{ASSETS_PATH}/redoc.standalone.js",
        redoc_favicon_url=f"{root}{ASSETS_PATH}/favicon.png",
        with_google_fonts=False,
    )
    return _same_origin(page)


def install_offline_docs(app: FastAPI) -> None:
    """Serve ``/docs`` and ``/redoc`` from the package; ``app`` must be built with ``docs_url=None`` and
    ``redoc_url=None`` so FastAPI's CDN pages do not take the paths first."""
    app.include_router(router)
    app.mount(ASSETS_PATH, StaticFiles(directory=assets_dir()), name="docs-assets")
