"""ich_client and the ``ich`` command line against the real gateway behind uvicorn on loopback.

The gateway is started as ``ich-serve`` would start it (``python -m api.main`` with ``ICH_`` settings) on a
free port, with the embedded engine on the session's tiny repository and API keys on. This is the issue's
"Done when": ``ich analyze STUDY.zip --json`` and ``ich analyze FOLDER --json`` print the same
``ich_probability`` as a direct POST of that study.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from ich_client import (
    AsyncICHClient,
    AuthenticationError,
    ICHClient,
    PayloadTooLargeError,
    UnprocessableStudyError,
)

from api.auth import key_digest
from tests.integration.conftest import serve
from tests.support.dicom_study import study_zip

KEY = "uvicorn-test-key"
MAX_UPLOAD = 2 * 1024 * 1024

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Gateway:
    url: str
    model_version: str


@pytest.fixture(scope="module")
def gateway(tiny_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    workdir = tmp_path_factory.mktemp("gateway")
    keys = workdir / "keys.txt"
    keys.write_text(f"# test key\n{key_digest(KEY)}\n")
    settings = {
        "ICH_ENGINE": "embedded",
        "ICH_MODEL_REPOSITORY": str(tiny_repository),
        "ICH_API_KEYS_FILE": str(keys),
        "ICH_MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
        "ICH_THREADS": "1",
        "ICH_INTRA_OP_THREADS": "1",
        "ICH_LOG_LEVEL": "warning",
    }
    with serve(workdir / "gateway.log", **settings) as url:
        yield Gateway(url, (tiny_repository / "VERSION").read_text().strip())


@pytest.fixture(scope="module")
def study_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same synthetic study as a zip and as a folder of DICOM files."""
    hu = np.full((6, 48, 48), 28.0, np.float32)
    hu[2:5, 14:30, 16:34] = 72.0
    data, _ = study_zip(hu, shuffle=True, seed=3)
    root = tmp_path_factory.mktemp("study")
    zip_path = root / "head_ct.zip"
    zip_path.write_bytes(data)
    folder = root / "head_ct_folder"
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        archive.extractall(folder)
    return zip_path, folder


def direct_post(gateway: Gateway, zip_path: Path) -> dict[str, object]:
    response = httpx.post(
        f"{gateway.url}/v1/cases",
        content=zip_path.read_bytes(),
        headers={"Content-Type": "application/zip", "Authorization": f"Bearer {KEY}"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    payload = response.json()
    assert isinstance(payload, dict)
    return payload


def ich_command() -> list[str]:
    """The installed ``ich`` console script, else the module (same code, no PATH needed)."""
    script = Path(sys.executable).with_name("ich")
    return [str(script)] if script.exists() else [sys.executable, "-m", "ich_client"]


def run_ich(*args: str, gateway: Gateway) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ICH_API_KEY": KEY}
    env.pop("ICH_URL", None)
    return subprocess.run(
        [*ich_command(), *args, "--url", gateway.url],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_cli_zip_and_folder_print_the_direct_post_probability(
    gateway: Gateway, study_files: tuple[Path, Path]
) -> None:
    zip_path, folder = study_files
    expected = direct_post(gateway, zip_path)["ich_probability"]
    for study in (zip_path, folder):
        done = run_ich("analyze", str(study), "--json", gateway=gateway)
        assert done.returncode == 0, done.stderr
        printed = json.loads(done.stdout)
        assert isinstance(printed, dict)
        assert printed["ich_probability"] == expected, study
        assert printed["model_version"] == gateway.model_version


def test_cli_several_studies_summary_out_and_failure(
    gateway: Gateway, study_files: tuple[Path, Path], tmp_path: Path
) -> None:
    zip_path, folder = study_files
    not_ct = tmp_path / "notes.dcm"  # DICOM-looking to the client, no CT image to the service
    not_ct.write_bytes(b"\0" * 128 + b"DICM" + b"not an image")
    out = tmp_path / "results"
    done = run_ich("analyze", str(zip_path), str(not_ct), str(folder), "--out", str(out), gateway=gateway)
    assert done.returncode == 1
    assert "notes.dcm: 422" in done.stderr and "request_id" in done.stderr
    assert done.stdout.count("probability") == 2 and "indeterminate:" in done.stdout
    assert "top slices: #" in done.stdout
    assert sorted(p.name for p in out.iterdir()) == ["head_ct.json", "head_ct_folder.json"]
    written = [json.loads(p.read_text())["ich_probability"] for p in sorted(out.iterdir())]
    assert written[0] == written[1]


def test_cli_health_and_models(gateway: Gateway) -> None:
    health = run_ich("health", gateway=gateway)
    assert health.returncode == 0 and "ready" in health.stdout
    models = run_ich("models", "--json", gateway=gateway)
    assert models.returncode == 0, models.stderr
    listed = json.loads(models.stdout)
    assert listed["model_version"] == gateway.model_version
    assert {"ich_ensemble", "ich_weighting", "ich_unet_all"} <= {m["name"] for m in listed["models"]}


def test_cli_without_key_is_refused(gateway: Gateway, study_files: tuple[Path, Path]) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ICH_API_KEY"}
    done = subprocess.run(
        [*ich_command(), "models", "--url", gateway.url],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1 and "401" in done.stderr


def test_sdk_over_a_real_socket(gateway: Gateway, study_files: tuple[Path, Path], tmp_path: Path) -> None:
    zip_path, folder = study_files
    expected = direct_post(gateway, zip_path)
    sent: list[int] = []
    with ICHClient(gateway.url, api_key=KEY) as client:
        result = client.analyze(sorted(folder.rglob("*.dcm")), progress=lambda s, _t: sent.append(s))
        assert result.ich_probability == expected["ich_probability"]
        expected_slices = expected["slices"]
        assert isinstance(expected_slices, list)
        assert [s.probability for s in result.slices] == [s["probability"] for s in expected_slices]
        assert sent[-1] > 0 and sent == sorted(sent)
        assert client.ready().ok and client.health().ok
        text = tmp_path / "report.txt"
        text.write_text("no images")
        with pytest.raises(ValueError, match="neither a zip archive nor a DICOM file"):
            client.analyze(text)  # refused before anything is sent
        not_ct = tmp_path / "report.dcm"
        not_ct.write_bytes(b"\0" * 128 + b"DICM" + b"no images")
        with pytest.raises(UnprocessableStudyError) as info:
            client.analyze(not_ct)
        assert info.value.request_id and info.value.detail
        big = tmp_path / "big.zip"
        with zipfile.ZipFile(big, "w", zipfile.ZIP_STORED) as archive:
            archive.writestr("noise.bin", np.random.default_rng(0).bytes(8 * MAX_UPLOAD))
        # Refused from Content-Length while the body is still being sent: still a 413, not a broken pipe.
        with pytest.raises(PayloadTooLargeError) as too_large:
            client.analyze(big)
        assert too_large.value.code and too_large.value.request_id
    with ICHClient(gateway.url, api_key="not-the-key") as client, pytest.raises(AuthenticationError):
        client.models()


def test_async_sdk_concurrent_studies(gateway: Gateway, study_files: tuple[Path, Path]) -> None:
    zip_path, folder = study_files

    async def both() -> list[float]:
        async with AsyncICHClient(gateway.url, api_key=KEY) as client:
            results = await asyncio.gather(client.analyze(zip_path), client.analyze(folder))
        return [r.ich_probability for r in results]

    first, second = asyncio.run(both())
    assert first == second == direct_post(gateway, zip_path)["ich_probability"]
