"""``/docs`` (Swagger UI) and ``/redoc``: the API's interactive description.

FastAPI's own pages load the latest release of each major version from a CDN, so the
browser runs whatever script is published there next, on the page where the API token
is typed in. These pages load one pinned release, with its Subresource Integrity hash:
a file that is not byte for byte the one hashed here is refused by the browser. No
third-party fonts or icon either. Both pages are public, like ``/openapi.json``.
"""

from __future__ import annotations

import json
from html import escape

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(include_in_schema=False)

_CDN = "https://cdn.jsdelivr.net/npm"
SWAGGER_JS = (
    f"{_CDN}/swagger-ui-dist@5.36.0/swagger-ui-bundle.js",
    "sha384-fUpRgC19yPykTqzdrUbdAg8NTiu16NEKf9U12J+IJWCg8/1mEI8f2+PEIz60Wyd+",
)
SWAGGER_CSS = (
    f"{_CDN}/swagger-ui-dist@5.36.0/swagger-ui.css",
    "sha384-z/AtSaOHGn5MJ5auAHXUypohywlIWLBZo1jeGmhdpVIbCnFhxAH92cwdV41oyINc",
)
REDOC_JS = (
    f"{_CDN}/redoc@2.5.4/bundles/redoc.standalone.js",
    "sha384-w447zOpYfw/1Tv/5AK9NfHTlQIqE3RVR6KY62jCyy9zNDgO64cMwGGP1Fj0zJVf5",
)
"""(URL, integrity) of each file the pages load: the npm packages' own files, which the
CDN serves unchanged (hashes from ``npm pack swagger-ui-dist@5.36.0 redoc@2.5.4``)."""

_HEAD = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="icon" href="data:,">
{extra}</head>
"""


def _tag(name: str, file: tuple[str, str]) -> str:
    url, integrity = file
    where = 'rel="stylesheet" href' if name == "link" else "src"
    end = "" if name == "link" else "</script>"
    return f'<{name} {where}="{url}" integrity="{integrity}" crossorigin="anonymous">{end}'


def swagger_page(title: str, openapi_url: str) -> str:
    return (
        _HEAD.format(title=escape(title), extra=_tag("link", SWAGGER_CSS) + "\n")
        + '<body>\n<div id="swagger-ui"></div>\n'
        + _tag("script", SWAGGER_JS)
        + "\n<script>\nSwaggerUIBundle({"
        + f"url: {_js_string(openapi_url)}, dom_id: '#swagger-ui', layout: 'BaseLayout',"
        + " deepLinking: true, showExtensions: true, showCommonExtensions: true,"
        + " presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset]"
        + "});\n</script>\n</body>\n</html>\n"
    )


def redoc_page(title: str, openapi_url: str) -> str:
    return (
        _HEAD.format(title=escape(title), extra="<style>body { margin: 0; }</style>\n")
        + f'<body>\n<redoc spec-url="{escape(openapi_url)}"></redoc>\n'
        + _tag("script", REDOC_JS)
        + "\n</body>\n</html>\n"
    )


def _js_string(text: str) -> str:
    return json.dumps(text).replace("<", "\\u003c")


@router.get("/docs", response_class=HTMLResponse)
def swagger_ui() -> HTMLResponse:
    """Swagger UI on ``/openapi.json``."""
    return HTMLResponse(swagger_page("spangraph - API", "/openapi.json"))


@router.get("/redoc", response_class=HTMLResponse)
def redoc() -> HTMLResponse:
    """ReDoc on ``/openapi.json``."""
    return HTMLResponse(redoc_page("spangraph - API", "/openapi.json"))
