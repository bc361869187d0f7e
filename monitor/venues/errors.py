"""Venue errors the shell catches, without making a sim-only daemon import ccxt.

`import ccxt` loads every exchange class ccxt ships: about 65 MB of RSS and 0.3 s, before
a single account is watched (RSS <= 100 MB on the sim, docs/benchmarks.md). The built-in sim
venue only needs ccxt's error *vocabulary*, so it raises the look-alike classes below, and
the executor and backstop catch `catching(...)`: the classes of that name here plus ccxt's
own, when ccxt has been imported. An exception of a ccxt class cannot exist before ccxt is
imported, so an empty ccxt side loses nothing.

The names and the hierarchy are ccxt's (ccxt/base/errors.py, 4.5.90), so `type(exc).__name__`
reads the same in the audit trail whichever side raised it.
"""

from __future__ import annotations

import sys

__all__ = [
    "BadRequest",
    "BadSymbol",
    "BaseError",
    "ExchangeError",
    "InsufficientFunds",
    "InvalidOrder",
    "NetworkError",
    "OrderNotFound",
    "RequestTimeout",
    "catching",
]


class BaseError(Exception):
    """Root of the sim's venue errors (ccxt.BaseError)."""


class ExchangeError(BaseError):
    """The venue answered and refused (ccxt.ExchangeError)."""


class BadRequest(ExchangeError):
    """A request the venue cannot take as sent (ccxt.BadRequest)."""


class BadSymbol(BadRequest):
    """No such market (ccxt.BadSymbol)."""


class InsufficientFunds(ExchangeError):
    """Not enough margin for the order (ccxt.InsufficientFunds)."""


class InvalidOrder(ExchangeError):
    """An order the venue rejects: size, side, reduce-only (ccxt.InvalidOrder)."""


class OrderNotFound(InvalidOrder):
    """No such order, or no longer open (ccxt.OrderNotFound)."""


class NetworkError(BaseError):
    """The answer did not arrive (ccxt.NetworkError)."""


class RequestTimeout(NetworkError):
    """The answer did not arrive in time (ccxt.RequestTimeout)."""


_OWN: dict[str, type[BaseError]] = {
    cls.__name__: cls
    for cls in (
        BaseError,
        ExchangeError,
        BadRequest,
        BadSymbol,
        InsufficientFunds,
        InvalidOrder,
        OrderNotFound,
        NetworkError,
        RequestTimeout,
    )
}


def catching(*names: str) -> tuple[type[BaseException], ...]:
    """The classes called `names`: ours, and ccxt's once ccxt is loaded (for `except`)."""
    ccxt = sys.modules.get("ccxt")
    own = tuple(_OWN[name] for name in names)
    if ccxt is None:
        return own
    return own + tuple(getattr(ccxt, name) for name in names)
