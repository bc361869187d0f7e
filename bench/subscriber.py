"""An MQTT subscriber in its own process, as a person's phone or Home Assistant would be.

A subscriber inside the benchmark's own event loop waits whenever the daemon's loop is busy
(a shock solve, a REST answer being parsed), so its receive time measured the daemon's
other work, not the alert's delivery. The process is paho's plain blocking loop (the MQTT
client under aiomqtt), stamping in `on_message`: an asyncio subscriber added its own queue
hop and a loop wake-up to every figure (~0.5 ms in the running design of vs_polling.py,
issue 16), which is the subscriber's cost, not the delivery's. Run as a script it
subscribes (QoS 1) to the topics given and prints one line per message:
`perf_counter() topic payload`; `perf_counter` is CLOCK_MONOTONIC on Linux, one clock for
every process, so the parent compares it with its own stamps. `RemoteSubscriber` starts it
and hands the lines over as `(time, topic, body)`.

    python bench/subscriber.py HOST PORT TOPIC [TOPIC ...]
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["RemoteSubscriber"]

_SCRIPT = str(Path(__file__).resolve())


class RemoteSubscriber:
    """The subscriber process; `messages` yields (perf_counter time, topic, JSON body)."""

    def __init__(self, host: str, port: int, topics: list[str]) -> None:
        self.args = [host, str(port), *topics]
        self.messages: asyncio.Queue[tuple[float, str, Any]] = asyncio.Queue()
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def __aenter__(self) -> RemoteSubscriber:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            _SCRIPT,
            *self.args,
            stdout=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read())
        async with asyncio.timeout(20):
            await self._ready.wait()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.terminate()
            await self._process.wait()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)

    async def _read(self) -> None:
        assert self._process is not None
        assert self._process.stdout is not None
        async for raw in self._process.stdout:
            line = raw.decode().rstrip("\n")
            if line == "subscribed":
                self._ready.set()
                continue
            stamp, topic, body = line.split(" ", 2)
            self.messages.put_nowait((float(stamp), topic, json.loads(body)))


def _subscribe(host: str, port: int, topics: list[str]) -> None:
    """paho's own blocking loop, stamping in its `on_message`: the moment this process has
    the message, with no event loop of the subscriber's own between the socket and the stamp.
    """
    import paho.mqtt.client as paho  # noqa: PLC0415 - only the child process needs it

    out = sys.stdout
    acked: list[int] = []

    def on_connect(client: paho.Client, *_: object) -> None:
        for topic in topics:
            client.subscribe(topic, qos=1)

    def on_subscribe(*_: object) -> None:
        acked.append(1)
        if len(acked) == len(topics):
            out.write("subscribed\n")
            out.flush()

    def on_message(_client: paho.Client, _userdata: object, message: paho.MQTTMessage) -> None:
        stamp = time.perf_counter()
        body = json.dumps(json.loads(message.payload))
        out.write(f"{stamp!r} {message.topic} {body}\n")
        out.flush()

    client = paho.Client(paho.CallbackAPIVersion.VERSION2)
    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    client.connect(host, port)
    client.loop_forever()


if __name__ == "__main__":
    _subscribe(sys.argv[1], int(sys.argv[2]), sys.argv[3:])
