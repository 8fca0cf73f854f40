"""Development tools: what the tests, benchmarks, examples and ``make triton`` use, never the gateway.

- ``dicom_writer``: an HU volume written as a valid CT DICOM series (fixtures, the example study, the
  train/serve identity test), in every transfer syntax the intake reads;
- ``triton_local``: a real ``tritonserver`` on a machine without a GPU (``LocalTriton``,
  ``python -m ich_devtools.triton_local --serve``);
- ``triton_python_model``: the python-backend model that ``triton_local`` puts in place of each ONNX model.
- ``processes``: a server as a child process (a held loopback port, its output in a log, the wait until it
  answers, the stop by PID), for every server the tests and benchmarks start;
- ``local_gateway``: ``ich-serve`` as such a child, with only the ``ICH_`` settings it is given.

The gateway image copies only ``ich/`` and ``api/`` (``.dockerignore``), so none of this ships with it,
and nothing in ``ich/``, ``api/`` or ``training/`` imports this package (``test_package_boundaries.py``).
"""
