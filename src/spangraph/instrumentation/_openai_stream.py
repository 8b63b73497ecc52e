"""Stream wrappers: an OpenAI ``Stream`` / ``AsyncStream`` that records each chunk and
ends its call's span when the stream is exhausted, fails, is closed, or is dropped.

A stream that is broken out of and never closed is the leak other tracers have: its span
never ends. Here each wrapper carries a ``weakref.finalize``; when the wrapper is garbage
collected the finalizer hands the call to a reaper thread, which ends the span at the
time of the last chunk. The finalizer itself only puts into a ``queue.SimpleQueue``
(re-entrant, safe in a finalizer): ending a span takes locks in span processors, which a
finalizer that runs in the middle of any code must not take.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import weakref
from typing import Any

import wrapt

from ._openai_call import Call

_log = logging.getLogger("spangraph")

_abandoned: queue.SimpleQueue[Call] = queue.SimpleQueue()
_reaper: threading.Thread | None = None
_reaper_lock = threading.Lock()


def _reap() -> None:
    while True:
        call = _abandoned.get()
        try:
            call.finish(None, abandoned=True)
        except Exception:  # pragma: no cover - finish() logs its own errors
            _log.exception("spangraph: ending an abandoned OpenAI stream's span failed")


def _ensure_reaper() -> None:
    global _reaper
    if _reaper is not None:
        return
    with _reaper_lock:
        if _reaper is None:
            thread = threading.Thread(target=_reap, name="spangraph-openai-reaper", daemon=True)
            thread.start()
            _reaper = thread


def _forget_reaper() -> None:  # in a forked child the thread is gone
    global _reaper
    _reaper = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_reaper)


def _on_collect(call: Call) -> None:
    """Finalizer of a stream wrapper: hand its call over, nothing else (see above)."""
    if not call.ended:
        _abandoned.put(call)


def wait_reaped(timeout: float = 5.0) -> bool:
    """Wait until the reaper has ended every abandoned stream's span handed to it so far
    (for tests and shutdown); ``False`` on timeout."""
    done = threading.Event()
    marker = _Marker(done)
    _ensure_reaper()
    _abandoned.put(marker)  # type: ignore[arg-type]
    return done.wait(timeout)


class _Marker:
    __slots__ = ("done",)

    def __init__(self, done: threading.Event) -> None:
        self.done = done

    def finish(self, *args: Any, **kwargs: Any) -> None:
        self.done.set()


class _TracedResponse(wrapt.ObjectProxy):
    """A stream's HTTP response (``stream.response``) whose closing ends the call's span.

    The SDK's ``.stream()`` helpers (``chat.completions.stream``, ``responses.stream``)
    read the raw stream's ``response`` and, when closed or left, close that and never
    the stream: without this their span would end only when the garbage collector
    finds the stream (it sits in a reference cycle of the helper's)."""

    def __init__(self, wrapped: Any, call: Call) -> None:
        super().__init__(wrapped)
        self._self_call = call

    def close(self) -> None:
        try:
            self.__wrapped__.close()
        finally:
            self._self_call.finish(None)

    async def aclose(self) -> None:
        try:
            await self.__wrapped__.aclose()
        finally:
            self._self_call.finish(None)


class _TracedChunks(wrapt.ObjectProxy):
    """What both streams share: the call they record, finished when collected."""

    def __init__(self, wrapped: Any, call: Call) -> None:
        super().__init__(wrapped)
        self._self_call = call
        call.touch()  # the answer's headers are in
        _ensure_reaper()
        self._self_finalizer = weakref.finalize(self, _on_collect, call)
        self._self_finalizer.atexit = False

    @property
    def response(self) -> Any:
        return _TracedResponse(self.__wrapped__.response, self._self_call)


class TracedStream(_TracedChunks):
    """An OpenAI ``Stream`` that records its chunks; everything else passes through
    (``isinstance(stream, openai.Stream)`` still holds)."""

    def __iter__(self) -> TracedStream:
        return self

    def __next__(self) -> Any:
        call = self._self_call
        try:
            chunk = self.__wrapped__.__next__()
        except StopIteration:
            call.finish(None, exhausted=True)
            raise
        except BaseException as exc:
            call.finish(exc)
            raise
        try:
            call.on_chunk(chunk)
        except Exception:
            _log.exception("spangraph: recording an OpenAI stream chunk failed")
        return chunk

    def close(self) -> None:
        try:
            self.__wrapped__.close()
        finally:
            self._self_call.finish(None)

    def __enter__(self) -> TracedStream:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close()


class TracedAsyncStream(_TracedChunks):
    """An OpenAI ``AsyncStream`` that records its chunks (see :class:`TracedStream`)."""

    def __aiter__(self) -> TracedAsyncStream:
        return self

    async def __anext__(self) -> Any:
        call = self._self_call
        try:
            chunk = await self.__wrapped__.__anext__()
        except StopAsyncIteration:
            call.finish(None, exhausted=True)
            raise
        except BaseException as exc:
            call.finish(exc)
            raise
        try:
            call.on_chunk(chunk)
        except Exception:
            _log.exception("spangraph: recording an OpenAI stream event failed")
        return chunk

    async def close(self) -> None:
        try:
            await self.__wrapped__.close()
        finally:
            self._self_call.finish(None)

    async def aclose(self) -> None:
        await self.close()

    async def __aenter__(self) -> TracedAsyncStream:
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        await self.close()
