"""spangraph: agent and workflow observability on OpenTelemetry.

Workflows, steps and events become OpenTelemetry spans; spangraph's processors write
them into a graph database as parent-child graphs and stream them live through Redis,
beside the standard OTLP path.

>>> import spangraph
>>> spangraph.configure()                       # doctest: +SKIP
>>> @spangraph.workflow
... def answer(question: str) -> str: ...
"""

from . import semconv, testing
from ._sdk import Spangraph, configure, flush, shutdown
from ._version import __version__
from .branching import branch, decision, monitor
from .genai import llm, tool
from .instrument import asleep, event, sleep, step, workflow

__all__ = [
    "Spangraph",
    "__version__",
    "asleep",
    "branch",
    "configure",
    "decision",
    "event",
    "flush",
    "llm",
    "monitor",
    "semconv",
    "shutdown",
    "sleep",
    "step",
    "testing",
    "tool",
    "workflow",
]
