"""docker-compose.yml and the Dockerfile, checked structurally (no Docker engine needed)."""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("kafka", "worker", "simulator", "prometheus", "grafana")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, args = line.partition(" ")
            out.append((instruction.upper(), args.strip()))
    return out


def mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host path, container path) of each bind mount (short syntax, or long with type: bind)."""
    out = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        elif volume.get("type") == "bind":
            source, target = volume["source"], volume["target"]
        else:
            continue
        if source.startswith((".", "/")):
            out.append((source, target))
    return out


def host_path(container_path: str, service: dict[str, Any]) -> Path:
    """The repository file behind a path inside the container, through the service's bind mounts."""
    want = PurePosixPath(container_path)
    for source, target in mounts(service):
        if want == PurePosixPath(target) or PurePosixPath(target) in want.parents:
            return ROOT / source / want.relative_to(target)
    raise AssertionError(f"{container_path} is not bind-mounted from the repository")


def published(service: dict[str, Any]) -> set[int]:
    return {int(str(p).split(":")[0]) for p in service.get("ports", []) if ":" in str(p)}


def test_services_exist(compose: dict[str, Any]) -> None:
    assert set(SERVICES) <= compose["services"].keys()


@pytest.mark.parametrize("name", SERVICES)
def test_bind_mounts_exist_in_the_repository(compose: dict[str, Any], name: str) -> None:
    for source, _ in mounts(compose["services"][name]):
        assert (ROOT / source).exists(), f"{name} mounts {source}, which is not in the repository"


@pytest.mark.parametrize(("name", "port"), [("kafka", 9092), ("worker", 6066), ("prometheus", 9090), ("grafana", 3000)])
def test_ports_are_published(compose: dict[str, Any], name: str, port: int) -> None:
    assert port in published(compose["services"][name])


def test_kafka_is_single_node_kraft_with_a_healthcheck(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    assert kafka["image"] == "apache/kafka:4.1.1"
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]  # what the containers use
    assert "localhost:9092" in env["KAFKA_ADVERTISED_LISTENERS"]  # what the published port offers
    assert kafka["healthcheck"]["test"]


def test_worker_waits_for_a_healthy_kafka_and_uses_the_demo_config(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    assert worker["build"] == "."
    assert worker["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert worker["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    config = worker["command"][worker["command"].index("--config") + 1]
    assert host_path(config, worker) == ROOT / "deploy" / "demo" / "kpimon.yaml"


def test_simulator_runs_only_with_the_sim_profile(compose: dict[str, Any]) -> None:
    sim = compose["services"]["simulator"]
    assert sim["profiles"] == ["sim"]
    assert sim["command"][0] == "simulate"
    assert sim["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"


def test_worker_has_a_healthcheck(compose: dict[str, Any], dockerfile: list[tuple[str, str]]) -> None:
    healthchecks = [args for instruction, args in dockerfile if instruction == "HEALTHCHECK"]
    assert "healthcheck" in compose["services"]["worker"] or healthchecks
    for args in healthchecks:
        assert "http://localhost:6066/health" in args and "urllib" in args


def test_prometheus_config_scrapes_the_worker_and_loads_the_rules(compose: dict[str, Any]) -> None:
    prom = compose["services"]["prometheus"]
    flags = dict(arg.removeprefix("--").split("=", 1) for arg in prom.get("command", []) if arg.startswith("--"))
    config_path = host_path(flags.get("config.file", "/etc/prometheus/prometheus.yml"), prom)
    config = yaml.safe_load(config_path.read_text())
    targets = [t for job in config["scrape_configs"] for sc in job.get("static_configs", []) for t in sc["targets"]]
    assert "worker:6066" in targets
    for rule_file in config["rule_files"]:
        assert (config_path.parent / rule_file).is_file(), f"{rule_file} is not mounted with the config"


def test_grafana_is_provisioned_and_anonymous_viewer(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    datasources = host_path("/etc/grafana/provisioning/datasources", grafana)
    providers = host_path("/etc/grafana/provisioning/dashboards", grafana)
    assert (datasources / "prometheus.yml").is_file()
    provider_cfg = yaml.safe_load((providers / "kpimon.yml").read_text())
    [provider] = provider_cfg["providers"]
    dashboards = host_path(provider["options"]["path"], grafana)
    assert {p.name for p in dashboards.glob("*.json")} >= {"campaign-kpis.json", "pipeline-health.json"}
    env = grafana["environment"]
    assert str(env["GF_AUTH_ANONYMOUS_ENABLED"]).lower() == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    # The provisioned datasource points at the compose service.
    [ds] = yaml.safe_load((datasources / "prometheus.yml").read_text())["datasources"]
    assert ds["uid"] == "prometheus" and ds["url"] == "http://prometheus:9090"


def test_dockerfile_runs_kpimon_as_a_non_root_user(dockerfile: list[tuple[str, str]]) -> None:
    instructions = dict(dockerfile)  # the last of each kind wins, as in Docker
    assert instructions["FROM"].startswith("python:3.11-slim")
    user = instructions["USER"].split(":")[0]
    assert user not in ("root", "0"), "the worker must not run as root"
    assert any(i == "RUN" and re.search(r"\bpip install \.", a) for i, a in dockerfile)
    assert "6066" in instructions["EXPOSE"].split()
    assert json.loads(instructions["ENTRYPOINT"]) == ["kpimon"]  # exec form: signals reach kpimon
    # USER comes after the install, or pip would run unprivileged and fail.
    kinds = [i for i, _ in dockerfile]
    assert kinds.index("USER") > max(n for n, (i, a) in enumerate(dockerfile) if i == "RUN" and "pip install" in a)


def test_dockerignore_keeps_local_state_out_of_the_image() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")}
    assert {".venv", ".cache", ".git"} <= ignored
    for needed in ("pyproject.toml", "README.md", "kpi_core", "streams", "alerts", "kpimon"):
        assert needed not in ignored, f"{needed} is needed by pip install ."
