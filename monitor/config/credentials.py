"""Where settings come from besides the TOML file: the environment and credential files.

Precedence, highest first: values passed in code > environment (`MARGIN_MONITOR__SECTION__KEY`)
> credential files in `$CREDENTIALS_DIRECTORY` (systemd `LoadCredential=`, one file per value,
named `section__key`) > the TOML file > defaults (config/settings.py `Settings`). The account
list is overlaid by account name, since environment variables cannot index a TOML array.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from pydantic_settings import (
    BaseSettings,
    NestedSecretsSettingsSource,
    PydanticBaseSettingsSource,
)

from monitor.errors import UserError, os_reason

__all__ = [
    "DELIMITER",
    "ENV_PREFIX",
    "FILE_DATA",
    "env_key",
    "layered_sources",
    "read_credential",
    "unreadable",
]

ENV_PREFIX = "MARGIN_MONITOR__"
DELIMITER = "__"

# The parsed TOML of the load in progress: sources are built by pydantic-settings, not by
# us, so this is how the file reaches them without a module-level global.
FILE_DATA: ContextVar[Mapping[str, Any] | None] = ContextVar("margin_file", default=None)


def layered_sources(
    settings_cls: type[BaseSettings],
    init_settings: PydanticBaseSettingsSource,
    env_settings: PydanticBaseSettingsSource,
    file_secret_settings: PydanticBaseSettingsSource,
) -> tuple[PydanticBaseSettingsSource, ...]:
    """init > env > credentials > TOML; `accounts` is resolved by name in one place."""
    credentials = os.environ.get("CREDENTIALS_DIRECTORY") or None
    secrets: tuple[PydanticBaseSettingsSource, ...] = ()
    if credentials is not None:
        secrets = (
            _WithoutAccounts(
                NestedSecretsSettingsSource(
                    file_secret_settings,
                    secrets_dir=credentials,
                    secrets_prefix="",
                    secrets_dir_missing="ok",
                )
            ),
        )
    return (
        init_settings,
        _WithoutAccounts(env_settings),
        *secrets,
        _FileSource(settings_cls, credentials),
    )


class _WithoutAccounts(PydanticBaseSettingsSource):
    """A source with `accounts` removed: that list is overlaid by name in `_FileSource`.

    Without this, `MARGIN_MONITOR__ACCOUNTS__MAIN__API_KEY` would arrive as a mapping and
    replace the file's whole account list.
    """

    def __init__(self, inner: PydanticBaseSettingsSource) -> None:
        super().__init__(inner.settings_cls)
        self._inner = inner

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        data = dict(self._inner())
        data.pop("accounts", None)
        return data


class _FileSource(PydanticBaseSettingsSource):
    """The TOML data, with each account overlaid by its credential files, then its env vars."""

    def __init__(self, settings_cls: type[BaseSettings], credentials: str | None) -> None:
        super().__init__(settings_cls)
        self._credentials = credentials

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        data = dict(FILE_DATA.get() or {})
        accounts = data.get("accounts")
        if isinstance(accounts, list):
            data["accounts"] = [self._overlay(a) for a in accounts]
        return data

    def _overlay(self, account: object) -> object:
        if not isinstance(account, dict) or not isinstance(account.get("name"), str):
            return account  # validation will name what is wrong with it
        merged: dict[str, Any] = dict(account)
        key = env_key(account["name"])
        if self._credentials is not None:
            directory = Path(self._credentials)
            prefix = f"accounts{DELIMITER}{key}{DELIMITER}"
            entries = sorted(directory.iterdir()) if directory.is_dir() else []
            for entry in entries:
                if entry.is_file() and entry.name.lower().startswith(prefix):
                    value = read_credential(entry)
                    _set_path(merged, entry.name[len(prefix) :].lower().split(DELIMITER), value)
        env_prefix = f"{ENV_PREFIX}ACCOUNTS{DELIMITER}{key.upper()}{DELIMITER}"
        for name, value in sorted(os.environ.items()):
            if name.upper().startswith(env_prefix):
                _set_path(merged, name[len(env_prefix) :].lower().split(DELIMITER), value)
        return merged


def env_key(name: str) -> str:
    """How an account name is spelled in env var and credential names."""
    return re.sub(r"[^a-z0-9]", "_", name.lower())


def _set_path(target: dict[str, Any], path: list[str], value: str) -> None:
    node = target
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
        child = dict(child)
        node[part] = child
        node = child
    node[path[-1]] = value


def unreadable(name: object, exc: OSError | UnicodeDecodeError) -> UserError:
    """The one line for a credential file that cannot be read, naming it."""
    return UserError(
        f"{name}: cannot read ({os_reason(exc)}); fix its permissions or encoding (UTF-8)"
    )


def read_credential(entry: Path) -> str:
    """One credential file's value; unreadable is one line naming the file."""
    try:
        return entry.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise unreadable(entry, exc) from None
