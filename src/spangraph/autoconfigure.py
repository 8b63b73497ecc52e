"""Entry points for OpenTelemetry's zero-code setup (``opentelemetry-instrument``).

* ``OTEL_TRACES_EXPORTER=otlp,spangraph`` — the ``spangraph`` traces exporter adds
  spangraph's graph and live processors to the TracerProvider the SDK configures (the
  exporter itself exports nothing: spans reach the graph through the processors, which also
  see span *starts*, so running spans and live events work).
* ``OTEL_PYTHON_DISTRO=spangraph OTEL_PYTHON_CONFIGURATOR=spangraph opentelemetry-instrument
  python app.py`` — the SDK is configured from the standard ``OTEL_*`` variables, then
  spangraph's processors are added.
* ``spangraph run -- python app.py`` does the same in one command.

Settings come from the environment (``SPANGRAPH_*``, ``NEO4J_*``), as for
:func:`spangraph.configure`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from opentelemetry.instrumentation.distro import BaseDistro
from opentelemetry.sdk._configuration import _OTelSDKConfigurator
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

_log = logging.getLogger("spangraph")

__all__ = ["SpangraphConfigurator", "SpangraphDistro", "SpangraphSpanExporter"]


def _add_processors() -> None:
    """Add spangraph's processors to the global TracerProvider; log, never raise: a
    tracing setup must not stop the program it traces."""
    from ._sdk import configure, current

    if current() is not None:
        return
    try:
        # opentelemetry-instrument loads the threading instrumentor from its entry point
        configure(instrument_threads=False)
    except Exception as exc:
        _log.error("spangraph: not enabled: %s", exc)


class SpangraphSpanExporter(SpanExporter):
    """The ``spangraph`` value of ``OTEL_TRACES_EXPORTER``: installs spangraph's processors
    on the TracerProvider being configured; its own ``export`` has nothing to do."""

    def __init__(self, **_: Any) -> None:
        _add_processors()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        from ._sdk import shutdown

        shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        from ._sdk import flush

        return flush(timeout_millis / 1000)


class SpangraphDistro(BaseDistro):
    """``OTEL_PYTHON_DISTRO=spangraph``: OTLP export only when an OTLP endpoint is set
    (otherwise no exporter errors on every batch), metrics and logs off by default."""

    def _configure(self, **kwargs: Any) -> None:
        has_endpoint = bool(
            os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        )
        os.environ.setdefault("OTEL_TRACES_EXPORTER", "otlp" if has_endpoint else "none")
        os.environ.setdefault("OTEL_METRICS_EXPORTER", "none")
        os.environ.setdefault("OTEL_LOGS_EXPORTER", "none")


class SpangraphConfigurator(_OTelSDKConfigurator):
    """``OTEL_PYTHON_CONFIGURATOR=spangraph``: the standard SDK setup from ``OTEL_*``
    variables, plus spangraph's graph and live processors."""

    def _configure(self, **kwargs: Any) -> None:
        super()._configure(**kwargs)
        _add_processors()
