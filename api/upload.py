"""Reading the uploaded study: a raw ``application/zip`` body or the ``file`` field of a multipart form.

The body is streamed and counted as it arrives, so an oversized upload is refused (413) once it passes
``ICH_MAX_UPLOAD_BYTES``, or at once from its ``Content-Length``, before it is buffered. Multipart bodies are
parsed in memory with python-multipart's streaming parser and only the ``file`` field is kept: Starlette's
form parser would spool large files to a temporary directory, which must not receive patient data (and is
read-only in the Kubernetes deployment).

The body must also keep coming (``UploadPace``): a silence longer than ``ICH_UPLOAD_TIMEOUT_S``, or an
average rate under ``ICH_UPLOAD_MIN_BYTES_PER_S`` once that grace has passed, ends the request with 408, so
a slow or stalled sender cannot hold a connection and its buffer for as long as it likes. The bytes of all
uploads still being received count against one ``UploadBudget`` (``ICH_MAX_UPLOAD_BUFFER_BYTES``): past it
the upload is refused with 503 ``busy``, so the memory of bodies not yet in a slot is bounded too, while a
stalled connection, which holds nothing, costs nothing. The study is kept
in one ``bytearray`` that grows in place and is handed on as it is (intake reads it without a copy), so an
upload costs its own size once, not twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from api.errors import ApiError, service_unavailable
from api.settings import Settings

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

#: Media types accepted as a raw zip body (browsers and Windows tools send the ``x-`` variants).
ZIP_MEDIA_TYPES = frozenset({"application/zip", "application/x-zip-compressed", "application/x-zip"})
MULTIPART_MEDIA_TYPE = "multipart/form-data"
#: The multipart field that carries the zip (DESIGN.md).
FILE_FIELD = "file"
#: Room for the multipart boundaries and part headers on top of the upload cap.
_MULTIPART_OVERHEAD = 64 * 1024


@dataclass(frozen=True)
class UploadPace:
    """How slowly a body may arrive before the request is ended with 408.

    Attributes:
        timeout_s: the longest silence between two chunks, and the grace before the rate counts.
        min_bytes_per_s: after the grace, the body must have come at least this fast on average (0: only
            silences count). A body of ``n`` bytes therefore has ``timeout_s + n / min_bytes_per_s`` seconds.
    """

    timeout_s: float = 10.0
    min_bytes_per_s: int = 65536

    def __post_init__(self) -> None:
        if self.timeout_s <= 0:
            raise ValueError(f"UploadPace.timeout_s must be positive, got {self.timeout_s}")
        if self.min_bytes_per_s < 0:
            raise ValueError(f"UploadPace.min_bytes_per_s must be >= 0, got {self.min_bytes_per_s}")

    def wait_s(self, elapsed_s: float, received: int) -> float:
        """Seconds the next chunk may take, given the time spent and the bytes received so far."""
        if self.min_bytes_per_s == 0:
            return self.timeout_s
        allowed = self.timeout_s + received / self.min_bytes_per_s
        return min(self.timeout_s, allowed - elapsed_s)


class UploadBudget:
    """Bytes of uploads being received at once, all requests together (touched on the event loop only)."""

    def __init__(self, limit: int, retry_after_s: int) -> None:
        if limit <= 0:
            raise ValueError(f"UploadBudget.limit must be positive, got {limit}")
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.used = 0

    @contextmanager
    def hold(self) -> Iterator[UploadShare]:
        """A request's share, given back when the block ends (the body then belongs to a slot, or is gone).

        ``POST /v1/cases`` keeps its share while the case waits in line for a slot, so bodies waiting are
        bounded by the same buffer as bodies arriving.
        """
        share = UploadShare(self)
        try:
            yield share
        finally:
            self.used -= share.bytes


class UploadShare:
    """The bytes one request holds of an :class:`UploadBudget`."""

    def __init__(self, budget: UploadBudget) -> None:
        self.budget = budget
        self.bytes = 0

    def add(self, count: int) -> None:
        budget = self.budget
        if budget.used + count > budget.limit:
            raise service_unavailable(
                "busy",
                f"the uploads being received fill the gateway's buffer of {budget.limit} bytes; retry later",
                budget.retry_after_s,
            )
        budget.used += count
        self.bytes += count


def pace_of(settings: Settings) -> UploadPace:
    """The pace the settings ask of uploads (``ICH_UPLOAD_TIMEOUT_S``, ``ICH_UPLOAD_MIN_BYTES_PER_S``)."""
    return UploadPace(settings.upload_timeout_s, settings.upload_min_bytes_per_s)


def _too_slow(pace: UploadPace) -> ApiError:
    return ApiError(
        408,
        "upload_timeout",
        f"the upload came too slowly (a silence over {pace.timeout_s:g} s, or under "
        f"{pace.min_bytes_per_s} bytes/s on average); send the study again",
        headers={"Connection": "close"},
    )


async def paced_chunks(
    request: Request, pace: UploadPace, hold: UploadShare | None = None
) -> AsyncIterator[bytes]:
    """The body's chunks as they arrive, ending with 408 when the sender falls below ``pace``.

    Raises:
        ApiError: 408 ``upload_timeout``; 400 ``client_disconnected`` when the client goes mid-upload; 503
            ``busy`` when ``hold``'s budget cannot take the next chunk.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    received = 0
    chunks = request.stream().__aiter__()
    while True:
        wait = pace.wait_s(loop.time() - started, received)
        try:
            if wait <= 0:
                raise TimeoutError
            async with asyncio.timeout(wait):
                chunk = await chunks.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError as exc:
            raise _too_slow(pace) from exc
        except ClientDisconnect as exc:
            raise ApiError(
                400, "client_disconnected", "the upload ended before the body was complete"
            ) from exc
        received += len(chunk)
        if hold is not None:
            hold.add(len(chunk))
        yield chunk


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "upload_too_large", f"the upload exceeds the limit of {limit} bytes")


def media_type_of(request: Request) -> str:
    """The request's media type, lower-case, without parameters."""
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _check_content_length(request: Request, limit: int, overhead: int = 0) -> None:
    """413 at once when the declared body is larger than ``limit`` bytes of content and ``overhead``."""
    declared = request.headers.get("content-length")
    if declared is None:
        return
    try:
        length = int(declared)
    except ValueError as exc:
        raise ApiError(400, "bad_request", "Content-Length is not a number") from exc
    if length > limit + overhead:
        raise _too_large(limit)


class PartCollector:
    """python-multipart's callbacks: each part's headers collected by lower-case name, the end noted.

    Subclasses keep what they need of the parts (``on_part_begin``, ``on_headers_finished``,
    ``on_part_data``, ``on_part_end``) and may refuse a part by raising :class:`ApiError`.
    """

    def __init__(self) -> None:
        self.finished = False
        self.headers: dict[str, bytes] = {}
        self._field = bytearray()
        self._value = bytearray()

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_end": self.on_end,
        }

    def on_part_begin(self) -> None:
        self.headers = {}

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field.extend(data[start:end])

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value.extend(data[start:end])

    def on_header_end(self) -> None:
        self.headers[self._field.decode("latin-1").lower()] = bytes(self._value)
        self._field.clear()
        self._value.clear()

    def on_headers_finished(self) -> None:
        """The part's headers are all in ``headers``."""

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        """A piece of the part's data: ``data[start:end]``."""

    def on_part_end(self) -> None:
        """The part is complete."""

    def on_end(self) -> None:
        self.finished = True


async def read_multipart(
    request: Request,
    collector: PartCollector,
    *,
    limit: int,
    overhead: int,
    pace: UploadPace,
    hold: UploadShare | None,
) -> None:
    """Stream a multipart body of the request's boundary into ``collector``, within the upload's caps.

    Raises:
        ApiError: 400 without a boundary, for a malformed or incomplete body; 413 past ``limit`` bytes and
            ``overhead`` for boundaries and part headers (declared or received); 408 and 503 as
            :func:`paced_chunks`.
    """
    media_type, params = parse_options_header(request.headers.get("content-type", ""))
    kind = media_type.decode("latin-1").strip().lower()
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "invalid_multipart", f"the {kind} content type has no boundary")
    _check_content_length(request, limit, overhead)
    parser = MultipartParser(boundary, callbacks=collector.callbacks())
    received = 0
    try:
        async for chunk in paced_chunks(request, pace, hold):
            received += len(chunk)
            if received > limit + overhead:
                raise _too_large(limit)
            if chunk:
                parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise ApiError(400, "invalid_multipart", f"the {kind} body is malformed") from exc
    if not collector.finished:
        raise ApiError(400, "invalid_multipart", f"the {kind} body is incomplete")


class _FilePartCollector(PartCollector):
    """Keeps the data of the ``file`` field only (the first one)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.data: bytearray | None = None
        self._in_file = False
        self._seen_file = False

    def on_part_begin(self) -> None:
        super().on_part_begin()
        self._in_file = False

    def on_headers_finished(self) -> None:
        _, params = parse_options_header(self.headers.get("content-disposition", b""))
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


async def read_zip_upload(
    request: Request,
    limit: int,
    pace: UploadPace | None = None,
    budget: UploadBudget | None = None,
    *,
    share: UploadShare | None = None,
) -> bytearray:
    """The zip bytes of a ``POST /v1/cases`` request, in one buffer (no copy is made of it here).

    Args:
        request: the request whose body is read.
        limit: the largest zip accepted, in bytes.
        pace: how slowly the body may come (default: ``UploadPace()``).
        budget: the bytes all uploads being received may hold together (None: no such bound).
        share: a share of the budget the caller already holds and keeps past the read (instead of
            ``budget``, whose share is given back on return).

    Raises:
        ApiError: 415 for another media type, 413 beyond ``limit``, 408 when the body comes too slowly, 503
            when ``budget`` is full, 400 for a malformed multipart body or one without a ``file`` field, or
            when the client disconnects mid-upload.
    """
    pace = pace or UploadPace()
    media_type = media_type_of(request)
    if media_type in ZIP_MEDIA_TYPES or media_type == MULTIPART_MEDIA_TYPE:
        reader = _read_raw if media_type in ZIP_MEDIA_TYPES else _read_multipart
        if share is not None or budget is None:
            return await reader(request, limit, pace, share)
        with budget.hold() as hold:
            return await reader(request, limit, pace, hold)
    raise ApiError(
        415,
        "unsupported_media_type",
        f"send the study as application/zip or as multipart/form-data field '{FILE_FIELD}'"
        f" (got {media_type[:100] or 'no content type'})",
    )


async def _read_raw(request: Request, limit: int, pace: UploadPace, hold: UploadShare | None) -> bytearray:
    _check_content_length(request, limit)
    # Grown in place, never sized from Content-Length: a client that declares 512 MiB and sends nothing
    # must cost nothing.
    body = bytearray()
    async for chunk in paced_chunks(request, pace, hold):
        body.extend(chunk)
        if len(body) > limit:
            raise _too_large(limit)
    return body


async def _read_multipart(
    request: Request, limit: int, pace: UploadPace, hold: UploadShare | None
) -> bytearray:
    collector = _FilePartCollector(limit)
    await read_multipart(request, collector, limit=limit, overhead=_MULTIPART_OVERHEAD, pace=pace, hold=hold)
    if collector.data is None:
        raise ApiError(400, "missing_file", f"the multipart form has no '{FILE_FIELD}' field")
    return collector.data
