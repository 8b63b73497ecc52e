"""The service's defences: CORS for browser OTLP exporters. The app runs with
TestClient on the session's embedded server."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from spangraph.config import Settings
from spangraph.embedded import ServerInfo
from spangraph.server import create_app


@pytest.fixture
def settings(graph_url: str, embedded_server: ServerInfo, tmp_path: Path) -> Settings:
    return Settings.from_env(
        {}, graph_url=graph_url, redis_url=embedded_server.redis_url, home=str(tmp_path)
    )


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
