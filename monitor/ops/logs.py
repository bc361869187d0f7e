"""structlog, configured once: readable on a terminal, JSON lines everywhere else.

Under systemd or in a container, one JSON object per line on stdout is what journald and
log shippers index (structlog's best-practice doc: log to stdout, let the supervisor
handle it). Tracebacks never include frame locals: `dict_tracebacks` and the rich console
renderer both dump locals by default, which would print API keys held in local variables
(docs/development.md).

Libraries log through the standard library (ccxt, aiomqtt's `mqtt` logger, Apprise,
aiohttp); their records go through the same renderer via one stdout handler with
structlog's `ProcessorFormatter` (structlog docs, "Standard library logging"), so a
journal holds one format and every line passes the redaction below.

**Redaction.** Whatever a library decides to log (a request URL with a token, an exception
quoting a header), the configured secrets must never reach the output. The last step of
the pipeline replaces every configured secret (every `SecretStr` of the settings, see
`secrets_of`) in the *rendered line*, in its raw, JSON-escaped and repr-escaped spellings,
so no renderer, traceback or foreign record can route around it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import stat
import sys
import threading
from collections.abc import Iterable
from typing import Any, Literal, TextIO
from urllib.parse import parse_qsl, quote, quote_plus, urlsplit

import structlog
from pydantic import BaseModel, SecretStr

__all__ = [
    "REDACTED",
    "Format",
    "Redactor",
    "Throttle",
    "configure",
    "redact",
    "scrub_exception",
    "secrets_of",
    "set_secrets",
]

#: What a secret is replaced with in every log line.
REDACTED = "[REDACTED]"
#: Shorter values are not redacted: replacing "ab" everywhere would garble every line, and
#: a secret that short is not protected by redaction anyway.
MIN_SECRET_LENGTH = 4
#: Library loggers that are chatty at INFO about routine requests.
_QUIET_LOGGERS = ("aiohttp.access",)


class Redactor:
    """Replaces configured secrets in rendered log lines (a structlog processor)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # a reload swaps secrets while threads may log
        self._needles: tuple[str, ...] = ()

    def set(self, secrets: Iterable[str]) -> None:
        """The secrets to hide from now on (replaces the previous set)."""
        needles: set[str] = set()
        for secret in secrets:
            for form in _spellings(secret):
                if len(form) >= MIN_SECRET_LENGTH:
                    needles.add(form)
        with self._lock:
            # longest first, so a secret that contains another is replaced whole
            self._needles = tuple(sorted(needles, key=len, reverse=True))

    def redact(self, text: str) -> str:
        """`text` with every secret replaced by `REDACTED`."""
        for needle in self._needles:
            if needle in text:
                text = text.replace(needle, REDACTED)
        return text

    def __call__(self, logger: Any, method_name: str, line: Any) -> Any:
        """The pipeline's last step: runs on the rendered string."""
        del logger, method_name
        return self.redact(line) if isinstance(line, str) else line


def _spellings(secret: str) -> Iterable[str]:
    """The secret as it may appear in a line: raw, inside JSON, inside a repr, URL-encoded
    (a venue echoing its query string, docs/hardening.md), and the credential parts of a URL secret
    (an Apprise URL's password, token path or query)."""
    yield secret
    yield json.dumps(secret)[1:-1]
    yield repr(secret)[1:-1]
    yield quote(secret, safe="")
    yield quote_plus(secret, safe="")
    yield quote(secret)  # '/' kept, as in a path
    if "://" in secret:
        parts = urlsplit(secret)
        if parts.password:
            yield parts.password
        for segment in parts.path.split("/"):
            if len(segment) >= 8:  # tokens and private topics; short segments are words
                yield segment
        for _key, value in parse_qsl(parts.query):
            if len(value) >= 8:
                yield value


#: Keys of a free-form table (an account's `ccxt` options) whose string values are
#: credentials: ccxt's `requiredCredentials` names (ccxt 4.5.90 base Exchange), lowercased.
_CREDENTIAL_KEYS = frozenset(
    {
        "apikey",
        "secret",
        "uid",
        "accountid",
        "login",
        "password",
        "twofa",
        "privatekey",
        "walletaddress",
        "token",
        "passphrase",
    }
)


def credential_key(key: object) -> bool:
    """Whether a free-form option named `key` holds a credential (`apiKey`, `privateKey`...)."""
    return str(key).lower() in _CREDENTIAL_KEYS


def secrets_of(settings: object) -> list[str]:
    """Every `SecretStr` value anywhere in a settings object (models, lists, dicts), and
    every string under a credential-like key of a plain dict (`[accounts.ccxt]`, where
    ccxt options are passed through untyped: docs/hardening.md)."""
    found: list[str] = []

    def walk(value: object, credential: bool = False) -> None:
        if isinstance(value, SecretStr):
            secret = value.get_secret_value()
            if secret:
                found.append(secret)
        elif isinstance(value, str):
            if credential and value:
                found.append(value)
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name))
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, credential or credential_key(key))
        elif isinstance(value, list | tuple | set | frozenset):
            for item in value:
                walk(item, credential)

    walk(settings)
    return found


_REDACTOR = Redactor()


def set_secrets(secrets: Iterable[str]) -> None:
    """Replace the secrets being redacted (a config reload) without reconfiguring."""
    _REDACTOR.set(secrets)


def redact(text: str) -> str:
    """`text` with every configured secret (any spelling) replaced: the same redaction as
    log lines, for text that leaves by another way (an error line, an alert)."""
    return _REDACTOR.redact(text)


def scrub_exception(exc: BaseException, redactor: Redactor | None = None) -> None:
    """Redact an exception's text in place (its string args, and its cause's).

    Used where foreign text enters: ccxt's exceptions quote the venue's answer, which may
    repeat a credential (docs/hardening.md); scrubbed there, every surface that later shows the
    error (`/healthz`, alerts, SQLite, `check`, `snapshot`) only ever has the clean text.
    """
    r = redactor or _REDACTOR
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if any(isinstance(a, str) for a in current.args):
            current.args = tuple(r.redact(a) if isinstance(a, str) else a for a in current.args)
        current = current.__cause__ or current.__context__


Format = Literal["auto", "json", "console"]


def configure(
    level: str = "info",
    fmt: Format = "auto",
    stream: TextIO | None = None,
    secrets: Iterable[str] = (),
) -> Literal["json", "console"]:
    """Configure structlog and the stdlib root logger; returns the format chosen.

    `auto` picks the console renderer when `stream` is a terminal, JSON otherwise.
    `secrets` are redacted from every line (see `secrets_of`). Safe to call again (tests,
    a config reload): the last call wins, and the root logger keeps one handler.
    """
    out: TextIO = stream if stream is not None else _CurrentStdout()  # type: ignore[assignment]
    chosen: Literal["json", "console"]
    if fmt == "auto":
        chosen = "console" if out.isatty() else "json"
    else:
        chosen = fmt
    _REDACTOR.set(secrets)
    renderer: structlog.typing.Processor
    if chosen == "json":
        renderer = structlog.processors.JSONRenderer()
        tracebacks: list[structlog.typing.Processor] = [
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            )
        ]
    else:
        renderer = structlog.dev.ConsoleRenderer(
            exception_formatter=structlog.dev.RichTracebackFormatter(show_locals=False)
        )
        tracebacks = []
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    handler = _Handler(out)
    handler.set_name("margin-monitor")
    handler.addFilter(Throttle())
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *tracebacks,
                renderer,
                _REDACTOR,  # last: on the rendered line, whatever produced it
            ],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == "margin-monitor":
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
    return chosen


class Throttle(logging.Filter):
    """At most `burst` records per library logger and message per `window` seconds.

    A library logs per connection or per request (aiohttp's "Error handling request",
    asyncio's accept errors): 300 hostile sockets made ~82 000 lines in 25 s (docs/hardening.md).
    The first record after a quiet spell says how many similar ones were dropped. The daemon's
    own `monitor.*` records pass untouched: they are already one per decision.
    """

    def __init__(self, burst: int = 10, window: float = 60.0) -> None:
        super().__init__()
        self.burst = burst
        self.window = window
        self._seen: dict[tuple[str, str], list[float]] = {}  # key -> [window start, count, dropped]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("monitor"):
            return True
        key = (record.name, str(record.msg)[:200])
        now = record.created
        entry = self._seen.get(key)
        if entry is None or now - entry[0] >= self.window:
            dropped = int(entry[2]) if entry is not None else 0
            if len(self._seen) > 1000:
                self._seen.clear()  # bounded: keys are message templates, few in practice
            self._seen[key] = [now, 1.0, 0.0]
            if dropped:
                record.msg = f"{record.msg} ({dropped} similar dropped in the last minute)"
            return True
        if entry[1] < self.burst:
            entry[1] += 1
            return True
        entry[2] += 1
        return False


#: Set when the log stream's reader went away (`run --no-tui | head`): the CLI then exits 2
#: (stdout a pipe); on any other stream the daemon keeps running, its log to /dev/null.
OUTPUT_CLOSED = threading.Event()


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """stdout; a closed pipe stops the process (SIGTERM: a clean stop) instead of printing
    a "--- Logging error ---" traceback per line (docs/hardening.md: `run --no-tui | head`)."""

    _broken = False

    def handleError(self, record: logging.LogRecord) -> None:
        if isinstance(sys.exc_info()[1], BrokenPipeError):
            if not self._broken:
                self._broken = True
                piped = _stdout_is_pipe()
                discard_stdout()
                if piped:
                    # `| head` left: the person is done with this run. Only a pipe: a
                    # journald stream is a socket, and losing it must never stop protection
                    OUTPUT_CLOSED.set()
                    os.kill(os.getpid(), signal.SIGTERM)
            return
        super().handleError(record)


def _stdout_is_pipe() -> bool:
    try:
        return stat.S_ISFIFO(os.fstat(sys.stdout.fileno()).st_mode)
    except (OSError, ValueError):
        return False


def discard_stdout() -> None:
    """Point fd 1 at /dev/null: what is still buffered cannot raise at exit."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


class _CurrentStdout:
    """Whatever `sys.stdout` is at write time, so rich's live view can capture log lines."""

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()

    def isatty(self) -> bool:
        return sys.stdout.isatty()
