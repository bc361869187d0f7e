"""Venue collateral rules read live (issue 12): real ccxt against loopback fakes, and the
pure application of the rules to balances."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import pytest

from monitor.core.margin import report as margin
from monitor.core.model import AccountUpdate, Collateral, CollateralTier, PriceTick
from monitor.report_json import report_to_dict, snapshot_to_dict
from monitor.snapshot import parse_snapshot
from monitor.sources.collateral_rules import (
    CollateralRulesReader,
    apply_rules,
    rules_from_dict,
    rules_to_dict,
    venue_margin,
)
from monitor.sources.exchange import ExchangeSource
from monitor.sources.sim import SimVenue
from monitor.sources.sim_book import DEMO_BOOK
from monitor.venues.base import AssetRule, CollateralRules, VenueFigures
from tests.fakes import bitget, bybit, okx
from tests.fakes.account import EventTap, account_for
from tests.fakes.base import FakeVenue
from tests.fakes.binance import API_KEY, SECRET, BinanceAccount, BinancePosition, FakeBinanceUsdm
from tests.test_account_view import Recorder, daemon

BTC = "BTC/USDT:USDT"
#: Within 0.01 % of the venue's own figure (issue 12's bar).
REL = 1e-4


def multi_rules(**assets: AssetRule) -> CollateralRules:
    return CollateralRules("binanceusdm", "multi_assets", assets, 0.0)


class TestApplyRules:
    def test_buffers_become_haircut_and_markup(self) -> None:
        """Test that bid/ask buffers become haircut/markup and prices index / index(USDT)."""
        rules = multi_rules(
            USDT=AssetRule("USDT", index=0.99, haircut=0.01, liability_markup=0.005),
            USDC=AssetRule("USDC", index=1.0),
        )
        out = apply_rules((Collateral("USDT", 200.0), Collateral("USDC", 220.0)), rules, "USDT")
        usdt, usdc = out
        assert (usdt.price, usdt.haircut, usdt.liability_markup) == (1.0, 0.01, 0.005)
        assert usdc.price == pytest.approx(1 / 0.99)
        assert usdc.haircut == 0.0

    def test_single_asset_mode_drops_volatile_balances(self) -> None:
        """Test that in Single-Asset Mode a BTC balance is not margin, USDC still is."""
        rules = CollateralRules("binanceusdm", "single_asset", {}, 0.0)
        held = (
            Collateral("USDT", 100.0),
            Collateral("BTC", 1.0, 60_000.0),
            Collateral("USDC", 5.0),
        )
        assert [c.asset for c in apply_rules(held, rules, "USDT")] == ["USDT", "USDC"]

    def test_no_rules_and_portfolio_leave_balances(self) -> None:
        """Test that unknown rules or a portfolio-margin account leave balances untouched."""
        held = (Collateral("USDT", 100.0), Collateral("BTC", 1.0, 60_000.0))
        assert apply_rules(held, None, "USDT") == held
        portfolio = CollateralRules("binanceusdm", "portfolio", {}, 0.0)
        assert apply_rules(held, portfolio, "USDT") == held

    def test_switched_off_asset_is_dropped_and_tiers_kept(self) -> None:
        """Test that a coin switched off as collateral is dropped and bands are carried over."""
        bands = (CollateralTier(10.0, 0.98), CollateralTier(math.inf, 0.9))
        rules = multi_rules(
            BTC=AssetRule("BTC", haircut_tiers=bands),
            SOL=AssetRule("SOL", collateral=False),
        )
        out = apply_rules(
            (Collateral("BTC", 12.0, 60_000.0), Collateral("SOL", 3.0, 150.0)), rules, "USDT"
        )
        assert len(out) == 1
        assert out[0].haircut_tiers == bands
        assert out[0].price == 60_000.0  # no index published: our price stays

    def test_cache_round_trip(self) -> None:
        """Test that the cache file's JSON reads back to the same rules, bands included."""
        rules = multi_rules(
            BTC=AssetRule(
                "BTC",
                index=60_000.0,
                haircut=0.05,
                liability_markup=0.05,
                haircut_tiers=(CollateralTier(10.0, 0.98), CollateralTier(math.inf, 0.0)),
                tier_basis="value",
            ),
        )
        assert rules_from_dict(json.loads(json.dumps(rules_to_dict(rules)))) == rules

    def test_bad_cache_is_refused_with_the_field(self) -> None:
        """Test that a damaged cache file is refused with a reason naming the field."""
        data = rules_to_dict(multi_rules(BTC=AssetRule("BTC", haircut=0.05)))
        data["assets"]["BTC"]["haircut"] = "lots"
        with pytest.raises(ValueError, match=r"assets\.BTC"):
            rules_from_dict(data)


# --- Binance Multi-Assets Mode through the fake venue and real ccxt ------------------------


@contextlib.asynccontextmanager
async def watching(
    fake: FakeVenue, key: str, secret: str, state_dir: Path | None = None
) -> AsyncIterator[tuple[ExchangeSource, EventTap]]:
    """A source on a running fake venue, after its first full read."""
    settings = account_for(fake, key, secret, poll_interval=0.2, stale_after=5.0)
    source = ExchangeSource(
        settings, backoff_cap=0.2, reconcile_every=0.5, debounce=0.02, state_dir=state_dir
    )
    tap = EventTap(source.events())
    try:
        await tap.wait_for(lambda e: isinstance(e, AccountUpdate))
        yield source, tap
    finally:
        await tap.stop()
        await source.close()


@contextlib.asynccontextmanager
async def running(
    account: BinanceAccount, state_dir: Path | None = None, fake: FakeBinanceUsdm | None = None
) -> AsyncIterator[tuple[FakeBinanceUsdm, ExchangeSource, EventTap]]:
    """A fake Binance holding `account` (or `fake`, already running) and a source on it."""
    async with contextlib.AsyncExitStack() as stack:
        if fake is None:
            fake = FakeBinanceUsdm(account)
            await stack.enter_async_context(fake)
        source, tap = await stack.enter_async_context(watching(fake, API_KEY, SECRET, state_dir))
        yield fake, source, tap


def example_m1() -> BinanceAccount:
    """margin-math §1.5 example M1: USDTUSD 0.99 (bid buffer 0.01, ask 0.005), USDC 1;
    200 USDT + 220 USDC; BTCUSDT 0.5 @ 20,000 (100x, MMR 0.8 %), ETHUSDC 20 @ 600 (50x, 1 %)."""
    account = BinanceAccount(
        wallet=200.0,
        assets={"USDC": 220.0},
        marks={"BTCUSDT": 20_000.0, "ETHUSDC": 600.0},
        brackets={"BTCUSDT": [(1e9, 0.008, 0.0, 100)], "ETHUSDC": [(1e9, 0.01, 0.0, 50)]},
        multi_assets=True,
        usd_index={"USDT": 0.99, "USDC": 1.0},
        buffers={"USDT": (0.01, 0.005), "USDC": (0.0, 0.0)},
    )
    account.positions[("BTCUSDT", "BOTH")] = BinancePosition("BTCUSDT", 0.5, 20_000.0, leverage=100)
    account.positions[("ETHUSDC", "BOTH")] = BinancePosition("ETHUSDC", 20.0, 600.0, leverage=50)
    return account


def btc_eth_collateral() -> BinanceAccount:
    """20,000 USDT + 1 BTC + 10 ETH (5 % buffers both ways), long 4.5 BTCUSDT @ 60,000:
    270,000 notional sits in bracket 3 (1 %, cum 1,300); USDTUSD 0.9999 (1 bp buffers)."""
    account = BinanceAccount(
        wallet=20_000.0,
        assets={"BTC": 1.0, "ETH": 10.0},
        multi_assets=True,
        usd_index={"USDT": 0.9999, "USDC": 1.0},
        buffers={"USDT": (0.0001, 0.0001), "BTC": (0.05, 0.05), "ETH": (0.05, 0.05)},
    )
    account.positions[("BTCUSDT", "BOTH")] = BinancePosition("BTCUSDT", 4.5, 60_000.0)
    return account


def ours(source: ExchangeSource) -> float:
    return margin.report(source.snapshot()).margin_ratio


async def fall_read_over_rest(
    fake: okx.FakeOkx | bitget.FakeBitget,
    source: ExchangeSource,
    tap: EventTap,
    fall: Callable[[], None],
) -> tuple[float, float]:
    """Our ratio against the fake venue's own (`margin_ratio`) before and after `fall` moves
    a mark to 48,000 and a REST read brings it back; the read's drift check agrees too."""
    before = ours(source)
    assert before == pytest.approx(fake.margin_ratio(), rel=REL)
    fall()
    seen = len(tap.seen)
    await tap.wait_for(
        lambda e: (
            isinstance(e, AccountUpdate) and any(p.mark_price == 48_000.0 for p in e.positions)
        ),
        after=seen,
    )
    after = ours(source)
    assert after == pytest.approx(fake.margin_ratio(), rel=REL)
    check = source.venue_check
    assert check is not None
    assert check.relative_drift is not None
    assert abs(check.relative_drift) < REL
    return before, after


class TestBinanceMultiAssets:
    async def test_worked_example_m1_from_a_live_read(self) -> None:
        """Test that example M1 (equity 416.02 USD, ratio 47.98 %) comes out of a live read."""
        async with running(example_m1()) as (fake, source, _tap):
            assert source.collateral_rules.mode == "multi_assets"
            report = margin.report(source.snapshot())
            # The report is in USDT; the venue's USD figures are ours × USDTUSD (0.99).
            assert report.margin_balance * 0.99 == pytest.approx(416.02, abs=5e-3)
            assert report.maintenance_margin * 0.99 == pytest.approx(199.596, abs=5e-4)
            assert report.margin_ratio == pytest.approx(199.596 / 416.02, rel=1e-6)  # 47.98 %
            assert report.free_collateral * 0.99 == pytest.approx(76.525, abs=5e-4)
            assert report.margin_ratio == pytest.approx(fake.account.venue_margin_ratio(), rel=REL)

    async def test_snapshot_file_keeps_the_venue_valuation(self) -> None:
        """Test that a snapshot of the M1 account (what `margin-monitor snapshot` writes)
        carries the haircuts and prices, so `report --snapshot` gives the same 47.98 %."""
        async with running(example_m1()) as (_fake, source, _tap):
            snap = await source.fetch_snapshot()
        data = json.loads(json.dumps(snapshot_to_dict(snap)))
        usdt = next(c for c in data["collateral"] if c["asset"] == "USDT")
        assert (usdt["haircut"], usdt["liability_markup"]) == (0.01, 0.005)
        again = margin.report(parse_snapshot(data, "snap.json"))
        assert again.margin_ratio == pytest.approx(199.596 / 416.02, rel=1e-6)

    async def test_worked_example_m1_without_positions(self) -> None:
        """Test that M1 with no positions gives Account Equity 416.02 USD and ratio 0."""
        account = example_m1()
        account.positions.clear()
        async with running(account) as (_fake, source, _tap):
            report = margin.report(source.snapshot())
            assert report.margin_balance * 0.99 == pytest.approx(416.02, abs=5e-3)
            assert report.margin_ratio == 0.0

    async def test_btc_fall_across_a_boundary_matches_the_venue(self) -> None:
        """Test that with BTC and ETH collateral our ratio is the venue's within 0.01 % before
        and after BTC −20 %, which moves the position to a lower bracket and turns the USDT
        equity negative (valued at the ask rate instead of the bid rate)."""
        async with running(btc_eth_collateral()) as (fake, source, tap):
            before = ours(source)
            assert before == pytest.approx(fake.account.venue_margin_ratio(), rel=REL)
            check = source.venue_check
            assert check is not None
            assert check.relative_drift is not None
            assert abs(check.relative_drift) < REL
            usdt = fake.account.per_asset()["USDT"]
            assert usdt["wallet"] + usdt["upnl"] > 0

            await fake.wait_for_client("/market/ws", "btcusdt@markPrice@1s")
            seen = len(tap.seen)
            await fake.push_mark("BTCUSDT", 48_000.0)
            await tap.wait_for(
                lambda e: isinstance(e, PriceTick) and e.mark_price == 48_000.0, after=seen
            )
            usdt = fake.account.per_asset()["USDT"]
            assert usdt["wallet"] + usdt["upnl"] < 0  # crossed to the ask side
            after = ours(source)
            assert after > 1.5 * before
            assert after == pytest.approx(fake.account.venue_margin_ratio(), rel=REL)
            # and the next REST reconciliation agrees too (no model drift)
            seen = len(tap.seen)
            await tap.wait_for(lambda e: isinstance(e, AccountUpdate), after=seen)
            check = source.venue_check
            assert check is not None
            assert check.relative_drift is not None
            assert abs(check.relative_drift) < REL

    async def test_without_haircuts_the_ratio_would_be_understated(self) -> None:
        """Test that valuing BTC/ETH at full price (no rules) drifts > 1 % from the venue."""
        async with FakeBinanceUsdm(btc_eth_collateral()) as fake:
            fake.fail("/fapi/v1/assetIndex", status=503, times=100)
            async with running(fake.account, fake=fake) as (_f, source, _tap):
                assert source.collateral_rules.rules is None
                drift = source.venue_check.relative_drift if source.venue_check else None
                assert drift is not None
                assert drift < -0.01

    async def test_rules_are_cached_and_reused_after_a_restart(self, tmp_path: Path) -> None:
        """Test that a restart values haircuts from the cache, without re-reading the venue,
        even while the venue's rule endpoints fail."""
        async with running(btc_eth_collateral(), tmp_path) as (_fake, source, _tap):
            first = ours(source)
        cache = tmp_path / "collateral" / "binanceusdm-test.json"
        assert json.loads(cache.read_text())["mode"] == "multi_assets"
        async with FakeBinanceUsdm(btc_eth_collateral()) as fake:
            fake.fail("/fapi/v1/assetIndex", status=503, times=100)
            fake.fail("/fapi/v1/multiAssetsMargin", status=503, times=100)
            async with running(fake.account, tmp_path, fake) as (_f, source, _tap):
                assert ours(source) == pytest.approx(first, rel=1e-9)
                assert fake.count("/fapi/v1/assetIndex") == 0
                assert fake.count("/fapi/v1/multiAssetsMargin") == 0

    async def test_single_asset_mode_ignores_btc_balance(self) -> None:
        """Test that in Single-Asset Mode a BTC wallet balance adds nothing to the margin."""
        account = btc_eth_collateral()
        account.multi_assets = False
        async with running(account) as (fake, source, _tap):
            assert source.collateral_rules.mode == "single_asset"
            assert {c.asset for c in source.collateral} == {"USDT"}
            assert fake.count("/fapi/v1/assetIndex") == 0
            assert ours(source) == pytest.approx(fake.account.venue_margin_ratio(), rel=REL)


def uta_btc_eth() -> bybit.BybitAccount:
    """Bybit UTA cross: 10,000 USDT + 1.5 BTC (ratio 0.95 up to 1 BTC, 0.9 beyond) + 10 ETH
    (0.9), long 4 BTCUSDT @ 60,000; coin prices follow their USDT marks."""
    account = bybit.BybitAccount(
        wallet=10_000.0,
        coins={"BTC": (1.5, None, True), "ETH": (10.0, None, True), "DOGE": (5_000.0, 0.1, False)},
        collateral_tiers={
            "USDT": [(None, 1.0)],
            "BTC": [(1.0, 0.95), (None, 0.9)],
            "ETH": [(None, 0.9)],
            "DOGE": [(None, 0.8)],
        },
    )
    account.positions[("BTCUSDT", 0)] = bybit.BybitPosition("BTCUSDT", "Buy", 4.0, 60_000.0)
    return account


class TestThroughTheDaemon:
    async def test_daemon_reports_the_venues_ratio_before_and_after_a_fall(self) -> None:
        """Test that the daemon loop (state, ledger, report) on a Multi-Assets account reports
        the venue's ratio within 0.01 % at start and after BTC −20 % streamed as a tick."""
        recorder = Recorder()
        async with FakeBinanceUsdm(btc_eth_collateral()) as fake:
            settings = account_for(fake, API_KEY, SECRET, poll_interval=5.0, stale_after=60.0)
            source = ExchangeSource(settings, backoff_cap=0.2, reconcile_every=10.0, debounce=0.02)
            async with daemon(source, recorder):
                before = fake.account.venue_margin_ratio()
                await recorder.until(
                    lambda: any(
                        r.margin_ratio == pytest.approx(before, rel=REL) for r in recorder.reports
                    )
                )
                await fake.wait_for_client("/market/ws", "btcusdt@markPrice@1s")
                await fake.push_mark("BTCUSDT", 48_000.0)
                after = fake.account.venue_margin_ratio()
                assert after > 1.5 * before
                await recorder.until(
                    lambda: recorder.reports[-1].margin_ratio == pytest.approx(after, rel=REL)
                )


class TestBybitUta:
    async def test_tiered_ratios_match_account_mm_rate_across_a_fall(self) -> None:
        """Test that with BTC and ETH collateral our ratio equals accountMMRate within 0.01 %
        before and after BTC −20 % (USDT equity turns negative: no ratio applies to it)."""
        async with (
            bybit.FakeBybit(uta_btc_eth()) as fake,
            watching(fake, bybit.API_KEY, bybit.SECRET) as (source, tap),
        ):
            assert source.collateral_rules.mode == "multi_assets"
            btc = next(c for c in source.collateral if c.asset == "BTC")
            assert [(t.up_to, t.ratio) for t in btc.haircut_tiers] == [(1.0, 0.95), (math.inf, 0.9)]
            assert "DOGE" not in {c.asset for c in source.collateral}  # switched off
            venue = fake.account.totals()["mm_rate"]
            assert ours(source) == pytest.approx(venue, rel=REL)
            # 10,000 + (0.95 + 0.5 × 0.9) × 60,000 + 10 × 0.9 × 3,000 = 121,000 USD
            assert margin.report(source.snapshot()).margin_balance == pytest.approx(121_000.0)

            await fake.wait_for_client("/v5/public", "tickers.BTCUSDT")
            seen = len(tap.seen)
            await fake.push_mark("BTCUSDT", 48_000.0)
            await tap.wait_for(
                lambda e: isinstance(e, PriceTick) and e.mark_price == 48_000.0, after=seen
            )
            assert fake.account.wallet + fake.account.totals()["upnl"] < 0
            after = ours(source)
            assert after == pytest.approx(fake.account.totals()["mm_rate"], rel=REL)
            assert after > 1.5 * venue
            seen = len(tap.seen)
            await tap.wait_for(lambda e: isinstance(e, AccountUpdate), after=seen)
            check = source.venue_check
            assert check is not None
            assert check.relative_drift is not None
            assert abs(check.relative_drift) < REL


class TestOkxMultiCurrency:
    async def test_discount_tiers_match_mgn_ratio_across_a_fall(self) -> None:
        """Test that an OKX multi-currency account (acctLv 3) holding 1.5 BTC under tiered
        discount rates (0.98 up to 1 BTC, 0.95 beyond) matches 1/mgnRatio within 0.01 %
        before and after BTC −20 %, read over REST through real ccxt."""
        account = okx.OkxAccount(
            acct_lv="3",
            coins={"BTC": 1.5},
            discount={"USDT": [(None, 1.0)], "BTC": [(1.0, 0.98), (None, 0.95)]},
        )
        async with (
            okx.FakeOkx(account) as fake,
            watching(fake, okx.API_KEY, okx.SECRET) as (source, tap),
        ):
            assert source.collateral_rules.mode == "multi_assets"
            btc = next(c for c in source.collateral if c.asset == "BTC")
            assert [(t.up_to, t.ratio) for t in btc.haircut_tiers] == [
                (1.0, 0.98),
                (math.inf, 0.95),
            ]
            before, after = await fall_read_over_rest(
                fake, source, tap, lambda: fake.account.marks.update({"BTC-USDT-SWAP": 48_000.0})
            )
            assert after > before


class TestBitgetUnion:
    async def test_discount_tiers_match_crossed_risk_rate_across_a_fall(self) -> None:
        """Test that a Bitget union-mode account holding 2 BTC and 20 ETH under tiered USDT
        value discount rates matches crossedRiskRate within 0.01 % before and after BTC
        −20 %, which moves the BTC value below its 100,000 USDT tier boundary."""
        account = bitget.BitgetAccount(
            wallet=5_000.0,
            asset_mode="union",
            coins={"BTC": 2.0, "ETH": 20.0},
            positions={"BTCUSDT": ("long", 3.0, 60_000.0)},
            discounts={
                "BTC": [(0.0, 100_000.0, 0.95), (100_000.0, -1.0, 0.9)],
                "ETH": [(0.0, 50_000.0, 0.9), (50_000.0, -1.0, 0.8)],
            },
        )
        async with (
            bitget.FakeBitget(account) as fake,
            watching(fake, bitget.API_KEY, bitget.SECRET) as (source, tap),
        ):
            assert source.collateral_rules.mode == "multi_assets"
            btc = next(c for c in source.collateral if c.asset == "BTC")
            assert btc.tier_basis == "value"
            assert [(t.up_to, t.ratio) for t in btc.haircut_tiers] == [
                (100_000.0, 0.95),
                (math.inf, 0.9),
            ]
            # 5,000 + (100,000 × 0.95 + 20,000 × 0.9) + (50,000 × 0.9 + 10,000 × 0.8)
            assert margin.report(source.snapshot()).margin_balance == pytest.approx(171_000.0)
            assert fake.count("/api/v2/mix/market/discount-rate") == 1
            before, after = await fall_read_over_rest(
                fake, source, tap, lambda: fake.account.marks.update({"BTCUSDT": 48_000.0})
            )
            assert fake.account.coin_value("BTC") < 100_000.0  # below the boundary now
            # 5,000 − 36,000 + 96,000 × 0.95 + 53,000
            assert margin.report(source.snapshot()).margin_balance == pytest.approx(113_200.0)
            # MM: 180,000 × 0.5 % before, 144,000 × 0.4 % after (Bitget's tiers)
            assert (before, after) == (
                pytest.approx(900.0 / 171_000.0, rel=REL),
                pytest.approx(576.0 / 113_200.0, rel=REL),
            )

    async def test_single_asset_mode_reads_no_tiers(self) -> None:
        """Test that a Bitget account in single-asset mode is read as such and its discount
        tiers are never asked for."""
        async with (
            bitget.FakeBitget() as fake,
            watching(fake, bitget.API_KEY, bitget.SECRET) as (source, _tap),
        ):
            assert source.collateral_rules.mode == "single_asset"
            assert fake.count("/api/v2/mix/account/accounts") >= 1
            assert fake.count("/api/v2/mix/market/discount-rate") == 0


def pm_account(uni_mmr: float) -> BinanceAccount:
    """The BTC/ETH account as a Binance PM account whose scenario MM puts uniMMR at `uni_mmr`."""
    account = btc_eth_collateral()
    account.multi_assets = False
    account.portfolio_mm = account.pm_figures()["equity"] / uni_mmr
    return account


def pm_source(fake: FakeBinanceUsdm) -> ExchangeSource:
    """A source on `fake` configured as ccxt configures Binance PM (`portfolioMargin`)."""
    settings = account_for(fake, API_KEY, SECRET, poll_interval=0.2, stale_after=5.0)
    config = dict(settings.ccxt)
    config["options"] = {**config["options"], "portfolioMargin": True}
    return ExchangeSource(
        replace(settings, ccxt=config), backoff_cap=0.2, reconcile_every=0.5, debounce=0.02
    )


class TestPortfolioMargin:
    async def test_bybit_portfolio_margin_ratio_is_the_venues(self) -> None:
        """Test that a Bybit PORTFOLIO_MARGIN account reports accountMMRate as its live ratio,
        labelled `model: venue`, and that a tick does not replace it with a cross ratio."""
        account = uta_btc_eth()
        account.margin_mode = "PORTFOLIO_MARGIN"
        account.portfolio_mm = 4_321.0  # Bybit's scenario MM: no public formula gives it
        async with (
            bybit.FakeBybit(account) as fake,
            watching(fake, bybit.API_KEY, bybit.SECRET) as (source, tap),
        ):
            assert source.collateral_rules.mode == "portfolio"
            venue = fake.account.totals()["mm_rate"]
            report = margin.report(source.snapshot())
            assert report.model == "venue"
            assert report.margin_ratio == pytest.approx(venue, rel=1e-12)
            assert report.maintenance_margin == pytest.approx(4_321.0)
            assert report_to_dict(report)["model"] == "venue"
            balance = next(e for e in reversed(tap.seen) if isinstance(e, AccountUpdate))
            assert balance.venue_margin is not None
            assert balance.venue_margin.margin_ratio == pytest.approx(venue)
            # a cross-margin computation of the same account would say something else
            cross = margin.report(replace(source.snapshot(), venue_margin=None)).margin_ratio
            assert abs(cross / venue - 1) > 0.5

            await fake.wait_for_client("/v5/public", "tickers.BTCUSDT")
            seen = len(tap.seen)
            await fake.push_mark("BTCUSDT", 48_000.0)
            await tap.wait_for(
                lambda e: isinstance(e, PriceTick) and e.mark_price == 48_000.0, after=seen
            )
            held = margin.report(source.snapshot())
            assert held.model == "venue"
            assert held.margin_ratio == report.margin_ratio  # carried until the next read
            seen = len(tap.seen)
            await tap.wait_for(lambda e: isinstance(e, AccountUpdate), after=seen)
            fresh = margin.report(source.snapshot())
            assert fresh.margin_ratio == pytest.approx(fake.account.totals()["mm_rate"])
            assert fresh.margin_ratio > report.margin_ratio

    @staticmethod
    @contextlib.asynccontextmanager
    async def binance_pm(
        uni_mmr: float,
    ) -> AsyncIterator[tuple[FakeBinanceUsdm, AccountUpdate, ExchangeSource]]:
        """A Binance PM account (ccxt `portfolioMargin`) whose scenario MM puts its uniMMR
        at `uni_mmr`, and a source after its first read."""
        async with FakeBinanceUsdm(pm_account(uni_mmr)) as fake:
            source = pm_source(fake)
            tap = EventTap(source.events())
            try:
                update = await tap.wait_for(lambda e: isinstance(e, AccountUpdate))
                assert isinstance(update, AccountUpdate)
                yield fake, update, source
            finally:
                await tap.stop()
                await source.close()

    async def test_binance_portfolio_margin_drives_the_ratio_by_uni_mmr(self) -> None:
        """Test that a Binance PM account reports 1.05 / uniMMR from /papi/v1/account as its
        ratio, labelled venue, with the venue's MM and equity, through real ccxt."""
        async with self.binance_pm(1.2) as (fake, update, source):
            assert source.collateral_rules.mode == "portfolio"
            pm = fake.account.pm_figures()
            assert update.venue_margin is not None
            assert update.venue_margin.margin_ratio == pytest.approx(0.875, rel=1e-12)
            assert update.venue_ratio == pytest.approx(0.875, rel=1e-12)
            report = margin.report(source.snapshot())
            assert report.model == "venue"
            assert report.margin_ratio == pytest.approx(0.875, rel=1e-12)
            assert not report.liquidated
            assert report.maintenance_margin == pytest.approx(pm["mm"], rel=1e-9)
            assert report.margin_balance == pytest.approx(pm["equity"], rel=1e-9)
            assert report_to_dict(report)["margin_ratio"] == pytest.approx(0.875, rel=1e-12)
            assert fake.count("/papi/v1/account") >= 1
            assert fake.count("/fapi/v1/assetIndex") == 0

    async def test_binance_portfolio_margin_at_uni_mmr_1_05_is_liquidated(self) -> None:
        """Test that a PM account at uniMMR 1.05 (Binance's liquidation line) reads ratio
        1.0 and liquidated, as the venue ratio and in the report (JSON too)."""
        async with self.binance_pm(1.05) as (fake, update, source):
            assert fake.account.pm_figures()["uni_mmr"] == pytest.approx(1.05, rel=1e-12)
            assert update.venue_ratio == 1.0
            report = margin.report(source.snapshot())
            assert report.model == "venue"
            assert report.margin_ratio == 1.0
            assert report.liquidated
            assert report_to_dict(report)["liquidated"] is True
            # a cross-margin computation of the same account would not see it
            assert not margin.report(replace(source.snapshot(), venue_margin=None)).liquidated

    @pytest.mark.parametrize(
        ("uni_mmr", "ratio", "liquidated"), [(1.2, 0.875, False), (1.05, 1.0, True)]
    )
    async def test_daemon_alerts_on_the_venues_pm_liquidation_line(
        self, uni_mmr: float, ratio: float, liquidated: bool
    ) -> None:
        """Test that through the daemon a PM account at uniMMR 1.2 reaches emergency (ratio
        0.875 ≥ 0.85, where 1 / uniMMR = 0.833 is only critical) and one at uniMMR 1.05 is
        reported liquidated."""
        recorder = Recorder()
        async with (
            FakeBinanceUsdm(pm_account(uni_mmr)) as fake,
            daemon(pm_source(fake), recorder),
        ):
            await recorder.until(lambda: any(r.model == "venue" for r in recorder.reports))
            report = next(r for r in recorder.reports if r.model == "venue")
            assert report.margin_ratio == pytest.approx(ratio, rel=1e-12)
            assert report.liquidated is liquidated
            await recorder.until(lambda: any(level == "emergency" for _, level in recorder.levels))

    async def test_okx_portfolio_mode_reports_mgn_ratio(self) -> None:
        """Test that an OKX portfolio-margin account (acctLv 4) reports 1/mgnRatio as its
        live ratio, labelled venue, and reads no discount tiers."""
        async with (
            okx.FakeOkx(okx.OkxAccount(acct_lv="4")) as fake,
            watching(fake, okx.API_KEY, okx.SECRET) as (source, _tap),
        ):
            assert source.collateral_rules.mode == "portfolio"
            report = margin.report(source.snapshot())
            assert report.model == "venue"
            assert report.margin_ratio == pytest.approx(fake.margin_ratio(), rel=1e-12)
            assert fake.count("/api/v5/public/discount-rate-interest-free-quota") == 0

    def test_no_venue_figure_means_estimate(self) -> None:
        """Test that a portfolio account without a venue figure gets a ratio-less
        VenueMargin (reported as an estimate), and other modes none."""
        portfolio = CollateralRules("bybit", "portfolio", {}, 0.0)
        vm = venue_margin(portfolio, None)
        assert vm is not None
        assert vm.margin_ratio is None
        cross = CollateralRules("bybit", "multi_assets", {}, 0.0)
        assert venue_margin(cross, VenueFigures("bybit", 0.1)) is None
        assert venue_margin(None, VenueFigures("bybit", 0.1)) is None


class _SimAsExchange:
    """The sim venue's published answers behind the names of ccxt's implicit API."""

    id = "binanceusdm"

    def __init__(self, sim: SimVenue) -> None:
        self.sim = sim
        self.options: dict[str, object] = {}

    async def fapiPrivateGetMultiAssetsMargin(self) -> dict[str, bool]:
        return self.sim.multi_assets_margin()

    async def fapiPublicGetAssetIndex(self) -> list[dict[str, object]]:
        return self.sim.asset_index()


class TestSimPublishesRules:
    async def test_demo_haircut_comes_from_the_published_rules(self) -> None:
        """Test that the demo's BTC haircut is not in its book but in the rules it publishes,
        which the live reader reads to the same rules the sim values its collateral with."""
        assert all(c.haircut == 0.0 for c in DEMO_BOOK.collateral)
        sim = SimVenue("demo", clock=lambda: 1_000.0)
        btc = next(c for c in sim.snapshot().collateral if c.asset == "BTC")
        assert (btc.haircut, btc.liability_markup) == (0.05, 0.05)
        reader = CollateralRulesReader("demo", "binanceusdm", clock=lambda: 1_000.0)
        live = await reader.refresh(_SimAsExchange(sim))
        assert live == sim.collateral_rules
        assert sim.asset_index()[1]["symbol"] == "BTCUSD"

    def test_fills_carry_the_haircut(self) -> None:
        """Test that the account update a fill announces values BTC by the rules too."""
        sim = SimVenue("demo")
        update = sim.read(1.0)
        btc = next(c for c in update.collateral if c.asset == "BTC")
        assert btc.haircut == 0.05
        without = replace(
            sim.snapshot(), collateral=tuple(replace(c, haircut=0.0) for c in update.collateral)
        )
        assert margin.report(sim.snapshot()).margin_ratio > margin.report(without).margin_ratio


class TestReaderSchedule:
    async def test_reads_again_only_when_due(self) -> None:
        """Test that rules are re-read after `every` seconds and a failure waits `retry`."""
        now = [1_000.0]
        async with FakeBinanceUsdm(btc_eth_collateral()) as fake:
            settings = account_for(fake, API_KEY, SECRET)
            source = ExchangeSource(settings)
            try:
                exchange = await source.open()
                reader = CollateralRulesReader(
                    "a", "binanceusdm", every=600.0, retry=30.0, clock=lambda: now[0]
                )
                await reader.refresh(exchange)
                assert reader.mode == "multi_assets"
                now[0] += 599.0
                await reader.refresh(exchange)
                assert fake.count("/fapi/v1/assetIndex") == 1
                now[0] += 1.0
                fake.fail("/fapi/v1/multiAssetsMargin", status=503, times=5)
                await reader.refresh(exchange)
                assert reader.mode == "multi_assets"  # kept after a failed read
                now[0] += 29.0
                await reader.refresh(exchange)
                assert fake.count("/fapi/v1/multiAssetsMargin") == 2
            finally:
                await source.close()
