"""FLOPs of one sample through an ONNX graph, counted from its operators and inferred shapes.

Counted: Conv, ConvTranspose, MatMul and Gemm, two FLOPs per multiply-accumulate (the convention of the
matrix-multiply peak the benchmark compares against). Element-wise operators, pooling and reductions are
left out: on these U-Nets they are well under 1% of the work. The batch dimension is pinned to 1 before
shape inference, so a graph that duplicates its input inside (the flip test-time augmentation) is counted
with that duplication.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

__all__ = ["graph_flops"]


def _shapes(model: Any) -> dict[str, list[int]]:
    import onnx

    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].dim_value:
            dims[0].ClearField("dim_param")
            dims[0].dim_value = 1
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes: dict[str, list[int]] = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_value for d in dims]
    for init in inferred.graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def _attr(node: Any, name: str, default: int) -> int:
    for attribute in node.attribute:
        if attribute.name == name:
            return int(attribute.i)
    return default


def _node_flops(node: Any, shapes: dict[str, list[int]]) -> int:
    def shape(name: str) -> list[int]:
        dims = shapes.get(name)
        if not dims or any(d <= 0 for d in dims):
            raise ValueError(f"{node.op_type} {node.name or node.output[0]}: shape of {name!r} unknown")
        return dims

    if node.op_type == "Conv":
        out, weight = shape(node.output[0]), shape(node.input[1])
        # weight [Cout, Cin / groups, *kernel]; every output element takes Cin / groups * kernel MACs
        return 2 * math.prod(out) * math.prod(weight[1:])
    if node.op_type == "ConvTranspose":
        src, weight = shape(node.input[0]), shape(node.input[1])
        # weight [Cin, Cout / groups, *kernel]; every input element spreads to Cout / groups * kernel
        return 2 * math.prod(src) * math.prod(weight[1:])
    if node.op_type in ("MatMul", "Gemm"):
        a, out = shape(node.input[0]), shape(node.output[0])
        k = a[-1] if not (node.op_type == "Gemm" and _attr(node, "transA", 0)) else a[0]
        return 2 * math.prod(out) * k
    return 0


def graph_flops(path: Path) -> int:
    """FLOPs (2 per multiply-accumulate) of one sample through the ONNX graph at ``path``.

    Raises:
        ValueError: a counted operator's shapes cannot be inferred.
    """
    import onnx

    model = onnx.load(str(path))
    shapes = _shapes(model)
    return sum(_node_flops(node, shapes) for node in model.graph.node)
