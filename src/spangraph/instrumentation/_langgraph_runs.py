"""Graph invocations (``invoke``, ``ainvoke``, ``stream``, ``astream``) as workflow spans.

The outermost invocation opens a ``workflow`` span — or a ``step`` when it runs inside a
spangraph span of the caller's own — and attaches it around every call, ``next()`` and
``anext()``, so LangGraph's executor threads and asyncio tasks (which copy the context
when they are submitted) all run inside it: one trace per invocation. Invocations inside
a span this instrumentation made (``invoke`` calling ``stream``, a subgraph run by a node)
add no span of their own: their nodes nest under the span that is current.

A run that nodes stopped with ``interrupt()`` ends ``completed`` with
``langgraph.interrupted`` and, as its last lifecycle event, ``workflow.paused`` (what was
asked, and where) instead of ``workflow.completed``; inside a span of the caller's own,
its step records ``langgraph.interrupt`` instead (the caller's run goes on). A run that
resumes one (``Command(resume=...)``) records ``workflow.resumed`` (``langgraph.resume``
as a step) and, when the run it resumes paused in this process, a ``resumed_from`` link
to that run's span: the last paused span of each thread is kept, a bounded number of
threads, in memory only.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, SpanContext

from .. import semconv as sc
from .._attrs import as_text
from .._spans import (
    MAX_ID_CHARS,
    Handle,
    WorkflowRun,
    _Frame,
    _Options,
    clean_exit,
    current_run,
    link_to,
)
from .._wrappers import (
    _first_asend,
    await_in_frame,
    call_in_frame,
    traced_async_generator,
    traced_generator,
)
from ..genai import _capturing as _capturing_content

_log = logging.getLogger("spangraph.instrumentation.langgraph")

_OWNED: Final = otel_context.create_key("spangraph-langgraph-span")
"""Context key: the span this instrumentation attached (an invocation or a node step)."""

_RUN: Final = otel_context.create_key("spangraph-langgraph-run")
"""Context key: the :class:`RunState` of the invocation the code runs in."""

GRAPH_NAME: Final = "langgraph.graph.name"
THREAD_ID: Final = "langgraph.thread_id"
INTERRUPTED: Final = sc.LANGGRAPH_INTERRUPTED
BREAKPOINT: Final = sc.LANGGRAPH_BREAKPOINT
NEXT: Final = sc.LANGGRAPH_NEXT
INTERRUPT_EVENT: Final = "langgraph.interrupt"
"""Event of a graph run that is a step of the caller's run: ``interrupt()`` stopped it."""
RESUME_EVENT: Final = "langgraph.resume"
"""Event of a graph run that is a step of the caller's run: it resumes an interrupt."""
MAX_PAUSED_THREADS: Final = 1024
"""How many threads' paused runs are kept to link the runs that resume them."""

_CHECKPOINTER_KEY: Final = "__pregel_checkpointer"  # LangGraph's CONFIG_KEY_CHECKPOINTER


_Key = tuple[int, str, str]  # (id of the checkpointer, thread id, checkpoint namespace)


class CheckpointThread:
    """A LangGraph thread as its checkpointer keeps it: the checkpointer (held weakly),
    the thread id and the checkpoint namespace."""

    __slots__ = ("key", "saver")

    def __init__(self, saver: Any, thread_id: str, namespace: str) -> None:
        self.saver = weakref.ref(saver)
        self.key: _Key = (id(saver), thread_id, namespace)


class _PausedThreads:
    """Thread -> the span of its last run that an interrupt paused, in this process (the
    least recently paused thread is forgotten first)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._spans: OrderedDict[_Key, tuple[CheckpointThread, SpanContext]] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, thread: CheckpointThread, span: SpanContext) -> None:
        with self._lock:
            self._spans.pop(thread.key, None)
            self._spans[thread.key] = (thread, span)
            while len(self._spans) > self._limit:
                self._spans.popitem(last=False)

    def find(self, thread: CheckpointThread) -> SpanContext | None:
        with self._lock:
            entry = self._spans.get(thread.key)
        if entry is None or entry[0].saver() is not thread.saver():
            return None  # (another checkpointer, made where a collected one was)
        return entry[1]

    def forget(self, thread: CheckpointThread) -> None:
        with self._lock:
            self._spans.pop(thread.key, None)

    def clear(self) -> None:
        with self._lock:
            self._spans.clear()


paused_threads = _PausedThreads(MAX_PAUSED_THREADS)

NO_VALUE: Final = object()
"""The "resume value" of a run that goes on from a static breakpoint (input ``None``)."""

_interrupts_lock = threading.Lock()


class RunState:
    """The span of one instrumented invocation (a workflow, or a step of the caller's
    run), shared with its node steps: the interrupts they stopped at."""

    __slots__ = (
        "asked", "breakpoints", "frame", "ids", "nodes", "stopped", "thread", "values", "whole"
    )  # fmt: skip

    def __init__(self, thread: CheckpointThread | None) -> None:
        self.frame: _Frame | None = None
        self.thread = thread
        self.nodes: list[str] = []
        self.ids: list[str] = []
        self.values: list[str] = []
        self.asked = False
        """An ``interrupt()`` asked (a ``GraphInterrupt`` with its ``Interrupt`` values);
        a node stopped by a subgraph's static breakpoint asks nothing."""
        self.breakpoints: Breakpoints | None = None
        """The static breakpoints the run may stop at; None when it has none."""
        self.stopped: Any = UNREAD
        """Where it stopped at one, read (``ainvoke``) before the span ends: ("before" |
        "after", the nodes due next), or None; ``UNREAD``: not read yet."""
        self.whole = True
        """The run went as far as LangGraph took it: not a stream its consumer left."""

    def interrupted(self, node: str, exc: BaseException) -> None:
        """Note that ``node`` stopped at an interrupt (``exc``: its ``GraphInterrupt``),
        to record when the run ends. A subgraph's node passes its interrupt on to the
        parent's node: each interrupt counts once, for the node that asked."""
        given = exc.args[0] if exc.args and isinstance(exc.args[0], list | tuple) else ()
        found = [i for i in given if hasattr(i, "value")]
        with _interrupts_lock:
            new = False
            for interrupt in found:
                interrupt_id = getattr(interrupt, "id", None)
                if interrupt_id is not None and str(interrupt_id) in self.ids:
                    continue
                new = True
                if interrupt_id is not None:
                    self.ids.append(str(interrupt_id))
                if _capturing_content():  # what was asked: content (the GenAI switch)
                    self.values.append(as_text(interrupt.value))
            if found:
                self.asked = True
            if (new or not found) and node not in self.nodes:
                self.nodes.append(node)

    def resumed(self, value: Any) -> None:
        """Record that the run resumes an interrupt with ``value`` (``NO_VALUE``: goes on
        from a static breakpoint, with no value)."""
        if self.frame is None:
            return
        handle = self.frame.handle
        said = {"value": as_text(value)} if _capturing_content() and value is not NO_VALUE else {}
        try:
            if isinstance(handle, WorkflowRun):
                handle.resumed(**said)
            else:
                handle.event(RESUME_EVENT, **said)
        except Exception:
            _log.debug("spangraph: could not record a LangGraph resume", exc_info=True)

    def finish(self, handle: Handle, exc: BaseException | None) -> None:
        """Before the span ends: a run that nodes interrupted (and that did not fail)
        records the pause as its last lifecycle event, and is remembered for the run
        that resumes it."""
        try:
            clean = clean_exit(exc)
            attrs: dict[str, Any] | None = None
            reason = "interrupt"
            if clean and self.nodes and not self.asked:
                # a subgraph stopped at one of its static breakpoints: the node running
                # it stopped, asking nothing
                reason = "breakpoint"
                attrs = {"node": self.nodes[0], "nodes": list(self.nodes), "breakpoint": "subgraph"}
                handle.span.set_attributes({BREAKPOINT: "subgraph", NEXT: list(self.nodes)})
            elif clean and self.nodes:
                attrs = {
                    "node": self.nodes[0],
                    "nodes": list(self.nodes),
                    "values": list(self.values) or None,
                    "interrupt_ids": list(self.ids) or None,
                }
            elif clean and exc is None and self.whole and self.breakpoints is not None:
                # (not a stream its consumer left: that ends the span cleanly too)
                stopped = self.stopped
                if stopped is UNREAD:
                    stopped = self.breakpoints.read() if not _loop_running() else None
                if stopped is not None:
                    when, due = stopped
                    reason = "breakpoint"
                    attrs = {"node": due[0], "nodes": due, "breakpoint": when}
                    handle.span.set_attributes({BREAKPOINT: when, NEXT: due})
            paused = attrs is not None
            if attrs is not None:
                handle.span.set_attribute(INTERRUPTED, True)
                if isinstance(handle, WorkflowRun) and self.frame is not None:
                    handle.paused(reason=reason, **attrs)
                    self.frame.lifecycle = False  # paused, not completed: no more events
                else:  # the caller's run goes on: its step says what stopped the graph
                    handle.event(INTERRUPT_EVENT, **attrs)
            if self.thread is not None:
                if paused:
                    paused_threads.remember(self.thread, handle.span.get_span_context())
                elif clean_exit(exc):  # ran to its end: nothing of the thread waits
                    paused_threads.forget(self.thread)
        except Exception:
            _log.debug("spangraph: could not record a LangGraph interrupt", exc_info=True)


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


def _thread(instance: Any, config: dict[str, Any]) -> CheckpointThread | None:
    """The thread the invocation runs in; None without a thread id or a checkpointer."""
    configurable = config.get("configurable") or {}
    thread_id = configurable.get("thread_id")
    saver = configurable.get(_CHECKPOINTER_KEY) or getattr(instance, "checkpointer", None)
    if thread_id is None or saver is None or isinstance(saver, bool):
        return None
    try:
        return CheckpointThread(saver, str(thread_id), str(configurable.get("checkpoint_ns") or ""))
    except TypeError:  # a checkpointer that cannot be referenced weakly: not linked
        return None


def _input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return args[0] if args else kwargs.get("input")


UNREAD: Final = object()
"""``RunState.stopped`` before the checkpoint was read."""


def _loop_running() -> bool:
    """Whether this thread runs an event loop: a checkpointer's synchronous read there
    may be refused, or block the loop (an async checkpointer's bridge to it)."""
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class Breakpoints:
    """The static breakpoints (``interrupt_before`` / ``interrupt_after``, compiled or
    given to the call) of one run, and how to tell whether it stopped at one: the nodes
    due next in the thread's latest checkpoint, read once the run ended."""

    __slots__ = ("after", "before", "instance", "latest")

    def __init__(self, instance: Any, latest: dict[str, Any], before: Any, after: Any) -> None:
        self.instance = instance
        self.latest = latest
        self.before = before
        self.after = after

    def read(self) -> tuple[str, list[str]] | None:
        """With the checkpointer's synchronous read (never on a running event loop)."""
        return self._stopped(self.instance.get_state(self.latest).next)

    async def aread(self) -> tuple[str, list[str]] | None:
        """With its asynchronous read (``ainvoke``)."""
        return self._stopped((await self.instance.aget_state(self.latest)).next)

    def _stopped(self, next_nodes: Any) -> tuple[str, list[str]] | None:
        due = [str(node) for node in next_nodes or ()]
        if not due:
            return None  # ran to its end
        before = self.before
        stopped_before = before == "*" or (
            isinstance(before, list | tuple | set | frozenset) and any(n in before for n in due)
        )
        return ("before" if stopped_before else "after"), due


def _breakpoints(
    instance: Any, config: dict[str, Any], kwargs: dict[str, Any]
) -> Breakpoints | None:
    """The run's static breakpoints; None without any."""
    before = kwargs.get("interrupt_before") or getattr(instance, "interrupt_before_nodes", None)
    after = kwargs.get("interrupt_after") or getattr(instance, "interrupt_after_nodes", None)
    if not before and not after:
        return None
    configurable = config.get("configurable") or {}
    latest = {  # the thread's latest checkpoint, not the one this run started from
        "configurable": {
            key: configurable[key]
            for key in ("thread_id", "checkpoint_ns", _CHECKPOINTER_KEY)
            if key in configurable
        }
    }
    return Breakpoints(instance, latest, before, after)


async def _then_read_breakpoints(awaitable: Any) -> Any:
    """``await awaitable`` (an ``ainvoke``), then, in its span, read with the
    checkpointer's asynchronous API whether the run stopped at a static breakpoint."""
    result = await awaitable
    await _aread_breakpoints(current_run_state())
    return result


async def _aread_breakpoints(run: RunState | None) -> None:
    """Read, with the checkpointer's asynchronous API, whether ``run`` stopped at one of
    its static breakpoints (when it has any)."""
    if run is not None and run.breakpoints is not None:
        try:
            run.stopped = await run.breakpoints.aread()
        except Exception:
            run.stopped = None
            _log.debug("spangraph: could not read a LangGraph checkpoint", exc_info=True)


def _resume_value(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[bool, Any]:
    """Whether the input is a ``Command(resume=...)``, and its value."""
    value = _input(args, kwargs)
    try:
        from langgraph.types import Command
    except ImportError:
        return False, None
    if isinstance(value, Command) and value.resume is not None:
        return True, value.resume
    return False, None


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
        run = RunState(_thread(instance, config))
        resuming, resume = _resume_value(args, kwargs)
        links: tuple[Link, ...] = ()
        if run.thread is not None:
            run.breakpoints = _breakpoints(instance, config, kwargs)
            paused = paused_threads.find(run.thread)
            if (
                not resuming
                and _input(args, kwargs) is None
                and (
                    paused is not None
                    or (
                        run.breakpoints is not None
                        and "checkpoint_id" not in (config.get("configurable") or {})
                    )
                )
            ):
                # on from a static breakpoint: one this process saw stop, or one the graph
                # has (it may have stopped in another process: the graph writer links it
                # to that run), not a replay from an earlier checkpoint (time travel)
                resuming, resume = True, NO_VALUE
            if resuming and paused is not None:
                links = (link_to(paused, sc.LINK_RESUMED_FROM),)
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
                kind=sc.KIND_WORKFLOW,
                name=name,
                attributes=attrs,
                execution_id=execution_id,
                on_finish=run.finish,
            )
            frame = _Frame(opts, name, None, links)
        else:  # inside the caller's own workflow or step: a step of that run
            opts = _Options(kind=sc.KIND_STEP, name=name, attributes=attrs, on_finish=run.finish)
            frame = _Frame(opts, name, 1, links)
        run.frame = frame
        if resuming:
            run.resumed(resume)
        return own(frame, run)
    except Exception:  # never let instrumentation break the graph
        _log.debug("spangraph: could not start a LangGraph invocation span", exc_info=True)
        return None


def wrap_invoke(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
    frame = _open(instance, args, kwargs)
    return call_in_frame(frame, lambda: wrapped(*args, **kwargs))


def wrap_ainvoke(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
    return await_in_frame(
        lambda: _open(instance, args, kwargs),
        lambda: _then_read_breakpoints(wrapped(*args, **kwargs)),
    )


def _to_its_end(chunks: Iterator[Any]) -> Iterator[Any]:
    """``chunks`` (a ``stream()``), noting in the run whether it was read to its end."""
    run = current_run_state()
    if run is not None:
        run.whole = False
    yield from chunks
    if run is not None:
        run.whole = True


def wrap_stream(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
    if inside_own_span():  # invoke() streaming, or a subgraph: the caller's span is current
        return wrapped(*args, **kwargs)
    return traced_generator(
        lambda: _open(instance, args, kwargs), lambda: _to_its_end(wrapped(*args, **kwargs))
    )


async def _to_its_end_async(chunks: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """``chunks`` (an ``astream()``), noting in the run whether it was read to its end,
    and then, in its span, whether it stopped at a static breakpoint (read with the
    checkpointer's asynchronous API, as after an ``ainvoke``)."""
    run = current_run_state()
    if run is not None:
        run.whole = False
    try:
        # the first step with the loop's firstiter hook off, as traced generators take
        # theirs (see _wrappers._first_asend): this generator, which the loop knows,
        # closes LangGraph's; known to the loop too, it would be closed by the loop's
        # shutdown_asyncgens() at the same time ("aclose(): asynchronous generator is
        # already running")
        step = _first_asend(chunks) if hasattr(chunks, "asend") else chunks.__anext__()
        while True:
            try:
                chunk = await step
            except StopAsyncIteration:
                break
            yield chunk
            step = chunks.__anext__()
    finally:
        # a consumer that leaves early closes this generator: close LangGraph's too, at
        # once, as handing it on whole did (not whenever it is collected), unless it is
        # running (what closes this one stopped it mid-step)
        close = getattr(chunks, "aclose", None)
        if close is not None and not (
            getattr(chunks, "ag_running", False) or getattr(chunks, "ag_await", None) is not None
        ):
            await close()
    await _aread_breakpoints(run)
    if run is not None:
        run.whole = True


def wrap_astream(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
    if inside_own_span():
        return wrapped(*args, **kwargs)
    return traced_async_generator(
        lambda: _open(instance, args, kwargs),
        lambda: _to_its_end_async(wrapped(*args, **kwargs)),
    )
