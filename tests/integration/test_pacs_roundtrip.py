"""Next to a real PACS: Debian's Orthanc sends studies to the service and gets the results back in them.

Orthanc (with its DICOMweb plugin) runs on loopback with a generated configuration
(``tests/support/orthanc.py``); the gateway runs under a real uvicorn in a thread with the fake engine, so its
lifespan starts the Storage SCP and the results delivery as ``ich-serve`` does, and the synthetic study's
answer is known (positive, one lesion). The tests check what a radiologist's viewer would see in Orthanc:

- C-STORE in (Orthanc's ``/modalities/ich/store``), C-STORE back: the study holds the CT, the SEG (it
  references the CT series and its frame of reference), the SR (its volume is the JSON result's) and the key
  image (Orthanc renders it); sending the study again, results and all, adds nothing;
- STOW-RS in (Orthanc's ``/dicom-web/servers/ich/stow``), results back by C-STORE;
- STOW-RS in from a plain HTTP client, results back by STOW-RS into Orthanc's DICOMweb.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from PIL import Image
from pydicom.sr.codedict import codes

from api.app import create_app
from api.settings import Settings
from ich_devtools.processes import reserved_port
from tests.support.dicom_results import sr_codes, sr_numbers
from tests.support.fake_engine import FakeEngine
from tests.support.orthanc import ORTHANC_AET, Orthanc, find_orthanc, running_orthanc
from tests.support.pacs_study import PacsStudy, pacs_study, stow_body
from tests.support.threaded_gateway import serve_in_thread

pytestmark = pytest.mark.slow

QUIET_S = 1.0


def gateway_settings(data_dir: Path, **values: Any) -> Settings:
    return Settings(
        data_dir=data_dir,
        model_repository=data_dir.parent / "paper-rule-repository",  # the fake maps' paper rule
        dicom_host="127.0.0.1",
        dicom_ae_title="ICH",
        dicom_allowed_aes=f"{ORTHANC_AET},STORESCU",
        dicom_study_quiet_s=QUIET_S,
        results_retry_backoff_s=0.5,
        job_lease_s=10.0,
        **values,
    )


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Orthanc, str]]:
    """Orthanc and, calling it back by C-STORE, the gateway it sends to (base URL)."""
    if find_orthanc() is None:
        pytest.skip("Orthanc or orthanc-dicomweb is not installed (Debian: make pacs-env; .ci/run does it)")
    scp_port, http_port = reserved_port(), reserved_port()
    with running_orthanc(
        ich_dicom_port=scp_port, ich_dicomweb_url=f"http://127.0.0.1:{http_port}/dicomweb/"
    ) as orthanc:
        settings = gateway_settings(
            tmp_path_factory.mktemp("gateway") / "data",
            dicom_port=scp_port,
            results_destination=f"dicom://{ORTHANC_AET}@127.0.0.1:{orthanc.dicom_port}",
        )
        app = create_app(settings, engine=FakeEngine(input_size=32))
        with serve_in_thread(app, http_port) as base:
            yield orthanc, base


def job_of(base: str, study: PacsStudy, *, delivered: bool, timeout_s: float = 60.0) -> dict[str, Any]:
    """The one job of ``study`` once finished (and its delivery over, when ``delivered``)."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=base, timeout=30) as client:
        while True:
            jobs = [
                client.get(f"/v1/studies/{j['id']}").json() for j in client.get("/v1/studies").json()["items"]
            ]
            mine = [
                j
                for j in jobs
                if j["result"] and j["result"]["series"]["series_instance_uid"] == study.series_uid
            ]
            if mine:
                (job,) = mine
                if not delivered or (job["delivery"] and job["delivery"]["status"] != "pending"):
                    return job
            assert time.monotonic() < deadline, (
                f"no finished job for the study: {[j['status'] for j in jobs]}"
            )
            time.sleep(0.2)


def series_by_modality(orthanc: Orthanc, study_id: str) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for series in orthanc.study_series(study_id):
        found.setdefault(series["MainDicomTags"]["Modality"], []).append(series)
    return found


def orthanc_study_id(orthanc: Orthanc, study_uid: str) -> str:
    with orthanc.rest() as client:
        response = client.post("/tools/lookup", content=study_uid)
        response.raise_for_status()
        (hit,) = [h for h in response.json() if h["Type"] == "Study"]
        return str(hit["ID"])


def check_results_in_orthanc(orthanc: Orthanc, study: PacsStudy, job: dict[str, Any]) -> dict[str, Any]:
    """The study in Orthanc holds the CT and one SEG, SR and key image; each checked; their series."""
    found = series_by_modality(orthanc, orthanc_study_id(orthanc, study.study_uid))
    assert sorted(found) == ["CT", "OT", "SEG", "SR"], sorted(found)
    assert all(len(series) == 1 for series in found.values()), {k: len(v) for k, v in found.items()}

    (seg_id,) = found["SEG"][0]["Instances"]
    seg = pydicom.dcmread(io.BytesIO(orthanc.instance_file(seg_id)))
    assert seg.StudyInstanceUID == study.study_uid
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == study.series_uid
    assert seg.FrameOfReferenceUID == study.frame_of_reference_uid

    (sr_id,) = found["SR"][0]["Instances"]
    sr = pydicom.dcmread(io.BytesIO(orthanc.instance_file(sr_id)))
    assert sr_numbers(sr)[codes.SCT.Volume.meaning] == job["result"]["hemorrhage_volume_ml"] > 0
    assert sr_codes(sr)["Hemorrhage"] == "Present"

    (key_id,) = found["OT"][0]["Instances"]
    with orthanc.rest() as client:
        preview = client.get(f"/instances/{key_id}/preview")
    assert preview.status_code == 200 and preview.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(preview.content)).size == (64, 64)  # Orthanc decoded the key image
    return found


def orthanc_sends(orthanc: Orthanc, route: str, study_id: str) -> None:
    """Ask Orthanc to send a stored study (``/modalities/ich/store``: C-STORE; ``.../stow``: STOW-RS)."""
    with orthanc.rest() as client:
        sent = client.post(route, json={"Resources": [study_id], "Synchronous": True})
    assert sent.status_code == 200, sent.text


def test_orthanc_sends_a_study_by_c_store_and_finds_the_results_in_it(pacs: tuple[Orthanc, str]) -> None:
    orthanc, base = pacs
    study = pacs_study(slices=6)
    study_id = orthanc.upload(study.files)
    orthanc_sends(orthanc, "/modalities/ich/store", study_id)

    job = job_of(base, study, delivered=True)
    assert job["status"] == "done" and job["origin"] == "dicom"
    assert job["delivery"]["status"] == "delivered" and job["delivery"]["error"] is None
    first = check_results_in_orthanc(orthanc, study, job)

    # Sent again, now with the service's own results in it: the same job, no new series.
    orthanc_sends(orthanc, "/modalities/ich/store", study_id)
    time.sleep(QUIET_S * 3)
    assert job_of(base, study, delivered=True)["id"] == job["id"]
    second = check_results_in_orthanc(orthanc, study, job)
    assert {k: [s["ID"] for s in v] for k, v in second.items()} == {
        k: [s["ID"] for s in v] for k, v in first.items()
    }


def test_orthanc_sends_a_study_by_stow_rs(pacs: tuple[Orthanc, str]) -> None:
    orthanc, base = pacs
    study = pacs_study(slices=5)
    orthanc_sends(orthanc, "/dicom-web/servers/ich/stow", orthanc.upload(study.files))
    job = job_of(base, study, delivered=True)
    assert job["status"] == "done" and job["origin"] == "dicomweb"
    assert job["delivery"]["status"] == "delivered"
    check_results_in_orthanc(orthanc, study, job)


def test_results_go_back_by_stow_rs_to_a_dicomweb_destination(
    pacs: tuple[Orthanc, str], tmp_path: Path
) -> None:
    orthanc, _ = pacs
    settings = gateway_settings(tmp_path / "data", results_destination=orthanc.dicomweb_url)
    app = create_app(settings, engine=FakeEngine(input_size=32))
    study = pacs_study(slices=4)
    with serve_in_thread(app, reserved_port()) as base:
        body, content_type = stow_body(study.files)
        stored = httpx.post(f"{base}/dicomweb/studies", content=body, headers={"content-type": content_type})
        assert stored.status_code == 200, stored.text
        job = job_of(base, study, delivered=True)
    assert job["origin"] == "dicomweb" and job["delivery"]["status"] == "delivered"
    found = series_by_modality(orthanc, orthanc_study_id(orthanc, study.study_uid))
    assert sorted(found) == ["OT", "SEG", "SR"]  # Orthanc never had the CT: only the results came
