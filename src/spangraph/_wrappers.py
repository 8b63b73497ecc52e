"""Decorator wrappers for sync, async, generator and async-generator functions.

Each attaches its span's context around every call, ``next()`` and ``anext()`` of the
wrapped code and detaches it after, and runs retries and timeouts for whole calls.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any

from opentelemetry.trace import Link

from . import semconv as sc
from ._spans import (
    _CANCELLED,
    _add_event,
    _default_name,
    _error_attrs,
    _Frame,
    _Options,
    _retry_delay,
    _timed_out,
)

_log = logging.getLogger("spangraph")


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
    # an exit (sys.exit(), any status) ends the program's work: never run again
    retryable = isinstance(exc, opts.retry_on) and not isinstance(exc, (*_CANCELLED, SystemExit))
    if not opts.retries or not retryable:
        return None
    delay = _retry_delay(opts, attempt) if attempt <= opts.retries else None
    try:
        if delay is not None:
            _add_event(
                span,
                sc.RETRY_SCHEDULED,
                {sc.EVENT_ATTEMPT: attempt, sc.EVENT_DELAY_MS: delay * 1000, **_error_attrs(exc)},
            )
        else:
            _add_event(span, sc.RETRY_EXHAUSTED, {sc.EVENT_ATTEMPT: attempt, **_error_attrs(exc)})
    except Exception:  # recording must not stop the retry nor replace the exception
        _log.warning("spangraph: recording a retry of %r failed", frame.handle.name, exc_info=True)
    return delay


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
            frame.finish(exc)
        finally:
            frame.detach()
    except Exception:  # recording must not replace the exception
        _log.warning("spangraph: recording the stopped retry of %r failed", name, exc_info=True)


def _wrap_sync(opts: _Options, fn: Callable[..., Any]) -> Callable[..., Any]:
    name = opts.name or _default_name(fn)

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
                try:
                    delay = _on_failure(opts, frame, attempt, exc)
                    frame.finish(exc)
                finally:
                    frame.detach()
                if delay is None:
                    raise
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
            try:
                frame.finish(None)
            finally:
                frame.detach()
            return result

    return wrapper


def _covered(frame: _Frame, coro: Coroutine[Any, Any, Any]) -> Coroutine[Any, Any, Any]:
    """A coroutine that awaits ``coro`` with ``frame``'s span current and ends the span
    with its outcome; a coroutine dropped without being awaited ends it ``cancelled``."""

    async def run() -> Any:
        frame.attach()
        try:
            result = await coro
        except BaseException as exc:
            try:
                frame.finish(exc)
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
    outer.__name__, outer.__qualname__ = coro.__name__, coro.__qualname__
    weakref.finalize(outer, _drop, frame, coro)
    return outer


def _drop(frame: _Frame, coro: Coroutine[Any, Any, Any]) -> None:
    frame.finish(GeneratorExit())
    coro.close()  # no "never awaited" warning for what the span already reports


def _wrap_async(opts: _Options, fn: Callable[..., Any]) -> Callable[..., Any]:
    name = opts.name or _default_name(fn)

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
                try:
                    timed_out = _timed_out(frame, exc, opts.timeout)
                    delay = _on_failure(opts, frame, attempt, exc)
                    frame.finish(exc, timed_out=timed_out)
                finally:
                    frame.detach()
                if delay is None:
                    raise
                try:
                    await asyncio.sleep(delay)
                except BaseException as stopped:
                    _backoff_interrupted(opts, name, attempt + 1, frame, stopped)
                    raise
                previous, attempt = frame, attempt + 1
                continue
            try:
                frame.finish(None)
            finally:
                frame.detach()
            return result

    return wrapper


def _wrap_gen(opts: _Options, fn: Callable[..., Any]) -> Callable[..., Any]:
    name = opts.name or _default_name(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return (
            yield from traced_generator(
                lambda: _Frame(opts, name, _attempt_number(opts, 1), opts.links),
                lambda: fn(*args, **kwargs),
            )
        )

    return wrapper


def _wrap_async_gen(opts: _Options, fn: Callable[..., Any]) -> Callable[..., Any]:
    name = opts.name or _default_name(fn)

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        # an async generator function itself (inspect.isasyncgenfunction, and so for
        # frameworks and for another decorator above this one): it hands every asend,
        # athrow and aclose on to the traced generator, as `yield from` would
        agen = traced_async_generator(
            lambda: _Frame(opts, name, _attempt_number(opts, 1), opts.links),
            lambda: fn(*args, **kwargs),
        )
        to_send: Any = None
        to_throw: BaseException | None = None
        while True:
            try:
                exc, to_throw = to_throw, None
                value = await _advance(agen, to_send, exc)
            except StopAsyncIteration:
                return
            try:
                to_send = yield value
            except GeneratorExit:
                await agen.aclose()
                raise
            except BaseException as exc:
                to_throw = exc

    return wrapper


def traced_generator(
    open_frame: Callable[[], _Frame | None], make: Callable[[], Iterator[Any]]
) -> Iterator[Any]:
    """Iterate ``make()`` with the frame's span attached around every ``next()``; the
    frame is opened at the first ``next()``, in the consumer's context."""
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
                value = gen.throw(exc)  # type: ignore[attr-defined]
            else:
                value = gen.send(to_send)  # type: ignore[attr-defined]
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
        except GeneratorExit:  # the consumer stopped early: the run ends there
            frame.attach()
            try:
                gen.close()  # type: ignore[attr-defined]
            except BaseException as exc:
                frame.finish(exc)
                raise
            finally:
                frame.detach()
            frame.finish(None)
            raise
        except BaseException as exc:
            to_throw = exc


async def _advance(agen: Any, to_send: Any, to_throw: BaseException | None) -> Any:
    """``agen``'s next value: ``to_throw`` thrown into it when given, else ``to_send``
    sent."""
    if to_throw is not None:
        return await agen.athrow(to_throw)
    return await agen.asend(to_send)


async def traced_async_generator(
    open_frame: Callable[[], _Frame | None], make: Callable[[], AsyncIterator[Any]]
) -> AsyncIterator[Any]:
    """Async counterpart of :func:`traced_generator` (attached around every ``anext()``)."""
    frame = open_frame()
    agen: Any = _made(frame, make)
    to_send: Any = None
    to_throw: BaseException | None = None
    while True:
        if frame is not None:
            frame.attach()
        try:
            exc, to_throw = to_throw, None
            value = await _advance(agen, to_send, exc)
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
                frame.detach()
        try:
            to_send = yield value
        except GeneratorExit:
            if frame is not None:
                frame.attach()
            try:
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
        frame.finish(exc)
        raise
    finally:
        frame.detach()
    frame.finish(None)
    return result
