"""The `[mqtt]` and `[notify]` configuration sections (pydantic; no network imports).

Kept apart from the sinks so that loading a configuration never imports aiomqtt or Apprise
until a section is actually used. Every secret (broker password, command key, Apprise URLs,
which usually embed a token) is a `SecretStr`: masked in `repr`, logs and dumps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

__all__ = ["MqttSettings", "NotifyChannel", "NotifySettings"]

MinLevel = Literal["warning", "critical", "emergency"]


class MqttSettings(BaseModel):
    """The `[mqtt]` section. Credentials are secrets: env or `$CREDENTIALS_DIRECTORY`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    tls: bool = False
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_insecure: bool = False
    client_id: str | None = Field(
        None, description="unique per process; default margin-monitor-<host>-<pid>-<random>"
    )
    prefix: str = Field("margin-monitor", pattern=r"^[^#+]+$")
    keepalive: int = Field(30, ge=5, le=3600)
    timeout: float = Field(5.0, gt=0, le=120, description="seconds per broker operation")
    state_interval: float = Field(1.0, ge=0, description="min seconds between state publishes")
    discovery: bool = True
    discovery_prefix: str = "homeassistant"
    expire_after: int = Field(180, ge=0, description="HA marks sensors unavailable after this")
    command_secret: SecretStr | None = Field(
        None, description="HMAC-SHA256 key for commands; unset: commands are refused"
    )


class NotifyChannel(BaseModel):
    """One `[[notify.channels]]` entry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    url: SecretStr = Field(description="any Apprise URL (it usually holds a token: secret)")
    min_level: MinLevel = "warning"
    send_resolved: bool = True
    min_interval: float = Field(5.5, ge=0, description="seconds between two sends; bursts merge")
    timeout: float = Field(15.0, gt=0)

    @field_validator("url")
    @classmethod
    def _apprise_url(cls, url: SecretStr) -> SecretStr:
        import apprise  # noqa: PLC0415 - ~150 ms import, paid only when a channel is configured

        if apprise.Apprise.instantiate(url.get_secret_value()) is None:
            msg = "is not an Apprise URL Apprise can load (see appriseit.com/services)"
            raise ValueError(msg)
        return url


class NotifySettings(BaseModel):
    """The `[notify]` section."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    channels: list[NotifyChannel] = Field(default_factory=list)
    command_url: str | None = Field(
        None,
        description="public URL of the daemon's command endpoint, for ntfy buttons "
        "(e.g. https://monitor.example.org/command); unset: no buttons",
    )
    command_listen: str | None = Field(
        None, description="host:port the command endpoint listens on, e.g. 127.0.0.1:8765"
    )
    token_ttl: float = Field(3600.0, gt=0, le=7 * 86400, description="button validity, s")
    silence_for: float = Field(3600.0, gt=0, description="what the Silence button silences, s")

    @field_validator("command_url")
    @classmethod
    def _absolute_url(cls, url: str | None) -> str | None:
        if url is None:
            return url
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            msg = (
                f"'{url}' must be an absolute http(s) URL, e.g. https://monitor.example.org/command"
            )
            raise ValueError(msg)
        return url

    @field_validator("command_listen")
    @classmethod
    def _host_port(cls, listen: str | None) -> str | None:
        if listen is None:
            return listen
        host, sep, port = listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            msg = f"'{listen}' must be host:port, e.g. 127.0.0.1:8765"
            raise ValueError(msg)
        return listen
