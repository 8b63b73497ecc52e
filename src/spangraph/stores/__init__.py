"""Graph stores: where spans are written and queried.

:class:`GraphStore` is the protocol; :class:`FalkorDBStore` (embedded default) and
``Neo4jStore`` implement it over one shared set of Cypher statements
(:mod:`spangraph.stores.cypher`).
"""

from __future__ import annotations

from ._base import GraphStore, WriteBatch
from .falkordb import FalkorDBStore

__all__ = ["FalkorDBStore", "GraphStore", "WriteBatch", "open_store"]


def open_store(settings: object) -> GraphStore:
    """Open the graph store named by ``settings.graph_url`` (see :mod:`spangraph.config`).

    ``embedded`` starts (or reuses) the embedded server under ``settings.home``.
    """
    from ..config import Settings

    assert isinstance(settings, Settings)
    if settings.graph_is_embedded:
        from ..embedded import EmbeddedServer

        server = EmbeddedServer(settings.home)
        return FalkorDBStore.from_url(server.ensure_running().graph_url)
    if settings.graph_is_neo4j:
        from .neo4j import Neo4jStore

        return Neo4jStore(
            settings.graph_url,
            user=settings.neo4j_user,
            password=settings.neo4j_password,
            database=settings.neo4j_database,
        )
    return FalkorDBStore.from_url(settings.graph_url)
