"""The deadline on request headers of ``spangraph serve``'s HTTP protocol: real uvicorn
servers (h11 and httptools) on free ports, raw sockets as clients. The deadline is made
short here; one test checks ``spangraph serve`` itself at its real one."""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from spangraph.server import _protocol
from spangraph.server._protocol import (
    HEADER_TIMEOUT,
    HeaderDeadline,
    SendDeadline,
    WebSocketProtocol,
)

SHORT = 0.6
BIG = 8 * 1024 * 1024


async def hello(request: Any) -> PlainTextResponse:
    return PlainTextResponse("hello")


async def slow_stream(request: Any) -> StreamingResponse:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(6):  # 1.8 s: three deadlines
            yield b"tick\n"
            await asyncio.sleep(0.3)

    return StreamingResponse(chunks(), media_type="text/plain")


async def endless(request: Any) -> StreamingResponse:
    async def chunks() -> AsyncIterator[bytes]:
        while True:
            yield b"x" * 65536
            # (once the client is gone, uvicorn's send returns at once: without a wait
            # here the loop would never let the disconnect be noticed, and spin for good)
            await asyncio.sleep(0.001)

    return StreamingResponse(chunks(), media_type="text/plain")


async def big(request: Any) -> Response:
    return Response(b"y" * BIG, media_type="application/octet-stream")  # written at once


async def refuses_early(request: Any) -> PlainTextResponse:
    return PlainTextResponse("no", status_code=401)  # before reading the body


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    while True:
        await websocket.send_text(await websocket.receive_text())


APP = Starlette(
    routes=[
        Route("/", hello),
        Route("/stream", slow_stream),
        Route("/endless", endless),
        Route("/big", big),
        Route("/early", refuses_early, methods=["POST"]),
        WebSocketRoute("/ws", echo),
    ]
)


@pytest.fixture(params=[H11Protocol, HttpToolsProtocol], ids=["h11", "httptools"])
def port(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    monkeypatch.setattr(_protocol, "HEADER_TIMEOUT", SHORT)
    monkeypatch.setattr(_protocol, "SEND_TIMEOUT", SHORT)
    protocol = type("Protocol", (HeaderDeadline, SendDeadline, request.param), {})
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    config = uvicorn.Config(
        APP, host="127.0.0.1", port=free, http=protocol, ws=WebSocketProtocol, log_level="error"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    yield free
    server.should_exit = True
    thread.join(10)
    assert not thread.is_alive(), "uvicorn did not stop"  # (a thread left would run on)


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def closed_after(sock: socket.socket) -> float:
    """Seconds until the server closes ``sock`` (reading and dropping what it sends)."""
    start = time.monotonic()
    while sock.recv(65536):
        pass
    return time.monotonic() - start


def read_answer(sock: socket.socket) -> bytes:
    """One whole answer with a Content-Length body."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def test_a_connection_that_never_sends_a_request_is_closed(port: int) -> None:
    with connect(port) as sock:
        assert SHORT * 0.8 < closed_after(sock) < SHORT + 5


def test_headers_sent_a_byte_at_a_time_are_closed_at_the_deadline(port: int) -> None:
    """Each byte stopped uvicorn's own keep-alive timer; the deadline runs on."""
    request = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200  # 10 s at this pace
    with connect(port) as sock:
        start = time.monotonic()
        for byte in request:
            readable, _, _ = select.select([sock], [], [], 0.05)
            if readable and sock.recv(1) == b"":
                break  # the server closed it
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
        else:
            pytest.fail("the headers were still read after 10 s")
        assert time.monotonic() - start < SHORT + 5


def test_a_request_whose_headers_come_in_time_is_answered(port: int) -> None:
    with connect(port) as sock:
        for part in (b"GET / HTTP/1.1\r\n", b"Host: x\r\n", b"\r\n"):
            sock.sendall(part)
            time.sleep(SHORT / 8)  # the last part comes at SHORT / 4: room for a busy machine
        assert read_answer(sock).endswith(b"hello")


def test_long_answers_and_the_next_request_on_the_connection(port: int) -> None:
    """An answer that lasts three deadlines is not cut; after it, the next request has
    a deadline of its own."""
    with connect(port) as sock:
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while not data.endswith(b"0\r\n\r\n"):  # the chunked body's end
            chunk = sock.recv(65536)
            assert chunk, "the answer was cut"
            data += chunk
        assert data.count(b"tick") == 6
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # kept alive: a second request
        assert read_answer(sock).endswith(b"hello")
        sock.sendall(b"GET / HTTP/1.1\r\nHost")  # a third that never ends
        assert closed_after(sock) < SHORT + 5


def test_a_client_that_stops_reading_is_dropped(port: int) -> None:
    """It kept its socket, descriptor and buffers for as long as it liked, even once the
    service had closed it (a closed connection waits for its buffers to drain)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", port))
        sock.sendall(b"GET /endless HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(SHORT * 4)  # reads nothing: the service's buffers fill, then it waits
        received, deadline = 0, time.monotonic() + 8
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                received += len(chunk)
                assert time.monotonic() < deadline, f"still sending after {received} bytes"
    assert received < 64 * 1024 * 1024  # what the buffers held, not an endless answer


def test_a_client_that_reads_slowly_gets_the_whole_answer(port: int) -> None:
    """Only a client that takes nothing is dropped: one reading an answer written at
    once over a slow link was reset (its transport stayed paused while it read)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", port))
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        received = 0
        while received < BIG:  # at most ~4 MB a second: the answer takes several SHORTs
            chunk = sock.recv(65536)
            assert chunk, f"cut after {received} bytes"
            received += len(chunk)
            time.sleep(0.002)
    assert received >= BIG


def test_an_upload_answered_early_may_finish_before_its_answer_is_read(port: int) -> None:
    """An answer sent before the body was read (a 401, a 415) started the header
    deadline while the upload still came: the connection was closed under the client,
    which never read its answer."""
    with connect(port) as sock:
        sock.sendall(b"POST /early HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n\r\n")
        for _ in range(4):  # the body over 4 x SHORT: past the header deadline
            time.sleep(SHORT)
            sock.sendall(b"b" * 10)
        assert raw_status(sock) == b"401"


def raw_status(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "closed without an answer"
        data += chunk
    return data.split(b" ", 2)[1]


def test_a_websocket_is_not_timed_and_may_ping(port: int) -> None:
    async def talk() -> None:
        from websockets.asyncio.client import connect as ws_connect

        async with ws_connect(f"ws://127.0.0.1:{port}/ws", compression=None) as ws:
            await asyncio.sleep(SHORT * 3)
            for _ in range(5):
                await asyncio.wait_for(await ws.ping(), 5)
            await ws.send("still here")
            assert await asyncio.wait_for(ws.recv(), 5) == "still here"

    asyncio.run(talk())


def test_a_websocket_ping_flood_is_dropped(port: int) -> None:
    """uvicorn answered every ping at once: a flood held the event loop (every other
    request waited seconds) and, with the answers unread, grew memory without bound."""

    async def flood() -> None:
        from websockets.asyncio.client import connect as ws_connect
        from websockets.exceptions import ConnectionClosed

        async with ws_connect(f"ws://127.0.0.1:{port}/ws", compression=None) as ws:
            with pytest.raises(ConnectionClosed):
                for i in range(1000):
                    await ws.ping(str(i))
                    await asyncio.sleep(0)
                await asyncio.wait_for(ws.recv(), 5)

    asyncio.run(flood())


def test_spangraph_serve_runs_these_protocols(
    graph_url: str, embedded_server: Any, tmp_path: Any, start_serve: Any
) -> None:
    service = start_serve(
        SPANGRAPH_HOME=str(tmp_path / "home"),
        SPANGRAPH_GRAPH_URL=graph_url,
        SPANGRAPH_REDIS_URL=embedded_server.redis_url,
    )
    with socket.create_connection(("127.0.0.1", service.port), timeout=HEADER_TIMEOUT + 20) as s:
        assert HEADER_TIMEOUT * 0.8 < closed_after(s) < HEADER_TIMEOUT + 15

    async def big_message() -> None:  # the most a client sends is {"since": n}
        from websockets.asyncio.client import connect as ws_connect
        from websockets.exceptions import ConnectionClosed

        url = f"ws://127.0.0.1:{service.port}/api/stream/projects/p?since=0"
        async with ws_connect(url, compression=None) as ws:
            await ws.recv()  # subscribed
            await ws.send("x" * 5000)
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
        assert ws.close_code == 1009  # message too big

    asyncio.run(big_message())
