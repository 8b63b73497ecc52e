"""Robustness and input checks of workflow / step: exceptions that cannot be printed,
failures while a span starts or ends, retry bounds, async callables and coroutines,
names of partials and callable objects, static and class methods, reserved attribute
keys and event names, ids and monitor targets."""

from __future__ import annotations

import asyncio
import functools
import gc
import inspect
import os
import re
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.trace import NonRecordingSpan, SpanContext, StatusCode, TraceFlags

import spangraph
from spangraph import queries
from spangraph import semconv as sc
from spangraph._spans import MAX_ID_CHARS, _Options, _retry_delay
from spangraph.instrument import MAX_BACKOFF_S, MAX_RETRIES, Scope
from spangraph.testing import SpanCapture, capture


@pytest.fixture
def cap() -> Iterator[SpanCapture]:
    with capture() as c:
        yield c


def one(cap: SpanCapture, name: str) -> ReadableSpan:
    found = cap.find(name)
    assert len(found) == 1, [s.name for s in cap.spans]
    return found[0]


def state(span: ReadableSpan) -> Any:
    return (span.attributes or {}).get(sc.STATE)


def event_attrs(span: ReadableSpan, name: str) -> dict[str, Any]:
    found = [dict(e.attributes or {}) for e in span.events if e.name == name]
    assert len(found) == 1, [e.name for e in span.events]
    return found[0]


def no_span_current() -> bool:
    return not trace.get_current_span().get_span_context().is_valid


class Tracker(SpanProcessor):
    """Every span started and every span ended."""

    def __init__(self) -> None:
        self.started: dict[int, str] = {}
        self.ended: set[int] = set()

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        self.started[span.context.span_id] = span.name

    def on_end(self, span: ReadableSpan) -> None:
        self.ended.add(span.context.span_id)  # type: ignore[union-attr]

    def never_ended(self) -> list[str]:
        return [name for sid, name in self.started.items() if sid not in self.ended]


# -- exceptions whose __str__ raises ---------------------------------------------------


class BadStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("boom in __str__")


def _failed_with_bad_str(span: ReadableSpan) -> None:
    assert state(span) == sc.STATE_FAILED
    assert span.end_time is not None
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "BadStr: <unprintable BadStr>"
    failed = event_attrs(span, "step.failed" if span.name != "w" else "workflow.failed")
    assert failed[sc.ERROR_MESSAGE] == "<unprintable BadStr>"
    assert failed[sc.ERROR_TYPE].endswith("BadStr")
    exception = event_attrs(span, "exception")
    assert exception["exception.message"] == "<unprintable BadStr>"
    assert exception["exception.type"].endswith("BadStr")


def test_failure_text_every_exporter_can_send(cap: SpanCapture) -> None:
    """An exception message with a lone surrogate (a file name from ``os.fsdecode``) or
    of a megabyte: the span's status and its ``exception`` event are mended and cut as
    ``error.message`` is (before, the status and the event kept the surrogate, and an
    OTLP exporter failed the whole batch, other spans included)."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    name = os.fsdecode(b"report-\xff.txt")
    raised = ValueError(f"cannot parse {name}")

    @spangraph.step
    def parse() -> None:
        raise raised

    with pytest.raises(ValueError) as info:
        parse()
    assert info.value is raised and str(info.value) == f"cannot parse {name}"  # unchanged
    with pytest.raises(RuntimeError), spangraph.step("long"):
        raise RuntimeError("x" * 1_000_000)
    for span in cap.spans:
        encode_spans([span]).SerializeToString()  # raised UnicodeEncodeError
        texts = [span.status.description or ""] + [
            v for e in span.events for v in (e.attributes or {}).values() if isinstance(v, str)
        ]
        for text in texts:
            text.encode()
            assert len(text) <= 4 * 8192
    span = one(cap, "parse")
    assert span.status.description == "ValueError: cannot parse report-\ufffd.txt"
    exception = event_attrs(span, "exception")
    assert exception["exception.message"] == "cannot parse report-\ufffd.txt"
    assert "raise raised" in exception["exception.stacktrace"]
    long = event_attrs(one(cap, "long"), "exception")
    assert len(long["exception.message"]) == 8192
    assert long["exception.message"].endswith("chars]")


def test_a_failed_span_ends_when_its_code_did(cap: SpanCapture) -> None:
    """The span's end, and its exception and failure events, carry the moment the code
    raised: recording the exception (its stack trace read from the source files) is not
    the step's time (before, the node's duration was the event's plus that)."""

    @spangraph.step
    def fails() -> None:
        raise KeyError("k")

    with pytest.raises(KeyError):
        fails()
    span = one(cap, "fails")
    stamps = {e.name: e.timestamp for e in span.events}
    assert stamps["exception"] == stamps["step.failed"] == span.end_time


@pytest.mark.parametrize("retries", [0, 1])
def test_unprintable_exception_is_reraised_from_a_step(cap: SpanCapture, retries: int) -> None:
    raised = BadStr()

    @spangraph.step(retries=retries, backoff=0)
    def f() -> None:
        raise raised

    with pytest.raises(BadStr) as info:
        f()
    assert info.value is raised
    assert no_span_current()
    spans = cap.find("f")
    assert len(spans) == retries + 1
    for span in spans:
        _failed_with_bad_str(span)
    if retries:
        assert event_attrs(spans[0], "retry.scheduled")[sc.ERROR_MESSAGE] == "<unprintable BadStr>"


def test_unprintable_exception_is_reraised_from_blocks(cap: SpanCapture) -> None:
    with pytest.raises(BadStr), spangraph.workflow("w"):
        raise BadStr()
    assert no_span_current()
    _failed_with_bad_str(one(cap, "w"))

    async def main() -> None:
        @spangraph.step
        async def a() -> None:
            raise BadStr()

        with pytest.raises(BadStr):
            await a()
        with pytest.raises(BadStr):
            async with spangraph.step("b"):
                raise BadStr()
        assert no_span_current()

    asyncio.run(main())
    _failed_with_bad_str(one(cap, "a"))
    _failed_with_bad_str(one(cap, "b"))


def test_spans_end_when_recursion_hits_the_limit() -> None:
    tp = TracerProvider()
    tracker = Tracker()
    tp.add_span_processor(tracker)

    @spangraph.step
    def rec(n: int) -> int:
        return rec(n + 1)

    limit = sys.getrecursionlimit()
    with capture(tp), spangraph.workflow("recursion"), pytest.raises(RecursionError):
        rec(0)
    assert sys.getrecursionlimit() == limit
    assert len(tracker.started) > 10
    assert tracker.never_ended() == []
    assert no_span_current()


def test_a_failure_while_starting_ends_the_span(cap: SpanCapture) -> None:
    def on_enter(handle: Any) -> None:
        raise LookupError("setting up failed")

    scope = Scope(_Options(kind=sc.KIND_TOOL, name="t", attributes={}, on_enter=on_enter))
    with pytest.raises(LookupError), scope:
        pass
    assert no_span_current()
    span = one(cap, "t")
    assert state(span) == sc.STATE_FAILED
    assert span.end_time is not None


# -- retries ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["ValueError", 42, [ValueError], None, object, (ValueError, 1), ()])
def test_retry_on_must_be_exception_classes(bad: Any) -> None:
    with pytest.raises(TypeError, match="retry_on"):
        spangraph.step("s", retries=2, retry_on=bad)


def test_retry_on_accepts_a_class_or_a_tuple(cap: SpanCapture) -> None:
    calls: list[int] = []

    @spangraph.step(retries=2, backoff=0, retry_on=KeyError)
    def f() -> None:
        calls.append(1)
        raise KeyError("x")

    @spangraph.step(retries=2, backoff=0, retry_on=(ValueError, KeyError))
    def g() -> None:
        calls.append(2)
        raise KeyError("x")

    for fn in (f, g):
        with pytest.raises(KeyError):
            fn()
    assert calls == [1, 1, 1, 2, 2, 2]


def test_many_retries_do_not_overflow(cap: SpanCapture) -> None:
    calls = {"n": 0}

    @spangraph.step(retries=1100, backoff=0.0)
    def flaky() -> str:
        calls["n"] += 1
        if calls["n"] < 1050:
            raise ConnectionError(f"try {calls['n']}")
        return "ok"

    assert flaky() == "ok"
    assert len(cap.find("flaky")) == 1050
    opts = _Options(kind=sc.KIND_STEP, name="s", attributes={}, retries=MAX_RETRIES, backoff=1.0)
    assert _retry_delay(opts, MAX_RETRIES) == opts.backoff_max
    assert _retry_delay(replace_backoff(opts, 0.0), MAX_RETRIES) == 0.0
    assert _retry_delay(replace_backoff(opts, MAX_BACKOFF_S), 2000) == opts.backoff_max


def replace_backoff(opts: _Options, backoff: float) -> _Options:
    return _Options(
        kind=opts.kind, name=opts.name, attributes={}, retries=opts.retries, backoff=backoff
    )


@pytest.mark.parametrize("bad", [True, False, -1, MAX_RETRIES + 1, 2**64, 1.0, "3"])
def test_retries_bounds(bad: Any) -> None:
    with pytest.raises(ValueError, match="retries"):
        spangraph.step("s", retries=bad)


@pytest.mark.parametrize("key", ["backoff", "backoff_max"])
@pytest.mark.parametrize("bad", [1e308, MAX_BACKOFF_S * 2, -0.5, True])
def test_backoff_bounds(key: str, bad: Any) -> None:
    with pytest.raises(ValueError, match=key):
        spangraph.step("s", retries=1, **{key: bad})


def test_largest_retries_and_backoff_are_accepted(cap: SpanCapture) -> None:
    @spangraph.step(retries=MAX_RETRIES, backoff=MAX_BACKOFF_S, backoff_max=MAX_BACKOFF_S)
    def f() -> int:
        return 1

    assert f() == 1
    assert one(cap, "f").attributes[sc.STEP_MAX_ATTEMPTS] == MAX_RETRIES + 1  # type: ignore[index]


# -- async work ------------------------------------------------------------------------


async def _work(fail: bool) -> str:
    await asyncio.sleep(0)
    with spangraph.step("inner"):
        pass
    if fail:
        raise ValueError("failed inside")
    return "done"


class AsyncCallable:
    async def __call__(self, fail: bool) -> str:
        return await _work(fail)


class AsyncGenCallable:
    async def __call__(self) -> Any:
        for i in range(2):
            yield i


def _covers_inner(cap: SpanCapture, name: str, expected: list[str]) -> None:
    outer = cap.find(name)
    assert [state(s) for s in outer] == expected
    inner = cap.find("inner")
    assert len(inner) == len(outer)
    for o, i in zip(outer, inner, strict=True):
        assert i.parent is not None and i.parent.span_id == o.context.span_id
        assert o.end_time is not None and i.end_time is not None and o.end_time >= i.end_time


@pytest.mark.parametrize("how", ["object", "returns-coroutine"])
def test_async_work_is_covered_by_its_span(cap: SpanCapture, how: str) -> None:
    if how == "object":
        fn: Any = spangraph.step("outer")(AsyncCallable())
    else:

        @spangraph.step("outer")
        def fn(fail: bool) -> Any:
            return _work(fail)

    async def main() -> None:
        assert await fn(False) == "done"
        with pytest.raises(ValueError, match="failed inside"):
            await fn(True)
        assert no_span_current()

    asyncio.run(main())
    _covers_inner(cap, "outer", [sc.STATE_COMPLETED, sc.STATE_FAILED])


def test_a_returned_coroutine_runs_as_a_task(cap: SpanCapture) -> None:
    @spangraph.step("outer")
    def fn() -> Any:
        return _work(False)

    assert asyncio.run(fn()) == "done"  # asyncio.run takes coroutines only
    _covers_inner(cap, "outer", [sc.STATE_COMPLETED])


def test_a_returned_coroutine_never_awaited_ends_its_span(cap: SpanCapture) -> None:
    @spangraph.step("outer")
    def fn() -> Any:
        return _work(False)

    # Python's warning names the program's coroutine, not spangraph's wrapper of it
    gc.collect()  # what earlier tests left to the collector warns outside this block
    with pytest.warns(RuntimeWarning, match="coroutine '_work' was never awaited"):
        coro = fn()
        assert coro.__qualname__ == _work.__qualname__
        assert no_span_current()
        del coro
        gc.collect()
    assert state(one(cap, "outer")) == sc.STATE_CANCELLED
    assert cap.find("inner") == []


def _plain(fn: Any) -> Any:
    """A decorator of the usual kind: a plain function calling ``fn`` (so that neither
    ``inspect.isgeneratorfunction`` nor ``isasyncgenfunction`` knows what it returns)."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return call


def test_a_generator_made_behind_a_plain_decorator_is_covered(cap: SpanCapture) -> None:
    """Before, the span ended at the call, before the iteration, which ran with no span
    current (its child spans outside the run)."""

    @spangraph.step("outer")
    @_plain
    def numbers(n: int) -> Iterator[int]:
        for i in range(n):
            with spangraph.step("inner"):
                yield i

    @spangraph.step("outer")
    @_plain
    async def async_numbers(n: int) -> Any:
        for i in range(n):
            with spangraph.step("inner"):
                yield i

    async def consume() -> list[int]:
        assert no_span_current()
        return [i async for i in async_numbers(1)]

    assert list(numbers(1)) == [0]
    assert no_span_current()
    early = numbers(3)
    assert next(early) == 0
    early.close()  # the consumer stops early: completed
    assert asyncio.run(consume()) == [0]
    _covers_inner(cap, "outer", [sc.STATE_COMPLETED] * 3)
    never = numbers(2)  # dropped before its first next(): the span ends all the same
    del never
    gc.collect()
    assert [state(s) for s in cap.find("outer")] == [sc.STATE_COMPLETED] * 4
    assert len(cap.find("inner")) == 3


def test_async_generator_callable_object(cap: SpanCapture) -> None:
    gen = spangraph.step("agen")(AsyncGenCallable())

    async def main() -> list[int]:
        return [i async for i in gen()]

    assert asyncio.run(main()) == [0, 1]
    assert state(one(cap, "agen")) == sc.STATE_COMPLETED


# -- names, static and class methods ---------------------------------------------------


def add(a: int, b: int) -> int:
    return a + b


class Doubler:
    def __call__(self, x: int) -> int:
        return 2 * x


def test_default_names_of_partials_and_callable_objects(cap: SpanCapture) -> None:
    assert spangraph.step(functools.partial(add, 1))(2) == 3
    assert spangraph.workflow(functools.partial(functools.partial(add), 1))(2) == 3
    assert spangraph.step(Doubler())(4) == 8
    assert [s.name for s in cap.spans] == ["add", "add", "Doubler"]


def test_decorated_partials_and_callable_objects_keep_a_name() -> None:
    """``functools.wraps`` finds no ``__name__`` on a partial or a callable object: the
    decorated function was named ``wrapper`` (in tracebacks, logs, framework routes)."""
    step = spangraph.step(functools.partial(add, 1))
    assert (step.__name__, step.__qualname__) == ("add", "add")
    assert spangraph.step(Doubler()).__name__ == "Doubler"
    flaky = spangraph.step(functools.partial(FlakyAsync(), 7))
    assert (flaky.__name__, flaky.__qualname__) == ("FlakyAsync", "FlakyAsync")
    assert spangraph.workflow(add).__name__ == "add"  # a function keeps its own
    assert spangraph.step("named")(Doubler()).__name__ == "Doubler"


class FlakyAsync:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, x: int) -> int:
        self.calls += 1
        await asyncio.sleep(0)
        if self.calls < 3:
            raise ValueError(self.calls)
        return x


def test_a_partial_of_an_async_callable_object_is_async(cap: SpanCapture) -> None:
    """``functools.partial`` of an object whose ``__call__`` is async is traced as async
    code: ``timeout=`` is accepted and ``retries=`` re-runs it (before: taken for sync
    code, a TypeError for ``timeout=`` and a single run with ``retries=``)."""
    flaky = FlakyAsync()
    fn = spangraph.step("p", timeout=5, retries=2, backoff=0)(functools.partial(flaky, 7))
    assert inspect.iscoroutinefunction(fn)
    assert asyncio.run(fn()) == 7
    assert flaky.calls == 3
    steps = cap.find("p")
    assert sorted(s.attributes[sc.STEP_ATTEMPT] for s in steps) == [1, 2, 3]  # type: ignore[index]
    assert [state(s) for s in steps].count(sc.STATE_COMPLETED) == 1


def test_step_over_staticmethod_and_classmethod(cap: SpanCapture) -> None:
    class Agent:
        @spangraph.step
        @staticmethod
        def plan(goal: str) -> str:
            return f"plan for {goal}"

        @spangraph.step("make")
        @classmethod
        def make(cls, n: int) -> tuple[type, int]:
            return cls, n

        @spangraph.step
        @classmethod
        async def amake(cls) -> type:
            return cls

    class SubAgent(Agent):
        pass

    assert Agent().plan("x") == "plan for x"
    assert Agent.plan("y") == "plan for y"
    assert SubAgent().make(1) == (SubAgent, 1)
    assert Agent.make(2) == (Agent, 2)
    assert asyncio.run(SubAgent.amake()) is SubAgent
    assert [s.name for s in cap.spans] == [
        "Agent.plan",
        "Agent.plan",
        "make",
        "make",
        "Agent.amake",
    ]
    assert isinstance(Agent.__dict__["plan"], staticmethod)
    assert isinstance(Agent.__dict__["make"], classmethod)


# -- reserved attribute keys and event names -------------------------------------------


def test_reserved_keys_are_refused(cap: SpanCapture) -> None:
    with spangraph.workflow("w"), spangraph.step("s") as s:
        with pytest.raises(ValueError, match=re.escape(sc.WORKFLOW_ID)):
            s.set(**{sc.WORKFLOW_ID: "someone-else", "other": 1})
        with pytest.raises(ValueError, match=re.escape(sc.KIND)):
            s.set(**{sc.KIND: "workflow"})
        s.set(**{sc.AGENT_ID: "a1", sc.USER_ID: "u1"})  # for users to set
    for key in (sc.WORKFLOW_ID, sc.STEP_ATTEMPT, sc.STATE, sc.DECISION_CHOSEN):
        with pytest.raises(ValueError, match=re.escape(key)):
            spangraph.step("x", attributes={key: "x"})
        with pytest.raises(ValueError, match=re.escape(key)):
            spangraph.workflow("x", attributes={key: "x"})
    attrs = one(cap, "s").attributes or {}
    assert "other" not in attrs
    assert attrs[sc.KIND] == "step"
    assert attrs[sc.AGENT_ID] == "a1"


@pytest.mark.parametrize(
    ("make", "said"),
    [
        (lambda: spangraph.workflow("w", attributes=[1]), "must be a mapping of names"),
        (lambda: spangraph.step("s", attributes="ab"), "must be a mapping of names"),
        (lambda: spangraph.step("s", attributes={1: 2}), "names must be strings, got 1"),
        (lambda: spangraph.branch("b", attributes=[("k", "v")]), "must be a mapping"),
        (lambda: spangraph.llm("m", attributes={("k",): 1}), "names must be strings"),
        # empty and falsy values too (before, they were taken as no attributes)
        (lambda: spangraph.workflow("w", attributes=[]), "must be a mapping of names"),
        (lambda: spangraph.workflow("w", attributes=""), "must be a mapping of names"),
        (lambda: spangraph.step("s", attributes=0), "must be a mapping of names"),
        (lambda: spangraph.step(attributes=()), "must be a mapping of names"),
    ],
)
def test_attributes_that_are_not_a_mapping_of_names_are_refused_clearly(
    make: Any, said: str
) -> None:
    """They gave dict()'s own errors ("dictionary update sequence element #0 has length
    1"), or (non-string names) were taken."""
    with pytest.raises(TypeError, match=re.escape(said)):
        make()


def test_a_name_given_twice_is_refused_naming_both(cap: SpanCapture) -> None:
    """``step("a", name="b")`` raised the internal ``_Options()``'s own "multiple values
    for keyword argument 'name'"."""
    for make in (spangraph.step, spangraph.workflow):
        with pytest.raises(TypeError, match=re.escape("got a name twice: 'a' and name='b'")):
            make("a", name="b")  # type: ignore[call-overload]
    with spangraph.step(name="by-keyword"):
        pass
    assert [s.name for s in cap.spans] == ["by-keyword"]


def test_sdk_keys_win_over_attributes_given_elsewhere(cap: SpanCapture) -> None:
    """The public API refuses them (branch(attributes=) too, see test_branching); spans
    that spangraph's integrations open with attributes of their own get the SDK's."""
    from spangraph._spans import _Options
    from spangraph.instrument import Scope

    given = {sc.WORKFLOW_ID: "someone-else", sc.KIND: "workflow", "x": 1}
    with (
        spangraph.workflow("w") as run,
        Scope(_Options(kind=sc.KIND_BRANCH, name="b", attributes=given)),
    ):
        pass
    attrs = one(cap, "b").attributes or {}
    assert attrs[sc.WORKFLOW_ID] == run.workflow_id
    assert attrs[sc.KIND] == sc.KIND_BRANCH
    assert attrs["x"] == 1


RESERVED = ["span.started", "span.ended", "token", "exception", "step.completed",
            "workflow.failed", "retry.scheduled", "timeout.exceeded", "sleep.started"]  # fmt: skip


@pytest.mark.parametrize("name", RESERVED)
def test_reserved_event_names_are_refused(cap: SpanCapture, name: str) -> None:
    with spangraph.step("s") as s:
        with pytest.raises(ValueError, match=re.escape(name)):
            spangraph.event(name, note="user event")
        with pytest.raises(ValueError, match=re.escape(name)):
            s.event(name)
    assert [e.name for e in one(cap, "s").events] == ["step.started", "step.completed"]


def test_custom_and_documented_event_names_are_kept(cap: SpanCapture) -> None:
    names = ["tool.call", "agent.message.appended", "llm.complete", "span.note", "tokens"]
    with spangraph.step("s") as s:
        for name in names:
            assert spangraph.event(name)
        s.event("workflow.paused2")
    assert [e.name for e in one(cap, "s").events][1:-1] == [*names, "workflow.paused2"]


# -- ids and monitor targets -----------------------------------------------------------


@pytest.mark.parametrize("key", ["workflow_id", "execution_id"])
@pytest.mark.parametrize(
    "bad",
    # " job-7" and "job-7 ": FalkorDB's indexes trim a lookup's value, so such a run's
    # queries found the spans of "job-7" and never its own
    # "." and "..": browsers resolve them away in /api/workflows/{id}/tree
    [
        *(5, ("a", "b"), "", "   ", object(), "x" * (MAX_ID_CHARS + 1)),
        *(" job-7", "job-7 ", "job\n", ".", ".."),
    ],
)
def test_workflow_ids_are_checked(key: str, bad: Any) -> None:
    with pytest.raises(ValueError, match=key):
        spangraph.workflow("w", **{key: bad})


def test_monitor_of_an_invalid_span_is_refused(cap: SpanCapture) -> None:
    for target in (trace.INVALID_SPAN, trace.INVALID_SPAN_CONTEXT):
        with pytest.raises(ValueError, match="not a valid span"):
            spangraph.monitor(target)
    remote = SpanContext(0x1, 0x2, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    with spangraph.monitor(NonRecordingSpan(remote), name="m"):  # valid, from elsewhere
        pass
    assert [link.context.span_id for link in one(cap, "m").links] == [0x2]


def test_longest_workflow_id_is_found_in_the_graph(sg: spangraph.Spangraph) -> None:
    wid = uuid.uuid4().hex + "w" * (MAX_ID_CHARS - 32)
    with (
        spangraph.workflow("long-id", workflow_id=wid, execution_id=wid) as run,
        spangraph.step("s"),
    ):
        pass
    assert run.workflow_id == wid
    assert spangraph.flush(10)
    rows = queries.workflow_spans(sg.store, wid)
    assert sorted(r["name"] for r in rows) == ["long-id", "s"]


def test_a_span_with_more_events_than_kept_is_warned_of_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The TracerProvider keeps 128 events a span by default and drops the oldest: a step
    with more ``event()`` calls lost its ``step.started`` from the graph, and nothing
    said so."""
    from spangraph import _state, testing

    monkeypatch.setattr(_state, "events_limit_warned", False)
    with testing.capture() as captured, spangraph.workflow("w"):
        with spangraph.step("quiet"):
            for i in range(100):
                spangraph.event("tick", i=i)
        assert not caplog.records
        for name in ("chatty", "chattier"):
            with spangraph.step(name):
                for i in range(200):
                    spangraph.event("tick", i=i)
    [warning] = [r for r in caplog.records if "OTEL_SPAN_EVENT_COUNT_LIMIT" in r.getMessage()]
    assert "'chatty'" in warning.getMessage() and "128 a span" in warning.getMessage()
    assert warning.levelname == "WARNING"
    # what the warning is about: the span kept its last 128 events
    chatty = [e.name for e in captured.events() if e.span_name == "chatty"]
    assert len(chatty) == 128 and "step.started" not in chatty


def test_a_workflow_started_before_any_setup_is_warned_of_once() -> None:
    """A program that never called configure() (and set up no OpenTelemetry) recorded
    nothing, and nothing said so: its run was simply not found afterwards."""
    import subprocess
    import textwrap

    program = textwrap.dedent(
        """\
        import spangraph

        @spangraph.workflow
        def job():
            with spangraph.step("inner"):
                return 1

        job(); job()
        with spangraph.workflow("block"):
            pass
        """
    )

    def stderr_of(**env: str) -> str:
        return subprocess.run(
            [sys.executable, "-c", program],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **env},
            check=True,
        ).stderr

    env = {"OTEL_SDK_DISABLED": "", "SPANGRAPH_HOME": "/nonexistent/never-used"}
    warned = stderr_of(**env)
    assert warned.count("is not recorded: no TracerProvider is set") == 1, warned
    assert "spangraph.configure()" in warned and "'job'" in warned
    # tracing turned off on purpose: no warning
    assert "not recorded" not in stderr_of(**{**env, "OTEL_SDK_DISABLED": "true"})


def test_a_workflow_a_sampler_dropped_after_configure_is_not_taken_for_no_setup(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """configure(tracer_provider=P) does not make P global: a first workflow that P's
    sampler dropped was warned of as if nothing had been set up."""
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    from spangraph import _state

    monkeypatch.setattr(_state, "unconfigured_warned", False)
    monkeypatch.setattr(trace, "get_tracer_provider", trace.ProxyTracerProvider)  # none global
    monkeypatch.setattr(_state, "tracer", TracerProvider(sampler=ALWAYS_OFF).get_tracer("t"))
    with spangraph.workflow("sampled-out") as run:
        pass
    assert not run.span.is_recording()
    assert not [r for r in caplog.records if "not recorded" in r.getMessage()]
    assert _state.unconfigured_warned  # looked at once, not at every workflow


def test_a_class_is_refused_by_the_decorators_naming_it() -> None:
    """A decorated class became a function (``isinstance(x, Job)`` then raised far from
    the decorator): refused where it is decorated."""

    class Job:
        pass

    for decorate in (spangraph.workflow, spangraph.step, spangraph.step("named")):
        with pytest.raises(TypeError, match=r"not the class .*Job: decorate its methods"):
            decorate(Job)


def test_a_function_and_its_options_in_one_call(cap: SpanCapture) -> None:
    """``step(fn, retries=)``, ``workflow(fn, workflow_id=)`` and ``name=`` as a keyword:
    as the type checkers are told (tests/typing_samples/public_api.py)."""
    calls = []

    def flaky(item: str) -> str:
        calls.append(item)
        if len(calls) == 1:
            raise OSError("once")
        return item

    retried = spangraph.step(flaky, retries=1, backoff=0, name="price")
    run = spangraph.workflow(lambda: retried("apple"), name="pricing", workflow_id="job-9")
    assert run() == "apple"
    [workflow] = cap.find("pricing")
    assert workflow.attributes[sc.WORKFLOW_ID] == "job-9"
    assert [s.attributes[sc.STATE] for s in cap.find("price")] == ["failed", "completed"]


def test_messages_of_misplaced_options_name_the_code() -> None:
    def numbers() -> Iterator[int]:
        yield 1

    with pytest.raises(TypeError, match=r"generator function \(.*numbers\)"):
        spangraph.step(retries=2)(numbers)
    with pytest.raises(TypeError, match=r"step\('fetch'\)"), spangraph.step("fetch", retries=2):
        pass
    with pytest.raises(TypeError, match=r"workflow\('w'\)"), spangraph.workflow("w", timeout=1):
        pass


def test_a_handle_used_after_its_block_records_nothing_and_says_so_once(
    cap: SpanCapture, caplog: pytest.LogCaptureFixture
) -> None:
    """set(), event(), paused() … after the block ended recorded nothing, and only
    OpenTelemetry's anonymous 'Setting attribute on ended span.' said anything: now one
    warning a handle, naming the call and the span."""
    with spangraph.workflow("late") as run, spangraph.llm("m") as call:
        pass
    with spangraph.tool("t") as tool_call:
        pass
    with caplog.at_level("WARNING", logger="spangraph"):
        run.set(late=1)
        run.event("late-event")
        run.paused("too late")
        call.token("x")
        call.usage(input_tokens=3)
        call.complete("done")
        tool_call.respond("r")
    said = [r.getMessage() for r in caplog.records if r.name == "spangraph"]
    assert said == [
        "spangraph: set() on workflow 'late' after it ended records nothing: call it inside "
        "its block (this warning is given once a span)",
        "spangraph: token() on llm 'chat m' after it ended records nothing: call it inside "
        "its block (this warning is given once a span)",
        "spangraph: respond() on tool 'execute_tool t' after it ended records nothing: call "
        "it inside its block (this warning is given once a span)",
    ]
    workflow = one(cap, "late")
    assert "late" not in workflow.attributes
    assert [e.name for e in workflow.events] == [sc.WORKFLOW_STARTED, sc.WORKFLOW_COMPLETED]
    assert sc.GEN_AI_USAGE_INPUT_TOKENS not in one(cap, "chat m").attributes
    assert [e.name for e in one(cap, "chat m").events] == []
    assert call.tokens == 0
    # a span that never recorded (tracing off) has not "ended": no warning
    caplog.clear()
    with caplog.at_level("WARNING", logger="spangraph"):
        from spangraph.instrument import Handle

        Handle(NonRecordingSpan(SpanContext(1, 2, False)), "step", None, 1).set(a=1)
    assert not [r for r in caplog.records if r.name == "spangraph"]
