"""The DICOM node's start-up: settings that cannot work stop it with a clear message; the SCP answers C-ECHO.

The gateway is built in-process (fake engine) and its lifespan run; a pynetdicom SCU in the test talks to the
SCP the lifespan started on a free loopback port.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from api import main as entry
from api.app import create_app
from api.settings import Settings, get_settings
from ich_devtools.processes import reserved_port
from tests.support.fake_engine import FakeEngine
from tests.support.pacs_study import pacs_study


def settings_for(tmp_path: Path, **values: Any) -> Settings:
    return Settings(data_dir=tmp_path / "data", model_repository=tmp_path / "no-case-model", **values)


def echo(port: int, calling: str, called: str = "ICH") -> bool:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and int(status.Status) == 0


def test_the_lifespan_starts_the_scp_and_stops_it(tmp_path: Path) -> None:
    port = reserved_port()
    settings = settings_for(tmp_path, dicom_port=port, dicom_host="127.0.0.1", dicom_allowed_aes="MODALITY")
    with TestClient(create_app(settings, engine=FakeEngine())) as client:
        assert client.get("/healthz").status_code == 200
        assert echo(port, "MODALITY")
        assert not echo(port, "STRANGER")
        assert not echo(port, "MODALITY", called="OTHER")
    assert not echo(port, "MODALITY")  # closed with the app


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"dicom_port": 11112}, "ICH_DICOM_ALLOWED_AES"),
        ({"results_destination": "ftp://user:hunter2@pacs/"}, "ICH_RESULTS_DESTINATION"),
        ({"results_destination": "dicom://pacs.example.org:104"}, "dicom://AE_TITLE@host:port"),
    ],
)
def test_settings_that_cannot_work_stop_the_start_up(
    tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    app = create_app(settings_for(tmp_path, **values), engine=FakeEngine())
    with pytest.raises(ValueError, match=message) as caught, TestClient(app):
        pass
    assert "hunter2" not in str(caught.value)


def test_ich_serve_refuses_a_dicom_port_with_several_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(entry.uvicorn, "run", lambda *args, **kwargs: None)
    monkeypatch.setenv("ICH_DICOM_PORT", "11112")
    monkeypatch.setenv("ICH_WORKERS", "2")
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    get_settings.cache_clear()
    try:
        with pytest.raises(SystemExit, match="ICH_WORKERS=1"):
            entry.main([])
    finally:
        get_settings.cache_clear()
        root.handlers[:] = handlers
        root.setLevel(level)


@pytest.mark.parametrize(
    "syntax", [JPEGLSLossless, JPEG2000Lossless, RLELossless, DeflatedExplicitVRLittleEndian]
)
def test_compressed_studies_are_stored_and_analysed(tmp_path: Path, syntax: str) -> None:
    port = reserved_port()
    settings = settings_for(
        tmp_path, dicom_port=port, dicom_host="127.0.0.1", dicom_allowed_aes="*", dicom_study_quiet_s=0.2
    )
    if syntax == DeflatedExplicitVRLittleEndian:  # written uncompressed; pynetdicom deflates on sending
        study = pacs_study(slices=3)
        for ds in study.datasets:
            ds.file_meta.TransferSyntaxUID = syntax
    else:
        study = pacs_study(slices=3, transfer_syntax=syntax)
    with TestClient(create_app(settings, engine=FakeEngine(input_size=32))) as client:
        ae = AE(ae_title="ANYONE")
        ae.add_requested_context(CTImageStorage, [syntax])
        assoc = ae.associate("127.0.0.1", port, ae_title="ICH")
        assert assoc.is_established
        statuses = [int(assoc.send_c_store(ds).Status) for ds in study.datasets]
        assoc.release()
        assert statuses == [0, 0, 0]
        deadline = time.monotonic() + 30
        while not (items := client.get("/v1/studies").json()["items"]) or items[0]["status"] not in (
            "done",
            "failed",
        ):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        job = client.get(f"/v1/studies/{items[0]['id']}").json()
    assert job["status"] == "done", job["error"]
    assert job["origin"] == "dicom" and job["result"]["series"]["slices_used"] == 3
    assert job["result"]["ich_detected"]
