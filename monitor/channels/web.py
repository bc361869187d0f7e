"""The status page: `/` on the metrics port, and the JSON it is drawn from, `/api/status`.

What a FreqUI or Grafana user expects from a glance: every account's margin ratio with its last
hour, money in its currency, each position's liquidation price, whether the source can be
trusted, what is firing and what is silenced, and what the protective side last did. It is
read-only and self-contained (three small files from `monitor/data/`, no framework, no CDN,
nothing fetched from elsewhere), so it works on a host with no internet and leaks nothing to a
third party; it lives on the metrics listener and so binds loopback unless told otherwise.

`StatusSink` is a `monitor.sink.Sink`: it keeps each account's newest report and a downsampled
ratio history (one point per `HISTORY_STEP` seconds over `HISTORY_SPAN`), and reads the rest
(source health, alerts, silences, the audit trail) from the sinks that own them when a page
asks. `status_json` is pure over those inputs so the document's shape is tested without HTTP.
The document is described in docs/status-page.md.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from monitor import __version__
from monitor.core.model import AccountSnapshot, MarginReport
from monitor.report_json import report_to_dict, shock_to_dict
from monitor.sink import Sink

if TYPE_CHECKING:
    from aiohttp import web

__all__ = ["HISTORY_SPAN", "HISTORY_STEP", "AccountView", "StatusSink", "status_json"]

#: Seconds of ratio history the sparkline shows.
HISTORY_SPAN = 3600.0
#: Least seconds between two history points: 720 points an hour per account, whatever the
#: tick rate (a 10-tick/s account would otherwise keep 36 000).
HISTORY_STEP = 5.0
#: Audit entries shown per account ("last actions").
LAST_ACTIONS = 5
#: Audit kinds that are commands, not protective-action decisions (both share the trail).
_COMMAND_KINDS = frozenset({"command", "command_refused"})

_FILES = {
    "/": ("status.html", "text/html"),
    "/status.css": ("status.css", "text/css"),
    "/status.js": ("status.js", "text/javascript"),
}
# everything from this origin only: no inline script, no third party, no framing
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _num(value: float | None) -> float | str | None:
    """Strict JSON: infinities as strings, as in every report the daemon publishes."""
    if value is None or math.isfinite(value):
        return value
    return str(value)


@dataclass
class AccountView:
    """What the page shows of one account, kept between reports."""

    report: MarginReport | None = None
    level: str = "ok"
    shock: Any = None  # the last ShockToLiquidation seen (a report may skip the solve)
    updated_at: float | None = None
    history: deque[tuple[float, float]] = field(default_factory=deque)

    def observe(self, report: MarginReport, now: float) -> None:
        """Keep the report; add a history point if the last is `HISTORY_STEP` old, else keep
        the worse of the two in the last point."""
        self.report = report
        self.updated_at = now
        if report.shock_to_liquidation is not None:
            self.shock = report.shock_to_liquidation
        if not self.history or now - self.history[-1][0] >= HISTORY_STEP:
            self.history.append((now, report.margin_ratio))
        else:
            # the worst ratio of the step: a spike between two points must not vanish
            self.history[-1] = (self.history[-1][0], max(self.history[-1][1], report.margin_ratio))
        while self.history and self.history[0][0] < now - HISTORY_SPAN:
            self.history.popleft()


def status_json(
    views: Mapping[str, AccountView],
    now: float,
    blind: Mapping[str, str],
    *,
    alerts: Iterable[Mapping[str, Any]] = (),
    silences: Iterable[Mapping[str, Any]] = (),
    actions: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    paused: Mapping[str, float | None] | None = None,
) -> dict[str, Any]:
    """The `/api/status` document (docs/status-page.md), from what the sinks know at `now`."""
    firing: dict[str, list[Mapping[str, Any]]] = {}
    for alert in alerts:
        firing.setdefault(str(alert["account"]), []).append(alert)
    accounts = []
    for name in sorted(views):
        view = views[name]
        report = view.report
        entry: dict[str, Any] = {
            "name": name,
            "level": view.level,
            "updated_at": view.updated_at,
            "source": {"state": "blind" if name in blind else "fresh", "reason": blind.get(name)},
            "report": None if report is None else report_to_dict(report),
            "history": [[round(t, 3), _num(r)] for t, r in view.history],
            "alerts": firing.get(name, []),
            "actions": list((actions or {}).get(name, ())),
            "actions_paused_until": (paused or {}).get(name),
        }
        if entry["report"] is not None and view.shock is not None:
            # the report's own field is null when its solve was skipped: show the last one
            entry["report"]["shock_to_liquidation"] = shock_to_dict(view.shock)
        accounts.append(entry)
    return {
        "version": __version__,
        "generated_at": now,
        "history_span": HISTORY_SPAN,
        "accounts": accounts,
        "silences": list(silences),
    }


class StatusSink(Sink):
    """A `Sink` that serves the status page and `/api/status` on the metrics listener.

    Args:
        accounts: the account names the page lists before their first report.
        blind: account -> why it is blind (the metrics sink's `/healthz` view).
        pipeline: returns the alert pipeline (alerts, silences, pauses, audit trail), or None
            when it is not built; read only when a page asks.
        clock: wall-clock seconds.
    """

    name = "status"

    def __init__(
        self,
        accounts: Iterable[str],
        blind: Callable[[], Mapping[str, str]],
        pipeline: Callable[[], Any] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.views: dict[str, AccountView] = {name: AccountView() for name in accounts}
        self.blind = blind
        self.pipeline = pipeline
        self.clock = clock
        self.changed = asyncio.Event()

    # --- Sink -------------------------------------------------------------------------------

    async def on_report(
        self, account: str, report: MarginReport, snapshot: AccountSnapshot, now: float
    ) -> None:
        """Keep the newest report and extend the ratio history."""
        del snapshot
        self.views.setdefault(account, AccountView()).observe(report, now)

    async def on_level(
        self, account: str, level: str, previous: str, report: MarginReport, now: float
    ) -> None:
        """Remember the level for the account's badge."""
        del previous, report, now
        self.views.setdefault(account, AccountView()).level = level

    def set_accounts(self, names: Iterable[str], sources: object = None) -> None:
        """After a reload: drop removed accounts, list new ones before their first report."""
        del sources
        keep = set(names)
        for name in list(self.views):
            if name not in keep:
                del self.views[name]
        for name in keep:
            self.views.setdefault(name, AccountView())

    # --- the document -----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The `/api/status` document now."""
        now = self.clock()
        pipeline = self.pipeline() if self.pipeline is not None else None
        alerts: list[dict[str, Any]] = []
        silences: list[dict[str, Any]] = []
        actions: dict[str, list[dict[str, Any]]] = {}
        paused: dict[str, float | None] = {}
        if pipeline is not None:
            for a in pipeline.state.alerts.values():
                if a.firing and a.account in self.views:
                    alerts.append(
                        {
                            "account": a.account,
                            "rule": a.rule,
                            "level": a.level,
                            "since": a.started_at,
                            "value": _num(a.value),
                            "acknowledged": a.acknowledged,
                        }
                    )
            silences = [
                {
                    "id": s.id,
                    "account": s.account,
                    "rule": s.rule,
                    "until": s.until,
                    "up_to": s.up_to,
                }
                for s in pipeline.state.silences
                if s.until > now
            ]
            for record in pipeline.store.audit_trail(since=now - 86_400, limit=10_000):
                if record.kind not in _COMMAND_KINDS and record.account in self.views:
                    actions.setdefault(record.account, []).append(
                        {"at": record.at, "kind": record.kind, **_action_summary(record.payload)}
                    )
            for name in self.views:
                actions[name] = actions.get(name, [])[-LAST_ACTIONS:][::-1]  # newest first
                until = pipeline.switches.paused_until(name, now)
                paused[name] = None if until is None or math.isinf(until) else until
        alerts.sort(key=lambda a: (a["account"], a["rule"]))
        return status_json(
            self.views,
            now,
            self.blind(),
            alerts=alerts,
            silences=silences,
            actions=actions,
            paused=paused,
        )

    # --- HTTP ---------------------------------------------------------------------------------

    def install(self, app: web.Application) -> None:
        """Add `/`, its two static files and `/api/status` to the metrics app."""
        from aiohttp import web  # noqa: PLC0415 - only when the listener runs

        data = importlib.resources.files("monitor") / "data"

        def static(filename: str, content_type: str) -> Callable[[web.Request], Any]:
            body = (data / filename).read_bytes()

            async def handler(request: web.Request) -> web.Response:
                del request
                return web.Response(
                    body=body, content_type=content_type, charset="utf-8", headers=_HEADERS
                )

            return handler

        async def api(request: web.Request) -> web.Response:
            del request
            return web.json_response(self.status(), headers=_HEADERS, dumps=_strict_dumps)

        for path, (filename, content_type) in _FILES.items():
            app.router.add_get(path, static(filename, content_type))
        app.router.add_get("/api/status", api)


def _strict_dumps(value: Any) -> str:
    import json  # noqa: PLC0415

    return json.dumps(value, allow_nan=False, separators=(",", ":"), default=str)


def _action_summary(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The few fields of an audit payload a person reads at a glance."""
    keep = (
        "live",
        "symbol",
        "side",
        "amount",
        "notional",
        "reason",
        "ratio",
        "ratio_before",
        "ratio_after",
        "ratio_after_planned",
        "target",
        "error",
    )
    return {k: payload[k] for k in keep if k in payload}
