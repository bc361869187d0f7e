"""The running daemon: per-account loops, supervision and reload, sharding."""
