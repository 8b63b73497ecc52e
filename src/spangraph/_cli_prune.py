"""``spangraph prune``: delete runs older than a given age from the graph, with their
live streams."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ._cli_query import open_graph
from ._cli_stream import NoStream, live_url
from ._cli_values import count, duration
from ._prune import MAX_BATCH_SPANS, PrunedRun, PruneResult, compact_at, forget_live, prune
from ._terminal import printable
from .config import Settings, redact_url
from .mapping import iso_time

_LISTED = 20
"""Runs a dry run lists (the oldest); ``--json`` lists them all."""


def add_prune_parser(sub: Any) -> None:
    text = "delete runs whose last activity is older than a given age, with their events"
    p = sub.add_parser("prune", help=text, description=text + ".")
    p.add_argument("--home", help="data dir of the embedded server (SPANGRAPH_HOME)")
    p.add_argument(
        "--older-than",
        type=duration,
        required=True,
        metavar="AGE",
        help="delete runs with nothing newer than this: 30d, 12h, 90m, or seconds",
    )
    p.add_argument("--project", help="only this project's runs")
    p.add_argument(
        "--dry-run", action="store_true", help="say what would be deleted; delete nothing"
    )
    p.add_argument(
        "--batch-spans",
        type=count,
        default=5_000,
        metavar="N",
        help=f"spans deleted by one statement, about (default 5000, at most {MAX_BATCH_SPANS})",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_prune)


def cmd_prune(args: argparse.Namespace) -> int:
    settings = Settings.from_env(home=args.home)
    store = open_graph(settings)
    if store is None:
        return 1
    try:
        result = prune(
            store,
            older_than_s=args.older_than,
            project_id=args.project,
            dry_run=args.dry_run,
            batch_spans=args.batch_spans,
        )
    finally:
        store.close()
    deleted = bool(result.runs) and not args.dry_run
    live = _forget_live(settings, result.runs) if deleted else None
    compacted = deleted and settings.graph_is_embedded and _compact(settings)
    if args.json:
        print(json.dumps(_as_json(result, live, compacted), indent=2))
    else:
        _print(result, live)
        if compacted:
            print(
                "the embedded server rewrites its append-only file in the background, "
                "giving the space back"
            )
    return 0


def _compact(settings: Settings) -> bool:
    """Have the embedded server rewrite its append-only file (see ``compact_at``)."""
    from .embedded import EmbeddedServer

    info = EmbeddedServer(settings.home).status()
    return info is not None and compact_at(info.redis_url)


def _as_json(result: PruneResult, live: str | None, compacted: bool) -> dict[str, Any]:
    return {
        "dry_run": result.dry_run,
        "before": iso_time(result.before_ns),
        "runs": [
            {
                "workflow_id": run.workflow_id,
                "project_id": run.project_id,
                "last_activity": iso_time(run.last_ns),
                "spans": run.spans,
            }
            for run in result.runs
        ],
        "spans": result.spans,
        "kept": result.kept,
        "live_streams": live,
        "compacting": compacted,
    }


def _print(result: PruneResult, live: str | None) -> None:
    before = iso_time(result.before_ns)
    runs, spans = len(result.runs), result.spans
    what = f"{runs} run{'s' * (runs != 1)} ({spans} span{'s' * (spans != 1)})"
    if result.dry_run:
        print(f"would delete {what} last active before {before}; nothing deleted (--dry-run)")
        for run in result.runs[:_LISTED]:
            project = f"  project {printable(run.project_id)}" if run.project_id else ""
            print(
                f"  {printable(run.workflow_id)}  last activity {iso_time(run.last_ns)}"
                f"  {run.spans} span{'s' * (run.spans != 1)}{project}"
            )
        if runs > _LISTED:
            print(f"  ... and {runs - _LISTED} more (--json lists them all)")
        return
    print(f"deleted {what} last active before {before}, with their events")
    if result.kept:
        print(f"kept {result.kept} run{'s' * (result.kept != 1)} that went on while being pruned")
    if live is not None:
        print(live)


def _forget_live(settings: Settings, runs: list[PrunedRun]) -> str:
    """Delete the deleted runs' live streams and sequence counters; a line saying what
    was done."""
    import redis

    try:
        url = live_url(settings)
    except NoStream as exc:
        return f"live streams not deleted ({exc}): they expire on their own"
    try:
        removed = forget_live(url, [run.workflow_id for run in runs])
    except (redis.RedisError, OSError, ValueError, TypeError) as exc:
        return (
            f"live streams not deleted (Redis at {redact_url(url)}: {exc}): "
            "they expire on their own"
        )
    return f"deleted {removed} live stream key{'s' * (removed != 1)} of those runs"
