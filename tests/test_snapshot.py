"""monitor.snapshot: the file contract, read strictly and written back faithfully."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.core.margin.report import report
from monitor.errors import UserError
from monitor.report_json import report_to_dict, snapshot_to_dict
from monitor.snapshot import load_snapshot, parse_snapshot
from tests.strategies import accounts

EXAMPLES = Path(__file__).resolve().parent.parent / "config" / "examples"


def good() -> dict[str, Any]:
    return {
        "account": "a",
        "currency": "USDT",
        "collateral": [{"asset": "USDT", "amount": 1000.0}],
        "positions": [
            {
                "symbol": "BTC/USDT:USDT",
                "side": "long",
                "contracts": 0.1,
                "entry_price": 60000.0,
                "mark_price": 61000.0,
                "leverage": 10,
            }
        ],
    }


def error_of(data: object) -> str:
    with pytest.raises(UserError) as info:
        parse_snapshot(data, "snap.json")
    message = str(info.value)
    assert "\n" not in message
    return message


class TestParse:
    def test_examples_parse(self) -> None:
        """Test that every shipped example snapshot is valid."""
        files = sorted(EXAMPLES.glob("*.json"))
        assert files
        for path in files:
            assert load_snapshot(str(path)).account

    @pytest.mark.parametrize(
        ("mutate", "expected"),
        [
            (lambda d: d.pop("currency"), "snap.json: currency is missing"),
            (
                lambda d: d["positions"][0].update(contracts=-1),
                "positions[0].contracts is -1, expected a number ≥ 0",
            ),
            (
                lambda d: d["positions"][0].update(side="buy"),
                "positions[0].side is 'buy', expected one of: long, short",
            ),
            (
                lambda d: d["positions"][0].update(mark_price=float("nan")),
                "positions[0].mark_price is nan, expected a finite number",
            ),
            (
                lambda d: d["positions"][0].update(entry_price="60000"),
                "positions[0].entry_price is the string '60000', expected a number",
            ),
            (
                lambda d: d["positions"][0].update(leverage=True),
                "positions[0].leverage is the boolean true, expected a number",
            ),
            (
                lambda d: d["positions"][0].update(mark_prise=1),
                "positions[0] has unknown field 'mark_prise' (did you mean 'mark_price'?)",
            ),
            (
                lambda d: d["collateral"][0].update(price=0),
                "collateral[0].price is 0, expected a number > 0",
            ),
            (lambda d: d.update(positions={}), "positions is an object, expected a list"),
            (
                lambda d: d["positions"][0].update(settle="BTC"),
                "positions[0].settle settles in BTC, which has no price",
            ),
            (
                lambda d: d["positions"].append(dict(d["positions"][0])),
                "positions[1] repeats BTC/USDT:USDT long",
            ),
            (
                lambda d: d["positions"][0].update(
                    tiers=[{"max_notional": 100, "mmr": 0.01}, {"max_notional": 50, "mmr": 0.02}]
                ),
                "positions[0].tiers[1].max_notional must be greater than the tier before it",
            ),
            (
                lambda d: d["positions"][0].update(margin_mode="portfolio"),
                "positions[0].margin_mode is 'portfolio', expected one of: cross, isolated",
            ),
        ],
    )
    def test_bad_fields_name_the_field(self, mutate: Any, expected: str) -> None:
        """Test that each bad field gives one line naming the field and what is expected."""
        data = good()
        mutate(data)
        assert expected in error_of(data)

    def test_not_an_object(self) -> None:
        """Test that a JSON list at the top level is refused in one line."""
        assert error_of([1, 2]) == "snap.json: snapshot is a list, expected an object {...}"

    def test_files(self, tmp_path: Path) -> None:
        """Test missing, non-JSON and truncated files give one-line errors."""
        with pytest.raises(UserError, match="no such file"):
            load_snapshot(str(tmp_path / "nope.json"))
        bad = tmp_path / "bad.json"
        bad.write_text('{"account": "a", "currency": ')
        with pytest.raises(UserError, match=r"is not valid JSON \(line 1"):
            load_snapshot(str(bad))

    @settings(max_examples=100, deadline=None)
    @given(accounts())
    def test_round_trip(self, s: Any) -> None:
        """Test that writing a snapshot and reading it back gives the same snapshot."""
        text = json.dumps(snapshot_to_dict(s), allow_nan=False)
        assert parse_snapshot(json.loads(text), "rt") == s

    @settings(max_examples=300, deadline=None)
    @given(
        st.recursive(
            st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=5),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(
                    st.sampled_from(
                        [
                            "account",
                            "currency",
                            "collateral",
                            "positions",
                            "asset",
                            "amount",
                            "symbol",
                            "side",
                            "contracts",
                            "x",
                        ]
                    ),
                    inner,
                    max_size=5,
                )
            ),
            max_leaves=20,
        )
    )
    def test_garbage_never_crashes(self, data: object) -> None:
        """Test that arbitrary JSON-like input is either a snapshot or a one-line UserError."""
        message = ""
        try:
            parse_snapshot(data, "fuzz")
        except UserError as exc:
            message = str(exc)
        assert "\n" not in message


class TestReportJson:
    def test_infinite_ratio_is_the_string_inf(self) -> None:
        """Test that an infinite ratio is written as "inf" and the JSON is strict."""
        data = good()
        data["collateral"][0]["amount"] = 10.0
        data["positions"][0]["mark_price"] = 50000.0
        out = report_to_dict(report(parse_snapshot(data, "x")))
        assert out["margin_ratio"] == "inf"
        json.dumps(out, allow_nan=False)

    def test_fields_of_the_contract(self) -> None:
        """Test that the report carries every field docs/margin-math.md promises."""
        out = report_to_dict(report(parse_snapshot(good(), "x")))
        for key in (
            "account",
            "currency",
            "wallet_balance",
            "unrealized_pnl",
            "margin_balance",
            "initial_margin",
            "maintenance_margin",
            "margin_ratio",
            "margin_level",
            "free_collateral",
            "liquidated",
            "shock_to_liquidation",
            "positions",
        ):
            assert key in out
        for key in (
            "symbol",
            "side",
            "margin_mode",
            "notional",
            "unrealized_pnl",
            "initial_margin",
            "maintenance_margin",
            "margin_ratio",
            "liquidation_price",
        ):
            assert key in out["positions"][0]
        assert math.isclose(out["unrealized_pnl"], 100.0)
