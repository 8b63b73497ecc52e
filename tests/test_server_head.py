"""``HEAD`` on the service (``server/_head.py``): the status and headers of the ``GET``
of the same path, no body; the same token rule; the live streams keep ``405``. Through
the app (TestClient) and through ``spangraph serve`` itself (uvicorn), on the session's
embedded server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient

from spangraph.config import Settings
from spangraph.embedded import ServerInfo
from spangraph.server import create_app

TOKEN = "h3ad-t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _settings(graph_url: str, server: ServerInfo, home: Path) -> Settings:
    return Settings.from_env({}, graph_url=graph_url, redis_url=server.redis_url, home=str(home))


def _same_head_as_get(client: Any, path: str, headers: dict[str, str] | None = None) -> int:
    got = client.get(path, headers=headers)
    head = client.head(path, headers=headers)
    assert head.status_code == got.status_code, path
    assert head.content == b"", path
    assert head.headers["content-length"] == str(len(got.content)), path
    assert head.headers["content-type"] == got.headers["content-type"], path
    return int(head.status_code)


def test_head_answers_as_get_without_the_body(
    graph_url: str, embedded_server: ServerInfo, tmp_path: Path
) -> None:
    settings = _settings(graph_url, embedded_server, tmp_path).replace(api_token=TOKEN)
    with TestClient(create_app(settings)) as client:
        for path in ("/", "/static/app.js", "/static/app.css"):  # public
            assert _same_head_as_get(client, path) == 200
        assert _same_head_as_get(client, "/static/nope.js") == 404
        for path in ("/api/health", "/api/workflows", "/api/config"):
            assert _same_head_as_get(client, path) == 401  # the token rule of GET
            assert _same_head_as_get(client, path, AUTH) == 200
        # a never-ending stream has no whole answer to take the headers of
        sse = client.head("/api/stream/workflows/w/sse", headers=AUTH)
        assert sse.status_code == 405 and sse.headers["allow"] == "GET"
        # a route without GET still says which methods it has
        otlp = client.head("/v1/traces", headers=AUTH)
        assert otlp.status_code == 405 and otlp.headers["allow"] == "POST"
        assert client.get("/static/app.js").content  # GET itself unchanged


def test_head_through_spangraph_serve(
    graph_url: str, embedded_server: ServerInfo, tmp_path: Path, start_serve: Any
) -> None:
    service = start_serve(
        SPANGRAPH_HOME=str(tmp_path / "home"),
        SPANGRAPH_GRAPH_URL=graph_url,
        SPANGRAPH_REDIS_URL=embedded_server.redis_url,
        SPANGRAPH_API_TOKEN=TOKEN,
    )
    with httpx.Client(base_url=service.url, timeout=10) as client:
        assert _same_head_as_get(client, "/") == 200
        assert _same_head_as_get(client, "/api/health", AUTH) == 200
        assert _same_head_as_get(client, "/api/health") == 401
    log = service.stop()
    assert '"HEAD / HTTP/1.1" 200' in log
    assert '"HEAD /api/health HTTP/1.1" 401' in log
