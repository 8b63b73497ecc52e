"""The service's defences: the API token kept out of the access log, Host names a
loopback service answers (DNS rebinding), CORS for browser OTLP exporters, and which
routes need the token. ``spangraph serve`` runs for real in a subprocess on the
session's embedded server; the rest uses the app with TestClient on the same server."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect
from websockets.asyncio.client import connect

from spangraph.config import Settings
from spangraph.embedded import ServerInfo
from spangraph.server import create_app
from spangraph.server.app import ENV_ALLOWED_HOSTS, app_from_env

TOKEN = "s3cr3t-t0k"


@pytest.fixture
def settings(graph_url: str, embedded_server: ServerInfo, tmp_path: Path) -> Settings:
    return Settings.from_env(
        {}, graph_url=graph_url, redis_url=embedded_server.redis_url, home=str(tmp_path)
    )


@pytest.fixture
def served(graph_url: str, embedded_server: ServerInfo, tmp_path: Path, start_serve: Any) -> Any:
    """``spangraph serve`` with a token, in a subprocess; yields ``(port, output)`` where
    ``output()`` stops the service (SIGINT) and returns all it printed."""
    service = start_serve(
        SPANGRAPH_HOME=str(tmp_path / "home"),
        SPANGRAPH_GRAPH_URL=graph_url,
        SPANGRAPH_REDIS_URL=embedded_server.redis_url,
        SPANGRAPH_API_TOKEN=TOKEN,
    )
    return service.port, lambda: service.stop(signal.SIGINT)


def test_the_token_never_reaches_the_access_log(served: Any) -> None:
    port, output = served
    base = f"http://127.0.0.1:{port}"

    async def use_the_token_in_queries() -> None:
        stream = f"ws://127.0.0.1:{port}/api/stream/workflows/w-log?since=0&token={TOKEN}"
        async with connect(stream, compression=None) as ws:
            assert '"subscribed"' in await asyncio.wait_for(ws.recv(), 10)
        async with (
            httpx.AsyncClient(base_url=base, timeout=10) as http,
            http.stream("GET", f"/api/stream/workflows/w-log/sse?token={TOKEN}&x=1") as sse,
        ):
            assert sse.status_code == 200

        # The query parser decodes parameter names: this is the token too, and works.
        encoded = f"ws://127.0.0.1:{port}/api/stream/workflows/w-enc?since=0&t%6Fken={TOKEN}"
        async with connect(encoded, compression=None) as ws:
            assert '"subscribed"' in await asyncio.wait_for(ws.recv(), 10)

    asyncio.run(use_the_token_in_queries())
    assert httpx.get(f"{base}/api/workflows?token={TOKEN}").status_code == 401  # header only
    assert httpx.get(f"{base}/api/workflows?x=1;token={TOKEN}").status_code == 401
    text = output()
    assert "/api/stream/workflows/w-log?since=0&token=***" in text
    assert "/api/stream/workflows/w-log/sse?token=***&x=1" in text
    assert "/api/workflows?token=***" in text
    assert "/api/stream/workflows/w-enc?since=0&t%6Fken=***" in text
    assert "/api/workflows?x=1;token=***" in text
    assert TOKEN not in text


def test_a_token_with_quotes_or_semicolons_is_hidden_whole() -> None:
    """The token rule admits `'`, `;` and `"`; the query parser reads a value up to the
    next `&`, but the log filter stopped at those: the rest of the token was logged."""
    import logging

    from spangraph.server.app import _RedactToken

    token = "abc'DEF;GHI%22JKL\"MNO"
    redact = _RedactToken()
    lines = [
        ('%s - "WebSocket %s" [accepted]', ("1.2.3.4:5", f"/api/stream/projects/p?token={token}")),
        ('%s - "%s %s HTTP/%s" %d',
         ("1.2.3.4:5", "GET", f"/api/stream/workflows/x/sse?token={token}&x=1", "1.1", 200)),
    ]  # fmt: skip
    said = []
    for msg, args in lines:
        record = logging.LogRecord("uvicorn.access", logging.INFO, "f", 1, msg, args, None)
        assert redact.filter(record)
        said.append(record.getMessage())
    assert said == [
        '1.2.3.4:5 - "WebSocket /api/stream/projects/p?token=***" [accepted]',
        '1.2.3.4:5 - "GET /api/stream/workflows/x/sse?token=***&x=1 HTTP/1.1" 200',
    ]


def test_rejected_requests_cannot_write_terminal_escapes_into_the_log(served: Any) -> None:
    """The rejection warnings logged the decoded path: ESC, BEL and BS from anyone who
    can reach the port went to the operator's terminal as they were."""
    port, output = served
    base = f"http://127.0.0.1:{port}"
    assert httpx.get(f"{base}/api/nodes/%1B%5B31mRED%1B%5B0m%07%08").status_code == 401
    text = output()
    assert "rejected GET /api/nodes/\\x1b[31mRED\\x1b[0m\\x07\\x08" in text
    assert "\x1b[31m" not in text and "\x07" not in text


def test_serve_on_loopback_answers_loopback_host_names_only(served: Any) -> None:
    """A web page whose DNS name was rebound to 127.0.0.1 sends its own name as Host."""
    port, output = served
    url = f"http://127.0.0.1:{port}/api/health"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for host in ("evil.example", f"evil.example:{port}", "localhost.evil.example"):
        answer = httpx.get(url, headers={**auth, "Host": host})
        assert answer.status_code == 400, host
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "localhost"):
        assert httpx.get(url, headers={**auth, "Host": host}).status_code == 200, host
    assert "Invalid host header" not in output()


def test_allowed_hosts_from_the_environment(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {
        "SPANGRAPH_GRAPH_URL": settings.graph_url,
        "SPANGRAPH_REDIS_URL": settings.redis_url,
        "SPANGRAPH_HOME": str(settings.home),
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SPANGRAPH_API_TOKEN", raising=False)
    monkeypatch.setenv(ENV_ALLOWED_HOSTS, "spangraph.example.com, *.internal.example")
    with TestClient(app_from_env(), base_url="http://spangraph.example.com") as client:
        assert client.get("/api/config").status_code == 200
        for host in ("a.internal.example", "localhost:8000", "[::1]", "127.0.0.1"):
            assert client.get("/api/config", headers={"Host": host}).status_code == 200, host
        refused = client.get("/api/config", headers={"Host": "evil.example"})
        assert (refused.status_code, refused.text) == (400, "Invalid host header")
        with (
            pytest.raises(WebSocketDisconnect),
            client.websocket_connect(
                "/api/stream/projects/p", headers={"Host": "evil.example"}
            ) as ws,
        ):
            ws.receive_text()
    for anything in ("*", ""):  # "*" or unset: any Host, as before
        monkeypatch.setenv(ENV_ALLOWED_HOSTS, anything)
        with TestClient(app_from_env(), base_url="http://evil.example") as client:
            assert client.get("/api/config").status_code == 200


def test_cors_preflight_allows_what_browser_otlp_exporters_send(settings: Settings) -> None:
    origin = "https://ui.example"
    with TestClient(create_app(settings, cors_origins=[origin])) as client:
        answer = client.options(
            "/v1/traces",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": (
                    "content-type,content-encoding,authorization,traceparent"
                ),
            },
        )
        assert answer.status_code == 200, answer.text
        assert answer.headers["access-control-allow-origin"] == origin
        other = client.options(
            "/v1/traces",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert other.status_code == 400


def test_a_page_of_another_origin_can_read_the_replay_source(settings: Settings) -> None:
    """``X-Spangraph-Replay`` tells a client whether a replay's seq go on live; a page
    of an allowed origin could not read it (no ``Access-Control-Expose-Headers``)."""
    origin = "https://ui.example"
    with TestClient(create_app(settings, cors_origins=[origin])) as client:
        answer = client.get("/api/workflows/no-such-run/events", headers={"Origin": origin})
        assert answer.status_code == 200 and answer.headers["x-spangraph-replay"]
        exposed = answer.headers["access-control-expose-headers"].lower().split(", ")
        assert {
            "x-spangraph-replay",
            "retry-after",
            "x-spangraph-run",
            "x-spangraph-id-kind",
        } <= set(exposed)


def test_every_route_with_data_needs_the_token(settings: Settings) -> None:
    """The page, its files and the API's description (``/openapi.json``, ``/docs``,
    ``/redoc``) hold no data and stay public; every route in the description wants it."""
    with TestClient(create_app(settings.replace(api_token=TOKEN))) as client:
        for path in ("/", "/static/app.js", "/openapi.json", "/docs", "/redoc"):
            assert client.get(path).status_code == 200, path
        schema = client.get("/openapi.json").json()
        assert schema["components"]["securitySchemes"] == {
            "HTTPBearer": {"type": "http", "scheme": "bearer"}
        }  # /docs asks for the token ("Authorize") and sends it
        routes = [(m, p) for p, item in schema["paths"].items() for m in item]
        assert len(routes) >= 15 and ("post", "/v1/traces") in routes
        for method, path in routes:
            concrete = path.replace("{", "").replace("}", "")  # any value will do
            answer = client.request(method, concrete)
            assert answer.status_code == 401, (method, path)
            assert "401" in schema["paths"][path][method]["responses"], (method, path)
        for path in ("/api/stream/workflows/w", "/api/stream/projects/p"):
            with client.websocket_connect(path) as ws, pytest.raises(WebSocketDisconnect) as e:
                ws.receive_text()
            assert e.value.code == 1008


def test_every_answer_forbids_sniffing_and_framing(settings: Settings) -> None:
    """Only the web UI's page and files said so: the API's JSON, and /docs and /redoc
    (where the token is typed in), could be framed by any site and sniffed."""
    from fastapi.testclient import TestClient

    with TestClient(create_app(settings)) as client:
        for path in ("/api/health", "/docs", "/redoc", "/openapi.json", "/api/nope", "/"):
            response = client.get(path)
            assert response.headers["x-content-type-options"] == "nosniff", path
            assert response.headers["x-frame-options"] == "DENY", path
        page = client.get("/")  # its own policy kept, not doubled
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert page.headers.get_list("x-content-type-options") == ["nosniff"]


def test_a_short_token_is_warned_about(
    served: Any, start_serve: Any, graph_url: str, embedded_server: ServerInfo, tmp_path: Path
) -> None:
    """Wrong tokens are not throttled: a short token could be guessed over HTTP."""
    _, output = served  # TOKEN has 10 characters
    assert "warning: SPANGRAPH_API_TOKEN has 10 characters" in output()
    strong = start_serve(
        SPANGRAPH_HOME=str(tmp_path / "home2"),
        SPANGRAPH_GRAPH_URL=graph_url,
        SPANGRAPH_REDIS_URL=embedded_server.redis_url,
        SPANGRAPH_API_TOKEN="k" * 16,
    )
    assert "SPANGRAPH_API_TOKEN" not in strong.stop(signal.SIGINT)
