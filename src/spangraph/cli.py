"""The ``spangraph`` command line: demo, up, down, status, query."""

from __future__ import annotations

import argparse
import contextlib
import errno
import ipaddress
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import queries
from . import semconv as sc
from ._terminal import handle_interrupts, interrupted, printable, restore
from .config import (
    ENV_HOME,
    ENV_REDIS_URL,
    Settings,
    check_home,
    default_home,
    graph_url_setting,
    redact_url,
)
from .embedded import EmbeddedServer
from .exceptions import (
    ConfigurationError,
    EmbeddedServerError,
    SpangraphError,
    StoreError,
    StoreUnavailableError,
)
from .mapping import _finite, event_type


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(home=getattr(args, "home", None))


def _home(args: argparse.Namespace) -> Path:
    """The home alone, for up, down and status: they need no other setting, and a
    mistake in one (a bad SPANGRAPH_JAEGER_URL) must not keep a server from stopping."""
    given = getattr(args, "home", None)
    if given is None:
        given = os.environ.get(ENV_HOME) or None  # empty: unset, as Settings reads it
    return default_home() if given is None else check_home(given)


def _use_home(home: str | None) -> None:
    """Hand ``--home`` on to what reads SPANGRAPH_HOME, checked first: an empty value
    must be refused, not read as unset."""
    if home is not None:
        os.environ["SPANGRAPH_HOME"] = str(Settings.from_env({}, home=home).home)


def _cmd_demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    if args.serve and (problem := _cannot_listen(args.host, args.port)) is not None:
        # told now, not after the whole demo has run
        print(
            f"spangraph: error: cannot serve on {args.host}:{args.port}: {problem}", file=sys.stderr
        )
        return _STARTUP_FAILURE
    # SIGTERM as Ctrl-C: the run ends `cancelled` in the graph, not `running` for good
    # (docs/sdk.md tells programs to do the same). Both are noted as well as raised, so
    # that one lost inside a destructor the garbage collector ran (redis-py's connection
    # pools are freed so; Python only reports what a __del__ raises) still ends it.
    replaced = handle_interrupts(signal.SIGINT, signal.SIGTERM)
    try:
        code = run_demo(sys.stdout, home=args.home)
        if interrupted.is_set():
            raise KeyboardInterrupt
    finally:
        restore(replaced)
    if code or not args.serve:
        return code
    print(
        f"\nopen http://{args.host}:{args.port}/ to see the run in the web UI (Ctrl-C to stop)",
        flush=True,
    )
    return _serve(args.host, args.port, home=args.home)


def _cannot_listen(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on (taken, no such address), or ``None``."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM
        )[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
            sock.bind(address)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:  # as `spangraph serve` says it
            return (
                f"the port {port} is already in use (another spangraph serve?); stop that "
                "program or choose another port with --port"
            )
        return exc.strerror or str(exc)
    return None


def _is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only: every address it resolves to is a
    loopback one (``127.1``, ``localhost.``, ``::ffff:127.0.0.1`` too)."""
    if not host.strip("[]"):  # every interface
        return False
    if host.rstrip(".") == "localhost":
        return True
    try:
        # (addresses of AF_INET and AF_INET6, the families getaddrinfo gives: text)
        found = {str(info[4][0]) for info in socket.getaddrinfo(host.strip("[]"), None)}
    except OSError:
        return False

    def loopback(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        mapped = getattr(ip, "ipv4_mapped", None)
        return ip.is_loopback or (mapped is not None and mapped.is_loopback)

    return bool(found) and all(loopback(address) for address in found)


def _serve(
    host: str,
    port: int,
    *,
    reload: bool = False,
    cors: list[str] | None = None,
    home: str | None = None,
) -> int:
    try:
        import uvicorn
    except ImportError:
        print(
            "spangraph: error: serve needs the server extra: pip install 'spangraph[server]'",
            file=sys.stderr,
        )
        return 2
    _use_home(home)
    try:  # before anything starts (the embedded server would be left running)
        if host:  # ("": every interface, as uvicorn takes it)
            socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except OSError as exc:  # no such host: uvicorn would say so without naming it
        print(
            f"spangraph: error: cannot serve on {host}:{port}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return _STARTUP_FAILURE
    _check_serve_settings()
    if cors:
        os.environ["SPANGRAPH_CORS_ORIGINS"] = ",".join(cors)
    if _is_loopback(host):
        # Only this machine can connect; refusing other Host names keeps web pages from
        # reaching the service through a DNS name rebound to 127.0.0.1.
        os.environ.setdefault("SPANGRAPH_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
    else:
        print(
            f"spangraph: serving on {host}: reachable from other machines"
            + (
                ""
                if os.environ.get("SPANGRAPH_API_TOKEN")
                else " WITHOUT a token (set SPANGRAPH_API_TOKEN)"
            ),
            file=sys.stderr,
        )
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host  # IPv6
    where = f"spangraph: web UI and API on http://{shown}:{port}/ (docs: /docs)"
    from .server._protocol import HTTPProtocol, WebSocketProtocol

    options: dict[str, Any] = {
        "factory": True,
        "http": HTTPProtocol,  # uvicorn's, with time limits on headers and on sending
        "ws": WebSocketProtocol,  # and with a limit on pings
        "ws_max_size": 4096,  # a client sends at most {"since": n}
        "host": host,
        "port": port,
        "log_level": "info",
        "timeout_graceful_shutdown": 5,  # a slow client must not hold up Ctrl-C
        "ws_per_message_deflate": False,  # compressing every frame per client costs too much
    }
    if reload:
        print(where, flush=True)
        uvicorn.run("spangraph.server.app:app_from_env", reload=True, **options)
        return 0
    from .server.app import going_away

    class Server(uvicorn.Server):
        leaving = False

        async def startup(self, sockets: Any = None) -> None:
            try:
                await super().startup(sockets=sockets)
            except SystemExit:  # uvicorn's on a port taken (status 1 before 0.36, then 3)
                self.should_exit = True  # it stopped the app already: serve exits with 3
                return
            if self.started:  # listening: not before (a port taken is an error instead)
                print(where, flush=True)

        def handle_exit(self, sig: int, frame: Any) -> None:
            # Live streams end first (WebSocket close 1001), and the shutdown starts once
            # they have (within 1 s): open ones would otherwise hold it for its whole
            # grace period, then be cut with a traceback, or be closed by uvicorn (1012).
            # Told again meanwhile: at once, as uvicorn does (a third time forces it).
            if self.leaving:
                super().handle_exit(sig, frame)
                return
            self.leaving = True
            going_away(then=lambda: super(Server, self).handle_exit(sig, frame))

    server = Server(uvicorn.Config("spangraph.server.app:app_from_env", **options))
    try:
        server.run()
    except KeyboardInterrupt:  # the signal uvicorn raises again once it has stopped
        pass
    return 0 if server.started else _STARTUP_FAILURE


_STARTUP_FAILURE = 3
"""Exit status of ``serve`` when the service did not start (uvicorn's: the port is taken)."""


_SHORT_TOKEN = 16
"""An API token shorter than this is warned about at ``serve`` (about 96 bits of
randomness in base64 characters: out of reach of guessing over HTTP)."""


def _check_serve_settings() -> None:
    """What the service reads when it starts, checked before it starts: a bad setting is
    one line and exit 2 here, not a traceback from inside the server's startup."""
    from opentelemetry.sdk.trace import SpanLimits

    settings = Settings.from_env()
    if settings.graph_is_embedded or settings.redis_is_embedded:
        EmbeddedServer(settings.home).ensure_running()  # the service then reuses it
    if settings.live_enabled and not settings.redis_is_embedded:
        import redis

        try:
            redis.Redis.from_url(settings.redis_url).close()  # parses; does not connect
        except ValueError as exc:
            raise ConfigurationError("SPANGRAPH_REDIS_URL", str(exc)) from None
    token = settings.api_token
    if token is not None and len(token) < _SHORT_TOKEN:
        print(
            f"spangraph: warning: SPANGRAPH_API_TOKEN has {len(token)} characters: wrong "
            "tokens are not throttled, so a short one can be guessed by anyone who reaches "
            f"the port; use {_SHORT_TOKEN} or more random ones, e.g. "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))'",
            file=sys.stderr,
        )
    try:
        SpanLimits()  # the OTLP receiver's limits, from OTEL_SPAN_* variables
    except ValueError as exc:
        raise ConfigurationError(
            "OTEL_SPAN_EVENT_COUNT_LIMIT / OTEL_SPAN_LINK_COUNT_LIMIT", str(exc)
        ) from None


def _cmd_serve(args: argparse.Namespace) -> int:
    return _serve(args.host, args.port, reload=args.reload, cors=args.cors_origin, home=args.home)


def _cmd_run(args: argparse.Namespace) -> int:
    command = list(args.cmd)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        print(
            "spangraph: error: run needs a command: spangraph run -- python app.py", file=sys.stderr
        )
        return 2
    if shutil.which(command[0]) is None:
        if os.sep in command[0] and os.path.exists(command[0]):  # as a shell says it
            print(f"spangraph: error: permission denied: {command[0]}", file=sys.stderr)
            return 126
        print(f"spangraph: error: command not found: {command[0]}", file=sys.stderr)
        return 127
    for variable in ("OTEL_PYTHON_DISTRO", "OTEL_PYTHON_CONFIGURATOR"):
        if not os.environ.get(variable, "").strip():  # an empty one counts as unset (OTel
            os.environ[variable] = "spangraph"  # took "" for a name, and set up nothing)
    _use_home(args.home)
    from opentelemetry.instrumentation.auto_instrumentation import run

    # "--" first: opentelemetry-instrument's parser would take a "--" right after the
    # command for its own and drop it from the command's arguments
    sys.argv = ["opentelemetry-instrument", "--", *command]
    # Python ignores SIGPIPE and SIGXFSZ; an exec'd command would inherit that (`yes |
    # head -1` would print "Broken pipe")
    for name in ("SIGPIPE", "SIGXFSZ"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)
    run()  # replaces this process with the command, its imports instrumented
    return 0  # pragma: no cover


def _cmd_up(args: argparse.Namespace) -> int:
    info = EmbeddedServer(_home(args)).ensure_running()
    print(
        f"embedded server running: pid {info.pid}, {info.redis_url} (graph {info.graph_url}), "
        f"home {info.home}"
    )
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    server = EmbeddedServer(_home(args))
    stopped = server.stop()
    print("embedded server stopped" if stopped else "embedded server was not running")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    server = EmbeddedServer(_home(args))
    info = server.status()
    if info is None:
        stuck = server._process()  # (unresponsive() would ask the port a second time)
        if stuck is not None and server._loading(stuck.pid):
            print(
                f"embedded server loading its data: pid {stuck.pid}, port {stuck.port}, "
                f"home {server.home} (it answers once loaded)"
            )
            return 1
        if stuck is not None:
            print(
                f"embedded server not answering: pid {stuck.pid}, port {stuck.port}, "
                f"home {server.home} (busy with a long command, or hung; "
                "`spangraph down` stops it)"
            )
            return 1
        print(f"embedded server not running (home {server.home})")
        return 1
    print(f"embedded server running: pid {info.pid}, {info.redis_url}, home {info.home}")
    return 0


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
        state = option["state"] if option["explored"] else "unexplored"
        ended = "" if state == "completed" else f" ({state or 'unknown'})"
        return f"{option['name']}{mark}{ended}"

    return [
        {
            "decision": r["name"],
            "state": r.get("state"),
            "options": ", ".join(label(o) for o in r["options"]),
            "chosen": r["chosen"],
            "reason": r["reason"],
            "score": r["score"],
            "span_id": r["span_id"],
        }
        for r in rows
    ]


_RUN_COMMANDS = frozenset({"tree", "events", "replay", "decisions", "branches", "monitors"})
"""The questions about one run, by its workflow id."""


def _run_query(args: argparse.Namespace, store: Any) -> int:
    from . import queries

    what = args.what
    rows: Any
    if what in _RUN_COMMANDS:
        args.id = _as_stored(args.id, _known_run(store))
    if what == "workflows":
        rows = queries.workflows(
            store, project_id=args.project, state=args.state, name=args.name, limit=args.limit
        )
        settings = Settings.from_env(home=args.home)
        for r in rows:
            r["jaeger_url"] = settings.jaeger_link(r.get("trace_id"), r.get("span_id"))
        if not args.json:  # when it started as a time and an age, as `abandoned` shows
            keep = ("workflow_id", "name", "state", "duration_ms")
            now = time.time_ns()
            rows = [
                {
                    **{k: r.get(k) for k in keep},
                    **_started(r.get("start_ns"), now),
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
            _print_tree(roots, print)
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
        live, note = _live_events(store, Settings.from_env(home=args.home), args.id)
        if not rows and not live and not queries.workflow_spans(store, args.id):
            return _no_run(store, args.id, what)  # an unknown id
        rows = _with_live(rows, live, replay=what == "replay")
        if note is not None:
            print(note, file=sys.stderr)
        if what == "replay" and not args.json:
            shown = ("seq", "type", "kind", "name", "span_id", "from")
            rows = [{k: m[k] for k in shown} for m in rows]
        if not args.json and all(r["from"] == _FROM_GRAPH for r in rows):
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


def _print_diff(result: dict[str, Any]) -> None:
    first = result["first_divergence"]
    if first is None:
        print("the two have the same structure")
    else:
        a, b = first["a"] or {}, first["b"] or {}
        field = "chosen" if first["reason"] == "different choice" else "path"
        shown = [repr(x[field]) if x.get(field) is not None else "-" for x in (a, b)]
        detail = ("chose " if field == "chosen" else "") + " vs ".join(shown)
        print(printable(f"first divergence at step {first['index']}: {first['reason']} ({detail})"))
    print(printable(f"only in {result['a']}: {', '.join(result['only_in_a']) or '-'}"))
    print(printable(f"only in {result['b']}: {', '.join(result['only_in_b']) or '-'}"))
    for changed in result["states"]:
        print(printable(f"ended differently: {changed['path']}: {changed['a']} vs {changed['b']}"))
    if result["durations"]:
        print()
        _print_rows(result["durations"], False)


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


# -- events of spans still running: from the run's live stream ---------------------------

_FROM_GRAPH = "graph"
_FROM_LIVE = "live"
_NOT_EVENTS = frozenset({sc.SPAN_STARTED, sc.SPAN_ENDED, sc.TOKEN})
"""Live message types that are no span events (tokens are never written to the graph)."""
_STREAM_CHUNK = 1_000


class _NoStream(Exception):
    """The run's live stream cannot be read; the message says why."""


def _live_events(
    store: Any, settings: Settings, workflow_id: str
) -> tuple[list[dict[str, Any]], str | None]:
    """The live messages of the events of the run's spans still running in the graph
    (whose events the graph gets when they end: never, when their process died), from
    the run's live stream, in its order; and the line to print on stderr when some of
    those spans' events cannot be had from it, else ``None``. No span running: nothing
    is read."""
    started, ended = queries.replayed_spans(store, workflow_id)
    running = started - ended
    if not running:
        return [], None
    try:
        messages = _read_stream(settings, workflow_id)
    except _NoStream as exc:
        return [], _not_in_graph(len(running), workflow_id, str(exc))
    events = [
        m
        for m in messages
        if m.get("span_id") in running
        and m.get("type") not in _NOT_EVENTS
        and isinstance(m.get("type"), str)
        and type(m.get("time_unix_nano")) is int
    ]
    have_start = {m.get("span_id") for m in messages if m.get("type") == sc.SPAN_STARTED}
    lost = len(running - have_start)
    if not lost:
        return events, None
    if messages:
        why = (
            f"the run's live stream lacks the start of {'it' if lost == 1 else 'them'} "
            "(trimmed, or recorded with live events off): shown are the events it holds"
        )
    else:
        why = (
            "the run's live stream is gone (expired, or the run was recorded with live "
            "events off): shown is what the graph has"
        )
    return events, _not_in_graph(lost, workflow_id, why)


def _not_in_graph(count: int, workflow_id: str, why: str) -> str:
    """The line saying that ``count`` spans of the run still run and ``why`` their
    events are not shown."""
    if count == 1:
        said = (
            f"1 span of run {workflow_id} is still running (or its process died): "
            "its events are not in the graph until it ends"
        )
    else:
        said = (
            f"{count} spans of run {workflow_id} are still running (or their process "
            "died): their events are not in the graph until they end"
        )
    return printable(f"spangraph: {said}, and {why}")


def _read_stream(settings: Settings, workflow_id: str) -> list[dict[str, Any]]:
    """Every message of the run's live stream (``spangraph:stream:{workflow_id}``), in
    order; :class:`_NoStream` when it cannot be read."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from .processors.live import stream_key

    if not settings.live_enabled:
        raise _NoStream(f"live events are off ({ENV_REDIS_URL}=off): shown is what the graph has")
    if settings.redis_is_embedded:
        info = EmbeddedServer(settings.home).status()
        if info is None:
            raise _NoStream(
                f"the embedded server of {settings.home}, which holds the run's live stream, "
                "is not running: shown is what the graph has"
            )
        url = info.redis_url
    else:
        url = settings.redis_url
    client = redis.Redis.from_url(
        url, socket_connect_timeout=3, socket_timeout=10, retry=Retry(NoBackoff(), 1)
    )
    entries: list[Any] = []
    try:
        start: bytes | str = "-"
        while True:
            rows: Any = client.xrange(stream_key(workflow_id), start, "+", _STREAM_CHUNK)
            entries.extend(rows)
            if len(rows) < _STREAM_CHUNK:
                break
            start = b"(" + rows[-1][0]
    except (redis.RedisError, OSError) as exc:
        raise _NoStream(
            f"the run's live stream cannot be read (Redis at {redact_url(url)}: {exc}): "
            "shown is what the graph has"
        ) from None
    finally:
        client.close()
    messages = []
    for _, fields in entries:
        try:
            message = json.loads(fields.get(b"data", b""))
        except ValueError:
            continue
        if isinstance(message, dict):
            messages.append(message)
    return messages


_RANKS = {sc.SPAN_STARTED: 0, sc.SPAN_ENDED: 2}
"""A replay's order of messages at one time: a span's start, its events, its end."""
_MESSAGE_FIELDS = (
    *("type", "workflow_id", "project_id", "trace_id", "span_id", "parent_span_id", "kind"),
    *("name", "time_unix_nano", "timestamp", "attributes", "service", "env", "seq"),
)
"""The fields of a replay's message (:func:`spangraph.queries.replay`), in its order."""


def _with_live(
    rows: list[dict[str, Any]], live: list[dict[str, Any]], *, replay: bool
) -> list[dict[str, Any]]:
    """The graph's ``rows`` (of ``query events``, or of ``query replay`` when ``replay``)
    with those of the live messages ``live`` (:func:`_live_events`) that the graph lacks,
    in time order, each marked ``from``: ``graph`` or ``live``. A replay is numbered
    anew, as the graph's is."""
    time_of = "time_unix_nano" if replay else "time_ns"

    def as_live(row: dict[str, Any]) -> tuple[Any, Any, Any]:  # as a live message names it
        kind = row.get("type") if replay else event_type(row.get("name"))
        return (row.get("span_id"), kind, row.get(time_of))

    have = {as_live(row) for row in rows}
    for row in rows:
        row["from"] = _FROM_GRAPH
    added = [m for m in live if (m["span_id"], m["type"], m["time_unix_nano"]) not in have]
    if not added:
        return rows
    merged = rows + [_message_row(m) if replay else _event_row(m) for m in added]

    def order(row: dict[str, Any]) -> tuple[bool, int, int, str]:
        at = row.get(time_of)
        if replay:  # at one time: a span's start, its events, its end
            return (at is None, at or 0, _RANKS.get(str(row.get("type")), 1), "")
        return (at is None, at or 0, 1, str(row.get("span_id")))  # as the graph orders them

    merged.sort(key=order)  # (stable: the graph's and the stream's own order kept)
    if replay:
        for seq, message in enumerate(merged, start=1):
            message["seq"] = seq
    return merged


def _message_row(message: dict[str, Any]) -> dict[str, Any]:
    """A live message as a replay's message."""
    row = {k: message.get(k) for k in _MESSAGE_FIELDS}
    if not isinstance(row["attributes"], dict):
        row["attributes"] = {}
    return {**row, "from": _FROM_LIVE}


def _event_row(message: dict[str, Any]) -> dict[str, Any]:
    """A live message as a row of ``query events``."""
    attributes = message.get("attributes")
    return {
        "span_id": message["span_id"],
        "span_name": message.get("name"),
        "kind": message.get("kind"),
        "seq": None,  # (an event's place among its span's: only the graph has all of them)
        "name": _event_name(message["type"]),
        "time_ns": message["time_unix_nano"],
        "attributes": attributes if isinstance(attributes, dict) else {},
        "from": _FROM_LIVE,
    }


def _event_name(message_type: str) -> str:
    """An event's name from its live message type (``event.span.started``: an event
    another program named ``span.started``, see :func:`~spangraph.mapping.event_type`)."""
    inner = message_type.removeprefix("event.")
    return inner if inner in (sc.SPAN_STARTED, sc.SPAN_ENDED) else message_type


# -- the tree ----------------------------------------------------------------------------


def _print_tree(roots: list[queries.TreeNode], out: Callable[[str], None]) -> None:
    """One line per span, indented by depth, in the columns the demo prints a run in
    (the name column narrows as the indent grows, down to one character), then the
    attempt of a step that may be retried (``attempt 2/4``) and the run of a workflow
    started inside (``(run <workflow_id>)``)."""
    for root in roots:
        run = root.span.get("workflow_id")
        for depth, node in root.walk():
            span = node.span
            width = max(1, 40 - 2 * depth)
            kind = printable(str(span.get("kind", "?")))
            state = printable(str(span.get("state", "?")))
            notes = [_attempt(span)]
            own = span.get("workflow_id")  # a workflow started inside: a run of its own
            if depth and own and own != run:
                notes.append(f"(run {printable(str(own))})")
            out(
                f"  {'  ' * depth}{kind:<9} {printable(node.name):<{width}} "
                f"{state:<10} {_took(span)}" + "".join(f"  {n}" for n in notes if n)
            )


def _took(span: dict[str, Any]) -> str:
    """The duration column: milliseconds, ``…`` while running (or its process died),
    ``-`` for an option never explored (it never ran)."""
    if span.get("state") == sc.STATE_UNEXPLORED:
        return f"{'-':>9}   "
    value = span.get("duration_ms")
    return f"{value:9.1f} ms" if isinstance(value, int | float) else "      …   "


def _attempt(span: dict[str, Any]) -> str | None:
    """``attempt 2/4`` for a step that is a retry or may be retried, else ``None``."""
    attributes = span.get("attributes")
    if not isinstance(attributes, dict):
        return None
    attempt, most = attributes.get(sc.STEP_ATTEMPT), attributes.get(sc.STEP_MAX_ATTEMPTS)
    if type(attempt) is not int:
        return None
    if type(most) is int and most > 1:
        return f"attempt {attempt}/{most}"
    return f"attempt {attempt}" if attempt > 1 else None


def _cmd_query(args: argparse.Namespace) -> int:
    from .stores import open_store

    settings = Settings.from_env(home=args.home)
    if settings.graph_is_embedded and not settings.home.exists():
        # a mistyped --home: say so, rather than start a server there and answer "no rows"
        print(
            f"spangraph: nothing has run with the home {printable(str(settings.home))} "
            "(no such directory): check --home or SPANGRAPH_HOME",
            file=sys.stderr,
        )
        return 1
    try:
        store = open_store(settings)
    except StoreUnavailableError as exc:
        raise _unusable(settings, exc) from None
    try:
        try:
            store.ping()  # fail fast: a query against a server that is down retries for 30 s
        except StoreUnavailableError as exc:
            raise _unusable(settings, exc) from None
        return _run_query(args, store)
    finally:
        store.close()


def _unusable(settings: Settings, exc: Exception) -> ConfigurationError:
    """A graph store that does not answer, named by its setting as configure() does."""
    setting = ENV_HOME if settings.graph_is_embedded else graph_url_setting(settings.graph_url)
    return ConfigurationError(setting, f"cannot use {redact_url(settings.graph_url)}: {exc}")


def _add_query_parsers(q: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
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
    w.add_argument("--limit", type=_count, default=50, help="at most this many (default 50)")
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
        type=_seconds,
        default=3600.0,
        metavar="SECONDS",
        help="started more than this many seconds ago (default 3600)",
    )
    ab.add_argument("--project", help="only this project")
    ab.add_argument("--limit", type=_count, default=100, help="at most this many (default 100)")
    c = add("cypher", "run a read-only Cypher statement", ("text", "the Cypher text"))
    c.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        type=_param(str),
        metavar="NAME=TEXT",
        help="the value of $NAME, as text (repeat for more parameters)",
    )
    c.add_argument(
        "--param-json",
        action="append",
        default=[],
        type=_param(_json_value),
        metavar="NAME=JSON",
        help="the value of $NAME, as JSON (a number, true, a list ...)",
    )


_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class _NotFinite(ValueError):
    """NaN or an infinity in a ``--param-json`` value."""


def _refuse_constant(name: str) -> Any:
    raise _NotFinite(f"{name}: the stores take finite numbers only")


def _json_value(text: str) -> Any:
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except _NotFinite:
        raise
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except ValueError as exc:
        raise ValueError(f"not JSON ({exc})") from None
    _check_json_numbers(value)
    return value


_INT64 = range(-(2**63), 2**63)


def _check_json_numbers(value: Any) -> None:
    """Refuse what the stores would round or reject: numbers out of the 64-bit range."""
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) is int and item not in _INT64:
            raise ValueError(f"{item} is out of the 64-bit integer range")
        if type(item) is float and not math.isfinite(item):
            raise ValueError("a number out of the 64-bit float range")
        if type(item) is list:
            stack.extend(item)
        elif type(item) is dict:
            stack.extend(item.values())


def _param(convert: Any) -> Any:
    """An argparse ``type`` for ``NAME=VALUE``: ``(NAME, convert(VALUE))``."""

    def parse(text: str) -> tuple[str, Any]:
        name, eq, value = text.partition("=")
        if not eq or not _PARAM_NAME.fullmatch(name):
            raise argparse.ArgumentTypeError(
                f"must be NAME=VALUE with NAME a Cypher parameter name, got {text!r}"
            )
        try:
            return name, convert(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{name}: {exc}") from None

    return parse


def _params(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for name, value in [*args.param, *args.param_json]:
        if name in params:
            raise ValueError(f"parameter {name} given twice")
        params[name] = value
    return params


def _checked(convert: Any, ok: Any, what: str) -> Any:
    """An argparse ``type``: ``convert(text)`` when ``ok`` of it, else a usage error
    saying the value must be ``what``."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    return parse


_MAX_LIMIT = queries.MAX_LIMIT
_MAX_AGE_S = queries.MAX_AGE_S
_count = _checked(int, lambda v: 1 <= v <= _MAX_LIMIT, f"a whole number from 1 to {_MAX_LIMIT}")
_seconds = _checked(
    float,
    lambda v: math.isfinite(v) and 0 <= v <= _MAX_AGE_S,
    f"a number of seconds from 0 to {_MAX_AGE_S} (100 years)",
)
_port = _checked(int, lambda v: 1 <= v <= 65_535, "a port number from 1 to 65535")


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

    demo = add("demo", "run a small agent workflow, watch it live, print it from the graph")
    demo.add_argument(
        "--serve", action="store_true", help="then keep the web UI running to explore the run"
    )
    demo.add_argument("--host", default="127.0.0.1", help="with --serve (default 127.0.0.1)")
    demo.add_argument("--port", type=_port, default=8000, help="with --serve (default 8000)")
    demo.set_defaults(func=_cmd_demo)
    serve = add("serve", "the HTTP service: query API, live streams, OTLP receiver, web UI")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=8000, help="port (default 8000)")
    serve.add_argument("--reload", action="store_true", help="restart on code changes (dev)")
    serve.add_argument(
        "--cors-origin",
        action="append",
        metavar="ORIGIN",
        help="allow this origin by CORS (repeatable); CORS is off by default",
    )
    serve.set_defaults(func=_cmd_serve)
    run = add("run", "run a program with spangraph configured (like opentelemetry-instrument)")
    run.add_argument(
        "cmd",
        nargs=argparse.REMAINDER,
        metavar="-- COMMAND ...",
        help="the program and its arguments, after --",
    )
    run.set_defaults(func=_cmd_run)
    add("up", "start the embedded server (or show the running one)").set_defaults(func=_cmd_up)
    add("down", "stop the embedded server (its data stays)").set_defaults(func=_cmd_down)
    add("status", "is the embedded server running?").set_defaults(func=_cmd_status)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--home", help="data dir of the embedded server (SPANGRAPH_HOME)")
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")
    q = sub.add_parser(
        "query",
        help="ask the graph (see spangraph query -h)",
        description="Ask the graph about runs, decisions and branches.",
    )
    _add_query_parsers(q, common)
    q.set_defaults(func=_cmd_query)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Mistakes in the arguments or settings, and errors spangraph
    explains (a SPANGRAPH_HOME that cannot be written, a store that refused a statement),
    print one line ``spangraph: error: ...`` and exit 2 (as argparse does); any other
    file or system error (a full disk) exits 1; never a traceback for either."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if hasattr(args, "param"):  # query cypher
        try:
            args.params = _params(args)
        except ValueError as exc:
            parser.error(str(exc))
    # query diff: checked before the store is opened (a mistake in the arguments)
    diff_runs = getattr(args, "workflow_a", None) or getattr(args, "workflow_b", None)
    if diff_runs and not args.branches:
        parser.error("--workflow-a/--workflow-b need --branches")
    # The Neo4j driver logs each failed connection attempt; the error below says it once.
    logging.getLogger("neo4j").addHandler(logging.NullHandler())
    # Fixed text has a few non-ASCII marks (—, …, →) and span data any text: a terminal
    # that cannot show them gets escapes, not a UnicodeEncodeError.
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError, OSError):
            stream.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    interrupted.clear()
    try:
        return int(args.func(args))
    except SpangraphError as exc:
        text = str(exc)
        if not isinstance(exc, EmbeddedServerError):  # (its repair advice takes lines)
            text = re.sub(r"\s*\n\s*", " ", text.strip())  # e.g. a driver's two lines
        print(f"spangraph: error: {text}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # e.g. a full disk
        print(f"spangraph: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("spangraph: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
