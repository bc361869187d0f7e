"""`margin-monitor check`: validate the configuration and say what `run` would do."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from monitor.config.settings import AccountSettings, Settings, load_settings
from monitor.daemon.wiring import build_sinks
from monitor.errors import UserError
from monitor.ops import logs

__all__ = ["actions_mode", "check_command"]


def check_command(args: argparse.Namespace) -> int:
    """`margin-monitor check [--config FILE] [--offline]`: validate, say what would run."""
    settings = load_settings(args.config)
    out = sys.stdout
    origin = "embedded default (the sim demo)" if args.config is None else str(Path(args.config))
    out.write(f"configuration: {origin}: ok\n")
    out.write(f"state directory: {settings.state_dir}\n")
    a = settings.alerts
    shock_levels = (
        ("warning", a.shock_warning),
        ("critical", a.shock_critical),
        ("emergency", a.shock_emergency),
    )
    shocks = ", ".join(f"{name} {v * 100:g} %" for name, v in shock_levels if v is not None)
    out.write(
        f"alert levels on margin ratio: warning {a.warning:g}, critical {a.critical:g}, "
        f"emergency {a.emergency:g} (hysteresis {a.band:g}); on shock to liquidation: "
        f"{shocks or 'off'}\n"
    )
    build_sinks(settings, tui=False)  # what cannot be built fails here, not at `run`
    from monitor.cli.notify_test import check_lines  # noqa: PLC0415 - Apprise only if configured

    out.writelines(f"{line}\n" for line in check_lines(settings))
    out.write(f"accounts ({len(settings.accounts)}):\n")
    for account in settings.accounts:
        out.write(f"  - {_describe(account)}; actions: {actions_mode(settings, account)}\n")
    failures = 0
    live = [acct for acct in settings.accounts if not acct.is_sim]
    if live and not args.offline:
        # the live check: connect, load markets, read balances, say what the keys can do
        from monitor.cli.live import check_account  # noqa: PLC0415 - heavy import

        for account in live:
            try:
                line = asyncio.run(check_account(account))
            except UserError as exc:
                failures += 1
                line = f"{account.name}: FAILED: {exc}"
            out.write(f"  check {logs.redact(line)}\n")
    return 1 if failures else 0


def actions_mode(settings: Settings, account: AccountSettings) -> str:
    """What protective actions do for `account`: off, paused, simulated, live or dry-run.

    The same decision `sinks/actions.build_actions_sink` and the executor's switches make,
    said before anything runs (a PAUSE command over MQTT lives in the state store and only
    shows in the daemon's `status` reply).
    """
    actions = settings.actions
    if not actions.covers(account.name):
        return "off (not in actions.accounts)"
    from monitor.protect.state import kill_switch_file, state_dir_problem  # noqa: PLC0415

    problem = state_dir_problem(settings.state_dir)
    if problem is not None:
        return f"DISABLED (protection_disabled: {problem}; no order can be sent)"
    if actions.paused:
        return "paused (actions.paused = true: plans and audits, sends nothing)"

    pause_file = kill_switch_file(settings.state_dir, account.name)
    if pause_file is not None:
        return f"paused ({pause_file} exists: plans and audits, sends nothing)"
    if account.is_sim and actions.simulated:
        return "simulated (reduce-only orders on the sim venue, fake money)"
    if actions.enabled:
        return "live (reduce-only orders are sent to the venue)"
    return "dry-run (actions.enabled = false: plans and audits 'would have', sends nothing)"


def _describe(account: AccountSettings) -> str:
    """One line about an account; credentials only as set / not set, never their value."""
    if account.is_sim and account.sim is not None:
        s = account.sim
        return (
            f"{account.name}: sim (scenario {s.scenario}, seed {s.seed}, "
            f"{s.tick_rate:g} ticks/s, speed x{s.speed:g})"
        )
    keys = ", ".join(
        f"{field} {'set' if value is not None else 'not set'}"
        for field, value in account.credentials().items()
    )
    mode = "sandbox" if account.sandbox else "production"
    return (
        f"{account.name}: {account.exchange} ({mode}; poll every {account.poll_interval:g} s, "
        f"stale after {account.stale_after:g} s; {keys})"
    )
