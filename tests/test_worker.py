"""BatchWorker: the bounded queue and worker thread behind both span processors,
driven with plain in-memory prepare/send callables."""

from __future__ import annotations

import gc
import itertools
import logging
import os
import signal
import sys
import threading
import time
import types
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry import context as otel_context

from spangraph.processors._worker import BatchWorker


class Transient(Exception):
    pass


class Sink:
    """A send callable that records batches; can be made to fail or to block."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []
        self.lock = threading.Lock()
        self.fail_with: list[BaseException] = []
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self.suppressed: list[object] = []

    def __call__(self, payload: list[Any]) -> None:
        self.suppressed.append(otel_context.get_value(otel_context._SUPPRESS_INSTRUMENTATION_KEY))
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        with self.lock:
            if self.fail_with:
                raise self.fail_with.pop(0)
            self.batches.append(list(payload))

    @property
    def items(self) -> list[Any]:
        with self.lock:
            return [i for b in self.batches for i in b]


def prepare(items: list[Any]) -> tuple[list[Any], int]:
    return list(items), len(items)


@pytest.fixture(params=[False, True], ids=["one-thread", "pipelined"])
def make(
    request: pytest.FixtureRequest,
) -> Iterator[Callable[..., tuple[BatchWorker[Any, Any], Any]]]:
    """Workers in both modes: one thread, or a preparing and a sending thread."""
    made: list[tuple[BatchWorker[Any, Any], Any]] = []

    def factory(**kwargs: Any) -> tuple[BatchWorker[Any, Any], Any]:
        sink = kwargs.pop("sink", None) or Sink()
        kwargs.setdefault("pipelined", request.param)
        kwargs.setdefault("transient", (Transient,))
        kwargs.setdefault("retry_initial", 0.001)
        w: BatchWorker[Any, Any] = BatchWorker(
            "test", kwargs.pop("prepare", prepare), sink, **kwargs
        )
        made.append((w, sink))
        return w, sink

    yield factory
    for w, sink in made:
        if isinstance(sink, Sink) and sink.gate is not None:
            sink.gate.set()
        w.shutdown(timeout=2)


def test_items_delivered_in_order_in_bounded_batches(make: Any) -> None:
    w, sink = make(max_batch_size=7, schedule_delay=0.01)
    for i in range(100):
        assert w.put(i) is True
    assert w.flush(5)
    assert sink.items == list(range(100))
    assert all(1 <= len(b) <= 7 for b in sink.batches)
    assert w.sent == 100
    assert w.stats() == {"queued": 0, "sent": 100, "dropped": 0, "failed": 0, "retries": 0}


def test_batches_fill_up_to_max_when_items_wait(make: Any) -> None:
    w, sink = make(max_batch_size=10, schedule_delay=0.01)
    sink.gate = threading.Event()
    w.put(-1)
    assert sink.entered.wait(5)  # worker is busy with the first batch
    for i in range(35):
        w.put(i)
    sink.gate.set()
    assert w.flush(5)
    assert sink.items == [-1, *range(35)]
    assert [len(b) for b in sink.batches] == [1, 10, 10, 10, 5]


def test_flush_waits_for_everything_queued_before_it(make: Any) -> None:
    w, sink = make(max_batch_size=3, schedule_delay=60.0)  # would wait 60 s without flush
    for i in range(10):
        w.put(i)
    t0 = time.monotonic()
    assert w.flush(30)
    assert time.monotonic() - t0 < 20
    assert sink.items == list(range(10))
    assert w.qsize() == 0


def test_flush_with_slow_send(make: Any) -> None:
    got: list[Any] = []

    def slow_send(payload: list[Any]) -> None:
        time.sleep(0.02)
        got.extend(payload)

    w, _ = make(max_batch_size=2, schedule_delay=0.01, sink=slow_send)
    for i in range(6):
        w.put(i)
    assert w.flush(5)
    assert got == list(range(6))


def test_flush_times_out_while_send_blocks(make: Any) -> None:
    w, sink = make(schedule_delay=0.01, eager=True)
    sink.gate = threading.Event()
    w.put(1)
    assert sink.entered.wait(5)
    assert w.flush(0.05) is False
    sink.gate.set()
    assert w.flush(5) is True
    assert sink.items == [1]


def test_eager_worker_sends_at_once(make: Any) -> None:
    w, sink = make(schedule_delay=10.0, eager=True)
    w.put("x")
    deadline = time.monotonic() + 5
    while not sink.items and time.monotonic() < deadline:
        time.sleep(0.001)
    assert sink.items == ["x"]


def stall(w: BatchWorker[Any, Any]) -> list[int]:
    """With the worker's send blocked: put items one at a time until the queue keeps one
    (a pipelined worker also takes a batch for its ready slot and one it waits to hand
    over). Returns the items put."""
    put: list[int] = []
    while True:
        while not w.qsize():
            assert len(put) < 10, "the worker keeps taking items while its send is blocked"
            assert w.put(len(put) + 1)
            put.append(len(put) + 1)
            time.sleep(0.05)
        time.sleep(0.3)  # a worker thread that ran late takes it now (a busy machine)
        if w.qsize():
            return put


def test_queue_full_drops_and_counts(make: Any, caplog: pytest.LogCaptureFixture) -> None:
    w, sink = make(max_queue_size=3, max_batch_size=1, schedule_delay=0.01, eager=True)
    sink.gate = threading.Event()
    assert w.put(0)
    assert sink.entered.wait(5)  # the worker holds item 0 in send
    accepted = [0, *stall(w)]
    with caplog.at_level(logging.WARNING, logger="spangraph"):
        while w.qsize() < 3:
            assert w.put(len(accepted))
            accepted.append(len(accepted))
        assert w.put(100) is False
        assert w.put(101) is False
    assert w.dropped == 2
    assert w.stats()["dropped"] == 2
    assert any(
        "dropped" in r.getMessage() and "queue full" in r.getMessage() for r in caplog.records
    )
    sink.gate.set()
    assert w.flush(5) is False  # done, but 100 and 101 were dropped
    assert sink.items == accepted


def test_put_many_queues_in_order_and_drops_what_does_not_fit_as_put_would(
    make: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """``put_many`` (the offload agent's records of a frame): one extend when they all
    fit; otherwise item by item, the first ones queued and the rest dropped and counted,
    as that many ``put`` calls; after shutdown, each dropped and counted."""
    w, sink = make(max_batch_size=7, schedule_delay=0.01)
    w.put_many(list(range(50)))
    w.put_many([])
    w.put_many(list(range(50, 100)))
    assert w.flush(5)
    assert sink.items == list(range(100))
    assert w.stats()["dropped"] == 0

    w, sink = make(max_queue_size=8, max_batch_size=1, schedule_delay=0.01, eager=True)
    sink.gate = threading.Event()
    assert w.put(0)
    assert sink.entered.wait(5)  # the worker holds item 0 in send
    accepted = [0, *stall(w)]
    room = 8 - w.qsize()
    with caplog.at_level(logging.WARNING, logger="spangraph"):
        w.put_many(list(range(100, 100 + room + 3)))
    assert w.dropped == 3
    assert any("queue full" in r.getMessage() for r in caplog.records)
    sink.gate.set()
    assert w.flush(5) is False  # done, but three were dropped
    assert sink.items == [*accepted, *range(100, 100 + room)]
    assert w.shutdown(timeout=5)
    w.put_many([1, 2])
    assert w.dropped == 5


def full(make: Any) -> tuple[BatchWorker[Any, Any], Sink]:
    """A worker whose send is blocked and whose queue (of one) is full."""
    w, sink = make(max_queue_size=1, max_batch_size=1, schedule_delay=0.01, eager=True)
    sink.gate = threading.Event()
    w.put(0)
    assert sink.entered.wait(5)
    stall(w)
    return w, sink


def test_drop_warnings_are_rate_limited(make: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Drop warnings come at most every 10 s; shutdown says what was dropped since the
    last one (before: 1 of 100 drops was ever logged, though stats() counted 100)."""
    w, sink = full(make)
    with caplog.at_level(logging.WARNING, logger="spangraph"):
        for i in range(100):
            assert w.put(i) is False
        assert w.dropped == 100
        assert len([r for r in caplog.records if "dropped" in r.getMessage()]) == 1
        sink.gate.set()
        w.shutdown(5)
    said = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert said == [
        "spangraph test: dropped 1 item(s) (queue full); 1 dropped in all",
        "spangraph test: dropped 99 item(s) not logged before; 100 dropped in all",
    ]
    assert w.dropped == 100


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="needs SIGUSR1")
def test_a_signal_handler_that_traces_while_a_drop_is_counted_does_not_hang(
    make: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A signal handler runs on the main thread between two of its bytecodes, also while
    that thread counts a drop under the worker's lock; a handler that makes a span drops
    too when the queue is full, and took that lock again: the process hung for good
    (workers included). The signal comes at exactly that moment here."""
    w, sink = full(make)
    in_handler: list[bool] = []
    signalled: list[bool] = []
    add_drop = w._add_drop

    def add_drop_then_signal(n: int) -> Any:  # runs under the lock
        if not signalled:
            signalled.append(True)
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(0.01)  # the handler runs here, on this thread, the lock held
        return add_drop(n)

    def handler(signum: int, frame: Any) -> None:
        in_handler.append(w.put("from the handler"))

    monkeypatch.setattr(w, "_add_drop", add_drop_then_signal)
    previous = signal.signal(signal.SIGUSR1, handler)
    try:
        assert w.put("dropped") is False
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert in_handler == [False] and w.dropped == 2
    sink.gate.set()
    assert w.flush(5) is False


def test_transient_errors_are_retried_then_delivered(
    make: Any, caplog: pytest.LogCaptureFixture
) -> None:
    w, sink = make(schedule_delay=0.01, retry_initial=0.005, retry_max=0.02)
    sink.fail_with = [Transient("down 1"), Transient("down 2")]
    with caplog.at_level(logging.WARNING, logger="spangraph"):
        for i in range(5):
            w.put(i)
        assert w.flush(5)
    assert sink.items == [0, 1, 2, 3, 4]
    assert w.retries == 2
    assert w.sent == 5
    assert w.dropped == 0 and w.failed == 0
    messages = [r.getMessage() for r in caplog.records]
    assert any("unavailable" in m for m in messages)
    assert any("available again" in m for m in messages)


def test_retry_backoff_grows(make: Any) -> None:
    times: list[float] = []
    fails = [3]

    def send(payload: list[Any]) -> None:
        times.append(time.monotonic())
        if fails[0]:
            fails[0] -= 1
            raise Transient("down")

    w, _ = make(sink=send, schedule_delay=0.01, retry_initial=0.02, retry_max=1.0)
    w.put(1)
    assert w.flush(5)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(gaps) == 3
    assert gaps[0] >= 0.015
    assert gaps[1] >= 0.035  # doubled
    assert gaps[2] >= 0.075


def test_non_transient_error_drops_batch_and_continues(
    make: Any, caplog: pytest.LogCaptureFixture
) -> None:
    w, sink = make(schedule_delay=0.01)
    sink.fail_with = [ValueError("rejected")]
    with caplog.at_level(logging.WARNING, logger="spangraph"):
        w.put("a")
        w.put("b")
        assert w.flush(5) is False  # done, and dropped
        w.put("c")
        assert w.flush(5) is True
    assert sink.items == ["c"]
    assert w.failed == 1
    assert w.dropped == 2
    assert w.retries == 0
    assert w.sent == 1
    assert any("rejected" in r.getMessage() for r in caplog.records)


def test_rejected_batches_are_logged_at_most_every_10_s_with_a_count(
    make: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """One bad write repeated (a server refusing every batch) logged a traceback a batch:
    hundreds a second. Now one every 10 s, saying how many were not logged."""
    w, sink = make(schedule_delay=0.01)
    sink.fail_with = [ValueError(f"rejected {i}") for i in range(4)]
    with caplog.at_level(logging.WARNING, logger="spangraph"):
        for i in range(3):
            w.put(i)
            assert w.flush(5) is False
        w._last_reject_log -= 10.0  # 10 s later
        w.put(3)
        assert w.flush(5) is False
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        "spangraph test: a batch of 1 was rejected; dropped",
        "spangraph test: a batch of 1 was rejected; dropped (2 more batch(es) rejected since "
        "the last report)",
    ]
    assert all(r.exc_info is not None for r in errors)  # with the traceback
    assert w.failed == 4 and w.dropped == 4


def test_a_flush_cuts_a_retry_backoff_short(make: Any) -> None:
    """A flush (shutdown's too) waiting for a batch in a retry's backoff: the destination
    is tried again at once, not after the backoff (which could outlast the flush's
    deadline though the destination was back)."""
    w, sink = make(schedule_delay=0.01, retry_initial=30.0, retry_max=30.0)
    sink.fail_with = [Transient("down")]
    w.put("held")
    deadline = time.monotonic() + 5
    while w.retries == 0:  # failed once: now in a 30 s backoff
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert w.flush(5) is True
    assert sink.items == ["held"]


def test_a_flush_given_up_on_no_longer_hurries_the_retries(make: Any) -> None:
    """A flush that timed out against a destination still down: the retries go back to
    their backoff (they went on every 0.25 s for as long as the outage lasted)."""

    def down(payload: list[Any]) -> None:
        raise Transient("down")

    w, _ = make(sink=down, schedule_delay=0.01, retry_initial=0.05, retry_max=5.0)
    w.put("held")
    assert w.flush(1.0) is False  # given up on: the destination is still down
    before = w.retries
    time.sleep(2.0)
    # backing off from at least 0.8 s (doubling to 5 s): two more at most, not eight
    assert w.retries - before <= 2, w.retries - before


def test_prepare_error_drops_items_and_continues(make: Any) -> None:
    def bad_prepare(items: list[Any]) -> tuple[list[Any], int]:
        if "poison" in items:
            raise RuntimeError("cannot map")
        return list(items), len(items)

    w, sink = make(prepare=bad_prepare, schedule_delay=0.01)
    w.put("poison")
    assert w.flush(5) is False
    w.put("ok")
    assert w.flush(5) is True
    assert sink.items == ["ok"]
    assert w.dropped == 1


def test_prepare_returning_nothing_skips_send(make: Any) -> None:
    w, sink = make(prepare=lambda items: ([], 0), schedule_delay=0.01)
    w.put(1)
    assert w.flush(5)
    assert sink.batches == []
    assert w.sent == 0 and w.dropped == 0


def test_give_up_after_budget(make: Any, caplog: pytest.LogCaptureFixture) -> None:
    calls = [0]

    def send(payload: list[Any]) -> None:
        calls[0] += 1
        raise Transient("still down")

    w, _ = make(sink=send, schedule_delay=0.01, retry_initial=0.01, give_up_after=0.1)
    w.put(1)
    w.put(2)
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="spangraph"):
        assert w.flush(5) is False  # returned once the batch was dropped
    elapsed = time.monotonic() - t0
    assert 0.09 <= elapsed < 4  # not the flush's own 5 s
    assert w.failed == 1
    assert w.dropped == 2
    assert w.sent == 0
    assert calls[0] >= 2
    assert w.retries == calls[0] - 1


def test_a_batch_given_up_on_at_its_first_failure_still_lets_the_worker_follow(
    make: Any,
) -> None:
    """``on_unavailable`` (which moves a worker to where the embedded server came back)
    ran only before a retry: a first attempt that outlasted ``give_up_after`` (the live
    worker: 2 s, one socket timeout on a port that never answers is 5 s) dropped the
    batch without it, and so did every batch after: the worker never moved."""
    sent: list[Any] = []
    moved: list[int] = []

    def send(payload: list[Any]) -> None:
        if not moved:
            raise Transient("the old port")
        sent.extend(payload)

    w, _ = make(sink=send, schedule_delay=0.01, retry_initial=0.01, give_up_after=0.0)
    w.on_unavailable = lambda: moved.append(1)
    w.put(1)
    assert w.flush(5) is False  # the first batch: given up on at once
    assert moved == [1] and w.dropped == 1
    w.put(2)
    assert w.flush(5) is True  # the next goes where the worker moved
    assert sent == [2]


def test_shutdown_flushes_and_later_puts_are_dropped(make: Any) -> None:
    w, sink = make(schedule_delay=5.0)
    for i in range(20):
        w.put(i)
    assert w.shutdown(timeout=5) is True
    assert sink.items == list(range(20))
    assert not w._thread.is_alive()
    assert w.put(99) is False
    assert w.put(100) is False
    assert w.dropped == 2
    assert sink.items == list(range(20))
    assert w.shutdown() is True  # idempotent
    assert w.flush(1) is True


def test_shutdown_gives_up_on_a_dead_store(make: Any) -> None:
    def send(payload: list[Any]) -> None:
        raise Transient("down")

    w, _ = make(sink=send, schedule_delay=0.01, retry_initial=0.01)
    w.put(1)
    t0 = time.monotonic()
    assert w.shutdown(timeout=0.2) is False
    assert time.monotonic() - t0 < 5
    assert w.dropped == 1


def test_a_flush_waiting_when_shutdown_gives_up_returns(make: Any) -> None:
    """Shutdown takes what is left out of the queue: a flush another thread waits for
    is done with it (before: its marker was thrown away, and flush(None) never
    returned)."""
    answer = threading.Event()

    def stuck(payload: list[Any]) -> None:
        answer.wait(10)

    w, _ = make(sink=stuck, schedule_delay=0.01)
    w.put(1)
    time.sleep(0.2)  # the worker is stuck sending
    returned: list[bool] = []
    waiter = threading.Thread(target=lambda: returned.append(w.flush(None)), daemon=True)
    waiter.start()
    time.sleep(0.1)
    assert w.shutdown(timeout=0.3) is False
    waiter.join(5)  # done when shutdown gives up, not when the store answers
    assert returned == [False]  # item 1 was not sent: counted as dropped
    answer.set()


def test_items_counted_as_dropped_at_shutdown_are_not_sent_later(make: Any) -> None:
    """A store slow to answer outlives shutdown's wait: what shutdown counted as
    dropped was still in the queue, and the worker sent it afterwards (counted twice)."""
    answer = threading.Event()

    def slow(payload: list[Any]) -> None:
        answer.wait(5)

    w, _ = make(sink=slow, max_batch_size=100, schedule_delay=0.01)
    for i in range(1000):
        w.put(i)
    time.sleep(0.1)  # the first batch is being sent
    assert w.shutdown(timeout=0.2) is False
    answer.set()  # the store answers: the worker ends
    w._thread.join(10)
    if w._sender is not None:
        w._sender.join(10)
    assert w.sent + w.dropped == 1000, w.stats()


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"max_queue_size": 0}, "max_queue_size"),
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"max_queue_size": 4, "max_batch_size": 5}, "max_batch_size"),
        ({"schedule_delay": 0}, "schedule_delay"),
        ({"schedule_delay": -1}, "schedule_delay"),
    ],
)
def test_constructor_validation(kwargs: dict[str, Any], word: str) -> None:
    with pytest.raises(ValueError, match=word):
        BatchWorker("bad", prepare, Sink(), transient=(Transient,), **kwargs)


def test_worker_thread_runs_with_instrumentation_suppressed(make: Any) -> None:
    assert otel_context.get_value(otel_context._SUPPRESS_INSTRUMENTATION_KEY) is None
    w, sink = make(schedule_delay=0.01)
    w.put(1)
    assert w.flush(5)
    assert sink.suppressed == [True]
    # the caller's context is untouched
    assert otel_context.get_value(otel_context._SUPPRESS_INSTRUMENTATION_KEY) is None


def test_worker_thread_is_a_named_daemon(make: Any) -> None:
    w, _ = make(schedule_delay=0.01)
    assert w._thread.daemon
    assert w._thread.name == "spangraph-test"


def test_put_from_many_threads(make: Any) -> None:
    w, sink = make(max_batch_size=64, schedule_delay=0.01)

    def produce(base: int) -> None:
        for i in range(500):
            w.put(base + i)

    threads = [threading.Thread(target=produce, args=(n * 1000,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert w.flush(5)
    items = sink.items
    assert sorted(items) == sorted(n * 1000 + i for n in range(4) for i in range(500))
    for n in range(4):  # each producer's items stay in its order
        mine = [i for i in items if n * 1000 <= i < n * 1000 + 500]
        assert mine == sorted(mine)


def test_a_worker_leaves_nothing_behind_for_forks() -> None:
    """Each configure() makes workers: once they are shut down and gone, nothing of them
    stays for later forks (a hook registered per worker can never be unregistered: every
    configure() left two behind, run at every fork)."""

    def fork_hooks() -> int:
        # type(), not isinstance(): a lazy proxy among the objects (openai's numpy proxy)
        # loads its target when asked for its __class__
        return sum(
            1
            for o in gc.get_objects()
            if (
                type(o) is weakref.WeakMethod and o._func_ref() is BatchWorker._at_fork_reinit  # type: ignore[attr-defined]
            )
            or (type(o) is types.FunctionType and o.__qualname__.startswith("BatchWorker."))
        )

    gc.collect()
    before = fork_hooks()
    for _ in range(20):
        w: BatchWorker[Any, Any] = BatchWorker("gone", prepare, Sink(), transient=(Transient,))
        w.put("x")
        assert w.shutdown(timeout=5)
        del w
    gc.collect()
    assert fork_hooks() == before


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "win32", reason="needs os.fork")
def test_forked_child_gets_a_working_worker(make: Any) -> None:
    w, sink = make(schedule_delay=0.01)
    closed, _ = make(schedule_delay=0.01)
    w.put("parent")
    assert w.flush(5)
    assert closed.shutdown(timeout=2)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            ok = (
                w._thread.is_alive()
                and w.put("child")
                and w.flush(5)
                and sink.items[-1] == "child"
                and closed.put("x") is False  # shut down in the parent: stays shut down
                and not closed._thread.is_alive()
            )
            code = 0 if ok else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # the parent's worker is unaffected
    assert w.put("after fork")
    assert w.flush(5)
    assert sink.items == ["parent", "after fork"]


def _trickle(w: BatchWorker[Any, Any], n: int, gap_s: float) -> None:
    for i in range(n):
        assert w.put(i)
        time.sleep(gap_s)


def test_eager_worker_lingers_so_a_trickle_makes_few_batches(make: Any) -> None:
    """No timing assumed: the linger is far longer than the trickle (the flush ends it),
    and without one each item is put only once the one before was sent."""
    eager, sink_eager = make(eager=True, max_batch_size=1000, linger=0.0)
    w, sink = make(eager=True, max_batch_size=1000, linger=30.0)
    _trickle(w, 40, 0.001)
    for i in range(40):
        assert eager.put(i)
        deadline = time.monotonic() + 10
        while len(sink_eager.items) <= i:
            assert time.monotonic() < deadline, "the eager worker did not send"
            time.sleep(0.001)
    assert w.flush(5) and eager.flush(5)
    assert sink.items == list(range(40)) and sink_eager.items == list(range(40))
    # the lingering worker gathered the trickle (the first item may go alone: the worker
    # was idle); without a linger every item was its own round trip
    assert len(sink.batches) <= 2
    assert len(sink_eager.batches) == 40


def test_a_full_batch_or_a_flush_ends_the_linger(make: Any) -> None:
    w, sink = make(eager=True, max_batch_size=10, linger=30.0)
    for i in range(10):
        w.put(i)  # fills a batch: sent without waiting out the 30 s linger
    deadline = time.monotonic() + 5
    while not sink.batches:
        assert time.monotonic() < deadline, "a full batch waited for the linger"
        time.sleep(0.01)
    w.put("tail")
    started = time.monotonic()
    assert w.flush(5)  # a flush does not wait out the linger either
    assert time.monotonic() - started < 5
    assert sink.items == [*range(10), "tail"]


def test_linger_must_not_be_negative(make: Any) -> None:
    with pytest.raises(ValueError, match="linger"):
        make(linger=-1)


def test_pipelined_worker_prepares_while_a_batch_is_in_flight(make: Any) -> None:
    prepared = threading.Event()
    calls: list[list[Any]] = []

    def recording_prepare(items: list[Any]) -> tuple[list[Any], int]:
        calls.append(list(items))
        if len(calls) == 2:
            prepared.set()
        return list(items), len(items)

    w, sink = make(pipelined=True, prepare=recording_prepare, max_batch_size=2, schedule_delay=0.01)
    sink.gate = threading.Event()
    w.put(0)
    w.put(1)
    assert sink.entered.wait(5)  # batch [0, 1] is being sent, and stays there
    w.put(2)
    w.put(3)
    assert prepared.wait(5), "the next batch was not prepared while the first was in flight"
    assert sink.batches == []
    sink.gate.set()
    assert w.flush(5)
    assert sink.batches == [[0, 1], [2, 3]]


def test_pipelined_worker_shutdown_sends_everything_and_stops_both_threads(make: Any) -> None:
    w, sink = make(pipelined=True, max_batch_size=7, schedule_delay=5.0)
    for i in range(50):
        w.put(i)
    assert w.shutdown(timeout=5)
    assert sink.items == list(range(50))
    names = {t.name for t in threading.enumerate()}
    assert "spangraph-test" not in names and "spangraph-test-send" not in names
    assert w.put(50) is False


class Wire:
    """``submit`` and ``send`` of a store that keeps two batches in flight: a log of
    what happened in which order, and replies that can be made to fail once."""

    def __init__(self) -> None:
        self.log: list[tuple[str, Any]] = []
        self.written: list[Any] = []
        self.fail_reply_of: dict[Any, BaseException] = {}

    def submit(self, payload: list[Any]) -> Callable[[], None]:
        key = payload[0]
        self.log.append(("submit", key))

        def wait() -> None:
            self.log.append(("reply", key))
            if key in self.fail_reply_of:
                raise self.fail_reply_of.pop(key)
            self.written.append(key)

        return wait

    def send(self, payload: list[Any]) -> None:
        self.log.append(("send", payload[0]))
        self.written.append(payload[0])


def send_through(wire: Wire, items: int) -> BatchWorker[Any, Any]:
    """Send ``items`` integers, a batch each, through a worker that submits to ``wire``;
    the worker, shut down."""
    w: BatchWorker[Any, Any] = BatchWorker(
        "wire",
        prepare,
        wire.send,
        transient=(Transient,),
        max_batch_size=1,
        schedule_delay=0.01,
        retry_initial=0.001,
        pipelined=True,
        submit=wire.submit,
    )
    try:
        for i in range(items):
            w.put(i)
        assert w.flush(5)
    finally:
        w.shutdown(2)
    return w


def test_submit_keeps_two_batches_in_flight_in_order() -> None:
    wire = Wire()
    w = send_through(wire, 6)
    assert wire.written == list(range(6))
    replies = [k for what, k in wire.log if what == "reply"]
    assert replies == list(range(6))
    for i in range(6):  # never more than two submitted and not yet replied to
        pos = wire.log.index(("submit", i))
        in_flight = {k for what, k in wire.log[: pos + 1] if what == "submit"} - {
            k for what, k in wire.log[:pos] if what == "reply"
        }
        assert len(in_flight) <= 2, wire.log
    assert not [entry for entry in wire.log if entry[0] == "send"]
    assert w.stats()["sent"] == 6


def test_submit_reply_lost_is_sent_again_in_order() -> None:
    wire = Wire()
    wire.fail_reply_of[2] = Transient("connection lost")
    w = send_through(wire, 5)
    assert ("send", 2) in wire.log  # sent again the plain way
    # batch 2 is written before any later batch's reply is read
    assert wire.written == [0, 1, 2, 3, 4]
    assert wire.log.index(("send", 2)) < wire.log.index(("reply", 3))
    assert w.stats()["dropped"] == 0 and w.stats()["retries"] == 1


def test_submit_needs_a_pipelined_worker() -> None:
    with pytest.raises(ValueError, match="pipelined"):
        BatchWorker("bad", prepare, Sink(), transient=(Transient,), submit=Wire().submit)


def extend(payload: list[Any], items: list[Any]) -> int:
    payload.extend(items)
    return len(items)


def test_staging_worker_maps_what_comes_while_the_sender_is_busy(make: Any) -> None:
    finalized: list[list[Any]] = []

    def finalize(payload: list[Any]) -> list[Any]:
        finalized.append(list(payload))
        return payload

    # max_staged above the 36 items put while the first batch is held, whatever part of
    # them the preparer's first (timed-out) wait took
    w, sink = make(
        pipelined=True,
        extend=extend,
        finalize=finalize,
        max_batch_size=4,
        max_staged=64,
        schedule_delay=0.01,
    )
    sink.gate = threading.Event()
    for i in range(4):
        w.put(i)
    assert sink.entered.wait(5)  # [0..3] in send, held there
    for i in range(4, 40):
        w.put(i)
        time.sleep(0.0005)
    deadline = time.monotonic() + 5
    while w.qsize() and time.monotonic() < deadline:  # everything taken out of the queue
        time.sleep(0.005)
    assert w.qsize() == 0
    sink.gate.set()
    assert w.flush(5)
    assert sink.items == list(range(40))
    # after the slot's batch, the rest went out as one staged batch, not in batches of 4
    assert len(sink.batches) < 10
    assert max(len(b) for b in sink.batches) > 4
    assert finalized == sink.batches


def test_staging_worker_caps_the_staged_batch(make: Any) -> None:
    w, sink = make(
        pipelined=True, extend=extend, max_batch_size=4, max_staged=10, schedule_delay=0.01
    )
    sink.gate = threading.Event()
    w.put(-1)
    assert sink.entered.wait(5)
    for i in range(100):
        w.put(i)
    sink.gate.set()
    assert w.flush(5)
    assert sink.items == [-1, *range(100)]
    assert max(len(b) for b in sink.batches) <= 10 + 4  # the cap, plus one take of items


def test_staging_worker_counts_a_failed_extend_and_keeps_the_rest(make: Any) -> None:
    def picky_extend(payload: list[Any], items: list[Any]) -> int:
        if "bad" in items:
            raise ValueError("cannot map")
        payload.extend(items)
        return len(items)

    def picky_prepare(items: list[Any]) -> tuple[list[Any], int]:
        payload: list[Any] = []
        return payload, picky_extend(payload, items)

    w, sink = make(
        pipelined=True,
        prepare=picky_prepare,
        extend=picky_extend,
        max_batch_size=1,
        schedule_delay=0.01,
    )
    sink.gate = threading.Event()
    w.put("first")
    assert sink.entered.wait(5)
    w.put("second")  # prepared, and handed to the free slot
    time.sleep(0.05)
    w.put("third")  # prepared, and staged: the slot is taken
    time.sleep(0.05)
    w.put("bad")  # extends the staged batch, and fails
    time.sleep(0.05)
    w.put("fourth")
    sink.gate.set()
    assert w.flush(5) is False  # done, without "bad"
    assert sink.items == ["first", "second", "third", "fourth"]
    assert w.stats()["dropped"] == 1


def test_staging_worker_counts_a_failed_finalize(make: Any) -> None:
    def finalize(payload: list[Any]) -> list[Any]:
        if "unencodable" in payload:
            raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")
        return payload

    w, sink = make(pipelined=True, extend=extend, finalize=finalize, schedule_delay=0.01)
    w.put("unencodable")
    assert w.flush(5) is False
    w.put("fine")
    assert w.flush(5) is True
    assert sink.items == ["fine"]
    assert w.stats()["dropped"] == 1


def test_what_shutdown_gives_up_on_is_counted_at_once_and_once(make: Any) -> None:
    """Shutdown gives up on a worker stuck in its send: every item it took and did not
    send (in the send, staged, ready for the sender) is counted as dropped when shutdown
    returns, not only what was still queued (before: those were counted seconds later,
    when the send timed out, or never, when the program exited first); and when the
    stuck send ends later, nothing is counted again."""
    w, sink = make(max_batch_size=10, schedule_delay=0.01, eager=True)
    sink.gate = threading.Event()
    w.put(0)
    assert sink.entered.wait(5)  # item 0 is in the send, and stays there
    for i in range(1, 100):
        w.put(i)
    time.sleep(0.2)  # a pipelined worker takes more: a batch ready, one staged
    assert w.shutdown(timeout=0.2) is False
    stats = w.stats()
    assert stats["sent"] == 0 and stats["dropped"] == 100, stats  # all of it, at once
    sink.gate.set()  # the store answers after all: the worker sends what it holds
    w._thread.join(10)
    if w._sender is not None:
        w._sender.join(10)
    assert not w._thread.is_alive()
    assert w.stats() == stats  # not counted twice (sent + dropped == what was put)


def test_a_flush_is_false_when_something_before_it_was_not_written(make: Any) -> None:
    """flush() says whether everything queued before it was written: not only whether
    the worker got past it (before: True although the batch had been given up on)."""
    fail = threading.Event()

    def send(payload: list[Any]) -> None:
        if fail.is_set():
            raise Transient("still down")

    w, _ = make(sink=send, schedule_delay=0.01, retry_initial=0.01, give_up_after=0.1)
    fail.set()
    w.put(1)
    w.put(2)
    assert w.flush(5) is False  # done in time, and both dropped
    assert w.stats()["dropped"] == 2
    fail.clear()
    w.put(3)
    assert w.flush(5) is True  # a drop before an earlier flush is that flush's
    assert w.flush(5) is True  # nothing queued: nothing lost


@pytest.mark.parametrize("later", ["asked-before-the-drop", "asked-after-it"])
def test_a_drop_after_a_flush_timed_out_is_told_once(make: Any, later: str) -> None:
    """A flush times out (the send is stuck), then the batch is dropped. A flush asked
    for meanwhile covers what the timed-out one does: it is False. One asked only once
    the drop was done was True (it looked at what came after the earlier flush only),
    so no flush ever told of the loss: it is False now. Either way, told once."""
    gate = threading.Event()
    entered = threading.Event()

    def send(payload: list[Any]) -> None:
        entered.set()
        assert gate.wait(10)
        raise ValueError("rejected")

    w, _ = make(sink=send, schedule_delay=0.01)
    w.put(1)
    assert entered.wait(5)
    assert w.flush(0.05) is False  # timed out: the send is stuck
    if later == "asked-before-the-drop":
        waiting = w.request_flush()
        gate.set()  # the store rejects the batch: item 1 is dropped
        assert waiting(5) is False
    else:
        gate.set()  # dropped now, with no flush waiting
        deadline = time.monotonic() + 5
        while w.stats()["dropped"] != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert w.stats()["dropped"] == 1
        assert w.flush(5) is False
    assert w.flush(5) is True


def test_drops_after_a_burst_are_logged_once_it_is_over(
    make: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The drops the rate limit kept quiet were logged only at shutdown, which a program
    that runs for days (or is killed) never reaches: the idle worker logs them once
    the 10 s have passed."""
    w, sink = full(make)
    with caplog.at_level(logging.WARNING, logger="spangraph"):
        for i in range(50):
            assert w.put(i) is False
        w._last_drop_log -= 11.0  # the rate limit's 10 s have passed
        sink.gate.set()
        deadline = time.perf_counter() + 5
        while time.perf_counter() < deadline and not any(
            "not logged before" in r.getMessage() for r in caplog.records
        ):
            time.sleep(0.01)
    said = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert said == [
        "spangraph test: dropped 1 item(s) (queue full); 1 dropped in all",
        "spangraph test: dropped 49 item(s) not logged before; 50 dropped in all",
    ]


def test_a_flush_is_false_after_a_mapping_error_or_a_full_queue(make: Any) -> None:
    def picky_prepare(items: list[Any]) -> tuple[list[Any], int]:
        if "poison" in items:
            raise RuntimeError("cannot map")
        return list(items), len(items)

    w, sink = make(prepare=picky_prepare, max_queue_size=2, max_batch_size=1, schedule_delay=0.01)
    w.put("poison")
    assert w.flush(5) is False
    sink.gate = threading.Event()
    w.put("a")
    assert sink.entered.wait(5)
    stall(w)
    while w.put("overflow"):  # the queue fills up: the next one is dropped
        pass
    sink.gate.set()
    assert w.flush(5) is False
    assert w.flush(5) is True


def test_a_full_queue_takes_what_keep_when_full_says_up_to_a_reserve(make: Any) -> None:
    from spangraph.processors._worker import _RESERVE

    w, sink = make(
        max_queue_size=3,
        max_batch_size=1,
        schedule_delay=0.01,
        eager=True,
        keep_when_full=lambda item: item < 0,
    )
    sink.gate = threading.Event()
    assert w.put(0)
    assert sink.entered.wait(5)  # the worker holds item 0 in send
    accepted = [0, *stall(w)]
    while w.qsize() < 3:
        assert w.put(len(accepted))
        accepted.append(len(accepted))
    assert w.put(100) is False  # full: dropped, counted
    assert all(w.put(-1 - i) for i in range(_RESERVE))  # kept past the bound
    assert w.put(-10_000) is False  # the reserve is used up
    assert w.dropped == 2
    assert w.qsize() == 3 + _RESERVE


def test_ends_a_run() -> None:
    from conftest import root_workflow_step
    from spangraph.processors._records import py_end_record, py_start_record
    from spangraph.processors._worker import END, START, ends_a_run

    root, wf, step = root_workflow_step()
    for span, ends in ((root, True), (wf, True), (step, False)):
        assert ends_a_run((END, py_end_record(span, {}))) is ends, span.name
        assert ends_a_run((END, span, 0)) is ends, span.name  # a span no copy could read
        assert ends_a_run((START, py_start_record(span, {}))) is False
