"""The ``spangraph`` command line: demo, up, down, status, query."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from .config import Settings
from .embedded import EmbeddedServer
from .exceptions import SpangraphError


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(home=getattr(args, "home", None))


def _cmd_demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    return run_demo(sys.stdout, home=args.home)


def _cmd_up(args: argparse.Namespace) -> int:
    info = EmbeddedServer(_settings(args).home).ensure_running()
    print(f"embedded server running: pid {info.pid}, {info.redis_url} (graph {info.graph_url})")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    server = EmbeddedServer(_settings(args).home)
    stopped = server.stop()
    print("embedded server stopped" if stopped else "embedded server was not running")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    server = EmbeddedServer(_settings(args).home)
    info = server.status()
    if info is None:
        print(f"embedded server not running (home {server.home})")
        return 1
    print(f"embedded server running: pid {info.pid}, {info.redis_url}, home {info.home}")
    return 0


def _print_rows(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        print("(no rows)")
        return
    columns = list(rows[0])
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def _cell(value: Any) -> str:
    text = json.dumps(value, default=str) if isinstance(value, dict | list) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _cmd_query(args: argparse.Namespace) -> int:
    from . import queries
    from .stores import open_store

    store = open_store(Settings.from_env(home=args.home))
    try:
        if args.what == "workflows":
            rows = queries.workflows(store, project_id=args.project, state=args.state,
                                     name=args.name, limit=args.limit)
            keep = ("workflow_id", "name", "state", "duration_ms", "start_ns", "project_id")
            rows = [{k: r.get(k) for k in keep} for r in rows]
        elif args.what == "tree":
            if args.json:
                rows = queries.workflow_spans(store, args.id)
            else:
                from ._demo import print_tree

                roots = queries.tree(store, args.id)
                if not roots:
                    print(f"no spans for workflow {args.id}")
                    return 1
                print_tree(roots, print)
                return 0
        elif args.what == "path":
            rows = queries.path_to_root(store, args.id)
        elif args.what == "events":
            rows = queries.workflow_events(store, args.id)
        else:  # cypher
            rows = store.query(args.id)
        _print_rows(rows, args.json)
        return 0
    finally:
        store.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spangraph",
        description="Agent and workflow observability on OpenTelemetry.",
    )
    from ._version import __version__

    parser.add_argument("--version", action="version", version=f"spangraph {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--home", help="data dir of the embedded server (SPANGRAPH_HOME)")
        return p

    add("demo", "run a small agent workflow, watch it live, print it from the graph"
        ).set_defaults(func=_cmd_demo)
    add("up", "start the embedded server (or show the running one)").set_defaults(func=_cmd_up)
    add("down", "stop the embedded server (its data stays)").set_defaults(func=_cmd_down)
    add("status", "is the embedded server running?").set_defaults(func=_cmd_status)
    q = add("query", "ask the graph: workflows, tree ID, path SPAN_ID, events ID, cypher TEXT")
    q.add_argument("what", choices=["workflows", "tree", "path", "events", "cypher"])
    q.add_argument("id", nargs="?", help="workflow id, span id, or the Cypher text")
    q.add_argument("--json", action="store_true", help="print JSON instead of a table")
    q.add_argument("--project", help="workflows: only this project")
    q.add_argument("--state", help="workflows: only this state")
    q.add_argument("--name", help="workflows: only this workflow name")
    q.add_argument("--limit", type=int, default=50, help="workflows: at most this many")
    q.set_defaults(func=_cmd_query)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse cannot match an optional positional after an option ("query cypher
    # --home H 'MATCH …'"): take a single leftover word as that positional.
    if args.command == "query" and not args.id and len(extra) == 1 and not extra[0].startswith("-"):
        args.id, extra = extra[0], []
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "query" and args.what != "workflows" and not args.id:
        parser.error(f"query {args.what} needs an argument")
    try:
        return int(args.func(args))
    except SpangraphError as exc:
        print(f"spangraph: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
