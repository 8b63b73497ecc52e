"""The web UI served at ``GET /``, exercised in a real headless Chromium (Playwright's
Python package driving the system's ``/usr/bin/chromium``; no browser download).

- ``test_page_and_static_files``: the page, its static files, ``/api/config`` and the
  token rule, over HTTP.
- ``test_live_run_in_browser``: a real workflow runs in a thread while the page watches
  it: nodes appear and change state without a reload, decisions, branches, monitors,
  node detail with the error message, Jaeger links. Over the WebSocket when the app has
  the stream route, else by the page's 2 s polling fallback (which the test then checks).
- ``test_stream_contract_and_token``: a scripted stand-in for the stream, following its
  contract (``?since=seq``, ``?token=``, frames of one message or a JSON array of them),
  checks the page's WebSocket path, resume after a dropped connection, duplicate
  messages, and the token dialog and bearer header.
- ``test_name_filter_searches_every_run`` / ``test_name_filter_typed_while_loading``: the
  runs list's name filter asks the service, so runs older than the newest 200 are found,
  and the last filter typed wins even while a list is loading.
- ``test_odd_attribute_keys_are_shown``: attribute keys such as ``__proto__`` (from the
  graph and from the stream) are listed like any other, and span data that looks like
  HTML is shown as text.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, WebSocket
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import TracerProvider

import spangraph
from spangraph.config import Settings
from spangraph.mapping import to_json
from spangraph.server import create_app
from spangraph.stores import FalkorDBStore, WriteBatch

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
JAEGER = "http://jaeger.example:16686"
STREAM_PATH = "/api/stream/workflows/{workflow_id:path}"  # as the real route
WAIT_MS = 12_000

needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs Debian's Chromium at /usr/bin/chromium (apt-get install -y chromium)",
)


def _settings(graph_url: str, redis_url: str, home: Path, **extra: Any) -> Settings:
    # env={}: the developer's own SPANGRAPH_* variables must not leak into the test
    return Settings.from_env(
        {}, graph_url=graph_url, redis_url=redis_url, home=str(home), jaeger_url=JAEGER, **extra
    )


@contextlib.contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """Run ``app`` in a real uvicorn server on a free port, in a background thread."""
    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=2
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="ui-test-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive(), "uvicorn exited during startup"
        assert time.monotonic() < deadline, "uvicorn did not start in 20 s"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's Chromium at /usr/bin/chromium (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class PageErrors:
    """Uncaught page errors and console errors, except the expected network noise (a
    refused WebSocket while the stream is unavailable, a 404 or 401 answer)."""

    NOISE = ("WebSocket", "Failed to load resource")

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.on("console", self._console)

    def _console(self, msg: Any) -> None:
        if msg.type == "error" and not any(n in msg.text for n in self.NOISE):
            self.errors.append(f"console: {msg.text}")


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    from playwright.sync_api import expect

    expect.set_options(timeout=WAIT_MS)  # (expect's own default is 5 s)
    errors = PageErrors(page)
    yield page
    context.close()
    assert not errors.errors, errors.errors


def node(page: Any, name: str) -> Any:
    """The tree item of the span named ``name``."""
    return page.locator(f'#tree li.tree-item[data-name="{name}"]').first


def state_of(page: Any, name: str) -> Any:
    return node(page, name).locator(":scope > .row .state")


# -- over HTTP ------------------------------------------------------------------------------


def test_page_and_static_files(embedded_server: Any, graph_url: str, tmp_path: Path) -> None:
    settings = _settings(graph_url, embedded_server.redis_url, tmp_path)
    with TestClient(create_app(settings)) as client:
        page = client.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert '<script type="module" src="/static/app.js">' in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]
        for module in ("app.js", "api.js", "util.js", "views.js"):  # app.js imports the rest
            js = client.get(f"/static/{module}")
            assert js.status_code == 200, module
            assert js.headers["content-type"].startswith("text/javascript")
        assert "new WebSocket" in client.get("/static/app.js").text
        assert client.get("/static/app.css").headers["content-type"].startswith("text/css")
        for missing in ("/static/nope.js", "/static/..%2Fui.py", "/static/../ui.py"):
            assert client.get(missing).status_code == 404, missing
        assert client.get("/api/config").json() == {
            "jaeger_url": JAEGER,
            "auth": False,
            "live": True,
            "version": spangraph.__version__,
        }

    guarded = settings.replace(api_token="s3cret")
    with TestClient(create_app(guarded)) as client:
        assert client.get("/").status_code == 200  # the page itself is public
        assert client.get("/static/app.js").status_code == 200
        assert client.get("/api/config").status_code == 401
        ok = client.get("/api/config", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert ok.json()["auth"] is True


# -- a real run, watched live ---------------------------------------------------------------


async def _refuse(websocket: WebSocket, workflow_id: str) -> None:
    await websocket.close(code=1013)  # before accepting: the handshake fails (403)


@needs_chromium
@pytest.mark.parametrize("transport", ["websocket", "polling"])
def test_live_run_in_browser(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path, transport: str
) -> None:
    """``websocket``: the app as it is. ``polling``: its stream route refused, so the
    page must fall back to reading the tree every 2 s and still show every change."""
    from playwright.sync_api import expect

    settings = _settings(graph_url, embedded_server.redis_url, tmp_path)
    app = create_app(settings)
    if transport == "polling":
        app.add_api_websocket_route(STREAM_PATH, _refuse)
        app.router.routes.insert(0, app.router.routes.pop())  # ahead of the real one
    spangraph.configure(
        tracer_provider=TracerProvider(),
        graph_url=graph_url,
        redis_url=embedded_server.redis_url,
        home=str(tmp_path),
        instrument_threads=False,
    )
    gates = {"slow": threading.Event(), "final": threading.Event()}
    ids: dict[str, str] = {}
    failures: list[BaseException] = []
    workflow_id = str(uuid.uuid4())

    def agent() -> None:
        try:
            with spangraph.workflow("ui-research", workflow_id=workflow_id) as run:
                ids["trace"] = run.trace_id
                run.set(question="How do agents branch?")
                with spangraph.step("plan"):
                    pass
                options = ["search", "answer-directly", "ask-user"]
                with spangraph.decision("route", options=options) as choice:
                    with choice.option("search"):
                        pass
                    with choice.option("answer-directly"):
                        pass
                    choice.choose("search", reason="the draft cited no sources", score=0.8)
                with spangraph.step("slow-step") as slow:
                    ids["slow"] = slow.span_id
                    spangraph.event("tool.call", tool="search", query="graph databases")
                    assert gates["slow"].wait(40)
                with contextlib.suppress(ValueError), spangraph.step("flaky"):
                    raise ValueError("upstream said no")
                with spangraph.branch("draft-detailed") as detailed, spangraph.step("write"):
                    pass
                with (
                    spangraph.branch("review"),
                    spangraph.monitor(detailed, name="watch draft-detailed"),
                ):
                    pass
                with spangraph.step("final-step"):
                    assert gates["final"].wait(40)
        except BaseException as exc:  # reported by the test thread
            failures.append(exc)

    worker = threading.Thread(target=agent, name="ui-test-agent")
    try:
        with serve(app) as base:
            has_stream = stream_available(base)
            page.goto(base + "/")
            expect(page.locator("#runs-status")).to_contain_text("No runs match")
            worker.start()

            # The runs list refreshes by itself (every 5 s): the new run shows up, running.
            run_item = page.locator('#runs li[data-name="ui-research"]')
            expect(run_item).to_have_attribute("data-state", "running")
            page.evaluate("window.__sameDocument = true")
            run_item.get_by_role("button").click()

            # The tree, while the slow step runs.
            expect(page.locator("#run-title")).to_have_text("ui-research")
            expect(state_of(page, "slow-step")).to_have_text("running")
            expect(state_of(page, "plan")).to_have_text("completed")
            expect(node(page, "plan").locator(":scope > .row .dur")).not_to_be_empty()
            assert node(page, "final-step").count() == 0
            expect(node(page, "slow-step").locator(":scope > .row > a.jaeger")).to_have_attribute(
                "href", f"{JAEGER}/trace/{ids['trace']}?uiFind={ids['slow']}"
            )
            expect(page.locator("#run-jaeger")).to_have_attribute(
                "href", re_exact(f"{JAEGER}/trace/{ids['trace']}?uiFind=")
            )
            expect(page.locator("#conn")).to_have_attribute(
                "data-transport", "live" if has_stream else "polling"
            )

            # Decisions: every option, the chosen one marked, the unexplored one greyed.
            route = page.locator('#decisions .decision[data-name="route"]')
            chosen = route.locator('.option[data-option="search"]')
            expect(chosen).to_have_attribute("data-chosen", "true")
            expect(chosen).to_contain_text("chosen")
            other = route.locator('.option[data-option="answer-directly"]')
            expect(other).to_have_attribute("data-explored", "true")
            expect(other).to_have_attribute("data-chosen", "false")
            never = route.locator('.option[data-option="ask-user"]')
            expect(never).to_have_class(re_word("unexplored"))
            expect(never).to_contain_text("not explored")
            expect(route).to_contain_text("the draft cited no sources")

            # Node detail: attributes, events, duration.
            node(page, "slow-step").locator(":scope > .row > .node-btn").click()
            expect(page.locator("#detail-title")).to_have_text("slow-step")
            detail = page.locator("#detail")
            tool_call = detail.locator('.event[data-name="tool.call"]')
            if has_stream:  # events reach the graph when their span ends; live at once
                expect(tool_call).to_contain_text("graph databases")
            expect(detail.locator('a.jaeger[href*="uiFind="]')).to_have_attribute(
                "href", f"{JAEGER}/trace/{ids['trace']}?uiFind={ids['slow']}"
            )

            # Let the run go on: the same page updates, no reload.
            gates["slow"].set()
            expect(state_of(page, "slow-step")).to_have_text("completed")
            expect(state_of(page, "final-step")).to_have_text("running")
            expect(state_of(page, "flaky")).to_have_text("failed")
            expect(detail.locator('dd[data-fact="Duration"]')).not_to_contain_text("…")
            expect(detail.locator('.event[data-name="step.completed"]')).to_be_visible()
            expect(tool_call).to_contain_text("graph databases")
            assert page.evaluate("window.__sameDocument") is True, "the page reloaded"

            # Branches and monitors.
            expect(page.locator('#branches li[data-name="draft-detailed"]')).to_contain_text(
                "completed"
            )
            monitor = page.locator('#monitors li[data-monitor="watch draft-detailed"]')
            expect(monitor).to_contain_text("watch draft-detailed → draft-detailed")

            # The failed step explains itself.
            node(page, "flaky").locator(":scope > .row > .node-btn").click()
            expect(page.locator("#detail .error-box")).to_contain_text("upstream said no")

            ARTIFACTS.mkdir(exist_ok=True)
            shot = "ui-live-polling.png" if transport == "polling" else "ui-live.png"
            page.screenshot(path=str(ARTIFACTS / shot))

            gates["final"].set()
            expect(page.locator("#run-state .state")).to_have_text("completed")
            expect(state_of(page, "final-step")).to_have_text("completed")
            expect(page.locator("#conn")).to_have_attribute("data-transport", "done")
            expect(run_item).to_have_attribute("data-state", "completed", timeout=WAIT_MS)
            assert page.evaluate("window.__sameDocument") is True, "the page reloaded"
    finally:
        for gate in gates.values():
            gate.set()
        if worker.is_alive() or worker.ident:
            worker.join(20)
        spangraph.shutdown()
    assert not failures, failures


def stream_available(base: str) -> bool:
    """Whether the app answers ``WS /api/stream/workflows/{id}`` (the live streams)."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    try:
        with connect(
            base.replace("http://", "ws://") + "/api/stream/workflows/probe", open_timeout=5
        ):
            return True
    except InvalidStatus:
        return False


def re_exact(prefix: str) -> Any:
    import re

    return re.compile("^" + re.escape(prefix) + "[0-9a-f]{16}$")


def re_word(word: str) -> Any:
    import re

    return re.compile(rf"\b{re.escape(word)}\b")


# -- the stream contract, scripted ----------------------------------------------------------


class FakeStream:
    """A stand-in for ``WS /api/stream/workflows/{id}`` that the test drives: it records
    each connection's ``token`` and first message, then sends what the test queues."""

    def __init__(self) -> None:
        self.connections: queue.Queue[FakeConnection] = queue.Queue()

    @classmethod
    def on(cls, app: Any) -> FakeStream:
        """A FakeStream serving ``app``'s stream route, ahead of the real one."""
        stream = cls()
        app.add_api_websocket_route(STREAM_PATH, stream.endpoint)
        app.router.routes.insert(0, app.router.routes.pop())
        return stream

    async def endpoint(self, websocket: WebSocket, workflow_id: str) -> None:
        await websocket.accept()
        # resume from ?since=n, or else from a first message {"since": n}
        first = None if "since" in websocket.query_params else await websocket.receive_json()
        conn = FakeConnection(
            workflow_id, websocket.query_params, first, asyncio.get_running_loop()
        )
        self.connections.put(conn)

        async def until_the_page_leaves() -> None:
            while (await websocket.receive())["type"] != "websocket.disconnect":
                pass
            conn.outbox.put_nowait(None)

        listener = asyncio.create_task(until_the_page_leaves())
        try:
            await self._relay(websocket, conn)
        finally:
            listener.cancel()

    @staticmethod
    async def _relay(websocket: WebSocket, conn: FakeConnection) -> None:
        while True:
            item = await conn.outbox.get()
            if item is None:
                with contextlib.suppress(Exception):  # the page may have gone already
                    await websocket.close()
                return
            try:
                await websocket.send_text(json.dumps(item))
            except Exception:  # the page went away
                return

    def next_connection(self, timeout: float = 10) -> FakeConnection:
        return self.connections.get(timeout=timeout)


class FakeConnection:
    def __init__(
        self, workflow_id: str, query: Any, first: Any, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.workflow_id, self.first, self.loop = workflow_id, first, loop
        self.token, self.since = query.get("token"), query.get("since")
        self.outbox: asyncio.Queue[Any] = asyncio.Queue()

    def send(self, *messages: dict[str, Any]) -> None:
        """One frame per message."""
        for message in messages:
            self.loop.call_soon_threadsafe(self.outbox.put_nowait, message)

    def send_batch(self, *messages: dict[str, Any]) -> None:
        """One frame, a JSON array of the messages (as the service batches them)."""
        self.loop.call_soon_threadsafe(self.outbox.put_nowait, list(messages))

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):  # the server is gone already
            self.loop.call_soon_threadsafe(self.outbox.put_nowait, None)


class Messages:
    """Live messages of one made-up run, numbered like Redis numbers them."""

    def __init__(self, workflow_id: str) -> None:
        self.workflow_id = workflow_id
        self.trace_id = uuid.uuid4().hex
        self.seq = 0

    def __call__(
        self, type_: str, span_id: str, parent: str | None, kind: str, name: str, **attrs: Any
    ) -> dict[str, Any]:
        self.seq += 1
        return {
            "type": type_,
            "seq": self.seq,
            "workflow_id": self.workflow_id,
            "project_id": "default",
            "trace_id": self.trace_id,
            "span_id": span_id,
            "parent_span_id": parent,
            "kind": kind,
            "name": name,
            "timestamp": "",
            "time_unix_nano": time.time_ns(),
            "attributes": attrs,
            "service": "ui-test",
            "env": "test",
        }


@needs_chromium
def test_stream_contract_and_token(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    settings = _settings(graph_url, embedded_server.redis_url, tmp_path, api_token="s3cret")
    app = create_app(settings)
    stream = FakeStream.on(app)
    auth_headers: list[str | None] = []
    page.on(
        "request",
        lambda r: "/api/" in r.url and auth_headers.append(r.headers.get("authorization")),
    )
    workflow_id = str(uuid.uuid4())
    msg = Messages(workflow_id)
    root, step, llm, dec, opt = "a1" * 8, "b2" * 8, "c3" * 8, "d4" * 8, "e5" * 8
    connections: list[FakeConnection] = []
    with serve(app) as base:
        try:
            page.goto(base + "/")
            # The token is asked for once; a wrong one is refused and asked for again.
            dialog = page.locator("#token-dialog")
            expect(dialog).to_be_visible()
            page.fill("#token-input", "wrong")
            page.click("#token-form button[type=submit]")
            expect(page.locator("#token-error")).to_be_visible()
            page.fill("#token-input", "s3cret")
            page.click("#token-form button[type=submit]")
            expect(dialog).to_be_hidden()
            expect(page.locator("#runs-status")).to_contain_text("No runs match")
            assert auth_headers[-1] == "Bearer s3cret"
            assert page.evaluate("sessionStorage.getItem('spangraph.token')") == "s3cret"

            page.evaluate(f"location.hash = 'run={workflow_id}'")
            conn = stream.next_connection()
            connections.append(conn)
            assert (conn.workflow_id, conn.token) == (workflow_id, "s3cret")
            assert (conn.since, conn.first) == ("0", None)
            expect(page.locator("#conn")).to_have_attribute("data-transport", "live")

            conn.send_batch(
                {"type": "subscribed", "channel": f"spangraph:workflow:{workflow_id}", "since": 0},
                {"type": "heartbeat"},
                msg("span.started", root, None, "workflow", "scripted-run"),
                msg("span.started", step, root, "step", "fetch"),
                msg("step.started", step, root, "step", "fetch", attempt=1),
            )
            expect(state_of(page, "fetch")).to_have_text("running")
            expect(page.locator("#run-title")).to_have_text("scripted-run")
            expect(node(page, "fetch").locator(":scope > .row > a.jaeger")).to_have_attribute(
                "href", f"{JAEGER}/trace/{msg.trace_id}?uiFind={step}"
            )
            # a child nests under its parent
            expect(node(page, "scripted-run").locator('li[data-name="fetch"]')).to_have_count(1)

            conn.send(
                msg("span.ended", step, root, "step", "fetch", state="completed", duration_ms=12.5),
                msg("span.started", llm, root, "llm", "chat small-model"),
                msg("token", llm, root, "llm", "chat small-model", text="Hello ", index=0),
                msg("token", llm, root, "llm", "chat small-model", text="graph", index=1),
                msg(
                    "span.started",
                    dec,
                    root,
                    "decision",
                    "route",
                    **{"spangraph.decision.options": ["search", "ask-user"]},
                ),
                msg("span.started", opt, dec, "option", "search"),
            )
            expect(state_of(page, "fetch")).to_have_text("completed")
            expect(node(page, "fetch").locator(":scope > .row .dur")).to_have_text("12.5 ms")
            node(page, "chat small-model").locator(":scope > .row > .node-btn").click()
            expect(page.locator("#detail .tokens")).to_have_text("Hello graph")
            never = page.locator('#decisions .option[data-option="ask-user"]')
            expect(never).to_have_attribute("data-explored", "false")

            # The stream drops: the page polls meanwhile, then resumes after the last seq.
            last = msg.seq
            conn.close()
            conn = stream.next_connection()
            connections.append(conn)
            assert (conn.since, conn.first) == (str(last), None)
            stale = dict(msg("span.ended", step, root, "step", "fetch", state="failed"))
            stale["seq"] = last  # a message the page has seen: ignored
            msg.seq -= 1
            conn.send_batch(
                stale,
                msg("span.ended", opt, dec, "option", "search", state="completed", duration_ms=3.0),
                msg(
                    "span.ended",
                    dec,
                    root,
                    "decision",
                    "route",
                    state="completed",
                    duration_ms=4.0,
                    **{"spangraph.decision.chosen": "search"},
                ),
            )
            expect(page.locator('#decisions .option[data-option="search"]')).to_have_attribute(
                "data-chosen", "true"
            )
            expect(state_of(page, "fetch")).to_have_text("completed")
            # Redis lost its data: the service says the run's seq went back, and the
            # numbers after it are used again; the page takes them.
            conn.send({"type": "resumed", "detail": "seq went back", "since": 1})
            msg.seq = 1
            conn.send(msg("span.started", "ab" * 8, root, "step", "after-the-loss"))
            expect(node(page, "after-the-loss")).to_be_visible()
            conn.send(
                msg("span.ended", llm, root, "llm", "chat small-model", state="completed"),
                msg("span.ended", root, None, "workflow", "scripted-run", state="completed"),
            )
            expect(page.locator("#run-state .state")).to_have_text("completed")
            expect(page.locator("#conn")).to_have_attribute("data-transport", "done")
        finally:
            for c in connections:  # before the server stops
                c.close()


@needs_chromium
def test_parent_cycles_keep_the_tree(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """Spans that name each other (or themselves) as parents: each is shown once, the
    page raises nothing (an item cannot be nested inside itself) and goes on rendering."""
    from playwright.sync_api import expect

    app = create_app(_settings(graph_url, embedded_server.redis_url, tmp_path))
    stream = FakeStream.on(app)
    workflow_id = f"jobs/{uuid.uuid4().hex[:8]}"
    msg = Messages(workflow_id)
    root, a, b, own, child, late = "a1" * 8, "b2" * 8, "c3" * 8, "d4" * 8, "e5" * 8, "f6" * 8
    with serve(app) as base:
        page.goto(base + "/")
        page.evaluate(f"location.hash = 'run=' + encodeURIComponent({json.dumps(workflow_id)})")
        conn = stream.next_connection()
        try:
            assert conn.workflow_id == workflow_id
            conn.send_batch(
                {"type": "subscribed", "channel": f"spangraph:workflow:{workflow_id}", "since": 0},
                msg("span.started", root, None, "workflow", "cyclic-run"),
                # b names a (not seen yet) as parent, then a names b: a two-span cycle
                msg("span.started", b, a, "step", "loop-b"),
                msg("span.started", a, b, "step", "loop-a"),
                # a span that is its own parent, with a child of its own
                msg("span.started", own, own, "step", "own-parent"),
                msg("span.started", child, own, "step", "under-own"),
            )
            for name in ("cyclic-run", "loop-a", "loop-b", "own-parent", "under-own"):
                expect(node(page, name)).to_be_visible()
                expect(page.locator(f'#tree li.tree-item[data-name="{name}"]')).to_have_count(1)
            expect(node(page, "own-parent").locator('li[data-name="under-own"]')).to_have_count(1)
            # one of the cycle is nested under the other, never both
            nested = page.evaluate(
                """() => {
                  const li = (n) => document.querySelector(`#tree li[data-name="${n}"]`);
                  return [li("loop-a").contains(li("loop-b")), li("loop-b").contains(li("loop-a"))];
                }"""
            )
            assert sorted(nested) == [False, True]
            # the page keeps rendering what comes next
            conn.send(
                msg("span.ended", a, b, "step", "loop-a", state="completed", duration_ms=2.0),
                msg("span.started", late, root, "step", "after-the-cycle"),
            )
            expect(state_of(page, "loop-a")).to_have_text("completed")
            expect(
                node(page, "cyclic-run").locator('li[data-name="after-the-cycle"]')
            ).to_have_count(1)
        finally:
            conn.close()


# -- runs and spans written straight into the graph ----------------------------------------


def _write_spans(graph_url: str, spans: list[dict[str, Any]]) -> None:
    """Write finished (or, with ``state`` "running", unfinished) spans into the graph, as
    the graph worker leaves them. Each span: ``span_id``, ``name``, ``kind``,
    ``workflow_id``, ``start_ns``; optional ``parent``, ``state``, ``attributes``."""
    batch = WriteBatch()
    for span in spans:
        props: dict[str, Any] = {
            "trace_id": span.get("trace_id", "ab" * 16),
            "workflow_id": span["workflow_id"],
            "project_id": "default",
            "kind": span["kind"],
            "name": span["name"],
            "start_ns": span["start_ns"],
            "state": span.get("state", "completed"),
            "attributes": to_json(span.get("attributes", {})),
        }
        if span.get("parent"):
            props["parent_span_id"] = span["parent"]
        if props["state"] != "running":
            props["end_ns"] = span["start_ns"] + 1_000_000
            props["duration_ms"] = 1.0
            props["status"] = "ERROR" if props["state"] == "failed" else "OK"
        label = span["kind"].capitalize() if span["kind"] in ("workflow", "step") else None
        batch.ends.setdefault(label, []).append({"span_id": span["span_id"], "props": props})
    store = FalkorDBStore.from_url(graph_url)
    try:
        store.ensure_schema()
        store.write(batch)
    finally:
        store.close()


def _runs(names: list[str], start_ns: int, state: str = "completed") -> list[dict[str, Any]]:
    """Workflow spans named ``names``, one microsecond apart from ``start_ns`` on."""
    return [
        {
            "span_id": uuid.uuid4().hex[:16],
            "workflow_id": f"run-{uuid.uuid4().hex[:12]}",
            "kind": "workflow",
            "name": name,
            "start_ns": start_ns + 1000 * i,
            "state": state,
        }
        for i, name in enumerate(names)
    ]


def listed_names(page: Any) -> list[str]:
    return sorted(page.eval_on_selector_all("#runs li", "els => els.map(e => e.dataset.name)"))


@needs_chromium
def test_name_filter_searches_every_run(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """Runs whose name is typed in the filter are found however old they are: the
    service is asked for them (``name_contains``), not the newest 200 filtered."""
    from playwright.sync_api import expect

    t0 = 1_700_000_000_000_000_000
    old = _runs(["Nightly-Archive", "weekly-archive"], t0)
    old += _runs(["nightly-archive"], t0 + 10**9, state="failed")
    _write_spans(graph_url, old + _runs(["busy-poller"] * 205, t0 + 10**12))
    app = create_app(_settings(graph_url, embedded_server.redis_url, tmp_path))
    with serve(app) as base:
        page.goto(base + "/")
        expect(page.locator("#runs-status")).to_have_text("200 runs (the newest 200)")
        assert listed_names(page) == ["busy-poller"] * 200

        page.fill("#filter-name", "archive")
        expect(page.locator("#runs li")).to_have_count(3)
        assert listed_names(page) == ["Nightly-Archive", "nightly-archive", "weekly-archive"]
        expect(page.locator("#runs-status")).to_have_text("3 runs")

        page.fill("#filter-name", "NIGHTLY")  # any case
        expect(page.locator("#runs li")).to_have_count(2)
        page.select_option("#filter-state", "failed")
        expect(page.locator("#runs li")).to_have_count(1)
        expect(page.locator("#runs li")).to_have_attribute("data-name", "nightly-archive")

        page.select_option("#filter-state", "")
        page.fill("#filter-name", "no such run")
        expect(page.locator("#runs-status")).to_have_text("No runs match these filters.")
        page.fill("#filter-name", "")
        expect(page.locator("#runs li")).to_have_count(200)


@needs_chromium
def test_name_filter_typed_while_loading(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """A filter changed while the list for the one before is still loading is not lost
    (with auto-refresh off nothing would correct it): the list for the last one shows."""
    from playwright.sync_api import expect

    t0 = 1_700_000_000_000_000_000
    _write_spans(graph_url, _runs(["slow-one", "archive-a", "archive-b"], t0))
    page.add_init_script(
        """(() => {
          const fetch0 = window.fetch;
          window.fetch = async (url, options) => {
            if (String(url).includes("slow")) await new Promise((r) => setTimeout(r, 1500));
            return fetch0(url, options);
          };
        })()"""
    )
    app = create_app(_settings(graph_url, embedded_server.redis_url, tmp_path))
    with serve(app) as base:
        page.goto(base + "/")
        expect(page.locator("#runs li")).to_have_count(3)
        page.uncheck("#auto-refresh")
        page.fill("#filter-name", "slow")
        page.wait_for_timeout(600)  # its list is loading (for 1.5 s)
        page.fill("#filter-name", "archive")
        page.wait_for_timeout(2500)
        expect(page.locator("#runs li")).to_have_count(2)
        assert listed_names(page) == ["archive-a", "archive-b"]


@needs_chromium
def test_graph_reads_of_a_run_never_overlap(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """While the live stream is unavailable the page polls the graph every 2 s; with a
    service slower than that, the reads do not pile up (nor land out of order): one at a
    time, and one more after it when it was asked for meanwhile."""
    from playwright.sync_api import expect

    page.add_init_script(
        """(() => {
          const fetch0 = window.fetch;
          const t = (window.__tree = { now: 0, max: 0, calls: 0 });
          window.fetch = async (url, options) => {
            if (!String(url).endsWith("/tree")) return fetch0(url, options);
            t.now += 1; t.calls += 1; t.max = Math.max(t.max, t.now);
            try {
              await new Promise((r) => setTimeout(r, 2500));
              return await fetch0(url, options);
            } finally {
              t.now -= 1;
            }
          };
        })()"""
    )
    app = create_app(_settings(graph_url, "off", tmp_path))  # no stream: the page polls
    with serve(app) as base:
        page.goto(base + "/")
        page.evaluate("location.hash = 'run=slow-service-run'")
        expect(page.locator("#conn")).to_have_attribute("data-transport", "polling")
        page.wait_for_timeout(6500)
        tree = page.evaluate("window.__tree")
    assert tree["calls"] >= 2  # it went on polling
    assert tree["max"] == 1


ODD_KEYS = ("__proto__", "constructor", "hasOwnProperty", "toString", "valueOf")
HTML = '<img src="x" onerror="window.__xss = 1">'


@needs_chromium
def test_odd_attribute_keys_are_shown(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """Attribute keys that are names of JavaScript's object machinery are listed like
    any other key, whether the span came from the graph (the REST tree) or the stream;
    span names, keys and values that look like HTML are shown as text."""
    from playwright.sync_api import expect

    app = create_app(_settings(graph_url, embedded_server.redis_url, tmp_path))
    stream = FakeStream.on(app)
    workflow_id = f"odd-{uuid.uuid4().hex[:8]}"
    msg = Messages(workflow_id)
    root, stored, live = "a1" * 8, "b2" * 8, "c3" * 8
    now = time.time_ns()
    stored_attrs = {k: f"{k}-stored" for k in ODD_KEYS}
    stored_attrs[HTML] = HTML
    _write_spans(
        graph_url,
        [
            {
                "span_id": root,
                "workflow_id": workflow_id,
                "kind": "workflow",
                "name": "odd-run",
                "start_ns": now,
                "state": "running",
                "trace_id": msg.trace_id,
            },
            {
                "span_id": stored,
                "parent": root,
                "workflow_id": workflow_id,
                "kind": "step",
                "name": "odd-stored",
                "start_ns": now + 1000,
                "trace_id": msg.trace_id,
                "attributes": stored_attrs,
            },
        ],
    )
    live_attrs = {k: f"{k}-live" for k in ODD_KEYS}
    live_attrs[HTML] = HTML

    def attributes(name: str) -> dict[str, str]:
        node(page, name).locator(":scope > .row > .node-btn").click()
        expect(page.locator("#detail-title")).to_have_text(name)
        expect(page.locator("#detail table.attrs")).to_be_visible()
        rows = page.eval_on_selector_all(
            "#detail table.attrs tr",
            "rows => rows.map(r => [r.querySelector('th').textContent, "
            "r.querySelector('td').textContent])",
        )
        return dict(rows)

    with serve(app) as base:
        page.goto(base + "/")
        page.evaluate(f"location.hash = 'run={workflow_id}'")
        conn = stream.next_connection()
        try:
            expect(state_of(page, "odd-stored")).to_have_text("completed")
            assert attributes("odd-stored") == stored_attrs
            expect(page.locator("#detail h3").first).to_have_text(
                f"Attributes ({len(stored_attrs)})"
            )

            conn.send(
                msg("span.started", live, root, "step", "odd-live", **live_attrs),
                msg("tool.call", live, root, "step", "odd-live", **live_attrs),
                msg("span.started", "d4" * 8, root, "step", HTML),
                {**msg("span.started", "e5" * 8, root, "step", "odd-trace"), "trace_id": "../x?y#"},
                {**msg("span.started", "f6" * 8, root, "step hidden", "odd-kind"), "state": "x y"},
            )
            expect(state_of(page, "odd-live")).to_have_text("running")
            assert attributes("odd-live") == live_attrs
            event = page.locator('#detail .event[data-name="tool.call"] dt')
            expect(event).to_have_text(list(live_attrs))
            expect(page.locator("#tree .name", has_text=HTML)).to_have_count(1)
            # an odd trace id stays inside the Jaeger link's path
            expect(node(page, "odd-trace").locator(":scope > .row > a.jaeger")).to_have_attribute(
                "href", f"{JAEGER}/trace/..%2Fx%3Fy%23?uiFind={'e5' * 8}"
            )
            # a kind or state with spaces is one class name (it cannot add classes)
            badges = node(page, "odd-kind").locator(":scope > .row .badge")
            expect(badges.first).to_have_text("step hidden")
            classes = badges.evaluate_all("els => els.map(e => [...e.classList])")
            assert classes[0] == ["badge", "kind", "kind-step_hidden"]
            assert not any("hidden" in c for c in classes)
            # the stored span again: the live one's keys did not leak into it
            assert attributes("odd-stored") == stored_attrs
            assert page.locator("img").count() == 0
            assert page.evaluate("window.__xss") is None
        finally:
            conn.close()


@needs_chromium
def test_live_decision_panels_nested_and_not_text(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """Live, before the graph has the run: an outer decision's option explored inside an
    inner decision is the outer's (before: listed as a third option of the inner), and
    options offered as booleans match the option spans named "true"/"false" (before:
    four options, the explored and chosen one shown unexplored)."""
    from playwright.sync_api import expect

    app = create_app(_settings(graph_url, embedded_server.redis_url, tmp_path))
    stream = FakeStream.on(app)
    workflow_id = str(uuid.uuid4())
    msg = Messages(workflow_id)
    root, outer, inner, opt, flags, yes = (
        "a1" * 8,
        "b2" * 8,
        "c3" * 8,
        "d4" * 8,
        "e5" * 8,
        "f6" * 8,
    )
    with serve(app) as base:
        page.goto(base + "/")
        page.evaluate(f"location.hash = 'run={workflow_id}'")
        conn = stream.next_connection()
        try:
            conn.send_batch(
                {"type": "subscribed", "channel": f"spangraph:workflow:{workflow_id}", "since": 0},
                msg("span.started", root, None, "workflow", "decisive-run"),
                msg(
                    "span.started",
                    outer,
                    root,
                    "decision",
                    "outer",
                    **{"spangraph.decision.options": ["a", "b"]},
                ),
                msg(
                    "span.started",
                    inner,
                    outer,
                    "decision",
                    "inner",
                    **{"spangraph.decision.options": ["x", "y"]},
                ),
                msg("span.started", opt, inner, "option", "a"),
                msg(
                    "span.started",
                    flags,
                    root,
                    "decision",
                    "flags",
                    **{"spangraph.decision.options": [True, False]},
                ),
                msg("span.started", yes, flags, "option", "true"),
                msg(
                    "span.ended",
                    flags,
                    root,
                    "decision",
                    "flags",
                    state="completed",
                    **{
                        "spangraph.decision.options": [True, False],
                        "spangraph.decision.chosen": True,
                    },
                ),
            )
            decisions = page.locator("#decisions")
            inner_box = decisions.locator('.decision[data-name="inner"] .option')
            expect(inner_box).to_have_count(2)
            assert inner_box.evaluate_all("els => els.map(e => e.dataset.option)") == ["x", "y"]
            a = decisions.locator('.decision[data-name="outer"] .option[data-option="a"]')
            expect(a).to_have_attribute("data-explored", "true")
            flag_box = decisions.locator('.decision[data-name="flags"] .option')
            expect(flag_box).to_have_count(2)
            chosen = decisions.locator('.decision[data-name="flags"] .option[data-option="true"]')
            expect(chosen).to_have_attribute("data-explored", "true")
            expect(chosen).to_have_attribute("data-chosen", "true")
        finally:
            conn.close()
