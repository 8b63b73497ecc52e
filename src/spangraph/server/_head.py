"""``HEAD`` answered as ``GET`` without the body.

A service that answers ``GET`` should answer ``HEAD`` with the same status and headers
(RFC 9110, 9.3.2): uptime checks, load balancers and ``curl -I`` use it. FastAPI's routes
are ``GET`` only, so this layer runs a ``HEAD`` request as the ``GET`` of the same path
(the same token rule, the same ``Content-Length``) and sends no body. The live streams
(``/api/stream/...``) keep answering ``405``: their ``GET`` never ends, so there is no
whole answer to take the headers of."""

from __future__ import annotations

from typing import Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

_STREAMS: Final = "/api/stream/"


class HeadAsGet:
    """ASGI middleware: ``HEAD`` runs as ``GET``, its body dropped."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "HEAD"
            or scope["path"].startswith(_STREAMS)
        ):
            await self.app(scope, receive, send)
            return

        async def send_head(message: Message) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, send_head)
