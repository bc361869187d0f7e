"""Phone and chat notifications through Apprise: any Apprise URL per channel, with a minimum level.

Each channel is its own sink (`notify[<name>]`) with its own outbox rows, so a failing chat
service never re-sends to a phone that already got the message.

- Text a person can act on from a lock screen: account, level, the ratio and how it moved,
  margin balance, shock to liquidation, the top contributing positions and what the
  protective action did or would do.
- ntfy (`ntfy://`, `ntfys://`): priority by level (emergency = max, critical = high, warning =
  default, resolved = low) and action buttons "Acknowledge" and "Silence 1 h" that POST a
  signed, expiring token to the daemon's command endpoint (command_http.py). The token is the
  same HMAC envelope as an MQTT command (signed_commands.py) with an `expires_at`; it is
  single-use, names the alert's account and episode, and travels in the request body (ntfy's
  `body=`), not the URL, so proxies' access logs never hold a usable token (docs/hardening.md).
- Bursts are merged, never dropped: Apprise waits ~5.5 s between two sends to one service
  (`request_rate_per_sec`, docs/development.md), so each channel sends at most once per
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

from monitor.alerts.message import AlertMessage
from monitor.alerts.signed_commands import Command
from monitor.config.alerts import NotifyChannel, NotifySettings
from monitor.core.alert_config import RULE_MARGIN, RULE_SHOCK, RULE_SOURCE_DOWN
from monitor.core.levels import level_rank

__all__ = [
    "NotifyChannel",
    "NotifySettings",
    "NotifySink",
    "ntfy_priority",
    "render",
    "token_of",
    "token_url",
]

log = structlog.get_logger("monitor.sinks.notify")

#: Messages per send: the outbox hands a sink at most this many due rows at once.
BATCH = 100

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


def token_of(envelope_json: str) -> str:
    """The envelope as a base64url token: it has neither `,` nor `;`, the separators of
    ntfy's `X-Actions` header format, nor quotes, so it is a safe `body=` value."""
    return base64.urlsafe_b64encode(envelope_json.encode()).decode().rstrip("=")


def token_url(base: str, envelope_json: str) -> str:
    """A URL carrying the token as a `token` query parameter (channels without a body)."""
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}token={token_of(envelope_json)}"


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


def _ordered(messages: Sequence[AlertMessage]) -> tuple[list[AlertMessage], bool]:
    """The batch in reading order, and whether everything in it is already resolved.

    News still true comes first, worst level first, newest first within a level; an
    episode whose resolve is in the same batch follows, in the order it happened, so the
    lock screen never leads with an emergency that is already over (docs/alerts.md).
    """
    over = {(m.fingerprint, m.episode) for m in messages if m.kind == "resolved"}
    live = [m for m in messages if (m.fingerprint, m.episode) not in over]
    settled = [m for m in messages if (m.fingerprint, m.episode) in over]
    live.sort(key=lambda m: (-level_rank(m.level), -m.at))
    worst_of = {
        key: max(level_rank(m.level) for m in settled if (m.fingerprint, m.episode) == key)
        for key in over
    }
    settled.sort(key=lambda m: (-worst_of[(m.fingerprint, m.episode)], m.fingerprint, m.at))
    return [*live, *settled], not live


def _resolved_title(ordered: Sequence[AlertMessage]) -> str:
    """`RESOLVED ... (was EMERGENCY: ...)`: the batch's worst news, already over."""
    worst = max(ordered, key=lambda m: level_rank(m.level))
    done = next(
        m
        for m in ordered
        if m.kind == "resolved" and (m.fingerprint, m.episode) == (worst.fingerprint, worst.episode)
    )
    if worst is done:
        return _headline(done)
    was = _headline(worst).split(": ", 1)[-1]
    return f"{_headline(done)} (was {worst.level.upper()}: {was})"


def render(messages: Sequence[AlertMessage]) -> tuple[str, str]:
    """Title and body for one or several (merged) messages; the worst open news first."""
    ordered, all_over = _ordered(messages)
    first = ordered[0]
    title = _resolved_title(ordered) if all_over else _headline(first)
    if len(ordered) == 1:
        return title, "\n".join(_lines(first))
    title = f"{title} (+{len(ordered) - 1} more)"
    blocks = ["\n".join([_headline(m), *_lines(m)]) for m in ordered]
    return title, "\n\n".join(blocks)


def _lead(messages: Sequence[AlertMessage]) -> AlertMessage:
    """The message a batch's priority and type follow: its worst news still true."""
    ordered, all_over = _ordered(messages)
    if all_over:
        return next((m for m in ordered if m.kind == "resolved"), ordered[0])
    return ordered[0]


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
            episode=message.episode,
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
            episode=message.episode,
        )
        hours = self.silence_for / 3600
        label = f"Silence {hours:g} h" if hours >= 1 else f"Silence {self.silence_for / 60:g} min"
        buttons = [
            ("Acknowledge", token_of(self.sign(ack, now))),
            (label, token_of(self.sign(silence, now))),
        ]
        url = self.command_url
        return "; ".join(
            f"http, {name}, {url}, method=POST, body={token}, clear=true" for name, token in buttons
        )

    def _target(self, messages: Sequence[AlertMessage]) -> str:
        url = self.channel.url.get_secret_value()
        if not self._is_ntfy:
            return url
        lead = _lead(messages)
        extra = {"priority": ntfy_priority(lead.level)}
        actions = self._actions(lead)
        if actions:
            extra["actions"] = actions
        parts = urllib.parse.urlsplit(url)
        query = urllib.parse.parse_qsl(parts.query)
        query = [(k, v) for k, v in query if k not in extra] + list(extra.items())
        encoded = urllib.parse.urlencode(query, quote_via=urllib.parse.quote)  # Apprise: no "+"
        return urllib.parse.urlunsplit(parts._replace(query=encoded))

    @property
    def next_send_in(self) -> float:
        """Seconds until the channel may send again (0: now)."""
        return max(0.0, self._last_send + self.channel.min_interval - time.monotonic())

    def drain_time(self, queued: int) -> float:
        """Seconds `queued` messages need at most: the pacing wait, then one send per batch."""
        rounds = math.ceil(queued / BATCH)
        return (
            self.next_send_in
            + rounds * self.channel.timeout
            + (rounds - 1) * self.channel.min_interval
        )

    async def ready(self) -> None:
        """Sleep out the channel's pacing (the pipeline picks the batch after this)."""
        wait = self.next_send_in
        if wait > 0:
            await asyncio.sleep(wait)

    async def deliver(self, messages: Sequence[AlertMessage]) -> Collection[str]:
        """Send the batch as one notification (merged); all ids or none are acknowledged."""
        await self.ready()  # a no-op behind the pipeline, which waited before picking
        title, body = render(messages)
        worst = _lead(messages)
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
