"""The web UI: ``GET /`` serves the page, ``GET /static/{name}`` its files (plain HTML,
CSS and ES modules shipped inside the package: no build step, no CDN), and
``GET /api/config`` tells the page the Jaeger base URL and whether a token is needed.

The page and its static files are public, so a browser can load them before it has
the token; ``/api/config`` and every API route it calls require the bearer token when
``SPANGRAPH_API_TOKEN`` is set (the page asks for it once, on the first 401)."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, Field

from .._version import __version__
from .deps import SettingsDep, require_token
from .models import AUTH_ERRORS

router: APIRouter = APIRouter(tags=["ui"])


class UIConfig(BaseModel):
    """What the page needs to know about the service."""

    jaeger_url: str = Field(description="SPANGRAPH_JAEGER_URL, for links to spans seen live")
    auth: bool = Field(description="whether SPANGRAPH_API_TOKEN is in force")
    live: bool = Field(description="whether live events are on (the WebSocket stream)")
    version: str


_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
}


def _static_file(name: str) -> bytes | None:
    """A file of the package's ``static`` folder, or ``None``. Only names listed in the
    folder are served, so no request path reaches anything else."""
    folder = resources.files("spangraph.server").joinpath("static")
    for entry in folder.iterdir():
        if entry.name == name and entry.is_file() and name.endswith(tuple(_MEDIA_TYPES)):
            return entry.read_bytes()
    return None


def _media_type(name: str) -> str:
    return next(t for ext, t in _MEDIA_TYPES.items() if name.endswith(ext))


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def index() -> Response:
    """The single page: runs, a run's live tree, node detail, decisions, branches."""
    return Response(_static_file("index.html"), media_type=_MEDIA_TYPES[".html"], headers=_HEADERS)


@router.get("/static/{name}", include_in_schema=False)
def static(name: str) -> Response:
    """A file of the page (``app.js``, ``app.css`` …). 404 for anything else."""
    body = _static_file(name)
    if body is None:
        raise HTTPException(404, detail=f"no static file {name!r}")
    return Response(body, media_type=_media_type(name), headers=_HEADERS)


@router.get(
    "/api/config",
    response_model=UIConfig,
    dependencies=[Depends(require_token)],
    responses=AUTH_ERRORS,
)
def config(settings: SettingsDep) -> UIConfig:
    """The web UI's settings: the Jaeger base URL (for links to spans the page only knows
    from live messages), whether a token is in force, whether live events are on."""
    return UIConfig(
        jaeger_url=settings.jaeger_url.rstrip("/"),
        auth=bool(settings.api_token),
        live=settings.live_enabled,
        version=__version__,
    )
