"""Phone and chat notifications through Apprise: any Apprise URL per channel, with a minimum level.

Each channel is its own sink (`notify[<name>]`) with its own outbox rows, so a failing chat
service never re-sends to a phone that already got the message.

- Text a person can act on from a lock screen: account, level, the ratio and how it moved,
  margin balance, shock to liquidation, the top contributing positions and what the
  protective action did or would do.
- ntfy (`ntfy://`, `ntfys://`): priority by level (emergency = max, critical = high, warning =
  default, resolved = low) and action buttons "Acknowledge" and "Silence 1 h" that POST a
  signed, expiring token to the daemon's command endpoint (command_http.py). The token is the
  same HMAC envelope as an MQTT command (signed_commands.py) with an `expires_at`.
- Bursts are merged, never dropped: Apprise waits ~5.5 s between two sends to one service
  (`request_rate_per_sec`, notes/ecosystem.md §2), so each channel sends at most once per
  `min_interval`, and everything that queued meanwhile goes out as one message.

Apprise is used through `async_notify`, which runs the plugin's blocking HTTP in Apprise's own
thread pool, so the event loop keeps running (never call the sync `notify()` from here).
"""

from __future__ import annotations

import asyncio
import base64
import math
import time
import urllib.parse
from collections.abc import Callable, Collection, Sequence

import apprise
import structlog

from monitor.alert_message import AlertMessage
from monitor.alert_settings import NotifyChannel, NotifySettings
from monitor.rules import RULE_MARGIN, RULE_SHOCK, RULE_SOURCE_DOWN, level_rank
from monitor.signed_commands import Command

__all__ = [
    "NotifyChannel",
    "NotifySettings",
    "NotifySink",
    "ntfy_priority",
    "render",
    "token_url",
]

log = structlog.get_logger("monitor.sinks.notify")

_NTFY_PRIORITY = {"emergency": "max", "critical": "high", "warning": "default", "ok": "low"}
_NOTIFY_TYPE = {
    "emergency": apprise.NotifyType.FAILURE,
    "critical": apprise.NotifyType.FAILURE,
    "warning": apprise.NotifyType.WARNING,
    "ok": apprise.NotifyType.SUCCESS,
}


def ntfy_priority(level: str) -> str:
    """ntfy priority name for a level (resolved and ok are low)."""
    return _NTFY_PRIORITY.get(level, "default")


def token_url(base: str, envelope_json: str) -> str:
    """The button URL: the signed envelope as a base64url `token` query parameter.

    base64url has neither `,` nor `;`, the separators of ntfy's `X-Actions` header format.
    """
    token = base64.urlsafe_b64encode(envelope_json.encode()).decode().rstrip("=")
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}token={token}"


def _pct(value: float | None) -> str:
    if value is None:
        return "n/a"
    if math.isinf(value):
        return "∞ (liquidated)"
    return f"{value * 100:.1f} %"


def _money(value: float | None, currency: str) -> str:
    return "n/a" if value is None else f"{value:,.2f} {currency}".strip()


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"


def _headline(m: AlertMessage) -> str:
    what = {
        RULE_MARGIN: "margin ratio",
        RULE_SHOCK: "shock to liquidation",
        RULE_SOURCE_DOWN: "source down",
    }.get(m.rule, m.rule.replace("_", " "))
    if m.kind == "resolved":
        return f"RESOLVED {m.account}: {what} back to normal"
    if m.rule == RULE_MARGIN:
        return f"{m.level.upper()} {m.account}: margin ratio {_pct(m.value)}"
    if m.rule == RULE_SHOCK:
        return f"{m.level.upper()} {m.account}: a {_pct(m.value)} move liquidates"
    return f"{m.level.upper()} {m.account}: {what}"


def _lines(m: AlertMessage) -> list[str]:
    cur = m.currency
    lines = []
    if m.kind == "resolved":
        worst = _pct(m.worst_value) if m.rule in (RULE_MARGIN, RULE_SHOCK) else m.worst_level
        lines.append(f"Resolved after {_duration(m.duration)}; worst {worst} ({m.worst_level}).")
    elif m.rule == RULE_MARGIN:
        moved = f", was {_pct(m.previous_value)}" if m.previous_value is not None else ""
        threshold = f", {m.level} at {_pct(m.threshold)}" if m.threshold is not None else ""
        lines.append(f"Margin ratio {_pct(m.value)}{moved}{threshold}; liquidation at 100 %.")
    elif m.detail:
        lines.append(m.detail[:200])
    if m.margin_balance is not None:
        lines.append(
            f"Margin balance {_money(m.margin_balance, cur)}, "
            f"free {_money(m.free_collateral, cur)}."
        )
        if m.rule != RULE_MARGIN and m.margin_ratio is not None:
            lines.append(f"Margin ratio {_pct(m.margin_ratio)}.")
        if m.model == "venue":
            lines.append("The ratio is the venue's own figure (portfolio margin).")
        elif m.model == "estimate":
            lines.append("ESTIMATE: portfolio margin, the venue gave no figure.")
    if m.collateral:
        lines.append(m.collateral)
    if m.shock_down is not None or m.shock_up is not None:
        down = "none" if m.shock_down is None else _pct(abs(m.shock_down))
        up = "none" if m.shock_up is None else _pct(m.shock_up)
        lines.append(f"Liquidates on a {down} drop / {up} rise of all prices.")
    for p in m.positions:
        liq = "" if p.liquidation_price is None else f", liq {p.liquidation_price:,.6g}"
        lines.append(
            f"• {p.symbol} {p.side} {_money(p.notional, cur)}, MM {p.maintenance_margin:,.2f}, "
            f"uPnL {p.unrealized_pnl:,.2f}{liq}"
        )
    if m.kind != "resolved":
        lines.append(f"Action: {m.action or 'none (protective actions not configured)'}")
    return lines


def render(messages: Sequence[AlertMessage]) -> tuple[str, str]:
    """Title and body for one or several (merged) messages; the worst comes first."""
    ordered = sorted(messages, key=lambda m: (-level_rank(m.level), -m.at))
    first = ordered[0]
    if len(ordered) == 1:
        return _headline(first), "\n".join(_lines(first))
    title = f"{_headline(first)} (+{len(ordered) - 1} more)"
    blocks = ["\n".join([_headline(m), *_lines(m)]) for m in ordered]
    return title, "\n\n".join(blocks)


class NotifySink:
    """One Apprise channel as an alert sink.

    Args:
        channel: the channel settings.
        command_url: public command endpoint for buttons (None: no buttons).
        sign: turns a command into its signed envelope JSON (the pipeline's key); None: no
            buttons.
        token_ttl: how long a button stays valid; silence_for: what "Silence" silences.
        clock: wall-clock seconds.
    """

    def __init__(
        self,
        channel: NotifyChannel,
        *,
        command_url: str | None = None,
        sign: Callable[[Command, float], str] | None = None,
        token_ttl: float = 3600.0,
        silence_for: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.channel = channel
        self.name = f"notify[{channel.name}]"
        self.command_url = command_url
        self.sign = sign
        self.token_ttl = token_ttl
        self.silence_for = silence_for
        self.clock = clock
        self._last_send = -math.inf
        url = channel.url.get_secret_value()
        self._is_ntfy = urllib.parse.urlsplit(url).scheme in ("ntfy", "ntfys")

    def wants(self, message: AlertMessage) -> bool:
        """At or above the channel's level (by the episode's worst, so a resolve follows)."""
        if message.kind == "resolved" and not self.channel.send_resolved:
            return False
        worst = max(level_rank(message.level), level_rank(message.worst_level))
        return worst >= level_rank(self.channel.min_level)

    def _actions(self, message: AlertMessage) -> str | None:
        """ntfy `X-Actions` (short format): Acknowledge and Silence buttons with tokens."""
        if self.command_url is None or self.sign is None or message.kind == "resolved":
            return None
        now = self.clock()
        expires = now + self.token_ttl
        ack = Command(
            "ack",
            account=message.account,
            rule=message.rule,
            request_id=f"{message.id}:ack",
            expires_at=expires,
        )
        silence = Command(
            "silence",
            account=message.account,
            rule=message.rule,
            duration=self.silence_for,
            up_to=message.level if message.level != "ok" else "warning",
            request_id=f"{message.id}:silence",
            silence_id=f"{message.fingerprint}:{message.episode}",
            expires_at=expires,
        )
        hours = self.silence_for / 3600
        label = f"Silence {hours:g} h" if hours >= 1 else f"Silence {self.silence_for / 60:g} min"
        buttons = [
            ("Acknowledge", token_url(self.command_url, self.sign(ack, now))),
            (label, token_url(self.command_url, self.sign(silence, now))),
        ]
        return "; ".join(f"http, {name}, {url}, method=POST, clear=true" for name, url in buttons)

    def _target(self, messages: Sequence[AlertMessage]) -> str:
        url = self.channel.url.get_secret_value()
        if not self._is_ntfy:
            return url
        worst = max(messages, key=lambda m: level_rank(m.level))
        extra = {"priority": ntfy_priority(worst.level)}
        actions = self._actions(worst)
        if actions:
            extra["actions"] = actions
        parts = urllib.parse.urlsplit(url)
        query = urllib.parse.parse_qsl(parts.query)
        query = [(k, v) for k, v in query if k not in extra] + list(extra.items())
        encoded = urllib.parse.urlencode(query, quote_via=urllib.parse.quote)  # Apprise: no "+"
        return urllib.parse.urlunsplit(parts._replace(query=encoded))

    async def deliver(self, messages: Sequence[AlertMessage]) -> Collection[str]:
        """Send the batch as one notification (merged); all ids or none are acknowledged."""
        wait = self._last_send + self.channel.min_interval - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        title, body = render(messages)
        worst = max(messages, key=lambda m: level_rank(m.level))
        notifier = apprise.Apprise()
        if not notifier.add(self._target(messages)):
            msg = f"channel {self.channel.name}: Apprise refused the URL"
            raise ValueError(msg)
        self._last_send = time.monotonic()
        result = await notifier.async_notify(
            body=body,
            title=title,
            notify_type=_NOTIFY_TYPE.get(worst.level, apprise.NotifyType.INFO),
            timeout=self.channel.timeout,
        )
        if not bool(result):
            status = getattr(result, "status", result)
            msg = f"channel {self.channel.name}: delivery failed ({status})"
            raise ConnectionError(msg)
        log.info("notify.sent", channel=self.channel.name, count=len(messages), title=title)
        return {m.id for m in messages}
