"""Live streams: WebSocket and server-sent events fed from Redis by the :class:`StreamHub`.

``WS /api/stream/workflows/{workflow_id}``, ``WS /api/stream/projects/{project_id}`` and
``GET /api/stream/workflows/{workflow_id}/sse``. Workflow and project ids are the caller's
and may hold ``/`` (``jobs/42``) and line breaks: they are ``:id`` parameters (a client
may also send ``/`` as ``%2F``). An ``:id`` parameter takes everything up to the route's last literal
segment, so ``/sse`` is declared ahead of the WebSocket routes; those match WebSocket
requests only, so a GET never reaches them and an id ending in ``/sse`` still streams.

WebSocket frames are text, each a JSON **array** of one or more messages (under load,
what arrived together goes out together: one frame per client instead of one per
message). Messages are the wire messages of ``docs/live-events.md`` plus a few of the
service's own, told apart by ``type``:

* ``{"type": "subscribed", "channel": …, "since": n}`` first: live from here; on a
  workflow, every message with ``seq > since`` follows (``since`` ``null`` on projects);
* ``{"type": "heartbeat"}`` once the client was sent nothing for ``heartbeat`` seconds
  (15; counted for each client from the last thing it was sent, up to a fifth late);
* ``{"type": "error", "detail": …}`` when Redis went away (the hub reconnects), or when
  a replay asks for events the stream no longer keeps;
* ``{"type": "resumed", "detail": …}`` when Redis is back (a workflow channel first gets
  what it missed, from the run's stream).

A ``since`` beyond the run's ``seq`` (Redis lost its data and numbers the run from 1
again) starts from the run's ``seq`` instead: ``subscribed`` then says a lower ``since``
than asked, and a client forgets what it saw above it. Likewise, when the hub reconnects
to a Redis whose counter of a run went back, that run's clients get
``{"type": "resumed", "since": n, …}``.

Resume: on a workflow, send ``{"since": n}`` (the last ``seq`` you saw) as the first
message within ``since_window`` seconds (0.5) of connecting, or connect with ``?since=n``;
the replay comes from ``spangraph:stream:{workflow_id}``, then live, with no gap and no
repeat. Without either, ``subscribed`` comes once the window has passed, and everything
published since the connection opened follows, replayed from the run's stream (nothing
queues up meanwhile, however fast the run). ``since`` is a whole number from 0 to
``MAX_SEQ`` (2**63 - 1, the largest value of Redis's counter), digits only, given once,
everywhere; project channels have no stream, so there it is checked and then ignored:
``subscribed`` comes at once, and a first message within the window must still be
``{"since": n}``. SSE resumes from
``Last-Event-ID`` (browsers send it when they reconnect) or ``?since=n``; each event is
``id: <seq>`` + ``data: <json>`` (plain ``message`` events: the type is in the JSON), the
service's own messages come without ``id``, heartbeats as ``: heartbeat``.

Close codes: 1008 missing or wrong token (``Authorization: Bearer`` or ``?token=``, as
browsers cannot set WebSocket headers), or a browser page of another site (an ``Origin``
that is neither the service's own nor one of ``SPANGRAPH_CORS_ORIGINS``; browsers do not
apply CORS to WebSockets, and clients that send no ``Origin`` are not browsers); 1003 a
bad ``?since=`` or a first message that is not ``{"since": n}``; 1011 live events are
off; 1013 Redis unreachable, try again; 4008 too slow (over ``max_queue`` messages
behind: reconnect with ``since``); 1001 the service is stopping.
SSE answers 401, 400 (bad ``Last-Event-ID`` or ``?since=``) and 503 instead (browsers
apply CORS to ``EventSource``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Final

from fastapi import (
    APIRouter,
    HTTPException,
    Request,
    Response,
    WebSocket,
    WebSocketDisconnect,
)
from fastapi.sse import EventSourceResponse
from redis.exceptions import RedisError
from starlette.types import Receive, Scope, Send

from .._terminal import printable
from ..exceptions import LiveUnavailableError
from ..processors.live import project_channel, workflow_channel
from . import _convertors  # noqa: F401  (the "id" path convertor of the routes)
from ._hub import StreamHub
from ._subscriber import Batch, Subscriber, control, frames_of, sse_event, sse_of
from .deps import token_ok
from .models import error

__all__ = ["StreamHub", "router"]

_log = logging.getLogger("spangraph.server")

MAX_SEQ: Final = 2**63 - 1
"""The largest ``seq``: runs are numbered by a Redis counter, a signed 64-bit integer."""
POLICY_VIOLATION: Final = 1008
UNSUPPORTED_DATA: Final = 1003
INTERNAL_ERROR: Final = 1011
TRY_AGAIN_LATER: Final = 1013
_OFF: Final = "live events are off (SPANGRAPH_REDIS_URL=off)"
_TOKEN: Final = (
    "missing or wrong token (SPANGRAPH_API_TOKEN): send Authorization: Bearer or ?token="
)
_ORIGIN: Final = "Origin not allowed (only the service's own or SPANGRAPH_CORS_ORIGINS): {origin}"
_IGNORED: Final = (
    'messages from the client are ignored after the first: send {{"since": n}} within '
    "{window:g} s of connecting, or connect with ?since=n"
)
_NO_ID: Final = "the path must end with a workflow or project id"
_CHATTY: Final = "the client sent more than {n} messages in a second (the service reads none)"
_MAX_IGNORED: Final = 10
"""Messages a client may send in a second past its first: more, and it is closed
(reading them, ignored, held up every other client)."""
_UNAVAILABLE = (LiveUnavailableError, RedisError, OSError, TimeoutError)

router: APIRouter = APIRouter(prefix="/api/stream", tags=["live"])


def _presented_token(headers: Any, query: Any) -> str | None:
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    given = query.getlist("token")
    return given[0] if len(given) == 1 else None  # twice: which one? neither


def _origin_ok(websocket: WebSocket) -> bool:
    """Whether a WebSocket may be served to its ``Origin``: none (not a browser), the
    service's own (scheme, host and port of the request), or one allowed by CORS."""
    origin = websocket.headers.get("origin")
    if origin is None:
        return True
    origin = origin.strip().rstrip("/").lower()
    allowed: frozenset[str] = websocket.app.state.cors_origins
    if origin in allowed or "*" in allowed:
        return True
    scheme = "https" if websocket.url.scheme == "wss" else "http"
    host = websocket.headers.get("host", "").strip().lower()
    return bool(host) and origin == f"{scheme}://{host}"


def _query_since(query: Any) -> int | None:
    """``?since=`` (``ValueError`` if bad or given more than once)."""
    given = query.getlist("since")
    if len(given) > 1:
        raise ValueError(f"since must be given once, not {len(given)} times")
    return _since(given[0] if given else None, "since")


def _since(value: str | None, what: str) -> int | None:
    """The ``seq`` a client saw, from a header or query value; ``ValueError`` if bad
    (digits only: no sign, no spaces)."""
    if value is None or value == "":
        return None
    digits = value.lstrip("0") or "0"
    if not (value.isascii() and value.isdigit()) or len(digits) > 19 or int(digits) > MAX_SEQ:
        raise ValueError(
            f"{what} must be the last seq you saw, a whole number from 0 to {MAX_SEQ}: "
            f"{value[:40]!r}"
        )
    return int(value)


# -- WebSocket ----------------------------------------------------------------------------


async def stream_workflow(websocket: WebSocket, workflow_id: str) -> None:
    """Every message of one run as it happens, optionally replayed from ``since``."""
    await _serve_ws(websocket, workflow_channel(workflow_id), workflow_id, workflow_id)


async def stream_project(websocket: WebSocket, project_id: str) -> None:
    """Every message of a project's runs as it happens (no replay: ``since`` is checked,
    then ignored)."""
    await _serve_ws(websocket, project_channel(project_id), None, project_id)


async def _close(websocket: WebSocket, code: int, reason: str, timeout: float = 5.0) -> None:
    with contextlib.suppress(Exception):  # it may be gone already
        async with asyncio.timeout(timeout):
            # A close reason holds 123 bytes.
            await websocket.close(code, reason.encode()[:123].decode(errors="ignore"))


async def _first_message(websocket: WebSocket, window: float) -> tuple[int | None, str | None]:
    """``(since, error)`` from a ``{"since": n}`` sent within ``window`` seconds."""
    try:
        async with asyncio.timeout(window):
            message = await websocket.receive()
    except TimeoutError:
        return None, None
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    return _since_message(message)


class _Pairs(list[tuple[str, Any]]):
    """A JSON object's (key, value) pairs, in order, repeats kept."""


def _since_message(message: Mapping[str, Any]) -> tuple[int | None, str | None]:
    """``(since, error)`` from a client's ``{"since": n}`` message."""
    try:
        text = message.get("text")
        # an object's pairs as sent: {"since": 1, "since": 3} is not "since" given once
        body = json.loads(text, object_pairs_hook=_Pairs) if text is not None else None
    except (ValueError, RecursionError):  # (nested 200 000 deep: RecursionError)
        body = None
    since = body[0][1] if type(body) is _Pairs and [k for k, _ in body] == ["since"] else None
    if type(since) is not int or not 0 <= since <= MAX_SEQ:
        return None, f'the first message must be {{"since": <last seq seen, 0 to {MAX_SEQ}>}}'
    return since, None


async def _serve_ws(websocket: WebSocket, channel: str, workflow_id: str | None, key: str) -> None:
    await websocket.accept()
    hub: StreamHub = websocket.app.state.hub
    settings = websocket.app.state.settings
    where = printable(websocket.url.path)
    if not _origin_ok(websocket):
        origin = websocket.headers["origin"]
        _log.warning("rejected WebSocket %s: Origin %s not allowed", where, printable(origin[:200]))
        return await _close(websocket, POLICY_VIOLATION, _ORIGIN.format(origin=origin[:60]))
    if not token_ok(settings, _presented_token(websocket.headers, websocket.query_params)):
        _log.warning("rejected WebSocket %s: missing or wrong token", where)
        return await _close(websocket, POLICY_VIOLATION, _TOKEN)
    if not hub.enabled:
        return await _close(websocket, INTERNAL_ERROR, _OFF)
    if not key:
        return await _close(websocket, UNSUPPORTED_DATA, _NO_ID)
    try:
        since = _query_since(websocket.query_params)
    except ValueError as exc:
        return await _close(websocket, UNSUPPORTED_DATA, str(exc))
    sub: Subscriber | None = None
    try:
        if workflow_id is None:
            # A project has no stream to replay from, so no since to wait for: live at
            # once; a {"since": n} sent within the window is read (and ignored) as it
            # comes. Waiting instead would queue the project's messages meanwhile.
            sub = Subscriber(channel, max_queue=hub.max_queue)
            await hub.attach(sub)
            await websocket.send_text(
                "[" + control("subscribed", channel=channel, since=None) + "]"
            )
            expect_since = since is None
        else:
            # The run's seq at connection: whatever comes after it reaches this client,
            # replayed from the run's stream, so nothing needs to queue while the client
            # chooses since (a fast run would overflow the queue meanwhile).
            start = await hub.current_seq(workflow_id)
            if since is None:
                since, error = await _first_message(websocket, hub.since_window)
                if error is not None:
                    _log.info("closed WebSocket %s: bad first message", where)
                    return await _close(websocket, UNSUPPORTED_DATA, error)
            if since is not None and since > start:
                # Beyond the run's counter: Redis lost its data and numbers the run
                # from 1 again. From what it has now, and `subscribed` says so.
                _log.warning(
                    "live: WebSocket %s asked for events after %d; the run is at %d", where,
                    since, start,
                )  # fmt: skip
            elif since is not None:
                start = since
            sub = Subscriber(
                channel, max_queue=hub.max_queue, workflow_id=workflow_id, last_sent=start
            )
            await hub.attach(sub)
            await websocket.send_text(
                "[" + control("subscribed", channel=channel, since=start) + "]"
            )
            async for batch in hub.backlog(workflow_id, start):
                for frame in frames_of(sub.select([batch])):
                    await websocket.send_text(frame)
            expect_since = False
    except _UNAVAILABLE as exc:
        if sub is not None:
            hub.detach(sub)
        return await _close(websocket, TRY_AGAIN_LATER, f"live events unavailable: {exc}")
    except WebSocketDisconnect:  # the client left while we set up
        if sub is not None:
            hub.detach(sub)
        return None
    try:
        await _relay(websocket, hub, sub, expect_since)
    finally:
        hub.detach(sub)


async def _relay(websocket: WebSocket, hub: StreamHub, sub: Subscriber, expect_since: bool) -> None:
    """Send what the hub queues until the client leaves or the hub ends ``sub``;
    ``expect_since``: a first message within the since window must be ``{"since": n}``."""

    async def pump() -> None:
        send = websocket.send  # what send_text calls, one call less a frame
        while (batches := await sub.take()) is not None:
            for frame in frames_of(sub.select(batches)):
                await send({"type": "websocket.send", "text": frame})
            hub.sent(batches)

    async def listen() -> None:  # notices the client leave; what it sends is ignored
        loop = asyncio.get_running_loop()
        deadline = loop.time() + hub.since_window if expect_since else None
        told = False
        second, count = loop.time(), 0
        while (message := await websocket.receive())["type"] != "websocket.disconnect":
            if deadline is not None:
                in_time, deadline = loop.time() <= deadline, None
                if in_time:
                    _, error = _since_message(message)
                    if error is not None:
                        _log.info(
                            "closed WebSocket %s: bad first message", printable(websocket.url.path)
                        )
                        sub.end(UNSUPPORTED_DATA, error)
                        return
                    continue
            if not told:
                told = True
                detail = _IGNORED.format(window=hub.since_window)
                sub.push(Batch([control("error", detail=detail)]))
            if (now := loop.time()) - second >= 1.0:
                second, count = now, 0
            count += 1
            if count > _MAX_IGNORED:
                _log.info("closed WebSocket %s: too many messages", printable(websocket.url.path))
                sub.end(POLICY_VIOLATION, _CHATTY.format(n=_MAX_IGNORED))
                return

    tasks = [asyncio.create_task(c) for c in (pump(), listen(), sub.gone.wait())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if sub.close_code is not None:  # cut off or shutting down: the client is still there
        await _close(websocket, sub.close_code, sub.close_reason, hub.timeout)


# -- server-sent events -------------------------------------------------------------------


class _LiveEventSource(EventSourceResponse):
    """An event stream that gives its subscriber back to the hub however it ends."""

    def __init__(self, content: AsyncIterator[bytes], cleanup: Callable[[], None]) -> None:
        super().__init__(content, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._cleanup = cleanup

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._cleanup()


@router.get(
    "/workflows/{workflow_id:id}/sse",
    response_class=Response,  # not EventSourceResponse: FastAPI would expect a generator
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "the run's messages"},
        400: error("Last-Event-ID (or since) is not a whole number from 0 to 2^63 - 1"),
        401: error("missing or wrong token"),
        404: error("no workflow id in the path"),
        503: error("live events are off, or Redis is unreachable"),
    },
    # read by the route itself (checked also when Last-Event-ID wins, answering 400 as
    # documented): declared here
    openapi_extra={
        "security": [{"HTTPBearer": []}],  # (or ?token=, below)
        "parameters": [
            {
                "name": "since",
                "in": "query",
                "required": False,
                "description": "resume after this seq (Last-Event-ID wins over it)",
                "schema": {"type": "integer", "minimum": 0, "maximum": MAX_SEQ},
            },
            {
                "name": "Last-Event-ID",
                "in": "header",
                "required": False,
                "description": "resume after this seq (browsers send the last id they "
                f"saw when they reconnect): a whole number from 0 to {MAX_SEQ}",
                "schema": {"type": "string", "pattern": "^0*[0-9]{0,19}$"},
            },
            {
                "name": "token",
                "in": "query",
                "required": False,
                "description": "the API token, for clients that cannot send the header",
                "schema": {"type": "string"},
            },
        ],
    },
)
async def stream_workflow_sse(
    workflow_id: str,
    request: Request,
) -> _LiveEventSource:
    """Every message of one run as server-sent events; resumes after ``Last-Event-ID``
    (or ``?since=``) from the run's stream, then live. ``?token=`` is accepted as well
    as the bearer header (``EventSource`` cannot set headers)."""
    hub: StreamHub = request.app.state.hub
    if not token_ok(
        request.app.state.settings, _presented_token(request.headers, request.query_params)
    ):
        _log.warning("rejected GET %s: missing or wrong token", printable(request.url.path))
        raise HTTPException(401, detail=_TOKEN, headers={"WWW-Authenticate": "Bearer"})
    if not hub.enabled:
        raise HTTPException(503, detail=_OFF)
    if not workflow_id:
        raise HTTPException(404, detail=_NO_ID)
    try:
        asked = _query_since(request.query_params)  # checked also when the header wins
        since = _since(request.headers.get("last-event-id"), "Last-Event-ID")
        if since is None:
            since = asked
    except ValueError as exc:
        raise HTTPException(400, detail=str(exc)) from None
    channel = workflow_channel(workflow_id)
    sub: Subscriber | None = None
    try:
        start = await hub.current_seq(workflow_id)
        if since is not None and since <= start:  # beyond: the run's counter went back
            start = since
        sub = Subscriber(channel, max_queue=hub.max_queue, workflow_id=workflow_id, last_sent=start)
        await hub.attach(sub)
    except _UNAVAILABLE as exc:
        if sub is not None:
            hub.detach(sub)
        raise HTTPException(503, detail=f"live events unavailable: {exc}") from None
    return _LiveEventSource(_sse(hub, sub, channel, start), lambda: hub.detach(sub))


# After ``/workflows/{workflow_id:id}/sse`` (see the module docstring).
router.add_api_websocket_route("/workflows/{workflow_id:id}", stream_workflow)
router.add_api_websocket_route("/projects/{project_id:id}", stream_project)


async def _sse(hub: StreamHub, sub: Subscriber, channel: str, start: int) -> AsyncIterator[bytes]:
    assert sub.workflow_id is not None
    first = sse_event(None, control("subscribed", channel=channel, since=start))
    yield ("retry: 2000\n" + first).encode()
    try:
        async for batch in hub.backlog(sub.workflow_id, start):
            if chunk := sse_of(sub.select([batch])):
                yield chunk
    except _UNAVAILABLE as exc:
        yield sse_event(None, control("error", detail=f"replay failed: {exc}")).encode()
        return
    while (batches := await sub.take()) is not None:
        if chunk := sse_of(sub.select(batches)):
            yield chunk
        hub.sent(batches)
    yield sse_event(None, control("error", detail=sub.close_reason)).encode()
