"""Shards on an orchestrator: `--shard auto` from a pod's ordinal, and `shard-plan` for N -> M.

A Kubernetes StatefulSet gives each replica a stable identity: pod `<name>-<k>` (k = 0..N-1)
with its own volume, and never two pods with one identity while the API server can reach
the node (docs/kubernetes.md). That is "one owner per shard" without a coordinator, so
`--shard auto` maps ordinal k to shard k+1 of N (shards are 1-based, `daemon.parse_shard`).
The ordinal comes from the downward API (`MARGIN_MONITOR_SHARD_INDEX`, from the pod label
`apps.kubernetes.io/pod-index`) or else the hostname, which a StatefulSet sets to the pod
name; N comes from `MARGIN_MONITOR_SHARDS`, which must equal the StatefulSet's replicas:
nothing in a pod can read the replicas without API access, which the daemon does not get.

Changing N re-hashes every account (`daemon.shard_of`), so `shard-plan` lists, before the
change, which accounts move to which pod; the plan is a pure function over names.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import socket
import sys
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from monitor.config.settings import AccountSettings
from monitor.errors import UserError

__all__ = ["INDEX_ENV", "SHARDS_ENV", "Move", "auto_shard", "plan", "shard_plan_command"]

#: The pod's ordinal (0-based), set by the downward API in deploy/kubernetes.
INDEX_ENV = "MARGIN_MONITOR_SHARD_INDEX"
#: The number of shards, equal to the StatefulSet's replicas.
SHARDS_ENV = "MARGIN_MONITOR_SHARDS"

_ORDINAL = re.compile(r"^.+-(\d+)$")


def auto_shard(environ: Mapping[str, str] | None = None, hostname: str | None = None) -> str:
    """`K/N` for `--shard auto`: K = ordinal + 1 from the env var or the hostname `<name>-<k>`.

    Every way this can be wrong is one line naming the variable and the fix: a pod that
    guessed its shard would leave another shard's accounts unwatched without a word.
    """
    env = os.environ if environ is None else environ
    host = socket.gethostname() if hostname is None else hostname
    count = env.get(SHARDS_ENV, "").strip()
    if not count.isdigit() or int(count) < 1:
        got = f"is {count!r}" if count else "is not set"
        raise UserError(
            f"--shard auto: {SHARDS_ENV} {got}; set it to the number of shards (the "
            f"StatefulSet's replicas), or use --shard K/N"
        )
    n = int(count)
    index = env.get(INDEX_ENV, "").strip()
    if index:
        if not index.isdigit():
            raise UserError(
                f"--shard auto: {INDEX_ENV} is {index!r}; expected the pod's ordinal 0..{n - 1}"
            )
        ordinal, origin = int(index), INDEX_ENV
    else:
        match = _ORDINAL.match(host)
        if match is None:
            raise UserError(
                f"--shard auto: no pod ordinal: {INDEX_ENV} is not set and the hostname "
                f"{host!r} does not end in -<number> (a StatefulSet pod is <name>-<k>); "
                f"set {INDEX_ENV}, or use --shard K/N"
            )
        ordinal, origin = int(match.group(1)), f"hostname {host!r}"
    if ordinal >= n:
        raise UserError(
            f"--shard auto: ordinal {ordinal} (from {origin}) is outside {n} shards "
            f"({SHARDS_ENV}={n}); set {SHARDS_ENV} to the StatefulSet's replicas"
        )
    return f"{ordinal + 1}/{n}"


@dataclass(frozen=True, slots=True)
class Move:
    """Where one account runs with `before` shards and with `after` (1-based shards)."""

    account: str
    source: int
    target: int

    @property
    def moves(self) -> bool:
        """True when another pod (another state volume) takes the account over."""
        return self.source != self.target


def plan(accounts: Iterable[str], before: int, after: int) -> list[Move]:
    """Every account once, with its shard under `before` and `after` shards, by target."""
    moves = [Move(a, shard_of(a, before), shard_of(a, after)) for a in accounts]
    return sorted(moves, key=lambda m: (m.target, m.source, m.account))


def account_names(path: str) -> list[str]:
    """The account names of a config file, without its credentials.

    The plan is made where the secrets usually are not (a laptop, CI), and the split depends
    on the names alone, so this reads the TOML instead of `load_settings`, which would
    insist on every live account's keys.
    """
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise UserError(f"{path}: {reason}; pass the TOML file the pods read to --config") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{Path(path).name}: invalid TOML: {exc}") from None
    tables = data.get("accounts")
    tables = tables if isinstance(tables, list) else []
    names = [t["name"] for t in tables if isinstance(t, dict) and isinstance(t.get("name"), str)]
    if not names or len(names) != len(tables) or not all(names):
        raise UserError(
            f"{Path(path).name}: accounts: expected [[accounts]] tables, each with a name"
        )
    if len(set(names)) != len(names):
        raise UserError(f"{Path(path).name}: accounts: a name is used twice; names must be unique")
    return names


def shard_plan_command(args: argparse.Namespace) -> int:
    """`margin-monitor shard-plan --config F --from N --to M`: who moves where."""
    for flag, value in (("--from", args.before), ("--to", args.after)):
        if value < 1:
            raise UserError(f"{flag} {value}: the number of shards must be 1 or more")
    names = account_names(args.config)
    rows = plan(names, args.before, args.after)
    moving = sum(m.moves for m in rows)
    out = sys.stdout
    out.write(
        f"shard plan {args.before} -> {args.after}: {len(rows)} accounts, {moving} move "
        f"(shard K runs on pod ordinal K-1)\n"
    )
    width = max(len(n) for n in names)
    for m in rows:
        out.write(
            f"  {'move' if m.moves else 'stay'}  {m.account:<{width}}  "
            f"{m.source}/{args.before} -> {m.target}/{args.after}\n"
        )
    return 0


def parse_shard(text: str) -> tuple[int, int]:
    """`K/N` (1 ≤ K ≤ N) from `--shard`; anything else is a one-line UserError."""
    k_text, sep, n_text = text.partition("/")
    try:
        k, n = int(k_text), int(n_text)
    except ValueError:
        k = n = 0
    if not sep or not 1 <= k <= n:
        raise UserError(f"--shard {text!r}: expected K/N with 1 <= K <= N, e.g. --shard 1/3")
    return k, n


def shard_of(name: str, n: int) -> int:
    """Stable 1-based shard of an account name: the same in every process and release."""
    return int(hashlib.sha256(name.encode()).hexdigest(), 16) % n + 1


def select_shard(accounts: Sequence[AccountSettings], shard: str | None) -> list[AccountSettings]:
    """The accounts this process runs under `--shard K/N` (all of them without it)."""
    if shard is None:
        return list(accounts)
    k, n = parse_shard(shard)
    return [a for a in accounts if shard_of(a.name, n) == k]
