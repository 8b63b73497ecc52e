"""Structural diff of two runs or branches: pure tests of spangraph._diff on hand-built
spans, and queries.diff on runs written by the SDK."""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Any

import pytest

import spangraph
from spangraph import cli, queries
from spangraph._diff import RunDiff, diff, entries, missing_message
from spangraph.instrument import WorkflowRun

# -- hand-built spans -------------------------------------------------------------------


class Run:
    """Builds span dicts as queries.workflow_spans returns them."""

    def __init__(self, root: str = "wf") -> None:
        self.spans: list[dict[str, Any]] = []
        self.clock = 0
        self.root = self.add(root, None, kind="workflow")

    def add(
        self,
        name: str,
        parent: str | None,
        *,
        kind: str = "step",
        duration_ms: float | None = 1.0,
        state: str = "completed",
        chosen: str | None = None,
        attributes_as_json: bool = False,
    ) -> str:
        self.clock += 10
        span_id = f"{len(self.spans) + 1:016x}"
        attrs: dict[str, Any] = {}
        if chosen is not None:
            attrs["spangraph.decision.chosen"] = chosen
        self.spans.append(
            {
                "span_id": span_id,
                "parent_span_id": parent,
                "name": name,
                "kind": kind,
                "state": state,
                "start_ns": self.clock,
                "duration_ms": duration_ms,
                "attributes": json.dumps(attrs) if attributes_as_json else attrs,
            }
        )
        return span_id


def test_identical_runs() -> None:
    a, b = Run(), Run()
    for run in (a, b):
        s = run.add("fetch", run.root, duration_ms=5.0)
        run.add("parse", s, duration_ms=2.0)
    result = diff("A", a.spans, "B", b.spans)
    assert isinstance(result, RunDiff)
    assert result.first_divergence is None
    assert (result.only_in_a, result.only_in_b) == ([], [])
    assert [(d["path"], d["occurrence"], d["delta_ms"]) for d in result.durations] == [
        ("(root)", 1, 0.0),
        ("fetch", 1, 0.0),
        ("fetch/parse", 1, 0.0),
    ]
    assert result.to_dict()["a"] == "A" and result.to_dict()["b"] == "B"


def test_spans_that_ended_differently_are_listed() -> None:
    """Before, two runs that differed only in a step failing (its error caught) read as
    the same, and so did a run against one that never finished."""
    a, b = Run(), Run()
    a.add("fetch", a.root)
    b.add("fetch", b.root, state="failed")
    a.add("parse", a.root)
    b.add("parse", b.root, state="running", duration_ms=None)
    result = diff("A", a.spans, "B", b.spans)
    assert result.first_divergence is None  # the same structure
    assert result.states == [
        {"path": "fetch", "occurrence": 1, "a": "completed", "b": "failed"},
        {"path": "parse", "occurrence": 1, "a": "completed", "b": "running"},
    ]
    assert diff("A", a.spans, "A", a.spans).states == []


def test_different_step() -> None:
    a, b = Run(), Run()
    a.add("fetch", a.root)
    a.add("summarize", a.root)
    b.add("fetch", b.root)
    b.add("translate", b.root)
    result = diff("A", a.spans, "B", b.spans)
    first = result.first_divergence
    assert first is not None
    assert (first["index"], first["reason"]) == (2, "different step")
    assert (first["a"]["path"], first["b"]["path"]) == ("summarize", "translate")
    assert first["a"]["span_id"] == a.spans[2]["span_id"]
    assert (result.only_in_a, result.only_in_b) == (["summarize"], ["translate"])


def test_different_nesting_is_a_different_step() -> None:
    a, b = Run(), Run()
    outer = a.add("outer", a.root)
    a.add("inner", outer)
    b.add("outer", b.root)
    b.add("inner", b.root)
    result = diff("A", a.spans, "B", b.spans)
    assert result.first_divergence is not None
    assert result.first_divergence["reason"] == "different step"
    assert (result.first_divergence["a"]["path"], result.first_divergence["b"]["path"]) == (
        "outer/inner",
        "inner",
    )
    assert (result.only_in_a, result.only_in_b) == (["outer/inner"], ["inner"])


def test_different_choice() -> None:
    a, b = Run(), Run()
    for run, choice, json_attrs in ((a, "x", False), (b, "y", True)):
        run.add("plan", run.root)
        d = run.add(
            "route", run.root, kind="decision", chosen=choice, attributes_as_json=json_attrs
        )
        run.add(choice, d, kind="option")
        run.add("unexplored-z", d, kind="option", state="unexplored", duration_ms=None)
    result = diff("A", a.spans, "B", b.spans)
    first = result.first_divergence
    assert first is not None
    assert (first["index"], first["reason"]) == (2, "different choice")
    assert first["a"]["path"] == first["b"]["path"] == "route"
    assert (first["a"]["chosen"], first["b"]["chosen"]) == ("x", "y")
    assert first["a"]["kind"] == "decision"
    # unexplored options are no steps of either run
    assert (result.only_in_a, result.only_in_b) == (["route/x"], ["route/y"])
    assert "route/unexplored-z" not in [d["path"] for d in result.durations]


def test_same_choice_no_divergence_and_choice_only_matters_on_decisions() -> None:
    a, b = Run(), Run()
    a.add("route", a.root, kind="decision", chosen="x")
    b.add("route", b.root, kind="decision", chosen="x", attributes_as_json=True)
    a.add("s", a.root, kind="step", chosen="p")  # not a decision: chosen is ignored
    b.add("s", b.root, kind="step", chosen="q")
    assert diff("A", a.spans, "B", b.spans).first_divergence is None


def test_unexplored_options_are_ignored_everywhere() -> None:
    a, b = Run(), Run()
    d = a.add("route", a.root, kind="decision", chosen="x")
    a.add("x", d, kind="option")
    a.add("never", d, kind="option", state="unexplored", duration_ms=None)
    d = b.add("route", b.root, kind="decision", chosen="x")
    b.add("x", d, kind="option")
    result = diff("A", a.spans, "B", b.spans)
    assert result.first_divergence is None
    assert (result.only_in_a, result.only_in_b) == ([], [])
    assert [e.path for e in entries(a.spans)] == ["(root)", "route", "route/x"]


def test_one_run_longer() -> None:
    a, b = Run(), Run()
    for run in (a, b):
        run.add("s1", run.root)
        run.add("s2", run.root)
    b.add("s3", b.root)
    result = diff("A", a.spans, "B", b.spans)
    first = result.first_divergence
    assert first is not None
    assert (first["index"], first["reason"]) == (3, "one run has more steps")
    assert first["a"] is None
    assert first["b"]["path"] == "s3"
    assert (result.only_in_a, result.only_in_b) == ([], ["s3"])
    reverse = diff("B", b.spans, "A", a.spans)
    assert reverse.first_divergence is not None
    assert reverse.first_divergence["b"] is None
    assert reverse.first_divergence["a"]["path"] == "s3"
    assert (reverse.only_in_a, reverse.only_in_b) == (["s3"], [])


def test_repeated_paths_counted_by_occurrence() -> None:
    a, b = Run(), Run()
    for ms in (10.0, 20.0, 30.0):
        a.add("fetch", a.root, duration_ms=ms)
    a.add("parse", a.root, duration_ms=1.0)
    b.add("fetch", b.root, duration_ms=15.0)
    b.add("parse", b.root, duration_ms=4.5)
    b.add("parse", b.root, duration_ms=2.0)
    result = diff("A", a.spans, "B", b.spans)
    assert result.only_in_a == ["fetch", "fetch"]
    assert result.only_in_b == ["parse"]
    by_path = {(d["path"], d["occurrence"]): d for d in result.durations}
    assert set(by_path) == {("(root)", 1), ("fetch", 1), ("parse", 1)}
    assert by_path[("fetch", 1)] == {
        "path": "fetch",
        "occurrence": 1,
        "a_ms": 10.0,
        "b_ms": 15.0,
        "delta_ms": 5.0,
    }
    assert by_path[("parse", 1)]["delta_ms"] == 3.5
    first = result.first_divergence
    assert first is not None
    assert (first["index"], first["a"]["path"], first["b"]["path"]) == (2, "fetch", "parse")


def test_durations_pair_nth_with_nth_and_skip_missing() -> None:
    a, b = Run(), Run()
    for ms in (1.0, None, 3.0):
        a.add("loop", a.root, duration_ms=ms)
    for ms in (2.5, 7.0, 1.0):
        b.add("loop", b.root, duration_ms=ms)
    result = diff("A", a.spans, "B", b.spans)
    loops = [(d["occurrence"], d["a_ms"], d["b_ms"], d["delta_ms"]) for d in result.durations
             if d["path"] == "loop"]  # fmt: skip
    assert loops == [(1, 1.0, 2.5, 1.5), (3, 3.0, 1.0, -2.0)]
    assert (result.only_in_a, result.only_in_b) == ([], [])


def test_siblings_by_start_time_not_input_order() -> None:
    a, b = Run(), Run()
    a.add("first", a.root)
    a.add("second", a.root)
    b.add("first", b.root)
    b.add("second", b.root)
    b.spans.reverse()  # the store's order must not matter
    assert diff("A", a.spans, "B", b.spans).first_divergence is None
    assert [e.path for e in entries(b.spans)] == ["(root)", "first", "second"]


def test_roots_of_different_names_compare() -> None:
    a, b = Run("run-a"), Run("run-b")
    a.add("s", a.root, duration_ms=1.0)
    b.add("s", b.root, duration_ms=2.0)
    result = diff("A", a.spans, "B", b.spans)
    assert result.first_divergence is None
    assert [d["path"] for d in result.durations] == ["(root)", "s"]


def test_empty_sides() -> None:
    a = Run()
    a.add("s", a.root)
    assert diff("A", [], "B", []).to_dict() == {
        "a": "A",
        "b": "B",
        "first_divergence": None,
        "only_in_a": [],
        "only_in_b": [],
        "durations": [],
        "missing": ["A", "B"],
        "states": [],
    }
    assert diff("A", [], "A", []).missing == ["A"]
    one_sided = diff("A", a.spans, "B", [])
    assert one_sided.missing == ["B"]
    assert diff("A", a.spans, "B", a.spans).missing == []
    assert one_sided.first_divergence is not None
    assert one_sided.first_divergence["reason"] == "one run has more steps"
    assert one_sided.first_divergence["index"] == 0
    assert one_sided.only_in_a == ["(root)", "s"]


def test_root_names_with_a_slash_still_compare() -> None:
    a, b = Run("etl/daily"), Run("etl-nightly")
    a.add("load", a.root)
    b.add("load", b.root)
    result = diff("A", a.spans, "B", b.spans)
    assert result.first_divergence is None
    assert (result.only_in_a, result.only_in_b) == ([], [])


def test_missing_message() -> None:
    assert missing_message([]) is None
    assert missing_message(["x"]) == (
        "run 'x' does not exist: no spans have that id, nothing to compare"
    )
    assert missing_message(["x", "y"], "branch") == (
        "branches 'x' and 'y' do not exist: no spans have those ids, nothing to compare"
    )


def test_a_tree_deeper_than_the_recursion_limit() -> None:
    depth = sys.getrecursionlimit() + 500
    run = Run()
    parent = run.root
    for _ in range(depth):
        parent = run.add("s", parent)
    got = entries(run.spans)
    assert len(got) == depth + 1
    assert [len(e.path) for e in got[:3]] == [len("(root)"), 1, 3]
    assert got[-1].path == f"…({depth - 32} more)/" + "/".join(["s"] * 32)
    assert diff("A", run.spans, "B", run.spans).first_divergence is None


def test_parent_cycles_are_cut_where_the_tree_cuts_them() -> None:
    run = Run()
    a = run.add("a", None)  # started first: the cycle a <-> b is cut above it
    b = run.add("b", a)
    run.add("under-b", b)
    own = run.add("own", None)  # its own parent
    run.add("under-own", own)
    run.spans[1]["parent_span_id"] = b
    run.spans[4]["parent_span_id"] = own
    got = entries(run.spans)
    assert [(e.path, e.span_id) for e in got] == [
        ("(root)", run.root),
        ("(root)", a),
        ("b", b),
        ("b/under-b", run.spans[3]["span_id"]),
        ("(root)", own),
        ("under-own", run.spans[5]["span_id"]),
    ]
    # the cut is at the span of the cycle that started first, wherever the walk enters
    later = Run()
    x = later.add("x", None)
    y = later.add("y", x)
    later.spans[1]["parent_span_id"] = y
    later.spans.reverse()
    assert [e.path for e in entries(later.spans)] == ["(root)", "(root)", "y"]


# -- against the store ------------------------------------------------------------------


def _run(choice: str) -> WorkflowRun:
    with spangraph.workflow("agent") as run:
        with spangraph.step("fetch"):
            pass
        with spangraph.step("plan"), spangraph.decision("route", options=["a", "b", "c"]) as d:
            with d.option(choice):
                pass
            d.choose(choice)
        with spangraph.step(f"do_{choice}"):
            pass
    return run


def test_diff_of_two_runs(sg: spangraph.Spangraph) -> None:
    w1, w2 = _run("a"), _run("b")
    spangraph.flush()
    assert sg.store is not None
    result = queries.diff(sg.store, w1.workflow_id, w2.workflow_id)
    assert (result["a"], result["b"]) == (w1.workflow_id, w2.workflow_id)
    first = result["first_divergence"]
    assert first["reason"] == "different choice"
    assert first["index"] == 3
    assert first["a"]["path"] == first["b"]["path"] == "plan/route"
    assert (first["a"]["chosen"], first["b"]["chosen"]) == ("a", "b")
    assert first["a"]["kind"] == "decision"
    assert result["only_in_a"] == ["do_a", "plan/route/a"]
    assert result["only_in_b"] == ["do_b", "plan/route/b"]
    assert [d["path"] for d in result["durations"]] == ["(root)", "fetch", "plan", "plan/route"]
    for d in result["durations"]:
        assert d["delta_ms"] == round(d["b_ms"] - d["a_ms"], 3)

    same = queries.diff(sg.store, w1.workflow_id, w1.workflow_id)
    assert same["first_divergence"] is None
    assert (same["only_in_a"], same["only_in_b"]) == ([], [])
    assert all(d["delta_ms"] == 0 for d in same["durations"])


def test_a_choice_named_only_by_its_chosen_option_link_counts(sg: spangraph.Spangraph) -> None:
    """Another program's decision may name its choice by a ``chosen_option`` link only
    (no ``spangraph.decision.chosen``): the diff reads the link, as ``decisions()`` does
    (before: two runs that chose differently had "the same structure")."""
    assert sg.store is not None
    for run, chosen in (("link-r1", "a"), ("link-r2", "b")):
        sg.store.execute_many(
            [
                (
                    "CREATE (w:Span:Workflow {span_id: $run + '-w', workflow_id: $run,"
                    " name: 'wf', kind: 'workflow', state: 'completed', start_ns: 1}),"
                    " (d:Span:Decision {span_id: $run + '-d', parent_span_id: $run + '-w',"
                    " workflow_id: $run, name: 'route', kind: 'decision', start_ns: 2,"
                    ' attributes: \'{"spangraph.decision.options": ["a", "b"]}\'}),'
                    " (a:Span:Option {span_id: $run + '-a', parent_span_id: $run + '-d',"
                    " workflow_id: $run, name: 'a', kind: 'option', start_ns: 3}),"
                    " (b:Span:Option {span_id: $run + '-b', parent_span_id: $run + '-d',"
                    " workflow_id: $run, name: 'b', kind: 'option', start_ns: 4}),"
                    " (w)-[:PARENT_OF]->(d), (d)-[:PARENT_OF]->(a), (d)-[:PARENT_OF]->(b)",
                    {"run": run},
                ),
                (
                    "MATCH (d:Span {span_id: $run + '-d'}), (o:Span {span_id: $option})"
                    " CREATE (d)-[:CHOSEN_OPTION]->(o)",
                    {"run": run, "option": f"{run}-{chosen}"},
                ),
            ]
        )
    assert [d["chosen"] for d in queries.decisions(sg.store, "link-r2")] == ["b"]
    result = queries.diff(sg.store, "link-r1", "link-r2")
    first = result["first_divergence"]
    assert first is not None and first["reason"] == "different choice"
    assert (first["a"]["chosen"], first["b"]["chosen"]) == ("a", "b")
    assert queries.diff(sg.store, "link-r1", "link-r1")["first_divergence"] is None


def test_a_choice_is_named_as_decisions_names_it(sg: spangraph.Spangraph) -> None:
    """A choice another program gave in the attribute only is named as decisions() names
    it (as the stores name option nodes: a NUL as U+FFFD), not as the attribute's raw
    text (before: "x\\x00" in the diff, "x\\ufffd" in decisions())."""
    assert sg.store is not None
    for run, chosen in (("attr-r1", "x\x00"), ("attr-r2", "y")):
        attributes = json.dumps({"spangraph.decision.chosen": chosen})
        sg.store.execute_many(
            [
                (
                    "CREATE (w:Span:Workflow {span_id: $run + '-w', workflow_id: $run,"
                    " name: 'wf', kind: 'workflow', state: 'completed', start_ns: 1}),"
                    " (d:Span:Decision {span_id: $run + '-d', parent_span_id: $run + '-w',"
                    " workflow_id: $run, name: 'route', kind: 'decision', start_ns: 2,"
                    " attributes: $attributes}), (w)-[:PARENT_OF]->(d)",
                    {"run": run, "attributes": attributes},
                )
            ]
        )
    [decision] = queries.decisions(sg.store, "attr-r1")
    first = queries.diff(sg.store, "attr-r1", "attr-r2")["first_divergence"]
    assert first is not None and first["reason"] == "different choice"
    assert first["a"]["chosen"] == decision["chosen"] == "x\ufffd"


def test_diff_of_two_branches(sg: spangraph.Spangraph) -> None:
    with spangraph.workflow("wf") as run:
        with spangraph.branch("left") as left:
            with spangraph.step("draft"):
                pass
            with spangraph.step("polish"):
                pass
        with spangraph.branch("right") as right:
            with spangraph.step("draft"):
                pass
            with spangraph.step("cite"), spangraph.step("lookup"):
                pass
    spangraph.flush()
    assert sg.store is not None
    result = queries.diff(sg.store, left.branch_id, right.branch_id, branches=True)
    assert (result["a"], result["b"]) == (left.branch_id, right.branch_id)
    first = result["first_divergence"]
    assert (first["index"], first["reason"]) == (2, "different step")
    assert (first["a"]["path"], first["b"]["path"]) == ("polish", "cite")
    assert result["only_in_a"] == ["polish"]
    assert result["only_in_b"] == ["cite", "cite/lookup"]
    assert [d["path"] for d in result["durations"]] == ["(root)", "draft"]
    # as workflow ids these are unknown: nothing to compare
    as_runs = queries.diff(sg.store, left.branch_id, right.branch_id)
    assert as_runs["first_divergence"] is None and as_runs["durations"] == []
    assert run.workflow_id


def test_diff_of_one_branch_id_in_two_runs(sg: spangraph.Spangraph) -> None:
    """A branch id given by hand is met in every run: before, the diff of it in two runs
    read the spans of both runs on each side, and said they had the same structure."""

    def run(fail: bool) -> str:
        with spangraph.workflow("wf") as wf, spangraph.branch("retry-path", branch_id="rp"):
            with spangraph.step("write"):
                pass
            if fail:
                with contextlib.suppress(RuntimeError), spangraph.step("check"):
                    raise RuntimeError("no")
            else:
                with spangraph.step("check"):
                    pass
        return wf.workflow_id or ""

    first, second = run(False), run(True)
    spangraph.flush()
    assert sg.store is not None
    result = queries.diff(sg.store, "rp", "rp", branches=True, workflow_a=first, workflow_b=second)
    assert result["first_divergence"] is None
    assert [d["path"] for d in result["durations"]] == ["(root)", "write", "check"]
    assert result["states"] == [{"path": "check", "occurrence": 1, "a": "completed", "b": "failed"}]
    with pytest.raises(ValueError, match="branches=True"):
        queries.diff(sg.store, first, second, workflow_a=first)


def test_cli_diff_says_which_run_does_not_exist(
    sg: spangraph.Spangraph,
    graph_url: str,
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if not sg.settings.graph_url.startswith("falkordb://"):
        pytest.skip("the command line reads the graph named by SPANGRAPH_GRAPH_URL")
    known = _run("a").workflow_id
    spangraph.flush()
    monkeypatch.setenv("SPANGRAPH_GRAPH_URL", graph_url)
    monkeypatch.setenv("SPANGRAPH_HOME", str(tmp_path))
    assert cli.main(["query", "diff", known, known]) == 0
    assert "the two have the same structure" in capsys.readouterr().out
    runs = []
    for fail in (False, True):
        with (
            spangraph.workflow("b") as run,
            contextlib.suppress(RuntimeError),
            spangraph.step("only-step"),
        ):
            if fail:
                raise RuntimeError("no")
        runs.append(run.workflow_id or "")
    spangraph.flush()
    assert cli.main(["query", "diff", *runs]) == 0
    assert "ended differently: only-step: completed vs failed" in capsys.readouterr().out
    with pytest.raises(SystemExit) as refused:  # an argument mistake, as argparse says one
        cli.main(["query", "diff", known, known, "--workflow-a", known])
    assert refused.value.code == 2
    assert "spangraph: error: --workflow-a/--workflow-b need --branches" in capsys.readouterr().err
    assert cli.main(["query", "diff", known, "no-such-run"]) == 1
    out, err = capsys.readouterr()
    assert err.strip() == (
        "run 'no-such-run' does not exist: no spans have that id, nothing to compare"
        " (runs are named by their workflow ids: `spangraph query workflows` lists the latest)"
    )
    assert "only in" not in out
    assert cli.main(["query", "diff", "nope-1", "nope-2", "--json"]) == 1
    assert "runs 'nope-1' and 'nope-2' do not exist" in capsys.readouterr().err
    assert cli.main(["query", "diff", "left", "right", "--branches"]) == 1
    err = capsys.readouterr().err
    assert "branches 'left' and 'right' do not exist" in err
    # names given where ids are wanted (the demo names its branches): say what to give
    assert "`spangraph query branches WORKFLOW_ID` lists a run's" in err


@pytest.mark.usefixtures("cli_graph")
def test_cli_diff_says_where_it_diverged_and_which_attempt_ended_differently(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """ "first divergence at step 2" counted from 0 with the root included, and a retried
    step that ended differently the third time read as its first attempt: the place is a
    node of the tree counted from its root, and the attempt is said."""
    runs = []
    for second in ("search", "fetch"):
        with spangraph.workflow("agent") as run:
            with spangraph.step("plan"):
                pass
            with spangraph.step(second):
                pass
        runs.append(run.workflow_id or "")
    spangraph.flush()
    assert cli.main(["query", "diff", *runs]) == 0
    out = capsys.readouterr().out
    assert "first divergence at node 3 of the tree, in order from its root: different step" in out
    runs = []
    for fails in (2, 3):
        calls = iter(range(3))

        @spangraph.step("fetch", retries=2, backoff=0)
        def fetch(fails: int = fails, calls: Any = calls) -> None:
            if next(calls) < fails:
                raise ConnectionError("down")

        with contextlib.suppress(ConnectionError), spangraph.workflow("agent") as run:
            fetch()
        runs.append(run.workflow_id or "")
    spangraph.flush()
    assert cli.main(["query", "diff", *runs]) == 0
    out = capsys.readouterr().out
    assert "ended differently: fetch (3rd time): completed vs failed" in out


def test_siblings_that_started_together_are_ordered_by_name() -> None:
    """Equal start times (a coarse clock, spans sent with made-up times): siblings go by
    name, not by their random span ids (before: a divergence between equal runs)."""
    a, b = Run(), Run()
    for run, names in ((a, ("x", "y")), (b, ("y", "x"))):
        for name in names:
            run.add(name, run.root)
        for span in run.spans[1:]:
            span["start_ns"] = 100
    result = diff("A", a.spans, "B", b.spans)
    assert result.first_divergence is None
    assert [e.path for e in entries(b.spans)] == ["(root)", "x", "y"]


def test_a_slash_in_a_name_is_not_a_level() -> None:
    """A step named "a/b" is not step "b" under step "a" (before: the two were taken for
    one step, and their durations compared)."""
    a, b = Run(), Run()
    a.add("a/b", a.root)
    b.add("b", b.add("a", b.root))
    result = diff("A", a.spans, "B", b.spans)
    assert result.first_divergence is not None
    assert (result.only_in_a, result.only_in_b) == (["a/b"], ["a", "a/b"])
    assert [d["path"] for d in result.durations] == ["(root)"]


def test_paths_of_a_deep_chain_stay_short() -> None:
    """Each path names its last levels only (before: every span carried its whole path,
    so memory grew with the square of the depth: 8 000 levels took 723 MB)."""
    depth = 8000
    run = Run()
    parent = run.root
    for i in range(depth):
        parent = run.add(f"level-{i}", parent)
    got = entries(run.spans)
    assert len(got) == depth + 1
    assert max(len(e.path) for e in got) <= 1100
    assert got[-1].path == f"…({depth - 32} more)/" + "/".join(
        f"level-{i}" for i in range(depth - 32, depth)
    )
    assert got[2].path == "level-0/level-1"
    assert diff("A", run.spans, "B", run.spans).first_divergence is None
    other = Run()
    parent = other.root
    for i in range(depth):
        parent = other.add(f"level-{i}" if i != depth - 100 else "elsewhere", parent)
    result = diff("A", run.spans, "B", other.spans)
    assert result.first_divergence is not None
    assert result.first_divergence["index"] == depth - 99
    assert len(result.only_in_a) == len(result.only_in_b) == 100
