"""Keeping DICOM identifiers out of the gateway's log, whatever library writes the line.

The gateway's own code logs counts, reasons and request ids only. Libraries are not so careful: highdicom
logs the source images' SOP Instance UIDs at INFO while it builds a SEG, and pydicom's warnings can quote a
header value. Two measures, both on the one handler ``ich-serve`` logs through:

- the DICOM libraries' loggers (``DICOM_LIBRARY_LOGGERS``) pass only warnings and errors, Python warnings
  are routed into logging (``logging.captureWarnings``) so that they meet the same filter, and pydicom's
  validation of values on reading is off: in its default mode it warns with the offending value quoted
  ("Invalid value for VR DA: '<a birth date>'"), and intake checks what it uses itself;
- ``RedactingFilter`` replaces every UID-shaped token (digits and dots, at least five components or sixteen
  characters, the shape of DICOM UIDs such as ``1.2.840...`` or ``2.25.<number>``) in every record's text,
  exception text included, by ``<uid>``. Short dotted numbers (versions, ``127.0.0.1``) are left alone.
"""

from __future__ import annotations

import logging
import re
from typing import Final

from pydicom import config as pydicom_config

#: Loggers of the DICOM libraries the gateway uses; below WARNING they narrate datasets, UIDs included.
DICOM_LIBRARY_LOGGERS: Final[tuple[str, ...]] = ("highdicom", "pydicom", "pynetdicom", "dicomweb_client")
REDACTED: Final = "<uid>"

_DOTTED = re.compile(r"(?<![\w.])[0-9]+(?:\.[0-9]+){2,}(?![\w.])")
_MIN_COMPONENTS = 5
_MIN_LENGTH = 16  # longer than any dotted IPv4 address


def _is_uid(token: str) -> bool:
    return token.count(".") + 1 >= _MIN_COMPONENTS or len(token) >= _MIN_LENGTH


def redact(text: str) -> str:
    """``text`` with every UID-shaped token replaced by ``<uid>``."""
    return _DOTTED.sub(lambda m: REDACTED if _is_uid(m.group(0)) else m.group(0), text)


class RedactingFilter(logging.Filter):
    """Rewrites each record's message (arguments merged in) and exception text without UIDs."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def quiet_dicom_libraries() -> None:
    """DICOM libraries' loggers pass warnings and errors only; Python warnings go through logging."""
    for name in DICOM_LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.captureWarnings(True)
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
