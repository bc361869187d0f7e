"""The executor's files under the state directory: the writer lock, the state file, PAUSE.

What must survive a restart or keep a second daemon off an account lives here (docs/actions.md):
the `flock` writer lock (`<state_dir>/actions/<account>.lock`), the per-account state file
(`<state_dir>/actions/<account>.json`: episode, step, pending client ids, the daily cap), the
PAUSE kill-switch files, and the check that the directory is writable at all (issue 13).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import structlog

from monitor.core.plan import ActionHistory

__all__ = [
    "AccountLock",
    "ActionState",
    "LockHeld",
    "StateFile",
    "kill_switch_file",
    "private_dirs",
    "state_dir_problem",
]

log = structlog.get_logger("monitor.executor")

#: Journal size (bytes) past which a save starts a new one (a state line is ~300 bytes).
_JOURNAL_MAX = 64 * 1024


class LockHeld(Exception):
    """Another process holds the account's writer lock."""


def private_dirs(path: Path) -> None:
    """`mkdir -p` with every directory it creates 0700 (pathlib's `parents=True` gives the
    intermediate ones the umask's mode): the state directory is its owner's alone."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=0o700)


def state_dir_problem(state_dir: Path) -> str | None:
    """Why protective actions could not write their state under `state_dir` (None: they can).

    Tried for real (a directory and a file are created and removed): permission bits do
    not tell about read-only mounts, /proc, or root (issue 13, `check`)."""
    created: list[Path] = []
    target = state_dir / "actions"
    try:
        for parent in reversed([target, *target.parents]):
            if not parent.exists():
                parent.mkdir(mode=0o700)
                created.append(parent)
        with tempfile.TemporaryFile(dir=target):
            pass
    except OSError as exc:
        return f"{state_dir} is not writable ({(exc.strerror or type(exc).__name__).lower()})"
    finally:
        for path in reversed(created):
            with contextlib.suppress(OSError):
                path.rmdir()
    return None


class AccountLock:
    """One writer per account: an exclusive, non-blocking `flock` on a file.

    The kernel drops the lock when the process dies, so a crashed daemon never leaves a stale
    lock behind (unlike a PID file); a second instance simply fails to take it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock if free; True when this process now holds it."""
        if self._fd is not None:
            return True
        private_dirs(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    @property
    def held(self) -> bool:
        """True while this process holds the lock."""
        return self._fd is not None

    def release(self) -> None:
        """Let another instance take over (closing the descriptor drops the flock)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _pause_names(account: str) -> tuple[str, str]:
    """The PAUSE files that stop `account`, global first."""
    return "PAUSE", f"PAUSE.{account}"


def kill_switch_file(state_dir: Path, account: str) -> Path | None:
    """The PAUSE file that stops `account` (global first), or None if there is none."""
    for name in _pause_names(account):
        if (state_dir / name).exists():
            return state_dir / name
    return None


def kill_switch_files(state_dir: Path, accounts: Iterable[str]) -> dict[str, Path | None]:
    """`kill_switch_file` of many accounts from one listing of `state_dir` (a thousand
    accounts looked for every second cost ~1 % of a core as two lookups each); a name the
    listing shows is confirmed as `kill_switch_file` would (a dangling link is no file)."""
    try:
        names = set(os.listdir(state_dir))
    except OSError:
        return {account: kill_switch_file(state_dir, account) for account in accounts}
    found: dict[str, Path | None] = {}
    for account in accounts:
        found[account] = None
        for name in _pause_names(account):
            if name in names and (state_dir / name).exists():
                found[account] = state_dir / name
                break
    return found


@dataclass
class ActionState:
    """What survives a restart, per account (`<state_dir>/actions/<account>.json`)."""

    episode: str | None = None
    step: int = 0
    last_step_at: float | None = None
    day: int = 0
    spent_today: float = 0.0
    halted: str | None = None  # why the episode stopped acting (a venue rejection)
    pending: list[dict[str, Any]] = field(default_factory=list)  # {client_id, symbol, amount}
    seq: int = 0  # bumped at each write: the newer of the state file and its journal wins

    @property
    def history(self) -> ActionHistory:
        return ActionHistory(
            self.last_step_at, self.day, self.spent_today, in_episode=self.episode is not None
        )


class StateFile:
    """`<state_dir>/actions/<account>.json`: the account's `ActionState`, written atomically,
    and its write-ahead journal `<account>.json.wal`.

    Order ids are written BEFORE an order is sent, so a restart asks the venue about them
    instead of sending again (docs/actions.md). That write is on the path from the crossing
    tick to the order, so it appends the state as one line to the journal (`write_ahead`,
    ~10 µs on a descriptor kept open) instead of replacing the file (~0.2-3 ms on ext4, whose
    rename over an existing file starts its writeback: issue 16). `save` rewrites the state
    file (and starts a new journal once it passed `_JOURNAL_MAX`); `load` takes whichever of
    the two was written last (`seq`)."""

    def __init__(self, path: Path, account: str) -> None:
        self.path = path
        self.account = account
        self.journal = path.with_name(path.name + ".wal")
        self._fd: int | None = None

    def load(self) -> ActionState:
        """The state a previous run left, or a fresh one."""
        found = [s for s in (self._read_file(), self._read_journal()) if s is not None]
        if not found:
            return ActionState()
        newest = max(found, key=lambda s: s.seq)  # the state file on a tie: written later
        # A halt is a decision about this run; restarting the daemon is how a person
        # clears it after fixing the cause (the rejection is in the audit trail).
        newest.halted = None
        return newest

    def _parse(self, text: str) -> ActionState | None:
        try:
            return ActionState(**json.loads(text))
        except (ValueError, TypeError) as exc:
            # A corrupt state file must not stop protection; the venue lookups make a
            # lost pending id harmless (a fresh read sees what any order did).
            log.warning("actions.state_unreadable", account=self.account, error=str(exc))
            return None

    def _read_file(self) -> ActionState | None:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        return self._parse(text)

    def _read_journal(self) -> ActionState | None:
        """The journal's last whole line (a torn last line is the one a crash cut off)."""
        try:
            lines = self.journal.read_text().splitlines()
        except FileNotFoundError:
            return None
        for line in reversed(lines):
            state = self._parse(line) if line.strip() else None
            if state is not None:
                return state
        return None

    def save(self, state: ActionState) -> None:
        """Replace the file with `state` (a crash leaves the old or the new one)."""
        state.seq += 1
        private_dirs(self.path.parent)
        tmp = self.path.with_suffix(".tmp")
        # 0600 whatever the umask (outside systemd's UMask=0077): order ids, the episode
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(asdict(state), sort_keys=True))
        os.replace(tmp, self.path)  # atomic: a crash leaves the old or the new file
        # the journal's lines are now older than the file (`seq`): start a new one when big;
        # after the replace, so a crash in between leaves a journal the file outranks
        if self._fd is not None and os.fstat(self._fd).st_size > _JOURNAL_MAX:
            self.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.journal)

    def write_ahead(self, state: ActionState) -> None:
        """Append `state` to the journal before an order it names is sent.

        One `write` of one line: a killed process leaves it whole or not at all (an
        OSError, a full disk say, stops the order: nothing is sent unrecorded)."""
        state.seq += 1
        line = (json.dumps(asdict(state), sort_keys=True) + "\n").encode()
        if os.write(self._journal_fd(), line) != len(line):
            raise OSError(f"short write to {self.journal}")

    def _journal_fd(self) -> int:
        """The journal, opened once; again if it was removed under us (a write to an
        unlinked file would be lost)."""
        if self._fd is not None and os.fstat(self._fd).st_nlink == 0:
            self.close()
        if self._fd is None:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
            try:
                self._fd = os.open(self.journal, flags, 0o600)
            except FileNotFoundError:
                private_dirs(self.path.parent)
                self._fd = os.open(self.journal, flags, 0o600)
        return self._fd

    def close(self) -> None:
        """Close the journal (the executor's end)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
