"""Queries about decisions, branches, monitors, replay, decision analytics and abandoned
spans, with exact answers for runs made with the SDK into a real graph."""

from __future__ import annotations

import contextlib
import time
import uuid
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider

import spangraph
from spangraph import _state, queries
from spangraph import semconv as sc
from spangraph.mapping import unexplored_option_id


class Boom(Exception):
    pass


def flush() -> None:
    assert spangraph.flush(10)


def store(sg: spangraph.Spangraph) -> Any:
    assert sg.store is not None
    return sg.store


# -- decisions --------------------------------------------------------------------------


def test_decisions(sg: spangraph.Spangraph) -> None:
    with spangraph.workflow("wf") as run:
        with spangraph.decision("model", options=["fast", "slow", "cheap"]) as d1:
            with d1.option("fast") as fast:
                pass
            with d1.option("cheap") as cheap:
                pass
            d1.choose("cheap", reason="lowest cost", score=0.8)
        with spangraph.branch("b") as b, spangraph.decision("tone", options=["x", "y"]) as d2:
            pass
        with spangraph.decision("retry?", options=["yes", "no"]) as d3:
            d3.choose("no", score=1)
    flush()
    found = queries.decisions(store(sg), run.workflow_id)
    assert [x["name"] for x in found] == ["model", "tone", "retry?"]
    first, second, third = found
    assert first == {
        "span_id": d1.span_id,
        "name": "model",
        "state": "completed",
        "branch_id": None,
        "start_ns": first["start_ns"],
        "options": [
            {"name": "fast", "state": "completed", "span_id": fast.span_id, "explored": True,
             "chosen": False},
            {"name": "slow", "state": "unexplored",
             "span_id": unexplored_option_id(d1.span_id, "slow"), "explored": False,
             "chosen": False},
            {"name": "cheap", "state": "completed", "span_id": cheap.span_id, "explored": True,
             "chosen": True},
        ],
        "chosen": "cheap",
        "reason": "lowest cost",
        "score": 0.8,
    }  # fmt: skip
    assert isinstance(first["start_ns"], int)
    assert first["start_ns"] < second["start_ns"] < third["start_ns"]
    assert second["span_id"] == d2.span_id
    assert second["branch_id"] == b.branch_id
    assert second["chosen"] is None and second["reason"] is None and second["score"] is None
    assert [(o["name"], o["explored"], o["chosen"], o["state"]) for o in second["options"]] == [
        ("x", False, False, "unexplored"),
        ("y", False, False, "unexplored"),
    ]
    assert third["chosen"] == "no" and third["score"] == 1.0 and third["reason"] is None
    assert [(o["name"], o["chosen"]) for o in third["options"]] == [("yes", False), ("no", True)]


# -- branches and monitors --------------------------------------------------------------


@pytest.fixture
def branched(sg: spangraph.Spangraph) -> dict[str, Any]:
    """One run with three branches (good; bad with a failed step it survives; crash that
    fails itself) and a review branch monitoring good."""
    out: dict[str, Any] = {}
    with spangraph.workflow("wf") as run:
        with spangraph.branch("good") as good:
            with spangraph.step("s1"):
                spangraph.event("note", n=1)
            with spangraph.step("s2"):
                pass
        with spangraph.branch("bad") as bad:
            with spangraph.step("ok"):
                pass
            with contextlib.suppress(Boom), spangraph.step("boom"):
                raise Boom("step failed")
        with contextlib.suppress(Boom), spangraph.branch("crash") as crash, spangraph.step("fatal"):
            raise Boom("branch failed")
        with (
            spangraph.branch("review") as review,
            spangraph.monitor(good) as mon,
            spangraph.step("check"),
        ):
            pass
        with spangraph.step("outside"):
            pass
    flush()
    out.update(run=run, good=good, bad=bad, crash=crash, review=review, monitor=mon)
    return out


def test_branches(sg: spangraph.Spangraph, branched: dict[str, Any]) -> None:
    rows = queries.branches(store(sg), branched["run"].workflow_id)
    summary = [
        (r["name"], r["branch_id"], r["span_id"], r["state"], r["nodes"], r["failed"]) for r in rows
    ]
    assert summary == [
        ("good", branched["good"].branch_id, branched["good"].span_id, "completed", 3, 0),
        ("bad", branched["bad"].branch_id, branched["bad"].span_id, "completed", 3, 1),
        ("crash", branched["crash"].branch_id, branched["crash"].span_id, "failed", 2, 2),
        ("review", branched["review"].branch_id, branched["review"].span_id, "completed", 3, 0),
    ]
    starts = [r["start_ns"] for r in rows]
    assert starts == sorted(starts)
    assert all(isinstance(r["duration_ms"], float) and r["duration_ms"] >= 0 for r in rows)


def test_branch_summary(sg: spangraph.Spangraph, branched: dict[str, Any]) -> None:
    good = queries.branch_summary(store(sg), branched["good"].branch_id)
    assert good is not None
    assert good["branch_id"] == branched["good"].branch_id
    assert good["name"] == "good"
    assert good["workflow_id"] == branched["run"].workflow_id
    assert good["state"] == "completed"
    assert good["duration_ms"] >= 0
    assert good["states"] == {"completed": 3}
    assert [(n["name"], n["kind"], n["events"]) for n in good["nodes"]] == [
        ("good", "branch", []),
        ("s1", "step", ["step.started", "note", "step.completed"]),
        ("s2", "step", ["step.started", "step.completed"]),
    ]
    starts = [n["start_ns"] for n in good["nodes"]]
    assert starts == sorted(starts)
    assert isinstance(good["nodes"][1]["attributes"], dict)

    bad = queries.branch_summary(store(sg), branched["bad"].branch_id)
    assert bad is not None
    assert bad["states"] == {"completed": 2, "failed": 1}
    assert [(n["name"], n["state"], n["events"]) for n in bad["nodes"]] == [
        ("bad", "completed", []),
        ("ok", "completed", ["step.started", "step.completed"]),
        ("boom", "failed", ["step.started", "exception", "step.failed"]),
    ]
    crash = queries.branch_summary(store(sg), branched["crash"].branch_id)
    assert crash is not None
    assert (crash["state"], crash["states"]) == ("failed", {"failed": 2})
    assert queries.branch_summary(store(sg), "no-such-branch") is None


def test_monitors(sg: spangraph.Spangraph, branched: dict[str, Any]) -> None:
    rows = queries.monitors(store(sg), branched["run"].workflow_id)
    assert rows == [
        {
            "monitor_span_id": branched["monitor"].span_id,
            "monitor": "monitor good",
            "monitor_branch_id": branched["review"].branch_id,
            "target_span_id": branched["good"].span_id,
            "target": "good",
            "target_kind": "branch",
            "target_branch_id": branched["good"].branch_id,
            "monitor_trace_id": branched["monitor"].trace_id,
            "target_trace_id": branched["good"].trace_id,
        }
    ]


def test_monitor_of_a_step_in_another_run(sg: spangraph.Spangraph) -> None:
    with spangraph.workflow("producer"), spangraph.step("produce") as target:
        pass
    with spangraph.workflow("watcher") as run, spangraph.monitor(target.ref, name="watch"):
        pass
    flush()
    (row,) = queries.monitors(store(sg), run.workflow_id)
    assert (row["monitor"], row["target"], row["target_kind"]) == ("watch", "produce", "step")
    assert row["monitor_branch_id"] is None and row["target_branch_id"] is None
    assert row["target_trace_id"] == target.trace_id != row["monitor_trace_id"]


# -- replay -----------------------------------------------------------------------------


def test_replay_simple_run_exactly(sg: spangraph.Spangraph) -> None:
    with spangraph.workflow("wf") as run, spangraph.step("s") as s:
        spangraph.event("hello", who="world")
    flush()
    messages = queries.replay(store(sg), run.workflow_id)
    assert [(m["seq"], m["type"], m["name"]) for m in messages] == [
        (1, "span.started", "wf"),
        (2, "workflow.started", "wf"),
        (3, "span.started", "s"),
        (4, "step.started", "s"),
        (5, "hello", "s"),
        (6, "step.completed", "s"),
        (7, "span.ended", "s"),
        (8, "workflow.completed", "wf"),
        (9, "span.ended", "wf"),
    ]
    assert messages[4]["attributes"] == {"who": "world"}
    assert messages[4]["span_id"] == s.span_id
    assert messages[4]["parent_span_id"] == run.span_id
    assert messages[6]["attributes"]["state"] == "completed"
    assert messages[6]["attributes"]["duration_ms"] >= 0
    assert all(m["workflow_id"] == run.workflow_id for m in messages)
    assert all(m["project_id"] == sg.settings.project for m in messages)
    assert all(m["trace_id"] == run.trace_id for m in messages)


def test_replay_rich_run(sg: spangraph.Spangraph) -> None:
    with spangraph.workflow("wf") as run:
        with spangraph.decision("d", options=["a", "b"]) as d:
            with d.option("a"):
                pass
            d.choose("a")
        with spangraph.branch("br"), spangraph.llm("m") as call:
            for t in "stream":
                call.token(t)
        with contextlib.suppress(Boom), spangraph.step("fails"):
            raise Boom("x")
    flush()
    messages = queries.replay(store(sg), run.workflow_id)
    assert [m["seq"] for m in messages] == list(range(1, len(messages) + 1))
    assert (messages[0]["type"], messages[0]["span_id"]) == ("span.started", run.span_id)
    assert (messages[-1]["type"], messages[-1]["span_id"]) == ("span.ended", run.span_id)
    times = [m["time_unix_nano"] for m in messages]
    assert times == sorted(times)
    types = [m["type"] for m in messages]
    assert "token" not in types
    assert types.count("llm.complete") == 1
    # unexplored option "b" is not a span that ran: 6 spans, started and ended once each
    assert types.count("span.started") == types.count("span.ended") == 6
    assert unexplored_option_id(d.span_id, "b") not in {m["span_id"] for m in messages}
    events = [m for m in messages if m["type"] not in ("span.started", "span.ended")]
    assert [m["type"] for m in events] == [
        "workflow.started",
        "llm.complete",
        "step.started",
        "exception",
        "step.failed",
        "workflow.completed",
    ]
    (complete,) = [m for m in events if m["type"] == "llm.complete"]
    assert complete["attributes"]["message"] == "stream"
    assert complete["span_id"] == call.span_id
    ended = {m["name"]: m["attributes"]["state"] for m in messages if m["type"] == "span.ended"}
    assert ended == {
        "wf": "completed",
        "d": "completed",
        "a": "completed",
        "br": "completed",
        "chat m": "completed",
        "fails": "failed",
    }


def test_replay_orders_ties_started_event_ended(
    sg: spangraph.Spangraph, provider: TracerProvider
) -> None:
    # spans from another instrumentation, with their own (equal) timestamps
    tracer = provider.get_tracer("elsewhere")
    t = time.time_ns()
    ids = {sc.WORKFLOW_ID: "wf-ties", sc.KIND: sc.KIND_WORKFLOW}
    root = tracer.start_span("root", start_time=t, attributes=ids)
    root.add_event("at start", timestamp=t)
    root.add_event("at end", timestamp=t + 5)
    root.end(end_time=t + 5)
    flush()
    messages = queries.replay(store(sg), "wf-ties")
    assert [(m["seq"], m["type"], m["time_unix_nano"]) for m in messages] == [
        (1, "span.started", t),
        (2, "at start", t),
        (3, "at end", t + 5),
        (4, "span.ended", t + 5),
    ]


# -- decision analytics -----------------------------------------------------------------


def test_decisions_of_an_open_decision_show_the_options_explored_so_far(
    sg: spangraph.Spangraph,
) -> None:
    """Its OPTION_OF edges come when the decision ends: before, an option explored while
    it was open (or before its process died) was given as unexplored."""
    assert sg.store is not None
    with spangraph.workflow("wf") as run, spangraph.decision("route", options=["a", "b"]) as d:
        with d.option("a"):
            pass
        assert spangraph.flush(10)
        [open_decision] = queries.decisions(sg.store, run.workflow_id)
        assert [(o["name"], o["state"], o["explored"]) for o in open_decision["options"]] == [
            ("a", "completed", True),
            ("b", None, False),
        ]
        d.choose("a")
    assert spangraph.flush(10)
    [ended] = queries.decisions(sg.store, run.workflow_id)
    assert [(o["name"], o["explored"], o["chosen"]) for o in ended["options"]] == [
        ("a", True, True),
        ("b", False, False),
    ]


def test_an_option_explored_twice_is_the_one_the_decision_names(
    sg: spangraph.Spangraph,
) -> None:
    """A retried option: before, the decision named its first exploration, and the chosen
    option was reported failed (its first attempt) after a retry that completed."""
    assert sg.store is not None
    with spangraph.workflow("wf") as run, spangraph.decision("route", options=["a", "b"]) as d:
        with contextlib.suppress(Boom), d.option("a", attempt=1):
            raise Boom
        with d.option("a", attempt=2) as last:
            pass
        assert spangraph.flush(10)
        # open: no OPTION_OF edges yet, the decision's Option children count
        [open_decision] = queries.decisions(sg.store, run.workflow_id)
        [a] = [o for o in open_decision["options"] if o["name"] == "a"]
        assert (a["span_id"], a["state"]) == (last.span_id, "completed")
        d.choose("a")
    assert spangraph.flush(10)
    [decision] = queries.decisions(sg.store, run.workflow_id)
    [a] = [o for o in decision["options"] if o["name"] == "a"]
    # the last exploration, as the decision records it, whatever order the store gives
    assert (a["span_id"], a["state"], a["chosen"]) == (last.span_id, "completed", True)
    [edge] = sg.store.query(
        "MATCH (:Decision {span_id: $d})-[:CHOSEN_OPTION]->(o) RETURN o.span_id AS id",
        {"d": decision["span_id"]},
    )
    assert edge["id"] == last.span_id


def test_decision_analytics(sg: spangraph.Spangraph, monkeypatch: pytest.MonkeyPatch) -> None:
    def run(choice: str, *, fail: bool = False, pause: float = 0.0) -> str:
        with contextlib.suppress(Boom), spangraph.workflow("agent") as wf:
            with spangraph.decision("pick", options=["a", "b", "c"]) as d:
                if choice == "a":
                    with d.option("a"):
                        pass
                d.choose(choice)
            time.sleep(pause)
            if fail:
                raise Boom("run failed")
        return wf.workflow_id

    a_runs = [run("a", pause=0.002), run("a", pause=0.006), run("a", fail=True, pause=0.004)]
    b_runs = [run("b", pause=0.003)]
    with spangraph.workflow("agent"), spangraph.decision("other", options=["a"]) as d:
        d.choose("a")  # another decision name: not counted
    monkeypatch.setattr(_state, "project", "another-project")
    elsewhere = run("b")
    monkeypatch.undo()
    flush()

    durations = {
        w["workflow_id"]: w["duration_ms"]
        for w in queries.workflows(store(sg), name="agent", limit=100)
    }
    assert set(a_runs + b_runs + [elsewhere]) <= set(durations)

    def mean(ids: list[str]) -> float:
        return sum(durations[i] for i in ids) / len(ids)

    project = sg.settings.project
    rows = queries.decision_analytics(store(sg), "pick", project_id=project)
    assert [(r["option"], r["chosen"], r["succeeded"], r["success_rate"]) for r in rows] == [
        ("a", 3, 2, 0.6667),
        ("b", 1, 1, 1.0),
    ]
    assert rows[0]["mean_duration_ms"] == pytest.approx(mean(a_runs), abs=0.002)
    assert rows[1]["mean_duration_ms"] == pytest.approx(mean(b_runs), abs=0.002)

    everywhere = queries.decision_analytics(store(sg), "pick")
    assert [(r["option"], r["chosen"], r["succeeded"]) for r in everywhere] == [
        ("a", 3, 2),
        ("b", 2, 2),
    ]
    assert everywhere[1]["mean_duration_ms"] == pytest.approx(mean([*b_runs, elsewhere]), abs=0.002)
    only_elsewhere = queries.decision_analytics(store(sg), "pick", project_id="another-project")
    assert [(r["option"], r["chosen"]) for r in only_elsewhere] == [("b", 1)]
    assert queries.decision_analytics(store(sg), "no such decision") == []
    assert queries.decision_analytics(store(sg), "pick", project_id="nobody") == []


def test_decision_analytics_counts_a_decision_once_when_a_run_id_is_used_again(
    sg: spangraph.Spangraph,
) -> None:
    """Two runs given the same ``workflow_id`` (allowed: each is a run of its own): each
    decision matched every Workflow node of that id, so 2 choices counted 4, and the
    success rate and mean duration mixed the runs."""
    workflow_id = f"again-{uuid.uuid4().hex[:8]}"
    for fail in (False, True):
        with contextlib.suppress(Boom), spangraph.workflow("agent", workflow_id=workflow_id):
            with spangraph.decision("pick-again", options=["x", "y"]) as d:
                d.choose("x")
            if fail:
                raise Boom("second run failed")
    flush()
    [row] = queries.decision_analytics(store(sg), "pick-again", project_id=sg.settings.project)
    assert (row["option"], row["chosen"], row["succeeded"]) == ("x", 2, 1)
    assert row["success_rate"] == 0.5


def test_decision_analytics_counts_a_choice_made_outside_any_workflow(
    sg: spangraph.Spangraph,
) -> None:
    """A decision with no workflow around it (its run is its trace) was left out: its
    option was not counted as chosen at all. It counts as chosen, in no run; the success
    rate and mean duration are those of the runs."""
    with spangraph.decision("pick-loose", options=["x", "y"]) as d:
        d.choose("y")
    with spangraph.workflow("agent"), spangraph.decision("pick-loose", options=["x", "y"]) as d:
        d.choose("y")
    with spangraph.decision("pick-loose", options=["x", "y"]) as d:
        d.choose("x")
    flush()
    rows = queries.decision_analytics(store(sg), "pick-loose", project_id=sg.settings.project)
    assert [
        (r["option"], r["chosen"], r["runs"], r["succeeded"], r["success_rate"]) for r in rows
    ] == [("y", 2, 1, 1, 1.0), ("x", 1, 0, 0, None)]
    assert rows[1]["mean_duration_ms"] is None


def test_decision_analytics_leaves_runs_still_running_out_of_the_success_rate(
    sg: spangraph.Spangraph,
) -> None:
    """Before, a run still running (or whose process died) counted as one that failed:
    2 completed runs and 1 running gave a success rate of 0.67 and integers came back
    as floats on FalkorDB."""
    for _ in range(2):
        with spangraph.workflow("agent"), spangraph.decision("pick-open", options=["x"]) as d:
            d.choose("x")
    with spangraph.workflow("agent"):
        with spangraph.decision("pick-open", options=["x"]) as d:
            d.choose("x")
        flush()  # the decision has ended, its run still runs
        [row] = queries.decision_analytics(store(sg), "pick-open", project_id=sg.settings.project)
    assert (row["chosen"], row["runs"], row["succeeded"], row["running"]) == (3, 3, 2, 1)
    assert row["success_rate"] == 1.0
    assert all(type(row[k]) is int for k in ("chosen", "runs", "succeeded", "running"))
    flush()
    [row] = queries.decision_analytics(store(sg), "pick-open", project_id=sg.settings.project)
    assert (row["succeeded"], row["running"], row["success_rate"]) == (3, 0, 1.0)


# -- abandoned --------------------------------------------------------------------------


def test_abandoned(sg: spangraph.Spangraph, provider: TracerProvider) -> None:
    project = sg.settings.project
    with spangraph.workflow("finished"):
        pass
    # a span whose process "died": started (and written) but never ended
    stuck = _state.tracer.start_span(
        "stuck", attributes={sc.KIND: sc.KIND_STEP, sc.PROJECT_ID: project}
    )
    stuck_id = format(stuck.get_span_context().span_id, "016x")
    flush()
    future = time.time_ns() + 60 * 10**9
    found = queries.abandoned(store(sg), older_than_s=0, now_ns=future)
    assert [(s["span_id"], s["name"], s["state"], s["kind"]) for s in found] == [
        (stuck_id, "stuck", "running", "step")
    ]
    assert isinstance(found[0]["attributes"], dict)
    assert found[0]["end_ns"] is None
    assert [s["span_id"] for s in queries.abandoned(store(sg), older_than_s=0, now_ns=future,
                                                    project_id=project)] == [stuck_id]  # fmt: skip
    assert queries.abandoned(store(sg), older_than_s=0, now_ns=future, project_id="x") == []
    assert queries.abandoned(store(sg), older_than_s=3600) == []
    assert queries.abandoned(store(sg), older_than_s=0, now_ns=0) == []
    with pytest.raises(ValueError, match="older_than_s"):
        queries.abandoned(store(sg), older_than_s=-1)
    with pytest.raises(ValueError, match="limit"):
        queries.abandoned(store(sg), limit=0)

    stuck.end()  # the process came back after all
    flush()
    assert queries.abandoned(store(sg), older_than_s=0, now_ns=future) == []


def test_abandoned_limit_and_order(sg: spangraph.Spangraph) -> None:
    spans = []
    for i in range(3):
        spans.append(_state.tracer.start_span(f"stuck-{i}", attributes={sc.KIND: sc.KIND_STEP}))
        time.sleep(0.001)
    flush()
    future = time.time_ns() + 10**9
    assert [s["name"] for s in queries.abandoned(store(sg), older_than_s=0, now_ns=future)] == [
        "stuck-0",
        "stuck-1",
        "stuck-2",
    ]
    two = queries.abandoned(store(sg), older_than_s=0, now_ns=future, limit=2)
    assert [s["name"] for s in two] == ["stuck-0", "stuck-1"]
    for span in spans:
        span.end()


# -- unknown ids and filters ------------------------------------------------------------


def _assert_all_empty(s: Any) -> None:
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    assert queries.decisions(s, missing) == []
    assert queries.branches(s, missing) == []
    assert queries.branch_summary(s, missing) is None
    assert queries.monitors(s, missing) == []
    assert queries.replay(s, missing) == []
    assert queries.decision_analytics(s, missing) == []
    assert queries.tree(s, missing) == []
    assert queries.workflow_spans(s, missing) == []
    assert queries.workflow_events(s, missing) == []
    assert queries.path_to_root(s, "0123456789abcdef") == []
    assert queries.workflows(s, project_id=missing) == []
    assert queries.abandoned(s, older_than_s=0, project_id=missing) == []
    diff = queries.diff(s, missing, missing + "x")
    assert diff["first_divergence"] is None
    assert (diff["only_in_a"], diff["only_in_b"], diff["durations"]) == ([], [], [])
    assert queries.diff(s, missing, missing, branches=True)["durations"] == []


def test_unknown_ids_on_an_empty_graph(sg: spangraph.Spangraph) -> None:
    _assert_all_empty(store(sg))


def test_unknown_ids_on_a_populated_graph(
    sg: spangraph.Spangraph, branched: dict[str, Any]
) -> None:
    _assert_all_empty(store(sg))


def test_project_filter_of_workflows(
    sg: spangraph.Spangraph, monkeypatch: pytest.MonkeyPatch
) -> None:
    with spangraph.workflow("mine") as mine:
        pass
    monkeypatch.setattr(_state, "project", "theirs")
    with spangraph.workflow("theirs") as theirs:
        pass
    monkeypatch.undo()
    flush()
    project = sg.settings.project
    assert [w["workflow_id"] for w in queries.workflows(store(sg), project_id=project)] == [
        mine.workflow_id
    ]
    assert [w["workflow_id"] for w in queries.workflows(store(sg), project_id="theirs")] == [
        theirs.workflow_id
    ]
    assert len(queries.workflows(store(sg))) == 2


def test_branches_count_only_the_runs_own_nodes(sg: spangraph.Spangraph) -> None:
    runs = []
    for fail in (False, True):
        with (
            contextlib.suppress(Boom),
            spangraph.workflow("wf") as run,
            spangraph.branch("retrieval", branch_id="retrieval"),
            spangraph.step("s"),
        ):
            if fail:
                raise Boom("second run fails")
        runs.append(run)
    flush()
    (first,) = queries.branches(store(sg), runs[0].workflow_id)
    assert (first["nodes"], first["failed"]) == (2, 0)


def test_a_branch_id_given_to_several_branches_of_a_run_counts_each_ones_spans(
    sg: spangraph.Spangraph,
) -> None:
    """A loop giving each pass's branch the same id: each branch counted every span of
    that id in the run (4 and 4 for 2 and 2), its failures too."""
    with spangraph.workflow("wf") as run:
        for i in range(2):
            with contextlib.suppress(Boom), spangraph.branch(f"pass-{i}", branch_id="loop"):
                with spangraph.step("s"):
                    pass
                with spangraph.branch("inner"), spangraph.step("elsewhere"):
                    pass  # another branch inside: its spans are not this one's
                if i == 1:
                    with spangraph.step("fails"):
                        raise Boom("second pass fails")
    flush()
    rows = queries.branches(store(sg), run.workflow_id)
    loops = [(r["name"], r["nodes"], r["failed"]) for r in rows if r["branch_id"] == "loop"]
    assert loops == [("pass-0", 2, 0), ("pass-1", 3, 2)]
    [inner, _] = [r for r in rows if r["name"] == "inner"]
    assert inner["nodes"] == 2  # the inner branch and its step


def test_the_tree_shows_options_never_explored_after_the_explored_ones(
    sg: spangraph.Spangraph,
) -> None:
    """An option never explored carries its decision's start: it came first among its
    siblings in the tree (the CLI's and the API's), where the web UI shows it last."""
    with (
        spangraph.workflow("wf") as run,
        spangraph.decision("model", options=["never", "fast", "slow"]) as d,
    ):
        with d.option("slow"):
            pass
        with d.option("fast"):
            pass
        d.choose("fast")
    flush()
    (root,) = queries.tree(store(sg), run.workflow_id)
    assert [(depth, n.name) for depth, n in root.walk()] == [
        (0, "wf"), (1, "model"), (2, "slow"), (2, "fast"), (2, "never"),
    ]  # fmt: skip


def test_branch_nodes_leave_out_unexplored_options(sg: spangraph.Spangraph) -> None:
    with (
        spangraph.workflow("wf") as run,
        spangraph.branch("b"),
        spangraph.decision("d", options=["a", "b", "c"]) as d,
    ):
        d.choose("a")
    flush()
    (row,) = queries.branches(store(sg), run.workflow_id)
    assert row["nodes"] == 2  # the branch and the decision
    # the summary lists the same nodes (before: the two options never explored too)
    summary = queries.branch_summary(store(sg), row["branch_id"])
    assert summary is not None
    assert [n["name"] for n in summary["nodes"]] == ["b", "d"]
    assert summary["states"] == {"completed": 2}


# -- decisions: nested, from plain OTel, with options that are not text ------------------


def test_a_decision_nested_in_another_lists_only_its_own_options(
    sg: spangraph.Spangraph,
) -> None:
    """An option of the outer decision explored inside the inner one is the inner's child
    span: once the inner has ended, its options are the ones its OPTION_OF edges name
    (before, its PARENT_OF children were read too and it listed the outer's option)."""
    assert sg.store is not None
    with spangraph.workflow("wf") as run, spangraph.decision("outer", options=["a", "b"]) as outer:
        with spangraph.decision("inner", options=["x", "y"]) as inner:
            with outer.option("a"):
                pass
            inner.choose("y")
        outer.choose("a")
    flush()
    found = {d["name"]: d for d in queries.decisions(sg.store, run.workflow_id)}
    assert [(o["name"], o["explored"], o["chosen"]) for o in found["inner"]["options"]] == [
        ("x", False, False),
        ("y", False, True),
    ]
    assert [(o["name"], o["explored"], o["chosen"]) for o in found["outer"]["options"]] == [
        ("a", True, True),
        ("b", False, False),
    ]
    assert inner.span_id != outer.span_id


def _plain_otel_decision(provider: TracerProvider, workflow_id: str, options: Any) -> None:
    """A decision made with the OTel SDK alone (as an OTLP client sends one): options
    offered in an attribute, the explored ones as child spans, the chosen one by a span
    link of type chosen_option, and no ``spangraph.decision.option_span_ids``."""
    from opentelemetry import trace

    tracer = provider.get_tracer("plain-otel")
    common = {sc.WORKFLOW_ID: workflow_id}
    with (
        tracer.start_as_current_span("run", attributes={**common, sc.KIND: sc.KIND_WORKFLOW}),
        tracer.start_as_current_span(
            "route",
            attributes={**common, sc.KIND: sc.KIND_DECISION, sc.DECISION_OPTIONS: options},
        ) as decision,
    ):
        first = options[0] if isinstance(options, list) else options
        with tracer.start_as_current_span(
            str(first).lower(), attributes={**common, sc.KIND: sc.KIND_OPTION}
        ) as explored:
            pass
        link = trace.Link(explored.get_span_context(), {sc.LINK_TYPE: sc.LINK_CHOSEN_OPTION})
        decision.add_link(link.context, link.attributes)
        decision.set_attribute(sc.DECISION_CHOSEN, first)


def test_a_decision_from_plain_otel_with_a_chosen_option_link(
    sg: spangraph.Spangraph, provider: TracerProvider
) -> None:
    """Before: listed twice (two CHOSEN_OPTION edges: to the explored span and to a node
    made for the option as if unexplored), the explored option shown unexplored, and
    decision analytics counted the choice twice."""
    assert sg.store is not None
    _plain_otel_decision(provider, "wf-plain", ["fast", "slow"])
    flush()
    [decision] = queries.decisions(sg.store, "wf-plain")
    assert decision["chosen"] == "fast"
    assert [(o["name"], o["explored"], o["chosen"]) for o in decision["options"]] == [
        ("fast", True, True),
        ("slow", False, False),
    ]
    assert queries.decision_analytics(sg.store, "route")[0]["chosen"] == 1


def test_options_that_are_not_text_have_one_name(
    sg: spangraph.Spangraph, provider: TracerProvider
) -> None:
    """Options offered as booleans (an OTLP bool array): the graph's option nodes and the
    queries name them alike, as JSON text (before: nodes "True"/"False" beside the
    offered "true"/"false", four options)."""
    assert sg.store is not None
    _plain_otel_decision(provider, "wf-bools", [True, False])
    flush()
    [decision] = queries.decisions(sg.store, "wf-bools")
    assert decision["chosen"] == "true"
    assert [(o["name"], o["explored"], o["chosen"]) for o in decision["options"]] == [
        ("true", True, True),
        ("false", False, False),
    ]


@pytest.mark.parametrize(("offered", "name"), [("fast", "fast"), (7, "7"), (True, "true")])
def test_a_single_option_offered_as_one_value(
    sg: spangraph.Spangraph, provider: TracerProvider, offered: Any, name: str
) -> None:
    """Plain OpenTelemetry code offering one option as a single value, not a list: one
    option, explored and chosen (before: a number failed the decision's mapping, which
    then lost its events, links and option edges; text was split into characters)."""
    assert sg.store is not None
    workflow_id = f"wf-single-{name}"
    _plain_otel_decision(provider, workflow_id, offered)
    flush()
    [decision] = queries.decisions(sg.store, workflow_id)
    assert decision["chosen"] == name
    assert [(o["name"], o["explored"], o["chosen"]) for o in decision["options"]] == [
        (name, True, True)
    ]
    # the edges the decision's mapping writes when it ends
    edges = sg.store.query(
        "MATCH (:Decision {span_id: $d})-[r]->(o) RETURN type(r) AS type, o.name AS option",
        {"d": decision["span_id"]},
    )
    assert sorted((e["type"], e["option"]) for e in edges) == [
        ("CHOSEN_OPTION", str(offered).lower()),
        ("OPTION_OF", str(offered).lower()),
        ("PARENT_OF", str(offered).lower()),
    ]


def test_a_branch_id_used_in_several_runs(sg: spangraph.Spangraph) -> None:
    """A branch id given by hand can be met in several runs: the summary lists those runs,
    and ``workflow_id`` keeps one run's nodes (before: the runs' nodes were mixed with
    no way to tell or to choose)."""
    assert sg.store is not None
    runs = []
    for step in ("first-run-step", "second-run-step"):
        with (
            spangraph.workflow("wf") as run,
            spangraph.branch("retry", branch_id="retry-path"),
            spangraph.step(step),
        ):
            pass
        runs.append(run.workflow_id)
    flush()
    both = queries.branch_summary(sg.store, "retry-path")
    assert both is not None
    assert both["workflow_ids"] == sorted(runs)
    assert len(both["nodes"]) == 4
    second = queries.branch_summary(sg.store, "retry-path", workflow_id=runs[1])
    assert second is not None
    assert [n["name"] for n in second["nodes"]] == ["retry", "second-run-step"]
    assert (second["workflow_id"], second["workflow_ids"]) == (runs[1], [runs[1]])
    assert queries.branch_summary(sg.store, "retry-path", workflow_id="no-such-run") is None
