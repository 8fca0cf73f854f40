"""``ich-model export``: trained checkpoints -> ONNX -> a complete ``model_repository/``.

Every graph gets the tensor names of ``ich.spec`` (never the exporter's ``input.1``) and a dynamic batch axis
with fixed H = W = S, the training input size. Each exported file is checked against PyTorch with onnxruntime
(max abs difference at most ``tolerance``, 1e-4 by default) and the assembled repository is run once more end
to end through :class:`ich.ensemble.EnsembleRunner` (the code the gateway's embedded engine runs) against the
PyTorch pipeline. Everything is written to a staging folder first and copied into place only when every check
passed, so a failed export never leaves a half-updated repository behind.

The TorchScript-based exporter (``dynamo=False``) is used on purpose: these networks are plain convolutions,
pooling and softmax, which it handles exactly, and the torch.export-based one would add ``onnxscript`` as a
dependency for no gain.

Configurations are written only through ``ich.repository`` (one writer for the whole project).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from ich import repository, spec
from ich.ensemble import EnsembleRunner
from ich.prob_max import prob_max_model
from ich.scoring import CASE_MODEL_FILENAME, CaseModel
from ich.weights_manifest import write_manifest
from training.config import ConfigError, TrainingConfig, load_config
from training.networks import InceptionUNet
from training.quantize import PRECISIONS, calibration_images, quantize_repository

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 17
DEFAULT_TOLERANCE = 1e-4
#: Step folder of the weight model inside a training run (the base models use their ``spec.MODEL_KEYS``).
WEIGHT_STEP = "weight"
CHECKPOINT_NAME = "best.pt"
_REPO_ROOT = Path(__file__).resolve().parents[1]


class ExportError(RuntimeError):
    """An exported graph disagrees with PyTorch or a checkpoint cannot be exported."""


@dataclass
class ExportReport:
    """What an export produced: the repository, its version and the measured ONNX-vs-PyTorch differences."""

    root: Path
    version: str
    input_size: int
    max_abs_diff: dict[str, float] = field(default_factory=dict)  # model name -> max |onnx - torch|
    file_bytes: dict[str, int] = field(default_factory=dict)  # model name -> size of model.onnx


def _ort_session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _export(
    model: nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    input_names: list[str],
    output_names: list[str],
    opset: int,
) -> None:
    """Export ``model`` with named tensors and a dynamic batch axis on every input and output."""
    path.parent.mkdir(parents=True, exist_ok=True)
    dynamic = {name: {0: "batch"} for name in [*input_names, *output_names]}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter announces itself
        # constant rotation grids (test-time augmentation) are meant to be traced as constants
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            model,
            example,
            str(path),
            dynamo=False,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic,
            opset_version=opset,
            do_constant_folding=True,
        )
    onnx.checker.check_model(str(path))


def _pin_output_dims(path: Path, name: str, dims: list[int]) -> None:
    """Write the known non-batch dims of output ``name`` into the graph; the batch axis stays dynamic.

    Why: through ``grid_sample`` (the rotation test-time augmentation) the exporter's shape inference loses
    the spatial size and leaves symbolic dims, while the contract (and Triton's config) says [B, 1, S, S].
    """
    model = onnx.load(str(path))
    for output in model.graph.output:
        if output.name == name:
            for dim, value in zip(output.type.tensor_type.shape.dim[1:], dims, strict=True):
                dim.ClearField("dim_param")
                dim.dim_value = value
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path))


def _compare(
    model: nn.Module,
    path: Path,
    inputs: dict[str, np.ndarray],
    output_names: list[str],
    tolerance: float,
) -> float:
    """Run PyTorch and onnxruntime on the same ``inputs``; return the max abs difference or raise."""
    with torch.no_grad():
        expected = model(*(torch.from_numpy(v) for v in inputs.values()))
    if isinstance(expected, torch.Tensor):
        expected = (expected,)
    got = _ort_session(path).run(output_names, inputs)
    worst = 0.0
    for name, exp, out in zip(output_names, expected, got, strict=True):
        exp_np = exp.detach().numpy()
        if tuple(out.shape) != tuple(exp_np.shape):
            raise ExportError(f"{path}: output {name} has shape {out.shape}, PyTorch gives {exp_np.shape}")
        worst = max(worst, float(np.max(np.abs(out - exp_np))))
    if not worst <= tolerance:
        raise ExportError(f"{path}: ONNX differs from PyTorch by {worst:.3g} (> {tolerance:g})")
    return worst


def export_base_model(
    model: nn.Module,
    path: Path,
    input_size: int,
    *,
    opset: int = DEFAULT_OPSET,
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
) -> float:
    """Export one U-Net (IMAGE [B, 4, S, S] -> PROB [B, 1, S, S]) and check it; return the max abs diff.

    The check uses a batch size different from the export example, so a batch axis frozen by mistake fails.
    """
    model = model.eval()
    example = torch.rand(2, spec.IN_CHANNELS, input_size, input_size)
    _export(model, (example,), path, [spec.IMAGE], [spec.PROB], opset)
    _pin_output_dims(path, spec.PROB, [1, input_size, input_size])
    rng = np.random.default_rng(seed)
    check = {spec.IMAGE: rng.random((3, spec.IN_CHANNELS, input_size, input_size), dtype=np.float32)}
    return _compare(model, path, check, [spec.PROB], tolerance)


def _random_maps(rng: np.random.Generator, batch: int, input_size: int) -> dict[str, np.ndarray]:
    """Probability-like maps: mostly low with a few bright blobs, so the opening and the max matter."""
    maps = {}
    for key in spec.MODEL_KEYS:
        m = rng.random((batch, 1, input_size, input_size), dtype=np.float32) * 0.3
        r, c = rng.integers(0, max(input_size - 6, 1), size=2)
        m[:, :, r : r + 6, c : c + 6] += 0.6
        maps[spec.WEIGHTING_INPUTS[key]] = np.clip(m, 0.0, 1.0)
    return maps


WEIGHTING_OUTPUTS = [spec.WEIGHTS, spec.FUSED, spec.SLICE_PROB]


def export_weighting_model(
    model: nn.Module,
    path: Path,
    input_size: int,
    *,
    opset: int = DEFAULT_OPSET,
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
) -> float:
    """Export the weight model (five maps -> WEIGHTS [B, 5], FUSED [B, 1, S, S], SLICE_PROB [B, 1]).

    Its forward takes the five maps in ``spec.MODEL_KEYS`` order and returns the three outputs in
    ``WEIGHTING_OUTPUTS`` order; the post-processing (opening) is part of the graph.
    """
    model = model.eval()
    names = [spec.WEIGHTING_INPUTS[key] for key in spec.MODEL_KEYS]
    example = tuple(torch.rand(2, 1, input_size, input_size) for _ in names)
    _export(model, example, path, names, WEIGHTING_OUTPUTS, opset)
    check = _random_maps(np.random.default_rng(seed), 3, input_size)
    return _compare(model, path, check, WEIGHTING_OUTPUTS, tolerance)


def _export_prob_max(root: Path, input_size: int, seed: int) -> float:
    """Write ``ich_prob_max`` and return its largest difference from numpy's maxima on random maps."""
    path = repository.model_file(root, spec.PROB_MAX_MODEL)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(prob_max_model(input_size), str(path))
    maps = _random_maps(np.random.default_rng(seed), 3, input_size)
    (got,) = _ort_session(path).run([spec.PROB_MAX], maps)
    stack = np.concatenate([maps[spec.WEIGHTING_INPUTS[k]] for k in spec.MODEL_KEYS], axis=1)
    expected = stack.max(axis=(2, 3))
    return float(np.max(np.abs(got - expected)))


def default_version() -> str:
    """``YYYY.MM.DD-<git short hash>`` of the code that exported, or the date alone outside a git tree."""
    day = dt.datetime.now(dt.UTC).strftime("%Y.%m.%d")
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=_REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return day
    return f"{day}-{sha}" if sha else day


def _check_end_to_end(
    root: Path,
    unets: Mapping[str, nn.Module],
    weight: nn.Module,
    input_size: int,
    tolerance: float,
    seed: int,
) -> float:
    """Run the assembled repository with EnsembleRunner and compare every output with PyTorch."""
    runner = EnsembleRunner.from_repository(root)
    rng = np.random.default_rng(seed + 1)
    images = rng.random((3, spec.IN_CHANNELS, input_size, input_size), dtype=np.float32)
    out = runner.run(images)
    with torch.no_grad():
        x = torch.from_numpy(images)
        probs = {key: unets[key](x) for key in spec.MODEL_KEYS}
        weights, fused, slice_prob = weight(*(probs[key] for key in spec.MODEL_KEYS))
    pairs = [
        (out.fused, fused),
        (out.weights, weights),
        (out.slice_prob, slice_prob.reshape(-1)),
        *((out.probs[key], probs[key]) for key in spec.MODEL_KEYS),
    ]
    worst = max(float(np.max(np.abs(a - b.numpy()))) for a, b in pairs)
    if not worst <= tolerance:
        raise ExportError(f"ensemble run from {root} differs from PyTorch by {worst:.3g} (> {tolerance:g})")
    return worst


def export_repository(
    unets: Mapping[str, nn.Module],
    weight: nn.Module,
    out: Path,
    input_size: int,
    *,
    version: str | None = None,
    opset: int = DEFAULT_OPSET,
    tolerance: float = DEFAULT_TOLERANCE,
    max_batch_size: int = repository.DEFAULT_MAX_BATCH_SIZE,
    kind: str = "KIND_GPU",
    seed: int = 0,
) -> ExportReport:
    """Export the five U-Nets and the weight model, check them, and write ``out`` as a model repository.

    Args:
        unets: one network per key of ``spec.MODEL_KEYS`` (IMAGE -> PROB).
        weight: the weight model (five maps -> WEIGHTS, FUSED, SLICE_PROB).
        out: repository folder; existing files other than the ones written here are left alone.
        input_size: S, the training input size; fixed in the graphs and in every config.
        version: model version written to ``VERSION`` (default: :func:`default_version`).

    Raises:
        ExportError: a graph or the assembled ensemble differs from PyTorch by more than ``tolerance``.
        ValueError: a base model is missing or the sizes are invalid.
    """
    missing = [key for key in spec.MODEL_KEYS if key not in unets]
    if missing:
        raise ValueError(f"missing base model(s): {', '.join(missing)}")
    if input_size <= 0 or input_size % 2:
        raise ValueError(f"input_size must be a positive even number, got {input_size}")
    version = version or default_version()
    out = Path(out)
    report = ExportReport(root=out, version=version, input_size=input_size)
    for net in (*unets.values(), weight):
        net.eval()
    with tempfile.TemporaryDirectory(prefix="ich-export-") as tmp:
        stage = Path(tmp)
        _stage_repository(stage, unets, weight, report, opset, tolerance, max_batch_size, kind, seed)
        _copy_staged(stage, out, report)
    write_manifest(out)  # after the copy: every ONNX file the repository now holds
    return report


def _stage_repository(
    stage: Path,
    unets: Mapping[str, nn.Module],
    weight: nn.Module,
    report: ExportReport,
    opset: int,
    tolerance: float,
    max_batch_size: int,
    kind: str,
    seed: int,
) -> None:
    """Write every graph and config into ``stage`` and check each one, and the ensemble, against PyTorch."""
    input_size = report.input_size
    for key in spec.MODEL_KEYS:
        name = spec.BASE_MODELS[key]
        report.max_abs_diff[name] = export_base_model(
            unets[key],
            repository.model_file(stage, name),
            input_size,
            opset=opset,
            tolerance=tolerance,
            seed=seed,
        )
        logger.info("exported %s (max |onnx - torch| = %.2e)", name, report.max_abs_diff[name])
    report.max_abs_diff[spec.WEIGHTING_MODEL] = export_weighting_model(
        weight,
        repository.model_file(stage, spec.WEIGHTING_MODEL),
        input_size,
        opset=opset,
        tolerance=tolerance,
        seed=seed,
    )
    repository.write_repository_configs(stage, input_size, max_batch_size=max_batch_size, kind=kind)
    report.max_abs_diff[spec.PROB_MAX_MODEL] = _export_prob_max(stage, input_size, seed)
    repository.write_version(stage, report.version)
    report.max_abs_diff[spec.ENSEMBLE_MODEL] = _check_end_to_end(
        stage, unets, weight, input_size, tolerance, seed
    )
    logger.info("ensemble end to end: max |runner - torch| = %.2e", report.max_abs_diff[spec.ENSEMBLE_MODEL])


def _copy_staged(stage: Path, out: Path, report: ExportReport) -> None:
    """Copy the checked files into ``out`` (other files there are left alone), noting each graph's size."""
    for src in sorted(p for p in stage.rglob("*") if p.is_file()):
        rel = src.relative_to(stage)
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        if src.name == repository.MODEL_FILENAME:
            report.file_bytes[rel.parts[0]] = src.stat().st_size


# ------------------------------------------------------------------------------------------------ CLI


def _load(path: Path) -> nn.Module:
    """The network of a checkpoint."""
    from training.networks import load_checkpoint

    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return load_checkpoint(path)


def run_config(run_dir: Path) -> TrainingConfig | None:
    """The validated ``config.toml`` that ``ich-model train`` copies into its run folder, if there is one."""
    path = run_dir / "config.toml"
    return load_config(path) if path.is_file() else None


#: The case model of the shipped configuration's cross-validation (``ich-model cv-report``).
DEFAULT_CASE_MODEL = Path("training/cv/default/case_model.json")
#: The calibration study of ``--precision int8`` when none is given (real CT-ICH slices, see its NOTICE).
DEFAULT_CALIBRATION = _REPO_ROOT / "examples" / "ct_ich_study.zip"


def copy_case_model(source: Path, root: Path) -> None:
    """Check ``source`` and copy it into the repository as ``case_model.json`` (it belongs to the weights).

    Why a copy and not a path: the gateway, Triton's local copy and a container image carry the repository
    folder, and the threshold must travel with the weights it was chosen for.
    """
    model = CaseModel.load(source)  # refuses a malformed file before anything is written
    model.save(root / CASE_MODEL_FILENAME)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``ich-model export``."""
    _add_source_arguments(parser)
    _add_graph_arguments(parser)
    _add_precision_arguments(parser)


def _add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """What is exported: the run's checkpoints (or single overrides) and the case model."""
    parser.add_argument(
        "--run",
        type=Path,
        default=Path("runs/default"),
        help="training run holding <key>/best.pt and weight/best.pt (default: %(default)s)",
    )
    parser.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="STEP=PATH",
        help="override one checkpoint, e.g. all=runs/x/all/best.pt or weight=...; repeatable",
    )
    parser.add_argument(
        "--case-model",
        type=Path,
        default=DEFAULT_CASE_MODEL,
        help="case model (lesion model, calibration, operating point) fitted by "
        "ich-model cv-report, copied into the repository (default: %(default)s; "
        "'none' for the paper's maximum slice probability)",
    )


def _add_graph_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the repository goes and how its graphs and configs are written and checked."""
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("model_repository"),
        help="model repository to write (default: %(default)s)",
    )
    parser.add_argument(
        "--input-size",
        type=int,
        default=None,
        help="S; default: [run].size of <run>/config.toml",
    )
    parser.add_argument("--version", default=None, help="model version for VERSION (default: date-gitsha)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    parser.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help="max abs ONNX-vs-PyTorch difference allowed (default: %(default)g)",
    )
    parser.add_argument("--max-batch-size", type=int, default=repository.DEFAULT_MAX_BATCH_SIZE)
    parser.add_argument("--kind", default="KIND_GPU", help="Triton instance kind (default: %(default)s)")
    parser.add_argument(
        "--rotate-tta-deg",
        type=float,
        default=None,
        help="rotation test-time augmentation of the base models, +- degrees "
        "(default: [export].rotate_tta_deg of <run>/config.toml, else 0)",
    )


def _add_precision_arguments(parser: argparse.ArgumentParser) -> None:
    """A reduced-precision variant, from the checkpoints or from an exported repository."""
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="base models' precision; int8: onnxruntime static quantization for CPUs with VNNI, "
        "calibrated on --calibration (check it with ich-model precision-check before shipping it)",
    )
    parser.add_argument(
        "--from-repository",
        type=Path,
        default=None,
        help="convert this exported FP32 repository instead of exporting checkpoints",
    )
    parser.add_argument(
        "--calibration",
        type=Path,
        nargs="+",
        default=[DEFAULT_CALIBRATION],
        help="studies whose slices calibrate the INT8 ranges: DICOM zips or folders, or a CT-ICH folder "
        "(default: %(default)s)",
    )


def _reduce_precision(args: argparse.Namespace, source: Path) -> int:
    """Write ``args.out`` as ``source`` with its base models at ``args.precision``."""
    try:
        size = repository.input_size_of(
            repository.read_config(repository.config_path(source, spec.ENSEMBLE_MODEL))
        )
        images = calibration_images(args.calibration, size)
        with tempfile.TemporaryDirectory(prefix="ich-precision-") as tmp:
            staged = Path(tmp) / "fp32"
            if source.resolve() == Path(args.out).resolve():
                shutil.copytree(source, staged)
                source = staged
            quantize_repository(source, args.out, images, args.precision)
    except (OSError, ValueError, repository.RepositoryError) as exc:
        logger.error("%s export failed: %s", args.precision, exc)
        return 1
    logger.info(
        "wrote %s (version %s, base models %s, calibrated on %d slices)",
        args.out,
        repository.read_version(args.out),
        args.precision,
        len(images),
    )
    return 0


def run(args: argparse.Namespace) -> int:
    """Load the six checkpoints, export and check them, write the repository; 0 on success."""
    if args.from_repository is not None:
        return _reduce_precision(args, args.from_repository)
    status = _export_checkpoints(args)
    if status != 0 or args.precision == "fp32":
        return status
    return _reduce_precision(args, args.out)


def _rotation_and_size(args: argparse.Namespace) -> tuple[float, int] | None:
    """(rotation TTA degrees, input size): the flags, else ``[export]`` and ``[run].size`` of the run's
    config.toml; None (logged) when the config does not validate or no size is known."""
    try:
        cfg = run_config(args.run)
    except ConfigError as err:
        logger.error("export: %s", err)
        return None
    rotate = args.rotate_tta_deg
    if rotate is None:
        rotate = cfg.export.rotate_tta_deg if cfg is not None else 0.0
    size = args.input_size
    if size is None:
        if cfg is None:
            logger.error("%s has no config.toml to read [run].size from; pass --input-size", args.run)
            return None
        size = cfg.run.size
    elif cfg is not None and cfg.run.size != size:
        logger.warning("--input-size %d differs from [run].size %d of the run", size, cfg.run.size)
    return float(rotate), int(size)


def _checkpoint_paths(args: argparse.Namespace) -> dict[str, Path] | None:
    """The run's checkpoint of every step with the ``--checkpoint`` overrides; None (logged) if one is bad."""
    paths = {step: args.run / step / CHECKPOINT_NAME for step in (*spec.MODEL_KEYS, WEIGHT_STEP)}
    for item in args.checkpoint:
        step, sep, value = item.partition("=")
        if not sep or step not in paths:
            logger.error("--checkpoint expects STEP=PATH with STEP in %s, got %r", ", ".join(paths), item)
            return None
        paths[step] = Path(value)
    return paths


def _install_case_model(args: argparse.Namespace) -> int:
    """Copy ``--case-model`` into the repository, or remove the repository's one for the paper's rule."""
    if args.case_model == DEFAULT_CASE_MODEL and not DEFAULT_CASE_MODEL.is_file():
        logger.warning(
            "no %s: the repository decides by the paper's maximum slice probability", DEFAULT_CASE_MODEL
        )
    elif str(args.case_model).lower() != "none":
        try:
            copy_case_model(args.case_model, args.out)
        except (OSError, ValueError, KeyError) as exc:
            logger.error("case model %s: %s", args.case_model, exc)
            return 1
        logger.info(
            "case model %s copied (threshold %.3f)",
            args.case_model,
            CaseModel.load(args.case_model).threshold,
        )
        return 0
    (args.out / CASE_MODEL_FILENAME).unlink(missing_ok=True)
    return 0


def _export_checkpoints(args: argparse.Namespace) -> int:
    paths = _checkpoint_paths(args)
    if paths is None:
        return 2
    try:
        loaded = {step: _load(path) for step, path in paths.items()}
    except (FileNotFoundError, KeyError, RuntimeError) as exc:
        logger.error("cannot load checkpoints: %s", exc)
        return 1
    settings = _rotation_and_size(args)
    if settings is None:
        return 2
    rotate, input_size = settings
    for key in spec.MODEL_KEYS:
        net = loaded[key]
        if isinstance(net, InceptionUNet):
            net.set_rotate_tta(rotate)
    if rotate > 0:
        logger.info("base models average their maps over rotations of +-%g degrees", rotate)
    try:
        report = export_repository(
            {key: loaded[key] for key in spec.MODEL_KEYS},
            loaded[WEIGHT_STEP],
            args.out,
            input_size,
            version=args.version,
            opset=args.opset,
            tolerance=args.tolerance,
            max_batch_size=args.max_batch_size,
            kind=args.kind,
        )
    except (ExportError, ValueError) as exc:
        logger.error("export failed: %s", exc)
        return 1
    for name, diff in report.max_abs_diff.items():
        size = report.file_bytes.get(name)
        logger.info("%-18s max |onnx - torch| %.2e%s", name, diff, f"  {size / 1e6:.2f} MB" if size else "")
    if _install_case_model(args) != 0:
        return 1
    logger.info("wrote %s (version %s, input size %d)", report.root, report.version, report.input_size)
    return 0
