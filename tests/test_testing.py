"""spangraph.testing: the capture helper users write their own tests with."""

from __future__ import annotations

import threading

import pytest
from opentelemetry.sdk.trace import TracerProvider

import spangraph
from spangraph import _state
from spangraph import semconv as sc
from spangraph.testing import CapturedEvent, SpanCapture, capture


def _run() -> None:
    with spangraph.workflow("wf") as run:
        run.paused(reason="human")
        with spangraph.step("one") as s:
            s.event("custom", n=1)
        with spangraph.step("two") as s:
            s.event("custom", n=2)
        run.resumed()


def test_capture_collects_spans_in_end_order() -> None:
    with capture() as cap:
        assert isinstance(cap, SpanCapture)
        assert cap.spans == []
        _run()
    assert [s.name for s in cap.spans] == ["one", "two", "wf"]


def test_spans_is_a_copy() -> None:
    with capture() as cap:
        _run()
    cap.spans.clear()
    assert len(cap.spans) == 3


def test_find_by_name_and_kind() -> None:
    with capture() as cap:
        _run()
    assert [s.name for s in cap.find("one")] == ["one"]
    assert cap.find("nope") == []
    assert [s.name for s in cap.find(kind=sc.KIND_STEP)] == ["one", "two"]
    assert [s.name for s in cap.find(kind=sc.KIND_WORKFLOW)] == ["wf"]
    assert [s.name for s in cap.find("one", kind=sc.KIND_STEP)] == ["one"]
    assert cap.find("one", kind=sc.KIND_WORKFLOW) == []
    assert len(cap.find()) == 3


def test_events_in_time_order_with_span_info() -> None:
    with capture() as cap:
        _run()
    events = cap.events()
    assert [e.name for e in events] == [
        "workflow.started",
        "workflow.paused",
        "step.started",
        "custom",
        "step.completed",
        "step.started",
        "custom",
        "step.completed",
        "workflow.resumed",
        "workflow.completed",
    ]
    assert cap.event_names() == [e.name for e in events]
    times = [e.time_ns for e in events]
    assert times == sorted(times)
    first_custom = cap.events("custom")[0]
    assert isinstance(first_custom, CapturedEvent)
    assert first_custom.attributes == {"n": 1}
    assert first_custom.span_name == "one"
    assert first_custom.span_kind == sc.KIND_STEP
    one = cap.find("one")[0]
    assert first_custom.span_id == format(one.context.span_id, "016x")
    assert len(first_custom.span_id) == 16
    assert cap.events("workflow.paused")[0].span_kind == sc.KIND_WORKFLOW


def test_events_filter_exact_and_prefix() -> None:
    with capture() as cap:
        _run()
    assert [e.span_name for e in cap.events("custom")] == ["one", "two"]
    assert [e.name for e in cap.events("step.*")] == [
        "step.started",
        "step.completed",
        "step.started",
        "step.completed",
    ]
    assert {e.name for e in cap.events("workflow.*")} == {
        "workflow.started",
        "workflow.paused",
        "workflow.resumed",
        "workflow.completed",
    }
    # an exact name is not a prefix, and a prefix needs the dot
    assert cap.events("step") == []
    assert cap.events("step.start") == []
    assert cap.events("work*") == []
    assert cap.events("nothing.*") == []


def test_has_event_with_attributes() -> None:
    with capture() as cap:
        _run()
    assert cap.has_event("custom")
    assert cap.has_event("custom", n=2)
    assert not cap.has_event("custom", n=3)
    assert not cap.has_event("custom", n=1, other="x")
    assert cap.has_event("workflow.paused", reason="human")
    assert cap.has_event("step.*", attempt=1)
    assert not cap.has_event("never")


def test_has_event_checks_an_attribute_called_name() -> None:
    """``event(name, /, **attributes)`` takes an attribute ``name``; ``has_event`` raised
    TypeError ("multiple values for argument 'name'") when asked for it."""
    with capture() as cap, spangraph.workflow("chat"):
        spangraph.event("message.appended", role="user", name="alice")
    assert cap.has_event("message.appended", name="alice")
    assert not cap.has_event("message.appended", name="bob")


def test_clear() -> None:
    with capture() as cap:
        _run()
        assert cap.spans
        cap.clear()
        assert cap.spans == [] and cap.events() == [] and cap.event_names() == []
        with spangraph.step("after"):
            pass
    assert [s.name for s in cap.spans] == ["after"]


def test_tracer_restored_after_block() -> None:
    before = _state.tracer
    with capture():
        assert _state.tracer is not before
    assert _state.tracer is before
    with pytest.raises(RuntimeError), capture():
        raise RuntimeError("inside")
    assert _state.tracer is before


def test_spans_outside_block_are_not_captured() -> None:
    with capture() as cap:
        pass
    with spangraph.step("outside"):
        pass
    assert cap.spans == []


def test_nested_capture_gets_its_spans_and_the_outer_one_all() -> None:
    before = _state.tracer
    with capture() as outer:
        with spangraph.step("a"):
            pass
        with capture() as inner, spangraph.step("b"):
            pass
        with spangraph.step("c"):
            pass
        given = TracerProvider()
        with capture(given) as inner_given, spangraph.step("d"):
            pass
    assert [s.name for s in outer.spans] == ["a", "b", "c", "d"]
    assert [s.name for s in inner.spans] == ["b"]
    assert [s.name for s in inner_given.spans] == ["d"]
    assert _state.tracer is before
    given.shutdown()


def test_given_provider_is_used_and_not_shut_down() -> None:
    provider = TracerProvider()
    with capture(provider) as cap, spangraph.step("x"):
        pass
    assert [s.name for s in cap.spans] == ["x"]
    # still usable: a span on it records, and the capture has stopped capturing
    span = provider.get_tracer("t").start_span("later")
    assert span.is_recording()
    span.end()
    assert [s.name for s in cap.spans] == ["x"]
    processors = provider._active_span_processor._span_processors
    with capture(provider) as again, spangraph.step("y"):
        pass
    assert [s.name for s in again.spans] == ["y"] and [s.name for s in cap.spans] == ["x"]
    assert provider._active_span_processor._span_processors == processors  # nothing added
    provider.shutdown()


def test_captures_open_in_two_threads_each_get_all_spans_and_a_warning() -> None:
    """The tracer is process-wide: a capture cannot tell whose thread a span is from, so
    both get every span made while both are open (none is lost to the other), and the
    second one warns."""
    opened, go, made, done = (threading.Event() for _ in range(4))
    seen: list[str] = []

    def other() -> None:
        with capture() as cap:
            with spangraph.step("before"):
                pass
            opened.set()
            go.wait(10)
            with spangraph.step("theirs"):
                pass
            made.set()
            done.wait(10)
        seen.extend(s.name for s in cap.spans)

    thread = threading.Thread(target=other)
    thread.start()
    assert opened.wait(10)
    with (
        pytest.warns(RuntimeWarning, match="capture is open in another thread"),
        capture() as mine,
    ):
        go.set()
        assert made.wait(10)
        with spangraph.step("mine"):
            pass
        done.set()
        thread.join(10)
    assert [s.name for s in mine.spans] == ["theirs", "mine"]
    assert seen == ["before", "theirs", "mine"]


def test_has_event_compares_values_as_recorded() -> None:
    with capture() as cap, spangraph.step("s"):
        spangraph.event("e", items=[1, 2], config={"k": "v"}, none=None)
    assert cap.has_event("e", items=[1, 2])
    assert cap.has_event("e", items=(1, 2))
    assert cap.has_event("e", config={"k": "v"})
    assert cap.has_event("e", none=None)
    assert not cap.has_event("e", items=[2, 1])


def test_capture_is_thread_safe() -> None:
    def work() -> None:
        for _ in range(50):
            with spangraph.step("t"):
                pass

    with capture() as cap:
        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
    assert len(cap.find("t")) == 200


def test_force_flush_is_true() -> None:
    assert SpanCapture().force_flush() is True


def test_a_span_of_an_earlier_capture_that_ends_later_is_not_the_later_ones() -> None:
    """A generator step left half-consumed by one test ends (collected) during the next
    test's capture: before, the next capture got it."""
    import gc

    @spangraph.step
    def numbers():  # type: ignore[no-untyped-def]
        yield 1
        yield 2

    with capture() as first:
        gen = numbers()
        next(gen)
    with capture() as second:
        del gen
        gc.collect()
        with spangraph.step("second's own"):
            pass
    assert [s.name for s in second.spans] == ["second's own"]
    assert first.spans == []  # it ended after its capture closed


def test_a_configure_inside_a_capture_is_kept_after_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Before, the capture put back the tracer it found, and spans after the block went
    nowhere instead of to the provider configure() was given."""
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        with capture() as cap:
            with pytest.warns(RuntimeWarning, match="inside spangraph.testing.capture"):
                spangraph.configure(
                    tracer_provider=provider, graph=False, live=False, home=str(tmp_path)
                )
            with spangraph.step("inside"):
                pass
        with spangraph.step("after"):
            pass
        assert [s.name for s in exporter.get_finished_spans()] == ["inside", "after"]
        # before, the capture got nothing once configure() had run (an application's
        # main() calling it): a test asserting on it saw an empty run
        assert [s.name for s in cap.spans] == ["inside"]
    finally:
        spangraph.shutdown()
        provider.shutdown()


def test_threads_carry_the_run_without_configure(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, a step run in a ThreadPoolExecutor inside a capture (no configure() in
    the test) was captured without its parent and run: a tree unlike the program's."""
    from concurrent.futures import ThreadPoolExecutor

    from opentelemetry.instrumentation.threading import ThreadingInstrumentor

    from spangraph import semconv as sc

    assert spangraph._sdk.current() is None
    # as in a fresh test process (an earlier configure() in this one instrumented threads)
    instrumentor = ThreadingInstrumentor()
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()
    monkeypatch.setattr(spangraph._sdk, "_threading_instrumented", False)

    @spangraph.step
    def in_thread(i: int) -> int:
        return i

    with capture() as cap:
        with spangraph.workflow("w") as run, ThreadPoolExecutor(2) as pool:
            assert list(pool.map(in_thread, range(2))) == [0, 1]
        started = threading.Thread(target=in_thread, args=(5,))
        with spangraph.workflow("w2") as run2:
            started.start()
            started.join()
    [workflow] = cap.find("w")
    steps = cap.find("in_thread")
    assert len(steps) == 3
    for step in steps[:2]:
        assert step.parent is not None and step.parent.span_id == workflow.context.span_id
        assert (step.attributes or {})[sc.WORKFLOW_ID] == run.workflow_id
    assert (steps[2].attributes or {})[sc.WORKFLOW_ID] == run2.workflow_id


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_SDK_DISABLED": "true"},
        {"OTEL_TRACES_SAMPLER": "always_off"},
        {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"},
        {"OTEL_SPAN_EVENT_COUNT_LIMIT": "0"},
    ],
    ids=["disabled", "always-off", "ratio-0", "no-events"],
)
def test_the_environment_of_the_program_does_not_empty_a_capture(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Settings meant for the program (often set in CI) left a capture empty, and a test
    asserting that something is *not* there passed for nothing."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with capture() as cap, spangraph.workflow("wf"):
        spangraph.event("hello", x=1)
    assert [s.name for s in cap.spans] == ["wf"]
    assert cap.has_event("hello", x=1)


def test_a_closed_capture_is_not_kept_by_its_spans_that_never_ended() -> None:
    """A span that started in a capture and never ended (a thread that entered a step
    and died) kept the capture, all its spans and its provider alive for good."""
    import gc
    import weakref

    from spangraph.testing import _FAN_OUT

    refs = []
    for _ in range(3):
        with capture() as cap:
            with spangraph.step("ends"):
                pass
            thread = threading.Thread(target=lambda: spangraph.step("dangling").__enter__())
            thread.start()
            thread.join()
        refs.append(weakref.ref(cap))
        del cap
    gc.collect()
    assert [r() for r in refs] == [None, None, None]
    assert not _FAN_OUT._started
