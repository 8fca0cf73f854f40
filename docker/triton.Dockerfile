# syntax=docker/dockerfile:1
# The inference server image: NVIDIA's Triton with this project's model repository baked in, so that a
# model version is an image tag and every replica serves exactly the same weights.
# Build from the repository root:  docker build -f docker/triton.Dockerfile -t ich-triton:0.1.0 .
# 24.10 is Triton 2.51, the same server version as the CPU tritonserver of nvidia-pytriton 0.7.0 that the
# tests run, so the repository's config.pbtxt files are exercised against the version production runs.
FROM nvcr.io/nvidia/tritonserver:24.10-py3
LABEL org.opencontainers.image.title="ich-triton" \
      org.opencontainers.image.description="Triton Inference Server with the ICH ensemble model repository" \
      org.opencontainers.image.licenses="Apache-2.0"
# Root-owned: the server user (triton-server, uid 1000 in NGC images) can read but never modify it.
COPY --chown=root:root model_repository/ /models/
USER 1000:1000
# 8000 HTTP (health, metadata), 8001 gRPC (the gateway's inference calls), 8002 Prometheus metrics.
EXPOSE 8000 8001 8002
# Kubernetes probes /v2/health/live and /v2/health/ready (k8s/triton); the image has no HEALTHCHECK so that
# Docker does not depend on tools the NGC image may not keep.
# --model-control-mode=none: the repository is fixed at start, no model can be loaded or unloaded over the API.
CMD ["tritonserver", "--model-repository=/models", "--model-control-mode=none", "--strict-readiness=true", \
     "--exit-on-error=true", "--http-port=8000", "--grpc-port=8001", "--metrics-port=8002"]
