#!/usr/bin/env bash
# The ensemble on one NVIDIA GPU, in under ten minutes: slices/s at batches 1 to 64 and per-study latency,
# written as JSON (bench/bench_gpu.py), plus the GPU rendering of the model repository for Triton
# (ich/gpu_repository.py: TensorRT FP16, model warmup) checked by Triton itself when a tritonserver with
# the onnxruntime backend is on the PATH (the NGC image), with perf_analyzer figures when it is there too.
#
#   bench/gpu.sh [OUT_DIR]          default OUT_DIR: gpu-bench/
#
# Environment: ICH_GPU_PYTHON, a Python that already has onnxruntime-gpu (nothing is installed then);
# else a virtual environment at ICH_GPU_VENV (default /tmp/ich-gpu-venv) is made and filled from PyPI:
# onnxruntime-gpu with its CUDA and cuDNN wheels, and TensorRT (tensorrt-cu12); without TensorRT the
# CUDA provider (FP32) is measured and the JSON says so.
set -euo pipefail

cd "$(dirname "$0")/.."
OUT_DIR=${1:-gpu-bench}
DEADLINE_S=${ICH_GPU_DEADLINE_S:-540}

fail() { echo "bench/gpu.sh: $*" >&2; exit 2; }

# 1. A GPU, before anything slow happens.
command -v nvidia-smi >/dev/null 2>&1 || fail "no NVIDIA GPU here: nvidia-smi is not installed (run this on a machine with one GPU)"
GPUS=$(nvidia-smi -L 2>/dev/null || true)
[ -n "$GPUS" ] || fail "no NVIDIA GPU here: nvidia-smi lists no device (driver not loaded, or no GPU in this machine or container)"
echo "$GPUS" | head -n 1
mkdir -p "$OUT_DIR"

# 2. Python with onnxruntime-gpu.
if [ -n "${ICH_GPU_PYTHON:-}" ]; then
    PY=$ICH_GPU_PYTHON
else
    VENV=${ICH_GPU_VENV:-/tmp/ich-gpu-venv}
    BASE_PY=$(command -v python3.11 || command -v python3 || true)
    [ -n "$BASE_PY" ] || fail "no python3 to make $VENV with"
    [ -x "$VENV/bin/python" ] || "$BASE_PY" -m venv "$VENV" || fail "cannot make a virtual environment at $VENV"
    PY=$VENV/bin/python
    "$PY" -m pip install --quiet --upgrade pip >/dev/null || fail "pip cannot reach the package index"
    "$PY" -m pip install --quiet "numpy>=1.26" "scipy" "protobuf" "tritonclient[grpc]" "onnxruntime-gpu[cuda,cudnn]" \
        || fail "cannot install onnxruntime-gpu from the package index"
    "$PY" -m pip install --quiet "tensorrt-cu12" || echo "TensorRT not installed: the CUDA provider (FP32) will be measured"
fi
"$PY" - <<'EOF' || fail "onnxruntime in $PY has no CUDA provider (install onnxruntime-gpu)"
import onnxruntime as ort
if hasattr(ort, "preload_dlls"):
    ort.preload_dlls()
assert "CUDAExecutionProvider" in ort.get_available_providers(), ort.get_available_providers()
EOF

# TensorRT's pip wheel keeps its libraries in its own package folder; onnxruntime looks for them on the path.
TRT_LIBS=$("$PY" -c "import os, tensorrt_libs; print(os.path.dirname(tensorrt_libs.__file__))" 2>/dev/null || true)
[ -z "$TRT_LIBS" ] || export LD_LIBRARY_PATH="$TRT_LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# 3. The GPU repository (what Triton would serve), rendered and parsed back.
PYTHONPATH=$PWD "$PY" -m ich.gpu_repository model_repository "$OUT_DIR/model_repository_gpu" --max-batch-size 64

# 4. The measurement, bounded so the whole script stays under ten minutes.
PYTHONPATH=$PWD timeout "$DEADLINE_S" "$PY" - <<EOF
import onnxruntime as ort, sys
if hasattr(ort, "preload_dlls"):
    ort.preload_dlls()
from bench.bench_gpu import main
sys.exit(main(["--out", "$OUT_DIR/gpu.json", "--repository", "model_repository"]))
EOF

# 5. Triton itself, where the NGC server is installed: the GPU repository must load, and perf_analyzer
#    measures the compact ensemble at a few concurrencies (what ICH_TRITON_URL gateways would see).
if command -v tritonserver >/dev/null 2>&1; then
    LOG=$OUT_DIR/tritonserver.log
    tritonserver --model-repository="$OUT_DIR/model_repository_gpu" --model-control-mode=none \
        --strict-readiness=true --exit-on-error=true >"$LOG" 2>&1 &
    SERVER=$!
    trap 'kill $SERVER 2>/dev/null || true' EXIT
    for _ in $(seq 1 120); do
        curl -sf localhost:8000/v2/health/ready >/dev/null 2>&1 && break
        kill -0 $SERVER 2>/dev/null || fail "tritonserver exited; see $LOG"
        sleep 1
    done
    curl -sf localhost:8000/v2/health/ready >/dev/null || fail "tritonserver not ready after 120 s; see $LOG"
    echo "tritonserver: the GPU repository loaded"
    if command -v perf_analyzer >/dev/null 2>&1; then
        perf_analyzer -m ich_ensemble_compact -i grpc -u localhost:8001 -b 16 \
            --concurrency-range 1:8:2 --measurement-interval 3000 -f "$OUT_DIR/perf_analyzer.csv" \
            || echo "perf_analyzer failed; see its output above"
    fi
    kill $SERVER && wait $SERVER 2>/dev/null || true
    trap - EXIT
fi
echo "figures in $OUT_DIR/gpu.json"
