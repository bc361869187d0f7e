"""`margin-monitor run`: settings, shard, sources and sinks in, the daemon until it stops."""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import signal
import sys
from typing import Any

import structlog

from monitor.config.settings import AccountSettings, load_settings
from monitor.daemon.assembly import assemble
from monitor.daemon.shards import parse_shard, select_shard
from monitor.daemon.supervisor import STOP_GRACE, stop_leftover_tasks
from monitor.errors import UserError
from monitor.ops import logs
from monitor.ops.sdnotify import Notifier
from monitor.sources.sim_book import DEMO_BOOK
from monitor.sources.sim_prices import load_replay

__all__ = ["run_command"]

log = structlog.get_logger("monitor.daemon")


def run_command(args: argparse.Namespace) -> int:
    """`margin-monitor run`: the daemon (no --config: the embedded sim demo)."""
    settings = load_settings(args.config)
    shard = args.shard
    if shard == "auto":  # docs/kubernetes.md: a StatefulSet pod's ordinal (daemon/shards.py)
        from monitor.daemon.shards import auto_shard  # noqa: PLC0415 - shards imports this module

        shard = auto_shard()
        log.info("shard from the pod's ordinal", shard=shard)
    accounts = select_shard(settings.accounts, shard)
    if args.duration is not None and not (math.isfinite(args.duration) and args.duration > 0):
        raise UserError(f"--duration {args.duration}: must be a positive number of seconds")
    replay = None
    if args.replay is not None:
        if not any(a.is_sim for a in accounts):
            raise UserError("--replay drives the sim venue; the configuration has no sim account")
        if not all(a.is_sim for a in accounts):
            raise UserError("--replay runs sim accounts only; remove the live accounts or --replay")
        replay = load_replay(args.replay, [m.symbol for m in DEMO_BOOK.markets])
    tui = not args.no_tui and sys.stdout.isatty()
    logs.configure(secrets=logs.secrets_of(settings))  # docs/service.md: redact every secret
    if not accounts:
        log.warning("no account in this shard; nothing to run", shard=shard)
        return 0
    # docs/kubernetes.md: margin_monitor_shards tells a missing shard
    daemon = assemble(
        settings,
        accounts,
        replay=replay,
        tui=tui,
        shard=None if shard is None else parse_shard(shard),
    )

    def reload_accounts() -> list[AccountSettings]:
        # load_settings registers the reloaded secrets for redaction itself
        return select_shard(load_settings(args.config).accounts, shard)

    received: list[int] = []

    async def main() -> None:
        failed = False
        try:
            await daemon.run(
                notifier=Notifier(),
                reload=reload_accounts if replay is None else None,
                received=received,
                duration=args.duration,
            )
        except BaseException:
            failed = True
            raise
        finally:
            stuck = await stop_leftover_tasks(STOP_GRACE)
            if stuck:
                # asyncio.run would wait for them forever, and systemd's stop with it: the
                # state is already on disk (write-ahead), so the process leaves without them
                log.error("shutdown: tasks did not stop; exiting without them", tasks=stuck)
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(1 if failed else 130 if signal.SIGINT in received else 0)

    try:
        asyncio.run(main())
    except BaseExceptionGroup as group:
        # a UserError raised inside the TaskGroup (a sink that cannot start, say the metrics
        # port is taken) is still one line, not a traceback
        error = _first_user_error(group)
        if error is None:
            raise
        # The loop is closed now; an MQTT client the failed start left open is collected at
        # exit and its `__del__` (paho -> aiomqtt) calls into that loop, printing a traceback
        # after our one line (seen in CI). Nothing is left to deliver: drop just that one.
        sys.unraisablehook = _quiet_closed_loop
        raise error from None
    # Ctrl-C is 128 + SIGINT like any shell tool; SIGTERM (systemd, docker stop) is a clean 0
    return 130 if signal.SIGINT in received else 0


def _quiet_closed_loop(unraisable: Any) -> None:
    """`sys.unraisablehook` after a failed start: a `RuntimeError('Event loop is closed')`
    from a collected client is expected; anything else is reported as usual."""
    exc = unraisable.exc_value
    if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
        return
    sys.__unraisablehook__(unraisable)


def _first_user_error(group: BaseExceptionGroup[BaseException]) -> UserError | None:
    for exc in group.exceptions:
        if isinstance(exc, UserError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _first_user_error(exc)
            if found is not None:
                return found
    return None
