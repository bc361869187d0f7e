"""Where the sim's mark prices come from: a seeded scripted path, or a CSV replay. Pure.

`ScriptedPath` is the demo's market: every symbol follows a common market factor `m(t)`
raised to its beta (SOL falls harder than BTC), times a small mean-reverting noise of its
own. The factor follows keyframes of a sell-off and recovery, chosen by the sim so that the
account's margin ratio passes each default alert level (0.5 / 0.7 / 0.85) and comes back.
The noise is an Ornstein-Uhlenbeck process rather than a free random walk because a free
walk would wander off the script: with ratio = MM / margin balance the band between warning
and emergency is only a few percent of price wide. Prices depend only on the seed and the
step number, never on wall time, so a run is reproducible at any speed.

`load_replay` reads a CSV of prices for `--replay FILE`:

    ts,symbol,price            # header, exactly these three columns
    0,BTC/USDT:USDT,64000      # ts: seconds (any origin, never decreasing)
    0,ETH/USDT:USDT,3400       # symbol: ccxt unified symbol of a sim market
    1.5,BTC/USDT:USDT,63850.5  # price: positive number

Rows sharing a `ts` form one step. Blank lines and lines starting with `#` are skipped.
"""

from __future__ import annotations

import csv
import itertools
import math
import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from monitor.errors import UserError

__all__ = ["Keyframe", "ReplayStep", "ScriptedPath", "load_replay"]


@dataclass(frozen=True, slots=True)
class Keyframe:
    """The market factor `m` reached at sim time `t` (seconds); linear in between."""

    t: float
    m: float


@dataclass(frozen=True, slots=True)
class ReplayStep:
    """All prices of one timestamp of a replay file."""

    ts: float
    prices: tuple[tuple[str, float], ...]


class ScriptedPath:
    """Seeded prices per step: `price0 × m(t)^beta × exp(noise)`.

    Deterministic: step k always gives the same prices for the same seed, so tests can
    assert the whole path and the demo looks the same every time.
    """

    def __init__(
        self,
        start: Sequence[tuple[str, float, float]],
        keyframes: Sequence[Keyframe],
        *,
        tick_rate: float,
        seed: int,
        noise: float = 0.0008,
        reversion: float = 0.2,
    ) -> None:
        """`start` is (symbol, price0, beta) per market; `noise` the stationary log-sd."""
        self._start = tuple(start)
        self._keyframes = tuple(sorted(keyframes, key=lambda k: k.t))
        self._dt = 1.0 / tick_rate
        # OU per step: x' = x·(1 − θ·dt) + σ·sqrt(2θ·dt)·z keeps Var(x) = σ² stationary
        self._decay = max(0.0, 1.0 - reversion * self._dt)
        self._kick = noise * math.sqrt(max(0.0, 1.0 - self._decay**2))
        self._rng = random.Random(seed)  # noqa: S311 - a reproducible demo market, not a secret
        self._noise = [0.0] * len(self._start)
        self.step = 0

    @property
    def duration(self) -> float:
        """Sim seconds until the last keyframe (the script then holds its last factor)."""
        return self._keyframes[-1].t if self._keyframes else 0.0

    def factor(self, t: float) -> float:
        """The market factor at sim time `t`."""
        frames = self._keyframes
        if not frames:
            return 1.0
        if t <= frames[0].t:
            return frames[0].m
        for a, b in itertools.pairwise(frames):
            if t <= b.t:
                w = (t - a.t) / (b.t - a.t) if b.t > a.t else 1.0
                return a.m + w * (b.m - a.m)
        return frames[-1].m

    def next_prices(self) -> tuple[float, tuple[tuple[str, float], ...]]:
        """Advance one step; returns the sim time and every symbol's price."""
        t = self.step * self._dt
        m = self.factor(t)
        prices = []
        for i, (symbol, price0, beta) in enumerate(self._start):
            self._noise[i] = self._noise[i] * self._decay + self._kick * self._rng.gauss(0.0, 1.0)
            prices.append((symbol, price0 * m**beta * math.exp(self._noise[i])))
        self.step += 1
        return t, tuple(prices)


def load_replay(path: str | Path, symbols: Collection[str]) -> tuple[ReplayStep, ...]:
    """Parse a replay file; any bad row is one `UserError` naming the line and column."""
    name = Path(path).name
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file; pass an existing CSV to --replay") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read the replay file ({exc.__class__.__name__})") from None
    try:
        rows = [
            (n, row)
            for n, row in enumerate(csv.reader(text.splitlines()), start=1)
            if row and any(cell.strip() for cell in row) and not row[0].lstrip().startswith("#")
        ]
    except csv.Error as exc:  # a field over csv.field_size_limit() (128 KiB), a NUL byte
        raise UserError(
            f"{name}: not a replay CSV ({exc}); expected rows 'ts,symbol,price'"
        ) from None
    if not rows:
        raise UserError(f"{name}: empty replay file; expected a header 'ts,symbol,price'")
    header_line, header = rows[0]
    if [cell.strip().lower() for cell in header] != ["ts", "symbol", "price"]:
        raise UserError(
            f"{name}: line {header_line}: the header must be 'ts,symbol,price', "
            f"not '{','.join(header)}'"
        )
    steps: list[ReplayStep] = []
    current: list[tuple[str, float]] = []
    current_ts: float | None = None
    for line, row in rows[1:]:
        if len(row) != 3:
            raise UserError(
                f"{name}: line {line}: expected 3 columns (ts,symbol,price), got {len(row)}"
            )
        ts = _number(name, line, "ts", row[0])
        symbol = row[1].strip()
        if symbol not in symbols:
            known = ", ".join(sorted(symbols))
            raise UserError(
                f"{name}: line {line}, column symbol: '{symbol}' is not a market of the sim "
                f"account (known: {known})"
            )
        price = _number(name, line, "price", row[2])
        if price <= 0:
            raise UserError(f"{name}: line {line}, column price: {row[2].strip()} must be positive")
        if current_ts is not None and ts < current_ts:
            raise UserError(
                f"{name}: line {line}, column ts: {row[0].strip()} is earlier than the row "
                f"before it; sort the file by ts"
            )
        if current_ts is not None and ts != current_ts:
            steps.append(ReplayStep(current_ts, tuple(current)))
            current = []
        current_ts = ts
        current.append((symbol, price))
    if current_ts is None:
        raise UserError(f"{name}: no price rows after the header")
    steps.append(ReplayStep(current_ts, tuple(current)))
    return tuple(steps)


def _number(name: str, line: int, column: str, cell: str) -> float:
    try:
        value = float(cell.strip())
    except ValueError:
        raise UserError(
            f"{name}: line {line}, column {column}: '{cell.strip()}' is not a number"
        ) from None
    if not math.isfinite(value):
        raise UserError(
            f"{name}: line {line}, column {column}: {cell.strip()} is not a finite number"
        )
    return value
