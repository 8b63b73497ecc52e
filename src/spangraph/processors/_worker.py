"""A bounded queue drained by one background thread: the engine of both processors.

``put`` is the only call made on user threads: an append to a deque, no lock, no I/O.
The worker turns items into a payload once (``prepare``) and sends it (``send``),
retrying with exponential backoff while ``send`` raises one of ``transient``; any other
error drops that batch, counted and logged. A full queue drops new items, counted and
logged. ``flush`` and ``shutdown`` wait for everything queued before them.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from opentelemetry import context as otel_context

_log = logging.getLogger("spangraph")

T = TypeVar("T")
P = TypeVar("P")

_SUPPRESS_KEY = otel_context._SUPPRESS_INSTRUMENTATION_KEY


class _FlushMarker:
    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


class BatchWorker(Generic[T, P]):
    """Bounded queue plus one daemon worker thread."""

    def __init__(
        self,
        name: str,
        prepare: Callable[[list[T]], tuple[P, int]],
        send: Callable[[P], None],
        *,
        transient: tuple[type[BaseException], ...],
        max_queue_size: int = 65_536,
        max_batch_size: int = 1024,
        schedule_delay: float = 0.2,
        eager: bool = False,
        retry_initial: float = 0.05,
        retry_max: float = 5.0,
        give_up_after: float | None = None,
        on_sent: Callable[[float, int], None] | None = None,
        linger: float | None = None,
    ) -> None:
        if max_queue_size < 1:
            raise ValueError("max_queue_size must be at least 1.")
        if not 1 <= max_batch_size <= max_queue_size:
            raise ValueError("max_batch_size must be between 1 and max_queue_size.")
        if schedule_delay <= 0:
            raise ValueError("schedule_delay must be greater than 0.")
        if linger is not None and linger < 0:
            raise ValueError("linger must be greater than or equal to 0.")
        # How long a partial batch may wait to fill: a short moment for eager (live) workers,
        # the schedule delay for the others. A full batch, a flush or shutdown end it at once.
        self._linger = (0.005 if eager else schedule_delay) if linger is None else linger
        self.name = name
        self._prepare = prepare
        self._send = send
        self._transient = transient
        self._max_queue = max_queue_size
        self._max_batch = max_batch_size
        self._delay = schedule_delay
        self._eager = eager
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._give_up_after = give_up_after
        # optional hook, called on the worker thread after each successful send with
        # (seconds the send took, items sent); may be set after construction
        self.on_sent = on_sent
        # counters (read by stats(); written by the worker, drops by any thread)
        self.sent = 0
        self.dropped = 0
        self.failed = 0
        self.retries = 0
        self._last_drop_log = 0.0
        self._outage_logged = False
        self._init_thread()
        ref = weakref.WeakMethod(self._at_fork_reinit)
        os.register_at_fork(after_in_child=lambda: (m := ref()) and m())

    def _init_thread(self) -> None:
        self._queue: collections.deque[Any] = collections.deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = False
        self._lingering = False
        self._flush_pending = 0
        self._closed = False
        self._drop_lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._run, name=f"spangraph-{self.name}", daemon=True
        )
        self._thread.start()

    def _at_fork_reinit(self) -> None:
        # In a forked child the worker thread is gone and the queue belongs to the parent.
        if self._closed:  # shut down in the parent: stays shut down (no thread) in the child
            self._queue = collections.deque()
            self._drop_lock = threading.Lock()
            return
        self._init_thread()

    # -- user threads ---------------------------------------------------------------------

    def put(self, item: T) -> bool:
        """Queue ``item``; ``False`` (and a counted drop) when full or closed. Never blocks."""
        q = self._queue
        if len(q) >= self._max_queue or self._closed:
            self._count_drop(1, "queue full" if not self._closed else "after shutdown")
            return False
        q.append(item)
        if self._idle:
            if self._eager or len(q) >= self._max_batch:
                self._idle = False
                self._wake.set()
        elif self._lingering and len(q) >= self._max_batch:
            self._lingering = False
            self._wake.set()
        return True

    def _count_drop(self, n: int, why: str) -> None:
        with self._drop_lock:
            self.dropped += n
            now = time.monotonic()
            if now - self._last_drop_log < 10.0:
                return
            self._last_drop_log = now
            total = self.dropped
        _log.warning(
            "spangraph %s: dropped %d item(s) (%s); %d dropped in all", self.name, n, why, total
        )

    def qsize(self) -> int:
        return len(self._queue)

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until everything queued before this call has been sent (or dropped)."""
        if self._closed or not self._thread.is_alive():
            return not self._queue
        marker = _FlushMarker()
        with self._drop_lock:
            self._flush_pending += 1
        self._queue.append(marker)
        self._wake.set()
        return marker.done.wait(timeout)

    def shutdown(self, timeout: float = 30.0) -> bool:
        """Flush within ``timeout``, then stop the worker. Idempotent."""
        if self._closed:
            return True
        deadline = time.monotonic() + timeout
        flushed = self.flush(timeout)
        self._closed = True
        self._stop.set()
        self._wake.set()
        self._thread.join(max(0.0, deadline - time.monotonic()) + 1.0)
        left = sum(1 for item in self._queue if not isinstance(item, _FlushMarker))
        if left:
            self._count_drop(left, "not sent before shutdown")
        return flushed

    # -- worker thread --------------------------------------------------------------------

    def _run(self) -> None:
        otel_context.attach(otel_context.set_value(_SUPPRESS_KEY, True))
        q = self._queue
        while True:
            came_from_idle = False
            if not q:
                if self._stop.is_set():
                    return
                self._idle = True
                if not q:  # re-check: a put() between the test above and idle=True
                    self._wake.wait(self._delay)
                self._idle = False
                self._wake.clear()
                if not q:
                    continue
                came_from_idle = True
            # Let a partial batch fill (a trickle of spans otherwise makes one round trip
            # per item); the idle wait above already did that for non-eager workers.
            linger = self._linger if (self._eager or not came_from_idle) else 0.0
            if linger and len(q) < self._max_batch and not self._flush_pending:
                self._lingering = True
                if len(q) < self._max_batch and not self._flush_pending and not self._stop.is_set():
                    self._wake.wait(linger)
                self._lingering = False
                self._wake.clear()
            items: list[T] = []
            markers: list[_FlushMarker] = []
            while q and len(items) < self._max_batch:
                item = q.popleft()
                if isinstance(item, _FlushMarker):
                    markers.append(item)
                    break
                items.append(item)
            if items:
                self._deliver(items)
            for marker in markers:
                with self._drop_lock:
                    self._flush_pending -= 1
                marker.done.set()

    def _deliver(self, items: list[T]) -> None:
        try:
            payload, count = self._prepare(items)
        except Exception:
            _log.exception("spangraph %s: could not map %d item(s); dropped", self.name, len(items))
            self._count_drop(len(items), "mapping error")
            return
        if count == 0:
            return
        delay = self._retry_initial
        started = time.monotonic()
        while True:
            sending = time.perf_counter()
            try:
                self._send(payload)
            except self._transient as exc:
                if self._stop.is_set() or (
                    self._give_up_after is not None
                    and time.monotonic() - started >= self._give_up_after
                ):
                    self.failed += 1
                    self._count_drop(count, f"unavailable: {exc}")
                    return
                if not self._outage_logged:
                    self._outage_logged = True
                    _log.warning(
                        "spangraph %s: unavailable (%s); retrying with backoff", self.name, exc
                    )
                self.retries += 1
                self._stop.wait(delay)
                delay = min(delay * 2, self._retry_max)
                continue
            except Exception:
                self.failed += 1
                _log.exception(
                    "spangraph %s: a batch of %d was rejected; dropped", self.name, count
                )
                self._count_drop(count, "rejected")
                return
            if self._outage_logged:
                self._outage_logged = False
                _log.warning("spangraph %s: available again", self.name)
            self.sent += count
            on_sent = self.on_sent
            if on_sent is not None:
                try:
                    on_sent(time.perf_counter() - sending, count)
                except Exception:
                    _log.debug("spangraph %s: the on_sent hook failed", self.name, exc_info=True)
            return

    def stats(self) -> dict[str, int]:
        """Counters: queued, sent, dropped, failed batches, retries."""
        return {
            "queued": len(self._queue),
            "sent": self.sent,
            "dropped": self.dropped,
            "failed": self.failed,
            "retries": self.retries,
        }
