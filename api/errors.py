"""JSON errors with a request id, and the middleware that assigns the id and catches what nobody handled.

Every error the gateway returns has the body ``{"code", "detail", "request_id"}`` (DESIGN.md), plus
optional extras such as ``reasons``. The request id comes from the caller's ``X-Request-ID`` when it is a
sane token, so that a hospital's integration engine can follow one study through its own logs and ours;
otherwise a fresh one is made. It is echoed in the ``X-Request-ID`` response header of every response.
"""

from __future__ import annotations

import contextvars
import logging
import re
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)
#: One line per request (method, route template, status, duration); the request id comes from the filter.
access_logger = logging.getLogger("api.access")

REQUEST_ID_HEADER = "X-Request-ID"
#: Accepted caller ids: short tokens only, so a header cannot inject text into logs.
_REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

#: The current request's id, readable from log filters and worker threads (copied into them).
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

_HTTP_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    503: "service_unavailable",
}


class ApiError(Exception):
    """An error the gateway answers with a JSON body; raised by routes and dependencies."""

    def __init__(
        self,
        status_code: int,
        code: str,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.code = code
        self.detail = detail
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})


def service_unavailable(code: str, detail: str, retry_after_s: int) -> ApiError:
    """A 503 carrying ``Retry-After``, so clients (ich_client's backoff among them) know when to come back."""
    return ApiError(503, code, detail, headers={"Retry-After": str(retry_after_s)})


def request_id_of(request: Request) -> str:
    """The id the middleware gave this request (a fresh one if the middleware did not run)."""
    rid = getattr(request.state, "request_id", None)
    return rid if isinstance(rid, str) else uuid.uuid4().hex


def error_response(
    request_id: str,
    status_code: int,
    code: str,
    detail: str,
    *,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> JSONResponse:
    """The one place that shapes an error body, so every error looks the same to clients."""
    body: dict[str, Any] = {"code": code, "detail": detail, "request_id": request_id}
    for key, value in (extra or {}).items():
        body.setdefault(key, value)
    out_headers = {REQUEST_ID_HEADER: request_id, **(headers or {})}
    return JSONResponse(status_code=status_code, content=body, headers=out_headers)


async def _api_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(
        request_id_of(request), exc.status_code, exc.code, exc.detail, headers=exc.headers, extra=exc.extra
    )


async def _http_exception_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    detail = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    return error_response(request_id_of(request), exc.status_code, code, detail, headers=exc.headers)


async def _validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # Only locations and messages: the input values could be anything the caller sent.
    problems = [
        {"loc": [str(part) for part in err.get("loc", ())], "msg": str(err.get("msg", ""))}
        for err in exc.errors()
    ]
    return error_response(
        request_id_of(request),
        422,
        "invalid_request",
        "the request is not valid",
        extra={"errors": problems},
    )


def install_error_handlers(app: FastAPI) -> None:
    """Register the JSON handlers for the gateway's own and the framework's exceptions."""
    app.add_exception_handler(ApiError, _api_error_handler)
    app.add_exception_handler(StarletteHTTPException, _http_exception_handler)
    app.add_exception_handler(RequestValidationError, _validation_error_handler)


def _incoming_request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            candidate = value.decode("latin-1").strip()
            if _REQUEST_ID_PATTERN.match(candidate):
                return candidate
            break
    return uuid.uuid4().hex


def route_template(scope: Scope) -> str:
    """The matched route's path template (bounded label values), or ``unmatched``."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class RequestContextMiddleware:
    """Pure ASGI middleware: request id in, ``X-Request-ID`` out, and a JSON 500 for unhandled errors.

    It is pure ASGI rather than ``BaseHTTPMiddleware`` so that request bodies stream through untouched
    (the upload cap is enforced while reading) and context variables reach the route.
    """

    def __init__(
        self,
        app: ASGIApp,
        on_response: Callable[[str, str, int, float], None] | None = None,
    ) -> None:
        self.app = app
        self.on_response = on_response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = int(message["status"])
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            # Type and frames only: an exception's message may quote DICOM values (patient data).
            frames = "".join(traceback.format_tb(exc.__traceback__))
            logger.error("internal error %s in request %s\n%s", type(exc).__name__, request_id, frames)
            if response_started:
                raise
            status = 500
            response = error_response(
                request_id, 500, "internal_error", "internal error; quote the request id when reporting it"
            )
            await response(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            method = str(scope.get("method", ""))
            route = route_template(scope)
            access_logger.info("%s %s %d %.1fms", method, route, status, elapsed * 1000)
            if self.on_response is not None:
                self.on_response(method, route, status, elapsed)
            request_id_var.reset(token)


class RequestIdLogFilter(logging.Filter):
    """Adds ``request_id`` to every log record so the format can show it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True
