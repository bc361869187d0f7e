"""A sink base for tests and benchmarks that only look at some of the daemon's calls."""

from __future__ import annotations

from monitor.sink import Sink


class QuietSink(Sink):
    """Every `Sink` call (monitor/sink.py) as the base's no-op; override what you watch."""

    name = "quiet"
