"""The `[actions]` configuration section: protective reduce-only orders (docs/actions.md).

Kept apart from the planner (`actions.py`, pure) and the executor (`executor.py`, I/O) so that
loading a configuration imports neither. Safe by default: `enabled = false` plans, logs and
audits what it *would* do, and sends nothing to a live venue.
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["ActionsSettings", "StopLossSettings"]

ActionLevel = Literal["warning", "critical", "emergency"]
Policy = Literal["largest_mm_contributor", "worst_pnl", "proportional"]


class StopLossSettings(BaseModel):
    """`[actions.stop_loss]`: one exchange-resident reduce-only stop per position.

    It is the backstop that still protects the account while the daemon is down
    (docs/actions.md): placed `distance` (a fraction of the mark) before the liquidation
    price, and replaced only when the liquidation price moves by more than `move_step`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    distance: float = Field(
        default=0.02, gt=0, lt=0.5, description="fraction of mark before liquidation"
    )
    move_step: float = Field(
        default=0.005, gt=0, lt=0.5, description="relative move that replaces a stop"
    )
    working_type: Literal["MARK_PRICE", "CONTRACT_PRICE"] = "MARK_PRICE"


class ActionsSettings(BaseModel):
    """The `[actions]` section. Every cap is per account."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(
        default=False, description="send orders to live venues; false = dry run ('would have')"
    )
    simulated: bool = Field(
        default=True,
        description="accounts on the built-in sim venue act even when enabled = false "
        "(fake money; this is what the no-config demo shows)",
    )
    paused: bool = Field(default=False, description="kill switch: plan and audit, never send")
    accounts: list[str] | None = Field(default=None, description="accounts to protect (unset: all)")
    action_level: ActionLevel | float = Field(
        default="critical", description="alert level name, or a margin ratio in (0, 1]"
    )
    target_ratio: float = Field(default=0.4, gt=0, lt=1)
    policy: Policy = "largest_mm_contributor"
    priority: list[str] = Field(default_factory=list, description="symbols to cut first")
    max_fraction_per_step: float = Field(default=0.5, gt=0, le=1)
    max_notional_per_step: float | None = Field(default=None, gt=0)
    max_notional_per_day: float | None = Field(default=None, gt=0)
    cooldown: float = Field(default=10.0, ge=0, description="seconds between protective steps")
    order_timeout: float = Field(
        default=5.0, gt=0, le=120, description="seconds to wait for a fill"
    )
    min_order_interval: float = Field(
        default=0.2, ge=0, description="rate limit: seconds between two orders of one account"
    )
    fee_rate: float = Field(
        default=0.0005, ge=0, le=0.01, description="taker fee assumed in the solve"
    )
    stop_loss: StopLossSettings = Field(default_factory=StopLossSettings)

    @model_validator(mode="after")
    def _target_below_level(self) -> Self:
        level = self.action_level
        if isinstance(level, float) and not 0 < level <= 1:
            raise ValueError(f"action_level {level} must be a ratio in (0, 1] or a level name")
        if isinstance(level, float) and self.target_ratio >= level:
            raise ValueError(f"target_ratio {self.target_ratio} must be below action_level {level}")
        return self

    def action_ratio(self, thresholds: dict[str, float]) -> float:
        """The ratio that triggers a step: the named alert threshold, or the number itself."""
        if isinstance(self.action_level, str):
            return thresholds[self.action_level]
        return float(self.action_level)

    def covers(self, account: str) -> bool:
        """True when `account` is protected by this section."""
        return self.accounts is None or account in self.accounts
