"""LangGraph instrumentation: real graphs with plain-function nodes, spans captured in
memory (and, for the docs example, written to the embedded graph store)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import operator
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, TypedDict

import pytest

pytest.importorskip("langgraph")
pytest.importorskip("opentelemetry.instrumentation.instrumentor")

from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, RetryPolicy, Send, interrupt
from opentelemetry.sdk.trace import ReadableSpan
from wrapt import FunctionWrapper

import spangraph
from spangraph import queries, testing
from spangraph import semconv as sc
from spangraph.instrumentation.langgraph import LangGraphInstrumentor

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def instrumented() -> Iterator[LangGraphInstrumentor]:
    from spangraph.instrumentation import _langgraph_tasks

    inst = LangGraphInstrumentor()
    inst.instrument()
    yield inst
    assert not _langgraph_tasks._parallel, "superstep marks left behind"
    if inst.is_instrumented_by_opentelemetry:
        inst.uninstrument()


# -- graphs -------------------------------------------------------------------------------


class Trail(TypedDict):
    path: Annotated[list[str], operator.add]


def _node(name: str, fail: BaseException | None = None) -> Any:
    def run(state: Trail) -> dict[str, Any]:
        if fail is not None:
            raise fail
        return {"path": [name]}

    run.__name__ = name
    return run


def _anode(name: str) -> Any:
    async def run(state: Trail) -> dict[str, Any]:
        await asyncio.sleep(0.001)
        return {"path": [name]}

    return run


def route(state: Trail) -> Literal["c", "d"]:
    spangraph.event("routing", seen=len(state["path"]))
    return "c"


def abcd(*, fail_b: BaseException | None = None, asynchronous: bool = False) -> Any:
    """a -> b -> (c | d) -> END, the conditional edge choosing c."""
    make = _anode if asynchronous else _node
    builder = StateGraph(Trail)
    builder.add_node("a", make("a"))
    builder.add_node("b", _node("b", fail_b) if fail_b else make("b"))
    builder.add_node("c", make("c"))
    builder.add_node("d", make("d"))
    builder.add_edge(START, "a")
    builder.add_edge("a", "b")
    builder.add_conditional_edges("b", route)
    builder.add_edge("c", END)
    builder.add_edge("d", END)
    return builder.compile()


COMPILED_BEFORE_INSTRUMENTING = abcd()


def run_graph(graph: Any, how: str, state: Any, **kwargs: Any) -> Any:
    if how == "invoke":
        return graph.invoke(state, **kwargs)
    if how == "stream":
        return list(graph.stream(state, **kwargs))
    if how == "ainvoke":
        return asyncio.run(graph.ainvoke(state, **kwargs))
    if how == "astream":

        async def consume() -> list[Any]:
            return [chunk async for chunk in graph.astream(state, **kwargs)]

        return asyncio.run(consume())
    if how == "astream_events":

        async def events() -> list[Any]:
            return [e async for e in graph.astream_events(state, version="v2", **kwargs)]

        return asyncio.run(events())
    raise AssertionError(how)


HOWS = ["invoke", "ainvoke", "stream", "astream"]


# -- helpers ------------------------------------------------------------------------------


def kind(span: ReadableSpan) -> Any:
    return (span.attributes or {}).get(sc.KIND)


def attr(span: ReadableSpan, key: str) -> Any:
    return (span.attributes or {}).get(key)


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent else None


def one(spans: list[ReadableSpan]) -> ReadableSpan:
    assert len(spans) == 1, [s.name for s in spans]
    return spans[0]


def assert_one_trace(cap: testing.SpanCapture) -> ReadableSpan:
    """All spans in one trace under one root, which is the workflow; returns it."""
    assert {s.context.trace_id for s in cap.spans} and len(
        {s.context.trace_id for s in cap.spans}
    ) == 1, "spans spread over several traces"
    roots = [s for s in cap.spans if s.parent is None]
    root = one(roots)
    assert kind(root) == sc.KIND_WORKFLOW
    ids = {s.context.span_id for s in cap.spans}
    assert all(parent_of(s) in ids for s in cap.spans if s is not root), "dangling parent"
    return root


def assert_abcd(cap: testing.SpanCapture, name: str = "LangGraph") -> ReadableSpan:
    root = assert_one_trace(cap)
    assert root.name == name
    assert attr(root, sc.STATE) == sc.STATE_COMPLETED
    assert attr(root, sc.WORKFLOW_NAME) == name
    steps = cap.find(kind=sc.KIND_STEP)
    assert sorted(s.name for s in steps) == ["a", "b", "c"]
    workflow_id = attr(root, sc.WORKFLOW_ID)
    for step in steps:
        assert parent_of(step) == root.context.span_id
        assert attr(step, sc.WORKFLOW_ID) == workflow_id
        assert attr(step, sc.STEP_ATTEMPT) == 1
        assert attr(step, sc.STATE) == sc.STATE_COMPLETED
        assert attr(step, "langgraph.node") == step.name
    decision = one(cap.find(kind=sc.KIND_DECISION))
    assert decision.name == "route"
    assert list(attr(decision, sc.DECISION_OPTIONS)) == ["c", "d"]
    assert attr(decision, sc.DECISION_CHOSEN) == "c"
    assert list(attr(decision, sc.DECISION_OPTION_SPAN_IDS)) == ["", ""]  # not explored
    assert parent_of(decision) == one(cap.find("b")).context.span_id
    assert attr(decision, sc.WORKFLOW_ID) == workflow_id
    # the routing function ran inside the decision span
    assert [e.span_name for e in cap.events("routing")] == ["route"]
    # and in order: a, b, the decision, c
    order = sorted([*steps, decision], key=lambda s: s.start_time or 0)
    assert [s.name for s in order] == ["a", "b", "route", "c"]
    return root


# -- invocations --------------------------------------------------------------------------


@pytest.mark.parametrize("how", HOWS)
def test_invocation_is_one_workflow_with_steps_and_a_decision(
    instrumented: LangGraphInstrumentor, how: str
) -> None:
    graph = abcd()
    with testing.capture() as cap:
        out = run_graph(graph, how, {"path": []})
    if how in ("invoke", "ainvoke"):
        assert out == {"path": ["a", "b", "c"]}
    else:
        assert [next(iter(chunk)) for chunk in out] == ["a", "b", "c"]
    root = assert_abcd(cap)
    assert cap.event_names()[0] == sc.WORKFLOW_STARTED
    assert cap.event_names()[-1] == sc.WORKFLOW_COMPLETED
    assert root.attributes and root.attributes[sc.GEN_AI_OPERATION_NAME] == "invoke_workflow"


def test_stream_left_early_ends_the_run(instrumented: LangGraphInstrumentor) -> None:
    graph = abcd()
    with testing.capture() as cap:
        stream = graph.stream({"path": []})
        assert next(iter(next(stream))) == "a"
        stream.close()

        async def first_only() -> None:
            astream = graph.astream({"path": []})
            await anext(astream)
            await astream.aclose()  # type: ignore[attr-defined]

        asyncio.run(first_only())
    runs = cap.find(kind=sc.KIND_WORKFLOW)
    assert [attr(r, sc.STATE) for r in runs] == ["completed", "completed"]
    assert len({r.context.trace_id for r in runs}) == 2
    for run in runs:
        steps = [s for s in cap.spans if s.context.trace_id == run.context.trace_id]
        assert all(s.end_time for s in steps)
        assert "a" in {s.name for s in steps}


@pytest.mark.parametrize("how", ["invoke", "astream"])
def test_async_nodes_keep_one_trace(instrumented: LangGraphInstrumentor, how: str) -> None:
    graph = abcd(asynchronous=True)
    with testing.capture() as cap:
        if how == "invoke":
            out = asyncio.run(graph.ainvoke({"path": []}))
            assert out == {"path": ["a", "b", "c"]}
        else:
            run_graph(graph, how, {"path": []})
    assert_abcd(cap)


def test_astream_events_streams_each_node(instrumented: LangGraphInstrumentor) -> None:
    """``astream_events`` runs every node through ``proc.astream``: still one trace."""
    with testing.capture() as cap:
        events = run_graph(abcd(asynchronous=True), "astream_events", {"path": []})
    assert events
    assert_abcd(cap)


def test_graph_compiled_before_instrumenting(instrumented: LangGraphInstrumentor) -> None:
    with testing.capture() as cap:
        COMPILED_BEFORE_INSTRUMENTING.invoke({"path": []})
    assert_abcd(cap)


def test_graph_name_and_thread_id(instrumented: LangGraphInstrumentor) -> None:
    builder = StateGraph(Trail)
    builder.add_node("a", _node("a"))
    builder.add_edge(START, "a")
    graph = builder.compile(name="triage", checkpointer=InMemorySaver())
    with testing.capture() as cap:
        graph.invoke({"path": []}, {"configurable": {"thread_id": "t-1"}})
        graph.invoke({"path": []}, {"configurable": {"thread_id": "t-1"}})
    runs = cap.find(kind=sc.KIND_WORKFLOW)
    assert [r.name for r in runs] == ["triage", "triage"]
    assert {attr(r, sc.EXECUTION_ID) for r in runs} == {"t-1"}
    assert len({attr(r, sc.WORKFLOW_ID) for r in runs}) == 2
    assert len({r.context.trace_id for r in runs}) == 2
    assert {attr(r, "langgraph.thread_id") for r in runs} == {"t-1"}


@pytest.mark.parametrize("thread_id", ["t" * 5_000, "   "])
def test_thread_id_that_is_no_valid_execution_id(
    instrumented: LangGraphInstrumentor, thread_id: str
) -> None:
    """A thread id spangraph would refuse as an id (longer than 1 024 characters, blank)
    used to become the execution id as it was; the run now keeps its own."""
    builder = StateGraph(Trail)
    builder.add_node("a", _node("a"))
    builder.add_edge(START, "a")
    graph = builder.compile(checkpointer=InMemorySaver())
    with testing.capture() as cap:
        out = graph.invoke({"path": []}, {"configurable": {"thread_id": thread_id}})
    assert out == {"path": ["a"]}
    run = one(cap.find(kind=sc.KIND_WORKFLOW))
    assert attr(run, sc.EXECUTION_ID) == attr(run, sc.WORKFLOW_ID)
    assert attr(one(cap.find("a")), sc.EXECUTION_ID) == attr(run, sc.WORKFLOW_ID)
    assert thread_id.startswith(attr(run, "langgraph.thread_id")[:100])


@pytest.mark.parametrize("how", HOWS)
def test_thread_id_and_run_name_bound_with_with_config(
    instrumented: LangGraphInstrumentor, how: str
) -> None:
    """``graph.with_config(...)`` binds a config LangGraph merges under the call's own:
    its thread id and run name count as if passed to the call (they were ignored)."""
    builder = StateGraph(Trail)
    builder.add_node("a", _node("a"))
    builder.add_edge(START, "a")
    graph = builder.compile(name="triage", checkpointer=InMemorySaver())
    thread = uuid.uuid4().hex
    bound = graph.with_config(configurable={"thread_id": thread}, run_name="my-run")
    with testing.capture() as cap:
        run_graph(bound, how, {"path": []})
        # the call's own config wins over what was bound; the rest still applies
        run_graph(bound, how, {"path": []}, config={"configurable": {"thread_id": "t-call"}})
    assert graph.get_state({"configurable": {"thread_id": thread}}).values == {"path": ["a"]}
    first, second = cap.find(kind=sc.KIND_WORKFLOW)
    assert [first.name, second.name] == ["my-run", "my-run"]
    assert attr(first, "langgraph.graph.name") == "triage"
    assert (attr(first, sc.EXECUTION_ID), attr(first, "langgraph.thread_id")) == (thread, thread)
    assert attr(second, sc.EXECUTION_ID) == "t-call"
    assert attr(second, "langgraph.thread_id") == "t-call"


def test_thread_id_passed_down_by_an_outer_runnable(instrumented: LangGraphInstrumentor) -> None:
    """A graph invoked without a config inside a LangChain runnable runs with the config
    that runnable passes down (LangGraph's own merge): its thread is the run's."""
    from langchain_core.runnables import RunnableLambda

    builder = StateGraph(Trail)
    builder.add_node("a", _node("a"))
    builder.add_edge(START, "a")
    graph = builder.compile(name="triage", checkpointer=InMemorySaver())
    outer = RunnableLambda(lambda state: graph.invoke(state))
    thread = uuid.uuid4().hex
    with testing.capture() as cap:
        outer.invoke({"path": []}, {"configurable": {"thread_id": thread}})
    assert graph.get_state({"configurable": {"thread_id": thread}}).values == {"path": ["a"]}
    run = one(cap.find(kind=sc.KIND_WORKFLOW))
    assert run.name == "triage"
    assert attr(run, sc.EXECUTION_ID) == thread


def test_inside_own_workflow_the_graph_is_a_step(instrumented: LangGraphInstrumentor) -> None:
    graph = abcd()
    with testing.capture() as cap, spangraph.workflow("handle-ticket") as run:
        graph.invoke({"path": []})
    outer = one(cap.find(kind=sc.KIND_WORKFLOW))
    assert outer.name == "handle-ticket"
    inner = one(cap.find("LangGraph"))
    assert kind(inner) == sc.KIND_STEP
    assert parent_of(inner) == outer.context.span_id
    for name in "abc":
        step = one(cap.find(name))
        assert parent_of(step) == inner.context.span_id
        assert attr(step, sc.WORKFLOW_ID) == run.workflow_id


def test_concurrent_invocations_stay_apart(instrumented: LangGraphInstrumentor) -> None:
    graph = map_reduce()
    with testing.capture() as cap:
        graph.batch([{"items": [1, 2]}, {"items": [3, 4]}, {"items": [5, 6]}])

        async def gather() -> None:
            await asyncio.gather(*(graph.ainvoke({"items": [i, i]}) for i in range(3)))

        asyncio.run(gather())
    runs = cap.find(kind=sc.KIND_WORKFLOW)
    assert len(runs) == 6
    assert len({r.context.trace_id for r in runs}) == 6
    for run in runs:
        mine = [s for s in cap.spans if s.context.trace_id == run.context.trace_id]
        assert sorted(s.name for s in mine if kind(s) == sc.KIND_STEP) == [
            "reduce",
            "split",
            "work",
            "work",
        ]
        assert {attr(s, sc.WORKFLOW_ID) for s in mine} == {attr(run, sc.WORKFLOW_ID)}


def test_functional_api_tasks_are_steps(instrumented: LangGraphInstrumentor) -> None:
    from langgraph.func import entrypoint, task

    @task
    def double(x: int) -> int:
        return 2 * x

    @entrypoint()
    def doubler(xs: list[int]) -> int:
        return sum(f.result() for f in [double(x) for x in xs])

    with testing.capture() as cap:
        assert doubler.invoke([1, 2, 3], {"run_name": "doubling"}) == 12
    root = assert_one_trace(cap)
    assert root.name == "doubling"
    assert attr(root, "langgraph.graph.name") == "LangGraph"
    entry = one(cap.find("doubler"))
    assert parent_of(entry) == root.context.span_id
    doubles = cap.find("double")
    assert len(doubles) == 3
    assert {parent_of(d) for d in doubles} == {entry.context.span_id}
    # a task's input is no Send's argument (a Send's is recorded: see Send below)
    assert all(attr(s, "langgraph.send.arg") is None for s in cap.spans)


# -- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize("how", HOWS)
def test_failing_node_fails_step_and_workflow(
    instrumented: LangGraphInstrumentor, how: str
) -> None:
    error = ValueError("boom")
    graph = abcd(fail_b=error)
    with testing.capture() as cap, pytest.raises(ValueError) as raised:
        run_graph(graph, how, {"path": []})
    assert raised.value is error  # the very exception, unchanged
    root = assert_one_trace(cap)
    assert attr(root, sc.STATE) == sc.STATE_FAILED
    assert sorted(s.name for s in cap.find(kind=sc.KIND_STEP)) == ["a", "b"]
    b = one(cap.find("b"))
    assert attr(b, sc.STATE) == sc.STATE_FAILED
    assert b.status.status_code.name == "ERROR"
    assert cap.has_event(sc.STEP_FAILED, **{sc.ERROR_TYPE: "ValueError", sc.ERROR_MESSAGE: "boom"})
    assert cap.has_event(sc.WORKFLOW_FAILED, **{sc.ERROR_TYPE: "ValueError"})
    assert any(e.name == "exception" for e in b.events)
    assert not cap.find(kind=sc.KIND_DECISION)


def flaky_graph(policy: RetryPolicy) -> StateGraph:
    """One node, ``flaky``, that fails twice and then succeeds, retried by ``policy``."""
    calls = []

    def flaky(state: Trail) -> dict[str, Any]:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError(f"attempt {len(calls)}")
        return {"path": ["flaky"]}

    builder = StateGraph(Trail)
    builder.add_node("flaky", flaky, retry_policy=policy)
    builder.add_edge(START, "flaky")
    return builder


@pytest.mark.parametrize("how", ["invoke", "ainvoke"])
def test_retry_policy_attempts_are_separate_steps(
    instrumented: LangGraphInstrumentor, how: str
) -> None:
    builder = flaky_graph(RetryPolicy(max_attempts=3, initial_interval=0.01, jitter=False))
    with testing.capture() as cap:
        out = run_graph(builder.compile(), how, {"path": []})
    assert out == {"path": ["flaky"]}
    assert_one_trace(cap)
    attempts = sorted(cap.find("flaky"), key=lambda s: attr(s, sc.STEP_ATTEMPT))
    assert [attr(s, sc.STEP_ATTEMPT) for s in attempts] == [1, 2, 3]
    assert [attr(s, sc.STATE) for s in attempts] == ["failed", "failed", "completed"]
    assert {attr(s, sc.STEP_MAX_ATTEMPTS) for s in attempts} == {3}
    assert not attempts[0].links
    for previous, attempt in itertools.pairwise(attempts):
        [link] = attempt.links
        assert link.context.span_id == previous.context.span_id
        assert (link.attributes or {})[sc.LINK_TYPE] == sc.LINK_RETRY_OF
    scheduled = cap.events(sc.RETRY_SCHEDULED)
    assert [e.attributes[sc.EVENT_ATTEMPT] for e in scheduled] == [1, 2]
    assert [e.attributes[sc.EVENT_DELAY_MS] for e in scheduled] == pytest.approx([10, 20])
    assert scheduled[0].attributes[sc.ERROR_TYPE] == "ConnectionError"
    assert attr(one(cap.find(kind=sc.KIND_WORKFLOW)), sc.STATE) == sc.STATE_COMPLETED


@pytest.mark.parametrize(
    ("max_attempts", "recorded"),
    [(float("inf"), None), (10**30, None), (2.5, None), (10_002, None), (10_001, 10_001)],
)
def test_retry_policy_max_attempts_beyond_spangraphs_bound(
    instrumented: LangGraphInstrumentor, max_attempts: Any, recorded: int | None
) -> None:
    """LangGraph retries the node, not spangraph, and does not check ``max_attempts``:
    every attempt is a span, but ``spangraph.step.max_attempts`` is only recorded as a
    whole number within spangraph's bound on retries (``inf``, ``2.5`` and ``10**30``
    were recorded as they were; an int beyond int64 fails an OTLP export)."""
    policy = RetryPolicy(max_attempts=max_attempts, initial_interval=0.001, jitter=False)
    builder = flaky_graph(policy)
    with testing.capture() as cap:
        assert builder.compile().invoke({"path": []}) == {"path": ["flaky"]}
    attempts = sorted(cap.find("flaky"), key=lambda s: attr(s, sc.STEP_ATTEMPT))
    assert [attr(s, sc.STEP_ATTEMPT) for s in attempts] == [1, 2, 3]
    assert [attr(s, sc.STATE) for s in attempts] == ["failed", "failed", "completed"]
    assert {attr(s, sc.STEP_MAX_ATTEMPTS) for s in attempts} == {recorded}
    assert [e.attributes[sc.EVENT_ATTEMPT] for e in cap.events(sc.RETRY_SCHEDULED)] == [1, 2]


def test_retry_policy_exhausted(instrumented: LangGraphInstrumentor) -> None:
    error = ConnectionError("down")
    builder = StateGraph(Trail)
    policy = RetryPolicy(max_attempts=2, initial_interval=0.01, jitter=False)
    builder.add_node("fetch", _node("fetch", error), retry_policy=policy)
    builder.add_edge(START, "fetch")
    with testing.capture() as cap, pytest.raises(ConnectionError) as raised:
        builder.compile().invoke({"path": []})
    assert raised.value is error
    attempts = cap.find("fetch")
    assert [attr(s, sc.STATE) for s in attempts] == ["failed", "failed"]
    assert cap.has_event(sc.RETRY_SCHEDULED, attempt=1)
    assert cap.has_event(sc.RETRY_EXHAUSTED, attempt=2)
    assert attr(one(cap.find(kind=sc.KIND_WORKFLOW)), sc.STATE) == sc.STATE_FAILED


@pytest.mark.parametrize(
    ("policy", "error"),
    [
        (RetryPolicy(max_attempts=3, retry_on=TimeoutError), KeyError("missing")),
        (RetryPolicy(max_attempts=3), ValueError("bad input")),  # LangGraph's default
        ([RetryPolicy(retry_on=TimeoutError), RetryPolicy(retry_on=OSError)], KeyError("k")),
    ],
    ids=["retry_on-rejects", "default-retry_on-rejects", "no-policy-matches"],
)
def test_error_no_retry_policy_retries_ends_the_attempts(
    instrumented: LangGraphInstrumentor, policy: Any, error: Exception
) -> None:
    """An error the node's RetryPolicy does not retry fails the node at once: its step
    read ``attempt 1/3`` with no word of why no attempt followed."""
    from spangraph._tree_text import _attempt

    builder = StateGraph(Trail)
    builder.add_node("fetch", _node("fetch", error), retry_policy=policy)
    builder.add_edge(START, "fetch")
    with testing.capture() as cap, pytest.raises(type(error)):
        builder.compile().invoke({"path": []})
    step = one(cap.find("fetch"))
    assert attr(step, sc.STATE) == sc.STATE_FAILED
    assert attr(step, "langgraph.retry.retryable") is False
    assert attr(step, sc.STEP_MAX_ATTEMPTS) == 1
    assert _attempt({"attributes": dict(step.attributes or {})}) is None  # no "1/3"
    assert not cap.events("retry.*")


def test_error_not_retried_after_a_retry(instrumented: LangGraphInstrumentor) -> None:
    """A retried error, then one the policy does not retry: the second attempt is the
    last, and says so (``attempt 2/2``)."""
    from spangraph._tree_text import _attempt

    errors = [ConnectionError("blip"), KeyError("missing")]

    def fetch(state: Trail) -> dict[str, Any]:
        raise errors.pop(0)

    builder = StateGraph(Trail)
    policy = RetryPolicy(max_attempts=3, initial_interval=0.001, jitter=False)
    builder.add_node("fetch", fetch, retry_policy=policy)
    builder.add_edge(START, "fetch")
    with testing.capture() as cap, pytest.raises(KeyError):
        builder.compile().invoke({"path": []})
    first, second = sorted(cap.find("fetch"), key=lambda s: attr(s, sc.STEP_ATTEMPT))
    assert attr(first, "langgraph.retry.retryable") is None
    assert attr(first, sc.STEP_MAX_ATTEMPTS) == 3
    assert [e.name for e in first.events if e.name.startswith("retry.")] == [sc.RETRY_SCHEDULED]
    assert attr(second, "langgraph.retry.retryable") is False
    assert _attempt({"attributes": dict(second.attributes or {})}) == "attempt 2/2"
    assert not [e for e in second.events if e.name.startswith("retry.")]


@pytest.mark.parametrize("retried", [False, True])
def test_node_timeout_fails_the_step_with_its_error(
    instrumented: LangGraphInstrumentor, retried: bool
) -> None:
    """LangGraph's node timeout cancels the node's task, then raises NodeTimeoutError:
    the step fails with that error and ``timeout.exceeded`` (it ended ``cancelled``,
    with no error, in a run that failed), and a retry of it is scheduled."""
    pytest.importorskip("langgraph.pregel._retry").__dict__.get("_arun_with_timeout") or (
        pytest.skip("this LangGraph has no node timeouts")
    )
    from langgraph.errors import NodeTimeoutError

    calls = []

    async def slow(state: Trail) -> dict[str, Any]:
        calls.append(1)
        if len(calls) == 1 or not retried:
            await asyncio.sleep(5)
        return {"path": ["slow"]}

    builder = StateGraph(Trail)
    extra: dict[str, Any] = {}
    if retried:
        extra["retry_policy"] = RetryPolicy(max_attempts=2, initial_interval=0.01, jitter=False)
    builder.add_node("slow", slow, timeout=0.2, **extra)
    builder.add_edge(START, "slow")
    with testing.capture() as cap:
        if retried:
            assert asyncio.run(builder.compile().ainvoke({"path": []})) == {"path": ["slow"]}
        else:
            with pytest.raises(NodeTimeoutError):
                asyncio.run(builder.compile().ainvoke({"path": []}))
    attempts = sorted(cap.find("slow"), key=lambda s: attr(s, sc.STEP_ATTEMPT))
    first = attempts[0]
    assert attr(first, sc.STATE) == sc.STATE_FAILED
    [failed] = [e for e in first.events if e.name == sc.STEP_FAILED]
    assert failed.attributes[sc.ERROR_TYPE] == "langgraph.errors.NodeTimeoutError"
    [exceeded] = [e for e in first.events if e.name == sc.TIMEOUT_EXCEEDED]
    assert exceeded.attributes[sc.EVENT_TIMEOUT_MS] == pytest.approx(200)
    workflow = one(cap.find(kind=sc.KIND_WORKFLOW))
    if retried:
        assert [attr(s, sc.STATE) for s in attempts] == ["failed", "completed"]
        assert cap.has_event(sc.RETRY_SCHEDULED, attempt=1)
        assert attr(workflow, sc.STATE) == sc.STATE_COMPLETED
    else:
        assert len(attempts) == 1
        assert attr(workflow, sc.STATE) == sc.STATE_FAILED


def test_node_timeout_is_told_to_the_attempt_it_stopped_only(
    instrumented: LangGraphInstrumentor,
) -> None:
    """The first attempt swallows the cancellation of its node timeout and returns (its
    result is thrown away: LangGraph raised NodeTimeoutError); the second is cancelled by
    the caller. The timeout was blamed on the second, and the first shown completed."""
    pytest.importorskip("langgraph.pregel._retry").__dict__.get("_arun_with_timeout") or (
        pytest.skip("this LangGraph has no node timeouts")
    )
    calls = []
    second: asyncio.Event | None = None

    async def slow(state: Trail) -> dict[str, Any]:
        calls.append(1)
        if len(calls) == 1:
            try:
                await asyncio.sleep(5)
            except asyncio.CancelledError:  # e.g. a client library that swallows it
                return {"path": ["swallowed"]}
        assert second is not None
        second.set()
        await asyncio.sleep(5)
        return {"path": ["slow"]}

    builder = StateGraph(Trail)
    policy = RetryPolicy(max_attempts=3, initial_interval=0.01, jitter=False)
    builder.add_node("slow", slow, timeout=0.2, retry_policy=policy)
    builder.add_edge(START, "slow")
    graph = builder.compile()

    async def main() -> None:
        nonlocal second
        second = asyncio.Event()
        run = asyncio.ensure_future(graph.ainvoke({"path": []}))
        await asyncio.wait_for(second.wait(), 10)
        run.cancel()  # the caller gives up during the second attempt
        with pytest.raises(asyncio.CancelledError):
            await run

    with testing.capture() as cap:
        asyncio.run(main())
    first, retried = sorted(cap.find("slow"), key=lambda s: attr(s, sc.STEP_ATTEMPT))
    assert attr(first, sc.STATE) == sc.STATE_FAILED
    assert [e.name for e in first.events if e.name == sc.TIMEOUT_EXCEEDED] == [sc.TIMEOUT_EXCEEDED]
    assert attr(retried, sc.STATE) == sc.STATE_CANCELLED
    assert not [e for e in retried.events if e.name == sc.TIMEOUT_EXCEEDED]


@pytest.mark.parametrize(
    ("node_kind", "how"), [("sync", "invoke"), ("sync", "ainvoke"), ("async", "ainvoke")]
)
def test_node_raising_cancelled_error_fails_its_step(
    instrumented: LangGraphInstrumentor, node_kind: str, how: str
) -> None:
    """A node that raises ``asyncio.CancelledError`` itself fails, as LangGraph has it
    (NodeCancelledError, the run failed): its step ends ``failed``, not ``cancelled``."""
    errors = pytest.importorskip("langgraph.errors")
    if not hasattr(errors, "NodeCancelledError"):
        pytest.skip("this LangGraph lets a node's CancelledError pass as a cancellation")

    def gives_up(state: Trail) -> dict[str, Any]:
        raise asyncio.CancelledError("gave up")

    async def agives_up(state: Trail) -> dict[str, Any]:
        await asyncio.sleep(0)
        raise asyncio.CancelledError("gave up")

    builder = StateGraph(Trail)
    builder.add_node("n", gives_up if node_kind == "sync" else agives_up)
    builder.add_edge(START, "n")
    with testing.capture() as cap, pytest.raises(errors.NodeCancelledError):
        run_graph(builder.compile(), how, {"path": []})
    step = one(cap.find("n"))
    assert attr(step, sc.STATE) == sc.STATE_FAILED
    assert step.status.status_code.name == "ERROR"
    assert any(e.name == "exception" for e in step.events)
    [failed] = [e for e in step.events if e.name == sc.STEP_FAILED]
    assert failed.attributes[sc.ERROR_TYPE] == "langgraph.errors.NodeCancelledError"
    assert attr(one(cap.find(kind=sc.KIND_WORKFLOW)), sc.STATE) == sc.STATE_FAILED


def test_node_cancelled_from_outside_stays_cancelled(instrumented: LangGraphInstrumentor) -> None:
    """The caller cancelling the run cancels the node's task: that node ends
    ``cancelled`` (no failure), whatever error a node that raises itself would get."""
    started: asyncio.Event | None = None

    async def waits(state: Trail) -> dict[str, Any]:
        assert started is not None
        started.set()
        await asyncio.Event().wait()  # until cancelled
        return {"path": ["waits"]}

    builder = StateGraph(Trail)
    builder.add_node("waits", waits)
    builder.add_edge(START, "waits")
    graph = builder.compile()

    async def main() -> None:
        nonlocal started
        started = asyncio.Event()
        run = asyncio.ensure_future(graph.ainvoke({"path": []}))
        await asyncio.wait_for(started.wait(), 10)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run

    with testing.capture() as cap:
        asyncio.run(main())
    step = one(cap.find("waits"))
    assert attr(step, sc.STATE) == sc.STATE_CANCELLED
    assert step.status.status_code.name == "UNSET"
    assert not [e for e in step.events if e.name in ("exception", sc.STEP_FAILED)]
    assert attr(one(cap.find(kind=sc.KIND_WORKFLOW)), sc.STATE) == sc.STATE_CANCELLED


def test_retry_predicate_of_the_user_is_not_called_by_the_instrumentation(
    instrumented: LangGraphInstrumentor,
) -> None:
    asked: list[BaseException] = []

    def retry_on(exc: Exception) -> bool:
        asked.append(exc)
        return True

    builder = StateGraph(Trail)
    policy = RetryPolicy(max_attempts=2, initial_interval=0.001, jitter=False, retry_on=retry_on)
    builder.add_node("fetch", _node("fetch", ConnectionError("down")), retry_policy=policy)
    builder.add_edge(START, "fetch")
    with testing.capture() as cap, pytest.raises(ConnectionError):
        builder.compile().invoke({"path": []})
    assert len(asked) == 2  # LangGraph's own calls, one per failed attempt
    assert [attr(s, sc.STEP_ATTEMPT) for s in cap.find("fetch")] == [1, 2]
    assert not cap.events("retry.*")  # whether it retries is the predicate's to say


# -- decisions ----------------------------------------------------------------------------


def test_path_map_targets_are_the_options(instrumented: LangGraphInstrumentor) -> None:
    builder = StateGraph(Trail)
    for name in ("check", "publish", "revise"):
        builder.add_node(name, _node(name))
    builder.add_edge(START, "check")
    builder.add_conditional_edges(
        "check", lambda state: len(state["path"]) > 5, {True: "publish", False: "revise"}
    )
    builder.add_edge("publish", END)
    builder.add_edge("revise", END)
    with testing.capture() as cap:
        builder.compile().invoke({"path": []})
    decision = one(cap.find(kind=sc.KIND_DECISION))
    assert list(attr(decision, sc.DECISION_OPTIONS)) == ["publish", "revise"]
    assert attr(decision, sc.DECISION_CHOSEN) == "revise"
    assert decision.name == "condition"  # LangGraph's name for a lambda's branch
    assert attr(decision, sc.DECISION_REASON) == "condition returned False"
    assert attr(decision, "langgraph.node") == "check"


def test_routing_to_several_nodes_or_to_the_end(instrumented: LangGraphInstrumentor) -> None:
    def both(state: Trail) -> list[str]:
        return ["b", "c"] if not state["path"][1:] else [END]

    builder = StateGraph(Trail)
    for name in "abc":
        builder.add_node(name, _node(name))
    builder.add_edge(START, "a")
    builder.add_conditional_edges("a", both)  # no path_map: options are what it returns
    builder.add_edge("b", END)
    builder.add_edge("c", END)
    with testing.capture() as cap:
        builder.compile().invoke({"path": []})
    decision = one(cap.find(kind=sc.KIND_DECISION))
    assert list(attr(decision, sc.DECISION_OPTIONS)) == ["b", "c"]
    assert attr(decision, sc.DECISION_CHOSEN) is None  # two nodes chosen at once
    assert list(attr(decision, "langgraph.destinations")) == ["b", "c"]
    assert sorted(b.name for b in cap.find(kind=sc.KIND_BRANCH)) == ["b", "c"]


def test_conditional_edge_from_start(instrumented: LangGraphInstrumentor) -> None:
    builder = StateGraph(Trail)
    for name in "cd":
        builder.add_node(name, _node(name))
    builder.add_conditional_edges(START, route)
    with testing.capture() as cap:
        builder.compile().invoke({"path": []})
    root = assert_one_trace(cap)
    decision = one(cap.find(kind=sc.KIND_DECISION))
    assert parent_of(decision) == root.context.span_id  # __start__ has no step
    assert attr(decision, sc.DECISION_CHOSEN) == "c"
    assert [s.name for s in cap.find(kind=sc.KIND_STEP)] == ["c"]


def test_failing_router_fails_the_decision(instrumented: LangGraphInstrumentor) -> None:
    error = KeyError("nowhere")

    def broken(state: Trail) -> str:
        raise error

    builder = StateGraph(Trail)
    builder.add_node("a", _node("a"))
    builder.add_node("b", _node("b"))
    builder.add_edge(START, "a")
    builder.add_conditional_edges("a", broken, ["b"])
    with testing.capture() as cap, pytest.raises(KeyError) as raised:
        builder.compile().invoke({"path": []})
    assert raised.value is error
    decision = one(cap.find(kind=sc.KIND_DECISION))
    assert attr(decision, sc.STATE) == sc.STATE_FAILED
    assert attr(decision, sc.DECISION_CHOSEN) is None
    assert attr(one(cap.find("a")), sc.STATE) == sc.STATE_FAILED


def test_decision_without_the_routing_hook(instrumented: LangGraphInstrumentor) -> None:
    """Should ``RunnableCallable`` not be hookable, ``BranchSpec._finish`` alone still
    records the decision (as an instant, after the routing function)."""
    from langgraph._internal._runnable import RunnableCallable

    for name in ("invoke", "ainvoke"):
        setattr(RunnableCallable, name, RunnableCallable.__dict__[name].__wrapped__)
    with testing.capture() as cap:
        abcd().invoke({"path": []})
    decision = one(cap.find(kind=sc.KIND_DECISION))
    assert list(attr(decision, sc.DECISION_OPTIONS)) == ["c", "d"]
    assert attr(decision, sc.DECISION_CHOSEN) == "c"
    assert parent_of(decision) == one(cap.find("b")).context.span_id
    assert [e.span_name for e in cap.events("routing")] == ["b"]


# -- parallel work: branches --------------------------------------------------------------


class MapReduce(TypedDict):
    items: list[int]
    results: Annotated[list[int], operator.add]


def map_reduce(*, asynchronous: bool = False) -> Any:
    def fan_out(state: MapReduce) -> list[Send]:
        return [Send("work", {"item": i}) for i in state["items"]]

    def work_sync(task: dict[str, int]) -> dict[str, Any]:
        return {"results": [task["item"] * 2]}

    async def work_async(task: dict[str, int]) -> dict[str, Any]:
        await asyncio.sleep(0.001)
        return {"results": [task["item"] * 2]}

    builder = StateGraph(MapReduce)
    builder.add_node("split", lambda state: {})
    builder.add_node("work", work_async if asynchronous else work_sync)
    builder.add_node("reduce", lambda state: {})
    builder.add_edge(START, "split")
    builder.add_conditional_edges("split", fan_out, ["work"])
    builder.add_edge("work", "reduce")
    builder.add_edge("reduce", END)
    return builder.compile()


@pytest.mark.parametrize(
    ("how", "asynchronous"),
    [*((how, False) for how in HOWS), ("ainvoke", True), ("astream", True)],
    ids=[*HOWS, "ainvoke-async-nodes", "astream-async-nodes"],
)
def test_send_fan_out_runs_each_task_in_a_branch(
    instrumented: LangGraphInstrumentor, how: str, asynchronous: bool
) -> None:
    with testing.capture() as cap:
        run_graph(map_reduce(asynchronous=asynchronous), how, {"items": [1, 2, 3]})
    root = assert_one_trace(cap)
    branches = cap.find(kind=sc.KIND_BRANCH)
    assert [b.name for b in branches] == ["work"] * 3
    assert sorted(attr(b, "langgraph.branch.index") for b in branches) == [0, 1, 2]
    assert len({attr(b, sc.BRANCH_ID) for b in branches}) == 3
    works = cap.find("work", kind=sc.KIND_STEP)
    assert len(works) == 3
    for branch in branches:
        assert parent_of(branch) == root.context.span_id
        assert attr(branch, sc.WORKFLOW_ID) == attr(root, sc.WORKFLOW_ID)
        [step] = [w for w in works if parent_of(w) == branch.context.span_id]
        assert kind(step) == sc.KIND_STEP
        assert attr(step, sc.BRANCH_ID) == attr(branch, sc.BRANCH_ID)
    for name in ("split", "reduce"):
        step = one(cap.find(name))
        assert parent_of(step) == root.context.span_id
        assert attr(step, sc.BRANCH_ID) is None
    decision = one(cap.find(kind=sc.KIND_DECISION))
    assert decision.name == "fan_out"
    assert list(attr(decision, sc.DECISION_OPTIONS)) == ["work"]
    assert attr(decision, sc.DECISION_CHOSEN) == "work"
    assert list(attr(decision, "langgraph.destinations")) == ["work"] * 3
    assert parent_of(decision) == one(cap.find("split")).context.span_id


def test_nodes_of_one_superstep_run_in_branches(instrumented: LangGraphInstrumentor) -> None:
    builder = StateGraph(Trail)
    for name in "abcd":
        builder.add_node(name, _node(name))
    builder.add_edge(START, "a")
    builder.add_edge("a", "b")
    builder.add_edge("a", "c")
    builder.add_edge(["b", "c"], "d")
    with testing.capture() as cap:
        out = builder.compile().invoke({"path": []})
    assert sorted(out["path"]) == ["a", "b", "c", "d"]
    root = assert_one_trace(cap)
    branches = {b.name: b for b in cap.find(kind=sc.KIND_BRANCH)}
    assert sorted(branches) == ["b", "c"]
    for name, branch in branches.items():
        step = one(cap.find(name, kind=sc.KIND_STEP))
        assert parent_of(step) == branch.context.span_id
        assert attr(step, sc.BRANCH_ID) == attr(branch, sc.BRANCH_ID)
    for name in "ad":
        assert parent_of(one(cap.find(name, kind=sc.KIND_STEP))) == root.context.span_id


def test_send_argument_tells_the_branches_apart(instrumented: LangGraphInstrumentor) -> None:
    """Each ``Send``'s argument is on its branch and its step (the tasks of one node all
    had the same name); a node not started by a ``Send`` has none."""
    long_item = "x" * 10_000
    with testing.capture() as cap:
        run_graph(map_reduce(), "invoke", {"items": [1, 2]})
    by_index = {attr(b, "langgraph.branch.index"): b for b in cap.find(kind=sc.KIND_BRANCH)}
    for index, item in enumerate([1, 2]):
        branch = by_index[index]
        assert attr(branch, "langgraph.send.arg") == f'{{"item": {item}}}'
        [step] = [s for s in cap.find("work") if parent_of(s) == branch.context.span_id]
        assert attr(step, "langgraph.send.arg") == f'{{"item": {item}}}'
    for name in ("split", "reduce"):
        assert attr(one(cap.find(name)), "langgraph.send.arg") is None

    def fan_out(state: dict[str, Any]) -> list[Send]:
        return [Send("work", long_item)]

    builder = StateGraph(MapReduce)
    builder.add_node("split", lambda state: {})
    builder.add_node("work", lambda item: {"results": [len(item)]})
    builder.add_edge(START, "split")
    builder.add_conditional_edges("split", fan_out, ["work"])
    with testing.capture() as cap:
        builder.compile().invoke({"items": []})
    arg = attr(one(cap.find("work")), "langgraph.send.arg")  # alone: a step, no branch
    assert arg.startswith("xxx") and arg.endswith("chars]")
    assert len(arg) == 8192  # bounded as every attribute value


# -- subgraphs ----------------------------------------------------------------------------


def _subgraph() -> Any:
    builder = StateGraph(Trail)
    builder.add_node("x", _node("x"))
    builder.add_node("y", _node("y"))
    builder.add_edge(START, "x")
    builder.add_edge("x", "y")
    return builder.compile(name="inner")


@pytest.mark.parametrize("style", ["graph-as-node", "invoked-from-node"])
@pytest.mark.parametrize("how", ["invoke", "astream"])
def test_subgraph_nodes_nest_under_the_parent_step(
    instrumented: LangGraphInstrumentor, style: str, how: str
) -> None:
    inner = _subgraph()

    def call_inner(state: Trail) -> dict[str, Any]:
        return {"path": inner.invoke({"path": []})["path"]}

    builder = StateGraph(Trail)
    builder.add_node("a", _node("a"))
    builder.add_node("sub", inner if style == "graph-as-node" else call_inner)
    builder.add_edge(START, "a")
    builder.add_edge("a", "sub")
    with testing.capture() as cap:
        run_graph(builder.compile(name="outer"), how, {"path": []})
    root = assert_one_trace(cap)
    assert root.name == "outer"
    assert len(cap.find(kind=sc.KIND_WORKFLOW)) == 1
    assert not cap.find("inner")
    sub = one(cap.find("sub"))
    assert parent_of(sub) == root.context.span_id
    for name in "xy":
        step = one(cap.find(name))
        assert parent_of(step) == sub.context.span_id
        assert attr(step, sc.WORKFLOW_ID) == attr(root, sc.WORKFLOW_ID)
    assert sorted(s.name for s in cap.find(kind=sc.KIND_STEP)) == ["a", "sub", "x", "y"]


# -- interrupts ---------------------------------------------------------------------------


def test_interrupt_pauses_the_run(instrumented: LangGraphInstrumentor) -> None:
    def ask(state: Trail) -> dict[str, Any]:
        return {"path": [interrupt("ok?")]}

    builder = StateGraph(Trail)
    builder.add_node("ask", ask)
    builder.add_edge(START, "ask")
    graph = builder.compile(checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": uuid.uuid4().hex}}
    with testing.capture() as cap:
        first = graph.invoke({"path": []}, config)
        assert "__interrupt__" in first
        assert graph.invoke(Command(resume="yes"), config) == {"path": ["yes"]}
    paused, resumed = cap.find(kind=sc.KIND_WORKFLOW)
    assert attr(paused, sc.STATE) == sc.STATE_COMPLETED
    assert [e.name for e in paused.events].count(sc.WORKFLOW_PAUSED) == 1
    assert attr(paused, sc.EXECUTION_ID) == attr(resumed, sc.EXECUTION_ID)
    first_ask, second_ask = cap.find("ask")
    assert attr(first_ask, "langgraph.interrupted") is True
    assert attr(first_ask, sc.STATE) == sc.STATE_COMPLETED
    assert attr(second_ask, "langgraph.interrupted") is None


LIFECYCLE = ("workflow.", "step.")


def lifecycle(span: ReadableSpan) -> list[str]:
    return [e.name for e in span.events if e.name.startswith(LIFECYCLE)]


def event_of(span: ReadableSpan, name: str) -> dict[str, Any]:
    [event] = [e for e in span.events if e.name == name]
    return dict(event.attributes or {})


def links_of(span: ReadableSpan) -> list[tuple[Any, int]]:
    return [
        ((link.attributes or {}).get(sc.LINK_TYPE), link.context.span_id) for link in span.links
    ]


def approval() -> Any:
    """write -> review (asks ``{"question": "approve?"}``) -> END, with a checkpointer."""

    def review(state: Trail) -> dict[str, Any]:
        return {"path": [interrupt({"question": "approve?"})]}

    builder = StateGraph(Trail)
    builder.add_node("write", _node("write"))
    builder.add_node("review", review)
    builder.add_edge(START, "write")
    builder.add_edge("write", "review")
    return builder.compile(name="approval", checkpointer=InMemorySaver())


@pytest.mark.parametrize("how", HOWS)
def test_interrupted_run_ends_paused_not_completed(
    instrumented: LangGraphInstrumentor, how: str
) -> None:
    """A run waiting for a person read as finished: ``workflow.completed`` came after
    ``workflow.paused``. Its span ends (``completed``), its last lifecycle event is the
    pause, and ``langgraph.interrupted`` marks it."""
    config = {"configurable": {"thread_id": uuid.uuid4().hex}}
    with testing.capture() as cap:
        run_graph(approval(), how, {"path": []}, config=config)
    run = assert_one_trace(cap)
    assert attr(run, sc.STATE) == sc.STATE_COMPLETED
    assert attr(run, "langgraph.interrupted") is True
    assert lifecycle(run) == [sc.WORKFLOW_STARTED, sc.WORKFLOW_PAUSED]
    paused = event_of(run, sc.WORKFLOW_PAUSED)
    assert paused["reason"] == "interrupt"
    assert (paused["node"], paused["nodes"]) == ("review", ("review",))
    assert attr(one(cap.find("review")), "langgraph.interrupted") is True
    assert attr(one(cap.find("write")), "langgraph.interrupted") is None


def test_run_that_is_not_interrupted_is_not_marked(instrumented: LangGraphInstrumentor) -> None:
    with testing.capture() as cap:
        abcd().invoke({"path": []})
    run = assert_abcd(cap)
    assert attr(run, "langgraph.interrupted") is None
    assert lifecycle(run) == [sc.WORKFLOW_STARTED, sc.WORKFLOW_COMPLETED]


def test_interrupt_records_what_was_asked_and_the_resume_links_to_the_pause(
    instrumented: LangGraphInstrumentor,
) -> None:
    graph = approval()
    config = {"configurable": {"thread_id": uuid.uuid4().hex}}
    with testing.capture() as cap:
        [asked] = graph.invoke({"path": []}, config)["__interrupt__"]
        assert graph.invoke(Command(resume="yes"), config) == {"path": ["write", "yes"]}
    paused_run, resumed_run = cap.find("approval")
    paused = event_of(paused_run, sc.WORKFLOW_PAUSED)
    assert paused["values"] == ('{"question": "approve?"}',)
    assert paused["interrupt_ids"] == (asked.id,)
    assert event_of(resumed_run, sc.WORKFLOW_RESUMED) == {"value": "yes"}
    assert lifecycle(resumed_run) == [
        sc.WORKFLOW_STARTED,
        sc.WORKFLOW_RESUMED,
        sc.WORKFLOW_COMPLETED,
    ]
    assert links_of(resumed_run) == [(sc.LINK_RESUMED_FROM, paused_run.context.span_id)]
    assert attr(resumed_run, "langgraph.interrupted") is None
    assert links_of(paused_run) == []


def test_content_capture_off_leaves_out_what_was_asked_and_sent(
    instrumented: LangGraphInstrumentor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With OpenTelemetry's GenAI content switch off, an interrupt's question, the resume
    value and a Send's argument (a node's input: for a prebuilt agent, the conversation)
    are left out, as llm() and tool() leave content out; ids, nodes and links stay."""
    from spangraph import genai

    monkeypatch.setenv(genai.CAPTURE_CONTENT_ENV, "false")
    monkeypatch.setattr(genai, "_capture_content", None)
    graph = approval()
    config = {"configurable": {"thread_id": uuid.uuid4().hex}}
    with testing.capture() as cap:
        [asked] = graph.invoke({"path": []}, config)["__interrupt__"]
        graph.invoke(Command(resume="yes"), config)
        run_graph(map_reduce(), "invoke", {"items": [1, 2]})
    paused_run, resumed_run = cap.find("approval")
    paused = event_of(paused_run, sc.WORKFLOW_PAUSED)
    assert "values" not in paused and paused["interrupt_ids"] == (asked.id,)
    assert event_of(resumed_run, sc.WORKFLOW_RESUMED) == {}
    assert links_of(resumed_run) == [(sc.LINK_RESUMED_FROM, paused_run.context.span_id)]
    assert all(attr(s, "langgraph.send.arg") is None for s in cap.find("work"))
    assert len(cap.find("work", kind=sc.KIND_STEP)) == 2  # (and a branch each)


def test_each_resume_links_to_the_run_it_resumes(instrumented: LangGraphInstrumentor) -> None:
    """Two interrupts in one node: three runs, each resume linked to the run before; a
    run of the thread that resumes nothing, or of another checkpointer's thread of the
    same id, is not linked."""

    def two(state: Trail) -> dict[str, Any]:
        return {"path": [interrupt("first?"), interrupt({"second": [1, 2]})]}

    def build() -> Any:
        builder = StateGraph(Trail)
        builder.add_node("two", two)
        builder.add_edge(START, "two")
        return builder.compile(checkpointer=InMemorySaver())

    graph, other = build(), build()
    config = {"configurable": {"thread_id": uuid.uuid4().hex}}
    with testing.capture() as cap:
        graph.invoke({"path": []}, config)
        other.invoke({"path": []}, config)  # the same thread id, another checkpointer
        graph.invoke(Command(resume="a"), config)
        assert graph.invoke(Command(resume="b"), config) == {"path": ["a", "b"]}
        graph.invoke({"path": []}, config)  # a new input: no resume
        other.invoke(Command(resume="c"), config)
    first, other_first, second, third, fresh, other_second = cap.find(kind=sc.KIND_WORKFLOW)
    assert event_of(first, sc.WORKFLOW_PAUSED)["values"] == ("first?",)
    assert event_of(second, sc.WORKFLOW_PAUSED)["values"] == ('{"second": [1, 2]}',)
    assert links_of(first) == links_of(other_first) == []
    assert links_of(second) == [(sc.LINK_RESUMED_FROM, first.context.span_id)]
    assert links_of(third) == [(sc.LINK_RESUMED_FROM, second.context.span_id)]
    assert lifecycle(third)[-1] == sc.WORKFLOW_COMPLETED
    assert links_of(fresh) == []
    assert lifecycle(fresh)[-1] == sc.WORKFLOW_PAUSED
    assert links_of(other_second) == [(sc.LINK_RESUMED_FROM, other_first.context.span_id)]


def test_parallel_interrupts_name_every_node(instrumented: LangGraphInstrumentor) -> None:
    """Two nodes of one superstep interrupt (a third completes): the pause named only
    the first."""

    def asking(name: str) -> Any:
        return lambda state: {"path": [interrupt(f"{name}?")]}

    builder = StateGraph(Trail)
    builder.add_node("start", _node("start"))
    builder.add_node("p1", asking("p1"))
    builder.add_node("p2", asking("p2"))
    builder.add_node("p3", _node("p3"))
    builder.add_edge(START, "start")
    for name in ("p1", "p2", "p3"):
        builder.add_edge("start", name)
    graph = builder.compile(checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": uuid.uuid4().hex}}
    with testing.capture() as cap:
        asked = graph.invoke({"path": []}, config)["__interrupt__"]
        graph.invoke(Command(resume={i.id: f"ok {i.value}" for i in asked}), config)
    paused_run, resumed_run = cap.find(kind=sc.KIND_WORKFLOW)
    paused = event_of(paused_run, sc.WORKFLOW_PAUSED)
    assert sorted(paused["nodes"]) == ["p1", "p2"]
    assert paused["node"] == paused["nodes"][0]
    by_id = dict(zip(paused["interrupt_ids"], paused["values"], strict=True))
    assert by_id == {i.id: i.value for i in asked}
    assert links_of(resumed_run) == [(sc.LINK_RESUMED_FROM, paused_run.context.span_id)]
    assert lifecycle(resumed_run)[-1] == sc.WORKFLOW_COMPLETED


def test_interrupt_in_a_subgraph_counts_once_for_its_node(
    instrumented: LangGraphInstrumentor,
) -> None:
    def x(state: Trail) -> dict[str, Any]:
        return {"path": [interrupt("x?")]}

    inner = StateGraph(Trail)
    inner.add_node("x", x)
    inner.add_edge(START, "x")
    builder = StateGraph(Trail)
    builder.add_node("sub", inner.compile(name="inner"))
    builder.add_edge(START, "sub")
    graph = builder.compile(name="outer", checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": uuid.uuid4().hex}}
    with testing.capture() as cap:
        graph.invoke({"path": []}, config)
    run = one(cap.find("outer"))
    paused = event_of(run, sc.WORKFLOW_PAUSED)
    assert (paused["nodes"], paused["values"]) == (("x",), ("x?",))
    assert attr(one(cap.find("sub")), "langgraph.interrupted") is True


def test_interrupt_inside_own_workflow_is_recorded_on_the_graphs_step(
    instrumented: LangGraphInstrumentor,
) -> None:
    """Inside ``with spangraph.workflow(...)`` the graph's run is a step: nothing said it
    was interrupted. The step does (the caller's workflow goes on: it does not pause)."""
    graph = approval()
    config = {"configurable": {"thread_id": uuid.uuid4().hex}}
    with testing.capture() as cap:
        with spangraph.workflow("ticket"):
            [asked] = graph.invoke({"path": []}, config)["__interrupt__"]
        with spangraph.workflow("ticket, approved"):
            graph.invoke(Command(resume="yes"), config)
    first, second = cap.find(kind=sc.KIND_WORKFLOW)
    for ticket in (first, second):
        assert lifecycle(ticket) == [sc.WORKFLOW_STARTED, sc.WORKFLOW_COMPLETED]
        assert attr(ticket, "langgraph.interrupted") is None
    paused, resumed = cap.find("approval")
    assert kind(paused) == kind(resumed) == sc.KIND_STEP
    assert parent_of(paused) == first.context.span_id
    assert attr(paused, "langgraph.interrupted") is True
    assert lifecycle(paused) == [sc.STEP_STARTED, sc.STEP_COMPLETED]
    asking = event_of(paused, "langgraph.interrupt")
    assert asking["nodes"] == ("review",)
    assert asking["values"] == ('{"question": "approve?"}',)
    assert asking["interrupt_ids"] == (asked.id,)
    assert event_of(resumed, "langgraph.resume") == {"value": "yes"}
    assert links_of(resumed) == [(sc.LINK_RESUMED_FROM, paused.context.span_id)]
    assert not cap.events(sc.WORKFLOW_PAUSED)
    assert not cap.events(sc.WORKFLOW_RESUMED)


def test_resumed_run_is_linked_in_the_graph(instrumented: LangGraphInstrumentor, sg: Any) -> None:
    graph = approval()
    config = {"configurable": {"thread_id": uuid.uuid4().hex}}
    graph.invoke({"path": []}, config)
    graph.invoke(Command(resume="yes"), config)
    assert spangraph.flush(10)
    rows = sg.store.query(
        "MATCH (a:Span)-[:RESUMED_FROM]->(b:Span) "
        "RETURN a.name AS a, b.name AS b, a.execution_id AS ea, b.execution_id AS eb",
        {},
    )
    assert [(r["a"], r["b"]) for r in rows] == [("approval", "approval")]
    assert rows[0]["ea"] == rows[0]["eb"] == config["configurable"]["thread_id"]
    [paused] = sg.store.query(
        "MATCH (a:Span)-[:RESUMED_FROM]->(b:Span)-[:HAS_EVENT]->(e:Event) "
        "RETURN b.state AS state, collect(e.name) AS events",
        {},
    )
    assert paused["state"] == sc.STATE_COMPLETED
    assert sc.WORKFLOW_PAUSED in paused["events"]
    assert sc.WORKFLOW_COMPLETED not in paused["events"]


def test_a_run_resumed_in_another_process_is_linked_in_the_graph(
    instrumented: LangGraphInstrumentor, sg: Any
) -> None:
    """A thread paused in one process (a web request) and resumed in another (the next
    request, another worker) had no ``RESUMED_FROM`` edge: the instrumentor remembers
    paused runs in memory. The graph writer links a run that resumed without saying
    which run to the run of its thread that started last before it, when that paused."""
    from spangraph.instrumentation._langgraph_runs import paused_threads

    graph = approval()
    config = {"configurable": {"thread_id": uuid.uuid4().hex}}
    graph.invoke({"path": []}, config)  # pauses at its interrupt
    assert spangraph.flush(10)
    paused_threads.clear()  # what another process knows of it: nothing
    graph.invoke(Command(resume="yes"), config)
    assert spangraph.flush(10)
    other = {"configurable": {"thread_id": uuid.uuid4().hex}}
    graph.invoke({"path": []}, other)  # another thread, paused: nothing to do with it
    assert spangraph.flush(10)
    rows = sg.store.query(
        "MATCH (a:Workflow)-[:RESUMED_FROM]->(b:Workflow) "
        "RETURN a.execution_id AS ea, b.execution_id AS eb, a.start_ns > b.start_ns AS later",
        {},
    )
    thread = config["configurable"]["thread_id"]
    assert rows == [{"ea": thread, "eb": thread, "later": True}]
    # linked in the same process: the link the instrumentor made, and no second edge
    paused_threads.clear()
    again = {"configurable": {"thread_id": uuid.uuid4().hex}}
    graph.invoke({"path": []}, again)
    graph.invoke(Command(resume="no"), again)
    assert spangraph.flush(10)
    [count] = sg.store.query(
        "MATCH (a:Workflow {execution_id: $t})-[r:RESUMED_FROM]->(:Workflow) RETURN count(r) AS n",
        {"t": again["configurable"]["thread_id"]},
    )
    assert count["n"] == 1


def test_going_on_from_a_breakpoint_in_another_process_is_a_resume(
    instrumented: LangGraphInstrumentor, sg: Any
) -> None:
    """``invoke(None, config)`` in another process than the one whose run stopped at a
    static breakpoint recorded no ``workflow.resumed`` (the instrumentor knew of the
    pause only in memory), so nothing linked it either."""
    from spangraph.instrumentation._langgraph_runs import paused_threads

    graph = reviewed()
    config = {"configurable": {"thread_id": uuid.uuid4().hex}}
    graph.invoke({"path": []}, config)  # stops before publish
    assert spangraph.flush(10)
    paused_threads.clear()  # another process
    graph.invoke(None, config)
    assert spangraph.flush(10)
    thread = config["configurable"]["thread_id"]
    rows = sg.store.query(
        "MATCH (w:Workflow {execution_id: $t})-[:HAS_EVENT]->(e:Event) "
        "WITH w, e ORDER BY w.start_ns, e.seq "
        "RETURN w.span_id AS run, w.start_ns AS start, collect(e.name) AS events "
        "ORDER BY start",
        {"t": thread},
    )
    stopped, went_on = rows
    assert stopped["start"] < went_on["start"]
    assert sc.WORKFLOW_PAUSED in stopped["events"]
    assert sc.WORKFLOW_RESUMED in went_on["events"]
    edges = sg.store.query(
        "MATCH (a:Workflow {execution_id: $t})-[:RESUMED_FROM]->(b) "
        "RETURN a.span_id AS a, b.span_id AS b",
        {"t": thread},
    )
    assert edges == [{"a": went_on["run"], "b": stopped["run"]}]


def test_invoke_none_without_a_breakpoint_is_no_resume(instrumented: LangGraphInstrumentor) -> None:
    """``invoke(None)`` on a thread of a graph without static breakpoints (a fresh
    thread, which LangGraph refuses) or from an earlier checkpoint (time travel) went on
    from no pause: it read as resumed."""
    graph = draft_publish(checkpointer=InMemorySaver(), name="plain")
    fresh = {"configurable": {"thread_id": uuid.uuid4().hex}}
    done = {"configurable": {"thread_id": uuid.uuid4().hex}}
    with testing.capture() as cap:
        with contextlib.suppress(Exception):  # EmptyInputError
            graph.invoke(None, fresh)
        graph.invoke({"path": []}, done)
        past = next(h for h in graph.get_state_history(done) if h.next == ("publish",))
        graph.invoke(None, past.config)  # a replay from an earlier checkpoint
    runs = cap.find("plain")
    assert len(runs) == 3
    for run in runs:
        assert sc.WORKFLOW_RESUMED not in lifecycle(run)


def test_paused_threads_kept_are_bounded() -> None:
    from opentelemetry.trace import SpanContext

    from spangraph.instrumentation._langgraph_runs import CheckpointThread, _PausedThreads

    saver = InMemorySaver()
    kept = _PausedThreads(2)
    threads = [CheckpointThread(saver, str(n), "") for n in range(3)]
    spans = [SpanContext(1, n + 1, is_remote=False) for n in range(3)]
    for thread, span in zip(threads, spans, strict=True):
        kept.remember(thread, span)
    assert kept.find(threads[0]) is None  # the least recently paused: forgotten
    assert [kept.find(t) for t in threads[1:]] == spans[1:]
    assert kept.find(CheckpointThread(InMemorySaver(), "1", "")) is None  # another saver


# -- instrumenting and uninstrumenting ----------------------------------------------------


def test_uninstrument_restores_everything() -> None:
    from langgraph._internal._runnable import RunnableCallable
    from langgraph.graph._branch import BranchSpec
    from langgraph.pregel import _runner
    from langgraph.pregel.main import Pregel

    originals = {
        "invoke": Pregel.__dict__["invoke"],
        "astream": Pregel.__dict__["astream"],
        "tick": _runner.PregelRunner.__dict__["tick"],
        "run_with_retry": _runner.run_with_retry,
        "callable": RunnableCallable.__dict__["ainvoke"],
        "finish": BranchSpec.__dict__["_finish"],
    }
    inst = LangGraphInstrumentor()
    inst.instrument()
    assert isinstance(Pregel.__dict__["invoke"], FunctionWrapper)
    assert isinstance(_runner.run_with_retry, FunctionWrapper)
    inst.uninstrument()
    assert Pregel.__dict__["invoke"] is originals["invoke"]
    assert Pregel.__dict__["astream"] is originals["astream"]
    assert _runner.PregelRunner.__dict__["tick"] is originals["tick"]
    assert _runner.run_with_retry is originals["run_with_retry"]
    assert RunnableCallable.__dict__["ainvoke"] is originals["callable"]
    assert BranchSpec.__dict__["_finish"] is originals["finish"]
    graph = abcd()
    with testing.capture() as cap:
        assert graph.invoke({"path": []}) == {"path": ["a", "b", "c"]}
        run_graph(map_reduce(), "astream", {"items": [1, 2]})
    assert cap.spans == []


def test_uninstrument_keeps_a_wrapper_another_library_added_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another library wraps ``Pregel.invoke`` after spangraph: ``uninstrument()`` used to
    remove that wrapper (the outermost) and leave spangraph's recording."""
    import wrapt
    from langgraph.pregel.main import Pregel

    monkeypatch.setattr(Pregel, "invoke", Pregel.__dict__["invoke"])  # restored after
    theirs: list[str] = []

    def their_wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        theirs.append(instance.name)
        return wrapped(*args, **kwargs)

    inst = LangGraphInstrumentor()
    inst.instrument()
    try:
        wrapt.wrap_function_wrapper(Pregel, "invoke", their_wrapper)
    finally:
        inst.uninstrument()
    graph = abcd()
    with testing.capture() as cap:
        assert graph.invoke({"path": []}) == {"path": ["a", "b", "c"]}
    assert cap.spans == []
    assert theirs == ["LangGraph"]
    inst.instrument()  # and again: spangraph's wrapper under theirs records
    try:
        with testing.capture() as cap:
            graph.invoke({"path": []})
    finally:
        inst.uninstrument()
    assert_abcd(cap)
    assert theirs == ["LangGraph"] * 2


def test_instrumenting_twice_is_idempotent() -> None:
    first, second = LangGraphInstrumentor(), LangGraphInstrumentor()
    assert first is second
    first.instrument()
    try:
        second.instrument()  # warns, changes nothing
        with testing.capture() as cap:
            abcd().invoke({"path": []})
        assert_abcd(cap)
    finally:
        first.uninstrument()
    with testing.capture() as cap:
        abcd().invoke({"path": []})
    assert cap.spans == []


def test_entry_point_target_loads() -> None:
    from spangraph.instrumentation import langgraph as module

    assert module.LangGraphInstrumentor().instrumentation_dependencies() == ("langgraph >= 0.6",)


# -- the docs example ---------------------------------------------------------------------


def _docs_example() -> str:
    page = (ROOT / "docs" / "integrations.md").read_text()
    section = re.split(r"^## ", page, flags=re.M)
    [langgraph] = [s for s in section if s.startswith("LangGraph\n")]
    [example] = re.findall(r"```python\n(.*?)```", langgraph, flags=re.S)[:1]
    return example


def test_docs_example_writes_the_run_to_the_graph(
    graph_url: str, embedded_server: Any, tmp_path: Path
) -> None:
    """The example under "## LangGraph" in docs/integrations.md, as written, in a fresh
    process writing to a fresh graph; then the run read back with spangraph's queries."""
    from spangraph import queries
    from spangraph.stores import FalkorDBStore

    script = tmp_path / "example.py"
    script.write_text(_docs_example())
    env = {
        **os.environ,
        "SPANGRAPH_GRAPH_URL": graph_url,
        "SPANGRAPH_REDIS_URL": embedded_server.redis_url,
        "SPANGRAPH_HOME": str(tmp_path / "home"),
        "SPANGRAPH_PROJECT": f"p-{uuid.uuid4().hex[:8]}",
    }
    env.pop("NEO4J_URI", None)
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    proc = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "2 sources"
    store = FalkorDBStore.from_url(graph_url)
    try:
        [run] = queries.workflows(store)
        assert (run["name"], run["state"]) == ("research", "completed")
        decisions = {d["name"]: d for d in queries.decisions(store, run["workflow_id"])}
        route_ = decisions["route"]
        assert route_["chosen"] == "answer"
        assert [(o["name"], o["chosen"], o["explored"]) for o in route_["options"]] == [
            ("answer", True, False),
            ("ask_human", False, False),
        ]
        assert decisions["fan_out"]["chosen"] == "search"
        branches = queries.branches(store, run["workflow_id"])
        assert sorted(b["name"] for b in branches) == ["search", "search"]
        names = {s["name"]: s for s in queries.workflow_spans(store, run["workflow_id"])}
        assert {"plan", "search", "collect", "answer"} <= set(names)
        assert "ask_human" not in names or names["ask_human"]["state"] == "unexplored"
    finally:
        store.delete_all()
        store.close()


def test_an_ainvoke_closed_while_it_waits_ends_cancelled() -> None:
    """A coroutine closed while suspended (its task collected while pending) ends its
    invocation span cancelled, as spangraph's own async steps do (was: completed)."""
    from spangraph.instrumentation._langgraph_runs import wrap_ainvoke

    class Suspend:
        def __await__(self) -> Iterator[None]:
            yield

    class Graph:
        name = "waits"

    async def ainvoke(*args: Any, **kwargs: Any) -> None:
        await Suspend()

    with testing.capture() as cap:
        coroutine = wrap_ainvoke(ainvoke, Graph(), ({},), {})
        coroutine.send(None)
        coroutine.close()
    [span] = cap.find("waits")
    assert (span.attributes or {})[sc.STATE] == "cancelled"


def chain(*names: str, **compiled: Any) -> Any:
    """START -> each of ``names`` in turn -> END, compiled with ``compiled`` (a
    checkpointer, breakpoints, a name)."""
    builder = StateGraph(Trail)
    for name in names:
        builder.add_node(name, _node(name))
    for a, b in itertools.pairwise([START, *names, END]):
        builder.add_edge(a, b)
    return builder.compile(**compiled)


def draft_publish(**compiled: Any) -> Any:
    """draft -> publish -> END, compiled with ``compiled``."""
    return chain("draft", "publish", **compiled)


def reviewed(saver: Any = None) -> Any:
    """draft -> publish with a checkpointer and a static breakpoint before publish."""
    return draft_publish(
        checkpointer=saver or InMemorySaver(), interrupt_before=["publish"], name="reviewed"
    )


@pytest.mark.parametrize("how", HOWS)
def test_a_static_breakpoint_pauses_the_run_and_going_on_links_to_it(
    instrumented: LangGraphInstrumentor, how: str
) -> None:
    """A graph compiled with ``interrupt_before`` stopped there and its run read as
    finished (``workflow.completed``, nothing marked), and the run that went on
    (``invoke(None, config)``) was not linked to it."""
    graph = reviewed()
    config = {"configurable": {"thread_id": uuid.uuid4().hex}}
    with testing.capture() as cap:
        run_graph(graph, how, {"path": []}, config=config)
        run_graph(graph, how, None, config=config)
    stopped, went_on = cap.find("reviewed")
    assert lifecycle(stopped) == [sc.WORKFLOW_STARTED, sc.WORKFLOW_PAUSED]
    assert event_of(stopped, sc.WORKFLOW_PAUSED) == {
        "reason": "breakpoint", "node": "publish", "nodes": ("publish",), "breakpoint": "before"
    }  # fmt: skip
    assert attr(stopped, sc.LANGGRAPH_INTERRUPTED) is True
    assert attr(stopped, sc.LANGGRAPH_BREAKPOINT) == "before"
    assert attr(stopped, sc.LANGGRAPH_NEXT) == ("publish",)
    assert attr(stopped, sc.STATE) == sc.STATE_COMPLETED
    assert lifecycle(went_on) == [sc.WORKFLOW_STARTED, sc.WORKFLOW_RESUMED, sc.WORKFLOW_COMPLETED]
    assert event_of(went_on, sc.WORKFLOW_RESUMED) == {}  # no value: it just goes on
    assert links_of(went_on) == [(sc.LINK_RESUMED_FROM, stopped.context.span_id)]
    assert attr(went_on, sc.LANGGRAPH_INTERRUPTED) is None
    assert [s.name for s in cap.find(kind=sc.KIND_STEP)] == ["draft", "publish"]


def test_a_breakpoint_after_a_node_given_to_the_call(instrumented: LangGraphInstrumentor) -> None:
    graph = draft_publish(checkpointer=InMemorySaver(), name="after")
    config = {"configurable": {"thread_id": uuid.uuid4().hex}}
    with testing.capture() as cap:
        graph.invoke({"path": []}, config, interrupt_after=["draft"])
        with spangraph.workflow("ticket"):  # inside a run of the caller's: its step says so
            graph.invoke({"path": []}, {"configurable": {"thread_id": uuid.uuid4().hex}},
                         interrupt_after=["draft"])  # fmt: skip
        graph.invoke({"path": []}, {"configurable": {"thread_id": uuid.uuid4().hex}})
    stopped, step, whole = cap.find("after")
    assert event_of(stopped, sc.WORKFLOW_PAUSED)["breakpoint"] == "after"
    assert attr(stopped, sc.LANGGRAPH_NEXT) == ("publish",)
    assert kind(step) == sc.KIND_STEP and attr(step, sc.LANGGRAPH_BREAKPOINT) == "after"
    assert event_of(step, "langgraph.interrupt")["nodes"] == ("publish",)
    # a run with no breakpoint of its own, of a graph compiled without any: not paused
    assert lifecycle(whole) == [sc.WORKFLOW_STARTED, sc.WORKFLOW_COMPLETED]
    assert attr(whole, sc.LANGGRAPH_INTERRUPTED) is None


def test_a_route_to_several_nodes_marks_each_chosen(
    instrumented: LangGraphInstrumentor, sg: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """A conditional edge that sent the run on to two nodes at once had no chosen option
    in ``query decisions`` (both read as unexplored)."""

    def both(state: Trail) -> list[str]:
        return ["search", "draft"]

    builder = StateGraph(Trail)
    for name in ("plan", "search", "draft", "answer"):
        builder.add_node(name, _node(name))
    builder.add_edge(START, "plan")
    builder.add_conditional_edges("plan", both, ["search", "draft", "answer"])
    for name in ("search", "draft", "answer"):
        builder.add_edge(name, END)
    builder.compile(name="fan").invoke({"path": []})
    assert spangraph.flush(10)
    [run] = queries.workflows(sg.store, name="fan")
    [decision] = queries.decisions(sg.store, run["workflow_id"])
    assert decision["chosen"] is None
    assert {o["name"]: o["chosen"] for o in decision["options"]} == {
        "search": True, "draft": True, "answer": False
    }  # fmt: skip
    from spangraph._cli_query import _decision_rows

    [row] = _decision_rows([decision])
    assert row["chosen"] == "search, draft"
    assert row["options"] == "search*, draft*, answer (unexplored)"


class _AsyncOnlySaver(InMemorySaver):
    """A checkpointer whose synchronous reads are refused, as ``AsyncSqliteSaver`` refuses
    them on its own event loop."""

    def get_tuple(self, config: Any) -> Any:
        raise RuntimeError("use the async API")

    async def aget_tuple(self, config: Any) -> Any:
        return InMemorySaver.get_tuple(self, config)


def test_a_breakpoint_with_an_async_checkpointer(instrumented: LangGraphInstrumentor) -> None:
    """The pause was read with the checkpointer's synchronous API, which an async one
    refuses (or, bridged to its loop, blocks it): ``ainvoke`` and ``astream`` read it
    with ``aget_state``."""
    graph = reviewed(_AsyncOnlySaver())
    config = {"configurable": {"thread_id": uuid.uuid4().hex}}

    async def both() -> None:
        await graph.ainvoke({"path": []}, config)
        await graph.ainvoke(None, config)
        other = {"configurable": {"thread_id": uuid.uuid4().hex}}
        assert [c async for c in graph.astream({"path": []}, other)]

    with testing.capture() as cap:
        asyncio.run(both())
    stopped, went_on, streamed = cap.find("reviewed")
    assert event_of(stopped, sc.WORKFLOW_PAUSED)["breakpoint"] == "before"
    assert links_of(went_on) == [(sc.LINK_RESUMED_FROM, stopped.context.span_id)]
    assert event_of(streamed, sc.WORKFLOW_PAUSED)["breakpoint"] == "before"
    assert attr(streamed, sc.LANGGRAPH_NEXT) == ("publish",)


def test_an_async_stream_left_early_is_no_breakpoint(
    instrumented: LangGraphInstrumentor,
) -> None:
    """An ``astream`` its consumer left after the first chunk: no pause (its static
    breakpoint comes after ``c``, never reached), nothing read after it."""
    graph = chain("a", "b", "c", checkpointer=InMemorySaver(), interrupt_after=["c"], name="left")

    async def leave() -> None:
        stream = graph.astream({"path": []}, {"configurable": {"thread_id": uuid.uuid4().hex}})
        await anext(stream)
        await stream.aclose()  # type: ignore[attr-defined]

    with testing.capture() as cap:
        asyncio.run(leave())
    [run] = cap.find("left")
    assert attr(run, sc.LANGGRAPH_INTERRUPTED) is None
    assert lifecycle(run) == [sc.WORKFLOW_STARTED, sc.WORKFLOW_COMPLETED]
    assert [s.name for s in cap.find(kind=sc.KIND_STEP)] == ["a"]


def test_an_async_stream_kept_open_when_the_loop_ends_is_closed_once(
    instrumented: LangGraphInstrumentor,
) -> None:
    """An ``astream`` read to its first chunk and kept (a reference held) while
    ``asyncio.run`` ends: the loop's ``shutdown_asyncgens()`` closed LangGraph's stream at
    the same time as spangraph's generator around it did ("aclose(): asynchronous
    generator is already running", reported by asyncio, the run often ``failed``)."""
    graph = chain("a", "b", "c", checkpointer=InMemorySaver(), interrupt_after=["c"], name="kept")
    reported: list[dict[str, Any]] = []
    kept: list[Any] = []

    async def read_one() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: reported.append(ctx))
        stream = graph.astream({"path": []}, {"configurable": {"thread_id": uuid.uuid4().hex}})
        kept.append(stream)
        await anext(stream)

    with testing.capture() as cap:
        for _ in range(8):
            asyncio.run(read_one())
    assert [ctx.get("message") for ctx in reported] == []
    runs = cap.find("kept")
    assert len(runs) == 8
    assert {attr(run, sc.STATE) for run in runs} == {sc.STATE_COMPLETED}


def test_a_stream_left_early_is_no_breakpoint(instrumented: LangGraphInstrumentor) -> None:
    """A consumer that stopped reading after the first chunk: the run read as stopped at a
    breakpoint (``after``, next ``review``) it never reached."""
    graph = chain("a", "b", "c", checkpointer=InMemorySaver(), interrupt_after=["c"], name="left")
    with testing.capture() as cap:
        stream = graph.stream({"path": []}, {"configurable": {"thread_id": uuid.uuid4().hex}})
        next(iter(stream))
        stream.close()
    [run] = cap.find("left")
    assert attr(run, sc.LANGGRAPH_INTERRUPTED) is None
    assert attr(run, sc.LANGGRAPH_BREAKPOINT) is None
    assert sc.WORKFLOW_PAUSED not in lifecycle(run)


def test_a_subgraph_s_breakpoint_is_no_question(instrumented: LangGraphInstrumentor) -> None:
    """A subgraph stopped at its own static breakpoint: the run read as waiting for an
    answer to an ``interrupt()`` nobody asked."""
    sub = chain("check", "fix", interrupt_before=["fix"], checkpointer=True)
    outer = StateGraph(Trail)
    outer.add_node("review", sub)
    outer.add_edge(START, "review")
    outer.add_edge("review", END)
    graph = outer.compile(checkpointer=InMemorySaver(), name="outer")
    with testing.capture() as cap:
        graph.invoke({"path": []}, {"configurable": {"thread_id": uuid.uuid4().hex}})
    [run] = cap.find("outer")
    paused = event_of(run, sc.WORKFLOW_PAUSED)
    assert (paused["reason"], paused["breakpoint"], paused["nodes"]) == (
        "breakpoint", "subgraph", ("review",)
    )  # fmt: skip
    assert attr(run, sc.LANGGRAPH_BREAKPOINT) == "subgraph"
