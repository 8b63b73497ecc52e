"""Steps under trio (directly and through anyio): ``timeout=``, ``retries=``, ``asleep``
and cancellation work as they do under asyncio. Before, each of the first three raised
``RuntimeError: no running event loop`` (asyncio's timeout and sleep), and a trio
cancellation ended its spans ``failed``."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import anyio
import pytest
import trio
from opentelemetry.sdk.trace import ReadableSpan

import spangraph
from spangraph import semconv as sc
from spangraph._aio import is_cancellation
from spangraph.testing import SpanCapture, capture


def one(cap: SpanCapture, name: str) -> ReadableSpan:
    [span] = cap.find(name)
    return span


def names(span: ReadableSpan) -> list[str]:
    return [e.name for e in span.events]


def state(span: ReadableSpan) -> Any:
    return (span.attributes or {})[sc.STATE]


def test_timeout_under_trio() -> None:
    @spangraph.step(timeout=0.05)
    async def slow() -> None:
        await trio.sleep(5)

    @spangraph.step(timeout=5)
    async def quick() -> int:
        await trio.sleep(0)
        return 1

    async def main() -> None:
        with pytest.raises(TimeoutError):
            await slow()
        assert await quick() == 1
        with pytest.raises(TimeoutError):
            async with spangraph.step("blk", timeout=0.05):
                await trio.sleep(5)

    with capture() as cap:
        trio.run(main)
    for name in ("slow", "blk"):
        span = one(cap, name)
        assert names(span) == [
            "step.started", "timeout.set", "timeout.exceeded", "exception", "step.failed",
        ]  # fmt: skip
        assert state(span) == sc.STATE_FAILED
    assert names(one(cap, "quick")) == ["step.started", "timeout.set", "step.completed"]


def test_a_timeout_whose_own_exit_fails_still_ends_the_step() -> None:
    """A cancel scope left open inside the block (a fault of the block's code) makes
    trio refuse the step's own timeout scope at its exit: the step ends failed all the
    same (before: the span was never ended)."""
    raised: list[BaseException] = []

    async def main() -> None:
        try:
            async with spangraph.step("blk", timeout=5):
                trio.CancelScope().__enter__()  # left open
        except BaseException as exc:  # (what trio raises for it)
            raised.append(exc)

    # (suppressed: trio's own complaint at its end)
    with capture() as cap, contextlib.suppress(BaseException):
        trio.run(main)
    assert raised, "trio accepted the corrupted cancel scope stack"
    span = one(cap, "blk")
    assert state(span) == sc.STATE_FAILED
    assert names(span)[-1] == "step.failed"


def test_retries_and_asleep_under_trio() -> None:
    calls = []

    @spangraph.step(retries=1, backoff=0.01)
    async def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("first time")
        return "ok"

    @spangraph.step(retries=1, backoff=0.01)
    async def always() -> None:
        raise ValueError("every time")

    async def main() -> None:
        assert await flaky() == "ok"
        with pytest.raises(ValueError, match="every time"):  # its own error, not the loop's
            await always()
        async with spangraph.step("sleeper"):
            await spangraph.asleep(0.01, reason="rate limit")

    with capture() as cap:
        trio.run(main)
    assert [state(s) for s in cap.find("flaky")] == [sc.STATE_FAILED, sc.STATE_COMPLETED]
    assert cap.has_event(sc.RETRY_SCHEDULED) and cap.has_event(sc.RETRY_EXHAUSTED)
    sleeper = one(cap, "sleeper")
    assert names(sleeper) == ["step.started", "sleep.started", "sleep.completed", "step.completed"]


def test_trio_cancellation_ends_spans_cancelled() -> None:
    @spangraph.step
    async def long_step() -> None:
        await trio.sleep(5)

    @spangraph.step
    async def fails() -> None:
        await trio.sleep(0.01)
        raise ValueError("boom")

    async def main() -> None:
        with trio.move_on_after(0.05):
            async with spangraph.workflow("wf"):
                await long_step()
        with pytest.raises(ExceptionGroup):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(long_step)
                nursery.start_soon(fails)

    with capture() as cap:
        trio.run(main)
    assert state(one(cap, "wf")) == sc.STATE_CANCELLED
    assert cap.has_event(sc.WORKFLOW_CANCELLED)
    assert sorted(state(s) for s in cap.find("long_step")) == [sc.STATE_CANCELLED] * 2
    assert state(one(cap, "fails")) == sc.STATE_FAILED


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_through_anyio(backend: str) -> None:
    @spangraph.step(timeout=0.05, retries=1, backoff=0.01)
    async def slow() -> None:
        await anyio.sleep(5)

    async def main() -> None:
        with pytest.raises(TimeoutError):
            await slow()
        await spangraph.asleep(0)
        with anyio.move_on_after(0.05):
            async with spangraph.step("moved-on"):
                await anyio.sleep(5)

    with capture() as cap:
        anyio.run(main, backend=backend)
    assert [state(s) for s in cap.find("slow")] == [sc.STATE_FAILED] * 2
    assert state(one(cap, "moved-on")) == sc.STATE_CANCELLED


def test_is_cancellation() -> None:
    assert is_cancellation(asyncio.CancelledError()) and is_cancellation(KeyboardInterrupt())
    assert not is_cancellation(ValueError()) and not is_cancellation(None)

    async def cancelled() -> BaseException:
        with trio.CancelScope() as scope:
            scope.cancel()
            try:
                await trio.sleep(1)
            except trio.Cancelled as exc:
                return exc
        raise AssertionError("not cancelled")

    assert is_cancellation(trio.run(cancelled))
