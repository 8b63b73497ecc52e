"""mapping: real SDK spans to graph rows and live messages (pure functions, no I/O)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.trace import INVALID_SPAN_CONTEXT, Link, Status, StatusCode

import spangraph
from spangraph import mapping as mapping_module
from spangraph import semconv as sc
from spangraph.mapping import (
    PROMOTED,
    Lineage,
    Resources,
    SpanMapper,
    iso_time,
    kind_of,
    label_of,
    live_message,
    read_json,
    state_of,
    to_json,
)
from spangraph.testing import SpanCapture, capture

DESIGN_MESSAGE_KEYS = [
    "type",
    "seq",
    "workflow_id",
    "project_id",
    "trace_id",
    "span_id",
    "parent_span_id",
    "kind",
    "name",
    "timestamp",
    "time_unix_nano",
    "attributes",
    "service",
    "env",
]


@pytest.fixture
def provider() -> Iterator[TracerProvider]:
    tp = TracerProvider(
        resource=Resource.create(
            {"service.name": "billing", "deployment.environment.name": "staging"}
        )
    )
    yield tp
    tp.shutdown()


@pytest.fixture
def cap(provider: TracerProvider) -> Iterator[SpanCapture]:
    with capture(provider) as c:
        yield c


def one(cap: SpanCapture, name: str) -> ReadableSpan:
    (span,) = cap.find(name)
    return span


def hex16(span: ReadableSpan) -> str:
    return format(span.context.span_id, "016x")


def hex32(span: ReadableSpan) -> str:
    return format(span.context.trace_id, "032x")


# -- node_props -------------------------------------------------------------------------


def test_node_props_at_start(provider: TracerProvider, cap: SpanCapture) -> None:
    mapper = SpanMapper("proj-default")
    with spangraph.workflow("w", workflow_id="wf-1") as run:
        live = run.span  # the SDK span is a ReadableSpan while it runs
        label, props = mapper.node_props(live, ended=False)
    assert label == "Workflow"
    assert props["span_id"] == run.span_id
    assert props["trace_id"] == run.trace_id
    assert props["workflow_id"] == "wf-1"
    assert props["execution_id"] == "wf-1"
    assert props["kind"] == "workflow"
    assert props["name"] == "w"
    assert props["service"] == "billing"
    assert props["env"] == "staging"
    assert props["start_ns"] == live.start_time
    # the store sets state 'running' on the start write; node_props leaves ends out
    for key in ("state", "status", "status_message", "end_ns", "duration_ms"):
        assert key not in props
    # None values are left out (a root has no parent)
    assert "parent_span_id" not in props
    assert "branch_id" not in props
    assert None not in props.values()


def test_node_props_at_end_completed(cap: SpanCapture) -> None:
    mapper = SpanMapper("p")
    with spangraph.workflow("w"), spangraph.step("s"):
        pass
    wf, st = one(cap, "w"), one(cap, "s")
    mapper.node_props(wf, ended=True)
    label, props = mapper.node_props(st, ended=True)
    assert label == "Step"
    assert props["state"] == "completed"
    assert props["status"] == "UNSET"
    assert "status_message" not in props
    assert props["end_ns"] == st.end_time
    assert props["start_ns"] == st.start_time
    assert props["duration_ms"] == round((st.end_time - st.start_time) / 1e6, 3)
    assert props["parent_span_id"] == hex16(wf)
    assert props["workflow_id"] == wf.attributes[sc.WORKFLOW_ID]


def test_node_props_ended_false_ignores_end(cap: SpanCapture) -> None:
    with spangraph.step("s"):
        pass
    _, props = SpanMapper("p").node_props(one(cap, "s"), ended=False)
    assert "state" not in props and "end_ns" not in props


def test_node_props_at_end_failed(cap: SpanCapture) -> None:
    with pytest.raises(ValueError), spangraph.step("s"):
        raise ValueError("boom")
    _, props = SpanMapper("p").node_props(one(cap, "s"), ended=True)
    assert props["state"] == "failed"
    assert props["status"] == "ERROR"
    assert props["status_message"] == "ValueError: boom"


def test_node_props_cancelled(cap: SpanCapture) -> None:
    with pytest.raises(KeyboardInterrupt), spangraph.step("s"):
        raise KeyboardInterrupt
    _, props = SpanMapper("p").node_props(one(cap, "s"), ended=True)
    assert props["state"] == "cancelled"
    assert props["status"] == "UNSET"


def test_promoted_attributes_not_in_attributes_json(cap: SpanCapture) -> None:
    with spangraph.workflow("w"), spangraph.step("s", attributes={"custom": "v", "n": [1, 2]}):
        pass
    st = one(cap, "s")
    _, props = SpanMapper("p").node_props(st, ended=True)
    rest = json.loads(props["attributes"])
    assert not set(rest) & PROMOTED
    for key in (sc.KIND, sc.WORKFLOW_ID, sc.EXECUTION_ID, sc.PROJECT_ID, sc.STATE):
        assert key in st.attributes  # the span has them ...
        assert key not in rest  # ... the JSON does not
    assert rest["custom"] == "v"
    assert rest["n"] == [1, 2]
    assert rest[sc.WORKFLOW_NAME] == "w"
    assert rest[sc.STEP_ATTEMPT] == 1
    assert props["project_id"] == st.attributes[sc.PROJECT_ID]


def test_promoted_set_matches_contract() -> None:
    assert {
        sc.KIND,
        sc.WORKFLOW_ID,
        sc.EXECUTION_ID,
        sc.BRANCH_ID,
        sc.PROJECT_ID,
        sc.STATE,
    } == PROMOTED


def test_foreign_child_inherits_run_ids_via_lineage(
    provider: TracerProvider, cap: SpanCapture
) -> None:
    other = provider.get_tracer("some.http.client")
    with (
        spangraph.workflow("w", workflow_id="wf-9", execution_id="ex-9"),
        spangraph.step("s"),
        other.start_as_current_span("GET /"),
        other.start_as_current_span("socket"),
    ):
        pass
    mapper = SpanMapper("default-project")
    # parents first, as the processors see them start
    for name in ("w", "s", "GET /", "socket"):
        mapper.node_props(one(cap, name), ended=True)
    label, props = mapper.node_props(one(cap, "socket"), ended=True)
    assert label is None
    assert props["kind"] == "span"
    assert props["workflow_id"] == "wf-9"
    assert props["execution_id"] == "ex-9"
    # the project of the spangraph spans above it (a service's own default, over OTLP,
    # may differ), not the mapper's default
    assert props["project_id"] == one(cap, "w").attributes[sc.PROJECT_ID]
    assert props["parent_span_id"] == hex16(one(cap, "GET /"))
    assert props["state"] == "completed"


def test_span_without_run_falls_back_to_trace_id(provider: TracerProvider) -> None:
    span = provider.get_tracer("x").start_span("orphan")
    span.set_status(Status(StatusCode.ERROR, "bad"))
    span.end()
    _, props = SpanMapper("p").node_props(span, ended=True)
    assert props["workflow_id"] == hex32(span)
    assert len(props["workflow_id"]) == 32
    assert "execution_id" not in props
    assert props["state"] == "failed"  # no spangraph.state: from the status
    assert props["status"] == "ERROR"
    assert props["status_message"] == "bad"


def test_an_end_before_the_start_ends_at_the_start(provider: TracerProvider) -> None:
    """A clock stepped back, or an end_time given by hand: before, the node got an end
    before its start and a negative duration (the OTLP receiver already clamped)."""
    span = provider.get_tracer("x").start_span("backwards", start_time=2_000_000_000)
    span.end(end_time=1_990_000_000)
    _, props = SpanMapper("p").node_props(span, ended=True)
    assert props["start_ns"] == props["end_ns"] == 2_000_000_000
    assert props["duration_ms"] == 0.0


def test_child_with_unknown_parent_uses_trace_id(provider: TracerProvider) -> None:
    tracer = provider.get_tracer("x")
    with tracer.start_as_current_span("parent") as parent:
        child = tracer.start_span("child")
        child.end()
    mapper = SpanMapper("p")
    _, props = mapper.node_props(child, ended=True)  # parent never seen
    assert props["workflow_id"] == format(parent.get_span_context().trace_id, "032x")


def test_branch_id_inherited_even_when_workflow_id_is_set() -> None:
    lineage = Lineage()
    assert lineage.resolve("p", None, "t" * 32, {sc.WORKFLOW_ID: "w", sc.BRANCH_ID: "b1"}) == (
        "w",
        None,
        "b1",
    )
    assert lineage.resolve("c", "p", "t" * 32, {sc.WORKFLOW_ID: "w"}) == ("w", None, "b1")
    assert lineage.resolve("g", "c", "t" * 32, {}) == ("w", None, "b1")


def test_a_run_started_inside_a_branch_of_another_run_is_in_no_branch() -> None:
    """A workflow called inside a branch starts a run of its own: before, it and its
    spans took the branch id of the other run's branch (and showed in its summary)."""
    lineage = Lineage()
    lineage.resolve("b", None, "t" * 32, {sc.WORKFLOW_ID: "outer", sc.BRANCH_ID: "b1"})
    assert lineage.resolve("w", "b", "t" * 32, {sc.WORKFLOW_ID: "inner"}) == ("inner", None, None)
    assert lineage.resolve("s", "w", "t" * 32, {sc.WORKFLOW_ID: "inner"}) == ("inner", None, None)
    assert lineage.resolve("x", "s", "t" * 32, {}) == ("inner", None, None)
    # a branch of its own inside the inner run still counts
    assert lineage.resolve("ib", "w", "t" * 32, {sc.WORKFLOW_ID: "inner", sc.BRANCH_ID: "b2"}) == (
        "inner",
        None,
        "b2",
    )


def test_a_run_id_over_the_id_limit_is_left_out(caplog: pytest.LogCaptureFixture) -> None:
    """A run id set through the plain OTel API is not checked by the SDK: one of 2 000
    characters was copied to every span of its run (Neo4j's indexes refuse such keys,
    failing the whole batch). It is left out, as the OTLP receiver refuses it."""
    lineage = Lineage()
    lineage.resolve("p", None, "t" * 32, {sc.WORKFLOW_ID: "w", sc.BRANCH_ID: "b"})
    long = "x" * 1025
    with caplog.at_level(logging.WARNING, logger="spangraph"):
        got = lineage.resolve(
            "c", "p", "t" * 32, {sc.WORKFLOW_ID: long, sc.EXECUTION_ID: long, sc.BRANCH_ID: long}
        )
    assert got == ("w", None, "b")  # the parent's run, as if unset
    assert any("over 1024: left out" in r.getMessage() for r in caplog.records) or (
        mapping_module._long_id_warned  # said once per process: maybe by an earlier test
    )
    assert lineage.resolve("r", None, "t" * 32, {sc.WORKFLOW_ID: long}) == ("t" * 32, None, None)
    ok = "y" * 1024
    assert lineage.resolve("k", None, "t" * 32, {sc.WORKFLOW_ID: ok})[0] == ok


def test_lineage_is_bounded() -> None:
    lineage = Lineage(max_entries=2)
    lineage.resolve("a", None, "T", {sc.WORKFLOW_ID: "wa"})
    lineage.resolve("b", None, "T", {sc.WORKFLOW_ID: "wb"})
    lineage.resolve("c", None, "T", {sc.WORKFLOW_ID: "wc"})
    assert lineage.resolve("x", "a", "T", {})[0] == "T"  # 'a' was evicted
    assert lineage.resolve("y", "c", "T", {})[0] == "wc"


def test_project_id_default_and_attribute(provider: TracerProvider) -> None:
    tracer = provider.get_tracer("x")
    a = tracer.start_span("a", attributes={sc.PROJECT_ID: "proj-a"})
    b = tracer.start_span("b")
    a.end()
    b.end()
    mapper = SpanMapper("fallback")
    assert mapper.node_props(a, ended=True)[1]["project_id"] == "proj-a"
    assert mapper.node_props(b, ended=True)[1]["project_id"] == "fallback"


# -- kinds and labels -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attributes", "kind"),
    [
        ({sc.KIND: "step"}, "step"),
        ({sc.KIND: "ingest_job"}, "ingest_job"),
        ({sc.GEN_AI_OPERATION_NAME: "chat"}, "llm"),
        ({sc.GEN_AI_OPERATION_NAME: "text_completion"}, "llm"),
        ({sc.GEN_AI_OPERATION_NAME: "embeddings"}, "llm"),
        ({sc.GEN_AI_OPERATION_NAME: "execute_tool"}, "tool"),
        ({sc.GEN_AI_OPERATION_NAME: "invoke_agent"}, "agent"),
        # an agent being made (AutoGen makes each in a trace of its own): no run
        ({sc.GEN_AI_OPERATION_NAME: "create_agent"}, "span"),
        # Strands Agents: a Swarm or a Graph of agents at work, an agent's turn
        ({sc.GEN_AI_OPERATION_NAME: "invoke_swarm"}, "agent"),
        ({sc.GEN_AI_OPERATION_NAME: "invoke_graph"}, "agent"),
        ({sc.GEN_AI_OPERATION_NAME: "execute_event_loop_cycle"}, "step"),
        # Mastra: the model's work for an agent, one turn, a workflow's step, a chunk
        ({sc.GEN_AI_OPERATION_NAME: "model_generation"}, "step"),
        ({sc.GEN_AI_OPERATION_NAME: "agent_step"}, "step"),
        ({sc.GEN_AI_OPERATION_NAME: "workflow_step"}, "step"),
        ({sc.GEN_AI_OPERATION_NAME: "model_chunk"}, "span"),
        # Haystack's own tracer (opentelemetry-haystack), by the attributes it sets
        ({"haystack.agent.max_steps": 10, "haystack.agent.tools": "[]"}, "agent"),
        ({"haystack.agent.step": 2}, "step"),
        ({"haystack.tool.name": "get_weather", "haystack.tool.description": "x"}, "tool"),
        ({"haystack.pipeline.max_runs_per_component": 100}, "step"),
        (
            {"haystack.component.type": "OpenAIChatGenerator", "haystack.component.name": "llm"},
            "llm",
        ),
        ({"haystack.component.type": "ChatPromptBuilder"}, "step"),
        ({"haystack.agent.step": 2, "openinference.span.kind": "LLM"}, "llm"),
        ({sc.GEN_AI_OPERATION_NAME: "invoke_workflow"}, "workflow"),
        ({sc.GEN_AI_OPERATION_NAME: "something_new"}, "span"),
        ({sc.KIND: "tool", sc.GEN_AI_OPERATION_NAME: "chat"}, "tool"),
        ({sc.KIND: "not-a-kind", sc.GEN_AI_OPERATION_NAME: "chat"}, "llm"),
        ({sc.KIND: "not-a-kind"}, "span"),
        # an explicit plain span wins too, as the docs' table says of any kind
        ({sc.KIND: "span", "openinference.span.kind": "LLM"}, "span"),
        ({sc.KIND: "span", sc.GEN_AI_OPERATION_NAME: "invoke_workflow"}, "span"),
        ({}, "span"),
        # the Vercel AI SDK (OpenTelemetry JS), as it sends them: no gen_ai.operation.name
        ({"ai.operationId": "ai.generateText.doGenerate", "gen_ai.system": "openai.chat"}, "llm"),
        ({"ai.operationId": "ai.streamText.doStream"}, "llm"),
        ({"ai.operationId": "ai.streamObject.doStream"}, "llm"),
        ({"ai.operationId": "ai.embedMany.doEmbed"}, "llm"),
        ({"ai.operationId": "ai.toolCall", "ai.toolCall.name": "get_weather"}, "tool"),
        ({"ai.operationId": "ai.generateText"}, "step"),
        ({"ai.operationId": "ai.generateObject"}, "step"),
        ({"ai.operationId": "ai.somethingNew"}, "span"),
    ],
)
def test_kind_of(attributes: dict[str, str], kind: str) -> None:
    assert kind_of(attributes) == kind


def test_a_root_step_of_another_instrumentation_is_its_run_s_workflow(
    provider: TracerProvider,
) -> None:
    """The top span of a trace that another instrumentation marks as a step (a LangChain
    or LlamaIndex chain, OpenLLMetry's task, the Vercel AI SDK's generateText) heads a
    run no list showed: it is the run's workflow span. Below a parent, such a span stays
    a step, and so does spangraph's own step at the top (its kind is given)."""
    tracer = provider.get_tracer("framework")
    mapper = SpanMapper("p")
    tops = {
        "OpenInference chain": {"openinference.span.kind": "CHAIN"},
        "OpenLLMetry task": {"traceloop.span.kind": "task"},
        "Vercel AI SDK": {"ai.operationId": "ai.generateText"},
        "spangraph step": {sc.KIND: "step"},
        "agent": {"openinference.span.kind": "AGENT"},
        "plain": {},
        # a lone retrieval, embedding or rerank is no run (a loop of them would fill
        # the run list)
        "retriever": {"openinference.span.kind": "RETRIEVER"},
        "embedding": {"ai.operationId": "ai.embedMany"},
        "rerank": {"llm.request.type": "rerank"},
        "odd kind on a chain": {sc.KIND: "Step", "openinference.span.kind": "CHAIN"},
    }
    seen = {}
    for name, attributes in tops.items():
        with tracer.start_as_current_span(name, attributes=attributes) as top:
            inner = tracer.start_span(
                "inner chain", attributes={"openinference.span.kind": "CHAIN"}
            )
            inner.end()
        seen[name] = mapper.node_props(top, ended=True)  # type: ignore[arg-type]
        assert mapper.node_props(inner, ended=True)[0] == "Step", name  # type: ignore[arg-type]
    assert {name: (label, props["kind"]) for name, (label, props) in seen.items()} == {
        "OpenInference chain": ("Workflow", "workflow"),
        "OpenLLMetry task": ("Workflow", "workflow"),
        "Vercel AI SDK": ("Workflow", "workflow"),
        "spangraph step": ("Step", "step"),
        "agent": ("Agent", "agent"),
        "plain": (None, "span"),
        "retriever": ("Step", "step"),
        "embedding": ("Step", "step"),
        "rerank": ("Step", "step"),
        "odd kind on a chain": ("Step", "step"),
    }


def test_kind_from_gen_ai_on_real_span(provider: TracerProvider) -> None:
    span = provider.get_tracer("openai").start_span(
        "chat gpt-4o", attributes={sc.GEN_AI_OPERATION_NAME: "chat"}
    )
    span.end()
    label, props = SpanMapper("p").node_props(span, ended=True)
    assert (label, props["kind"]) == ("LLM", "llm")


def test_label_of() -> None:
    for kind in sc.KINDS:
        assert label_of(kind) == sc.KIND_LABELS[kind]
    assert label_of("span") is None
    assert label_of("Workflow") is None
    assert label_of("workflow") == "Workflow"
    assert label_of("llm") == "LLM"
    assert label_of("ingest_job") == "IngestJob"


def test_state_of_prefers_attribute(provider: TracerProvider) -> None:
    span = provider.get_tracer("x").start_span("s", attributes={sc.STATE: "cancelled"})
    span.set_status(Status(StatusCode.ERROR))
    span.end()
    assert state_of(span, span.attributes) == "cancelled"
    assert state_of(span, {sc.STATE: "weird"}) == "failed"
    assert state_of(span, {}) == "failed"


def test_haystack_s_own_spans(provider: TracerProvider) -> None:
    """Haystack's own tracer writes no GenAI, OpenInference or OpenLLMetry kind: its run
    was not listed, every span plain, its model calls not counted, and a tool call that
    raised (``haystack.tool.error``, its status OK) read as completed."""
    tracer = provider.get_tracer("haystack")
    mapper = SpanMapper("p")
    with tracer.start_as_current_span(
        "haystack.pipeline.run", attributes={"haystack.pipeline.max_runs_per_component": 100}
    ) as pipeline:
        with tracer.start_as_current_span("haystack.agent.step.llm") as llm:
            pass
        with tracer.start_as_current_span(
            "haystack.agent.step.tool",
            attributes={"haystack.tool.name": "get_weather", "haystack.tool.error": True},
        ) as tool:
            pass
    seen = {
        name: (props["kind"], props["state"])
        for name, span in (("pipeline", pipeline), ("llm", llm), ("tool", tool))
        for _, props in [mapper.node_props(span, ended=True)]  # type: ignore[arg-type]
    }
    assert seen == {
        "pipeline": ("workflow", "completed"),  # at the root: the run
        "llm": ("llm", "completed"),
        "tool": ("tool", "failed"),
    }


def test_langfuse_s_observations(provider: TracerProvider) -> None:
    """Langfuse (its ``@observe`` and integrations) writes only its own observation
    type: every span was plain, its generations not counted, its runs not listed; the
    tree printed no tokens (they are JSON in ``usage_details``)."""
    from spangraph._tree_text import print_tree
    from spangraph.queries import TreeNode

    tracer = provider.get_tracer("langfuse-sdk")
    mapper = SpanMapper("p")
    usage = '{"completion_tokens": 7, "prompt_tokens": 11, "total_tokens": 18}'
    with tracer.start_as_current_span(
        "lf-agent", attributes={"langfuse.observation.type": "span"}
    ) as top:
        with tracer.start_as_current_span(
            "get_weather", attributes={"langfuse.observation.type": "tool"}
        ) as tool:
            pass
        with tracer.start_as_current_span(
            "OpenAI-generation",
            attributes={
                "langfuse.observation.type": "generation",
                "langfuse.observation.model.name": "gpt-4o-mini",
                "langfuse.observation.usage_details": usage,
            },
        ) as generation:
            pass
        with tracer.start_as_current_span(
            "note", attributes={"langfuse.observation.type": "event"}
        ) as event:
            pass
    spans = (("top", top), ("tool", tool), ("generation", generation), ("event", event))
    seen = {
        name: mapper.node_props(span, ended=True)[1]["kind"]  # type: ignore[arg-type]
        for name, span in spans
    }
    assert seen == {"top": "workflow", "tool": "tool", "generation": "llm", "event": "span"}
    lines: list[str] = []
    llm = {"kind": "llm", "name": "OpenAI-generation", "state": "completed",
           "attributes": dict(generation.attributes or {})}  # fmt: skip
    print_tree([TreeNode(llm)], lines.append)
    assert lines[0].endswith("11 in / 7 out tokens")
    llm["attributes"]["langfuse.observation.usage_details"] = '{"input": 3, "output": 2}'
    print_tree([TreeNode(llm)], lines.append)
    assert lines[1].endswith("3 in / 2 out tokens")
    # JSON nested thousands deep (a value cut at 8 192 characters): no tokens, no error
    llm["attributes"]["langfuse.observation.usage_details"] = '{"input": ' + "[" * 4000
    print_tree([TreeNode(llm)], lines.append)
    assert lines[2].split()[-2:] == ["completed", "…"]


def test_a_langgraph_interrupt_ended_as_an_error_is_no_failure(provider: TracerProvider) -> None:
    """OpenInference's LangChain.js ends a LangGraph node that called ``interrupt()`` with
    an error status (its ``GraphInterrupt``): the node read as failed in a run that waits
    for an answer. Another exception still fails its span."""
    tracer = provider.get_tracer("openinference")

    def ended(exception_type: str) -> Any:
        span = tracer.start_span("approve", attributes={"openinference.span.kind": "CHAIN"})
        span.add_event("exception", {"exception.type": exception_type, "exception.message": "[{}]"})
        span.set_status(Status(StatusCode.ERROR, '[\n  {\n    "value": "ok?"\n  }\n]'))
        span.end()
        return span

    for interrupt in ("GraphInterrupt", "langgraph.errors.GraphInterrupt", "NodeInterrupt"):
        assert state_of(ended(interrupt), {}) == "completed", interrupt
    assert state_of(ended("ValueError"), {}) == "failed"
    # an interrupt, then a failure: the failure ended it
    span = tracer.start_span("approve")
    span.add_event("exception", {"exception.type": "GraphInterrupt"})
    span.add_event("exception", {"exception.type": "ValueError"})
    span.set_status(Status(StatusCode.ERROR, "ValueError: boom"))
    span.end()
    assert state_of(span, {}) == "failed"
    # in the graph too, where the record of the span is mapped
    _, props = SpanMapper("p").node_props(ended("GraphInterrupt"), ended=True)
    assert props["state"] == "completed" and props["status"] == "ERROR"


# -- resources --------------------------------------------------------------------------


def test_service_env_from_resource() -> None:
    res = Resources()
    old_style = TracerProvider(
        resource=Resource.create({"service.name": "svc", "deployment.environment": "prod"})
    )
    bare = TracerProvider(resource=Resource.get_empty())
    a = old_style.get_tracer("x").start_span("a")
    b = bare.get_tracer("x").start_span("b")
    a.end()
    b.end()
    assert res.service_env(a) == ("svc", "prod")
    assert res.service_env(a) == ("svc", "prod")  # cached
    assert res.service_env(b) == (None, None)
    _, props = SpanMapper("p").node_props(b, ended=True)
    assert "service" not in props and "env" not in props
    old_style.shutdown()
    bare.shutdown()


# -- events and links -------------------------------------------------------------------


def test_event_rows_skip_token_events(provider: TracerProvider) -> None:
    span = provider.get_tracer("x").start_span("llm")
    span.add_event("llm.start", {"a": 1})
    span.add_event("token", {"text": "Hel"})
    span.add_event("token", {"text": "lo"})
    span.add_event("llm.complete", {"tokens": (1, 2)})
    span.end()
    sid = format(span.context.span_id, "016x")
    rows = SpanMapper.event_rows(span, sid)
    assert [r["name"] for r in rows] == ["llm.start", "llm.complete"]
    assert all(r["span_id"] == sid for r in rows)
    seqs = [r["seq"] for r in rows]
    assert seqs == sorted(set(seqs))
    assert json.loads(rows[0]["attributes"]) == {"a": 1}
    assert json.loads(rows[1]["attributes"]) == {"tokens": [1, 2]}
    assert rows[0]["time_ns"] == span.events[0].timestamp


def test_event_rows_of_spangraph_step(cap: SpanCapture) -> None:
    with spangraph.step("s"):
        trace.get_current_span().add_event("token", {"text": "x"})
        spangraph.event("note", n=1)
    st = one(cap, "s")
    rows = SpanMapper.event_rows(st, hex16(st))
    assert [r["name"] for r in rows] == ["step.started", "note", "step.completed"]


def test_link_rows_only_for_spangraph_links(provider: TracerProvider) -> None:
    tracer = provider.get_tracer("x")
    a = tracer.start_span("a")
    b = tracer.start_span("b")
    c = tracer.start_span("c")
    for s in (a, b, c):
        s.end()
    span = tracer.start_span(
        "linked",
        links=[
            Link(a.get_span_context(), {sc.LINK_TYPE: sc.LINK_RETRY_OF}),
            Link(b.get_span_context(), {sc.LINK_TYPE: "something-else"}),
            Link(c.get_span_context()),
            Link(c.get_span_context(), {sc.LINK_TYPE: sc.LINK_MONITORS}),
            Link(INVALID_SPAN_CONTEXT, {sc.LINK_TYPE: sc.LINK_MONITORS}),  # to no span
        ],
    )
    span.end()
    rows = SpanMapper.link_rows(span, "me")
    assert rows == [
        ("retry_of", {"span_id": "me", "target_span_id": format(a.context.span_id, "016x")}),
        ("monitors", {"span_id": "me", "target_span_id": format(c.context.span_id, "016x")}),
    ]


def test_link_rows_of_retried_step(cap: SpanCapture) -> None:
    calls = [0]

    @spangraph.step("r", retries=1, backoff=0)
    def r() -> None:
        calls[0] += 1
        if calls[0] == 1:
            raise ValueError("once")

    r()
    first, second = sorted(cap.find("r"), key=lambda s: s.attributes[sc.STEP_ATTEMPT])
    assert SpanMapper.link_rows(first, hex16(first)) == []
    assert SpanMapper.link_rows(second, hex16(second)) == [
        ("retry_of", {"span_id": hex16(second), "target_span_id": hex16(first)})
    ]


# -- live messages ----------------------------------------------------------------------


def _message(head: str, tail: str, seq: int) -> dict[str, object]:
    return json.loads(head + str(seq) + tail)


def test_live_message_is_json_with_design_keys_in_order(cap: SpanCapture) -> None:
    with spangraph.workflow("w", workflow_id="wf-live"), spangraph.step("s"):
        pass
    mapper = SpanMapper("default")
    wf, st = one(cap, "w"), one(cap, "s")
    mapper.common(wf, wf.attributes)
    common = mapper.common(st, st.attributes)
    t = 1_700_000_000_123_456_789
    head, tail = live_message("step.started", common, t, {"attempt": 1, "tags": ("a", "b")})
    for seq in (1, 42, 10**12):
        msg = _message(head, tail, seq)
        assert list(msg) == DESIGN_MESSAGE_KEYS
        assert msg["seq"] == seq
    msg = _message(head, tail, 7)
    assert msg["type"] == "step.started"
    assert msg["workflow_id"] == "wf-live"
    assert msg["project_id"] == st.attributes[sc.PROJECT_ID]
    assert msg["trace_id"] == hex32(st)
    assert msg["span_id"] == hex16(st)
    assert msg["parent_span_id"] == hex16(wf)
    assert msg["kind"] == "step"
    assert msg["name"] == "s"
    assert msg["time_unix_nano"] == t
    assert msg["attributes"] == {"attempt": 1, "tags": ["a", "b"]}
    assert msg["service"] == "billing"
    assert msg["env"] == "staging"
    ts = msg["timestamp"]
    assert isinstance(ts, str) and ts.endswith("Z")
    parsed = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    assert abs(parsed.timestamp() * 1e9 - t) < 2_000  # microsecond precision


def test_live_message_of_root_and_odd_attributes(provider: TracerProvider) -> None:
    span = provider.get_tracer("x").start_span("root")
    span.end()
    common = SpanMapper("p").common(span, {})
    head, tail = live_message("span.ended", common, 0, None)
    msg = _message(head, tail, 1)
    assert list(msg) == DESIGN_MESSAGE_KEYS
    assert msg["parent_span_id"] is None
    assert msg["attributes"] == {}
    assert msg["timestamp"] == "1970-01-01T00:00:00.000000Z"
    head, tail = live_message('weird "type"\n', common, 0, ["not", "a", "mapping"])
    msg = _message(head, tail, 2)
    assert msg["type"] == 'weird "type"\n'
    assert msg["attributes"] == {}
    head, tail = live_message("x", common, 0, {"text": "héllo ✓", "obj": object()})
    msg = _message(head, tail, 3)
    assert msg["attributes"]["text"] == "héllo ✓"
    assert isinstance(msg["attributes"]["obj"], str)


def test_iso_time() -> None:
    assert iso_time(0) == "1970-01-01T00:00:00.000000Z"
    assert iso_time(1_500_000_000_000_000) == "1970-01-18T08:40:00.000000Z"
    assert iso_time(1_700_000_000_500_000_000) == "2023-11-14T22:13:20.500000Z"


def test_common_is_consistent_with_current_span(provider: TracerProvider) -> None:
    tracer = provider.get_tracer("x")
    with tracer.start_as_current_span("a") as a:
        ctx = trace.get_current_span().get_span_context()
    common = SpanMapper("p").common(a, {})
    assert common["span_id"] == format(ctx.span_id, "016x")
    assert common["trace_id"] == format(ctx.trace_id, "032x")


def _strict(text: str) -> Any:
    """json.loads as a browser's JSON.parse: no NaN or Infinity."""

    def refuse(word: str) -> None:
        raise ValueError(f"not JSON: {word}")

    return json.loads(text, parse_constant=refuse)


def test_to_json_writes_strict_json_for_non_finite_numbers() -> None:
    value = {"nan": float("nan"), "inf": [float("inf"), (1.5, float("-inf"))], "ok": 2.5}
    assert _strict(to_json(value)) == {
        "nan": "NaN",
        "inf": ["Infinity", [1.5, "-Infinity"]],
        "ok": 2.5,
    }
    assert to_json({"plain": 1.0, "obj": object}) == '{"plain":1.0,"obj":"<class \'object\'>"}'


def test_read_json_reads_bare_non_finite_words_as_strings() -> None:
    assert read_json('{"a":NaN,"b":[Infinity,-Infinity],"c":1}') == {
        "a": "NaN",
        "b": ["Infinity", "-Infinity"],
        "c": 1,
    }
    assert read_json(to_json({"x": float("nan")})) == {"x": "NaN"}


def test_to_json_cuts_only_strings_over_the_limit() -> None:
    from spangraph._attrs import MAX_VALUE_CHARS

    many_small = {f"k{i}": "v" * 100 for i in range(200)}  # JSON over the limit, no long value
    assert to_json(many_small) == json.dumps(many_small, separators=(",", ":"))

    class Loud:
        def __str__(self) -> str:
            return "s" * (MAX_VALUE_CHARS + 5)

    long = "x" * (MAX_VALUE_CHARS + 10)
    value = {"a": long, "b": [1, (long, "ok")], "c": Loud(), "d": 2.5}
    cut = "x" * (MAX_VALUE_CHARS - 21) + "…[truncated 31 chars]"
    assert len(cut) == MAX_VALUE_CHARS
    assert json.loads(to_json(value)) == {
        "a": cut,
        "b": [1, [cut, "ok"]],
        "c": "s" * (MAX_VALUE_CHARS - 21) + "…[truncated 26 chars]",
        "d": 2.5,
    }
    assert json.loads(to_json({"exact": "y" * MAX_VALUE_CHARS})) == {"exact": "y" * MAX_VALUE_CHARS}


def test_to_json_of_many_long_strings_cuts_each_long_list_or_map() -> None:
    """2 000 prompts of 10 000 characters in one list: each cut to 8 192 still made 16 MB
    of JSON a span (Redis dropped every subscriber of such a message). Past 256 KiB, each
    list or map value longer than 8 192 characters in JSON is that JSON, cut, as text;
    the other values stay as they are."""
    from spangraph._attrs import MAX_VALUE_CHARS
    from spangraph.mapping import MAX_JSON_CHARS

    prompts = ["q" * 10_000] * 2000
    value = {"prompts": prompts, "few": ["a", "b"], "meta": {"k": 1}, "n": 3, "s": "x" * 9000}
    text = to_json(value)
    assert len(text) < 3 * MAX_VALUE_CHARS
    out = json.loads(text)
    assert out["few"] == ["a", "b"] and out["meta"] == {"k": 1} and out["n"] == 3
    assert out["s"] == "x" * (MAX_VALUE_CHARS - 22) + "…[truncated 830 chars]"
    assert isinstance(out["prompts"], str) and len(out["prompts"]) == MAX_VALUE_CHARS
    assert out["prompts"].startswith('["' + "q" * 100)
    assert out["prompts"].endswith(" chars]")
    # under the bound, lists of long strings are kept as lists (each string cut)
    some = {"prompts": ["q" * 10_000] * 20}
    assert len(to_json(some)) < MAX_JSON_CHARS
    assert [len(p) for p in json.loads(to_json(some))["prompts"]] == [MAX_VALUE_CHARS] * 20
    # over it, the longest go first, as long as needed; spangraph's own lists stay lists
    options = [f"option-{i:04}-" + "o" * 140 for i in range(1024)]  # 160 KB
    value = {
        "spangraph.decision.options": options,
        "huge": ["h" * 8000] * 40,  # 320 KB
        "big": ["b" * 8000] * 20,  # 160 KB
        "small": ["s" * 8000] * 2,
    }
    out = json.loads(to_json(value))
    assert out["spangraph.decision.options"] == options
    assert isinstance(out["huge"], str) and isinstance(out["big"], str)
    assert out["small"] == ["s" * 8000] * 2
    only_huge = json.loads(to_json({k: value[k] for k in ("huge", "big", "small")}))
    assert isinstance(only_huge["huge"], str) and only_huge["big"] == ["b" * 8000] * 20


def test_values_the_sdk_cut_are_not_cut_again() -> None:
    from spangraph._attrs import MAX_VALUE_CHARS, truncate
    from spangraph.mapping import bounded_text

    cut = truncate("x" * 100_000)
    assert cut == "x" * (MAX_VALUE_CHARS - 24) + "…[truncated 91832 chars]"
    assert json.loads(to_json({"a": cut, "b": [cut]})) == {"a": cut, "b": [cut]}
    assert bounded_text(cut) == cut


def test_live_message_attributes_are_cut_too(provider: TracerProvider) -> None:
    from spangraph._attrs import MAX_VALUE_CHARS

    span = provider.get_tracer("t").start_span("s", attributes={"big": "z" * 100_000})
    span.end()
    mapper = SpanMapper("p")
    common = mapper.common(span, dict(span.attributes or {}))
    head, tail = live_message("span.ended", common, 1, dict(span.attributes or {}))
    message = json.loads(head + "1" + tail)
    big = message["attributes"]["big"]
    assert big == "z" * (MAX_VALUE_CHARS - 24) + "…[truncated 91832 chars]"
    assert len(big) == MAX_VALUE_CHARS


def test_message_heads_start_again_when_the_table_is_full(provider: TracerProvider) -> None:
    """Event names with ids in them fill the table of message heads: it starts again, so
    a name first seen later still gets its head kept (the table once stayed full, and
    every later name was written the slow way for good)."""
    from spangraph import mapping

    span = provider.get_tracer("x").start_span("s")
    span.end()
    common = SpanMapper("p").common(span, {})
    saved = dict(mapping._heads)  # the C side holds this very dict: filled, not replaced
    try:
        for i in range(1024 - len(mapping._heads)):
            mapping._heads[f"order.{i}.shipped"] = f'{{"type":"order.{i}.shipped","seq":'
        first = live_message("late.name", common, 5, {"n": 1})
        assert "late.name" in mapping._heads and len(mapping._heads) == 1
        assert live_message("late.name", common, 5, {"n": 1}) == first
        assert _message(*first, 7)["type"] == "late.name"
    finally:
        mapping._heads.clear()
        mapping._heads.update(saved)


def test_spans_waiting_on_a_parent_are_adopted_when_it_arrives() -> None:
    """Children that reach the graph writer before their parent (an exporter sends spans
    as they end) get the parent's run ids once it arrives, down the chain, and the rows
    that correct their nodes."""
    lineage = Lineage(adoptions=True)
    trace_id = "t" * 32
    # step -> llm -> http, and llm -> tool (own branch), arriving leaves first
    assert lineage.resolve("http", "llm", trace_id, {})[0] == trace_id
    assert lineage.resolve("tool", "llm", trace_id, {sc.BRANCH_ID: "b-own"}) == (
        trace_id,
        None,
        "b-own",
    )
    assert lineage.resolve("llm", "step", trace_id, {})[0] == trace_id
    assert lineage.adopted == []
    step_ids = {sc.WORKFLOW_ID: "wf", sc.EXECUTION_ID: "ex", sc.BRANCH_ID: "b-1"}
    step_ids[sc.PROJECT_ID] = "shop"
    assert lineage.resolve("step", "root", trace_id, step_ids) == ("wf", "ex", "b-1")
    rows = {row["span_id"]: row for row in lineage.adopted}
    assert rows == {
        "llm": {
            "span_id": "llm",
            "trace_id": trace_id,
            "workflow_id": "wf",
            "execution_id": "ex",
            "branch_id": "b-1",
            "project_id": "shop",  # the step's: they had none of their own
        },
        "http": {
            "span_id": "http",
            "trace_id": trace_id,
            "workflow_id": "wf",
            "execution_id": "ex",
            "branch_id": "b-1",
            "project_id": "shop",  # the step's: they had none of their own
        },
        "tool": {
            "span_id": "tool",
            "trace_id": trace_id,
            "workflow_id": "wf",
            "execution_id": "ex",
            "branch_id": "b-own",  # its own branch stays
            "project_id": "shop",  # the step's: they had none of their own
        },
    }
    # the remembered entries moved too: a late grandchild inherits without waiting
    lineage.adopted.clear()
    assert lineage.resolve("late", "http", trace_id, {}) == ("wf", "ex", "b-1")
    assert lineage.adopted == []
    assert lineage.entry("http") == ("wf", "ex", "b-1", "shop")
    assert lineage.project("late") == "shop"


def test_a_span_with_a_run_of_its_own_is_not_adopted() -> None:
    lineage = Lineage(adoptions=True)
    t = "a" * 32
    assert lineage.resolve("own", "p", t, {sc.WORKFLOW_ID: "wf-own"})[0] == "wf-own"
    assert lineage.resolve("foreign", "p", t, {})[0] == t
    # a parent without a run of its own adopts nothing; its children keep waiting on it
    assert lineage.resolve("p", "root", t, {})[0] == t
    assert lineage.adopted == []
    lineage.resolve("root", None, t, {sc.WORKFLOW_ID: "wf"})
    assert [row["span_id"] for row in lineage.adopted] == ["p", "foreign"]
    assert lineage.entry("own") == ("wf-own", None, None, None)


def test_waiting_spans_are_bounded_and_only_kept_when_asked() -> None:
    lineage = Lineage(max_entries=4, adoptions=True)
    t = "b" * 32
    for i in range(10):
        lineage.resolve(f"kid-{i}", f"parent-{i}", t, {})
    assert len(lineage._waiting) == 4
    lineage.resolve("parent-0", None, t, {sc.WORKFLOW_ID: "wf"})  # forgotten: no row
    lineage.resolve("parent-9", None, t, {sc.WORKFLOW_ID: "wf"})
    assert [row["span_id"] for row in lineage.adopted] == ["kid-9"]

    plain = Lineage()  # the live processor's: nothing waits, nothing is adopted
    plain.resolve("kid", "parent", t, {})
    plain.resolve("parent", None, t, {sc.WORKFLOW_ID: "wf"})
    assert plain.adopted == [] and plain._waiting_on == {} and plain._waiting == {}
    assert plain.entry("kid") == (None, None, None, None)


def test_spans_under_a_root_without_a_run_do_not_wait() -> None:
    """Every span without a run waited on its parent, also under a root seen without a
    run (which nothing can give one): a long-lived root's children, or plain traces,
    filled memory without bound (1 000 000 children: 86 MB)."""
    lineage = Lineage(max_entries=20_000, adoptions=True)
    t = "c" * 32
    lineage.resolve("root", None, t, {})
    for i in range(5000):
        lineage.resolve(f"kid-{i}", "root", t, {})
        lineage.resolve(f"grandkid-{i}", f"kid-{i}", t, {})
    assert lineage._waiting_on == {} and lineage._waiting == {}


def test_spans_that_waited_on_a_root_without_a_run_stop_waiting_when_it_comes() -> None:
    """Over OTLP the leaves come first and the root last: a plain trace's spans waited
    until the cap pushed them out (65 536 waiting for good, each new span paying an
    eviction)."""
    lineage = Lineage(adoptions=True)
    t = "e" * 32
    for n in range(200):
        for i in range(5):
            lineage.resolve(f"leaf-{n}-{i}", f"mid-{n}", t, {})
        lineage.resolve(f"mid-{n}", f"root-{n}", t, {})
        lineage.resolve(f"root-{n}", None, t, {})
    assert lineage._waiting_on == {} and lineage._waiting == {}
    assert lineage.adopted == []


def test_at_most_max_entries_spans_wait_the_oldest_stop_first() -> None:
    """A span whose parent is remote (never seen) waits, with its children; at most
    ``max_entries`` span ids wait in all, not ``max_entries`` parents each with a list."""
    lineage = Lineage(max_entries=100, adoptions=True)
    t = "d" * 32
    for request in range(50):
        lineage.resolve(f"server-{request}", f"remote-{request}", t, {})
        for i in range(10):
            lineage.resolve(f"child-{request}-{i}", f"server-{request}", t, {})
    assert len(lineage._waiting_on) == 100
    assert sum(len(kids) for kids in lineage._waiting.values()) == 100
    assert "server-0" not in lineage._waiting and "remote-0" not in lineage._waiting
    # the newest still wait, and are adopted when their parent comes after all
    lineage.resolve("remote-49", None, t, {sc.WORKFLOW_ID: "wf"})
    adopted = {row["span_id"] for row in lineage.adopted}
    assert adopted == {"server-49", *(f"child-49-{i}" for i in range(10))}
    assert len(lineage._waiting_on) == 89


def test_times_are_within_what_every_store_takes(provider: TracerProvider) -> None:
    """The OTel SDK takes any int as a time; Neo4j's driver refuses one past 64 bits
    (and with it the whole batch)."""
    span = provider.get_tracer("x").start_span("far", start_time=2**64)
    span.add_event("later", timestamp=2**65)
    span.add_event("before", timestamp=-5)
    span.end(end_time=2**66)
    mapper = SpanMapper("p")
    _, props = mapper.node_props(span, ended=True)
    assert props["start_ns"] == props["end_ns"] == 2**63 - 1
    assert props["duration_ms"] == 0.0
    rows = mapper.event_rows(span, props.get("span_id") or "x")
    assert [r["time_ns"] for r in rows] == [2**63 - 1, 0]


def test_times_are_stored_as_whole_numbers_in_range() -> None:
    """Every time the OTel SDK takes (an int of any size, a float, an int subclass such
    as numpy's or an IntEnum) is a plain int within 0 .. 2**63-1, as the stores take it."""
    import enum

    from spangraph.mapping import _time_ns

    class At(enum.IntEnum):
        NOON = 43_200_000_000_000

    top = 2**63 - 1
    cases = [
        (5, 5), (-1, 0), (2**80, top), (1.5e9, 1_500_000_000), (float("nan"), 0),
        (float("inf"), top), (-0.0, 0), (1e300, top), (At.NOON, 43_200_000_000_000),
        (None, None),
    ]  # fmt: skip
    for value, expected in cases:
        got = _time_ns(value)
        assert got == expected and type(got) is type(expected), (value, got)
