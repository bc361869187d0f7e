"""Where alerts go, said and tried before they matter: `check`'s channel list and `notify-test`.

A new user's first question after `check` passes is "will my phone actually ring?". The
answer must come from the same settings and the same libraries as a real alert (Apprise for
phone/chat channels, aiomqtt for the broker), one line per channel, with every secret shown
only as set / not set: an Apprise URL usually *is* the secret (an ntfy topic, a bot token).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

from pydantic import SecretStr

from monitor.config.alerts import MqttSettings, NotifyChannel
from monitor.config.settings import Settings, load_settings
from monitor.errors import UserError, fold

__all__ = ["describe_channels", "notify_test_command", "push_channel", "push_mqtt"]

TEST_TITLE = "margin-monitor test push"

# a host part that is a name or an address (shown), not a token in the host slot (hidden):
# Pushover's and Telegram's Apprise URLs carry their tokens where a host would be
_HOSTNAME = re.compile(r"^(localhost|[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+)$")


def _set(value: SecretStr | str | None) -> str:
    return (
        "set"
        if value is not None
        and (value.get_secret_value() if isinstance(value, SecretStr) else value)
        else "not set"
    )


def channel_target(channel: NotifyChannel) -> str:
    """`ntfy at ntfy.sh`, `Pushover`: the service and its server, never the token or topic."""
    import apprise  # noqa: PLC0415 - ~150 ms, paid only with channels configured

    plugin = apprise.Apprise.instantiate(channel.url.get_secret_value())
    if plugin is None:  # validated at load time; kept for a URL Apprise changed its mind on
        return "an URL Apprise cannot load"
    service = str(getattr(plugin, "service_name", "") or type(plugin).__name__)
    host = str(getattr(plugin, "host", "") or "")
    port = getattr(plugin, "port", None)
    if _HOSTNAME.match(host):
        return f"{service} at {host}{f':{port}' if port else ''}"
    return service


def mqtt_target(s: MqttSettings) -> str:
    """`mqtts://broker:8883`: where the broker is, for both `check` and `notify-test`."""
    return f"{'mqtts' if s.tls else 'mqtt'}://{s.host}:{s.port}"


def describe_channels(settings: Settings) -> list[str]:
    """One line per output of the daemon: where it goes and which of its secrets are set."""
    lines = ["console: the live view on a terminal, else JSON log lines on stdout"]
    mqtt = settings.mqtt
    if mqtt is None:
        lines.append("mqtt: off (no [mqtt] section)")
    else:
        discovery = f"on ({mqtt.discovery_prefix}/...)" if mqtt.discovery else "off"
        lines.append(
            f"mqtt: {mqtt_target(mqtt)}, topics {mqtt.prefix}/..., Home Assistant discovery "
            f"{discovery}; username {_set(mqtt.username)}, password {_set(mqtt.password)}, "
            f"command_secret {_set(mqtt.command_secret)}"
        )
    notify = settings.notify
    if notify is None or not notify.channels:
        lines.append("notify: off (no [[notify.channels]])")
    else:
        for channel in notify.channels:
            lines.append(
                f"notify[{channel.name}]: {channel_target(channel)}, from {channel.min_level}"
                f"{' (and resolves)' if channel.send_resolved else ''}; url set (secret)"
            )
        if notify.command_listen is not None:
            buttons = "on" if notify.command_url and mqtt and mqtt.command_secret else "off"
            lines.append(
                f"command endpoint: listens on {notify.command_listen}, ntfy buttons {buttons} "
                f"(command_url {_set(notify.command_url)})"
            )
    metrics = settings.metrics
    if metrics.enabled:
        base = f"http://{metrics.host}:{metrics.port}"
        page = f"status page {base}/, " if metrics.status_page else ""
        lines.append(f"metrics: {page}{base}/metrics, {base}/healthz")
    else:
        lines.append("metrics: off ([metrics] enabled = false)")
    beat = settings.heartbeat
    if beat.url is None:
        lines.append("heartbeat: off (no [heartbeat] url)")
    else:
        host = re.sub(r"^[a-z]+://([^/:@]*@)?([^/:]+).*$", r"\2", beat.url.get_secret_value())
        lines.append(
            f"heartbeat: every {beat.interval:g} s to {host}; url set, fail_url "
            f"{_set(beat.fail_url)}"
        )
    return lines


def _test_body(name: str) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    return (
        f"Test push from margin-monitor on {socket.gethostname()} at {stamp}: channel "
        f"'{name}' works. A real alert reads like: WARNING main: margin ratio 52.0 %."
    )


async def push_channel(channel: NotifyChannel) -> str:
    """One test notification through Apprise, as a real alert goes; `ok ...` or `FAILED: ...`."""
    import apprise  # noqa: PLC0415 - ~150 ms, paid only with channels configured

    notifier = apprise.Apprise()
    if not notifier.add(channel.url.get_secret_value()):
        return "FAILED: Apprise refused the URL"
    result = await notifier.async_notify(
        body=_test_body(channel.name),
        title=TEST_TITLE,
        notify_type=apprise.NotifyType.INFO,
        timeout=channel.timeout,
    )
    if bool(result):
        return "ok: delivered (the service accepted it; check the phone)"
    status = getattr(getattr(result, "status", None), "value", None) or str(result)
    return f"FAILED: not delivered ({status}); the log above says what the service answered"


async def push_mqtt(settings: MqttSettings) -> str:
    """Publish one QoS-1 message on `<prefix>/test` and wait for the broker's PUBACK.

    A client of its own with no last will: a test must not mark a running daemon offline.
    """
    import aiomqtt  # noqa: PLC0415 - paid only with [mqtt] configured

    from monitor.channels.mqtt import make_client  # noqa: PLC0415

    topic = f"{settings.prefix}/test"
    payload = json.dumps({"test": True, "at": time.time(), "text": _test_body("mqtt")})
    client = make_client(settings, f"margin-monitor-test-{os.getpid()}-{secrets.token_hex(3)}")
    try:
        async with asyncio.timeout(settings.timeout * 3):
            async with client:
                await client.publish(topic, payload, qos=1, timeout=settings.timeout)
    except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
        reason = fold(str(exc)) or type(exc).__name__
        return f"FAILED: {reason}"
    return f"ok: published on {topic}, the broker acknowledged it (QoS 1)"


async def _run_all(settings: Settings) -> list[tuple[str, str]]:
    names: list[str] = []
    pushes: list[Any] = []
    if settings.mqtt is not None:
        names.append(f"mqtt ({mqtt_target(settings.mqtt)})")
        pushes.append(push_mqtt(settings.mqtt))
    for channel in settings.notify.channels if settings.notify else ():
        names.append(f"notify[{channel.name}] ({channel_target(channel)})")
        pushes.append(push_channel(channel))
    outcomes = await asyncio.gather(*pushes)
    return list(zip(names, outcomes, strict=True))


def notify_test_command(args: argparse.Namespace) -> int:
    """`margin-monitor notify-test [--config FILE]`: 0 all delivered, 1 one failed, 2 none set."""
    settings = load_settings(args.config)
    from monitor.ops import logs  # noqa: PLC0415

    logs.configure(secrets=logs.secrets_of(settings))  # Apprise logs its errors: redacted
    if settings.mqtt is None and not (settings.notify and settings.notify.channels):
        raise UserError(
            'no channel to test: add [[notify.channels]] (e.g. url = "ntfy://ntfy.sh/<your '
            'topic>") or an [mqtt] section to the configuration given with --config'
        )
    results = asyncio.run(_run_all(settings))
    out = sys.stdout
    for name, outcome in results:
        out.write(f"{name}: {outcome}\n")
    failed = sum(1 for _, outcome in results if outcome.startswith("FAILED"))
    out.write(f"{len(results) - failed} of {len(results)} channel(s) delivered the test push\n")
    out.flush()
    return 1 if failed else 0


def check_lines(settings: Settings) -> Sequence[str]:
    """The `channels:` block of `check`."""
    return ["channels:", *(f"  - {line}" for line in describe_channels(settings))]
