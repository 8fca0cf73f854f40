"""Check a rendered kustomize overlay beyond what the Kubernetes schema can say.

``make k8s-check`` (scripts/k8s_check.sh) renders each overlay with ``kubectl kustomize`` and then:

* writes the built-in kinds to one file, which ``kubernetes-validate --strict`` checks against the schema of
  the pinned Kubernetes version;
* checks the Prometheus Operator objects (ServiceMonitor, PrometheusRule), which that schema does not know,
  against the structural JSON schemas below (the fields this project uses, no unknown keys), and checks that
  each PrometheusRule carries exactly the groups of its rule file in monitoring/rules/;
* checks the deployment policy of issue 5 item 2 (probes, resources, non-root, read-only filesystems, GPU
  limit, named ports, ConfigMap keys that the gateway's Settings know, a PDB, an HPA and a ServiceMonitor
  for each workload, the NetworkPolicy, the custom metric served by prometheus-adapter);
* writes the adapter's metricsQuery, with its template placeholders filled, as a rule file for
  ``promtool check rules``.

    python scripts/manifest_check.py --overlay gpu --rendered gpu.yaml --out-dir DIR

Exit status 1 and one line per problem when anything is wrong.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Final

import jsonschema
import yaml

ROOT: Final = Path(__file__).resolve().parent.parent

GATEWAY: Final = "ich-gateway"
TRITON: Final = "ich-triton"
GATEWAY_CONFIG_PREFIX: Final = "ich-gateway-config"
API_KEYS_SECRET: Final = "ich-api-keys"
DATABASE_SECRET: Final = "ich-database"
ADAPTER_VALUES: Final = ROOT / "monitoring/prometheus-adapter/values.yaml"
#: PrometheusRule object name -> the rule file it must carry.
RULE_SOURCES: Final[dict[str, Path]] = {
    GATEWAY: ROOT / "monitoring/rules/gateway.yml",
    TRITON: ROOT / "monitoring/rules/triton.yml",
}
OPERATOR_GROUP: Final = "monitoring.coreos.com/"

Doc = dict[str, Any]

_log = logging.getLogger(__name__)

# Structural schemas of the Prometheus Operator kinds (monitoring.coreos.com/v1), restricted to the fields
# the operator defines that this project uses; unknown keys are errors, as with --strict for built-ins.
_LABEL_SELECTOR: Final[Doc] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {"type": "array", "items": {"type": "object"}},
    },
}
_METADATA: Final[Doc] = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "additionalProperties": False,
}
_DURATION: Final[Doc] = {
    "type": "string",
    "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}
CRD_SCHEMAS: Final[dict[str, Doc]] = {
    "ServiceMonitor": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "ServiceMonitor"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["selector", "endpoints"],
                "additionalProperties": False,
                "properties": {
                    "selector": _LABEL_SELECTOR,
                    "jobLabel": {"type": "string"},
                    "namespaceSelector": {"type": "object"},
                    "endpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["port"],
                            "additionalProperties": False,
                            "properties": {
                                "port": {"type": "string"},
                                "path": {"type": "string", "pattern": "^/"},
                                "scheme": {"enum": ["http", "https"]},
                                "interval": _DURATION,
                                "scrapeTimeout": _DURATION,
                                "honorLabels": {"type": "boolean"},
                                "relabelings": {"type": "array"},
                                "metricRelabelings": {"type": "array"},
                            },
                        },
                    },
                },
            },
        },
    },
    "PrometheusRule": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "PrometheusRule"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["groups"],
                "additionalProperties": False,
                "properties": {
                    "groups": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["name", "rules"],
                            "additionalProperties": False,
                            "properties": {
                                "name": {"type": "string", "minLength": 1},
                                "interval": _DURATION,
                                "rules": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["expr"],
                                        "additionalProperties": False,
                                        "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                                        "properties": {
                                            "alert": {"type": "string"},
                                            "record": {"type": "string"},
                                            "expr": {"type": "string", "minLength": 1},
                                            "for": _DURATION,
                                            "labels": {
                                                "type": "object",
                                                "additionalProperties": {"type": "string"},
                                            },
                                            "annotations": {
                                                "type": "object",
                                                "additionalProperties": {"type": "string"},
                                            },
                                        },
                                    },
                                },
                            },
                        },
                    }
                },
            },
        },
    },
}


def load_documents(text: str) -> list[Doc]:
    """The non-empty YAML documents of a multi-document stream."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


def split_builtin(docs: Iterable[Doc]) -> tuple[list[Doc], list[Doc]]:
    """(built-in kinds, Prometheus Operator kinds); other custom kinds count as built-in so that the schema
    validation rejects them rather than letting them through unchecked."""
    builtin: list[Doc] = []
    operator: list[Doc] = []
    for doc in docs:
        (operator if str(doc.get("apiVersion", "")).startswith(OPERATOR_GROUP) else builtin).append(doc)
    return builtin, operator


def _find(docs: Iterable[Doc], kind: str, name: str | None = None) -> list[Doc]:
    return [d for d in docs if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]


def _selects(selector: Doc | None, labels: Doc) -> bool:
    match = (selector or {}).get("matchLabels") or {}
    return bool(match) and all(labels.get(k) == v for k, v in match.items())


def check_operator_objects(operator_docs: Iterable[Doc]) -> Iterator[str]:
    """Schema errors of ServiceMonitors and PrometheusRules, and rules that differ from their source file."""
    for doc in operator_docs:
        kind = doc.get("kind", "?")
        name = doc.get("metadata", {}).get("name", "?")
        schema = CRD_SCHEMAS.get(kind)
        if schema is None:
            yield f"{kind}/{name}: no structural schema for this Prometheus Operator kind"
            continue
        for error in jsonschema.Draft202012Validator(schema).iter_errors(doc):
            path = ".".join(str(p) for p in error.absolute_path) or "(root)"
            yield f"{kind}/{name}: {path}: {error.message}"
        if kind == "PrometheusRule":
            source = RULE_SOURCES.get(name)
            if source is None:
                yield f"PrometheusRule/{name}: no rule file under monitoring/rules/ for it"
            elif doc.get("spec", {}).get("groups") != yaml.safe_load(source.read_text())["groups"]:
                yield (
                    f"PrometheusRule/{name}: groups differ from {source.relative_to(ROOT)} "
                    "(run python monitoring/prometheusrule.py)"
                )


def _containers(deployment: Doc) -> list[Doc]:
    containers: list[Doc] = deployment["spec"]["template"]["spec"].get("containers", [])
    return containers


def _probe_path(container: Doc, probe: str) -> str | None:
    spec = container.get(probe) or {}
    path = (spec.get("httpGet") or {}).get("path")
    return str(path) if path is not None else None


def check_workload(deployment: Doc, docs: list[Doc]) -> Iterator[str]:
    """Probes, resources, non-root and the companion objects every Deployment must have."""
    name = deployment["metadata"]["name"]
    pod = deployment["spec"]["template"]
    pod_labels = pod["metadata"].get("labels", {})
    pod_sc = pod["spec"].get("securityContext") or {}
    if pod["spec"].get("automountServiceAccountToken") is not False:
        yield f"Deployment/{name}: automountServiceAccountToken must be false"
    for c in _containers(deployment):
        where = f"Deployment/{name} container {c['name']}"
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            if not c.get(probe):
                yield f"{where}: no {probe}"
        resources = c.get("resources") or {}
        for section in ("requests", "limits"):
            if "memory" not in (resources.get(section) or {}):
                yield f"{where}: no memory {section}"
        if "cpu" not in (resources.get("requests") or {}):
            yield f"{where}: no cpu request"
        sc = c.get("securityContext") or {}
        if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
            yield f"{where}: runAsNonRoot is not set"
        if sc.get("allowPrivilegeEscalation") is not False:
            yield f"{where}: allowPrivilegeEscalation must be false"
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            yield f"{where}: capabilities must drop ALL"
        if sc.get("readOnlyRootFilesystem") is not True:
            yield f"{where}: readOnlyRootFilesystem must be true"
        mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
        volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        if "emptyDir" not in volumes.get(mounts.get("/tmp", ""), {}):
            yield f"{where}: a read-only root filesystem needs an emptyDir on /tmp"
        for port in c.get("ports", []):
            if not port.get("name"):
                yield f"{where}: container port {port.get('containerPort')} has no name"
    if not any(_selects(p["spec"].get("selector"), pod_labels) for p in _find(docs, "PodDisruptionBudget")):
        yield f"Deployment/{name}: no PodDisruptionBudget selects its pods"
    hpas = [
        h
        for h in _find(docs, "HorizontalPodAutoscaler")
        if h["spec"]["scaleTargetRef"].get("kind") == "Deployment"
        and h["spec"]["scaleTargetRef"]["name"] == name
    ]
    if len(hpas) != 1:
        yield f"Deployment/{name}: expected one HorizontalPodAutoscaler, found {len(hpas)}"
    elif hpas[0]["apiVersion"] != "autoscaling/v2":
        yield f"HorizontalPodAutoscaler/{name}: must be autoscaling/v2"
    services = [
        s for s in _find(docs, "Service") if _selects({"matchLabels": s["spec"].get("selector")}, pod_labels)
    ]
    if not services:
        yield f"Deployment/{name}: no Service selects its pods"
    container_ports = {p.get("name") for c in _containers(deployment) for p in c.get("ports", [])}
    for svc in services:
        svc_name = f"Service/{svc['metadata']['name']}"
        for port in svc["spec"].get("ports", []):
            if not port.get("name"):
                yield f"{svc_name}: port {port.get('port')} has no name"
            if isinstance(port.get("targetPort"), str) and port["targetPort"] not in container_ports:
                yield f"{svc_name}: targetPort {port['targetPort']} is no container port"
        monitors = [
            m
            for m in _find(docs, "ServiceMonitor")
            if _selects(m["spec"].get("selector"), svc["metadata"].get("labels", {}))
        ]
        if not monitors:
            yield f"Service/{svc['metadata']['name']}: no ServiceMonitor selects it"
        svc_ports = {p.get("name") for p in svc["spec"].get("ports", [])}
        for monitor in monitors:
            for endpoint in monitor["spec"].get("endpoints", []):
                if endpoint.get("port") not in svc_ports:
                    yield (
                        f"ServiceMonitor/{monitor['metadata']['name']}: port {endpoint.get('port')} "
                        f"is not a port of Service/{svc['metadata']['name']}"
                    )


def _settings_class() -> Any:
    """The gateway's own Settings: the ConfigMap may use only the names it knows, with values it accepts."""
    from api.settings import Settings

    return Settings


def check_gateway(docs: list[Doc], engine: str) -> Iterator[str]:
    """The gateway's probes, its ConfigMap of ICH_ settings and the API-keys Secret reference."""
    deployments = _find(docs, "Deployment", GATEWAY)
    if len(deployments) != 1:
        yield f"expected one Deployment/{GATEWAY}"
        return
    (container,) = _containers(deployments[0])
    if _probe_path(container, "livenessProbe") != "/healthz":
        yield f"Deployment/{GATEWAY}: livenessProbe must GET /healthz"
    if _probe_path(container, "readinessProbe") != "/readyz":
        yield f"Deployment/{GATEWAY}: readinessProbe must GET /readyz"
    refs = [e["configMapRef"]["name"] for e in container.get("envFrom", []) if "configMapRef" in e]
    configs = [c for c in _find(docs, "ConfigMap") if c["metadata"]["name"] in refs]
    if len(configs) != 1 or not configs[0]["metadata"]["name"].startswith(GATEWAY_CONFIG_PREFIX):
        yield f"Deployment/{GATEWAY}: envFrom must reference the {GATEWAY_CONFIG_PREFIX} ConfigMap"
        return
    data: dict[str, str] = configs[0].get("data") or {}
    config_name = f"ConfigMap/{configs[0]['metadata']['name']}"
    try:
        settings_class = _settings_class()
    except Exception as exc:  # a broken api package is a finding of this check, not a crash of it
        yield f"{config_name}: cannot import api.settings to check the keys: {exc}"
        return
    known = set(settings_class.model_fields)
    for key in sorted(data):
        if not key.startswith("ICH_") or key[4:].lower() not in known:
            yield f"{config_name}: {key} is not a gateway setting"
    try:
        settings_class(**{k[4:].lower(): v for k, v in data.items() if k[4:].lower() in known})
    except Exception as exc:  # pydantic's ValidationError: the gateway would refuse to start
        yield f"{config_name}: the gateway would reject these settings: {exc}"
    if data.get("ICH_ENGINE") != engine:
        yield f"{config_name}: ICH_ENGINE must be {engine}, is {data.get('ICH_ENGINE')}"
    pod_spec = deployments[0]["spec"]["template"]["spec"]
    secret_volumes = [
        v["name"]
        for v in pod_spec.get("volumes", [])
        if (v.get("secret") or {}).get("secretName") == API_KEYS_SECRET
    ]
    mounts = [m for m in container.get("volumeMounts", []) if m["name"] in secret_volumes]
    if not mounts:
        yield f"Deployment/{GATEWAY}: Secret {API_KEYS_SECRET} is not mounted"
    elif not str(data.get("ICH_API_KEYS_FILE", "")).startswith(mounts[0]["mountPath"].rstrip("/") + "/"):
        yield f"ConfigMap: ICH_API_KEYS_FILE must point into the {API_KEYS_SECRET} mount"
    elif not mounts[0].get("readOnly"):
        yield f"Deployment/{GATEWAY}: the {API_KEYS_SECRET} mount must be readOnly"


def adapter_metric() -> tuple[str, str]:
    """(custom metric name, metricsQuery) of the prometheus-adapter rule that feeds the Triton HPA."""
    values = yaml.safe_load(ADAPTER_VALUES.read_text())
    (rule,) = values["rules"]["custom"]
    return str(rule["name"]["as"]), str(rule["metricsQuery"])


def check_triton(docs: list[Doc], overlay: str) -> Iterator[str]:
    """Triton's GPU limit, health probes, read-only repository, queue-time HPA and NetworkPolicy."""
    deployments = _find(docs, "Deployment", TRITON)
    if overlay == "cpu":
        extra = [f"{d['kind']}/{d['metadata']['name']}" for d in docs if d["metadata"]["name"] == TRITON]
        if extra:
            yield f"the cpu overlay must not deploy Triton: {', '.join(extra)}"
        return
    if len(deployments) != 1:
        yield f"expected one Deployment/{TRITON}"
        return
    triton = deployments[0]
    (container,) = _containers(triton)
    if str((container.get("resources") or {}).get("limits", {}).get("nvidia.com/gpu")) != "1":
        yield f"Deployment/{TRITON}: needs an nvidia.com/gpu limit of 1"
    if _probe_path(container, "livenessProbe") != "/v2/health/live":
        yield f"Deployment/{TRITON}: livenessProbe must GET /v2/health/live"
    for probe in ("startupProbe", "readinessProbe"):
        if _probe_path(container, probe) != "/v2/health/ready":
            yield f"Deployment/{TRITON}: {probe} must GET /v2/health/ready"
    args = container.get("args", []) + container.get("command", [])
    if "--model-control-mode=none" not in args or not any(a.startswith("--model-repository=") for a in args):
        yield f"Deployment/{TRITON}: must serve a fixed --model-repository with --model-control-mode=none"
    config = next(
        (c for c in _find(docs, "ConfigMap") if c["metadata"]["name"].startswith(GATEWAY_CONFIG_PREFIX)), {}
    )
    url = (config.get("data") or {}).get("ICH_TRITON_URL", "")
    grpc_ports = [
        p["port"]
        for s in _find(docs, "Service", TRITON)
        for p in s["spec"]["ports"]
        if p.get("name") == "grpc"
    ]
    if not grpc_ports or url != f"{TRITON}:{grpc_ports[0]}":
        yield f"ConfigMap: ICH_TRITON_URL must be {TRITON}:<the Service's grpc port>, is {url!r}"
    hpa = next(
        (h for h in _find(docs, "HorizontalPodAutoscaler") if h["spec"]["scaleTargetRef"]["name"] == TRITON),
        None,
    )
    metric, _ = adapter_metric()
    pod_metrics = [
        m["pods"]["metric"]["name"]
        for m in (hpa or {}).get("spec", {}).get("metrics", [])
        if m.get("type") == "Pods"
    ]
    if pod_metrics != [metric]:
        yield f"HorizontalPodAutoscaler/{TRITON}: must scale on the Pods metric {metric} (prometheus-adapter)"
    labels = triton["spec"]["template"]["metadata"]["labels"]
    gateway_labels: dict[str, str] = next(
        (d["spec"]["template"]["metadata"]["labels"] for d in _find(docs, "Deployment", GATEWAY)), {}
    )
    policies = [p for p in _find(docs, "NetworkPolicy") if _selects(p["spec"].get("podSelector"), labels)]
    if not policies:
        yield f"no NetworkPolicy selects the {TRITON} pods"
    for policy in policies:
        policy_name = f"NetworkPolicy/{policy['metadata']['name']}"
        if "Ingress" not in policy["spec"].get("policyTypes", []):
            yield f"{policy_name}: must restrict Ingress"
        for rule in policy["spec"].get("ingress", []):
            ports = {p.get("port") for p in rule.get("ports", [])}
            if not ports or not rule.get("from"):
                yield f"{policy_name}: every rule must name its sources and ports"
            if ports & {"grpc", "http", 8000, 8001} and not all(
                "podSelector" in peer
                and "namespaceSelector" not in peer
                and _selects(peer["podSelector"], gateway_labels)
                for peer in rule.get("from", [])
            ):
                yield f"{policy_name}: only the gateway may reach Triton's API ports"


def check_job_store(docs: list[Doc], overlay: str) -> Iterator[str]:
    """The job queue's store (issue 16): PostgreSQL from a Secret where replicas scale, else SQLite on a PVC.

    SQLite serves one process: a gateway that may run more than one replica must read ``ICH_DATABASE_URL``
    from the ``ich-database`` Secret (never a ConfigMap: it holds a password); one that uses SQLite must run
    exactly one replica (HPA pinned to 1, Recreate) with ``ICH_DATA_DIR`` on a PersistentVolumeClaim.
    """
    deployments = _find(docs, "Deployment", GATEWAY)
    if len(deployments) != 1:
        return
    deployment = deployments[0]
    (container,) = _containers(deployment)
    configs = [c for c in _find(docs, "ConfigMap") if c["metadata"]["name"].startswith(GATEWAY_CONFIG_PREFIX)]
    data: dict[str, str] = (configs[0].get("data") or {}) if configs else {}
    if "ICH_DATABASE_URL" in data:
        yield "ConfigMap: ICH_DATABASE_URL holds a password: take it from the ich-database Secret"
    env = {e["name"]: e for e in container.get("env", [])}
    secret_ref = ((env.get("ICH_DATABASE_URL") or {}).get("valueFrom") or {}).get("secretKeyRef") or {}
    hpas = [
        h for h in _find(docs, "HorizontalPodAutoscaler") if h["spec"]["scaleTargetRef"]["name"] == GATEWAY
    ]
    max_replicas = max([int(h["spec"].get("maxReplicas", 1)) for h in hpas] or [1])
    if overlay == "gpu" or max_replicas > 1:
        if secret_ref.get("name") != DATABASE_SECRET:
            yield f"Deployment/{GATEWAY}: shared job queue: ICH_DATABASE_URL must come from {DATABASE_SECRET}"
        return
    if secret_ref:
        return
    spec = deployment["spec"]
    if int(spec.get("replicas", 1)) != 1 or max_replicas != 1:
        yield f"Deployment/{GATEWAY}: SQLite serves one replica: replicas and the HPA's maxReplicas must be 1"
    if (spec.get("strategy") or {}).get("type") != "Recreate":
        yield f"Deployment/{GATEWAY}: with SQLite on a ReadWriteOnce volume the strategy must be Recreate"
    data_dir = data.get("ICH_DATA_DIR", "").rstrip("/")
    mounts = {m["mountPath"].rstrip("/"): m["name"] for m in container.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in spec["template"]["spec"].get("volumes", [])}
    claim = (volumes.get(mounts.get(data_dir, ""), {}).get("persistentVolumeClaim") or {}).get("claimName")
    if not data_dir or claim is None:
        yield f"Deployment/{GATEWAY}: ICH_DATA_DIR must be a PersistentVolumeClaim mount (SQLite job store)"
    elif not _find(docs, "PersistentVolumeClaim", claim):
        yield f"Deployment/{GATEWAY}: PersistentVolumeClaim {claim} is not in the overlay"


def check_overlay(docs: list[Doc], overlay: str) -> list[str]:
    """Every problem found in one rendered overlay (empty when it passes)."""
    problems: list[str] = []
    _, operator = split_builtin(docs)
    problems += check_operator_objects(operator)
    for deployment in _find(docs, "Deployment"):
        problems += check_workload(deployment, docs)
    problems += check_gateway(docs, engine="triton" if overlay == "gpu" else "embedded")
    problems += check_triton(docs, overlay)
    problems += check_job_store(docs, overlay)
    expected_rules = {GATEWAY, TRITON} if overlay == "gpu" else {GATEWAY}
    found_rules = {r["metadata"]["name"] for r in _find(docs, "PrometheusRule")}
    if found_rules != expected_rules:
        problems.append(f"PrometheusRules {sorted(found_rules)}, expected {sorted(expected_rules)}")
    return problems


def adapter_rule_file() -> str:
    """The adapter's metricsQuery with its placeholders filled, as a rule file promtool can parse."""
    _, query = adapter_metric()
    expr = query.replace("<<.GroupBy>>", "namespace, pod").replace(
        "<<.LabelMatchers>>", 'namespace="ich", pod=~"ich-triton-.*"'
    )
    if "<<" in expr:
        raise ValueError(f"unknown prometheus-adapter placeholder left in {expr!r}")
    return yaml.safe_dump(
        {
            "groups": [
                {
                    "name": "prometheus-adapter",
                    "rules": [{"record": "adapter:ich_triton_queue_seconds_per_request", "expr": expr}],
                }
            ]
        },
        sort_keys=False,
    )


def main(argv: list[str] | None = None) -> int:
    """Check one rendered overlay; write the built-in objects and the adapter rule file for the shell."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--overlay", required=True, choices=["gpu", "cpu"])
    parser.add_argument("--rendered", required=True, type=Path, help="output of kubectl kustomize")
    parser.add_argument("--out-dir", required=True, type=Path, help="where <overlay>-builtin.yaml goes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    docs = load_documents(args.rendered.read_text())
    builtin, operator = split_builtin(docs)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{args.overlay}-builtin.yaml").write_text(yaml.safe_dump_all(builtin, sort_keys=False))
    (args.out_dir / "adapter-rules.yml").write_text(adapter_rule_file())
    problems = check_overlay(docs, args.overlay)
    for problem in problems:
        _log.error("%s: %s", args.overlay, problem)
    if not problems:
        _log.info(
            "%s: %d built-in objects, %d Prometheus Operator objects: policy checks passed",
            args.overlay,
            len(builtin),
            len(operator),
        )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
