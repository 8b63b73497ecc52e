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
- ``test_deep_tree_rows_stay_readable`` .. ``test_big_integer_attributes_keep_their_digits``:
  a deep tree at 1280x800, Back to the start page, the skip link, a reused workflow_id,
  long names, a run without a workflow span, a right-to-left override in a run id,
  durations and multi-line errors, whole numbers beyond 2^53.
- ``test_a_large_run_loads_and_polls_in_linear_time``: a 2 000-span run costs the page
  work in proportion to it (counted, not timed), a graph read with nothing new none;
  ``test_siblings_keep_start_order_whatever_order_they_come_in``: the order of siblings
  that come out of order; ``test_unnamed_spans_read_unnamed``,
  ``test_options_never_explored_have_no_jaeger_link``.
- ``test_the_run_tree_is_an_aria_tree_with_one_tab_stop``, ``test_the_run_tree_keys``,
  ``test_live_updates_keep_one_tab_stop_and_the_focus``: the run tree as a WAI-ARIA tree
  (roles, levels, places in their sets, expanded, selected) with one Tab stop, its keys,
  and live rows that keep both, and the focus where it is.
- ``test_a_run_thousands_of_levels_deep_opens``: a run 2 000 levels deep shows down to
  its deepest span, as an ARIA tree; ``test_an_error_without_a_message_reads_its_type_alone``.
- ``test_a_failed_run_says_what_failed`` .. ``test_names_keys_and_statuses_read_plainly``:
  a failed run's error in its header and in the runs list, the attempts of a retried
  step, the page at a phone's size and a big run below 1 100 px, model calls still
  running, the focus ring's contrast, names, attribute keys and statuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import re
import socket
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

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

    sock = socket.socket()  # bound here and handed over: no one else can take the port
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="ui-test-uvicorn", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive(), "uvicorn exited during startup"
            assert time.monotonic() < deadline, "uvicorn did not start in 20 s"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


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
    context = browser.new_context(viewport={"width": 1280, "height": 800}, locale="en-US")
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


def configure_sdk(graph_url: str, embedded_server: Any, home: Path) -> None:
    """spangraph on a TracerProvider of the test's own, writing where the app reads."""
    spangraph.configure(
        tracer_provider=TracerProvider(),
        graph_url=graph_url,
        redis_url=embedded_server.redis_url,
        home=str(home),
        instrument_threads=False,
    )


@contextlib.contextmanager
def recording(graph_url: str, embedded_server: Any, home: Path) -> Iterator[None]:
    """spangraph configured (:func:`configure_sdk`) for the block, which records a run;
    everything flushed at its end, and spangraph shut down however it ends."""
    configure_sdk(graph_url, embedded_server, home)
    try:
        yield
        assert spangraph.flush(10)
    finally:
        spangraph.shutdown()


@contextlib.contextmanager
def serving(graph_url: str, embedded_server: Any, home: Path) -> Iterator[str]:
    """The app on what :func:`recording` wrote, served: its base URL."""
    with serve(create_app(_settings(graph_url, embedded_server.redis_url, home))) as base:
        yield base


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
    configure_sdk(graph_url, embedded_server, tmp_path)
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


def subscribed_message(workflow_id: str) -> dict[str, Any]:
    """The service's first message on a run's stream (from seq 0)."""
    return {"type": "subscribed", "channel": f"spangraph:workflow:{workflow_id}", "since": 0}


def watch(page: Any, base: str, stream: FakeStream, workflow_id: str) -> FakeConnection:
    """Open the page on the run ``workflow_id``; its stream connection."""
    page.goto(base + "/")
    page.evaluate(f"location.hash = 'run={workflow_id}'")
    return stream.next_connection()


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
                subscribed_message(workflow_id),
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
def test_span_events_named_like_the_services_messages_are_the_spans(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """A span event may have any name (another program's, over OTLP): one named "error"
    turned the badge to a stream error, one named "heartbeat" or "resumed" was dropped.
    The service's own messages are those without a span."""
    from playwright.sync_api import expect

    app = create_app(_settings(graph_url, embedded_server.redis_url, tmp_path))
    stream = FakeStream.on(app)
    workflow_id = str(uuid.uuid4())
    msg = Messages(workflow_id)
    root = "f1" * 8
    with serve(app) as base:
        conn = watch(page, base, stream, workflow_id)
        try:
            conn.send_batch(
                subscribed_message(workflow_id),
                msg("span.started", root, None, "workflow", "odd-events"),
            )
            expect(node(page, "odd-events")).to_be_visible()
            expect(page.locator("#conn")).to_have_attribute("data-transport", "live")
            conn.send(
                msg("error", root, None, "workflow", "odd-events", reason="a span's own"),
                msg("heartbeat", root, None, "workflow", "odd-events"),
            )
            node(page, "odd-events").locator(":scope > .row > .node-btn").click()
            expect(page.locator("#detail")).to_contain_text("heartbeat")
            expect(page.locator("#conn")).to_have_attribute("data-transport", "live")
            conn.send({"type": "error", "detail": "Redis went away"})  # the service's own
            expect(page.locator("#conn")).to_have_attribute("data-transport", "error")
        finally:
            conn.close()


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
                subscribed_message(workflow_id),
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
    ``workflow_id``, ``start_ns``; optional ``parent``, ``state``, ``attributes``,
    ``duration_ms`` (else 1 ms), ``status`` (else ERROR when failed, else OK),
    ``status_message``, ``trace_id``, ``execution_id``."""
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
        if span.get("execution_id"):
            props["execution_id"] = span["execution_id"]
        if props["state"] != "running":
            props["duration_ms"] = span.get("duration_ms", 1.0)
            props["end_ns"] = span["start_ns"] + round(props["duration_ms"] * 1e6)
            props["status"] = span.get("status", "ERROR" if props["state"] == "failed" else "OK")
        if span.get("status_message"):
            props["status_message"] = span["status_message"]
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


@needs_chromium
def test_a_hint_under_the_tree_goes_once_the_run_is_read(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """Polling (no live stream), a run opened before its first span was written: "Waiting
    for the run's first spans…" stayed under the whole tree once it came (and so did
    "Could not load the run: …" after a failed read); only a live message hid it."""
    from playwright.sync_api import expect

    workflow_id = f"late-{uuid.uuid4().hex[:8]}"
    app = create_app(_settings(graph_url, "off", tmp_path))  # no stream: the page polls
    with serve(app) as base:
        page.goto(base + "/")
        page.evaluate(f"location.hash = 'run={workflow_id}'")
        expect(page.locator("#conn")).to_have_attribute("data-transport", "polling")
        hint = page.locator("#tree-empty")
        expect(hint).to_contain_text("Waiting for the run's first spans")
        spangraph.configure(
            tracer_provider=TracerProvider(),
            graph_url=graph_url,
            redis_url="off",
            home=str(tmp_path),
            instrument_threads=False,
        )
        try:
            with spangraph.workflow("late-run", workflow_id=workflow_id):
                pass
            assert spangraph.flush(10)
        finally:
            spangraph.shutdown()
        expect(node(page, "late-run")).to_be_visible()
        expect(hint).to_be_hidden()


@needs_chromium
def test_escape_on_the_first_token_dialog_says_nothing_was_refused(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """The dialog could be dismissed before the page listened for it, and then came back
    saying "That token was refused", though no token had been given."""
    from playwright.sync_api import expect

    app = create_app(_settings(graph_url, "off", tmp_path, api_token="s3cret"))
    with serve(app) as base:
        page.goto(base + "/")
        dialog = page.locator("#token-dialog")
        expect(dialog).to_be_visible()
        page.keyboard.press("Escape")
        page.wait_for_timeout(300)
        expect(dialog).to_be_visible()  # there is no token to go on with
        expect(page.locator("#token-error")).to_be_hidden()
        page.fill("#token-input", "s3cret")
        page.click("#token-form button[type=submit]")
        expect(dialog).to_be_hidden()
        expect(page.locator("#runs-status")).not_to_contain_text("Could not")


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
        conn = watch(page, base, stream, workflow_id)
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
        conn = watch(page, base, stream, workflow_id)
        try:
            conn.send_batch(
                subscribed_message(workflow_id),
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


# -- layout, routes and odd data (fixes found by review) ------------------------------------


def _span(
    workflow_id: str, span_id: str, name: str, kind: str = "step", **extra: Any
) -> dict[str, Any]:
    """A span for ``_write_spans``, started now (plus ``start`` ns) unless told."""
    start = extra.pop("start", 0)
    return {
        "span_id": span_id,
        "workflow_id": workflow_id,
        "kind": kind,
        "name": name,
        "start_ns": extra.pop("start_ns", time.time_ns() + start),
        **extra,
    }


def open_run(page: Any, base: str, workflow_id: str) -> None:
    """The start page, then the run (``#run=<id>``, a route change like a click)."""
    page.goto(base + "/")
    page.evaluate(f"location.hash = 'run=' + encodeURIComponent({json.dumps(workflow_id)})")


def _simple_run(graph_url: str, name: str = "simple-run") -> str:
    """A finished run in the graph: a workflow span with one step under it."""
    return _flat_run(graph_url, name, ["only-step"], start=1000)


def _flat_run(
    graph_url: str, name: str, steps: list[str], *, start: int = 0, before: Sequence[Any] = ()
) -> str:
    """A finished run in the graph: a workflow span with ``steps`` under it, started
    ``start`` ns apart from the first on (``before``: other spans written with it)."""
    workflow_id = f"{name[:12]}-{uuid.uuid4().hex[:8]}"
    root = uuid.uuid4().hex[:16]
    _write_spans(
        graph_url,
        [
            *before,
            _span(workflow_id, root, name, "workflow"),
            *(
                _span(workflow_id, uuid.uuid4().hex[:16], step, parent=root, start=start + i)
                for i, step in enumerate(steps)
            ),
        ],
    )
    return workflow_id


@needs_chromium
def test_deep_tree_rows_stay_readable(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """At 1280x800, a chain 16 levels deep: every row keeps its name visible and its
    name, state, duration and Jaeger link side by side, not on top of each other (before:
    from the 8th level on the name was 0 px wide, from the 9th the rest overlapped). The
    tree scrolls sideways instead."""
    from playwright.sync_api import expect

    workflow_id = f"deep-{uuid.uuid4().hex[:8]}"
    ids = [uuid.uuid4().hex[:16] for _ in range(16)]
    spans = [_span(workflow_id, ids[0], "level-00", "workflow")]
    for depth in range(1, 16):
        spans.append(
            _span(workflow_id, ids[depth], f"level-{depth:02}", parent=ids[depth - 1], start=depth)
        )
    _write_spans(graph_url, spans)
    app = create_app(_settings(graph_url, embedded_server.redis_url, tmp_path))
    with serve(app) as base:
        open_run(page, base, workflow_id)
        expect(page.locator("#tree li.tree-item")).to_have_count(16)
        expect(state_of(page, "level-15")).to_have_text("completed")
        rows = page.eval_on_selector_all(
            "#tree li.tree-item > .row",
            """rows => rows.map((row) => {
              const box = (sel) => {
                const r = row.querySelector(sel).getBoundingClientRect();
                return [r.left, r.right];
              };
              const name = row.querySelector(".name");
              return {
                name: name.textContent,
                cut: name.scrollWidth > name.clientWidth || name.clientWidth === 0,
                parts: [box(".name"), box(".state"), box(".dur"), box(":scope > .jaeger")],
              };
            })""",
        )
    assert [r["name"] for r in rows] == [f"level-{d:02}" for d in range(16)]
    for row in rows:
        assert not row["cut"], row  # the whole name is shown
        for (_, right), (left, _) in zip(row["parts"], row["parts"][1:], strict=False):
            assert right <= left + 0.5, row  # in order, not overlapping
    assert page.evaluate("document.getElementById('tree').scrollWidth") > page.evaluate(
        "document.getElementById('tree').clientWidth"
    )


@needs_chromium
def test_back_to_the_start_page_clears_the_run(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """Back from a run to the start page (no ``#run=``): no run is shown (before: the
    last run stayed on screen, dead, its badge still saying how it was updated)."""
    from playwright.sync_api import expect

    workflow_id = _simple_run(graph_url, "back-run")
    app = create_app(_settings(graph_url, embedded_server.redis_url, tmp_path))
    with serve(app) as base:
        page.goto(base + "/")
        item = page.locator(f'#runs li[data-workflow-id="{workflow_id}"] button')
        item.click()
        expect(page.locator("#run-title")).to_have_text("back-run")
        expect(page.locator("#conn")).to_have_attribute("data-transport", "done")
        node(page, "only-step").locator(":scope > .row > .node-btn").click()
        expect(page.locator("#detail-title")).to_have_text("only-step")
        expect(item).to_have_attribute("aria-current", "true")

        page.go_back()  # the node's selection replaced the run's entry: back to the start
        expect(page.locator("#run-title")).to_have_text("No run selected")
        assert page.evaluate("location.hash") == ""
        expect(page.locator("#tree li.tree-item")).to_have_count(0)
        expect(page.locator("#run-meta")).to_contain_text("Pick a run on the left")
        expect(page.locator("#run-state")).to_be_empty()
        expect(page.locator("#run-jaeger")).to_be_hidden()
        expect(page.locator("#conn")).to_have_attribute("data-transport", "idle")
        expect(page.locator("#conn")).to_have_text("no run open")
        expect(page.locator("#detail-title")).to_have_text("Node")
        expect(page.locator("#decisions")).to_have_text("none")
        expect(item).not_to_have_attribute("aria-current", "true")

        item.click()  # and the run opens again
        expect(page.locator("#run-title")).to_have_text("back-run")
        expect(node(page, "only-step")).to_be_visible()


@needs_chromium
def test_skip_link_keeps_the_run(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """ "Skip to the run tree" moves the focus to the tree and leaves the address alone
    (before: it set ``#tree``, which the router read as "no run" and closed the run)."""
    from playwright.sync_api import expect

    workflow_id = _simple_run(graph_url, "skip-run")
    app = create_app(_settings(graph_url, embedded_server.redis_url, tmp_path))
    with serve(app) as base:
        open_run(page, base, workflow_id)
        expect(page.locator("#run-title")).to_have_text("skip-run")
        expect(node(page, "only-step")).to_be_visible()
        before = page.evaluate("location.hash")
        page.keyboard.press("Tab")
        expect(page.locator("a.skip")).to_be_focused()
        page.keyboard.press("Enter")
        expect(page.locator("#tree")).to_be_focused()
        assert page.evaluate("location.hash") == before
        # another hash without run= (an in-page link) is no route either
        page.evaluate("location.hash = 'tree'")
        page.wait_for_function("location.hash === '#tree'")
        node(page, "only-step").locator(":scope > .row > .node-btn").click()
        expect(page.locator("#detail-title")).to_have_text("only-step")  # the run is alive
        expect(page.locator("#run-title")).to_have_text("skip-run")


@needs_chromium
def test_reused_workflow_id_shows_the_running_run(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """A workflow_id given twice (the SDK takes a user-given id as it is): the list shows
    both runs with their own states, and the page shows the running one, live, until it
    ends (before: one entry, and the page showed the first run, finished, never live)."""
    from playwright.sync_api import expect

    workflow_id = f"job-{uuid.uuid4().hex[:8]}"
    first, second = "a1" * 8, "b2" * 8
    t0 = time.time_ns() - 60 * 10**9
    _write_spans(
        graph_url,
        [
            _span(workflow_id, first, "job attempt 1", "workflow", start_ns=t0),
            _span(workflow_id, "c3" * 8, "a1", parent=first, start_ns=t0 + 1000),
            _span(workflow_id, second, "job attempt 2", "workflow", state="running"),
            _span(workflow_id, "d4" * 8, "b0", parent=second, start=1000),
        ],
    )
    app = create_app(_settings(graph_url, embedded_server.redis_url, tmp_path))
    stream = FakeStream.on(app)
    msg = Messages(workflow_id)
    with serve(app) as base:
        page.goto(base + "/")
        entries = page.locator(f'#runs li[data-workflow-id="{workflow_id}"]')
        expect(entries).to_have_count(2)
        assert entries.evaluate_all("els => els.map(e => [e.dataset.name, e.dataset.state])") == [
            ["job attempt 2", "running"],
            ["job attempt 1", "completed"],
        ]
        entries.first.get_by_role("button").click()
        conn = stream.next_connection()
        try:
            expect(page.locator("#run-title")).to_have_text("job attempt 2")
            expect(page.locator("#run-state .state")).to_have_text("running")
            expect(page.locator("#conn")).to_have_attribute("data-transport", "live")
            expect(page.locator("#tree li.tree-item")).to_have_count(4)
            conn.send(msg("span.ended", second, None, "workflow", "job attempt 2", state="failed"))
            expect(page.locator("#run-state .state")).to_have_text("failed")
            expect(page.locator("#conn")).to_have_attribute("data-transport", "done")
        finally:
            conn.close()


@needs_chromium
def test_an_ended_run_whose_id_is_used_again_is_followed(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """The page was left on a run that ended; its id (a job's) was used again by a new
    run: the list showed the new one running, the page stayed on the old one, and
    clicking the new entry did nothing (before: only a reload showed it)."""
    from playwright.sync_api import expect

    workflow_id = f"job-{uuid.uuid4().hex[:8]}"
    first, second = "a1" * 8, "b2" * 8
    t0 = time.time_ns() - 60 * 10**9
    _write_spans(graph_url, [_span(workflow_id, first, "job attempt 1", "workflow", start_ns=t0)])
    app = create_app(_settings(graph_url, embedded_server.redis_url, tmp_path))
    stream = FakeStream.on(app)
    with serve(app) as base:
        open_run(page, base, workflow_id)
        expect(page.locator("#run-title")).to_have_text("job attempt 1")
        expect(page.locator("#conn")).to_have_attribute("data-transport", "done")
        _write_spans(
            graph_url, [_span(workflow_id, second, "job attempt 2", "workflow", state="running")]
        )
        page.locator("#runs-refresh").click()
        conn = stream.next_connection()
        try:
            expect(page.locator("#run-title")).to_have_text("job attempt 2")
            expect(page.locator("#run-state .state")).to_have_text("running")
            expect(page.locator("#conn")).to_have_attribute("data-transport", "live")
        finally:
            conn.close()


@needs_chromium
def test_long_names_stay_in_their_panels(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """Names without spaces, longer than a panel is wide: a decision's options and the
    branches wrap inside their own column, and a long run title is cut (its full text in
    ``title``) so "Open in Jaeger" stays on screen (before: they ran over each other)."""
    from playwright.sync_api import expect

    app = create_app(_settings(graph_url, embedded_server.redis_url, tmp_path))
    stream = FakeStream.on(app)
    workflow_id = str(uuid.uuid4())
    msg = Messages(workflow_id)
    title = "nightly_" + "x" * 150
    options = ["option_" + "a" * 90, "option_" + "b" * 90]
    root, dec, opt, branch = "a1" * 8, "b2" * 8, "c3" * 8, "d4" * 8
    with serve(app) as base:
        open_run(page, base, workflow_id)
        conn = stream.next_connection()
        try:
            conn.send_batch(
                msg("span.started", root, None, "workflow", title),
                msg(
                    "span.started",
                    dec,
                    root,
                    "decision",
                    "choose_" + "d" * 80,
                    **{"spangraph.decision.options": options},
                ),
                msg("span.started", opt, dec, "option", options[0]),
                msg(
                    "span.started",
                    branch,
                    root,
                    "branch",
                    "branch_" + "e" * 100,
                    **{"spangraph.branch.id": "br-1"},
                ),
            )
            expect(page.locator("#decisions .option")).to_have_count(2)
            expect(page.locator("#branches .branch")).to_have_count(1)
            expect(page.locator("#run-title")).to_have_attribute("title", title)
            expect(page.locator("#run-jaeger")).to_be_visible()
            found = page.evaluate(
                """() => {
                  const box = (el) => el.getBoundingClientRect();
                  const [decisions, branches, monitors] = [...document.querySelectorAll(
                    ".insights > section")].map(box);
                  const inside = (sel, col) => [...document.querySelectorAll(sel)].map(
                    (el) => box(el).right <= col.right + 0.5 && box(el).left >= col.left - 0.5);
                  const panel = box(document.querySelector(".run-panel"));
                  return {
                    columns: decisions.right <= branches.left && branches.right <= monitors.left,
                    options: inside(
                      "#decisions .option-name, #decisions .decision-name, #decisions .state, "
                      + "#decisions .option-status", decisions),
                    branches: inside("#branches .branch-name, #branches .state", branches),
                    jaeger: box(document.getElementById("run-jaeger")).right <= panel.right,
                    title: box(document.getElementById("run-title")).right <= panel.right,
                  };
                }"""
            )
            assert found == {
                "columns": True,
                "options": [True] * 6,
                "branches": [True, True],
                "jaeger": True,
                "title": True,
            }, found
            # the node panel's heading too: cut, with the whole name in its title
            node(page, title).locator(":scope > .row").click()
            expect(page.locator("#detail-title")).to_have_attribute("title", title)
            heading_inside = page.evaluate(
                """() => document.getElementById("detail-title").getBoundingClientRect().right
                     <= document.querySelector(".detail-panel").getBoundingClientRect().right"""
            )
            assert heading_inside
        finally:
            conn.close()


@needs_chromium
def test_run_without_a_workflow_span(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """Plain OTLP spans that carry ``spangraph.workflow.id`` but no workflow span: the
    span without a parent heads the run, and its end ends the run (before: "Loading…"
    for ever, and live for ever)."""
    from playwright.sync_api import expect

    workflow_id = f"otlp-{uuid.uuid4().hex[:8]}"
    root = "a1" * 8
    _write_spans(
        graph_url,
        [
            _span(workflow_id, root, "plain-root", "span", state="running"),
            _span(workflow_id, "b2" * 8, "plain-child", parent=root, start=1000),
            _span(f"{workflow_id}-done", "c3" * 8, "plain-done", "span"),
            _span(f"{workflow_id}-done", "d4" * 8, "done-child", parent="c3" * 8, start=1),
        ],
    )
    app = create_app(_settings(graph_url, embedded_server.redis_url, tmp_path))
    stream = FakeStream.on(app)
    msg = Messages(workflow_id)
    with serve(app) as base:
        open_run(page, base, workflow_id)
        conn = stream.next_connection()
        try:
            expect(page.locator("#run-title")).to_have_text("plain-root")
            expect(page.locator("#run-state .state")).to_have_text("running")
            expect(page.locator("#conn")).to_have_attribute("data-transport", "live")
            conn.send(msg("span.ended", root, None, "span", "plain-root", state="completed"))
            expect(page.locator("#run-state .state")).to_have_text("completed")
            expect(page.locator("#conn")).to_have_attribute("data-transport", "done")
        finally:
            conn.close()
        # such a run opened when it has ended: finished at once
        page.evaluate(f"location.hash = 'run={workflow_id}-done'")
        expect(page.locator("#run-title")).to_have_text("plain-done")
        expect(page.locator("#run-state .state")).to_have_text("completed")
        expect(page.locator("#conn")).to_have_attribute("data-transport", "done")


@needs_chromium
def test_a_trace_or_span_id_opens_its_run(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """A run traced over OTLP goes by its trace id until its top span arrives, and by
    the workflow's id after: a page opened at the trace id waited for ever ("Waiting for
    the run's first spans"). It now opens the run the id belongs to; a span id opens
    the run at that span."""
    from playwright.sync_api import expect

    workflow_id = f"jobs/late-{uuid.uuid4().hex[:8]}"
    trace_id = uuid.uuid4().hex
    root, child = uuid.uuid4().hex[:16], uuid.uuid4().hex[:16]
    _write_spans(
        graph_url,
        [
            _span(workflow_id, root, "late-run", "workflow", trace_id=trace_id),
            _span(workflow_id, child, "late-child", parent=root, start=1000, trace_id=trace_id),
        ],
    )
    app = create_app(_settings(graph_url, embedded_server.redis_url, tmp_path))
    with serve(app) as base:
        open_run(page, base, trace_id)
        expect(page.locator("#run-title")).to_have_text("late-run")
        expect(page.locator("#tree li.tree-item")).to_have_count(2)
        assert page.evaluate("location.hash") == "#run=" + quote(workflow_id, safe="")
        open_run(page, base, child)
        expect(page.locator("#detail-title")).to_have_text("late-child")
        assert page.evaluate("decodeURIComponent(location.hash)") == (
            f"#run={workflow_id}&node={child}"
        )
        expect(page.locator("#tree-empty")).to_be_hidden()
        # a link the page made while the run went by its trace id keeps its node
        page.goto(f"{base}/")
        page.evaluate(f"location.hash = 'run={trace_id}&node={child}'")
        expect(page.locator("#detail-title")).to_have_text("late-child")
        assert page.evaluate("decodeURIComponent(location.hash)") == (
            f"#run={workflow_id}&node={child}"
        )


@needs_chromium
def test_the_runs_of_the_execution_are_listed_in_the_header(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """A run resumed in another trace (a LangGraph thread's next turn, a job resumed after
    a crash) had nothing in the UI leading to the run before it or after it: the header
    lists the runs of its execution, oldest first, each other one a link."""
    from playwright.sync_api import expect

    thread = f"thread-{uuid.uuid4().hex[:8]}"
    ids = [f"turn-{i}-{uuid.uuid4().hex[:6]}" for i in range(3)]
    _write_spans(
        graph_url,
        [
            _span(ids[0], uuid.uuid4().hex[:16], "chat", "workflow", start=0,
                  execution_id=thread, attributes={"langgraph.interrupted": True}),
            _span(ids[1], uuid.uuid4().hex[:16], "chat", "workflow", start=1000,
                  execution_id=thread, state="failed", status_message="boom"),
            _span(ids[2], uuid.uuid4().hex[:16], "chat", "workflow", start=2000,
                  execution_id=thread),
            _span("alone-" + ids[0], uuid.uuid4().hex[:16], "alone", "workflow"),
        ],
    )  # fmt: skip
    app = create_app(_settings(graph_url, embedded_server.redis_url, tmp_path))
    with serve(app) as base:
        open_run(page, base, ids[1])
        nav = page.locator("#run-execution")
        expect(nav).to_be_visible()
        expect(nav).to_have_text(
            f"Execution {thread} (3 runs): chat, completed (paused) → this run: chat, failed"
            " → chat, completed"
        )
        expect(nav.locator("[aria-current=page]")).to_have_attribute("title", ids[1])
        nav.get_by_role("link").last.click()
        expect(page.locator("#run-meta")).to_contain_text(ids[2])
        expect(nav.locator("[aria-current=page]")).to_have_attribute("title", ids[2])
        # the run that stopped at an interrupt no longer waits: its thread went on
        nav.get_by_role("link").first.click()
        expect(page.locator("#run-meta")).to_contain_text(
            "interrupted; the thread went on in a later run"
        )
        expect(page.locator("#run-meta")).not_to_contain_text("waiting")
        # a run older than the newest 50 of its execution: said so, first
        long_thread = f"long-{uuid.uuid4().hex[:8]}"
        turns = [f"{long_thread}-{i:02}" for i in range(52)]
        _write_spans(
            graph_url,
            [
                _span(turn, uuid.uuid4().hex[:16], "turn", "workflow", start=i * 1000,
                      execution_id=long_thread)
                for i, turn in enumerate(turns)
            ],
        )  # fmt: skip
        open_run(page, base, turns[0])
        expect(nav).to_contain_text(
            f"Execution {long_thread} (the newest 50 runs): this run → … → turn, completed"
        )
        expect(nav.get_by_role("link")).to_have_count(50)
        # a run alone in its execution (its own id): no such line
        open_run(page, base, "alone-" + ids[0])
        expect(page.locator("#run-title")).to_have_text("alone")
        expect(nav).to_be_hidden()


@needs_chromium
def test_a_failing_read_of_the_execution_s_runs_is_not_repeated_at_each_refresh(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """While ``/api/workflows?execution_id=`` failed, the page asked again at every read
    of the run (every 2 s while polling): at most every 15 s, answered or not."""
    from playwright.sync_api import expect

    thread = f"thread-{uuid.uuid4().hex[:8]}"
    run_id = f"turn-{uuid.uuid4().hex[:6]}"
    _write_spans(
        graph_url,
        [
            _span(run_id, uuid.uuid4().hex[:16], "chat", "workflow", execution_id=thread,
                  state="running"),
            _span(f"turn-x-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex[:16], "chat", "workflow",
                  start=10, execution_id=thread),
        ],
    )  # fmt: skip
    asked: list[float] = []
    trees: list[str] = []

    def fail(route: Any) -> None:
        asked.append(time.monotonic())
        route.fulfill(status=503, body='{"detail":"busy"}', content_type="application/json")

    page.route("**/api/workflows?execution_id=*", fail)
    page.on("request", lambda r: trees.append(r.url) if r.url.endswith("/tree") else None)
    # no Redis: the page reads the running run from the graph every 2 s
    app = create_app(_settings(graph_url, "redis://127.0.0.1:1", tmp_path))
    with serve(app) as base:
        open_run(page, base, run_id)
        expect(page.locator("#tree li.tree-item")).to_have_count(1)
        deadline = time.monotonic() + 15
        while len(trees) < 4 and time.monotonic() < deadline:
            page.wait_for_timeout(250)
    assert len(trees) >= 4, trees  # read again and again
    assert len(asked) == 1, asked


@needs_chromium
def test_a_run_the_service_is_too_busy_to_read_is_read_again(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """The service reads a few runs whole at once and answers another reader 503 with
    Retry-After: a finished run opened then stayed "Could not load the run" for good."""
    from playwright.sync_api import expect

    run_id = f"busy-{uuid.uuid4().hex[:6]}"
    _write_spans(graph_url, [_span(run_id, uuid.uuid4().hex[:16], "done", "workflow")])
    trees: list[str] = []

    def busy_once(route: Any) -> None:
        trees.append(route.request.url)
        if len(trees) == 1:
            route.fulfill(status=503, headers={"Retry-After": "2"}, content_type="application/json",
                          body='{"detail":"busy: 4 runs are being read whole; try again"}')  # fmt: skip
        else:
            route.continue_()

    page.route("**/tree", busy_once)
    app = create_app(_settings(graph_url, embedded_server.redis_url, tmp_path))
    with serve(app) as base:
        open_run(page, base, run_id)
        expect(page.locator("#tree li.tree-item")).to_have_count(1, timeout=15_000)
    assert len(trees) >= 2


@needs_chromium
def test_errors_and_calls_other_instrumentations_write(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """From JavaScript agents over OTLP: a JavaScript stack after the message filled the
    error box; an error that is JSON over several lines read as "["; a model call that
    Traceloop JS's LangChain and OpenAI instrumentations both recorded, under one name,
    counted twice."""
    app = create_app(_settings(graph_url, embedded_server.redis_url, tmp_path))
    with serve(app) as base:
        page.goto(base + "/")
        seen = page.evaluate(
            """async () => {
              const { statusMessage, firstLine, modelCalls, usageOf, shownName } = await import("/static/util.js");
              const { errorMessage } = await import("/static/views.js");
              const exception = (type, message) =>
                ({ name: "exception", attributes: { "exception.type": type, "exception.message": message } });
              const js = "500 upstream failed\\n\\nError: 500 upstream failed\\n    at fetch (f.js:1:2)";
              const call = (id, name, start, end, attrs) => ({
                span_id: id, parent_span_id: "p", kind: "llm", name, state: "completed",
                start_ns: start, end_ns: end,
                attributes: { "gen_ai.usage.input_tokens": 10, "gen_ai.usage.output_tokens": 5, ...attrs },
              });
              const count = (...nodes) => modelCalls(nodes).length;
              return {
                stack: statusMessage({ status_message: js }),
                alone: statusMessage({ status_message: "TypeError: x is undefined\\n    at f (f.js:1:2)" }),
                prose: statusMessage({ status_message: "Invalid request:\\n  at least one message is required" }),
                cause: statusMessage({ status_message: "Tool failed:\\nTypeError: fetch failed\\n    at f (f.js:1:2)" }),
                onlyTraceback: statusMessage({ status_message: "\\nTraceback (most recent call last):\\n  File 'x'\\nValueError: boom" }),
                json: firstLine('[\\n  {\\n    "value": "approve?"\\n  }\\n]'),
                // LangChain's span around OpenAI's, one name, only OpenAI's with an answer id
                twice: count(call("a", "chat m", 0, 100, {}),
                             call("b", "chat m", 10, 90, { "gen_ai.response.id": "r1" })),
                // one instrumentation's calls made at once: each with an id, or none
                parallel: count(call("a", "chat m", 0, 100, { "gen_ai.response.id": "r1" }),
                                call("b", "chat m", 10, 90, { "gen_ai.response.id": "r2" })),
                parallelNoIds: count(call("a", "chat m", 0, 100, {}), call("b", "chat m", 10, 90, {})),
                // Haystack's agent's model call (no tokens, no id) around the OpenAI call
                silentAround: count(
                  { ...call("h", "haystack.agent.step.llm", 0, 100, {}), attributes: {} },
                  { ...call("o", "chat gpt-4o", 10, 90, {}), parent_span_id: "h" }),
                // ... but around two calls (retries): three
                silentAroundTwo: count(
                  { ...call("h", "haystack.agent.step.llm", 0, 100, {}), attributes: {} },
                  { ...call("o", "chat gpt-4o", 10, 40, {}), parent_span_id: "h" },
                  { ...call("p", "chat gpt-4o", 50, 90, {}), parent_span_id: "h" }),
                // the Anthropic SDK's own span and OpenLLMetry's around it, one answer id
                // on both: each made the other a repeat (none counted)
                sameIdAround: count(call("o", "anthropic.chat", 0, 100, { "gen_ai.response.id": "m1" }),
                                    call("s", "anthropic.messages.create", 10, 90, { "gen_ai.response.id": "m1" })),
                // ... and openlit's as the SDK span's parent
                sameIdParent: count(call("o", "chat claude", 0, 100, { "gen_ai.response.id": "m1" }),
                                    { ...call("s", "anthropic.messages.create", 10, 90, { "gen_ai.response.id": "m1" }),
                                      parent_span_id: "o" }),
                // a stream left early: OpenInference's span with the output so far, the
                // SDK's own under it alone with the input only: one call, the fuller kept
                partly: modelCalls([
                  { ...call("i", "messages.create", 0, 100, {}), attributes: {
                      "llm.token_count.prompt": 25, "llm.token_count.completion": 1 } },
                  { ...call("s", "anthropic.messages.create", 10, 90, {}), parent_span_id: "i",
                    attributes: { "gen_ai.usage.input_tokens": 25, "gen_ai.response.id": "m2" } },
                ]).map((n) => n.span_id),
                // Langfuse's generation: its usage details, JSON
                langfuse: usageOf({ "langfuse.observation.usage_details":
                  '{"completion_tokens": 7, "prompt_tokens": 11, "total_tokens": 18}' }),
                langfuseOwn: usageOf({ "langfuse.observation.usage_details": '{"input": 3, "output": 2}' }),
                // Logfire's span named by a message template: its message (which says
                // the model: not again after it)
                logfire: shownName({ kind: "llm", name: "Chat Completion with {request_data[model]!r}",
                  attributes: { "logfire.msg": "Chat Completion with 'gpt-4o-mini'",
                                "gen_ai.request.model": "gpt-4o-mini" } }),
                // a span failed without a message: its last recorded exception that says
                // something, as `query tree` gives it
                lastException: errorMessage({}, [exception("E1", "first"), exception("E2", "second")]),
                blankLast: errorMessage({}, [exception("E1", "first"), exception(" ", " ")]),
                notText: errorMessage({}, [exception(5, "boom")]),
                // one call recorded three times, nested, in every order of the nodes:
                // counted once, by a span that says the most of it
                chain: (() => {
                  const at = (id, parent, start, end, attributes) => ({ ...call(id, "c" + id, start, end, {}),
                    parent_span_id: parent, attributes });
                  const a = at("a", "p", 0, 100, { "llm.token_count.prompt": 25, "llm.token_count.completion": 1 });
                  const s = at("s", "a", 10, 90, { "gen_ai.usage.input_tokens": 25 });
                  const u = at("u", "s", 20, 80, { "gen_ai.usage.input_tokens": 25 });
                  return [[a, s, u], [u, s, a], [s, a, u], [s, u, a]]
                    .map((order) => modelCalls(order).map((n) => n.span_id).join(""));
                })(),
                // ... but counts that disagree are two calls
                partlyNot: count(
                  { ...call("i", "messages.create", 0, 100, {}), attributes: {
                      "llm.token_count.prompt": 25, "llm.token_count.completion": 1 } },
                  { ...call("s", "anthropic.messages.create", 10, 90, {}), parent_span_id: "i",
                    attributes: { "gen_ai.usage.input_tokens": 30 } }),
              };
            }"""
        )
    assert seen == {
        "stack": "500 upstream failed",
        "alone": "TypeError: x is undefined",
        "prose": "Invalid request:\n  at least one message is required",
        "cause": "Tool failed:\nTypeError: fetch failed",
        "onlyTraceback": "ValueError: boom",
        "json": '[ { "value": "approve?" } ]',
        "twice": 1,
        "parallel": 2,
        "parallelNoIds": 2,
        "silentAround": 1,
        "silentAroundTwo": 3,
        "sameIdAround": 1,
        "sameIdParent": 1,
        "partly": ["i"],
        "partlyNot": 2,
        "langfuse": {"input": 11, "output": 7},
        "langfuseOwn": {"input": 3, "output": 2},
        "logfire": "Chat Completion with 'gpt-4o-mini'",
        "chain": ["a", "a", "a", "a"],
        "lastException": "E2: second",
        "blankLast": "E1: first",
        "notText": "boom",
    }


@needs_chromium
def test_right_to_left_override_stays_in_the_run_id(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """A U+202E (right-to-left override) in a run id reverses the id only, not the rest
    of the run's meta line (before: "started …" and the span count came out backwards)."""
    from playwright.sync_api import expect

    workflow_id = "rtl-\u202eevil-" + uuid.uuid4().hex[:6]
    _write_spans(graph_url, [_span(workflow_id, "a1" * 8, "rtl-run", "workflow")])
    app = create_app(_settings(graph_url, embedded_server.redis_url, tmp_path))
    with serve(app) as base:
        open_run(page, base, workflow_id)
        expect(page.locator("#run-title")).to_have_text("rtl-run")
        expect(page.locator("#run-meta")).to_contain_text("1 span")
        expect(page.locator("#run-meta")).not_to_contain_text("1 spans")  # one: singular
        lefts = page.evaluate(
            """(words) => {
              const meta = document.getElementById("run-meta");
              const walker = document.createTreeWalker(meta, NodeFilter.SHOW_TEXT);
              const at = {};
              for (let t = walker.nextNode(); t; t = walker.nextNode()) {
                for (const w of words) {
                  const i = t.data.indexOf(w);
                  if (i < 0 || w in at) continue;
                  const range = document.createRange();
                  range.setStart(t, i);
                  range.setEnd(t, i + w.length);
                  at[w] = range.getBoundingClientRect().left;
                }
              }
              return words.map((w) => at[w]);
            }""",
            ["workflow", "rtl-", "started", "span"],
        )
    assert None not in lefts, lefts
    assert lefts == sorted(lefts), lefts  # left to right, in the order written


@needs_chromium
def test_durations_and_multi_line_errors(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """Durations are rounded before they are split ("2 min 0 s", never "1 min 60 s"), a
    span running for more than a day shows its time (no "…" after it), and a multi-line
    error keeps its lines."""
    from playwright.sync_api import expect

    workflow_id = f"dur-{uuid.uuid4().hex[:8]}"
    root = "a1" * 8
    day = 24 * 3600 * 10**9
    _write_spans(
        graph_url,
        [
            _span(
                workflow_id,
                root,
                "long-run",
                "workflow",
                state="running",
                start=-(day + 3600 * 10**9),
            ),
            _span(workflow_id, "b2" * 8, "two-minutes", parent=root, duration_ms=119_600.0),
            _span(workflow_id, "c3" * 8, "a-minute", parent=root, start=1, duration_ms=59_999.0),
            _span(
                workflow_id,
                "d4" * 8,
                "broken",
                parent=root,
                start=2,
                state="failed",
                status_message="line one\nline two",
            ),
        ],
    )
    app = create_app(_settings(graph_url, "off", tmp_path))  # no stream: the page polls
    with serve(app) as base:
        open_run(page, base, workflow_id)
        dur = lambda name: node(page, name).locator(":scope > .row .dur")  # noqa: E731
        expect(dur("two-minutes")).to_have_text("2 min 0 s")
        expect(dur("a-minute")).to_have_text("1 min 0 s")
        # a running span's time: beside its "running" badge in the tree, "so far" in the
        # header (not "…", which read as text cut short)
        expect(dur("long-run")).to_have_text(re_full(r"25 h 0 min \d+ s"))
        expect(page.locator("#run-meta")).to_contain_text(re.compile(r"25 h 0 min \d+ s so far"))
        formatted = page.evaluate(
            """async () => {
              const { fmtDuration } = await import("/static/util.js");
              return [0.5, 99.96, 999.6, 9999, 59999, 119600, 3600000, 90061000].map(fmtDuration);
            }"""
        )
        assert formatted == [
            "0.50 ms",
            "100 ms",
            "1.00 s",
            "10.0 s",
            "1 min 0 s",
            "2 min 0 s",
            "1 h 0 min 0 s",
            "25 h 1 min 1 s",
        ]
        node(page, "broken").locator(":scope > .row > .node-btn").click()
        error = page.locator("#detail .error-box")
        expect(error).to_contain_text("line one")
        assert error.evaluate("e => e.innerText") == "Error: line one\nline two"


_BARS = """rows => rows.map((row) => {
  const bar = row.querySelector(".bar");
  const track = bar.getBoundingClientRect();
  const fill = bar.firstElementChild.getBoundingClientRect();
  return {
    name: row.parentElement.dataset.name,
    shown: getComputedStyle(bar).display !== "none",
    track: [track.left, track.right],
    from: (fill.left - track.left) / track.width,
    to: (fill.right - track.left) / track.width,
  };
})"""


@needs_chromium
def test_rows_draw_when_their_spans_ran(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """In a tree 640 px wide or more, each row has a bar of when its span ran within the
    run, on a track at the same place in every row: steps that ran side by side overlap;
    a running span's bar reaches now. Narrower (1280 px window) the names keep the room."""
    from playwright.sync_api import expect

    ms = 10**6
    t0 = time.time_ns() - 2000 * ms
    done, going = f"bars-{uuid.uuid4().hex[:8]}", f"bars-{uuid.uuid4().hex[:8]}"
    root, live_root, stuck_root = "a1" * 8, "f6" * 8, "c9" * 8
    stuck = f"bars-{uuid.uuid4().hex[:8]}"

    def at(workflow_id: str, span_id: str, name: str, start: int, **extra: Any) -> Any:
        return _span(workflow_id, span_id, name, start_ns=t0 + start * ms, **extra)

    _write_spans(
        graph_url,
        [
            at(done, root, "bars-run", 0, kind="workflow", duration_ms=100.0),
            at(done, "b2" * 8, "first", 0, parent=root, duration_ms=50.0),
            at(done, "c3" * 8, "beside", 10, parent=root, duration_ms=50.0),
            at(done, "d4" * 8, "after", 60, parent=root, duration_ms=40.0, state="failed"),
            at(going, live_root, "still-going", 0, kind="workflow", state="running"),
            at(going, "e5" * 8, "early", 0, parent=live_root, duration_ms=500.0),
            # a finished run with a span its instrumentation never ended
            at(stuck, stuck_root, "stuck-run", 0, kind="workflow", duration_ms=100.0),
            at(stuck, "a7" * 8, "never-ended", 10, parent=stuck_root, state="running"),
            at(stuck, "b8" * 8, "ended", 0, parent=stuck_root, duration_ms=50.0),
        ],
    )
    deep = f"bars-{uuid.uuid4().hex[:8]}"
    chain = [uuid.uuid4().hex[:16] for _ in range(24)]
    _write_spans(
        graph_url,
        [
            at(deep, span_id, f"level-{i:02}", i, parent=chain[i - 1] if i else None)
            | ({"kind": "workflow", "duration_ms": 30.0} if not i else {})
            for i, span_id in enumerate(chain)
        ],
    )
    app = create_app(_settings(graph_url, "off", tmp_path))
    with serve(app) as base:
        page.set_viewport_size({"width": 1600, "height": 900})
        open_run(page, base, done)
        expect(state_of(page, "after")).to_have_text("failed")
        bars = {b["name"]: b for b in page.eval_on_selector_all("#tree .row", _BARS)}
        assert set(bars) == {"bars-run", "first", "beside", "after"}
        assert all(b["shown"] for b in bars.values()), bars
        assert len({round(b["track"][0]) for b in bars.values()}) == 1, bars  # lined up
        expected = {"bars-run": (0, 1), "first": (0, 0.5), "beside": (0.1, 0.6), "after": (0.6, 1)}
        for name, (start, end) in expected.items():
            assert bars[name]["from"] == pytest.approx(start, abs=0.03), bars[name]
            assert bars[name]["to"] == pytest.approx(end, abs=0.03), bars[name]
        color = "e => getComputedStyle(e).backgroundColor"
        fill = lambda name: node(page, name).locator(":scope > .row .bar-fill")  # noqa: E731
        assert fill("after").evaluate(color) != fill("first").evaluate(color)
        bar = node(page, "beside").locator(":scope > .row .bar")
        bar.hover()
        expect(bar).to_have_attribute("title", "started at +10.0 ms, ran 50.0 ms")
        # and the node panel says it too (to the keyboard as well)
        node(page, "beside").locator(":scope > .row > .node-btn").click()
        expect(page.locator('#detail dd[data-fact="Started"]')).to_contain_text(
            "(+10.0 ms into the run)"
        )

        open_run(page, base, going)
        expect(state_of(page, "still-going")).to_have_text("running")
        expect(state_of(page, "early")).to_have_text("completed")
        bars = {b["name"]: b for b in page.eval_on_selector_all("#tree .row", _BARS)}
        # the run has gone on for 2 s and more: the first 500 ms are a quarter at most;
        # the running span's bar reaches now, the track a second past it at most
        assert bars["still-going"]["from"] == pytest.approx(0, abs=0.03)
        assert 0.6 < bars["still-going"]["to"] < 1.01, bars
        assert bars["early"]["to"] < 0.26, bars
        page.wait_for_timeout(2500)  # the track, a second past now, grows with the time
        later = page.eval_on_selector_all("#tree .row", _BARS)
        assert {b["name"]: b["to"] for b in later}["early"] < bars["early"]["to"] - 0.02
        # it ends, 2.5 s after its start: the track is its time again, not up to now
        _write_spans(
            graph_url, [at(going, live_root, "still-going", 0, kind="workflow", duration_ms=2500.0)]
        )
        expect(state_of(page, "still-going")).to_have_text("completed")
        page.wait_for_timeout(1200)  # (the next tick)
        ended = {b["name"]: b for b in page.eval_on_selector_all("#tree .row", _BARS)}
        assert ended["early"]["to"] == pytest.approx(0.2, abs=0.03), ended
        assert ended["still-going"]["to"] == pytest.approx(1, abs=0.03), ended

        # a run that ended: a span never ended runs to the run's end, not on to now
        open_run(page, base, stuck)
        expect(page.locator("#conn")).to_contain_text("finished")
        page.wait_for_timeout(1200)  # (the next tick)
        ended = {b["name"]: b for b in page.eval_on_selector_all("#tree .row", _BARS)}
        assert ended["stuck-run"]["to"] == pytest.approx(1, abs=0.03), ended
        assert ended["ended"]["to"] == pytest.approx(0.5, abs=0.03), ended
        assert ended["never-ended"]["from"] == pytest.approx(0.1, abs=0.03), ended
        assert ended["never-ended"]["to"] == pytest.approx(1, abs=0.03), ended

        # a tree deeper than the panel is wide scrolls sideways: the bars still line up
        open_run(page, base, deep)
        expect(page.locator("#tree li.tree-item")).to_have_count(24)
        bars = page.eval_on_selector_all("#tree .row", _BARS)
        assert [b["name"] for b in bars] == [f"level-{i:02}" for i in range(24)]
        assert len({round(b["track"][0]) for b in bars}) == 1, bars
        assert bars[23]["from"] == pytest.approx(23 / 30, abs=0.03), bars[23]
        assert page.evaluate("document.getElementById('tree').scrollWidth") > page.evaluate(
            "document.getElementById('tree').clientWidth"
        )

        page.set_viewport_size({"width": 1280, "height": 800})
        open_run(page, base, done)
        expect(state_of(page, "after")).to_have_text("failed")
        assert not any(b["shown"] for b in page.eval_on_selector_all("#tree .row", _BARS))


@needs_chromium
def test_a_live_run_does_not_move_every_bar_at_each_message(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """The run's track is set on the tree, and a change of it restyles every row: while
    a run is live it reaches a quarter past now (a second at least), so that a stream of
    spans, each starting after the last, moves it a few times, not at every message (60
    here, over a second or two)."""
    from playwright.sync_api import expect

    app = create_app(_settings(graph_url, embedded_server.redis_url, tmp_path))
    stream = FakeStream.on(app)
    workflow_id = f"bars-live-{uuid.uuid4().hex[:8]}"
    msg = Messages(workflow_id)
    root = "a1" * 8
    with serve(app) as base:
        page.set_viewport_size({"width": 1600, "height": 900})
        open_run(page, base, workflow_id)
        conn = stream.next_connection()
        try:
            conn.send(msg("span.started", root, None, "workflow", "bars-live"))
            expect(page.locator("#tree li.tree-item")).to_have_count(1)
            page.evaluate(
                """() => {
                  window.extentChanges = 0;
                  new MutationObserver(() => { window.extentChanges += 1; }).observe(
                    document.getElementById("tree-root"), { attributeFilter: ["style"] });
                }"""
            )
            for i in range(60):
                conn.send(msg("span.started", f"{i:016x}", root, "step", f"step-{i}"))
                page.wait_for_timeout(20)  # (each its own frame)
            expect(page.locator("#tree li.tree-item")).to_have_count(61)
            changes = page.evaluate("window.extentChanges")
            # an event's name, shown in its row for a moment, leaves the bars in line
            conn.send(
                msg("guardrail.checked_everything_here", f"{59:016x}", root, "step", "step-59")
            )
            expect(node(page, "step-59").locator(".last-event")).to_have_text(
                "guardrail.checked_everything_here"
            )
            bars = {b["name"]: b for b in page.eval_on_selector_all("#tree .row", _BARS)}
        finally:
            conn.close()
    assert changes <= 5, changes
    # every bar inside the track, the last step's (started now) too
    assert all(b["from"] >= -0.01 and b["to"] <= 1.01 for b in bars.values()), bars
    assert bars["step-59"]["from"] < 1
    assert len({round(b["track"][0]) for b in bars.values()}) == 1, bars


@needs_chromium
def test_big_integer_attributes_keep_their_digits(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """Whole numbers beyond 2^53 in attributes are shown as they were sent (before:
    rounded to the nearest double: ...977 shown as ...976)."""
    from playwright.sync_api import expect

    workflow_id = f"big-{uuid.uuid4().hex[:8]}"
    attrs = {"big.id": 2**60 + 1, "big.list": [2**63 - 1, 1], "small": 3, "ratio": 0.25}
    _write_spans(graph_url, [_span(workflow_id, "a1" * 8, "big-run", "workflow", attributes=attrs)])
    app = create_app(_settings(graph_url, embedded_server.redis_url, tmp_path))
    with serve(app) as base:
        open_run(page, base, workflow_id)
        node(page, "big-run").locator(":scope > .row > .node-btn").click()
        expect(page.locator("#detail table.attrs tr")).to_have_count(len(attrs))
        rows = page.eval_on_selector_all(
            "#detail table.attrs tr",
            "rows => rows.map(r => [r.querySelector('th').textContent, "
            "r.querySelector('td').textContent])",
        )
        expect(page.locator("#run-meta")).to_contain_text("started")  # times still work
    assert dict(rows) == {
        "big.id": "1152921504606846977",
        "big.list": "[9223372036854775807,1]",
        "small": "3",
        "ratio": "0.25",
    }


def re_full(pattern: str) -> Any:
    import re

    return re.compile(f"^{pattern}$")


# -- large runs, names, options never explored -----------------------------------------------

# Counts what the page does to the tree (the test's own instrument, around the DOM's
# methods): reads of a tree item's ``dataset`` (each sibling compared, each row written),
# elements under the root of a ``querySelectorAll`` inside the tree (what it walks),
# items inserted into the tree; and the graph reads (``GET .../tree``) made.
TREE_WORK = """(() => {
  const work = (window.__work = { dataset: 0, walked: 0, inserted: 0, reads: 0 });
  const item = (el) => el instanceof Element && el.classList.contains("tree-item");
  const inTree = (el) => el instanceof Element && el.closest("#tree") !== null;
  const dataset = Object.getOwnPropertyDescriptor(HTMLElement.prototype, "dataset");
  Object.defineProperty(HTMLElement.prototype, "dataset", {
    ...dataset,
    get() {
      if (item(this)) work.dataset += 1;
      return dataset.get.call(this);
    },
  });
  const qsa = Element.prototype.querySelectorAll;
  Element.prototype.querySelectorAll = function (...args) {
    if (inTree(this)) work.walked += this.getElementsByTagName("*").length;
    return qsa.apply(this, args);
  };
  const insertBefore = Node.prototype.insertBefore;
  Node.prototype.insertBefore = function (node, ...rest) {
    if (item(node)) work.inserted += 1;
    return insertBefore.call(this, node, ...rest);
  };
  const fetch0 = window.fetch;
  window.fetch = (url, options) => {
    if (String(url).endsWith("/tree")) work.reads += 1;
    return fetch0(url, options);
  };
})()"""

NEXT_FRAME = "() => new Promise((done) => requestAnimationFrame(() => setTimeout(done)))"


def take_work(page: Any) -> dict[str, int]:
    """The counts since the last call (after the frame under way is rendered)."""
    page.evaluate(NEXT_FRAME)
    return page.evaluate(
        """() => {
          const w = { ...window.__work };
          Object.assign(window.__work, { dataset: 0, walked: 0, inserted: 0 });
          return w;
        }"""
    )


@needs_chromium
def test_a_large_run_loads_and_polls_in_linear_time(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """A run of 2 000 spans written by the SDK, running, read from the graph every 2 s:
    loading it costs the page work in proportion to the run, and a graph read that brings
    nothing new costs it (next to) none; every row is there, in start order, and what
    does change still shows. Before: each changed row searched the whole tree for its
    waiting children and compared itself with every sibling before it, and every read
    changed every row: 3 301 spans took 5.8 s to load, 10 002 froze the page for a
    minute, and polling a 3 000-span run kept the page busy 18 s of every 20. (Counts,
    not times: they do not depend on the machine.)"""
    from playwright.sync_api import expect

    n = 2000
    configure_sdk(graph_url, embedded_server, tmp_path)
    workflow_id = f"large-{uuid.uuid4().hex[:8]}"
    page.add_init_script(TREE_WORK)
    app = create_app(_settings(graph_url, "off", tmp_path))  # no stream: the page polls
    try:
        with serve(app) as base:
            with spangraph.workflow("large-run", workflow_id=workflow_id):
                for i in range(n):
                    with spangraph.step(f"s{i:04d}"):
                        pass
                assert spangraph.flush(30)
                with urllib.request.urlopen(f"{base}/api/workflows/{workflow_id}/tree") as r:
                    [root] = json.load(r)
                by_start = [
                    c["name"] for c in sorted(root["children"], key=lambda c: c["start_ns"])
                ]
                assert len(by_start) == n

                open_run(page, base, workflow_id)
                expect(page.locator("#tree li.tree-item")).to_have_count(n + 1, timeout=90_000)
                load = take_work(page)
                expect(page.locator("#conn")).to_have_attribute("data-transport", "polling")
                rows = node(page, "large-run").locator(":scope > ul > li.tree-item")
                names = rows.evaluate_all("els => els.map(e => e.dataset.name)")
                assert names == by_start == [f"s{i:04d}" for i in range(n)]
                # the running workflow's time ticks
                expect(node(page, "large-run").locator(":scope > .row .dur")).to_have_text(
                    re_full(r"\d.*")
                )

                # at least one whole graph read with nothing new: the next one has begun
                reads = take_work(page)["reads"]  # (and the counts of the checks above reset)
                # polled from here: Playwright's wait_for_function may run its predicate
                # through eval() (1.45 did for a function with an argument), which the
                # page's CSP forbids
                deadline = time.monotonic() + 20
                while page.evaluate("window.__work.reads") < reads + 2:
                    assert time.monotonic() < deadline, "no two more graph reads in 20 s"
                    page.wait_for_timeout(50)
                poll = take_work(page)
            # the workflow has ended: the next read shows it
            assert spangraph.flush(30)
            expect(state_of(page, "large-run")).to_have_text("completed", timeout=20_000)
            expect(page.locator("#run-state .state")).to_have_text("completed")
            expect(page.locator("#conn")).to_have_attribute("data-transport", "done")
            assert page.locator("#tree li.tree-item").count() == n + 1
    finally:
        spangraph.shutdown()
    # loading: each row inserted once, a few dataset reads each, no walk of the tree
    assert load["inserted"] == n + 1, load
    assert load["dataset"] + load["walked"] <= 10 * n, load
    # a graph read that changed nothing: no row placed, written or searched for
    assert poll["inserted"] == 0, poll
    assert poll["dataset"] + poll["walked"] <= 10, poll


@needs_chromium
def test_siblings_keep_start_order_whatever_order_they_come_in(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """Live spans that come out of start order, children before their parent, several
    starting at the same time, one whose start is only known later: under the parent they
    are in start order, those that start together in the order they came in (children
    that came before the parent first)."""
    import random

    from playwright.sync_api import expect

    app = create_app(_settings(graph_url, embedded_server.redis_url, tmp_path))
    stream = FakeStream.on(app)
    workflow_id = f"order-{uuid.uuid4().hex[:8]}"
    msg = Messages(workflow_id)
    t0 = time.time_ns()
    root, parent, late = "a1" * 8, "b2" * 8, "c3" * 8
    rng = random.Random(7)
    children = [(f"c{i:02d}", t0 + 1000 * rng.randrange(1, 9)) for i in range(40)]
    rng.shuffle(children)
    early, after = children[:15], children[15:]

    def started(span_id: str, parent_id: str | None, kind: str, name: str, at: int) -> Any:
        return {**msg("span.started", span_id, parent_id, kind, name), "time_unix_nano": at}

    def kids(items: list[tuple[str, int]]) -> list[Any]:
        return [started(uuid.uuid4().hex[:16], parent, "step", name, at) for name, at in items]

    under_parent = node(page, "parent").locator(":scope > ul > li.tree-item")
    with serve(app) as base:
        open_run(page, base, workflow_id)
        conn = stream.next_connection()
        try:
            conn.send_batch(started(root, None, "workflow", "order-run", t0), *kids(early))
            expect(page.locator("#tree li.tree-item")).to_have_count(1 + len(early))
            conn.send(started(parent, root, "step", "parent", t0 + 1))
            expect(under_parent).to_have_count(len(early))
            conn.send_batch(*kids(after))
            # an event before its span.started: no start yet, so last
            conn.send(msg("tool.call", late, parent, "step", "late-start"))
            expect(under_parent).to_have_count(len(children) + 1)
            names = under_parent.evaluate_all("els => els.map(e => e.dataset.name)")
            by_start = [name for name, _ in sorted(children, key=lambda c: c[1])]
            assert names == [*by_start, "late-start"]
            # its start comes: it moves among them (after those that start with it)
            conn.send(started(late, parent, "step", "late-start", t0 + 4500))
            expect(under_parent.nth(len(children))).not_to_have_attribute("data-name", "late-start")
            names = under_parent.evaluate_all("els => els.map(e => e.dataset.name)")
            at = sum(1 for _, start in children if start <= t0 + 4500)
            assert names == [*by_start[:at], "late-start", *by_start[at:]]
        finally:
            conn.close()


@needs_chromium
def test_unnamed_spans_read_unnamed(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """A span with an empty name reads "(unnamed)" in the tree, its label, the run's
    header and the node panel, as in the runs list (before: a blank row, heard as
    "span , completed")."""
    from playwright.sync_api import expect

    workflow_id = f"unnamed-{uuid.uuid4().hex[:8]}"
    root, step = "a1" * 8, "b2" * 8
    _write_spans(
        graph_url,
        [
            _span(workflow_id, root, "", "workflow"),
            _span(workflow_id, step, "", parent=root, start=1000, duration_ms=12.5),
        ],
    )
    app = create_app(_settings(graph_url, embedded_server.redis_url, tmp_path))
    with serve(app) as base:
        open_run(page, base, workflow_id)
        expect(page.locator(f'#runs li[data-workflow-id="{workflow_id}"] .run-name')).to_have_text(
            "(unnamed)"
        )
        expect(page.locator("#run-title")).to_have_text("(unnamed)")
        rows = page.locator("#tree li.tree-item > .row")
        expect(rows).to_have_count(2)
        expect(rows.locator(".name")).to_have_text(["(unnamed)", "(unnamed)"])
        buttons = rows.locator(".node-btn")
        expect(buttons.nth(1)).to_have_attribute("aria-label", "step (unnamed), completed, 12.5 ms")
        expect(rows.nth(1).locator("a.jaeger")).to_have_attribute(
            "aria-label", "Open (unnamed) in Jaeger"
        )
        buttons.nth(1).click()
        expect(page.locator("#detail-title")).to_have_text("(unnamed)")
        expect(page.locator('#detail dd[data-fact="Span id"]')).to_have_text(step)


@needs_chromium
def test_a_failed_run_says_where_it_failed(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """The header said "failed" and nothing more: the span where the failure began had to
    be found row by row. It names it (not an attempt a retry recovered from), and shows
    it when clicked. The attempts of a retried step differed only by state: they say
    which attempt each is, the first too, and the failed one reads as retried."""
    from playwright.sync_api import expect

    configure_sdk(graph_url, embedded_server, tmp_path)
    tries = iter([True, False])

    @spangraph.step(retries=1, backoff=0)
    def fetch() -> None:
        if next(tries):
            raise ConnectionError("first try fails")

    try:
        with contextlib.suppress(ValueError), spangraph.workflow("failing-agent") as run:
            fetch()
            with spangraph.step("summarize"), spangraph.step("parse"):
                raise ValueError("no citations")
        assert spangraph.flush(10)
    finally:
        spangraph.shutdown()
    app = create_app(_settings(graph_url, embedded_server.redis_url, tmp_path))
    with serve(app) as base:
        open_run(page, base, run.workflow_id or "")
        where = page.locator("#run-meta button.link")
        expect(where).to_have_text("parse")
        expect(page.locator("#run-meta")).to_contain_text("failed at parse")
        where.click()
        expect(page.locator("#detail-title")).to_have_text("parse")
        # a retried step's rows say which attempt each is, the first one too
        attempts = page.locator('#tree li.tree-item[data-name="fetch"] > .row .attempt')
        expect(attempts).to_have_text(["attempt 1/2", "attempt 2/2"])
        buttons = page.locator('#tree li.tree-item[data-name="fetch"] > .row .node-btn')
        expect(buttons.nth(0)).to_have_attribute(
            "aria-label", re_full(r"step fetch, attempt 1 of 2, failed, retried, .+")
        )
        expect(buttons.nth(1)).to_have_attribute(
            "aria-label", re_full(r"step fetch, attempt 2 of 2, completed, .+")
        )


_SAID = "litellm.MidStreamFallbackError: cut off"
_RAISED = "OpenAIAPIError('Error code: 500 - boom')"


def _with_traceback(frames: int) -> str:
    return _RAISED + "Traceback (most recent call last):\n" + '  File "x.py", line 1\n' * frames


@needs_chromium
@pytest.mark.parametrize(
    ("messages", "said"),
    [
        # a step wrote the call's error with its type before it (LiteLLM's mid-stream
        # failure under OpenInference)
        ((f"MidStreamFallbackError: {_SAID}",) * 2 + (_SAID,), _SAID),
        # OpenInference's LangChain appends each span's own traceback to the same error
        ((_with_traceback(3), _with_traceback(2), _with_traceback(1)), _RAISED),
    ],
    ids=["typed", "traceback"],
)
def test_a_failure_written_differently_above_is_where_it_arose(
    page: Any,
    embedded_server: Any,
    graph_url: str,
    tmp_path: Path,
    messages: tuple[str, str, str],
    said: str,
) -> None:
    """The same error written otherwise by the spans above the call where it arose (its
    type before it, or a traceback of each span's own after it), with a span after the
    call that ended later: the header said the run failed at the step, not at the call."""
    from playwright.sync_api import expect

    workflow_id = f"differently-{uuid.uuid4().hex[:8]}"
    root, step = uuid.uuid4().hex[:16], uuid.uuid4().hex[:16]
    _write_spans(
        graph_url,
        [
            _span(workflow_id, root, "agent", "workflow", state="failed",
                  status_message=messages[0], duration_ms=50.0),
            _span(workflow_id, step, "answer", parent=root, start=1000, state="failed",
                  status_message=messages[1], duration_ms=40.0),
            _span(workflow_id, uuid.uuid4().hex[:16], "completion", "llm", parent=step,
                  start=2000, state="failed", status_message=messages[2], duration_ms=10.0),
            _span(workflow_id, uuid.uuid4().hex[:16], "log-usage", parent=step, start=3000,
                  duration_ms=30.0),
        ],
    )  # fmt: skip
    app = create_app(_settings(graph_url, embedded_server.redis_url, tmp_path))
    with serve(app) as base:
        open_run(page, base, workflow_id)
        expect(page.locator("#run-meta button.link")).to_have_text("completion")
        expect(page.locator("#run-meta")).to_contain_text(f"failed at completion: {said}")


@needs_chromium
def test_a_link_to_a_node_opens_with_the_node_in_sight(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """A link with ``&node=`` to a span far down a long run selected it, but the page
    opened at the top of the tree with the node out of sight. The header counts spans
    only: an option never explored is no span."""
    from playwright.sync_api import expect

    with recording(graph_url, embedded_server, tmp_path), spangraph.workflow("long-run") as run:
        steps = []
        for i in range(300):
            with spangraph.step(f"step-{i:03}") as st:
                steps.append(st.span_id)
        with spangraph.decision("pick", options=["taken", "never"]) as d:
            with d.option("taken"):
                pass
            d.choose("taken")
    page.set_viewport_size({"width": 1280, "height": 700})
    with serving(graph_url, embedded_server, tmp_path) as base:
        page.goto(f"{base}/#run={run.workflow_id}&node={steps[280]}")
        expect(page.locator("#detail-title")).to_have_text("step-280")
        row = page.locator(f'#tree li.tree-item[data-span-id="{steps[280]}"]')
        expect(row).to_have_attribute("aria-selected", "true")
        expect(row.locator(":scope > .row")).to_be_in_viewport()
        # the workflow, 300 steps, the decision and its option taken: 303 spans
        expect(page.locator("#tree li.tree-item")).to_have_count(304)
        expect(page.locator("#run-meta")).to_contain_text("303 spans")


@needs_chromium
def test_the_header_totals_the_run_s_model_calls_and_tokens(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """How many tokens a run used had to be added up node by node: the header says how
    many model calls it made and the tokens they reported, and how many reported none."""
    from playwright.sync_api import expect

    with recording(graph_url, embedded_server, tmp_path):
        with spangraph.workflow("token-run") as run:
            with spangraph.llm("big-model", provider="openai") as call:
                call.usage(input_tokens=1200, output_tokens=34)
            with spangraph.branch("draft"), spangraph.llm("small-model", provider="openai") as call:
                call.usage(input_tokens=300, output_tokens=66)
            with spangraph.llm("silent-model", provider="openai"):
                pass  # a stream that reported no usage
            # another instrumentation's model call (OpenInference's names)
            provider = spangraph._sdk.current().tracer_provider
            with provider.get_tracer("openinference").start_as_current_span(
                "ChatOpenAI",
                attributes={
                    "openinference.span.kind": "LLM",
                    "llm.token_count.prompt": 100,
                    "llm.token_count.completion": 50,
                },
            ):
                pass
        with spangraph.workflow("no-model-run") as plain, spangraph.step("only"):
            pass
    with serving(graph_url, embedded_server, tmp_path) as base:
        open_run(page, base, run.workflow_id or "")
        expect(page.locator("#run-meta")).to_contain_text(
            "4 model calls, 1,750 tokens (1,600 in, 150 out; 1 without usage)"
        )
        # and each branch, the tokens of its own calls
        expect(page.locator('#branches li.branch[data-name="draft"] .counts')).to_have_text(
            "2 nodes, 366 tokens"
        )
        open_run(page, base, plain.workflow_id or "")
        expect(page.locator("#run-title")).to_have_text("no-model-run")
        expect(page.locator("#run-meta")).to_contain_text("2 spans")
        expect(page.locator("#run-meta")).not_to_contain_text("model call")


@needs_chromium
def test_a_model_call_named_without_its_model_says_it(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """Strands names every model call ``chat``, LangChain ``ChatOpenAI``: the tree showed
    rows of ``chat`` and the model only in the node panel. The row says the model after
    the name when the name does not hold it."""
    from playwright.sync_api import expect

    workflow_id = f"models-{uuid.uuid4().hex[:8]}"
    root = uuid.uuid4().hex[:16]
    calls = [
        ("chat", {"gen_ai.request.model": "m-large", "gen_ai.response.model": "m-large-0613"}),
        ("ChatOpenAI", {"llm.model_name": "gpt-4o"}),
        ("chat m-small", {"gen_ai.request.model": "m-small"}),  # its name says it
        (
            "chat gpt-4o",
            {"gen_ai.response.model": "gpt-4o-2024-08-06", "gen_ai.request.model": "gpt-4o"},
        ),
        ("plain-call", {}),
    ]
    _write_spans(
        graph_url,
        [
            _span(workflow_id, root, "agent", "workflow"),
            *(
                _span(workflow_id, uuid.uuid4().hex[:16], name, "llm", parent=root,
                      start=1000 * (i + 1), attributes=attributes)
                for i, (name, attributes) in enumerate(calls)
            ),
            _span(workflow_id, uuid.uuid4().hex[:16], "chat", parent=root, start=9000,
                  attributes={"gen_ai.request.model": "m-large"}),  # a step: no model
        ],
    )  # fmt: skip
    app = create_app(_settings(graph_url, embedded_server.redis_url, tmp_path))
    with serve(app) as base:
        open_run(page, base, workflow_id)
        names = page.locator("#tree li.tree-item > .row .name")
        expect(names).to_have_text(
            ["agent", "chat (m-large)", "ChatOpenAI (gpt-4o)", "chat m-small", "chat gpt-4o",
             "plain-call", "chat"]
        )  # fmt: skip


@needs_chromium
def test_a_run_stopped_at_an_interrupt_says_it_waits(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """A LangGraph run that stopped at interrupt() read as plainly completed: the header
    says it waits for an answer, and which node asked (a click shows it)."""
    from playwright.sync_api import expect

    workflow_id = f"hitl-{uuid.uuid4().hex[:8]}"
    root, ask = uuid.uuid4().hex[:16], uuid.uuid4().hex[:16]
    asked = {"langgraph.interrupted": True}
    sub = uuid.uuid4().hex[:16]
    _write_spans(
        graph_url,
        [
            _span(workflow_id, root, "approval", "workflow", attributes=asked),
            _span(workflow_id, uuid.uuid4().hex[:16], "plan", parent=root, start=1000),
            # a subgraph's node asked: the node around it is marked too
            _span(workflow_id, sub, "review", parent=root, start=2000, attributes=asked),
            _span(workflow_id, ask, "ask", parent=sub, start=3000, attributes=asked),
        ],
    )
    with serving(graph_url, embedded_server, tmp_path) as base:
        open_run(page, base, workflow_id)
        meta = page.locator("#run-meta")
        expect(meta).to_contain_text("waiting for an answer: interrupted at ask")
        meta.locator("button.link").click()
        expect(page.locator("#detail-title")).to_have_text("ask")
        open_run(page, base, _simple_run(graph_url))  # a run that did not stop to ask
        expect(page.locator("#run-title")).to_have_text("simple-run")
        expect(meta).to_contain_text("2 spans")
        expect(meta).not_to_contain_text("waiting")


@needs_chromium
def test_a_failure_the_run_got_past_is_not_where_it_failed(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """A step that failed and was followed by a fallback is not where the run failed: the
    header named it although the run's own code raised afterwards (another error). A
    step whose error the run raised again, wrapped, right after it is named, and a step
    whose timeout failed the run, a cleanup step after it or not."""
    from playwright.sync_api import expect

    @spangraph.step
    def rank() -> None:
        raise ValueError("ranker returned NaN")

    with recording(graph_url, embedded_server, tmp_path):
        with contextlib.suppress(RuntimeError), spangraph.workflow("handled-agent") as handled:
            try:
                rank()
            except ValueError:
                with spangraph.step("rank_fallback"):
                    pass
            raise RuntimeError("answer failed validation")
        with contextlib.suppress(RuntimeError), spangraph.workflow("wrapping-agent") as wrapped:
            with spangraph.step("load"):
                pass
            try:
                rank()
            except ValueError as exc:
                raise RuntimeError("ranking failed") from exc
    # a step whose timeout fired, then a cleanup step (`finally:`), as spangraph records
    # them: the step's message says its timeout, the run's which step's
    timed, slow = f"timed-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex[:16]
    top = uuid.uuid4().hex[:16]
    fired = "exceeded its timeout of 0.02 s"
    _write_spans(
        graph_url,
        [
            _span(timed, top, "timed-agent", "workflow", state="failed")
            | {"status_message": f"TimeoutError: step 'slow' {fired}"},
            _span(timed, slow, "slow", parent=top, start=1000, state="failed")
            | {"status_message": f"TimeoutError: {fired}"},
            _span(timed, uuid.uuid4().hex[:16], "cleanup", parent=top, start=30_000_000),
        ],
    )
    with serving(graph_url, embedded_server, tmp_path) as base:
        open_run(page, base, handled.workflow_id or "")
        expect(page.locator("#run-title")).to_have_text("handled-agent")
        expect(page.locator('#tree li.tree-item[data-name="rank_fallback"]')).to_have_count(1)
        expect(page.locator("#run-meta")).to_contain_text("3 spans")
        expect(page.locator("#run-state")).to_contain_text("failed")
        expect(page.locator("#run-meta button.link")).to_have_count(0)
        open_run(page, base, wrapped.workflow_id or "")
        expect(page.locator("#run-meta button.link")).to_have_text("rank")
        # a timeout: the run names the step whose timeout fired, as its own message did
        # not (`exceeded its timeout of 0.02 s`; the run's: `step 'slow' exceeded ...`)
        open_run(page, base, timed)
        expect(page.locator("#run-meta button.link")).to_have_text("slow")


@needs_chromium
def test_a_click_in_a_narrow_window_shows_the_node_panel(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """Below 1 100 px the node panel is under the run: a click on a node changed
    nothing in sight. It is brought into view, the whole of it (keys move through the
    tree in place)."""
    from playwright.sync_api import expect

    workflow_id, root = f"narrow-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex[:16]
    _write_spans(
        graph_url,
        [_span(workflow_id, root, "narrow-run", "workflow")]
        + [
            _span(workflow_id, uuid.uuid4().hex[:16], f"step-{i:02d}", parent=root, start=i)
            for i in range(40)
        ],
    )
    app = create_app(_settings(graph_url, embedded_server.redis_url, tmp_path))
    with serve(app) as base:
        page.set_viewport_size({"width": 800, "height": 700})
        open_run(page, base, workflow_id)
        step = node(page, "step-00").locator(":scope > .row > .node-btn")
        expect(step).to_be_visible()
        title = page.locator("#detail-title")
        panel = page.locator(".detail-panel")
        box = panel.bounding_box()
        assert box["y"] + box["height"] / 2 >= 700  # mostly out of sight at first
        step.click()
        expect(title).to_have_text("step-00")
        expect(title).to_be_in_viewport()
        expect(panel).to_be_in_viewport(ratio=1)


@needs_chromium
def test_long_attribute_keys_leave_their_values_room(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """Keys never wrapped, so a long one (GenAI's are) left its value a few pixels wide,
    cut into one-word lines; the runs list's short id was a UUIDv7's start (its time),
    the same for runs started together: it is its end now."""
    from playwright.sync_api import expect

    workflow_id = "01a24cc5-95f2-7000-a62e-576b33862b8d"
    root = "c3" * 8
    _write_spans(
        graph_url,
        [
            _span(
                workflow_id, root, "with-attributes", "workflow",
                attributes={"gen_ai.usage.cache_creation.input_tokens.and_then_some": "openai",
                            "note": "first line\nsecond line"},
            ),
        ],
    )  # fmt: skip
    app = create_app(_settings(graph_url, embedded_server.redis_url, tmp_path))
    with serve(app) as base:
        page.set_viewport_size({"width": 1280, "height": 900})
        open_run(page, base, workflow_id)
        short = page.locator(f'#runs li[data-workflow-id="{workflow_id}"] .run-sub .mono')
        expect(short).to_have_text("…" + workflow_id[-8:])
        node(page, "with-attributes").locator(":scope > .row > .node-btn").click()
        table = page.locator("#detail table.attrs")
        expect(table).to_be_visible()
        widths = table.evaluate(
            "t => [...t.querySelectorAll('tr')].map(r => [r.cells[0].getBoundingClientRect().width,"
            " r.cells[1].getBoundingClientRect().width, t.getBoundingClientRect().width])"
        )
        for key_width, value_width, table_width in widths:
            assert value_width >= 0.5 * table_width, widths
            assert key_width <= 0.45 * table_width, widths
        note = page.locator("#detail table.attrs td").nth(1)
        assert note.evaluate("td => td.getBoundingClientRect().height") > 1.5 * note.evaluate(
            "td => parseFloat(getComputedStyle(td).lineHeight) || 16"
        )  # two lines: the line break kept


@needs_chromium
def test_options_never_explored_have_no_jaeger_link(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """An option never explored is no span Jaeger knows of: its row and its node panel
    have no "Open in Jaeger" link, as the API gives it none (before: a link on every
    node, to a span Jaeger does not have); an explored option keeps its link."""
    from playwright.sync_api import expect

    configure_sdk(graph_url, embedded_server, tmp_path)
    try:
        with (
            spangraph.workflow("options-run") as run,
            spangraph.decision("route", options=["search", "ask-user"]) as choice,
        ):
            with choice.option("search"):
                pass
            choice.choose("search")
        assert spangraph.flush(10)
    finally:
        spangraph.shutdown()
    app = create_app(_settings(graph_url, embedded_server.redis_url, tmp_path))
    with serve(app) as base:
        open_run(page, base, run.workflow_id or "")
        never, tried = node(page, "ask-user"), node(page, "search")
        expect(never).to_have_attribute("data-state", "unexplored")
        expect(tried.locator(":scope > .row > a.jaeger")).to_have_attribute(
            "href", re_full(r".+\?uiFind=[0-9a-f]{16}")
        )
        expect(never.locator(":scope > .row > a.jaeger")).to_be_hidden()
        assert never.locator(":scope > .row > a.jaeger").get_attribute("href") is None
        never.locator(":scope > .row > .node-btn").click()
        expect(page.locator("#detail-title")).to_have_text("ask-user")
        expect(page.locator("#detail .detail-badges")).to_contain_text("unexplored")
        expect(page.locator("#detail a.jaeger")).to_have_count(0)
        # never a span: no start, duration, ids or service of its own (it showed its
        # decision's), only where it was offered
        facts = page.locator("#detail dl.facts dt")
        expect(facts).to_have_text(["Parent"])
        tried.locator(":scope > .row > .node-btn").click()
        expect(page.locator("#detail a.jaeger")).to_have_count(1)
    # a route chosen without a span of its own (a LangGraph route's node) is chosen, not
    # crossed out as the options never explored are
    configure_sdk(graph_url, embedded_server, tmp_path)
    try:
        with (
            spangraph.workflow("routed-run") as routed,
            spangraph.decision("route", options=["search", "answer"]) as choice,
        ):
            choice.choose("answer")
        assert spangraph.flush(10)
    finally:
        spangraph.shutdown()
    with serve(app) as base:
        open_run(page, base, routed.workflow_id or "")
        chosen = page.locator('#decisions .option[data-option="answer"] .option-name')
        other = page.locator('#decisions .option[data-option="search"] .option-name')
        expect(chosen).to_have_css("text-decoration-line", "none")
        expect(other).to_have_css("text-decoration-line", "line-through")


@needs_chromium
def test_a_run_started_inside_the_run_is_followed_until_it_ends(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """Its messages go to its own stream: the leaf showed "running" (its time going up)
    until the page read the whole run again, 15 s on. Now it is read until it ends."""
    from playwright.sync_api import expect

    configure_sdk(graph_url, embedded_server, tmp_path)
    app = create_app(_settings(graph_url, embedded_server.redis_url, tmp_path))
    try:
        with spangraph.workflow("planner") as run, spangraph.step("delegate"):
            sub_scope = spangraph.workflow("sub-agent")
            sub_scope.__enter__()
            assert spangraph.flush(10)
            with serve(app) as base:
                open_run(page, base, run.workflow_id or "")
                expect(state_of(page, "sub-agent")).to_have_text("running")
                sub_scope.__exit__(None, None, None)
                assert spangraph.flush(10)
                expect(state_of(page, "sub-agent")).to_have_text("completed", timeout=8000)
    finally:
        spangraph.shutdown()


@needs_chromium
def test_a_run_started_inside_the_run_is_a_leaf_that_opens_it(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """A workflow called inside a step is a run of its own: the outer run's tree shows
    its workflow span under the step as a leaf, whose node panel links to that run."""
    from playwright.sync_api import expect

    configure_sdk(graph_url, embedded_server, tmp_path)
    try:
        with (
            spangraph.workflow("planner") as run,
            spangraph.step("delegate"),
            spangraph.workflow("sub-agent") as sub,
            spangraph.step("sub-step"),
        ):
            pass
        assert spangraph.flush(10)
    finally:
        spangraph.shutdown()
    inner = sub.workflow_id or ""
    assert inner and inner != run.workflow_id
    app = create_app(_settings(graph_url, embedded_server.redis_url, tmp_path))
    with serve(app) as base:
        open_run(page, base, run.workflow_id or "")
        leaf = node(page, "sub-agent")
        expect(leaf).to_have_attribute(
            "data-parent", node(page, "delegate").get_attribute("data-span-id") or ""
        )
        expect(page.locator("#tree li.tree-item")).to_have_count(3)  # not its sub-step
        leaf.locator(":scope > .row > .node-btn").click()
        link = page.locator('#detail dd[data-fact="Run"] a')
        expect(link).to_have_text(inner)
        link.click()
        expect(page.locator("#run-title")).to_have_text("sub-agent")
        expect(node(page, "sub-step")).to_have_count(1)


# -- the run tree as an ARIA tree: roles, states, one Tab stop, the keys ---------------------

# Each tree item's ARIA attributes next to what the DOM says they should be: its depth
# (tree items around it, plus one), its place among its siblings and its children.
TREE_ARIA = """() => [...document.querySelectorAll("#tree-root li.tree-item")].map((li) => {
  const up = (el) => el.parentElement.closest("li.tree-item");
  let depth = 1;
  for (let p = up(li); p; p = up(p)) depth += 1;
  const group = li.querySelector(":scope > ul");
  const attr = (name) => li.getAttribute(name);
  return {
    name: li.dataset.name, role: attr("role"), level: attr("aria-level"),
    posinset: attr("aria-posinset"), setsize: attr("aria-setsize"),
    expanded: attr("aria-expanded"), selected: attr("aria-selected"),
    group: group.getAttribute("role"), depth,
    index: [...li.parentElement.children].indexOf(li) + 1,
    siblings: li.parentElement.children.length, children: group.children.length,
    open: !li.classList.contains("collapsed"),
  };
})"""

# The elements of the run tree that Tab stops at (focusable, tabindex >= 0, shown): the
# name of the tree item each is in.
TREE_TAB_STOPS = """() => [...document.querySelectorAll("#tree *")]
  .filter((el) => el.tabIndex >= 0 && !el.disabled && el.checkVisibility()
    && (el.tagName !== "A" || el.hasAttribute("href")))
  .map((el) => el.closest("li.tree-item")?.dataset.name ?? `#${el.id}`)"""


def poll_until(page: Any, script: str, want: Any, timeout: float = WAIT_MS / 1000) -> None:
    """Evaluate ``script`` in the page until it returns ``want`` (no timing asserted: the
    deadline only ends the wait), then check it."""
    deadline = time.monotonic() + timeout
    got = page.evaluate(script)
    while got != want and time.monotonic() < deadline:
        page.wait_for_timeout(50)
        got = page.evaluate(script)
    assert got == want


def check_tree_aria(page: Any) -> list[dict[str, Any]]:
    """Every item: role treeitem, aria-level its depth, aria-posinset/-setsize its place
    among its siblings, aria-expanded only with children (and then whether they show),
    aria-selected "true" or "false"; its children's list a group; the tree a named tree.
    The items, in document order."""
    tree = page.locator("#tree-root")
    assert tree.get_attribute("role") == "tree"
    assert tree.get_attribute("aria-label")
    items = page.evaluate(TREE_ARIA)
    for it in items:
        assert it["role"] == "treeitem", it
        assert it["group"] == "group", it
        assert it["level"] == str(it["depth"]), it
        assert it["posinset"] == str(it["index"]), it
        assert it["setsize"] == str(it["siblings"]), it
        assert it["expanded"] == (str(it["open"]).lower() if it["children"] else None), it
        assert it["selected"] in ("true", "false"), it
    assert sum(it["selected"] == "true" for it in items) <= 1
    return items


def _aria_run(graph_url: str, embedded_server: Any, tmp_path: Path) -> str:
    """A finished run, nested four deep, with an option never explored (listed last):

    aria-run > plan, route > (search > query, answer, ask-user), write
    """
    configure_sdk(graph_url, embedded_server, tmp_path)
    try:
        with spangraph.workflow("aria-run") as run:
            with spangraph.step("plan"):
                pass
            options = ["search", "answer", "ask-user"]
            with spangraph.decision("route", options=options) as choice:
                with choice.option("search"), spangraph.step("query"):
                    pass
                with choice.option("answer"):
                    pass
                choice.choose("search")
            with spangraph.step("write"):
                pass
        assert spangraph.flush(10)
    finally:
        spangraph.shutdown()
    return run.workflow_id or ""


ARIA_RUN = ["aria-run", "plan", "route", "search", "query", "answer", "ask-user", "write"]


@needs_chromium
def test_the_run_tree_is_an_aria_tree_with_one_tab_stop(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """The run tree is a WAI-ARIA tree (tree, treeitem with level, place in its set,
    expanded and selected, group) and one Tab stop: the first node, then the selected
    one; the rows' buttons, twisties and Jaeger links are out of the Tab order (before:
    no tree semantics, and two Tab stops a row, 4 000 for a run of 2 000 spans)."""
    from playwright.sync_api import expect

    workflow_id = _aria_run(graph_url, embedded_server, tmp_path)
    app = create_app(_settings(graph_url, embedded_server.redis_url, tmp_path))
    with serve(app) as base:
        open_run(page, base, workflow_id)
        expect(page.locator("#tree li.tree-item")).to_have_count(len(ARIA_RUN))
        expect(node(page, "ask-user")).to_have_attribute("data-state", "unexplored")
        items = check_tree_aria(page)
        got = {
            it["name"]: (it["level"], it["posinset"], it["setsize"], it["expanded"]) for it in items
        }
        assert [it["name"] for it in items] == ARIA_RUN
        assert got == {
            "aria-run": ("1", "1", "1", "true"),
            "plan": ("2", "1", "3", None),
            "route": ("2", "2", "3", "true"),
            "search": ("3", "1", "3", "true"),
            "query": ("4", "1", "1", None),
            "answer": ("3", "2", "3", None),
            "ask-user": ("3", "3", "3", None),
            "write": ("2", "3", "3", None),
        }
        assert all(it["selected"] == "false" for it in items)
        # the rows' Jaeger links are there, out of the Tab order (the node panel has one)
        expect(node(page, "query").locator(":scope > .row > a.jaeger")).to_have_attribute(
            "href", re_full(r".+\?uiFind=[0-9a-f]{16}")
        )
        poll_until(page, TREE_TAB_STOPS, ["aria-run"])
        expect(node(page, "aria-run")).to_have_attribute("tabindex", "0")

        # a click selects: the node is the Tab stop, selected, and its panel shows
        node(page, "query").locator(":scope > .row > .node-btn").click()
        expect(page.locator("#detail-title")).to_have_text("query")
        expect(node(page, "query")).to_have_attribute("aria-selected", "true")
        expect(page.locator("#detail a.jaeger")).to_have_count(1)
        poll_until(page, TREE_TAB_STOPS, ["query"])
        items = check_tree_aria(page)
        assert [it["name"] for it in items if it["selected"] == "true"] == ["query"]

        # collapsed around the selected node: the collapsing node is the Tab stop
        page.locator("#filter-name").focus()
        node(page, "search").locator(":scope > .row > .twisty").click()
        expect(node(page, "search")).to_have_attribute("aria-expanded", "false")
        expect(node(page, "query")).to_be_hidden()
        poll_until(page, TREE_TAB_STOPS, ["search"])
        check_tree_aria(page)
        node(page, "search").locator(":scope > .row > .twisty").click()
        expect(node(page, "search")).to_have_attribute("aria-expanded", "true")
        page.locator("#filter-name").focus()
        poll_until(page, TREE_TAB_STOPS, ["query"])


@needs_chromium
def test_the_run_tree_keys(page: Any, embedded_server: Any, graph_url: str, tmp_path: Path) -> None:
    """Tab enters the tree at one node, the arrow keys, Home and End move the focus (and
    the Tab stop with it) between the nodes shown, → and ← expand, collapse and go to a
    child or the parent, Enter and Space select, * expands the siblings; Tab leaves the
    tree, and back into it lands on the selected node."""
    from playwright.sync_api import expect

    workflow_id = _aria_run(graph_url, embedded_server, tmp_path)
    app = create_app(_settings(graph_url, embedded_server.redis_url, tmp_path))
    keyboard = page.keyboard

    def press(key: str, focused: str) -> None:
        keyboard.press(key)
        expect(node(page, focused)).to_be_focused()
        expect(node(page, focused)).to_have_attribute("tabindex", "0")
        poll_until(page, TREE_TAB_STOPS, [focused])

    with serve(app) as base:
        open_run(page, base, workflow_id)
        expect(page.locator("#tree li.tree-item")).to_have_count(len(ARIA_RUN))
        expect(node(page, "ask-user")).to_have_attribute("data-state", "unexplored")
        page.locator("#tree").focus()  # where "Skip to the run tree" leaves the focus
        press("Tab", "aria-run")
        press("ArrowDown", "plan")
        press("ArrowDown", "route")
        press("ArrowUp", "plan")
        press("ArrowDown", "route")
        press("ArrowRight", "search")  # open: to its first child
        press("ArrowRight", "query")
        press("ArrowRight", "query")  # a leaf: nothing
        press("ArrowLeft", "search")  # a leaf: to its parent
        press("ArrowLeft", "search")  # open: collapses, the focus stays
        expect(node(page, "search")).to_have_attribute("aria-expanded", "false")
        expect(node(page, "query")).to_be_hidden()
        press("ArrowDown", "answer")  # past the collapsed node's child
        press("ArrowUp", "search")
        press("ArrowRight", "search")  # collapsed: expands, the focus stays
        expect(node(page, "search")).to_have_attribute("aria-expanded", "true")
        press("ArrowDown", "query")
        press("End", "write")
        press("ArrowDown", "write")  # the last: nothing
        press("Home", "aria-run")
        press("ArrowUp", "aria-run")  # the first: nothing
        press("ArrowLeft", "aria-run")  # collapses the whole run
        expect(node(page, "aria-run")).to_have_attribute("aria-expanded", "false")
        press("End", "aria-run")
        press("ArrowRight", "aria-run")
        press("ArrowDown", "plan")
        press("ArrowDown", "route")
        press("ArrowLeft", "route")
        expect(node(page, "route")).to_have_attribute("aria-expanded", "false")
        press("ArrowDown", "write")
        press("*", "write")  # expands its collapsed siblings
        expect(node(page, "route")).to_have_attribute("aria-expanded", "true")
        check_tree_aria(page)
        assert page.locator("#detail-title").text_content() == "Node"  # nothing selected

        # Enter and Space select (as a click does), the focus stays in the tree
        press("ArrowUp", "ask-user")
        press("ArrowUp", "answer")
        press("Enter", "answer")
        expect(page.locator("#detail-title")).to_have_text("answer")
        expect(node(page, "answer")).to_have_attribute("aria-selected", "true")
        assert "&node=" in page.evaluate("location.hash")
        press("ArrowDown", "ask-user")
        expect(node(page, "answer")).to_have_attribute("aria-selected", "true")
        press(" ", "ask-user")
        expect(page.locator("#detail-title")).to_have_text("ask-user")
        expect(node(page, "ask-user")).to_have_attribute("aria-selected", "true")
        expect(node(page, "answer")).to_have_attribute("aria-selected", "false")
        items = check_tree_aria(page)
        assert [it["name"] for it in items if it["selected"] == "true"] == ["ask-user"]

        # the focus moved on without selecting, Tab leaves the tree (one stop, not a
        # stop a row), and Shift+Tab comes back to the selected node
        press("ArrowUp", "answer")
        keyboard.press("Tab")
        poll_until(page, "document.activeElement.closest('#tree-root') === null", True)
        poll_until(page, TREE_TAB_STOPS, ["ask-user"])
        keyboard.press("Shift+Tab")
        expect(node(page, "ask-user")).to_be_focused()


@needs_chromium
def test_live_updates_keep_one_tab_stop_and_the_focus(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """Rows added, redrawn and moved by live messages: the tree keeps its ARIA states
    right (levels of items that move under a parent that came late, places in their
    sets, expanded once a node has children), one Tab stop, and the focus where it is,
    in the tree (a focused row that moves keeps it) or outside it (never taken)."""
    from playwright.sync_api import expect

    app = create_app(_settings(graph_url, embedded_server.redis_url, tmp_path))
    stream = FakeStream.on(app)
    workflow_id = f"live-aria-{uuid.uuid4().hex[:8]}"
    msg = Messages(workflow_id)
    t0 = time.time_ns()
    root, a, b, c, d, e, x, g, gg = (f"{i:x}" * 16 for i in range(1, 10))

    def started(span_id: str, parent: str | None, kind: str, name: str, at: int) -> Any:
        # offsets from t0 in microseconds: the page reads times as doubles, which near
        # 1.7e18 ns tell apart only 256 ns (m0..m5, 50 ns apart, came in any order)
        at = t0 + (at - t0) * 1000
        return {**msg("span.started", span_id, parent, kind, name), "time_unix_nano": at}

    def names_in(span_name: str) -> Any:
        items = node(page, span_name).locator(":scope > ul > li.tree-item")
        return items.evaluate_all("els => els.map(e => e.dataset.name)")

    with serve(app) as base:
        open_run(page, base, workflow_id)
        conn = stream.next_connection()
        try:
            conn.send_batch(
                subscribed_message(workflow_id),
                started(root, None, "workflow", "live-aria", t0),
                started(a, root, "step", "a", t0 + 1000),
                started(b, root, "step", "b", t0 + 3000),
            )
            expect(page.locator("#tree li.tree-item")).to_have_count(3)
            poll_until(page, TREE_TAB_STOPS, ["live-aria"])  # nothing selected: the first
            check_tree_aria(page)

            node(page, "b").locator(":scope > .row > .node-btn").click()
            expect(node(page, "b")).to_be_focused()
            poll_until(page, TREE_TAB_STOPS, ["b"])

            # while b has the focus: it gets a child, a sibling starts before it, a
            # sibling's row is redrawn (ended)
            conn.send(
                started(c, b, "step", "c", t0 + 4000),
                started(d, root, "step", "d", t0 + 2000),
                msg("span.ended", a, root, "step", "a", state="completed", duration_ms=5.0),
            )
            expect(node(page, "b")).to_have_attribute("aria-expanded", "true")
            expect(state_of(page, "a")).to_have_text("completed")
            expect(node(page, "b")).to_have_attribute("aria-posinset", "3")
            assert names_in("live-aria") == ["a", "d", "b"]
            expect(node(page, "b")).to_be_focused()
            poll_until(page, TREE_TAB_STOPS, ["b"])
            check_tree_aria(page)

            # children before their parent: g (and its child gg) wait at the top, then
            # move under x when it comes, two and three levels down
            conn.send(
                started(g, x, "step", "g", t0 + 6000),
                started(gg, g, "step", "gg", t0 + 7000),
            )
            expect(node(page, "gg")).to_have_attribute("aria-level", "2")
            expect(node(page, "g")).to_have_attribute("aria-level", "1")
            conn.send(started(x, root, "step", "x", t0 + 5000))
            expect(node(page, "gg")).to_have_attribute("aria-level", "4")
            expect(node(page, "g")).to_have_attribute("aria-level", "3")
            expect(node(page, "x")).to_have_attribute("aria-level", "2")
            expect(node(page, "live-aria")).to_have_attribute("aria-setsize", "1")
            expect(node(page, "b")).to_be_focused()
            poll_until(page, TREE_TAB_STOPS, ["b"])
            check_tree_aria(page)

            # a focused row that moves (its start known only later) keeps the focus
            conn.send(msg("tool.call", e, root, "step", "e"))
            expect(node(page, "e")).to_have_attribute("aria-posinset", "5")
            page.keyboard.press("End")
            expect(node(page, "e")).to_be_focused()
            conn.send(started(e, root, "step", "e", t0 + 500))
            expect(node(page, "e")).to_have_attribute("aria-posinset", "1")
            assert names_in("live-aria") == ["e", "a", "d", "b", "x"]
            expect(node(page, "e")).to_be_focused()
            poll_until(page, TREE_TAB_STOPS, ["e"])
            check_tree_aria(page)

            # the focus outside the tree: live rows never take it, and Tab comes back
            # to the selected node
            page.locator("#filter-name").focus()
            poll_until(page, TREE_TAB_STOPS, ["b"])
            more = [uuid.uuid4().hex[:16] for _ in range(6)]
            conn.send_batch(
                *(started(s, root, "step", f"m{i}", t0 + 10 + 50 * i) for i, s in enumerate(more)),
                started(uuid.uuid4().hex[:16], b, "step", "c2", t0 + 4500),
                msg("span.ended", b, root, "step", "b", state="failed", duration_ms=9.0),
            )
            expect(node(page, "m5")).to_have_attribute("aria-posinset", "6")
            expect(state_of(page, "b")).to_have_text("failed")
            expect(node(page, "b")).to_have_attribute("aria-setsize", "11")
            expect(page.locator("#filter-name")).to_be_focused()
            poll_until(page, TREE_TAB_STOPS, ["b"])
            check_tree_aria(page)
        finally:
            conn.close()


# -- a run thousands of levels deep, an error without a message -----------------------------

# Each tree item's aria-level next to its depth by its span's parent (``data-parent``: the
# page nests only the first levels of a deep tree), and its place among its siblings.
DEEP_TREE = """() => {
  const items = [...document.querySelectorAll("#tree-root li.tree-item")];
  const byId = new Map(items.map((li) => [li.dataset.spanId, li]));
  const depth = (li) => {
    let d = 1;
    for (let p = byId.get(li.dataset.parent); p; p = byId.get(p.dataset.parent)) d += 1;
    return d;
  };
  return items.map((li) => ({
    name: li.dataset.name, role: li.getAttribute("role"), level: li.getAttribute("aria-level"),
    depth: depth(li), posinset: li.getAttribute("aria-posinset"),
    setsize: li.getAttribute("aria-setsize"), expanded: li.getAttribute("aria-expanded"),
  }));
}"""


@needs_chromium
def test_a_run_thousands_of_levels_deep_opens(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """A run 2 000 levels deep, written by the SDK: the page shows it down to its deepest
    span, each item with its level and place, and its deep rows select, collapse, expand
    and move by the keys as any other. Before: the page's JSON reviver overflowed the
    stack on the run's tree (from ~1 700 levels: "Could not load the run"), and the
    tree, nested in the DOM as deep as the run, crashed Chromium's renderer (past ~1 500
    levels)."""
    from playwright.sync_api import expect

    depth = 2000
    configure_sdk(graph_url, embedded_server, tmp_path)
    try:
        with spangraph.workflow("deep-run") as run, contextlib.ExitStack() as stack:
            for i in range(depth):
                stack.enter_context(spangraph.step(f"level-{i}"))
        assert spangraph.flush(60)
    finally:
        spangraph.shutdown()
    app = create_app(_settings(graph_url, embedded_server.redis_url, tmp_path))
    names = ["deep-run"] + [f"level-{i}" for i in range(depth)]
    with serve(app) as base:
        open_run(page, base, run.workflow_id or "")
        deepest = node(page, names[-1])
        expect(deepest).to_have_attribute("aria-level", str(depth + 1), timeout=30_000)
        expect(page.locator("#tree li.tree-item")).to_have_count(depth + 1)
        expect(state_of(page, names[-1])).to_have_text("completed")
        expect(page.locator("#conn")).to_have_attribute("data-transport", "done")
        expect(page.locator("#tree-empty")).to_be_hidden()
        items = page.evaluate(DEEP_TREE)
        assert [it["name"] for it in items] == names  # in tree order
        for it in items:
            assert it["role"] == "treeitem", it
            assert it["level"] == str(it["depth"]), it
            assert (it["posinset"], it["setsize"]) == ("1", "1"), it
            assert it["expanded"] == (None if it["name"] == names[-1] else "true"), it
        # the page nests a few dozen levels, not thousands
        nested = deepest.evaluate(
            "(el) => { let n = 0; for (let p = el; p; p = p.parentElement) n += 1; return n; }"
        )
        assert nested < 200, nested

        deepest.locator(":scope > .row > .node-btn").click()
        expect(page.locator("#detail-title")).to_have_text(names[-1])
        expect(deepest).to_be_focused()
        page.keyboard.press("ArrowLeft")  # a leaf: to its parent
        expect(node(page, names[-2])).to_be_focused()
        page.keyboard.press("ArrowUp")
        expect(node(page, names[-3])).to_be_focused()

        # a deep row collapses (the rows under it hide, the focus comes to it) and expands
        middle = node(page, "level-1500")
        middle.locator(":scope > .row > .twisty").click()
        expect(middle).to_have_attribute("aria-expanded", "false")
        expect(middle).to_be_focused()
        expect(node(page, "level-1501")).to_be_hidden()
        expect(deepest).to_be_hidden()
        page.keyboard.press("End")  # the last node shown
        expect(middle).to_be_focused()
        page.keyboard.press("ArrowRight")  # expands
        expect(middle).to_have_attribute("aria-expanded", "true")
        expect(deepest).to_be_visible()
        page.keyboard.press("End")
        expect(deepest).to_be_focused()
        page.keyboard.press("Home")
        expect(node(page, "deep-run")).to_be_focused()
        expect(deepest).to_have_attribute("aria-selected", "true")


@needs_chromium
def test_an_error_without_a_message_reads_its_type_alone(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """An exception raised without a message (``TimeoutError()``, as the demo's
    ``large-model`` option fails) leaves the status message "TimeoutError: ": the node
    panel says "Error: TimeoutError" (before: "Error: TimeoutError:", nothing after the
    colon). An error with a message keeps it."""
    from playwright.sync_api import expect

    configure_sdk(graph_url, embedded_server, tmp_path)
    try:
        with spangraph.workflow("timeout-run") as run:
            with spangraph.decision("summarizer", options=["large-model", "small-model"]) as pick:
                with contextlib.suppress(TimeoutError), pick.option("large-model"):
                    raise TimeoutError
                with pick.option("small-model"):
                    pass
                pick.choose("small-model")
            with contextlib.suppress(TimeoutError), spangraph.step("with-message"):
                raise TimeoutError("no answer in 2 s")
        assert spangraph.flush(10)
    finally:
        spangraph.shutdown()
    app = create_app(_settings(graph_url, embedded_server.redis_url, tmp_path))
    with serve(app) as base:
        open_run(page, base, run.workflow_id or "")
        error = page.locator("#detail .error-box")
        node(page, "large-model").locator(":scope > .row > .node-btn").click()
        expect(page.locator("#detail-title")).to_have_text("large-model")
        expect(error).to_contain_text("TimeoutError")
        assert error.evaluate("e => e.innerText") == "Error: TimeoutError"
        node(page, "with-message").locator(":scope > .row > .node-btn").click()
        expect(error).to_contain_text("no answer")
        assert error.evaluate("e => e.innerText") == "Error: TimeoutError: no answer in 2 s"


# -- narrow windows, failures, attempts and focus --------------------------------------------

# Boxes of the page's elements that stick out of the window sideways (the tree's own rows
# aside: the tree scrolls sideways in its box), hidden ones and the skip link left out.
OUTSIDE_THE_WINDOW = """() => {
  const width = document.documentElement.clientWidth;
  const out = [];
  for (const el of document.querySelectorAll("body *")) {
    if (el.closest("#tree-root, .skip, .sr-only, dialog")) continue;
    const r = el.getBoundingClientRect();
    if (!r.width || !r.height) continue;
    if (r.left < -0.5 || r.right > width + 0.5) {
      out.push([el.tagName, el.id || el.className, Math.round(r.left), Math.round(r.right)]);
    }
  }
  return { out, page: document.documentElement.scrollWidth, width };
}"""


def _failing_runs(graph_url: str, embedded_server: Any, home: Path) -> dict[str, str]:
    """Runs that failed, written by the SDK; their workflow_ids by name:

    - ``checkout-agent``: a step failed its three attempts (a two-line error), after a
      step that failed once and then went through;
    - ``handled-agent``: the run's own code raised after a step it got past (a fallback
      step after it);
    - ``verbose-agent``: a step's error is one line of 300 characters.
    """
    tries = iter([True, False])

    @spangraph.step(retries=1, backoff=0)
    def fetch() -> None:
        if next(tries):
            raise ConnectionError("HTTP 503 from the billing API")

    @spangraph.step(retries=2, backoff=0)
    def charge() -> None:
        raise RuntimeError("gateway rejected the request: card_declined\n  code=4002")

    ids = {}
    with recording(graph_url, embedded_server, home):
        with contextlib.suppress(RuntimeError), spangraph.workflow("checkout-agent") as run:
            fetch()
            with spangraph.step("payment"):
                charge()
        ids["checkout-agent"] = run.workflow_id or ""
        with contextlib.suppress(RuntimeError), spangraph.workflow("handled-agent") as run:
            with contextlib.suppress(ValueError), spangraph.step("rank"):
                raise ValueError("ranker returned NaN")
            with spangraph.step("rank_fallback"):
                pass
            raise RuntimeError("answer failed validation\nsee the validator's log")
        ids["handled-agent"] = run.workflow_id or ""
        with (
            contextlib.suppress(ValueError),
            spangraph.workflow("verbose-agent") as run,
            spangraph.step("parse"),
        ):
            raise ValueError("x" * 300)
        ids["verbose-agent"] = run.workflow_id or ""
    return ids


@needs_chromium
def test_a_failed_run_says_what_failed(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """A failed run's header said where it failed, not what failed: it gives the first
    line of that span's error (the whole of it in its tooltip, at most 120 characters
    shown) and, for a retried step, which attempt; when the run's own code raised, the
    run's own error. The runs list says a failed run's error in a line under it."""
    from playwright.sync_api import expect

    ids = _failing_runs(graph_url, embedded_server, tmp_path)
    declined = "RuntimeError: gateway rejected the request: card_declined\n  code=4002"
    with serving(graph_url, embedded_server, tmp_path) as base:
        open_run(page, base, ids["checkout-agent"])
        meta = page.locator("#run-meta")
        expect(meta).to_contain_text(
            "failed at charge (attempt 3): RuntimeError: gateway rejected the request:"
            " card_declined"
        )
        error = meta.locator("bdi.failure")
        expect(error).to_have_text("RuntimeError: gateway rejected the request: card_declined")
        expect(error).to_have_attribute("title", declined)
        meta.locator("button.link").click()
        expect(page.locator("#detail-title")).to_have_text("charge")
        expect(node(page, "charge").locator(":scope > .row .attempt")).to_have_text(
            "attempt 1/3"
        )  # (the first of the three: the selected one is the third)
        selected = page.locator('#tree li.tree-item[aria-selected="true"]')
        expect(selected.locator(":scope > .row .attempt")).to_have_text("attempt 3/3")

        # the runs list: a line under each failed run, its error's first line
        listed = page.locator('#runs li[data-name="checkout-agent"] .run-error')
        expect(listed).to_have_text("RuntimeError: gateway rejected the request: card_declined")
        expect(listed).to_have_attribute("title", declined)
        expect(page.locator('#runs li[data-name="checkout-agent"] button')).to_have_attribute(
            "aria-label", "checkout-agent, failed: " + declined.split("\n")[0]
        )
        handled = page.locator('#runs li[data-name="handled-agent"] .run-error')
        expect(handled).to_have_text("RuntimeError: answer failed validation")

        # the run's own code raised: nothing named, the run's own error
        open_run(page, base, ids["handled-agent"])
        expect(page.locator("#run-title")).to_have_text("handled-agent")
        expect(meta).to_contain_text("failed: RuntimeError: answer failed validation")
        expect(meta.locator("button.link")).to_have_count(0)
        expect(meta.locator("bdi.failure")).to_have_attribute(
            "title", "RuntimeError: answer failed validation\nsee the validator's log"
        )

        # a long error: its start, cut at 120 characters
        open_run(page, base, ids["verbose-agent"])
        expect(meta.locator("button.link")).to_have_text("parse")
        cut = "ValueError: " + "x" * 107 + "…"
        expect(meta.locator("bdi.failure")).to_have_text(cut)
        expect(meta.locator("bdi.failure")).to_have_attribute("title", "ValueError: " + "x" * 300)
        expect(page.locator('#runs li[data-name="verbose-agent"] .run-error')).to_have_text(cut)


@needs_chromium
def test_attempts_a_step_was_retried_from_read_as_retried(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """The first attempt of a retried step had no label (labels began at "attempt 2"),
    and an attempt the step was retried from read "failed" in red like the failure that
    ended the run. Every attempt of a step that was (or may be) retried says which it
    is, and a failed attempt with a later one after it reads "failed · retried", muted,
    and says so to a screen reader; the attempt that ended the step keeps its red. Live
    too: attempt 1 turns "retried" when attempt 2 starts."""
    from playwright.sync_api import expect

    ids = _failing_runs(graph_url, embedded_server, tmp_path)

    def rows(name: str) -> Any:
        return page.locator(f'#tree li.tree-item[data-name="{name}"] > .row .node-btn')

    def looks(name: str) -> list[list[Any]]:
        return rows(name).evaluate_all(
            """els => els.map((b) => {
              const badge = b.querySelector(".state");
              return [b.querySelector(".attempt").textContent, badge.textContent,
                      badge.classList.contains("retried"), getComputedStyle(badge).color];
            })"""
        )

    red = "rgb(179, 38, 30)"  # --failed
    muted = "rgb(91, 101, 115)"  # --muted
    with serving(graph_url, embedded_server, tmp_path) as base:
        open_run(page, base, ids["checkout-agent"])
        expect(rows("charge")).to_have_count(3)
        expect(rows("charge").nth(2)).to_have_attribute(
            "aria-label", re_full(r"step charge, attempt 3 of 3, failed, .+ ms")
        )
        assert looks("charge") == [
            ["attempt 1/3", "failed", True, muted],
            ["attempt 2/3", "failed", True, muted],
            ["attempt 3/3", "failed", False, red],
        ]
        expect(rows("charge").nth(0)).to_have_attribute(
            "aria-label", re_full(r"step charge, attempt 1 of 3, failed, retried, .+ ms")
        )
        assert (
            rows("charge")
            .nth(0)
            .locator(".state")
            .evaluate("b => getComputedStyle(b, '::after').content")
            == '" · retried"'
        )
        assert looks("fetch") == [
            ["attempt 1/2", "failed", True, muted],
            ["attempt 2/2", "completed", False, "rgb(23, 112, 58)"],
        ]
        # steps that may not be retried, or were not: no attempt said
        assert looks("payment") == [["", "failed", False, red]]

    # live: attempt 1 fails, then attempt 2 starts (each in a frame of its own)
    app = create_app(_settings(graph_url, embedded_server.redis_url, tmp_path))
    stream = FakeStream.on(app)
    workflow_id = f"retry-{uuid.uuid4().hex[:8]}"
    msg = Messages(workflow_id)
    root, first, second, other = "a1" * 8, "b2" * 8, "c3" * 8, "d4" * 8
    with serve(app) as base:
        open_run(page, base, workflow_id)
        conn = stream.next_connection()
        try:
            conn.send_batch(
                subscribed_message(workflow_id),
                msg("span.started", root, None, "workflow", "retrying"),
                # a step called twice, never retried: both attempt 1, no attempt said
                msg("span.started", other, root, "step", "lookup", **{"spangraph.step.attempt": 1}),
                msg("span.started", first, root, "step", "fetch", **{"spangraph.step.attempt": 1}),
            )
            expect(rows("fetch")).to_have_count(1)
            expect(rows("fetch").locator(".attempt")).to_have_text("")
            conn.send(msg("span.ended", first, root, "step", "fetch", state="failed"))
            expect(rows("fetch").locator(".state")).to_have_text("failed")
            expect(rows("fetch").locator(".state")).not_to_have_class(re_word("retried"))
            conn.send(
                msg("span.started", second, root, "step", "fetch", **{"spangraph.step.attempt": 2})
            )
            expect(rows("fetch")).to_have_count(2)
            expect(rows("fetch").locator(".attempt")).to_have_text(["attempt 1", "attempt 2"])
            expect(rows("fetch").nth(0).locator(".state")).to_have_class(re_word("retried"))
            expect(rows("fetch").nth(0)).to_have_attribute(
                "aria-label", re_full(r"step fetch, attempt 1, failed, retried(, .+)?")
            )
            expect(rows("lookup").locator(".attempt")).to_have_text("")
        finally:
            conn.close()


@needs_chromium
def test_a_phone_sized_window_shows_the_run_in_one_column(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """At 390x844 (a phone) the page kept a 240 px runs column beside the run: the run's
    title was 0 px wide, its tree and insights cut off. One column now: the runs (a
    short list that scrolls) above the run, then the node panel; nothing sticks out of
    the window but the tree's rows, which scroll sideways in the tree's own box."""
    from playwright.sync_api import expect

    workflow_id = _flat_run(
        graph_url,
        "customer-support-triage",
        [f"step-{i:02d}" for i in range(30)],
        before=_runs([f"other-run-{i:02d}" for i in range(12)], time.time_ns() - 10**12),
    )
    page.set_viewport_size({"width": 390, "height": 844})
    with serving(graph_url, embedded_server, tmp_path) as base:
        open_run(page, base, workflow_id)
        title = page.locator("#run-title")
        expect(title).to_have_text("customer-support-triage")
        expect(state_of(page, "step-29")).to_have_text("completed")
        box = title.bounding_box()
        assert box["width"] >= 150, box  # (before: 0)
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390, box
        outside = page.evaluate(OUTSIDE_THE_WINDOW)
        assert outside["out"] == [] and outside["page"] <= outside["width"], outside
        # one column: the runs, the run and the node panel one above the other, full width
        boxes = (
            "els => els.map((e) => { const r = e.getBoundingClientRect();"
            " return [r.left, r.width, r.top]; })"
        )
        panels = page.eval_on_selector_all(".runs-panel, .run-panel, .detail-panel", boxes)
        (runs, run, detail) = panels
        assert runs[2] < run[2] < detail[2], panels
        for left, width, _ in panels:
            assert left <= 10 and width >= 370, panels
        insights = page.eval_on_selector_all(".insights > section", boxes)
        assert len({round(left) for left, _, _ in insights}) == 1, insights  # stacked
        # the runs list is short, and scrolls
        runs_list = page.locator("#runs")
        assert runs_list.evaluate("e => e.scrollHeight > e.clientHeight"), "all runs shown"
        assert runs_list.bounding_box()["height"] <= 844 / 2
        # a row far down the tree can be reached, its name whole in sight
        row = node(page, "step-29").locator(":scope > .row > .node-btn")
        row.scroll_into_view_if_needed()
        expect(row).to_be_in_viewport()
        name = node(page, "step-29").locator(":scope > .row .name")
        expect(name).to_be_in_viewport(ratio=1)
        assert name.evaluate("e => e.scrollWidth <= e.clientWidth && e.clientWidth > 0")
        # and the node panel, after a tap on it
        row.click()
        expect(page.locator("#detail-title")).to_have_text("step-29")
        expect(page.locator("#detail-title")).to_be_in_viewport()
        expect(page.locator("#detail dd[data-fact=Duration]")).to_be_in_viewport()
        outside = page.evaluate(OUTSIDE_THE_WINDOW)
        assert outside["out"] == [] and outside["page"] <= outside["width"], outside


@needs_chromium
def test_a_big_run_in_a_narrow_window_keeps_the_node_panel_near(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """Below 1 100 px a big run made the page as tall as its tree (225 steps: 7 400 px),
    so a click near the top scrolled 6 700 px down to the node panel, and rows arriving
    live moved it. The tree scrolls in a box of its own: the page stays a few screens
    tall and the node panel comes into view beside the tree."""
    from playwright.sync_api import expect

    workflow_id = _flat_run(graph_url, "nightly-ingest", [f"record-{i:03d}" for i in range(225)])
    page.set_viewport_size({"width": 800, "height": 700})
    with serving(graph_url, embedded_server, tmp_path) as base:
        open_run(page, base, workflow_id)
        expect(page.locator("#tree li.tree-item")).to_have_count(226)
        tree = page.locator("#tree")
        assert tree.evaluate("e => e.scrollHeight > e.clientHeight")  # its own scroll
        assert page.evaluate("document.documentElement.scrollHeight") < 3 * 700
        node(page, "record-003").locator(":scope > .row > .node-btn").click()
        expect(page.locator("#detail-title")).to_have_text("record-003")
        expect(page.locator("#detail-title")).to_be_in_viewport()
        expect(node(page, "record-003").locator(":scope > .row")).to_be_in_viewport()
        assert page.evaluate("document.documentElement.scrollHeight") < 3 * 700


@needs_chromium
def test_model_calls_still_running_are_counted_apart(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """The header said "1 without usage" of a model call still streaming (its usage
    comes when it ends): running calls are counted apart from those that ended without
    reporting any."""
    from playwright.sync_api import expect

    workflow_id, root = f"tokens-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex[:16]
    usage = {"gen_ai.usage.input_tokens": 100, "gen_ai.usage.output_tokens": 50}
    _write_spans(
        graph_url,
        [
            _span(workflow_id, root, "chatting", "workflow", state="running"),
            _span(workflow_id, "b2" * 8, "chat a", "llm", parent=root, attributes=usage),
            _span(workflow_id, "c3" * 8, "chat b", "llm", parent=root, start=1, state="running"),
            _span(workflow_id, "d4" * 8, "chat c", "llm", parent=root, start=2),
        ],
    )
    with serving(graph_url, embedded_server, tmp_path) as base:
        open_run(page, base, workflow_id)
        expect(page.locator("#run-meta")).to_contain_text(
            "3 model calls, 150 tokens (100 in, 50 out; 1 running, 1 without usage)"
        )


# (a ring's colours and the contrast of each with white and the selected row's blue)
FOCUS_RING = """(el) => {
  const s = getComputedStyle(el);
  return { visible: el.matches(":focus-visible"), outline: s.outlineColor,
           outlineWidth: s.outlineWidth, offset: s.outlineOffset, shadow: s.boxShadow };
}"""


def _contrast(a: str, b: str) -> float:
    """WCAG contrast of two colours given as "rgb(r, g, b)" or "#rrggbb"."""
    import re

    def luminance(color: str) -> float:
        if color.startswith("#"):
            rgb = [int(color[i : i + 2], 16) for i in (1, 3, 5)]
        else:
            rgb = [int(x) for x in re.findall(r"\d+", color)[:3]]
        lin = [(c / 255) / 12.92 if c <= 10 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in rgb]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]

    hi, lo = sorted([luminance(a), luminance(b)], reverse=True)
    return (hi + 0.05) / (lo + 0.05)


@needs_chromium
def test_the_focus_ring_stands_out_on_white_and_on_the_selected_blue(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """The focus ring was amber alone (#f0a30a: 2.1:1 against white, 1.8:1 against the
    selected row's blue) and the first run's lost its top edge to the list's edge. It
    has a dark inner line now (3:1 and more against both), and the list room above its
    first run for the ring."""
    from playwright.sync_api import expect

    workflow_id = _simple_run(graph_url, "focus-run")
    with serving(graph_url, embedded_server, tmp_path) as base:
        open_run(page, base, workflow_id)
        expect(state_of(page, "only-step")).to_have_text("completed")
        # Tab from the run filters' last control to the first run
        page.locator("#auto-refresh").focus()
        page.keyboard.press("Tab")
        first = page.locator("#runs li").first.locator("button")
        expect(first).to_be_focused()
        expect(first).to_have_attribute("aria-current", "true")  # (the selected blue)
        ring = first.evaluate(FOCUS_RING)
        assert ring["visible"], ring
        inner = re_full(r"(rgb\(\d+, \d+, \d+\)) 0px 0px 0px (\d+)px inset").match(ring["shadow"])
        assert inner and int(inner[2]) >= 2, ring
        for background in ("#ffffff", "#e8effc"):
            assert _contrast(inner[1], background) >= 3, (ring, background)
        assert _contrast(ring["outline"], "#18212f") >= 3, ring  # (the top bar, dark)
        # the whole ring inside the runs list, which clips what it scrolls
        room = page.evaluate(
            """() => {
              const list = document.getElementById("runs").getBoundingClientRect();
              const entry = document.querySelector("#runs li button").getBoundingClientRect();
              return entry.top - list.top;
            }"""
        )
        reach = float(ring["outlineWidth"].removesuffix("px")) + float(
            ring["offset"].removesuffix("px")
        )
        assert room >= reach, (room, ring)
        # a tree item rings its node's button alike
        node(page, "only-step").locator(":scope > .row > .node-btn").click()
        page.keyboard.press("ArrowUp")
        expect(node(page, "focus-run")).to_be_focused()
        ring = node(page, "focus-run").locator(":scope > .row > .node-btn").evaluate(FOCUS_RING)
        inner = re_full(r"(rgb\(\d+, \d+, \d+\)) 0px 0px 0px (\d+)px inset").match(ring["shadow"])
        assert inner and int(inner[2]) >= 2, ring
        for background in ("#ffffff", "#e8effc"):
            assert _contrast(inner[1], background) >= 3, (ring, background)


# each dot-separated part of an element's text: on how many lines it is laid out
LINES_OF_EACH_PART = """(el) => {
  const texts = [];
  let length = 0;
  const walker = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
  for (let t = walker.nextNode(); t; t = walker.nextNode()) {
    texts.push([t, length]);
    length += t.data.length;
  }
  const at = (i) => {
    const [t, from] = texts.findLast(([, from]) => from <= i);
    return [t, i - from];
  };
  const out = [];
  let start = 0;
  for (const part of el.textContent.split(/(?<=[.])/)) {
    const range = document.createRange();
    range.setStart(...at(start));
    const [t, i] = at(start + part.length - 1);
    range.setEnd(t, i + 1);
    out.push([part, new Set([...range.getClientRects()].map((r) => Math.round(r.top))).size]);
    start += part.length;
  }
  return out;
}"""


@needs_chromium
def test_names_keys_and_statuses_read_plainly(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """A run's name cut in the runs list had no tooltip; a long attribute key broke
    inside a word (``cache_crea`` / ``tion``) rather than after a dot; the node panel's
    "Status UNSET" read as jargon: it says "not set (UNSET)"."""
    from playwright.sync_api import expect

    workflow_id, root = f"plain-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex[:16]
    name = "nightly-bulk-ingest-of-every-customer-record-from-the-legacy-crm"
    key = "gen_ai.usage.cache_creation.input_tokens.and_then_some"
    _write_spans(
        graph_url,
        [
            _span(workflow_id, root, name, "workflow", attributes={key: 3}),
            _span(workflow_id, "b2" * 8, "unset-step", parent=root, start=1, status="UNSET"),
        ],
    )
    page.set_viewport_size({"width": 1280, "height": 900})
    with serving(graph_url, embedded_server, tmp_path) as base:
        open_run(page, base, workflow_id)
        listed = page.locator(f'#runs li[data-workflow-id="{workflow_id}"] .run-name')
        expect(listed).to_have_attribute("title", name)
        assert listed.evaluate("e => e.scrollWidth > e.clientWidth")  # (cut: the tooltip)
        node(page, name).locator(":scope > .row > .node-btn").click()
        th = page.locator("#detail table.attrs th").first
        expect(th).to_have_text(key)
        lines = th.evaluate(LINES_OF_EACH_PART)
        assert [part for part, _ in lines] == [
            "gen_ai.",
            "usage.",
            "cache_creation.",
            "input_tokens.",
            "and_then_some",
        ]
        assert all(n == 1 for _, n in lines), lines  # no part broken
        assert th.evaluate("e => e.getBoundingClientRect().height") > 2 * th.evaluate(
            "e => parseFloat(getComputedStyle(e).lineHeight) || 15"
        )  # (wrapped: after dots)
        node(page, "unset-step").locator(":scope > .row > .node-btn").click()
        expect(page.locator("#detail-title")).to_have_text("unset-step")
        expect(page.locator('#detail dd[data-fact="Status"]')).to_have_text("not set (UNSET)")
        node(page, name).locator(":scope > .row > .node-btn").click()
        expect(page.locator('#detail dd[data-fact="Status"]')).to_have_text("OK")


@needs_chromium
def test_a_call_two_instrumentations_recorded_counts_once(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """The Anthropic SDK's own span and OpenLLMetry's of the same call (one answer id),
    or LangChain's span around the OpenAI client's (same tokens, within its time): the
    header counted each call twice (8 calls, twice the tokens)."""
    from playwright.sync_api import expect

    workflow_id = f"twice-{uuid.uuid4().hex[:8]}"
    root, step = uuid.uuid4().hex[:16], uuid.uuid4().hex[:16]
    t0 = time.time_ns()

    def call(name: str, start: int, ms: float, **attributes: Any) -> dict[str, Any]:
        return _span(
            workflow_id, uuid.uuid4().hex[:16], name, "llm", parent=step, start_ns=t0 + start,
            duration_ms=ms, attributes={"gen_ai.operation.name": "chat", **attributes},
        )  # fmt: skip

    answer = {"gen_ai.response.id": "msg_01XFDUDYJgAACzvnptvVoYEL"}
    openinference = {"llm.token_count.prompt": 19, "llm.token_count.completion": 9}
    _write_spans(
        graph_url,
        [
            _span(workflow_id, root, "agent", "workflow", start_ns=t0),
            _span(workflow_id, step, "call-model", parent=root, start_ns=t0 + 1, duration_ms=50),
            # one answer, two spans (one reporting a token more)
            call("anthropic.chat", 10, 5, **answer, **{
                "gen_ai.usage.input_tokens": 25, "gen_ai.usage.output_tokens": 16}),
            call("anthropic.messages.create", 11, 3, **answer, **{
                "gen_ai.usage.input_tokens": 25, "gen_ai.usage.output_tokens": 15}),
            # LangChain's span around the client's, the same tokens
            call("ChatOpenAI", 20_000_000, 10, **openinference),
            call("chat gpt-4o-mini", 21_000_000, 8, **{
                "gen_ai.usage.input_tokens": 19, "gen_ai.usage.output_tokens": 9}),
            # two calls made at once that reported other tokens: two calls
            call("chat a", 40_000_000, 8, **{
                "gen_ai.usage.input_tokens": 100, "gen_ai.usage.output_tokens": 10}),
            call("chat b", 41_000_000, 5, **{
                "gen_ai.usage.input_tokens": 200, "gen_ai.usage.output_tokens": 20}),
            # the same prompt sent three times at once by one instrumentation: three calls
            *(call("chat same", 60_000_000 + i, 9 - i, **{
                "gen_ai.usage.input_tokens": 50, "gen_ai.usage.output_tokens": 1})
              for i in range(3)),
        ],
    )  # fmt: skip
    with serving(graph_url, embedded_server, tmp_path) as base:
        open_run(page, base, workflow_id)
        expect(page.locator("#run-meta")).to_contain_text(
            "7 model calls, 552 tokens (494 in, 58 out)"
        )
        expect(page.locator("#run-meta")).to_contain_text("11 spans")


@needs_chromium
def test_an_error_said_only_in_attributes_or_before_a_traceback(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """The Anthropic SDK's span of a failed call has no status message, only `error.type`
    and the HTTP status: the header said "failed at anthropic.messages.create" and
    nothing more, and its node no error. OpenInference's LangChain spans put a whole
    traceback after the error in the status message: it filled the error box."""
    from playwright.sync_api import expect

    workflow_id = f"fail-{uuid.uuid4().hex[:8]}"
    root, step, call, other = (uuid.uuid4().hex[:16] for _ in range(4))
    said = "InternalServerError: Error code: 500 - internal error"
    traceback = (
        "OpenAIAPIError('Error code: 500 - The server had an error')Traceback (most recent "
        'call last):\n\n\n  File "/venv/lib/langchain_openai/chat_models/base.py", line 2000\n'
        "    raw_response = self.client.with_raw_response.create(**payload)\n"
    )
    _write_spans(
        graph_url,
        [
            _span(workflow_id, root, "agent", "workflow", state="failed", status_message=said),
            _span(workflow_id, other, "ChatOpenAI", "llm", parent=root, start=1, state="failed",
                  status_message=traceback),
            _span(workflow_id, step, "failing-call", parent=root, start=1000, state="failed",
                  status_message=said),
            _span(workflow_id, call, "anthropic.messages.create", "llm", parent=step,
                  start=2000, state="failed", attributes={
                      "error.type": "api_error", "http.response.status_code": 500}),
        ],
    )  # fmt: skip
    with serving(graph_url, embedded_server, tmp_path) as base:
        open_run(page, base, workflow_id)
        meta = page.locator("#run-meta")
        expect(meta).to_contain_text("failed at anthropic.messages.create: api_error (HTTP 500)")
        meta.locator("button.link").click()
        expect(page.locator("#detail-title")).to_have_text("anthropic.messages.create")
        expect(page.locator("#detail .error-box")).to_have_text("Error: api_error (HTTP 500)")
        node(page, "ChatOpenAI").locator(":scope > .row > .node-btn").click()
        expect(page.locator("#detail-title")).to_have_text("ChatOpenAI")
        expect(page.locator("#detail .error-box")).to_have_text(
            "Error: OpenAIAPIError('Error code: 500 - The server had an error')"
        )


@needs_chromium
def test_a_model_call_s_node_says_its_model_tokens_and_finish(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """A model call's node listed its attributes only, under each library's own names:
    it says which model answered, the tokens and why the answer ended, whichever
    conventions the span follows."""
    from playwright.sync_api import expect

    workflow_id = f"facts-{uuid.uuid4().hex[:8]}"
    root = uuid.uuid4().hex[:16]
    calls = {
        "anthropic.messages.create": {  # the Anthropic SDK's own span
            "gen_ai.operation.name": "chat", "gen_ai.provider.name": "anthropic",
            "gen_ai.request.model": "claude-sonnet-4-5",
            "gen_ai.response.model": "claude-sonnet-4-5-20250929",
            "gen_ai.usage.input_tokens": 1219, "gen_ai.usage.output_tokens": 6,
            "gen_ai.usage.cache_read.input_tokens": 1200,
            "anthropic.message.stop_reason": "tool_use",
        },
        "ChatOpenAI": {  # OpenInference
            "openinference.span.kind": "LLM", "llm.provider": "openai",
            "llm.model_name": "gpt-4o-mini-2024-07-18", "llm.token_count.prompt": 19,
        },
        "chat gpt-4o": {  # OpenTelemetry's GenAI conventions
            "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
            "gen_ai.request.model": "gpt-4o", "gen_ai.response.finish_reasons": ["stop", "length"],
        },
        "chat gpt-4o-mini": {  # Mastra: the list as JSON text
            "gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini",
            "gen_ai.response.finish_reasons": '["tool-calls"]',
        },
    }  # fmt: skip
    _write_spans(
        graph_url,
        [
            _span(workflow_id, root, "agent", "workflow"),
            *(
                _span(workflow_id, uuid.uuid4().hex[:16], name, "llm", parent=root,
                      start=1000 * (i + 1), attributes=attributes)
                for i, (name, attributes) in enumerate(calls.items())
            ),
        ],
    )  # fmt: skip
    expected = {
        "anthropic.messages.create": {
            "Model": "claude-sonnet-4-5-20250929",
            "Provider": "anthropic",
            "Tokens": "1,219 in, 6 out, 1,200 of the input from the cache",
            "Finish": "tool_use",
        },
        "ChatOpenAI": {"Model": "gpt-4o-mini-2024-07-18", "Provider": "openai",
                       "Tokens": "19 in"},  # no output count: not "0 out"
        "chat gpt-4o": {"Model": "gpt-4o", "Provider": "openai", "Finish": "stop, length"},
        "chat gpt-4o-mini": {"Model": "gpt-4o-mini", "Finish": "tool-calls"},
    }  # fmt: skip
    # a call whose name does not say its model is shown with it
    titles = {
        "anthropic.messages.create": "anthropic.messages.create (claude-sonnet-4-5)",
        "ChatOpenAI": "ChatOpenAI (gpt-4o-mini-2024-07-18)",
        "chat gpt-4o": "chat gpt-4o",
        "chat gpt-4o-mini": "chat gpt-4o-mini",
    }
    with serving(graph_url, embedded_server, tmp_path) as base:
        open_run(page, base, workflow_id)
        for name, facts in expected.items():
            node(page, name).locator(":scope > .row > .node-btn").click()
            expect(page.locator("#detail-title")).to_have_text(titles[name])
            for label in ("Model", "Provider", "Tokens", "Finish"):
                fact = page.locator(f'#detail dd[data-fact="{label}"]')
                if label in facts:
                    expect(fact).to_have_text(facts[label])
                else:
                    expect(fact).to_have_count(0)
        node(page, "agent").locator(":scope > .row > .node-btn").click()
        expect(page.locator("#detail-title")).to_have_text("agent")
        expect(page.locator('#detail dd[data-fact="Model"]')).to_have_count(0)


@needs_chromium
def test_a_run_stopped_at_a_breakpoint_says_it_waits_to_go_on(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """A LangGraph run stopped at a static breakpoint said nothing of it (no node asked:
    it read "waiting for an answer: interrupted")."""
    from playwright.sync_api import expect

    stops = {
        "before": "waiting to go on: stopped at a breakpoint before publish",
        "after": "waiting to go on: stopped at a breakpoint (next: publish, notify)",
    }
    with serving(graph_url, embedded_server, tmp_path) as base:
        for when, text in stops.items():
            workflow_id = f"bp-{when}-{uuid.uuid4().hex[:8]}"
            root = uuid.uuid4().hex[:16]
            next_nodes = ["publish"] if when == "before" else ["publish", "notify"]
            _write_spans(
                graph_url,
                [
                    _span(workflow_id, root, "reviewed", "workflow", attributes={
                        "langgraph.interrupted": True, "langgraph.breakpoint": when,
                        "langgraph.next": next_nodes}),
                    _span(workflow_id, uuid.uuid4().hex[:16], "draft", parent=root, start=1000),
                ],
            )  # fmt: skip
            open_run(page, base, workflow_id)
            expect(page.locator("#run-meta")).to_contain_text(text)
            expect(page.locator("#run-meta")).not_to_contain_text("waiting for an answer")


@needs_chromium
def test_a_route_to_several_nodes_shows_each_chosen(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """A LangGraph route that sent the run on to two nodes at once showed no option
    chosen (both "not explored", as a node that runs after a route is no option span)."""
    from playwright.sync_api import expect

    workflow_id = f"fan-{uuid.uuid4().hex[:8]}"
    root, route = uuid.uuid4().hex[:16], uuid.uuid4().hex[:16]
    _write_spans(
        graph_url,
        [
            _span(workflow_id, root, "fan", "workflow"),
            _span(workflow_id, route, "route", "decision", parent=root, start=1000, attributes={
                "spangraph.decision.options": ["search", "draft", "answer"],
                "langgraph.destinations": ["search", "draft"]}),
            _span(workflow_id, uuid.uuid4().hex[:16], "search", parent=root, start=2000),
            _span(workflow_id, uuid.uuid4().hex[:16], "draft", parent=root, start=2001),
        ],
    )  # fmt: skip
    with serving(graph_url, embedded_server, tmp_path) as base:
        open_run(page, base, workflow_id)
        for option, chosen in (("search", "true"), ("draft", "true"), ("answer", "false")):
            expect(page.locator(f'#decisions .option[data-option="{option}"]')).to_have_attribute(
                "data-chosen", chosen
            )


@needs_chromium
def test_agent_framework_runs_read_as_what_they_did(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """From agent frameworks' own spans: a tool span named after its class (smolagents'
    ``SimpleTool``) did not say which tool; a tool that failed with its error only in an
    event (pydantic-ai) left "failed at …" with no error, though its agent said it; an
    error whose first line ends with ":" (smolagents) hid its cause; the OpenAI Agents
    SDK's model calls (``llm.system``) had no provider; calls that all reported no usage
    were not said to."""
    from playwright.sync_api import expect

    workflow_id = f"frame-{uuid.uuid4().hex[:8]}"
    root, agent, tool = (uuid.uuid4().hex[:16] for _ in range(3))
    said = "ValueError: weather service exploded for Boom"
    _write_spans(
        graph_url,
        [
            _span(workflow_id, root, "agent-run", "workflow", state="failed", status_message=said),
            _span(workflow_id, agent, "invoke_agent weather_agent", "agent", parent=root,
                  start=1000, state="failed", status_message=said),
            _span(workflow_id, uuid.uuid4().hex[:16], "response", "llm", parent=agent,
                  start=2000, attributes={"llm.system": "openai", "llm.model_name": "gpt-4o"}),
            _span(workflow_id, tool, "SimpleTool", "tool", parent=agent, start=3000,
                  state="failed", attributes={"tool.name": "get_weather"}),
        ],
    )  # fmt: skip
    cause = "AgentGenerationError: Error while generating output:\nError code: 500 - busy"
    second = _flat_run(graph_url, "smol", [])
    with serving(graph_url, embedded_server, tmp_path) as base:
        open_run(page, base, workflow_id)
        meta = page.locator("#run-meta")
        expect(meta).to_contain_text(f"failed at get_weather (SimpleTool): {said}")
        expect(meta).to_contain_text("1 model call, 1 without usage")
        expect(node(page, "SimpleTool").locator(":scope > .row .name")).to_have_text(
            "get_weather (SimpleTool)"
        )
        node(page, "SimpleTool").locator(":scope > .row > .node-btn").click()
        expect(page.locator('#detail dd[data-fact="Tool"]')).to_have_text("get_weather")
        node(page, "response").locator(":scope > .row > .node-btn").click()
        expect(page.locator('#detail dd[data-fact="Provider"]')).to_have_text("openai")
        # a run whose own error's first line ends with ":"
        _write_spans(graph_url, [_span(second, uuid.uuid4().hex[:16], "smol-failed", "workflow",
                                       state="failed", status_message=cause)])  # fmt: skip
        open_run(page, base, second)
        expect(page.locator("#run-meta")).to_contain_text(
            "failed: AgentGenerationError: Error while generating output: Error code: 500 - busy"
        )


@needs_chromium
def test_a_failure_under_a_span_never_ended_is_where_the_run_failed(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """openinference-smolagents never ends its agent span when the model call fails: the
    header stopped at the run ("failed: …", the run's own code) instead of the call."""
    from playwright.sync_api import expect

    workflow_id = f"stuck-{uuid.uuid4().hex[:8]}"
    root, agent, step = (uuid.uuid4().hex[:16] for _ in range(3))
    error = "InternalServerError: Error code: 500 - busy"
    _write_spans(
        graph_url,
        [
            _span(workflow_id, root, "agent-run", "workflow", state="failed",
                  status_message="AgentGenerationError: Error while generating output:"),
            _span(workflow_id, agent, "weather_agent.run", "agent", parent=root, start=1000,
                  state="running"),
            _span(workflow_id, step, "Step 1", parent=agent, start=2000, state="running"),
            _span(workflow_id, uuid.uuid4().hex[:16], "OpenAIModel.generate", "llm",
                  parent=step, start=3000, state="failed", status_message=error),
        ],
    )  # fmt: skip
    # a tool under a span never ended, failed with no message: the run's error is its
    other = f"stuck2-{uuid.uuid4().hex[:8]}"
    top, agent2 = uuid.uuid4().hex[:16], uuid.uuid4().hex[:16]
    _write_spans(
        graph_url,
        [
            _span(other, top, "run-2", "workflow", state="failed",
                  status_message="ValueError: tool exploded"),
            _span(other, agent2, "agent.run", "agent", parent=top, start=1000, state="running"),
            _span(other, uuid.uuid4().hex[:16], "FunctionTool.acall", "tool", parent=agent2,
                  start=2000, state="failed", attributes={"tool.name": "call"}),
        ],
    )  # fmt: skip
    with serving(graph_url, embedded_server, tmp_path) as base:
        open_run(page, base, workflow_id)
        expect(page.locator("#run-meta")).to_contain_text(
            f"failed at OpenAIModel.generate: {error}"
        )
        open_run(page, base, other)
        expect(page.locator("#run-meta")).to_contain_text(
            "failed at call (FunctionTool.acall): ValueError: tool exploded"
        )


@needs_chromium
def test_a_run_whose_top_span_has_not_arrived_says_so(
    page: Any, embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """Over OTLP a run's children come before its top span: the header read as the first
    child (`plan · completed`), though another had failed and the run went on."""
    from playwright.sync_api import expect

    workflow_id = f"headless-{uuid.uuid4().hex[:8]}"
    root = uuid.uuid4().hex[:16]
    _write_spans(
        graph_url,
        [
            _span(workflow_id, uuid.uuid4().hex[:16], "plan", parent=root, start=1000),
            _span(workflow_id, uuid.uuid4().hex[:16], "summarize", parent=root, start=2000,
                  state="failed", status_message="RuntimeError: no summary"),
        ],
    )  # fmt: skip
    with serving(graph_url, embedded_server, tmp_path) as base:
        open_run(page, base, workflow_id)
        expect(page.locator("#run-state")).to_have_text("failed")
        expect(page.locator("#run-meta")).to_contain_text("its top span not received (yet)")
        # the top span arrives
        _write_spans(graph_url, [_span(workflow_id, root, "js-run", "workflow", start=0)])
        open_run(page, base, _simple_run(graph_url))
        open_run(page, base, workflow_id)
        expect(page.locator("#run-title")).to_have_text("js-run")
        expect(page.locator("#run-state")).to_have_text("completed")
        expect(page.locator("#run-meta")).not_to_contain_text("not received")
