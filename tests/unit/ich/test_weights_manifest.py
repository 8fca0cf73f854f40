"""The shipped weights are the exported ones: ``model_repository/SHA256SUMS``, checked before any load.

Two base models swapped between folders, or a weight changed on disk, load and infer without an error and
may move a probability by less than any tolerance; these tests do both to a copy of the shipped repository
and expect the embedded engine, the local Triton's rendering and the gateway's start-up to refuse it.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from api.app import create_app
from api.settings import Settings
from ich import repository, spec
from ich.ensemble import EnsembleRunner
from ich.repository import RepositoryError
from ich.weights_manifest import MANIFEST_FILENAME, read_manifest, verify_manifest, write_manifest
from ich_devtools.triton_local import render_cpu_repository
from tests.support.tiny_repository import build_tiny_repository

SHIPPED = Path(__file__).resolve().parents[3] / "model_repository"


@pytest.fixture
def shipped_copy(tmp_path: Path) -> Path:
    return Path(shutil.copytree(SHIPPED, tmp_path / "model_repository"))


def _onnx(root: Path, key: str) -> Path:
    return repository.model_file(root, spec.BASE_MODELS[key])


def test_the_shipped_manifest_records_every_onnx_file_and_matches() -> None:
    recorded = read_manifest(SHIPPED)
    assert recorded is not None, f"model_repository/{MANIFEST_FILENAME} is missing"
    expected = {f"{name}/1/model.onnx" for name in (*spec.BASE_MODELS.values(), spec.WEIGHTING_MODEL)}
    assert expected <= set(recorded)
    verify_manifest(SHIPPED)


def test_two_base_models_swapped_are_refused_by_every_loader(shipped_copy: Path, tmp_path: Path) -> None:
    sdh, sah = _onnx(shipped_copy, "sdh"), _onnx(shipped_copy, "sah")
    sdh_bytes = sdh.read_bytes()
    sdh.write_bytes(sah.read_bytes())
    sah.write_bytes(sdh_bytes)
    with pytest.raises(RepositoryError) as refused:
        EnsembleRunner.from_repository(shipped_copy)
    message = str(refused.value)
    assert "ich_unet_sdh/1/model.onnx" in message and "ich_unet_sah/1/model.onnx" in message
    assert "ich_unet_all" not in message
    with pytest.raises(RepositoryError):
        render_cpu_repository(shipped_copy, tmp_path / "rendered")


def test_one_changed_byte_is_refused(shipped_copy: Path) -> None:
    path = _onnx(shipped_copy, "small")
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x01  # the low bit of a weight near the end: the graph still loads
    path.write_bytes(bytes(data))
    with pytest.raises(RepositoryError, match=re.escape("ich_unet_small/1/model.onnx does not match")):
        EnsembleRunner.from_repository(shipped_copy)


async def test_the_gateway_does_not_start_on_damaged_weights(shipped_copy: Path) -> None:
    path = _onnx(shipped_copy, "all")
    path.write_bytes(path.read_bytes()[:-10])  # a truncated copy
    app = create_app(Settings(model_repository=shipped_copy))
    with pytest.raises(RepositoryError, match=re.escape("ich_unet_all/1/model.onnx")):
        async with app.router.lifespan_context(app):
            pass


def test_an_unrecorded_or_missing_file_is_refused_and_no_manifest_is_not_checked(tmp_path: Path) -> None:
    root = build_tiny_repository(tmp_path / "tiny")
    verify_manifest(root)  # no manifest: the tests' tiny repositories load as they are
    write_manifest(root)
    EnsembleRunner.from_repository(root)
    extra = repository.model_file(root, spec.BASE_MODELS["all"], version=2)
    extra.parent.mkdir()
    shutil.copyfile(_onnx(root, "all"), extra)
    with pytest.raises(
        RepositoryError, match=re.escape(f"ich_unet_all/2/model.onnx is not in {MANIFEST_FILENAME}")
    ):
        verify_manifest(root)
    extra.unlink()
    _onnx(root, "sah").unlink()
    with pytest.raises(RepositoryError, match=re.escape("ich_unet_sah/1/model.onnx is missing")):
        verify_manifest(root)
    (root / MANIFEST_FILENAME).write_text("not a digest  ich_unet_all/1/model.onnx\n")
    with pytest.raises(RepositoryError, match="line 1"):
        verify_manifest(root)
