"""Spans of spangraph's own kinds: run ids in the context, handles, and the frame that
starts, attaches, detaches and finishes one span with its lifecycle events."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanContext, Status, StatusCode, TraceFlags

from . import _state
from . import semconv as sc
from ._attrs import clean
from ._ids import uuid7
from .processors.live import emit_event

F = TypeVar("F", bound=Callable[..., Any])

_log = logging.getLogger("spangraph")

_RUN_KEY: Final = otel_context.create_key("spangraph-run")

_CANCELLED: Final = (asyncio.CancelledError, KeyboardInterrupt, GeneratorExit)
"""Exceptions that end a span as ``cancelled`` rather than ``failed``."""


@dataclass(frozen=True, slots=True)
class RunIds:
    """Ids of the run a span belongs to, carried in the OpenTelemetry context."""

    workflow_id: str
    execution_id: str
    workflow_name: str
    branch_id: str | None = None


def current_run() -> RunIds | None:
    """Ids of the workflow run the current code executes in, or ``None``."""
    value = otel_context.get_value(_RUN_KEY)
    return value if isinstance(value, RunIds) else None


def _add_event(span: Span, name: str, attributes: Mapping[str, Any] | None = None) -> None:
    attrs = clean(attributes)
    now = time.time_ns()
    span.add_event(name, attrs, timestamp=now)
    emit_event(span, name, attrs, now)


def span_context_of(target: Any) -> SpanContext:
    """The SpanContext of a handle, span, SpanContext or ``"{trace_id}-{span_id}"`` ref."""
    if isinstance(target, Handle):
        return target.span.get_span_context()
    if isinstance(target, SpanContext):
        return target
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
    get_ctx = getattr(target, "get_span_context", None)
    if callable(get_ctx):
        return get_ctx()
    raise TypeError(f"expected a spangraph handle, a span, a SpanContext or a ref, got {target!r}")


def link_to(target: Any, link_type: str) -> Link:
    """A span link of ``spangraph.link.type`` ``link_type`` to ``target``."""
    return Link(span_context_of(target), {sc.LINK_TYPE: link_type})


def _error_attrs(exc: BaseException) -> dict[str, Any]:
    cls = type(exc)
    qualname = (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )
    return {sc.ERROR_TYPE: qualname, sc.ERROR_MESSAGE: str(exc)}


class Handle:
    """A running span of spangraph's (what ``with step(...) as s`` gives)."""

    __slots__ = ("_t0", "attempt", "kind", "run", "span")

    def __init__(self, span: Span, kind: str, run: RunIds | None, attempt: int | None) -> None:
        self.span = span
        self.kind = kind
        self.run = run
        self.attempt = attempt
        self._t0 = time.perf_counter()

    @property
    def workflow_id(self) -> str | None:
        return self.run.workflow_id if self.run else None

    @property
    def name(self) -> str:
        return str(getattr(self.span, "name", ""))

    @property
    def branch_id(self) -> str | None:
        return self.run.branch_id if self.run else None

    @property
    def span_id(self) -> str:
        return format(self.span.get_span_context().span_id, "016x")

    @property
    def trace_id(self) -> str:
        return format(self.span.get_span_context().trace_id, "032x")

    @property
    def ref(self) -> str:
        """``"{trace_id}-{span_id}"``: store it to link a later run to this span
        (``workflow(resumed_from=ref)``, ``step(retry_of=ref)``, ``monitor(ref)``)."""
        return f"{self.trace_id}-{self.span_id}"

    def event(self, name: str, /, **attributes: Any) -> None:
        """Add an event to this span (also sent live at once)."""
        _check_name(name, "event name")
        _add_event(self.span, name, attributes)

    def set(self, **attributes: Any) -> None:
        """Set attributes on this span (values of any type; see the docs)."""
        self.span.set_attributes(clean(attributes))

    def _elapsed_ms(self) -> float:
        return round((time.perf_counter() - self._t0) * 1000, 3)


class WorkflowRun(Handle):
    """The running span of a :func:`workflow`, with its explicit lifecycle events."""

    __slots__ = ()

    def queued(self, **attributes: Any) -> None:
        """Record ``workflow.queued``."""
        _add_event(self.span, sc.WORKFLOW_QUEUED, attributes)

    def paused(self, reason: str | None = None, **attributes: Any) -> None:
        """Record ``workflow.paused`` (e.g. waiting for a person)."""
        _add_event(self.span, sc.WORKFLOW_PAUSED, {"reason": reason, **attributes})

    def resumed(self, **attributes: Any) -> None:
        """Record ``workflow.resumed``."""
        _add_event(self.span, sc.WORKFLOW_RESUMED, attributes)


def _default_name(fn: Callable[..., Any]) -> str:
    """A function's qualified name without ``<locals>`` parts (``Agent.run``, ``fetch``)."""
    return fn.__qualname__.rsplit("<locals>.", 1)[-1]


def _check_name(name: object, what: str) -> None:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{what} must be a non-empty string, got {name!r}")


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
    on_enter: Callable[[Any], None] | None = None
    """Called with the new handle right after its span starts."""
    on_finish: Callable[[Any, BaseException | None], None] | None = None
    """Called with the handle and the outcome right before its span ends."""


class _Frame:
    """One open span of a scope: started, attached or not, then finished once."""

    __slots__ = ("ctx", "handle", "kind", "lifecycle", "on_finish", "timeout_cm", "token")

    def __init__(self, opts: _Options, name: str, attempt: int | None, links: tuple[Link, ...]):
        kind = opts.kind
        parent_run = current_run()
        attrs: dict[str, Any] = {sc.KIND: kind, sc.PROJECT_ID: _state.project}
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
        attrs.update(clean(opts.attributes))
        span = _state.tracer.start_span(name, attributes=attrs, links=links or None)
        ctx = trace.set_span_in_context(span)
        if run is not parent_run and run is not None:
            ctx = otel_context.set_value(_RUN_KEY, run, ctx)
        self.ctx = ctx
        self.kind = kind
        self.lifecycle = kind in (sc.KIND_WORKFLOW, sc.KIND_STEP)
        handle_cls = opts.handle_cls or (WorkflowRun if kind == sc.KIND_WORKFLOW else Handle)
        self.handle = handle_cls(span, kind, run, attempt)
        self.on_finish = opts.on_finish
        self.token: object | None = None
        self.timeout_cm: Any = None
        if self.lifecycle:
            _add_event(span, f"{kind}.started", {sc.EVENT_ATTEMPT: attempt})
        if opts.timeout is not None:
            _add_event(span, sc.TIMEOUT_SET, {sc.EVENT_TIMEOUT_MS: opts.timeout * 1000})
        if opts.on_enter is not None:
            opts.on_enter(self.handle)

    def attach(self) -> None:
        self.token = otel_context.attach(self.ctx)

    def detach(self) -> None:
        if self.token is not None:
            otel_context.detach(self.token)
            self.token = None

    def finish(self, exc: BaseException | None, *, timed_out: float | None = None) -> None:
        handle = self.handle
        span = handle.span
        if not span.is_recording():
            return
        if self.on_finish is not None:
            try:
                self.on_finish(handle, exc)
            except Exception:  # a hook must not turn a result into an error
                _log.exception("spangraph: finishing %s %r failed", self.kind, handle.name)
        duration = handle._elapsed_ms()
        common = {sc.EVENT_DURATION_MS: duration, sc.EVENT_ATTEMPT: handle.attempt}
        if timed_out is not None:
            _add_event(span, sc.TIMEOUT_EXCEEDED, {sc.EVENT_TIMEOUT_MS: timed_out * 1000})
        if exc is None:
            span.set_attribute(sc.STATE, sc.STATE_COMPLETED)
            if self.lifecycle:
                _add_event(span, f"{self.kind}.completed", common)
        elif isinstance(exc, _CANCELLED):
            span.set_attribute(sc.STATE, sc.STATE_CANCELLED)
            if self.kind == sc.KIND_WORKFLOW:
                _add_event(span, sc.WORKFLOW_CANCELLED, {**common, **_error_attrs(exc)})
        else:
            span.set_attribute(sc.STATE, sc.STATE_FAILED)
            now = time.time_ns()
            span.record_exception(exc, timestamp=now)
            emit_event(
                span,
                "exception",
                {"exception.type": type(exc).__qualname__, "exception.message": str(exc)},
                now,
            )
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            if self.lifecycle:
                _add_event(span, f"{self.kind}.failed", {**common, **_error_attrs(exc)})
        span.end()


def _retry_delay(opts: _Options, attempt: int) -> float:
    return min(opts.backoff * (2 ** (attempt - 1)), opts.backoff_max)


def _timed_out(frame: _Frame, exc: BaseException | None, timeout: float | None) -> float | None:
    cm = frame.timeout_cm
    if timeout is not None and cm is not None and isinstance(exc, TimeoutError) and cm.expired():
        return timeout
    return None
