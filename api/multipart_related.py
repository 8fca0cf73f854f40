"""Reading a ``multipart/related`` body (STOW-RS) into its parts, in memory, within the upload limits.

The body streams in at the upload pace (``api.upload.paced_chunks``: 408 when it stalls) and is counted
against ``ICH_MAX_UPLOAD_BYTES`` as it comes; python-multipart's streaming parser splits it at the boundary.
Nothing is spooled to a temporary directory (which would receive patient data, and is read-only in the
Kubernetes deployment). Each part keeps its ``Content-Type``.
"""

from __future__ import annotations

from dataclasses import dataclass

from python_multipart.multipart import parse_options_header
from starlette.requests import Request

from api.errors import ApiError
from api.upload import PartCollector, UploadPace, UploadShare, read_multipart

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


class _Collector(PartCollector):
    """Keeps every part, with its media type, up to ``max_parts`` parts and ``limit`` bytes of data."""

    def __init__(self, limit: int, max_parts: int) -> None:
        super().__init__()
        self.limit = limit
        self.max_parts = max_parts
        self.parts: list[Part] = []
        self._total = 0
        self._data = bytearray()

    def on_part_begin(self) -> None:
        if len(self.parts) >= self.max_parts:
            raise ApiError(413, "study_too_large", f"the body holds more than {self.max_parts} parts")
        super().on_part_begin()
        self._data = bytearray()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self._total += end - start
        if self._total > self.limit:
            raise ApiError(413, "upload_too_large", f"the upload exceeds the limit of {self.limit} bytes")
        self._data.extend(data[start:end])

    def on_part_end(self) -> None:
        media, _ = parse_options_header(self.headers.get("content-type", b""))
        self.parts.append(Part(media.decode("latin-1").strip().lower(), bytes(self._data)))
        self._data = bytearray()


async def read_related_parts(
    request: Request,
    *,
    limit: int,
    max_parts: int,
    pace: UploadPace,
    hold: UploadShare | None = None,
) -> list[Part]:
    """The parts of a ``multipart/related`` request body.

    ``hold`` is the request's share of the gateway's upload buffer budget, told each chunk as it arrives
    (503 ``busy`` when all uploads together would pass it).

    Raises:
        ApiError: 400 without a boundary or for a malformed or incomplete body; 413 beyond ``limit`` bytes of
            part data or ``max_parts`` parts; 408 when the body comes too slowly.
    """
    collector = _Collector(limit, max_parts)
    await read_multipart(request, collector, limit=limit, overhead=_OVERHEAD, pace=pace, hold=hold)
    return collector.parts
