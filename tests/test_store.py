"""Tests for monitor/store.py: durable alert state, outbox and audit trail in a real SQLite file."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

import pytest

from monitor.alerts.message import AlertMessage
from monitor.alerts.pipeline import AlertPipeline
from monitor.core.alert_config import AlertConfig
from monitor.core.alert_state import RulesState, Silence
from monitor.core.rules import add_silence
from monitor.store import Store
from monitor.store_checkpoint import EVERY_WRITES
from tests.reports import ratio_report as report

CONFIG = AlertConfig(repeat_every=0, shock_warning=None, shock_critical=None, shock_emergency=None)


class RecordingSink:
    """An in-process sink that records what it was given (the pipeline is under test)."""

    def __init__(self, name: str = "rec") -> None:
        self.name = name
        self.got: list[AlertMessage] = []

    def wants(self, message: AlertMessage) -> bool:
        """Test helper: takes everything."""
        return True

    async def deliver(self, messages: Sequence[AlertMessage]) -> Collection[str]:
        """Test helper: records and acknowledges."""
        self.got.extend(messages)
        return {m.id for m in messages}


def pipeline(path: Path, clock: list[float]) -> AlertPipeline:
    """A pipeline on the SQLite file at `path` whose clock reads clock[0]."""
    return AlertPipeline(Store(path), CONFIG, [RecordingSink()], clock=lambda: clock[0])


def queued_kinds(store: Store) -> list[tuple[str, str]]:
    """(kind, level) of every message still in the outbox."""
    return [(m.kind, m.level) for m in (AlertMessage.from_json(r.payload) for r in store.pending())]


class TestRestart:
    """The four restart cases of issue 4, each with a real SQLite file and a fresh Store."""

    def test_unchanged_condition_not_reannounced(self, tmp_path: Path) -> None:
        """Test that a condition firing before a restart is not announced again after it."""
        db, clock = tmp_path / "alerts.sqlite3", [100.0]
        first = pipeline(db, clock)
        first.on_report(report(0.6))
        first.store.delivered("rec", [r.message_id for r in first.store.pending()])
        first.store.close()
        clock[0] = 200.0
        second = pipeline(db, clock)
        assert second.on_report(report(0.62)) == ()
        assert second.store.pending() == []
        assert second.level("acct") == "warning"

    def test_condition_arising_while_down_is_announced(self, tmp_path: Path) -> None:
        """Test that a condition first seen after a restart fires."""
        db, clock = tmp_path / "alerts.sqlite3", [100.0]
        first = pipeline(db, clock)
        first.on_report(report(0.2))
        first.store.close()
        second = pipeline(db, clock)
        second.on_report(report(0.75))
        assert queued_kinds(second.store) == [("firing", "critical")]

    def test_resolve_never_lost(self, tmp_path: Path) -> None:
        """Test that a condition that cleared while down is resolved after the restart."""
        db, clock = tmp_path / "alerts.sqlite3", [100.0]
        first = pipeline(db, clock)
        first.on_report(report(0.9))
        episode = first.state.alert("acct", "margin_ratio").episode
        first.store.delivered("rec", [r.message_id for r in first.store.pending()])
        first.store.close()
        clock[0] = 400.0
        second = pipeline(db, clock)
        events = second.on_report(report(0.1))
        assert [(e.kind, e.episode, e.duration, e.worst_value) for e in events] == [
            ("resolved", episode, 300.0, 0.9)
        ]
        assert queued_kinds(second.store) == [("resolved", "ok")]

    async def test_undelivered_alerts_are_delivered(self, tmp_path: Path) -> None:
        """Test that messages queued before a crash are delivered by the next process."""
        db, clock = tmp_path / "alerts.sqlite3", [100.0]
        first = pipeline(db, clock)
        first.on_report(report(0.6))
        first.on_report(report(0.9))
        ids = [r.message_id for r in first.store.pending()]
        first.store.close()  # "crash" before any sink ran
        second = pipeline(db, clock)
        sink = second.sinks[0]
        assert isinstance(sink, RecordingSink)
        task = asyncio.create_task(second.deliver_forever(sink))
        for _ in range(100):
            if second.store.pending() == []:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        assert [m.id for m in sink.got] == ids
        assert second.store.pending() == []

    def test_silences_and_ack_survive_restart(self, tmp_path: Path) -> None:
        """Test that silences and acknowledgements are persisted."""
        db = tmp_path / "alerts.sqlite3"
        store = Store(db)
        state = add_silence(RulesState(), Silence(id="s", until=500.0, account="acct"))
        store.commit(state)
        store.close()
        assert Store(db).load_rules_state(100.0).silences == state.silences
        assert Store(db).load_rules_state(600.0).silences == ()

    def test_many_accounts_each_persisted(self, tmp_path: Path) -> None:
        """Test that with reports of many accounts interleaved (each committing only its own
        alerts) the file holds every account's latest persisted state after a restart."""
        db, clock = tmp_path / "alerts.sqlite3", [100.0]
        first = pipeline(db, clock)
        for step, ratio in enumerate((0.2, 0.6, 0.75, 0.9, 0.55)):
            for i in range(12):
                clock[0] = 100.0 + step * 10 + i
                first.on_report(report(ratio if i % 3 else 0.1, account=f"acct{i}"))
        expected = dict(first.state.alerts)
        first.store.close()
        second = pipeline(db, clock)
        for fp, alert in expected.items():
            stored = second.state.alerts[fp]
            assert (stored.level, stored.episode, stored.worst_value) == (
                alert.level,
                alert.episode,
                alert.worst_value,
            ), fp
        assert {second.level(f"acct{i}") for i in range(12)} == {"ok", "warning"}


class TestOutbox:
    """Rows per sink; removed only on acknowledgement."""

    def test_rows_per_sink_and_ack(self, tmp_path: Path) -> None:
        """Test that a message stays queued until every sink that should get it acknowledged."""
        store = Store(tmp_path / "a.db")
        store.commit(RulesState(), [("m1", "acct", "{}", ["mqtt", "phone"])], now=1.0)
        assert [(r.sink, r.message_id) for r in store.pending()] == [
            ("mqtt", "m1"),
            ("phone", "m1"),
        ]
        store.delivered("mqtt", ["m1"])
        assert [r.sink for r in store.pending()] == ["phone"]
        store.delivered("phone", ["m1"])
        assert store.pending() == []

    def test_failed_schedules_retry(self, tmp_path: Path) -> None:
        """Test that a failed attempt is counted and not due before its next attempt."""
        store = Store(tmp_path / "a.db")
        store.commit(RulesState(), [("m1", "acct", "{}", ["mqtt"])], now=1.0)
        store.failed("mqtt", "m1", next_attempt_at=10.0, error="broker down")
        assert store.due("mqtt", 5.0) == []
        (row,) = store.due("mqtt", 10.0)
        assert (row.attempts, row.last_error) == (1, "broker down")
        assert store.next_due_at("mqtt") == 10.0

    def test_same_message_queued_once(self, tmp_path: Path) -> None:
        """Test that queuing the same message id twice keeps one row per sink."""
        store = Store(tmp_path / "a.db")
        for _ in range(2):
            store.commit(RulesState(), [("m1", "acct", "{}", ["mqtt"])], now=1.0)
        assert len(store.pending()) == 1


class TestPauses:
    """Paused protective actions survive a restart."""

    def test_pause_survives_restart(self, tmp_path: Path) -> None:
        """Test that a pause set through the pipeline's switches is back after a restart."""
        db, clock = tmp_path / "alerts.sqlite3", [100.0]
        first = pipeline(db, clock)
        first.switches.pause("acct", 500.0)
        first.switches.pause(None, 150.0)
        first.store.close()
        second = pipeline(db, clock)
        assert second.switches.is_paused("acct", 400.0)
        assert second.switches.is_paused("other", 120.0)
        second.switches.resume("acct")
        second.store.close()
        clock[0] = 200.0
        third = pipeline(db, clock)
        assert not third.switches.is_paused("acct", 201.0)
        assert third.store.load_pauses(200.0) == {}


class TestAudit:
    """The audit trail engineer D writes order decisions to."""

    def test_audit_and_query(self, tmp_path: Path) -> None:
        """Test that audit entries are stored in order and filtered by account, kind and time."""
        store = Store(tmp_path / "a.db")
        store.audit("a", "order_planned", {"qty": 0.1}, at=1.0)
        store.audit("b", "order_planned", {"qty": 0.2}, at=2.0)
        store.audit("a", "order_sent", {"id": "x"}, at=3.0)
        store.close()
        store = Store(tmp_path / "a.db")
        assert [r.payload for r in store.audit_trail(account="a")] == [{"qty": 0.1}, {"id": "x"}]
        assert [r.account for r in store.audit_trail(kind="order_planned")] == ["a", "b"]
        assert [r.kind for r in store.audit_trail(since=2.0)] == ["order_planned", "order_sent"]


class TestDegraded:
    """A state directory that cannot be written must not stop the daemon."""

    def test_disk_full_keeps_going_in_memory(self, tmp_path: Path) -> None:
        """Test that SQLITE_FULL switches the store to memory, keeps state and raises an alert."""
        db, clock = tmp_path / "alerts.sqlite3", [100.0]
        pipe = pipeline(db, clock)
        pipe.on_report(report(0.6))
        # Cap the file at its current size: the next write fails with "database or disk is full".
        raw = pipe.store._db
        pages = raw.execute("PRAGMA page_count").fetchone()[0]
        raw.execute(f"PRAGMA max_page_count = {pages}")
        big = "x" * 200_000
        pipe.store.audit("acct", "note", {"blob": big}, at=1.0)
        assert pipe.store.degraded is not None
        assert "full" in pipe.store.degraded
        clock[0] = 101.0
        pipe.on_report(report(0.9))
        kinds = [
            (m.rule, m.kind, m.level)
            for m in (AlertMessage.from_json(r.payload) for r in pipe.store.pending())
        ]
        assert ("margin_ratio", "firing", "warning") in kinds
        assert ("margin_ratio", "escalated", "emergency") in kinds
        assert ("state_store", "firing", "critical") in kinds

    def test_read_only_database(self, tmp_path: Path) -> None:
        """Test that a database that refuses writes degrades instead of raising."""
        db = tmp_path / "alerts.sqlite3"
        store = Store(db)
        store._db.execute("PRAGMA query_only = 1")
        store.commit(RulesState(), [("m1", "acct", "{}", ["mqtt"])], now=1.0)
        assert store.degraded is not None
        assert "readonly" in store.degraded.replace("-", "")
        assert [r.message_id for r in store.pending()] == ["m1"]

    def test_unopenable_path(self, tmp_path: Path) -> None:
        """Test that a state path that cannot be created degrades to memory at start."""
        blocker = tmp_path / "file"
        blocker.write_text("not a directory")
        store = Store(blocker / "sub" / "alerts.sqlite3")
        assert store.degraded is not None
        store.commit(RulesState(), [("m1", "acct", "{}", ["mqtt"])], now=1.0)
        assert len(store.pending()) == 1

    def test_memory_store_raises_real_errors(self) -> None:
        """Test that an in-memory store does not hide programming errors."""
        store = Store(None)
        with pytest.raises(sqlite3.Error):
            store._write([("INSERT INTO nowhere VALUES (1)", ())])


class TestCheckpoints:
    """The WAL is checkpointed by the store's own thread, never inside a commit (issue 16)."""

    def test_commits_leave_the_checkpoint_to_the_thread(self, tmp_path: Path) -> None:
        """Test that commits never checkpoint and the thread moves their pages into the file."""
        db = tmp_path / "alerts.sqlite3"
        store = Store(db)
        assert store._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        checkpoints = store._checkpoints
        assert checkpoints is not None
        body = "x" * 4000  # a page per row at least

        def commit(first: int, count: int) -> None:
            for n in range(first, first + count):
                store.commit(RulesState(), [(f"m{n}", "acct", body, ["mqtt"])], now=float(n))

        commit(0, EVERY_WRITES)
        deadline = time.monotonic() + 10
        while checkpoints.passes < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert checkpoints.passes >= 1
        store._stop_checkpoints()  # from here on only a commit could checkpoint
        in_file = _rows_in_main_file(db)
        assert in_file == EVERY_WRITES  # what the thread moved into the database file
        commit(EVERY_WRITES, 1200)  # past SQLite's own 1 000-page checkpoint mark
        assert _rows_in_main_file(db) == in_file  # no commit checkpointed
        assert len(store.pending()) == EVERY_WRITES + 1200  # and every row is committed
        store.close()

    def test_the_thread_begins_the_wal_after_a_pass(self, tmp_path: Path) -> None:
        """Test that the commit after a checkpoint pass appends to a WAL the thread restarted."""
        db = tmp_path / "alerts.sqlite3"
        store = Store(db)
        checkpoints = store._checkpoints
        assert checkpoints is not None
        _until(lambda: checkpoints.restarts >= 1)  # the one at start
        store.commit(RulesState(), [("m1", "acct", "{}", ["mqtt"])], now=1.0)
        before = _wal_header(db)
        checkpoints._due.set()  # the pass `EVERY_WRITES` or `PERIOD` would start
        _until(lambda: checkpoints.passes >= 1 and checkpoints.restarts >= 2)
        restarted = _wal_header(db)
        assert restarted != before  # a new log (salt, checkpoint sequence) ...
        store.commit(RulesState(), [("m2", "acct", "{}", ["mqtt"])], now=2.0)
        assert _wal_header(db) == restarted  # ... that the commit only appended to
        assert [row.message_id for row in store.pending()] == ["m1", "m2"]
        store.close()

    def test_the_thread_begins_the_first_wal(self, tmp_path: Path) -> None:
        """Test that the first commit after opening appends to a WAL the thread began."""
        db = tmp_path / "alerts.sqlite3"
        store = Store(db)
        checkpoints = store._checkpoints
        assert checkpoints is not None
        _until(lambda: checkpoints.restarts >= 1)
        begun = _wal_header(db)
        store.commit(RulesState(), [("m1", "acct", "{}", ["mqtt"])], now=1.0)
        assert _wal_header(db) == begun
        store.close()

    def test_close_stops_the_thread(self, tmp_path: Path) -> None:
        """Test that closing the store ends its checkpoint thread."""
        store = Store(tmp_path / "alerts.sqlite3")
        checkpoints = store._checkpoints
        assert checkpoints is not None
        assert checkpoints.running
        store.close()
        assert not checkpoints.running

    def test_memory_store_has_no_thread(self) -> None:
        """Test that an in-memory store (tests, --no-state) starts no checkpoint thread."""
        assert Store(None)._checkpoints is None


def _until(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def _wal_header(db: Path) -> bytes:
    """The WAL header (magic .. checkpoint sequence, salts, checksums): new on each restart."""
    return (db.parent / f"{db.name}-wal").read_bytes()[:32]


def _rows_in_main_file(db: Path) -> int:
    """Outbox rows in the database file alone (immutable: SQLite ignores the WAL)."""
    main_file = sqlite3.connect(f"file:{db}?immutable=1", uri=True)
    try:
        return int(main_file.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
    finally:
        main_file.close()
