"""QoS 1 alerts handed to paho in the committing call, with a future per PUBACK and per flush.

aiomqtt 2.x's `publish` is a coroutine: its packet reaches paho only when its task first
runs, and nothing says when the bytes are on the socket. Issue 16 measured what that costs
an alert: the delivery task's wake-up, a task per publish, then aiomqtt's writer registration
and the write, ~0.7 ms of a 2.4 ms tick -> alert, and a protective step woken by the same
report sent its REST requests first unless it yielded a guessed number of loop passes.

So alerts go through the session's paho client directly (aiomqtt 2.x, pinned <3, wraps
one; the command topics already use it): `paho.publish` queues the packet and it is
written in the same call (`_write_now`). Of the paho callbacks aiomqtt installed, two are
wrapped (aiomqtt's run first): `on_publish` resolves the PUBACK future of a message id,
`on_socket_unregister_write` (paho calls it when its outgoing queue is empty, i.e. all of
it is on the socket) resolves the `written()` futures. The third, `on_socket_register_write`,
is replaced. aiomqtt answers it with `call_soon_threadsafe(add_writer, sock.fileno(), ...)`:
a write to the loop's self-pipe before an alert's own bytes (the first one after an idle
second ~0.05 ms, issue 16) for a writer `send` makes useless, and a callback that, when the
session closed the socket first (a stopping daemon's last alert), added a writer on a
closed descriptor (an `EBADF` "Exception in callback"; on a reused number, a writer on
someone else's socket). Here the request is held while `send` writes and a writer is added
only when bytes are left; otherwise it is added at once on the loop's thread, and from
paho's connect thread only if that socket is still paho's when the loop runs it. aiomqtt's
publish, subscribe and reconnect are untouched: state, discovery, replies and actions
still use it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Collection, Sequence
from typing import Any

import aiomqtt
import paho.mqtt.client as paho

__all__ = ["AlertWire"]


class AlertWire:
    """The alert publishes of one `aiomqtt.Client` (all its sessions)."""

    def __init__(self) -> None:
        self._paho: paho.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._up = False
        self._acks: dict[int, asyncio.Future[None]] = {}
        self._flushed: list[asyncio.Future[None]] = []
        #: inside `send`: paho's requests to watch the socket for writing wait here
        self._sending = False
        self._held_register: Callable[[], None] | None = None

    def attach(self, client: aiomqtt.Client) -> None:
        """Wrap the paho callbacks of `client` (once: they outlive its sessions)."""
        inner = client._client  # aiomqtt 2.x (pinned <3) wraps paho
        their_publish = inner.on_publish
        their_unregister = inner.on_socket_unregister_write

        def on_publish(c: paho.Client, userdata: Any, mid: int, *rest: Any) -> None:
            if their_publish is not None:
                their_publish(c, userdata, mid, *rest)
            ack = self._acks.pop(mid, None)
            if ack is not None and not ack.done():
                ack.set_result(None)

        def on_unregister_write(c: paho.Client, userdata: Any, sock: Any) -> None:
            if their_unregister is not None:
                their_unregister(c, userdata, sock)
            self._wake_flushed()

        def on_register_write(c: paho.Client, userdata: Any, sock: Any) -> None:
            del userdata
            if self._sending:  # `send` writes now; a socket writer only for what is left
                self._held_register = lambda: self._watch_writable(client, c, sock)
                return
            self._watch_writable(client, c, sock)

        inner.on_publish = on_publish
        inner.on_socket_unregister_write = on_unregister_write
        inner.on_socket_register_write = on_register_write
        self._paho = inner
        self._loop = asyncio.get_running_loop()

    def _watch_writable(self, client: aiomqtt.Client, c: paho.Client, sock: Any) -> None:
        """aiomqtt's register-write without its race with a closing socket (module doc)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self._add_writer(client, c, sock)
        else:
            loop.call_soon_threadsafe(self._add_writer, client, c, sock)

    def _add_writer(self, client: aiomqtt.Client, c: paho.Client, sock: Any) -> None:
        loop = self._loop
        fd = sock.fileno()
        if loop is None or fd < 0 or c.socket() is not sock:
            return  # closed (paho forgets its socket before closing it) or replaced since

        def write() -> None:
            # as aiomqtt's writer: a failed write (a broken pipe) ends the session now
            try:
                c.loop_write()
            except Exception as exc:
                disconnected = client._disconnected  # aiomqtt 2.x (pinned <3)
                if not disconnected.done():
                    disconnected.set_exception(exc)

        loop.add_writer(fd, write)

    def up(self) -> None:
        """A session is connected: publishes may go."""
        self._up = True

    def down(self) -> None:
        """The session ended: pending acknowledgements fail now (not after the timeout), and
        nothing waits for a flush that cannot come."""
        self._up = False
        acks, self._acks = self._acks, {}
        for ack in acks.values():
            if not ack.done():
                ack.set_exception(ConnectionError("MQTT session ended"))
        self._wake_flushed()

    def send(
        self, messages: Sequence[tuple[str, str, str]], timeout: float
    ) -> asyncio.Future[Collection[str]] | None:
        """Queue `(key, topic, payload)` QoS 1 publishes in paho now; the future gives the keys
        whose PUBACK came within `timeout` s. None: no session."""
        inner = self._paho
        if inner is None or not self._up:
            return None
        loop = asyncio.get_running_loop()
        pending: dict[str, tuple[int, asyncio.Future[None]]] = {}
        self._sending = True
        try:
            for key, topic, payload in messages:
                info = inner.publish(topic, payload, qos=1)
                if info.rc != paho.MQTT_ERR_SUCCESS:
                    continue  # not acknowledged: the outbox retries it
                ack = loop.create_future()
                self._acks[info.mid] = ack
                pending[key] = (info.mid, ack)
            if pending:
                _write_now(inner)
        finally:
            self._sending = False
            held, self._held_register = self._held_register, None
            if held is not None and inner.want_write():
                held()  # bytes left (a full socket buffer, an error): a socket writer
        return asyncio.ensure_future(self._acked(pending, timeout))

    async def _acked(
        self, pending: dict[str, tuple[int, asyncio.Future[None]]], within: float
    ) -> Collection[str]:
        if pending:
            await asyncio.wait([ack for _, ack in pending.values()], timeout=within)
        acked = set()
        for key, (mid, ack) in pending.items():
            if ack.done() and ack.exception() is None:
                acked.add(key)
            elif self._acks.get(mid) is ack:
                del self._acks[mid]  # timed out: a late PUBACK finds nothing
        return acked

    def written(self) -> asyncio.Future[None]:
        """Done once paho's outgoing queue is empty: everything handed so far is on the
        socket (at once when it already is, or when there is no session)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        inner = self._paho
        if inner is None or not self._up or not inner.want_write():
            done.set_result(None)
        else:
            self._flushed.append(done)
        return done

    def _wake_flushed(self) -> None:
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        loop = self._loop
        if running is not loop:
            # paho can close the socket from aiomqtt's connect thread: resolve on the loop
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(self._wake_flushed)
            return
        waiters, self._flushed = self._flushed, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


def _write_now(inner: paho.Client) -> None:
    """Write what paho holds, in this call (paho's `loop_write`, its API for external
    loops). Left to aiomqtt's socket writer, the bytes wait for the selector's next turn,
    behind everything else the report woke: a shock solve held an alert 4 ms (issue 16)."""
    with contextlib.suppress(Exception):  # aiomqtt's own writer meets it and ends the session
        inner.loop_write()
