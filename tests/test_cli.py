"""The ``spangraph`` command line, run for real in subprocesses on a temp SPANGRAPH_HOME."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import spangraph
from spangraph import queries
from spangraph.cli import main as cli_main
from spangraph.embedded import EmbeddedServer, ServerInfo


def _command() -> list[str]:
    script = Path(sys.executable).with_name("spangraph")
    if script.exists():
        return [str(script)]  # the installed entry point
    found = shutil.which("spangraph")
    return [found] if found else [sys.executable, "-m", "spangraph.cli"]


SPANGRAPH = _command()


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("SPANGRAPH_", "NEO4J_", "OTEL_"))
    }
    env["SPANGRAPH_HOME"] = str(home)
    env.update(extra)
    return env


@dataclass
class Result:
    code: int
    out: str
    err: str


def cli(home: Path, *args: str, timeout: float = 60, **env: str) -> Result:
    proc = subprocess.run(
        [*SPANGRAPH, *args],
        env=clean_env(home, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


@dataclass
class Demo:
    home: Path
    result: Result

    @property
    def workflow_id(self) -> str:
        match = re.search(r"workflow_id ([0-9a-f-]{36})", self.result.out)
        assert match, self.result.out
        return match.group(1)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """``spangraph demo`` run once in a fresh home; the server is stopped afterwards."""
    home = tmp_path_factory.mktemp("cli-home")
    try:
        yield Demo(home, cli(home, "demo", timeout=120))
    finally:
        down = cli(home, "down")
        EmbeddedServer(home).stop()  # in case `down` itself is broken
        assert down.code == 0, down.err


def test_demo_runs(demo: Demo) -> None:
    result = demo.result
    assert result.code == 0, result.err
    out = result.out
    for event in ("span.started", "workflow.started", "step.started", "retry.scheduled",
                  "timeout.set", "timeout.exceeded", "sleep.started", "sleep.completed",
                  "step.failed", "workflow.completed", "span.ended"):  # fmt: skip
        assert event in out, event
    # the live events are numbered 1..N without gaps
    seqs = [int(n) for n in re.findall(r"^\s+\+\s*[\d.]+s\s+#(\d+)", out, flags=re.M)]
    assert seqs and seqs == list(range(1, len(seqs) + 1))
    received = re.search(r"(\d+) live events received", out)
    assert received and int(received.group(1)) == len(seqs)
    # the tree read back from the graph: failed and completed steps
    tree = out.split("read back from the graph:", 1)[1]
    assert re.search(r"workflow\s+research-assistant\s+completed", tree)
    assert re.search(r"step\s+fetch-page\s+failed", tree)
    assert re.search(r"step\s+fetch-page\s+completed", tree)
    assert re.search(r"step\s+summarize-with-large-model\s+failed", tree)
    assert re.search(r"step\s+write-findings\s+completed", tree)
    assert "0 dropped" in out


def printed_cypher(out: str) -> list[str]:
    """The Cypher statements the demo prints: each starts at a MATCH line."""
    section = out.split("explore it in Cypher", 1)[1].splitlines()[1:]
    statements: list[str] = []
    for line in section:
        text = line.strip()
        if text.startswith("MATCH"):
            statements.append(text)
        elif text and statements:
            statements[-1] += " " + text
    return statements


def test_demo_prints_a_branch_diff_command_that_runs(demo: Demo) -> None:
    """It printed the branches' names beside `spangraph query diff --branches`, which
    takes their ids: pasting the names failed."""
    found = re.search(r"\(spangraph query diff --branches (\S+) (\S+)\):", demo.result.out)
    assert found, demo.result.out
    result = cli(demo.home, "query", "diff", "--branches", *found.groups())
    assert result.code == 0, result.err
    assert "only in" in result.out


def test_demo_cypher_runs(demo: Demo) -> None:
    statements = printed_cypher(demo.result.out)
    assert len(statements) >= 2
    answers = []
    for statement in statements:
        result = cli(demo.home, "query", "cypher", statement, "--json")
        assert result.code == 0, (statement, result.err)
        rows = json.loads(result.out)
        assert rows, statement
        answers.append(rows)
    steps = {(r["s.name"], r["s.state"]) for r in answers[0]}
    assert {("fetch-page", "failed"), ("fetch-page", "completed"), ("plan", "completed")} <= steps
    failed_events = {(r["s.name"], r["e.name"]) for r in answers[1]}
    assert ("fetch-page", "retry.scheduled") in failed_events
    assert ("summarize-with-large-model", "timeout.exceeded") in failed_events


def test_query_commands(demo: Demo) -> None:
    workflow_id = demo.workflow_id
    listed = cli(demo.home, "query", "workflows", "--json")
    assert listed.code == 0, listed.err
    rows = json.loads(listed.out)
    assert [(r["workflow_id"], r["name"], r["state"]) for r in rows] == [
        (workflow_id, "research-assistant", "completed")
    ]
    table = cli(demo.home, "query", "workflows", "--state", "failed")
    assert table.code == 0 and "(no rows)" in table.out
    # when it started: a UTC time and an age (it was raw nanoseconds since 1970)
    listing = cli(demo.home, "query", "workflows").out.splitlines()
    assert listing[0].split() == [
        *("workflow_id", "name", "state", "duration_ms", "started", "age", "jaeger_url")
    ]
    assert re.search(r"research-assistant\s+completed\s+\S+\s+20\d\d-\d\d-\d\dT", listing[2])

    tree = cli(demo.home, "query", "tree", workflow_id)
    assert tree.code == 0, tree.err
    assert re.search(r"step\s+fetch-page\s+failed", tree.out)
    spans = json.loads(cli(demo.home, "query", "tree", workflow_id, "--json").out)
    by_id = {s["span_id"]: s for s in spans}
    assert all(s["name"] is not None for s in spans)  # the tree's spans: no stand-ins

    def chain(span: dict) -> list[str]:
        """Names from the root down to ``span``, following parent_span_id."""
        names = [span["name"]]
        while span.get("parent_span_id") in by_id:
            span = by_id[span["parent_span_id"]]
            names.insert(0, span["name"])
        return names

    deepest = max(spans, key=lambda s: len(chain(s)))
    assert len(chain(deepest)) >= 3
    path = cli(demo.home, "query", "path", deepest["span_id"], "--json")
    assert path.code == 0, path.err
    assert [p["name"] for p in json.loads(path.out)] == chain(deepest)
    assert chain(deepest)[0] == "research-assistant"
    events = cli(demo.home, "query", "events", workflow_id, "--json")
    names = [e["name"] for e in json.loads(events.out)]
    assert names[0] == "workflow.started" and names[-1] == "workflow.completed"


def test_decisions_table_says_how_each_option_ended(demo: Demo) -> None:
    """Before, only a never-explored option was marked: the demo's large-model option,
    which failed (its step timed out), read as one that completed; missing values printed
    as None."""
    table = cli(demo.home, "query", "decisions", demo.workflow_id)
    assert table.code == 0, table.err
    header, _, row = table.out.splitlines()[:3]
    assert header.split() == [
        "decision",
        "state",
        "options",
        "chosen",
        "reason",
        "score",
        "span_id",
    ]
    assert "choose-summarizer" in row and " completed " in row
    assert "large-model (failed), small-model*, extractive (unexplored)" in row
    decisions = json.loads(cli(demo.home, "query", "decisions", demo.workflow_id, "--json").out)
    states = {o["name"]: o["state"] for o in decisions[0]["options"]}
    assert states == {
        "large-model": "failed",
        "small-model": "completed",
        "extractive": "unexplored",
    }
    runs = cli(demo.home, "query", "cypher", "RETURN null AS nothing, 1 AS one")
    assert runs.out.splitlines()[2].split() == ["-", "1"]
    # a list or map cell shows its text as it is (it showed "\u00e9" for é)
    cells = cli(demo.home, "query", "cypher", "RETURN ['é', '✓'] AS l, {k: 'ü'} AS m")
    assert cells.out.splitlines()[2].split() == ['["é",', '"✓"]', '{"k":', '"ü"}']


def test_abandoned_table_says_when_and_how_long_ago(demo: Demo) -> None:
    """Before, the table showed a raw start_ns (nanoseconds since 1970)."""
    from spangraph.config import Settings
    from spangraph.stores import open_store

    store = open_store(Settings.from_env(home=demo.home))
    span_id = uuid.uuid4().hex[:16]
    started = time.time_ns() - (2 * 86_400 + 5 * 3_600 + 60) * 1_000_000_000
    try:
        store.execute_many(
            [
                (
                    "CREATE (:Span {span_id: $id, name: 'lost-step', kind: 'step', "
                    "state: 'running', start_ns: $start, workflow_id: 'lost-run'})",
                    {"id": span_id, "start": started},
                )
            ]
        )
        table = cli(demo.home, "query", "abandoned")
        assert table.code == 0, table.err
        header, _, *rows = table.out.splitlines()
        assert header.split() == [
            "span_id",
            "kind",
            "name",
            "workflow_id",
            "service",
            "started",
            "age",
        ]
        [row] = [r.split() for r in rows if span_id in r]
        assert row[-3:] == [
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started // 1_000_000_000)),
            "2d",
            "5h",
        ]
        [raw] = [
            r for r in json.loads(cli(demo.home, "query", "abandoned", "--json").out)
            if r["span_id"] == span_id
        ]  # fmt: skip
        assert raw["start_ns"] == started
    finally:
        store.execute_many([("MATCH (s:Span {span_id: $id}) DELETE s", {"id": span_id})])
        store.close()


def test_query_errors(demo: Demo) -> None:
    unknown = cli(demo.home, "query", "tree", "no-such-workflow")
    assert unknown.code == 1
    assert "no spans for workflow no-such-workflow" in unknown.err
    as_json = cli(demo.home, "query", "tree", "no-such-workflow", "--json")
    assert (as_json.code, as_json.out) == (1, "")  # as without --json (was 0 and [])
    assert "no spans for workflow no-such-workflow" in as_json.err
    for extra in ([], ["--json"]):  # as the API's 404 (before: "(no rows)", exit 0)
        no_span = cli(demo.home, "query", "path", "0123456789abcdef", *extra)
        assert (no_span.code, no_span.out) == (1, ""), no_span.err
        assert "no span 0123456789abcdef" in no_span.err
        for what in ("events", "replay"):  # as tree (before: "(no rows)", exit 0)
            none = cli(demo.home, "query", what, "no-such-workflow", *extra)
            assert (none.code, none.out) == (1, ""), none.err
            assert "no spans for workflow no-such-workflow" in none.err

    missing = cli(demo.home, "query", "tree")
    assert missing.code == 2 and "arguments are required: WORKFLOW_ID" in missing.err

    rejected = cli(demo.home, "query", "cypher", "THIS IS NOT CYPHER")
    assert rejected.code == 2
    assert rejected.err.startswith("spangraph: error:") and "Traceback" not in rejected.err

    # a statement pasted from the docs, its parameter not given: which one, and how
    unset = cli(
        demo.home,
        "query",
        "cypher",
        "MATCH (w:Workflow {workflow_id: $workflow_id}) RETURN w.state, $given AS g",
        "-p",
        "given=x",
    )
    assert unset.code == 2
    assert "(give $workflow_id: -p NAME=TEXT or --param-json NAME=JSON)" in unset.err


@pytest.mark.parametrize(
    "url", ["not-a-url", "ftp://127.0.0.1:21/x", "falkordb://127.0.0.1:notaport/g"]
)
def test_bad_graph_url_names_the_setting(tmp_path: Path, url: str) -> None:
    result = cli(tmp_path, "query", "workflows", SPANGRAPH_GRAPH_URL=url)
    assert result.code == 2
    assert "SPANGRAPH_GRAPH_URL" in result.err and "Traceback" not in result.err
    assert not (tmp_path / "server.json").exists()  # nothing was started


def test_unreachable_graph_is_a_clean_error(tmp_path: Path, closed_port: int) -> None:
    url = f"falkordb://127.0.0.1:{closed_port}/g"
    result = cli(tmp_path, "query", "workflows", SPANGRAPH_GRAPH_URL=url)
    assert result.code == 2
    assert "unreachable" in result.err and "Traceback" not in result.err
    # one line, naming the setting as configure() does
    assert result.err.startswith(f"spangraph: error: SPANGRAPH_GRAPH_URL: cannot use {url}: ")
    assert result.err.count("\n") == 1, result.err


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("serve", "--port", "99999"), "must be a port number from 1 to 65535"),
        (("demo", "--port", "http"), "must be a port number from 1 to 65535"),
        (("query", "workflows", "--limit", "-1"), "must be a whole number from 1 to 1000000"),
        (("query", "abandoned", "--limit", "0"), "must be a whole number from 1 to 1000000"),
        # 2**32 + 1 wrapped around to 1 in FalkorDB
        (("query", "workflows", "--limit", "4294967297"), "from 1 to 1000000"),
        (("query", "abandoned", "--older-than", "-5"), "must be a number of seconds from 0"),
        (("query", "abandoned", "--older-than", "nan"), "must be a number of seconds from 0"),
        (("query", "abandoned", "--older-than", "1e308"), "(100 years)"),
    ],
)
def test_bad_numbers_are_usage_errors(tmp_path: Path, args: tuple[str, ...], words: str) -> None:
    """Refused by the parser, with the option named: not a traceback from deeper down."""
    result = cli(tmp_path, *args)
    assert result.code == 2
    assert words in result.err and args[-2] in result.err and "Traceback" not in result.err
    assert not (tmp_path / "server.json").exists()  # nothing was started


def test_up_status_down(tmp_path: Path) -> None:
    home = tmp_path / "home"
    try:
        status = cli(home, "status")
        assert status.code == 1 and "not running" in status.out

        up = cli(home, "up")
        assert up.code == 0, up.err
        match = re.search(r"pid (\d+), redis://127\.0\.0\.1:(\d+)/0", up.out)
        assert match, up.out
        again = cli(home, "up")
        assert again.code == 0 and f"pid {match.group(1)}," in again.out  # reused

        status = cli(home, "status")
        assert status.code == 0 and f"pid {match.group(1)}" in status.out
        assert str(home) in status.out

        empty = cli(home, "query", "workflows", "--json")  # nothing written yet
        assert empty.code == 0, empty.err
        assert json.loads(empty.out) == []

        down = cli(home, "down")
        assert down.code == 0 and "stopped" in down.out
        status = cli(home, "status")
        assert status.code == 1 and "not running" in status.out
        down = cli(home, "down")
        assert down.code == 0 and "was not running" in down.out
    finally:
        EmbeddedServer(home).stop()


def test_up_status_down_need_no_other_setting(tmp_path: Path) -> None:
    """A mistake in a setting they do not use (a Jaeger URL without a scheme) kept
    ``down`` from stopping the server (exit 2, the server left running)."""
    home = tmp_path / "home"
    try:
        up = cli(home, "up", SPANGRAPH_JAEGER_URL="localhost:16686")
        assert up.code == 0, up.err
        assert f"home {home}" in up.out  # up says where: a home is easy to get wrong
        status = cli(home, "status", SPANGRAPH_JAEGER_URL="localhost:16686")
        assert status.code == 0 and "running" in status.out, status.err
        down = cli(home, "down", SPANGRAPH_GRAPH_URL="nonsense")
        assert down.code == 0 and "stopped" in down.out, down.err
        bad_home = cli(home, "status", SPANGRAPH_HOME=f" {home}")
        assert bad_home.code == 2 and "SPANGRAPH_HOME" in bad_home.err
    finally:
        EmbeddedServer(home).stop()


def test_serve_on_a_host_that_does_not_resolve_says_which(tmp_path: Path) -> None:
    """uvicorn said ``[Errno -2] Name or service not known`` after spangraph had printed
    where it serves (and that it was reachable from other machines)."""
    result = cli(tmp_path, "serve", "--host", "nosuch.invalid", "--port", "8999", timeout=60)
    assert result.code == 3, result.err
    assert "spangraph: error: cannot serve on nosuch.invalid:8999: " in result.err
    assert result.out == "" and "reachable" not in result.err
    assert not (tmp_path / "server.json").exists()  # told before any server was started


def test_serve_says_where_it_serves_once_it_does(tmp_path: Path, start_serve: Any) -> None:
    """The "web UI and API on" line comes once the port is bound: before, it was printed
    first, and then the port was found taken."""
    home = tmp_path / "home"
    try:
        service = start_serve(SPANGRAPH_HOME=str(home))
        deadline = time.monotonic() + 10
        while "web UI and API on" not in service.output() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert f"spangraph: web UI and API on http://127.0.0.1:{service.port}/" in service.output()
        result = cli(home, "serve", "--port", str(service.port), timeout=60)
        assert result.code == 3, (result.out, result.err)
        assert "web UI and API on" not in result.out + result.err
        assert "address already in use" in result.err.lower()
    finally:
        EmbeddedServer(home).stop()  # the one both started (serve leaves it, as up does)


def test_demo_serve_on_a_taken_port_fails_before_the_demo(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli(tmp_path / "home", "demo", "--serve", "--port", str(port), timeout=30)
    assert result.code == 3
    assert f"cannot serve on 127.0.0.1:{port}" in result.err and result.out == ""
    # what to do about it, as `spangraph serve` says
    assert "already in use (another spangraph serve?)" in result.err and "--port" in result.err
    assert not (tmp_path / "home" / "server.json").exists()  # no server was started


@pytest.mark.parametrize("what", [("workflows",), ("tree", "some-run")], ids=lambda a: a[0])
def test_query_of_a_home_that_does_not_exist_says_so(tmp_path: Path, what: tuple[str, ...]) -> None:
    """A mistyped ``--home``: before, the query started a server there (left running)
    and answered "(no rows)", as if the runs were gone."""
    typo = tmp_path / "no-such-home"
    result = cli(tmp_path, "query", *what, "--home", str(typo), timeout=30)
    assert result.code == 1 and result.out == ""
    assert f"nothing has run with the home {typo}" in result.err
    assert "Traceback" not in result.err
    assert not typo.exists()


def test_down_never_signals_a_pid_from_server_json(tmp_path: Path) -> None:
    """A wrong pid in server.json: ``down`` stops the server that serves this home (by
    the pid it reports itself), leaves the named process alone and says so."""
    home = tmp_path / "home"
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        info = EmbeddedServer(home).ensure_running()
        state = {"pid": bystander.pid, "port": info.port, "home": str(home)}
        (home / "server.json").write_text(json.dumps(state))
        down = cli(home, "down")
        assert down.code == 0 and "stopped" in down.out, down.err
        assert f"names pid {bystander.pid}" in down.err and f"is pid {info.pid}" in down.err
        assert "was not signalled" in down.err and "Traceback" not in down.err
        assert bystander.poll() is None
        assert EmbeddedServer(home).status() is None

        (home / "server.json").write_text(json.dumps(state))  # and now no server at all
        down = cli(home, "down")
        assert down.code == 0 and "was not running" in down.out
        assert "is stale" in down.err and f"pid {bystander.pid} was not signalled" in down.err
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
        EmbeddedServer(home).stop()


@pytest.mark.parametrize(
    "args",
    [("up",), ("down",), ("status",), ("demo",), ("serve",), ("run", "--", "true")],
    ids=lambda a: a[0],
)
def test_empty_home_option_names_the_setting(tmp_path: Path, args: tuple[str, ...]) -> None:
    """``--home ""`` is refused: neither the current directory nor the default."""
    result = cli(tmp_path, args[0], "--home", "", *args[1:], timeout=30)
    assert result.code == 2, (result.out, result.err)
    assert "SPANGRAPH_HOME" in result.err and "Traceback" not in result.err
    assert not (tmp_path / "server.json").exists()
    assert list(tmp_path.iterdir()) == []


def test_version_and_help(tmp_path: Path) -> None:
    from spangraph import __version__

    version = cli(tmp_path, "--version")
    assert version.code == 0 and __version__ in version.out
    assert cli(tmp_path, "--help").code == 0
    assert cli(tmp_path).code == 2  # a command is required


def test_print_tree_of_a_deep_run() -> None:
    """The name column narrows with depth but stays at least one character wide (a
    negative width was a format error below 20 levels)."""
    from spangraph._tree_text import print_tree
    from spangraph.queries import TreeNode

    root = node = TreeNode({"kind": "workflow", "name": "deep", "state": "completed"})
    for i in range(60):
        child = TreeNode({"kind": "step", "name": f"s{i}", "state": "completed"})
        node.children.append(child)
        node = child
    lines: list[str] = []
    print_tree([root], lines.append)
    assert len(lines) == 61
    assert re.match(r"^  workflow  deep {37}completed ", lines[0])
    assert lines[-1].startswith("  " + "  " * 60 + "step      s59 completed ")
    for depth, line in enumerate(lines[1:], start=1):
        name = f"s{depth - 1}"
        assert re.search(rf"^ {{{2 + 2 * depth}}}step {{6}}{name} +completed ", line), line


def test_run_of_a_missing_command_says_so(tmp_path: Path) -> None:
    result = cli(tmp_path, "run", "--", str(tmp_path / "no-such-program"))
    assert result.code == 127  # as a shell answers
    assert "command not found" in result.err and "Traceback" not in result.err


def test_demo_with_live_events_off_names_the_setting(tmp_path: Path) -> None:
    result = cli(tmp_path, "demo", SPANGRAPH_REDIS_URL="off")
    assert result.code == 2 and "Traceback" not in result.err
    assert "SPANGRAPH_REDIS_URL" in result.err and "live events" in result.err
    assert not (tmp_path / "server.json").exists()  # refused before anything started


def test_demo_with_the_sdk_disabled_names_the_setting(tmp_path: Path) -> None:
    # configure() then opens no store and no Redis: the demo has nothing to show
    result = cli(tmp_path, "demo", OTEL_SDK_DISABLED="true")
    assert result.code == 2 and "Traceback" not in result.err, result.err
    assert "OTEL_SDK_DISABLED" in result.err
    assert not (tmp_path / "server.json").exists()  # nothing was started


def test_query_of_an_unreachable_neo4j_fails_at_once(tmp_path: Path, closed_port: int) -> None:
    """The connection is checked before the query, which the driver would retry for 30 s
    (the subprocess timeout below stops a run that retries)."""
    url = f"bolt://127.0.0.1:{closed_port}"
    result = cli(
        tmp_path,
        "query",
        "workflows",
        timeout=20,
        SPANGRAPH_GRAPH_URL=url,
        NEO4J_PASSWORD="s3cret",
    )
    assert result.code == 2 and "Traceback" not in result.err
    assert f"Neo4j at {url} is unavailable" in result.err and "s3cret" not in result.err
    # the driver's message takes two lines: the error is still one
    assert result.err.startswith("spangraph: error: SPANGRAPH_GRAPH_URL: cannot use ")
    assert result.err.count("\n") == 1, result.err


def test_run_of_a_file_that_is_not_executable_says_so(tmp_path: Path) -> None:
    script = tmp_path / "app.py"
    script.write_text("print('hi')\n")
    script.chmod(0o644)
    result = cli(tmp_path, "run", "--", str(script))
    assert result.code == 126  # as a shell answers
    assert "permission denied" in result.err and "Traceback" not in result.err


@pytest.mark.parametrize("scheme", ["bolt", "neo4j"], ids=["direct", "routing"])
def test_query_of_a_neo4j_that_never_answers_fails_within_seconds(
    tmp_path: Path, silent_port: int, scheme: str
) -> None:
    """The driver waits 60 s for a connection by default; the check before the query
    gives up after 5 s, with one line naming the URL (the driver's own retry logs are
    not shown)."""
    import time

    url = f"{scheme}://127.0.0.1:{silent_port}"
    started = time.monotonic()
    result = cli(tmp_path, "query", "workflows", timeout=40, SPANGRAPH_GRAPH_URL=url)
    assert time.monotonic() - started < 20
    assert result.code == 2 and "Traceback" not in result.err
    prefix = (
        f"spangraph: error: SPANGRAPH_GRAPH_URL: cannot use {url}: Neo4j at {url} is unavailable"
    )
    assert result.err.startswith(prefix), result.err
    assert "Unable to retrieve routing information\nspangraph" not in result.err


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"home_is_a_file": "1"}, "SPANGRAPH_HOME"),
        (
            {
                "SPANGRAPH_GRAPH_URL": "falkordb://127.0.0.1:1/g",
                "SPANGRAPH_REDIS_URL": "redis://127.0.0.1:1/0?socket_timeout=abc",
            },
            "SPANGRAPH_REDIS_URL",
        ),
        (
            {
                "SPANGRAPH_GRAPH_URL": "falkordb://127.0.0.1:1/g",
                "SPANGRAPH_REDIS_URL": "off",
                "OTEL_SPAN_EVENT_COUNT_LIMIT": "abc",
            },
            "OTEL_SPAN_EVENT_COUNT_LIMIT",
        ),
    ],
)
def test_serve_with_a_bad_setting_is_one_line_and_exit_2(
    tmp_path: Path, closed_port: int, env: dict[str, str], setting: str
) -> None:
    """Before, these were found inside the service's startup: a traceback, and exit 3
    (which means the port is taken)."""
    home = tmp_path / "home"
    if env.pop("home_is_a_file", None):
        home.write_text("")
    result = cli(home, "serve", "--port", str(closed_port), timeout=60, **env)
    assert result.code == 2, (result.out, result.err)
    assert result.err.startswith(f"spangraph: error: {setting}")
    assert "Traceback" not in result.err and len(result.err.splitlines()) == 1


def test_demo_piped_into_a_reader_that_stops_early_ends_quietly(tmp_path: Path) -> None:
    """`spangraph demo | head -2`: before, the live-tail thread printed a BrokenPipeError
    traceback."""
    home = tmp_path / "home"
    proc = subprocess.Popen(
        [*SPANGRAPH, "demo"],
        env=clean_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        lines = [proc.stdout.readline() for _ in range(4)]  # into the live events
        proc.stdout.close()  # the reader stops
        err = proc.stderr.read().decode()
        assert proc.wait(60) == 0, err
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
        cli(home, "down")
    assert b"live events" in b"".join(lines)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


@pytest.mark.usefixtures("cli_graph")
def test_query_workflows_of_one_execution(
    sg: spangraph.Spangraph, capsys: pytest.CaptureFixture[str]
) -> None:
    """The runs of one logical execution (a run resumed in another trace, a LangGraph
    thread's turns): `--execution ID`, newest first; any other run left out."""
    job = f"job/{uuid.uuid4().hex[:8]}"
    with spangraph.workflow("ingest", execution_id=job) as first:
        first.paused(reason="waiting for rows")
    with spangraph.workflow("ingest", execution_id=job, resumed_from=first.ref) as second:
        pass
    with spangraph.workflow("ingest") as alone:
        pass
    assert spangraph.flush(10)
    found = queries.workflows(sg.store, execution_id=job)
    assert [w["workflow_id"] for w in found] == [second.workflow_id, first.workflow_id]
    assert {w["execution_id"] for w in found} == {job}
    # a run given no execution id is an execution of its own, by its workflow id
    [own] = queries.workflows(sg.store, execution_id=alone.workflow_id)
    assert own["workflow_id"] == alone.workflow_id
    assert queries.workflows(sg.store, execution_id="no-such-execution") == []
    assert cli_main(["query", "workflows", "--execution", job, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [w["workflow_id"] for w in listed] == [second.workflow_id, first.workflow_id]
    assert cli_main(["query", "workflows", "--execution", job]) == 0
    table = capsys.readouterr().out
    assert first.workflow_id in table and second.workflow_id in table
    assert alone.workflow_id not in table
    # the tree of each says where it is in its execution; a run alone in its own, nothing
    assert cli_main(["query", "tree", second.workflow_id or ""]) == 0
    said = f"execution {job}: run 2 of 2 (spangraph query workflows --execution {job})"
    lines = capsys.readouterr().out.splitlines()
    assert said in lines
    assert f"resumed from run {first.workflow_id}" in lines  # its RESUMED_FROM edge
    assert queries.resumed_runs(sg.store, first.span_id) == []
    assert cli_main(["query", "tree", alone.workflow_id or ""]) == 0
    assert "execution" not in capsys.readouterr().out


@pytest.mark.usefixtures("cli_graph")
def test_query_workflows_says_why_a_run_failed(capsys: pytest.CaptureFixture[str]) -> None:
    """The list of runs said `failed` and not why (the message was in --json only)."""
    name = f"why-{uuid.uuid4().hex[:8]}"
    with contextlib.suppress(LookupError), spangraph.workflow(name):
        raise LookupError("no such user: 42")
    with spangraph.workflow(name):
        pass
    assert spangraph.flush(10)
    assert cli_main(["query", "workflows", "--name", name]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        *("workflow_id", "name", "state", "duration_ms", "started", "age", "error", "jaeger_url")
    ]
    failed = next(line for line in lines if " failed " in line)
    assert "LookupError: no such user: 42" in failed
    assert cli_main(["query", "workflows", "--name", name, "--state", "completed"]) == 0
    assert "error" not in capsys.readouterr().out.splitlines()[0]  # no failed run: no column
    # a LangGraph run that stopped at interrupt(): completed, and waiting for an answer
    with spangraph.workflow(name) as waiting:
        waiting.span.set_attribute("langgraph.interrupted", True)
    assert spangraph.flush(10)
    assert cli_main(["query", "workflows", "--name", name, "--state", "completed"]) == 0
    [row] = [line for line in capsys.readouterr().out.splitlines() if waiting.workflow_id in line]
    assert " completed (interrupted) " in row


@pytest.mark.usefixtures("cli_graph")
def test_an_error_recorded_only_as_an_exception_is_said(
    sg: spangraph.Spangraph, capsys: pytest.CaptureFixture[str]
) -> None:
    """A span that failed with no status message, its error only in its `exception`
    event (OpenLLMetry's google-genai calls, ``record_exception`` + ``Status(ERROR)``):
    `query tree` and `query workflows` printed a bare `failed`. Now its last recorded
    exception, once, where it arose."""
    from opentelemetry import trace
    from opentelemetry.trace import Status, StatusCode

    tracer = sg.tracer_provider.get_tracer("genai-like")
    name = f"exc-{uuid.uuid4().hex[:8]}"

    def call(span_name: str, *errors: Exception) -> trace.Span:
        span = tracer.start_span(span_name, attributes={"gen_ai.operation.name": "chat"})
        for error in errors:
            span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR))
        return span

    with spangraph.workflow(name) as run, spangraph.step("ask"):
        call("generate_content m", TimeoutError("first try"), ValueError("500 INTERNAL")).end()
    # a run of another instrumentation whose top span failed the same way
    top = tracer.start_span(name, attributes={"gen_ai.operation.name": "invoke_agent"})
    with trace.use_span(top, end_on_exit=False):
        call("chat m", KeyError("gone")).end()
    top.record_exception(KeyError("gone"))
    top.set_status(Status(StatusCode.ERROR))
    top.end()
    assert spangraph.flush(10)
    assert cli_main(["query", "tree", run.workflow_id or ""]) == 0
    lines = capsys.readouterr().out.splitlines()
    [llm] = [line for line in lines if "generate_content m" in line]
    assert llm.endswith("— ValueError: 500 INTERNAL")  # the last one recorded
    assert not any("first try" in line for line in lines)
    top_id = format(top.get_span_context().trace_id, "032x")
    assert cli_main(["query", "tree", top_id]) == 0
    errors = [line.partition(" — ")[2] for line in capsys.readouterr().out.splitlines()]
    assert errors[-2:] == ["", "KeyError: 'gone'"]  # said where it arose, not above
    assert cli_main(["query", "workflows", "--name", name]) == 0
    [row] = [line for line in capsys.readouterr().out.splitlines() if top_id in line]
    assert " failed " in row and "KeyError: 'gone'" in row


def test_query_workflows_refuses_an_unknown_state(tmp_path: Path) -> None:
    result = cli(tmp_path, "query", "workflows", "--state", "bogus", timeout=30)
    assert result.code == 2 and "invalid choice: 'bogus'" in result.err


def test_query_cypher_json_keeps_relationships_and_paths(demo: Demo) -> None:
    result = cli(
        demo.home,
        "query",
        "cypher",
        f"MATCH p = (w:Workflow {{workflow_id: '{demo.workflow_id}'}})-[r:PARENT_OF]->(s) "
        "RETURN r, p ORDER BY s.start_ns LIMIT 1",
        "--json",
    )
    assert result.code == 0, result.err
    [row] = json.loads(result.out)
    assert row["r"] == {"type": "PARENT_OF", "properties": {}}
    assert row["p"]["nodes"][0]["name"] == "research-assistant"
    assert row["p"]["relationships"] == [row["r"]]


def test_query_cypher_takes_parameters(demo: Demo) -> None:
    """The statements of docs/graph-model.md use ``$workflow_id`` and the like: without
    a way to give them, every one of them failed ("Missing parameters")."""
    result = cli(
        demo.home,
        "query",
        "cypher",
        "MATCH (w:Workflow {workflow_id: $workflow_id}) "
        "RETURN w.name AS name, $n AS n, $text AS text",
        "-p",
        f"workflow_id={demo.workflow_id}",
        "--param-json",
        "n=[1, 2.5]",
        "--param",
        "text=a=b",
        "--json",
    )
    assert result.code == 0, result.err
    assert json.loads(result.out) == [{"name": "research-assistant", "n": [1, 2.5], "text": "a=b"}]
    as_text = cli(demo.home, "query", "cypher", "RETURN $n AS n", "-p", "n=7", "--json")
    assert json.loads(as_text.out) == [{"n": "7"}]  # --param is text: an id of digits stays one
    for bad, said in (
        (["-p", "no-equals"], "NAME=VALUE"),
        (["-p", "a b=1"], "NAME=VALUE"),
        (["--param-json", "n={"], "n: not JSON"),
        (["-p", "n=1", "--param-json", "n=1"], "parameter n given twice"),
        # before: FalkorDB's syntax error, or the number silently made the int64 bound
        (["--param-json", "n=NaN"], "n: NaN: the stores take finite numbers only"),
        (["--param-json", "n=[1, -Infinity]"], "n: -Infinity: the stores take finite"),
        (["--param-json", "n=1e400"], "n: a number out of the 64-bit float range"),
        (["--param-json", 'n={"k": [2e400]}'], "n: a number out of the 64-bit float"),
        (["--param-json", "n=9223372036854775808"], "out of the 64-bit integer range"),
        (["--param-json", "n=[-9223372036854775809]"], "out of the 64-bit integer range"),
        (["--param-json", "n=" + "[" * 20_000 + "]" * 20_000], "n: nested too deeply"),
        # before: a traceback (the FalkorDB client refuses such a map key)
        (["--param-json", 'n={"a`b": 1}'], "a parameter cannot be sent to FalkorDB"),
        (["--param-json", 'n={"": 1}'], "Cypher map key cannot be empty"),
    ):
        refused = cli(demo.home, "query", "cypher", "RETURN $n AS n", *bad)
        assert refused.code == 2 and said in refused.err, (bad, refused.err)
        assert "Traceback" not in refused.err
    edge = cli(
        demo.home,
        "query",
        "cypher",
        "RETURN $n AS n",
        "--param-json",
        "n=[9223372036854775807, -9223372036854775808, 1e308]",
        "--json",
    )
    assert json.loads(edge.out) == [{"n": [2**63 - 1, -(2**63), 1e308]}]


def test_span_data_cannot_drive_the_terminal(demo: Demo) -> None:
    """Escape sequences in span data (a name, an attribute) are printed as visible
    escapes, not sent to the terminal to run; --json escapes them as JSON does."""
    statement = 'RETURN "x\x1b[2Jy\u202e" AS name'  # the characters themselves
    table = cli(demo.home, "query", "cypher", statement)
    assert table.code == 0, table.err
    assert "\x1b" not in table.out and "\u202e" not in table.out
    assert "x\\x1b[2Jy\\u202e" in table.out
    as_json = cli(demo.home, "query", "cypher", statement, "--json")
    assert json.loads(as_json.out) == [{"name": "x\x1b[2Jy\u202e"}]


def test_print_tree_names_the_run_of_a_workflow_started_inside() -> None:
    from spangraph._tree_text import print_tree
    from spangraph.queries import TreeNode

    step = TreeNode({"kind": "step", "name": "delegate", "state": "completed", "workflow_id": "w"})
    sub = TreeNode({"kind": "workflow", "name": "sub", "state": "completed", "workflow_id": "w2"})
    step.children.append(sub)
    root = TreeNode({"kind": "workflow", "name": "top", "state": "completed", "workflow_id": "w"})
    root.children.append(step)
    lines: list[str] = []
    print_tree([root], lines.append)
    assert [line.endswith("(run w2)") for line in lines] == [False, False, True]


def test_decisions_table_does_not_call_a_chosen_route_unexplored() -> None:
    """A route chosen without an option block of its own (a LangGraph conditional edge:
    the node runs as a step beside the decision) read `search* (unexplored)`."""
    from spangraph._cli_query import _decision_rows

    options = [
        {"name": "search", "chosen": True, "explored": False, "state": None},
        {"name": "answer", "chosen": False, "explored": False, "state": None},
        {"name": "tried", "chosen": False, "explored": True, "state": "failed"},
    ]
    row = {"name": "route", "options": options, "chosen": "search"}
    row |= {"reason": None, "score": None, "span_id": "ab" * 8, "state": "completed"}
    [shown] = _decision_rows([row])
    assert shown["options"] == "search*, answer (unexplored), tried (failed)"


def test_print_tree_says_the_tokens_of_a_model_call() -> None:
    from spangraph._tree_text import print_tree
    from spangraph.queries import TreeNode

    usage = {"gen_ai.usage.input_tokens": 1200, "gen_ai.usage.output_tokens": 34}
    root = TreeNode({"kind": "workflow", "name": "top", "state": "completed", "workflow_id": "w"})
    other = {"llm.token_count.prompt": 10, "llm.token_count.completion": 5}  # OpenInference's
    calls = [("chat big", usage), ("chat quiet", {}), ("step-like", usage), ("ChatOpenAI", other)]
    for name, attributes in calls:
        kind = "step" if name == "step-like" else "llm"
        root.children.append(
            TreeNode({"kind": kind, "name": name, "state": "completed", "attributes": attributes})
        )
    lines: list[str] = []
    print_tree([root], lines.append)
    assert lines[1].endswith("  1,200 in / 34 out tokens")
    assert "tokens" not in lines[2] and "tokens" not in lines[3]  # no usage; no model call
    assert lines[4].endswith("  10 in / 5 out tokens")


def test_print_tree_marks_an_interrupted_run() -> None:
    from spangraph._tree_text import print_tree
    from spangraph.queries import TreeNode

    asked = {"langgraph.interrupted": True}
    root = TreeNode(
        {"kind": "workflow", "name": "approval", "state": "completed", "attributes": asked}
    )
    root.children.append(
        TreeNode({"kind": "step", "name": "ask", "state": "completed", "attributes": asked})
    )
    root.children.append(TreeNode({"kind": "step", "name": "write", "state": "completed"}))
    lines: list[str] = []
    print_tree([root], lines.append)
    assert [line.endswith("  interrupted") for line in lines] == [True, True, False]


def test_print_tree_shows_control_characters_as_escapes() -> None:
    from spangraph._tree_text import print_tree
    from spangraph.queries import TreeNode

    root = TreeNode({"kind": "work\x07flow", "name": "a\x1b]0;owned\x07b", "state": "ok\x9b"})
    lines: list[str] = []
    print_tree([root], lines.append)
    assert lines[0].startswith("  work\\x07flow a\\x1b]0;owned\\x07b ")
    assert "ok\\x9b" in lines[0]
    assert not {"\x07", "\x1b", "\x9b"} & set(lines[0])


_RAW = {"\x07", "\x1b", "\x7f", "\x9b", "\u202e", "\u2066"}


def test_query_views_show_control_characters_from_spans_as_escapes(
    sg: spangraph.Spangraph,
    graph_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The tree, branch summary, diff and decisions views print span names, states,
    choices and reasons with their control characters as visible escapes."""
    if not sg.settings.graph_url.startswith("falkordb://"):
        pytest.skip("the command line reads the graph named by SPANGRAPH_GRAPH_URL")
    with spangraph.workflow("wf\x1b[2J") as run:
        with spangraph.decision("route\x07", options=["a\x1b[31m", "b"]) as d:
            d.choose("a\x1b[31m", reason="why\u2066")
        with spangraph.branch("left\x1b]0;owned\x07") as left:
            with spangraph.step("draft"):
                pass
            with spangraph.step("polish\x9b"):
                pass
        with spangraph.branch("right\u202e") as right:
            with spangraph.step("draft"):
                pass
            with spangraph.step("cite\x7f"):
                pass
    assert spangraph.flush(10)
    assert sg.store is not None
    forged = {"id": run.span_id, "t": "\x1b[2J"}  # not hex: written by another tool
    sg.store.execute_many([("MATCH (s:Span {span_id: $id}) SET s.trace_id = $t", forged)])
    monkeypatch.setenv("SPANGRAPH_GRAPH_URL", graph_url)
    monkeypatch.setenv("SPANGRAPH_HOME", str(tmp_path))

    def out(*args: str) -> str:
        assert cli_main(list(args)) == 0
        text = capsys.readouterr().out
        assert not _RAW & set(text), text
        return text

    tree = out("query", "tree", run.workflow_id)
    assert "/trace/\\x1b[2J" in tree.splitlines()[0]
    assert "wf\\x1b[2J" in tree and "left\\x1b]0;owned\\x07" in tree
    branch = out("query", "branch", left.branch_id)
    assert branch.startswith("branch left\\x1b]0;owned\\x07 (completed, ")
    assert "polish\\x9b" in branch
    diff = out("query", "diff", left.branch_id, right.branch_id, "--branches")
    assert f"only in {left.branch_id}: polish\\x9b\n" in diff
    assert f"only in {right.branch_id}: cite\\x7f\n" in diff
    decisions = out("query", "decisions", run.workflow_id)
    assert "route\\x07" in decisions and "a\\x1b[31m*, b (unexplored)" in decisions
    assert "why\\u2066" in decisions
    as_json = out("query", "branch", left.branch_id, "--json")  # JSON escapes them itself
    assert json.loads(as_json)["name"] == "left\x1b]0;owned\x07"
    in_run = out("query", "branch", left.branch_id, "--workflow", run.workflow_id, "--json")
    assert json.loads(in_run)["workflow_ids"] == [run.workflow_id]
    assert cli_main(["query", "branch", left.branch_id, "--workflow", "elsewhere"]) == 1
    assert capsys.readouterr().err == (
        f"no branch {left.branch_id} in run elsewhere (branches are named by their ids: "
        "`spangraph query branches WORKFLOW_ID` lists a run's)\n"
    )


def test_query_json_is_strict_json(demo: Demo) -> None:
    """Before, NaN and infinities came out as Python's bare words, which jq refuses."""
    result = cli(
        demo.home, "query", "cypher", "RETURN 1.5e308 * 10 AS inf, 0.0 / 0.0 AS nan", "--json"
    )
    assert result.code == 0, result.err

    def refuse(word: str) -> None:
        raise AssertionError(f"not strict JSON: {word}")

    assert json.loads(result.out, parse_constant=refuse) == [{"inf": "Infinity", "nan": "NaN"}]


def test_query_tree_of_spans_without_a_trace_id_has_no_jaeger_line(
    sg: spangraph.Spangraph,
    graph_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Spans another program wrote without a trace id: no Jaeger link to give (before:
    ``open in Jaeger: None``)."""
    if not sg.settings.graph_url.startswith("falkordb://"):
        pytest.skip("the command line reads the graph named by SPANGRAPH_GRAPH_URL")
    assert sg.store is not None
    sg.store.execute_many(
        [
            (
                "CREATE (:Span:Workflow {span_id: 'no-trace-1', workflow_id: 'wf-no-trace',"
                " name: 'untraced', kind: 'workflow', start_ns: 1, attributes: '{}'})",
                {},
            )
        ]
    )
    monkeypatch.setenv("SPANGRAPH_GRAPH_URL", graph_url)
    monkeypatch.setenv("SPANGRAPH_HOME", str(tmp_path))
    assert cli_main(["query", "tree", "wf-no-trace"]) == 0
    out = capsys.readouterr().out
    assert "untraced" in out and "Jaeger" not in out


def test_query_cypher_reports_a_mistake_on_a_graph_never_written(
    embedded_server: ServerInfo,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """FalkorDB answers every statement on a graph that does not exist yet "empty key",
    read as no rows: a statement with a mistake printed "(no rows)" and exited 0."""
    graph = f"never_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv(
        "SPANGRAPH_GRAPH_URL", embedded_server.graph_url.rsplit("/", 1)[0] + "/" + graph
    )
    monkeypatch.setenv("SPANGRAPH_HOME", str(tmp_path))
    assert cli_main(["query", "cypher", "MATCH (n RETURN n"]) == 2
    assert "rejected" in capsys.readouterr().err
    assert cli_main(["query", "cypher", "MATCH (n) RETURN count(n) AS n"]) == 0
    assert "0" in capsys.readouterr().out


# -- terminals, signals and a server that goes away -----------------------------------------


def test_demo_on_a_terminal_that_cannot_show_its_marks(tmp_path: Path) -> None:
    """A terminal whose encoding has no "—" (a latin-1 locale): the demo stopped with a
    UnicodeEncodeError traceback, after starting the embedded server."""
    home = tmp_path / "home"
    try:
        result = cli(home, "demo", timeout=120, PYTHONIOENCODING="latin-1")
    finally:
        cli(home, "down")
    assert result.code == 0, result.err
    assert "spangraph demo \\u2014 graph store" in result.out
    assert "Traceback" not in result.err


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # (the point)
def test_a_ctrl_c_lost_inside_a_destructor_still_interrupts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Ctrl-C that arrives while the garbage collector runs a ``__del__`` (redis-py's
    connection pools are freed so) raises there, where Python only reports it: the demo
    ran on to the end and exited 0."""
    import gc
    import signal

    from spangraph import _terminal

    def run_demo(out: object, *, home: str | None = None) -> int:
        class Pool:
            def __del__(self) -> None:
                handler = signal.getsignal(signal.SIGINT)
                assert callable(handler)
                handler(signal.SIGINT, None)  # what the signal does, here

        pool = Pool()
        pool.cycle = pool  # type: ignore[attr-defined]
        del pool
        gc.collect()  # "Exception ignored in: <function Pool.__del__ ...>"
        return 0

    monkeypatch.setattr("spangraph._demo.run_demo", run_demo)
    before = signal.getsignal(signal.SIGINT)
    assert cli_main(["demo", "--home", "unused"]) == 130
    assert "spangraph: interrupted" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is before  # put back
    assert _terminal.interrupted.is_set()
    _terminal.interrupted.clear()


def test_sigterm_ends_the_demo_as_ctrl_c_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM killed the demo at once and left its run `running` in the graph for good;
    it is a KeyboardInterrupt while the demo runs (the run ends `cancelled`)."""
    import signal

    from spangraph import _terminal

    seen: list[object] = []

    def run_demo(out: object, *, home: str | None = None) -> int:
        seen.append(signal.getsignal(signal.SIGTERM))
        return 0

    monkeypatch.setattr("spangraph._demo.run_demo", run_demo)
    before = signal.getsignal(signal.SIGTERM)
    assert cli_main(["demo", "--home", "unused"]) == 0
    assert seen == [_terminal.on_interrupt]
    assert signal.getsignal(signal.SIGTERM) is before
    assert not _terminal.interrupted.is_set()


def test_the_live_tail_ends_quietly_when_its_server_goes(private_servers: Any) -> None:
    """`spangraph down` while the demo ran: its live-tail thread died with a
    ConnectionError traceback."""
    import threading

    from spangraph._demo import _LiveTail

    server, info = private_servers.start("tail")
    lines: list[str] = []
    tail = _LiveTail(info.redis_url, "wf-gone", lines.append)
    died: list[object] = []
    previous = threading.excepthook
    threading.excepthook = lambda hook_args: died.append(hook_args.exc_value)
    try:
        tail.start()
        server.stop()
        assert tail.done.wait(15), "the tail did not notice the server went"
        tail.join(5)
    finally:
        threading.excepthook = previous
    assert died == []
    assert tail.error is not None


def test_the_live_tail_ends_quietly_when_the_demo_is_interrupted(
    embedded_server: ServerInfo, redis_client: Any
) -> None:
    """Ctrl-C or SIGTERM while the demo printed live events: its printing raises
    KeyboardInterrupt on whatever thread prints, and the live-tail thread died with a
    traceback after `spangraph: interrupted`."""
    import threading

    from spangraph._demo import _LiveTail
    from spangraph.processors.live import workflow_channel

    def interrupted(line: str) -> None:
        raise KeyboardInterrupt

    tail = _LiveTail(embedded_server.redis_url, "wf-interrupted", interrupted)
    died: list[object] = []
    previous = threading.excepthook
    threading.excepthook = lambda hook_args: died.append(hook_args.exc_type)
    try:
        tail.start()
        message = {"seq": 1, "type": "span.started", "kind": "step", "name": "s"}
        deadline = time.monotonic() + 15
        while not tail.done.is_set() and time.monotonic() < deadline:
            redis_client.publish(workflow_channel("wf-interrupted"), json.dumps(message))
            tail.done.wait(0.05)
        tail.join(5)
    finally:
        threading.excepthook = previous
    assert tail.done.is_set() and not tail.is_alive()
    assert died == []


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        # loopback all the same: they were taken for other machines' addresses, so the
        # service answered any Host name (a web page through a rebound DNS name)
        ("127.1", True),
        ("localhost.", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", False),
        ("", False),
        ("::", False),
        ("no-such-host.invalid", False),
    ],
)
def test_which_bind_addresses_are_loopback(host: str, loopback: bool) -> None:
    from spangraph.cli import _is_loopback

    assert _is_loopback(host) is loopback


def test_events_of_a_run_without_events_is_no_unknown_run(demo: Demo) -> None:
    """A run of plain spans (another program's, with no events) is no unknown id: its
    events are no rows, exit 0; only a run with no span at all exits 1."""
    from spangraph.config import Settings
    from spangraph.stores import open_store

    store = open_store(Settings.from_env(home=demo.home))
    workflow_id = f"quiet-{uuid.uuid4().hex[:8]}"
    try:
        store.execute_many(
            [
                (
                    "CREATE (:Span {span_id: $id, name: 'quiet', kind: 'step', "
                    "state: 'completed', start_ns: 1, end_ns: 2, workflow_id: $w})",
                    {"id": uuid.uuid4().hex[:16], "w": workflow_id},
                )
            ]
        )
        events = cli(demo.home, "query", "events", workflow_id)
        assert (events.code, events.out.strip()) == (0, "(no rows)"), events.err
        unknown = cli(demo.home, "query", "events", f"{workflow_id}-nope")
        assert unknown.code == 1 and "no spans for workflow" in unknown.err
    finally:
        store.execute_many([("MATCH (s:Span {workflow_id: $w}) DELETE s", {"w": workflow_id})])
        store.close()


# -- questions about one run, asked in this process ----------------------------------------


@pytest.fixture
def query(
    sg: spangraph.Spangraph,
    graph_url: str,
    embedded_server: ServerInfo,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Callable[..., Result]:
    """``spangraph query ARGS`` run in this process on the test's graph and the session
    Redis (``env`` set for that call only): its exit code, stdout and stderr."""
    if not sg.settings.graph_url.startswith("falkordb://"):
        pytest.skip("the command line reads the graph named by SPANGRAPH_GRAPH_URL")
    monkeypatch.setenv("SPANGRAPH_GRAPH_URL", graph_url)
    monkeypatch.setenv("SPANGRAPH_HOME", str(tmp_path))
    monkeypatch.setenv("SPANGRAPH_REDIS_URL", embedded_server.redis_url)

    def run(*args: str, **env: str) -> Result:
        with monkeypatch.context() as patched:
            for name, value in env.items():
                patched.setenv(name, value)
            code = cli_main(["query", *args])
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run


def _live_messages(client: Any, workflow_id: str) -> list[dict[str, Any]]:
    from spangraph.processors.live import stream_key

    return [json.loads(fields[b"data"]) for _, fields in client.xrange(stream_key(workflow_id))]


def test_events_of_spans_still_running_come_from_the_live_stream(
    query: Callable[..., Result], sg: spangraph.Spangraph, redis_client: Any
) -> None:
    """A span's events are written to the graph when it ends: those of spans still
    running, or whose process was killed, were missing from `query events` and `query
    replay` (workflow.started, sleep.started, the program's own ...), while the run's live
    stream had them. Now they are read from it, marked `from: live`, in time order, and an
    event both places hold is shown once."""
    with spangraph.workflow("polling") as run:
        spangraph.event("agent.message.appended", role="user")
        with spangraph.step("plan"):
            spangraph.event("plan.made", steps=2)
        with spangraph.step("long_poll") as poll:
            spangraph.event("poll.begin", url="https://queue.internal/jobs")
            spangraph.sleep(0.001, reason="polling")
            assert spangraph.flush(10)
            # poll.begin in the graph as well (as another process of the run may write it)
            [begin] = [m for m in _live_messages(redis_client, run.workflow_id)
                       if m["type"] == "poll.begin"]  # fmt: skip
            assert sg.store is not None
            sg.store.execute_many(
                [
                    (
                        "MATCH (s:Span {span_id: $id}) CREATE (s)-[:HAS_EVENT]->(:Event "
                        "{span_id: $id, seq: 1, name: 'poll.begin', time_ns: $t, attributes: '{}'})",
                        {"id": poll.span_id, "t": begin["time_unix_nano"]},
                    )
                ]
            )
            events = query("events", run.workflow_id, "--json")
            replay = query("replay", run.workflow_id, "--json")
            table = query("events", run.workflow_id)
    assert (events.code, events.err) == (0, "")
    rows = json.loads(events.out)
    assert [(r["span_name"], r["name"], r["from"]) for r in rows] == [
        ("polling", "workflow.started", "live"),
        ("polling", "agent.message.appended", "live"),
        ("plan", "step.started", "graph"),
        ("plan", "plan.made", "graph"),
        ("plan", "step.completed", "graph"),
        ("long_poll", "step.started", "live"),
        ("long_poll", "poll.begin", "graph"),
        ("long_poll", "sleep.started", "live"),
        ("long_poll", "sleep.completed", "live"),
    ]
    assert [r["time_ns"] for r in rows] == sorted(r["time_ns"] for r in rows)
    assert rows[1]["attributes"] == {"role": "user"}
    assert (replay.code, replay.err) == (0, "")
    messages = json.loads(replay.out)
    assert [m["seq"] for m in messages] == list(range(1, len(messages) + 1))
    assert [(m["type"], m["name"], m["from"]) for m in messages] == [
        ("span.started", "polling", "graph"),
        ("workflow.started", "polling", "live"),
        ("agent.message.appended", "polling", "live"),
        ("span.started", "plan", "graph"),
        ("step.started", "plan", "graph"),
        ("plan.made", "plan", "graph"),
        ("step.completed", "plan", "graph"),
        ("span.ended", "plan", "graph"),
        ("span.started", "long_poll", "graph"),
        ("step.started", "long_poll", "live"),
        ("poll.begin", "long_poll", "graph"),
        ("sleep.started", "long_poll", "live"),
        ("sleep.completed", "long_poll", "live"),
    ]
    assert messages[1]["workflow_id"] == run.workflow_id
    assert set(messages[1]) == set(messages[0])  # the shape of the graph's messages
    header, _, first, *_ = table.out.splitlines()
    assert header.split()[-1] == "from" and first.split()[-1] == "live"


def test_events_of_spans_still_running_without_their_live_stream_say_why(
    query: Callable[..., Result], redis_client: Any, closed_port: int
) -> None:
    """When the live stream cannot be read, what the graph has, exit 0, and one line on
    stderr saying that spans still run and why their events are not shown."""
    from spangraph.processors.live import stream_key

    down_url = f"redis://127.0.0.1:{closed_port}/0"
    with spangraph.workflow("polling") as run:
        with spangraph.step("plan"):
            pass
        with spangraph.step("long_poll"):
            spangraph.event("poll.begin")
            assert spangraph.flush(10)
            down = query("events", run.workflow_id, SPANGRAPH_REDIS_URL=down_url)
            off = query("replay", run.workflow_id, SPANGRAPH_REDIS_URL="off")
            # options redis-py refuses, as it makes the client or as it connects
            refused = [
                query("events", run.workflow_id, SPANGRAPH_REDIS_URL=f"{down_url}?{option}")
                for option in ("socket_timeout=abc", "ssl_cert_reqs=bogus")
            ]
            redis_client.delete(stream_key(run.workflow_id))
            gone = query("events", run.workflow_id, "--json")
    said = (
        f"spangraph: 2 spans of run {run.workflow_id} are still running (or their process "
        "died): their events are not in the graph until they end, and "
    )
    for result in (down, off, gone, *refused):
        assert result.code == 0, result.err
        assert result.err.startswith(said) and result.err.count("\n") == 1, result.err
        assert "step.started" in result.out and "poll.begin" not in result.out
    assert f"the run's live stream cannot be read (Redis at {down_url}: " in down.err
    assert "and live events are off (SPANGRAPH_REDIS_URL=off): shown is what" in off.err
    assert "and the run's live stream is gone (expired, or the run was" in gone.err
    # a run whose spans all ended: the graph has every event, Redis is not asked
    assert spangraph.flush(10)
    ended = query("events", run.workflow_id, SPANGRAPH_REDIS_URL=down_url)
    assert (ended.code, ended.err) == (0, "")
    assert "poll.begin" in ended.out and "from" not in ended.out.splitlines()[0].split()


def test_questions_about_a_run_that_does_not_exist_exit_1(
    query: Callable[..., Result],
) -> None:
    """`query decisions|branches|monitors|analytics` of an id no run has printed
    "(no rows)" and exited 0, as of a run that has none."""
    with spangraph.workflow("plain") as run:
        with spangraph.decision("route", options=["a", "b"]) as d:
            d.choose("a")
        with spangraph.decision("undecided", options=["x"]):
            pass
    assert spangraph.flush(10)
    for what in ("decisions", "branches", "monitors"):
        for extra in ([], ["--json"]):
            unknown = query(what, "nosuch-typo", *extra)
            assert (unknown.code, unknown.out) == (1, ""), unknown
            assert unknown.err == (
                "no spans for workflow nosuch-typo (runs are named by their workflow ids: "
                "`spangraph query workflows` lists the latest)\n"
            )
    for what in ("branches", "monitors"):  # a run that has none: no rows
        assert query(what, run.workflow_id) == Result(0, "(no rows)\n", "")
    assert query("analytics", "route").code == 0
    assert query("analytics", "undecided") == Result(0, "(no rows)\n", "")  # never chosen
    other_case = query("analytics", "Route")
    assert (other_case.code, other_case.out) == (1, "")
    assert other_case.err == (
        "no decision named 'Route' (names are compared exactly: did you mean 'route'?)\n"
    )
    nothing = query("analytics", "nosuch-decision", "--json")
    assert (nothing.code, nothing.out) == (1, "")
    assert nothing.err.startswith("no decision named 'nosuch-decision' (`query analytics` ")
    a_run = query("analytics", run.workflow_id)
    assert a_run.code == 1
    assert a_run.err.startswith(f"{run.workflow_id} is a workflow id: `query analytics` takes")


def _two_branches() -> tuple[Any, Any, Any]:
    """A run with two branches, written: the handles of the run and of its branches."""
    with spangraph.workflow("wf") as run:
        with spangraph.branch("left") as left, spangraph.step("draft"):
            pass
        with spangraph.branch("right") as right, spangraph.step("draft"):
            pass
    assert spangraph.flush(10)
    return run, left, right


def test_ids_of_another_kind_name_their_run(
    query: Callable[..., Result], sg: spangraph.Spangraph
) -> None:
    """A trace id, a span id or a branch id given for a workflow id said only `no spans
    for workflow ...`."""
    from spangraph import queries

    run, left, _ = _two_branches()
    assert sg.store is not None
    node = queries.node(sg.store, run.span_id)
    assert node is not None
    trace_id, workflow_id = node["trace_id"], run.workflow_id
    for given in (trace_id, trace_id.upper()):
        as_trace = query("tree", given)
        assert (as_trace.code, as_trace.out) == (1, "")
        assert as_trace.err == (
            f"no spans for workflow {given}: {given} is a trace id, of run {workflow_id}: "
            f"`spangraph query tree {workflow_id}`\n"
        )
    as_span = query("tree", run.span_id, "--json")
    assert (as_span.code, as_span.out) == (1, "")
    assert as_span.err == (
        f"no spans for workflow {run.span_id}: {run.span_id} is the span id of workflow 'wf' "
        f"of run {workflow_id}: `spangraph query tree {workflow_id}`\n"
    )
    as_branch = query("events", left.branch_id)
    assert as_branch.code == 1
    assert as_branch.err.startswith(
        f"no spans for workflow {left.branch_id}: {left.branch_id} is a branch id, of run "
        f"{workflow_id}: `spangraph query events {workflow_id}`"
    )


def test_diff_of_branch_ids_as_runs_hints_at_branches(query: Callable[..., Result]) -> None:
    """`query diff A B` of two branch ids without --branches: only "runs ... do not
    exist" (the reverse mistake was hinted at)."""
    run, left, right = _two_branches()
    branches = query("diff", left.branch_id, right.branch_id)
    assert (branches.code, branches.out) == (1, "")
    assert branches.err == (
        f"runs {left.branch_id!r} and {right.branch_id!r} do not exist: no spans have those "
        f"ids, nothing to compare (they are branch ids, of run {run.workflow_id}; to compare "
        "branches, add --branches)\n"
    )
    one = query("diff", left.branch_id, "nosuch-run")
    assert one.code == 1
    assert one.err.endswith(
        f"({left.branch_id} is a branch id, of run {run.workflow_id}; to compare branches, "
        "add --branches)\n"
    )


def test_ids_in_capitals_are_found(query: Callable[..., Result]) -> None:
    """Ids are stored lower-case (UUIDs, hex): one given in capitals was no run, where
    the HTTP API finds a span id in capitals."""
    run, left, right = _two_branches()
    upper = run.workflow_id.upper()
    tree = query("tree", upper)
    assert tree.code == 0 and re.search(r"branch\s+left\s+completed", tree.out), tree
    assert json.loads(query("decisions", upper, "--json").out) == []
    events = json.loads(query("events", upper, "--json").out)
    assert events[0]["name"] == "workflow.started"
    assert "the two have the same structure" in query("diff", upper, run.workflow_id).out
    assert query("branch", left.branch_id.upper()).code == 0
    assert query("diff", "--branches", left.branch_id.upper(), right.branch_id).code == 0
    assert json.loads(query("path", run.span_id.upper(), "--json").out)[0]["name"] == "wf"
    # and the runs --workflow options name
    assert query("branch", left.branch_id, "--workflow", upper).code == 0
    assert (
        query("diff", "--branches", left.branch_id, right.branch_id, "--workflow-a", upper).code
        == 0
    )


def test_query_tree_marks_the_attempts_of_a_retried_step(query: Callable[..., Result]) -> None:
    """The attempts of a retried step were identical rows (`fetch failed`, `fetch
    completed`, nothing to tell them apart)."""
    calls: list[int] = []

    @spangraph.step(retries=2, backoff=0)
    def fetch() -> str:
        calls.append(1)
        if len(calls) < 2:
            raise ConnectionError("503 from docs-api")
        return "doc"

    with spangraph.workflow("wf") as run:
        fetch()
        with spangraph.step("once"):
            pass
    assert spangraph.flush(10)
    tree = query("tree", run.workflow_id)
    assert tree.code == 0, tree.err
    lines = [line.rstrip() for line in tree.out.splitlines()]
    fetches = [line for line in lines if " fetch " in line]
    assert len(fetches) == 2
    assert re.search(
        r"step\s+fetch\s+failed\s+[\d.]+ ms  attempt 1/3  — ConnectionError: 503 from docs-api$",
        fetches[0],
    )
    assert re.search(r"step\s+fetch\s+completed\s+[\d.]+ ms  attempt 2/3$", fetches[1])
    [once] = [line for line in lines if " once " in line]
    assert once.endswith(" ms")  # a step without retries: no attempt


def test_query_tree_shows_an_option_never_run_as_no_time(query: Callable[..., Result]) -> None:
    """An option never explored showed the `…` of a span still running."""
    with spangraph.workflow("wf") as run:
        with spangraph.decision("route", options=["fast", "slow"]) as d:
            with d.option("fast"):
                pass
            d.choose("fast")
        with spangraph.step("waiting"):
            assert spangraph.flush(10)
            running = query("tree", run.workflow_id)
    assert spangraph.flush(10)
    tree = query("tree", run.workflow_id)
    assert tree.code == 0, tree.err
    [never] = [line.rstrip() for line in tree.out.splitlines() if " slow " in line]
    assert re.search(r"option\s+slow\s+unexplored\s+-$", never) and "…" not in never
    [waiting] = [line for line in running.out.splitlines() if " waiting " in line]
    assert re.search(r"step\s+waiting\s+running\s+…", waiting)  # still running: …


def test_query_cypher_says_it_runs_read_only_statements(
    query: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write was refused with FalkorDB's own words (`graph.RO_QUERY is to be executed
    only on read-only queries`); Neo4j's refusal (the store reads in read access mode)
    is told the same way."""
    said = (
        "spangraph: error: `query cypher` runs read-only statements: this one writes "
        "(CREATE, MERGE, SET, DELETE, REMOVE or a schema command), which the store refused\n"
    )
    assert query("cypher", "CREATE (:Note {text: 'x'})") == Result(2, "", said)
    assert query("cypher", "MATCH (s:Span) SET s.seen = true") == Result(2, "", said)
    from spangraph.exceptions import StoreError

    class ReadAccessNeo4j:
        """What Neo4jStore raises for a write in read access mode."""

        def ping(self) -> None:
            pass

        def close(self) -> None:
            pass

        def query(self, cypher: str, params: Any = None) -> list[dict[str, Any]]:
            raise StoreError(
                "Neo4j rejected a query: {neo4j_code: Neo.ClientError.Statement.AccessMode} "
                "{message: Writing in read access mode not allowed. Attempted write to "
                "database 'neo4j'}"
            )

    monkeypatch.setattr("spangraph.stores.open_store", lambda settings: ReadAccessNeo4j())
    assert query("cypher", "CREATE (:Note)") == Result(2, "", said)


def test_print_tree_says_which_tool_a_tool_span_called() -> None:
    """smolagents names every tool span ``SimpleTool``, LlamaIndex ``FunctionTool.acall``,
    the Vercel AI SDK ``ai.toolCall``: the tree said which class, not which tool."""
    from spangraph._tree_text import print_tree
    from spangraph.queries import TreeNode

    root = TreeNode({"kind": "workflow", "name": "agent", "state": "completed", "workflow_id": "w"})
    for name, attributes in [
        ("SimpleTool", {"tool.name": "get_weather"}),  # OpenInference
        ("ai.toolCall", {"ai.toolCall.name": "search"}),  # the Vercel AI SDK
        ("execute_tool lookup", {"gen_ai.tool.name": "lookup"}),  # its name says it
        ("plain-tool", {}),
        ("FunctionTool.acall", {"tool.name": "call"}),  # in a word of the name: not said
    ]:
        root.children.append(
            TreeNode({"kind": "tool", "name": name, "state": "completed", "attributes": attributes})
        )
    lines: list[str] = []
    print_tree([root], lines.append)
    assert lines[1].endswith("  calls get_weather") and "SimpleTool" in lines[1]
    assert lines[2].endswith("  calls search")
    assert "calls" not in lines[3] and "calls" not in lines[4]
    assert lines[5].endswith("  calls call")


def test_print_tree_says_a_failure_where_it_arose() -> None:
    """`query tree` said `failed` and never what failed."""
    from spangraph._tree_text import print_tree
    from spangraph.queries import TreeNode

    said = "ValueError: weather service exploded for Boom"

    def failed(name: str, message: str | None, **more: Any) -> TreeNode:
        return TreeNode({"kind": "step", "name": name, "state": "failed",
                         "status_message": message, **more})  # fmt: skip

    root = failed("agent", said, workflow_id="w", kind="workflow")
    call = failed("call", said)
    call.children.append(failed("inner", said))
    slow = failed("slow", "TimeoutError: step 'fetch' exceeded its timeout of 0.05 s")
    slow.children.append(failed("fetch", "TimeoutError: exceeded its timeout of 0.05 s"))
    root.children += [
        call,
        failed("cut", "AgentGenerationError: Error while generating output:\n500 - busy"),
        failed("quiet", None),
        failed("long", "E: " + "x" * 300),
        slow,  # a step's timeout, which the span above names with it: said once, on the step
        TreeNode({"kind": "step", "name": "fine", "state": "completed", "status_message": "ok"}),
    ]
    lines: list[str] = []
    print_tree([root], lines.append)
    errors = [line.partition(" — ")[2] for line in lines]
    assert errors == [
        "",  # the run and `call` fail with `inner`'s error: said once, where it arose
        "",
        said,
        "AgentGenerationError: Error while generating output: 500 - busy",
        "",
        "E: " + "x" * 94 + "...",
        "",
        "TimeoutError: exceeded its timeout of 0.05 s",
        "",
    ]


def test_an_error_s_first_line_for_tables_and_trees() -> None:
    """`query workflows` printed a failed run's whole message, a JavaScript stack or a
    Python traceback included, over many lines; `query tree` printed `— [` for an error
    that is JSON over several lines (OpenInference's LangGraph.js interrupt)."""
    from spangraph._cli_query import _error_of
    from spangraph._tree_text import first_line

    js = "500 upstream failed\n\nError: 500 upstream failed\n    at fetch (file:1:2)"
    assert _error_of({"state": "failed", "status_message": js}) == "500 upstream failed"
    assert _error_of({"state": "completed", "status_message": js}) is None
    assert _error_of({"state": "failed", "status_message": " \n "}) is None
    interrupt = '[\n  {\n    "value": "approve?",\n    "when": "during"\n  }\n]'
    assert first_line(interrupt) == '[ { "value": "approve?", "when": "during" } ]'
    assert first_line("E: " + "x" * 300) == "E: " + "x" * 94 + "..."
    assert first_line("Failed:\n  cause here\nmore") == "Failed: cause here"
    # prose that goes on with "at" is no stack; a cause after the message stays
    assert first_line("Invalid request:\n  at least one message is required") == (
        "Invalid request: at least one message is required"
    )
    cause = "Tool 'search' failed:\nTypeError: fetch failed\n    at fetch (f.js:1:2)"
    assert first_line(cause) == "Tool 'search' failed: TypeError: fetch failed"
    assert first_line("\nTraceback (most recent call last):\n  File 'x'\nValueError: boom") == (
        "ValueError: boom"
    )
    assert first_line("boom\n    at /app/x.js:10:5") == "boom"


def test_print_tree_says_an_error_once_without_the_traceback_after_it() -> None:
    """OpenInference's LangChain instrumentation appends a Python traceback to each
    failed span's status message (without a line break): `query tree` printed the error
    with it, on every span the error went through (each traceback differs)."""
    from spangraph._cli_query import _error_of
    from spangraph._tree_text import print_tree
    from spangraph.queries import TreeNode

    said = "OpenAIAPIError('Error code: 500 - boom')"

    def failed(name: str, frames: int) -> TreeNode:
        trace = "Traceback (most recent call last):\n" + '  File "/app/x.py", line 1\n' * frames
        return TreeNode({"kind": "step", "name": name, "state": "failed",
                         "status_message": said + trace})  # fmt: skip

    root = failed("AgentExecutor", 3)
    root.span.update(kind="agent", workflow_id="t")
    sequence = failed("RunnableSequence", 2)
    sequence.children.append(failed("ChatOpenAI", 1))
    root.children.append(sequence)
    lines: list[str] = []
    print_tree([root], lines.append)
    assert [line.partition(" — ")[2] for line in lines] == ["", "", said]
    assert _error_of(root.span) == said


def test_print_tree_shows_logfire_s_message_for_a_templated_name() -> None:
    """Logfire names its spans by a message template and writes the message in
    ``logfire.msg``: the tree printed the template (`{request_data[model]!r}`)."""
    from spangraph._tree_text import print_tree
    from spangraph.queries import TreeNode

    def span(name: str, **attributes: Any) -> TreeNode:
        return TreeNode({"kind": "llm", "name": name, "state": "completed",
                         "attributes": attributes})  # fmt: skip

    root = span("Chat Completion with {request_data[model]!r}",
                **{"logfire.msg": "Chat Completion with 'gpt-4o-mini'"})  # fmt: skip
    root.children.append(span("plain {braces}"))  # no message: its name
    root.children.append(span("chat", **{"logfire.msg": "not a template"}))  # its name
    lines: list[str] = []
    print_tree([root], lines.append)
    assert [line.split()[1:4] for line in lines] == [
        ["Chat", "Completion", "with"], ["plain", "{braces}", "completed"],
        ["chat", "completed", "…"],
    ]  # fmt: skip
    assert "'gpt-4o-mini'" in lines[0] and "{" not in lines[0]


def test_print_tree_says_an_error_type_and_a_typed_error_once() -> None:
    """A failed span with no message but an ``error.type`` (the MCP SDK's tool spans, an
    Anthropic call's HTTP status) read as a bare ``failed``; an error whose message a step
    wrote with its type before it (``MidStreamFallbackError: litellm.Mid...``) and the
    call under it without was said twice."""
    from spangraph._tree_text import print_tree
    from spangraph.queries import TreeNode

    def failed(name: str, message: str | None, **attributes: Any) -> TreeNode:
        return TreeNode({"kind": "step", "name": name, "state": "failed",
                         "status_message": message, "attributes": attributes})  # fmt: skip

    root = TreeNode({"kind": "workflow", "name": "agent", "state": "completed", "workflow_id": "w"})
    tool = failed("tools/call explode", None, **{"error.type": "tool_error"})
    api = failed("chat", None, **{"error.type": "api_error", "http.response.status_code": 500})
    around = failed("around", None, **{"error.type": "api_error", "http.response.status_code": 500})
    around.children.append(failed("inner call", None, **{"error.type": "api_error",
                                                         "http.response.status_code": 500}))  # fmt: skip
    step = failed("answer", "MidStreamFallbackError: litellm.MidStreamFallbackError: cut off")
    step.children.append(failed("completion", "litellm.MidStreamFallbackError: cut off"))
    other = failed("other", "ValueError: not the same")
    other.children.append(failed("under", "KeyError: 'x'"))
    root.children += [tool, api, around, step, other, failed("bare", None)]
    lines: list[str] = []
    print_tree([root], lines.append)
    errors = [line.partition(" — ")[2] for line in lines]
    assert errors == [
        "",
        "Error: tool_error",
        "Error: api_error (HTTP 500)",
        "",  # the same type as the call under it: said once, where it arose
        "Error: api_error (HTTP 500)",
        "",
        "litellm.MidStreamFallbackError: cut off",
        "ValueError: not the same",  # a different error: said on each
        "KeyError: 'x'",
        "",
    ]
