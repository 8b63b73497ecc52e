"""What a type checker sees of spangraph's public API: checked by tests/test_typing.py
with ``mypy --strict`` (``assert_type`` fails the check when a type is not the one
named). Type-checked only, never run."""

from __future__ import annotations

from collections.abc import AsyncIterator, Coroutine, Iterator
from decimal import Decimal
from typing import Any, assert_type

import spangraph
from spangraph.branching import Branch, Decision
from spangraph.genai import LLMCall, ToolCall
from spangraph.instrument import Handle, WorkflowRun


@spangraph.workflow
def plain(x: int, y: str = "a") -> list[str]:
    return [y] * x


@spangraph.workflow("named", workflow_id="job-1")
def named(x: int) -> int:
    return x


@spangraph.step(retries=2, backoff=0.5, retry_on=(TimeoutError, OSError), timeout=3.0)
async def fetch(url: str) -> bytes:
    return url.encode()


@spangraph.step
def numbers(n: int) -> Iterator[int]:
    yield n


@spangraph.step("stream")
async def stream(n: int) -> AsyncIterator[int]:
    yield n


@spangraph.tool
def search(query: str) -> dict[str, int]:
    return {query: 1}


@spangraph.tool("lookup")
async def lookup(query: str) -> int:
    return len(query)


def _lookup_price(item: str) -> float:
    return 1.0


priced = spangraph.tool(_lookup_price, attributes={"team": "pricing"})
retried_price = spangraph.step(_lookup_price, retries=2)  # a function and options at once
run_price = spangraph.workflow(_lookup_price, name="pricing", workflow_id="job-2")


@spangraph.step(name="by-keyword", retries=1)
def by_keyword(n: int) -> str:
    return str(n)


class Agent:
    @spangraph.step
    def act(self, goal: str) -> bool:
        return bool(goal)

    @spangraph.step
    @staticmethod
    def parse(text: str) -> list[str]:
        return text.split()


def decorated() -> None:
    # the decorators keep each function's signature and result
    assert_type(plain(1), list[str])
    assert_type(named(2), int)
    fetching = fetch("u")
    _ = assert_type(fetching, Coroutine[Any, Any, bytes])
    fetching.close()
    assert_type(numbers(3), Iterator[int])
    assert_type(stream(3), AsyncIterator[int])
    assert_type(search("q"), dict[str, int])
    assert_type(priced("apple"), float)
    assert_type(retried_price("apple"), float)
    assert_type(run_price("apple"), float)
    assert_type(by_keyword(1), str)
    looking = lookup("q")
    _ = assert_type(looking, Coroutine[Any, Any, int])
    looking.close()
    assert_type(Agent().act("g"), bool)
    assert_type(Agent.parse("a b"), list[str])


async def blocks() -> None:
    # each block gives its own handle type
    assert_type(await fetch("u"), bytes)
    async with spangraph.workflow("w", attributes={"tenant": "t1"}) as run:
        assert_type(run, WorkflowRun)
        run.paused(reason="waiting for approval")
        run.resumed()
        assert_type(run.workflow_id, str | None)
        assert_type(run.ref, str)
        async with spangraph.step("s", timeout=1.0) as step:
            assert_type(step, Handle)
            step.event("progress", done=1)
            step.set(rows=3)
    with spangraph.decision("route", options=["a", "b"]) as decision:
        assert_type(decision, Decision)
        with decision.option("a") as option:
            assert_type(option, Handle)
        decision.choose("a", reason="cheaper", score=0.9)
        decision.choose("b", score=Decimal("0.75"))  # any real number
    with spangraph.branch("b") as branch:
        assert_type(branch, Branch)
        with spangraph.monitor(branch) as watcher:
            assert_type(watcher, Handle)
        with spangraph.monitor(branch.ref, "by-ref"):
            pass
    with spangraph.workflow(name="keyword-named", resumed_from=run.ref) as again:
        assert_type(again, WorkflowRun)
    with spangraph.llm("gpt-4o", provider="openai") as call:
        assert_type(call, LLMCall)
        call.token("Hel")
        call.usage(input_tokens=3, output_tokens=1)
        call.complete("Hello")
    with spangraph.tool("search", arguments={"q": "x"}) as tool_call:
        assert_type(tool_call, ToolCall)
        tool_call.respond(["result"])
    assert_type(spangraph.event("checkpoint", rows=1), bool)
    spangraph.sleep(0.1, reason="rate limit")
    await spangraph.asleep(0.1)


def setup() -> None:
    from spangraph.instrumentation.openai import OpenAIInstrumentor

    OpenAIInstrumentor().instrument(capture_content=False)
    OpenAIInstrumentor().uninstrument()
    assert_type(spangraph.configure(project="p", offload=True), spangraph.Spangraph)
    assert_type(spangraph.flush(timeout=5.0), bool)
    spangraph.shutdown()
    with spangraph.testing.capture() as captured:
        assert_type(captured.has_event("step.started"), bool)
