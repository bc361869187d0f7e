"""What the MQTT channel publishes besides alerts: the retained state and Home Assistant discovery.

The payload builders are pure (a report in, JSON-ready dicts out); `channels/mqtt.py` owns the
connection and decides when they are published (docs/mqtt-and-commands.md).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from monitor import __version__
from monitor.alerts.message import finite_or_str
from monitor.config.alerts import MqttSettings
from monitor.core.alert_config import shock_fraction
from monitor.core.model import MarginReport

__all__ = ["discovery_configs", "state_payload"]


def _object_id(account: str) -> str:
    """Home Assistant ids allow only [a-zA-Z0-9_-]."""
    return re.sub(r"[^a-zA-Z0-9_-]", "_", account)


def state_payload(
    report: MarginReport, level: str, flags: Mapping[str, bool] | None = None
) -> dict[str, Any]:
    """The retained state: the JSON report (docs/margin-math.md), level and convenience fields.

    `flags` are the binary sensors' states (`source_down`, `protection_active`), false when
    not given: both live in the retained state so Home Assistant has them after a restart.
    """
    from monitor.report_json import report_to_dict  # noqa: PLC0415 - keeps import cost lazy

    data: dict[str, Any] = _strict_json(report_to_dict(report))
    for name, _, _ in _BINARY_SENSORS:
        data[name] = bool((flags or {}).get(name, False))
    shock = shock_fraction(report)
    ratio = report.margin_ratio
    data["level"] = level
    data["margin_ratio_pct"] = round(ratio * 100, 4) if report.finite_ratio else None
    data["shock_to_liquidation_pct"] = (
        None if shock is None or shock == float("inf") else round(shock * 100, 4)
    )
    return data


def _strict_json(value: Any) -> Any:
    """Non-finite floats anywhere become strings ("inf"), so the payload is RFC 8259 JSON."""
    if isinstance(value, float):
        return finite_or_str(value)
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict_json(v) for v in value]
    return value


_SENSORS: tuple[tuple[str, str, str | None, str | None], ...] = (
    # key, name, unit, value template (None: plain key)
    ("margin_ratio", "Margin ratio", "%", "{{ value_json.margin_ratio_pct }}"),
    ("margin_balance", "Margin balance", None, None),
    ("free_collateral", "Free collateral", None, None),
    (
        "shock_to_liquidation",
        "Shock to liquidation",
        "%",
        "{{ value_json.shock_to_liquidation_pct }}",
    ),
    ("level", "Alert level", None, None),
)
_BINARY_SENSORS: tuple[tuple[str, str, str], ...] = (
    # key in the state payload, name, Home Assistant device class
    ("source_down", "Source down", "problem"),
    ("protection_active", "Protection active", "running"),
)


def discovery_configs(
    settings: MqttSettings, account: str, currency: str
) -> list[tuple[str, dict[str, Any]]]:
    """Home Assistant MQTT discovery (docs/development.md): one device, five sensors and two
    binary sensors (source down, protection active)."""
    oid = _object_id(account)
    state_topic = f"{settings.prefix}/{account}/state"
    device = {
        "identifiers": [f"margin_monitor_{oid}"],
        "name": f"Margin monitor {account}",
        "manufacturer": "margin-monitor",
        "sw_version": __version__,
    }

    def entity(component: str, key: str, name: str, template: str) -> tuple[str, dict[str, Any]]:
        uid = f"margin_monitor_{oid}_{key}"
        return f"{settings.discovery_prefix}/{component}/{uid}/config", {
            "name": name,
            "unique_id": uid,
            "default_entity_id": f"{component}.{uid}",
            "state_topic": state_topic,
            "value_template": template,
            "availability_topic": f"{settings.prefix}/status",
            "device": device,
            "origin": {"name": "margin-monitor", "sw": __version__},
        }

    out = []
    for key, name, unit, template in _SENSORS:
        topic, config = entity("sensor", key, name, template or f"{{{{ value_json.{key} }}}}")
        if key == "level":
            config["json_attributes_topic"] = state_topic
        else:
            config["state_class"] = "measurement"
            config["unit_of_measurement"] = unit or currency
            config["suggested_display_precision"] = 2
        if settings.expire_after:
            config["expire_after"] = settings.expire_after
        out.append((topic, config))
    for key, name, device_class in _BINARY_SENSORS:
        topic, binary = entity(
            "binary_sensor", key, name, f"{{{{ 'ON' if value_json.{key} else 'OFF' }}}}"
        )
        binary.update(device_class=device_class, payload_on="ON", payload_off="OFF")
        out.append((topic, binary))
    return out
