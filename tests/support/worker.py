"""A real kpimon worker process for integration tests, plus helpers to feed and read it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import yaml
from prometheus_client.parser import text_string_to_metric_families

from kpi_core.config import Topics

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: The default source topics (short names) and the event type each implies.
SOURCES = Topics().types()


def send_ctr_window(producer: Any, prefix: str, campaign: str, start: int, clicks: int, imps: int = 100) -> None:
    """One campaign's impressions and clicks (cost 1.0 each) in the 5 seconds from ``start``: CTR clicks/imps."""
    for i in range(imps):
        producer.send(f"{prefix}-ad-impressions", orjson.dumps({"ts": start + i * 50, "campaign": campaign, "channel": "social"}))
    for i in range(clicks):
        producer.send(f"{prefix}-ad-clicks", orjson.dumps({"ts": start + i * 50 + 1, "campaign": campaign, "channel": "social", "cost": 1.0}))


def close_input(bootstrap: str, prefix: str, ts: int, partitions: int, topics: list[str] | None = None) -> None:
    """A progress marker at ``ts`` (docs/events.md) in every partition of every source topic.

    Historical data holds the watermark at each source's latest event (it may be a
    paused backfill), so a test's last windows close only when every source has
    moved past them; the markers say so without adding any event.
    """
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap)
    for topic in topics or SOURCES:  # short names (``ad-clicks``), all by default
        for partition in range(partitions):
            producer.send(f"{prefix}-{topic}", value=b"", partition=partition, headers=[("kpimon-watermark", str(ts).encode())])
    producer.flush()
    producer.close()


def topic_names(prefix: str) -> dict[str, Any]:
    """A ``topics`` config section whose every name starts with ``prefix``, so tests don't collide."""
    return {
        "sources": {f"{prefix}-{t}": etype for t, etype in SOURCES.items()},
        "dead_letters": f"{prefix}-dead-letters",
        "late_events": f"{prefix}-late-events",
        "snapshots": f"{prefix}-kpi-snapshots",
        "alerts": f"{prefix}-kpi-alerts",
        "silences": f"{prefix}-silences",
        "feedback": f"{prefix}-feedback",
        "partitions": 2,
    }


class Worker:
    """``kpimon worker`` in a subprocess, with its own app id, topics, port and data dir."""

    def __init__(self, config: dict[str, Any], *, bootstrap: str, app_id: str, tmp: Path, env: dict[str, str] | None = None,
                 config_path: Path | None = None) -> None:
        if env and "KPIMON_METRICS_PORT" in env:
            self.port = int(env["KPIMON_METRICS_PORT"])  # config files may be shared by several workers
        else:
            self.port = config.setdefault("metrics_port", free_port())
        self.config = config
        self.config_path = config_path or tmp / f"{app_id}.yaml"
        if config_path is None or not config_path.exists():
            self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = tmp / f"{app_id}.log"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("SLACK_")},
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "KPIMON_APP_ID": app_id,
            "KPIMON_DATA_DIR": str(tmp / f"{app_id}-data"),
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90, *, wait: bool = True) -> Worker:
        """Start the process; with ``wait=False`` return at once (it may still be recovering)."""
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kpimon.cli", "worker", "--config", str(self.config_path), "--loglevel", "info"],
                env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            )
        if wait:
            self.wait_ready(timeout)
        return self

    def health(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                return orjson.loads(r.read())
        except OSError:
            return None

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, f"worker exited:\n{self.log()}"
            h = self.health()
            if h and h.get("ready"):
                return
            time.sleep(0.3)
        raise TimeoutError(f"worker not ready after {timeout}s:\n{self.log()}")

    def scrape(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            return r.read().decode()

    def samples(self, name: str) -> dict[frozenset[tuple[str, str]], float]:
        """Every sample of one metric, keyed by its labels."""
        out = {}
        for family in text_string_to_metric_families(self.scrape()):
            for s in family.samples:
                if s.name == name:
                    out[frozenset(s.labels.items())] = s.value
        return out

    def wait_for(self, name: str, labels: dict[str, str], timeout: float = 60) -> float:
        """Poll /metrics until a sample with exactly these labels (others empty) appears."""
        want = {k: v for k, v in labels.items()}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for key, value in self.samples(name).items():
                d = dict(key)
                if all(d.get(k, "") == v for k, v in want.items()) and all(d[k] == "" for k in d.keys() - want.keys() if k not in ("kpi", "measure", "window", "breakdown")):
                    return value
            time.sleep(0.5)
        seen = sorted(str(sorted(k)) for k in self.samples(name))
        raise TimeoutError(f"no {name}{labels} on /metrics after {timeout}s; it has {seen}:\n{self.log()[-3000:]}")

    def wait_count(self, name: str, labels: dict[str, str], value: float, timeout: float = 60) -> None:
        """Poll /metrics until the sample with these labels reaches ``value`` (a counter caught up)."""
        deadline = time.monotonic() + timeout
        while (got := self.samples(name).get(frozenset(labels.items()), 0.0)) < value:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name}{labels} is {got}, not {value}, after {timeout}s:\n{self.log()[-3000:]}")
            time.sleep(0.2)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        """kill -9: no shutdown, no final commit."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
