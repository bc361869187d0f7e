"""Fault injection: a TCP fault proxy and the fault matrix (issue 7)."""
