"""decision / option / choose, branch, monitor, and the resumed_from / retry_of links:
span attributes and links in memory, and the edges they become in a real graph."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from opentelemetry.instrumentation.threading import ThreadingInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.trace import SpanContext

import spangraph
from spangraph import queries
from spangraph import semconv as sc
from spangraph.branching import Branch, Decision
from spangraph.mapping import MAX_OPTIONS, unexplored_option_id
from spangraph.testing import SpanCapture, capture

# -- helpers ----------------------------------------------------------------------------


@pytest.fixture
def cap() -> Iterator[SpanCapture]:
    with capture() as c:
        yield c


@pytest.fixture(scope="module")
def threads_instrumented() -> None:
    """Context into threads, as configure() sets it up (left on: configure() turns it on
    process-wide too, so other tests see the same state)."""
    instrumentor = ThreadingInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument()


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def one(cap: SpanCapture, name: str) -> ReadableSpan:
    found = cap.find(name)
    assert len(found) == 1, [s.name for s in cap.spans]
    return found[0]


def sid(span: ReadableSpan) -> str:
    return format(span.context.span_id, "016x")


def is_child(child: ReadableSpan, parent: ReadableSpan) -> bool:
    return child.parent is not None and child.parent.span_id == parent.context.span_id


def is_uuid7(text: str) -> bool:
    u = uuid.UUID(text)
    return u.version == 7 and str(u) == text


def links_of(span: ReadableSpan) -> list[tuple[str | None, int]]:
    return [
        ((link.attributes or {}).get(sc.LINK_TYPE), link.context.span_id) for link in span.links
    ]


def flush() -> None:
    assert spangraph.flush(10)


def q(sg: spangraph.Spangraph, cypher: str, **params: Any) -> list[dict[str, Any]]:
    assert sg.store is not None
    return sg.store.query(cypher, params)


def edges(sg: spangraph.Spangraph, rel: str, span_id: str) -> list[str]:
    """Target span ids of ``(span_id)-[:REL]->(target)``, sorted."""
    rows = q(
        sg, f"MATCH (a:Span {{span_id: $id}})-[:{rel}]->(b:Span) RETURN b.span_id AS t", id=span_id
    )
    return sorted(r["t"] for r in rows)


def node(sg: spangraph.Spangraph, span_id: str) -> dict[str, Any]:
    rows = q(
        sg,
        "MATCH (s:Span {span_id: $id}) RETURN s AS s, labels(s) AS labels",
        id=span_id,
    )
    assert len(rows) == 1, rows
    return {**rows[0]["s"], "labels": sorted(rows[0]["labels"])}


# -- decisions: spans -------------------------------------------------------------------


def test_decision_attributes_and_option_spans(cap: SpanCapture) -> None:
    with spangraph.workflow("wf"), spangraph.decision("route", options=["a", "b", "c"]) as d:
        assert isinstance(d, Decision)
        assert d.options == ("a", "b", "c")
        with d.option("a") as a:
            assert a.kind == sc.KIND_OPTION
        with d.option("c"):
            pass
        d.choose("c", reason="cheaper", score=0.75)
        assert d.chosen == "c"
    decision = one(cap, "route")
    opt_a, opt_c = one(cap, "a"), one(cap, "c")
    a = attrs(decision)
    assert a[sc.KIND] == sc.KIND_DECISION
    assert a[sc.DECISION_OPTIONS] == ("a", "b", "c")
    assert a[sc.DECISION_CHOSEN] == "c"
    assert a[sc.DECISION_REASON] == "cheaper"
    assert a[sc.DECISION_SCORE] == 0.75
    assert isinstance(a[sc.DECISION_SCORE], float)
    # aligned with the options; "" for the one never explored
    assert a[sc.DECISION_OPTION_SPAN_IDS] == (sid(opt_a), "", sid(opt_c))
    assert a[sc.STATE] == sc.STATE_COMPLETED
    for option in (opt_a, opt_c):
        assert attrs(option)[sc.KIND] == sc.KIND_OPTION
        assert is_child(option, decision)
        assert attrs(option)[sc.WORKFLOW_ID] == a[sc.WORKFLOW_ID]
    assert cap.find("b") == []


def test_choose_links_to_the_explored_option(cap: SpanCapture) -> None:
    with spangraph.decision("route", options=["a", "b"]) as d:
        with d.option("a"):
            pass
        with d.option("b"):
            pass
        d.choose("b")
    decision, opt_b = one(cap, "route"), one(cap, "b")
    assert links_of(decision) == [(sc.LINK_CHOSEN_OPTION, opt_b.context.span_id)]
    assert decision.links[0].context.trace_id == opt_b.context.trace_id


def test_choose_unexplored_option_has_no_link(cap: SpanCapture) -> None:
    with spangraph.decision("route", options=["a", "b"]) as d:
        with d.option("a"):
            pass
        d.choose("b", reason="a looked bad")
    decision = one(cap, "route")
    assert decision.links == ()
    assert attrs(decision)[sc.DECISION_CHOSEN] == "b"
    assert attrs(decision)[sc.DECISION_OPTION_SPAN_IDS] == (sid(one(cap, "a")), "")


def test_no_choice_leaves_chosen_absent(cap: SpanCapture) -> None:
    with spangraph.decision("route", options=["a", "b"]) as d:
        pass
    assert d.chosen is None
    a = attrs(one(cap, "route"))
    assert sc.DECISION_CHOSEN not in a
    assert sc.DECISION_REASON not in a
    assert sc.DECISION_SCORE not in a
    assert a[sc.DECISION_OPTION_SPAN_IDS] == ("", "")


def test_decision_failing_still_records_option_span_ids(cap: SpanCapture) -> None:
    with pytest.raises(RuntimeError), spangraph.decision("route", options=["a", "b"]) as d:
        with d.option("b"):
            pass
        raise RuntimeError("boom")
    a = attrs(one(cap, "route"))
    assert a[sc.STATE] == sc.STATE_FAILED
    assert a[sc.DECISION_OPTION_SPAN_IDS] == ("", sid(one(cap, "b")))


def test_choose_and_option_must_be_offered(cap: SpanCapture) -> None:
    with spangraph.decision("route", options=["a", "b"]) as d:
        with pytest.raises(ValueError, match=r"'zzz'.*not offered.*'route'"):
            d.choose("zzz")
        with pytest.raises(ValueError, match=r"'nope'.*not offered"):
            d.option("nope")
        with pytest.raises(ValueError):
            d.option("")
    assert d.chosen is None
    assert sc.DECISION_CHOSEN not in attrs(one(cap, "route"))
    assert cap.find(kind=sc.KIND_OPTION) == []


def test_choose_and_option_after_the_decision_ended_are_refused(cap: SpanCapture) -> None:
    """After the block the span can no longer record a choice or parent an option: a
    clear error, and nothing recorded, instead of a choice the graph never sees."""
    with spangraph.workflow("wf"), spangraph.decision("route", options=["a", "b"]) as d:
        d.choose("a", reason="in time")
    with pytest.raises(ValueError, match=r"decision 'route' has ended.*choose\(\)"):
        d.choose("b", reason="late")
    with pytest.raises(ValueError, match=r"decision 'route' has ended.*option\(\)"):
        d.option("b")
    assert d.chosen == "a"
    assert attrs(one(cap, "route"))[sc.DECISION_CHOSEN] == "a"
    assert attrs(one(cap, "route"))[sc.DECISION_REASON] == "in time"
    assert cap.find(kind=sc.KIND_OPTION) == []


def test_an_option_entered_after_the_decision_ended_is_refused(cap: SpanCapture) -> None:
    """``d.option()`` taken inside the block but entered (or, decorated, called) after it:
    the option's span was made, under the workflow instead, and the decision showed it
    as never explored."""
    with spangraph.workflow("wf"):
        with spangraph.decision("route", options=["a", "b"]) as d:
            later = d.option("a")

            @d.option("b")
            def explore_b() -> str:
                return "b"

            assert explore_b() == "b"  # inside the block: fine
        with (
            pytest.raises(ValueError, match=r"decision 'route' has ended.*option\(\)"),
            later,
        ):
            pass
        with pytest.raises(ValueError, match=r"decision 'route' has ended.*option\(\)"):
            explore_b()
    assert [s.name for s in cap.find(kind=sc.KIND_OPTION)] == ["b"]


def test_decision_that_is_not_recorded_never_raises() -> None:
    """Without a recording span (spangraph not set up, or the run sampled out) there is
    nothing to protect: choose() after the block still just sets ``chosen``."""
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    with capture(TracerProvider(sampler=ALWAYS_OFF)):
        with spangraph.decision("route", options=["a", "b"]) as d:
            pass
        d.choose("b")
    assert d.chosen == "b"


def test_bad_score_is_refused(cap: SpanCapture) -> None:
    with spangraph.decision("route", options=["a", "b"]) as d:
        with pytest.raises(ValueError, match="score"):
            d.choose("a", score="high")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="score"):
            d.choose("a", score=True)
        # an int past a float's range raised OverflowError from inside the block
        for not_finite in (float("nan"), float("inf"), float("-inf"), 10**400, -(10**400)):
            with pytest.raises(ValueError, match="finite"):
                d.choose("a", score=not_finite)
    assert sc.DECISION_CHOSEN not in attrs(one(cap, "route"))


def test_any_real_number_is_a_score(cap: SpanCapture) -> None:
    """Decimal and Fraction (and numpy's floats, through ``__float__``) were refused as
    not finite numbers."""
    from decimal import Decimal
    from fractions import Fraction

    with spangraph.decision("route", options=["a", "b"]) as d:
        d.choose("a", score=Decimal("0.25"))
        assert d._score == 0.25
        d.choose("b", score=Fraction(1, 2))
    assert attrs(one(cap, "route"))[sc.DECISION_SCORE] == 0.5


def test_refused_choose_leaves_no_choice(cap: SpanCapture) -> None:
    with spangraph.decision("route", options=["a", "b"]) as d:
        with pytest.raises(ValueError, match="score"):
            d.choose("a", score="high")  # type: ignore[arg-type]
        assert d.chosen is None


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        (["a", "b", "a"], ValueError, "same option twice"),
        ([], ValueError, "at least one option"),
        ("ab", TypeError, "single string"),
        (["a", ""], ValueError, "option name"),
        (["a", "   "], ValueError, "option name"),
        (["a", 3], ValueError, "option name"),
        ([f"o{i}" for i in range(MAX_OPTIONS + 1)], ValueError, "at most 1024"),
        # cut to the same stored name, two options became one in the graph
        (["x" * 9000 + "1", "x" * 9000 + "2"], ValueError, "at most 8192 characters"),
        # a NUL or a lone surrogate is stored as U+FFFD: two options became one node
        (["a\x00b", "a\ufffdb"], ValueError, "would be stored as one"),
        (["c\ud800", "c\ufffd"], ValueError, "would be stored as one"),
    ],
)
def test_bad_options(cap: SpanCapture, options: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        spangraph.decision("route", options=options)
    assert cap.spans == []


def test_decision_name_and_options_from_any_iterable(cap: SpanCapture) -> None:
    with pytest.raises(ValueError, match="decision name"):
        spangraph.decision("", options=["a"])
    with spangraph.decision("gen", options=(o for o in ["x", "y"])) as d:
        d.choose("y")
    assert attrs(one(cap, "gen"))[sc.DECISION_OPTIONS] == ("x", "y")


# -- decisions: graph -------------------------------------------------------------------


def test_decision_graph_option_of_and_chosen_option(sg: spangraph.Spangraph) -> None:
    with spangraph.workflow("wf") as run, spangraph.decision("route", options=["a", "b", "c"]) as d:
        with d.option("a") as a:
            pass
        d.choose("a", reason="r")
    flush()
    dec = node(sg, d.span_id)
    assert dec["labels"] == ["Decision", "Span"]
    assert dec["kind"] == "decision" and dec["state"] == "completed"
    ids = {"a": a.span_id, **{o: unexplored_option_id(d.span_id, o) for o in ("b", "c")}}
    assert edges(sg, "OPTION_OF", d.span_id) == sorted(ids.values())
    assert edges(sg, "CHOSEN_OPTION", d.span_id) == [a.span_id]
    explored = node(sg, a.span_id)
    assert explored["labels"] == ["Option", "Span"]
    assert (explored["name"], explored["state"]) == ("a", "completed")
    for name in ("b", "c"):
        option = node(sg, ids[name])
        assert option["labels"] == ["Option", "Span"]
        assert option["name"] == name
        assert option["state"] == "unexplored"
        assert option["kind"] == "option"
        assert option["parent_span_id"] == d.span_id
        assert option["workflow_id"] == run.workflow_id
        assert option["trace_id"] == d.trace_id
        assert option["project_id"] == sg.settings.project


def test_the_graph_gets_at_most_max_options_the_chosen_and_explored_first(
    sg: spangraph.Spangraph, caplog: pytest.LogCaptureFixture
) -> None:
    """A decision from elsewhere (an OTLP exporter, a tracer of the program's own) with
    a million options made one write the store could not finish within its timeout,
    retried for ever. The graph gets MAX_OPTIONS of them: the chosen and explored ones,
    then the first; the attribute keeps them all."""
    options = [f"o{i}" for i in range(MAX_OPTIONS + 500)]
    explored = [""] * len(options)
    explored[1200] = "00000000000000aa"  # explored, and chosen: kept, past the first 1024
    attributes = {
        sc.KIND: sc.KIND_DECISION,
        sc.DECISION_OPTIONS: options,
        sc.DECISION_OPTION_SPAN_IDS: explored,
        sc.DECISION_CHOSEN: "o1300",
    }
    tracer = sg.tracer_provider.get_tracer("elsewhere")
    with (
        spangraph.workflow("wf"),
        tracer.start_as_current_span("route", attributes=attributes) as span,
    ):
        decision_id = format(span.get_span_context().span_id, "016x")
    flush()
    targets = edges(sg, "OPTION_OF", decision_id)
    assert len(targets) == MAX_OPTIONS
    kept = [*options[: MAX_OPTIONS - 2], "o1300"]
    assert sorted(targets) == sorted(
        [explored[1200], *(unexplored_option_id(decision_id, o) for o in kept)]
    )
    assert edges(sg, "CHOSEN_OPTION", decision_id) == [unexplored_option_id(decision_id, "o1300")]
    assert "offers 1524 options; the graph gets 1024 of them" in caplog.text


def test_choosing_an_unexplored_option_gives_a_chosen_edge(sg: spangraph.Spangraph) -> None:
    with spangraph.workflow("wf"), spangraph.decision("route", options=["a", "b"]) as d:
        with d.option("a"):
            pass
        d.choose("b")
    flush()
    target = unexplored_option_id(d.span_id, "b")
    assert edges(sg, "CHOSEN_OPTION", d.span_id) == [target]
    assert node(sg, target)["state"] == "unexplored"
    assert node(sg, target)["name"] == "b"


def test_no_choice_no_chosen_edge(sg: spangraph.Spangraph) -> None:
    with (
        spangraph.workflow("wf") as run,
        spangraph.decision("route", options=["a", "b"]) as d,
        d.option("b"),
    ):
        pass
    flush()
    assert edges(sg, "CHOSEN_OPTION", d.span_id) == []
    assert len(edges(sg, "OPTION_OF", d.span_id)) == 2
    (found,) = queries.decisions(sg.store, run.workflow_id)
    assert found["chosen"] is None
    assert [o["chosen"] for o in found["options"]] == [False, False]


def test_choosing_again_replaces_the_chosen_edge(sg: spangraph.Spangraph) -> None:
    with spangraph.workflow("wf") as run, spangraph.decision("route", options=["a", "b"]) as d:
        with d.option("a"):
            pass
        with d.option("b") as b:
            pass
        d.choose("a")
        d.choose("b")  # "Choosing again replaces the choice."
    flush()
    assert edges(sg, "CHOSEN_OPTION", d.span_id) == [b.span_id]
    found = queries.decisions(sg.store, run.workflow_id)
    assert [x["chosen"] for x in found] == ["b"]


def test_choosing_again_replaces_reason_and_score(cap: SpanCapture) -> None:
    with spangraph.decision("route", options=["a", "b"]) as d:
        d.choose("a", reason="looked best", score=0.9)
        d.choose("b")
    a = attrs(one(cap, "route"))
    assert a[sc.DECISION_CHOSEN] == "b"
    assert sc.DECISION_REASON not in a
    assert sc.DECISION_SCORE not in a


def test_a_reason_that_is_not_text_is_recorded_as_text(cap: SpanCapture) -> None:
    reasons = [{"verdict": "cheaper", "by": ["judge", 2]}, 3, ["a", "b"], None]
    expected = ['{"verdict": "cheaper", "by": ["judge", 2]}', "3", '["a", "b"]', None]
    for reason in reasons:
        with spangraph.decision("route", options=["a", "b"]) as d:
            d.choose("a", reason=reason)
    got = [attrs(s).get(sc.DECISION_REASON) for s in cap.find(kind="decision")]
    assert got == expected


# -- branches ---------------------------------------------------------------------------


def test_branch_id_on_branch_and_descendants_only(cap: SpanCapture) -> None:
    with spangraph.workflow("wf") as run:
        with spangraph.step("before"):
            pass
        with spangraph.branch("b1") as b:
            assert isinstance(b, Branch)
            assert b.workflow_id == run.workflow_id
            with spangraph.step("s1"), spangraph.step("s1.1"):
                pass
            with spangraph.decision("d", options=["x"]) as d, d.option("x"):
                pass
        with spangraph.step("after"):
            pass
    assert is_uuid7(b.branch_id)
    inside = ["b1", "s1", "s1.1", "d", "x"]
    for name in inside:
        assert attrs(one(cap, name))[sc.BRANCH_ID] == b.branch_id, name
        assert attrs(one(cap, name))[sc.WORKFLOW_ID] == run.workflow_id, name
    assert attrs(one(cap, "b1"))[sc.KIND] == sc.KIND_BRANCH
    for name in ("wf", "before", "after"):
        assert sc.BRANCH_ID not in attrs(one(cap, name)), name
    assert run.branch_id is None


def test_branch_id_given(cap: SpanCapture) -> None:
    with spangraph.branch("b", branch_id="my-branch") as b, spangraph.step("s"):
        pass
    assert b.branch_id == "my-branch"
    assert attrs(one(cap, "b"))[sc.BRANCH_ID] == "my-branch"
    assert attrs(one(cap, "s"))[sc.BRANCH_ID] == "my-branch"
    with pytest.raises(ValueError, match="branch_id"):
        spangraph.branch("b", branch_id="")
    with pytest.raises(ValueError, match="branch_id must be at most 1024 characters"):
        spangraph.branch("b", branch_id="x" * 1025)
    with pytest.raises(ValueError, match="branch_id must not begin or end with whitespace"):
        spangraph.branch("b", branch_id=" b1")
    with pytest.raises(ValueError, match=r"branch_id must not be '\.\.'"):
        spangraph.branch("b", branch_id="..")
    with pytest.raises(ValueError, match="branch name"):
        spangraph.branch(" ")


def test_reserved_keys_are_refused_in_branching_attributes(cap: SpanCapture) -> None:
    """spangraph.* keys the SDK sets would move a span out of its branch or run."""
    reserved = {"spangraph.branch.id": "forged"}
    with pytest.raises(ValueError, match=r"branch\(attributes=\): spangraph\.branch\.id"):
        spangraph.branch("b", attributes=reserved)
    with pytest.raises(ValueError, match=r"decision\(attributes=\): spangraph\.branch\.id"):
        spangraph.decision("d", options=["a"], attributes=reserved)
    with spangraph.branch("watched") as watched:
        pass
    with pytest.raises(ValueError, match=r"monitor\(attributes=\): spangraph\.branch\.id"):
        spangraph.monitor(watched, attributes=reserved)
    with spangraph.decision("d", options=["a"]) as d:
        with pytest.raises(ValueError, match=r"option\(\): spangraph\.branch\.id"):
            d.option("a", **reserved)
        with d.option("a", note="kept"):
            pass
    assert attrs(one(cap, "a"))["note"] == "kept"
    assert "b" not in [s.name for s in cap.spans]  # a refused branch made no span


def test_nested_branches_get_their_own_id(cap: SpanCapture) -> None:
    with spangraph.workflow("wf"), spangraph.branch("outer") as outer:
        with spangraph.step("o1"):
            pass
        with spangraph.branch("inner") as inner, spangraph.step("i1"):
            pass
        with spangraph.step("o2"):
            pass
    assert outer.branch_id != inner.branch_id
    assert is_uuid7(inner.branch_id)
    for name in ("outer", "o1", "o2"):
        assert attrs(one(cap, name))[sc.BRANCH_ID] == outer.branch_id, name
    for name in ("inner", "i1"):
        assert attrs(one(cap, name))[sc.BRANCH_ID] == inner.branch_id, name
    assert is_child(one(cap, "inner"), one(cap, "outer"))


def test_sibling_branches_differ(cap: SpanCapture) -> None:
    ids = []
    for _ in range(3):
        with spangraph.branch("same name") as b:
            ids.append(b.branch_id)
    assert len(set(ids)) == 3
    assert sorted(ids) == ids  # UUIDv7: time-ordered


async def test_branch_id_in_asyncio_tasks(cap: SpanCapture) -> None:
    @spangraph.step
    async def work(name: str) -> str:
        await asyncio.sleep(0)
        with spangraph.step(f"{name}.inner"):
            pass
        return name

    async with spangraph.workflow("wf"):
        async with spangraph.branch("b") as b:
            task = asyncio.create_task(work("task"))
            gathered = await asyncio.gather(work("g1"), work("g2"))
            late = asyncio.create_task(work("late"))  # runs after the branch closes
            assert await task == "task"
        assert await late == "late"
        outside = asyncio.create_task(work("outside"))
        await outside
    assert gathered == ["g1", "g2"]
    works = {s.context.span_id: s for s in cap.find("work")}
    assert len(works) == 5
    for name in ("task", "g1", "g2", "late", "outside"):
        inner = one(cap, f"{name}.inner")
        assert inner.parent is not None
        outer = works[inner.parent.span_id]
        for span in (inner, outer):
            if name == "outside":
                assert sc.BRANCH_ID not in attrs(span)
            else:
                assert attrs(span)[sc.BRANCH_ID] == b.branch_id, name
            assert attrs(span)[sc.WORKFLOW_ID] == attrs(one(cap, "wf"))[sc.WORKFLOW_ID]


async def test_async_branch_decorator(cap: SpanCapture) -> None:
    @spangraph.branch("deco")
    async def run() -> None:
        with spangraph.step("s"):
            pass

    await run()
    await run()
    first, second = (attrs(s)[sc.BRANCH_ID] for s in cap.find("deco"))
    assert first != second
    steps = [attrs(s)[sc.BRANCH_ID] for s in cap.find("s")]
    assert sorted(steps) == sorted([first, second])


@pytest.mark.usefixtures("threads_instrumented")
def test_branch_id_in_threads(cap: SpanCapture) -> None:
    def work(name: str) -> None:
        with spangraph.step(name):
            pass

    with spangraph.workflow("wf") as run:
        with spangraph.branch("b") as b:
            t = threading.Thread(target=work, args=("thread",))
            t.start()
            t.join()
            with ThreadPoolExecutor(2) as pool:
                list(pool.map(work, ["pool1", "pool2"]))
        t = threading.Thread(target=work, args=("outside",))
        t.start()
        t.join()
    for name in ("thread", "pool1", "pool2"):
        span = one(cap, name)
        assert attrs(span)[sc.BRANCH_ID] == b.branch_id, name
        assert attrs(span)[sc.WORKFLOW_ID] == run.workflow_id, name
        assert is_child(span, one(cap, "b"))
    assert sc.BRANCH_ID not in attrs(one(cap, "outside"))
    assert attrs(one(cap, "outside"))[sc.WORKFLOW_ID] == run.workflow_id


def test_branch_ids_in_graph(sg: spangraph.Spangraph) -> None:
    def work(name: str) -> None:
        with spangraph.step(name):
            pass

    with (
        spangraph.workflow("wf") as run,
        spangraph.branch("b") as b,
        ThreadPoolExecutor(2) as pool,  # configure() instruments threading
    ):
        list(pool.map(work, ["p1", "p2"]))
    flush()
    rows = q(
        sg,
        "MATCH (s:Span {workflow_id: $wf}) RETURN s.name AS name, s.branch_id AS branch_id",
        wf=run.workflow_id,
    )
    assert {r["name"]: r["branch_id"] for r in rows} == {
        "wf": None,
        "b": b.branch_id,
        "p1": b.branch_id,
        "p2": b.branch_id,
    }
    assert node(sg, b.span_id)["labels"] == ["Branch", "Span"]


# -- monitors ---------------------------------------------------------------------------


def test_monitor_links_to_a_branch(cap: SpanCapture) -> None:
    with spangraph.workflow("wf"):
        with spangraph.branch("draft") as draft:
            pass
        with spangraph.branch("review"), spangraph.monitor(draft) as m:
            assert m.kind == sc.KIND_MONITOR
    span = one(cap, "monitor draft")
    assert attrs(span)[sc.KIND] == sc.KIND_MONITOR
    assert links_of(span) == [(sc.LINK_MONITORS, one(cap, "draft").context.span_id)]
    assert attrs(span)[sc.BRANCH_ID] == attrs(one(cap, "review"))[sc.BRANCH_ID]


def test_monitor_by_ref_span_context_and_span(cap: SpanCapture) -> None:
    with spangraph.step("target") as target:
        pass
    ctx = target.span.get_span_context()
    with spangraph.monitor(target.ref):
        pass
    with spangraph.monitor(ctx, name="by context"):
        pass
    with spangraph.monitor(target.span, name="by span", attributes={"why": "x"}):
        pass
    by_ref = one(cap, "monitor")
    for span in (by_ref, one(cap, "by context"), one(cap, "by span")):
        assert attrs(span)[sc.KIND] == sc.KIND_MONITOR
        assert links_of(span) == [(sc.LINK_MONITORS, ctx.span_id)]
        assert span.links[0].context.trace_id == ctx.trace_id
    assert attrs(one(cap, "by span"))["why"] == "x"


@pytest.mark.parametrize(
    "bad",
    [
        "not a ref",
        "",
        "0" * 32 + "-" + "0" * 16,  # all-zero ids: not a valid span context
        "a" * 31 + "-" + "b" * 16,
        "a" * 32 + "-" + "b" * 15,
        "g" * 32 + "-" + "b" * 16,
        "a" * 32 + "b" * 16,
    ],
)
def test_monitor_bad_ref(cap: SpanCapture, bad: str) -> None:
    with pytest.raises(ValueError, match="ref"):
        spangraph.monitor(bad)
    assert cap.spans == []


def test_monitor_bad_target_type(cap: SpanCapture) -> None:
    with pytest.raises(TypeError):
        spangraph.monitor(42)
    for blank in (" ", "", 0):  # "" and 0 fell back to "monitor"
        with pytest.raises(ValueError, match="monitor name"):
            spangraph.monitor(SpanContext(1, 2, is_remote=False), name=blank)  # type: ignore[arg-type]


def test_monitor_edge_in_graph(sg: spangraph.Spangraph) -> None:
    with spangraph.workflow("wf"):
        with spangraph.branch("draft") as draft:
            pass
        with spangraph.branch("review"), spangraph.monitor(draft) as m:
            pass
    flush()
    assert edges(sg, "MONITORS", m.span_id) == [draft.span_id]
    assert node(sg, m.span_id)["labels"] == ["Monitor", "Span"]


def test_monitor_target_never_written_is_a_placeholder(sg: spangraph.Spangraph) -> None:
    ghost_trace, ghost_span = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    with spangraph.workflow("wf") as run, spangraph.monitor(f"{ghost_trace}-{ghost_span}") as m:
        pass
    flush()
    assert sg.stats()["graph"]["failed"] == 0
    assert sg.stats()["graph"]["dropped"] == 0
    assert node(sg, run.span_id)["state"] == "completed"  # the batch was written
    assert edges(sg, "MONITORS", m.span_id) == [ghost_span]
    ghost = node(sg, ghost_span)
    assert ghost["labels"] == ["Span"]
    assert "name" not in ghost and "state" not in ghost


def test_monitor_target_written_later_fills_the_placeholder(
    sg: spangraph.Spangraph,
) -> None:
    # The target comes from elsewhere (another process's batch, arriving late).
    elsewhere = TracerProvider()
    target = elsewhere.get_tracer("elsewhere").start_span(
        "late target", attributes={sc.KIND: sc.KIND_STEP, sc.STATE: sc.STATE_COMPLETED}
    )
    target_id = sid(target)  # type: ignore[arg-type]
    with spangraph.workflow("wf"), spangraph.monitor(target.get_span_context()) as m:
        pass
    flush()
    assert "name" not in node(sg, target_id)
    target.end()
    assert sg.graph_processor is not None
    sg.graph_processor.on_end(target)  # type: ignore[arg-type]
    flush()
    filled = node(sg, target_id)  # still exactly one node
    assert filled["name"] == "late target"
    assert filled["state"] == "completed"
    assert filled["labels"] == ["Span", "Step"]
    assert edges(sg, "MONITORS", m.span_id) == [target_id]
    elsewhere.shutdown()


# -- resumed_from / retry_of ------------------------------------------------------------


def test_resumed_run_across_two_traces(sg: spangraph.Spangraph) -> None:
    with spangraph.workflow("job", execution_id="job-1") as run1:
        run1.paused(reason="waiting for approval")
    ref = run1.ref
    assert ref == f"{run1.trace_id}-{run1.span_id}"
    with spangraph.workflow("job", execution_id="job-1", resumed_from=ref) as run2:
        run2.resumed()
        with spangraph.step("finish"):
            pass
    assert run2.trace_id != run1.trace_id
    assert run2.workflow_id != run1.workflow_id
    flush()
    assert edges(sg, "RESUMED_FROM", run2.span_id) == [run1.span_id]
    assert edges(sg, "RESUMED_FROM", run1.span_id) == []
    n1, n2 = node(sg, run1.span_id), node(sg, run2.span_id)
    assert n1["execution_id"] == n2["execution_id"] == "job-1"
    assert (n1["trace_id"], n2["trace_id"]) == (run1.trace_id, run2.trace_id)
    rows = q(
        sg,
        "MATCH (w:Workflow {execution_id: 'job-1'}) RETURN w.span_id AS id ORDER BY w.start_ns",
    )
    assert [r["id"] for r in rows] == [run1.span_id, run2.span_id]


def test_resumed_from_handle_is_a_span_link(cap: SpanCapture) -> None:
    with spangraph.workflow("job") as run1:
        pass
    with spangraph.workflow("job", resumed_from=run1):
        pass
    first, second = cap.find("job")
    assert links_of(second) == [(sc.LINK_RESUMED_FROM, first.context.span_id)]
    assert links_of(first) == []
    with pytest.raises(ValueError, match="ref"):
        spangraph.workflow("job", resumed_from="garbage")


def test_retry_of_edge(sg: spangraph.Spangraph) -> None:
    with (
        contextlib.suppress(RuntimeError),
        spangraph.workflow("job"),
        spangraph.step("fetch") as attempt1,
    ):
        raise RuntimeError("flaky")
    with spangraph.workflow("job"), spangraph.step("fetch", retry_of=attempt1.ref) as attempt2:
        pass
    flush()
    assert edges(sg, "RETRY_OF", attempt2.span_id) == [attempt1.span_id]
    assert node(sg, attempt1.span_id)["state"] == "failed"
    assert node(sg, attempt2.span_id)["state"] == "completed"


# -- awkward names ----------------------------------------------------------------------

WEIRD = [
    'say "hi"',
    "it's",
    "back`tick`",
    "back\\slash\\",
    "a\\nb",
    "MATCH (n) DETACH DELETE n",
    "'}) MATCH (n) DETACH DELETE n //",
    "line one\nline two",
    "tab\there",
    "ünïcödé 🚀🌳",
    "{curly} $param",
]


def test_awkward_names_round_trip(sg: spangraph.Spangraph) -> None:
    with spangraph.workflow('wf ✓ "quoted"') as run:
        with spangraph.decision(WEIRD[0], options=WEIRD) as d:
            with d.option(WEIRD[5]):
                pass
            d.choose(WEIRD[7], reason=WEIRD[6])
        for name in WEIRD:
            with spangraph.branch(name), spangraph.step(name):
                pass
    flush()
    (found,) = queries.decisions(sg.store, run.workflow_id)
    assert found["span_id"] == d.span_id
    assert found["name"] == WEIRD[0]
    assert [o["name"] for o in found["options"]] == WEIRD
    assert [o["explored"] for o in found["options"]] == [n == WEIRD[5] for n in WEIRD]
    assert found["chosen"] == WEIRD[7]
    assert found["reason"] == WEIRD[6]
    (root,) = queries.tree(sg.store, run.workflow_id)
    assert root.name == 'wf ✓ "quoted"'
    branches_and_decision = [c.name for c in root.children]
    assert branches_and_decision == [WEIRD[0], *WEIRD]
    for child in root.children[1:]:
        assert [g.name for g in child.children] == [child.name]
    assert [b["name"] for b in queries.branches(sg.store, run.workflow_id)] == WEIRD
    assert len(q(sg, "MATCH (s:Span) RETURN s.span_id AS id")) > 2 * len(WEIRD)


def test_a_branch_outside_any_workflow_is_no_run(cap: SpanCapture) -> None:
    """Its spans carry the branch id and no run ids; handles and current_run() say there
    is no run (before: a run with an empty workflow id, ``""`` on every handle)."""
    from spangraph.instrument import current_run

    with spangraph.branch("b") as b, spangraph.step("s") as s:
        assert current_run() is None
        assert (s.workflow_id, s.execution_id, s.branch_id) == (None, None, b.branch_id)
        assert (b.workflow_id, b.execution_id) == (None, None)
    [step] = [x for x in cap.spans if x.name == "s"]
    attrs = step.attributes or {}
    assert attrs[sc.BRANCH_ID] == b.branch_id
    assert sc.WORKFLOW_ID not in attrs
    with spangraph.workflow("wf") as run, spangraph.branch("inner"):
        ids = current_run()
        assert ids is not None and ids.workflow_id == run.workflow_id
