"""DICOM UIDs: checking the ones that come in, deriving the ones that go out.

A UID that arrives in a DICOM file or over the network is text chosen by the sender. It is checked against
PS3.5 section 9 (digits and dots, no leading zeros, at most 64 characters) before anything uses it, and even a
valid one never becomes a file name: the spool names files after its SHA-256 (:func:`uid_digest`), so a UID
cannot climb out of a folder, collide with another name, or show a patient's study in a directory listing.

The UIDs of the service's own results (SEG, SR, key image: series and instances) are derived from the job
(:func:`derived_uid`): a UUID made from the job id and the object's role, written as ``2.25.<integer>``
(PS3.5 B.2). The same job always gives the same UIDs, so sending its results twice, or analysing it a second
time after a lost lease, updates the objects in the PACS instead of adding series.
"""

from __future__ import annotations

import hashlib
import re
import uuid

__all__ = ["MAX_UID_LENGTH", "derived_uid", "is_valid_uid", "uid_digest"]

#: PS3.5 9.1: at most 64 characters.
MAX_UID_LENGTH = 64
#: Components of digits without leading zeros (a lone 0 is fine), separated by single dots.
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+")
#: The namespace of the derived UIDs (a fixed random UUID of this project).
_NAMESPACE = uuid.UUID("7b0f6e1a-3f2c-4d0e-9a57-5c1d2e8b9f43")


def is_valid_uid(value: object) -> bool:
    """Whether ``value`` is a UID as PS3.5 defines it (a str of at most 64 characters)."""
    return isinstance(value, str) and len(value) <= MAX_UID_LENGTH and _UID.fullmatch(value) is not None


def derived_uid(job_id: str, role: str) -> str:
    """The UID of one of a job's results, the same on every call.

    Args:
        job_id: the job's id.
        role: what the UID names, e.g. ``"seg/series"`` or ``"sr/instance"``.
    """
    if not job_id or not role:
        raise ValueError("job_id and role must be non-empty")
    return f"2.25.{uuid.uuid5(_NAMESPACE, f'{job_id}/{role}').int}"


def uid_digest(uid: str) -> str:
    """The SHA-256 hex digest of a UID: its stand-in wherever a name must be made from it.

    Raises:
        ValueError: ``uid`` is not a valid UID.
    """
    if not is_valid_uid(uid):
        raise ValueError("not a valid DICOM UID")
    return hashlib.sha256(uid.encode("ascii")).hexdigest()
