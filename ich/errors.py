"""Why a study could not be taken in: one exception tree that the gateway maps to HTTP.

Each error carries a machine-readable ``code`` (stable, for clients to branch on), a human ``detail`` (safe
to show: it never holds patient data) and the ``http_status`` the gateway answers with, so the mapping lives
next to the cause instead of in a table inside the web layer.
"""

from __future__ import annotations

from typing import ClassVar


class IntakeError(Exception):
    """Base of every intake failure; the gateway answers ``http_status`` with ``{"code", "detail"}``.

    Attributes:
        code: stable machine string, e.g. ``"invalid_archive"``.
        detail: what went wrong, for a person; never patient data.
        http_status: the HTTP status the gateway answers with.
    """

    code: ClassVar[str] = "intake_error"
    http_status: ClassVar[int] = 400

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidArchiveError(IntakeError):
    """The body is not a readable zip archive (garbage bytes, truncated, corrupt central directory)."""

    code: ClassVar[str] = "invalid_archive"
    http_status: ClassVar[int] = 400


class UnsafeArchiveError(InvalidArchiveError):
    """The zip holds a member no honest study export holds: a path escaping the archive or a symbolic link.

    Nothing is ever extracted to disk, so such a member could do no harm here; the archive is refused anyway
    because it was crafted (or broken) and its other members cannot be trusted either.
    """

    code: ClassVar[str] = "unsafe_archive"
    http_status: ClassVar[int] = 400


class StudyTooLargeError(IntakeError):
    """The archive exceeds a cap: compressed size, total uncompressed size or number of members.

    Attributes:
        limit_name: which cap (``"compressed_bytes"``, ``"uncompressed_bytes"`` or ``"members"``).
        limit: the cap's value.
    """

    code: ClassVar[str] = "study_too_large"
    http_status: ClassVar[int] = 413

    def __init__(self, detail: str, *, limit_name: str, limit: int) -> None:
        super().__init__(detail)
        self.limit_name = limit_name
        self.limit = limit


class NoUsableSeriesError(IntakeError):
    """The archive was readable but holds no CT series the models can analyse.

    Attributes:
        reasons: one dict per series or file that was considered, e.g.
            ``{"series_instance_uid": "1.2...", "reason": "modality MR, not CT"}`` or
            ``{"file": "notes.txt", "reason": "not a DICOM file"}``; the client can show them as they are.
    """

    code: ClassVar[str] = "no_usable_series"
    http_status: ClassVar[int] = 422

    def __init__(self, detail: str, reasons: list[dict[str, str]] | None = None) -> None:
        super().__init__(detail)
        self.reasons: list[dict[str, str]] = list(reasons or [])
