"""``spangraph serve`` on the embedded default follows the embedded server to a new port:
the server is stopped and started again while another program holds its port, so it
comes back on another one (``server.json`` says which). The service's queries, health
checks and live streams go on there without a restart; with explicit URLs it keeps to
them."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import TracerProvider
from websockets.asyncio.client import ClientConnection, connect

import spangraph
from conftest import move
from spangraph.config import Settings
from spangraph.embedded import EmbeddedServer
from spangraph.processors.live import seq_key
from spangraph.server import create_app


def open_ws(serve: Any, path: str) -> Any:
    return connect(f"ws://127.0.0.1:{serve.port}{path}", compression=None)


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """A home of the test's own; its embedded server is stopped at teardown."""
    path = tmp_path / "home"
    yield path
    EmbeddedServer(path).stop()


@pytest.fixture
def serve(home: Path, start_serve: Any) -> Any:
    """``spangraph serve`` on the embedded default under ``home``."""
    return start_serve(SPANGRAPH_HOME=str(home))


@pytest.fixture
def configured() -> Iterator[None]:
    yield
    spangraph.shutdown(timeout=2.0)


async def frame(ws: ClientConnection, timeout: float) -> list[dict[str, Any]]:
    messages = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    assert isinstance(messages, list) and messages
    return messages


async def read_until(ws: ClientConnection, wid: str, done: Any, timeout: float = 30) -> list:
    """Every message of ``ws`` (the service's own included) until ``done`` of the run
    ``wid``'s messages so far."""
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while not done([m for m in out if m.get("workflow_id") == wid]):
        out += await frame(ws, deadline - time.monotonic())
    return out


def otlp_span(workflow_id: str) -> dict[str, Any]:
    """An OTLP/JSON request with one finished workflow span of run ``workflow_id``."""
    t0 = time.time_ns()

    def attribute(key: str, value: str) -> dict[str, Any]:
        return {"key": key, "value": {"stringValue": value}}

    span = {
        "traceId": uuid.uuid4().hex,
        "spanId": uuid.uuid4().hex[:16],
        "name": "from-another-language",
        "kind": 1,
        "startTimeUnixNano": str(t0),
        "endTimeUnixNano": str(t0 + 1_000_000),
        "attributes": [
            attribute("spangraph.kind", "workflow"),
            attribute("spangraph.workflow.id", workflow_id),
        ],
    }
    resource = {"attributes": [attribute("service.name", "otlp-client")]}
    return {"resourceSpans": [{"resource": resource, "scopeSpans": [{"spans": [span]}]}]}


@pytest.mark.slow
async def test_serve_follows_the_embedded_server_to_a_new_port(
    serve: Any, home: Path, configured: None
) -> None:
    """Started on the embedded default before the move, the service answers queries
    there again after it (503 while the server is down), and live subscribers connected
    before the move get the events published after it: an ``error`` when the server goes
    away, then ``resumed`` and every event of the run, in order, none twice. Spans sent
    to its OTLP receiver after the move reach the graph and the live streams too."""
    server = EmbeddedServer(home)
    first = server.status()
    assert first is not None  # serve started it
    spangraph.configure(tracer_provider=TracerProvider(), home=str(home), project="moved")
    with spangraph.workflow("before-the-move") as run:
        spangraph.event("progress", n=1)
    assert spangraph.flush(10)
    before = run.workflow_id
    wid, otlp_wid = f"wf-{uuid.uuid4().hex[:12]}", f"otlp-{uuid.uuid4().hex[:12]}"

    async with (
        httpx.AsyncClient(base_url=serve.url, timeout=httpx.Timeout(30)) as http,
        open_ws(serve, f"/api/stream/workflows/{wid}") as ws,
        open_ws(serve, f"/api/stream/workflows/{otlp_wid}") as otlp_ws,
        http.stream("GET", f"/api/stream/workflows/{wid}/sse") as sse,
    ):
        lines = sse.aiter_lines()
        assert (await frame(ws, 10))[0]["type"] == "subscribed"
        assert (await frame(otlp_ws, 10))[0]["type"] == "subscribed"
        assert (await http.get(f"/api/workflows/{before}/tree")).status_code == 200

        await asyncio.to_thread(server.stop)
        down = await http.get("/api/workflows")
        assert down.status_code == 503, down.text
        assert "graph store unavailable" in down.json()["detail"]
        assert (await frame(ws, 10))[0]["type"] == "error"

        second = await asyncio.to_thread(move, server, first)
        tree = await http.get(f"/api/workflows/{before}/tree")
        assert tree.status_code == 200, tree.text  # the first query after the move
        assert tree.json()[0]["name"] == "before-the-move"
        assert f":{second.port}/" in (await http.get("/api/health/graph")).json()["detail"]
        deadline = time.monotonic() + 15  # the live side reconnects with backoff (≤ 5 s)
        while (health := await http.get("/api/health/redis")).status_code != 200:
            assert time.monotonic() < deadline, health.text
            await asyncio.sleep(0.1)

        with spangraph.workflow("after-the-move", workflow_id=wid):
            for i in range(5):
                spangraph.event("tick", i=i)
        assert await asyncio.to_thread(spangraph.flush, 30)
        client = redis.Redis(port=second.port)
        try:
            last = int(client.get(seq_key(wid)) or 0)
        finally:
            client.close()
        assert last >= 7  # span.started, workflow.started, 5 ticks, … span.ended

        got = await read_until(ws, wid, lambda run: run and run[-1]["seq"] >= last)
        assert [m["seq"] for m in got if m.get("workflow_id") == wid] == list(range(1, last + 1))
        assert "resumed" in [m["type"] for m in got if "workflow_id" not in m]

        ids: list[int] = []
        async with asyncio.timeout(30):
            async for line in lines:
                if line.startswith("id: "):
                    ids.append(int(line[4:]))
                    if ids[-1] >= last:
                        break
        assert ids == list(range(1, last + 1))

        posted = await http.post("/v1/traces", json=otlp_span(otlp_wid))
        assert posted.status_code == 200, posted.text
        live = await read_until(
            otlp_ws, otlp_wid, lambda run: any(m["type"] == "span.ended" for m in run)
        )
        types = [m["type"] for m in live if m.get("workflow_id") == otlp_wid]
        assert types[0] == "span.started" and types[-1] == "span.ended"
        deadline = time.monotonic() + 30
        while (answer := await http.get(f"/api/workflows/{otlp_wid}/tree")).status_code != 200:
            assert answer.status_code == 404, answer.text
            assert time.monotonic() < deadline, "the OTLP span did not reach the graph"
            await asyncio.sleep(0.1)
        assert answer.json()[0]["name"] == "from-another-language"


@pytest.mark.slow
def test_explicit_urls_are_not_followed(home: Path) -> None:
    """With SPANGRAPH_GRAPH_URL and SPANGRAPH_REDIS_URL set, the service keeps to them,
    even when they name the embedded server of its home and that server moved."""
    server = EmbeddedServer(home)
    first = server.ensure_running()
    settings = Settings.from_env(
        {}, graph_url=first.graph_url, redis_url=first.redis_url, home=str(home)
    )
    with TestClient(create_app(settings)) as client:
        assert client.get("/api/health").status_code == 200
        server.stop()
        move(server, first)
        listing = client.get("/api/workflows")
        assert listing.status_code == 503, listing.text
        health = client.get("/api/health")
        assert health.status_code == 503
        assert f":{first.port}" in health.json()["graph"]["detail"]
        assert health.json()["redis"]["status"] == "error"


@pytest.mark.slow
async def test_live_streams_never_read_another_server_on_the_old_port(tmp_path: Path) -> None:
    """While the embedded server was down, another home's server took its port: the
    service's live streams refuse it and follow their own server to its new port. Before,
    the hub's connections to the old port answered, so it read the other server's
    channels for good and never looked for its own."""
    from spangraph.server._hub import StreamHub
    from spangraph.server._subscriber import Subscriber

    ours, theirs = EmbeddedServer(tmp_path / "ours"), EmbeddedServer(tmp_path / "theirs")
    hub = None
    try:
        first = ours.ensure_running()
        hub = StreamHub(first.redis_url, timeout=2.0, reconnect_max=0.3)
        hub.on_unavailable = ours.follower(first.port, hub.move_to)
        hub.connect_check = ours.async_connect_check()
        await hub.start()
        sub = Subscriber("spangraph:workflow:w-hub", max_queue=1000, workflow_id="w-hub")
        await hub.attach(sub)

        await asyncio.to_thread(ours.stop)
        (tmp_path / "theirs").mkdir()
        (tmp_path / "theirs" / "server.json").write_text(json.dumps({"port": first.port}))
        assert (await asyncio.to_thread(theirs.ensure_running)).port == first.port
        second = await asyncio.to_thread(ours.ensure_running)
        assert second.port != first.port

        own, other = redis.Redis(port=second.port), redis.Redis(port=first.port)
        got: list[dict[str, Any]] = []
        try:
            deadline = time.monotonic() + 20
            seq = 0
            while not any(m.get("from") == "ours" for m in got):
                theirs_got = sum(m.get("from") == "theirs" for m in got)
                assert time.monotonic() < deadline, f"nothing from ours, {theirs_got} from theirs"
                seq += 1
                for client, source in ((own, "ours"), (other, "theirs")):
                    message = {"type": "tick", "seq": seq, "workflow_id": "w-hub"}
                    client.publish(sub.channel, json.dumps({**message, "from": source}))
                try:
                    batches = await asyncio.wait_for(sub.take(), 0.2)
                except TimeoutError:
                    continue
                await asyncio.sleep(0.05)
                for batch in batches or ():
                    got += [json.loads(text) for text in batch.msgs]
        finally:
            own.close()
            other.close()
        assert [m for m in got if m.get("from") == "theirs"] == []
        hub.detach(sub)
    finally:
        if hub is not None:
            await hub.stop()
        ours.stop()
        theirs.stop()
