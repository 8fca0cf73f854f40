"""A real, throw-away PACS for tests: Debian's Orthanc with its DICOMweb plugin, unprivileged, on loopback.

The configuration is generated (free ports, a fresh storage folder, HTTP and DICOM bound to what the test
gives; no authentication, remote access off, which Orthanc takes to mean loopback only) and names the
test's DICOM node as modality ``ich`` and its STOW-RS endpoint as DICOMweb server ``ich``. Orthanc runs as
the unprivileged ``nobody`` when the tests run as root (``ICH_TEST_ORTHANC_USER`` to choose another), which
then owns the folder, and is stopped by its process id. Where the binaries are missing,
:func:`find_orthanc` says so and the tests skip with that reason (``make test`` installs ``orthanc`` and
``orthanc-dicomweb`` through ``make pacs-env`` / ``.ci/run``).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from ich_devtools.processes import http_answers, reserved_port, start_logged, stop_process, wait_answering

#: Debian's plugin folder for the DICOMweb plugin.
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
START_TIMEOUT_S = 60.0
#: Orthanc's own AE title in the tests.
ORTHANC_AET = "ORTHANC"


def find_orthanc() -> tuple[Path, Path] | None:
    """The Orthanc binary and its DICOMweb plugin, or None where either is missing."""
    binary = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").is_file() else None)
    if binary is None or not DICOMWEB_PLUGIN.is_file():
        return None
    return Path(binary), DICOMWEB_PLUGIN


@dataclass
class Orthanc:
    """A running Orthanc: its ports and a REST client."""

    process: subprocess.Popen[bytes]
    http_port: int
    dicom_port: int
    root: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def rest(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60.0)

    def upload(self, files: list[bytes]) -> str:
        """Store instances through the REST API; the Orthanc id of their study."""
        study = ""
        with self.rest() as client:
            for data in files:
                response = client.post("/instances", content=data)
                response.raise_for_status()
                study = response.json()["ParentStudy"]
        return study

    def study_series(self, study_id: str) -> list[dict[str, Any]]:
        """The study's series (Orthanc's JSON, MainDicomTags and Instances included)."""
        with self.rest() as client:
            response = client.get(f"/studies/{study_id}/series")
            response.raise_for_status()
            series: list[dict[str, Any]] = response.json()
            return series

    def instance_file(self, instance_id: str) -> bytes:
        with self.rest() as client:
            response = client.get(f"/instances/{instance_id}/file")
            response.raise_for_status()
            return response.content


def _run_as() -> tuple[int | None, int | None]:
    if os.geteuid() != 0:
        return None, None
    account = pwd.getpwnam(os.environ.get("ICH_TEST_ORTHANC_USER", "nobody"))
    return account.pw_uid, account.pw_gid


def orthanc_config(
    root: Path, http_port: int, dicom_port: int, *, ich_dicom_port: int, ich_dicomweb_url: str, plugin: Path
) -> dict[str, Any]:
    """Orthanc's configuration for one test PACS."""
    return {
        "Name": "ich-test-pacs",
        "StorageDirectory": str(root / "storage"),
        "IndexDirectory": str(root / "storage"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": ORTHANC_AET,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomAlwaysAllowStore": True,
        "DicomCheckCalledAet": False,
        "DicomModalities": {"ich": {"AET": "ICH", "Host": "127.0.0.1", "Port": ich_dicom_port}},
        "DicomAssociationCloseDelay": 0,
        "DicomScuTimeout": 30,
        "Plugins": [str(plugin)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Servers": {"ich": [ich_dicomweb_url]}},
        "StorageCompression": False,
        "SaveJobs": False,
        "ConcurrentJobs": 1,
        "HttpThreadsCount": 8,
        "StableAge": 60,
    }


@contextlib.contextmanager
def running_orthanc(*, ich_dicom_port: int, ich_dicomweb_url: str) -> Iterator[Orthanc]:
    """Start Orthanc in a new temporary folder; stop it (SIGTERM, by pid) and remove the folder after.

    Raises:
        RuntimeError: the binaries are missing, or Orthanc did not answer in time (with its log).
    """
    found = find_orthanc()
    if found is None:
        raise RuntimeError("Orthanc or its DICOMweb plugin is not installed")
    binary, plugin = found
    uid, gid = _run_as()
    root = Path(tempfile.mkdtemp(prefix="ich-orthanc-"))
    (root / "storage").mkdir()
    http_port, dicom_port = reserved_port(), reserved_port()
    config = orthanc_config(
        root,
        http_port,
        dicom_port,
        ich_dicom_port=ich_dicom_port,
        ich_dicomweb_url=ich_dicomweb_url,
        plugin=plugin,
    )
    (root / "orthanc.json").write_text(json.dumps(config, indent=2))
    if uid is not None:
        for path in (root, root / "storage", root / "orthanc.json"):
            os.chown(path, uid, gid if gid is not None else -1)
    log = root / "orthanc.log"
    process = start_logged([str(binary), str(root / "orthanc.json")], log, cwd=root, user=uid, group=gid)
    server = Orthanc(process, http_port, dicom_port, root)
    try:
        wait_answering(
            process,
            lambda: http_answers(f"{server.url}/system"),
            name="Orthanc",
            log=log,
            timeout_s=START_TIMEOUT_S,
        )
        yield server
    finally:
        stop_process(process)
        shutil.rmtree(root, ignore_errors=True)
