"""WorkerSettings: what comes from the environment, and clear errors naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from kpi_core.errors import ConfigError
from streams.settings import Settings, WorkerSettings


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


def test_settings_are_read_once_and_every_problem_is_named_at_once(tmp_path: Path) -> None:
    # One bad variable in each part: the operator sees all three, each by its variable.
    with pytest.raises(ConfigError) as err:
        Settings.from_env({
            "KPIMON_METRICS_PORT": "http",
            "KAFKA_SECURITY_PROTOCOL": "TLS",
            "SLACK_BOT_TOKEN_FILE": str(tmp_path / "missing"),
            "SLACK_CHANNEL": "#kpi",
        })
    named = [name for name, _ in err.value.problems]
    assert named == ["KPIMON_METRICS_PORT", "KAFKA_SECURITY_PROTOCOL", "SLACK_BOT_TOKEN_FILE"]


def test_settings_parts_and_no_secret_in_their_repr(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("xoxb-very-secret\n")
    s = Settings.from_env({
        "KPIMON_APP_ID": "team-a",
        "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "KAFKA_SASL_USERNAME": "kpimon",
        "KAFKA_SASL_PASSWORD": "hunter2-secret",
        "SLACK_BOT_TOKEN_FILE": str(token),
        "SLACK_CHANNEL": "#kpi",
    })
    assert (s.worker.app_id, s.kafka.protocol, s.kafka.sasl_username, s.slack.channel) == ("team-a", "SASL_PLAINTEXT", "kpimon", "#kpi")
    assert s.slack.bot_token is not None and s.slack.bot_token.get_secret_value() == "xoxb-very-secret"
    assert "secret" not in repr(s) and "hunter2" not in str(s)
