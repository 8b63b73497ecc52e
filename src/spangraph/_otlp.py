"""The OTLP exporter the standard ``OTEL_*`` variables ask for, for what spangraph exports
itself: the traces of the TracerProvider ``configure()`` makes, the service's metrics."""

from __future__ import annotations

import importlib
import logging
import os
from typing import Any, Final

_log = logging.getLogger("spangraph")

NAMES: Final = {
    "otlp": "",  # the protocol variables choose
    "otlp_proto_http": "http/protobuf",
    "otlp_proto_grpc": "grpc",
}
"""``OTEL_{TRACES,METRICS}_EXPORTER`` names of an OTLP exporter: the protocol of each."""

_CLASSES: Final = {
    ("traces", "http/protobuf"): ("opentelemetry.exporter.otlp.proto.http.trace_exporter", "OTLPSpanExporter"),
    ("traces", "grpc"): ("opentelemetry.exporter.otlp.proto.grpc.trace_exporter", "OTLPSpanExporter"),
    ("metrics", "http/protobuf"): ("opentelemetry.exporter.otlp.proto.http.metric_exporter", "OTLPMetricExporter"),
    ("metrics", "grpc"): ("opentelemetry.exporter.otlp.proto.grpc.metric_exporter", "OTLPMetricExporter"),
}  # fmt: skip

PACKAGES: Final = {
    "http/protobuf": "spangraph[otlp]",
    "grpc": "opentelemetry-exporter-otlp-proto-grpc",
}
"""The package each OTLP protocol's exporter comes with."""

BY_PROTOCOL: Final = {protocol: name for name, protocol in NAMES.items() if protocol}
"""OTLP protocol -> the SDK's exporter entry point name for it (``otlp_proto_http`` ...)."""


def protocol(signal: str) -> str:
    """The OTLP protocol of ``signal`` (``traces``, ``metrics``, ``logs``):
    ``OTEL_EXPORTER_OTLP_{SIGNAL}_PROTOCOL``, else ``OTEL_EXPORTER_OTLP_PROTOCOL``, else
    OTLP/HTTP (what spangraph installs; the SDK's own default, gRPC, is not)."""
    return (
        os.environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()


def exporter_class(signal: str, who: str) -> Any:
    """The OTLP exporter class for ``signal`` (``traces`` or ``metrics``) that
    ``OTEL_{SIGNAL}_EXPORTER`` (unset: ``otlp``) and ``OTEL_EXPORTER_OTLP_{SIGNAL}_PROTOCOL``
    / ``OTEL_EXPORTER_OTLP_PROTOCOL`` (unset: OTLP/HTTP) ask for, or ``None``: when they
    say ``none``, and, with a logged warning naming ``who`` exports, when they name no
    OTLP exporter, an unknown protocol, or an exporter that is not installed."""
    variable = f"OTEL_{signal.upper()}_EXPORTER"
    # (empty: unset, as OpenTelemetry reads it; ``spangraph``, the exporter of
    # opentelemetry-instrument setups, a child process may inherit: no OTLP name)
    value = os.environ.get(variable, "").strip() or "otlp"
    names = [n.strip().lower() for n in value.split(",") if n.strip()]
    chosen = [name for name in names if name in NAMES]
    if not chosen:
        if any(name not in ("none", "spangraph") for name in names):
            _log.warning(
                "%s exports its %s over OTLP only; %s=%s: no %s exported",
                who,
                signal,
                variable,
                os.environ.get(variable),
                signal,
            )
        return None
    chosen_protocol = NAMES[chosen[0]] or protocol(signal)
    target = _CLASSES.get((signal, chosen_protocol))
    if target is None:
        _log.warning(
            "%s: unknown OTLP protocol %r for %s (expected http/protobuf or grpc): no %s exported",
            who,
            chosen_protocol,
            signal,
            signal,
        )
        return None
    try:
        return getattr(importlib.import_module(target[0]), target[1])
    except ImportError:
        _log.warning(
            "%s: an OTLP %s endpoint is set but the %s exporter is missing (pip install "
            "'%s'): no %s exported",
            who,
            signal,
            chosen_protocol,
            PACKAGES[chosen_protocol],
            signal,
        )
        return None
