"""The store's WAL checkpoints, run by a thread of their own with its own connection.

SQLite checkpoints a WAL database by itself inside the COMMIT that takes the log past 1 000
pages (`wal_autocheckpoint`): that commit copies the log into the database file and fsyncs
both. In the daemon that commit runs on the event loop, usually the one that stores an alert
before it is sent. Issue 16 measured it: 7-20 ms, once per ~100 alert commits, where a commit
otherwise takes ~0.03 ms, i.e. the whole p99 budget of tick -> alert (10 ms) in one call.

So the store turns the automatic checkpoint off and this thread runs a PASSIVE checkpoint
(never blocks the writer, does what it can) when the store has written `EVERY_WRITES` times,
or once a `PERIOD` when it wrote at all. Python's sqlite3 releases the GIL while SQLite works,
so the fsyncs happen beside the loop, not in it. Durability is unchanged: a commit is in the
WAL before it returns (synchronous=NORMAL: safe across a process crash, as before); the
checkpoint only moves committed pages into the main file.

After a pass that moved the whole log (every pass when alerts are rare), the next write
restarts the WAL from its start, and with synchronous=NORMAL SQLite fsyncs the new WAL
header inside that write's COMMIT: 0.5-1.2 ms on the loop, in the commit of the first alert
after a calm spell (or after a start-up: an empty WAL is begun the same way), issue 16. So
this thread begins the next WAL itself: it rewrites the one row of `wal_restart` (read by
nobody; store.py's schema) right after such a pass, and at start. The fsync happens here;
the alert's commit appends to a log already begun.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from pathlib import Path

import structlog

__all__ = ["EVERY_WRITES", "PERIOD", "Checkpointer"]

log = structlog.get_logger("monitor.store")

#: Writes of the store between two checkpoints (an alert commit is ~5-10 WAL pages, so the
#: log stays well under SQLite's own 1 000-page mark).
EVERY_WRITES = 32
#: Longest time (seconds) written pages wait for a checkpoint when few writes come.
PERIOD = 5.0
#: The WAL file is cut back to this size (bytes) after a checkpoint let SQLite restart it.
WAL_SIZE_LIMIT = 4 * 1024 * 1024


class Checkpointer:
    """Checkpoints `path` (a WAL database) in a daemon thread until `close`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        #: completed checkpoint passes (tests; `PRAGMA wal_checkpoint` ran and returned)
        self.passes = 0
        #: WAL restarts this thread made (tests): a write that began a new log
        self.restarts = 0
        self._writes = 0
        self._dirty = False  # written since the last pass
        self._due = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="store.checkpoint", daemon=True)
        self._thread.start()

    def wrote(self) -> None:
        """The store committed a write (called on the loop: a counter and, rarely, a set)."""
        self._dirty = True
        self._writes += 1
        if self._writes >= EVERY_WRITES:
            self._writes = 0
            self._due.set()

    def close(self) -> None:
        """Stop the thread after its current checkpoint (before the store's connection closes)."""
        self._stopping = True
        self._due.set()
        self._thread.join(timeout=10)

    @property
    def running(self) -> bool:
        """True while the thread is alive."""
        return self._thread.is_alive()

    def _run(self) -> None:
        try:
            db = sqlite3.connect(str(self.path), isolation_level=None)
        except sqlite3.Error as exc:
            log.warning("store.checkpoint_unavailable", error=str(exc), path=str(self.path))
            return
        try:
            db.execute("PRAGMA busy_timeout=2000")
            db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
            failed = ""
            # a log left by the last run, or none yet: begin it here (an error that lasts is
            # reported by the passes below)
            with contextlib.suppress(sqlite3.Error):
                self._checkpoint(db)
            while True:
                self._due.wait(PERIOD)
                self._due.clear()
                if self._stopping:
                    return
                if not self._dirty:
                    continue  # an idle store: nothing to move, no fsync
                self._dirty = False
                try:
                    self._checkpoint(db)
                except sqlite3.Error as exc:  # a full disk: the store degrades on its own
                    if str(exc) != failed:  # once per error, not every pass
                        failed = str(exc)
                        log.warning("store.checkpoint_failed", error=failed, path=str(self.path))
                    continue
                failed = ""
                self.passes += 1
        finally:
            db.close()

    def _checkpoint(self, db: sqlite3.Connection) -> None:
        """A PASSIVE checkpoint; when it moved the whole log, begin the next one here."""
        busy, logged, moved = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if busy == 0 and logged == moved:
            # the next write restarts the log and fsyncs its header: let it be this one
            db.execute("INSERT OR REPLACE INTO wal_restart (id, at) VALUES (0, ?)", (time.time(),))
            self.restarts += 1
