"""Triton python-backend model that runs one ONNX file with onnxruntime on CPU.

Not imported by the service: ``ich_devtools.triton_local`` copies this file as ``<model>/<version>/model.py``
into a CPU rendering of the repository, where it runs inside Triton's python-backend stub with the packages
of ``.venv-triton``. It stands in for Triton's onnxruntime backend, which the CPU-only ``nvidia-pytriton``
wheel does not ship, and keeps the model's tensor names and batching so the ensemble config is unchanged.
It must stay thin and import nothing from this repository.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

#: File next to model.py holding the ONNX graph (a link to the source repository's model.onnx).
MODEL_FILENAME = "model.onnx"


class TritonPythonModel:
    """Concatenates the requests of a dynamic batch, runs them in one onnxruntime call, splits the result."""

    def initialize(self, args: dict[str, Any]) -> None:
        """Open the ONNX session; tensor names and dtypes come from the model's config."""
        config = json.loads(args["model_config"])
        self.input_names = [tensor["name"] for tensor in config["input"]]
        self.output_names = [tensor["name"] for tensor in config["output"]]
        parameters = config.get("parameters", {})
        options = ort.SessionOptions()
        threads = parameters.get("intra_op_threads", {}).get("string_value")
        if threads:
            options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        # Five members run at once on few CPU cores: spinning idle threads would steal them from each other.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        path = os.path.join(args["model_repository"], args["model_version"], MODEL_FILENAME)
        self.session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])

    def execute(self, requests: list[Any]) -> list[Any]:
        """One response per request, in order, as the python backend requires."""
        sizes: list[int] = []
        columns: dict[str, list[np.ndarray]] = {name: [] for name in self.input_names}
        for request in requests:
            for name in self.input_names:
                columns[name].append(pb_utils.get_input_tensor_by_name(request, name).as_numpy())
            sizes.append(int(columns[self.input_names[0]][-1].shape[0]))
        feeds = {
            name: np.concatenate(parts) if len(parts) > 1 else parts[0] for name, parts in columns.items()
        }
        try:
            results = self.session.run(self.output_names, feeds)
        except Exception as exc:  # an onnxruntime failure becomes an error response, not a dead stub
            error = pb_utils.TritonError(f"onnxruntime: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        responses = []
        start = 0
        for size in sizes:
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(value[start : start + size]))
                for name, value in zip(self.output_names, results, strict=True)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += size
        return responses
