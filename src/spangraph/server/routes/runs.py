"""Query routes: thin wrappers over :mod:`spangraph.queries`, every node with its
``jaeger_url`` (but an option never explored: no such span in Jaeger).

Workflow and branch ids are the caller's and may hold ``/`` (``jobs/42``), so they are
``:id`` parameters (any text, line breaks too: see ``_convertors``); each route is told apart by its last segment (``/tree``, ...).
Span ids are hex and stay plain parameters (``/api/nodes/{span_id}/path`` needs that)."""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from pydantic import TypeAdapter
from starlette.concurrency import run_in_threadpool

from ... import queries
from ... import semconv as sc
from ...exceptions import StoreError
from .. import _convertors  # noqa: F401  (the "id" path convertor of the routes)
from ..deps import SettingsDep, StoreDep, heavy_read, jaeger_url
from ..models import (
    BUSY,
    RUN_NAMED,
    Branch,
    BranchSummary,
    Decision,
    LiveMessage,
    Monitor,
    Node,
    NodeDetail,
    PathStep,
    TreeNode,
    error,
)

router: APIRouter = APIRouter(prefix="/api", tags=["runs"])

_STATES = f"^({'|'.join(sc.RUN_STATES)})$"
_MESSAGES: TypeAdapter[list[LiveMessage]] = TypeAdapter(list[LiveMessage])
_log = logging.getLogger("spangraph.server")


def _node(settings: Any, row: dict[str, Any]) -> dict[str, Any]:
    """A node as the API gives it, with its ``jaeger_url``: none for an option never
    explored (no span of it was exported, so Jaeger has nothing to show; as the
    decisions route gives such an option none)."""
    out = dict(row)
    if not isinstance(out.get("attributes"), dict):
        out["attributes"] = {}
    if out.get("state") == sc.STATE_UNEXPLORED:
        out["jaeger_url"] = None
    else:
        out["jaeger_url"] = jaeger_url(settings, out.get("trace_id"), out.get("span_id"))
    return out


def _traces(store: Any, workflow_id: str) -> dict[str, Any]:
    """span id -> trace id of the spans of a run."""
    return {r["span_id"]: r.get("trace_id") for r in queries.workflow_spans(store, workflow_id)}


def _linked(
    settings: Any, store: Any, workflow_id: str, rows: list[dict[str, Any]], key: str = "span_id"
) -> list[dict[str, Any]]:
    """``rows`` of a run, each with the ``jaeger_url`` of the span named by ``row[key]``."""
    if not rows:  # (the trace ids are every span of the run: none needed)
        return rows
    traces = _traces(store, workflow_id)
    return [{**r, "jaeger_url": jaeger_url(settings, traces.get(r[key]), r[key])} for r in rows]


def _forest_json(settings: Any, roots: list[queries.TreeNode]) -> str:
    """The JSON text of ``list[TreeNode]`` for ``roots``, written without recursion (a
    run may be nested thousands of levels deep): each node is checked and written by
    :class:`Node`, then its ``children`` are spliced in."""
    parts: list[str] = ["["]
    stack: list[queries.TreeNode | str] = ["]"]

    def push(nodes: list[queries.TreeNode]) -> None:
        for i, child in enumerate(reversed(nodes)):
            if i:
                stack.append(",")
            stack.append(child)

    push(roots)
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            parts.append(item)
            continue
        text = Node.model_validate(_node(settings, item.span)).model_dump_json()
        parts.append(text[:-1] + ',"children":[')
        stack.append("]}")
        push(item.children)
    return "".join(parts)


@router.get("/workflows", response_model=list[Node])
def list_workflows(
    settings: SettingsDep,
    store: StoreDep,
    project_id: str | None = None,
    state: Annotated[str | None, Query(pattern=_STATES)] = None,
    name: str | None = None,
    name_contains: str | None = None,
    since_ns: Annotated[int | None, Query(ge=0, le=2**63 - 1)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    execution_id: str | None = None,
) -> list[dict[str, Any]]:
    """Runs (workflow spans), newest first, filtered by project, state, name (whole, or
    ``name_contains``: a part of it, in any case), start, execution (``execution_id``:
    the runs of one logical execution, such as a LangGraph thread's)."""
    rows = queries.workflows(
        store,
        project_id=project_id,
        state=state,
        name=name,
        since_ns=since_ns,
        limit=limit,
        name_contains=name_contains or None,
        execution_id=execution_id or None,
    )
    return [_node(settings, r) for r in rows]


@router.get(
    "/workflows/{workflow_id:id}/tree",
    response_model=list[TreeNode],
    dependencies=[Depends(heavy_read)],
    responses={
        404: error(
            "no run with this workflow id (when it is the id of a span, trace or branch "
            "of a run: headers X-Spangraph-Run and X-Spangraph-Id-Kind name it)",
            RUN_NAMED,
        ),
        **BUSY,
    },
)
def workflow_tree(workflow_id: str, settings: SettingsDep, store: StoreDep) -> Response:
    """A run as a forest (normally one root: the workflow span). 404 for an unknown run."""
    roots = queries.tree(store, workflow_id)
    if not roots:
        raise _no_run(store, workflow_id)
    return Response(_forest_json(settings, roots), media_type="application/json")


def _no_run(store: Any, workflow_id: str) -> HTTPException:
    """The 404 for an id no span has as its run id (naming the run it belongs to, when it
    does: :func:`_run_named`)."""
    return _run_named(store, workflow_id) or HTTPException(
        404, detail=f"no run with workflow_id {workflow_id!r}"
    )


def _run_named(store: Any, workflow_id: str) -> HTTPException | None:
    """The 404 for an id no span has as its run id but that is the id of a span, a trace
    or a branch of a run (:func:`queries.run_of`), or ``None``. Its detail names the run
    and the headers ``X-Spangraph-Run`` (the run's workflow id, percent-encoded as a
    URL path segment is, since a caller's id may hold any text) and
    ``X-Spangraph-Id-Kind`` (``span``, ``trace`` or ``branch``) say which, so that a
    client can open it: a run traced over OTLP goes by its trace id until its top span
    arrives, and by the workflow's id after."""
    try:
        found = queries.run_of(store, workflow_id)
        if found is None and workflow_id != workflow_id.lower():
            found = queries.run_of(store, workflow_id.lower())  # a span or trace id in capitals
    except StoreError:
        return None
    if found is None:
        return None
    kind, row = found
    run = row.get("workflow_id")
    if not isinstance(run, str) or run == workflow_id:
        return None
    if kind == "trace" and row.get("parent_span_id") is not None:
        # the trace's first span known is not its top one: the trace's own run (its top
        # span without a run id of its own) may be on its way, and a run started inside
        # it (arrived first) is not it
        return None
    return HTTPException(
        404,
        detail=f"no run with workflow_id {workflow_id!r}: it is the id of a {kind} of run {run!r}",
        headers={"X-Spangraph-Run": quote(run, safe=""), "X-Spangraph-Id-Kind": kind},
    )


@router.get(
    "/nodes/{span_id}", response_model=NodeDetail, responses={404: error("no span with this id")}
)
def get_node(span_id: str, settings: SettingsDep, store: StoreDep) -> dict[str, Any]:
    """One span with its attributes and events. 404 for an unknown span."""
    found = queries.node(store, span_id)
    if found is None and span_id != (lower := span_id.lower()):
        found = queries.node(store, lower)  # ids are stored as OTel prints them
    if found is None:
        raise HTTPException(404, detail=f"no span {span_id!r}")
    return _node(settings, found)


@router.get(
    "/nodes/{span_id}/path",
    response_model=list[PathStep],
    dependencies=[Depends(heavy_read)],
    responses={404: error("no span with this id"), **BUSY},
)
def node_path(span_id: str, settings: SettingsDep, store: StoreDep) -> list[dict[str, Any]]:
    """The spans from the root of the span's tree down to it. 404 for an unknown span."""
    path = queries.path_to_root(store, span_id)
    if not path and span_id != (lower := span_id.lower()):
        path = queries.path_to_root(store, lower)  # ids are stored as OTel prints them
    if not path:
        raise HTTPException(404, detail=f"no span {span_id!r}")
    return [_node(settings, step) for step in path]


@router.get("/workflows/{workflow_id:id}/decisions", response_model=list[Decision])
def workflow_decisions(
    workflow_id: str, settings: SettingsDep, store: StoreDep
) -> list[dict[str, Any]]:
    """Decision points of a run with all options, the chosen one, reason and score; an
    explored option has the ``jaeger_url`` of its span (one never explored: none)."""
    decisions = queries.decisions(store, workflow_id)
    traces = _traces(store, workflow_id) if decisions else {}
    out = []
    for decision in decisions:
        for option in decision["options"]:
            span_id = option["span_id"] if option["explored"] else None
            trace_id = traces.get(span_id) if span_id is not None else None
            option["jaeger_url"] = jaeger_url(settings, trace_id, span_id)
        sid = decision["span_id"]
        out.append({**decision, "jaeger_url": jaeger_url(settings, traces.get(sid), sid)})
    return out


@router.get("/workflows/{workflow_id:id}/branches", response_model=list[Branch])
def workflow_branches(
    workflow_id: str, settings: SettingsDep, store: StoreDep
) -> list[dict[str, Any]]:
    """Branches of a run with node and failure counts."""
    return _linked(settings, store, workflow_id, queries.branches(store, workflow_id))


@router.get(
    "/branches/{branch_id:id}/summary",
    response_model=BranchSummary,
    responses={404: error("no branch with this id")},
)
def branch_summary(
    branch_id: str,
    settings: SettingsDep,
    store: StoreDep,
    workflow_id: Annotated[str | None, Query(min_length=1)] = None,
) -> dict[str, Any]:
    """A branch's nodes in time order, with totals (``?workflow_id=``: in that run only;
    ``workflow_ids`` lists the runs found). 404 for an unknown branch."""
    summary = queries.branch_summary(store, branch_id, workflow_id=workflow_id)
    if summary is None:
        where = "" if workflow_id is None else f" in run {workflow_id!r}"
        raise HTTPException(404, detail=f"no branch {branch_id!r}{where}")
    summary["nodes"] = [_node(settings, n) for n in summary["nodes"]]
    return summary


@router.get("/workflows/{workflow_id:id}/monitors", response_model=list[Monitor])
def workflow_monitors(
    workflow_id: str, settings: SettingsDep, store: StoreDep
) -> list[dict[str, Any]]:
    """Cross-branch monitors of a run: monitor, target, both branches."""
    return [
        {
            **row,
            "jaeger_url": jaeger_url(settings, row["monitor_trace_id"], row["monitor_span_id"]),
            # (the target may be a span of another run)
            "target_jaeger_url": jaeger_url(
                settings, row["target_trace_id"], row["target_span_id"]
            ),
        }
        for row in queries.monitors(store, workflow_id)
    ]


@router.get(
    "/workflows/{workflow_id:id}/events",
    response_model=list[LiveMessage],
    dependencies=[Depends(heavy_read)],
    responses={
        200: {
            "headers": {
                "X-Spangraph-Replay": {
                    "description": "`stream`: the live messages, their seq (go on live "
                    "from the last with Last-Event-ID); `graph`: rebuilt, numbered anew",
                    "schema": {"type": "string", "enum": ["stream", "graph"]},
                }
            }
        },
        404: error(
            "the id is no run's but that of a span, trace or branch of a run: headers "
            "X-Spangraph-Run and X-Spangraph-Id-Kind name it (an unknown id: `[]`)",
            RUN_NAMED,
        ),
        **BUSY,
    },
)
async def workflow_events(workflow_id: str, request: Request, store: StoreDep) -> Response:
    """Replay: the run as the ordered messages a live subscriber would have seen. From
    the run's Redis stream while it holds the run from its first message (the live
    messages themselves: their ``seq``, tokens included, so a client can go on live
    from the last ``seq`` with ``Last-Event-ID``); else rebuilt from the graph
    (``queries.replay``: numbered in order, without tokens). The header
    ``X-Spangraph-Replay`` says which: ``stream`` or ``graph``.

    The stream is served only when it lacks none of the spans the graph holds for the
    run: live messages dropped before they reached Redis leave no gap in its ``seq``
    (Redis numbers them), and the graph is the record. The work on the answer (reading
    the stream's messages, building and encoding the graph's: seconds for a large run)
    runs in the thread pool, not on the event loop that serves every other client."""
    body: bytes | None = None
    texts = await request.app.state.hub.whole_run(workflow_id)
    if texts is not None:
        body = await run_in_threadpool(_stream_body, store, workflow_id, texts)
    source = "stream"
    if body is None:
        body, source = await run_in_threadpool(_graph_body, store, workflow_id), "graph"
    return Response(body, media_type="application/json", headers={"X-Spangraph-Replay": source})


def _stream_body(store: Any, workflow_id: str, texts: list[str]) -> bytes | None:
    """The replay of the run's stream (its messages ``texts``), or ``None`` when the
    stream lacks spans the graph holds: a span of the graph without a ``span.started``
    in it, or an ended one without a ``span.ended`` (:func:`queries.replayed_spans`); a
    graph that lags behind the stream keeps the stream. When the graph does not answer,
    the stream is served."""
    started: set[Any] = set()
    ended: set[Any] = set()
    for text in texts:
        try:
            message = json.loads(text)
        except ValueError:
            continue
        if isinstance(message, dict):
            kind = message.get("type")
            if kind == sc.SPAN_STARTED:
                started.add(message.get("span_id"))
            elif kind == sc.SPAN_ENDED:
                ended.add(message.get("span_id"))
    try:
        spans, spans_ended = queries.replayed_spans(store, workflow_id)
    except StoreError as exc:  # e.g. down, or a read stopped at its time limit
        _log.warning(
            "replay of %r: the graph did not answer, serving the stream: %s", workflow_id, exc
        )
        return ("[" + ",".join(texts) + "]").encode()
    if not spans and (moved := _run_named(store, workflow_id)) is not None:
        # the stream of a trace whose spans now have the run id of the workflow above
        # them (it arrived after them): that run's replay has them
        raise moved
    if not (spans <= started and spans_ended <= ended):
        return None
    return ("[" + ",".join(texts) + "]").encode()


def _graph_body(store: Any, workflow_id: str) -> bytes:
    """The replay rebuilt from the graph (:func:`queries.replay`), as JSON; a 404 naming
    the run when there is none and the id is one of a span, trace or branch of a run."""
    messages = queries.replay(store, workflow_id)
    if not messages and (moved := _run_named(store, workflow_id)) is not None:
        raise moved
    return _MESSAGES.dump_json(_MESSAGES.validate_python(messages))
