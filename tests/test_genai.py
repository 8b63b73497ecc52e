"""llm() and tool(): GenAI span attributes, live-only tokens (to a real Redis subscriber)
and the complete message kept once in the graph, tool calls as decorator and block."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import json
import operator
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

import spangraph
from spangraph import genai, queries
from spangraph import semconv as sc
from spangraph.genai import LLMCall, ToolCall
from spangraph.processors.live import workflow_channel
from spangraph.testing import SpanCapture, capture


@pytest.fixture
def cap() -> Iterator[SpanCapture]:
    with capture() as c:
        yield c


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def one(cap: SpanCapture, name: str) -> ReadableSpan:
    found = cap.find(name)
    assert len(found) == 1, [s.name for s in cap.spans]
    return found[0]


def events(span: ReadableSpan, name: str | None = None) -> list[dict[str, Any]]:
    return [dict(e.attributes or {}) for e in span.events if name is None or e.name == name]


def event_names(span: ReadableSpan) -> list[str]:
    return [e.name for e in span.events]


class Subscriber:
    """A real Pub/Sub subscriber on one workflow's channel, confirmed on creation."""

    def __init__(self, client: redis.Redis, workflow_id: str) -> None:
        self.pubsub = client.pubsub()
        self.pubsub.subscribe(workflow_channel(workflow_id))
        deadline = time.monotonic() + 5
        while True:
            assert time.monotonic() < deadline, "subscription not confirmed"
            message = self.pubsub.get_message(timeout=1)
            if message and message["type"] == "subscribe":
                break
        self.messages: list[dict[str, Any]] = []

    def until(self, done: Any, timeout: float = 10) -> list[dict[str, Any]]:
        """Read messages until one satisfies ``done``; all messages read so far."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = self.pubsub.get_message(timeout=0.1)
            if not message or message["type"] != "message":
                continue
            data = json.loads(message["data"])
            self.messages.append(data)
            if done(data):
                return self.messages
        raise AssertionError(f"timed out; got {[m['type'] for m in self.messages]}")

    def until_workflow_ended(self) -> list[dict[str, Any]]:
        return self.until(lambda m: m["type"] == "span.ended" and m["kind"] == "workflow")

    def close(self) -> None:
        self.pubsub.close()


@pytest.fixture
def subscribe(redis_client: redis.Redis) -> Iterator[Any]:
    made: list[Subscriber] = []

    def make(workflow_id: str) -> Subscriber:
        sub = Subscriber(redis_client, workflow_id)
        made.append(sub)
        return sub

    yield make
    for sub in made:
        sub.close()


def graph_events(sg: spangraph.Spangraph, span_id: str) -> list[dict[str, Any]]:
    assert sg.store is not None
    rows = sg.store.query(
        "MATCH (s:Span {span_id: $id})-[:HAS_EVENT]->(e:Event) "
        "RETURN e.name AS name, e.seq AS seq, e.attributes AS attributes ORDER BY e.seq",
        {"id": span_id},
    )
    return [{**r, "attributes": json.loads(r["attributes"])} for r in rows]


# -- llm: spans -------------------------------------------------------------------------


def test_llm_span_attributes_and_usage(cap: SpanCapture) -> None:
    with spangraph.workflow("wf") as run, spangraph.llm("gpt-4o", provider="openai") as call:
        assert isinstance(call, LLMCall)
        call.usage(input_tokens=12, output_tokens=34)
        call.complete("hello", finish_reason="stop")
    span = one(cap, "chat gpt-4o")
    a = attrs(span)
    assert a[sc.KIND] == sc.KIND_LLM
    assert a[sc.GEN_AI_OPERATION_NAME] == "chat"
    assert a[sc.GEN_AI_REQUEST_MODEL] == "gpt-4o"
    assert a[sc.GEN_AI_PROVIDER_NAME] == "openai"
    assert a[sc.GEN_AI_USAGE_INPUT_TOKENS] == 12
    assert a[sc.GEN_AI_USAGE_OUTPUT_TOKENS] == 34
    assert a["gen_ai.response.finish_reasons"] == ("stop",)
    assert a[sc.WORKFLOW_ID] == run.workflow_id
    assert a[sc.STATE] == sc.STATE_COMPLETED
    assert "gen_ai.system" not in a
    assert events(span, "llm.complete") == [{"message": "hello", "finish_reason": "stop"}]
    assert event_names(span) == ["llm.complete"]  # no lifecycle events on llm spans


def test_failed_calls_carry_error_type_and_a_model_call_is_a_client_span(
    cap: SpanCapture,
) -> None:
    """GenAI's conventions: a model call is a CLIENT span, and a failed call has
    ``error.type`` on the span (before: only in its events; INTERNAL)."""
    from opentelemetry.trace import SpanKind

    class ProviderDown(Exception):
        pass

    @spangraph.tool("lookup")
    def lookup(q: str) -> str:
        raise KeyError(q)

    with pytest.raises(ProviderDown), spangraph.llm("gpt-4o", provider="openai"):
        raise ProviderDown("503")
    with pytest.raises(KeyError):
        lookup("x")
    with pytest.raises(TimeoutError), spangraph.step("slow"):
        raise TimeoutError("late")
    with spangraph.llm("gpt-4o", name="fine"):
        pass
    names = ("chat gpt-4o", "execute_tool lookup", "slow", "fine")
    call, tool, step, fine = (one(cap, n) for n in names)
    assert (call.kind, tool.kind, step.kind) == (
        SpanKind.CLIENT,
        SpanKind.INTERNAL,
        SpanKind.INTERNAL,
    )
    assert attrs(call)[sc.ERROR_TYPE] == f"{__name__}.{ProviderDown.__qualname__}"
    assert attrs(tool)[sc.ERROR_TYPE] == "KeyError"
    assert attrs(step)[sc.ERROR_TYPE] == "TimeoutError"
    assert sc.ERROR_TYPE not in attrs(fine) and fine.kind == SpanKind.CLIENT


def test_llm_options(cap: SpanCapture) -> None:
    with spangraph.llm("m1", operation="text_completion") as call:
        call.usage(output_tokens=3)
    with spangraph.llm("m2", name="my call", attributes={"temperature": 0.2}):
        pass
    a = attrs(one(cap, "text_completion m1"))
    assert a[sc.GEN_AI_OPERATION_NAME] == "text_completion"
    assert a[sc.GEN_AI_USAGE_OUTPUT_TOKENS] == 3
    assert sc.GEN_AI_USAGE_INPUT_TOKENS not in a
    assert sc.GEN_AI_PROVIDER_NAME not in a
    b = attrs(one(cap, "my call"))
    assert b[sc.GEN_AI_REQUEST_MODEL] == "m2"
    assert b["temperature"] == 0.2
    # nothing streamed, nothing completed: no llm.complete event
    assert one(cap, "my call").events == ()
    for bad in ("", " "):
        with pytest.raises(ValueError, match="model"):
            spangraph.llm(bad)
    with pytest.raises(ValueError, match="operation"):
        spangraph.llm("m", operation="")


class _BadStr:
    def __str__(self) -> str:
        raise RuntimeError("no str")


def test_values_whose_str_raises_never_raise_into_the_call(cap: SpanCapture) -> None:
    with spangraph.llm("m") as call:
        call.token("a")
        call.token(_BadStr())
        call.token(7)
        call.complete(finish_reason=_BadStr())
    span = one(cap, "chat m")
    assert attrs(span)[sc.GEN_AI_RESPONSE_FINISH_REASONS] == ("<unprintable _BadStr>",)
    assert events(span, "llm.complete") == [
        {
            "message": "a<unprintable _BadStr>7",
            "finish_reason": "<unprintable _BadStr>",
            "streamed_tokens": 3,
        }
    ]


@pytest.mark.parametrize(
    "bad", ["12", "abc", 1.9, 2.0, float("nan"), -5, 2**63, 2**64, True, object()]
)
@pytest.mark.parametrize("argument", ["input_tokens", "output_tokens"])
def test_usage_token_counts_are_whole_numbers_an_otlp_int_holds(
    cap: SpanCapture, argument: str, bad: Any
) -> None:
    with spangraph.llm("m") as call:
        with pytest.raises(ValueError, match=rf"{argument} must be a whole number"):
            call.usage(**{argument: bad})
        call.usage(input_tokens=0, output_tokens=2**63 - 1)
    a = attrs(one(cap, "chat m"))
    assert a[sc.GEN_AI_USAGE_INPUT_TOKENS] == 0
    assert a[sc.GEN_AI_USAGE_OUTPUT_TOKENS] == 2**63 - 1


def test_usage_refuses_both_counts_when_one_is_bad(cap: SpanCapture) -> None:
    with spangraph.llm("m") as call, pytest.raises(ValueError, match="output_tokens"):
        call.usage(input_tokens=5, output_tokens=-1)
    assert sc.GEN_AI_USAGE_INPUT_TOKENS not in attrs(one(cap, "chat m"))


def test_llm_provider_and_tool_arguments_are_checked_when_passed(cap: SpanCapture) -> None:
    with pytest.raises(ValueError, match="provider"):
        spangraph.llm("m", provider=5)  # type: ignore[arg-type]
    for bad in ([1, 2], "abc"):
        with pytest.raises(TypeError, match="arguments must be a mapping"):
            spangraph.tool("t", arguments=bad)  # type: ignore[arg-type]
    assert cap.spans == []


def test_tokens_auto_complete_at_exit(cap: SpanCapture) -> None:
    with spangraph.llm("m") as call:
        for t in ["Hel", "lo", ", ", "world"]:
            call.token(t)
        assert call.tokens == 4
    span = one(cap, "chat m")
    assert event_names(span) == ["llm.complete"]  # tokens are never span events
    assert events(span, "llm.complete") == [{"message": "Hello, world", "streamed_tokens": 4}]


def test_explicit_complete_recorded_once(cap: SpanCapture) -> None:
    with spangraph.llm("m") as call:
        call.token("a")
        call.token("b")
        call.complete("the real answer", finish_reason="length", extra="x")
        call.complete("second call ignored")
    span = one(cap, "chat m")
    assert events(span, "llm.complete") == [
        {
            "message": "the real answer",
            "finish_reason": "length",
            "streamed_tokens": 2,
            "extra": "x",
        }
    ]


def test_complete_without_message_joins_tokens(cap: SpanCapture) -> None:
    with spangraph.llm("m") as call:
        call.token("x")
        call.token(1)  # type: ignore[arg-type]
        call.complete()
        call.token("late")  # after complete: not recorded again
    assert events(one(cap, "chat m"), "llm.complete") == [{"message": "x1", "streamed_tokens": 2}]


def test_llm_failure_completes_with_error(cap: SpanCapture) -> None:
    with pytest.raises(RuntimeError, match="stream broke"), spangraph.llm("m") as call:
        call.token("par")
        call.token("tial")
        raise RuntimeError("stream broke")
    span = one(cap, "chat m")
    a = attrs(span)
    assert a[sc.STATE] == sc.STATE_FAILED
    assert span.status.status_code is StatusCode.ERROR
    assert events(span, "llm.complete") == [
        {"message": "partial", "finish_reason": "error", "streamed_tokens": 2}
    ]
    assert a["gen_ai.response.finish_reasons"] == ("error",)
    assert event_names(span) == ["llm.complete", "exception"]


async def test_llm_async_with(cap: SpanCapture) -> None:
    async with spangraph.workflow("wf"), spangraph.llm("m") as call:
        call.token("a")
        await asyncio.sleep(0)
        call.token("b")
    assert events(one(cap, "chat m"), "llm.complete")[0]["message"] == "ab"


# -- llm: live tokens and the graph -----------------------------------------------------


def test_tokens_live_only_and_complete_once_in_graph(
    sg: spangraph.Spangraph, subscribe: Any
) -> None:
    workflow_id = f"wf-{uuid.uuid4().hex[:12]}"
    sub = subscribe(workflow_id)
    tokens = ["The", " graph", " is", " live", " 🚀", ' "q"']
    with spangraph.workflow("chat", workflow_id=workflow_id), spangraph.llm("m") as call:
        call.token(tokens[0])
        # live: the first token reaches the subscriber while the call is still running
        sub.until(lambda m: m["type"] == "token", timeout=5)
        assert call.span.is_recording()
        for t in tokens[1:]:
            call.token(t)
    messages = sub.until_workflow_ended()
    live_tokens = [m for m in messages if m["type"] == "token"]
    assert [m["attributes"]["text"] for m in live_tokens] == tokens
    assert [m["attributes"]["index"] for m in live_tokens] == list(range(len(tokens)))
    assert all(m["span_id"] == call.span_id and m["kind"] == "llm" for m in live_tokens)
    seqs = [m["seq"] for m in messages]
    assert seqs == sorted(seqs)
    types = [m["type"] for m in messages if m["span_id"] == call.span_id]
    assert types == ["span.started", *["token"] * len(tokens), "llm.complete", "span.ended"]

    spangraph.flush()
    assert graph_events(sg, call.span_id) == [
        {
            "name": "llm.complete",
            "seq": 0,
            "attributes": {"message": "".join(tokens), "streamed_tokens": len(tokens)},
        }
    ]
    assert sg.store is not None
    assert sg.store.query("MATCH (e:Event {name: 'token'}) RETURN count(e) AS n") == [{"n": 0}]
    assert [e["name"] for e in queries.workflow_events(sg.store, workflow_id)] == [
        "workflow.started",
        "llm.complete",
        "workflow.completed",
    ]


def test_failed_llm_in_graph(sg: spangraph.Spangraph) -> None:
    with pytest.raises(ValueError), spangraph.workflow("wf"), spangraph.llm("m") as call:
        call.token("so far")
        raise ValueError("bad")
    spangraph.flush()
    assert sg.store is not None
    (node,) = sg.store.query(
        "MATCH (s:LLM {span_id: $id}) RETURN s.state AS state, s.status AS status",
        {"id": call.span_id},
    )
    assert node == {"state": "failed", "status": "ERROR"}
    completes = [e for e in graph_events(sg, call.span_id) if e["name"] == "llm.complete"]
    assert [e["attributes"]["finish_reason"] for e in completes] == ["error"]
    assert completes[0]["attributes"]["message"] == "so far"


# -- tool -------------------------------------------------------------------------------


def test_tool_decorator_sync(cap: SpanCapture) -> None:
    @spangraph.tool
    def search(query: str, limit: int = 3) -> list[str]:
        return [query] * limit

    with spangraph.workflow("wf") as run:
        assert search("graphs", limit=2) == ["graphs", "graphs"]
    assert search.__name__ == "search"
    span = one(cap, "execute_tool search")
    a = attrs(span)
    assert a[sc.KIND] == sc.KIND_TOOL
    assert a[sc.GEN_AI_OPERATION_NAME] == "execute_tool"
    assert a[sc.GEN_AI_TOOL_NAME] == "search"
    assert a[sc.WORKFLOW_ID] == run.workflow_id
    assert a[sc.STATE] == sc.STATE_COMPLETED
    assert events(span, "tool.call") == [
        {"tool": "search", "arguments.query": "graphs", "arguments.limit": 2}
    ]
    assert events(span, "tool.response") == [{"result": ("graphs", "graphs")}]
    assert event_names(span) == ["tool.call", "tool.response"]


def test_tool_decorator_named(cap: SpanCapture) -> None:
    @spangraph.tool("web-search")
    def search(query: str, *, opts: dict[str, Any]) -> dict[str, Any]:
        return {"hits": 1}

    assert search("q", opts={"k": 1}) == {"hits": 1}
    span = one(cap, "execute_tool web-search")
    assert attrs(span)[sc.GEN_AI_TOOL_NAME] == "web-search"
    assert events(span, "tool.call") == [
        {"tool": "web-search", "arguments.query": "q", "arguments.opts": '{"k": 1}'}
    ]
    assert events(span, "tool.response") == [{"result": '{"hits": 1}'}]


async def test_tool_decorator_async(cap: SpanCapture) -> None:
    @spangraph.tool
    async def fetch(url: str) -> str:
        await asyncio.sleep(0)
        return f"<html>{url}</html>"

    @spangraph.tool("named-async")
    async def other(n: int) -> int:
        return n + 1

    async with spangraph.workflow("wf"):
        assert await fetch("http://x") == "<html>http://x</html>"
        assert await other(1) == 2
    span = one(cap, "execute_tool fetch")
    assert attrs(span)[sc.KIND] == sc.KIND_TOOL
    assert events(span, "tool.call") == [{"tool": "fetch", "arguments.url": "http://x"}]
    assert events(span, "tool.response") == [{"result": "<html>http://x</html>"}]
    named = one(cap, "execute_tool named-async")
    assert attrs(named)[sc.GEN_AI_TOOL_NAME] == "named-async"
    assert events(named, "tool.response") == [{"result": 2}]


def test_tool_decorator_failure(cap: SpanCapture) -> None:
    @spangraph.tool
    def broken(x: int) -> int:
        raise KeyError(x)

    with pytest.raises(KeyError):
        broken(5)
    span = one(cap, "execute_tool broken")
    assert attrs(span)[sc.STATE] == sc.STATE_FAILED
    assert event_names(span) == ["tool.call", "exception"]


def test_tool_block(cap: SpanCapture) -> None:
    with spangraph.workflow("wf"), spangraph.tool("search", arguments={"q": "x"}) as t:
        assert isinstance(t, ToolCall)
        t.respond(["r1", "r2"], cached=True)
    span = one(cap, "execute_tool search")
    a = attrs(span)
    assert a[sc.KIND] == sc.KIND_TOOL
    assert a[sc.GEN_AI_TOOL_NAME] == "search"
    assert a[sc.GEN_AI_OPERATION_NAME] == "execute_tool"
    assert event_names(span) == ["tool.call", "tool.response"]
    assert events(span, "tool.call")[0]["tool"] == "search"
    assert "x" in events(span, "tool.call")[0].values()
    assert events(span, "tool.response") == [{"result": ("r1", "r2"), "cached": True}]


def test_tool_block_arguments_like_the_decorator(cap: SpanCapture) -> None:
    with spangraph.tool("search", arguments={"q": "x", "tool": "other"}):
        pass
    assert events(one(cap, "execute_tool search"), "tool.call") == [
        {"tool": "search", "arguments.q": "x", "arguments.tool": "other"}
    ]


def test_tool_refuses_generators_and_bad_input(cap: SpanCapture) -> None:
    def gen() -> Iterator[int]:
        yield 1

    async def agen() -> AsyncIterator[int]:
        yield 1

    with pytest.raises(TypeError, match="generator"):
        spangraph.tool(gen)
    with pytest.raises(TypeError, match="generator"):
        spangraph.tool("named")(gen)
    with pytest.raises(TypeError, match="generator"):
        spangraph.tool(agen)
    with pytest.raises(TypeError, match="decorates a function"):
        spangraph.tool("named")(42)
    with pytest.raises(ValueError, match="tool name"):
        spangraph.tool("")
    with pytest.raises(TypeError, match="needs a name"), spangraph.tool():
        pass
    assert cap.spans == []


def test_tool_decorates_a_partial_and_a_callable_object(cap: SpanCapture) -> None:
    def add(a: int, b: int) -> int:
        return a + b

    class Doubler:
        def __call__(self, x: int) -> int:
            return 2 * x

    add_one = spangraph.tool(functools.partial(add, 1))
    double = spangraph.tool(Doubler())
    named = spangraph.tool("adder")(functools.partial(add, 2))
    assert (add_one(2), double(4), named(1)) == (3, 8, 3)
    assert [s.name for s in cap.spans] == [
        "execute_tool add",  # the partial's function, as the model knows it
        "execute_tool Doubler",
        "execute_tool adder",
    ]
    assert events(one(cap, "execute_tool Doubler"), "tool.call") == [
        {"tool": "Doubler", "arguments.x": 4}
    ]


def test_tool_decorates_a_callable_without_a_signature(cap: SpanCapture) -> None:
    """``inspect.signature`` fails on some builtins: decorating them raised ValueError.
    Their arguments are recorded by position."""
    with pytest.raises(ValueError):  # max has no signature (itemgetter has one from 3.13)
        inspect.signature(max)
    pick = spangraph.tool("pick")(max)
    assert pick("xyz") == "z"
    assert events(one(cap, "execute_tool pick"), "tool.call") == [
        {"tool": "pick", "arguments.0": "xyz"}
    ]
    assert events(one(cap, "execute_tool pick"), "tool.response") == [{"result": "z"}]


def test_tool_records_defaults_and_no_self(cap: SpanCapture) -> None:
    """The arguments the call ran with, defaults included (as docs/sdk.md shows); not a
    method's instance, whose repr may hold anything (before: ``arguments.self``)."""

    class Agent:
        secret = "api-key"

        def __repr__(self) -> str:
            return f"Agent({self.secret})"

        @spangraph.tool
        def search(self, query: str, k: int = 5) -> list[str]:
            return [query] * k

        @spangraph.tool
        @staticmethod
        def add(a: int, b: int) -> int:  # before: called with the instance too
            return a + b

        @spangraph.tool
        @classmethod
        def make(cls, name: str) -> str:
            return name

    agent = Agent()
    assert len(agent.search("graphs")) == 5
    assert (agent.add(1, 2), Agent.add(2, 3), agent.make("x")) == (3, 5, "x")
    assert events(one(cap, "execute_tool search"), "tool.call") == [
        {"tool": "search", "arguments.query": "graphs", "arguments.k": 5}
    ]
    assert [
        e["arguments.a"]
        for s in cap.spans
        if s.name == "execute_tool add"
        for e in events(s, "tool.call")
    ] == [1, 2]
    assert events(one(cap, "execute_tool make"), "tool.call") == [
        {"tool": "make", "arguments.name": "x"}
    ]


async def test_tool_on_an_async_callable_object_records_its_result(cap: SpanCapture) -> None:
    class Search:
        async def __call__(self, q: str) -> list[str]:
            await asyncio.sleep(0)
            return [f"hit-{q}"]

    search = spangraph.tool(Search())
    assert await search("x") == ["hit-x"]
    span = one(cap, "execute_tool Search")
    # before: the coroutine object, recorded before it ran
    assert events(span, "tool.response") == [{"result": ("hit-x",)}]


async def test_tool_returning_a_coroutine_records_its_result_once_awaited(
    cap: SpanCapture,
) -> None:
    """A plain function that returns a coroutine, and a partial of an object whose
    ``__call__`` is async: ``tool.response`` records what the coroutine returned, after
    it was awaited in the tool's span (before: the coroutine object, recorded when the
    function returned)."""

    async def lookup(q: str) -> list[str]:
        await asyncio.sleep(0)
        return [f"hit-{q}"]

    @spangraph.tool
    def search(q: str) -> Any:
        return lookup(q)

    class Searcher:
        async def __call__(self, q: str, k: int) -> list[str]:
            await asyncio.sleep(0)
            return [q] * k

    partial = spangraph.tool(functools.partial(Searcher(), k=2))

    assert await search("x") == ["hit-x"]
    assert await partial("y") == ["y", "y"]
    assert events(one(cap, "execute_tool search"), "tool.response") == [{"result": ("hit-x",)}]
    assert events(one(cap, "execute_tool Searcher"), "tool.response") == [{"result": ("y", "y")}]
    assert all(attrs(s)[sc.STATE] == sc.STATE_COMPLETED for s in cap.spans)


def test_tool_in_graph(sg: spangraph.Spangraph) -> None:
    @spangraph.tool
    def add(a: int, b: int) -> int:
        return a + b

    with spangraph.workflow("wf") as run:
        assert add(2, b=3) == 5
    spangraph.flush()
    assert sg.store is not None
    (row,) = sg.store.query(
        "MATCH (t:Tool {workflow_id: $wf}) RETURN t.span_id AS id, t.name AS name, t.kind AS kind",
        {"wf": run.workflow_id},
    )
    assert (row["name"], row["kind"]) == ("execute_tool add", "tool")
    assert [(e["name"], e["attributes"]) for e in graph_events(sg, row["id"])] == [
        ("tool.call", {"tool": "add", "arguments.a": 2, "arguments.b": 3}),
        ("tool.response", {"result": 5}),
    ]


@pytest.mark.parametrize(
    "make",
    [
        lambda a: spangraph.llm("m", attributes=a),
        lambda a: spangraph.tool("t", attributes=a),
    ],
    ids=["llm", "tool"],
)
def test_reserved_keys_are_refused_in_genai_attributes(cap: SpanCapture, make: Any) -> None:
    with pytest.raises(ValueError, match=r"spangraph\.workflow\.id"):
        make({"spangraph.workflow.id": "elsewhere"})
    assert cap.spans == []


def test_tool_records_no_empty_star_args_and_keeps_a_plain_functions_cls(cap: SpanCapture) -> None:
    @spangraph.tool
    def search(query: str, *args: Any, limit: int = 3, **kwargs: Any) -> list[str]:
        return [query]

    @spangraph.tool
    def classify(cls: str) -> str:  # not a method: "cls" is the model's argument
        return cls

    @spangraph.tool
    def total(*numbers: int) -> int:  # a variadic first parameter is recorded too
        return sum(numbers)

    search("hi")
    search("hi", "more", extra=1)
    classify("bird")
    total(1, 2)
    calls = [e for s in cap.spans for e in events(s, "tool.call")]
    assert calls == [
        {"tool": "search", "arguments.query": "hi", "arguments.limit": 3},
        {
            "tool": "search",
            "arguments.query": "hi",
            "arguments.args": ("more",),
            "arguments.limit": 3,
            "arguments.kwargs": '{"extra": 1}',
        },
        {"tool": "classify", "arguments.cls": "bird"},
        {"tool": "total", "arguments.numbers": (1, 2)},
    ]


class Ambiguous:
    """A value whose truth raises, as a numpy array's or a pandas DataFrame's does."""

    def __bool__(self) -> bool:
        raise ValueError("The truth value of an array with more than one element is ambiguous")

    def __repr__(self) -> str:
        return "Ambiguous()"


def test_a_tool_runs_whatever_its_arguments_are(cap: SpanCapture) -> None:
    """An argument whose truth raises (a numpy array) made the decorated tool raise
    before it ran: recording its arguments took their truth."""

    @spangraph.tool
    def mean(values: Any, *rest: Any) -> str:
        return "ran"

    assert mean(Ambiguous()) == "ran"
    [call] = [e for s in cap.spans for e in events(s, "tool.call")]
    assert call == {"tool": "mean", "arguments.values": "Ambiguous()"}
    assert attrs(one(cap, "execute_tool mean"))[sc.STATE] == sc.STATE_COMPLETED


def test_recording_a_tools_arguments_never_stops_it(
    cap: SpanCapture, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import spangraph.genai as genai

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("recording broke")

    @spangraph.tool
    def echo(x: int) -> int:
        return x

    monkeypatch.setattr(genai, "_add_event", broken)
    with caplog.at_level("WARNING", logger="spangraph.genai"):
        assert echo(3) == 3
    assert "recording the arguments of tool 'echo' failed" in caplog.text
    assert attrs(one(cap, "execute_tool echo"))[sc.STATE] == sc.STATE_COMPLETED


@pytest.mark.parametrize("name", ["  ", "", b"x", 5, ["a"]])
def test_an_llm_name_is_checked_as_other_names(cap: SpanCapture, name: Any) -> None:
    """A blank or non-text name was taken (bytes then cost the graph its whole batch)."""
    with pytest.raises(ValueError, match="llm name"):
        spangraph.llm("m", name=name)
    assert cap.spans == []


def test_a_cancelled_stream_completes_cancelled_not_with_an_error(cap: SpanCapture) -> None:
    async def stream() -> None:
        with spangraph.llm("m") as call:
            call.token("par")
            await asyncio.sleep(10)

    async def main() -> None:
        task = asyncio.create_task(stream())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    span = one(cap, "chat m")
    assert attrs(span)[sc.STATE] == sc.STATE_CANCELLED
    assert events(span, "llm.complete") == [
        {"message": "par", "finish_reason": "cancelled", "streamed_tokens": 1}
    ]
    assert attrs(span)["gen_ai.response.finish_reasons"] == ("cancelled",)


# -- content capture off ----------------------------------------------------------------


@pytest.fixture
def no_content(monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenTelemetry's GenAI content switch set to false (read again at the next call)."""
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "false")
    monkeypatch.setattr(genai, "_capture_content", None, raising=False)


def test_content_capture_off_leaves_the_message_out(cap: SpanCapture, no_content: None) -> None:
    with spangraph.llm("m") as call:
        call.token("secret ")
        call.token("answer")
    with spangraph.llm("n") as told:
        told.complete("the whole secret", finish_reason="stop", model_version="2")
    [streamed] = events(one(cap, "chat m"), sc.LLM_COMPLETE)
    assert streamed == {"streamed_tokens": 2}
    [complete] = events(one(cap, "chat n"), sc.LLM_COMPLETE)
    assert complete == {"finish_reason": "stop", "model_version": "2"}
    assert "secret" not in json.dumps([events(s) for s in cap.spans])


def test_content_capture_off_leaves_tool_arguments_and_results_out(
    cap: SpanCapture, no_content: None
) -> None:
    @spangraph.tool
    def lookup_user(email: str) -> dict[str, str]:
        return {"ssn": "123-45-6789"}

    @spangraph.tool
    async def alookup(email: str) -> str:
        return "123-45-6789"

    assert lookup_user("alice@example.com") == {"ssn": "123-45-6789"}
    assert asyncio.run(alookup("alice@example.com")) == "123-45-6789"
    with spangraph.tool("search", arguments={"query": "alice@example.com"}) as t:
        t.respond(["123-45-6789"], hits=1)
    recorded = [(e.name, dict(e.attributes or {})) for s in cap.spans for e in s.events]
    assert recorded == [
        ("tool.call", {"tool": "lookup_user"}),
        ("tool.response", {}),
        ("tool.call", {"tool": "alookup"}),
        ("tool.response", {}),
        ("tool.call", {"tool": "search"}),
        ("tool.response", {"hits": 1}),
    ]


def test_content_capture_off_sends_tokens_without_text(
    sg: spangraph.Spangraph, subscribe: Any, no_content: None
) -> None:
    workflow_id = f"wf-{uuid.uuid4().hex[:12]}"
    sub = subscribe(workflow_id)
    with spangraph.workflow("chat", workflow_id=workflow_id), spangraph.llm("m") as call:
        call.token("secret ")
        call.token("answer")
    messages = sub.until_workflow_ended()
    tokens = [m["attributes"] for m in messages if m["type"] == "token"]
    assert tokens == [{"index": 0}, {"index": 1}]
    assert "secret" not in json.dumps(messages)
    spangraph.flush()
    assert [e["attributes"] for e in graph_events(sg, call.span_id)] == [{"streamed_tokens": 2}]


def test_content_capture_is_read_once(cap: SpanCapture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Read at the first call that needs it, not at every call: changing the variable
    later changes nothing until it is read again."""
    monkeypatch.setattr(genai, "_capture_content", None, raising=False)
    monkeypatch.delenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", raising=False)
    with spangraph.tool("t", arguments={"q": 1}):
        pass
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "false")
    with spangraph.tool("t", arguments={"q": 2}):
        pass
    assert [events(s, sc.TOOL_CALL) for s in cap.spans] == [
        [{"tool": "t", "arguments.q": 1}],
        [{"tool": "t", "arguments.q": 2}],
    ]


# -- tool call ids, types and descriptions ----------------------------------------------


def test_a_decorated_tool_is_a_function_described_by_its_docstring(cap: SpanCapture) -> None:
    def search(query: str, k: int = 3) -> list[str]:
        """Search the web for a query.

        What the model is told in full."""
        return []

    @spangraph.tool("lookup")
    async def lookup(key: str) -> None:
        pass

    class Fetch:
        """Fetch a page by its URL."""

        def __call__(self, url: str) -> str:
            return url

    spangraph.tool(search)("graphs")
    asyncio.run(lookup("k"))
    spangraph.tool(functools.partial(search, k=5))("graphs")
    spangraph.tool(Fetch())("https://example.com")
    spangraph.tool(functools.partial(operator.itemgetter(0)))("ab")

    # not a docstring the tool only inherits, nor the one a dataclass is made up
    @dataclasses.dataclass
    class Rank:
        k: int = 3

        def __call__(self, hits: list[str]) -> list[str]:
            """Rank search hits."""
            return hits

    class Handler:
        """Base of every handler of this program, with a great deal of docs."""

    class Ping(Handler):
        def __call__(self) -> str:
            return "pong"

    spangraph.tool(Rank())(["a"])
    spangraph.tool(Ping())()
    described = {
        s.name: (attrs(s).get(sc.GEN_AI_TOOL_TYPE), attrs(s).get(sc.GEN_AI_TOOL_DESCRIPTION))
        for s in cap.spans
    }
    assert described == {
        "execute_tool search": ("function", "Search the web for a query."),
        "execute_tool lookup": ("function", None),
        "execute_tool Fetch": ("function", "Fetch a page by its URL."),
        "execute_tool itemgetter": ("function", None),  # a builtin's doc is not the tool's
        "execute_tool Rank": ("function", "Rank search hits."),  # its __call__'s
        "execute_tool Ping": ("function", None),
    }
    assert len(cap.spans) == 7  # search twice (a partial of it too)


def test_a_tool_call_id_is_recorded(cap: SpanCapture) -> None:
    with spangraph.tool("calculator", arguments={"expr": "2+2"}, call_id="call_abc123") as t:
        t.respond(4)
    a = attrs(one(cap, "execute_tool calculator"))
    assert a[sc.GEN_AI_TOOL_CALL_ID] == "call_abc123"
    assert sc.GEN_AI_TOOL_TYPE not in a  # a block may be any kind of tool
    with spangraph.tool("t", attributes={sc.GEN_AI_TOOL_TYPE: "extension"}, call_id="c"):
        pass
    assert attrs(one(cap, "execute_tool t"))[sc.GEN_AI_TOOL_TYPE] == "extension"
    for bad in ("", "  ", 5):
        with pytest.raises(ValueError, match="call_id"):
            spangraph.tool("t", call_id=bad)  # type: ignore[arg-type]
    # a decorated tool is called many times: one call's id would be on every call
    with pytest.raises(TypeError, match="names one call of the tool"):

        @spangraph.tool("lookup", call_id="call_1")
        def lookup(key: str) -> str:
            return key
