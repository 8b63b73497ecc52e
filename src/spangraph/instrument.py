"""The instrumentation API: workflows, steps, events and sleeps as OpenTelemetry spans.

:func:`workflow` and :func:`step` return a :class:`Scope`, which works both as a
decorator (sync, async, generator and async-generator functions) and as a ``with`` /
``async with`` block. Context is attached around every call, ``next()`` and ``anext()``
of the wrapped code and detached after it, so the caller's context never leaks in and
the span's never leaks out.
"""

from __future__ import annotations

import functools
import inspect
import math
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, Final, Generic, TypedDict, TypeVar, Unpack, overload

from opentelemetry import trace
from opentelemetry.trace import Span, SpanContext

from . import _aio
from . import semconv as sc
from ._spans import (
    F,
    Handle,
    RunIds,
    WorkflowRun,
    _add_event,
    _check_attributes,
    _check_event_name,
    _check_id,
    _check_name,
    _default_name,
    _Frame,
    _Options,
    _timed_out,
    as_ended,
    current_run,
    link_to,
)
from ._wrappers import _no_retry_timeout, _wrap_async, _wrap_async_gen, _wrap_gen, _wrap_sync

H = TypeVar("H", bound=Handle)


class Scope(Generic[H]):
    """A workflow or step: use as ``@decorator``, ``with`` block or ``async with`` block.

    Typed by what a block gives: ``Scope[WorkflowRun]`` from :func:`workflow`,
    ``Scope[Handle]`` from :func:`step`, so ``with workflow("x") as run:`` knows
    ``run.paused()``."""

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
                f"retries= needs {opts.kind} to decorate a function (a block cannot re-run): "
                f"{opts.kind}({opts.name!r})"
            )
        if opts.timeout is not None and not is_async:
            raise TypeError(
                "timeout= works with 'async with' and async functions only: "
                f"sync code cannot be interrupted safely: {opts.kind}({opts.name!r})"
            )

    def __enter__(self) -> H:
        self._check_block(is_async=False)
        frame = _Frame(self._opts, self._opts.name or "", self._first_attempt(), self._opts.links)
        frame.attach()
        self._frames.append(frame)
        return frame.handle  # type: ignore[return-value]  # made from opts.handle_cls

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        frame = self._pop_frame()
        try:
            frame.finish(as_ended(exc, sys._getframe(1)) if exc is not None else None)
        finally:
            frame.detach()

    async def __aenter__(self) -> H:
        self._check_block(is_async=True)
        frame = _Frame(self._opts, self._opts.name or "", self._first_attempt(), self._opts.links)
        frame.attach()
        if self._opts.timeout is not None:
            try:
                frame.timeout_cm = _aio.timeout(self._opts.timeout)
                await frame.timeout_cm.__aenter__()
            except BaseException as exc:  # e.g. not inside a task
                try:
                    frame.finish(exc)
                finally:
                    frame.detach()
                raise
        self._frames.append(frame)
        return frame.handle  # type: ignore[return-value]  # made from opts.handle_cls

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool | None:
        frame = self._pop_frame()
        try:
            if frame.timeout_cm is not None:
                try:
                    await frame.timeout_cm.__aexit__(exc_type, exc, tb)
                except TimeoutError as converted:
                    frame.finish(converted, timed_out=self._opts.timeout)
                    raise
                except BaseException as failed:  # the timeout's own exit failed
                    frame.finish(as_ended(failed), timed_out=_timed_out(frame, self._opts.timeout))
                    raise
            # fired, but the block turned the cancellation into an error of its own, or
            # caught it and went on (then it ends completed, after timeout.exceeded)
            ended = as_ended(exc, sys._getframe(1)) if exc is not None else None
            frame.finish(ended, timed_out=_timed_out(frame, self._opts.timeout))
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
        """Decorate ``fn`` (a function, method, ``functools.partial`` or callable object;
        sync, async, generator or async generator): each call runs in a span of its own."""
        if isinstance(fn, staticmethod | classmethod):  # @step above @staticmethod
            return type(fn)(self(fn.__func__))
        if isinstance(fn, type):  # the class would become a function (isinstance fails)
            raise TypeError(
                f"{self._opts.kind}() decorates a function, not the class "
                f"{_default_name(fn)}: decorate its methods"
            )
        if not callable(fn):
            raise TypeError(f"{self._opts.kind}() decorates a function, got {fn!r}")
        opts = self._opts if self._opts.name else replace(self._opts, name=_default_name(fn))
        return _named(self._wrap(opts, fn), fn)  # type: ignore[return-value]

    @staticmethod
    def _wrap(opts: _Options, fn: Callable[..., Any]) -> Callable[..., Any]:
        code = _code_of(fn)
        if inspect.isasyncgenfunction(code):
            _no_retry_timeout(opts, "async generator", allow_timeout=False)
            return _wrap_async_gen(opts, fn)
        if _iterable_coroutine(code):  # @types.coroutine: awaited, not iterated
            return _wrap_async(opts, fn)
        if inspect.isgeneratorfunction(code):
            _no_retry_timeout(opts, "generator", allow_timeout=False)
            return _wrap_gen(opts, fn)
        if inspect.iscoroutinefunction(code):
            return _wrap_async(opts, fn)
        if opts.timeout is not None:
            raise TypeError(
                "timeout= works with async functions only: sync code cannot be "
                f"interrupted safely ({_default_name(fn)})"
            )
        return _wrap_sync(opts, fn)


def _named(wrapper: Callable[..., Any], fn: Any) -> Callable[..., Any]:
    """``wrapper``, named as ``fn`` where ``functools.wraps`` found no name to copy (a
    ``functools.partial``, a callable object): its function's, or its class's, name
    instead of ``wrapper``."""
    if not isinstance(getattr(fn, "__name__", None), str):
        qualname = _default_name(fn)
        wrapper.__qualname__ = qualname
        wrapper.__name__ = qualname.rsplit(".", 1)[-1]
    return wrapper


def _iterable_coroutine(fn: Any) -> bool:
    """Whether ``fn`` is a generator-based coroutine function (``@types.coroutine``),
    looking through partials and methods as ``inspect`` does."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    fn = getattr(fn, "__func__", fn)
    flags = getattr(getattr(fn, "__code__", None), "co_flags", 0)
    return bool(flags & inspect.CO_ITERABLE_COROUTINE)


def _code_of(fn: Any) -> Any:
    """What tells whether ``fn`` is async or a generator: for a ``functools.partial``,
    what it wraps (``inspect`` sees through a partial, not into the object inside it);
    then the function itself for functions, methods and classes, else a callable
    object's ``__call__``."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.isroutine(fn) or isinstance(fn, type):
        return fn
    return type(fn).__call__


# -- public factories -------------------------------------------------------------------

MAX_RETRIES: Final = 10_000
"""Most retries ``step(retries=)`` accepts."""

MAX_BACKOFF_S: Final = 86_400.0
"""Largest ``backoff`` and ``backoff_max`` in seconds (a day)."""


def _make(kind: str, name_or_fn: Any, kwargs: dict[str, Any]) -> Any:
    attributes = kwargs.pop("attributes", None)
    is_fn = callable(name_or_fn) or isinstance(name_or_fn, staticmethod | classmethod)
    if name_or_fn is not None and not isinstance(name_or_fn, str) and not is_fn:
        raise TypeError(f"{kind}() takes a name or a function, got {name_or_fn!r}")
    named = kwargs.pop("name", None)
    if isinstance(name_or_fn, str):
        if named is not None:
            raise TypeError(f"{kind}() got a name twice: {name_or_fn!r} and name={named!r}")
        named = name_or_fn
    name = named
    if name is not None:
        _check_name(name, f"{kind} name")
    if attributes is not None:
        _check_attributes(attributes, f"{kind}(attributes=)")
    attributes = dict(attributes or {})
    for key in ("workflow_id", "execution_id"):
        if kwargs.get(key) is not None:
            _check_id(kwargs[key], key)
    retries = kwargs.get("retries", 0)
    if isinstance(retries, bool) or not isinstance(retries, int):
        raise ValueError(f"retries must be a whole number from 0 to {MAX_RETRIES}, got {retries!r}")
    if not 0 <= retries <= MAX_RETRIES:
        raise ValueError(f"retries must be a whole number from 0 to {MAX_RETRIES}, got {retries!r}")
    if "retries" in kwargs:
        kwargs["retries"] = int(retries)  # a plain int on the span (not an IntEnum's text)
    for key in ("backoff", "backoff_max"):
        if key in kwargs and not (_seconds(kwargs[key]) and 0 <= kwargs[key] <= MAX_BACKOFF_S):
            raise ValueError(
                f"{key} must be a finite number of seconds from 0 to {MAX_BACKOFF_S:g}, "
                f"got {kwargs[key]!r}"
            )
    timeout = kwargs.get("timeout")
    if timeout is not None and not (_seconds(timeout) and timeout > 0):
        raise ValueError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")
    if "retry_on" in kwargs:
        kwargs["retry_on"] = _exception_classes(kwargs["retry_on"])
    links = []
    for key, link_type in (("resumed_from", sc.LINK_RESUMED_FROM), ("retry_of", sc.LINK_RETRY_OF)):
        target = kwargs.pop(key, None)
        if target is not None:
            links.append(link_to(target, link_type))
    if links:
        kwargs["links"] = tuple(links)
    opts = _Options(kind=kind, name=name, attributes=attributes, **kwargs)
    scope: Scope[Any] = Scope(opts)
    if is_fn and not isinstance(name_or_fn, str):
        return scope(name_or_fn)
    return scope


def _exception_classes(retry_on: object) -> tuple[type[BaseException], ...]:
    classes = retry_on if isinstance(retry_on, tuple) else (retry_on,)
    if not classes:  # () would retry nothing: retries= would never apply
        raise TypeError("retry_on must name at least one exception class, got ()")
    for cls in classes:
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            raise TypeError(
                "retry_on must be an exception class or a tuple of exception classes, "
                f"got {retry_on!r}"
            )
    return classes


class WorkflowOptions(TypedDict, total=False):
    """The options of :func:`workflow` besides its name (for type checkers)."""

    workflow_id: str | None
    execution_id: str | None
    resumed_from: Handle | Span | SpanContext | str | None
    timeout: float | None
    attributes: Mapping[str, Any] | None


class StepOptions(TypedDict, total=False):
    """The options of :func:`step` besides its name (for type checkers)."""

    retries: int
    backoff: float
    backoff_max: float
    retry_on: type[BaseException] | tuple[type[BaseException], ...]
    timeout: float | None
    retry_of: Handle | Span | SpanContext | str | None
    attributes: Mapping[str, Any] | None


@overload
def workflow(fn: F, /, *, name: str | None = None, **options: Unpack[WorkflowOptions]) -> F: ...
@overload
def workflow(
    name: str | None = None, /, **options: Unpack[WorkflowOptions]
) -> Scope[WorkflowRun]: ...
@overload
def workflow(*, name: str | None, **options: Unpack[WorkflowOptions]) -> Scope[WorkflowRun]: ...
def workflow(name_or_fn: Any = None, /, **kwargs: Any) -> Any:
    """A workflow run: the root of a run's tree, with a new ``workflow_id`` (UUIDv7) unless
    one is given, inherited by every span inside it.

    Use as ``@workflow``, ``@workflow("name")`` (or ``name=``), ``workflow(fn, **options)``,
    ``with workflow("name") as run:`` or ``async with``. Records ``workflow.started`` and
    ``workflow.completed | failed | cancelled``; ``run.queued()``, ``run.paused()`` and
    ``run.resumed()`` record the rest. ``timeout=`` (async only) works as on
    :func:`step`; ``attributes=`` are set on the span at its start.
    ``execution_id`` groups several runs (traces) into one logical execution;
    ``resumed_from`` (a handle or its ``ref``) links this run to the one it resumes
    (``resumed_from``, a ``RESUMED_FROM`` edge), e.g. after a crash or a long pause.
    """
    _only(
        kwargs,
        {"name", "workflow_id", "execution_id", "resumed_from", "timeout", "attributes"},
        "workflow",
    )
    return _make(sc.KIND_WORKFLOW, name_or_fn, kwargs)


@overload
def step(fn: F, /, *, name: str | None = None, **options: Unpack[StepOptions]) -> F: ...
@overload
def step(name: str | None = None, /, **options: Unpack[StepOptions]) -> Scope[Handle]: ...
@overload
def step(*, name: str | None, **options: Unpack[StepOptions]) -> Scope[Handle]: ...
def step(name_or_fn: Any = None, /, **kwargs: Any) -> Any:
    """One step of a workflow. Use as ``@step``, ``@step("name", retries=3)`` (or
    ``name=``), ``step(fn, **options)``, ``with step("name") as s:`` or ``async with``;
    ``attributes=`` are set on the span at its start.

    ``retries=N`` (decorator only) re-runs a failing call up to N more times, each
    attempt its own span linked to the previous one (``retry_of``), waiting
    ``backoff * 2**(attempt-1)`` seconds (at most ``backoff_max``) in between, and records
    ``retry.scheduled`` / ``retry.exhausted``; ``retries`` is at most :data:`MAX_RETRIES`,
    ``backoff`` and ``backoff_max`` at most :data:`MAX_BACKOFF_S`, and ``retry_on`` an
    exception class or a tuple of them. ``timeout=`` (async only) cancels the step
    after that many seconds, records ``timeout.exceeded`` and raises ``TimeoutError``.
    ``retry_of`` (a handle or its ``ref``) links a step re-run in another trace or process
    to the attempt it retries.
    """
    _only(
        kwargs,
        {
            "name",
            "retries",
            "backoff",
            "backoff_max",
            "retry_on",
            "timeout",
            "retry_of",
            "attributes",
        },
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
    _check_event_name(name)
    span = trace.get_current_span()
    if not span.is_recording():
        return False
    _add_event(span, name, attributes)
    return True


def _seconds(value: object) -> bool:
    """``value`` is a finite number (not a bool): NaN or an infinity would fail later, in
    the middle of the user's code (``time.sleep``, a timer), instead of here."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _sleep_event(reason: str | None, seconds: float) -> Span | None:
    if not (_seconds(seconds) and 0 <= seconds <= threading.TIMEOUT_MAX):
        raise ValueError(
            f"seconds must be a finite number from 0 to {threading.TIMEOUT_MAX:.0f}, got {seconds!r}"
        )
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
    await _aio.sleep(seconds)
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
