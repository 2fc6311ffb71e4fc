"""WorkerSettings: what comes from the environment, and clear errors naming the variable."""

from __future__ import annotations

import pytest

from kpi_core.errors import ConfigError
from streams.settings import WorkerSettings


def test_defaults_leave_the_metrics_address_to_the_config() -> None:
    s = WorkerSettings.from_env({})
    assert (s.bootstrap, s.app_id, s.metrics_port, s.metrics_host) == ("127.0.0.1:9092", "kpimon", None, None)


def test_metrics_port_and_host_from_the_environment() -> None:
    s = WorkerSettings.from_env({"KPIMON_METRICS_PORT": "7001", "KPIMON_METRICS_HOST": " 127.0.0.1 "})
    assert (s.metrics_port, s.metrics_host) == (7001, "127.0.0.1")


@pytest.mark.parametrize("port", ["", "http", "-1", "65536", "80.5"])
def test_a_bad_metrics_port_names_the_variable(port: str) -> None:
    with pytest.raises(ConfigError) as err:
        WorkerSettings.from_env({"KPIMON_METRICS_PORT": port})
    assert err.value.problems[0][0] == "KPIMON_METRICS_PORT"
    assert repr(port) in str(err.value)


def test_an_empty_metrics_host_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="KPIMON_METRICS_HOST"):
        WorkerSettings.from_env({"KPIMON_METRICS_HOST": "  "})
