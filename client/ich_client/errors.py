"""One exception tree that mirrors the service's HTTP errors.

Callers catch the class that matches what they can act on: ``PayloadTooLargeError`` (split the study),
``UnprocessableStudyError`` (wrong series, read ``detail``), ``RateLimitError`` (slow down), or the base
``ICHError`` for everything. Every status error carries the service's ``request_id`` so that a failed call
can be found in the gateway's logs.
"""

from __future__ import annotations

import json
from typing import Any

import httpx


class ICHError(Exception):
    """Base of every error the client raises on purpose."""


class APIConnectionError(ICHError):
    """The service could not be reached, or the connection broke before a response arrived."""

    def __init__(self, message: str, *, request: httpx.Request | None = None) -> None:
        super().__init__(message)
        self.request = request


class APITimeoutError(APIConnectionError):
    """No response within the client's timeout.

    A subclass of ``APIConnectionError`` because, to a caller, both mean "no answer from the service".
    """


class APIStatusError(ICHError):
    """The service answered with a non-2xx status.

    Attributes:
        status_code: the HTTP status.
        code: the service's machine-readable error code (``"http_<status>"`` when the body was not the
            service's JSON, e.g. from a proxy).
        detail: the human-readable explanation.
        request_id: the service's request id (also sent as the ``X-Request-ID`` header), or None.
        body: the decoded JSON body when there was one, so that extra fields are not lost.
        reasons: the service's list of reasons (a 422 says why each series or file was not usable), or [].
        retry_after: seconds from the ``Retry-After`` header, when present.
        response: the raw ``httpx.Response``.
    """

    def __init__(
        self,
        status_code: int,
        code: str,
        detail: str,
        request_id: str | None = None,
        *,
        body: dict[str, Any] | None = None,
        retry_after: float | None = None,
        response: httpx.Response | None = None,
    ) -> None:
        suffix = f" (request_id={request_id})" if request_id else ""
        super().__init__(f"{status_code} {code}: {detail}{suffix}")
        self.status_code = status_code
        self.code = code
        self.detail = detail
        self.request_id = request_id
        self.body = body
        reasons = body.get("reasons") if body else None
        self.reasons: list[Any] = list(reasons) if isinstance(reasons, list) else []
        self.retry_after = retry_after
        self.response = response


class BadRequestError(APIStatusError):
    """400: the upload is not a readable zip archive."""


class AuthenticationError(APIStatusError):
    """401: missing or unknown API key."""


class NotFoundError(APIStatusError):
    """404: usually a wrong base URL (e.g. a path prefix the service does not have)."""


class ConflictError(APIStatusError):
    """409: the ``Idempotency-Key`` was used for a different upload."""


class PayloadTooLargeError(APIStatusError):
    """413: the study exceeds the service's upload, uncompressed-size or member-count limits."""


class UnsupportedMediaTypeError(APIStatusError):
    """415: the request was neither ``application/zip`` nor multipart with a ``file`` field."""


class UnprocessableStudyError(APIStatusError):
    """422: the archive holds no usable CT series; ``detail`` (and ``body``) say why."""


class RateLimitError(APIStatusError):
    """429: too many requests; retried automatically, raised once retries are spent."""


class InternalServerError(APIStatusError):
    """5xx other than 503: a fault in the service, not in the study."""


class ServiceUnavailableError(APIStatusError):
    """503: the inference engine is not ready; retried automatically, raised once retries are spent."""


_STATUS_ERRORS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    415: UnsupportedMediaTypeError,
    422: UnprocessableStudyError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}


def error_class_for(status_code: int) -> type[APIStatusError]:
    """Return the most specific exception class for an HTTP status."""
    if status_code in _STATUS_ERRORS:
        return _STATUS_ERRORS[status_code]
    if status_code >= 500:
        return InternalServerError
    return APIStatusError


def error_from_response(response: httpx.Response, retry_after: float | None = None) -> APIStatusError:
    """Build the exception for a non-2xx response.

    The service's errors are ``{"code", "detail", "request_id"}``; anything else (a proxy's HTML page,
    FastAPI's default validation list) still becomes a readable error instead of a decoding failure.
    """
    status = response.status_code
    body: dict[str, Any] | None = None
    try:
        decoded = json.loads(response.content) if response.content else None
    except ValueError:
        decoded = None
    if isinstance(decoded, dict):
        body = decoded
    code = str(body["code"]) if body and body.get("code") else f"http_{status}"
    raw_detail = body.get("detail") if body else None
    if isinstance(raw_detail, str):
        detail = raw_detail
    elif raw_detail is not None:
        detail = json.dumps(raw_detail)
    else:
        text = response.text.strip()
        detail = text[:500] if text else (response.reason_phrase or "no detail")
    request_id = body.get("request_id") if body else None
    if not request_id:
        request_id = response.headers.get("x-request-id")
    cls = error_class_for(status)
    return cls(
        status,
        code,
        detail,
        str(request_id) if request_id else None,
        body=body,
        retry_after=retry_after,
        response=response,
    )


class JobTimeoutError(ICHError, TimeoutError):
    """``wait`` gave up before the job finished; ``job`` is its last known state (it runs on regardless)."""

    def __init__(self, message: str, job: Any) -> None:
        super().__init__(message)
        self.job = job
