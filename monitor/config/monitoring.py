"""The `[metrics]` and `[heartbeat]` configuration sections (docs/monitoring.md).

Kept apart from the sinks that use them (ops/metrics.py, ops/heartbeat.py) so that loading a
configuration imports neither prometheus_client nor the sinks.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr

__all__ = ["HeartbeatSettings", "MetricsSettings"]


class MetricsSettings(BaseModel):
    """The `[metrics]` section: the HTTP endpoint for Prometheus and health probes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    host: str = Field(
        default="127.0.0.1",
        description="bind address; loopback by default (the figures describe your money). "
        "Use 0.0.0.0 in a container, behind its network",
    )
    port: int = Field(default=9464, ge=0, le=65535, description="0 picks a free port (tests)")
    status_page: bool = Field(
        default=True, description="serve the status page on / and its JSON on /api/status"
    )


class HeartbeatSettings(BaseModel):
    """The `[heartbeat]` section: off unless `url` is set."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: SecretStr | None = Field(
        default=None, description="pinged (GET) every `interval` s while every account is fresh"
    )
    fail_url: SecretStr | None = Field(
        default=None, description="pinged instead while an account is blind (optional)"
    )
    interval: float = Field(default=60.0, gt=0, le=86_400)
    timeout: float = Field(default=10.0, gt=0, le=120)
