"""LiveEventProcessor end to end: real Redis Pub/Sub subscribers and streams, watching
workflows while they run."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest
import redis
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
)

import spangraph
from conftest import AT_TRACELOOP_START, configure_on, paused_burst, traceloop_workflow
from spangraph.embedded import ServerInfo
from spangraph.processors import LiveEventProcessor, RedisPublisher
from spangraph.processors import live as live_module
from spangraph.processors.live import project_channel, stream_key, workflow_channel

KEYS = [
    "type", "seq", "workflow_id", "project_id", "trace_id", "span_id", "parent_span_id",
    "kind", "name", "timestamp", "time_unix_nano", "attributes", "service", "env",
]  # fmt: skip


class Listener:
    """A real Pub/Sub subscriber, subscribed (confirmed by the server) on creation."""

    def __init__(self, client: redis.Redis, *channels: str) -> None:
        self.pubsub = client.pubsub()
        self.pubsub.subscribe(*channels)
        confirmed, deadline = 0, time.monotonic() + 5
        while confirmed < len(channels):
            assert time.monotonic() < deadline, "subscription not confirmed"
            message = self.pubsub.get_message(timeout=1)
            if message and message["type"] == "subscribe":
                confirmed += 1
        self.received: list[tuple[str, dict[str, Any], bytes]] = []

    def until(self, done: Callable[[dict[str, Any]], bool], timeout: float = 10) -> list[dict]:
        """Read messages until one satisfies ``done``; all messages read so far."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = self.pubsub.get_message(timeout=0.1)
            if not message or message["type"] != "message":
                continue
            data = json.loads(message["data"])
            self.received.append((message["channel"].decode(), data, message["data"]))
            if done(data):
                return self.messages()
        raise AssertionError(f"timed out; received {[m['type'] for m in self.messages()]}")

    def messages(self, channel: str | None = None) -> list[dict[str, Any]]:
        return [m for c, m, _ in self.received if channel is None or c == channel]

    def close(self) -> None:
        self.pubsub.close()


def workflow_ended(data: dict[str, Any]) -> bool:
    return data["type"] == "span.ended" and data["kind"] == "workflow"


@pytest.fixture
def listen(redis_client: redis.Redis) -> Iterator[Callable[..., Listener]]:
    made: list[Listener] = []

    def make(*channels: str) -> Listener:
        listener = Listener(redis_client, *channels)
        made.append(listener)
        return listener

    yield make
    for listener in made:
        listener.close()


def test_messages_are_numbered_and_shaped_as_designed(
    sg: spangraph.Spangraph, listen: Callable[..., Listener], redis_client: redis.Redis
) -> None:
    workflow_id = f"wf-{uuid.uuid4()}"
    project = sg.settings.project
    listener = listen(workflow_channel(workflow_id), project_channel(project))

    with spangraph.workflow("wf-live-shape", workflow_id=workflow_id) as run:
        with spangraph.step("step-1") as step:
            spangraph.event("custom.event", answer=42, text="hé")
        with spangraph.step("step-2"):
            pass

    # every message goes to the workflow channel, then to the project channel: read until
    # the project channel's copy of the workflow's span.ended
    listener.until(lambda m: workflow_ended(m) and len(listener.received) % 2 == 0)
    on_wf = listener.messages(workflow_channel(workflow_id))
    assert listener.messages(project_channel(project)) == on_wf

    assert [m["seq"] for m in on_wf] == list(range(1, len(on_wf) + 1))
    assert [(m["type"], m["name"]) for m in on_wf] == [
        ("span.started", "wf-live-shape"),
        ("workflow.started", "wf-live-shape"),
        ("span.started", "step-1"),
        ("step.started", "step-1"),
        ("custom.event", "step-1"),
        ("step.completed", "step-1"),
        ("span.ended", "step-1"),
        ("span.started", "step-2"),
        ("step.started", "step-2"),
        ("step.completed", "step-2"),
        ("span.ended", "step-2"),
        ("workflow.completed", "wf-live-shape"),
        ("span.ended", "wf-live-shape"),
    ]
    for m in on_wf:
        assert list(m) == KEYS
        assert m["workflow_id"] == workflow_id
        assert m["project_id"] == project
        assert m["trace_id"] == run.trace_id
        assert m["service"] == "spangraph-tests" and m["env"] == "test"
        assert m["timestamp"].endswith("Z")
        parsed = datetime.fromisoformat(m["timestamp"].replace("Z", "+00:00"))
        assert parsed.tzinfo is not None and parsed.utcoffset().total_seconds() == 0
        assert abs(parsed.timestamp() - m["time_unix_nano"] / 1e9) < 1e-5
        assert isinstance(m["attributes"], dict)
    times = [m["time_unix_nano"] for m in on_wf]
    assert times == sorted(times)

    wf_msgs = [m for m in on_wf if m["name"] == "wf-live-shape"]
    assert all(m["span_id"] == run.span_id and m["parent_span_id"] is None for m in wf_msgs)
    assert all(m["kind"] == "workflow" for m in wf_msgs)
    step_msgs = [m for m in on_wf if m["name"] == "step-1"]
    assert all(m["span_id"] == step.span_id for m in step_msgs)
    assert all(m["parent_span_id"] == run.span_id and m["kind"] == "step" for m in step_msgs)

    custom = next(m for m in on_wf if m["type"] == "custom.event")
    assert custom["attributes"] == {"answer": 42, "text": "hé"}
    ended = on_wf[-1]
    assert ended["attributes"]["state"] == "completed"
    assert ended["attributes"]["duration_ms"] >= 0
    assert ended["attributes"]["spangraph.workflow.id"] == workflow_id
    started = on_wf[0]
    assert started["attributes"]["spangraph.kind"] == "workflow"

    # the stream holds the same messages, byte for byte, with ids seq-0
    raw_published = [raw for c, _, raw in listener.received if c == workflow_channel(workflow_id)]
    entries = redis_client.xrange(stream_key(workflow_id))
    assert [e[0].decode() for e in entries] == [f"{n}-0" for n in range(1, len(on_wf) + 1)]
    assert [e[1][b"data"] for e in entries] == raw_published
    # the stream and the counter expire some time after the run
    assert 0 < redis_client.ttl(stream_key(workflow_id)) <= live_module.KEY_TTL_S
    assert int(redis_client.get(live_module.seq_key(workflow_id))) == len(on_wf)


def test_a_runs_stream_is_kept_a_day_after_it_ended_and_a_week_while_it_runs(
    sg: spangraph.Spangraph, provider: TracerProvider, redis_client: redis.Redis
) -> None:
    """Every run's stream lived a week after its last message (20 KB a run: gigabytes of
    Redis in a busy week): a day once the run's top workflow span ended (no parent, a
    remote one, or one of another run); a week while it runs, and for a workflow span
    inside its own run (another instrumentation's). The counter keeps a week: a run
    that goes on later goes on with its seq."""
    from opentelemetry import trace as otel_trace

    def ttls(workflow_id: str) -> tuple[int, int]:
        return (
            redis_client.ttl(stream_key(workflow_id)),
            redis_client.ttl(live_module.seq_key(workflow_id)),
        )

    day, week = live_module.RUN_ENDED_TTL_S, live_module.KEY_TTL_S
    tracer = provider.get_tracer("t")
    with spangraph.workflow("root") as root:
        with spangraph.workflow("nested") as nested:
            pass
        with tracer.start_as_current_span("graph", attributes={"spangraph.kind": "workflow"}):
            pass  # a workflow span in the run (as LangGraph's): no end of the run
        with spangraph.step("s"):
            assert spangraph.flush(10)
            stream, counter = ttls(root.workflow_id)
            assert day < stream <= week and day < counter <= week  # running
    with (
        tracer.start_as_current_span("GET /serve"),  # a web framework's server span
        spangraph.workflow("under-a-server-span") as served,
    ):
        pass
    remote = otel_trace.NonRecordingSpan(
        otel_trace.SpanContext(0x1234, 0xABCD, is_remote=True, trace_flags=otel_trace.TraceFlags(1))
    )
    with otel_trace.use_span(remote), spangraph.workflow("called-remotely") as called:
        pass
    assert spangraph.flush(10)
    for run in (root, nested, served, called):
        stream, counter = ttls(run.workflow_id)
        assert 0 < stream <= day and day < counter <= week, run.name


def test_events_are_delivered_while_the_workflow_runs(
    sg: spangraph.Spangraph, listen: Callable[..., Listener]
) -> None:
    """The step emits an event, then waits until the test has *received* that event from
    Redis: only live delivery lets the workflow finish."""
    workflow_id = f"wf-{uuid.uuid4()}"
    listener = listen(workflow_channel(workflow_id))
    release = threading.Event()
    released_in_time: list[bool] = []

    def body() -> None:
        with spangraph.workflow("wf-liveness", workflow_id=workflow_id), spangraph.step("waits"):
            spangraph.event("progress", pct=50)
            released_in_time.append(release.wait(10))

    worker = threading.Thread(target=body)
    worker.start()
    try:
        before = listener.until(lambda m: m["type"] == "progress")
        assert worker.is_alive(), "the workflow finished before its event was seen"
        assert [m["type"] for m in before] == [
            "span.started", "workflow.started", "span.started", "step.started", "progress",
        ]  # fmt: skip
        assert before[-1]["attributes"] == {"pct": 50}
    finally:
        release.set()
        worker.join(10)
    assert released_in_time == [True]
    after = listener.until(workflow_ended)
    assert [m["seq"] for m in after] == list(range(1, len(after) + 1))
    assert after[-1]["type"] == "span.ended" and after[-1]["kind"] == "workflow"
    assert [m["type"] for m in after].count("progress") == 1


def test_an_event_is_queued_as_a_copy_of_its_span_not_the_span(
    sg: spangraph.Spangraph, listen: Callable[..., Listener], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An event's queue item held the span itself until the worker mapped it: in a burst
    the backlog kept thousands of spans alive into the collector's old generations (a
    step then paused up to 0.45 s in a collection). It holds a copy of the span as it
    was at the event, and the message is the same."""
    processor = sg.live_processor
    assert processor is not None
    queued: list[tuple[Any, ...]] = []
    put = processor._put

    def spy(item: tuple[Any, ...]) -> bool:
        queued.append(item)
        return put(item)

    monkeypatch.setattr(processor, "_put", spy)
    workflow_id = f"wf-{uuid.uuid4()}"
    listener = listen(workflow_channel(workflow_id))
    with spangraph.workflow("wf-copied", workflow_id=workflow_id), spangraph.step("s") as s:
        s.set(phase="two")  # after its start: the event is mapped as the span is now
        spangraph.event("progress", pct=50)
    events = [item for item in queued if len(item) > 3 and item[3] == "progress"]
    assert len(events) == 1 and type(events[0][1]) is tuple, events
    messages = listener.until(workflow_ended)
    [progress] = [m for m in messages if m["type"] == "progress"]
    assert progress["attributes"] == {"pct": 50}
    assert progress["kind"] == "step" and progress["workflow_id"] == workflow_id


def test_times_out_of_range_are_streamed_as_stored(
    sg: spangraph.Spangraph, provider: TracerProvider, listen: Callable[..., Listener]
) -> None:
    """Times the OTel SDK takes but no date has (past year 9999, before 1970, a float):
    within 0 .. 2**63-1 ns, as the graph stores them (before: the span's start, end and
    events never went out, and flush() said something was dropped)."""
    workflow_id = f"wf-{uuid.uuid4()}"
    listener = listen(workflow_channel(workflow_id))
    top = 2**63 - 1
    with spangraph.workflow("wf-times", workflow_id=workflow_id):
        span = provider.get_tracer("t").start_span("far", start_time=2**62)
        span.add_event("past", timestamp=-(2**70))
        span.add_event("future", timestamp=2**80)
        span.add_event("float", timestamp=1.7e18)
        span.end(end_time=2**80)
    from spangraph.mapping import iso_time

    msgs = [m for m in listener.until(workflow_ended) if m["name"] == "far"]
    times = {m["type"]: (m["time_unix_nano"], m["timestamp"]) for m in msgs}
    assert times == {
        "span.started": (2**62, iso_time(2**62)),
        "past": (0, "1970-01-01T00:00:00.000000Z"),
        "future": (top, "2262-04-11T23:47:16.854776Z"),
        "float": (1_700_000_000_000_000_000, "2023-11-14T22:13:20.000000Z"),
        "span.ended": (top, "2262-04-11T23:47:16.854776Z"),
    }
    assert spangraph.flush(10)
    assert sg.stats()["live"]["dropped"] == 0
    rows = sg.store.query(
        "MATCH (s:Span {workflow_id: $w, name: 'far'})-[:HAS_EVENT]->(e:Event) "
        "RETURN s.start_ns AS start, s.end_ns AS end, e.name AS name, e.time_ns AS t",
        {"w": workflow_id},
    )
    stored = {r["name"]: (r["start"], r["end"], r["t"]) for r in rows}
    assert stored == {  # the same times (the float a whole number, as the others)
        "past": (2**62, top, 0), "future": (2**62, top, top),
        "float": (2**62, top, 1_700_000_000_000_000_000),
    }  # fmt: skip
    [duration] = sg.store.query(
        "MATCH (s:Span {workflow_id: $w, name: 'far'}) RETURN s.duration_ms AS d",
        {"w": workflow_id},
    )
    live_ms = msgs[-1]["attributes"]["duration_ms"]
    assert abs(live_ms - (top - 2**62) / 1e6) < 1  # (the raw times: 1.2e18 ms)
    assert abs(live_ms - duration["d"]) < 1  # (FalkorDB keeps fewer digits)
    assert all(type(t) is int for t in stored["float"])


def test_long_event_names_are_streamed_cut_as_they_are_stored(
    sg: spangraph.Spangraph, provider: TracerProvider, listen: Callable[..., Listener]
) -> None:
    """The graph cut a plain OTel event's 20 000-character name to 8 192 characters with a
    marker; the live stream sent it whole."""
    from spangraph._attrs import MAX_VALUE_CHARS, truncate

    workflow_id = f"wf-{uuid.uuid4()}"
    listener = listen(workflow_channel(workflow_id))
    tracer = provider.get_tracer("foreign")
    long_name = "e" * 20_000
    with (
        spangraph.workflow("wf-long-event", workflow_id=workflow_id),
        tracer.start_as_current_span("plain") as span,
    ):
        span.add_event(long_name)
        spangraph.event(long_name[:MAX_VALUE_CHARS])  # (the API refuses longer names)
    msgs = listener.until(workflow_ended)
    types = [m["type"] for m in msgs if m["name"] == "plain"]
    assert truncate(long_name) in types
    assert max(len(t) for t in types) == MAX_VALUE_CHARS


def test_failed_step_events_and_end_state(
    sg: spangraph.Spangraph, listen: Callable[..., Listener]
) -> None:
    workflow_id = f"wf-{uuid.uuid4()}"
    listener = listen(workflow_channel(workflow_id))
    with spangraph.workflow("wf-live-fail", workflow_id=workflow_id):
        try:
            with spangraph.step("breaks"):
                raise KeyError("nope")
        except KeyError:
            pass
    msgs = listener.until(workflow_ended)
    step_msgs = [(m["type"], m["attributes"]) for m in msgs if m["name"] == "breaks"]
    assert [t for t, _ in step_msgs] == [
        "span.started", "step.started", "exception", "step.failed", "span.ended",
    ]  # fmt: skip
    assert step_msgs[3][1]["error.type"] == "KeyError"
    assert step_msgs[-1][1]["state"] == "failed"
    # the exception as the span recorded it (the graph and OTLP get the same): before,
    # live had only a type and a message
    exception = step_msgs[2][1]
    assert exception["exception.type"] == "KeyError"
    assert exception["exception.message"] == "'nope'"
    assert 'raise KeyError("nope")' in exception["exception.stacktrace"]
    assert exception["exception.escaped"] == "False"


def test_span_started_carries_the_attributes_at_the_start(
    sg: spangraph.Spangraph, listen: Callable[..., Listener]
) -> None:
    """A span that started and ended within one batch had its span.started message built
    from its end: it already said ``failed``, and a decision's start its choice."""
    workflow_id = f"wf-{uuid.uuid4()}"
    listener = listen(workflow_channel(workflow_id))
    with spangraph.workflow("wf-live-start", workflow_id=workflow_id):
        try:
            with spangraph.step("breaks"):
                raise KeyError("nope")
        except KeyError:
            pass
        with spangraph.decision("route", options=["a", "b"]) as d:
            d.choose("b", reason="shorter")
    msgs = listener.until(workflow_ended)
    started = {m["name"]: m["attributes"] for m in msgs if m["type"] == "span.started"}
    ended = {m["name"]: m["attributes"] for m in msgs if m["type"] == "span.ended"}
    assert ended["breaks"]["spangraph.state"] == "failed"
    assert started["breaks"].get("spangraph.state") in (None, "running")
    assert ended["route"]["spangraph.decision.chosen"] == "b"
    assert "spangraph.decision.chosen" not in started["route"]
    assert started["route"]["spangraph.decision.options"] == ["a", "b"]


@pytest.mark.parametrize("at_start", AT_TRACELOOP_START)
def test_a_kind_set_just_after_the_start_is_in_span_started(
    sg: spangraph.Spangraph,
    provider: TracerProvider,
    listen: Callable[..., Listener],
    at_start: dict[str, Any],
) -> None:
    """Traceloop's decorators start a span with no attributes (or, Traceloop's processor
    first, the workflow's name) and name its kind just after: its ``span.started``, sent
    while it runs, says the kind."""
    listener = listen(project_channel(sg.settings.project))
    span = traceloop_workflow(provider, at_start)
    (started,) = listener.until(lambda m: m["type"] == "span.started")
    assert started["kind"] == "workflow"
    assert started["attributes"]["traceloop.span.kind"] == "workflow"
    assert started["workflow_id"] == f"{span.get_span_context().trace_id:032x}"
    span.end()
    ended = listener.until(lambda m: m["type"] == "span.ended")[-1]
    assert ended["kind"] == "workflow"


def test_events_added_by_other_code_go_out_at_span_end_once(
    sg: spangraph.Spangraph, listen: Callable[..., Listener]
) -> None:
    workflow_id = f"wf-{uuid.uuid4()}"
    listener = listen(workflow_channel(workflow_id))
    with spangraph.workflow("wf-mixed-events", workflow_id=workflow_id), spangraph.step("s"):
        trace.get_current_span().add_event("otel.event", {"k": "v"})
        spangraph.event("sg.event")
    msgs = listener.until(workflow_ended)
    types = [m["type"] for m in msgs if m["name"] == "s"]
    assert types.count("otel.event") == 1 and types.count("sg.event") == 1
    assert types.count("step.started") == 1 and types.count("step.completed") == 1
    assert types[0] == "span.started" and types[-1] == "span.ended"
    otel_event = next(m for m in msgs if m["type"] == "otel.event")
    assert otel_event["attributes"] == {"k": "v"}
    assert [m["seq"] for m in msgs] == list(range(1, len(msgs) + 1))


def test_a_long_span_remembers_a_bounded_number_of_sent_events(
    sg: spangraph.Spangraph, listen: Callable[..., Listener]
) -> None:
    """Events sent live while their span is open are remembered so that its end does not
    send them again: only as many as the span keeps (before: every one, for as long as
    the span was open), and each still goes out once."""
    processor = sg.live_processor
    assert processor is not None
    workflow_id = f"wf-{uuid.uuid4()}"
    listener = listen(workflow_channel(workflow_id))
    count = 1524
    with spangraph.workflow("wf-long", workflow_id=workflow_id), spangraph.step("s") as s:
        for i in range(count):
            spangraph.event("tick", i=i)
        assert spangraph.flush(10)
        # 1 024 (the most a span keeps is 128 events, unless OTEL_SPAN_EVENT_COUNT_LIMIT
        # says more): with step.started, 1 525 were remembered before
        assert len(processor._sent_live[int(s.span_id, 16)]) == 1024
    msgs = listener.until(workflow_ended, timeout=30)
    ticks = [m["attributes"]["i"] for m in msgs if m["type"] == "tick"]
    assert ticks == list(range(count))


@pytest.mark.parametrize("offload", [False, True], ids=["in-process", "offload"])
@pytest.mark.parametrize("max_events", [SpanLimits.UNSET, 2500], ids=["unlimited", "2500"])
def test_a_span_keeping_more_events_than_the_default_sends_each_once(
    embedded_server: ServerInfo,
    graph_url: str,
    listen: Callable[..., Listener],
    tmp_path: Any,
    offload: bool,
    max_events: int,
) -> None:
    """A TracerProvider that keeps more events a span than 1 024 (or all of them): each
    event sent live goes out once (before: those the processor forgot were sent again at
    the span's end, under new seq numbers)."""
    provider = TracerProvider(span_limits=SpanLimits(max_events=max_events))
    configure_on(provider, graph_url, embedded_server, tmp_path, offload=offload)
    try:
        workflow_id = f"wf-{uuid.uuid4()}"
        listener = listen(workflow_channel(workflow_id))
        count = 3000
        with spangraph.workflow("wf-many-events", workflow_id=workflow_id), spangraph.step("s"):
            for i in range(count):
                spangraph.event("tick", i=i)
        msgs = listener.until(workflow_ended, timeout=60)
        ticks = [m["attributes"]["i"] for m in msgs if m["type"] == "tick"]
        assert ticks == list(range(count))
        assert [m["seq"] for m in msgs] == list(range(1, len(msgs) + 1))
    finally:
        spangraph.shutdown()
        provider.shutdown()


def test_spans_that_never_end_leave_the_open_ones_their_live_events(
    sg: spangraph.Spangraph,
    provider: TracerProvider,
    listen: Callable[..., Listener],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past the bound on open spans the longest open go (spans never ended), one at a
    time: a span opened after them still has its events sent live, and once only (before:
    past the bound every open span was forgotten, and their events waited for their end)."""
    processor = sg.live_processor
    assert processor is not None
    monkeypatch.setattr(live_module, "_MAX_OPEN", 4, raising=False)
    tracer = provider.get_tracer("leaks")
    leaked = [tracer.start_span(f"never-ends-{i}") for i in range(6)]
    assert spangraph.flush(10)
    workflow_id = f"wf-{uuid.uuid4()}"
    listener = listen(workflow_channel(workflow_id))
    with spangraph.workflow("wf-after-leaks", workflow_id=workflow_id), spangraph.step("s") as s:
        spangraph.event("progress", pct=50)
        before = listener.until(lambda m: m["type"] == "progress")
        assert before[-1]["name"] == "s" and before[-1]["attributes"] == {"pct": 50}
        opened = list(processor._open)
        assert len(opened) == 4  # the bound holds: the four latest starts
        ids = [span.get_span_context().span_id for span in leaked]
        assert opened[:2] == ids[4:] and opened[3] == int(s.span_id, 16)
    msgs = listener.until(workflow_ended)
    assert [m["type"] for m in msgs].count("progress") == 1
    for span in leaked:
        span.end()


def test_lone_surrogates_go_out_as_replacement_characters(
    sg: spangraph.Spangraph, listen: Callable[..., Listener]
) -> None:
    """Text UTF-8 cannot encode (a file name decoded with ``surrogateescape``) is sent
    with U+FFFD, and the other messages of the batch go out with it."""
    workflow_id = f"wf-{uuid.uuid4()}"
    listener = listen(workflow_channel(workflow_id))
    with spangraph.workflow("wf-surrogates", workflow_id=workflow_id):
        with spangraph.step("read \udcff.txt"):
            trace.get_current_span().add_event("opened \udc80", {"path": "/tmp/\udcfe"})
        with spangraph.step("fine"):
            pass
    msgs = listener.until(workflow_ended)
    assert sg.stats()["live"]["dropped"] == 0
    names = {m["name"] for m in msgs}
    assert {"read \ufffd.txt", "fine"} <= names
    opened = next(m for m in msgs if m["type"] == "opened \ufffd")
    assert opened["attributes"] == {"path": "/tmp/\ufffd"}


def test_non_finite_numbers_go_out_as_strict_json(
    sg: spangraph.Spangraph, listen: Callable[..., Listener]
) -> None:
    """A browser's JSON.parse rejects NaN and Infinity: they go out as strings."""
    workflow_id = f"wf-{uuid.uuid4()}"
    listener = listen(workflow_channel(workflow_id))
    with (
        spangraph.workflow("wf-nan", workflow_id=workflow_id),
        spangraph.step("measure", attributes={"ratio": float("nan")}),
    ):
        spangraph.event("sample", high=float("inf"), low=[float("-inf")])
    listener.until(workflow_ended)

    def refuse(word: str) -> None:
        raise AssertionError(f"not JSON: {word}")

    strict = [json.loads(raw, parse_constant=refuse) for _, _, raw in listener.received]
    sample = next(m for m in strict if m["type"] == "sample")
    assert sample["attributes"] == {"high": "Infinity", "low": ["-Infinity"]}
    started = next(m for m in strict if m["type"] == "span.started" and m["name"] == "measure")
    assert started["attributes"]["ratio"] == "NaN"


def test_token_events_are_live_only(
    sg: spangraph.Spangraph, listen: Callable[..., Listener]
) -> None:
    workflow_id = f"wf-{uuid.uuid4()}"
    listener = listen(workflow_channel(workflow_id))
    with (
        spangraph.workflow("wf-tokens", workflow_id=workflow_id),
        spangraph.step("generate") as step,
    ):
        for text in ("hi", " there"):
            live_module.emit_event(
                trace.get_current_span(), "token", {"text": text}, time.time_ns()
            )
        spangraph.event("llm.complete", output_tokens=2)
    msgs = listener.until(workflow_ended)
    tokens = [m for m in msgs if m["type"] == "token"]
    assert [m["attributes"] for m in tokens] == [{"text": "hi"}, {"text": " there"}]
    assert all(m["span_id"] == step.span_id for m in tokens)

    assert spangraph.flush(10)
    names = sg.store.query(
        "MATCH (:Span {span_id: $id})-[:HAS_EVENT]->(e:Event) RETURN e.name AS n ORDER BY e.seq",
        {"id": step.span_id},
    )
    assert [r["n"] for r in names] == ["step.started", "llm.complete", "step.completed"]
    assert sg.store.query("MATCH (e:Event {name: 'token'}) RETURN count(e) AS c") == [{"c": 0}]


def test_events_named_like_a_spans_start_or_end_are_not_taken_for_it(
    sg: spangraph.Spangraph, listen: Callable[..., Listener]
) -> None:
    """Another instrumentation's events named ``span.started`` / ``span.ended`` go out
    as ``event.span.started`` / ``event.span.ended`` (before: a second span.started, and
    a span.ended before the span's own, which a UI took for its end), live and in the
    replay rebuilt from the graph, which keeps their names."""
    from spangraph import queries

    workflow_id = f"wf-{uuid.uuid4()}"
    listener = listen(workflow_channel(workflow_id))
    with spangraph.workflow("wf-named", workflow_id=workflow_id), spangraph.step("s") as step:
        trace.get_current_span().add_event("span.ended", {"foo": 1})
        trace.get_current_span().add_event("span.started")
    msgs = [m for m in listener.until(workflow_ended) if m["span_id"] == step.span_id]
    # (events added by other code go out at the span's end)
    assert [m["type"] for m in msgs] == [
        "span.started", "step.started", "step.completed", "event.span.ended",
        "event.span.started", "span.ended",
    ]  # fmt: skip
    assert msgs[3]["attributes"] == {"foo": 1}
    assert spangraph.flush(10)
    replayed = [
        m["type"] for m in queries.replay(sg.store, workflow_id) if m["span_id"] == step.span_id
    ]
    assert replayed == [  # in time order
        "span.started", "step.started", "event.span.ended", "event.span.started",
        "step.completed", "span.ended",
    ]  # fmt: skip
    stored = sg.store.query(
        "MATCH (:Span {span_id: $id})-[:HAS_EVENT]->(e:Event) RETURN e.name AS n ORDER BY e.seq",
        {"id": step.span_id},
    )
    assert [r["n"] for r in stored] == [
        "step.started",
        "span.ended",
        "span.started",
        "step.completed",
    ]


def test_a_span_with_megabytes_of_attributes_is_streamed_and_stored_bounded(
    sg: spangraph.Spangraph, listen: Callable[..., Listener]
) -> None:
    """A list of 2 000 long prompts (16 MB of JSON with each string cut) made messages
    Redis dropped every pattern subscriber for: now the list goes as its JSON, cut."""
    from spangraph.mapping import MAX_JSON_CHARS

    workflow_id = f"wf-{uuid.uuid4()}"
    listener = listen(workflow_channel(workflow_id))
    prompts = ["q" * 10_000] * 2000
    with (
        spangraph.workflow("wf-big", workflow_id=workflow_id),
        spangraph.step("s", attributes={"prompts": prompts}) as step,
    ):
        pass
    msgs = [m for m in listener.until(workflow_ended) if m["span_id"] == step.span_id]
    assert [m["type"] for m in msgs] == [
        "span.started", "step.started", "step.completed", "span.ended",
    ]  # fmt: skip
    for m in (msgs[0], msgs[-1]):
        assert isinstance(m["attributes"]["prompts"], str)
    assert spangraph.flush(10)
    [row] = sg.store.query(
        "MATCH (s:Span {span_id: $id}) RETURN s.attributes AS a", {"id": step.span_id}
    )
    assert len(row["a"]) < MAX_JSON_CHARS
    assert sg.stats()["live"]["dropped"] == 0 and sg.stats()["graph"]["dropped"] == 0


def test_stream_length_is_capped(sg: spangraph.Spangraph, redis_client: redis.Redis) -> None:
    assert live_module.STREAM_MAXLEN == 10_000
    workflow_id = f"wf-{uuid.uuid4()}"
    total = live_module.STREAM_MAXLEN + 1_500
    with spangraph.workflow("wf-many-events", workflow_id=workflow_id), spangraph.step("chatty"):
        for i in range(total):
            live_module.emit_event(trace.get_current_span(), "token", {"i": i}, time.time_ns())
    assert spangraph.flush(30)
    published = int(redis_client.get(live_module.seq_key(workflow_id)))
    assert published == total + 8  # + 2 span.started, 2 x.started, 2 x.completed, 2 span.ended
    length = redis_client.xlen(stream_key(workflow_id))
    # approximate trimming (MAXLEN ~): at least the cap, at most one stream node more
    assert live_module.STREAM_MAXLEN <= length <= live_module.STREAM_MAXLEN + 200
    newest = redis_client.xrevrange(stream_key(workflow_id), count=1)[0]
    assert newest[0].decode() == f"{published}-0"
    oldest = redis_client.xrange(stream_key(workflow_id), count=1)[0]
    assert int(oldest[0].decode().split("-")[0]) == published - length + 1
    assert sg.stats()["live"]["dropped"] == 0


def test_two_hosts_share_one_sequence(
    embedded_server: ServerInfo, redis_client: redis.Redis
) -> None:
    """Two TracerProviders, each with its own LiveEventProcessor and Redis connection (two
    hosts of one run), publish concurrently for one workflow id: Redis numbers their
    messages as one gap-free sequence, and each message is published exactly once."""
    workflow_id = f"wf-{uuid.uuid4()}"
    project = f"p-{uuid.uuid4().hex[:8]}"
    hosts = []
    for host in ("host-a", "host-b"):
        provider = TracerProvider(resource=Resource.create({"service.name": host}))
        processor = LiveEventProcessor(
            RedisPublisher.from_url(embedded_server.redis_url), project=project
        )
        provider.add_span_processor(processor)
        hosts.append((host, provider, processor))
    spans_per_host = 40
    barrier = threading.Barrier(len(hosts))

    def work(host: str, provider: TracerProvider) -> None:
        tracer = provider.get_tracer(host)
        attrs = {"spangraph.workflow.id": workflow_id, "spangraph.kind": "step"}
        barrier.wait()
        for i in range(spans_per_host):
            with tracer.start_as_current_span(f"{host}-{i}", attributes=attrs):
                spangraph.event("work.done", i=i)  # published live, by this host only
                trace.get_current_span().add_event("otel.note")  # published at the end

    try:
        threads = [threading.Thread(target=work, args=(h, p)) for h, p, _ in hosts]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        for _, _, processor in hosts:
            assert processor.force_flush(10_000)
        entries = redis_client.xrange(stream_key(workflow_id))
        messages = [json.loads(e[1][b"data"]) for e in entries]
        per_host = {h: [m for m in messages if m["service"] == h] for h, _, _ in hosts}
        for host, msgs in per_host.items():
            # span.started, work.done, otel.note, span.ended for each span
            assert len(msgs) == 4 * spans_per_host, host
            for i in range(spans_per_host):
                types = [m["type"] for m in msgs if m["name"] == f"{host}-{i}"]
                assert types == ["span.started", "work.done", "otel.note", "span.ended"]
        assert [m["seq"] for m in messages] == list(range(1, len(messages) + 1))
        assert [e[0].decode() for e in entries] == [f"{m['seq']}-0" for m in messages]
        assert int(redis_client.get(live_module.seq_key(workflow_id))) == len(messages)
        assert len(messages) == 2 * 4 * spans_per_host
    finally:
        for _, provider, processor in hosts:
            provider.shutdown()
            processor.publisher.close()


class _EverySecondTrace(Sampler):
    """Samples every second root (and each child as its parent): a user's sampler."""

    def __init__(self) -> None:
        self.roots = 0
        self._parent_based = ParentBased(ALWAYS_ON)

    def should_sample(
        self, parent_context, trace_id, name, kind=None, attributes=None, *args, **kwargs
    ) -> SamplingResult:
        if trace.get_current_span(parent_context).get_span_context().is_valid:
            return self._parent_based.should_sample(
                parent_context, trace_id, name, kind, attributes, *args, **kwargs
            )
        self.roots += 1
        decision = Decision.RECORD_AND_SAMPLE if self.roots % 2 else Decision.DROP
        return SamplingResult(decision, attributes if decision != Decision.DROP else None)

    def get_description(self) -> str:
        return "every second trace"


def test_events_of_spans_a_sampler_dropped_are_not_sent_and_spoil_nothing(
    embedded_server: ServerInfo, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """spangraph.event() in a span the user's sampler dropped: before, the live worker
    failed on such a span and dropped its whole batch, the sampled runs' messages too."""
    provider = TracerProvider(sampler=_EverySecondTrace())
    processor = LiveEventProcessor(
        RedisPublisher.from_url(embedded_server.redis_url), project=f"p-{uuid.uuid4().hex[:8]}"
    )
    provider.add_span_processor(processor)
    old = spangraph._state.tracer
    spangraph._state.tracer = provider.get_tracer("test")
    runs = []
    try:
        for i in range(6):
            with spangraph.workflow("sampled-or-not") as run, spangraph.step("s"):
                spangraph.event("work.done", i=i)
                with spangraph.llm("m") as call:
                    call.token("t")
            runs.append(run)
        assert processor.force_flush(10_000)
    finally:
        spangraph._state.tracer = old
        provider.shutdown()
        processor.publisher.close()
    assert processor.stats()["dropped"] == 0
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    for i, run in enumerate(runs):
        types = [
            json.loads(fields[b"data"])["type"]
            for _, fields in redis_client.xrange(stream_key(run.workflow_id))
        ]
        if i % 2:  # dropped by the sampler: nothing recorded, nothing sent
            assert types == []
        else:
            assert types.count("span.started") == 3 and types.count("span.ended") == 3
            assert types.count("work.done") == 1 and types.count("token") == 1


def test_configure_again_while_spans_are_open_publishes_nothing_twice(
    sg: spangraph.Spangraph,
    provider: TracerProvider,
    graph_url: str,
    embedded_server: ServerInfo,
    tmp_path: Any,
    redis_client: redis.Redis,
) -> None:
    """The new configuration's live processor did not know what the old one had
    published: at the end of a span open across the change it published all of its
    events again (workflow.started twice, under new seq numbers)."""
    with spangraph.workflow("across") as run, spangraph.step("straddling"):
        spangraph.event("before.change")
        spangraph.configure(
            tracer_provider=provider,
            graph_url=graph_url,
            redis_url=embedded_server.redis_url,
            home=str(tmp_path),
            project=sg.settings.project,
        )
        spangraph.event("after.change")
    assert spangraph.flush(10)
    types = [
        json.loads(fields[b"data"])["type"]
        for _, fields in redis_client.xrange(stream_key(run.workflow_id))
    ]
    assert sorted(types) == sorted(
        ["span.started", "workflow.started", "span.started", "step.started", "before.change",
         "after.change", "step.completed", "span.ended", "workflow.completed", "span.ended"]
    ), types  # fmt: skip


def _messages(workflow_id: str, n: int) -> list[tuple[str, str, str, str]]:
    common = {
        "workflow_id": workflow_id,
        "project_id": "p",
        "trace_id": "ab" * 16,
        "span_id": "cd" * 8,
        "parent_span_id": None,
        "kind": "step",
        "name": "step ünïcode",
        "service": "svc",
        "env": None,
    }
    out = []
    for i in range(n):
        head, tail = live_module.live_message("span.started", common, time.time_ns(), {"i": i})
        out.append((workflow_id, "p", head, tail))
    return out


def test_publisher_loads_its_script_again_after_a_script_flush(
    embedded_server: ServerInfo, redis_client: redis.Redis
) -> None:
    """A restarted or flushed Redis has forgotten the publish script: the calls it
    answered NOSCRIPT are sent again after loading it, nothing twice and in order."""
    workflow_id = f"wf-{uuid.uuid4()}"
    publisher = RedisPublisher.from_url(embedded_server.redis_url)
    try:
        publisher.publish(_messages(workflow_id, 3))
        redis_client.script_flush()
        # more than one script call in one batch (live._CHUNK messages a call)
        publisher.publish(_messages(workflow_id, live_module._CHUNK + 5))
        entries = redis_client.xrange(stream_key(workflow_id))
        seqs = [json.loads(e[1][b"data"])["seq"] for e in entries]
        assert seqs == list(range(1, live_module._CHUNK + 9))
        assert [json.loads(e[1][b"data"])["attributes"]["i"] for e in entries] == [
            0, 1, 2, *range(live_module._CHUNK + 5)
        ]  # fmt: skip
        assert json.loads(entries[0][1][b"data"])["name"] == "step ünïcode"
    finally:
        publisher.close()


class _ReplyLost(RedisPublisher):
    """Its first write reaches Redis, and then the connection drops before the replies
    are read (a restart or a network cut at that moment)."""

    lost = False

    def _send(self, calls: list[tuple[Any, ...]]) -> list[Any]:
        results = super()._send(calls)  # Redis ran them
        if not self.lost:
            self.lost = True
            self.client.connection_pool.disconnect()
            raise redis.ConnectionError("connection dropped before the replies")
        return results


def test_a_batch_sent_again_after_a_lost_reply_goes_out_once(
    embedded_server: ServerInfo, redis_client: redis.Redis
) -> None:
    """The worker retries a batch whose write failed; calls Redis already ran must not
    publish their messages a second time under new seq numbers."""
    workflow_id = f"wf-{uuid.uuid4()}"
    publisher = _ReplyLost(redis.Redis.from_url(embedded_server.redis_url))
    redis_client.script_load(live_module._PUBLISH_LUA)  # the first write runs, not NOSCRIPT
    try:
        batch = _messages(workflow_id, live_module._CHUNK + 5)  # two script calls
        with pytest.raises(redis.ConnectionError):
            publisher.publish(batch)
        publisher.publish(batch)  # the retry, as BatchWorker does it: the same list
        entries = redis_client.xrange(stream_key(workflow_id))
        assert [json.loads(e[1][b"data"])["attributes"]["i"] for e in entries] == list(
            range(live_module._CHUNK + 5)
        )
        assert int(redis_client.get(live_module.seq_key(workflow_id))) == live_module._CHUNK + 5
        again = _messages(workflow_id, 2)  # a new batch, even of equal messages, goes out
        publisher.publish(again)
        publisher.publish(list(again))
        assert redis_client.xlen(stream_key(workflow_id)) == live_module._CHUNK + 9
    finally:
        publisher.close()


def test_publisher_raises_what_redis_rejects_and_stays_usable(
    embedded_server: ServerInfo, redis_client: redis.Redis
) -> None:
    """An error reply raises (the worker counts the batch as failed), and every reply of
    the batch was read: the next batch on the same connection gets its own replies."""
    bad, good = f"wf-{uuid.uuid4()}", f"wf-{uuid.uuid4()}"
    redis_client.set(live_module.seq_key(bad), "not a number")  # INCR fails on it
    publisher = RedisPublisher.from_url(embedded_server.redis_url)
    try:
        with pytest.raises(redis.ResponseError, match="not an integer"):
            publisher.publish(_messages(bad, 2))
        publisher.publish(_messages(good, 2))
        entries = redis_client.xrange(stream_key(good))
        assert [json.loads(e[1][b"data"])["seq"] for e in entries] == [1, 2]
        assert publisher.client.connection_pool._created_connections == 1
    finally:
        publisher.close()


BAD_RECORD = ("not a span",) * 15
"""A span record that cannot be read back (as a record from a newer agent could be)."""


def test_an_unreadable_record_is_skipped_and_counted_as_dropped(
    embedded_server: ServerInfo, redis_client: redis.Redis
) -> None:
    provider = TracerProvider()
    processor = LiveEventProcessor(
        RedisPublisher.from_url(embedded_server.redis_url), project=f"p-{uuid.uuid4().hex[:8]}"
    )
    provider.add_span_processor(processor)
    try:
        processor._queue_record(live_module._END, BAD_RECORD)
        with provider.get_tracer("t").start_as_current_span("good") as span:
            workflow_id = format(span.get_span_context().trace_id, "032x")
        assert processor.force_flush(10_000) is False  # sent, all but the bad record
    finally:
        provider.shutdown()
        processor.publisher.close()
    assert processor.stats()["dropped"] == 1  # before: 0, the skip was only logged
    types = [
        json.loads(fields[b"data"])["type"]
        for _, fields in redis_client.xrange(stream_key(workflow_id))
    ]
    assert types == ["span.started", "span.ended"]  # the rest of the batch went out


def test_spans_that_cannot_be_read_are_counted_as_dropped(embedded_server: ServerInfo) -> None:
    """``on_start``/``on_end`` with something that is no readable span (other code's
    mistake) raise nothing and count it as dropped, as the graph processor does (before:
    not counted, not logged)."""
    from opentelemetry.trace import INVALID_SPAN

    processor = LiveEventProcessor(
        RedisPublisher.from_url(embedded_server.redis_url), project=f"p-{uuid.uuid4().hex[:8]}"
    )
    try:
        processor.on_start(None)  # type: ignore[arg-type]
        processor.on_end(None)  # type: ignore[arg-type]
        processor.on_end(INVALID_SPAN)  # type: ignore[arg-type]
        assert processor.force_flush(10_000) is False  # they were dropped
        assert processor.stats()["dropped"] == 3
    finally:
        processor.shutdown()
        processor.publisher.close()


def test_a_runs_end_is_sent_when_the_queue_is_full(plain_redis: Callable[..., int]) -> None:
    """With Redis too slow for a burst of spans, the queue fills and new messages are
    dropped, counted: before, the run's own end was among them, so subscribers never
    learned that the run ended. A full queue still takes the end of a workflow or root
    span (up to a reserve)."""
    port = plain_redis()
    processor = LiveEventProcessor(
        RedisPublisher.from_url(f"redis://127.0.0.1:{port}/0"),
        project=f"p-{uuid.uuid4().hex[:8]}",
        max_queue_size=16,
    )
    try:
        run = paused_burst(processor, port)
    finally:
        processor.publisher.close()
    admin = redis.Redis(port=port)
    sent = [
        json.loads(fields[b"data"]) for _, fields in admin.xrange(stream_key(run.workflow_id or ""))
    ]
    admin.close()
    assert len(sent) < 300  # the burst was cut
    last = sent[-1]
    assert (last["type"], last["kind"], last["span_id"]) == ("span.ended", "workflow", run.span_id)
