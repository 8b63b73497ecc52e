"""Retention (``spangraph prune``, ``spangraph._prune``) on real graphs written by real
runs: which runs go, what goes with them, what stays whole."""

from __future__ import annotations

import json
import math
import time
import uuid
from typing import Any

import pytest
import redis

import spangraph
from conftest import ServerInfo
from spangraph import _prune, queries
from spangraph.cli import main as cli_main
from spangraph.processors.live import seq_key, stream_key


def flush() -> None:
    assert spangraph.flush(10)


def _run(name: str, *, events: int = 2) -> str:
    with spangraph.workflow(name) as run, spangraph.step("work"):
        for i in range(events):
            spangraph.event("progress", i=i)
    return run.workflow_id


def _spans(store: Any, workflow_id: str) -> int:
    rows = store.query("MATCH (s:Span {workflow_id: $w}) RETURN count(s) AS n", {"w": workflow_id})
    return int(rows[0]["n"])


def _nodes(store: Any) -> dict[str, int]:
    """Spans, events and all nodes in the graph."""
    return {
        label: int(store.query(f"MATCH (n{label}) RETURN count(n) AS n")[0]["n"])
        for label in (":Span", ":Event", "")
    }


@pytest.fixture
def old_and_new(sg: spangraph.Spangraph) -> tuple[str, int, str]:
    """A run, the moment after it, and a run after that: (old id, cutoff ns, new id)."""
    old = _run("old", events=3)
    time.sleep(0.005)
    cutoff = time.time_ns()
    time.sleep(0.005)
    new = _run("new", events=2)
    flush()
    return old, cutoff, new


def test_a_run_older_than_the_cutoff_goes_with_its_events(
    sg: spangraph.Spangraph, old_and_new: tuple[str, int, str]
) -> None:
    old, cutoff, new = old_and_new
    store = sg.store
    before = _nodes(store)
    new_tree = [(n.span["name"], n.span["state"]) for n in queries.tree(store, new)]
    new_events = queries.workflow_events(store, new)
    assert _spans(store, old) == 2 and len(queries.workflow_events(store, old)) > 3

    result = _prune.prune(store, older_than_s=0, now_ns=cutoff)

    assert [r.workflow_id for r in result.runs] == [old]
    assert result.spans == 2 and result.kept == 0 and not result.dry_run
    assert _spans(store, old) == 0 and queries.workflow_events(store, old) == []
    assert not queries.run_exists(store, old)
    # the other run is whole: its tree, its events
    assert [(n.span["name"], n.span["state"]) for n in queries.tree(store, new)] == new_tree
    assert queries.workflow_events(store, new) == new_events
    after = _nodes(store)
    assert after[":Span"] == before[":Span"] - 2
    assert after[":Event"] < before[":Event"]
    assert after[""] == after[":Span"] + after[":Event"]


def test_the_cutoff_is_the_age_before_now(
    sg: spangraph.Spangraph, old_and_new: tuple[str, int, str]
) -> None:
    old, cutoff, new = old_and_new
    now = cutoff + 3_600 * 10**9
    assert _prune.prune(sg.store, older_than_s=3_601, now_ns=now).runs == []
    assert [r.workflow_id for r in _prune.prune(sg.store, older_than_s=3_600, now_ns=now).runs] == [
        old
    ]
    assert _spans(sg.store, new) == 2


def test_a_run_is_kept_while_any_part_of_it_is_younger(sg: spangraph.Spangraph) -> None:
    """A run that started before the cutoff and went on after it stays, whole."""
    with spangraph.workflow("long") as run:
        with spangraph.step("early"):
            pass
        time.sleep(0.005)
        cutoff = time.time_ns()
        time.sleep(0.005)
        with spangraph.step("late"):
            pass
    flush()
    result = _prune.prune(sg.store, older_than_s=0, now_ns=cutoff)
    assert result.runs == []
    assert _spans(sg.store, run.workflow_id) == 3


def test_a_run_whose_process_died_goes_when_it_is_old(sg: spangraph.Spangraph) -> None:
    """Spans left `running` count by their start."""
    sg.store.execute_many(  # type: ignore[attr-defined]
        [
            (
                "CREATE (:Span {span_id: 'a1', workflow_id: 'dead', project_id: $p, "
                "state: 'running', start_ns: 100})-[:PARENT_OF]->"
                "(:Span {span_id: 'a2', workflow_id: 'dead', project_id: $p, "
                "state: 'running', start_ns: 200})",
                {"p": sg.settings.project},
            )
        ]
    )
    result = _prune.prune(sg.store, older_than_s=0, now_ns=201)
    assert [(r.workflow_id, r.last_ns, r.spans) for r in result.runs] == [("dead", 200, 2)]
    assert _spans(sg.store, "dead") == 0
    assert _prune.prune(sg.store, older_than_s=0, now_ns=200).runs == []


def test_a_nested_run_and_a_parent_placeholder_go_with_their_runs(
    sg: spangraph.Spangraph,
) -> None:
    with (
        spangraph.workflow("outer") as outer,
        spangraph.step("call"),
        spangraph.workflow("inner") as inner,
    ):
        spangraph.event("inside")
    flush()
    # a parent never written (a remote caller's span): a placeholder with the run's id
    sg.store.execute_many(  # type: ignore[attr-defined]
        [
            (
                "MATCH (w:Span {span_id: $root}) "
                "MERGE (p:Span {span_id: 'ffffffffffffffff'}) "
                "ON CREATE SET p.workflow_id = w.workflow_id "
                "MERGE (p)-[:PARENT_OF]->(w)",
                {"root": queries.tree(sg.store, outer.workflow_id)[0].span["span_id"]},
            )
        ]
    )
    assert inner.workflow_id != outer.workflow_id
    result = _prune.prune(sg.store, older_than_s=0)
    assert {r.workflow_id for r in result.runs} == {outer.workflow_id, inner.workflow_id}
    assert result.spans == 4  # outer, call, the placeholder; inner
    assert _nodes(sg.store) == {":Span": 0, ":Event": 0, "": 0}  # no placeholder left


def test_only_the_project_given(sg: spangraph.Spangraph, provider: Any) -> None:
    mine = _run("mine")
    other_project = f"other-{uuid.uuid4().hex[:6]}"
    tracer = provider.get_tracer("elsewhere")
    with tracer.start_as_current_span(
        "theirs",
        attributes={
            "spangraph.kind": "workflow",
            "spangraph.project.id": other_project,
            "spangraph.workflow.id": "theirs-1",
        },
    ):
        pass
    flush()
    result = _prune.prune(sg.store, older_than_s=0, project_id=other_project)
    assert [(r.workflow_id, r.project_id) for r in result.runs] == [("theirs-1", other_project)]
    assert _spans(sg.store, mine) == 2
    result = _prune.prune(sg.store, older_than_s=0, project_id=sg.settings.project)
    assert [r.workflow_id for r in result.runs] == [mine]


def test_a_dry_run_deletes_nothing(
    sg: spangraph.Spangraph, old_and_new: tuple[str, int, str]
) -> None:
    old, cutoff, _ = old_and_new
    before = _nodes(sg.store)
    result = _prune.prune(sg.store, older_than_s=0, now_ns=cutoff, dry_run=True)
    assert result.dry_run and [r.workflow_id for r in result.runs] == [old]
    assert result.spans == 2
    assert _nodes(sg.store) == before


class _Counting:
    """The real store, with its write statements counted (and a hook before each)."""

    def __init__(self, store: Any, before_write: Any = None) -> None:
        self._store = store
        self.writes: list[list[str]] = []
        self.before_write = before_write

    def query(self, cypher: str, params: dict[str, Any] | None = None) -> Any:
        return self._store.query(cypher, params)

    def execute_many(self, statements: list[tuple[str, dict[str, Any]]]) -> None:
        if self.before_write is not None:
            self.before_write()
        self.writes.append([w for _, params in statements for w in params["workflow_ids"]])
        self._store.execute_many(statements)


def test_deletes_go_in_batches_of_about_batch_spans(sg: spangraph.Spangraph) -> None:
    ids = [_run(f"r{i}") for i in range(5)]  # 2 spans each
    flush()
    store = _Counting(sg.store)
    batches: list[list[str]] = []
    result = _prune.prune(
        store,  # type: ignore[arg-type]
        older_than_s=0,
        batch_spans=4,
        on_batch=lambda runs: batches.append([r.workflow_id for r in runs]),
    )
    assert store.writes == [ids[0:2], ids[2:4], ids[4:5]]  # oldest first, <= 4 spans each
    assert batches == store.writes
    assert [r.workflow_id for r in result.runs] == ids
    # a run bigger than a batch goes alone
    big = _run("big", events=0)
    with spangraph.workflow("bigger") as run:
        for _ in range(6):
            with spangraph.step("s"):
                pass
    flush()
    store = _Counting(sg.store)
    _prune.prune(store, older_than_s=0, batch_spans=4)  # type: ignore[arg-type]
    assert store.writes == [[big], [run.workflow_id]]


def test_a_run_that_went_on_meanwhile_is_kept(sg: spangraph.Spangraph) -> None:
    """Found old, then given a new span before its batch was deleted: kept, whole."""
    old = _run("old")
    flush()
    cutoff = time.time_ns()

    def go_on() -> None:  # the run goes on, from another process say
        sg.store.execute_many(  # type: ignore[attr-defined]
            [
                (
                    "CREATE (:Span {span_id: 'late', workflow_id: $w, project_id: $p, "
                    "state: 'completed', start_ns: $t, end_ns: $t})",
                    {"w": old, "p": sg.settings.project, "t": cutoff + 1},
                )
            ]
        )

    store = _Counting(sg.store, before_write=go_on)
    result = _prune.prune(store, older_than_s=0, now_ns=cutoff)  # type: ignore[arg-type]
    assert store.writes == [[old]]  # tried once, not again and again
    assert result.runs == [] and result.kept == 1
    assert _spans(sg.store, old) == 3 and len(queries.workflow_events(sg.store, old)) >= 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"older_than_s": -1}, "older_than_s must be a number of seconds"),
        ({"older_than_s": math.nan}, "older_than_s must be a number of seconds"),
        ({"older_than_s": True}, "older_than_s must be a number of seconds"),
        ({"older_than_s": "30d"}, "older_than_s must be a number of seconds"),
        ({"older_than_s": 1, "batch_spans": 0}, "batch_spans must be a whole number"),
        ({"older_than_s": 1, "batch_spans": 2.5}, "batch_spans must be a whole number"),
    ],
)
def test_bad_arguments_are_refused(store: Any, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _prune.prune(store, **kwargs)


def test_on_an_empty_graph(store: Any) -> None:
    assert _prune.prune(store, older_than_s=0).runs == []
    assert _prune.prune(store, older_than_s=0, dry_run=True).runs == []


def test_a_store_that_cannot_write_is_refused_before_anything_is_read() -> None:
    class ReadOnly:
        def query(self, cypher: str, params: Any = None) -> list[Any]:
            raise AssertionError("read")

    with pytest.raises(TypeError, match="ReadOnly cannot delete"):
        _prune.prune(ReadOnly(), older_than_s=0)  # type: ignore[arg-type]


# -- the command line ---------------------------------------------------------------------


@pytest.fixture
def live_redis(
    cli_graph: None, embedded_server: ServerInfo, monkeypatch: pytest.MonkeyPatch
) -> redis.Redis:
    """The command line's live events on the session server (where ``sg`` publishes)."""
    monkeypatch.setenv("SPANGRAPH_REDIS_URL", embedded_server.redis_url)
    return redis.Redis.from_url(embedded_server.redis_url)


def test_cli_prunes_runs_and_their_live_streams(
    sg: spangraph.Spangraph, live_redis: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    old = _run("old")
    time.sleep(2)  # --older-than 1 (s) then leaves the new run out, however slow the machine
    new = _run("new")
    flush()
    age_s = 1
    project = ["--project", sg.settings.project]
    assert live_redis.exists(stream_key(old), seq_key(old)) == 2

    assert cli_main(["prune", "--older-than", f"{age_s}", *project, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("would delete 1 run (2 spans) last active before ")
    assert "nothing deleted (--dry-run)" in out and old in out and new not in out
    assert _spans(sg.store, old) == 2

    assert cli_main(["prune", "--older-than", f"{age_s}", *project, "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["dry_run"] is False and answer["spans"] == 2 and answer["kept"] == 0
    assert [r["workflow_id"] for r in answer["runs"]] == [old]
    assert answer["runs"][0]["project_id"] == sg.settings.project
    assert answer["runs"][0]["last_activity"].endswith("Z")
    assert answer["live_streams"] == "deleted 2 live stream keys of those runs"
    assert live_redis.exists(stream_key(old), seq_key(old)) == 0
    assert live_redis.exists(stream_key(new)) == 1
    assert _spans(sg.store, old) == 0 and _spans(sg.store, new) == 2

    assert cli_main(["prune", "--older-than", "0", *project]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("deleted 1 run (2 spans) last active before ")
    assert out[1] == "deleted 2 live stream keys of those runs"


@pytest.mark.usefixtures("cli_graph")
def test_cli_says_when_live_streams_cannot_be_deleted(
    sg: spangraph.Spangraph, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _run("gone")
    flush()
    monkeypatch.setenv("SPANGRAPH_REDIS_URL", "off")
    assert cli_main(["prune", "--older-than", "0", "--project", sg.settings.project]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1] == (
        "live streams not deleted (live events are off (SPANGRAPH_REDIS_URL=off)): "
        "they expire on their own"
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("1.5", 1.5), ("30s", 30), ("15m", 900), ("12h", 43_200), ("30d", 2_592_000),
     ("2w", 1_209_600), (" 7D ", 604_800), (".5h", 1_800), ("0", 0)],
)  # fmt: skip
def test_cli_ages(text: str, seconds: float) -> None:
    from spangraph._cli_values import duration

    assert duration(text) == seconds


@pytest.mark.parametrize("text", ["", "d", "3x", "-1d", "1e3", "nan", "inf", "5300w"])
def test_cli_refuses_what_is_no_age(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli_main(["prune", f"--older-than={text}"])
    assert exit_.value.code == 2
    assert "--older-than: must be a duration from 0 to 100 years" in capsys.readouterr().err


def test_cli_needs_an_age(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli_main(["prune"])
    assert "the following arguments are required: --older-than" in capsys.readouterr().err


def test_cli_on_a_home_that_does_not_exist(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope"
    assert cli_main(["prune", "--older-than", "1d", "--home", str(missing)]) == 1
    assert "nothing has run with the home" in capsys.readouterr().err


def test_cli_on_the_embedded_server_rewrites_its_append_only_file(
    embedded_server: ServerInfo, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The deleted runs stay in the append-only file until it is rewritten: pruning the
    embedded store has it rewritten (in the background)."""
    from spangraph.embedded import DEFAULT_FALKORDB_GRAPH
    from spangraph.stores import FalkorDBStore

    for name in ("SPANGRAPH_GRAPH_URL", "SPANGRAPH_REDIS_URL", "NEO4J_URI"):
        monkeypatch.delenv(name, raising=False)
    project = f"p-{uuid.uuid4().hex[:8]}"
    store = FalkorDBStore.from_url(
        f"falkordb://127.0.0.1:{embedded_server.port}/{DEFAULT_FALKORDB_GRAPH}"
    )
    try:
        store.execute_many(
            [
                (
                    "CREATE (:Span {span_id: $id, workflow_id: $id, project_id: $p, "
                    "state: 'completed', start_ns: 1, end_ns: 2})",
                    {"id": uuid.uuid4().hex[:16], "p": project},
                )
            ]
        )
    finally:
        store.close()
    client = redis.Redis.from_url(embedded_server.redis_url)

    def rewrites() -> int:
        info = client.info("persistence")
        if info["aof_rewrite_in_progress"] or info["aof_rewrite_scheduled"]:
            return -1
        return int(info["aof_rewrites"])

    deadline = time.monotonic() + 30
    while (before := rewrites()) < 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    home = str(embedded_server.home)
    assert cli_main(["prune", "--older-than", "1d", "--project", project, "--home", home]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("deleted 1 run (1 span) last active before ")
    assert out[-1] == (
        "the embedded server rewrites its append-only file in the background, giving the space back"
    )
    while (after := rewrites()) < 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert after == before + 1
    # nothing deleted: no rewrite
    assert cli_main(["prune", "--older-than", "1d", "--project", project, "--home", home]) == 0
    assert "append-only" not in capsys.readouterr().out
    client.close()


def test_a_run_of_several_projects_goes_whole_or_not_at_all(sg: spangraph.Spangraph) -> None:
    """Services sharing a run's ids (``propagate=True``) each keep their own project: a
    project's old spans of a run that went on in another project were deleted with
    ``project_id``, leaving the live run without them (and the other project's old
    fragment behind, the other way round)."""
    shared = f"shared-{uuid.uuid4().hex[:8]}"
    now = time.time_ns()
    day = 86_400 * 10**9

    def span(span_id: str, project: str, start: int, end: int | None) -> tuple[str, dict[str, Any]]:
        return (
            "CREATE (:Span {span_id: $id, workflow_id: $w, project_id: $p, start_ns: $s, "
            "end_ns: $e, state: CASE WHEN $e IS NULL THEN 'running' ELSE 'completed' END})",
            {"id": span_id, "w": shared, "p": project, "s": start, "e": end},
        )

    sg.store.execute_many(  # type: ignore[attr-defined]
        [
            span("root", "agent", now - 40 * day, None),  # the run: still going
            span("tool-call", "tools", now - 35 * day, now - 35 * day + 1),
            span("late-step", "agent", now - 60 * 10**9, now - 59 * 10**9),
        ]
    )
    for project in ("tools", "agent", None):
        result = _prune.prune(sg.store, older_than_s=30 * 86_400, project_id=project)
        assert result.runs == [] and _spans(sg.store, shared) == 3
    # once all of it is old, a project's prune takes the whole run
    result = _prune.prune(sg.store, older_than_s=0, project_id="tools", now_ns=now + 1)
    assert [(r.workflow_id, r.spans, r.project_id) for r in result.runs] == [(shared, 3, "tools")]
    assert _spans(sg.store, shared) == 0
