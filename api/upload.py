"""Reading the uploaded study: a raw ``application/zip`` body or the ``file`` field of a multipart form.

The body is streamed and counted as it arrives, so an oversized upload is refused (413) once it passes
``ICH_MAX_UPLOAD_BYTES``, or at once from its ``Content-Length``, before it is buffered. Multipart bodies are
parsed in memory with python-multipart's streaming parser and only the ``file`` field is kept: Starlette's
form parser would spool large files to a temporary directory, which must not receive patient data (and is
read-only in the Kubernetes deployment).
"""

from __future__ import annotations

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from api.errors import ApiError

#: Media types accepted as a raw zip body (browsers and Windows tools send the ``x-`` variants).
ZIP_MEDIA_TYPES = frozenset({"application/zip", "application/x-zip-compressed", "application/x-zip"})
MULTIPART_MEDIA_TYPE = "multipart/form-data"
#: The multipart field that carries the zip (DESIGN.md).
FILE_FIELD = "file"
#: Room for the multipart boundaries and part headers on top of the upload cap.
_MULTIPART_OVERHEAD = 64 * 1024


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "upload_too_large", f"the upload exceeds the limit of {limit} bytes")


def media_type_of(request: Request) -> str:
    """The request's media type, lower-case, without parameters."""
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _check_content_length(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared is None:
        return
    try:
        length = int(declared)
    except ValueError as exc:
        raise ApiError(400, "bad_request", "Content-Length is not a number") from exc
    if length > limit:
        raise _too_large(limit)


class _FilePartCollector:
    """python-multipart callbacks that keep the data of the ``file`` field only."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data: bytearray | None = None
        self.finished = False
        self._field = bytearray()
        self._value = bytearray()
        self._headers: dict[str, bytes] = {}
        self._in_file = False
        self._seen_file = False

    def on_part_begin(self) -> None:
        self._headers = {}
        self._in_file = False

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field.extend(data[start:end])

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value.extend(data[start:end])

    def on_header_end(self) -> None:
        self._headers[self._field.decode("latin-1").lower()] = bytes(self._value)
        self._field.clear()
        self._value.clear()

    def on_headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get("content-disposition", b""))
        if params.get(b"name") == FILE_FIELD.encode() and not self._seen_file:
            self._in_file = self._seen_file = True
            self.data = bytearray()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file and self.data is not None:
            self.data.extend(data[start:end])
            if len(self.data) > self.limit:
                raise _too_large(self.limit)

    def on_part_end(self) -> None:
        self._in_file = False

    def on_end(self) -> None:
        self.finished = True


async def read_zip_upload(request: Request, limit: int) -> bytes:
    """The zip bytes of a ``POST /v1/cases`` request.

    Raises:
        ApiError: 415 for another media type, 413 beyond ``limit``, 400 for a malformed multipart body or one
            without a ``file`` field, or when the client disconnects mid-upload.
    """
    media_type = media_type_of(request)
    if media_type in ZIP_MEDIA_TYPES:
        return await _read_raw(request, limit)
    if media_type == MULTIPART_MEDIA_TYPE:
        return await _read_multipart(request, limit)
    raise ApiError(
        415,
        "unsupported_media_type",
        f"send the study as application/zip or as multipart/form-data field '{FILE_FIELD}'"
        f" (got {media_type[:100] or 'no content type'})",
    )


async def _read_raw(request: Request, limit: int) -> bytes:
    _check_content_length(request, limit)
    body = bytearray()
    try:
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > limit:
                raise _too_large(limit)
    except ClientDisconnect as exc:
        raise ApiError(400, "client_disconnected", "the upload ended before the body was complete") from exc
    return bytes(body)


async def _read_multipart(request: Request, limit: int) -> bytes:
    _, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "invalid_multipart", "the multipart/form-data content type has no boundary")
    body_limit = limit + _MULTIPART_OVERHEAD
    _check_content_length(request, body_limit)
    collector = _FilePartCollector(limit)
    parser = MultipartParser(
        boundary,
        callbacks={
            "on_part_begin": collector.on_part_begin,
            "on_header_field": collector.on_header_field,
            "on_header_value": collector.on_header_value,
            "on_header_end": collector.on_header_end,
            "on_headers_finished": collector.on_headers_finished,
            "on_part_data": collector.on_part_data,
            "on_part_end": collector.on_part_end,
            "on_end": collector.on_end,
        },
    )
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > body_limit:
                raise _too_large(limit)
            if chunk:
                parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise ApiError(400, "invalid_multipart", "the multipart/form-data body is malformed") from exc
    except ClientDisconnect as exc:
        raise ApiError(400, "client_disconnected", "the upload ended before the body was complete") from exc
    if not collector.finished:
        raise ApiError(400, "invalid_multipart", "the multipart/form-data body is incomplete")
    if collector.data is None:
        raise ApiError(400, "missing_file", f"the multipart form has no '{FILE_FIELD}' field")
    return bytes(collector.data)
