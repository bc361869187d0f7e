"""margin-monitor: watch cross-margined futures accounts and act before a liquidation.

The public API is the pure core on a snapshot: build or load an `AccountSnapshot`, get its
`MarginReport` (`report`), stress it (`with_prices`, `shock_to_liquidation`, `assess`). The
daemon, its sources and sinks are reached through the `margin-monitor` command
(docs/commands.md); their modules are internal and may change between releases
(docs/architecture.md has the map).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("margin-monitor")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

# the pure core only: importing the package never loads asyncio, ccxt or a logger
# (tests/test_core_purity.py)
from monitor.core.margin.report import report
from monitor.core.model import (
    AccountSnapshot,
    Collateral,
    MarginReport,
    Position,
    PositionRisk,
    ShockToLiquidation,
)
from monitor.core.stress import assess, shock_to_liquidation, with_prices
from monitor.core.venue_rules import VenueRules
from monitor.errors import UserError
from monitor.report_json import report_to_dict
from monitor.snapshot import load_snapshot

__all__ = [
    "AccountSnapshot",
    "Collateral",
    "MarginReport",
    "Position",
    "PositionRisk",
    "ShockToLiquidation",
    "UserError",
    "VenueRules",
    "__version__",
    "assess",
    "load_snapshot",
    "report",
    "report_to_dict",
    "shock_to_liquidation",
    "with_prices",
]
