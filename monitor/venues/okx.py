"""OKX v5 (`okx`).

Sources: www.okx.com/docs-v5 (account/positions, account/balance, account/config,
public/discount-rate-interest-free-quota), OKX help 360054690531, docs/venues.md and
docs/collateral.md.

- **Collateral.** `GET /api/v5/account/config` (`privateGetAccountConfig`) `acctLv`: 2
  single-currency, 3 multi-currency (discount-rate tiers read), 4 portfolio margin.
- **Ratio direction.** `mgnRatio` is equity / MM (a margin level): stored inverted.
- **Tiers** are in contracts, not notional (margin-math §3.1): the reported `mmr` drives
  the live ratio and its implied rate the what-ifs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from monitor.venues import base


def wallets(info: base.Json) -> Iterable[tuple[str, float, float | None]]:
    """OKX `/api/v5/account/balance` details: `cashBal` (excludes UPL), price `eqUsd / eq`."""
    for account in base.rows(info.get("data")):
        for row in base.rows(account.get("details")):
            eq = base.as_float(row.get("eq") or 0, "eq")
            eq_usd = base.as_float(row.get("eqUsd") or 0, "eqUsd")
            yield (
                str(row.get("ccy")),
                base.as_float(row.get("cashBal"), "cashBal"),
                (eq_usd / eq if eq else None),
            )


#: OKX `acctLv` (GET /api/v5/account/config): 2 single-currency margin, 3 multi-currency
#: margin, 4 portfolio margin (1 is spot only: no derivatives to margin).
_MODES: dict[str, base.Mode] = {"2": "single_asset", "3": "multi_assets", "4": "portfolio"}


def _data(answer: object, where: str) -> list[Mapping[str, Any]]:
    return base.answer_rows(answer.get("data") if isinstance(answer, Mapping) else None, where)


async def collateral_rules(exchange: Any, now: float) -> base.CollateralRules:
    """OKX account level (`privateGetAccountConfig`) and, in multi-currency margin, each
    currency's discount-rate tiers (`publicGetPublicDiscountRateInterestFreeQuota`, GET
    /api/v5/public/discount-rate-interest-free-quota: `details[].maxAmt` in coin units, ""
    for no cap, `discountRate`), applied marginally per tier (OKX help 360054690531:
    discounted equity = Σ currency equity × discount rate × USD price)."""
    accounts = _data(await exchange.privateGetAccountConfig(), "okx account config")
    level = str(accounts[0].get("acctLv")) if accounts else ""
    if level not in _MODES:
        raise base.MalformedPayload(f"okx account config: acctLv {level!r} is not 2, 3 or 4")
    if _MODES[level] != "multi_assets":
        return base.CollateralRules(exchange.id, _MODES[level], {}, now)
    assets: dict[str, base.AssetRule] = {}
    answer = await exchange.publicGetPublicDiscountRateInterestFreeQuota()
    for row in _data(answer, "okx discount rates"):
        ccy = str(row.get("ccy"))
        bands = base.haircut_bands(
            row.get("details"), "maxAmt", "discountRate", f"okx discount rates {ccy}"
        )
        assets[ccy] = base.AssetRule(ccy, haircut_tiers=bands)
    return base.CollateralRules(exchange.id, "multi_assets", assets, now)


async def trade_permission(exchange: Any, balance: Mapping[str, Any]) -> str:
    answer = await exchange.privateGetAccountConfig()
    perm = str((answer.get("data") or [{}])[0].get("perm", ""))
    return base.CAN_TRADE if "trade" in perm else f"read-only (perm={perm!r})"


def figures(venue: str, info: object) -> base.VenueFigures | None:
    """account/balance `mgnRatio` = adjEq / (MM + fees), the inverse direction (a margin
    level, margin-math §0): stored inverted; `mmr` is the MM, `adjEq` the equity."""
    if not isinstance(info, Mapping):
        return None
    account = base.rows(info["data"])[0]
    level = base.as_float(account["mgnRatio"], "mgnRatio") if account.get("mgnRatio") else None
    return base.VenueFigures(
        venue,
        (1.0 / level) if level else None,
        base.as_float(account["mmr"], "mmr") if account.get("mmr") else None,
        base.as_float(account["adjEq"], "adjEq") if account.get("adjEq") else None,
        "1/mgnRatio",
    )


VENUE = base.Venue(
    ("okx",),
    "www.okx.com/docs-v5/en",
    # position tiers are in contracts, not notional (margin-math §3.1): the reported `mmr`
    # drives the live ratio and its implied rate the what-ifs
    tiers_in_contracts=True,
    balance=base.BalanceQuirks(base.mapping_wallets(wallets), figures),
    account=base.AccountQuirks(collateral_rules, trade_permission=trade_permission),
)
