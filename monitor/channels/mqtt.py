"""MQTT sink (aiomqtt 2.x): alerts, retained state, Home Assistant discovery, signed commands.

Topics (prefix default `margin-monitor`, docs/mqtt-and-commands.md):

- `<prefix>/status`              `online`/`offline`, retained; `offline` is the last will.
- `<prefix>/<account>/state`     the JSON report plus `level`, retained, published on change
                                 and at most once per `state_interval` per account.
- `<prefix>/<account>/alert`     one JSON alert message per event, QoS 1 (at least once:
                                 the outbox retries until the broker's PUBACK).
- `<prefix>/<account>/action`    audit of protective-action decisions (engineer D's executor
                                 calls `publish_action`).
- `<prefix>/command`, `<prefix>/<account>/command`   signed commands in; the answer goes to
                                 `<prefix>/reply`.
- `homeassistant/sensor/<id>/config`   discovery (retained), re-sent when Home Assistant
                                 announces `online` on `homeassistant/status`.

aiomqtt 2.x does not reconnect by itself; its documented pattern (its reconnection guide,
issue #334) is re-entering `async with client` in a retry loop, which `run` does, with the
jittered backoff of STYLE.md. A broker that vanishes is noticed by the publish `timeout`, not
by an error (docs/development.md), so the timeout is set deliberately. After each reconnect
the status, discovery and every account's state are published again, and the pipeline is
told to retry queued alerts at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import secrets
import socket
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import aiomqtt
import structlog

from monitor.alerts.delivery import raise_if_cancelling
from monitor.alerts.message import AlertMessage
from monitor.backoff import retry_after
from monitor.channels.mqtt_payloads import discovery_configs, state_payload
from monitor.channels.mqtt_wire import AlertWire
from monitor.config.alerts import MqttSettings
from monitor.core.alert_config import RULE_SOURCE_DOWN
from monitor.core.model import MarginReport

__all__ = ["MqttSettings", "MqttSink", "make_client"]

log = structlog.get_logger("monitor.sinks.mqtt")


#: Protective-action decisions (the `kind` of `<prefix>/<account>/action`) that start and end
#: "protection active": an episode runs from its first plan until the account is back under
#: target, or the venue refused an order and actions halted for the account.
_PROTECTION_ON = frozenset({"planned"})
_PROTECTION_OFF = frozenset({"resolved", "rejected"})


#: Replies to refused commands per second; past it a refusal is audited but not answered.
REFUSAL_REPLIES = 10


class MqttSink:
    """Publishes alerts and state; receives commands. Run `run()` as task `mqtt`.

    Args:
        settings: the `[mqtt]` section.
        command_handler: executes a raw signed command and returns the reply (the pipeline's
            `handle_command`); None: commands are answered with a refusal.
        clock: wall-clock seconds.
    """

    name = "mqtt"

    def __init__(
        self,
        settings: MqttSettings,
        command_handler: Callable[[bytes], Mapping[str, Any]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.command_handler = command_handler
        self.clock = clock
        self.client_id = settings.client_id or (
            f"margin-monitor-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        )
        self.status_topic = f"{settings.prefix}/status"
        self.reply_topic = f"{settings.prefix}/reply"
        self._on_connected: Callable[[], None] | None = None
        self._wire = AlertWire()
        self._client: aiomqtt.Client | None = None
        self._stopping = False
        self._connected = asyncio.Event()
        self._reports: dict[str, tuple[MarginReport, str]] = {}
        self._published: dict[str, tuple[str, float]] = {}
        self._announced: set[str] = set()
        #: Home Assistant's `online` births seen: a birth during an account's discovery
        #: round means that round counts for nothing (see `_states_round`)
        self._births = 0
        self._state_wake = asyncio.Event()
        self._actions: asyncio.Queue[tuple[str, str]] = asyncio.Queue(maxsize=10_000)
        self._refusal_second = 0
        self._refusal_replies = 0
        self._protection: dict[str, str] = {}  # account -> why its actions cannot run
        # replies of executed commands, and at most REFUSAL_REPLIES refusals a second
        self._replies: asyncio.Queue[Mapping[str, Any]] = asyncio.Queue()
        self._flags: dict[str, dict[str, bool]] = {}  # account -> binary sensor states

    # --- AlertSink / ReportObserver ---------------------------------------------------------

    def set_protection(self, account: str, reason: str | None) -> None:
        """The retained state of `account` says why its protective actions cannot run."""
        if reason is None:
            self._protection.pop(account, None)
        else:
            self._protection[account] = reason
        self._published.pop(account, None)  # republish at once
        self._state_wake.set()

    def wants(self, message: AlertMessage) -> bool:
        """MQTT gets every alert: it is the primary, cheap channel."""
        del message
        return True

    def set_on_connected(self, callback: Callable[[], None]) -> None:
        """`callback` runs each time a session is up (delivery.ReconnectingSink: the pipeline
        retries the queued alerts at once)."""
        self._on_connected = callback

    def send_now(self, messages: Sequence[AlertMessage]) -> asyncio.Future[Collection[str]] | None:
        """Queue the alerts as QoS 1 publishes now (delivery.ImmediateSink, mqtt_wire.py); the
        future gives the ids whose PUBACK came within `timeout`. None: no session."""
        for m in messages:
            if m.rule == RULE_SOURCE_DOWN:
                self._set_flag(m.account, "source_down", m.kind != "resolved")
        prefix = self.settings.prefix
        return self._wire.send(
            [(m.id, f"{prefix}/{m.account}/alert", m.to_json()) for m in messages],
            self.settings.timeout,
        )

    def written(self) -> asyncio.Future[None]:
        """Done once the alerts handed so far are on the socket (or there is no session)."""
        return self._wire.written()

    async def deliver(self, messages: Sequence[AlertMessage]) -> Collection[str]:
        """Publish a batch with QoS 1; return the ids whose PUBACK arrived."""
        acked = self.send_now(messages)
        if acked is None:
            msg = "not connected to the MQTT broker"
            raise ConnectionError(msg)
        return await acked

    def observe_report(self, report: MarginReport, level: str) -> None:
        """Keep the newest report; the state task publishes it (on change, rate-limited)."""
        self._reports[report.account] = (report, level)
        self._state_wake.set()

    def publish_action(self, account: str, payload: Mapping[str, Any]) -> None:
        """Queue an action-audit message for `<prefix>/<account>/action` (best effort).

        The durable record is the store's audit trail; this topic is a live feed, so when the
        queue is full (broker gone for long) the oldest entry is dropped and logged.
        """
        kind = payload.get("kind")
        if kind in _PROTECTION_ON or kind in _PROTECTION_OFF:
            self._set_flag(account, "protection_active", kind in _PROTECTION_ON)
        body = json.dumps(payload, default=str, sort_keys=True)
        if self._actions.full():
            dropped = self._actions.get_nowait()
            log.warning("mqtt.action_dropped", account=dropped[0])
        self._actions.put_nowait((account, body))

    async def ready(self) -> None:
        """Return once a broker session is up (alerting.PacedSink).

        Alerts queued while the session is still connecting (the first alert after a start)
        wait for it instead of failing: no "delivery failed" for a connection that is
        merely not there yet; a lost broker is logged once, as `mqtt.disconnected`.
        """
        await self._connected.wait()

    def drain_time(self, queued: int) -> float:
        """Seconds `queued` alerts need at most: one publish round (PUBACK wait) per batch."""
        return math.ceil(queued / 100) * self.settings.timeout

    def _set_flag(self, account: str, name: str, value: bool) -> None:
        """A binary sensor's state; the retained state is republished when it changes."""
        flags = self._flags.setdefault(account, {})
        if flags.get(name, False) != value:
            flags[name] = value
            self._state_wake.set()

    @property
    def connected(self) -> bool:
        """True while a broker session is up."""
        return self._connected.is_set()

    async def wait_connected(self) -> None:
        """Return once connected (tests, startup ordering)."""
        await self._connected.wait()

    # --- connection loop --------------------------------------------------------------------

    def _make_client(self) -> aiomqtt.Client:
        will = aiomqtt.Will(self.status_topic, "offline", qos=1, retain=True)
        return make_client(self.settings, self.client_id, will)

    async def run(self) -> None:
        """Connect, serve, reconnect with backoff; forever (until cancelled)."""
        client = self._make_client()  # inside the loop: aiomqtt #335
        self._wire.attach(client)
        attempt = 0
        self._stopping = False
        while True:
            error: Exception | None = None
            try:
                async with client:
                    attempt = 0
                    try:
                        await self._session(client)
                    except asyncio.CancelledError:
                        self._stopping = True
                        raise
            except aiomqtt.MqttError as exc:
                error = exc
            except Exception as exc:  # a bug here must not take the daemon's TaskGroup down
                log.exception("mqtt.session_failed")
                error = exc
            finally:
                self._client = None
                self._connected.clear()
                self._wire.down()
            if self._stopping:
                # aiomqtt's __aexit__ can turn our cancellation into "Operation timed out"
                # while it waits for the DISCONNECT ack: never swallow a shutdown.
                raise asyncio.CancelledError
            raise_if_cancelling()
            attempt += 1
            delay = retry_after(attempt)
            log.warning(
                "mqtt.disconnected",
                host=self.settings.host,
                port=self.settings.port,
                error=str(error),
                retry_in=round(delay, 2),
            )
            await asyncio.sleep(delay)

    async def _session(self, client: aiomqtt.Client) -> None:
        p = self.settings.prefix
        # Commands are taken from paho's own callback, in the loop's reader callback, not
        # through aiomqtt's message iterator: that costs a Message, a queue hop and a task
        # per message (~30 us), and under a flood of 50 000 junk commands it, not the check
        # (~5 us), set the pace; a valid command waited behind the backlog (docs/hardening.md).
        paho = client._client  # aiomqtt 2.x (pinned <3) wraps paho
        for topic in (f"{p}/command", f"{p}/+/command"):
            paho.message_callback_add(topic, self._on_command)
        await client.subscribe([(f"{p}/command", 1), (f"{p}/+/command", 1)])
        if self.settings.discovery:
            await client.subscribe(f"{self.settings.discovery_prefix}/status", qos=1)
        # `online` only once the command topics are subscribed: an automation that answers
        # `online` with a command (a pause after a restart) must not publish into the void
        await client.publish(self.status_topic, "online", qos=1, retain=True)
        self._announced.clear()
        self._published.clear()
        self._client = client
        self._wire.up()
        self._connected.set()
        log.info("mqtt.connected", host=self.settings.host, client_id=self.client_id)
        if self._on_connected is not None:
            self._on_connected()
        self._state_wake.set()
        raise_if_cancelling()
        # Plain tasks rather than a nested TaskGroup: on Python 3.11 a TaskGroup that aborts
        # on a lost connection can leave this (reconnecting) task marked as cancelling.
        tasks = [
            asyncio.create_task(self._receive(client), name="mqtt.receive"),
            asyncio.create_task(self._publish_replies(client), name="mqtt.reply"),
            asyncio.create_task(self._publish_states(client), name="mqtt.state"),
            asyncio.create_task(self._publish_actions(client), name="mqtt.action"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        except asyncio.CancelledError:
            # A clean shutdown sends DISCONNECT, which suppresses the will: say offline here,
            # and only once the state and action tasks are gone, so nothing follows it.
            self._client = None
            self._connected.clear()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                async with asyncio.timeout(self.settings.timeout):  # not wait_for: cpython#86296
                    await self._states_round(client, interval=0.0)  # the final state, unthrottled
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                async with asyncio.timeout(self.settings.timeout):
                    await client.publish(self.status_topic, "offline", qos=1, retain=True)
            raise
        finally:
            for task in tasks:
                task.cancel()
            # A cancel that lands while aiomqtt waits for a PUBACK can be swallowed, and the
            # task goes on to wait for the next state forever: cancel again until all end.
            while not all(task.done() for task in tasks):
                await asyncio.wait(tasks, timeout=0.1)
                for task in tasks:
                    task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            exc = task.exception()
            if exc is not None:
                raise exc

    async def _receive(self, client: aiomqtt.Client) -> None:
        """Everything but commands: Home Assistant's birth message."""
        async for message in client.messages:
            topic = message.topic.value
            if topic == f"{self.settings.discovery_prefix}/status" and message.payload == b"online":
                # Home Assistant restarted: re-send discovery and state (HA docs, birth).
                self._births += 1
                self._announced.clear()
                self._published.clear()
                self._state_wake.set()

    def _on_command(self, _client: object, _userdata: object, message: Any) -> None:
        """paho's callback for the command topics: check, execute, queue the reply.

        A refusal's reply is QoS 0 and at most `REFUSAL_REPLIES` a second (a reply per
        junk message would be a flood of our own); an executed command's is QoS 1.
        """
        raw = bytes(message.payload)
        if self.command_handler is None:
            reply: Mapping[str, Any] = {"ok": False, "error": "commands are not enabled"}
        else:
            try:
                reply = self.command_handler(raw)
            except Exception as exc:  # a bad command must never take the connection down
                log.error("mqtt.command_failed", error=type(exc).__name__)
                reply = {"ok": False, "error": f"internal error: {type(exc).__name__}"}
        if not reply.get("ok"):
            second = int(time.monotonic())
            if second != self._refusal_second:
                self._refusal_second, self._refusal_replies = second, 0
            self._refusal_replies += 1
            if self._refusal_replies > REFUSAL_REPLIES:
                return
        self._replies.put_nowait(reply)

    async def _publish_replies(self, client: aiomqtt.Client) -> None:
        while True:
            reply = await self._replies.get()
            qos = 1 if reply.get("ok") else 0
            await client.publish(self.reply_topic, json.dumps(reply, default=str), qos=qos)
            raise_if_cancelling()  # as in _publish_states

    async def _publish_states(self, client: aiomqtt.Client) -> None:
        while True:
            await self._state_wake.wait()
            self._state_wake.clear()
            soonest = await self._states_round(client, self.settings.state_interval)
            # a shutdown's cancel lost in aiomqtt's ack wait (gh-86296) would leave this
            # task parked on `_state_wake` and the daemon's stop hanging (fault matrix)
            raise_if_cancelling()
            if soonest is not None:
                with contextlib.suppress(TimeoutError):  # not wait_for: cpython#86296
                    async with asyncio.timeout(soonest):
                        await self._state_wake.wait()
                self._state_wake.set()

    async def _states_round(self, client: aiomqtt.Client, interval: float) -> float | None:
        """Publish each account's newest state that changed, at most once per `interval`;
        returns the seconds until a held-back one may go (None: none held back)."""
        soonest: float | None = None
        for account, (report, level) in list(self._reports.items()):
            if self.settings.discovery and account not in self._announced:
                births = self._births
                for topic, config in discovery_configs(self.settings, account, report.currency):
                    await client.publish(topic, json.dumps(config), qos=1, retain=True)
                if births == self._births:
                    # else Home Assistant came back during this round: the next round sends
                    # all of it again (test_stop_during_a_publish_ends waited for it, 1 in 10)
                    self._announced.add(account)
            payload = state_payload(report, level, self._flags.get(account))
            if account in self._protection:
                payload["protection_disabled"] = self._protection[account]
            body = json.dumps(payload, separators=(",", ":"))
            last_body, last_at = self._published.get(account, ("", -1e18))
            if body == last_body:
                continue
            now = time.monotonic()
            wait = last_at + interval - now
            if wait > 0:
                soonest = wait if soonest is None else min(soonest, wait)
                continue
            await client.publish(
                f"{self.settings.prefix}/{account}/state", body, qos=1, retain=True
            )
            self._published[account] = (body, now)
        return soonest

    async def _publish_actions(self, client: aiomqtt.Client) -> None:
        while True:
            account, body = await self._actions.get()
            try:
                await client.publish(f"{self.settings.prefix}/{account}/action", body, qos=1)
            except aiomqtt.MqttError:
                self._actions.put_nowait((account, body))  # try again after the reconnect
                raise
            raise_if_cancelling()  # as in _publish_states


def make_client(
    s: MqttSettings, identifier: str, will: aiomqtt.Will | None = None
) -> aiomqtt.Client:
    """A client for the `[mqtt]` section (the daemon's sink, and `notify-test` without a will)."""
    tls_params = None
    if s.tls:
        tls_params = aiomqtt.TLSParameters(
            ca_certs=str(s.tls_ca_file) if s.tls_ca_file else None,
            certfile=str(s.tls_cert_file) if s.tls_cert_file else None,
            keyfile=str(s.tls_key_file) if s.tls_key_file else None,
        )
    return aiomqtt.Client(
        s.host,
        s.port,
        username=s.username,
        password=s.password.get_secret_value() if s.password else None,
        identifier=identifier,
        will=will,
        clean_session=True,
        keepalive=s.keepalive,
        timeout=s.timeout,
        tls_params=tls_params,
        tls_insecure=s.tls_insecure if s.tls else None,
        # paho leaves Nagle on: an alert right after another publish (a state, the first
        # alert of two) waited on the socket for the broker's TCP ack of the one before
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
    )
