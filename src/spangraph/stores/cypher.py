"""The Cypher statements spangraph sends, shared by FalkorDB and Neo4j 5.

Only the openCypher subset both stores run is used here (UNWIND, MERGE, SET +=, FOREACH,
CASE; the FalkorDB forms of :func:`falkordb_upsert` also OPTIONAL MATCH, CREATE and
coalesce). Labels and relationship types are interpolated only from the fixed maps below,
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


@cache
def falkordb_upsert(label: str | None, ended: bool | None) -> str:
    """The FalkorDB form of :func:`upsert_started` (``ended`` false) or
    :func:`upsert_ended` (``ended`` true), or of both at once (``ended`` ``None``: start
    rows, which have no ``end_ns`` and no ``state`` in their ``props``, then end rows,
    which have both): the same effect on the graph, in the form FalkorDB writes fast, for
    rows that hold each span once.

    * The node is looked up once (``OPTIONAL MATCH``); a missing node is created with
      ``CREATE`` (no second look-up), with ``:Span`` and its kind label at once: FalkorDB
      adds a label to a node that exists already (even one created earlier in the same
      statement) several times slower than a whole ``MERGE ... SET +=`` of the node; an
      existing node gets the label only when it lacks it. ``CREATE`` is right only
      because no other row of the statement writes the same span:
      ``FalkorDBStore.write`` merges repeated rows first.
    * Each statement that creates nodes and then sets their properties costs FalkorDB a
      fixed time that grows with the size of the graph (about 0.6 ms at 50 000 nodes, 2 ms
      at 200 000), hence the form for both kinds of rows at once (see
      ``docs/performance.md``).
    """
    if label is not None and label not in LABELS:
        raise ValueError(f"unknown label {label!r}")
    labels = f"Span:{label}" if label else "Span"
    if ended is None:
        state = ", n.state = coalesce(row.props.state, 'running')"
    else:
        state = "" if ended else ", n.state = 'running'"
    out = [
        "UNWIND $rows AS row\n"
        "OPTIONAL MATCH (s:Span {span_id: row.span_id})\n"
        "FOREACH (_ IN CASE WHEN s IS NULL THEN [1] ELSE [] END |\n"
        f"  CREATE (n:{labels} {{span_id: row.span_id}})\n"
        f"  SET n += row.props{state})"
    ]
    set_label = (
        f"\nFOREACH (_ IN CASE WHEN s IS NULL OR s:{label} THEN [] ELSE [1] END |\n  SET s:{label})"
        if label
        else ""
    )
    if ended is None:
        out.append(set_label)
        out.append(
            "\nFOREACH (_ IN CASE WHEN s IS NOT NULL"
            " AND (row.props.end_ns IS NOT NULL OR s.end_ns IS NULL) THEN [1] ELSE [] END |\n"
            "  SET s += row.props, s.state = coalesce(row.props.state, 'running'))"
        )
    elif ended:
        out.append("\nFOREACH (_ IN CASE WHEN s IS NULL THEN [] ELSE [1] END |\n")
        out.append("  SET s += row.props)")
        out.append(set_label)
    else:
        out.append(set_label)
        out.append(
            "\nFOREACH (_ IN CASE WHEN s IS NOT NULL AND s.end_ns IS NULL THEN [1] ELSE [] END |\n"
            "  SET s += row.props, s.state = 'running')"
        )
    return "".join(out)


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


ADOPT_SPANS: Final = (
    "UNWIND $rows AS row\n"
    "MATCH (s:Span {span_id: row.span_id})\n"
    "WHERE s.workflow_id = row.trace_id\n"
    "SET s.workflow_id = row.workflow_id,\n"
    "    s.execution_id = coalesce(s.execution_id, row.execution_id),\n"
    "    s.branch_id = coalesce(s.branch_id, row.branch_id),\n"
    "    s.project_id = coalesce(row.project_id, s.project_id)\n"
    "WITH s, row\n"
    "OPTIONAL MATCH (s)-[:OPTION_OF]->(o:Option)\n"
    "WHERE o.workflow_id = row.trace_id\n"
    "FOREACH (_ IN CASE WHEN o IS NULL THEN [] ELSE [1] END |\n"
    "  SET o.workflow_id = row.workflow_id,\n"
    "      o.execution_id = coalesce(o.execution_id, row.execution_id),\n"
    "      o.branch_id = coalesce(o.branch_id, row.branch_id))"
)
"""Rows ``{span_id, trace_id, workflow_id, execution_id, branch_id}``: a span written
under its trace id as run (its parent had not arrived) gets its parent's run ids, and so
do the unexplored options of a decision among them. A node that has a run of its own by
now is left as it is."""


LINK_RESUMES: Final = (
    "UNWIND $rows AS row\n"
    "MATCH (r:Span {span_id: row.span_id})\n"
    "MATCH (p:Workflow {execution_id: row.execution_id})\n"
    "WHERE p.workflow_id <> row.workflow_id AND p.start_ns < row.start_ns\n"
    "  AND p.project_id = row.project_id\n"
    "WITH r, row, max(p.start_ns) AS last\n"
    "MATCH (q:Workflow {execution_id: row.execution_id})\n"
    "WHERE q.start_ns = last AND q.workflow_id <> row.workflow_id\n"
    "WITH DISTINCT r, row, q.workflow_id AS previous\n"
    "MATCH (t:Span {workflow_id: previous})\n"
    "WHERE t:Workflow AND t.execution_id = row.execution_id\n"
    "WITH r, row, previous, min(t.start_ns) AS top\n"
    "MATCH (b:Span {workflow_id: previous})\n"
    "WHERE b:Workflow AND b.execution_id = row.execution_id AND b.start_ns = top\n"
    "MATCH (b)-[:HAS_EVENT]->(e:Event)\n"
    "WHERE e.name = 'workflow.paused'\n"
    "WITH DISTINCT r, b\n"
    "MERGE (r)-[x:RESUMED_FROM]->(b)\n"
    "ON CREATE SET x.inferred = true"
)
"""Rows ``{span_id, execution_id, start_ns, workflow_id, project_id}``: a workflow span
that records ``workflow.resumed`` without a ``resumed_from`` link (a LangGraph thread
resumed in another process than the one it paused in) gets a ``RESUMED_FROM`` edge
(marked ``inferred``) to the top workflow span of the run of its execution (and
project) that started last before it, when that span paused. Workflow spans of other
instrumentations inside a run belong to that run: they are not runs of their own."""

LINK_PAUSES: Final = (
    "UNWIND $rows AS row\n"
    "MATCH (p:Span {span_id: row.span_id})\n"
    "MATCH (n:Workflow {execution_id: row.execution_id})\n"
    "WHERE n.workflow_id <> row.workflow_id AND n.start_ns > row.start_ns\n"
    "  AND n.project_id = row.project_id\n"
    "WITH p, row, min(n.start_ns) AS next\n"
    "MATCH (r:Workflow {execution_id: row.execution_id})\n"
    "WHERE r.start_ns = next AND r.workflow_id <> row.workflow_id\n"
    "MATCH (r)-[:HAS_EVENT]->(e:Event)\n"
    "WHERE e.name = 'workflow.resumed'\n"
    "WITH DISTINCT p, r, row\n"
    "OPTIONAL MATCH (r)-[old:RESUMED_FROM]->(o:Span)\n"
    "WITH p, r, row, collect(old) AS links, collect(o.start_ns) AS starts\n"
    "WHERE all(x IN links WHERE x.inferred = true)\n"
    "  AND all(s IN starts WHERE s < row.start_ns)\n"
    "FOREACH (x IN links | DELETE x)\n"
    "MERGE (r)-[y:RESUMED_FROM]->(p)\n"
    "ON CREATE SET y.inferred = true"
)
"""Rows ``{span_id, execution_id, start_ns, workflow_id, project_id}``: a workflow span
that records ``workflow.paused``. The run of its execution (and project) that started
next after it, when its top span records ``workflow.resumed``, is linked to it: it may
have been written first (its process wrote first), unlinked, or linked by
:data:`LINK_RESUMES` to an older run while this one was not written yet (a thread that
paused twice): that inferred edge is replaced; a link the program made is kept."""


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


@cache
def remove_label(label: str) -> str:
    """Rows ``{span_id}``: spans whose start was written with the kind label ``label``
    and whose end names another kind (an instrumentation that set a second kind
    attribute later): the start's label goes, so that a node keeps one kind label.
    Written after the end rows, which set the end's label."""
    if label not in LABELS:
        raise ValueError(f"unknown label {label!r}")
    return f"UNWIND $rows AS row\nMATCH (s:Span {{span_id: row.span_id}})\nREMOVE s:{label}"


def write_statements() -> dict[str, str]:
    """Every write statement, by a descriptive name."""
    out: dict[str, str] = {}
    for label in (None, *LABELS):
        out[f"upsert_started[{label}]"] = upsert_started(label)
        out[f"upsert_ended[{label}]"] = upsert_ended(label)
        out[f"falkordb_upsert_started[{label}]"] = falkordb_upsert(label, False)
        out[f"falkordb_upsert_ended[{label}]"] = falkordb_upsert(label, True)
        out[f"falkordb_upsert_started_and_ended[{label}]"] = falkordb_upsert(label, None)
        if label is not None:
            out[f"remove_label[{label}]"] = remove_label(label)
    out["merge_parent_edges"] = MERGE_PARENT_EDGES
    out["merge_events"] = MERGE_EVENTS
    out["adopt_spans"] = ADOPT_SPANS
    out["link_resumes"] = LINK_RESUMES
    out["link_pauses"] = LINK_PAUSES
    for link_type in EDGE_RELATIONSHIPS:
        out[f"merge_links[{link_type}]"] = merge_links(link_type)
    return out


def all_statements() -> dict[str, str]:
    """Every Cypher statement the project can send to either store (writes and queries),
    by name, with Neo4j's DDL (FalkorDB's own DDL, ``stores.falkordb.DDL``, is not sent
    to Neo4j)."""
    from .. import _prune, queries
    from .neo4j import DDL as NEO4J_DDL
    from .neo4j import DEDUPLICATE_EVENTS, EVENT_INDEX

    out = write_statements()
    out.update({f"query:{k}": v for k, v in queries.statements().items()})
    out.update({f"prune:{k}": v for k, v in _prune.statements().items()})
    out.update({f"neo4j_ddl[{i}]": v for i, v in enumerate(NEO4J_DDL)})
    out["neo4j_event_index"] = EVENT_INDEX
    out["neo4j_deduplicate_events"] = DEDUPLICATE_EVENTS
    return out
