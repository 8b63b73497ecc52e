"""Fixtures: a real embedded FalkorDB/Redis server on a free port in a temp dir."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

import spangraph
from spangraph.embedded import EmbeddedServer, ServerInfo
from spangraph.stores import FalkorDBStore


@pytest.fixture(scope="session")
def embedded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerInfo]:
    """One server for the session (tests isolate themselves by graph name)."""
    server = EmbeddedServer(tmp_path_factory.mktemp("spangraph-home"))
    info = server.ensure_running()
    yield info
    server.stop()


@pytest.fixture
def graph_url(embedded_server: ServerInfo) -> str:
    """A fresh, empty graph on the session server."""
    return f"falkordb://127.0.0.1:{embedded_server.port}/t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def store(graph_url: str) -> Iterator[FalkorDBStore]:
    s = FalkorDBStore.from_url(graph_url)
    s.ensure_schema()
    yield s
    s.delete_all()
    s.close()


@pytest.fixture
def redis_client(embedded_server: ServerInfo) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(embedded_server.redis_url)
    yield client
    client.close()


@pytest.fixture
def provider() -> Iterator[TracerProvider]:
    tp = TracerProvider(resource=Resource.create({"service.name": "spangraph-tests",
                                                  "deployment.environment.name": "test"}))
    yield tp
    tp.shutdown()


@pytest.fixture
def sg(
    provider: TracerProvider, graph_url: str, embedded_server: ServerInfo, tmp_path
) -> Iterator[spangraph.Spangraph]:
    """spangraph configured on a private TracerProvider, a fresh graph and the session
    Redis, with a project id unique to the test."""
    instance = spangraph.configure(
        tracer_provider=provider,
        graph_url=graph_url,
        redis_url=embedded_server.redis_url,
        home=str(tmp_path),
        project=f"p-{uuid.uuid4().hex[:8]}",
    )
    yield instance
    spangraph.shutdown()
    if instance.store is not None:
        instance.store.delete_all()  # type: ignore[attr-defined]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("NEO4J_URI"):
        return
    skip = pytest.mark.skip(reason="needs a Neo4j server: set NEO4J_URI (and NEO4J_USER, NEO4J_PASSWORD)")
    for item in items:
        if "neo4j" in item.keywords:
            item.add_marker(skip)
