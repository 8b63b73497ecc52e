"""Response models: what the API answers (and what /openapi.json describes)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    """What an error answers (FastAPI's ``HTTPException`` body)."""

    detail: str


def error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    """An entry of a route's ``responses=``: an :class:`ErrorDetail` with ``description``
    (and the ``headers`` the answer carries)."""
    entry: dict[str, Any] = {"model": ErrorDetail, "description": description}
    if headers:
        entry["headers"] = headers
    return entry


RUN_NAMED: dict[str, Any] = {
    "X-Spangraph-Run": {
        "description": "the workflow id of the run the id belongs to (percent-encoded), "
        "when it is the id of a span, trace or branch of a run",
        "schema": {"type": "string"},
    },
    "X-Spangraph-Id-Kind": {
        "description": "what the id is, then",
        "schema": {"type": "string", "enum": ["span", "trace", "branch"]},
    },
}
"""Headers of a 404 for an id that is no run's but names one (the tree, the replay)."""

BUSY: dict[int | str, dict[str, Any]] = {
    503: error(
        "the graph store is unavailable, or the service is busy reading other runs whole "
        "(retry after Retry-After seconds)",
        {
            "Retry-After": {
                "description": "seconds to wait (when busy)",
                "schema": {"type": "integer"},
            }
        },
    )
}
"""The 503 of a route that reads a run whole (``deps.heavy_read``)."""


AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: error("missing or wrong bearer token (when SPANGRAPH_API_TOKEN is set)")
}
STORE_ERRORS: dict[int | str, dict[str, Any]] = {
    502: error("the graph store answered with an error"),
    503: error("the graph store is unavailable (retry later)"),
}


class Health(BaseModel):
    status: str = Field(description="ok or error")
    component: str
    detail: str | None = None


class HealthAll(BaseModel):
    status: str
    graph: Health
    redis: Health


class Node(BaseModel):
    """One span of a run, as stored in the graph."""

    span_id: str
    trace_id: str | None = None
    parent_span_id: str | None = None
    workflow_id: str | None = None
    execution_id: str | None = None
    branch_id: str | None = None
    project_id: str | None = None
    kind: str | None = None
    name: str | None = None
    state: str | None = None
    status: str | None = None
    status_message: str | None = None
    start_ns: int | None = None
    end_ns: int | None = None
    duration_ms: float | None = None
    service: str | None = None
    env: str | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)
    jaeger_url: str | None = Field(default=None, description="open this span in Jaeger")


class TreeNode(Node):
    children: list[TreeNode] = Field(default_factory=list)


class Event(BaseModel):
    seq: int | None = None
    name: str | None = None
    time_ns: int | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)


class NodeDetail(Node):
    events: list[Event] = Field(default_factory=list)


class PathStep(BaseModel):
    span_id: str
    name: str | None = None
    kind: str | None = None
    state: str | None = None
    jaeger_url: str | None = None


class Option(BaseModel):
    name: str
    state: str | None = None
    span_id: str | None = None
    explored: bool
    chosen: bool
    jaeger_url: str | None = None


class Decision(BaseModel):
    span_id: str
    name: str | None = None
    state: str | None = None
    branch_id: str | None = None
    start_ns: int | None = None
    options: list[Option]
    chosen: str | None = None
    reason: Any = None
    score: float | None = None
    jaeger_url: str | None = None


class Branch(BaseModel):
    span_id: str
    name: str | None = None
    branch_id: str | None = None
    state: str | None = None
    start_ns: int | None = None
    duration_ms: float | None = None
    nodes: int
    failed: int
    jaeger_url: str | None = None


class BranchNode(Node):
    """A span of a branch, with the names of its events in order."""

    events: list[str] = Field(default_factory=list)


class BranchSummary(BaseModel):
    branch_id: str
    name: str | None = None
    workflow_id: str | None = None
    workflow_ids: list[str] = []
    state: str | None = None
    duration_ms: float | None = None
    states: dict[str, int]
    nodes: list[BranchNode]


class Monitor(BaseModel):
    monitor_span_id: str
    monitor: str | None = None
    monitor_branch_id: str | None = None
    target_span_id: str
    target: str | None = None
    target_kind: str | None = None
    target_branch_id: str | None = None
    jaeger_url: str | None = None
    target_jaeger_url: str | None = None


class LiveMessage(BaseModel):
    """One message of a run, as live subscribers get it (DESIGN wire format)."""

    type: str
    seq: int
    workflow_id: str
    project_id: str | None = None
    trace_id: str | None = None
    span_id: str
    parent_span_id: str | None = None
    kind: str | None = None
    name: str | None = None
    time_unix_nano: int
    timestamp: str | None = Field(default=None, description="ISO-8601 UTC")
    attributes: dict[str, Any] = Field(default_factory=dict)
    service: str | None = None
    env: str | None = None
