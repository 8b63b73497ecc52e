"""``spangraph query``: its questions about runs, decisions and branches, their answers
as tables or JSON, and what it says of ids that name no run."""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import time
from collections.abc import Callable
from typing import Any, Final

from . import queries
from . import semconv as sc
from ._cli_stream import FROM_GRAPH, live_events, with_live
from ._cli_values import count, json_value, param, seconds
from ._terminal import printable
from ._tree_text import EXCEPTION, error_text, first_line, interrupted, print_tree
from .config import ENV_HOME, Settings, graph_url_setting, redact_url
from .exceptions import ConfigurationError, StoreError, StoreUnavailableError
from .mapping import _finite


def _json(value: Any) -> str:
    """Strict JSON of a query's answer (NaN and the infinities as strings, as the HTTP
    API writes them: ``jq`` and browsers refuse the bare words)."""
    return json.dumps(_finite(value), indent=2, default=str, allow_nan=False)


def _print_rows(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print(_json(rows))
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
    if value is None:
        return "-"  # no value (--json says null)
    text = (
        json.dumps(value, default=str, ensure_ascii=False)
        if isinstance(value, dict | list)
        else str(value)
    )
    text = printable(text)  # span data may hold escape sequences: shown, not run
    if text.startswith(("http://", "https://")):
        return text  # links stay whole, to click or copy
    return text if len(text) <= 60 else text[:57] + "..."


def _decision_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def label(option: dict[str, Any]) -> str:
        mark = "*" if option["chosen"] else ""
        if not option["explored"]:
            # chosen without an option block of its own (a LangGraph route: the node ran
            # as a step beside the decision), or never tried
            return (
                f"{option['name']}{mark}" if option["chosen"] else f"{option['name']} (unexplored)"
            )
        state = option["state"]
        ended = "" if state == "completed" else f" ({state or 'unknown'})"
        return f"{option['name']}{mark}{ended}"

    return [
        {
            "decision": r["name"],
            "state": r.get("state"),
            "options": ", ".join(label(o) for o in r["options"]),
            # (a route that chose several nodes at once: all of them)
            "chosen": r["chosen"]
            or ", ".join(o["name"] for o in r["options"] if o["chosen"])
            or None,
            "reason": r["reason"],
            "score": r["score"],
            "span_id": r["span_id"],
        }
        for r in rows
    ]


_RUN_COMMANDS = frozenset({"tree", "events", "replay", "decisions", "branches", "monitors"})
"""The questions about one run, by its workflow id."""


def _run_query(args: argparse.Namespace, store: Any) -> int:
    what = args.what
    rows: Any
    if what in _RUN_COMMANDS:
        args.id = _as_stored(args.id, _known_run(store))
    if what == "workflows":
        rows = queries.workflows(
            store,
            project_id=args.project,
            state=args.state,
            name=args.name,
            limit=args.limit,
            execution_id=args.execution,
        )
        settings = Settings.from_env(home=args.home)
        for r in rows:
            r["jaeger_url"] = settings.jaeger_link(r.get("trace_id"), r.get("span_id"))
        if not args.json:  # when it started as a time and an age, as `abandoned` shows
            keep = ("workflow_id", "name", "state", "duration_ms")
            now = time.time_ns()
            # why a run failed (its top span's status message, else its recorded
            # exception), when one did
            failed = any(r.get("state") == sc.STATE_FAILED for r in rows)
            _with_exceptions(store, rows)
            rows = [
                {
                    **{k: r.get(k) for k in keep},
                    "state": _state_of(r),
                    **_started(r.get("start_ns"), now),
                    **({"error": _error_of(r)} if failed else {}),
                    "jaeger_url": r.get("jaeger_url"),
                }
                for r in rows
            ]
    elif what == "tree":
        if args.json:  # the tree's spans, as the API's tree has them (no stand-ins)
            rows = [node.span for root in queries.tree(store, args.id) for _, node in root.walk()]
            if not rows:
                return _no_run(store, args.id, what)
        else:
            roots = queries.tree(store, args.id)
            if not roots:
                return _no_run(store, args.id, what)
            link = Settings.from_env(home=args.home).jaeger_link(roots[0].span.get("trace_id"))
            if link is not None:  # (no trace id: spans another program wrote)
                print(printable(f"open in Jaeger: {link}"))  # the trace id is span data
            said = _execution_line(store, args.id, roots[0].span.get("execution_id"))
            if said is not None:
                print(printable(said))
            top = roots[0].span.get("span_id")
            resumed = queries.resumed_runs(store, top) if isinstance(top, str) else []
            if resumed:
                print(printable(f"resumed from run {', '.join(resumed)}"))
            _with_exceptions(store, [node.span for root in roots for _, node in root.walk()])
            print_tree(roots, print)
            return 0
    elif what == "path":
        rows = queries.path_to_root(store, args.id)
        if not rows and args.id != args.id.lower():  # as the API takes span ids
            rows = queries.path_to_root(store, args.id.lower())
        if not rows:  # as tree and branch say of an unknown id (the API: 404)
            print(f"no span {printable(args.id)}", file=sys.stderr)
            return 1
        if not args.json:
            rows = [{k: v for k, v in r.items() if k != "trace_id"} for r in rows]
    elif what in ("events", "replay"):
        rows = (queries.workflow_events if what == "events" else queries.replay)(store, args.id)
        live, note = live_events(store, Settings.from_env(home=args.home), args.id)
        if not rows and not live and not queries.workflow_spans(store, args.id):
            return _no_run(store, args.id, what)  # an unknown id
        rows = with_live(rows, live, replay=what == "replay")
        if note is not None:
            print(note, file=sys.stderr)
        if what == "replay" and not args.json:
            shown = ("seq", "type", "kind", "name", "span_id", "from")
            rows = [{k: m[k] for k in shown} for m in rows]
        if not args.json and all(r["from"] == FROM_GRAPH for r in rows):
            rows = [{k: v for k, v in r.items() if k != "from"} for r in rows]
    elif what == "decisions":
        rows = queries.decisions(store, args.id)
        if not rows and not queries.run_exists(store, args.id):
            return _no_run(store, args.id, what)
        rows = rows if args.json else _decision_rows(rows)
    elif what == "branches":
        rows = queries.branches(store, args.id)
        if not rows and not queries.run_exists(store, args.id):
            return _no_run(store, args.id, what)
    elif what == "branch":
        if args.workflow is not None:
            args.workflow = _as_stored(args.workflow, _known_run(store))
        args.id = _as_stored(args.id, _known_branch(store, args.workflow))
        summary = queries.branch_summary(store, args.id, workflow_id=args.workflow)
        if summary is None:
            where = "" if args.workflow is None else f" in run {args.workflow}"
            print(printable(f"no branch {args.id}{where}") + _BRANCH_IDS, file=sys.stderr)
            return 1
        if args.json:
            print(_json(summary))
            return 0
        print(
            printable(
                f"branch {summary['name']} ({summary['state']}, {summary['duration_ms']} ms): "
                + ", ".join(f"{n} {s}" for s, n in summary["states"].items())
            )
        )
        rows = [
            {k: n.get(k) for k in ("kind", "name", "state", "duration_ms", "events")}
            for n in summary["nodes"]
        ]
    elif what == "monitors":
        rows = queries.monitors(store, args.id)
        if not rows and not queries.run_exists(store, args.id):
            return _no_run(store, args.id, what)
        if not args.json:  # (the trace ids are for links, not for a table)
            rows = [{k: v for k, v in r.items() if not k.endswith("_trace_id")} for r in rows]
    elif what == "analytics":
        rows = queries.decision_analytics(store, args.id, project_id=args.project)
        if not rows and (unknown := _no_decision(store, args.id)) is not None:
            print(printable(unknown), file=sys.stderr)
            return 1
    elif what == "diff":
        if args.branches:
            for option in ("workflow_a", "workflow_b"):
                if getattr(args, option) is not None:
                    setattr(args, option, _as_stored(getattr(args, option), _known_run(store)))
            args.a = _as_stored(args.a, _known_branch(store, args.workflow_a))
            args.b = _as_stored(args.b, _known_branch(store, args.workflow_b))
        else:
            args.a = _as_stored(args.a, _known_run(store))
            args.b = _as_stored(args.b, _known_run(store))
        result = queries.diff(
            store,
            args.a,
            args.b,
            branches=args.branches,
            workflow_a=args.workflow_a,
            workflow_b=args.workflow_b,
        )
        if result["missing"]:
            from ._diff import missing_message

            message = missing_message(result["missing"], "branch" if args.branches else "run")
            assert message is not None  # (some are missing)
            hint = _BRANCH_IDS if args.branches else _other_runs(store, result["missing"])
            print(printable(message + hint), file=sys.stderr)
            return 1
        if args.json:
            print(_json(result))
            return 0
        _print_diff(result)
        return 0
    elif what == "abandoned":
        rows = queries.abandoned(
            store, older_than_s=args.older_than, project_id=args.project, limit=args.limit
        )
        if not args.json:
            columns = ("span_id", "kind", "name", "workflow_id", "service")
            now = time.time_ns()
            rows = [
                {**{k: r.get(k) for k in columns}, **_started(r.get("start_ns"), now)} for r in rows
            ]
    else:  # cypher
        from .stores.falkordb import FalkorDBStore

        if isinstance(store, FalkorDBStore):
            # a graph never written answers every statement "empty key", which reads as no
            # rows, so a statement with a mistake printed "(no rows)": made, the graph
            # checks the statement
            store.ensure_schema()
        try:
            rows = store.query(args.text, args.params)
        except StoreError as exc:
            if _refused_write(exc):
                raise StoreError(
                    "`query cypher` runs read-only statements: this one writes (CREATE, "
                    "MERGE, SET, DELETE, REMOVE or a schema command), which the store refused"
                ) from None
            given = set(args.params or {})
            unset = sorted({n for n in re.findall(r"\$(\w+)", args.text)} - given)
            if unset and "parameter" in str(exc).lower():
                named = ", ".join(f"${n}" for n in unset)
                raise StoreError(
                    f"{exc} (give {named}: -p NAME=TEXT or --param-json NAME=JSON)"
                ) from None
            raise
    _print_rows(rows, args.json)
    return 0


def _started(start_ns: Any, now_ns: int) -> dict[str, str | None]:
    """When a span started, for a table: UTC time and how long ago (``3h 12m``)."""
    if type(start_ns) is not int or start_ns <= 0:
        return {"started": None, "age": None}
    from .mapping import iso_time

    seconds = max(0, (now_ns - start_ns) // 1_000_000_000)
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3_600)
    parts = [(days, "d"), (hours, "h"), (rest // 60, "m")]
    age = " ".join([f"{n}{unit}" for n, unit in parts if n][:2]) or f"{rest}s"
    return {"started": iso_time(start_ns)[:19] + "Z", "age": age}


def _execution_line(store: Any, workflow_id: str, execution_id: Any) -> str | None:
    """``execution thread-7: run 2 of 3 (spangraph query workflows --execution thread-7)``
    for a run that is one of several of its execution (a LangGraph thread's turns, a run
    resumed in another trace), else ``None``."""
    if not isinstance(execution_id, str) or not execution_id or execution_id == workflow_id:
        return None
    runs = queries.workflows(store, execution_id=execution_id, limit=_EXECUTION_RUNS)
    if len(runs) < 2:
        return None
    ids = [r.get("workflow_id") for r in reversed(runs)]  # oldest first
    if len(ids) == _EXECUTION_RUNS:  # (the newest of more: no place to count from)
        where = f"one of {_EXECUTION_RUNS} runs or more"
    elif workflow_id in ids:
        where = f"run {ids.index(workflow_id) + 1} of {len(ids)}"
    else:
        where = f"{len(ids)} runs"
    ask = f"spangraph query workflows --execution {shlex.quote(execution_id)}"
    return f"execution {execution_id}: {where} ({ask})"


_EXECUTION_RUNS: Final = 1000
"""The runs of an execution ``query tree`` counts (the newest)."""


def _state_of(run: dict[str, Any]) -> Any:
    """A run's state, ``completed (interrupted)`` for a LangGraph run that stopped at an
    ``interrupt()`` and waits for an answer."""
    marked = interrupted(run)
    return f"{run.get('state')} ({marked})" if marked else run.get("state")


def _with_exceptions(store: Any, spans: list[dict[str, Any]]) -> None:
    """Give each failed span of ``spans`` that has no status message its last recorded
    exception, when it has one (:data:`EXCEPTION`: what the tree and the run list say
    of its error), in one query."""
    texts = queries.exception_texts(
        store,
        [
            s["span_id"]
            for s in spans
            if s.get("state") == sc.STATE_FAILED
            and isinstance(s.get("span_id"), str)
            and error_text(s) is None
        ],
    )
    for s in spans:
        if s.get("span_id") in texts:
            s[EXCEPTION] = texts[s["span_id"]]


def _error_of(run: dict[str, Any]) -> str | None:
    """The first line of a failed run's status message, else of its recorded exception
    (``Type: message``: not the stack or traceback some instrumentations write after it),
    else ``None``."""
    if run.get("state") != sc.STATE_FAILED:
        return None
    message = error_text(run)
    return first_line(message) or None if message is not None else None


def divergence_text(first: dict[str, Any] | None) -> str:
    """A diff's first divergence (``first_divergence`` of :func:`spangraph.queries.diff`)
    as the CLI and the demo say it."""
    if first is None:
        return "the two have the same structure"
    a, b = first["a"] or {}, first["b"] or {}
    field = "chosen" if first["reason"] == "different choice" else "path"
    shown = [repr(x[field]) if x.get(field) is not None else "-" for x in (a, b)]
    detail = ("chose " if field == "chosen" else "") + " vs ".join(shown)
    # (index: the place in a walk of the tree from its root, which is 0)
    at = f"node {first['index'] + 1} of the tree, in order from its root"
    return f"first divergence at {at}: {first['reason']} ({detail})"


def _print_diff(result: dict[str, Any]) -> None:
    print(printable(divergence_text(result["first_divergence"])))
    print(printable(f"only in {result['a']}: {', '.join(result['only_in_a']) or '-'}"))
    print(printable(f"only in {result['b']}: {', '.join(result['only_in_b']) or '-'}"))
    for changed in result["states"]:
        which = changed["path"] + _nth(changed.get("occurrence"))
        print(printable(f"ended differently: {which}: {changed['a']} vs {changed['b']}"))
    if result["durations"]:
        print()
        _print_rows(result["durations"], False)


def _nth(occurrence: Any) -> str:
    """`` (3rd time)`` for a path met again (a retried step), nothing the first time."""
    if type(occurrence) is not int or occurrence < 2:
        return ""
    suffix = (
        "th"
        if 10 <= occurrence % 100 <= 20
        else {1: "st", 2: "nd", 3: "rd"}.get(occurrence % 10, "th")
    )
    return f" ({occurrence}{suffix} time)"


_BRANCH_IDS = (
    " (branches are named by their ids: `spangraph query branches WORKFLOW_ID` lists a run's)"
)
_RUN_IDS = " (runs are named by their workflow ids: `spangraph query workflows` lists the latest)"


# -- ids: another kind of id, capitals, an unknown id --------------------------------------


def _as_stored(given: str, found: Callable[[str], bool]) -> str:
    """``given``, or its lower-case form when only that one is ``found``: ids are stored
    lower-case as OTel prints them (UUIDs, hex), and the HTTP API finds a span id given
    in capitals so too. An id with no capitals costs nothing."""
    lower = given.lower()
    if lower != given and not found(given) and found(lower):
        return lower
    return given


def _known_run(store: Any) -> Callable[[str], bool]:
    return lambda workflow_id: queries.run_exists(store, workflow_id)


def _known_branch(store: Any, workflow_id: str | None) -> Callable[[str], bool]:
    return lambda branch: queries.branch_summary(store, branch, workflow_id=workflow_id) is not None


def _no_run(store: Any, given: str, what: str) -> int:
    """Say on stderr that no run has the workflow id ``given`` (``query WHAT`` was asked),
    naming the run when the id is another kind of id of one; exit status 1."""
    print(
        printable(f"no spans for workflow {given}") + _other_id(store, given, what), file=sys.stderr
    )
    return 1


def _other_id(store: Any, given: str, what: str) -> str:
    """What to add to "no spans for workflow ``given``": the run it belongs to when it is
    a span, trace or branch id (in capitals too), else how runs are named."""
    found = _run_of(store, given)
    if found is None:
        return _RUN_IDS
    kind, span = found
    ask = f"`spangraph query {what} {span['workflow_id']}`"
    if kind == "span":
        of = f"{span.get('kind') or 'span'} {span.get('name')!r}"
        return f": {given} is the span id of {of} of run {span['workflow_id']}: {ask}"
    if kind == "trace":
        return f": {given} is a trace id, of run {span['workflow_id']}: {ask}"
    return (
        f": {given} is a branch id, of run {span['workflow_id']}: {ask} "
        f"(`spangraph query branch {given}` shows the branch)"
    )


def _run_of(store: Any, given: str) -> tuple[str, dict[str, Any]] | None:
    for candidate in dict.fromkeys((given, given.lower())):
        found = queries.run_of(store, candidate)
        if found is not None:
            return found
    return None


def _other_runs(store: Any, missing: list[str]) -> str:
    """What to add to a diff's "run ... does not exist": what the ids are when they are
    ids of another kind (branch ids want ``--branches``), else how runs are named."""
    found = {given: _run_of(store, given) for given in missing}
    kinds = {(f[0], f[1]["workflow_id"]) for f in found.values() if f is not None}
    if not kinds:
        return _RUN_IDS
    if len(kinds) == 1 and None not in found.values():  # (the usual mistake: both alike)
        [(kind, run)] = kinds
        what = f"it is a {kind} id" if len(found) == 1 else f"they are {kind} ids"
        said = [f"{what}, of run {run}"]
    else:
        said = [
            f"{given} is a {f[0]} id, of run {f[1]['workflow_id']}"
            for given, f in found.items()
            if f
        ]
    if any(kind == "branch" for kind, _ in kinds):
        said.append("to compare branches, add --branches")
    return " (" + "; ".join(said) + ")"


def _no_decision(store: Any, name: str) -> str | None:
    """Why ``query analytics NAME`` has no rows when no decision has that name (``None``
    when one has: it was never chosen, or not in that project)."""
    names = queries.decision_names(store, name)
    if name in names:
        return None
    if names:
        also = ", ".join(repr(n) for n in names)
        return f"no decision named {name!r} (names are compared exactly: did you mean {also}?)"
    if queries.run_exists(store, name):
        return (
            f"{name} is a workflow id: `query analytics` takes a decision's name "
            f"(`spangraph query decisions {name}` lists that run's)"
        )
    return (
        f"no decision named {name!r} (`query analytics` takes a decision's name: "
        "`spangraph query decisions WORKFLOW_ID` lists a run's)"
    )


def _refused_write(exc: StoreError) -> bool:
    """Whether the store refused a statement because it writes: ``query cypher`` reads
    only (FalkorDB's GRAPH.RO_QUERY; Neo4j's read access mode, which the store reads in)."""
    text = str(exc)
    return (
        "executed only on read-only queries" in text  # FalkorDB
        or "Neo.ClientError.Statement.AccessMode" in text  # Neo4j
        or getattr(exc.__cause__, "code", None) == "Neo.ClientError.Statement.AccessMode"
    )


def cmd_query(args: argparse.Namespace) -> int:
    store = open_graph(Settings.from_env(home=args.home))
    if store is None:
        return 1
    try:
        return _run_query(args, store)
    finally:
        store.close()


def open_graph(settings: Settings) -> Any:
    """The graph store the settings name, answering (checked now: a statement against a
    server that is down retries for 30 s); ``None``, after saying why on stderr, when
    the embedded default's home does not exist (a mistyped ``--home``: better said than
    a server started there and "no rows")."""
    from .stores import open_store

    if settings.graph_is_embedded and not settings.home.exists():
        print(
            f"spangraph: nothing has run with the home {printable(str(settings.home))} "
            "(no such directory): check --home or SPANGRAPH_HOME",
            file=sys.stderr,
        )
        return None
    try:
        store = open_store(settings)
    except StoreUnavailableError as exc:
        raise _unusable(settings, exc) from None
    try:
        store.ping()
    except StoreUnavailableError as exc:
        if not getattr(store, "cannot_write_now", lambda _: False)(exc):
            store.close()
            raise _unusable(settings, exc) from None
        # (it answers but cannot take writes for now, a full disk: it can be read)
    except BaseException:
        store.close()
        raise
    return store


def _unusable(settings: Settings, exc: Exception) -> ConfigurationError:
    """A graph store that does not answer, named by its setting as configure() does."""
    setting = ENV_HOME if settings.graph_is_embedded else graph_url_setting(settings.graph_url)
    return ConfigurationError(setting, f"cannot use {redact_url(settings.graph_url)}: {exc}")


def add_query_parsers(q: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    sub = q.add_subparsers(dest="what", required=True, metavar="QUESTION")

    def add(name: str, help_text: str, *args: tuple[str, str]) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, parents=[common])
        for arg, arg_help in args:  # usage names what to give: WORKFLOW_ID, SPAN_ID ...
            p.add_argument(arg, metavar=arg_help.upper().replace(" ", "_"), help=arg_help)
        return p

    w = add("workflows", "recent runs, newest first")
    w.add_argument("--project", help="only this project")
    w.add_argument(
        "--state",
        choices=sc.RUN_STATES,
        help="only this state",
    )
    w.add_argument("--name", help="only this workflow name")
    w.add_argument(
        "--execution",
        metavar="ID",
        help="only the runs of this execution (execution_id: a run resumed after a crash, "
        "a LangGraph thread's turns)",
    )
    w.add_argument("--limit", type=count, default=50, help="at most this many (default 50)")
    add("tree", "one run as a tree", ("id", "workflow id"))
    add("path", "the path from a span to its root", ("id", "span id"))
    add(
        "events",
        "every event of a run, in time order (those of spans still running, which the graph "
        "has once they end, from the run's live stream: marked `from: live`)",
        ("id", "workflow id"),
    )
    add(
        "replay",
        "a run as the ordered live messages, rebuilt from the graph (the events of spans "
        "still running from the run's live stream: marked `from: live`)",
        ("id", "workflow id"),
    )
    add("decisions", "decision points with all options and the choice", ("id", "workflow id"))
    add("branches", "the branches of a run", ("id", "workflow id"))
    b = add("branch", "one branch: its nodes in time order", ("id", "branch id"))
    b.add_argument(
        "--workflow",
        help="only its nodes in this run (a branch id given by hand may be used in several runs)",
    )
    add("monitors", "cross-branch monitors of a run", ("id", "workflow id"))
    a = add(
        "analytics",
        "how often each option of a decision was chosen, and how runs fared",
        ("id", "decision name"),
    )
    a.add_argument("--project", help="only this project")
    d = add(
        "diff",
        "structural diff of two runs (or branches)",
        ("a", "first workflow id"),
        ("b", "second workflow id"),
    )
    d.add_argument("--branches", action="store_true", help="a and b are branch ids")
    d.add_argument("--workflow-a", metavar="ID", help="with --branches: branch a of this run only")
    d.add_argument("--workflow-b", metavar="ID", help="with --branches: branch b of this run only")
    ab = add("abandoned", "spans still running long after they started")
    ab.add_argument(
        "--older-than",
        type=seconds,
        default=3600.0,
        metavar="SECONDS",
        help="started more than this many seconds ago (default 3600)",
    )
    ab.add_argument("--project", help="only this project")
    ab.add_argument("--limit", type=count, default=100, help="at most this many (default 100)")
    c = add("cypher", "run a read-only Cypher statement", ("text", "the Cypher text"))
    c.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        type=param(str),
        metavar="NAME=TEXT",
        help="the value of $NAME, as text (repeat for more parameters)",
    )
    c.add_argument(
        "--param-json",
        action="append",
        default=[],
        type=param(json_value),
        metavar="NAME=JSON",
        help="the value of $NAME, as JSON (a number, true, a list ...)",
    )
