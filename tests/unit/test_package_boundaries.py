"""The shipped packages stand without the development tools, and the gateway image cannot carry them.

``ich_devtools`` (the DICOM writer, the local Triton) and the encoders only it needs (pyjpegls, imagecodecs)
are development dependencies, and training/ with its scikit-learn, statsmodels and torch is not in the
gateway image either: a gateway module that imported any of them would fail there.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ("ich", "api", "training")
#: Importable only where the development extras are installed.
DEVELOPMENT_ONLY = ("ich_devtools", "pyjpegls", "jpeg_ls", "imagecodecs")
#: Not in the gateway image either: training/ and the ``train`` extra.
TRAINING_ONLY = ("training", "torch", "sklearn", "statsmodels", "onnx", "matplotlib", "monai", "nibabel")


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", SHIPPED)
def test_no_shipped_module_imports_a_development_tool(package: str) -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(
            name for name in _imported_modules(path) if name.split(".")[0] in DEVELOPMENT_ONLY
        )
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_the_gateway_imports_and_builds_its_app_without_the_tools() -> None:
    """Every module of ich/ and api/ imported where neither the tools nor training's packages can be found."""
    script = f"""
import importlib, pkgutil, sys
blocked = {DEVELOPMENT_ONLY + TRAINING_ONLY!r}

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"blocked: {{name}}")
        return None

sys.meta_path.insert(0, Block())
for top in ("ich", "api"):
    package = importlib.import_module(top)
    for info in pkgutil.walk_packages(package.__path__, top + "."):
        if ".migrations." in info.name:
            continue  # alembic revision scripts, loaded by alembic itself
        importlib.import_module(info.name)
from api.app import create_app
create_app()
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("ok")


def test_the_gateway_image_copies_only_the_shipped_core() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    sources = {
        source
        for line in dockerfile.splitlines()
        if line.startswith("COPY ") and "--from=" not in line
        for source in line.split()[1:-1]
        if not source.startswith("--")
    }
    assert sources == {"pyproject.toml", "README.md", "ich/", "api/", "model_repository/"}
    allowed = [line[1:] for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")]
    assert not [entry for entry in allowed if re.match(r"ich_devtools|tests|bench|examples", entry)]
    # The build stage refuses an image that could import the tools.
    assert '! python -c "import ich_devtools"' in dockerfile
