"""``/docs`` and ``/redoc``: what the pages load, and from where."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi.testclient import TestClient

from spangraph.config import Settings
from spangraph.embedded import ServerInfo
from spangraph.server import create_app
from spangraph.server._docs import REDOC_JS, SWAGGER_CSS, SWAGGER_JS


def external(html: str) -> list[str]:
    """Every tag of ``html`` that names another site's URL."""
    return [tag for tag in re.findall(r"<[^>]+>", html) if re.search(r"https?://", tag)]


def test_the_pages_load_pinned_files_with_their_integrity(
    graph_url: str, embedded_server: ServerInfo, tmp_path: Path
) -> None:
    """FastAPI's own pages loaded whatever the CDN publishes as the latest 5.x / 2.x,
    without an integrity hash, plus Google's fonts and an icon from FastAPI's site."""
    settings = Settings.from_env(
        {}, graph_url=graph_url, redis_url=embedded_server.redis_url, home=str(tmp_path)
    )
    with TestClient(create_app(settings)) as client:
        pages = {path: client.get(path) for path in ("/docs", "/redoc")}
    for path, files in (("/docs", [SWAGGER_CSS, SWAGGER_JS]), ("/redoc", [REDOC_JS])):
        page = pages[path]
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        tags = external(page.text)
        assert len(tags) == len(files), tags  # nothing else from another site
        for (url, integrity), tag in zip(files, tags, strict=True):
            assert f'"{url}"' in tag and f'integrity="{integrity}"' in tag
            assert 'crossorigin="anonymous"' in tag
            assert re.search(r"@\d+\.\d+\.\d+/", url), url  # one release, not "@5"
            assert re.fullmatch(r"sha384-[A-Za-z0-9+/]{64}", integrity)
        assert "/openapi.json" in page.text
    assert 'SwaggerUIBundle({url: "/openapi.json"' in pages["/docs"].text
