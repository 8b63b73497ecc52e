"""LangGraph runs as spangraph workflows: an OpenTelemetry instrumentor.

>>> from spangraph.instrumentation.langgraph import LangGraphInstrumentor
>>> LangGraphInstrumentor().instrument()        # doctest: +SKIP

Once instrumented, every compiled graph (``StateGraph(...).compile()``, any ``Pregel``)
records:

- each invocation (``invoke``, ``ainvoke``, ``stream``, ``astream``, and what builds on
  them: ``batch``, ``astream_events`` …) as a ``workflow`` span named after the graph
  (``compile(name=...)``, default ``"LangGraph"``), with a new workflow id; its
  ``configurable.thread_id`` becomes the ``execution_id``. Inside a spangraph span of
  your own (``with spangraph.workflow(...)``) the invocation is a ``step`` of that run
  instead, and a subgraph (a compiled graph used as a node, or invoked from a node) adds
  no span: its nodes nest under the parent's node step, in the same trace;
- each node execution as a ``step`` span named after the node — one per attempt when a
  ``RetryPolicy`` retries it (``spangraph.step.attempt``, ``retry_of`` links,
  ``retry.scheduled`` / ``retry.exhausted``; an error no policy retries sets
  ``langgraph.retry.retryable`` false); a node that raises ends ``failed`` (and so
  does the workflow), and so does one that LangGraph's node timeout stops (with
  ``timeout.exceeded`` and its ``NodeTimeoutError``);
- an ``interrupt()`` as ``langgraph.interrupted`` on its step and on the run, whose last
  lifecycle event is then ``workflow.paused`` (the nodes, the interrupts' values and
  ids) — ``langgraph.interrupt`` on the run's step inside a span of your own; a run
  resuming it (``Command(resume=...)``) records ``workflow.resumed`` with the value, and
  a ``resumed_from`` link to the paused run when that ran in this process;
- each conditional edge as a ``decision`` under its source node's step, offering the
  edge's possible targets and choosing the node that runs next;
- tasks that run side by side in one superstep (``Send`` fan-out, several nodes triggered
  at once) each in a ``branch`` span, so their steps carry its ``spangraph.branch.id``;
  a ``Send``'s argument is ``langgraph.send.arg`` on its branch and step.

Spans go through spangraph's tracer (``spangraph.configure``; ``testing.capture()`` in
tests); a ``tracer_provider=`` passed to :meth:`instrument` is not used.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

import wrapt
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]  # (its module opts out of type checking)

from . import _langgraph_decisions as _decisions
from . import _langgraph_runs as _runs
from . import _langgraph_tasks as _tasks
from ._wrapping import unwrap_ours

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

__all__ = ["LangGraphInstrumentor"]

_log = logging.getLogger("spangraph.instrumentation.langgraph")

Wrapper = Callable[[Callable[..., Any], Any, Any, Any], Any]

_PREGEL = ("langgraph.pregel.main", "Pregel")
_RUNNER = ("langgraph.pregel._runner", "PregelRunner")
_RUNNER_MODULE = ("langgraph.pregel._runner", "")
_RETRY_MODULE = ("langgraph.pregel._retry", "")
_CALLABLE = ("langgraph._internal._runnable", "RunnableCallable")
_BRANCH = ("langgraph.graph._branch", "BranchSpec")

# (where: (module, class — or "" for the module itself); attribute; wrapper), as laid
# out in LangGraph 0.6 to 1.2.
_PATCHES: tuple[tuple[tuple[str, str], str, Wrapper], ...] = (
    (_PREGEL, "invoke", _runs.wrap_invoke),
    (_PREGEL, "ainvoke", _runs.wrap_ainvoke),
    (_PREGEL, "stream", _runs.wrap_stream),
    (_PREGEL, "astream", _runs.wrap_astream),
    (_RUNNER, "tick", _tasks.wrap_tick),
    (_RUNNER, "atick", _tasks.wrap_atick),
    (_RUNNER_MODULE, "run_with_retry", _tasks.wrap_run_with_retry),
    (_RUNNER_MODULE, "arun_with_retry", _tasks.wrap_arun_with_retry),
    (_CALLABLE, "invoke", _decisions.wrap_callable_invoke),
    (_CALLABLE, "ainvoke", _decisions.wrap_callable_ainvoke),
    (_BRANCH, "_finish", _decisions.wrap_branch_finish),
    (_RETRY_MODULE, "_arun_with_timeout", _tasks.wrap_arun_with_timeout),
)
_OPTIONAL = {"_arun_with_timeout"}
"""Patches of what only some versions have (node timeouts: LangGraph 1.2)."""


def _resolve(module: str, owner: str) -> Any:
    try:
        target = importlib.import_module(module)
    except ImportError:
        return None
    return getattr(target, owner, None) if owner else target


class LangGraphInstrumentor(BaseInstrumentor):
    """Records LangGraph invocations, nodes, conditional edges and parallel tasks as
    spangraph workflows, steps, decisions and branches (see the module docs)."""

    _applied: list[tuple[Any, str, Wrapper]] = []

    if TYPE_CHECKING:  # BaseInstrumentor's module opts out of type checking: typed here

        def instrument(
            self,
            *,
            tracer_provider: TracerProvider | None = None,
            skip_dep_check: bool = False,
            raise_exception_on_conflict: bool = False,
        ) -> None:
            """Patch LangGraph (once a process; again after :meth:`uninstrument`);
            ``tracer_provider`` is ignored: its spans use spangraph's tracer."""

        def uninstrument(self) -> None:
            """Undo :meth:`instrument`."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("langgraph >= 0.6",)

    def _instrument(self, **kwargs: Any) -> None:
        # Not installed: ModuleNotFoundError, which opentelemetry-instrument's loader
        # takes as "skip this one" (the targets below would all read as missing).
        import langgraph  # noqa: F401

        if kwargs.get("tracer_provider") is not None:
            _log.info(
                "spangraph: LangGraph spans use spangraph's tracer (spangraph.configure); "
                "tracer_provider= is ignored"
            )
        branch_spec = _resolve(*_BRANCH)
        _decisions.set_branch_types((branch_spec,) if isinstance(branch_spec, type) else ())
        applied: list[tuple[Any, str, Wrapper]] = []
        missing: list[str] = []
        for (module, owner), attr, wrapper in _PATCHES:
            target = _resolve(module, owner)
            if target is None or attr not in vars(target):
                if attr in _OPTIONAL:
                    continue
                missing.append(f"{module}.{owner + '.' if owner else ''}{attr}")
                continue
            wrapt.wrap_function_wrapper(target, attr, wrapper)
            applied.append((target, attr, wrapper))
        if missing:
            _log.warning(
                "spangraph: this LangGraph version lacks %s; instrumented partly",
                ", ".join(missing),
            )
        type(self)._applied = applied

    def _uninstrument(self, **kwargs: Any) -> None:
        for target, attr, wrapper in reversed(type(self)._applied):
            unwrap_ours(target, attr, wrapper)
        type(self)._applied = []
        _decisions.set_branch_types(())
        _tasks.reset()
        _runs.paused_threads.clear()
