"""Hypothesis strategies for accounts: realistic tier tables, sides, sizes and prices."""

from __future__ import annotations

import math

from hypothesis import strategies as st

from monitor.core.model import AccountSnapshot, Collateral, Position, Tier

SYMBOLS = ("BTC/USDT:USDT", "ETH/USDT:USDT", "SOL/USDT:USDT", "XRP/USDT:USDT")


@st.composite
def tier_tables(draw: st.DrawFn) -> tuple[Tier, ...]:
    """Cumulative tiers, the venues' way: cum(n) = cum(n−1) + floor(n) × Δmmr."""
    count = draw(st.integers(min_value=1, max_value=5))
    bounds = sorted(
        draw(st.sets(st.integers(min_value=1, max_value=10_000), min_size=count, max_size=count))
    )
    rates = sorted(
        draw(
            st.lists(
                st.floats(min_value=0.002, max_value=0.2), min_size=count + 1, max_size=count + 1
            )
        )
    )
    tiers: list[Tier] = []
    cum = 0.0
    floor = 0.0
    for i, rate in enumerate(rates):
        if i:
            cum += floor * (rate - rates[i - 1])
        upper = bounds[i] * 1000.0 if i < count else math.inf
        tiers.append(Tier(max_notional=upper, mmr=rate, maintenance_amount=cum))
        floor = upper
    return tuple(tiers)


@st.composite
def positions(draw: st.DrawFn, symbol: str, margin_mode: str = "cross") -> Position:
    """One linear position with a price between 0.5 and 100 000."""
    entry = draw(st.floats(min_value=0.5, max_value=100_000))
    mark = entry * draw(st.floats(min_value=0.7, max_value=1.3))
    notional = draw(st.floats(min_value=10.0, max_value=2_000_000))
    return Position(
        symbol=symbol,
        side=draw(st.sampled_from(("long", "short"))),
        contracts=notional / mark,
        entry_price=entry,
        mark_price=mark,
        leverage=float(draw(st.integers(min_value=1, max_value=50))),
        margin_mode=margin_mode,  # type: ignore[arg-type]
        tiers=draw(tier_tables()),
        isolated_margin=notional / 10 if margin_mode == "isolated" else None,
    )


@st.composite
def accounts(draw: st.DrawFn, max_positions: int = 4) -> AccountSnapshot:
    """A cross account in USDT, sometimes with BTC collateral under a haircut."""
    count = draw(st.integers(min_value=1, max_value=max_positions))
    symbols = draw(st.permutations(SYMBOLS))[:count]
    held = tuple(draw(positions(s)) for s in symbols)
    collateral = [Collateral("USDT", draw(st.floats(min_value=100.0, max_value=5_000_000)))]
    if draw(st.booleans()):
        # BTC collateral is priced by the BTC market when the account trades it
        btc = next((p.mark_price for p in held if p.symbol.startswith("BTC/")), 60_000.0)
        collateral.append(
            Collateral(
                "BTC",
                draw(st.floats(min_value=0.01, max_value=20)),
                price=btc,
                haircut=draw(st.sampled_from((0.0, 0.05, 0.1))),
            )
        )
    return AccountSnapshot(
        account="prop",
        currency="USDT",
        collateral=tuple(collateral),
        positions=held,
        venue=draw(st.sampled_from((None, "binanceusdm", "bybit", "hyperliquid"))),
    )
