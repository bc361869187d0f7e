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

Every command carries a `request_id` (docs/hardening.md): the receiver keeps the ids it executed for
as long as their envelope could verify (`valid_until`), in the state store, so neither a
restart nor a second door (MQTT, HTTP) lets a captured command run twice. A phone token also
names the alert `episode` it was minted for; it cannot act on a later episode.

Hostile input is refused with a reason, never an exception other than `CommandRefused`:
deep nesting, a 400-digit `ts`, a non-ASCII `sig` (which `hmac.compare_digest` rejects with
TypeError on str), NaN or far-future `expires_at`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from dataclasses import dataclass
from typing import Any, Literal, cast, get_args

from monitor.core.levels import LEVELS

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
_LEVELS = LEVELS[1:]  # what a silence may cover: every level but ok

#: Clock skew tolerated for a timestamp in the future.
FUTURE_SKEW = 5.0
#: Longest validity of a token with `expires_at` (notify.token_ttl is at most 7 days): the
#: replay memory must hold an id this long, so the bound keeps it finite.
MAX_TOKEN_LIFE = 7 * 86400.0
#: Default age limit of an envelope without `expires_at`.
MAX_AGE = 60.0
#: Longest accepted request_id: ids are stored until their envelope expires.
MAX_REQUEST_ID = 128
#: Timestamps outside this range are nonsense (and 10**400 does not even fit a float).
_TS_RANGE = 1e11
_HEX = frozenset("0123456789abcdef")


class CommandRefused(Exception):
    """A command that must not be executed; the message says why (it is logged and replied).

    `request_id`: the refused command's own id when its signed body could be read (a stale
    or expired one), so the sender can match the refusal to its request (docs/alerts.md).
    """

    def __init__(self, reason: str, request_id: str = "") -> None:
        super().__init__(reason)
        self.request_id = request_id


@dataclass(frozen=True, slots=True)
class Command:
    """A verified command.

    `account` None means every account (pause/resume) or is refused where it makes no sense.
    `duration` is seconds (silence, pause); `up_to` is the highest level a silence covers.
    `request_id` correlates the reply and lets the receiver drop replays (required).
    `episode`: a phone token's alert episode; the command is refused in another episode.
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
    episode: str | None = None

    def to_body(self) -> str:
        """The JSON text that gets signed."""
        data: dict[str, Any] = {"action": self.action, "request_id": self.request_id}
        for key in ("account", "rule", "duration", "silence_id", "expires_at", "episode"):
            value = getattr(self, key)
            if value is not None:
                data[key] = value
        if self.action == "silence":
            data["up_to"] = self.up_to
        return json.dumps(data, separators=(",", ":"), sort_keys=True)

    def valid_until(self, max_age: float = MAX_AGE) -> float:
        """Until when an envelope of this command can verify: how long its id must be kept."""
        if self.expires_at is not None:
            return self.expires_at
        return self.issued_at + max_age


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
        try:
            return float(value)
        except OverflowError:
            raise CommandRefused(f"command field '{key}' is out of range") from None
    raise CommandRefused(f"command field '{key}' must be a {kind.__name__}")


def _loads(raw: bytes | str, what: str) -> Any:
    try:
        return json.loads(raw)
    except RecursionError:
        raise CommandRefused(f"{what} is nested too deeply") from None
    except (ValueError, UnicodeDecodeError):
        # ValueError covers integers over 4 300 digits (sys.int_info.default_max_str_digits)
        raise CommandRefused(f"{what} is not JSON: send {{body, ts, sig}}") from None


def verify(raw: bytes | str, secret: bytes, now: float, max_age: float = MAX_AGE) -> Command:
    """Check an envelope and return its command, or raise `CommandRefused` saying why."""
    outer = _loads(raw, "command")
    if not isinstance(outer, dict):
        raise CommandRefused("command must be a JSON object {body, ts, sig}")
    body, ts, sig = outer.get("body"), outer.get("ts"), outer.get("sig")
    if not isinstance(body, str) or not isinstance(sig, str):
        raise CommandRefused("command needs 'body' (string) and 'sig' (hex string)")
    if (
        isinstance(ts, bool)
        or not isinstance(ts, int | float)
        or not -_TS_RANGE < ts < _TS_RANGE  # False for NaN; no float() of a 400-digit int
    ):
        raise CommandRefused("command needs a numeric 'ts' (unix seconds)")
    if len(sig) != 64 or not _HEX.issuperset(sig):
        raise CommandRefused("bad signature")  # compare_digest raises on non-ASCII str
    if not hmac.compare_digest(signature(secret, float(ts), body).encode(), sig.encode()):
        raise CommandRefused("bad signature")
    data = _loads(body, "command body")
    if not isinstance(data, dict):
        raise CommandRefused("command body must be a JSON object")
    try:  # a lone surrogate ("\ud800") decodes, then fails in SQLite or on the wire
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise CommandRefused("command body holds an invalid character (a lone surrogate)") from None
    request_id = _field(data, "request_id", str, "")
    if not request_id:
        raise CommandRefused("command needs a 'request_id' (unique per command): replay guard")
    if len(request_id) > MAX_REQUEST_ID:
        raise CommandRefused(f"request_id longer than {MAX_REQUEST_ID} characters")
    expires_at = _field(data, "expires_at", float)
    if expires_at is not None:
        if not math.isfinite(expires_at) or expires_at - ts > MAX_TOKEN_LIFE:
            raise CommandRefused("expires_at must be a time within 7 days of 'ts'")
        if now >= expires_at:
            raise CommandRefused("token expired", request_id)
    elif now - ts > max_age:
        raise CommandRefused(
            f"command is {now - ts:.0f} s old (limit {max_age:.0f} s): replay?", request_id
        )
    if ts - now > FUTURE_SKEW:
        raise CommandRefused(
            "command timestamp is in the future: check the sender's clock", request_id
        )
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
        request_id=request_id,
        issued_at=float(ts),
        expires_at=expires_at,
        episode=_field(data, "episode", str),
    )
