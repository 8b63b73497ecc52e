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
import threading
from collections.abc import Sequence
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from opentelemetry.instrumentation.distro import BaseDistro  # type: ignore[attr-defined]  # (its module opts out of type checking)
from opentelemetry.sdk._configuration import _OTelSDKConfigurator
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from . import _otlp

_log = logging.getLogger("spangraph")

__all__ = ["SpangraphConfigurator", "SpangraphDistro", "SpangraphSpanExporter"]


_attempted = False
_attempt_lock = threading.Lock()


def _add_processors() -> None:
    """Add spangraph's processors to the global TracerProvider; log, never raise: a
    tracing setup must not stop the program it traces. Tried once per process: the
    configurator and the traces exporter may both ask, and a setting that failed (an
    unreachable store, say) would fail — and be waited for and logged — again."""
    global _attempted
    from ._sdk import configure, current

    with _attempt_lock:
        if _attempted or current() is not None:
            return
        _attempted = True
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


def _otlp_traces_exporter() -> str:
    """The traces exporter for an OTLP endpoint: the one of
    ``OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL``, else OTLP/HTTP (as ``spangraph.configure``
    uses; the SDK's own default, gRPC, is not installed with spangraph). ``none``, with a
    logged reason, when that exporter is not installed or the protocol is unknown: the
    SDK would otherwise fail the whole setup, spangraph's processors and instrumentors
    included."""
    protocol = _otlp.protocol("traces")
    name = _otlp.BY_PROTOCOL.get(protocol)
    if name is None:
        _log.error(
            "spangraph: unknown OTLP protocol %r (expected one of %s): no OTLP export",
            protocol,
            ", ".join(_otlp.BY_PROTOCOL),
        )
        return "none"
    if not entry_points(group="opentelemetry_traces_exporter", name=name):
        _log.error(
            "spangraph: an OTLP endpoint is set but the OTLP exporter for %s is not "
            "installed (pip install '%s'): no OTLP export",
            protocol,
            _otlp.PACKAGES[protocol],
        )
        return "none"
    return name


class SpangraphDistro(BaseDistro):
    """``OTEL_PYTHON_DISTRO=spangraph``: OTLP export only when an OTLP endpoint is set
    (otherwise no exporter errors on every batch) and its exporter is installed, over
    OTLP/HTTP unless ``OTEL_EXPORTER_OTLP_PROTOCOL`` says ``grpc``; metrics and logs off
    by default. A traces exporter chosen in ``OTEL_TRACES_EXPORTER`` is left as it is.

    Zero-code setups load every instrumentor installed: a library that two of them
    instrument (spangraph's OpenAI instrumentor beside OpenLLMetry's or OpenInference's,
    two LangChain instrumentations) has every call recorded twice. The distro logs a
    warning naming both entry points when it happens."""

    def __init__(self) -> None:
        super().__init__()
        self._instrumented: dict[str, str] = {}  # library -> the entry point that did it

    def load_instrumentor(self, entry_point: Any, **kwargs: Any) -> None:
        super().load_instrumentor(entry_point, **kwargs)
        try:  # (an instrumentor is a singleton: this is the one just loaded)
            self._note(entry_point, entry_point.load()())
        except Exception:  # (a warning's worth: never the program's setup)
            _log.debug("spangraph: could not read %s's libraries", entry_point.name)

    def _note(self, entry_point: Any, instrumentor: Any) -> None:
        if not getattr(instrumentor, "is_instrumented_by_opentelemetry", False):
            return  # (its library is not installed, or it refused)
        from packaging.requirements import Requirement
        from packaging.utils import canonicalize_name

        for requirement in instrumentor.instrumentation_dependencies():
            library = canonicalize_name(Requirement(requirement).name)
            first = self._instrumented.setdefault(library, entry_point.name)
            if first != entry_point.name:
                _log.warning(
                    "spangraph: %s is instrumented twice, by the instrumentors %r and %r: "
                    "each of its calls will be recorded twice (two spans); turn one off, "
                    "e.g. OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=%s",
                    library,
                    first,
                    entry_point.name,
                    entry_point.name,
                )

    def _configure(self, **kwargs: Any) -> None:
        has_endpoint = bool(
            os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        )
        if "OTEL_TRACES_EXPORTER" not in os.environ:
            os.environ["OTEL_TRACES_EXPORTER"] = _otlp_traces_exporter() if has_endpoint else "none"
        os.environ.setdefault("OTEL_METRICS_EXPORTER", "none")
        os.environ.setdefault("OTEL_LOGS_EXPORTER", "none")
        for signal in ("TRACES", "METRICS", "LOGS"):
            _otlp_over_http(signal)


def _otlp_over_http(signal: str) -> None:
    """``otlp`` in ``OTEL_{signal}_EXPORTER`` as the OTLP/HTTP exporter unless a protocol
    variable says otherwise: the SDK takes it for gRPC, which is not installed with
    spangraph, and failed the whole setup (traces too)."""
    variable = f"OTEL_{signal}_EXPORTER"
    names = [name.strip() for name in os.environ.get(variable, "").split(",")]
    if "otlp" not in names:
        return
    if _otlp.protocol(signal) == "http/protobuf":
        os.environ[variable] = ",".join("otlp_proto_http" if n == "otlp" else n for n in names)


class SpangraphConfigurator(_OTelSDKConfigurator):
    """``OTEL_PYTHON_CONFIGURATOR=spangraph``: the standard SDK setup from ``OTEL_*``
    variables, plus spangraph's graph and live processors. When the standard setup fails
    (an exporter named in ``OTEL_TRACES_EXPORTER`` that is not installed, say), the error
    is logged and spangraph's processors are added all the same, so the program is still
    traced into the graph and the instrumentors still load."""

    if TYPE_CHECKING:  # the base class's __new__ is untyped

        def __new__(cls) -> SpangraphConfigurator: ...

    def _configure(self, **kwargs: Any) -> None:
        try:
            super()._configure(**kwargs)
        except Exception as exc:
            _log.error(
                "spangraph: the OpenTelemetry SDK setup from the OTEL_* variables failed: "
                "%s; spangraph's processors are added all the same",
                exc,
            )
        _add_processors()
