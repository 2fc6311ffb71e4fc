"""Slack connection settings, read from the environment and secret files only."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, SecretStr
from slack_sdk.web.async_client import AsyncWebClient

from kpi_core.errors import ConfigError


class SlackSettings(BaseModel):
    """Where alerts go. Secrets are ``SecretStr``, so ``repr()`` and logs show ``**********``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bot_token: SecretStr | None = None
    channel: str | None = None
    webhook_url: SecretStr | None = None
    api_url: str = AsyncWebClient.BASE_URL
    app_token: SecretStr | None = None  # Socket Mode: the buttons on incident messages


def from_env(env: Mapping[str, str] = os.environ) -> SlackSettings:
    """Read ``SLACK_*`` variables; every problem is reported at once as a ``ConfigError``."""
    problems: list[tuple[str, str]] = []
    token = read_secret(env, "SLACK_BOT_TOKEN", problems)
    webhook_url = read_secret(env, "SLACK_WEBHOOK_URL", problems)
    app_token = read_secret(env, "SLACK_APP_TOKEN", problems)
    channel = env_value(env, "SLACK_CHANNEL")
    api_url = env_value(env, "SLACK_API_URL") or AsyncWebClient.BASE_URL

    if token and not channel:
        problems.append(("SLACK_CHANNEL", "required when SLACK_BOT_TOKEN is set"))
    if channel and not _given(env, "SLACK_BOT_TOKEN") and not _given(env, "SLACK_WEBHOOK_URL"):
        problems.append(("SLACK_BOT_TOKEN", "required when SLACK_CHANNEL is set; without it alerts only reach the log"))
    if webhook_url and not _is_http_url(webhook_url):
        # The value is a secret: say what is wrong without repeating it.
        problems.append(("SLACK_WEBHOOK_URL", "expected an http(s) URL such as https://hooks.slack.com/services/..."))
    if app_token and not app_token.startswith("xapp-"):
        # A bot token (xoxb-) here is the usual mix-up; the value itself is not repeated.
        problems.append(("SLACK_APP_TOKEN", "expected an app-level token (xapp-...) with the connections:write scope"))
    if app_token and not _given(env, "SLACK_BOT_TOKEN"):
        problems.append(("SLACK_APP_TOKEN", "needs SLACK_BOT_TOKEN too: the buttons edit the bot's messages"))
    if not _is_http_url(api_url):
        problems.append(("SLACK_API_URL", f"expected an http(s) URL like {AsyncWebClient.BASE_URL}, got {api_url!r}"))
    if problems:
        raise ConfigError(problems)
    return SlackSettings(
        bot_token=SecretStr(token) if token else None,
        channel=channel,
        webhook_url=SecretStr(webhook_url) if webhook_url else None,
        app_token=SecretStr(app_token) if app_token else None,
        api_url=api_url if api_url.endswith("/") else api_url + "/",
    )


def env_value(env: Mapping[str, str], name: str) -> str | None:
    """A variable's value; empty counts as unset, as deployment templates often leave it."""
    return env.get(name, "").strip() or None


def _given(env: Mapping[str, str], name: str) -> bool:
    """Whether a secret was given at all, readable or not (that is reported separately)."""
    return bool(env_value(env, name) or env_value(env, f"{name}_FILE"))


def read_secret(env: Mapping[str, str], name: str, problems: list[tuple[str, str]]) -> str | None:
    """A secret given directly in ``NAME`` or as a file path in ``NAME_FILE`` (a mounted secret)."""
    value, path = env_value(env, name), env_value(env, f"{name}_FILE")
    if value and path:
        problems.append((f"{name}_FILE", f"give either {name} or {name}_FILE, not both"))
        return None
    if not path:
        return value
    try:
        value = Path(path).read_text(encoding="utf-8").strip()
    except OSError as err:
        problems.append((f"{name}_FILE", f"cannot read {path}: {err.strerror or type(err).__name__}"))
        return None
    if not value:
        problems.append((f"{name}_FILE", f"{path} is empty"))
    return value or None


def _is_http_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)
