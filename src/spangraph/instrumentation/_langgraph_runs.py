"""Graph invocations (``invoke``, ``ainvoke``, ``stream``, ``astream``) as workflow spans.

The outermost invocation opens a ``workflow`` span — or a ``step`` when it runs inside a
spangraph span of the caller's own — and attaches it around every call, ``next()`` and
``anext()``, so LangGraph's executor threads and asyncio tasks (which copy the context
when they are submitted) all run inside it: one trace per invocation. Invocations inside
a span this instrumentation made (``invoke`` calling ``stream``, a subgraph run by a node)
add no span of their own: their nodes nest under the span that is current.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import trace

from .. import semconv as sc
from .._spans import MAX_ID_CHARS, _Frame, _Options, current_run
from .._wrappers import await_in_frame, call_in_frame, traced_async_generator, traced_generator

_log = logging.getLogger("spangraph.instrumentation.langgraph")

_OWNED: Final = otel_context.create_key("spangraph-langgraph-span")
"""Context key: the span this instrumentation attached (an invocation or a node step)."""

_RUN: Final = otel_context.create_key("spangraph-langgraph-run")
"""Context key: the :class:`RunState` of the invocation the code runs in."""

GRAPH_NAME: Final = "langgraph.graph.name"
THREAD_ID: Final = "langgraph.thread_id"
INTERRUPTED: Final = "langgraph.interrupted"


class RunState:
    """The workflow span of one instrumented invocation, shared with its node steps."""

    __slots__ = ("frame", "paused")

    def __init__(self, frame: _Frame) -> None:
        self.frame = frame
        self.paused = False

    def pause(self, node: str) -> None:
        """Record ``workflow.paused`` once, when a node interrupts the run."""
        handle = self.frame.handle
        if self.paused or self.frame.kind != sc.KIND_WORKFLOW or not handle.span.is_recording():
            return
        self.paused = True
        handle.paused(reason="interrupt", node=node)  # type: ignore[attr-defined]


def own(frame: _Frame, run: RunState | None = None) -> _Frame:
    """Mark ``frame``'s context as made by this instrumentation (before it is attached)."""
    ctx = otel_context.set_value(_OWNED, frame.handle.span, frame.ctx)
    if run is not None:
        ctx = otel_context.set_value(_RUN, run, ctx)
    frame.ctx = ctx
    return frame


def inside_own_span() -> bool:
    """True when the current span is one this instrumentation attached."""
    owned = otel_context.get_value(_OWNED)
    return owned is not None and owned is trace.get_current_span()


def current_run_state() -> RunState | None:
    value = otel_context.get_value(_RUN)
    return value if isinstance(value, RunState) else None


def _config(instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The config the invocation runs with, merged as LangGraph merges it: what an outer
    LangChain runnable passes down, then what ``graph.with_config(...)`` bound, then the
    call's own ``config`` (which wins)."""
    config = args[1] if len(args) > 1 else kwargs.get("config")
    call = config if isinstance(config, dict) else None
    bound = getattr(instance, "config", None)
    bound = bound if isinstance(bound, dict) else None
    try:
        try:
            from langgraph._internal._config import ensure_config
        except ImportError:  # not where this LangGraph has it: LangChain's own merge
            from langchain_core.runnables.config import ensure_config as ensure_one
            from langchain_core.runnables.config import merge_configs

            # (a RunnableConfig is a TypedDict: the configs are the caller's plain dicts)
            return dict(merge_configs(ensure_one(None), bound, call))  # type: ignore[arg-type]
        return dict(ensure_config(bound, call))  # type: ignore[arg-type]
    except Exception:  # a config LangGraph will refuse itself: the call's, as it is
        _log.debug("spangraph: could not merge a LangGraph config", exc_info=True)
        return call or {}


def _open(instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Frame | None:
    """The frame of a new invocation span, or None when this invocation adds none."""
    try:
        if inside_own_span():
            return None
        config = _config(instance, args, kwargs)
        graph_name = str(getattr(instance, "name", None) or "LangGraph")
        name = str(config.get("run_name") or graph_name)
        attrs: dict[str, Any] = {GRAPH_NAME: graph_name}
        thread_id = (config.get("configurable") or {}).get("thread_id")
        if thread_id is not None:
            attrs[THREAD_ID] = str(thread_id)
        if current_run() is None:
            # A LangGraph thread groups the runs of one conversation or of one run that
            # was interrupted and resumed: it becomes the execution id — when it is one
            # spangraph accepts (non-blank, at most MAX_ID_CHARS characters); else the run
            # has its own, and the thread is only in langgraph.thread_id (cut).
            execution_id = str(thread_id) if thread_id is not None else None
            if execution_id is not None and (
                not execution_id.strip() or len(execution_id) > MAX_ID_CHARS
            ):
                execution_id = None
            opts = _Options(
                kind=sc.KIND_WORKFLOW, name=name, attributes=attrs, execution_id=execution_id
            )
            frame = _Frame(opts, name, None, ())
        else:  # inside the caller's own workflow or step: a step of that run
            frame = _Frame(_Options(kind=sc.KIND_STEP, name=name, attributes=attrs), name, 1, ())
        return own(frame, RunState(frame))
    except Exception:  # never let instrumentation break the graph
        _log.debug("spangraph: could not start a LangGraph invocation span", exc_info=True)
        return None


def wrap_invoke(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
    frame = _open(instance, args, kwargs)
    return call_in_frame(frame, lambda: wrapped(*args, **kwargs))


def wrap_ainvoke(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
    return await_in_frame(lambda: _open(instance, args, kwargs), lambda: wrapped(*args, **kwargs))


def wrap_stream(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
    if inside_own_span():  # invoke() streaming, or a subgraph: the caller's span is current
        return wrapped(*args, **kwargs)
    return traced_generator(lambda: _open(instance, args, kwargs), lambda: wrapped(*args, **kwargs))


def wrap_astream(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
    if inside_own_span():
        return wrapped(*args, **kwargs)
    return traced_async_generator(
        lambda: _open(instance, args, kwargs), lambda: wrapped(*args, **kwargs)
    )
