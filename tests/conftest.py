"""Session-wide test settings: the apps tests build keep their job store in a temporary folder.

``ICH_DATA_DIR`` is set for the whole session (before any fixture, whatever its scope, builds a
``Settings``), so no test writes the repository's ``data/``; tests of the queue pass their own folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

_OWN_DATA_DIR: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    del config
    path = tempfile.mkdtemp(prefix="ich-test-data-")
    _OWN_DATA_DIR.append(path)
    os.environ["ICH_DATA_DIR"] = path
    os.environ.pop("ICH_DATABASE_URL", None)


def pytest_unconfigure(config: pytest.Config) -> None:
    del config
    for path in _OWN_DATA_DIR:
        shutil.rmtree(path, ignore_errors=True)
