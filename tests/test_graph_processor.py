"""GraphSpanProcessor end to end: workflows run through the public API on a real
TracerProvider, written to a real FalkorDB graph, read back with Cypher."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from opentelemetry import trace
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.trace import Link

import spangraph
from conftest import (
    AT_TRACELOOP_START,
    ForkedChild,
    exit_code_of,
    held_by_a_thread,
    paused_burst,
    traceloop_workflow,
)
from spangraph import queries
from spangraph.exceptions import StoreTimeoutError, StoreUnavailableError
from spangraph.processors import GraphSpanProcessor
from spangraph.stores import FalkorDBStore, WriteBatch
from spangraph.stores.falkordb import EncodedWrite

HEX16 = re.compile(r"^[0-9a-f]{16}$")
HEX32 = re.compile(r"^[0-9a-f]{32}$")


def spans_of(store: Any, workflow_id: str) -> dict[str, dict[str, Any]]:
    """name -> node properties (plus labels) of every span of a run."""
    rows = store.query(
        "MATCH (s:Span {workflow_id: $wf}) RETURN s AS s, labels(s) AS labels",
        {"wf": workflow_id},
    )
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        props = {**row["s"], "_labels": sorted(row["labels"])}
        assert props["name"] not in out, f"two spans named {props['name']}"
        out[props["name"]] = props
    return out


def edges(store: Any, rel: str, workflow_id: str) -> set[tuple[str, str]]:
    rows = store.query(
        f"MATCH (a:Span {{workflow_id: $wf}})-[:{rel}]->(b:Span) RETURN a.name AS a, b.name AS b",
        {"wf": workflow_id},
    )
    return {(r["a"], r["b"]) for r in rows}


def events_of(store: Any, span_id: str) -> list[dict[str, Any]]:
    return store.query(
        "MATCH (:Span {span_id: $id})-[:HAS_EVENT]->(e:Event) "
        "RETURN e.seq AS seq, e.name AS name, e.time_ns AS time_ns, e.attributes AS attributes "
        "ORDER BY e.seq",
        {"id": span_id},
    )


def flush() -> None:
    assert spangraph.flush(10), "flush timed out"


# -- shape of a run -------------------------------------------------------------------------


def written_whole(sg: spangraph.Spangraph, workflow_id: str) -> dict[str, dict[str, Any]]:
    """The spans of ``workflow_id`` once flushed, after checking that nothing was dropped
    and that its "innocent" step (a span of the same batch as odd ones) was written."""
    flush()
    assert sg.stats()["graph"]["dropped"] == 0
    spans = spans_of(sg.store, workflow_id)
    assert spans["innocent"]["state"] == "completed"
    return spans


def test_workflow_tree_is_written_as_a_graph(sg: spangraph.Spangraph) -> None:
    @spangraph.step("fetch")
    def fetch() -> int:
        spangraph.event("custom.thing", n=1, text="x")
        return 1

    with spangraph.workflow("wf-shape") as run:
        fetch()
        with spangraph.step("outer"), spangraph.step("inner"):
            pass
    flush()

    spans = spans_of(sg.store, run.workflow_id)
    assert set(spans) == {"wf-shape", "fetch", "outer", "inner"}
    wf = spans["wf-shape"]
    assert wf["_labels"] == ["Span", "Workflow"] and wf["kind"] == "workflow"
    for name in ("fetch", "outer", "inner"):
        assert spans[name]["_labels"] == ["Span", "Step"] and spans[name]["kind"] == "step"

    # ids: lower-case hex as OTel prints them; span_id unique; one trace
    for props in spans.values():
        assert HEX16.match(props["span_id"]) and HEX32.match(props["trace_id"])
        assert props["trace_id"] == run.trace_id
    assert wf["span_id"] == run.span_id
    assert (
        sg.store.query("MATCH (s:Span) WITH s.span_id AS id, count(*) AS n WHERE n > 1 RETURN id")
        == []
    )

    # the tree: PARENT_OF edges follow the spans, the root has no parent
    assert edges(sg.store, "PARENT_OF", run.workflow_id) == {
        ("wf-shape", "fetch"), ("wf-shape", "outer"), ("outer", "inner"),
    }  # fmt: skip
    for name, parent in (("fetch", "wf-shape"), ("outer", "wf-shape"), ("inner", "outer")):
        assert spans[name]["parent_span_id"] == spans[parent]["span_id"]
    assert "parent_span_id" not in wf
    roots = sg.store.query(
        "MATCH (s:Span {workflow_id: $wf}) WHERE NOT ()-[:PARENT_OF]->(s) RETURN s.name AS n",
        {"wf": run.workflow_id},
    )
    assert roots == [{"n": "wf-shape"}]

    # run properties on every node
    for props in spans.values():
        assert props["workflow_id"] == run.workflow_id
        assert props["execution_id"] == run.workflow_id
        assert props["project_id"] == sg.settings.project
        assert props["service"] == "spangraph-tests"
        assert props["env"] == "test"
        assert props["state"] == "completed"
        assert props["status"] == "UNSET"
        assert props["end_ns"] >= props["start_ns"]
        assert props["duration_ms"] == pytest.approx(
            (props["end_ns"] - props["start_ns"]) / 1e6, abs=0.001
        )
    assert wf["start_ns"] <= spans["fetch"]["start_ns"] <= spans["outer"]["start_ns"]
    assert wf["end_ns"] >= spans["outer"]["end_ns"] >= spans["inner"]["end_ns"]

    # remaining attributes as a JSON string, promoted ones left out
    attrs = json.loads(wf["attributes"])
    assert attrs["spangraph.workflow.name"] == "wf-shape"
    assert attrs["gen_ai.operation.name"] == "invoke_workflow"
    assert not {"spangraph.workflow.id", "spangraph.kind", "spangraph.project.id"} & set(attrs)
    assert json.loads(spans["fetch"]["attributes"])["spangraph.step.attempt"] == 1

    # events, in order, with their attributes as JSON
    fetch_events = events_of(sg.store, spans["fetch"]["span_id"])
    assert [(e["seq"], e["name"]) for e in fetch_events] == [
        (0, "step.started"), (1, "custom.thing"), (2, "step.completed"),
    ]  # fmt: skip
    times = [e["time_ns"] for e in fetch_events]
    assert times == sorted(times)
    assert spans["fetch"]["start_ns"] <= times[0] and times[-1] <= spans["fetch"]["end_ns"]
    assert json.loads(fetch_events[1]["attributes"]) == {"n": 1, "text": "x"}
    assert json.loads(fetch_events[0]["attributes"]) == {"attempt": 1}
    assert "duration_ms" in json.loads(fetch_events[2]["attributes"])
    assert [e["name"] for e in events_of(sg.store, wf["span_id"])] == [
        "workflow.started", "workflow.completed",
    ]  # fmt: skip


def test_failed_and_cancelled_states(sg: spangraph.Spangraph) -> None:
    @spangraph.step("breaks")
    def breaks() -> None:
        raise ValueError("boom")

    async def run_it() -> str:
        async with spangraph.workflow("wf-states") as run:
            with contextlib.suppress(ValueError):
                breaks()

            async def slow() -> None:
                async with spangraph.step("slow"):
                    await asyncio.sleep(10)

            task = asyncio.create_task(slow())
            await asyncio.sleep(0.01)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return run.workflow_id

    workflow_id = asyncio.run(run_it())
    with pytest.raises(RuntimeError), spangraph.workflow("wf-fails") as failing:
        raise RuntimeError("the run failed")
    flush()

    spans = spans_of(sg.store, workflow_id)
    assert spans["wf-states"]["state"] == "completed"
    assert spans["breaks"]["state"] == "failed"
    assert spans["breaks"]["status"] == "ERROR"
    assert "ValueError: boom" in spans["breaks"]["status_message"]
    names = [e["name"] for e in events_of(sg.store, spans["breaks"]["span_id"])]
    assert names == ["step.started", "exception", "step.failed"]
    failed_event = events_of(sg.store, spans["breaks"]["span_id"])[2]
    assert json.loads(failed_event["attributes"])["error.type"] == "ValueError"
    assert spans["slow"]["state"] == "cancelled"
    assert spans["slow"]["duration_ms"] < 5_000

    failed_wf = spans_of(sg.store, failing.workflow_id)["wf-fails"]
    assert failed_wf["state"] == "failed" and failed_wf["status"] == "ERROR"
    assert "RuntimeError: the run failed" in failed_wf["status_message"]


def test_a_run_that_resumed_without_saying_which_is_linked(sg: spangraph.Spangraph) -> None:
    """``run.resumed()`` without ``resumed_from=`` (a LangGraph thread resumed in another
    process): linked to the run of its execution that started last before it, when that
    run paused; not to an earlier one, nor to a run that did not pause."""
    job = f"job-{uuid.uuid4().hex[:8]}"
    with spangraph.workflow("ingest", execution_id=job) as early:
        early.paused(reason="waiting")
    with spangraph.workflow("ingest", execution_id=job) as first:
        first.paused(reason="waiting for rows")
    with spangraph.workflow("ingest", execution_id=job) as second:
        second.resumed()
    with spangraph.workflow("ingest", execution_id=job) as third:  # after a run that ended
        third.resumed()
    with spangraph.workflow("ingest", execution_id=f"{job}-other") as alone:
        alone.resumed()  # nothing before it in its execution
    with spangraph.workflow("ingest", execution_id=job, resumed_from=first.ref) as told:
        told.resumed()  # it said which run: that link only
    flush()
    edges = sg.store.query(
        "MATCH (a:Workflow)-[:RESUMED_FROM]->(b:Workflow) WHERE a.execution_id STARTS WITH $job "
        "RETURN a.span_id AS a, b.span_id AS b",
        {"job": job},
    )
    assert sorted((r["a"], r["b"]) for r in edges) == sorted(
        [(second.span_id, first.span_id), (told.span_id, first.span_id)]
    )


def test_a_run_resumed_before_the_paused_one_was_written_is_linked(
    sg: spangraph.Spangraph,
) -> None:
    """A resume written before the run it resumes (its process wrote first: a fast
    approver in another process) was never linked: the paused run's write links it."""
    job = f"job-{uuid.uuid4().hex[:8]}"

    def resume() -> Any:
        with spangraph.workflow("ingest", execution_id=job) as run:
            run.resumed()
        return run

    with spangraph.workflow("ingest", execution_id=job) as first:
        first.paused(reason="waiting for approval")
        second = contextvars.Context().run(resume)  # a run of its own, not inside
        flush()  # the resumed run is written; the paused one still runs
        query = (
            "MATCH (a:Workflow {execution_id: $job})-[:RESUMED_FROM]->(b:Workflow) "
            "RETURN a.span_id AS a, b.span_id AS b"
        )
        assert sg.store.query(query, {"job": job}) == []
    flush()
    assert sg.store.query(query, {"job": job}) == [{"a": second.span_id, "b": first.span_id}]


# -- runs resumed in another process: RESUMED_FROM whichever is written first ------------


class _Ended(SpanProcessor):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:  # type: ignore[override]
        self.spans.append(span)


def _run(
    tracer: Any,
    job: str,
    name: str,
    *,
    paused: bool = False,
    resumed: bool = False,
    inner: bool = False,
    project: str = "p",
) -> ReadableSpan:
    """A run's workflow span, as a process exporting it would send it (``inner``: with
    another instrumentation's workflow span inside it, which takes the run's ids)."""
    attrs = {
        "spangraph.kind": "workflow",
        "spangraph.execution.id": job,
        "spangraph.workflow.id": uuid.uuid4().hex,
        "spangraph.project.id": project,
    }
    with tracer.start_as_current_span(name, attributes=attrs) as span:
        if resumed:
            span.add_event("workflow.resumed")
        if inner:
            with tracer.start_as_current_span(
                f"{name}-inner", attributes={"traceloop.span.kind": "workflow"}
            ):
                pass
        if paused:
            span.add_event("workflow.paused")
    return span  # type: ignore[return-value]


def _written(store: Any, *runs: list[ReadableSpan]) -> None:
    """Each list of spans written by a writer of its own, one after the other."""
    for spans in runs:
        writer = GraphSpanProcessor(store, project="p")
        try:
            for span in spans:
                writer.on_end(span)
            assert writer.force_flush(10_000)
        finally:
            writer.shutdown()


def _resumed_from(store: Any, job: str) -> set[tuple[str, str]]:
    rows = store.query(
        "MATCH (a:Span {execution_id: $j})-[:RESUMED_FROM]->(b:Span) "
        "RETURN a.name AS a, b.name AS b",
        {"j": job},
    )
    return {(r["a"], r["b"]) for r in rows}


@pytest.mark.parametrize("order", [(0, 1, 2), (0, 2, 1), (2, 1, 0), (1, 2, 0)])
def test_a_thread_that_paused_twice_is_a_chain_whatever_the_order_of_writes(
    store: Any, order: tuple[int, int, int]
) -> None:
    """A thread paused, resumed and paused again, resumed: written out of order (each
    run by its own process), the third run was linked to the first when the second came
    last, and the second's write did not mend it."""
    provider = TracerProvider()
    tracer = provider.get_tracer("t")
    job = f"job-{uuid.uuid4().hex[:8]}"
    runs = [
        _run(tracer, job, "r1", paused=True),
        _run(tracer, job, "r2", resumed=True, paused=True),
        _run(tracer, job, "r3", resumed=True),
    ]
    _written(store, *([runs[i]] for i in order))
    assert _resumed_from(store, job) == {("r2", "r1"), ("r3", "r2")}


@pytest.mark.parametrize("resumed_first", [False, True])
def test_workflow_spans_inside_runs_are_not_runs_to_link(store: Any, resumed_first: bool) -> None:
    """Another instrumentation's workflow span inside a run takes its execution id: it
    was taken for the run before (or after) the resumed one, and nothing was linked."""
    ended = _Ended()
    provider = TracerProvider()
    provider.add_span_processor(ended)
    tracer = provider.get_tracer("t")
    job = f"job-{uuid.uuid4().hex[:8]}"
    first = _run(tracer, job, "r1", paused=True, inner=True)
    second = _run(tracer, job, "r2", resumed=True, inner=True)
    inner = {s.name: s for s in ended.spans}
    writes = [[inner["r1-inner"], first], [inner["r2-inner"], second]]
    _written(store, *(reversed(writes) if resumed_first else writes))
    assert _resumed_from(store, job) == {("r2", "r1")}


def test_threads_of_two_projects_are_not_linked(store: Any) -> None:
    """Two programs whose LangGraph threads are both "1": a resume in one was linked to a
    pause in the other."""
    tracer = TracerProvider().get_tracer("t")
    thread = f"1-{uuid.uuid4().hex[:6]}"  # the same in both programs
    paused = _run(tracer, thread, "a-run", paused=True, project="app-a")
    resumed = _run(tracer, thread, "b-run", resumed=True, project="app-b")
    _written(store, [resumed], [paused])
    assert _resumed_from(store, thread) == set()


def test_retry_attempts_are_linked(sg: spangraph.Spangraph) -> None:
    calls = {"n": 0}

    @spangraph.step("flaky", retries=3, backoff=0)
    def flaky() -> str:
        calls["n"] += 1
        if calls["n"] < 3:
            raise ConnectionError(f"attempt {calls['n']} failed")
        return "ok"

    with spangraph.workflow("wf-retry") as run:
        assert flaky() == "ok"
    flush()

    rows = sg.store.query(
        "MATCH (s:Step {workflow_id: $wf, name: 'flaky'}) "
        "RETURN s.span_id AS id, s.state AS state, s.attributes AS a ORDER BY s.start_ns",
        {"wf": run.workflow_id},
    )
    assert [r["state"] for r in rows] == ["failed", "failed", "completed"]
    assert [json.loads(r["a"])["spangraph.step.attempt"] for r in rows] == [1, 2, 3]
    ids = [r["id"] for r in rows]
    retry_edges = sg.store.query(
        "MATCH (a:Span {workflow_id: $wf})-[:RETRY_OF]->(b:Span) "
        "RETURN a.span_id AS a, b.span_id AS b",
        {"wf": run.workflow_id},
    )
    assert {(r["a"], r["b"]) for r in retry_edges} == {(ids[1], ids[0]), (ids[2], ids[1])}
    # every attempt is a child of the workflow
    children = sg.store.query(
        "MATCH (w:Workflow {workflow_id: $wf})-[:PARENT_OF]->(s:Step) RETURN s.span_id AS id",
        {"wf": run.workflow_id},
    )
    assert sorted(r["id"] for r in children) == sorted(ids)
    scheduled = [e for e in events_of(sg.store, ids[0]) if e["name"] == "retry.scheduled"]
    assert len(scheduled) == 1 and json.loads(scheduled[0]["attributes"])["attempt"] == 1


def test_open_span_is_running_then_completed(sg: spangraph.Spangraph) -> None:
    def state(span_id: str) -> dict[str, Any]:
        rows = sg.store.query(
            "MATCH (s:Span {span_id: $id}) RETURN s.state AS state, s.end_ns AS end_ns, "
            "s.name AS name, labels(s) AS labels",
            {"id": span_id},
        )
        assert len(rows) == 1
        return rows[0]

    with spangraph.workflow("wf-open") as run:
        with spangraph.step("long") as step:
            flush()
            seen = state(step.span_id)
            assert seen["state"] == "running" and seen["end_ns"] is None
            assert seen["name"] == "long" and "Step" in seen["labels"]
            assert state(run.span_id)["state"] == "running"
        flush()
        assert state(step.span_id)["state"] == "completed"
        assert state(step.span_id)["end_ns"] is not None
        assert state(run.span_id)["state"] == "running"
    flush()
    assert state(run.span_id)["state"] == "completed"
    assert len(spans_of(sg.store, run.workflow_id)) == 2


def test_many_spans_across_batches(sg: spangraph.Spangraph) -> None:
    """More span starts and ends than one batch holds (1024): all written, none twice."""
    with spangraph.workflow("wf-many") as run:
        for i in range(700):
            with spangraph.step(f"s{i}"):
                pass
    flush()
    rows = sg.store.query(
        "MATCH (w:Workflow {workflow_id: $wf})-[:PARENT_OF]->(s:Step) "
        "RETURN count(s) AS n, collect(DISTINCT s.state) AS states",
        {"wf": run.workflow_id},
    )
    assert rows == [{"n": 700, "states": ["completed"]}]
    assert sg.stats()["graph"]["dropped"] == 0


# -- what the worker writes -----------------------------------------------------------------


class RecordingStore(FalkorDBStore):
    """A real FalkorDBStore that keeps a copy of every batch it is given, and behaves like
    an auto-instrumented client: it makes a span per write unless instrumentation is
    suppressed (what opentelemetry-instrumentation-redis checks)."""

    tracer: trace.Tracer | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[WriteBatch] = []
        self.suppressed: list[bool] = []
        self.threads: list[str] = []

    def encode(self, batch: WriteBatch) -> EncodedWrite:
        # the processor hands every batch to encode (on its preparing thread) ...
        self.batches.append(
            WriteBatch(
                starts={k: list(v) for k, v in batch.starts.items()},
                ends={k: list(v) for k, v in batch.ends.items()},
                parents=list(batch.parents),
                events=list(batch.events),
                links={k: list(v) for k, v in batch.links.items()},
            )
        )
        return super().encode(batch)

    def submit(self, encoded: EncodedWrite) -> Callable[[], None]:
        # ... and sends it from its sending thread
        self._record_send()
        return super().submit(encoded)

    def write(self, batch: WriteBatch | EncodedWrite) -> None:
        self._record_send()
        super().write(batch)

    def _record_send(self) -> None:
        self.suppressed.append(not is_instrumentation_enabled())
        self.threads.append(threading.current_thread().name)
        if self.tracer is not None and is_instrumentation_enabled():
            self.tracer.start_span("GRAPH.QUERY redis").end()

    def written(self, where: str) -> dict[str, int]:
        """span_id -> how many rows for it went into ``starts`` or ``ends``."""
        out: dict[str, int] = {}
        for batch in self.batches:
            for rows in getattr(batch, where).values():
                for row in rows:
                    out[row["span_id"]] = out.get(row["span_id"], 0) + 1
        return out


class SpanNames(SpanProcessor):
    def __init__(self) -> None:
        self.names: list[str] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.names.append(span.name)


S = TypeVar("S", bound=FalkorDBStore)


@contextlib.contextmanager
def own_graph(
    store_class: type[S], sg: spangraph.Spangraph, provider: TracerProvider, server: Any
) -> Iterator[tuple[S, GraphSpanProcessor]]:
    """A second GraphSpanProcessor on the test's provider, writing through a
    ``store_class`` store into a graph of its own; its worker wakes only on flush."""
    store = store_class.from_url(f"falkordb://127.0.0.1:{server.port}/own_{uuid.uuid4().hex[:10]}")
    processor = GraphSpanProcessor(store, project=sg.settings.project, schedule_delay=60)
    provider.add_span_processor(processor)
    try:
        yield store, processor
    finally:
        processor.shutdown()
        store.delete_all()
        store.close()


@pytest.fixture
def recording(
    sg: spangraph.Spangraph, provider: TracerProvider, embedded_server: Any
) -> Iterator[tuple[RecordingStore, GraphSpanProcessor]]:
    """A second GraphSpanProcessor on the test's provider, writing through a
    RecordingStore into a graph of its own; its worker wakes only on flush."""
    with own_graph(RecordingStore, sg, provider, embedded_server) as both:
        yield both


def test_an_unreadable_record_is_skipped_and_counted_as_dropped(
    sg: spangraph.Spangraph, recording: tuple[RecordingStore, GraphSpanProcessor]
) -> None:
    store, processor = recording
    processor._queue_record(1, ("not a span",) * 15)  # an END record that cannot be read
    with spangraph.workflow("wf-next") as run, spangraph.step("s"):
        pass
    assert processor.force_flush(10_000) is False  # written, all but the bad record
    assert len(store.batches) == 1  # one batch: the bad record did not spoil it
    assert set(spans_of(store, run.workflow_id)) == {"wf-next", "s"}
    stats = processor.stats()
    assert stats["dropped"] == 1  # before: 0, the skip was only logged
    assert stats["sent"] == 4  # two starts and two ends


def test_a_span_without_ids_is_skipped_alone(sg: spangraph.Spangraph) -> None:
    """A span no copy can read and whose ids cannot be read either (a ReadableSpan other
    code built without a context) is skipped and counted alone (before: it made the whole
    batch fail to map, and every span in it was dropped)."""
    processor = sg.graph_processor
    assert processor is not None
    with spangraph.workflow("wf-poisoned") as run:
        for i in range(50):
            with spangraph.step(f"s{i}"):
                pass
            if i == 25:
                processor.on_end(ReadableSpan(name="no-context"))
    assert spangraph.flush(10) is False  # written, all but the bad span
    names = {s["name"] for s in queries.workflow_spans(sg.store, run.workflow_id)}
    assert names == {"wf-poisoned", *(f"s{i}" for i in range(50))}
    assert processor.stats()["dropped"] == 1


def test_span_started_and_ended_in_one_batch_is_written_once(
    sg: spangraph.Spangraph, recording: tuple[RecordingStore, GraphSpanProcessor]
) -> None:
    store, processor = recording
    with spangraph.workflow("wf-once") as run:
        with spangraph.step("quick"):
            pass
        with spangraph.step("spans-a-flush") as open_step:
            assert processor.force_flush(10_000)
        with spangraph.step("quick-2"):
            pass
    assert processor.force_flush(10_000)

    assert len(store.batches) == 2
    starts, ends = store.written("starts"), store.written("ends")
    spans = spans_of(store, run.workflow_id)
    ids = {name: props["span_id"] for name, props in spans.items()}
    # spans that started and ended within a batch: one end row, no start row
    for name in ("quick", "quick-2"):
        assert starts.get(ids[name], 0) == 0 and ends[ids[name]] == 1, name
    # spans open across a batch boundary: a start row in the first, an end row in the second
    first = store.batches[0]
    assert {r["span_id"] for rows in first.starts.values() for r in rows} == {
        run.span_id, open_step.span_id,
    }  # fmt: skip
    assert starts[run.span_id] == 1 and ends[run.span_id] == 1
    assert starts[open_step.span_id] == 1 and ends[open_step.span_id] == 1
    assert all(s["state"] == "completed" for s in spans.values())
    # events go with the end rows only, once each
    event_keys = [(r["span_id"], r["seq"]) for b in store.batches for r in b.events]
    assert len(event_keys) == len(set(event_keys)) == 8  # started+completed of 4 spans


def test_store_calls_are_not_traced(
    sg: spangraph.Spangraph,
    provider: TracerProvider,
    recording: tuple[RecordingStore, GraphSpanProcessor],
) -> None:
    store, processor = recording
    names = SpanNames()
    provider.add_span_processor(names)
    store.tracer = provider.get_tracer("fake-redis-instrumentation")
    try:
        with spangraph.workflow("wf-untraced"), spangraph.step("a"):
            pass
        assert processor.force_flush(10_000)
        assert store.batches, "nothing was written"
        assert all(store.suppressed)
        assert set(store.threads) == {"spangraph-graph-send"}
        assert sorted(names.names) == ["a", "wf-untraced"]

        # control: the same write outside the worker thread is traced
        store.write(WriteBatch())
        assert names.names[-1] == "GRAPH.QUERY redis"
    finally:
        store.tracer = None


def test_configure_makes_its_own_calls_untraced(
    graph_url: str, embedded_server: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """configure()'s pings and schema statements run with instrumentation suppressed, as
    the workers' writes do: a program with redis instrumentation on got spans of them."""
    import redis

    seen: list[bool] = []
    original = redis.Redis.execute_command

    def recording(self: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(is_instrumentation_enabled())  # what an instrumentation would check
        return original(self, *args, **kwargs)

    monkeypatch.setattr(redis.Redis, "execute_command", recording)
    try:
        spangraph.configure(
            tracer_provider=TracerProvider(),
            graph_url=graph_url,
            redis_url=embedded_server.redis_url,
            home=str(tmp_path),
        )
        assert seen, "configure() made no redis call"
        assert not any(seen)
    finally:
        spangraph.shutdown()
    seen.clear()
    redis.Redis.from_url(embedded_server.redis_url).ping()  # control: a call of the program
    assert seen == [True]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_forked_while_configure_runs_can_shut_down(sg: spangraph.Spangraph) -> None:
    """configure() holds spangraph's lock for seconds (shutting the last configuration
    down, connecting): a child forked meanwhile got the lock held by a thread it does not
    have, and hung in its shutdown at exit."""
    from spangraph import _sdk

    with held_by_a_thread(_sdk._lock):
        pid = os.fork()
        if pid == 0:  # the child: shut down as atexit would, and leave
            try:
                spangraph.shutdown(timeout=2)
            finally:
                os._exit(0)
    assert exit_code_of(pid, 20) == 0


# -- spans from other instrumentations ------------------------------------------------------


def test_plain_otel_spans_inherit_the_workflow_id(
    sg: spangraph.Spangraph, provider: TracerProvider
) -> None:
    tracer = provider.get_tracer("some.other.library")
    with spangraph.workflow("wf-mixed") as run:
        with tracer.start_as_current_span("http GET"), tracer.start_as_current_span("dns"):
            pass
        with spangraph.step("step-under-plain"):
            pass
    flush()
    spans = spans_of(sg.store, run.workflow_id)
    assert set(spans) == {"wf-mixed", "http GET", "dns", "step-under-plain"}
    for name in ("http GET", "dns"):
        assert spans[name]["_labels"] == ["Span"] and spans[name]["kind"] == "span"
        assert spans[name]["state"] == "completed"
    assert edges(sg.store, "PARENT_OF", run.workflow_id) == {
        ("wf-mixed", "http GET"), ("http GET", "dns"), ("wf-mixed", "step-under-plain"),
    }  # fmt: skip


def test_oversized_values_of_plain_otel_spans_are_cut_with_a_marker(
    sg: spangraph.Spangraph, provider: TracerProvider
) -> None:
    """The plain OpenTelemetry API does not cut values (spangraph's own API does): what
    is stored is cut to MAX_VALUE_CHARS with a marker, as it is for spangraph's spans."""
    from opentelemetry.trace import Status, StatusCode

    from spangraph._attrs import MAX_VALUE_CHARS, truncate

    tracer = provider.get_tracer("some.llm.library")
    prompt = "p" * 1_000_000
    with (
        spangraph.workflow("wf-big") as run,
        tracer.start_as_current_span("n" * 20_000) as span,
    ):
        span.set_attribute("llm.prompt", prompt)
        span.set_attribute("small", "kept")
        span.add_event("chunk", {"text": prompt})
        span.set_status(Status(StatusCode.ERROR, "e" * 50_000))
    flush()
    [big] = [p for name, p in spans_of(sg.store, run.workflow_id).items() if name != "wf-big"]
    attributes = json.loads(big["attributes"])
    assert attributes == {"llm.prompt": truncate(prompt), "small": "kept"}
    assert len(attributes["llm.prompt"]) == MAX_VALUE_CHARS
    assert attributes["llm.prompt"].endswith(" chars]")
    assert big["name"] == truncate("n" * 20_000)
    assert len(big["name"]) == MAX_VALUE_CHARS
    assert big["status_message"] == truncate("e" * 50_000)
    [event] = events_of(sg.store, big["span_id"])
    assert json.loads(event["attributes"]) == {"text": truncate(prompt)}


def test_names_that_are_not_text_do_not_cost_the_batch(
    sg: spangraph.Spangraph, provider: TracerProvider
) -> None:
    """A plain OTel span or event named with bytes (or another non-text value; the API
    does not check) made the store reject the whole batch: every span in it was dropped.
    Names are stored as their text now, and event names are cut as span names are."""
    from spangraph._attrs import MAX_VALUE_CHARS

    tracer = provider.get_tracer("foreign")
    with spangraph.workflow("wf-odd-names") as run:
        with tracer.start_as_current_span(b"raw-bytes") as span:  # type: ignore[arg-type]
            span.add_event(b"ev-bytes")  # type: ignore[arg-type]
            span.add_event("e" * 20_000)
        with tracer.start_as_current_span(7):  # type: ignore[arg-type]
            pass
        with spangraph.step("innocent"):
            pass
    spans = written_whole(sg, run.workflow_id)
    assert spans["b'raw-bytes'"]["state"] == "completed"
    assert spans["7"]["state"] == "completed"
    names = [e["name"] for e in events_of(sg.store, spans["b'raw-bytes'"]["span_id"])]
    assert names[0] == "b'ev-bytes'"
    assert len(names[1]) == MAX_VALUE_CHARS and names[1].endswith(" chars]")


def test_times_past_int64_do_not_cost_the_batch(
    sg: spangraph.Spangraph, provider: TracerProvider
) -> None:
    """The OTel SDK takes any int as a span's or an event's time; one past 64 bits made
    the store reject the whole batch (Neo4j's driver cannot send it). Times are stored
    within 0 .. 2**63-1, as the OTLP receiver takes them."""
    tracer = provider.get_tracer("foreign")
    with spangraph.workflow("wf-far-times") as run:
        span = tracer.start_span("far", start_time=2**64)
        span.add_event("later", timestamp=2**65)
        span.end(end_time=2**66)
        with spangraph.step("innocent"):
            pass
    spans = written_whole(sg, run.workflow_id)
    assert spans["far"]["start_ns"] == spans["far"]["end_ns"] == 2**63 - 1
    assert [e["time_ns"] for e in events_of(sg.store, spans["far"]["span_id"])] == [2**63 - 1]


def test_plain_otel_span_open_across_a_flush_inherits_the_workflow_id(
    sg: spangraph.Spangraph, provider: TracerProvider
) -> None:
    tracer = provider.get_tracer("some.other.library")
    with spangraph.workflow("wf-mixed-open") as run, tracer.start_as_current_span("outer-plain"):
        flush()
        with tracer.start_as_current_span("inner-plain"):
            pass
    flush()
    spans = spans_of(sg.store, run.workflow_id)
    assert {"outer-plain", "inner-plain"} <= set(spans)


def test_plain_root_span_uses_its_trace_id(
    sg: spangraph.Spangraph, provider: TracerProvider
) -> None:
    tracer = provider.get_tracer("some.other.library")
    with tracer.start_as_current_span("lonely") as span:
        trace_id = format(span.get_span_context().trace_id, "032x")
    flush()
    spans = spans_of(sg.store, trace_id)
    assert set(spans) == {"lonely"} and spans["lonely"]["project_id"] == sg.settings.project


def test_genai_spans_and_links_from_other_instrumentations(
    sg: spangraph.Spangraph, provider: TracerProvider
) -> None:
    tracer = provider.get_tracer("genai.lib")
    with spangraph.workflow("wf-genai") as run:
        with tracer.start_as_current_span(
            "chat small-model", attributes={"gen_ai.operation.name": "chat"}
        ) as chat:
            pass
        with tracer.start_as_current_span(
            "execute_tool search", attributes={"gen_ai.operation.name": "execute_tool"}
        ):
            pass
        with tracer.start_as_current_span(
            "watcher",
            attributes={"spangraph.kind": "monitor"},
            links=[Link(chat.get_span_context(), {"spangraph.link.type": "monitors"})],
        ):
            pass
    flush()
    spans = spans_of(sg.store, run.workflow_id)
    assert spans["chat small-model"]["_labels"] == ["LLM", "Span"]
    assert spans["chat small-model"]["kind"] == "llm"
    assert spans["execute_tool search"]["_labels"] == ["Span", "Tool"]
    assert spans["watcher"]["_labels"] == ["Monitor", "Span"]
    assert edges(sg.store, "MONITORS", run.workflow_id) == {("watcher", "chat small-model")}


# -- reading it back ------------------------------------------------------------------------


def test_tree_query_returns_the_structure(sg: spangraph.Spangraph) -> None:
    with spangraph.workflow("wf-tree") as run:
        with spangraph.step("first"):
            with spangraph.step("first.a"):
                pass
            with spangraph.step("first.b"):
                pass
        with spangraph.step("second"):
            pass
    flush()
    roots = queries.tree(sg.store, run.workflow_id)
    assert len(roots) == 1
    shape = [(depth, node.name) for depth, node in roots[0].walk()]
    assert shape == [
        (0, "wf-tree"), (1, "first"), (2, "first.a"), (2, "first.b"), (1, "second"),
    ]  # fmt: skip
    assert roots[0].span["span_id"] == run.span_id
    assert isinstance(roots[0].span["attributes"], dict)  # decoded from JSON
    assert all(node.span["state"] == "completed" for _, node in roots[0].walk())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_writes_through_its_own_connection(sg: spangraph.Spangraph) -> None:
    with spangraph.workflow("before-fork"):
        pass
    assert spangraph.flush(10)  # the parent's writer connection is open now
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            with spangraph.workflow("in-child"), spangraph.step("child-step"):
                pass
            code = 0 if spangraph.flush(10) else 2
            store = sg.store
            # FalkorDB: the child's writes went through a connection it opened itself
            if isinstance(store, FalkorDBStore) and store._writer_pid != os.getpid():
                code = 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with spangraph.workflow("after-fork"):
        pass
    assert spangraph.flush(10)
    names = {
        row["name"]
        for row in sg.store.query(
            "MATCH (s:Span) WHERE s.project_id = $p RETURN s.name AS name",
            {"p": sg.settings.project},
        )
    }
    assert {"before-fork", "in-child", "child-step", "after-fork"} <= names
    assert sg.stats()["graph"]["dropped"] == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_forked_inside_a_step_leaves_the_parents_spans_to_the_parent(
    sg: spangraph.Spangraph,
) -> None:
    # the child leaves the workflow and step it was forked inside of (with an exception:
    # a failure), after the parent ended them: the parent's outcome and time stay
    def in_child() -> None:  # pragma: no cover - runs in the child
        with spangraph.step("in-child"):
            pass

    child = ForkedChild()
    with child, spangraph.workflow("wf-forked") as run, spangraph.step("outer") as outer:
        child.fork(in_child)
    assert child.release() == 0
    rows = {
        row["name"]: row
        for row in sg.store.query(
            "MATCH (s:Span) WHERE s.workflow_id = $w "
            "OPTIONAL MATCH (s)-[:HAS_EVENT]->(e:Event) "
            "RETURN s.name AS name, s.state AS state, s.end_ns AS end_ns, "
            "collect(e.name) AS events",
            {"w": run.workflow_id},
        )
    }
    assert set(rows) == {"wf-forked", "outer", "in-child"}
    assert rows["in-child"]["state"] == "completed"  # the child's own span
    for name in ("wf-forked", "outer"):
        assert rows[name]["state"] == "completed", name
        assert not any(e.endswith(".failed") for e in rows[name]["events"]), rows[name]
    assert rows["outer"]["end_ns"] == outer.span.end_time


# -- a batch the store never finishes ---------------------------------------------------------


class PoisonStore(FalkorDBStore):
    """A real FalkorDBStore, except that a write holding the row of ``poison`` times out
    (as one the server never finishes in its socket timeout would): every other write
    goes to the server."""

    poison = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.attempts: list[int] = []  # spans of each write tried

    def _check(self, payload: Any) -> None:
        batch = payload.source if isinstance(payload, EncodedWrite) else payload
        ids = {
            r["span_id"] for rows in (*batch.starts.values(), *batch.ends.values()) for r in rows
        }
        self.attempts.append(len(ids))
        if self.poison in ids:
            raise StoreTimeoutError(f"FalkorDB at {self.url} did not answer a write (test)")

    def submit(self, encoded: EncodedWrite) -> Callable[[], None]:
        self._check(encoded)
        return super().submit(encoded)

    def write(self, batch: WriteBatch | EncodedWrite) -> None:
        self._check(batch)
        super().write(batch)


@pytest.fixture
def poisoned(
    sg: spangraph.Spangraph, provider: TracerProvider, embedded_server: Any
) -> Iterator[tuple[PoisonStore, GraphSpanProcessor]]:
    """A GraphSpanProcessor on the test's provider writing through a PoisonStore into a
    graph of its own; its worker wakes only on flush."""
    with own_graph(PoisonStore, sg, provider, embedded_server) as both:
        yield both


def run_with_poison(store: PoisonStore, steps: int, poison: int) -> str:
    """A workflow of ``steps`` steps, step ``poison`` the one the store times out on."""
    with spangraph.workflow("wf") as run:
        for i in range(steps):
            with spangraph.step(f"s{i}") as step:
                if i == poison:
                    store.poison = step.span_id
    return run.workflow_id


def test_a_batch_that_times_out_is_split_and_only_its_culprit_dropped(
    poisoned: tuple[PoisonStore, GraphSpanProcessor],
) -> None:
    """Before, a batch that timed out every time was retried until shutdown, holding back
    everything queued behind it. Now it is sent in halves (the store answering a ping
    meanwhile), down to the one span the store cannot finish, which is dropped and
    counted; every other span is written."""
    store, processor = poisoned
    workflow_id = run_with_poison(store, 40, 17)
    assert processor.force_flush(30_000) is False  # done, but s17 was dropped
    names = set(spans_of(store, workflow_id))
    assert names == {"wf"} | {f"s{i}" for i in range(40)} - {"s17"}
    stats = processor.stats()
    assert stats["failed"] == 1 and 1 <= stats["dropped"] <= 2  # s17's start and end
    assert stats["sent"] + stats["dropped"] == 82  # 41 spans, a start and an end each
    assert store.attempts[0] == 41 and min(store.attempts) == 1
    assert len(store.attempts) < 40  # halves, not span by span

    # the worker goes on: a later batch is written as usual
    with spangraph.workflow("after") as later:
        pass
    assert processor.force_flush(10_000)
    assert set(spans_of(store, later.workflow_id)) == {"after"}


def test_a_store_that_does_not_answer_pings_is_an_outage_not_a_bad_batch(
    poisoned: tuple[PoisonStore, GraphSpanProcessor],
) -> None:
    """Writes time out and pings fail too (a stuck server): the batch is neither split nor
    dropped, only retried; once the server answers again, everything is written."""
    store, processor = poisoned
    stuck = threading.Event()
    stuck.set()
    real_ping = store.ping

    def ping() -> None:
        if stuck.is_set():
            raise StoreUnavailableError("no answer (test)")
        real_ping()

    store.ping = ping  # type: ignore[method-assign]
    workflow_id = run_with_poison(store, 8, 3)
    assert not processor.force_flush(1_500)  # still retrying
    assert set(store.attempts) == {9}  # the whole batch each time: never split
    assert len(store.attempts) > 4  # more timeouts than a bad batch is given
    assert processor.stats()["dropped"] == 0
    store.poison = ""  # the server answers again
    stuck.clear()
    assert processor.force_flush(15_000)
    assert set(spans_of(store, workflow_id)) == {"wf"} | {f"s{i}" for i in range(8)}
    assert processor.stats()["dropped"] == 0


# -- odd data in one span fails no other ------------------------------------------------------


def test_an_option_name_with_a_lone_surrogate_is_written_with_its_batch(
    sg: spangraph.Spangraph,
) -> None:
    """An option name from ``os.fsdecode`` (a lone surrogate) raised UnicodeEncodeError
    while the batch was mapped: the run and every other span of the batch were lost."""
    with spangraph.workflow("wf-surrogate") as run:
        with spangraph.step("unrelated"):
            pass
        with spangraph.decision("pick-file", options=["report\udcff.txt", "other.txt"]) as d:
            d.choose("other.txt")
    flush()
    assert sg.stats()["graph"]["dropped"] == 0
    names = set(spans_of(sg.store, run.workflow_id))
    assert names == {"wf-surrogate", "unrelated", "pick-file", "report\ufffd.txt", "other.txt"}
    [decision] = queries.decisions(sg.store, run.workflow_id)
    assert [(o["name"], o["chosen"]) for o in decision["options"]] == [
        ("report\ufffd.txt", False),
        ("other.txt", True),
    ]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 2**70, 2**64])
def test_run_ids_of_other_types_from_plain_otel_spans_are_text(
    sg: spangraph.Spangraph, provider: TracerProvider, value: Any
) -> None:
    """A NaN branch or execution id (another program's) failed the write of the whole
    batch; ids beyond int64 were clamped into one."""
    tracer = provider.get_tracer("foreign")
    with spangraph.workflow("wf-odd-ids") as run:
        with tracer.start_as_current_span(
            "foreign",
            attributes={"spangraph.branch.id": value, "spangraph.execution.id": value},
        ):
            pass
        with spangraph.step("innocent"):
            pass
    spans = written_whole(sg, run.workflow_id)
    assert spans["foreign"]["branch_id"] == str(value)
    assert spans["foreign"]["execution_id"] == str(value)


def test_an_option_name_with_a_nul_matches_its_node(sg: spangraph.Spangraph) -> None:
    """The decision's attributes keep a NUL that the store's node name does not: the
    option was listed twice (a phantom, unexplored and not chosen) and the choice lost."""
    with (
        spangraph.workflow("wf-nul") as run,
        spangraph.decision("route", options=["a\x00b", "c"]) as d,
    ):
        with d.option("a\x00b"):
            pass
        d.choose("a\x00b")
    flush()
    [decision] = queries.decisions(sg.store, run.workflow_id)
    assert [(o["name"], o["explored"], o["chosen"]) for o in decision["options"]] == [
        ("a\ufffdb", True, True),
        ("c", False, False),
    ]
    assert decision["chosen"] == "a\ufffdb"


def test_a_runs_end_is_written_when_the_queue_is_full(private_servers: Any) -> None:
    """A burst the store could not keep up with filled the queue, and the new spans were
    dropped, counted: before, the run's own end among them, so the graph kept the run
    `running` for good. A full queue still takes the end of a workflow or root span."""
    _, info = private_servers.start("burst")
    store = FalkorDBStore.from_url(info.graph_url)
    try:
        store.ensure_schema()
        processor = GraphSpanProcessor(store, project="burst", max_queue_size=16, max_batch_size=4)
        run = paused_burst(processor, info.port)
        [root] = store.query(
            "MATCH (w:Workflow {span_id: $id}) RETURN w.state AS state", {"id": run.span_id}
        )
        assert root["state"] == "completed"
        [steps] = store.query(
            "MATCH (s:Step {workflow_id: $w}) RETURN count(s) AS n", {"w": run.workflow_id}
        )
        assert steps["n"] < 300  # the burst was cut
    finally:
        store.close()


@pytest.mark.parametrize("at_start", AT_TRACELOOP_START)
def test_a_kind_set_just_after_the_start_is_written_while_the_span_runs(
    sg: spangraph.Spangraph, provider: TracerProvider, at_start: dict[str, Any]
) -> None:
    # Traceloop's @workflow/@task and OpenLLMetry's LangChain handler name a span's kind
    # with set_attribute right after its start: a run so made is a labelled, listed run
    # while it runs (and after a crash), not only once it ends
    root = traceloop_workflow(provider, at_start)
    tracer = provider.get_tracer("traceloop.tracer")
    with (
        trace.use_span(root, end_on_exit=True),
        tracer.start_as_current_span("search.task") as task,
    ):
        task.set_attribute("traceloop.span.kind", "task")
        flush()
        rows = sg.store.query(
            "MATCH (s:Span) WHERE s.trace_id = $trace "
            "RETURN s.name AS name, s.kind AS kind, s.state AS state, labels(s) AS labels",
            {"trace": f"{root.get_span_context().trace_id:032x}"},
        )
        seen = {row["name"]: row for row in rows}
        assert seen["research.workflow"]["kind"] == "workflow"
        assert sorted(seen["research.workflow"]["labels"]) == ["Span", "Workflow"]
        assert seen["research.workflow"]["state"] == "running"
        assert seen["search.task"]["kind"] == "step"
        assert "Step" in seen["search.task"]["labels"]
        listed = queries.workflows(sg.store, name="research.workflow")
        assert [run["state"] for run in listed] == ["running"]
    flush()
    assert sg.stats()["graph"]["dropped"] == 0


def test_a_span_whose_kind_changes_after_its_start_was_written_keeps_one_label(
    sg: spangraph.Spangraph, provider: TracerProvider
) -> None:
    # a step by its Traceloop kind when its start is written, a model call by the GenAI
    # kind set later (which ranks higher): the node ends :LLM alone, not :Step:LLM
    with spangraph.workflow("wf-relabel"):  # (at a trace's root, a task heads a run)
        task = {"traceloop.span.kind": "task"}
        span = provider.get_tracer("t").start_span("call", attributes=task)
    flush()

    def node() -> dict[str, Any]:
        (row,) = sg.store.query(
            "MATCH (s:Span {span_id: $id}) RETURN s.kind AS kind, labels(s) AS labels",
            {"id": f"{span.get_span_context().span_id:016x}"},
        )
        return {"kind": row["kind"], "labels": sorted(row["labels"])}

    assert node() == {"kind": "step", "labels": ["Span", "Step"]}
    span.set_attribute("gen_ai.operation.name", "chat")
    span.end()
    flush()
    assert node() == {"kind": "llm", "labels": ["LLM", "Span"]}
    assert sg.stats()["graph"]["dropped"] == 0
