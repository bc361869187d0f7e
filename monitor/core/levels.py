"""The alert levels and the one function that turns a value into a level.

Levels `ok < warning < critical < emergency`. The alert rules' levels and the ratio level the
daemon and the console show (`alert_config.ratio_level`) all come from `target_level`, so the
hysteresis is written once (docs/alerts.md); `level_exit` is its lower edge as one number.
"""

from __future__ import annotations

import math
from typing import Literal

__all__ = ["LEVELS", "Level", "level_exit", "level_rank", "target_level"]

Level = Literal["ok", "warning", "critical", "emergency"]
LEVELS: tuple[Level, ...] = ("ok", "warning", "critical", "emergency")
_RANK: dict[str, int] = {name: i for i, name in enumerate(LEVELS)}


def level_rank(level: str) -> int:
    """Position of a level in `LEVELS` (ok = 0); unknown names rank as ok."""
    return _RANK.get(level, 0)


def target_level(
    value: float, current: Level, thresholds: tuple[float | None, ...], band: float
) -> Level:
    """Hysteresis: the highest level entered (value ≥ threshold), or kept (≥ threshold − band).

    A level at or below the current one is kept while the value stays above its threshold
    minus the band; a level above the current one needs its threshold itself. NaN keeps the
    current level (no information is not good news).
    """
    if math.isnan(value):
        return current
    best = 0
    for i, threshold in enumerate(thresholds, start=1):
        if threshold is None:
            continue
        limit = threshold - band if i <= level_rank(current) else threshold
        if value >= limit:
            best = i
    return LEVELS[best]


def level_exit(level: Level, thresholds: tuple[float | None, ...], band: float) -> float:
    """The value below which `target_level` leaves `level` for a lower one.

    Its threshold minus the band (thresholds ascending, as settings.py validates them); -inf
    for ok, which nothing lies below, and +inf for a level whose threshold is off, which
    `target_level` never keeps. For a caller that must test many values against one level
    with a float compare (the daemon's per-tick check, daemon/loop.py `_alarm`);
    tests/test_rules.py holds the two to the same answer.
    """
    rank = level_rank(level)
    if rank == 0:
        return -math.inf
    threshold = thresholds[rank - 1]
    return math.inf if threshold is None else threshold - band
