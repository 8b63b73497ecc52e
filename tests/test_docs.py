"""The docs say what the code does: names, runnable examples, pasteable Cypher."""

from __future__ import annotations

import ast
import concurrent.futures
import contextlib
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider

import spangraph
from spangraph import queries, semconv

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _blocks(path: Path, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", path.read_text(), flags=re.S)


def test_semantic_conventions_page_lists_every_constant() -> None:
    page = (DOCS / "semantic-conventions.md").read_text()
    constants = {
        name: value
        for name, value in vars(semconv).items()
        if name.isupper() and isinstance(value, str)
    }
    assert len(constants) > 60
    missing = [f"{n} = {v}" for n, v in constants.items() if f"| `{n}` | `{v}` |" not in page]
    assert not missing, f"docs/semantic-conventions.md lacks: {missing}"
    # the page says it is generated from the docstrings: the meanings are theirs
    rows = dict(re.findall(r"^\| `(\w+)` \| .*? \| (.*) \|$", page, flags=re.M))
    differ = {
        name: (doc, rows[name])
        for name, doc in _docstrings(Path(semconv.__file__)).items()
        if name in rows and rows[name] != doc
    }
    assert not differ, differ


def _docstrings(path: Path) -> dict[str, str]:
    """Each module constant's docstring (the string after its assignment), as the page
    writes it: one line, Sphinx roles as plain code."""
    body = ast.parse(path.read_text()).body
    out = {}
    for node, after in itertools.pairwise(body):
        target = node.target if isinstance(node, ast.AnnAssign) else None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
        if (
            isinstance(target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            text = " ".join(after.value.value.split()).replace("``", "`")
            text = re.sub(r":func:`([^`]+)`", r"`\1()`", text)
            out[target.id] = re.sub(r":data:`([^`]+)`", r"`\1`", text)
    return out


def _run_example(code: str, tmp_path: Path, *checks: str) -> list[str]:
    """Run ``code`` as a script on the embedded default (a home of its own), then each
    of ``checks`` (Python code) in the same environment; their outputs. Stops the
    embedded server afterwards."""
    script = tmp_path / "example.py"
    script.write_text(code)
    env = {**os.environ, "SPANGRAPH_HOME": str(tmp_path / "home")}
    for name in ("SPANGRAPH_GRAPH_URL", "NEO4J_URI", "SPANGRAPH_REDIS_URL", "SPANGRAPH_OFFLOAD"):
        env.pop(name, None)
    try:
        proc = subprocess.run(
            [sys.executable, str(script)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        outputs = [proc.stdout]
        for check in checks:
            outputs.append(
                subprocess.run(
                    [sys.executable, "-c", check],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=True,
                ).stdout
            )
        return outputs
    finally:
        subprocess.run(
            [sys.executable, "-m", "spangraph.cli", "down"],
            env=env,
            capture_output=True,
            timeout=60,
            check=False,
        )


# the start of a check: `s`, the store of the example's settings
_ON_STORE = (
    "import json; from spangraph import queries; from spangraph.stores import open_store; "
    "from spangraph.config import Settings; s = open_store(Settings.from_env()); "
)


def test_readme_usage_example_runs(tmp_path: Path) -> None:
    """The README's Python example, as written, on the embedded default."""
    [example] = [
        b for b in _blocks(ROOT / "README.md", "python") if "configure()" in b and "research" in b
    ]
    check = "print(json.dumps([(w['name'], w['state']) for w in queries.workflows(s)]))"
    _, out = _run_example(example, tmp_path, _ON_STORE + check)
    assert '["research", "completed"]' in out


def test_readme_decision_example_runs(tmp_path: Path) -> None:
    """The README's decision example, as written (it needed an import and a run around
    it to run at all)."""
    [example] = [b for b in _blocks(ROOT / "README.md", "python") if "spangraph.decision" in b]
    check = "print(json.dumps(queries.decisions(s, queries.workflows(s)[0]['workflow_id'])))"
    _, out = _run_example(example, tmp_path, _ON_STORE + check)
    [decision] = json.loads(out)
    assert decision["chosen"] == "search" and decision["reason"] == "needs sources"


def test_query_library_example_runs(tmp_path: Path) -> None:
    """docs/graph-model.md's example of the query library, as written: on the store
    configure() writes to, and on one opened from the same settings."""
    [example] = [b for b in _blocks(DOCS / "graph-model.md", "python") if "open_store" in b]
    (out,) = _run_example(example, tmp_path)
    listed, chosen, roots = out.strip().splitlines()
    assert listed.split()[1:] == ["hello", "completed"]
    assert (chosen, roots) == ("b", "1")  # the same graph (Settings() is the default home)


def test_sdk_offload_example_runs(tmp_path: Path) -> None:
    """docs/sdk.md's offload example, as written: 10 001 spans through an agent process."""
    [example] = [b for b in _blocks(DOCS / "sdk.md", "python") if "offload=True" in b]
    (out,) = _run_example(example, tmp_path)
    stats = ast.literal_eval(out.strip().splitlines()[-1])  # what it prints
    assert stats["graph"]["sent"] == 2 * 10_001 and stats["graph"]["dropped"] == 0
    assert stats["offload"]["dropped"] == 0 and stats["live"]["dropped"] == 0


def test_sdk_shutdown_example_runs(tmp_path: Path) -> None:
    """docs/sdk.md's shutdown example, as written: the run is written, nothing dropped."""
    [example] = [b for b in _blocks(DOCS / "sdk.md", "python") if "shutdown(timeout=" in b]
    (out,) = _run_example(example, tmp_path)
    stats = ast.literal_eval(out.strip().splitlines()[-1])
    assert stats["graph"]["sent"] == 2 and stats["graph"]["dropped"] == 0
    assert stats["live"]["sent"] > 0 and stats["live"]["dropped"] == 0


def test_sdk_open_at_exit_example_runs(tmp_path: Path) -> None:
    """docs/sdk.md's example of a daemon thread's run open at exit, as written: it is
    written ``cancelled``, not left ``running``."""
    [example] = [b for b in _blocks(DOCS / "sdk.md", "python") if "daemon=True" in b]
    check = "print(json.dumps([(w['name'], w['state']) for w in queries.workflows(s)]))"
    _, out = _run_example(example, tmp_path, _ON_STORE + check)
    assert json.loads(out) == [["watch_forever", "cancelled"]]


def test_sdk_spawn_pool_example_runs(tmp_path: Path) -> None:
    """docs/sdk.md's pool example, as written: the spawned workers' spans are written."""
    [example] = [b for b in _blocks(DOCS / "sdk.md", "python") if "initializer=" in b]
    check = _ON_STORE + (
        "rows = s.query(\"MATCH (s:Span) WHERE s.project_id = 'batch' AND s.name = 'task' "
        "AND s.state = 'completed' RETURN count(s) AS n\", {}); print(rows[0]['n'])"
    )
    out, counted = _run_example(example, tmp_path, check)
    assert out.strip() == str([n * 2 for n in range(10)])
    assert counted.strip() == "10"


def test_sdk_lifespan_example_runs(tmp_path: Path) -> None:
    """docs/sdk.md's lifespan example for uvicorn, as written, served by ``uvicorn
    --workers 2`` and stopped with SIGTERM (its workers then end by the signal, without
    exit handlers): the run of the request in hand when the stop came is written, ended
    (without the lifespan's shutdown it stayed `running`)."""
    [example] = [b for b in _blocks(DOCS / "sdk.md", "python") if "lifespan" in b]
    app = textwrap.dedent(example) + textwrap.dedent(
        """
        import time

        @app.get("/")
        def slow() -> str:
            with spangraph.workflow("request") as run:
                time.sleep(1.0)
            return run.workflow_id
        """
    )
    (tmp_path / "served.py").write_text(app)
    env = {**os.environ, "SPANGRAPH_HOME": str(tmp_path / "home")}
    for name in ("SPANGRAPH_GRAPH_URL", "NEO4J_URI", "SPANGRAPH_REDIS_URL", "SPANGRAPH_OFFLOAD"):
        env.pop(name, None)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "served:app", "--port", str(port), "--workers", "2", "--log-level",
         "warning"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:  # up once it answers (its startup ran configure())
            try:
                httpx.get(f"http://127.0.0.1:{port}/nothing-here", timeout=1)
                break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline, "no startup"
                time.sleep(0.1)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            answer = pool.submit(httpx.get, f"http://127.0.0.1:{port}/", timeout=30)
            time.sleep(0.3)  # the request is in hand
            server.send_signal(signal.SIGTERM)
            workflow_id = answer.result().json()
        server.communicate(timeout=30)
    finally:
        server.kill()
    check = _ON_STORE + (
        f"print(json.dumps([(n.name, n.span['state']) for n in queries.tree(s, {workflow_id!r})]))"
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", check], env=env, capture_output=True, text=True, timeout=60
        )
        assert json.loads(out.stdout) == [["request", "completed"]], out.stderr
    finally:
        subprocess.run(
            [sys.executable, "-m", "spangraph.cli", "down"], env=env, capture_output=True,
            timeout=60, check=False,
        )  # fmt: skip


def _graph_model_queries() -> list[str]:
    return _blocks(DOCS / "graph-model.md", "cypher")


def test_graph_model_cypher_passes_neo4j_linter() -> None:
    from test_cypher_lint import failures, run_linter

    statements = {f"graph-model.md[{i}]": q for i, q in enumerate(_graph_model_queries())}
    assert len(statements) >= 5
    bad = failures(run_linter(statements))
    assert not bad, bad


def test_graph_model_cypher_answers_on_a_real_run(sg: spangraph.Spangraph) -> None:
    calls = {"n": 0}

    @spangraph.step("flaky", retries=1, backoff=0.001)
    def flaky() -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("first try fails")

    with spangraph.workflow("docs-run") as run:
        flaky()
        with spangraph.decision("docs-decision", options=["x", "y"]) as d:
            with d.option("x"):
                pass
            d.choose("x")
        with spangraph.branch("left") as left:
            pass
        with spangraph.branch("right"), spangraph.monitor(left, name="watch-left"):
            pass
        for i in range(2):  # a loop giving each pass the same branch id
            with (
                spangraph.branch("loop", branch_id="loop-id"),
                contextlib.suppress(RuntimeError),
                spangraph.step(f"pass-{i}"),
            ):
                if i:
                    raise RuntimeError("the second pass fails")
        # a run of its own: its node is a leaf of this run's tree, its step is not in it
        with spangraph.workflow("inner-run"), spangraph.step("inner-step"):
            pass
    assert spangraph.flush(10)
    assert sg.store is not None
    workflow_id = run.workflow_id
    [root] = queries.tree(sg.store, workflow_id or "")
    leaf = next(c for c in root.children if c.name == "flaky").span["span_id"]
    params = {"workflow_id": workflow_id, "span_id": leaf}
    params.update(name="docs-decision", execution_id=workflow_id)
    answers = [sg.store.query(q, params) for q in _graph_model_queries()]
    tree_rows, path_rows, failed_rows, retry_rows, running_rows = answers[:5]
    assert [r["s.name"] for r in tree_rows][:3] == ["docs-run", "flaky", "flaky"]
    assert [r["s.name"] for r in tree_rows][-1] == "inner-run"
    assert "inner-step" not in [r["s.name"] for r in tree_rows]
    assert path_rows == [{"path": ["docs-run", "flaky"]}]
    assert {"s.name": "flaky", "failures": 1} in failed_rows
    assert [(r["first.name"], r["last.state"]) for r in retry_rows] == [("flaky", "completed")]
    assert all(r["w.workflow_id"] != workflow_id for r in running_rows)
    decision_rows, branch_rows, monitor_rows, analytics_rows, resumed_rows = answers[5:]
    assert [(r["o.name"], r["o.state"], r["chosen"]) for r in decision_rows] == [
        ("x", "completed", True),
        ("y", "unexplored", False),
    ]
    # as queries.branches counts (before: the loop's branches counted each other's spans,
    # and FalkorDB gave the sums as floats)
    assert [(r["b.name"], r["nodes"], r["failed"]) for r in branch_rows] == [
        ("left", 1, 0),
        ("right", 2, 0),
        ("loop", 2, 0),
        ("loop", 2, 1),
    ]
    assert all(type(r["failed"]) is int for r in branch_rows)
    assert [(r["monitor"], r["target"]) for r in monitor_rows] == [("watch-left", "left")]
    assert [(r["option"], r["chosen"], r["succeeded"]) for r in analytics_rows] == [("x", 1, 1)]
    assert type(analytics_rows[0]["succeeded"]) is int
    assert resumed_rows == []


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")))
def test_docs_links_resolve(page: str) -> None:
    text = (DOCS / page).read_text()
    for target in re.findall(r"\]\(([^)#]+\.md)\)", text):
        assert (DOCS / target).exists(), f"{page} links to missing {target}"


def test_graph_model_span_id_shared_by_two_traces_is_as_documented(
    sg: spangraph.Spangraph, provider: TracerProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/graph-model.md: two spans with one span_id in different traces make one node,
    with the properties of the one written last, its run only, events merged by index and
    the PARENT_OF edges of both."""
    text = " ".join((DOCS / "graph-model.md").read_text().split())
    assert "two spans with the same `span_id` in different traces become **one** node" in text
    assert "its events are merged by position" in text
    forced: list[int] = []
    generator = provider.id_generator
    random_span_id = generator.generate_span_id
    monkeypatch.setattr(
        generator, "generate_span_id", lambda: forced.pop() if forced else random_span_id()
    )

    with spangraph.workflow("run-a") as a, spangraph.step("s-a") as first:
        for i in range(3):
            first.event(f"a{i}")
        with spangraph.step("child-a"):
            pass
    assert spangraph.flush(10)
    with spangraph.workflow("run-b") as b:
        forced.append(first.span.get_span_context().span_id)
        with spangraph.step("s-b") as second:
            second.event("b0")
            with spangraph.step("child-b"):
                pass
    assert spangraph.flush(10)
    assert second.span_id == first.span_id and second.trace_id != first.trace_id
    store = sg.store
    assert store is not None

    [merged] = store.query(
        "MATCH (s:Span {span_id: $id}) RETURN s.name AS name, s.workflow_id AS wf",
        {"id": first.span_id},
    )
    assert merged == {"name": "s-b", "wf": b.workflow_id}  # the span written last
    tree_a = [
        (d, n.name) for root in queries.tree(store, a.workflow_id or "") for d, n in root.walk()
    ]
    assert tree_a == [(0, "run-a"), (0, "child-a")]  # s-a is gone; its child is a root
    tree_b = [
        (d, n.name) for root in queries.tree(store, b.workflow_id or "") for d, n in root.walk()
    ]
    assert tree_b == [(0, "run-b"), (1, "s-b"), (2, "child-b")]
    events = store.query(
        "MATCH (:Span {span_id: $id})-[:HAS_EVENT]->(e:Event) RETURN e.name AS name ORDER BY e.seq",
        {"id": first.span_id},
    )
    assert [e["name"] for e in events] == [  # s-b's three events, then s-a's from index 3
        "step.started",
        "b0",
        "step.completed",
        "a2",
        "step.completed",
    ]
    edges = store.query(
        "MATCH (p:Span)-[:PARENT_OF]->(:Span {span_id: $id})-[:PARENT_OF]->(c:Span) "
        "RETURN p.name AS parent, c.name AS child",
        {"id": first.span_id},
    )
    assert {(e["parent"], e["child"]) for e in edges} == {
        (p, c) for p in ("run-a", "run-b") for c in ("child-a", "child-b")
    }
