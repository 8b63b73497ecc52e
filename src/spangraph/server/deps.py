"""Dependencies shared by the routers: settings, store, Redis, auth. All ``async``: none
waits for anything, and FastAPI runs a plain ``def`` dependency in the thread pool, where
queries stuck on the graph store would hold up every request (the OTLP receiver's too)."""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any, Final

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


HEAVY_READS: Final = 4
"""Runs read whole at once (a tree, a replay, a span's path): each is built in memory, tens
of megabytes for a run of 60 000 spans."""
HEAVY_READ_WAIT: Final = 10.0
"""Seconds a whole-run read waits for its turn before the answer is 503."""


async def heavy_read(request: Request) -> AsyncIterator[None]:
    """A turn among the :data:`HEAVY_READS` whole-run reads served at once: one more
    waits up to :data:`HEAVY_READ_WAIT` seconds, then is answered 503 with
    ``Retry-After`` (ten readers of a large run took the service's memory to 1.8 GB and
    its health checks to 503)."""
    turns: asyncio.Semaphore | None = getattr(request.app.state, "heavy_reads", None)
    if turns is None:
        turns = request.app.state.heavy_reads = asyncio.Semaphore(HEAVY_READS)
    try:
        await asyncio.wait_for(turns.acquire(), HEAVY_READ_WAIT)
    except TimeoutError:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail=f"busy: {HEAVY_READS} runs are being read whole; try again",
            headers={"Retry-After": "2"},
        ) from None
    try:
        yield
    finally:
        turns.release()


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
