"""The ``spangraph`` command line: demo, serve, run, up, down, status, and query (its
questions in :mod:`spangraph._cli_query`)."""

from __future__ import annotations

import argparse
import contextlib
import errno
import ipaddress
import logging
import os
import re
import shutil
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._cli_prune import add_prune_parser
from ._cli_query import add_query_parsers, cmd_query
from ._cli_values import checked, parse_params
from ._terminal import handle_interrupts, interrupted, restore
from .config import (
    ENV_HOME,
    Settings,
    check_home,
    default_home,
)
from .embedded import EmbeddedServer
from .exceptions import (
    ConfigurationError,
    EmbeddedServerError,
    SpangraphError,
)


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
    retention: str | None = None,
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
    if retention is not None:
        os.environ["SPANGRAPH_RETENTION"] = retention
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
        "log_config": _log_config(),
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


def _log_config() -> dict[str, Any]:
    """uvicorn's logging, with the service's own messages (``spangraph.server``: e.g.
    what retention deleted) printed as uvicorn prints its own, from INFO up."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["spangraph.server"] = {
        "handlers": ["default"],
        "level": "INFO",
        "propagate": False,
    }
    return config


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
    from .server.retention import retention_from_env

    retention_from_env()
    try:
        SpanLimits()  # the OTLP receiver's limits, from OTEL_SPAN_* variables
    except ValueError as exc:
        raise ConfigurationError(
            "OTEL_SPAN_EVENT_COUNT_LIMIT / OTEL_SPAN_LINK_COUNT_LIMIT", str(exc)
        ) from None


def _retention(text: str) -> str:
    """``serve --retention``: an age over 0, passed on as written."""
    from ._prune import parse_retention

    try:
        parse_retention(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _cmd_serve(args: argparse.Namespace) -> int:
    return _serve(
        args.host,
        args.port,
        reload=args.reload,
        cors=args.cors_origin,
        home=args.home,
        retention=args.retention,
    )


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


_port = checked(int, lambda v: 1 <= v <= 65_535, "a port number from 1 to 65535")


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
    serve.add_argument(
        "--retention",
        type=_retention,
        metavar="AGE",
        help="delete runs with nothing newer than AGE (30d, 12h), now and then "
        "(SPANGRAPH_RETENTION; default: keep every run)",
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
    add_query_parsers(q, common)
    q.set_defaults(func=cmd_query)
    add_prune_parser(sub)
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
            args.params = parse_params(args)
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
