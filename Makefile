# The README's two commands: `make serve` and `make test`. Everything else supports them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TRITON_VENV := .venv-triton
TORCH_VERSION := 2.13.0
# Where pip finds the CPU build of torch when no CPU wheel is at hand (a bare PyPI torch is the CUDA build):
# make install TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=

.PHONY: install install-runtime serve test lint typecheck unit integration triton-env postgres-env pacs-env chromium-env triton k8s-check clean

# Runtime only (no torch): what the gateway needs.
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.runtime: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

# Everything: the service, training (CPU torch) and the test tools.
$(VENV)/.installed: pyproject.toml client/pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
	$(BIN)/pip install --quiet -e ".[train,dev]" -e ./client
	touch $(VENV)/.runtime $@

install: $(VENV)/.installed

install-runtime: $(VENV)/.runtime

serve: $(VENV)/.runtime
	$(BIN)/ich-serve

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

unit: install
	$(BIN)/pytest -q tests/unit

integration: install triton-env postgres-env pacs-env
	$(BIN)/pytest -q tests/integration

test: install triton-env postgres-env pacs-env chromium-env lint
	$(BIN)/pytest -q
	$(MAKE) k8s-check

# A real tritonserver for CPU, from the nvidia-pytriton wheel (pins numpy<2, hence its own venv).
$(TRITON_VENV)/.installed:
	$(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/pip install --quiet --upgrade pip
	$(TRITON_VENV)/bin/pip install --quiet nvidia-pytriton==0.7.0 onnxruntime
	touch $@

triton-env: $(TRITON_VENV)/.installed

# PostgreSQL server binaries for the job store's tests (they start their own cluster, unprivileged, on
# loopback). Installed with apt-get where we may (root on Debian); elsewhere those tests skip and say why.
postgres-env:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null \
	  || { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	         DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null \
	         || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	              --no-install-recommends postgresql >/dev/null; }; \
	       else echo "postgres-env: no PostgreSQL server binaries; install postgresql or the PostgreSQL tests skip"; fi; }

# A PACS that no one here wrote and an independent DICOM sender for the DICOM node's tests: Debian's Orthanc
# (with its DICOMweb plugin) and dcmtk's storescu/echoscu. The tests start Orthanc themselves, unprivileged,
# on loopback; where the packages are missing (and cannot be installed) those tests skip and say why.
PACS_PACKAGES := orthanc orthanc-dicomweb dcmtk
pacs-env:
	@{ command -v Orthanc && command -v storescu && ls /usr/share/orthanc/plugins/libOrthancDicomWeb.so; } >/dev/null 2>&1 \
	  || { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	         DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(PACS_PACKAGES) >/dev/null \
	         || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	              --no-install-recommends $(PACS_PACKAGES) >/dev/null; }; \
	       else echo "pacs-env: no Orthanc or dcmtk; install $(PACS_PACKAGES) or the DICOM node's PACS tests skip"; fi; }

# Debian's Chromium for the viewer's end-to-end tests (tests/e2e, driven by Playwright through that binary; no
# browser download). Installed with apt-get where we may; elsewhere those tests skip and say why.
chromium-env:
	@command -v chromium >/dev/null \
	  || { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	         DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null \
	         || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	              --no-install-recommends chromium >/dev/null; }; \
	       else echo "chromium-env: no chromium; install it or the tests in tests/e2e skip"; fi; }

triton: triton-env install-runtime
	$(BIN)/python -m ich_devtools.triton_local --serve

# Deployment assets, no cluster or Docker engine needed: kustomize build + strict schema, promtool check/test,
# generated files up to date, hadolint (scripts/k8s_check.sh). Needs kubectl and promtool (.ci/run installs them).
k8s-check: install
	BIN=$(BIN) ./scripts/k8s_check.sh

clean:
	rm -rf $(VENV) $(TRITON_VENV) .pytest_cache .mypy_cache .ruff_cache
