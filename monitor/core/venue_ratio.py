"""The venue's own margin ratio beside ours: drift between the two, and which one is used.

Pure (no I/O, no clock). Where a read returns the venue's account ratio (Binance
totalMaintMargin / totalMarginBalance, Bybit accountMMRate, OKX 1/mgnRatio, Hyperliquid,
Bitget), each read is a check of our model: `observe` compares the two figures of the same
read. Our model can be wrong (a tier table changed, a haircut we do not know, a mode we
misread); the venue's figure is what liquidates. So (issue 11 §4):

- a relative drift above `tolerance` on two reads in a row starts a `model_drift` episode
  (one read within tolerance ends it): one odd read is noise, two are a model problem;
- the ratio alerts and actions use never understates the venue's own figure: with
  `ratio_source = "worst"` (default) it is the larger of ours and the venue's last figure
  carried forward by our model's change since that read (`carried`), `"model"` is ours
  alone, `"venue"` the carried venue figure alone (ours where the venue reports none).

Carrying forward is multiplicative (venue × ours_now / ours_at_read): a model that is off by
a constant factor (a wrong MMR) stays off by the same factor between reads, so the venue's
figure moves with the market as ours does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

from monitor.core.model import MarginReport

__all__ = [
    "RATIO_SOURCES",
    "RatioSource",
    "VenueAnchor",
    "carried",
    "observe",
    "relative_drift",
    "used_ratio",
    "with_venue",
]

RatioSource = Literal["worst", "model", "venue"]
RATIO_SOURCES: tuple[RatioSource, ...] = ("worst", "model", "venue")
#: Reads in a row whose drift exceeds the tolerance before `model_drift` fires.
STRIKES = 2


@dataclass(frozen=True, slots=True)
class VenueAnchor:
    """The venue's ratio and ours on the same read, and the drift episode so far."""

    venue_ratio: float
    model_ratio: float
    strikes: int = 0
    drifting: bool = False


def relative_drift(model: float, venue: float) -> float | None:
    """(ours − venue's) / venue's; None where it means nothing (a zero or infinite figure)."""
    if not (math.isfinite(model) and math.isfinite(venue)) or venue == 0.0:
        return None
    return (model - venue) / venue


def observe(
    anchor: VenueAnchor | None, model: float, venue: float, tolerance: float
) -> tuple[VenueAnchor, bool | None]:
    """Take one read's pair of figures; the flag says a drift episode started (True) or
    ended (False), None when nothing changed."""
    drift = relative_drift(model, venue)
    off = drift is not None and abs(drift) > tolerance
    if not off and (math.isinf(model) != math.isinf(venue)):
        off = True  # one side says liquidated, the other does not: as wrong as it gets
    strikes = (anchor.strikes + 1 if anchor is not None else 1) if off else 0
    was = anchor.drifting if anchor is not None else False
    drifting = strikes >= STRIKES or (was and off)
    change = None if drifting == was else drifting
    return VenueAnchor(venue, model, strikes, drifting), change


def carried(anchor: VenueAnchor, model_now: float) -> float:
    """The venue's last figure moved by our model's change since that read."""
    if anchor.model_ratio > 0.0 and math.isfinite(anchor.model_ratio):
        if math.isinf(model_now):
            return math.inf
        return anchor.venue_ratio * (model_now / anchor.model_ratio)
    return anchor.venue_ratio + (model_now - anchor.model_ratio)


def used_ratio(model_now: float, anchor: VenueAnchor | None, source: RatioSource) -> float:
    """The ratio alerts and actions use (see the module docstring)."""
    if anchor is None or source == "model":
        return model_now
    venue_now = carried(anchor, model_now)
    if source == "venue":
        return venue_now
    return max(model_now, venue_now)


def with_venue(
    report: MarginReport, anchor: VenueAnchor | None, source: RatioSource
) -> MarginReport:
    """The report with `margin_ratio` (and its inverse `margin_level`) the used ratio, and
    both figures beside it: `model_ratio` ours, `venue_ratio` the venue's carried forward."""
    model = report.margin_ratio
    if anchor is None and report.model_ratio == model and report.venue_ratio is None:
        return report  # already so (margin.report's own): no copy per report
    venue = carried(anchor, model) if anchor is not None else None
    used = used_ratio(model, anchor, source)
    level = report.margin_level if used == model else math.inf if used == 0.0 else 1.0 / used
    return replace(
        report, margin_ratio=used, margin_level=level, model_ratio=model, venue_ratio=venue
    )
