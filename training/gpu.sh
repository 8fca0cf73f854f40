#!/usr/bin/env bash
# Training on one NVIDIA GPU under the cross-validation protocol, as one prepared command per step.
#
#   training/gpu.sh prepare DATA     here (pip and the data at hand): a compact copy of CT-ICH into
#                                    .carry/ct-ich (ich-model pack) and the Python packages the GPU
#                                    machine lacks into .carry/wheels; .carry/ is git-ignored, and the
#                                    `device` tool takes it with carry: [".carry"]
#   training/gpu.sh cv OUT           there: the ensemble's four folds side by side (training/configs/
#                                    gpu.toml, the default's folds), then cv-report; OUT/cv-gpu.tar.gz holds
#                                    training/cv/gpu/ (the out-of-fold record) and the logs
#   training/gpu.sh train OUT        there: the same recipe on all patients, exported with the case model
#                                    of the committed GPU record (training/cv/gpu/, from the cv step);
#                                    OUT/repo-gpu.tar.gz holds model_repository-gpu/, OUT/train.log the log
#   training/gpu.sh baselines OUT    there: the paper's four classifiers (training/configs/baselines-gpu.toml)
#                                    until the deadline; OUT/baselines-gpu.tar.gz holds the units recorded
#
# Each step stops its work at ICH_GPU_DEADLINE_S seconds (default 540, inside the device's 10-minute
# command) and packs what it has, so a call always brings something back. The baselines resume from the
# committed records (finished units are skipped); a cv or train step that ran out of time brings back its
# logs only: resize the configuration from them. Nothing is chosen here: the record it brings back is
# compared with the CPU one by `ich-model card` after the fact (docs/decisions.md).
set -euo pipefail

cd "$(dirname "$0")/.."
CARRY=${ICH_GPU_CARRY:-.carry}  # what the device tool carries (a folder of the checkout)
DEADLINE_S=${ICH_GPU_DEADLINE_S:-540}
START=$(date +%s)
# the packages the device image lacks (training imports pydantic; DenseNet121 is MONAI's), pinned to the
# versions this project tests with, for the device's Python 3.12
WHEELS=("pydantic==2.14.4" "pydantic-core==2.50.5" "annotated-types==0.8.0" "typing-inspection==0.4.5"
    "typing-extensions==4.16.0" "monai==1.6.1")

fail() { echo "training/gpu.sh: $*" >&2; exit 2; }
left() { local s=$((DEADLINE_S - ($(date +%s) - START))); echo $((s > 1 ? s : 1)); }

prepare() {
    local data=$1
    [ -d "$data/Patients_CT" ] || fail "$data is not a CT-ICH folder (no Patients_CT/)"
    grep -qx '/.carry/' .git/info/exclude 2>/dev/null || echo '/.carry/' >> .git/info/exclude
    mkdir -p "$CARRY"
    [ -d "$CARRY/ct-ich" ] || .venv/bin/ich-model pack --data "$data" --out "$CARRY/ct-ich"
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$CARRY/wheels" "${WHEELS[@]}" || fail "cannot fetch the wheels from the package index"
    local tracked carried
    tracked=$(git ls-files -z | xargs -0 stat -c %s | awk '{s += $1} END {print s}')
    carried=$(du -sb "$CARRY" | cut -f1)
    echo "travels: $(( (tracked + carried) / 1048576 )) MiB (checkout and $CARRY) of the device's 64 MiB"
    [ $((tracked + carried)) -le $((64 * 1048576)) ] || fail "too much to carry: pack smaller (ich-model pack --size)"
}

setup_gpu() {
    command -v nvidia-smi >/dev/null 2>&1 || fail "no NVIDIA GPU here: nvidia-smi is not installed"
    local gpus
    gpus=$(nvidia-smi -L 2>/dev/null || true)
    [ -n "$gpus" ] || fail "no NVIDIA GPU here: nvidia-smi lists no device"
    echo "$gpus" | head -n 1
    [ -d "$CARRY/ct-ich" ] || fail "no $CARRY/ct-ich: run 'training/gpu.sh prepare DATA' first and carry $CARRY"
    if [ -d "$CARRY/wheels" ]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/ich-site "$CARRY"/wheels/*.whl || fail "cannot install the carried wheels"
    fi
    export PYTHONPATH=/tmp/ich-site:$PWD PYTHONUNBUFFERED=1
    python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
        || fail "torch sees no CUDA device"
}

ich_model() { timeout --signal=INT "$(left)" python3 -m training.cli "$@"; }

cv_step() {
    local run=runs/cv-gpu config=training/configs/gpu.toml folds=training/cv/default/folds.json
    mkdir -p "$run"
    cp "$folds" "$run/folds.json"
    # one cache for the fold processes, built before they start, at the config's own size
    timeout "$(left)" python3 -c "from pathlib import Path; \
from training.config import load_config; from training.train import build_cache; \
size = load_config(Path('$config')).run.size; \
build_cache(Path('$CARRY/ct-ich'), size, Path('$run') / f'cache_{size}.npz')"
    local pids=() k
    for k in $(python3 -c "import json; print(*range(len(json.load(open('$folds'))['folds'])))"); do
        ich_model cv --data "$CARRY/ct-ich" --config $config --run-dir $run --folds "$k" \
            > "$run/fold_$k.out" 2>&1 &
        pids+=($!)
    done
    local ok=1
    for p in "${pids[@]}"; do wait "$p" || ok=0; done
    [ $ok = 1 ] && ich_model cv-report --run-dir $run --data "$CARRY/ct-ich" --out training/cv/gpu \
        > "$run/report.out" 2>&1 || echo "training/gpu.sh: cv did not finish; the logs come back"
    mkdir -p training/cv/gpu
    tar czf "$1/cv-gpu.tar.gz" training/cv/gpu "$run"/*.out "$run"/cv.log 2>/dev/null || true
}

train_step() {
    local run=runs/gpu
    { ich_model train --data "$CARRY/ct-ich" --config training/configs/gpu.toml --run-dir $run \
        && ich_model export --run $run --out model_repository-gpu \
            --case-model training/cv/gpu/case_model.json; } > "$1/train.log" 2>&1 \
        || echo "training/gpu.sh: train did not finish; the log comes back"
    tar czf "$1/repo-gpu.tar.gz" model_repository-gpu 2>/dev/null || true
}

baselines_step() {
    local minutes=$(( ($(left) - 60) / 60 ))
    [ "$minutes" -gt 0 ] || fail "too little time left for a baseline unit"
    ich_model baselines --data "$CARRY/ct-ich" --config training/configs/baselines-gpu.toml \
        --stop-after "$minutes" > "$1/baselines.log" 2>&1 || echo "training/gpu.sh: baselines stopped early"
    tar czf "$1/baselines-gpu.tar.gz" training/baselines/gpu 2>/dev/null || true
}

case "${1:-}" in
    prepare) [ $# = 2 ] || fail "usage: training/gpu.sh prepare DATA"; prepare "$2" ;;
    cv | train | baselines)
        [ $# = 2 ] || fail "usage: training/gpu.sh $1 OUT"
        mkdir -p "$2"
        setup_gpu
        "${1}_step" "$(cd "$2" && pwd)"
        ls -la "$2" ;;
    *) fail "usage: training/gpu.sh prepare DATA | cv OUT | train OUT | baselines OUT" ;;
esac
