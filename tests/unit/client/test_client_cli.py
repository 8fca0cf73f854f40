"""The ``ich`` command line against a mock service: output forms, exit codes, --out, --threshold."""

from __future__ import annotations

import base64
import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from ich_client import ICHClient, cli

from tests.unit.client.test_client import case_payload, closed_port_url

Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture
def service(monkeypatch: pytest.MonkeyPatch) -> Callable[[Handler], list[httpx.Request]]:
    """Route the CLI's client to a mock handler; returns the list of requests it receives."""

    def install(handler: Handler) -> list[httpx.Request]:
        seen: list[httpx.Request] = []

        def record(request: httpx.Request) -> httpx.Response:
            request.read()
            seen.append(request)
            return handler(request)

        def factory(*args: Any, **kwargs: Any) -> ICHClient:
            client = ICHClient(*args, transport=httpx.MockTransport(record), **kwargs)
            client._sleep = lambda _s: None
            return client

        monkeypatch.setattr(cli, "ICHClient", factory)
        return seen

    return install


def write_zip(path: Path, marker: str) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("IM1.dcm", marker.encode())
    return path


def by_marker(probabilities: dict[str, float]) -> Handler:
    """A service whose answer depends on the study sent (its one member's content), or 422 if unknown."""

    def handler(request: httpx.Request) -> httpx.Response:
        with zipfile.ZipFile(io.BytesIO(request.content)) as archive:
            marker = archive.read(archive.namelist()[0]).decode()
        if marker not in probabilities:
            body = {"code": "no_usable_series", "detail": "no CT series in the upload", "request_id": "r-9"}
            return httpx.Response(422, json=body)
        return httpx.Response(200, json=case_payload(probabilities[marker], case_id=f"case-{marker}"))

    return handler


def test_summary_is_readable(service: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    service(by_marker({"a": 0.83}))
    study = write_zip(tmp_path / "head.zip", "a")
    assert cli.main(["analyze", str(study), "--url", "http://ich.test", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "ICH DETECTED" in out and "probability 0.830" in out and "threshold 0.500" in out
    assert "indeterminate: no" in out and "12.5 mL" in out
    assert "top slices: #3 (0.830), #2 (0.623), #1 (0.415)" in out
    assert "4 slices, 5 mm, 1 file skipped" in out


def test_json_for_one_study_is_an_object(service: Any, tmp_path: Path, capsys: Any) -> None:
    requests = service(by_marker({"a": 0.3}))
    study = write_zip(tmp_path / "one.zip", "a")
    code = cli.main(["analyze", str(study), "--json", "--url", "http://ich.test", "--api-key", "k1"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert isinstance(printed, dict)
    assert printed["ich_probability"] == 0.3 and printed["case_id"] == "case-a"
    assert printed["slices"][0]["model_probabilities"]["all"] == pytest.approx(0.0675)
    assert requests[0].headers["authorization"] == "Bearer k1"


def test_json_for_several_is_a_list_aligned_with_paths_and_failures_exit_1(
    service: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    service(by_marker({"a": 0.9, "c": 0.1}))
    paths = [write_zip(tmp_path / f"{m}.zip", m) for m in "abc"]
    code = cli.main(["analyze", *map(str, paths), "--json", "--url", "http://ich.test"])
    captured = capsys.readouterr()
    assert code == 1
    printed = json.loads(captured.out)
    assert [p and p["case_id"] for p in printed] == ["case-a", None, "case-c"]
    assert "b.zip: 422 no_usable_series: no CT series in the upload (request_id r-9)" in captured.err


def test_out_writes_one_file_per_study(service: Any, tmp_path: Path, capsys: Any) -> None:
    service(by_marker({"a": 0.9, "b": 0.2}))
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    first = write_zip(tmp_path / "x" / "study.zip", "a")
    second = write_zip(tmp_path / "y" / "study.zip", "b")
    out = tmp_path / "results"
    assert cli.main(["analyze", str(first), str(second), "--out", str(out), "--no-progress"]) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == ["study-2.json", "study.json"]
    assert json.loads((out / "study.json").read_text())["case_id"] == "case-a"
    assert json.loads((out / "study-2.json").read_text())["case_id"] == "case-b"


def test_threshold_re_decides_on_the_client(service: Any, tmp_path: Path, capsys: Any) -> None:
    service(by_marker({"a": 0.35}))
    study = write_zip(tmp_path / "s.zip", "a")
    assert cli.main(["analyze", str(study), "--json", "--threshold", "0.3"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["ich_detected"] is True and printed["threshold"] == 0.3
    assert cli.main(["analyze", str(study), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ich_detected"] is False


@pytest.mark.parametrize("bad", ["1.5", "-0.1", "x"])
def test_threshold_out_of_range_is_a_usage_error(bad: str, tmp_path: Path, capsys: Any) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["analyze", str(tmp_path), "--threshold", bad])
    assert info.value.code == 2
    assert "--threshold" in capsys.readouterr().err


def test_folder_and_missing_path(service: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    requests = service(by_marker({"a": 0.6}))
    folder = tmp_path / "dicom"
    folder.mkdir()
    (folder / "IM1.dcm").write_text("a")
    code = cli.main(["analyze", str(folder), str(tmp_path / "missing"), "--json"])
    captured = capsys.readouterr()
    assert code == 1 and len(requests) == 1
    assert [p and p["ich_probability"] for p in json.loads(captured.out)] == [0.6, None]
    assert "no such file or folder" in captured.err


def test_connection_failure_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    study = write_zip(tmp_path / "s.zip", "a")
    url = closed_port_url()
    code = cli.main(["analyze", str(study), "--url", url, "--max-retries", "0"])
    captured = capsys.readouterr()
    assert code == 1 and captured.out == ""
    assert "s.zip" in captured.err and url in captured.err


def test_health_exit_code_follows_readiness(service: Any, capsys: pytest.CaptureFixture[str]) -> None:
    ready = {"value": False}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/healthz":
            return httpx.Response(200, json={"status": "ok"})
        if ready["value"]:
            return httpx.Response(200, json={"status": "ready", "engine": "embedded", "model_version": "v"})
        body = {"code": "engine_unavailable", "detail": "models loading", "request_id": "r"}
        return httpx.Response(503, json=body)

    service(handler)
    assert cli.main(["health"]) == 1
    assert "NOT ready" in capsys.readouterr().out
    ready["value"] = True
    assert cli.main(["health", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["readyz"]["ok"] is True and printed["readyz"]["engine"] == "embedded"


def test_models_lists_the_ensemble(service: Any, capsys: pytest.CaptureFixture[str]) -> None:
    body = {
        "engine": "embedded",
        "model_version": "2026.11.29-x",
        "models": [
            {"name": "ich_unet_all", "ready": False},
            {"name": "ich_ensemble", "platform": "ensemble"},
        ],
    }
    service(lambda request: httpx.Response(200, json=body))
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    assert "2026.11.29-x on embedded" in out
    assert "  ich_unet_all  NOT ready\n" in out and "  ich_ensemble  ensemble\n" in out
    assert cli.main(["models", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["models"][1]["name"] == "ich_ensemble"


def test_unauthorized_is_reported(service: Any, capsys: pytest.CaptureFixture[str]) -> None:
    body = {"code": "unauthorized", "detail": "an API key is required", "request_id": "r-1"}
    service(lambda request: httpx.Response(401, json=body))
    assert cli.main(["models"]) == 1
    assert "401 unauthorized: an API key is required" in capsys.readouterr().err


def test_one_study_sends_all_paths_in_one_zip(service: Any, tmp_path: Path, capsys: Any) -> None:
    seen: list[list[str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        with zipfile.ZipFile(io.BytesIO(request.content)) as archive:
            seen.append(sorted(archive.namelist()))
        return httpx.Response(200, json=case_payload(0.2))

    service(handler)
    files = []
    for name in ("IM1.dcm", "IM2.dcm", "IM3.dcm"):
        (tmp_path / name).write_bytes(b"\0" * 128 + b"DICM" + name.encode())
        files.append(str(tmp_path / name))
    assert cli.main(["analyze", "--one-study", *files, "--json"]) == 0
    assert seen == [["IM1.dcm", "IM2.dcm", "IM3.dcm"]]
    assert isinstance(json.loads(capsys.readouterr().out), dict)
    assert cli.main(["analyze", *files, "--json"]) == 0  # without the flag: three studies
    assert len(seen) == 4 and len(json.loads(capsys.readouterr().out)) == 3


def test_overlays_are_asked_for_and_written(service: Any, tmp_path: Path, capsys: Any) -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"fake"
    overlay = {"index": 3, "sop_instance_uid": "1.2.3.4.3", "data_base64": base64.b64encode(png).decode()}

    seg = {"series_instance_uid": "9.8", "sop_instance_uid": "9.8.1", "frames": 2, "data_base64": "RElDTQ=="}

    def handler(request: httpx.Request) -> httpx.Response:
        wanted = request.url.params.get("include", "").split(",")
        return httpx.Response(
            200,
            json=case_payload(
                0.9,
                overlays=[overlay] if "overlays" in wanted else None,
                seg=seg if "seg" in wanted else None,
            ),
        )

    requests = service(handler)
    study = write_zip(tmp_path / "ct.zip", "a")
    out = tmp_path / "out"
    assert cli.main(["analyze", str(study), "--overlays", "--out", str(out), "--no-progress"]) == 0
    assert requests[0].url.params["include"] == "overlays"
    assert (out / "ct-slice003.png").read_bytes() == png
    assert not (out / "ct-seg.dcm").exists()
    assert cli.main(["analyze", str(study), "--seg", "--overlays", "--out", str(out / "2")]) == 0
    assert requests[1].url.params["include"] == "overlays,seg"
    assert (out / "2" / "ct-seg.dcm").read_bytes() == b"DICM"
    assert cli.main(["analyze", str(study), "--seg"]) == 2
    assert "need --out" in capsys.readouterr().err
    assert cli.main(["analyze", str(study), "--json"]) == 0
    assert "include" not in requests[-1].url.params


def test_connection_options_work_before_the_command(service: Any, tmp_path: Path, capsys: Any) -> None:
    seen = service(by_marker({"a": 0.83}))
    study = write_zip(tmp_path / "head.zip", "a")
    argv = ["--url", "http://before.test", "--api-key", "k9", "analyze", str(study), "--no-progress"]
    assert cli.main(argv) == 0
    assert seen[0].url.host == "before.test" and seen[0].headers["authorization"] == "Bearer k9"
    # given on both sides, the one after the command wins
    argv = ["--url", "http://before.test", "analyze", str(study), "--url", "http://after.test", "--json"]
    assert cli.main(argv) == 0
    assert seen[-1].url.host == "after.test"


@pytest.mark.parametrize(
    ("p", "text"),
    [(0.999735, "0.9997"), (0.83, "0.830"), (0.0004, "0.0004"), (1.0, "1.000"), (0.0, "0.000"),
     (0.104, "0.104"), (1 - 1e-9, ">0.999999")],
)
def test_probabilities_never_print_a_certainty_the_model_did_not_give(p: float, text: str) -> None:
    assert cli.format_probability(p) == text


def test_a_text_file_is_refused_with_what_is_wrong(service: Any, tmp_path: Path, capsys: Any) -> None:
    seen = service(by_marker({"a": 0.83}))
    notes = tmp_path / "notes.txt"
    notes.write_text("not a study\n" * 20)
    assert cli.main(["analyze", str(notes), "--url", "http://ich.test", "--no-progress"]) == 1
    assert "neither a zip archive nor a DICOM file" in capsys.readouterr().err
    assert seen == []


def test_status_json_is_a_list_even_for_one_job_with_null_where_one_is_unknown(
    service: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    known = "3f1c7a52-0000-4000-8000-000000000001"
    job = {"id": known, "status": "queued", "attempts": 0, "created_at": "2026-12-01T10:00:00+00:00"}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == f"/v1/studies/{known}":
            return httpx.Response(200, json=job)
        return httpx.Response(404, json={"code": "not_found", "detail": "no such study", "request_id": "r-1"})

    service(handler)
    assert cli.main(["status", known, "--json", "--url", "http://ich.test"]) == 0
    assert [j["id"] for j in json.loads(capsys.readouterr().out)] == [known]
    assert cli.main(["status", known, "unknown-id", "--json", "--url", "http://ich.test"]) == 1
    captured = capsys.readouterr()
    assert [j and j["status"] for j in json.loads(captured.out)] == ["queued", None]
    assert "unknown-id: 404 not_found: no such study" in captured.err
