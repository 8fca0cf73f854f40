"""The upload caps hold while the body streams in: refused before it is buffered whole (``api.upload``).

Intake refuses an oversized zip too (413), so a test that only checks the status cannot tell a cap that
stops the stream from one that lets the whole body in first. These tests feed ``read_zip_upload`` a chunked
body without ``Content-Length`` through a counting ASGI ``receive`` and assert how much of it was pulled.
"""

from __future__ import annotations

from typing import Any

import pytest
from starlette.requests import Request

from api.errors import ApiError
from api.upload import read_zip_upload

LIMIT = 100_000
CHUNK = 1024
BOUNDARY = "guard-boundary"


class CountingBody:
    """An ASGI ``receive`` that hands out ``data`` in chunks and counts the bytes taken."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pulled = 0

    async def __call__(self) -> dict[str, Any]:
        chunk = self.data[self.pulled : self.pulled + CHUNK]
        self.pulled += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": self.pulled < len(self.data)}


def _request(body: CountingBody, content_type: str) -> Request:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/cases",
        "headers": [(b"content-type", content_type.encode()), (b"transfer-encoding", b"chunked")],
    }
    return Request(scope, body)


def _part(name: str, payload: bytes) -> bytes:
    return (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}.zip"\r\n'
            f"Content-Type: application/zip\r\n\r\n"
        ).encode()
        + payload
        + b"\r\n"
    )


def _multipart(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


async def test_a_raw_body_is_refused_once_it_passes_the_cap_not_after() -> None:
    body = CountingBody(b"\0" * (4 * LIMIT))
    with pytest.raises(ApiError) as refused:
        await read_zip_upload(_request(body, "application/zip"), LIMIT)
    assert refused.value.status_code == 413 and refused.value.code == "upload_too_large"
    assert LIMIT < body.pulled <= LIMIT + CHUNK  # the first chunk past the cap, nothing more


async def test_a_multipart_file_field_is_refused_once_it_passes_the_cap() -> None:
    # The file just over the cap and the whole body within the body's own allowance (cap + part
    # overhead): only the file field's own cap can stop the stream before the trailing field arrives.
    data = _multipart(_part("file", b"\0" * (LIMIT + 4 * CHUNK)), _part("note", b"\1" * (40 * CHUNK)))
    body = CountingBody(data)
    with pytest.raises(ApiError) as refused:
        await read_zip_upload(_request(body, MULTIPART), LIMIT)
    assert refused.value.status_code == 413
    assert body.pulled <= LIMIT + 2 * CHUNK  # stopped at the cap, long before the body's 40 KiB tail
    assert body.pulled < len(data) - 30 * CHUNK


async def test_a_multipart_body_is_refused_once_it_passes_its_allowance_whatever_the_field() -> None:
    # A small file and a huge other field: no field is kept, but the body must not be read without end.
    data = _multipart(_part("file", b"PK\3\4"), _part("padding", b"\1" * (20 * LIMIT)))
    body = CountingBody(data)
    with pytest.raises(ApiError) as refused:
        await read_zip_upload(_request(body, MULTIPART), LIMIT)
    assert refused.value.status_code == 413
    assert body.pulled <= LIMIT + 64 * 1024 + CHUNK  # the cap plus the multipart overhead allowance


async def test_a_multipart_file_at_the_cap_is_read_whole() -> None:
    payload = b"\7" * LIMIT
    body = CountingBody(_multipart(_part("file", payload)))
    assert await read_zip_upload(_request(body, MULTIPART), LIMIT) == payload
