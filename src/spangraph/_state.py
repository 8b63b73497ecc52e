"""Process-wide state set by :func:`spangraph.configure` (one default instance)."""

from __future__ import annotations

from opentelemetry import trace

from ._version import __version__

INSTRUMENTATION_NAME = "spangraph"

tracer: trace.Tracer = trace.get_tracer(INSTRUMENTATION_NAME, __version__)
"""The tracer spangraph's own spans come from; follows the global provider until
``configure`` points it at a specific one."""

project: str = "default"
"""Project id stamped on spangraph's own spans."""

propagate: bool = False
"""Whether run ids travel in W3C Baggage (``configure(propagate=True)``)."""

events_limit_warned: bool = False
"""Whether a span with more events than its TracerProvider keeps was warned of."""

unconfigured_warned: bool = False
"""Whether the process's first workflow was looked at for a missing setup (a warning
when nothing was set up: see ``_spans._warn_if_unconfigured``)."""
