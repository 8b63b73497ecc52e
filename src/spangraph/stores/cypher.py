"""The Cypher statements spangraph sends, shared by FalkorDB and Neo4j 5.

Only the openCypher subset both stores run is used here (UNWIND, MERGE, SET +=, FOREACH,
CASE). Labels and relationship types are interpolated only from the fixed maps below,
never from input; every value travels as a parameter. DDL lives in each store's dialect.

:func:`all_statements` lists every statement the project can send; the test suite lints
each with Neo4j's own Cypher linter.
"""

from __future__ import annotations

from functools import cache
from typing import Final

from .. import semconv

LABELS: Final = tuple(semconv.KIND_LABELS.values())
"""Every kind label a span node may carry besides ``:Span``."""

LINK_RELATIONSHIPS: Final = {
    semconv.LINK_MONITORS: "MONITORS",
    semconv.LINK_RETRY_OF: "RETRY_OF",
    semconv.LINK_RESUMED_FROM: "RESUMED_FROM",
    semconv.LINK_CHOSEN_OPTION: "CHOSEN_OPTION",
}
"""Relationship type written for each span-link type."""

OPTION_OF: Final = "option_of"
"""Edge key (not a span-link type) for ``(decision)-[:OPTION_OF]->(option)`` rows."""

EDGE_RELATIONSHIPS: Final = {**LINK_RELATIONSHIPS, OPTION_OF: "OPTION_OF"}
"""Relationship type written for each key of ``WriteBatch.links``."""

RELATIONSHIPS: Final = ("PARENT_OF", "HAS_EVENT", *EDGE_RELATIONSHIPS.values())
"""Every relationship type in the graph."""


def _label_clause(label: str | None) -> str:
    if label is None:
        return ""
    if label not in LABELS:
        raise ValueError(f"unknown label {label!r}")
    return f", s:{label}"


@cache
def upsert_started(label: str | None) -> str:
    """Write span-start rows ``{span_id, props}``: the node becomes ``running``.

    A start row that arrives after the end row (a replay, or spans from other hosts) only
    adds the label: the ended node keeps its final properties.
    """
    set_label = f"SET s:{label}\n" if label else ""
    if label is not None and label not in LABELS:
        raise ValueError(f"unknown label {label!r}")
    return (
        "UNWIND $rows AS row\n"
        "MERGE (s:Span {span_id: row.span_id})\n"
        f"{set_label}"
        "FOREACH (_ IN CASE WHEN s.end_ns IS NULL THEN [1] ELSE [] END |\n"
        "  SET s += row.props, s.state = 'running')"
    )


@cache
def upsert_ended(label: str | None) -> str:
    """Write span-end rows ``{span_id, props}``: final state, status, duration."""
    return (
        "UNWIND $rows AS row\n"
        "MERGE (s:Span {span_id: row.span_id})\n"
        f"SET s += row.props{_label_clause(label)}"
    )


def _known_label(label: str) -> str:
    if label not in LABELS:
        raise ValueError(f"unknown label {label!r}")
    return label


@cache
def upsert_started_new_with_label(label: str) -> str:
    """Same effect as :func:`upsert_started` for a kind label, in the form FalkorDB writes
    fast: a missing node is created with ``:Span`` and its label at once, and the label is
    added to an existing node only when it lacks it.

    FalkorDB adds a label to a node that exists already (even one created earlier in the
    same statement) about five times slower than a whole ``MERGE ... SET +=`` of the node
    (see ``docs/performance.md``); a node created with its labels costs next to nothing
    more. The ``MERGE`` in the first ``FOREACH`` (not ``CREATE``) keeps rows repeated
    within one batch idempotent.
    """
    label = _known_label(label)
    return (
        "UNWIND $rows AS row\n"
        "OPTIONAL MATCH (s:Span {span_id: row.span_id})\n"
        "FOREACH (_ IN CASE WHEN s IS NULL THEN [1] ELSE [] END |\n"
        f"  MERGE (n:Span:{label} {{span_id: row.span_id}})\n"
        "  SET n += row.props, n.state = 'running')\n"
        f"FOREACH (_ IN CASE WHEN s IS NULL OR s:{label} THEN [] ELSE [1] END |\n"
        f"  SET s:{label})\n"
        "FOREACH (_ IN CASE WHEN s IS NOT NULL AND s.end_ns IS NULL THEN [1] ELSE [] END |\n"
        "  SET s += row.props, s.state = 'running')"
    )


@cache
def upsert_ended_new_with_label(label: str) -> str:
    """Same effect as :func:`upsert_ended` for a kind label, in the form FalkorDB writes
    fast (see :func:`upsert_started_new_with_label`)."""
    label = _known_label(label)
    return (
        "UNWIND $rows AS row\n"
        "OPTIONAL MATCH (s:Span {span_id: row.span_id})\n"
        "FOREACH (_ IN CASE WHEN s IS NULL THEN [1] ELSE [] END |\n"
        f"  MERGE (n:Span:{label} {{span_id: row.span_id}})\n"
        "  SET n += row.props)\n"
        "FOREACH (_ IN CASE WHEN s IS NULL THEN [] ELSE [1] END |\n"
        "  SET s += row.props)\n"
        f"FOREACH (_ IN CASE WHEN s IS NULL OR s:{label} THEN [] ELSE [1] END |\n"
        f"  SET s:{label})"
    )


MERGE_PARENT_EDGES: Final = (
    "UNWIND $rows AS row\n"
    "MERGE (c:Span {span_id: row.span_id})\n"
    "MERGE (p:Span {span_id: row.parent_span_id})\n"
    "ON CREATE SET p.trace_id = row.trace_id, p.workflow_id = row.workflow_id\n"
    "MERGE (p)-[:PARENT_OF]->(c)"
)
"""Rows ``{span_id, parent_span_id, trace_id, workflow_id}``. A parent not written yet is
created as a placeholder carrying only its ids; its own start row fills it in later."""

MERGE_EVENTS: Final = (
    "UNWIND $rows AS row\n"
    "MERGE (s:Span {span_id: row.span_id})\n"
    "MERGE (e:Event {span_id: row.span_id, seq: row.seq})\n"
    "SET e.name = row.name, e.time_ns = row.time_ns, e.attributes = row.attributes\n"
    "MERGE (s)-[:HAS_EVENT]->(e)"
)
"""Rows ``{span_id, seq, name, time_ns, attributes}``; ``seq`` is the event's index in
its span, so a replayed batch writes nothing new."""


@cache
def merge_links(link_type: str) -> str:
    """Rows ``{span_id, target_span_id}`` for one link type (or ``option_of``):
    ``(span)-[:REL]->(target)``.

    A target that has not arrived (or never will) becomes a placeholder node.
    """
    rel = EDGE_RELATIONSHIPS[link_type]
    return (
        "UNWIND $rows AS row\n"
        "MERGE (a:Span {span_id: row.span_id})\n"
        "MERGE (b:Span {span_id: row.target_span_id})\n"
        f"MERGE (a)-[:{rel}]->(b)"
    )


def write_statements() -> dict[str, str]:
    """Every write statement, by a descriptive name."""
    out: dict[str, str] = {}
    for label in (None, *LABELS):
        out[f"upsert_started[{label}]"] = upsert_started(label)
        out[f"upsert_ended[{label}]"] = upsert_ended(label)
    for label in LABELS:
        out[f"upsert_started_new_with_label[{label}]"] = upsert_started_new_with_label(label)
        out[f"upsert_ended_new_with_label[{label}]"] = upsert_ended_new_with_label(label)
    out["merge_parent_edges"] = MERGE_PARENT_EDGES
    out["merge_events"] = MERGE_EVENTS
    for link_type in EDGE_RELATIONSHIPS:
        out[f"merge_links[{link_type}]"] = merge_links(link_type)
    return out


def all_statements() -> dict[str, str]:
    """Every Cypher statement the project can send to either store (writes and queries),
    by name, with Neo4j's DDL (FalkorDB's own DDL, ``stores.falkordb.DDL``, is not sent
    to Neo4j)."""
    from .. import queries
    from .neo4j import DDL as NEO4J_DDL

    out = write_statements()
    out.update({f"query:{k}": v for k, v in queries.statements().items()})
    out.update({f"neo4j_ddl[{i}]": v for i, v in enumerate(NEO4J_DDL)})
    return out
