"""The query library on real graphs written by real runs."""

from __future__ import annotations

import contextlib
import time
import uuid

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import StatusCode

import spangraph
from spangraph import _diff, queries
from spangraph import semconv as sc


def flush() -> None:
    assert spangraph.flush(10)


@pytest.fixture
def runs(sg: spangraph.Spangraph, provider: TracerProvider) -> dict[str, str]:
    """Four runs of the test's project (alpha, beta, failing alpha, nested) started in this
    order, plus one workflow of another project; name -> workflow_id."""
    out: dict[str, str] = {}
    with spangraph.workflow("alpha") as run, spangraph.step("a1"):
        pass
    out["alpha"] = run.workflow_id
    time.sleep(0.002)
    with spangraph.workflow("beta") as run:
        pass
    out["beta"] = run.workflow_id
    time.sleep(0.002)
    with contextlib.suppress(RuntimeError), spangraph.workflow("alpha") as run:
        raise RuntimeError("alpha failed this time")
    out["alpha-failed"] = run.workflow_id
    time.sleep(0.002)
    with spangraph.workflow("nested") as run:
        spangraph.event("wf.first")
        with spangraph.step("outer"):
            spangraph.event("outer.event", k="v")
            with spangraph.step("inner"):
                spangraph.event("inner.event")
        spangraph.event("wf.last")
    out["nested"] = run.workflow_id
    # a workflow from elsewhere (another project), as another instrumentation sends it
    other = f"other-{uuid.uuid4().hex[:6]}"
    tracer = provider.get_tracer("elsewhere")
    with tracer.start_as_current_span(
        "alpha",
        attributes={"spangraph.kind": "workflow", "spangraph.project.id": other,
                    "spangraph.workflow.id": "wf-elsewhere"},
    ):  # fmt: skip
        pass
    out["other-project"] = other
    flush()
    return out


def test_workflows_newest_first_and_filters(sg: spangraph.Spangraph, runs: dict[str, str]) -> None:
    project = sg.settings.project
    mine = queries.workflows(sg.store, project_id=project)
    assert [w["workflow_id"] for w in mine] == [
        runs["nested"], runs["alpha-failed"], runs["beta"], runs["alpha"],
    ]  # fmt: skip
    starts = [w["start_ns"] for w in mine]
    assert starts == sorted(starts, reverse=True)
    assert all(w["kind"] == "workflow" and w["project_id"] == project for w in mine)
    assert isinstance(mine[0]["attributes"], dict)

    everything = queries.workflows(sg.store)
    assert len(everything) == 5
    assert everything[0]["workflow_id"] == "wf-elsewhere"  # started last
    other = queries.workflows(sg.store, project_id=runs["other-project"])
    assert [w["workflow_id"] for w in other] == ["wf-elsewhere"]

    alphas = queries.workflows(sg.store, project_id=project, name="alpha")
    assert [w["workflow_id"] for w in alphas] == [runs["alpha-failed"], runs["alpha"]]
    failed = queries.workflows(sg.store, state="failed")
    assert [(w["workflow_id"], w["status"]) for w in failed] == [(runs["alpha-failed"], "ERROR")]
    assert queries.workflows(sg.store, project_id=project, state="running") == []
    assert [w["name"] for w in queries.workflows(sg.store, name="alpha", state="completed")] == [
        "alpha", "alpha",
    ]  # fmt: skip

    since = mine[1]["start_ns"]  # alpha-failed
    recent = queries.workflows(sg.store, project_id=project, since_ns=since)
    assert [w["workflow_id"] for w in recent] == [runs["nested"], runs["alpha-failed"]]
    # every start is after 1970: a since at or before it keeps every run (before, the
    # most negative ones gave none on FalkorDB, its comparison having overflowed)
    for before_1970 in (0, -1, -(2**62), -(2**63) + 1, -(2**63)):
        assert len(queries.workflows(sg.store, project_id=project, since_ns=before_1970)) == 4


def test_workflows_limit(sg: spangraph.Spangraph, runs: dict[str, str]) -> None:
    project = sg.settings.project
    assert [w["workflow_id"] for w in queries.workflows(sg.store, project_id=project, limit=2)] == [
        runs["nested"], runs["alpha-failed"],
    ]  # fmt: skip
    assert len(queries.workflows(sg.store, project_id=project, limit=1)) == 1
    # 2**32 + 1 wrapped around to a LIMIT of 1 in FalkorDB; 1.5 and True were taken as 1
    for bad in (0, -1, 2**32 + 1, queries.MAX_LIMIT + 1, 1.5, True, "5"):
        with pytest.raises(ValueError, match="limit"):
            queries.workflows(sg.store, limit=bad)
        with pytest.raises(ValueError, match="limit"):
            queries.abandoned(sg.store, limit=bad)
    assert len(queries.workflows(sg.store, project_id=project, limit=queries.MAX_LIMIT)) == 4
    for since in (2**63, -(2**63) - 1, 1.5, "0"):
        with pytest.raises(ValueError, match="since_ns"):
            queries.workflows(sg.store, since_ns=since)
    for age in (-1, float("nan"), float("inf"), 1e308, True):
        with pytest.raises(ValueError, match="older_than_s"):
            queries.abandoned(sg.store, older_than_s=age)


def test_tree(sg: spangraph.Spangraph, runs: dict[str, str]) -> None:
    (root,) = queries.tree(sg.store, runs["nested"])
    assert [(d, n.name) for d, n in root.walk()] == [(0, "nested"), (1, "outer"), (2, "inner")]
    (alpha,) = queries.tree(sg.store, runs["alpha"])
    assert [(d, n.name) for d, n in alpha.walk()] == [(0, "alpha"), (1, "a1")]
    spans = queries.workflow_spans(sg.store, runs["nested"])
    assert [s["name"] for s in spans] == ["nested", "outer", "inner"]


def test_a_workflow_started_inside_a_run_is_a_run_of_its_own(sg: spangraph.Spangraph) -> None:
    """A workflow function called inside a run's branch: its spans make a run of their
    own (in no branch of the outer run), and the outer run's tree shows its workflow
    span, in start order under the step that called it, as a leaf naming its run."""

    @spangraph.workflow("sub-agent")
    def sub_agent() -> None:
        with spangraph.step("sub-step"):
            pass

    with spangraph.workflow("outer") as outer, spangraph.branch("b"):
        with spangraph.step("before"):
            pass
        with spangraph.step("caller"):
            time.sleep(0.001)
            sub_agent()
            with spangraph.step("after"):
                pass
    flush()
    (root,) = queries.tree(sg.store, outer.workflow_id)
    walked = [(d, n.name, n.span["workflow_id"]) for d, n in root.walk()]
    (inner_id,) = {w for _, _, w in walked if w != outer.workflow_id}
    assert walked == [
        (0, "outer", outer.workflow_id),
        (1, "b", outer.workflow_id),
        (2, "before", outer.workflow_id),
        (2, "caller", outer.workflow_id),
        (3, "sub-agent", inner_id),
        (3, "after", outer.workflow_id),
    ]
    (inner,) = queries.tree(sg.store, inner_id)
    assert [(d, n.name) for d, n in inner.walk()] == [(0, "sub-agent"), (1, "sub-step")]
    assert {n.span["branch_id"] for _, n in inner.walk()} == {None}
    (branch,) = queries.branches(sg.store, outer.workflow_id)
    summary = queries.branch_summary(sg.store, branch["branch_id"])
    assert sorted(n["name"] for n in summary["nodes"]) == ["after", "b", "before", "caller"]
    # the other queries of the outer run keep to its own spans
    assert "sub-agent" not in {
        s["name"] for s in queries.workflow_spans(sg.store, outer.workflow_id)
    }


def test_a_workflow_span_of_another_instrumentation_inside_a_run_is_no_run(
    sg: spangraph.Spangraph, provider: TracerProvider
) -> None:
    """An OpenLLMetry ``@workflow`` (or a GenAI ``invoke_workflow`` span) inside a run
    takes the run's ids and a :Workflow label: the run list showed the run once more for
    each, and decision analytics could read such a span's state as the run's."""
    tracer = provider.get_tracer("openllmetry-like")
    with spangraph.workflow("outer-run") as run:
        for attributes in (
            {"traceloop.span.kind": "workflow"},
            {"gen_ai.operation.name": "invoke_workflow"},
        ) * 3:  # more than the 4 a run the list reads first: it reads on
            with tracer.start_as_current_span("inner-wf", attributes=attributes) as inner:
                inner.set_status(StatusCode.ERROR, "inner failed")
        with spangraph.decision("route-outer", options=["a", "b"]) as d:
            d.choose("a")
    flush()
    for limit in (100, 1):
        listed = queries.workflows(sg.store, project_id=sg.settings.project, limit=limit)
        assert [(w["name"], w["workflow_id"]) for w in listed] == [("outer-run", run.workflow_id)]
    kinds = {s["name"]: s["kind"] for s in queries.workflow_spans(sg.store, run.workflow_id)}
    assert kinds["inner-wf"] == "workflow"  # still a workflow node of the run
    [row] = queries.decision_analytics(sg.store, "route-outer", project_id=sg.settings.project)
    assert (row["chosen"], row["runs"], row["succeeded"]) == (1, 1, 1)


def test_path_to_root(sg: spangraph.Spangraph, runs: dict[str, str]) -> None:
    spans = {s["name"]: s for s in queries.workflow_spans(sg.store, runs["nested"])}
    path = queries.path_to_root(sg.store, spans["inner"]["span_id"])
    assert [(p["name"], p["kind"]) for p in path] == [
        ("nested", "workflow"), ("outer", "step"), ("inner", "step"),
    ]  # fmt: skip
    assert [p["span_id"] for p in path] == [
        spans["nested"]["span_id"], spans["outer"]["span_id"], spans["inner"]["span_id"],
    ]  # fmt: skip
    root_only = queries.path_to_root(sg.store, spans["nested"]["span_id"])
    assert [p["name"] for p in root_only] == ["nested"]


def test_workflow_events_in_time_order(sg: spangraph.Spangraph, runs: dict[str, str]) -> None:
    events = queries.workflow_events(sg.store, runs["nested"])
    assert [(e["span_name"], e["name"]) for e in events] == [
        ("nested", "workflow.started"),
        ("nested", "wf.first"),
        ("outer", "step.started"),
        ("outer", "outer.event"),
        ("inner", "step.started"),
        ("inner", "inner.event"),
        ("inner", "step.completed"),
        ("outer", "step.completed"),
        ("nested", "wf.last"),
        ("nested", "workflow.completed"),
    ]
    times = [e["time_ns"] for e in events]
    assert times == sorted(times)
    outer_event = next(e for e in events if e["name"] == "outer.event")
    assert outer_event["attributes"] == {"k": "v"} and outer_event["kind"] == "step"


def test_unknown_ids_give_empty_answers(sg: spangraph.Spangraph, runs: dict[str, str]) -> None:
    assert queries.tree(sg.store, "no-such-workflow") == []
    assert queries.workflow_spans(sg.store, "no-such-workflow") == []
    assert queries.path_to_root(sg.store, "ffffffffffffffff") == []
    assert queries.workflow_events(sg.store, "no-such-workflow") == []
    assert queries.workflows(sg.store, project_id="no-such-project") == []
    assert queries.workflows(sg.store, name="no-such-name") == []


def test_queries_on_an_empty_graph(store) -> None:
    """Nothing written yet (not even the schema): answers are empty, not errors."""
    store.delete_all()
    assert queries.workflows(store) == []
    assert queries.tree(store, "x") == []
    assert queries.path_to_root(store, "x") == []
    assert queries.workflow_events(store, "x") == []


def test_span_with_a_remote_parent(sg: spangraph.Spangraph, provider: TracerProvider) -> None:
    """A span whose parent was never written (a remote caller) becomes a root of the
    run's tree; the placeholder parent (ids only) stays in the graph, and is left out of
    paths as of trees (before: paths started at it, and diff shifted every path)."""
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    remote = SpanContext(trace_id=0x1234, span_id=0xABCD, is_remote=True, trace_flags=TraceFlags(1))
    tracer = provider.get_tracer("remote-child")
    with tracer.start_as_current_span(
        "child-of-remote",
        context=trace.set_span_in_context(NonRecordingSpan(remote)),
        attributes={"spangraph.workflow.id": "wf-orphan"},
    ):
        pass
    with spangraph.workflow("wf-orphan-run", workflow_id="wf-orphan"):
        pass
    flush()
    roots = {r.name: r for r in queries.tree(sg.store, "wf-orphan")}
    assert sorted(roots) == ["child-of-remote", "wf-orphan-run"]
    child = roots["child-of-remote"]
    assert child.span["parent_span_id"] == format(0xABCD, "016x")
    [placeholder] = sg.store.query(
        "MATCH (p:Span {span_id: $id}) RETURN p.name AS name, p.state AS state, "
        "p.trace_id AS trace_id",
        {"id": format(0xABCD, "016x")},
    )
    assert placeholder == {"name": None, "state": None, "trace_id": format(0x1234, "032x")}
    path = queries.path_to_root(sg.store, child.span["span_id"])
    assert [p["span_id"] for p in path] == [child.span["span_id"]]
    # diff compares the same spans tree() shows: not the placeholder
    entries = _diff.entries(queries.workflow_spans(sg.store, "wf-orphan"))
    assert sorted(e.span_id for e in entries) == sorted(
        n.span["span_id"] for root in roots.values() for _, n in root.walk()
    )


def test_a_workflow_under_a_parent_never_written_is_listed(sg: spangraph.Spangraph) -> None:
    """A run called by a remote service (its parent span in another process: only an
    id-only placeholder here, which takes the run's id) is a run of the list, as is one
    whose parent was left out by a sampler or written by no spangraph processor."""
    from opentelemetry import context, propagate

    carrier = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    token = context.attach(propagate.extract(carrier))
    try:
        with spangraph.workflow("called-remotely") as remote:
            pass
        with spangraph.workflow("called-again") as again:  # under the same remote span
            pass
    finally:
        context.detach(token)
    with spangraph.workflow("local") as local:
        pass
    flush()
    listed = [w["workflow_id"] for w in queries.workflows(sg.store, project_id=sg.settings.project)]
    assert listed == [local.workflow_id, again.workflow_id, remote.workflow_id]
    # the placeholder took the first run's id: the other run is no run started inside it
    for run, name in ((remote, "called-remotely"), (again, "called-again")):
        assert [r.name for r in queries.tree(sg.store, run.workflow_id)] == [name]


def test_walk_has_no_depth_limit() -> None:
    """TreeNode.walk goes depth-first without recursion: runs can nest thousands deep."""
    root = node = queries.TreeNode({"span_id": "0", "name": "s0"})
    for i in range(1, 5000):
        child = queries.TreeNode({"span_id": str(i), "name": f"s{i}"})
        node.children.append(child)
        node = child
    node.children.append(queries.TreeNode({"span_id": "leaf-b", "name": "b"}))
    node.children.insert(0, queries.TreeNode({"span_id": "leaf-a", "name": "a"}))
    walked = [(depth, n.name) for depth, n in root.walk()]
    assert walked[:2] == [(0, "s0"), (1, "s1")]
    assert walked[-3:] == [(4999, "s4999"), (5000, "a"), (5000, "b")]
    assert len(walked) == 5002


def test_path_to_root_with_span_ids_met_in_several_traces(sg: spangraph.Spangraph) -> None:
    """Span ids repeated across traces merge nodes, so a node can have several PARENT_OF
    edges in: following the edges met 2**levels paths (before: 40 levels never answered).
    The path follows each span's own ``parent_span_id``, as the tree does."""
    assert sg.store is not None
    levels = 40
    sg.store.execute_many(
        [
            (
                "UNWIND range(0, $levels) AS i\n"
                "CREATE (:Span {span_id: 'a' + toString(i), name: 'a' + toString(i), kind: 'step',\n"
                "               parent_span_id: CASE WHEN i = 0 THEN null ELSE 'a' + toString(i - 1) END})\n"
                "CREATE (:Span {span_id: 'b' + toString(i), name: 'b' + toString(i), kind: 'step'})",
                {"levels": levels},
            )
        ]
    )
    sg.store.execute_many(
        [
            (
                "UNWIND range(1, $levels) AS i\n"
                "MATCH (pa:Span {span_id: 'a' + toString(i - 1)}), (pb:Span {span_id: 'b' + toString(i - 1)}),\n"
                "      (a:Span {span_id: 'a' + toString(i)}), (b:Span {span_id: 'b' + toString(i)})\n"
                "CREATE (pa)-[:PARENT_OF]->(a), (pb)-[:PARENT_OF]->(a),\n"
                "       (pa)-[:PARENT_OF]->(b), (pb)-[:PARENT_OF]->(b)",
                {"levels": levels},
            )
        ]
    )
    path = queries.path_to_root(sg.store, f"a{levels}")
    assert [p["span_id"] for p in path] == [f"a{i}" for i in range(levels + 1)]


def test_path_to_root_of_a_deep_chain(sg: spangraph.Spangraph) -> None:
    """Deeper than one round trip walks (the walk goes a few levels a statement)."""
    assert sg.store is not None
    depth = 300
    sg.store.execute_many(
        [
            (
                "UNWIND range(0, $depth) AS i\n"
                "CREATE (:Span {span_id: 'd' + toString(i), name: 's' + toString(i), kind: 'step',\n"
                "               parent_span_id: CASE WHEN i = 0 THEN 'gone' ELSE 'd' + toString(i - 1) END})",
                {"depth": depth},
            )
        ]
    )
    path = queries.path_to_root(sg.store, f"d{depth}")
    assert [p["span_id"] for p in path] == [f"d{i}" for i in range(depth + 1)]
    assert path[0] == {
        "span_id": "d0",
        "name": "s0",
        "kind": "step",
        "state": None,
        "trace_id": None,
    }


def test_what_an_id_names(sg: spangraph.Spangraph) -> None:
    """run_exists, run_of and decision_names: what the command line tells of an id that
    names no run (a span, trace or branch id of one) or of a decision name."""

    @spangraph.workflow("sub-agent")
    def sub_agent() -> None:
        with spangraph.step("sub-step"):
            pass

    with spangraph.workflow("outer") as outer:
        with spangraph.branch("b") as branch, spangraph.step("s") as step:
            pass
        with spangraph.decision("Route", options=["a"]) as d:
            d.choose("a")
        with spangraph.step("caller"):
            sub_agent()
    flush()
    store = sg.store
    assert queries.run_exists(store, outer.workflow_id)
    assert not queries.run_exists(store, "no-such-run")
    assert not queries.run_exists(store, outer.workflow_id.upper())
    trace_id = queries.node(store, outer.span_id)["trace_id"]
    parent = queries.node(store, step.span_id)["parent_span_id"]
    assert parent is not None
    assert queries.run_of(store, step.span_id) == (
        "span",
        {"workflow_id": outer.workflow_id, "name": "s", "kind": "step", "parent_span_id": parent},
    )
    # a trace holds the sub-agent's run too: the run that started first, the outer one
    # (its top span: no parent)
    assert queries.run_of(store, trace_id) == (
        "trace",
        {"workflow_id": outer.workflow_id, "name": "outer", "kind": "workflow",
         "parent_span_id": None},
    )  # fmt: skip
    assert queries.run_of(store, branch.branch_id) == (
        "branch",
        {"workflow_id": outer.workflow_id, "name": "b", "kind": "branch",
         "parent_span_id": outer.span_id},
    )  # fmt: skip
    assert queries.run_of(store, "no-such-id") is None
    assert queries.decision_names(store, "route") == ["Route"]
    assert queries.decision_names(store, "Route") == ["Route"]
    assert queries.decision_names(store, "nope") == []


def test_an_agent_framework_s_run_without_a_workflow_is_listed(
    sg: spangraph.Spangraph, provider: TracerProvider
) -> None:
    """An agent framework that records its own spans (pydantic-ai's ``invoke_agent``,
    OpenInference's ``AGENT``), run without ``spangraph.workflow`` around it, made runs
    no list showed: its root agent span is a run (its id: the trace id). An agent inside
    a run is not one of its own."""
    tracer = provider.get_tracer("framework")
    project = {sc.PROJECT_ID: sg.settings.project}
    with (
        tracer.start_as_current_span(
            "invoke_agent weather_agent",
            attributes={"gen_ai.operation.name": "invoke_agent", **project},
        ) as root,
        tracer.start_as_current_span(
            "chat gpt-4o-mini", attributes={"gen_ai.operation.name": "chat", **project}
        ),
    ):
        pass
    time.sleep(0.002)
    with (
        spangraph.workflow("wrapped") as run,
        tracer.start_as_current_span(
            "weather_agent.run", attributes={"openinference.span.kind": "AGENT", **project}
        ),
    ):
        pass
    time.sleep(0.002)
    with tracer.start_as_current_span(
        "Agent workflow", attributes={"openinference.span.kind": "AGENT", **project}
    ):
        failing = trace.get_current_span()
        failing.set_status(StatusCode.ERROR, "boom")
    time.sleep(0.002)
    # a LangChain or LlamaIndex run: its top span a chain (a step below a parent)
    with (
        tracer.start_as_current_span(
            "AgentWorkflow.run", attributes={"openinference.span.kind": "CHAIN", **project}
        ) as chain,
        tracer.start_as_current_span(
            "FunctionAgent.take_step",
            attributes={"openinference.span.kind": "CHAIN", **project},
        ),
    ):
        pass
    flush()
    listed = queries.workflows(sg.store, project_id=sg.settings.project)
    chain_run = format(chain.get_span_context().trace_id, "032x")
    assert (listed[0]["name"], listed[0]["kind"], listed[0]["workflow_id"]) == (
        "AgentWorkflow.run", "workflow", chain_run
    )  # fmt: skip
    assert [(n.name, n.span["kind"]) for _, n in queries.tree(sg.store, chain_run)[0].walk()] == [
        ("AgentWorkflow.run", "workflow"),
        ("FunctionAgent.take_step", "step"),
    ]
    listed = listed[1:]
    assert [(r["name"], r["kind"], r["state"]) for r in listed] == [
        ("Agent workflow", "agent", "failed"),
        ("wrapped", "workflow", "completed"),
        ("invoke_agent weather_agent", "agent", "completed"),
    ]
    trace_id = format(root.get_span_context().trace_id, "032x")
    assert listed[2]["workflow_id"] == trace_id  # the tree of that id is the run
    assert [n.span["name"] for n in queries.tree(sg.store, trace_id)] == [
        "invoke_agent weather_agent"
    ]
    assert run.workflow_id == listed[1]["workflow_id"]
    # the filters hold for them too; the limit counts them
    assert [
        r["name"]
        for r in queries.workflows(sg.store, state="failed", project_id=sg.settings.project)
    ] == ["Agent workflow"]
    assert [
        r["name"]
        for r in queries.workflows(
            sg.store, name_contains="WEATHER", project_id=sg.settings.project
        )
    ] == ["invoke_agent weather_agent"]
    assert len(queries.workflows(sg.store, limit=2, project_id=sg.settings.project)) == 2
