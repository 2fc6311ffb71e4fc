"""``kpimon silence`` argument handling that needs no broker: bad input fails before any connection,
with a message that says what to give instead."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from kpi_core.silences import InvalidSilence
from pathlib import Path

import yaml

from kpimon.silences import _topic, parse_for, parse_matchers, silence_app

# Nothing listens here: a test that reached Kafka would fail with a connection error instead.
NO_BROKER = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}

CLI_ERRORS = [
    # nothing to match: a silence would mute everything
    (["add", "--for", "2h", "--reason", "launch"], 2, "at least one"),
    # a duration without a unit
    (["add", "--campaign", "spring", "--for", "2", "--reason", "launch"], 2, "expected a duration"),
    # a unit we don't know
    (["add", "--campaign", "spring", "--for", "2 fortnights", "--reason", "launch"], 2, "expected a duration"),
    # a zero duration ends before it starts
    (["add", "--campaign", "spring", "--for", "0s", "--reason", "launch"], 2, "longer than zero"),
    # --match without "="
    (["add", "--match", "device", "--for", "2h", "--reason", "launch"], 2, "DIM=VALUE"),
    # --match with an empty value
    (["add", "--match", "device=", "--for", "2h", "--reason", "launch"], 2, "DIM=VALUE"),
    # the same dimension twice
    (["add", "--campaign", "a", "--match", "campaign=b", "--for", "2h", "--reason", "launch"], 2, "matched twice"),
    # a blank reason
    (["add", "--campaign", "spring", "--for", "2h", "--reason", "  "], 2, "--reason must say why"),
    # no reason at all: typer's own usage error
    (["add", "--campaign", "spring", "--for", "2h"], 2, "--reason"),
    # no duration at all
    (["add", "--campaign", "spring", "--reason", "launch"], 2, "--for"),
    # expire needs an id
    (["expire"], 2, "ID"),
]


@pytest.mark.parametrize(("args", "code", "message"), CLI_ERRORS)
def test_cli_argument_errors(args: list[str], code: int, message: str) -> None:
    result = CliRunner().invoke(silence_app, args, env=NO_BROKER)
    assert result.exit_code == code, result.output
    assert message in result.output
    assert "Traceback" not in result.output


PARSE_MATCHERS = [
    # the named options
    ({"campaign": "spring", "channel": "email", "kpi": "ctr"}, {"campaign": "spring", "channel": "email", "kpi": "ctr"}),
    # --match for other dimensions, with spaces trimmed
    ({"match": ["device = mobile", "country=DE"]}, {"device": "mobile", "country": "DE"}),
    # a value may itself contain "=" (only the first splits)
    ({"match": ["utm_campaign=a=b"]}, {"utm_campaign": "a=b"}),
    # globs pass through untouched
    ({"campaign": "spring-*"}, {"campaign": "spring-*"}),
]


@pytest.mark.parametrize(("kwargs", "expected"), PARSE_MATCHERS)
def test_parse_matchers(kwargs: dict[str, object], expected: dict[str, str]) -> None:
    assert parse_matchers(**kwargs) == expected  # type: ignore[arg-type]


PARSE_FOR = [
    # minutes
    ("30m", 30 * 60_000),
    # hours
    ("2h", 2 * 3_600_000),
    # days
    ("1d", 86_400_000),
]


@pytest.mark.parametrize(("text", "ms"), PARSE_FOR)
def test_parse_for(text: str, ms: int) -> None:
    assert parse_for(text) == ms


def test_bad_duration_is_a_kpimon_error() -> None:
    with pytest.raises(InvalidSilence) as info:
        parse_for("soon")
    assert info.value.reason == "bad_duration"


def silences_config(tmp_path: Path, topic: str) -> Path:
    """The built-in config with its silences topic renamed, as a team's kpimon.yaml would."""
    raw = yaml.safe_load((Path(__file__).parents[2] / "kpi_core" / "default.yaml").read_text())
    raw["topics"] = {"silences": topic}
    path = tmp_path / "kpimon.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_the_topic_comes_from_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The same file the workers read: one place names the topic, so the CLI and the
    # workers cannot disagree about it.
    assert _topic(silences_config(tmp_path, "team-a-silences")) == "team-a-silences"
    monkeypatch.chdir(tmp_path / "..")  # no kpimon.yaml here: the built-in's topic
    assert _topic(None) == "kpimon-silences"


def test_a_bad_config_is_named_before_any_connection(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("topics: {silences: 42}\n")
    result = CliRunner().invoke(silence_app, ["list", "--config", str(bad)], env=NO_BROKER)
    assert result.exit_code == 2


def test_unreachable_broker_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # A short timeout keeps this fast; the message names the broker and what failed.
    monkeypatch.setattr("kpimon.silences.CLI_TIMEOUT", 1.0)
    result = CliRunner().invoke(silence_app, ["list"], env=NO_BROKER)
    assert result.exit_code == 1, result.output
    assert "could not read kpimon-silences at 127.0.0.1:1" in result.output
    assert "Traceback" not in result.output

