"""Stream wrappers: an OpenAI ``Stream`` / ``AsyncStream`` that records each chunk and
ends its call's span when the stream is exhausted, fails, is closed, or is dropped; and
raw responses (``with_raw_response``, ``with_streaming_response``), whose span ends when
they are parsed (the answer recorded, or its stream wrapped), closed, or dropped.

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
from collections.abc import Callable
from typing import Any

import wrapt

from .._aio import is_cancellation
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
        call.stream_opened = True
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
        self._self_close(None)

    def _self_close(self, exc: BaseException | None) -> None:
        """Close the stream; a block left by a cancellation (``KeyboardInterrupt``) ends
        the span ``cancelled``, anything else as a stream closed early."""
        try:
            self.__wrapped__.close()
        finally:
            self._self_call.finish(exc if is_cancellation(exc) else None)

    def __enter__(self) -> TracedStream:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._self_close(exc)


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
        await self._self_close(None)

    async def _self_close(self, exc: BaseException | None) -> None:
        """Close the stream; a block left by a cancellation ends the span ``cancelled``,
        anything else as a stream closed early."""
        try:
            await self.__wrapped__.close()
        finally:
            self._self_call.finish(exc if is_cancellation(exc) else None)

    async def aclose(self) -> None:
        await self.close()

    async def __aenter__(self) -> TracedAsyncStream:
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        await self._self_close(exc)


class TracedRawResponse(wrapt.ObjectProxy):
    """A raw response (``client.….with_raw_response.create(...)``, the SDK's
    ``LegacyAPIResponse``) whose ``parse()`` records the answer and ends the call's span;
    everything else passes through. ``on_parsed`` takes what ``parse()`` gave and returns
    what the caller gets: a stream wrapped to go on recording, or the answer itself.

    A raw response that is never parsed (only its headers read, say) ends its span when
    it is garbage collected, at the time the response arrived, as an abandoned stream
    does."""

    def __init__(self, wrapped: Any, call: Call, on_parsed: Callable[[Any], Any]) -> None:
        super().__init__(wrapped)
        self._self_call = call
        self._self_on_parsed = on_parsed
        self._self_last: tuple[Any, Any] | None = None  # (parsed, what the caller got)
        call.touch()  # the response is in
        _ensure_reaper()
        self._self_finalizer = weakref.finalize(self, _on_collect, call)
        self._self_finalizer.atexit = False

    def parse(self, *args: Any, **kwargs: Any) -> Any:
        try:
            parsed = self.__wrapped__.parse(*args, **kwargs)
        except BaseException as exc:
            self._self_call.finish(exc)
            raise
        return self._self_record(parsed)

    def _self_record(self, parsed: Any) -> Any:
        last = self._self_last
        if last is not None and last[0] is parsed:  # parsed again: the SDK's cached answer
            return last[1]
        result = parsed
        try:
            result = self._self_on_parsed(parsed)
        except Exception:  # never break the caller
            _log.exception("spangraph: recording a parsed OpenAI response failed")
            self._self_call.finish(None)
        if not self._self_call.ended:  # a stream: its wrapper ends the span from now on
            self._self_finalizer.detach()
        self._self_last = (parsed, result)
        return result


class TracedAPIResponse(TracedRawResponse):
    """A raw response of ``with_streaming_response`` (the SDK's ``APIResponse``): also
    ends the span when closed, as leaving its ``with`` block does."""

    def close(self) -> None:
        try:
            self.__wrapped__.close()
        finally:
            self._self_call.finish(None)


class TracedAsyncAPIResponse(TracedRawResponse):
    """An ``AsyncAPIResponse`` (``with_streaming_response`` of an ``AsyncOpenAI``): its
    ``parse()`` and ``close()`` are awaited."""

    async def parse(self, *args: Any, **kwargs: Any) -> Any:
        try:
            parsed = await self.__wrapped__.parse(*args, **kwargs)
        except BaseException as exc:
            self._self_call.finish(exc)
            raise
        return self._self_record(parsed)

    async def close(self) -> None:
        try:
            await self.__wrapped__.close()
        finally:
            self._self_call.finish(None)
