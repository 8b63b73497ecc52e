"""Live streams end to end: the app in a real uvicorn server, real WebSocket and SSE
clients, events produced by the SDK into the real embedded Redis."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import uvicorn
from opentelemetry.sdk.trace import TracerProvider
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

import spangraph
from spangraph.config import Settings
from spangraph.embedded import ServerInfo
from spangraph.exceptions import LiveUnavailableError
from spangraph.processors.live import seq_key, stream_key, workflow_channel
from spangraph.server import streams
from spangraph.server._hub import StreamHub
from spangraph.server._subscriber import (
    HEARTBEAT,
    Batch,
    Channel,
    Subscriber,
    seq_and_workflow,
)
from spangraph.server.app import create_app

# -- harness ------------------------------------------------------------------------------


class Live:
    """The app served by uvicorn on a free port, in a thread of its own."""

    def __init__(
        self, settings: Settings, cors_origins: list[str] | None = None, **hub_options: Any
    ) -> None:
        self.app = create_app(settings, cors_origins=cors_origins, start_embedded=False)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            ws_per_message_deflate=False,
            timeout_graceful_shutdown=1,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )
        original = streams.StreamHub
        streams.StreamHub = functools.partial(StreamHub, **hub_options)  # read at startup
        try:
            self.thread.start()
            deadline = time.monotonic() + 30
            while not self.server.started:
                assert self.thread.is_alive() and time.monotonic() < deadline, "no startup"
                time.sleep(0.02)
        finally:
            streams.StreamHub = original

    @property
    def hub(self) -> StreamHub:
        return self.app.state.hub  # type: ignore[no-any-return]

    def ws(self, path: str, **kwargs: Any) -> Any:
        return connect(f"ws://127.0.0.1:{self.port}{path}", compression=None, **kwargs)

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{self.port}", timeout=httpx.Timeout(10, read=30)
        )

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(20)
        self.sock.close()


@pytest.fixture
def serve(embedded_server: ServerInfo, tmp_path) -> Iterator[Any]:
    started: list[Live] = []

    def start(redis_url: str | None = None, **options: Any) -> Live:
        settings_options = {k: options.pop(k) for k in ("api_token",) if k in options}
        settings = Settings.from_env(
            {},
            graph_url=embedded_server.graph_url,
            redis_url=redis_url or embedded_server.redis_url,
            home=str(tmp_path),
            **settings_options,
        )
        live = Live(settings, **options)
        started.append(live)
        return live

    yield start
    for live in started:
        live.stop()


@pytest.fixture
def sdk(embedded_server: ServerInfo, tmp_path) -> Iterator[Any]:
    """Configure spangraph (live events only) on a Redis; returns the project id."""

    def configure(redis_url: str | None = None) -> str:
        project = f"p-{uuid.uuid4().hex[:8]}"
        spangraph.configure(
            tracer_provider=TracerProvider(),
            graph_url=embedded_server.graph_url,
            redis_url=redis_url or embedded_server.redis_url,
            project=project,
            home=str(tmp_path),
            graph=False,
        )
        return project

    yield configure
    spangraph.shutdown()


@pytest.fixture
def r(embedded_server: ServerInfo) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(embedded_server.redis_url)
    yield client
    client.close()


async def frame(ws: ClientConnection, timeout: float = 10) -> list[dict[str, Any]]:
    """The messages of the next frame (each frame is a JSON array)."""
    messages = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    assert isinstance(messages, list) and messages
    return messages


async def subscribed(ws: ClientConnection) -> dict[str, Any]:
    first = await frame(ws)
    assert first[0]["type"] == "subscribed", first
    return first[0]


async def events_until(ws: ClientConnection, wid: str, last: int, timeout: float = 15) -> list:
    """The messages of run ``wid`` read until the one with ``seq`` ``last`` (the service's
    own messages, and other runs', are skipped)."""
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while not out or out[-1]["seq"] < last:
        for m in await frame(ws, deadline - time.monotonic()):
            if m.get("workflow_id") == wid:
                out.append(m)
    return out


async def flush_and_last(client: redis.Redis, wid: str) -> int:
    await asyncio.to_thread(spangraph.flush, 10)
    return int(client.get(seq_key(wid)) or 0)


def emit(n: int, **attributes: Any) -> None:
    for i in range(n):
        spangraph.event("tick", i=i, **attributes)


def seqs(messages: list[dict[str, Any]]) -> list[int]:
    return [m["seq"] for m in messages]


async def sse_events(response: httpx.Response) -> AsyncIterator[dict[str, str]]:
    """Server-sent events as dicts of their fields (``comment`` for ``:`` lines)."""
    event: dict[str, str] = {}
    async for line in response.aiter_lines():
        if not line:
            if event:
                yield event
            event = {}
        elif line.startswith(":"):
            yield {"comment": line[1:].strip()}
        else:
            name, _, value = line.partition(":")
            event[name] = value[1:] if value.startswith(" ") else value


def new_id() -> str:
    return f"wf-{uuid.uuid4().hex[:12]}"


# -- pieces -------------------------------------------------------------------------------


def test_seq_and_workflow_reads_spangraph_messages_and_any_json() -> None:
    ours = '{"type":"tick","seq":42,"workflow_id":"w-1","project_id":"p"}'
    assert seq_and_workflow(ours) == (42, "w-1")
    assert seq_and_workflow('{"seq": 7, "type": "x", "workflow_id": "w\\"q"}') == (7, 'w"q')
    assert seq_and_workflow('{"type":"x","seq":true,"workflow_id":"w"}') is None
    assert seq_and_workflow("not json") is None


def test_subscriber_drops_repeats_and_reports_gaps() -> None:
    sub = Subscriber("c", max_queue=10, workflow_id="w", last_sent=2)
    batch = Batch(['{"seq":3}', '{"seq":4}'], [3, 4])
    assert sub.select([batch]) == [batch]  # follows on: the shared batch as is
    cut = sub.select([Batch(['{"seq":4}', '{"seq":5}'], [4, 5]), HEARTBEAT])
    assert [b.msgs for b in cut] == [['{"seq":5}']]  # the repeat and the heartbeat go
    gap, after = sub.select([Batch(['{"seq":9}'], [9])])
    assert "events 6..8" in gap.msgs[0] and after.seqs == [9] and sub.last_sent == 9
    assert sub.select([HEARTBEAT]) == [HEARTBEAT]
    assert sub.push(Batch(["{}"] * 6)) and not sub.push(Batch(["{}"] * 5))
    one = Batch(['{"seq":9}', '{"seq":10}'], [9, 10])  # one batch that overlaps: still cut
    assert [b.seqs for b in sub.select([one])] == [[10]] and sub.last_sent == 10
    project = Batch(['{"seq":1}'])  # a project channel's batch goes whole
    assert Subscriber("p", max_queue=10).select([project]) == [project]


async def test_subscriber_take_waits_for_push_and_end() -> None:
    sub = Subscriber("c", max_queue=10, workflow_id="w", last_sent=0)
    first = Batch(['{"seq":1}'], [1])
    waiting = asyncio.create_task(sub.take())
    await asyncio.sleep(0.01)
    assert not waiting.done()  # nothing queued yet
    assert sub.push(first)
    assert await asyncio.wait_for(waiting, 1) == [first]
    cancelled = asyncio.create_task(sub.take())  # a take given up while waiting
    await asyncio.sleep(0.01)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    second, third = Batch(['{"seq":2}'], [2]), Batch(['{"seq":3}'], [3])
    assert sub.push(second) and sub.push(third)
    assert await asyncio.wait_for(sub.take(), 1) == [second, third]  # all that was queued
    ending = asyncio.create_task(sub.take())
    await asyncio.sleep(0.01)
    sub.end(4008, "too slow")
    assert await asyncio.wait_for(ending, 1) is None
    assert sub.gone.is_set() and sub.close_code == 4008


def test_each_client_gets_its_heartbeat_after_its_own_silence() -> None:
    """Heartbeats are counted for each client from what it was last sent (in ticks of a
    fifth of ``heartbeat``), not on one clock shared by all clients."""
    hub = StreamHub(None, heartbeat=15)
    channel = Channel("c", "w")
    quiet, busy = (Subscriber("c", max_queue=10, workflow_id="w") for _ in range(2))
    channel.subs.update((quiet, busy))
    hub._channels["c"] = channel
    beats: dict[Subscriber, list[int]] = {quiet: [], busy: []}
    for tick in range(1, 16):
        if tick == 3:  # a message between ticks 2 and 3: busy's count starts again
            assert busy.push(Batch(['{"seq":1}'], [1]))
        hub._tick()
        for sub, got in beats.items():
            queued, sub._queue, sub._pending = sub._queue, [], 0
            got.extend(tick for batch in queued if batch is HEARTBEAT)
    # a new client was just sent `subscribed`: its first tick only starts the count (its
    # heartbeat came a tick early: 12-15 s of silence instead of 15-18)
    assert beats[quiet] == [6, 11]
    assert beats[busy] == [8, 13]


# -- WebSocket ----------------------------------------------------------------------------


async def test_workflow_and_project_clients_get_every_message_in_order(serve, sdk, r) -> None:
    live = serve()
    project, wid = sdk(), new_id()
    async with (
        live.ws(f"/api/stream/workflows/{wid}") as w,
        live.ws(f"/api/stream/projects/{project}") as p,
    ):
        assert (await subscribed(w))["since"] == 0
        assert (await subscribed(p))["since"] is None
        with spangraph.workflow("w", workflow_id=wid):
            emit(60)
        last = await flush_and_last(r, wid)
        got_w = await events_until(w, wid, last)
        got_p = await events_until(p, wid, last)
    assert last >= 60
    assert seqs(got_w) == list(range(1, last + 1)) == seqs(got_p)
    assert got_w == got_p
    assert [m["attributes"]["i"] for m in got_w if m["type"] == "tick"] == list(range(60))


async def test_ids_with_slashes_stream_over_ws_and_sse(serve, embedded_server, tmp_path, r) -> None:
    """Workflow and project ids may hold ``/``: raw or percent-encoded, on every stream
    route; an id ending in ``/sse`` is still a WebSocket run, and ``…/sse`` of it is SSE."""
    from urllib.parse import quote

    live = serve()
    project = f"team/{uuid.uuid4().hex[:8]}"
    spangraph.configure(
        tracer_provider=TracerProvider(),
        graph_url=embedded_server.graph_url,
        redis_url=embedded_server.redis_url,
        project=project,
        home=str(tmp_path),
        graph=False,
    )
    try:
        wid = f"jobs/{uuid.uuid4().hex[:8]}/sse"
        encoded = quote(wid, safe="")
        async with (
            live.ws(f"/api/stream/workflows/{wid}") as raw,
            live.ws(f"/api/stream/workflows/{encoded}") as enc,
            live.ws(f"/api/stream/projects/{project}") as proj,
            live.http() as http,
            http.stream("GET", f"/api/stream/workflows/{wid}/sse?since=0") as response,
        ):
            for ws in (raw, enc):
                assert (await subscribed(ws))["channel"] == workflow_channel(wid)
            assert (await subscribed(proj))["channel"] == f"spangraph:project:{project}"
            assert response.status_code == 200
            events = sse_events(response)
            first = json.loads((await anext(events))["data"])
            assert first["channel"] == workflow_channel(wid)
            with spangraph.workflow("w", workflow_id=wid):
                emit(3)
            last = await flush_and_last(r, wid)
            for ws in (raw, enc, proj):
                got = await events_until(ws, wid, last)
                assert seqs(got) == list(range(1, last + 1))
                assert {m["workflow_id"] for m in got} == {wid}
            sse_seqs: list[int] = []
            async for event in events:
                if "id" in event:
                    sse_seqs.append(json.loads(event["data"])["seq"])
                    if sse_seqs[-1] == last:
                        break
            assert sse_seqs == list(range(1, last + 1))
    finally:
        spangraph.shutdown()


async def test_stream_routes_without_an_id(serve) -> None:
    live = serve()
    async with live.http() as http:
        answer = await http.get("/api/stream/workflows//sse")
    assert answer.status_code == 404 and "workflow or project id" in answer.json()["detail"]
    for path in ("/api/stream/workflows/", "/api/stream/projects/"):
        async with live.ws(path) as ws:
            with pytest.raises(ConnectionClosed):
                await frame(ws)
        assert ws.close_code == 1003 and "workflow or project id" in ws.close_reason


async def test_many_clients_share_one_redis_subscription(serve, sdk, r) -> None:
    live = serve()
    sdk()
    wid = new_id()
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(live.ws(f"/api/stream/workflows/{wid}"))
            for _ in range(20)
        ]
        for ws in clients:
            await subscribed(ws)
        assert r.pubsub_numsub(workflow_channel(wid)) == [(workflow_channel(wid).encode(), 1)]
        with spangraph.workflow("w", workflow_id=wid):
            emit(10)
        last = await flush_and_last(r, wid)
        for ws in clients:
            assert seqs(await events_until(ws, wid, last)) == list(range(1, last + 1))
    deadline = time.monotonic() + 5
    while r.pubsub_numsub(workflow_channel(wid))[0][1] != 0:
        assert time.monotonic() < deadline, "the hub kept the channel after its last client"
        await asyncio.sleep(0.05)
    assert live.hub.stats()["subscribers"] == 0


async def test_ws_since_replays_from_the_stream_then_goes_live(serve, sdk, r) -> None:
    live = serve()
    sdk()
    wid = new_id()
    with spangraph.workflow("w", workflow_id=wid):
        emit(10)
        before = await flush_and_last(r, wid)
        async with (
            live.ws(f"/api/stream/workflows/{wid}") as ws,
            live.ws(f"/api/stream/workflows/{wid}?since=7") as by_query,
        ):
            await ws.send(json.dumps({"since": 4}))
            assert (await subscribed(ws))["since"] == 4
            assert (await subscribed(by_query))["since"] == 7
            emit(5)
            last = await flush_and_last(r, wid)
            assert seqs(await events_until(ws, wid, last)) == list(range(5, last + 1))
            assert seqs(await events_until(by_query, wid, last)) == list(range(8, last + 1))
    assert last == before + 5


async def test_a_fast_run_does_not_overflow_a_client_choosing_since(serve, sdk, r) -> None:
    """While a WebSocket client may still send {"since": n}, a run publishing faster than
    its queue holds must not cut it off: it gets everything since it connected."""
    live = serve(max_queue=50, since_window=1.5)
    project, wid = sdk(), new_id()
    async with (
        live.ws(f"/api/stream/workflows/{wid}") as w,
        live.ws(f"/api/stream/projects/{project}") as p,
    ):
        got_p: list[dict[str, Any]] = []

        async def keep_reading() -> None:
            assert (await subscribed(p))["since"] is None
            while True:
                got_p.extend(m for m in await frame(p, 30) if m.get("workflow_id") == wid)

        reader = asyncio.create_task(keep_reading())
        with spangraph.workflow("w", workflow_id=wid):
            for _ in range(25):  # 500 messages, 10 times the queue, within the window
                emit(20)
                await asyncio.to_thread(spangraph.flush, 10)
        last = await flush_and_last(r, wid)
        # The run's seq when the service took the connection: 0, or a little more when
        # the service was slower to get to it than the run to publish.
        since = (await subscribed(w))["since"]
        assert last - since > 8 * 50  # the window saw many times the queue
        assert seqs(await events_until(w, wid, last)) == list(range(since + 1, last + 1))
        deadline = time.monotonic() + 15
        while (not got_p or got_p[-1]["seq"] < last) and not reader.done():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        reader.cancel()
    first = got_p[0]["seq"]  # the project's clients start live (no replay): 1 or a little more
    assert last - first > 8 * 50
    assert seqs(got_p) == list(range(first, last + 1))
    assert live.hub.stats()["too_slow"] == 0


async def test_project_bad_first_message_closes_with_1003(serve) -> None:
    live = serve()
    async with live.ws("/api/stream/projects/p-bad") as ws:
        assert (await subscribed(ws))["since"] is None
        await ws.send('{"since": "3"}')
        with pytest.raises(ConnectionClosed):
            await frame(ws)
    assert ws.close_code == 1003 and "first message" in ws.close_reason


@pytest.mark.parametrize("query", ["since=%205", "since=5%20", "since=%2B5", "since=1&since=2"])
async def test_since_in_the_query_is_digits_given_once(serve, query: str) -> None:
    live = serve()
    wid = new_id()
    for path in (f"/api/stream/workflows/{wid}?{query}", f"/api/stream/projects/p?{query}"):
        async with live.ws(path) as ws:
            with pytest.raises(ConnectionClosed):
                await frame(ws)
        assert ws.close_code == 1003 and "since must be" in ws.close_reason
    async with live.http() as http:
        answer = await http.get(f"/api/stream/workflows/{wid}/sse?{query}")
    assert answer.status_code == 400 and "since must be" in answer.json()["detail"]


@pytest.mark.parametrize(
    ("first", "detail"),
    [
        ("not json", "first message"),
        ('{"since": -1}', "first"),
        ('{"snce": 3}', "first"),
        ('{"since": 1, "since": 3}', "first"),  # (before: taken as 3)
        ('[["since", 3]]', "first"),
        ('{"since": 3, "x": 1}', "first"),
    ],
)
async def test_bad_first_message_closes_with_1003(serve, first: str, detail: str) -> None:
    live = serve()
    async with live.ws(f"/api/stream/workflows/{new_id()}") as ws:
        await ws.send(first)
        with pytest.raises(ConnectionClosed):
            await frame(ws)
    assert ws.close_code == 1003 and detail in ws.close_reason


async def test_a_first_message_nested_past_the_recursion_limit_is_a_bad_one(serve) -> None:
    """json.loads raised RecursionError, which only ValueError was caught for: a
    traceback in the log and a connection dropped without its close code."""
    live = serve()
    async with live.ws(f"/api/stream/workflows/{new_id()}") as ws:
        await ws.send("[" * 3000)
        with pytest.raises(ConnectionClosed):
            await frame(ws)
    assert ws.close_code == 1003 and "first message" in ws.close_reason


@pytest.mark.parametrize("path", ["/api/stream/workflows/{wid}", "/api/stream/projects/{wid}"])
async def test_a_client_that_keeps_sending_is_closed(serve, path: str) -> None:
    """What a client sends after its first message is read and ignored: a client sending
    thousands a second held the event loop from every other client and request."""
    live = serve()
    async with live.ws(path.format(wid=new_id()) + "?since=0") as ws:
        await subscribed(ws)
        with pytest.raises(ConnectionClosed):
            for _ in range(200):
                await ws.send("x")
                await asyncio.sleep(0.001)
            while True:
                await frame(ws)
    assert ws.close_code == 1008 and "more than 10 messages in a second" in ws.close_reason


async def test_a_client_that_sends_now_and_then_stays(serve) -> None:
    live = serve()
    async with live.ws(f"/api/stream/projects/{new_id()}?since=0") as ws:
        await subscribed(ws)
        for _ in range(3):
            await ws.send("keepalive")
        notice = await frame(ws)
        assert notice[0]["type"] == "error" and "ignored" in notice[0]["detail"]
        await asyncio.sleep(1.1)
        for _ in range(8):
            await ws.send("keepalive")
        await asyncio.wait_for(await ws.ping(), 5)  # still served
        assert ws.close_code is None


async def test_project_channels_ignore_since_and_later_messages(serve, sdk, r) -> None:
    live = serve()
    project, wid = sdk(), new_id()
    async with live.ws(f"/api/stream/projects/{project}") as ws:
        await ws.send(json.dumps({"since": 3}))
        assert (await subscribed(ws))["since"] is None
        await ws.send(json.dumps({"since": 5}))
        notice = await frame(ws)
        assert notice[0]["type"] == "error" and "ignored" in notice[0]["detail"]
        with spangraph.workflow("w", workflow_id=wid):
            emit(3)
        last = await flush_and_last(r, wid)
        assert seqs(await events_until(ws, wid, last)) == list(range(1, last + 1))
    for path in (f"/api/stream/workflows/{wid}?since=x", f"/api/stream/projects/{project}?since=x"):
        async with live.ws(path) as bad:  # checked on both, though projects ignore it
            with pytest.raises(ConnectionClosed):
                await frame(bad)
        assert bad.close_code == 1003 and "since must be" in bad.close_reason


@pytest.mark.parametrize("since", [2**63, 2**64, 10**23, "9" * 5000])
async def test_since_beyond_the_largest_seq_is_refused(serve, since: int | str) -> None:
    """Redis counts seq in a signed 64-bit integer: a larger since is a bad value (1003,
    400), not a Redis error (1013, which clients would retry for ever)."""
    live = serve()
    wid = new_id()
    async with live.ws(f"/api/stream/workflows/{wid}?since={since}") as by_query:
        with pytest.raises(ConnectionClosed):
            await frame(by_query)
    assert by_query.close_code == 1003 and "since must be" in by_query.close_reason
    async with live.ws(f"/api/stream/workflows/{wid}") as by_message:
        await by_message.send(f'{{"since": {since}}}')
        with pytest.raises(ConnectionClosed):
            await frame(by_message)
    assert by_message.close_code == 1003 and "first message" in by_message.close_reason
    async with live.http() as http:
        sse = f"/api/stream/workflows/{wid}/sse"
        header = await http.get(sse, headers={"Last-Event-ID": str(since)})
        query = await http.get(sse, params={"since": str(since)})
    assert header.status_code == 400 and "Last-Event-ID must be" in header.json()["detail"]
    assert query.status_code == 400 and "since must be" in query.json()["detail"]
    largest = streams.MAX_SEQ
    async with live.ws(f"/api/stream/workflows/{wid}?since={largest}") as ws:
        assert (await subscribed(ws))["since"] == 0  # accepted; beyond this run's seq (0)


async def test_gap_in_a_trimmed_stream_is_reported(serve, sdk, r) -> None:
    live = serve()
    sdk()
    wid = new_id()
    with spangraph.workflow("w", workflow_id=wid):
        emit(10)
    last = await flush_and_last(r, wid)
    r.xtrim(stream_key(wid), maxlen=3, approximate=False)
    async with live.ws(f"/api/stream/workflows/{wid}?since=0") as ws:
        await subscribed(ws)
        first = await frame(ws)
    assert first[0]["type"] == "error" and f"events 1..{last - 3}" in first[0]["detail"]
    assert seqs(first[1:]) == list(range(last - 2, last + 1))


async def test_heartbeats_on_idle_streams(serve) -> None:
    live = serve(heartbeat=0.2)
    wid = new_id()
    async with live.ws(f"/api/stream/workflows/{wid}?since=0") as ws, live.http() as http:
        await subscribed(ws)
        assert await frame(ws) == [{"type": "heartbeat"}]
        async with http.stream("GET", f"/api/stream/workflows/{wid}/sse") as response:
            events = sse_events(response)
            assert json.loads((await anext(events))["data"])["type"] == "subscribed"
            assert await anext(events) == {"comment": "heartbeat"}


async def test_token_is_required_when_set(serve) -> None:
    live = serve(api_token="s3cret")
    wid = new_id()
    for path, headers in [
        (f"/api/stream/workflows/{wid}", {}),
        (f"/api/stream/workflows/{wid}?token=wrong", {}),
        (f"/api/stream/workflows/{wid}?token=s3cret&token=wrong", {}),  # which one? neither
        (f"/api/stream/workflows/{wid}?token=wrong&token=s3cret", {}),
        ("/api/stream/projects/p", {"Authorization": "Bearer wrong"}),
    ]:
        async with live.ws(path, additional_headers=headers) as ws:
            with pytest.raises(ConnectionClosed):
                await frame(ws)
        assert ws.close_code == 1008 and "token" in ws.close_reason
    async with live.ws(f"/api/stream/workflows/{wid}?token=s3cret&since=0") as ws:
        await subscribed(ws)
    async with live.ws(
        "/api/stream/projects/p", additional_headers={"Authorization": "Bearer s3cret"}
    ) as ws:
        await subscribed(ws)
    async with live.http() as http:
        sse = f"/api/stream/workflows/{wid}/sse"
        assert (await http.get(sse)).status_code == 401
        assert (await http.get(sse, headers={"Authorization": "Bearer no"})).status_code == 401
        async with http.stream("GET", sse, headers={"Authorization": "Bearer s3cret"}) as ok:
            assert ok.status_code == 200
        async with http.stream("GET", sse + "?token=s3cret") as ok:
            assert ok.status_code == 200


async def test_browser_pages_of_other_sites_are_refused(serve, sdk, r) -> None:
    """Browsers do not apply CORS to WebSockets: a page of any site could open one. The
    service's own pages and the CORS origins may; clients without Origin are not browsers."""
    live = serve(cors_origins=["https://ui.example"])
    project, wid = sdk(), new_id()
    path = f"/api/stream/projects/{project}"
    for origin in ("https://evil.example", f"http://127.0.0.1:{live.port + 1}", "null"):
        async with live.ws(path, origin=origin) as refused:
            with spangraph.workflow("w", workflow_id=wid):
                emit(1)
            await flush_and_last(r, wid)
            with pytest.raises(ConnectionClosed):
                await frame(refused)  # closed before anything was sent
        assert refused.close_code == 1008 and "Origin not allowed" in refused.close_reason
    async with (
        live.ws(path) as plain,
        live.ws(path, origin=f"http://127.0.0.1:{live.port}") as own,
        live.ws(path, origin="https://ui.example") as listed,
    ):
        for ws in (plain, own, listed):
            await subscribed(ws)
        with spangraph.workflow("w", workflow_id=wid):
            emit(2)
        last = await flush_and_last(r, wid)
        for ws in (plain, own, listed):
            assert (await events_until(ws, wid, last))[-1]["seq"] == last


async def test_live_events_off(serve) -> None:
    live = serve(redis_url="off")
    async with live.ws(f"/api/stream/workflows/{new_id()}") as ws:
        with pytest.raises(ConnectionClosed):
            await frame(ws)
    assert ws.close_code == 1011 and ws.close_reason.startswith("live events are off")
    async with live.http() as http:
        answer = await http.get(f"/api/stream/workflows/{new_id()}/sse")
    assert answer.status_code == 503 and "live events are off" in answer.json()["detail"]


def _send_buffer_max() -> int:
    """The most a TCP socket's send buffer grows to here (4 MB by Linux's default)."""
    try:
        return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, ValueError, IndexError):
        return 4 << 20


async def test_slow_client_is_cut_off_and_others_keep_up(serve, sdk, r) -> None:
    rounds = max(50, 2 * _send_buffer_max() // (20 * 8000) + 1)  # twice, 160 kB a round
    live = serve(max_queue=100)
    sdk()
    wid = new_id()
    path = f"/api/stream/workflows/{wid}"
    tight = socket.create_connection(("127.0.0.1", live.port))
    tight.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16_384)  # no autotuning to 32 MB
    async with live.ws(path, sock=tight, max_queue=1) as slow, live.ws(path) as fast:
        await subscribed(slow)
        await subscribed(fast)
        got: list[dict[str, Any]] = []

        async def keep_reading() -> None:
            while True:
                got.extend(m for m in await frame(fast, 30) if m.get("workflow_id") == wid)

        reader = asyncio.create_task(keep_reading())
        with spangraph.workflow("w", workflow_id=wid):
            for _ in range(rounds):  # more than the server's send buffer can hold
                emit(20, blob="x" * 8000)
                await asyncio.sleep(0.02)
        last = await flush_and_last(r, wid)
        deadline = time.monotonic() + 30
        while (not got or got[-1]["seq"] < last) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        reader.cancel()
        assert seqs(got) == list(range(1, last + 1))
        assert live.hub.stats()["too_slow"] == 1
        with pytest.raises(ConnectionClosed):
            while True:
                await frame(slow)
    assert slow.close_code == 4008 and "too slow" in slow.close_reason


# -- server-sent events -------------------------------------------------------------------


async def test_sse_resumes_after_last_event_id_then_goes_live(serve, sdk, r) -> None:
    live = serve()
    sdk()
    wid = new_id()
    with spangraph.workflow("w", workflow_id=wid):
        emit(10)
        await flush_and_last(r, wid)
        async with (
            live.http() as http,
            http.stream(
                "GET", f"/api/stream/workflows/{wid}/sse", headers={"Last-Event-ID": "6"}
            ) as response,
        ):
            assert response.headers["content-type"].startswith("text/event-stream")
            events = sse_events(response)
            first = json.loads((await anext(events))["data"])
            assert first == {"type": "subscribed", "channel": workflow_channel(wid), "since": 6}
            emit(5)
            last = await flush_and_last(r, wid)
            got: list[dict[str, Any]] = []
            async for event in events:
                if "id" in event:
                    data = json.loads(event["data"])
                    assert int(event["id"]) == data["seq"] and "event" not in event
                    got.append(data)
                    if data["seq"] == last:
                        break
    assert seqs(got) == list(range(7, last + 1))


@pytest.mark.parametrize("query", ["since=-1", "since=1&since=2", "since=x"])
async def test_sse_bad_since_is_400_also_beside_a_last_event_id(serve, query: str) -> None:
    """``?since=`` was not checked when ``Last-Event-ID`` was given (200), though the
    WebSocket routes refuse such values whatever else comes with them."""
    live = serve()
    async with live.http() as http:
        answer = await http.get(
            f"/api/stream/workflows/{new_id()}/sse?{query}", headers={"Last-Event-ID": "3"}
        )
    assert answer.status_code == 400, answer.text


@pytest.mark.parametrize("header", [b"abc", b"-1", b"1.5", "²".encode("latin-1")])
async def test_sse_bad_last_event_id_is_400(serve, header: bytes) -> None:
    live = serve()
    async with live.http() as http:
        answer = await http.get(
            f"/api/stream/workflows/{new_id()}/sse", headers={"Last-Event-ID": header}
        )
    assert answer.status_code == 400
    assert "Last-Event-ID must be the last seq you saw" in answer.json()["detail"]


# -- Redis going away ---------------------------------------------------------------------


async def test_since_beyond_the_runs_counter_starts_from_the_counter(serve, sdk, r) -> None:
    """A client that saw seqs the run no longer has (Redis lost its data and numbers the
    run from 1 again) is told the lower since, and gets what is published from then on;
    before, every new message was dropped as already seen."""
    live = serve()
    sdk()
    wid = new_id()
    with spangraph.workflow("w", workflow_id=wid):
        emit(3)
        now = await flush_and_last(r, wid)
        async with (
            live.ws(f"/api/stream/workflows/{wid}?since={now + 1000}") as ws,
            live.http() as http,
            http.stream(
                "GET", f"/api/stream/workflows/{wid}/sse", headers={"Last-Event-ID": "999999"}
            ) as response,
        ):
            sse = sse_events(response)
            assert json.loads((await anext(sse))["data"])["since"] == now
            assert (await subscribed(ws))["since"] == now
            emit(2)
            last = await flush_and_last(r, wid)
            assert seqs(await events_until(ws, wid, last)) == list(range(now + 1, last + 1))
            ids = [int((await anext(sse))["id"]) for _ in range(last - now)]
            assert ids == list(range(now + 1, last + 1))


@pytest.mark.parametrize("kind", ["workflows", "projects"])
async def test_a_runs_counter_that_went_back_is_followed_after_a_reconnect(
    serve, sdk, r, kind: str
) -> None:
    """The hub reconnects to a Redis whose counter of a run went back (it lost its data):
    the run's clients get ``resumed`` (on its own channel with the ``since`` it went back
    to), then the new messages. Before, a project channel sent none of them: each was
    dropped as one it had seen."""
    live = serve(reconnect_min=0.1, reconnect_max=0.2)
    project, wid = sdk(), new_id()
    own = kind == "workflows"
    path = f"/api/stream/workflows/{wid}?since=0" if own else f"/api/stream/projects/{project}"
    async with live.ws(path) as ws:
        await subscribed(ws)
        with spangraph.workflow("w", workflow_id=wid):
            emit(3)
            before = await flush_and_last(r, wid)
            await events_until(ws, wid, before)
            r.delete(stream_key(wid), seq_key(wid))  # as a Redis that lost its data
            r.client_kill_filter(_type="pubsub")  # the hub's connection drops
            controls: list[dict[str, Any]] = []
            while not any(m["type"] == "resumed" and (m.get("since") == 0 or not own)
                          for m in controls):  # fmt: skip
                controls += [m for m in await frame(ws) if "seq" not in m]
            assert [m["type"] for m in controls][-1] == "resumed"
            emit(2)
            last = await flush_and_last(r, wid)
            assert last < before
            # read before the run ends: its end's messages could share the last frame
            got = await events_until(ws, wid, last)
    assert seqs(got) == list(range(1, last + 1))


@pytest.mark.parametrize("kind", ["workflows", "projects"])
async def test_messages_read_before_the_connection_dropped_go_out_before_its_error(
    serve, sdk, r, kind: str
) -> None:
    """Messages the hub had read but not yet sent (held for the batch window) when its
    connection dropped go out before the ``error``, in the old numbering. Before, they
    went out after ``resumed``: as new messages of a run whose counter went back, and the
    run's real new messages were then dropped as repeats of them."""
    live = serve(reconnect_min=0.1, reconnect_max=0.2, batch_window=3.0)
    project, wid = sdk(), new_id()
    path = (
        f"/api/stream/workflows/{wid}" if kind == "workflows" else f"/api/stream/projects/{project}"
    )
    async with live.ws(path) as ws:
        await subscribed(ws)
        with spangraph.workflow("w", workflow_id=wid):
            await asyncio.to_thread(spangraph.flush, 10)
            first = seqs(await events_until(ws, wid, 1))  # out at once, the rest wait
            emit(3, when="before")
            before = await flush_and_last(r, wid)
            r.delete(stream_key(wid), seq_key(wid))  # as a Redis that lost its data
            r.client_kill_filter(_type="pubsub")  # within the batch window
            order: list[Any] = []
            while "resumed" not in order:
                order += [m.get("seq", m["type"]) for m in await frame(ws)
                          if m.get("workflow_id") in (wid, None)]  # fmt: skip
            emit(2, when="after")
            last = await flush_and_last(r, wid)
            got = await events_until(ws, wid, last)
    cut = order.index("error")
    assert first + order[:cut] == list(range(1, before + 1)) and cut > 0
    assert order[-1] == "resumed" and not any(isinstance(x, int) for x in order[cut:])
    assert [(m["seq"], m["attributes"]["when"]) for m in got] == [(1, "after"), (2, "after")]


@pytest.mark.slow
async def test_redis_restart_clients_get_an_error_then_everything(
    serve, sdk, private_servers
) -> None:
    server, info = private_servers.start("live")
    # Reconnect attempts 2 s apart: events published right after the restart reach the
    # stream before the hub is back, so they must come from the refill.
    live = serve(redis_url=info.redis_url, reconnect_min=2.0, reconnect_max=2.0)
    sdk(info.redis_url)
    wid = new_id()
    client = redis.Redis.from_url(info.redis_url)
    try:
        async with (
            live.ws(f"/api/stream/workflows/{wid}") as ws,
            live.http() as http,
            http.stream("GET", f"/api/stream/workflows/{wid}/sse") as response,
        ):
            sse = sse_events(response)
            await anext(sse)
            await subscribed(ws)
            with spangraph.workflow("w", workflow_id=wid):
                emit(5)
                first = await flush_and_last(client, wid)
                before = await events_until(ws, wid, first)
                client.close()
                await asyncio.to_thread(server.stop)
                controls = await frame(ws)
                assert controls[0]["type"] == "error", controls
                await asyncio.to_thread(private_servers.restart_on_port, server, info.port)
                client = redis.Redis.from_url(info.redis_url)
                emit(5)
                middle = await flush_and_last(client, wid)
                assert not live.hub.connected  # still waiting to reconnect
                emit(5)
            last = await flush_and_last(client, wid)
            rest = await events_until(ws, wid, last)
            got_sse: list[int | str] = []
            async for event in sse:
                if "id" in event:
                    got_sse.append(int(event["id"]))
                elif "data" in event:
                    got_sse.append(json.loads(event["data"])["type"])
                if last in got_sse and "resumed" in got_sse:
                    break
    finally:
        client.close()
    assert middle > first
    assert seqs(before + rest) == list(range(1, last + 1))
    assert [x for x in got_sse if isinstance(x, int)] == list(range(1, last + 1))
    assert [x for x in got_sse if isinstance(x, str)] == ["error", "resumed"]
    assert got_sse.index("error") == first  # "resumed" comes once the refill is sent
    assert live.hub.stats()["refilled"] >= middle - first


def test_channels_with_fewer_clients_are_written_to_first() -> None:
    """A batch that reaches two channels is queued to the clients of the smaller one
    first (their tasks then write first): a project channel with a few watchers does not
    wait behind a round of writes to hundreds of clients of the run's channel."""
    pushed: list[str] = []

    class Recording(Subscriber):
        def push(self, batch: Batch) -> bool:
            pushed.append(self.channel)
            return super().push(batch)

    hub = StreamHub(None)
    run, project = "spangraph:workflow:w", "spangraph:project:p"
    channels = {run: Channel(run, "w"), project: Channel(project, None)}
    channels[run].subs.update(Recording(run, max_queue=10, workflow_id="w") for _ in range(5))
    channels[project].subs.update(Recording(project, max_queue=10) for _ in range(2))
    hub._channels.update(channels)
    text = b'{"type":"tick","seq":1,"workflow_id":"w","project_id":"p"}'
    for name in (run, project):  # Redis publishes on the run's channel first
        hub._handle({"type": "message", "channel": name.encode(), "data": text})
    hub._flush()
    assert pushed == [project] * 2 + [run] * 5


async def test_hub_connects_without_warnings(embedded_server: ServerInfo) -> None:
    """The hub's asyncio clients get the asyncio Retry (redis-py warns on a sync one)."""
    import warnings

    hub = StreamHub(embedded_server.redis_url)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        await hub.start()
        try:
            assert await hub.current_seq("no-such-run") == 0
        finally:
            await hub.stop()
    # a finalizer of other garbage may warn meanwhile, on any thread: not the hub's
    said = [str(w.message) for w in caught if not issubclass(w.category, ResourceWarning)]
    assert said == []


async def test_a_failed_or_abandoned_attach_leaves_no_channel(
    embedded_server: ServerInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A subscribe that raises something else than a Redis error (redis-py reconnecting a
    Pub/Sub connection that just died, while the reader waits on it, raises RuntimeError),
    or a client that goes away while Redis confirms: the channel goes with its client, and
    is not subscribed again at every reconnect for nobody."""
    hub = StreamHub(embedded_server.redis_url, timeout=0.5)
    await hub.start()
    try:
        deadline = time.monotonic() + 30
        while hub._pubsub is None:
            assert time.monotonic() < deadline, "the hub did not connect"
            await asyncio.sleep(0.02)
        pubsub = hub._pubsub

        async def broken(*names: str) -> None:
            raise RuntimeError("read() called while another coroutine is already waiting")

        with monkeypatch.context() as patched:
            patched.setattr(pubsub, "subscribe", broken)
            sub = Subscriber("spangraph:workflow:w-broken", max_queue=10, workflow_id="w-broken")
            with pytest.raises(LiveUnavailableError):
                await hub.attach(sub)  # not confirmed: told so, and nothing is left
        assert hub._channels == {}

        async def slow(*names: str) -> None:
            await asyncio.sleep(10)

        with monkeypatch.context() as patched:
            patched.setattr(pubsub, "subscribe", slow)
            sub = Subscriber("spangraph:workflow:w-gone", max_queue=10, workflow_id="w-gone")
            attaching = asyncio.ensure_future(hub.attach(sub))
            await asyncio.sleep(0.05)
            attaching.cancel()  # the client went away meanwhile
            with pytest.raises(asyncio.CancelledError):
                await attaching
        assert hub._channels == {}
        # and the hub still works
        hub.timeout = 30.0  # (a loaded machine may take a while to confirm)
        ok = Subscriber("spangraph:workflow:w-ok", max_queue=10, workflow_id="w-ok")
        await hub.attach(ok)
        assert list(hub._channels) == ["spangraph:workflow:w-ok"]
        hub.detach(ok)
    finally:
        await hub.stop()


async def test_a_reconnect_resubscribes_thousands_of_channels(
    embedded_server: ServerInfo,
) -> None:
    """After Redis dropped the hub's Pub/Sub connection, every channel is subscribed again
    and confirmed in one attempt (the wait for the confirmations once went over every
    channel at each confirmation: with 16 000 channels, each attempt timed out)."""
    hub = StreamHub(embedded_server.redis_url, timeout=10.0, reconnect_max=0.3)
    await hub.start()
    r = redis.Redis.from_url(embedded_server.redis_url)
    deadline = time.monotonic() + 30
    while not hub.connected:
        assert time.monotonic() < deadline, "the hub did not connect"
        await asyncio.sleep(0.02)
    subs = [
        Subscriber(f"spangraph:workflow:w-many-{i}", max_queue=10, workflow_id=f"w-many-{i}")
        for i in range(5_000)
    ]
    try:
        for i in range(0, len(subs), 500):
            await asyncio.gather(*(hub.attach(s) for s in subs[i : i + 500]))
        outages = hub.stats()["outages"]
        r.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        deadline = time.monotonic() + 60
        while hub.stats()["outages"] == outages or not hub.connected:
            assert time.monotonic() < deadline, hub.stats()
            await asyncio.sleep(0.05)
        sample = [s.channel for s in subs[::500]]
        while r.execute_command("PUBSUB", "NUMSUB", *sample)[1::2] != [1] * len(sample):
            assert time.monotonic() < deadline, "the channels were not subscribed again"
            await asyncio.sleep(0.05)
        assert hub.stats()["outages"] == outages + 1  # back in one attempt
        assert r.execute_command("PUBSUB", "NUMPAT") == 0
    finally:
        for s in subs:
            hub.detach(s)
        r.close()
        await hub.stop()


# -- stopping -----------------------------------------------------------------------------


async def test_hub_stops_when_its_reader_loses_the_cancellation(
    embedded_server: ServerInfo,
) -> None:
    """A cancellation that meets a read's own timeout can be lost inside the Redis client
    (the read returns as if it timed out): the reader still stops, on the hub's stopping
    flag, and ``stop()`` returns promptly."""
    hub = StreamHub(embedded_server.redis_url, timeout=2.0, ping_interval=0.2)
    swallowed: list[int] = []
    swallow = True
    make_pubsub = None

    def pubsub() -> Any:
        ps = make_pubsub()
        read = ps.get_message

        async def get_message(*args: Any, **kwargs: Any) -> Any:
            try:
                return await read(*args, **kwargs)
            except asyncio.CancelledError:
                if not swallow:
                    raise
                swallowed.append(1)
                return None

        ps.get_message = get_message
        return ps

    await hub.start()  # the reader runs from the next await on: patch its Pub/Sub first
    make_pubsub, hub._listener.pubsub = hub._listener.pubsub, pubsub
    deadline = time.monotonic() + 10
    while not hub.connected:
        assert time.monotonic() < deadline, "the hub did not connect"
        await asyncio.sleep(0.02)
    started = time.monotonic()
    stopping = asyncio.create_task(hub.stop())
    done, _ = await asyncio.wait([stopping], timeout=5)
    try:
        assert done, "stop() hung: the reader kept reading"
        assert time.monotonic() - started < 4.0  # the wait above allows 5
        assert swallowed, "the test did not make the reader lose a cancellation"
        assert not hub._tasks
    finally:
        swallow = False
        for task in list(hub._tasks):
            task.cancel()
        await asyncio.wait([stopping], timeout=5)


def test_serve_on_a_port_in_use_exits_with_a_clear_message(
    embedded_server: ServerInfo, tmp_path
) -> None:
    """``spangraph serve`` on a taken port shuts down and exits non-zero at once, saying
    the port is in use (it hung in the app's shutdown)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).with_name("spangraph")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "spangraph.cli"]
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("SPANGRAPH_", "NEO4J_", "OTEL_"))
    }
    env.update(
        SPANGRAPH_HOME=str(tmp_path),
        SPANGRAPH_GRAPH_URL=embedded_server.graph_url,
        SPANGRAPH_REDIS_URL=embedded_server.redis_url,
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        proc = subprocess.run(
            [*command, "serve", "--port", str(port)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    took = time.monotonic() - started
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert f"cannot listen on 127.0.0.1:{port}: the port {port} is already in use" in output
    assert "choose another port with --port" in output
    assert "Application shutdown complete" in output
    assert took < 30, output


@pytest.mark.slow
async def test_serve_ends_open_streams_at_once_when_told_to_stop(
    start_serve: Any, embedded_server: ServerInfo, tmp_path: Any
) -> None:
    """Before, open live streams held `spangraph serve` for its whole 5 s grace period
    after Ctrl-C; then the SSE response was cancelled with a traceback, and WebSockets
    were closed 1012 where the docs say 1001."""
    import signal

    service = start_serve(
        SPANGRAPH_HOME=str(tmp_path / "home"),
        SPANGRAPH_GRAPH_URL=embedded_server.graph_url,
        SPANGRAPH_REDIS_URL=embedded_server.redis_url,
    )
    wid = f"wf-{uuid.uuid4().hex[:12]}"
    async with (
        httpx.AsyncClient(base_url=service.url, timeout=httpx.Timeout(30)) as http,
        connect(f"ws://127.0.0.1:{service.port}/api/stream/workflows/{wid}") as ws,
        http.stream("GET", f"/api/stream/workflows/{wid}/sse") as sse,
    ):
        lines = sse.aiter_lines()
        assert (await frame(ws))[0]["type"] == "subscribed"
        async with asyncio.timeout(10):
            while "subscribed" not in await anext(lines):
                pass
        started = time.monotonic()
        service.proc.send_signal(signal.SIGINT)
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(10):
                while True:
                    await ws.recv()
        took = time.monotonic() - started  # to the close: not the interpreter's exit
        rest = []
        with contextlib.suppress(httpx.HTTPError):
            async with asyncio.timeout(10):
                rest = [line async for line in lines]
        assert await asyncio.to_thread(service.proc.wait, 20) == 0
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    assert any("shutting down" in line for line in rest), rest  # the SSE error event
    output = service.output()
    assert "Traceback" not in output and "graceful shutdown exceeded" not in output, output
    assert took < 4.5, output  # under the 5 s grace period it used to take in full


def test_an_sse_data_line_ends_at_every_line_end_sse_knows() -> None:
    """A lone CR ends a line in SSE: a message from the stream holding one (written into
    Redis by another program) made the rest of the line a field of its own (an id, an
    event name)."""
    from spangraph.server._subscriber import sse_event

    msg = '{"type":"x",\r"a":1}\rid: 999\revent: pwned\r\n"b":2'
    event = sse_event(7, msg)
    lines = event.split("\n")
    assert lines[0] == "id: 7"
    assert all(line.startswith("data: ") for line in lines[1:-2])
    assert "\r" not in event and lines[-2:] == ["", ""]
