"""deploy/k8s: every manifest parses and hangs together (selectors, ports, probes, config, secrets)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kpi_core.config import from_dict

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
FILES = ("worker-statefulset.yaml", "service.yaml", "servicemonitor.yaml", "secret.yaml", "configmap.yaml")


def _docs() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                yield path.name, doc


DOCS = list(_docs())


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for _, d in DOCS if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.fixture(scope="module")
def sts() -> dict[str, Any]:
    return one("StatefulSet")


@pytest.fixture(scope="module")
def container(sts: dict[str, Any]) -> dict[str, Any]:
    [c] = sts["spec"]["template"]["spec"]["containers"]
    return c


@pytest.fixture(scope="module")
def config_map() -> dict[str, Any]:
    return one("ConfigMap", "kpimon-config")


def test_every_file_is_there() -> None:
    assert {name for name, _ in DOCS} >= set(FILES)


@pytest.mark.parametrize(("file", "doc"), DOCS, ids=[f"{f}:{d.get('kind')}" for f, d in DOCS])
def test_manifest_has_api_version_kind_and_name(file: str, doc: dict[str, Any]) -> None:
    assert isinstance(doc.get("apiVersion"), str) and doc["apiVersion"]
    assert doc.get("kind") in {"StatefulSet", "Service", "ServiceMonitor", "Secret", "ConfigMap"}
    assert doc["metadata"]["name"]
    assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "kpimon"


def test_statefulset_selects_its_pods_and_has_a_headless_service(sts: dict[str, Any]) -> None:
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert matches(sts["spec"]["selector"]["matchLabels"], pod_labels)
    headless = one("Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert matches(headless["spec"]["selector"], pod_labels)


def test_services_select_the_worker_pods(sts: dict[str, Any]) -> None:
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    for _, svc in (x for x in DOCS if x[1]["kind"] == "Service"):
        assert matches(svc["spec"]["selector"], pod_labels), svc["metadata"]["name"]
        assert [p["targetPort"] for p in svc["spec"]["ports"]] == ["metrics"]


def test_the_metrics_port_is_6066(container: dict[str, Any], config_map: dict[str, Any]) -> None:
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == 6066
    assert from_dict(yaml.safe_load(config_map["data"]["kpimon.yaml"])).metrics_port == 6066


def test_service_monitor_scrapes_the_metrics_service_once() -> None:
    monitor = one("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selected = [d for _, d in DOCS if d["kind"] == "Service" and matches(monitor["spec"]["selector"]["matchLabels"], d["metadata"]["labels"])]
    assert [s["metadata"]["name"] for s in selected] == ["kpimon-worker"], "exactly one Service, or pods are scraped twice"
    [service] = selected
    port_names = {p["name"] for p in service["spec"]["ports"]}
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    assert "metrics" in port_names
    assert monitor["spec"]["endpoints"][0].get("path", "/metrics") == "/metrics"
    # The job label becomes "kpimon", which the dashboards and alert rules select.
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "kpimon"


def test_config_map_holds_a_valid_kpimon_yaml(config_map: dict[str, Any]) -> None:
    config = from_dict(yaml.safe_load(config_map["data"]["kpimon.yaml"]))
    assert config.kpis and config.targets


def test_replicas_do_not_exceed_partitions(sts: dict[str, Any], config_map: dict[str, Any]) -> None:
    config = from_dict(yaml.safe_load(config_map["data"]["kpimon.yaml"]))
    assert 1 <= sts["spec"]["replicas"] <= config.topics.partitions


def test_config_is_mounted_where_the_worker_reads_it(sts: dict[str, Any], container: dict[str, Any]) -> None:
    config_path = container["args"][container["args"].index("--config") + 1]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    [(name, volume)] = [(n, v) for n, v in volumes.items() if v.get("configMap", {}).get("name") == "kpimon-config"]
    assert config_path == f"{mounts[name]}/kpimon.yaml"
    assert {"key": "kpimon.yaml", "path": "kpimon.yaml"} in volume["configMap"]["items"]


def _env_refs(container: dict[str, Any], ref: str) -> list[tuple[str, str]]:
    """The keys the pod needs; ``optional: true`` ones (SLACK_APP_TOKEN's) may be left out."""
    return [
        (e["valueFrom"][ref]["name"], e["valueFrom"][ref]["key"])
        for e in container.get("env", [])
        if ref in e.get("valueFrom", {}) and not e["valueFrom"][ref].get("optional")
    ]


def test_referenced_secret_and_config_keys_exist(container: dict[str, Any]) -> None:
    secret_refs = _env_refs(container, "secretKeyRef")
    assert secret_refs, "the Slack token comes from a Secret"
    for name, key in secret_refs:
        secret = one("Secret", name)
        assert secret["type"] == "Opaque"
        assert key in secret.get("stringData", {}) or key in secret.get("data", {}), f"Secret {name} has no key {key}"
    for name, key in _env_refs(container, "configMapKeyRef"):
        assert key in one("ConfigMap", name)["data"], f"ConfigMap {name} has no key {key}"


def test_replicas_share_one_consumer_group(container: dict[str, Any]) -> None:
    env = {e["name"]: e for e in container["env"]}
    assert env["KPIMON_APP_ID"].get("value"), "a literal app id, the same for every pod"
    assert {"KAFKA_BOOTSTRAP_SERVERS", "SLACK_BOT_TOKEN", "SLACK_CHANNEL"} <= env.keys()
    assert env["SLACK_APP_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "kpimon-slack", "key": "app-token", "optional": True}


def test_probes_point_at_health_on_the_metrics_port(container: dict[str, Any]) -> None:
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/health", probe
        assert get["port"] in ("metrics", 6066), probe


def test_resources_and_security(sts: dict[str, Any], container: dict[str, Any]) -> None:
    assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
    assert container["resources"]["limits"]["memory"]
    pod = sts["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    dockerfile_user = [line.split()[1] for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("USER ")]
    assert dockerfile_user == [f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
