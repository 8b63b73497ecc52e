"""Retention: deleting whole runs whose last activity is older than a cutoff
(``spangraph prune``).

A run is every span with its ``workflow_id`` (placeholders of parents included) and
those spans' events. Its last activity is the latest end, or start of a span still
running, of any of them: a run is kept while any part of it is younger than the cutoff,
and a run whose process died long ago (spans left ``running``) goes with the rest.
Deletes go in batches of about ``batch_spans`` spans, one write statement each, so that
the programs' own writes, which wait behind a write, are never held up for long.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from .queries import MAX_AGE_S, MAX_LIMIT, _check_age, _check_limit
from .stores._base import GraphStore

_log = logging.getLogger("spangraph")

RUNS_BEFORE: Final = (
    "MATCH (s:Span)\n"
    "WHERE s.workflow_id IS NOT NULL\n"
    "WITH s.workflow_id AS workflow_id,\n"
    "     max(coalesce(s.end_ns, s.start_ns)) AS last_ns, count(s) AS spans,\n"
    "     max(s.project_id) AS project_id\n"
    "WHERE last_ns < $before_ns\n"
    "RETURN workflow_id, last_ns, spans, project_id\n"
    "ORDER BY last_ns, workflow_id\n"
    "LIMIT $limit"
)
"""Runs (by ``workflow_id``) whose last activity is before ``$before_ns``, oldest first."""

PROJECT_RUNS_BEFORE: Final = (
    "MATCH (p:Span {project_id: $project_id})\n"
    "WHERE p.workflow_id IS NOT NULL\n"
    "WITH DISTINCT p.workflow_id AS workflow_id\n"
    "MATCH (s:Span {workflow_id: workflow_id})\n"
    "WITH workflow_id,\n"
    "     max(coalesce(s.end_ns, s.start_ns)) AS last_ns, count(s) AS spans\n"
    "WHERE last_ns < $before_ns\n"
    "RETURN workflow_id, last_ns, spans, $project_id AS project_id\n"
    "ORDER BY last_ns, workflow_id\n"
    "LIMIT $limit"
)
"""The same, of the runs with a span of ``$project_id``: the whole run counts (a run
whose ids several services share, each with its own project, goes whole or not at
all)."""

DELETE_RUNS: Final = (
    "UNWIND $workflow_ids AS workflow_id\n"
    "MATCH (s:Span {workflow_id: workflow_id})\n"
    "WITH workflow_id, max(coalesce(s.end_ns, s.start_ns)) AS last_ns, collect(s) AS spans\n"
    "WHERE last_ns < $before_ns\n"
    "UNWIND spans AS s\n"
    "OPTIONAL MATCH (s)-[:HAS_EVENT]->(e:Event)\n"
    "WITH s, collect(e) AS events\n"
    "FOREACH (e IN events | DETACH DELETE e)\n"
    "DETACH DELETE s"
)
"""Delete the runs ``$workflow_ids`` with their events, each only if its last activity is
still before ``$before_ns`` (a run that went on since it was found is kept)."""

REMAINING: Final = (
    "UNWIND $workflow_ids AS workflow_id\n"
    "MATCH (s:Span {workflow_id: workflow_id})\n"
    "RETURN DISTINCT workflow_id"
)
"""Which of ``$workflow_ids`` still have spans (went on since they were found)."""

_SCAN: Final = 10_000
"""Runs one look-up finds (the look-up is repeated until it finds none)."""
_ALL: Final = 2**31 - 1
"""``$limit`` for every run (a dry run's one look-up; FalkorDB takes 2**32 as 0)."""

MAX_BATCH_SPANS: Final = MAX_LIMIT


def statements() -> dict[str, str]:
    """The statements of pruning, by name (linted with Neo4j's linter in the tests)."""
    return {
        "runs_before": RUNS_BEFORE,
        "project_runs_before": PROJECT_RUNS_BEFORE,
        "delete_runs": DELETE_RUNS,
        "remaining": REMAINING,
    }


@dataclass(frozen=True, slots=True)
class PrunedRun:
    """A run that was (or, in a dry run, would be) deleted."""

    workflow_id: str
    last_ns: int
    spans: int
    project_id: str | None


@dataclass(slots=True)
class PruneResult:
    """What :func:`prune` deleted (or, with ``dry_run``, would delete)."""

    before_ns: int
    dry_run: bool
    runs: list[PrunedRun] = field(default_factory=list)
    kept: int = 0
    """Runs found old enough that had gone on by the time their batch was deleted."""

    @property
    def spans(self) -> int:
        return sum(run.spans for run in self.runs)


def _batches(runs: list[PrunedRun], batch_spans: int) -> Iterator[list[PrunedRun]]:
    """``runs`` in order, in groups of about ``batch_spans`` spans (a bigger run alone)."""
    batch: list[PrunedRun] = []
    size = 0
    for run in runs:
        if batch and size + run.spans > batch_spans:
            yield batch
            batch, size = [], 0
        batch.append(run)
        size += run.spans
    if batch:
        yield batch


def prune(
    store: GraphStore,
    *,
    older_than_s: float,
    project_id: str | None = None,
    dry_run: bool = False,
    batch_spans: int = 5_000,
    now_ns: int | None = None,
    on_batch: Callable[[list[PrunedRun]], None] | None = None,
    stop: threading.Event | None = None,
) -> PruneResult:
    """Delete every run whose last activity is more than ``older_than_s`` seconds ago
    (with ``project_id``: every such run with a span of that project, whole), with its
    events; ``dry_run`` finds them and deletes nothing. ``on_batch`` is called with each
    batch once it is deleted; once ``stop`` is set, no further batch is deleted."""
    _check_age(older_than_s)
    _check_limit(batch_spans, "batch_spans")
    before_ns = (time.time_ns() if now_ns is None else now_ns) - int(older_than_s * 1e9)
    result = PruneResult(before_ns=before_ns, dry_run=dry_run)
    params: dict[str, Any] = {"before_ns": before_ns}
    find = RUNS_BEFORE
    if project_id is not None:
        find, params["project_id"] = PROJECT_RUNS_BEFORE, project_id
    execute_many = getattr(store, "execute_many", None)
    if not dry_run and execute_many is None:
        raise TypeError(f"{type(store).__name__} cannot delete (it has no execute_many)")
    while not (stop is not None and stop.is_set()):
        rows = store.query(find, {**params, "limit": _ALL if dry_run else _SCAN})
        found = [_run(row) for row in rows]
        if dry_run:
            result.runs = found
            return result
        assert execute_many is not None  # (checked above)
        deleted_now = 0
        for batch in _batches(found, batch_spans):
            if stop is not None and stop.is_set():
                return result
            ids = [run.workflow_id for run in batch]
            execute_many([(DELETE_RUNS, {"before_ns": before_ns, "workflow_ids": ids})])
            left = {row["workflow_id"] for row in store.query(REMAINING, {"workflow_ids": ids})}
            deleted = [run for run in batch if run.workflow_id not in left]
            result.runs += deleted
            result.kept += len(batch) - len(deleted)
            deleted_now += len(deleted)
            if on_batch is not None and deleted:
                on_batch(deleted)
        if len(found) < _SCAN or not deleted_now:
            return result
    return result


def _run(row: dict[str, Any]) -> PrunedRun:
    project = row.get("project_id")
    return PrunedRun(
        workflow_id=str(row["workflow_id"]),
        last_ns=int(row["last_ns"]),
        spans=int(row["spans"]),
        project_id=project if isinstance(project, str) else None,
    )


_AGE = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([smhdw]?)\s*", re.IGNORECASE)
_UNIT_S: Final = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
AGE_TEXT: Final = (
    "a duration from 0 to 100 years: seconds, or a number with s, m, h, d or w (30d, 12h)"
)


def parse_age(text: str) -> float:
    """Seconds of an age written as seconds or with a unit (``90``, ``15m``, ``12h``,
    ``30d``, ``2w``); ``ValueError`` for anything else, or over 100 years."""
    match = _AGE.fullmatch(text)
    if match is None:
        raise ValueError(f"must be {AGE_TEXT}, got {text!r}")
    seconds = float(match[1]) * _UNIT_S[match[2].lower()]
    if not (math.isfinite(seconds) and seconds <= MAX_AGE_S):
        raise ValueError(f"must be {AGE_TEXT}, got {text!r}")
    return seconds


def parse_retention(text: str) -> float:
    """Seconds of a retention age (``serve --retention``, ``SPANGRAPH_RETENTION``): an
    age as :func:`parse_age` reads it, more than 0; ``ValueError`` saying why not."""
    age = parse_age(text)
    if age <= 0:
        raise ValueError(f"must be more than 0 (it would delete runs as they end), got {text!r}")
    return age


def forget_live(redis_url: str, workflow_ids: Sequence[str]) -> int:
    """Delete the runs' live streams and sequence counters from the Redis at
    ``redis_url`` (they would expire in a day or a week); the number of keys deleted.
    Raises what redis-py raises."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from .processors.live import seq_key, stream_key

    removed = 0
    client = redis.Redis.from_url(
        redis_url, socket_connect_timeout=3, socket_timeout=10, retry=Retry(NoBackoff(), 1)
    )
    try:
        for start in range(0, len(workflow_ids), 500):
            keys: list[str] = []
            for workflow_id in workflow_ids[start : start + 500]:
                keys += (stream_key(workflow_id), seq_key(workflow_id))
            removed += int(client.delete(*keys))
    finally:
        client.close()
    return removed


def compact_at(redis_url: str) -> bool:
    """Have the embedded server at ``redis_url`` rewrite its append-only file, which
    holds every write since its last snapshot (the deleted runs' too, until then);
    ``False`` when it did not start a rewrite."""
    import redis

    from .embedded import compact

    client = redis.Redis.from_url(redis_url, socket_connect_timeout=3, socket_timeout=10)
    try:
        return compact(client)
    except (redis.RedisError, OSError) as exc:
        _log.debug("spangraph prune: append-only file not rewritten: %s", exc)
        return False
    finally:
        client.close()
