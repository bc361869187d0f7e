"""dYdX v4 (`dydx`): only the sign convention of sizes differs (docs/margin-math.md)."""

from __future__ import annotations

from monitor.venues import base


def signed_contracts(contracts: float, side: str | None) -> tuple[float, str | None]:
    """dYdX v4: ccxt's `contracts` is negative for shorts, unlike every other venue
    (docs/margin-math.md; dydx indexer `size` is signed)."""
    if contracts < 0:
        return -contracts, "short"
    return contracts, side


VENUE = base.Venue(
    ("dydx",),
    "docs.dydx.exchange",
    currency="USDC",
    positions=base.PositionQuirks(contracts=signed_contracts),
)
