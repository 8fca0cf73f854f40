"""A tiny but complete model repository for engine tests, built without torch.

Each base model is a 1x1 convolution followed by a sigmoid with its own weights, and the weight model
computes softmax weights from the mean of each map, fuses the five maps with them and takes the maximum.
The members differ from one another and the weights are not symmetric, so a runner that wires a step to
the wrong tensor gives different numbers than ``reference_outputs`` (the same maths in numpy).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ich import repository, spec
from ich.prob_max import prob_max_model

OPSET = 17
IR_VERSION = 8


@dataclass(frozen=True)
class TinyParams:
    """The numbers inside the tiny graphs, so tests can recompute the outputs in numpy."""

    conv_weights: dict[str, np.ndarray]  # key -> [4] float32
    conv_bias: dict[str, float]
    mix: np.ndarray  # [5] float32: weight logits = mix * mean(map) + offset
    offset: np.ndarray  # [5] float32


def default_params() -> TinyParams:
    """Fixed, distinct parameters for the five members (deterministic: tests compare across engines)."""
    rng = np.random.default_rng(20261129)
    weights = {key: rng.normal(0.0, 1.5, size=4).astype(np.float32) for key in spec.MODEL_KEYS}
    bias = {key: float(b) for key, b in zip(spec.MODEL_KEYS, np.linspace(-1.0, 1.0, 5), strict=True)}
    return TinyParams(
        conv_weights=weights,
        conv_bias=bias,
        mix=np.array([3.0, -2.0, 1.0, 0.5, -1.0], dtype=np.float32),
        offset=np.array([0.2, 0.0, -0.3, 0.1, 0.4], dtype=np.float32),
    )


def _save(model: onnx.ModelProto, path: Path) -> None:
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def base_model(key: str, size: int, params: TinyParams) -> onnx.ModelProto:
    """``IMAGE`` [N, 4, S, S] -> ``PROB`` [N, 1, S, S] = sigmoid(1x1 conv)."""
    w = params.conv_weights[key].reshape(1, spec.IN_CHANNELS, 1, 1)
    b = np.array([params.conv_bias[key]], dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", [spec.IMAGE, "w", "b"], ["logits"]),
            helper.make_node("Sigmoid", ["logits"], [spec.PROB]),
        ],
        f"tiny_{key}",
        [helper.make_tensor_value_info(spec.IMAGE, TensorProto.FLOAT, ["N", spec.IN_CHANNELS, size, size])],
        [helper.make_tensor_value_info(spec.PROB, TensorProto.FLOAT, ["N", 1, size, size])],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def weighting_model(size: int, params: TinyParams) -> onnx.ModelProto:
    """Five maps -> ``WEIGHTS`` [N, 5], ``FUSED`` [N, 1, S, S], ``SLICE_PROB`` [N, 1]."""
    names = [spec.WEIGHTING_INPUTS[key] for key in spec.MODEL_KEYS]
    nodes = [
        helper.make_node("Concat", names, ["stack"], axis=1),  # [N, 5, S, S]
        helper.make_node("ReduceMean", ["stack"], ["mean"], axes=[2, 3], keepdims=0),  # [N, 5]
        helper.make_node("Mul", ["mean", "mix"], ["scaled"]),
        helper.make_node("Add", ["scaled", "offset"], ["logits"]),
        helper.make_node("Softmax", ["logits"], [spec.WEIGHTS], axis=1),
        helper.make_node("Unsqueeze", [spec.WEIGHTS, "axes23"], ["w4"]),  # [N, 5, 1, 1]
        helper.make_node("Mul", ["stack", "w4"], ["weighted"]),
        helper.make_node("ReduceSum", ["weighted", "axis1"], [spec.FUSED], keepdims=1),  # [N, 1, S, S]
        helper.make_node("ReduceMax", [spec.FUSED], ["peak"], axes=[2, 3], keepdims=0),  # [N, 1]
        helper.make_node("Identity", ["peak"], [spec.SLICE_PROB]),
    ]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 1, size, size]) for n in names]
    outputs = [
        helper.make_tensor_value_info(spec.WEIGHTS, TensorProto.FLOAT, ["N", len(spec.MODEL_KEYS)]),
        helper.make_tensor_value_info(spec.FUSED, TensorProto.FLOAT, ["N", 1, size, size]),
        helper.make_tensor_value_info(spec.SLICE_PROB, TensorProto.FLOAT, ["N", 1]),
    ]
    inits = [
        numpy_helper.from_array(params.mix, "mix"),
        numpy_helper.from_array(params.offset, "offset"),
        numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes23"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
    ]
    graph = helper.make_graph(nodes, "tiny_weighting", inputs, outputs, initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def build_tiny_repository(
    root: Path,
    *,
    size: int = 16,
    max_batch_size: int = 4,
    version: str = "tiny-test",
    params: TinyParams | None = None,
) -> Path:
    """Write a complete repository (configs, ONNX files, VERSION) under ``root`` and return ``root``.

    ``max_batch_size`` is small by default so that tests with a handful of slices exercise batching.
    """
    params = params or default_params()
    repository.write_repository_configs(root, size, max_batch_size=max_batch_size)
    for key in spec.MODEL_KEYS:
        _save(base_model(key, size, params), repository.model_file(root, spec.BASE_MODELS[key]))
    _save(weighting_model(size, params), repository.model_file(root, spec.WEIGHTING_MODEL))
    _save(prob_max_model(size), repository.model_file(root, spec.PROB_MAX_MODEL))
    repository.write_version(root, version)
    return root


def reference_outputs(images: np.ndarray, params: TinyParams | None = None) -> dict[str, np.ndarray]:
    """The tiny ensemble computed in numpy: an independent check on how a runner wires the steps."""
    params = params or default_params()
    x = images.astype(np.float64)
    probs = {}
    for key in spec.MODEL_KEYS:
        logits = np.einsum("nchw,c->nhw", x, params.conv_weights[key].astype(np.float64))
        probs[key] = (1.0 / (1.0 + np.exp(-(logits + params.conv_bias[key]))))[:, None]
    stack = np.concatenate([probs[key] for key in spec.MODEL_KEYS], axis=1)
    logits = stack.mean(axis=(2, 3)) * params.mix + params.offset
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    weights = e / e.sum(axis=1, keepdims=True)
    fused = (stack * weights[:, :, None, None]).sum(axis=1, keepdims=True)
    return {
        "weights": weights,
        "fused": fused,
        "slice_prob": fused.max(axis=(1, 2, 3)),
        "prob_max": stack.max(axis=(2, 3)),
        **{f"prob_{key}": probs[key] for key in spec.MODEL_KEYS},
    }


def build_exported_repository(
    root: Path, *, size: int = 32, max_batch_size: int = 4, version: str = "tiny-export", seed: int = 0
) -> Path | None:
    """Tiny random networks of the real architecture, written by the real exporter (``training.export``).

    Proves the path the shipped weights take (PyTorch -> ONNX -> repository -> engines). Returns None when
    torch is not installed, so callers can fall back to ``build_tiny_repository``.
    """
    try:
        import torch

        from training import export
        from training.networks import InceptionUNet, WeightModel
    except ImportError:
        return None
    torch.manual_seed(seed)
    unets = {key: InceptionUNet(width=4, depth=2).eval() for key in spec.MODEL_KEYS}
    weight = WeightModel(hidden=4, opening=3)
    with torch.no_grad():  # its last layer starts at zero (a plain average); make the weights really vary
        weight.fc.weight.normal_(0.0, 1.0)
        weight.fc.bias.normal_(0.0, 1.0)
    export.export_repository(
        unets, weight.eval(), root, size, version=version, max_batch_size=max_batch_size, seed=seed
    )
    return root
