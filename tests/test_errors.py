"""Tests for monitor/errors.py: the one way an error becomes one line."""

from __future__ import annotations

import errno

import pytest

from monitor.errors import fold, one_line, os_reason


class TestFold:
    def test_whitespace_runs_become_one_space(self) -> None:
        """Test that newlines, tabs and repeated spaces fold to single spaces, trimmed."""
        assert fold("  a\n\tb  \r\n c ") == "a b c"


class TestOneLine:
    def test_class_and_folded_text(self) -> None:
        """Test that an exception reads as its class and its text on one line."""
        assert one_line(ValueError("bad\nvalue")) == "ValueError: bad value"

    def test_empty_text_is_the_class_alone(self) -> None:
        """Test that an exception without text is named by its class, once."""
        assert one_line(TimeoutError()) == "TimeoutError"

    def test_long_text_is_capped_with_an_ellipsis(self) -> None:
        """Test that the text is cut at `limit` characters, the last one an ellipsis."""
        line = one_line(RuntimeError("x" * 500), limit=10)
        assert line == "RuntimeError: " + "x" * 9 + "…"

    def test_scrub_runs_before_folding(self) -> None:
        """Test that the scrub sees the raw text and its result is folded and capped."""
        line = one_line(
            OSError("GET /a?sig=s3cret\nfailed"), scrub=lambda t: t.replace("s3cret", "X")
        )
        assert line == "OSError: GET /a?sig=X failed"


class TestOsReason:
    def test_reason_from_the_errno(self) -> None:
        """Test that the reason comes from the errno, lowercase, not the wrapped text."""
        exc = OSError(errno.EADDRINUSE, "error while attempting to bind on address")
        assert os_reason(exc) == "address already in use"

    def test_not_utf8(self) -> None:
        """Test that a decoding failure says the file is not UTF-8."""
        with pytest.raises(UnicodeDecodeError) as info:
            b"\xff".decode("utf-8")
        assert os_reason(info.value) == "not UTF-8"

    def test_without_errno_the_text_or_class(self) -> None:
        """Test that an OSError without an errno falls back to its strerror or class."""
        assert os_reason(TimeoutError()) == "timeouterror"
