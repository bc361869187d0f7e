"""What people write for a futures venue, and the ccxt exchange id they meant.

`AccountSettings.exchange` (config/settings.py) accepts a ccxt id or `sim`; anything else is
refused with the id to write instead, so a first config never fails later at connect time.
"""

from __future__ import annotations

import difflib
import re

__all__ = ["COMMON_NAMES", "known_exchange"]

# What people write for a futures venue -> ccxt's id (spelling-distance guesses get these
# wrong: "binance-futures" is closest to the spot-only "binanceus"). Keys: lowercase, letters
# and digits only. Checked against ccxt 4.5.90's `ccxt.exchanges` in tests/test_settings.py.
_BINANCE_USDM = ("binanceusdm", "ccxt's id for Binance USDⓈ-M futures")
_BINANCE_COINM = ("binancecoinm", "ccxt's id for Binance COIN-M futures")
_BYBIT = ("bybit", "one ccxt id for all of Bybit, futures included")
_OKX = ("okx", "one ccxt id for all of OKX, swaps included")
_MEXC = ("mexc", "one ccxt id for all of MEXC, futures included")
_BITGET = ("bitget", "one ccxt id for all of Bitget, futures included")
_KUCOIN = ("kucoinfutures", "ccxt's id for KuCoin futures")
_GATE = ("gate", "one ccxt id for all of Gate, futures included")
_KRAKEN = ("krakenfutures", "ccxt's id for Kraken futures")
_HYPERLIQUID = ("hyperliquid", "ccxt's id for Hyperliquid perps")
_BINGX = ("bingx", "one ccxt id for all of BingX, swaps included")
COMMON_NAMES: dict[str, tuple[str, str]] = {
    **dict.fromkeys(
        [
            "binancefutures",
            "binancefuture",
            "binanceusdmfutures",
            "binanceusdt",
            "binanceusds",
            "binanceusdsm",
            "binanceperp",
            "binanceperpetual",
            "binancelinear",
            "binanceum",
            "binancefapi",
            "fapi",
        ],
        _BINANCE_USDM,
    ),
    **dict.fromkeys(
        ["binancecoin", "binancecoinfutures", "binanceinverse", "binancecm", "binancedapi", "dapi"],
        _BINANCE_COINM,
    ),
    **dict.fromkeys(
        [
            "bybitfutures",
            "bybitlinear",
            "bybitperp",
            "bybitperpetual",
            "bybitusdt",
            "bybitunified",
            "bybituta",
            "bybitv5",
            "bybitinverse",
        ],
        _BYBIT,
    ),
    **dict.fromkeys(
        ["okex", "okxfutures", "okxswap", "okxperp", "okexfutures", "okex5", "okx5"], _OKX
    ),
    **dict.fromkeys(
        ["mexcfutures", "mexccontract", "mexcswap", "mexcperp", "mexcglobal", "mxc"], _MEXC
    ),
    **dict.fromkeys(["bitgetfutures", "bitgetmix", "bitgetswap", "bitgetperp"], _BITGET),
    **dict.fromkeys(["kucoinfuture", "kucoinperp", "kucoinswap"], _KUCOIN),
    **dict.fromkeys(["gateio", "gatefutures", "gateiofutures", "gateswap"], _GATE),
    **dict.fromkeys(["krakenfuture", "krakenperp"], _KRAKEN),
    **dict.fromkeys(["hyperliquidperp", "hyperliquidperps", "hl"], _HYPERLIQUID),
    **dict.fromkeys(["bingxfutures", "bingxswap", "bingxperp"], _BINGX),
}


def known_exchange(value: str) -> str:
    """`value` if it is a ccxt exchange id or `sim`; else a `ValueError` naming the id to write."""
    if value == "sim":
        return value
    import ccxt  # noqa: PLC0415 - 0.3 s import, paid only by configs with real venues

    known: list[str] = list(ccxt.exchanges)
    if value in known:
        return value
    key = re.sub(r"[^a-z0-9]", "", value.lower())
    common = COMMON_NAMES.get(key)
    if common is None and key in known:
        common = (key, "ccxt ids are lowercase, without separators")
    if common is not None:
        ccxt_id, what = common
        raise ValueError(
            f"'{value}' is not a ccxt exchange id; write exchange = \"{ccxt_id}\" ({what})"
        )
    close = difflib.get_close_matches(value.lower(), [*known, "sim"], n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else " (see ccxt.exchanges, or 'sim')"
    raise ValueError(f"'{value}' is not a ccxt exchange id{hint}")
