"""Fuzz targets and input strategies shared by tests/test_fuzz.py and bench/fuzz.py (issue 7).

Each target feeds one generated input to a real entry point and returns None when the input
was accepted or rejected the documented way; anything else raises. The documented rejection is
one exception type per entry point whose message is a single non-empty line:

- snapshot parsing (`monitor.snapshot.parse_snapshot`): `UserError`;
- payload normalisation (`monitor.sources.normalize`): `MalformedPayload`;
- config loading (`monitor.config.settings.load_settings` on a TOML file): `UserError`.

An accepted input must also be usable: a parsed snapshot gets a margin report and survives a
round trip through `snapshot_to_dict`; normalised positions and collateral hold only finite
numbers (NaN must never reach the risk maths).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from typing import Any

from hypothesis import strategies as st

from monitor.config.settings import load_settings
from monitor.core.margin.report import report
from monitor.errors import UserError
from monitor.report_json import snapshot_to_dict
from monitor.snapshot import parse_snapshot
from monitor.sources.normalize import (
    collateral_from_ccxt,
    mark_from_ticker,
    positions_from_ccxt,
    tiers_from_ccxt,
)
from monitor.venues.base import MalformedPayload
from tests.strategies import accounts

__all__ = [
    "BadRejection",
    "ConfigChecker",
    "check_config",
    "check_normalize",
    "check_snapshot",
    "config_inputs",
    "normalize_inputs",
    "snapshot_inputs",
    "targets",
]


class BadRejection(AssertionError):
    """A rejection of the documented type whose message is not one non-empty line."""


def _one_line(exc: BaseException) -> None:
    text = str(exc)
    if not text.strip() or "\n" in text or "\r" in text:
        raise BadRejection(f"{type(exc).__name__} message is not one line: {text!r}") from exc


# --- junk ---------------------------------------------------------------------------------

# Known crashers (issue 7 report): integers beyond float range made `float()` raise
# OverflowError in snapshot.py (fixed in eb8bc94) and still do in normalize.py `_number`; a
# key holding a control character was echoed raw into a "one-line" error (snapshot.py, fixed).
# `harsh=False` leaves them out so the suite stays green while bench/fuzz.py (harsh) keeps
# counting them.
_KEY_SAFE = st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"))


def _junk_scalars(harsh: bool) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.booleans(),
        st.just(math.nan),
        st.just(math.inf),
        st.just(-math.inf),
        st.floats(allow_nan=True, allow_infinity=True),
        st.floats(min_value=-1e6, max_value=-1e-9),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.just(10**400) if harsh else st.just(10**300),
        st.sampled_from(["", "NaN", "nan", "inf", "-1", "1e400", "abc", "0", "\n", "a\nb"]),
        st.text(max_size=12),
    )


def _keys(harsh: bool) -> st.SearchStrategy[str]:
    return st.text(max_size=10) if harsh else st.text(_KEY_SAFE, max_size=10)


def _junk(harsh: bool) -> st.SearchStrategy[Any]:
    return st.recursive(
        _junk_scalars(harsh),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(_keys(harsh), inner, max_size=3)
        ),
        max_leaves=6,
    )


@st.composite
def _mutated(draw: st.DrawFn, base: Any, harsh: bool) -> Any:
    """`base` with some leaves replaced by junk, some keys dropped or added."""
    if isinstance(base, dict):
        out = {}
        for key, value in base.items():
            # Hypothesis favours the ends of a range, so the rare branches sit in the middle.
            roll = draw(st.integers(0, 59))
            if roll == 29:
                continue  # drop the key
            out[key] = draw(_junk(harsh)) if roll == 30 else draw(_mutated(value, harsh))
        if draw(st.integers(0, 29)) == 15:
            out[draw(_keys(harsh))] = draw(_junk(harsh))
        return out
    if isinstance(base, list):
        items = [draw(_mutated(v, harsh)) for v in base]
        if items and draw(st.integers(0, 29)) == 15:
            items.append(items[0])  # a duplicate row
        return items
    return draw(_junk(harsh)) if draw(st.integers(0, 39)) == 20 else base


# --- snapshot parsing ---------------------------------------------------------------------


@st.composite
def snapshot_inputs(draw: st.DrawFn, harsh: bool = True) -> object:
    """Mostly mutated valid snapshot dicts; some arbitrary JSON-like values."""
    if draw(st.integers(0, 9)) == 5:
        return draw(_junk(harsh))
    base = json.loads(json.dumps(snapshot_to_dict(draw(accounts())), default=str))
    return draw(_mutated(base, harsh))


def check_snapshot(data: object) -> str:
    """Parse; on success report and round-trip. Returns 'accepted' or 'rejected'."""
    try:
        snap = parse_snapshot(data, "fuzz.json")
    except UserError as exc:
        _one_line(exc)
        return "rejected"
    report(snap)
    again = parse_snapshot(json.loads(json.dumps(snapshot_to_dict(snap))), "roundtrip")
    if again != snap:
        raise AssertionError(f"round trip changed the snapshot: {snap!r} -> {again!r}")
    return "accepted"


# --- payload normalisation ------------------------------------------------------------------

VENUES = (
    "binanceusdm",
    "bybit",
    "okx",
    "hyperliquid",
    "bingx",
    "mexc",
    "bitget",
    "deribit",
    "dydx",
    "weex",
    "kraken",
)
MARKETS: dict[str, dict[str, Any]] = {
    "BTC/USDT:USDT": {
        "contractSize": 1.0,
        "settle": "USDT",
        "quote": "USDT",
        "base": "BTC",
        "inverse": False,
        "linear": True,
        "limits": {"leverage": {"max": 125}},
    },
    "BTC/USD:BTC": {
        "contractSize": 100.0,
        "settle": "BTC",
        "quote": "USD",
        "base": "BTC",
        "inverse": True,
        "linear": False,
    },
}
INFO_KEYS = (
    "maintMargin",
    "positionAmt",
    "positionSide",
    "tradeMode",
    "mgnMode",
    "mmr",
    "keepMarginRate",
    "marginType",
    "isolatedMargin",
    "positionMM",
    "positionIM",
    "cum",
    "mmDeduction",
    "markPx",
    "fairPrice",
    "walletBalance",
)


def _position_row(symbol: str) -> dict[str, Any]:
    return {
        "symbol": symbol,
        "contracts": 0.5,
        "side": "long",
        "entryPrice": 60000.0,
        "markPrice": 61000.0,
        "contractSize": 1.0,
        "marginMode": "cross",
        "leverage": 10.0,
        "unrealizedPnl": 500.0,
        "initialMargin": 3050.0,
        "maintenanceMargin": 244.0,
        "collateral": 3550.0,
        "hedged": False,
        "info": {"maintMargin": "244.0", "positionAmt": "0.5", "positionSide": "BOTH"},
    }


def _balance() -> dict[str, Any]:
    return {
        "total": {"USDT": 10000.0, "BTC": 0.1},
        "info": {
            "assets": [{"asset": "USDT", "walletBalance": "10000"}],
            "result": {
                "list": [
                    {
                        "coin": [
                            {
                                "coin": "USDT",
                                "walletBalance": "10000",
                                "equity": "10000",
                                "usdValue": "10000",
                            }
                        ]
                    }
                ]
            },
            "data": [
                {
                    "details": [
                        {"ccy": "USDT", "cashBal": "10000", "eq": "10000", "eqUsd": "10000"}
                    ],
                    "currency": "USDT",
                    "cashBalance": "10000",
                }
            ],
            "crossMarginSummary": {"accountValue": "10000"},
        },
    }


def _tier_rows() -> list[dict[str, Any]]:
    return [
        {
            "minNotional": 0,
            "maxNotional": 50000,
            "maintenanceMarginRate": 0.004,
            "maxLeverage": 125,
            "info": {"cum": "0"},
        },
        {
            "minNotional": 50000,
            "maxNotional": 250000,
            "maintenanceMarginRate": 0.005,
            "maxLeverage": 100,
            "info": {"cum": "50"},
        },
    ]


@st.composite
def normalize_inputs(draw: st.DrawFn, harsh: bool = True) -> tuple[str, str, Any]:
    """(kind, venue, payload) for one of the four normalisation entry points."""
    venue = draw(st.sampled_from(VENUES))
    kind = draw(st.sampled_from(("positions", "collateral", "tiers", "ticker")))
    if draw(st.integers(0, 9)) == 5:
        return kind, venue, draw(_junk(harsh))
    if kind == "positions":
        symbols = draw(
            st.lists(st.sampled_from([*MARKETS, "DOGE/USDT:USDT", ""]), min_size=1, max_size=3)
        )
        rows = []
        for symbol in symbols:
            row = _position_row(symbol)
            row["side"] = draw(st.sampled_from(("long", "short", "both")))
            for key in draw(st.sets(st.sampled_from(INFO_KEYS), max_size=3)):
                row["info"][key] = draw(_junk_scalars(harsh))
            rows.append(row)
        return kind, venue, draw(_mutated(rows, harsh))
    if kind == "collateral":
        return kind, venue, draw(_mutated(_balance(), harsh))
    if kind == "tiers":
        return kind, venue, draw(_mutated(_tier_rows(), harsh))
    ticker = {"markPrice": 61000.0, "info": {"markPx": "61000"}}
    return kind, venue, draw(_mutated(ticker, harsh))


def _finite(obj: object, what: str) -> None:
    for name in getattr(obj, "__dataclass_fields__", {}):
        value = getattr(obj, name)
        if isinstance(value, float) and math.isnan(value):
            raise AssertionError(f"{what}.{name} is NaN in an accepted payload")
        if isinstance(value, tuple):
            for item in value:
                _finite(item, f"{what}.{name}")


def check_normalize(case: tuple[str, str, Any]) -> str:
    """Normalise; every accepted number must be NaN-free. Returns 'accepted' or 'rejected'."""
    kind, venue, payload = case
    try:
        if kind == "positions":
            for p in positions_from_ccxt(venue, payload, MARKETS, marks={"BTC/USDT:USDT": 1.0}):
                _finite(p, "position")
                if not (p.contracts > 0 and p.mark_price > 0 and math.isfinite(p.mark_price)):
                    raise AssertionError(f"accepted a position with bad size/mark: {p!r}")
        elif kind == "collateral":
            for c in collateral_from_ccxt(venue, payload, "USDT", {"BTC": 60000.0}):
                _finite(c, "collateral")
        elif kind == "tiers":
            for t in tiers_from_ccxt(venue, payload):
                _finite(t, "tier")
        else:
            mark = mark_from_ticker(venue, payload)
            if mark is not None and not (math.isfinite(mark) and mark > 0):
                raise AssertionError(f"mark_from_ticker returned {mark!r}")
    except MalformedPayload as exc:
        _one_line(exc)
        return "rejected"
    return "accepted"


# --- config loading -----------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        if isinstance(value, float) and math.isnan(value):
            return "nan"
        if isinstance(value, float) and math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value if v is not None) + "]"
    if isinstance(value, dict):
        return (
            "{"
            + ", ".join(
                f"{json.dumps(str(k))} = {_toml_value(v)}"
                for k, v in value.items()
                if v is not None
            )
            + "}"
        )
    return json.dumps(str(value))


def to_toml(doc: dict[str, Any]) -> str:
    """A small TOML writer: top-level keys as `key = value` (inline tables and arrays)."""
    return "".join(
        f"{json.dumps(str(k))} = {_toml_value(v)}\n" for k, v in doc.items() if v is not None
    )


_VALID_CONFIG: dict[str, Any] = {
    "shock_interval": 1.0,
    "accounts": [
        {
            "name": "main",
            "exchange": "binanceusdm",
            "poll_interval": 5.0,
            "stale_after": 30.0,
            "api_key": "k",
            "secret": "s",
            "ccxt": {"timeout": 10000},
        },
        {
            "name": "practice",
            "exchange": "sim",
            "sim": {"seed": 42, "speed": 2.0, "scenario": "selloff", "tick_rate": 10.0},
        },
    ],
    "alerts": {
        "warning": 0.5,
        "critical": 0.7,
        "emergency": 0.85,
        "band": 0.05,
        "shock_warning": 0.10,
        "shock_critical": 0.05,
        "shock_emergency": 0.02,
        "stale_level": "warning",
    },
    "mqtt": {"host": "127.0.0.1", "port": 1883, "prefix": "margin-monitor", "keepalive": 30},
}


@st.composite
def config_inputs(draw: st.DrawFn, harsh: bool = True) -> str:
    """TOML text: mostly a mutated valid config, sometimes broken syntax or raw text."""
    roll = draw(st.integers(0, 19))
    if roll == 9:
        return draw(st.text(max_size=60))
    text = to_toml(draw(_mutated(_VALID_CONFIG, harsh)))
    if roll == 10:
        cut = draw(st.integers(0, len(text)))
        return text[:cut]  # truncated file
    return text


class ConfigChecker:
    """Writes each input to one temp file and loads it (a file per input would be slow)."""

    def __init__(self) -> None:
        fd, self.path = tempfile.mkstemp(suffix=".toml", prefix="fuzz-config-")
        os.close(fd)
        # the environment would override the file; put it back in close()
        self._saved = {
            name: os.environ.pop(name)
            for name in list(os.environ)
            if name.startswith("MARGIN_MONITOR__") or name == "CREDENTIALS_DIRECTORY"
        }

    def __call__(self, text: str) -> str:
        with open(self.path, "w", encoding="utf-8", errors="surrogatepass") as fh:
            fh.write(text)
        try:
            load_settings(self.path)
        except UserError as exc:
            _one_line(exc)
            return "rejected"
        return "accepted"

    def close(self) -> None:
        os.unlink(self.path)
        os.environ.update(self._saved)


def check_config(text: str) -> str:
    """One-shot version of ConfigChecker (for tests)."""
    checker = ConfigChecker()
    try:
        return checker(text)
    finally:
        checker.close()


def targets(harsh: bool) -> dict[str, tuple[st.SearchStrategy[Any], Callable[[Any], str]]]:
    """name -> (inputs, check); `harsh` includes the known crashers (see `_junk_scalars`)."""
    return {
        "snapshot": (snapshot_inputs(harsh), check_snapshot),
        "normalize": (normalize_inputs(harsh), check_normalize),
        "config": (config_inputs(harsh), check_config),
    }
