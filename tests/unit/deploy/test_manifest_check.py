"""The deployment checks catch what issue 5 item 2 requires, and the monitoring generators stay in step.

The overlays are rendered with ``kubectl kustomize`` (skipped, with the reason, where no kubectl is
installed; CI installs Debian's kubernetes-client). Each policy is shown to hold on the real manifests and
to be reported when one mutation breaks it.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]


def _load(name: str, relative: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / relative)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


manifest_check = _load("manifest_check", "scripts/manifest_check.py")
prometheusrule = _load("prometheusrule", "monitoring/prometheusrule.py")
dashboard = _load("ich_dashboard", "monitoring/grafana/dashboard.py")

Doc = dict[str, Any]


def _render(overlay: str) -> list[Doc]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("no kubectl on PATH (Debian: apt-get install kubernetes-client)")
    out = subprocess.run(
        [kubectl, "kustomize", str(ROOT / "k8s" / "overlays" / overlay)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    docs: list[Doc] = manifest_check.load_documents(out)
    return docs


@pytest.fixture(scope="module", params=["gpu", "cpu"])
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[Doc]]:
    overlay: str = request.param
    return overlay, _render(overlay)


@pytest.fixture(scope="module")
def gpu() -> list[Doc]:
    return _render("gpu")


def _one(docs: list[Doc], kind: str, name_prefix: str) -> Doc:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(name_prefix)]
    return doc


def _container(docs: list[Doc], name: str) -> Doc:
    container: Doc = _one(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]
    return container


def test_both_overlays_pass(rendered: tuple[str, list[Doc]]) -> None:
    overlay, docs = rendered
    assert manifest_check.check_overlay(docs, overlay) == []
    kinds = {d["kind"] for d in docs}
    expected = {
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "ServiceMonitor",
        "PrometheusRule",
    }
    assert expected <= kinds
    assert ("NetworkPolicy" in kinds) == (overlay == "gpu")


def test_builtin_and_operator_kinds_are_split(rendered: tuple[str, list[Doc]]) -> None:
    _, docs = rendered
    builtin, operator = manifest_check.split_builtin(docs)
    assert {d["kind"] for d in operator} == {"ServiceMonitor", "PrometheusRule"}
    assert not any(d["apiVersion"].startswith("monitoring.coreos.com/") for d in builtin)
    assert len(builtin) + len(operator) == len(docs)


def _drop_gpu(docs: list[Doc]) -> None:
    del _container(docs, "ich-triton")["resources"]["limits"]["nvidia.com/gpu"]


def _readiness_on_healthz(docs: list[Doc]) -> None:
    _container(docs, "ich-gateway")["readinessProbe"]["httpGet"]["path"] = "/healthz"


def _triton_liveness_on_ready(docs: list[Doc]) -> None:
    _container(docs, "ich-triton")["livenessProbe"]["httpGet"]["path"] = "/v2/health/ready"


def _no_startup_probe(docs: list[Doc]) -> None:
    del _container(docs, "ich-triton")["startupProbe"]


def _writable_root(docs: list[Doc]) -> None:
    _container(docs, "ich-gateway")["securityContext"]["readOnlyRootFilesystem"] = False


def _typo_setting(docs: list[Doc]) -> None:
    _one(docs, "ConfigMap", "ich-gateway-config")["data"]["ICH_TRESHOLD"] = "0.5"


def _bad_setting_value(docs: list[Doc]) -> None:
    _one(docs, "ConfigMap", "ich-gateway-config")["data"]["ICH_THRESHOLD"] = "1.5"


def _wrong_engine(docs: list[Doc]) -> None:
    _one(docs, "ConfigMap", "ich-gateway-config")["data"]["ICH_ENGINE"] = "embedded"


def _wrong_triton_url(docs: list[Doc]) -> None:
    _one(docs, "ConfigMap", "ich-gateway-config")["data"]["ICH_TRITON_URL"] = "ich-triton:8000"


def _no_pdb(docs: list[Doc]) -> None:
    docs.remove(_one(docs, "PodDisruptionBudget", "ich-triton"))


def _hpa_other_metric(docs: list[Doc]) -> None:
    _one(docs, "HorizontalPodAutoscaler", "ich-triton")["spec"]["metrics"][0]["pods"]["metric"]["name"] = "x"


def _open_grpc_to_namespace(docs: list[Doc]) -> None:
    policy = _one(docs, "NetworkPolicy", "ich-triton")
    policy["spec"]["ingress"][0]["from"].append({"namespaceSelector": {}})


def _unnamed_service_port(docs: list[Doc]) -> None:
    del _one(docs, "Service", "ich-triton")["spec"]["ports"][1]["name"]


def _unknown_servicemonitor_field(docs: list[Doc]) -> None:
    _one(docs, "ServiceMonitor", "ich-gateway")["spec"]["endpoints"][0]["intervall"] = "30s"


def _edited_rule(docs: list[Doc]) -> None:
    rule = _one(docs, "PrometheusRule", "ich-gateway")
    rule["spec"]["groups"][1]["rules"][1]["expr"] = "vector(1)"


def _unmounted_api_keys(docs: list[Doc]) -> None:
    container = _container(docs, "ich-gateway")
    container["volumeMounts"] = [m for m in container["volumeMounts"] if m["name"] != "api-keys"]


def _token_mounted(docs: list[Doc]) -> None:
    _one(docs, "Deployment", "ich-triton")["spec"]["template"]["spec"]["automountServiceAccountToken"] = True


MUTATIONS: dict[str, tuple[Callable[[list[Doc]], None], str]] = {
    "gpu limit": (_drop_gpu, "nvidia.com/gpu"),
    "gateway readiness": (_readiness_on_healthz, "readinessProbe must GET /readyz"),
    "triton liveness": (_triton_liveness_on_ready, "livenessProbe must GET /v2/health/live"),
    "startup probe": (_no_startup_probe, "no startupProbe"),
    "read-only root": (_writable_root, "readOnlyRootFilesystem"),
    "setting name": (_typo_setting, "ICH_TRESHOLD is not a gateway setting"),
    "setting value": (_bad_setting_value, "would reject these settings"),
    "engine": (_wrong_engine, "ICH_ENGINE must be triton"),
    "triton url": (_wrong_triton_url, "ICH_TRITON_URL"),
    "pdb": (_no_pdb, "no PodDisruptionBudget"),
    "hpa metric": (_hpa_other_metric, "ich_triton_queue_seconds_per_request"),
    "network policy": (_open_grpc_to_namespace, "only the gateway may reach"),
    "service port name": (_unnamed_service_port, "has no name"),
    "servicemonitor schema": (_unknown_servicemonitor_field, "intervall"),
    "rule drift": (_edited_rule, "groups differ"),
    "api keys": (_unmounted_api_keys, "ich-api-keys is not mounted"),
    "service account token": (_token_mounted, "automountServiceAccountToken"),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_each_broken_policy_is_reported(gpu: list[Doc], mutation: str) -> None:
    mutate, expected = MUTATIONS[mutation]
    docs = copy.deepcopy(gpu)
    mutate(docs)
    problems = manifest_check.check_overlay(docs, "gpu")
    assert any(expected in p for p in problems), problems


def test_cpu_overlay_must_not_carry_triton(gpu: list[Doc]) -> None:
    docs = copy.deepcopy(gpu)
    _one(docs, "ConfigMap", "ich-gateway-config")["data"]["ICH_ENGINE"] = "embedded"
    problems = manifest_check.check_overlay(docs, "cpu")
    assert any("must not deploy Triton" in p for p in problems), problems


def test_adapter_query_is_filled_in_and_uses_both_triton_counters() -> None:
    metric, query = manifest_check.adapter_metric()
    assert metric == "ich_triton_queue_seconds_per_request"
    rules = yaml.safe_load(manifest_check.adapter_rule_file())
    (rule,) = rules["groups"][0]["rules"]
    assert "<<" not in rule["expr"] and "<<.LabelMatchers>>" in query
    assert "nv_inference_queue_duration_us" in rule["expr"]
    assert "nv_inference_request_success" in rule["expr"]


def test_prometheusrule_manifests_carry_the_rule_files_unchanged() -> None:
    for source, (target, name, _) in prometheusrule.TARGETS.items():
        committed = yaml.safe_load((ROOT / target).read_text())
        assert committed["metadata"]["name"] == name
        assert committed["spec"]["groups"] == yaml.safe_load((ROOT / source).read_text())["groups"]
        assert (ROOT / target).read_text() == prometheusrule.render(source)


def test_dashboard_covers_the_issue_panels_and_is_current() -> None:
    built = json.loads(dashboard.to_json(dashboard.build()))
    committed = json.loads((ROOT / "monitoring/grafana/ich-dashboard.json").read_text())
    assert dashboard.essence(built) == dashboard.essence(committed)
    exprs = " ".join(t["expr"] for p in built["panels"] for t in p.get("targets", []))
    for metric in (
        "ich_cases_total",
        "ich_stage_seconds_bucket",
        "ich_case_probability_bucket",
        "ich_engine_errors_total",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_infer_duration_us",
        "DCGM_FI_DEV_GPU_UTIL",
    ):
        assert metric in exprs, metric
    assert 'outcome="indeterminate"' in exprs and 'outcome="positive"' in exprs
    assert any(p["type"] == "heatmap" for p in built["panels"])


def test_dashboard_check_fails_on_a_stale_file(tmp_path: Path) -> None:
    stale = json.loads(dashboard.to_json(dashboard.build()))
    stale["panels"][1]["targets"][0]["expr"] = "vector(0)"
    path = tmp_path / "dashboard.json"
    path.write_text(json.dumps(stale))
    assert dashboard.main(["--check", "--output", str(path)]) == 1
    path.write_text(dashboard.to_json(dashboard.build()))
    assert dashboard.main(["--check", "--output", str(path)]) == 0
