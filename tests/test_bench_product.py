"""Benchmarks measure the product as shipped: no hand-built ccxt, sink, store or settings.

Issue 16: the tick -> order figure came from a bench that built ccxt itself with the rate
limiter off, while the daemon always turns it on. Every script in bench/ must get its
exchange, sinks, store and settings from the factories `margin-monitor run` uses
(bench/product.py: a TOML file -> `load_settings` -> `open_source` / `build_sinks`). This
scans their syntax trees for calls that would build any of those by hand.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"

#: Calling anything from these modules builds by hand what the factories build.
FORBIDDEN = (
    "ccxt",
    "monitor.sink",
    "monitor.channels",
    "monitor.alerts.sink",
    "monitor.protect.sink",
    "monitor.store",
    "monitor.alerts.pipeline",
    "monitor.protect.executor",
    "monitor.sources.exchange",
    "monitor.sources.ccxt_client",
    "monitor.sources.sim",
    "monitor.config.actions",
    "monitor.config.alerts",
    "monitor.config.settings",
    "monitor.daemon.wiring.ConsoleSink",
    "tests.fakes.account",  # FakeAccount / account_for: settings that are not `run`'s
)
#: The scripts one runs (the rest are modules they import or start: product, subscriber).
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if "argparse" in p.read_text())
#: The one way in: the factories `run` uses.
ALLOWED = ("monitor.config.settings.load_settings",)


def _aliases(tree: ast.Module) -> dict[str, str]:
    """Local name -> qualified name, from the module's imports."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                names[alias.asname or alias.name.split(".")[0]] = (
                    alias.name if alias.asname else alias.name.split(".")[0]
                )
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _qualified(func: ast.expr, names: dict[str, str]) -> str | None:
    parts: list[str] = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if not isinstance(func, ast.Name) or func.id not in names:
        return None
    return ".".join([names[func.id], *reversed(parts)])


def hand_built(source: str, filename: str) -> list[str]:
    """Calls in `source` that build ccxt, a sink, a store or settings by hand."""
    tree = ast.parse(source, filename)
    names = _aliases(tree)
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            module = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
            if module and (module == "ccxt" or module.startswith("ccxt.")):
                found.append(f"{filename}:{node.lineno}: imports {module}")
        if not isinstance(node, ast.Call):
            continue
        if isinstance(node.func, ast.Attribute) and node.func.attr == "ccxt_config":
            # a fake's whole ccxt table carries test knobs (the rate limiter off): only
            # its URLs may be used (`urls_config`)
            found.append(f"{filename}:{node.lineno}: a fake's ccxt_config()")
            continue
        name = _qualified(node.func, names)
        if name is None or name in ALLOWED:
            if name in ALLOWED and (
                node.args[1:] or node.keywords or not node.args or _is_none(node.args[0])
            ):
                found.append(f"{filename}:{node.lineno}: {name} not from a file alone")
            continue
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN):
            found.append(f"{filename}:{node.lineno}: {name}(...)")
    return found


def _is_none(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value is None


class TestBenchmarksUseTheProduct:
    """Every bench script builds through the product's factories."""

    @pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("*.py")))
    def test_no_hand_built_exchange_sink_store_or_settings(self, script: str) -> None:
        """Test that a bench script constructs no ccxt instance, sink, store or settings."""
        path = BENCH / script
        assert hand_built(path.read_text(), script) == []

    def test_the_scan_catches_what_issue_16_found(self) -> None:
        """Test that the scan flags hand-built ccxt, sinks, stores, executors and settings."""
        bad = (
            "import ccxt.pro as ccxtpro\n"
            "from monitor.channels.mqtt import MqttSink\n"
            "from monitor.store import Store\n"
            "from monitor.protect import executor\n"
            "from monitor.config.settings import load_settings\n"
            "from monitor.config.actions import ActionsSettings\n"
            "ex = ccxtpro.binanceusdm({'enableRateLimit': False})\n"
            "MqttSink(settings)\n"
            "Store('x')\n"
            "executor.Executor('a')\n"
            "load_settings(None, state_dir='x')\n"
            "ActionsSettings(cooldown=0)\n"
            "config = fake.ccxt_config()\n"
        )
        found = hand_built(bad, "bad.py")
        assert [line.split(": ", 1)[1] for line in found] == [
            "imports ccxt.pro",
            "ccxt.pro.binanceusdm(...)",
            "monitor.channels.mqtt.MqttSink(...)",
            "monitor.store.Store(...)",
            "monitor.protect.executor.Executor(...)",
            "monitor.config.settings.load_settings not from a file alone",
            "monitor.config.actions.ActionsSettings(...)",
            "a fake's ccxt_config()",
        ]


class TestBenchmarksRun:
    """Every bench script still starts: its imports resolve and its arguments parse."""

    @pytest.mark.parametrize("script", [p.name for p in SCRIPTS])
    def test_help_runs(self, script: str) -> None:
        """Test that `python bench/<script> --help` exits 0 (a renamed helper fails it)."""
        result = subprocess.run(
            [sys.executable, str(BENCH / script), "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=BENCH.parent,
            check=False,
        )
        assert result.returncode == 0, result.stderr.strip().splitlines()[-1:]
        assert "usage:" in result.stdout
