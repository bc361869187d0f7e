"""REST-only venues through ExchangeSource.fetch_snapshot: fakes speak each venue's wire format.

For each venue: positions, wallet balance and tiers (where ccxt has them) normalise into the
model, and our margin ratio agrees with the venue's own account figure where it reports one.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator
from typing import Any

import ccxt
import pytest

from monitor.core.margin import report as margin
from monitor.sources.exchange import ExchangeSource
from tests.fakes.account import account_for

#: venue -> (fake module, class name, expected report currency)
VENUES = {
    "okx": ("tests.fakes.okx", "FakeOkx", "USDT"),
    "bitget": ("tests.fakes.bitget", "FakeBitget", "USDT"),
    "hyperliquid": ("tests.fakes.hyperliquid", "FakeHyperliquid", "USDC"),
    "bingx": ("tests.fakes.bingx", "FakeBingx", "USDT"),
    "mexc": ("tests.fakes.mexc", "FakeMexc", "USDT"),
    "weex": ("tests.fakes.weex", "FakeWeex", "USDT"),
}
#: venues that report an account-level maintenance figure we keep beside ours
REPORTING = {"okx", "bitget", "hyperliquid"}


async def _running(name: str) -> AsyncIterator[tuple[Any, ExchangeSource]]:
    module_name, class_name, _ = VENUES[name]
    module = importlib.import_module(module_name)
    fake = getattr(module, class_name)()
    async with fake:
        source = ExchangeSource(account_for(fake, module.API_KEY, module.SECRET))
        try:
            yield fake, source
        finally:
            await source.close()


@pytest.fixture(params=sorted(VENUES))
async def venue(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Any, ExchangeSource]]:
    async for pair in _running(request.param):
        yield pair


#: Hyperliquid reads are keyless (an address, no signature), so it has no bad-key answer.
@pytest.fixture(params=sorted(set(VENUES) - {"hyperliquid"}))
async def keyed_venue(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[Any, ExchangeSource]]:
    async for pair in _running(request.param):
        yield pair


class TestRestVenues:
    async def test_snapshot_positions_and_wallet(self, venue: tuple[Any, ExchangeSource]) -> None:
        """Test that positions (side, base size) and the wallet come through normalised."""
        fake, source = venue
        snapshot = await source.fetch_snapshot()
        got = {p.symbol: (p.side, p.contracts * p.contract_size) for p in snapshot.positions}
        want = fake.expected_positions()
        assert got.keys() == want.keys()
        for symbol, (side, size) in want.items():
            assert got[symbol][0] == side
            assert got[symbol][1] == pytest.approx(size)
        assert all(p.entry_price > 0 and p.mark_price > 0 for p in snapshot.positions)
        assert snapshot.currency == VENUES[fake.venue][2]
        (wallet,) = snapshot.collateral
        assert wallet.amount == pytest.approx(fake.wallet())

    async def test_ratio_matches_venue_rule(self, venue: tuple[Any, ExchangeSource]) -> None:
        """Test that our margin ratio equals the venue's figure (or documented rule) to 0.01 %."""
        fake, source = venue
        snapshot = await source.fetch_snapshot()
        ours = margin.report(snapshot).margin_ratio
        assert ours > 0
        assert ours == pytest.approx(fake.margin_ratio(), rel=1e-4)

    async def test_reconciliation_records_drift(self, venue: tuple[Any, ExchangeSource]) -> None:
        """Test that a reconciliation keeps the venue's figure beside ours where it has one."""
        fake, source = venue
        await source.open()
        await source.exchange.load_markets()
        await source._reconcile()
        check = source.venue_check
        if fake.venue not in REPORTING:
            assert check is None
            return
        assert check is not None
        assert check.relative_drift == pytest.approx(0.0, abs=1e-4)

    async def test_bad_key_is_an_authentication_error(
        self, keyed_venue: tuple[Any, ExchangeSource]
    ) -> None:
        """Test that the venue's bad-key answer maps to ccxt's AuthenticationError."""
        fake, _source = keyed_venue
        module = importlib.import_module(VENUES[fake.venue][0])
        source = ExchangeSource(account_for(fake, "wrong-key", module.SECRET))
        try:
            with pytest.raises(ccxt.AuthenticationError):
                await source.fetch_snapshot()
        finally:
            await source.close()


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
