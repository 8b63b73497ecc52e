"""The HTTP API (health and query routes, auth, CORS, OpenAPI) against a real store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import TracerProvider

import spangraph
from spangraph.config import Settings
from spangraph.embedded import ServerInfo
from spangraph.server import create_app
from spangraph.stores import FalkorDBStore


@pytest.fixture
def settings(graph_url: str, embedded_server: ServerInfo, tmp_path: Path) -> Settings:
    return Settings.from_env(
        graph_url=graph_url,
        redis_url=embedded_server.redis_url,
        home=str(tmp_path),
        jaeger_url="http://jaeger.example:16686",
    )


def _configure(settings: Settings, project: str) -> None:
    """spangraph on a private TracerProvider, writing where ``settings`` point."""
    spangraph.configure(
        tracer_provider=TracerProvider(),
        graph_url=settings.graph_url,
        redis_url=settings.redis_url,
        home=str(settings.home),
        project=project,
    )


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


def test_health_reports_a_store_that_is_down(
    embedded_server: ServerInfo, closed_port: int, tmp_path: Path
) -> None:
    """The service starts while its store is down and says so: 503 with the error."""
    settings = Settings.from_env(
        graph_url=f"falkordb://127.0.0.1:{closed_port}/g",
        redis_url=embedded_server.redis_url,
        home=str(tmp_path),
    )
    with TestClient(create_app(settings)) as client:
        graph = client.get("/api/health/graph")
        assert graph.status_code == 503
        assert graph.json()["status"] == "error" and graph.json()["detail"]
        assert client.get("/api/health/redis").status_code == 200
        assert client.get("/api/health").status_code == 503
        listing = client.get("/api/workflows")
        assert listing.status_code == 503 and "unavailable" in listing.json()["detail"]


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


def test_decisions_branches_monitors_events(client: TestClient, run_ids: dict[str, str]) -> None:
    wid = run_ids["workflow_id"]
    [decision] = client.get(f"/api/workflows/{wid}/decisions").json()
    assert decision["chosen"] == "a" and decision["reason"] == "only one tried"
    assert [(o["name"], o["explored"], o["chosen"]) for o in decision["options"]] == [
        ("a", True, True),
        ("b", False, False),
    ]
    assert decision["jaeger_url"].endswith(f"uiFind={decision['span_id']}")
    branches = client.get(f"/api/workflows/{wid}/branches").json()
    assert [(b["name"], b["nodes"], b["failed"]) for b in branches] == [
        ("left", 2, 0),
        ("right", 2, 0),
    ]
    [monitor] = client.get(f"/api/workflows/{wid}/monitors").json()
    assert (monitor["monitor"], monitor["target"]) == ("watch-left", "left")
    assert monitor["target_branch_id"] == run_ids["branch_id"]
    summary = client.get(f"/api/branches/{run_ids['branch_id']}/summary").json()
    assert [n["name"] for n in summary["nodes"]] == ["left", "inside-left"]
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
