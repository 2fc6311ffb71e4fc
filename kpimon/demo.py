"""``kpimon demo``: Kafka, a worker and the simulator, watched through a live terminal view.

The worker and the simulator write their logs to one file (its path is printed), so the
screen shows only what a new user came for: per campaign, the latest closed window's KPIs
against their targets, updated as windows close, and each alert as it fires. The view reads
what any consumer could: the snapshots topic and the alerts outbox topic.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from alerts.render import render_event
from kpi_core.config import Config
from kpi_core.incidents import AlertEvent
from kpi_core.results import format_value

#: The view's columns: (KPI, heading). Missing KPIs of the config show as "-".
COLUMNS = (("ctr", "CTR"), ("cpc", "CPC"), ("conversion_rate", "conv."), ("bounce_rate", "bounce"), ("cpa", "CPA"))
MAX_ALERTS = 4  # lines: the newest alert's title and first finding, then the one before


@dataclass
class LiveView:
    """What the screen shows, built from snapshot and alert records (``apply``) and drawn by ``render``."""

    config: Config
    window: str
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)  # campaign -> kpi -> (value, window start, provisional)
    firing: dict[str, str] = field(default_factory=dict)  # campaign -> "KPI severity"
    alerts: list[str] = field(default_factory=list)
    snapshots: int = 0
    feed_error: str | None = None  # why the view stopped following the topics, if it did

    def apply_snapshot(self, snap: dict[str, Any]) -> None:
        if snap.get("window") != self.window or snap.get("breakdown") != "campaign":
            return
        self.snapshots += 1
        campaign = snap["group"]["campaign"]
        row = self.rows.setdefault(campaign, {})
        values = [(k, v, False) for k, v in snap.get("kpis", {}).items()]
        values += [(k, v, True) for k, v in snap.get("provisional", {}).items()]
        for kpi, value, provisional in values:
            old = row.get(kpi)
            if old is None or old[1] <= snap["start"]:  # a window's later version, or a newer window
                row[kpi] = (value, snap["start"], provisional)

    def apply_alert(self, raw: dict[str, Any]) -> None:
        event = AlertEvent.from_json(raw)
        text = render_event(event)[0].replace("*", "")
        stamp = time.strftime("%H:%M:%S")
        self.alerts = [f"{stamp}  {line}" for line in text.splitlines()[:2]] + self.alerts
        del self.alerts[MAX_ALERTS:]
        campaign = event.group.get("campaign")
        if campaign is None:
            return
        firing = [f for f in event.findings if f.status == "firing"]
        if event.status == "firing" and firing:
            self.firing[campaign] = ", ".join(f.kpi for f in firing)
        else:
            self.firing.pop(campaign, None)

    def _line(self, kpi: str, group: dict[str, str]) -> float | None:
        target = self.config.targets.get(kpi)
        return target.for_group(group) if target else None

    def _cell(self, kpi: str, campaign: str) -> Text:
        """The value, red on the wrong side of its target (shown when it differs from the column's)."""
        value = self.rows.get(campaign, {}).get(kpi)
        k = self.config.kpis.get(kpi)
        if value is None or value[0] is None or k is None:
            return Text("-", style="dim")
        shown = ("~" if value[2] else "") + format_value(value[0], k.unit)
        line = self._line(kpi, {"campaign": campaign})
        if line is None:
            return Text(shown)
        if line != self._line(kpi, {}):
            shown += f" / {format_value(line, k.unit)}"
        bad = value[0] < line if k.direction == "higher" else value[0] > line
        return Text(shown, style="bold red" if bad else "green")

    def _heading(self, kpi: str, name: str) -> str:
        k, line = self.config.kpis.get(kpi), self._line(kpi, {})
        if k is None or line is None:
            return name
        return f"{name}\n{'≥' if k.direction == 'higher' else '≤'}{format_value(line, k.unit)}"

    def render(self, header: str) -> Group:
        # No vertical rules: the view fits an 80-column terminal.
        table = Table(title=f"latest closed {self.window} window per campaign (target under each KPI)", expand=False,
                      box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1), pad_edge=False, collapse_padding=True)
        table.add_column("campaign", no_wrap=True, min_width=8)
        table.add_column("window", no_wrap=True, min_width=8)
        for kpi, name in COLUMNS:
            table.add_column(self._heading(kpi, name), justify="right", no_wrap=True, min_width=7)
        table.add_column("alert", no_wrap=True, max_width=16, overflow="ellipsis")
        for campaign in sorted(self.rows):
            starts = [v[1] for v in self.rows[campaign].values()]
            start = max(starts)[11:19] if starts else "-"  # ISO-8601 UTC: the time of day
            alert = self.firing.get(campaign)
            table.add_row(campaign, start, *(self._cell(k, campaign) for k, _ in COLUMNS),
                          Text(f"FIRING {alert}", style="bold red") if alert else Text("ok", style="green"))
        if not self.rows:
            table.add_row("waiting ...", "", *[""] * len(COLUMNS), "")
        alerts = Text("\n".join(self.alerts) if self.alerts else "none yet", style="bold" if self.alerts else "dim")
        legend = Text("~ provisional: waits for late data (spend reports, order imports)", style="dim")
        # Alerts above the table: a short terminal crops the table's last rows, never an alert.
        return Group(Text(header), Panel(alerts, title="alerts (as sent to Slack)", expand=False), table, legend)


def _follow(bootstrap: str, config: Config, view: LiveView, lock: threading.Lock, stop: threading.Event, since_ms: int) -> None:
    """Feed the view from the snapshots and alerts topics until ``stop``.

    Records written before ``since_ms`` belong to an earlier run on the same broker and are
    skipped; a record the view cannot read is logged (to the file) and skipped.
    """
    from kafka import KafkaConsumer

    log = logging.getLogger("kpimon.demo")
    try:
        consumer = KafkaConsumer(config.topics.snapshots, config.topics.alerts, bootstrap_servers=bootstrap,
                                 auto_offset_reset="earliest", group_id=None, consumer_timeout_ms=500)
    except Exception as exc:  # noqa: BLE001 - shown in the view's header instead of tearing it
        view.feed_error = f"cannot read {config.topics.snapshots}: {exc}"
        return
    try:
        while not stop.is_set():
            for batch in consumer.poll(timeout_ms=500).values():
                for record in batch:
                    if record.timestamp < since_ms:
                        continue
                    try:
                        obj = orjson.loads(record.value)
                        with lock:
                            if record.topic == config.topics.alerts:
                                view.apply_alert(obj)
                            else:
                                view.apply_snapshot(obj)
                    except Exception as exc:  # noqa: BLE001 - one odd record must not freeze the view
                        log.warning("the view skipped %s@%d: %s: %s", record.topic, record.offset, type(exc).__name__, exc)
    except Exception as exc:  # noqa: BLE001
        log.exception("the view stopped reading")
        view.feed_error = f"the view stopped reading ({type(exc).__name__}); see the log"
    finally:
        consumer.close()


def _relative(path: Path) -> Path:
    """The path from the current directory when it is below it: short enough for one line."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path


def run(root: Path, config_path: Path, config: Config, *, bootstrap: str, env: dict[str, str], duration: float,
        port: int, log_path: Path, console: Console) -> None:
    """The worker and the simulator (logs to ``log_path``) and the live view, until Ctrl-C."""
    kpimon = [sys.executable, "-m", "kpimon.cli"]
    procs: list[subprocess.Popen[bytes]] = []
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # This process's own libraries (kafka-python under the view) log to the file too: a line
    # on the terminal would tear the live view.
    root_logger = logging.getLogger()
    for handler in list(root_logger.handlers):
        root_logger.removeHandler(handler)
    file_handler = logging.FileHandler(log_path)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root_logger.addHandler(file_handler)
    view = LiveView(config, window=config.windows[0].name)
    lock, stop = threading.Lock(), threading.Event()
    shown = _relative(log_path)
    header = (f"kpimon demo · broker {bootstrap} · metrics http://localhost:{port}/metrics\n"
              f"logs: {shown}\n"
              f"20 campaigns, web events as Segment messages; camp-003's CTR drops 85% at 15 s. Ctrl-C stops.")
    with log_path.open("ab") as log:
        try:
            procs.append(subprocess.Popen([*kpimon, "worker", "--config", str(config_path)], env=env, stdout=log,
                                          stderr=subprocess.STDOUT, cwd=root))
            sim = ["simulate", "--config", str(config_path), "--rate", "60", "--drop", "camp-003", "--drop-factor", "0.15",
                   "--delivery", "demo", "--drop-at", "15", "--duration", str(duration)]
            started = time.monotonic()
            since_ms = int(time.time() * 1000) - 5_000  # this run's records, not an earlier run's
            follower = threading.Thread(target=_follow, args=(bootstrap, config, view, lock, stop, since_ms), daemon=True)
            follower.start()
            with Live(console=console, refresh_per_second=2, transient=False) as live:
                while True:
                    if len(procs) == 1 and time.monotonic() - started > 8:
                        procs.append(subprocess.Popen([*kpimon, *sim], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root))
                    if procs[0].poll() is not None:
                        raise SystemExit(f"the worker stopped (exit {procs[0].returncode}); see {log_path}")
                    state = ("starting the worker ..." if len(procs) == 1 else
                             "simulating ..." if procs[1].poll() is None else "simulation finished; the worker keeps running")
                    if view.feed_error:
                        state += f" · {view.feed_error}"
                    with lock:
                        live.update(view.render(f"{header}\n{state} · {view.snapshots} campaign snapshots read"))
                    time.sleep(0.5)
        except KeyboardInterrupt:
            console.print("stopping ...")
        finally:
            stop.set()
            for p in reversed(procs):
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()

