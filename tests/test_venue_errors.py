"""Tests for monitor/venues/errors.py: ccxt's error vocabulary without importing ccxt."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import ccxt

from monitor.venues import errors as venue_errors
from monitor.venues.errors import catching

ROOT = Path(__file__).resolve().parent.parent


class TestCatching:
    def test_mirrors_ccxt_hierarchy(self) -> None:
        """Test that each look-alike sits under the same parents as ccxt's class of that name."""
        for name in venue_errors.__all__:
            if name == "catching":
                continue
            ours, theirs = getattr(venue_errors, name), getattr(ccxt, name)
            for parent in (
                "BaseError",
                "ExchangeError",
                "BadRequest",
                "InvalidOrder",
                "NetworkError",
            ):
                assert issubclass(ours, getattr(venue_errors, parent)) == issubclass(
                    theirs, getattr(ccxt, parent)
                ), (name, parent)

    def test_catches_both_sides_once_ccxt_is_loaded(self) -> None:
        """Test that an except clause on catching() takes ccxt's error and the sim's alike."""
        caught = []
        for exc in (ccxt.OrderNotFound("venue"), venue_errors.OrderNotFound("sim")):
            try:
                raise exc
            except catching("InvalidOrder") as seen:
                caught.append(seen)
        assert [type(e).__module__ for e in caught] == ["ccxt.base.errors", "monitor.venues.errors"]

    def test_other_families_pass_through(self) -> None:
        """Test that a transport error is not caught as a rejection."""
        try:
            try:
                raise ccxt.RequestTimeout("slow")
            except catching("InvalidOrder", "InsufficientFunds"):
                raise AssertionError("a timeout was taken for a rejection") from None
        except ccxt.RequestTimeout:
            pass


class TestSimOnlyDaemon:
    def test_never_imports_ccxt(self, tmp_path: Path) -> None:
        """Test that a sim-only daemon runs, orders included, without loading ccxt (RSS)."""
        config = tmp_path / "sim.toml"
        config.write_text(
            f'state_dir = "{tmp_path / "state"}"\n'
            '[[accounts]]\nname = "demo"\nexchange = "sim"\n'
            '[accounts.sim]\nspeed = 40\nscenario = "selloff"\n'
            "[actions]\nsimulated = true\ncooldown = 0.1\n"
        )
        probe = (
            "import sys, runpy\n"
            "sys.argv = ['margin-monitor', 'run', '--config', sys.argv[1], '--no-tui',"
            " '--duration', '4']\n"
            "from monitor.cli.app import main\n"
            "code = main(sys.argv[1:])\n"
            "print('CCXT_LOADED' if 'ccxt' in sys.modules else 'CCXT_ABSENT')\n"
            "sys.exit(code)\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", probe, str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert "CCXT_ABSENT" in done.stdout, done.stdout[-500:]
        logs = done.stdout + done.stderr
        assert "actions.filled" in logs, "the sell-off filled no order at the sim: path not run"
