"""The worker's HTTP endpoint, served for real on 127.0.0.1 and scraped over HTTP."""

from __future__ import annotations

import asyncio
import gzip
import urllib.request

import orjson
from prometheus_client import CollectorRegistry, Counter

from streams import web
from tests.support.worker import free_port


def _get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    with urllib.request.urlopen(req, timeout=5) as r:
        return r.status, dict(r.headers), r.read()


def test_metrics_and_health_over_http() -> None:
    registry = CollectorRegistry()
    Counter("kpimon_events", "Valid events consumed, by type", ["type"], registry=registry).labels("click").inc(3)
    port = free_port()

    async def scenario() -> list[tuple[int, dict[str, str], bytes]]:
        runner = await web.serve(web.make_web_app(registry, lambda: {"status": "ok", "ready": True, "partitions": [0]}),
                                 host="127.0.0.1", port=port)
        try:
            return [await asyncio.to_thread(_get, port, path, headers) for path, headers in [
                ("/metrics", None),
                ("/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"}),
                ("/metrics", {"Accept-Encoding": "gzip"}),
                ("/health", None),
            ]]
        finally:
            await runner.cleanup()

    (s1, h1, text), (s2, h2, om), (s3, h3, zipped), (s4, _, health) = asyncio.run(scenario())
    assert s1 == s2 == s3 == s4 == 200
    assert h1["Content-Type"].startswith("text/plain") and 'kpimon_events_total{type="click"} 3.0' in text.decode()
    assert h2["Content-Type"].startswith("application/openmetrics-text") and om.decode().endswith("# EOF\n")
    assert h3.get("Content-Encoding") == "gzip" and gzip.decompress(zipped) == text
    assert orjson.loads(health) == {"status": "ok", "ready": True, "partitions": [0]}
