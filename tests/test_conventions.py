"""Spans from other instrumentations (OpenInference, OpenLLMetry, plain GenAI) get
spangraph kinds: ``kind_of`` unit tests, then spans made with a plain OpenTelemetry
tracer written through spangraph into the real graph and read back by label."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

import spangraph
from spangraph import semconv as sc
from spangraph.mapping import (
    LLM_REQUEST_KINDS,
    OPENINFERENCE_KINDS,
    TRACELOOP_KINDS,
    kind_of,
)

ROOT = Path(__file__).resolve().parent.parent

OI = sc.OPENINFERENCE_SPAN_KIND
TL = sc.TRACELOOP_SPAN_KIND
REQ = sc.LLM_REQUEST_TYPE
OP = sc.GEN_AI_OPERATION_NAME

LABELS = {
    "workflow": "Workflow",
    "step": "Step",
    "agent": "Agent",
    "llm": "LLM",
    "tool": "Tool",
}


# -- kind_of ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("LLM", "llm"),
        ("EMBEDDING", "llm"),
        ("TOOL", "tool"),
        ("AGENT", "agent"),
        ("CHAIN", "step"),
        ("RETRIEVER", "step"),
        ("RERANKER", "step"),
        ("GUARDRAIL", "step"),
        ("EVALUATOR", "step"),
        ("PROMPT", "step"),
        ("llm", "llm"),  # either case
        ("Tool", "span"),  # but not mixed case
        ("UNKNOWN", "span"),
        ("SOMETHING_NEW", "span"),
    ],
)
def test_openinference(value: str, kind: str) -> None:
    assert kind_of({OI: value}) == kind


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("workflow", "workflow"),
        ("task", "step"),
        ("agent", "agent"),
        ("tool", "tool"),
        ("WORKFLOW", "workflow"),
        ("unknown", "span"),
    ],
)
def test_openllmetry_span_kind(value: str, kind: str) -> None:
    assert kind_of({TL: value}) == kind


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("chat", "llm"),
        ("completion", "llm"),
        ("embedding", "llm"),
        ("rerank", "step"),
        ("unknown", "span"),
    ],
)
def test_openllmetry_request_type(value: str, kind: str) -> None:
    assert kind_of({REQ: value, "llm.is_streaming": False}) == kind


@pytest.mark.parametrize(
    ("attributes", "kind"),
    [
        ({sc.KIND: "decision", OI: "LLM", TL: "tool", REQ: "chat"}, "decision"),
        ({OP: "chat", OI: "AGENT"}, "llm"),  # GenAI first
        ({OP: "retrieval_v9", OI: "RETRIEVER"}, "step"),  # an unknown GenAI op falls through
        ({OI: "TOOL", TL: "workflow"}, "tool"),  # OpenInference before OpenLLMetry
        ({OI: "UNKNOWN", TL: "agent"}, "agent"),
        ({TL: "task", REQ: "chat"}, "step"),  # the span kind before the request type
        ({TL: "unknown", REQ: "chat"}, "llm"),
        ({sc.KIND: "not-a-kind", OI: "LLM"}, "llm"),
        ({OI: ("LLM",)}, "span"),  # not a string
        ({TL: 3}, "span"),
        ({"http.request.method": "GET", "url.full": "http://x"}, "span"),
        ({}, "span"),
        # Logfire: its spans keep their kind; a log record (no length) is a plain span
        ({OP: "chat", "logfire.span_type": "span"}, "llm"),
        ({OP: "chat", "logfire.span_type": "log"}, "span"),
        ({"logfire.span_type": "log", "logfire.msg": "hello"}, "span"),
    ],
)
def test_precedence(attributes: dict[str, Any], kind: str) -> None:
    assert kind_of(attributes) == kind


def test_every_table_value_is_a_labelled_kind() -> None:
    for table in (OPENINFERENCE_KINDS, TRACELOOP_KINDS, LLM_REQUEST_KINDS):
        assert set(table.values()) <= set(sc.KIND_LABELS)


class CountingAttributes(dict[str, Any]):
    """Attributes that count how ``kind_of`` reads them."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.lookups = 0

    def get(self, key: str, default: Any = None) -> Any:
        self.lookups += 1
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        self.lookups += 1
        return super().__contains__(key)

    def __iter__(self) -> Any:
        raise AssertionError("kind_of walked the attributes")

    def items(self) -> Any:
        raise AssertionError("kind_of walked the attributes")

    def keys(self) -> Any:
        raise AssertionError("kind_of walked the attributes")

    def values(self) -> Any:
        raise AssertionError("kind_of walked the attributes")


def test_kind_of_is_cheap() -> None:
    """It runs on the worker for every span: a plain span with many attributes takes a
    few dict look-ups, one for each convention's key, and is never walked."""
    plain = CountingAttributes({f"http.attr{i}": "x" for i in range(30)})
    assert kind_of(plain) == sc.KIND_SPAN
    # spangraph.kind, the six foreign keys, Haystack's four and its component type
    assert plain.lookups <= 12
    wide = CountingAttributes({f"http.attr{i}": "x" for i in range(3000)})
    assert kind_of(wide) == sc.KIND_SPAN
    assert wide.lookups == plain.lookups  # as many for 3 000 attributes as for 30


# -- in the graph -------------------------------------------------------------------------

TREE: list[tuple[str, str | None, dict[str, Any], str]] = [
    # (name, parent name, attributes, expected kind)
    ("research", None, {TL: "workflow", "traceloop.entity.name": "research"}, "workflow"),
    ("planner", "research", {OI: "AGENT"}, "agent"),
    ("ChatOpenAI", "planner", {OI: "LLM", "llm.model_name": "gpt-4o-mini"}, "llm"),
    ("embed", "planner", {OI: "EMBEDDING"}, "llm"),
    ("retrieve", "planner", {OI: "RETRIEVER"}, "step"),
    ("rerank", "planner", {OI: "RERANKER"}, "step"),
    ("guard", "planner", {OI: "GUARDRAIL"}, "step"),
    ("judge", "planner", {OI: "EVALUATOR"}, "step"),
    ("chain", "planner", {OI: "CHAIN"}, "step"),
    ("lookup", "planner", {OI: "TOOL", "tool.name": "lookup"}, "tool"),
    ("summarize", "research", {TL: "task"}, "step"),
    ("openai.chat", "summarize", {REQ: "chat", "gen_ai.request.model": "gpt-4o"}, "llm"),
    ("openai.completion", "summarize", {REQ: "completion"}, "llm"),
    ("helper", "research", {TL: "agent"}, "agent"),
    ("search", "helper", {TL: "tool"}, "tool"),
    ("execute_tool calc", "helper", {OP: "execute_tool", sc.GEN_AI_TOOL_NAME: "calc"}, "tool"),
    ("chat gpt-4o", "helper", {OP: "chat"}, "llm"),
    ("invoke_agent critic", "research", {OP: "invoke_agent"}, "agent"),
    ("GET /search", "search", {"http.request.method": "GET"}, "span"),
]


def _make_tree(provider: TracerProvider) -> str:
    """Start and end the spans of TREE with a plain OTel tracer; the trace id."""
    tracer = provider.get_tracer("other-instrumentation")
    spans: dict[str, Any] = {}
    for name, parent, attributes, _ in TREE:
        ctx = trace.set_span_in_context(spans[parent]) if parent else None
        spans[name] = tracer.start_span(name, context=ctx, attributes=attributes)
    for name, *_ in reversed(TREE):
        spans[name].end()
    return format(spans["research"].get_span_context().trace_id, "032x")


def test_foreign_spans_get_kinds_in_the_graph(
    sg: spangraph.Spangraph, provider: TracerProvider
) -> None:
    trace_id = _make_tree(provider)
    assert spangraph.flush(10)
    assert sg.store is not None
    rows = sg.store.query(
        "MATCH (s:Span {trace_id: $t}) RETURN s AS s, labels(s) AS labels", {"t": trace_id}
    )
    nodes = {r["s"]["name"]: {**r["s"], "_labels": sorted(r["labels"])} for r in rows}
    assert set(nodes) == {name for name, *_ in TREE}
    for name, _, _, kind in TREE:
        node = nodes[name]
        expected = sorted(["Span", LABELS[kind]]) if kind != "span" else ["Span"]
        assert (name, node["kind"], node["_labels"]) == (name, kind, expected)
        assert node["workflow_id"] == trace_id  # no spangraph workflow: the trace id
        assert node["state"] == "completed"
    edges = sg.store.query(
        "MATCH (a:Span {trace_id: $t})-[:PARENT_OF]->(b:Span) RETURN a.name AS a, b.name AS b",
        {"t": trace_id},
    )
    assert {(e["a"], e["b"]) for e in edges} == {(p, n) for n, p, _, _ in TREE if p}
    kept = json.loads(nodes["ChatOpenAI"]["attributes"])
    assert kept[OI] == "LLM" and kept["llm.model_name"] == "gpt-4o-mini"


def test_foreign_spans_inside_a_spangraph_workflow(
    sg: spangraph.Spangraph, provider: TracerProvider
) -> None:
    """Inside a spangraph workflow, foreign spans take its run id and their own kinds."""
    tracer = provider.get_tracer("openinference.instrumentation.langchain")
    with (
        spangraph.workflow("agentic") as run,
        tracer.start_as_current_span("RunnableSequence", attributes={OI: "CHAIN"}),
        tracer.start_as_current_span("ChatAnthropic", attributes={OI: "LLM"}),
    ):
        pass
    assert spangraph.flush(10)
    assert sg.store is not None
    rows = sg.store.query(
        "MATCH (s:Span {workflow_id: $wf}) RETURN s.name AS name, s.kind AS kind, "
        "labels(s) AS labels",
        {"wf": run.workflow_id},
    )
    got = {r["name"]: (r["kind"], sorted(r["labels"])) for r in rows}
    assert got == {
        "agentic": ("workflow", ["Span", "Workflow"]),
        "RunnableSequence": ("step", ["Span", "Step"]),
        "ChatAnthropic": ("llm", ["LLM", "Span"]),
    }


_LOGFIRE_REQUEST = {
    OP: "chat",
    "gen_ai.system": "openai",
    "gen_ai.request.model": "gpt-4o-mini",
    "gen_ai.input.messages": '[{"role":"user","parts":[{"type":"text","content":"Say hi"}]}]',
    "request_data": '{"model":"gpt-4o-mini"}',
    "logfire.span_type": "span",
    "logfire.msg": "Chat Completion with 'gpt-4o-mini'",
    "logfire.tags": ("LLM",),
}


def _logfire_request(tracer: Any, **request: Any) -> Any:
    """The span Logfire's OpenAI integration (logfire 5.6) writes for a streamed call:
    ended as soon as the stream is returned, without the answer."""
    attributes = {**_LOGFIRE_REQUEST, **request}
    call = tracer.start_span("Chat Completion with {request_data[model]!r}", attributes=attributes)
    call.end()
    return call


def _logfire_record(tracer: Any, call: Any, answer: str, tokens: tuple[int, int]) -> Any:
    """The log record (a span of no length) Logfire writes beside ``call`` when its
    stream ends: the request's attributes and the answer."""
    now = time.time_ns() + 50_000_000  # the stream ends 50 ms later
    log = tracer.start_span(
        "streaming response from {request_data[model]!r} took {duration:.2f}s",
        start_time=now,
        attributes={
            **call.attributes,
            "gen_ai.response.id": f"chatcmpl-{uuid.uuid4().hex[:8]}",
            "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
            "gen_ai.response.finish_reasons": '["stop"]',
            "gen_ai.usage.input_tokens": tokens[0],
            "gen_ai.usage.output_tokens": tokens[1],
            "gen_ai.output.messages": json.dumps([{"role": "assistant", "content": answer}]),
            "logfire.span_type": "log",
            "logfire.level_num": 9,
            "duration": 0.05,
        },
    )
    log.end(end_time=now)
    return log


def _nodes_of(sg: spangraph.Spangraph, workflow_id: str) -> dict[str, dict[str, Any]]:
    assert sg.store is not None
    rows = sg.store.query(
        "MATCH (s:Span {workflow_id: $wf}) RETURN s AS s, labels(s) AS labels",
        {"wf": workflow_id},
    )
    return {r["s"]["span_id"]: {**r["s"], "_labels": sorted(r["labels"])} for r in rows}


def test_a_logfire_stream_is_one_model_call_with_its_answer(
    sg: spangraph.Spangraph, provider: TracerProvider
) -> None:
    """Logfire's streamed call: its request span is the :LLM node and gets the answer,
    usage, ids and end of the log record written when the stream ended; the record is a
    plain span. Two calls whose records come in the other order each get their own."""
    tracer = provider.get_tracer("logfire.openai")
    with spangraph.workflow("streams") as run:
        call = _logfire_request(tracer)
        log = _logfire_record(tracer, call, "Hello there", (11, 5))
        # two streams read side by side, the second ending first
        b = _logfire_request(tracer, **{"gen_ai.input.messages": '[{"role":"user","content":"B"}]'})
        c = _logfire_request(tracer, **{"gen_ai.input.messages": '[{"role":"user","content":"C"}]'})
        c_log = _logfire_record(tracer, c, "C!", (7, 3))
        b_log = _logfire_record(tracer, b, "B!", (2, 1))
    assert spangraph.flush(10)
    nodes = _nodes_of(sg, run.workflow_id)
    span_id = lambda s: format(s.get_span_context().span_id, "016x")  # noqa: E731
    # three calls, three :LLM nodes (the records made them six)
    llm = {i for i, n in nodes.items() if "LLM" in n["_labels"]}
    assert llm == {span_id(call), span_id(b), span_id(c)}
    request = nodes[span_id(call)]
    kept = json.loads(request["attributes"])
    assert (kept["gen_ai.usage.input_tokens"], kept["gen_ai.usage.output_tokens"]) == (11, 5)
    assert kept["gen_ai.response.id"] == log.attributes["gen_ai.response.id"]
    assert "Hello there" in kept["gen_ai.output.messages"]
    assert kept["gen_ai.request.model"] == "gpt-4o-mini"  # its own attributes kept
    assert request["end_ns"] == log.end_time  # the call lasted until its stream ended
    assert request["duration_ms"] == pytest.approx((log.end_time - call.start_time) / 1e6, abs=0.01)
    assert request["state"] == "completed"
    for record in (log, b_log, c_log):
        assert (nodes[span_id(record)]["kind"], nodes[span_id(record)]["_labels"]) == (
            "span",
            ["Span"],
        )
    for request_span, tokens in ((b, (2, 1)), (c, (7, 3))):
        got = json.loads(nodes[span_id(request_span)]["attributes"])
        assert (got["gen_ai.usage.input_tokens"], got["gen_ai.usage.output_tokens"]) == tokens


def test_a_logfire_stream_started_with_no_span_open(
    sg: spangraph.Spangraph, provider: TracerProvider
) -> None:
    """With no span open, Logfire writes the record in a trace of its own: the call's
    node (a run of its own trace) still gets the answer."""
    tracer = provider.get_tracer("logfire.openai")
    call = _logfire_request(tracer, **{"gen_ai.input.messages": '[{"content":"alone"}]'})
    log = _logfire_record(tracer, call, "Alone", (3, 2))
    assert log.get_span_context().trace_id != call.get_span_context().trace_id
    assert spangraph.flush(10)
    assert sg.store is not None
    span_id = lambda s: format(s.get_span_context().span_id, "016x")  # noqa: E731
    rows = sg.store.query(
        "MATCH (s:Span) WHERE s.span_id IN $ids RETURN s AS s",
        {"ids": [span_id(call), span_id(log)]},
    )
    nodes = {r["s"]["span_id"]: r["s"] for r in rows}
    kept = json.loads(nodes[span_id(call)]["attributes"])
    assert (kept["gen_ai.usage.input_tokens"], kept["gen_ai.usage.output_tokens"]) == (3, 2)
    assert nodes[span_id(call)]["kind"] == "llm" and nodes[span_id(log)]["kind"] == "span"


def test_a_logfire_stream_that_failed_fails_its_call(
    sg: spangraph.Spangraph, provider: TracerProvider
) -> None:
    """A stream that broke off: Logfire's record is an error log; the call's node fails
    with it. A Logfire call answered at once, and any other span, are left as they are."""
    tracer = provider.get_tracer("logfire.openai")
    with spangraph.workflow("broken-stream") as run:
        call = tracer.start_span(
            "Chat Completion with {request_data[model]!r}", attributes=_LOGFIRE_REQUEST
        )
        call.end()
        log = tracer.start_span(
            "streaming response from {request_data[model]!r} took {duration:.2f}s",
            attributes={**_LOGFIRE_REQUEST, "logfire.span_type": "log", "error.type": "APIError"},
        )
        log.set_status(trace.Status(trace.StatusCode.ERROR, "APIError: boom mid-stream"))
        log.end(end_time=log.start_time)
        answered = tracer.start_span(
            "Chat Completion with {request_data[model]!r}",
            attributes={
                **_LOGFIRE_REQUEST,
                "gen_ai.response.id": "chatcmpl-x",
                "gen_ai.usage.input_tokens": 4,
            },
        )
        answered.end()
    assert spangraph.flush(10)
    nodes = _nodes_of(sg, run.workflow_id)
    span_id = lambda s: format(s.get_span_context().span_id, "016x")  # noqa: E731
    failed = nodes[span_id(call)]
    assert (failed["state"], failed["status"]) == ("failed", "ERROR")
    assert failed["status_message"] == "APIError: boom mid-stream"
    assert json.loads(failed["attributes"])["error.type"] == "APIError"
    kept = nodes[span_id(answered)]
    assert (kept["state"], json.loads(kept["attributes"])["gen_ai.usage.input_tokens"]) == (
        "completed",
        4,
    )
    assert sorted(n["kind"] for n in nodes.values()) == ["llm", "llm", "span", "workflow"]


# -- the docs' example --------------------------------------------------------------------


def _section_example(heading: str) -> str:
    text = (ROOT / "docs" / "integrations.md").read_text()
    section = text.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]
    [block] = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return block


def test_docs_example_runs(
    tmp_path: Path, graph_url: str, embedded_server: Any, store: Any
) -> None:
    script = tmp_path / "example.py"
    script.write_text(_section_example("## Spans from other instrumentations"))
    env = {
        **os.environ,
        "SPANGRAPH_GRAPH_URL": graph_url,
        "SPANGRAPH_REDIS_URL": embedded_server.redis_url,
        "SPANGRAPH_HOME": str(tmp_path / "home"),
    }
    env.pop("NEO4J_URI", None)
    proc = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    rows = store.query("MATCH (s:Span) RETURN s.name AS name, labels(s) AS labels")
    got = {r["name"]: sorted(r["labels"]) for r in rows}
    assert got == {
        "research": ["Span", "Workflow"],
        "planner": ["Agent", "Span"],
        "ChatOpenAI": ["LLM", "Span"],
        "search": ["Span", "Tool"],
        "summarize": ["Span", "Step"],
        "openai.chat": ["LLM", "Span"],
    }
