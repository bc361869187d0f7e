"""Property fuzzing of snapshot parsing, payload normalisation and config loading (issue 7).

A small count per run here; bench/fuzz.py runs >= 100 000 inputs with the known crashers
included. Each test fails on anything other than the documented one-line rejection.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from monitor.errors import UserError
from monitor.snapshot import parse_snapshot
from monitor.sources.normalize import positions_from_ccxt, tiers_from_ccxt
from monitor.venues.base import MalformedPayload
from tests.faults.fuzz_targets import (
    MARKETS,
    ConfigChecker,
    check_normalize,
    check_snapshot,
    config_inputs,
    normalize_inputs,
    snapshot_inputs,
)

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def config_checker() -> Iterator[ConfigChecker]:
    checker = ConfigChecker()
    yield checker
    checker.close()


class TestSnapshotParsing:
    @FUZZ
    @given(snapshot_inputs(harsh=True))
    def test_accepts_or_rejects_in_one_line(self, data: object) -> None:
        """Test that parse_snapshot accepts (then reports and round-trips) or says one line."""
        assert check_snapshot(data) in ("accepted", "rejected")

    def test_integer_beyond_float_range(self) -> None:
        """Test that a 400-digit integer amount is a one-line UserError, not OverflowError."""
        data: dict[str, Any] = {
            "account": "a",
            "currency": "USDT",
            "positions": [],
            "collateral": [{"asset": "USDT", "amount": 10**400}],
        }
        with pytest.raises(UserError, match="amount"):
            parse_snapshot(data, "big.json")

    def test_control_character_in_unknown_key(self) -> None:
        """Test that an unknown key holding a line break still gives a one-line error."""
        data = {
            "account": "a",
            "currency": "USDT",
            "positions": [],
            "collateral": [],
            "bad\rkey": 1,
        }
        with pytest.raises(UserError) as info:
            parse_snapshot(data, "cr.json")
        assert "\r" not in str(info.value)

    def test_control_character_in_a_choice(self) -> None:
        """Test that a side holding a line break is echoed escaped (found by bench/fuzz.py)."""
        position = {"symbol": "BTC/USDT:USDT", "side": "a\nb", "contracts": 1, "mark_price": 1}
        data = {"account": "a", "currency": "USDT", "positions": [position], "collateral": []}
        with pytest.raises(UserError) as info:
            parse_snapshot(data, "nl.json")
        message = str(info.value)
        assert "\n" not in message
        assert "positions[0].side is 'a\\nb', expected one of: long, short" in message


class TestNormalisation:
    @FUZZ
    @given(normalize_inputs(harsh=False))
    def test_accepts_finite_or_rejects_in_one_line(self, case: tuple[str, str, Any]) -> None:
        """Test that normalisation yields NaN-free model objects or one MalformedPayload line."""
        assert check_normalize(case) in ("accepted", "rejected")

    def test_nan_mark_is_rejected(self) -> None:
        """Test that a NaN mark price is refused rather than passed to the risk maths."""
        row = {
            "symbol": "BTC/USDT:USDT",
            "contracts": 1.0,
            "side": "long",
            "entryPrice": 100.0,
            "markPrice": math.nan,
        }
        with pytest.raises(MalformedPayload, match="markPrice"):
            positions_from_ccxt("binanceusdm", [row], MARKETS)

    def test_integer_beyond_float_range(self) -> None:
        """Test that a 400-digit integer tier bound is MalformedPayload, not OverflowError."""
        rows = [{"maxNotional": 10**400, "maintenanceMarginRate": 0.004}]
        with pytest.raises(MalformedPayload, match="maxNotional"):
            tiers_from_ccxt("binanceusdm", rows)


class TestConfigLoading:
    @FUZZ
    @given(config_inputs(harsh=False))
    def test_accepts_or_rejects_in_one_line(self, config_checker: ConfigChecker, text: str) -> None:
        """Test that load_settings on a mutated TOML file loads or raises one UserError line."""
        assert config_checker(text) in ("accepted", "rejected")
