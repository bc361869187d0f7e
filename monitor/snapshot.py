"""The snapshot file (docs/margin-math.md), read strictly; `report_json` writes it back.

Snapshot files come from people (bug reports, hand-made what-ifs) and from
`margin-monitor snapshot`; a wrong one must never produce a confident wrong number. So
every field is checked for type, range and spelling, and the first problem becomes one
sentence that names the field and says how to fix it. Field names are a public interface.
"""

from __future__ import annotations

import difflib
import json
import math
from typing import Any, Literal, NoReturn, cast

from monitor.core.model import (
    AccountSnapshot,
    Collateral,
    CollateralTier,
    Position,
    Tier,
    VenueMargin,
)
from monitor.errors import UserError

__all__ = ["load_snapshot", "parse_snapshot"]

_TOP = ("account", "currency", "venue", "collateral", "positions", "venue_margin")
_VENUE_MARGIN = ("margin_ratio", "maintenance_margin", "margin_balance", "source")
_COLLATERAL = (
    "asset",
    "amount",
    "price",
    "haircut",
    "liability_markup",
    "haircut_tiers",
    "tier_basis",
    "beta",
)
_POSITION = (
    "symbol",
    "side",
    "contracts",
    "contract_size",
    "entry_price",
    "mark_price",
    "margin_mode",
    "leverage",
    "settle",
    "inverse",
    "hedged",
    "unrealized_pnl",
    "initial_margin",
    "maintenance_margin",
    "mmr",
    "tiers",
    "isolated_margin",
    "beta",
    "liquidation_fee",
)
_TIER = ("max_notional", "mmr", "maintenance_amount", "imr")
_BAND = ("up_to", "ratio")


class _Reader:
    """Typed access to one JSON object, with errors that carry the field's path."""

    def __init__(self, origin: str, path: str, obj: object, known: tuple[str, ...]) -> None:
        self.origin = origin
        self.path = path
        if not isinstance(obj, dict):
            self.fail(f"is {_kind(obj)}, expected an object {{...}}")
        self.obj = cast("dict[str, Any]", obj)
        for key in self.obj:
            if key not in known:
                hint = difflib.get_close_matches(str(key), known, n=1)
                fix = f" (did you mean '{hint[0]}'?)" if hint else f"; known: {', '.join(known)}"
                self.fail(f"has unknown field {_quoted(key)}{fix}")

    def where(self, key: str | None = None) -> str:
        if key is None:
            return self.path or "snapshot"
        return f"{self.path}.{key}" if self.path else key

    def fail(self, message: str, key: str | None = None) -> NoReturn:
        raise UserError(f"{self.origin}: {self.where(key)} {message}")

    def has(self, key: str) -> bool:
        return self.obj.get(key) is not None

    def text(self, key: str, default: str | None = None) -> str:
        value = self.obj.get(key)
        if value is None:
            if default is not None:
                return default
            self.fail("is missing (a non-empty string)", key)
        if not isinstance(value, str) or not value.strip():
            self.fail(f"is {_kind(value)}, expected a non-empty string", key)
        return value

    def choice(self, key: str, options: tuple[str, ...], default: str | None = None) -> str:
        value = self.text(key, default)
        if value not in options:
            self.fail(f"is {_quoted(value)}, expected one of: {', '.join(options)}", key)
        return value

    def flag(self, key: str) -> bool:
        value = self.obj.get(key, False)
        if value is None:
            return False
        if not isinstance(value, bool):
            self.fail(f"is {_kind(value)}, expected true or false", key)
        return value

    def number(
        self,
        key: str,
        default: float | None = None,
        *,
        minimum: float | None = None,
        positive: bool = False,
        below: float | None = None,
        allow_inf: bool = False,
        why: str = "",
    ) -> float:
        value = self.obj.get(key)
        if value is None:
            if default is not None:
                return default
            self.fail("is missing (a number)", key)
        if allow_inf and value in ("inf", "Infinity"):
            return math.inf
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(f"is {_kind(value)}, expected a number", key)
        try:
            number = float(value)
        except OverflowError:  # a JSON integer of hundreds of digits
            self.fail("is an integer too large for a float, expected a realistic number", key)
        if math.isnan(number) or (math.isinf(number) and not allow_inf):
            self.fail(f"is {value}, expected a finite number", key)
        if positive and number <= 0:
            self.fail(f"is {_fmt(number)}, expected a number > 0{why}", key)
        if minimum is not None and number < minimum:
            self.fail(f"is {_fmt(number)}, expected a number ≥ {_fmt(minimum)}{why}", key)
        if below is not None and number >= below:
            self.fail(f"is {_fmt(number)}, expected a number < {_fmt(below)}{why}", key)
        return number

    def optional(self, key: str, **limits: Any) -> float | None:
        if self.obj.get(key) is None:
            return None
        return self.number(key, **limits)

    def items(self, key: str, required: bool = True) -> list[object]:
        value = self.obj.get(key)
        if value is None:
            if required:
                self.fail("is missing (a list, possibly empty [])", key)
            return []
        if not isinstance(value, list):
            self.fail(f"is {_kind(value)}, expected a list [...]", key)
        return cast("list[object]", value)


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _quoted(key: object) -> str:
    """A key as typed, quoted; control characters escaped so the error stays one line."""
    text = str(key)[:60]
    if text.isprintable():
        return f"'{text}'"
    return repr(text)


def _fmt(number: float) -> str:
    return f"{number:g}"


def load_snapshot(path: str) -> AccountSnapshot:
    """Read and validate a snapshot file; every problem is a one-line `UserError`."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file (give the path of a snapshot JSON file)") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: is not UTF-8 text (a snapshot is a JSON file)") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(
            f"{path}: is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    except RecursionError:
        raise UserError(f"{path}: JSON nested too deeply (a snapshot is 3 levels deep)") from None
    except ValueError as exc:  # an integer over 4 300 digits (sys.int_info)
        raise UserError(f"{path}: a number is too long ({_first_words(exc)})") from None
    try:
        # a lone surrogate ("\ud800") decodes, then fails wherever the text is printed
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UserError(
            f"{path}: a string holds an invalid character ({exc.object[exc.start]!a}); "
            "use valid UTF-8 text"
        ) from None
    return parse_snapshot(data, path)


def _first_words(exc: Exception) -> str:
    return str(exc).split(";")[0][:120]


def parse_snapshot(data: object, origin: str) -> AccountSnapshot:
    """Turn decoded JSON into an `AccountSnapshot`, or raise `UserError` naming the field."""
    top = _Reader(origin, "", data, _TOP)
    currency = top.text("currency")
    collateral = tuple(
        _collateral(_Reader(origin, f"collateral[{i}]", item, _COLLATERAL))
        for i, item in enumerate(top.items("collateral"))
    )
    listed: set[str] = set()
    for c in collateral:  # one pass: counting each asset in the list was quadratic
        if c.asset in listed:
            top.fail(f"lists asset '{c.asset}' twice (merge the balances)", "collateral")
        listed.add(c.asset)
    positions = tuple(
        _position(_Reader(origin, f"positions[{i}]", item, _POSITION))
        for i, item in enumerate(top.items("positions"))
    )
    seen: set[tuple[str, str]] = set()
    for i, p in enumerate(positions):
        where = _Reader(origin, f"positions[{i}]", {}, ())
        if p.key in seen:
            where.fail(f"repeats {p.symbol} {p.side} (one entry per symbol and side)")
        seen.add(p.key)
        settle = p.settle or currency
        if settle != currency and settle not in listed:
            where.fail(
                f"settles in {settle}, which has no price: add a collateral entry for {settle}",
                "settle",
            )
    return AccountSnapshot(
        account=top.text("account"),
        currency=currency,
        collateral=collateral,
        positions=positions,
        venue=top.text("venue") if top.has("venue") else None,
        venue_margin=_venue_margin(top) if top.has("venue_margin") else None,
    )


def _venue_margin(top: _Reader) -> VenueMargin:
    """A portfolio-margin account's own figures (docs/collateral.md); ratio null = none read."""
    r = _Reader(top.origin, "venue_margin", top.obj["venue_margin"], _VENUE_MARGIN)
    return VenueMargin(
        margin_ratio=r.optional("margin_ratio", minimum=0.0, allow_inf=True),
        maintenance_margin=r.optional("maintenance_margin"),
        margin_balance=r.optional("margin_balance"),
        source=r.text("source", ""),
    )


def _collateral(r: _Reader) -> Collateral:
    bands = tuple(
        CollateralTier(
            up_to=b.number("up_to", positive=True, allow_inf=True),
            ratio=b.number("ratio", minimum=0.0, why=" (a collateral value ratio, 0..1)"),
        )
        for b in (
            _Reader(r.origin, f"{r.path}.haircut_tiers[{i}]", item, _BAND)
            for i, item in enumerate(r.items("haircut_tiers", required=False))
        )
    )
    for i, band in enumerate(bands):
        if band.ratio > 1:
            r.fail(f"is {band.ratio:g}, expected at most 1", f"haircut_tiers[{i}].ratio")
        if i and band.up_to <= bands[i - 1].up_to:
            r.fail("must be greater than the band before it", f"haircut_tiers[{i}].up_to")
    return Collateral(
        asset=r.text("asset"),
        amount=r.number("amount"),
        price=r.number("price", 1.0, positive=True),
        haircut=r.number("haircut", 0.0, minimum=0.0, below=1.0000001, why=" (a fraction)"),
        liability_markup=r.number("liability_markup", 0.0, minimum=0.0),
        haircut_tiers=bands,
        tier_basis=cast(
            "Literal['amount', 'value']", r.choice("tier_basis", ("amount", "value"), "amount")
        ),
        beta=r.optional("beta"),
    )


def _position(r: _Reader) -> Position:
    side = r.choice("side", ("long", "short"))
    contracts = r.number(
        "contracts", minimum=0.0, why=" (sizes are unsigned: give side 'short' for a short)"
    )
    tiers = tuple(
        Tier(
            max_notional=t.number("max_notional", positive=True, allow_inf=True)
            if t.has("max_notional")
            else math.inf,
            mmr=t.number("mmr", minimum=0.0, below=1.0),
            maintenance_amount=t.number("maintenance_amount", 0.0, minimum=0.0),
            imr=t.optional("imr", minimum=0.0, below=1.0000001),
        )
        for t in (
            _Reader(r.origin, f"{r.path}.tiers[{i}]", item, _TIER)
            for i, item in enumerate(r.items("tiers", required=False))
        )
    )
    for i in range(1, len(tiers)):
        if tiers[i].max_notional <= tiers[i - 1].max_notional:
            r.fail(
                "must be greater than the tier before it (list tiers in ascending order)",
                f"tiers[{i}].max_notional",
            )
    return Position(
        symbol=r.text("symbol"),
        side=cast("Literal['long', 'short']", side),
        contracts=contracts,
        contract_size=r.number("contract_size", 1.0, positive=True),
        entry_price=r.number("entry_price", positive=True),
        mark_price=r.number("mark_price", positive=True),
        margin_mode=cast(
            "Literal['cross', 'isolated']",
            r.choice("margin_mode", ("cross", "isolated"), "cross"),
        ),
        leverage=r.optional("leverage", positive=True),
        settle=r.text("settle") if r.has("settle") else None,
        inverse=r.flag("inverse"),
        hedged=r.flag("hedged"),
        unrealized_pnl=r.optional("unrealized_pnl"),
        initial_margin=r.optional("initial_margin", minimum=0.0),
        maintenance_margin=r.optional("maintenance_margin", minimum=0.0),
        mmr=r.optional("mmr", minimum=0.0, below=1.0),
        tiers=tiers,
        isolated_margin=r.optional("isolated_margin", minimum=0.0),
        beta=r.number("beta", 1.0),
        liquidation_fee=r.optional("liquidation_fee", minimum=0.0, below=1.0),
    )
