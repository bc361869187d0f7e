"""monitor.core stays pure: no event loop, venue library, clock or logger behind any import.

Each module is imported in a fresh interpreter with `builtins.__import__` wrapped, so an
`import time` inside the core is seen even though the interpreter loaded `time` at start-up,
and a forbidden module pulled in through another of our modules (core -> store -> asyncio) is
seen too: the check is on every import statement our code runs while the module loads, plus
every forbidden module that appears in `sys.modules` (a third-party import of `logging`).
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import pytest

import monitor.core

FORBIDDEN = ("asyncio", "ccxt", "logging", "time", "structlog", "datetime")
# importlib.metadata (the package version in monitor/__init__.py) loads datetime itself; an
# import of it from our code is still caught by the import-statement check.
LOADED_BY_STDLIB = ("datetime",)

PROBE = """
import builtins, json, sys
forbidden = set(json.loads(sys.argv[2]))
by_stdlib = set(json.loads(sys.argv[3]))
before = set(sys.modules)
found = set()
real_import = builtins.__import__
def spy(name, globals=None, locals=None, fromlist=(), level=0):
    importer = (globals or {}).get("__name__") or ""
    if importer.startswith("monitor") and level == 0 and name.split(".")[0] in forbidden:
        found.add(f"{importer} imports {name}")
    return real_import(name, globals, locals, fromlist, level)
builtins.__import__ = spy
import importlib
importlib.import_module(sys.argv[1])
builtins.__import__ = real_import
for name in set(sys.modules) - before:
    if name.split(".")[0] in forbidden - by_stdlib:
        found.add(f"{name} was loaded")
print(json.dumps(sorted(found)))
"""


def core_modules() -> list[str]:
    """Every module and package under monitor.core, found on disk (new ones are checked too)."""
    names = ["monitor.core"]
    names += [m.name for m in pkgutil.walk_packages(monitor.core.__path__, "monitor.core.")]
    return sorted(names)


def impurities(module: str) -> list[str]:
    """What importing `module` in a fresh interpreter drags in from FORBIDDEN."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE, module, json.dumps(FORBIDDEN), json.dumps(LOADED_BY_STDLIB)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    found: list[str] = json.loads(result.stdout)
    return found


class TestCorePurity:
    @pytest.mark.parametrize("module", core_modules())
    def test_module_imports_nothing_impure(self, module: str) -> None:
        """Test that importing the core module loads no event loop, ccxt, clock or logger."""
        assert impurities(module) == []

    def test_core_modules_are_found(self) -> None:
        """Test that the walk finds the margin subpackage and the planning module."""
        modules = core_modules()
        assert "monitor.core.margin.report" in modules
        assert "monitor.core.plan" in modules
        assert "monitor.core.model" in modules

    def test_probe_sees_an_impure_module(self) -> None:
        """Test that the probe reports asyncio and the logger for a shell module (the store)."""
        found = impurities("monitor.store")
        assert any("asyncio" in line for line in found)
        assert any("structlog" in line for line in found)

    def test_probe_sees_a_preloaded_clock(self) -> None:
        """Test that `import time` is caught although the interpreter loaded time at start-up."""
        found = impurities("monitor.ops.sdnotify")
        assert "monitor.ops.sdnotify imports time" in found
