"""Context propagation: generators, async generators, asyncio tasks and threads see the
right current span and run ids, and nothing leaks out of a scope, even on errors."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import AsyncIterator, Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import Span

import spangraph
from spangraph import _state
from spangraph import semconv as sc
from spangraph.instrument import current_run
from spangraph.testing import SpanCapture, capture


@pytest.fixture(scope="module", autouse=True)
def _instrument_threads() -> None:
    from opentelemetry.instrumentation.threading import ThreadingInstrumentor

    instrumentor = ThreadingInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument()


@pytest.fixture
def cap() -> Iterator[SpanCapture]:
    with capture() as c:
        yield c


def sid(span: Span | ReadableSpan) -> int:
    ctx = span.get_span_context() if isinstance(span, Span) else span.context
    assert ctx is not None
    return ctx.span_id


def current_id() -> int:
    return trace.get_current_span().get_span_context().span_id


def one(cap: SpanCapture, name: str) -> ReadableSpan:
    found = cap.find(name)
    assert len(found) == 1, [s.name for s in cap.spans]
    return found[0]


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


# -- generators ---------------------------------------------------------------------------


def test_generator_context_inside_and_between_next_calls(cap: SpanCapture) -> None:
    seen: dict[str, list[int]] = {"a": [], "b": []}
    runs: list[str | None] = []

    @spangraph.step
    def gen(tag: str) -> Iterator[int]:
        for i in range(3):
            seen[tag].append(current_id())
            run = current_run()
            runs.append(run.workflow_id if run else None)
            yield i
        seen[tag].append(current_id())

    with spangraph.workflow("w") as run:
        outer = current_id()
        a, b = gen("a"), gen("b")
        assert current_id() == outer
        # interleave the two generators; after every next() the consumer's span is back
        for _ in range(3):
            next(a)
            assert current_id() == outer
            next(b)
            assert current_id() == outer
        for it in (a, b):
            with pytest.raises(StopIteration):
                next(it)
            assert current_id() == outer
    assert current_id() == 0  # nothing left attached after the workflow

    steps = cap.find(gen.__name__)
    assert len(steps) == 2
    ids = {sid(s) for s in steps}
    # every next() of a generator ran under that generator's own span
    assert len(set(seen["a"])) == 1 and len(set(seen["b"])) == 1
    assert {seen["a"][0], seen["b"][0]} == ids
    assert seen["a"][0] != seen["b"][0]
    assert all(parent_id(s) == sid(one(cap, "w")) for s in steps)
    assert runs == [run.workflow_id] * 6


def test_generator_consumed_by_another_step(cap: SpanCapture) -> None:
    inside: list[int] = []

    @spangraph.step("produce")
    def produce() -> Iterator[int]:
        for i in range(2):
            inside.append(current_id())
            yield i

    with spangraph.workflow("w"):
        it = produce()  # created in the workflow ...
        with spangraph.step("consume"):
            consumer = current_id()
            for _ in it:  # ... first iterated in another step: its parent is that step
                assert current_id() == consumer
    produce_span = one(cap, "produce")
    assert parent_id(produce_span) == sid(one(cap, "consume"))
    assert set(inside) == {sid(produce_span)}


def test_context_restored_after_send_and_throw(cap: SpanCapture) -> None:
    inside: list[int] = []

    @spangraph.step("g")
    def g() -> Iterator[int]:
        while True:
            try:
                inside.append(current_id())
                yield 1
            except KeyError:
                inside.append(current_id())

    with spangraph.workflow("w"):
        outer = current_id()
        it = g()
        next(it)
        assert current_id() == outer
        it.send("x")
        assert current_id() == outer
        it.throw(KeyError("k"))
        assert current_id() == outer
        it.close()
        assert current_id() == outer
    assert set(inside) == {sid(one(cap, "g"))}


def parents(cap: SpanCapture) -> dict[str, str | None]:
    """Each span's name with its parent's name (the names are unique in these tests)."""
    by_id = {sid(s): s.name for s in cap.spans}
    return {s.name: by_id.get(parent_id(s) or 0) for s in cap.spans}


def test_generator_keeps_the_blocks_it_holds_across_yields(cap: SpanCapture) -> None:
    """A block a decorated generator opens and holds across a ``yield`` (a step, a branch,
    a plain OpenTelemetry span) is still current when it resumes, on ``next()``,
    ``send()``, ``throw()`` and ``close()``, as in an undecorated generator; between
    resumptions the consumer sees its own span. Before, every resumption started again
    from the step's span: the spans made after a yield had the step as parent."""
    tracer = _state.tracer  # the capture's: a plain OpenTelemetry span from it

    @spangraph.step("g")
    def g() -> Iterator[int]:
        with spangraph.step("inner"):
            yield 1
            with spangraph.step("after-next"):
                pass
            with spangraph.branch("br"):
                got = yield 2
                with spangraph.step(f"after-send-{got}"):
                    pass
                with tracer.start_as_current_span("otel"):
                    try:
                        yield 3
                    except KeyError:
                        with spangraph.step("after-throw"):
                            pass
                    yield 4
        with spangraph.step("direct"):
            pass
        yield 5
        with spangraph.step("h"):
            try:
                yield 6
            finally:
                with spangraph.step("on-close"):
                    pass

    with spangraph.workflow("w"):
        outer = current_id()
        it = g()
        assert next(it) == 1
        assert current_id() == outer
        assert next(it) == 2
        assert current_id() == outer
        assert it.send("x") == 3
        assert current_id() == outer
        assert it.throw(KeyError("k")) == 4
        assert current_id() == outer
        assert next(it) == 5
        assert current_id() == outer
        assert next(it) == 6
        assert current_id() == outer
        it.close()
        assert current_id() == outer
    assert current_id() == 0
    assert parents(cap) == {
        "w": None,
        "g": "w",
        "inner": "g",
        "after-next": "inner",
        "br": "inner",
        "after-send-x": "br",
        "otel": "br",
        "after-throw": "otel",
        "direct": "g",
        "h": "g",
        "on-close": "h",
    }
    assert (
        one(cap, "after-send-x").attributes[sc.BRANCH_ID] == one(cap, "br").attributes[sc.BRANCH_ID]
    )
    assert one(cap, "g").attributes[sc.STATE] == sc.STATE_COMPLETED


async def test_async_generator_context(cap: SpanCapture) -> None:
    seen: dict[str, list[int]] = {"a": [], "b": []}

    @spangraph.step
    async def agen(tag: str) -> AsyncIterator[int]:
        for i in range(3):
            seen[tag].append(current_id())
            await asyncio.sleep(0)
            seen[tag].append(current_id())
            yield i

    async with spangraph.workflow("w") as run:
        outer = current_id()
        a, b = agen("a"), agen("b")
        for _ in range(3):
            await a.__anext__()
            assert current_id() == outer
            assert current_run() is not None and current_run().workflow_id == run.workflow_id
            await b.__anext__()
            assert current_id() == outer
        await a.aclose()
        assert current_id() == outer
        await b.aclose()
        assert current_id() == outer
    steps = cap.find(agen.__name__)
    assert len(steps) == 2
    assert len(set(seen["a"])) == 1 and len(set(seen["b"])) == 1
    assert {seen["a"][0], seen["b"][0]} == {sid(s) for s in steps}
    assert all(parent_id(s) == sid(one(cap, "w")) for s in steps)
    assert {s.attributes[sc.WORKFLOW_ID] for s in steps} == {run.workflow_id}


async def test_async_generator_consumed_from_two_tasks(cap: SpanCapture) -> None:
    @spangraph.step("ag")
    async def ag() -> AsyncIterator[int]:
        for i in range(4):
            await asyncio.sleep(0)
            yield i

    async with spangraph.workflow("w"):
        it = ag()
        outer = current_id()

        async def pull() -> int:
            value = await it.__anext__()
            assert current_id() == outer
            return value

        assert await asyncio.create_task(pull()) == 0
        assert await asyncio.create_task(pull()) == 1
        assert current_id() == outer
        await it.aclose()
    assert one(cap, "ag").attributes[sc.STATE] == sc.STATE_COMPLETED


async def test_async_generator_keeps_the_blocks_it_holds_across_yields(
    cap: SpanCapture,
) -> None:
    """The async counterpart of the test above: ``anext()``, ``asend()``, ``athrow()``
    and ``aclose()``, with ``await`` inside the blocks."""
    tracer = _state.tracer  # the capture's: a plain OpenTelemetry span from it

    @spangraph.step("ag")
    async def ag() -> AsyncIterator[int]:
        async with spangraph.step("inner"):
            yield 1
            await asyncio.sleep(0)
            with spangraph.step("after-next"):
                pass
            async with spangraph.branch("br"):
                got = yield 2
                async with spangraph.step(f"after-send-{got}"):
                    await asyncio.sleep(0)
                with tracer.start_as_current_span("otel"):
                    try:
                        yield 3
                    except KeyError:
                        async with spangraph.step("after-throw"):
                            await asyncio.sleep(0)
                    yield 4
        with spangraph.step("direct"):
            pass
        yield 5
        async with spangraph.step("h"):
            try:
                yield 6
            finally:
                await asyncio.sleep(0)
                async with spangraph.step("on-close"):
                    await asyncio.sleep(0)

    async with spangraph.workflow("w"):
        outer = current_id()
        it = ag()
        assert await it.__anext__() == 1
        assert current_id() == outer
        assert await it.__anext__() == 2
        assert current_id() == outer
        assert await it.asend("x") == 3
        assert current_id() == outer
        assert await it.athrow(KeyError("k")) == 4
        assert current_id() == outer
        assert await it.__anext__() == 5
        assert current_id() == outer
        assert await it.__anext__() == 6
        assert current_id() == outer
        await it.aclose()
        assert current_id() == outer
    assert current_id() == 0
    assert parents(cap) == {
        "w": None,
        "ag": "w",
        "inner": "ag",
        "after-next": "inner",
        "br": "inner",
        "after-send-x": "br",
        "otel": "br",
        "after-throw": "otel",
        "direct": "ag",
        "h": "ag",
        "on-close": "h",
    }
    assert one(cap, "ag").attributes[sc.STATE] == sc.STATE_COMPLETED


# -- asyncio tasks -----------------------------------------------------------------------


async def test_gather_and_create_task_children(cap: SpanCapture) -> None:
    @spangraph.step
    async def child(i: int) -> int:
        await asyncio.sleep(0.001 * (3 - i))
        return current_id()

    async with spangraph.workflow("w") as run:
        with spangraph.step("fan-out"):
            gathered = await asyncio.gather(*(child(i) for i in range(3)))
        task = asyncio.create_task(child(9))
        created = await task
    wf, fan = one(cap, "w"), one(cap, "fan-out")
    children = cap.find(child.__name__)
    assert len(children) == 4
    by_id = {sid(s): s for s in children}
    assert set(gathered) | {created} == set(by_id)
    for i in gathered:
        assert parent_id(by_id[i]) == sid(fan)
    assert parent_id(by_id[created]) == sid(wf)
    assert {s.attributes[sc.WORKFLOW_ID] for s in children} == {run.workflow_id}


async def test_tasks_created_inside_step_do_not_leak_into_caller(cap: SpanCapture) -> None:
    async with spangraph.workflow("w"):
        outer = current_id()

        async def work() -> None:
            async with spangraph.step("s"):
                await asyncio.sleep(0.001)

        await asyncio.gather(work(), work())
        assert current_id() == outer


async def test_shared_scope_object_in_concurrent_tasks(cap: SpanCapture) -> None:
    """One Scope object opened in several tasks at once closes each task's own span."""
    shared = spangraph.step("shared")

    async def use(tag: str, delay: float) -> None:
        async with shared as handle:
            handle.set(tag=tag)
            await asyncio.sleep(delay)
            assert trace.get_current_span() is handle.span

    async with spangraph.workflow("w"):
        outer = current_id()
        # the first to enter is the first to leave: not LIFO on the shared object
        await asyncio.gather(use("short", 0.01), use("long", 0.04))
        assert current_id() == outer
    spans = {s.attributes["tag"]: s for s in cap.find("shared")}
    assert set(spans) == {"short", "long"}
    short, long = spans["short"], spans["long"]
    assert (short.end_time - short.start_time) < (long.end_time - long.start_time)
    assert (long.end_time - long.start_time) >= 35_000_000


def test_shared_scope_object_in_threads(cap: SpanCapture) -> None:
    shared = spangraph.step("shared")
    entered = threading.Barrier(2)
    first_done = threading.Event()
    order: list[str] = []

    def first() -> None:
        with shared as h:
            h.set(tag="first")
            entered.wait(5)
            order.append("first")
        first_done.set()

    def second() -> None:
        with shared as h:
            h.set(tag="second")
            entered.wait(5)
            first_done.wait(5)
            assert trace.get_current_span() is h.span
            order.append("second")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert order == ["first", "second"]
    spans = {s.attributes["tag"]: s for s in cap.find("shared")}
    assert spans["first"].end_time < spans["second"].end_time
    assert all(s.attributes[sc.STATE] == sc.STATE_COMPLETED for s in spans.values())


# -- threads -----------------------------------------------------------------------------


def test_thread_children_have_the_right_parent(cap: SpanCapture) -> None:
    @spangraph.step
    def in_thread(i: int) -> str | None:
        run = current_run()
        return run.workflow_id if run else None

    results: list[str | None] = []
    with spangraph.workflow("w") as run, spangraph.step("spawn"):
        t = threading.Thread(target=lambda: results.append(in_thread(1)))
        t.start()
        t.join(10)
    assert results == [run.workflow_id]
    child = one(cap, in_thread.__name__)
    assert parent_id(child) == sid(one(cap, "spawn"))
    assert child.attributes[sc.WORKFLOW_ID] == run.workflow_id
    assert child.context.trace_id == one(cap, "w").context.trace_id


def test_thread_pool_children_have_the_right_parent(cap: SpanCapture) -> None:
    @spangraph.step
    def task(i: int) -> int:
        return i * i

    with (
        spangraph.workflow("w", workflow_id="pool-run") as run,
        concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool,
    ):
        squares = list(pool.map(task, range(6)))
        with spangraph.step("inner"):
            submitted = pool.submit(task, 7).result()
    assert squares == [0, 1, 4, 9, 16, 25]
    assert submitted == 49
    children = cap.find(task.__name__)
    assert len(children) == 7
    wf, inner = one(cap, "w"), one(cap, "inner")
    parents = sorted(parent_id(c) for c in children)
    assert parents.count(sid(wf)) == 6
    assert parents.count(sid(inner)) == 1
    assert {c.attributes[sc.WORKFLOW_ID] for c in children} == {"pool-run"}
    assert run.workflow_id == "pool-run"


def test_thread_started_outside_workflow_has_no_run(cap: SpanCapture) -> None:
    with spangraph.workflow("w"):
        pass
    out: list[object] = []
    t = threading.Thread(target=lambda: out.append((current_run(), current_id())))
    t.start()
    t.join(10)
    assert out == [(None, 0)]


# -- no leaks after exceptions ----------------------------------------------------------


def test_no_leak_after_failing_sync_step(cap: SpanCapture) -> None:
    @spangraph.step
    def bad() -> None:
        raise ValueError("x")

    with spangraph.workflow("w") as run:
        outer = current_id()
        with pytest.raises(ValueError):
            bad()
        assert current_id() == outer
        with pytest.raises(ValueError), spangraph.step("blk"):
            raise ValueError("y")
        assert current_id() == outer
        assert current_run() is not None and current_run().workflow_id == run.workflow_id
    assert current_id() == 0
    assert current_run() is None


def test_no_leak_after_failing_retried_step(cap: SpanCapture) -> None:
    @spangraph.step(retries=2, backoff=0)
    def bad() -> None:
        raise ValueError("x")

    with spangraph.workflow("w"):
        outer = current_id()
        with pytest.raises(ValueError):
            bad()
        assert current_id() == outer


def test_no_leak_after_failing_generator(cap: SpanCapture) -> None:
    @spangraph.step
    def bad() -> Iterator[int]:
        yield 1
        raise ValueError("x")

    with spangraph.workflow("w"):
        outer = current_id()
        with pytest.raises(ValueError):
            list(bad())
        assert current_id() == outer


async def test_no_leak_after_failing_async_code(cap: SpanCapture) -> None:
    @spangraph.step
    async def bad() -> None:
        await asyncio.sleep(0)
        raise ValueError("x")

    @spangraph.step
    async def bad_gen() -> AsyncIterator[int]:
        yield 1
        raise ValueError("x")

    @spangraph.step(timeout=0.01)
    async def slow() -> None:
        await asyncio.sleep(5)

    async with spangraph.workflow("w"):
        outer = current_id()
        with pytest.raises(ValueError):
            await bad()
        assert current_id() == outer
        with pytest.raises(ValueError):
            async for _ in bad_gen():
                pass
        assert current_id() == outer
        with pytest.raises(TimeoutError):
            await slow()
        assert current_id() == outer
        with pytest.raises(TimeoutError):
            async with spangraph.step("blk", timeout=0.01):
                await asyncio.sleep(5)
        assert current_id() == outer
    assert current_id() == 0


def test_no_leak_after_keyboard_interrupt(cap: SpanCapture) -> None:
    with spangraph.workflow("w"):
        outer = current_id()
        with pytest.raises(KeyboardInterrupt), spangraph.step("s"):
            raise KeyboardInterrupt
        assert current_id() == outer
    assert current_id() == 0


def _parent_name(cap: SpanCapture, span: ReadableSpan) -> str | None:
    by_id = {s.context.span_id: s.name for s in cap.spans}
    return by_id.get(span.parent.span_id) if span.parent is not None else None


def test_a_generator_resumed_in_another_thread_closes_its_blocks_there(
    cap: SpanCapture, caplog: pytest.LogCaptureFixture
) -> None:
    """A block held across a yield and closed after the generator moved to another
    thread could not detach (its token was made in the first thread's context): the
    ended block stayed current, the next one became its child, and OpenTelemetry logged
    "Failed to detach context"."""

    @spangraph.step
    def pages() -> Iterator[int]:
        with spangraph.step("inner"):
            yield 1
        with spangraph.step("after"):
            yield 2

    with spangraph.workflow("wf"):
        g = pages()
        assert next(g) == 1
        rest: list[int] = []
        thread = threading.Thread(target=lambda: rest.extend(g))
        thread.start()
        thread.join()
        assert trace.get_current_span().name == "wf"  # (this thread's context as it was)
    assert rest == [2]
    [after] = cap.find("after")
    assert _parent_name(cap, after) == "pages"
    assert "Failed to detach context" not in caplog.text


async def test_an_async_generator_resumed_in_another_task_closes_its_blocks_there(
    cap: SpanCapture, caplog: pytest.LogCaptureFixture
) -> None:
    @spangraph.step
    async def pages() -> AsyncIterator[int]:
        async with spangraph.step("inner"):
            yield 1
        async with spangraph.step("after"):
            yield 2

    async with spangraph.workflow("wf"):
        g = pages()
        assert await anext(g) == 1

        async def rest() -> list[int]:
            return [x async for x in g]

        assert await asyncio.create_task(rest()) == [2]
    [after] = cap.find("after")
    assert _parent_name(cap, after) == "pages"
    assert "Failed to detach context" not in caplog.text


def test_a_plain_generator_finished_in_another_run_leaves_that_run_current(
    cap: SpanCapture,
) -> None:
    """A generator that is not a step holds a block across a yield; it is finished in
    another thread, inside that thread's own run: the block ends there, and that run
    stays current (the first version of the fix put the first thread's context there,
    filing the rest of run B under run A)."""

    def pages() -> Iterator[int]:
        with spangraph.step("inner"):
            yield 1
        yield 2

    with spangraph.workflow("run-A"):
        g = pages()
        assert next(g) == 1
    seen: list[str] = []

    def other() -> None:
        with spangraph.workflow("run-B"):
            assert next(g) == 2  # closes "inner" here
            seen.append(trace.get_current_span().name)  # type: ignore[attr-defined]
            with spangraph.step("b-step"):
                pass

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert seen == ["run-B"]
    [b_step] = cap.find("b-step")
    assert _parent_name(cap, b_step) == "run-B"
