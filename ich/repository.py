"""The Triton model repository on disk: ``config.pbtxt`` files, ONNX weights and the ``VERSION`` file.

One module writes and reads the repository so that the exporter (which writes it), the embedded runner and
the local-Triton rendering (which read it) cannot drift apart. Configurations are ``ModelConfig`` protobuf
messages from ``tritonclient.grpc.model_config_pb2`` serialised with protobuf's text format: the very schema
``tritonserver`` parses, so a file this module writes is one Triton accepts, and no hand-written parser can
disagree with Triton about what a file means.

Layout (docs/ARCHITECTURE.md)::

    root/VERSION
    root/<model>/config.pbtxt
    root/<model>/<version>/model.onnx      (not for the ensemble)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from ich import spec

__all__ = [
    "CONFIG_FILENAME",
    "DEFAULT_MAX_BATCH_SIZE",
    "MODEL_FILENAME",
    "ONNX_PLATFORM",
    "VERSION_FILENAME",
    "RepositoryError",
    "base_model_config",
    "config_path",
    "ensemble_config",
    "ensemble_step_models",
    "input_size_of",
    "missing_files",
    "model_dir",
    "model_file",
    "model_names",
    "read_config",
    "read_version",
    "require_complete",
    "step_model_file",
    "weighting_model_config",
    "write_config",
    "write_repository_configs",
    "write_version",
]

logger = logging.getLogger(__name__)

CONFIG_FILENAME = "config.pbtxt"
MODEL_FILENAME = "model.onnx"
VERSION_FILENAME = "VERSION"
ONNX_PLATFORM = "onnxruntime_onnx"
ENSEMBLE_PLATFORM = "ensemble"
#: Slices per request a model accepts; the engines split longer series into batches of at most this size.
DEFAULT_MAX_BATCH_SIZE = 16
#: Version folder the exporter writes; Triton's default version policy serves the latest one.
DEFAULT_MODEL_VERSION = 1
#: Placeholder in the ensemble's (otherwise empty) version folder, so that git keeps the folder.
ENSEMBLE_VERSION_MARKER = ".gitkeep"

KindName = str


class RepositoryError(RuntimeError):
    """The repository is missing a file or holds a configuration that cannot be used."""


# --------------------------------------------------------------------------------------------- paths


def model_dir(root: Path, name: str) -> Path:
    """Folder of one model (``root/<name>``)."""
    return Path(root) / name


def config_path(root: Path, name: str) -> Path:
    """Path of a model's ``config.pbtxt``."""
    return model_dir(root, name) / CONFIG_FILENAME


def model_file(root: Path, name: str, version: int = DEFAULT_MODEL_VERSION) -> Path:
    """Path of a model's ONNX weights for one version (``root/<name>/<version>/model.onnx``)."""
    return model_dir(root, name) / str(version) / MODEL_FILENAME


def model_names() -> list[str]:
    """All models of the repository in dependency order: the five base models, the weighting, the per-slice
    maxima, the ensemble."""
    return [
        *(spec.BASE_MODELS[key] for key in spec.MODEL_KEYS),
        spec.WEIGHTING_MODEL,
        spec.PROB_MAX_MODEL,
        spec.ENSEMBLE_MODEL,
    ]


# ------------------------------------------------------------------------------------------- writers


def _input(name: str, dims: Sequence[int]) -> mc.ModelInput:
    return mc.ModelInput(name=name, data_type=mc.TYPE_FP32, dims=list(dims))


def _output(name: str, dims: Sequence[int]) -> mc.ModelOutput:
    return mc.ModelOutput(name=name, data_type=mc.TYPE_FP32, dims=list(dims))


def _check_size(input_size: int, max_batch_size: int) -> None:
    if input_size <= 0:
        raise ValueError(f"input_size must be positive, got {input_size}")
    if max_batch_size <= 0:
        # Every model is batched: the ensemble and the engines rely on a leading batch dimension.
        raise ValueError(f"max_batch_size must be positive, got {max_batch_size}")


def _instance_group(kind: KindName) -> mc.ModelInstanceGroup:
    try:
        kind_value = mc.ModelInstanceGroup.Kind.Value(kind)
    except ValueError as exc:
        raise ValueError(f"unknown instance kind {kind!r} (KIND_GPU, KIND_CPU, ...)") from exc
    return mc.ModelInstanceGroup(count=1, kind=kind_value)


def base_model_config(
    name: str,
    input_size: int,
    *,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    kind: KindName = "KIND_GPU",
) -> mc.ModelConfig:
    """Configuration of one base U-Net: ``IMAGE`` FP32 [4, S, S] -> ``PROB`` FP32 [1, S, S].

    Dynamic batching lets Triton merge slices of concurrent studies into one GPU batch.
    """
    _check_size(input_size, max_batch_size)
    config = mc.ModelConfig(
        name=name,
        platform=ONNX_PLATFORM,
        max_batch_size=max_batch_size,
        input=[_input(spec.IMAGE, [spec.IN_CHANNELS, input_size, input_size])],
        output=[_output(spec.PROB, [1, input_size, input_size])],
        instance_group=[_instance_group(kind)],
        dynamic_batching=mc.ModelDynamicBatching(),
    )
    return config


def weighting_model_config(
    input_size: int,
    *,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    kind: KindName = "KIND_GPU",
) -> mc.ModelConfig:
    """Configuration of ``ich_weighting``: five maps [1, S, S] -> ``WEIGHTS`` [5], ``FUSED``, ``SLICE_PROB``.

    The post-processing (opening) lives inside its ONNX graph so every engine applies the same one.
    """
    map_dims = [1, input_size, input_size]
    outputs = [
        _output(spec.WEIGHTS, [len(spec.MODEL_KEYS)]),
        _output(spec.FUSED, map_dims),
        _output(spec.SLICE_PROB, [1]),
    ]
    return _member_maps_model(spec.WEIGHTING_MODEL, input_size, max_batch_size, kind, outputs)


def prob_max_model_config(
    input_size: int,
    *,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    kind: KindName = "KIND_GPU",
) -> mc.ModelConfig:
    """Configuration of ``ich_prob_max``: the five maps [1, S, S] -> ``PROB_MAX`` [5], each map's maximum.

    Its graph (``ich.prob_max.prob_max_model``) is two operators; it lets the ensemble answer with 20 bytes
    per slice where the five maps take 500 kB at 160 px.
    """
    outputs = [_output(spec.PROB_MAX, [len(spec.MODEL_KEYS)])]
    return _member_maps_model(spec.PROB_MAX_MODEL, input_size, max_batch_size, kind, outputs)


def _member_maps_model(
    name: str, input_size: int, max_batch_size: int, kind: KindName, outputs: list[mc.ModelOutput]
) -> mc.ModelConfig:
    """An ONNX step model whose inputs are the five members' maps [1, S, S] (``PROB_<KEY>``)."""
    _check_size(input_size, max_batch_size)
    map_dims = [1, input_size, input_size]
    return mc.ModelConfig(
        name=name,
        platform=ONNX_PLATFORM,
        max_batch_size=max_batch_size,
        input=[_input(spec.WEIGHTING_INPUTS[key], map_dims) for key in spec.MODEL_KEYS],
        output=outputs,
        instance_group=[_instance_group(kind)],
        dynamic_batching=mc.ModelDynamicBatching(),
    )


def ensemble_config(input_size: int, *, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE) -> mc.ModelConfig:
    """Configuration of ``ich_ensemble``: IMAGE -> five base models -> ich_weighting and ich_prob_max.

    Each base model's ``PROB`` becomes the ensemble tensor ``PROB_<KEY>``, which feeds the weighting model's
    input of the same name and is also exposed as an ensemble output (for explanation in the result).
    ``PROB_MAX`` holds the maxima of those maps per slice, so a caller that needs no full map asks for it.
    """
    _check_size(input_size, max_batch_size)
    map_dims = [1, input_size, input_size]
    steps = [
        mc.ModelEnsembling.Step(
            model_name=spec.BASE_MODELS[key],
            model_version=-1,
            input_map={spec.IMAGE: spec.IMAGE},
            output_map={spec.PROB: spec.WEIGHTING_INPUTS[key]},
        )
        for key in spec.MODEL_KEYS
    ]
    steps.append(
        mc.ModelEnsembling.Step(
            model_name=spec.WEIGHTING_MODEL,
            model_version=-1,
            input_map={spec.WEIGHTING_INPUTS[key]: spec.WEIGHTING_INPUTS[key] for key in spec.MODEL_KEYS},
            output_map={name: name for name in (spec.WEIGHTS, spec.FUSED, spec.SLICE_PROB)},
        )
    )
    steps.append(
        mc.ModelEnsembling.Step(
            model_name=spec.PROB_MAX_MODEL,
            model_version=-1,
            input_map={spec.WEIGHTING_INPUTS[key]: spec.WEIGHTING_INPUTS[key] for key in spec.MODEL_KEYS},
            output_map={spec.PROB_MAX: spec.PROB_MAX},
        )
    )
    outputs = [
        _output(spec.FUSED, map_dims),
        _output(spec.SLICE_PROB, [1]),
        _output(spec.WEIGHTS, [len(spec.MODEL_KEYS)]),
        *(_output(spec.WEIGHTING_INPUTS[key], map_dims) for key in spec.MODEL_KEYS),
        _output(spec.PROB_MAX, [len(spec.MODEL_KEYS)]),
    ]
    return mc.ModelConfig(
        name=spec.ENSEMBLE_MODEL,
        platform=ENSEMBLE_PLATFORM,
        max_batch_size=max_batch_size,
        input=[_input(spec.IMAGE, [spec.IN_CHANNELS, input_size, input_size])],
        output=outputs,
        ensemble_scheduling=mc.ModelEnsembling(step=steps),
    )


def compact_ensemble_config(
    input_size: int, *, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
) -> mc.ModelConfig:
    """``ich_ensemble_compact``: ``ich_ensemble``'s steps, outputs FUSED, SLICE_PROB, WEIGHTS, PROB_MAX only.

    What a remote caller asks for every slice (about 100 kB a slice at 160 px, against 600 kB with the five
    maps); the member maps stay inside the server.
    """
    config = ensemble_config(input_size, max_batch_size=max_batch_size)
    config.name = spec.COMPACT_ENSEMBLE_MODEL
    kept = [t for t in config.output if t.name not in spec.WEIGHTING_INPUTS.values()]
    del config.output[:]
    config.output.extend(kept)
    return config


def write_config(root: Path, config: mc.ModelConfig) -> Path:
    """Write ``config`` as ``root/<config.name>/config.pbtxt`` (protobuf text format); return the path."""
    if not config.name:
        raise ValueError("a model configuration needs a name: Triton requires it to match the folder")
    path = config_path(root, config.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text_format.MessageToString(config), encoding="utf-8")
    if config.platform == ENSEMBLE_PLATFORM:
        # Triton refuses an ensemble without a version folder, even though the folder stays empty; the
        # marker file lets git keep the folder.
        version_dir = path.parent / str(DEFAULT_MODEL_VERSION)
        version_dir.mkdir(exist_ok=True)
        (version_dir / ENSEMBLE_VERSION_MARKER).touch()
    return path


def write_repository_configs(
    root: Path,
    input_size: int,
    *,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    kind: KindName = "KIND_GPU",
) -> list[Path]:
    """Write the configuration of all nine models (not the weights); return the paths written.

    The compact ensemble comes last and is not among ``model_names()``: it has no weights of its own, and a
    repository without it still serves (the Triton engine then asks ``ich_ensemble`` for everything).
    """
    configs = [
        *(
            base_model_config(spec.BASE_MODELS[key], input_size, max_batch_size=max_batch_size, kind=kind)
            for key in spec.MODEL_KEYS
        ),
        weighting_model_config(input_size, max_batch_size=max_batch_size, kind=kind),
        prob_max_model_config(input_size, max_batch_size=max_batch_size, kind=kind),
        ensemble_config(input_size, max_batch_size=max_batch_size),
        compact_ensemble_config(input_size, max_batch_size=max_batch_size),
    ]
    return [write_config(root, config) for config in configs]


def write_version(root: Path, version: str) -> Path:
    """Write the repository's model version (one line, reported as ``model_version`` by the gateway)."""
    version = version.strip()
    if not version or any(ch.isspace() for ch in version):
        raise ValueError(f"model version must be a non-empty string without spaces, got {version!r}")
    path = Path(root) / VERSION_FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(version + "\n", encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------- readers


def read_config(path: Path) -> mc.ModelConfig:
    """Parse a ``config.pbtxt`` (or the model folder holding one) into a ``ModelConfig``.

    Raises:
        RepositoryError: the file is missing or is not valid ModelConfig text format.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG_FILENAME
    if not path.is_file():
        raise RepositoryError(f"model configuration not found: {path}")
    config = mc.ModelConfig()
    try:
        text_format.Parse(path.read_text(encoding="utf-8"), config)
    except text_format.ParseError as exc:
        raise RepositoryError(f"{path}: not a valid Triton model configuration: {exc}") from exc
    if not config.name:
        # Triton names a model after its folder when the config omits the name; do the same.
        config.name = path.parent.name
    return config


def read_version(root: Path) -> str:
    """The model version from ``root/VERSION``; ``"unversioned"`` when the file is absent.

    A missing VERSION does not stop serving (tests build repositories without one), but the result then says
    plainly that the weights are not traceable.
    """
    path = Path(root) / VERSION_FILENAME
    if not path.is_file():
        logger.warning("model repository %s has no VERSION file", root)
        return "unversioned"
    text = path.read_text(encoding="utf-8").strip()
    return text.splitlines()[0].strip() if text else "unversioned"


def input_size_of(config: mc.ModelConfig, tensor: str = spec.IMAGE) -> int:
    """Input size S from an input ``[C, S, S]`` of ``config``.

    Raises:
        RepositoryError: the tensor is absent or its dims are not ``[C, S, S]`` with S fixed.
    """
    for tensor_config in config.input:
        if tensor_config.name == tensor:
            dims = list(tensor_config.dims)
            if len(dims) != 3 or dims[1] != dims[2] or dims[1] <= 0:
                raise RepositoryError(
                    f"model {config.name}: input {tensor} has dims {dims}; expected [C, S, S] with fixed S"
                )
            return int(dims[1])
    raise RepositoryError(f"model {config.name} has no input {tensor}")


def ensemble_step_models(config: mc.ModelConfig) -> list[str]:
    """Names of the models an ensemble's steps call, in step order."""
    if config.platform != ENSEMBLE_PLATFORM:
        raise RepositoryError(f"model {config.name} is not an ensemble (platform {config.platform!r})")
    return [step.model_name for step in config.ensemble_scheduling.step]


def _latest_version(root: Path, name: str) -> int | None:
    folder = model_dir(root, name)
    if not folder.is_dir():
        return None
    versions = [int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit()]
    return max(versions) if versions else None


def step_model_file(root: Path, name: str, version: int = -1) -> Path:
    """ONNX file a step runs: the given version, or the highest numbered folder when ``version`` <= 0.

    Raises:
        RepositoryError: no version folder or no ``model.onnx`` in it.
    """
    if version <= 0:
        latest = _latest_version(root, name)
        if latest is None:
            raise RepositoryError(f"model {name}: no version folder under {model_dir(root, name)}")
        version = latest
    path = model_file(root, name, version)
    if not path.is_file():
        raise RepositoryError(f"model {name}: weights not found at {path}")
    return path


def missing_files(root: Path, names: Iterable[str] | None = None) -> list[str]:
    """Human-readable list of what ``root`` lacks to serve the ensemble (empty when complete)."""
    root = Path(root)
    problems: list[str] = []
    if not root.is_dir():
        return [f"model repository {root} does not exist"]
    for name in names if names is not None else model_names():
        if not config_path(root, name).is_file():
            problems.append(f"{name}/{CONFIG_FILENAME} is missing")
            continue
        if name == spec.ENSEMBLE_MODEL:
            if _latest_version(root, name) is None:
                problems.append(f"{name}: no version folder (Triton needs an empty {name}/1/)")
            continue
        try:
            step_model_file(root, name)
        except RepositoryError as exc:
            problems.append(str(exc))
    return problems


def require_complete(root: Path) -> None:
    """Raise one ``RepositoryError`` listing everything missing, so the operator fixes it in one go."""
    problems = missing_files(root)
    if problems:
        raise RepositoryError(f"model repository {root} is incomplete: " + "; ".join(problems))
