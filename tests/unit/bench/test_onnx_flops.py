"""bench.onnx_flops: 2 FLOPs per multiply-accumulate of Conv, ConvTranspose and MatMul, batch pinned to 1."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bench.onnx_flops import graph_flops

ROOT = Path(__file__).resolve().parents[3]


def _save(
    nodes: list[onnx.NodeProto], inits: list[np.ndarray], names: list[str], shape: list, path: Path
) -> Path:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(a, n) for a, n in zip(inits, names, strict=True)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_conv_transpose_and_matmul_are_counted(tmp_path: Path) -> None:
    w = np.zeros((8, 4, 3, 3), np.float32)  # Cout 8, Cin 4, 3x3, padded: out 8 x 16 x 16
    up = np.zeros((8, 2, 2, 2), np.float32)  # Cin 8 -> Cout 2, 2x2 stride 2: out 2 x 32 x 32
    path = _save(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("ConvTranspose", ["c", "up"], ["t"], strides=[2, 2]),
        ],
        [w, up],
        ["w", "up"],
        ["batch", 4, 16, 16],
        tmp_path / "conv.onnx",
    )
    conv = 2 * (8 * 16 * 16) * (4 * 3 * 3)
    transpose = 2 * (8 * 16 * 16) * (2 * 2 * 2)
    assert graph_flops(path) == conv + transpose
    m = np.zeros((32, 5), np.float32)
    mm = _save(
        [helper.make_node("MatMul", ["x", "m"], ["y"])], [m], ["m"], ["batch", 7, 32], tmp_path / "mm.onnx"
    )
    assert graph_flops(mm) == 2 * 7 * 5 * 32


def test_unknown_shapes_are_an_error_not_a_zero(tmp_path: Path) -> None:
    w = np.zeros((8, 4, 3, 3), np.float32)
    path = _save(
        [helper.make_node("Conv", ["x", "w"], ["c"])], [w], ["w"], ["batch", 4, "h", "w"], tmp_path / "d.onnx"
    )
    with pytest.raises(ValueError, match="unknown"):
        graph_flops(path)


def test_the_shipped_base_model_counts_its_flip_twice() -> None:
    flops = graph_flops(ROOT / "model_repository" / "ich_unet_all" / "1" / "model.onnx")
    assert 0.5e9 < flops < 5e9  # about 1.2 GFLOP at 160 px with the mirror view
