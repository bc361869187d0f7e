"""margin-monitor: watch cross-margined futures accounts and act before a liquidation."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("margin-monitor")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
