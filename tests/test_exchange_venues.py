"""REST-only venues through ExchangeSource.fetch_snapshot: fakes speak each venue's wire format.

For each venue: positions, wallet balance and tiers (where ccxt has them) normalise into the
model, and our margin ratio agrees with the venue's own account figure where it reports one.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from monitor import margin
from monitor.sources.exchange import ExchangeSource
from tests.fakes.account import account_for

#: venue -> (fake module, class name, expected report currency)
VENUES = {
    "okx": ("tests.fakes.okx", "FakeOkx", "USDT"),
    "bitget": ("tests.fakes.bitget", "FakeBitget", "USDT"),
    "hyperliquid": ("tests.fakes.hyperliquid", "FakeHyperliquid", "USDC"),
}


@pytest.fixture(params=sorted(VENUES))
async def venue(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Any, Any, ExchangeSource]]:
    module_name, class_name, _ = VENUES[request.param]
    module = importlib.import_module(module_name)
    fake = getattr(module, class_name)()
    async with fake:
        source = ExchangeSource(account_for(fake, module.API_KEY, module.SECRET))
        try:
            yield module, fake, source
        finally:
            await source.close()


def expected_positions(fake: Any) -> dict[str, tuple[str, float]]:
    """symbol -> (side, size in base units), from the fake's own state."""
    out: dict[str, tuple[str, float]] = {}
    venue = fake.venue
    for key, value in fake.account.positions.items():
        if venue == "okx":
            pos, _ = value
            base = key.split("-")[0]
            ct_val = importlib.import_module("tests.fakes.okx").INSTRUMENTS[key][0]
            out[f"{base}/USDT:USDT"] = ("long" if pos > 0 else "short", abs(pos) * ct_val)
        elif venue == "bitget":
            side, size, _ = value
            out[f"{key.removesuffix('USDT')}/USDT:USDT"] = (side, size)
        elif venue == "hyperliquid":
            size, _ = value
            out[f"{key}/USDC:USDC"] = ("long" if size > 0 else "short", abs(size))
    return out


def venue_ratio(fake: Any) -> float:
    t = fake.account.totals()
    if fake.venue == "okx":
        return 1 / t["mgn_ratio"]
    if fake.venue == "bitget":
        return float(t["risk_rate"])
    return float(t["mm"] / t["value"])


class TestRestVenues:
    async def test_snapshot_positions_and_wallet(
        self, venue: tuple[Any, Any, ExchangeSource]
    ) -> None:
        """Test that positions (side, base size) and the wallet come through normalised."""
        _module, fake, source = venue
        snapshot = await source.fetch_snapshot()
        got = {p.symbol: (p.side, p.contracts * p.contract_size) for p in snapshot.positions}
        want = expected_positions(fake)
        assert got.keys() == want.keys()
        for symbol, (side, size) in want.items():
            assert got[symbol][0] == side
            assert got[symbol][1] == pytest.approx(size)
        assert snapshot.currency == VENUES[fake.venue][2]
        (wallet,) = snapshot.collateral
        expected_wallet = {"okx": "cash", "bitget": "wallet", "hyperliquid": "raw_usd"}
        assert wallet.amount == pytest.approx(getattr(fake.account, expected_wallet[fake.venue]))

    async def test_ratio_matches_venue_figure(self, venue: tuple[Any, Any, ExchangeSource]) -> None:
        """Test that our margin ratio equals the venue's own account figure within 0.01 %."""
        _module, fake, source = venue
        snapshot = await source.fetch_snapshot()
        ours = margin.report(snapshot).margin_ratio
        assert ours == pytest.approx(venue_ratio(fake), rel=1e-4)

    async def test_reconciliation_records_drift(
        self, venue: tuple[Any, Any, ExchangeSource]
    ) -> None:
        """Test that a live reconciliation keeps the venue figure beside ours with ~0 drift."""
        _module, _fake, source = venue
        await source.open()
        await source.exchange.load_markets()
        await source._reconcile()
        check = source.venue_check
        assert check is not None
        assert check.relative_drift == pytest.approx(0.0, abs=1e-4)


class TestBitget:
    async def test_tiers_loaded(self) -> None:
        """Test that Bitget's position tiers load per symbol with a continuous deduction."""
        from tests.fakes.bitget import API_KEY, SECRET, FakeBitget

        async with FakeBitget() as fake:
            source = ExchangeSource(account_for(fake, API_KEY, SECRET))
            try:
                snapshot = await source.fetch_snapshot()
            finally:
                await source.close()
        btc = next(p for p in snapshot.positions if p.symbol == "BTC/USDT:USDT")
        assert [t.max_notional for t in btc.tiers] == [150_000.0, 600_000.0, 1_500_000.0]
        assert btc.tiers[1].maintenance_amount == pytest.approx(150_000 * 0.001)


class TestHyperliquid:
    async def test_reads_never_sign_account_actions(self) -> None:
        """Test that reading an account never POSTs /exchange (ccxt's builder-fee approval)."""
        from tests.fakes.hyperliquid import API_KEY, SECRET, FakeHyperliquid

        async with FakeHyperliquid() as fake:
            source = ExchangeSource(account_for(fake, API_KEY, SECRET))
            try:
                snapshot = await source.fetch_snapshot()
            finally:
                await source.close()
            assert fake.count("/exchange") == 0
        assert {p.mmr for p in snapshot.positions} == {1 / 80, 1 / 50}
