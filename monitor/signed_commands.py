"""Commands from a person (acknowledge, silence, pause/resume actions), signed with HMAC-SHA256.

Commands change what protects someone's money, so reaching the broker must not be enough to
send one (docs/mqtt-and-commands.md). Every command is an envelope

    {"body": "<JSON text of the command>", "ts": <unix seconds>, "sig": "<hex>"}

with `sig = HMAC-SHA256(secret, f"{int(ts)}\\n{body}")` in hex. Whole unix seconds, so a
shell script can sign with `date +%s` and `openssl dgst -sha256 -hmac`. The body travels as a
string so the signature covers exactly the bytes that were signed (no JSON canonicalisation).
A command is refused when the signature is wrong, when `ts` is more than `max_age` (60 s)
old or in the future (replay), or when its body has an `expires_at` that has passed; that
last form is the token inside a phone notification's action button, valid for longer than a
minute but still bounded. Pure: no clock, the caller passes `now`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from dataclasses import dataclass
from typing import Any, Literal, cast, get_args

__all__ = [
    "Command",
    "CommandAction",
    "CommandRefused",
    "envelope",
    "signature",
    "verify",
]

CommandAction = Literal["ack", "silence", "unsilence", "pause", "resume", "status"]
_ACTIONS = frozenset(get_args(CommandAction))
_LEVELS = ("warning", "critical", "emergency")

#: Clock skew tolerated for a timestamp in the future.
FUTURE_SKEW = 5.0


class CommandRefused(Exception):
    """A command that must not be executed; the message says why (it is logged and replied)."""


@dataclass(frozen=True, slots=True)
class Command:
    """A verified command.

    `account` None means every account (pause/resume) or is refused where it makes no sense.
    `duration` is seconds (silence, pause); `up_to` is the highest level a silence covers.
    `request_id` correlates the reply and lets the receiver drop replays inside the window.
    """

    action: CommandAction
    account: str | None = None
    rule: str | None = None
    duration: float | None = None
    up_to: str = "emergency"
    silence_id: str | None = None
    request_id: str = ""
    issued_at: float = 0.0
    expires_at: float | None = None

    def to_body(self) -> str:
        """The JSON text that gets signed."""
        data: dict[str, Any] = {"action": self.action, "request_id": self.request_id}
        for key in ("account", "rule", "duration", "silence_id", "expires_at"):
            value = getattr(self, key)
            if value is not None:
                data[key] = value
        if self.action == "silence":
            data["up_to"] = self.up_to
        return json.dumps(data, separators=(",", ":"), sort_keys=True)


def signature(secret: bytes, ts: float, body: str) -> str:
    """Hex HMAC-SHA256 over the timestamp (whole seconds) and the body."""
    return hmac.new(secret, f"{int(ts)}\n{body}".encode(), hashlib.sha256).hexdigest()


def envelope(command: Command, secret: bytes, ts: float) -> str:
    """The signed wire form of `command`, as sent on the command topic or in a button."""
    body = command.to_body()
    return json.dumps({"body": body, "ts": int(ts), "sig": signature(secret, ts, body)})


def _field(data: dict[str, Any], key: str, kind: type, default: object = None) -> Any:
    value = data.get(key, default)
    if value is None or isinstance(value, kind):
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    raise CommandRefused(f"command field '{key}' must be a {kind.__name__}")


def verify(raw: bytes | str, secret: bytes, now: float, max_age: float = 60.0) -> Command:
    """Check an envelope and return its command, or raise `CommandRefused` saying why."""
    try:
        outer = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CommandRefused("command is not JSON: send {body, ts, sig}") from exc
    if not isinstance(outer, dict):
        raise CommandRefused("command must be a JSON object {body, ts, sig}")
    body, ts, sig = outer.get("body"), outer.get("ts"), outer.get("sig")
    if not isinstance(body, str) or not isinstance(sig, str):
        raise CommandRefused("command needs 'body' (string) and 'sig' (hex string)")
    if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
        raise CommandRefused("command needs a numeric 'ts' (unix seconds)")
    if not hmac.compare_digest(signature(secret, float(ts), body), sig):
        raise CommandRefused("bad signature")
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise CommandRefused("command body is not JSON") from exc
    if not isinstance(data, dict):
        raise CommandRefused("command body must be a JSON object")
    expires_at = _field(data, "expires_at", float)
    if expires_at is not None:
        if now >= expires_at:
            raise CommandRefused("token expired")
    elif now - ts > max_age:
        raise CommandRefused(f"command is {now - ts:.0f} s old (limit {max_age:.0f} s): replay?")
    if ts - now > FUTURE_SKEW:
        raise CommandRefused("command timestamp is in the future: check the sender's clock")
    action = data.get("action")
    if action not in _ACTIONS:
        raise CommandRefused(f"unknown action {action!r}: use one of {sorted(_ACTIONS)}")
    up_to = _field(data, "up_to", str, "emergency")
    if up_to not in _LEVELS:
        raise CommandRefused(f"up_to must be one of {list(_LEVELS)}")
    duration = _field(data, "duration", float)
    if duration is not None and not (0 < duration <= 30 * 86400):
        raise CommandRefused("duration must be between 0 and 30 days (seconds)")
    if action == "silence" and duration is None:
        raise CommandRefused("silence needs a 'duration' in seconds")
    return Command(
        action=cast("CommandAction", action),
        account=_field(data, "account", str),
        rule=_field(data, "rule", str),
        duration=duration,
        up_to=up_to,
        silence_id=_field(data, "silence_id", str),
        request_id=_field(data, "request_id", str, "") or "",
        issued_at=float(ts),
        expires_at=expires_at,
    )
