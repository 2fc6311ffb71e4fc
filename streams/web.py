"""The worker's HTTP endpoint: ``/metrics`` and ``/health``, nothing else.

Faust's own web server (with its table-browsing views) stays off; this small
aiohttp app replaces it.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler


def make_web_app(registry: CollectorRegistry, health: Callable[[], dict[str, object]]) -> web.Application:
    # prometheus-client's own handler: content negotiation (OpenMetrics when asked for) and gzip.
    metrics = make_aiohttp_handler(registry)

    async def healthz(_: web.Request) -> web.Response:
        state = health()
        return web.json_response(state, status=200 if state.get("status") == "ok" else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/health", healthz)
    return app


async def serve(app: web.Application, *, host: str, port: int) -> web.AppRunner:
    """Start serving in the running event loop; the caller keeps the runner to stop it."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
