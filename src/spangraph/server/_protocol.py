"""The HTTP protocol ``spangraph serve`` runs: uvicorn's own, with a deadline on request
headers.

uvicorn times a connection out only between requests (its keep-alive timeout), and that
timer stops at the first byte of the next request: a connection that never sends a
request, or sends its headers a byte at a time, stays open for good. A few hundred of
them take every file descriptor the process has. Here a connection must complete each
request's headers within :data:`HEADER_TIMEOUT` seconds of opening, or of the answer to
its previous request, or it is closed. Bodies, answers (live streams last hours) and
WebSockets are not timed.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol

HEADER_TIMEOUT = 10.0
"""Seconds a connection has to send a request's headers (as nginx's
``client_header_timeout``, shorter)."""


class HeaderDeadline:
    """Mixed into one of uvicorn's HTTP protocols (h11 or httptools): closes a
    connection whose request headers are not complete in time."""

    # uvicorn's protocols set these
    cycle: Any
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport

    _deadline: asyncio.TimerHandle | None = None
    _previous: Any = None

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
        self._previous = cycle
        self._deadline = self.loop.call_later(HEADER_TIMEOUT, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        transport = self.transport
        if transport.is_closing() or transport.get_protocol() is not self:
            return  # closed already, or now a WebSocket
        if self.cycle is self._previous:  # no request's headers came since
            transport.close()


class HeaderDeadlineProtocol(HeaderDeadline, AutoHTTPProtocol):  # type: ignore[misc,valid-type]
    """What ``spangraph serve`` runs: httptools where installed, else h11."""
