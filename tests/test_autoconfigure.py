"""Zero-code setup in real subprocesses: the spangraph traces exporter, the distro and
configurator under opentelemetry-instrument, `spangraph run`, and OTLP export to a real
receiver beside the graph (the Jaeger path)."""

from __future__ import annotations

import gzip
import json
import logging
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from spangraph import queries
from spangraph.embedded import ServerInfo
from spangraph.stores import FalkorDBStore

APP = """
import spangraph
with spangraph.workflow("auto-{tag}") as run:
    with spangraph.step("inside"):
        pass
print("WORKFLOW", run.workflow_id, run.trace_id)
"""

BIN = Path(sys.executable).parent


@pytest.fixture
def env(graph_url: str, embedded_server: ServerInfo, tmp_path: Path) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "SPANGRAPH_"))}
    out.update(
        SPANGRAPH_GRAPH_URL=graph_url,
        SPANGRAPH_REDIS_URL=embedded_server.redis_url,
        SPANGRAPH_HOME=str(tmp_path / "home"),
        PYTHONUNBUFFERED="1",
    )
    out.pop("NEO4J_URI", None)
    return out


def _run(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[str, str]:
    proc = subprocess.run(
        cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    [line] = [x for x in proc.stdout.splitlines() if x.startswith("WORKFLOW ")]
    _, workflow_id, trace_id = line.split()
    return workflow_id, trace_id


def _assert_in_graph(graph_url: str, workflow_id: str, name: str) -> None:
    store = FalkorDBStore.from_url(graph_url)
    try:
        [root] = queries.tree(store, workflow_id)
        assert (root.name, root.span["state"]) == (name, "completed")
        assert [c.name for c in root.children] == ["inside"]
    finally:
        store.close()


def _app(tmp_path: Path, tag: str) -> Path:
    script = tmp_path / "app.py"
    script.write_text(APP.replace("{tag}", tag))
    return script


def test_traces_exporter_entry_point(env: dict[str, str], graph_url: str, tmp_path: Path) -> None:
    script = _app(tmp_path, "exporter")
    env = {
        **env,
        "OTEL_TRACES_EXPORTER": "spangraph",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
    }
    workflow_id, _ = _run(
        [str(BIN / "opentelemetry-instrument"), sys.executable, str(script)], env, tmp_path
    )
    _assert_in_graph(graph_url, workflow_id, "auto-exporter")


def test_distro_and_configurator(env: dict[str, str], graph_url: str, tmp_path: Path) -> None:
    script = _app(tmp_path, "distro")
    env = {**env, "OTEL_PYTHON_DISTRO": "spangraph", "OTEL_PYTHON_CONFIGURATOR": "spangraph"}
    proc_env = dict(env)
    workflow_id, _ = _run(
        [str(BIN / "opentelemetry-instrument"), sys.executable, str(script)], proc_env, tmp_path
    )
    _assert_in_graph(graph_url, workflow_id, "auto-distro")


@pytest.mark.parametrize("empty", [None, "OTEL_PYTHON_CONFIGURATOR", "OTEL_PYTHON_DISTRO"])
def test_spangraph_run(env: dict[str, str], graph_url: str, tmp_path: Path, empty: str) -> None:
    """Also with an empty OTEL_PYTHON_CONFIGURATOR or _DISTRO (``VAR=${VAR}`` in a compose
    file): unset, as an empty variable is (before: OTel looked for a configurator named
    "", and nothing was traced)."""
    script = _app(tmp_path, "run")
    if empty is not None:
        env = {**env, empty: ""}
    workflow_id, _ = _run(
        [str(BIN / "spangraph"), "run", "--", sys.executable, str(script)], env, tmp_path
    )
    _assert_in_graph(graph_url, workflow_id, "auto-run")


def test_spangraph_run_passes_the_arguments_and_signals_as_they_are(
    env: dict[str, str], tmp_path: Path
) -> None:
    """A "--" right after the command was dropped from its arguments; the command ran
    with SIGPIPE ignored (Python's setting), so `yes | head -1` printed "Broken pipe"."""
    script = tmp_path / "argv.py"
    script.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    script.chmod(0o755)
    env = {**env, "SPANGRAPH_REDIS_URL": "off", "OTEL_SDK_DISABLED": "true"}
    proc = _spangraph_run(env, tmp_path, "--", str(script), "--", "--flag", "a b")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == ["--", "--flag", "a b"]
    shell = _spangraph_run(env, tmp_path, "sh", "-c", "yes | head -1")
    assert (shell.returncode, shell.stdout, shell.stderr) == (0, "y\n", "")


def _spangraph_run(
    env: dict[str, str], cwd: Path, *command: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "spangraph"), "run", *command],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_spangraph_run_needs_a_command(env: dict[str, str], tmp_path: Path) -> None:
    proc = _spangraph_run(env, tmp_path)
    assert proc.returncode == 2 and "needs a command" in proc.stderr


class _Receiver:
    """A small real OTLP/HTTP traces receiver: decodes protobuf, remembers span ids."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str, str]] = []
        received = self.spans

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if not self.path.endswith("/v1/traces"):  # metrics, logs: taken, not read
                    self.send_response(200)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest.FromString(body)
                for rs in request.resource_spans:
                    for ss in rs.scope_spans:
                        for span in ss.spans:
                            received.append((span.trace_id.hex(), span.span_id.hex(), span.name))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    r = _Receiver()
    yield r
    r.close()


def test_otlp_export_beside_the_graph(
    env: dict[str, str], graph_url: str, tmp_path: Path, receiver: _Receiver
) -> None:
    """configure() adds the standard OTLP exporter when OTEL_EXPORTER_OTLP_* is set: the
    same trace and span ids reach the OTLP receiver (Jaeger's path) and the graph."""
    script = tmp_path / "app.py"
    script.write_text(
        APP.replace("{tag}", "jaeger").replace(
            "import spangraph\n", "import spangraph\nspangraph.configure()\n"
        )
        + "spangraph.shutdown()\n"
    )
    env = {
        **env,
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{receiver.port}/v1/traces",
        "OTEL_SERVICE_NAME": f"svc-{uuid.uuid4().hex[:6]}",
    }
    workflow_id, trace_id = _run([sys.executable, str(script)], env, tmp_path)
    assert {(t, n) for t, _, n in receiver.spans} == {
        (trace_id, "auto-jaeger"),
        (trace_id, "inside"),
    }
    store = FalkorDBStore.from_url(graph_url)
    try:
        stored = {s["span_id"] for s in queries.workflow_spans(store, workflow_id)}
    finally:
        store.close()
    assert stored == {s for _, s, _ in receiver.spans}


@pytest.mark.parametrize(
    ("variables", "logged"),
    [
        ({"OTEL_TRACES_EXPORTER": "none"}, ""),
        ({"OTEL_TRACES_EXPORTER": "spangraph"}, ""),
        ({"OTEL_TRACES_EXPORTER": "console"}, "exports its traces over OTLP only"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "the grpc exporter is missing"),
        ({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"}, "unknown OTLP protocol"),
    ],
)
def test_configure_exports_over_otlp_as_the_otel_variables_say(
    env: dict[str, str],
    graph_url: str,
    tmp_path: Path,
    receiver: _Receiver,
    variables: dict[str, str],
    logged: str,
) -> None:
    """configure() exported over OTLP/HTTP whenever an endpoint was set, whatever
    OTEL_TRACES_EXPORTER (``none`` included) and the protocol variables said (a gRPC
    Collector got HTTP posts it could not read)."""
    from importlib.util import find_spec

    if "grpc" in str(variables) and find_spec("opentelemetry.exporter.otlp.proto.grpc"):
        pytest.skip("the OTLP gRPC exporter is installed here")
    script = tmp_path / "app.py"
    script.write_text(
        APP.replace("{tag}", "otel-vars").replace(
            "import spangraph\n", "import spangraph\nspangraph.configure()\n"
        )
        + "spangraph.shutdown()\n"
    )
    env = {**env, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}", **variables}
    workflow_id, stderr = _run_logged([sys.executable, str(script)], env, tmp_path)
    _assert_in_graph(graph_url, workflow_id, "auto-otel-vars")  # the graph all the same
    assert receiver.spans == []
    if logged:
        assert stderr.count(logged) == 1, stderr
    else:
        assert "spangraph" not in stderr, stderr


def test_otlp_export_goes_on_after_configure_is_called_again(
    env: dict[str, str], tmp_path: Path, receiver: _Receiver
) -> None:
    """The provider the first configure() made (global, so it stays) was taken for the
    program's own by the second one, which added no OTLP exporter: the first one's had
    gone with the first configuration, and nothing reached Jaeger any more."""
    script = tmp_path / "app.py"
    script.write_text(
        "import spangraph\n"
        "spangraph.configure()\n"
        "spangraph.configure(project='second')\n"
        + APP.replace("{tag}", "again").replace("import spangraph\n", "")
        + "spangraph.shutdown()\n"
    )
    env = {
        **env,
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{receiver.port}/v1/traces",
    }
    _, trace_id = _run([sys.executable, str(script)], env, tmp_path)
    assert sorted((t, n) for t, _, n in receiver.spans) == [
        (trace_id, "auto-again"),
        (trace_id, "inside"),
    ]  # once each: not twice either


def test_instrumentor_entry_points_are_registered() -> None:
    from importlib.metadata import entry_points

    def names(group: str) -> set[str]:
        return {ep.name for ep in entry_points(group=group) if ep.value.startswith("spangraph")}

    assert names("opentelemetry_traces_exporter") == {"spangraph"}
    assert names("opentelemetry_distro") == {"spangraph"}
    assert names("opentelemetry_configurator") == {"spangraph"}


def test_integrations_doc_commands_run(env: dict[str, str], graph_url: str, tmp_path: Path) -> None:
    """Every command of the zero-code section of docs/integrations.md, as written."""
    import re

    doc = (Path(__file__).resolve().parent.parent / "docs" / "integrations.md").read_text()
    section = doc.split("## Existing OpenTelemetry setups", 1)[1].split("\n## ", 1)[0]
    [block] = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    commands = [line for line in block.splitlines() if line.strip()]
    assert len(commands) == 3
    shell_env = {**env, "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}"}
    for n, command in enumerate(commands):
        (tmp_path / "app.py").write_text(APP.replace("{tag}", f"doc-{n}"))
        workflow_id, _ = _run(["bash", "-c", command], shell_env, tmp_path)
        _assert_in_graph(graph_url, workflow_id, f"auto-doc-{n}")


def _doc_section(title: str) -> str:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "integrations.md").read_text()
    return doc.split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def test_existing_provider_example_runs(
    env: dict[str, str], graph_url: str, tmp_path: Path
) -> None:
    """The 'existing setup' example: the user's exporter keeps working, and the run, with
    the user's own span, is in the graph."""
    import re

    [example] = re.findall(
        r"```python\n(.*?)```", _doc_section("Existing OpenTelemetry setups"), flags=re.S
    )
    script = tmp_path / "existing.py"
    script.write_text(example)
    proc = subprocess.run(
        [sys.executable, str(script)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert '"name": "query-db"' in proc.stdout and '"name": "nightly-report"' in proc.stdout
    store = FalkorDBStore.from_url(graph_url)
    try:
        [run] = queries.workflows(store, name="nightly-report")
        [root] = queries.tree(store, run["workflow_id"])
    finally:
        store.close()
    assert [c.name for c in root.children] == ["query-db"]


def test_jaeger_example_commands(
    env: dict[str, str], graph_url: str, tmp_path: Path, receiver: _Receiver
) -> None:
    """The 'Jaeger beside the graph' commands, with the endpoint pointed at a real OTLP
    receiver standing in for Jaeger."""
    import re

    [block] = re.findall(r"```bash\n(.*?)```", _doc_section("Jaeger beside the graph"), flags=re.S)
    block = block.replace("http://localhost:4318", f"http://127.0.0.1:{receiver.port}")
    (tmp_path / "app.py").write_text(
        APP.replace("{tag}", "jaeger-doc").replace(
            "import spangraph\n", "import spangraph\nspangraph.configure()\n"
        )
        + "spangraph.shutdown()\n"
    )
    shell_env = {**env, "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}"}
    proc = subprocess.run(
        ["bash", "-ec", block],
        env=shell_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    [line] = [x for x in proc.stdout.splitlines() if x.startswith("WORKFLOW ")]
    _, workflow_id, trace_id = line.split()
    assert {n for t, _, n in receiver.spans if t == trace_id} == {"auto-jaeger-doc", "inside"}
    assert workflow_id in proc.stdout  # `spangraph query workflows` lists the run ...
    assert f"/trace/{trace_id}?uiFind=" in proc.stdout  # ... with its jaeger_url


# -- bad and unusual settings: the program always runs ------------------------------------


def _run_logged(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[str, str]:
    """Run ``cmd``; it must succeed and print its run. Returns (workflow_id, stderr)."""
    proc = subprocess.run(
        cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    [line] = [x for x in proc.stdout.splitlines() if x.startswith("WORKFLOW ")]
    assert "Failed to auto initialize" not in proc.stderr, proc.stderr
    return line.split()[1], proc.stderr


@pytest.mark.parametrize(
    "variables",
    [
        {},
        {"OTEL_METRICS_EXPORTER": "otlp"},
        {"OTEL_TRACES_EXPORTER": "otlp"},
        {"OTEL_TRACES_EXPORTER": "console,otlp"},
    ],
)
def test_distro_exports_over_otlp_http_by_default(
    env: dict[str, str],
    graph_url: str,
    tmp_path: Path,
    receiver: _Receiver,
    variables: dict[str, str],
) -> None:
    """With only OTEL_EXPORTER_OTLP_ENDPOINT set, the distro picks OTLP/HTTP (what
    spangraph[otlp] installs), not the SDK's default gRPC exporter, which is not installed
    and used to fail the whole setup: no graph, no instrumentors. The same for ``otlp``
    in ``OTEL_METRICS_EXPORTER`` or ``OTEL_TRACES_EXPORTER`` (it failed the setup:
    nothing exported, a console exporter beside it included)."""
    script = _app(tmp_path, "otlp-default")
    env = {**env, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}"}
    env.update(variables)
    workflow_id, stderr = _run_logged(
        [str(BIN / "spangraph"), "run", "--", sys.executable, str(script)], env, tmp_path
    )
    _assert_in_graph(graph_url, workflow_id, "auto-otlp-default")
    assert {n for _, _, n in receiver.spans} == {"auto-otlp-default", "inside"}
    assert "spangraph:" not in stderr


def test_distro_without_the_otlp_exporter_still_records_the_graph(
    env: dict[str, str], graph_url: str, tmp_path: Path
) -> None:
    from importlib.metadata import entry_points

    if entry_points(group="opentelemetry_traces_exporter", name="otlp_proto_grpc"):
        pytest.skip("the OTLP gRPC exporter is installed here")
    script = _app(tmp_path, "no-exporter")
    env = {
        **env,
        "OTEL_PYTHON_DISTRO": "spangraph",
        "OTEL_PYTHON_CONFIGURATOR": "spangraph",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
    }
    workflow_id, stderr = _run_logged(
        [str(BIN / "opentelemetry-instrument"), sys.executable, str(script)], env, tmp_path
    )
    _assert_in_graph(graph_url, workflow_id, "auto-no-exporter")
    assert stderr.count("the OTLP exporter for grpc is not installed") == 1, stderr
    assert "opentelemetry-exporter-otlp-proto-grpc" in stderr


def test_configurator_survives_a_missing_exporter_of_the_user(
    env: dict[str, str], graph_url: str, tmp_path: Path
) -> None:
    """OTEL_TRACES_EXPORTER names an exporter that is not installed: the SDK setup fails,
    which is logged, and spangraph still records the run."""
    script = _app(tmp_path, "missing-exporter")
    env = {
        **env,
        "OTEL_PYTHON_CONFIGURATOR": "spangraph",
        "OTEL_TRACES_EXPORTER": "no_such_exporter",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
    }
    workflow_id, stderr = _run_logged(
        [str(BIN / "opentelemetry-instrument"), sys.executable, str(script)], env, tmp_path
    )
    _assert_in_graph(graph_url, workflow_id, "auto-missing-exporter")
    assert "the OpenTelemetry SDK setup from the OTEL_* variables failed" in stderr
    assert "no_such_exporter" in stderr


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("SPANGRAPH_GRAPH_URL", "garbage://x", "unknown scheme 'garbage'"),
        ("SPANGRAPH_REDIS_URL", "nonsense", "SPANGRAPH_REDIS_URL"),
        ("SPANGRAPH_GRAPH_URL", "falkordb://127.0.0.1:9/g", "unreachable"),
    ],
)
def test_bad_spangraph_settings_log_once_and_the_program_runs(
    env: dict[str, str], tmp_path: Path, setting: str, value: str, message: str
) -> None:
    """The traces exporter and the configurator both set spangraph up; a bad setting is
    tried and logged once (an unreachable store is not waited for twice)."""
    script = _app(tmp_path, "bad")
    env = {
        **env,
        setting: value,
        "OTEL_PYTHON_CONFIGURATOR": "spangraph",
        "OTEL_TRACES_EXPORTER": "spangraph",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
    }
    _, stderr = _run_logged(
        [str(BIN / "opentelemetry-instrument"), sys.executable, str(script)], env, tmp_path
    )
    errors = [line for line in stderr.splitlines() if line.startswith("spangraph: not enabled")]
    assert len(errors) == 1, stderr
    assert message in errors[0]


def test_no_langgraph_no_word_about_it(env: dict[str, str], tmp_path: Path) -> None:
    """Where LangGraph is not installed, its instrumentor is skipped quietly, as
    OpenTelemetry's loader skips any whose library is missing: it used to warn on every
    run that "this LangGraph version lacks" everything it patches."""
    hidden = tmp_path / "hide"
    hidden.mkdir()
    (hidden / "langgraph.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'langgraph'\", name='langgraph')\n"
    )
    env = {**env, "PYTHONPATH": str(hidden)}
    code = "import importlib.util as u; print('ran', u.find_spec('langgraph').origin)"
    for cmd in (
        [str(BIN / "spangraph"), "run", "--", sys.executable, "-c", code],
        [str(BIN / "opentelemetry-instrument"), sys.executable, "-c", code],
    ):
        proc = subprocess.run(
            cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == f"ran {hidden / 'langgraph.py'}"  # hidden indeed
        assert "LangGraph" not in proc.stderr, proc.stderr


class _FakeEntryPoint:
    """An ``opentelemetry_instrumentor`` entry point, as the zero-code setup hands it
    to the distro."""

    def __init__(self, name: str, target: Any) -> None:
        self.name = name
        self._target = target

    def load(self) -> Any:
        return self._target


def _instrumentor(library: str) -> Any:
    from opentelemetry.instrumentation.instrumentor import BaseInstrumentor

    class Instrumentor(BaseInstrumentor):
        def instrumentation_dependencies(self) -> list[str]:
            return [f"{library} >= 1.0"]

        def _instrument(self, **kwargs: Any) -> None:
            pass

        def _uninstrument(self, **kwargs: Any) -> None:
            pass

    return Instrumentor


def test_distro_warns_when_two_instrumentors_instrument_one_library(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Zero-code setups load every instrumentor installed: two of one library record each
    call twice. The distro says so, naming both entry points and how to turn one off;
    instrumentors of other libraries, or one that did not instrument, say nothing."""
    from spangraph.autoconfigure import SpangraphDistro

    distro = SpangraphDistro()
    first, second = _instrumentor("openai"), _instrumentor("OpenAI")  # (one name)
    other = _instrumentor("langgraph")
    with caplog.at_level(logging.WARNING, logger="spangraph"):
        distro.load_instrumentor(_FakeEntryPoint("openai", first), skip_dep_check=True)
        distro.load_instrumentor(_FakeEntryPoint("spangraph_langgraph", other), skip_dep_check=True)
        assert not [r for r in caplog.records if r.name == "spangraph"]
        distro.load_instrumentor(_FakeEntryPoint("spangraph_openai", second), skip_dep_check=True)
    assert [r.getMessage() for r in caplog.records if r.name == "spangraph"] == [
        "spangraph: openai is instrumented twice, by the instrumentors 'openai' and "
        "'spangraph_openai': each of its calls will be recorded twice (two spans); turn "
        "one off, e.g. OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=spangraph_openai"
    ]
    for instrumentor in (first, second, other):
        instrumentor().uninstrument()
    # an instrumentor that did not instrument (its library missing): not counted
    caplog.clear()
    distro = SpangraphDistro()
    missing = _instrumentor("not-installed-anywhere")
    with caplog.at_level(logging.WARNING, logger="spangraph"):
        distro.load_instrumentor(_FakeEntryPoint("a", missing))  # (dependency check on)
        distro.load_instrumentor(_FakeEntryPoint("b", _instrumentor("not-installed-anywhere")))
    assert not [r for r in caplog.records if r.name == "spangraph"]
