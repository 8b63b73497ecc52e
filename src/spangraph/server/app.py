"""create_app: the FastAPI app, with its resources opened and closed in the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import re
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Final, TypeVar
from urllib.parse import unquote_plus

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from .._otlp import exporter_class
from .._terminal import printable
from .._version import __version__
from ..config import Settings
from ..exceptions import StoreError, StoreUnavailableError
from ..stores import GraphStore, open_store
from ._head import HeadAsGet
from ._headers import SecurityHeaders
from .deps import require_token
from .models import AUTH_ERRORS, STORE_ERRORS
from .routes import health, runs

_log = logging.getLogger("spangraph.server")

_T = TypeVar("_T")


class LazyStore:
    """A GraphStore opened on first use (and again after a failed open), so the service
    starts, and answers health checks with 503, while its store is still down.

    When a call finds the store unavailable, :attr:`on_unavailable` (if set) is asked
    where it went (one caller at a time); if that moved the store (:meth:`move_to`), the
    call is made once more, there, else it raises as before."""

    name = "lazy"

    def __init__(self, factory: Callable[[], GraphStore]) -> None:
        self._factory = factory
        self._store: GraphStore | None = None
        self._lock = threading.Lock()
        self._following = threading.Lock()
        self._moves = 0
        self.on_unavailable: Callable[[], None] | None = None
        """Called when the store does not answer: e.g. a follower of the embedded server
        (:meth:`~spangraph.embedded.EmbeddedServer.follower`) that calls :meth:`move_to`
        when the server came back on another port."""

    def _get(self) -> GraphStore:
        store = self._store
        if store is None:
            with self._lock:
                if self._store is None:
                    try:
                        self._store = self._factory()
                    except StoreError:
                        raise
                    except Exception as exc:
                        raise StoreUnavailableError(f"cannot open the graph store: {exc}") from exc
                store = self._store
        return store

    def move_to(self, port: int) -> None:
        """Use ``port`` of the same host from now on (the embedded server came back on
        another port): the open store moves there (its own ``move_to``); a store not
        opened yet is opened where the factory points, which the caller updates."""
        with self._lock:
            if self._store is not None:
                self._store.move_to(port)  # type: ignore[attr-defined]
            self._moves += 1

    def _call(self, op: Callable[[GraphStore], _T]) -> _T:
        moves = self._moves
        try:
            return op(self._get())
        except StoreUnavailableError:
            if not self._moved_since(moves):
                raise
        return op(self._get())

    def _moved_since(self, moves: int) -> bool:
        """Whether the store moved since it was ``moves`` moves old, after asking
        :attr:`on_unavailable` when it had not."""
        follow = self.on_unavailable
        if follow is None:
            return False
        with self._following:
            if self._moves == moves:
                try:
                    follow()
                except Exception as exc:
                    _log.warning("graph store: looking for where it went failed: %s", exc)
            return self._moves != moves

    @property
    def url(self) -> str | None:
        return getattr(self._store, "url", None)

    def ensure_schema(self) -> None:
        self._call(lambda store: store.ensure_schema())

    def write(self, batch: Any) -> None:
        self._call(lambda store: store.write(batch))

    def query(self, cypher: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return self._call(lambda store: store.query(cypher, params))

    def execute_many(self, statements: list[tuple[str, dict[str, Any]]]) -> None:
        self._call(lambda store: store.execute_many(statements))  # type: ignore[attr-defined]

    def ping(self) -> None:
        self._call(lambda store: store.ping())

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


def _metrics_exporter() -> Any:
    """The OTLP metric exporter the ``OTEL_*`` variables ask for, or ``None`` (with a
    logged reason unless they say ``none``): ``OTEL_METRICS_EXPORTER`` (unset: OTLP) and
    ``OTEL_EXPORTER_OTLP_METRICS_PROTOCOL`` / ``OTEL_EXPORTER_OTLP_PROTOCOL`` (unset:
    OTLP/HTTP, installed with ``spangraph[otlp]``; ``grpc`` needs
    ``opentelemetry-exporter-otlp-proto-grpc``)."""
    exporter = exporter_class("metrics", "spangraph serve")
    return None if exporter is None else exporter()


def _metrics_provider(ingest: Any) -> Any:
    """When ``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_ENDPOINT``) is
    set, export the ingest processors' health as OTLP metrics (metrics only: the service's
    own traces would loop back into it through the Collector), as ``OTEL_METRICS_EXPORTER``
    and the OTLP protocol variables say (:func:`_metrics_exporter`)."""
    if not (
        os.environ.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    ):
        return None
    exporter = _metrics_exporter()
    if exporter is None:
        return None
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource

    from .._metrics import register_metrics

    provider = MeterProvider(
        # OTEL_SERVICE_NAME wins (replicas told apart), as everywhere in OpenTelemetry
        resource=Resource.create(
            {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": "spangraph-serve"}
        ),
        metric_readers=[PeriodicExportingMetricReader(exporter)],
    )
    register_metrics(ingest, provider)
    return provider


class _RedactToken(logging.Filter):
    """Writes ``token=***`` for the value of every ``token`` query parameter in a log
    record (uvicorn logs each request's path and query: browsers send the API token in
    the query of WebSockets and server-sent events). A parameter's name is compared as
    the query parser reads it, percent-decoded: ``?t%6Fken=`` is a token too."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and "=" in record.msg:
            record.msg = self._redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(self._redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {
                k: self._redact(a) if isinstance(a, str) else a for k, a in record.args.items()
            }
        return True

    def _redact(self, text: str) -> str:
        if "=" not in text:
            return text
        out: list[str] = []
        at = 0
        for found in _PARAM_NAME.finditer(text):
            if found.start() < at or unquote_plus(found[2]).strip().lower() != "token":
                continue  # (inside a value hidden already, or not the token)
            # its value runs to the next `&` (or `#`, or the end), as the query parser
            # reads it: `;`, `'` and `"` are in it (a token may hold them)
            end = _VALUE_END.search(text, found.end())
            out += (text[at : found.end()], "***")
            at = end.start() if end else len(text)
        return "".join(out) + text[at:] if out else text


_PARAM_NAME: Final = re.compile(r"([?&;])([^=&;#\s\"']*)=")
_VALUE_END: Final = re.compile(r"[&#\s]")


_SERVER_LOGGERS = ("uvicorn.access", "uvicorn.error")
"""The loggers that write request paths with their query (access log, WebSocket lines)."""


class _PortInUse(logging.Filter):
    """Says what to do when the server cannot listen because its port is taken: uvicorn
    logs the bare ``OSError`` (``[Errno 98] error while attempting to bind on address
    ('127.0.0.1', 8000): address already in use``), shuts the app down and exits with
    status 3."""

    _ADDRESS = re.compile(r"\(\s*'([^']*)',\s*(\d+)")

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.msg
        if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
            found = self._ADDRESS.search(str(exc))
            if found:
                host, port = found[1], found[2]
                where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                what = f"port {port}"
            else:
                where, what = "its address", "port"
            record.msg = (
                f"cannot listen on {where}: the {what} is already in use (another "
                "spangraph serve?); stop that program or choose another port with --port"
                f" ({exc})"
            )
            record.args = ()
        return True


def _redact_server_logs() -> None:
    for name in _SERVER_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactToken) for f in logger.filters):
            logger.addFilter(_RedactToken())
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _PortInUse) for f in logger.filters):
        logger.addFilter(_PortInUse())


LOOPBACK_HOSTS: Final = ("localhost", "127.0.0.1", "[::1]")
"""Host names of this machine, which no other site can make a browser send."""


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
    allowed_hosts: list[str] | None = None,
    start_embedded: bool = True,
    retention_s: float | None = None,
) -> FastAPI:
    """The spangraph service. Nothing connects until the app starts; the lifespan opens
    the graph store, the Redis client, the live-stream hub and the OTLP ingest pipeline,
    and closes them on shutdown.

    Every route that reads or writes data requires ``SPANGRAPH_API_TOKEN`` as a bearer
    token when it is set; the web page, its static files and the API's description
    (``/openapi.json``, ``/docs``, ``/redoc``) stay public. CORS is off unless
    ``cors_origins`` is given; WebSocket streams serve browser pages of the service's own
    origin and of ``cors_origins`` only. With ``allowed_hosts``, requests whose ``Host``
    is neither one of them nor a loopback name are answered 400 (a defence against DNS
    rebinding; ``"*"`` allows any). With ``retention_s``, runs whose last activity is
    older than that many seconds are deleted now and then (:mod:`.retention`)."""
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from ..embedded import EmbeddedServer
        from .ingest import OTLPIngest
        from .streams import StreamHub

        server = embedded = None
        if start_embedded and (settings.graph_is_embedded or settings.redis_is_embedded):
            embedded = EmbeddedServer(settings.home)
            server = await run_in_threadpool(embedded.ensure_running)
        chosen = (
            settings.replace(graph_url=server.graph_url)
            if settings.graph_is_embedded and server
            else settings
        )

        def open_chosen() -> GraphStore:  # `chosen` as it is when opened
            opened = open_store(
                chosen, embedded=embedded is not None and settings.graph_is_embedded
            )
            if embedded is not None and settings.graph_is_embedded:
                check = getattr(opened, "check_connections", None)
                if check is not None:  # never write into a server that took its port
                    try:
                        check(embedded.connect_check())
                    except BaseException:
                        opened.close()  # (opened again at the next use)
                        raise
            return opened

        store = LazyStore(open_chosen)
        if embedded is not None and server is not None and settings.graph_is_embedded:

            def move_graph(port: int) -> None:
                nonlocal chosen
                # where a store not opened yet will open (the pid is not used)
                moved = dataclasses.replace(server, port=port)
                chosen = settings.replace(graph_url=moved.graph_url)
                store.move_to(port)

            store.on_unavailable = embedded.follower(server.port, move_graph)
        try:
            await run_in_threadpool(store.ensure_schema)
        except Exception as exc:  # the store may come up later: health says so
            _log.warning("graph store not ready at startup: %s", exc)
        redis_url = _redis_url(settings, server)
        hub = StreamHub(redis_url)
        app.state.settings = settings
        app.state.store = store
        app.state.hub = hub
        _redact_server_logs()
        app.state.ingest = ingest = OTLPIngest(settings, store, redis_url)
        if embedded is not None and server is not None and settings.redis_is_embedded:
            # the hub (live streams, /api/health/redis) and the OTLP receiver's live events
            # follow the embedded server to another port, as the SDK's processors do
            hub.on_unavailable = embedded.follower(server.port, hub.move_to)
            hub.connect_check = embedded.async_connect_check()
            if ingest.live is not None:
                ingest.live.publisher.check_connections(embedded.connect_check())
                ingest.live._worker.on_unavailable = embedded.follower(
                    server.port, ingest.live.publisher.move_to
                )
        await hub.start()
        meter_provider = _metrics_provider(app.state.ingest)
        running = (hub, asyncio.get_running_loop())
        _running_hubs.add(running)
        retaining = None
        if retention_s is not None:
            from .retention import keep_within

            def where() -> tuple[str | None, str | None]:
                """The live Redis and the embedded graph's server as they are now (the
                embedded server may have moved; one on the old port may be another's)."""
                info = embedded.status() if embedded is not None else None
                if not settings.live_enabled:
                    live = None
                elif settings.redis_is_embedded:
                    live = info.redis_url if info is not None else None
                else:
                    live = settings.redis_url
                graph = info.redis_url if info is not None and settings.graph_is_embedded else None
                return live, graph

            retaining = asyncio.create_task(keep_within(store, retention_s, where=where))
        try:
            yield
        finally:
            if retaining is not None:
                retaining.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await retaining
            _running_hubs.discard(running)
            if meter_provider is not None:
                await run_in_threadpool(meter_provider.shutdown)
            await hub.stop()
            await run_in_threadpool(ingest.shutdown)
            await run_in_threadpool(store.close)

    app = FastAPI(
        title="spangraph",
        version=__version__,
        summary="Agent and workflow runs as graphs: query API, live streams, OTLP receiver.",
        lifespan=lifespan,
        docs_url=None,  # ours: pinned scripts with their integrity hashes (_docs.py)
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.cors_origins = frozenset(o.strip().rstrip("/").lower() for o in cors_origins or ())

    @app.exception_handler(StoreUnavailableError)
    async def store_unavailable(request: Request, exc: StoreUnavailableError) -> JSONResponse:
        _log.warning(
            "%s %s: graph store unavailable: %s", request.method, printable(request.url.path), exc
        )
        return JSONResponse({"detail": f"graph store unavailable: {exc}"}, status_code=503)

    @app.exception_handler(StoreError)
    async def store_error(request: Request, exc: StoreError) -> JSONResponse:
        _log.error("%s %s: graph store error: %s", request.method, printable(request.url.path), exc)
        return JSONResponse({"detail": f"graph store error: {exc}"}, status_code=502)

    auth = [Depends(require_token)]
    app.include_router(health.router, dependencies=auth, responses=AUTH_ERRORS)
    app.include_router(runs.router, dependencies=auth, responses={**AUTH_ERRORS, **STORE_ERRORS})
    from . import _docs, otlp, streams, ui

    app.include_router(streams.router)  # checks the token itself (WebSockets have no headers)
    app.include_router(otlp.router, dependencies=auth, responses=AUTH_ERRORS)
    app.include_router(ui.router)  # the page itself is public; its API calls send the token
    app.include_router(_docs.router)  # public, like /openapi.json
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=cors_origins,
            allow_credentials=False,
            allow_methods=["GET", "POST"],
            # What browser clients send: OTLP/HTTP exporters add Content-Encoding (gzip)
            # and, when fetch is traced, traceparent; EventSource adds Last-Event-ID.
            allow_headers=[
                "Authorization",
                "Content-Type",
                "Content-Encoding",
                "Accept",
                "Accept-Encoding",
                "Last-Event-ID",
                "traceparent",
                "tracestate",
            ],
            # what a page may read of an answer beyond the CORS-safelisted headers: the
            # replay's source (whether its seq go on live), the OTLP 503's wait, and the
            # run a 404 names (the id was one of its span, trace or branch ids)
            expose_headers=[
                "X-Spangraph-Replay",
                "Retry-After",
                "X-Spangraph-Run",
                "X-Spangraph-Id-Kind",
            ],
        )
    if allowed_hosts and "*" not in allowed_hosts:
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        hosts = {h.strip().lower() for h in allowed_hosts if h.strip()} | set(LOOPBACK_HOSTS)
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=sorted(hosts), www_redirect=False)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(HeadAsGet)  # outermost: a HEAD passes the others as the GET it runs
    return app


ENV_CORS_ORIGINS = "SPANGRAPH_CORS_ORIGINS"
"""Comma-separated origins allowed by CORS (service only); CORS is off when unset."""
ENV_ALLOWED_HOSTS = "SPANGRAPH_ALLOWED_HOSTS"
"""Comma-separated ``Host`` names the service answers besides loopback ones (service
only); ``*`` or unset: any. ``spangraph serve`` on a loopback address sets it to the
loopback names when it is unset."""


def _listed(name: str) -> list[str] | None:
    return [v.strip() for v in os.environ.get(name, "").split(",") if v.strip()] or None


_running_hubs: set[tuple[Any, asyncio.AbstractEventLoop]] = set()
"""The live-stream hubs of the apps running in this process, with their event loops."""


def going_away(then: Callable[[], None] | None = None, within: float = 1.0) -> None:
    """Tell the live-stream clients of every app running in this process that the
    service is shutting down (from a signal handler, or any thread): their streams end
    at once instead of holding up the server's graceful shutdown.

    ``then``, if given, is called (on an app's event loop) once every stream has ended,
    or after ``within`` seconds: the server's own shutdown must wait for it, or it closes
    the WebSockets first (1012, where clients are told 1001)."""
    hubs = list(_running_hubs)
    left = [len(hubs)]
    lock = threading.Lock()

    def one_done() -> None:
        with lock:
            left[0] -= 1
            last = left[0] == 0
        if last and then is not None:
            then()

    for hub, loop in hubs:
        try:
            loop.call_soon_threadsafe(_leave, hub, within, one_done)
        except RuntimeError:  # the loop is closed already
            one_done()
    if not hubs and then is not None:
        then()


def _leave(hub: Any, within: float, done: Callable[[], None]) -> None:
    hub.going_away()

    async def ended() -> None:
        try:
            deadline = asyncio.get_running_loop().time() + within
            while hub.stats()["subscribers"] and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.01)
        finally:
            done()

    _leaving.add(task := asyncio.ensure_future(ended()))
    task.add_done_callback(_leaving.discard)


_leaving: set[asyncio.Future[None]] = set()
"""Tasks of :func:`going_away` waiting for streams to end (kept from the collector)."""


def app_from_env() -> FastAPI:
    """The app with settings from the environment (``uvicorn --factory`` entry point)."""
    from .retention import retention_from_env

    return create_app(
        Settings.from_env(),
        cors_origins=_listed(ENV_CORS_ORIGINS),
        allowed_hosts=_listed(ENV_ALLOWED_HOSTS),
        retention_s=retention_from_env(),
    )
