from __future__ import annotations

from pathlib import Path

import pytest

from alerts.settings import from_env
from kpi_core.errors import ConfigError

TOKEN = "xoxb-1111-secret-token"
WEBHOOK_URL = "https://hooks.example/T/B/s3cr3t"


def test_secrets_are_hidden_from_repr() -> None:
    settings = from_env({"SLACK_BOT_TOKEN": TOKEN, "SLACK_CHANNEL": "#kpi-alerts", "SLACK_WEBHOOK_URL": WEBHOOK_URL})

    assert TOKEN not in repr(settings) and "s3cr3t" not in repr(settings)
    assert TOKEN not in str(settings)
    assert settings.bot_token is not None and settings.bot_token.get_secret_value() == TOKEN
    assert settings.channel == "#kpi-alerts"


def test_defaults_to_slack_and_nothing_configured() -> None:
    settings = from_env({})

    assert (settings.bot_token, settings.channel, settings.webhook_url) == (None, None, None)
    assert settings.api_url == "https://slack.com/api/"


def test_api_url_gets_a_trailing_slash() -> None:
    assert from_env({"SLACK_API_URL": "http://127.0.0.1:9/api"}).api_url == "http://127.0.0.1:9/api/"


def test_secrets_are_read_from_files(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(TOKEN + "\n")
    (tmp_path / "webhook").write_text(WEBHOOK_URL + "\n")

    settings = from_env({
        "SLACK_BOT_TOKEN_FILE": str(tmp_path / "token"),
        "SLACK_CHANNEL": "C0123",
        "SLACK_WEBHOOK_URL_FILE": str(tmp_path / "webhook"),
    })

    assert settings.bot_token is not None and settings.bot_token.get_secret_value() == TOKEN
    assert settings.webhook_url is not None and settings.webhook_url.get_secret_value() == WEBHOOK_URL


def test_token_without_channel_names_slack_channel() -> None:
    with pytest.raises(ConfigError) as caught:
        from_env({"SLACK_BOT_TOKEN": TOKEN, "SLACK_CHANNEL": ""})

    assert caught.value.problems == [("SLACK_CHANNEL", "required when SLACK_BOT_TOKEN is set")]
    assert TOKEN not in str(caught.value)


@pytest.mark.parametrize(
    ("env", "field"),
    [
        # a channel alone would silently send alerts to the log only
        ({"SLACK_CHANNEL": "#kpi-alerts"}, "SLACK_BOT_TOKEN"),
        # two sources for one secret: which one was meant?
        (
            {"SLACK_BOT_TOKEN": TOKEN, "SLACK_BOT_TOKEN_FILE": "/run/secrets/t", "SLACK_CHANNEL": "#a"},
            "SLACK_BOT_TOKEN_FILE",
        ),
        # a secret file that is not there
        ({"SLACK_WEBHOOK_URL_FILE": "/nonexistent/webhook"}, "SLACK_WEBHOOK_URL_FILE"),
        # not a URL; the message must not repeat the secret
        ({"SLACK_WEBHOOK_URL": "hooks.slack.com/services/T/B/s3cr3t"}, "SLACK_WEBHOOK_URL"),
        ({"SLACK_API_URL": "slack.com/api"}, "SLACK_API_URL"),  # the scheme is missing
    ],
)
def test_invalid_settings_name_the_variable(env: dict[str, str], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        from_env(env)

    assert [path for path, _ in caught.value.problems] == [field]
    assert TOKEN not in str(caught.value) and "s3cr3t" not in str(caught.value)


def test_empty_secret_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("\n")

    with pytest.raises(ConfigError, match="SLACK_BOT_TOKEN_FILE: .* is empty"):
        from_env({"SLACK_BOT_TOKEN_FILE": str(tmp_path / "token"), "SLACK_CHANNEL": "#a"})


def test_an_app_token_turns_the_buttons_on_and_must_be_an_app_level_token(tmp_path: Path) -> None:
    secret = tmp_path / "app-token"
    secret.write_text("xapp-1-A0-secret-value\n")
    settings = from_env({"SLACK_BOT_TOKEN": "xoxb-1", "SLACK_CHANNEL": "#a", "SLACK_APP_TOKEN_FILE": str(secret)})
    assert settings.app_token is not None and settings.app_token.get_secret_value() == "xapp-1-A0-secret-value"
    assert "secret-value" not in repr(settings)
    with pytest.raises(ConfigError) as exc:
        from_env({"SLACK_BOT_TOKEN": "xoxb-1", "SLACK_CHANNEL": "#a", "SLACK_APP_TOKEN": "xoxb-oops-bot-token"})
    assert exc.value.problems == [("SLACK_APP_TOKEN", "expected an app-level token (xapp-...) with the connections:write scope")]
    assert "oops" not in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        from_env({"SLACK_APP_TOKEN": "xapp-1"})
    assert [p for p, _ in exc.value.problems] == ["SLACK_APP_TOKEN"]
