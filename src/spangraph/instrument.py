"""The instrumentation API: workflows, steps, events and sleeps as OpenTelemetry spans.

:func:`workflow` and :func:`step` return a :class:`Scope`, which works both as a
decorator (sync, async, generator and async-generator functions) and as a ``with`` /
``async with`` block. Context is attached around every call, ``next()`` and ``anext()``
of the wrapped code and detached after it, so the caller's context never leaks in and
the span's never leaks out.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final, TypeVar, overload

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, Span, Status, StatusCode

from . import _state
from . import semconv as sc
from ._attrs import clean
from ._ids import uuid7
from .processors.live import emit_event

F = TypeVar("F", bound=Callable[..., Any])

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


def _error_attrs(exc: BaseException) -> dict[str, Any]:
    cls = type(exc)
    qualname = (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )
    return {sc.ERROR_TYPE: qualname, sc.ERROR_MESSAGE: str(exc)}


class Handle:
    """The running span of a :func:`step` (what ``with step(...) as s`` gives)."""

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
    def span_id(self) -> str:
        return format(self.span.get_span_context().span_id, "016x")

    @property
    def trace_id(self) -> str:
        return format(self.span.get_span_context().trace_id, "032x")

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


class _Frame:
    """One open span of a scope: started, attached or not, then finished once."""

    __slots__ = ("ctx", "handle", "kind", "lifecycle", "timeout_cm", "token")

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
        else:
            run = parent_run
        if run is not None:
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
        handle_cls = WorkflowRun if kind == sc.KIND_WORKFLOW else Handle
        self.handle = handle_cls(span, kind, run, attempt)
        self.token: object | None = None
        self.timeout_cm: Any = None
        if self.lifecycle:
            _add_event(span, f"{kind}.started", {sc.EVENT_ATTEMPT: attempt})
        if opts.timeout is not None:
            _add_event(span, sc.TIMEOUT_SET, {sc.EVENT_TIMEOUT_MS: opts.timeout * 1000})

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


class Scope:
    """A workflow or step: use as ``@decorator``, ``with`` block or ``async with`` block."""

    __slots__ = ("_frames", "_opts")

    def __init__(self, opts: _Options) -> None:
        self._opts = opts
        self._frames: list[_Frame] = []

    # -- blocks ---------------------------------------------------------------------------

    def _check_block(self, is_async: bool) -> None:
        opts = self._opts
        if opts.name is None:
            raise TypeError(
                f"{opts.kind}() used as a block needs a name: with {opts.kind}('name'):"
            )
        if opts.retries:
            raise TypeError(
                f"retries= needs {opts.kind} to decorate a function (a block cannot re-run)"
            )
        if opts.timeout is not None and not is_async:
            raise TypeError(
                "timeout= works with 'async with' and async functions only: "
                "sync code cannot be interrupted safely"
            )

    def __enter__(self) -> Any:
        self._check_block(is_async=False)
        frame = _Frame(self._opts, self._opts.name or "", self._first_attempt(), self._opts.links)
        frame.attach()
        self._frames.append(frame)
        return frame.handle

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        frame = self._pop_frame()
        try:
            frame.finish(exc)
        finally:
            frame.detach()

    async def __aenter__(self) -> Any:
        self._check_block(is_async=True)
        frame = _Frame(self._opts, self._opts.name or "", self._first_attempt(), self._opts.links)
        frame.attach()
        if self._opts.timeout is not None:
            frame.timeout_cm = asyncio.timeout(self._opts.timeout)
            await frame.timeout_cm.__aenter__()
        self._frames.append(frame)
        return frame.handle

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool | None:
        frame = self._pop_frame()
        try:
            if frame.timeout_cm is not None:
                try:
                    await frame.timeout_cm.__aexit__(exc_type, exc, tb)
                except TimeoutError as converted:
                    frame.finish(converted, timed_out=self._opts.timeout)
                    raise
            frame.finish(exc)
        finally:
            frame.detach()
        return None

    def _pop_frame(self) -> _Frame:
        # One Scope object may be open in several tasks or threads at once
        # (``s = step("x")`` reused), so blocks do not close in LIFO order across them:
        # the frame to close is the one whose span is current here.
        frames = self._frames
        current = trace.get_current_span()
        for frame in reversed(frames):
            if frame.handle.span is current:
                frames.remove(frame)
                return frame
        return frames.pop()

    def _first_attempt(self) -> int | None:
        return 1 if self._opts.kind == sc.KIND_STEP else None

    # -- decorator ------------------------------------------------------------------------

    def __call__(self, fn: F) -> F:
        if not callable(fn):
            raise TypeError(f"{self._opts.kind}() decorates a function, got {fn!r}")
        opts = self._opts if self._opts.name else replace(self._opts, name=fn.__qualname__)
        if inspect.isasyncgenfunction(fn):
            _no_retry_timeout(opts, "async generator", allow_timeout=False)
            return _wrap_async_gen(opts, fn)  # type: ignore[return-value]
        if inspect.isgeneratorfunction(fn):
            _no_retry_timeout(opts, "generator", allow_timeout=False)
            return _wrap_gen(opts, fn)  # type: ignore[return-value]
        if inspect.iscoroutinefunction(fn):
            return _wrap_async(opts, fn)  # type: ignore[return-value]
        if opts.timeout is not None:
            raise TypeError(
                "timeout= works with async functions only: sync code cannot be "
                f"interrupted safely ({fn.__qualname__})"
            )
        return _wrap_sync(opts, fn)  # type: ignore[return-value]


def _no_retry_timeout(opts: _Options, what: str, *, allow_timeout: bool) -> None:
    if opts.retries:
        raise TypeError(f"retries= cannot be used on a {what} function: it cannot be re-run safely")
    if opts.timeout is not None and not allow_timeout:
        raise TypeError(f"timeout= cannot be used on a {what} function")


def _retry_link(previous: _Frame | None) -> tuple[Link, ...]:
    if previous is None:
        return ()
    return (Link(previous.handle.span.get_span_context(), {sc.LINK_TYPE: sc.LINK_RETRY_OF}),)


def _on_failure(opts: _Options, frame: _Frame, attempt: int, exc: BaseException) -> float | None:
    """Record retry events for a failed attempt; the delay before the next one, or None."""
    span = frame.handle.span
    retryable = isinstance(exc, opts.retry_on) and not isinstance(exc, _CANCELLED)
    if not opts.retries or not retryable:
        return None
    if attempt <= opts.retries:
        delay = _retry_delay(opts, attempt)
        _add_event(
            span,
            sc.RETRY_SCHEDULED,
            {sc.EVENT_ATTEMPT: attempt, sc.EVENT_DELAY_MS: delay * 1000, **_error_attrs(exc)},
        )
        return delay
    _add_event(span, sc.RETRY_EXHAUSTED, {sc.EVENT_ATTEMPT: attempt, **_error_attrs(exc)})
    return None


def _attempt_number(opts: _Options, attempt: int) -> int | None:
    return attempt if opts.kind == sc.KIND_STEP else None


def _wrap_sync(opts: _Options, fn: Callable[..., Any]) -> Callable[..., Any]:
    name = opts.name or fn.__qualname__

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        previous: _Frame | None = None
        attempt = 1
        while True:
            frame = _Frame(
                opts, name, _attempt_number(opts, attempt), opts.links + _retry_link(previous)
            )
            frame.attach()
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                delay = _on_failure(opts, frame, attempt, exc)
                frame.finish(exc)
                frame.detach()
                if delay is None:
                    raise
                time.sleep(delay)
                previous, attempt = frame, attempt + 1
                continue
            frame.finish(None)
            frame.detach()
            return result

    return wrapper


def _wrap_async(opts: _Options, fn: Callable[..., Any]) -> Callable[..., Any]:
    name = opts.name or fn.__qualname__

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        previous: _Frame | None = None
        attempt = 1
        while True:
            frame = _Frame(
                opts, name, _attempt_number(opts, attempt), opts.links + _retry_link(previous)
            )
            frame.attach()
            try:
                if opts.timeout is not None:
                    frame.timeout_cm = asyncio.timeout(opts.timeout)
                    async with frame.timeout_cm:
                        result = await fn(*args, **kwargs)
                else:
                    result = await fn(*args, **kwargs)
            except BaseException as exc:
                timed_out = _timed_out(frame, exc, opts.timeout)
                delay = _on_failure(opts, frame, attempt, exc)
                frame.finish(exc, timed_out=timed_out)
                frame.detach()
                if delay is None:
                    raise
                await asyncio.sleep(delay)
                previous, attempt = frame, attempt + 1
                continue
            frame.finish(None)
            frame.detach()
            return result

    return wrapper


def _wrap_gen(opts: _Options, fn: Callable[..., Any]) -> Callable[..., Any]:
    name = opts.name or fn.__qualname__

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        gen = fn(*args, **kwargs)
        frame = _Frame(opts, name, _attempt_number(opts, 1), opts.links)
        to_send: Any = None
        to_throw: BaseException | None = None
        while True:
            frame.attach()
            try:
                if to_throw is not None:
                    exc, to_throw = to_throw, None
                    value = gen.throw(exc)
                else:
                    value = gen.send(to_send)
            except StopIteration as stop:
                frame.finish(None)
                return stop.value
            except BaseException as exc:
                frame.finish(exc)
                raise
            finally:
                frame.detach()
            try:
                to_send = yield value
            except GeneratorExit:
                frame.attach()
                try:
                    gen.close()
                except BaseException as exc:  # its cleanup failed: the span still ends
                    frame.finish(exc)
                    raise
                finally:
                    frame.detach()
                frame.finish(None)
                raise
            except BaseException as exc:
                to_throw = exc

    return wrapper


def _wrap_async_gen(opts: _Options, fn: Callable[..., Any]) -> Callable[..., Any]:
    name = opts.name or fn.__qualname__

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        agen = fn(*args, **kwargs)
        frame = _Frame(opts, name, _attempt_number(opts, 1), opts.links)
        to_send: Any = None
        to_throw: BaseException | None = None
        while True:
            frame.attach()
            try:
                if to_throw is not None:
                    exc, to_throw = to_throw, None
                    value = await agen.athrow(exc)
                else:
                    value = await agen.asend(to_send)
            except StopAsyncIteration:
                frame.finish(None)
                return
            except BaseException as exc:
                frame.finish(exc)
                raise
            finally:
                frame.detach()
            try:
                to_send = yield value
            except GeneratorExit:
                frame.attach()
                try:
                    await agen.aclose()
                except BaseException as exc:  # its cleanup failed: the span still ends
                    frame.finish(exc)
                    raise
                finally:
                    frame.detach()
                frame.finish(None)
                raise
            except BaseException as exc:
                to_throw = exc

    return wrapper


# -- public factories -------------------------------------------------------------------


def _make(kind: str, name_or_fn: Any, kwargs: dict[str, Any]) -> Any:
    attributes = kwargs.pop("attributes", None) or {}
    if name_or_fn is not None and not isinstance(name_or_fn, str) and not callable(name_or_fn):
        raise TypeError(f"{kind}() takes a name or a function, got {name_or_fn!r}")
    name = name_or_fn if isinstance(name_or_fn, str) else kwargs.pop("name", None)
    if name is not None:
        _check_name(name, f"{kind} name")
    retries = kwargs.get("retries", 0)
    if not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be a whole number >= 0, got {retries!r}")
    for key in ("backoff", "backoff_max"):
        if key in kwargs and (not isinstance(kwargs[key], int | float) or kwargs[key] < 0):
            raise ValueError(f"{key} must be a number of seconds >= 0, got {kwargs[key]!r}")
    timeout = kwargs.get("timeout")
    if timeout is not None and (not isinstance(timeout, int | float) or timeout <= 0):
        raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
    retry_on = kwargs.get("retry_on")
    if retry_on is not None:
        kwargs["retry_on"] = retry_on if isinstance(retry_on, tuple) else (retry_on,)
    opts = _Options(kind=kind, name=name, attributes=dict(attributes), **kwargs)
    scope = Scope(opts)
    if callable(name_or_fn) and not isinstance(name_or_fn, str):
        return scope(name_or_fn)
    return scope


@overload
def workflow(fn: F, /) -> F: ...
@overload
def workflow(
    name: str | None = None,
    /,
    *,
    workflow_id: str | None = None,
    execution_id: str | None = None,
    timeout: float | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> Scope: ...
def workflow(name_or_fn: Any = None, /, **kwargs: Any) -> Any:
    """A workflow run: the root of a run's tree, with a new ``workflow_id`` (UUIDv7) unless
    one is given, inherited by every span inside it.

    Use as ``@workflow``, ``@workflow("name")``, ``with workflow("name") as run:`` or
    ``async with``. Records ``workflow.started`` and ``workflow.completed | failed |
    cancelled``; ``run.queued()``, ``run.paused()`` and ``run.resumed()`` record the rest.
    ``execution_id`` groups several runs (traces) into one logical execution.
    """
    _only(kwargs, {"name", "workflow_id", "execution_id", "timeout", "attributes"}, "workflow")
    return _make(sc.KIND_WORKFLOW, name_or_fn, kwargs)


@overload
def step(fn: F, /) -> F: ...
@overload
def step(
    name: str | None = None,
    /,
    *,
    retries: int = 0,
    backoff: float = 0.1,
    backoff_max: float = 30.0,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
    timeout: float | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> Scope: ...
def step(name_or_fn: Any = None, /, **kwargs: Any) -> Any:
    """One step of a workflow. Use as ``@step``, ``@step("name", retries=3)``,
    ``with step("name") as s:`` or ``async with``.

    ``retries=N`` (decorator only) re-runs a failing call up to N more times, each
    attempt its own span linked to the previous one (``retry_of``), waiting
    ``backoff * 2**(attempt-1)`` seconds (at most ``backoff_max``) in between, and records
    ``retry.scheduled`` / ``retry.exhausted``. ``timeout=`` (async only) cancels the step
    after that many seconds, records ``timeout.exceeded`` and raises ``TimeoutError``.
    """
    _only(
        kwargs,
        {"name", "retries", "backoff", "backoff_max", "retry_on", "timeout", "attributes"},
        "step",
    )
    return _make(sc.KIND_STEP, name_or_fn, kwargs)


def _only(kwargs: dict[str, Any], allowed: set[str], what: str) -> None:
    unknown = set(kwargs) - allowed
    if unknown:
        raise TypeError(
            f"{what}() got unexpected keyword argument(s): {', '.join(sorted(unknown))}"
        )


def event(name: str, /, **attributes: Any) -> bool:
    """Add an event to the current span (and send it live at once).

    Attribute values may be of any type: unsupported ones become text, long ones are
    truncated with a marker. Returns ``False`` when no span is recording.
    """
    _check_name(name, "event name")
    span = trace.get_current_span()
    if not span.is_recording():
        return False
    _add_event(span, name, attributes)
    return True


def _sleep_event(reason: str | None, seconds: float) -> Span | None:
    if not isinstance(seconds, int | float) or seconds < 0:
        raise ValueError(f"seconds must be a number >= 0, got {seconds!r}")
    span = trace.get_current_span()
    if not span.is_recording():
        return None
    _add_event(span, sc.SLEEP_STARTED, {sc.EVENT_DELAY_MS: seconds * 1000, "reason": reason})
    return span


def _slept(span: Span | None, t0: float) -> None:
    if span is not None and span.is_recording():
        _add_event(
            span,
            sc.SLEEP_COMPLETED,
            {sc.EVENT_DURATION_MS: round((time.perf_counter() - t0) * 1000, 3)},
        )


def sleep(seconds: float, /, reason: str | None = None) -> None:
    """Sleep (blocking), recording ``sleep.started`` and ``sleep.completed`` on the
    current span. In async code use :func:`asleep`."""
    span = _sleep_event(reason, seconds)
    t0 = time.perf_counter()
    time.sleep(seconds)
    _slept(span, t0)


async def asleep(seconds: float, /, reason: str | None = None) -> None:
    """``await``-able :func:`sleep`."""
    span = _sleep_event(reason, seconds)
    t0 = time.perf_counter()
    await asyncio.sleep(seconds)
    _slept(span, t0)


__all__ = [
    "Handle",
    "RunIds",
    "Scope",
    "WorkflowRun",
    "asleep",
    "current_run",
    "event",
    "sleep",
    "step",
    "workflow",
]
