"""The `margin-monitor` command: one parser, each subcommand handled by the module that owns it.

Handlers are imported lazily so `margin-monitor report` never pays for ccxt or aiomqtt.
Every handler returns an exit code; a `UserError` becomes one line on stderr and exit 2,
never a traceback (bad input gets a one-line error naming the field and the fix); Ctrl-C is
130. docs/commands.md lists every command's exit codes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from monitor import __version__
from monitor.errors import UserError, fold

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    """All subcommands and their flags, in one place for `--help`."""
    parser = argparse.ArgumentParser(
        prog="margin-monitor",
        description="Watch cross-margined futures accounts; alert and act before a liquidation.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    rep = sub.add_parser("report", help="margin report of a snapshot file")
    rep.add_argument("--snapshot", required=True, metavar="FILE", help="snapshot JSON file")
    rep.add_argument("--json", action="store_true", help="print the JSON report")

    st = sub.add_parser("stress", help="what-if prices and shocks on a snapshot file")
    st.add_argument("--snapshot", required=True, metavar="FILE", help="snapshot JSON file")
    st.add_argument(
        "--shock",
        action="append",
        default=[],
        metavar="PCT",
        help="uniform move of every price, e.g. -10%% (repeatable)",
    )
    st.add_argument(
        "--price",
        action="append",
        default=[],
        metavar="SYMBOL=PRICE",
        help="set one mark price, e.g. BTC/USDT:USDT=52000 (repeatable)",
    )
    st.add_argument("--beta", action="store_true", help="weight shocks by each position's beta")
    st.add_argument("--json", action="store_true", help="print JSON")

    run = sub.add_parser("run", help="run the daemon (no --config: the embedded sim demo)")
    run.add_argument("--config", metavar="FILE", help="TOML configuration file")
    run.add_argument("--replay", metavar="FILE", help="replay a CSV of prices through the sim")
    run.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this long")
    run.add_argument("--no-tui", action="store_true", help="log lines instead of the live view")
    run.add_argument(
        "--shard",
        metavar="K/N|auto",
        help="run only the accounts of shard K of N "
        "(auto: a StatefulSet pod's, docs/kubernetes.md)",
    )

    chk = sub.add_parser(
        "check",
        help="validate a configuration and say what it would run",
        description="Validate a configuration, list its accounts and channels, and (without "
        "--offline) try each live account's keys. Exit codes: 0 all good, 1 the configuration "
        "is valid but a live check failed (keys rejected, venue unreachable), 2 invalid "
        "configuration.",
    )
    chk.add_argument("--config", metavar="FILE", help="TOML configuration file")
    chk.add_argument("--offline", action="store_true", help="do not connect to the exchanges")

    nt = sub.add_parser("notify-test", help="send one test push to every channel and MQTT")
    nt.add_argument("--config", metavar="FILE", help="TOML configuration file")

    snap = sub.add_parser("snapshot", help="write a live account as a snapshot file")
    snap.add_argument("--config", required=True, metavar="FILE", help="TOML configuration file")
    snap.add_argument("--account", required=True, metavar="NAME", help="account name")
    snap.add_argument("-o", "--output", metavar="FILE", help="output file (default: stdout)")
    plan = sub.add_parser("shard-plan", help="which accounts move when N shards become M")
    plan.add_argument("--config", required=True, metavar="FILE", help="TOML configuration file")
    plan.add_argument("--from", dest="before", type=int, required=True, metavar="N")
    plan.add_argument("--to", dest="after", type=int, required=True, metavar="M")
    return parser


def _handler(command: str) -> Handler:
    """The subcommand's handler, imported only now: the module owns the behaviour, this file
    only the words, and `report` never pays for ccxt or aiomqtt."""
    match command:
        case "report":
            from monitor.cli.report import report_command  # noqa: PLC0415

            return report_command
        case "stress":
            from monitor.cli.report import stress_command  # noqa: PLC0415

            return stress_command
        case "run":
            from monitor.cli.run import run_command  # noqa: PLC0415

            return run_command
        case "check":
            from monitor.cli.check import check_command  # noqa: PLC0415

            return check_command
        case "snapshot":
            from monitor.cli.live import snapshot_command  # noqa: PLC0415

            return snapshot_command
        case "shard-plan":
            from monitor.daemon.shards import shard_plan_command  # noqa: PLC0415

            return shard_plan_command
        case "notify-test":
            from monitor.cli.notify_test import notify_test_command  # noqa: PLC0415

            return notify_test_command
    raise AssertionError(f"no handler for {command!r}")  # argparse only accepts the above


def _glue_negative_values(argv: Sequence[str]) -> list[str]:
    """`--shock -10%` is what people type; argparse would read `-10%` as an option."""
    out: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg == "--shock":
            value = next(it, None)
            out.append(arg if value is None else f"--shock={value}")
        else:
            out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = build_parser()
    argv = _glue_negative_values(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["run", *argv])
    try:
        code = _handler(args.command)(args)
        logs = sys.modules.get("monitor.ops.logs")
        if logs is not None and logs.OUTPUT_CLOSED.is_set():
            raise BrokenPipeError  # the daemon stopped because its log reader went away
        return code
    except BrokenPipeError:
        # `... | head`: the reader left; say so once instead of a traceback (docs/hardening.md)
        from monitor.ops.logs import discard_stdout  # noqa: PLC0415 - pydantic: only here

        discard_stdout()  # the interpreter's final flush must not raise again
        print("margin-monitor: output closed before the end (broken pipe)", file=sys.stderr)
        return 2
    except UserError as exc:
        # one line, and never a secret a venue or a file echoed into it (docs/hardening.md)
        from monitor.ops.logs import redact  # noqa: PLC0415 - pydantic: only on an error

        print(f"margin-monitor: {fold(redact(str(exc)))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
