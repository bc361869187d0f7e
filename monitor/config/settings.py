"""Configuration: a TOML file, environment overrides and systemd credentials, validated once.

Precedence, highest first: values passed in code > environment (`MARGIN_MONITOR__SECTION__KEY`)
> credential files in `$CREDENTIALS_DIRECTORY` (systemd `LoadCredential=`, one file per value,
named `section__key`) > the TOML file > defaults. Both locations are read when settings are
loaded, never at import time (docs/development.md), so tests and a reload see
the current environment.

Accounts are a TOML array (`[[accounts]]`), which environment variables and credential files
cannot index; they address an account by its name instead:
`MARGIN_MONITOR__ACCOUNTS__MAIN__API_KEY` or a credential file `accounts__main__api_key`
overrides `api_key` of the account named `main` (matched case-insensitively, with every
character other than a letter or digit written as `_`).

Every section forbids unknown keys, so a typo is an error and not a silently ignored setting;
every validation error becomes one `UserError` line naming the field ("config.toml:
accounts[1].exchange: 'binanse' is not a ccxt exchange id (did you mean 'binance'?)").

A section is added as one field of `Settings` (for example `mqtt: MqttSettings | None = None`),
its model in its own module under config/ (`alerts.py`, `actions.py`, `monitoring.py`), which
forbids unknown keys like every `Section`; where values come from is `credentials.py`, the
one-line errors `messages.py`.
"""

from __future__ import annotations

import itertools
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from monitor.config.actions import ActionsSettings
from monitor.config.alerts import MqttSettings, NotifySettings
from monitor.config.credentials import (
    DELIMITER,
    ENV_PREFIX,
    FILE_DATA,
    env_key,
    layered_sources,
    read_credential,
    unreadable,
)
from monitor.config.exchange_ids import known_exchange
from monitor.config.messages import format_validation_error
from monitor.config.monitoring import HeartbeatSettings, MetricsSettings
from monitor.core.alert_config import AlertConfig
from monitor.core.levels import Level
from monitor.errors import UserError, fold
from monitor.ops.logs import secrets_of, set_secrets

__all__ = [
    "AccountSettings",
    "AlertsSettings",
    "Section",
    "Settings",
    "SimSettings",
    "default_state_dir",
    "load_settings",
]


class Section(BaseModel):
    """Base of every config section: unknown keys are errors (a typo must not pass)."""

    model_config = ConfigDict(extra="forbid")


class SimSettings(Section):
    """The embedded simulated venue (`sources/sim.py`)."""

    seed: int = 7
    tick_rate: float = Field(default=10.0, gt=0, le=10_000)  # price ticks per sim second
    speed: float = Field(default=1.0, gt=0, le=10_000)  # sim seconds per wall second
    scenario: Literal["selloff", "calm"] = "selloff"
    fee_rate: float = Field(default=0.0005, ge=0, le=0.01)  # taker fee on fills


#: ccxt credentials that sign orders only: reading positions works without them.
_ORDER_ONLY_CREDENTIALS = frozenset({"privateKey"})


def ccxt_credentials(exchange: str) -> dict[str, str]:
    """ccxt's name for each credential -> the account setting that fills it.

    One place for both the ccxt instance (sources/ccxt_client.py) and the load-time check:
    a Hyperliquid account signs with a wallet, its address in `api_key` and the agent's
    private key in `secret`."""
    if exchange == "hyperliquid":
        return {"walletAddress": "api_key", "privateKey": "secret"}
    return {"apiKey": "api_key", "secret": "secret", "password": "password"}


class AccountSettings(Section):
    """One watched account: a ccxt exchange id with its keys, or `sim`."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    exchange: str = "sim"
    api_key: SecretStr | None = None
    secret: SecretStr | None = None
    password: SecretStr | None = None
    sandbox: bool = False
    poll_interval: float = Field(default=5.0, gt=0)
    stale_after: float = Field(default=30.0, gt=0)
    ccxt: dict[str, Any] = Field(default_factory=dict)
    sim: SimSettings | None = None

    @field_validator("exchange")
    @classmethod
    def _known_exchange(cls, value: str) -> str:
        return known_exchange(value)

    @field_validator("ccxt")
    @classmethod
    def _not_verbose(cls, value: dict[str, Any]) -> dict[str, Any]:
        # ccxt's verbose mode print()s every request with its signed headers and the API
        # key, past the log redaction (docs/hardening.md).
        if value.get("verbose"):
            msg = "ccxt verbose mode prints signed requests with the API key; remove 'verbose'"
            raise ValueError(msg)
        return value

    @model_validator(mode="after")
    def _sim_table(self) -> AccountSettings:
        if self.exchange == "sim":
            if self.sim is None:
                self.sim = SimSettings()
        elif self.sim is not None:
            raise ValueError(
                f"the sim table only applies to exchange = 'sim', not '{self.exchange}'"
            )
        return self

    @model_validator(mode="after")
    def _credentials(self) -> AccountSettings:
        """A live account needs the keys its venue signs private reads with.

        Without them the daemon starts, then every positions read fails: the user learns
        it from a `source_down` alert after walking away, or never. ccxt's own
        `requiredCredentials` says which; a Hyperliquid agent key (`secret`) is only for
        orders, reading needs the wallet address alone. Keys may also come through the
        account's `ccxt` table, the environment or $CREDENTIALS_DIRECTORY (all merged
        before this runs).
        """
        if self.is_sim:
            return self
        import ccxt  # noqa: PLC0415 - already imported by _known_exchange for live venues

        required = getattr(ccxt, self.exchange)().requiredCredentials
        for credential, field_name in ccxt_credentials(self.exchange).items():
            if not required.get(credential) or credential in _ORDER_ONLY_CREDENTIALS:
                continue
            value = self.credentials()[field_name]
            if (value is not None and value.get_secret_value()) or self.ccxt.get(credential):
                continue
            what = {"walletAddress": "wallet address", "password": "API passphrase"}.get(
                credential, field_name
            )
            file = f"accounts__{env_key(self.name)}__{field_name}"
            raise ValueError(
                f"{field_name} is not set: {self.exchange} needs its {what} to read positions; "
                f"set {field_name} here, MARGIN_MONITOR__{file.upper()} in the environment, "
                f"or the credential file {file} ($CREDENTIALS_DIRECTORY)"
            )
        return self

    def credentials(self) -> dict[str, SecretStr | None]:
        """The account's keys by setting name (the names `ccxt_credentials` maps to)."""
        return {"api_key": self.api_key, "secret": self.secret, "password": self.password}

    @property
    def is_sim(self) -> bool:
        """True for the embedded simulated venue."""
        return self.exchange == "sim"


class AlertsSettings(Section):
    """Alert thresholds (docs/notifications.md); `to_config` hands them to `rules.py`.

    Ratio thresholds are margin ratios (maintenance margin / margin balance, 1 = liquidation);
    shock thresholds are the size of the uniform price move that would liquidate (0.10 =
    "a 10 % move liquidates you"), None to disable that level.
    """

    warning: float = Field(default=0.5, gt=0)
    critical: float = Field(default=0.7, gt=0)
    emergency: float = Field(default=0.85, gt=0, le=1)
    band: float = Field(default=0.05, ge=0)  # hysteresis: leave a level below threshold - band
    repeat_every: float = Field(default=3600.0, ge=0)  # seconds; 0 never repeats
    hold_for: float = Field(default=0.0, ge=0)  # seconds a higher level must hold first
    shock_warning: float | None = Field(default=0.10, gt=0, lt=1)
    shock_critical: float | None = Field(default=0.05, gt=0, lt=1)
    shock_emergency: float | None = Field(default=0.02, gt=0, lt=1)
    shock_band: float = Field(default=0.01, ge=0)
    stale_level: Level = "warning"
    source_down_level: Level = "critical"

    @model_validator(mode="after")
    def _in_order(self) -> AlertsSettings:
        if not self.critical > self.warning:
            raise ValueError(
                f"alerts.critical ({self.critical:g}) must be greater than alerts.warning "
                f"({self.warning:g})"
            )
        if not self.emergency > self.critical:
            raise ValueError(
                f"alerts.emergency ({self.emergency:g}) must be greater than alerts.critical "
                f"({self.critical:g})"
            )
        if not self.band < self.warning:
            raise ValueError(
                f"alerts.band ({self.band:g}) must be smaller than alerts.warning "
                f"({self.warning:g}), or a warning could never resolve"
            )
        shocks = [
            (name, value)
            for name, value in (
                ("shock_warning", self.shock_warning),
                ("shock_critical", self.shock_critical),
                ("shock_emergency", self.shock_emergency),
            )
            if value is not None
        ]
        # a smaller move to liquidation is worse, so each higher level needs a smaller value
        for (high_name, high), (low_name, low) in itertools.pairwise(shocks):
            if not low < high:
                raise ValueError(
                    f"alerts.{low_name} ({low:g}) must be smaller than alerts.{high_name} "
                    f"({high:g}): a smaller move to liquidation is the worse level"
                )
        return self

    def to_config(self) -> AlertConfig:
        """The rule engine's view of these thresholds."""
        return AlertConfig(**self.model_dump())


def default_state_dir() -> Path:
    """`$STATE_DIRECTORY` (systemd `StateDirectory=`, first entry) or the XDG state dir."""
    env = os.environ.get("STATE_DIRECTORY", "")
    if env:
        return Path(env.split(":", 1)[0])
    return Path.home() / ".local" / "state" / "margin-monitor"


def _default_alerts() -> AlertsSettings:
    return AlertsSettings()


def _demo_accounts() -> list[AccountSettings]:
    return [AccountSettings(name="demo", exchange="sim")]


class Settings(BaseSettings):
    """The whole configuration. With no file: one simulated account named `demo`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=DELIMITER,
        extra="forbid",
        validate_default=True,
    )

    state_dir: Path = Field(default_factory=default_state_dir)
    shock_interval: float = Field(
        1.0,
        ge=0,
        description="minimum seconds between shock-to-liquidation solves per account "
        "(the solve costs ~30x a plain report); 0 = on every recompute",
    )
    report_spacing: float = Field(
        1.0,
        ge=0,
        description="least seconds between an account's coalesced reports; a threshold "
        "crossing reports at once regardless, checked on every tick; 0 = a report per change "
        "(1 s: the venues' own mark streams are 1 s; at 1 000 accounts a routine report per "
        "0.5 s took ~15 % of a core more, docs/benchmarks.md)",
    )
    ratio_source: Literal["worst", "model", "venue"] = Field(
        "worst",
        description="the margin ratio alerts and actions use where the venue reports its own: "
        "worst = the larger of ours and the venue's carried forward (never understates the "
        "venue), model = ours, venue = the venue's (docs/account-view.md)",
    )
    drift_tolerance: float = Field(
        0.01,
        gt=0,
        description="relative gap between our ratio and the venue's on the same read above "
        "which two reads in a row raise a model_drift warning",
    )
    accounts: list[AccountSettings] = Field(default_factory=_demo_accounts, min_length=1)

    @field_validator("state_dir")
    @classmethod
    def _a_directory(cls, value: Path) -> Path:
        if value.exists() and not value.is_dir():
            msg = f"{value} is a file; point state_dir at a directory (it is created if missing)"
            raise ValueError(msg)
        return value

    alerts: AlertsSettings = Field(default_factory=_default_alerts)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)  # docs/monitoring.md
    heartbeat: HeartbeatSettings = Field(default_factory=HeartbeatSettings)  # docs/monitoring.md
    mqtt: MqttSettings | None = None  # docs/notifications.md: unset = no MQTT (sinks/mqtt.py)
    notify: NotifySettings | None = None  # docs/notifications.md: unset = no phone channels
    actions: ActionsSettings = Field(default_factory=ActionsSettings)  # docs/actions.md: dry run

    @field_validator("accounts")
    @classmethod
    def _unique_names(cls, accounts: list[AccountSettings]) -> list[AccountSettings]:
        seen: set[str] = set()
        for account in accounts:
            if account.name in seen:
                raise ValueError(
                    f"account name '{account.name}' is used twice; names must be unique"
                )
            seen.add(account.name)
        return accounts

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """init > env > credentials > TOML; `accounts` is resolved by name in one place."""
        return layered_sources(settings_cls, init_settings, env_settings, file_secret_settings)


# --- loading, with one-line errors ---------------------------------------------------------


def load_settings(path: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Read and validate the configuration; any problem is one `UserError` line.

    `path` None gives the embedded default (the sim demo), still open to env overrides.
    """
    origin = "configuration" if path is None else Path(path).name
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise UserError(
                f"{path}: no such file; pass an existing TOML file to --config"
            ) from None
        except IsADirectoryError:
            raise UserError(f"{path}: is a directory; pass a TOML file to --config") from None
        except PermissionError:
            raise UserError(f"{path}: permission denied") from None
        except tomllib.TOMLDecodeError as exc:
            raise UserError(f"{origin}: invalid TOML: {exc}") from None
        except UnicodeDecodeError as exc:
            raise UserError(
                f"{origin}: not UTF-8 text (byte {exc.start}); save the file as UTF-8"
            ) from None
        except RecursionError:
            raise UserError(f"{origin}: tables or arrays nested too deeply") from None
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    if credentials and Path(credentials).is_dir():
        # read each once here, so an unreadable or non-UTF-8 one is named (pydantic-settings'
        # own reader raises without saying which)
        for entry in sorted(Path(credentials).iterdir()):
            if entry.is_file():
                read_credential(entry)
    # a file without accounts would silently watch the sim demo: never what was meant; it is
    # refused after the rest is validated, so a typo elsewhere is named first
    no_accounts = path is not None and "accounts" not in data and "accounts" not in overrides
    if path is None or no_accounts:
        # the demo as if written in a file, so MARGIN_MONITOR__ACCOUNTS__DEMO__... applies
        data["accounts"] = [{"name": "demo", "exchange": "sim"}]
    token = FILE_DATA.set(data)
    try:
        settings = Settings(**overrides)
        if no_accounts:
            raise UserError(
                f"{origin}: no [[accounts]] table: add one per account to watch (name = "
                '"main", exchange = "binanceusdm"), or run without --config for the demo'
            )
    except ValidationError as exc:
        raise UserError(format_validation_error(exc, origin, Settings)) from None
    except SettingsError as exc:
        raise UserError(f"{origin}: {fold(str(exc))}") from None
    except (OSError, UnicodeDecodeError) as exc:
        # a credential file pydantic-settings reads ($CREDENTIALS_DIRECTORY)
        raise unreadable(getattr(exc, "filename", None) or "a credential file", exc) from None
    finally:
        FILE_DATA.reset(token)
    # every secret it holds is redacted from logs and error lines from now on (docs/hardening.md)
    set_secrets(secrets_of(settings))
    return settings
