"""The metrics sink's HTTP listener: `/metrics`, `/healthz`, `/readyz`, `/livez`.

Off by default and bound to loopback unless told otherwise: the figures describe someone's
money (docs/monitoring.md). Other routes on the same listener (the status page, web.py) are
installed from `MetricsSink.routes`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import CONTENT_TYPE_LATEST

from monitor.errors import UserError, os_reason
from monitor.ops.sdnotify import ask

if TYPE_CHECKING:
    from monitor.ops.metrics import MetricsSink

__all__ = ["serve"]

log = structlog.get_logger("monitor.metrics")


async def serve(sink: MetricsSink) -> tuple[Any, tuple[str, int]]:
    """Listen on the sink's `host:port`; the aiohttp runner and the address it bound."""
    from aiohttp import web  # noqa: PLC0415 - only when the endpoint is enabled

    from monitor.ops import http_guard  # noqa: PLC0415 - aiohttp too
    from monitor.ops.logs import redact  # noqa: PLC0415

    async def metrics(request: web.Request) -> web.Response:
        del request
        body = sink.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: web.Request) -> web.Response:
        del request
        disabled = sink.protection_disabled()
        if disabled:  # issue 13: protection off is not healthy, even with fresh data
            lines = "".join(f"{name}: {reason}\n" for name, reason in disabled.items())
            return web.Response(status=503, text=f"protection_disabled\n{lines}")
        blind = sink.blind()
        if not blind:
            return web.Response(text=f"ok: {len(sink.accounts)} accounts fresh\n")
        # a venue's words (a websocket error too): never a secret it repeated (issue 13)
        lines = "".join(f"{name}: {redact(reason)}\n" for name, reason in blind.items())
        return web.Response(status=503, text=f"blind: {', '.join(blind)}\n{lines}")

    async def readyz(request: web.Request) -> web.Response:
        # Kubernetes readiness (docs/kubernetes.md): the configuration loaded and the sinks
        # started, like systemd's READY=1; never the venues, or an exchange outage unreadies
        # pods
        del request
        return web.Response(text=f"ready: {len(sink.accounts)} accounts configured\n")

    async def livez(request: web.Request) -> web.Response:
        # Kubernetes liveness (docs/kubernetes.md): the watchdog's evidence of progress, not
        # data freshness: restarting cannot fix a venue outage and would blind the shard
        del request
        wedged = ask(sink.liveness) if sink.liveness is not None else None
        if wedged is None:
            return web.Response(text="alive\n")
        return web.Response(status=503, text=f"wedged: {wedged}\n")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/livez", livez)
    for install in sink.routes:
        install(app)
    try:
        # timeouts and a connection cap against idle sockets (docs/hardening.md, http_guard.py)
        runner = await http_guard.serve(app, sink.settings.host, sink.settings.port)
    except OSError as exc:
        raise UserError(
            f"metrics: cannot listen on {sink.settings.host}:{sink.settings.port} "
            f"({os_reason(exc)}); pick another metrics.port or stop the other process"
        ) from None
    if runner.addresses:
        host, port = runner.addresses[0][:2]
        address = (str(host), int(port))
    else:  # pragma: no cover - aiohttp always has a server after start()
        address = (sink.settings.host, sink.settings.port)
    log.info("metrics listening", host=address[0], port=address[1])
    return runner, address
