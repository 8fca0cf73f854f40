# syntax=docker/dockerfile:1
# The gateway image: FastAPI + the embedded onnxruntime engine + the Triton gRPC client, and no torch.
# Build from the repository root:  docker build -t ich-gateway:0.1.0 .
# Two stages so that pip, wheels and build caches never reach the runtime image.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# Only what the distribution needs: training/ (torch), the development tools (ich_devtools/) and the tests
# stay out of the image (.dockerignore); setuptools packages whichever of its packages are present.
COPY pyproject.toml README.md ./
COPY ich/ ich/
COPY api/ api/
# A plain (non-editable) install without extras: the runtime dependencies of pyproject.toml only.
RUN pip install --no-cache-dir . \
    && python -c "import api, ich" \
    && ! python -c "import torch" 2>/dev/null \
    && ! python -c "import ich_devtools" 2>/dev/null

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="ich-gateway" \
      org.opencontainers.image.description="Intracranial hemorrhage detection on head CT: HTTP gateway" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed numeric uid so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
RUN groupadd --system --gid 10001 ich \
    && useradd --system --uid 10001 --gid ich --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin ich
COPY --from=build /opt/venv /opt/venv
# The shipped ensemble: the embedded engine reads it; with ICH_ENGINE=triton the gateway still reads
# VERSION and the input size from it. Root-owned and read-only for the service user.
COPY --chown=root:root model_repository/ /app/model_repository/
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ICH_HOST=0.0.0.0 \
    ICH_PORT=8080 \
    ICH_ENGINE=embedded \
    ICH_MODEL_REPOSITORY=/app/model_repository \
    ICH_DATA_DIR=/var/lib/ich \
    ICH_LOG_LEVEL=INFO
# The job store (SQLite and the stored studies) when ICH_DATABASE_URL is unset: mount a volume here.
RUN install -d -o 10001 -g 10001 -m 0750 /var/lib/ich
USER 10001:10001
EXPOSE 8080
# Python instead of curl: the slim image has no curl and the probe must not add packages.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('ICH_PORT', '8080') + '/healthz', timeout=4)"]
CMD ["ich-serve"]
