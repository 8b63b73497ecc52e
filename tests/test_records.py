"""_records: the span copies of the offload hot path, in C (spangraph._speedups) and in
Python, give the same records."""

from __future__ import annotations

import gc
import importlib.util
import marshal
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import threading
import weakref
from functools import partial
from typing import Any

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    set_span_in_context,
)

from spangraph.processors import _records

try:
    from spangraph import _speedups
except ImportError:  # pragma: no cover - only where no C compiler was at hand
    _speedups = None  # type: ignore[assignment]

needs_c = pytest.mark.skipif(_speedups is None, reason="spangraph._speedups was not built")


class Recorder(SpanProcessor):
    def __init__(self) -> None:
        self.calls: list[tuple[int, Any]] = []
        self.at_start: dict[str, tuple[Any, ...]] = {}  # name -> record copied in on_start

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        self.calls.append((_records.START, span))
        self.at_start[span.name] = _records.start_record(span, {})

    def on_end(self, span: ReadableSpan) -> None:
        self.calls.append((_records.END, span))


def varied_spans(recorder: Recorder | None = None) -> list[tuple[int, Any]]:
    """Starts and ends of spans with every kind of field: roots, children, a remote
    parent, events, links, statuses, kinds, two resources, attribute values of each type."""
    recorder = recorder or Recorder()
    calls = recorder.calls
    for service in ("a", "b"):
        provider = TracerProvider(resource=Resource.create({"service.name": service}))
        provider.add_span_processor(recorder)
        tracer = provider.get_tracer("t")
        with tracer.start_as_current_span("root", kind=SpanKind.SERVER) as root:
            with tracer.start_as_current_span(
                "child ünïcode",
                attributes={"s": "x", "i": 7, "f": 1.5, "b": True, "seq": ["a", "b"]},
                links=[Link(root.get_span_context(), {"why": "because"})],
            ) as child:
                child.add_event("e1", {"n": 1, "t": (1, 2)})
                child.add_event("e2")
                child.set_attribute("late", "set before the end")
                child.set_status(Status(StatusCode.ERROR, "it broke"))
            with tracer.start_as_current_span("empty", kind=SpanKind.CLIENT, attributes={}):
                pass
        remote = SpanContext(
            0x1234, 0x5678, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED)
        )
        with tracer.start_as_current_span(
            "remote child", context=set_span_in_context(NonRecordingSpan(remote))
        ) as span:
            span.set_status(Status(StatusCode.OK))
    return calls


def test_python_records_are_the_documented_tuples() -> None:
    known: dict[int, Any] = {}
    recorder = Recorder()
    calls = varied_spans(recorder)
    starts = [_records.py_start_record(s, known) for w, s in calls if w == _records.START]
    ends = [_records.py_end_record(s, known) for w, s in calls if w == _records.END]
    assert len(starts) == len(ends) == 8
    child_start = next(r for r in starts if r[5] == "child ünïcode")
    child = next(r for r in ends if r[5] == "child ünïcode")
    root = next(r for r in ends if r[5] == "root")
    assert child_start[0] == _records.START and len(child_start) == 10
    # copied in on_start: the attributes as they were then, and (not spangraph's own
    # span) a weak reference to the span, for the attributes set just after the start
    at_start, ref = recorder.at_start["child ünïcode"][8]
    assert "late" not in at_start and ref() is not None and ref().name == "child ünïcode"
    assert child_start[8][0]["late"]  # copied later: as they are now
    assert _records.attributes_of_start(child_start[8]) == child_start[8][0]  # (it ended)
    assert child[0] == _records.END and len(child) == 15
    assert child[1] == root[1] and child[3] == root[2] and child[4] is False
    assert root[3] == 0 and root[6] == SpanKind.SERVER.value
    assert child[9:11] == (StatusCode.ERROR.value, "it broke")
    assert child[11] == {
        "s": "x",
        "i": 7,
        "f": 1.5,
        "b": True,
        "seq": ("a", "b"),
        "late": "set before the end",
    }
    assert [(n, a) for n, _t, a in child[12]] == [("e1", {"n": 1, "t": (1, 2)}), ("e2", {})]
    assert child[13] == [(root[1], root[2], {"why": "because"})]
    assert next(r for r in ends if r[5] == "empty")[11] is None
    remote_child = next(r for r in ends if r[5] == "remote child")
    assert remote_child[1:5] == (0x1234, remote_child[2], 0x5678, True)
    # a span with no attributes when it started: a weak reference, read when mapped
    empty_start = next(r for r in starts if r[5] == "empty")
    assert type(empty_start[8]) is weakref.ref
    assert _records.attributes_of_start(empty_start[8]) is None
    # one entry per Resource, and the records, their attributes read, are what marshal takes
    assert len(known) == 2 and {r[14] for r in ends} == set(known)
    plain = _records.read_starts(starts)
    assert plain[starts.index(empty_start)][8] is None
    assert marshal.loads(marshal.dumps(plain + ends)) == plain + ends


@pytest.mark.parametrize("at_start", [{}, {"traceloop.workflow.name": "research"}])
def test_attributes_set_just_after_the_start_are_read_from_the_span_while_it_runs(
    at_start: dict[str, Any],
) -> None:
    # (Traceloop's decorators: no attributes at the start, or, with Traceloop's own
    # processor before spangraph's, the workflow's name; the kind just after)
    known: dict[int, Any] = {}
    tracer = TracerProvider().get_tracer("t")
    span = tracer.start_span("research.workflow", attributes=at_start)
    copies = [_records.py_start_record(span, known)]
    if _speedups is not None:
        copies.append(_speedups.start_record(span, known))
    span.set_attribute("traceloop.span.kind", "workflow")
    now = {**at_start, "traceloop.span.kind": "workflow"}
    for record in copies:
        assert _records.attributes_of_start(record[8]) == now
        assert _records.rebuild(record, known).attributes == now
        assert _records.read_starts([record])[0][8] == now
    # an event's copy is the span as at the event
    assert _records.snapshot(span, known)[8] == now
    assert _records.snapshot(tracer.start_span("bare"), known)[8] is None
    span.set_attribute("output.value", "set before the end")
    span.end()
    for record in copies:  # ended: its end has the final attributes, its start the copy
        assert _records.attributes_of_start(record[8]) == (at_start or None)
    del span
    gc.collect()
    for record in copies:  # gone: the copy
        assert _records.attributes_of_start(record[8]) == (at_start or None)
        assert _records.rebuild(record, known).attributes == at_start


def test_a_start_record_of_spangraphs_own_span_is_its_copy_alone() -> None:
    known: dict[int, Any] = {}
    span = TracerProvider().get_tracer("t").start_span("s", attributes={"spangraph.kind": "step"})
    records = [_records.py_start_record(span, known)]
    if _speedups is not None:
        records.append(_speedups.start_record(span, known))
    span.set_attribute("spangraph.state", "completed")
    for record in records:
        assert record[8] == {"spangraph.kind": "step"}
        assert _records.attributes_of_start(record[8]) == {"spangraph.kind": "step"}


@needs_c
def test_c_and_python_records_are_identical() -> None:
    c_known: dict[int, Any] = {}
    py_known: dict[int, Any] = {}
    for what, span in varied_spans():
        if what == _records.START:
            c, py = _speedups.start_record(span, c_known), _records.py_start_record(span, py_known)
        else:
            c, py = _speedups.end_record(span, c_known), _records.py_end_record(span, py_known)
        assert c == py
        assert [type(v) for v in c] == [type(v) for v in py]
    assert c_known == py_known


@needs_c
def test_c_version_refuses_what_is_not_an_sdk_span() -> None:
    class PublicOnly:  # a ReadableSpan look-alike without the SDK's private fields
        def __getattr__(self, name: str) -> Any:
            raise AttributeError(name)

    with pytest.raises(AttributeError):
        _speedups.start_record(PublicOnly(), {})
    with pytest.raises(TypeError):
        _speedups.end_record(PublicOnly())  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        _speedups.end_record(PublicOnly(), [])  # type: ignore[arg-type]


def test_spans_that_are_not_the_sdks_are_read_through_the_public_api() -> None:
    calls = varied_spans()
    sdk_span = next(s for w, s in calls if w == _records.END and s.name == "child ünïcode")

    class Wrapped:  # public properties only, as a ReadableSpan proxy would have
        def __init__(self, span: ReadableSpan) -> None:
            self._span = span

        def __getattr__(self, name: str) -> Any:
            if name.startswith("_"):
                raise AttributeError(name)
            return getattr(self._span, name)

    known: dict[int, Any] = {}
    assert _records.py_end_record(Wrapped(sdk_span), known) == _records.py_end_record(sdk_span, {})
    assert _records.py_start_record(Wrapped(sdk_span), known)[5] == "child ünïcode"


def test_known_resources_are_bounded() -> None:
    calls = varied_spans()
    span = next(s for w, s in calls if w == _records.END)
    known = {i: None for i in range(_records.MAX_RESOURCES)}
    for copy in (_records.py_end_record, _records.end_record):
        record = copy(span, known)
        assert record[14] == id(span.resource) and len(known) == _records.MAX_RESOURCES


def test_the_c_version_is_used_when_it_was_built() -> None:
    assert (importlib.util.find_spec("spangraph._speedups") is not None) == _records.SPEEDUPS
    if _records.SPEEDUPS:
        assert _records.start_record is _speedups.start_record


def test_the_c_extension_is_built_where_a_compiler_is_at_hand() -> None:
    headers = os.path.join(sysconfig.get_paths()["include"], "Python.h")
    if not (shutil.which(sysconfig.get_config_var("CC") or "cc") and os.path.exists(headers)):
        pytest.skip("no C compiler or Python headers here: the Python versions are used")
    assert _records.SPEEDUPS, "setup.py builds spangraph._speedups; it is missing"


BUFFERS = [_records.PyRecordBuffer] + ([_speedups.RecordBuffer] if _speedups else [])


def not_a_span() -> Any:
    return object()


@pytest.fixture(params=BUFFERS, ids=lambda cls: cls.__module__.rsplit(".", 1)[-1])
def buffer_class(request: pytest.FixtureRequest) -> Any:
    return request.param


def test_buffer_gathers_the_records_of_starts_and_ends(buffer_class: Any) -> None:
    calls = varied_spans()
    buffer = buffer_class({}, lambda what, span: (9, "fallback"))
    for what, span in calls:
        if what == _records.START:
            buffer.start(span, parent_context=None)  # as the SDK calls on_start
        else:
            buffer.end(span)
    assert len(buffer) == len(calls)
    records = buffer.take()
    known: dict[int, Any] = {}
    assert records == [
        (_records.py_start_record if w == _records.START else _records.py_end_record)(s, known)
        for w, s in calls
    ]
    assert len(buffer) == 0 and buffer.take() == []
    assert buffer.dropped == 0 and buffer.known == known


def test_buffer_is_bounded_and_counts_what_it_drops(buffer_class: Any) -> None:
    buffer = buffer_class({}, lambda what, span: (9,), None, 3)
    assert [buffer.add((4, i)) for i in range(5)] == [True, True, True, False, False]
    assert buffer.dropped == 2 and len(buffer) == 3
    assert buffer.take() == [(4, 0), (4, 1), (4, 2)]
    assert buffer.add((4, 5)) and buffer.take() == [(4, 5)]
    buffer.closed = True  # after shutdown
    assert not buffer.add((4, 6))
    buffer.end(varied_spans()[-1][1])
    assert buffer.dropped == 4 and len(buffer) == 0
    buffer.reset()  # a forked child starts afresh
    assert (buffer.dropped, buffer.closed, len(buffer)) == (0, False, 0)
    assert buffer.add((4, 7))


def test_buffer_wakes_an_idle_worker_once(buffer_class: Any) -> None:
    woken: list[int] = []
    buffer = buffer_class({}, lambda what, span: (9,), lambda: woken.append(1))
    buffer.add((4, 0))
    assert woken == []  # the worker is not waiting
    buffer.idle = True
    buffer.add((4, 1))
    buffer.add((4, 2))
    assert woken == [1] and not buffer.idle

    def broken() -> None:
        raise RuntimeError("wake failed")

    buffer = buffer_class({}, lambda what, span: (9,), broken)
    buffer.idle = True
    buffer.add((4, 0))  # never raises into the caller
    assert len(buffer) == 1


def test_buffer_never_raises_on_what_it_cannot_copy(buffer_class: Any) -> None:
    seen: list[tuple[int, Any]] = []

    def fallback(what: int, span: Any) -> tuple[Any, ...]:
        seen.append((what, span))
        return (what, "copied by the fallback")

    buffer = buffer_class({}, fallback)
    odd = not_a_span()
    buffer.start(odd)
    buffer.end(odd)
    assert seen == [(_records.START, odd), (_records.END, odd)]
    assert buffer.take() == [(0, "copied by the fallback"), (1, "copied by the fallback")]

    def failing(what: int, span: Any) -> tuple[Any, ...]:
        raise AttributeError("nothing to read")

    buffer = buffer_class({}, failing)
    buffer.start(odd)
    buffer.end(odd)
    assert (buffer.dropped, buffer.unreadable, len(buffer)) == (2, 2, 0)


def test_buffer_lets_an_interrupt_through(buffer_class: Any) -> None:
    """Only an ``Exception`` is kept from the caller: a Ctrl-C (or SystemExit) raised in
    the fallback copy or in waking the worker reaches the program, as anywhere else."""

    def interrupted(*args: Any) -> Any:
        raise KeyboardInterrupt

    buffer = buffer_class({}, interrupted)
    with pytest.raises(KeyboardInterrupt):
        buffer.start(not_a_span())
    buffer = buffer_class({}, lambda what, span: (9,), interrupted)
    buffer.idle = True
    with pytest.raises(KeyboardInterrupt):
        buffer.add((4, 0))
    assert len(buffer) == 1  # kept: it was accepted before the interrupt
    buffer.idle = True
    with pytest.raises(KeyboardInterrupt):
        buffer.end(varied_spans()[-1][1])
    assert len(buffer) == 2


@needs_c
def test_c_hot_path_objects_never_initialised_do_not_crash() -> None:
    assert _speedups.RecordQueue.__new__(_speedups.RecordQueue).start(object()) is None
    buffer = _speedups.RecordBuffer.__new__(_speedups.RecordBuffer)
    assert buffer.start(object()) is None and buffer.dropped == 1


@needs_c
def test_c_buffer_checks_its_arguments() -> None:
    with pytest.raises(TypeError):
        _speedups.RecordBuffer([], lambda w, s: None)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        _speedups.RecordBuffer({}, lambda w, s: None, None, 0)
    with pytest.raises(TypeError):
        _speedups.RecordBuffer({}, lambda w, s: None).start()


@needs_c
def test_c_records_are_left_out_of_the_garbage_collector() -> None:
    """Records hold no reference to anything that could refer back to them; left tracked,
    the ones a processor holds would be scanned by the program's collections."""
    import gc

    known: dict[int, Any] = {}
    for what, span in varied_spans():
        record = (_speedups.start_record if what == _records.START else _speedups.end_record)(
            span, known
        )
        assert not gc.is_tracked(record)
        for item in record:
            assert not gc.is_tracked(item)
            if isinstance(item, list):
                assert not any(gc.is_tracked(x) for x in item)


@needs_c
def test_c_buffer_never_initialized_drops_instead_of_crashing() -> None:
    buffer = _speedups.RecordBuffer.__new__(_speedups.RecordBuffer)
    assert len(buffer) == 0
    buffer.end(varied_spans()[-1][1])
    assert not buffer.add((4, 0))
    assert buffer.take() == [] and buffer.dropped == 2


def test_buffer_loses_nothing_between_threads_that_append_and_one_that_takes(
    buffer_class: Any,
) -> None:
    import threading

    buffer = buffer_class({}, lambda what, span: (what,), None, 1_000_000)
    provider = TracerProvider()

    class Processor(SpanProcessor):
        on_start = staticmethod(buffer.start)  # type: ignore[assignment]
        on_end = staticmethod(buffer.end)  # type: ignore[assignment]

    provider.add_span_processor(Processor())
    tracer = provider.get_tracer("t")
    taken: list[tuple[Any, ...]] = []
    done = threading.Event()

    def take() -> None:
        while not done.is_set():
            taken.extend(buffer.take())
        taken.extend(buffer.take())

    def make() -> None:
        for i in range(2000):
            with tracer.start_as_current_span("s", attributes={"i": i}):
                pass

    taker = threading.Thread(target=take)
    taker.start()
    makers = [threading.Thread(target=make) for _ in range(4)]
    for t in makers:
        t.start()
    for t in makers:
        t.join()
    done.set()
    taker.join()
    assert len(taken) == 2 * 4 * 2000 and buffer.dropped == 0
    ends = [r for r in taken if r[0] == _records.END]
    assert sorted(r[11]["i"] for r in ends) == sorted(list(range(2000)) * 4)


def test_rebuilt_spans_read_like_the_originals() -> None:
    """``rebuild`` gives the mapping, which reads spans through the public API, what the
    span held: for every kind of field, from START and END records alike."""
    known: dict[int, Any] = {}
    for what, span in varied_spans():
        record = _records.copy_record(what, span, known)
        assert record is not None
        again = _records.rebuild(record, known)
        assert again.name == span.name
        assert again.context.trace_id == span.context.trace_id
        assert again.context.span_id == span.context.span_id
        if span.parent is None:
            assert again.parent is None
        else:
            assert again.parent.span_id == span.parent.span_id
            assert again.parent.is_remote == span.parent.is_remote
        assert again.kind == span.kind
        assert again.start_time == span.start_time
        assert again.resource.attributes == span.resource.attributes
        if what == _records.END:
            assert dict(again.attributes) == dict(span.attributes)
            assert again.end_time == span.end_time
            assert again.status.status_code == span.status.status_code
            assert again.status.description == span.status.description
            assert [(e.name, e.timestamp, dict(e.attributes)) for e in again.events] == [
                (e.name, e.timestamp, dict(e.attributes)) for e in span.events
            ]
            assert [(ln.context.span_id, dict(ln.attributes)) for ln in again.links] == [
                (ln.context.span_id, dict(ln.attributes)) for ln in span.links
            ]


def test_a_start_record_holds_the_attributes_set_before_the_start() -> None:
    recorder = Recorder()
    provider = TracerProvider()
    provider.add_span_processor(recorder)
    with provider.get_tracer("t").start_as_current_span("s", attributes={"a": 1}) as span:
        span.set_attribute("late", 2)
    record = recorder.at_start["s"]
    assert dict(_records.rebuild(record, {}).attributes) == {"a": 1}


class Copier(SpanProcessor):
    """What the in-process processors do in on_start / on_end (QueueingSpanProcessor)."""

    def __init__(self) -> None:
        self.records: list[Any] = []

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        self.records.append(_records.copy_record(_records.START, span, _records.RESOURCES))

    def on_end(self, span: ReadableSpan) -> None:
        self.records.append(_records.copy_record(_records.END, span, _records.RESOURCES))


def test_processors_called_for_one_span_share_one_record() -> None:
    first, second = Copier(), Copier()
    provider = TracerProvider()
    provider.add_span_processor(first)
    provider.add_span_processor(second)
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("a", attributes={"x": 1}), tracer.start_as_current_span("b"):
        pass
    assert len(first.records) == len(second.records) == 4
    for mine, theirs in zip(first.records, second.records, strict=True):
        assert mine is theirs  # copied once, by the first processor
    # and each span's start and end have their own records
    assert [(r[0], r[5]) for r in first.records] == [(0, "a"), (0, "b"), (1, "b"), (1, "a")]
    assert first.records[2][11] is None and first.records[3][11] == {"x": 1}


def test_a_record_is_not_given_for_another_known_resources_dict() -> None:
    provider = TracerProvider()
    span = provider.get_tracer("t").start_span("s")
    mine: dict[int, Any] = {}
    record = _records.copy_record(_records.START, span, mine)
    assert record is not None and record[9] in mine
    other: dict[int, Any] = {}
    again = _records.copy_record(_records.START, span, other)
    assert again is not record and again[9] in other
    span.end()


def test_copy_record_never_raises() -> None:
    assert _records.copy_record(_records.END, object(), {}) is None


def test_processors_let_go_of_the_spans_they_queue() -> None:
    """The queue holds the spans' records, not the spans: a span is freed at its end even
    while its items wait for a store that is not there."""
    import gc
    import weakref

    from spangraph.processors.graph import GraphSpanProcessor
    from spangraph.processors.live import LiveEventProcessor

    class Nowhere:  # a store and a publisher never reached: the items stay in the lists
        def write(self, batch: Any) -> None:
            raise AssertionError("not sent")

        def publish(self, messages: Any) -> None:
            raise AssertionError("not sent")

    provider = TracerProvider()
    graph = GraphSpanProcessor(Nowhere())  # type: ignore[arg-type]
    live = LiveEventProcessor(Nowhere())  # type: ignore[arg-type]
    queued: dict[str, list[Any]] = {"graph": [], "live": []}
    graph._put = queued["graph"].append  # what on_start / on_end put, kept here
    live._put = queued["live"].append
    provider.add_span_processor(graph)
    provider.add_span_processor(live)
    try:
        tracer = provider.get_tracer("t")
        span = tracer.start_span("held")
        span.end()
        freed = weakref.ref(span)
        del span
        tracer.start_span("another").end()  # the copier lets go of its last span too
        gc.collect()
        assert freed() is None
        for items in queued.values():
            assert [(item[0], item[1][5]) for item in items] == [
                (0, "held"),
                (1, "held"),
                (0, "another"),
                (1, "another"),
            ]
    finally:
        provider.shutdown()


def test_no_record_for_a_resource_the_full_table_lacks() -> None:
    """Past MAX_RESOURCES Resources a record could not name its Resource: the processors
    are then given no record, and queue the span itself."""
    full = {-i: None for i in range(1, _records.MAX_RESOURCES + 1)}
    span = (
        TracerProvider(resource=Resource.create({"service.name": "late"}))
        .get_tracer("t")
        .start_span("s")
    )
    assert _records.copy_record(_records.START, span, full) is None
    span.end()
    assert _records.copy_record(_records.END, span, full) is None
    assert len(full) == _records.MAX_RESOURCES  # nothing added past the bound


def test_a_processor_past_the_resource_bound_queues_the_span_and_keeps_its_service() -> None:
    """With its Resource table full, a processor queues the span itself, and the worker
    maps it with its Resource: the node keeps its service name."""
    from spangraph.processors.graph import GraphSpanProcessor

    class Nowhere:
        def write(self, batch: Any) -> None:
            raise AssertionError("not sent")

    graph = GraphSpanProcessor(Nowhere())  # type: ignore[arg-type]
    queued: list[Any] = []
    graph._put = queued.append
    graph._known = {-i: None for i in range(1, _records.MAX_RESOURCES + 1)}
    provider = TracerProvider(resource=Resource.create({"service.name": "late"}))
    provider.add_span_processor(graph)
    try:
        provider.get_tracer("t").start_span("s").end()
        assert len(queued) == 2 and not any(isinstance(item, tuple) for _, item in queued)
        batch, count = graph._prepare(queued)
        assert count == 2
        rows = [row for rows in batch.ends.values() for row in rows]
        assert [row["props"]["service"] for row in rows] == ["late"]
    finally:
        provider.shutdown()


def _processors() -> tuple[Any, Any, dict[str, list[Any]]]:
    """A graph and a live processor whose queue items are kept in lists."""
    from spangraph.processors.graph import GraphSpanProcessor
    from spangraph.processors.live import LiveEventProcessor

    class Nowhere:
        def write(self, batch: Any) -> None:
            raise AssertionError("not sent")

        def publish(self, messages: Any) -> None:
            raise AssertionError("not sent")

    graph = GraphSpanProcessor(Nowhere())  # type: ignore[arg-type]
    live = LiveEventProcessor(Nowhere())  # type: ignore[arg-type]
    queued: dict[str, list[Any]] = {"graph": [], "live": []}
    graph._put = queued["graph"].append
    live._put = queued["live"].append
    return graph, live, queued


def _run_spans(processors: tuple[Any, ...]) -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": "hot"}))
    for processor in processors:
        provider.add_span_processor(processor)
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("a", attributes={"x": 1}) as a:
        a.add_event("e", {"k": "v"})
        with tracer.start_as_current_span("b"):
            pass


@needs_c
def test_c_hot_path_queues_what_the_python_one_does() -> None:
    """on_start/on_end are one C call each (RecordQueue), and queue the same items as the
    Python methods: (what, record) for the graph, (what, record, time) for live."""
    graph, live, queued = _processors()
    assert isinstance(graph.on_start.__self__, _speedups.RecordQueue)
    assert isinstance(live.on_end.__self__, _speedups.RecordQueue)
    _run_spans((graph, live))
    py_graph, py_live, py_queued = _processors()
    for processor in (py_graph, py_live):  # the Python methods of the class
        processor.on_start = partial(type(processor).on_start, processor)
        processor.on_end = partial(type(processor).on_end, processor)
    _run_spans((py_graph, py_live))

    def comparable(items: list[Any]) -> list[Any]:
        # ids, times and resource keys differ from run to run: kinds, names, attributes
        # (a start's attributes read as the worker reads them: "b" had none, its span is gone)
        return [
            (
                i[0],
                i[1][0],
                i[1][5],
                _records.attributes_of_start(i[1][8]) if i[0] == 0 else i[1][11],
                len(i),
            )
            for i in items
        ]

    assert comparable(queued["graph"]) == comparable(py_queued["graph"])
    assert comparable(queued["live"]) == comparable(py_queued["live"])
    assert [len(i) for i in queued["graph"]] == [2, 2, 2, 2]
    for item in queued["live"]:  # its start time, or its end time
        assert item[2] == item[1][7 if item[0] == 0 else 8]
    for mine, theirs in zip(queued["graph"], queued["live"], strict=True):
        assert mine[1] is theirs[1]  # one copy for both processors
    for processor in (graph, live, py_graph, py_live):
        processor.shutdown()


@needs_c
def test_c_hot_path_hands_the_unusual_to_python_and_never_raises() -> None:
    graph, live, queued = _processors()

    class NotTheSdks:  # no copy can read it: the span itself is queued, as in Python
        name = "foreign"

    foreign = NotTheSdks()
    graph.on_start(foreign)
    assert queued["graph"] == [(0, foreign)]
    span = TracerProvider().get_tracer("t").start_span("s")
    graph._known = {-i: None for i in range(1, _records.MAX_RESOURCES + 1)}  # table full
    graph.on_start(span)
    assert queued["graph"][1] == (0, span)  # _known is read at each call, as in Python

    def broken(item: Any) -> bool:
        raise RuntimeError("a put that fails")

    live._put = broken
    live.on_start(span)  # swallowed: never into user code
    span.end()
    live.on_end(span)
    graph.shutdown()
    live.shutdown()


# -- the C hot path when Python code runs in the middle of a copy -------------------------
#
# Reading a span runs Python code (the SDK's Event.name is a property; a span of another
# kind may have any): a profiler thread walking the heap, a finalizer, a signal handler,
# code that re-initialises the object doing the copy. Cases that crashed run in a child.


def _run_child(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **env},
    )


@needs_c
def test_a_record_being_built_is_never_seen_half_built() -> None:
    """The record and its events list were tracked by the collector while their items
    were still NULL: code walking gc.get_objects() then (here the event's name property,
    standing for a memory profiler's thread) crashed the program (signal 11)."""
    child = _run_child(
        """
        import gc
        from opentelemetry.sdk.trace import Event, TracerProvider
        from spangraph import _speedups

        class ProfiledEvent(Event):
            @property
            def name(self):
                for o in gc.get_objects():
                    if type(o) is tuple and len(o) == 15:
                        [type(item) for item in o]  # takes every item
                return super().name

        span = TracerProvider().get_tracer("t").start_span("s")
        span._events.append(ProfiledEvent("e", {}, 1))
        span.end()
        record = _speedups.end_record(span, {})
        assert record[12][0][0] == "e", record
        print("ok")
        """
    )
    assert (child.returncode, child.stdout.strip()) == (0, "ok"), child.stderr[-2000:]


@needs_c
def test_a_buffer_re_initialised_during_a_copy_keeps_working() -> None:
    """The copy used the buffer's Resource table as a borrowed reference: re-initialising
    the buffer meanwhile freed it, and the copy wrote into freed memory (a double free,
    or a hang)."""
    child = _run_child(
        """
        from opentelemetry.sdk.trace import TracerProvider
        from spangraph import _speedups

        real = TracerProvider().get_tracer("t").start_span("s")

        def fallback(what, span):
            return (what,)

        class Span:
            _context = real._context
            _parent = None
            _name = "n"
            _kind = real._kind
            _start_time = 1
            _attributes = None

            @property
            def _resource(self):
                buf.__init__({}, fallback)  # lets go of the old table
                return object()

        buf = _speedups.RecordBuffer({str(i): i for i in range(100)}, fallback)
        for _ in range(50):
            buf.start(Span())
        assert len(buf.take()) == 1  # each __init__ began a new list
        print("ok")
        """,
        PYTHONMALLOC="malloc",
    )
    assert (child.returncode, child.stdout.strip()) == (0, "ok"), child.stderr[-2000:]


class _Nowhere:
    def write(self, batch: Any) -> None:
        raise AssertionError("nothing is written")

    def publish(self, messages: Any) -> None:
        raise AssertionError("nothing is published")


def _python_methods(processor: Any) -> None:
    """The processor's Python on_start/on_end, as where the extension was not built."""
    processor.on_start = partial(type(processor).on_start, processor)
    processor.on_end = partial(type(processor).on_end, processor)


@pytest.mark.parametrize("use_c", [pytest.param(True, marks=needs_c), False], ids=["c", "py"])
def test_a_span_started_by_another_thread_mid_copy_gets_its_own_record(use_c: bool) -> None:
    """The record shared by the two processors was cached in four steps, each letting go
    of an old value (which can run a finalizer, and switch threads): a span started by
    another thread at that moment was given the other span's record by the second
    processor."""
    from spangraph.processors.graph import GraphSpanProcessor
    from spangraph.processors.live import LiveEventProcessor

    go, b_mid, a_mid, b_done = (threading.Event() for _ in range(4))
    graph, live = GraphSpanProcessor(_Nowhere()), LiveEventProcessor(_Nowhere())  # type: ignore[arg-type]
    queued_graph: list[Any] = []
    queued_live: list[Any] = []
    graph._put, live._put = queued_graph.append, queued_live.append  # type: ignore[method-assign,assignment]
    if not use_c:
        _python_methods(graph)
        _python_methods(live)

    class Between(SpanProcessor):  # orders the two threads between the processors
        def on_start(self, span: Any, parent_context: Any = None) -> None:
            if span.name == "U":
                b_mid.set()
                a_mid.wait(5)
            if span.name == "S":
                a_mid.set()
                b_done.wait(5)

    provider = TracerProvider(resource=Resource.create({"service.name": "s"}))
    for processor in (graph, Between(), live):
        provider.add_span_processor(processor)
    tracer = provider.get_tracer("t")
    first = tracer.start_span("T", attributes={"a": 1})
    first.end()  # the cache holds T's span now
    weakref.finalize(first._attributes, lambda: (go.set(), b_mid.wait(5)))
    del first

    def other_thread() -> None:
        go.wait(5)
        tracer.start_span("U")
        b_done.set()

    thread = threading.Thread(target=other_thread)
    thread.start()
    tracer.start_span("S")
    thread.join(10)
    try:
        for queued in (queued_graph, queued_live):
            assert [item[1][5] for item in queued if item[0] == _records.START] == ["T", "U", "S"]
    finally:
        graph.shutdown()
        live.shutdown()


@pytest.mark.parametrize("use_c", [pytest.param(True, marks=needs_c), False], ids=["c", "py"])
def test_an_interrupt_during_a_processors_copy_reaches_the_program(use_c: bool) -> None:
    """A Ctrl-C while the C hot path read the span (the SDK's Event.name is a property)
    was cleared there: span.end() returned as if nothing had happened."""
    from opentelemetry.sdk.trace import Event

    from spangraph.processors.graph import GraphSpanProcessor

    class InterruptedEvent(Event):
        fired = False

        @property
        def name(self) -> str:
            if not InterruptedEvent.fired:
                InterruptedEvent.fired = True
                raise KeyboardInterrupt
            return super().name

    graph = GraphSpanProcessor(_Nowhere())  # type: ignore[arg-type]
    graph._put = [].append  # type: ignore[method-assign,assignment]
    if not use_c:
        _python_methods(graph)
    provider = TracerProvider()
    provider.add_span_processor(graph)
    span = provider.get_tracer("t").start_span("s")
    span._events.append(InterruptedEvent("e", {}, 1))  # type: ignore[attr-defined]
    try:
        with pytest.raises(KeyboardInterrupt):
            span.end()
    finally:
        graph.shutdown()


@needs_c
def test_c_hot_path_takes_the_span_as_a_keyword() -> None:
    """``on_start(span=...)`` raised TypeError into the caller (the Python one takes it)."""
    from spangraph.processors.graph import GraphSpanProcessor

    graph = GraphSpanProcessor(_Nowhere())  # type: ignore[arg-type]
    queued: list[Any] = []
    graph._put = queued.append  # type: ignore[method-assign,assignment]
    span = TracerProvider().get_tracer("t").start_span("s")
    try:
        graph.on_start(span=span)  # type: ignore[call-arg]
        span.end()
        graph.on_end(span=span)  # type: ignore[call-arg]
        assert [item[0] for item in queued] == [_records.START, _records.END]
        buffer = _speedups.RecordBuffer({}, lambda what, span: (what,))
        buffer.start(span=span)
        buffer.end(span=span)
        assert len(buffer.take()) == 2
    finally:
        graph.shutdown()


class _Kind:
    _value_ = 1


class _Status:
    _status_code = _Kind()
    _description = None


def _odd_span(**fields: Any) -> Any:
    import types

    plain = {
        "_context": (1, 2, False), "_parent": None, "_name": "n", "_kind": _Kind(),
        "_start_time": 5, "_resource": object(), "_attributes": None, "_end_time": 9,
        "_status": _Status(), "_events": [], "_links": [],
    }  # fmt: skip
    return types.SimpleNamespace(**{**plain, **fields})


@needs_c
def test_c_records_let_an_interrupt_through_and_keep_no_reference() -> None:
    """Three paths of the C copy lost a KeyboardInterrupt raised by the span's own
    objects (reading an events list's deque, the truth of a start time), or kept a
    reference to the record it had made for good."""

    class Events:  # a BoundedList-like whose deque cannot be read
        @property
        def _dq(self) -> Any:
            raise KeyboardInterrupt

        def __len__(self) -> int:
            return 0

    with pytest.raises(KeyboardInterrupt):
        _speedups.end_record(_odd_span(_events=Events()), {})

    class Start(int):
        def __bool__(self) -> bool:
            raise KeyboardInterrupt

    class Owner:
        def __init__(self) -> None:
            self._known: dict[Any, Any] = {}
            self.items: list[Any] = []

        def _put(self, item: Any) -> None:
            self.items.append(item)

        def _queue_span(self, what: Any, span: Any) -> None:
            self.items.append((what, span))

    with pytest.raises(KeyboardInterrupt):
        _speedups.RecordQueue(Owner(), True).start(_odd_span(_start_time=Start(5)))

    span = _odd_span()
    armed = False

    class Key:  # a key of the owner's known resources that collides with the span's
        def __hash__(self) -> int:
            return hash(id(span._resource))

        def __eq__(self, other: object) -> bool:
            if armed:
                raise KeyboardInterrupt
            return False

    owner = Owner()
    owner._known = {Key(): None}
    queue = _speedups.RecordQueue(owner)
    queue.start(span)
    record = owner.items[-1][1]
    before = sys.getrefcount(record)
    armed = True
    for _ in range(3):
        with pytest.raises(KeyboardInterrupt):
            queue.start(span)
    armed = False
    queue.start(_odd_span(_name="other"))  # the module's one-record cache moves on
    owner.items.clear()
    assert before == 4  # the owner's list, the module's cache, ``record``, the argument
    assert sys.getrefcount(record) == 2  # ``record`` and the argument (was 5: one a call)


def test_a_full_buffer_still_takes_the_ends_of_runs(buffer_class: Any) -> None:
    """A burst that filled the offload buffer dropped the run's own end with the rest:
    the run never ended, in the graph or for live subscribers."""
    from conftest import root_workflow_step

    root, wf, step = root_workflow_step()
    buffer = buffer_class({}, lambda what, span: (9,), None, 2)
    for span in (step, step):
        buffer.end(span)
    assert len(buffer) == 2  # full
    buffer.start(wf)
    buffer.end(step)
    assert buffer.dropped == 2  # a start, an end that ends no run
    buffer.end(wf)
    buffer.end(root)
    assert buffer.dropped == 2 and len(buffer) == 4
    assert [r[5] for r in buffer.take()[2:]] == ["wf", "root"]
    # up to a reserve
    for _ in range(2 + _records.RESERVE):
        buffer.end(step)
    for _ in range(_records.RESERVE + 1):
        buffer.end(wf)
    assert len(buffer) == 2 + _records.RESERVE
    assert buffer.dropped == 2 + _records.RESERVE + 1


@needs_c
def test_read_starts_in_c_reads_what_the_python_one_does() -> None:
    known: dict[int, Any] = {}
    tracer = TracerProvider().get_tracer("t")
    still_open = tracer.start_span("open", attributes={"a": 1})
    gone = tracer.start_span("gone")
    own = tracer.start_span("own", attributes={"spangraph.kind": "step"})
    ended = tracer.start_span("ended", attributes={"b": 2})
    records = [_speedups.start_record(span, known) for span in (still_open, gone, own, ended)]
    gone.end()
    records += [_speedups.end_record(gone, known), (2, 7)]  # (an END, a flush of offload)
    ended.end()  # (still there: its copy)
    gone_ref = weakref.ref(gone)
    del gone
    gc.collect()
    assert gone_ref() is None
    still_open.set_attribute("traceloop.span.kind", "workflow")
    assert _speedups.read_starts(records, _records.attributes_of_start) == (
        _records.py_read_starts(records)
    )
    out = _records.read_starts(records)
    assert out[0][8] == {"a": 1, "traceloop.span.kind": "workflow"}
    assert out[1][8] is None and out[2][8] == {"spangraph.kind": "step"}
    assert out[3][8] == {"b": 2}
    assert out[4] is records[4] and out[5] is records[5]
    assert marshal.loads(marshal.dumps(out)) == out

    def broken(value: Any) -> Any:
        raise RuntimeError("cannot read")

    with pytest.raises(RuntimeError):  # (attributes_of_start never raises)
        _speedups.read_starts(records, broken)
    with pytest.raises(TypeError):
        _speedups.read_starts(tuple(records), _records.attributes_of_start)


@needs_c
def test_read_starts_in_c_holds_what_it_reads_while_python_code_runs() -> None:
    # read() is Python code: it can change the list, or find the list being built
    known: dict[int, Any] = {}
    tracer = TracerProvider().get_tracer("t")
    spans = [tracer.start_span(f"s{i}", attributes={"i": i}) for i in range(3)]
    records = [_speedups.start_record(span, known) for span in spans]

    def clears(value: Any) -> Any:
        records.clear()
        gc.collect()
        return _records.attributes_of_start(value)

    out = _speedups.read_starts(records, clears)
    assert [r[8] for r in out] == [{"i": 0}, {"i": 1}, {"i": 2}]

    records = [_speedups.start_record(span, known) for span in spans]

    def walks(value: Any) -> Any:
        for seen in gc.get_objects():
            if type(seen) is list:
                list(seen)  # (an item not yet set would crash this)
        return _records.attributes_of_start(value)

    assert len(_speedups.read_starts(records, walks)) == 3
    assert gc.is_tracked(_speedups.read_starts(records, _records.attributes_of_start))
