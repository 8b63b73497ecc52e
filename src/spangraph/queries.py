"""The query library: questions about runs, answered from the graph store.

Every function takes a :class:`~spangraph.stores.GraphStore` and runs one Cypher
statement that both FalkorDB and Neo4j 5 accept (its text is in the docstring), with
values passed as parameters only. Unknown ids give an empty answer, never an error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Final

from .stores._base import GraphStore

_SPAN_FIELDS: Final = (
    "span_id, s.trace_id AS trace_id, s.parent_span_id AS parent_span_id, "
    "s.workflow_id AS workflow_id, s.execution_id AS execution_id, s.branch_id AS branch_id, "
    "s.project_id AS project_id, s.kind AS kind, s.name AS name, s.state AS state, "
    "s.status AS status, s.status_message AS status_message, s.start_ns AS start_ns, "
    "s.end_ns AS end_ns, s.duration_ms AS duration_ms, s.service AS service, s.env AS env, "
    "s.attributes AS attributes"
)

WORKFLOW_SPANS: Final = (
    "MATCH (s:Span {workflow_id: $workflow_id})\n"
    f"RETURN s.span_id AS {_SPAN_FIELDS}\n"
    "ORDER BY s.start_ns, s.span_id"
)

LIST_WORKFLOWS: Final = (
    "MATCH (s:Workflow)\n"
    "WHERE ($project_id IS NULL OR s.project_id = $project_id)\n"
    "  AND ($state IS NULL OR s.state = $state)\n"
    "  AND ($name IS NULL OR s.name = $name)\n"
    "  AND ($since_ns IS NULL OR s.start_ns >= $since_ns)\n"
    f"RETURN s.span_id AS {_SPAN_FIELDS}\n"
    "ORDER BY s.start_ns DESC\n"
    "LIMIT $limit"
)

PATH_TO_ROOT: Final = (
    "MATCH p = (root:Span)-[:PARENT_OF*0..]->(n:Span {span_id: $span_id})\n"
    "WHERE NOT ()-[:PARENT_OF]->(root)\n"
    "RETURN [x IN nodes(p) | x.span_id] AS span_ids,\n"
    "       [x IN nodes(p) | x.name] AS names,\n"
    "       [x IN nodes(p) | x.kind] AS kinds"
)

WORKFLOW_EVENTS: Final = (
    "MATCH (s:Span {workflow_id: $workflow_id})-[:HAS_EVENT]->(e:Event)\n"
    "RETURN s.span_id AS span_id, s.name AS span_name, s.kind AS kind, e.seq AS seq,\n"
    "       e.name AS name, e.time_ns AS time_ns, e.attributes AS attributes\n"
    "ORDER BY e.time_ns, s.span_id, e.seq"
)


def statements() -> dict[str, str]:
    """Every query statement, by name (linted with Neo4j's linter in the test suite)."""
    return {
        "workflow_spans": WORKFLOW_SPANS,
        "list_workflows": LIST_WORKFLOWS,
        "path_to_root": PATH_TO_ROOT,
        "workflow_events": WORKFLOW_EVENTS,
    }


@dataclass(slots=True)
class TreeNode:
    """One span in a run's tree, with its children in start order."""

    span: dict[str, Any]
    children: list[TreeNode] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.span.get("name"))

    def walk(self, depth: int = 0) -> Any:
        """Yield ``(depth, node)`` depth-first, parents before children."""
        yield depth, self
        for child in self.children:
            yield from child.walk(depth + 1)


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    raw = row.get("attributes")
    if isinstance(raw, str):
        try:
            row["attributes"] = json.loads(raw)
        except ValueError:
            pass
    return row


def workflow_spans(store: GraphStore, workflow_id: str) -> list[dict[str, Any]]:
    """All spans of one run, in start order.

    .. code-block:: cypher

        MATCH (s:Span {workflow_id: $workflow_id})
        RETURN s.span_id AS span_id, s.trace_id AS trace_id, ... ORDER BY s.start_ns
    """
    return [_decode(r) for r in store.query(WORKFLOW_SPANS, {"workflow_id": workflow_id})]


def tree(store: GraphStore, workflow_id: str) -> list[TreeNode]:
    """A run as a forest of :class:`TreeNode` (normally one root, the workflow span).

    Built from :func:`workflow_spans`; a span whose parent is outside the run (or not
    written yet) becomes a root.
    """
    spans = workflow_spans(store, workflow_id)
    nodes = {s["span_id"]: TreeNode(s) for s in spans}
    roots: list[TreeNode] = []
    for node in nodes.values():
        parent = nodes.get(node.span.get("parent_span_id") or "")
        (parent.children if parent else roots).append(node)
    return roots


def workflows(
    store: GraphStore,
    *,
    project_id: str | None = None,
    state: str | None = None,
    name: str | None = None,
    since_ns: int | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Runs (workflow spans), newest first, filtered by project, state, name and start.

    .. code-block:: cypher

        MATCH (s:Workflow)
        WHERE ($project_id IS NULL OR s.project_id = $project_id)
          AND ($state IS NULL OR s.state = $state) AND ($name IS NULL OR s.name = $name)
          AND ($since_ns IS NULL OR s.start_ns >= $since_ns)
        RETURN s.span_id AS span_id, ... ORDER BY s.start_ns DESC LIMIT $limit
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    params = {
        "project_id": project_id,
        "state": state,
        "name": name,
        "since_ns": since_ns,
        "limit": int(limit),
    }
    return [_decode(r) for r in store.query(LIST_WORKFLOWS, params)]


def path_to_root(store: GraphStore, span_id: str) -> list[dict[str, Any]]:
    """The chain of spans from the root of ``span_id``'s tree down to it.

    .. code-block:: cypher

        MATCH p = (root:Span)-[:PARENT_OF*0..]->(n:Span {span_id: $span_id})
        WHERE NOT ()-[:PARENT_OF]->(root)
        RETURN [x IN nodes(p) | x.span_id] AS span_ids, ...
    """
    rows = store.query(PATH_TO_ROOT, {"span_id": span_id})
    if not rows:
        return []
    row = max(rows, key=lambda r: len(r["span_ids"]))
    return [
        {"span_id": s, "name": n, "kind": k}
        for s, n, k in zip(row["span_ids"], row["names"], row["kinds"], strict=True)
    ]


def workflow_events(store: GraphStore, workflow_id: str) -> list[dict[str, Any]]:
    """Every event of a run in time order (for replaying a run).

    .. code-block:: cypher

        MATCH (s:Span {workflow_id: $workflow_id})-[:HAS_EVENT]->(e:Event)
        RETURN s.span_id AS span_id, ..., e.name AS name, e.time_ns AS time_ns
        ORDER BY e.time_ns, s.span_id, e.seq
    """
    return [_decode(r) for r in store.query(WORKFLOW_EVENTS, {"workflow_id": workflow_id})]
