"""Dependencies shared by the routers: settings, store, Redis, auth. All ``async``: none
waits for anything, and FastAPI runs a plain ``def`` dependency in the thread pool, where
queries stuck on the graph store would hold up every request (the OTLP receiver's too)."""

from __future__ import annotations

import hmac
import logging
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .._terminal import printable
from ..config import Settings
from ..stores._base import GraphStore

_log = logging.getLogger("spangraph.server")

_bearer = HTTPBearer(auto_error=False)


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_store(request: Request) -> GraphStore:
    return request.app.state.store


async def get_redis(request: Request) -> Any:
    """The app's ``redis.asyncio.Redis`` client (the live-stream hub's, which follows the
    embedded server to another port), or ``None`` when live events are off."""
    return request.app.state.hub.client


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[GraphStore, Depends(get_store)]
RedisDep = Annotated[Any, Depends(get_redis)]


def token_ok(settings: Settings, presented: str | None) -> bool:
    """True when no token is configured, or ``presented`` equals it (constant time)."""
    expected = settings.api_token
    if not expected:
        return True
    return presented is not None and hmac.compare_digest(presented.encode(), expected.encode())


async def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Bearer-token check for every HTTP route when ``SPANGRAPH_API_TOKEN`` is set."""
    settings: Settings = request.app.state.settings
    presented = credentials.credentials if credentials is not None else None
    if not token_ok(settings, presented):
        _log.warning(
            "rejected %s %s: missing or wrong bearer token",
            request.method,
            printable(request.url.path),
        )
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="missing or wrong bearer token (SPANGRAPH_API_TOKEN)",
            headers={"WWW-Authenticate": "Bearer"},
        )


def jaeger_url(settings: Settings, trace_id: str | None, span_id: str | None) -> str | None:
    """``SPANGRAPH_JAEGER_URL/trace/{trace_id}?uiFind={span_id}``."""
    return settings.jaeger_link(trace_id, span_id)
