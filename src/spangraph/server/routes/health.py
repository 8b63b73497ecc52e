"""GET /api/health, /api/health/graph, /api/health/neo4j, /api/health/redis."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ..deps import RedisDep, StoreDep
from ..models import Health, HealthAll

router: APIRouter = APIRouter(prefix="/api/health", tags=["health"])

_RESPONSES: dict[int | str, dict[str, Any]] = {503: {"model": Health}}

ANSWER_WITHIN = 5.0
"""Seconds a store or Redis has to answer a health check's ping."""


def _why(exc: BaseException) -> str:
    """A failed check's detail: the error, or that nothing answered in time (the
    timeout's own text is empty)."""
    if isinstance(exc, TimeoutError) and not str(exc):
        return f"no answer within {ANSWER_WITHIN:g} s"
    return f"{type(exc).__name__}: {exc}"


async def _graph(store: Any) -> Health:
    try:
        await asyncio.wait_for(run_in_threadpool(store.ping), timeout=ANSWER_WITHIN)
    except Exception as exc:
        return Health(status="error", component="graph", detail=_why(exc))
    return Health(status="ok", component="graph", detail=getattr(store, "url", None))


async def _redis(client: Any) -> Health:
    if client is None:
        return Health(status="ok", component="redis", detail="live events are off")
    try:
        await asyncio.wait_for(client.ping(), timeout=ANSWER_WITHIN)
    except Exception as exc:
        return Health(status="error", component="redis", detail=_why(exc))
    return Health(status="ok", component="redis")


def _answer(model: Health | HealthAll) -> JSONResponse:
    code = 200 if model.status == "ok" else 503
    return JSONResponse(model.model_dump(), status_code=code)


@router.get("", response_model=HealthAll, responses={503: {"model": HealthAll}})
async def health(store: StoreDep, redis: RedisDep) -> JSONResponse:
    """Graph store and Redis together: 200 when both answer, else 503 with the errors."""
    graph, live = await asyncio.gather(_graph(store), _redis(redis))
    ok = graph.status == "ok" and live.status == "ok"
    return _answer(HealthAll(status="ok" if ok else "error", graph=graph, redis=live))


@router.get("/graph", response_model=Health, responses=_RESPONSES)
async def health_graph(store: StoreDep) -> JSONResponse:
    """The configured graph store (Neo4j or FalkorDB): 200, or 503 with the error."""
    return _answer(await _graph(store))


@router.get("/neo4j", response_model=Health, responses=_RESPONSES)
async def health_neo4j(store: StoreDep) -> JSONResponse:
    """Same as ``/api/health/graph`` (kept under its original name)."""
    return _answer(await _graph(store))


@router.get("/redis", response_model=Health, responses=_RESPONSES)
async def health_redis(redis: RedisDep) -> JSONResponse:
    """The Redis for live events: 200, or 503 with the error."""
    return _answer(await _redis(redis))
