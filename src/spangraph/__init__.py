"""spangraph: agent and workflow observability on OpenTelemetry."""

from ._version import __version__

__all__ = ["__version__"]
