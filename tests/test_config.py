"""Settings.from_env and configure()'s validation (no server needed)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider

import spangraph
from spangraph import _state
from spangraph.config import (
    ENV_GRAPH_URL,
    ENV_JAEGER_URL,
    ENV_PROJECT,
    ENV_REDIS_URL,
    Settings,
)
from spangraph.exceptions import ConfigurationError, SpangraphError


def test_defaults() -> None:
    s = Settings.from_env({})
    assert s.graph_url == "embedded"
    assert s.redis_url == "embedded"
    assert s.project == "default"
    assert s.jaeger_url == "http://localhost:16686"
    assert s.api_token is None
    assert s.neo4j_user == "neo4j"
    assert s.neo4j_password is None
    assert s.neo4j_database is None
    assert isinstance(s.home, Path)
    assert s.graph_is_embedded and s.redis_is_embedded and s.live_enabled
    assert not s.graph_is_neo4j


def test_env_values_are_read() -> None:
    s = Settings.from_env(
        {
            "SPANGRAPH_GRAPH_URL": "falkordb://db.example:6380/runs",
            "SPANGRAPH_REDIS_URL": "redis://cache:6379/1",
            "SPANGRAPH_HOME": "~/sg-home",
            "SPANGRAPH_PROJECT": "acme",
            "SPANGRAPH_JAEGER_URL": "https://jaeger.example",
            "SPANGRAPH_API_TOKEN": "secret",
            "NEO4J_USER": "bob",
            "NEO4J_PASSWORD": "pw",
            "NEO4J_DATABASE": "graphs",
        }
    )
    assert s.graph_url == "falkordb://db.example:6380/runs"
    assert s.redis_url == "redis://cache:6379/1"
    assert s.home == Path("~/sg-home").expanduser()
    assert s.project == "acme"
    assert s.jaeger_url == "https://jaeger.example"
    assert s.api_token == "secret"
    assert (s.neo4j_user, s.neo4j_password, s.neo4j_database) == ("bob", "pw", "graphs")
    assert not s.graph_is_embedded and not s.redis_is_embedded


def test_empty_env_values_mean_default() -> None:
    s = Settings.from_env({"SPANGRAPH_PROJECT": "", "SPANGRAPH_GRAPH_URL": ""})
    assert s.project == "default"
    assert s.graph_url == "embedded"


def test_neo4j_uri_used_when_graph_url_unset() -> None:
    s = Settings.from_env({"NEO4J_URI": "neo4j+s://abc.databases.neo4j.io"})
    assert s.graph_url == "neo4j+s://abc.databases.neo4j.io"
    assert s.graph_is_neo4j


@pytest.mark.parametrize("uri", ["localhost:7687", "http://localhost:7474"])
def test_a_bad_neo4j_uri_is_named_as_neo4j_uri(uri: str) -> None:
    """It was named SPANGRAPH_GRAPH_URL, a variable the user never set."""
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({"NEO4J_URI": uri})
    assert info.value.setting == "NEO4J_URI"
    assert Settings.from_env({"NEO4J_URI": uri}, graph_url="embedded").graph_url == "embedded"


def test_graph_url_wins_over_neo4j_uri() -> None:
    s = Settings.from_env(
        {"NEO4J_URI": "bolt://neo:7687", "SPANGRAPH_GRAPH_URL": "falkordb://f:6379/g"}
    )
    assert s.graph_url == "falkordb://f:6379/g"
    assert not s.graph_is_neo4j


def test_overrides_win_over_env() -> None:
    env = {"SPANGRAPH_PROJECT": "from-env", "SPANGRAPH_REDIS_URL": "redis://a:1"}
    s = Settings.from_env(env, project="from-kwarg", redis_url="off", graph_url=None)
    assert s.project == "from-kwarg"
    assert s.redis_url == "off"
    assert not s.live_enabled
    assert s.graph_url == "embedded"  # None override means "not given"


def test_home_override_is_a_path() -> None:
    s = Settings.from_env({}, home="~/x")
    assert s.home == Path("~/x").expanduser()


def test_from_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPANGRAPH_PROJECT", "from-os")
    assert Settings.from_env().project == "from-os"


def test_unknown_override_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="colour"):
        Settings.from_env({}, colour="red")


@pytest.mark.parametrize(
    "url",
    [
        "embedded",
        "falkordb://localhost:6379/spangraph",
        "falkordb://localhost",
        "redis://localhost:6379",
        "redis://localhost:6379/traces",
        "falkordb://localhost:6379/0",  # a graph named "0", asked for by its scheme
        "neo4j://localhost:7687",
        "neo4j+s://x.databases.neo4j.io",
        "neo4j+ssc://host",
        "bolt://127.0.0.1:7687",
        "bolt+s://host:7687",
    ],
)
def test_good_graph_urls(url: str) -> None:
    assert Settings.from_env({}, graph_url=url).graph_url == url


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("nope://x", ["unknown scheme", "nope"]),
        ("http://host:1", ["unknown scheme"]),
        ("localhost:6379", ["expected"]),
        ("falkordb://localhost:99999/g", ["bad port"]),
        ("falkordb://localhost:abc/g", ["bad port"]),
        ("falkordb://localhost:0/g", ["bad port"]),
        ("falkordb:///graph", ["no host"]),
        ("neo4j://:7687", ["no host"]),
        ("redis://localhost:6379/0", ["Redis database number", "falkordb://"]),
        ("rediss://localhost:6380/12/", ["Redis database number"]),
    ],
)
def test_bad_graph_urls(url: str, words: list[str]) -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({}, graph_url=url)
    err = info.value
    assert err.setting == ENV_GRAPH_URL
    assert str(err).startswith(f"{ENV_GRAPH_URL}: ")
    for word in words:
        assert word in str(err)


def test_bad_graph_url_from_env_names_the_setting() -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({"SPANGRAPH_GRAPH_URL": "mysql://h", "NEO4J_URI": "neo4j://h"})
    assert info.value.setting == ENV_GRAPH_URL
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({"NEO4J_URI": "mysql://h"})
    assert info.value.setting == "NEO4J_URI"


@pytest.mark.parametrize(
    "url",
    [
        "embedded",
        "off",
        "redis://h:6379/0",
        "redis://h:6379/15/",
        "rediss://h:6380",
        "redis://h",
        "unix:///tmp/r.sock",
    ],
)
def test_good_redis_urls(url: str) -> None:
    assert Settings.from_env({}, redis_url=url).redis_url == url


@pytest.mark.parametrize(
    "url",
    [
        "redis://h:abc",
        "redis://h:70000",
        "memcached://h:1",
        "localhost",
        "unix://",
        "unix:///",
        "redis://h:6379/abc",  # the client took database 0 without a word
        "rediss://h:6380/0/1",
    ],
)
def test_bad_redis_urls(url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({}, redis_url=url)
    assert info.value.setting == ENV_REDIS_URL
    assert ENV_REDIS_URL in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        *("localhost:16686", "ftp://jaeger", "", "http://", "http://[::1", 5),
        *("http://h:abc", "http://h:99999", "http://h:0"),
    ],
)
def test_bad_jaeger_url(url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({}, jaeger_url=url)
    assert info.value.setting == ENV_JAEGER_URL


@pytest.mark.parametrize("project", ["", "   ", "a\nb", "x" * 1025, 5])
def test_unusable_project_ids(project: Any) -> None:
    """The project id names a Redis channel and a URL path: blank, control characters,
    or longer than an id may be are refused."""
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({}, project=project)
    assert info.value.setting == ENV_PROJECT


@pytest.mark.parametrize("project", ["team/alpha", "équipe", "x" * 1024])
def test_project_ids_that_are_accepted(project: str) -> None:
    assert Settings.from_env({}, project=project).project == project


@pytest.mark.parametrize("value", ["no", "yes", 1, 0])
def test_offload_must_be_a_bool(value: Any) -> None:
    """A str such as "no" is truthy: taken as it is, it would turn offload on."""
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({}, offload=value)
    assert info.value.setting == "SPANGRAPH_OFFLOAD"


@pytest.mark.parametrize(
    "home", [123, "", "  ", b"bytes", "a\x00b", "~no-such-user-sg/x", " /tmp/sg", "/tmp/sg\n"]
)
def test_home_must_be_a_usable_path(home: Any) -> None:
    """An empty home would put the server's data in the current directory."""
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({}, home=home)
    assert info.value.setting == "SPANGRAPH_HOME"


@pytest.mark.parametrize("size", [0, -1, 1.5, "10", True])
def test_bad_max_queue_size_names_the_setting(size: Any) -> None:
    with pytest.raises(ConfigurationError) as info:
        spangraph.configure(tracer_provider=TracerProvider(), max_queue_size=size)
    assert info.value.setting == "max_queue_size"


def test_configuration_error_is_a_value_error() -> None:
    err = ConfigurationError("SOME_SETTING", "is bad")
    assert isinstance(err, ValueError)
    assert isinstance(err, SpangraphError)
    assert err.setting == "SOME_SETTING"
    assert str(err) == "SOME_SETTING: is bad"
    with pytest.raises(ValueError):
        Settings.from_env({}, graph_url="nope://x")


def test_replace_validates() -> None:
    s = Settings.from_env({})
    assert s.replace(project="p2").project == "p2"
    with pytest.raises(ConfigurationError) as info:
        s.replace(graph_url="nope://x")
    assert info.value.setting == ENV_GRAPH_URL


def test_settings_are_frozen() -> None:
    s = Settings.from_env({})
    with pytest.raises(AttributeError):
        s.project = "x"  # type: ignore[misc]


# -- configure() ------------------------------------------------------------------------


@pytest.fixture
def restore_state() -> Any:
    tracer, project = _state.tracer, _state.project
    yield
    _state.tracer, _state.project = tracer, project


@pytest.mark.usefixtures("restore_state")
def test_configure_unreachable_graph_names_the_setting() -> None:
    provider = TracerProvider()
    tracer_before = _state.tracer
    with pytest.raises(ConfigurationError) as info:
        spangraph.configure(
            graph_url="falkordb://127.0.0.1:1/x", redis_url="off", tracer_provider=provider
        )
    assert info.value.setting == ENV_GRAPH_URL
    assert "127.0.0.1:1" in str(info.value)
    assert _state.tracer is tracer_before  # nothing half-configured
    provider.shutdown()


@pytest.mark.usefixtures("restore_state")
def test_the_neo4j_settings_are_keywords_of_configure_too(graph_url: str, tmp_path: Any) -> None:
    """Every setting is a keyword of configure(); the Neo4j credentials were not."""
    sg = spangraph.configure(
        graph_url=graph_url,
        redis_url="off",
        home=str(tmp_path),
        tracer_provider=TracerProvider(),
        neo4j_user="reader",
        neo4j_password="pw-secret",
        neo4j_database="runs",
    )
    try:
        assert (sg.settings.neo4j_user, sg.settings.neo4j_database) == ("reader", "runs")
        assert sg.settings.neo4j_password == "pw-secret"
    finally:
        spangraph.shutdown()
    for keyword, setting in (
        ("neo4j_user", "NEO4J_USER"),
        ("neo4j_password", "NEO4J_PASSWORD"),
        ("neo4j_database", "NEO4J_DATABASE"),
    ):
        for bad in (5, " ", "a\x00b"):
            with pytest.raises(ConfigurationError) as info:
                spangraph.configure(graph_url="neo4j://127.0.0.1:1", **{keyword: bad})
            assert info.value.setting == setting
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({}, neo4j_password=" ")
    assert "***" in str(info.value)


@pytest.mark.usefixtures("restore_state")
def test_a_redis_cluster_node_is_refused_for_live_events(
    graph_url: str, tmp_path: Any, plain_redis: Callable[..., int]
) -> None:
    """Each publish is one script over several keys (a run's seq counter and stream, and
    other runs'): a cluster refused every one (CROSSSLOT), and every live event was
    dropped with only a log line to say so."""
    port = plain_redis("--cluster-enabled", "yes")
    with pytest.raises(ConfigurationError) as info:
        spangraph.configure(
            graph_url=graph_url,
            redis_url=f"redis://127.0.0.1:{port}/0",
            home=str(tmp_path),
            tracer_provider=TracerProvider(),
        )
    assert info.value.setting == "SPANGRAPH_REDIS_URL"
    assert "Redis Cluster" in str(info.value)


@pytest.mark.usefixtures("restore_state")
def test_configure_bad_scheme_names_the_setting() -> None:
    with pytest.raises(ConfigurationError) as info:
        spangraph.configure(graph_url="nope://x")
    assert info.value.setting == ENV_GRAPH_URL
    assert "nope" in str(info.value)


@pytest.mark.usefixtures("restore_state")
def test_configure_bad_redis_url_names_the_setting() -> None:
    with pytest.raises(ConfigurationError) as info:
        spangraph.configure(graph_url="falkordb://127.0.0.1:1/x", redis_url="redis://h:abc")
    assert info.value.setting == ENV_REDIS_URL


@pytest.mark.usefixtures("restore_state")
def test_configure_that_fails_attaches_nothing(graph_url: str, closed_port: int) -> None:
    """The store was opened before Redis failed: the provider gets no processor (a second
    configure would otherwise publish every event twice) and the store is closed."""
    provider = TracerProvider()
    before = provider._active_span_processor._span_processors
    with pytest.raises(ConfigurationError) as info:
        spangraph.configure(
            tracer_provider=provider,
            graph_url=graph_url,
            redis_url=f"redis://127.0.0.1:{closed_port}/0",
        )
    assert info.value.setting == ENV_REDIS_URL
    assert provider._active_span_processor._span_processors == before
    from spangraph._sdk import current

    assert current() is None
    provider.shutdown()


def test_bad_otel_bsp_variable_is_named_and_nothing_is_set(
    embedded_server: Any, graph_url: str, tmp_path: Path
) -> None:
    """With no provider of the user's, configure() makes one with the OTLP exporter; a bad
    OTEL_BSP_* value is a ConfigurationError naming it, the global provider stays unset,
    and a configure() after the fix attaches each processor once."""
    script = textwrap.dedent(
        """
        import os, sys
        from opentelemetry import trace
        import spangraph
        from spangraph.exceptions import ConfigurationError

        kw = dict(graph_url=sys.argv[1], redis_url=sys.argv[2], home=sys.argv[3])
        try:
            spangraph.configure(**kw)
        except ConfigurationError as exc:
            print("error", exc.setting)
        print("provider", type(trace.get_tracer_provider()).__name__)
        os.environ["OTEL_BSP_MAX_QUEUE_SIZE"] = "4096"
        sg = spangraph.configure(**kw)
        processors = trace.get_tracer_provider()._active_span_processor._span_processors
        print("processors", sorted(type(p).__name__ for p in processors))
        spangraph.shutdown()
        """
    )
    env = {
        **os.environ,
        "OTEL_BSP_MAX_QUEUE_SIZE": "-5",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
    }
    out = subprocess.run(
        [sys.executable, "-c", script, graph_url, embedded_server.redis_url, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "error OTEL_BSP_MAX_QUEUE_SIZE"
    assert lines[1] == "provider ProxyTracerProvider"
    assert lines[2] == (
        "processors ['BatchSpanProcessor', 'GraphSpanProcessor', 'LiveEventProcessor']"
    )


_OTHER_SDKS = """
import logging, sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
import spangraph

logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
kw = dict(graph_url=sys.argv[1], redis_url=sys.argv[2], home=sys.argv[3])
exported = InMemorySpanExporter()


class Unhashable(TracerProvider):  # as Logfire's provider, a dataclass
    __hash__ = None


class WithDefault(TracerProvider):  # as Phoenix's, from phoenix.otel.register()
    def __init__(self):
        super().__init__()
        self.default = SimpleSpanProcessor(exported)
        super().add_span_processor(self.default)

    def add_span_processor(self, processor, replace_default_processor=True):
        if replace_default_processor and self.default is not None:
            multi = self._active_span_processor
            multi._span_processors = tuple(
                p for p in multi._span_processors if p is not self.default
            )
            self.default = None
        super().add_span_processor(processor)


class Dropping(TracerProvider):  # one that drops what it had, whatever it is told
    dropping = False

    def add_span_processor(self, processor):
        if self.dropping:
            self._active_span_processor._span_processors = ()
            self.dropping = False
        super().add_span_processor(processor)


case = sys.argv[4]
if case == "refused":
    spangraph.configure(**kw)
    trace.set_tracer_provider(TracerProvider())  # a library set up after configure()
else:
    provider = {"unhashable": Unhashable, "default": WithDefault, "dropping": Dropping}[case]()
    if case == "dropping":
        provider.add_span_processor(SimpleSpanProcessor(exported))
        provider.dropping = True
    trace.set_tracer_provider(provider)
    spangraph.configure(**kw)
    print("processors", sorted(type(p).__name__ for p in provider._active_span_processor._span_processors))
with spangraph.workflow("w") as run:
    pass
spangraph.flush(10)
print("exported", [s.name for s in exported.get_finished_spans()])
from spangraph import queries
print("graph", [n.name for n in queries.tree(spangraph.configure(**kw).store, run.workflow_id)])
spangraph.shutdown()
"""


@pytest.mark.parametrize("case", ["unhashable", "default", "dropping", "refused"])
def test_configure_after_other_observability_sdks(
    embedded_server: Any, graph_url: str, tmp_path: Path, case: str
) -> None:
    """Other libraries' providers (found with Logfire, Phoenix): an unhashable global
    provider made configure() raise TypeError; Phoenix's ``add_span_processor`` dropped
    its exporter (its default processor) when spangraph's was added, silently; a provider
    set after configure() made the global one is refused by OpenTelemetry, and its spans
    reach nothing spangraph sees: now said, naming the library that set it."""
    out = subprocess.run(
        [
            sys.executable, "-c", _OTHER_SDKS, graph_url, embedded_server.redis_url,
            str(tmp_path), case,
        ],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[-1] == "graph ['w']"  # in the graph, in every case
    ours = ["GraphSpanProcessor", "LiveEventProcessor"]
    if case == "unhashable":
        assert lines[0] == f"processors {ours}"
    elif case == "default":  # the exporter kept, and it gets the run
        assert lines[0] == f"processors {sorted([*ours, 'SimpleSpanProcessor'])}"
        assert lines[1] == "exported ['w']"
        assert "removed" not in out.stderr
    elif case == "dropping":  # dropped all the same: said
        assert lines[1] == "exported []"
        assert "(Dropping) removed SimpleSpanProcessor from it" in out.stderr
    else:
        assert "Overriding of current TracerProvider is not allowed" in out.stderr
        assert (
            "spangraph: __main__ set a TracerProvider of its own after spangraph.configure()"
            in out.stderr
        )
    if case != "refused":
        assert "set a TracerProvider of its own" not in out.stderr


@pytest.mark.parametrize(
    ("setting", "url"),
    [(ENV_GRAPH_URL, "falkordb://[::1/g"), (ENV_REDIS_URL, "redis://[::1/0")],
)
def test_unparsable_urls_name_the_setting(setting: str, url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({}, **{setting.removeprefix("SPANGRAPH_").lower(): url})
    assert info.value.setting == setting and "IPv6" in str(info.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@h:1/0", "redis://:***@h:1/0"),
        ("neo4j://neo4j:pa:ss@h:7687", "neo4j://neo4j:***@h:7687"),
        ("redis://h/0?db=1&Password=s3cret", "redis://h/0?db=1&Password=***"),
        ("falkordb://user@h/g", "falkordb://user@h/g"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    from spangraph.config import redact_url

    assert redact_url(url) == shown


@pytest.mark.usefixtures("restore_state")
def test_configure_errors_never_show_a_password(closed_port: int, graph_url: str) -> None:
    provider = TracerProvider()
    cases = [
        dict(graph_url=f"falkordb://u:s3cret@127.0.0.1:{closed_port}/g", live=False),
        dict(graph=False, redis_url=f"redis://:s3cret@127.0.0.1:{closed_port}/0"),
        dict(graph=False, redis_url="redis://:s3cret@127.0.0.1:1/0?socket_timeout=abc"),
    ]
    for kwargs in cases:
        with pytest.raises(ConfigurationError) as info:
            spangraph.configure(tracer_provider=provider, **kwargs)
        assert "s3cret" not in str(info.value) and "***" in str(info.value), info.value
    provider.shutdown()


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        (
            {"OTEL_BSP_SCHEDULE_DELAY": "-1", "OTEL_BSP_MAX_QUEUE_SIZE": "4096"},
            "OTEL_BSP_SCHEDULE_DELAY",
        ),
        ({"OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "999999"}, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE"),
        (
            {"OTEL_BSP_MAX_QUEUE_SIZE": "0", "OTEL_BSP_EXPORT_TIMEOUT": "1000"},
            "OTEL_BSP_MAX_QUEUE_SIZE",
        ),
    ],
)
def test_the_bad_otel_bsp_variable_is_the_one_named(
    embedded_server: Any, tmp_path: Path, variables: dict[str, str], named: str
) -> None:
    """Of several OTEL_BSP_* variables set, the error names the one the exporter refused,
    and shows the values set."""
    script = textwrap.dedent(
        """
        import sys
        import spangraph
        from spangraph.exceptions import ConfigurationError

        try:
            spangraph.configure(redis_url=sys.argv[1], home=sys.argv[2], graph=False)
        except ConfigurationError as exc:
            print(exc.setting)
            print(exc)
        """
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
        **variables,
    }
    out = subprocess.run(
        [sys.executable, "-c", script, embedded_server.redis_url, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    setting, message = out.stdout.splitlines()
    assert setting == named
    for variable, value in variables.items():
        assert f"{variable}={value!r}" in message


@pytest.mark.usefixtures("restore_state")
def test_a_url_the_store_client_refuses_is_named_once_without_its_password() -> None:
    provider = TracerProvider()
    with pytest.raises(ConfigurationError) as info:
        spangraph.configure(
            tracer_provider=provider, graph_url="neo4j://u:s3cret@127.0.0.1:1", live=False
        )
    message = str(info.value)
    assert info.value.setting == ENV_GRAPH_URL
    assert message.count(ENV_GRAPH_URL) == 1 and "s3cret" not in message, message
    provider.shutdown()


@pytest.mark.usefixtures("restore_state")
@pytest.mark.parametrize("name", [5, "", "  "])
def test_service_name_must_be_a_non_blank_string(name: Any) -> None:
    with pytest.raises(ConfigurationError) as info:
        spangraph.configure(service_name=name, graph=False, live=False)
    assert info.value.setting == "service_name"


@pytest.mark.usefixtures("restore_state")
def test_a_redis_option_the_client_refuses_on_connecting_is_the_urls_fault(
    closed_port: int,
) -> None:
    """redis-py takes ?ssl_cert_reqs= apart only when it connects: the error says the URL
    cannot be used (not that Redis is unreachable), without the password."""
    provider = TracerProvider()
    url = f"rediss://:s3cret@127.0.0.1:{closed_port}/0?ssl_cert_reqs=bogus"
    with pytest.raises(ConfigurationError) as info:
        spangraph.configure(tracer_provider=provider, graph=False, redis_url=url)
    message = str(info.value)
    assert info.value.setting == ENV_REDIS_URL and "cannot use rediss://:***@" in message
    assert "s3cret" not in message
    provider.shutdown()


@pytest.mark.usefixtures("restore_state")
def test_configure_again_and_shutdown_leave_one_set_of_processors(
    graph_url: str, embedded_server: Any, tmp_path: Path
) -> None:
    """A configure() replacing the previous one takes the old processors off the provider
    (they piled up, each called for every span), and shutdown() takes its own off."""
    provider = TracerProvider()
    ours = ("GraphSpanProcessor", "LiveEventProcessor")
    kwargs = dict(
        tracer_provider=provider,
        graph_url=graph_url,
        redis_url=embedded_server.redis_url,
        home=str(tmp_path),
        instrument_threads=False,
    )

    def attached() -> list[str]:
        names = [type(p).__name__ for p in provider._active_span_processor._span_processors]
        return sorted(n for n in names if n in ours)

    for _ in range(3):
        spangraph.configure(**kwargs)
        assert attached() == list(ours)
    with spangraph.workflow("once"):
        pass
    assert spangraph.flush(10)
    from spangraph._sdk import current

    assert current().stats()["graph"]["sent"] == 2  # start and end, once each
    spangraph.shutdown()
    assert attached() == []
    provider.shutdown()


def test_span_limits_that_cut_run_ids_are_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A provider whose SpanLimits cut values to 10 characters cuts every run's ids to
    one prefix; one that keeps 5 attributes loses spangraph's own: configure() says so."""
    from opentelemetry.sdk.trace import SpanLimits

    tight = TracerProvider(
        span_limits=SpanLimits(
            max_attribute_length=4096, max_span_attribute_length=10, max_span_attributes=5
        )
    )
    # a span attribute length limit unset cuts nothing, whatever the general one says
    roomy = TracerProvider(
        span_limits=SpanLimits(max_attribute_length=10, max_span_attribute_length=SpanLimits.UNSET)
    )
    try:
        with caplog.at_level("WARNING", logger="spangraph"):
            spangraph.configure(tracer_provider=roomy, graph=False, live=False, home=str(tmp_path))
            assert not [r for r in caplog.records if "TracerProvider" in r.getMessage()]
            spangraph.configure(tracer_provider=tight, graph=False, live=False, home=str(tmp_path))
        messages = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert any("cuts attribute values to 10 characters" in m for m in messages)
        assert any("keeps at most 5 attributes" in m for m in messages)
    finally:
        spangraph.shutdown()
        tight.shutdown()
        roomy.shutdown()


@pytest.mark.parametrize("token", ["pässwörd", "tab\tin", "line\nbreak"])
def test_api_token_must_be_printable_ascii(token: str) -> None:
    """A token is sent in an HTTP header, which the service reads as latin-1: a non-ASCII
    one sent as UTF-8 (curl, browsers) never matched it (before: accepted, and every
    request was refused with 401)."""
    with pytest.raises(ConfigurationError, match=r"SPANGRAPH_API_TOKEN.*printable ASCII"):
        Settings.from_env({"SPANGRAPH_API_TOKEN": token})
    assert Settings.from_env({"SPANGRAPH_API_TOKEN": "s3cret-Token_1"}).api_token


@pytest.mark.parametrize("token", ["s3cret-Token_1234567890 ", " s3cret-Token_1234567890"])
def test_api_token_with_white_space_around_it_is_refused(token: str) -> None:
    """HTTP drops the spaces around a header's value: a token with them (a quoting
    mistake) could never be presented, and every request got 401 (before: accepted)."""
    with pytest.raises(ConfigurationError, match=r"SPANGRAPH_API_TOKEN.*white space around"):
        Settings.from_env({"SPANGRAPH_API_TOKEN": token})
    assert Settings.from_env({"SPANGRAPH_API_TOKEN": "two words-1234567890"}).api_token


@pytest.mark.usefixtures("restore_state")
@pytest.mark.parametrize("from_variable", [True, False])
def test_an_unreachable_neo4j_uri_is_named_as_the_variable_set(
    monkeypatch: pytest.MonkeyPatch, closed_port: int, from_variable: bool
) -> None:
    """A NEO4J_URI nobody answers at was reported as SPANGRAPH_GRAPH_URL, a variable the
    user never set (a mistake in its syntax was named right)."""
    url = f"bolt://127.0.0.1:{closed_port}"
    monkeypatch.delenv("SPANGRAPH_GRAPH_URL", raising=False)
    if from_variable:
        monkeypatch.setenv("NEO4J_URI", url)
    else:
        monkeypatch.delenv("NEO4J_URI", raising=False)
        monkeypatch.setenv("SPANGRAPH_GRAPH_URL", url)
    provider = TracerProvider()
    try:
        with pytest.raises(ConfigurationError) as info:
            spangraph.configure(tracer_provider=provider, live=False)
        assert info.value.setting == ("NEO4J_URI" if from_variable else "SPANGRAPH_GRAPH_URL")
    finally:
        provider.shutdown()


@pytest.mark.parametrize("offload", ["0", "1"])
def test_otel_sdk_disabled_starts_nothing(tmp_path: Path, offload: str) -> None:
    """OTEL_SDK_DISABLED=true: the SDK records nothing, so configure() starts no embedded
    server, no agent and no processor (before: all of them, for nothing), and the
    program runs as usual."""
    script = textwrap.dedent(
        """
        import spangraph
        sg = spangraph.configure()
        with spangraph.workflow("off") as run, spangraph.step("s"):
            spangraph.event("e")
        print(sg.attached, sg.extra_processors, sg.store, sg.offload_processor,
              run.span.is_recording())
        spangraph.shutdown()
        """
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "SPANGRAPH_"))},
        "OTEL_SDK_DISABLED": "True",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",  # no exporter either
        "SPANGRAPH_HOME": str(tmp_path / "home"),
        "SPANGRAPH_OFFLOAD": offload,
    }
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["[]", "[]", "None", "None", "False"]
    assert not (tmp_path / "home").exists() or not any((tmp_path / "home").iterdir())


@pytest.mark.usefixtures("restore_state")
def test_a_neo4j_uri_the_driver_refuses_is_named_as_the_variable_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SPANGRAPH_GRAPH_URL", raising=False)
    monkeypatch.setenv("NEO4J_URI", "neo4j://u:s3cret@127.0.0.1:1")  # (user in the URI)
    provider = TracerProvider()
    try:
        with pytest.raises(ConfigurationError) as info:
            spangraph.configure(tracer_provider=provider, live=False)
        assert info.value.setting == "NEO4J_URI" and "s3cret" not in str(info.value)
    finally:
        provider.shutdown()
