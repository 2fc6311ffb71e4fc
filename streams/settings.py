"""Runtime settings that come from the environment, not from kpimon.yaml.

``Settings.from_env`` reads all of them once, at start: the worker's own (``WorkerSettings``),
how to reach Kafka (``streams.security.KafkaSecurity``) and where alerts go
(``alerts.settings.SlackSettings``). Every problem in any of them is reported at once, naming
the variable; the parts are handed down, never read from the environment again.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from alerts.settings import SlackSettings
from alerts.settings import from_env as slack_from_env
from kpi_core.errors import ConfigError
from streams.security import KafkaSecurity

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """Where the worker connects and keeps its local files."""

    bootstrap: str = DEFAULT_BOOTSTRAP
    app_id: str = "kpimon"
    data_dir: Path = Path(".cache/worker")
    batch_size: int = 10_000  # events per micro-batch in the router
    batch_within: float = 0.25  # seconds to wait for a micro-batch to fill
    # Override kpimon.yaml's metrics_port / metrics_host, so workers can share one config file.
    metrics_port: int | None = None
    metrics_host: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> WorkerSettings:
        port = env.get("KPIMON_METRICS_PORT")
        if port is not None and not (port.strip().isdigit() and 0 <= int(port) <= 65535):
            raise ConfigError([("KPIMON_METRICS_PORT", f"expected a port number 0-65535, got {port!r}")])
        host = env.get("KPIMON_METRICS_HOST")
        if host is not None and not host.strip():
            raise ConfigError([("KPIMON_METRICS_HOST", "expected an address to bind to, e.g. 0.0.0.0 or 127.0.0.1")])
        return cls(
            bootstrap=env.get("KAFKA_BOOTSTRAP_SERVERS", DEFAULT_BOOTSTRAP),
            app_id=env.get("KPIMON_APP_ID", "kpimon"),
            data_dir=Path(env.get("KPIMON_DATA_DIR", ".cache/worker")),
            metrics_port=int(port) if port is not None else None,
            metrics_host=host.strip() if host is not None else None,
        )

    @property
    def events_topic(self) -> str:
        return f"{self.app_id}-events"

    @property
    def partials_topic(self) -> str:
        return f"{self.app_id}-partials"

    @property
    def changelog_topics(self) -> list[str]:
        """The compacted topics behind the worker's tables (Faust's naming)."""
        return [f"{self.app_id}-{table}-changelog" for table in TABLES]


#: The worker's Faust tables (streams/app.py): stage 1, stage 2, the pre-stage-2 alert
#: state (read on upgrade), and alert delivery.
TABLES = ("stage1", "stage2", "incidents", "delivery")


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the environment says, read once."""

    worker: WorkerSettings
    kafka: KafkaSecurity
    slack: SlackSettings

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        problems: list[tuple[str, str]] = []
        parts: dict[str, object] = {}
        for name, read in (("worker", WorkerSettings.from_env), ("kafka", KafkaSecurity.from_env), ("slack", slack_from_env)):
            try:
                parts[name] = read(env)
            except ConfigError as exc:
                problems += exc.problems
        if problems:
            raise ConfigError(problems)
        return cls(**parts)  # type: ignore[arg-type]
