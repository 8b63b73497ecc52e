"""Graph stores: where spans are written and queried.

:class:`GraphStore` is the protocol; :class:`FalkorDBStore` (embedded default) and
``Neo4jStore`` implement it over one shared set of Cypher statements
(:mod:`spangraph.stores.cypher`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._base import GraphStore, WriteBatch

if TYPE_CHECKING:
    from .falkordb import FalkorDBStore

__all__ = ["FalkorDBStore", "GraphStore", "WriteBatch", "open_store"]


def __getattr__(name: str) -> Any:
    # FalkorDBStore (with its clients, redis and falkordb) is imported when first asked
    # for: `import spangraph` does not load the clients of a store it may never open
    if name == "FalkorDBStore":
        from .falkordb import FalkorDBStore

        return FalkorDBStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_store(settings: object, *, embedded: bool = False) -> GraphStore:
    """Open the graph store named by ``settings.graph_url`` (see :mod:`spangraph.config`).

    ``embedded`` starts (or reuses) the embedded server under ``settings.home``; the
    keyword ``embedded=True`` says that ``settings.graph_url`` is that server's address.
    The embedded server's store compacts its append-only file once it made the schema
    (:func:`spangraph.embedded.compact`).
    """
    from ..config import Settings
    from .falkordb import FalkorDBStore

    assert isinstance(settings, Settings)
    if settings.graph_is_embedded:
        from ..embedded import EmbeddedServer

        server = EmbeddedServer(settings.home)
        store = FalkorDBStore.from_url(server.ensure_running().graph_url)
        store.compact_after_schema = True
        return store
    if settings.graph_is_neo4j:
        from .neo4j import Neo4jStore

        return Neo4jStore(
            settings.graph_url,
            user=settings.neo4j_user,
            password=settings.neo4j_password,
            database=settings.neo4j_database,
        )
    store = FalkorDBStore.from_url(settings.graph_url)
    store.compact_after_schema = embedded
    return store
