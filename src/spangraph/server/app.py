"""create_app: the FastAPI app, with its resources opened and closed in the lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from starlette.concurrency import run_in_threadpool

from .._version import __version__
from ..config import Settings
from ..stores import open_store
from .deps import require_token
from .routes import health, runs

_log = logging.getLogger("spangraph.server")


def _redis_url(settings: Settings, server: Any) -> str | None:
    if not settings.live_enabled:
        return None
    if settings.redis_is_embedded:
        return str(server.redis_url)
    return settings.redis_url


def create_app(
    settings: Settings | None = None,
    *,
    cors_origins: list[str] | None = None,
    start_embedded: bool = True,
) -> FastAPI:
    """The spangraph service. Nothing connects until the app starts; the lifespan opens
    the graph store, the Redis client, the live-stream hub and the OTLP ingest pipeline,
    and closes them on shutdown. Every route requires ``SPANGRAPH_API_TOKEN`` as a
    bearer token when it is set; CORS is off unless ``cors_origins`` is given."""
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        import redis.asyncio as aioredis

        from .ingest import OTLPIngest
        from .streams import StreamHub

        server = None
        if start_embedded and (settings.graph_is_embedded or settings.redis_is_embedded):
            from ..embedded import EmbeddedServer

            server = await run_in_threadpool(EmbeddedServer(settings.home).ensure_running)
        chosen = (
            settings.replace(graph_url=server.graph_url)
            if settings.graph_is_embedded and server
            else settings
        )
        store = await run_in_threadpool(open_store, chosen)
        try:
            await run_in_threadpool(store.ensure_schema)
        except Exception as exc:  # the store may come up later: health says so
            _log.warning("graph store not ready at startup: %s", exc)
        redis_url = _redis_url(settings, server)
        client = aioredis.Redis.from_url(redis_url) if redis_url else None
        app.state.settings = settings
        app.state.store = store
        app.state.redis = client
        app.state.redis_url = redis_url
        app.state.hub = StreamHub(redis_url)
        app.state.ingest = OTLPIngest(settings, store, redis_url)
        await app.state.hub.start()
        try:
            yield
        finally:
            await app.state.hub.stop()
            await run_in_threadpool(app.state.ingest.shutdown)
            if client is not None:
                await client.aclose()
            await run_in_threadpool(store.close)

    app = FastAPI(
        title="spangraph",
        version=__version__,
        summary="Agent and workflow runs as graphs: query API, live streams, OTLP receiver.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    auth = [Depends(require_token)]
    app.include_router(health.router, dependencies=auth)
    app.include_router(runs.router, dependencies=auth)
    from . import otlp, streams, ui

    app.include_router(streams.router)  # checks the token itself (WebSockets have no headers)
    app.include_router(otlp.router, dependencies=auth)
    app.include_router(ui.router)  # the page itself is public; its API calls send the token
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=cors_origins,
            allow_credentials=False,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    return app
