"""Reading a ``multipart/related`` body (STOW-RS) into its parts, in memory, within the upload limits.

The body streams in at the upload pace (``api.upload.paced_chunks``: 408 when it stalls) and is counted
against ``ICH_MAX_UPLOAD_BYTES`` as it comes; python-multipart's streaming parser splits it at the boundary.
Nothing is spooled to a temporary directory (which would receive patient data, and is read-only in the
Kubernetes deployment). Each part keeps its ``Content-Type``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from api.errors import ApiError
from api.upload import UploadPace, paced_chunks

__all__ = ["Part", "read_related_parts", "related_type"]

#: Room for boundaries and part headers on top of the upload cap.
_OVERHEAD = 1024 * 1024


@dataclass(frozen=True)
class Part:
    """One body part: its media type (lower case, no parameters) and its bytes."""

    media_type: str
    data: bytes


def related_type(content_type: str) -> tuple[str, str | None, bytes | None]:
    """The media type, the ``type`` parameter and the boundary of a ``Content-Type`` header."""
    value, params = parse_options_header(content_type)
    kind = params.get(b"type")
    return (
        value.decode("latin-1").strip().lower(),
        kind.decode("latin-1").strip().lower() if kind else None,
        params.get(b"boundary"),
    )


class _Collector:
    def __init__(self, limit: int, max_parts: int) -> None:
        self.limit = limit
        self.max_parts = max_parts
        self.parts: list[Part] = []
        self.finished = False
        self._total = 0
        self._field = bytearray()
        self._value = bytearray()
        self._headers: dict[str, bytes] = {}
        self._data = bytearray()

    def on_part_begin(self) -> None:
        if len(self.parts) >= self.max_parts:
            raise ApiError(413, "study_too_large", f"the body holds more than {self.max_parts} parts")
        self._headers = {}
        self._data = bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field.extend(data[start:end])

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value.extend(data[start:end])

    def on_header_end(self) -> None:
        self._headers[self._field.decode("latin-1").lower()] = bytes(self._value)
        self._field.clear()
        self._value.clear()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self._total += end - start
        if self._total > self.limit:
            raise ApiError(413, "upload_too_large", f"the upload exceeds the limit of {self.limit} bytes")
        self._data.extend(data[start:end])

    def on_part_end(self) -> None:
        media, _ = parse_options_header(self._headers.get("content-type", b""))
        self.parts.append(Part(media.decode("latin-1").strip().lower(), bytes(self._data)))
        self._data = bytearray()

    def on_end(self) -> None:
        self.finished = True


async def read_related_parts(
    request: Request,
    *,
    limit: int,
    max_parts: int,
    pace: UploadPace,
    count: Callable[[int], None] | None = None,
) -> list[Part]:
    """The parts of a ``multipart/related`` request body.

    ``count`` is told each chunk's size as it arrives (the gateway's upload buffer budget, which answers
    503 ``busy`` when all uploads together would pass it).

    Raises:
        ApiError: 400 without a boundary or for a malformed or incomplete body; 413 beyond ``limit`` bytes of
            part data or ``max_parts`` parts; 408 when the body comes too slowly.
    """
    _, _, boundary = related_type(request.headers.get("content-type", ""))
    if not boundary:
        raise ApiError(400, "invalid_multipart", "the multipart/related content type has no boundary")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit + _OVERHEAD:
        raise ApiError(413, "upload_too_large", f"the upload exceeds the limit of {limit} bytes")
    collector = _Collector(limit, max_parts)
    parser = MultipartParser(
        boundary,
        callbacks={
            "on_part_begin": collector.on_part_begin,
            "on_header_field": collector.on_header_field,
            "on_header_value": collector.on_header_value,
            "on_header_end": collector.on_header_end,
            "on_part_data": collector.on_part_data,
            "on_part_end": collector.on_part_end,
            "on_end": collector.on_end,
        },
    )
    received = 0
    try:
        async for chunk in paced_chunks(request, pace):
            received += len(chunk)
            if count is not None:
                count(len(chunk))
            if received > limit + _OVERHEAD:
                raise ApiError(413, "upload_too_large", f"the upload exceeds the limit of {limit} bytes")
            if chunk:
                parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise ApiError(400, "invalid_multipart", "the multipart/related body is malformed") from exc
    if not collector.finished:
        raise ApiError(400, "invalid_multipart", "the multipart/related body is incomplete")
    return collector.parts
