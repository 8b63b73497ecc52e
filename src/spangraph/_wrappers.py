"""Decorator wrappers for sync, async, generator and async-generator functions.

Each attaches its span's context around every call, ``next()`` and ``anext()`` of the
wrapped code and detaches it after (for a generator, the context it had at its last
``yield``), and runs retries and timeouts for whole calls.
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
import time
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from types import CoroutineType
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry.trace import Link

from . import _aio
from . import semconv as sc
from ._aio import cancelled_error, is_cancellation
from ._spans import (
    _add_event,
    _default_name,
    _Frame,
    _Options,
    _retry_delay,
    _timed_out,
    as_ended,
    failure_attrs,
)

_log = logging.getLogger("spangraph")


def _no_retry_timeout(opts: _Options, what: str, *, allow_timeout: bool) -> None:
    a = "an" if what[:1] in "aeiou" else "a"
    if opts.retries:
        raise TypeError(
            f"retries= cannot be used on {a} {what} function ({opts.name}): it cannot be "
            "re-run safely"
        )
    if opts.timeout is not None and not allow_timeout:
        raise TypeError(f"timeout= cannot be used on {a} {what} function ({opts.name})")


def _retry_link(previous: _Frame | None) -> tuple[Link, ...]:
    if previous is None:
        return ()
    return (Link(previous.handle.span.get_span_context(), {sc.LINK_TYPE: sc.LINK_RETRY_OF}),)


def _on_failure(opts: _Options, frame: _Frame, attempt: int, exc: BaseException) -> float | None:
    """Record retry events for a failed attempt; the delay before the next one, or None."""
    span = frame.handle.span
    # an exit (sys.exit(), any status) ends the program's work: never run again
    # nor a closed coroutine (GeneratorExit): it cannot await a wait nor a new attempt
    retryable = (
        isinstance(exc, opts.retry_on)
        and not is_cancellation(exc)
        and not isinstance(exc, (GeneratorExit, SystemExit))
    )
    if not opts.retries or not retryable:
        return None
    delay = _retry_delay(opts, attempt) if attempt <= opts.retries else None
    try:
        if delay is not None:
            _add_event(
                span,
                sc.RETRY_SCHEDULED,
                {
                    sc.EVENT_ATTEMPT: attempt,
                    sc.EVENT_DELAY_MS: delay * 1000,
                    **failure_attrs(frame, exc),
                },
            )
        else:
            _add_event(
                span, sc.RETRY_EXHAUSTED, {sc.EVENT_ATTEMPT: attempt, **failure_attrs(frame, exc)}
            )
    except Exception:  # recording must not stop the retry nor replace the exception
        _log.warning("spangraph: recording a retry of %r failed", frame.handle.name, exc_info=True)
    return delay


def _timeout_exceeded(frame: _Frame, timeout: float) -> None:
    """Record ``timeout.exceeded`` on ``frame``'s span."""
    try:
        _add_event(frame.handle.span, sc.TIMEOUT_EXCEEDED, {sc.EVENT_TIMEOUT_MS: timeout * 1000})
    except Exception:  # recording must not replace the exception
        _log.warning(
            "spangraph: recording the timeout of %r failed", frame.handle.name, exc_info=True
        )


def _current_asyncio_task() -> Any:
    asyncio = sys.modules.get("asyncio")  # (none imported: no asyncio task runs this)
    if asyncio is None:
        return None
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no running loop (trio)
        return None
    return task if task is not None and hasattr(task, "cancelling") else None


def _attempt_number(opts: _Options, attempt: int) -> int | None:
    return attempt if opts.kind == sc.KIND_STEP else None


def _backoff_interrupted(
    opts: _Options, name: str, attempt: int, previous: _Frame, exc: BaseException
) -> None:
    """Record the scheduled ``attempt`` that ``exc`` (a cancellation, Ctrl-C) stopped
    during the wait before it: its span, linked ``retry_of`` to the attempt before, ends
    at once with the outcome (``cancelled``), so the run does not end on a retry that was
    announced and never told of."""
    try:
        frame = _Frame(
            opts, name, _attempt_number(opts, attempt), opts.links + _retry_link(previous)
        )
        frame.attach()
        try:
            # a coroutine closed during the wait (GeneratorExit) never ran the attempt
            # either: cancelled too, not completed
            frame.finish(as_ended(exc))
        finally:
            frame.detach()
    except Exception:  # recording must not replace the exception
        _log.warning("spangraph: recording the stopped retry of %r failed", name, exc_info=True)


def _wrap_sync(opts: _Options, fn: Callable[..., Any]) -> Callable[..., Any]:
    name = opts.name or _default_name(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True  # IPython and pytest leave this frame out of tracebacks
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
                try:
                    delay = _on_failure(opts, frame, attempt, exc)
                    frame.finish(exc)
                finally:
                    frame.detach()
                if delay is None:
                    raise
            else:
                delay = None
            if delay is not None:
                # waited for out of the except block: what stops the wait is not chained
                # to the failed attempt's exception, which is not kept alive meanwhile
                try:
                    time.sleep(delay)
                except BaseException as stopped:
                    _backoff_interrupted(opts, name, attempt + 1, frame, stopped)
                    raise
                previous, attempt = frame, attempt + 1
                continue
            if inspect.iscoroutine(result):  # async work: the span covers it, not the call
                frame.detach()
                return _covered(frame, result)
            if inspect.isgenerator(result) or inspect.isasyncgen(result):
                frame.detach()  # (made by a plain function: a decorator's, say)
                return _covered_iteration(frame, result)
            try:
                frame.finish(None)
            finally:
                frame.detach()
            return result

    return wrapper


def _covered(frame: _Frame, coro: CoroutineType[Any, Any, Any]) -> Coroutine[Any, Any, Any]:
    """A coroutine that awaits ``coro`` with ``frame``'s span current and ends the span
    with its outcome; a coroutine dropped without being awaited ends it ``cancelled``."""

    async def run() -> Any:
        # running: this coroutine ends the span, and the finalizer no longer pins coro
        # (which pinned what it awaited, its task, and this coroutine: never collected);
        # one still pending when the interpreter exits ends cancelled
        dropped.detach()
        weakref.finalize(outer, _end_pending, frame)
        frame.attach()
        try:
            result = await coro
        except BaseException as exc:
            try:
                frame.finish(as_ended(exc))
            finally:
                frame.detach()
            raise
        try:
            frame.finish(None)
        finally:
            frame.detach()
        return result

    outer = run()
    # named as the program's coroutine: Python's "never awaited" warning names this one
    # (outer is a native coroutine too, which has both: mypy types run() as a Coroutine)
    outer.__name__, outer.__qualname__ = coro.__name__, coro.__qualname__  # type: ignore[attr-defined]
    dropped = weakref.finalize(outer, _drop, frame, coro)
    return outer


def _covered_iteration(frame: _Frame, gen: Any) -> Any:
    """A generator (or async generator) iterating ``gen`` in ``frame``'s span, as a
    decorated generator function's; one dropped before its first ``next()`` ends the
    span ``completed``, as a generator its consumer closes early."""
    started = False

    def make() -> Any:
        nonlocal started
        started = True
        return gen

    def dropped() -> None:
        if not started:  # (once started, closing the generator ends the span)
            frame.finish(None)

    if inspect.isasyncgen(gen):
        outer: Any = traced_async_generator(lambda: frame, make)
    else:
        outer = traced_generator(lambda: frame, make)
    weakref.finalize(outer, dropped)
    return outer


def _end_pending(frame: _Frame) -> None:
    # (a span the coroutine ended already is not recording: nothing happens)
    frame.finish(cancelled_error("the coroutine was still pending at exit"))


def _drop(frame: _Frame, coro: CoroutineType[Any, Any, Any]) -> None:
    # cancelled: a GeneratorExit would end it completed, as a generator closed early
    frame.finish(cancelled_error("the coroutine was dropped without being awaited"))
    coro.close()  # no "never awaited" warning for what the span already reports


def _wrap_async(opts: _Options, fn: Callable[..., Any]) -> Callable[..., Any]:
    name = opts.name or _default_name(fn)

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        previous: _Frame | None = None
        attempt = 1
        while True:
            frame = _Frame(
                opts, name, _attempt_number(opts, attempt), opts.links + _retry_link(previous)
            )
            frame.attach()
            task = _current_asyncio_task()
            cancelling = task.cancelling() if task is not None else 0
            try:
                if opts.timeout is not None:
                    frame.timeout_cm = _aio.timeout(opts.timeout)
                    async with frame.timeout_cm:
                        result = await fn(*args, **kwargs)
                else:
                    result = await fn(*args, **kwargs)
            except BaseException as exc:
                try:
                    timed_out = _timed_out(frame, opts.timeout)
                    if timed_out is not None:  # the cause, before the retry it leads to
                        _timeout_exceeded(frame, timed_out)
                    # a cancellation the code turned into another error is still pending:
                    # the task is being cancelled, so no new attempt
                    if task is not None and task.cancelling() > cancelling:
                        delay = None
                    else:
                        delay = _on_failure(opts, frame, attempt, exc)
                    frame.finish(as_ended(exc))  # (a GeneratorExit here: closed, cancelled)
                finally:
                    frame.detach()
                if delay is None:
                    raise
            else:
                delay = None
            if delay is not None:  # out of the except block, as in _wrap_sync
                try:
                    await _aio.sleep(delay)
                except BaseException as stopped:
                    _backoff_interrupted(opts, name, attempt + 1, frame, stopped)
                    raise
                previous, attempt = frame, attempt + 1
                continue
            try:
                # fired, but the code caught the cancellation and returned: completed,
                # with timeout.exceeded all the same
                frame.finish(None, timed_out=_timed_out(frame, opts.timeout))
            finally:
                frame.detach()
            return result

    return wrapper


def _wrap_gen(opts: _Options, fn: Callable[..., Any]) -> Callable[..., Any]:
    name = opts.name or _default_name(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        return (
            yield from traced_generator(
                lambda: _Frame(opts, name, _attempt_number(opts, 1), opts.links),
                lambda: fn(*args, **kwargs),
            )
        )

    return wrapper


def _wrap_async_gen(opts: _Options, fn: Callable[..., Any]) -> Callable[..., Any]:
    name = opts.name or _default_name(fn)
    # an async generator function itself (inspect.isasyncgenfunction, and so for
    # frameworks and for another decorator above this one), and the only one around the
    # program's generator: a second layer would be closed by the loop's
    # shutdown_asyncgens() at the same time as the first
    return functools.wraps(fn)(
        _traced_async_generator_function(
            lambda: _Frame(opts, name, _attempt_number(opts, 1), opts.links), fn
        )
    )


def traced_generator(
    open_frame: Callable[[], _Frame | None], make: Callable[[], Iterator[Any]]
) -> Iterator[Any]:
    """Iterate ``make()`` in the frame's span: the frame is opened at the first
    ``next()``, in the consumer's context. Around every ``next()``, ``send()``,
    ``throw()`` and ``close()`` the generator's own context is attached: the span's at
    first, then as the generator left it at its last ``yield`` (a block it holds open
    across a yield stays current when it resumes); the consumer's is back after each."""
    __tracebackhide__ = True
    frame = open_frame()
    gen = _made(frame, make)
    if frame is None:
        return (yield from gen)
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
            frame.ctx = otel_context.get_current()  # the generator's, for its next resumption
            frame.detach()
        try:
            to_send = yield value
        except GeneratorExit:  # the consumer stopped early: the run ends there
            frame.attach()
            try:
                gen.close()
            except BaseException as exc:
                frame.finish(exc)
                raise
            finally:
                frame.detach()
            frame.finish(None)
            raise
        except BaseException as exc:
            to_throw = exc


def traced_async_generator(
    open_frame: Callable[[], _Frame | None], make: Callable[[], AsyncIterator[Any]]
) -> AsyncIterator[Any]:
    """Async counterpart of :func:`traced_generator` (the generator's context attached
    around every ``anext()``, ``asend()``, ``athrow()`` and ``aclose()``)."""
    return _traced_async_generator_function(open_frame, make)()


def _traced_async_generator_function(
    open_frame: Callable[[], _Frame | None], fn: Callable[..., AsyncIterator[Any]]
) -> Callable[..., AsyncIterator[Any]]:
    """An async generator function iterating ``fn(*args, **kwargs)`` as
    :func:`traced_generator` does, handing on every ``asend``, ``athrow`` and ``aclose``
    as ``yield from`` would."""

    async def traced(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        __tracebackhide__ = True
        frame = open_frame()
        agen: Any = _made(frame, lambda: fn(*args, **kwargs))
        to_send: Any = None
        to_throw: BaseException | None = None
        started = False
        while True:
            if frame is not None:
                frame.attach()
            try:
                if to_throw is not None:
                    exc, to_throw = to_throw, None
                    value = await agen.athrow(exc)
                elif started:
                    value = await agen.asend(to_send)
                else:
                    started = True
                    value = await _first_asend(agen)
            except StopAsyncIteration:
                if frame is not None:
                    frame.finish(None)
                return
            except BaseException as exc:
                if frame is not None:
                    frame.finish(exc)
                raise
            finally:
                if frame is not None:
                    frame.ctx = otel_context.get_current()
                    frame.detach()
            try:
                to_send = yield value
            except GeneratorExit:
                if frame is not None:
                    frame.attach()
                try:
                    # one that something else runs (closes) now cannot be closed here
                    if not (
                        getattr(agen, "ag_running", False)
                        or getattr(agen, "ag_await", None) is not None
                    ):
                        await agen.aclose()
                except BaseException as exc:
                    if frame is not None:
                        frame.finish(exc)
                    raise
                finally:
                    if frame is not None:
                        frame.detach()
                if frame is not None:
                    frame.finish(None)
                raise
            except BaseException as exc:
                to_throw = exc

    return traced


def _first_asend(agen: Any) -> Any:
    """``agen.asend(None)``, the first, made with the event loop's ``firstiter`` hook
    off: the traced generator around ``agen``, registered with the loop itself, closes
    it. Registered too, ``agen`` would be closed by the loop's ``shutdown_asyncgens()``
    concurrently with the traced generator closing it ("aclose(): asynchronous
    generator is already running"). The finalizer hook stays."""
    firstiter, finalizer = sys.get_asyncgen_hooks()
    if firstiter is None:
        return agen.asend(None)
    sys.set_asyncgen_hooks(firstiter=None, finalizer=finalizer)
    try:
        return agen.asend(None)
    finally:
        sys.set_asyncgen_hooks(firstiter=firstiter, finalizer=finalizer)


def _made(frame: _Frame | None, make: Callable[[], Any]) -> Any:
    """``make()``; when it raises (a generator function called with wrong arguments),
    ``frame`` ends with that error instead of staying open."""
    try:
        return make()
    except BaseException as exc:
        if frame is not None:
            frame.finish(exc)
        raise


def call_in_frame(frame: _Frame | None, call: Callable[[], Any]) -> Any:
    """``call()`` with ``frame``'s span current, ending the span with the outcome (a plain
    call when ``frame`` is None)."""
    if frame is None:
        return call()
    frame.attach()
    try:
        result = call()
    except BaseException as exc:
        frame.finish(exc)
        raise
    finally:
        frame.detach()
    frame.finish(None)
    return result


async def await_in_frame(open_frame: Callable[[], _Frame | None], call: Callable[[], Any]) -> Any:
    """Async :func:`call_in_frame`: ``await call()`` with the span of ``open_frame()``
    current; the frame is opened when the coroutine runs, not when it is created."""
    frame = open_frame()
    if frame is None:
        return await call()
    frame.attach()
    try:
        result = await call()
    except BaseException as exc:
        frame.finish(as_ended(exc))  # (a GeneratorExit: closed while waiting)
        raise
    finally:
        frame.detach()
    frame.finish(None)
    return result
