"""The SHA-256 of every ONNX file of a model repository, recorded beside them and checked before loading.

``root/SHA256SUMS`` is in ``sha256sum`` format (``<hex>  <model>/<version>/model.onnx``, so
``sha256sum -c SHA256SUMS`` checks it too). Configs and ``VERSION`` say which model a folder should hold;
only the digest says that its weights are the ones exported: two base models swapped between folders, a
file truncated by a copy or a byte changed on disk all load and infer without an error, and a changed weight
can move a probability by less than any test's tolerance. The exporter writes the file; loaders refuse a
repository whose files do not match it. A repository without the file (the tests' tiny ones) is not checked.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from ich.repository import MODEL_FILENAME, RepositoryError

__all__ = ["MANIFEST_FILENAME", "file_digest", "read_manifest", "verify_manifest", "write_manifest"]

MANIFEST_FILENAME = "SHA256SUMS"
_LINE = re.compile(r"^([0-9a-f]{64}) [ *](\S+)$")


def file_digest(path: Path) -> str:
    """The SHA-256 hex digest of a file, read in blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _onnx_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.glob(f"*/*/{MODEL_FILENAME}") if p.is_file())


def write_manifest(root: Path) -> Path:
    """Record the digest of every ``<model>/<version>/model.onnx`` under ``root``; returns the file."""
    root = Path(root)
    lines = [f"{file_digest(root / rel)}  {rel}\n" for rel in _onnx_files(root)]
    path = root / MANIFEST_FILENAME
    path.write_text("".join(lines), encoding="utf-8")
    return path


def read_manifest(root: Path) -> dict[str, str] | None:
    """Relative path -> recorded digest; None when ``root`` has no manifest.

    Raises:
        RepositoryError: a line that is not ``<64 hex>  <path>``.
    """
    path = Path(root) / MANIFEST_FILENAME
    if not path.is_file():
        return None
    recorded: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        match = _LINE.match(line.strip())
        if match is None:
            raise RepositoryError(f"{path} line {number} is not '<sha256>  <file>'")
        recorded[match.group(2)] = match.group(1)
    return recorded


def verify_manifest(root: Path) -> None:
    """Check every ONNX file of ``root`` against its manifest (nothing to check without one).

    Raises:
        RepositoryError: listing each file whose digest differs, that the manifest names but is missing,
            or that is present but not recorded.
    """
    root = Path(root)
    recorded = read_manifest(root)
    if recorded is None:
        return
    present = set(_onnx_files(root))
    problems = [f"{rel} is missing" for rel in sorted(set(recorded) - present)]
    problems += [f"{rel} is not in {MANIFEST_FILENAME}" for rel in sorted(present - set(recorded))]
    problems += [
        f"{rel} does not match its recorded SHA-256"
        for rel in sorted(present & set(recorded))
        if file_digest(root / rel) != recorded[rel]
    ]
    if problems:
        raise RepositoryError(
            f"model repository {root}: weights differ from {MANIFEST_FILENAME} (swapped, damaged or "
            "replaced without a new export): " + "; ".join(problems)
        )
