"""FalkorDB graph store (the embedded default), over the ``falkordb`` client."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import redis
from falkordb import FalkorDB
from falkordb.edge import Edge
from falkordb.helpers import stringify_param_value
from falkordb.path import Path
from redis.backoff import NoBackoff
from redis.retry import Retry

from .._redis_replies import is_passing, is_unknown_command
from .._utf8 import REPLACEMENT, utf8
from ..config import DEFAULT_FALKORDB_GRAPH, redact_url
from ..exceptions import (
    ConfigurationError,
    StoreError,
    StoreTimeoutError,
    StoreUnavailableError,
)
from . import cypher as shared_cypher
from ._base import Row, WriteBatch

_log = logging.getLogger(__name__)

DDL: Final = (
    "CREATE INDEX FOR (s:Span) ON (s.span_id)",
    "CREATE INDEX FOR (s:Span) ON (s.workflow_id)",
    "CREATE INDEX FOR (s:Span) ON (s.trace_id)",
    "CREATE INDEX FOR (s:Span) ON (s.branch_id)",
    "CREATE INDEX FOR (s:Span) ON (s.execution_id)",
    # the runs of one execution (the run list's, the inferred RESUMED_FROM edges'), not
    # every span of it
    "CREATE INDEX FOR (s:Workflow) ON (s.execution_id)",
    "CREATE INDEX FOR (e:Event) ON (e.span_id)",
)
"""FalkorDB index statements (FalkorDB's dialect; not sent to Neo4j)."""

CONSTRAINT_STATES: Final = "CALL db.constraints() YIELD status RETURN status"
"""Whether FalkorDB built its constraints (FalkorDB's own procedure)."""

_BUILT: Final = frozenset({"OPERATIONAL", "FAILED"})


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


_TRANSIENT = (redis.ConnectionError, redis.TimeoutError, OSError)


def _one_row_a_span(rows: list[Row], ended: bool) -> list[Row]:
    """``rows`` with the rows of a span that occurs more than once merged into one, at
    the place of its first: the effect of the shared upsert running them one after the
    other (``SET +=`` of each in turn; for start rows, none after one that sets
    ``end_ns``), which FalkorDB's ``MERGE ... SET +=`` does not keep to. The FalkorDB
    forms need it: they ``CREATE`` a missing node."""
    if len({row["span_id"] for row in rows}) == len(rows):
        return rows
    out: dict[Any, Row] = {}
    for row in rows:
        span_id = row["span_id"]
        prev = out.get(span_id)
        if prev is None:
            out[span_id] = row
        elif ended or prev["props"].get("end_ns") is None:
            out[span_id] = {**prev, **row, "props": {**prev["props"], **row["props"]}}
    return list(out.values())


def _start_like(row: Row) -> bool:
    """A start row as GraphSpanProcessor writes it: no ``end_ns``, no ``state``."""
    props = row["props"]
    return "end_ns" not in props and "state" not in props


def _end_like(row: Row) -> bool:
    """An end row as GraphSpanProcessor writes it: ``end_ns`` and ``state`` set."""
    props = row["props"]
    return props.get("end_ns") is not None and props.get("state") is not None


def write_statements(batch: WriteBatch) -> list[tuple[str, dict[str, Any]]]:
    """The (cypher, params) pairs that write ``batch`` on FalkorDB: the graph that
    ``batch.statements()`` leaves, in fewer and cheaper statements.

    Span rows go through :func:`~spangraph.stores.cypher.falkordb_upsert`, after the rows
    of a span repeated within one group are merged (:func:`_one_row_a_span`). When no
    span has rows in two groups (what GraphSpanProcessor sends: a span that starts and
    ends within a batch has only its end row), the start and end rows of a label go in
    one statement (if they look as the processor writes them: start rows without
    ``end_ns`` and ``state``, end rows with both), since each statement costs FalkorDB a
    fixed time that grows with the graph. Edges, events and links: the shared
    statements, after the span rows.
    """
    starts = [(label, _one_row_a_span(rows, False)) for label, rows in batch.starts.items() if rows]
    ends = [(label, _one_row_a_span(rows, True)) for label, rows in batch.ends.items() if rows]
    out: list[tuple[str, dict[str, Any]]] = []
    ended_labels = {label: rows for label, rows in ends}
    if any(label in ended_labels for label, _ in starts):
        seen: set[Any] = set()
        count = 0
        for _, rows in starts + ends:
            seen.update(row["span_id"] for row in rows)
            count += len(rows)
        if len(seen) == count:  # no span in two groups: their order does not matter
            for label, rows in starts:
                if label in ended_labels:
                    both = ended_labels[label]
                    if all(map(_start_like, rows)) and all(map(_end_like, both)):
                        cypher = shared_cypher.falkordb_upsert(label, None)
                        out.append((cypher, {"rows": rows + both}))
                        del ended_labels[label]
                        continue
                out.append((shared_cypher.falkordb_upsert(label, False), {"rows": rows}))
            for label, rows in ended_labels.items():
                out.append((shared_cypher.falkordb_upsert(label, True), {"rows": rows}))
            ends = []
            starts = []
    for label, rows in starts:
        out.append((shared_cypher.falkordb_upsert(label, False), {"rows": rows}))
    for label, rows in ends:
        out.append((shared_cypher.falkordb_upsert(label, True), {"rows": rows}))
    if batch.parents:
        out.append((shared_cypher.MERGE_PARENT_EDGES, {"rows": batch.parents}))
    out += batch.event_and_link_statements()
    return out


_KEY_TEXT: dict[Any, str] = {}
"""Map key -> its text in a parameter literal (backquoted, then a colon): rows use few keys."""


def _key_text(key: Any) -> str | None:
    text = _KEY_TEXT.get(key)
    if text is None and type(key) is str and key and "`" not in key:
        text = f"`{key}`:"
        if len(_KEY_TEXT) < 4096:
            _KEY_TEXT[key] = text
    return text


def _literal(value: Any) -> str:
    """``value`` as a literal of the ``CYPHER`` parameter header: exactly the text of the
    client's ``stringify_param_value``, faster on the plain types rows hold (str, int,
    float, bool, None, list, tuple, dict): the values of a map are handled inline rather
    than by one call each. Anything else, and any key the client would refuse, goes to
    the client's own function."""
    t = type(value)
    if t is str:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if t is int or t is float or t is bool:
        return str(value)
    if value is None:
        return "null"
    if t is dict:
        parts: list[str] = []
        append = parts.append
        for k, v in value.items():
            key = _KEY_TEXT.get(k) or _key_text(k)
            if key is None:
                return stringify_param_value(value)
            tv = type(v)
            if tv is str:
                append(key + '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"')
            elif tv is int or tv is float or tv is bool:
                append(key + str(v))
            else:
                append(key + _literal(v))
        return "{" + ",".join(parts) + "}"
    if t is list or t is tuple:
        return "[" + ",".join([_literal(v) for v in value]) + "]"
    return stringify_param_value(value)


_c_literal: Callable[[Any, Callable[[Any], str]], bytes] | None
try:
    from .._speedups import cypher_literal as _c_literal
except ImportError:  # the optional C extension was not built: _literal does the same
    _c_literal = None

_NUL: Final = b"\x00"


def _params_header(params: dict[str, Any] | None) -> bytes:
    """The ``CYPHER name=literal ...`` header of a query with ``params``, UTF-8 encoded
    (the literals in C where ``spangraph._speedups`` was built, the same bytes as
    :func:`_literal`'s text). Strings FalkorDB cannot store are mended rather than
    failing the batch: NUL and lone surrogates become U+FFFD."""
    if not params:
        return b""
    if _c_literal is not None:
        literal = _c_literal
        header = (
            b"CYPHER "
            + b" ".join(
                k.encode() + b"=" + literal(v, stringify_param_value) for k, v in params.items()
            )
            + b" "
        )
    else:
        header = utf8("CYPHER " + " ".join(f"{k}={_literal(v)}" for k, v in params.items()) + " ")
    # FalkorDB reads the query as a C string: a NUL character (which can only come from a
    # string value) would cut it short and the whole batch would be rejected.
    if _NUL in header:
        header = header.replace(_NUL, REPLACEMENT)
    return header


@dataclass(frozen=True, slots=True)
class EncodedWrite:
    """A write batch as ``GRAPH.QUERY`` commands in the wire format, ready to send."""

    packed: list[bytes | memoryview]
    commands: int
    source: WriteBatch | None = None
    """The batch it was encoded from (to split it when the store cannot finish it)."""


def _nothing() -> None:
    return None


def _plain(value: Any) -> Any:
    """Turn falkordb result objects into plain Python values: a node is its properties,
    a relationship ``{"type", "properties"}``, a path ``{"nodes", "relationships"}`` (as
    the Neo4j store gives them)."""
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return {
            "nodes": [_plain(n) for n in value.nodes()],
            "relationships": [_plain(e) for e in value.edges()],
        }
    if isinstance(value, Edge):
        return {"type": value.relation, "properties": _plain(value.properties)}
    props = getattr(value, "properties", None)
    if isinstance(props, dict):
        return {k: _plain(v) for k, v in props.items()}
    return value


class FalkorDBStore:
    """A :class:`~spangraph.stores.GraphStore` on FalkorDB.

    A batch is written as one pipeline of ``GRAPH.QUERY`` commands: one round trip.
    """

    def __init__(
        self,
        host: str = "localhost",
        port: int = 6379,
        graph: str = DEFAULT_FALKORDB_GRAPH,
        *,
        username: str | None = None,
        password: str | None = None,
        ssl: bool = False,
        socket_timeout: float = 10.0,
    ) -> None:
        if not graph:
            raise ConfigurationError("SPANGRAPH_GRAPH_URL", "graph name must not be empty")
        self.name = "falkordb"
        self.graph_name = graph
        self._host = host
        self._client_kwargs: dict[str, Any] = {
            "username": username,
            "password": password,
            "ssl": ssl,
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": min(socket_timeout, 5.0),
        }
        self._db = self._connect(port)
        self._graph = self._db.select_graph(graph)
        self._schema_ready = False
        # reads stop at this limit on the server (see query); None: the server's own
        self._read_limit_ms: int | None = max(1, int(socket_timeout * 900))
        self.compact_after_schema = False
        """Whether :meth:`ensure_schema` has the server rewrite its append-only file when
        it made an index or the constraint (the embedded server's store: see
        :func:`spangraph.embedded.compact`)."""
        # packs commands into the wire format: never connected, only its encoder is used
        pool = self._db.connection.connection_pool
        self._packer = pool.connection_class(**pool.connection_kwargs)
        # the connection of submit(), held between batches; replaced after an error
        self._writer: Any = None
        self._writer_pid = 0
        self._writer_generation = 0

    def _connect(self, port: int) -> FalkorDB:
        self.url: str = f"falkordb://{self._host}:{port}/{self.graph_name}"
        try:
            self._probe(port)
            # the client asks the server for its mode (sentinel, cluster) right here
            return FalkorDB(host=self._host, port=port, **self._client_kwargs)
        except redis.AuthenticationError as exc:
            raise StoreError(f"FalkorDB at {self.url} refused the credentials: {exc}") from exc
        except _TRANSIENT as exc:
            raise StoreUnavailableError(f"FalkorDB at {self.url} is unreachable: {exc}") from exc
        except redis.RedisError as exc:
            raise StoreError(f"FalkorDB at {self.url} answered with an error: {exc}") from exc

    def _probe(self, port: int) -> None:
        """PING ``port`` once, within the connect timeout (at most 5 s): a server that
        accepts connections but never answers is found out in that time, not in the
        longer ``socket_timeout`` that queries get. A server that cannot take writes for
        now (a full disk: Redis then refuses PING too) answers: it can be read."""
        client = self._probe_client(port)
        try:
            client.ping()
        except redis.ResponseError as exc:
            if not is_passing(exc):
                raise
        finally:
            client.close()

    @staticmethod
    def cannot_write_now(exc: BaseException) -> bool:
        """Whether ``exc`` (from :meth:`ping`) says the server answers but cannot take
        writes for now (a full disk, memory at its limit): readers may go on."""
        cause = exc.__cause__
        return isinstance(exc, StoreUnavailableError) and cause is not None and is_passing(cause)

    def _refused(self, exc: redis.ResponseError, what: str) -> StoreError:
        """The error an error reply to a write or a PING is raised as: unavailable, and so
        retried, when the server cannot take writes for now (a full disk, memory at its
        limit, a load) or is not a FalkorDB (a Redis without the graph module, where the
        embedded server was); else ``what`` was rejected."""
        if is_passing(exc):
            return StoreUnavailableError(f"FalkorDB at {self.url} cannot take writes now: {exc}")
        if is_unknown_command(exc):
            return StoreUnavailableError(
                f"the server at {self.url} is not a FalkorDB (no graph module): {exc}"
            )
        return StoreError(f"{what}: {exc}")

    def _probe_client(self, port: int) -> redis.Redis:
        """A client that connects as the FalkorDB client does (RESP2; TLS without the
        host name check, which the FalkorDB client leaves off), with short timeouts."""
        kwargs = self._client_kwargs
        return redis.Redis(
            host=self._host,
            port=port,
            username=kwargs["username"],
            password=kwargs["password"],
            ssl=kwargs["ssl"],
            ssl_check_hostname=False,
            protocol=2,
            socket_timeout=kwargs["socket_connect_timeout"],
            socket_connect_timeout=kwargs["socket_connect_timeout"],
            retry=Retry(NoBackoff(), 0),
        )

    def check_connections(self, check: Callable[[Any], None]) -> None:
        """Have every connection from now on pass ``check`` (a redis-py
        ``redis_connect_func``: it connects, and raises ``ConnectionError`` to refuse the
        server), also after :meth:`move_to`. Before the store is written to."""
        self._client_kwargs["connect_func"] = check
        # a client made anew: its pooled connections would reconnect without the check
        self.move_to(urlsplit(self.url).port or 6379)

    def move_to(self, port: int) -> None:
        """Write to ``port`` of the same host from now on (the embedded server came back
        on another port). Called by the thread that writes."""
        db = self._connect(port)
        if self._writer is not None:
            self._drop_writer()
        old, self._db = self._db, db
        self._graph = db.select_graph(self.graph_name)
        try:
            old.connection.close()
        except Exception:  # pragma: no cover - best effort
            _log.debug("closing FalkorDB connection failed", exc_info=True)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> FalkorDBStore:
        """``falkordb://[user:password@]host:port/graph`` (``redis://`` also accepted)."""
        parts = urlsplit(url)
        if parts.scheme not in ("falkordb", "falkordbs", "redis", "rediss"):
            raise ConfigurationError(
                "SPANGRAPH_GRAPH_URL", f"not a FalkorDB URL: {redact_url(url)!r}"
            )
        try:
            port = parts.port or 6379
        except ValueError:
            raise ConfigurationError(
                "SPANGRAPH_GRAPH_URL", f"bad port in {redact_url(url)!r}"
            ) from None
        graph = unquote(parts.path.lstrip("/")) or DEFAULT_FALKORDB_GRAPH
        return cls(
            parts.hostname or "localhost",
            port,
            graph,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            ssl=parts.scheme in ("falkordbs", "rediss"),
            **kwargs,
        )

    # -- GraphStore ---------------------------------------------------------------------

    def ping(self) -> None:
        """Raise :class:`StoreUnavailableError` unless the server answers and takes
        writes: one that cannot for now (a full disk: Redis then refuses PING, so that
        health checks notice) raises it too, its cause the reply (see
        :func:`cannot_write_now`: it can still be read)."""
        try:
            self._db.connection.ping()
        except _TRANSIENT as exc:
            raise StoreUnavailableError(f"FalkorDB at {self.url} is unreachable: {exc}") from exc
        except redis.ResponseError as exc:
            raise self._refused(exc, f"FalkorDB at {self.url} refused a PING") from exc

    def ensure_schema(self) -> None:
        if self._schema_ready:
            return
        conn = self._db.connection
        made = False
        try:
            for statement in DDL:
                try:
                    conn.execute_command("GRAPH.QUERY", self.graph_name, statement)
                    made = True
                except redis.ResponseError as exc:
                    if "already indexed" not in str(exc):
                        raise
            try:
                conn.execute_command(
                    "GRAPH.CONSTRAINT",
                    "CREATE",
                    self.graph_name,
                    "UNIQUE",
                    "NODE",
                    "Span",
                    "PROPERTIES",
                    "1",
                    "span_id",
                )
                made = True
            except redis.ResponseError as exc:
                if "already exists" not in str(exc).lower():
                    raise
            if made and self.compact_after_schema:
                from ..embedded import compact

                self._await_constraints(conn)
                compact(conn)
        except _TRANSIENT as exc:
            raise StoreUnavailableError(f"FalkorDB at {self.url} is unreachable: {exc}") from exc
        except redis.ResponseError as exc:
            raise self._refused(exc, "FalkorDB rejected the schema") from exc
        self._schema_ready = True

    def _await_constraints(self, conn: redis.Redis, timeout: float = 5.0) -> None:
        """Wait (up to ``timeout``) until the constraints are built: FalkorDB builds one in
        the background and writes it to the append-only file once built, which a rewrite
        begun before then would leave to be replayed (and refused) at every start."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = conn.execute_command("GRAPH.QUERY", self.graph_name, CONSTRAINT_STATES)
            if all(_text(row[0]) in _BUILT for row in reply[1]):
                return
            time.sleep(0.01)

    def encode(self, batch: WriteBatch) -> EncodedWrite:
        """``batch`` as the bytes :meth:`write` sends: all the client-side work of a
        write, which a caller may do on another thread than the sending one."""
        return self._encode(write_statements(batch), batch)

    def _encode(
        self, statements: list[tuple[str, dict[str, Any]]], source: WriteBatch | None = None
    ) -> EncodedWrite:
        graph = self.graph_name
        commands = [
            ("GRAPH.QUERY", graph, _params_header(params) + cypher.encode(), "--compact")
            for cypher, params in statements
        ]
        packed = self._packer.pack_commands(commands) if commands else []
        return EncodedWrite(packed, len(commands), source)

    def _unavailable(self, exc: BaseException) -> StoreError:
        """The error a transient failure while reading replies is raised as: a timeout is
        a :class:`StoreTimeoutError` (the write was sent; no answer came in time)."""
        if isinstance(exc, redis.TimeoutError):
            return StoreTimeoutError(
                f"FalkorDB at {self.url} did not answer a write within "
                f"{self._client_kwargs['socket_timeout']} s: {exc}"
            )
        return StoreUnavailableError(f"FalkorDB at {self.url} is unreachable: {exc}")

    def write(self, batch: WriteBatch | EncodedWrite) -> None:
        """Write ``batch`` (or what :meth:`encode` made of it) in one round trip."""
        encoded = batch if isinstance(batch, EncodedWrite) else self.encode(batch)
        if encoded.commands:
            self._send(encoded)

    def execute_many(self, statements: list[tuple[str, dict[str, Any]]]) -> None:
        """Send several write statements in one pipeline (one round trip)."""
        if statements:
            self._send(self._encode(statements))

    def submit(self, encoded: EncodedWrite) -> Callable[[], None]:
        """Send ``encoded`` without waiting for the reply; the returned function waits for
        it (and raises as :meth:`write` does). Calls from one thread only: batches
        submitted one after another share one connection, and the replies must be waited
        for in the same order."""
        if not encoded.commands:
            return _nothing
        if not self._schema_ready:
            self.ensure_schema()
        conn = self._writer
        if conn is None or self._writer_pid != os.getpid():
            pool = self._db.connection.connection_pool
            try:
                conn = self._writer = pool.get_connection()
            except _TRANSIENT as exc:
                raise StoreUnavailableError(
                    f"FalkorDB at {self.url} is unreachable: {exc}"
                ) from exc
            self._writer_pid = os.getpid()
        generation = self._writer_generation
        try:
            conn.send_packed_command(encoded.packed)
        except _TRANSIENT as exc:
            self._drop_writer()
            raise StoreUnavailableError(f"FalkorDB at {self.url} is unreachable: {exc}") from exc

        def wait() -> None:
            if self._writer_generation != generation:  # the connection went away meanwhile
                raise StoreUnavailableError(f"FalkorDB at {self.url}: connection lost")
            self._read_replies(conn, encoded.commands, self._drop_writer)

        return wait

    def _drop_writer(self) -> None:
        conn, self._writer = self._writer, None
        self._writer_generation += 1
        if conn is not None and self._writer_pid == os.getpid():
            conn.disconnect()
            self._db.connection.connection_pool.release(conn)

    def _read_replies(self, conn: Any, commands: int, on_lost: Callable[[], None]) -> None:
        rejected: redis.ResponseError | None = None
        try:
            for _ in range(commands):  # read every reply: the connection stays in step
                try:
                    conn.read_response()
                except redis.ResponseError as exc:
                    rejected = rejected or exc
        except _TRANSIENT as exc:
            on_lost()
            raise self._unavailable(exc) from exc
        except BaseException as exc:  # a reply it cannot read: the connection is out of step
            on_lost()
            if isinstance(exc, Exception):
                raise StoreError(f"FalkorDB sent a reply that cannot be read: {exc}") from exc
            raise
        if rejected is not None:
            raise self._refused(rejected, "FalkorDB rejected a write") from rejected

    def _send(self, encoded: EncodedWrite) -> None:
        if not self._schema_ready:
            self.ensure_schema()
        pool = self._db.connection.connection_pool
        try:
            conn = pool.get_connection()
        except _TRANSIENT as exc:
            raise StoreUnavailableError(f"FalkorDB at {self.url} is unreachable: {exc}") from exc
        try:
            try:
                conn.send_packed_command(encoded.packed)
            except _TRANSIENT as exc:
                conn.disconnect()
                raise StoreUnavailableError(
                    f"FalkorDB at {self.url} is unreachable: {exc}"
                ) from exc
            self._read_replies(conn, encoded.commands, conn.disconnect)
        finally:
            pool.release(conn)

    def query(self, cypher: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        # The parameters as the writes send them (the same header): a NUL would cut the
        # query short and a lone surrogate fail to encode, so both become U+FFFD, as they
        # were when written, and a look-up with one finds what was stored.
        try:
            header = _params_header(params).decode()
        except (ValueError, TypeError, RecursionError) as exc:  # e.g. a map key FalkorDB
            raise StoreError(f"a parameter cannot be sent to FalkorDB: {exc}") from None
        # The server stops a read at its time limit, set a little under the time this
        # client waits: a costly read it gave up on would otherwise run on for minutes,
        # and every write (the programs' spans) wait behind it.
        # (A server whose TIMEOUT_MAX is lower refuses any longer limit: its own applies.)
        limit_ms = self._read_limit_ms
        try:
            result = self._graph.ro_query(header + cypher, timeout=limit_ms)
        except _TRANSIENT as exc:
            raise StoreUnavailableError(f"FalkorDB at {self.url} is unreachable: {exc}") from exc
        except redis.ResponseError as exc:
            if "empty key" in str(exc):
                return []  # nothing has been written to this graph yet: no rows
            if limit_ms is not None and "TIMEOUT_MAX" in str(exc):
                self._read_limit_ms = None
                return self.query(cypher, params)
            if "timed out" in str(exc).lower():
                limit = "" if limit_ms is None else f" of {limit_ms / 1000:g} s"
                raise StoreError(
                    f"FalkorDB stopped a query at its time limit{limit} ({exc})"
                ) from exc
            raise StoreError(f"FalkorDB rejected a query: {exc}") from exc
        names = [h[1] if isinstance(h, list | tuple) else h for h in result.header]
        return [dict(zip(names, map(_plain, row), strict=True)) for row in result.result_set]

    def delete_all(self) -> None:
        """Drop the whole graph (tests and ``spangraph`` maintenance only)."""
        try:
            self._graph.delete()
        except redis.ResponseError:
            pass
        self._schema_ready = False

    def close(self) -> None:
        if self._writer is not None:
            self._drop_writer()
        try:
            self._db.connection.close()
        except Exception:  # pragma: no cover - best effort
            _log.debug("closing FalkorDB connection failed", exc_info=True)
