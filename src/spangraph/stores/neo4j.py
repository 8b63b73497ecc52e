"""Neo4j 5 graph store (production), over the official ``neo4j`` driver.

Same Cypher as FalkorDB (:mod:`spangraph.stores.cypher`); only the DDL below is Neo4j's
own. A batch is written in one write transaction; reads run as read queries. The driver
does not retry them (its managed transactions would, for 30 s, holding a query of the
API or a batch the worker retries with its own backoff): a transient error is raised at
once, as a StoreUnavailableError. The driver pools connections.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any, Final
from urllib.parse import urlsplit

from .._utf8 import mended_value
from ..config import graph_url_setting, redact_url
from ..exceptions import ConfigurationError, StoreError, StoreTimeoutError, StoreUnavailableError
from ._base import WriteBatch

_log = logging.getLogger(__name__)

DDL: Final = (
    "CREATE CONSTRAINT spangraph_span_id IF NOT EXISTS FOR (s:Span) REQUIRE s.span_id IS UNIQUE",
    "CREATE INDEX spangraph_span_workflow_id IF NOT EXISTS FOR (s:Span) ON (s.workflow_id)",
    "CREATE INDEX spangraph_span_trace_id IF NOT EXISTS FOR (s:Span) ON (s.trace_id)",
    "CREATE INDEX spangraph_span_branch_id IF NOT EXISTS FOR (s:Span) ON (s.branch_id)",
    "CREATE INDEX spangraph_span_execution_id IF NOT EXISTS FOR (s:Span) ON (s.execution_id)",
    "CREATE INDEX spangraph_workflow_execution_id IF NOT EXISTS "
    "FOR (s:Workflow) ON (s.execution_id)",
    # MERGE alone keeps (span_id, seq) unique only without concurrent writers (several
    # `spangraph serve` replicas on one database): a uniqueness constraint, which needs
    # the index of earlier versions gone (one on the same properties)
    "DROP INDEX spangraph_event_span IF EXISTS",
    "CREATE CONSTRAINT spangraph_event_key IF NOT EXISTS "
    "FOR (e:Event) REQUIRE (e.span_id, e.seq) IS UNIQUE",
)
"""Neo4j 5 constraint and index statements (idempotent)."""

EVENT_INDEX: Final = (
    "CREATE INDEX spangraph_event_span IF NOT EXISTS FOR (e:Event) ON (e.span_id, e.seq)"
)
"""What events get instead of their uniqueness constraint where the database already
holds duplicates (the constraint cannot be made over them)."""

DEDUPLICATE_EVENTS: Final = (
    "MATCH (e:Event)\n"
    "WITH e.span_id AS span_id, e.seq AS seq, collect(e) AS same\n"
    "WHERE size(same) > 1\n"
    "UNWIND same[1..] AS extra\n"
    "DETACH DELETE extra"
)
"""Deletes all but one Event node of each (span_id, seq): run it once, then restart, to
get the constraint."""

_TOO_BIG_OR_SLOW: Final = (
    "Neo.ClientError.Transaction.TransactionTimedOut",
    "Neo.ClientError.Transaction.TransactionTimedOutClientConfiguration",
    "Neo.ClientError.General.TransactionOutOfMemoryError",
    "Neo.TransientError.General.MemoryPoolOutOfMemoryError",
    "Neo.TransientError.General.OutOfMemoryError",
)
"""Server errors that say a transaction was too big or too slow: a timeout of the store's
(retried, then the batch is split, as on FalkorDB), not a statement it rejects."""

_STOPPED: Final = (
    "Neo.ClientError.Transaction.Terminated",
    "Neo.ClientError.Transaction.LockClientStopped",
)
"""A transaction the server stopped (an administrator's TERMINATE TRANSACTIONS, a
database shutting down): the server sends these as transient errors, and the driver
makes them client errors so that its own retries leave them alone. Nothing was wrong
with the batch: retried by the worker, not dropped."""


_FORBIDDEN: Final = "Neo.ClientError.Security.Forbidden"


class _SchemaForbidden(StoreError):
    """The user may not create constraints or indexes (no ``CREATE CONSTRAINT`` right)."""


def _is_acquisition_timeout(errors: Any, exc: Exception) -> bool:
    """Whether the driver gave up waiting for a pooled connection. Driver 6 raises its
    own ConnectionAcquisitionTimeoutError; driver 5 a ClientError of its own making
    (no server code) that says so."""
    own = getattr(errors, "ConnectionAcquisitionTimeoutError", None)
    if own is not None:
        return isinstance(exc, own)
    return (
        isinstance(exc, errors.ClientError)
        and exc.code is None
        and "failed to obtain a connection from the pool" in str(exc)
    )


def _plain(value: Any) -> Any:
    """Neo4j driver values as plain Python values: a node is its properties, a
    relationship ``{"type", "properties"}``, a path ``{"nodes", "relationships"}`` (as
    the FalkorDB store gives them)."""
    from neo4j.graph import Node, Path, Relationship

    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, Node):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, Relationship):
        return {"type": value.type, "properties": {k: _plain(v) for k, v in value.items()}}
    if isinstance(value, Path):
        return {
            "nodes": [_plain(n) for n in value.nodes],
            "relationships": [_plain(r) for r in value.relationships],
        }
    return value


class Neo4jStore:
    """A :class:`~spangraph.stores.GraphStore` on Neo4j 5 (``neo4j://``, ``neo4j+s://``,
    ``bolt://`` …), with user, password and database from the ``NEO4J_*`` settings."""

    def __init__(
        self,
        uri: str,
        *,
        user: str = "neo4j",
        password: str | None = None,
        database: str | None = None,
        max_connection_pool_size: int = 16,
        connection_timeout: float = 5.0,
        ping_timeout: float = 5.0,
        write_timeout: float = 10.0,
        query_timeout: float = 30.0,
        connection_acquisition_timeout: float = 15.0,
    ) -> None:
        try:
            import neo4j
        except ImportError:
            raise ConfigurationError(
                graph_url_setting(uri),
                f"{redact_url(uri)} needs the Neo4j driver: pip install 'spangraph[neo4j]'",
            ) from None
        try:
            _ = urlsplit(uri).port
        except ValueError:
            raise ConfigurationError(
                graph_url_setting(uri), f"bad port in {redact_url(uri)!r}"
            ) from None
        self._neo4j = neo4j
        self.name = "neo4j"
        self.url: str = redact_url(uri)  # for messages: never the password
        self.database = database
        self._ping_timeout = ping_timeout
        self._write_timeout = write_timeout
        self._query_timeout = query_timeout
        self._uri = uri
        self._driver_options: dict[str, Any] = {
            "auth": (user, password) if password is not None else None,
            "max_connection_pool_size": max_connection_pool_size,
            "connection_timeout": connection_timeout,
            # a pool emptied by a busy server: a timeout (retried), not a wait of 60 s
            "connection_acquisition_timeout": connection_acquisition_timeout,
            # no retries inside the driver: the worker retries with its own backoff
            # (negative: 0 would still retry once when the clock has not moved since
            # the first attempt, as a coarse clock may not)
            "max_transaction_retry_time": -1.0,
        }
        self._driver = self._new_driver()
        self._schema_ready = False

    def _new_driver(self) -> Any:
        neo4j = self._neo4j
        try:
            driver = neo4j.GraphDatabase.driver(self._uri, **self._driver_options)
        except (ValueError, neo4j.exceptions.ConfigurationError) as exc:
            reason = str(exc).replace(self._uri, self.url)  # the driver repeats the URI
            raise ConfigurationError(
                graph_url_setting(self._uri), f"bad Neo4j URI {self.url!r}: {reason}"
            ) from None
        self._pid = os.getpid()
        return driver

    @property
    def driver(self) -> Any:
        """This process's driver. The driver knows nothing of fork: a forked child would
        send its messages on the parent's sockets, crossed with the parent's. The child
        gets a driver of its own; the parent's is left alone (closing it would say
        goodbye on the parent's connections)."""
        if self._pid != os.getpid():
            self._driver = self._new_driver()
        return self._driver

    def _translate(self, exc: Exception, what: str) -> StoreError:
        errors = self._neo4j.exceptions
        transient = (
            errors.ServiceUnavailable,
            errors.SessionExpired,
            errors.TransientError,
            OSError,
        )
        if _is_acquisition_timeout(errors, exc) or (
            isinstance(exc, errors.Neo4jError) and exc.code in _TOO_BIG_OR_SLOW
        ):
            return StoreTimeoutError(f"Neo4j at {self.url} did not finish {what} in time: {exc}")
        if isinstance(exc, transient) or (
            isinstance(exc, errors.Neo4jError) and exc.code in _STOPPED
        ):
            return StoreUnavailableError(f"Neo4j at {self.url} is unavailable: {exc}")
        if isinstance(exc, errors.AuthError):
            return StoreError(
                f"Neo4j at {self.url} refused the credentials (NEO4J_USER, NEO4J_PASSWORD): {exc}"
            )
        return StoreError(f"Neo4j rejected {what}: {exc}")

    def ping(self) -> None:
        """Check that the server answers, within ``ping_timeout`` seconds: a server that
        accepts connections and never answers would otherwise hold the caller for the
        driver's 60 s connection acquisition timeout (and its retries)."""
        try:
            with warnings.catch_warnings():  # keyword arguments here are a "preview"
                warnings.filterwarnings("ignore", message=".*verify_connectivity")
                self.driver.verify_connectivity(connection_acquisition_timeout=self._ping_timeout)
        except Exception as exc:
            raise self._translate(exc, "the connection") from exc

    def ensure_schema(self) -> None:
        if self._schema_ready:
            return
        for statement in DDL:
            try:
                self._run_ddl(statement)
            except _SchemaForbidden as exc:
                # a user with read and write rights only (as applications should run):
                # the schema is an administrator's to make, once
                _log.warning(
                    "Neo4j at %s: the user may not change the schema (%s); writing on, "
                    "on the constraints and indexes an administrator made. They are:\n%s",
                    self.url,
                    exc,
                    ";\n".join(DDL),
                )
                break
            except StoreUnavailableError:
                raise
            except StoreError as exc:
                if "spangraph_event_key" not in statement:
                    raise
                # duplicates written before (concurrent writers, earlier versions): keep
                # writing, with the index instead, and say how to get the constraint
                _log.warning(
                    "Neo4j at %s: could not make events unique (%s); they are indexed "
                    "instead. Delete the duplicate events once with:\n%s\nand restart.",
                    self.url,
                    exc,
                    DEDUPLICATE_EVENTS,
                )
                self._run_ddl(EVENT_INDEX)
        self._schema_ready = True

    def _run_ddl(self, statement: str) -> None:
        try:
            self.driver.execute_query(
                self._neo4j.Query(statement, timeout=self._query_timeout),
                database_=self.database,
            )
        except Exception as exc:
            if getattr(exc, "code", None) == _FORBIDDEN:
                raise _SchemaForbidden(str(exc)) from exc
            raise self._translate(exc, "the schema") from exc

    def write(self, batch: WriteBatch) -> None:
        statements = batch.statements()
        if statements:
            self.execute_many(statements)

    def execute_many(self, statements: list[tuple[str, dict[str, Any]]]) -> None:
        """Run several write statements in one managed transaction."""
        if not self._schema_ready:
            self.ensure_schema()

        # the server ends a transaction that runs longer (a timeout: retried, then split)
        @self._neo4j.unit_of_work(timeout=self._write_timeout)
        def work(tx: Any) -> None:
            for cypher, params in statements:
                tx.run(cypher, params).consume()

        driver = self.driver
        try:
            # the bookmarks execute_query() reads with: a read after a flush sees the
            # write, also when a cluster routes it to another server
            with driver.session(
                database=self.database, bookmark_manager=driver.execute_query_bookmark_manager
            ) as session:
                try:
                    session.execute_write(work)
                except UnicodeEncodeError:
                    # a lone surrogate in a string, which UTF-8 cannot encode: the whole
                    # transaction again, such strings with U+FFFD, rather than dropped
                    statements = [(c, mended_value(p)) for c, p in statements]
                    session.execute_write(work)
        except Exception as exc:
            raise self._translate(exc, "a write") from exc

    def query(self, cypher: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        try:
            records, _, _ = self.driver.execute_query(
                self._neo4j.Query(cypher, timeout=self._query_timeout),
                mended_value(params) if params else {},  # lone surrogates as U+FFFD, as written
                database_=self.database,
                routing_=self._neo4j.RoutingControl.READ,
            )
        except Exception as exc:
            raise self._translate(exc, "a query") from exc
        return [{k: _plain(v) for k, v in record.items()} for record in records]

    def delete_all(self) -> None:
        """Delete every spangraph node (tests and maintenance only)."""
        self.driver.execute_query(
            "MATCH (n) WHERE n:Span OR n:Event DETACH DELETE n", database_=self.database
        )

    def close(self) -> None:
        if self._pid != os.getpid():
            return  # the parent's driver, inherited: the parent closes it
        try:
            self._driver.close()
        except Exception:  # pragma: no cover - best effort
            _log.debug("closing the Neo4j driver failed", exc_info=True)
