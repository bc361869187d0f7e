"""Durable alert state, the outbox and the audit trail, in one SQLite file (WAL).

Why a database at all: Alertmanager keeps alerts in memory and its users lose resolve
notifications on restart (alertmanager #2370, docs/notifications.md); freqtrade re-warns on
every start (§2.1). Here the alert state and the messages it produced are written in ONE
transaction before any sink sees them, so after a restart

- an unchanged condition is not re-announced (the level is known),
- a condition that arose while the daemon was down is announced (the level was ok),
- a resolve is never lost (the alert was persisted as firing; the next report resolves it),
- undelivered messages are delivered (their outbox rows are still there).

The outbox holds one row per (message, sink) and a row is deleted only when that sink
acknowledged, so "removed when every sink that should get it acknowledged" is simply "no row
left". A write that fails (disk full, read-only state directory) must not kill the daemon:
the store copies itself into memory, keeps working there, and reports `degraded` so the
pipeline can raise an alert about it.

Calls are synchronous: each is one short transaction (tens of microseconds in WAL mode with
synchronous=NORMAL), cheaper than a thread hop, and it keeps the ordering obvious. The one
slow part of a commit, SQLite's automatic WAL checkpoint (7-20 ms with its fsyncs), is moved
to a thread of its own (store_checkpoint.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import operator
import os
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from monitor.core.alert_state import AlertState, RulesState, Silence
from monitor.store_checkpoint import Checkpointer

__all__ = ["AUDIT_RETENTION", "AuditRecord", "OutboxRow", "Store"]

log = structlog.get_logger("monitor.store")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alert_state (
    fingerprint TEXT PRIMARY KEY,
    account TEXT NOT NULL,
    state TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS silence (
    id TEXT PRIMARY KEY,
    until REAL NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL,
    sink TEXT NOT NULL,
    account TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT NOT NULL DEFAULT '',
    UNIQUE (message_id, sink)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (sink, next_attempt_at);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    account TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_account ON audit (account, at);
CREATE TABLE IF NOT EXISTS action_pause (
    account TEXT PRIMARY KEY,
    until REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS seen_request (
    request_id TEXT PRIMARY KEY,
    until REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS seen_request_until ON seen_request (until);
CREATE TABLE IF NOT EXISTS wal_restart (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    at REAL NOT NULL
);
"""

#: Audit rows older than this go (seconds): 90 days of decisions and commands.
AUDIT_RETENTION = 90 * 86400.0
#: ... and never more rows than this, whatever arrives (a flood of anything audited).
AUDIT_MAX_ROWS = 200_000
#: An outbox row this much older than the newest is dropped: a week-old alert helps nobody.
OUTBOX_RETENTION = 7 * 86400.0
#: Most request ids remembered at once; a command past it is refused, not forgotten.
SEEN_MAX_ROWS = 100_000


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One message waiting for one sink."""

    seq: int
    message_id: str
    sink: str
    account: str
    payload: str
    created_at: float
    attempts: int
    next_attempt_at: float
    last_error: str


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One entry of the audit trail (an order decision, a command, a delivery problem)."""

    seq: int
    at: float
    account: str
    kind: str
    payload: dict[str, Any]


def _persisted_part(alert: AlertState) -> AlertState:
    """What must survive a restart: everything but the last raw value, which moves per tick."""
    return dataclasses.replace(alert, value=None)


# AlertState as JSON: every field is a plain value, so no `dataclasses.asdict` deep copy
# (a tenth of a millisecond on the tick -> alert path, docs/benchmarks.md)
_STATE_FIELDS = tuple(f.name for f in dataclasses.fields(AlertState))

# every field of `_persisted_part`, read at C speed: comparing these is how `commit` tells
# that only the value moved without building the part (a replace per report, docs/benchmarks.md)
_persisted_fields = operator.attrgetter(
    *(f.name for f in dataclasses.fields(AlertState) if f.name != "value")
)


class Store:
    """The state directory's `alerts.sqlite3`. Not thread-safe; one per daemon (event loop).

    Args:
        path: the database file, or None for an in-memory store (tests, `--no-state`).
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.degraded: str | None = None
        self._saved: dict[str, AlertState] = {}
        self._seen: dict[str, AlertState] = {}  # the last object compared, per fingerprint
        self._saved_silences: tuple[Silence, ...] = ()
        self._checkpoints: Checkpointer | None = None
        try:
            self._db = self._open(path)
        except (sqlite3.Error, OSError) as exc:
            self._db = self._open(None)
            self._degrade(f"cannot open {path}: {exc}")
        else:
            if path is not None:
                # off the loop: a checkpoint inside a commit held an alert 7-20 ms
                self._checkpoints = Checkpointer(path)

    # --- connection ---------------------------------------------------------------------------

    @staticmethod
    def _open(path: Path | None) -> sqlite3.Connection:
        if path is not None:
            # Owner only (docs/hardening.md): the audit trail and pauses are nobody else's business,
            # and outside systemd (UMask=0077) the default umask would make them 0644.
            # SQLite gives its -wal and -shm files the database file's mode (os_unix.c,
            # findCreateFileMode), so creating this one 0600 covers all three.
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
            with contextlib.suppress(OSError):  # not ours to change: keep what it is
                os.chmod(path, 0o600)
        db = sqlite3.connect(":memory:" if path is None else str(path), isolation_level=None)
        if path is not None:
            db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode is durable across process crashes (only a power loss can
            # lose the last commits), which is the failure a daemon restart is about.
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=2000")
            db.execute("PRAGMA wal_autocheckpoint=0")  # store_checkpoint.py's thread does it
        db.executescript(_SCHEMA)
        return db

    def _degrade(self, reason: str) -> None:
        """Keep going in memory; say so once, loudly."""
        if self.degraded is None:
            self.degraded = reason
            log.error("store.degraded", reason=reason, path=str(self.path))

    def _write(self, statements: Sequence[tuple[str, Sequence[object]]]) -> None:
        """Run statements in one transaction; on a disk error, fall back to memory and retry."""
        try:
            self._transaction(statements)
        except sqlite3.Error as exc:
            if self.path is None or self._is_memory():
                raise
            self._fallback(str(exc))
            self._transaction(statements)
        else:
            if self._checkpoints is not None:
                self._checkpoints.wrote()

    def _transaction(self, statements: Sequence[tuple[str, Sequence[object]]]) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for sql, params in statements:
                db.execute(sql, params)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _is_memory(self) -> bool:
        return any(row[2] == "" for row in self._db.execute("PRAGMA database_list"))

    def _fallback(self, reason: str) -> None:
        """Copy what the file holds into memory (reads still work when writes do not)."""
        memory = sqlite3.connect(":memory:", isolation_level=None)
        try:
            self._db.backup(memory)
        except sqlite3.Error:
            memory.executescript(_SCHEMA)
        self._db.close()
        self._db = memory
        self._stop_checkpoints()
        self._degrade(f"cannot write {self.path}: {reason}; keeping alert state in memory")

    def close(self) -> None:
        """Checkpoint and close."""
        self._stop_checkpoints()
        self._db.close()

    def _stop_checkpoints(self) -> None:
        checkpoints, self._checkpoints = self._checkpoints, None
        if checkpoints is not None:
            checkpoints.close()

    # --- alert state --------------------------------------------------------------------------

    def load_rules_state(self, now: float) -> RulesState:
        """The alert state as last committed; expired silences are dropped."""
        alerts: dict[str, AlertState] = {}
        for fp, body in self._db.execute("SELECT fingerprint, state FROM alert_state"):
            alerts[fp] = AlertState(**json.loads(body))
        silences = tuple(
            Silence(**json.loads(body))
            for (body,) in self._db.execute("SELECT body FROM silence WHERE until > ?", (now,))
        )
        self._saved = {fp: _persisted_part(a) for fp, a in alerts.items()}
        self._seen = {}
        self._saved_silences = silences
        return RulesState(alerts=alerts, silences=silences)

    def commit(
        self,
        state: RulesState,
        messages: Iterable[tuple[str, str, str, Sequence[str]]] = (),
        now: float = 0.0,
        accounts: Iterable[str] | None = None,
    ) -> None:
        """Persist the changed part of `state` and queue `messages`, atomically.

        `messages` are `(message_id, account, payload_json, sinks that should get it)`.
        Only alerts whose persisted part changed are written, so per-tick value updates
        cost nothing. `accounts`: only these accounts' alerts can have changed (a report
        evaluates one account; looking at every account's alerts made each report cost
        O(accounts), a whole core at 100 sim accounts in the soak in docs/benchmarks.md).
        """
        statements: list[tuple[str, Sequence[object]]] = []
        saved, seen = self._saved, self._seen
        if accounts is None:
            candidates: Iterable[tuple[str, AlertState]] = state.alerts.items()
        else:
            candidates = [(fp, state.alerts[fp]) for a in accounts for fp in state.index.get(a, ())]
        for fp, alert in candidates:
            # The rules state is immutable: the same object as last time has not changed.
            if seen.get(fp) is alert:
                continue
            seen[fp] = alert
            before = saved.get(fp)
            if before is not None and _persisted_fields(before) == _persisted_fields(alert):
                continue
            part = saved[fp] = _persisted_part(alert)  # differs from `before`: checked above
            body = json.dumps({name: getattr(part, name) for name in _STATE_FIELDS})
            statements.append(
                (
                    "INSERT INTO alert_state (fingerprint, account, state) VALUES (?, ?, ?) "
                    "ON CONFLICT (fingerprint) DO UPDATE SET state = excluded.state",
                    (fp, alert.account, body),
                )
            )
        if state.silences != self._saved_silences:
            statements.append(("DELETE FROM silence", ()))
            statements.extend(
                (
                    "INSERT INTO silence (id, until, body) VALUES (?, ?, ?)",
                    (s.id, s.until, json.dumps(dataclasses.asdict(s))),
                )
                for s in state.silences
            )
        for message_id, account, payload, sinks in messages:
            statements.extend(
                (
                    "INSERT OR IGNORE INTO outbox (message_id, sink, account, payload, "
                    "created_at, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (message_id, sink, account, payload, now, now),
                )
                for sink in sinks
            )
        if statements:
            self._write(statements)
        self._saved_silences = state.silences

    # --- outbox -------------------------------------------------------------------------------

    def due(self, sink: str, now: float, limit: int = 100) -> list[OutboxRow]:
        """Messages for `sink` whose next attempt is due, oldest first."""
        rows = self._db.execute(
            "SELECT seq, message_id, sink, account, payload, created_at, attempts, "
            "next_attempt_at, last_error FROM outbox WHERE sink = ? AND next_attempt_at <= ? "
            "ORDER BY seq LIMIT ?",
            (sink, now, limit),
        )
        return [OutboxRow(*row) for row in rows]

    def next_due_at(self, sink: str) -> float | None:
        """When the next message for `sink` becomes due (None: nothing queued)."""
        row = self._db.execute(
            "SELECT MIN(next_attempt_at) FROM outbox WHERE sink = ?", (sink,)
        ).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def pending(self, sink: str | None = None) -> list[OutboxRow]:
        """Everything still queued (for one sink, or all), oldest first."""
        rows = self._db.execute(
            "SELECT seq, message_id, sink, account, payload, created_at, attempts, "
            "next_attempt_at, last_error FROM outbox WHERE ? IS NULL OR sink = ? ORDER BY seq",
            (sink, sink),
        )
        return [OutboxRow(*row) for row in rows]

    def delivered(self, sink: str, message_ids: Iterable[str]) -> None:
        """`sink` acknowledged these messages: their rows go."""
        self._write(
            [
                ("DELETE FROM outbox WHERE sink = ? AND message_id = ?", (sink, mid))
                for mid in message_ids
            ]
        )

    def reschedule(self, sink: str, now: float) -> None:
        """Make every queued message of `sink` due now (it just reconnected)."""
        self._write(
            [
                (
                    "UPDATE outbox SET next_attempt_at = ? WHERE sink = ? AND next_attempt_at > ?",
                    (now, sink, now),
                ),
            ]
        )

    def failed(self, sink: str, message_id: str, next_attempt_at: float, error: str) -> None:
        """A delivery attempt failed; count it and schedule the next one."""
        self._write(
            [
                (
                    "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?, "
                    "last_error = ? WHERE sink = ? AND message_id = ?",
                    (next_attempt_at, error[:500], sink, message_id),
                )
            ]
        )

    # --- pauses of protective actions -------------------------------------------------------

    def save_pause(self, account: str | None, until: float | None) -> None:
        """Persist a pause (`until` None: lifted; account None: the global pause or, when
        lifting, every pause), so a restart never silently resumes paused actions."""
        key = account or "*"
        if until is None:
            # resume(None) lifts every pause, resume(account) only that account's
            self._write(
                [("DELETE FROM action_pause WHERE ? IS NULL OR account = ?", (account, key))]
            )
        else:
            self._write(
                [
                    (
                        "INSERT INTO action_pause (account, until) VALUES (?, ?) "
                        "ON CONFLICT (account) DO UPDATE SET until = excluded.until",
                        (key, until),
                    )
                ]
            )

    def load_pauses(self, now: float) -> dict[str | None, float]:
        """Pauses still running at `now` (key None: the global pause)."""
        rows = self._db.execute("SELECT account, until FROM action_pause WHERE until > ?", (now,))
        return {(None if acct == "*" else acct): until for acct, until in rows}

    # --- audit trail --------------------------------------------------------------------------

    def audit(self, account: str, kind: str, payload: Mapping[str, Any], at: float) -> int:
        """Append one decision to the audit trail (order plans, sends, fills, commands).

        Returns the row's `seq` (see `update_audit`)."""
        body = json.dumps(payload, default=str, sort_keys=True)
        self._write(
            [
                (
                    "INSERT INTO audit (at, account, kind, payload) VALUES (?, ?, ?, ?)",
                    (at, account, kind, body),
                ),
            ]
        )
        row = self._db.execute("SELECT last_insert_rowid()").fetchone()
        return int(row[0])

    def update_audit(self, seq: int, payload: Mapping[str, Any]) -> None:
        """Rewrite one audit row's payload (the count of an aggregated refusal row)."""
        body = json.dumps(payload, default=str, sort_keys=True)
        self._write([("UPDATE audit SET payload = ? WHERE seq = ?", (body, seq))])

    # --- replay memory ------------------------------------------------------------------------

    def remember_request(self, request_id: str, until: float, now: float) -> bool:
        """Record a command's id until its envelope expires; False when already recorded.

        In the database, not in memory (docs/hardening.md): a restart must not make a used phone
        token or a captured MQTT command good again. Full memory refuses (False) rather
        than forgets: a flood of valid ids cannot push out the one being replayed.
        """
        db = self._db
        if db.execute(
            "SELECT 1 FROM seen_request WHERE request_id = ? AND until > ?", (request_id, now)
        ).fetchone():
            return False
        count = db.execute("SELECT COUNT(*) FROM seen_request WHERE until > ?", (now,))
        if count.fetchone()[0] >= SEEN_MAX_ROWS:
            return False
        self._write(
            [
                (
                    "INSERT INTO seen_request (request_id, until) VALUES (?, ?) "
                    "ON CONFLICT (request_id) DO UPDATE SET until = excluded.until",
                    (request_id, until),
                )
            ]
        )
        return True

    # --- retention ----------------------------------------------------------------------------

    def prune(self, now: float) -> None:
        """Bound every table (docs/hardening.md): expired ids, silences and pauses, old audit rows,
        outbox rows a week older than the newest. Alert state is one row per configured
        fingerprint and stays."""
        self._write(
            [
                ("DELETE FROM seen_request WHERE until <= ?", (now,)),
                ("DELETE FROM silence WHERE until <= ?", (now,)),
                ("DELETE FROM action_pause WHERE until <= ?", (now,)),
                # relative to the newest row, not `now`: a clock step never wipes the trail
                (
                    "DELETE FROM audit WHERE at < (SELECT MAX(at) FROM audit) - ?",
                    (AUDIT_RETENTION,),
                ),
                (
                    "DELETE FROM audit WHERE seq <= (SELECT MAX(seq) FROM audit) - ?",
                    (AUDIT_MAX_ROWS,),
                ),
                (
                    "DELETE FROM outbox WHERE created_at < "
                    "(SELECT MAX(created_at) FROM outbox) - ?",
                    (OUTBOX_RETENTION,),
                ),
            ]
        )

    def audit_trail(
        self,
        account: str | None = None,
        kind: str | None = None,
        since: float | None = None,
        limit: int = 1000,
    ) -> list[AuditRecord]:
        """Audit entries, oldest first, filtered by account, kind and time."""
        clauses, params = [], []
        for clause, value in (("account = ?", account), ("kind = ?", kind), ("at >= ?", since)):
            if value is not None:
                clauses.append(clause)
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._db.execute(
            f"SELECT seq, at, account, kind, payload FROM audit {where} "  # noqa: S608
            "ORDER BY seq LIMIT ?",
            (*params, limit),
        )
        return [
            AuditRecord(seq, at, acct, knd, json.loads(body)) for seq, at, acct, knd, body in rows
        ]
