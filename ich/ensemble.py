"""The ensemble run in-process: ``ich_ensemble``'s steps interpreted and executed with onnxruntime.

The runner reads the very ``config.pbtxt`` Triton serves and follows its ``ensemble_scheduling`` steps and
their input/output maps, instead of re-stating the wiring in Python. The embedded engine and
``ich-model evaluate`` therefore measure exactly the ensemble Triton would serve, and a change of wiring in
the repository reaches every engine at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tritonclient.grpc import model_config_pb2 as mc

from ich import repository, spec
from ich.repository import RepositoryError
from ich.weights_manifest import verify_manifest

__all__ = [
    "EnsembleOutput",
    "EnsembleRunner",
    "RepositoryError",
    "RunCancelledError",
    "RunControl",
    "check_images",
    "concat_outputs",
    "output_from_tensors",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EnsembleOutput:
    """What the ensemble returns for N slices (float32 arrays).

    Attributes:
        fused: ``[N, 1, S, S]`` the weighted map after the weight model's post-processing.
        slice_prob: ``[N]`` per-slice probability (max of FUSED after post-processing).
        weights: ``[N, 5]`` per-slice member weights, columns in ``spec.MODEL_KEYS`` order.
        probs: member key -> ``[N, 1, S, S]`` each base model's sigmoid map.
        prob_max: ``[N, 5]`` each map's maximum per slice, columns in ``spec.MODEL_KEYS`` order (the
            ensemble's ``PROB_MAX``; from the maps when the repository's ensemble lacks it).
        map_slices: the slices whose ``probs`` are the models' maps; ``None``: every slice. An engine that
            fetched the maps only where the scoring reads them (``ich.member_maps``) leaves zeros elsewhere.
    """

    fused: np.ndarray
    slice_prob: np.ndarray
    weights: np.ndarray
    probs: dict[str, np.ndarray]
    prob_max: np.ndarray | None = None
    map_slices: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.prob_max is None:
            n = int(self.slice_prob.shape[0])
            maxima = [np.asarray(self.probs[key]).reshape(n, -1).max(axis=1) for key in spec.MODEL_KEYS]
            object.__setattr__(self, "prob_max", np.stack(maxima, axis=1).astype(np.float32, copy=False))

    @property
    def num_slices(self) -> int:
        """Number of slices N."""
        return int(self.slice_prob.shape[0])


def output_from_tensors(
    tensors: Mapping[str, np.ndarray], *, map_slices: np.ndarray | None = None
) -> EnsembleOutput:
    """Build an ``EnsembleOutput`` from the ensemble's output tensors named as in ``ich.spec``.

    Shared by both engines so that the Triton engine and the embedded one shape their results identically.
    ``PROB_MAX`` is optional (a repository exported before it gets the maxima from the maps).

    Raises:
        KeyError: an ensemble output is missing.
    """
    n = int(tensors[spec.SLICE_PROB].shape[0])
    prob_max = tensors.get(spec.PROB_MAX)
    return EnsembleOutput(
        fused=np.asarray(tensors[spec.FUSED], dtype=np.float32),
        slice_prob=np.asarray(tensors[spec.SLICE_PROB], dtype=np.float32).reshape(n),
        weights=np.asarray(tensors[spec.WEIGHTS], dtype=np.float32).reshape(n, len(spec.MODEL_KEYS)),
        probs={
            key: np.asarray(tensors[spec.WEIGHTING_INPUTS[key]], dtype=np.float32) for key in spec.MODEL_KEYS
        },
        prob_max=None
        if prob_max is None
        else np.asarray(prob_max, dtype=np.float32).reshape(n, len(spec.MODEL_KEYS)),
        map_slices=map_slices,
    )


def check_images(images: np.ndarray, input_size: int) -> np.ndarray:
    """``images`` as the contiguous float32 ``[N, 4, S, S]`` batch both engines send, or a clear error.

    Shared by both engines so that a wrong input fails the same way, before any inference (and, on Triton,
    before the network), instead of as an onnxruntime or gRPC error.

    Raises:
        ValueError: ``images`` is not ``[N, 4, input_size, input_size]``, or N is 0.
    """
    expected = (spec.IN_CHANNELS, input_size, input_size)
    if images.ndim != 4 or tuple(images.shape[1:]) != expected:
        dims = ", ".join(map(str, expected))
        raise ValueError(f"images must have shape [N, {dims}], got {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError("images holds no slice")
    return np.ascontiguousarray(images, dtype=np.float32)


def concat_outputs(parts: Sequence[EnsembleOutput]) -> EnsembleOutput:
    """The outputs of consecutive runs over slices in order, as one output (``map_slices`` re-indexed)."""
    if not parts:
        raise ValueError("no output to join")
    if len(parts) == 1:
        return parts[0]
    map_slices = None
    if any(p.map_slices is not None for p in parts):
        offsets = np.cumsum([0, *(p.num_slices for p in parts[:-1])])
        map_slices = np.concatenate(
            [
                offset + (np.arange(p.num_slices) if p.map_slices is None else np.asarray(p.map_slices))
                for offset, p in zip(offsets, parts, strict=True)
            ]
        ).astype(np.int64)
    return EnsembleOutput(
        fused=np.concatenate([p.fused for p in parts]),
        slice_prob=np.concatenate([p.slice_prob for p in parts]),
        weights=np.concatenate([p.weights for p in parts]),
        probs={key: np.concatenate([p.probs[key] for p in parts]) for key in spec.MODEL_KEYS},
        prob_max=np.concatenate([p.prob_max for p in parts if p.prob_max is not None]),
        map_slices=map_slices,
    )


class RunCancelledError(RuntimeError):
    """The run was cancelled through its ``RunControl`` before it finished."""


class RunControl:
    """Stops one ``EnsembleRunner.run`` from another thread, and reports its progress.

    ``cancel`` ends the onnxruntime call in progress (``RunOptions.terminate``: onnxruntime checks it between
    operators) and no later step or batch starts, so a run whose caller has gone stops within one operator
    instead of finishing the whole series.

    Args:
        on_batch: called with the number of slices of each batch once it is done (metrics).
    """

    def __init__(self, on_batch: Callable[[int], None] | None = None) -> None:
        self.run_options = ort.RunOptions()
        self.on_batch = on_batch
        self._cancelled = threading.Event()

    @property
    def cancelled(self) -> bool:
        """Whether ``cancel`` was called."""
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Ask the run to stop as soon as it can (thread-safe, idempotent)."""
        self._cancelled.set()
        self.run_options.terminate = True

    def check(self) -> None:
        """Raise ``RunCancelledError`` once cancelled."""
        if self.cancelled:
            raise RunCancelledError("the ensemble run was cancelled")


@dataclass(frozen=True)
class _Step:
    """One ensemble step bound to its onnxruntime session."""

    model_name: str
    session: ort.InferenceSession
    input_map: dict[str, str]  # model input name -> ensemble tensor name
    output_map: dict[str, str]  # model output name -> ensemble tensor name


_SHARED_ARENA_LOCK = threading.Lock()
_shared_arena_registered = False


def _register_shared_arena() -> None:
    """One CPU memory arena for every session of the process (onnxruntime's environment allocator).

    Each session otherwise keeps an arena of its own sized to its largest run, and the five base models
    run one after another: measured at 160 px, batch 4, five sessions held 1.1 GiB of arenas, one shared
    arena 0.3 GiB, at the same speed.
    """
    global _shared_arena_registered
    with _SHARED_ARENA_LOCK:
        if _shared_arena_registered:
            return
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        try:
            ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))
        except Exception as exc:  # registered already by another user of onnxruntime in this process
            logger.debug("shared onnxruntime arena not registered here: %s", exc)
        _shared_arena_registered = True


def _read_ensemble(root: Path) -> tuple[mc.ModelConfig, list[mc.ModelEnsembling.Step]]:
    """The ensemble's config and its steps in run order, once every file they need is there and intact.

    Raises:
        RepositoryError: a config or ONNX file is missing (all listed), or the files differ from
            ``SHA256SUMS``.
    """
    ensemble = repository.read_config(repository.config_path(root, spec.ENSEMBLE_MODEL))
    ordered = _order_steps(ensemble)
    names = list(dict.fromkeys(step.model_name for step in ordered))
    problems = repository.missing_files(root, names)
    if problems:
        raise RepositoryError(f"model repository {root} is incomplete: " + "; ".join(problems))
    verify_manifest(root)  # a swapped or damaged ONNX file loads and infers without complaint
    return ensemble, ordered


def _load_steps(
    root: Path,
    ordered: list[mc.ModelEnsembling.Step],
    options: ort.SessionOptions,
    providers: list[str | tuple[str, dict[str, str]]],
) -> tuple[list[_Step], dict[str, mc.ModelConfig], dict[str, str]]:
    """One session per model and version the steps call (shared by steps that call the same one), each
    checked against its config; the steps, the models' configs and the version directory each came from.

    Raises:
        RepositoryError: a model's ONNX graph does not have the tensors its config declares.
    """
    sessions: dict[tuple[str, int], ort.InferenceSession] = {}
    step_configs: dict[str, mc.ModelConfig] = {}
    steps: list[_Step] = []
    versions: dict[str, str] = {}
    for step in ordered:
        config = step_configs.get(step.model_name) or repository.read_config(
            repository.config_path(root, step.model_name)
        )
        step_configs[step.model_name] = config
        key = (step.model_name, int(step.model_version))
        if key not in sessions:
            path = repository.step_model_file(root, step.model_name, int(step.model_version))
            versions[step.model_name] = path.parent.name
            logger.info("loading %s from %s", step.model_name, path)
            sessions[key] = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        _check_step(step, config, sessions[key])
        steps.append(
            _Step(
                model_name=step.model_name,
                session=sessions[key],
                input_map=dict(step.input_map),
                output_map=dict(step.output_map),
            )
        )
    return steps, step_configs, versions


def _session_options(intra_op_threads: int | None) -> ort.SessionOptions:
    _register_shared_arena()
    options = ort.SessionOptions()
    options.add_session_config_entry("session.use_env_allocators", "1")
    if intra_op_threads is not None:
        if intra_op_threads < 0:
            raise ValueError(f"intra_op_threads must be >= 0 (0 = default), got {intra_op_threads}")
        options.intra_op_num_threads = intra_op_threads
    # Steps run one after another; parallelism belongs inside each operator.
    options.inter_op_num_threads = 1
    # The gateway decodes and preprocesses on the same cores: idle onnxruntime threads that spin steal them
    # (measured on 2 shared cores: 30 slices x 5 members took 1.8 s spinning, 1.05 s without).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # Chosen by measurement (2 shared cores, 160 px, batch 4): ORT_ENABLE_ALL was as fast as or faster than
    # EXTENDED and BASIC; the arena and the memory pattern on (arena off: about 40% slower); intra-op
    # threads left at onnxruntime's default (one per core).
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def _order_steps(config: mc.ModelConfig) -> list[mc.ModelEnsembling.Step]:
    """Steps in an order where every input exists before it is read (Triton runs them by data readiness)."""
    available = {tensor.name for tensor in config.input}
    pending = list(config.ensemble_scheduling.step)
    ordered: list[mc.ModelEnsembling.Step] = []
    while pending:
        ready = [s for s in pending if set(s.input_map.values()) <= available]
        if not ready:
            missing = sorted({v for s in pending for v in s.input_map.values()} - available)
            raise RepositoryError(
                f"ensemble {config.name}: steps read tensors nothing produces: {', '.join(missing)}"
            )
        for step in ready:
            ordered.append(step)
            available.update(step.output_map.values())
            pending.remove(step)
    absent = [t.name for t in config.output if t.name not in available]
    if absent:
        raise RepositoryError(f"ensemble {config.name}: no step produces output(s) {', '.join(absent)}")
    return ordered


class EnsembleRunner:
    """Runs ``ich_ensemble`` from a model repository with onnxruntime on CPU.

    Build it with ``from_repository``. ``run`` is thread-safe for concurrent callers (onnxruntime sessions
    are), so one runner serves a whole gateway process.
    """

    def __init__(
        self,
        *,
        ensemble: mc.ModelConfig,
        steps: list[_Step],
        step_configs: dict[str, mc.ModelConfig],
        versions: dict[str, str],
        input_size: int,
        max_batch_size: int,
        model_version: str,
    ) -> None:
        self.ensemble_config = ensemble
        self._steps = steps
        self.step_configs = step_configs
        #: model name -> version folder the runner loaded (for ``GET /v1/models``).
        self.versions = versions
        self.input_size = input_size
        self.max_batch_size = max_batch_size
        self.model_version = model_version

    @classmethod
    def from_repository(
        cls,
        root: Path,
        *,
        intra_op_threads: int | None = None,
        providers: Sequence[str | tuple[str, dict[str, str]]] | None = None,
    ) -> EnsembleRunner:
        """Load the ensemble of ``root`` and one onnxruntime session per model its steps call.

        Args:
            root: the model repository (``model_repository/`` layout).
            intra_op_threads: onnxruntime threads per operator; ``None`` leaves onnxruntime's default (all
                cores), a small number leaves cores to the gateway's decoding when both share a machine.
            providers: onnxruntime execution providers (default: the CPU); ``bench/gpu.sh`` passes
                TensorRT and CUDA to measure the same ensemble on a GPU.

        Raises:
            RepositoryError: the repository lacks a config or ONNX file (all problems listed at once), its
                ONNX files differ from its ``SHA256SUMS``, or a model's ONNX graph does not have the tensors
                its config declares.
        """
        root = Path(root)
        ensemble, ordered = _read_ensemble(root)
        steps, step_configs, versions = _load_steps(
            root, ordered, _session_options(intra_op_threads), list(providers or ["CPUExecutionProvider"])
        )
        input_size = repository.input_size_of(ensemble)
        batch_limits = [ensemble.max_batch_size, *(c.max_batch_size for c in step_configs.values())]
        if min(batch_limits) <= 0:
            raise RepositoryError("every model of the ensemble must be batched (max_batch_size > 0)")
        return cls(
            ensemble=ensemble,
            steps=steps,
            step_configs=step_configs,
            versions=versions,
            input_size=input_size,
            max_batch_size=min(batch_limits),
            model_version=repository.read_version(root),
        )

    def run(
        self, images: np.ndarray, control: RunControl | None = None, *, batch_size: int | None = None
    ) -> EnsembleOutput:
        """Run the ensemble on ``images`` ``[N, 4, S, S]`` in batches of at most ``max_batch_size``.

        Args:
            images: the preprocessed slices.
            control: lets another thread cancel the run and hears of each finished batch.
            batch_size: slices per onnxruntime run, when fewer than ``max_batch_size`` are wanted
                (onnxruntime's memory arena grows with the batch).

        Raises:
            ValueError: ``images`` does not have the shape the repository's models take, or N is 0.
            RunCancelledError: ``control`` was cancelled before the run finished.
        """
        images = check_images(images, self.input_size)
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        size = min(batch_size or self.max_batch_size, self.max_batch_size)
        parts = []
        for start in range(0, images.shape[0], size):
            batch = images[start : start + size]
            parts.append(output_from_tensors(self._run_batch(batch, control)))
            if control is not None and control.on_batch is not None:
                control.on_batch(int(batch.shape[0]))
        return concat_outputs(parts)

    def warm_up(self, batch_size: int | None = None) -> None:
        """Run every step once on a blank batch of the size ``run`` will use.

        onnxruntime prepares a session on its first runs (kernel choice, weight pre-packing, the arena's
        blocks for that batch size); done here, before the service says it is ready, the first study costs
        what the next ones cost.
        """
        size = min(batch_size or self.max_batch_size, self.max_batch_size)
        blank = np.zeros((size, spec.IN_CHANNELS, self.input_size, self.input_size), dtype=np.float32)
        for _ in range(2):  # the second run still differs from the first (memory pattern planning)
            self._run_batch(blank, None)

    def _run_batch(self, images: np.ndarray, control: RunControl | None) -> dict[str, np.ndarray]:
        tensors: dict[str, np.ndarray] = {self.ensemble_config.input[0].name: images}
        options = control.run_options if control is not None else None
        for step in self._steps:
            if control is not None:
                control.check()
            feeds = {model_in: tensors[ens] for model_in, ens in step.input_map.items()}
            wanted = list(step.output_map)
            try:
                results = step.session.run(wanted, feeds, options)
            except Exception:
                if control is not None:
                    control.check()  # onnxruntime's own error for a terminated run says less
                raise
            for model_out, value in zip(wanted, results, strict=True):
                tensors[step.output_map[model_out]] = np.asarray(value)
        return {t.name: tensors[t.name] for t in self.ensemble_config.output}


def _check_step(step: mc.ModelEnsembling.Step, config: mc.ModelConfig, session: ort.InferenceSession) -> None:
    """Fail at load time, naming the tensor, when a step, its config and its ONNX graph disagree."""
    graph_inputs = {i.name for i in session.get_inputs()}
    graph_outputs = {o.name for o in session.get_outputs()}
    config_inputs = {t.name for t in config.input}
    config_outputs = {t.name for t in config.output}
    for name in step.input_map:
        if name not in config_inputs or name not in graph_inputs:
            raise RepositoryError(
                f"model {step.model_name}: step maps input {name!r}, absent from config or ONNX"
            )
    for name in step.output_map:
        if name not in config_outputs or name not in graph_outputs:
            raise RepositoryError(
                f"model {step.model_name}: step maps output {name!r}, absent from config or ONNX"
            )
    unfed = graph_inputs - set(step.input_map)
    if unfed:
        raise RepositoryError(
            f"model {step.model_name}: ONNX inputs {sorted(unfed)} are not fed by the ensemble"
        )
