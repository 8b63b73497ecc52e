"""The protocols ``spangraph serve`` runs: uvicorn's own, with the time limits and caps a
service reachable by anyone needs.

- *Request headers* (:class:`HeaderDeadline`). uvicorn times a connection out only
  between requests (its keep-alive timeout), and that timer stops at the first byte of
  the next request: a connection that never sends a request, or sends its headers a byte
  at a time, stays open for good, and a few hundred of them take every file descriptor
  the process has. Here each request's headers must be complete within
  :data:`HEADER_TIMEOUT` seconds of the connection opening, or of the answer to its
  previous request.
- *Sending* (:class:`SendDeadline`). A client that stops reading leaves what is sent to
  it in the kernel's buffers, and a connection closed meanwhile waits for them to drain:
  for ever, if the client never reads again (a live-stream client cut off as too slow
  kept its socket, its descriptor and megabytes of buffers). A connection that takes
  nothing for :data:`SEND_TIMEOUT` seconds while there is something to send is dropped
  (one that takes some, however slowly, is not).
- *Pings* (:class:`PingLimit`). uvicorn answers every WebSocket ping at once, whether or
  not the client reads the answers: a ping flood held the event loop (every other
  request waited seconds) and, unread, grew memory without bound. More than
  :data:`PINGS_PER_SECOND` a second, or a ping while :data:`MAX_UNSENT` bytes wait to be
  sent, drops the connection.

Bodies and answers as such are not timed (live streams last as long as their run).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import socket
import struct
import termios
from typing import Any

import h11
from uvicorn.protocols.http.auto import AutoHTTPProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

_log = logging.getLogger("spangraph.server")

HEADER_TIMEOUT = 10.0
"""Seconds a connection has to send a request's headers (as nginx's
``client_header_timeout``, shorter)."""
BODY_TIMEOUT = 60.0
"""Seconds the rest of a request body may take to arrive after the service answered
before reading it (the client reads the answer only once its upload is done)."""
SEND_TIMEOUT = 30.0
"""Seconds a connection may take nothing of what waits to be sent to it (as nginx's
``send_timeout``, shorter)."""
PINGS_PER_SECOND = 10
"""WebSocket pings a client may send in a second (clients ping every few seconds)."""
MAX_UNSENT = 1 << 20
"""Bytes waiting to be sent to a WebSocket client past which its pings are not answered:
the connection is dropped."""


class HeaderDeadline:
    """Mixed into one of uvicorn's HTTP protocols (h11 or httptools): closes a
    connection whose request headers are not complete in time."""

    # uvicorn's protocols set these
    cycle: Any
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport

    _deadline: asyncio.TimerHandle | None = None
    _previous: Any = None
    _armed_at = 0.0
    _message_done = True  # (httptools: the last request's body has come whole)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)  # type: ignore[misc]

    def _arm(self) -> None:
        self._disarm()
        cycle = self.cycle
        if self.transport.is_closing() or (cycle is not None and not cycle.response_complete):
            return  # closed, or the next request (pipelined) already came whole
        self._previous, self._armed_at = cycle, self.loop.time()
        self._deadline = self.loop.call_later(HEADER_TIMEOUT, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def on_headers_complete(self) -> None:  # (httptools; h11 reads its own state)
        self._message_done = False
        super().on_headers_complete()  # type: ignore[misc]

    def on_message_complete(self) -> None:
        self._message_done = True
        super().on_message_complete()  # type: ignore[misc]

    def _body_arriving(self) -> bool:
        """Whether the body of the request answered last is still coming (the app
        answered early: a 401, 413 or 415 before reading it)."""
        conn = getattr(self, "conn", None)  # h11's connection state
        if conn is not None:
            return conn.their_state is h11.SEND_BODY
        return not self._message_done

    def _expire(self) -> None:
        self._deadline = None
        transport = self.transport
        if transport.is_closing() or transport.get_protocol() is not self:
            return  # closed already, or now a WebSocket
        if self.cycle is not self._previous:
            return  # a request's headers came in time
        if self._body_arriving() and self.loop.time() - self._armed_at < BODY_TIMEOUT:
            # the client reads its answer once its upload ends: let it end, within
            # BODY_TIMEOUT of the answer
            self._deadline = self.loop.call_later(HEADER_TIMEOUT, self._expire)
            return
        transport.close()


class SendDeadline:
    """Mixed into one of uvicorn's protocols: drops the connection when the client takes
    nothing for :data:`SEND_TIMEOUT` seconds while the transport holds data for it (the
    transport paused writing)."""

    transport: asyncio.Transport
    _stalled: asyncio.TimerHandle | None = None
    _unsent = 0

    def pause_writing(self) -> None:
        super().pause_writing()  # type: ignore[misc]
        if self._stalled is None:
            self._watch()

    def _watch(self) -> None:
        self._unsent = _unsent(self.transport)
        self._stalled = asyncio.get_running_loop().call_later(SEND_TIMEOUT, self._drop_stalled)

    def resume_writing(self) -> None:
        super().resume_writing()  # type: ignore[misc]
        self._unstall()

    def connection_lost(self, exc: Exception | None) -> None:
        self._unstall()
        super().connection_lost(exc)  # type: ignore[misc]

    def _unstall(self) -> None:
        if self._stalled is not None:
            self._stalled.cancel()
            self._stalled = None

    def _drop_stalled(self) -> None:
        self._stalled = None
        transport = self.transport
        if transport.get_protocol() is not self:
            return  # the next protocol has it now
        if _unsent(transport) < self._unsent:
            self._watch()  # the client took some meanwhile (a slow link): it reads
            return
        _log.info(
            "dropped a connection from %s: it took nothing for %.0f s",
            _peer(transport), SEND_TIMEOUT,
        )  # fmt: skip
        _drop(transport)


class PingLimit:
    """Mixed into uvicorn's websockets protocol: drops a client that pings too often, or
    while much is waiting to be sent to it."""

    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    _second = 0.0
    _pings = 0

    def handle_ping(self) -> None:
        now = self.loop.time()
        if now - self._second >= 1.0:
            self._second, self._pings = now, 0
        self._pings += 1
        if self._pings > PINGS_PER_SECOND or self.transport.get_write_buffer_size() > MAX_UNSENT:
            _log.info("dropped a WebSocket from %s: too many pings", _peer(self.transport))
            _drop(self.transport)
            return
        super().handle_ping()  # type: ignore[misc]


def _unsent(transport: asyncio.WriteTransport) -> int:
    """Bytes written to ``transport`` and not yet taken by the client: the transport's
    buffer, and the socket's send queue in the kernel (megabytes on Linux, where a slow
    reader's progress shows long before the transport writes more)."""
    queued = 0
    sock = transport.get_extra_info("socket")
    if sock is not None and hasattr(termios, "TIOCOUTQ"):
        with contextlib.suppress(OSError, AttributeError, ValueError):
            raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
            queued = struct.unpack("i", raw)[0]
    return transport.get_write_buffer_size() + queued


def _drop(transport: asyncio.BaseTransport) -> None:
    """Close at once with a reset: what waits in the kernel's buffers is discarded too
    (a plain close leaves it there until the client reads it, if ever)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()  # type: ignore[attr-defined]


def _peer(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "?"


class HTTPProtocol(HeaderDeadline, SendDeadline, AutoHTTPProtocol):  # type: ignore[misc,valid-type]
    """What ``spangraph serve`` runs for HTTP: httptools where installed, else h11."""


class WebSocketProtocol(PingLimit, SendDeadline, WebSocketsSansIOProtocol):
    """What ``spangraph serve`` runs for WebSockets (the websockets library's)."""
