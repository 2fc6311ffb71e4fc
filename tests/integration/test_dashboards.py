"""The Grafana dashboards against the real thing: a real worker on the real broker, fed by the
simulator, scraped every second by a real Prometheus that loads the shipped recording and alert
rules. Every panel query, template variable and annotation of both dashboards must return data.

Prometheus starts before the traffic, as it would in production, so it sees an incident open
and resolve: two minutes of event time arrive in three bursts (normal; camp-003's CTR
collapsed, with Slack rate-limiting the alert so delivery retries; recovered).
"""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from kafka import KafkaProducer

from alerts.slack import DEFAULT_MAX_RETRIES
from kpimon.producer import send_markers
from kpimon.simulator import Anomaly, SimConfig, run
from tests.support.slack_api import SlackAPIServer
from tests.support.worker import ROOT, Worker, free_port, topic_names

PROMETHEUS = Path("/usr/bin/prometheus")
PROM_DIR = ROOT / "deploy" / "prometheus"
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
WINDOW_S = 10
SCRAPE_S = 1
MIN_SCRAPING_S = 15
TOKEN = "xoxb-dashboards-secret"
DROP = "camp-003"  # its CTR collapses in the second burst
# The values picked for template variables where the data has them.
PREFERRED = {"window": f"{WINDOW_S}s", "kpi": "ctr", "campaign": DROP}


def _config(prefix: str) -> dict[str, Any]:
    """deploy/demo/kpimon.yaml's catalogue with 10 s windows and short lateness, idle and sessions."""
    demo = yaml.safe_load((ROOT / "deploy" / "demo" / "kpimon.yaml").read_text())
    targets = {k: {**v, "min_denominator": 150} for k, v in demo["targets"].items()}  # partial windows say nothing
    return {
        **demo,
        "windows": [{"size": f"{WINDOW_S}s"}],
        "allowed_lateness": "3s",
        "idle_timeout": "4s",
        "session_timeout": "5s",  # each window's sessions phase, and its measures, follow quickly
        "breakdowns": [["campaign"], ["channel"], []],
        "targets": targets,
        "topics": topic_names(prefix),
    }


# -- a real Prometheus -----------------------------------------------------------------


class PromQLError(Exception):
    """Prometheus refused a query (bad syntax, unknown function, ...)."""


class Prometheus:
    """``/usr/bin/prometheus`` scraping one worker every second with the shipped rule files."""

    def __init__(self, tmp: Path, *, target: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = tmp
        self.log_path = tmp / "prometheus.log"
        # The shipped config, with the test's target and a one-second rhythm.
        config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
        config["global"].update(scrape_interval=f"{SCRAPE_S}s", scrape_timeout=f"{SCRAPE_S}s", evaluation_interval=f"{SCRAPE_S}s")
        config["rule_files"] = [str(PROM_DIR / f) for f in config["rule_files"]]
        [job] = [j for j in config["scrape_configs"] if j["job_name"] == "kpimon"]
        job["static_configs"] = [{"targets": [target]}]
        self.config_path = tmp / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def start(self, timeout: float = 30) -> Prometheus:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [str(PROMETHEUS), f"--config.file={self.config_path}", f"--storage.tsdb.path={self.dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=log, stderr=subprocess.STDOUT,
        )
        self.started_at = time.time()
        _wait(self._ready, timeout, f"Prometheus ready on port {self.port}", on_timeout=self.log)
        return self

    def _ready(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, f"prometheus exited:\n{self.log()}"
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def api(self, path: str, **params: Any) -> Any:
        query = urllib.parse.urlencode([(k.replace("match", "match[]"), v) for k, v in params.items()])
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as r:
                body = json.load(r)
        except urllib.error.HTTPError as exc:
            body = json.load(exc)
        if body["status"] != "success":
            raise PromQLError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        return self.api("query", query=expr, **({"time": at} if at else {}))["result"]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        return [s for s in self.api("query_range", query=expr, start=start, end=end, step=step)["result"] if s["values"]]

    def label_values(self, label: str, match: str, start: float, end: float) -> list[str]:
        return self.api(f"label/{label}/values", match=match, start=start, end=end)

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _wait(predicate: Callable[[], Any], timeout: float, what: str, on_timeout: Callable[[], str] = str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.5)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}\n{on_timeout()}")


# -- the stack -----------------------------------------------------------------------


@dataclass
class Stack:
    worker: Worker
    prometheus: Prometheus
    slack: SlackAPIServer
    scraped_from: float = 0.0
    firing_at: float = 0.0  # a moment while camp-003's incident was firing


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    assert PROMETHEUS.exists(), "Debian's prometheus package provides /usr/bin/prometheus (scripts/bootstrap.sh)"
    tmp = tmp_path_factory.mktemp("dashboards")
    prefix = f"db{uuid.uuid4().hex[:8]}"
    with ExitStack() as cleanup:
        slack = cleanup.enter_context(SlackAPIServer(token=TOKEN))
        env = {"SLACK_BOT_TOKEN": TOKEN, "SLACK_CHANNEL": "#kpi-alerts", "SLACK_API_URL": slack.base_url}
        worker = Worker(_config(prefix), bootstrap=kafka_bootstrap, app_id=prefix, tmp=tmp, env=env)
        cleanup.callback(worker.stop)
        worker.start()
        prometheus = Prometheus(tmp, target=f"127.0.0.1:{worker.port}")
        cleanup.callback(prometheus.stop)
        prometheus.start()
        stack = Stack(worker, prometheus, slack, scraped_from=prometheus.started_at)
        _feed(stack, kafka_bootstrap, worker.config["topics"])
        yield stack


def _feed(stack: Stack, bootstrap: str, topics: dict[str, Any]) -> None:
    """Three bursts of simulated traffic: normal, camp-003's CTR collapsed, recovered."""
    prom, worker, slack = stack.prometheus, stack.worker, stack.slack
    topic_for = {etype: topic for topic, etype in topics["sources"].items()}
    sim = SimConfig(campaigns=10, rate=40, ctr_range=(0.04, 0.06))
    window_ms = WINDOW_S * 1000
    drop = f'kpimon_alert_firing{{campaign="{DROP}", kpi="ctr"}}'
    produced = 0
    produced_at = 0.0

    def burst(start_ms: int, seconds: float, anomalies: list[Anomaly] | None = None) -> int:
        """Produce, then wait until the worker has routed it all, so bursts never overlap."""
        nonlocal produced, produced_at
        produced += run(sim, bootstrap=bootstrap, topics=topic_for, duration_s=seconds, realtime=False, start_ms=start_ms,
                        anomalies=anomalies or [])
        produced_at = time.time()
        _wait(lambda: sum(worker.samples("kpimon_events_total").values()) >= produced, 60,
              f"the worker to route all {produced} events", on_timeout=lambda: _diagnosis(worker))
        end_ms = start_ms + int(seconds * 1000)
        # The data is minutes old, so it holds the watermark while quiet; a progress marker on
        # every source says the burst is complete, and its windows close.
        send_markers(bootstrap, topics["sources"], end_ms)
        return end_ms

    def resume(end_ms: int) -> int:
        # The next burst starts later in event time by the wall-clock pause, so bursts line up
        # with the time the dashboards show.
        return end_ms + int((time.time() - produced_at) * 1000)

    end = burst((int(time.time() * 1000) - 120_000) // window_ms * window_ms, 60)
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    for raw in (b"{not json", b'{"ts": 1714564801000, "channel": "email", "cost": 1}', b'{"type": "spaceship"}'):
        producer.send(topic_for["click"], value=raw)  # for the dead-letter panels
    producer.close()
    _wait(lambda: prom.query(f"{drop} == 0"), 60, f"Prometheus to see {DROP} on target", on_timeout=lambda: _diagnosis(worker))

    slack.fail_next(DEFAULT_MAX_RETRIES + 1, status=429, retry_after=0)  # Slack rate-limits the first alert
    end = burst(resume(end), 40, [Anomaly(campaign=DROP, factor=0.1, start_s=0)])
    _wait(lambda: prom.query(f"{drop} == 1"), 60, f"Prometheus to see {DROP}'s incident open", on_timeout=lambda: _diagnosis(worker))
    stack.firing_at = time.time()
    _wait(lambda: prom.query('kpimon_alerts_total{outcome="retried"} > 0'), 60, "a retried Slack delivery",
          on_timeout=lambda: _diagnosis(worker))

    # Recovered, ending on a window boundary: the last window is complete for every campaign.
    start = resume(end)
    end = burst(start, (-(-(start + 20_000) // window_ms) * window_ms - start) / 1000)
    send_markers(bootstrap, topics["sources"], end + window_ms + 3_000 + 5_000)  # past the last window's sessions phase
    _wait(lambda: prom.query(f"{drop} == 0"), 60, f"Prometheus to see {DROP}'s incident resolved", on_timeout=lambda: _diagnosis(worker))
    _wait(lambda: _settled(worker), 40, "the worker to close its last window", on_timeout=lambda: _diagnosis(worker))
    time.sleep(max(0.0, MIN_SCRAPING_S - (time.time() - prom.started_at)) + 2 * SCRAPE_S)


def _diagnosis(worker: Worker) -> str:
    """What the worker has done so far, for a timeout's message."""
    def total(name: str) -> float:
        return sum(worker.samples(name).values())

    drop = {
        name: sorted((dict(k).get("kpi") or dict(k).get("measure"), v) for k, v in worker.samples(name).items() if dict(k).get("campaign") == DROP)
        for name in ("kpimon_kpi_value", "kpimon_alert_firing")
    }
    return (
        f"events routed {total('kpimon_events_total'):.0f}, late {total('kpimon_events_late_total'):.0f}, "
        f"snapshots {total('kpimon_snapshots_total'):.0f}, alert events {total('kpimon_alert_events_total'):.0f}; {DROP}: {drop}\n"
        f"{worker.log()[-2000:]}"
    )


def _settled(worker: Worker) -> bool:
    """No snapshot for half a window: everything produced has been windowed and published."""
    def count() -> float:
        return sum(worker.samples("kpimon_snapshots_total").values())

    before = count()
    time.sleep(WINDOW_S / 2)
    return before > 0 and count() == before


# -- the dashboards' queries -------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    dashboard: str
    where: str  # e.g. "panel 'Events/s by type' A"
    expr: str
    instant: bool = False

    def __str__(self) -> str:
        return f"{self.dashboard}: {self.where}: {self.expr}"


@dataclass
class Outcome:
    query: Query
    promql: str  # with the variables substituted
    series: int = 0
    error: str | None = None


@dataclass
class Results:
    variables: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # dashboard -> variable -> values
    variable_errors: list[str] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    end: float = 0.0  # the range every query ran over ends here, in steps of step seconds
    step: float = 0.0

    def failing(self) -> list[str]:
        return [
            f"  {o.query.dashboard}: {o.query.where}\n    {o.promql}\n    -> {o.error or 'no data'}"
            for o in self.outcomes if o.error or not o.series
        ]


def dashboard_queries(name: str, dash: dict[str, Any]) -> list[Query]:
    out = []
    for panel in dash["panels"]:
        for t in panel.get("targets", []):
            out.append(Query(name, f"panel {panel['title']!r} {t['refId']}", t["expr"], instant=bool(t.get("instant")) and not t.get("range")))
    for a in dash["annotations"]["list"]:
        if "expr" in a:
            out.append(Query(name, f"annotation {a['name']!r}", a["expr"]))
    return out


LABEL_VALUES = re.compile(r"^label_values\((?P<match>.+),\s*(?P<label>\w+)\)$")
VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
REGEX_SPECIAL = re.compile(r"([\\^$.|?*+()\[\]{}])")


def substitute(expr: str, values: dict[str, str], multi: set[str]) -> str:
    """Replace $var and ${var} as Grafana does for one selected value (escaped where regex)."""

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in values:
            raise KeyError(f"unknown variable ${name} in {expr}")
        value = values[name]
        return REGEX_SPECIAL.sub(r"\\\\\1", value) if name in multi else value

    return VARIABLE.sub(repl, expr)


@pytest.fixture(scope="module")
def results(stack: Stack) -> Results:
    prom = stack.prometheus
    end = time.time()
    start = stack.scraped_from
    step = 2 * SCRAPE_S  # $__interval: Grafana's step, never below the scrape interval
    # Range queries cover everything scraped; instant ones (the breach table) are evaluated as
    # if the dashboard had been open while the incident was firing.
    builtins = {
        "__interval": f"{step}s",
        "__rate_interval": f"{max(step + SCRAPE_S, 4 * SCRAPE_S)}s",  # Grafana's definition
        "__range": f"{math.ceil(end - start)}s",
    }
    out = Results(end=end, step=step)
    for path in sorted(DASHBOARDS.glob("*.json")):
        dash = json.loads(path.read_text())
        values = dict(builtins)
        multi = {v["name"] for v in dash["templating"]["list"] if v.get("multi") or v.get("includeAll")}
        out.variables[path.name] = {}
        for var in dash["templating"]["list"]:
            query = var["query"]
            m = LABEL_VALUES.match(query)
            if not m:
                out.variable_errors.append(f"{path.name}: ${var['name']}: not label_values(selector, label): {query}")
                continue
            selector = substitute(m["match"], values, multi)
            try:
                options = prom.label_values(m["label"], selector, start, end)
            except PromQLError as exc:
                options, error = [], str(exc)
            else:
                error = "no values"
            out.variables[path.name][var["name"]] = options
            if not options:
                out.variable_errors.append(f"{path.name}: ${var['name']}: {query} (as {selector}) -> {error}")
                values[var["name"]] = "no-value"
                continue
            preferred = PREFERRED.get(var["name"])
            values[var["name"]] = preferred if preferred in options else options[0]
        for q in dashboard_queries(path.name, dash):
            promql = substitute(q.expr, values, multi)
            outcome = Outcome(q, promql)
            try:
                found = prom.query(promql, at=stack.firing_at) if q.instant else prom.query_range(promql, start, end, step)
                if q.where.startswith("annotation"):  # Grafana draws only points above 0
                    found = [s for s in found if any(float(v) > 0 for _, v in s["values"])]
                outcome.series = len(found)
            except PromQLError as exc:
                outcome.error = str(exc)
            out.outcomes.append(outcome)
    return out


# -- tests -------------------------------------------------------------------------------


def test_template_variables_have_values(results: Results) -> None:
    assert not results.variable_errors, "template variables without values:\n" + "\n".join(results.variable_errors)
    variables = results.variables["campaign-kpis.json"]
    assert f"{WINDOW_S}s" in variables["window"]
    assert DROP in variables["campaign"] and "ctr" in variables["kpi"]
    assert {"organic", "paid_search", "social"} <= set(variables["channel"])


def test_every_panel_and_annotation_query_returns_data(results: Results) -> None:
    failing = results.failing()
    checked = len(results.outcomes)
    shipped = sum(
        len(p.get("targets", [])) for d in DASHBOARDS.glob("*.json") for p in json.loads(d.read_text())["panels"]
    ) + sum(1 for d in DASHBOARDS.glob("*.json") for a in json.loads(d.read_text())["annotations"]["list"] if "expr" in a)
    assert checked == shipped > 0
    assert not failing, f"{len(failing)} of {checked} dashboard queries return nothing:\n" + "\n".join(failing)


def test_incident_shows_in_the_breach_table(stack: Stack, results: Results) -> None:
    prom = stack.prometheus
    [table] = [o for o in results.outcomes if o.query.where == "panel 'KPIs off target now' B"]
    breaching = {(r["metric"]["kpi"], r["metric"].get("campaign")) for r in prom.query(table.promql, at=stack.firing_at)}
    assert ("ctr", DROP) in breaching
    assert ("ctr", DROP) not in {(r["metric"]["kpi"], r["metric"].get("campaign")) for r in prom.query(table.promql)}  # resolved


def test_incident_is_annotated_when_it_opens_and_resolves(stack: Stack, results: Results) -> None:
    """The annotations mark exactly the incident's two changes, each once, at the right time."""
    prom = stack.prometheus
    annotations = {o.query.where: o for o in results.outcomes if o.query.where.startswith("annotation")}
    for name, value in (("Incident opened", 1), ("Incident resolved", 0)):
        o = annotations[f"annotation {name!r}"]
        marks = [
            (s["metric"]["campaign"], float(t)) for s in prom.query_range(o.promql, stack.scraped_from, results.end, results.step)
            if s["metric"].get("campaign") == DROP and s["metric"]["kpi"] == "ctr" for t, v in s["values"] if float(v) > 0
        ]
        assert len(marks) == 1, f"{name}: {marks}"
        # The step it marks is the first at which Prometheus has the new value.
        [(_, at)] = marks
        assert prom.query(f'kpimon_alert_firing{{campaign="{DROP}", kpi="ctr"}}', at=at)[0]["value"][1] == str(value)
        assert prom.query(f'kpimon_alert_firing{{campaign="{DROP}", kpi="ctr"}}', at=at - results.step)[0]["value"][1] == str(1 - value)


def test_recording_rules_have_output(stack: Stack) -> None:
    rules = yaml.safe_load((PROM_DIR / "rules" / "kpimon-recording.yml").read_text())
    records = [r["record"] for g in rules["groups"] for r in g["rules"]]
    empty = [r for r in records if not stack.prometheus.query(f'{r}{{window="{WINDOW_S}s"}}')]
    assert not empty, f"recording rules without output: {empty}"


@pytest.mark.parametrize(
    ("rule", "kpi", "breakdown", "by"),
    [
        ("window:kpimon_ctr:ratio", "ctr", "total", ()),
        ("window:kpimon_cpc:ratio", "cpc", "total", ()),
        ("window:kpimon_conversion_rate:ratio", "conversion_rate", "total", ()),
        ("window_channel:kpimon_ctr:ratio", "ctr", "channel", ("channel",)),
        ("window_channel:kpimon_cpc:ratio", "cpc", "channel", ("channel",)),
        ("window_channel:kpimon_conversion_rate:ratio", "conversion_rate", "channel", ("channel",)),
    ],
)
def test_rollups_equal_the_workers_exact_totals(stack: Stack, rule: str, kpi: str, breakdown: str, by: tuple[str, ...]) -> None:
    """Summing campaign numerators and denominators in PromQL gives the worker's own total."""
    prom = stack.prometheus
    win = f'window="{WINDOW_S}s"'

    def compare() -> list[tuple[Any, float, float]] | None:
        rolled = {tuple(r["metric"].get(d) for d in by): float(r["value"][1]) for r in prom.query(f"{rule}{{{win}}}")}
        exact = {
            tuple(r["metric"].get(d) for d in by): float(r["value"][1])
            for r in prom.query(f'kpimon_kpi_value{{kpi="{kpi}", breakdown="{breakdown}", {win}}}')
        }
        pairs = [(k, rolled.get(k, math.nan), v) for k, v in exact.items()]
        if pairs and rolled.keys() == exact.keys() and all(math.isclose(a, b, rel_tol=1e-9) for _, a, b in pairs):
            return pairs
        return None

    try:
        _wait(compare, 20, f"{rule} to equal the worker's {breakdown} {kpi}")
    except TimeoutError:
        rolled = prom.query(f"{rule}{{{win}}}")
        exact = prom.query(f'kpimon_kpi_value{{kpi="{kpi}", breakdown="{breakdown}", {win}}}')
        pytest.fail(f"{rule}: {[(r['metric'], r['value'][1]) for r in rolled]}\nworker: {[(r['metric'], r['value'][1]) for r in exact]}")
