"""What the alert rules are configured with and named by: thresholds, rule names, the ratio
level. Pure; kept apart from the state machine (`core/rules.py`) because settings, sinks and
the daemon read these without running any rule."""

from __future__ import annotations

import math
from dataclasses import dataclass

from monitor.core.levels import Level, target_level
from monitor.core.model import MarginReport

__all__ = [
    "RULE_ACTION_REJECTED",
    "RULE_MARGIN",
    "RULE_MODEL_DRIFT",
    "RULE_SHOCK",
    "RULE_SOURCE_DOWN",
    "AlertConfig",
    "ratio_level",
    "shock_fraction",
    "stale_rule",
]

RULE_MARGIN = "margin_ratio"
RULE_SHOCK = "shock_to_liquidation"
RULE_SOURCE_DOWN = "source_down"
#: A venue refused a protective order (docs/actions.md): an alert, never a retry loop.
RULE_ACTION_REJECTED = "action_rejected"
RULE_MODEL_DRIFT = "model_drift"


def stale_rule(kind: str) -> str:
    """Rule name of the staleness alert for one data kind (`prices`, `positions`, ...)."""
    return f"stale_{kind}"


@dataclass(frozen=True, slots=True)
class AlertConfig:
    """Thresholds and timing; settings.py validates the user's values and builds this.

    Ratio thresholds are margin ratios (0 safe, 1 liquidation). Shock thresholds are
    fractions of a uniform price move that would liquidate (0.10 = "a 10 % move liquidates
    you"); None disables that level. Times are seconds; `repeat_every` <= 0 never repeats.
    """

    warning: float = 0.5
    critical: float = 0.7
    emergency: float = 0.85
    band: float = 0.05
    repeat_every: float = 3600.0
    hold_for: float = 0.0
    shock_warning: float | None = 0.10
    shock_critical: float | None = 0.05
    shock_emergency: float | None = 0.02
    shock_band: float = 0.01
    stale_level: Level = "warning"
    source_down_level: Level = "critical"
    action_rejected_level: Level = "critical"

    def ratio_thresholds(self) -> tuple[float | None, float | None, float | None]:
        """Entry thresholds of warning, critical, emergency on the margin ratio."""
        return (self.warning, self.critical, self.emergency)

    def shock_thresholds(self) -> tuple[float | None, float | None, float | None]:
        """Entry thresholds on the *negated* shock, so that higher is worse as for ratios."""
        return tuple(  # type: ignore[return-value]
            None if t is None else -t
            for t in (self.shock_warning, self.shock_critical, self.shock_emergency)
        )


def ratio_level(ratio: float, current: Level, config: AlertConfig) -> Level:
    """The ratio level after `ratio`: hysteresis only (no hold_for, no lifecycle, no state
    kept across restarts).

    Not the margin alert's level (`_step_threshold`), which enters a higher level only after
    `hold_for` and continues from the stored state: the daemon needs the ratio level at
    once, to report a crossing tick before any hold starts and to show where the ratio sits
    (daemon/loop.py, "levels"); with `hold_for` = 0 and no restart the two agree.
    """
    return target_level(ratio, current, config.ratio_thresholds(), config.band)


def shock_fraction(report: MarginReport) -> float | None:
    """The smallest |move| that liquidates; inf when none does; None when not assessed."""
    shock = report.shock_to_liquidation
    if shock is None:
        return None
    moves = [abs(m) for m in (shock.down, shock.up) if m is not None]
    return min(moves) if moves else math.inf
