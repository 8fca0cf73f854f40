"""``scripts/manifest_check.py``'s job-store policy on the rendered overlays, and on broken copies of them.

gpu: the replicas share PostgreSQL, its URL from the ``ich-database`` Secret; cpu: one replica, SQLite on a
PersistentVolumeClaim at ``ICH_DATA_DIR``, Recreate.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from tests.unit.deploy.test_manifest_check import _container, _one, _render, manifest_check

Doc = dict[str, Any]


@pytest.fixture(scope="module")
def overlays() -> dict[str, list[Doc]]:
    return {"gpu": _render("gpu"), "cpu": _render("cpu")}


def test_the_overlays_carry_their_job_store(overlays: dict[str, list[Doc]]) -> None:
    for overlay, docs in overlays.items():
        assert list(manifest_check.check_job_store(docs, overlay)) == []
    gpu_env = {e["name"]: e for e in _container(overlays["gpu"], "ich-gateway").get("env", [])}
    assert gpu_env["ICH_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "ich-database", "key": "url"}
    cpu = overlays["cpu"]
    assert _one(cpu, "Deployment", "ich-gateway")["spec"]["replicas"] == 1
    assert _one(cpu, "PersistentVolumeClaim", "ich-gateway-data")["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert _one(cpu, "PodDisruptionBudget", "ich-gateway")["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": {"app.kubernetes.io/name": "ich-gateway"}},
    }


def _no_database_secret(docs: list[Doc]) -> None:
    _container(docs, "ich-gateway")["env"] = []


def _url_in_configmap(docs: list[Doc]) -> None:
    _one(docs, "ConfigMap", "ich-gateway-config")["data"]["ICH_DATABASE_URL"] = "postgresql://u:p@db/ich"


def _sqlite_scaled_out(docs: list[Doc]) -> None:
    _one(docs, "HorizontalPodAutoscaler", "ich-gateway")["spec"]["maxReplicas"] = 3


def _rolling_sqlite(docs: list[Doc]) -> None:
    _one(docs, "Deployment", "ich-gateway")["spec"]["strategy"] = {"type": "RollingUpdate"}


def _no_claim(docs: list[Doc]) -> None:
    docs.remove(_one(docs, "PersistentVolumeClaim", "ich-gateway-data"))


@pytest.mark.parametrize(
    ("overlay", "breakage", "expected"),
    [
        ("gpu", _no_database_secret, "ICH_DATABASE_URL must come from ich-database"),
        ("gpu", _url_in_configmap, "holds a password"),
        ("cpu", _sqlite_scaled_out, "ICH_DATABASE_URL must come from ich-database"),
        ("cpu", _rolling_sqlite, "must be Recreate"),
        ("cpu", _no_claim, "is not in the overlay"),
    ],
)
def test_each_breakage_is_reported(
    overlays: dict[str, list[Doc]], overlay: str, breakage: Callable[[list[Doc]], None], expected: str
) -> None:
    docs = copy.deepcopy(overlays[overlay])
    breakage(docs)
    problems = manifest_check.check_overlay(docs, overlay)
    assert any(expected in p for p in problems), problems
