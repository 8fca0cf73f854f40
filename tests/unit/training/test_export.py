"""ONNX round trip: a tiny random network set exported to a repository that EnsembleRunner serves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from ich import repository, spec  # noqa: E402
from ich.ensemble import EnsembleRunner  # noqa: E402
from ich.weights_manifest import read_manifest, verify_manifest  # noqa: E402
from training import export  # noqa: E402
from training.networks import InceptionUNet, WeightModel, save_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]

SIZE = 32


def _tiny_set(seed: int = 0) -> tuple[dict[str, nn.Module], nn.Module]:
    torch.manual_seed(seed)
    # every other base model carries the test-time flip, so the round trip covers both graphs
    unets: dict[str, nn.Module] = {
        key: InceptionUNet(width=4, depth=2, flip_tta=i % 2 == 0).eval()
        for i, key in enumerate(spec.MODEL_KEYS)
    }
    unets[spec.MODEL_KEYS[0]].set_rotate_tta(8.0)  # and one the rotations (constant grids in the graph)
    weight = WeightModel(hidden=4, opening=3)
    # WeightModel starts with a zero last layer (plain average); perturb it so the weights really vary
    with torch.no_grad():
        weight.fc.weight.normal_(0.0, 1.0)
        weight.fc.bias.normal_(0.0, 1.0)
    return unets, weight.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[export.ExportReport, dict, nn.Module]:
    unets, weight = _tiny_set()
    root = tmp_path_factory.mktemp("repo")
    report = export.export_repository(unets, weight, root, SIZE, version="test-1")
    return report, unets, weight


def _dims(value_info: onnx.ValueInfoProto) -> list[object]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_graphs_have_spec_names_and_dynamic_batch(exported) -> None:
    report, _, _ = exported
    root = report.root
    for key in spec.MODEL_KEYS:
        graph = onnx.load(str(repository.model_file(root, spec.BASE_MODELS[key]))).graph
        assert [i.name for i in graph.input] == [spec.IMAGE]
        assert [o.name for o in graph.output] == [spec.PROB]
        assert _dims(graph.input[0]) == ["batch", 4, SIZE, SIZE]
        assert _dims(graph.output[0]) == ["batch", 1, SIZE, SIZE]
    graph = onnx.load(str(repository.model_file(root, spec.WEIGHTING_MODEL))).graph
    assert [i.name for i in graph.input] == [spec.WEIGHTING_INPUTS[k] for k in spec.MODEL_KEYS]
    assert [o.name for o in graph.output] == [spec.WEIGHTS, spec.FUSED, spec.SLICE_PROB]
    assert _dims(graph.output[0]) == ["batch", 5]
    assert _dims(graph.output[2]) == ["batch", 1]


def test_repository_layout_and_configs(exported) -> None:
    report, _, _ = exported
    root = report.root
    assert repository.missing_files(root) == []
    assert repository.read_version(root) == "test-1"
    recorded = read_manifest(root)  # every exported ONNX file's digest, checked by the loaders
    assert recorded is not None and f"{spec.BASE_MODELS['sdh']}/1/model.onnx" in recorded
    verify_manifest(root)
    for key in spec.MODEL_KEYS:
        config = repository.read_config(repository.config_path(root, spec.BASE_MODELS[key]))
        assert config.platform == "onnxruntime_onnx"
        assert config.max_batch_size == 16
        assert config.HasField("dynamic_batching")
        assert config.instance_group[0].kind == config.instance_group[0].KIND_GPU
        assert repository.input_size_of(config) == SIZE
    ensemble = repository.read_config(repository.config_path(root, spec.ENSEMBLE_MODEL))
    assert repository.ensemble_step_models(ensemble) == repository.model_names()[:-1]
    assert set(report.max_abs_diff) == set(repository.model_names())
    assert all(0.0 <= d <= 1e-4 for d in report.max_abs_diff.values())


def test_runner_matches_pytorch(exported) -> None:
    report, unets, weight = exported
    runner = EnsembleRunner.from_repository(report.root)
    assert runner.input_size == SIZE and runner.model_version == "test-1"
    rng = np.random.default_rng(5)
    images = rng.random((20, 4, SIZE, SIZE), dtype=np.float32)  # > max_batch_size: batched internally
    out = runner.run(images)
    with torch.no_grad():
        probs = {k: unets[k](torch.from_numpy(images)) for k in spec.MODEL_KEYS}
        w, fused, slice_prob = weight(*(probs[k] for k in spec.MODEL_KEYS))
    np.testing.assert_allclose(out.fused, fused.numpy(), atol=1e-4)
    np.testing.assert_allclose(out.weights, w.numpy(), atol=1e-4)
    np.testing.assert_allclose(out.slice_prob, slice_prob.numpy().reshape(-1), atol=1e-4)
    for key in spec.MODEL_KEYS:
        np.testing.assert_allclose(out.probs[key], probs[key].numpy(), atol=1e-4)
    np.testing.assert_allclose(out.weights.sum(axis=1), 1.0, atol=1e-5)
    assert np.ptp(out.weights, axis=1).min() > 0.1  # not the plain average: the weights are exercised


def test_mismatch_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    unets, weight = _tiny_set(1)
    real_run = export.ort.InferenceSession.run

    def skewed(self, names, feeds, *a, **k):  # an ONNX graph that drifts from PyTorch by 1e-3
        return [o + 1e-3 for o in real_run(self, names, feeds, *a, **k)]

    monkeypatch.setattr(export.ort.InferenceSession, "run", skewed)
    with pytest.raises(export.ExportError, match="differs from PyTorch"):
        export.export_repository(unets, weight, tmp_path / "repo", SIZE, version="x")
    assert not (tmp_path / "repo").exists()  # nothing written when a check fails


def test_cli_exports_from_checkpoints(tmp_path: Path) -> None:
    unets, weight = _tiny_set(2)
    run_dir = tmp_path / "run"
    for key, net in unets.items():
        save_checkpoint(run_dir / key / "best.pt", "unet", net)
    save_checkpoint(run_dir / "weight" / "best.pt", "weight", weight)
    from training.cli import main

    out = tmp_path / "repo"
    # without the run's config.toml the input size must be given
    assert main(["export", "--run", str(run_dir), "--out", str(tmp_path / "repo0")]) == 2
    assert not (tmp_path / "repo0").exists()
    args = ["export", "--run", str(run_dir), "--out", str(out), "--version", "cli-1"]
    assert main([*args, "--input-size", str(SIZE)]) == 0
    assert repository.missing_files(out) == []
    assert repository.read_version(out) == "cli-1"
    # [run].size of the run's config.toml, the copy `ich-model train` writes, is the input size
    smoke = (ROOT / "training" / "configs" / "smoke.toml").read_text()
    assert "size = 64\n" in smoke
    (run_dir / "config.toml").write_text(smoke.replace("size = 64\n", f"size = {SIZE}\n"))
    assert main(["export", "--run", str(run_dir), "--out", str(tmp_path / "repo3")]) == 0
    assert repository.input_size_of(repository.read_config(tmp_path / "repo3" / spec.ENSEMBLE_MODEL)) == SIZE
    # a config that does not validate is refused, naming the key
    (run_dir / "config.toml").write_text(smoke + "\n[export]\nrotate_tta = 8.0\n")
    assert main(["export", "--run", str(run_dir), "--out", str(tmp_path / "repo6")]) == 2
    assert not (tmp_path / "repo6").exists()
    # [export].rotate_tta_deg of the run's config adds the rotations to every base model; a flag overrides
    config = smoke.replace("size = 64\n", f"size = {SIZE}\n") + "\n[export]\nrotate_tta_deg = 8.0\n"
    (run_dir / "config.toml").write_text(config)
    assert main(["export", "--run", str(run_dir), "--out", str(tmp_path / "repo4")]) == 0
    no_rotation = ["--rotate-tta-deg", "0"]
    assert main(["export", "--run", str(run_dir), "--out", str(tmp_path / "repo5"), *no_rotation]) == 0
    image = np.random.default_rng(3).random((2, spec.IN_CHANNELS, SIZE, SIZE), dtype=np.float32)
    key = spec.MODEL_KEYS[1]

    def onnx_map(root: Path) -> np.ndarray:
        path = repository.model_file(root, spec.BASE_MODELS[key])
        return export._ort_session(path).run([spec.PROB], {spec.IMAGE: image})[0]

    net = unets[key]
    assert isinstance(net, InceptionUNet)
    with torch.no_grad():
        net.set_rotate_tta(8.0)
        rotated = net(torch.from_numpy(image)).numpy()
        net.set_rotate_tta(0.0)
        plain = net(torch.from_numpy(image)).numpy()
    assert np.abs(rotated - plain).max() > 1e-3
    np.testing.assert_allclose(onnx_map(tmp_path / "repo4"), rotated, atol=1e-5)
    np.testing.assert_allclose(onnx_map(tmp_path / "repo5"), plain, atol=1e-5)
    np.testing.assert_allclose(onnx_map(tmp_path / "repo3"), plain, atol=1e-5)
    # a missing checkpoint is a clear failure, not a traceback
    (run_dir / "sah" / "best.pt").unlink()
    assert main(["export", "--run", str(run_dir), "--out", str(tmp_path / "repo2")]) == 1


SHIPPED = Path(__file__).resolve().parents[3] / "model_repository"


def test_shipped_repository_is_complete_small_and_runs() -> None:
    assert repository.missing_files(SHIPPED) == []
    version = repository.read_version(SHIPPED)
    assert version != "unversioned"
    card = (SHIPPED / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "NOT FOR CLINICAL USE" in card and "CC BY 4.0" in card and version in card
    for name in repository.model_names()[:-1]:
        assert repository.model_file(SHIPPED, name).stat().st_size < 20_000_000
    runner = EnsembleRunner.from_repository(SHIPPED)
    images = np.random.default_rng(0).random((2, 4, runner.input_size, runner.input_size), dtype=np.float32)
    out = runner.run(images)
    assert out.fused.shape == (2, 1, runner.input_size, runner.input_size)
    assert np.all((out.slice_prob >= 0) & (out.slice_prob <= 1))
    np.testing.assert_allclose(out.weights.sum(axis=1), 1.0, atol=1e-5)
