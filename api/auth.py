"""API keys: a file of SHA-256 digests, and the dependency that guards every ``/v1`` route.

The gateway stores only digests (``ICH_API_KEYS_FILE``, one 64-character hex digest per line, ``#``
comments allowed), so a leaked ConfigMap or Secret does not leak usable keys. A request presents the key as
``Authorization: Bearer <key>``; its digest is compared with every configured digest in constant time, so the
answer's timing says nothing about how close a guess was. With no file configured, authentication is off
(a single-user workstation); health, readiness and metrics are always open for probes and scrapers.

To make a key and its digest::

    KEY=$(python -c "import secrets; print(secrets.token_urlsafe(32))")
    printf %s "$KEY" | sha256sum | cut -d' ' -f1 >> api-keys.txt
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from pathlib import Path

from fastapi import Request

from api.errors import ApiError

_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def load_key_digests(path: Path) -> frozenset[str]:
    """Read the digests file.

    Raises:
        ValueError: the file is missing, unreadable, holds a malformed line or no digest at all. A configured
            but empty key file is refused at start-up rather than silently locking every client out.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"ICH_API_KEYS_FILE {path} cannot be read: {exc.strerror}") from exc
    digests: set[str] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip().lower()
        if not line:
            continue
        if not _DIGEST.match(line):
            raise ValueError(
                f"ICH_API_KEYS_FILE {path} line {number} is not a SHA-256 hex digest (64 hex characters)"
            )
        digests.add(line)
    if not digests:
        raise ValueError(f"ICH_API_KEYS_FILE {path} holds no key digest")
    return frozenset(digests)


def key_digest(key: str) -> str:
    """The SHA-256 hex digest of a key, as stored in the keys file."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class ApiKeyVerifier:
    """Checks bearer keys against the configured digests."""

    def __init__(self, digests: Iterable[str]) -> None:
        self._digests = tuple(sorted(digests))

    def verify(self, key: str) -> bool:
        """True when the key's digest is one of the configured digests.

        Every digest is compared (no early exit) with ``hmac.compare_digest``.
        """
        candidate = key_digest(key).encode("ascii")
        matched = False
        for digest in self._digests:
            matched |= hmac.compare_digest(candidate, digest.encode("ascii"))
        return matched


def _unauthorized(detail: str) -> ApiError:
    return ApiError(401, "unauthorized", detail, headers={"WWW-Authenticate": "Bearer"})


async def require_api_key(request: Request) -> None:
    """FastAPI dependency of every ``/v1`` router: 401 unless a configured key is presented."""
    verifier: ApiKeyVerifier | None = getattr(request.app.state, "api_keys", None)
    if verifier is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise _unauthorized("an API key is required: send 'Authorization: Bearer <key>'")
    if not verifier.verify(key.strip()):
        raise _unauthorized("the API key is not valid")
