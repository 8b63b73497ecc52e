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


def test_nested_capture_is_private() -> None:
    with capture() as outer:
        with spangraph.step("a"):
            pass
        with capture() as inner, spangraph.step("b"):
            pass
        with spangraph.step("c"):
            pass
    assert [s.name for s in outer.spans] == ["a", "c"]
    assert [s.name for s in inner.spans] == ["b"]


def test_given_provider_is_used_and_not_shut_down() -> None:
    provider = TracerProvider()
    with capture(provider) as cap, spangraph.step("x"):
        pass
    assert [s.name for s in cap.spans] == ["x"]
    # still usable: a span on it records
    span = provider.get_tracer("t").start_span("later")
    assert span.is_recording()
    span.end()
    assert [s.name for s in cap.spans] == ["x", "later"]
    provider.shutdown()


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
