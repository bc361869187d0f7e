"""Tests for monitor/protect/switches.py: pausing protective actions, per account and globally."""

from __future__ import annotations

import math

from monitor.protect.switches import ActionSwitches


class TestActionSwitches:
    """Pauses with expiry."""

    def test_account_pause_expires(self) -> None:
        """Test that a per-account pause covers only that account and ends at `until`."""
        s = ActionSwitches()
        s.pause("a", until=100.0)
        assert s.is_paused("a", 99.9)
        assert not s.is_paused("a", 100.0)
        assert not s.is_paused("b", 50.0)
        assert s.paused_until("a", 50.0) == 100.0
        assert s.paused_until("a", 150.0) is None

    def test_global_pause_and_resume(self) -> None:
        """Test that a global pause covers every account and resume(None) lifts everything."""
        s = ActionSwitches()
        s.pause(None)
        s.pause("a", until=10.0)
        assert s.is_paused("z", 1e12)
        assert s.paused_until("a", 0.0) == math.inf
        s.resume(None)
        assert not s.is_paused("a", 5.0)
        assert not s.is_paused("z", 5.0)

    def test_on_change(self) -> None:
        """Test that every change is reported to the callback."""
        seen: list[tuple[str | None, float | None]] = []
        s = ActionSwitches(on_change=lambda account, until: seen.append((account, until)))
        s.pause("a", 10.0)
        s.resume("a")
        assert seen == [("a", 10.0), ("a", None)]
