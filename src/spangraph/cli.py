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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import queries
from . import semconv as sc
from ._terminal import handle_interrupts, interrupted, printable, restore
from .config import ENV_HOME, Settings, check_home, default_home, graph_url_setting, redact_url
from .embedded import EmbeddedServer
from .exceptions import (
    ConfigurationError,
    EmbeddedServerError,
    SpangraphError,
    StoreError,
    StoreUnavailableError,
)
from .mapping import _finite


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


def _run_query(args: argparse.Namespace, store: Any) -> int:
    from . import queries

    what = args.what
    rows: Any
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
                print(f"no spans for workflow {printable(args.id)}", file=sys.stderr)
                return 1
        else:
            from ._demo import print_tree

            roots = queries.tree(store, args.id)
            if not roots:
                print(f"no spans for workflow {printable(args.id)}", file=sys.stderr)
                return 1
            link = Settings.from_env(home=args.home).jaeger_link(roots[0].span.get("trace_id"))
            if link is not None:  # (no trace id: spans another program wrote)
                print(printable(f"open in Jaeger: {link}"))  # the trace id is span data
            print_tree(roots, print)
            return 0
    elif what == "path":
        rows = queries.path_to_root(store, args.id)
        if not rows:  # as tree and branch say of an unknown id (the API: 404)
            print(f"no span {printable(args.id)}", file=sys.stderr)
            return 1
        if not args.json:
            rows = [{k: v for k, v in r.items() if k != "trace_id"} for r in rows]
    elif what in ("events", "replay"):
        rows = (queries.workflow_events if what == "events" else queries.replay)(store, args.id)
        if not rows and not queries.workflow_spans(store, args.id):  # an unknown id
            print(f"no spans for workflow {printable(args.id)}", file=sys.stderr)
            return 1
        if what == "replay" and not args.json:
            rows = [{k: m[k] for k in ("seq", "type", "kind", "name", "span_id")} for m in rows]
    elif what == "decisions":
        rows = queries.decisions(store, args.id)
        rows = rows if args.json else _decision_rows(rows)
    elif what == "branches":
        rows = queries.branches(store, args.id)
    elif what == "branch":
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
        if not args.json:  # (the trace ids are for links, not for a table)
            rows = [{k: v for k, v in r.items() if not k.endswith("_trace_id")} for r in rows]
    elif what == "analytics":
        rows = queries.decision_analytics(store, args.id, project_id=args.project)
    elif what == "diff":
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
            print(printable(message) + (_BRANCH_IDS if args.branches else ""), file=sys.stderr)
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
    add("events", "every event of a run, in time order", ("id", "workflow id"))
    add("replay", "a run as the ordered live messages", ("id", "workflow id"))
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
