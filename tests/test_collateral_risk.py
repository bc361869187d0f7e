"""Tests for monitor/core/collateral_risk.py: non-stable share and the fall of one collateral asset
alone that liquidates, and where they are shown (report JSON, TUI, MQTT state, phone text)."""

from __future__ import annotations

import io
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from monitor.alerts.message import build_message
from monitor.channels.console import ConsoleSink
from monitor.channels.mqtt_payloads import state_payload
from monitor.channels.notify import render
from monitor.core import stress
from monitor.core.alert_state import AlertEvent
from monitor.core.collateral_risk import collateral_risk, describe, fall_to_liquidation
from monitor.core.margin import report as margin
from monitor.core.model import AccountSnapshot, Collateral, Position, VenueMargin, base_asset
from monitor.report_json import report_to_dict, snapshot_to_dict
from monitor.snapshot import parse_snapshot
from tests.strategies import accounts

BTC = "BTC/USDT:USDT"


def btc_backed(usdt: float = 1_000.0) -> AccountSnapshot:
    """USDT + 0.2 BTC (5 % haircut) + 2 ETH (10 %), long 1 BTCUSDT @ 50,000 (MMR 0.5 %)."""
    return AccountSnapshot(
        "a",
        "USDT",
        (
            Collateral("USDT", usdt),
            Collateral("BTC", 0.2, 50_000.0, haircut=0.05),
            Collateral("ETH", 2.0, 3_000.0, haircut=0.1),
        ),
        (Position(BTC, "long", 1.0, 50_000.0, 50_000.0, mmr=0.005, leverage=10.0),),
        venue="binanceusdm",
    )


def moved(snapshot: AccountSnapshot, asset: str, fall: float) -> AccountSnapshot:
    """The asset's price (collateral and the contracts on it) moved by `fall`."""
    price = next(c.price for c in snapshot.collateral if c.asset == asset)
    prices = {asset: price * (1 + fall)}
    for p in snapshot.positions:
        if base_asset(p.symbol) == asset:
            prices[p.symbol] = p.mark_price * (1 + fall)
    return stress.with_prices(snapshot, prices)


class TestFallToLiquidation:
    def test_btc_fall_in_closed_form(self) -> None:
        """Test that the BTC fall is 10,250 + 59,250 s = 0 plus ETH's 5,400: s = −15,650/59,250.

        Surplus at a BTC fall s: USDT 1,000 + 50,000 s, BTC 9,500 (1 + s), ETH 5,400,
        MM 250 (1 + s).
        """
        fall = fall_to_liquidation(btc_backed(), "BTC")
        assert fall == pytest.approx(-15_650 / 59_250, rel=1e-9)
        assert margin.report(moved(btc_backed(), "BTC", fall)).margin_ratio == pytest.approx(1.0)

    def test_no_fall_of_a_small_holding_liquidates(self) -> None:
        """Test that ETH, whose whole value is below the surplus, has no liquidating fall."""
        assert fall_to_liquidation(btc_backed(), "ETH") is None

    def test_already_liquidated_is_zero(self) -> None:
        """Test that an account already past liquidation reports a fall of 0."""
        assert fall_to_liquidation(btc_backed(usdt=-20_000.0), "BTC") == 0.0

    def test_share_and_order(self) -> None:
        """Test that shares are after haircut over the margin balance, largest first."""
        snap = btc_backed()
        balance = margin.report(snap).margin_balance
        risk = collateral_risk(snap, balance)
        assert [a.asset for a in risk.assets] == ["BTC", "ETH"]
        assert risk.assets[0].value == pytest.approx(9_500.0)
        assert risk.non_stable_share == pytest.approx((9_500 + 5_400) / balance)
        assert risk.assets[1].share == pytest.approx(5_400 / balance)

    def test_stable_only_account_has_none(self) -> None:
        """Test that an account with only stablecoins has no collateral risk lines."""
        snap = AccountSnapshot(
            "a", "USDT", (Collateral("USDT", 100.0), Collateral("USDC", 5.0)), ()
        )
        risk = collateral_risk(snap, 105.0)
        assert risk.assets == ()
        assert risk.non_stable_share == 0.0
        assert describe(risk) == []


def _with_volatile_collateral(
    snap: AccountSnapshot, data: st.DataObject
) -> tuple[AccountSnapshot, str, float]:
    """The account (given BTC collateral if it holds none) and one volatile asset it holds."""
    held = [c for c in snap.collateral if c.amount > 0 and c.asset != snap.currency]
    if not held:
        btc = Collateral(
            "BTC", data.draw(st.floats(min_value=0.01, max_value=20)), 60_000.0, haircut=0.05
        )
        snap = AccountSnapshot(
            snap.account, snap.currency, (*snap.collateral, btc), snap.positions, snap.venue
        )
        held = [btc]
    c = data.draw(st.sampled_from(held))
    return snap, c.asset, c.price


class TestProperties:
    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(accounts(), st.data())
    def test_adding_collateral_never_raises_the_ratio(
        self, snap: AccountSnapshot, data: st.DataObject
    ) -> None:
        """Test that adding any amount of any collateral never raises the margin ratio."""
        before = margin.report(snap).margin_ratio
        asset = data.draw(st.sampled_from([*(c.asset for c in snap.collateral), "ETH"]))
        extra = data.draw(st.floats(min_value=0.0, max_value=1e6))
        collateral = list(snap.collateral)
        for i, c in enumerate(collateral):
            if c.asset == asset:
                collateral[i] = Collateral(
                    c.asset, c.amount + extra, c.price, c.haircut, c.liability_markup
                )
                break
        else:
            collateral.append(Collateral("ETH", extra, 3_000.0, haircut=0.1))
        after = margin.report(
            AccountSnapshot(
                snap.account, snap.currency, tuple(collateral), snap.positions, snap.venue
            )
        ).margin_ratio
        assert after <= before * (1 + 1e-9) or math.isinf(before)

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(accounts(), st.data())
    def test_a_collateral_price_fall_never_lowers_the_ratio(
        self, snap: AccountSnapshot, data: st.DataObject
    ) -> None:
        """Test that a lower price of a held collateral asset (positions held) never lowers
        the ratio (no position settles in it here: every one settles in USDT)."""
        snap, asset, price = _with_volatile_collateral(snap, data)
        fall = data.draw(st.floats(min_value=0.0, max_value=0.99))
        before = margin.report(snap).margin_ratio
        after = margin.report(stress.with_prices(snap, {asset: price * (1 - fall)}))
        assert after.margin_ratio >= before * (1 - 1e-9)

    @settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(accounts())
    def test_the_solved_fall_liquidates(self, snap: AccountSnapshot) -> None:
        """Test that at the solved fall of each collateral asset the account is at ratio 1,
        and that no smaller fall on the way liquidates it."""
        for c in snap.collateral:
            if c.asset == snap.currency:
                continue
            fall = fall_to_liquidation(snap, c.asset)
            if fall is None:
                assert margin.report(moved(snap, c.asset, -0.999)).margin_ratio < 1.0
                continue
            if fall == 0.0:
                assert margin.report(snap).margin_ratio >= 1.0 - 1e-9
                continue
            assert margin.report(moved(snap, c.asset, fall)).margin_ratio >= 1.0 - 1e-6
            for step in (0.25, 0.5, 0.75, 0.999):
                assert margin.report(moved(snap, c.asset, fall * step)).margin_ratio < 1.0


def alert() -> AlertEvent:
    return AlertEvent(
        id="e.0",
        fingerprint="a/margin_ratio",
        account="a",
        rule="margin_ratio",
        kind="firing",
        level="critical",
        previous_level="ok",
        episode="e",
        started_at=10.0,
        at=12.5,
        value=0.7,
        previous_value=None,
        worst_value=0.7,
        worst_level="critical",
        threshold=0.7,
    )


class TestShownEverywhere:
    """The per-collateral fall and the model label in report --json, TUI, MQTT, phone text."""

    def test_report_json(self) -> None:
        """Test that the assessed report's JSON has the non-stable share and per-asset falls."""
        report = stress.assess(btc_backed())
        data = report_to_dict(report)
        risk = data["collateral_risk"]
        assert risk["non_stable_share"] == pytest.approx(14_900 / report.margin_balance)
        btc = risk["assets"][0]
        assert btc["asset"] == "BTC"
        assert btc["fall_to_liquidation"] == pytest.approx(-15_650 / 59_250)
        assert risk["assets"][1]["fall_to_liquidation"] is None
        assert data["model"] == "cross"
        assert report_to_dict(margin.report(btc_backed()))["collateral_risk"] is None

    def test_mqtt_state(self) -> None:
        """Test that the retained MQTT state carries the collateral risk and the model."""
        data = state_payload(stress.assess(btc_backed()), "ok")
        assert data["collateral_risk"]["assets"][0]["asset"] == "BTC"
        assert data["model"] == "cross"

    async def test_tui_keeps_the_last_solve(self) -> None:
        """Test that the dashboard says which BTC fall alone liquidates, and keeps saying it
        through reports that skip the solve."""
        sink = ConsoleSink(live=False)
        snap = btc_backed()
        await sink.on_report("a", stress.assess(snap), snap, 0.0)
        await sink.on_report("a", margin.report(snap), snap, 1.0)
        console = Console(record=True, width=160, file=io.StringIO())
        console.print(sink.render())
        text = console.export_text()
        assert f"a fall of {15_650 / 59_250:.1%} in BTC alone liquidates" in text
        assert "no fall of ETH alone liquidates" in text
        assert "cross margin, computed" in text

    def test_phone_text(self) -> None:
        """Test that the phone text names the fall of BTC alone that liquidates."""
        _title, body = render([build_message(alert(), stress.assess(btc_backed()))])
        assert f"a fall of {15_650 / 59_250:.1%} in BTC alone liquidates this account" in body
        assert "non-stable collateral" in body


class TestVenueModel:
    def venue_backed(self, ratio: float | None) -> AccountSnapshot:
        snap = btc_backed()
        return AccountSnapshot(
            snap.account,
            snap.currency,
            snap.collateral,
            snap.positions,
            snap.venue,
            VenueMargin(ratio, 900.0, 30_000.0, "accountMMRate"),
        )

    def test_the_venue_figure_is_the_ratio(self) -> None:
        """Test that a portfolio-margin snapshot reports the venue's ratio, labelled venue."""
        report = margin.report(self.venue_backed(0.03))
        assert report.model == "venue"
        assert report.margin_ratio == 0.03
        assert (report.maintenance_margin, report.margin_balance) == (900.0, 30_000.0)
        assert report.margin_level == pytest.approx(1 / 0.03)

    def test_without_a_venue_figure_it_says_estimate(self) -> None:
        """Test that a portfolio-margin account with no venue figure is labelled estimate,
        everywhere the ratio is shown."""
        report = margin.report(self.venue_backed(None))
        assert report.model == "estimate"
        assert report.margin_ratio == margin.report(btc_backed()).margin_ratio
        _title, body = render([build_message(alert(), report)])
        assert "ESTIMATE" in body
        assert state_payload(report, "ok")["model"] == "estimate"

    def test_what_ifs_drop_the_venue_figure(self) -> None:
        """Test that a what-if price is valued by the cross model, not the venue's figure."""
        snap = self.venue_backed(0.03)
        what_if = stress.with_prices(snap, {BTC: 45_000.0})
        assert what_if.venue_margin is None
        assert margin.report(what_if).model == "cross"

    def test_snapshot_file_keeps_it(self) -> None:
        """Test that the snapshot file round-trips the venue's figures."""
        snap = self.venue_backed(0.03)
        assert parse_snapshot(snapshot_to_dict(snap), "t").venue_margin == snap.venue_margin
