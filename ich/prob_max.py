"""The ``ich_prob_max`` step model: each slice's maximum of each base model's map, as a tiny ONNX graph.

The result reports every member's slice probability (the maximum of its map); computed inside the ensemble,
that is 20 bytes per slice, so the Triton engine fetches the full maps only for the slices whose pixels the
scoring reads (``ich.member_maps``). The graph is written by the exporter and by :func:`write_prob_max_model`
for an existing repository; the service only reads it. ``onnx`` (the ``train``/``dev`` extras) is imported
when a graph is built, never by the gateway.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ich import repository, spec

__all__ = ["prob_max_model", "write_prob_max_model"]

#: The opset of the exported base models; ReduceMax takes its axes as an attribute up to opset 17.
OPSET = 17
IR_VERSION = 8


def prob_max_model(input_size: int) -> Any:
    """The five maps ``PROB_<KEY>`` [N, 1, S, S] -> ``PROB_MAX`` [N, 5] (an ``onnx.ModelProto``)."""
    import onnx
    from onnx import TensorProto, helper

    if input_size <= 0:
        raise ValueError(f"input_size must be positive, got {input_size}")
    names = [spec.WEIGHTING_INPUTS[key] for key in spec.MODEL_KEYS]
    nodes = [
        helper.make_node("Concat", names, ["stack"], axis=1),  # [N, 5, S, S]
        helper.make_node("ReduceMax", ["stack"], [spec.PROB_MAX], axes=[2, 3], keepdims=0),  # [N, 5]
    ]
    inputs = [
        helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 1, input_size, input_size])
        for name in names
    ]
    outputs = [helper.make_tensor_value_info(spec.PROB_MAX, TensorProto.FLOAT, ["batch", len(names)])]
    graph = helper.make_graph(nodes, spec.PROB_MAX_MODEL, inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def write_prob_max_model(
    root: Path,
    input_size: int,
    *,
    max_batch_size: int = repository.DEFAULT_MAX_BATCH_SIZE,
    kind: repository.KindName = "KIND_GPU",
) -> Path:
    """Write ``ich_prob_max`` (config and ONNX) into repository ``root``; return the ONNX file's path."""
    import onnx

    config = repository.prob_max_model_config(input_size, max_batch_size=max_batch_size, kind=kind)
    repository.write_config(root, config)
    path = repository.model_file(root, spec.PROB_MAX_MODEL)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(prob_max_model(input_size), str(path))
    return path
