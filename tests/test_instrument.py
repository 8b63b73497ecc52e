"""spangraph.workflow / spangraph.step in every form, their lifecycle events, retries,
timeouts, sleeps, cancellation and input checks (in memory, no server)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

import spangraph
from spangraph import _state
from spangraph import semconv as sc
from spangraph.instrument import Handle, Scope, WorkflowRun, current_run
from spangraph.testing import SpanCapture, capture


@pytest.fixture
def cap() -> Iterator[SpanCapture]:
    with capture() as c:
        yield c


class MyError(Exception):
    pass


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def names(span: ReadableSpan) -> list[str]:
    return [e.name for e in span.events]


def event(span: ReadableSpan, name: str) -> dict[str, Any]:
    found = [dict(e.attributes or {}) for e in span.events if e.name == name]
    assert len(found) == 1, f"{name} occurs {len(found)} times in {names(span)}"
    return found[0]


def one(cap: SpanCapture, name: str) -> ReadableSpan:
    found = cap.find(name)
    assert len(found) == 1, [s.name for s in cap.spans]
    return found[0]


def is_child(child: ReadableSpan, parent: ReadableSpan) -> bool:
    return child.parent is not None and child.parent.span_id == parent.context.span_id


def is_uuid7(text: str) -> bool:
    u = uuid.UUID(text)
    return u.version == 7 and str(u) == text


def assert_completed(span: ReadableSpan, kind: str) -> None:
    assert attrs(span)[sc.STATE] == sc.STATE_COMPLETED
    assert span.status.status_code is StatusCode.UNSET
    assert span.end_time is not None
    assert names(span) == [f"{kind}.started", f"{kind}.completed"]


def assert_failed(span: ReadableSpan, kind: str, exc: BaseException) -> None:
    assert attrs(span)[sc.STATE] == sc.STATE_FAILED
    assert span.status.status_code is StatusCode.ERROR
    assert names(span)[0] == f"{kind}.started"
    assert names(span)[-2:] == ["exception", f"{kind}.failed"]
    failed = event(span, f"{kind}.failed")
    assert failed[sc.ERROR_MESSAGE] == str(exc)
    assert failed[sc.ERROR_TYPE].endswith(type(exc).__qualname__)
    assert failed[sc.EVENT_DURATION_MS] >= 0


def assert_cancelled(span: ReadableSpan) -> None:
    assert attrs(span)[sc.STATE] == sc.STATE_CANCELLED
    assert span.status.status_code is not StatusCode.ERROR
    assert span.end_time is not None
    assert not any(n.endswith((".failed", ".completed")) for n in names(span))


# -- forms ----------------------------------------------------------------------------


def test_bare_decorators_sync(cap: SpanCapture) -> None:
    @spangraph.step
    def double(x: int) -> int:
        """Doubles."""
        return 2 * x

    @spangraph.workflow
    def pipeline(x: int) -> int:
        return double(x) + double(1)

    assert pipeline(5) == 12
    assert double.__name__ == "double" and double.__doc__ == "Doubles."

    wf = one(cap, pipeline.__name__)
    steps = cap.find(double.__name__)
    assert len(steps) == 2
    assert attrs(wf)[sc.KIND] == sc.KIND_WORKFLOW
    assert attrs(wf)[sc.GEN_AI_OPERATION_NAME] == "invoke_workflow"
    assert wf.parent is None
    assert_completed(wf, "workflow")
    wid = attrs(wf)[sc.WORKFLOW_ID]
    assert is_uuid7(wid)
    assert attrs(wf)[sc.EXECUTION_ID] == wid
    assert attrs(wf)[sc.WORKFLOW_NAME] == pipeline.__name__
    for s in steps:
        a = attrs(s)
        assert a[sc.KIND] == sc.KIND_STEP
        assert a[sc.STEP_ATTEMPT] == 1
        assert sc.STEP_MAX_ATTEMPTS not in a
        assert a[sc.WORKFLOW_ID] == wid
        assert a[sc.EXECUTION_ID] == wid
        assert a[sc.WORKFLOW_NAME] == pipeline.__name__
        assert is_child(s, wf)
        assert s.context.trace_id == wf.context.trace_id
        assert_completed(s, "step")
        assert event(s, sc.STEP_STARTED) == {sc.EVENT_ATTEMPT: 1}
        assert event(s, sc.STEP_COMPLETED)[sc.EVENT_ATTEMPT] == 1
    assert steps[0].context.span_id != steps[1].context.span_id


def test_decorator_with_name_and_attributes(cap: SpanCapture) -> None:
    @spangraph.step("fetch", attributes={"source": "web", "n": 3, "skip": None})
    def fetch() -> str:
        return "ok"

    @spangraph.workflow("daily-report", workflow_id="job-42", execution_id="exec-1")
    def report() -> str:
        return fetch()

    assert report() == "ok"
    wf, st = one(cap, "daily-report"), one(cap, "fetch")
    assert attrs(wf)[sc.WORKFLOW_ID] == "job-42"
    assert attrs(wf)[sc.EXECUTION_ID] == "exec-1"
    assert attrs(wf)[sc.WORKFLOW_NAME] == "daily-report"
    assert attrs(st)["source"] == "web"
    assert attrs(st)["n"] == 3
    assert "skip" not in attrs(st)
    assert attrs(st)[sc.WORKFLOW_ID] == "job-42"
    assert attrs(st)[sc.EXECUTION_ID] == "exec-1"
    assert is_child(st, wf)


def test_decorator_with_kwargs_only_uses_qualname(cap: SpanCapture) -> None:
    @spangraph.step(attributes={"a": 1})
    def plain() -> int:
        return 1

    assert plain() == 1
    s = one(cap, plain.__name__)
    assert attrs(s)["a"] == 1


def test_project_id_is_stamped(cap: SpanCapture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_state, "project", "proj-x")
    with spangraph.workflow("w"), spangraph.step("s"):
        pass
    assert {attrs(s)[sc.PROJECT_ID] for s in cap.spans} == {"proj-x"}


def test_with_blocks(cap: SpanCapture) -> None:
    with spangraph.workflow("w") as run:
        assert isinstance(run, WorkflowRun)
        assert current_run() is not None and current_run().workflow_id == run.workflow_id
        with spangraph.step("s") as s:
            assert isinstance(s, Handle) and not isinstance(s, WorkflowRun)
            assert s.workflow_id == run.workflow_id
            assert s.attempt == 1
            assert s.kind == sc.KIND_STEP
            s.set(rows=10, obj=object())
            s.event("checkpoint", at=3)
    assert current_run() is None
    wf, st = one(cap, "w"), one(cap, "s")
    assert is_uuid7(run.workflow_id)
    assert run.span_id == format(wf.context.span_id, "016x")
    assert run.trace_id == format(wf.context.trace_id, "032x")
    assert len(run.span_id) == 16 and len(run.trace_id) == 32
    assert is_child(st, wf)
    assert attrs(st)[sc.WORKFLOW_ID] == run.workflow_id
    assert attrs(st)["rows"] == 10
    assert isinstance(attrs(st)["obj"], str)
    assert names(st) == ["step.started", "checkpoint", "step.completed"]
    assert event(st, "checkpoint") == {"at": 3}
    assert_completed(wf, "workflow")


async def test_async_with_blocks(cap: SpanCapture) -> None:
    async with spangraph.workflow("aw", workflow_id="given") as run, spangraph.step("as") as s:
        await asyncio.sleep(0)
        assert s.workflow_id == "given"
    wf, st = one(cap, "aw"), one(cap, "as")
    assert run.workflow_id == "given"
    assert is_child(st, wf)
    assert attrs(st)[sc.WORKFLOW_ID] == "given"
    assert_completed(wf, "workflow")
    assert_completed(st, "step")


async def test_async_decorators(cap: SpanCapture) -> None:
    @spangraph.step("inner")
    async def inner(x: int) -> int:
        await asyncio.sleep(0)
        return x + 1

    @spangraph.workflow
    async def outer() -> int:
        return await inner(1) + await inner(2)

    assert await outer() == 5
    wf = one(cap, outer.__name__)
    steps = cap.find("inner")
    assert len(steps) == 2
    assert all(is_child(s, wf) for s in steps)
    assert {attrs(s)[sc.WORKFLOW_ID] for s in steps} == {attrs(wf)[sc.WORKFLOW_ID]}
    assert_completed(wf, "workflow")
    for s in steps:
        assert_completed(s, "step")


def test_generator_decorator(cap: SpanCapture) -> None:
    @spangraph.step("gen")
    def gen(n: int) -> Iterator[int]:
        yield from range(n)

    with spangraph.workflow("w"):
        it = gen(3)
        assert next(it) == 0
        assert cap.find("gen") == []  # still running
        assert list(it) == [1, 2]
    st, wf = one(cap, "gen"), one(cap, "w")
    assert is_child(st, wf)
    assert attrs(st)[sc.WORKFLOW_ID] == attrs(wf)[sc.WORKFLOW_ID]
    assert_completed(st, "step")


async def test_async_generator_decorator(cap: SpanCapture) -> None:
    @spangraph.step
    async def agen(n: int) -> AsyncIterator[int]:
        for i in range(n):
            await asyncio.sleep(0)
            yield i

    async with spangraph.workflow("w"):
        assert [x async for x in agen(3)] == [0, 1, 2]
    st, wf = one(cap, agen.__name__), one(cap, "w")
    assert is_child(st, wf)
    assert attrs(st)[sc.WORKFLOW_ID] == attrs(wf)[sc.WORKFLOW_ID]
    assert_completed(st, "step")


def test_step_outside_workflow_has_no_run_ids(cap: SpanCapture) -> None:
    with spangraph.step("lonely") as s:
        assert s.workflow_id is None
    a = attrs(one(cap, "lonely"))
    assert sc.WORKFLOW_ID not in a and sc.EXECUTION_ID not in a
    assert a[sc.KIND] == sc.KIND_STEP


def test_nested_workflow_gets_its_own_id(cap: SpanCapture) -> None:
    with spangraph.workflow("outer") as outer:
        with spangraph.workflow("inner") as inner, spangraph.step("s"):
            pass
        with spangraph.step("after"):
            pass
    assert inner.workflow_id != outer.workflow_id
    assert attrs(one(cap, "s"))[sc.WORKFLOW_ID] == inner.workflow_id
    assert attrs(one(cap, "after"))[sc.WORKFLOW_ID] == outer.workflow_id
    assert is_child(one(cap, "inner"), one(cap, "outer"))


def test_workflow_ids_are_unique_and_sortable(cap: SpanCapture) -> None:
    ids = []
    for _ in range(20):
        with spangraph.workflow("w") as run:
            ids.append(run.workflow_id)
    assert len(set(ids)) == 20
    assert ids == sorted(ids)


# -- workflow handle events -------------------------------------------------------------


def test_workflow_queued_paused_resumed(cap: SpanCapture) -> None:
    with spangraph.workflow("w") as run:
        run.queued(queue="default")
        run.paused(reason="waiting for approval", by="alice")
        run.resumed(approved=True)
    wf = one(cap, "w")
    assert names(wf) == [
        "workflow.started",
        "workflow.queued",
        "workflow.paused",
        "workflow.resumed",
        "workflow.completed",
    ]
    assert event(wf, sc.WORKFLOW_QUEUED) == {"queue": "default"}
    assert event(wf, sc.WORKFLOW_PAUSED) == {"reason": "waiting for approval", "by": "alice"}
    assert event(wf, sc.WORKFLOW_RESUMED) == {"approved": True}
    assert cap.has_event("workflow.paused", reason="waiting for approval")


def test_paused_without_reason_leaves_it_out(cap: SpanCapture) -> None:
    with spangraph.workflow("w") as run:
        run.paused()
    assert event(one(cap, "w"), sc.WORKFLOW_PAUSED) == {}


def test_workflow_completed_event_has_duration(cap: SpanCapture) -> None:
    with spangraph.workflow("w"):
        spangraph.sleep(0.01)
    done = event(one(cap, "w"), sc.WORKFLOW_COMPLETED)
    assert done[sc.EVENT_DURATION_MS] >= 10
    assert sc.EVENT_ATTEMPT not in done


# -- failures ---------------------------------------------------------------------------


def test_sync_failure_reraises_same_object(cap: SpanCapture) -> None:
    boom = MyError("boom")

    @spangraph.step
    def bad() -> None:
        raise boom

    @spangraph.workflow("w")
    def wf() -> None:
        bad()

    with pytest.raises(MyError) as info:
        wf()
    assert info.value is boom
    st, w = one(cap, bad.__name__), one(cap, "w")
    assert_failed(st, "step", boom)
    assert_failed(w, "workflow", boom)
    failed = event(st, sc.STEP_FAILED)
    assert failed[sc.ERROR_TYPE] == f"{MyError.__module__}.MyError"
    assert failed[sc.EVENT_ATTEMPT] == 1
    assert st.status.description == "MyError: boom"


def test_builtin_error_type_is_unqualified(cap: SpanCapture) -> None:
    with pytest.raises(KeyError), spangraph.step("s"):
        raise KeyError("k")
    assert event(one(cap, "s"), sc.STEP_FAILED)[sc.ERROR_TYPE] == "KeyError"


async def test_async_failure_reraises_same_object(cap: SpanCapture) -> None:
    boom = ValueError("async boom")

    @spangraph.step
    async def bad() -> None:
        await asyncio.sleep(0)
        raise boom

    with pytest.raises(ValueError) as info:
        async with spangraph.workflow("w"):
            await bad()
    assert info.value is boom
    assert_failed(one(cap, bad.__name__), "step", boom)
    assert_failed(one(cap, "w"), "workflow", boom)


def test_with_block_failure(cap: SpanCapture) -> None:
    boom = RuntimeError("x")
    with pytest.raises(RuntimeError) as info, spangraph.workflow("w"):
        raise boom
    assert info.value is boom
    assert_failed(one(cap, "w"), "workflow", boom)


async def test_cancelled_task_ends_spans_cancelled(cap: SpanCapture) -> None:
    started = asyncio.Event()

    @spangraph.step
    async def waits() -> None:
        started.set()
        await asyncio.sleep(10)

    @spangraph.workflow("w")
    async def wf() -> None:
        await waits()

    task = asyncio.create_task(wf())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    st, w = one(cap, waits.__name__), one(cap, "w")
    assert_cancelled(st)
    assert_cancelled(w)
    assert names(st) == ["step.started"]
    assert names(w) == ["workflow.started", "workflow.cancelled"]
    cancelled = event(w, sc.WORKFLOW_CANCELLED)
    assert cancelled[sc.ERROR_TYPE] == "asyncio.exceptions.CancelledError"
    assert cancelled[sc.EVENT_DURATION_MS] >= 0


async def test_cancelled_async_with_block(cap: SpanCapture) -> None:
    async def body() -> None:
        async with spangraph.workflow("w"):
            await asyncio.sleep(10)

    task = asyncio.create_task(body())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert_cancelled(one(cap, "w"))
    assert cap.has_event("workflow.cancelled")


def test_keyboard_interrupt_is_cancelled(cap: SpanCapture) -> None:
    interrupt = KeyboardInterrupt()

    @spangraph.step
    def stop() -> None:
        raise interrupt

    with pytest.raises(KeyboardInterrupt) as info, spangraph.workflow("w"):
        stop()
    assert info.value is interrupt
    assert_cancelled(one(cap, stop.__name__))
    assert_cancelled(one(cap, "w"))
    assert event(one(cap, "w"), sc.WORKFLOW_CANCELLED)[sc.ERROR_TYPE] == "KeyboardInterrupt"
    assert not cap.has_event("exception")


@pytest.mark.parametrize("code", [None, 0, False])  # False: exit status 0
def test_a_clean_exit_completes_the_spans_it_leaves(cap: SpanCapture, code: int | None) -> None:
    @spangraph.step(retries=3, backoff=0, retry_on=BaseException)
    def finish() -> None:
        sys.exit(code)

    with pytest.raises(SystemExit) as info, spangraph.workflow("w"):
        finish()
    assert info.value.code == code  # the exit goes on, unchanged
    assert_completed(one(cap, finish.__name__), "step")  # and is not retried
    assert_completed(one(cap, "w"), "workflow")


@pytest.mark.parametrize("code", [1, "bye", 0.0, "0"])  # 0.0, "0": printed, status 1
def test_an_exit_with_a_failure_status_fails_the_spans(cap: SpanCapture, code: object) -> None:
    exit_ = SystemExit(code)
    calls = []

    @spangraph.step(retries=3, backoff=0, retry_on=BaseException)
    def s() -> None:
        calls.append(1)
        raise exit_

    with pytest.raises(SystemExit) as info, spangraph.workflow("w"):
        s()
    assert info.value is exit_
    assert calls == [1]  # an exit is not retried (before: a non-zero one was)
    assert_failed(one(cap, s.__name__), "step", exit_)
    assert_failed(one(cap, "w"), "workflow", exit_)


# -- retries ----------------------------------------------------------------------------


def _link_types(span: ReadableSpan) -> list[tuple[int, Any]]:
    return [
        (link.context.span_id, (link.attributes or {}).get(sc.LINK_TYPE)) for link in span.links
    ]


def test_retries_then_success(cap: SpanCapture) -> None:
    calls: list[int] = []
    errors = [ConnectionError("first"), ConnectionError("second")]

    @spangraph.step("flaky", retries=3, backoff=0.002)
    def flaky(x: int) -> int:
        calls.append(x)
        if errors:
            raise errors.pop(0)
        return x * 10

    with spangraph.workflow("w") as run:
        assert flaky(4) == 40
    assert calls == [4, 4, 4]
    attempts = sorted(cap.find("flaky"), key=lambda s: attrs(s)[sc.STEP_ATTEMPT])
    wf = one(cap, "w")
    assert [attrs(s)[sc.STEP_ATTEMPT] for s in attempts] == [1, 2, 3]
    assert {attrs(s)[sc.STEP_MAX_ATTEMPTS] for s in attempts} == {4}
    assert all(is_child(s, wf) for s in attempts)
    assert {attrs(s)[sc.WORKFLOW_ID] for s in attempts} == {run.workflow_id}
    # each attempt links to the one before it
    assert _link_types(attempts[0]) == []
    assert _link_types(attempts[1]) == [(attempts[0].context.span_id, sc.LINK_RETRY_OF)]
    assert _link_types(attempts[2]) == [(attempts[1].context.span_id, sc.LINK_RETRY_OF)]
    # events of the failed attempts
    for n, span in enumerate(attempts[:2], start=1):
        assert names(span) == ["step.started", "retry.scheduled", "exception", "step.failed"]
        sched = event(span, sc.RETRY_SCHEDULED)
        assert sched == {
            sc.EVENT_ATTEMPT: n,
            sc.EVENT_DELAY_MS: pytest.approx(2.0 * 2 ** (n - 1)),
            sc.ERROR_TYPE: "ConnectionError",
            sc.ERROR_MESSAGE: ["first", "second"][n - 1],
        }
        assert attrs(span)[sc.STATE] == sc.STATE_FAILED
        assert event(span, sc.STEP_STARTED) == {sc.EVENT_ATTEMPT: n}
    assert_completed(attempts[2], "step")
    assert event(attempts[2], sc.STEP_STARTED) == {sc.EVENT_ATTEMPT: 3}
    assert not cap.has_event("retry.exhausted")
    assert_completed(wf, "workflow")


def test_retries_exhausted(cap: SpanCapture) -> None:
    raised: list[BaseException] = []

    @spangraph.step(retries=2, backoff=0)
    def always() -> None:
        exc = ValueError(f"fail {len(raised) + 1}")
        raised.append(exc)
        raise exc

    with pytest.raises(ValueError) as info:
        always()
    assert len(raised) == 3
    assert info.value is raised[-1]
    attempts = sorted(cap.find(always.__name__), key=lambda s: attrs(s)[sc.STEP_ATTEMPT])
    assert len(attempts) == 3
    assert [len(cap.events("retry.scheduled")), len(cap.events("retry.exhausted"))] == [2, 1]
    last = attempts[-1]
    assert names(last) == ["step.started", "retry.exhausted", "exception", "step.failed"]
    assert event(last, sc.RETRY_EXHAUSTED) == {
        sc.EVENT_ATTEMPT: 3,
        sc.ERROR_TYPE: "ValueError",
        sc.ERROR_MESSAGE: "fail 3",
    }
    assert _link_types(last) == [(attempts[1].context.span_id, sc.LINK_RETRY_OF)]
    for span in attempts:
        assert_failed(span, "step", raised[attrs(span)[sc.STEP_ATTEMPT] - 1])


def test_backoff_is_exponential_and_capped(cap: SpanCapture) -> None:
    @spangraph.step(retries=4, backoff=0.001, backoff_max=0.003)
    def always() -> None:
        raise OSError("down")

    with pytest.raises(OSError):
        always()
    delays = [e.attributes[sc.EVENT_DELAY_MS] for e in cap.events("retry.scheduled")]
    assert delays == pytest.approx([1.0, 2.0, 3.0, 3.0])


def test_retry_on_filters_errors(cap: SpanCapture) -> None:
    calls = 0

    @spangraph.step(retries=3, backoff=0, retry_on=ConnectionError)
    def wrong_kind() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("not retried")

    with pytest.raises(ValueError):
        wrong_kind()
    assert calls == 1
    assert len(cap.spans) == 1
    assert not cap.has_event("retry.*")


def test_retry_on_tuple(cap: SpanCapture) -> None:
    seen: list[type[BaseException]] = []
    queue: list[BaseException] = [KeyError("a"), IndexError("b")]

    @spangraph.step(retries=3, backoff=0, retry_on=(KeyError, IndexError))
    def f() -> str:
        if queue:
            exc = queue.pop(0)
            seen.append(type(exc))
            raise exc
        return "done"

    assert f() == "done"
    assert seen == [KeyError, IndexError]
    assert len(cap.find(f.__name__)) == 3


async def test_async_retries(cap: SpanCapture) -> None:
    left = [2]

    @spangraph.step("aflaky", retries=2, backoff=0.001)
    async def aflaky() -> str:
        await asyncio.sleep(0)
        if left[0]:
            left[0] -= 1
            raise TimeoutError("slow")
        return "ok"

    async with spangraph.workflow("w"):
        assert await aflaky() == "ok"
    attempts = sorted(cap.find("aflaky"), key=lambda s: attrs(s)[sc.STEP_ATTEMPT])
    assert [attrs(s)[sc.STEP_ATTEMPT] for s in attempts] == [1, 2, 3]
    assert _link_types(attempts[2]) == [(attempts[1].context.span_id, sc.LINK_RETRY_OF)]
    assert [e.attributes[sc.EVENT_ATTEMPT] for e in cap.events("retry.scheduled")] == [1, 2]
    assert_completed(attempts[2], "step")


async def test_cancellation_is_not_retried(cap: SpanCapture) -> None:
    calls = 0

    @spangraph.step(retries=5, backoff=0, retry_on=BaseException)
    async def slow() -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(10)

    task = asyncio.create_task(slow())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert calls == 1
    assert_cancelled(one(cap, slow.__name__))
    assert not cap.has_event("retry.*")


async def test_cancelled_while_waiting_to_retry(cap: SpanCapture) -> None:
    """A cancellation during the backoff: the scheduled attempt is recorded as cancelled
    (linked retry_of to the failed one). Before, the run ended on a failed attempt with a
    retry.scheduled that nothing followed."""

    @spangraph.step("flaky", retries=3, backoff=30)
    async def flaky() -> None:
        raise ValueError("boom")

    task = asyncio.create_task(flaky())
    while not cap.has_event("retry.scheduled"):
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    first, second = sorted(cap.find("flaky"), key=lambda s: attrs(s)[sc.STEP_ATTEMPT])
    assert attrs(first)[sc.STATE] == "failed" and attrs(second)[sc.STEP_ATTEMPT] == 2
    assert_cancelled(second)
    assert _link_types(second) == [(first.context.span_id, sc.LINK_RETRY_OF)]


def test_interrupted_while_waiting_to_retry(cap: SpanCapture) -> None:
    """Ctrl-C (KeyboardInterrupt, from a real signal) during a sync step's backoff."""
    import signal

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    @spangraph.step("flaky", retries=3, backoff=30)
    def flaky() -> None:
        raise ValueError("boom")

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.2)
    try:
        with pytest.raises(KeyboardInterrupt):
            flaky()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    first, second = sorted(cap.find("flaky"), key=lambda s: attrs(s)[sc.STEP_ATTEMPT])
    assert attrs(first)[sc.STATE] == "failed"
    assert cap.has_event("retry.scheduled", attempt=1)
    assert_cancelled(second)
    assert _link_types(second) == [(first.context.span_id, sc.LINK_RETRY_OF)]


class _Boom(Exception):
    """An exception that can be referred to weakly."""


async def test_backoff_wait_holds_no_failed_attempt(cap: SpanCapture) -> None:
    """The backoff is waited for outside the failed attempt's ``except`` block: a
    cancellation during it does not get the attempt's exception as ``__context__``, and
    that exception (with its traceback and frames) is not kept alive during the wait."""
    import gc
    import weakref

    failed: list[weakref.ref[_Boom]] = []

    @spangraph.step("flaky", retries=3, backoff=30)
    async def flaky() -> None:
        boom = _Boom("boom")
        failed.append(weakref.ref(boom))
        raise boom

    task = asyncio.create_task(flaky())
    while not cap.has_event("retry.scheduled"):
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.005)
    gc.collect()
    assert failed[0]() is None  # before: alive for the whole wait
    task.cancel()
    with pytest.raises(asyncio.CancelledError) as info:
        await task
    assert info.value.__context__ is None  # before: the attempt's _Boom
    first, second = sorted(cap.find("flaky"), key=lambda s: attrs(s)[sc.STEP_ATTEMPT])
    assert attrs(first)[sc.STATE] == sc.STATE_FAILED
    assert_cancelled(second)


def test_interrupted_backoff_has_no_failed_attempt_as_context(cap: SpanCapture) -> None:
    """Ctrl-C during a sync step's backoff: the KeyboardInterrupt is not chained to the
    failed attempt's exception."""
    import signal

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    @spangraph.step("flaky", retries=3, backoff=30)
    def flaky() -> None:
        raise ValueError("boom")

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.2)
    try:
        with pytest.raises(KeyboardInterrupt) as info:
            flaky()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert info.value.__context__ is None  # before: the attempt's ValueError
    first, second = sorted(cap.find("flaky"), key=lambda s: attrs(s)[sc.STEP_ATTEMPT])
    assert attrs(first)[sc.STATE] == sc.STATE_FAILED
    assert_cancelled(second)


# -- timeouts ---------------------------------------------------------------------------


async def test_timeout_decorator_exceeded(cap: SpanCapture) -> None:
    @spangraph.step(timeout=0.05)
    async def slow() -> None:
        await asyncio.sleep(5)

    with pytest.raises(TimeoutError):
        await slow()
    st = one(cap, slow.__name__)
    assert attrs(st)[sc.TIMEOUT_S] == 0.05
    assert names(st) == [
        "step.started",
        "timeout.set",
        "timeout.exceeded",
        "exception",
        "step.failed",
    ]
    assert event(st, sc.TIMEOUT_SET) == {sc.EVENT_TIMEOUT_MS: 50.0}
    assert event(st, sc.TIMEOUT_EXCEEDED) == {sc.EVENT_TIMEOUT_MS: 50.0}
    assert event(st, sc.STEP_FAILED)[sc.ERROR_TYPE] == "TimeoutError"
    # asyncio's TimeoutError has no message: the graph and Jaeger say which timeout fired
    assert event(st, sc.STEP_FAILED)[sc.ERROR_MESSAGE] == "exceeded its timeout of 0.05 s"
    assert st.status.description == "TimeoutError: exceeded its timeout of 0.05 s"
    assert attrs(st)[sc.STATE] == sc.STATE_FAILED


async def test_timeout_then_retry_says_which_timeout(cap: SpanCapture) -> None:
    @spangraph.step(timeout=0.02, retries=1, backoff=0)
    async def slow() -> None:
        await asyncio.sleep(5)

    with pytest.raises(TimeoutError):
        await slow()
    first, second = cap.find(slow.__name__)
    message = {sc.ERROR_MESSAGE: "exceeded its timeout of 0.02 s"}
    assert event(first, sc.RETRY_SCHEDULED).items() >= message.items()
    assert event(second, sc.RETRY_EXHAUSTED).items() >= message.items()
    assert event(second, sc.STEP_FAILED).items() >= message.items()


async def test_blocks_a_timeout_leaves_say_whose_timeout_fired(cap: SpanCapture) -> None:
    """The option and workflow a step's timeout failed said ``TimeoutError: `` and nothing
    more (asyncio's error has no message): they name the step and its timeout. The error
    itself is raised on unchanged, and another block's own timeout still speaks for it."""

    @spangraph.step(timeout=0.02)
    async def slow() -> None:
        await asyncio.sleep(5)

    with pytest.raises(TimeoutError) as raised:
        async with (
            spangraph.workflow("timed-run"),
            spangraph.decision("pick", options=["fast"]) as d,
            d.option("fast"),
        ):
            await slow()
    assert raised.value.args == ()
    told = "step 'slow' exceeded its timeout of 0.02 s"
    for name in ("fast", "timed-run"):
        span = one(cap, name)
        assert span.status.description == f"TimeoutError: {told}", name
        assert attrs(span)[sc.STATE] == sc.STATE_FAILED
    assert event(one(cap, "timed-run"), sc.WORKFLOW_FAILED)[sc.ERROR_MESSAGE] == told
    assert one(cap, "slow").status.description == "TimeoutError: exceeded its timeout of 0.02 s"

    @spangraph.step("outer", timeout=0.05)
    async def outer() -> None:
        await slow()

    cap.clear()
    with pytest.raises(TimeoutError):
        await outer()
    # the inner step's timeout fired first: the outer step says so
    assert one(cap, "outer").status.description == f"TimeoutError: {told}"


async def test_timeout_not_exceeded(cap: SpanCapture) -> None:
    @spangraph.step(timeout=5)
    async def quick() -> int:
        return 1

    assert await quick() == 1
    st = one(cap, quick.__name__)
    assert names(st) == ["step.started", "timeout.set", "step.completed"]


async def test_own_timeout_error_is_not_timeout_exceeded(cap: SpanCapture) -> None:
    @spangraph.step(timeout=5)
    async def raises_timeout() -> None:
        raise TimeoutError("from the code itself")

    with pytest.raises(TimeoutError, match="from the code itself"):
        await raises_timeout()
    assert not cap.has_event("timeout.exceeded")
    assert cap.has_event("step.failed", **{sc.ERROR_MESSAGE: "from the code itself"})


async def test_timeout_async_with_block(cap: SpanCapture) -> None:
    with pytest.raises(TimeoutError):
        async with spangraph.step("blk", timeout=0.05):
            await asyncio.sleep(5)
    st = one(cap, "blk")
    assert names(st) == [
        "step.started",
        "timeout.set",
        "timeout.exceeded",
        "exception",
        "step.failed",
    ]
    assert attrs(st)[sc.STATE] == sc.STATE_FAILED


async def test_timeout_async_with_block_not_exceeded(cap: SpanCapture) -> None:
    async with spangraph.step("blk", timeout=5):
        await asyncio.sleep(0)
    assert names(one(cap, "blk")) == ["step.started", "timeout.set", "step.completed"]


@pytest.mark.parametrize("form", ["decorator", "block"])
async def test_a_timeout_whose_cancellation_is_swallowed_is_still_recorded(
    cap: SpanCapture, form: str
) -> None:
    """Code that catches the timeout's cancellation and returns normally ends the step
    ``completed``, after ``timeout.exceeded`` (before: no ``timeout.exceeded``, as if the
    timeout had never fired)."""

    async def body() -> str:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            return "swallowed"
        return "slept"

    if form == "decorator":
        assert await spangraph.step("slow", timeout=0.05)(body)() == "swallowed"
    else:
        async with spangraph.step("slow", timeout=0.05):
            assert await body() == "swallowed"
    st = one(cap, "slow")
    assert names(st) == ["step.started", "timeout.set", "timeout.exceeded", "step.completed"]
    assert event(st, sc.TIMEOUT_EXCEEDED) == {sc.EVENT_TIMEOUT_MS: 50.0}
    assert attrs(st)[sc.STATE] == sc.STATE_COMPLETED


async def test_timeout_with_retries_retries_timeouts(cap: SpanCapture) -> None:
    calls = 0

    @spangraph.step(timeout=0.03, retries=1, backoff=0)
    async def slow_then_fast() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(5)
        return "fast"

    assert await slow_then_fast() == "fast"
    assert calls == 2
    assert len(cap.events("timeout.exceeded")) == 1
    assert len(cap.events("retry.scheduled")) == 1


async def test_timeout_exceeded_is_recorded_before_the_retry(cap: SpanCapture) -> None:
    """An attempt that timed out records ``timeout.exceeded`` before ``retry.scheduled``
    (or ``retry.exhausted``): the timeout is the cause of the retry. Before, the retry
    event came first."""

    @spangraph.step("slow", timeout=0.02, retries=1, backoff=0)
    async def slow() -> None:
        await asyncio.sleep(5)

    with pytest.raises(TimeoutError):
        await slow()
    first, second = sorted(cap.find("slow"), key=lambda s: attrs(s)[sc.STEP_ATTEMPT])
    assert names(first) == [
        "step.started",
        "timeout.set",
        "timeout.exceeded",
        "retry.scheduled",
        "exception",
        "step.failed",
    ]
    assert names(second) == [
        "step.started",
        "timeout.set",
        "timeout.exceeded",
        "retry.exhausted",
        "exception",
        "step.failed",
    ]


async def test_workflow_timeout(cap: SpanCapture) -> None:
    @spangraph.workflow(timeout=0.03)
    async def wf() -> None:
        await asyncio.sleep(5)

    with pytest.raises(TimeoutError):
        await wf()
    w = one(cap, wf.__name__)
    assert names(w)[:3] == ["workflow.started", "timeout.set", "timeout.exceeded"]
    assert names(w)[-1] == "workflow.failed"


# -- sleep and event --------------------------------------------------------------------


def test_sleep_records_events(cap: SpanCapture) -> None:
    with spangraph.step("s"):
        spangraph.sleep(0.01, reason="rate limit")
    st = one(cap, "s")
    assert names(st) == ["step.started", "sleep.started", "sleep.completed", "step.completed"]
    assert event(st, sc.SLEEP_STARTED) == {sc.EVENT_DELAY_MS: 10.0, "reason": "rate limit"}
    assert event(st, sc.SLEEP_COMPLETED)[sc.EVENT_DURATION_MS] >= 10


async def test_asleep_records_events(cap: SpanCapture) -> None:
    async with spangraph.step("s"):
        await spangraph.asleep(0.01)
    st = one(cap, "s")
    assert names(st) == ["step.started", "sleep.started", "sleep.completed", "step.completed"]
    assert event(st, sc.SLEEP_STARTED) == {sc.EVENT_DELAY_MS: 10.0}
    assert event(st, sc.SLEEP_COMPLETED)[sc.EVENT_DURATION_MS] >= 10


async def test_sleep_outside_span_just_sleeps(cap: SpanCapture) -> None:
    assert spangraph.sleep(0) is None
    assert await spangraph.asleep(0) is None
    assert cap.spans == []


@pytest.mark.parametrize("seconds", [-1, "1", None, float("nan"), float("inf"), True, 1e20])
async def test_sleep_rejects_bad_seconds(seconds: Any) -> None:
    with pytest.raises(ValueError, match=r"seconds .* from 0 to \d+, got") as info:
        spangraph.sleep(seconds)
    assert "9.22337e+09" not in str(info.value)  # the bound as a number
    with pytest.raises(ValueError, match="seconds"):
        await spangraph.asleep(seconds)


def test_event_inside_and_outside(cap: SpanCapture) -> None:
    assert spangraph.event("nothing.here", a=1) is False
    with spangraph.step("s"):
        assert spangraph.event("custom.thing", count=2, label="x", missing=None) is True
    assert spangraph.event("nothing.here") is False
    st = one(cap, "s")
    assert names(st) == ["step.started", "custom.thing", "step.completed"]
    assert event(st, "custom.thing") == {"count": 2, "label": "x"}


@pytest.mark.parametrize("bad", ["", "   ", None, 3])
def test_event_rejects_bad_names(cap: SpanCapture, bad: Any) -> None:
    with spangraph.step("s"), pytest.raises(ValueError, match="event name"):
        spangraph.event(bad)
    with spangraph.step("t") as s, pytest.raises(ValueError, match="event name"):
        s.event(bad)


# -- generators -------------------------------------------------------------------------


def test_generator_return_send_and_throw(cap: SpanCapture) -> None:
    received: list[Any] = []

    @spangraph.step("conv")
    def conv() -> Iterator[int]:
        received.append((yield 1))
        try:
            yield 2
        except KeyError as exc:
            received.append(exc)
            yield 3
        return "the end"

    g = conv()
    assert next(g) == 1
    assert g.send("hello") == 2
    err = KeyError("k")
    assert g.throw(err) == 3
    with pytest.raises(StopIteration) as stop:
        next(g)
    assert stop.value.value == "the end"
    assert received == ["hello", err]
    assert_completed(one(cap, "conv"), "step")


def test_generator_throw_unhandled_fails_span(cap: SpanCapture) -> None:
    @spangraph.step("g")
    def g() -> Iterator[int]:
        yield 1
        yield 2

    it = g()
    next(it)
    boom = ValueError("thrown in")
    with pytest.raises(ValueError) as info:
        it.throw(boom)
    assert info.value is boom
    assert_failed(one(cap, "g"), "step", boom)


def test_generator_raising_fails_span(cap: SpanCapture) -> None:
    boom = MyError("mid-iteration")

    @spangraph.step("g")
    def g() -> Iterator[int]:
        yield 1
        raise boom

    with pytest.raises(MyError) as info:
        list(g())
    assert info.value is boom
    assert_failed(one(cap, "g"), "step", boom)


def test_generator_early_close_ends_span(cap: SpanCapture) -> None:
    cleaned: list[bool] = []

    @spangraph.step("g")
    def g() -> Iterator[int]:
        try:
            yield from range(100)
        finally:
            cleaned.append(True)

    with spangraph.workflow("w"):
        for x in g():
            if x == 2:
                break
        # the loop dropped the generator: closed at once, span ended
        assert cleaned == [True]
        assert len(cap.find("g")) == 1
    assert_completed(one(cap, "g"), "step")
    assert is_child(one(cap, "g"), one(cap, "w"))


def test_blocks_in_a_generator_closed_early_end_completed(cap: SpanCapture) -> None:
    """A block held across a ``yield`` when the consumer closes the generator early ends
    ``completed``, as the decorated generator around it does: no ``exception`` event and
    no ``cancelled`` or ``failed`` event (before: ``cancelled``, and a workflow block
    recorded ``workflow.cancelled`` with ``error.type`` ``GeneratorExit``)."""

    @spangraph.workflow("decorated")
    def decorated() -> Iterator[int]:
        with spangraph.step("inner"):
            yield 1
            yield 2

    def plain() -> Iterator[int]:
        with spangraph.workflow("in-plain"):
            yield 1
            yield 2

    for make in (decorated, plain):
        it = make()
        assert next(it) == 1
        it.close()
    for name, kind in (("inner", "step"), ("decorated", "workflow"), ("in-plain", "workflow")):
        assert_completed(one(cap, name), kind)


async def test_blocks_in_an_async_generator_closed_early_end_completed(cap: SpanCapture) -> None:
    async def agen() -> AsyncIterator[int]:
        async with spangraph.step("inner"):
            yield 1
            yield 2

    it = agen()
    assert await it.__anext__() == 1
    await it.aclose()
    assert_completed(one(cap, "inner"), "step")


def test_a_coroutine_closed_while_suspended_is_cancelled(cap: SpanCapture) -> None:
    """A coroutine closed while it waits (a task collected while pending, a loop closed
    without cancelling it) gets a GeneratorExit too: its spans end cancelled, as before
    generators' blocks ended completed; only a generator's consumer stopping early is no
    failure."""

    class Suspend:
        def __await__(self) -> Iterator[None]:
            yield  # waits, as I/O would
            yield

    @spangraph.step
    async def decorated() -> None:
        await Suspend()

    async def with_a_block() -> None:
        with spangraph.step("sync-block"):
            await Suspend()

    async def with_an_async_block() -> None:
        async with spangraph.step("async-block"):
            await Suspend()

    async def suspended() -> None:
        await Suspend()

    @spangraph.step
    def returns_a_coroutine() -> Any:  # (the span covers the coroutine: it ended completed)
        return suspended()

    for make in (decorated, with_a_block, with_an_async_block, returns_a_coroutine):
        coroutine = make()
        coroutine.send(None)  # runs until it waits
        coroutine.close()
    for name in ("decorated", "sync-block", "async-block", "returns_a_coroutine"):
        span = one(cap, name)
        assert span.attributes[sc.STATE] == "cancelled", name
        assert [e.name for e in span.events] == ["step.started"], name


@pytest.mark.parametrize("make", ["step", "tool"])
async def test_a_dropped_task_of_a_function_returning_a_coroutine_is_collected(
    cap: SpanCapture, make: str
) -> None:
    """A step (or tool) on a plain function returning a coroutine, whose task waits on a
    future nobody keeps and is dropped: collected, as an ``async def`` step's is, and its
    span ends cancelled (before: the finalizer held the coroutine, which held the task,
    for good, and the span stayed open)."""
    import gc
    import weakref

    async def wait_forever() -> None:
        await asyncio.get_running_loop().create_future()  # nobody keeps or resolves it

    decorate = spangraph.step if make == "step" else spangraph.tool

    @decorate
    def returns_a_coroutine() -> Any:
        return wait_forever()

    task = asyncio.get_running_loop().create_task(returns_a_coroutine())
    await asyncio.sleep(0.01)
    ref = weakref.ref(task)
    del task
    for _ in range(3):
        gc.collect()
        await asyncio.sleep(0.01)
    assert ref() is None
    name = "returns_a_coroutine" if make == "step" else "execute_tool returns_a_coroutine"
    assert one(cap, name).attributes[sc.STATE] == "cancelled"


def test_a_coroutine_still_pending_at_exit_ends_cancelled() -> None:
    """A step on a plain function returning a coroutine, its task still pending when the
    interpreter exits: its span ends cancelled then, as before the finalizer that pinned
    the task was let go (in a child process: what the interpreter runs at exit)."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import asyncio, spangraph, weakref
        from spangraph.testing import capture

        async def wait_forever():
            await asyncio.get_running_loop().create_future()

        @spangraph.step
        def returns_a_coroutine():
            return wait_forever()

        with capture() as cap:
            loop = asyncio.new_event_loop()
            task = loop.create_task(returns_a_coroutine())
            loop.run_until_complete(asyncio.sleep(0.01))
            weakref.finalize._exitfunc()  # the finalizers the interpreter runs at exit
            print([(s.name, s.attributes["spangraph.state"]) for s in cap.spans])
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[('returns_a_coroutine', 'cancelled')]"


async def test_no_new_attempt_once_the_task_is_cancelled(cap: SpanCapture) -> None:
    """A step with retries= whose code turns the cancellation of its task (a TaskGroup's
    sibling failed) into an error of its own, as some client libraries do: no new attempt
    (before: the next attempt ran to its end, and the TaskGroup waited for it)."""

    class ClientError(Exception):
        pass

    @spangraph.step(retries=5, backoff=0.001)
    async def call() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise ClientError("request aborted") from None

    async def sibling() -> None:
        await asyncio.sleep(0.02)
        raise ValueError("sibling")

    with pytest.raises(ExceptionGroup):
        async with asyncio.TaskGroup() as group:
            group.create_task(call())
            group.create_task(sibling())
    attempts = cap.find(name="call")
    assert [s.attributes[sc.STATE] for s in attempts] == ["failed"]
    assert not cap.has_event("retry.scheduled")


@contextlib.contextmanager
def _held_step(name: str) -> Iterator[None]:
    with spangraph.step(name):
        yield


@contextlib.asynccontextmanager
async def _async_held_step(name: str) -> AsyncIterator[None]:
    async with spangraph.step(name):
        yield


def test_blocks_entered_through_contextlib_end_as_their_holder(cap: SpanCapture) -> None:
    """A block entered through an ExitStack, an AsyncExitStack, a @contextmanager or an
    @asynccontextmanager ends as if the code holding those held it: cancelled in a
    coroutine closed while suspended, completed in a generator closed early (before,
    the helper's frame decided: an AsyncExitStack is a coroutine, a @contextmanager a
    generator)."""

    class Suspend:
        def __await__(self) -> Iterator[None]:
            yield
            yield

    async def in_exit_stack() -> None:
        with contextlib.ExitStack() as stack:
            stack.enter_context(spangraph.step("c-exit-stack"))
            await Suspend()

    async def in_contextmanager() -> None:
        with _held_step("c-contextmanager"):
            await Suspend()

    async def in_asynccontextmanager() -> None:
        async with _async_held_step("c-asynccontextmanager"):
            await Suspend()

    for make in (in_exit_stack, in_contextmanager, in_asynccontextmanager):
        coroutine = make()
        coroutine.send(None)
        coroutine.close()

    async def generator_in_async_exit_stack() -> AsyncIterator[int]:
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(spangraph.step("g-async-exit-stack"))
            yield 1
            yield 2

    def generator_in_exit_stack() -> Iterator[int]:
        with contextlib.ExitStack() as stack:
            stack.enter_context(spangraph.step("g-exit-stack"))
            yield 1
            yield 2

    async def consume() -> None:
        agen = generator_in_async_exit_stack()
        assert await agen.__anext__() == 1
        await agen.aclose()
        async with contextlib.aclosing(generator_in_async_exit_stack()) as closing:
            async for _ in closing:
                break

    asyncio.run(consume())
    gen = generator_in_exit_stack()
    assert next(gen) == 1
    gen.close()
    states = {s.name: [attrs(x)[sc.STATE] for x in cap.find(s.name)] for s in cap.spans}
    assert states == {
        "c-exit-stack": ["cancelled"],
        "c-contextmanager": ["cancelled"],
        "c-asynccontextmanager": ["cancelled"],
        "g-async-exit-stack": ["completed", "completed"],
        "g-exit-stack": ["completed"],
    }


def test_generator_explicit_close(cap: SpanCapture) -> None:
    @spangraph.step("g")
    def g() -> Iterator[int]:
        yield 1
        yield 2

    it = g()
    next(it)
    it.close()
    assert_completed(one(cap, "g"), "step")
    it.close()  # idempotent
    assert len(cap.spans) == 1


def test_generator_never_started_makes_no_span(cap: SpanCapture) -> None:
    @spangraph.step("g")
    def g() -> Iterator[int]:
        yield 1

    it = g()
    it.close()
    assert cap.spans == []


def test_generator_failing_cleanup_still_ends_span(cap: SpanCapture) -> None:
    boom = RuntimeError("cleanup failed")

    @spangraph.step("g")
    def g() -> Iterator[int]:
        try:
            yield 1
        finally:
            raise boom

    it = g()
    next(it)
    with pytest.raises(RuntimeError) as info:
        it.close()
    assert info.value is boom
    assert_failed(one(cap, "g"), "step", boom)


async def test_async_generator_asend_athrow_aclose(cap: SpanCapture) -> None:
    received: list[Any] = []
    closed: list[bool] = []

    @spangraph.step("ag")
    async def ag() -> AsyncIterator[int]:
        try:
            received.append((yield 1))
            try:
                yield 2
            except KeyError as exc:
                received.append(exc)
                yield 3
            yield 4
        finally:
            closed.append(True)

    it = ag()
    assert await it.__anext__() == 1
    assert await it.asend("hi") == 2
    err = KeyError("k")
    assert await it.athrow(err) == 3
    assert cap.spans == []
    await it.aclose()
    assert received == ["hi", err]
    assert closed == [True]
    assert_completed(one(cap, "ag"), "step")


async def test_async_generator_exhausted(cap: SpanCapture) -> None:
    @spangraph.step("ag")
    async def ag() -> AsyncIterator[int]:
        yield 1

    it = ag()
    assert await it.__anext__() == 1
    with pytest.raises(StopAsyncIteration):
        await it.__anext__()
    assert_completed(one(cap, "ag"), "step")


async def test_async_generator_athrow_unhandled(cap: SpanCapture) -> None:
    @spangraph.step("ag")
    async def ag() -> AsyncIterator[int]:
        yield 1
        yield 2

    it = ag()
    await it.__anext__()
    boom = ValueError("in")
    with pytest.raises(ValueError) as info:
        await it.athrow(boom)
    assert info.value is boom
    assert_failed(one(cap, "ag"), "step", boom)


async def test_async_generator_raising(cap: SpanCapture) -> None:
    boom = MyError("agen")

    @spangraph.step("ag")
    async def ag() -> AsyncIterator[int]:
        yield 1
        raise boom

    with pytest.raises(MyError) as info:
        async for _ in ag():
            pass
    assert info.value is boom
    assert_failed(one(cap, "ag"), "step", boom)


async def test_async_generator_break_with_aclosing(cap: SpanCapture) -> None:
    @spangraph.step("ag")
    async def ag() -> AsyncIterator[int]:
        for i in range(100):
            yield i

    async with spangraph.workflow("w"):
        async with contextlib.aclosing(ag()) as it:
            async for x in it:
                if x == 3:
                    break
        assert len(cap.find("ag")) == 1
    assert_completed(one(cap, "ag"), "step")
    assert is_child(one(cap, "ag"), one(cap, "w"))


async def test_async_generator_failing_cleanup_still_ends_span(cap: SpanCapture) -> None:
    boom = RuntimeError("async cleanup failed")

    @spangraph.step("ag")
    async def ag() -> AsyncIterator[int]:
        try:
            yield 1
        finally:
            raise boom

    it = ag()
    await it.__anext__()
    with pytest.raises(RuntimeError) as info:
        await it.aclose()
    assert info.value is boom
    assert_failed(one(cap, "ag"), "step", boom)


async def test_async_generator_cancelled(cap: SpanCapture) -> None:
    @spangraph.step("ag")
    async def ag() -> AsyncIterator[int]:
        yield 1
        await asyncio.sleep(10)
        yield 2

    async def consume() -> None:
        async for _ in ag():
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert_cancelled(one(cap, "ag"))


@pytest.mark.parametrize("cleanup_awaits", [False, True])
def test_async_generator_step_suspended_at_loop_shutdown(
    cap: SpanCapture, caplog: pytest.LogCaptureFixture, cleanup_awaits: bool
) -> None:
    """``asyncio.run()`` ending while an async-generator step is suspended: the loop's
    ``shutdown_asyncgens()`` closes it without an error, its ``finally`` runs under the
    step, and the step ends (``completed``, as a generator closed early does). Before,
    the wrapper's generators were closed concurrently with the program's, and asyncio
    reported "aclose(): asynchronous generator is already running"."""
    reported: list[dict[str, Any]] = []
    keep: list[Any] = []

    @spangraph.step("ticks")
    async def ticks() -> AsyncIterator[int]:
        try:
            for i in range(10):
                yield i
        finally:
            async with spangraph.step("cleanup"):
                if cleanup_awaits:
                    await asyncio.sleep(0.001)

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(
            lambda loop, context: reported.append(context)
        )
        it = ticks()
        keep.append(it)  # still referenced: closed by the loop's shutdown, not by gc
        assert await it.__anext__() == 0

    runs = 8  # the loop closes its generators in an arbitrary order: several runs
    with caplog.at_level("ERROR", logger="asyncio"):
        for _ in range(runs):
            asyncio.run(main())
    assert reported == []
    assert [r for r in caplog.records if r.levelname == "ERROR"] == []
    steps, cleanups = cap.find("ticks"), cap.find("cleanup")
    assert len(steps) == len(cleanups) == runs
    for step in steps:
        assert attrs(step)[sc.STATE] == sc.STATE_COMPLETED
        assert step.end_time is not None
    by_id = {s.context.span_id: s for s in steps}
    for cleanup in cleanups:
        assert cleanup.parent is not None and cleanup.parent.span_id in by_id


async def test_async_generator_closed_while_the_program_generator_is_closing(
    cap: SpanCapture,
) -> None:
    """Closing a step whose program generator something else is closing already (its
    ``finally`` awaiting): no "already running" error, the step ends."""

    @spangraph.step("ag")
    async def ag() -> AsyncIterator[int]:
        try:
            yield 1
        finally:
            await asyncio.sleep(0.01)

    it = ag()
    assert await it.__anext__() == 1
    inner = it.ag_frame.f_locals["agen"]  # white box: the program's generator
    closing = asyncio.ensure_future(inner.aclose())
    await asyncio.sleep(0)  # its finally now awaits
    await it.aclose()
    await closing
    assert attrs(one(cap, "ag"))[sc.STATE] == sc.STATE_COMPLETED


# -- bad input --------------------------------------------------------------------------


def test_generator_functions_take_no_timeout_nor_retries() -> None:
    async def agen() -> Any:
        yield 1

    def gen() -> Any:
        yield 1

    with pytest.raises(TypeError, match=r"^timeout= cannot be used on an async generator "):
        spangraph.step(timeout=1)(agen)
    with pytest.raises(TypeError, match=r"^retries= cannot be used on a generator function"):
        spangraph.step(retries=1)(gen)


def test_timeout_on_sync_function_is_rejected_at_decoration() -> None:
    with pytest.raises(TypeError, match="timeout"):

        @spangraph.step(timeout=1)
        def sync() -> None:
            pass

    with pytest.raises(TypeError, match="timeout"):

        @spangraph.workflow(timeout=1)
        def sync_wf() -> None:
            pass


def test_timeout_in_sync_with_block_is_rejected() -> None:
    with pytest.raises(TypeError, match="timeout"), spangraph.step("s", timeout=1):
        pass


async def test_a_decorated_async_generator_function_is_one(cap: SpanCapture) -> None:
    """Before, the wrapper was a plain function returning an async generator: frameworks
    that look (FastAPI dependencies, pytest fixtures) and a decorator stacked above it
    took it for a plain function: the workflow span ended before the first item, and
    the step under it started a trace of its own."""
    import inspect

    @spangraph.workflow("wf")
    @spangraph.step("inner")
    async def items() -> AsyncIterator[int]:
        yield 1
        yield 2

    assert inspect.isasyncgenfunction(items)
    assert [x async for x in items()] == [1, 2]
    wf, inner = one(cap, "wf"), one(cap, "inner")
    assert_completed(wf, "workflow") and assert_completed(inner, "step")
    assert is_child(inner, wf)
    assert wf.end_time is not None and inner.end_time is not None
    assert wf.end_time >= inner.end_time  # it covers the items, not only the call


def test_a_generator_called_with_wrong_arguments_ends_its_span(cap: SpanCapture) -> None:
    @spangraph.step
    def numbers(n: int) -> Iterator[int]:
        yield from range(n)

    with pytest.raises(TypeError) as info:
        next(numbers())  # type: ignore[call-arg]
    assert_failed(one(cap, numbers.__name__), "step", info.value)  # before: never ended


async def test_an_async_generator_called_with_wrong_arguments_ends_its_span(
    cap: SpanCapture,
) -> None:
    @spangraph.step
    async def numbers(n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i

    with pytest.raises(TypeError) as info:
        await numbers().__anext__()  # type: ignore[call-arg]
    assert_failed(one(cap, numbers.__name__), "step", info.value)


@pytest.mark.parametrize("kwargs", [{"retries": 1}, {"timeout": 1}])
def test_generator_options_are_rejected(kwargs: dict[str, Any]) -> None:
    with pytest.raises(TypeError, match=next(iter(kwargs))):

        @spangraph.step(**kwargs)
        def gen() -> Iterator[int]:
            yield 1

    with pytest.raises(TypeError, match=next(iter(kwargs))):

        @spangraph.step(**kwargs)
        async def agen() -> AsyncIterator[int]:
            yield 1


def test_retries_in_with_block_is_rejected(cap: SpanCapture) -> None:
    with pytest.raises(TypeError, match="retries"), spangraph.step("s", retries=2):
        pass
    assert cap.spans == []


async def test_retries_in_async_with_block_is_rejected(cap: SpanCapture) -> None:
    with pytest.raises(TypeError, match="retries"):
        async with spangraph.step("s", retries=2):
            pass
    assert cap.spans == []


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"retries": -1}, "retries"),
        ({"retries": 1.5}, "retries"),
        ({"backoff": -0.1}, "backoff"),
        ({"backoff_max": -1}, "backoff_max"),
        ({"backoff": "1"}, "backoff"),
        ({"timeout": -1}, "timeout"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": "5"}, "timeout"),
        # NaN and infinities would fail later, inside the user's code (time.sleep, timers)
        ({"backoff": float("nan")}, "backoff"),
        ({"backoff_max": float("inf")}, "backoff_max"),
        ({"timeout": float("nan")}, "timeout"),
        ({"timeout": float("inf")}, "timeout"),
        ({"timeout": True}, "timeout"),
    ],
)
def test_bad_numbers_raise_value_error(kwargs: dict[str, Any], word: str) -> None:
    with pytest.raises(ValueError, match=word):
        spangraph.step("s", **kwargs)


def test_negative_workflow_timeout() -> None:
    with pytest.raises(ValueError, match="timeout"):
        spangraph.workflow("w", timeout=-1)


@pytest.mark.parametrize("factory", [spangraph.step, spangraph.workflow])
def test_unknown_kwarg_raises_type_error(factory: Any) -> None:
    with pytest.raises(TypeError, match="colour"):
        factory("x", colour="red")


def test_workflow_does_not_take_retries() -> None:
    with pytest.raises(TypeError, match="retries"):
        spangraph.workflow("w", retries=2)


@pytest.mark.parametrize("bad", ["", "  "])
def test_empty_names_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="name"):
        spangraph.step(bad)
    with pytest.raises(ValueError, match="name"):
        spangraph.workflow(bad)


def test_non_callable_is_rejected() -> None:
    with pytest.raises(TypeError):
        spangraph.step(42)
    with pytest.raises(TypeError):
        spangraph.step("s")(42)


def test_block_without_name_is_rejected() -> None:
    scope = spangraph.step()
    assert isinstance(scope, Scope)
    with pytest.raises(TypeError, match="name"), scope:
        pass


def test_a_generator_based_coroutine_step_is_awaited(cap: SpanCapture) -> None:
    """``@types.coroutine`` functions are awaited, not iterated (before: wrapped as a
    generator, ``await`` on the result was a TypeError)."""
    import types

    @spangraph.step
    @types.coroutine
    def legacy(x: int) -> Any:
        yield  # hands control to the event loop once, as asyncio.sleep(0) does
        return x + 1

    async def main() -> int:
        async with spangraph.workflow("wf"):
            return await legacy(4)  # type: ignore[no-any-return]

    assert asyncio.run(main()) == 5
    [step] = [s for s in cap.spans if s.name == "legacy"]
    assert step.status.status_code != StatusCode.ERROR
    assert [e.name for e in step.events] == ["step.started", "step.completed"]


@pytest.mark.parametrize("form", ["decorator", "block"])
def test_a_timeout_that_fired_is_recorded_whatever_error_comes_out(
    cap: SpanCapture, form: str
) -> None:
    """Code that turns the cancellation into its own error (as many client libraries do)
    still timed out: ``timeout.exceeded`` is recorded, and its error comes out as it is
    (before: no event, as the error was not a TimeoutError)."""

    async def body() -> None:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            raise RuntimeError("request aborted") from None

    async def main() -> None:
        if form == "decorator":
            await spangraph.step(timeout=0.05, name="slow")(body)()
        else:
            async with spangraph.step("slow", timeout=0.05):
                await body()

    with pytest.raises(RuntimeError, match="request aborted"):
        asyncio.run(main())
    [slow] = [s for s in cap.spans if s.name == "slow"]
    names = [e.name for e in slow.events]
    assert names[:3] == ["step.started", "timeout.set", "timeout.exceeded"]
    assert names[-1] == "step.failed"


def test_spans_open_at_exit_are_ended_newest_first_and_never_twice(cap: SpanCapture) -> None:
    """What spangraph's exit hook does (``_spans.end_open_spans``), with the owner of the
    blocks (a daemon thread) still running: the step ends before its workflow, both
    ``cancelled`` by ProgramExited; when the owner's blocks exit later, nothing is ended
    again or raised. A thread that is not a daemon and still works keeps its blocks."""
    import threading

    from spangraph import _spans
    from spangraph.exceptions import ProgramExited

    entered, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def owner() -> None:
        try:
            with spangraph.workflow("open-at-exit"), spangraph.step("inside"):
                entered.set()
                release.wait(10)
        except BaseException as exc:  # pragma: no cover - the failure asserted below
            errors.append(exc)

    working = threading.Event()

    def worker() -> None:  # not a daemon, still working: its block is its own to end
        with spangraph.workflow("still-working"):
            working.set()
            release.wait(10)

    thread = threading.Thread(target=owner, daemon=True)
    thread.start()
    other = threading.Thread(target=worker)
    other.start()
    assert entered.wait(10) and working.wait(10)
    with spangraph.workflow("done-before"):
        pass
    assert _spans.end_open_spans() == 2
    assert [s.name for s in cap.spans] == ["done-before", "inside", "open-at-exit"]
    step, run = cap.spans[1:]
    assert attrs(step)[sc.STATE] == attrs(run)[sc.STATE] == sc.STATE_CANCELLED
    assert names(run) == [sc.WORKFLOW_STARTED, sc.WORKFLOW_CANCELLED]
    assert event(run, sc.WORKFLOW_CANCELLED)[sc.ERROR_TYPE] == (
        "spangraph.exceptions.ProgramExited"
    )
    assert issubclass(ProgramExited, BaseException) and not issubclass(ProgramExited, Exception)
    release.set()
    thread.join(10)
    other.join(10)
    assert errors == []
    # the owner's exits ended nothing again; the worker's run ended as its code did
    assert [s.name for s in cap.spans] == [
        "done-before", "inside", "open-at-exit", "still-working",
    ]  # fmt: skip
    assert attrs(cap.spans[3])[sc.STATE] == sc.STATE_COMPLETED
    assert _spans.end_open_spans() == 0


def test_a_dropped_task_of_a_step_with_a_timeout_is_collected_and_ends(
    cap: SpanCapture,
) -> None:
    """The record of open spans kept for the exit held each block: a task dropped while
    it waited, whose step's timeout holds the task, lived (unended) until the exit."""
    import gc

    from spangraph import _spans

    @spangraph.step(timeout=60)
    async def waits() -> None:
        await asyncio.sleep(100)

    async def start() -> None:
        for _ in range(20):
            asyncio.get_running_loop().create_task(waits())
        await asyncio.sleep(0.05)

    loop = asyncio.new_event_loop()
    loop.run_until_complete(start())
    assert len(_spans._open) >= 20
    del loop
    gc.collect()
    assert [s.name for s in cap.spans].count("waits") == 20  # ended by their close
    assert not [f for f in list(_spans._open) if f.handle.name == "waits"]
