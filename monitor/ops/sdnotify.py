"""systemd's notify protocol, hand-written: `READY=1`, `WATCHDOG=1`, `STOPPING=1`, `STATUS=`.

The protocol is one datagram of `KEY=VALUE` lines to the unix socket named in
`$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace); systemd calls it a stable
interface (sd_notify(3), which since 2024 carries a standalone implementation and advises
daemons not to link libsystemd for it). The PyPI options were an unmaintained package with a
bare `except:` and an sdist needing libsystemd-dev (docs/development.md), so it is these
few lines instead. Without `$NOTIFY_SOCKET` (a terminal, a container) every call is a no-op.

The watchdog is the part that matters: systemd kills and restarts the service when pings
stop for `WatchdogSec`, so a ping must mean "the daemon makes progress", never "a timer
fired" (`watchdog_ping` gates it on liveness probes the daemon supplies).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence

import structlog

__all__ = ["Notifier", "ProgressProbe", "ask", "watchdog_interval", "watchdog_loop"]

log = structlog.get_logger("monitor.sdnotify")


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between pings: half of `WatchdogSec` (sd_watchdog_enabled(3)), or None.

    `WATCHDOG_PID`, when set, must be this process: a child that inherited the variables
    must not ping on its parent's behalf.
    """
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 1_000_000 / 2


class Notifier:
    """Sends notify messages to `$NOTIFY_SOCKET`; silent when there is none.

    Args:
        address: the socket (`/run/...`, or `@name` for an abstract socket); None: read
            `$NOTIFY_SOCKET` now. An empty address disables the notifier.
    """

    def __init__(self, address: str | None = None) -> None:
        if address is None:
            address = os.environ.get("NOTIFY_SOCKET", "")
        self.address = address
        self.sent = 0

    @property
    def enabled(self) -> bool:
        """True when running under a supervisor that listens (systemd `Type=notify`)."""
        return bool(self.address)

    def notify(self, *fields: str) -> bool:
        """Send `fields` (`"READY=1"`, `"STATUS=…"`) as one datagram; False if not sent.

        Never raises and never blocks: a supervisor that went away or stopped reading must
        not take the daemon down with it.
        """
        if not self.address:
            return False
        target = self.address
        if target.startswith("@"):
            target = "\0" + target[1:]  # abstract namespace (sd_notify(3))
        payload = "\n".join(f.replace("\n", " ") for f in fields).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                # Never block the event loop: a unix datagram queue holds ~10 messages, and
                # a supervisor that stopped reading would otherwise freeze the daemon here.
                sock.setblocking(False)
                sock.connect(target)
                sock.sendall(payload)
        except OSError as exc:
            log.warning("sd_notify failed", socket=self.address, error=str(exc))
            return False
        self.sent += 1
        return True

    def ready(self, status: str | None = None) -> bool:
        """`READY=1`: configured and running (not: every exchange answered)."""
        return self.notify("READY=1", *_status(status))

    def stopping(self, status: str | None = None) -> bool:
        """`STOPPING=1`: shutdown began, so systemd does not count it as a hang."""
        return self.notify("STOPPING=1", *_status(status))

    def reloading(self, status: str | None = None) -> bool:
        """`RELOADING=1`: re-reading the configuration; follow with `ready()`."""
        return self.notify("RELOADING=1", *_status(status))

    def status(self, text: str) -> bool:
        """`STATUS=`: the line `systemctl status` shows."""
        return self.notify(f"STATUS={text}")

    def watchdog(self) -> bool:
        """`WATCHDOG=1`: one keep-alive ping."""
        return self.notify("WATCHDOG=1")


def _status(text: str | None) -> Sequence[str]:
    return () if text is None else (f"STATUS={text}",)


Probe = Callable[[], str | None]


def ask(probe: Probe) -> str | None:
    """The probe's answer: None while its part progresses, else why not. A probe that
    raises counts as wedged, its error the reason (the watchdog and `/livez` alike)."""
    try:
        return probe()
    except Exception as exc:
        return f"liveness probe failed: {type(exc).__name__}: {exc}"


class ProgressProbe:
    """Liveness of a worker loop: wedged when it has work but does none for `limit` s.

    Idle is healthy (an account with no price change has nothing to recompute); what is not
    healthy is work waiting (`busy()` true) while the count of work done (`done()`) stays
    the same, which is what a stuck `recompute[<account>]` task looks like from outside.
    """

    def __init__(
        self,
        name: str,
        busy: Callable[[], bool],
        done: Callable[[], int],
        limit: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.__name__ = name
        self.busy = busy
        self.done = done
        self.limit = limit
        self.clock = clock
        self._count = done()
        self._stuck_since: float | None = None

    def __call__(self) -> str | None:
        """None while progressing or idle; a reason once stuck for longer than `limit`."""
        now = self.clock()
        count = self.done()
        if count != self._count or not self.busy():
            self._count = count
            self._stuck_since = None
            return None
        if self._stuck_since is None:
            self._stuck_since = now
        if now - self._stuck_since > self.limit:
            # a stable text: the watchdog logs a reason once, not on every round
            return f"{self.__name__} has had work waiting for over {self.limit:g} s"
        return None


async def watchdog_loop(
    notifier: Notifier,
    interval: float,
    probes: Sequence[Probe] = (),
    *,
    lag_limit: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Task `watchdog`: ping every `interval` s, but only while the daemon makes progress.

    Two kinds of evidence are required before each ping:
    - the event loop itself is responsive: this task's own sleep overshoots by less than
      `lag_limit` (default: `interval`); a loop blocked by a long synchronous call shows up
      here as lag;
    - every probe returns None; a probe returns a reason string when its part of the daemon
      is wedged (a recompute loop that stopped running, for instance).

    When either fails the ping is withheld and the reason logged once, so systemd's
    `WatchdogSec` expires and `Restart=on-failure` restarts the service. A healthy ping
    resumes as soon as the evidence returns.
    """
    limit = interval if lag_limit is None else lag_limit
    withheld: str | None = None
    while True:
        before = clock()
        await asyncio.sleep(interval)
        lag = clock() - before - interval
        reason = f"event loop lag {lag:.3f} s" if lag > limit else None
        if reason is None:
            for probe in probes:
                reason = ask(probe)
                if reason is not None:
                    break
        if reason is None:
            if withheld is not None:
                log.info("watchdog resumed", was=withheld)
                withheld = None
            notifier.watchdog()
        elif reason != withheld:
            log.error("watchdog withheld", reason=reason)
            withheld = reason
