"""Runtime settings that come from the environment, not from kpimon.yaml."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """Where the worker connects and keeps its local files."""

    bootstrap: str = DEFAULT_BOOTSTRAP
    app_id: str = "kpimon"
    data_dir: Path = Path(".cache/worker")
    batch_size: int = 10_000  # events per micro-batch in the router
    batch_within: float = 0.25  # seconds to wait for a micro-batch to fill

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> WorkerSettings:
        return cls(
            bootstrap=env.get("KAFKA_BOOTSTRAP_SERVERS", DEFAULT_BOOTSTRAP),
            app_id=env.get("KPIMON_APP_ID", "kpimon"),
            data_dir=Path(env.get("KPIMON_DATA_DIR", ".cache/worker")),
        )

    @property
    def events_topic(self) -> str:
        return f"{self.app_id}-events"

    @property
    def partials_topic(self) -> str:
        return f"{self.app_id}-partials"
