"""A bounded run of bench/fuzz.py's issue 13 targets (the full 100 000 are a benchmark)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings

from tests.security.fuzz_targets import EnvelopeChecker, HttpChecker, envelope_inputs, http_inputs


@pytest.fixture(scope="module")
def envelopes() -> Iterator[EnvelopeChecker]:
    checker = EnvelopeChecker()
    yield checker
    checker.close()


@pytest.fixture(scope="module")
def http() -> Iterator[HttpChecker]:
    checker = HttpChecker()
    yield checker
    checker.close()


class TestFuzz:
    """Hostile envelopes and HTTP requests are answered, never raised."""

    @settings(
        max_examples=500, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(raw=envelope_inputs())
    def test_envelopes(self, envelopes: EnvelopeChecker, raw: bytes) -> None:
        """Test that any command message is accepted or refused with one line."""
        assert envelopes(raw) in ("accepted", "rejected")

    @settings(
        max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(request=http_inputs())
    def test_http(self, http: HttpChecker, request: bytes) -> None:
        """Test that any request to the command port gets an HTTP answer below 500."""
        assert http(request) in ("accepted", "rejected")
