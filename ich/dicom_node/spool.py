"""The DICOM node's spool: studies being received, on disk, one folder per study, until they are queued.

An instance is acknowledged (C-STORE success, STOW-RS ReferencedSOPSequence) only once it is on disk: written
to a dot-file, fsynced, renamed into place, the folder fsynced. A crash then loses nothing acknowledged; on
start the spool's studies are picked up again (``StudyAssembler.recover``).

Names come from SHA-256 digests of the UIDs (``ich.dicom_uids.uid_digest``), never from the UIDs themselves:
``<root>/<study digest>/<instance digest>.dcm``. The same instance sent twice lands on the same file. Beside
the instances, empty marker files keep what the quiet period decides on across a restart:

- ``.sender-<token>``: a sender (association or STOW-RS request) delivered to this study and has not
  finished; one left by a crash means that sender never finished;
- ``.aborted``: a sender that delivered to this study ended without a normal release;
- ``.refused-<code>``: the study broke a limit (its later instances were refused);
- ``.origin-<door>``: the door its first instance came through (``dicom`` or ``dicomweb``).

The folder is created on the first instance, so a gateway that receives no DICOM writes nothing.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from ich.durable_file import fsync_directory, write_durably

__all__ = ["StudySpool"]

_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_INSTANCE = re.compile(r"^([0-9a-f]{64})\.dcm$")
_MARKER = re.compile(r"^\.(sender-[0-9a-f]{32}|aborted|refused-[a-z_]{1,40}|origin-[a-z]{1,16})$")


def _checked(digest: str) -> str:
    if not _DIGEST.match(digest):
        raise ValueError("not a digest")
    return digest


class StudySpool:
    """Study folders under ``root`` (``<ICH_DATA_DIR>/dicom-incoming``)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def folder(self, study: str) -> Path:
        """The folder of one study (by its UID's digest)."""
        return self.root / _checked(study)

    def write_instance(self, study: str, instance: str, data: bytes) -> None:
        """Make one instance durable (dot-file, fsync, rename, fsync of the folder)."""
        folder = self.folder(study)
        new_folder = not folder.exists()
        folder.mkdir(parents=True, exist_ok=True)
        if new_folder:
            fsync_directory(folder.parent)
        write_durably(folder / f"{_checked(instance)}.dcm", data)

    def set_marker(self, study: str, name: str) -> None:
        """Create the marker ``.<name>`` (see the module docstring)."""
        path = self.folder(study) / f".{name}"
        if not _MARKER.match(path.name):
            raise ValueError("not a marker name")
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
            fsync_directory(path.parent)

    def clear_marker(self, study: str, name: str) -> None:
        """Remove the marker ``.<name>`` if it is there."""
        (self.folder(study) / f".{name}").unlink(missing_ok=True)

    def studies(self) -> list[str]:
        """The digests of the studies in the spool."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _DIGEST.match(p.name))

    def instances(self, study: str) -> dict[str, int]:
        """A study's instances: digest -> size in bytes."""
        folder = self.folder(study)
        if not folder.is_dir():
            return {}
        found = {}
        for path in folder.iterdir():
            match = _INSTANCE.match(path.name)
            if match:
                found[match.group(1)] = path.stat().st_size
        return found

    def markers(self, study: str) -> list[str]:
        """A study's markers, without their leading dot."""
        folder = self.folder(study)
        if not folder.is_dir():
            return []
        return sorted(p.name[1:] for p in folder.iterdir() if _MARKER.match(p.name))

    def read(self, study: str, instance: str) -> bytes:
        """One instance's bytes."""
        return (self.folder(study) / f"{_checked(instance)}.dcm").read_bytes()

    def remove(self, study: str) -> None:
        """Remove the study's folder (once its job is committed)."""
        shutil.rmtree(self.folder(study), ignore_errors=True)
