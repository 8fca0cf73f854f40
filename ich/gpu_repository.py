"""The GPU rendering of a model repository: Triton's onnxruntime backend with TensorRT at FP16, warmed up.

``render_gpu_repository(source, target)`` writes a copy of ``source`` in which every ONNX model's config
asks for

- the TensorRT execution accelerator at FP16 (``optimization.execution_accelerators``), with its engine
  cache in the model's folder so a restart does not rebuild the engines;
- ``instance_count`` instances on the GPU and dynamic batching with ``preferred_batch_size`` and a
  ``max_queue_delay_microseconds`` (defaults chosen for one GPU serving studies of 30 to 300 slices:
  the slices of one study arrive together, so a short delay fills the batch);
- a ``model_warmup`` of a blank batch of 1 and one of ``max_batch_size`` per model, so Triton builds the
  TensorRT engines (for the whole range of batches) and allocates before it reports the model ready (the
  first study then costs what the next ones cost).

Ensembles, ``VERSION``, the case model and the checksum file are copied unchanged; the ONNX files are
copied byte for byte (the checksums still hold). The configs are protobuf text that
``tritonclient.grpc.model_config_pb2`` parses: a test renders the shipped repository and checks them
field by field. ``python -m ich.gpu_repository SOURCE TARGET`` renders from the command line.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from ich import repository
from ich.repository import RepositoryError

__all__ = ["GpuOptions", "gpu_config", "render_gpu_repository"]

#: TensorRT's workspace per engine (bytes): enough for these U-Nets at batch 64 and 160-256 px.
WORKSPACE_BYTES = 2 << 30


class GpuOptions:
    """How each ONNX model is served on the GPU.

    Args:
        instance_count: model instances per GPU (two let one copy in while the other computes).
        preferred_batch_sizes: batches the dynamic batcher aims for (within ``max_batch_size``).
        max_queue_delay_us: longest wait for a fuller batch, microseconds.
        precision: TensorRT precision mode, ``FP16`` or ``FP32``.
        warmup: add ``model_warmup`` (blank batches of 1 and of ``max_batch_size``).
    """

    def __init__(
        self,
        *,
        instance_count: int = 2,
        preferred_batch_sizes: Sequence[int] = (16, 32, 64),
        max_queue_delay_us: int = 2000,
        precision: str = "FP16",
        warmup: bool = True,
    ) -> None:
        if instance_count < 1:
            raise ValueError(f"instance_count must be >= 1, got {instance_count}")
        if max_queue_delay_us < 0:
            raise ValueError(f"max_queue_delay_us must be >= 0, got {max_queue_delay_us}")
        if precision not in ("FP16", "FP32"):
            raise ValueError(f"precision must be FP16 or FP32, got {precision!r}")
        self.instance_count = instance_count
        self.preferred_batch_sizes = tuple(int(b) for b in preferred_batch_sizes)
        self.max_queue_delay_us = max_queue_delay_us
        self.precision = precision
        self.warmup = warmup


def _warmups(config: mc.ModelConfig) -> list[mc.ModelWarmup]:
    """A blank batch of 1 and one of ``max_batch_size``: TensorRT's shape profile then spans every batch
    the dynamic batcher can form, so no engine is rebuilt while studies wait."""
    inputs = {
        tensor.name: mc.ModelWarmup.Input(data_type=tensor.data_type, dims=list(tensor.dims), zero_data=True)
        for tensor in config.input
    }
    sizes = sorted({1, max(1, config.max_batch_size)})
    return [mc.ModelWarmup(name=f"blank_batch_{size}", batch_size=size, inputs=inputs) for size in sizes]


def gpu_config(
    config: mc.ModelConfig, options: GpuOptions, max_batch_size: int | None = None
) -> mc.ModelConfig:
    """``config`` (an ONNX model's) served by Triton's onnxruntime backend on the GPU with TensorRT."""
    gpu = mc.ModelConfig()
    gpu.CopyFrom(config)
    gpu.platform = repository.ONNX_PLATFORM
    gpu.ClearField("backend")
    if max_batch_size is not None:
        gpu.max_batch_size = max_batch_size
    del gpu.instance_group[:]
    gpu.instance_group.append(
        mc.ModelInstanceGroup(count=options.instance_count, kind=mc.ModelInstanceGroup.KIND_GPU)
    )
    batches = [b for b in options.preferred_batch_sizes if b <= gpu.max_batch_size] or [gpu.max_batch_size]
    gpu.dynamic_batching.CopyFrom(
        mc.ModelDynamicBatching(
            preferred_batch_size=batches, max_queue_delay_microseconds=options.max_queue_delay_us
        )
    )
    accelerator = mc.ModelOptimizationPolicy.ExecutionAccelerators.Accelerator(
        name="tensorrt",
        parameters={
            "precision_mode": options.precision,
            "max_workspace_size_bytes": str(WORKSPACE_BYTES),
            "trt_engine_cache_enable": "1",
            "trt_engine_cache_path": f"/tmp/ich-trt-cache/{config.name}",
        },
    )
    accelerators = gpu.optimization.execution_accelerators.gpu_execution_accelerator
    del accelerators[:]
    accelerators.append(accelerator)
    del gpu.model_warmup[:]
    if options.warmup:
        gpu.model_warmup.extend(_warmups(gpu))
    return gpu


def render_gpu_repository(
    source: Path, target: Path, options: GpuOptions | None = None, *, max_batch_size: int | None = None
) -> Path:
    """Write the GPU rendering of repository ``source`` into ``target`` (created).

    Args:
        max_batch_size: raise (or lower) every model's and ensemble's ``max_batch_size`` (a GPU takes 64
            slices where the CPU default is 16).

    Raises:
        RepositoryError: ``source`` holds no model, or a model of a platform other than ONNX or ensemble.
    """
    options = options or GpuOptions()
    source, target = Path(source).resolve(), Path(target)
    models = sorted(p.parent for p in source.glob(f"*/{repository.CONFIG_FILENAME}"))
    if not models:
        raise RepositoryError(f"no model (*/config.pbtxt) in {source}")
    target.mkdir(parents=True, exist_ok=True)
    for model_dir in models:
        config = repository.read_config(model_dir)
        destination = target / model_dir.name
        shutil.copytree(model_dir, destination, dirs_exist_ok=True)
        if config.platform == repository.ENSEMBLE_PLATFORM:
            if max_batch_size is not None:
                config.max_batch_size = max_batch_size
            rendered = config
        elif config.platform == repository.ONNX_PLATFORM or config.backend in ("onnxruntime", "python"):
            rendered = gpu_config(config, options, max_batch_size)
        else:
            raise RepositoryError(f"model {config.name}: cannot render platform {config.platform!r} for GPU")
        (destination / repository.CONFIG_FILENAME).write_text(text_format.MessageToString(rendered))
    for extra in source.iterdir():
        if extra.is_file():
            shutil.copyfile(extra, target / extra.name)
    return target


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ich.gpu_repository", description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--queue-delay-us", type=int, default=2000)
    parser.add_argument("--precision", choices=("FP16", "FP32"), default="FP16")
    parser.add_argument("--no-warmup", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: render SOURCE into TARGET."""
    args = _parse_args(argv)
    options = GpuOptions(
        instance_count=args.instances,
        max_queue_delay_us=args.queue_delay_us,
        precision=args.precision,
        warmup=not args.no_warmup,
    )
    try:
        render_gpu_repository(args.source, args.target, options, max_batch_size=args.max_batch_size)
    except (OSError, ValueError, RepositoryError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    sys.stdout.write(f"{args.target}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
