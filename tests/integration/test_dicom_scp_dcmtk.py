"""The Storage SCP inside a real ``ich-serve`` process, driven by dcmtk's ``echoscu`` and ``storescu``.

dcmtk is a second sender no one here wrote. ``ich-serve`` runs with ``ICH_DICOM_PORT`` (and the tiny exported
repository as its embedded engine) on loopback:

- C-ECHO from an allowed calling AE succeeds; from another AE title, or to another called AE title, the
  association is rejected;
- a study sent by ``storescu`` becomes one ``dicom`` job, whose SR states the volume the JSON does;
- a study whose association is aborted half-way becomes a job that failed with ``study_incomplete`` and has
  no results; the same study sent in full afterwards gives a complete job;
- the gateway's log holds neither the patient's name and id nor the study's UIDs.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.sr.codedict import codes

from ich_devtools.processes import reserved_port
from tests.integration.conftest import serve
from tests.support.dicom_results import sr_numbers
from tests.support.dicom_study import PATIENT_ID, PATIENT_NAME
from tests.support.pacs_study import PacsStudy, pacs_study

pytestmark = pytest.mark.slow

QUIET_S = "1"


@dataclass(frozen=True)
class Node:
    base: str
    dicom_port: int
    log: Path


@pytest.fixture(scope="module")
def node(tiny_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    if shutil.which("storescu") is None or shutil.which("echoscu") is None:
        pytest.skip("dcmtk is not installed (Debian: make pacs-env; .ci/run does it)")
    folder = tmp_path_factory.mktemp("ich-serve-dicom")
    port = reserved_port()
    settings = {
        "ICH_MODEL_REPOSITORY": str(tiny_repository),
        "ICH_DATA_DIR": str(folder / "data"),
        "ICH_DICOM_PORT": str(port),
        "ICH_DICOM_HOST": "127.0.0.1",
        "ICH_DICOM_AE_TITLE": "ICHNODE",
        "ICH_DICOM_ALLOWED_AES": "STORESCU, ECHOSCU",
        "ICH_DICOM_STUDY_QUIET_S": QUIET_S,
        "ICH_INTRA_OP_THREADS": "1",
    }
    log = folder / "gateway.log"
    with serve(log, **settings) as base:
        yield Node(base, port, log)


def dcmtk(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=120)


def write_files(study: PacsStudy, folder: Path) -> list[str]:
    folder.mkdir(parents=True)
    paths = []
    for i, data in enumerate(study.files):
        path = folder / f"IM{i:04d}.dcm"
        path.write_bytes(data)
        paths.append(str(path))
    return paths


def new_jobs(base: str, before: int, count: int, timeout_s: float = 120.0) -> list[dict[str, Any]]:
    """The ``count`` jobs queued after there were ``before``, once all are finished, newest first."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=base, timeout=30) as client:
        while True:
            items = client.get("/v1/studies").json()["items"]
            fresh = items[: len(items) - before]
            if len(fresh) >= count and all(i["status"] in ("done", "failed") for i in fresh):
                return [client.get(f"/v1/studies/{i['id']}").json() for i in fresh]
            assert time.monotonic() < deadline, items
            time.sleep(0.2)


def job_count(base: str) -> int:
    return len(httpx.get(f"{base}/v1/studies", timeout=30).json()["items"])


def test_c_echo_from_an_allowed_ae_and_rejection_of_others(node: Node) -> None:
    port = str(node.dicom_port)
    allowed = dcmtk("echoscu", "-aet", "ECHOSCU", "-aec", "ICHNODE", "127.0.0.1", port)
    assert allowed.returncode == 0, allowed.stderr
    intruder = dcmtk("echoscu", "-aet", "INTRUDER", "-aec", "ICHNODE", "127.0.0.1", port)
    assert intruder.returncode != 0
    assert "Association Rejected" in intruder.stderr + intruder.stdout
    wrong_called = dcmtk("echoscu", "-aet", "ECHOSCU", "-aec", "SOMEONE", "127.0.0.1", port)
    assert wrong_called.returncode != 0
    before = job_count(node.base)
    study = pacs_study(slices=3)
    refused = dcmtk(
        "storescu",
        "-aet",
        "INTRUDER",
        "-aec",
        "ICHNODE",
        "127.0.0.1",
        port,
        *write_files(study, node.log.parent / "intruder"),
    )
    assert refused.returncode != 0
    time.sleep(float(QUIET_S) * 2)
    assert job_count(node.base) == before


def test_storescu_sends_a_study_that_becomes_one_job(node: Node, tmp_path: Path) -> None:
    study = pacs_study(slices=5)
    before = job_count(node.base)
    sent = dcmtk(
        "storescu",
        "-aet",
        "STORESCU",
        "-aec",
        "ICHNODE",
        "127.0.0.1",
        str(node.dicom_port),
        *write_files(study, tmp_path / "s"),
    )
    assert sent.returncode == 0, sent.stderr
    (job,) = new_jobs(node.base, before, 1)
    assert job["status"] == "done" and job["origin"] == "dicom", job["error"]
    assert job["result"]["series"]["series_instance_uid"] == study.series_uid
    assert job["result"]["series"]["slices_used"] == 5
    sr = httpx.get(f"{node.base}/v1/studies/{job['id']}/sr", timeout=30)
    assert sr.status_code == 200 and sr.headers["content-type"] == "application/dicom"
    report = pydicom.dcmread(io.BytesIO(sr.content))
    assert report.StudyInstanceUID == study.study_uid
    assert sr_numbers(report)[codes.SCT.Volume.meaning] == job["result"]["hemorrhage_volume_ml"]
    log = node.log.read_text()
    for secret in (
        PATIENT_NAME,
        PATIENT_ID,
        study.study_uid,
        study.series_uid,
        str(study.datasets[0].SOPInstanceUID),
    ):
        assert secret not in log


def test_an_association_aborted_half_way_gives_no_results_from_the_part(node: Node, tmp_path: Path) -> None:
    study = pacs_study(slices=6)
    files = write_files(study, tmp_path / "s")
    port = str(node.dicom_port)
    before = job_count(node.base)
    aborted = dcmtk(
        "storescu", "--abort", "-aet", "STORESCU", "-aec", "ICHNODE", "127.0.0.1", port, *files[:3]
    )
    assert aborted.returncode == 0, aborted.stderr
    (partial,) = new_jobs(node.base, before, 1)
    assert partial["status"] == "failed" and partial["error"]["code"] == "study_incomplete"
    assert partial["result"] is None and partial["attempts"] == 0
    assert httpx.get(f"{node.base}/v1/studies/{partial['id']}/sr", timeout=30).status_code == 409

    sent = dcmtk("storescu", "-aet", "STORESCU", "-aec", "ICHNODE", "127.0.0.1", port, *files)
    assert sent.returncode == 0, sent.stderr
    complete, _ = new_jobs(node.base, before, 2)
    assert complete["id"] != partial["id"]
    assert complete["status"] == "done" and complete["result"]["series"]["slices_used"] == 6
