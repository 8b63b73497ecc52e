"""Spans of spangraph's own kinds: run ids in the context, handles, and the frame that
starts, attaches, detaches and finishes one span with its lifecycle events."""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
import os
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanContext, Status, StatusCode, TraceFlags

from . import _propagation, _state
from . import semconv as sc
from ._aio import cancelled_error, is_cancellation
from ._attrs import MAX_VALUE_CHARS, clean, encodable, safe_str, truncate
from ._ids import MAX_ID_CHARS, uuid7
from .processors.live import emit_event

F = TypeVar("F", bound=Callable[..., Any])

_log = logging.getLogger("spangraph")

_RUN_KEY: Final = otel_context.create_key("spangraph-run")

# Which process a frame started in: a number made anew in each forked child (cheaper than
# os.getpid(), a system call, on every span). A child forked inside an open workflow or
# step that unwinds its blocks (sys.exit(), an exception, a return) leaves that span to
# the process that started it, which ends it with its own outcome and time.
_process_generation = 0


def _next_generation_after_fork() -> None:
    global _process_generation
    _process_generation += 1
    _open.clear()  # the parent's: it ends them


_open: weakref.WeakKeyDictionary[_Frame, threading.Thread] = weakref.WeakKeyDictionary()
"""The spans of spangraph's blocks open in this process, in the order they started, with
the thread each started on. Weak: a block nothing holds any more (a task dropped while
it waited, its step's timeout and the task holding each other) is the collector's,
which closes its code and so ends its span; kept here, it would live, unended, until
the exit."""


def end_open_spans() -> int:
    """End every span of spangraph's blocks still open, newest first (a child before its
    parent), as cancelled by :class:`~spangraph.exceptions.ProgramExited`; how many.
    For the program's exit, where nothing else would end them (a daemon thread's, a
    task never finished); never raises an ``Exception``.

    A span started on a thread that is not a daemon and still runs (another than this
    one) is that thread's to end: Python waits for such threads before its exit
    handlers, but before Python 3.13 a process multiprocessing started runs its
    finalizers before it waits for them (and cannot be made to wait earlier: idle
    executor threads end only after)."""
    from .exceptions import ProgramExited

    frames: list[tuple[_Frame, threading.Thread]] = []
    for _ in range(3):
        try:
            frames = list(_open.items())
            break
        except RuntimeError:  # changed by another thread meanwhile: again
            continue
    me = threading.current_thread()
    ended = 0
    for frame, thread in reversed(frames):
        if thread is not me and not thread.daemon and thread.is_alive():
            continue
        try:
            if frame.handle.span.is_recording():
                frame.finish(ProgramExited("the program exited while this span was open"))
                ended += 1
        except Exception:
            _log.warning("spangraph: could not end a span open at exit", exc_info=True)
        _open.pop(frame, None)
    return ended


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_next_generation_after_fork)


_IN_COROUTINE: Final = inspect.CO_COROUTINE | inspect.CO_ITERABLE_COROUTINE


_CONTEXTMANAGER_EXITS: Final = frozenset(
    {"_GeneratorContextManager.__exit__", "_AsyncGeneratorContextManager.__aexit__"}
)


def _holder(frame: Any) -> Any:
    """The frame of the code that holds a block whose ``__exit__`` ``frame`` called:
    past ``contextlib``'s own frames (an ``ExitStack``, an ``AsyncExitStack``) and the
    generator of a ``@contextmanager`` / ``@asynccontextmanager`` function, which are
    held by what holds them."""
    while True:
        back = frame.f_back
        if back is None:
            return frame
        if frame.f_globals.get("__name__") == "contextlib" or (
            back.f_code.co_qualname in _CONTEXTMANAGER_EXITS
            and back.f_globals.get("__name__") == "contextlib"
        ):
            frame = back
        else:
            return frame


def as_ended(exc: BaseException | None, caller: Any = None) -> BaseException | None:
    """``exc`` as a span ends with it. A ``GeneratorExit`` in a coroutine (``caller``:
    the frame that left the span's block, see :func:`_holder`; ``None``: a coroutine)
    means it was closed while suspended (a task collected while pending, a loop closed
    without cancelling it): a cancellation. In a generator it is its consumer stopping
    early: no failure."""
    if isinstance(exc, GeneratorExit) and (
        caller is None or _holder(caller).f_code.co_flags & _IN_COROUTINE
    ):
        closed = cancelled_error("the coroutine was closed while suspended")
        closed.__cause__ = exc
        return closed
    return exc


def clean_exit(exc: BaseException | None) -> bool:
    """Whether ``exc`` is no failure: none, a ``GeneratorExit`` (a generator whose
    consumer stopped early: a block it holds open ends as the decorated generator does),
    or a ``SystemExit`` with status 0 (``sys.exit()``, ``sys.exit(0)``), with which a span
    ends ``completed``. Any other code is a failure, as the exit status says:
    ``sys.exit(0.0)`` or ``sys.exit("0")`` prints the value and exits with status 1."""
    if exc is None or isinstance(exc, GeneratorExit):
        return True
    if not isinstance(exc, SystemExit):
        return False
    code = exc.code
    return code is None or (isinstance(code, int) and code == 0)


_FRAME_KEYS: Final = frozenset(
    {
        sc.KIND,
        sc.WORKFLOW_ID,
        sc.WORKFLOW_NAME,
        sc.EXECUTION_ID,
        sc.BRANCH_ID,
        sc.PROJECT_ID,
        sc.STEP_ATTEMPT,
        sc.STEP_MAX_ATTEMPTS,
        sc.TIMEOUT_S,
        sc.STATE,
    }
)
"""Attribute keys every span of spangraph's gets from the SDK itself (never from input)."""

RESERVED_KEYS: Final = frozenset(
    value
    for value in vars(sc).values()
    if isinstance(value, str) and value.startswith("spangraph.")
) - {sc.AGENT_ID, sc.USER_ID}
"""``spangraph.*`` attribute keys the SDK sets: refused in user attributes (the keys
``spangraph.agent.id`` and ``spangraph.user.id`` are for users to set)."""

RESERVED_EVENTS: Final = frozenset(
    {
        sc.SPAN_STARTED,
        sc.SPAN_ENDED,
        sc.TOKEN,
        "exception",
        sc.WORKFLOW_STARTED,
        sc.WORKFLOW_COMPLETED,
        sc.WORKFLOW_FAILED,
        sc.WORKFLOW_CANCELLED,
        sc.STEP_STARTED,
        sc.STEP_COMPLETED,
        sc.STEP_FAILED,
        sc.RETRY_SCHEDULED,
        sc.RETRY_EXHAUSTED,
        sc.SLEEP_STARTED,
        sc.SLEEP_COMPLETED,
        sc.TIMEOUT_SET,
        sc.TIMEOUT_EXCEEDED,
    }
)
"""Event names a custom event may not take: the live message types and the lifecycle
events the SDK records by itself."""


@dataclass(frozen=True, slots=True)
class RunIds:
    """Ids of the run a span belongs to, carried in the OpenTelemetry context."""

    workflow_id: str
    execution_id: str
    workflow_name: str
    branch_id: str | None = None


def current_run() -> RunIds | None:
    """Ids of the workflow run the current code executes in, or ``None`` (also inside a
    branch opened outside any workflow). With ``configure(propagate=True)``, also a run
    of another service whose ids came in the baggage of the request being served."""
    ids = _current_ids()
    return ids if ids is not None and ids.workflow_id else None


def _current_ids() -> RunIds | None:
    """The ids the current context carries: a run's, or only a branch id (a branch
    opened outside any workflow: ``workflow_id`` is empty)."""
    value = otel_context.get_value(_RUN_KEY)
    if isinstance(value, RunIds):
        return value
    if _state.propagate:
        ids = _propagation.run_ids()
        if ids is not None:
            workflow_id = ids[sc.WORKFLOW_ID]
            return RunIds(
                workflow_id=workflow_id,
                execution_id=ids.get(sc.EXECUTION_ID, workflow_id),
                workflow_name=ids.get(sc.WORKFLOW_NAME, ""),
                branch_id=ids.get(sc.BRANCH_ID),
            )
    return None


def _add_event(
    span: Span, name: str, attributes: Mapping[str, Any] | None = None, now: int | None = None
) -> None:
    attrs = clean(attributes)
    name = encodable(name)
    if now is None:
        now = time.time_ns()
    span.add_event(name, attrs, timestamp=now)
    emit_event(span, name, attrs, now)
    if not _state.events_limit_warned and getattr(span, "dropped_events", None):
        _warn_events_dropped(span)


def _warn_if_unconfigured(span: Span, name: str) -> None:
    """At a process's first workflow: warn when nothing was set up, neither
    ``spangraph.configure()`` (which points spangraph's tracer at a provider, global or
    not) nor a global TracerProvider: nothing is recorded then. (A provider, once set,
    stays: later workflows need no look.)"""
    _state.unconfigured_warned = True
    if span.is_recording() or not isinstance(_state.tracer, trace.ProxyTracer):
        return  # recorded, or configure() chose a provider (its sampler said no)
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return  # a global provider (one that records nothing, or a sampler said no)
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return
    _log.warning(
        "spangraph: workflow %r is not recorded: no TracerProvider is set; call "
        "spangraph.configure() first, or run the program with `spangraph run -- ...` "
        "(this warning is given once)",
        name[:200],
    )


def _warn_events_dropped(span: Span) -> None:
    """Once a process: a span has more events than its TracerProvider keeps."""
    _state.events_limit_warned = True
    limits = getattr(span, "_limits", None)
    _log.warning(
        "spangraph: span %r has more events than its TracerProvider keeps (%s a span: "
        "SpanLimits / OTEL_SPAN_EVENT_COUNT_LIMIT): the oldest are dropped, its "
        "*.started event first, and the graph keeps only the rest (each was sent live "
        "as it happened); raise the limit to keep them (this warning is given once)",
        str(getattr(span, "name", ""))[:200],
        getattr(limits, "max_events", "the limit"),
    )


def span_context_of(target: Any) -> SpanContext:
    """The SpanContext of a handle, span, SpanContext or ``"{trace_id}-{span_id}"`` ref."""
    if isinstance(target, Handle):  # invalid only where tracing is off: nothing is recorded
        return target.span.get_span_context()
    if isinstance(target, str):
        trace_hex, _, span_hex = target.strip().partition("-")
        try:
            if len(trace_hex) != 32 or len(span_hex) != 16:
                raise ValueError
            ctx = SpanContext(
                int(trace_hex, 16),
                int(span_hex, 16),
                is_remote=True,
                trace_flags=TraceFlags(TraceFlags.SAMPLED),
            )
        except ValueError:
            raise ValueError(
                f"expected a span ref '<32 hex trace id>-<16 hex span id>', got {target!r}"
            ) from None
        if not ctx.is_valid:
            raise ValueError(f"not a valid span ref: {target!r}")
        return ctx
    if isinstance(target, SpanContext):
        ctx = target
    elif callable(get_ctx := getattr(target, "get_span_context", None)):
        ctx = get_ctx()
    else:
        raise TypeError(
            f"expected a spangraph handle, a span, a SpanContext or a ref, got {target!r}"
        )
    if not isinstance(ctx, SpanContext) or not ctx.is_valid:
        raise ValueError(f"not a valid span (its span context is invalid): {target!r}")
    return ctx


def link_to(target: Any, link_type: str) -> Link:
    """A span link of ``spangraph.link.type`` ``link_type`` to ``target``."""
    return Link(span_context_of(target), {sc.LINK_TYPE: link_type})


def _error_attrs(exc: BaseException) -> dict[str, Any]:
    cls = type(exc)
    qualname = (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )
    return {sc.ERROR_TYPE: qualname, sc.ERROR_MESSAGE: safe_str(exc)}


_STACK_CHARS: Final = 4 * MAX_VALUE_CHARS
"""The longest ``exception.stacktrace`` recorded (its start: the frames come first)."""


def exception_attrs(exc: BaseException) -> dict[str, str]:
    """The attributes of OTel's ``exception`` event for ``exc``, as
    ``span.record_exception`` gives them, but text every exporter can send: cut to
    length (the message as ``error.message``), lone surrogates mended (an OTLP exporter
    failed the whole batch on one, as in a file name from ``os.fsdecode``), and a
    ``__str__`` that raises giving ``<unprintable T>``."""
    cls = type(exc)
    module = cls.__module__
    try:
        stacktrace = "".join(traceback.format_exception(exc))
    except Exception:
        stacktrace = ""
    return {
        "exception.type": cls.__qualname__
        if module == "builtins"
        else f"{module}.{cls.__qualname__}",
        "exception.message": encodable(truncate(safe_str(exc))),
        "exception.stacktrace": encodable(truncate(stacktrace, _STACK_CHARS)),
        "exception.escaped": "False",
    }


def error_status(exc: BaseException, message: str | None = None) -> Status:
    """The ERROR status of a span that ``exc`` failed: ``Type: message`` (``exc``'s own
    unless told), sendable."""
    text = safe_str(exc) if message is None else message
    return Status(StatusCode.ERROR, encodable(truncate(f"{type(exc).__name__}: {text}")))


_TIMEOUT_MESSAGE: Final = "_spangraph_timeout_message"
"""The attribute a ``TimeoutError`` without a message is given when a spangraph block's
timeout raised it: the blocks it leaves on its way out say whose timeout fired."""


def failure_attrs(frame: _Frame, exc: BaseException) -> dict[str, Any]:
    """``error.type`` and ``error.message`` of ``exc`` ending ``frame``'s span; the
    message of a ``TimeoutError`` without one (as ``asyncio.timeout`` raises it) says
    which timeout of the block's fired, and in the blocks around it, which block's."""
    attrs = _error_attrs(exc)
    if not attrs[sc.ERROR_MESSAGE] and isinstance(exc, TimeoutError):
        fired = _timed_out(frame, frame.timeout)
        if fired is not None:
            attrs[sc.ERROR_MESSAGE] = f"exceeded its timeout of {fired:g} s"
            name = frame.handle.name if frame.handle is not None else ""
            try:  # (the exception is raised on unchanged: type, args, traceback)
                setattr(
                    exc,
                    _TIMEOUT_MESSAGE,
                    f"{frame.kind} {name!r} exceeded its timeout of {fired:g} s",
                )
            except (AttributeError, TypeError):  # an exception type with __slots__
                pass
        else:
            told = getattr(exc, _TIMEOUT_MESSAGE, None)
            if type(told) is str:
                attrs[sc.ERROR_MESSAGE] = told
    return attrs


def _record_exception(span: Span, exc: BaseException, now: int) -> None:
    """OTel's ``exception`` event (:func:`exception_attrs`), also sent live."""
    attributes = exception_attrs(exc)
    span.add_event("exception", attributes, timestamp=now)
    emit_event(span, "exception", attributes, now)


class Handle:
    """A running span of spangraph's (what ``with step(...) as s`` gives).

    Its methods record on the span while its block runs; called after the block ended,
    they record nothing, and the first such call of a handle is logged as a warning
    naming the span."""

    __slots__ = ("_t0", "_warned", "attempt", "kind", "run", "span")

    span: Span
    """The OpenTelemetry span."""
    kind: str
    """Its ``spangraph.kind``: ``workflow``, ``step``, ``decision``, ``llm`` …"""
    run: RunIds | None
    """The ids of the run it belongs to (``None`` outside any workflow)."""
    attempt: int | None
    """A step's attempt number (1 for the first), else ``None``."""

    def __init__(self, span: Span, kind: str, run: RunIds | None, attempt: int | None) -> None:
        self.span = span
        self.kind = kind
        self.run = run
        self.attempt = attempt
        self._t0 = time.perf_counter()
        self._warned = False

    @property
    def workflow_id(self) -> str | None:
        """The run's ``workflow_id`` (``None`` outside any workflow)."""
        return (self.run.workflow_id or None) if self.run else None

    @property
    def execution_id(self) -> str | None:
        """The run's ``execution_id`` (its ``workflow_id`` unless one was given)."""
        return (self.run.execution_id or None) if self.run else None

    @property
    def name(self) -> str:
        """The span's name."""
        return str(getattr(self.span, "name", ""))

    @property
    def branch_id(self) -> str | None:
        """The id of the branch it runs in, if any."""
        return self.run.branch_id if self.run else None

    @property
    def span_id(self) -> str:
        """The span's id, 16 lower-case hex digits."""
        return format(self.span.get_span_context().span_id, "016x")

    @property
    def trace_id(self) -> str:
        """The span's trace id, 32 lower-case hex digits."""
        return format(self.span.get_span_context().trace_id, "032x")

    def _ended(self, call: str) -> bool:
        """Whether the span has ended, so that ``call`` records nothing (warned once a
        handle). A span that never recorded (tracing off, sampled out) has not ended."""
        if getattr(self.span, "end_time", None) is None:
            return False
        if not self._warned:
            self._warned = True
            _log.warning(
                "spangraph: %s() on %s %r after it ended records nothing: call it inside "
                "its block (this warning is given once a span)",
                call,
                self.kind,
                self.name[:200],
            )
        return True

    @property
    def ref(self) -> str:
        """``"{trace_id}-{span_id}"``: store it to link a later run to this span
        (``workflow(resumed_from=ref)``, ``step(retry_of=ref)``, ``monitor(ref)``)."""
        return f"{self.trace_id}-{self.span_id}"

    def event(self, name: str, /, **attributes: Any) -> None:
        """Add an event to this span (also sent live at once)."""
        _check_event_name(name)
        if not self._ended("event"):
            _add_event(self.span, name, attributes)

    def set(self, **attributes: Any) -> None:
        """Set attributes on this span (values of any type; see the docs); the
        ``spangraph.*`` keys the SDK sets itself are refused."""
        _check_attributes(attributes, "set()")
        if not self._ended("set"):
            self.span.set_attributes(clean(attributes))

    def _elapsed_ms(self) -> float:
        return round((time.perf_counter() - self._t0) * 1000, 3)


class WorkflowRun(Handle):
    """The running span of a :func:`workflow`, with its explicit lifecycle events."""

    __slots__ = ()

    def queued(self, **attributes: Any) -> None:
        """Record ``workflow.queued``, with ``attributes`` on the event."""
        if not self._ended("queued"):
            _add_event(self.span, sc.WORKFLOW_QUEUED, attributes)

    def paused(self, reason: str | None = None, **attributes: Any) -> None:
        """Record ``workflow.paused`` (e.g. waiting for a person), with ``reason`` and
        ``attributes`` on the event."""
        if not self._ended("paused"):
            _add_event(self.span, sc.WORKFLOW_PAUSED, {"reason": reason, **attributes})

    def resumed(self, **attributes: Any) -> None:
        """Record ``workflow.resumed``, with ``attributes`` on the event."""
        if not self._ended("resumed"):
            _add_event(self.span, sc.WORKFLOW_RESUMED, attributes)


def _default_name(fn: Any) -> str:
    """A function's qualified name without ``<locals>`` parts (``Agent.run``, ``fetch``):
    for a ``functools.partial`` or a static or class method, the function's inside; for
    another callable object, its class's."""
    while True:
        if isinstance(fn, functools.partial):
            fn = fn.func
        elif isinstance(fn, staticmethod | classmethod):
            fn = fn.__func__
        else:
            break
    name = getattr(fn, "__qualname__", None)
    if not isinstance(name, str) or not name.strip():
        name = getattr(fn, "__name__", None)
    if not isinstance(name, str) or not name.strip():
        name = type(fn).__qualname__
    return name.rsplit("<locals>.", 1)[-1]


def _check_name(name: object, what: str) -> None:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{what} must be a non-empty string, got {name!r}")


def _check_id(value: object, what: str) -> None:
    """An id (``workflow_id``, ``execution_id``, ``branch_id``): a non-blank string of at
    most :data:`MAX_ID_CHARS` characters."""
    _check_name(value, what)
    if value != value.strip():  # type: ignore[attr-defined]
        # FalkorDB's indexes trim an equality lookup's value: "job-7 " would find the
        # spans of "job-7", and its own never (and baggage strips it too)
        raise ValueError(f"{what} must not begin or end with whitespace, got {value!r}")
    if value in (".", ".."):
        # a URL path segment of its own that browsers and HTTP clients resolve away
        # (/api/workflows/../tree): the run could not be opened in the web UI or the API
        raise ValueError(f"{what} must not be {value!r}")
    if len(value) > MAX_ID_CHARS:  # type: ignore[arg-type]
        raise ValueError(
            f"{what} must be at most {MAX_ID_CHARS} characters, got {len(value)}"  # type: ignore[arg-type]
        )


def _check_event_name(name: object) -> None:
    _check_name(name, "event name")
    if name in RESERVED_EVENTS:
        raise ValueError(
            f"event name {name!r} is reserved: the SDK records it itself (or it is a live "
            "message type); give a custom event a name of its own"
        )


def _check_attributes(attributes: Mapping[str, Any] | None, what: str) -> None:
    """Refuse what is not a mapping of names (strings) to values, and the ``spangraph.*``
    keys the SDK sets (they would move a span out of its run or change its kind or
    state)."""
    if attributes is not None and not isinstance(attributes, Mapping):
        raise TypeError(
            f"{what}: attributes must be a mapping of names to values, "
            f"got {type(attributes).__name__}"
        )
    if attributes:
        named = next((k for k in attributes if not isinstance(k, str)), None)
        if named is not None:
            raise TypeError(f"{what}: attribute names must be strings, got {named!r}")
        reserved = sorted(k for k in attributes if k in RESERVED_KEYS)
        if reserved:
            raise ValueError(
                f"{what}: {', '.join(reserved)} {'is' if len(reserved) == 1 else 'are'} set by "
                "spangraph itself and cannot be given as attributes"
            )


@dataclass(frozen=True, slots=True)
class _Options:
    kind: str
    name: str | None
    attributes: Mapping[str, Any]
    workflow_id: str | None = None
    execution_id: str | None = None
    retries: int = 0
    backoff: float = 0.1
    backoff_max: float = 30.0
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    timeout: float | None = None
    links: tuple[Link, ...] = ()
    branch_id: str | None = None
    handle_cls: type[Handle] | None = None
    before_start: Callable[[], None] | None = None
    """Called before each span of the scope starts; what it raises is raised instead."""
    on_enter: Callable[[Any], None] | None = None
    """Called with the new handle right after its span starts."""
    on_finish: Callable[[Any, BaseException | None], None] | None = None
    """Called with the handle and the outcome right before its span ends."""
    span_kind: trace.SpanKind = trace.SpanKind.INTERNAL
    """OpenTelemetry's span kind (a model call: ``CLIENT``, as GenAI's conventions say)."""


class _Frame:
    """One open span of a scope: started, attached or not, then finished once."""

    __slots__ = (
        "__weakref__", "ctx", "generation", "handle", "kind", "lifecycle", "on_finish",
        "timeout", "timeout_cm", "token",
    )  # fmt: skip

    def __init__(self, opts: _Options, name: str, attempt: int | None, links: tuple[Link, ...]):
        if opts.before_start is not None:
            opts.before_start()
        kind = opts.kind
        parent_run = _current_ids()
        attrs: dict[str, Any] = {sc.KIND: kind, sc.PROJECT_ID: _state.project}
        run: RunIds | None
        if kind == sc.KIND_WORKFLOW:
            workflow_id = opts.workflow_id or uuid7()
            run = RunIds(
                workflow_id=workflow_id,
                execution_id=opts.execution_id or workflow_id,
                workflow_name=name,
                branch_id=None,
            )
            attrs[sc.GEN_AI_OPERATION_NAME] = "invoke_workflow"
        elif kind == sc.KIND_BRANCH:
            base = parent_run or RunIds(workflow_id="", execution_id="", workflow_name="")
            run = replace(base, branch_id=opts.branch_id or uuid7())
        else:
            run = parent_run
        if run is not None:
            if run.workflow_id:
                attrs[sc.WORKFLOW_ID] = run.workflow_id
                attrs[sc.EXECUTION_ID] = run.execution_id
                attrs[sc.WORKFLOW_NAME] = run.workflow_name
            if run.branch_id:
                attrs[sc.BRANCH_ID] = run.branch_id
        if attempt is not None:
            attrs[sc.STEP_ATTEMPT] = attempt
            if opts.retries:
                attrs[sc.STEP_MAX_ATTEMPTS] = opts.retries + 1
        if opts.timeout is not None:
            attrs[sc.TIMEOUT_S] = opts.timeout
        # the SDK's own keys win over the caller's
        given = {k: v for k, v in clean(opts.attributes).items() if k not in _FRAME_KEYS}
        span = _state.tracer.start_span(
            encodable(name), kind=opts.span_kind, attributes={**given, **attrs}, links=links or None
        )
        if kind == sc.KIND_WORKFLOW and not _state.unconfigured_warned:
            _warn_if_unconfigured(span, name)
        ctx = trace.set_span_in_context(span)
        if run is not parent_run and run is not None:
            ctx = otel_context.set_value(_RUN_KEY, run, ctx)
            if _state.propagate and run.workflow_id:
                try:
                    ctx = _propagation.with_run(
                        ctx, run.workflow_id, run.execution_id, run.workflow_name, run.branch_id
                    )
                except Exception:  # the span started: never leave it open for this
                    _log.warning("spangraph: a run's ids were not put in baggage", exc_info=True)
        self.ctx = ctx
        self.generation = _process_generation
        self.kind = kind
        self.lifecycle = kind in (sc.KIND_WORKFLOW, sc.KIND_STEP)
        self.on_finish = None
        self.token: contextvars.Token[otel_context.Context] | None = None
        self.timeout = opts.timeout
        self.timeout_cm: Any = None
        handle_cls = opts.handle_cls or (WorkflowRun if kind == sc.KIND_WORKFLOW else Handle)
        self.handle = handle_cls(span, kind, run, attempt)
        try:
            if self.lifecycle:
                _add_event(span, f"{kind}.started", {sc.EVENT_ATTEMPT: attempt})
            if opts.timeout is not None:
                _add_event(span, sc.TIMEOUT_SET, {sc.EVENT_TIMEOUT_MS: opts.timeout * 1000})
            if opts.on_enter is not None:
                opts.on_enter(self.handle)
        except BaseException as exc:  # the span started: end it before raising
            self.finish(exc)
            raise
        self.on_finish = opts.on_finish
        _open[self] = threading.current_thread()

    def attach(self) -> None:
        self.token = otel_context.attach(self.ctx)

    def detach(self) -> None:
        token, self.token = self.token, None
        if token is None:
            return
        if type(token) is not contextvars.Token:  # another OTel runtime context
            otel_context.detach(token)
            return
        try:
            token.var.reset(token)
        except ValueError:
            # Attached in another context: a generator's block held across a yield,
            # closed after the generator moved to another thread or task. Where this
            # block is what is current (the generator's own context, as spangraph's
            # wrappers resume it), what was current when it was attached is current
            # again; anywhere else, what is current there is not this block's to change.
            if token.var.get(None) is self.ctx:
                old = token.old_value
                token.var.set(otel_context.Context() if old is contextvars.Token.MISSING else old)

    def finish(self, exc: BaseException | None, *, timed_out: float | None = None) -> None:
        """End the span with the outcome ``exc``; never raises an ``Exception`` (what fails
        while recording the outcome is logged and the span is ended all the same)."""
        _open.pop(self, None)
        if self.generation != _process_generation:
            return  # started by the process this one was forked from: that one ends it
        span = self.handle.span
        try:
            if span.is_recording():
                self._finish(exc, timed_out)
        except Exception:
            _end_anyway(span, exc)

    def _finish(self, exc: BaseException | None, timed_out: float | None) -> None:
        handle = self.handle
        span = handle.span
        if self.on_finish is not None:
            try:
                self.on_finish(handle, exc)
            except Exception:  # a hook must not turn a result into an error
                _log.exception("spangraph: finishing %s %r failed", self.kind, handle.name)
        duration = handle._elapsed_ms()
        # the span ends, and its last events happen, when its code ended: recording an
        # exception (its stack trace read from the source files) is not the step's time
        now = time.time_ns()
        common = {sc.EVENT_DURATION_MS: duration, sc.EVENT_ATTEMPT: handle.attempt}
        if timed_out is not None:
            _add_event(span, sc.TIMEOUT_EXCEEDED, {sc.EVENT_TIMEOUT_MS: timed_out * 1000}, now)
        if clean_exit(exc):
            span.set_attribute(sc.STATE, sc.STATE_COMPLETED)
            if self.lifecycle:
                _add_event(span, f"{self.kind}.completed", common, now)
        elif is_cancellation(exc):
            span.set_attribute(sc.STATE, sc.STATE_CANCELLED)
            if self.kind == sc.KIND_WORKFLOW:
                _add_event(span, sc.WORKFLOW_CANCELLED, {**common, **_error_attrs(exc)}, now)
        else:
            # (exc is not None here: clean_exit(None) is True)
            span.set_attribute(sc.STATE, sc.STATE_FAILED)
            _record_exception(span, exc, now)  # type: ignore[arg-type]
            errors = failure_attrs(self, exc)  # type: ignore[arg-type]
            # OpenTelemetry's error.type on the failed span itself (the GenAI and HTTP
            # conventions' way to tell failures apart), not only on its events
            span.set_attribute(sc.ERROR_TYPE, errors[sc.ERROR_TYPE])
            span.set_status(error_status(exc, errors[sc.ERROR_MESSAGE]))  # type: ignore[arg-type]
            if self.lifecycle:
                _add_event(span, f"{self.kind}.failed", {**common, **errors}, now)
        span.end(end_time=now)


def _state_of(exc: BaseException | None) -> str:
    if clean_exit(exc):
        return sc.STATE_COMPLETED
    return sc.STATE_CANCELLED if is_cancellation(exc) else sc.STATE_FAILED


def _end_anyway(span: Span, exc: BaseException | None) -> None:
    """End ``span`` with its state after recording its outcome failed, e.g. with a
    RecursionError near the recursion limit: with some room above the limit, so that
    ending it (and the processors' ``on_end``) can run there too."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(limit + 200)
    try:
        if span.is_recording():
            span.set_attribute(sc.STATE, _state_of(exc))
            span.end()
        _log.warning("spangraph: recording the end of span %r failed", span, exc_info=True)
    except Exception:
        pass  # nothing more can be done; the user's code goes on
    finally:
        try:
            sys.setrecursionlimit(limit)
        except Exception:
            pass


def _retry_delay(opts: _Options, attempt: int) -> float:
    # a float power, its exponent capped below 1024 where it would overflow; the product
    # may be inf, which backoff_max caps (0.0 * 2**1025 raised OverflowError)
    return min(opts.backoff * 2.0 ** min(attempt - 1, 1023), opts.backoff_max)


def _timed_out(frame: _Frame, timeout: float | None) -> float | None:
    """``timeout`` when ``frame``'s timeout fired, whatever the code did then (raised, or
    caught the cancellation and returned), else ``None``."""
    cm = frame.timeout_cm
    if timeout is not None and cm is not None and cm.expired():
        return timeout
    return None
