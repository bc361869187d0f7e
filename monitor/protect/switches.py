"""The pause switch for protective actions, shared by the command path and the executor.

A person who gets an alert on the phone may want the daemon to stop placing reduce-only
orders for a while (they are handling it by hand) and resume later. The command path (MQTT
command topic, ntfy buttons) writes here; the actions side reads `is_paused` before planning
or sending. One small object passed around by the daemon keeps the two sides decoupled.

A pause always ends: it has an `until` (seconds since the epoch); `math.inf` is allowed only
when a caller asks for it explicitly. Time is passed in, like everywhere in the core.
"""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["ActionSwitches"]

#: The key for "every account".
ALL = "*"


class ActionSwitches:
    """Per-account and global pauses of protective actions, each with an expiry.

    Args:
        on_change: called with (account or None, until or None) after every change, e.g. to
            audit it or to persist it.
    """

    def __init__(self, on_change: Callable[[str | None, float | None], None] | None = None):
        self._until: dict[str, float] = {}
        self.on_change = on_change

    def pause(self, account: str | None, until: float = math.inf) -> None:
        """Pause actions for `account` (None: every account) until `until`."""
        self._until[account or ALL] = until
        if self.on_change is not None:
            self.on_change(account, until)

    def resume(self, account: str | None) -> None:
        """Resume `account` (None: lift the global pause and every per-account pause)."""
        if account is None:
            self._until.clear()
        else:
            self._until.pop(account, None)
        if self.on_change is not None:
            self.on_change(account, None)

    def is_paused(self, account: str, now: float) -> bool:
        """True while a global or per-account pause covers `now`."""
        return any(now < self._until.get(key, -math.inf) for key in (account, ALL))

    def paused_until(self, account: str, now: float) -> float | None:
        """When the pause covering `account` ends (None: not paused)."""
        ends = [u for key in (account, ALL) if (u := self._until.get(key, -math.inf)) > now]
        return max(ends) if ends else None
