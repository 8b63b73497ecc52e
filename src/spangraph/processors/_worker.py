"""A bounded queue drained by one background thread: the engine of both processors.

``put`` is the only call made on user threads: an append to a deque, no lock, no I/O.
The worker turns items into a payload once (``prepare``) and sends it (``send``),
retrying with exponential backoff while ``send`` raises one of ``transient``; any other
error drops that batch, counted and logged. A full queue drops new items, counted and
logged. ``flush`` and ``shutdown`` wait for everything queued before them; ``flush``
tells whether all of it was sent (``False`` when any of it was dropped).

With ``pipelined=True`` a second thread sends while the first prepares the next batch:
the store works on one batch while the client maps the next (the round trip waits with
the GIL released), in the same order, one batch in flight and one ready behind it. With
``submit`` as well, two batches are in flight on the wire (see ``_send_loop``).
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Final, Generic, TypeVar

from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from .. import semconv as sc
from ._records import RESERVE, RecordQueue, copy_record
from ._records import ends_a_run as record_ends_a_run

_log = logging.getLogger("spangraph")

T = TypeVar("T")
P = TypeVar("P")

_SUPPRESS_KEY = otel_context._SUPPRESS_INSTRUMENTATION_KEY


class _FlushMarker:
    """A flush in the queue. Released (``done``) in queue order, once everything before
    it was sent or dropped; ``ok`` then tells whether all of it was sent."""

    __slots__ = ("done", "given_up", "ok", "prev", "put_lost")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.ok = False  # set before done
        # its waiter timed out: a loss found when it is released is told by the next
        self.given_up = False
        # items refused by put() (queue full) since the marker before it was queued
        self.put_lost = False
        # the marker before it, when that was not released yet: this one covers
        # everything that one does (its items were queued before this one too)
        self.prev: _FlushMarker | None = None


_ABSORB_EVERY: Final = 0.002
"""Seconds a pipelined worker with a staged batch lets new items wait before mapping
them into it."""

_JOIN_GRACE: Final = 0.1
"""Seconds shutdown waits for a worker thread past its deadline."""

_RETRY_WHILE_FLUSHING: Final = 0.25
"""Seconds at most between two attempts at an unavailable destination while a flush (or
shutdown's) waits for what the worker holds."""

_SPLIT_AFTER: Final = 2
"""``split_on`` errors of one payload (the destination answering otherwise) before it is
sent in parts."""

_RESERVE: Final = RESERVE
"""Items past ``max_queue_size`` that a queue takes when ``keep_when_full`` says so (as
many as a full record buffer takes ends of runs)."""

_GIVE_UP_AFTER: Final = 4
"""``split_on`` errors of a payload that cannot be split before it is dropped."""

_Job = tuple[Any, int, list[_FlushMarker], int]
"""A batch for the sender of a pipelined worker: payload, count, flush markers, and how
many items the preparer dropped since the batch it handed over before (they were queued
before these markers)."""

_InFlight = tuple[Any, int, list[_FlushMarker], Callable[[], None] | None, float, int]
"""A batch in the sender: payload, count, flush markers, what waits for its reply (when
it was submitted), when it was submitted, the preparer's drops before it (see _Job)."""


_WORKERS: Final[weakref.WeakSet[Any]] = weakref.WeakSet()
"""Every live :class:`BatchWorker`: a forked child re-initialises each (a hook registered
by each worker could never be unregistered: every configure() left two behind, run at
every later fork)."""


def _reinit_workers_after_fork() -> None:
    for worker in list(_WORKERS):
        try:  # one worker that cannot start again does not keep the others from it
            worker._at_fork_reinit()
        except Exception:
            _log.exception("spangraph: a worker could not start again in a forked process")


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reinit_workers_after_fork)


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
        pipelined: bool = False,
        submit: Callable[[P], Callable[[], None]] | None = None,
        extend: Callable[[P, list[T]], int] | None = None,
        finalize: Callable[[P], Any] | None = None,
        max_staged: int | None = None,
        split: Callable[[P, int], list[tuple[P, int]] | None] | None = None,
        split_on: tuple[type[BaseException], ...] = (),
        responsive: Callable[[], bool] | None = None,
        keep_when_full: Callable[[T], bool] | None = None,
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
        # A payload the destination keeps failing to finish (``split_on`` errors, e.g. a
        # write timing out, while ``responsive`` says it answers otherwise) is sent as the
        # parts ``split`` makes of it after _SPLIT_AFTER such errors; one that cannot be
        # split is dropped, counted, after _GIVE_UP_AFTER: it would hold back the rest.
        self._split = split
        self._split_on = split_on
        self._responsive = responsive
        # items a full queue still takes, up to _RESERVE more (the end of a run: without
        # it a run cut short by drops never ends for live subscribers, nor in the graph)
        self._keep_when_full = keep_when_full
        if not pipelined and (submit is not None or extend is not None or finalize is not None):
            raise ValueError("submit, extend and finalize need a pipelined worker.")
        # pipelined: what the preparer does with a prepared payload -- add items to it
        # (``extend``, returns how many it counts) and turn it into what ``send`` and
        # ``submit`` take (``finalize``) when it goes to the sender
        self._extend = extend
        self._finalize = finalize
        self._max_staged = max_staged if max_staged is not None else 8 * max_batch_size
        self._pipelined = pipelined
        # optional: send a payload without waiting for the reply; returns what waits for it
        self._submit = submit
        # optional hook, called on the worker thread after each successful send with
        # (seconds the send took, items sent); may be set after construction
        self.on_sent = on_sent
        # optional hook, called on the sending thread before each retry after a transient
        # error (e.g. to look where the embedded server is now); may be set after
        # construction; what it raises is logged
        self.on_unavailable: Callable[[], None] | None = None
        # counters (read by stats(); written by the worker, drops by any thread)
        self.sent = 0
        self.dropped = 0
        self.failed = 0
        self.retries = 0
        self._last_drop_log = 0.0
        self._logged_dropped = 0  # ``dropped`` as of the last warning about drops
        self._untold_loss = False
        self._outage_logged = False
        self._last_reject_log = -10.0
        self._rejects_untold = 0
        self._init_thread()
        _WORKERS.add(self)  # re-initialised in a forked child (one hook for all workers)

    def _init_thread(self) -> None:
        self._queue: collections.deque[Any] = collections.deque()
        # pipelined: the batch the preparer is filling, its count and flush markers
        self._staged: Any = None
        self._staged_count = 0
        self._staged_markers: list[_FlushMarker] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        # set by a flush asked for, and by shutdown: cuts a retry's backoff short
        self._hurry = threading.Event()
        self._idle = False
        self._lingering = False
        self._flush_pending = 0
        self._closed = False
        self._left_at_shutdown = 0
        # re-entered by a signal handler that makes a span while this thread counts a
        # drop (a handler runs on the main thread between any two of its bytecodes)
        self._drop_lock = threading.RLock()
        # What the worker holds (under _drop_lock): items (or what ``prepare`` counted of
        # them) taken out of the queue and not yet sent or dropped -- being mapped,
        # staged, ready for the sender, in the send. A shutdown that gives up on the
        # worker counts them as dropped and sets _abandoned: what the worker later sends
        # or drops of them counts no more (each item is counted once).
        self._owed = 0
        self._abandoned = False
        # Flush markers (under _drop_lock): those not released yet, the last one queued,
        # and items dropped -- by put() (_put_lost), by the worker thread (_worker_lost)
        # and by the sender (_sender_lost) -- with how many of them markers already
        # account for (_seen). The worker and the sender drop items in queue order, so
        # what they dropped before they release a marker was queued before it.
        self._pending: set[_FlushMarker] = set()
        self._last_marker: _FlushMarker | None = None
        self._put_lost = self._put_lost_seen = 0
        self._worker_lost = self._worker_lost_seen = 0
        self._sender_lost = self._sender_lost_seen = 0
        self._carried_lost = 0  # sender: the preparer's drops before the batches it sent
        # pipelined: prepared batches (see _Job) for the sender; ``None`` ends it. One
        # waits here while the sender sends the one before.
        self._ready: queue.Queue[_Job | None] | None = None
        self._sender: threading.Thread | None = None
        if self._pipelined:
            self._ready = queue.Queue(maxsize=1)
            self._sender = threading.Thread(
                target=self._send_loop, name=f"spangraph-{self.name}-send", daemon=True
            )
            self._sender.start()
        self._thread = threading.Thread(
            target=self._run, name=f"spangraph-{self.name}", daemon=True
        )
        self._thread.start()

    def _at_fork_reinit(self) -> None:
        # In a forked child the worker thread is gone and the queue belongs to the parent.
        if self._closed:  # shut down in the parent: stays shut down (no thread) in the child
            self._queue = collections.deque()
            self._drop_lock = threading.RLock()
            return
        self._init_thread()

    # -- user threads ---------------------------------------------------------------------

    def put(self, item: T) -> bool:
        """Queue ``item``; ``False`` (and a counted drop) when full or closed. Never blocks."""
        q = self._queue
        if self._closed or (len(q) >= self._max_queue and not self._kept_when_full(item, len(q))):
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

    def put_many(self, items: list[T]) -> None:
        """Queue ``items`` in their order, as many :meth:`put` calls would (one deque
        extend where they all fit). Never blocks."""
        q = self._queue
        if self._closed or len(q) + len(items) > self._max_queue:
            for item in items:  # each counted or kept as put() would
                self.put(item)
            return
        if items:
            q.extend(itertools.islice(items, len(items) - 1))
            self.put(items[-1])  # (and the worker woken as put() wakes it)

    def _kept_when_full(self, item: T, queued: int) -> bool:
        keep = self._keep_when_full
        if keep is None or queued >= self._max_queue + _RESERVE:
            return False
        try:
            return keep(item)
        except Exception:  # never raise into user code: the item is dropped, counted
            return False

    def _count_drop(self, n: int, why: str) -> None:
        """Count ``n`` items as dropped: by put() (any thread), or by the worker or its
        sender (items they hold; not counted again when shutdown counted them)."""
        me = threading.current_thread()
        with self._drop_lock:
            if me is self._thread or me is self._sender:
                if self._abandoned:
                    return  # counted by the shutdown that gave up on the worker
                self._owed -= n
                if me is self._thread:
                    self._worker_lost += n
                else:
                    self._sender_lost += n
            else:
                self._put_lost += n
            total = self._add_drop(n)
        self._log_drop(n, why, total)

    def _add_drop(self, n: int) -> int | None:
        """Under _drop_lock: count ``n`` dropped; the total when it is time to log."""
        self.dropped += n
        now = time.monotonic()
        if now - self._last_drop_log < 10.0:
            return None
        self._last_drop_log = now
        self._logged_dropped = self.dropped
        return self.dropped

    def _log_untold_drops(self, *, last: bool = False) -> None:
        """Warn of drops the rate limit kept quiet, once 10 s have passed since the last
        warning (not only at shutdown: a program may never shut down cleanly); ``last``
        (at shutdown): now, whenever the last warning was."""
        with self._drop_lock:
            unlogged = self.dropped - self._logged_dropped
            now = time.monotonic()
            if not unlogged or (not last and now - self._last_drop_log < 10.0):
                return
            self._last_drop_log = now
            self._logged_dropped = total = self.dropped
        _log.warning(
            "spangraph %s: dropped %d item(s) not logged before; %d dropped in all",
            self.name,
            unlogged,
            total,
        )

    def _log_drop(self, n: int, why: str, total: int | None) -> None:
        if total is not None:
            _log.warning(
                "spangraph %s: dropped %d item(s) (%s); %d dropped in all", self.name, n, why, total
            )

    def _claim(self, n: int) -> bool:
        """The worker took ``n`` items out of the queue; ``False`` (and counted as
        dropped) when shutdown gave up on it meanwhile."""
        with self._drop_lock:
            if not self._abandoned:
                self._owed += n
                return True
            total = self._add_drop(n)
        self._log_drop(n, "not sent before shutdown", total)
        return False

    def _recount(self, held: int, count: int) -> None:
        """``held`` items the worker holds now count as ``count`` (what ``prepare`` or
        ``extend`` made of them)."""
        with self._drop_lock:
            if not self._abandoned:
                self._owed += count - held

    def _count_failed(self) -> None:
        """Count a failed batch, unless shutdown gave up on the worker (and counted it)."""
        with self._drop_lock:
            if not self._abandoned:
                self.failed += 1

    def _count_sent(self, n: int) -> bool:
        """Count ``n`` held items as sent; ``False`` when shutdown counted them."""
        with self._drop_lock:
            if self._abandoned:
                return False
            self._owed -= n
            self.sent += n
            return True

    def qsize(self) -> int:
        return len(self._queue)

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until everything queued before this call has been sent (or dropped);
        ``True`` when all of it was sent, ``False`` when the timeout passed first or
        any of it was dropped (see :meth:`request_flush`)."""
        return self.request_flush()(timeout)

    def request_flush(self) -> Callable[[float | None], bool]:
        """Ask for a flush without waiting for it: the returned callable waits (at most
        its argument, in seconds) and tells whether everything queued before this call
        was sent. Several workers asked first and waited for after flush side by side.

        ``False`` when the wait timed out, or when an item put before this call and
        after the flush released before it was dropped: refused by a full queue, not
        mapped, rejected, given up on, or left at shutdown."""
        if self._closed or not self._thread.is_alive():
            done = not self._queue and not self._left_at_shutdown
            return lambda timeout: done
        marker = _FlushMarker()
        with self._drop_lock:
            # (a loss no flush told: found after its waiter had timed out)
            marker.put_lost = self._put_lost != self._put_lost_seen or self._untold_loss
            self._put_lost_seen = self._put_lost
            self._untold_loss = False
            last = self._last_marker
            if last is not None and not last.done.is_set():
                marker.prev = last
            self._last_marker = marker
            self._pending.add(marker)
            self._flush_pending += 1
            self._queue.append(marker)
        self._wake.set()
        self._hurry.set()

        def wait(timeout: float | None) -> bool:
            if marker.done.wait(timeout):
                return marker.ok
            with self._drop_lock:
                if marker in self._pending:  # (not released: under this lock, exactly)
                    marker.given_up = True
                    return False
            return marker.ok  # released just now

        return wait

    def shutdown(self, timeout: float = 30.0) -> bool:
        """Flush within ``timeout``, then stop the worker. Idempotent."""
        if self._closed:
            return True
        deadline = time.monotonic() + timeout
        flushed = self.flush(timeout)
        self._closed = True
        self._stop.set()
        self._wake.set()
        self._hurry.set()
        # a short grace past the deadline: a worker woken from its backoff by the stop
        # counts its batch as dropped in a few milliseconds; one stuck on a store that
        # does not answer is a daemon thread, left to its timeout
        end = deadline + _JOIN_GRACE
        self._thread.join(max(0.0, end - time.monotonic()))
        if self._sender is not None:
            self._sender.join(max(0.0, end - time.monotonic()))
        stuck = self._thread.is_alive() or (self._sender is not None and self._sender.is_alive())
        with self._drop_lock:
            held = 0
            if stuck:
                # given up on: what the worker holds (in the send, ready, staged, being
                # mapped) is counted as dropped now, not when (or if) the store answers;
                # what the worker later sends or drops of it counts no more
                self._abandoned = True
                held, self._owed = self._owed, 0
            markers = list(self._pending) if stuck else []
        # taken out, not counted in place: a worker still running (stuck on the store)
        # would send them later, and they would count as sent and dropped both
        left = 0
        queue = self._queue
        while True:
            try:
                item = queue.popleft()
            except IndexError:
                break
            if isinstance(item, _FlushMarker):
                markers.append(item)
            else:
                left += 1
        self._left_at_shutdown = left + held
        if left + held:
            with self._drop_lock:
                total = self._add_drop(left + held)
            self._log_drop(left + held, "not sent before shutdown", total)
        # flushes waiting on other threads: done, and False (not everything was sent)
        self._release(markers, lost=True)
        self._log_untold_drops(last=True)  # the last word: what the rate limit kept quiet
        if self._rejects_untold:
            _log.error(
                "spangraph %s: %d more batch(es) rejected since the last report; dropped",
                self.name,
                self._rejects_untold,
            )
            self._rejects_untold = 0
        return flushed

    # -- worker thread --------------------------------------------------------------------

    def _run(self) -> None:
        otel_context.attach(otel_context.set_value(_SUPPRESS_KEY, True))
        q = self._queue
        while True:
            came_from_idle = False
            if not q:
                if self._stop.is_set():
                    if self._ready is not None:
                        self._stage([], [], final=True)
                        self._ready.put(None)
                    return
                self._idle = True
                if not q:  # re-check: a put() between the test above and idle=True
                    # with a staged batch, wake up soon to hand it over when the sender
                    # frees the slot (it also sets _wake when it does)
                    self._wake.wait(_ABSORB_EVERY if self._staged is not None else self._delay)
                self._idle = False
                self._wake.clear()
                if not q:
                    if self._staged is not None:
                        self._stage([], [])
                    if self.dropped != self._logged_dropped:
                        self._log_untold_drops()  # the rest of a burst, once it is over
                    continue
                came_from_idle = True
            # Let a partial batch fill (a trickle of spans otherwise makes one round trip
            # per item); the idle wait above already did that for non-eager workers. A
            # worker with a staged batch takes what came at least every _ABSORB_EVERY.
            if self._staged is not None:
                linger = _ABSORB_EVERY
            else:
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
                try:
                    item = q.popleft()
                except IndexError:  # shutdown took the rest meanwhile
                    break
                if isinstance(item, _FlushMarker):
                    markers.append(item)
                    break
                items.append(item)
            if items and not self._claim(len(items)):
                items = []  # shutdown gave up on this worker: counted as dropped
            if self._ready is not None:
                self._stage(items, markers)
                continue
            if items and (prepared := self._prepare_items(items)) is not None:
                self._send_payload(*prepared)
            if markers:
                with self._drop_lock:
                    lost = self._worker_lost != self._worker_lost_seen
                    self._worker_lost_seen = self._worker_lost
                self._release(markers, lost)

    def _stage(self, items: list[T], markers: list[_FlushMarker], final: bool = False) -> None:
        """Pipelined: map ``items`` into the staged batch, and hand that batch to the
        sender when its slot is free (or a flush, the size cap or ``final`` says so).

        With ``extend``, a worker whose sender is busy keeps mapping what arrives into
        the staged batch instead of leaving it queued: the backlog waits as compact rows,
        and the next batch grows with it.
        """
        if items:
            if self._staged is None:
                prepared = self._prepare_items(items)
                if prepared is not None:
                    self._staged, self._staged_count = prepared
            else:
                before = self._worker_lost
                try:
                    added = self._extend(self._staged, items)  # type: ignore[misc]
                except Exception:
                    _log.exception(
                        "spangraph %s: could not map %d item(s); dropped", self.name, len(items)
                    )
                    self._drop_rest(len(items), before)
                else:
                    self._recount(len(items) - (self._worker_lost - before), added)
                    self._staged_count += added
        self._staged_markers += markers
        if self._staged is None and not self._staged_markers:
            return
        ready = self._ready
        assert ready is not None
        if not (
            final
            or self._extend is None
            or self._staged_markers
            or self._staged_count >= self._max_staged
            or not ready.full()  # only this thread puts: a free slot stays free
        ):
            return
        staged, count, markers = self._staged, self._staged_count, self._staged_markers
        self._staged, self._staged_count, self._staged_markers = None, 0, []
        payload = None
        if staged is not None and count:
            try:
                payload = self._finalize(staged) if self._finalize is not None else staged
            except Exception:
                _log.exception(
                    "spangraph %s: could not encode %d item(s); dropped", self.name, count
                )
                self._count_drop(count, "encoding error")
                count = 0
        if count or markers:
            with self._drop_lock:
                lost = self._worker_lost - self._worker_lost_seen
                self._worker_lost_seen = self._worker_lost
            ready.put((payload, count, markers, lost))

    def _release(self, markers: list[_FlushMarker], lost: bool = False) -> None:
        """Release ``markers`` (once each): everything before them is done; ``lost``
        when some of it, since the marker released before them, was dropped."""
        for marker in markers:
            with self._drop_lock:
                if marker not in self._pending:
                    continue  # released already, by a shutdown that gave up
                self._pending.discard(marker)
                self._flush_pending -= 1
                prev, marker.prev = marker.prev, None
                marker.ok = not (lost or marker.put_lost) and (prev is None or prev.ok)
                if not marker.ok and marker.given_up and self._last_marker is marker:
                    # its waiter was told False for the timeout, not for this loss, and
                    # no later flush covers it: the next flush tells it
                    self._untold_loss = True
            marker.done.set()

    def _send_loop(self) -> None:
        """The sender thread of a pipelined worker: sends prepared batches in order.

        With ``submit``, the next batch goes out before the reply to the one before it is
        read (two in flight on one connection), so the store has the next batch at hand
        while this thread waits for the GIL to read a reply. A batch whose submit or reply
        fails is sent again the plain way (``send``, with retries), in order: writes are
        idempotent.
        """
        otel_context.attach(otel_context.set_value(_SUPPRESS_KEY, True))
        ready = self._ready
        assert ready is not None
        inflight: collections.deque[_InFlight] = collections.deque()
        while True:
            if inflight:
                try:
                    job = ready.get_nowait()
                except queue.Empty:  # nothing new: read the reply of the oldest
                    self._finish(inflight.popleft())
                    continue
            else:
                job = ready.get()
            if self._staged is not None:
                self._wake.set()  # the slot is free: the preparer may hand over its batch
            if job is None:
                while inflight:
                    self._finish(inflight.popleft())
                return
            payload, count, markers, lost = job
            reply = None
            started = time.perf_counter()
            submit = self._submit
            if count and submit is not None and not self._stop.is_set():
                try:
                    reply = submit(payload)
                except Exception:  # sent again below, the plain way, which counts failures
                    reply = None
            inflight.append((payload, count, markers, reply, started, lost))
            if reply is None:  # sent the plain way, after everything before it
                while inflight:
                    self._finish(inflight.popleft())
            elif len(inflight) >= 2:
                self._finish(inflight.popleft())

    def _finish(self, entry: _InFlight) -> None:
        payload, count, markers, reply, started, lost = entry
        if count:
            self._send_payload(payload, count, reply, started)
        self._carried_lost += lost
        if markers:
            with self._drop_lock:
                lost = self._carried_lost + self._sender_lost - self._sender_lost_seen
                self._carried_lost, self._sender_lost_seen = 0, self._sender_lost
            self._release(markers, lost > 0)

    def _prepare_items(self, items: list[T]) -> tuple[P, int] | None:
        """The payload of ``items`` and how many it counts; ``None`` when there is
        nothing to send (a mapping error is counted and logged as a drop)."""
        before = self._worker_lost
        try:
            payload, count = self._prepare(items)
        except Exception:
            _log.exception("spangraph %s: could not map %d item(s); dropped", self.name, len(items))
            self._drop_rest(len(items), before)
            return None
        # what prepare dropped itself (items it could not read) it counted already
        self._recount(len(items) - (self._worker_lost - before), count)
        return (payload, count) if count else None

    def _drop_rest(self, n: int, before: int) -> None:
        """Mapping ``n`` items failed: count those not counted as dropped since the
        worker's drop count was ``before``."""
        rest = n - (self._worker_lost - before)
        if rest > 0:
            self._count_drop(rest, "mapping error")

    def _send_payload(
        self,
        payload: P,
        count: int,
        reply: Callable[[], None] | None = None,
        submitted: float | None = None,
        split_after: int = _SPLIT_AFTER,
    ) -> None:
        """Send ``payload`` (or, first, wait for the ``reply`` to its earlier submit),
        retrying while the error is transient; count what is dropped."""
        delay = self._retry_initial
        started = time.monotonic()
        stuck = 0  # split_on errors while the destination answered otherwise
        while True:
            sending = time.perf_counter() if submitted is None else submitted
            submitted = None
            try:
                if reply is not None:
                    wait, reply = reply, None
                    wait()
                else:
                    self._send(payload)
            except self._transient as exc:
                on_unavailable = self.on_unavailable
                if on_unavailable is not None and not self._stop.is_set():
                    # first: a batch given up on below leaves the next one the place the
                    # destination moved to (the live worker gives up within 2 s, less
                    # than one socket timeout on a port that accepts and never answers)
                    try:
                        on_unavailable()
                    except Exception:
                        _log.debug("spangraph %s: on_unavailable failed", self.name, exc_info=True)
                if self._stop.is_set() or (
                    self._give_up_after is not None
                    and time.monotonic() - started >= self._give_up_after
                ):
                    self._count_failed()
                    self._count_drop(count, f"unavailable: {exc}")
                    return
                if isinstance(exc, self._split_on) and self._answers():
                    stuck += 1
                    if stuck >= split_after and self._send_split(payload, count, exc):
                        return
                    if stuck >= _GIVE_UP_AFTER:
                        self._count_failed()
                        _log.error(
                            "spangraph %s: %d item(s) failed %d times (%s) while the "
                            "destination answered otherwise; dropped",
                            self.name, count, stuck, exc,
                        )  # fmt: skip
                        self._count_drop(count, "never finished")
                        return
                if not self._outage_logged:
                    self._outage_logged = True
                    _log.warning(
                        "spangraph %s: unavailable (%s); retrying with backoff", self.name, exc
                    )
                self.retries += 1
                # a flush waiting (shutdown's too) cuts the backoff short: the destination
                # is tried again within _RETRY_WHILE_FLUSHING, so what it holds is sent as
                # soon as the destination is back, not after a backoff past the deadline
                if self._flush_waited():
                    self._stop.wait(min(delay, _RETRY_WHILE_FLUSHING))
                else:
                    self._hurry.clear()
                    # (not asked for, nor stopped, between the check and the clear)
                    if not self._flush_waited() and not self._stop.is_set():
                        self._hurry.wait(delay)
                delay = min(delay * 2, self._retry_max)
                continue
            except Exception as exc:
                self._count_failed()
                self._log_rejected(count, exc)
                self._count_drop(count, "rejected")
                return
            if self._outage_logged:
                self._outage_logged = False
                _log.warning("spangraph %s: available again", self.name)
            if not self._count_sent(count):
                return  # shutdown gave up on it and counted it as dropped
            on_sent = self.on_sent
            if on_sent is not None:
                try:
                    on_sent(time.perf_counter() - sending, count)
                except Exception:
                    _log.debug("spangraph %s: the on_sent hook failed", self.name, exc_info=True)
            return

    def _flush_waited(self) -> bool:
        """Whether a flush (shutdown's too) is waited for now: one whose waiter gave up
        no longer cuts the backoff short (an outage would be tried every 0.25 s on)."""
        with self._drop_lock:
            return any(not marker.given_up for marker in self._pending)

    def _log_rejected(self, count: int, exc: Exception) -> None:
        """Log a batch the destination rejected, with its traceback: at most once every
        10 s, saying how many more were rejected in between (one bad write repeated
        would otherwise fill the program's log)."""
        now = time.monotonic()
        if now - self._last_reject_log < 10.0:
            self._rejects_untold += 1
            return
        untold, self._rejects_untold = self._rejects_untold, 0
        self._last_reject_log = now
        more = f" ({untold} more batch(es) rejected since the last report)" if untold else ""
        _log.error(
            "spangraph %s: a batch of %d was rejected; dropped%s",
            self.name,
            count,
            more,
            exc_info=exc,
        )

    def _answers(self) -> bool:
        responsive = self._responsive
        if responsive is None:
            return True
        try:
            return bool(responsive())
        except Exception:
            return False

    def _send_split(self, payload: P, count: int, exc: BaseException) -> bool:
        """Send ``payload`` as the parts ``split`` makes of it (each with the retries of
        a batch of its own); ``False`` when it cannot be split."""
        if self._split is None:
            return False
        try:
            parts = self._split(payload, count)
        except Exception:
            _log.exception("spangraph %s: could not split a batch of %d", self.name, count)
            return False
        if not parts:
            return False
        _log.warning(
            "spangraph %s: a batch of %d item(s) failed repeatedly (%s); sending it in %d parts",
            self.name, count, exc, len(parts),
        )  # fmt: skip
        for part, part_count in parts:  # a part failing so once is split at once
            self._send_payload(part, part_count, split_after=1)
        return True

    def stats(self) -> dict[str, int]:
        """Counters: queued, sent, dropped, failed batches, retries."""
        return {
            "queued": len(self._queue),
            "sent": self.sent,
            "dropped": self.dropped,
            "failed": self.failed,
            "retries": self.retries,
        }


def ends_a_run(item: tuple[Any, ...]) -> bool:
    """Whether a queue item is the end of a span that ends a run: a workflow span's, or a
    root span's (its run has no other top). Items are ``(END, record or span, ...)``."""
    if item[0] != END:
        return False
    span = item[1]
    if type(span) is tuple:  # its END record
        return record_ends_a_run(span)
    return span.parent is None or (span.attributes or {}).get(sc.KIND) == sc.KIND_WORKFLOW


START: Final = 0
"""Queue item kind of a span start: ``(START, record)`` (see ``_records``)."""
END: Final = 1
"""Queue item kind of a span end: ``(END, record)``."""


class QueueingSpanProcessor(SpanProcessor):
    """``on_start``/``on_end`` of a processor whose worker takes the records of spans:
    called synchronously on the thread that starts or ends the span, so each only copies
    the span's raw fields into a record of plain values (in C where
    ``spangraph._speedups`` was built, see ``_records``) and appends an item with it to
    the bounded queue (``self._put``, a :meth:`BatchWorker.put`); never raises. The span
    itself is let go of at once: spans held in a queue survive into the old generations
    of the program's garbage collector, which then scans them again and again.
    ``self._known`` maps resource keys to the spans' Resources (``_records.rebuild``).

    Items are ``(START, record)`` and ``(END, record)`` here (:meth:`_queue_span`,
    :meth:`_queue_record`); a subclass may shape them otherwise. Where the extension was
    built, :meth:`_fast_path` makes ``on_start``/``on_end`` one C call each
    (``RecordQueue``: the copy, the item, ``self._put``), which comes back to
    :meth:`_queue_span` for anything unusual."""

    _put: Callable[[Any], bool]
    _known: dict[int, Any]
    _worker: BatchWorker[Any, Any]
    _ITEMS_WITH_TIME = False
    """Items ``(what, record, time)``, the span's start or end time (see live.py)."""

    def _fast_path(self) -> None:
        if RecordQueue is not None:
            queue = RecordQueue(self, self._ITEMS_WITH_TIME)
            self.on_start = queue.start  # type: ignore[method-assign]
            self.on_end = queue.end  # type: ignore[method-assign]

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self._queue_span(START, span)

    def on_end(self, span: ReadableSpan) -> None:
        self._queue_span(END, span)

    def _queue_span(self, what: int, span: Any) -> None:
        """Queue the record of ``span``, or the span itself where no copy can read it (the
        worker reads what it can of it). Never raises."""
        try:
            record = copy_record(what, span, self._known)
            self._put((what, span if record is None else record))
        except Exception:  # pragma: no cover - never raise into user code
            pass

    def _queue_record(self, what: int, record: tuple[Any, ...]) -> None:
        """Queue a START or END record as ``on_start``/``on_end`` do (the offload agent
        hands its records over here)."""
        self._put(self._item(what, record))

    def _queue_records(self, records: list[tuple[Any, ...]]) -> None:
        """Queue START and END records (their first field says which), in their order, as
        :meth:`_queue_record` would one by one (the offload agent's, a frame's at once)."""
        items = [self._item(record[0], record) for record in records]
        if self._put == self._worker.put:  # (not shut down)
            self._worker.put_many(items)
        else:
            for item in items:
                self._put(item)

    @staticmethod
    def _item(what: int, record: tuple[Any, ...]) -> tuple[Any, ...]:
        """The queue item of a START or END record."""
        return (what, record)
