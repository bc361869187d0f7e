"""Fixtures several test files share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.mqtt_broker import Mosquitto


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """A real mosquitto on a free 127.0.0.1 port for the whole session.

    Use `.host`/`.port`; `.restart()` restarts it on the same port (persistence on). A test
    that stops it must start it again. Topics should be unique per test.
    """
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
