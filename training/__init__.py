"""Training, export, evaluation and review tools (PyTorch), exposed as the ``ich-model`` command."""
