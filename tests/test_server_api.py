"""The HTTP API (health and query routes, auth, CORS, OpenAPI) against a real store."""

from __future__ import annotations

import asyncio
import http.server
import json
import json.scanner
import os
import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis
from fastapi.testclient import TestClient
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from pydantic import TypeAdapter

import spangraph
from spangraph import queries
from spangraph import semconv as sc
from spangraph.config import Settings
from spangraph.embedded import ServerInfo
from spangraph.exceptions import StoreError, StoreUnavailableError
from spangraph.server import create_app
from spangraph.server.models import TreeNode
from spangraph.stores import FalkorDBStore


@pytest.fixture
def settings(graph_url: str, embedded_server: ServerInfo, tmp_path: Path) -> Settings:
    return Settings.from_env(
        graph_url=graph_url,
        redis_url=embedded_server.redis_url,
        home=str(tmp_path),
        jaeger_url="http://jaeger.example:16686",
    )


def _configure(settings: Settings, project: str, **extra: Any) -> None:
    """spangraph on a private TracerProvider, writing where ``settings`` point."""
    spangraph.configure(
        tracer_provider=TracerProvider(),
        graph_url=settings.graph_url,
        redis_url=settings.redis_url,
        home=str(settings.home),
        project=project,
        **extra,
    )


def _recorded_run(
    settings: Settings,
    project: str,
    name: str,
    steps: tuple[str, ...] = ("s",),
    workflow_id: str | None = None,
    **extra: Any,
) -> Any:
    """A run (its handle) of ``steps`` under one workflow, written through spangraph
    configured as by ``_configure`` (``extra`` settings too), shut down after it."""
    _configure(settings, project, **extra)
    try:
        with spangraph.workflow(name, workflow_id=workflow_id) as run:
            for step in steps:
                with spangraph.step(step):
                    pass
        assert spangraph.flush(10)
    finally:
        spangraph.shutdown()
    return run


@pytest.fixture
def run_ids(settings: Settings) -> Iterator[dict[str, str]]:
    """One finished run with a failing retried step, a decision, two branches, a monitor."""
    _configure(settings, "api")
    calls = {"n": 0}

    @spangraph.step("fetch", retries=1, backoff=0.001)
    def fetch() -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("first try fails")

    try:
        with spangraph.workflow("api-run") as run:
            fetch()
            with spangraph.decision("route", options=["a", "b"]) as d:
                with d.option("a"):
                    pass
                d.choose("a", reason="only one tried", score=1.0)
            with spangraph.branch("left") as left, spangraph.step("inside-left"):
                pass
            with spangraph.branch("right"), spangraph.monitor(left, name="watch-left"):
                pass
        assert spangraph.flush(10)
    finally:
        spangraph.shutdown()
    yield {
        "workflow_id": run.workflow_id or "",
        "trace_id": run.trace_id,
        "root": run.span_id,
        "branch_id": left.branch_id or "",
    }


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


def test_health_routes(client: TestClient) -> None:
    whole = client.get("/api/health")
    assert whole.status_code == 200
    assert whole.json()["graph"]["status"] == "ok" and whole.json()["redis"]["status"] == "ok"
    for path in ("/api/health/graph", "/api/health/neo4j", "/api/health/redis"):
        answer = client.get(path)
        assert answer.status_code == 200 and answer.json()["status"] == "ok", path


def _on_port(port: int, embedded_server: ServerInfo, tmp_path: Path) -> Settings:
    """The service's settings with its graph store at ``port`` on this host."""
    return Settings.from_env(
        graph_url=f"falkordb://127.0.0.1:{port}/g",
        redis_url=embedded_server.redis_url,
        home=str(tmp_path),
    )


def test_health_reports_a_store_that_is_down(
    embedded_server: ServerInfo, closed_port: int, tmp_path: Path
) -> None:
    """The service starts while its store is down and says so: 503 with the error."""
    with TestClient(create_app(_on_port(closed_port, embedded_server, tmp_path))) as client:
        graph = client.get("/api/health/graph")
        assert graph.status_code == 503
        assert graph.json()["status"] == "error" and graph.json()["detail"]
        assert client.get("/api/health/redis").status_code == 200
        assert client.get("/api/health").status_code == 503
        listing = client.get("/api/workflows")
        assert listing.status_code == 503 and "unavailable" in listing.json()["detail"]
        assert "503" in declared_statuses(client, "/api/workflows")


def test_health_says_a_store_that_does_not_answer_did_not(
    embedded_server: ServerInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store that takes the connection but never answers: the graph's health said
    `TimeoutError: ` and nothing more."""
    import socket

    from spangraph.server.routes import health

    monkeypatch.setattr(health, "ANSWER_WITHIN", 0.5)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        settings = _on_port(silent.getsockname()[1], embedded_server, tmp_path)
        with TestClient(create_app(settings)) as client:
            graph = client.get("/api/health/graph")
    assert graph.status_code == 503
    assert graph.json()["detail"] == "no answer within 0.5 s"


def test_health_reports_redis_that_is_down(
    graph_url: str, closed_port: int, tmp_path: Path
) -> None:
    settings = Settings.from_env(
        graph_url=graph_url, redis_url=f"redis://127.0.0.1:{closed_port}", home=str(tmp_path)
    )
    with TestClient(create_app(settings)) as client:
        redis_health = client.get("/api/health/redis")
        assert redis_health.status_code == 503 and redis_health.json()["detail"]
        assert client.get("/api/health/graph").status_code == 200


def test_workflows_list_and_filters(client: TestClient, run_ids: dict[str, str]) -> None:
    rows = client.get("/api/workflows").json()
    assert [(r["workflow_id"], r["name"], r["state"]) for r in rows] == [
        (run_ids["workflow_id"], "api-run", "completed")
    ]
    assert rows[0]["jaeger_url"] == (
        f"http://jaeger.example:16686/trace/{run_ids['trace_id']}?uiFind={run_ids['root']}"
    )
    assert client.get("/api/workflows", params={"state": "failed"}).json() == []
    assert client.get("/api/workflows", params={"name": "other"}).json() == []
    assert len(client.get("/api/workflows", params={"project_id": "api"}).json()) == 1
    assert client.get("/api/workflows", params={"state": "nonsense"}).status_code == 422
    assert client.get("/api/workflows", params={"limit": 0}).status_code == 422
    for since in (-1, 2**63):  # 2**63 raised inside the query library: a 500
        assert client.get("/api/workflows", params={"since_ns": since}).status_code == 422


def test_workflows_of_one_execution(client: TestClient) -> None:
    """``execution_id``: the runs of one logical execution (a LangGraph thread's turns, a
    run resumed in another trace), newest first; the id is a parameter, never Cypher."""
    thread = 'thread "7") OR true //'
    _post_spans(
        client,
        [
            {
                "id": 0xA00 + i,
                "name": f"turn-{i}",
                "start": i,
                "attrs": {
                    "spangraph.kind": "workflow",
                    "spangraph.workflow.id": f"turn-{i}",
                    "spangraph.execution.id": thread if i != 1 else "another",
                },
            }
            for i in range(3)
        ],
    )
    # an agent framework's run (a root agent span, its run id the trace id) in the thread
    _post_spans(
        client,
        [
            {
                "id": 0xA10,
                "name": "invoke_agent helper",
                "start": 10,
                "attrs": {
                    "gen_ai.operation.name": "invoke_agent",
                    "spangraph.execution.id": thread,
                },
            }
        ],
    )
    answer = client.get("/api/workflows", params={"execution_id": thread})
    assert answer.status_code == 200, answer.text
    assert [r["name"] for r in answer.json()] == ["invoke_agent helper", "turn-2", "turn-0"]
    assert [r["workflow_id"] for r in answer.json()][1:] == ["turn-2", "turn-0"]
    assert [r["execution_id"] for r in answer.json()] == [thread, thread, thread]
    assert client.get("/api/workflows", params={"execution_id": "none"}).json() == []
    # empty: no filter
    assert len(client.get("/api/workflows", params={"execution_id": ""}).json()) >= 3


def test_a_trace_id_names_a_run_only_by_the_trace_s_top_span(client: TestClient) -> None:
    """A run started inside a trace's own run (its id the trace id: a LangChain chain at
    the root) can arrive first, over OTLP: the trace id then named that inner run, and the
    page left for it while the trace's run was on its way. Only the trace's top span
    names its run; span ids in capitals name theirs too."""
    trace = os.urandom(16)
    trace_id = trace.hex()
    inner = {"spangraph.kind": "workflow", "spangraph.workflow.id": f"inner-{trace_id[:6]}"}
    _post_spans(client, [{"id": 0xB01, "name": "inner", "parent": 0xB00, "start": 5,
                          "attrs": inner}], trace)  # fmt: skip
    early = client.get(f"/api/workflows/{trace_id}/tree")
    assert early.status_code == 404 and "X-Spangraph-Run" not in early.headers
    assert client.get(f"/api/workflows/{trace_id}/events").json() == []
    by_span = client.get(f"/api/workflows/{_sid(0xB01).hex().upper()}/tree")
    assert by_span.status_code == 404
    assert by_span.headers["X-Spangraph-Run"] == inner["spangraph.workflow.id"]
    assert by_span.headers["X-Spangraph-Id-Kind"] == "span"
    # the trace's own run arrives: its top span, a chain
    _post_spans(client, [{"id": 0xB00, "name": "RunnableSequence", "start": 0,
                          "attrs": {"openinference.span.kind": "CHAIN"}}], trace)  # fmt: skip
    tree = client.get(f"/api/workflows/{trace_id}/tree")
    assert tree.status_code == 200, tree.text
    assert [n["name"] for n in tree.json()] == ["RunnableSequence"]


def test_a_run_whose_top_span_is_missing_is_listed_once(client: TestClient) -> None:
    """Workflow spans of a run named after its trace whose top span had not arrived (or
    never would: Traceloop JS does not end its workflow span when the function throws)
    each read as a top one: the run was listed once for each, and they took the places
    of other runs."""
    older = os.urandom(16)
    _post_spans(client, [{"id": 0xD00, "name": "older-run", "start": 0,
                          "attrs": {"traceloop.span.kind": "workflow"}}], older)  # fmt: skip
    headless = os.urandom(16)
    _post_spans(
        client,
        [
            {"id": 0xD10 + i, "name": f"workflow Runnable{i}", "parent": 0xD0F,
             "start": 1000 + i, "attrs": {"traceloop.span.kind": "workflow"}}
            for i in range(12)
        ],
        headless,
    )  # fmt: skip
    for limit in (1, 2, 3):  # as many runs as asked, each once
        rows = client.get("/api/workflows", params={"limit": limit}).json()
        assert [r["workflow_id"] for r in rows][:2] == [headless.hex(), older.hex()][:limit]
    rows = client.get("/api/workflows").json()
    assert [(r["workflow_id"], r["name"]) for r in rows][:2] == [
        (headless.hex(), "workflow Runnable0"),  # its earliest workflow span
        (older.hex(), "older-run"),
    ]
    every = client.get("/api/workflows").json()
    assert [r["workflow_id"] for r in every].count(headless.hex()) == 1


def test_a_replay_whose_graph_does_not_answer_asks_it_once() -> None:
    """A replay served from the stream while the graph did not answer asked the graph a
    second time (which run the id names) before serving it: twice the graph's time
    limit before a live run's stream was served."""
    from spangraph.exceptions import StoreError
    from spangraph.server.routes.runs import _stream_body

    class Down:
        def __init__(self) -> None:
            self.asked = 0

        def query(self, statement: str, params: dict[str, Any]) -> list[dict[str, Any]]:
            self.asked += 1
            raise StoreError("stopped at its time limit")

    store = Down()
    message = '{"type": "span.started", "span_id": "aa", "seq": 1}'
    assert _stream_body(store, "run-1", [message]) == f"[{message}]".encode()
    assert store.asked == 1


def test_workflows_filtered_by_a_part_of_the_name(client: TestClient) -> None:
    """``name_contains``: runs whose name holds the text, in any case, found among every
    run (the filter applies before ``limit``); the text is a parameter, never Cypher."""
    odd = 'it\'s "x") OR true //'
    names = ["Nightly-Archive", "weekly-archive", "ÜBER-ARCHIV", odd, "busy", "busy", "busy"]
    _post_spans(
        client,
        [
            {
                "id": 0x900 + i,
                "name": name,
                "start": i,  # the busy runs are the newest
                "attrs": {"spangraph.kind": "workflow", "spangraph.workflow.id": f"like-{i}"},
            }
            for i, name in enumerate(names)
        ],
    )

    def listed(**params: Any) -> list[str]:
        answer = client.get("/api/workflows", params=params)
        assert answer.status_code == 200, answer.text
        return [r["name"] for r in answer.json()]

    assert listed(name_contains="archive") == ["weekly-archive", "Nightly-Archive"]
    assert listed(name_contains="ARCHIV") == ["ÜBER-ARCHIV", "weekly-archive", "Nightly-Archive"]
    assert listed(name_contains="über") == ["ÜBER-ARCHIV"]
    assert listed(name_contains="archive", limit=1) == ["weekly-archive"]
    assert listed(name_contains="busy", limit=2) == ["busy", "busy"]
    assert listed(name_contains="nightly", name="weekly-archive") == []
    assert listed(name_contains="archive", state="failed") == []
    assert listed(name_contains="'") == [odd]
    assert listed(name_contains=odd) == [odd]
    assert listed(name_contains="no such run") == []
    assert len(listed(name_contains="")) == len(names)  # empty: no filter


def test_tree_node_and_path(client: TestClient, run_ids: dict[str, str]) -> None:
    [root] = client.get(f"/api/workflows/{run_ids['workflow_id']}/tree").json()
    assert root["name"] == "api-run" and root["kind"] == "workflow"
    names = [c["name"] for c in root["children"]]
    assert names[:2] == ["fetch", "fetch"] and "route" in names
    failed, ok = root["children"][0], root["children"][1]
    assert (failed["state"], ok["state"]) == ("failed", "completed")
    assert all(c["jaeger_url"].endswith(f"uiFind={c['span_id']}") for c in root["children"])

    detail = client.get(f"/api/nodes/{failed['span_id']}").json()
    assert detail["status"] == "ERROR" and "first try fails" in detail["status_message"]
    assert [e["name"] for e in detail["events"]][:2] == ["step.started", "retry.scheduled"]
    assert detail["events"][1]["attributes"]["error.type"] == "RuntimeError"
    assert detail["jaeger_url"].startswith("http://jaeger.example:16686/trace/")

    path = client.get(f"/api/nodes/{failed['span_id']}/path").json()
    assert [p["name"] for p in path] == ["api-run", "fetch"]
    # every node in an answer carries jaeger_url (DESIGN): the path's had none
    assert [p["jaeger_url"] for p in path] == [root["jaeger_url"], failed["jaeger_url"]]
    # ids as a tool may print them, in capitals (stored as OTel prints them)
    upper = failed["span_id"].upper()
    assert client.get(f"/api/nodes/{upper}").json()["span_id"] == failed["span_id"]
    assert client.get(f"/api/nodes/{upper}/path").json() == path


def test_whole_run_reads_take_turns(
    client: TestClient, run_ids: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run's tree, replay and a span's path are built whole in memory: ten readers of a
    large run at once took the service to 1.8 GB. At most four are served at once; one
    that waits too long for its turn is answered 503 with Retry-After, and the other
    routes answer meanwhile."""
    import asyncio

    from spangraph.server import deps

    monkeypatch.setattr(deps, "HEAVY_READ_WAIT", 0.2)
    wid = run_ids["workflow_id"]
    [root] = client.get(f"/api/workflows/{wid}/tree").json()
    assert deps.HEAVY_READS == 4
    assert isinstance(client.app.state.heavy_reads, asyncio.Semaphore)  # type: ignore[attr-defined]
    client.app.state.heavy_reads = asyncio.Semaphore(0)  # type: ignore[attr-defined]  # all taken
    for path in (f"/api/workflows/{wid}/tree", f"/api/workflows/{wid}/events",
                 f"/api/nodes/{root['span_id']}/path"):  # fmt: skip
        busy = client.get(path)
        assert busy.status_code == 503, path
        assert busy.headers["retry-after"] == "2" and "busy" in busy.json()["detail"]
    assert client.get(f"/api/workflows/{wid}/decisions").status_code == 200
    assert client.get("/api/workflows").status_code == 200
    client.app.state.heavy_reads = asyncio.Semaphore(1)  # type: ignore[attr-defined]  # a turn
    assert client.get(f"/api/workflows/{wid}/tree").status_code == 200
    assert client.get(f"/api/workflows/{wid}/tree").status_code == 200  # and given back


def test_decisions_branches_monitors_events(client: TestClient, run_ids: dict[str, str]) -> None:
    wid = run_ids["workflow_id"]
    [decision] = client.get(f"/api/workflows/{wid}/decisions").json()
    assert decision["chosen"] == "a" and decision["reason"] == "only one tried"
    assert [(o["name"], o["explored"], o["chosen"]) for o in decision["options"]] == [
        ("a", True, True),
        ("b", False, False),
    ]
    assert decision["jaeger_url"].endswith(f"uiFind={decision['span_id']}")
    explored, unexplored = decision["options"]
    assert explored["jaeger_url"] == (
        f"http://jaeger.example:16686/trace/{run_ids['trace_id']}?uiFind={explored['span_id']}"
    )
    assert unexplored["jaeger_url"] is None  # never a span: nothing in Jaeger
    branches = client.get(f"/api/workflows/{wid}/branches").json()
    assert [(b["name"], b["nodes"], b["failed"]) for b in branches] == [
        ("left", 2, 0),
        ("right", 2, 0),
    ]
    [monitor] = client.get(f"/api/workflows/{wid}/monitors").json()
    assert (monitor["monitor"], monitor["target"]) == ("watch-left", "left")
    assert monitor["target_branch_id"] == run_ids["branch_id"]
    assert monitor["jaeger_url"].endswith(f"uiFind={monitor['monitor_span_id']}")
    assert monitor["target_jaeger_url"].endswith(f"uiFind={monitor['target_span_id']}")
    summary = client.get(f"/api/branches/{run_ids['branch_id']}/summary").json()
    assert [n["name"] for n in summary["nodes"]] == ["left", "inside-left"]
    # each node's events, as queries.branch_summary gives them (before: left out)
    expected = queries.branch_summary(client.app.state.store, run_ids["branch_id"])
    assert expected is not None
    assert [n["events"] for n in summary["nodes"]] == [n["events"] for n in expected["nodes"]]
    assert any(n["events"] for n in summary["nodes"])
    events = client.get(f"/api/workflows/{wid}/events").json()
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert (events[0]["type"], events[-1]["type"]) == ("span.started", "span.ended")


@pytest.mark.parametrize(
    "path",
    [
        "/api/workflows/nope/tree",
        "/api/nodes/nope",
        "/api/nodes/nope/path",
        "/api/branches/nope/summary",
    ],
)
def test_unknown_ids_are_404(client: TestClient, path: str) -> None:
    answer = client.get(path)
    assert answer.status_code == 404 and "nope" in answer.json()["detail"]
    declared = declared_statuses(client, path)
    assert "404" in declared, declared  # (the API's description left it out)
    assert declared["404"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorDetail"
    }


def declared_statuses(client: TestClient, path: str, method: str = "get") -> dict[str, Any]:
    """The answers ``/openapi.json`` declares for the route that serves ``path``."""
    schema = client.get("/openapi.json").json()
    for template, item in schema["paths"].items():
        pattern = re.sub(r"\{[^}]+\}", "[^/]+", template)
        if re.fullmatch(pattern, path) and method in item:
            return item[method]["responses"]  # type: ignore[no-any-return]
    raise AssertionError(f"no route for {path}")


@pytest.mark.parametrize(
    "path",
    [
        "/api/workflows/nope/decisions",
        "/api/workflows/nope/branches",
        "/api/workflows/nope/monitors",
        "/api/workflows/nope/events",
    ],
)
def test_unknown_run_lists_are_empty(client: TestClient, path: str) -> None:
    answer = client.get(path)
    assert answer.status_code == 200 and answer.json() == []


def test_bearer_token_on_every_route(settings: Settings, run_ids: dict[str, str]) -> None:
    secured = settings.replace(api_token="s3cret")
    with TestClient(create_app(secured)) as client:
        for path in (
            "/api/health",
            "/api/workflows",
            f"/api/workflows/{run_ids['workflow_id']}/tree",
        ):
            missing = client.get(path)
            assert missing.status_code == 401, path
            assert missing.headers["www-authenticate"] == "Bearer"
            wrong = client.get(path, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401, path
            right = client.get(path, headers={"Authorization": "Bearer s3cret"})
            assert right.status_code == 200, path


def test_cors_off_unless_configured(settings: Settings) -> None:
    origin = {"Origin": "http://ui.example"}
    with TestClient(create_app(settings)) as client:
        assert (
            "access-control-allow-origin" not in client.get("/api/health", headers=origin).headers
        )
    with TestClient(create_app(settings, cors_origins=["http://ui.example"])) as client:
        answer = client.get("/api/health", headers=origin)
        assert answer.headers["access-control-allow-origin"] == "http://ui.example"


def test_openapi_describes_every_route(client: TestClient) -> None:
    paths = set(client.get("/openapi.json").json()["paths"])
    expected = {
        "/api/health", "/api/health/graph", "/api/health/neo4j", "/api/health/redis",
        "/api/workflows", "/api/workflows/{workflow_id}/tree", "/api/nodes/{span_id}",
        "/api/nodes/{span_id}/path", "/api/workflows/{workflow_id}/decisions",
        "/api/workflows/{workflow_id}/branches", "/api/branches/{branch_id}/summary",
        "/api/workflows/{workflow_id}/monitors", "/api/workflows/{workflow_id}/events",
    }  # fmt: skip
    assert expected <= paths


def test_openapi_declares_what_routes_read_themselves(client: TestClient) -> None:
    """The SSE route's ``?since`` and ``?token`` and the replay's ``X-Spangraph-Replay``
    are read and written by the routes themselves: described all the same."""
    paths = client.get("/openapi.json").json()["paths"]
    sse = paths["/api/stream/workflows/{workflow_id}/sse"]["get"]
    params = {p["name"].lower(): p for p in sse["parameters"]}
    assert {"since", "token", "last-event-id"} <= set(params)
    # what the route accepts (anything else: its 400), that it wants the token, and the
    # bodies of its errors
    assert params["since"]["schema"]["maximum"] == 2**63 - 1
    assert params["last-event-id"]["schema"]["pattern"] == "^0*[0-9]{0,19}$"
    assert sse["security"] == [{"HTTPBearer": []}]
    for status in ("400", "401", "404", "503"):
        schema = sse["responses"][status]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorDetail"}, status
    replay = paths["/api/workflows/{workflow_id}/events"]["get"]["responses"]["200"]
    assert replay["headers"]["X-Spangraph-Replay"]["schema"]["enum"] == ["stream", "graph"]
    # a 404 for an id that names a run says which (tree, replay); a whole-run read's 503
    # may be the service being busy, with Retry-After
    for path in ("/api/workflows/{workflow_id}/tree", "/api/workflows/{workflow_id}/events"):
        answers = paths[path]["get"]["responses"]
        named = answers["404"]["headers"]
        assert named["X-Spangraph-Id-Kind"]["schema"]["enum"] == ["span", "trace", "branch"]
        assert "X-Spangraph-Run" in named
        assert "Retry-After" in answers["503"]["headers"]
    assert "Retry-After" in paths["/api/nodes/{span_id}/path"]["get"]["responses"]["503"]["headers"]


def test_nothing_connects_at_import_or_create(closed_port: int, tmp_path: Path) -> None:
    """create_app() only builds the app: the store is opened in the lifespan."""
    settings = Settings.from_env(
        graph_url=f"falkordb://127.0.0.1:{closed_port}/g", redis_url="off", home=str(tmp_path)
    )
    app = create_app(settings)
    assert not hasattr(app.state, "store")


def test_serve_binds_loopback_by_default() -> None:
    from spangraph.cli import build_parser

    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.cors_origin) == ("127.0.0.1", 8000, None)


def test_non_finite_numbers_are_served_as_strict_json(settings: Settings) -> None:
    """NaN and the infinities are not JSON: attributes holding them are written as the
    strings "NaN", "Infinity" and "-Infinity", and such values already stored as bare
    words (by older versions) are served the same way instead of failing the request."""
    _configure(settings, "api-nan")
    try:
        with (
            spangraph.workflow("nan-run") as run,
            spangraph.step("measure", attributes={"ratio": float("nan")}) as step,
        ):
            spangraph.event("sample", low=float("-inf"), high=[1.5, float("inf")])
        assert spangraph.flush(10)
    finally:
        spangraph.shutdown()
    store = FalkorDBStore.from_url(settings.graph_url)
    try:  # a value stored by an older version: bare NaN in the attributes text
        store.execute_many(
            [
                (
                    "MATCH (s:Span {span_id: $id}) SET s.attributes = $text",
                    {"id": run.span_id, "text": '{"legacy":NaN,"list":[Infinity,-Infinity]}'},
                )
            ]
        )
    finally:
        store.close()
    with TestClient(create_app(settings)) as client:
        detail = client.get(f"/api/nodes/{step.span_id}")
        assert detail.status_code == 200
        assert detail.json()["attributes"]["ratio"] == "NaN"
        [sample] = [e for e in detail.json()["events"] if e["name"] == "sample"]
        assert sample["attributes"] == {"low": "-Infinity", "high": [1.5, "Infinity"]}
        legacy = client.get(f"/api/nodes/{run.span_id}")
        assert legacy.status_code == 200
        assert legacy.json()["attributes"] == {
            "legacy": "NaN",
            "list": ["Infinity", "-Infinity"],
        }
        tree = client.get(f"/api/workflows/{run.workflow_id}/tree")
        assert tree.status_code == 200


# -- spans from other programs (OTLP), with what the SDK would never write ---------------


def _set(value: Any, target: Any) -> None:
    if isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int):
        target.int_value = value
    elif isinstance(value, float):
        target.double_value = value
    elif isinstance(value, str):
        target.string_value = value
    else:
        for item in value:
            _set(item, target.array_value.values.add())


def _sid(n: int) -> bytes:
    return n.to_bytes(8, "big")


def _post_spans(
    client: TestClient, spans: list[dict[str, Any]], trace_id: bytes | None = None
) -> None:
    """POST ``spans`` to /v1/traces as OTLP protobuf and wait until they are written.
    Each span: ``id``, ``name``, optional ``parent``, ``start`` (ns offset), ``attrs``;
    all in one trace (``trace_id``, else a new one)."""
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.add(key="service.name").value.string_value = "other"
    scope = resource_spans.scope_spans.add()
    trace_id = trace_id or os.urandom(16)
    for span in spans:
        pb = scope.spans.add(trace_id=trace_id, span_id=_sid(span["id"]), name=span["name"])
        if "parent" in span:
            pb.parent_span_id = _sid(span["parent"])
        pb.start_time_unix_nano = 1_700_000_000_000_000_000 + span.get("start", 0)
        pb.end_time_unix_nano = pb.start_time_unix_nano + 1_000_000
        for key, value in span.get("attrs", {}).items():
            _set(value, pb.attributes.add(key=key).value)
    answer = client.post(
        "/v1/traces",
        content=request.SerializeToString(),
        headers={"Content-Type": "application/x-protobuf"},
    )
    assert answer.status_code == 200, answer.text
    assert client.app.state.ingest.flush(10)  # type: ignore[attr-defined]


def _deep_loads(text: str) -> Any:
    """``json.loads`` for a deep tree. Python's json module parses nesting recursively,
    and its C parser stops at the interpreter's C recursion limit from Python 3.12 on,
    which ``sys.setrecursionlimit`` does not raise: the module's pure-Python parser is
    bounded by the recursion limit alone, raised here for the call."""
    decoder = json.JSONDecoder()
    decoder.scan_once = json.scanner.py_make_scanner(decoder)  # type: ignore[attr-defined]
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 50_000))
    try:
        return decoder.decode(text)
    finally:
        sys.setrecursionlimit(limit)


def test_decisions_with_odd_values_from_other_programs(client: TestClient) -> None:
    """A decision span from another SDK may hold any attribute value: a score that is
    not a finite number is null, a chosen value that is not text is its JSON text."""
    odd: list[tuple[dict[str, Any], Any, Any]] = [
        ({"spangraph.decision.score": "high"}, None, None),
        ({"spangraph.decision.score": "0.75"}, None, 0.75),
        ({"spangraph.decision.score": True}, None, None),
        ({"spangraph.decision.score": [1.0, 2.0]}, None, None),
        ({"spangraph.decision.score": float("nan")}, None, None),
        ({"spangraph.decision.score": float("inf")}, None, None),
        ({"spangraph.decision.score": 3}, None, 3.0),
        ({"spangraph.decision.chosen": 7}, "7", None),
        ({"spangraph.decision.chosen": ["a"]}, '["a"]', None),
        ({"spangraph.decision.chosen": False}, "false", None),
        ({"spangraph.decision.chosen": "b"}, "b", None),
    ]
    for i, (attrs, chosen, score) in enumerate(odd):
        workflow_id = f"odd-decision-{i}"
        base = {"spangraph.workflow.id": workflow_id}
        _post_spans(
            client,
            [
                {"id": 1000 * i + 1, "name": "wf", "attrs": {**base, "spangraph.kind": "workflow"}},
                {
                    "id": 1000 * i + 2,
                    "name": "pick",
                    "parent": 1000 * i + 1,
                    "start": 1,
                    "attrs": {
                        **base,
                        "spangraph.kind": "decision",
                        "spangraph.decision.options": ["a", "b", 7],
                        **attrs,
                    },
                },
            ],
        )
        answer = client.get(f"/api/workflows/{workflow_id}/decisions")
        assert answer.status_code == 200, (attrs, answer.text)
        [decision] = answer.json()
        assert (decision["chosen"], decision["score"]) == (chosen, score), attrs
        assert [o["name"] for o in decision["options"]] == ["a", "b", "7"]
        assert [o["name"] for o in decision["options"] if o["chosen"]] == (
            [chosen] if chosen in ("b", "7") else []
        )


def test_tree_of_any_depth(client: TestClient) -> None:
    """A run nested 2 500 levels deep is served whole (no recursion limit on the way)."""
    depth = 2500
    spans = [
        {
            "id": 1 + i,
            "name": f"s{i}",
            "start": i,
            "attrs": {"spangraph.workflow.id": "deep", "spangraph.kind": "step"},
            **({"parent": i} if i else {}),
        }
        for i in range(depth)
    ]
    _post_spans(client, spans)
    answer = client.get("/api/workflows/deep/tree")
    assert answer.status_code == 200
    roots = _deep_loads(answer.text)
    names, level = [], roots
    while level:
        [node] = level
        names.append(node["name"])
        assert node["jaeger_url"].endswith(f"uiFind={node['span_id']}")
        level = node["children"]
    assert names == [f"s{i}" for i in range(depth)]
    path = client.get(f"/api/nodes/{_sid(depth).hex()}/path")
    assert [p["name"] for p in path.json()] == names


def test_tree_answer_is_the_documented_model(client: TestClient, run_ids: dict[str, str]) -> None:
    """The tree's JSON is written by hand: it is exactly what list[TreeNode] writes."""
    answer = client.get(f"/api/workflows/{run_ids['workflow_id']}/tree")
    adapter = TypeAdapter(list[TreeNode])
    assert adapter.dump_json(adapter.validate_json(answer.content)) == answer.content
    schema = client.get("/openapi.json").json()["paths"]["/api/workflows/{workflow_id}/tree"]
    ok = schema["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok["items"]["$ref"].endswith("/TreeNode")


def test_ids_with_slashes(client: TestClient) -> None:
    """Workflow and branch ids are the caller's (a job id, a path): with '/' in them,
    percent-encoded or not, every route of the run answers."""
    for workflow_id, branch_id in (("jobs/a1a9", "left/1"), ("x/tree", "b/summary")):
        base = {"spangraph.workflow.id": workflow_id}
        _post_spans(
            client,
            [
                {"id": 1, "name": "run", "attrs": {**base, "spangraph.kind": "workflow"}},
                {
                    "id": 2,
                    "name": "left",
                    "parent": 1,
                    "start": 1,
                    "attrs": {**base, "spangraph.kind": "branch", "spangraph.branch.id": branch_id},
                },
                {
                    "id": 3,
                    "name": "pick",
                    "parent": 1,
                    "start": 2,
                    "attrs": {
                        **base,
                        "spangraph.kind": "decision",
                        "spangraph.decision.options": ["a"],
                    },
                },
            ],
        )
        listed = client.get("/api/workflows", params={"name": "run"}).json()
        assert workflow_id in [r["workflow_id"] for r in listed]
        for wid in (quote(workflow_id, safe=""), workflow_id):
            [root] = client.get(f"/api/workflows/{wid}/tree").json()
            assert root["workflow_id"] == workflow_id
            assert [c["name"] for c in root["children"]] == ["left", "pick"]
            [decision] = client.get(f"/api/workflows/{wid}/decisions").json()
            assert decision["name"] == "pick"
            [branch] = client.get(f"/api/workflows/{wid}/branches").json()
            assert branch["branch_id"] == branch_id
            assert client.get(f"/api/workflows/{wid}/monitors").json() == []
            events = client.get(f"/api/workflows/{wid}/events").json()
            assert {e["workflow_id"] for e in events} == {workflow_id}
        for bid in (quote(branch_id, safe=""), branch_id):
            summary = client.get(f"/api/branches/{bid}/summary")
            assert summary.status_code == 200
            assert [n["name"] for n in summary.json()["nodes"]] == ["left"]


def test_parent_cycles_are_cut_at_their_first_span(client: TestClient) -> None:
    """Spans from outside can name each other as parents (A under B, B under A): the run
    still opens, the cycle cut above the span of it that started first, and paths end."""
    base = {"spangraph.workflow.id": "cycle"}
    _post_spans(
        client,
        [
            {"id": 0x301, "name": "A", "parent": 0x302, "start": 0, "attrs": base},
            {"id": 0x302, "name": "B", "parent": 0x301, "start": 1, "attrs": base},
            {"id": 0x303, "name": "C", "parent": 0x302, "start": 2, "attrs": base},
            # a second cycle of three, entered from its latest span
            {"id": 0x311, "name": "X", "parent": 0x313, "start": 12, "attrs": base},
            {"id": 0x312, "name": "Y", "parent": 0x311, "start": 10, "attrs": base},
            {"id": 0x313, "name": "Z", "parent": 0x312, "start": 11, "attrs": base},
        ],
    )
    answer = client.get("/api/workflows/cycle/tree")
    assert answer.status_code == 200

    def shape(node: dict[str, Any]) -> list[Any]:
        return [node["name"], [shape(c) for c in node["children"]]]

    assert [shape(r) for r in answer.json()] == [
        ["A", [["B", [["C", []]]]]],
        ["Y", [["Z", [["X", []]]]]],
    ]
    for span_id, names in (
        (0x301, ["A"]),
        (0x302, ["A", "B"]),
        (0x303, ["A", "B", "C"]),
        (0x311, ["Y", "Z", "X"]),
        (0x312, ["Y"]),
    ):
        path = client.get(f"/api/nodes/{_sid(span_id).hex()}/path")
        assert path.status_code == 200
        assert [p["name"] for p in path.json()] == names


ODD_VALUES: list[Any] = [7, -1.5, True, ["x", 2], "", "Infinity", "a/b"]


def test_every_route_serves_odd_spangraph_attributes(client: TestClient) -> None:
    """Another program may give any ``spangraph.*`` attribute any OTLP value: every
    route of the run still answers 200 (each model field fed by an attribute takes what
    OTLP can carry)."""
    keys = sorted(v for k, v in vars(sc).items() if k.isupper() and str(v).startswith("spangraph."))
    spans: list[dict[str, Any]] = []
    cases = [(key, value) for key in keys for value in ODD_VALUES]
    for i, (key, value) in enumerate(cases):
        base = {"spangraph.workflow.id": f"odd-{i}"}
        ids = [10 * i + 1, 10 * i + 2, 10 * i + 3, 10 * i + 4]
        kinds = ["workflow", "decision", "branch", "step"]
        for n, (span_id, kind) in enumerate(zip(ids, kinds, strict=True)):
            attrs = {**base, "spangraph.kind": kind, "spangraph.branch.id": f"b-{i}"}
            if kind == "decision":
                attrs["spangraph.decision.options"] = ["x", "y"]
            attrs[key] = value
            span: dict[str, Any] = {"id": span_id, "name": kind, "start": n, "attrs": attrs}
            if n:
                span["parent"] = ids[0] if n < 3 else ids[2]
            spans.append(span)
    _post_spans(client, spans)
    for i, case in enumerate(cases):
        root = client.get(f"/api/nodes/{_sid(10 * i + 1).hex()}")
        assert root.status_code == 200, (case, root.text)
        wid = quote(root.json()["workflow_id"], safe="")
        paths = [f"/api/workflows/{wid}/{what}" for what in ("tree", "decisions", "branches")]
        paths += [f"/api/workflows/{wid}/{what}" for what in ("monitors", "events")]
        paths += [f"/api/nodes/{_sid(10 * i + n).hex()}/path" for n in (1, 4)]
        for branch in client.get(f"/api/workflows/{wid}/branches").json():
            if branch["branch_id"] is not None:
                paths.append(f"/api/branches/{quote(branch['branch_id'], safe='')}/summary")
        for path in paths:
            answer = client.get(path)
            assert answer.status_code == 200, (case, path, answer.text)
    listing = client.get("/api/workflows", params={"limit": 1000})
    # every run is listed but those whose spangraph.kind is odd (no workflow span then)
    assert listing.status_code == 200
    assert len(listing.json()) == len(cases) - len(ODD_VALUES)


def test_branch_summary_in_one_run(client: TestClient, run_ids: dict[str, str]) -> None:
    branch, wid = run_ids["branch_id"], run_ids["workflow_id"]
    summary = client.get(f"/api/branches/{branch}/summary", params={"workflow_id": wid})
    assert summary.status_code == 200
    assert summary.json()["workflow_ids"] == [wid]
    assert [n["name"] for n in summary.json()["nodes"]] == ["left", "inside-left"]
    other = client.get(f"/api/branches/{branch}/summary", params={"workflow_id": "elsewhere"})
    assert other.status_code == 404
    assert other.json()["detail"] == f"no branch {branch!r} in run 'elsewhere'"


def test_odd_data_written_by_other_programs_is_served(client: TestClient) -> None:
    """Nodes and events another program wrote straight into the graph, with values of
    other types than spangraph writes, are served (before: 500 for the run list, the
    tree, a node and the replay, and the command line's replay a traceback)."""
    store = client.app.state.store._get()  # the service's own store
    store.execute_many(
        [
            (
                "CREATE (:Span:Workflow {span_id: 'odd-a1', trace_id: 't', workflow_id: 'odd-r1',"
                " name: 'w', kind: 'workflow', start_ns: 1, end_ns: 2, duration_ms: 0.0,"
                " state: 'completed', attributes: '[1, 2]'})",
                {},
            ),
            (
                "CREATE (:Span:Workflow {span_id: 'odd-b1', trace_id: 't', workflow_id: 'odd-r2',"
                " name: 'w', kind: 'workflow', start_ns: 1, attributes: '{}'})"
                "-[:HAS_EVENT]->(:Event {span_id: 'odd-b1', seq: 0, name: 'e', time_ns: 1,"
                " attributes: 'oops'})",
                {},
            ),
            (
                "CREATE (:Span:Workflow {span_id: 'odd-c1', trace_id: 't', workflow_id: 'odd-r3',"
                " name: 'w', kind: 'workflow', start_ns: 1, attributes: '{}'})"
                "-[:HAS_EVENT]->(:Event {span_id: 'odd-c1', seq: 0, name: 'e',"
                " attributes: '{}'})",
                {},
            ),
            (
                "CREATE (:Span:Workflow {span_id: 'odd-d1', trace_id: 7, workflow_id: 'odd-r4',"
                " name: 5, kind: 'workflow', start_ns: 1.5, attributes: '{}'}),"
                " (:Span:Decision {span_id: 'odd-d2', workflow_id: 'odd-r4', kind: 'decision',"
                " parent_span_id: 'odd-d1', start_ns: 2, attributes: '{}'})",
                {},
            ),
        ]
    )
    for path in (
        "/api/workflows",
        "/api/workflows/odd-r1/events",
        "/api/nodes/odd-a1",
        "/api/nodes/odd-b1",
        "/api/nodes/odd-c1",
        "/api/workflows/odd-r2/events",
        "/api/workflows/odd-r3/events",
        "/api/workflows/odd-r4/tree",
        "/api/workflows/odd-r4/decisions",
        "/api/nodes/odd-d1/path",
    ):
        assert client.get(path).status_code == 200, path
    [odd] = [w for w in client.get("/api/workflows").json() if w["workflow_id"] == "odd-r4"]
    assert (odd["name"], odd["trace_id"], odd["start_ns"]) == ("5", "7", None)
    # the path too (it was a 500: a name 5 is no text for the answer's model)
    [step] = client.get("/api/nodes/odd-d1/path").json()
    assert (step["name"], step["kind"]) == ("5", "workflow")
    assert step["jaeger_url"].endswith("/trace/7?uiFind=odd-d1")
    assert client.get("/api/nodes/odd-a1").json()["attributes"] == {}
    assert client.get("/api/nodes/odd-b1").json()["events"][0]["attributes"] == {}
    replay = client.get("/api/workflows/odd-r1/events").json()
    assert [m["type"] for m in replay] == ["span.started", "span.ended"]
    assert replay[0]["timestamp"] == "1970-01-01T00:00:00.000000Z"


def test_nodes_without_ids_and_events_without_names_are_left_out(client: TestClient) -> None:
    """Nodes another program wrote without a ``span_id``, and an event without a name,
    cannot be served as the API's models say (an id and a type are required): they are
    left out, and everything else of the run is served (before: 500 for the run list,
    the tree, the replay, the decisions, the branches and the monitors of their run)."""
    store = client.app.state.store._get()  # the service's own store
    store.execute_many(
        [
            (
                "CREATE (w:Span:Workflow {span_id: 'noid-w', trace_id: 't',"
                " workflow_id: 'noid-r', name: 'w', kind: 'workflow', start_ns: 1,"
                " attributes: '{}'}),"
                " (:Span:Workflow {workflow_id: 'noid-r', name: 'w2', kind: 'workflow',"
                " start_ns: 2, attributes: '{}'}),"
                " (s:Span:Step {span_id: 'noid-s', workflow_id: 'noid-r', name: 's',"
                " kind: 'step', parent_span_id: 'noid-w', start_ns: 3, attributes: '{}'}),"
                " (s)-[:HAS_EVENT]->(:Event {span_id: 'noid-s', seq: 0, time_ns: 4,"
                " attributes: '{}'}),"
                " (s)-[:HAS_EVENT]->(:Event {span_id: 'noid-s', seq: 1, name: 'named',"
                " time_ns: 5, attributes: '{}'}),"
                " (:Span:Decision {workflow_id: 'noid-r', name: 'd', kind: 'decision',"
                " start_ns: 6, attributes: '{}'}),"
                " (b:Span:Branch {workflow_id: 'noid-r', name: 'b', kind: 'branch',"
                " branch_id: 'noid-b', start_ns: 7, attributes: '{}'}),"
                " (:Span {workflow_id: 'noid-r', name: 'in-b', kind: 'span',"
                " branch_id: 'noid-b', start_ns: 8, attributes: '{}'}),"
                " (m:Span:Monitor {workflow_id: 'noid-r', name: 'm', kind: 'monitor',"
                " start_ns: 9, attributes: '{}'}),"
                " (m)-[:MONITORS]->(s), (w)-[:MONITORS]->(b)",
                {},
            ),
        ]
    )
    paths = ["tree", "events", "decisions", "branches", "monitors"]
    answers = {p: client.get(f"/api/workflows/noid-r/{p}") for p in paths}
    answers["list"] = client.get("/api/workflows", params={"name_contains": "w"})
    answers["summary"] = client.get("/api/branches/noid-b/summary")
    answers["node"] = client.get("/api/nodes/noid-s")
    answers["path"] = client.get("/api/nodes/noid-s/path")
    assert {p: a.status_code for p, a in answers.items()} == {
        **{p: 200 for p in answers},
        "summary": 404,
    }  # (the branch's only spans have no id: nothing of it to serve)
    listed = [w for w in answers["list"].json() if w["workflow_id"] == "noid-r"]
    assert [w["span_id"] for w in listed] == ["noid-w"]
    assert [n["name"] for n in answers["tree"].json()] == ["w"]
    assert [c["name"] for c in answers["tree"].json()[0]["children"]] == ["s"]
    replay = [(m["type"], m["name"]) for m in answers["events"].json()]
    assert replay == [("span.started", "w"), ("span.started", "s"), ("named", "s")]
    assert answers["decisions"].json() == [] and answers["branches"].json() == []
    assert answers["monitors"].json() == []
    assert [e["name"] for e in answers["node"].json()["events"]] == [None, "named"]
    assert [step["name"] for step in answers["path"].json()] == ["w", "s"]


def test_ids_with_a_line_break_can_be_asked_for(settings: Settings, client: TestClient) -> None:
    """The SDK takes any text as a run or branch id: one with a line break is found like
    any other (before: Starlette's ``path`` convertor stops at a line break, and every
    route answered a bare 404)."""
    _configure(settings, "api-newline")
    try:
        with spangraph.workflow("wf", workflow_id="a\nb"), spangraph.branch("b", branch_id="c\nd"):
            pass
        assert spangraph.flush(10)
    finally:
        spangraph.shutdown()
    tree = client.get("/api/workflows/" + quote("a\nb", safe="") + "/tree")
    assert tree.status_code == 200
    assert [n["name"] for n in tree.json()] == ["wf"]
    summary = client.get("/api/branches/" + quote("c\nd", safe="") + "/summary")
    assert summary.status_code == 200 and summary.json()["workflow_ids"] == ["a\nb"]
    assert client.get("/api/workflows/" + quote("a\nb", safe="") + "/events").status_code == 200


def test_replay_is_the_live_messages_while_the_stream_holds_the_run(
    client: TestClient, settings: Settings
) -> None:
    """The replay was always rebuilt from the graph, numbered anew: tokens (live only)
    shifted every seq after them, so a client that went on live from the replay's last
    seq (Last-Event-ID) got messages twice."""
    _configure(settings, "replay")
    try:
        with (
            spangraph.workflow("replayed") as run,
            spangraph.branch("b1"),
            spangraph.llm("m", provider="p") as call,
        ):
            for text in ("a", "b", "c"):
                call.token(text)
            call.complete("abc")
            provider = spangraph._sdk._current.tracer_provider  # type: ignore[union-attr]
            with provider.get_tracer("plain").start_as_current_span("plain-op"):
                pass  # a plain OTel span: no run ids in its own attributes, live or not
        assert spangraph.flush(10)
    finally:
        spangraph.shutdown()
    wid = run.workflow_id or ""
    r = redis.Redis.from_url(settings.redis_url)
    live = [json.loads(data[b"data"]) for _, data in r.xrange(f"spangraph:stream:{wid}")]
    answer = client.get(f"/api/workflows/{wid}/events")
    assert answer.headers["x-spangraph-replay"] == "stream"
    assert answer.json() == live
    assert [m["type"] for m in live].count("token") == 3
    assert [m["seq"] for m in live] == list(range(1, len(live) + 1))

    r.xdel(f"spangraph:stream:{wid}", "1-0")  # the stream no longer starts at the run's start
    rebuilt = client.get(f"/api/workflows/{wid}/events")
    assert rebuilt.headers["x-spangraph-replay"] == "graph"
    messages = rebuilt.json()
    assert "token" not in [m["type"] for m in messages]
    assert [m["seq"] for m in messages] == list(range(1, len(messages) + 1))
    assert [m["type"] for m in messages] == [m["type"] for m in live if m["type"] != "token"]
    # the run's ids in each span's attributes, as live (the graph keeps them apart)
    ids = (sc.KIND, sc.WORKFLOW_ID, sc.EXECUTION_ID, sc.BRANCH_ID, sc.PROJECT_ID, sc.STATE)
    live_spans, rebuilt_spans = (
        [
            (m["type"], m["name"], {k: m["attributes"].get(k) for k in ids})
            for m in got
            if m["type"] in ("span.started", "span.ended")
        ]
        for got in (live, messages)
    )
    assert rebuilt_spans == live_spans
    assert any(entry[2][sc.BRANCH_ID] for entry in rebuilt_spans)
    assert ("span.started", "plain-op", dict.fromkeys(ids)) in rebuilt_spans
    r.close()


def test_options_never_explored_have_no_jaeger_url(
    client: TestClient, run_ids: dict[str, str]
) -> None:
    """An option never explored is no span of Jaeger's: no ``jaeger_url`` in the tree or
    the node's own answer, as in the decisions route (before: a link to a span Jaeger does
    not have); every other node keeps its link."""
    wid = run_ids["workflow_id"]
    [root] = client.get(f"/api/workflows/{wid}/tree").json()
    nodes, stack = [], [root]
    while stack:
        n = stack.pop()
        nodes.append(n)
        stack.extend(n["children"])
    [never] = [n for n in nodes if n["state"] == sc.STATE_UNEXPLORED]
    assert (never["kind"], never["name"], never["jaeger_url"]) == ("option", "b", None)
    others = [n for n in nodes if n is not never]
    assert others and all(n["jaeger_url"].endswith(f"uiFind={n['span_id']}") for n in others)
    detail = client.get(f"/api/nodes/{never['span_id']}").json()
    assert (detail["state"], detail["jaeger_url"]) == (sc.STATE_UNEXPLORED, None)
    # its path too (before: a link to it as its last step), with each step's state
    *above, last = client.get(f"/api/nodes/{never['span_id']}/path").json()
    assert (last["span_id"], last["state"], last["jaeger_url"]) == (
        never["span_id"],
        sc.STATE_UNEXPLORED,
        None,
    )
    assert above and all(s["state"] == sc.STATE_COMPLETED for s in above)
    assert all(s["jaeger_url"].endswith(f"uiFind={s['span_id']}") for s in above)
    [decision] = client.get(f"/api/workflows/{wid}/decisions").json()
    assert [o["jaeger_url"] is None for o in decision["options"]] == [False, True]


@pytest.mark.parametrize(
    ("env", "exported", "logged"),
    [
        ({}, "http", ""),
        ({"OTEL_METRICS_EXPORTER": "otlp"}, "http", ""),
        ({"OTEL_METRICS_EXPORTER": " "}, "http", ""),  # empty: unset
        ({"OTEL_METRICS_EXPORTER": "none"}, None, ""),
        ({"OTEL_METRICS_EXPORTER": " None "}, None, ""),
        ({"OTEL_METRICS_EXPORTER": "prometheus"}, None, "over OTLP only"),
        ({"OTEL_METRICS_EXPORTER": "console,otlp_proto_http"}, "http", ""),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, None, "pip install 'opentelemetry-exp"),
        ({"OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "grpc"}, None, "grpc exporter is missing"),
        ({"OTEL_METRICS_EXPORTER": "otlp_proto_grpc"}, None, "grpc exporter is missing"),
        (
            {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_METRICS_EXPORTER": "otlp_proto_http"},
            "http",
            "",
        ),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, None, "unknown OTLP protocol"),
    ],
)
def test_the_service_metrics_follow_the_otel_exporter_variables(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    env: dict[str, str],
    exported: str | None,
    logged: str,
) -> None:
    """Before, the service exported its metrics over OTLP/HTTP whatever
    OTEL_METRICS_EXPORTER (``none`` included) and the protocol variables said."""
    from types import SimpleNamespace

    from spangraph.server.app import _metrics_provider

    for variable in (
        "OTEL_METRICS_EXPORTER",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    ):
        monkeypatch.delenv(variable, raising=False)
    posted: list[str] = []

    class Collector(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            posted.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    collector = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{collector.server_port}")
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    ingest = SimpleNamespace(stats=dict, graph=None, live=None)
    provider = None
    try:
        with caplog.at_level("WARNING", logger="spangraph"):
            provider = _metrics_provider(ingest)
        if exported is None:
            assert provider is None
        else:
            provider.get_meter("test").create_counter("probe").add(1)
            assert provider.force_flush(timeout_millis=10_000)
            assert posted == ["/v1/metrics"]  # OTLP/HTTP
        if logged:
            assert logged in caplog.text
        else:
            assert not caplog.records, caplog.text
    finally:
        if provider is not None:
            provider.shutdown(timeout_millis=1000)
        collector.shutdown()
        collector.server_close()


@pytest.mark.parametrize(
    ("name", "expected"), [(None, "spangraph-serve"), ("replica-1", "replica-1")]
)
def test_the_service_metrics_are_named_by_otel_service_name(
    monkeypatch: pytest.MonkeyPatch, name: str | None, expected: str
) -> None:
    """The compose file sets OTEL_SERVICE_NAME; the service's name was fixed over it."""
    from types import SimpleNamespace

    from spangraph.server.app import _metrics_provider

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://127.0.0.1:9/v1/metrics")
    if name is None:
        monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    else:
        monkeypatch.setenv("OTEL_SERVICE_NAME", name)
    ingest = SimpleNamespace(stats=dict, graph=None, live=None)
    provider = _metrics_provider(ingest)
    try:
        assert provider._sdk_config.resource.attributes["service.name"] == expected
    finally:
        provider.shutdown(timeout_millis=1000)


def _stream_messages(r: redis.Redis, wid: str) -> list[tuple[bytes, dict[str, Any]]]:
    """The run's stream: (entry id, message) in order."""
    return [(eid, json.loads(data[b"data"])) for eid, data in r.xrange(f"spangraph:stream:{wid}")]


def test_the_graph_replay_is_encoded_off_the_event_loop(
    settings: Settings, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rebuilding a replay from the graph checked and encoded every message on the event
    loop: a 50 000-span run (112 MB, ~10 s) held up every other request, WebSocket and
    SSE client for as long. The encoder now runs on a worker thread; the answer is the
    same bytes."""
    from spangraph.server.routes import runs

    spangraph.configure(
        tracer_provider=TracerProvider(),
        graph_url=settings.graph_url,
        home=str(settings.home),
        project="replay-threads",
        live=False,  # no stream: the replay is rebuilt from the graph
    )
    try:
        with spangraph.workflow("encoded") as run, spangraph.branch("b"):
            for i in range(3):
                with spangraph.step(f"s{i}"):
                    spangraph.event("note", i=i)
        assert spangraph.flush(10)
    finally:
        spangraph.shutdown()
    wid = run.workflow_id or ""
    adapter = runs._MESSAGES
    expected = adapter.dump_json(
        adapter.validate_python(queries.replay(client.app.state.store, wid))
    )

    loop_threads: list[threading.Thread] = []
    encoder: list[tuple[threading.Thread, bool]] = []  # (thread, a loop runs there)
    hub = client.app.state.hub
    whole_run = hub.whole_run

    async def recording_whole_run(workflow_id: str) -> list[str] | None:
        loop_threads.append(threading.current_thread())  # called on the event loop
        return await whole_run(workflow_id)

    def on_loop() -> bool:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return False
        return True

    class Recording:
        def validate_python(self, rows: Any) -> Any:
            encoder.append((threading.current_thread(), on_loop()))
            return adapter.validate_python(rows)

        def dump_json(self, value: Any) -> bytes:
            encoder.append((threading.current_thread(), on_loop()))
            return adapter.dump_json(value)

    monkeypatch.setattr(hub, "whole_run", recording_whole_run)
    monkeypatch.setattr(runs, "_MESSAGES", Recording())
    answer = client.get(f"/api/workflows/{wid}/events")
    assert answer.status_code == 200 and answer.headers["x-spangraph-replay"] == "graph"
    assert answer.content == expected  # byte for byte the answer it was
    assert [m["type"] for m in answer.json()].count("note") == 3
    [loop_thread] = loop_threads
    assert len(encoder) == 2
    for thread, loop_running in encoder:
        assert thread is not loop_thread and not loop_running


def test_a_stream_that_lost_spans_is_not_the_replay(settings: Settings, client: TestClient) -> None:
    """Live messages the SDK dropped (Redis slow or down) leave no gap in the stream's
    seq (Redis numbers them): a stream from seq 1 that lacked spans of the run was served
    as its replay (a run of 401 spans answered with 106 of them and no end). The graph
    is the record: a stream that lacks spans the graph holds is rebuilt from the graph."""
    run = _recorded_run(settings, "replay-lost", "lossy", ("s0", "s1", "s2"))
    wid = run.workflow_id or ""
    r = redis.Redis.from_url(settings.redis_url)
    live = _stream_messages(r, wid)
    whole = client.get(f"/api/workflows/{wid}/events")
    assert whole.headers["x-spangraph-replay"] == "stream"  # a whole stream is served
    assert whole.json() == [m for _, m in live]

    lost = next(m["span_id"] for _, m in live if m["name"] == "s1")
    r.xdel(f"spangraph:stream:{wid}", *[eid for eid, m in live if m["span_id"] == lost])
    assert _stream_messages(r, wid)[0][0] == b"1-0"  # it still starts at the run's start
    answer = client.get(f"/api/workflows/{wid}/events")
    assert answer.headers["x-spangraph-replay"] == "graph"
    messages = answer.json()
    assert [m["seq"] for m in messages] == list(range(1, len(messages) + 1))
    assert [(m["type"], m["name"]) for m in messages] == [
        (m["type"], m["name"]) for _, m in live if m["type"] != "token"
    ]
    assert (messages[-1]["type"], messages[-1]["name"]) == ("span.ended", "lossy")
    r.close()


def test_a_stream_that_lost_the_end_of_the_run_is_not_the_replay(
    settings: Settings, client: TestClient
) -> None:
    """A stream that holds every span's start but lost an end the graph has (the run's
    own end: a client could never learn the run ended) is rebuilt from the graph."""
    run = _recorded_run(settings, "replay-lost-end", "endless")
    wid = run.workflow_id or ""
    r = redis.Redis.from_url(settings.redis_url)
    live = _stream_messages(r, wid)
    [end] = [eid for eid, m in live if m["type"] == "span.ended" and m["name"] == "endless"]
    r.xdel(f"spangraph:stream:{wid}", end)
    answer = client.get(f"/api/workflows/{wid}/events")
    assert answer.headers["x-spangraph-replay"] == "graph"
    last = answer.json()[-1]
    assert (last["type"], last["name"]) == ("span.ended", "endless")
    r.close()


def test_a_graph_behind_the_stream_keeps_the_stream(settings: Settings, client: TestClient) -> None:
    """Live messages reach Redis before their spans reach the graph: a stream with more
    spans than the graph holds yet is still the replay."""
    run = _recorded_run(settings, "replay-ahead", "ahead")
    wid = run.workflow_id or ""
    r = redis.Redis.from_url(settings.redis_url)
    live = [m for _, m in _stream_messages(r, wid)]
    seq = int(r.incr(f"spangraph:seq:{wid}"))
    early = {**live[0], "seq": seq, "span_id": "00000000000000ff", "name": "not-written-yet"}
    r.xadd(f"spangraph:stream:{wid}", {"data": json.dumps(early)}, id=f"{seq}-0")
    answer = client.get(f"/api/workflows/{wid}/events")
    assert answer.headers["x-spangraph-replay"] == "stream"
    assert answer.json() == [*live, early]
    r.close()


def test_a_stream_that_lost_a_span_is_not_the_replay_whatever_else_it_holds(
    settings: Settings, client: TestClient
) -> None:
    """A stream that lost one span's messages but holds another span the graph has not
    written yet has as many spans as the graph: the spans themselves are compared."""
    run = _recorded_run(settings, "replay-swapped", "swapped", ("kept", "lost"))
    wid = run.workflow_id or ""
    r = redis.Redis.from_url(settings.redis_url)
    stream = f"spangraph:stream:{wid}"
    live = _stream_messages(r, wid)
    lost = [eid for eid, m in live if m.get("name") == "lost" and m["type"].startswith("span.")]
    assert len(lost) == 2
    r.xdel(stream, *lost)
    for what in ("span.started", "span.ended"):  # a span not written to the graph yet
        seq = int(r.incr(f"spangraph:seq:{wid}"))
        early = {**live[0][1], "type": what, "seq": seq, "span_id": "00000000000000ff"}
        r.xadd(stream, {"data": json.dumps(early)}, id=f"{seq}-0")
    answer = client.get(f"/api/workflows/{wid}/events")
    assert answer.headers["x-spangraph-replay"] == "graph"
    assert "lost" in [m["name"] for m in answer.json() if m["type"] == "span.started"]
    r.close()


@pytest.mark.parametrize("error", [StoreUnavailableError, StoreError])
def test_a_stream_is_served_while_the_graph_does_not_answer(
    settings: Settings, client: TestClient, monkeypatch: pytest.MonkeyPatch, error: type
) -> None:
    """The stream cannot be checked against a graph that does not answer (down, or its
    read stopped at the time limit): it is served as it was (the graph could not
    rebuild the run either)."""
    run = _recorded_run(settings, f"replay-graph-{error.__name__}", "unchecked", ())
    wid = run.workflow_id or ""

    def down(store: Any, workflow_id: str) -> tuple[set[str], set[str]]:
        raise error("the graph does not answer")

    monkeypatch.setattr(queries, "replayed_spans", down)
    answer = client.get(f"/api/workflows/{wid}/events")
    assert answer.status_code == 200 and answer.headers["x-spangraph-replay"] == "stream"
    assert [m["name"] for m in answer.json() if m["type"] == "span.ended"] == ["unchecked"]


def test_spans_written_with_live_events_off_are_replayed_from_the_graph(
    settings: Settings, client: TestClient
) -> None:
    """A process with live events off that goes on with a run writes spans the stream
    never sees: the replay comes from the graph, which has them all."""
    wid = f"replay-mixed-{os.getpid()}-{threading.get_ident()}"
    _recorded_run(settings, "replay-mixed", "first", (), workflow_id=wid)
    assert client.get(f"/api/workflows/{wid}/events").headers["x-spangraph-replay"] == "stream"
    _recorded_run(settings, "replay-mixed", "second", (), workflow_id=wid, live=False)
    answer = client.get(f"/api/workflows/{wid}/events")
    assert answer.headers["x-spangraph-replay"] == "graph"
    started = [m["name"] for m in answer.json() if m["type"] == "span.started"]
    assert started == ["first", "second"]


def test_a_run_without_decisions_branches_or_monitors_reads_none_of_its_spans(
    client: TestClient, run_ids: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decisions, branches and monitors routes read every span of a run for its
    trace ids, also when they had nothing to list (the web UI asks for the three at
    every refresh: 2-3 s each on a run of 50 000 spans with none)."""
    from spangraph import queries

    def every_span(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("every span of the run was read")

    monkeypatch.setattr(queries, "workflow_spans", every_span)
    unknown = "no-decisions-here"
    for what in ("decisions", "branches", "monitors"):
        answer = client.get(f"/api/workflows/{unknown}/{what}")
        assert (answer.status_code, answer.json()) == (200, []), what
    # a run that has them still reads them (with their Jaeger links)
    monkeypatch.undo()
    wid = run_ids["workflow_id"]
    assert client.get(f"/api/workflows/{wid}/decisions").json()[0]["jaeger_url"]
