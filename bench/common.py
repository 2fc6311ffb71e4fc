"""Shared helpers for the benchmark: the broker, topic names, worker configs and worker processes.

Nothing here is imported by the product or by ``make test``.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import yaml

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
from kpi_core.config import Topics  # noqa: E402

OUT = BENCH / "out"

#: The default catalogue's source topics, by suffix.
SOURCES = Topics().types()


def log(msg: str) -> None:
    """Progress on stderr, with a wall-clock stamp, flushed at once (make shows it live)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 right now (all bound until all are chosen)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# -- machine and versions ------------------------------------------------------


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        m = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())
        mem_kb = int(m.group(1)) if m else 0
    except OSError:
        pass
    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:
        nproc = os.cpu_count() or 0
    return {
        "nproc": nproc,
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "cpu_model": cpu,
        "kernel": platform.release(),
        "os": platform.platform(terse=True),
    }


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def versions(broker_version: str) -> dict[str, str]:
    java = "unknown"
    try:
        out = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30)
        java = (out.stderr or out.stdout).splitlines()[0].strip()
    except (OSError, subprocess.SubprocessError, IndexError):
        pass
    py_spy = "not installed"
    exe = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if exe:
        try:
            py_spy = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return {
        "python": platform.python_version(),
        "faust-streaming": _version("faust-streaming"),
        "aiokafka": _version("aiokafka"),
        "kafka-python": _version("kafka-python"),
        "orjson": _version("orjson"),
        "prometheus-client": _version("prometheus-client"),
        "kafka broker": broker_version,
        "java": java,
        "py-spy": py_spy,
    }


def local_broker_version() -> str:
    libs = ROOT / ".cache" / "kafka" / "libs"
    for jar in sorted(libs.glob("kafka_*.jar")):
        m = re.fullmatch(r"kafka_([0-9.]+)-(.+)\.jar", jar.name)
        if m:
            return f"{m.group(2)} (Scala {m.group(1)}, jar {jar.name})"
    return "unknown"


def external_broker_version(bootstrap: str) -> str:
    try:
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","))
        try:
            v = admin._client.check_version()  # noqa: SLF001 - kafka-python's inferred broker API version
        finally:
            admin.close()
        return "external, API version " + ".".join(str(x) for x in v)
    except Exception as exc:  # noqa: BLE001
        return f"external (version unknown: {type(exc).__name__})"


def loadavg() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return -1.0


def cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    try:
        fields = [float(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return 0.0, 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return sum(fields) - idle, sum(fields)


# -- broker --------------------------------------------------------------------


@contextmanager
def broker() -> Iterator[tuple[str, str]]:
    """Yield (bootstrap, version): $KAFKA_BOOTSTRAP_SERVERS, or a private broker on free ports."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        log(f"using the external cluster at {external} (KAFKA_BOOTSTRAP_SERVERS)")
        yield external, external_broker_version(external)
        return
    from kpimon.broker import LocalBroker, project_root

    port, controller = free_ports(2)
    b = LocalBroker(project_root(), port=port, controller_port=controller, name=f"bench-{os.getpid()}")
    log(f"starting a private Kafka broker {b.name} on 127.0.0.1:{port}")
    t0 = time.monotonic()
    bootstrap = b.up(timeout=120)
    log(f"broker ready in {time.monotonic() - t0:.1f}s")
    try:
        yield bootstrap, local_broker_version()
    finally:
        log("stopping the private broker")
        b.down()
        shutil.rmtree(b.data_dir, ignore_errors=True)


def create_topics(bootstrap: str, names: dict[str, int], configs: dict[str, dict[str, str]] | None = None) -> None:
    """Create topics (name -> partitions) that don't exist yet, with optional per-topic configs."""
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","), client_id="kpimon-bench")
    try:
        existing = set(admin.list_topics())
        new = [
            NewTopic(n, p, 1, topic_configs=(configs or {}).get(n, {}))
            for n, p in names.items()
            if n not in existing
        ]
        if new:
            admin.create_topics(new)
    finally:
        admin.close()


def delete_topics(bootstrap: str, prefix: str) -> int:
    """Delete every topic whose name starts with ``prefix`` (ours: unique per run); return how many."""
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","), client_id="kpimon-bench")
    try:
        mine = [t for t in admin.list_topics() if t.startswith(prefix)]
        if mine:
            admin.delete_topics(mine)
        return len(mine)
    finally:
        admin.close()


def source_topics(prefix: str) -> dict[str, str]:
    """Source topic name -> event type, all starting with ``prefix``."""
    return {f"{prefix}-{suffix}": etype for suffix, etype in SOURCES.items()}


def topics_section(source_prefix: str, out_prefix: str, partitions: int) -> dict[str, Any]:
    """A config ``topics`` section: shared source topics, outputs private to one worker run."""
    return {
        "sources": source_topics(source_prefix),
        "dead_letters": f"{out_prefix}-dead-letters",
        "late_events": f"{out_prefix}-late-events",
        "snapshots": f"{out_prefix}-kpi-snapshots",
        "alerts": f"{out_prefix}-kpi-alerts",
        "silences": f"{out_prefix}-silences",
        "partitions": partitions,
    }


def default_catalogue() -> dict[str, Any]:
    """kpi_core/default.yaml as a dict: the full KPI catalogue."""
    return yaml.safe_load((ROOT / "kpi_core" / "default.yaml").read_text())


# -- consumer-group progress -----------------------------------------------------


class GroupLag:
    """How far a consumer group (a worker's app id) is behind on some topics."""

    def __init__(self, bootstrap: str, group: str, topics: list[str]) -> None:
        from kafka import KafkaConsumer
        from kafka.admin import KafkaAdminClient

        self.group = group
        self.topics = topics
        self.admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","), client_id="kpimon-bench-lag")
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap.split(","), client_id="kpimon-bench-lag")

    def ends(self) -> dict[Any, int]:
        """The topics' end offsets now, per partition."""
        from kafka import TopicPartition

        tps = []
        for t in self.topics:
            parts = self.consumer.partitions_for_topic(t) or set()
            tps += [TopicPartition(t, p) for p in parts]
        return self.consumer.end_offsets(tps) if tps else {}

    def lag(self, targets: dict[Any, int] | None = None) -> dict[str, int]:
        """Topic -> messages not yet committed by the group: up to ``targets`` (from ``ends``), or to the end now."""
        ends = {**self.ends(), **(targets or {})}
        committed = self.admin.list_group_offsets({self.group: None}).get(self.group, {})
        out = {t: 0 for t in self.topics}
        for tp, end in ends.items():
            c = committed.get(tp)
            off = c.offset if c is not None and c.offset >= 0 else 0
            out[tp.topic] += max(0, end - off)
        return out

    def close(self) -> None:
        self.admin.close()
        self.consumer.close()


# -- worker processes ------------------------------------------------------------

_EVENTS_RE = re.compile(rb'^kpimon_events_total\{type="([^"]*)"\} ([0-9.e+]+)$', re.MULTILINE)
_INVALID_RE = re.compile(rb'^kpimon_events_invalid_total\{reason="([^"]*)"\} ([0-9.e+]+)$', re.MULTILINE)
_LATE_RE = re.compile(rb"^kpimon_events_late_total ([0-9.e+]+)$", re.MULTILINE)
_SNAPSHOTS_RE = re.compile(rb"^kpimon_snapshots_total ([0-9.e+]+)$", re.MULTILINE)


class Scrape:
    """The counters the benchmark needs from one /metrics answer, and what the scrape cost."""

    def __init__(self, body: bytes, seconds: float) -> None:
        self.bytes = len(body)
        self.seconds = seconds
        self.events = sum(float(v) for _, v in _EVENTS_RE.findall(body))
        self.invalid = sum(float(v) for _, v in _INVALID_RE.findall(body))
        m = _LATE_RE.search(body)
        self.late = float(m.group(1)) if m else 0.0
        m = _SNAPSHOTS_RE.search(body)
        self.snapshots = float(m.group(1)) if m else 0.0
        self.lines = body.count(b"\n")

    @property
    def total(self) -> float:
        return self.events + self.invalid


class WorkerProc:
    """``kpimon worker`` in a subprocess, with its own config file, app id, data dir, port and log."""

    def __init__(self, config: dict[str, Any], *, bootstrap: str, app_id: str, workdir: Path,
                 env: dict[str, str] | None = None, name: str | None = None) -> None:
        self.name = name or app_id
        self.port = config.setdefault("metrics_port", free_ports(1)[0])
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / f"{self.name}.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log_path = workdir / f"{self.name}.log"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("SLACK_")},
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "KPIMON_APP_ID": app_id,
            "KPIMON_DATA_DIR": str(workdir / f"{self.name}-data"),
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> WorkerProc:
        logf = self.log_path.open("ab")
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kpimon.cli", "worker", "--config", str(self.config_path)],
            env=self.env, cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        logf.close()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise RuntimeError(f"worker {self.name} exited (code {self.proc.returncode if self.proc else None}); "
                               f"last log lines:\n{self.tail()}")

    def _get(self, path: str, timeout: float) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=timeout) as r:
            return r.read()

    def health(self) -> dict[str, Any] | None:
        try:
            return json.loads(self._get("/health", 2))
        except (OSError, ValueError):
            return None

    def wait_ready(self, timeout: float) -> float:
        """Wait until /health says ready; return the seconds since start."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            h = self.health()
            if h and h.get("ready"):
                return time.monotonic() - self.started_at
            time.sleep(0.2)
        raise TimeoutError(f"worker {self.name} not ready after {timeout:.0f}s; last log lines:\n{self.tail()}")

    def scrape(self, timeout: float = 30) -> Scrape | None:
        t0 = time.monotonic()
        try:
            body = self._get("/metrics", timeout)
        except OSError:
            return None
        return Scrape(body, time.monotonic() - t0)

    def rss_kb(self) -> tuple[int, int]:
        """(VmRSS, VmHWM) in kB from /proc; (0, 0) when gone."""
        try:
            text = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return 0, 0
        rss = re.search(r"VmRSS:\s+(\d+) kB", text)
        hwm = re.search(r"VmHWM:\s+(\d+) kB", text)
        return (int(rss.group(1)) if rss else 0), (int(hwm.group(1)) if hwm else 0)

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process so far."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return 0.0

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 30) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def steady_rate(cfg: Any, warmup_s: int = 120, measure_s: int = 30) -> float:
    """Events per second of event time once journeys (sessions, leads, orders) have filled in."""
    from kpimon.simulator import generate

    start = 1_700_000_000_000
    cut = start + warmup_s * 1000
    n = sum(1 for _, obj in generate(cfg, start_ms=start, duration_s=warmup_s + measure_s) if obj["ts"] >= cut)
    return n / measure_s


def calibrate(campaigns: int, target: float, ctr_range: tuple[float, float], seed: int) -> tuple[float, float]:
    """The per-campaign impression rate that gives ``target`` events/s, and the rate it gives."""
    # Spend is per campaign and interval, not per impression: fit rate -> events/s as a line.
    r1 = max(0.005, target / campaigns / 1.3 / 2)
    r2 = 2 * r1
    e1 = steady_rate(_sim(campaigns=campaigns, rate=r1, ctr_range=ctr_range, seed=seed), warmup_s=60, measure_s=20)
    e2 = steady_rate(_sim(campaigns=campaigns, rate=r2, ctr_range=ctr_range, seed=seed), warmup_s=60, measure_s=20)
    slope = (e2 - e1) / (r2 - r1)
    rate = max(0.001, (target - (e1 - slope * r1)) / slope)
    return rate, e1 + slope * (rate - r1)


def _sim(**kw: Any) -> Any:
    from kpimon.simulator import SimConfig

    return SimConfig(**kw)


def steady_events(cfg: Any, start_ms: int, warmup_s: int = 120) -> Iterator[tuple[str, dict[str, Any]]]:
    """The simulator's events from ``start_ms`` on, as if it had been running ``warmup_s`` already
    (so clicks already have their sessions, leads and orders following them)."""
    from kpimon.simulator import generate

    for etype, obj in generate(cfg, start_ms=start_ms - warmup_s * 1000, duration_s=None):
        if obj["ts"] >= start_ms:
            yield etype, obj


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100) by linear interpolation; None for no values."""
    if not values:
        return None
    xs = sorted(values)
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)
